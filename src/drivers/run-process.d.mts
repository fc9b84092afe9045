export interface RunProcessExit {
  exitCode: number | null;
  signal: string | null;
  spawnError?: string;
}

export function runProcess(
  spec: { command: string; args: string[]; cwd: string; env: Record<string, string> },
  io: { onSpawned: (pid: number) => void; onOutput: (stream: 'stdout' | 'stderr', text: string) => void },
): Promise<RunProcessExit>;
