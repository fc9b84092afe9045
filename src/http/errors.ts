// One error shape for every failure: {error: {code, message, fields?, details?}, message},
// and the one place a BerthError code becomes an HTTP status. The top-level `message`
// repeats error.message for clients that read only that (Paperclip's print it).
import type { ErrorCode, FieldIssue } from '../domain/errors.js';
import { BerthError } from '../domain/errors.js';

/** Errors only the HTTP layer raises (auth, malformed requests). */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly fields?: FieldIssue[],
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  not_found: 404,
  invalid: 422,
  conflict: 409,
  capacity_exhausted: 409,
  workspace_busy: 409,
  environment_archived: 409,
  stale_fence: 409,
  lease_not_active: 409,
  lease_expired: 409,
  database_locked: 503,
  no_workspace: 409,
  no_driver: 409,
  provision_failed: 502,
  not_supported: 501,
  driver_failed: 502,
};

export interface ErrorBody {
  error: { code: string; message: string; fields?: FieldIssue[]; details?: Record<string, unknown> };
  message: string;
}

export function errorBody(code: string, message: string, fields?: FieldIssue[], details?: Record<string, unknown>): ErrorBody {
  return { error: { code, message, ...(fields ? { fields } : {}), ...(details ? { details } : {}) }, message };
}

/** The status and body for an error, or null when it is not one we expected (a 500). */
export function expectedError(err: unknown): { status: number; body: ErrorBody } | null {
  if (err instanceof HttpError) return { status: err.status, body: errorBody(err.code, err.message, err.fields) };
  if (err instanceof BerthError) return { status: STATUS_BY_CODE[err.code] ?? 400, body: errorBody(err.code, err.message, err.fields, err.details) };
  return null;
}

/**
 * An unexpected error as it may be logged: its kind, code and where it was thrown,
 * never the values involved. A failed query's message carries its parameters, and
 * PostgreSQL quotes the offending value in many messages (a secret, possibly).
 */
export function loggableError(err: unknown): Record<string, unknown> {
  const e = err as { name?: string; message?: string; code?: string; stack?: string; cause?: { code?: string; message?: string } };
  const first = (m: string | undefined) => (m ?? '').split('\n')[0]!.split(':')[0]!.slice(0, 200);
  return {
    type: e?.name ?? typeof err,
    message: first(e?.message),
    ...(e?.code ? { code: e.code } : {}),
    ...(e?.cause ? { cause: { code: e.cause.code, message: first(e.cause.message) } } : {}),
    // Only the frames: the stack's first lines repeat the message, parameters and all.
    stack: (e?.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l)).slice(0, 8).join('\n'),
  };
}
