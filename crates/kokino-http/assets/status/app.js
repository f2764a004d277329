// The Kokino broker's live status page. Plain JavaScript, no dependencies, no build step.
//
// It reads GET /api/status/stream (Server-Sent Events) with fetch(), because EventSource cannot
// send the Authorization header a broker with a token needs. The first event, `snapshot`, holds
// everything; later events replace one section, or (`agents`) upsert and remove agent rows.
// Every value is written with textContent, never as markup.
'use strict';

const TOKEN_KEY = 'kokino.token';
const $ = (id) => document.getElementById(id);

const state = {
  agents: new Map(), // agent id -> { data, row, cells }
  running: new Set(), // ids of agents with an execution (their elapsed time ticks)
  firstRender: false,
  abort: null,
  broker: null,
};

// ------------------------------------------------------------------ formatting

function fmtDuration(ms) {
  if (ms == null) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${m % 60} min`;
}

function fmtTime(t) {
  if (t == null) return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleTimeString();
}

function fmtDateTime(t) {
  if (t == null) return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

function pct(x, digits) {
  return x == null ? 'no data' : `${(x * 100).toFixed(digits)} %`;
}

// A breaker or outcome state as a word, with a class that only repeats it.
function breakerText(s) {
  if (s == null) return ['not used yet', 'muted'];
  switch (s) {
    case 'closed': return ['closed', 'good'];
    case 'open': return ['OPEN', 'bad'];
    case 'half_open': return ['half-open (probing)', 'warn'];
    case 'forced_open': return ['FORCED OPEN', 'bad'];
    case 'disabled': return ['disabled', 'muted'];
    default: return [String(s), ''];
  }
}

function outcomeText(outcome) {
  if (outcome === 'success') return ['✓ success', 'good'];
  if (outcome === 'cancelled') return ['■ cancelled', 'warn'];
  if (outcome === 'timeout') return ['⏱ timeout', 'bad'];
  return [`✗ ${String(outcome).replace(/_/g, ' ')}`, 'bad'];
}

function setText(el, text, cls) {
  el.textContent = text;
  el.className = cls || '';
}

// ------------------------------------------------------------------ requests

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function notice(text) {
  $('notice').textContent = text;
}

async function act(label, method, path, body) {
  notice(`${label}…`);
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers: { ...authHeaders(), 'Content-Type': 'application/json' },
      body: method === 'DELETE' ? undefined : JSON.stringify(body || {}),
      cache: 'no-store',
    });
  } catch (e) {
    notice(`${label}: failed, the broker did not answer (${e.message})`);
    return;
  }
  let answer = null;
  try { answer = await resp.json(); } catch (_) { /* an empty body */ }
  if (resp.ok) {
    notice(`${label}: done. ${summarise(answer)}`);
  } else {
    const code = answer && answer.code ? `${answer.code}: ` : '';
    const msg = answer && answer.error ? answer.error : resp.statusText;
    notice(`${label}: failed with ${resp.status} ${code}${msg}`);
    if (resp.status === 401) askToken('The token was refused.');
  }
}

function summarise(v) {
  if (v == null || typeof v !== 'object') return '';
  const parts = [];
  for (const [k, x] of Object.entries(v)) {
    if (x !== null && typeof x !== 'object') parts.push(`${k}: ${x}`);
  }
  return parts.join(', ');
}

// The confirmation dialog: resolves true only when the operator chose the confirm button. Escape
// and the other button decline.
function confirmAction(text, yesLabel) {
  const dlg = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = yesLabel;
  // Focus goes back to the button that opened the dialog, so a keyboard user stays in place.
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const done = (ok) => {
      $('confirm-yes').onclick = null;
      $('confirm-no').onclick = null;
      dlg.onclose = null;
      if (dlg.open) dlg.close();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(ok);
    };
    $('confirm-yes').onclick = () => done(true);
    $('confirm-no').onclick = () => done(false);
    dlg.onclose = () => done(false);
    dlg.showModal();
  });
}

async function confirmed(question, yesLabel, label, method, path, body) {
  if (await confirmAction(question, yesLabel)) await act(label, method, path, body);
  else notice(`${label}: not done.`);
}

const enc = encodeURIComponent;

function cancelExecution(id) {
  return confirmed(
    `Cancel the running execution of agent ${id}? Its CLI is stopped (SIGTERM, then SIGKILL) and the caller gets 409 EXECUTION_CANCELLED.`,
    'Cancel the execution', `Cancel ${id}`, 'POST', `/agents/${enc(id)}/execute/cancel`);
}

function endSession(id) {
  return confirmed(
    `End the session of agent ${id}? A running execution is cancelled and the next prompt starts a new CLI conversation.`,
    'End the session', `End session of ${id}`, 'POST', `/agents/${enc(id)}/end-session`);
}

function resetBreaker(c) {
  const path = c.scope === 'agent'
    ? `/agents/${enc(c.key)}/circuit/reset`
    : `/api/circuits/cli/${enc(c.key)}/reset`;
  return confirmed(
    `Reset the ${c.scope} breaker of ${c.key} (now ${breakerText(c.state)[0]})? Requests reach the CLI again at once.`,
    'Reset the breaker', `Reset breaker ${c.scope} ${c.key}`, 'POST', path);
}

function clearFallback(kind, key) {
  if (kind === 'agent') {
    return confirmed(
      `Clear the fallback of agent ${key}? It runs in its registered mode again.`,
      'Clear the override', `Clear fallback of agent ${key}`, 'DELETE', `/api/fallback/agent/${enc(key)}`);
  }
  return confirmed(
    `Enable headless runs of CLI type ${key} again? Its agents stop being rerouted to tmux.`,
    'Enable the CLI', `Enable CLI ${key}`, 'POST', '/api/fallback/cli/enable', { cliType: key });
}

// ------------------------------------------------------------------ agents

const agentBody = () => document.querySelector('#agents tbody');
let rowTemplate = null;

function newRow(id) {
  if (!rowTemplate) {
    rowTemplate = document.createElement('tr');
    const head = document.createElement('th');
    head.setAttribute('scope', 'row');
    rowTemplate.appendChild(head);
    for (let i = 1; i < 8; i++) rowTemplate.appendChild(document.createElement('td'));
    const actions = document.createElement('td');
    for (const label of ['Cancel', 'End session']) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = label;
      actions.appendChild(b);
    }
    rowTemplate.appendChild(actions);
  }
  const row = rowTemplate.cloneNode(true);
  row.dataset.agent = id;
  const [cancel, end] = row.cells[8].children;
  cancel.setAttribute('aria-label', `Cancel the execution of ${id}`);
  cancel.dataset.action = 'cancel';
  end.setAttribute('aria-label', `End the session of ${id}`);
  end.dataset.action = 'end-session';
  return row;
}

function executionText(a) {
  const x = a.execution;
  if (!x) {
    if (a.queueLength > 0) return [`waiting (${a.queueLength} queued)`, 'warn'];
    return ['idle', 'muted'];
  }
  const parts = [`running ${fmtDuration(Date.now() - x.startedAt)}`];
  // The first memory sample comes a second after the start.
  parts.push(x.memoryMB > 0 ? `${x.memoryMB.toFixed(1)} MB` : 'memory not sampled yet');
  if (x.pid != null) parts.push(`pid ${x.pid}`);
  if (a.queueLength > 0) parts.push(`${a.queueLength} queued`);
  return [parts.join(' · '), 'busy'];
}

function fillRow(entry) {
  const a = entry.data;
  const c = entry.row.cells;
  c[0].textContent = a.agentId;
  c[1].textContent = a.type;
  c[2].textContent = a.commMode;
  if (a.effectiveMode == null) {
    setText(c[3], `none: ${a.modeNote || 'no mode can run'}`, 'bad');
  } else if (a.effectiveMode !== a.commMode || a.modeNote) {
    setText(c[3], `${a.effectiveMode} (fallback: ${a.modeNote || 'rerouted'})`, 'warn');
  } else {
    setText(c[3], a.effectiveMode, '');
  }
  setText(c[4], a.hasSession ? (a.sessionId || 'started, no id yet') : 'none', a.hasSession ? '' : 'muted');
  setText(c[5], a.locked ? 'locked' : 'free', a.locked ? 'busy' : 'muted');
  const [et, ec] = executionText(a);
  setText(c[6], et, ec);
  const [bt, bc] = breakerText(a.circuit);
  setText(c[7], bt, bc);
  const [cancel, end] = c[8].children;
  cancel.disabled = !a.execution;
  end.disabled = !a.hasSession && !a.execution;
  if (a.execution) state.running.add(a.agentId); else state.running.delete(a.agentId);
}

function matchesFilter(a) {
  const f = $('filter').value.trim().toLowerCase();
  return !f || a.agentId.toLowerCase().includes(f) || a.type.includes(f);
}

// Rows of the first screen are built at once; the rest follow in slices between frames, so the
// first render does not wait for a thousand rows (and the page stays responsive meanwhile).
const FIRST_ROWS = 60;
const SLICE_ROWS = 200;
let pending = null; // { ids, next } while rows are still being built

function buildRows(ids, from, to) {
  const frag = document.createDocumentFragment();
  for (let i = from; i < to; i++) {
    const entry = state.agents.get(ids[i]);
    if (!entry) continue;
    if (!entry.row) entry.row = newRow(entry.data.agentId);
    fillRow(entry);
    entry.row.hidden = !matchesFilter(entry.data);
    frag.appendChild(entry.row);
  }
  agentBody().appendChild(frag);
}

function buildNextSlice(job) {
  if (pending !== job) return; // a newer full render replaced this one
  const to = Math.min(job.next + SLICE_ROWS, job.ids.length);
  buildRows(job.ids, job.next, to);
  job.next = to;
  if (to < job.ids.length) {
    setTimeout(() => buildNextSlice(job), 0);
  } else {
    pending = null;
    performance.mark('kokino-all-rows');
    window.kokinoAllRowsMs = performance.now();
  }
}

// Replaces every row: the rows are built in the broker's order (sorted by id).
function renderAllAgents() {
  const ids = [...state.agents.keys()].sort();
  agentBody().replaceChildren();
  const job = { ids, next: Math.min(FIRST_ROWS, ids.length) };
  pending = job;
  buildRows(ids, 0, job.next);
  // The rest after the first screen was painted.
  requestAnimationFrame(() => setTimeout(() => buildNextSlice(job), 0));
}

function upsertAgents(rows, full) {
  let added = false;
  if (full) state.agents.clear();
  for (const a of rows) {
    let entry = state.agents.get(a.agentId);
    if (!entry) {
      entry = { data: a, row: null };
      state.agents.set(a.agentId, entry);
      added = true;
    }
    entry.data = a;
    if (a.execution) state.running.add(a.agentId); else state.running.delete(a.agentId);
    // A row not built yet gets the latest data when it is.
    if (entry.row) {
      fillRow(entry);
      entry.row.hidden = !matchesFilter(a);
    }
  }
  if (full) {
    state.running = new Set(rows.filter((a) => a.execution).map((a) => a.agentId));
  }
  // A new agent goes to its place in the sorted table; rebuilding keeps that simple.
  if (full || added) renderAllAgents();
  countAgents();
}

function removeAgents(ids) {
  for (const id of ids) {
    const entry = state.agents.get(id);
    if (entry && entry.row) entry.row.remove();
    state.agents.delete(id);
    state.running.delete(id);
  }
  countAgents();
}

function countAgents() {
  $('agent-count').textContent = `(${state.agents.size} registered, ${state.running.size} running)`;
  infoItem('agents', 'Agents', String(state.agents.size));
  infoItem('running', 'Running', String(state.running.size));
}

function applyFilter() {
  for (const entry of state.agents.values()) {
    if (entry.row) entry.row.hidden = !matchesFilter(entry.data);
  }
}

// Elapsed times tick here, between stream updates, for the running agents only.
function tick() {
  for (const id of state.running) {
    const entry = state.agents.get(id);
    if (!entry || !entry.row) continue;
    const [t, cls] = executionText(entry.data);
    setText(entry.row.cells[6], t, cls);
  }
  if (state.broker) infoItem('uptime', 'Up', fmtDuration(Date.now() - state.broker.startedAt));
}

// ------------------------------------------------------------------ other sections

function infoItem(key, label, value) {
  let item = document.querySelector(`#broker-info [data-key="${key}"]`);
  if (!item) {
    item = document.createElement('div');
    item.dataset.key = key;
    item.append(document.createElement('dt'), document.createElement('dd'));
    item.firstChild.textContent = label;
    $('broker-info').appendChild(item);
  }
  item.lastChild.textContent = value;
}

