// Wake-ups between servers sharing one database: a statement that makes work for a
// runtime (a run queued, a cancel asked for) notifies a channel from inside that
// statement, so PostgreSQL delivers it at commit, never before the row is visible. Each
// runtime listens on a connection of its own (PostgreSQL) or on PGlite's own session
// (one process), and claims at once instead of at its next poll. Notifications can be
// lost (a listener reconnecting): polling stays as the backstop, and a listener that
// (re)connects reports it so the runtime does one claim pass.
import { sql, type SQL } from 'drizzle-orm';
import type { PGlite } from '@electric-sql/pglite';
import pg from 'pg';

/** A run became claimable (queued, requeued with no delay, fired by a timer). Payload empty, so a burst in one transaction is one notification. */
export const RUNS_CHANNEL = 'berth_runs';
/** A cancel was asked for a running run. Payload: the id of the server running it. */
export const CANCELS_CHANNEL = 'berth_cancels';
/** A warm pool may want a refill (a member was claimed, its pool changed). Payload: the environment id. */
export const POOLS_CHANNEL = 'berth_pools';
export type Channel = typeof RUNS_CHANNEL | typeof CANCELS_CHANNEL | typeof POOLS_CHANNEL;
const CHANNELS: readonly Channel[] = [RUNS_CHANNEL, CANCELS_CHANNEL, POOLS_CHANNEL];

/**
 * A FROM item that notifies `channel` once per row it is joined with, in the statement's
 * transaction: `SELECT changed.* FROM changed CROSS JOIN ${notifyEach(...)}`. No row, no
 * notification; `when` (SQL boolean) limits it further. Identical notifications of one
 * transaction are delivered once.
 */
export function notifyEach(channel: Channel, payload: SQL = sql`''`, when?: SQL): SQL {
  const call = sql`pg_notify(${channel}::text, (${payload})::text)`;
  return sql`LATERAL (SELECT ${when ? sql`CASE WHEN ${when} THEN ${call} END` : call}) AS notified`;
}

export interface WakeHandlers {
  onNotify(channel: Channel, payload: string): void;
  /** Listening (again): notifications sent while it was not may be lost. Called on every (re)connect. */
  onListening(): void;
  /** A connection attempt failed or the connection was lost (it is retried with backoff). */
  onError(err: unknown): void;
}

export interface Listener {
  close(): Promise<void>;
}

/** Start listening on the database's wake-up channels. */
export type Listen = (handlers: WakeHandlers) => Promise<Listener>;

const isChannel = (c: string): c is Channel => (CHANNELS as readonly string[]).includes(c);

/** PGlite delivers notifications of its own session in-process, at commit. */
export function pgliteListen(client: PGlite): Listen {
  return async (handlers) => {
    const stops = await Promise.all(CHANNELS.map((ch) => client.listen(ch, (payload) => handlers.onNotify(ch, payload))));
    handlers.onListening();
    return {
      async close() {
        await Promise.all(stops.map((stop) => stop().catch(() => {})));
      },
    };
  };
}

export interface PgListenOptions {
  /** First retry after a lost connection (ms); doubles up to maxBackoffMs. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/**
 * One pg Client of its own that LISTENs (a pooled connection would drop its LISTEN when
 * given back). Reconnects with backoff whenever the connection ends or fails.
 */
export function pgListen(url: string, opts: PgListenOptions = {}): Listen {
  const minMs = opts.minBackoffMs ?? 100;
  const maxMs = opts.maxBackoffMs ?? 5_000;
  return async (handlers) => {
    let closed = false;
    let failures = 0;
    let current: pg.Client | null = null;
    let retry: NodeJS.Timeout | null = null;

    const schedule = () => {
      if (closed || retry) return;
      const ms = Math.min(maxMs, minMs * 2 ** Math.min(failures, 16));
      failures += 1;
      retry = setTimeout(() => {
        retry = null;
        void connect();
      }, ms);
      retry.unref();
    };

    async function connect(): Promise<void> {
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000, keepAlive: true });
      let lost = false;
      const onLost = (err?: unknown) => {
        if (lost) return;
        lost = true;
        if (current === client) current = null;
        client.end().catch(() => {});
        if (!closed) {
          if (err !== undefined) handlers.onError(err);
          schedule();
        }
      };
      client.on('error', (err) => onLost(err));
      client.on('end', () => onLost(closed ? undefined : new Error('wake-up listener connection ended')));
      client.on('notification', (m) => {
        if (isChannel(m.channel)) handlers.onNotify(m.channel, m.payload ?? '');
      });
      try {
        await client.connect();
        await client.query(CHANNELS.map((c) => `LISTEN ${c}`).join('; '));
      } catch (err) {
        onLost(err);
        return;
      }
      if (lost) return;
      if (closed) {
        await client.end().catch(() => {});
        return;
      }
      current = client;
      failures = 0;
      handlers.onListening();
    }

    await connect();
    return {
      async close() {
        closed = true;
        if (retry) clearTimeout(retry);
        retry = null;
        const c = current;
        current = null;
        await c?.end().catch(() => {});
      },
    };
  };
}
