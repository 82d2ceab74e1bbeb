// trustring web console: one plain ES module, no framework, no build step, no dependency.
//
// - The admin token is typed into the login form and kept in sessionStorage (this tab only);
//   it travels in the `Authorization: Bearer` header of fetch() calls and never in a URL.
// - Live calls come from `GET /api/v1/calls/stream` (server-sent events), read with fetch()
//   and a stream reader because EventSource cannot send headers. Each event is one SIP
//   message the server received or sent; branch and call states are derived here from the
//   messages, the same way the server's `GET /api/v1/calls` summary does.
// - Everything shown comes from the network, including text chosen by SIP peers (labels,
//   notes, addresses): it is only ever put in the page with textContent / attributes, never
//   as HTML.

const TOKEN_KEY = 'trustring.console.token';
/** The reasons `POST /api/v1/devices/{id}/revoke` accepts (crate::REVOKE_REASONS). */
const REVOKE_REASONS = ['non-payment', 'left-enterprise', 'eula-violation', 'lost'];
const MAX_CALLS_SHOWN = 100;
const MAX_CALLS_KEPT = 500;
const SVG_NS = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- DOM helpers

/** Builds an element. attrs: `class`, `text`, `on<event>`, `dataset` or plain attributes. */
function build(doc, ns, tag, attrs, children) {
  const el = ns ? doc.createElementNS(ns, tag) : doc.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const h = (tag, attrs, ...children) => build(document, null, tag, attrs, children);
const svg = (tag, attrs, ...children) => build(document, SVG_NS, tag, attrs, children);

function note(id, text, kind = 'info') {
  const el = $(id);
  el.textContent = text || '';
  el.dataset.kind = kind;
  el.hidden = !text;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function dateTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function duration(secs) {
  const s = Math.max(0, Math.round(secs));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  return hh ? `${hh}:${pad(mm)}:${pad(s % 60)}` : `${mm}:${pad(s % 60)}`;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  /** The endpoint or the feature is not there on this server (older server, option off). */
  get unavailable() {
    return this.status === 404 || this.status === 501 || this.status === 503;
  }
}

let token = null;

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${token}`, ...extra };
}

/** JSON request to the admin API. Throws ApiError with the server's `{"error":{code,message}}`. */
async function api(path, { method = 'GET', body, login = false } = {}) {
  const headers = authHeaders({ Accept: 'application/json' });
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    const e = new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText);
    if (res.status === 401 && !login) logout('The server no longer accepts this token: log in again.');
    throw e;
  }
  return data;
}

function describe(e, what) {
  if (e instanceof ApiError && e.unavailable) {
    return `${what} not available on this server (${e.status}: ${e.message}).`;
  }
  return `${what}: ${e.message}`;
}

// ---------------------------------------------------------------- session

let session = null; // { stream: AbortController, timers: [] } while logged in

async function login(candidate) {
  const button = $('login-submit');
  button.disabled = true;
  note('login-error', '');
  token = candidate;
  try {
    await api('/api/v1/subscribers', { login: true });
  } catch (e) {
    token = null;
    const msg = e.status === 401 ? 'Wrong token: the server answered 401.' : `Cannot log in: ${e.message}`;
    note('login-error', msg, 'error');
    button.disabled = false;
    return;
  }
  button.disabled = false;
  sessionStorage.setItem(TOKEN_KEY, candidate);
  $('token').value = '';
  start();
}

function logout(reason) {
  if (session) {
    session.stream.abort();
    for (const t of session.timers) clearInterval(t);
  }
  session = null;
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  calls.clear();
  rows.clear();
  ladderId = null;
  for (const id of ['calls-body', 'regs-list', 'cdr-body', 'totals-body', 'pool-counts', 'devices-body', 'events-body', 'enrol-qr']) {
    $(id).replaceChildren();
  }
  $('enrol-uri').textContent = '';
  $('enrol-result').hidden = true;
  $('ladder-panel').hidden = true;
  $('app').hidden = true;
  $('session').hidden = true;
  $('login').hidden = false;
  note('login-error', reason || '', 'error');
  $('token').focus();
}

function start() {
  session = { stream: new AbortController(), timers: [] };
  $('login').hidden = true;
  $('app').hidden = false;
  $('session').hidden = false;
  const initial = (location.hash || '').slice(1);
  showTab(TABS.includes(initial) ? initial : 'calls');
  runStream(session);
  // Registrations expire on their own: keep the visible tab fresh.
  session.timers.push(
    setInterval(() => {
      if (currentTab === 'registrations') loadRegistrations();
    }, 5000),
  );
}

// ---------------------------------------------------------------- tabs

const TABS = ['calls', 'registrations', 'cdrs', 'phones'];
let currentTab = 'calls';

function showTab(name) {
  currentTab = name;
  for (const b of document.querySelectorAll('nav.tabs button')) {
    b.setAttribute('aria-selected', String(b.dataset.tab === name));
  }
  for (const t of TABS) $(`tab-${t}`).hidden = t !== name;
  history.replaceState(null, '', `#${name}`);
  if (name === 'registrations') loadRegistrations();
  if (name === 'cdrs') loadCdrs();
  if (name === 'phones') loadPhones();
}

// ---------------------------------------------------------------- live calls: model

/** call_id -> { id, messages: [], keys: Set, summary (server's CallView) | null, needsTrace } */
const calls = new Map();

const msgKey = (m) => `${m.at_us}|${m.dir}|${m.peer}|${m.label}|${m.cseq}`;
const statusCode = (label) => (/^[1-6]\d\d\b/.test(label) ? Number(label.slice(0, 3)) : 0);
const cseqMethod = (cseq) => (cseq || '').trim().split(/\s+/)[1] || '';

function getCall(id) {
  let c = calls.get(id);
  if (!c) {
    c = { id, messages: [], keys: new Set(), summary: null, needsTrace: false, loading: null };
    calls.set(id, c);
    if (calls.size > MAX_CALLS_KEPT) {
      const oldest = [...calls.values()].sort((a, b) => firstUs(a) - firstUs(b))[0];
      calls.delete(oldest.id);
      rows.get(oldest.id)?.remove();
      rows.delete(oldest.id);
    }
  }
  return c;
}

function addMessages(c, list) {
  let added = false;
  for (const m of list) {
    const k = msgKey(m);
    if (c.keys.has(k)) continue;
    c.keys.add(k);
    c.messages.push(m);
    added = true;
  }
  if (added) c.messages.sort((a, b) => a.at_us - b.at_us); // stable: equal times keep order
  return added;
}

const firstUs = (c) => (c.messages.length ? c.messages[0].at_us : c.summary ? c.summary.first_us : 0);

/**
 * A call's state from its messages (as the server sees them): the first INVITE in names the
 * caller; each INVITE out to another peer is a branch (trying); from that peer a 1xx makes it
 * ringing, a 2xx answered, a 3xx-6xx failed; a CANCEL out cancels it; a BYE from the caller
 * or the answering branch, or a final failure sent to the caller, ends the call.
 */
function derive(messages) {
  let caller = null;
  for (const m of messages) {
    if (m.dir === 'in' && m.label === 'INVITE') {
      caller = m.peer;
      break;
    }
  }
  const branches = new Map();
  let answered = false;
  let ended = false;
  let refused = null; // CSeq of an INVITE refused to the caller (a 407 challenge, say)
  for (const m of messages) {
    const code = statusCode(m.label);
    const method = cseqMethod(m.cseq);
    const cur = branches.get(m.peer);
    if (m.dir === 'in' && m.label === 'INVITE' && m.peer === caller) {
      // The caller tries again (with credentials after a 407): the call goes on.
      if (refused !== null && m.cseq !== refused) ended = false;
    } else if (m.dir === 'out' && m.label === 'INVITE' && m.peer !== caller) {
      if (!cur) branches.set(m.peer, 'trying');
    } else if (m.dir === 'out' && m.label === 'CANCEL') {
      if (cur && cur !== 'answered') branches.set(m.peer, 'cancelled');
    } else if (m.dir === 'in' && code && method === 'INVITE' && cur) {
      if (code < 200) {
        if (cur === 'trying') branches.set(m.peer, 'ringing');
      } else if (code < 300) {
        // A 200 that crossed our CANCEL after another branch won stays "cancelled".
        if (!(cur === 'cancelled' && answered)) branches.set(m.peer, 'answered');
        answered = true;
      } else if (cur !== 'cancelled' && cur !== 'answered') {
        branches.set(m.peer, 'failed');
      }
    } else if (m.dir === 'in' && m.label === 'BYE' && (m.peer === caller || cur === 'answered')) {
      ended = true;
    } else if (m.dir === 'out' && code >= 300 && method === 'INVITE' && m.peer === caller) {
      ended = true;
      refused = m.cseq;
    }
  }
  const isCall = caller !== null;
  const state = !isCall ? 'other' : ended ? 'ended' : answered ? 'answered' : 'ringing';
  const first = messages[0];
  return {
    isCall,
    state,
    caller: caller || (first ? first.peer : ''),
    method: first ? cseqMethod(first.cseq) || first.label : '',
    branches: [...branches].map(([peer, st]) => ({ peer, state: st })),
  };
}

function view(c) {
  if (c.messages.length) return derive(c.messages);
  const s = c.summary || { state: 'ringing', caller: '', branches: [] };
  const isCall = s.branches.length > 0 || s.caller !== '';
  return { isCall, state: isCall ? s.state : 'other', caller: s.caller, method: '', branches: s.branches };
}

/** Fetches a call's whole trace (for calls that began before we were listening). */
function loadTrace(c) {
  if (c.loading) return c.loading;
  c.loading = (async () => {
    try {
      const t = await api(`/api/v1/calls/${encodeURIComponent(c.id)}/trace`);
      addMessages(c, t.messages || []);
      c.needsTrace = false;
      c.traceError = null;
    } catch (e) {
      c.traceError = describe(e, 'The trace of this call is');
    } finally {
      c.loading = null;
      scheduleRender();
    }
  })();
  return c.loading;
}

function onMessage(m) {
  if (!m || typeof m.call_id !== 'string') return;
  const known = calls.has(m.call_id);
  const c = getCall(m.call_id);
  const before = view(c).state;
  const { call_id: _ignored, ...msg } = m;
  msg.notes = Array.isArray(msg.notes) ? msg.notes : [];
  addMessages(c, [msg]);
  // A dialog we first hear of in its middle (the feed reconnected) or one listed before the
  // feed opened: fetch what we missed.
  const starts = msg.dir === 'in' && statusCode(msg.label) === 0 && msg.label !== 'ACK' && msg.label !== 'BYE' && msg.label !== 'CANCEL';
  if ((!known && !starts) || c.needsTrace) loadTrace(c);
  if (msg.label === 'REGISTER' && currentTab === 'registrations') debounce('regs', loadRegistrations, 300);
  if (before !== 'ended' && view(c).state === 'ended' && currentTab === 'cdrs') debounce('cdrs', loadCdrs, 500);
  scheduleRender();
}

async function seedCalls() {
  try {
    const list = await api('/api/v1/calls?limit=100');
    note('calls-note', '');
    for (const s of list || []) {
      const c = getCall(s.call_id);
      c.summary = s;
      // Unknown so far, or we missed some of its messages (the feed reconnected).
      if (c.messages.length < s.messages) c.needsTrace = true;
    }
    // Calls still going on, and calls we hold only part of: get their messages now, so their
    // branches follow the feed. Ended calls we never saw are fetched when their ladder opens.
    for (const c of calls.values()) {
      if (c.needsTrace && c.summary && (c.summary.state !== 'ended' || c.messages.length)) loadTrace(c);
    }
  } catch (e) {
    if (e.status !== 401) note('calls-note', describe(e, 'The list of recent calls is'), 'warn');
  }
  scheduleRender();
}

// ---------------------------------------------------------------- live calls: the feed

function setStreamStatus(state, text) {
  const el = $('stream-status');
  el.dataset.state = state;
  el.textContent = `feed: ${text || state}`;
}

/** Reads server-sent events from a fetch() body and calls onEvent(name, data). */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf = (buf + value).replace(/\r\n/g, '\n');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue; // comment: keep-alive
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') event = v;
        else if (field === 'data') data.push(v);
      }
      if (data.length) onEvent(event, data.join('\n'));
    }
  }
}

