// The contract between Berth and a place runs execute (an engine). Every engine (this
// machine, an SSH host, a container engine, a cluster, a provider's sandbox) is a driver:
// a descriptor (what its environments' config looks like, which of it is secret, what it
// can do) and six operations over two records the server keeps for it:
//
//   provision(resource) -> ResourceHandle       stored in provider_resources (state, providerId)
//   exec(resource, spec) -> ExecutionHandle      stored in run_executions (handle)
//   watch(execution, sink, from?) -> ExitResult  output with backpressure; resumable where reattach
//   signal(execution, TERM | KILL)
//   destroy(resource)                            idempotent: "no such resource" is success
//   list()                                       what the provider holds under Berth's labels
//
// The server calls none of them inside a database transaction. Each gets an AbortSignal
// and the server's deadline; handles are plain JSON so another server can pick them up.
import type { Readable } from 'node:stream';
import type { z } from 'zod';
import type { Environment } from '../domain/types.js';
import type { SecretPath } from '../secrets/config.js';

export interface DriverEnvironment extends Omit<Environment, 'envVarNames'> {
  /** Full config, secrets included. */
  secretConfig: Record<string, unknown>;
  /** The environment's variables in clear, for the run's process only. */
  envVars: Record<string, string>;
}

export interface DriverCapabilities {
  /** An execution outlives this server: another server can `watch` it from its handle (and offset). */
  reattach: boolean;
  /** Resources can be provisioned ahead of any lease (warm pools). */
  pool: boolean;
  /** `list` is implemented: reconciliation can find what the provider holds with no record. */
  list: boolean;
  /** `watch` delivers output while the process runs (not only at its end). */
  streamOutput: boolean;
  /** Executions run on this server's host: this server's PATH, HOME... are theirs, and its pids are theirs. */
  hostLocal: boolean;
}

/** A field of the dashboard's environment form (a path under `config`). */
export interface FormField {
  readonly path: string;
  readonly label: string;
  readonly type: 'text' | 'number' | 'textarea' | 'checkbox' | 'password';
  readonly placeholder?: string;
}

/** Pure data about a driver: what the environment service validates and seals with. No I/O. */
export interface DriverDescriptor {
  /** The environment `driver` value this driver serves. */
  readonly kind: string;
  /** What an environment of this driver is, in a few words ("this machine", "a remote host over SSH"). */
  readonly title: string;
  /** The agent adapters whose runs this driver executes (`process`: it runs the agent's command). */
  readonly adapters: readonly ('process' | 'http')[];
  /** The dashboard's form for `config` (absent: no field; the API takes the whole schema either way). */
  readonly form?: readonly FormField[];
  /** The environment's `config` (the environment service validates with it). */
  readonly configSchema: z.ZodType;
  /** What `config` is when a create names none (absent: config is required). */
  readonly configDefault?: Record<string, unknown>;
  /** Fields of `config` that are secret (paths relative to config): sealed at rest, shown only as `shownAs`. */
  readonly secretPaths: readonly SecretPath[];
  readonly capabilities: DriverCapabilities;
}

export interface ProbeResult {
  ok: boolean;
  /** Round-trip of the probe, ms. */
  latencyMs: number;
  details: Record<string, unknown>;
  error?: string;
}

/** Labels every provider object carries (where the provider has labels): what reconciliation matches on. */
export const LABEL_RESOURCE = 'berth.resource';
export const LABEL_LEASE = 'berth.lease';
export const LABEL_ENVIRONMENT = 'berth.environment';
export const LABEL_COMPANY = 'berth.company';

export interface ProvisionRequest {
  /** The resource record's id (made by the server before this call): provisioning twice with it gives the same resource. */
  resourceId: string;
  /** The lease it is made for; null for a pool's ready resource. */
  leaseId: string | null;
  labels: Record<string, string>;
  /** A working directory the agent names for itself (not the driver's to make or remove). */
  cwd?: string;
  /**
   * What the provider says while the resource is being made (a job waiting in a queue, then
   * running on a node), one line each, for the run's log. Optional: a pool's refill has no run.
   */
  progress?: (note: string) => void;
}

/** What a driver made, as the server stores it (provider_resources.provider_id / state): plain JSON. */
export interface ResourceHandle {
  resourceId: string;
  /** The provider's own id (a container id, a remote directory, a job id); null when the driver has none. */
  providerId: string | null;
  state: Record<string, unknown>;
}

export interface ProvisionedResource extends ResourceHandle {
  /** Where the run's process starts. */
  cwd: string;
  /** What a run is told about where it runs (paperclipEnvironment); no secrets. */
  details: Record<string, unknown>;
}

export interface ProcessSpec {
  command: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  /**
   * Seconds after which the engine itself kills what the process started, whether or not
   * any server is still watching (a run's hard timeout), so nothing outlives a run when no
   * server comes back. Absent or 0: none. Drivers whose executions die with this server may ignore it.
   */
  deadlineSec?: number;
  /**
   * A new command in a resource that may have run others (a lease's commands): the driver must
   * not take an earlier execution for this one (where a retried start would otherwise adopt
   * what it finds). Absent: a run's start, which may be re-entered and then adopts its own.
   */
  fresh?: boolean;
}

/** A running execution, as the server stores it (run_executions.handle): plain JSON, meaningful to its driver only. */
export interface ExecutionHandle {
  driver: string;
  /** Where it lives (a host identity): recovery uses it to tell whether this server can act on it. */
  host: string | null;
  ref: Record<string, unknown>;
}

