// The web session client: the shell around the SDK's chunker and session,
// compiled to wasm (tolk_client.wasm, from dispatcher/web/client-wasm).
//
// Every decision — where an utterance starts and ends, its index, when to
// heartbeat (with last_utterance_index), when to reconnect, resuming with
// the resume_token, re-sending what has no outcome, the order of results —
// is the Rust SDK's. This file only moves things: microphone samples in,
// WebSocket frames in and out, timers, and the speaker, which plays results
// one after another in the order the session delivers them.
//
// `window.tolk` exposes what happened, for people (devtools) and tests.

const $ = (id) => document.getElementById(id);
const enc = new TextEncoder();
const dec = new TextDecoder();

const tolk = (window.tolk = { ready: false, states: [], queued: [], results: [], failed: [], played: [], errors: [], encoded: [], opus: null });

// ------------------------------------------------------------------ wasm

class Wasm {
  static async load() {
    const { instance } = await WebAssembly.instantiateStreaming(fetch('/app/tolk_client.wasm'), {});
    return new Wasm(instance.exports);
  }
  constructor(x) {
    this.x = x;
  }
  /** Copies bytes into the module's input buffer; returns their length. */
  write(bytes) {
    const ptr = this.x.tolk_in_buf(bytes.length);
    if (ptr === 0 && bytes.length) throw new Error('input too long for the client');
    new Uint8Array(this.x.memory.buffer, ptr, bytes.length).set(bytes);
    return bytes.length;
  }
  /** The module's last output, parsed. */
  read(len) {
    if (!len) return null;
    return JSON.parse(dec.decode(new Uint8Array(this.x.memory.buffer, this.x.tolk_out_ptr(), len)));
  }
}

// Operations of tolk_client_op (see client-wasm/src/lib.rs).
const OP = { PUSH: 0, CUT: 1, FLUSH: 2, CONNECTED: 3, CONNECT_FAILED: 4, LOST: 5, FRAME: 6, CLOSE: 7, ABORT: 8, TIMERS: 9, ENCODED: 10, ENCODE_FAILED: 11 };

// ------------------------------------------------------------------ opus
//
// Opus on the wire (protocol extension 12): each utterance is one Ogg Opus
// stream (RFC 7845), mono. WebCodecs' AudioEncoder makes the Opus packets;
// the Ogg framing is written here (a few dozen lines: pages, lacing, CRC),
// as the Rust side does in tolk_protocol::ogg_opus::mux. Results' Opus is
// decoded by the browser (decodeAudioData) in the player.

/** Whether this browser can encode Opus (WebCodecs) and play Ogg Opus. */
async function opusSupport(sampleRate) {
  let encode = false;
  try {
    encode = typeof AudioEncoder !== 'undefined' && (await AudioEncoder.isConfigSupported({ codec: 'opus', sampleRate, numberOfChannels: 1, bitrate: 24000 })).supported === true;
  } catch (_) {
    encode = false;
  }
  const play = new Audio().canPlayType('audio/ogg; codecs=opus') !== '';
  return { encode, play };
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let k = 0; k < 8; k++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    t[i] = r >>> 0;
  }
  return t;
})();

function oggCrc(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  return crc;
}

/** 48 kHz samples in an Opus packet, from its TOC byte (RFC 6716 3.1). */
function packetSamples(p) {
  const toc = p[0];
  const config = toc >> 3;
  const frame = config < 12 ? [480, 960, 1920, 2880][config % 4] : config < 16 ? [480, 960][config % 2] : [120, 240, 480, 960][config % 4];
  const code = toc & 3;
  const frames = code === 0 ? 1 : code < 3 ? 2 : p[1] & 0x3f;
  return frame * frames;
}

function oggPage(flags, granule, seq, packets) {
  const lacing = [];
  for (const p of packets) {
    for (let n = p.length; ; n -= 255) {
      lacing.push(Math.min(n, 255));
      if (n < 255) break;
    }
  }
  const body = packets.reduce((n, p) => n + p.length, 0);
  const page = new Uint8Array(27 + lacing.length + body);
  const v = new DataView(page.buffer);
  page.set([0x4f, 0x67, 0x67, 0x53], 0); // "OggS"
  page[5] = flags;
  v.setBigUint64(6, BigInt(granule), true);
  v.setUint32(14, 0x546f6c6b, true); // serial: one stream per utterance
  v.setUint32(18, seq, true);
  page[26] = lacing.length;
  page.set(lacing, 27);
  let at = 27 + lacing.length;
  for (const p of packets) {
    page.set(p, at);
    at += p.length;
  }
  v.setUint32(22, oggCrc(page), true);
  return page;
}