async function runStream(s) {
  let backoff = 1000;
  while (session === s) {
    setStreamStatus('connecting', backoff > 1000 ? 'reconnecting' : 'connecting');
    try {
      const res = await fetch('/api/v1/calls/stream', {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        signal: s.stream.signal,
        cache: 'no-store',
      });
      if (res.status === 401) {
        logout('The server no longer accepts this token: log in again.');
        return;
      }
      if (res.status === 404) {
        setStreamStatus('unavailable', 'not available');
        note('calls-note', 'Live calls are not available on this server (GET /api/v1/calls/stream answered 404).', 'warn');
        seedCalls();
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setStreamStatus('live');
      backoff = 1000;
      seedCalls(); // after the feed is open, so that no message falls in between
      await readEvents(res.body, (event, data) => {
        if (event !== 'message') return;
        try {
          onMessage(JSON.parse(data));
        } catch (e) {
          console.warn('bad event', e);
        }
      });
    } catch (e) {
      if (s.stream.signal.aborted) return;
    }
    if (session !== s) return;
    setStreamStatus('connecting', 'reconnecting');
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 15000);
  }
}

// ---------------------------------------------------------------- live calls: view

const rows = new Map(); // call_id -> <tr>
let renderPending = false;
let ladderId = null;

function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  // A timer, not requestAnimationFrame: a tab in the background still follows the feed.
  setTimeout(() => {
    renderPending = false;
    renderCalls();
    if (ladderId) renderLadder();
  }, 30);
}

