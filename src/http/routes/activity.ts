// The audit log of a company, newest first, filtered and paged.
import { z } from 'zod';
import { defineRoutes } from '../route.js';

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
  ]);
