// Shared helpers for benchmarks: latency statistics, worker pools, scratch databases,
// and runs that can be awaited.
import { spawn } from 'node:child_process';
import type { Db } from '../src/db/client.js';
import type { HeartbeatRun } from '../src/domain/types.js';
import type { DriverRegistry } from '../src/drivers/contract.js';
import { startRuntime } from '../src/heartbeat/runtime.js';
import type { Services } from '../src/services/index.js';

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export interface RunStats {
  ops: number;
  seconds: number;
  perSecond: number;
  p50: number;
  p99: number;
}

/** Run `total` operations over `clients` concurrent workers; latency per operation in ms. */
export async function runConcurrent(total: number, clients: number, op: (i: number) => Promise<void>): Promise<RunStats> {
  const latencies: number[] = [];
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      for (let i = next++; i < total; i = next++) {
        const t = performance.now();
        await op(i);
        latencies.push(performance.now() - t);
      }
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  return { ops: total, seconds, perSecond: total / seconds, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

export const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-');

/** Spawn `true` directly, as the floor a run is compared with; ms until it has closed. */
export function spawnTrue(): Promise<number> {
  const t = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn('true', [], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child.once('error', reject);
    child.once('close', () => resolve(performance.now() - t));
  });
}

/**
 * A runtime whose runs can be awaited: `runOnce` queues a run of an agent and resolves
 * with it once finished, and the ms from invoke to finished.
 */
export async function startBenchRuntime(opts: { services: Services; db: Db; drivers: DriverRegistry }) {
  // Finished runs arrive through onRunFinished; a waiter may register before or after.
  const finished = new Map<string, HeartbeatRun>();
  const waiting = new Map<string, (run: HeartbeatRun) => void>();
  const runtime = await startRuntime({
    ...opts,
    maxConcurrentRuns: 16,
    onRunFinished: (run) => {
      const w = waiting.get(run.id);
      if (w) w(run);
      else finished.set(run.id, run);
    },
    apiUrl: 'http://127.0.0.1:9',
    onError: (where, err) => console.error(where, err),
  });
  const runOnce = async (companyId: string, agentId: string): Promise<{ ms: number; run: HeartbeatRun }> => {
    const t = performance.now();
    const run = await opts.services.runs.invoke(companyId, agentId);
    runtime.poke();
    const done = finished.get(run.id) ?? (await new Promise<HeartbeatRun>((resolve) => waiting.set(run.id, resolve)));
    finished.delete(run.id);
    waiting.delete(run.id);
    return { ms: performance.now() - t, run: done };
  };
  return { runtime, runOnce };
}