/** One Ogg Opus stream of `packets`: headers, then audio pages, the last
 *  marked end-of-stream with the granule that trims the encoder's padding. */
function muxOggOpus(packets, preSkip, inputRate, samples48k) {
  const head = new Uint8Array(19);
  const hv = new DataView(head.buffer);
  head.set(enc.encode('OpusHead'), 0);
  head[8] = 1; // version
  head[9] = 1; // mono
  hv.setUint16(10, preSkip, true);
  hv.setUint32(12, inputRate, true);
  const vendor = enc.encode('tolk-web');
  const tags = new Uint8Array(8 + 4 + vendor.length + 4);
  tags.set(enc.encode('OpusTags'), 0);
  new DataView(tags.buffer).setUint32(8, vendor.length, true);
  tags.set(vendor, 12);
  const total = packets.reduce((n, p) => n + packetSamples(p), 0);
  // Never past what the packets hold (the dispatcher refuses that).
  const end = Math.max(preSkip, Math.min(preSkip + samples48k, total));
  const pages = [oggPage(2, 0, 0, [head]), oggPage(0, 0, 1, [tags])];
  let granule = 0;
  for (let i = 0; i < packets.length; i += 50) {
    const chunk = packets.slice(i, i + 50);
    granule += chunk.reduce((n, p) => n + packetSamples(p), 0);
    const last = i + 50 >= packets.length;
    pages.push(oggPage(last ? 4 : 0, last ? end : Math.min(granule, end), pages.length, chunk));
  }
  const out = new Uint8Array(pages.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pages) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Encodes mono pcm16 as one Ogg Opus stream with WebCodecs. */
async function encodeOggOpus(pcm, sampleRate, bitrate, complexity) {
  const packets = [];
  let description = null;
  let failure = null;
  const encoder = new AudioEncoder({
    output: (chunk, meta) => {
      const b = new Uint8Array(chunk.byteLength);
      chunk.copyTo(b);
      packets.push(b);
      if (meta && meta.decoderConfig && meta.decoderConfig.description) description = meta.decoderConfig.description;
    },
    error: (e) => {
      failure = e;
    },
  });
  encoder.configure({ codec: 'opus', sampleRate, numberOfChannels: 1, bitrate, opus: { frameDuration: 20000, complexity } });
  encoder.encode(new AudioData({ format: 's16', sampleRate, numberOfFrames: pcm.length, numberOfChannels: 1, timestamp: 0, data: pcm }));
  await encoder.flush();
  encoder.close();
  if (failure) throw failure;
  if (!packets.length) throw new Error('the Opus encoder gave no packet');
  // The encoder's own OpusHead (when it gives one) knows its pre-skip.
  let preSkip = 312;
  if (description) {
    const d = description instanceof ArrayBuffer ? new Uint8Array(description) : new Uint8Array(description.buffer, description.byteOffset, description.byteLength);
    if (d.length >= 12 && dec.decode(d.subarray(0, 8)) === 'OpusHead') preSkip = d[10] | (d[11] << 8);
  }
  return muxOggOpus(packets, preSkip, sampleRate, Math.round((pcm.length * 48000) / sampleRate));
}

/** The session's shell: runs its actions, feeds it sockets and timers. */
class Shell {
  constructor(wasm, url, settings, onEvent) {
    this.w = wasm;
    this.url = url;
    this.onEvent = onEvent;
    this.ws = null;
    this.gen = 0; // sockets of an older generation are ignored
    this.timer = null;
    // Utterances to encode as Opus, one after another so they reach the
    // session in the order they were cut.
    this.encoding = Promise.resolve();
    const len = wasm.write(enc.encode(JSON.stringify(settings)));
    const seed = crypto.getRandomValues(new Uint32Array(1))[0];
    this.h = wasm.x.tolk_client_new(len, performance.now(), Date.now(), seed);
    if (this.h < 0) throw new Error((wasm.read(wasm.x.tolk_out_len()) || {}).error || 'settings refused');
    this.op(OP.TIMERS); // runs the first actions (connect)
  }

  op(code, bytes) {
    if (this.h < 0) return;
    let len = 0;
    try {
      len = bytes ? this.w.write(bytes) : 0;
    } catch (e) {
      // Too large for the client's buffer (8 MiB): dropped here, so the
      // session's outcome timeout ends the wait for it.
      logLine(`dropped: ${e.message}`);
      return;
    }
    const out = this.w.x.tolk_client_op(this.h, code, len, performance.now());
    for (const a of this.w.read(out) || []) this.run(a);
    this.arm();
  }

  pushPcm(pcm) {
    this.op(OP.PUSH, new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength));
  }

  inSpeech() {
    return this.h >= 0 && this.w.x.tolk_client_in_speech(this.h) === 1;
  }

  run(a) {
    switch (a.do) {
      case 'connect':
        return this.connect();
      case 'send':
        if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(a.frame);
        return;
      case 'disconnect':
        return this.dropSocket();
      case 'deliver':
        return this.onEvent(a.event);
      case 'encode':
        return this.encode(a);
    }
  }

  /** Encodes an utterance the session handed out; on failure it goes as pcm16. */
  encode(a) {
    this.encoding = this.encoding.then(async () => {
      const raw = fromBase64(a.pcm);
      const pcm = new Int16Array(raw.buffer, raw.byteOffset, raw.byteLength >> 1);
      try {
        const ogg = await encodeOggOpus(pcm, a.sample_rate, a.bitrate, a.complexity);
        tolk.encoded.push({ pcm_bytes: raw.byteLength, opus_bytes: ogg.length });
        this.op(OP.ENCODED, ogg);
      } catch (e) {
        logLine(`opus encoding failed, sent as pcm16: ${e.message}`);
        this.op(OP.ENCODE_FAILED);
      }
    });
  }

  connect() {
    this.dropSocket();
    const gen = ++this.gen;
    let opened = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      if (gen !== this.gen) return;
      opened = true;
      this.op(OP.CONNECTED);
    };
    ws.onmessage = (m) => {
      if (gen !== this.gen || typeof m.data !== 'string') return;
      this.op(OP.FRAME, enc.encode(m.data));
    };
    ws.onclose = (e) => {
      if (gen !== this.gen) return;
      this.ws = null;
      this.op(opened ? OP.LOST : OP.CONNECT_FAILED, enc.encode(`closed (${e.code})`));
    };
  }

  dropSocket() {
    this.gen++;
    if (this.ws) this.ws.close();
    this.ws = null;
  }

  arm() {
    clearTimeout(this.timer);
    if (this.h < 0) return;
    const at = this.w.x.tolk_client_deadline(this.h);
    if (at >= 0) this.timer = setTimeout(() => this.op(OP.TIMERS), Math.max(0, at - performance.now()));
  }

  /** Forgets the session (after Closed). */
  release() {
    clearTimeout(this.timer);
    this.dropSocket();
    if (this.h >= 0) this.w.x.tolk_drop(this.h);
    this.h = -1;
  }
}

