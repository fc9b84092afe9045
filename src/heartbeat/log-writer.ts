// Buffers a run's output and writes it as ordered chunks {ts, stream, chunk, seq},
// at most every flushMs or maxBytes, so a chatty process costs few statements. A
// write answers when the text is taken, so a producer that waits holds at most one
// batch in memory here, and answers 'stop' once the log is full.
import type { RunLogChunk } from '../domain/types.js';
import type { RunService } from '../services/runs.js';

export const DEFAULT_RUN_LOG_LIMIT_CHARS = 16 * 1024 * 1024;

const STOP: Promise<'stop'> = Promise.resolve('stop');
const TAKEN: Promise<void> = Promise.resolve();

export class RunLogWriter {
  private seq = 0;
  private pending: RunLogChunk[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private total = 0;
  private truncated = false;
  /** The driver's output offset reached by what is buffered (written with the next batch). */
  private offset: string | null = null;
  private offsetWritten: string | null = null;

  constructor(
    private readonly runs: Pick<RunService, 'appendLog'>,
    private readonly runId: string,
    private readonly opts: { flushMs?: number; maxBytes?: number; limitChars?: number; startSeq?: number } = {},
  ) {
    // A resumed run's log continues after what its first server wrote.
    this.seq = opts.startSeq ?? 0;
  }

  /**
   * Where the driver's output stands once what was written so far is taken: stored with the
   * batch that holds that output, so a server that resumes the run reads on from there.
   */
  setOffset(offset: string): void {
    this.offset = offset;
    this.timer ??= setTimeout(() => void this.flush(), this.opts.flushMs ?? 100);
  }

  /**
   * A run's log is capped (default 16 Mi characters): a runaway process must not fill the
   * database. Resolves when the chunk is taken (at once, or when the batch it filled is
   * written), to 'stop' once the cap is reached: output past it is dropped.
   */
  write(stream: RunLogChunk['stream'], chunk: string): Promise<void | 'stop'> {
    // Berth's own lines (stopping, cleanup) are few and always kept.
    if (this.truncated && stream !== 'system') return STOP;
    const limit = this.opts.limitChars ?? DEFAULT_RUN_LOG_LIMIT_CHARS;
    if (stream !== 'system' && this.total + chunk.length > limit) {
      const room = Math.max(0, limit - this.total);
      if (room > 0) this.pending.push({ seq: ++this.seq, ts: new Date(), stream, chunk: chunk.slice(0, room) });
      this.pending.push({ seq: ++this.seq, ts: new Date(), stream: 'system', chunk: `\n[log truncated: this run's output passed ${limit} characters]\n` });
      this.truncated = true;
      this.total = limit;
      void this.flush();
      return STOP;
    }
    if (stream !== 'system') this.total += chunk.length;
    this.pending.push({ seq: ++this.seq, ts: new Date(), stream, chunk });
    this.bytes += chunk.length;
    if (this.bytes >= (this.opts.maxBytes ?? 64 * 1024)) return this.flush().then(() => undefined);
    this.timer ??= setTimeout(() => void this.flush(), this.opts.flushMs ?? 100);
    return TAKEN;
  }

  /** Write what is buffered; chunks go out in seq order. */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending;
    this.pending = [];
    this.bytes = 0;
    const offset = this.offset !== this.offsetWritten ? this.offset : null;
    this.offsetWritten = this.offset;
    if (batch.length > 0 || offset !== null) {
      this.flushing = this.flushing.then(() => this.runs.appendLog(this.runId, batch, offset)).catch(() => {
        // A lost log batch must not kill the run; the run's outcome is what matters.
      });
    }
    return this.flushing;
  }
}
