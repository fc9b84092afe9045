// Step `watch`: the execution's output into the run's log (the driver waits for each write:
// backpressure, down to the process), and the run's limits enforced through the driver:
// timeout and cancel send TERM to everything it started, KILL after the grace period. The
// same step resumes a run another server started, from the offset its log reached, with
// the timeout still counted from the run's start.
import type { ExecutionHandle, ExitResult } from '../../drivers/contract.js';
import type { RunOutcome } from '../../services/runs.js';
import type { RunState } from './context.js';

export interface WatchLimits {
  timeoutSec: number;
  graceSec: number;
  /** When the run started (the timeout counts from here, also for a resumed run). */
  startedAt: Date;
  command: string;
}

/** The run was left running for another server to adopt (its server stops; its driver can reattach). */
export const HANDED_OFF = 'handed_off' as const;

export async function watch(st: RunState, execution: ExecutionHandle, limits: WatchLimits, from?: string): Promise<RunOutcome | typeof HANDED_OFF> {
  const drv = st.driver!;
  const env = st.environment!;
  const log = st.log;
  let stoppedFor: 'timeout' | 'cancel' | 'lease_lost' | null = null;
  let killTimer: NodeJS.Timeout | undefined;
  const signal = (sig: 'TERM' | 'KILL') =>
    drv.signal(env, execution, sig).catch((err: unknown) => void log.write('system', `could not signal the process (${sig}): ${(err as Error).message}\n`));
  const stop = (why: 'timeout' | 'cancel' | 'lease_lost') => {
    if (stoppedFor) return;
    stoppedFor = why;
    void log.write('system', `stopping (${why}): SIGTERM to the process tree, SIGKILL in ${limits.graceSec}s\n`);
    void signal('TERM');
    killTimer = setTimeout(() => void signal('KILL'), limits.graceSec * 1000);
  };
  const left = Math.max(0, limits.startedAt.getTime() + limits.timeoutSec * 1000 - Date.now());
  const timeout = setTimeout(() => stop('timeout'), left);
  // A server that stops hands a run its driver can reattach to over to the next server
  // (watching stops; the process goes on); anything else stops the process.
  const watching = new AbortController();
  let handedOff = false;
  const onAbort = () => {
    const why = st.abort.signal.reason;
    if (why === 'handoff' && drv.capabilities.reattach && !stoppedFor) {
      handedOff = true;
      watching.abort('handoff');
      return;
    }
    stop(why === 'lease_lost' ? 'lease_lost' : 'cancel');
  };
  if (st.abort.signal.aborted) onAbort();
  else st.abort.signal.addEventListener('abort', onAbort, { once: true });
  let exit: ExitResult;
  try {
    exit = await drv.watch(env, execution, (stream, text) => log.write(stream, text), {
      ...(from !== undefined ? { from } : {}),
      onOffset: (offset) => log.setOffset(offset),
      signal: watching.signal,
    });
    st.exited = true;
  } catch (err) {
    if (handedOff) return HANDED_OFF;
    exit = { exitCode: null, signal: null, error: `watching the process failed: ${(err as Error).message}`, errorCode: 'process_lost' };
  } finally {
    clearTimeout(timeout);
    clearTimeout(killTimer);
    st.abort.signal.removeEventListener('abort', onAbort);
  }
  return outcomeOf(exit, stoppedFor, limits);
}

/** How a run ended, from how its process ended and why Berth stopped it (if it did). */
export function outcomeOf(exit: ExitResult, stoppedFor: 'timeout' | 'cancel' | 'lease_lost' | null, limits: WatchLimits): RunOutcome {
  const base = { exitCode: exit.exitCode, signal: exit.signal };
  if (exit.error && !stoppedFor) return { status: 'failed', ...base, error: exit.error, errorCode: exit.errorCode ?? 'process_lost' };
  if (exit.spawnError) return { status: 'failed', ...base, error: `could not start ${limits.command}: ${exit.spawnError}`, errorCode: 'spawn_failed' };
  if (stoppedFor === 'timeout') return { status: 'timed_out', ...base, error: `timed out after ${limits.timeoutSec}s`, errorCode: 'timeout' };
  if (stoppedFor === 'cancel') return { status: 'cancelled', ...base, error: 'cancelled', errorCode: 'cancelled' };
  if (stoppedFor === 'lease_lost') return { status: 'failed', ...base, error: 'the run lost its environment lease', errorCode: 'lease_lost' };
  if (exit.exitCode === 0) return { status: 'succeeded', ...base };
  const why = exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
  return { status: 'failed', ...base, error: `${limits.command} ${why}`, errorCode: 'process_failed' };
}
