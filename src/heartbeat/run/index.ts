// One run as steps (SPEC, "Heartbeat runs"): place (reserve the lease and its resource
// record) -> provision (outside any transaction; the lease kept alive) -> start (activate
// the lease, record the run's start, exec through the driver, record the execution) ->
// watch (output, timeout, cancel) -> finish (destroy, release, finalize). Each step records
// what it made before the next begins, so a crash anywhere leaves records a sweep finds.
// `resumeRun` re-enters at watch for an execution another server started, when its driver
// can reattach.
import { isBerthError } from '../../domain/errors.js';
import { storableText } from '../../domain/text.js';
import type { AdoptedRun, HeartbeatRun } from '../../domain/types.js';
import type { RunPhase } from '../../metrics/index.js';
import { RunLogWriter } from '../log-writer.js';
import { RunTakenError, type ExecutorDeps, type RunState } from './context.js';
import { finish } from './finish.js';
import { keepAlive, place } from './place.js';
import { provision } from './provision.js';
import { activate, exec } from './start.js';
import { HANDED_OFF, watch } from './watch.js';

export type { ExecutorDeps } from './context.js';
export { withDeadline } from './context.js';
export { runLeasePolicy } from './place.js';

function newState(deps: ExecutorDeps, run: HeartbeatRun, abort: AbortController, logStart?: { seq: number }): RunState {
  return {
    deps,
    run,
    abort,
    actor: { type: 'run', id: run.id },
    log: new RunLogWriter(deps.services.runs, run.id, { ...(deps.logLimitChars !== undefined ? { limitChars: deps.logLimitChars } : {}), ...(logStart ? { startSeq: logStart.seq } : {}) }),
    outcome: { status: 'failed', error: 'the executor stopped before the run finished', errorCode: 'internal' },
    lease: null,
    resource: null,
    execution: null,
    exited: false,
    callback: null,
    waitFor: null,
    taken: false,
    handedOff: false,
  };
}

function failedBy(st: RunState, err: unknown): void {
  if (err instanceof RunTakenError) {
    st.taken = true;
    st.outcome = { status: 'failed', error: err.message, errorCode: 'process_lost' };
  } else if (st.lease === null && !st.abort.signal.aborted && (isBerthError(err, 'capacity_exhausted') || isBerthError(err, 'workspace_busy'))) {
    st.waitFor = (err as Error).message;
  } else {
    const code = (err as { code?: unknown }).code;
    const message = storableText((err as Error).message);
    st.outcome = { status: 'failed', error: message, errorCode: typeof code === 'string' ? code : 'executor_error' };
    void st.log.write('system', `run failed before it finished: ${message}\n`);
  }
}

/**
 * Times Berth's own phases of one run for the metrics: each `phase` call ends the phase
 * begun at the last mark; `skip` starts a new mark without counting (the agent's own time).
 */
function phaseClock(deps: ExecutorDeps) {
  const metrics = deps.services.metrics;
  let mark = performance.now();
  let overheadMs = 0;
  let agentRan = false;
  return {
    phase(p: RunPhase): void {
      const now = performance.now();
      metrics.runPhase(p, (now - mark) / 1000);
      overheadMs += now - mark;
      mark = now;
    },
    agentDone(): void {
      agentRan = true;
      mark = performance.now();
    },
    /** The run's overhead, once finished: only for a run whose agent ran. */
    done(): void {
      if (agentRan) metrics.runOverhead(overheadMs / 1000);
    },
  };
}

