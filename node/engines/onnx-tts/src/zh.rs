//! Mandarin G2P for Kokoro: Hanzi → pinyin (the `pinyin` crate's most common
//! reading per character) → tone sandhi → Kokoro's phoneme set (the IPA of
//! misaki's Chinese front end: `ʨ ʦ ꭧ` affricates, `ɻ`, `ɨ` for the apical
//! vowels, tones as `→ ↗ ↓ ↘` after the syllable's vowels). Pure code.
//!
//! Limits (said, not hidden): one reading per character, no word-level
//! polyphone choice (了, 行, 长 may be read wrongly); digits and Latin
//! letters are passed through and dropped by the vocabulary filter.

use pinyin::ToPinyin;

/// A syllable: initial, final, tone 1–5 (5 = neutral).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syllable {
    pub initial: &'static str,
    pub final_: String,
    pub tone: u8,
}

const INITIALS: &[&str] = &["zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z", "c", "s"];

/// Splits numbered pinyin (`zhong1`, `de`, `lü4`/`lv4`) into a syllable.
pub fn split(pinyin: &str) -> Option<Syllable> {
    let (body, tone) = match pinyin.chars().last()? {
        d @ '1'..='5' => (&pinyin[..pinyin.len() - 1], d as u8 - b'0'),
        _ => (pinyin, 5),
    };
    let body = body.replace('v', "ü");
    let initial = INITIALS.iter().copied().find(|i| body.starts_with(i)).unwrap_or("");
    let mut final_ = body[initial.len()..].to_owned();
    // y/w spellings of initial-less finals.
    if initial.is_empty() {
        final_ = if let Some(rest) = final_.strip_prefix("yu") {
            format!("ü{rest}")
        } else if let Some(rest) = final_.strip_prefix('y') {
            if rest.starts_with('i') {
                rest.to_owned()
            } else if let Some(after_u) = rest.strip_prefix('u') {
                format!("ü{after_u}")
            } else {
                format!("i{rest}")
            }
        } else if let Some(rest) = final_.strip_prefix('w') {
            if rest.starts_with('u') { rest.to_owned() } else { format!("u{rest}") }
        } else {
            final_
        };
    }
    // After j, q, x, a written u is ü.
    if matches!(initial, "j" | "q" | "x") && final_.starts_with('u') {
        final_ = format!("ü{}", &final_[1..]);
    }
    (!final_.is_empty()).then_some(Syllable { initial, final_, tone })
}

fn initial_ipa(i: &str) -> &'static str {
    match i {
        "b" => "p",
        "p" => "pʰ",
        "m" => "m",
        "f" => "f",
        "d" => "t",
        "t" => "tʰ",
        "n" => "n",
        "l" => "l",
        "g" => "k",
        "k" => "kʰ",
        "h" => "x",
        "j" => "ʨ",
        "q" => "ʨʰ",
        "x" => "ɕ",
        "zh" => "ꭧ",
        "ch" => "ꭧʰ",
        "sh" => "ʂ",
        "r" => "ɻ",
        "z" => "ʦ",
        "c" => "ʦʰ",
        "s" => "s",
        _ => "",
    }
}

/// The final as (vowels, coda): the tone goes between them.
fn final_ipa(initial: &str, f: &str) -> Option<(&'static str, &'static str)> {
    Some(match f {
        // zhi chi shi ri zi ci si: the apical vowel.
        "i" if matches!(initial, "zh" | "ch" | "sh" | "r" | "z" | "c" | "s") => ("ɨ", ""),
        "a" => ("a", ""),
        "o" => ("wo", ""),
        "e" => ("ɤ", ""),
        "ai" => ("ai", ""),
        "ei" => ("ei", ""),
        "ao" => ("au", ""),
        "ou" => ("ou", ""),
        "an" => ("a", "n"),
        "en" => ("ə", "n"),
        "ang" => ("a", "ŋ"),
        "eng" => ("ə", "ŋ"),
        "ong" => ("ʊ", "ŋ"),
        "er" => ("ɚ", ""),
        "i" => ("i", ""),
        "ia" => ("ja", ""),
        "ie" => ("je", ""),
        "iao" => ("jau", ""),
        "iu" | "iou" => ("jou", ""),
        "ian" => ("jɛ", "n"),
        "in" => ("i", "n"),
        "iang" => ("ja", "ŋ"),
        "ing" => ("i", "ŋ"),
        "iong" => ("jʊ", "ŋ"),
        "u" => ("u", ""),
        "ua" => ("wa", ""),
        "uo" => ("wo", ""),
        "uai" => ("wai", ""),
        "ui" | "uei" => ("wei", ""),
        "uan" => ("wa", "n"),
        "un" | "uen" => ("wə", "n"),
        "uang" => ("wa", "ŋ"),
        "ueng" => ("wə", "ŋ"),
        "ü" => ("y", ""),
        "üe" => ("ɥe", ""),
        "üan" => ("ɥɛ", "n"),
        "ün" => ("y", "n"),
        _ => return None,
    })
}

