// Heartbeat runs: queued by invoke, claimed by one server's scheduler, finalized
// exactly once. The per-agent limit lives in agents.running_count, changed only in
// the statements that move a run into or out of `running`.
import { randomBytes } from 'node:crypto';
import { sql, type SQL } from 'drizzle-orm';
import { queryRows, textArrayLiteral, type Db } from '../db/client.js';
import { CANCELS_CHANNEL, notifyEach, RUNS_CHANNEL } from '../db/notify.js';
import { readJson, toLogChunk, toRun } from '../db/rows.js';
import { invokeSchema, type InvokeInput } from '../domain/agents.js';
import { wakeContext } from '../domain/paperclip.js';
import { RUN_ACTIONS, type TerminalRunStatus } from '../domain/enums.js';
import { BerthError, notFound, requireId } from '../domain/errors.js';
import { storableText } from '../domain/text.js';
import { SYSTEM_ACTOR, type Actor, type AdoptedRun, type HeartbeatRun, type Page, type RunLogChunk, type StoredExecution } from '../domain/types.js';
import { listRunsSchema, parseInput, type ListRunsInput } from '../domain/validators.js';
import { hashBearerSecret } from '../secrets/bearer.js';
import { secondsBetween, type Metrics } from '../metrics/index.js';
import { activityFrom, type ActorSql } from './activity.js';
import { cursorTimestamp, decodeCursor, encodeCursor } from './cursor.js';

export const RUN_ENTITY = 'heartbeat_run';

export interface RunOutcome {
  status: TerminalRunStatus;
  exitCode?: number | null;
  signal?: string | null;
  error?: string | null;
  errorCode?: string | null;
}

function runActivity(source: string, actor: ActorSql, action: string, details: ReturnType<typeof sql>) {
  return activityFrom({ source, actor, action, entityType: RUN_ENTITY, entityId: sql.raw(`${source}.id::text`), runId: sql.raw(`${source}.id`), details });
}

const finishedDetails = (src: string) => {
  const s = sql.raw(src);
  return sql`jsonb_build_object('agentId', ${s}.agent_id, 'status', ${s}.status, 'exitCode', ${s}.exit_code, 'signal', ${s}.signal,
    'errorCode', ${s}.error_code, 'error', left(${s}.error, 500))`;
};

/** A new PAPERCLIP_API_KEY for one run; only its hash is stored. */
export function newRunToken(): string {
  return `brt_${randomBytes(24).toString('base64url')}`;
}

