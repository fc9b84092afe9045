// The Berth dashboard: a few views over the JSON API, no framework and no build.
// The API key lives in sessionStorage (this browser tab's session only); live
// updates come from the company's activity stream (server-sent events read with
// fetch, so the key travels in a header, never in a URL).

const $main = () => document.getElementById('main');
const session = {
  get key() { return sessionStorage.getItem('berth.key'); },
  get company() { return JSON.parse(sessionStorage.getItem('berth.company') || 'null'); },
  save(key, company) { sessionStorage.setItem('berth.key', key); sessionStorage.setItem('berth.company', JSON.stringify(company)); },
  clear() { sessionStorage.removeItem('berth.key'); sessionStorage.removeItem('berth.company'); },
};

// ---------- html, time and format helpers ----------
const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ESC[c]);
class Raw { constructor(s) { this.s = s; } toString() { return this.s; } }
const raw = (s) => new Raw(s);
/** Tagged template: interpolated values are escaped unless raw(); arrays are joined. */
function html(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    const part = Array.isArray(v) ? v.map((x) => (x instanceof Raw ? x.s : esc(x))).join('') : v instanceof Raw ? v.s : esc(v);
    out += part + strings[i + 1];
  });
  return raw(out);
}
const badge = (s) => html`<span class="badge s-${s}">${s}</span>`;
function ago(t) {
  if (!t) return '-';
  const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  const a = Math.abs(s);
  const txt = a < 60 ? `${a}s` : a < 3600 ? `${Math.round(a / 60)}m` : a < 86400 ? `${Math.round(a / 3600)}h` : `${Math.round(a / 86400)}d`;
  return s >= 0 ? `${txt} ago` : `in ${txt}`;
}
function duration(run) {
  if (!run.startedAt) return '-';
  const ms = (run.finishedAt ? new Date(run.finishedAt) : new Date()) - new Date(run.startedAt);
  return ms < 10000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms / 1000)} s`;
}
const short = (id) => (id ? String(id).slice(0, 8) : '-');
const TERMINAL_RUN = ['succeeded', 'failed', 'cancelled', 'timed_out'];

// ---------- the API ----------
class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.fields = body?.error?.fields ?? [];
    this.details = body?.error?.details;
  }
}
async function api(method, path, body, key = session.key) {
  const headers = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (res.status === 401 && key === session.key) { signOut('Your key is no longer accepted; sign in again.'); }
  if (!res.ok) throw new ApiError(res.status, data);
  return { data, headers: res.headers };
}
const get = async (path) => (await api('GET', path)).data;
const cpath = (rest) => `/api/companies/${session.company.id}${rest}`;

/** Server-sent events of a GET, read with fetch; returns a function that stops it. */
function follow(path, onEvent, onEnd) {
  const ctrl = new AbortController();
  let status = 0;
  (async () => {
    const res = await fetch(path, { headers: { authorization: `Bearer ${session.key}`, accept: 'text/event-stream' }, signal: ctrl.signal });
    status = res.status;
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (data.length) onEvent(event, JSON.parse(data.join('\n')));
      }
    }
  })().catch((err) => { if (err.name !== 'AbortError') console.warn('stream ended', err); }).finally(() => onEnd?.({ status, aborted: ctrl.signal.aborted }));
  return () => ctrl.abort();
}

// ---------- live updates: one activity stream per signed-in tab ----------
let stopLive = null;
let onActivity = null; // the current view's listener
let lastActivityId = null;
function startLive(attempt = 0) {
  stopLive?.();
  const dot = document.getElementById('live');
  const query = lastActivityId === null ? '' : `?after=${lastActivityId}`;
  stopLive = follow(cpath(`/events${query}`), (event, row) => {
    if (event === 'ready') { dot.hidden = false; attempt = 0; if (lastActivityId === null) lastActivityId = row.after; }
    if (event === 'activity') { lastActivityId = row.id; onActivity?.(row); }
  }, ({ status, aborted }) => {
    dot.hidden = true;
    if (aborted) return;
    stopLive = null;
    if (status === 401) { signOut('Your key is no longer accepted; sign in again.'); return; }
    // The server went away (a restart, the network): come back where the feed left off.
    if (session.key) setTimeout(() => { if (session.key && !stopLive) startLive(attempt + 1); }, Math.min(500 * 2 ** attempt, 10_000));
  });
}
function debounce(f, ms = 250) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); };
}

// ---------- views ----------
let cleanup = null; // what the current view must stop when another replaces it
let routeGen = 0; // bumped on every navigation: a view that finds it changed stops
const staleSince = (gen) => gen !== routeGen;
function show(content) { $main().innerHTML = String(content); }
function markReady(view, gen = routeGen) {
  if (staleSince(gen)) return;
  document.body.dataset.ready = view;
  window.__berthReady = { view, ms: performance.now() };
}

function signOut(message) {
  stopLive?.();
  stopLive = null;
  lastActivityId = null;
  session.clear();
  location.hash = '#/signin';
  if (message) sessionStorage.setItem('berth.flash', message);
}

async function viewSignIn() {
  const flash = sessionStorage.getItem('berth.flash');
  sessionStorage.removeItem('berth.flash');
  show(html`<div class="card signin"><h1>Sign in to Berth</h1>
    <p class="muted">Paste a company API key. It stays in this browser tab's session only.</p>
    ${flash ? html`<div class="banner error">${flash}</div>` : ''}
    <form id="signin"><p><input name="key" type="password" placeholder="bk_…" autocomplete="off" required></p>
    <div id="signin-error"></div><button class="primary" type="submit">Sign in</button></form></div>`);
  document.getElementById('signin').addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = new FormData(e.target).get('key').trim();
    try {
      const { data } = await api('GET', '/api/companies', undefined, key);
      if (data.length !== 1) throw new Error('this is not a company key (the admin key sees every company); use a company key');
      session.save(key, data[0]);
      location.hash = '#/environments';
    } catch (err) {
      document.getElementById('signin-error').innerHTML = String(html`<div class="banner error">${err.status === 401 ? 'That key is not accepted.' : err.message}</div>`);
    }
  });
  markReady('signin');
}

/** The drivers the server knows (GET /api/drivers): the form is built from their descriptors. */
let driverList = null;
async function drivers() {
  if (!driverList) driverList = await get('/api/drivers');
  return driverList;
}
const configFields = (d) => d.form.map((f) => ({ ...f, name: `config.${f.path}` }));
/** A driver with config but no form fields takes its config as JSON. */
const takesJson = (d) => d.form.length === 0 && Object.keys(d.configSchema?.properties ?? {}).length > 0;

function envForm(list) {
  const fields = (d) => [...configFields(d).map(({ name, label, type, placeholder }) => html`
    <label for="f-${name}">${label}</label><div data-field="${name}">${
      type === 'textarea' ? html`<textarea id="f-${name}" name="${name}"></textarea>`
      : type === 'checkbox' ? html`<input id="f-${name}" name="${name}" type="checkbox" checked>`
      : html`<input id="f-${name}" name="${name}" type="${type}" placeholder="${placeholder ?? ''}">`}</div>`),
    takesJson(d) ? html`<label for="f-config-${d.kind}">Config (JSON)</label><div data-field="config"><textarea id="f-config-${d.kind}" name="config-json-${d.kind}" placeholder="{}"></textarea></div>` : ''];
  const initial = list.some((d) => d.kind === 'ssh') ? 'ssh' : list[0]?.kind;
  return html`<form id="env-form" class="grid card" novalidate>
    <label for="f-name">Name</label><div data-field="name"><input id="f-name" name="name"></div>
    <label for="f-driver">Driver</label><div data-field="driver"><select id="f-driver" name="driver">
      ${list.map((d) => html`<option value="${d.kind}" ${d.kind === initial ? raw('selected') : ''}>${d.kind} — ${d.title}${d.runs ? '' : ' (no runs on this server)'}</option>`)}</select></div>
    <label for="f-description">Description</label><div data-field="description"><input id="f-description" name="description"></div>
    <label for="f-capacity">Capacity</label><div data-field="capacity"><input id="f-capacity" name="capacity" type="number" placeholder="unlimited"></div>
    ${list.map((d) => html`<div class="driver-fields" data-driver="${d.kind}" ${d.kind === initial ? '' : raw('hidden')}>${fields(d)}</div>`)}
    <span></span><div><div id="env-form-error"></div><button class="primary" type="submit">Create environment</button></div>
  </form>`;
}

function readEnvForm(form, list) {
  const fd = new FormData(form);
  const driver = fd.get('driver');
  const d = list.find((x) => x.kind === driver);
  const body = { name: fd.get('name'), driver, config: {} };
  if (fd.get('description')) body.description = fd.get('description');
  if (fd.get('capacity') !== '') body.capacity = Number(fd.get('capacity'));
  if (d && takesJson(d)) {
    const text = String(fd.get(`config-json-${d.kind}`) ?? '').trim();
    if (text) {
      try { body.config = JSON.parse(text); } catch { body.config = text; }
    }
  }
  for (const { name, type } of d ? configFields(d) : []) {
    const key = name.slice('config.'.length);
    if (type === 'checkbox') body.config[key] = form.querySelector(`[name="${name}"]`).checked;
    else if (fd.get(name) !== '' && fd.get(name) !== null) body.config[key] = type === 'number' ? Number(fd.get(name)) : fd.get(name);
  }
  return body;
}

/** Show the API's field messages next to their inputs (they come from the same zod schemas). */
function showFieldErrors(form, err, generalId) {
  form.querySelectorAll('.field-error').forEach((n) => n.remove());
  form.querySelectorAll('.invalid').forEach((n) => n.classList.remove('invalid'));
  const general = [];
  for (const f of err.fields ?? []) {
    const slot = form.querySelector(`[data-field="${CSS.escape(f.path)}"]`);
    if (slot && !slot.closest('[hidden]')) {
      slot.querySelector('input,select,textarea')?.classList.add('invalid');
      slot.insertAdjacentHTML('beforeend', String(html`<div class="field-error">${f.message}</div>`));
    } else general.push(`${f.path}: ${f.message}`);
  }
  const msg = general.length ? general.join('; ') : err.fields?.length ? '' : err.message;
  document.getElementById(generalId).innerHTML = msg ? String(html`<div class="banner error">${msg}</div>`) : '';
}

async function viewEnvironments() {
  const gen = routeGen;
  const render = async () => {
    const envs = await get(cpath('/environments'));
    const list = document.getElementById('env-list');
    if (!list || staleSince(gen)) return;
    list.innerHTML = String(html`<table><thead><tr><th>Name</th><th>Driver</th><th>Status</th><th>Capacity</th><th>Active leases</th><th>Last probe</th><th>Updated</th><th></th></tr></thead><tbody>
      ${envs.map((e) => html`<tr data-env="${e.id}" data-name="${e.name}">
        <td><a href="#/environments/${e.id}">${e.name}</a><div class="muted">${e.description ?? ''}</div></td>
        <td>${e.driver}</td><td>${badge(e.status)}</td><td>${e.capacity ?? 'unlimited'}</td><td class="active-leases">${e.activeLeases ?? 0}</td>
        <td>${e.lastProbe ? html`<span class="badge s-${e.lastProbe.ok ? 'succeeded' : 'failed'}">${e.lastProbe.ok ? 'ok' : 'failed'}</span> ${Math.round(e.lastProbe.latencyMs)} ms, ${ago(e.lastProbe.at)}${e.lastProbe.error ? html`<div class="muted">${e.lastProbe.error}</div>` : ''}` : html`<span class="muted">never</span>`}</td>
        <td>${ago(e.updatedAt)}</td>
        <td><div class="actions"><button data-act="probe">Probe</button>${e.status === 'active' ? html`<button data-act="archive">Archive</button>` : ''}<button data-act="delete" class="danger">Delete</button></div></td></tr>`)}
      </tbody></table>`);
  };
  const known = await drivers();
  if (staleSince(gen)) return;
  show(html`<h1>Environments</h1><div id="env-banner"></div><div id="env-list"></div><h2>New environment</h2>${envForm(known)}`);
  await render();
  if (staleSince(gen)) return;
  const banner = (cls, text) => { document.getElementById('env-banner').innerHTML = String(html`<div class="banner ${cls}">${text}</div>`); };
  document.getElementById('env-list').addEventListener('click', async (e) => {
    const button = e.target.closest('button[data-act]');
    if (!button) return;
    const row = button.closest('tr');
    const id = row.dataset.env;
    const act = button.dataset.act;
    if (act === 'delete' && !confirm(`Delete environment ${row.dataset.name}?`)) return;
    button.disabled = true;
    try {
      if (act === 'probe') {
        const p = (await api('POST', `/api/environments/${id}/probe`)).data;
        banner(p.ok ? 'ok' : 'error', `${row.dataset.name}: probe ${p.ok ? 'ok' : 'failed'} in ${Math.round(p.latencyMs)} ms${p.error ? ` — ${p.error}` : ''}`);
      } else if (act === 'archive') {
        await api('POST', `/api/environments/${id}/archive`);
        banner('ok', `${row.dataset.name} archived: it takes no new leases`);
      } else {
        await api('DELETE', `/api/environments/${id}`);
        banner('ok', `${row.dataset.name} deleted`);
      }
    } catch (err) {
      const reasons = err.details?.reasons;
      banner('error', reasons ? `Cannot delete ${row.dataset.name}: ${reasons.join('; ')}` : err.message);
    }
    await render();
  });
  const form = document.getElementById('env-form');
  const syncDriver = () => {
    const driver = form.querySelector('[name=driver]').value;
    form.querySelectorAll('.driver-fields').forEach((n) => { n.hidden = n.dataset.driver !== driver; });
  };
  form.querySelector('[name=driver]').addEventListener('change', syncDriver);
  form.addEventListener('reset', () => setTimeout(syncDriver));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const created = (await api('POST', cpath('/environments'), readEnvForm(form, known))).data;
      form.reset();
      showFieldErrors(form, { fields: [] }, 'env-form-error');
      banner('ok', `Created ${created.name}`);
      await render();
    } catch (err) {
      showFieldErrors(form, err, 'env-form-error');
    }
  });
  const refresh = debounce(render);
  onActivity = (row) => { if (row.entityType === 'environment' || row.entityType === 'environment_lease') refresh(); };
  markReady('environments', gen);
}

const STATUS_COLOUR = { active: '#16a34a', released: '#60a5fa', expired: '#9ca3af', failed: '#dc2626', retained: '#d97706', pending_cleanup: '#eab308' };

function timeline(leases) {
  if (leases.length === 0) return html`<p class="muted">No leases yet.</p>`;
  const now = Date.now();
  const start = Math.min(...leases.map((l) => new Date(l.acquiredAt).getTime()));
  const span = Math.max(now - start, 1000);
  const W = 1000, left = 10, right = 10, row = 14, top = 22;
  const x = (t) => left + ((t - start) / span) * (W - left - right);
  const H = top + leases.length * row + 6;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => start + f * span);
  const fmtTick = (t) => new Date(t).toLocaleTimeString();
  const bars = leases.map((l, i) => {
    const a = new Date(l.acquiredAt).getTime();
    const b = l.releasedAt ? new Date(l.releasedAt).getTime() : now;
    const tip = [`lease ${l.id}`, `status ${l.status}${l.releaseStatus ? ` (then ${l.releaseStatus})` : ''}`, `run ${l.heartbeatRunId ?? '-'}`, `fence ${l.fence}`, `policy ${l.leasePolicy}`,
      `acquired ${new Date(l.acquiredAt).toLocaleString()}`, `ended ${l.releasedAt ? new Date(l.releasedAt).toLocaleString() : '(still held)'}`,
      `failure ${l.failureReason ?? '-'}`, `cleanup ${l.cleanupStatus ?? '-'}${l.cleanupAttempts ? ` after ${l.cleanupAttempts} attempts` : ''}`].join('\n');
    return html`<rect class="bar" data-lease="${l.id}" data-status="${l.status}" x="${x(a).toFixed(1)}" y="${top + i * row}" width="${Math.max(3, x(b) - x(a)).toFixed(1)}" height="${row - 4}" fill="${STATUS_COLOUR[l.status] ?? '#6b7280'}"><title>${tip}</title></rect>`;
  });
  return html`<svg class="timeline" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" style="height:${Math.min(H, 600)}px">
    ${ticks.map((t) => html`<text class="axis" x="${Math.min(x(t), W - 60).toFixed(0)}" y="12">${fmtTick(t)}</text><line x1="${x(t)}" x2="${x(t)}" y1="16" y2="${H}" stroke="#eef0f3"/>`)}
    ${bars}</svg>
    <div class="legend">${Object.entries(STATUS_COLOUR).map(([s, c]) => html`<span><i style="background:${c}"></i>${s}</span>`)}</div>`;
}

/** A warm pool on the environment page: its config, and what it holds now. */
function poolFacts(p, st) {
  return html`<dt>Warm pool</dt><dd id="env-pool">min ${p.minReady} ready, max ${p.maxReady} idle, replaced after ${p.maxAgeSeconds} s${p.setup ? `, setup: ${p.setup.command}` : ''}</dd>
    <dt>Pool now</dt><dd id="env-pool-state">${st ? html`<span data-pool-size="${st.size}">${st.size} idle</span> (<span data-pool-ready="${st.ready}">${st.ready} ready</span>, ${st.provisioning} provisioning) · <span data-pool-claimed="${st.claimed}">${st.claimed} claimed</span> · <span data-pool-failures="${st.refillFailures}">${st.refillFailures} refill failure${st.refillFailures === 1 ? '' : 's'}</span>${st.lastError ? html` — last ${ago(st.lastErrorAt)}: ${st.lastError}` : ''}` : '-'}</dd>`;
}

async function viewEnvironment(id) {
  const gen = routeGen;
  show(html`<p><a href="#/environments">← Environments</a></p><div id="env-head"></div><h2>Lease timeline <span class="muted">(most recent 200; hover a bar)</span></h2><div id="env-timeline"></div><h2>Leases</h2><div id="env-leases"></div>`);
  const render = async () => {
    const [env, leases] = await Promise.all([get(`/api/environments/${id}`), get(`/api/environments/${id}/leases?limit=200`)]);
    if (!document.getElementById('env-head') || staleSince(gen)) return;
    document.getElementById('env-head').innerHTML = String(html`<h1>${env.name} ${badge(env.status)}</h1><div class="card"><dl class="facts">
      <dt>Driver</dt><dd>${env.driver}</dd><dt>Capacity</dt><dd>${env.capacity ?? 'unlimited'}</dd><dt>Active leases</dt><dd>${env.activeLeases}</dd>
      <dt>Config</dt><dd class="mono">${JSON.stringify(env.config)}</dd><dt>Env vars</dt><dd>${env.envVarNames.join(', ') || '-'}</dd>
      <dt>Last probe</dt><dd>${env.lastProbe ? `${env.lastProbe.ok ? 'ok' : 'failed'} ${Math.round(env.lastProbe.latencyMs)} ms, ${ago(env.lastProbe.at)}` : 'never'}</dd>
      ${env.pool ? poolFacts(env.pool, env.poolState) : ''}</dl></div>`);
    // Oldest at the bottom: the list is most recently used first, the timeline reads top-down newest first.
    document.getElementById('env-timeline').innerHTML = String(timeline(leases));
    document.getElementById('env-leases').innerHTML = String(html`<table><thead><tr><th>Lease</th><th>Status</th><th>Policy</th><th>Fence</th><th>Run</th><th>Acquired</th><th>Ended</th><th>Failure</th><th>Cleanup</th></tr></thead><tbody>
      ${leases.slice(0, 50).map((l) => html`<tr data-lease-row="${l.id}"><td class="mono">${short(l.id)}</td><td>${badge(l.status)}</td><td>${l.leasePolicy}</td><td>${l.fence}</td>
        <td class="mono">${l.heartbeatRunId ? html`<a href="#/runs/${l.heartbeatRunId}">${short(l.heartbeatRunId)}</a>` : '-'}</td><td>${ago(l.acquiredAt)}</td><td>${l.releasedAt ? ago(l.releasedAt) : '-'}</td>
        <td>${l.failureReason ?? ''}</td><td>${l.cleanupStatus ?? ''}</td></tr>`)}</tbody></table>`);
  };
  await render();
  if (staleSince(gen)) return;
  const refresh = debounce(render, 150);
  onActivity = (row) => { if (row.entityType === 'environment_lease' || row.entityId === id) refresh(); };
  markReady('environment', gen);
}

async function viewRuns() {
  const gen = routeGen;
  show(html`<h1>Runs</h1><h2>Agents</h2><div id="agents"></div><h2>Recent runs</h2><div id="runs-banner"></div><div id="runs"></div>`);
  const agents = await get(cpath('/agents'));
  if (staleSince(gen)) return;
  const names = new Map(agents.map((a) => [a.id, a.name]));
  document.getElementById('agents').innerHTML = String(agents.length === 0 ? html`<p class="muted">No agents yet (create one with <code>berth agent create</code> or the API).</p>`
    : html`<table><thead><tr><th>Agent</th><th>Adapter</th><th>Status</th><th>Running</th><th></th></tr></thead><tbody>${agents.map((a) => html`<tr data-agent="${a.id}">
      <td>${a.name}</td><td>${a.adapterType} <span class="muted mono">${a.adapterConfig.command ?? a.adapterConfig.url ?? ''}</span></td><td>${badge(a.status)}</td><td>${a.runningCount} / ${a.maxConcurrentRuns}</td>
      <td><button data-run-agent="${a.id}">Run now</button></td></tr>`)}</tbody></table>`);
  const render = async () => {
    const runs = await get(cpath('/heartbeat-runs?limit=100'));
    const el = document.getElementById('runs');
    if (!el || staleSince(gen)) return;
    el.innerHTML = String(html`<table><thead><tr><th>Run</th><th>Agent</th><th>Status</th><th>Source</th><th>Created</th><th>Duration</th><th>Outcome</th><th></th></tr></thead><tbody>
      ${runs.map((r) => html`<tr data-run="${r.id}" data-status="${r.status}"><td class="mono"><a href="#/runs/${r.id}">${short(r.id)}</a></td><td>${names.get(r.agentId) ?? short(r.agentId)}</td>
        <td>${badge(r.status)}</td><td>${r.invocationSource}</td><td>${ago(r.createdAt)}</td><td>${duration(r)}</td>
        <td>${r.error ?? (r.exitCode !== null ? `exit ${r.exitCode}` : '')}</td>
        <td>${TERMINAL_RUN.includes(r.status) ? '' : html`<button data-cancel="${r.id}" class="danger">Cancel</button>`}</td></tr>`)}</tbody></table>`);
  };
  await render();
  if (staleSince(gen)) return;
  $main().addEventListener('click', async (e) => {
    const run = e.target.closest('[data-run-agent]');
    const cancel = e.target.closest('[data-cancel]');
    try {
      if (run) {
        const queued = (await api('POST', `/api/agents/${run.dataset.runAgent}/wakeup`, { source: 'on_demand' })).data;
        location.hash = `#/runs/${queued.id}`;
      } else if (cancel) {
        cancel.disabled = true;
        await api('POST', `/api/heartbeat-runs/${cancel.dataset.cancel}/cancel`);
        await render();
      }
    } catch (err) {
      document.getElementById('runs-banner').innerHTML = String(html`<div class="banner error">${err.message}</div>`);
    }
  });
  const refresh = debounce(render);
  onActivity = (row) => { if (row.entityType === 'heartbeat_run') refresh(); };
  markReady('runs', gen);
}