function renderBroker(b) {
  state.broker = b;
  infoItem('version', 'Version', b.version);
  infoItem('store', 'Store', b.store);
  infoItem('tmux', 'tmux', b.tmuxAvailable ? 'available' : 'not available');
  infoItem('uptime', 'Up', fmtDuration(Date.now() - b.startedAt));
}

// Fills a table body from rows of cells; a cell is text, [text, class] or a DOM node.
function fillTable(id, rows, empty) {
  const body = document.querySelector(`#${id} tbody`);
  const frag = document.createDocumentFragment();
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = document.querySelectorAll(`#${id} thead th`).length;
    setText(td, empty, 'muted');
    tr.appendChild(td);
    frag.appendChild(tr);
  }
  for (const cells of rows) {
    const tr = document.createElement('tr');
    for (const cell of cells) {
      const td = document.createElement('td');
      if (cell instanceof Node) td.appendChild(cell);
      else if (Array.isArray(cell)) setText(td, cell[0], cell[1]);
      else td.textContent = cell == null ? '—' : String(cell);
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
}

function button(label, aria, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.setAttribute('aria-label', aria);
  b.addEventListener('click', onClick);
  return b;
}

function renderExecutions(list) {
  fillTable('executions', list.map((x) => [
    fmtTime(x.at), x.agentId, outcomeText(x.outcome), fmtDuration(x.durationMs), x.mode,
    x.executionId, x.error ? [x.error, 'wrap'] : '—',
  ]), 'No execution has finished yet.');
}

function renderCircuits(list) {
  const shown = list.filter((c) => c.state !== 'closed');
  const closed = list.length - shown.length;
  $('circuits-summary').textContent = shown.length === 0
    ? `All breakers closed (${closed} in use).`
    : `${shown.length} not closed; ${closed} closed breakers are not listed.`;
  fillTable('circuits', shown.map((c) => [
    c.scope, c.key, breakerText(c.state), c.consecutiveFailures,
    [c.lastFailureReason ? `${fmtTime(c.lastFailureAt)}: ${c.lastFailureReason}` : '—', 'wrap'],
    fmtTime(c.retryAt),
    button('Reset', `Reset the ${c.scope} breaker of ${c.key}`, () => resetBreaker(c)),
  ]), 'No open breaker.');
}

function renderFallback(f) {
  const rows = [];
  for (const d of f.disabledCLIs || []) {
    rows.push(['CLI disabled for headless runs (runs in tmux)', d.cliType, [d.reason, 'wrap'],
      fmtDateTime(d.since), d.auto ? 'the broker' : 'an operator',
      button('Enable CLI', `Enable headless runs of CLI ${d.cliType}`, () => clearFallback('cli', d.cliType))]);
  }
  for (const a of f.forcedFallbacks || []) {
    rows.push(['Agent forced to tmux', a.agentId, [a.reason, 'wrap'], fmtDateTime(a.since),
      a.auto ? 'the broker' : 'an operator',
      button('Clear', `Clear the fallback of agent ${a.agentId}`, () => clearFallback('agent', a.agentId))]);
  }
  $('fallback-summary').textContent = rows.length === 0
    ? 'No override: every agent runs in its registered mode.'
    : `${rows.length} override(s) in force.`;
  fillTable('fallback', rows, 'No fallback override.');
}

function status(breached, hasData) {
  if (hasData === false) return ['no data', 'muted'];
  return breached ? ['✗ BREACHED', 'bad'] : ['✓ met', 'good'];
}

function renderSlo(s) {
  if (!s) {
    fillTable('slo', [], 'The SLO status could not be computed (see the problems above).');
    return;
  }
  const a = s.availability;
  const l = s.latency;
  const r = s.resources;
  fillTable('slo', [
    ['Availability', pct(a.current, 3), pct(a.target, 2), status(a.breached),
      `${a.failures} of ${a.eligible} requests failed over ${a.windowDays} days; ` +
      `error budget left ${pct(a.errorBudgetRemaining, 0)}`],
    ['Latency (p95 of successes)', fmtDuration(l.p95Ms), fmtDuration(l.targetP95Ms),
      status(l.breached, l.count > 0),
      `p50 ${fmtDuration(l.p50Ms)}, p99 ${fmtDuration(l.p99Ms)}, ${l.count} runs in ${l.windowHours} h`],
    ['Correctness (shadow match rate)', pct(s.correctness.current, 1), pct(s.correctness.target, 1),
      status(s.correctness.breached, s.correctness.current != null), ''],
    ['Integrity (clean conversations)', pct(s.integrity.current, 1), pct(s.integrity.target, 1),
      status(s.integrity.breached, s.integrity.current != null), ''],
    ['Memory (average peak per run)', r.avgMemoryMB == null ? 'no data' : `${r.avgMemoryMB.toFixed(1)} MB`,
      `${r.targetMB} MB`, status(r.breached, r.avgMemoryMB != null), ''],
  ], '');
}

function eventDetails(e) {
  const m = e.metadata || {};
  const parts = [];
  if (e.success != null) parts.push(e.success ? 'succeeded' : 'failed');
  if (e.durationMs != null) parts.push(fmtDuration(e.durationMs));
  for (const [k, v] of Object.entries(m)) {
    if (v == null || typeof v === 'object') continue;
    parts.push(`${k}: ${v}`);
  }
  const text = parts.join(', ');
  return text.length > 240 ? `${text.slice(0, 240)}…` : text;
}

function renderEvents(list) {
  fillTable('events', list.map((e) => [
    fmtTime(e.at), e.type, e.agentId, e.cliType, [eventDetails(e), 'wrap'],
  ]), 'No event yet.');
}

function renderProblems(list) {
  const box = $('problems');
  box.hidden = list.length === 0;
  box.textContent = list.length ? `Problems: ${list.join('; ')}` : '';
}

const handlers = {
  snapshot(s) {
    if (!state.firstRender) performance.mark('kokino-snapshot-parsed');
    renderBroker(s.broker);
    upsertAgents(s.agents, true);
    renderExecutions(s.executions);
    renderCircuits(s.circuits);
    renderFallback(s.fallback);
    renderSlo(s.slo);
    renderEvents(s.events);
    renderProblems(s.problems);
    $('main').hidden = false;
    if (!state.firstRender) {
      state.firstRender = true;
      performance.mark('kokino-snapshot-rendered');
      // After the browser has laid out and painted the first full render.
      requestAnimationFrame(() => setTimeout(() => {
        const ms = performance.now();
        window.kokinoFirstRenderMs = ms;
        document.body.dataset.firstRenderMs = ms.toFixed(1);
        performance.mark('kokino-first-render');
      }, 0));
    }
  },
  agents(d) {
    if (d.remove && d.remove.length) removeAgents(d.remove);
    if (d.upsert && d.upsert.length) upsertAgents(d.upsert, false);
  },
  broker: renderBroker,
  executions: renderExecutions,
  circuits: renderCircuits,
  fallback: renderFallback,
  slo: renderSlo,
  events: renderEvents,
  problems: renderProblems,
};

// ------------------------------------------------------------------ the stream

function setConn(text) {
  $('conn').textContent = text;
  document.body.dataset.conn = text.split(' ')[0].toLowerCase();
}

function askToken(why) {
  if (state.abort) state.abort.abort();
  sessionStorage.removeItem(TOKEN_KEY);
  $('token-error').textContent = why || '';
  $('token-form').hidden = false;
  $('main').hidden = true;
  $('forget-token').hidden = true;
  setConn('Needs a token');
  $('token').focus();
}

function dispatch(block) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) name = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (data.length === 0 || !handlers[name]) return;
  if (name === 'snapshot' && !state.firstRender) performance.mark('kokino-snapshot-received');
  handlers[name](JSON.parse(data.join('\n')));
}

