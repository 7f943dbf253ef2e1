//! The browser: a web session client at `/app/` and an operations dashboard
//! at `/dashboard`, served from files embedded in the binary (nothing is
//! loaded from elsewhere: the pages work offline against the dispatcher
//! alone).
//!
//! - `/app/` — the session client (`dispatcher/web/static/app.*`). Its logic
//!   is the Rust SDK's chunker and session state machine compiled to wasm
//!   (`dispatcher/web/client-wasm`, built into `tolk_client.wasm`); the page
//!   is only the shell (microphone, WebSocket, timers, speaker).
//! - `/app/languages` — public: the language pairs the fleet can serve, for
//!   the page's pickers.
//! - `/dashboard` — the dashboard page (static, holds no data);
//!   `/dashboard/snapshot` (one JSON snapshot) and `/dashboard/feed`
//!   (server-sent events, one snapshot per interval) require the admin token
//!   as `Authorization: Bearer` and are 404 when no admin token is set, like
//!   `/admin/*`.
//!
//! This module is a child of `shell` (declared there with `#[path]`) so it
//! can read the shell's state without the shell exporting it. It reads; it
//! never changes the core. Everything the dashboard shows is gathered by
//! [`snapshot`], the one function to adapt when the core's statistics change.
//!
//! # Layout
//! - [`metrics_text`]: a parser for the Prometheus text `/metrics` renders.
//! - this file: routes, static files, [`snapshot`], the feed.

mod metrics_text;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::Dispatcher;
use crate::core::{NodeView, SessionView};
use crate::plugins::{PluginHost, PluginView};
use metrics_text::{Histogram, Sample};

/// Dashboards watching at once; more get 503 (each feed costs a snapshot per
/// interval, taken under the core's lock).
const MAX_FEEDS: usize = 16;
/// Bounds of the feed interval a dashboard may ask for.
const FEED_MIN_MS: u64 = 200;
const FEED_MAX_MS: u64 = 10_000;
const FEED_DEFAULT_MS: u64 = 1_000;
/// At most this many sessions are listed in a snapshot (the count is exact).
const MAX_LISTED_SESSIONS: usize = 200;

/// The environment variable that declares the language pairs the fleet
/// serves, `en-es,es-en`: see [`snapshot`] for why it exists.
pub const LANGUAGES_ENV: &str = "TOLK_WEB_LANGUAGES";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file the pages load, embedded at compile time.
const ASSETS: &[Asset] = &[
    Asset { path: "app.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../../web/static/app.html") },
    Asset { path: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../web/static/app.js") },
    Asset { path: "capture.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../web/static/capture.js") },
    Asset { path: "tolk_client.wasm", content_type: "application/wasm", body: include_bytes!("../../web/static/tolk_client.wasm") },
    Asset { path: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../../web/static/style.css") },
    Asset { path: "dashboard.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../../web/static/dashboard.html") },
    Asset { path: "dashboard.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../web/static/dashboard.js") },
];

/// What the browser may do with our pages: load only from this origin
/// (WebSocket included), compile our wasm, nothing inline.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; \
                   media-src 'self' blob:; img-src 'self' data:; style-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// The web routes' state: the dispatcher and the feed limit.
#[derive(Clone)]
struct Web {
    d: Dispatcher,
    feeds: Arc<Semaphore>,
    /// Declared language pairs (see [`LANGUAGES_ENV`]), read once at start.
    declared: Arc<Vec<LanguagePair>>,
}

/// The web routes, to merge into the shell's router.
pub(crate) fn router(d: Dispatcher) -> Router {
    let declared = std::env::var(LANGUAGES_ENV).map(|v| parse_pairs(&v)).unwrap_or_default();
    let web = Web { d, feeds: Arc::new(Semaphore::new(MAX_FEEDS)), declared: Arc::new(declared) };
    Router::new()
        .route("/app", get(|| async { Redirect::permanent("/app/") }))
        .route("/app/", get(|| async { asset("app.html") }))
        .route("/app/languages", get(languages))
        .route("/app/{file}", get(|axum::extract::Path(file): axum::extract::Path<String>| async move { asset(&file) }))
        .route("/dashboard", get(|| async { asset("dashboard.html") }))
        .route("/dashboard/", get(|| async { Redirect::permanent("/dashboard") }))
        .route("/dashboard/snapshot", get(dashboard_snapshot))
        .route("/dashboard/feed", get(dashboard_feed))
        // Browsers ask for it on every page; nothing to show, nothing to log.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(web)
}

fn asset(name: &str) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.path == name) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Files change with the binary: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (StatusCode::OK, headers, a.body).into_response()
}

// --------------------------------------------------------------- languages

/// A translation direction the fleet offers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LanguagePair {
    pub src_lang: String,
    pub tgt_lang: String,
}

