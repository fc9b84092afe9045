// Liveness: the only route that answers without a key. 503 with the reason while
// the database does not answer (a load balancer takes the server out, nothing crashed).
import { HttpError } from '../errors.js';
import { defineRoutes } from '../route.js';

/** A ping that takes longer than this counts as no answer. */
export const HEALTH_DATABASE_TIMEOUT_MS = 3000;

/** Why the ping failed, in words that never carry a value: a code and the first words of the message. */
function reason(err: unknown): string {
  // The driver's own error, under any wrapping (a failed query's message quotes the query).
  let e = err as { code?: unknown; message?: unknown; cause?: unknown };
  for (let depth = 0; e?.cause && depth < 5; depth++) e = e.cause as typeof e;
  const code = typeof e?.code === 'string' ? e.code : null;
  const message = String(e?.message ?? err).split('\n')[0]!.slice(0, 200);
  return code && !message.includes(code) ? `${message} (${code})` : message;
}

export const healthRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/health',
      summary: 'Is the server up and its database answering? (no key needed; 503 with the reason while the database does not answer)',
      tag: 'health',
      access: 'public',
      returns: '{ok, version, database}',
      async handle({ deps }) {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${HEALTH_DATABASE_TIMEOUT_MS} ms`)), HEALTH_DATABASE_TIMEOUT_MS);
        });
        try {
          await Promise.race([deps.services.companies.ping(), late]);
        } catch (err) {
          throw new HttpError(503, 'database_unavailable', `the ${deps.database} database does not answer: ${reason(err)}`);
        } finally {
          clearTimeout(timer);
        }
        return { ok: true, version: deps.version, database: deps.database };
      },
    },
  ]);