const timers = new Map();
function debounce(key, fn, ms) {
  clearTimeout(timers.get(key));
  timers.set(key, setTimeout(fn, ms));
}

function branchChip(b) {
  return h('span', { class: 'branch', dataset: { peer: b.peer, state: b.state }, title: `${b.peer}: ${b.state}` },
    h('span', { class: 'peer', text: b.peer }), ' ', h('span', { class: 'bstate', text: b.state }));
}

function renderCalls() {
  const showOther = $('show-other').checked;
  const list = [...calls.values()]
    .map((c) => ({ c, v: view(c) }))
    .filter(({ v }) => showOther || v.isCall)
    .sort((a, b) => firstUs(b.c) - firstUs(a.c))
    .slice(0, MAX_CALLS_SHOWN);
  const body = $('calls-body');
  const keep = new Set(list.map(({ c }) => c.id));
  for (const [id, tr] of rows) {
    if (!keep.has(id)) {
      tr.remove();
      rows.delete(id);
    }
  }
  for (const { c, v } of list) {
    let tr = rows.get(c.id);
    if (!tr) {
      tr = h('tr', { class: 'call', dataset: { callId: c.id } },
        h('td', { class: 'when' }), h('td', { class: 'caller' }), h('td', { class: 'state' }),
        h('td', { class: 'branches' }), h('td', { class: 'num msgs' }), h('td', { class: 'cid' }),
        h('td', {}, h('button', { type: 'button', class: 'open-ladder', text: 'Ladder' })));
      rows.set(c.id, tr);
    }
    tr.dataset.state = v.state;
    tr.classList.toggle('selected', c.id === ladderId);
    const cells = tr.children;
    cells[0].textContent = firstUs(c) ? clock(firstUs(c) / 1000) : '';
    cells[1].textContent = v.caller;
    cells[2].replaceChildren(h('span', { class: `badge s-${v.state}`, text: v.isCall ? v.state : v.method || 'other' }));
    cells[3].replaceChildren(h('div', { class: 'chips' }, ...v.branches.map(branchChip)));
    cells[4].textContent = String(c.messages.length || (c.summary ? c.summary.messages : 0));
    cells[5].textContent = c.id.length > 24 ? `${c.id.slice(0, 22)}…` : c.id;
    cells[5].title = c.id;
    body.append(tr); // moves existing rows into sorted order
  }
  $('calls-empty').hidden = list.length > 0;
}

