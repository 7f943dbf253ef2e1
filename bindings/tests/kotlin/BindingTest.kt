// Kotlin binding test: the generated bindings (bindings/generated/kotlin) over
// the real libtolk_ffi.so (through JNA), against a real dispatcher with a fake
// node (the testbed), fed real speech (espeak-ng). Run by
// bindings/test-bindings.sh: TOLK_URL names the testbed; the arguments are the
// speech file (raw pcm16 little-endian, 16 kHz mono) and how many sentences it
// holds.

import dev.tolk.sdk.*
import java.io.File
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlin.system.exitProcess

sealed class Ev {
    data class State(val state: ConnectionState) : Ev()
    data class Queued(val utterance: QueuedUtterance) : Ev()
    data class Result(val result: TranslationResult) : Ev()
    data class Failure(val failure: UtteranceFailure) : Ev()
    data class Error(val error: TolkException) : Ev()
}

/** Records every callback; called on the client's worker thread. */
class Recorder : TolkListener {
    val events = LinkedBlockingQueue<Ev>()
    override fun onState(state: ConnectionState) { events.add(Ev.State(state)) }
    override fun onUtterance(utterance: QueuedUtterance) { events.add(Ev.Queued(utterance)) }
    override fun onResult(result: TranslationResult) { events.add(Ev.Result(result)) }
    override fun onFailure(failure: UtteranceFailure) { events.add(Ev.Failure(failure)) }
    override fun onError(error: TolkException) { events.add(Ev.Error(error)) }

    /** Every event up to and including Closed. */
    fun untilClosed(timeoutS: Long = 60): List<Ev> {
        val got = mutableListOf<Ev>()
        while (true) {
            val e = events.poll(timeoutS, TimeUnit.SECONDS) ?: throw AssertionError("no Closed within $timeoutS s: $got")
            got.add(e)
            if (e is Ev.State && e.state is ConnectionState.Closed) return got
        }
    }
}

fun check(cond: Boolean, msg: () -> String) {
    if (!cond) throw AssertionError(msg())
}

fun config(url: String) = TolkConfig(url = url, srcLang = "en", tgtLang = "de", platform = Platform.ANDROID)

/** Speech in, one result per sentence out, in order, measured by the node. */
fun speechGivesOrderedResults(url: String, pcm: ByteArray, sentences: Int) {
    val rec = Recorder()
    val client = TolkClient(config(url), rec)
    // 100 ms pieces, as a microphone callback would deliver them.
    val piece = 3200
    var pushes = 0
    val t0 = System.nanoTime()
    for (off in 0 until pcm.size step piece) {
        client.pushAudio(pcm.copyOfRange(off, minOf(off + piece, pcm.size)))
        pushes++
    }
    val pushUs = (System.nanoTime() - t0) / 1000.0 / pushes
    client.closeSession()
    val events = rec.untilClosed()
    check(client.waitClosed(5000uL)) { "worker did not stop" }

    val queued = events.filterIsInstance<Ev.Queued>().map { it.utterance }
    val results = events.filterIsInstance<Ev.Result>().map { it.result }
    check(queued.map { it.index } == (0 until sentences).map { it.toULong() }) { "one utterance per sentence: $events" }
    check(results.map { it.index } == queued.map { it.index }) { "one result per utterance, in order: $events" }
    check(events.none { it is Ev.Failure || it is Ev.Error }) { "no failure, no error: $events" }
    for ((i, r) in results.withIndex()) {
        val ms = queued[i].endMs - queued[i].startMs
        check(r.textTranslated == "utterance $i: $ms ms") { "node measured the audio sent: ${r.textTranslated} vs $ms ms" }
        // Opus both ways (the default): the node measured the Opus it got
        // exactly (above) and answered 100 ms of Opus, decoded here to PCM16.
        check(r.ttsAudio?.size == 3200 && r.ttsFormat == "pcm16" && r.ttsSampleRate == 16000u) { "opus speech decoded: $r" }
    }
    val states = events.filterIsInstance<Ev.State>().map { it.state }
    check(states.first() is ConnectionState.Connecting && states[1] is ConnectionState.Connected && states.last() is ConnectionState.Closed) { "$states" }
    println("  push_audio: %.1f us per 100 ms piece (%d pieces)".format(pushUs, pushes))
}

