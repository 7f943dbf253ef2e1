//! Which model serves which request: the dispatcher's own matching rule
//! (`tolk_protocol::models`), so that a job the dispatcher sends finds its
//! engine.

use tolk_protocol::models::{Need, missing_stage as missing};
pub use tolk_protocol::models::{lang_matches, serves};
use tolk_protocol::node::{InstalledModel, JobAssign};

/// The first stage of `job` that no model in `models` serves, if any, as the
/// message of the node's `MODEL_NOT_AVAILABLE`.
pub fn missing_stage(models: &[InstalledModel], job: &JobAssign) -> Option<String> {
    let need = Need { pipeline: job.pipeline, src_lang: &job.src_lang, tgt_lang: &job.tgt_lang, dialect: job.dialect.as_deref() };
    missing(models, &need).map(|m| m.to_string())
}
