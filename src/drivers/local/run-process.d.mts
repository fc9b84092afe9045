export interface RunProcessExit {
  exitCode: number | null;
  signal: string | null;
  spawnError?: string;
  /** Bytes read and dropped after the listener said 'stop' (the run's log is full). */
  discardedBytes?: number;
}

/** A started run: its leader's pid and, where cgroup v2 is usable, the cgroup that holds everything it started. */
export interface RunHandle {
  pid: number | null;
  cgroup: string | null;
}

export function runCgroups(): { own: string; dir: string } | null;
export function reclaimOwnerDir(dir: string, waitMs?: number): Promise<void>;
export function signalRun(run: RunHandle, signal: NodeJS.Signals): void;
export function descendantsOf(pid: number): number[];
export function signalTree(pid: number, signal: NodeJS.Signals): void;

export function runProcess(
  spec: { command: string; args: string[]; cwd: string; env: Record<string, string> },
  io: {
    onSpawned: (pid: number, cgroup: string | null) => void;
    /** May return a promise: the stream waits for it; one resolving to 'stop' means relay no more (count and drop). */
    onOutput: (stream: 'stdout' | 'stderr', text: string) => unknown;
  },
  opts?: { name?: string | number },
): Promise<RunProcessExit>;
