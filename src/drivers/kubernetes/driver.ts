// The `kubernetes` driver: one pod per lease, made, followed and deleted through the
// cluster's API server with @kubernetes/client-node; no kubectl, no controller of Berth's in
// the cluster.
//
// A resource is the pod `berth-<resource id>` in the environment's namespace. Provision
// only records it (what the run is told names the cluster, namespace and pod): the run is
// the pod's main process, so exec makes the pod with the run's command, directory and
// deadline (activeDeadlineSeconds: the kubelet ends it past the deadline whether or not a
// server is watching). Why not a waiting pod and the exec API: an exec's output comes over
// one websocket to the server that opened it, and dies with it; a main process's output is
// the pod's log, which any server reads back, so a run outlives its server (reattach).
// The run's environment (PAPERCLIP_* and the environment's variables) is a Secret of the
// same name, read by the pod through envFrom and owned by it: no value is in the pod's spec.
// watch follows the pod's log (stdout and stderr as the kubelet merges them) and counts the
// bytes it took: another server re-reads the log and skips what was taken. The exit code,
// OOMKilled and the deadline come from the pod's status. TERM deletes the pod with its grace
// period (the kubelet sends TERM, then KILL); KILL shortens the grace to 1 s. destroy
// deletes the pod (grace, then force) and its Secret; a pod already gone is success.
// Names, labels and what is deleted come from the resource id alone.
import { createHash } from 'node:crypto';
import { request as httpsRequest, type RequestOptions } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { ApiException, AuthorizationV1Api, CoreV1Api, KubeConfig, VersionApi, type V1Pod } from '@kubernetes/client-node';
import { ENV_VAR_NAME_RE } from '../../domain/enums.js';
import { UUID_RE } from '../../domain/errors.js';
import { storableText } from '../../domain/text.js';
import { checkedResourceId, DriverError, storedConfig } from '../common.js';
import {
  LABEL_COMPANY,
  LABEL_ENVIRONMENT,
  LABEL_LEASE,
  LABEL_RESOURCE,
  type CleanupReport,
  type DriverEnvironment,
  type EnvironmentDriver,
  type ExecutionHandle,
  type ExitResult,
  type ListedResource,
  type OutputListener,
  type ProbeResult,
  type ProvisionedResource,
  type WatchOptions,
} from '../contract.js';
import { kubernetesConfigSchema, kubernetesDescriptor, type KubernetesConfig } from './descriptor.js';

/** The pod's one container. */
export const CONTAINER = 'run';
const SIGNAL_BY_NUMBER: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM' };
/** Waiting reasons a pod does not recover from by itself: the run fails at once (and the pod is deleted). */
const STUCK = new Set(['ErrImageNeverPull', 'InvalidImageName', 'ImagePullBackOff', 'CreateContainerConfigError', 'CreateContainerError', 'RunContainerError']);
/** Terminated reasons that say the command never ran. */
const NOT_STARTED = new Set(['StartError', 'ContainerCannotRun']);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const configOf = (env: DriverEnvironment): KubernetesConfig => storedConfig(kubernetesConfigSchema, env, 'kubernetes');

/** `berth-<resource id>`: the one pod (and Secret) name this driver gives a resource, from the id alone. */
export function podName(resourceId: string): string {
  return `berth-${checkedResourceId(resourceId).toLowerCase()}`;
}

/** The API server's host:port, as the cluster's name in what a run is told and in handles. */
function clusterOf(cfg: KubernetesConfig): string {
  return new URL(cfg.apiServer).host;
}

const where = (cfg: KubernetesConfig, pod: string) => `pod ${cfg.namespace}/${pod} on ${clusterOf(cfg)}`;

/** The HTTP status of a failed API call (0 when it never got an answer). */
function statusOf(err: unknown): number {
  return err instanceof ApiException ? err.code : 0;
}