// --------------------------------------------------------------- speaker

function fromBase64(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function sha256(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Plays results' speech strictly one after another, in delivery order. */
class Player {
  constructor(ctx) {
    this.ctx = ctx;
    this.chain = Promise.resolve();
  }
  enqueue(r) {
    this.chain = this.chain.then(() => this.play(r)).catch((e) => logLine(`could not play utterance ${r.index}: ${e.message}`));
  }
  async play(r) {
    const bytes = fromBase64(r.tts_audio);
    let buffer;
    if (r.tts_format === 'pcm16') {
      const n = bytes.length >> 1;
      const view = new DataView(bytes.buffer, bytes.byteOffset, n * 2);
      buffer = this.ctx.createBuffer(1, Math.max(1, n), r.tts_sample_rate || 16000);
      const ch = buffer.getChannelData(0);
      for (let i = 0; i < n; i++) ch[i] = view.getInt16(2 * i, true) / 32768;
    } else {
      buffer = await this.ctx.decodeAudioData(bytes.slice().buffer); // wav, opus
    }
    const entry = { index: r.index, sha256: await sha256(bytes), bytes: bytes.length, format: r.tts_format, sample_rate: buffer.sampleRate, duration_s: buffer.duration, started_ms: performance.now() };
    tolk.played.push(entry);
    const li = $(`u-${r.index}`);
    li && li.classList.add('playing');
    entry.ended_by = await new Promise((done) => {
      const src = this.ctx.createBufferSource();
      src.buffer = buffer;
      src.connect(this.ctx.destination);
      src.onended = () => done('ended');
      src.start();
      // A stalled audio device must not hold back every later result.
      setTimeout(() => done('timeout'), buffer.duration * 1000 + 3000);
    });
    entry.ended_ms = performance.now();
    if (li) {
      li.classList.remove('playing');
      li.classList.add('played');
    }
  }
}

// ------------------------------------------------------------ microphone

class Microphone {
  async start(ctx, onPcm) {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    await ctx.audioWorklet.addModule('/app/capture.js');
    this.source = ctx.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(ctx, 'tolk-capture');
    this.node.port.onmessage = (e) => onPcm(e.data.pcm, e.data.peak);
    // A silent path to the destination keeps the worklet pulled.
    this.mute = ctx.createGain();
    this.mute.gain.value = 0;
    this.source.connect(this.node).connect(this.mute).connect(ctx.destination);
  }
  stop() {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.source) this.source.disconnect();
    if (this.node) this.node.port.onmessage = null;
  }
}

// -------------------------------------------------------------------- UI

function logLine(text) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  const log = $('log');
  log.prepend(li);
  while (log.children.length > 50) log.lastChild.remove();
}

