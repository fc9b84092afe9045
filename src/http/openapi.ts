// The OpenAPI 3.1 document, written from the route table and its zod schemas.
import { z } from 'zod';
import { RESPONSES, STREAM_ONLY } from './responses.js';
import type { RouteDef } from './route.js';

/** A request schema describes what may be sent (defaults make a field optional); a response what is received. */
function schemaOf(s: z.ZodType, io: 'input' | 'output' = 'input'): Record<string, unknown> {
  const json = z.toJSONSchema(s, { io, unrepresentable: 'any' }) as Record<string, unknown>;
  delete json.$schema;
  return json;
}

/** The route's key in RESPONSES: its method and path as the table writes them. */
export const routeKey = (r: RouteDef): string => `${r.method} ${r.path}`;

const ERROR_REF = { $ref: '#/components/schemas/Error' };

export function buildOpenApi(routes: RouteDef[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const path = r.path.replace(/:(\w+)/g, '{$1}');
    const parameters: unknown[] = [...r.path.matchAll(/:(\w+)/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'string' } }));
    if (r.query) {
      const q = schemaOf(r.query) as { properties?: Record<string, unknown>; required?: string[] };
      for (const [name, schema] of Object.entries(q.properties ?? {})) {
        parameters.push({ name, in: 'query', required: q.required?.includes(name) ?? false, schema });
      }
    }
    const errors: Record<string, unknown> = {};
    const errorStatuses = r.access === 'public' ? ['500', '503'] : ['400', '401', '403', '404', '409', '413', '422', '503'];
    for (const s of errorStatuses) errors[s] = { description: 'error', content: { 'application/json': { schema: ERROR_REF } } };
    const response = RESPONSES[routeKey(r)];
    if (!response && !STREAM_ONLY.has(routeKey(r))) throw new Error(`no response schema for ${routeKey(r)} in src/http/responses.ts`);
    const content: Record<string, unknown> = response ? { 'application/json': { schema: schemaOf(response, 'output') } } : {};
    if (r.streams) content['text/event-stream'] = { schema: { type: 'string' } };
    if (r.produces) content[r.produces] = { schema: { type: 'string', contentMediaType: r.produces } };
    const successes = Object.fromEntries([r.status ?? 200, ...(r.alsoStatus ?? [])].map((s) => [String(s), { description: r.returns, content }]));
    (paths[path] ??= {})[r.method.toLowerCase()] = {
      summary: r.summary,
      tags: [r.tag],
      ...(r.access === 'public' ? { security: [] } : {}),
      ...(r.access === 'admin' ? { description: 'Needs the instance admin key.' } : {}),
      ...(r.access === 'run' ? { description: "A run's own token (PAPERCLIP_API_KEY) may call this for its own run and leases." } : {}),
      parameters,
      ...(r.body ? { requestBody: { required: r.bodyRequired ?? false, content: { 'application/json': { schema: schemaOf(r.body) } } } } : {}),
      ...(r.rawBody
        ? { requestBody: { required: true, description: `${r.rawBody.description}, at most ${r.rawBody.maxBytes} bytes`, content: { [r.rawBody.type]: { schema: { type: 'string', contentMediaType: r.rawBody.type } } } } }
        : {}),
      responses: { ...successes, ...errors },
    };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Berth API', version, description: 'Environments, leases, agents, heartbeat runs and activity. Errors: {error: {code, message, fields?}, message}.' },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'A company API key, the instance admin key, or a run token' } },
      schemas: {
        Error: {
          type: 'object',
          required: ['error', 'message'],
          properties: {
            message: { type: 'string', description: 'error.message again, for clients that read only a top-level message' },
            error: {
              type: 'object',
              required: ['code', 'message'],
              properties: {
                code: { type: 'string' },
                message: { type: 'string' },
                fields: { type: 'array', items: { type: 'object', properties: { path: { type: 'string' }, message: { type: 'string' } } } },
                details: { type: 'object' },
              },
            },
          },
        },
      },
    },
    security: [{ bearer: [] }],
    paths,
  };
}
