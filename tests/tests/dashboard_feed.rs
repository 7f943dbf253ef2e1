//! The dashboard's live feed (`/dashboard/feed`, server-sent events) read
//! by a raw HTTP client, without a browser: it needs the admin token, sends a
//! snapshot at once and then one per interval, follows a node that registers
//! and dies, and refuses more than 16 watchers at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tolk_e2e::node::Engines;
use tolk_e2e::{ADMIN_TOKEN, DispatcherProcess, NodeProcess, NodeSetup, scratch, wire};

/// An open feed: the status line, then its `data:` lines as JSON.
struct Feed {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
    status: u16,
}

async fn open(addr: SocketAddr, token: Option<&str>, query: &str) -> Feed {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET /dashboard/feed{query} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    let status_line =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.expect("a status line in time").unwrap().unwrap();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Feed { lines, status }
}

impl Feed {
    /// The next snapshot (chunk-size lines, headers and keep-alives skipped).
    async fn next(&mut self) -> Value {
        let read = async {
            loop {
                let line = self.lines.next_line().await.unwrap().expect("the feed stays open");
                if let Some(data) = line.strip_prefix("data: ") {
                    return serde_json::from_str::<Value>(data).expect("a snapshot is JSON");
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("a snapshot within 10 s")
    }

    /// Reads snapshots until `pred` holds for one (bounded).
    async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let s = self.next().await;
            if pred(&s) {
                return s;
            }
        }
        panic!("{what}: not in 100 snapshots");
    }
}

fn node_state(s: &Value, id: &str) -> Option<bool> {
    s["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == id).map(|n| n["connected"].as_bool().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_the_fleet_behind_the_admin_token() {
    let dir = scratch("dashboard-feed");
    let dispatcher = DispatcherProcess::start(&dir, "", &[]).await;
    let addr = dispatcher.addr;

    assert_eq!(open(addr, None, "").await.status, 401);
    assert_eq!(open(addr, Some("not-the-token"), "").await.status, 401);

    // 200 ms: the fastest interval a dashboard may ask for (0 is raised to it).
    let mut feed = open(addr, Some(ADMIN_TOKEN), "?interval_ms=0").await;
    assert_eq!(feed.status, 200);
    let first = feed.next().await;
    assert_eq!(first["nodes"], serde_json::json!([]), "{first}");
    assert!(first["histograms"]["tolk_job_seconds"]["buckets"].as_array().is_some_and(|b| !b.is_empty()), "{first}");
    assert!(first["counters"]["tolk_utterances_total"].is_number(), "{first}");
    // No node: no language pair is offered (none is declared either).
    assert_eq!(first["languages"], serde_json::json!([]));

    let mut node = NodeProcess::start(&dir, "node", &dispatcher.ws_base(), &NodeSetup::new(Engines::Quick), false);
    let id = node.registered(1).await;
    let seen = feed.until("the node appears", |s| node_state(s, &id) == Some(true)).await;
    let listed = seen["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == id.as_str()).unwrap().clone();
    assert_eq!(listed["models"].as_array().unwrap().len(), 3, "{listed}");
    // ...and the pair it serves whole is offered to the web client.
    assert!(seen["languages"].as_array().is_some_and(|l| !l.is_empty()), "{seen}");
    node.kill();
    feed.until("the node is shown disconnected", |s| node_state(s, &id) == Some(false)).await;

    // Watchers are bounded: 16 at once (this one included), the 17th is refused.
    let mut others = Vec::new();
    for _ in 0..15 {
        let f = open(addr, Some(ADMIN_TOKEN), "").await;
        assert_eq!(f.status, 200);
        others.push(f);
    }
    assert_eq!(open(addr, Some(ADMIN_TOKEN), "").await.status, 503, "a 17th dashboard is refused");
    // A watcher that leaves frees its place.
    others.pop();
    let again = tolk_e2e::eventually("a place frees up", Duration::from_secs(10), || async {
        let f = open(addr, Some(ADMIN_TOKEN), "").await;
        (f.status == 200).then_some(f)
    })
    .await;
    drop(again);

    // The one-shot snapshot says the same.
    let (status, body) = wire::http(addr, "GET", "/dashboard/snapshot", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let snap: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(node_state(&snap, &id), Some(false), "{snap}");
}
