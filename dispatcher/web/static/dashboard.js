// The operations dashboard: reads the dispatcher's /dashboard/feed (server-
// sent events, one snapshot a second, admin token required) and draws it.
// No library: tables and <canvas> charts by hand, so the page works offline
// against the dispatcher alone.
//
// The token comes from `#token=...` in the address (a fragment never reaches
// the server, and it is removed from the address bar at once), or from the
// form; it is kept in sessionStorage for this tab only.

const $ = (id) => document.getElementById(id);
const HISTORY = 120; // snapshots kept for the time charts (2 min at 1/s)
const COLORS = ['#2f6fdf', '#d33a2c', '#1f9d55', '#c98a00', '#8e44ad', '#16a085', '#e67e22', '#7f8c8d'];

const dash = (window.dash = { snapshots: 0, last: null, history: [], gone: new Set(), online: false });
let token = '';
let lastData = 0;
let retryMs = 1000;

function takeToken() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    history.replaceState(null, '', location.pathname + location.search);
    sessionStorage.setItem('tolk-admin-token', token);
  } else {
    token = sessionStorage.getItem('tolk-admin-token') || '';
  }
}

function setLive(state, text) {
  const b = $('live');
  b.dataset.state = state;
  b.textContent = text;
  b.className = `badge ${state === 'live' ? 'on' : state === 'offline' ? 'bad' : 'off'}`;
  document.body.classList.toggle('degraded', state === 'offline');
  dash.online = state === 'live';
}

let offlineSince = null;
function offline(why) {
  if (!offlineSince) offlineSince = new Date();
  setLive('offline', `offline: ${why}`);
  const last = dash.last ? `the figures below are the last ones received, at ${new Date(dash.last.time_ms).toLocaleTimeString()}` : 'nothing received yet';
  $('banner').textContent = `Dispatcher unreachable since ${offlineSince.toLocaleTimeString()} — ${last}. Retrying…`;
}

/** Reads the SSE stream; resolves when it ends. */
async function follow() {
  const r = await fetch('/dashboard/feed?interval_ms=1000', { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
  if (r.status === 401 || r.status === 404) {
    document.body.classList.add('needs-token');
    $('autherr').textContent = r.status === 401 ? 'That token was refused.' : 'The dashboard is off: this dispatcher has no admin_token.';
    setLive('connecting', 'waiting for a token');
    return 'auth';
  }
  if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
  document.body.classList.remove('needs-token');
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return 'ended';
    buf += value;
    if (buf.length > 8 << 20) throw new Error('event too large');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (!data) continue; // keep-alive comment
      lastData = Date.now();
      retryMs = 1000;
      offlineSince = null;
      setLive('live', 'live');
      render(JSON.parse(data));
    }
  }
}

async function loop() {
  for (;;) {
    if (!token) {
      document.body.classList.add('needs-token');
      setLive('connecting', 'waiting for a token');
      await new Promise((r) => (wakeUp = r));
      continue;
    }
    let how;
    try {
      how = await follow();
    } catch (e) {
      how = e.message || 'failed';
    }
    if (how === 'auth') {
      token = '';
      continue;
    }
    offline(how === 'ended' ? 'the feed ended' : how);
    await new Promise((r) => setTimeout(r, retryMs));
    retryMs = Math.min(retryMs * 2, 5000);
  }
}
let wakeUp = () => {};

// A stalled connection (no snapshot for 5 s) is as bad as a closed one.
setInterval(() => {
  if (dash.online && Date.now() - lastData > 5000) offline('no update for 5 s');
}, 1000);

// ---------------------------------------------------------------- render

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.append(td);
  return td;
}

/** Ids are 34 characters: the start tells them apart on a screen; the title has all. */
const short = (id) => (id.length > 14 ? `${id.slice(0, 12)}…` : id);
const fmt = (v, d = 0) => (v === null || v === undefined ? '–' : Number(v).toFixed(d));

