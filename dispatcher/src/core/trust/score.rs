//! Scoring a canary's answer: the recognised text against the expected one
//! (word error rate; character error rate for scripts written without
//! spaces), the translation's recall of the reference's content words, a
//! processing time plausible for the audio's length, and speech present.
//! Pure functions: no state, no clock.

use tolk_protocol::node::JobResult;

/// What a canary's answer proved.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Wrong: `reason` is a metric label (`text`, `translation`,
    /// `too_fast`, `no_speech`), `detail` says what was seen.
    Fail {
        reason: &'static str,
        detail: String,
    },
    /// Proves nothing either way (the node answered an error).
    Inconclusive(String),
}

/// The thresholds a canary is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub min_ms_per_audio_s: u64,
    pub max_text_error: f64,
    pub min_translation_recall: f64,
}

/// What was expected of one canary.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub text: &'a str,
    /// Correct translations; the closest one counts.
    pub translations: &'a [String],
    pub audio_ms: u64,
    pub wants_translation: bool,
    pub wants_speech: bool,
}

/// Judges `r`, which took `took_ms` from assignment to answer.
pub fn judge(expected: &Expected<'_>, r: &JobResult, took_ms: u64, t: &Thresholds) -> Verdict {
    if !r.success {
        let code = r.error.as_ref().map_or_else(|| "no error code".to_owned(), |e| e.code.to_string());
        return Verdict::Inconclusive(format!("the node answered an error ({code})"));
    }
    // Real ASR cannot run faster than this: an answer at once is made up
    // (or replayed), whatever its text.
    if took_ms.saturating_mul(1000) < t.min_ms_per_audio_s.saturating_mul(expected.audio_ms) {
        return Verdict::Fail {
            reason: "too_fast",
            detail: format!(
                "answered {} ms of audio in {took_ms} ms (at least {} ms per second expected)",
                expected.audio_ms, t.min_ms_per_audio_s
            ),
        };
    }
    let heard = r.text_asr.as_deref().unwrap_or_default();
    let err = error_rate(expected.text, heard);
    if err > t.max_text_error {
        return Verdict::Fail {
            reason: "text",
            detail: format!("recognised {heard:?}, expected {:?} (error rate {err:.2})", expected.text),
        };
    }
    if expected.wants_translation {
        let translated = r.text_translated.as_deref().unwrap_or_default();
        // The closest reference counts: a correct translation worded as
        // any of them passes. None given: nothing to hold it to.
        let (mut recall, mut reference) = (if expected.translations.is_empty() { 1.0 } else { 0.0 }, "");
        for r in expected.translations {
            let this = self::recall(r, translated);
            if reference.is_empty() || this > recall {
                (recall, reference) = (this, r.as_str());
            }
        }
        if recall < t.min_translation_recall {
            return Verdict::Fail {
                reason: "translation",
                detail: format!("translated {translated:?}, closest reference {reference:?} (recall {recall:.2})"),
            };
        }
    }
    if expected.wants_speech && r.tts_audio.as_ref().is_none_or(|a| a.as_str().len() < 64) {
        return Verdict::Fail { reason: "no_speech", detail: "no synthesized speech in the result".into() };
    }
    Verdict::Pass
}

/// Scripts written without spaces between words: compared per character.
fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xAC00..=0xD7AF) // Hangul syllables
}

/// Lower-cased tokens: words of letters and digits, and each character of
/// an unspaced script on its own.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if is_unspaced(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.push(c);
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Edit distance between the token lists, over the reference's length
/// (1.0 when nothing matches; can exceed 1 when much is inserted).
pub fn error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = tokens(reference);
    let h = tokens(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    // Bounded: a canary's text is short; a hypothesis longer than four
    // times it is all error anyway.
    let h = &h[..h.len().min(r.len() * 4 + 8)];
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rt) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, ht) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rt != ht);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len() as f64
}

