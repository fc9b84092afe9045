// What the steps of one run share: its dependencies, and what each step has established so
// far (the lease, the resource, the execution). Each step reads what it needs from here
// and records what it made, so `finish` knows exactly what to release and destroy.
import type { AgentAdapter } from '../../adapters/types.js';
import type { CallbackRoute, DriverEnvironment, DriverRegistry, EnvironmentDriver, ExecutionHandle, ResourceHandle } from '../../drivers/contract.js';
import type { Actor, Agent, HeartbeatRun, Lease } from '../../domain/types.js';
import type { Services } from '../../services/index.js';
import type { WarmMember } from '../../services/leases/index.js';
import type { RunOutcome } from '../../services/runs.js';
import type { RunLogWriter } from '../log-writer.js';
import type { KeepAlive } from './keepalive.js';

export interface ExecutorDeps {
  services: Services;
  drivers: DriverRegistry;
  adapters: Map<string, AgentAdapter>;
  serverId: string;
  /** The server's public URL; a driver's callbackUrl may give a run another way to it. */
  apiUrl: string;
  /** Where this process reaches the API itself (the end of a driver's tunnel). */
  localUrl?: string;
  /** Lease ttl; the executor renews every ttl/3 while the run lives. */
  leaseTtlSeconds: number;
  /** Characters of output kept per run (default 16 Mi). */
  logLimitChars?: number;
  /** How long a run waits in the queue when its environment is full. */
  requeueDelaySeconds?: number;
  /** A driver's provision that takes longer fails the run (default 300 s). */
  prepareTimeoutMs?: number;
  /** A driver's exec that takes longer to start the process fails the run (default 120 s). */
  execTimeoutMs?: number;
  /** A driver's destroy that takes longer counts as failed and is retried by resource GC (default 120 s). */
  cleanupTimeoutMs?: number;
  /** How long the end of a run keeps trying to write it when the database refuses (default 10 min). */
  finalizeRetryMs?: number;
  /** Wake this server's warm-pool refill (after a run's acquire on a pooled environment). */
  wakePools?: () => void;
  /** Run several service calls in one transaction (one commit). */
  transact: <T>(f: (s: Services) => Promise<T>) => Promise<T>;
  /** Test seam: called between the phases of a run's acquire (after `reserve`, after `provision`). */
  onPhase?: (phase: 'reserved' | 'provisioned' | 'activated' | 'started', run: HeartbeatRun) => Promise<void> | void;
}

export interface RunState {
  readonly deps: ExecutorDeps;
  readonly run: HeartbeatRun;
  readonly abort: AbortController;
  readonly actor: Actor;
  readonly log: RunLogWriter;
  outcome: RunOutcome;
  agent?: Agent;
  adapter?: AgentAdapter;
  environment?: DriverEnvironment;
  driver?: EnvironmentDriver;
  lease: Lease | null;
  resource: ResourceHandle | null;
  /** The lease was a warm claim: the pool member, made ahead, that the run uses instead of provisioning. */
  warm?: WarmMember;
  /** The run asked its pooled environment for a warm claim: its paperclipEnvironment says whether it got one (warm). */
  pooled?: boolean;
  execution: ExecutionHandle | null;
  /** The execution was watched to its end (its exit is known). */
  exited: boolean;
  keepalive?: KeepAlive;
  callback: CallbackRoute | null;
  /** Set when the run cannot start yet: why it waits (it goes back to the queue). */
  waitFor: string | null;
  /** The run was finalized by another server before it started here. */
  taken: boolean;
  /** Its lease is a retained one reused (reuse_by_environment): its resource is the one an earlier run left. */
  reacquired?: boolean;
  /** Left running for the next server to adopt: nothing is destroyed, released or finalized here. */
  handedOff: boolean;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export { sleep };

/** `work`, or a rejection with `code` once `ms` have passed; `abort` (if given) is aborted then, so the work can stop. */
export function withDeadline<T>(work: Promise<T>, ms: number, code: string, what: string, abort?: AbortController): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = Object.assign(new Error(`${what} did not finish within ${Math.round(ms / 1000)}s`), { code });
      abort?.abort(err);
      reject(err);
    }, ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/** A run the executor had claimed was finalized by another server meanwhile (recovery): it must not start. */
export class RunTakenError extends Error {
  readonly code = 'run_finalized_elsewhere';
}
