// Client side of the spawner helper (spawner-main.mjs): one per server process,
// started on first use and restarted if it dies. If it dies, the runs it held are
// killed from here (their cgroups, else their process trees) and end `process_lost`.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { reclaimOwnerDir, signalRun, type RunHandle, type RunProcessExit } from './run-process.mjs';
import type { OutputListener, ProcessSpec } from '../contract.js';

export type SpawnerExit = RunProcessExit & { error?: string; errorCode?: string };

interface Pending {
  onOutput: OutputListener;
  onSpawned: (run: RunHandle) => void;
  onExit: (exit: SpawnerExit) => void;
  run: RunHandle;
}

type Message =
  | { op: 'ready'; cgroupDir: string | null }
  | { op: 'spawned'; id: number; pid: number; cgroup: string | null }
  | { op: 'out'; id: number; n: number; stream: 'stdout' | 'stderr'; text: string }
  | { op: 'exit'; id: number; code: number | null; signal: string | null; spawnError?: string; discardedBytes?: number };

const helperPath = fileURLToPath(new URL('./spawner-main.mjs', import.meta.url));

export class Spawner {
  private helper: ChildProcess | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  private ensure(): ChildProcess {
    if (this.helper && this.helper.connected) return this.helper;
    // A plain node process: no loader, no inherited flags, a small heap.
    const helper = fork(helperPath, [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
    let cgroupDir: string | null = null;
    helper.on('message', (msg: Message) => {
      if (msg.op === 'ready') cgroupDir = msg.cgroupDir;
      else this.onMessage(helper, msg);
    });
    helper.once('exit', (code, signal) => {
      if (this.helper === helper) this.helper = null;
      const lost = [...this.pending.entries()];
      this.pending.clear();
      void this.killLost(
        lost.map(([, p]) => p.run),
        cgroupDir,
      ).then(() => {
        const how = signal ? `killed by ${signal}` : `exited with code ${code}`;
        for (const [, p] of lost) {
          p.onExit({ exitCode: null, signal: null, error: `the spawner helper died (${how}); the run's processes were killed`, errorCode: 'process_lost' });
        }
      });
    });
    this.helper = helper;
    return helper;
  }

  /** The helper is gone: kill what its runs started (their cgroups hold them; else their trees) before reporting them lost. */
  private async killLost(runs: RunHandle[], cgroupDir: string | null): Promise<void> {
    for (const run of runs) signalRun(run, 'SIGKILL');
    // A spawn in flight has a cgroup the helper had not reported yet: the helper's whole directory covers it.
    if (cgroupDir) await reclaimOwnerDir(cgroupDir, 5000);
  }

  private onMessage(helper: ChildProcess, msg: Exclude<Message, { op: 'ready' }>): void {
    const p = this.pending.get(msg.id);
    if (msg.op === 'out') {
      // Acknowledge once the listener has taken the chunk: the helper keeps the child's stream paused until then.
      const ack = (stop: boolean) => helper.connected && helper.send({ op: 'ack', n: msg.n, stop });
      if (!p) return void ack(true);
      Promise.resolve()
        .then(() => p.onOutput(msg.stream, msg.text))
        .then(
          (v) => ack(v === 'stop'),
          () => ack(false),
        );
      return;
    }
    if (!p) return;
    if (msg.op === 'spawned') {
      p.run = { pid: msg.pid, cgroup: msg.cgroup };
      p.onSpawned(p.run);
    } else if (msg.op === 'exit') {
      this.pending.delete(msg.id);
      if (this.pending.size === 0) this.helper?.unref(), this.helper?.channel?.unref();
      p.onExit({
        exitCode: msg.code,
        signal: msg.signal,
        ...(msg.spawnError ? { spawnError: msg.spawnError } : {}),
        ...(msg.discardedBytes ? { discardedBytes: msg.discardedBytes } : {}),
      });
    }
  }

  start(spec: ProcessSpec, onOutput: OutputListener, onSpawned: (run: RunHandle) => void): Promise<SpawnerExit> {
    const helper = this.ensure();
    helper.ref();
    helper.channel?.ref();
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, { onOutput, onSpawned, onExit: resolve, run: { pid: null, cgroup: null } });
      helper.send({ op: 'spawn', id, command: spec.command, args: spec.args, cwd: spec.cwd, env: spec.env });
    });
  }

  /** The helper's pid (for tests and benchmarks that watch or kill it); null before first use. */
  get helperPid(): number | null {
    return this.helper?.pid ?? null;
  }
}

let shared: Spawner | null = null;
export function sharedSpawner(): Spawner {
  return (shared ??= new Spawner());
}
