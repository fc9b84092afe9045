// The spawner: a small long-lived helper process that starts run processes for the
// server. fork() costs time in proportion to the parent's memory, and a server's
// heap grows; this process stays small, so every spawn stays cheap. It relays each
// child's output and exit over the IPC channel. Plain JavaScript, no dependencies.
//
// Output flows with backpressure: a chunk is sent as `out` with a number, and the
// child's stream stays paused until the server answers `ack` for that number (its log
// writer has taken the chunk); an ack with `stop` (the run's log is full) makes the
// helper drop that run's further output instead of relaying it.
import { reclaimOwnerDir, runCgroups, runProcess, signalRun } from './run-process.mjs';

const send = (msg) => process.connected && process.send(msg);

/** Runs still going, by the server's id: what to kill if the server goes away. */
const live = new Map();
/** Chunks sent and not yet acknowledged: resolve with the server's answer. */
const awaitingAck = new Map();
let nextChunk = 1;

const setup = runCgroups();
send({ op: 'ready', cgroupDir: setup?.dir ?? null });

process.on('message', (msg) => {
  if (msg?.op === 'ack') {
    const done = awaitingAck.get(msg.n);
    awaitingAck.delete(msg.n);
    done?.(msg.stop ? 'stop' : undefined);
    return;
  }
  if (msg?.op !== 'spawn') return;
  const { id, command, args, cwd, env } = msg;
  live.set(id, { pid: null, cgroup: null });
  void runProcess(
    { command, args, cwd, env },
    {
      onSpawned: (pid, cgroup) => {
        live.set(id, { pid, cgroup });
        send({ op: 'spawned', id, pid, cgroup });
      },
      onOutput: (stream, text) =>
        new Promise((resolve) => {
          const n = nextChunk++;
          awaitingAck.set(n, resolve);
          if (!send({ op: 'out', id, n, stream, text })) awaitingAck.delete(n), resolve('stop');
        }),
    },
    { name: id },
  ).then((exit) => {
    live.delete(id);
    send({ op: 'exit', id, code: exit.exitCode, signal: exit.signal, ...(exit.spawnError ? { spawnError: exit.spawnError } : {}), ...(exit.discardedBytes ? { discardedBytes: exit.discardedBytes } : {}) });
  });
});

// The server went away: nothing its runs started may outlive it. Kill them all, then go.
process.on('disconnect', () => {
  for (const run of live.values()) signalRun(run, 'SIGKILL');
  void (setup ? reclaimOwnerDir(setup.dir, 2000) : Promise.resolve()).finally(() => process.exit(0));
});