export function runService(db: Db, metrics: Metrics) {
  /** Runs that just finished, for the metrics (by status and agent). */
  const finished = (runs: HeartbeatRun[]): HeartbeatRun[] => {
    for (const r of runs) metrics.runFinished(r.status, r.agentId);
    return runs;
  };
  const service = {
    /** Queue a run of an agent. */
    async invoke(companyId: string, agentId: string, input: InvokeInput = {}, actor: Actor = SYSTEM_ACTOR): Promise<HeartbeatRun> {
      return (await service.invokeOnce(companyId, agentId, input, actor)).run;
    },

    /**
     * Queue a run; with an idempotencyKey, a repeat (same agent, same key) answers with the
     * run the first call queued (`repeated`), whatever its state, and queues nothing.
     */
    async invokeOnce(companyId: string, agentId: string, input: InvokeInput = {}, actor: Actor = SYSTEM_ACTOR): Promise<{ run: HeartbeatRun; repeated: boolean }> {
      requireId(agentId, 'agent');
      const v = parseInput(invokeSchema, input, 'invocation');
      const snapshot = { ...wakeContext(v), invocation: v.context };
      const key = v.idempotencyKey ?? null;
      const [row] = await queryRows(
        db,
        sql`WITH agent AS (SELECT id, company_id FROM agents WHERE id = ${agentId} AND company_id = ${companyId} AND status = 'active'),
            changed AS (
              INSERT INTO heartbeat_runs (company_id, agent_id, invocation_source, context_snapshot, idempotency_key)
              SELECT agent.company_id, agent.id, ${v.source}, ${JSON.stringify(snapshot)}::jsonb, ${key}
              FROM agent
              ON CONFLICT (agent_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
              RETURNING *),
            act AS (${runActivity('changed', actor, RUN_ACTIONS.queued, sql`jsonb_build_object('agentId', changed.agent_id, 'source', changed.invocation_source)`)})
            -- Listeners wake at commit, when the run is visible to their claim.
            SELECT changed.* FROM changed CROSS JOIN ${notifyEach(RUNS_CHANNEL)}`,
      );
      if (!row) {
        if (key !== null) {
          const [earlier] = await queryRows(db, sql`SELECT * FROM heartbeat_runs WHERE agent_id = ${agentId} AND company_id = ${companyId} AND idempotency_key = ${key}`);
          if (earlier) return { run: toRun(earlier), repeated: true };
        }
        const [agent] = await queryRows<{ status: string }>(db, sql`SELECT status FROM agents WHERE id = ${agentId} AND company_id = ${companyId}`);
        if (agent) throw new BerthError('conflict', `agent ${agentId} is ${agent.status}: it takes no new runs`);
        throw notFound('agent', agentId);
      }
      metrics.runQueued(v.source);
      return { run: toRun(row), repeated: false };
    },

    /** The run a PAPERCLIP_API_KEY belongs to, by the key's hash; null if none. */
    async authenticateToken(tokenHash: string): Promise<{ runId: string; companyId: string; agentId: string; status: string } | null> {
      const [row] = await queryRows<{ id: string; company_id: string; agent_id: string; status: string }>(
        db,
        sql`SELECT id, company_id, agent_id, status FROM heartbeat_runs WHERE token_hash = ${tokenHash}`,
      );
      return row ? { runId: String(row.id), companyId: String(row.company_id), agentId: String(row.agent_id), status: String(row.status) } : null;
    },

    async get(companyId: string, runId: string): Promise<HeartbeatRun> {
      requireId(runId, 'run');
      const [row] = await queryRows(db, sql`SELECT * FROM heartbeat_runs WHERE id = ${runId} AND company_id = ${companyId}`);
      if (!row) throw notFound('run', runId);
      return toRun(row);
    },

    /** Runs of a company, newest first; `list` is its first page. */
    async list(companyId: string, filter: ListRunsInput = {}): Promise<HeartbeatRun[]> {
      return (await service.listPage(companyId, filter)).items;
    },

    /** Runs of a company, newest first, keyset-paged: pass nextCursor back as `cursor` for the next page. */
    async listPage(companyId: string, filter: ListRunsInput = {}): Promise<Page<HeartbeatRun>> {
      const f = parseInput(listRunsSchema, filter, 'run filter');
      const conds: SQL[] = [sql`company_id = ${companyId}`];
      if (f.agentId) conds.push(sql`agent_id = ${f.agentId}`);
      if (f.status) conds.push(sql`status = ${f.status}`);
      if (f.cursor) {
        const [ts, id] = decodeCursor(f.cursor, 'run filter');
        conds.push(sql`(created_at, id) < (${ts}::timestamptz, ${id}::uuid)`);
      }
      const rows = await queryRows(
        db,
        sql`SELECT *, ${cursorTimestamp('created_at')} AS cursor_ts FROM heartbeat_runs WHERE ${sql.join(conds, sql` AND `)}
            ORDER BY created_at DESC, id DESC LIMIT ${f.limit + 1}`,
      );
      const page = rows.slice(0, f.limit);
      const last = page[page.length - 1];
      return {
        items: page.map(toRun),
        nextCursor: rows.length > f.limit && last ? encodeCursor(String(last.cursor_ts), String(last.id)) : null,
      };
    },

    /**
     * Cancel: a queued run ends at once and never starts; a running one is flagged and
     * its executor stops the process. A finished run is returned as it is.
     */
    async cancel(companyId: string, runId: string, actor: Actor = SYSTEM_ACTOR): Promise<HeartbeatRun> {
      requireId(runId, 'run');
      const [queued] = await queryRows(
        db,
        sql`WITH changed AS (
              UPDATE heartbeat_runs SET status = 'cancelled', error = 'cancelled before it started', error_code = 'cancelled',
                finished_at = now(), updated_at = now()
              WHERE id = ${runId} AND company_id = ${companyId} AND status = 'queued' RETURNING *),
            act AS (${runActivity('changed', actor, RUN_ACTIONS.finished, finishedDetails('changed'))})
            SELECT * FROM changed`,
      );
      if (queued) return finished([toRun(queued)])[0]!;
      const [running] = await queryRows(
        db,
        sql`WITH changed AS (
              UPDATE heartbeat_runs SET cancel_requested_at = now(), updated_at = now()
              WHERE id = ${runId} AND company_id = ${companyId} AND status = 'running' AND cancel_requested_at IS NULL RETURNING *),
            act AS (${runActivity('changed', actor, RUN_ACTIONS.cancelRequested, sql`jsonb_build_object('agentId', changed.agent_id)`)})
            SELECT changed.* FROM changed CROSS JOIN ${notifyEach(CANCELS_CHANNEL, sql`changed.server_id`)}`,
      );
      if (running) return toRun(running);
      return service.get(companyId, runId);
    },

    /** Log chunks after `afterSeq`, in order. */
    async readLog(companyId: string, runId: string, opts: { afterSeq?: number; limit?: number } = {}): Promise<RunLogChunk[]> {
      requireId(runId, 'run');
      const rows = await queryRows(
        db,
        sql`SELECT l.* FROM heartbeat_run_logs l JOIN heartbeat_runs r ON r.id = l.run_id
            WHERE l.run_id = ${runId} AND r.company_id = ${companyId} AND l.seq > ${opts.afterSeq ?? 0}
            ORDER BY l.seq LIMIT ${Math.min(opts.limit ?? 1000, 10_000)}`,
      );
      if (rows.length === 0) await service.get(companyId, runId); // not_found for another company's run
      return rows.map(toLogChunk);
    },

    /**
     * The run log as Paperclip's NDJSON log ({ts, stream, chunk} per line), read by byte
     * offset: whole lines from the one that ends after `offset`, up to `limitBytes` (at least
     * one line), and the offset after them. Offsets count the bytes of these lines, which
     * the database builds, so every server gives the same ones.
     */
    async readLogBytes(companyId: string, runId: string, opts: { offset: number; limitBytes: number }): Promise<{ content: string; nextOffset: number; endOffset: number }> {
      requireId(runId, 'run');
      await service.get(companyId, runId); // not_found for another company's run
      const rows = await queryRows<{ line: string; end_at: string | number; total: string | number }>(
        db,
        sql`WITH lines AS (
              SELECT seq, json_build_object('ts', ts, 'stream', stream, 'chunk', chunk)::text || E'\n' AS line
              FROM heartbeat_run_logs WHERE run_id = ${runId}),
            pos AS (SELECT seq, line, sum(octet_length(line)) OVER (ORDER BY seq) AS end_at, sum(octet_length(line)) OVER () AS total FROM lines)
            SELECT line, end_at, total FROM pos WHERE end_at > ${opts.offset} ORDER BY seq LIMIT 1000`,
      );
      let content = '';
      let used = 0;
      let next = opts.offset;
      for (const r of rows) {
        const size = Buffer.byteLength(r.line);
        if (used > 0 && used + size > opts.limitBytes) break;
        content += r.line;
        used += size;
        next = Number(r.end_at);
      }
      const endOffset = rows.length > 0 ? Number(rows[0]!.total) : opts.offset;
      return { content, nextOffset: next, endOffset: Math.max(endOffset, next) };
    },

    // ---- for the scheduler and executor (not scoped by company: they act for the system) ----

    /**
     * Claim the oldest queued run whose agent has a free slot, for this server.
     * Returns the run, or `{ fullAgentId }` when that agent filled up meanwhile.
     */
    async claimNext(serverId: string, hostname: string, excludeAgentIds: string[] = []): Promise<HeartbeatRun | { fullAgentId: string } | null> {
      const [row] = await queryRows(
        db,
        sql`WITH cand AS (
              SELECT r.id, r.agent_id FROM heartbeat_runs r JOIN agents a ON a.id = r.agent_id
              WHERE r.status = 'queued' AND a.running_count < a.max_concurrent_runs
                AND (r.not_before IS NULL OR r.not_before <= now())
                AND NOT (r.agent_id = ANY (${`{${excludeAgentIds.join(',')}}`}::uuid[]))
              ORDER BY r.created_at, r.id LIMIT 1
              FOR UPDATE OF r SKIP LOCKED),
            slot AS (
              UPDATE agents a SET running_count = a.running_count + 1 FROM cand
              WHERE a.id = cand.agent_id AND a.running_count < a.max_concurrent_runs RETURNING a.id),
            claimed AS (
              UPDATE heartbeat_runs r SET status = 'running', server_id = ${serverId}, hostname = ${hostname},
                started_at = now(), updated_at = now()
              FROM cand, slot WHERE r.id = cand.id RETURNING r.*)
            SELECT (SELECT agent_id FROM cand) AS cand_agent_id, claimed.* FROM (SELECT 1) one LEFT JOIN claimed ON true`,
      );
      if (row?.id) {
        const run = toRun(row);
        // Claimable since it was queued, or since its notBefore when it had to wait.
        const since = run.notBefore && run.notBefore > run.createdAt ? run.notBefore : run.createdAt;
        metrics.runClaimed(secondsBetween(since, run.startedAt));
        return run;
      }
      if (row?.cand_agent_id) return { fullAgentId: String(row.cand_agent_id) };
      return null;
    },

    /**
     * Record the start of a run this server holds. False (nothing written) when the run is no
     * longer running here: another server finalized it meanwhile, and it must not start.
     */
    async recordStart(
      runId: string,
      serverId: string,
      fields: { environmentId: string; leaseId: string; token: string; paperclipEnvironment: Record<string, unknown> },
    ): Promise<boolean> {
      const rows = await queryRows(
        db,
        sql`UPDATE heartbeat_runs SET environment_id = ${fields.environmentId}, lease_id = ${fields.leaseId}, token_hash = ${hashBearerSecret(fields.token)},
              context_snapshot = context_snapshot || jsonb_build_object('paperclipEnvironment', ${JSON.stringify(fields.paperclipEnvironment)}::jsonb),
              updated_at = now()
            WHERE id = ${runId} AND status = 'running' AND server_id = ${serverId}
            RETURNING id`,
      );
      return rows.length > 0;
    },

    /** Append log chunks; `outputOffset`, when given, is where the driver's output stands with them (for a resume). */
    async appendLog(runId: string, chunks: RunLogChunk[], outputOffset: string | null = null): Promise<void> {
      if (chunks.length === 0 && outputOffset === null) return;
      const stored = chunks.map((c) => ({ seq: c.seq, ts: c.ts.toISOString(), stream: c.stream, chunk: storableText(c.chunk) }));
      const json = JSON.stringify(stored);
      await queryRows(
        db,
        sql`WITH ins AS (
              INSERT INTO heartbeat_run_logs (run_id, seq, ts, stream, chunk)
              SELECT ${runId}, x.seq, x.ts, x.stream, x.chunk
              FROM jsonb_to_recordset(${json}::jsonb) AS x(seq int, ts timestamptz, stream text, chunk text)
              RETURNING seq),
            off AS (UPDATE run_executions SET output_offset = ${outputOffset}::text, updated_at = now()
                    WHERE run_id = ${runId} AND ${outputOffset}::text IS NOT NULL RETURNING run_id)
            UPDATE heartbeat_runs SET log_seq = greatest(log_seq, (SELECT max(seq) FROM ins)) WHERE id = ${runId} AND EXISTS (SELECT 1 FROM ins)`,
      );
      const bytes = new Map<string, number>();
      for (const c of stored) bytes.set(c.stream, (bytes.get(c.stream) ?? 0) + Buffer.byteLength(c.chunk));
      for (const [stream, n] of bytes) metrics.logBytes(stream, n);
    },

    /**
     * The run's execution as its driver described it (where it lives, its handle), with the
     * local pid for display and recovery. False (nothing written) when the run is no longer
     * running here.
     */
    async recordExecution(
      runId: string,
      serverId: string,
      e: { resourceId: string | null; handle: StoredExecution; pid?: number; identity?: Record<string, unknown> | null },
    ): Promise<boolean> {
      const rows = await queryRows(
        db,
        sql`WITH run AS (
              UPDATE heartbeat_runs SET pid = ${e.pid ?? null}::int, process_identity = ${e.identity ? JSON.stringify(e.identity) : null}::jsonb, updated_at = now()
              WHERE id = ${runId} AND status = 'running' AND server_id = ${serverId} RETURNING id)
            INSERT INTO run_executions (run_id, resource_id, driver, handle, host)
            SELECT run.id, ${e.resourceId}::uuid, ${e.handle.driver}, ${JSON.stringify(e.handle)}::jsonb, ${e.handle.host} FROM run
            ON CONFLICT (run_id) DO UPDATE SET handle = excluded.handle, host = excluded.host, updated_at = now()
            RETURNING run_id`,
      );
      return rows.length > 0;
    },

    /**
     * Recovery, first half: running runs whose server is gone and whose execution a driver
     * of this server can reattach to (`drivers`) are taken over by `serverId`, with what
     * resuming them needs. Locked and moved in one statement: one server adopts each.
     */
    async adoptLostRuns(serverId: string, drivers: readonly string[], opts: { staleSeconds: number }): Promise<AdoptedRun[]> {
      if (drivers.length === 0) return [];
      const list = textArrayLiteral(drivers);
      const rows = await queryRows(
        db,
        sql`WITH lost AS (
              SELECT r.id FROM heartbeat_runs r JOIN run_executions e ON e.run_id = r.id
              WHERE r.status = 'running' AND r.server_id IS DISTINCT FROM ${serverId} AND e.driver = ANY (${list}::text[])
                AND NOT EXISTS (SELECT 1 FROM berth_servers s WHERE s.id = r.server_id AND s.stopped_at IS NULL
                                AND s.heartbeat_at > now() - make_interval(secs => ${opts.staleSeconds}))
              FOR UPDATE OF r SKIP LOCKED),
            moved AS (
              UPDATE heartbeat_runs r SET server_id = ${serverId}, updated_at = now() FROM lost WHERE r.id = lost.id RETURNING r.*)
            SELECT moved.*, e.handle AS exe_handle, e.resource_id AS exe_resource_id, e.output_offset AS exe_offset
            FROM moved JOIN run_executions e ON e.run_id = moved.id`,
      );
      return rows.map((r) => ({
        run: toRun(r),
        execution: readJson<StoredExecution>(r.exe_handle),
        resourceId: r.exe_resource_id == null ? null : String(r.exe_resource_id),
        outputOffset: r.exe_offset == null ? null : String(r.exe_offset),
        logSeq: Number(r.log_seq),
      }));
    },

    /** The executions of runs that were finalized lost (their server gone): for recovery to signal through their driver. */
    async executionsOf(runIds: string[]): Promise<Array<{ runId: string; execution: StoredExecution }>> {
      if (runIds.length === 0) return [];
      const rows = await queryRows(db, sql`SELECT run_id, handle FROM run_executions WHERE run_id = ANY (${`{${runIds.join(',')}}`}::uuid[])`);
      return rows.map((r) => ({ runId: String(r.run_id), execution: readJson<StoredExecution>(r.handle) }));
    },

    /**
     * Put a run this server claimed back in the queue, not to be claimed for `delaySeconds`
     * (its environment was full, say). Frees the agent's slot; the first time, one
     * activity row says why it waits.
     */
    async requeue(runId: string, serverId: string, opts: { delaySeconds: number; reason: string }): Promise<HeartbeatRun | null> {
      const [row] = await queryRows(
        db,
        sql`WITH prev AS (SELECT not_before FROM heartbeat_runs WHERE id = ${runId}),
            back AS (
              UPDATE heartbeat_runs r SET status = 'queued', server_id = NULL, hostname = NULL, started_at = NULL,
                not_before = now() + make_interval(secs => ${opts.delaySeconds}), updated_at = now()
              WHERE r.id = ${runId} AND r.status = 'running' AND r.server_id = ${serverId}
              RETURNING r.*),
            slot AS (UPDATE agents a SET running_count = a.running_count - 1 FROM back WHERE a.id = back.agent_id RETURNING a.id),
            -- One activity row when a run starts waiting, not one per retry.
            act AS (${runActivity('back', SYSTEM_ACTOR, RUN_ACTIONS.deferred, sql`jsonb_build_object('agentId', back.agent_id, 'reason', ${opts.reason}::text)`)}
                    WHERE (SELECT not_before FROM prev) IS NULL)
            -- Claimable again at once: wake the listeners (a delayed one is found by the poll).
            SELECT back.* FROM back CROSS JOIN ${notifyEach(RUNS_CHANNEL, sql`''`, sql`${opts.delaySeconds}::float8 <= 0`)}`,
      );
      return row ? toRun(row) : null;
    },

    /** Runs on this server whose cancel was requested (by any server). */
    async cancelRequested(serverId: string): Promise<string[]> {
      const rows = await queryRows<{ id: string }>(
        db,
        sql`SELECT id FROM heartbeat_runs WHERE status = 'running' AND server_id = ${serverId} AND cancel_requested_at IS NOT NULL`,
      );
      return rows.map((r) => String(r.id));
    },

    /** Finish a running run, once: returns null if it had already been finalized (by recovery, say). */
    async finalize(runId: string, outcome: RunOutcome, opts: { serverId?: string } = {}): Promise<HeartbeatRun | null> {
      const [row] = await queryRows(
        db,
        sql`WITH fin AS (
              UPDATE heartbeat_runs r SET status = ${outcome.status}, exit_code = ${outcome.exitCode ?? null}, signal = ${outcome.signal ?? null},
                error = ${outcome.error == null ? null : storableText(outcome.error)}, error_code = ${outcome.errorCode ?? null}, finished_at = now(), updated_at = now()
              WHERE r.id = ${runId} AND r.status = 'running' ${opts.serverId ? sql`AND r.server_id = ${opts.serverId}` : sql``}
              RETURNING r.*),
            slot AS (UPDATE agents a SET running_count = a.running_count - 1 FROM fin WHERE a.id = fin.agent_id RETURNING a.id),
            act AS (${runActivity('fin', SYSTEM_ACTOR, RUN_ACTIONS.finished, finishedDetails('fin'))})
            SELECT * FROM fin`,
      );
      return row ? finished([toRun(row)])[0]! : null;
    },

    /**
     * Recovery: every running run whose server is gone (no heartbeat for `staleSeconds`,
     * stopped, or unknown) is finalized failed with errorCode process_lost.
     */
    async finalizeLostRuns(opts: { staleSeconds: number; exceptServerId?: string }): Promise<HeartbeatRun[]> {
      const rows = await queryRows(
        db,
        sql`WITH lost AS (
              SELECT r.id FROM heartbeat_runs r
              WHERE r.status = 'running' AND r.server_id IS DISTINCT FROM ${opts.exceptServerId ?? null}
                AND NOT EXISTS (SELECT 1 FROM berth_servers s WHERE s.id = r.server_id AND s.stopped_at IS NULL
                                AND s.heartbeat_at > now() - make_interval(secs => ${opts.staleSeconds}))
              FOR UPDATE OF r SKIP LOCKED),
            ${failRunsSql('lost', 'process_lost', sql`'server ' || coalesce(r.server_id, '(none)') || ' stopped while the run was in progress'`)}`,
      );
      return finished(rows.map(toRun));
    },

    /**
     * Runs this live server holds as running but no longer executes (its execution ended
     * without its finalization landing, say): finalized failed, so they neither hold their
     * agent's slot nor ignore cancel forever. `liveRunIds` are those it does execute; runs
     * claimed within `graceSeconds` are left alone (their execution is just starting).
     */
    async finalizeOrphans(serverId: string, liveRunIds: string[], opts: { graceSeconds?: number } = {}): Promise<HeartbeatRun[]> {
      const rows = await queryRows(
        db,
        sql`WITH orphan AS (
              SELECT r.id FROM heartbeat_runs r
              WHERE r.status = 'running' AND r.server_id = ${serverId}
                AND r.started_at < now() - make_interval(secs => ${opts.graceSeconds ?? 30})
                AND NOT (r.id = ANY (${`{${liveRunIds.join(',')}}`}::uuid[]))
              FOR UPDATE OF r SKIP LOCKED),
            ${failRunsSql('orphan', 'execution_lost', sql`'the run''s execution ended on server ' || r.server_id || ' without its result being recorded'`)}`,
      );
      return finished(rows.map(toRun));
    },

    /** Timer: invoke every due agent with an interval once (one server wins each agent's tick). */
    async invokeDueTimers(): Promise<HeartbeatRun[]> {
      const due = await queryRows<{ id: string; company_id: string }>(
        db,
        sql`UPDATE agents a SET last_timer_at = now()
            WHERE a.interval_sec IS NOT NULL AND a.status = 'active'
              AND (a.last_timer_at IS NULL OR a.last_timer_at <= now() - make_interval(secs => a.interval_sec))
              AND NOT EXISTS (SELECT 1 FROM heartbeat_runs r WHERE r.agent_id = a.id AND r.status = 'queued')
            RETURNING a.id, a.company_id`,
      );
      const runs: HeartbeatRun[] = [];
      for (const a of due) runs.push(await service.invoke(String(a.company_id), String(a.id), { source: 'timer' }));
      return runs;
    },
  };
  return service;
}
export type RunService = ReturnType<typeof runService>;

