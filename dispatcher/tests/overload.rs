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

/// Opens `n` en → es sessions: (conn, session id).
fn open_sessions(sim: &mut Sim, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let (conn, id, _) = sim.open_session("en", "es");
            (conn, id)
        })
        .collect()
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
        let sessions = open_sessions(&mut sim, sessions);
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
            if t.is_multiple_of(5_000) {
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

/// The dispatcher's own CPU as the limit, modelled: everything accepted
/// passes one server that completes `SERVE_PER_MS` jobs a millisecond in
/// arrival order, and the scheduling lag the shell would read is the time
/// that backlog takes to drain (`held / rate`). 100 phones flood (never
/// stopping, 6× the rate between them: more busy sessions than the window
/// holds), 5 send slowly.
struct CpuBound {
    sim: Sim,
    node: (u64, String),
    sessions: Vec<(u64, String)>,
    next: Vec<u64>,
    refused: Vec<BTreeSet<u64>>,
    answered: Vec<BTreeSet<u64>>,
    /// Results and refusals per session in the measured half.
    served: Vec<u64>,
    refused_measured: Vec<u64>,
    held: VecDeque<JobAssign>,
}

const SERVE_PER_MS: usize = 2;
const FLOODS: usize = 100;
const LIGHT: usize = 5;

/// A core whose CPU is the limit: node slots without bound, the lag
/// thresholds of the model's scale.
fn cpu_bound_sim() -> Sim {
    Sim::new(CoreConfig {
        max_jobs_per_node: 100_000,
        max_pending_per_session: 100_000,
        shed_lag_high_ms: 10.0,
        shed_lag_low_ms: 2.0,
        ..CoreConfig::default()
    })
}

impl CpuBound {
    fn new() -> Self {
        let mut sim = cpu_bound_sim();
        let (conn, node_id, _) = sim.register_node(&[("en", "es")], true);
        let sessions = open_sessions(&mut sim, FLOODS + LIGHT);
        let n = sessions.len();
        Self {
            sim,
            node: (conn, node_id),
            sessions,
            next: vec![0; n],
            refused: vec![BTreeSet::new(); n],
            answered: vec![BTreeSet::new(); n],
            served: vec![0; n],
            refused_measured: vec![0; n],
            held: VecDeque::new(),
        }
    }

    /// One simulated millisecond at `t`.
    fn step(&mut self, t: u64, offering: bool, measured: bool) {
        use tolk_dispatcher::core::Input;
        let (node, node_id) = self.node.clone();
        if t.is_multiple_of(100) {
            let lag_ms = self.held.len() as f64 / SERVE_PER_MS as f64;
            let now = self.sim.now;
            self.sim.core.handle(now, Input::Load { lag_ms, least_lag_ms: lag_ms });
        }
        if t.is_multiple_of(5_000) {
            self.sim.heartbeat(node, &node_id, None);
        }
        // Arrivals in a different order each millisecond, as on a network.
        let n = self.sessions.len();
        for j in 0..n {
            let k = (j + t as usize * 37) % n;
            let sends = if k < FLOODS { t % 8 == k as u64 % 8 } else { t % 200 == k as u64 };
            if offering && sends {
                let (conn, sid) = &self.sessions[k];
                self.sim.utterance(*conn, sid, self.next[k]);
                self.next[k] += 1;
            }
        }
        let jobs = self.sim.jobs(node);
        self.held.extend(jobs);
        for _ in 0..SERVE_PER_MS {
            let Some(job) = self.held.pop_front() else { break };
            self.sim.succeed(node, &node_id, &job);
        }
        for (k, (conn, _)) in self.sessions.iter().enumerate() {
            for m in self.sim.take_client(*conn) {
                match m {
                    ServerToClient::TranslationResult(r) => {
                        assert!(self.answered[k].insert(r.utterance_index), "one outcome per utterance");
                        if measured {
                            self.served[k] += 1;
                        }
                    }
                    ServerToClient::Error(e) if e.code == ErrorCode::RateLimited => {
                        let d = e.details.as_ref().unwrap();
                        let wait = d["retry_after_ms"].as_u64().unwrap();
                        // A first refusal waits the window's turnover; a repeat, at least
                        // 100 ms; either jittered down to half.
                        let least = tolk_dispatcher::core::admission::CpuShedder::FIRST_WAIT_MS.0 / 2;
                        assert!((least..=5_000).contains(&wait), "retry_after_ms {wait}");
                        assert!(self.refused[k].insert(d["refused_index"].as_u64().unwrap()));
                        if measured {
                            self.refused_measured[k] += 1;
                        }
                    }
                    ServerToClient::ServerHeartbeat(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        self.sim.advance(1);
    }
}

#[test]
fn when_the_dispatchers_own_cpu_is_the_limit_what_is_in_flight_is_held_to_a_window_shared_fairly() {
    const LOAD_MS: u64 = 10_000;
    let mut load = CpuBound::new();
    let mut max_held = 0;
    for t in 0..LOAD_MS {
        let measured = t >= LOAD_MS / 2;
        load.step(t, true, measured);
        if measured {
            max_held = max_held.max(load.held.len());
        }
    }
    assert!(load.sim.core.stats().shed_window.is_some(), "sustained lag: shedding");
    // Goodput: the server never idles (what it could serve, it served).
    let capacity = (LOAD_MS / 2) * SERVE_PER_MS as u64;
    let served: u64 = load.served.iter().sum();
    assert!(served as f64 >= 0.95 * capacity as f64, "served {served} of {capacity} in the second half");
    // What is in flight is held to the window plus one per session, so
    // queueing stays at tens of milliseconds instead of growing with the flood.
    let bound = tolk_dispatcher::core::admission::CpuShedder::MIN_WINDOW as usize + load.sessions.len();
    assert!(max_held <= bound, "{max_held} in flight, bound {bound}");
    // The slow phones keep to their one: once the backlog of the overload's
    // start has drained (while it drains, their one waits in it and a
    // second is refused), never refused.
    for k in FLOODS..FLOODS + LIGHT {
        assert_eq!(load.refused_measured[k], 0, "slow session {k} refused");
        assert!(load.served[k] >= 24, "slow session {k}: {} of its 25 served in the second half", load.served[k]);
    }
    // The floods share what is left evenly.
    let floods = &load.served[..FLOODS];
    let mean = floods.iter().sum::<u64>() as f64 / FLOODS as f64;
    for (k, &n) in floods.iter().enumerate() {
        assert!((n as f64) > 0.75 * mean && (n as f64) < 1.25 * mean, "flood {k} served {n}, mean {mean}");
    }
    // The load ends: the backlog drains, the lag falls, shedding stops
    // (CALM_MS after the last refusal).
    for t in LOAD_MS..LOAD_MS + 1_000 + tolk_dispatcher::core::admission::CpuShedder::CALM_MS {
        load.step(t, false, false);
    }
    assert!(load.sim.core.stats().shed_window.is_none());
    assert!(load.held.is_empty());
    // Every utterance sent was either refused or answered, never both.
    for k in 0..load.sessions.len() {
        assert!(load.refused[k].is_disjoint(&load.answered[k]));
        assert_eq!(load.refused[k].len() + load.answered[k].len(), load.next[k] as usize, "session {k}: every utterance accounted for");
    }
    let refusals: usize = load.refused.iter().map(BTreeSet::len).sum();
    assert_eq!(load.sim.core.stats().cpu_shed as usize, refusals);
    // Back to normal: admitted and served at once.
    let (node, node_id) = load.node.clone();
    let (conn, sid) = load.sessions[0].clone();
    let index = load.next[0];
    load.sim.utterance(conn, &sid, index);
    let job = load.sim.jobs(node).pop().expect("admitted");
    load.sim.succeed(node, &node_id, &job);
    let back = load.sim.take_client(conn);
    assert!(back.iter().any(|m| matches!(m, ServerToClient::TranslationResult(r) if r.utterance_index == index)), "{back:?}");
}

/// A phone as the SDK drives one, open loop: what falls due is queued and
/// sent as the window allows; a `RATE_LIMITED` refusal puts the utterance
/// back in the queue, cuts the window to what the server had accepted
/// before it and pauses sending until `retry_after_ms` has passed or the
/// next outcome arrives, whichever is first.
#[derive(Default)]
struct HoldingPhone {
    queued: u64,
    next_index: u64,
    in_flight: BTreeSet<u64>,
    window: usize,
    paused_until: Option<u64>,
    grow_after: Option<u64>,
    served: u64,
    refused: u64,
    answered: BTreeSet<u64>,
    refused_indexes: BTreeSet<u64>,
}

const PHONE_WINDOW: usize = 8;
/// One way, phone to dispatcher or back: a mobile network's. Without it,
/// every busy phone would have its utterance in the dispatcher at every
/// instant, which no real phone does.
const TRANSIT_MS: u64 = 40;

#[test]
fn phones_that_hold_what_is_refused_keep_the_cpu_busy_and_none_is_starved() {
    use tolk_dispatcher::core::Input;
    const LOAD_MS: u64 = 10_000;
    const PHONES: usize = 200;
    // 200 phones at one every 50 ms: 4,000/s offered, twice the 2,000/s served.
    const PERIOD_MS: u64 = 50;
    let mut sim = cpu_bound_sim();
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let sessions = open_sessions(&mut sim, PHONES);
    let mut phones: Vec<HoldingPhone> = (0..PHONES).map(|_| HoldingPhone { window: PHONE_WINDOW, ..HoldingPhone::default() }).collect();
    let mut held: VecDeque<JobAssign> = VecDeque::new();
    // Frames on their way, as on a real network: utterances to the
    // dispatcher, and results and refusals back, each TRANSIT_MS late.
    let mut uplink: VecDeque<(u64, usize, u64)> = VecDeque::new();
    let mut downlink: VecDeque<(u64, usize, ServerToClient)> = VecDeque::new();
    for t in 0..LOAD_MS {
        let measured = t >= LOAD_MS / 2;
        let now = sim.now;
        if t.is_multiple_of(100) {
            let lag_ms = held.len() as f64 / SERVE_PER_MS as f64;
            sim.core.handle(now, Input::Load { lag_ms, least_lag_ms: lag_ms });
        }
        if t.is_multiple_of(5_000) {
            sim.heartbeat(node, &node_id, None);
        }
        for j in 0..PHONES {
            let k = (j + t as usize * 37) % PHONES;
            let phone = &mut phones[k];
            if t % PERIOD_MS == k as u64 % PERIOD_MS {
                phone.queued += 1;
            }
            if phone.paused_until.is_some_and(|until| now < until) {
                continue;
            }
            while phone.queued > 0 && phone.in_flight.len() < phone.window {
                phone.queued -= 1;
                let index = phone.next_index;
                phone.next_index += 1;
                phone.in_flight.insert(index);
                uplink.push_back((now + TRANSIT_MS, k, index));
            }
        }
        while let Some(&(_, k, index)) = uplink.front().filter(|(at, ..)| *at <= now) {
            uplink.pop_front();
            sim.utterance(sessions[k].0, &sessions[k].1, index);
        }
        held.extend(sim.jobs(node));
        for _ in 0..SERVE_PER_MS {
            let Some(job) = held.pop_front() else { break };
            sim.succeed(node, &node_id, &job);
        }
        for (k, (conn, _)) in sessions.iter().enumerate() {
            downlink.extend(sim.take_client(*conn).into_iter().map(|m| (now + TRANSIT_MS, k, m)));
        }
        while downlink.front().is_some_and(|(at, ..)| *at <= now) {
            let Some((_, k, m)) = downlink.pop_front() else { break };
            let phone = &mut phones[k];
            {
                match m {
                    ServerToClient::TranslationResult(r) => {
                        assert!(phone.answered.insert(r.utterance_index), "one outcome per utterance");
                        phone.in_flight.remove(&r.utterance_index);
                        phone.paused_until = None;
                        if phone.grow_after.is_none_or(|at| now >= at) {
                            phone.grow_after = None;
                            phone.window = (phone.window + 1).min(PHONE_WINDOW);
                        }
                        if measured {
                            phone.served += 1;
                        }
                    }
                    ServerToClient::Error(e) if e.code == ErrorCode::RateLimited => {
                        let d = e.details.as_ref().unwrap();
                        let index = d["refused_index"].as_u64().unwrap();
                        let wait = d["retry_after_ms"].as_u64().unwrap();
                        assert!(phone.in_flight.remove(&index), "refused what it sent");
                        assert!(phone.refused_indexes.insert(index));
                        phone.window = phone.in_flight.range(..index).count().max(1);
                        phone.paused_until = Some(now + wait);
                        phone.grow_after = phone.paused_until;
                        // Sent again later, as the SDK does (under a new index
                        // here, so each refusal is counted once).
                        phone.queued += 1;
                        if measured {
                            phone.refused += 1;
                        }
                    }
                    ServerToClient::ServerHeartbeat(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        sim.advance(1);
    }
    let stats = sim.core.stats();
    assert!(stats.shed_window.is_some(), "sustained lag: shedding");
    let capacity = (LOAD_MS / 2) * SERVE_PER_MS as u64;
    let served: u64 = phones.iter().map(|p| p.served).sum();
    let refused: u64 = phones.iter().map(|p| p.refused).sum();
    assert!(served as f64 >= 0.95 * capacity as f64, "served {served} of {capacity} in the second half");
    // Each refusal costs reading the frame: refusals stay a small share of
    // what is served (here about 8 %). Before a session served under an
    // even share kept its guaranteed one, phones that had fallen behind
    // sent a second one at each outcome and were refused each time (18 %).
    // Before the wait counted every session refused, not only those with
    // work in the dispatcher at that instant (under half of them here:
    // the rest have frames on the way), the waits were too short and
    // refusals 12 %, as measured with real sockets.
    assert!((refused as f64) < 0.1 * served as f64, "refused {refused}, served {served}");
    // No slot is held here (`cpu_replacements` is 0): at 200 phones each
    // served under an even share keeps its guaranteed one, so the window
    // (at its floor, 64) is over-full and holds nothing; the held slot is
    // the next test's.
    // Every utterance sent was answered or refused, never both, and the
    // phones' queues hold the rest.
    for p in &phones {
        assert_eq!(p.answered.len() + p.refused_indexes.len() + p.in_flight.len(), p.next_index as usize);
    }
    // Nobody is starved: each gets about an even share (50). Before, the
    // phones whose results came quicker than their sends kept one in
    // flight each at their full rate (100 served) and the rest got 4-20.
    let mean = served as f64 / PHONES as f64;
    for (k, p) in phones.iter().enumerate() {
        assert!(p.served as f64 > 0.5 * mean, "phone {k} served {}, mean {mean:.1}", p.served);
        assert!(p.answered.is_disjoint(&p.refused_indexes), "phone {k}: refused and answered");
    }
}

/// The race a held slot settles: a refused phone's last outcome frees a
/// slot in a full window, and another flood's utterance arrives before the
/// phone's replacement (a round trip away). The slot is the phone's.
#[test]
fn a_slot_freed_by_a_refused_sessions_last_outcome_is_kept_for_its_next_utterance() {
    use tolk_dispatcher::core::Input;
    use tolk_dispatcher::core::admission::CpuShedder;
    let mut sim = cpu_bound_sim();
    let (node, node_id, _) = sim.register_node(&[("en", "es")], true);
    let sessions = open_sessions(&mut sim, 100);
    for (conn, sid) in &sessions {
        sim.utterance(*conn, sid, 0);
    }
    let mut jobs: VecDeque<JobAssign> = sim.jobs(node).into();
    assert_eq!(jobs.len(), 100);
    // 100 in flight and a standing queue: a window of half of them, 64.
    for _ in 0..=CpuShedder::SUSTAINED {
        let now = sim.now;
        sim.core.handle(now, Input::Load { lag_ms: 50.0, least_lag_ms: 50.0 });
        sim.advance(100);
    }
    assert_eq!(sim.core.stats().shed_window, Some(CpuShedder::MIN_WINDOW));
    // Sessions 0, 1 and 2 ask for a second each: over their share, refused.
    let refused = |sim: &mut Sim, conn: u64| {
        sim.take_client(conn).iter().any(|m| matches!(m, ServerToClient::Error(e) if e.code == ErrorCode::RateLimited))
    };
    let (a, b, c) = (sessions[0].clone(), sessions[1].clone(), sessions[2].clone());
    for s in [&a, &b, &c] {
        sim.utterance(s.0, &s.1, 1);
        assert!(refused(&mut sim, s.0));
    }
    // Others' outcomes bring the system down to the window: 100 - 36 = 64 in flight.
    let mine = |j: &JobAssign, s: &(u64, String)| j.session_id == s.1;
    let a_job = jobs.iter().position(|j| mine(j, &a)).map(|i| jobs.remove(i).unwrap()).unwrap();
    let b_job = jobs.iter().position(|j| mine(j, &b)).map(|i| jobs.remove(i).unwrap()).unwrap();
    let c_job = jobs.iter().position(|j| mine(j, &c)).map(|i| jobs.remove(i).unwrap()).unwrap();
    for job in jobs.drain(..36) {
        sim.succeed(node, &node_id, &job);
    }
    // A's last outcome: 63 in flight, the slot held for A.
    sim.succeed(node, &node_id, &a_job);
    assert!(sim.take_client(a.0).iter().any(|m| matches!(m, ServerToClient::TranslationResult(_))));
    // B (a flood with its one still in flight) arrives first: no room.
    sim.advance(1);
    sim.utterance(b.0, &b.1, 1);
    assert!(refused(&mut sim, b.0), "the held slot is not room for another flood");
    // A's replacement takes it.
    sim.advance(1);
    sim.utterance(a.0, &a.1, 1);
    assert!(!refused(&mut sim, a.0), "the replacement is admitted");
    assert!(sim.jobs(node).iter().any(|j| mine(j, &a) && j.utterance_index == 1));
    assert_eq!(sim.core.stats().cpu_replacements, 1);
    // A slot held and never taken lapses, and is room again: B's last
    // outcome holds one; C (a flood too, its one still in flight) finds
    // no room while it is held, and room once it has lapsed.
    sim.succeed(node, &node_id, &b_job);
    sim.advance(1);
    sim.utterance(c.0, &c.1, 1);
    assert!(refused(&mut sim, c.0), "held for B");
    sim.advance(CpuShedder::RESERVE_MS);
    sim.utterance(c.0, &c.1, 1);
    assert!(!refused(&mut sim, c.0), "the lapsed slot was room");
    drop(c_job);
    let now = sim.now;
    sim.core.handle(now, Input::Load { lag_ms: 0.0, least_lag_ms: 0.0 });
    assert_eq!(sim.core.stats().cpu_reservations_lapsed, 1);
}
