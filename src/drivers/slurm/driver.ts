// The `slurm` driver: one Slurm job per lease, submitted, watched and cancelled with the
// cluster's own commands (sbatch, scontrol, squeue, scancel) run by this server, no shell
// between. Why the commands and not slurmrestd: a REST client needs a token (auth/jwt), and
// a cluster without slurmdbd and the jwt plugin (Debian's 22.05) has none to give; its local
// auth acts as slurmrestd's own user, not the submitter. The commands work wherever `sbatch`
// does (a login node, or a server that is one).
//
// A resource is the job `berth-<resource id>`, its comment Berth's labels: provision submits
// it and waits until it runs (queued time is the provision's), so what the run is told names
// the cluster, the job id and the node. The job's script (HOLDER) waits for the run: exec
// writes `run.sh` (0600, in the resource's 0700 directory on the shared workDir) with the
// run's environment, directory and command, which the script sources, removes, and runs.
// No value of the run's environment is ever on a command line or in the job's record
// (scontrol shows the job's name, comment and paths; its environment is the submitter's
// few fixed variables). Output goes to `stdout`/`stderr` files in that directory, which
// watch follows from byte offsets: another server resumes from the offset the first wrote.
// The exit code is Slurm's (scontrol, else jobcomp/filetxt, else sacct). Signals are
// scancel's; destroy cancels the job, waits until Slurm says it has ended, and removes its
// directory. Names, paths and labels come from the resource id alone.
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ENV_VAR_NAME_RE } from '../../domain/enums.js';
import { UUID_RE } from '../../domain/errors.js';
import { checkedResourceId, DriverError, storedConfig } from '../common.js';
import { storableText } from '../../domain/text.js';
import {
  LABEL_COMPANY,
  LABEL_ENVIRONMENT,
  LABEL_LEASE,
  LABEL_RESOURCE,
  type CleanupReport,
  type DriverEnvironment,
  type EnvironmentDriver,
  type ExecutionHandle,
  type ExitResult,
  type ListedResource,
  type OutputListener,
  type ProbeResult,
  type ProvisionedResource,
  type WatchOptions,
} from '../contract.js';
import { slurmConfigSchema, slurmDescriptor, type SlurmConfig } from './descriptor.js';

/** The PATH the cluster's commands are looked up on and the job starts with (the server's own is never passed on). */
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** States a job is over in (its processes gone from the node). */
const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'OUT_OF_MEMORY', 'NODE_FAIL', 'PREEMPTED', 'BOOT_FAIL', 'DEADLINE', 'REVOKED', 'SPECIAL_EXIT']);
const SIGNAL_BY_NUMBER: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM' };
const JOB_ID_RE = /^\d{1,12}$/;
/** How long a job waits for its run once it runs, before it ends by itself (a server that died between provision and exec). */
const HOLD_SEC = 900;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

const configOf = (env: DriverEnvironment): SlurmConfig => storedConfig(slurmConfigSchema, env, 'slurm');

/** `berth-<resource id>`: the one job name this driver gives a resource, from the id alone. */
export function jobName(resourceId: string): string {
  return `berth-${checkedResourceId(resourceId).toLowerCase()}`;
}

/** The resource's directory under the environment's workDir. */
export function jobDir(cfg: SlurmConfig, resourceId: string): string {
  return join(cfg.workDir, jobName(resourceId));
}

