//! `RedisStore` against a real Redis server: the machine's on 127.0.0.1:6379 (`.ci/run` starts
//! one when it is absent), each test under its own key prefix, deleted when the test ends; and
//! servers the tests start and stop themselves on other ports, to take Redis away mid-test.
#![cfg(feature = "redis")]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::store::{Entry, Lookup, RedisStore, Retention, Store, StoreUsage};
use tower_ccr::{CcrLayer, EntryId, TenantId};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const RESPONSES_URL: &str = "https://api.example.com/v1/responses";
/// Generous: a deadline for what Redis does in a few seconds, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// A key prefix of its own for one test; its keys are deleted when the test ends, pass or fail.
struct Namespace {
    prefix: String,
}

impl Namespace {
    fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self {
            prefix: format!("ccr-test:{test}:{}-{nanos}:", std::process::id()),
        }
    }

    async fn store(&self) -> RedisStore {
        RedisStore::builder(REDIS_URL)
            .prefix(&self.prefix)
            .build()
            .await
            .expect("a Redis server on 127.0.0.1:6379 (.ci/run starts one)")
    }

    /// Every key under the prefix.
    fn keys(&self) -> Vec<String> {
        let mut connection = redis::Client::open(REDIS_URL)
            .and_then(|client| client.get_connection())
            .expect("Redis on 127.0.0.1:6379");
        redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let Ok(mut connection) =
            redis::Client::open(REDIS_URL).and_then(|client| client.get_connection())
        else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut connection)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

/// A connection to inspect what the store wrote.
async fn inspect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A Redis server of this test's own on a free port: stopped when the test ends. The machine's
/// server on 6379 is never stopped.
struct PrivateRedis {
    port: u16,
}

