//! Sans-IO utterance chunker over `webrtc-vad`.
//!
//! [`Chunker`] takes mono PCM16 in pushes of any size, cuts it into frames of
//! 10, 20 or 30 ms for `webrtc-vad`, and runs a small state machine over the
//! per-frame voice decisions:
//!
//! - **Idle.** The last `pre_roll_ms + onset_window_ms` of audio are kept in a
//!   ring. Speech *starts* when at least `onset_voiced_ms` worth of voiced
//!   frames fall within the last `onset_window_ms` (and the newest frame is
//!   voiced): one voiced frame of noise does not open an utterance. The speech
//!   start is the first voiced frame of that window; the utterance's audio
//!   begins `pre_roll_ms` earlier (or as far back as the stream goes).
//! - **Speech.** Frames are appended. Speech *ends* once `hang_over_ms` of
//!   unvoiced frames follow the last voiced one. The utterance is then trimmed
//!   to the last voiced frame plus `tail_ms`; the trimmed-off silence goes back
//!   into the idle ring, where it can serve as pre-roll for the next one.
//!   Utterances whose voiced span (first to last voiced frame) is shorter than
//!   `min_speech_ms` are dropped as clicks.
//! - **Forced cut.** An utterance never holds more than `max_utterance_ms` of
//!   audio (pre-roll included): when the next frame would exceed it, the
//!   utterance is emitted with `forced: true` and a new one continues at once,
//!   contiguous, without overlap or pre-roll. A continuation is never dropped
//!   as too short (it is the end of a long utterance), but one that holds no
//!   voiced frame at all is.
//!
//! **Noise gate.** A frame counts as voiced when `webrtc-vad` says so *and*
//! its energy is at least `noise_gate_db` above a tracked noise floor. The
//! gate exists because
//! `webrtc-vad` alone cannot learn loud stationary noise (past a level it
//! calls all of it speech, for ever, and no utterance ever ends) and keeps
//! saying "voiced" for 60–140 ms after speech stops (its own hang-over), which
//! the gate trims off. The floor is the quietest recent frame energy, allowed
//! to rise by 3 dB/s; its first value is the first frame's energy. A sound
//! that starts with the stream and never dips (a pure tone) is therefore taken
//! for noise; real speech has dips between syllables within a fraction of a
//! second, and the tests check that speech from the first sample is kept.
//!
//! Time is the count of samples pushed since the chunker was created: no clock
//! is read, so a run is fully determined by its input. As long as neither
//! [`Chunker::cut`] nor [`Chunker::flush`] is called, the frame grid is fixed by
//! the stream, not by the push sizes, so any split of the same input gives the
//! same utterances.
//!
//! Measured on `espeak-ng` speech in white noise (`tests/espeak_chunking.rs`),
//! the defaults place speech boundaries within 70 ms of the truth at 20 dB SNR
//! and within 170 ms at 5 dB (starts late, ends early: the weakest sounds sink
//! under the noise); pre-roll and tail still hold all of the speech.

use std::collections::VecDeque;
use std::fmt;

use webrtc_vad::{SampleRate, Vad, VadMode};

use crate::SdkError;

/// Longest `max_utterance_ms` accepted: ten minutes keeps every buffer size in
/// range even on 32-bit targets.
const MAX_UTTERANCE_LIMIT_MS: u32 = 600_000;

/// How fast the noise floor follows a rising noise level. Slow enough that
/// the floor stays below speech between the dips of word gaps.
const NOISE_FLOOR_RISE_DB_PER_S: f64 = 3.0;

/// Settings of a [`Chunker`]. Durations are in milliseconds of audio.
///
/// The [`Default`] suits 16 kHz speech from a phone microphone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Input sample rate in Hz: 8000, 16000, 32000 or 48000.
    pub sample_rate: u32,
    /// VAD frame length: 10, 20 or 30 ms.
    pub frame_ms: u32,
    /// `webrtc-vad` mode, 0 (least aggressive: reports speech most readily)
    /// to 3 (most aggressive: reports speech least readily).
    pub aggressiveness: u8,
    /// Audio kept before the detected speech start.
    pub pre_roll_ms: u32,
    /// Unvoiced audio after the last voiced frame that ends an utterance.
    pub hang_over_ms: u32,
    /// Audio kept after the last voiced frame when an utterance ends on
    /// silence; at most `hang_over_ms`.
    pub tail_ms: u32,
    /// Utterances whose voiced span is shorter are dropped as clicks.
    pub min_speech_ms: u32,
    /// Longest utterance (pre-roll included) before a forced cut.
    pub max_utterance_ms: u32,
    /// Onset rule: the window of recent frames looked at...
    pub onset_window_ms: u32,
    /// ...and how much of it must be voiced for speech to start.
    pub onset_voiced_ms: u32,
    /// Energy gate over the VAD: a frame counts as voiced only if its energy
    /// is at least this many dB above the tracked noise floor. 0 turns the
    /// gate off (the VAD alone decides).
    pub noise_gate_db: u8,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            sample_rate: 16_000,
            frame_ms: 20,
            aggressiveness: 2,
            pre_roll_ms: 300,
            hang_over_ms: 600,
            tail_ms: 200,
            min_speech_ms: 200,
            max_utterance_ms: 30_000,
            onset_window_ms: 100,
            onset_voiced_ms: 60,
            noise_gate_db: 3,
        }
    }
}

