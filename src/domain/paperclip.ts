// Paperclip's run contract, as Berth keeps it: in one place, what a Paperclip client, agent
// or adapter relies on. Pure (no I/O): the HTTP routes, the invocation service and the
// process adapter take their shapes from here.
//
// - Variables: every run's process gets PAPERCLIP_AGENT_ID, _COMPANY_ID, _RUN_ID, _API_URL,
//   _RUNTIME_API_URL, _API_KEY (the run's own token), _LEASE_ID, _ENVIRONMENT_ID and
//   _WORKSPACE; and from the wake context (below) PAPERCLIP_TASK_ID, _WAKE_REASON,
//   _WAKE_COMMENT_ID, _APPROVAL_ID, _APPROVAL_STATUS, _LINKED_ISSUE_IDS, _WAKE_PAYLOAD_JSON
//   when the invocation carries them (`wakeVariables`).
// - Snapshot: a run's contextSnapshot holds `paperclipEnvironment` (where it runs: environment,
//   driver, lease, fence, cwd...) and, for a Paperclip wakeup, the fields Paperclip's adapters
//   read at its top level (wakeReason, issueId, taskId, commentId, wakeCommentId, wakeSource,
//   wakeTriggerDetail, paperclipWake, forceFreshSession); Berth's own `context` is kept under
//   `invocation`.
// - Routes Paperclip calls under other names or shapes (src/http/routes/paperclip.ts):
//   GET /api/health, GET /api/agents/me, GET /api/agents/:ref?companyId=, POST
//   /api/agents/:id/heartbeat/invoke, /pause, /resume, GET .../environments/capabilities,
//   POST .../environments/probe-config, GET /api/environments/:id/delete-blast-radius,
//   GET /api/heartbeat-runs/:id/events, and the log read by byte offset
//   (?offset=&limitBytes=, Paperclip's NDJSON log: one {ts, stream, chunk} line per chunk).
// - Errors: Berth's {error: {code, message, ...}} also carries `message` at the top, the
//   field Paperclip's clients print when `error` is not a string.
import { z } from 'zod';

export const PAPERCLIP_ENVIRONMENT_KEY = 'paperclipEnvironment';

export const WAKE_TRIGGER_DETAILS = ['manual', 'ping', 'callback', 'system'] as const;

/** The wakeup fields Paperclip's clients send (its CLI's `agent wake` and `heartbeat run`). */
export const paperclipWakeFields = {
  triggerDetail: z.enum(WAKE_TRIGGER_DETAILS).optional(),
  reason: z.string().max(2000).nullish(),
  payload: z.record(z.string(), z.unknown()).nullish(),
  /** A repeat with the same key (for the same agent) answers with the run the first one queued. */
  idempotencyKey: z.string().min(1, 'must not be empty').max(255).nullish(),
  forceFreshSession: z.boolean().nullish(),
};

export interface PaperclipWake {
  source: string;
  triggerDetail?: string | undefined;
  reason?: string | null | undefined;
  payload?: Record<string, unknown> | null | undefined;
  forceFreshSession?: boolean | null | undefined;
}

const text = (v: unknown): string | null => (typeof v === 'string' && v.trim() !== '' ? v.trim() : null);

/**
 * The top-level snapshot fields a Paperclip wakeup makes (what Paperclip's adapters read):
 * the reason, the task (an issueId or taskId in the payload), the comment, the source and
 * trigger, and the payload itself. Nothing for a wakeup that carries none of them.
 */
export function wakeContext(w: PaperclipWake): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const payload = w.payload ?? null;
  const task = text(payload?.issueId) ?? text(payload?.taskId);
  const comment = text(payload?.commentId);
  if (text(w.reason)) out.wakeReason = text(w.reason);
  if (task) {
    out.issueId = task;
    out.taskId = task;
  }
  if (comment) {
    out.commentId = comment;
    out.wakeCommentId = comment;
  }
  if (payload && Object.keys(payload).length > 0) out.paperclipWake = payload;
  if (w.forceFreshSession) out.forceFreshSession = true;
  // A wakeup in Paperclip's shape also says where it came from.
  if (w.triggerDetail || Object.keys(out).length > 0) {
    out.wakeSource = w.source;
    if (w.triggerDetail) out.wakeTriggerDetail = w.triggerDetail;
  }
  return out;
}

/** The PAPERCLIP_* variables a run's wake context gives its process (as Paperclip's adapters set them). */
export function wakeVariables(snapshot: Record<string, unknown>): Record<string, string> {
  const env: Record<string, string> = {};
  const task = text(snapshot.taskId) ?? text(snapshot.issueId);
  const comment = text(snapshot.wakeCommentId) ?? text(snapshot.commentId);
  if (task) env.PAPERCLIP_TASK_ID = task;
  if (text(snapshot.wakeReason)) env.PAPERCLIP_WAKE_REASON = text(snapshot.wakeReason)!;
  if (comment) env.PAPERCLIP_WAKE_COMMENT_ID = comment;
  if (text(snapshot.approvalId)) env.PAPERCLIP_APPROVAL_ID = text(snapshot.approvalId)!;
  if (text(snapshot.approvalStatus)) env.PAPERCLIP_APPROVAL_STATUS = text(snapshot.approvalStatus)!;
  if (Array.isArray(snapshot.issueIds)) {
    const ids = snapshot.issueIds.filter((v): v is string => typeof v === 'string' && v.trim() !== '');
    if (ids.length > 0) env.PAPERCLIP_LINKED_ISSUE_IDS = ids.join(',');
  }
  const wake = snapshot.paperclipWake;
  if (wake && typeof wake === 'object' && !Array.isArray(wake) && Object.keys(wake).length > 0) env.PAPERCLIP_WAKE_PAYLOAD_JSON = JSON.stringify(wake);
  return env;
}

/** One line of a run's log as Paperclip's NDJSON log has it. */
export function logLine(chunk: { ts: Date; stream: string; chunk: string }): string {
  return `${JSON.stringify({ ts: chunk.ts.toISOString(), stream: chunk.stream, chunk: chunk.chunk })}\n`;
}
