// The spawner: a small long-lived helper process that starts run processes for the
// server. fork() costs time in proportion to the parent's memory, and a server's
// heap grows; this process stays small, so every spawn stays cheap. It relays each
// child's output and exit over the IPC channel. Plain JavaScript, no dependencies.
import { runProcess } from './run-process.mjs';

const send = (msg) => process.connected && process.send(msg);

process.on('message', (msg) => {
  if (msg?.op !== 'spawn') return;
  const { id, command, args, cwd, env } = msg;
  void runProcess(
    { command, args, cwd, env },
    {
      onSpawned: (pid) => send({ op: 'spawned', id, pid }),
      onOutput: (stream, text) => send({ op: 'out', id, stream, text }),
    },
  ).then((exit) => send({ op: 'exit', id, code: exit.exitCode, signal: exit.signal, ...(exit.spawnError ? { spawnError: exit.spawnError } : {}) }));
});

// The server went away: this helper has nothing left to do.
process.on('disconnect', () => process.exit(0));
