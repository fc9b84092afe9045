// Step `provision`: the driver makes the reserved resource, outside any transaction, with a
// deadline and an AbortSignal (cancel, a lost lease, or the deadline stop it), while the
// lease is kept alive. Idempotent on the resource id: a retry gets the same resource.
import { LABEL_COMPANY, LABEL_ENVIRONMENT, LABEL_LEASE, LABEL_RESOURCE, type ProvisionedResource } from '../../drivers/contract.js';
import { storableText } from '../../domain/text.js';
import { withDeadline, type RunState } from './context.js';

export function resourceLabels(r: { resourceId: string; leaseId: string | null; environmentId: string; companyId: string }): Record<string, string> {
  return {
    [LABEL_RESOURCE]: r.resourceId,
    ...(r.leaseId ? { [LABEL_LEASE]: r.leaseId } : {}),
    [LABEL_ENVIRONMENT]: r.environmentId,
    [LABEL_COMPANY]: r.companyId,
  };
}

export async function provision(st: RunState): Promise<ProvisionedResource> {
  const { deps, run } = st;
  const env = st.environment!;
  const lease = st.lease!;
  const resourceId = lease.resourceId;
  if (!resourceId) throw Object.assign(new Error(`lease ${lease.id} has no resource record`), { code: 'internal' });
  if (st.warm) {
    // A warm claim: the pool's refill made it (and ran its setup) before any lease; nothing to wait for.
    const m = st.warm;
    await deps.onPhase?.('provisioned', run);
    return { resourceId: m.resourceId, providerId: m.providerId, state: m.state, cwd: m.cwd, details: { ...m.details, warm: true } };
  }
  const cwd = typeof st.agent!.adapterConfig.cwd === 'string' ? st.agent!.adapterConfig.cwd : undefined;
  const stop = new AbortController();
  const onAbort = () => stop.abort(st.abort.signal.reason);
  st.abort.signal.addEventListener('abort', onAbort, { once: true });
  try {
    const made = await withDeadline(
      st.driver!.provision(
        env,
        {
          resourceId,
          leaseId: lease.id,
          labels: resourceLabels({ resourceId, leaseId: lease.id, environmentId: env.id, companyId: run.companyId }),
          ...(cwd ? { cwd } : {}),
          progress: (note) => void st.log.write('system', `${storableText(note).slice(0, 1000)}\n`),
        },
        stop.signal,
      ),
      st.driver!.provisionTimeoutMs?.(env) ?? deps.prepareTimeoutMs ?? 300_000,
      'prepare_timeout',
      `preparing the workspace on ${env.name}`,
      stop,
    );
    st.resource = { resourceId: made.resourceId, providerId: made.providerId, state: made.state };
    await deps.onPhase?.('provisioned', run);
    return st.pooled ? { ...made, details: { ...made.details, warm: false } } : made;
  } finally {
    st.abort.signal.removeEventListener('abort', onAbort);
  }
}