/** Berth's labels as a job comment (`k=v,k=v`): the values are Berth's own ids. */
function commentOf(labels: Record<string, string>): string {
  return Object.entries(labels)
    .filter(([k, v]) => /^berth\.[a-z]+$/.test(k) && /^[A-Za-z0-9._-]{1,100}$/.test(v))
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

function labelsOf(comment: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of comment.split(',')) {
    const m = /^(berth\.[a-z]+)=([A-Za-z0-9._-]{1,100})$/.exec(part);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/**
 * The job's script. It waits (up to HOLD_SEC) for the run's file, sources and removes it
 * (the run's environment, `w` its directory, `g` its deadline, `set --` its command), checks
 * the directory and the command before anything of the agent's runs (`started` says `ok
 * <pid>`, `cwd` or `command`), runs the command with TERM passed on to it, and past the
 * deadline (when > 0) has timeout(1) kill it (`deadline` says so); Slurm kills whatever is
 * left in the job once the script exits. The status goes to `exit` and is the script's own.
 */
function holderScript(dir: string, resourceId: string): string {
  return [
    '#!/bin/sh',
    `# Berth: the job of resource ${resourceId}; it runs one run's command.`,
    `d=${quote(dir)}`,
    'umask 077',
    `PATH=${SYSTEM_PATH}; export PATH`,
    '[ -n "$HOME" ] || { HOME=$(getent passwd "$(id -u)" | cut -d: -f6); export HOME; }',
    'st() { printf \'%s\\n\' "$1" > "$d/started.t" && mv -f "$d/started.t" "$d/started"; }',
    `n=0; while [ ! -f "$d/run.sh" ]; do n=$((n+1)); [ $n -gt ${HOLD_SEC * 20} ] && { st none; exit 125; }; sleep 0.05; done`,
    '. "$d/run.sh"',
    'rm -f "$d/run.sh"',
    'cd "$w" 2>/dev/null || { st cwd; exit 127; }',
    'case $1 in */*) [ -f "$1" ] && [ -x "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 ;; esac || { st command; exit 127; }',
    't=; trap \'kill -TERM $c 2>/dev/null; t=1\' TERM INT HUP',
    // Past the deadline (g > 0) coreutils' timeout ends the command (TERM, KILL 2 s later) with
    // no process of its own left behind: one left in the job keeps Slurm waiting about a
    // second after the script exits before the job is over.
    'b=$(date +%s)',
    'if [ "$g" -gt 0 ]; then timeout -s TERM -k 2 "$g" "$@" & c=$!; else "$@" & c=$!; fi',
    'st "ok $c"',
    // A wait a signal interrupted (t set) says nothing of the command: wait again while it lives.
    'while :; do t=; wait $c; r=$?; [ -z "$t" ] && break; kill -0 $c 2>/dev/null && continue; wait $c; q=$?; [ $q -eq 127 ] || r=$q; break; done',
    'if [ "$g" -gt 0 ] && { [ $r -eq 124 ] || [ $r -eq 137 ]; } && [ $(( $(date +%s) - b )) -ge "$g" ]; then : > "$d/deadline"; fi',
    'printf \'%s\\n\' "$r" > "$d/exit.t"; mv -f "$d/exit.t" "$d/exit"',
    'exit $r',
    '',
  ].join('\n');
}

interface CmdResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `key=value` pairs of one `scontrol show job -o` line. */
function parseRecord(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of line.matchAll(/(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(\S*)/g)) if (!(m[1]! in out)) out[m[1]!] = m[2]!;
  return out;
}

interface JobInfo {
  state: string;
  node: string | null;
  exitCode: string | null;
  reason: string | null;
  name: string | null;
  comment: string;
  startTime: string | null;
  timeLimit: string | null;
}

function jobInfoOf(rec: Record<string, string>): JobInfo {
  const node = rec.NodeList && rec.NodeList !== '(null)' ? rec.NodeList : null;
  return {
    state: (rec.JobState ?? 'UNKNOWN').toUpperCase(),
    node,
    exitCode: rec.ExitCode ?? null,
    reason: rec.Reason && rec.Reason !== 'None' ? rec.Reason : null,
    name: rec.JobName ?? rec.Name ?? null,
    comment: rec.Comment && rec.Comment !== '(null)' ? rec.Comment : '',
    startTime: rec.StartTime && rec.StartTime !== 'Unknown' ? rec.StartTime : null,
    timeLimit: rec.TimeLimit ?? null,
  };
}

/** Slurm's `exit:signal` as Berth's exit code and signal (a shell's 128+n is the signal n). */
function exitOf(raw: string | null): { exitCode: number | null; signal: string | null } | null {
  const m = /^(\d+):(\d+)$/.exec(raw ?? '');
  if (!m) return null;
  const code = Number(m[1]);
  const sig = Number(m[2]);
  if (sig > 0) return { exitCode: null, signal: SIGNAL_BY_NUMBER[sig] ?? `SIG${sig}` };
  if (code > 128 && SIGNAL_BY_NUMBER[code - 128]) return { exitCode: null, signal: SIGNAL_BY_NUMBER[code - 128]! };
  return { exitCode: code, signal: null };
}

interface ExecRef {
  jobId: string;
  dir: string;
  cluster: string;
  resourceId: string;
  deadlineSec: number;
}

function execRef(exe: ExecutionHandle): ExecRef {
  const r = exe.ref as Partial<ExecRef>;
  if (typeof r.jobId !== 'string' || !JOB_ID_RE.test(r.jobId) || typeof r.resourceId !== 'string') throw new DriverError('slurm_handle', 'not a slurm execution handle');
  return { jobId: r.jobId, dir: String(r.dir ?? ''), cluster: String(r.cluster ?? ''), resourceId: r.resourceId, deadlineSec: Number(r.deadlineSec ?? 0) };
}

/** Offsets into the job's stdout and stderr files, as `<stdout>:<stderr>` (bytes). */
function parseOffset(from: string | undefined): { stdout: number; stderr: number } {
  const m = /^(\d+):(\d+)$/.exec(from ?? '');
  return m ? { stdout: Number(m[1]), stderr: Number(m[2]) } : { stdout: 0, stderr: 0 };
}

/** Where a chunk of UTF-8 can be cut without splitting a character: its length less a trailing incomplete sequence. */
function completeUtf8(buf: Buffer): number {
  let i = buf.length - 1;
  let back = 0;
  while (i >= 0 && back < 4 && (buf[i]! & 0xc0) === 0x80) {
    i--;
    back++;
  }
  if (i < 0) return buf.length;
  const lead = buf[i]!;
  const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return buf.length - i < need ? i : buf.length;
}

interface ClusterInfo {
  cluster: string;
  jobCompType: string;
  jobCompLoc: string | null;
  accounting: string;
}

export interface SlurmDriverOptions {
  /** Per-command timeout, ms. Default 60 s. */
  commandTimeoutMs?: number;
  /** How often watch reads the job's output files, ms. Default 50. */
  readEveryMs?: number;
  /** How often watch asks Slurm for the job's state while it runs, ms. Default 250. */
  stateEveryMs?: number;
}

export function slurmDriver(opts: SlurmDriverOptions = {}): EnvironmentDriver {
  const commandTimeoutMs = opts.commandTimeoutMs ?? 60_000;
  const readEveryMs = opts.readEveryMs ?? 50;
  const stateEveryMs = opts.stateEveryMs ?? 250;
  const clusters = new Map<string, ClusterInfo>();
  /** Signals this server sent, by job id: a job it cancelled ended by its signal, not "outside Berth". */
  const signalled = new Map<string, 'TERM' | 'KILL'>();

  /** One of the cluster's commands, no shell, with only PATH and SLURM_CONF in its environment. */
  function run(cfg: SlurmConfig, cmd: string, args: string[], o: { input?: string; signal?: AbortSignal } = {}): Promise<CmdResult> {
    const path = cfg.binDir ? `${cfg.binDir}:${SYSTEM_PATH}` : SYSTEM_PATH;
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, args, {
        env: { PATH: path, LANG: 'C', ...(cfg.slurmConf ? { SLURM_CONF: cfg.slurmConf } : {}), ...(process.env.TZ ? { TZ: process.env.TZ } : {}) },
        stdio: ['pipe', 'pipe', 'pipe'],
        timeout: commandTimeoutMs,
        ...(o.signal ? { signal: o.signal } : {}),
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') reject(new DriverError('slurm_command', `${cmd} is not installed on this server (looked in ${path})`));
        else if (err.name === 'AbortError') reject(err);
        else reject(new DriverError('slurm_command', `${cmd} failed: ${err.message}`));
      });
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.on('error', () => {});
      child.stdin.end(o.input ?? '');
    });
  }

  const failure = (what: string, r: CmdResult) =>
    new DriverError('slurm_error', `${what} failed (exit ${r.code}): ${storableText((r.stderr || r.stdout).trim()).slice(0, 500)}`);

  async function clusterInfo(cfg: SlurmConfig, signal?: AbortSignal): Promise<ClusterInfo> {
    const key = JSON.stringify([cfg.slurmConf ?? null, cfg.binDir ?? null]);
    const known = clusters.get(key);
    if (known) return known;
    // A missing file makes the commands look for the cluster in DNS for a minute: said at once instead.
    if (cfg.slurmConf && !(await stat(cfg.slurmConf).catch(() => null))?.isFile()) throw new DriverError('slurm_config', `config.slurmConf: no file ${cfg.slurmConf} on this server`);
    const r = await run(cfg, 'scontrol', ['show', 'config'], { ...(signal ? { signal } : {}) });
    if (r.code !== 0) throw failure('scontrol show config', r);
    const value = (k: string) => new RegExp(`^${k}\\s*=\\s*(.*)$`, 'm').exec(r.stdout)?.[1]?.trim() ?? '';
    const info: ClusterInfo = {
      cluster: value('ClusterName') || 'slurm',
      jobCompType: value('JobCompType'),
      jobCompLoc: value('JobCompLoc') || null,
      accounting: value('AccountingStorageType'),
    };
    clusters.set(key, info);
    return info;
  }

  /** The job as scontrol sees it; null when Slurm no longer knows it (purged after MinJobAge, or never was). */
  async function jobInfo(cfg: SlurmConfig, jobId: string, signal?: AbortSignal): Promise<JobInfo | null> {
    const r = await run(cfg, 'scontrol', ['show', 'job', '-o', jobId], { ...(signal ? { signal } : {}) });
    if (r.code !== 0) {
      if (/invalid job id/i.test(r.stderr)) return null;
      throw failure(`scontrol show job ${jobId}`, r);
    }
    const line = r.stdout.split('\n').find((l) => l.startsWith(`JobId=${jobId} `));
    return line ? jobInfoOf(parseRecord(line)) : null;
  }

  /** A purged job's end from the cluster's records: jobcomp/filetxt's file, or sacct where there is slurmdbd. */
  async function recordedEnd(cfg: SlurmConfig, jobId: string): Promise<{ state: string; exitCode: string | null } | null> {
    const info = await clusterInfo(cfg);
    if (info.jobCompType.includes('filetxt') && info.jobCompLoc) {
      const text = await readFile(info.jobCompLoc, 'utf8').catch(() => '');
      const line = text.split('\n').reverse().find((l) => l.startsWith(`JobId=${jobId} `));
      if (line) {
        const rec = parseRecord(line);
        return { state: (rec.JobState ?? 'UNKNOWN').toUpperCase(), exitCode: rec.ExitCode ?? null };
      }
    }
    if (info.accounting.includes('slurmdbd')) {
      const r = await run(cfg, 'sacct', ['-n', '-P', '-X', '-j', jobId, '-o', 'State,ExitCode']);
      const line = r.code === 0 ? r.stdout.trim().split('\n')[0] : undefined;
      if (line) {
        const [state, exitCode] = line.split('|');
        return { state: (state ?? 'UNKNOWN').split(' ')[0]!.toUpperCase(), exitCode: exitCode ?? null };
      }
    }
    return null;
  }

  /** Active jobs named for this resource (a provision that ran twice, or one whose answer was lost). */
  async function jobsNamed(cfg: SlurmConfig, resourceId: string, signal?: AbortSignal): Promise<string[]> {
    const r = await run(cfg, 'squeue', ['-h', '-n', jobName(resourceId), '-o', '%i'], { ...(signal ? { signal } : {}) });
    if (r.code !== 0) throw failure('squeue', r);
    return r.stdout.split('\n').map((l) => l.trim()).filter((l) => JOB_ID_RE.test(l));
  }

  /** scancel that takes "already over" and "no such job" as done. */
  async function scancel(cfg: SlurmConfig, args: string[]): Promise<void> {
    const r = await run(cfg, 'scancel', args);
    if (r.code === 0 || /already completing or completed|invalid job id|job is no longer|not found/i.test(r.stderr)) return;
    throw failure(`scancel ${args.join(' ')}`, r);
  }

  async function readExitFile(dir: string, name: string): Promise<string | null> {
    return readFile(join(dir, name), 'utf8').then((t) => t.trim(), () => null);
  }

  function where(info: ClusterInfo, jobId: string): string {
    return `job ${jobId} on cluster ${info.cluster}`;
  }

  return {
    ...slurmDescriptor,

    // The queue wait is the provision phase: the environment's own limit (and submitting's few seconds).
    provisionTimeoutMs: (env) => configOf(env).queueTimeoutSeconds * 1000 + 10_000,

    async probe(env, signal): Promise<ProbeResult> {
      const started = performance.now();
      const details: Record<string, unknown> = {};
      try {
        const cfg = configOf(env);
        const info = await clusterInfo(cfg, signal);
        details.cluster = info.cluster;
        const r = await run(cfg, 'sinfo', ['-h', '-o', '%P|%a|%D|%T', ...(cfg.partition ? ['-p', cfg.partition] : [])], { ...(signal ? { signal } : {}) });
        if (r.code !== 0) throw failure('sinfo', r);
        details.partitions = r.stdout.trim().split('\n').filter(Boolean).map((l) => {
          const [partition, avail, nodes, state] = l.split('|');
          return { partition, avail, nodes: Number(nodes), state };
        });
        if (cfg.partition && (details.partitions as unknown[]).length === 0) throw new DriverError('slurm_config', `cluster ${info.cluster} has no partition ${cfg.partition}`);
        await mkdir(cfg.workDir, { recursive: true, mode: 0o711 });
        details.workDir = cfg.workDir;
        return { ok: true, latencyMs: performance.now() - started, details };
      } catch (err) {
        return { ok: false, latencyMs: performance.now() - started, error: (err as Error).message, details };
      }
    },

    /**
     * Submit `berth-<resource id>` (or adopt the one an earlier try submitted) and wait until
     * it runs: the time it queued is this call's. Aborted (the run cancelled, or its deadline):
     * the job is cancelled.
     */
    async provision(env, req, signal): Promise<ProvisionedResource> {
      const cfg = configOf(env);
      const name = jobName(req.resourceId);
      const dir = jobDir(cfg, req.resourceId);
      const info = await clusterInfo(cfg, signal);
      await mkdir(cfg.workDir, { recursive: true, mode: 0o711 });
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const cwd = req.cwd ?? join(dir, 'work');
      if (!req.cwd) await mkdir(cwd, { recursive: true, mode: 0o700 });
      const submittedAt = Date.now();
      let jobId = (await jobsNamed(cfg, req.resourceId, signal))[0];
      if (!jobId) {
        const labels: Record<string, string> = { ...req.labels, [LABEL_RESOURCE]: req.resourceId, [LABEL_ENVIRONMENT]: env.id };
        if (req.leaseId) labels[LABEL_LEASE] = req.leaseId;
        if (env.companyId) labels[LABEL_COMPANY] = env.companyId;
        const o = cfg.options;
        const args = [
          '--parsable',
          `--job-name=${name}`,
          `--comment=${commentOf(labels)}`,
          `--chdir=${dir}`,
          `--output=${join(dir, 'stdout')}`,
          `--error=${join(dir, 'stderr')}`,
          '--open-mode=append',
          // What the job's environment starts from: this command's own (PATH, SLURM_CONF), never the server's.
          '--export=ALL',
          '--nodes=1',
          '--ntasks=1',
          `--cpus-per-task=${cfg.cpus}`,
          `--time=${cfg.timeLimitMinutes}`,
          ...(cfg.memoryMb ? [`--mem=${cfg.memoryMb}M`] : []),
          ...(cfg.partition ? [`--partition=${cfg.partition}`] : []),
          ...(cfg.account ? [`--account=${cfg.account}`] : []),
          ...(o.qos ? [`--qos=${o.qos}`] : []),
          ...(o.reservation ? [`--reservation=${o.reservation}`] : []),
          ...(o.constraint ? [`--constraint=${o.constraint}`] : []),
          ...(o.gres ? [`--gres=${o.gres}`] : []),
          ...(o.nodelist ? [`--nodelist=${o.nodelist}`] : []),
          ...(o.exclude ? [`--exclude=${o.exclude}`] : []),
          ...(o.exclusive ? ['--exclusive'] : []),
          ...(o.nice !== undefined ? [`--nice=${o.nice}`] : []),
          ...(o.licenses ? [`--licenses=${o.licenses}`] : []),
          ...(o.wckey ? [`--wckey=${o.wckey}`] : []),
        ];
        const r = await run(cfg, 'sbatch', args, { input: holderScript(dir, req.resourceId), signal });
        if (r.code !== 0) throw new DriverError('slurm_submit', `sbatch on cluster ${info.cluster} refused the job: ${storableText(r.stderr.trim()).slice(0, 500)}`);
        jobId = r.stdout.trim().split(';')[0]!;
        if (!JOB_ID_RE.test(jobId)) throw new DriverError('slurm_submit', `sbatch answered ${JSON.stringify(r.stdout.trim().slice(0, 100))}, not a job id`);
      }
      // Until it runs; cancelled if this provision is given up.
      let job: JobInfo | null = null;
      // Queued, then running, said in the run's log as Slurm reports it (a state or reason change once each).
      let said = '';
      const say = (j: JobInfo) => {
        const now = j.state === 'RUNNING' ? `${where(info, jobId)} is RUNNING on ${j.node ?? 'its node'} after ${Date.now() - submittedAt} ms` : `${where(info, jobId)} is ${j.state}${j.reason ? ` (${j.reason})` : ''}`;
        if (now.replace(/ after \d+ ms$/, '') !== said) req.progress?.(now);
        said = now.replace(/ after \d+ ms$/, '');
      };
      try {
        for (;;) {
          signal.throwIfAborted();
          job = await jobInfo(cfg, jobId, signal);
          if (!job) throw new DriverError('slurm_job_gone', `${where(info, jobId)} is no longer known to Slurm before it ran`);
          say(job);
          if (job.state === 'RUNNING') break;
          if (TERMINAL.has(job.state)) throw new DriverError('slurm_job_ended', `${where(info, jobId)} ended ${job.state} before it ran${job.reason ? ` (${job.reason})` : ''}`);
          await sleep(100);
        }
      } catch (err) {
        await scancel(cfg, [jobId]).catch(() => {});
        throw err;
      }
      const details = {
        cluster: info.cluster,
        jobId,
        node: job.node,
        ...(cfg.partition ? { partition: cfg.partition } : {}),
        jobState: job.state,
        queuedMs: Date.now() - submittedAt,
        cwd,
        providerLeaseId: `slurm://${info.cluster}/${jobId}`,
      };
      return { resourceId: req.resourceId, providerId: jobId, state: { jobId, cluster: info.cluster, node: job.node, startedAt: Date.now() }, cwd, details };
    },

    async exec(env, resource, spec, signal): Promise<ExecutionHandle> {
      const cfg = configOf(env);
      const dir = jobDir(cfg, resource.resourceId);
      const jobId = resource.providerId ?? '';
      if (!JOB_ID_RE.test(jobId)) throw new DriverError('slurm_handle', `resource ${resource.resourceId} has no job id`);
      const info = await clusterInfo(cfg, signal);
      const deadlineSec = spec.deadlineSec ?? 0;
      if (!Number.isInteger(deadlineSec) || deadlineSec < 0) throw new Error(`deadlineSec must be a whole number of seconds, not ${deadlineSec}`);
      const lines: string[] = [];
      for (const [k, v] of Object.entries(spec.env)) {
        if (!ENV_VAR_NAME_RE.test(k)) throw new Error(`environment variable name ${JSON.stringify(k)} is not valid`);
        if (v.includes('\0')) throw new Error(`environment variable ${k} contains a NUL byte`);
        lines.push(`${k}=${quote(v)}; export ${k}`);
      }
      for (const a of [spec.command, ...spec.args, spec.cwd]) if (a.includes('\0')) throw new Error('the command, its arguments and its directory must not contain NUL bytes');
      lines.push(`w=${quote(spec.cwd)}`, `g=${deadlineSec}`, `set -- ${[spec.command, ...spec.args].map(quote).join(' ')}`, '');
      // The values reach the job only in this file (0600, in a 0700 directory): the job sources and removes it.
      const tmp = join(dir, `run.sh.${process.pid}.t`);
      await writeFile(tmp, lines.join('\n'), { mode: 0o600 });
      await rename(tmp, join(dir, 'run.sh'));
      // The job's own limit follows the run's deadline (a backstop for the script's own kill): lowered, never raised.
      if (deadlineSec > 0) {
        const job = await jobInfo(cfg, jobId, signal);
        const ranSec = job?.startTime ? Math.max(0, (Date.now() - new Date(job.startTime).getTime()) / 1000) : 0;
        const minutes = Math.ceil((ranSec + deadlineSec) / 60) + 1;
        if (minutes < cfg.timeLimitMinutes) await run(cfg, 'scontrol', ['update', `JobId=${jobId}`, `TimeLimit=${minutes}`], { signal }).catch(() => {});
      }
      // Started once the script has checked the directory and the command (a spawn error is watch's to report).
      for (let i = 0; ; i++) {
        signal.throwIfAborted();
        if ((await readExitFile(dir, 'started')) !== null) break;
        if (i % 20 === 19) {
          const job = await jobInfo(cfg, jobId, signal);
          if (!job || TERMINAL.has(job.state)) throw new DriverError('slurm_job_ended', `${where(info, jobId)} ended ${job?.state ?? '(purged)'} before the run started in it`);
        }
        await sleep(20);
      }
      return { driver: 'slurm', host: info.cluster, ref: { jobId, dir, cluster: info.cluster, resourceId: resource.resourceId, deadlineSec } };
    },

    async watch(env, exe, sink: OutputListener, wopts: WatchOptions = {}): Promise<ExitResult> {
      const cfg = configOf(env);
      const ref = execRef(exe);
      // The directory is the resource's, from its id: never a path the handle says.
      const dir = jobDir(cfg, ref.resourceId);
      const info = await clusterInfo(cfg);
      const started = await readExitFile(dir, 'started');
      if (started === 'cwd') return { exitCode: null, signal: null, spawnError: `no such directory on the node of ${where(info, ref.jobId)}` };
      if (started === 'command') return { exitCode: null, signal: null, spawnError: `no such command on the node of ${where(info, ref.jobId)}` };
      const offsets = parseOffset(wopts.from);
      const decoders = { stdout: new TextDecoder('utf-8'), stderr: new TextDecoder('utf-8') };
      let stopped = false;
      let discarded = 0;
      const pump = async (stream: 'stdout' | 'stderr', final: boolean): Promise<boolean> => {
        const fh = await open(join(dir, stream), 'r').catch(() => null);
        if (!fh) return false;
        let moved = false;
        try {
          for (;;) {
            const buf = Buffer.alloc(64 * 1024);
            const { bytesRead } = await fh.read(buf, 0, buf.length, offsets[stream]);
            if (bytesRead === 0) break;
            const chunk = buf.subarray(0, bytesRead);
            const cut = final && bytesRead < buf.length ? chunk.length : completeUtf8(chunk);
            if (cut === 0) break;
            offsets[stream] += cut;
            moved = true;
            if (stopped) discarded += cut;
            else {
              const text = decoders[stream].decode(chunk.subarray(0, cut), { stream: true });
              if (text && (await sink(stream, text)) === 'stop') stopped = true;
            }
            wopts.onOffset?.(`${offsets.stdout}:${offsets.stderr}`);
            if (bytesRead < buf.length && cut === chunk.length) break;
          }
        } finally {
          await fh.close();
        }
        return moved;
      };
      let lastState = 0;
      let job: JobInfo | null = null;
      let gone = false;
      for (;;) {
        wopts.signal?.throwIfAborted();
        await pump('stdout', false);
        await pump('stderr', false);
        const exited = (await stat(join(dir, 'exit')).catch(() => null)) !== null;
        if (exited || performance.now() - lastState >= stateEveryMs) {
          lastState = performance.now();
          job = await jobInfo(cfg, ref.jobId, wopts.signal);
          if (!job) {
            gone = true;
            break;
          }
          if (TERMINAL.has(job.state)) break;
        }
        await sleep(readEveryMs);
      }
      await pump('stdout', true);
      await pump('stderr', true);
      for (const s of ['stdout', 'stderr'] as const) {
        const rest = decoders[s].decode();
        if (rest && !stopped) await sink(s, rest);
      }
      const extra: Partial<ExitResult> = discarded > 0 ? { discardedBytes: discarded } : {};
      let state = job?.state ?? 'UNKNOWN';
      let exitRaw = job?.exitCode ?? null;
      if (gone) {
        const rec = await recordedEnd(cfg, ref.jobId).catch(() => null);
        if (!rec) {
          return { exitCode: null, signal: null, ...extra, error: `${where(info, ref.jobId)} disappeared from Slurm (not in scontrol nor the cluster's job records): how it ended is unknown`, errorCode: 'slurm_job_gone' };
        }
        state = rec.state;
        exitRaw = rec.exitCode;
      }
      const by = signalled.get(ref.jobId);
      signalled.delete(ref.jobId);
      const ended = exitOf(exitRaw) ?? { exitCode: null, signal: null };
      if ((await readExitFile(dir, 'started')) === 'none') return { exitCode: null, signal: null, ...extra, error: `${where(info, ref.jobId)} got no run to start`, errorCode: 'process_lost' };
      if ((await stat(join(dir, 'deadline')).catch(() => null)) !== null) {
        return { ...ended, ...extra, error: `the process passed its deadline of ${ref.deadlineSec} s in ${where(info, ref.jobId)} and was killed there`, errorCode: 'timeout' };
      }
      switch (state) {
        case 'COMPLETED':
        case 'FAILED':
          return { ...ended, ...extra };
        case 'CANCELLED':
          if (by) return { exitCode: null, signal: by === 'KILL' ? 'SIGKILL' : 'SIGTERM', ...extra };
          return { ...ended, ...extra, error: `${where(info, ref.jobId)} was cancelled in Slurm, not by Berth`, errorCode: 'slurm_cancelled' };
        case 'TIMEOUT':
          return { ...ended, ...extra, error: `${where(info, ref.jobId)} reached its Slurm time limit`, errorCode: 'timeout' };
        case 'OUT_OF_MEMORY':
          return { ...ended, ...extra, error: `${where(info, ref.jobId)} ran out of memory${cfg.memoryMb ? ` (--mem ${cfg.memoryMb} MiB)` : ''}`, errorCode: 'out_of_memory' };
        default:
          return { ...ended, ...extra, error: `${where(info, ref.jobId)} ended ${state}${job?.reason ? ` (${job.reason})` : ''}`, errorCode: `slurm_${state.toLowerCase()}` };
      }
    },

    /**
     * TERM: every process of the job's batch step gets it (scancel --signal --full), the
     * script passes it on once more to the command and exits with its status, so the run has
     * its grace and its last output. KILL: the job is cancelled (Slurm kills all it holds).
     */
    async signal(env, exe, sig) {
      const cfg = configOf(env);
      const ref = execRef(exe);
      signalled.set(ref.jobId, sig);
      if (sig === 'TERM') await scancel(cfg, ['--signal=TERM', '--full', ref.jobId]);
      else {
        await scancel(cfg, ['--signal=KILL', '--full', ref.jobId]);
        await scancel(cfg, [ref.jobId]);
      }
    },

    /**
     * Cancel the resource's job (its stored id, and any job of its name), wait until Slurm
     * says it is over (nothing of it left on the node), and remove its directory.
     * Idempotent: a job already over and a directory already gone are success.
     */
    async destroy(env, resource, signal): Promise<CleanupReport> {
      const cfg = configOf(env);
      const name = jobName(resource.resourceId);
      const dir = jobDir(cfg, resource.resourceId);
      const ids = new Set(await jobsNamed(cfg, resource.resourceId, signal));
      const stored = resource.providerId && JOB_ID_RE.test(resource.providerId) ? resource.providerId : null;
      if (stored && !ids.has(stored)) {
        // Only a job of this resource's name is cancelled, whatever id the record holds.
        const job = await jobInfo(cfg, stored, signal);
        if (job && job.name === name && !TERMINAL.has(job.state)) ids.add(stored);
      }
      const cancelled: string[] = [];
      for (const id of ids) {
        await scancel(cfg, [id]);
        for (let i = 0; ; i++) {
          const job = await jobInfo(cfg, id, signal);
          if (!job || TERMINAL.has(job.state)) break;
          if (i > 300) throw new DriverError('slurm_cancel', `job ${id} is still ${job.state} 60 s after scancel`);
          await sleep(200);
        }
        cancelled.push(id);
      }
      const hadDir = (await stat(dir).catch(() => null)) !== null;
      await rm(dir, { recursive: true, force: true });
      if (cancelled.length === 0 && !hadDir) return { nothing: `no active job ${name} and no directory ${dir}` };
      return { removed: [...cancelled.map((id) => `job ${id}`), ...(hadDir ? [dir] : [])].join(', ') };
    },

    async *list(env, signal): AsyncIterable<ListedResource> {
      const cfg = configOf(env);
      const r = await run(cfg, 'squeue', ['-h', '-o', '%i|%j|%k|%V'], { signal });
      if (r.code !== 0) throw failure('squeue', r);
      for (const line of r.stdout.split('\n')) {
        const [id, name, comment, submitted] = line.split('|');
        if (!id || !JOB_ID_RE.test(id) || !/^berth-[0-9a-f-]{36}$/.test(name ?? '')) continue;
        const labels = labelsOf(comment ?? '');
        // Only this environment's jobs, and only where the name and the label agree.
        if (labels[LABEL_ENVIRONMENT] !== env.id || !UUID_RE.test(labels[LABEL_RESOURCE] ?? '') || jobName(labels[LABEL_RESOURCE]!) !== name) continue;
        if (env.companyId && labels[LABEL_COMPANY] !== undefined && labels[LABEL_COMPANY] !== env.companyId) continue;
        const at = submitted ? new Date(submitted) : null;
        yield { providerId: id, labels, createdAt: at && !Number.isNaN(at.getTime()) ? at : null };
      }
    },
  };
}