/**
 * The rest of a statement that fails the running runs of the CTE `ids` (locked): each
 * failed with `code` and the error `error` (SQL over the run row `r`), its agent's slot
 * freed, one activity row each. Returns the runs.
 */
function failRunsSql(ids: string, code: string, error: SQL): SQL {
  const from = sql.raw(ids);
  return sql`fin AS (
              UPDATE heartbeat_runs r SET status = 'failed', error_code = ${code}, error = ${error}, finished_at = now(), updated_at = now()
              FROM ${from} WHERE r.id = ${from}.id AND r.status = 'running' RETURNING r.*),
            slot AS (
              UPDATE agents a SET running_count = a.running_count - f.n
              FROM (SELECT agent_id, count(*)::int AS n FROM fin GROUP BY agent_id) f WHERE a.id = f.agent_id RETURNING a.id),
            act AS (${runActivity('fin', SYSTEM_ACTOR, RUN_ACTIONS.finished, finishedDetails('fin'))})
            SELECT * FROM fin`;
}

export function serverRegistry(db: Db) {
  return {
    async register(id: string, hostname: string, pid: number): Promise<void> {
      await queryRows(db, sql`INSERT INTO berth_servers (id, hostname, pid) VALUES (${id}, ${hostname}, ${pid})`);
    },
    /** The server is alive: what recovery reads (one row; runs carry no heartbeat of their own). */
    async heartbeat(id: string): Promise<void> {
      await queryRows(db, sql`UPDATE berth_servers SET heartbeat_at = now() WHERE id = ${id}`);
    },
    async stop(id: string): Promise<void> {
      await queryRows(db, sql`UPDATE berth_servers SET stopped_at = now() WHERE id = ${id}`);
    },
  };
}
