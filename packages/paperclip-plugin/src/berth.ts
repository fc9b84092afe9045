// The few Berth routes the plugin calls, with plain fetch (the plugin is installed into
// Paperclip on its own, without Berth's package). Berth's errors are
// {"error": {"code", "message", "fields"?}}; they are thrown as BerthError with that code.
import type { BerthPluginConfig } from './config.js';

/** A Berth lease as GET /api/environment-leases/:id answers it (the fields the plugin reads). */
export interface BerthLease {
  id: string;
  companyId: string;
  environmentId: string;
  status: 'active' | 'released' | 'expired' | 'failed' | 'retained' | 'pending_cleanup' | string;
  fence: number;
  expiresAt: string | null;
  maxExpiresAt?: string | null;
  releasedAt?: string | null;
  idempotencyKey?: string | null;
  driver: string | null;
  cleanupStatus: 'pending' | 'success' | 'failed' | 'skipped' | null | string;
  cleanupAttempts?: number;
  nextCleanupAt?: string | null;
  failureReason?: string | null;
  metadata?: Record<string, unknown>;
  /** What Berth's driver reported about the resource it made for the lease (its workspace `cwd`...). */
  driverState?: Record<string, unknown> | null;
}

export interface BerthEnvironment {
  id: string;
  companyId: string;
  name: string;
  driver: string;
  status: string;
}

export class BerthError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
    this.name = 'BerthError';
  }
}

const REQUEST_TIMEOUT_MS = 30_000;

export async function berth<T>(config: BerthPluginConfig, method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = REQUEST_TIMEOUT_MS): Promise<T> {
  const headers: Record<string, string> = { authorization: `Bearer ${config.apiKey}`, accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(`${config.berthUrl}${path}`, {
      method,
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new BerthError(`Berth at ${config.berthUrl} did not answer ${method} ${path}: ${cause?.code ?? cause?.message ?? (err as Error).message}`, 0, 'unreachable');
  }
  const text = await res.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const e = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error;
    const code = typeof e?.code === 'string' ? e.code : `http_${res.status}`;
    const message = typeof e?.message === 'string' ? e.message : text.slice(0, 300) || res.statusText;
    throw new BerthError(`Berth refused ${method} ${path}: ${res.status} ${code}: ${message}`, res.status, code);
  }
  return parsed as T;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The configured environment, by id or by name within the key's company. */
export async function resolveEnvironment(config: BerthPluginConfig): Promise<BerthEnvironment> {
  if (UUID_RE.test(config.environment)) {
    return berth<BerthEnvironment>(config, 'GET', `/api/environments/${encodeURIComponent(config.environment)}`);
  }
  const companies = await berth<Array<{ id: string }>>(config, 'GET', '/api/companies');
  for (const company of companies) {
    const envs = await berth<BerthEnvironment[]>(config, 'GET', `/api/companies/${encodeURIComponent(company.id)}/environments`);
    const found = envs.find((e) => e.name === config.environment);
    if (found) return found;
  }
  throw new BerthError(`Berth has no environment named ${JSON.stringify(config.environment)} in this key's company`, 404, 'not_found');
}

export function getLease(config: BerthPluginConfig, leaseId: string): Promise<BerthLease> {
  return berth<BerthLease>(config, 'GET', `/api/environment-leases/${encodeURIComponent(leaseId)}`);
}
