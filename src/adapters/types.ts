// An adapter turns an agent's configuration into one execution inside a leased environment.
import type { EnvironmentDriver, DriverEnvironment, PreparedWorkspace } from '../drivers/contract.js';
import type { Agent, HeartbeatRun, Lease } from '../domain/types.js';
import type { RunOutcome } from '../services/runs.js';

export interface AdapterContext {
  run: HeartbeatRun;
  agent: Agent;
  environment: DriverEnvironment;
  driver: EnvironmentDriver;
  lease: Lease;
  workspace: PreparedWorkspace;
  /** Where the run's process reaches Berth, and the token it acts with (this run only). */
  apiUrl: string;
  token: string;
  /** Resolves once the log has taken the text ('stop': it is full, send no more output). */
  log(stream: 'stdout' | 'stderr' | 'system', text: string): void | Promise<void | 'stop'>;
  /** Aborted when the run is cancelled (reason 'cancel') or loses its lease (reason 'lease_lost'). */
  abort: AbortSignal;
  onPid(pid: number): void;
}

export interface AgentAdapter {
  readonly type: string;
  execute(ctx: AdapterContext): Promise<RunOutcome>;
}
