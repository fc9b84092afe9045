// Client side of the spawner helper (spawner-main.mjs): one per server process,
// started on first use and restarted if it dies.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { OutputListener, ProcessSpec } from './types.js';

interface Pending {
  onOutput: OutputListener;
  onSpawned: (pid: number) => void;
  onExit: (exit: { exitCode: number | null; signal: string | null; spawnError?: string }) => void;
}

type Message =
  | { op: 'spawned'; id: number; pid: number }
  | { op: 'out'; id: number; stream: 'stdout' | 'stderr'; text: string }
  | { op: 'exit'; id: number; code: number | null; signal: string | null; spawnError?: string };

const helperPath = fileURLToPath(new URL('./spawner-main.mjs', import.meta.url));

export class Spawner {
  private helper: ChildProcess | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  private ensure(): ChildProcess {
    if (this.helper && this.helper.connected) return this.helper;
    // A plain node process: no loader, no inherited flags, a small heap.
    const helper = fork(helperPath, [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
    helper.on('message', (msg: Message) => this.onMessage(msg));
    helper.once('exit', () => {
      if (this.helper === helper) this.helper = null;
      for (const [id, p] of this.pending) {
        p.onExit({ exitCode: null, signal: null, spawnError: 'the spawner helper exited' });
        this.pending.delete(id);
      }
    });
    this.helper = helper;
    return helper;
  }

  private onMessage(msg: Message): void {
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.op === 'spawned') p.onSpawned(msg.pid);
    else if (msg.op === 'out') p.onOutput(msg.stream, msg.text);
    else if (msg.op === 'exit') {
      this.pending.delete(msg.id);
      if (this.pending.size === 0) this.helper?.unref(), this.helper?.channel?.unref();
      p.onExit({ exitCode: msg.code, signal: msg.signal, ...(msg.spawnError ? { spawnError: msg.spawnError } : {}) });
    }
  }

  start(spec: ProcessSpec, onOutput: OutputListener, onSpawned: (pid: number) => void): Promise<{ exitCode: number | null; signal: string | null; spawnError?: string }> {
    const helper = this.ensure();
    helper.ref();
    helper.channel?.ref();
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, { onOutput, onSpawned, onExit: resolve });
      helper.send({ op: 'spawn', id, command: spec.command, args: spec.args, cwd: spec.cwd, env: spec.env });
    });
  }
}

let shared: Spawner | null = null;
export function sharedSpawner(): Spawner {
  return (shared ??= new Spawner());
}