/// The share of the reference's content tokens (words of three letters or
/// more, or characters of unspaced scripts) that the hypothesis contains.
/// A translation can be worded many ways; a translation of something else
/// shares almost none of them.
pub fn recall(reference: &str, hypothesis: &str) -> f64 {
    let content = |t: &String| t.chars().count() >= 3 || t.chars().any(is_unspaced);
    let mut wanted: Vec<String> = tokens(reference).into_iter().filter(content).collect();
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return 1.0;
    }
    let have: std::collections::HashSet<String> = tokens(hypothesis).into_iter().collect();
    wanted.iter().filter(|w| have.contains(*w)).count() as f64 / wanted.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(asr: &str, nmt: &str, speech: bool) -> JobResult {
        serde_json::from_value(serde_json::json!({
            "type": "job_result", "job_id": "j", "node_id": "n", "session_id": "s", "utterance_index": 1,
            "success": true, "text_asr": asr, "text_translated": nmt,
            "tts_audio": if speech { "A".repeat(200) } else { String::new() }, "tts_format": "pcm16", "tts_sample_rate": 16000
        }))
        .unwrap()
    }

    const T: Thresholds = Thresholds { min_ms_per_audio_s: 20, max_text_error: 0.5, min_translation_recall: 0.3 };

    fn expected() -> Expected<'static> {
        Expected {
            text: "the weather is nice today",
            translations: Box::leak(Box::new(["el tiempo es bueno hoy".to_owned(), "hace buen tiempo hoy".to_owned()])),
            audio_ms: 2_000,
            wants_translation: true,
            wants_speech: true,
        }
    }

    #[test]
    fn error_rates_count_words_or_characters() {
        assert_eq!(error_rate("The weather is nice today.", "the weather is nice today"), 0.0);
        assert!((error_rate("the weather is nice today", "the weather is ice today") - 0.2).abs() < 1e-9);
        assert_eq!(error_rate("今天天气很好", "今天天气很好。"), 0.0);
        assert!((error_rate("今天天气很好", "今天天汽很好") - 1.0 / 6.0).abs() < 1e-9);
        assert_eq!(error_rate("hello", ""), 1.0);
        assert_eq!(tokens("¿Dónde está?"), vec!["dónde", "está"]);
    }

    #[test]
    fn recall_of_content_words() {
        assert_eq!(recall("el tiempo es bueno hoy", "El tiempo es bueno hoy"), 1.0);
        assert!((recall("dónde está la estación de tren", "Dónde es la #canal de tren") - 0.5).abs() < 1e-9);
        assert_eq!(recall("el tiempo es bueno hoy", "compre ahora"), 0.0);
    }

    #[test]
    fn honest_answers_pass() {
        let r = result("the weather is nice today", "El tiempo es bueno hoy", true);
        assert_eq!(judge(&expected(), &r, 700, &T), Verdict::Pass);
    }

    #[test]
    fn garbage_fast_and_speechless_answers_fail_with_their_reason() {
        let reason = |v: Verdict| match v {
            Verdict::Fail { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(judge(&expected(), &result("lorem ipsum", "El tiempo es bueno hoy", true), 700, &T)), "text");
        assert_eq!(reason(judge(&expected(), &result("the weather is nice today", "lorem ipsum", true), 700, &T)), "translation");
        // 2 s of audio in 10 ms: no engine is that fast, however right the text.
        assert_eq!(reason(judge(&expected(), &result("the weather is nice today", "El tiempo es bueno hoy", true), 10, &T)), "too_fast");
        assert_eq!(reason(judge(&expected(), &result("the weather is nice today", "El tiempo es bueno hoy", false), 700, &T)), "no_speech");
    }

    #[test]
    fn the_closest_of_several_references_counts() {
        // "Hace buen día" shares no content word with the first wording, and half the second's.
        assert_eq!(recall("el tiempo es bueno hoy", "Hace buen día."), 0.0);
        let r = result("the weather is nice today", "Hace buen día.", true);
        assert_eq!(judge(&expected(), &r, 700, &T), Verdict::Pass);
        let only_first = Expected { translations: Box::leak(Box::new(["el tiempo es bueno hoy".to_owned()])), ..expected() };
        match judge(&only_first, &r, 700, &T) {
            Verdict::Fail { reason: "translation", detail } => assert!(detail.contains("el tiempo es bueno hoy"), "{detail}"),
            other => panic!("{other:?}"),
        }
        // With no reference (a transcription-only canary) there is nothing to miss.
        let none = Expected { translations: &[], ..expected() };
        assert_eq!(judge(&none, &r, 700, &T), Verdict::Pass);
    }

    #[test]
    fn errors_prove_nothing() {
        let mut r = result("", "", false);
        r.success = false;
        assert!(matches!(judge(&expected(), &r, 700, &T), Verdict::Inconclusive(_)));
    }
}
