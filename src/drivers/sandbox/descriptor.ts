// What a `sandbox` environment is: a provider's sandbox (E2B, Daytona, a plugin), named by
// `provider`, with the provider's own options. No driver serves it yet: environments can be
// made and their options are sealed, but runs are refused on them.
import { z } from 'zod';
import type { DriverDescriptor } from '../contract.js';

export const sandboxConfigSchema = z.strictObject({
  provider: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/, 'must match ^[a-z0-9][a-z0-9._-]*$').max(100),
  options: z.record(z.string(), z.unknown()).default({}),
  // Paperclip's sandbox config keeps these at its top (for the providers that take them):
  // not secrets, so not sealed with the options.
  /** The sandbox's image or template. */
  image: z.string().trim().min(1, 'must not be empty').max(1000).optional(),
  /** How long the provider may take to make the sandbox, ms. */
  timeoutMs: z.number().int('must be an integer').positive('must be greater than 0').max(24 * 3600 * 1000).optional(),
  /** Keep the sandbox for the next lease (Paperclip's reusable leases). */
  reuseLease: z.boolean().optional(),
});

export const sandboxDescriptor: DriverDescriptor = {
  kind: 'sandbox',
  title: "a provider's sandbox",
  adapters: [],
  form: [{ path: 'provider', label: 'Provider', type: 'text' }],
  configSchema: sandboxConfigSchema,
  // Sealed whole: Berth cannot know which of a provider's options hold its key (apiKey,
  // token, auth: {...}); a name guess would leak the ones it misses. Reads show the names.
  secretPaths: [{ path: 'options.*', shownAs: 'optionNames', json: true }],
  capabilities: { reattach: false, pool: false, list: false, streamOutput: false, hostLocal: false },
};
