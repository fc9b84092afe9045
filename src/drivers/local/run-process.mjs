// Start one run process, contain everything it starts, relay its output with
// backpressure, and resolve once it has exited, nothing it started is left and its
// pipes have drained. Shared by the spawner helper (spawner-main.mjs) and in-process
// spawning (BERTH_SPAWNER=off). Plain JavaScript so the helper runs without a loader.
//
// Containment: where a cgroup v2 hierarchy is writable, each run gets its own cgroup
// (`<own cgroup>/berth.<pid>.<start time>/r<id>`). A process cannot leave a cgroup by
// setsid, double fork or nohup, and writing `1` to `cgroup.kill` SIGKILLs every member
// at once, so when the run ends nothing it started is left. The child is put in its
// cgroup by fork itself: this process enters the run's cgroup, spawns, and goes back
// to its own (no wrapper exec, no window in which the child runs outside it).
// Elsewhere (no cgroup v2, or not writable: a container, an unprivileged user) the
// fallback is the process group: the leader's group is killed, and descendants still
// attached to the tree when it is signalled; a process that leaves the group and the
// tree (setsid + double fork) escapes there.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';

/** Start time of a process (clock ticks since boot, field 22 of /proc/<pid>/stat); null if gone. */
function startTimeOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** The cgroup v2 directory this process is in, or null if there is no cgroup v2 mount for it. */
function ownCgroupDir() {
  const line = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'));
  if (!line) return null;
  const path = line.slice(3);
  for (const m of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = m.split(' - ');
    if (!right?.startsWith('cgroup2 ')) continue;
    const f = left.split(' ');
    const root = f[3];
    const mountPoint = f[4];
    if (path === root || path.startsWith(root === '/' ? '/' : `${root}/`)) {
      const rel = root === '/' ? path : path.slice(root.length);
      return `${mountPoint}${rel === '/' ? '' : rel}`;
    }
  }
  return null;
}

const OWNER_DIR = /^berth\.(\d+)\.(\d+)$/;

let cgroups; // undefined: not probed yet; null: unavailable; { own, dir }

/**
 * This process's cgroup v2 setup for runs, probed once: a directory of its own under its
 * cgroup, proven to work by moving itself in and out of a test cgroup. Null when cgroup v2
 * is missing or not writable (BERTH_CONTAINMENT=group forces that, for tests of the fallback).
 */
export function runCgroups() {
  if (cgroups !== undefined) return cgroups;
  cgroups = null;
  if (process.env.BERTH_CONTAINMENT === 'group') return null;
  let dir;
  try {
    const own = ownCgroupDir();
    if (!own) return null;
    reclaimDeadOwners(own);
    dir = `${own}/berth.${process.pid}.${startTimeOf(process.pid)}`;
    mkdirSync(dir, { recursive: true });
    const probe = `${dir}/probe`;
    mkdirSync(probe, { recursive: true });
    if (!existsSync(`${probe}/cgroup.kill`)) throw new Error('no cgroup.kill (kernel before 5.14)');
    writeFileSync(`${probe}/cgroup.procs`, '0');
    writeFileSync(`${own}/cgroup.procs`, '0');
    rmdirSync(probe);
    cgroups = { own, dir };
    const ownerDir = dir;
    // Runs end before their owner; an empty directory left would only wait for the next reclaim.
    process.once('exit', () => {
      try {
        rmdirSync(ownerDir);
      } catch {
        /* a run still in it: the next owner's reclaim kills and removes it */
      }
    });
  } catch {
    try {
      if (dir) rmdirSync(`${dir}/probe`), rmdirSync(dir);
    } catch {
      /* left for the next owner's reclaim */
    }
  }
  return cgroups;
}

/** Kill what runs in the cgroups of owners (Berth servers or helpers) that died without cleaning up. */
function reclaimDeadOwners(own) {
  for (const name of readdirSync(own)) {
    const m = OWNER_DIR.exec(name);
    if (!m || startTimeOf(Number(m[1])) === m[2]) continue;
    reclaimOwnerDir(`${own}/${name}`);
  }
}

