"""Python binding test: the generated module (bindings/generated/python) over
the real libtolk_ffi.so (through ctypes), against a real dispatcher with a
fake node (the testbed), fed real speech (espeak-ng). Run by
bindings/test-bindings.sh: TOLK_URL names the testbed; the arguments are the
speech file (raw pcm16 little-endian, 16 kHz mono) and how many sentences it
holds."""

import os
import queue
import socket
import sys
import time

import tolk_ffi as t


class Recorder(t.TolkListener):
    """Records every callback; called on the client's worker thread."""

    def __init__(self):
        self.events = queue.Queue()

    def on_state(self, state):
        self.events.put(("state", state))

    def on_utterance(self, utterance):
        self.events.put(("queued", utterance))

    def on_result(self, result):
        self.events.put(("result", result))

    def on_failure(self, failure):
        self.events.put(("failure", failure))

    def on_error(self, error):
        self.events.put(("error", error))

    def until_closed(self, timeout=60.0):
        got = []
        deadline = time.monotonic() + timeout
        while True:
            kind, value = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            got.append((kind, value))
            if kind == "state" and value.is_CLOSED():
                return got


def config(url, **kw):
    return t.TolkConfig(url=url, src_lang="en", tgt_lang="de", platform=t.Platform.ANDROID, **kw)


def of(events, kind):
    return [v for k, v in events if k == kind]


def test_speech_gives_ordered_results(url, pcm, sentences):
    rec = Recorder()
    client = t.TolkClient(config(url), rec)
    piece = 3200  # 100 ms
    t0 = time.perf_counter()
    pushes = 0
    for off in range(0, len(pcm), piece):
        client.push_audio(pcm[off:off + piece])
        pushes += 1
    push_us = (time.perf_counter() - t0) * 1e6 / pushes
    client.close()
    events = rec.until_closed()
    assert client.wait_closed(5000), "worker did not stop"
    queued = of(events, "queued")
    results = of(events, "result")
    assert [q.index for q in queued] == list(range(sentences)), events
    assert [r.index for r in results] == [q.index for q in queued], events
    assert not of(events, "failure") and not of(events, "error"), events
    for i, r in enumerate(results):
        ms = queued[i].end_ms - queued[i].start_ms
        assert r.text_translated == f"utterance {i}: {ms} ms", (r, ms)
        # Opus both ways (the default): the node measured the Opus it got
        # exactly (above) and answered 100 ms of Opus, decoded here to pcm16.
        assert r.tts_audio is not None and len(r.tts_audio) == 3200 and r.tts_format == "pcm16" and r.tts_sample_rate == 16000, r
    states = of(events, "state")
    assert states[0].is_CONNECTING() and states[1].is_CONNECTED() and states[-1].is_CLOSED(), states
    print(f"  push_audio: {push_us:.1f} us per 100 ms piece ({pushes} pieces)")


def test_encodings_are_the_apps_choice(url, pcm, sentences):
    pcm_both = config(url, audio_encoding=t.AudioEncoding.PCM16, tts_format=t.AudioEncoding.PCM16)
    raw_opus = config(url, opus_bitrate_bps=16000, opus_complexity=10, decode_tts=False)
    for cfg, want in [(pcm_both, "pcm16"), (raw_opus, "opus")]:
        rec = Recorder()
        client = t.TolkClient(cfg, rec)
        client.push_audio(pcm)
        client.close()
        results = of(rec.until_closed(), "result")
        assert [r.index for r in results] == list(range(sentences)), (want, results)
        for r in results:
            assert r.tts_format == want, r
            if want == "pcm16":
                assert len(r.tts_audio) == 8, r
            else:
                assert r.tts_audio[:4] == b"OggS", r
    try:
        t.TolkClient(config(url, opus_complexity=11), Recorder())
        raise AssertionError("complexity 11 must be refused")
    except t.TolkError.InvalidConfig as e:
        assert "complexity" in str(e), str(e)


def test_a_raising_listener_does_not_stop_the_client(url, pcm, sentences):
    class Raising(Recorder):
        def on_utterance(self, utterance):
            raise RuntimeError("app bug in on_utterance")

    rec = Raising()
    client = t.TolkClient(config(url), rec)
    client.push_audio(pcm)
    client.close()
    events = rec.until_closed()
    assert [r.index for r in of(events, "result")] == list(range(sentences)), events


def test_a_dead_first_url_falls_back_to_the_next(url, pcm, sentences):
    with socket.socket() as s:  # a port just freed: nobody listens there
        s.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{s.getsockname()[1]}/ws/session"
    rec = Recorder()
    client = t.TolkClient(config(dead, fallback_urls=[url]), rec)
    client.push_audio(pcm)
    client.close()
    events = rec.until_closed()
    assert [r.index for r in of(events, "result")] == list(range(sentences)), events
    states = of(events, "state")
    assert len(states) == 5 and states[0].is_connecting() and states[1].is_disconnected(), states
    assert states[2].is_connecting() and states[3].is_connected() and states[4].is_closed(), states
    assert dead in states[1].reason, states[1]
    try:
        t.TolkClient(config(url, fallback_urls=["http://nowhere"]), Recorder())
        raise AssertionError("a non-ws fallback url must be refused")
    except t.TolkError.InvalidConfig as e:
        assert "fallback_urls" in str(e) and "http://nowhere" in str(e), str(e)


def test_errors_are_typed(url, pcm, sentences):
    try:
        t.TolkClient(config(url, sample_rate=44100), Recorder())
        raise AssertionError("44.1 kHz must be refused by the VAD")
    except t.TolkError.InvalidConfig as e:
        assert "44100" in str(e), str(e)
    rec = Recorder()
    client = t.TolkClient(config(url, pairing_code="000000"), rec)
    try:
        client.push_audio(b"\x01\x02\x03")
        raise AssertionError("odd byte count must be refused")
    except t.TolkError.InvalidAudio as e:
        assert "odd" in str(e), str(e)
    events = rec.until_closed()
    refused = [e for e in of(events, "error") if isinstance(e, t.TolkError.SessionRefused)]
    assert len(refused) == 1 and refused[0].code == "INVALID_PAIRING_CODE", events
    assert client.wait_closed(5000)
    try:
        client.push_audio(bytes(320))
        raise AssertionError("a closed client takes no audio")
    except t.TolkError.Closed:
        pass


def test_push_cost(url, pcm, sentences):
    """Measures push_audio: 20 ms pieces of silence."""
    client = t.TolkClient(config(url), Recorder())
    piece = bytes(640)
    for _ in range(100):
        client.push_audio(piece)
    n = 500
    t0 = time.perf_counter()
    for _ in range(n):
        client.push_audio(piece)
    us = (time.perf_counter() - t0) * 1e6 / n
    client.close()
    assert client.wait_closed(10000)
    print(f"  push_audio: {us:.1f} us per 20 ms piece")


def main():
    url = os.environ["TOLK_URL"]
    pcm = open(sys.argv[1], "rb").read()
    sentences = int(sys.argv[2])
    print(f"python: tolk-ffi {t.sdk_version()} at {url}")
    passed = failed = 0
    for name, test in [(n, f) for n, f in globals().items() if n.startswith("test_")]:
        try:
            test(url, pcm, sentences)
            print(f"ok   {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure
            print(f"FAIL {name}: {e!r}")
            failed += 1
    print(f"python: {passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
