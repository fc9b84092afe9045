// What a `kubernetes` environment is: a namespace of a Kubernetes cluster this server reaches
// through the cluster's API server, and how each lease's pod is made there: image, resource
// requests and limits, runtime class, service account, node selector (or one node), labels.
// The credentials (a bearer token, or a client certificate and its key) are sealed at rest.
// Pure data; the driver is driver.ts.
import { z } from 'zod';
import type { DriverDescriptor } from '../contract.js';

const pem = (what: string) =>
  z
    .string()
    .max(65536)
    .refine((v) => /-----BEGIN [A-Z ]+-----[\s\S]+-----END [A-Z ]+-----/.test(v), `must be ${what} in PEM (-----BEGIN ...-----)`);

/** A DNS-1123 label (a namespace, a service account, a runtime class, a node). */
const dnsLabel = (what: string) => z.string().trim().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, `must be ${what} (lower-case letters, digits and -, at most 63)`);

/** A label or node-selector key: an optional DNS prefix and a name. */
const LABEL_KEY_RE = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
const labelValue = z.string().regex(/^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$/, 'must be a label value (letters, digits, . _ -, at most 63)');

/** A map of labels, each key checked with its own message (at the key's path). */
const labelMap = (berthReserved: boolean) =>
  z.record(z.string(), labelValue).superRefine((m, ctx) => {
    for (const k of Object.keys(m)) {
      if (!LABEL_KEY_RE.test(k)) ctx.addIssue({ code: 'custom', path: [k], message: 'must be a label key (prefix/name: letters, digits, . _ -, at most 63)' });
      else if (berthReserved && k.startsWith('berth.')) ctx.addIssue({ code: 'custom', path: [k], message: 'must not start with berth. (Berth sets those labels itself)' });
    }
  });

/** A Kubernetes quantity for cpu (`500m`, `2`) or memory (`64Mi`, `1G`). */
const quantity = z.string().trim().regex(/^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/, 'must be a quantity (500m, 2, 64Mi, 1Gi)');
const resourceList = z.strictObject({ cpu: quantity.optional(), memory: quantity.optional(), 'ephemeral-storage': quantity.optional() });

export const kubernetesConfigSchema = z
  .strictObject({
    /** The API server (`https://host:port`). */
    apiServer: z
      .string()
      .trim()
      .max(1000)
      .superRefine((v, ctx) => {
        let u: URL;
        try {
          u = new URL(v);
        } catch {
          ctx.addIssue({ code: 'custom', message: 'must be a URL (https://host:port)' });
          return;
        }
        if (u.protocol !== 'https:') ctx.addIssue({ code: 'custom', message: 'must be https:// (the API server speaks TLS)' });
        else if (u.pathname !== '/' && u.pathname !== '') ctx.addIssue({ code: 'custom', message: 'must not have a path' });
        else if (u.username || u.password || u.search || u.hash) ctx.addIssue({ code: 'custom', message: 'must be only scheme, host and port' });
      }),
    /** The cluster's CA certificate (PEM) the API server's certificate is checked against. */
    caCert: pem('a CA certificate'),
    /** A bearer token (a service account's, or a static one). Secret. */
    token: z.string().trim().min(1, 'must not be empty').max(16384).regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces').optional(),
    /** A client certificate (PEM) and its key (PEM, secret), in place of a token. */
    clientCert: pem('a certificate').optional(),
    clientKey: pem('a private key').optional(),
    namespace: dnsLabel('a namespace name').default('default'),
    image: z.string().trim().min(1, 'must not be empty').max(500).regex(/^[^\s]+$/, 'must not contain spaces'),
    imagePullPolicy: z.enum(['Always', 'IfNotPresent', 'Never']).default('IfNotPresent'),
    resources: z.strictObject({ requests: resourceList.optional(), limits: resourceList.optional() }).default({}),
    runtimeClassName: dnsLabel('a runtime class name').optional(),
    serviceAccount: dnsLabel('a service account name').optional(),
    nodeSelector: labelMap(false).default({}),
    /** One node to run on (spec.nodeName): for a cluster without a scheduler, or to pin runs. */
    nodeName: z.string().trim().regex(/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/, 'must be a node name').optional(),
    /** Extra labels on every pod. */
    labels: labelMap(true).default({}),
    /** Where the run starts in the pod (made if the image lacks it). */
    workspacePath: z
      .string()
      .regex(/^\//, 'must be an absolute path')
      .refine((p) => !p.split('/').includes('..'), 'must not contain ..')
      .refine((p) => p !== '/', 'must not be /')
      .default('/workspace'),
    /**
     * Mount an emptyDir volume of the pod's own at workspacePath (writable whatever the image,
     * sized by the node's ephemeral storage). Off by default: the kubelet's volume setup adds
     * about 350 ms to each pod's start (measured on the test node); the workspace is then a
     * directory of the container's own file system.
     */
    workspaceVolume: z.boolean().default(false),
    /** How long a run's pod may take to start (scheduling, image pull) before the run fails and the pod is deleted. */
    startTimeoutSeconds: z.number().int('must be an integer').min(5, 'must be at least 5').max(24 * 3600, 'must be at most 86400 (a day)').default(300),
    /** The pod's terminationGracePeriodSeconds: how long a TERM has before the kubelet kills. */
    terminationGraceSeconds: z.number().int('must be an integer').min(1, 'must be at least 1').max(3600).default(10),
  })
  .superRefine((c, ctx) => {
    const cert = c.clientCert !== undefined || c.clientKey !== undefined;
    if (c.token !== undefined && cert) ctx.addIssue({ code: 'custom', path: ['token'], message: 'give a token or a client certificate, not both' });
    else if (c.token === undefined && !cert) ctx.addIssue({ code: 'custom', path: ['token'], message: 'is required (or clientCert and clientKey)' });
    else if (cert && c.clientCert === undefined) ctx.addIssue({ code: 'custom', path: ['clientCert'], message: 'is required with clientKey' });
    else if (cert && c.clientKey === undefined) ctx.addIssue({ code: 'custom', path: ['clientKey'], message: 'is required with clientCert' });
  });
export type KubernetesConfig = z.infer<typeof kubernetesConfigSchema>;

export const kubernetesDescriptor: DriverDescriptor = {
  kind: 'kubernetes',
  title: 'a pod on a Kubernetes cluster',
  adapters: ['process'],
  form: [
    { path: 'apiServer', label: 'API server', type: 'text', placeholder: 'https://cluster.example:6443' },
    { path: 'caCert', label: 'CA certificate (PEM)', type: 'textarea' },
    { path: 'token', label: 'Bearer token', type: 'password' },
    { path: 'namespace', label: 'Namespace', type: 'text', placeholder: 'default' },
    { path: 'image', label: 'Image', type: 'text', placeholder: 'debian:12' },
    { path: 'serviceAccount', label: 'Service account', type: 'text' },
    { path: 'runtimeClassName', label: 'Runtime class', type: 'text' },
  ],
  configSchema: kubernetesConfigSchema,
  secretPaths: [
    { path: 'token', shownAs: 'hasToken' },
    { path: 'clientKey', shownAs: 'hasClientKey' },
  ],
  // The run is the pod's main process: it goes on in the cluster when its server stops, and
  // its output is the pod's log, which any server with the credentials follows from the last
  // timestamp it took. Pods carry Berth's labels: listed by label selector.
  capabilities: { reattach: true, pool: false, list: true, streamOutput: true, hostLocal: false },
};
