/// The status page of the admin listener (SPEC §7 "Status page and live events"): one small
/// HTML document, one script and one style sheet, served from the binary with
/// `Content-Security-Policy: default-src 'self'`. Nothing external (no font, no CDN), no inline
/// script or style, no framework: plain DOM code that builds every element itself (never HTML
/// text), keyed by `data-identity` and `data-route` so that a re-render keeps focus and buttons.
enum StatusPage {
    /// `GET /` (with `Accept: text/html`): the page's markup. No inline script or style (the page is
    /// served with `Content-Security-Policy: default-src 'self'`): it loads ``script`` and ``style``.
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>tokenproxy status</title>
<link rel="stylesheet" href="/ui/app.css">
<script src="/ui/app.js" defer></script>
</head>
<body>
<header class="top">
  <div class="wrap top-row">
    <h1>tokenproxy</h1>
    <span id="version" class="muted"></span>
    <span class="spacer"></span>
    <span id="connection" class="pill" data-state="connecting">connecting</span>
    <span id="updated" class="muted small"></span>
  </div>
</header>
<main class="wrap">
  <noscript><p class="notice">This page needs JavaScript. The same figures are at <a href="/status">/status</a> (JSON) and <a href="/metrics">/metrics</a>.</p></noscript>
  <div id="action-result" class="notice" role="status" aria-live="polite" hidden></div>
  <form id="admin-auth" class="notice auth" hidden>
    <label for="admin-token"><strong>Admin token needed.</strong> <span id="admin-auth-why"></span>
      Paste the content of <code>admin.tokenFile</code>; this page keeps it in memory only, until it is closed or reloaded.</label>
    <div class="auth-row">
      <input type="password" id="admin-token" name="admin-token" autocomplete="off" spellcheck="false" required>
      <button type="submit" id="admin-token-submit">Use token</button>
      <button type="button" id="admin-token-cancel" class="quiet">Cancel</button>
    </div>
  </form>

  <section aria-labelledby="identities-title">
    <h2 id="identities-title">Identities</h2>
    <div id="identities" class="grid"><p class="muted">Loading…</p></div>
  </section>

  <section aria-labelledby="routes-title">
    <h2 id="routes-title">Routes</h2>
    <div id="routes" class="grid"></div>
  </section>

  <div class="split">
    <section aria-labelledby="faults-title">
      <h2 id="faults-title">Fault injection</h2>
      <form id="faults-form" class="card faults">
        <p id="faults-current" class="muted"></p>
        <label class="check"><input type="checkbox" id="faults-enabled"> Enabled</label>
        <label class="percent"><span>Injected 401s</span> <span class="nowrap"><input type="number" id="faults-percent" min="0" max="100" step="any" inputmode="decimal"> % of first attempts</span></label>
        <div><button type="submit" id="faults-apply">Apply</button> <span id="faults-note" class="muted small"></span></div>
      </form>
    </section>

    <section aria-labelledby="events-title">
      <h2 id="events-title">Live events</h2>
      <div class="card">
        <ol id="event-log" class="events"><li class="muted empty">No events yet.</li></ol>
      </div>
    </section>
  </div>
</main>
<footer class="wrap muted small">
  JSON: <a href="/status">/status</a> · <a href="/metrics">/metrics</a> · <a href="/events">/events</a> · <a href="/readyz">/readyz</a>
</footer>
</body>
</html>
"""#

    /// `GET /ui/app.js`: reads `/status`, follows `/events`, counts down each token's life and calls
    /// the admin API (with the `admin.tokenFile` bearer, asked for in the page and kept only in a
    /// variable).
    static let script = #"""
// tokenproxy status page: reads GET /status, follows GET /events, calls the admin API.
// Plain DOM, no framework; nothing is written as HTML text, and nothing is kept beyond this page
// (the admin token lives in one variable).
'use strict';
(function () {
  const EVENT_TYPES = ['refresh', 'adopted', 'refresh_failed', 'recovered_401', 'faults', 'login_needed'];
  const POLL_VISIBLE_MS = 2000;   // fallback refetch while the page is seen
  const POLL_HIDDEN_MS = 5000;    // ... and while it is in a background tab
  const MIN_GAP_MS = 200;         // coalesces bursts of events into one /status fetch
  const MAX_EVENTS = 20;
  const MAX_REFRESHES = 6;
  const SPARK_WINDOW_MS = 120000;
  const SPARK_STEP_MS = 2000;
  const STATE_LABELS = { valid: 'valid', refreshing: 'refreshing', failing: 'failing', login_needed: 're-login needed', no_token: 'no token' };
  const TRIGGER_LABELS = { expiry: 'at expiry', proactive: 'ahead of expiry', '401': 'after a 401', forced: 'forced', login: 'login', exchange: 'exchange', store: 'from the store' };
  const SVG = 'http://www.w3.org/2000/svg';

  let adminToken = null;       // the admin.tokenFile bearer, once given: memory only
  let pendingAction = null;    // the action waiting for that token
  let status = null;           // the last /status
  let skewMs = 0;              // server clock minus browser clock
  let bestRtt = Infinity;
  let skewAt = 0;
  let eventsOpen = false;
  let reachable = null;
  let lastStatusAt = 0;
  let faultsDirty = false;
  const events = [];           // newest first
  const seenEvents = new Set();
  const lifetimes = new Map(); // identity -> {expiresAt, seconds}
  const samples = new Map();   // route -> [{t, n}]

  const byId = (id) => document.getElementById(id);

  // Builds an element: h('span', {className: 'x', text: 'y', data: {a: 'b'}}, child...).
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (key === 'text') node.textContent = value;
        else if (key === 'data') for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
        else if (key === 'className') node.className = value;
        else node.setAttribute(key, value);
      }
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }

