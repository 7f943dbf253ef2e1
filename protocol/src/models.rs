//! Which installed models serve which job: the one matching rule that the
//! dispatcher (eligibility) and the node (accepting a job) both use, so a job
//! the dispatcher sends always finds its engine.

use crate::common::ModelKind;
use crate::node::{InstalledModel, Pipeline};

/// What a job needs from a node's models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need<'a> {
    pub pipeline: Pipeline,
    pub src_lang: &'a str,
    pub tgt_lang: &'a str,
    pub dialect: Option<&'a str>,
}

/// The first stage of a job that no model serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingStage {
    Asr { lang: String, dialect: Option<String> },
    Nmt { src: String, tgt: String },
    Tts { lang: String },
}

impl std::fmt::Display for MissingStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Asr { lang, dialect: Some(d) } => write!(f, "no asr model for {lang} ({d})"),
            Self::Asr { lang, dialect: None } => write!(f, "no asr model for {lang}"),
            Self::Nmt { src, tgt } => write!(f, "no nmt model for {src} → {tgt}"),
            Self::Tts { lang } => write!(f, "no tts model for {lang}"),
        }
    }
}

/// A model tag serves a wanted tag when they are equal or the model's is a
/// prefix of it at a subtag boundary (`en` serves `en-US`), ignoring case.
pub fn lang_matches(model_lang: &str, wanted: &str) -> bool {
    // `get` rather than slicing: no panic whatever the bytes.
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

/// The first stage of `need` that no model in `models` serves, if any.
pub fn missing_stage(models: &[InstalledModel], need: &Need<'_>) -> Option<MissingStage> {
    let has =
        |kind: ModelKind, lang: &str, tgt: Option<&str>, dialect: Option<&str>| models.iter().any(|m| serves(m, &kind, lang, tgt, dialect));
    let p = need.pipeline;
    if p.use_asr && !has(ModelKind::Asr, need.src_lang, None, need.dialect) {
        return Some(MissingStage::Asr { lang: need.src_lang.into(), dialect: need.dialect.map(Into::into) });
    }
    if p.use_nmt && !has(ModelKind::Nmt, need.src_lang, Some(need.tgt_lang), None) {
        return Some(MissingStage::Nmt { src: need.src_lang.into(), tgt: need.tgt_lang.into() });
    }
    if p.use_tts && !has(ModelKind::Tts, need.tgt_lang, None, None) {
        return Some(MissingStage::Tts { lang: need.tgt_lang.into() });
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
    fn language_tags_match_by_prefix_at_a_subtag_boundary() {
        for (m, w, ok) in [
            ("en", "en", true),
            ("en", "en-US", true),
            ("EN", "en-us", true),
            ("en", "eng", false),
            ("en-US", "en", false),
            ("zh", "", false),
            ("e", "é-x", false),
        ] {
            assert_eq!(lang_matches(m, w), ok, "{m} {w}");
        }
    }

    #[test]
    fn models_serve_by_kind_language_dialect_and_enabled() {
        let asr = model(ModelKind::Asr, "zh", None, Some("zh-sichuan"));
        assert!(serves(&asr, &ModelKind::Asr, "zh", None, Some("zh-SICHUAN")));
        assert!(serves(&asr, &ModelKind::Asr, "zh-CN", None, None));
        assert!(!serves(&asr, &ModelKind::Asr, "zh", None, Some("zh-yue")));
        assert!(!serves(&asr, &ModelKind::Tts, "zh", None, None));
        let nmt = model(ModelKind::Nmt, "en", Some("es"), None);
        assert!(serves(&nmt, &ModelKind::Nmt, "en", Some("es-MX"), None));
        assert!(!serves(&nmt, &ModelKind::Nmt, "es", Some("en"), None));
        let disabled = InstalledModel { enabled: Some(false), ..nmt };
        assert!(!serves(&disabled, &ModelKind::Nmt, "en", Some("es"), None));
    }

    #[test]
    fn the_first_missing_stage_is_named() {
        let models = [model(ModelKind::Asr, "en", None, None), model(ModelKind::Nmt, "en", Some("es"), None)];
        let need = |pipeline| Need { pipeline, src_lang: "en", tgt_lang: "es", dialect: None };
        let all = Pipeline::default();
        assert_eq!(missing_stage(&models, &need(all)), Some(MissingStage::Tts { lang: "es".into() }));
        assert_eq!(missing_stage(&models, &need(Pipeline { use_tts: false, ..all })), None);
        let zh = Need { pipeline: all, src_lang: "zh", tgt_lang: "en", dialect: Some("zh-sichuan") };
        let missing = missing_stage(&models, &zh).map(|m| m.to_string());
        assert_eq!(missing.as_deref(), Some("no asr model for zh (zh-sichuan)"));
    }
}