fn tone_mark(tone: u8) -> &'static str {
    match tone {
        1 => "→",
        2 => "↗",
        3 => "↓",
        4 => "↘",
        _ => "",
    }
}

/// The Kokoro phonemes of one syllable.
pub fn syllable_ipa(s: &Syllable) -> Option<String> {
    let (vowels, coda) = final_ipa(s.initial, &s.final_)?;
    Some(format!("{}{vowels}{}{coda}", initial_ipa(s.initial), tone_mark(s.tone)))
}

/// Third-tone sandhi (3 3 → 2 3) and the sandhi of 一 and 不 before a fourth tone.
pub fn sandhi(chars: &[char], syllables: &mut [Option<Syllable>]) {
    for i in 0..syllables.len() {
        let next_tone = syllables.get(i + 1).and_then(|s| s.as_ref()).map(|s| s.tone);
        let Some(s) = syllables[i].as_mut() else { continue };
        match (chars.get(i), next_tone) {
            (Some('不'), Some(4)) => s.tone = 2,
            (Some('一'), Some(4)) => s.tone = 2,
            (Some('一'), Some(1..=3)) => s.tone = 4,
            (_, Some(3)) if s.tone == 3 => s.tone = 2,
            _ => {}
        }
    }
}

fn punctuation(c: char) -> Option<char> {
    Some(match c {
        '，' | ',' | '、' | '；' | ';' | '：' | ':' => ',',
        '。' | '.' => '.',
        '？' | '?' => '?',
        '！' | '!' => '!',
        _ => return None,
    })
}

/// Kokoro phonemes for Mandarin `text`: syllables of a run of Hanzi are
/// joined, runs separated by a space, punctuation kept.
pub fn phonemes(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut syllables: Vec<Option<Syllable>> = text.to_pinyin().map(|p| p.and_then(|p| split(p.with_tone_num_end()))).collect();
    sandhi(&chars, &mut syllables);
    let mut out = String::new();
    for (c, s) in chars.iter().zip(&syllables) {
        if let Some(ipa) = s.as_ref().and_then(syllable_ipa) {
            out.push_str(&ipa);
        } else if let Some(p) = punctuation(*c) {
            out.push(p);
            out.push(' ');
        } else if c.is_whitespace() && !out.ends_with(' ') {
            out.push(' ');
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinyin_splits_into_initial_final_and_tone() {
        let s = |p: &str| split(p).map(|s| (s.initial, s.final_, s.tone));
        assert_eq!(s("zhong1"), Some(("zh", "ong".into(), 1)));
        assert_eq!(s("de"), Some(("d", "e".into(), 5)));
        assert_eq!(s("qu4"), Some(("q", "ü".into(), 4)));
        assert_eq!(s("yue4"), Some(("", "üe".into(), 4)));
        assert_eq!(s("yi1"), Some(("", "i".into(), 1)));
        assert_eq!(s("you3"), Some(("", "iou".into(), 3)));
        assert_eq!(s("wo3"), Some(("", "uo".into(), 3)));
        assert_eq!(s("wu3"), Some(("", "u".into(), 3)));
        assert_eq!(s("lv4"), Some(("l", "ü".into(), 4)));
    }

    #[test]
    fn syllables_become_kokoro_phonemes() {
        let ipa = |p: &str| syllable_ipa(&split(p).unwrap()).unwrap();
        assert_eq!(ipa("zhong1"), "ꭧʊ→ŋ");
        assert_eq!(ipa("shi4"), "ʂɨ↘");
        assert_eq!(ipa("qing3"), "ʨʰi↓ŋ");
        assert_eq!(ipa("xue2"), "ɕɥe↗");
        assert_eq!(ipa("de"), "tɤ");
    }

    #[test]
    fn sentences_get_sandhi_and_punctuation() {
        // 你好: 3 3 → 2 3. 不是: bu4 → bu2 before a fourth tone.
        assert_eq!(phonemes("你好。"), "ni↗xau↓.");
        assert_eq!(phonemes("不是"), "pu↗ʂɨ↘");
        assert_eq!(phonemes("今天天气很好，我想买。"), "ʨi→ntʰjɛ→ntʰjɛ→nʨʰi↘xə↗nxau↓, wo↗ɕja↗ŋmai↓.");
    }
}
