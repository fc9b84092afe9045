// A route is data: method, path, who may call it, the zod schemas of its query and
// body, and a handler. The same table registers the Hono routes, writes the OpenAPI
// document, and lets the isolation tests call every route.
import type { Context } from 'hono';
import type { SSEStreamingApi } from 'hono/streaming';
import type { z } from 'zod';
import type { FieldIssue } from '../domain/errors.js';
import type { Actor } from '../domain/types.js';
import type { OwnedKind } from '../services/companies.js';
import type { AppDeps, Principal } from './context.js';
import { errorBody, HttpError, loggableError } from './errors.js';

/**
 * public: no key. admin: the instance admin key only. company: a company key (or
 * the admin key, for any company). run: also a run's own token, which the route
 * then checks with `runOwns`.
 */
export type Access = 'public' | 'admin' | 'company' | 'run';

export interface RouteRequest {
  c: Context;
  deps: AppDeps;
  principal: Principal;
  actor: Actor;
  /** The company the request acts in (from the path, the caller's key, or the object's owner). */
  companyId: string;
  params: Record<string, string>;
  query: Record<string, unknown>;
  body: unknown;
  /** Drop remembered keys (after a revocation). */
  forgetKeys: () => void;
}

export interface RouteDef {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  /** Hono syntax: `/api/environments/:id`. */
  path: string;
  summary: string;
  tag: string;
  access: Access;
  /** The path parameter naming the object the route acts on, and its kind: how the company is found for the admin key. */
  owner?: { param: string; kind: OwnedKind };
  /** Query parameters (strings, coerced by the schema). Unknown parameters are refused. */
  query?: z.ZodType;
  /**
   * The request body exactly as this route takes it (fields the path gives are not in
   * it), for the document; the services validate it. The contract test holds the two together.
   */
  body?: z.ZodType;
  bodyRequired?: boolean;
  /**
   * The body is not JSON but bytes of this media type, at most maxBytes: `body` is then a
   * function that reads them (`() => Promise<Buffer>`), for the handler to call once it has
   * found the object the route acts on (an archive, say).
   */
  rawBody?: { type: string; maxBytes: number; description: string };
  /** A success answers with bytes of this media type, not JSON. */
  produces?: string;
  /** Status of a success (default 200). */
  status?: number;
  /** Other statuses a success may answer with (an idempotent repeat, say). */
  alsoStatus?: number[];
  /** Description of the success response, for the document. */
  returns: string;
  /** Answers with server-sent events when asked to. */
  streams?: boolean;
  /** For a run token: does the object belong to the calling run? */
  runOwns?: (r: RouteRequest, runId: string) => Promise<boolean>;
  handle: (r: RouteRequest) => Promise<unknown>;
}

/** The Last-Event-ID a reconnecting client sends (a seq or an activity id), checked like any input. */
export function lastEventId(c: Context, max: number): number | undefined {
  const raw = c.req.header('last-event-id');
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n > max) {
    throw new HttpError(400, 'invalid', `Last-Event-ID must be an integer from 0 to ${max}`, [{ path: 'Last-Event-ID', message: `must be an integer from 0 to ${max}` }]);
  }
  return n;
}

const SSE_PING_MS = 15_000;

/**
 * Writes server-sent events a batch per packet (a long log arrives in a few packets,
 * not one per line), and a comment line when the stream has been quiet for 15 s so
 * proxies keep it open. Event data must be one line (JSON is).
 */
export function sseWriter(stream: SSEStreamingApi) {
  let lastWrite = Date.now();
  return {
    async send(events: Array<{ event: string; id?: number | string; data: string }>): Promise<void> {
      if (events.length === 0) return;
      await stream.write(events.map((e) => `event: ${e.event}\n${e.id !== undefined ? `id: ${e.id}\n` : ''}data: ${e.data}\n\n`).join(''));
      lastWrite = Date.now();
    },
    async pingIfQuiet(): Promise<void> {
      if (Date.now() - lastWrite <= SSE_PING_MS) return;
      await stream.write(': ping\n\n');
      lastWrite = Date.now();
    },
  };
}

/** What a stream does when a step fails after it started: log it (without values) and tell the client. */
export function streamFailed(deps: AppDeps, what: string) {
  return async (err: Error, stream: SSEStreamingApi): Promise<void> => {
    deps.logger.error({ stream: what, err: loggableError(err) }, 'stream failed');
    await stream.writeSSE({ event: 'error', data: JSON.stringify(errorBody('internal', 'the stream failed; reconnect to resume')) }).catch(() => {});
  };
}

export function defineRoutes(routes: RouteDef[]): RouteDef[] {
  return routes;
}

/** A lone UTF-16 surrogate: JSON.parse accepts it, PostgreSQL's jsonb does not. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Why a string cannot be stored, or null. */
export function badText(v: string): string | null {
  if (v.includes('\u0000')) return 'must not contain NUL characters';
  if (LONE_SURROGATE.test(v)) return 'must not contain unpaired UTF-16 surrogates';
  return null;
}

/** Malformed input as field issues: where JSON cannot go into PostgreSQL, or nests absurdly deep. */
export function jsonIssues(value: unknown, maxDepth = 32): FieldIssue[] {
  const issues: FieldIssue[] = [];
  const walk = (v: unknown, path: string, depth: number): void => {
    if (issues.length > 0) return;
    if (depth > maxDepth) {
      issues.push({ path: path || '(body)', message: `nests deeper than ${maxDepth} levels` });
      return;
    }
    if (typeof v === 'string') {
      const why = badText(v);
      if (why) issues.push({ path: path || '(body)', message: why });
    } else if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, path ? `${path}.${i}` : String(i), depth + 1));
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        const p = path ? `${path}.${k}` : k;
        const why = badText(k);
        if (why) {
          issues.push({ path: p.replace(/\u0000/g, '\\0').replace(/[\ud800-\udfff]/g, '?'), message: `field names ${why}` });
          return;
        }
        walk(x, p, depth + 1);
      }
    }
  };
  walk(value, '', 0);
  return issues;
}