/** The encoding is the app's choice: PCM16 both ways, or the Opus bytes as they came. */
fun encodingsAreChosen(url: String, pcm: ByteArray, sentences: Int) {
    val pcmBoth = config(url).copy(audioEncoding = AudioEncoding.PCM16, ttsFormat = AudioEncoding.PCM16)
    val rawOpus = config(url).copy(opusBitrateBps = 16000u, opusComplexity = 10u, decodeTts = false)
    for ((cfg, want) in listOf(pcmBoth to "pcm16", rawOpus to "opus")) {
        val rec = Recorder()
        val client = TolkClient(cfg, rec)
        client.pushAudio(pcm)
        client.closeSession()
        val events = rec.untilClosed()
        val results = events.filterIsInstance<Ev.Result>().map { it.result }
        check(results.map { it.index } == (0 until sentences).map { it.toULong() }) { "$want: $events" }
        for (r in results) {
            val audio = r.ttsAudio ?: throw AssertionError("$want: no speech: $r")
            check(r.ttsFormat == want) { "$want: $r" }
            if (want == "pcm16") check(audio.size == 8) { "the node's pcm16 as it was: $r" }
            else check(String(audio.copyOfRange(0, 4)) == "OggS") { "Ogg Opus bytes: $r" }
        }
    }
    val bad = config(url).copy(opusComplexity = 11u)
    try {
        TolkClient(bad, Recorder())
        throw AssertionError("complexity 11 must be refused")
    } catch (e: TolkException.InvalidConfig) {
        check(e.message?.contains("complexity") == true) { "readable message: ${e.message}" }
    }
}

/** Manual cut: push speech without its trailing silence, cut, get it. */
fun manualCut(url: String, pcm: ByteArray) {
    val rec = Recorder()
    val client = TolkClient(config(url), rec)
    client.pushAudio(pcm.copyOfRange(0, 16000 * 2 * 2)) // the first 2 s: silence then speech
    client.cut()
    client.closeSession()
    val events = rec.untilClosed()
    val queued = events.filterIsInstance<Ev.Queued>().map { it.utterance }
    check(queued.size == 1 && queued[0].manualCut) { "one manual cut: $events" }
    check(events.filterIsInstance<Ev.Result>().size == 1) { "its result: $events" }
}

/** A listener that throws loses that one callback; the session goes on. */
fun aThrowingListenerDoesNotStopTheClient(url: String, pcm: ByteArray, sentences: Int) {
    val rec = object : TolkListener {
        val inner = Recorder()
        override fun onState(state: ConnectionState) = inner.onState(state)
        override fun onUtterance(utterance: QueuedUtterance) = throw IllegalStateException("app bug in onUtterance")
        override fun onResult(result: TranslationResult) = inner.onResult(result)
        override fun onFailure(failure: UtteranceFailure) = inner.onFailure(failure)
        override fun onError(error: TolkException) = inner.onError(error)
    }
    val client = TolkClient(config(url), rec)
    client.pushAudio(pcm)
    client.closeSession()
    val events = rec.inner.untilClosed()
    check(events.filterIsInstance<Ev.Result>().map { it.result.index } == (0 until sentences).map { it.toULong() }) { "$events" }
}

/** A dead first URL costs one failed attempt; the fallback serves the session. */
fun aDeadFirstUrlFallsBack(url: String, pcm: ByteArray, sentences: Int) {
    val dead = java.net.ServerSocket(0).use { "ws://127.0.0.1:${it.localPort}/ws/session" } // nobody listens there now
    val rec = Recorder()
    val client = TolkClient(config(dead).copy(fallbackUrls = listOf(url)), rec)
    client.pushAudio(pcm)
    client.closeSession()
    val events = rec.untilClosed()
    check(events.filterIsInstance<Ev.Result>().map { it.result.index } == (0 until sentences).map { it.toULong() }) { "$events" }
    val states = events.filterIsInstance<Ev.State>().map { it.state }
    check(states.size == 5 && states[0] is ConnectionState.Connecting && states[2] is ConnectionState.Connecting &&
        states[3] is ConnectionState.Connected && states[4] is ConnectionState.Closed) { "$states" }
    val lost = states[1] as? ConnectionState.Disconnected ?: throw AssertionError("$states")
    check(lost.reason.contains(dead)) { "names the dead URL: $lost" }
    try {
        TolkClient(config(url).copy(fallbackUrls = listOf("http://nowhere")), Recorder())
        throw AssertionError("a non-ws fallback url must be refused")
    } catch (e: TolkException.InvalidConfig) {
        check(e.reason.contains("fallback_urls") && e.reason.contains("http://nowhere")) { "readable message: ${e.reason}" }
    }
}