  // ---- time ----
  const serverNow = () => Date.now() + skewMs;
  const p2 = (n) => String(n).padStart(2, '0');
  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const hours = Math.floor(s / 3600), minutes = Math.floor(s % 3600 / 60);
    return hours > 0 ? hours + ':' + p2(minutes) + ':' + p2(s % 60) : p2(minutes) + ':' + p2(s % 60);
  }
  function span(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s >= 2 * 86400) return Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
    if (s >= 3600) return Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min';
    if (s >= 60) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return s + ' s';
  }
  function timeOfDay(ms) {
    const d = new Date(ms);
    return p2(d.getHours()) + ':' + p2(d.getMinutes()) + ':' + p2(d.getSeconds());
  }
  function when(ms) {
    const d = new Date(ms), today = new Date();
    if (d.toDateString() === today.toDateString()) return timeOfDay(ms);
    return d.getFullYear() + '-' + p2(d.getMonth() + 1) + '-' + p2(d.getDate()) + ' ' + p2(d.getHours()) + ':' + p2(d.getMinutes());
  }
  const parse = (text) => { const t = Date.parse(text); return Number.isNaN(t) ? null : t; };
  function ms(value) {
    if (typeof value !== 'number' || !Number.isFinite(value)) return '—';
    return value < 10 ? value.toFixed(1) : String(Math.round(value));
  }

  // ---- /status ----
  let inflight = false, again = false, lastFetch = 0, gapTimer = null;
  function requestStatus() {
    if (inflight) { again = true; return; }
    const wait = lastFetch + MIN_GAP_MS - Date.now();
    if (wait > 0) {
      if (!gapTimer) gapTimer = setTimeout(() => { gapTimer = null; requestStatus(); }, wait);
      return;
    }
    loadStatus();
  }
  async function loadStatus() {
    inflight = true;
    lastFetch = Date.now();
    const sent = Date.now();
    try {
      const response = await fetch('/status', { cache: 'no-store', headers: { Accept: 'application/json' } });
      const body = await response.json();
      const received = Date.now();
      if (!response.ok) throw new Error(body && body.message ? body.message : 'HTTP ' + response.status);
      const serverTime = parse(body.time);
      const rtt = received - sent;
      // The estimate from the quickest answer is the closest; a new one is taken now and then
      // in case either clock was set.
      if (serverTime !== null && (rtt <= bestRtt + 20 || received - skewAt > 30000)) {
        skewMs = serverTime - (sent + received) / 2;
        bestRtt = Math.min(bestRtt, rtt);
        skewAt = received;
      }
      status = body;
      lastStatusAt = received;
      setReachable(true);
      render();
    } catch (error) {
      setReachable(false, error);
    } finally {
      inflight = false;
      if (again) { again = false; requestStatus(); }
    }
  }
  function setReachable(ok, error) {
    reachable = ok;
    const pill = byId('connection');
    if (!ok) {
      pill.dataset.state = 'offline';
      setText(pill, 'unreachable');
      pill.title = 'GET /status failed: ' + (error && error.message ? error.message : error) + '; retrying';
    } else if (eventsOpen) {
      pill.dataset.state = 'live';
      setText(pill, 'live');
      pill.title = 'following /events';
    } else {
      pill.dataset.state = 'polling';
      setText(pill, 'polling');
      pill.title = '/events is not connected; /status is read every ' + POLL_VISIBLE_MS / 1000 + ' s';
    }
  }

  // ---- rendering ----
  function identitiesOf(data) {
    if (data.identities && typeof data.identities === 'object') return data.identities;
    if (data.token) return { default: Object.assign({}, data.token, { store: data.store }) };
    return {};
  }
  function stateOf(identity) {
    if (identity.state) return identity.state;
    if (identity.reauthenticationRequired) return 'login_needed';
    if (identity.failure) return 'failing';
    if (identity.refreshing) return 'refreshing';
    return identity.expiresAt ? 'valid' : 'no_token';
  }
  function refreshesOf(identity) {
    if (Array.isArray(identity.refreshes)) return identity.refreshes;
    const last = identity.lastRefresh;
    return last ? [{ at: last.at, result: last.succeeded ? 'refreshed' : 'failed', detail: last.detail }] : [];
  }
  function sortedNames(object) {
    return Object.keys(object).sort((a, b) => (a === 'default' ? -1 : b === 'default' ? 1 : a.localeCompare(b)));
  }
  // Keeps one child per key in `container`, in order, made by `make` and filled by `fill`.
  function keyed(container, attribute, names, make, fill) {
    const existing = new Map();
    for (const child of Array.from(container.children)) {
      const key = child.getAttribute(attribute);
      if (key === null || !names.includes(key)) child.remove(); else existing.set(key, child);
    }
    let previous = null;
    for (const name of names) {
      let node = existing.get(name);
      if (!node) { node = make(name); node.setAttribute(attribute, name); }
      fill(node, name);
      const expected = previous ? previous.nextSibling : container.firstChild;
      if (expected !== node) container.insertBefore(node, expected);
      previous = node;
    }
  }

  function render() {
    if (!status) return;
    setText(byId('version'), status.version ? 'v' + status.version : '');
    renderIdentities();
    renderRoutes();
    renderFaults();
    tick();
  }

  function renderIdentities() {
    const all = identitiesOf(status);
    const names = sortedNames(all);
    const container = byId('identities');
    if (names.length === 0) { container.replaceChildren(h('p', { className: 'muted', text: 'No identity is configured.' })); return; }
    keyed(container, 'data-identity', names, makeIdentity, (card, name) => fillIdentity(card, name, all[name]));
  }
  function makeIdentity(name) {
    const refresh = h('button', { type: 'button', className: 'refresh', text: 'Refresh now' });
    const expire = h('button', { type: 'button', className: 'expire', text: 'Expire token' });
    refresh.addEventListener('click', () => act(refresh, 'Refresh now (' + name + ')', 'POST', '/token/refresh?identity=' + encodeURIComponent(name)));
    expire.addEventListener('click', () => act(expire, 'Expire token (' + name + ')', 'POST', '/token/expire?identity=' + encodeURIComponent(name)));
    return h('article', { className: 'card identity' },
      h('div', { className: 'card-head' }, h('h3', { className: 'name', text: name }), h('span', { className: 'badge state' })),
      h('div', { className: 'expiry' },
        h('span', { className: 'countdown', title: 'time left on the access token' }),
        h('span', { className: 'expires-at muted small' })),
      h('div', { className: 'bar' }, h('div', { className: 'bar-fill' })),
      h('p', { className: 'failure', hidden: '' }),
      h('dl', { className: 'facts' },
        h('dt', { text: 'refresh token' }), h('dd', { className: 'refresh-token' }),
        h('dt', { text: 'store' }), h('dd', { className: 'store' })),
      h('div', { className: 'actions' }, refresh, expire),
      h('h4', { text: 'Last refreshes' }),
      h('ol', { className: 'list refreshes' }),
      h('div', { className: 'sinks-block', hidden: '' }, h('h4', { text: 'Sinks' }), h('ul', { className: 'list sinks' })));
  }
  function fillIdentity(card, name, identity) {
    const state = stateOf(identity);
    const badge = card.querySelector('.state');
    badge.dataset.state = state;
    // A token marked expired (or past its time) and not replaced yet: said as it is.
    const lapsed = state === 'no_token' && identity.expiresAt;
    setText(badge, lapsed ? 'expired' : STATE_LABELS[state] || state);
    card.dataset.state = state;
    card.dataset.expiresAt = identity.expiresAt || '';

    const expiresAt = identity.expiresAt ? parse(identity.expiresAt) : null;
    setText(card.querySelector('.expires-at'), expiresAt === null ? '' : 'until ' + when(expiresAt));
    card.querySelector('.expires-at').title = identity.expiresAt || '';
    // The lifetime, for the bar: from the refresh that brought this token, else the longest seen.
    if (expiresAt !== null) {
      const source = refreshesOf(identity).find((r) => (r.result === 'refreshed' || r.result === 'adopted') && (!r.expiresAt || r.expiresAt === identity.expiresAt));
      const from = source ? parse(source.at) : null;
      const known = lifetimes.get(name);
      let seconds = from !== null && expiresAt > from ? (expiresAt - from) / 1000 : (expiresAt - serverNow()) / 1000;
      if (known && known.expiresAt === expiresAt) seconds = Math.max(seconds, known.seconds);
      lifetimes.set(name, { expiresAt, seconds });
    }

    const failure = card.querySelector('.failure');
    if (identity.failure && (state === 'failing' || state === 'login_needed')) {
      failure.hidden = false;
      failure.dataset.state = state;
      setText(failure, (state === 'login_needed' ? 'Sign in again (tokenproxy login): ' : 'Failing: ') + identity.failure);
    } else {
      failure.hidden = true;
    }

    const store = identity.store || {};
    const storeCell = card.querySelector('.store');
    const storeText = typeof store === 'string' ? store : (store.name || '—');
    storeCell.replaceChildren(h('span', { className: 'mono', text: storeText }));
    if (store.problem) storeCell.append(h('div', { className: 'problem', text: store.problem }));
    card.dataset.refreshTokenExpiresAt = identity.refreshTokenExpiresAt || '';
    card.dataset.refreshTokenHeld = identity.refreshTokenHeld ? 'true' : 'false';

    const list = card.querySelector('.refreshes');
    const entries = refreshesOf(identity).slice(0, MAX_REFRESHES);
    list.dataset.count = String(refreshesOf(identity).length);
    list.dataset.newest = entries.length ? (entries[0].at || '') + ' ' + (entries[0].result || '') : '';
    if (entries.length === 0) {
      list.replaceChildren(h('li', { className: 'empty', text: 'none since this process started' }));
    } else {
      list.replaceChildren(...entries.map((entry) => {
        const at = parse(entry.at);
        const result = entry.result || '';
        return h('li', { data: { result, trigger: entry.trigger || '' } },
          h('span', { className: 'when', text: at === null ? '' : when(at), title: entry.at || '' }),
          h('span', { className: 'trigger', text: TRIGGER_LABELS[entry.trigger] || entry.trigger || '' }),
          h('span', { className: 'badge result', data: { result }, text: result }),
          typeof entry.durationMs === 'number' ? h('span', { className: 'duration muted num', text: ms(entry.durationMs) + ' ms' }) : null,
          entry.detail ? h('span', { className: 'detail', text: entry.detail }) : null);
      }));
    }

    const sinks = Array.isArray(identity.sinks) ? identity.sinks : [];
    card.querySelector('.sinks-block').hidden = sinks.length === 0;
    card.querySelector('.sinks').replaceChildren(...sinks.map((sink) => {
      const written = sink.writtenAt ? parse(sink.writtenAt) : null;
      return h('li', { data: { ok: sink.ok ? 'true' : 'false' } },
        h('span', { className: 'mono', text: sink.path }),
        h('span', { className: sink.ok ? 'muted' : 'sink-bad', text: sink.ok ? 'written ' + (written === null ? '' : when(written)) : 'not written' }),
        sink.error ? h('span', { className: 'detail sink-bad', text: sink.error }) : null);
    }));
  }

  function renderRoutes() {
    const routes = status.routes && typeof status.routes === 'object' ? status.routes : {};
    const names = sortedNames(routes);
    const container = byId('routes');
    const now = Date.now();
    for (const name of names) record(name, now, routes[name].requests);
    for (const name of Array.from(samples.keys())) if (!names.includes(name)) samples.delete(name);
    if (names.length === 0) {
      const requests = status.counters && typeof status.counters.requests === 'number' ? status.counters.requests : 0;
      container.replaceChildren(h('p', { className: 'muted', text: 'No routes: every request goes to ' + (status.upstream || 'the upstream') + ' (' + requests + ' requests).' }));
      return;
    }
    keyed(container, 'data-route', names, makeRoute, (card, name) => fillRoute(card, name, routes[name]));
  }
  function stat(className, label) {
    return h('div', { className: 'stat ' + className }, h('span', { className: 'label', text: label }), h('span', { className: 'value' }));
  }
  function makeRoute() {
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', '0 0 120 30');
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    return h('article', { className: 'card route' },
      h('div', { className: 'card-head' }, h('h3', { className: 'name' }), h('span', { className: 'identity muted small' })),
      h('p', { className: 'match' }),
      h('div', { className: 'stats' }, stat('requests', 'requests'), stat('recovered', '401s recovered'), stat('p50', 'p50 latency'), stat('p99', 'p99 latency')),
      h('div', { className: 'spark-row' }, svg, h('span', { className: 'rate' })),
      h('div', { className: 'errors' }));
  }
  function fillValue(card, selector, value, text) {
    const node = card.querySelector(selector + ' .value');
    setText(node, text);
    node.classList.toggle('zero', !value);
  }
  function fillRoute(card, name, route) {
    setText(card.querySelector('.name'), name);
    setText(card.querySelector('.identity'), route.identity ? 'token of ' + route.identity : '');
    const where = [route.listen, route.host ? 'host ' + route.host : null, (route.pathPrefix || '/') + (route.stripPrefix ? ' (stripped)' : '')].filter(Boolean).join(' · ');
    setText(card.querySelector('.match'), where + ' → ' + (route.upstream || '?'));
    const requests = typeof route.requests === 'number' ? route.requests : 0;
    const recovered = typeof route.recovered401 === 'number' ? route.recovered401 : 0;
    fillValue(card, '.requests', requests, String(requests));
    fillValue(card, '.recovered', recovered, String(recovered));
    const latency = route.latencyMs || null;
    fillValue(card, '.p50', latency, latency ? ms(latency.p50) + ' ms' : '—');
    fillValue(card, '.p99', latency, latency ? ms(latency.p99) + ' ms' : '—');
    const errors = route.errors && typeof route.errors === 'object' ? Object.entries(route.errors).filter(([, n]) => n > 0) : [];
    errors.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    card.dataset.errors = String(errors.reduce((sum, [, n]) => sum + n, 0));
    const errorBox = card.querySelector('.errors');
    if (errors.length === 0) errorBox.replaceChildren(h('span', { className: 'none', text: 'no errors' }));
    else errorBox.replaceChildren(...errors.map(([code, n]) => h('span', { className: 'code', data: { code }, text: code + ' ' + n })));
    drawSpark(card, name);
  }

  // Requests per second, from the successive request counts /status reported.
  function record(name, t, n) {
    if (typeof n !== 'number') return;
    let list = samples.get(name);
    if (!list) { list = []; samples.set(name, list); }
    const last = list[list.length - 1];
    if (last && n < last.n) list.length = 0;   // the process restarted
    list.push({ t, n });
    while (list.length > 2 && list[1].t < t - SPARK_WINDOW_MS - SPARK_STEP_MS) list.shift();
  }
  function countAt(list, t) {
    if (t <= list[0].t) return null;
    for (let i = 1; i < list.length; i++) {
      const a = list[i - 1], b = list[i];
      if (t <= b.t) return a.n + (b.n - a.n) * (t - a.t) / Math.max(1, b.t - a.t);
    }
    return list[list.length - 1].n;
  }
  // The rates over the window, as x (0-120) and requests per second; the window grows with the
  // history the page has (20 s at first, then up to two minutes).
  function rates(name) {
    const list = samples.get(name) || [];
    if (list.length < 2) return { points: [], window: 0 };
    const end = list[list.length - 1].t;
    const window = Math.min(SPARK_WINDOW_MS, Math.max(20000, end - list[0].t));
    const points = [];
    for (let t = end - window; t <= end; t += SPARK_STEP_MS) {
      const a = countAt(list, t - SPARK_STEP_MS), b = countAt(list, t);
      if (a === null || b === null) continue;
      points.push({ x: (t - (end - window)) / window * 120, rate: Math.max(0, (b - a) * 1000 / SPARK_STEP_MS) });
    }
    return { points, window };
  }
  function drawSpark(card, name) {
    const svg = card.querySelector('svg.spark');
    const { points, window } = rates(name);
    const top = Math.max(1, ...points.map((p) => p.rate));
    const base = document.createElementNS(SVG, 'line');
    for (const [k, v] of [['x1', 0], ['x2', 120], ['y1', 29.5], ['y2', 29.5]]) base.setAttribute(k, v);
    const children = [base];
    if (points.length >= 2) {
      const coords = points.map((p) => p.x.toFixed(1) + ',' + (29 - p.rate / top * 26).toFixed(1));
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('points', coords.join(' '));
      const area = document.createElementNS(SVG, 'path');
      area.setAttribute('d', 'M' + points[0].x.toFixed(1) + ',30 L' + coords.join(' L') + ' L' + points[points.length - 1].x.toFixed(1) + ',30 Z');
      children.push(area, line);
    }
    const title = document.createElementNS(SVG, 'title');
    title.textContent = 'requests per second over the last ' + span(window / 1000) + ' (peak ' + top.toFixed(1) + '/s)';
    children.push(title);
    svg.replaceChildren(...children);
    const now = points.length ? points[points.length - 1].rate : null;
    setText(card.querySelector('.rate'), now === null ? '… req/s' : (now < 10 ? now.toFixed(1) : Math.round(now)) + ' req/s');
  }

  function renderFaults() {
    const faults = status.faults;
    const form = byId('faults-form');
    if (!faults) { setText(byId('faults-current'), 'not reported by this tokenproxy'); return; }
    form.dataset.enabled = faults.enabled ? 'true' : 'false';
    setText(byId('faults-current'), faults.enabled
      ? 'On: ' + faults.upstream401Percent + ' % of first attempts are answered 401, and the proxy recovers them.'
      : 'Off' + (faults.upstream401Percent ? ' (' + faults.upstream401Percent + ' % set)' : '') + '.');
    const enabled = byId('faults-enabled'), percent = byId('faults-percent');
    if (faultsDirty && enabled.checked === !!faults.enabled && Number(percent.value) === faults.upstream401Percent) faultsDirty = false;
    if (!faultsDirty && document.activeElement !== percent) {
      enabled.checked = !!faults.enabled;
      percent.value = String(faults.upstream401Percent ?? 0);
    }
    setText(byId('faults-note'), faultsDirty ? 'not applied yet' : '');
  }

  // Every second: countdowns and relative times, from the server's clock.
  function tick() {
    if (!status) return;
    const now = serverNow();
    const all = identitiesOf(status);
    for (const card of byId('identities').querySelectorAll('[data-identity]')) {
      const identity = all[card.dataset.identity];
      if (!identity) continue;
      const countdown = card.querySelector('.countdown');
      const fill = card.querySelector('.bar-fill');
      const expiresAt = identity.expiresAt ? parse(identity.expiresAt) : null;
      countdown.classList.remove('soon', 'expired', 'none');
      if (expiresAt === null) {
        setText(countdown, 'no token');
        countdown.classList.add('none');
        fill.style.width = '0%';
      } else {
        const left = (expiresAt - now) / 1000;
        if (left <= 0) { setText(countdown, 'expired'); countdown.classList.add('expired'); }
        else { setText(countdown, clock(left)); if (left < 60) countdown.classList.add('soon'); }
        const lifetime = lifetimes.get(card.dataset.identity);
        const share = lifetime && lifetime.seconds > 0 ? Math.min(1, Math.max(0, left / lifetime.seconds)) : 0;
        fill.style.width = (share * 100).toFixed(2) + '%';
        fill.classList.toggle('soon', share < 0.2);
      }
      const refreshCell = card.querySelector('.refresh-token');
      const rtExpires = identity.refreshTokenExpiresAt ? parse(identity.refreshTokenExpiresAt) : null;
      let text = identity.refreshTokenHeld ? 'held' : 'none';
      if (identity.refreshTokenHeld && rtExpires !== null) {
        text = rtExpires > now ? 'expires in ' + span((rtExpires - now) / 1000) + ' (' + when(rtExpires) + ')' : 'expired ' + when(rtExpires);
      }
      setText(refreshCell, text);
      refreshCell.classList.toggle('problem', !!identity.refreshTokenWarning);
    }
    const age = lastStatusAt ? Math.round((Date.now() - lastStatusAt) / 1000) : null;
    setText(byId('updated'), age === null ? '' : age < 2 ? 'updated just now' : 'updated ' + span(age) + ' ago');
  }

  // ---- /events ----
  let eventsBackoff = 1000;
  function connectEvents() {
    if (typeof EventSource !== 'function') return;
    const source = new EventSource('/events');
    source.onopen = () => { eventsOpen = true; eventsBackoff = 1000; setReachable(reachable !== false); requestStatus(); };
    source.onerror = () => {
      eventsOpen = false;
      if (reachable !== null) setReachable(reachable);
      // A refused stream is closed for good; a dropped one the browser reopens by itself.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connectEvents, eventsBackoff);
        eventsBackoff = Math.min(eventsBackoff * 2, 30000);
      }
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, (event) => onEvent(type, event.data));
    source.onmessage = (event) => onEvent('message', event.data);
  }
  function onEvent(type, data) {
    let fields = null;
    try { fields = JSON.parse(data); } catch (e) { fields = null; }
    if (!fields || typeof fields !== 'object') fields = { type };
    // A reconnected stream starts with the recent events again: each is shown once.
    if (!seenEvents.has(data)) {
      seenEvents.add(data);
      if (seenEvents.size > 200) seenEvents.delete(seenEvents.values().next().value);
      events.unshift(fields);
      events.sort((a, b) => (parse(b.time) || 0) - (parse(a.time) || 0));
      events.length = Math.min(events.length, MAX_EVENTS);
      renderEvents();
      const subject = fields.identity ? '[data-identity="' + cssEscape(fields.identity) + '"]' : fields.route ? '[data-route="' + cssEscape(fields.route) + '"]' : null;
      const card = subject ? document.querySelector(subject) : null;
      if (card) { card.classList.remove('flash'); void card.offsetWidth; card.classList.add('flash'); }
    }
    requestStatus();
  }
  function cssEscape(text) { return window.CSS && CSS.escape ? CSS.escape(text) : String(text).replace(/["\\]/g, '\\$&'); }
  function describe(fields) {
    const parts = [];
    const trigger = fields.trigger || fields.reason;
    if (trigger) parts.push(TRIGGER_LABELS[trigger] || trigger);
    if (typeof fields.durationMs === 'number') parts.push(ms(fields.durationMs) + ' ms');
    if (fields.expiresAt) { const t = parse(fields.expiresAt); if (t !== null) parts.push('valid until ' + when(t)); }
    if (fields.type === 'faults') parts.push(fields.enabled ? 'on, ' + fields.upstream401Percent + ' % 401' : 'off');
    for (const [key, value] of Object.entries(fields)) {
      if (['type', 'time', 'identity', 'route', 'trigger', 'reason', 'durationMs', 'expiresAt', 'enabled', 'upstream401Percent'].includes(key)) continue;
      if (value === null || typeof value === 'object') continue;
      parts.push(key === 'error' || key === 'detail' ? String(value) : key + ' ' + value);
    }
    return parts.join(' · ');
  }
  function renderEvents() {
    const log = byId('event-log');
    if (events.length === 0) { log.replaceChildren(h('li', { className: 'muted empty', text: 'No events yet.' })); return; }
    log.replaceChildren(...events.map((fields) => {
      const t = parse(fields.time);
      const subject = fields.identity ? fields.identity : fields.route ? 'route ' + fields.route : '';
      const detail = describe(fields);
      return h('li', { data: { type: fields.type || '' } },
        h('span', { className: 'when', text: t === null ? '' : timeOfDay(t), title: fields.time || '' }),
        h('span', { className: 'type', text: (fields.type || '').replace(/_/g, ' ') }),
        h('span', { className: 'subject', text: subject }),
        detail ? h('span', { className: 'detail', text: detail }) : null);
    }));
  }

  // ---- actions ----
  function showResult(outcome, text) {
    const box = byId('action-result');
    box.hidden = false;
    box.dataset.outcome = outcome;
    setText(box, text);
  }
  function summary(label, body) {
    if (body && body.refreshed) {
      const t = body.expiresAt ? parse(body.expiresAt) : null;
      return label + ': done' + (t === null ? '.' : ', the new token is valid until ' + when(t) + '.');
    }
    if (body && body.expired) return label + ': done; the next request gets a new token.';
    if (body && body.faults) return label + ': fault injection is ' + (body.faults.enabled ? 'on at ' + body.faults.upstream401Percent + ' %.' : 'off.');
    return label + ': done.';
  }
  async function act(button, label, method, url, payload) {
    const headers = { Accept: 'application/json' };
    if (adminToken !== null) headers.Authorization = 'Bearer ' + adminToken;
    const init = { method, headers, cache: 'no-store' };
    if (payload !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(payload); }
    if (button) button.disabled = true;
    showResult('pending', label + '…');
    let response, body = null;
    try {
      response = await fetch(url, init);
      body = await response.json().catch(() => null);
    } catch (error) {
      showResult('error', label + ' failed: tokenproxy did not answer (' + (error && error.message ? error.message : error) + ').');
      if (button) button.disabled = false;
      return false;
    }
    if (button) button.disabled = false;
    const code = response.headers.get('X-TokenProxy-Error') || (body && body.error) || '';
    if (response.status === 401 && code === 'unauthorized') {
      const message = body && body.message ? body.message : 'the admin token was not accepted';
      pendingAction = { button, label, method, url, payload };
      if (adminToken !== null) {
        adminToken = null;
        showResult('refused', 'Refused: ' + message);
        askForToken(label + ' was refused with that token; try again.');
      } else {
        showResult('auth-needed', label + ' needs the admin token: enter it below.');
        askForToken(label + ' needs it.');
      }
      return false;
    }
    if (!response.ok) {
      let text = label + ' failed: ' + (code ? code + ': ' : 'HTTP ' + response.status + ': ') + (body && body.message ? body.message : response.statusText);
      const retry = response.headers.get('Retry-After');
      if (retry) text += ' (try again in ' + retry + ' s)';
      showResult('error', text);
      requestStatus();
      return false;
    }
    showResult('ok', summary(label, body));
    requestStatus();
    return true;
  }
  function askForToken(why) {
    const form = byId('admin-auth');
    setText(byId('admin-auth-why'), why);
    form.hidden = false;
    const input = byId('admin-token');
    input.value = '';
    input.focus();
  }
  function setupAuth() {
    const form = byId('admin-auth');
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const input = byId('admin-token');
      const value = input.value.replace(/\r?\n$/, '');
      input.value = '';
      if (!value) { input.focus(); return; }
      adminToken = value;
      form.hidden = true;
      const action = pendingAction;
      pendingAction = null;
      if (action) act(action.button, action.label, action.method, action.url, action.payload);
    });
    byId('admin-token-cancel').addEventListener('click', () => {
      form.hidden = true;
      byId('admin-token').value = '';
      if (pendingAction) showResult('error', pendingAction.label + ' was not sent: no admin token.');
      pendingAction = null;
    });
  }
  function setupFaults() {
    const form = byId('faults-form');
    const enabled = byId('faults-enabled'), percent = byId('faults-percent');
    const dirty = () => { faultsDirty = true; setText(byId('faults-note'), 'not applied yet'); };
    enabled.addEventListener('change', dirty);
    percent.addEventListener('input', dirty);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const value = percent.value.trim() === '' ? 0 : Number(percent.value);
      if (!Number.isFinite(value) || value < 0 || value > 100) {
        showResult('error', 'Faults: the share of 401s is a number from 0 to 100.');
        percent.focus();
        return;
      }
      if (await act(byId('faults-apply'), 'Faults', 'PUT', '/faults', { enabled: enabled.checked, upstream401Percent: value })) faultsDirty = false;
    });
  }

  function schedulePolling() {
    setInterval(() => {
      const every = document.hidden ? POLL_HIDDEN_MS : POLL_VISIBLE_MS;
      if (Date.now() - lastFetch >= every - 100) requestStatus();
    }, 500);
    setInterval(tick, 1000);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) requestStatus(); });
  }

  function start() {
    setupAuth();
    setupFaults();
    schedulePolling();
    requestStatus();
    connectEvents();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
"""#

    /// `GET /ui/app.css`: readable from 400 px wide, light and dark (`prefers-color-scheme`).
    static let style = #"""
:root {
  color-scheme: light dark;
  --bg: #f4f6f8; --panel: #ffffff; --text: #1c232b; --muted: #5f6b78; --line: #dce2e8;
  --accent: #2a64c9; --accent-text: #ffffff;
  --ok: #17693f; --ok-bg: #dff3e7; --warn: #845400; --warn-bg: #fcefd2;
  --bad: #ac2219; --bad-bg: #fbe2df; --info: #23559b; --info-bg: #e0eafa; --neutral-bg: #e9edf1;
  --spark: #2a64c9;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f1317; --panel: #171c22; --text: #e2e7ec; --muted: #96a2ae; --line: #28313a;
    --accent: #6f9ef0; --accent-text: #0f1317;
    --ok: #74d3a1; --ok-bg: #16321f; --warn: #efc163; --warn-bg: #382b10;
    --bad: #ff8f86; --bad-bg: #3b1b19; --info: #92b8f4; --info-bg: #1a2940; --neutral-bg: #222a32;
    --spark: #8fb3f2;
  }
}
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--text); overflow-wrap: anywhere; }
a { color: var(--accent); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.9em; }
h1 { font-size: 1.2rem; margin: 0; letter-spacing: 0.01em; }
h2 { font-size: 0.85rem; margin: 1.4rem 0 0.6rem; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); font-weight: 600; }
h3 { font-size: 1.05rem; margin: 0; min-width: 0; }
h4 { font-size: 0.8rem; margin: 0.9rem 0 0.3rem; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: 0.05em; }
p { margin: 0.3rem 0; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 14px; }
.muted { color: var(--muted); }
.small { font-size: 0.85rem; }
.num { font-variant-numeric: tabular-nums; }
.nowrap { white-space: nowrap; }