async function viewRun(id) {
  const gen = routeGen;
  show(html`<p><a href="#/runs">← Runs</a></p><div id="run-head"></div><h2>Log</h2><pre class="log" id="log"></pre>`);
  const head = (r) => {
    const pe = r.contextSnapshot?.paperclipEnvironment;
    document.getElementById('run-head').innerHTML = String(html`<h1>Run <span class="mono">${short(r.id)}</span> <span id="run-status" data-status="${r.status}">${badge(r.status)}</span></h1>
      <div class="card"><dl class="facts"><dt>Run</dt><dd class="mono">${r.id}</dd><dt>Source</dt><dd>${r.invocationSource}</dd><dt>Created</dt><dd>${ago(r.createdAt)}</dd><dt>Duration</dt><dd>${duration(r)}</dd>
      <dt>Environment</dt><dd>${pe ? html`<a href="#/environments/${pe.id}">${pe.name}</a> (${pe.driver}) · lease <span class="mono">${short(pe.leaseId)}</span>, fence ${pe.fence}${pe.warm === true ? ' · warm (pool member)' : pe.warm === false ? ' · cold' : ''}` : '-'}</dd>
      <dt>Outcome</dt><dd>${r.error ?? (r.exitCode !== null ? `exit ${r.exitCode}` : '-')}</dd></dl>
      ${TERMINAL_RUN.includes(r.status) ? '' : html`<p><button id="cancel-run" class="danger">Cancel run</button></p>`}</div>`);
    document.getElementById('cancel-run')?.addEventListener('click', async (e) => {
      e.target.disabled = true;
      await api('POST', `/api/heartbeat-runs/${id}/cancel`).catch((err) => alert(err.message));
    });
  };
  const first = await get(`/api/heartbeat-runs/${id}`);
  if (staleSince(gen)) return;
  head(first);
  const log = document.getElementById('log');
  let shown = false;
  // Chunks are appended in batches: one layout per batch, not one per line.
  let pending = document.createDocumentFragment();
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (!pending.childNodes.length) return;
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.appendChild(pending);
    pending = document.createDocumentFragment();
    if (atBottom) log.scrollTop = log.scrollHeight;
  };
  cleanup = follow(`/api/heartbeat-runs/${id}/log?follow=true`, (event, data) => {
    if (event === 'log') {
      const span = document.createElement('span');
      span.className = data.stream;
      span.textContent = data.stream === 'system' ? `[berth] ${data.chunk}` : data.chunk;
      pending.appendChild(span);
      if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
    } else if (event === 'status' || event === 'end') {
      flush();
      head(data);
      // The stream sends the log so far before the first status: the page is ready with it.
      if (!shown) { shown = true; markReady('run', gen); }
    }
  });
}