impl PrivateRedis {
    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn start() -> Self {
        let redis = Self {
            port: Self::free_port(),
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (empty: nothing is saved) and waits until it answers.
    async fn restart(&self) {
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .args(["--dir", "/tmp", "--logfile", ""])
            .args([
                "--pidfile",
                &format!("/tmp/ccr-test-redis-{}.pid", self.port),
            ])
            .status()
            .expect("redis-server installed (.ci/run installs it)");
        assert!(status.success());
        let started = Instant::now();
        loop {
            let client = redis::Client::open(self.url()).unwrap();
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&self) {
        shutdown(self.port);
    }

    fn net_input_bytes(&self) -> u64 {
        let mut connection = redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut connection)
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("total_net_input_bytes:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }
}

/// Stops the server on `port` at once, without saving.
fn shutdown(port: u16) {
    if let Ok(mut connection) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|client| client.get_connection())
    {
        // The server closes the connection instead of answering.
        let _: Result<(), _> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut connection);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay to the machine's Redis that can be cut like a network partition: connections
/// stay open, bytes stop flowing. Once healed, new connections go through; the ones open
/// during the cut stay dead, as they would behind a partition.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Relay {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Self {
            port: listener.local_addr().unwrap().port(),
            cut: Arc::default(),
            generation: Arc::default(),
        };
        let (cut, generation) = (relay.cut.clone(), relay.generation.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect("127.0.0.1:6379") else {
                    return;
                };
                let born = generation.load(Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (cut, generation) = (cut.clone(), generation.clone());
                    std::thread::spawn(move || Self::pump(from, to, &cut, &generation, born));
                }
            }
        });
        relay
    }

    fn pump(
        mut from: std::net::TcpStream,
        mut to: std::net::TcpStream,
        cut: &AtomicBool,
        generation: &AtomicU64,
        born: u64,
    ) {
        use std::io::{Read, Write};
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 {
                break;
            }
            let alive = !cut.load(Ordering::SeqCst) && generation.load(Ordering::SeqCst) == born;
            if alive && to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn id(n: u64) -> EntryId {
    EntryId::parse(&format!("{n:024x}")).unwrap()
}

fn tenant(c: char) -> TenantId {
    TenantId::parse(&c.to_string().repeat(32)).unwrap()
}

fn entry(tenant_char: char, original: &str) -> Entry {
    Entry {
        tenant: tenant(tenant_char),
        original: Arc::from(original),
    }
}

fn retention(idle_ms: u64, max_age_ms: u64) -> Retention {
    Retention {
        idle: Duration::from_millis(idle_ms),
        max_age: Duration::from_millis(max_age_ms),
    }
}

const HOUR: u64 = 3_600_000;

async fn pttl(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(connection)
        .await
        .unwrap()
}

async fn hget(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
    field: &str,
) -> String {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn put_get_expired_and_missing() {
    let ns = Namespace::new("semantics");
    let store = ns.store().await;
    let long = retention(HOUR, HOUR);
    let stored = entry('a', "the original, with unicode: café ✓");
    assert!(store.put(id(1), stored.clone(), long).await.unwrap());
    assert_eq!(store.get(id(1), long).await.unwrap(), Lookup::Found(stored));
    assert_eq!(store.get(id(2), long).await.unwrap(), Lookup::Missing);

    // Idle longer than a zero retention allows: expired, and it stays expired (not unknown).
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        store.get(id(1), retention(0, 0)).await.unwrap(),
        Lookup::Expired
    );
    assert_eq!(store.get(id(1), long).await.unwrap(), Lookup::Expired);
    assert!(
        !ns.keys()
            .iter()
            .any(|key| key.ends_with(&format!("o:{}", id(1)))),
        "the original is deleted: {:?}",
        ns.keys()
    );

    // A retention that leaves no time at all never makes an entry resident.
    assert!(
        !store
            .put(id(3), entry('a', "x"), retention(0, HOUR))
            .await
            .unwrap()
    );
    assert_eq!(store.get(id(3), long).await.unwrap(), Lookup::Missing);
}

#[tokio::test]
async fn an_entry_expires_when_nobody_reads_it() {
    let ns = Namespace::new("idle");
    let store = ns.store().await;
    let short = retention(300, HOUR);
    assert!(
        store
            .put(id(1), entry('a', "soon gone"), short)
            .await
            .unwrap()
    );
    let started = Instant::now();
    loop {
        // Wait without touching it (a read would refresh it).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let gone = !ns.keys().iter().any(|key| key.contains(":o:"));
        if gone {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "never expired");
    }
    assert_eq!(store.get(id(1), short).await.unwrap(), Lookup::Expired);
}

#[tokio::test]
async fn reads_and_writes_refresh_the_idle_timer() {
    let ns = Namespace::new("refresh");
    let store = ns.store().await;
    let mut redis = inspect(REDIS_URL).await;
    let key = format!("{}o:{}", ns.prefix, id(1));
    let idle = retention(5_000, HOUR);
    assert!(
        store
            .put(id(1), entry('a', "kept while read"), idle)
            .await
            .unwrap()
    );
    let after_put = pttl(&mut redis, &key).await;
    assert!(after_put > 0 && after_put <= 5_000, "{after_put}");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before_read = pttl(&mut redis, &key).await;
    assert!(before_read <= 5_000 - 1_000, "{before_read}");
    assert!(matches!(
        store.get(id(1), idle).await.unwrap(),
        Lookup::Found(_)
    ));
    let after_read = pttl(&mut redis, &key).await;
    assert!(after_read > before_read, "{before_read} then {after_read}");

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before_write = pttl(&mut redis, &key).await;
    assert!(
        store
            .put(id(1), entry('a', "kept while read"), idle)
            .await
            .unwrap()
    );
    let after_write = pttl(&mut redis, &key).await;
    assert!(
        after_write > before_write,
        "{before_write} then {after_write}"
    );
}

#[tokio::test]
async fn the_maximum_age_caps_an_entry_read_all_the_time() {
    let ns = Namespace::new("max-age");
    let store = ns.store().await;
    let mut redis = inspect(REDIS_URL).await;
    let key = format!("{}o:{}", ns.prefix, id(1));
    // Idle an hour, maximum age one second: reads never take it past the second.
    let capped = retention(HOUR, 1_000);
    assert!(
        store
            .put(id(1), entry('a', "capped"), capped)
            .await
            .unwrap()
    );
    let ttl = pttl(&mut redis, &key).await;
    assert!(ttl > 0 && ttl <= 1_000, "{ttl}");
    let started = Instant::now();
    let mut found = 0;
    loop {
        match store.get(id(1), capped).await.unwrap() {
            Lookup::Found(_) => {
                found += 1;
                let ttl = pttl(&mut redis, &key).await;
                assert!(ttl <= 1_000, "{ttl}");
            }
            Lookup::Expired => break,
            Lookup::Missing => panic!("an issued id reads as unknown"),
        }
        assert!(
            started.elapsed() < DEADLINE,
            "reads kept it past its maximum age"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found > 0);
    // Written again after its time is up, it starts a new life.
    assert!(
        store
            .put(id(1), entry('a', "capped"), capped)
            .await
            .unwrap()
    );
    assert!(matches!(
        store.get(id(1), capped).await.unwrap(),
        Lookup::Found(_)
    ));
}

#[tokio::test]
async fn an_original_is_stored_once_and_a_new_content_replaces_it() {
    let ns = Namespace::new("once");
    let store = ns.store().await;
    let mut redis = inspect(REDIS_URL).await;
    let key = format!("{}o:{}", ns.prefix, id(1));
    let long = retention(HOUR, HOUR);
    let original = "x".repeat(10_000);
    assert!(store.put(id(1), entry('a', &original), long).await.unwrap());
    let created = hget(&mut redis, &key, "c").await;
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.entries, 1);
    assert!(usage.bytes > 10_000, "{usage:?}");

    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.put(id(1), entry('a', &original), long).await.unwrap());
    let again = hget(&mut redis, &key, "c").await;
    assert_eq!(created, again, "refreshed, not rewritten");
    assert_eq!(store.usage().await.unwrap(), usage);

    // The same id with another content (records the layer keeps per turn): replaced.
    let replaced = entry('a', "short");
    assert!(store.put(id(1), replaced.clone(), long).await.unwrap());
    assert_eq!(
        store.get(id(1), long).await.unwrap(),
        Lookup::Found(replaced)
    );
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.entries, 1);
    assert!(usage.bytes < 10_000, "{usage:?}");
}

