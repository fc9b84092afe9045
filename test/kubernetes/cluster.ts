// The one-node Kubernetes cluster the test command started (scripts/engines/kubernetes.sh):
// its API server, CA, tokens, image and node, and an admin client for what the tests look at
// behind the driver's back. A test that needs it and finds it missing or down fails: it never skips.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { CoreV1Api, KubeConfig, type V1Pod } from '@kubernetes/client-node';

export interface TestCluster {
  api: string;
  ca: string;
  token: string;
  limitedToken: string;
  image: string;
  node: string;
  /** A client certificate and key (PEM) the API server takes, in system:masters. */
  clientCert: string;
  clientKey: string;
  core: CoreV1Api;
  /** A `kubernetes` environment config for this cluster (the admin token). */
  config(extra?: Record<string, unknown>): Record<string, unknown>;
  /** The pod, or null once it is gone. */
  pod(name: string, namespace?: string): Promise<V1Pod | null>;
}

export function testCluster(): TestCluster {
  const { BERTH_K8S_API: api, BERTH_K8S_CA: caPath, BERTH_K8S_TOKEN: token, BERTH_K8S_LIMITED_TOKEN: limitedToken, BERTH_K8S_IMAGE: image } = process.env;
  if (!api || !caPath || !token || !limitedToken || !image) {
    throw new Error('the kubernetes tests need BERTH_K8S_API, BERTH_K8S_CA, BERTH_K8S_TOKEN, BERTH_K8S_LIMITED_TOKEN and BERTH_K8S_IMAGE: run them through `npm test`, which starts etcd, kube-apiserver, containerd and the kubelet (scripts/engines/kubernetes.sh)');
  }
  const node = process.env.BERTH_K8S_NODE ?? 'localhost';
  const ca = readFileSync(caPath, 'utf8');
  const certPath = process.env.BERTH_K8S_CLIENT_CERT;
  const keyPath = process.env.BERTH_K8S_CLIENT_KEY;
  if (!certPath || !keyPath) throw new Error('the kubernetes tests need BERTH_K8S_CLIENT_CERT and BERTH_K8S_CLIENT_KEY (scripts/engines/kubernetes.sh makes them)');
  try {
    const out = execFileSync('curl', ['-sf', '-m', '5', '--cacert', caPath, '-H', `Authorization: Bearer ${token}`, `${api}/api/v1/nodes/${node}`], { encoding: 'utf8' });
    const ready = (JSON.parse(out).status?.conditions ?? []).find((c: { type: string }) => c.type === 'Ready');
    if (ready?.status !== 'True') throw new Error(`node ${node} is not Ready`);
  } catch (err) {
    throw new Error(`the test Kubernetes cluster at ${api} does not answer or its node is down: ${(err as Error).message}`);
  }
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 't', server: api, caData: Buffer.from(ca).toString('base64') }],
    users: [{ name: 't', token }],
    contexts: [{ name: 't', cluster: 't', user: 't' }],
    currentContext: 't',
  });
  const core = kc.makeApiClient(CoreV1Api);
  return {
    api,
    ca,
    token,
    limitedToken,
    image,
    node,
    clientCert: readFileSync(certPath, 'utf8'),
    clientKey: readFileSync(keyPath, 'utf8'),
    core,
    config: (extra = {}) => ({ apiServer: api, caCert: ca, token, image, imagePullPolicy: 'Never', nodeName: node, ...extra }),
    pod: async (name, namespace = 'default') => core.readNamespacedPod({ name, namespace }).catch((err: { code?: number }) => (err.code === 404 ? null : Promise.reject(err))),
  };
}
