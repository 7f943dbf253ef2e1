//! Overload (extension 10), driven through the core with simulated time:
//! an open-loop load of 4× the fleet's capacity for a simulated minute.
//! Goodput stays at capacity, every accepted utterance gets exactly one
//! outcome, the excess is answered at once with `retry_after_ms`, a
//! flooding session does not starve the others, healthy nodes stay alive,
//! and latency is back to normal once the load ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failed test

mod harness;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use harness::*;
use tolk_dispatcher::CoreConfig;
use tolk_protocol::ServerToClient;
use tolk_protocol::common::ErrorCode;
use tolk_protocol::node::JobAssign;

/// 8 nodes × 4 slots, 200 ms a job: 160 jobs per second.
const NODES: usize = 8;
const SLOTS: u32 = 4;
const JOB_MS: u64 = 200;
const CAPACITY_PER_S: f64 = NODES as f64 * SLOTS as f64 * 1000.0 / JOB_MS as f64;

#[derive(Default)]
struct Tally {
    sent: u64,
    results: u64,
    unavailable: u64,
    refused: u64,
    outcomes: BTreeSet<u64>,
    /// Accepted = sent and not refused; each must get exactly one outcome.
    refused_indexes: BTreeSet<u64>,
    latencies: Vec<u64>,
    sent_at: HashMap<u64, u64>,
}

struct Load {
    sim: Sim,
    nodes: Vec<(u64, String)>,
    /// Per node: jobs with the time they finish.
    running: Vec<VecDeque<(u64, JobAssign)>>,
    sessions: Vec<(u64, String)>,
    tally: Vec<Tally>,
    next_index: Vec<u64>,
}

impl Load {
    fn new(sessions: usize) -> Self {
        let cfg = CoreConfig { max_jobs_per_node: SLOTS, max_pending_per_session: 64, ..CoreConfig::default() };
        let mut sim = Sim::new(cfg);
        let nodes: Vec<(u64, String)> = (0..NODES)
            .map(|_| {
                let (conn, id, _) = sim.register_node(&[("en", "es")], true);
                (conn, id)
            })
            .collect();
        let sessions: Vec<(u64, String)> = (0..sessions)
            .map(|_| {
                let (conn, id, _) = sim.open_session("en", "es");
                (conn, id)
            })
            .collect();
        let n = sessions.len();
        Self {
            sim,
            running: vec![VecDeque::new(); NODES],
            nodes,
            sessions,
            tally: (0..n).map(|_| Tally::default()).collect(),
            next_index: vec![0; n],
        }
    }

    fn send(&mut self, s: usize) {
        let (conn, id) = self.sessions[s].clone();
        let index = self.next_index[s];
        self.next_index[s] += 1;
        self.tally[s].sent += 1;
        self.tally[s].sent_at.insert(index, self.sim.now);
        self.sim.utterance(conn, &id, index);
    }

    /// Nodes pick up new jobs and finish those that are due; sessions read.
    fn step(&mut self) {
        let now = self.sim.now;
        for (ni, (conn, _)) in self.nodes.clone().iter().enumerate() {
            for job in self.sim.jobs(*conn) {
                self.running[ni].push_back((now + JOB_MS, job));
            }
        }
        for ni in 0..NODES {
            while self.running[ni].front().is_some_and(|(at, _)| *at <= now) {
                let (_, job) = self.running[ni].pop_front().unwrap();
                let (conn, id) = self.nodes[ni].clone();
                self.sim.succeed(conn, &id, &job);
            }
        }
        for s in 0..self.sessions.len() {
            let conn = self.sessions[s].0;
            for msg in self.sim.take_client(conn) {
                self.read(s, &msg);
            }
        }
    }

