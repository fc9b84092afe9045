// Buffers a run's output and writes it as ordered chunks {ts, stream, chunk, seq},
// at most every flushMs or maxBytes, so a chatty process costs few statements.
import type { RunLogChunk } from '../domain/types.js';
import type { RunService } from '../services/runs.js';

export class RunLogWriter {
  private seq = 0;
  private pending: RunLogChunk[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly runs: RunService,
    private readonly runId: string,
    private readonly opts: { flushMs?: number; maxBytes?: number } = {},
  ) {}

  write(stream: RunLogChunk['stream'], chunk: string): void {
    this.pending.push({ seq: ++this.seq, ts: new Date(), stream, chunk });
    this.bytes += chunk.length;
    if (this.bytes >= (this.opts.maxBytes ?? 64 * 1024)) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.opts.flushMs ?? 100);
  }

  /** Write what is buffered; chunks go out in seq order. */
  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending;
    this.pending = [];
    this.bytes = 0;
    if (batch.length > 0) {
      this.flushing = this.flushing.then(() => this.runs.appendLog(this.runId, batch)).catch(() => {
        // A lost log batch must not kill the run; the run's outcome is what matters.
      });
    }
    return this.flushing;
  }
}