/// `en-es, es-en` → pairs. Tags are BCP 47, so the pair separator is `>`
/// when a tag has a subtag (`en-US>es`); entries that do not parse are
/// skipped. At most 100 pairs, tags of at most 35 characters.
fn parse_pairs(text: &str) -> Vec<LanguagePair> {
    let ok = |t: &str| !t.is_empty() && t.len() <= 35 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let mut pairs: Vec<LanguagePair> = text
        .split(',')
        .filter_map(|entry| {
            let entry = entry.trim();
            let (src, tgt) = entry.split_once('>').or_else(|| entry.split_once('-'))?;
            let (src, tgt) = (src.trim(), tgt.trim());
            (ok(src) && ok(tgt)).then(|| LanguagePair { src_lang: src.to_owned(), tgt_lang: tgt.to_owned() })
        })
        .take(100)
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

#[derive(Debug, Serialize)]
struct Languages {
    /// Pairs a connected node can serve now.
    pairs: Vec<LanguagePair>,
    /// Where the list comes from (see [`snapshot`]).
    source: &'static str,
}

async fn languages(State(w): State<Web>) -> Response {
    let s = snapshot(&w.d, &w.declared);
    let mut r = axum::Json(Languages { pairs: s.languages, source: s.languages_source }).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

// ---------------------------------------------------------------- snapshot

/// Everything the dashboard shows at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardSnapshot {
    /// Wall clock of the dispatcher, ms since the Unix epoch.
    pub time_ms: u64,
    pub nodes: Vec<NodeView>,
    /// Sessions open (connected or awaiting resume); `sessions` lists at most
    /// the first 200 of them.
    pub session_count: usize,
    pub sessions: Vec<SessionView>,
    /// Jobs waiting for a node with free capacity.
    pub queue_depth: usize,
    pub running_jobs: usize,
    /// Cumulative outcomes by `result` or error code (the page derives the
    /// rate per second from successive snapshots).
    pub outcomes: BTreeMap<String, f64>,
    /// Every other `tolk_*` counter and gauge, by its `/metrics` name
    /// (labels included).
    pub counters: BTreeMap<String, f64>,
    /// Every histogram `/metrics` has, by name (seconds).
    pub histograms: BTreeMap<String, Histogram>,
    /// The scheduler setting (`[plugins] scheduler` / `TOLK_SCHEDULER`);
    /// `None`: the newest plugin, or the built-in least-loaded policy.
    pub scheduler_setting: Option<String>,
    /// Loaded plugins; the scheduler in effect has `active`.
    pub plugins: Vec<PluginView>,
    /// Language pairs for `/app/`.
    pub languages: Vec<LanguagePair>,
    pub languages_source: &'static str,
    /// What the dashboard would show but the dispatcher does not expose yet.
    pub missing: Vec<&'static str>,
}

/// Gathers everything the dashboard shows, from what the dispatcher exposes
/// today:
///
/// - the admin listings of the core (`list_nodes`, `list_sessions`),
///   `sizes().queue` and `running_jobs()`, under the core's lock;
/// - the metrics registry, read as the Prometheus text `/metrics` serves
///   (so this reads exactly the public metric names, whatever struct holds
///   them);
/// - the plugin host's list and the configured scheduler.
///
/// **Merge note.** This is the one function to adapt when the core's
/// counters leave it as a stats struct: `outcomes`, `counters` and
/// `histograms` would come from that struct instead of the registry text,
/// and the `missing` entries it can fill (real-time factor per node, recent
/// not-dispatched reasons, per-model languages) would be filled here.
///
/// **Languages.** The core knows each node's models with their kinds and
/// languages, but its listing exposes only model ids, and this module does
/// not touch the core. So the pairs come from the operator's declaration
/// ([`LANGUAGES_ENV`]), offered only while at least one node is connected
/// and has models; when the core exposes per-model languages, compute the
/// pairs here as "a connected, non-draining node has asr(src), nmt(src→tgt),
/// tts(tgt)".
pub(crate) fn snapshot(d: &Dispatcher, declared: &[LanguagePair]) -> DashboardSnapshot {
    let (nodes, mut sessions, queue_depth, running_jobs, served) = {
        let state = d.lock();
        let core = &state.core;
        // The core's counters reach the registry through this snapshot.
        d.store_stats(core.stats());
        (core.list_nodes(), core.list_sessions(), core.sizes().queue, core.running_jobs(), core.served_pairs())
    };
    let mut text = String::new();
    // Encoding into a String cannot fail; an empty text just shows no metrics.
    let _ = prometheus_client::encoding::text::encode(&mut text, &d.shared.registry);
    let samples = metrics_text::parse(&text);
    let (outcomes, counters, histograms) = split_metrics(&samples);

    let serving = nodes.iter().any(|n| n.connected && !n.draining && !n.models.is_empty());
    // What the fleet serves, unless the operator declared the list.
    let from_fleet = declared.is_empty();
    let languages = if !from_fleet {
        if serving { declared.to_vec() } else { Vec::new() }
    } else {
        served.into_iter().map(|(src_lang, tgt_lang)| LanguagePair { src_lang, tgt_lang }).collect()
    };
    let session_count = sessions.len();
    sessions.truncate(MAX_LISTED_SESSIONS);
    DashboardSnapshot {
        time_ms: d.shared.clock.now(),
        nodes,
        session_count,
        sessions,
        queue_depth,
        running_jobs,
        outcomes,
        counters,
        histograms,
        scheduler_setting: d.shared.config.plugins.scheduler.clone(),
        plugins: d.shared.plugins.as_ref().map(PluginHost::list).unwrap_or_default(),
        languages,
        languages_source: if from_fleet {
            "what the connected nodes serve (ASR + translation + TTS on one node)"
        } else {
            "declared by the operator (TOLK_WEB_LANGUAGES), offered while a node with models is connected"
        },
        missing: vec![
            "per-stage latency (nodes report one processing_time_ms per job; the histograms are per job and per utterance)",
            "recent not-dispatched reasons one by one (counted: tolk_unavailable_total by main reason, tolk_refusals_total by code)",
        ],
    }
}

type Split = (BTreeMap<String, f64>, BTreeMap<String, f64>, BTreeMap<String, Histogram>);

/// Sorts the samples of `/metrics` into outcomes, plain values and histograms.
fn split_metrics(samples: &[Sample]) -> Split {
    let mut outcomes = BTreeMap::new();
    let mut counters = BTreeMap::new();
    for s in samples {
        if s.name == "tolk_outcomes_total" {
            if let Some(o) = s.label("outcome") {
                outcomes.insert(o.to_owned(), s.value);
            }
        } else if !s.is_histogram_part() {
            counters.insert(s.key(), s.value);
        }
    }
    (outcomes, counters, metrics_text::histograms(samples))
}

// -------------------------------------------------------------- dashboard

async fn dashboard_snapshot(State(w): State<Web>, headers: HeaderMap) -> Response {
    if let Err(status) = w.d.authorized(&headers) {
        return status.into_response();
    }
    let mut r = axum::Json(snapshot(&w.d, &w.declared)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, serde::Deserialize)]
struct FeedQuery {
    interval_ms: Option<u64>,
}

/// Server-sent events: a `snapshot` event at once, then one per interval,
/// until the client goes away (the stream is dropped with its permit).
async fn dashboard_feed(State(w): State<Web>, headers: HeaderMap, Query(query): Query<FeedQuery>) -> Response {
    if let Err(status) = w.d.authorized(&headers) {
        return status.into_response();
    }
    let Ok(permit) = w.feeds.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many dashboards").into_response();
    };
    let every = query.interval_ms.unwrap_or(FEED_DEFAULT_MS).clamp(FEED_MIN_MS, FEED_MAX_MS);
    let mut ticker = tokio::time::interval(Duration::from_millis(every));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stream = futures_util::stream::unfold((w, ticker, permit), |(w, mut ticker, permit)| async move {
        ticker.tick().await;
        let json = serde_json::to_string(&snapshot(&w.d, &w.declared)).unwrap_or_else(|_| "{}".into());
        let event = Event::default().event("snapshot").data(json);
        Some((Ok::<_, Infallible>(event), (w, ticker, permit)))
    });
    let mut r = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse_pairs(text).into_iter().map(|p| (p.src_lang, p.tgt_lang)).collect()
    }

    #[test]
    fn declared_pairs_parse_and_bad_entries_are_skipped() {
        let p = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(pairs("en-es, es-en"), vec![p("en", "es"), p("es", "en")]);
        assert_eq!(pairs("en-US>es,zh>en"), vec![p("en-US", "es"), p("zh", "en")]);
        assert_eq!(pairs(""), vec![]);
        assert_eq!(pairs("en, -es, en-<b>, en-es, en-es"), vec![p("en", "es")]);
        assert_eq!(parse_pairs(&"en-es,".repeat(1000)).len(), 1);
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_unknown_names_are_404() {
        for a in ASSETS {
            let r = asset(a.path);
            assert_eq!(r.status(), StatusCode::OK, "{}", a.path);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        for bad in ["", "../Cargo.toml", "app.html/", "APP.HTML", "x.wasm"] {
            assert_eq!(asset(bad).status(), StatusCode::NOT_FOUND, "{bad}");
        }
    }

    #[test]
    fn the_wasm_client_is_a_module_with_no_imports() {
        let wasm = ASSETS.iter().find(|a| a.path == "tolk_client.wasm").map(|a| a.body).unwrap_or_default();
        assert_eq!(wasm.get(..4), Some(&b"\0asm"[..]), "tolk_client.wasm is a wasm module");
    }
}