const KNOWN_ACTIONS = ['environment.created', 'environment.updated', 'environment.archived', 'environment.deleted', 'environment.probed', 'environment.lease_acquired',
  'environment.lease_reacquired', 'environment.lease_released', 'environment.lease_expired', 'environment.lease_cleanup_failed', 'environment.lease_cleanup_succeeded',
  'heartbeat_run.queued', 'heartbeat_run.deferred', 'heartbeat_run.cancel_requested', 'heartbeat_run.finished', 'agent.created', 'agent.updated', 'agent.deleted',
  'api_key.created', 'api_key.revoked'];
const ENTITY_TYPES = ['environment', 'environment_lease', 'heartbeat_run', 'agent', 'api_key'];

async function viewActivity(params) {
  const gen = routeGen;
  const f = { action: params.get('action') ?? '', entityType: params.get('entityType') ?? '', entityId: params.get('entityId') ?? '', runId: params.get('runId') ?? '' };
  show(html`<h1>Activity</h1><form class="filters" id="filters">
    <label>Action<select name="action"><option value="">any</option>${KNOWN_ACTIONS.map((a) => html`<option ${a === f.action ? raw('selected') : ''}>${a}</option>`)}</select></label>
    <label>Entity<select name="entityType"><option value="">any</option>${ENTITY_TYPES.map((a) => html`<option ${a === f.entityType ? raw('selected') : ''}>${a}</option>`)}</select></label>
    <label>Entity id<input name="entityId" placeholder="environment, lease, run… id" value="${f.entityId}"></label>
    <label>Run<input name="runId" placeholder="run id" value="${f.runId}"></label><button type="submit">Filter</button></form>
    <div id="act-error"></div><table><thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Entity</th><th>Run</th><th>Details</th></tr></thead><tbody id="feed"></tbody></table>
    <p><button id="older" hidden>Older</button></p>`);
  const query = new URLSearchParams(Object.entries(f).filter(([, v]) => v));
  const rowHtml = (a) => html`<tr data-activity="${a.id}"><td class="when" title="${a.createdAt}">${ago(a.createdAt)}</td><td>${a.actorType}${a.actorId ? html` <span class="muted mono">${short(a.actorId)}</span>` : ''}</td>
    <td>${a.action}</td><td>${a.entityType} <a class="mono" href="#/activity?entityId=${encodeURIComponent(a.entityId)}" title="this entity's history">${short(a.entityId)}</a></td><td class="mono">${a.runId ? html`<a href="#/runs/${a.runId}">${short(a.runId)}</a>` : ''}</td>
    <td class="mono">${Object.entries(a.details).filter(([, v]) => v !== null && typeof v !== 'object').map(([k, v]) => `${k}=${v}`).join(' ')}</td></tr>`;
  const feed = document.getElementById('feed');
  let before = null;
  const load = async () => {
    const q = new URLSearchParams(query);
    q.set('limit', '50');
    if (before) q.set('before', before);
    try {
      const { data, headers } = await api('GET', cpath(`/activity?${q}`));
      feed.insertAdjacentHTML('beforeend', data.map((a) => String(rowHtml(a))).join(''));
      before = headers.get('x-next-cursor');
      document.getElementById('older').hidden = !before;
    } catch (err) {
      document.getElementById('act-error').innerHTML = String(html`<div class="banner error">${err.message}</div>`);
    }
  };
  await load();
  if (staleSince(gen)) return;
  document.getElementById('older').addEventListener('click', load);
  document.getElementById('filters').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams([...new FormData(e.target)].filter(([, v]) => v));
    location.hash = `#/activity${q.size ? `?${q}` : ''}`;
  });
  onActivity = (a) => {
    if ((f.action && a.action !== f.action) || (f.entityType && a.entityType !== f.entityType) || (f.entityId && a.entityId !== f.entityId) || (f.runId && a.runId !== f.runId)) return;
    feed.insertAdjacentHTML('afterbegin', String(rowHtml(a)));
  };
  markReady('activity', gen);
}