/** SIGKILL every run cgroup under an owner's directory and remove them once empty. */
export async function reclaimOwnerDir(dir, waitMs = 0) {
  let names = [];
  try {
    names = readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch {
    return;
  }
  for (const n of names) killCgroup(`${dir}/${n}`);
  await Promise.all(names.map((n) => removeWhenEmpty(`${dir}/${n}`, waitMs)));
  try {
    rmdirSync(dir);
  } catch {
    /* a member still dying: the next reclaim removes it */
  }
}

function killCgroup(cg) {
  try {
    writeFileSync(`${cg}/cgroup.kill`, '1');
  } catch {
    /* already removed */
  }
}

function isEmpty(cg) {
  try {
    return /^populated 0$/m.test(readFileSync(`${cg}/cgroup.events`, 'utf8'));
  } catch {
    return true; // removed
  }
}

/** Wait (at most waitMs) for a killed cgroup to empty, then remove it; true once it is empty. */
async function removeWhenEmpty(cg, waitMs) {
  const until = Date.now() + waitMs;
  while (!isEmpty(cg) && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  const empty = isEmpty(cg);
  try {
    rmdirSync(cg);
  } catch {
    /* not empty yet, or gone */
  }
  return empty;
}

/**
 * Signal everything a run started. With a cgroup: SIGKILL through cgroup.kill, SIGTERM
 * to each member; without: the process group, and every descendant of the leader found
 * in /proc (those that left the group too).
 */
export function signalRun(run, signal) {
  if (run.cgroup) {
    if (signal === 'SIGKILL') return killCgroup(run.cgroup);
    let pids = [];
    try {
      pids = readFileSync(`${run.cgroup}/cgroup.procs`, 'utf8').split('\n').filter(Boolean).map(Number);
    } catch {
      /* removed: nothing left */
    }
    for (const p of pids) {
      try {
        process.kill(p, signal);
      } catch {
        /* gone */
      }
    }
    return;
  }
  if (run.pid !== null) signalTree(run.pid, signal);
}

/** Every live descendant of `pid`, found through /proc (children that left the group included). */
export function descendantsOf(pid) {
  const children = new Map();
  let entries;
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
  const out = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const c of children.get(queue.shift()) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

/** Signal a process group and every descendant of its leader (those that left the group too). */
export function signalTree(pid, signal) {
  const all = descendantsOf(pid);
  try {
    process.kill(-pid, signal);
  } catch {
    /* group already gone */
  }
  for (const p of all) {
    try {
      process.kill(p, signal);
    } catch {
      /* gone */
    }
  }
}

let nextName = 1;

/**
 * Spawn with the child born in `cg` (when given: fork copies the parent's cgroup); the
 * cgroup it is really in, null if this process could not enter it (then it is uncontained
 * but for its process group, as in the fallback).
 */
function spawnInto(cg, spec) {
  // detached: its own session and process group too (SIGTERM reaches the group at once).
  const start = () => spawn(spec.command, spec.args, { cwd: spec.cwd, env: spec.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const own = cgroups?.own;
  if (!cg || !own) return { child: start(), cg: null };
  try {
    writeFileSync(`${cg}/cgroup.procs`, '0');
  } catch {
    try {
      rmdirSync(cg);
    } catch {
      /* left for the owner's reclaim */
    }
    return { child: start(), cg: null };
  }
  try {
    return { child: start(), cg };
  } finally {
    // Back to our own cgroup before anything else runs: the run's cgroup.kill must never reach us.
    writeFileSync(`${own}/cgroup.procs`, '0');
  }
}

/**
 * @param {{ command: string, args: string[], cwd: string, env: Record<string, string> }} spec
 * @param {{ onSpawned: (pid: number, cgroup: string | null) => void, onOutput: (stream: 'stdout' | 'stderr', text: string) => unknown }} io
 * @param {{ name?: string | number }} [opts]
 */
export function runProcess(spec, io, opts = {}) {
  return new Promise((resolve) => {
    const setup = runCgroups();
    let cg = null;
    if (setup) {
      try {
        cg = `${setup.dir}/r${opts.name ?? nextName++}`;
        mkdirSync(cg);
      } catch {
        cg = null;
      }
    }
    const cgDone = () => (cg ? removeWhenEmpty(cg, 5000) : Promise.resolve(true));
    let child;
    try {
      ({ child, cg } = spawnInto(cg, spec));
    } catch (err) {
      void cgDone().then(() => resolve({ exitCode: null, signal: null, spawnError: err.message }));
      return;
    }
    const pid = child.pid ?? null;
    if (pid === null) {
      // Could not start (ENOENT, EACCES): 'error' comes, 'exit' does not.
      child.once('error', (err) => void cgDone().then(() => resolve({ exitCode: null, signal: null, spawnError: err.message })));
      return;
    }
    child.once('error', () => {});
    io.onSpawned(pid, cg);
    let discarded = 0;
    let discarding = false;
    const drainers = []; // resolve with the bytes each counted
    const drainerProcs = [];
    const streams = [['stdout', child.stdout], ['stderr', child.stderr]];
    // The log is full: hand each pipe to `wc -c`, which drains it at C speed and counts,
    // so the rest of the output costs this process neither memory nor CPU. Where wc
    // cannot start, this process reads and drops it.
    const stopRelaying = () => {
      if (discarding) return;
      discarding = true;
      for (const [, stream] of streams) {
        if (stream.destroyed) continue;
        stream.pause();
        discarded += stream.readableLength;
        let drainer;
        try {
          drainer = spawn('wc', ['-c'], { stdio: [stream, 'pipe', 'ignore'] });
        } catch {
          stream.resume();
          continue;
        }
        let counted = '';
        drainer.stdout.on('data', (d) => (counted += d));
        drainer.once('error', () => {});
        drainers.push(new Promise((done) => drainer.once('close', () => done(Number(counted.trim()) || 0))));
        drainerProcs.push(drainer);
        stream.destroy();
      }
    };
    const drained = [];
    for (const [name, stream] of streams) {
      const decoder = new StringDecoder('utf8');
      stream.on('data', (buf) => {
        if (discarding) return void (discarded += buf.length);
        const text = decoder.write(buf);
        if (!text) return;
        const answer = io.onOutput(name, text);
        if (answer && typeof answer.then === 'function') {
          // Backpressure: the child's pipe fills and it blocks until the chunk is taken.
          stream.pause();
          answer.then(
            (v) => (v === 'stop' ? stopRelaying() : stream.resume()),
            () => stream.resume(),
          );
        }
      });
      drained.push(
        new Promise((done) =>
          stream.once('close', () => {
            const rest = discarding ? '' : decoder.end();
            if (rest) io.onOutput(name, rest);
            done();
          }),
        ),
      );
    }
    child.once('exit', (code, signal) => {
      // Nothing the run started may outlive it: kill what is left (its cgroup, else its
      // process group), then wait (at most 2 s) for the pipes to drain: a process outside
      // the cgroup holding them keeps them open.
      if (cg) killCgroup(cg);
      else {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          /* group already gone */
        }
      }
      const timeout = new Promise((r) => setTimeout(r, 2000).unref());
      let drainedBytes = 0;
      const drainersDone = Promise.all(drainers).then((counts) => void (drainedBytes = counts.reduce((a, b) => a + b, 0)));
      Promise.race([Promise.all([...drained, drainersDone]), timeout])
        .then(() => cgDone())
        .then(() => {
          child.stdout.destroy();
          child.stderr.destroy();
          // A drainer still reading has a writer outside the run's cgroup (the fallback): stop it.
          for (const d of drainerProcs) d.kill('SIGKILL');
          const dropped = discarded + drainedBytes;
          resolve({ exitCode: code, signal, ...(dropped > 0 ? { discardedBytes: dropped } : {}) });
        });
    });
  });
}
