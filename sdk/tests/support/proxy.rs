//! A TCP proxy between the client and the dispatcher that a test can break:
//! cut every connection (a network drop), refuse new ones (no network), or
//! freeze them (packets vanish, sockets stay open: only heartbeats can tell).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// New connections are accepted and closed at once.
    Refuse,
    /// Bytes are no longer forwarded (either way); sockets stay open.
    Freeze,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped to cut every open connection.
    generation: watch::Sender<u64>,
    pub accepted: Arc<Mutex<u64>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let (generation, gen_rx) = watch::channel(0u64);
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *mode_rx.borrow() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                *count.lock().unwrap() += 1;
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                let (mut gen_rx, mode_rx) = (gen_rx.clone(), mode_rx.clone());
                let born = *gen_rx.borrow_and_update();
                tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pipe(cr, sw, mode_rx.clone());
                    let down = pipe(sr, cw, mode_rx);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = gen_rx.wait_for(|g| *g != born) => {}
                    }
                });
            }
        });
        Self { addr, mode, generation, accepted }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every open connection (both sides see a reset/EOF).
    pub fn cut_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn connections(&self) -> u64 {
        *self.accepted.lock().unwrap()
    }
}

async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if *mode.borrow_and_update() == Mode::Freeze {
            // Hold the sockets open, forward nothing, until unfrozen.
            if mode.wait_for(|m| *m != Mode::Freeze).await.is_err() {
                return;
            }
            // Frozen connections stay dead: what was lost is lost.
            std::future::pending::<()>().await;
        }
        tokio::select! {
            n = from.read(&mut buf) => {
                let Ok(n) = n else { return };
                if n == 0 || *mode.borrow() == Mode::Freeze {
                    if n == 0 { return; }
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ = mode.changed() => {}
        }
    }
}
