//! A test bed for the binding tests (`bindings/test-bindings.sh`): a real
//! dispatcher on 127.0.0.1 (a free port) plus the test suite's fake node
//! (`tests/support/fake_node.rs`, serving en → de: it answers each job with
//! the length of the audio it got). Prints one line,
//! `TOLK_URL=ws://127.0.0.1:PORT/ws/session`, then serves until killed, or
//! stops by itself after `--lifetime SECONDS` (default 600).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: fail loudly

#[path = "../tests/support/fake_node.rs"]
mod fake_node;

use std::io::Write as _;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut lifetime = 600;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--lifetime", Some(s)) => lifetime = s,
            _ => {
                eprintln!("usage: testbed [--lifetime SECONDS]");
                std::process::exit(2);
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        tokio::spawn(tolk_dispatcher::shell::Dispatcher::new(tolk_dispatcher::Config::default()).expect("the default configuration").run(
            listener,
            async move {
                tokio::time::sleep(Duration::from_secs(lifetime)).await;
            },
        ));
    let node = fake_node::start(&format!("ws://{addr}"), fake_node::Behaviour { delay_ms: 20, stagger_ms: 30 }).await;
    println!("TOLK_URL=ws://{addr}/ws/session");
    std::io::stdout().flush().unwrap();
    eprintln!("testbed: dispatcher on {addr}, fake node {} (en → de); stops after {lifetime} s", node.node_id);
    let _ = server.await;
}
