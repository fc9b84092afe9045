// Reads PostgreSQL errors through drizzle's wrapping, the same on both drivers.

export interface PgErrorInfo {
  code: string;
  constraint?: string;
  message: string;
}

export function pgErrorOf(err: unknown): PgErrorInfo | null {
  for (let e = err as { code?: unknown; constraint?: unknown; message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; depth++) {
    if (typeof e.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code)) {
      const info: PgErrorInfo = { code: e.code, message: String(e.message ?? '') };
      if (typeof e.constraint === 'string') info.constraint = e.constraint;
      return info;
    }
    e = e.cause as typeof e;
  }
  return null;
}

export const PG_UNIQUE_VIOLATION = '23505';
export const PG_FOREIGN_KEY_VIOLATION = '23503';
export const PG_FEATURE_NOT_SUPPORTED = '0A000';
