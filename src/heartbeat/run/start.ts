// Step `start`: activate the lease (its TTL counts from now; the resource's handle and what
// the run is told recorded in the same statement) together with the run's start, in one
// short transaction; then, for a process adapter, the driver's exec and the execution's
// handle written down, so recovery can signal it and a driver with reattach can be resumed.
import type { ProcessPlan } from '../../adapters/types.js';
import type { ExecutionHandle, ProvisionedResource } from '../../drivers/contract.js';
import { newRunToken } from '../../services/runs.js';
import { RunTakenError, withDeadline, type RunState } from './context.js';

export interface Started {
  token: string;
  paperclipEnvironment: Record<string, unknown>;
}

export async function activate(st: RunState, made: ProvisionedResource): Promise<Started> {
  const { deps, run } = st;
  const env = st.environment!;
  const granted = st.lease!;
  const token = newRunToken();
  const reuse = granted.leasePolicy === 'reuse_by_environment' ? { reused: st.reacquired === true } : {};
  const paperclipEnvironment = { id: env.id, name: env.name, driver: env.driver, leaseId: granted.id, fence: granted.fence, ...reuse, ...made.details };
  const providerLeaseId = typeof made.details.providerLeaseId === 'string' ? made.details.providerLeaseId : made.providerId;
  st.lease = await deps.transact(async (ts) => {
    const active = await ts.resources.activate(run.companyId, {
      leaseId: granted.id,
      fence: granted.fence,
      resourceId: made.resourceId,
      ttlSeconds: deps.leaseTtlSeconds,
      providerId: made.providerId,
      state: made.state,
      details: made.details,
      providerLeaseId,
    });
    const started = await ts.runs.recordStart(run.id, deps.serverId, { environmentId: env.id, leaseId: granted.id, token, paperclipEnvironment });
    if (!started) throw new RunTakenError(`run ${run.id} was finalized by another server before it started`);
    return active;
  });
  await deps.onPhase?.('activated', run);
  return { token, paperclipEnvironment };
}

/** Start the planned process through the driver and record its handle (before anything else can be lost). */
export async function exec(st: RunState, plan: ProcessPlan): Promise<ExecutionHandle> {
  const { deps, run } = st;
  const stop = new AbortController();
  const handle = await withDeadline(
    st.driver!.exec(st.environment!, st.resource!, plan.spec, stop.signal),
    deps.execTimeoutMs ?? 120_000,
    'exec_timeout',
    `starting ${plan.spec.command} on ${st.environment!.name}`,
    stop,
  );
  st.execution = handle;
  // The process's id where it runs (a remote one is its group's): it means something to this host only when the driver is host-local.
  const pid = typeof handle.ref.pid === 'number' ? handle.ref.pid : typeof handle.ref.pgid === 'number' ? handle.ref.pgid : null;
  const hostLocal = st.driver!.capabilities.hostLocal;
  const recorded = await deps.services.runs.recordExecution(run.id, deps.serverId, {
    resourceId: st.resource!.resourceId,
    handle,
    ...(pid !== null && hostLocal ? { pid, identity: (handle.ref.identity as Record<string, unknown> | null) ?? null } : {}),
  });
  if (!recorded) {
    void st.log.write('system', 'the run was finalized elsewhere while starting: stopping its process\n');
    st.abort.abort('cancel');
  }
  if (pid !== null && !hostLocal) void st.log.write('system', `started: remote pid ${pid}\n`);
  await deps.onPhase?.('started', run);
  return handle;
}