// ---------------------------------------------------------------- ladder (SVG)

async function openLadder(id) {
  ladderId = id;
  $('ladder-panel').hidden = false;
  $('ladder-call-id').textContent = id;
  const c = calls.get(id);
  renderCalls();
  renderLadder();
  if (c && (c.needsTrace || !c.messages.length)) await loadTrace(c);
  renderLadder();
  $('ladder-panel').scrollIntoView({ block: 'nearest' });
}

function kindOf(m) {
  const code = statusCode(m.label);
  if (code >= 300) return 'failure';
  if (code >= 200) return 'success';
  if (code >= 100) return 'provisional';
  if (m.label === 'CANCEL' || m.label === 'BYE') return 'teardown';
  return 'request';
}

function renderLadder() {
  const wrap = $('ladder-wrap');
  const c = calls.get(ladderId);
  if (!c) {
    wrap.replaceChildren(h('p', { class: 'empty', text: 'This call is no longer listed.' }));
    return;
  }
  if (!c.messages.length) {
    wrap.replaceChildren(h('p', { class: c.traceError ? 'note' : 'empty', text: c.traceError || 'Loading the trace…' }));
    return;
  }
  const v = derive(c.messages);
  // Lanes: the caller left of the server, every other peer to its right, in order of appearance.
  const peers = [];
  for (const m of c.messages) if (!peers.includes(m.peer)) peers.push(m.peer);
  const left = v.caller && peers.includes(v.caller) ? [v.caller] : peers.slice(0, 1);
  const right = peers.filter((p) => !left.includes(p));
  const lanes = [...left.map((p) => ({ peer: p })), { server: true }, ...right.map((p) => ({ peer: p }))];
  const role = new Map(v.branches.map((b, i) => [b.peer, `branch ${i + 1} · ${b.state}`]));
  if (v.caller) role.set(v.caller, v.isCall ? 'caller' : 'client');

  const TIME_W = 96;
  const LANE_W = 210;
  const HEAD = 58;
  const ROW = 40;
  const NOTE = 13;
  const laneX = (i) => TIME_W + LANE_W / 2 + i * LANE_W;
  const serverIdx = left.length;
  const idxOf = (peer) => lanes.findIndex((l) => l.peer === peer);
  const t0 = c.messages[0].at_us;

  const items = [];
  let y = HEAD + 26;
  for (const m of c.messages) {
    const notes = m.notes || [];
    const pi = idxOf(m.peer);
    const [from, to] = m.dir === 'in' ? [pi, serverIdx] : [serverIdx, pi];
    const x1 = laneX(from);
    const x2 = laneX(to);
    const dirSign = x2 > x1 ? 1 : -1;
    const tip = x2 - dirSign * 2;
    const ms = (m.at_us - t0) / 1000;
    const mid = (x1 + x2) / 2;
    const detail = [
      `${m.label}  (CSeq ${m.cseq})`,
      `${m.dir === 'in' ? 'received from' : 'sent to'} ${m.peer} over ${m.transport}`,
      `${dateTime(m.at_us / 1000)}.${pad(Math.floor((m.at_us / 1000) % 1000), 3)} (+${ms.toFixed(1)} ms)`,
      ...notes,
    ].join('\n');
    items.push(
      svg('g', { class: `msg k-${kindOf(m)}`, dataset: { label: m.label, dir: m.dir, peer: m.peer } },
        svg('title', { text: detail }),
        svg('text', { class: 't', x: TIME_W - 10, y: y + 4, 'text-anchor': 'end', text: `+${ms.toFixed(1)} ms` }),
        svg('line', { x1, y1: y, x2: tip - dirSign * 7, y2: y }),
        svg('polygon', { points: `${tip},${y} ${tip - dirSign * 9},${y - 4.5} ${tip - dirSign * 9},${y + 4.5}` }),
        svg('text', { class: 'label', x: mid, y: y - 7, 'text-anchor': 'middle', text: m.label }),
        svg('text', { class: 'cseq', x: mid, y: y + 13, 'text-anchor': 'middle', text: `${m.cseq} · ${m.transport}` }),
        ...notes.map((n, i) => svg('text', { class: 'note', x: mid, y: y + 13 + NOTE * (i + 1), 'text-anchor': 'middle', text: n.length > 60 ? `${n.slice(0, 59)}…` : n })),
      ),
    );
    y += ROW + NOTE * notes.length;
  }
  const height = y + 6;
  const width = TIME_W + lanes.length * LANE_W;
  const heads = lanes.map((l, i) => {
    const x = laneX(i);
    const name = l.server ? 'trustring' : l.peer;
    const sub = l.server ? 'this server' : role.get(l.peer) || 'peer';
    return svg('g', { class: l.server ? 'lane server' : 'lane', dataset: { peer: l.peer || 'server' } },
      svg('rect', { x: x - LANE_W / 2 + 12, y: 6, width: LANE_W - 24, height: HEAD - 14, rx: 6 }),
      svg('text', { class: 'name', x, y: 26, 'text-anchor': 'middle', text: name }),
      svg('text', { class: 'role', x, y: 42, 'text-anchor': 'middle', text: sub }),
      svg('line', { class: 'life', x1: x, y1: HEAD - 8, x2: x, y2: height }));
  });
  const total = (c.messages[c.messages.length - 1].at_us - t0) / 1000;
  const graph = svg('svg', {
    class: 'ladder', xmlns: SVG_NS, width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-label': `Ladder diagram of call ${c.id}: ${c.messages.length} messages over ${total.toFixed(1)} ms`,
  }, svg('text', { class: 't head', x: TIME_W - 10, y: 26, 'text-anchor': 'end', text: 'time' }), ...heads, ...items);
  wrap.replaceChildren(
    h('p', { class: 'muted', text: `${c.messages.length} messages over ${total.toFixed(1)} ms · call ${v.isCall ? v.state : 'dialog'} · hover an arrow for its details` }),
    graph,
  );
}

