// Starting a process in its own process group and signalling everything it started.
import { readdirSync, readFileSync } from 'node:fs';
import { runProcess, type RunProcessExit } from './run-process.mjs';
import { sharedSpawner } from './spawner.js';
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

/**
 * Start a process in its own session and process group. By default through the
 * spawner helper (a small process whose fork stays cheap however large the server
 * grows); BERTH_SPAWNER=off spawns from this process.
 */
export function startLocalProcess(spec: ProcessSpec, onOutput: OutputListener): StartedProcess {
  let pid: number | null = null;
  let signalBeforeStart: NodeJS.Signals | null = null;
  let resolveSpawned!: (pid: number | null) => void;
  const spawned = new Promise<number | null>((r) => (resolveSpawned = r));
  const exited = (process.env.BERTH_SPAWNER === 'off' ? spawnHere : spawnViaHelper)(spec, onOutput, (p) => {
    pid = p;
    resolveSpawned(p);
    if (signalBeforeStart) signalTree(p, signalBeforeStart);
  }).then((exit) => {
    resolveSpawned(null); // no-op if it had started
    return exit;
  });
  return {
    spawned,
    exited,
    kill(signal) {
      if (pid !== null) signalTree(pid, signal);
      else signalBeforeStart = signal;
    },
  };
}

function spawnViaHelper(spec: ProcessSpec, onOutput: OutputListener, onSpawned: (pid: number) => void): Promise<RunProcessExit> {
  return sharedSpawner().start(spec, onOutput, onSpawned);
}

function spawnHere(spec: ProcessSpec, onOutput: OutputListener, onSpawned: (pid: number) => void): Promise<RunProcessExit> {
  return runProcess(spec, { onSpawned, onOutput });
}