impl ChunkerConfig {
    /// Checks every setting; [`Chunker::new`] calls it.
    pub fn validate(&self) -> Result<(), SdkError> {
        self.timing().map(|_| ())
    }

    /// Converts the millisecond settings into sample and frame counts.
    fn timing(&self) -> Result<Timing, SdkError> {
        fn invalid(field: &'static str, reason: &'static str) -> SdkError {
            SdkError::InvalidConfig { field, reason }
        }
        if !matches!(self.sample_rate, 8_000 | 16_000 | 32_000 | 48_000) {
            return Err(SdkError::UnsupportedSampleRate(self.sample_rate));
        }
        if !matches!(self.frame_ms, 10 | 20 | 30) {
            return Err(SdkError::UnsupportedFrameLength(self.frame_ms));
        }
        if self.aggressiveness > 3 {
            return Err(SdkError::InvalidAggressiveness(self.aggressiveness));
        }
        if self.max_utterance_ms > MAX_UTTERANCE_LIMIT_MS {
            return Err(invalid("max_utterance_ms", "longer than 10 minutes"));
        }
        if self.onset_window_ms < self.frame_ms {
            return Err(invalid("onset_window_ms", "shorter than one frame"));
        }
        if self.onset_voiced_ms == 0 {
            return Err(invalid("onset_voiced_ms", "must be positive"));
        }
        if self.onset_voiced_ms > self.onset_window_ms {
            return Err(invalid("onset_voiced_ms", "longer than onset_window_ms"));
        }
        if self.hang_over_ms < self.frame_ms {
            return Err(invalid("hang_over_ms", "shorter than one frame"));
        }
        if self.tail_ms > self.hang_over_ms {
            return Err(invalid("tail_ms", "longer than hang_over_ms"));
        }
        // At onset the utterance may already hold the pre-roll and the onset
        // window (in whole frames); one more frame must fit before a forced
        // cut.
        let window_ms = self.onset_window_ms.div_ceil(self.frame_ms) * self.frame_ms;
        let min_max = u64::from(self.pre_roll_ms) + u64::from(window_ms) + u64::from(self.frame_ms);
        if u64::from(self.max_utterance_ms) < min_max {
            return Err(invalid("max_utterance_ms", "shorter than pre_roll_ms + onset_window_ms + frame_ms"));
        }

        // Every length below is at most 10 minutes at 48 kHz (28.8 M
        // samples), so the conversions cannot fail; map them anyway rather
        // than cast.
        let rate = u64::from(self.sample_rate);
        let samples = |ms: u32| u64::from(ms) * rate / 1000;
        let to_usize = |n: u64, field| usize::try_from(n).map_err(|_| invalid(field, "too long"));
        let frame_len = to_usize(samples(self.frame_ms), "frame_ms")?;
        let onset_window = self.onset_window_ms.div_ceil(self.frame_ms);
        let onset_window = to_usize(u64::from(onset_window), "onset_window_ms")?;
        let onset_voiced = self.onset_voiced_ms.div_ceil(self.frame_ms);
        let onset_voiced = to_usize(u64::from(onset_voiced), "onset_voiced_ms")?;
        let pre_roll = to_usize(samples(self.pre_roll_ms), "pre_roll_ms")?;
        Ok(Timing {
            frame_len,
            onset_window,
            onset_voiced,
            pre_roll: pre_roll as u64,
            history_cap: pre_roll + onset_window * frame_len,
            hang_over: samples(self.hang_over_ms),
            tail: samples(self.tail_ms),
            min_speech: samples(self.min_speech_ms),
            max_utterance: to_usize(samples(self.max_utterance_ms), "max_utterance_ms")?,
            gate: (self.noise_gate_db > 0).then(|| 10f64.powf(f64::from(self.noise_gate_db) / 10.0)),
            floor_rise: 10f64.powf(NOISE_FLOOR_RISE_DB_PER_S * f64::from(self.frame_ms) / 10_000.0),
        })
    }

    fn vad_mode(&self) -> VadMode {
        match self.aggressiveness {
            0 => VadMode::Quality,
            1 => VadMode::LowBitrate,
            2 => VadMode::Aggressive,
            _ => VadMode::VeryAggressive,
        }
    }

    fn vad_rate(&self) -> SampleRate {
        match self.sample_rate {
            8_000 => SampleRate::Rate8kHz,
            16_000 => SampleRate::Rate16kHz,
            32_000 => SampleRate::Rate32kHz,
            _ => SampleRate::Rate48kHz,
        }
    }
}

/// The settings of [`ChunkerConfig`] in samples and frames.
#[derive(Debug, Clone, Copy)]
struct Timing {
    frame_len: usize,
    /// Frames in the onset window.
    onset_window: usize,
    /// Voiced frames needed within the onset window.
    onset_voiced: usize,
    pre_roll: u64,
    /// Samples kept while idle: pre-roll plus the onset window.
    history_cap: usize,
    hang_over: u64,
    tail: u64,
    min_speech: u64,
    max_utterance: usize,
    /// Power ratio over the noise floor a voiced frame needs; `None`: no gate.
    gate: Option<f64>,
    /// Factor by which the noise floor may rise per frame.
    floor_rise: f64,
}

