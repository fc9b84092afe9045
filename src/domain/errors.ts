// Errors are values with a code; the HTTP layer maps each code to one status.

export const ERROR_CODES = [
  'not_found',
  'invalid',
  'conflict',
  'capacity_exhausted',
  'workspace_busy',
  'environment_archived',
  'stale_fence',
  'lease_not_active',
  'lease_expired',
  'database_locked',
  /** The lease owns no workspace (acquired without provision: true), or it is not made yet. */
  'no_workspace',
  /** This server has no driver for the environment. */
  'no_driver',
  /** The driver could not make the lease's resource. */
  'provision_failed',
  /** The environment's driver cannot do what was asked (files on a Slurm job, say). */
  'not_supported',
  /** The environment's driver failed at what was asked (its message says how). */
  'driver_failed',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export interface FieldIssue {
  /** Dotted path of the offending field, e.g. `config.port`. */
  path: string;
  message: string;
}

export class BerthError extends Error {
  readonly code: ErrorCode;
  readonly fields?: FieldIssue[];
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: { fields?: FieldIssue[]; details?: Record<string, unknown> } = {}) {
    super(message);
    this.name = 'BerthError';
    this.code = code;
    if (opts.fields) this.fields = opts.fields;
    if (opts.details) this.details = opts.details;
  }
}

export function notFound(what: string, id: string): BerthError {
  return new BerthError('not_found', `${what} ${id} not found`);
}

export function isBerthError(err: unknown, code?: ErrorCode): err is BerthError {
  return err instanceof BerthError && (code === undefined || err.code === code);
}

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A malformed id can name nothing: it is `not_found`, never a database error. */
export function requireId(id: string, what: string): string {
  if (typeof id !== 'string' || !UUID_RE.test(id)) throw notFound(what, String(id));
  return id;
}
