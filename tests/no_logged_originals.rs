//! Originals never reach `tracing`: a subscriber that records every event and span at every
//! level watches a compression, retrievals of every kind and the store's failures. In a test
//! binary of its own: a subscriber set for one thread misses events while other tests register
//! the same callsites concurrently.

mod common;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_ccr::store::{Entry, Lookup, Retention, StoreFuture, StoreUsage};
use tower_ccr::{CcrLayer, EntryId, MemoryStore, Store};

/// A log whose every line names `tag`.
fn tagged_log(tag: &str, lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "2026-11-23T10:00:{:02}Z INFO {tag} GET /api/items/{i} by worker-{}\n",
                i % 60,
                i % 4
            )
        })
        .collect()
}

/// Every event and span, at every level, as text: message, fields, target.
#[derive(Clone, Default)]
struct Capture {
    lines: Arc<Mutex<Vec<String>>>,
    next_span: Arc<AtomicU64>,
}

struct FieldsText<'a>(&'a mut String);

impl tracing::field::Visit for FieldsText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl Capture {
    fn push(&self, head: String, record: impl FnOnce(&mut FieldsText<'_>)) {
        let mut line = head;
        record(&mut FieldsText(&mut line));
        self.lines.lock().unwrap().push(line);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let meta = span.metadata();
        self.push(format!("span {} {}", meta.target(), meta.name()), |v| {
            span.record(v)
        });
        tracing::span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.push("record".to_owned(), |v| values.record(v));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        self.push(format!("{} {}", meta.level(), meta.target()), |v| {
            event.record(v)
        });
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// A memory store whose writes or reads can be made to fail.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    fail_puts: AtomicBool,
    fail_gets: AtomicBool,
}

impl Store for FlakyStore {
    fn put(&self, id: EntryId, entry: Entry, retention: Retention) -> StoreFuture<'_, bool> {
        if self.fail_puts.load(Ordering::Relaxed) {
            return Box::pin(async { Err("disk full".into()) });
        }
        self.inner.put(id, entry, retention)
    }

    fn get(&self, id: EntryId, retention: Retention) -> StoreFuture<'_, Lookup> {
        if self.fail_gets.load(Ordering::Relaxed) {
            return Box::pin(async { Err("connection refused".into()) });
        }
        self.inner.get(id, retention)
    }

    fn usage(&self) -> StoreFuture<'_, StoreUsage> {
        self.inner.usage()
    }
}

#[tokio::test]
async fn no_original_reaches_tracing_at_any_level() {
    const NEEDLE: &str = "secret-7f3a9c";
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let secret_log = |tag: &str| tagged_log(&format!("{NEEDLE}-{tag} card=4242"), 1_500);
    let store = Arc::new(FlakyStore::default());
    let layer = CcrLayer::new()
        .store(store.clone())
        .round_budget(Duration::from_secs(30));

    // Compress, then retrieve whole, by query (the query holds the needle too) and a forged id.
    let (upstream_1, log_1) = upstream(|round, request| match round {
        0 => {
            let hash = marker_hash(request.text()).unwrap();
            tool_calls(&[
                ("full", "ccr_retrieve", json!({"hash": hash})),
                (
                    "query",
                    "ccr_retrieve",
                    json!({"hash": hash, "query": format!("{NEEDLE} card")}),
                ),
                (
                    "range",
                    "ccr_retrieve",
                    json!({"hash": hash, "query": "lines 2-3"}),
                ),
                (
                    "forged",
                    "ccr_retrieve",
                    json!({"hash": "ffffffffffffffffffffffff"}),
                ),
                ("invalid", "ccr_retrieve", json!({"hash": NEEDLE})),
            ])
        }
        _ => answer("ok", 1),
    });
    layer
        .layer(upstream_1)
        .oneshot(post(
            CHAT_URL,
            chat_body(conversation(&secret_log("a")), json!({})),
        ))
        .await
        .unwrap();
    let first_hash = marker_hash(log_1.lock().unwrap()[0].text()).unwrap();
    assert_eq!(log_1.lock().unwrap().len(), 2);

    // The store refuses a write: the output goes out whole, with a warning.
    store.fail_puts.store(true, Ordering::Relaxed);
    let (upstream_2, _) = upstream(|_, _| answer("ok", 1));
    layer
        .layer(upstream_2)
        .oneshot(post(
            CHAT_URL,
            chat_body(conversation(&secret_log("b")), json!({})),
        ))
        .await
        .unwrap();
    store.fail_puts.store(false, Ordering::Relaxed);

    // The store fails a read: an earlier id the conversation quotes cannot be answered.
    let hash = first_hash.clone();
    let (upstream_3, log_3) = upstream(move |round, _| match round {
        0 => tool_calls(&[("old", "ccr_retrieve", json!({"hash": hash.clone()}))]),
        _ => answer("ok", 1),
    });
    let mut messages = conversation(&secret_log("c"));
    messages[1]["content"] = json!(format!("Earlier: hash={first_hash}"));
    store.fail_gets.store(true, Ordering::Relaxed);
    layer
        .layer(upstream_3)
        .oneshot(post(CHAT_URL, chat_body(messages, json!({}))))
        .await
        .unwrap();
    store.fail_gets.store(false, Ordering::Relaxed);
    let unavailable = &retrieval_answers(&log_3.lock().unwrap()[1].json(), "old")[0];
    assert!(unavailable.contains("unavailable"), "{unavailable}");

    let lines = capture.lines.lock().unwrap().clone();
    let all = lines.join("\n");
    for expected in [
        "tool output compressed",
        "retrieval of a full original",
        "retrieval by query",
        "retrieval of a range",
        "retrieval of an id foreign to the conversation",
        "store failed; output left as is",
        "store unavailable for a retrieval",
        "continuation",
    ] {
        assert!(all.contains(expected), "no {expected:?} in:\n{all}");
    }
    for line in &lines {
        assert!(
            !line.contains(NEEDLE),
            "an original reached tracing: {line}"
        );
        assert!(
            !line.contains("card=4242"),
            "an original reached tracing: {line}"
        );
    }
}