// ---------------------------------------------------------------- registrations

let regsLoading = false;
async function loadRegistrations() {
  if (regsLoading || !session) return;
  regsLoading = true;
  try {
    const subs = await api('/api/v1/subscribers');
    const regs = await Promise.all(subs.map((s) => api(`/api/v1/subscribers/${encodeURIComponent(s.user)}/registrations`).catch((e) => e)));
    note('regs-note', subs.length ? '' : 'No subscribers yet (POST /api/v1/subscribers).', 'info');
    const cards = subs.map((s, i) => {
      const r = regs[i];
      const err = r instanceof Error;
      const list = err ? [] : r;
      return h('div', { class: 'card sub', dataset: { user: s.user, count: list.length } },
        h('div', { class: 'card-head' },
          h('strong', { text: s.user }), ' ', h('code', { text: s.aor }),
          h('span', { class: 'muted', text: ` · ${s.enterprise} · ring ${s.profile ? s.profile.ring_timeout_secs : '?'} s` }),
          h('span', { class: `badge ${list.length ? 's-answered' : 's-ended'}`, text: err ? 'error' : `${list.length} contact${list.length === 1 ? '' : 's'}` })),
        err ? h('p', { class: 'note', text: describe(r, 'Registrations') })
          : list.length ? h('table', { class: 'grid inner' },
            h('thead', {}, h('tr', {}, ...['contact', 'transport', 'source', 'expires in', 'q'].map((t) => h('th', { text: t })))),
            h('tbody', {}, ...list.map((g) => h('tr', { class: 'reg' },
              h('td', {}, h('code', { text: g.contact })), h('td', { text: g.transport }), h('td', { text: g.source }),
              h('td', { class: 'num', text: duration(g.expires_in_secs) }), h('td', { class: 'num', text: g.q })))))
            : h('p', { class: 'muted', text: 'not registered' }));
    });
    $('regs-list').replaceChildren(...cards);
  } catch (e) {
    if (e.status !== 401) note('regs-note', describe(e, 'Registrations are'), 'warn');
  } finally {
    regsLoading = false;
  }
}