function render(s) {
  dash.snapshots += 1;
  dash.last = s;
  dash.history.push({ t: s.time_ms, outcomes: s.outcomes, queue: s.queue_depth, running: s.running_jobs });
  if (dash.history.length > HISTORY) dash.history.shift();
  $('updated').textContent = `updated ${new Date(s.time_ms).toLocaleTimeString()}`;

  const connected = s.nodes.filter((n) => n.connected).length;
  $('k-nodes').textContent = String(connected);
  $('k-sessions').textContent = String(s.session_count);
  $('k-queue').textContent = String(s.queue_depth);
  $('k-running').textContent = String(s.running_jobs);
  $('k-utterances').textContent = fmt(s.counters.tolk_utterances_total);
  $('k-results').textContent = fmt(s.outcomes.result || 0);
  const rates = outcomeRates();
  const last = rates.length ? rates[rates.length - 1].byCode : {};
  $('k-rate').textContent = Object.values(last).reduce((a, b) => a + b, 0).toFixed(1);

  renderNodes(s);
  renderSessions(s);
  renderPolicy(s);
  renderCounters(s);
  $('missing').replaceChildren(...s.missing.map((m) => Object.assign(document.createElement('li'), { textContent: m })));
  drawOutcomes(rates);
  drawSeries($('c-queue'), [
    { name: 'queue', color: COLORS[3], points: dash.history.map((h) => [h.t, h.queue]) },
    { name: 'running', color: COLORS[0], points: dash.history.map((h) => [h.t, h.running]) },
  ]);
  drawHistogram($('c-job'), $('h-job'), s.histograms.tolk_job_seconds);
  drawHistogram($('c-utt'), $('h-utt'), s.histograms.tolk_utterance_seconds);
}

