// `berth`: the command line. Everything but `serve` talks to a running server
// over HTTP (BERTH_URL, BERTH_API_KEY; else the server and credentials that
// BERTH_HOME records). Listings print tables, or JSON with --json.
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { berthHome } from '../home.js';
import { readAdminKey, readCredentials, readServerInfo } from '../server/home-files.js';
import { ApiError, checkServerUrl, connect, NoServerError, type CliClient } from './client.js';
import type { Body, HeartbeatRun, Ok } from '../client/index.js';
import { TERMINAL_LEASE_STATUSES } from '../domain/enums.js';
import { ago, paint, status, table } from './format.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** What the user typed (a query parameter, a body field, JSON): the server checks it and names the field when it refuses it. */
const asTyped = (v: string | undefined) => v as never;

const DEFAULT_URL = 'http://127.0.0.1:3710';

/** Thrown for a usage problem the user can fix; printed as one line. */
class UsageError extends Error {}

function serverUrl(): string {
  if (process.env.BERTH_URL) return checkServerUrl(process.env.BERTH_URL, 'BERTH_URL');
  return readServerInfo()?.url || readCredentials()?.url || DEFAULT_URL;
}

async function companyClient(): Promise<CliClient> {
  const key = process.env.BERTH_API_KEY || readCredentials()?.apiKey || null;
  if (!key) throw new UsageError(`no API key: set BERTH_API_KEY (a company key, printed once by \`berth company create\`), or start the demo with \`npm start\``);
  return connect(serverUrl(), key);
}

async function adminClient(): Promise<CliClient> {
  const key = process.env.BERTH_ADMIN_KEY || readAdminKey() || process.env.BERTH_API_KEY || null;
  if (!key) throw new UsageError(`no admin key: set BERTH_ADMIN_KEY, or run this where ${berthHome()}/admin.key is readable`);
  return connect(serverUrl(), key);
}

