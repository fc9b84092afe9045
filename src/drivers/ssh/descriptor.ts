// What an `ssh` environment is: its config (a host reached with a private key and a pinned
// host key) and which of it is secret. Pure data; the driver is driver.ts.
import ssh2 from 'ssh2';
import { z } from 'zod';
import type { DriverDescriptor } from '../contract.js';

export const sshConfigSchema = z
  .strictObject({
    host: z.string().trim().min(1, 'must not be empty').max(255),
    port: z.number().int('must be an integer').min(1, 'must be 1–65535').max(65535, 'must be 1–65535').default(22),
    username: z.string().trim().min(1, 'must not be empty').max(64),
    remoteWorkspacePath: z
      .string()
      .regex(/^\//, 'must be an absolute path')
      .refine((p) => !p.split('/').includes('..'), 'must not contain ..'),
    // Checked here, at create and update, so a key ssh2 cannot read is a 422 naming the field, not a failed run later.
    privateKey: z
      .string()
      .min(1, 'must not be empty')
      .max(65536)
      .superRefine((key, ctx) => {
        const problem = privateKeyProblem(key);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      })
      .optional(),
    knownHosts: z.string().min(1, 'must not be empty').max(65536).optional(),
    strictHostKeyChecking: z.boolean().default(true),
  })
  .superRefine((cfg, ctx) => {
    if (cfg.strictHostKeyChecking && !cfg.knownHosts) {
      ctx.addIssue({ code: 'custom', path: ['knownHosts'], message: 'is required while strictHostKeyChecking is true' });
    }
  });
export type SshConfig = z.infer<typeof sshConfigSchema>;

export const sshDescriptor: DriverDescriptor = {
  kind: 'ssh',
  title: 'a remote host over SSH',
  adapters: ['process'],
  form: [
    { path: 'host', label: 'Host', type: 'text' },
    { path: 'port', label: 'Port', type: 'number', placeholder: '22' },
    { path: 'username', label: 'Username', type: 'text' },
    { path: 'remoteWorkspacePath', label: 'Remote workspace path', type: 'text', placeholder: '/srv/berth' },
    { path: 'privateKey', label: 'Private key', type: 'textarea' },
    { path: 'knownHosts', label: 'known_hosts', type: 'textarea' },
    { path: 'strictHostKeyChecking', label: 'Strict host key checking', type: 'checkbox' },
  ],
  configSchema: sshConfigSchema,
  secretPaths: [{ path: 'privateKey', shownAs: 'hasPrivateKey' }],
  // The remote process runs in its own session on the host, its output in files there: it
  // survives this server, and another server watches it again from its handle and offset.
  // A resource is a directory, labelled in a file: made ahead of any lease, and listed.
  capabilities: { reattach: true, pool: true, list: true, streamOutput: true, hostLocal: false },
};

/**
 * Why ssh2 cannot use `key` as a private key, or null when it can. Never ssh2's own
 * message: some of those quote bytes decoded from the key (a mangled key's "magic", its
 * cipher or type name), and a key's bytes must not reach a response, a log or a row.
 */
export function privateKeyProblem(key: string): string | null {
  let parsed: ReturnType<typeof ssh2.utils.parseKey>;
  try {
    // Through the default export: node's ESM loader does not see `utils` among ssh2's named exports.
    parsed = ssh2.utils.parseKey(key);
  } catch {
    parsed = new Error('unparseable');
  }
  const first = Array.isArray(parsed) ? (parsed[0] as unknown) : parsed;
  if (first instanceof Error || !first) {
    if (first instanceof Error && first.message.startsWith('Encrypted')) return 'is encrypted with a passphrase, which Berth cannot supply: give an unencrypted key';
    return 'is not a private key Berth can read: give a whole OpenSSH or PEM private key file, its BEGIN and END lines included';
  }
  if ((first as { getPrivatePEM(): string | null }).getPrivatePEM() === null) return 'is a public key: give the private key';
  return null;
}