export async function executeRun(deps: ExecutorDeps, run: HeartbeatRun, abort: AbortController): Promise<HeartbeatRun | null> {
  const st = newState(deps, run, abort);
  const clock = phaseClock(deps);
  try {
    await place(st);
    clock.phase('place');
    const made = await provision(st);
    clock.phase('provision');
    const { token, paperclipEnvironment } = await activate(st, made);
    const adapter = st.adapter!;
    // The run's way back to the server, per driver (a reverse tunnel for SSH), undone in
    // finish. Only a process runs inside the environment; a call leaves from here.
    if (st.driver!.callbackUrl && adapter.kind === 'process') {
      st.callback = await st.driver!.callbackUrl(st.environment!, { publicUrl: deps.apiUrl, ...(deps.localUrl ? { localUrl: deps.localUrl } : {}) }, st.resource!);
    }
    const started = { ...run, contextSnapshot: { ...run.contextSnapshot, paperclipEnvironment } };
    const ctx = {
      run: started,
      agent: st.agent!,
      environment: st.environment!,
      driver: st.driver!,
      lease: st.lease!,
      workspace: { cwd: made.cwd, details: paperclipEnvironment },
      apiUrl: st.callback?.url ?? deps.apiUrl,
      token,
    };
    if (abort.signal.aborted) {
      // Cancelled (or the lease lost) while it got ready: nothing is started.
      st.outcome = abort.signal.reason === 'lease_lost'
        ? { status: 'failed', error: 'the run lost its environment lease before it started', errorCode: 'lease_lost' }
        : { status: 'cancelled', error: 'cancelled before its process started', errorCode: 'cancelled' };
    } else if (adapter.kind === 'call') {
      clock.phase('start');
      st.outcome = await adapter.execute({ ...ctx, log: (stream, text) => st.log.write(stream, text), abort: abort.signal });
      clock.agentDone();
    } else {
      const plan = adapter.plan(ctx);
      const handle = await exec(st, plan);
      clock.phase('start');
      const watched = await watch(st, handle, { timeoutSec: plan.timeoutSec, graceSec: plan.graceSec, startedAt: new Date(), command: plan.spec.command });
      clock.agentDone();
      if (watched === HANDED_OFF) st.handedOff = true;
      else st.outcome = watched;
    }
  } catch (err) {
    failedBy(st, err);
  }
  const finished = await finish(st);
  clock.phase('finish');
  clock.done();
  return finished;
}

/**
 * Continue a run whose execution outlived its server: watch it from where its log stopped,
 * with its timeout counted from its start, then finish it as executeRun would.
 */
export async function resumeRun(deps: ExecutorDeps, adopted: AdoptedRun, abort: AbortController): Promise<HeartbeatRun | null> {
  const { run } = adopted;
  const st = newState(deps, run, abort, { seq: adopted.logSeq });
  try {
    const s = deps.services;
    void st.log.write('system', `resumed by server ${deps.serverId}: its server stopped while it ran\n`);
    const agent = await s.agents.getWithSecrets(run.companyId, run.agentId);
    const adapter = deps.adapters.get(agent.adapterType);
    if (!adapter || adapter.kind !== 'process') throw Object.assign(new Error(`no process adapter for type "${agent.adapterType}"`), { code: 'no_adapter' });
    if (!run.environmentId || !run.leaseId) throw Object.assign(new Error('the run has no environment or lease recorded'), { code: 'internal' });
    st.agent = agent;
    st.adapter = adapter;
    st.environment = await s.environments.getWithSecrets(run.companyId, run.environmentId);
    st.driver = deps.drivers.get(st.environment.driver);
    if (!st.driver) throw Object.assign(new Error(`no driver for environment driver "${st.environment.driver}"`), { code: 'no_driver' });
    st.lease = await s.leases.get(run.companyId, run.leaseId);
    if (adopted.resourceId) {
      const r = await s.resources.get(adopted.resourceId);
      st.resource = { resourceId: r.id, providerId: r.providerId, state: r.state };
    }
    st.execution = adopted.execution;
    keepAlive(st);
    const limits = adapter.limits(agent);
    const watched = await watch(st, adopted.execution, { ...limits, startedAt: run.startedAt ?? new Date(), command: String(agent.adapterConfig.command ?? 'the process') }, adopted.outputOffset ?? undefined);
    if (watched === HANDED_OFF) st.handedOff = true;
    else st.outcome = watched;
  } catch (err) {
    failedBy(st, err);
  }
  return finish(st);
}