function setBadge(el, text, on, state) {
  el.textContent = text;
  el.classList.toggle('on', on);
  el.classList.toggle('off', !on);
  if (state) el.dataset.state = state;
}

function resultItem(index) {
  let li = $(`u-${index}`);
  if (!li) {
    li = document.createElement('li');
    li.id = `u-${index}`;
    li.dataset.index = String(index);
    li.className = 'pending';
    li.innerHTML = '<span class="idx"></span><span class="asr"></span><span class="tr"></span>';
    li.querySelector('.idx').textContent = `#${index}`;
    li.querySelector('.asr').textContent = '…';
    $('results').append(li);
  }
  return li;
}

function updateCounts() {
  $('counts').textContent = `${tolk.queued.length} sent · ${tolk.results.length} translated · ${tolk.failed.length} failed`;
}

let pairs = [];

async function loadLanguages() {
  try {
    const r = await fetch('/app/languages', { cache: 'no-store' });
    const body = await r.json();
    pairs = Array.isArray(body.pairs) ? body.pairs : [];
  } catch (e) {
    pairs = [];
  }
  const src = $('src');
  const keep = src.value;
  const srcs = [...new Set(pairs.map((p) => p.src_lang))];
  src.replaceChildren(...srcs.map((l) => new Option(l, l)));
  if (srcs.includes(keep)) src.value = keep;
  fillTargets();
  $('langnote').textContent = pairs.length ? '' : 'No node can serve a language pair right now; the lists fill when one connects.';
  $('start').disabled = !pairs.length || !!session;
  return pairs.length;
}

function fillTargets() {
  const tgt = $('tgt');
  const keep = tgt.value;
  const tgts = pairs.filter((p) => p.src_lang === $('src').value).map((p) => p.tgt_lang);
  tgt.replaceChildren(...tgts.map((l) => new Option(l, l)));
  if (tgts.includes(keep)) tgt.value = keep;
}

let wasm = null;
let session = null;
let mic = null;
let ctx = null;
let player = null;
let held = false;

function onEvent(e) {
  switch (e.event) {
    case 'state': {
      const s = e.state;
      tolk.states.push(s);
      if (s.state === 'connected') {
        setBadge($('conn'), s.resumed ? 'connected (resumed)' : 'connected', true, 'connected');
        logLine(`session ${s.session_id}${s.resumed ? ' resumed' : ' opened'}${s.assigned_node_id ? ` on node ${s.assigned_node_id}` : ''}`);
      } else if (s.state === 'connecting') {
        setBadge($('conn'), 'connecting…', false, 'connecting');
      } else if (s.state === 'disconnected') {
        setBadge($('conn'), `reconnecting in ${(s.retry_in_ms / 1000).toFixed(1)} s`, false, 'disconnected');
        logLine(s.reason);
      } else if (s.state === 'closed') {
        setBadge($('conn'), 'not connected', false, 'closed');
        logLine(`closed: ${s.reason}`);
        finish();
      }
      return;
    }
    case 'queued': {
      tolk.queued.push({ ...e, at_ms: performance.now() });
      const li = resultItem(e.index);
      if (e.manual_cut) li.dataset.cut = 'manual';
      li.querySelector('.asr').textContent = `… ${((e.end_ms - e.start_ms) / 1000).toFixed(1)} s of speech${e.manual_cut ? ' (cut)' : ''}`;
      updateCounts();
      return;
    }
    case 'result': {
      tolk.results.push({ index: e.index, job_id: e.job_id, text_asr: e.text_asr, text_translated: e.text_translated, tts_format: e.tts_format, at_ms: performance.now() });
      const li = resultItem(e.index);
      li.className = 'done';
      li.dataset.job = e.job_id;
      li.querySelector('.asr').textContent = e.text_asr;
      li.querySelector('.tr').textContent = e.text_translated;
      if (e.tts_audio && player) player.enqueue(e);
      updateCounts();
      return;
    }
    case 'failed': {
      tolk.failed.push(e);
      const li = resultItem(e.index);
      li.className = 'failed';
      li.querySelector('.asr').textContent = `${e.code}`;
      li.querySelector('.tr').textContent = e.message;
      updateCounts();
      return;
    }
    case 'error':
      tolk.errors.push(e.message);
      logLine(e.message);
      return;
  }
}