#[tokio::test]
async fn usage_counts_live_entries_and_their_bytes() {
    let ns = Namespace::new("usage");
    let store = ns.store().await;
    assert_eq!(store.usage().await.unwrap(), StoreUsage::default());
    let long = retention(HOUR, HOUR);
    for n in 1..=3 {
        let original = "y".repeat(1_000 * n as usize);
        assert!(store.put(id(n), entry('a', &original), long).await.unwrap());
    }
    let usage = store.usage().await.unwrap();
    assert_eq!(usage.entries, 3);
    assert!(
        usage.bytes >= 6_000 && usage.bytes < 6_000 + 3 * 1_024,
        "{usage:?}"
    );

    // One expires (read with a zero retention), one runs out unread.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        store.get(id(1), retention(0, 0)).await.unwrap(),
        Lookup::Expired
    );
    assert!(
        store
            .put(id(4), entry('a', "brief"), retention(1_000, HOUR))
            .await
            .unwrap()
    );
    assert_eq!(store.usage().await.unwrap().entries, 3);
    let started = Instant::now();
    while store.usage().await.unwrap().entries != 2 {
        assert!(started.elapsed() < DEADLINE, "{:?}", store.usage().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let usage = store.usage().await.unwrap();
    assert!(
        usage.bytes >= 5_000 && usage.bytes < 5_000 + 2 * 1_024,
        "{usage:?}"
    );
}

#[tokio::test]
async fn bytes_leave_the_count_with_their_entry_even_when_the_issued_mark_expired_with_it() {
    let ns = Namespace::new("weights");
    // The issued mark lives as long as the maximum age: both keys expire together.
    let store = RedisStore::builder(REDIS_URL)
        .prefix(&ns.prefix)
        .remember_issued(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let long = retention(HOUR, HOUR);
    assert!(
        store
            .put(id(2), entry('a', &"z".repeat(2_000)), long)
            .await
            .unwrap()
    );
    let kept = store.usage().await.unwrap();
    assert!(
        store
            .put(id(1), entry('a', &"y".repeat(5_000)), retention(HOUR, 300))
            .await
            .unwrap()
    );
    assert!(store.usage().await.unwrap().bytes > kept.bytes + 5_000);
    let started = Instant::now();
    while store.usage().await.unwrap().entries != 1 {
        assert!(started.elapsed() < DEADLINE, "{:?}", store.usage().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.usage().await.unwrap(), kept);
}

#[tokio::test]
async fn entries_keep_their_tenant_and_keys_their_prefix() {
    let ns = Namespace::new("tenant");
    let store = ns.store().await;
    let long = retention(HOUR, HOUR);
    assert!(store.put(id(1), entry('a', "same"), long).await.unwrap());
    assert!(store.put(id(2), entry('b', "same"), long).await.unwrap());
    let Lookup::Found(first) = store.get(id(1), long).await.unwrap() else {
        panic!("stored")
    };
    let Lookup::Found(second) = store.get(id(2), long).await.unwrap() else {
        panic!("stored")
    };
    assert_eq!(first.tenant, tenant('a'));
    assert_eq!(second.tenant, tenant('b'));
    // A store under another prefix does not see them.
    let other = Namespace::new("tenant-other").store().await;
    assert_eq!(other.get(id(1), long).await.unwrap(), Lookup::Missing);
    assert!(!ns.keys().is_empty());
}

// ---- through the layer ----

fn responses_body(input: Value, extra: Value) -> String {
    let mut body = json!({"model": "gpt-5", "input": input});
    if let Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    body.to_string()
}

fn items(output: &str) -> Value {
    json!([
        {"role": "user", "content": [{"type": "input_text", "text": "Why did the payment fail?"}]},
        {"type": "function_call", "id": "fc_0", "call_id": "call_bash", "name": "bash",
            "arguments": "{\"cmd\":\"cat /var/log/app.log\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_bash", "output": output}
    ])
}

fn bash_tool() -> Value {
    json!([{"type": "function", "name": "bash", "description": "Run a command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
        "strict": true}])
}

fn answer_response(id: &str, text: &str, request: &Recorded) -> http::Response<Full<bytes::Bytes>> {
    let body = json!({
        "id": id, "object": "response", "created_at": 1, "status": "completed",
        "error": null, "incomplete_details": null, "model": "gpt-5",
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "parallel_tool_calls": true, "tool_choice": "auto",
        "tools": request.json().get("tools").cloned().unwrap_or(json!([])),
        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 17}
    });
    json_response(StatusCode::OK, body.to_string())
}

fn retrieval_call(id: &str, hash: &str, request: &Recorded) -> http::Response<Full<bytes::Bytes>> {
    let body = json!({
        "id": id, "object": "response", "created_at": 1, "status": "completed",
        "error": null, "incomplete_details": null, "model": "gpt-5",
        "output": [{"type": "function_call", "id": format!("fc_{id}"), "call_id": "call_old",
            "name": "ccr_retrieve", "arguments": json!({"hash": hash}).to_string(),
            "status": "completed"}],
        "parallel_tool_calls": true, "tool_choice": "auto",
        "tools": request.json().get("tools").cloned().unwrap_or(json!([])),
        "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 110}
    });
    json_response(StatusCode::OK, body.to_string())
}

/// What the layer answered the model's retrieval call `call_old` with.
fn retrieval_answer(continuation: &Value) -> String {
    continuation["input"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "function_call_output" && item["call_id"] == "call_old")
        .and_then(|item| item["output"].as_str())
        .expect("the retrieval call answered")
        .to_owned()
}

fn post_as(body: String, credential: &str) -> http::Request<Full<bytes::Bytes>> {
    let mut request = post(RESPONSES_URL, body);
    request
        .headers_mut()
        .insert("authorization", credential.parse().unwrap());
    request
}

/// Sends a stored Responses request with a large output through `layer`; returns the marker's
/// hash the upstream saw (None when the output went out as it was) and the request it got.
async fn compress_through(
    layer: &CcrLayer,
    output: &str,
    response_id: &'static str,
) -> (Option<String>, Recorded) {
    let (upstream, log) =
        upstream(move |_, request| answer_response(response_id, "Looking into it.", request));
    let response = layer
        .layer(upstream)
        .oneshot(post(
            RESPONSES_URL,
            responses_body(items(output), json!({"store": true, "tools": bash_tool()})),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (_, text) = body_text(response).await;
    assert!(!text.contains("ccr_retrieve"), "{text}");
    let sent = log.lock().unwrap()[0].clone();
    (marker_hash(sent.text()), sent)
}

/// Sends, chained on `previous`, a request with a short user message (after a new large output
/// when `new_output`); the model calls the retrieval tool for `hash` (after `on_call` ran),
/// then answers. Returns the client's response text and what the upstream got.
async fn retrieve_through(
    layer: &CcrLayer,
    previous: &str,
    credential: &str,
    new_output: bool,
    hash: &str,
    on_call: impl Fn() + Send + Sync + 'static,
) -> (String, Vec<Recorded>) {
    let hash = hash.to_owned();
    let (upstream, log) = upstream(move |round, request| match round {
        0 => {
            on_call();
            retrieval_call("resp_2a", &hash, request)
        }
        _ => answer_response("resp_2b", "The card was declined.", request),
    });
    let mut input = vec![json!({"role": "user", "content": "And what exactly failed?"})];
    if new_output {
        input.insert(
            0,
            json!({"type": "function_call_output", "call_id": "call_grep", "output": big_log(1_200)}),
        );
    }
    let input = Value::Array(input);
    let response = layer
        .layer(upstream)
        .oneshot(post_as(
            responses_body(
                input,
                json!({"previous_response_id": previous, "store": true, "tools": bash_tool()}),
            ),
            credential,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (_, text) = body_text(response).await;
    assert!(!text.contains("ccr_retrieve"), "{text}");
    let log = log.lock().unwrap().clone();
    (text, log)
}

#[tokio::test]
async fn two_replicas_share_the_store_a_marker_from_one_is_answered_by_the_other() {
    let ns = Namespace::new("replicas");
    // Two replicas: the same secret, each its own client of the same Redis.
    // The whole original in one answer (it is larger than the default answer page).
    let replica_a = CcrLayer::new()
        .secret("replicas")
        .max_answer_bytes(1 << 20)
        .store(ns.store().await);
    let replica_b = CcrLayer::new()
        .secret("replicas")
        .max_answer_bytes(1 << 20)
        .store(ns.store().await);
    let earlier = big_log(1_500);

    let (hash, _) = compress_through(&replica_a, &earlier, "resp_1").await;
    let hash = hash.expect("compressed through A");
    // B's handle sees what A stored.
    let handle_b = replica_b.handle();
    assert_eq!(
        handle_b.retrieve(&hash).await.unwrap().as_deref(),
        Some(earlier.as_str())
    );

    // No new output: the tool is there because A recorded that resp_1 carried it.
    let (text, log) = retrieve_through(
        &replica_b,
        "resp_1",
        "Bearer sk-test-alice",
        false,
        &hash,
        || {},
    )
    .await;
    let client_view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(client_view["id"], "resp_2b");
    assert_eq!(log.len(), 2);
    assert!(!log[0].text().contains(&earlier), "no copy of the output");
    assert!(
        log[0].text().contains("ccr_retrieve"),
        "the tool, kept for the chain"
    );
    let continuation = log[1].json();
    assert_eq!(continuation["previous_response_id"], "resp_2a");
    assert_eq!(retrieval_answer(&continuation), earlier);
    assert_eq!(handle_b.stats().await.retrievals.full, 1);
    assert!(handle_b.stats().await.entries >= 2);

    // Another tenant, through B, with the same hash (and an output of its own, so that the tool
    // is there): unknown to it.
    let (_, log) = retrieve_through(
        &replica_b,
        "resp_1",
        "Bearer sk-test-bob",
        true,
        &hash,
        || {},
    )
    .await;
    let answer = retrieval_answer(&log[1].json());
    assert!(answer.contains("is unknown"), "{answer}");
    assert!(!answer.contains("ERROR payment"));
}

#[tokio::test]
async fn a_closed_port_leaves_outputs_uncompressed_and_requests_succeed() {
    let port = PrivateRedis::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    assert!(RedisStore::builder(url.as_str()).build().await.is_err());
    let store = RedisStore::builder(url.as_str()).build_lazy().unwrap();
    let layer = CcrLayer::new().secret("closed").store(store);
    let original = big_log(1_500);
    for _ in 0..3 {
        let (hash, sent) = compress_through(&layer, &original, "resp_1").await;
        assert_eq!(hash, None);
        // Byte for byte what the client sent: no marker, no tool.
        assert_eq!(
            sent.text(),
            responses_body(
                items(&original),
                json!({"store": true, "tools": bash_tool()})
            )
        );
    }
    let handle = layer.handle();
    assert!(handle.lookup("000000000000000000000001").await.is_err());
    let stats = handle.stats().await;
    assert_eq!((stats.entries, stats.outputs_compressed), (0, 0));
}

#[tokio::test]
async fn redis_stopped_mid_test_requests_keep_succeeding_and_compression_resumes() {
    let server = PrivateRedis::start().await;
    let store = RedisStore::builder(server.url())
        .retry_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let layer = CcrLayer::new().secret("stopped").store(store);
    let handle = layer.handle();
    let earlier = big_log(1_500);
    let (hash, _) = compress_through(&layer, &earlier, "resp_1").await;
    let hash = hash.expect("compressed while Redis is up");

    // Redis stops while the model's retrieval call is in flight: the call is answered, and the
    // answer says the data is unavailable.
    let port = server.port;
    let (text, log) = retrieve_through(
        &layer,
        "resp_1",
        "Bearer sk-test-alice",
        false,
        &hash,
        move || shutdown(port),
    )
    .await;
    assert!(text.contains("The card was declined."), "{text}");
    let answer = retrieval_answer(&log[1].json());
    assert!(answer.contains("unavailable"), "{answer}");
    assert_eq!(handle.stats().await.retrievals.unavailable, 1);

    // Down: every request succeeds, its output as it was.
    let later = big_log(1_700);
    for _ in 0..3 {
        let (hash, sent) = compress_through(&layer, &later, "resp_3").await;
        assert_eq!(hash, None);
        assert_eq!(
            sent.text(),
            responses_body(items(&later), json!({"store": true, "tools": bash_tool()}))
        );
    }
    assert!(handle.lookup(&hash).await.is_err());

    // Back (empty): the store reconnects and compression resumes.
    server.restart().await;
    let started = Instant::now();
    loop {
        let (hash, sent) = compress_through(&layer, &later, "resp_4").await;
        if let Some(hash) = hash {
            assert_eq!(
                handle.retrieve(&hash).await.unwrap().as_deref(),
                Some(later.as_str())
            );
            break;
        }
        assert_eq!(
            sent.text(),
            responses_body(items(&later), json!({"store": true, "tools": bash_tool()}))
        );
        assert!(started.elapsed() < DEADLINE, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The earlier original went with the old server: unknown now, never wrong.
    assert_eq!(handle.lookup(&hash).await.unwrap(), Lookup::Missing);
}

#[tokio::test]
async fn an_original_resent_on_every_turn_crosses_the_network_once() {
    let server = PrivateRedis::start().await;
    let store = RedisStore::builder(server.url()).build().await.unwrap();
    let layer = CcrLayer::new().secret("once").store(store);
    let original = big_log(20_000);
    let before = server.net_input_bytes();
    let (first, _) = compress_through(&layer, &original, "resp_1").await;
    let first_turn = server.net_input_bytes() - before;
    let before = server.net_input_bytes();
    let (second, _) = compress_through(&layer, &original, "resp_1").await;
    let second_turn = server.net_input_bytes() - before;
    assert!(first.is_some() && first == second);
    assert!(first_turn > original.len() as u64, "{first_turn}");
    assert!(
        second_turn < 16 * 1024,
        "{second_turn} bytes for a {} byte original",
        original.len()
    );
    println!(
        "bytes sent to Redis: first turn {first_turn}, same output again {second_turn} (original {} bytes)",
        original.len()
    );
}

#[tokio::test]
async fn after_a_partition_the_store_connects_anew() {
    let ns = Namespace::new("partition");
    let relay = Relay::start();
    let store = RedisStore::builder(relay.url())
        .prefix(&ns.prefix)
        .retry_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let layer = CcrLayer::new().secret("partition").store(store);
    let handle = layer.handle();
    let (hash, _) = compress_through(&layer, &big_log(1_500), "resp_1").await;
    let hash = hash.expect("compressed while Redis answers");

    // Cut: the open connection hangs. Requests succeed, their outputs as they were.
    relay.cut();
    let output = big_log(1_600);
    let unchanged = responses_body(items(&output), json!({"store": true, "tools": bash_tool()}));
    for _ in 0..3 {
        let (marker, sent) = compress_through(&layer, &output, "resp_2").await;
        assert_eq!(marker, None);
        assert_eq!(sent.text(), unchanged);
    }
    assert!(handle.lookup(&hash).await.is_err());

    // Healed: the hung connection never answers again, a new one does.
    relay.heal();
    let started = Instant::now();
    loop {
        let (marker, sent) = compress_through(&layer, &output, "resp_2").await;
        if marker.is_some() {
            break;
        }
        assert_eq!(sent.text(), unchanged);
        assert!(started.elapsed() < DEADLINE, "never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        handle.lookup(&hash).await.unwrap(),
        Lookup::Found(_)
    ));
}
