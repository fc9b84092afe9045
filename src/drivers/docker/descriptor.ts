// What a `docker` environment is: a container engine that speaks the Docker Engine API
// (Docker itself, or Podman's Docker-compatible service) and how each lease's container is
// made there: image, user, limits, network, OCI runtime. Pure data; the driver is driver.ts.
import { z } from 'zod';
import type { DriverDescriptor } from '../contract.js';

/** Where the engine listens: a unix socket (`unix:///run/docker.sock` or a bare absolute path) or `tcp://`/`http://`/`https://host:port`. */
export type EngineEndpoint = { socketPath: string } | { protocol: 'http' | 'https'; host: string; port: number };

export function parseEndpoint(raw: string): EngineEndpoint | string {
  if (raw.startsWith('/')) return { socketPath: raw };
  if (raw.startsWith('unix://')) {
    const p = raw.slice('unix://'.length);
    return p.startsWith('/') ? { socketPath: p } : 'a unix endpoint needs an absolute path (unix:///run/docker.sock)';
  }
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return 'must be unix:///path/to/socket, an absolute socket path, or tcp://host:port';
  }
  const protocol = u.protocol === 'https:' ? 'https' : u.protocol === 'http:' || u.protocol === 'tcp:' ? 'http' : null;
  if (!protocol) return `has protocol ${JSON.stringify(u.protocol)}: use unix://, tcp://, http:// or https://`;
  if (!u.hostname) return 'names no host';
  if (u.pathname !== '/' && u.pathname !== '') return 'must not have a path';
  return { protocol, host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || (protocol === 'https' ? 2376 : 2375)) };
}

const labelKey = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/, 'must be a label key (letters, digits, . _ / -)')
  .refine((k) => !k.startsWith('berth.'), 'must not start with berth. (Berth sets those labels itself)');

export const dockerConfigSchema = z.strictObject({
  endpoint: z
    .string()
    .trim()
    .min(1, 'must not be empty')
    .max(1000)
    .superRefine((v, ctx) => {
      const e = parseEndpoint(v);
      if (typeof e === 'string') ctx.addIssue({ code: 'custom', message: e });
    })
    .default('unix:///var/run/docker.sock'),
  image: z.string().trim().min(1, 'must not be empty').max(500).regex(/^[^\s]+$/, 'must not contain spaces'),
  /** The user the container and the run's process run as (`1000`, `1000:1000`, `nobody`); absent: the image's. */
  user: z.string().regex(/^[A-Za-z0-9_.-]{1,64}(?::[A-Za-z0-9_.-]{1,64})?$/, 'must be user or user:group (names or ids)').optional(),
  /** Memory limit, MiB. */
  memoryMb: z.number().int('must be an integer').min(6, 'must be at least 6 (MiB)').max(1 << 20).optional(),
  /** CPU limit, in CPUs (0.5 = half a CPU). */
  cpus: z.number().positive('must be more than 0').max(1024).optional(),
  /** Most processes (threads) the container may hold. */
  pidsLimit: z.number().int('must be an integer').min(8, 'must be at least 8').max(1 << 22).default(1024),
  readOnlyRootfs: z.boolean().default(false),
  /** `none` (default): only loopback, and the one route Berth gives to its API. Otherwise a network the engine knows (`bridge`...). */
  network: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, 'must be a network name').default('none'),
  /** The OCI runtime: `runc` (default), or `runsc` (gVisor) where the engine has it. */
  runtime: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'must be a runtime name').default('runc'),
  /** Where the workspace is inside the container (a volume of its own, removed with the container). */
  workspacePath: z
    .string()
    .regex(/^\//, 'must be an absolute path')
    .refine((p) => !p.split('/').includes('..'), 'must not contain ..')
    .refine((p) => p !== '/', 'must not be /')
    .default('/workspace'),
  /** Extra labels on every container. */
  labels: z.record(labelKey, z.string().max(1000)).default({}),
  /** `never` (default): a missing image is an error; `missing`: pull it when it is absent. */
  pull: z.enum(['never', 'missing']).default('never'),
  /** TLS for an https endpoint: PEM texts. The key is secret. */
  tls: z
    .strictObject({
      ca: z.string().min(1).max(65536).optional(),
      cert: z.string().min(1).max(65536).optional(),
      key: z.string().min(1).max(65536).optional(),
    })
    .optional(),
});
export type DockerConfig = z.infer<typeof dockerConfigSchema>;

export const dockerDescriptor: DriverDescriptor = {
  kind: 'docker',
  title: 'a container (Docker or Podman)',
  adapters: ['process'],
  form: [
    { path: 'endpoint', label: 'Engine endpoint', type: 'text', placeholder: 'unix:///var/run/docker.sock' },
    { path: 'image', label: 'Image', type: 'text', placeholder: 'debian:12' },
    { path: 'user', label: 'User', type: 'text', placeholder: "the image's" },
    { path: 'network', label: 'Network', type: 'text', placeholder: 'none' },
    { path: 'memoryMb', label: 'Memory limit (MiB)', type: 'number' },
    { path: 'cpus', label: 'CPU limit', type: 'number' },
    { path: 'pidsLimit', label: 'Process limit', type: 'number', placeholder: '1024' },
    { path: 'runtime', label: 'OCI runtime', type: 'text', placeholder: 'runc' },
    { path: 'readOnlyRootfs', label: 'Read-only root file system', type: 'checkbox' },
  ],
  configSchema: dockerConfigSchema,
  secretPaths: [{ path: 'tls.key', shownAs: 'hasTlsKey' }],
  // A run's output comes over the exec's attach stream to the server that started it: when
  // that server is gone the process goes on in its container (and dies there at its
  // deadline), but no other server can read it back, so it is stopped on recovery.
  // Containers carry Berth's labels: listed by the engine, made ahead of any lease.
  capabilities: { reattach: false, pool: true, list: true, streamOutput: true, hostLocal: false },
};
