//! Which model serves which request: the same rule as the dispatcher's
//! eligibility check, so that a job the dispatcher sends finds its engine.

use tolk_protocol::ModelKind;
use tolk_protocol::node::{InstalledModel, JobAssign};

/// A model tag serves a wanted tag when they are equal or the model's is a
/// prefix of it at a subtag boundary (`en` serves `en-US`), ignoring case.
pub fn lang_matches(model_lang: &str, wanted: &str) -> bool {
    wanted.get(..model_lang.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(model_lang))
        && matches!(wanted.as_bytes().get(model_lang.len()), None | Some(b'-'))
}

/// Whether `m` is an enabled `kind` model for `lang` (→ `tgt`), of `dialect` when one is asked.
pub fn serves(m: &InstalledModel, kind: &ModelKind, lang: &str, tgt: Option<&str>, dialect: Option<&str>) -> bool {
    m.enabled != Some(false)
        && &m.kind == kind
        && m.src_lang.as_deref().is_some_and(|l| lang_matches(l, lang))
        && tgt.is_none_or(|t| m.tgt_lang.as_deref().is_some_and(|l| lang_matches(l, t)))
        && dialect.is_none_or(|d| m.dialect.as_deref().is_some_and(|md| md.eq_ignore_ascii_case(d)))
}

/// The first stage of `job` that no model in `models` serves, if any.
pub fn missing_stage(models: &[InstalledModel], job: &JobAssign) -> Option<String> {
    let p = job.pipeline;
    let has =
        |kind: ModelKind, lang: &str, tgt: Option<&str>, dialect: Option<&str>| models.iter().any(|m| serves(m, &kind, lang, tgt, dialect));
    if p.use_asr && !has(ModelKind::Asr, &job.src_lang, None, job.dialect.as_deref()) {
        let dialect = job.dialect.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
        return Some(format!("no asr model for {}{dialect}", job.src_lang));
    }
    if p.use_nmt && !has(ModelKind::Nmt, &job.src_lang, Some(&job.tgt_lang), None) {
        return Some(format!("no nmt model for {} → {}", job.src_lang, job.tgt_lang));
    }
    if p.use_tts && !has(ModelKind::Tts, &job.tgt_lang, None, None) {
        return Some(format!("no tts model for {}", job.tgt_lang));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(kind: ModelKind, src: &str, tgt: Option<&str>, dialect: Option<&str>) -> InstalledModel {
        InstalledModel {
            model_id: "m".into(),
            kind,
            src_lang: Some(src.into()),
            tgt_lang: tgt.map(Into::into),
            dialect: dialect.map(Into::into),
            version: "1".into(),
            enabled: None,
        }
    }

    #[test]
    fn languages_match_like_the_dispatcher() {
        for (m, w, ok) in [
            ("en", "en", true),
            ("en", "en-US", true),
            ("EN", "en-us", true),
            ("en", "eng", false),
            ("en-US", "en", false),
            ("zh", "", false),
        ] {
            assert_eq!(lang_matches(m, w), ok, "{m} {w}");
        }
        let asr = model(ModelKind::Asr, "zh", None, Some("zh-sichuan"));
        assert!(serves(&asr, &ModelKind::Asr, "zh", None, Some("zh-SICHUAN")));
        assert!(serves(&asr, &ModelKind::Asr, "zh-CN", None, None));
        assert!(!serves(&asr, &ModelKind::Asr, "zh", None, Some("zh-yue")));
        assert!(!serves(&asr, &ModelKind::Tts, "zh", None, None));
        let nmt = model(ModelKind::Nmt, "en", Some("es"), None);
        assert!(serves(&nmt, &ModelKind::Nmt, "en", Some("es-MX"), None) && !serves(&nmt, &ModelKind::Nmt, "es", Some("en"), None));
        let disabled = InstalledModel { enabled: Some(false), ..nmt };
        assert!(!serves(&disabled, &ModelKind::Nmt, "en", Some("es"), None));
    }
}