// Reads the stream until it ends; returns 'auth' when the broker wants a (different) token.
async function readStream(signal) {
  const resp = await fetch('/api/status/stream', {
    headers: { ...authHeaders(), Accept: 'text/event-stream' },
    cache: 'no-store',
    signal,
  });
  if (resp.status === 401) return 'auth';
  if (!resp.ok) {
    let why = resp.statusText;
    try { why = (await resp.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(`${resp.status} ${why}`);
  }
  if (!state.firstRender) performance.mark('kokino-stream-open');
  setConn('Live');
  $('forget-token').hidden = !sessionStorage.getItem(TOKEN_KEY);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return 'closed';
    buf += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      dispatch(buf.slice(0, end));
      buf = buf.slice(end + 2);
    }
  }
}

async function run() {
  if (state.abort) state.abort.abort();
  const ctrl = new AbortController();
  state.abort = ctrl;
  let delay = 500;
  while (!ctrl.signal.aborted) {
    try {
      const r = await readStream(ctrl.signal);
      if (r === 'auth') {
        askToken(sessionStorage.getItem(TOKEN_KEY) ? 'The token was refused.' : '');
        return;
      }
      delay = 500;
      setConn('Reconnecting (the stream ended)…');
    } catch (e) {
      if (ctrl.signal.aborted) return;
      setConn(`Disconnected (${e.message}); retrying…`);
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    $('token-form').hidden = true;
    setConn('Connecting…');
    run();
  });
  $('forget-token').addEventListener('click', () => askToken('The token was forgotten.'));
  $('filter').addEventListener('input', applyFilter);
  // One listener for every agent row's buttons.
  agentBody().addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (!b) return;
    const id = b.closest('tr').dataset.agent;
    if (b.dataset.action === 'cancel') cancelExecution(id);
    else endSession(id);
  });
  setInterval(tick, 1000);
  run();
});
