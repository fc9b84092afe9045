// The spawner: a small long-lived helper process that starts run processes for the
// server. fork() costs time in proportion to the parent's memory, and a server's
// heap grows; this process stays small, so every spawn stays cheap. It relays each
// child's output and exit over the IPC channel. Plain JavaScript, no dependencies.
import { spawn } from 'node:child_process';
import { StringDecoder } from 'node:string_decoder';

const send = (msg) => process.connected && process.send(msg);

process.on('message', (msg) => {
  if (msg?.op !== 'spawn') return;
  const { id, command, args, cwd, env } = msg;
  let child;
  try {
    child = spawn(command, args, { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    send({ op: 'exit', id, code: null, signal: null, spawnError: err.message });
    return;
  }
  const pid = child.pid ?? null;
  if (pid === null) {
    // Could not start (ENOENT, EACCES): 'error' comes, 'exit' does not.
    child.once('error', (err) => send({ op: 'exit', id, code: null, signal: null, spawnError: err.message }));
    return;
  }
  child.once('error', () => {});
  send({ op: 'spawned', id, pid });
  const drained = [];
  for (const [name, stream] of [['stdout', child.stdout], ['stderr', child.stderr]]) {
    const decoder = new StringDecoder('utf8');
    stream.on('data', (buf) => {
      const text = decoder.write(buf);
      if (text) send({ op: 'out', id, stream: name, text });
    });
    drained.push(
      new Promise((resolve) =>
        stream.once('close', () => {
          const rest = decoder.end();
          if (rest) send({ op: 'out', id, stream: name, text: rest });
          resolve();
        }),
      ),
    );
  }
  child.once('exit', (code, signal) => {
    // Nothing the run started may outlive it: kill what is left of its process group,
    // then wait (at most 2 s) for the pipes to drain.
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {}
    const timeout = new Promise((r) => setTimeout(r, 2000).unref());
    Promise.race([Promise.all(drained), timeout]).then(() => send({ op: 'exit', id, code, signal }));
  });
});

// The server went away: this helper has nothing left to do.
process.on('disconnect', () => process.exit(0));
