// `berth serve`: the database (PGlite under BERTH_HOME, or DATABASE_URL), the
// runtime (scheduler, sweeps, recovery) and the HTTP API in one process. On stop:
// no new runs are claimed, running runs get a grace period (the API stays up for
// them), what is left is cancelled and finalized, then the listener closes.
import { retentionFromEnv } from '../services/retention.js';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { serve, type ServerType } from '@hono/node-server';
import type { Logger } from 'pino';
import { egressPolicy } from '../adapters/egress.js';
import { openDatabase, type Database } from '../db/client.js';
import { defaultDrivers, startRuntime, type Runtime } from '../heartbeat/runtime.js';
import { createApp } from '../http/app.js';
import { prepareSecretsAtRest } from '../secrets/at-rest.js';
import { hashBearerSecret } from '../secrets/bearer.js';
import { loggableError } from '../http/errors.js';
import { createServices, type Services } from '../services/index.js';
import { createMetrics } from '../metrics/index.js';
import { startTracing, tracingFromEnv, tracingTarget } from '../tracing/index.js';
import { ensureAdminKey, removeServerInfo, writeServerInfo } from './home-files.js';
import { createLogger } from './logger.js';

export const DEFAULT_PORT = 3710;

export const BERTH_VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/**
 * Where DATABASE_URL points, as `host:port/database`: never the URL itself, which holds
 * the password. Throws one line naming the variable when it is not a PostgreSQL URL.
 */
export function databaseTarget(url: string): string {
  let u: URL | null = null;
  try {
    u = new URL(url);
  } catch {
    /* refused below */
  }
  const host = u ? u.hostname || u.searchParams.get('host') || '' : '';
  if (!u || !/^postgres(ql)?:$/.test(u.protocol) || !host || (u.port !== '' && !/^\d+$/.test(u.port))) {
    throw new Error('DATABASE_URL is not a PostgreSQL URL (postgres://user:password@host:port/database); its value is not shown, it may hold a password');
  }
  return `${host}:${u.port || 5432}${u.pathname.length > 1 ? u.pathname : ''}`;
}

const DATABASE_CAUSES: Record<string, string> = {
  ECONNREFUSED: 'nothing listens there',
  ENOTFOUND: 'the host name does not resolve',
  EAI_AGAIN: 'the host name does not resolve',
  ETIMEDOUT: 'no answer',
  EHOSTUNREACH: 'the host is unreachable',
  '28P01': 'password authentication failed',
  '28000': 'the server refused this user',
  '3D000': 'the database does not exist',
  '57P03': 'the server is starting or shutting down',
};

/** One line: which database (no password) and what failed. */
function databaseFailure(url: string, err: unknown): string {
  const e = err as { code?: string; message?: string };
  const code = typeof e?.code === 'string' ? e.code : '';
  const why = DATABASE_CAUSES[code] ?? (e?.message ?? String(err)).split('\n')[0]!.slice(0, 200);
  return `cannot use the PostgreSQL database at ${databaseTarget(url)} (DATABASE_URL): ${why}${code ? ` (${code})` : ''}`;
}

/**
 * The URL agents are given to reach this server (PAPERCLIP_API_URL), as an operator
 * wrote it (--public-url, BERTH_PUBLIC_URL): an http(s) URL of a host one can connect
 * to, with no credentials, query or fragment. Returned without a trailing slash, since
 * agents append `/api/...` to it. `source` names where it came from, for the error.
 */