.top { background: var(--panel); border-bottom: 1px solid var(--line); }
.top-row { display: flex; flex-wrap: wrap; align-items: center; gap: 4px 12px; padding-top: 10px; padding-bottom: 10px; }
.spacer { flex: 1 1 auto; }
.pill { display: inline-block; padding: 1px 10px; border-radius: 999px; font-size: 0.8rem; font-weight: 600; background: var(--neutral-bg); color: var(--muted); white-space: nowrap; }
.pill[data-state="live"] { background: var(--ok-bg); color: var(--ok); }
.pill[data-state="polling"] { background: var(--warn-bg); color: var(--warn); }
.pill[data-state="offline"] { background: var(--bad-bg); color: var(--bad); }

.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 340px), 1fr)); gap: 12px; }
.grid > * { min-width: 0; }
.split { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 420px), 1fr)); gap: 0 12px; }
.split > * { min-width: 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; min-width: 0; }
.card.flash { animation: flash 1.2s ease-out; }
@keyframes flash { from { box-shadow: 0 0 0 3px var(--accent); } to { box-shadow: 0 0 0 0 transparent; } }
.card-head { display: flex; align-items: baseline; justify-content: space-between; gap: 8px; flex-wrap: wrap; }

.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 0.8rem; font-weight: 600; white-space: nowrap; background: var(--neutral-bg); color: var(--muted); }
.badge[data-state="valid"], .badge[data-result="refreshed"] { background: var(--ok-bg); color: var(--ok); }
.badge[data-state="refreshing"], .badge[data-result="adopted"] { background: var(--info-bg); color: var(--info); }
.badge[data-state="failing"], .badge[data-result="refused"] { background: var(--warn-bg); color: var(--warn); }
.badge[data-state="login_needed"], .badge[data-result="failed"] { background: var(--bad-bg); color: var(--bad); }