// ---------- routing ----------
async function route() {
  routeGen++;
  cleanup?.();
  cleanup = null;
  onActivity = null;
  delete document.body.dataset.ready;
  const [path, qs] = location.hash.slice(1).split('?');
  const parts = (path || '/environments').split('/').filter(Boolean);
  const signedIn = !!session.key && !!session.company;
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('signout').hidden = !signedIn;
  document.getElementById('who').textContent = signedIn ? session.company.name : '';
  if (!signedIn) { if (parts[0] !== 'signin') { location.hash = '#/signin'; return; } return viewSignIn(); }
  if (!stopLive) startLive();
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('on', a.dataset.nav === parts[0]));
  try {
    if (parts[0] === 'environments' && parts[1]) return await viewEnvironment(parts[1]);
    if (parts[0] === 'runs' && parts[1]) return await viewRun(parts[1]);
    if (parts[0] === 'runs') return await viewRuns();
    if (parts[0] === 'activity') return await viewActivity(new URLSearchParams(qs ?? ''));
    if (parts[0] === 'signin') { location.hash = '#/environments'; return; }
    return await viewEnvironments();
  } catch (err) {
    show(html`<div class="banner error">${err.message}</div>`);
    markReady('error');
  }
}

// A view's click handlers live on <main>; replace it on each route so none leaks into the next view.
window.addEventListener('hashchange', () => {
  const old = $main();
  old.replaceWith(old.cloneNode(false));
  route();
});
document.getElementById('signout').addEventListener('click', () => signOut());
route();