export function parsePublicUrl(text: string, source: string): string {
  let shown = text;
  const bad = (why: string) => new Error(`${source} ${JSON.stringify(shown)} is not a URL agents can reach this server at: ${why}`);
  let u: URL;
  try {
    u = new URL(text.trim());
  } catch {
    throw bad('give an http(s) URL such as http://berth.internal:3710');
  }
  if (u.username || u.password) {
    // Quoted without them: an error is no place for a password.
    const masked = new URL(u.toString());
    masked.username = '***';
    masked.password = '';
    shown = masked.toString();
    throw bad('it must not carry credentials (agents authenticate with PAPERCLIP_API_KEY)');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw bad(`it must be http or https, not ${u.protocol.replace(/:$/, '')}`);
  if (u.search || u.hash) throw bad('it must not have a query or fragment');
  if (WILDCARD_HOSTS.has(u.hostname)) throw bad(`${u.hostname} is an address to listen on, not one to connect to`);
  return u.toString().replace(/\/+$/, '');
}

/** Listen on every interface: not an address a client can connect to. */
const WILDCARD_HOSTS = new Set(['0.0.0.0', '[::]', '::', '']);

/** A URL for host:port that this machine can connect to: loopback for a wildcard bind. */
function connectableUrl(host: string, port: number): string {
  const h = WILDCARD_HOSTS.has(host) ? '127.0.0.1' : host;
  return `http://${h.includes(':') ? `[${h}]` : h}:${port}`;
}

/** BERTH_METRICS_PUBLIC=1: GET /metrics answers without a key (a scraper on a trusted network). */
export function metricsPublicFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = (env.BERTH_METRICS_PUBLIC ?? '').trim();
  if (v === '' || v === '0') return false;
  if (v === '1') return true;
  throw new Error(`BERTH_METRICS_PUBLIC must be 1 (GET /metrics without a key) or 0 (the admin key, the default), not ${JSON.stringify(v.slice(0, 40))}`);
}

export interface ServeOptions {
  port?: number;
  host?: string;
  /** What agents are told to reach this server at (PAPERCLIP_API_URL); default: the bound address (see parsePublicUrl). */
  publicUrl?: string;
  databaseUrl?: string;
  maxConcurrentRuns?: number;
  logger?: Logger;
  /** Write server.json in BERTH_HOME so the CLI finds this server (default true). */
  announce?: boolean;
  /** Run the scheduler in this process (default true). */
  runtime?: boolean;
}

export interface BerthServer {
  /** Where this machine reaches the server: the bound address, loopback when bound to every interface. */
  url: string;
  /** What runs are told to reach it at: --public-url / BERTH_PUBLIC_URL, else `url`. */
  publicUrl: string;
  port: number;
  services: Services;
  database: Database;
  runtime: Runtime | null;
  logger: Logger;
  adminKey: string;
  adminKeyPath: string;
  adminKeyCreated: boolean;
  /** Stop claiming, give running runs graceMs, finalize the rest, close. */
  stop(opts?: { graceMs?: number }): Promise<void>;
}