/// One chunk of speech cut from the input stream.
///
/// Positions are milliseconds from the first sample ever pushed into the
/// [`Chunker`], rounded down. `start_ms..end_ms` is the span of `samples`:
/// `start_ms` includes the pre-roll, `end_ms` is the end of the last sample
/// (so the duration is `end_ms - start_ms`).
/// `speech_start_ms..speech_end_ms` is the span called speech, from the start
/// of the first voiced frame to the end of the last one.
///
/// Trailing silence: an utterance ended by silence or [`Chunker::flush`] keeps
/// at most `tail_ms` after `speech_end_ms`; a forced cut ends where the limit
/// fell; a manual cut keeps everything up to the cut.
#[derive(Clone, PartialEq, Eq)]
pub struct Utterance {
    /// Mono PCM16 audio.
    pub samples: Vec<i16>,
    /// Sample rate of `samples`, in Hz.
    pub sample_rate: u32,
    /// Start of `samples` in the stream (pre-roll included).
    pub start_ms: u64,
    /// Start of the first voiced frame.
    pub speech_start_ms: u64,
    /// End of the last voiced frame. With `noise_gate_db: 0` this includes
    /// the VAD's own hang-over (60–140 ms).
    pub speech_end_ms: u64,
    /// End of `samples` in the stream.
    pub end_ms: u64,
    /// Ended by [`Chunker::cut`].
    pub manual_cut: bool,
    /// Ended because it reached `max_utterance_ms`; speech goes on in the
    /// next utterance.
    pub forced: bool,
}

impl Utterance {
    /// Length of `samples` in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.end_ms - self.start_ms
    }
}

// Hand-written so a failing test prints positions, not 100k samples.
impl fmt::Debug for Utterance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Utterance")
            .field("samples", &format_args!("[{} samples]", self.samples.len()))
            .field("sample_rate", &self.sample_rate)
            .field("start_ms", &self.start_ms)
            .field("speech_start_ms", &self.speech_start_ms)
            .field("speech_end_ms", &self.speech_end_ms)
            .field("end_ms", &self.end_ms)
            .field("manual_cut", &self.manual_cut)
            .field("forced", &self.forced)
            .finish()
    }
}

/// An utterance in progress. Positions are absolute sample indices.
struct Speech {
    buf: Vec<i16>,
    /// Index of `buf[0]`.
    start: u64,
    /// Start of the first voiced frame in `buf`; `None` only in a continuation
    /// after a forced cut that has not seen speech yet.
    speech_start: Option<u64>,
    /// End of the last voiced frame; before `start` in such a continuation.
    last_voiced_end: u64,
    /// Follows a forced cut: never dropped as too short.
    continued: bool,
}

/// Cuts a PCM16 stream into [`Utterance`]s with `webrtc-vad`.
///
/// Feed audio with [`push`](Self::push), which returns the utterances that
/// ended within it (zero, one or, for a long push, several). Call
/// [`cut`](Self::cut) to end the current utterance at once (a push-to-talk
/// release, a "send now" button) and [`flush`](Self::flush) when recording
/// stops. See the [module docs](self) for the rules.
///
/// # Threads
///
/// `Chunker` is neither `Send` nor `Sync`: the `webrtc-vad` handle is a raw
/// pointer to its C state, and this workspace denies `unsafe`, so no
/// `unsafe impl Send` is written here. The client is meant to create the
/// chunker on the one thread that runs it (the audio or SDK worker thread) and
/// send it samples, which are `Send`, over a channel.
pub struct Chunker {
    config: ChunkerConfig,
    t: Timing,
    vad: Vad,
    /// A partial frame, shorter than `frame_len`.
    pending: Vec<i16>,
    /// Samples consumed so far (framed, or taken by `cut`/`flush`): the stream
    /// position just past the last sample held in `history` or `speech`.
    pos: u64,
    /// Idle: recent audio, ending at `pos`, for pre-roll.
    history: VecDeque<i16>,
    /// Idle: VAD decisions of the last `onset_window` frames.
    flags: VecDeque<bool>,
    speech: Option<Speech>,
    /// Mean square of the quietest recent frames (see `loud_enough`).
    noise_floor: Option<f64>,
}

impl fmt::Debug for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker")
            .field("config", &self.config)
            .field("position_ms", &self.position_ms())
            .field("in_speech", &self.in_speech())
            .finish_non_exhaustive()
    }
}

impl Chunker {
    /// Creates a chunker, or says which setting is wrong.
    pub fn new(config: ChunkerConfig) -> Result<Self, SdkError> {
        let t = config.timing()?;
        let vad = Vad::new_with_rate_and_mode(config.vad_rate(), config.vad_mode());
        Ok(Self {
            t,
            vad,
            pending: Vec::with_capacity(t.frame_len),
            pos: 0,
            history: VecDeque::with_capacity(t.history_cap),
            flags: VecDeque::with_capacity(t.onset_window),
            speech: None,
            noise_floor: None,
            config,
        })
    }

    /// The settings this chunker runs with.
    pub fn config(&self) -> &ChunkerConfig {
        &self.config
    }

    /// Whether an utterance is in progress.
    pub fn in_speech(&self) -> bool {
        self.speech.is_some()
    }