.expiry { display: flex; align-items: baseline; flex-wrap: wrap; gap: 2px 10px; margin-top: 8px; }
.countdown { font-size: 2rem; font-weight: 600; font-variant-numeric: tabular-nums; line-height: 1.15; }
.countdown.soon { color: var(--warn); }
.countdown.expired { color: var(--bad); }
.countdown.none { color: var(--muted); font-size: 1.4rem; }
.bar { height: 4px; border-radius: 2px; background: var(--neutral-bg); margin: 6px 0 4px; overflow: hidden; }
.bar-fill { height: 100%; width: 0; background: var(--ok); transition: width 0.9s linear; }
.bar-fill.soon { background: var(--warn); }
.failure { color: var(--bad); background: var(--bad-bg); border-radius: 6px; padding: 6px 8px; margin: 8px 0 0; font-size: 0.9rem; }
.failure[data-state="failing"] { color: var(--warn); background: var(--warn-bg); }

.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 10px; margin: 8px 0 0; font-size: 0.9rem; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; min-width: 0; }
.facts .problem { color: var(--bad); }

.actions { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 10px; }
button { font: inherit; font-size: 0.9rem; padding: 5px 12px; border-radius: 7px; border: 1px solid var(--accent); background: var(--accent); color: var(--accent-text); cursor: pointer; }
button.quiet, .actions button.expire { background: transparent; color: var(--accent); }
button:disabled { opacity: 0.55; cursor: progress; }
button:focus-visible, input:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
input[type="number"], input[type="password"] { font: inherit; padding: 4px 8px; border-radius: 6px; border: 1px solid var(--line); background: var(--bg); color: var(--text); max-width: 100%; }
input[type="number"] { width: 6em; }

