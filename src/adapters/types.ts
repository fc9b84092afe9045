// An adapter turns an agent's configuration into one execution inside a leased environment.
// A `process` adapter says what to run (the executor starts it through the environment's
// driver, watches it, and enforces its timeout and cancel, also after another server took
// the run over); a `call` adapter does its work from this server (an HTTP request).
import type { DriverDescriptor, DriverEnvironment, ProcessSpec } from '../drivers/contract.js';
import type { Agent, HeartbeatRun, Lease } from '../domain/types.js';
import type { RunOutcome } from '../services/runs.js';

export interface RunWorkspace {
  /** Where the run's process starts. */
  cwd: string;
  /** paperclipEnvironment: where the run runs, as the run is told. */
  details: Record<string, unknown>;
}

export interface AdapterContext {
  run: HeartbeatRun;
  agent: Agent;
  environment: DriverEnvironment;
  driver: DriverDescriptor;
  lease: Lease;
  workspace: RunWorkspace;
  /** Where the run's process reaches Berth, and the token it acts with (this run only). */
  apiUrl: string;
  token: string;
  /** Resolves once the log has taken the text ('stop': it is full, send no more output). */
  log(stream: 'stdout' | 'stderr' | 'system', text: string): void | Promise<void | 'stop'>;
  /** Aborted when the run is cancelled (reason 'cancel') or loses its lease (reason 'lease_lost'). */
  abort: AbortSignal;
}

/** What a process adapter asks the executor to run, and how long it may take. */
export interface ProcessPlan {
  spec: ProcessSpec;
  timeoutSec: number;
  /** Between SIGTERM and SIGKILL when the run is stopped. */
  graceSec: number;
}

export interface ProcessAdapter {
  readonly type: string;
  readonly kind: 'process';
  /** The process to start (pure: no I/O). */
  plan(ctx: Omit<AdapterContext, 'log' | 'abort'>): ProcessPlan;
  /** Its limits alone, for a run another server started (resumed from its execution record). */
  limits(agent: Agent): { timeoutSec: number; graceSec: number };
}

export interface CallAdapter {
  readonly type: string;
  readonly kind: 'call';
  execute(ctx: AdapterContext): Promise<RunOutcome>;
}

export type AgentAdapter = ProcessAdapter | CallAdapter;
