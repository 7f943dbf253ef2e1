//! The one eligibility rule: which node may run which job, and why not.
//! Scheduling, the refusal's `details.reasons` (extension 11) and the
//! per-class candidate cache all call [`check`]; a policy only chooses
//! among nodes it admitted.

use std::collections::BTreeMap;

use tolk_protocol::Features;
use tolk_protocol::models::{Need, missing_stage};
use tolk_protocol::node::Pipeline;

use super::Millis;
use super::nodes::Node;

/// What a job needs from a node. Jobs with equal requirements form one
/// queue class (`queue::Class`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Requirements {
    pub src_lang: String,
    pub tgt_lang: String,
    pub dialect: Option<String>,
    pub features: Features,
    pub pipeline: Pipeline,
    pub paired_node: Option<String>,
}

/// Why a node cannot take a job (the names of extension 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Not connected (lost, waiting to be forgotten).
    Disconnected,
    /// Finishing its jobs, taking no new ones.
    Draining,
    /// Paired with other sessions only, or not the session's paired node.
    NotPaired,
    /// Lacks an enabled model for a stage.
    NoModel,
    /// Lacks a feature the session wants that the dispatcher cannot supply.
    NoFeature,
    /// Already failed this job.
    FailedThisJob,
    /// Could serve it, but is on probation or quarantined (canaries).
    Untrusted,
    /// Eligible, but at capacity now.
    Busy,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Draining => "draining",
            Self::NotPaired => "not_paired",
            Self::NoModel => "no_model",
            Self::NoFeature => "no_feature",
            Self::FailedThisJob => "failed_this_job",
            Self::Untrusted => "untrusted",
            Self::Busy => "busy",
        }
    }
}

/// Whether node `id` may ever run a job needing `req`, as things stand
/// (connection, drain, pairing, models, features, trust). Cached per class.
pub(super) fn check(n: &Node, id: &str, req: &Requirements, supplied: Features) -> Result<(), Reason> {
    check_serves(n, id, req, supplied)?;
    // Last, so that a node that could not serve the job anyway says why.
    if !n.trust.may_serve(req.paired_node.is_some()) {
        return Err(Reason::Untrusted);
    }
    Ok(())
}

/// [`check`] without trust: whether the node can do the work at all (what
/// a canary for `req` may be sent to).
pub(super) fn check_serves(n: &Node, id: &str, req: &Requirements, supplied: Features) -> Result<(), Reason> {
    if !n.live() {
        return Err(Reason::Disconnected);
    }
    if n.draining {
        return Err(Reason::Draining);
    }
    match &req.paired_node {
        Some(p) if p != id => return Err(Reason::NotPaired),
        None if !n.accept_public => return Err(Reason::NotPaired),
        _ => {}
    }
    let need = Need { pipeline: req.pipeline, src_lang: &req.src_lang, tgt_lang: &req.tgt_lang, dialect: req.dialect.as_deref() };
    if missing_stage(&n.models, &need).is_some() {
        return Err(Reason::NoModel);
    }
    // A feature the node lacks must be one the dispatcher supplies.
    if !req.features.missing_from(n.features).missing_from(supplied).is_empty() {
        return Err(Reason::NoFeature);
    }
    Ok(())
}

/// [`check`], then the job's own history and the node's room at `now`.
pub(super) fn check_for_job(
    n: &Node,
    id: &str,
    req: &Requirements,
    supplied: Features,
    failed: &[String],
    now: Millis,
) -> Result<(), Reason> {
    check(n, id, req, supplied)?;
    if failed.iter().any(|f| f == id) {
        return Err(Reason::FailedThisJob);
    }
    if !n.has_room(now) {
        return Err(Reason::Busy);
    }
    Ok(())
}

/// Nodes per reason (extension 11's `details.reasons`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reasons(pub BTreeMap<&'static str, u32>);

impl Reasons {
    pub(super) fn add(&mut self, r: Reason) {
        *self.0.entry(r.as_str()).or_insert(0) += 1;
    }

    /// The reason most nodes had (ties: the first by name), for counting.
    pub fn main(&self) -> Option<&'static str> {
        self.0.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(k, _)| *k)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect())
    }
}

