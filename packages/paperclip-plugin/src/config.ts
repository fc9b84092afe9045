// The plugin's configuration: which Berth server, the company API key it acts with, which
// Berth environment its leases come from, and how long a lease lives between renewals.
// Every driver call validates the config it is given; validateConfig says what is wrong
// with each field in one message per field.

/** Berth refuses a lease TTL over 7 days. */
export const MAX_TTL_SECONDS = 7 * 24 * 3600;
/** The renewal timer fires every ttl/3; below 3 s it would fire more than once a second. */
export const MIN_TTL_SECONDS = 3;
export const DEFAULT_TTL_SECONDS = 300;

export interface BerthPluginConfig {
  /** The Berth server, e.g. http://127.0.0.1:3710 (no trailing slash). */
  berthUrl: string;
  /** A Berth company API key (bk_…). Resolved by Paperclip from a secret; never logged. */
  apiKey: string;
  /** The Berth environment leases are taken from: its id, or its name in the key's company. */
  environment: string;
  /** How long a lease lives without a renewal; the plugin renews it every ttlSeconds/3 while Paperclip holds it. */
  ttlSeconds: number;
}

/** Keys Paperclip's own sandbox config may carry next to the provider's: tolerated, not used. */
const HOST_KEYS = new Set(['provider', 'timeoutMs', 'reuseLease', 'image']);
const OWN_KEYS = new Set(['berthUrl', 'apiKey', 'environment', 'ttlSeconds']);

export interface ConfigCheck {
  config: BerthPluginConfig | null;
  errors: string[];
  warnings: string[];
}

export function checkConfig(raw: unknown): ConfigCheck {
  const errors: string[] = [];
  const warnings: string[] = [];
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    return { config: null, errors: ['config must be an object with berthUrl, apiKey, environment and ttlSeconds'], warnings };
  }
  const c = raw as Record<string, unknown>;

  let berthUrl = '';
  if (typeof c.berthUrl !== 'string' || c.berthUrl.trim() === '') {
    errors.push('berthUrl is required: the Berth server, e.g. http://127.0.0.1:3710');
  } else {
    try {
      const u = new URL(c.berthUrl.trim());
      if (u.protocol !== 'http:' && u.protocol !== 'https:') errors.push(`berthUrl must be an http:// or https:// URL (got ${u.protocol}//)`);
      else if (u.username || u.password) errors.push('berthUrl must not carry credentials: give the key in apiKey');
      else if (u.search || u.hash) errors.push('berthUrl must not have a query or fragment');
      else berthUrl = u.toString().replace(/\/+$/, '');
    } catch {
      errors.push('berthUrl is not a URL: give the Berth server, e.g. http://127.0.0.1:3710');
    }
  }

  let apiKey = '';
  if (typeof c.apiKey !== 'string' || c.apiKey.trim() === '') {
    errors.push('apiKey is required: a Berth company API key (bk_…), kept as a Paperclip secret');
  } else if (!c.apiKey.trim().startsWith('bk_')) {
    // Never quote the value: it may be a secret given in the wrong field.
    errors.push('apiKey must be a Berth company API key (it starts with bk_); an admin key or a run token is not accepted');
  } else {
    apiKey = c.apiKey.trim();
  }

  let environment = '';
  if (typeof c.environment !== 'string' || c.environment.trim() === '') {
    errors.push("environment is required: the Berth environment's id or its name");
  } else if (c.environment.trim().length > 200) {
    errors.push('environment must be at most 200 characters');
  } else {
    environment = c.environment.trim();
  }

  let ttlSeconds = DEFAULT_TTL_SECONDS;
  if (c.ttlSeconds !== undefined && c.ttlSeconds !== null) {
    if (typeof c.ttlSeconds !== 'number' || !Number.isInteger(c.ttlSeconds)) {
      errors.push('ttlSeconds must be a whole number of seconds');
    } else if (c.ttlSeconds < MIN_TTL_SECONDS || c.ttlSeconds > MAX_TTL_SECONDS) {
      errors.push(`ttlSeconds must be between ${MIN_TTL_SECONDS} and ${MAX_TTL_SECONDS} (7 days), got ${c.ttlSeconds}`);
    } else {
      ttlSeconds = c.ttlSeconds;
    }
  }

  for (const key of Object.keys(c)) {
    if (OWN_KEYS.has(key) || HOST_KEYS.has(key)) continue;
    warnings.push(`unknown config key ${JSON.stringify(key)} is ignored`);
  }

  if (errors.length > 0) return { config: null, errors, warnings };
  return { config: { berthUrl, apiKey, environment, ttlSeconds }, errors, warnings };
}

/** The config of a driver call, or an Error naming what is wrong with it. */
export function requireConfig(raw: unknown): BerthPluginConfig {
  const checked = checkConfig(raw);
  if (!checked.config) throw new Error(`invalid Berth provider config: ${checked.errors.join('; ')}`);
  return checked.config;
}

/** The JSON Schema Paperclip renders the environment form from; apiKey is a secret reference. */
export const configSchema = {
  type: 'object',
  additionalProperties: true,
  required: ['berthUrl', 'apiKey', 'environment'],
  properties: {
    berthUrl: { type: 'string', title: 'Berth URL', description: 'The Berth server, e.g. http://127.0.0.1:3710', format: 'uri' },
    apiKey: { type: 'string', title: 'Berth company API key', description: 'A Berth company API key (bk_…), kept as a Paperclip secret', format: 'secret-ref' },
    environment: { type: 'string', title: 'Berth environment', description: "The Berth environment's id, or its name", maxLength: 200 },
    ttlSeconds: {
      type: 'integer',
      title: 'Lease TTL (seconds)',
      description: 'How long a Berth lease lives without a renewal; the plugin renews it every TTL/3 while Paperclip holds it',
      minimum: MIN_TTL_SECONDS,
      maximum: MAX_TTL_SECONDS,
      default: DEFAULT_TTL_SECONDS,
    },
  },
} as const;
