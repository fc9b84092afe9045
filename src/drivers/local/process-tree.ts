// Starting a run's process contained (a cgroup v2 per run where the kernel allows it,
// else its own process group) and signalling everything it started.
import { runProcess, signalRun, type RunHandle } from './run-process.mjs';
import { sharedSpawner, type SpawnerExit } from './spawner.js';
import type { ExitResult, OutputListener, ProcessSpec } from '../contract.js';

/** A process this server started, while this server lives. */
export interface StartedProcess {
  /** The process id once it has started (its process group id too); null if it could not start. */
  spawned: Promise<number | null>;
  /** Resolves when the process has exited and its output is drained. */
  exited: Promise<ExitResult>;
  /** Signal the whole process tree (once it has started). */
  kill(signal: 'SIGTERM' | 'SIGKILL'): void;
}

export { descendantsOf, signalTree } from './run-process.mjs';

/**
 * Start a process contained: in its own cgroup where cgroup v2 is writable (everything
 * it starts stays there and dies with it), and in its own session and process group.
 * By default through the spawner helper (a small process whose fork stays cheap however
 * large the server grows); BERTH_SPAWNER=off spawns from this process.
 */
export function startLocalProcess(spec: ProcessSpec, onOutput: OutputListener): StartedProcess {
  let run: RunHandle | null = null;
  let signalBeforeStart: NodeJS.Signals | null = null;
  let resolveSpawned!: (pid: number | null) => void;
  const spawned = new Promise<number | null>((r) => (resolveSpawned = r));
  const exited = (process.env.BERTH_SPAWNER === 'off' ? spawnHere : spawnViaHelper)(spec, onOutput, (r) => {
    run = r;
    resolveSpawned(r.pid);
    if (signalBeforeStart) signalRun(r, signalBeforeStart);
  }).then((exit) => {
    resolveSpawned(null); // no-op if it had started
    return exit;
  });
  return {
    spawned,
    exited,
    kill(signal) {
      if (run !== null) signalRun(run, signal);
      else signalBeforeStart = signal;
    },
  };
}

function spawnViaHelper(spec: ProcessSpec, onOutput: OutputListener, onSpawned: (run: RunHandle) => void): Promise<SpawnerExit> {
  return sharedSpawner().start(spec, onOutput, onSpawned);
}

function spawnHere(spec: ProcessSpec, onOutput: OutputListener, onSpawned: (run: RunHandle) => void): Promise<SpawnerExit> {
  return runProcess(spec, { onSpawned: (pid, cgroup) => onSpawned({ pid, cgroup }), onOutput });
}
