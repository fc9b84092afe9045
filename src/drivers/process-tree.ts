// Starting a process in its own process group and signalling everything it started.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import type { OutputListener, ProcessSpec, StartedProcess } from './types.js';

/** Every live descendant of `pid`, found through /proc (children that left the group included). */
export function descendantsOf(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(name));
      children.set(ppid, list);
    } catch {
      /* exited meanwhile */
    }
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const c of children.get(queue.shift()!) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    /* group already gone */
  }
}

/** Signal a process group and every descendant of its leader (those that left the group too). */
export function signalTree(pid: number, signal: NodeJS.Signals): void {
  const all = descendantsOf(pid);
  killGroup(pid, signal);
  for (const p of all) {
    try {
      process.kill(p, signal);
    } catch {
      /* gone */
    }
  }
}

export function startLocalProcess(spec: ProcessSpec, onOutput: OutputListener): StartedProcess {
  const child = spawn(spec.command, spec.args, {
    cwd: spec.cwd,
    env: spec.env,
    detached: true, // its own session and process group: the whole tree can be signalled
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid ?? null;
  for (const [name, stream] of [['stdout', child.stdout], ['stderr', child.stderr]] as const) {
    const decoder = new StringDecoder('utf8');
    stream.on('data', (buf: Buffer) => {
      const text = decoder.write(buf);
      if (text) onOutput(name, text);
    });
    stream.on('end', () => {
      const rest = decoder.end();
      if (rest) onOutput(name, rest);
    });
  }
  const exited = new Promise<{ exitCode: number | null; signal: string | null; spawnError?: string }>((resolve) => {
    child.once('error', (err) => resolve({ exitCode: null, signal: null, spawnError: err.message }));
    child.once('exit', (code, signal) => {
      // Nothing the run started may outlive it: kill what is left of its process group,
      // then wait for the pipes to drain (a grandchild holding them keeps them open).
      // (No /proc walk here: once the leader is gone its other children belong to init.)
      if (pid !== null) killGroup(pid, 'SIGKILL');
      const drained = Promise.all([child.stdout, child.stderr].map((s) => (s.readableEnded ? null : new Promise((r) => s.once('close', r)))));
      const timeout = new Promise((r) => setTimeout(r, 2000).unref());
      void Promise.race([drained, timeout]).then(() => resolve({ exitCode: code, signal }));
    });
  });
  return {
    pid,
    exited,
    kill(signal) {
      if (pid !== null) signalTree(pid, signal);
    },
  };
}