.list { list-style: none; margin: 0; padding: 0; font-size: 0.88rem; }
.list li { display: flex; flex-wrap: wrap; align-items: baseline; gap: 0 8px; padding: 3px 0; border-top: 1px solid var(--line); }
.list li:first-child { border-top: 0; }
.list .when { font-variant-numeric: tabular-nums; color: var(--muted); }
.list .detail { flex-basis: 100%; color: var(--muted); font-size: 0.82rem; }
.list .empty { color: var(--muted); }
.sink-bad { color: var(--bad); }

.route .match { font-size: 0.88rem; color: var(--muted); margin-top: 4px; }
.stats { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; margin-top: 10px; }
.stat { min-width: 0; }
.stat .label { display: block; font-size: 0.78rem; color: var(--muted); line-height: 1.2; }
.stat .value { font-size: 1.15rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.stat .value.zero { color: var(--muted); font-weight: 500; }
.spark-row { display: flex; align-items: center; gap: 10px; margin-top: 8px; }
.spark { flex: 1 1 auto; min-width: 0; width: 100%; height: 30px; display: block; }
.spark polyline { fill: none; stroke: var(--spark); stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.spark path { fill: var(--spark); opacity: 0.15; stroke: none; }
.spark line { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; }
.rate { font-variant-numeric: tabular-nums; font-size: 0.85rem; color: var(--muted); white-space: nowrap; }
.errors { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 8px; font-size: 0.82rem; }
.errors .code { background: var(--bad-bg); color: var(--bad); border-radius: 5px; padding: 0 6px; }
.errors .none { color: var(--muted); }

.faults { display: flex; flex-direction: column; gap: 8px; }
.faults label { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; }
.faults[data-enabled="true"] #faults-current { color: var(--warn); font-weight: 600; }

.events { list-style: none; margin: 0; padding: 0; font-size: 0.86rem; max-height: 26rem; overflow-y: auto; }
.events li { display: flex; flex-wrap: wrap; gap: 0 8px; align-items: baseline; padding: 4px 0; border-top: 1px solid var(--line); }
.events li:first-child { border-top: 0; }
.events .when { font-variant-numeric: tabular-nums; color: var(--muted); }
.events .type { font-weight: 600; }
.events li[data-type="refresh_failed"] .type, .events li[data-type="login_needed"] .type { color: var(--bad); }
.events li[data-type="recovered_401"] .type, .events li[data-type="faults"] .type { color: var(--warn); }
.events li[data-type="refresh"] .type, .events li[data-type="adopted"] .type { color: var(--ok); }
.events .detail { flex-basis: 100%; color: var(--muted); font-size: 0.8rem; }

.notice { background: var(--panel); border: 1px solid var(--line); border-left: 4px solid var(--info); border-radius: 8px; padding: 8px 12px; margin: 12px 0 0; }
.notice[data-outcome="ok"] { border-left-color: var(--ok); }
.notice[data-outcome="error"], .notice[data-outcome="refused"] { border-left-color: var(--bad); color: var(--bad); }
.notice[data-outcome="auth-needed"] { border-left-color: var(--warn); }
.auth { border-left-color: var(--warn); }
.auth label { display: block; }
.auth-row { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
.auth-row input { flex: 1 1 12em; min-width: 0; }

footer { padding-top: 18px; padding-bottom: 24px; }

@media (max-width: 480px) {
  .wrap { padding: 0 10px; }
  .stats { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  .countdown { font-size: 1.7rem; }
  .card { padding: 10px 11px; }
}
@media (prefers-reduced-motion: reduce) {
  .card.flash { animation: none; }
  .bar-fill { transition: none; }
}
"""#
}
