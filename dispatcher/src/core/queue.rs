//! Queued jobs, indexed by what they need. Jobs with equal
//! [`Requirements`] form a [`Class`]: one queue (oldest first), the cached
//! list of nodes eligible for it, its slot count, the jobs each session has
//! in it, and its drain rate. A node with a free slot looks only at classes
//! it can serve, and a job finds its candidates in its class's cache, so
//! the work per event does not grow with the queue.

use std::collections::{BTreeMap, HashMap};

use tolk_protocol::Features;

use super::Millis;
use super::admission::DrainMeter;
use super::eligibility::{self, Reasons, Requirements};
use super::nodes::Node;

pub(super) type ClassId = u32;

#[derive(Debug)]
pub(super) struct Class {
    pub req: Requirements,
    /// Queued jobs by acceptance sequence (a retried job keeps its place).
    pub queue: BTreeMap<u64, String>,
    /// Nodes eligible for this class, valid while `epoch` is the core's.
    eligible: Vec<String>,
    epoch: Option<u64>,
    /// Job slots of the eligible nodes.
    slots: u32,
    /// Jobs in the system (queued, running, waiting for detection) per session.
    pub per_session: HashMap<String, u32>,
    pub drain: DrainMeter,
    /// The last `reasons` computed, reused briefly under a flood of refusals.
    pub reasons_cache: Option<(Millis, Reasons)>,
}

impl Class {
    fn new(req: Requirements) -> Self {
        Self {
            req,
            queue: BTreeMap::new(),
            eligible: Vec::new(),
            epoch: None,
            slots: 0,
            per_session: HashMap::new(),
            drain: DrainMeter::default(),
            reasons_cache: None,
        }
    }

    /// Recomputes the eligible nodes if the node set changed since.
    pub fn refresh(&mut self, epoch: u64, nodes: &BTreeMap<String, Node>, supplied: Features) {
        if self.epoch == Some(epoch) {
            return;
        }
        self.eligible.clear();
        self.slots = 0;
        for (id, n) in nodes {
            if eligibility::check(n, id, &self.req, supplied).is_ok() {
                self.eligible.push(id.clone());
                self.slots += n.max_jobs;
            }
        }
        self.epoch = Some(epoch);
    }

    /// Eligible nodes (call [`Class::refresh`] first).
    pub fn eligible(&self) -> &[String] {
        &self.eligible
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn serves(&self, node_id: &str) -> bool {
        self.eligible.iter().any(|n| n == node_id)
    }

    fn in_use(&self) -> bool {
        !self.queue.is_empty() || !self.per_session.is_empty()
    }
}

/// Every class, by id and by requirements.
#[derive(Debug, Default)]
pub(super) struct Classes {
    by_req: HashMap<Requirements, ClassId>,
    classes: BTreeMap<ClassId, Class>,
    next: ClassId,
    queued: usize,
}

impl Classes {
    pub fn id_for(&mut self, req: &Requirements) -> ClassId {
        if let Some(&id) = self.by_req.get(req) {
            return id;
        }
        self.next = self.next.wrapping_add(1);
        let id = self.next;
        self.by_req.insert(req.clone(), id);
        self.classes.insert(id, Class::new(req.clone()));
        id
    }

    pub fn get(&self, id: ClassId) -> Option<&Class> {
        self.classes.get(&id)
    }

    pub fn get_mut(&mut self, id: ClassId) -> Option<&mut Class> {
        self.classes.get_mut(&id)
    }

    /// Classes with queued jobs.
    pub fn waiting(&self) -> impl Iterator<Item = ClassId> + '_ {
        self.classes.iter().filter(|(_, c)| !c.queue.is_empty()).map(|(id, _)| *id)
    }

    /// Queued jobs, all classes together.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn enqueue(&mut self, id: ClassId, seq: u64, job_id: String) {
        if let Some(c) = self.classes.get_mut(&id)
            && c.queue.insert(seq, job_id).is_none()
        {
            self.queued += 1;
        }
    }

    /// Takes `seq` out of its queue; false when it was not queued.
    pub fn dequeue(&mut self, id: ClassId, seq: u64) -> bool {
        let removed = self.classes.get_mut(&id).and_then(|c| c.queue.remove(&seq)).is_some();
        if removed {
            self.queued -= 1;
        }
        removed
    }

    /// A job of `session` entered the class.
    pub fn enter(&mut self, id: ClassId, session: &str) {
        if let Some(c) = self.classes.get_mut(&id) {
            *c.per_session.entry(session.to_owned()).or_insert(0) += 1;
        }
    }

    /// A job of `session` left the class for good.
    pub fn leave(&mut self, id: ClassId, session: &str) {
        if let Some(c) = self.classes.get_mut(&id)
            && let Some(n) = c.per_session.get_mut(session)
        {
            *n -= 1;
            if *n == 0 {
                c.per_session.remove(session);
            }
        }
    }

    /// Forgets classes with no job (their caches are cheap to rebuild).
    pub fn collect_unused(&mut self) {
        let unused: Vec<ClassId> = self.classes.iter().filter(|(_, c)| !c.in_use()).map(|(id, _)| *id).collect();
        for id in unused {
            if let Some(c) = self.classes.remove(&id) {
                self.by_req.remove(&c.req);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Sessions with a job in the system (one in two classes counts twice:
    /// rare, and it only makes shares smaller).
    pub fn active_sessions(&self) -> usize {
        self.classes.values().map(|c| c.per_session.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tolk_protocol::node::Pipeline;

    fn req(src: &str) -> Requirements {
        Requirements {
            src_lang: src.into(),
            tgt_lang: "es".into(),
            dialect: None,
            features: Features::default(),
            pipeline: Pipeline::default(),
            paired_node: None,
        }
    }

    #[test]
    fn equal_requirements_share_a_class_and_queues_keep_acceptance_order() {
        let mut c = Classes::default();
        let (a, b) = (c.id_for(&req("en")), c.id_for(&req("de")));
        assert_ne!(a, b);
        assert_eq!(c.id_for(&req("en")), a);
        c.enqueue(a, 7, "j7".into());
        c.enqueue(a, 3, "j3".into());
        c.enqueue(b, 5, "j5".into());
        assert_eq!(c.queued(), 3);
        assert_eq!(c.get(a).and_then(|k| k.queue.values().next()).map(String::as_str), Some("j3"), "oldest first");
        assert!(c.dequeue(a, 3) && !c.dequeue(a, 3));
        assert_eq!((c.queued(), c.waiting().count()), (2, 2));
    }

    #[test]
    fn per_session_counts_and_unused_classes_are_forgotten() {
        let mut c = Classes::default();
        let a = c.id_for(&req("en"));
        c.enter(a, "s1");
        c.enter(a, "s1");
        c.enter(a, "s2");
        assert_eq!(c.get(a).map(|k| k.per_session.len()), Some(2));
        c.leave(a, "s1");
        c.leave(a, "s2");
        c.collect_unused();
        assert_eq!(c.len(), 1, "s1 still has a job");
        c.leave(a, "s1");
        c.collect_unused();
        assert_eq!(c.len(), 0);
        assert_ne!(c.id_for(&req("en")), a, "a new class after it was forgotten");
    }
}