// ---------------------------------------------------------------- CDRs and billing

/** Records per page of the CDR view. */
const CDR_PAGE = 100;
/** Cursor of the next (older) page of CDRs; null when there is none. */
let cdrNext = null;
/** The filters of the page shown (the next page keeps them, whatever the form says now). */
let cdrFilter = '';
/** Bumped by every first-page load: an answer to an older load is then dropped. */
let cdrGen = 0;

/** The newest CDRs of the period (one page, newest first) and the period's totals; `older`
 *  appends the next page. */
async function loadCdrs(older = false) {
  if (!session) return;
  if (older && cdrNext === null) return;
  const q = new URLSearchParams();
  if (older) {
    q.set('after', cdrNext);
  } else {
    cdrGen += 1;
    const f = new URLSearchParams();
    const from = $('cdr-from').value;
    const to = $('cdr-to').value;
    const entity = $('cdr-entity').value.trim();
    if (from) f.set('from', from);
    if (to) f.set('to', to);
    if (entity) f.set('entity', entity);
    cdrFilter = f.toString();
  }
  const gen = cdrGen;
  let report;
  try {
    report = await api(`/api/v1/cdrs?order=desc&limit=${CDR_PAGE}${cdrFilter ? `&${cdrFilter}` : ''}${q.toString() ? `&${q}` : ''}`);
  } catch (e) {
    if (e.status === 401 || gen !== cdrGen) return;
    note('cdr-note', e.status === 400 ? `Filter refused: ${e.message}` : describe(e, 'Call detail records are'), e.unavailable ? 'warn' : 'error');
    $('cdr-body').replaceChildren();
    $('totals-body').replaceChildren();
    $('cdr-rates').textContent = '';
    $('cdr-older').hidden = true;
    cdrNext = null;
    return;
  }
  if (gen !== cdrGen) return; // the view was reloaded meanwhile
  const records = report.records || []; // newest first
  const rows = records.map((r) => h('tr', { class: 'cdr', dataset: { id: r.id, callId: r.call_id } },
    h('td', { class: 'num', text: r.id }),
    h('td', { text: dateTime(r.setup_ms) }),
    h('td', {}, h('code', { text: r.caller })),
    h('td', {}, h('code', { text: r.called })),
    h('td', {}, h('span', { class: `badge ${r.final_status < 300 ? 's-answered' : 's-failed'}`, text: r.final_status })),
    h('td', { class: 'num', text: r.answer_ms === null ? '—' : duration(r.duration_ms / 1000) }),
    h('td', { text: `${r.released_by}: ${r.release_cause}` }),
    h('td', {}, h('ul', { class: 'legs' }, ...(r.legs || []).map((l, i) => h('li', {
      class: i === r.answered_by ? 'won' : '',
      title: `${l.leg_type} leg · billed to ${l.billing_entity} · ${l.billable_ms} ms billable${l.device ? ` · device ${l.device}` : ''}${l.rang_at_ms ? ` · rang ${dateTime(l.rang_at_ms)}` : ''}`,
    }, h('code', { text: l.contact }), ` ${l.outcome}${l.status ? ` (${l.status})` : ''}`)))),
    h('td', {}, h('code', { class: 'hash', title: `${r.hash}\nprevious: ${r.prev_hash}\n${r.sig ? `signed: ${r.sig}` : 'not signed (written before signing began)'}`, text: `${String(r.hash).slice(0, 10)}…` })),
  ));
  if (older) $('cdr-body').append(...rows);
  else $('cdr-body').replaceChildren(...rows);
  cdrNext = report.next ?? null;
  const shown = $('cdr-body').children.length;
  note('cdr-note', shown ? (cdrNext !== null ? `The newest ${shown} records of this period.` : '') : 'No record in this period.', 'info');
  $('cdr-older').hidden = cdrNext === null;
  if (older) return; // the totals (of the whole period) came with the first page
  const rates = report.rates || {};
  $('cdr-rates').textContent = `at ${rates.voip_per_min} per minute (VoIP legs), ${rates.pstn_per_min} per minute (PSTN legs)`;
  const totals = report.totals || [];
  $('totals-body').replaceChildren(...(totals.length ? totals.map((t) => h('tr', { class: 'total', dataset: { entity: t.entity } },
    h('td', { text: t.entity }), h('td', { class: 'num', text: t.calls }),
    h('td', { class: 'num', text: `${duration(t.billable_secs)} (${t.billable_secs} s)` }),
    h('td', { class: 'num', text: Number(t.amount).toFixed(4) }))) : [h('tr', {}, h('td', { colspan: 4, class: 'muted', text: 'nothing billable' }))]));
}

