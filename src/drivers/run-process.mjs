// Start one run process in its own session and process group, relay its output as
// text, and resolve when it has exited and its pipes have drained. Shared by the
// spawner helper (spawner-main.mjs) and in-process spawning (BERTH_SPAWNER=off).
// Plain JavaScript so the helper runs without a loader.
import { spawn } from 'node:child_process';
import { StringDecoder } from 'node:string_decoder';

/**
 * @param {{ command: string, args: string[], cwd: string, env: Record<string, string> }} spec
 * @param {{ onSpawned: (pid: number) => void, onOutput: (stream: 'stdout' | 'stderr', text: string) => void }} io
 * @returns {Promise<{ exitCode: number | null, signal: string | null, spawnError?: string }>}
 */
export function runProcess(spec, io) {
  return new Promise((resolve) => {
    let child;
    try {
      // detached: its own session and process group, so the whole tree can be signalled.
      child = spawn(spec.command, spec.args, { cwd: spec.cwd, env: spec.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      resolve({ exitCode: null, signal: null, spawnError: err.message });
      return;
    }
    const pid = child.pid ?? null;
    if (pid === null) {
      // Could not start (ENOENT, EACCES): 'error' comes, 'exit' does not.
      child.once('error', (err) => resolve({ exitCode: null, signal: null, spawnError: err.message }));
      return;
    }
    child.once('error', () => {});
    io.onSpawned(pid);
    const drained = [];
    for (const [name, stream] of [['stdout', child.stdout], ['stderr', child.stderr]]) {
      const decoder = new StringDecoder('utf8');
      stream.on('data', (buf) => {
        const text = decoder.write(buf);
        if (text) io.onOutput(name, text);
      });
      drained.push(
        new Promise((done) =>
          stream.once('close', () => {
            const rest = decoder.end();
            if (rest) io.onOutput(name, rest);
            done();
          }),
        ),
      );
    }
    child.once('exit', (code, signal) => {
      // Nothing the run started may outlive it: kill what is left of its process group,
      // then wait (at most 2 s) for the pipes to drain: a grandchild holding them keeps
      // them open. (No /proc walk here: once the leader is gone its other children
      // belong to init.)
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* group already gone */
      }
      const timeout = new Promise((r) => setTimeout(r, 2000).unref());
      Promise.race([Promise.all(drained), timeout]).then(() => resolve({ exitCode: code, signal }));
    });
  });
}
