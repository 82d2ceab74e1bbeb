// A stand-in for `trustring serve`'s HTTP side, for working on the console without a SIP
// server: it serves crates/api/console/ with the same headers, answers the admin API with
// canned data (bearer token checked, the API's error shape), and plays a forked call over the
// live feed when asked (`POST /__mock/call`).
//
//   node tests/browser/mock-server.mjs [PORT]     # then open http://127.0.0.1:PORT/console
//                                                 # (token: mock-token)
// `node console.test.mjs` uses it when CONSOLE_URL is not set.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const consoleDir = join(here, '../../crates/api/console');
const CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";
const FILES = {
  '/console': ['index.html', 'text/html; charset=utf-8'],
  '/console/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/console/style.css': ['style.css', 'text/css; charset=utf-8'],
};

export function startMock({ port = 0, token = 'mock-token' } = {}) {
  const state = {
    subscribers: [
      { user: 'alice', aor: 'sip:alice@localhost', enterprise: 'acme', profile: { ring_timeout_secs: 30, ring_delays: [] }, created_at: 0 },
      { user: 'bob', aor: 'sip:bob@localhost', enterprise: 'acme', profile: { ring_timeout_secs: 30, ring_delays: [] }, created_at: 0 },
    ],
    registrations: {
      alice: [
        { contact: 'sip:alice@127.0.0.1:5081', transport: 'UDP', source: '127.0.0.1:5081', expires_in_secs: 3590, q: 1 },
        { contact: 'sip:alice@127.0.0.1:5082', transport: 'UDP', source: '127.0.0.1:5082', expires_in_secs: 3588, q: 1 },
      ],
      bob: [],
    },
    devices: [
      { id: 'd-7f3a9c', user: 'alice', security_level: 'software', zone_public_key: 'x', eula_version: '2026-1', eula_accepted_at_ms: Date.now() - 86400000, service_on: true, status: 'active', revoked_reason: null, revoked_at_ms: null, created_at_ms: Date.now() - 86400000 },
    ],
    pool: { free: 9998, assigned: 1, quarantined: 1 },
    events: [],
    traces: new Map(),
    cdrs: [],
    streams: new Set(),
    lastUs: 0,
  };

  const json = (res, status, body) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  const error = (res, status, code, message) => json(res, status, { error: { code, message } });
  const readBody = (req) => new Promise((resolve) => {
    let s = '';
    req.on('data', (c) => { s += c; });
    req.on('end', () => { try { resolve(JSON.parse(s || 'null')); } catch { resolve(undefined); } });
  });

  function record(callId, msg) {
    state.lastUs = Math.max(state.lastUs + 1, Date.now() * 1000);
    const m = { at_us: state.lastUs, transport: 'UDP', cseq: '1 INVITE', notes: [], ...msg };
    if (!state.traces.has(callId)) state.traces.set(callId, []);
    state.traces.get(callId).push(m);
    const data = JSON.stringify({ call_id: callId, ...m });
    for (const s of state.streams) s.write(`event: message\ndata: ${data}\n\n`);
  }

  async function playCall() {
    const id = `mock-${Date.now()}@127.0.0.1`;
    const caller = '127.0.0.1:5070';
    const desk = '127.0.0.1:5081';
    const mobile = '127.0.0.1:5082';
    const step = (ms) => new Promise((r) => setTimeout(r, ms));
    // A subscriber calling: challenged first (the console must not take the 407 for the end).
    record(id, { dir: 'in', peer: caller, label: 'INVITE' });
    record(id, { dir: 'out', peer: caller, label: '407 Proxy Authentication Required' });
    record(id, { dir: 'in', peer: caller, label: 'ACK', cseq: '1 ACK' });
    await step(50);
    record(id, { dir: 'in', peer: caller, label: 'INVITE', cseq: '2 INVITE' });
    record(id, { dir: 'out', peer: caller, label: '100 Trying', cseq: '2 INVITE' });
    record(id, { dir: 'out', peer: desk, label: 'INVITE' });
    record(id, { dir: 'out', peer: mobile, label: 'INVITE', notes: ['trust challenge'] });
    await step(150);
    record(id, { dir: 'in', peer: desk, label: '180 Ringing' });
    record(id, { dir: 'out', peer: caller, label: '180 Ringing', cseq: '2 INVITE' });
    record(id, { dir: 'in', peer: mobile, label: '180 Ringing' });
    await step(900);
    record(id, { dir: 'in', peer: desk, label: '200 OK' });
    record(id, { dir: 'out', peer: mobile, label: 'CANCEL', cseq: '1 CANCEL', notes: ['Reason: SIP;cause=200;text="Call completed elsewhere"'] });
    record(id, { dir: 'out', peer: caller, label: '200 OK', cseq: '2 INVITE', notes: ['P-Asserted-Identity: <sip:alice@localhost>'] });
    record(id, { dir: 'in', peer: mobile, label: '200 OK', cseq: '1 CANCEL' });
    record(id, { dir: 'in', peer: mobile, label: '487 Request Terminated' });
    record(id, { dir: 'out', peer: mobile, label: 'ACK', cseq: '1 ACK' });
    record(id, { dir: 'in', peer: caller, label: 'ACK', cseq: '2 ACK' });
    record(id, { dir: 'out', peer: desk, label: 'ACK', cseq: '1 ACK' });
    await step(1000);
    record(id, { dir: 'in', peer: caller, label: 'BYE', cseq: '3 BYE' });
    record(id, { dir: 'out', peer: desk, label: 'BYE', cseq: '2 BYE' });
    record(id, { dir: 'in', peer: desk, label: '200 OK', cseq: '2 BYE' });
    record(id, { dir: 'out', peer: caller, label: '200 OK', cseq: '3 BYE' });
    const msgs = state.traces.get(id);
    const setup = Math.floor(msgs[0].at_us / 1000);
    const answer = setup + 1050;
    const end = Math.floor(msgs[msgs.length - 1].at_us / 1000);
    state.cdrs.push({
      id: state.cdrs.length + 1, call_id: id, caller: 'sip:carol@example.org', called: 'sip:alice@localhost',
      setup_ms: setup, answer_ms: answer, end_ms: end, duration_ms: end - answer, final_status: 200,
      released_by: 'caller', release_cause: 'BYE', answered_by: 0,
      legs: [
        { contact: `sip:alice@${desk}`, device: null, leg_type: 'voip', rang_at_ms: setup, outcome: 'answered', status: 200, billing_entity: 'acme', billable_ms: end - answer },
        { contact: `sip:alice@${mobile}`, device: 'd-7f3a9c', leg_type: 'voip', rang_at_ms: setup, outcome: 'cancelled-elsewhere', status: 487, billing_entity: 'acme', billable_ms: 0 },
      ],
      prev_hash: '0'.repeat(64), hash: 'ab'.repeat(32), sig: 'cd'.repeat(64),
    });
    return id;
  }

  // What GET /api/v1/calls says of a call (the server's summary, simplified).
  function summary(id, msgs) {
    const caller = msgs[0].peer;
    const branches = new Map();
    let state = 'ringing';
    for (const m of msgs) {
      const code = Number(m.label.slice(0, 3)) || 0;
      if (m.dir === 'out' && m.label === 'INVITE' && m.peer !== caller && !branches.has(m.peer)) branches.set(m.peer, 'trying');
      else if (m.dir === 'out' && m.label === 'CANCEL' && branches.get(m.peer) !== 'answered') branches.set(m.peer, 'cancelled');
      else if (m.dir === 'in' && code && m.cseq.endsWith('INVITE') && branches.has(m.peer)) {
        if (code < 200 && branches.get(m.peer) === 'trying') branches.set(m.peer, 'ringing');
        else if (code >= 200 && code < 300) { branches.set(m.peer, 'answered'); state = 'answered'; }
        else if (code >= 300 && branches.get(m.peer) !== 'cancelled') branches.set(m.peer, 'failed');
      } else if (m.label === 'BYE') state = 'ended';
    }
    return {
      call_id: id, first_us: msgs[0].at_us, last_us: msgs[msgs.length - 1].at_us, messages: msgs.length, state, caller,
      branches: [...branches].map(([peer, st]) => ({ peer, state: st })),
    };
  }

  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const path = url.pathname;
    if (FILES[path] && (req.method === 'GET' || req.method === 'HEAD')) {
      const [file, type] = FILES[path];
      res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store', 'Content-Security-Policy': CSP, 'X-Content-Type-Options': 'nosniff' });
      res.end(req.method === 'HEAD' ? undefined : readFileSync(join(consoleDir, file)));
      return;
    }
    if (path === '/healthz') return json(res, 200, { status: 'ok' });
    if (path === '/__mock/call' && req.method === 'POST') return json(res, 200, { call_id: await playCall() });
    if (req.headers.authorization !== `Bearer ${token}`) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      return error(res, 401, 'unauthorized', 'missing or invalid bearer token');
    }
    let m;
    if (path === '/api/v1/subscribers') return json(res, 200, state.subscribers);
    if ((m = path.match(/^\/api\/v1\/subscribers\/([^/]+)\/registrations$/))) {
      const r = state.registrations[decodeURIComponent(m[1])];
      return r ? json(res, 200, r) : error(res, 404, 'not_found', 'no such subscriber');
    }
    if ((m = path.match(/^\/api\/v1\/subscribers\/([^/]+)\/enrolments$/)) && req.method === 'POST') {
      const user = decodeURIComponent(m[1]);
      if (!state.subscribers.some((s) => s.user === user)) return error(res, 404, 'not_found', `subscriber ${user} not found`);
      const code = 'MOCK0-CODE0-MOCK0-CODE0';
      // Not a real QR code: a 21x21 pattern with the three finder squares is enough to draw.
      const finder = (x, y) => (x < 7 && y < 7) || (x > 13 && y < 7) || (x < 7 && y > 13);
      const qr = Array.from({ length: 21 }, (_, y) => Array.from({ length: 21 }, (_, x) => (finder(x, y) || (x + y) % 3 === 0 ? '1' : '0')).join(''));
      return json(res, 201, {
        code, user, expires_at_ms: Date.now() + 86400000,
        uri: `trustring-enrol://127.0.0.1:8443?code=${code}&fp=sha256:${'ab'.repeat(32)}`, qr,
      });
    }
    if (path === '/api/v1/pools/numbers') return json(res, 200, state.pool);
    if (path === '/api/v1/devices') return json(res, 200, state.devices);
    if ((m = path.match(/^\/api\/v1\/devices\/([^/]+)\/(revoke|service)$/))) {
      const d = state.devices.find((x) => x.id === decodeURIComponent(m[1]));
      if (!d) return error(res, 404, 'not_found', 'no such device');
      const body = await readBody(req);
      if (d.status !== 'active') return error(res, 409, 'conflict', 'device is revoked');
      if (m[2] === 'revoke') {
        Object.assign(d, { status: 'revoked', revoked_reason: body.reason, revoked_at_ms: Date.now() });
        state.pool.assigned -= 1;
        state.pool.quarantined += 1;
      } else d.service_on = !!body.on;
      return json(res, 200, d);
    }
    if (path === '/api/v1/security-events') {
      // The API's paging: `after` (cursor), `limit`, `order`; `next` is the next cursor.
      const desc = url.searchParams.get('order') === 'desc';
      const limit = Math.min(Math.max(Number(url.searchParams.get('limit') || 100), 1), 1000);
      const after = url.searchParams.get('after');
      const sorted = [...state.events].sort((a, b) => (desc ? b.id - a.id : a.id - b.id));
      const rest = after === null ? sorted : sorted.filter((e) => (desc ? e.id < after : e.id > after));
      const events = rest.slice(0, limit);
      return json(res, 200, { events, next: rest.length > limit ? events[events.length - 1].id : null });
    }
    if (path === '/api/v1/cdrs') {
      // The API's paging: `after` (cursor), `limit`, `order`; `next` is the next cursor; the
      // totals (of the whole period) come with the first page only.
      const entity = url.searchParams.get('entity');
      const matching = state.cdrs.filter((c) => !entity || c.legs.some((l) => l.billing_entity === entity));
      const byEntity = new Map();
      for (const c of matching) {
        for (const l of c.legs) {
          if (!l.billable_ms) continue;
          const t = byEntity.get(l.billing_entity) || { entity: l.billing_entity, calls: 0, billable_secs: 0, amount: 0 };
          t.calls += 1;
          t.billable_secs += Math.ceil(l.billable_ms / 1000);
          t.amount = Math.round(t.billable_secs / 60 * 0.02 * 10000) / 10000;
          byEntity.set(l.billing_entity, t);
        }
      }
      const desc = url.searchParams.get('order') === 'desc';
      const limit = Math.min(Math.max(Number(url.searchParams.get('limit') || 100), 1), 1000);
      const after = url.searchParams.get('after');
      const sorted = [...matching].sort((a, b) => (desc ? b.id - a.id : a.id - b.id));
      const rest = after === null ? sorted : sorted.filter((c) => (desc ? c.id < after : c.id > after));
      const records = rest.slice(0, limit);
      return json(res, 200, {
        records,
        next: rest.length > limit ? records[records.length - 1].id : null,
        totals: after === null ? [...byEntity.values()] : null,
        rates: { voip_per_min: 0.02, pstn_per_min: 0.1 },
      });
    }
    if (path === '/api/v1/calls/stream') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      res.write(': keepalive\n\n');
      state.streams.add(res);
      const ka = setInterval(() => res.write(': keepalive\n\n'), 15000);
      req.on('close', () => { clearInterval(ka); state.streams.delete(res); });
      return undefined;
    }
    if (path === '/api/v1/calls') return json(res, 200, [...state.traces].reverse().map(([id, msgs]) => summary(id, msgs)));
    if ((m = path.match(/^\/api\/v1\/calls\/(.+)\/trace$/))) {
      const id = decodeURIComponent(m[1]);
      const msgs = state.traces.get(id);
      return msgs ? json(res, 200, { call_id: id, messages: msgs }) : error(res, 404, 'not_found', `no trace of call ${id}`);
    }
    return error(res, 404, 'not_found', 'no such route');
  });
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      const { port: p } = server.address();
      resolve({
        url: `http://127.0.0.1:${p}`,
        token,
        playCall,
        close: () => new Promise((r) => {
          for (const s of state.streams) s.end();
          server.closeAllConnections();
          server.close(r);
        }),
      });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const mock = await startMock({ port: Number(process.argv[2] || 8099) });
  console.log(`mock console server on ${mock.url}/console (token: ${mock.token}); POST ${mock.url}/__mock/call plays a call`);
}
