// A route is data: method, path, who may call it, the zod schemas of its query and
// body, and a handler. The same table registers the Hono routes, writes the OpenAPI
// document, and lets the isolation tests call every route.
import type { Context } from 'hono';
import type { z } from 'zod';
import type { FieldIssue } from '../domain/errors.js';
import type { Actor } from '../domain/types.js';
import type { OwnedKind } from '../services/companies.js';
import type { AppDeps, Principal } from './context.js';

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
  /** The request body, for the document; the services validate it. */
  body?: z.ZodType;
  bodyRequired?: boolean;
  /** Status of a success (default 200). */
  status?: number;
  /** Description of the success response, for the document. */
  returns: string;
  /** Answers with server-sent events when asked to. */
  streams?: boolean;
  /** For a run token: does the object belong to the calling run? */
  runOwns?: (r: RouteRequest, runId: string) => Promise<boolean>;
  handle: (r: RouteRequest) => Promise<unknown>;
}

export function defineRoutes(routes: RouteDef[]): RouteDef[] {
  return routes;
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
      if (v.includes('\u0000')) issues.push({ path: path || '(body)', message: 'must not contain NUL characters' });
    } else if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, path ? `${path}.${i}` : String(i), depth + 1));
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        const p = path ? `${path}.${k}` : k;
        if (k.includes('\u0000')) {
          issues.push({ path: p.replace(/\u0000/g, '\\0'), message: 'field names must not contain NUL characters' });
          return;
        }
        walk(x, p, depth + 1);
      }
    }
  };
  walk(value, '', 0);
  return issues;
}
