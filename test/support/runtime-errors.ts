// A runtime's own errors, collected so a test fails on one it did not provoke (instead of
// a sweep that throws on every tick going unnoticed).
import { afterEach, expect } from 'vitest';

export interface RuntimeErrors {
  onError: (where: string, err: unknown) => void;
  /** Every error so far, as `where: message`. */
  readonly seen: string[];
  /** Forget errors a test provoked on purpose (after checking them). */
  take(match: RegExp): string[];
}

/** Collect the runtime's errors; after each test of the file, none may be left unexplained. */
export function collectRuntimeErrors(): RuntimeErrors {
  const seen: string[] = [];
  const errors: RuntimeErrors = {
    onError: (where, err) => void seen.push(`${where}: ${(err as Error)?.message ?? String(err)}`),
    seen,
    take(match) {
      const hit = seen.filter((e) => match.test(e));
      for (const h of hit) seen.splice(seen.indexOf(h), 1);
      return hit;
    },
  };
  afterEach(() => {
    const left = seen.splice(0);
    expect(left, 'runtime errors this test did not provoke').toEqual([]);
  });
  return errors;
}
