//! Decoding and encoding of utterance audio.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

use tolk_protocol::AudioFormat;
use tolk_protocol::audio::{decode_base64, decode_bytes, encode_pcm16, encode_wav, to_base64};

fn tone(n: usize) -> Vec<i16> {
    (0..n).map(|i| ((i as f32 * 0.1).sin() * 8000.0) as i16).collect()
}

#[test]
fn pcm16_and_wav_round_trip() {
    let samples = tone(1600);
    let pcm = decode_base64(&to_base64(&encode_pcm16(&samples)), AudioFormat::Pcm16, 16000).unwrap();
    assert_eq!(pcm.samples, samples);
    assert_eq!(pcm.duration_ms(), 100);
    let wav = decode_base64(&to_base64(&encode_wav(&samples, 16000)), AudioFormat::Wav, 16000).unwrap();
    assert_eq!(wav.samples, samples);
}

#[test]
fn stereo_wav_is_mixed_down() {
    let mut bytes = Vec::new();
    let spec = hound::WavSpec { channels: 2, sample_rate: 8000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).unwrap();
    for (l, r) in [(100i16, 300i16), (-50, 50)] {
        w.write_sample(l).unwrap();
        w.write_sample(r).unwrap();
    }
    w.finalize().unwrap();
    assert_eq!(decode_bytes(&bytes, AudioFormat::Wav, 8000).unwrap().samples, vec![200, 0]);
}

#[test]
fn bad_audio_is_an_error_naming_the_field() {
    let err = decode_base64("!!!", AudioFormat::Pcm16, 16000).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("audio"));
    let err = decode_bytes(&[1, 2, 3], AudioFormat::Pcm16, 16000).unwrap_err();
    assert!(err.message.contains("odd"));
    let err = decode_bytes(b"RIFF not really", AudioFormat::Wav, 16000).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("audio"));
    let wav = encode_wav(&tone(10), 8000);
    let err = decode_bytes(&wav, AudioFormat::Wav, 16000).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("sample_rate"));
    let truncated = &wav[..wav.len() - 3];
    assert!(decode_bytes(truncated, AudioFormat::Wav, 8000).is_err());
    assert!(decode_bytes(&[0, 0], AudioFormat::Opus, 16000).is_err());
}