    /// Milliseconds of audio pushed so far.
    pub fn position_ms(&self) -> u64 {
        self.ms(self.pos + self.pending.len() as u64)
    }

    /// Feeds mono PCM16 at the configured rate, in any amount, and returns the
    /// utterances that ended within it, oldest first. A trailing partial frame
    /// is kept until the next push.
    pub fn push(&mut self, samples: &[i16]) -> Vec<Utterance> {
        let mut out = Vec::new();
        let frame_len = self.t.frame_len;
        let mut rest = samples;
        if !self.pending.is_empty() {
            let (head, tail) = rest.split_at((frame_len - self.pending.len()).min(rest.len()));
            self.pending.extend_from_slice(head);
            rest = tail;
            if self.pending.len() < frame_len {
                return out;
            }
            let frame = std::mem::take(&mut self.pending);
            self.process_frame(&frame, &mut out);
            self.pending = frame;
            self.pending.clear();
        }
        let mut frames = rest.chunks_exact(frame_len);
        for frame in &mut frames {
            self.process_frame(frame, &mut out);
        }
        self.pending.extend_from_slice(frames.remainder());
        out
    }

    /// Ends the utterance in progress now and returns it with
    /// `manual_cut: true`, keeping everything pushed so far: a partial frame
    /// and trailing silence included, no minimum length (only
    /// `max_utterance_ms` still holds). If speech goes on, the next utterance
    /// starts with the audio after the cut.
    ///
    /// Returns `None` when no utterance is in progress (and then changes
    /// nothing), or when the one in progress is the continuation of a forced
    /// cut that holds no speech yet (it is discarded).
    pub fn cut(&mut self) -> Option<Utterance> {
        let mut speech = self.speech.take()?;
        // The partial frame, as far as it fits under the maximum length; any
        // rest stays pending for the next utterance.
        let fits = self.pending.len().min(self.t.max_utterance.saturating_sub(speech.buf.len()));
        speech.buf.extend(self.pending.drain(..fits));
        self.pos += fits as u64;
        self.history.clear();
        self.flags.clear();
        let speech_start = speech.speech_start?;
        let end = self.pos;
        Some(Utterance {
            speech_start_ms: self.ms(speech_start),
            speech_end_ms: self.ms(speech.last_voiced_end.max(speech_start)),
            end_ms: self.ms(end),
            start_ms: self.ms(speech.start),
            sample_rate: self.config.sample_rate,
            samples: speech.buf,
            manual_cut: true,
            forced: false,
        })
    }

    /// Ends the stream (recording stopped): returns the utterance in progress
    /// if it is long enough, ended as if silence had followed (trimmed to
    /// `tail_ms` after the last voiced frame). The chunker is then idle and
    /// can take a new stream; positions keep counting.
    pub fn flush(&mut self) -> Option<Utterance> {
        let pending = std::mem::take(&mut self.pending);
        self.pos += pending.len() as u64;
        let emitted = self.speech.take().and_then(|mut speech| {
            speech.buf.extend_from_slice(&pending);
            self.finish(speech)
        });
        self.history.clear();
        self.flags.clear();
        emitted
    }

    fn ms(&self, samples: u64) -> u64 {
        samples * 1000 / u64::from(self.config.sample_rate)
    }

    /// Runs one full frame through the VAD and the state machine.
    fn process_frame(&mut self, frame: &[i16], out: &mut Vec<Utterance>) {
        // Frame lengths are validated in `ChunkerConfig::timing`, the only
        // cause of an error here.
        let vad_voiced = self.vad.is_voice_segment(frame).unwrap_or(false);
        // Always run: the floor tracks every frame.
        let loud = self.loud_enough(frame);
        let voiced = vad_voiced && loud;
        let frame_start = self.pos;
        self.pos += frame.len() as u64;

        let Some(speech) = self.speech.as_mut() else {
            self.idle_frame(frame, voiced);
            return;
        };
        if speech.buf.len() + frame.len() > self.t.max_utterance {
            let last_voiced_end = speech.last_voiced_end;
            let next = Speech { buf: Vec::new(), start: frame_start, speech_start: None, last_voiced_end, continued: true };
            if let Some(full) = self.speech.replace(next) {
                out.extend(self.forced(full, frame_start));
            }
        }
        let Some(speech) = self.speech.as_mut() else {
            return;
        };
        speech.buf.extend_from_slice(frame);
        if voiced {
            speech.speech_start.get_or_insert(frame_start);
            speech.last_voiced_end = self.pos;
        } else if self.pos - speech.last_voiced_end >= self.t.hang_over
            && let Some(ended) = self.speech.take()
        {
            out.extend(self.finish(ended));
        }
    }

    /// Tracks the noise floor and says whether `frame` rises above it by the
    /// gate (see the module docs). The floor drops at once to a quieter frame
    /// and rises slowly otherwise (minimum statistics), so it sits at the
    /// noise level and the dips between words keep it below speech.
    fn loud_enough(&mut self, frame: &[i16]) -> bool {
        let sum: i64 = frame.iter().map(|&s| i64::from(s) * i64::from(s)).sum();
        // At least 1: digital silence must not make the floor zero.
        let energy = (sum as f64 / frame.len() as f64).max(1.0);
        let floor = self.noise_floor.unwrap_or(energy);
        self.noise_floor = Some(if energy < floor { energy } else { floor * self.t.floor_rise });
        self.t.gate.is_none_or(|gate| energy >= floor * gate)
    }