// ---------------------------------------------------------------- pools and phones

async function loadPhones() {
  if (!session) return;
  await Promise.all([loadPool(), loadDevices(), loadEvents()]);
}

async function loadPool() {
  try {
    const p = await api('/api/v1/pools/numbers');
    note('pool-note', '');
    $('pool-counts').replaceChildren(...['free', 'assigned', 'quarantined'].map((k) => h('div', { class: `count c-${k}`, dataset: { kind: k, count: p[k] } },
      h('span', { class: 'n', text: p[k] }), h('span', { class: 'k', text: k }))));
  } catch (e) {
    if (e.status === 401) return;
    $('pool-counts').replaceChildren();
    note('pool-note', describe(e, 'The number pool is'), 'warn');
  }
}

async function loadDevices() {
  let list;
  try {
    list = await api('/api/v1/devices');
  } catch (e) {
    if (e.status === 401) return;
    $('devices-body').replaceChildren();
    note('devices-note', describe(e, 'Enrolled phones are'), 'warn');
    return;
  }
  note('devices-note', list.length ? '' : 'No phone enrolled yet.', 'info');
  $('devices-table').hidden = list.length === 0;
  $('devices-body').replaceChildren(...list.map(deviceRow));
}

function deviceRow(d) {
  const revoked = d.status !== 'active';
  const reason = h('select', { class: 'reason', disabled: revoked, 'aria-label': `revoke reason for ${d.id}` },
    h('option', { value: '', text: 'reason…' }), ...REVOKE_REASONS.map((r) => h('option', { value: r, text: r })));
  const revoke = h('button', { type: 'button', class: 'danger revoke', disabled: true, text: 'Revoke' });
  reason.addEventListener('change', () => {
    revoke.disabled = revoked || !reason.value;
  });
  // Two clicks, no dialog: the first arms the button for a few seconds.
  revoke.addEventListener('click', async () => {
    if (revoke.dataset.armed !== 'yes') {
      revoke.dataset.armed = 'yes';
      revoke.textContent = 'Confirm revoke';
      setTimeout(() => {
        if (revoke.isConnected && revoke.dataset.armed === 'yes') {
          revoke.dataset.armed = '';
          revoke.textContent = 'Revoke';
        }
      }, 5000);
      return;
    }
    revoke.disabled = true;
    await deviceAction(d.id, 'revoke', { method: 'POST', body: { reason: reason.value } });
  });
  const toggle = h('button', {
    type: 'button', class: `toggle ${d.service_on ? 'on' : 'off'}`, disabled: revoked, 'aria-pressed': String(d.service_on),
    title: d.service_on ? 'single-number service is on: click to switch it off' : 'single-number service is off: click to switch it on',
    text: d.service_on ? 'On' : 'Off',
    onclick: async () => {
      toggle.disabled = true;
      await deviceAction(d.id, 'service', { method: 'PUT', body: { on: !d.service_on } });
    },
  });
  return h('tr', { class: 'device', dataset: { id: d.id, status: d.status, service: d.service_on ? 'on' : 'off' } },
    h('td', {}, h('code', { text: d.id })), h('td', { text: d.user }),
    h('td', { text: d.security_level }), h('td', { text: d.eula_version }),
    h('td', { text: dateTime(d.created_at_ms) }),
    h('td', {}, h('span', { class: `badge ${revoked ? 's-failed' : 's-answered'}`, text: revoked ? `revoked: ${d.revoked_reason}` : d.status })),
    h('td', {}, toggle),
    h('td', { class: 'revoke-cell' }, reason, ' ', revoke));
}