    fn read(&mut self, s: usize, msg: &ServerToClient) {
        let now = self.sim.now;
        let t = &mut self.tally[s];
        match msg {
            ServerToClient::TranslationResult(r) => {
                assert!(t.outcomes.insert(r.utterance_index), "two outcomes for {}", r.utterance_index);
                t.results += 1;
                t.latencies.push(now - t.sent_at[&r.utterance_index]);
            }
            ServerToClient::Error(e) => {
                let d = e.details.as_ref().expect("overload errors carry details");
                assert!(d["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{e:?}");
                match e.code {
                    ErrorCode::RateLimited => {
                        let index = d["refused_index"].as_u64().expect("a refusal names its index");
                        assert!(e.utterance_index().is_none(), "a refusal is not an outcome");
                        t.refused += 1;
                        t.refused_indexes.insert(index);
                    }
                    ErrorCode::NodeUnavailable => {
                        let index = e.utterance_index().expect("an outcome names its index");
                        assert!(d["reasons"]["busy"].as_u64().is_some_and(|n| n > 0), "why: busy nodes, {d}");
                        assert!(t.outcomes.insert(index), "two outcomes for {index}");
                        t.unavailable += 1;
                    }
                    ref other => panic!("unexpected error {other:?}: {e:?}"),
                }
            }
            ServerToClient::ServerHeartbeat(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Runs `ms` of simulated time; session `s` sends every `period[s]` ms.
    fn run(&mut self, ms: u64, period: &[u64]) {
        let start = self.sim.now;
        for t in 0..ms {
            for (s, p) in period.iter().enumerate() {
                if *p > 0 && (t + s as u64 * 7).is_multiple_of(*p) {
                    self.send(s);
                }
            }
            if t % 5_000 == 0 {
                for (conn, id) in self.nodes.clone() {
                    let running = self.running[self.nodes.iter().position(|n| n.0 == conn).unwrap()].len() as u32;
                    self.sim.heartbeat_running(conn, &id, None, running);
                }
            }
            self.step();
            self.sim.advance(1);
        }
        let _ = start;
    }
}

#[test]
fn four_times_capacity_for_a_minute_keeps_goodput_and_refuses_the_excess_at_once() {
    // 40 sessions; the last one floods at 10× the others' rate. Offered:
    // 39 × 16/s + 160/s = 784/s, about 4.9× the 160/s the fleet can do.
    let sessions = 40;
    let mut period = vec![62; sessions];
    period[sessions - 1] = 6;
    let mut load = Load::new(sessions);
    let minute = 60_000;
    load.run(minute, &period);
    // Drain: no more sending; everything accepted gets its outcome.
    load.run(5_000, &vec![0; sessions]);

    let results: u64 = load.tally.iter().map(|t| t.results).sum();
    let offered: u64 = load.tally.iter().map(|t| t.sent).sum();
    let goodput = results as f64 / (minute as f64 / 1000.0);
    println!(
        "offered {:.0}/s, capacity {CAPACITY_PER_S:.0}/s, delivered {goodput:.1}/s, refused {}, unavailable {}",
        offered as f64 / 60.0,
        load.tally.iter().map(|t| t.refused).sum::<u64>(),
        load.tally.iter().map(|t| t.unavailable).sum::<u64>()
    );
    assert!(offered as f64 / 60.0 > 4.0 * CAPACITY_PER_S, "the load is over 4× capacity");
    assert!(goodput >= 0.95 * CAPACITY_PER_S, "goodput {goodput:.1}/s fell below 95 % of {CAPACITY_PER_S}/s");

    for (s, t) in load.tally.iter().enumerate() {
        // Exactly one outcome for every accepted utterance, none for a refused one.
        let accepted: BTreeSet<u64> = (0..t.sent).filter(|i| !t.refused_indexes.contains(i)).collect();
        assert_eq!(t.outcomes, accepted, "session {s}: outcomes are exactly the accepted utterances");
    }
    // No session starved: each polite session got at least half of an even
    // share of the capacity, and the flooder not much more than its share.
    let even = CAPACITY_PER_S * 60.0 / sessions as f64;
    for t in &load.tally[..sessions - 1] {
        assert!(t.results as f64 >= 0.5 * even, "a polite session got {} results, an even share is {even:.0}", t.results);
    }
    let flooder = load.tally[sessions - 1].results as f64;
    assert!(flooder <= 2.5 * even, "the flooder got {flooder} results, an even share is {even:.0}");

    // What is served is served fast: queued at most about half a job's time.
    let mut lat: Vec<u64> = load.tally.iter().flat_map(|t| t.latencies.iter().copied()).collect();
    lat.sort_unstable();
    let p99 = lat[lat.len() * 99 / 100];
    println!("served latency p50 {} ms, p99 {p99} ms (job {JOB_MS} ms)", lat[lat.len() / 2]);
    assert!(p99 <= 2 * JOB_MS, "p99 {p99} ms of served utterances, twice the job time is {}", 2 * JOB_MS);

    // Overload never made a healthy node look dead.
    let stats = load.sim.core.stats();
    assert_eq!(stats.nodes_dead, 0);
    assert_eq!(stats.nodes_live, NODES as u64);
    assert_eq!(stats.job_timeouts, 0);
    // And afterwards the dispatcher is back to normal at once.
    let before = load.tally[0].results;
    load.send(0);
    load.run(JOB_MS + 2, &vec![0; sessions]);
    assert_eq!(load.tally[0].results, before + 1);
    assert!(*load.tally[0].latencies.last().unwrap() <= JOB_MS + 1, "no queue left behind");
    let mut refusals = BTreeMap::new();
    for t in &load.tally {
        *refusals.entry("refused").or_insert(0) += t.refused;
    }
    assert!(refusals["refused"] > 0, "the flooder was told to slow down");
}

#[test]
fn below_capacity_nothing_is_refused() {
    // 20 sessions at 4/s: 80/s, half the capacity.
    let sessions = 20;
    let mut load = Load::new(sessions);
    load.run(10_000, &vec![250; sessions]);
    load.run(2_000, &vec![0; sessions]);
    for t in &load.tally {
        assert_eq!((t.refused, t.unavailable), (0, 0));
        assert_eq!(t.results, t.sent);
        assert!(t.latencies.iter().all(|&l| l <= JOB_MS + 2), "no queueing below capacity");
    }
}

#[test]
fn when_the_dispatchers_own_cpu_is_the_limit_it_admits_what_it_serves_and_refuses_the_rest_at_once() {
    use tolk_dispatcher::core::Input;
    let mut sim = Sim::new(CoreConfig {
        max_jobs_per_node: 10_000,
        max_pending_per_session: 10_000,
        shed_lag_high_ms: 20.0,
        shed_lag_low_ms: 5.0,
        ..CoreConfig::default()
    });
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let (client, sid, _) = sim.open_session("en", "es");
    let mut index = 0;
    // One simulated second: 100 utterances served (the node answers at once), with a lag reading every 100 ms.
    let mut second = |sim: &mut Sim, lag_ms: f64, offered: u32| -> (usize, Vec<u64>) {
        let (mut ran, mut refused) = (0, Vec::new());
        for tick in 0..10 {
            // A negative lag: that lag for half the second only (a burst).
            let lag_ms = if lag_ms < 0.0 { if tick < 5 { -lag_ms } else { 1.0 } } else { lag_ms };
            sim.core.handle(sim.now, Input::Load { lag_ms });
            for _ in 0..offered / 10 {
                sim.utterance(client, &sid, index);
                index += 1;
                for j in sim.jobs(node) {
                    sim.succeed(node, &node_id, &j);
                    ran += 1;
                }
            }
            for m in sim.take_client(client) {
                if let ServerToClient::Error(e) = m
                    && e.code == ErrorCode::RateLimited
                {
                    assert_eq!(e.details.as_ref().unwrap()["retry_after_ms"], 1_000);
                    refused.push(e.details.as_ref().unwrap()["refused_index"].as_u64().unwrap());
                }
            }
            sim.advance(100);
        }
        (ran, refused)
    };
    // A lag burst shorter than a second sheds nothing.
    let (ran, refused) = second(&mut sim, -50.0, 100);
    assert_eq!((ran, refused.len()), (100, 0));
    // Sustained lag: from then on admitted ≈ served, 400/s offered: most refused at once.
    let _ = second(&mut sim, 50.0, 400);
    assert!(sim.core.stats().shedding);
    let (ran, refused) = second(&mut sim, 50.0, 400);
    assert_eq!(ran + refused.len(), 400, "each utterance either runs or is refused");
    assert!(ran >= 5 && refused.len() > 200, "{ran} ran, {} refused", refused.len());
    assert_eq!(sim.core.stats().cpu_shed as usize, sim.core.stats().refusals.get("RATE_LIMITED").copied().unwrap_or(0) as usize);
    // The load ends: a second with a low lag and no refusal, then everything is admitted again.
    let _ = second(&mut sim, 1.0, 0);
    let (ran, refused) = second(&mut sim, 1.0, 100);
    assert_eq!((ran, refused.len()), (100, 0));
    assert!(!sim.core.stats().shedding);
}