/** What the API server said, for an error message: its Status message, or the transport's error (never a credential). */
function messageOf(err: unknown): string {
  if (err instanceof ApiException) {
    let msg = '';
    try {
      const body = typeof err.body === 'string' ? JSON.parse(err.body) : err.body;
      msg = typeof body?.message === 'string' ? body.message : '';
    } catch {
      msg = typeof err.body === 'string' ? err.body : '';
    }
    return storableText(`HTTP ${err.code}${msg ? `: ${msg}` : ''}`).slice(0, 500);
  }
  const e = err as { message?: string; cause?: { code?: string; message?: string }; code?: string };
  const code = e?.cause?.code ?? e?.code;
  return storableText(`${e?.message ?? String(err)}${code ? ` (${code})` : ''}`).slice(0, 500);
}

const fail = (code: string, what: string, err: unknown) => new DriverError(code, `${what}: ${messageOf(err)}`);

interface Client {
  kc: KubeConfig;
  core: CoreV1Api;
  authz: AuthorizationV1Api;
  version: VersionApi;
}

interface ExecRef {
  namespace: string;
  pod: string;
  resourceId: string;
  uid: string;
}

function execRef(exe: ExecutionHandle): ExecRef {
  const r = exe.ref as Partial<ExecRef>;
  if (typeof r.resourceId !== 'string' || !UUID_RE.test(r.resourceId)) throw new DriverError('kubernetes_handle', 'not a kubernetes execution handle');
  return { namespace: String(r.namespace ?? ''), pod: String(r.pod ?? ''), resourceId: r.resourceId, uid: String(r.uid ?? '') };
}

/** Where a chunk of UTF-8 can be cut without splitting a character: its length less a trailing incomplete sequence. */
function completeUtf8(buf: Buffer): number {
  let i = buf.length - 1;
  let back = 0;
  while (i >= 0 && back < 4 && (buf[i]! & 0xc0) === 0x80) {
    i--;
    back++;
  }
  if (i < 0) return buf.length;
  const lead = buf[i]!;
  const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return buf.length - i < need ? i : buf.length;
}

/** A failure line of the kubelet's (`rpc error: code = NotFound desc = ...`): the CRI's error text. */
const KUBELET_ERROR_RE = /(?:^|\n)(rpc error: code = [A-Za-z]+ desc = [^\n]*\n?)$/;

/** Where a trailing kubelet failure line starts in `buf` (-1: none); `atLineStart` says whether `buf` starts a line. */
function kubeletErrorAt(buf: Buffer, atLineStart: boolean): number {
  const tail = buf.subarray(Math.max(0, buf.length - 4096)).toString('latin1');
  const m = KUBELET_ERROR_RE.exec(tail);
  if (!m) return -1;
  const start = buf.length - Buffer.byteLength(m[1]!, 'latin1');
  if (start === 0 && !atLineStart) return -1;
  return start;
}

/** The run's container status, if the kubelet has reported one. */
const containerOf = (pod: V1Pod) => pod.status?.containerStatuses?.find((c) => c.name === CONTAINER);

/** Berth's labels the pod carries: the resource's, with the lease, environment and company ids. */
function berthLabels(env: DriverEnvironment, resourceId: string, leaseId: string | null): Record<string, string> {
  const labels: Record<string, string> = { [LABEL_RESOURCE]: resourceId, [LABEL_ENVIRONMENT]: env.id };
  if (leaseId) labels[LABEL_LEASE] = leaseId;
  if (env.companyId) labels[LABEL_COMPANY] = env.companyId;
  return labels;
}

export interface KubernetesDriverOptions {
  /** How often exec and watch read the pod's status while waiting on it, ms. Default 100. */
  pollMs?: number;
  /** How long destroy waits for a deleted pod to go (the kubelet stops its containers) before it force-deletes, ms. Default 30 s. */
  deleteWaitMs?: number;
  /** Counts each API request made (for the benchmark's operation counts). */
  onRequest?: (what: string) => void;
}

