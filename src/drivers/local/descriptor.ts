// What a `local` environment is: this machine. Its config is empty unless its runs are
// isolated: `isolation: "bubblewrap"` runs each process in a bubblewrap sandbox (bwrap.ts)
// that sees its workspace read-write, the system read-only, no network but its route to
// Berth (unless `network: "host"`), its own pids, and no capabilities.
import { z } from 'zod';
import type { DriverDescriptor } from '../contract.js';

const sandboxPath = z
  .string()
  .max(4000)
  .regex(/^\//, 'must be an absolute path')
  .refine((p) => !p.includes('\0'), 'must not contain a NUL byte')
  .refine((p) => !p.split('/').includes('..'), 'must not contain ..')
  .refine((p) => p.replace(/\/+$/, '') !== '', 'must not be /');

const pathList = z.array(sandboxPath).max(64, 'must list at most 64 paths');

export const localConfigSchema = z
  .strictObject({
    /** `none` (absent): the run is a process of the server's user, as it is. `bubblewrap`: a bwrap sandbox. */
    isolation: z.enum(['none', 'bubblewrap']).optional(),
    /** With bubblewrap: `none` (absent) gives the run only its loopback and its route to Berth; `host` shares the host's network. */
    network: z.enum(['none', 'host']).optional(),
    /** With bubblewrap: more paths the run may write (bound read-write at the same place). */
    writablePaths: pathList.optional(),
    /** With bubblewrap: paths shown read-only (under a hidden path, say: the server's home is hidden). */
    readOnlyPaths: pathList.optional(),
    /** With bubblewrap: more paths hidden behind an empty read-only directory (the server's home and Berth's own directory always are). */
    hiddenPaths: pathList.optional(),
  })
  .superRefine((c, ctx) => {
    if (c.isolation === 'bubblewrap') return;
    for (const key of ['network', 'writablePaths', 'readOnlyPaths', 'hiddenPaths'] as const) {
      if (c[key] !== undefined) ctx.addIssue({ code: 'custom', path: [key], message: 'applies only with isolation "bubblewrap"' });
    }
  });
export type LocalConfig = z.infer<typeof localConfigSchema>;

export const localDescriptor: DriverDescriptor = {
  kind: 'local',
  title: 'this machine',
  adapters: ['process', 'http'],
  configSchema: localConfigSchema,
  configDefault: {},
  secretPaths: [],
  // A local run's output comes through this server's spawner helper: it dies with the server.
  capabilities: { reattach: false, pool: true, list: true, streamOutput: true, hostLocal: true },
};