    /// Idle: remember the frame, and open an utterance on onset.
    fn idle_frame(&mut self, frame: &[i16], voiced: bool) {
        self.history.extend(frame);
        let excess = self.history.len().saturating_sub(self.t.history_cap);
        self.history.drain(..excess);
        if self.flags.len() == self.t.onset_window {
            self.flags.pop_front();
        }
        self.flags.push_back(voiced);

        let voiced_count = self.flags.iter().filter(|&&v| v).count();
        if !voiced || voiced_count < self.t.onset_voiced {
            return;
        }
        let frame_len = self.t.frame_len as u64;
        // `voiced` is true, so there is a first voiced flag.
        let first_voiced = self.flags.iter().position(|&v| v).unwrap_or(0);
        let frames_back = (self.flags.len() - first_voiced) as u64;
        let speech_start = self.pos - frames_back * frame_len;
        let history_start = self.pos - self.history.len() as u64;
        let start = speech_start.saturating_sub(self.t.pre_roll).max(history_start);
        let skip = (start - history_start) as usize;
        let buf: Vec<i16> = self.history.drain(..).skip(skip).collect();
        self.flags.clear();
        self.speech = Some(Speech { buf, start, speech_start: Some(speech_start), last_voiced_end: self.pos, continued: false });
    }

    /// Emits a full utterance cut at `end` (its whole buffer).
    fn forced(&self, speech: Speech, end: u64) -> Option<Utterance> {
        let speech_start = speech.speech_start?;
        Some(Utterance {
            speech_start_ms: self.ms(speech_start),
            speech_end_ms: self.ms(speech.last_voiced_end.max(speech_start)),
            end_ms: self.ms(end),
            start_ms: self.ms(speech.start),
            sample_rate: self.config.sample_rate,
            samples: speech.buf,
            manual_cut: false,
            forced: true,
        })
    }