export function kubernetesDriver(opts: KubernetesDriverOptions = {}): EnvironmentDriver {
  const pollMs = opts.pollMs ?? 100;
  const deleteWaitMs = opts.deleteWaitMs ?? 30_000;
  const count = opts.onRequest ?? (() => {});
  const clients = new Map<string, Client>();
  /** Signals this server sent, by pod: a pod it deleted ended by its signal, not "outside Berth". */
  const signalled = new Map<string, 'TERM' | 'KILL'>();

  function clientOf(cfg: KubernetesConfig): Client {
    // Keyed by a hash of where and who (the credentials are never a map key in clear).
    const key = createHash('sha256').update(JSON.stringify([cfg.apiServer, cfg.caCert, cfg.token ?? null, cfg.clientCert ?? null, cfg.clientKey ?? null])).digest('hex');
    const known = clients.get(key);
    if (known) return known;
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'berth', server: cfg.apiServer.replace(/\/$/, ''), caData: b64(cfg.caCert), skipTLSVerify: false }],
      users: [cfg.token ? { name: 'berth', token: cfg.token } : { name: 'berth', certData: b64(cfg.clientCert!), keyData: b64(cfg.clientKey!) }],
      contexts: [{ name: 'berth', cluster: 'berth', user: 'berth' }],
      currentContext: 'berth',
    });
    const c: Client = { kc, core: kc.makeApiClient(CoreV1Api), authz: kc.makeApiClient(AuthorizationV1Api), version: kc.makeApiClient(VersionApi) };
    clients.set(key, c);
    return c;
  }

  async function readPod(c: Client, namespace: string, name: string): Promise<V1Pod | null> {
    count('get pod');
    try {
      return await c.core.readNamespacedPod({ name, namespace });
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw fail('kubernetes_api', `reading pod ${namespace}/${name}`, err);
    }
  }

  /** Delete the pod; true when there was one to delete. */
  async function deletePod(c: Client, cfg: KubernetesConfig, name: string, graceSeconds: number): Promise<boolean> {
    count('delete pod');
    try {
      await c.core.deleteNamespacedPod({
        name,
        namespace: cfg.namespace,
        gracePeriodSeconds: graceSeconds,
      });
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw fail('kubernetes_delete', `deleting ${where(cfg, name)}`, err);
    }
  }

  async function deleteSecret(c: Client, cfg: KubernetesConfig, name: string): Promise<boolean> {
    count('delete secret');
    try {
      await c.core.deleteNamespacedSecret({ name, namespace: cfg.namespace });
      return true;
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw fail('kubernetes_delete', `deleting secret ${cfg.namespace}/${name}`, err);
    }
  }

  /**
   * Follow the container's log from its start, skipping the first `skip` bytes (what an
   * earlier watch took), each chunk through `onChunk` (awaited: backpressure). Resolves when
   * the kubelet ends the stream (the container exited, or the connection dropped).
   */
  async function followLog(c: Client, cfg: KubernetesConfig, name: string, skip: number, onChunk: (b: Buffer) => Promise<void>, signal?: AbortSignal): Promise<void> {
    const url = new URL(`${cfg.apiServer.replace(/\/$/, '')}/api/v1/namespaces/${cfg.namespace}/pods/${name}/log`);
    url.searchParams.set('container', CONTAINER);
    url.searchParams.set('follow', 'true');
    const ro: RequestOptions = { method: 'GET' };
    await c.kc.applyToHTTPSOptions(ro);
    count('follow log');
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpsRequest(url, { ...ro, ...(signal ? { signal } : {}) }, resolve);
      req.on('error', reject);
      req.end();
    });
    if (res.statusCode !== 200) {
      let body = '';
      for await (const d of res) body += String(d);
      let msg = body;
      try {
        msg = JSON.parse(body).message ?? body;
      } catch {
        /* not a Status */
      }
      const e = new DriverError('kubernetes_log', `the log of ${where(cfg, name)}: HTTP ${res.statusCode}: ${storableText(msg).slice(0, 300)}`);
      (e as { status?: number }).status = res.statusCode;
      throw e;
    }
    let skipped = 0;
    // The kubelet reports a failure met after the stream began (the container removed while
    // its log was followed) as a last line of the body itself: a line that looks like one is
    // held back, and dropped if the stream ends with it (taken as output if more follows).
    let held: Buffer = Buffer.alloc(0);
    let atLineStart = skip === 0;
    for await (const raw of res as AsyncIterable<Buffer>) {
      let chunk = raw;
      if (skipped < skip) {
        const take = Math.min(skip - skipped, chunk.length);
        skipped += take;
        if (take > 0) atLineStart = chunk[take - 1] === 0x0a;
        chunk = chunk.subarray(take);
        if (chunk.length === 0) continue;
      }
      const buf = held.length ? Buffer.concat([held, chunk]) : chunk;
      const at = kubeletErrorAt(buf, atLineStart);
      const out = at < 0 ? buf : buf.subarray(0, at);
      held = at < 0 ? Buffer.alloc(0) : buf.subarray(at);
      if (out.length) {
        atLineStart = out[out.length - 1] === 0x0a;
        await onChunk(out);
      }
    }
  }

  return {
    ...kubernetesDescriptor,

    /** Whether the API answers (and its version), the namespace exists, and these credentials may create pods and Secrets there. */
    async probe(env, signal): Promise<ProbeResult> {
      const started = performance.now();
      const cfg = configOf(env);
      const c = clientOf(cfg);
      const done = (ok: boolean, details: Record<string, unknown>, error?: string): ProbeResult => ({ ok, latencyMs: performance.now() - started, details, ...(error ? { error } : {}) });
      const details: Record<string, unknown> = { apiServer: cfg.apiServer, namespace: cfg.namespace };
      signal?.throwIfAborted();
      try {
        count('get version');
        const v = await c.version.getCode();
        details.serverVersion = v.gitVersion;
      } catch (err) {
        const s = statusOf(err);
        if (s === 401) return done(false, details, `the API server at ${cfg.apiServer} refused the credentials (401 Unauthorized)`);
        if (s === 403) details.serverVersion = null;
        else return done(false, details, `the API server at ${cfg.apiServer} does not answer: ${messageOf(err)}`);
      }
      const errors: string[] = [];
      try {
        count('get namespace');
        await c.core.readNamespace({ name: cfg.namespace });
        details.namespaceExists = true;
      } catch (err) {
        const s = statusOf(err);
        if (s === 404) {
          details.namespaceExists = false;
          errors.push(`namespace ${cfg.namespace} does not exist`);
        } else if (s === 403) details.namespaceExists = 'unknown (may not read namespaces)';
        else return done(false, details, `reading namespace ${cfg.namespace}: ${messageOf(err)}`);
      }
      for (const resource of ['pods', 'secrets'] as const) {
        count('access review');
        const r = await c.authz
          .createSelfSubjectAccessReview({ body: { apiVersion: 'authorization.k8s.io/v1', kind: 'SelfSubjectAccessReview', spec: { resourceAttributes: { namespace: cfg.namespace, verb: 'create', resource } } } })
          .catch((err: unknown) => {
            throw fail('kubernetes_api', `asking whether these credentials may create ${resource}`, err);
          });
        const allowed = r.status?.allowed === true;
        details[resource === 'pods' ? 'mayCreatePods' : 'mayCreateSecrets'] = allowed;
        if (!allowed) errors.push(`these credentials may not create ${resource} in namespace ${cfg.namespace}${r.status?.reason ? ` (${r.status.reason})` : ''}`);
      }
      return errors.length ? done(false, details, errors.join('; ')) : done(true, details);
    },

    /**
     * Nothing is made yet: the pod is the run's process, made by exec. What the run is told
     * names where its pod will be.
     */
    async provision(env, req): Promise<ProvisionedResource> {
      const cfg = configOf(env);
      const pod = podName(req.resourceId);
      const labels = berthLabels(env, req.resourceId, req.leaseId);
      const details = {
        cluster: clusterOf(cfg),
        namespace: cfg.namespace,
        pod,
        ...(cfg.nodeName ? { node: cfg.nodeName } : {}),
        image: cfg.image,
        cwd: cfg.workspacePath,
        providerLeaseId: `k8s://${clusterOf(cfg)}/${cfg.namespace}/${pod}`,
      };
      return { resourceId: req.resourceId, providerId: pod, state: { namespace: cfg.namespace, pod, labels }, cwd: cfg.workspacePath, details };
    },

    async exec(env, resource, spec, signal): Promise<ExecutionHandle> {
      const cfg = configOf(env);
      const c = clientOf(cfg);
      const name = podName(resource.resourceId);
      const deadlineSec = spec.deadlineSec ?? 0;
      if (!Number.isInteger(deadlineSec) || deadlineSec < 0) throw new Error(`deadlineSec must be a whole number of seconds, not ${deadlineSec}`);
      for (const [k, v] of Object.entries(spec.env)) {
        if (!ENV_VAR_NAME_RE.test(k)) throw new Error(`environment variable name ${JSON.stringify(k)} is not valid`);
        if (v.includes('\0')) throw new Error(`environment variable ${k} contains a NUL byte`);
      }
      for (const a of [spec.command, ...spec.args, spec.cwd]) if (a.includes('\0')) throw new Error('the command, its arguments and its directory must not contain NUL bytes');
      const stored = (resource.state as { labels?: Record<string, string> }).labels ?? {};
      // Berth's labels from the resource id and the environment; the lease and company only as the stored handle has them (ids).
      const labels: Record<string, string> = { ...cfg.labels, ...berthLabels(env, resource.resourceId, null) };
      for (const k of [LABEL_LEASE, LABEL_COMPANY]) if (typeof stored[k] === 'string' && UUID_RE.test(stored[k]!)) labels[k] = stored[k]!;

      // The run's environment, only in a Secret the pod reads (envFrom).
      const secretBody = { apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace: cfg.namespace, labels }, type: 'Opaque', stringData: spec.env };
      signal.throwIfAborted();
      count('create secret');
      try {
        await c.core.createNamespacedSecret({ namespace: cfg.namespace, body: secretBody });
      } catch (err) {
        if (statusOf(err) !== 409) throw fail('kubernetes_create', `creating secret ${cfg.namespace}/${name}`, err);
        // A retry: the Secret of this resource is there; it takes this call's values.
        count('replace secret');
        await c.core.replaceNamespacedSecret({ name, namespace: cfg.namespace, body: secretBody }).catch((e: unknown) => {
          throw fail('kubernetes_create', `replacing secret ${cfg.namespace}/${name}`, e);
        });
      }
      const body: V1Pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace: cfg.namespace, labels },
        spec: {
          restartPolicy: 'Never',
          ...(cfg.nodeName ? { nodeName: cfg.nodeName } : {}),
          ...(Object.keys(cfg.nodeSelector).length ? { nodeSelector: cfg.nodeSelector } : {}),
          ...(cfg.runtimeClassName ? { runtimeClassName: cfg.runtimeClassName } : {}),
          ...(cfg.serviceAccount ? { serviceAccountName: cfg.serviceAccount } : { automountServiceAccountToken: false }),
          enableServiceLinks: false,
          // The run's process is not the pod's PID 1 (the pause container is): a TERM it has no
          // handler for ends it, as on any host, instead of being ignored until the kubelet's KILL.
          shareProcessNamespace: true,
          terminationGracePeriodSeconds: cfg.terminationGraceSeconds,
          ...(deadlineSec > 0 ? { activeDeadlineSeconds: deadlineSec } : {}),
          containers: [
            {
              name: CONTAINER,
              image: cfg.image,
              imagePullPolicy: cfg.imagePullPolicy,
              command: [spec.command],
              args: spec.args,
              workingDir: spec.cwd,
              envFrom: [{ secretRef: { name } }],
              resources: cfg.resources,
              ...(cfg.workspaceVolume ? { volumeMounts: [{ name: 'workspace', mountPath: cfg.workspacePath }] } : {}),
            },
          ],
          ...(cfg.workspaceVolume ? { volumes: [{ name: 'workspace', emptyDir: {} }] } : {}),
        },
      };
      let pod: V1Pod | null = null;
      for (let attempt = 1; pod === null; attempt++) {
        count('create pod');
        try {
          pod = await c.core.createNamespacedPod({ namespace: cfg.namespace, body });
        } catch (err) {
          if (statusOf(err) !== 409) {
            await deleteSecret(c, cfg, name).catch(() => {});
            throw fail('kubernetes_create', `creating ${where(cfg, name)}`, err);
          }
          const found = await readPod(c, cfg.namespace, name);
          if (found && found.metadata?.labels?.[LABEL_RESOURCE] !== resource.resourceId) throw new DriverError('kubernetes_create', `${where(cfg, name)} exists and is not resource ${resource.resourceId}'s`);
          if (!spec.fresh) {
            // A retried create (a run's start re-entered): the pod of this resource is there already, adopted.
            if (!found) continue;
            pod = found;
            break;
          }
          // A new command in a resource that ran others (a lease's commands): an earlier one's pod is
          // never taken for it. One that has ended is deleted and the pod made again; one still running refuses.
          const phase = found?.status?.phase;
          if (found && phase !== 'Succeeded' && phase !== 'Failed') throw new DriverError('kubernetes_busy', `${where(cfg, name)} still runs an earlier command (${phase ?? 'Pending'}): one command at a time on a Kubernetes lease`);
          if (attempt > 3) throw new DriverError('kubernetes_create', `${where(cfg, name)} of an earlier command could not be replaced`);
          if (found) await deletePod(c, cfg, name, 0).catch(() => {});
          const goneBy = Date.now() + 30_000;
          while ((await readPod(c, cfg.namespace, name)) !== null) {
            if (Date.now() > goneBy || signal.aborted) throw new DriverError('kubernetes_create', `${where(cfg, name)} of an earlier command was not deleted within 30 s`);
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
      const uid = pod.metadata?.uid ?? '';
      // The Secret goes with its pod (the cluster's garbage collector deletes it when the pod is).
      if (uid) {
        count('replace secret');
        await c.core
          .replaceNamespacedSecret({ name, namespace: cfg.namespace, body: { ...secretBody, metadata: { ...secretBody.metadata, ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name, uid }] } } })
          .catch(() => {});
      }
      // Started once the kubelet runs the container (or it ended already: watch reports how).
      const startBy = Date.now() + cfg.startTimeoutSeconds * 1000;
      for (;;) {
        if (signal.aborted || Date.now() > startBy) {
          await deletePod(c, cfg, name, 0).catch(() => {});
          signal.throwIfAborted();
          throw new DriverError('kubernetes_start_timeout', `${where(cfg, name)} did not start within ${cfg.startTimeoutSeconds} s (${pod.status?.phase ?? 'Pending'}${pod.status?.conditions?.find((x) => x.status === 'False')?.message ? `: ${pod.status.conditions.find((x) => x.status === 'False')!.message}` : ''})`);
        }
        const st = containerOf(pod)?.state;
        if (st?.running || st?.terminated || pod.status?.phase === 'Failed' || pod.status?.phase === 'Succeeded') break;
        const reason = st?.waiting?.reason;
        if (reason && STUCK.has(reason)) {
          await deletePod(c, cfg, name, 0).catch(() => {});
          throw new DriverError(reason.includes('Image') ? 'kubernetes_image' : 'kubernetes_start', `${where(cfg, name)} cannot start: ${reason}${st?.waiting?.message ? ` (${storableText(st.waiting.message).slice(0, 300)})` : ''}`);
        }
        await sleep(pollMs);
        const next = await readPod(c, cfg.namespace, name);
        if (!next) throw new DriverError('kubernetes_pod_gone', `${where(cfg, name)} was deleted before it started`);
        pod = next;
      }
      return { driver: 'kubernetes', host: clusterOf(cfg), ref: { namespace: cfg.namespace, pod: name, resourceId: resource.resourceId, uid } };
    },

    async watch(env, exe, sink: OutputListener, wopts: WatchOptions = {}): Promise<ExitResult> {
      const cfg = configOf(env);
      const c = clientOf(cfg);
      const ref = execRef(exe);
      // The pod is the resource's, from its id: never a name the handle says.
      const name = podName(ref.resourceId);
      let offset = /^\d{1,15}$/.test(wopts.from ?? '') ? Number(wopts.from) : 0;
      const decoder = new TextDecoder('utf-8');
      let pending: Buffer = Buffer.alloc(0);
      let stopped = false;
      let discarded = 0;
      const take = async (chunk: Buffer, final: boolean) => {
        const buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
        const cut = final ? buf.length : completeUtf8(buf);
        pending = buf.subarray(cut);
        if (cut === 0) return;
        const whole = buf.subarray(0, cut);
        if (stopped) discarded += cut;
        else {
          const text = decoder.decode(whole, { stream: !final });
          if (text && (await sink('stdout', text)) === 'stop') stopped = true;
        }
        offset += cut;
        wopts.onOffset?.(String(offset));
      };
      // Over: gone, its container terminated, or the pod's phase final (a kubelet that ended a pod
      // past its deadline reports phase Failed and leaves the container's last state as it was).
      const over = (p: V1Pod | null) => !p || !!containerOf(p)?.state?.terminated || p.status?.phase === 'Failed' || p.status?.phase === 'Succeeded';
      let pod: V1Pod | null = null;
      for (;;) {
        wopts.signal?.throwIfAborted();
        // A stream the kubelet ended (clean) means the container exited; one that broke or was refused (not yet running) does not.
        let clean = false;
        try {
          await followLog(c, cfg, name, offset, (b) => take(b, false), wopts.signal);
          clean = true;
        } catch (err) {
          wopts.signal?.throwIfAborted();
          if (!(err instanceof DriverError)) await sleep(pollMs);
        }
        // After a clean end the container's status follows within a moment (the kubelet's next
        // relist): read it until then. A pod being deleted is read until it is gone (its log may
        // already be removed); one that still runs 3 s after a clean end had its stream dropped.
        let ended = false;
        const since = Date.now();
        for (let i = 0; ; i++) {
          wopts.signal?.throwIfAborted();
          pod = await readPod(c, cfg.namespace, name);
          if (over(pod)) {
            ended = true;
            break;
          }
          if (!clean || (!pod!.metadata?.deletionTimestamp && Date.now() - since > 3000)) break;
          await sleep(Math.min(pollMs * (1 + Math.floor(i / 10)), 1000));
        }
        if (ended) {
          // A stream that broke just before the end: what the log holds past the offset (read to its end at once).
          if (!clean && pod && !pod.metadata?.deletionTimestamp) await followLog(c, cfg, name, offset, (b) => take(b, false)).catch(() => {});
          break;
        }
      }
      await take(Buffer.alloc(0), true);
      const extra: Partial<ExitResult> = discarded > 0 ? { discardedBytes: discarded } : {};
      const by = signalled.get(name);
      signalled.delete(name);
      if (!pod) {
        if (by) return { exitCode: null, signal: by === 'KILL' ? 'SIGKILL' : 'SIGTERM', ...extra };
        return { exitCode: null, signal: null, ...extra, error: `${where(cfg, name)} is gone (deleted outside Berth): how it ended is unknown`, errorCode: 'kubernetes_pod_gone' };
      }
      const term = containerOf(pod)?.state?.terminated;
      if (term && NOT_STARTED.has(term.reason ?? '')) return { exitCode: null, signal: null, ...extra, spawnError: storableText(term.message ?? term.reason ?? 'the container could not start').slice(0, 500) };
      const code = term?.exitCode ?? null;
      const sigNo = term?.signal ?? (code !== null && code > 128 && SIGNAL_BY_NUMBER[code - 128] ? code - 128 : 0);
      const ended = sigNo > 0 ? { exitCode: null, signal: SIGNAL_BY_NUMBER[sigNo] ?? `SIG${sigNo}` } : { exitCode: code, signal: null };
      if (term?.reason === 'OOMKilled') {
        const limit = cfg.resources.limits?.memory;
        return { ...ended, ...extra, error: `${where(cfg, name)} was OOMKilled${limit ? ` (memory limit ${limit})` : ''}`, errorCode: 'out_of_memory' };
      }
      if (pod.status?.reason === 'DeadlineExceeded') {
        return { ...ended, ...extra, error: `${where(cfg, name)} passed its deadline (activeDeadlineSeconds ${pod.spec?.activeDeadlineSeconds ?? '?'}) and was killed by the kubelet`, errorCode: 'timeout' };
      }
      if (by) return { exitCode: null, signal: ended.signal ?? (by === 'KILL' ? 'SIGKILL' : 'SIGTERM'), ...extra };
      if (pod.metadata?.deletionTimestamp) return { ...ended, ...extra, error: `${where(cfg, name)} was deleted outside Berth`, errorCode: 'kubernetes_pod_deleted' };
      if (!term) return { exitCode: null, signal: null, ...extra, error: `${where(cfg, name)} ended ${pod.status?.phase ?? 'Unknown'}${pod.status?.reason ? ` (${pod.status.reason})` : ''} with no exit status`, errorCode: 'kubernetes_pod_failed' };
      return { ...ended, ...extra };
    },

    /** TERM: the pod is deleted with its grace period (the kubelet sends TERM, KILL after it). KILL: the grace is cut to 1 s. */
    async signal(env, exe, sig) {
      const cfg = configOf(env);
      const c = clientOf(cfg);
      const ref = execRef(exe);
      const name = podName(ref.resourceId);
      signalled.set(name, sig);
      await deletePod(c, cfg, name, sig === 'TERM' ? cfg.terminationGraceSeconds : 1);
    },

    /**
     * Delete the resource's pod (an ended pod at once; a running one with a 1 s grace, then
     * forced if the kubelet has not stopped it in time) and its Secret. Only a pod labelled
     * with this resource id is deleted. Idempotent: a pod and Secret already gone are success.
     */
    async destroy(env, resource, signal): Promise<CleanupReport> {
      const cfg = configOf(env);
      const c = clientOf(cfg);
      const name = podName(resource.resourceId);
      const removed: string[] = [];
      const pod = await readPod(c, cfg.namespace, name);
      if (pod && pod.metadata?.labels?.[LABEL_RESOURCE] === resource.resourceId) {
        const over = pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';
        await deletePod(c, cfg, name, over ? 0 : 1);
        if (!over) {
          const by = Date.now() + deleteWaitMs;
          for (;;) {
            signal.throwIfAborted();
            if (!(await readPod(c, cfg.namespace, name))) break;
            if (Date.now() > by) {
              await deletePod(c, cfg, name, 0);
              break;
            }
            await sleep(Math.max(pollMs, 250));
          }
        }
        removed.push(`pod ${cfg.namespace}/${name}`);
      }
      if (await deleteSecret(c, cfg, name)) removed.push(`secret ${cfg.namespace}/${name}`);
      if (removed.length === 0) return { nothing: `no pod or secret ${cfg.namespace}/${name}` };
      return { removed: removed.join(', ') };
    },

    async *list(env, signal): AsyncIterable<ListedResource> {
      const cfg = configOf(env);
      const c = clientOf(cfg);
      signal.throwIfAborted();
      count('list pods');
      const pods = await c.core.listNamespacedPod({ namespace: cfg.namespace, labelSelector: `${LABEL_ENVIRONMENT}=${env.id}` }).catch((err: unknown) => {
        throw fail('kubernetes_api', `listing pods in ${cfg.namespace}`, err);
      });
      // A Secret whose pod was never made (a server stopped between the two creates) is listed too: destroy removes both.
      count('list secrets');
      const secrets = await c.core.listNamespacedSecret({ namespace: cfg.namespace, labelSelector: `${LABEL_ENVIRONMENT}=${env.id}` }).catch((err: unknown) => {
        throw fail('kubernetes_api', `listing secrets in ${cfg.namespace}`, err);
      });
      const podNames = new Set(pods.items.map((p) => p.metadata?.name));
      for (const o of [...pods.items, ...secrets.items.filter((x) => !podNames.has(x.metadata?.name))]) {
        const labels = o.metadata?.labels ?? {};
        const id = labels[LABEL_RESOURCE];
        // Only where the name and the label agree, and only this environment's (and company's).
        if (!id || !UUID_RE.test(id) || podName(id) !== o.metadata?.name || labels[LABEL_ENVIRONMENT] !== env.id) continue;
        if (env.companyId && labels[LABEL_COMPANY] !== undefined && labels[LABEL_COMPANY] !== env.companyId) continue;
        const berth = Object.fromEntries(Object.entries(labels).filter(([k]) => k.startsWith('berth.')));
        const at = o.metadata?.creationTimestamp ? new Date(o.metadata.creationTimestamp) : null;
        yield { providerId: o.metadata.name, labels: berth, createdAt: at && !Number.isNaN(at.getTime()) ? at : null };
      }
    },
  };
}