async function start() {
  const code = $('pairing').value.trim();
  if (code && !/^[0-9]{6}$/.test(code)) {
    logLine('a pairing code is 6 digits');
    return;
  }
  $('start').disabled = true;
  try {
    ctx = new AudioContext({ sampleRate: 16000 });
    await ctx.resume();
    player = new Player(ctx);
    // The microphone first: if it is refused, no session is opened. Its
    // samples are dropped until the session exists (onPcm).
    mic = new Microphone();
    await mic.start(ctx, onPcm);
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/session`;
    const opus = (tolk.opus = await opusSupport(ctx.sampleRate));
    const settings = { src_lang: $('src').value, tgt_lang: $('tgt').value, pairing_code: code, sample_rate: ctx.sampleRate };
    if (opus.encode) Object.assign(settings, { audio_encoding: 'opus', opus_bitrate_bps: 24000, opus_complexity: 5 });
    if (opus.play) settings.tts_format = 'opus';
    session = new Shell(wasm, url, settings, onEvent);
    tolk.dropConnection = () => session && session.ws && session.ws.close(4000, 'dropped on purpose');
    $('stop').disabled = false;
    $('talk').disabled = false;
    setBadge($('speech'), 'listening', false);
    logLine(`listening at ${ctx.sampleRate} Hz: ${$('src').value} → ${$('tgt').value}; sending ${opus.encode ? 'Opus' : 'pcm16'}, speech back as ${opus.play ? 'Opus' : 'wav'}`);
  } catch (e) {
    logLine(`cannot start: ${e.message}`);
    if (session) session.op(OP.ABORT);
    finish();
  }
}

function onPcm(pcm, peak) {
  if (!session) return;
  // Push-to-talk: the chunker hears silence unless the button is held, so
  // its clock keeps running and the release is a manual cut.
  if ($('ptt').checked && !held) pcm.fill(0);
  session.pushPcm(pcm);
  $('level').style.width = `${Math.min(100, Math.round(peak * 140))}%`;
  const speaking = session && session.inSpeech();
  setBadge($('speech'), speaking ? 'speech' : 'silence', speaking);
}

function stop() {
  $('stop').disabled = true;
  $('talk').disabled = true;
  if (mic) mic.stop();
  mic = null;
  if (session) {
    const s = session;
    s.op(OP.FLUSH);
    // The last utterances may still be encoding: close after them.
    s.encoding.then(() => s.op(OP.CLOSE));
  }
}

function finish() {
  if (mic) mic.stop();
  mic = null;
  setBadge($('speech'), 'idle', false);
  $('level').style.width = '0';
  if (session) session.release();
  session = null;
  $('stop').disabled = true;
  $('talk').disabled = true;
  $('start').disabled = !pairs.length;
}

function cut() {
  if (session) session.op(OP.CUT);
}

async function main() {
  $('src').addEventListener('change', fillTargets);
  $('start').addEventListener('click', start);
  $('stop').addEventListener('click', stop);
  const talk = $('talk');
  $('ptt').addEventListener('change', () => (talk.textContent = $('ptt').checked ? 'Hold to talk' : 'Cut now'));
  talk.addEventListener('pointerdown', () => (held = true));
  talk.addEventListener('pointerup', () => {
    held = false;
    cut();
  });
  talk.addEventListener('pointerleave', () => {
    if (held) {
      held = false;
      cut();
    }
  });
  talk.addEventListener('keydown', (e) => e.key === ' ' && (held = true));
  talk.addEventListener('keyup', (e) => {
    if (e.key === ' ') {
      held = false;
      cut();
    }
  });
  try {
    wasm = await Wasm.load();
  } catch (e) {
    logLine(`cannot load the client: ${e.message}`);
    return;
  }
  await loadLanguages();
  // Languages follow the fleet: look again while nothing is running.
  setInterval(() => session || loadLanguages(), 3000);
  tolk.ready = true;
}

main();