    /// Ends an utterance on silence (or at flush): trims it to the tail,
    /// drops it if too short, and returns the trimmed-off audio to the idle
    /// history.
    fn finish(&mut self, mut speech: Speech) -> Option<Utterance> {
        let buf_end = speech.start + speech.buf.len() as u64;
        let keep =
            speech.speech_start.filter(|&speech_start| speech.continued || speech.last_voiced_end - speech_start >= self.t.min_speech);
        let end = match keep {
            Some(_) => (speech.last_voiced_end + self.t.tail).min(buf_end),
            None => speech.start,
        };
        let rest = speech.buf.split_off((end - speech.start) as usize);
        let rest_keep = rest.len().saturating_sub(self.t.history_cap);
        self.history.clear();
        self.history.extend(&rest[rest_keep..]);
        self.flags.clear();

        let speech_start = keep?;
        Some(Utterance {
            speech_start_ms: self.ms(speech_start),
            speech_end_ms: self.ms(speech.last_voiced_end),
            end_ms: self.ms(end),
            start_ms: self.ms(speech.start),
            sample_rate: self.config.sample_rate,
            samples: speech.buf,
            manual_cut: false,
            forced: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A piece of a synthetic test stream.
    #[derive(Debug, Clone, Copy)]
    enum Seg {
        /// Digital silence.
        Silence(u32),
        /// A sustained vowel-like tone (harmonics of 130 Hz under three
        /// formants): what `webrtc-vad` calls speech.
        Vowel(u32),
        /// White noise of this standard deviation.
        Noise(u32, f64),
        /// A vowel on top of white noise.
        NoisyVowel(u32, f64),
    }

    /// xorshift64*: deterministic uniform noise for the tests.
    struct Rng(u64);

    impl Rng {
        /// Uniform in [-1, 1).
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            bits as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    fn vowel_sample(i: usize, rate: u32) -> f64 {
        use std::f64::consts::PI;
        let rate = f64::from(rate);
        let t = i as f64 / rate;
        let formant = |f: f64, centre: f64, width: f64| 1.0 / (1.0 + ((f - centre) / width).powi(2));
        (1..=25)
            .map(|k| f64::from(k) * 130.0)
            .take_while(|&f| f < rate / 2.0)
            .map(|f| {
                let gain = formant(f, 700.0, 150.0) + 0.6 * formant(f, 1200.0, 200.0) + 0.3 * formant(f, 2600.0, 300.0) + 0.05;
                gain * (2.0 * PI * f * t).sin()
            })
            .sum::<f64>()
            * 3000.0
    }

    fn stream(rate: u32, segs: &[Seg]) -> Vec<i16> {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        // Uniform noise of standard deviation 1.
        let mut noise = move || rng.next() * 3f64.sqrt();
        let mut out = Vec::new();
        for &seg in segs {
            let (ms, vowel, sigma) = match seg {
                Seg::Silence(ms) => (ms, false, 0.0),
                Seg::Vowel(ms) => (ms, true, 0.0),
                Seg::Noise(ms, sigma) => (ms, false, sigma),
                Seg::NoisyVowel(ms, sigma) => (ms, true, sigma),
            };
            let n = (ms * rate / 1000) as usize;
            out.extend((0..n).map(|i| {
                let v = if vowel { vowel_sample(i, rate) } else { 0.0 };
                (v + sigma * noise()).round().clamp(-32768.0, 32767.0) as i16
            }));
        }
        out
    }

    /// Pushes `input` in pushes of `push` samples, then flushes.
    fn run(config: &ChunkerConfig, input: &[i16], push: usize) -> Vec<Utterance> {
        let mut chunker = Chunker::new(config.clone()).unwrap();
        let mut out: Vec<Utterance> = input.chunks(push).flat_map(|p| chunker.push(p)).collect();
        out.extend(chunker.flush());
        out
    }

    /// `(start, speech_start, speech_end, end, manual_cut, forced)`, in ms.
    type Shape = (u64, u64, u64, u64, bool, bool);

    fn shape(u: &Utterance) -> Shape {
        (u.start_ms, u.speech_start_ms, u.speech_end_ms, u.end_ms, u.manual_cut, u.forced)
    }

    /// Runs `segs` at 16 kHz in 20 ms pushes and compares the utterances'
    /// positions with `expect`; checks each one's samples against the input.
    fn check(config: &ChunkerConfig, segs: &[Seg], expect: &[Shape]) -> Vec<Utterance> {
        let input = stream(config.sample_rate, segs);
        let got = run(config, &input, (config.sample_rate / 50) as usize);
        assert_eq!(got.iter().map(shape).collect::<Vec<_>>(), expect, "{got:#?}");
        let at = |ms: u64| (ms * u64::from(config.sample_rate) / 1000) as usize;
        for u in &got {
            assert_eq!(u.sample_rate, config.sample_rate);
            assert!(u.samples == input[at(u.start_ms)..at(u.end_ms)], "samples of {u:?}");
        }
        got
    }

    #[test]
    fn silence_and_steady_noise_produce_nothing() {
        let config = ChunkerConfig::default();
        check(&config, &[Seg::Silence(10_000)], &[]);
        check(&config, &[Seg::Noise(10_000, 300.0)], &[]);
        // Loud white noise: webrtc-vad alone calls all of it speech; the
        // noise gate does not.
        check(&config, &[Seg::Noise(10_000, 2000.0)], &[]);
        let ungated = ChunkerConfig { noise_gate_db: 0, ..config };
        let got = run(&ungated, &stream(16_000, &[Seg::Noise(10_000, 2000.0)]), 320);
        assert!(!got.is_empty(), "without the gate the VAD should fire on loud noise");
    }

    #[test]
    fn speech_is_one_utterance_with_pre_roll_and_tail() {
        let config = ChunkerConfig::default();
        // Pre-roll 300 ms before the speech, tail 200 ms after it.
        check(&config, &[Seg::Silence(1000), Seg::Vowel(1000), Seg::Silence(2000)], &[(700, 1000, 2000, 2200, false, false)]);
        // The pre-roll cannot reach before the stream.
        check(&config, &[Seg::Silence(100), Seg::Vowel(1000), Seg::Silence(2000)], &[(0, 100, 1100, 1300, false, false)]);
        // Speech in noise, 10 dB above it.
        check(
            &config,
            &[Seg::Noise(2000, 300.0), Seg::NoisyVowel(1000, 300.0), Seg::Noise(2000, 300.0)],
            &[(1700, 2000, 3000, 3200, false, false)],
        );
    }

    #[test]
    fn utterance_is_emitted_once_hang_over_has_passed() {
        let config = ChunkerConfig::default();
        let mut chunker = Chunker::new(config).unwrap();
        assert!(chunker.push(&stream(16_000, &[Seg::Silence(1000), Seg::Vowel(1000)])).is_empty());
        assert!(chunker.in_speech());
        // 580 ms of silence: not yet over.
        assert!(chunker.push(&stream(16_000, &[Seg::Silence(580)])).is_empty());
        let done = chunker.push(&stream(16_000, &[Seg::Silence(20)]));
        assert_eq!(done.iter().map(shape).collect::<Vec<_>>(), [(700, 1000, 2000, 2200, false, false)]);
        assert!(!chunker.in_speech());
        assert_eq!(chunker.position_ms(), 2600);
    }

    #[test]
    fn speech_after_a_short_pause_is_the_same_utterance() {
        check(
            &ChunkerConfig::default(),
            &[Seg::Silence(1000), Seg::Vowel(500), Seg::Silence(400), Seg::Vowel(500), Seg::Silence(2000)],
            &[(700, 1000, 2400, 2600, false, false)],
        );
    }

    #[test]
    fn consecutive_utterances_never_overlap() {
        // The silence trimmed off the first one (2200..2600) serves as the
        // second one's pre-roll.
        check(
            &ChunkerConfig::default(),
            &[Seg::Silence(1000), Seg::Vowel(1000), Seg::Silence(660), Seg::Vowel(500), Seg::Silence(2000)],
            &[(700, 1000, 2000, 2200, false, false), (2360, 2660, 3160, 3360, false, false)],
        );
        // Tail as long as the hang-over: the second one's pre-roll is cut
        // short where the first one ends.
        let config = ChunkerConfig { tail_ms: 600, ..ChunkerConfig::default() };
        check(
            &config,
            &[Seg::Silence(1000), Seg::Vowel(1000), Seg::Silence(700), Seg::Vowel(500), Seg::Silence(2000)],
            &[(700, 1000, 2000, 2600, false, false), (2600, 2700, 3200, 3800, false, false)],
        );
    }

    #[test]
    fn manual_cut_ends_the_utterance_now() {
        let mut chunker = Chunker::new(ChunkerConfig::default()).unwrap();
        assert_eq!(chunker.cut(), None, "nothing in progress");
        chunker.push(&stream(16_000, &[Seg::Silence(1000)]));
        assert_eq!(chunker.cut(), None, "nothing in progress");

        // Mid-speech, and mid-frame: 500 ms and 100 samples of vowel.
        let vowel = stream(16_000, &[Seg::Vowel(1000)]);
        assert!(chunker.push(&vowel[..8_100]).is_empty());
        let cut = chunker.cut().expect("an utterance was in progress");
        assert_eq!(shape(&cut), (700, 1000, 1500, 1506, true, false));
        assert_eq!(cut.samples.len(), 806 * 16 + 4, "the partial frame is included");
        assert!(!chunker.in_speech());
        assert_eq!(chunker.cut(), None);

        // Speech goes on: the rest is a new utterance starting at the cut.
        let mut rest = chunker.push(&vowel[8_100..]);
        rest.extend(chunker.push(&stream(16_000, &[Seg::Silence(2000)])));
        assert_eq!(rest.len(), 1, "{rest:#?}");
        assert!(rest[0].start_ms >= cut.end_ms, "{rest:#?}");
        assert_eq!((rest[0].speech_end_ms, rest[0].manual_cut), (2006, false));
    }

    #[test]
    fn manual_cut_keeps_to_the_maximum_length() {
        let config = ChunkerConfig { max_utterance_ms: 420, ..ChunkerConfig::default() };
        let mut chunker = Chunker::new(config).unwrap();
        // Speech opens at 1060 ms with 700..1060 and reaches the limit of
        // 420 ms at 1120; 10 samples more are pushed.
        let input = stream(16_000, &[Seg::Silence(1000), Seg::Vowel(130)]);
        assert!(chunker.push(&input[..16_000 + 1_920 + 10]).is_empty());
        let cut = chunker.cut().expect("in speech");
        assert_eq!(shape(&cut), (700, 1000, 1120, 1120, true, false));
        // The 10 samples did not fit: they stay pending.
        assert_eq!(cut.samples.len(), 420 * 16);
        assert_eq!(chunker.position_ms(), 1120);
    }

    #[test]
    fn max_length_forces_contiguous_cuts() {
        let config = ChunkerConfig { max_utterance_ms: 2000, ..ChunkerConfig::default() };
        let got = check(
            &config,
            &[Seg::Silence(1000), Seg::Vowel(5000), Seg::Silence(2000)],
            &[(700, 1000, 2700, 2700, false, true), (2700, 2700, 4700, 4700, false, true), (4700, 4700, 6000, 6200, false, false)],
        );
        assert!(got.iter().all(|u| u.duration_ms() <= 2000));
        // A continuation is kept however short...
        check(
            &config,
            &[Seg::Silence(1000), Seg::Vowel(2000), Seg::Silence(2000)],
            &[(700, 1000, 2700, 2700, false, true), (2700, 2700, 3000, 3200, false, false)],
        );
        // ...unless it holds no speech at all.
        check(&config, &[Seg::Silence(1000), Seg::Vowel(1700), Seg::Silence(2000)], &[(700, 1000, 2700, 2700, false, true)]);
    }

    #[test]
    fn short_bursts_are_dropped() {
        let config = ChunkerConfig::default();
        let burst = |ms| [Seg::Silence(1000), Seg::Vowel(ms), Seg::Silence(1000)];
        // A click: one frame, rejected by the onset rule alone.
        let no_min = ChunkerConfig { min_speech_ms: 0, ..config.clone() };
        check(&no_min, &burst(20), &[]);
        check(&no_min, &burst(40), &[]);
        check(&no_min, &burst(60), &[(700, 1000, 1060, 1260, false, false)]);
        // Under min_speech_ms (200): dropped; at it: kept.
        check(&config, &burst(100), &[]);
        check(&config, &burst(180), &[]);
        check(&config, &burst(200), &[(700, 1000, 1200, 1400, false, false)]);
        // A dropped burst does not delay or swallow the next utterance.
        check(
            &config,
            &[Seg::Silence(1000), Seg::Vowel(100), Seg::Silence(1000), Seg::Vowel(500), Seg::Silence(1000)],
            &[(1800, 2100, 2600, 2800, false, false)],
        );
    }

    #[test]
    fn flush_emits_what_is_in_progress_if_long_enough() {
        let config = ChunkerConfig::default();
        // No audio after the speech: nothing to add as tail.
        check(&config, &[Seg::Silence(1000), Seg::Vowel(800)], &[(700, 1000, 1800, 1800, false, false)]);
        check(&config, &[Seg::Silence(1000), Seg::Vowel(800), Seg::Silence(300)], &[(700, 1000, 1800, 2000, false, false)]);
        check(&config, &[Seg::Silence(1000), Seg::Vowel(100)], &[]);

        let mut chunker = Chunker::new(config).unwrap();
        assert_eq!(chunker.flush(), None);
        chunker.push(&stream(16_000, &[Seg::Silence(1000), Seg::Vowel(800)]));
        assert!(chunker.flush().is_some());
        assert!(!chunker.in_speech());
        assert_eq!(chunker.flush(), None);
    }

    #[test]
    fn push_sizes_do_not_change_the_result() {
        let segs = [
            Seg::Noise(1000, 100.0),
            Seg::NoisyVowel(800, 100.0),
            Seg::Noise(700, 100.0),
            Seg::NoisyVowel(100, 100.0),
            Seg::Noise(900, 100.0),
            Seg::NoisyVowel(4500, 100.0),
            Seg::Noise(300, 100.0),
            Seg::NoisyVowel(400, 100.0),
        ];
        for (rate, frame_ms) in [(16_000, 20), (48_000, 30), (8_000, 10)] {
            let config = ChunkerConfig { sample_rate: rate, frame_ms, max_utterance_ms: 2000, ..ChunkerConfig::default() };
            let input = stream(rate, &segs);
            let whole = run(&config, &input, input.len());
            // Speech, a dropped burst, a forced cut, and a flush at the end.
            assert!(whole.len() >= 4 && whole.iter().any(|u| u.forced), "{whole:#?}");
            for push in [1, 7, 160, 4801] {
                assert!(run(&config, &input, push) == whole, "{rate} Hz, pushes of {push}");
            }
        }
    }

    #[test]
    fn every_rate_and_frame_length_works() {
        for rate in [8_000, 16_000, 32_000, 48_000] {
            for frame_ms in [10, 20, 30] {
                let config = ChunkerConfig { sample_rate: rate, frame_ms, ..ChunkerConfig::default() };
                let input = stream(rate, &[Seg::Silence(990), Seg::Vowel(1020), Seg::Silence(2000)]);
                let got = run(&config, &input, input.len());
                let [u] = got.as_slice() else { panic!("{rate} Hz, {frame_ms} ms: {got:#?}") };
                // Within a frame of the truth.
                let within = |got: u64, truth: u64| got.abs_diff(truth) <= u64::from(frame_ms);
                assert!(within(u.speech_start_ms, 990) && within(u.speech_end_ms, 2010), "{u:?}");
                assert_eq!(u.samples.len() as u64, u.duration_ms() * u64::from(rate) / 1000);
            }
        }
    }

    #[test]
    fn bad_configs_are_rejected() {
        let ok = ChunkerConfig::default();
        let err = |config: ChunkerConfig| Chunker::new(config).err();
        assert_eq!(err(ChunkerConfig { sample_rate: 44_100, ..ok.clone() }), Some(SdkError::UnsupportedSampleRate(44_100)));
        assert_eq!(err(ChunkerConfig { sample_rate: 0, ..ok.clone() }), Some(SdkError::UnsupportedSampleRate(0)));
        assert_eq!(err(ChunkerConfig { frame_ms: 25, ..ok.clone() }), Some(SdkError::UnsupportedFrameLength(25)));
        assert_eq!(err(ChunkerConfig { aggressiveness: 4, ..ok.clone() }), Some(SdkError::InvalidAggressiveness(4)));
        let invalid = |field| Some(SdkError::InvalidConfig { field, reason: "" });
        let field_of = |config: ChunkerConfig| match err(config) {
            Some(SdkError::InvalidConfig { field, .. }) => invalid(field),
            other => other,
        };
        for (config, field) in [
            (ChunkerConfig { tail_ms: 700, ..ok.clone() }, "tail_ms"),
            (ChunkerConfig { hang_over_ms: 10, tail_ms: 0, ..ok.clone() }, "hang_over_ms"),
            (ChunkerConfig { onset_window_ms: 10, onset_voiced_ms: 10, ..ok.clone() }, "onset_window_ms"),
            (ChunkerConfig { onset_voiced_ms: 0, ..ok.clone() }, "onset_voiced_ms"),
            (ChunkerConfig { onset_voiced_ms: 120, ..ok.clone() }, "onset_voiced_ms"),
            (ChunkerConfig { max_utterance_ms: 400, ..ok.clone() }, "max_utterance_ms"),
            (ChunkerConfig { max_utterance_ms: 600_001, ..ok.clone() }, "max_utterance_ms"),
        ] {
            assert_eq!(field_of(config), invalid(field));
        }
        // The message names the setting.
        let message = err(ChunkerConfig { tail_ms: 700, ..ok.clone() }).unwrap().to_string();
        assert_eq!(message, "invalid chunker setting `tail_ms`: longer than hang_over_ms");
        // Every supported rate and frame length is accepted.
        for sample_rate in [8_000, 16_000, 32_000, 48_000] {
            for frame_ms in [10, 20, 30] {
                assert!(ChunkerConfig { sample_rate, frame_ms, ..ok.clone() }.validate().is_ok());
            }
        }
        // The onset window counts in whole frames: 100 ms is 4 frames of 30.
        let thirty = ChunkerConfig { frame_ms: 30, ..ok.clone() };
        assert!(ChunkerConfig { max_utterance_ms: 449, ..thirty.clone() }.validate().is_err());
        assert!(ChunkerConfig { max_utterance_ms: 450, ..thirty }.validate().is_ok());
        // The smallest max_utterance_ms: pre-roll + onset window + a frame.
        assert!(ChunkerConfig { max_utterance_ms: 420, ..ok.clone() }.validate().is_ok());
        assert!(ok.validate().is_ok());
    }
}