async function companyId(client: CliClient): Promise<string> {
  if (process.env.BERTH_COMPANY_ID) return process.env.BERTH_COMPANY_ID;
  const saved = readCredentials();
  if (!process.env.BERTH_API_KEY && saved) return saved.companyId;
  const { data: companies } = await client.GET('/api/companies');
  if (companies.length !== 1) throw new UsageError('this key sees several companies (the admin key?): name one with BERTH_COMPANY_ID');
  return companies[0]!.id as string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

type Environment = Ok<'get', '/api/environments/{id}'>;
type Agent = Ok<'get', '/api/agents/{id}'>;

async function environmentByRef(client: CliClient, ref: string): Promise<Environment> {
  if (UUID.test(ref)) return (await client.GET('/api/environments/{id}', { params: { path: { id: ref } } })).data;
  const { data: all } = await client.GET('/api/companies/{companyId}/environments', { params: { path: { companyId: await companyId(client) } } });
  const found = all.find((e) => e.name === ref);
  if (!found) throw new UsageError(`no environment named "${ref}" (see \`berth env list\`)`);
  return found;
}

async function agentByRef(client: CliClient, ref: string): Promise<Agent> {
  if (UUID.test(ref)) return (await client.GET('/api/agents/{id}', { params: { path: { id: ref } } })).data;
  const {
    data: [found],
  } = await client.GET('/api/companies/{companyId}/agents', { params: { path: { companyId: await companyId(client) }, query: { name: ref } } });
  if (!found) throw new UsageError(`no agent named "${ref}" (see \`berth agent list\`)`);
  return found;
}

function print(value: unknown, json: boolean, render: () => string): void {
  process.stdout.write(`${json ? JSON.stringify(value, null, 2) : render()}\n`);
}

function keyValues(list: string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list ?? []) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new UsageError(`${what} must be NAME=VALUE, not "${kv}"`);
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

function intOption(value: string, name: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new UsageError(`${name} must be an integer, not "${value}"`);
  return n;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

function details(d: Json | undefined): string {
  if (!d) return '';
  return Object.entries(d)
    .filter(([, v]) => v !== null && v !== undefined && typeof v !== 'object')
    .map(([k, v]) => `${k}=${String(v)}`)
    .join(' ');
}

function duration(run: Json): string {
  if (!run.startedAt) return '-';
  const end = run.finishedAt ? new Date(run.finishedAt).getTime() : Date.now();
  const ms = end - new Date(run.startedAt).getTime();
  return ms < 10_000 ? `${(ms / 1000).toFixed(2)}s` : `${Math.round(ms / 1000)}s`;
}

/** The RESULT of a run in the runs list: its error or exit code; for a queued run put back, until when it waits. */
function runResult(run: Json): string {
  if (run.status === 'queued' && run.notBefore) return `waits, not before ${ago(run.notBefore)}`;
  return run.error ?? (run.exitCode !== null && run.exitCode !== undefined ? `exit ${run.exitCode}` : '');
}

/** The CLI's exit code for a finished run. */
export function exitCodeForRun(run: Json): number {
  switch (run.status) {
    case 'succeeded':
      return 0;
    case 'timed_out':
      return 124;
    case 'cancelled':
      return 130;
    default:
      return typeof run.exitCode === 'number' && run.exitCode > 0 && run.exitCode < 124 ? run.exitCode : 1;
  }
}

/** A warm pool's lines of `env show`: its config, and what it holds now (poolState). */
function showPool(e: Json): string[] {
  const p = e.pool as Json | null | undefined;
  if (!p) return [];
  const st = e.poolState as Json | undefined;
  return [
    `pool         min ${p.minReady} ready, max ${p.maxReady} idle, replaced after ${p.maxAgeSeconds} s${p.setup ? `, setup: ${(p.setup as Json).command}` : ''}`,
    `pool now     ${st ? `${st.size} idle (${st.ready} ready, ${st.provisioning} provisioning), ${st.claimed} claimed, ${st.refillFailures} refill failure${st.refillFailures === 1 ? '' : 's'}${st.lastError ? ` — last ${ago(st.lastErrorAt)}: ${st.lastError}` : ''}` : '-'}`,
  ];
}

function showEnvironment(e: Json): string {
  const probe = e.lastProbe as Json | null;
  const lines = [
    `${paint('bold', e.name)}  ${e.id}`,
    `driver       ${e.driver}`,
    `status       ${status(e.status)}`,
    `capacity     ${e.capacity ?? 'unlimited'}`,
    ...showPool(e),
    `description  ${e.description ?? '-'}`,
    `config       ${JSON.stringify(e.config)}`,
    `env vars     ${(e.envVarNames as string[]).join(', ') || '-'}`,
    `last probe   ${probe ? `${probe.ok ? paint('green', 'ok') : paint('red', 'failed')} ${probe.latencyMs} ms ${ago(probe.at)}${probe.error ? ` — ${probe.error}` : ''}` : 'never'}`,
    `updated      ${ago(e.updatedAt)}`,
  ];
  return lines.join('\n');
}

function showLease(l: Json): string {
  return [
    `lease ${l.id}`,
    `status       ${status(l.status)}${l.releaseStatus ? ` (then ${l.releaseStatus})` : ''}`,
    `environment  ${l.environmentId ?? '(deleted)'}`,
    `policy       ${l.leasePolicy}`,
    `fence        ${l.fence}`,
    `run          ${l.heartbeatRunId ?? '-'}`,
    `acquired     ${ago(l.acquiredAt)}`,
    // An ended lease no longer expires.
    `expires      ${l.releasedAt ? '-' : l.expiresAt ? ago(l.expiresAt) : 'never'}`,
    `released     ${l.releasedAt ? ago(l.releasedAt) : '-'}`,
    `failure      ${l.failureReason ?? '-'}`,
    `cleanup      ${l.cleanupStatus ?? '-'}${l.cleanupAttempts ? ` after ${l.cleanupAttempts} attempt${l.cleanupAttempts === 1 ? '' : 's'}` : ''}${l.lastCleanupError ? ` — ${l.lastCleanupError}` : ''}`,
    `retained to  ${l.retainUntil ? ago(l.retainUntil) : '-'}`,
    `driver       ${l.driver ?? '-'}${l.driverState ? ` ${JSON.stringify(l.driverState)}` : ''}`,
    `resource     ${l.resourceId ?? '-'}`,
    `metadata     ${JSON.stringify(l.metadata)}`,
  ].join('\n');
}

/** How long `run` and `runs log -f` keep trying to follow a log while the server is away. */
const FOLLOW_PATIENCE_MS = 60_000;

async function followRun(client: CliClient, run: { id: string }, opts: { quiet: boolean }): Promise<HeartbeatRun> {
  const say = (line: string) => !opts.quiet && process.stderr.write(`${paint('dim', '▸')} ${line}\n`);
  let shownEnv = false;
  let after = 0;
  let c = client;
  const showEnv = (r: HeartbeatRun) => {
    const pe = r.contextSnapshot?.paperclipEnvironment as Json | undefined;
    if (shownEnv || !pe) return;
    shownEnv = true;
    const from = pe.warm === true ? ' · warm (a ready pool member)' : pe.warm === false ? ' · cold (the pool had none ready)' : pe.reused === true ? ' · reused (the container an earlier run kept)' : '';
    say(`environment ${pe.name} (${pe.driver}) · lease ${pe.leaseId} acquired, fence ${pe.fence}${from}${pe.cwd ? ` · cwd ${pe.cwd}` : ''}`);
  };
  let lastProgress = Date.now();
  let warned = false;
  let saidRunning = false;
  for (let attempt = 0; ; attempt++) {
    try {
      for await (const ev of c.logEvents(run.id, { after })) {
        lastProgress = Date.now();
        attempt = 0;
        if (ev.event === 'log') {
          const data = ev.data;
          after = data.seq;
          if (!shownEnv) showEnv((await c.GET('/api/heartbeat-runs/{id}', { params: { path: { id: run.id } } })).data);
          if (opts.quiet) continue;
          if (data.stream === 'stdout') process.stdout.write(data.chunk);
          else if (data.stream === 'stderr') process.stderr.write(data.chunk);
          else process.stderr.write(paint('dim', `[berth] ${data.chunk}`));
        } else if (ev.event === 'status') {
          const data = ev.data;
          if (data.status === 'running' && !saidRunning) say(`running on ${data.hostname ?? 'a server'}`);
          if (data.status === 'running') saidRunning = true;
          showEnv(data);
        } else if (ev.event === 'end') {
          showEnv(ev.data);
          return ev.data;
        }
      }
      throw new NoServerError('the log stream ended before the run did');
    } catch (err) {
      // The server may be restarting (a new port, even): follow again from the last line seen.
      const retryable = err instanceof NoServerError || (err instanceof ApiError ? [502, 503, 504].includes(err.status) : (err as Error).name !== 'SyntaxError');
      if (!retryable || Date.now() - lastProgress > FOLLOW_PATIENCE_MS) throw err;
      if (!warned) {
        say(`lost the server (${(err as Error).message}); following again when it is back`);
        warned = true;
      }
      await new Promise((r) => setTimeout(r, Math.min(250 * 2 ** attempt, 3000)));
      c = await c.withUrl(process.env.BERTH_URL || readServerInfo()?.url || c.url);
    }
  }
}

export function buildProgram(): Command {
  const program = new Command('berth')
    .description('Berth: environments, leases and heartbeat runs for AI agents')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ outputError: (str, write) => write(str) });

  program
    .command('serve')
    .description('Run the server: HTTP API, scheduler and sweeps (PGlite in BERTH_HOME, or DATABASE_URL)')
    .option('--port <port>', 'port to listen on (BERTH_PORT, default 3710; 0 picks a free one)')
    .option('--host <host>', 'address to listen on (BERTH_HOST, default 127.0.0.1)')
    .option('--public-url <url>', 'the http(s) URL agents reach this server at, their PAPERCLIP_API_URL (BERTH_PUBLIC_URL; default the bound address)')
    .option('--max-runs <n>', 'runs this server executes at once (default 16)')
    .option('--grace <seconds>', 'on SIGTERM, how long running runs get before they are cancelled (default 10)')
    .option('--demo', 'make sure a Demo company and a "demo" agent exist, save the CLI credentials, and run the demo once')
    .action(async (o: { port?: string; host?: string; publicUrl?: string; maxRuns?: string; grace?: string; demo?: boolean }) => {
      const { runServe } = await import('./serve-command.js');
      await runServe({
        port: intOption(o.port ?? process.env.BERTH_PORT ?? '3710', '--port'),
        host: o.host ?? process.env.BERTH_HOST ?? '127.0.0.1',
        ...(o.publicUrl !== undefined ? { publicUrl: o.publicUrl } : {}),
        ...(o.maxRuns ? { maxRuns: intOption(o.maxRuns, '--max-runs') } : {}),
        graceMs: Number(o.grace ?? process.env.BERTH_STOP_GRACE ?? 10) * 1000,
        demo: o.demo === true,
      });
    });

  const company = program.command('company').description('Companies (tenants); needs the admin key');
  company
    .command('create <name>')
    .description('Create a company; prints its API key once')
    .option('--json', 'print JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const { data: res } = await (await adminClient()).POST('/api/companies', { body: { name } });
      print(res, !!o.json, () =>
        [`company ${res.company.name}  ${res.company.id}`, `API key (shown once; keep it): ${res.apiKey}`, `use it: export BERTH_API_KEY=${res.apiKey}`].join('\n'),
      );
    });
  company
    .command('list')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { data: list } = await (await adminClient()).GET('/api/companies');
      print(list, !!o.json, () => table(['NAME', 'ID', 'CREATED'], list.map((c) => [c.name, c.id, ago(c.createdAt)])));
    });

  const env = program.command('env').description('Environments: where runs execute');
  env
    .command('list')
    .option('--status <status>', 'active or archived')
    .option('--driver <driver>', 'only this driver kind (`berth env drivers` lists them)')
    .option('--json', 'print JSON')
    .action(async (o: { status?: string; driver?: string; json?: boolean }) => {
      const client = await companyClient();
      const { data: list } = await client.GET('/api/companies/{companyId}/environments', {
        params: { path: { companyId: await companyId(client) }, query: { status: asTyped(o.status), driver: asTyped(o.driver) } },
      });
      print(list, !!o.json, () =>
        table(
          ['NAME', 'DRIVER', 'STATUS', 'CAPACITY', 'LAST PROBE', 'UPDATED', 'ID'],
          list.map((e) => [e.name, e.driver, status(e.status), String(e.capacity ?? '-'), e.lastProbe ? `${e.lastProbe.ok ? 'ok' : 'failed'} ${ago(e.lastProbe.at)}` : 'never', ago(e.updatedAt), e.id]),
        ),
      );
    });
  env
    .command('drivers')
    .description('The drivers the server knows: what each environment kind is, and whether this server runs it')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const { data: list } = await (await companyClient()).GET('/api/drivers');
      const caps = (c: Json) => Object.entries(c).filter(([, v]) => v === true).map(([k]) => k).join(',') || '-';
      print(list, !!o.json, () =>
        table(
          ['KIND', 'WHAT', 'RUNS HERE', 'ADAPTERS', 'CAPABILITIES'],
          list.map((d) => [String(d.kind), String(d.title), d.runs ? 'yes' : 'no', (d.adapters as string[]).join(',') || '-', caps(d.capabilities as Json)]),
        ),
      );
    });
  env
    .command('create <name>')
    .description('Create an environment')
    .requiredOption('--driver <driver>', 'driver kind (`berth env drivers` lists what the server knows)')
    .option('--description <text>')
    .option('--capacity <n>', 'max concurrent active leases (default unlimited)')
    .option('--env <NAME=VALUE>', 'a variable for every run here (repeatable)', collect)
    .option('--config <json>', 'the whole driver config as JSON')
    .option('--host <host>', 'ssh: host')
    .option('--ssh-port <port>', 'ssh: port (default 22)')
    .option('--user <name>', 'ssh: username')
    .option('--workspace <path>', 'ssh: remote workspace path')
    .option('--key-file <path>', 'ssh: private key file')
    .option('--known-hosts-file <path>', 'ssh: known_hosts file')
    .option('--no-strict-host-key-checking', 'ssh: accept any host key')
    .option('--json', 'print JSON')
    .action(async (name: string, o: Json) => {
      let config: Json = {};
      if (o.config) {
        try {
          config = JSON.parse(o.config as string) as Json;
        } catch {
          throw new UsageError('--config must be JSON');
        }
      }
      if (o.driver === 'ssh') {
        if (o.host) config.host = o.host;
        if (o.sshPort) config.port = intOption(o.sshPort as string, '--ssh-port');
        if (o.user) config.username = o.user;
        if (o.workspace) config.remoteWorkspacePath = o.workspace;
        if (o.keyFile) config.privateKey = readFileSync(o.keyFile as string, 'utf8');
        if (o.knownHostsFile) config.knownHosts = readFileSync(o.knownHostsFile as string, 'utf8');
        if (o.strictHostKeyChecking === false) config.strictHostKeyChecking = false;
      }
      const client = await companyClient();
      const body: Body<'post', '/api/companies/{companyId}/environments'> = { name, driver: asTyped(o.driver), config: config as never, envVars: keyValues(o.env as string[], '--env') };
      if (o.description) body.description = o.description;
      if (o.capacity !== undefined) body.capacity = intOption(o.capacity as string, '--capacity');
      const { data: created } = await client.POST('/api/companies/{companyId}/environments', { params: { path: { companyId: await companyId(client) } }, body });
      print(created, !!o.json, () => showEnvironment(created));
    });
  env
    .command('show <env>')
    .description('One environment, by name or id')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const e = await environmentByRef(await companyClient(), ref);
      print(e, !!o.json, () => showEnvironment(e));
    });
  env
    .command('update <env>')
    .description('Change an environment: only what is given changes (config replaces the whole driver config)')
    .option('--description <text>')
    .option('--capacity <n>', 'max concurrent active leases; "none" for unlimited')
    .option('--config <json>', 'the whole driver config as JSON (secret fields left out keep their value)')
    .option('--metadata <json>', 'metadata as JSON, e.g. {"leasePolicy":"reuse_by_environment","retentionSeconds":3600}')
    .option('--pool <json>', 'a warm pool as JSON, e.g. {"minReady":2,"maxReady":4}; "none" to remove it')
    .option('--env <NAME=VALUE>', 'replaces the variables for every run here (repeatable)', collect)
    .option('--json', 'print JSON')
    .action(async (ref: string, o: Json) => {
      const json = (v: unknown, flag: string): Json => {
        try {
          const parsed = JSON.parse(v as string) as unknown;
          if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error();
          return parsed as Json;
        } catch {
          throw new UsageError(`${flag} must be a JSON object`);
        }
      };
      const body: Json = {};
      if (o.description !== undefined) body.description = o.description;
      if (o.capacity !== undefined) body.capacity = o.capacity === 'none' ? null : intOption(o.capacity as string, '--capacity');
      if (o.config !== undefined) body.config = json(o.config, '--config');
      if (o.metadata !== undefined) body.metadata = json(o.metadata, '--metadata');
      if (o.pool !== undefined) body.pool = o.pool === 'none' ? null : json(o.pool, '--pool');
      if (o.env !== undefined) body.envVars = keyValues(o.env as string[], '--env');
      if (Object.keys(body).length === 0) throw new UsageError('nothing to change: give --config, --metadata, --pool, --capacity, --description or --env');
      const client = await companyClient();
      const e = await environmentByRef(client, ref);
      const { data: updated } = await client.PATCH('/api/environments/{id}', { params: { path: { id: e.id } }, body: body as never });
      print(updated, !!o.json, () => showEnvironment(updated));
    });
  env
    .command('probe <env>')
    .description('Is it reachable and usable now?')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const client = await companyClient();
      const e = await environmentByRef(client, ref);
      const { data: probe } = await client.POST('/api/environments/{id}/probe', { params: { path: { id: e.id } } });
      print(probe, !!o.json, () => `${e.name}: ${probe.ok ? paint('green', 'ok') : paint('red', 'failed')} in ${probe.latencyMs} ms${probe.error ? ` — ${probe.error}` : ''}\n${details(probe.details)}`);
      if (!probe.ok) process.exitCode = 1;
    });
  env
    .command('archive <env>')
    .description('Take no new leases')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const client = await companyClient();
      const { data: e } = await client.POST('/api/environments/{id}/archive', { params: { path: { id: (await environmentByRef(client, ref)).id } } });
      print(e, !!o.json, () => `archived ${e.name}`);
    });
  env
    .command('delete <env>')
    .description("Delete (refused for the company's Local, or while leases are not terminal)")
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const client = await companyClient();
      const { data: e } = await client.DELETE('/api/environments/{id}', { params: { path: { id: (await environmentByRef(client, ref)).id } } });
      print(e, !!o.json, () => `deleted ${e.name}`);
    });

  const lease = program.command('lease').description('Leases: runs’ claims on environments');
  lease
    .command('list <env>')
    .description('Leases of an environment, most recently used first')
    .option('--status <status>')
    .option('--limit <n>', 'how many (default 50)')
    .option('--cursor <cursor>', 'the next page, as printed after a full page')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { status?: string; limit?: string; cursor?: string; json?: boolean }) => {
      const client = await companyClient();
      const e = await environmentByRef(client, ref);
      const res = await client.GET('/api/environments/{id}/leases', {
        params: { path: { id: e.id }, query: { status: asTyped(o.status), limit: asTyped(o.limit), cursor: asTyped(o.cursor) } },
      });
      const next = res.response.headers.get('x-next-cursor');
      print(res.data, !!o.json, () =>
        table(
          ['ID', 'STATUS', 'POLICY', 'FENCE', 'RUN', 'ACQUIRED', 'ENDED', 'CLEANUP'],
          res.data.map((l) => [l.id, status(l.status), l.leasePolicy, String(l.fence), l.heartbeatRunId ?? '-', ago(l.acquiredAt), l.releasedAt ? ago(l.releasedAt) : '-', l.cleanupStatus ?? '-']),
        ) + (next ? `\nmore: berth lease list ${ref} --cursor ${next}` : ''),
      );
    });
  lease
    .command('show <lease>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }) => {
      const { data: l } = await (await companyClient()).GET('/api/environment-leases/{leaseId}', { params: { path: { leaseId: id } } });
      print(l, !!o.json, () => showLease(l));
    });
  lease
    .command('release <lease>')
    .description('End a lease now, as its holder would (with its current fence)')
    .addOption(new Option('--status <status>', 'final status').choices([...TERMINAL_LEASE_STATUSES]).default('released'))
    .option('--reason <text>', 'failure reason')
    .option('--no-cleanup', "leave the lease's resources as they are (by default what its driver made is cleaned up)")
    .option('--json', 'print JSON')
    .action(async (id: string, o: { status: string; reason?: string; cleanup: boolean; json?: boolean }) => {
      const client = await companyClient();
      const { data: current } = await client.GET('/api/environment-leases/{leaseId}', { params: { path: { leaseId: id } } });
      const { data: res } = await client.POST('/api/environment-leases/{leaseId}/release', {
        params: { path: { leaseId: current.id } },
        body: {
          fence: current.fence,
          status: asTyped(o.status),
          ...(o.reason ? { failureReason: o.reason } : {}),
          ...(o.cleanup ? {} : { cleanupStatus: 'skipped' as const }),
        },
      });
      const cleanup = res.lease.cleanupStatus ? ` · cleanup ${res.lease.cleanupStatus}` : '';
      print(res, !!o.json, () => (res.changed ? `lease ${current.id} is now ${status(res.lease.status)}${cleanup}` : `lease ${current.id} had already ended: ${status(res.lease.status)}`));
    });

  lease
    .command('acquire <env>')
    .description('Acquire a lease on an environment (with --provision, its workspace made for it: what exec and cp work in)')
    .option('--ttl <seconds>', 'expire unless renewed within this (default 600)', '600')
    .option('--provision', "make the environment's resource (a workspace, a container...) for the lease")
    .option('--key <key>', 'idempotency key: the same key gives the same lease')
    .option('--json', 'print JSON')
    .action(async (ref: string, o: { ttl: string; provision?: boolean; key?: string; json?: boolean }) => {
      const client = await companyClient();
      const e = await environmentByRef(client, ref);
      const ttl = Number(o.ttl);
      if (!Number.isFinite(ttl) || ttl <= 0) throw new UsageError(`--ttl must be a number of seconds greater than 0, not ${o.ttl.slice(0, 50)}`);
      const res = await client.acquireLease(e.id, { ttlSeconds: ttl, ...(o.provision ? { provision: true } : {}), ...(o.key ? { idempotencyKey: o.key } : {}) });
      const ws = (res.lease.driverState as Json | null)?.cwd;
      print(res, !!o.json, () => `lease ${res.lease.id} on ${e.name} · fence ${res.lease.fence}${res.created ? '' : ' (an earlier acquire\'s)'}${ws ? ` · workspace ${ws}` : ''}`);
    });
  lease
    .command('exec <lease> <command...>')
    .description('Run a command in a provisioned lease\'s workspace, its output as it comes; exits with its exit code (124 on timeout, 128+n on signal n). Put -- before the command')
    .option('--cwd <path>', 'a directory inside the workspace, relative to it')
    .option('--env <NAME=value...>', 'variables for the command')
    .option('--timeout <seconds>', 'SIGTERM after this, SIGKILL 5 s later (default 60)', '60')
    .option('--json', 'buffer the output and print the result as JSON')
    .action(async (id: string, command: string[], o: { cwd?: string; env?: string[]; timeout: string; json?: boolean }) => {
      const client = await companyClient();
      const env: Record<string, string> = {};
      for (const kv of o.env ?? []) {
        const at = kv.indexOf('=');
        if (at <= 0) throw new UsageError(`--env takes NAME=value, not ${kv.slice(0, 50)}`);
        env[kv.slice(0, at)] = kv.slice(at + 1);
      }
      const { data: current } = await client.GET('/api/environment-leases/{leaseId}', { params: { path: { leaseId: id } } });
      const body = { fence: current.fence, command, timeoutSeconds: Number(o.timeout), ...(o.cwd ? { cwd: o.cwd } : {}), ...(o.env ? { env } : {}) };
      const ended = o.json
        ? await client.exec(current.id, body)
        : await client.exec(current.id, body, {
            onOutput: (stream, text) =>
              new Promise<void>((resolve) => (process[stream].write(text) ? resolve() : process[stream].once('drain', () => resolve()))),
          });
      if (o.json) process.stdout.write(`${JSON.stringify(ended, null, 2)}\n`);
      if (ended.error) process.stderr.write(`berth: ${ended.error}\n`);
      if (ended.timedOut) process.stderr.write(`berth: timed out after ${o.timeout}s\n`);
      const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 };
      process.exitCode = ended.timedOut ? 124 : ended.exitCode ?? (ended.signal ? 128 + (SIGNALS[ended.signal] ?? 0) : 127);
    });
  lease
    .command('cp <from> <to>')
    .description('Copy files into or out of a provisioned lease\'s workspace: LEASE:path names the workspace side (cp ./src LEASE:app, cp LEASE:out ./here)')
    .option('--json', 'print JSON')
    .action(async (from: string, to: string, o: { json?: boolean }) => {
      const remote = (v: string) => {
        const m = /^([0-9a-f-]{36}):(.*)$/i.exec(v);
        return m ? { lease: m[1]!, path: m[2]! } : null;
      };
      const src = remote(from);
      const dst = remote(to);
      if ((src === null) === (dst === null)) throw new UsageError('one side must be LEASE:path (the lease\'s id, a colon, a path in its workspace) and the other a local path');
      const client = await companyClient();
      const { data: current } = await client.GET('/api/environment-leases/{leaseId}', { params: { path: { leaseId: (src ?? dst)!.lease } } });
      const tar = await import('tar');
      const { basename, dirname, resolve } = await import('node:path');
      if (dst) {
        const { existsSync } = await import('node:fs');
        const local = resolve(from);
        if (!existsSync(local)) throw new UsageError(`${from}: no such file or directory`);
        const parts: Buffer[] = [];
        for await (const chunk of tar.c({ cwd: dirname(local), portable: true }, [basename(local)]) as AsyncIterable<Buffer>) parts.push(Buffer.from(chunk));
        const res = await client.putFiles(current.id, { fence: current.fence, ...(dst.path ? { path: dst.path } : {}) }, new Uint8Array(Buffer.concat(parts)));
        print(res, !!o.json, () => `copied ${res.files} file(s), ${res.directories} dir(s), ${res.links} link(s), ${res.bytes} bytes into ${current.id}:${res.path || '.'}`);
        return;
      }
      const { mkdirSync } = await import('node:fs');
      const { Readable } = await import('node:stream');
      const { pipeline } = await import('node:stream/promises');
      const into = resolve(to);
      mkdirSync(into, { recursive: true });
      const stream = await client.getFiles(current.id, { fence: current.fence, ...(src!.path ? { path: src!.path } : {}) });
      let files = 0;
      await pipeline(Readable.fromWeb(stream as never), tar.x({ cwd: into, strict: true, onReadEntry: () => void files++ }));
      print({ into, entries: files }, !!o.json, () => `copied ${files} entr${files === 1 ? 'y' : 'ies'} from ${current.id}:${src!.path || '.'} into ${into}`);
    });

  const agent = program.command('agent').description('Agents: who runs');
  agent
    .command('create <name> [command...]')
    .description('Create an agent with the process adapter (or http with --url); the command may follow `--`: berth agent create NAME -- sh -c "echo hi"')
    .option('--command <command>', 'the program to run')
    .option('--arg <arg>', 'an argument (repeatable)', collect)
    .option('--cwd <path>', 'absolute working directory (default: a fresh workspace per lease)')
    .option('--env <NAME=VALUE>', 'a variable for its process (repeatable)', collect)
    .option('--timeout <seconds>', 'stop a run after this long (default 3600)')
    .option('--grace <seconds>', 'between SIGTERM and SIGKILL (default 10)')
    .option('--url <url>', 'http adapter: the URL to call instead of a command')
    .option('--environment <env>', 'default environment, by name or id (default: Local)')
    .option('--max-runs <n>', 'runs of this agent at once (default 1)')
    .option('--interval <seconds>', 'run on a timer every this many seconds')
    .option('--json', 'print JSON')
    .action(async (name: string, argv: string[], o: Json) => {
      const client = await companyClient();
      if (argv.length > 0) {
        if (o.command || o.arg) throw new UsageError('give the command after -- or with --command/--arg, not both');
        o.command = argv[0];
        o.arg = argv.slice(1);
      }
      if (!o.command === !o.url) throw new UsageError('give --command (process adapter) or --url (http adapter)');
      const adapterConfig: Json = o.url
        ? { url: o.url }
        : {
            command: o.command,
            args: o.arg ?? [],
            env: keyValues(o.env as string[], '--env'),
            ...(o.cwd ? { cwd: o.cwd } : {}),
            ...(o.timeout ? { timeoutSec: Number(o.timeout) } : {}),
            ...(o.grace ? { graceSec: Number(o.grace) } : {}),
          };
      const body: Body<'post', '/api/companies/{companyId}/agents'> = { name, adapterType: o.url ? 'http' : 'process', adapterConfig: adapterConfig as never };
      if (o.environment) body.defaultEnvironmentId = (await environmentByRef(client, o.environment as string)).id;
      if (o.maxRuns) body.maxConcurrentRuns = intOption(o.maxRuns as string, '--max-runs');
      if (o.interval) body.intervalSec = intOption(o.interval as string, '--interval');
      const { data: created } = await client.POST('/api/companies/{companyId}/agents', { params: { path: { companyId: await companyId(client) } }, body });
      print(created, !!o.json, () => `agent ${created.name}  ${created.id}`);
    });
  agent
    .command('list')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const client = await companyClient();
      const { data: list } = await client.GET('/api/companies/{companyId}/agents', { params: { path: { companyId: await companyId(client) } } });
      print(list, !!o.json, () =>
        table(
          ['NAME', 'ADAPTER', 'STATUS', 'RUNNING', 'MAX', 'COMMAND', 'ID'],
          list.map((a) => [a.name, a.adapterType, status(a.status), String(a.runningCount), String(a.maxConcurrentRuns), String(a.adapterConfig.command ?? a.adapterConfig.url ?? ''), a.id]),
        ),
      );
    });

  program
    .command('run <agent>')
    .description("Run an agent now: queue a run, follow its log to the end, exit with the run's outcome (0 succeeded, its exit code or 1 failed, 124 timed out, 130 cancelled)")
    .option('--no-follow', 'queue it and print its id without waiting')
    .option('--json', 'print the finished run as JSON (and no log)')
    .action(async (ref: string, o: { follow: boolean; json?: boolean }) => {
      const client = await companyClient();
      const a = await agentByRef(client, ref);
      const { data: queued } = await client.POST('/api/agents/{id}/wakeup', { params: { path: { id: a.id } }, body: { source: 'on_demand' } });
      if (!o.follow) {
        print(queued, !!o.json, () => queued.id as string);
        return;
      }
      if (!o.json) process.stderr.write(`${paint('dim', '▸')} run ${queued.id} of ${a.name} queued\n`);
      let cancelling = false;
      const onSigint = () => {
        if (cancelling) process.exit(130);
        cancelling = true;
        process.stderr.write(`\n${paint('dim', '▸')} cancelling run ${queued.id} (Ctrl-C again to stop waiting)\n`);
        void client.POST('/api/heartbeat-runs/{id}/cancel', { params: { path: { id: queued.id } } }).catch(() => {});
      };
      process.on('SIGINT', onSigint);
      const finished = await followRun(client, queued, { quiet: !!o.json });
      process.off('SIGINT', onSigint);
      if (o.json) {
        print(finished, true, () => '');
      } else {
        const say = (line: string) => process.stderr.write(`${paint('dim', '▸')} ${line}\n`);
        if (finished.leaseId) {
          // The server may be going away (it cancelled this run because it is stopping).
          const l = await client
            .GET('/api/environment-leases/{leaseId}', { params: { path: { leaseId: finished.leaseId } } })
            .then((r) => r.data)
            .catch(() => null);
          if (l) say(`lease ${l.id} ${status(l.status)}${l.cleanupStatus ? ` · cleanup ${l.cleanupStatus}` : ''}`);
        }
        const outcome = finished.error ? ` — ${finished.error}` : finished.exitCode !== null ? ` (exit ${finished.exitCode})` : '';
        say(`run ${finished.id} ${status(finished.status)} in ${duration(finished)}${outcome}`);
      }
      process.exitCode = exitCodeForRun(finished);
    });

  const runs = program.command('runs').description('Heartbeat runs');
  runs
    .command('list')
    .option('--agent <agent>', 'only this agent (name or id)')
    .option('--status <status>')
    .option('--limit <n>', 'how many per page (default 50, at most 500)')
    .option('--cursor <cursor>', 'the next page (the cursor printed after a full page)')
    .option('--all', 'every page, to the end')
    .option('--json', 'print JSON')
    .action(async (o: { agent?: string; status?: string; limit?: string; cursor?: string; all?: boolean; json?: boolean }) => {
      const client = await companyClient();
      const cid = await companyId(client);
      const { data: agents } = await client.GET('/api/companies/{companyId}/agents', { params: { path: { companyId: cid } } });
      const agentId = o.agent ? (await agentByRef(client, o.agent)).id : undefined;
      const list: HeartbeatRun[] = [];
      let cursor: string | undefined = o.cursor;
      for (;;) {
        const res = await client.GET('/api/companies/{companyId}/heartbeat-runs', {
          params: { path: { companyId: cid }, query: { agentId, status: asTyped(o.status), limit: asTyped(o.limit), cursor } },
        });
        list.push(...res.data);
        cursor = res.response.headers.get('x-next-cursor') ?? undefined;
        if (!o.all || !cursor) break;
      }
      const names = new Map(agents.map((a) => [a.id, a.name]));
      print(list, !!o.json, () =>
        table(
          ['ID', 'AGENT', 'STATUS', 'SOURCE', 'CREATED', 'DURATION', 'RESULT'],
          list.map((r) => [r.id, names.get(r.agentId) ?? r.agentId, status(r.status), r.invocationSource, ago(r.createdAt), duration(r), runResult(r)]),
        ) + (cursor ? `\nmore: berth runs list --cursor ${cursor}${o.agent ? ` --agent ${o.agent}` : ''}${o.status ? ` --status ${o.status}` : ''} (or --all)` : ''),
      );
    });
  runs
    .command('show <run>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }) => {
      const { data: r } = await (await companyClient()).GET('/api/heartbeat-runs/{id}', { params: { path: { id } } });
      print(r, !!o.json, () => JSON.stringify(r, null, 2));
    });
  runs
    .command('cancel <run>')
    .option('--json', 'print JSON')
    .action(async (id: string, o: { json?: boolean }) => {
      const { data: r } = await (await companyClient()).POST('/api/heartbeat-runs/{id}/cancel', { params: { path: { id } } });
      print(r, !!o.json, () => `run ${r.id}: ${status(r.status)}${r.cancelRequestedAt && r.status === 'running' ? ' (cancel requested)' : ''}`);
    });
  runs
    .command('log <run>')
    .option('-f, --follow', 'follow until the run ends')
    .action(async (id: string, o: { follow?: boolean }) => {
      const client = await companyClient();
      if (o.follow) {
        const finished = await followRun(client, { id }, { quiet: false });
        process.exitCode = exitCodeForRun(finished);
        return;
      }
      let after = 0;
      for (;;) {
        const { data: page } = await client.GET('/api/heartbeat-runs/{id}/log', { params: { path: { id }, query: { after } } });
        if (!('chunks' in page)) throw new Error('the server answered a log read by seq with a read by byte offset');
        for (const ch of page.chunks) (ch.stream === 'stderr' || ch.stream === 'system' ? process.stderr : process.stdout).write(ch.chunk);
        if (page.chunks.length < 1000) break;
        after = page.lastSeq;
      }
    });

  program
    .command('activity')
    .description('The audit log, newest first')
    .option('--action <action>', 'e.g. environment.lease_acquired')
    .option('--entity-type <type>', 'e.g. environment_lease')
    .option('--entity <id>', 'one entity')
    .option('--run <id>', 'one run')
    .option('--limit <n>', 'how many (default 50)')
    .option('--before <cursor>', 'older than this (the cursor printed after a full page)')
    .option('--json', 'print JSON')
    .action(async (o: { action?: string; entityType?: string; entity?: string; run?: string; limit?: string; before?: string; json?: boolean }) => {
      const client = await companyClient();
      const res = await client.GET('/api/companies/{companyId}/activity', {
        params: {
          path: { companyId: await companyId(client) },
          query: { action: o.action, entityType: o.entityType, entityId: o.entity, runId: o.run, limit: asTyped(o.limit), before: asTyped(o.before) },
        },
      });
      const next = res.response.headers.get('x-next-cursor');
      print(res.data, !!o.json, () =>
        table(
          ['WHEN', 'ACTOR', 'ACTION', 'ENTITY', 'DETAILS'],
          res.data.map((a) => [ago(a.createdAt), a.actorId ? `${a.actorType}:${String(a.actorId).slice(0, 8)}` : a.actorType, a.action, `${a.entityType}:${String(a.entityId).slice(0, 8)}`, details(a.details)]),
        ) + (next ? `\nmore: berth activity --before ${next}` : ''),
      );
    });
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    if (err instanceof ApiError) {
      process.stderr.write(`berth: ${err.message}${err.status ? ` (HTTP ${err.status} ${err.code})` : ''}\n`);
      for (const f of err.fields ?? []) process.stderr.write(`  ${f.path}: ${f.message}\n`);
    } else if (err instanceof NoServerError || err instanceof UsageError) {
      process.stderr.write(`berth: ${err.message}\n`);
    } else {
      process.stderr.write(`berth: ${(err as Error).message ?? String(err)}\n`);
    }
    process.exitCode = 1;
  }
}
