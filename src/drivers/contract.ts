// The contract between the executor and a place runs execute. A driver prepares
// the lease's resources, starts processes there, and cleans up; the executor
// never needs to know which driver it talks to.
import type { Environment, Lease } from '../domain/types.js';

export interface DriverEnvironment extends Omit<Environment, 'envVarNames'> {
  /** Full config, secrets included. */
  secretConfig: Record<string, unknown>;
  /** The environment's variables in clear, for the run's process only. */
  envVars: Record<string, string>;
}

export interface ProbeResult {
  ok: boolean;
  /** Round-trip of the probe, ms. */
  latencyMs: number;
  details: Record<string, unknown>;
  error?: string;
}

export interface PreparedWorkspace {
  /** Where the run's process starts. */
  cwd: string;
  /** Driver details written into the run's paperclipEnvironment and the lease metadata. */
  details: Record<string, unknown>;
}

export interface ProcessSpec {
  command: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
}

export interface StartedProcess {
  /** The process id once it has started (its process group id too); null if it could not start. */
  spawned: Promise<number | null>;
  /** Resolves when the process has exited and its output is drained. */
  exited: Promise<{
    exitCode: number | null;
    signal: string | null;
    spawnError?: string;
    /** Bytes of output dropped unread by anyone after the listener said 'stop'. */
    discardedBytes?: number;
    /** How the process ended is unknown (its host's connection was lost, say): the run fails with this. */
    error?: string;
    errorCode?: string;
  }>;
  /** Signal the whole process tree (once it has started). */
  kill(signal: 'SIGTERM' | 'SIGKILL'): void;
}

/** What a cleanup did: `removed` names what is gone; `nothing` says why there was nothing to do. */
export interface CleanupReport {
  removed?: string;
  nothing?: string;
}

/**
 * Takes a run's output. A promise makes the stream wait for it (backpressure, child
 * included); resolving to 'stop' says no more is wanted (the run's log is full): the
 * rest is counted and dropped where it is read, never relayed.
 */
export type OutputListener = ((stream: 'stdout' | 'stderr', text: string) => Promise<void | 'stop'>) | ((stream: 'stdout' | 'stderr', text: string) => void);

/** Where this server's API is, for a run to call back (PAPERCLIP_API_URL). */
export interface CallbackServer {
  /** What agents are told by default: BERTH_PUBLIC_URL / --public-url, else the bound address. Empty when there is no API. */
  publicUrl: string;
  /** Where this process reaches the API itself (serve's bound address): where a tunnel ends. Absent in a worker, which serves no API. */
  localUrl?: string;
}

/** A run's way back to the server: the URL it is given, and what undoes the way (a tunnel) when the run ends. */
export interface CallbackRoute {
  url: string;
  /** Called once when the run ends; never throws. */
  close(): Promise<void>;
}

export interface EnvironmentDriver {
  readonly driver: string;
  /**
   * Its processes run on another host: their pids mean nothing on this one (never
   * recorded for local recovery to signal), and this server's own environment
   * variables (PATH, HOME...) are not theirs.
   */
  readonly remote?: boolean;
  probe(env: DriverEnvironment): Promise<ProbeResult>;
  /**
   * Optional: open (or check) the connection to the environment before the run takes its
   * lease, so a host that is slow or down fails the run before any lease or workspace.
   */
  connect?(env: DriverEnvironment): Promise<void>;
  /** Make the lease's resources ready (a workspace); called once the lease is granted. */
  prepareWorkspace(env: DriverEnvironment, lease: Lease, opts: { cwd?: string }): Promise<PreparedWorkspace>;
  /**
   * Optional: the URL a run in `env` reaches the server at, set up for this run (the SSH
   * driver forwards a port back over its connection). Without it a run gets
   * `server.publicUrl`, as the local driver's runs do.
   */
  callbackUrl?(env: DriverEnvironment, server: CallbackServer): Promise<CallbackRoute>;
  startProcess(env: DriverEnvironment, spec: ProcessSpec, onOutput: OutputListener): StartedProcess;
  /**
   * Release the lease's resources: exactly what this driver made for this lease, found from
   * the lease id and its driverState (server-written), never from the caller's metadata.
   * Idempotent; says what it did (for the activity row). Throws if cleanup failed; it is
   * then retried with backoff.
   */
  cleanup(env: DriverEnvironment | null, lease: Lease): Promise<CleanupReport>;
}

export type DriverRegistry = Map<string, EnvironmentDriver>;