/// What `/admin/explain` was asked: a job of these languages, optionally
/// for an existing session (its features, pairing and last node).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ExplainQuery {
    pub src_lang: String,
    pub tgt_lang: String,
    #[serde(default)]
    pub dialect: Option<String>,
    #[serde(default)]
    pub session: Option<String>,
}

/// One node's part in an explanation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExplainNode {
    pub node_id: String,
    /// Would be offered to the policy now.
    pub eligible: bool,
    /// Why not, by the one rule (extension 11's names).
    pub reason: Option<&'static str>,
    pub trust: super::trust::TrustState,
    pub running: u32,
    pub capacity: u32,
    /// The policy in effect picks this node among the eligible ones.
    pub picked: bool,
}

/// Why a job would go where it would go.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explanation {
    pub src_lang: String,
    pub tgt_lang: String,
    pub paired_node_id: Option<String>,
    pub policy: String,
    /// The node the policy picks now; `None` when no node is eligible (the
    /// job would queue or be refused with these reasons).
    pub picked: Option<String>,
    pub reasons: std::collections::BTreeMap<&'static str, u32>,
    pub nodes: Vec<ExplainNode>,
}

impl super::Core {
    /// Every node and why it would or would not get a job for `q`, from
    /// [`check_for_job`] (the rule scheduling uses), and the node the policy
    /// in effect would pick. Asking changes nothing but the policy's own
    /// state (a policy may count calls).
    pub fn explain(&mut self, now: Millis, q: &ExplainQuery) -> Result<Explanation, String> {
        let (features, paired, last) = match &q.session {
            Some(id) => {
                let s = self.sessions.get(id).ok_or_else(|| format!("no session {id}"))?;
                (s.features, s.paired_node.clone(), s.last_node.clone())
            }
            None => (Features::default(), None, None),
        };
        let req = Requirements {
            src_lang: q.src_lang.clone(),
            tgt_lang: q.tgt_lang.clone(),
            dialect: q.dialect.clone(),
            features,
            pipeline: Pipeline { use_asr: true, use_nmt: !q.src_lang.eq_ignore_ascii_case(&q.tgt_lang), use_tts: true },
            paired_node: paired.clone(),
        };
        let mut reasons = Reasons::default();
        let mut rows = Vec::with_capacity(self.nodes.len());
        for (id, n) in &self.nodes {
            let verdict = check_for_job(n, id, &req, self.supplied, &[], now);
            if let Err(r) = verdict {
                reasons.add(r);
            }
            rows.push(ExplainNode {
                node_id: id.clone(),
                eligible: verdict.is_ok(),
                reason: verdict.err().map(Reason::as_str),
                trust: n.trust.state,
                running: n.running.len() as u32,
                capacity: n.max_jobs,
                picked: false,
            });
        }
        let candidates: Vec<super::policy::Candidate<'_>> = self
            .nodes
            .iter()
            .zip(&rows)
            .filter(|(_, row)| row.eligible)
            .map(|((id, n), _)| super::jobs::candidate(id, n, last.as_deref()))
            .collect();
        let session_id = q.session.clone().unwrap_or_default();
        let info = super::policy::JobInfo {
            session_id: &session_id,
            utterance_index: 0,
            audio_ms: 0,
            attempt: 0,
            paired: req.paired_node.is_some(),
        };
        let picked = if candidates.is_empty() {
            None
        } else {
            let i = self
                .policy
                .pick(&info, &candidates)
                .filter(|&i| i < candidates.len())
                .or_else(|| super::policy::LeastLoaded::choose(&candidates));
            i.and_then(|i| candidates.get(i)).map(|c| c.node_id.to_owned())
        };
        for row in &mut rows {
            row.picked = picked.as_deref() == Some(row.node_id.as_str());
        }
        Ok(Explanation {
            src_lang: q.src_lang.clone(),
            tgt_lang: q.tgt_lang.clone(),
            paired_node_id: paired,
            policy: self.policy.name().to_owned(),
            picked,
            reasons: reasons.0,
            nodes: rows,
        })
    }
}