/** Issues a one-time enrolment code and shows its URI (code + server key fingerprint) and QR. */
async function issueEnrolment() {
  const user = $('enrol-user').value.trim();
  if (!user) return;
  $('enrol-submit').disabled = true;
  $('enrol-result').hidden = true;
  try {
    const c = await api(`/api/v1/subscribers/${encodeURIComponent(user)}/enrolments`, { method: 'POST', body: {} });
    note('enrol-note', c.uri ? '' : `Code for ${c.user}: ${c.code} (this server has no enrolment endpoint, so no URI).`, 'warn');
    $('enrol-uri').textContent = c.uri || '';
    $('enrol-expires').textContent = dateTime(c.expires_at_ms);
    $('enrol-qr').replaceChildren(...(c.qr ? [qrSvg(c.qr)] : []));
    $('enrol-result').hidden = !c.uri;
  } catch (e) {
    if (e.status !== 401) note('enrol-note', `No code for ${user}: ${e.message}`, 'error');
  }
  $('enrol-submit').disabled = false;
}

/** The QR code as SVG from the API's rows of modules ('1' dark), with a 4-module quiet zone. */
function qrSvg(rows) {
  const n = rows.length + 8;
  const dark = [];
  rows.forEach((row, y) => [...row].forEach((m, x) => {
    if (m === '1') dark.push(`M${x + 4} ${y + 4}h1v1h-1z`);
  }));
  return svg('svg', { class: 'qr', viewBox: `0 0 ${n} ${n}`, width: n * 5, height: n * 5, role: 'img', 'aria-label': 'enrolment URI as a QR code', 'shape-rendering': 'crispEdges' },
    svg('rect', { width: n, height: n, fill: '#fff' }),
    svg('path', { d: dark.join(''), fill: '#000' }));
}

async function deviceAction(id, what, opts) {
  try {
    await api(`/api/v1/devices/${encodeURIComponent(id)}/${what}`, opts);
    note('devices-note', '');
  } catch (e) {
    if (e.status !== 401) note('devices-note', `${what} of ${id} refused: ${e.message}`, 'error');
  }
  await Promise.all([loadDevices(), loadPool(), loadEvents()]);
}

/** Cursor of the next (older) page of security events; null when there is none. */
let eventsNext = null;

/** The newest security events (one page, newest first); `older` appends the next page. */
async function loadEvents(older = false) {
  try {
    const q = older && eventsNext !== null ? `&after=${eventsNext}` : '';
    const page = await api(`/api/v1/security-events?order=desc&limit=50${q}`);
    const rows = page.events.map((e) => h('tr', { class: 'event' },
      h('td', { class: 'num', text: e.id }), h('td', { text: dateTime(e.at_ms) }),
      h('td', {}, h('span', { class: 'badge s-failed', text: e.kind })),
      h('td', { text: e.user || '' }), h('td', {}, h('code', { text: e.device_id || '' })),
      h('td', {}, h('code', { text: e.call_id || '' })), h('td', { text: e.detail })));
    if (older) $('events-body').append(...rows);
    else $('events-body').replaceChildren(...rows);
    eventsNext = page.next;
    const shown = $('events-body').children.length;
    note('events-note', shown ? (eventsNext !== null ? `The newest ${shown}.` : '') : 'No security event.', 'info');
    $('events-table').hidden = shown === 0;
    $('events-older').hidden = eventsNext === null;
  } catch (e) {
    if (e.status === 401) return;
    $('events-body').replaceChildren();
    $('events-older').hidden = true;
    note('events-note', describe(e, 'Security events are'), 'warn');
  }
}

// ---------------------------------------------------------------- wiring

function init() {
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (t) login(t);
  });
  $('logout').addEventListener('click', () => logout(''));
  for (const b of document.querySelectorAll('nav.tabs button')) {
    b.addEventListener('click', () => showTab(b.dataset.tab));
  }
  $('show-other').addEventListener('change', renderCalls);
  $('ladder-close').addEventListener('click', () => {
    ladderId = null;
    $('ladder-panel').hidden = true;
    renderCalls();
  });
  $('calls-body').addEventListener('click', (ev) => {
    const tr = ev.target.closest('tr.call');
    if (tr) openLadder(tr.dataset.callId);
  });
  $('regs-refresh').addEventListener('click', loadRegistrations);
  $('events-older').addEventListener('click', () => loadEvents(true));
  $('phones-refresh').addEventListener('click', loadPhones);
  $('enrol-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    issueEnrolment();
  });
  $('cdr-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    loadCdrs();
  });
  $('cdr-older').addEventListener('click', () => loadCdrs(true));
  $('cdr-clear').addEventListener('click', () => {
    $('cdr-from').value = '';
    $('cdr-to').value = '';
    $('cdr-entity').value = '';
    loadCdrs();
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    token = saved;
    start();
  } else {
    $('login').hidden = false;
  }
}

init();