export async function startServer(opts: ServeOptions = {}): Promise<BerthServer> {
  // Checked before anything starts: a bad URL changes nothing.
  const givenPublicUrl = opts.publicUrl !== undefined ? parsePublicUrl(opts.publicUrl, 'the public URL') : null;
  const logger = opts.logger ?? createLogger();
  const admin = ensureAdminKey();
  egressPolicy(); // a malformed BERTH_HTTP_ALLOW_NETWORKS stops the start, not each http run
  const retention = retentionFromEnv(); // so does a malformed BERTH_*_RETENTION_DAYS
  const metricsPublic = metricsPublicFromEnv(); // and a BERTH_METRICS_PUBLIC that is neither 1 nor 0
  tracingFromEnv(); // and a malformed OTEL_EXPORTER_OTLP_ENDPOINT (tracing starts once the database is open)
  const databaseUrl = opts.databaseUrl || process.env.DATABASE_URL || undefined;
  if (databaseUrl) databaseTarget(databaseUrl); // a malformed URL is refused before anything tries it
  const database = await openDatabase(databaseUrl ? { databaseUrl } : {}).catch((err: unknown) => {
    throw databaseUrl ? new Error(databaseFailure(databaseUrl, err)) : err;
  });
  // Refuses a secret key other than the database's; seals secrets older versions stored in clear.
  await prepareSecretsAtRest(database.db).catch(async (err: unknown) => {
    await database.close();
    throw err;
  });
  // This server's own registry (GET /metrics): what its services and runtime do, and what its database holds.
  const metrics = createMetrics({ processMetrics: true });
  const services = createServices(database.db, metrics);
  metrics.observeDatabase(services.stats.snapshot);
  metrics.observePools(database.pools);
  metrics.describeServer(BERTH_VERSION, database.kind);
  // Spans (src/tracing) when OTEL_EXPORTER_OTLP_ENDPOINT asks for them; otherwise nothing is loaded.
  const tracing = await startTracing({ version: BERTH_VERSION, warn: (message) => logger.warn({ message }, 'tracing: the OpenTelemetry exporter reported a problem') });
  const drivers = defaultDrivers();
  let runtime: Runtime | null = null;
  const pending: { poke?: () => void } = {};

  const app = createApp({
    services,
    drivers,
    logger,
    adminKeyHash: hashBearerSecret(admin.key),
    pokeScheduler: () => pending.poke?.(),
    database: database.kind,
    version: BERTH_VERSION,
    metricsPublic,
  });

  const host = opts.host ?? '127.0.0.1';
  const server = await new Promise<ServerType>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, port: opts.port ?? DEFAULT_PORT, hostname: host }, () => resolve(s));
    s.once('error', reject);
  }).catch(async (err: NodeJS.ErrnoException) => {
    await database.close();
    await tracing.shutdown();
    if (err.code === 'EADDRINUSE') throw new Error(`port ${opts.port ?? DEFAULT_PORT} on ${host} is in use (another berth serve?); choose another with --port`);
    throw err;
  });
  const port = (server.address() as AddressInfo).port;
  const url = connectableUrl(host, port);
  const publicUrl = givenPublicUrl ?? url;

  const closeListener = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      (server as { closeAllConnections?: () => void }).closeAllConnections?.();
    });
  if (opts.runtime !== false) {
    runtime = await startRuntime({
      services,
      db: database.db,
      heartbeatDb: database.heartbeatDb,
      listen: database.listen,
      drivers,
      retention,
      apiUrl: publicUrl,
      localUrl: url,
      ...(opts.maxConcurrentRuns ? { maxConcurrentRuns: opts.maxConcurrentRuns } : {}),
      onError: (where, err) => logger.error({ where, err: loggableError(err) }, 'runtime error'),
      onRunFinished: (run) => logger.info({ runId: run.id, agentId: run.agentId, status: run.status, exitCode: run.exitCode, errorCode: run.errorCode }, 'run finished'),
    }).catch(async (err: unknown) => {
      await closeListener();
      await database.close();
      await tracing.shutdown();
      throw err;
    });
    pending.poke = runtime.poke;
  }
  if (opts.announce !== false) writeServerInfo({ url, pid: process.pid, startedAt: new Date().toISOString() });
  logger.info({ url, publicUrl, listen: `${host}:${port}`, database: database.kind, location: database.location, serverId: runtime?.serverId, version: BERTH_VERSION, ...(tracing.config ? { tracing: tracingTarget(tracing.config) } : {}) }, 'berth serving');

  let stopped: Promise<void> | null = null;
  return {
    url,
    publicUrl,
    port,
    services,
    database,
    runtime,
    logger,
    adminKey: admin.key,
    adminKeyPath: admin.path,
    adminKeyCreated: admin.created,
    stop({ graceMs = 10_000 } = {}) {
      stopped ??= (async () => {
        const inFlight = runtime?.inFlight() ?? 0;
        logger.info({ inFlight, graceMs }, 'stopping: no new runs; running runs get the grace period');
        await runtime?.stop({ graceMs });
        // Take no new connections, and give those following a log or the activity a few
        // polls to send what the stop just finalized (the `end` of each run), then close.
        server.close();
        await new Promise((r) => setTimeout(r, 600));
        await closeListener();
        if (opts.announce !== false) removeServerInfo(process.pid);
        await database.close();
        // What the stop itself traced (the runs it finalized) is sent before the process ends.
        await tracing.shutdown();
        logger.info('stopped');
      })();
      return stopped;
    },
  };
}
