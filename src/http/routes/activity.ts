// The audit log of a company, newest first, filtered and paged.
import { streamSSE } from 'hono/streaming';
import { z } from 'zod';
import { defineRoutes, lastEventId, sseWriter, streamFailed } from '../route.js';

export const activityRoutes = () =>
  defineRoutes([
    {
      method: 'GET',
      path: '/api/companies/:companyId/activity',
      summary: 'Activity, newest first; filters: entityType, entityId, runId, action; next page: the X-Next-Cursor header as ?before=',
      tag: 'activity',
      access: 'company',
      query: z.strictObject({
        entityType: z.string().max(100).optional(),
        entityId: z.string().max(200).optional(),
        runId: z.uuid('must be a UUID').optional(),
        action: z.string().max(200).optional(),
        limit: z.coerce.number().int('must be an integer').min(1, 'must be 1-500').max(500, 'must be 1-500').optional(),
        before: z.coerce.number().int('must be an integer').positive('must be positive').max(Number.MAX_SAFE_INTEGER).optional(),
      }),
      returns: 'ActivityEntry[]',
      async handle({ deps, companyId, query, c }) {
        const page = await deps.services.activity.list(companyId, query);
        if (page.nextBefore !== null) c.header('x-next-cursor', String(page.nextBefore));
        return page.items;
      },
    },
    {
      method: 'GET',
      path: '/api/companies/:companyId/events',
      summary:
        'Live activity: server-sent events `activity` (one activity row; its id is the event id) for every change after `after` (default: from now). Last-Event-ID resumes. What the dashboard listens to.',
      tag: 'activity',
      access: 'company',
      streams: true,
      query: z.strictObject({ after: z.coerce.number().int('must be an integer').min(0, 'must be 0 or more').max(Number.MAX_SAFE_INTEGER).optional() }),
      returns: 'an event stream',
      async handle({ deps, companyId, query, c }) {
        let after = lastEventId(c, Number.MAX_SAFE_INTEGER) ?? (query.after as number | undefined) ?? (await deps.services.activity.latestId(companyId));
        const pollMs = Math.max(deps.logPollMs ?? 150, 250);
        return streamSSE(c, async (stream) => {
          const out = sseWriter(stream);
          await out.send([{ event: 'ready', data: JSON.stringify({ after }) }]);
          while (!stream.aborted) {
            const rows = await deps.services.activity.since(companyId, after);
            await out.send(rows.map((row) => ({ event: 'activity', id: row.id, data: JSON.stringify(row) })));
            if (rows.length > 0) after = rows[rows.length - 1]!.id;
            await out.pingIfQuiet();
            if (rows.length < 200) await stream.sleep(pollMs);
          }
        }, streamFailed(deps, `events of company ${companyId}`));
      },
    },
  ]);
