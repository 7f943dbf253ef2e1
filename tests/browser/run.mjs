// Drives Debian's Chromium (headless, fake microphone fed a WAV) through the
// web client at /app/ and the dashboard at /dashboard of a real dispatcher.
// Started by tests/tests/browser.rs, which owns the processes: this script
// asks it for each step on stdout ("STEP start-node") and waits for its
// answer on stdin ("GO ..."). It prints "RESULT {json}" and then "PASS", or
// "FAIL reason" and exits non-zero. Every wait is bounded.
//
// Environment: TOLK_BASE (http://127.0.0.1:PORT), TOLK_WAV (the microphone's
// sound), TOLK_PTT_WAV (one long sentence, for push-to-talk), TOLK_TOKEN (admin token), TOLK_EXPECT (utterances in the WAV),
// TOLK_SHOTS (folder for screenshots).

import { chromium } from 'playwright-core';
import { createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const BASE = process.env.TOLK_BASE;
const WAV = process.env.TOLK_WAV;
const PTT_WAV = process.env.TOLK_PTT_WAV;
const TOKEN = process.env.TOLK_TOKEN;
const EXPECT = Number(process.env.TOLK_EXPECT || '0');
const SHOTS = process.env.TOLK_SHOTS;
mkdirSync(SHOTS, { recursive: true });

const say = (line) => process.stdout.write(`${line}\n`);
const note = (line) => process.stderr.write(`[browser] ${line}\n`);
const answers = [];
let waiting = null;
createInterface({ input: process.stdin }).on('line', (l) => (waiting ? (waiting(l), (waiting = null)) : answers.push(l)));
function answer(ms) {
  if (answers.length) return Promise.resolve(answers.shift());
  return new Promise((ok, no) => {
    const t = setTimeout(() => no(new Error('no answer from the test')), ms);
    waiting = (l) => (clearTimeout(t), ok(l));
  });
}
async function step(name) {
  say(`STEP ${name}`);
  const a = await answer(120_000);
  if (!a.startsWith('GO')) throw new Error(`step ${name}: ${a}`);
  return a.slice(2).trim();
}
function check(cond, what) {
  if (!cond) throw new Error(what);
}
/** Polls `fn` in the page until it is truthy; bounded. */
async function until(page, what, fn, arg, ms = 60_000) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: ms, polling: 100 });
  } catch (e) {
    throw new Error(`${what}: not within ${ms} ms`);
  }
}
const shot = (page, name) => page.screenshot({ path: join(SHOTS, name), fullPage: true });

