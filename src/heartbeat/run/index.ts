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
import { failSpan, inSpan, openSpan, type OpenSpan, type Span } from '../../tracing/index.js';
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

/** A run's phases as spans (src/tracing): Berth's own four, and `watch`, the agent's time. */
type TracedPhase = RunPhase | 'watch';

/** The run's root span (`berth.run`, a trace of its own) with what it is: ids as attributes. */
function inRunSpan<T>(run: HeartbeatRun, attributes: Record<string, string | boolean>, fn: (span: Span) => Promise<T>): Promise<T> {
  return inSpan('berth.run', { 'berth.run.id': run.id, 'berth.company.id': run.companyId, 'berth.agent.id': run.agentId, 'berth.run.source': run.invocationSource, ...attributes }, fn, { root: true });
}

/** What the run's span says once it is over: how it ended (a failure by its code). */
function runSpanDone(span: Span, st: RunState, finished: HeartbeatRun | null): void {
  if (!span.isRecording()) return;
  if (st.environment) span.setAttributes({ 'berth.environment.id': st.environment.id, 'berth.environment.driver': st.environment.driver });
  if (st.lease) span.setAttribute('berth.lease.id', st.lease.id);
  const status = finished?.status ?? (st.handedOff ? 'handed_off' : st.waitFor !== null ? 'requeued' : 'unknown');
  span.setAttribute('berth.run.status', status);
  if (finished && finished.status !== 'succeeded') failSpan(span, { code: st.outcome.errorCode ?? finished.status });
}

/**
 * Times Berth's own phases of one run for the metrics: each `phase` call ends the phase
 * begun at the last mark; `agentDone` starts a new mark without counting (the agent's own
 * time). Each phase is also a span, `berth.run.<phase>`, opened by the first `in` of it.
 */
function phaseClock(deps: ExecutorDeps) {
  const metrics = deps.services.metrics;
  let mark = performance.now();
  let overheadMs = 0;
  let agentRan = false;
  let open: { phase: TracedPhase; span: OpenSpan } | null = null;
  const endSpan = (p?: TracedPhase) => {
    if (open && (p === undefined || open.phase === p)) {
      open.span.end();
      open = null;
    }
  };
  return {
    /** Run `fn` as (a part of) phase `p`, inside its span; a throw ends the span, failed. */
    in<T>(p: TracedPhase, fn: () => Promise<T>): Promise<T> {
      if (open?.phase !== p) {
        endSpan();
        open = { phase: p, span: openSpan(`berth.run.${p}`, { 'berth.run.phase': p }) };
      }
      const span = open.span;
      return span.within(fn).catch((err: unknown) => {
        if (open?.span === span) open = null;
        throw err;
      });
    },
    phase(p: RunPhase): void {
      const now = performance.now();
      metrics.runPhase(p, (now - mark) / 1000);
      overheadMs += now - mark;
      mark = now;
      endSpan(p);
    },
    agentDone(): void {
      agentRan = true;
      mark = performance.now();
      endSpan('watch');
    },
    /** The run's overhead, once finished: only for a run whose agent ran. */
    done(): void {
      if (agentRan) metrics.runOverhead(overheadMs / 1000);
    },
  };
}

export function executeRun(deps: ExecutorDeps, run: HeartbeatRun, abort: AbortController): Promise<HeartbeatRun | null> {
  return inRunSpan(run, {}, async (span) => {
    const st = newState(deps, run, abort);
    const finished = await executeSteps(st);
    runSpanDone(span, st, finished);
    return finished;
  });
}

async function executeSteps(st: RunState): Promise<HeartbeatRun | null> {
  const { deps, run, abort } = st;
  const clock = phaseClock(deps);
  try {
    await clock.in('place', () => place(st));
    clock.phase('place');
    const made = await clock.in('provision', () => provision(st));
    clock.phase('provision');
    const adapter = st.adapter!;
    // The run's way back to the server, per driver (a reverse tunnel for SSH), undone in
    // finish. Only a process runs inside the environment; a call leaves from here. It is
    // opened while the lease is activated (both before the process starts); finish closes it
    // either way, once it is open.
    const opening = st.driver!.callbackUrl && adapter.kind === 'process'
      ? st.driver!.callbackUrl(st.environment!, { publicUrl: deps.apiUrl, ...(deps.localUrl ? { localUrl: deps.localUrl } : {}) }, st.resource!).then((cb) => void (st.callback = cb))
      : null;
    // Handled from the start: a route that fails while the activation is still in flight is no unhandled rejection (it is rethrown below).
    opening?.catch(() => {});
    let activated: Awaited<ReturnType<typeof activate>>;
    try {
      activated = await clock.in('start', () => activate(st, made));
    } finally {
      // A failed activation waits for the route too, so finish has it to close.
      if (opening) await opening.catch(() => {});
    }
    if (opening) await clock.in('start', () => opening);
    const { token, paperclipEnvironment } = activated;
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
      st.outcome = await clock.in('watch', () => adapter.execute({ ...ctx, log: (stream, text) => st.log.write(stream, text), abort: abort.signal }));
      clock.agentDone();
    } else {
      const plan = adapter.plan(ctx);
      const handle = await clock.in('start', () => exec(st, plan));
      clock.phase('start');
      const watched = await clock.in('watch', () => watch(st, handle, { timeoutSec: plan.timeoutSec, graceSec: plan.graceSec, startedAt: new Date(), command: plan.spec.command }));
      clock.agentDone();
      if (watched === HANDED_OFF) st.handedOff = true;
      else st.outcome = watched;
    }
  } catch (err) {
    failedBy(st, err);
  }
  const finished = await clock.in('finish', () => finish(st));
  clock.phase('finish');
  clock.done();
  return finished;
}

/**
 * Continue a run whose execution outlived its server: watch it from where its log stopped,
 * with its timeout counted from its start, then finish it as executeRun would.
 */
export function resumeRun(deps: ExecutorDeps, adopted: AdoptedRun, abort: AbortController): Promise<HeartbeatRun | null> {
  return inRunSpan(adopted.run, { 'berth.run.resumed': true }, async (span) => {
    const st = newState(deps, adopted.run, abort, { seq: adopted.logSeq });
    const finished = await resumeSteps(st, adopted);
    runSpanDone(span, st, finished);
    return finished;
  });
}

async function resumeSteps(st: RunState, adopted: AdoptedRun): Promise<HeartbeatRun | null> {
  const { deps, run } = st;
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
    const watched = await inSpan('berth.run.watch', { 'berth.run.phase': 'watch' }, () =>
      watch(st, adopted.execution, { ...limits, startedAt: run.startedAt ?? new Date(), command: String(agent.adapterConfig.command ?? 'the process') }, adopted.outputOffset ?? undefined),
    );
    if (watched === HANDED_OFF) st.handedOff = true;
    else st.outcome = watched;
  } catch (err) {
    failedBy(st, err);
  }
  return inSpan('berth.run.finish', { 'berth.run.phase': 'finish' }, () => finish(st));
}