function renderNodes(s) {
  const body = $('nodes').tBodies[0];
  const listed = new Set(s.nodes.map((n) => n.node_id));
  // A node the dispatcher has forgotten stays on the page, marked gone.
  for (const tr of [...body.rows]) if (tr.dataset.node && !listed.has(tr.dataset.node)) dash.gone.add(tr.dataset.node);
  const rows = [];
  for (const n of s.nodes) {
    const tr = document.createElement('tr');
    tr.dataset.node = n.node_id;
    const state = !n.connected ? 'gone' : n.draining ? 'draining' : 'connected';
    tr.dataset.state = state;
    if (state === 'gone') tr.className = 'gone';
    cell(tr, n.node_id, 'id');
    // In a cluster, a node held by another dispatcher says which.
    const via = n.dispatcher ? ` via ${n.dispatcher}` : '';
    cell(tr, (state === 'gone' ? 'gone (disconnected)' : state) + via).title = n.dispatcher ? `connected to dispatcher ${n.dispatcher} of the cluster` : '';
    cell(tr, n.models.join(', '));
    cell(tr, `${n.running_jobs} / ${n.max_jobs}`, 'num');
    // Real-time factor: processing time per second of audio (smoothed).
    cell(tr, n.ms_per_audio_s == null ? '–' : (n.ms_per_audio_s / 1000).toFixed(2), 'num');
    cell(tr, fmt(n.cpu_percent), 'num');
    cell(tr, fmt(n.mem_percent), 'num');
    cell(tr, n.accept_public_jobs ? 'yes' : 'paired only');
    // Canary verification: probation, trusted (✓ verified), quarantined…
    const t = n.trust || {};
    const trust = cell(tr, `${t.state || '–'}${t.verified ? ' ✓' : ''}`, t.state === 'quarantined' ? 'bad' : '');
    trust.title = t.last_failure ? `last failure: ${t.last_failure}` : `canaries passed ${t.canaries_passed ?? 0}, failed ${t.canaries_failed ?? 0}`;
    cell(tr, n.version);
    rows.push(tr);
  }
  for (const id of dash.gone) {
    if (listed.has(id)) continue;
    const tr = document.createElement('tr');
    tr.dataset.node = id;
    tr.dataset.state = 'gone';
    tr.className = 'gone';
    cell(tr, id);
    cell(tr, 'gone (forgotten)');
    for (let i = 0; i < 8; i++) cell(tr, '');
    rows.push(tr);
  }
  if (!rows.length) {
    const tr = document.createElement('tr');
    cell(tr, 'no node has registered').colSpan = 10;
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function renderSessions(s) {
  const rows = s.sessions.map((x) => {
    const tr = document.createElement('tr');
    tr.dataset.session = x.session_id;
    if (x.paired_node_id) tr.dataset.paired = x.paired_node_id;
    cell(tr, short(x.session_id)).title = x.session_id;
    cell(tr, x.connected ? 'connected' : 'awaiting resume');
    cell(tr, `${x.src_lang} → ${x.tgt_lang}`);
    cell(tr, x.paired_node_id ? short(x.paired_node_id) : '–').title = x.paired_node_id || '';
    cell(tr, String(x.pending), 'num');
    return tr;
  });
  if (s.session_count > s.sessions.length) {
    const tr = document.createElement('tr');
    cell(tr, `… and ${s.session_count - s.sessions.length} more`).colSpan = 5;
    rows.push(tr);
  }
  if (!rows.length) {
    const tr = document.createElement('tr');
    cell(tr, 'no session').colSpan = 5;
    rows.push(tr);
  }
  $('sessions').tBodies[0].replaceChildren(...rows);
}

function renderPolicy(s) {
  const active = s.plugins.find((p) => p.kind === 'scheduler' && p.active);
  const lines = [];
  lines.push(active ? `scheduler: ${active.name} ${active.version} (${active.file}), ${active.calls} decisions, ${active.failures} fell back` : 'scheduler: built-in least-loaded');
  if (s.scheduler_setting) lines.push(`configured: ${s.scheduler_setting}`);
  const standby = s.plugins.filter((p) => p.kind === 'scheduler' && !p.active).map((p) => p.name);
  if (standby.length) lines.push(`also loaded (not in effect): ${standby.join(', ')}`);
  lines.push(`fallbacks to the built-in policy: ${fmt(s.counters.tolk_policy_fallbacks_total)}`);
  for (const p of s.plugins.filter((p) => p.kind === 'detector')) lines.push(`detector: ${p.name} ${p.version}, ${p.calls} calls, ${p.failures} failures`);
  $('policy').replaceChildren(...lines.map((l) => Object.assign(document.createElement('div'), { textContent: l })));
  // Why utterances were not dispatched: NODE_UNAVAILABLE outcomes by the
  // reason most nodes had (extension 11), refusals by code (extension 10),
  // and every error outcome by code.
  const labelled = (prefix) => Object.entries(s.counters)
    .filter(([k]) => k.startsWith(prefix))
    .map(([k, v]) => [k.slice(prefix.length).replace(/"\}$/, ''), v]);
  const reasons = [];
  for (const [reason, v] of labelled('tolk_unavailable_total{reason="')) reasons.push(`NODE_UNAVAILABLE, most nodes ${reason}: ${v}`);
  for (const [code, v] of labelled('tolk_refusals_total{code="')) reasons.push(`refused (${code}, sent again later): ${v}`);
  for (const [code, v] of Object.entries(s.outcomes).filter(([k]) => k !== 'result')) reasons.push(`outcome ${code}: ${v}`);
  if (!reasons.length) reasons.push('every utterance so far was dispatched');
  reasons.push('(each NODE_UNAVAILABLE tells its client the count of nodes per reason: no_model, busy, draining, not_paired, …)');
  $('reasons').replaceChildren(...reasons.map((l) => Object.assign(document.createElement('div'), { textContent: l, className: l.startsWith('(') ? 'note' : '' })));
}

function renderCounters(s) {
  const rows = Object.entries(s.counters).map(([k, v]) => {
    const tr = document.createElement('tr');
    cell(tr, k.replace(/^tolk_/, ''));
    cell(tr, fmt(v, Number.isInteger(v) ? 0 : 2), 'num');
    return tr;
  });
  $('counters').tBodies[0].replaceChildren(...rows);
}

// ---------------------------------------------------------------- charts

function outcomeRates() {
  const out = [];
  for (let i = 1; i < dash.history.length; i++) {
    const a = dash.history[i - 1];
    const b = dash.history[i];
    const dt = Math.max(0.001, (b.t - a.t) / 1000);
    const byCode = {};
    for (const code of new Set([...Object.keys(a.outcomes), ...Object.keys(b.outcomes)])) {
      byCode[code] = Math.max(0, ((b.outcomes[code] || 0) - (a.outcomes[code] || 0)) / dt);
    }
    out.push({ t: b.t, byCode });
  }
  return out;
}

function drawOutcomes(rates) {
  const codes = [...new Set(rates.flatMap((r) => Object.keys(r.byCode)))].sort((a, b) => (a === 'result' ? -1 : b === 'result' ? 1 : a.localeCompare(b)));
  const series = codes.map((code, i) => ({ name: code, color: COLORS[i % COLORS.length], points: rates.map((r) => [r.t, r.byCode[code] || 0]) }));
  drawSeries($('c-outcomes'), series);
  $('outcome-legend').replaceChildren(
    ...series.map((s) => {
      const span = document.createElement('span');
      span.textContent = `■ ${s.name}  `;
      span.style.color = s.color;
      return span;
    }),
  );
}

function frame(canvas) {
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, canvas.width, canvas.height);
  g.font = '20px system-ui, sans-serif';
  return g;
}

function drawSeries(canvas, series) {
  const g = frame(canvas);
  const W = canvas.width;
  const H = canvas.height;
  const pad = { l: 60, r: 12, t: 12, b: 30 };
  const all = series.flatMap((s) => s.points);
  const now = dash.last ? dash.last.time_ms : Date.now();
  const t0 = now - HISTORY * 1000;
  const max = Math.max(1, ...all.map((p) => p[1]));
  g.strokeStyle = '#e2e5ea';
  g.fillStyle = '#6b7280';
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ((H - pad.t - pad.b) * i) / 4;
    g.beginPath();
    g.moveTo(pad.l, y);
    g.lineTo(W - pad.r, y);
    g.stroke();
    g.fillText((max * (1 - i / 4)).toFixed(max < 4 ? 1 : 0), 6, y + 6);
  }
  g.fillText('−2 min', pad.l, H - 6);
  g.fillText('now', W - pad.r - 40, H - 6);
  const x = (t) => pad.l + ((t - t0) / (now - t0)) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  g.lineWidth = 3;
  for (const s of series) {
    g.strokeStyle = s.color;
    g.beginPath();
    s.points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
  }
  if (!all.length) g.fillText('waiting for data…', W / 2 - 80, H / 2);
}

function drawHistogram(canvas, note, h) {
  const g = frame(canvas);
  const W = canvas.width;
  const H = canvas.height;
  if (!h || !h.buckets.length) {
    g.fillStyle = '#6b7280';
    g.fillText('no such histogram', W / 2 - 80, H / 2);
    return;
  }
  // Cumulative → per bucket; show the buckets from the first to the last
  // that holds anything (at least 1 ms … 1 s).
  const b = h.buckets.map(([le, c], i) => ({ le, n: c - (i ? h.buckets[i - 1][1] : 0) }));
  let lo = b.findIndex((x) => x.n > 0);
  let hi = b.length - 1 - [...b].reverse().findIndex((x) => x.n > 0);
  if (lo < 0) {
    lo = 0;
    hi = Math.min(b.length - 1, 10);
  }
  lo = Math.max(0, Math.min(lo, 0));
  hi = Math.max(hi, Math.min(b.length - 1, 10));
  const shown = b.slice(lo, hi + 1);
  const max = Math.max(1, ...shown.map((x) => x.n));
  const pad = { l: 50, r: 10, t: 10, b: 40 };
  const bw = (W - pad.l - pad.r) / shown.length;
  g.fillStyle = '#6b7280';
  g.fillText(String(max), 6, pad.t + 16);
  g.fillText('0', 6, H - pad.b);
  shown.forEach((x, i) => {
    const bh = (x.n / max) * (H - pad.t - pad.b);
    g.fillStyle = '#2f6fdf';
    g.fillRect(pad.l + i * bw + 2, H - pad.b - bh, bw - 4, bh);
    g.fillStyle = '#6b7280';
    if (i % 2 === 0 || shown.length < 10) g.fillText(x.le === null ? '∞' : x.le < 1 ? `${Math.round(x.le * 1000)}ms` : `${x.le}s`, pad.l + i * bw, H - 12);
  });
  const mean = h.count ? (h.sum / h.count) * 1000 : 0;
  note.textContent = `${h.count} observed, mean ${mean.toFixed(0)} ms (bars: count per bucket, labelled by upper bound)`;
}

// ------------------------------------------------------------------ main

$('authform').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem('tolk-admin-token', token);
  $('token').value = '';
  wakeUp();
});
takeToken();
loop();