export interface ExitResult {
  exitCode: number | null;
  signal: string | null;
  /** The process could not start (no such command, no such directory). */
  spawnError?: string;
  /** Bytes of output dropped unread after the sink said 'stop'. */
  discardedBytes?: number;
  /** How it ended is unknown (its host's connection was lost, say): the run fails with this. */
  error?: string;
  errorCode?: string;
}

/**
 * Takes a run's output. A promise makes the stream wait for it (backpressure, reaching the
 * process); 'stop' says no more is wanted (the log is full): the rest is counted and dropped
 * where it is read, never relayed.
 */
export type OutputListener = (stream: 'stdout' | 'stderr', text: string) => Promise<void | 'stop'> | void | 'stop';

export interface WatchOptions {
  /** Resume from here (a value an earlier watch reported through onOffset); absent: from the start. */
  from?: string;
  /** Called as output is taken, with where a later watch would resume. */
  onOffset?: (offset: string) => void;
  /** Aborting stops watching (the execution keeps running); the promise then rejects. */
  signal?: AbortSignal;
}

/** What a cleanup did: `removed` names what is gone; `nothing` says why there was nothing to do. */
export interface CleanupReport {
  removed?: string;
  nothing?: string;
}

/** One object the provider holds under Berth's labels. */
export interface ListedResource {
  providerId: string;
  labels: Record<string, string>;
  createdAt: Date | null;
}

/** Where this server's API is, for a run to call back (PAPERCLIP_API_URL). */
export interface CallbackServer {
  /** What agents are told by default: BERTH_PUBLIC_URL / --public-url, else the bound address. Empty when there is no API. */
  publicUrl: string;
  /** Where this process reaches the API itself (serve's bound address): where a tunnel ends. Absent in a worker. */
  localUrl?: string;
}

/** A run's way back to the server: the URL it is given, and what undoes the way (a tunnel) when the run ends. */
export interface CallbackRoute {
  url: string;
  /** Called once when the run ends; never throws. */
  close(): Promise<void>;
}

export interface EnvironmentDriver extends DriverDescriptor {
  probe(env: DriverEnvironment, signal?: AbortSignal): Promise<ProbeResult>;
  /**
   * Optional: open (or check) the connection before the run reserves its lease, so a host
   * that is slow or down fails the run before any lease or resource exists.
   */
  connect?(env: DriverEnvironment, signal?: AbortSignal): Promise<void>;
  /**
   * Make the resource (a workspace, a container...) and label it with Berth's ids.
   * Idempotent on `req.resourceId`; never called inside a transaction.
   */
  provision(env: DriverEnvironment, req: ProvisionRequest, signal: AbortSignal): Promise<ProvisionedResource>;
  /**
   * Optional: how long a run's provision may take on this environment (a scheduler's queue
   * can hold a job for hours), in place of the server's prepare deadline.
   */
  provisionTimeoutMs?(env: DriverEnvironment): number;
  /** Start a process in the resource; resolves once it has started (or failed to: then `watch` reports spawnError). */
  exec(env: DriverEnvironment, resource: ResourceHandle, spec: ProcessSpec, signal: AbortSignal): Promise<ExecutionHandle>;
  /** Stream the execution's output into `sink` and resolve with how it ended. */
  watch(env: DriverEnvironment, execution: ExecutionHandle, sink: OutputListener, opts?: WatchOptions): Promise<ExitResult>;
  /** Signal everything the execution started. An execution that has ended is no error. */
  signal(env: DriverEnvironment, execution: ExecutionHandle, sig: 'TERM' | 'KILL'): Promise<void>;
  /**
   * Remove the resource: exactly what `provision` made for `resource.resourceId`, found from
   * the handle the server stored (never from a caller's metadata). Idempotent: a resource
   * that is already gone is success. Throws when it could not; the server retries with backoff.
   * `env` is the environment as it was when the resource was made (its config snapshot).
   */
  destroy(env: DriverEnvironment, resource: ResourceHandle, signal: AbortSignal): Promise<CleanupReport>;
  /**
   * Optional: stop what runs in the resource but keep the resource, for a lease that keeps it
   * (retain_on_failure, reuse_by_environment): a container is stopped, not removed. A later
   * `provision` of the same resource id gets it back (started again); `destroy` still removes it.
   */
  suspend?(env: DriverEnvironment, resource: ResourceHandle, signal: AbortSignal): Promise<void>;
  /** What the provider holds under Berth's labels in `env` (capabilities.list). */
  list?(env: DriverEnvironment, signal: AbortSignal): AsyncIterable<ListedResource>;
  /**
   * Optional: the URL a run in `env` reaches the server at, set up for this run in its
   * resource (SSH forwards a port back over its connection; an isolated run gets a relay in
   * its own network). Without it a run gets `server.publicUrl`.
   */
  callbackUrl?(env: DriverEnvironment, server: CallbackServer, resource: ResourceHandle): Promise<CallbackRoute>;
  /**
   * Optional: unpack a tar archive into `dir` (relative to the workspace, checked) of the
   * resource's workspace `workspace`. The server has checked the entries (relative names,
   * no `..`, links that stay inside, files, directories and links only); the driver must
   * not write through a link it finds in the workspace. Never called inside a transaction.
   */
  putArchive?(env: DriverEnvironment, resource: ResourceHandle, workspace: string, dir: string, archive: Buffer, signal: AbortSignal): Promise<void>;
  /**
   * Optional: a tar archive of `path` (relative to the workspace, checked; '' for all of it),
   * refusing a path that resolves outside the workspace; links in it are stored as links.
   */
  getArchive?(env: DriverEnvironment, resource: ResourceHandle, workspace: string, path: string, signal: AbortSignal): Promise<Readable>;
  /** Close what the driver holds open between runs (pooled connections). */
  close?(): void;
}

export type DriverRegistry = Map<string, EnvironmentDriver>;