fun errorsAreTyped(url: String) {
    try {
        TolkClient(TolkConfig(url = url, srcLang = "not a tag", tgtLang = "de"), Recorder())
        throw AssertionError("a bad language tag must be refused")
    } catch (e: TolkException.InvalidConfig) {
        check(e.reason.contains("src_lang")) { "readable message: ${e.reason}" }
    }
    try {
        TolkClient(TolkConfig(url = "http://nowhere", srcLang = "en", tgtLang = "de"), Recorder())
        throw AssertionError("a non-ws url must be refused")
    } catch (e: TolkException.InvalidConfig) {
        check(e.reason.contains("ws://")) { "readable message: ${e.reason}" }
    }
    val rec = Recorder()
    val client = TolkClient(config(url).copy(pairingCode = "000000"), rec)
    try {
        client.pushAudio(byteArrayOf(1, 2, 3))
        throw AssertionError("odd byte count must be refused")
    } catch (e: TolkException.InvalidAudio) {
        check(e.reason.contains("odd")) { "readable message: ${e.reason}" }
    }
    // A wrong pairing code: the server refuses the session, the client stops.
    val events = rec.untilClosed()
    val refused = events.filterIsInstance<Ev.Error>().map { it.error }.filterIsInstance<TolkException.SessionRefused>()
    check(refused.size == 1 && refused[0].code == "INVALID_PAIRING_CODE") { "$events" }
    check(client.waitClosed(5000uL)) { "stopped" }
    try {
        client.pushAudio(ByteArray(320))
        throw AssertionError("a closed client takes no audio")
    } catch (e: TolkException.Closed) {
    }
}

/** Measures push_audio once the JIT is warm: 20 ms pieces of silence. */
fun pushCost(url: String) {
    val client = TolkClient(config(url), Recorder())
    val piece = ByteArray(640)
    repeat(500) { client.pushAudio(piece) }
    val n = 500
    val t0 = System.nanoTime()
    repeat(n) { client.pushAudio(piece) }
    val us = (System.nanoTime() - t0) / 1000.0 / n
    client.closeSession()
    check(client.waitClosed(10000uL)) { "stopped" }
    println("  push_audio (warm): %.1f us per 20 ms piece".format(us))
}

fun main(args: Array<String>) {
    val url = System.getenv("TOLK_URL") ?: throw IllegalStateException("TOLK_URL is not set")
    val pcm = File(args[0]).readBytes()
    val sentences = args[1].toInt()
    println("kotlin: tolk-ffi ${sdkVersion()} at $url")
    val tests = listOf<Pair<String, () -> Unit>>(
        "speech gives one ordered result per sentence" to { speechGivesOrderedResults(url, pcm, sentences) },
        "manual cut" to { manualCut(url, pcm) },
        "opus or pcm16, each way, is the app's choice" to { encodingsAreChosen(url, pcm, sentences) },
        "a throwing listener does not stop the client" to { aThrowingListenerDoesNotStopTheClient(url, pcm, sentences) },
        "a dead first URL falls back to the next" to { aDeadFirstUrlFallsBack(url, pcm, sentences) },
        "errors are typed, with readable messages" to { errorsAreTyped(url) },
        "push_audio cost" to { pushCost(url) },
    )
    var passed = 0
    var failed = 0
    for ((name, test) in tests) {
        try {
            test()
            println("ok   $name")
            passed++
        } catch (e: Throwable) {
            println("FAIL $name: $e")
            failed++
        }
    }
    println("kotlin: $passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