const profiles = [];
/** Debian's Chromium, headless, a fresh profile, its microphone playing `wav` once. */
async function launch(wav) {
  const profile = mkdtempSync(join(tmpdir(), 'tolk-chromium-'));
  profiles.push(profile);
  const c = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    timeout: 60_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}%noloop`,
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  await c.grantPermissions(['microphone'], { origin: BASE });
  return c;
}
const cleanup = () => profiles.forEach((p) => rmSync(p, { recursive: true, force: true }));

let context;
try {
  context = await launch(WAV);

  // ---- the dashboard, before any node
  const dash = await context.newPage();
  dash.on('console', (m) => m.type() === 'error' && note(`dashboard console: ${m.text()}`));
  await dash.goto(`${BASE}/dashboard#token=${encodeURIComponent(TOKEN)}`);
  await until(dash, 'the dashboard goes live', () => document.getElementById('live').dataset.state === 'live');
  check(!dash.url().includes('token='), 'the token is removed from the address bar');
  await shot(dash, 'dashboard-1-empty.png');

  // ---- a node registers: it appears without a reload
  const [nodeId, pairingCode] = (await step('start-node')).split(' ');
  await until(dash, 'the dashboard shows the node connected', (id) => !!document.querySelector(`tr[data-node="${id}"][data-state="connected"]`), nodeId, 30_000);
  // Its trust column: no canary set in this run, so every node is "unchecked".
  await until(dash, 'the dashboard shows the node\'s trust', (id) => [...document.querySelectorAll(`tr[data-node="${id}"] td`)].some((td) => td.textContent === 'unchecked'), nodeId, 10_000);
  const before = await dash.evaluate(() => ({ results: window.dash.last.outcomes.result || 0, utterances: window.dash.last.counters.tolk_utterances_total || 0, snapshots: window.dash.snapshots }));

  // ---- the web client speaks
  const app = await context.newPage();
  app.on('console', (m) => m.type() === 'error' && note(`app console: ${m.text()}`));
  const sent = [];
  const received = [];
  app.on('websocket', (ws) => {
    ws.on('framesent', (f) => sent.push(JSON.parse(f.payload)));
    ws.on('framereceived', (f) => received.push(JSON.parse(f.payload)));
  });
  await app.goto(`${BASE}/app/`);
  await until(app, 'the client loads and lists en → es', () => window.tolk.ready && [...document.querySelectorAll('#src option')].some((o) => o.value === 'en'), null, 30_000);
  await app.selectOption('#src', 'en');
  await app.selectOption('#tgt', 'es');
  await app.fill('#pairing', pairingCode);
  await app.click('#start');
  await until(app, 'the session connects', () => window.tolk.states.some((s) => s.state === 'connected'), null, 30_000);
  // The pairing code bound the session to the node that printed it.
  const bound = await app.evaluate(() => window.tolk.states.find((s) => s.state === 'connected').assigned_node_id);
  check(bound === nodeId, `the session is bound to the paired node: ${bound} vs ${nodeId}`);
  await until(dash, 'the dashboard lists the session, paired', (id) => !!document.querySelector(`#sessions tr[data-paired="${id}"]`), nodeId, 15_000);

  // A dropped connection mid-session: the client resumes with its token.
  await until(app, 'a first result', () => window.tolk.results.length >= 1, null, 120_000);
  await shot(dash, 'dashboard-2-live.png');
  await app.evaluate(() => window.tolk.dropConnection());
  await until(app, 'the session resumes', () => window.tolk.states.some((s) => s.state === 'connected' && s.resumed), null, 30_000);

  await until(app, `${EXPECT} outcomes`, (n) => window.tolk.results.length + window.tolk.failed.length >= n, EXPECT, 180_000);
  await until(app, 'every result played', () => window.tolk.played.length >= window.tolk.results.length && window.tolk.played.every((p) => p.ended_by), null, 60_000);
  const t = await app.evaluate(() => ({ results: window.tolk.results, failed: window.tolk.failed, played: window.tolk.played, queued: window.tolk.queued, states: window.tolk.states, dom: [...document.querySelectorAll('#results li')].map((li) => ({ index: Number(li.dataset.index), cls: li.className, tr: li.querySelector('.tr').textContent })) }));
  await shot(app, 'app.png');

  // Translations appear in order, one per utterance, and nothing failed.
  const indexes = t.results.map((r) => r.index);
  check(t.failed.length === 0, `no utterance failed: ${JSON.stringify(t.failed)}`);
  check(JSON.stringify(indexes) === JSON.stringify([...Array(EXPECT).keys()]), `results 0..${EXPECT} in order: ${indexes}`);
  check(JSON.stringify(t.dom.map((d) => d.index)) === JSON.stringify(indexes), `the page lists them in order: ${JSON.stringify(t.dom)}`);
  check(t.dom.every((d) => d.cls.includes('played') && d.tr.length > 0), `each shows a translation and was played: ${JSON.stringify(t.dom)}`);
  check(t.results.every((r) => r.text_translated.trim().length > 0), 'every translation has text');

  // The played speech is the node's: the bytes of each result's tts_audio,
  // as they arrived on the wire, in index order, one after another.
  const wire = new Map();
  for (const f of received) if (f.type === 'translation_result' && !wire.has(f.utterance_index)) wire.set(f.utterance_index, f);
  check(JSON.stringify(t.played.map((p) => p.index)) === JSON.stringify(indexes), `played in index order: ${t.played.map((p) => p.index)}`);
  for (const p of t.played) {
    const f = wire.get(p.index);
    check(f && f.tts_audio, `a result frame with speech for ${p.index}`);
    const sha = createHash('sha256').update(Buffer.from(f.tts_audio, 'base64')).digest('hex');
    check(sha === p.sha256, `utterance ${p.index}: played ${p.sha256}, the node sent ${sha}`);
    check(p.ended_by === 'ended', `utterance ${p.index} played to its end (${p.ended_by})`);
    check(p.duration_s > 0.2, `utterance ${p.index} has speech (${p.duration_s} s)`);
  }
  for (let i = 1; i < t.played.length; i++) check(t.played[i].started_ms >= t.played[i - 1].ended_ms, `clip ${i} starts after clip ${i - 1} ends`);

  // The session rules, as seen on the wire.
  const inits = sent.filter((f) => f.type === 'session_init');
  check(inits[0].platform === 'web' && inits[0].src_lang === 'en' && inits[0].tgt_lang === 'es', `session_init: ${JSON.stringify(inits[0])}`);
  const resume = inits.find((f) => f.resume_token);
  check(resume && resume.session_id && Number.isInteger(resume.last_utterance_index), `a resume with session_id, resume_token, last_utterance_index: ${JSON.stringify(inits)}`);
  const utt = sent.filter((f) => f.type === 'utterance');
  // Opus on the wire (extension 12): WebCodecs encodes each utterance, the
  // page muxes it into one Ogg Opus stream; results come back as Ogg Opus
  // and play through the browser's decoder.
  const opus = await app.evaluate(() => ({ support: window.tolk.opus, encoded: window.tolk.encoded }));
  check(opus.support && opus.support.encode && opus.support.play, `Chromium encodes and plays Opus: ${JSON.stringify(opus.support)}`);
  check(utt.every((u) => u.audio_format === 'opus' && u.sample_rate === 16000), `utterances go as Opus, captured at 16 kHz: ${JSON.stringify(utt.map((u) => u.audio_format))}`);
  for (const u of utt) {
    const b = Buffer.from(u.audio, 'base64');
    check(b.subarray(0, 4).toString() === 'OggS' && b.subarray(28, 36).toString() === 'OpusHead' && b[37] === 1, `utterance ${u.utterance_index}: a mono Ogg Opus stream`);
  }
  const pcmBytes = opus.encoded.reduce((n, e) => n + e.pcm_bytes, 0);
  const opusBytes = opus.encoded.reduce((n, e) => n + e.opus_bytes, 0);
  check(opus.encoded.length >= EXPECT && opusBytes * 5 < pcmBytes, `Opus is a fraction of pcm16: ${opusBytes} of ${pcmBytes} bytes`);
  note(`opus: ${opus.encoded.length} utterances encoded, ${opusBytes} bytes for ${pcmBytes} of pcm16 (${((100 * opusBytes) / pcmBytes).toFixed(1)} %)`);
  check(inits[0].tts_format === 'opus', `session_init asks for Opus speech: ${JSON.stringify(inits[0])}`);
  check(t.played.every((p) => p.format === 'opus'), `results' speech is Opus: ${JSON.stringify(t.played.map((p) => p.format))}`);
  const firstSend = [...new Set(utt.map((u) => u.utterance_index))];
  check(JSON.stringify(firstSend) === JSON.stringify([...firstSend].sort((a, b) => a - b)), `indexes increase: ${firstSend}`);
  check(inits[0].pairing_code === pairingCode, 'the pairing code goes in session_init');
  // Heartbeats (every 5 s) carry the highest index with an outcome.
  const deadline = Date.now() + 15_000;
  while (!sent.some((f) => f.type === 'client_heartbeat' && f.last_utterance_index === EXPECT - 1) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  const beats = sent.filter((f) => f.type === 'client_heartbeat');
  check(beats.some((f) => f.last_utterance_index === EXPECT - 1), `a heartbeat reports last_utterance_index ${EXPECT - 1}: ${JSON.stringify(beats)}`);
  note(`${utt.length} utterance frames, ${beats.length} heartbeats, ${inits.length} session_init`);

  // ---- push-to-talk: only what is said while the button is held is heard,
  // and releasing it mid-sentence cuts the utterance there (manual_cut).
  const ptt = await launch(PTT_WAV);
  const talk = await ptt.newPage();
  const pttSent = [];
  talk.on('websocket', (ws) => ws.on('framesent', (f) => pttSent.push(JSON.parse(f.payload))));
  await talk.goto(`${BASE}/app/`);
  await until(talk, 'the client loads', () => window.tolk.ready && document.querySelectorAll('#src option').length > 0, null, 30_000);
  await talk.selectOption('#src', 'en');
  await talk.selectOption('#tgt', 'es');
  await talk.check('#ptt');
  check((await talk.textContent('#talk')) === 'Hold to talk', 'the button says hold to talk');
  await talk.click('#start');
  await until(talk, 'the talk button is ready', () => !document.getElementById('talk').disabled, null, 30_000);
  await talk.hover('#talk');
  await talk.mouse.down();
  await until(talk, 'speech is heard while the button is held', () => document.getElementById('speech').textContent === 'speech', null, 30_000);
  await talk.waitForTimeout(900); // into the sentence, then let go
  await talk.mouse.up();
  await until(talk, 'the cut utterance is translated', () => window.tolk.results.length + window.tolk.failed.length >= 1, null, 60_000);
  await talk.waitForTimeout(3000); // the rest of the sentence plays into a released button
  const p = await talk.evaluate(() => ({ queued: window.tolk.queued, results: window.tolk.results, failed: window.tolk.failed }));
  await shot(talk, 'app-push-to-talk.png');
  check(p.queued.length === 1 && p.queued[0].manual_cut, `one utterance, cut by the release: ${JSON.stringify(p.queued)}`);
  check(p.failed.length === 0 && p.results.length === 1, `it was translated: ${JSON.stringify(p)}`);
  const pttUtt = pttSent.filter((f) => f.type === 'utterance');
  check(pttUtt.length === 1 && pttUtt[0].manual_cut === true && pttUtt[0].utterance_index === 0, 'the utterance goes with manual_cut');
  note(`push-to-talk heard ${JSON.stringify(p.results[0].text_asr)}`);
  // Stop: the session closes cleanly (session_close, its ack, Closed).
  await talk.click('#stop');
  await until(talk, 'the session closes', () => window.tolk.states.some((s) => s.state === 'closed' && s.reason === 'closed by the app'), null, 30_000);
  check(pttSent.some((f) => f.type === 'session_close'), 'session_close was sent');
  check(await talk.evaluate(() => !document.getElementById('start').disabled), 'Start works again after Stop');

  // ---- a wrong pairing code: refused, said so, and the page is ready again
  const wrong = await ptt.newPage();
  await wrong.goto(`${BASE}/app/`);
  await until(wrong, 'the client loads', () => window.tolk.ready && document.querySelectorAll('#src option').length > 0, null, 30_000);
  await wrong.fill('#pairing', pairingCode === '123456' ? '654321' : '123456');
  await wrong.click('#start');
  await until(wrong, 'the refusal is shown', () => window.tolk.errors.some((e) => e.includes('INVALID_PAIRING_CODE')) && window.tolk.states.some((s) => s.state === 'closed'), null, 30_000);
  await until(wrong, 'Start works again', () => !document.getElementById('start').disabled, null, 10_000);
  check((await wrong.textContent('#log')).includes('INVALID_PAIRING_CODE'), 'the log says why');
  check(await wrong.evaluate(() => document.getElementById('stop').disabled && document.getElementById('speech').textContent === 'idle'), 'the microphone is off again');
  await shot(wrong, 'app-wrong-pairing-code.png');
  await ptt.close();

  // ---- the dashboard's counters moved while the session spoke
  await until(dash, 'the dashboard counts the results', (n) => (window.dash.last.outcomes.result || 0) >= n, before.results + EXPECT, 15_000);
  const after = await dash.evaluate(() => ({ results: window.dash.last.outcomes.result, utterances: window.dash.last.counters.tolk_utterances_total, jobs: window.dash.last.histograms.tolk_job_seconds.count, snapshots: window.dash.snapshots, shown: document.getElementById('k-results').textContent }));
  check(after.utterances >= before.utterances + EXPECT, `utterances counted: ${JSON.stringify({ before, after })}`);
  check(after.jobs >= EXPECT, `job latencies observed: ${after.jobs}`);
  check(after.snapshots > before.snapshots + 3, 'the feed kept updating');
  check(Number(after.shown) === after.results, 'the page shows the count');
  await shot(dash, 'dashboard-3-after-session.png');

  // ---- the node is killed: shown gone
  await step('kill-node');
  await until(dash, 'the dashboard shows the node gone', (id) => !!document.querySelector(`tr[data-node="${id}"][data-state="gone"]`), nodeId, 30_000);
  await shot(dash, 'dashboard-4-node-gone.png');

  // ---- the dispatcher is gone: clearly degraded
  await step('kill-dispatcher');
  await until(dash, 'the dashboard shows it is offline', () => document.body.classList.contains('degraded'), null, 20_000);
  await shot(dash, 'dashboard-5-offline.png');
  await until(app, 'the client shows it is disconnected', () => document.getElementById('conn').dataset.state !== 'connected', null, 30_000);
  await shot(app, 'app-offline.png');

  // Utterance cut (queued) → its translation on the page, per utterance.
  const latency_ms = t.results.map((r) => Math.round(r.at_ms - t.queued.find((q) => q.index === r.index).at_ms));
  say(`RESULT ${JSON.stringify({ latency_ms, node_id: nodeId, ptt_heard: p.results[0].text_asr, results: t.results, played: t.played.map((p) => ({ index: p.index, sha256: p.sha256, duration_s: p.duration_s })), utterance_frames: utt.length, heartbeats: beats.length })}`);
  say('PASS');
  await context.close();
  cleanup();
  process.exit(0);
} catch (e) {
  say(`FAIL ${e.message.replace(/\n/g, ' ')}`);
  try {
    for (const [i, p] of (context ? context.pages() : []).entries()) await shot(p, `failure-${i}.png`);
  } catch {}
  if (context) await context.close().catch(() => {});
  cleanup();
  process.exit(1);
}
