//! Requests per second through `ccr-proxy` (in process, over real HTTP on 127.0.0.1) against a
//! local upstream, with and without compression, beside the same requests sent to the upstream
//! directly.
//!
//! `cargo bench --features proxy --bench proxy`. Each iteration sends a batch of concurrent
//! Chat Completions requests over keep-alive connections; criterion reports the batch as
//! elements, so its `thrpt` is requests per second. Bodies: a conversation whose tool output is
//! 100 KB of server log (compressed by the proxy, or sent with `x-ccr: off`), and a small
//! conversation with nothing to compress.
//!
//! Compressed, two cases: a proxy with its view cache off (every request compresses the output,
//! as a tool output's first turn does) and one with it on, the default (the same output again,
//! as in every later turn of a conversation).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tower_ccr::CcrLayer;
use tower_ccr::proxy::{Proxy, Routes};

/// Requests in flight at once, and per iteration.
const BATCH: usize = 32;

const ANSWER: &[u8] = br#"{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

/// An upstream that reads each request whole and answers a fixed completion.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                std::hint::black_box(body.len());
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(ANSWER)))
                        .unwrap(),
                )
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

fn log_of(bytes: usize) -> String {
    let mut log = String::with_capacity(bytes + 200);
    let mut i = 0;
    while log.len() < bytes {
        if i % 997 == 500 {
            log.push_str(&format!(
                "2026-11-23T10:00:00Z ERROR worker-{} job {i} failed: connection reset\n",
                i % 8
            ));
        } else {
            log.push_str(&format!(
                "2026-11-23T10:{:02}:{:02}Z INFO worker-{} GET /api/items/{i} 200 in {}ms\n",
                i / 60 % 60,
                i % 60,
                i % 8,
                3 + i % 17
            ));
        }
        i += 1;
    }
    log
}

fn conversation(output: &str) -> Bytes {
    Bytes::from(
        json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "Which jobs failed?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "bash", "arguments": "{\"cmd\":\"cat worker.log\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": output}]})
        .to_string(),
    )
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends `BATCH` copies of a request at once and reads every answer.
async fn batch(client: &HttpClient, url: &str, body: &Bytes, opt_out: bool) {
    let requests = (0..BATCH).map(|_| {
        let mut request = Request::post(url)
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-bench");
        if opt_out {
            request = request.header("x-ccr", "off");
        }
        let request = request.body(Full::new(body.clone())).unwrap();
        async move {
            let response = client.request(request).await.unwrap();
            assert!(response.status().is_success());
            let body = response.into_body().collect().await.unwrap().to_bytes();
            std::hint::black_box(body.len());
        }
    });
    futures::future::join_all(requests).await;
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, proxy, uncached, handle) = runtime.block_on(async {
        let upstream = upstream().await;
        let base = format!("http://{upstream}");
        let routes = Routes::new(
            base.parse().unwrap(),
            base.parse().unwrap(),
            base.parse().unwrap(),
        );
        let mut proxies = Vec::new();
        for layer in [CcrLayer::new(), CcrLayer::new().view_cache_bytes(0)] {
            let proxy = Proxy::new(layer.secret("bench"), routes.clone());
            let handle = proxy.handle();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(proxy.serve(listener, std::future::pending()));
            proxies.push((addr, handle));
        }
        let (uncached, _) = proxies.pop().unwrap();
        let (proxy, handle) = proxies.pop().unwrap();
        (upstream, proxy, uncached, handle)
    });
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(BATCH)
        .build_http();
    let big = conversation(&log_of(100_000));
    let small = conversation("total 4\ndrwxr-xr-x 2 app app 4096 Nov 23 10:00 logs\n");
    let direct = format!("http://{upstream}/v1/chat/completions");
    let through = format!("http://{proxy}/v1/chat/completions");
    let through_uncached = format!("http://{uncached}/v1/chat/completions");

    let mut group = c.benchmark_group("proxy requests/s");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    let cases = [
        ("direct, 100 KB tool output", &direct, &big, false),
        ("proxy, 100 KB tool output, x-ccr off", &through, &big, true),
        (
            "proxy, 100 KB tool output compressed, first turn",
            &through_uncached,
            &big,
            false,
        ),
        (
            "proxy, 100 KB tool output compressed, later turn",
            &through,
            &big,
            false,
        ),
        ("direct, nothing to compress", &direct, &small, false),
        ("proxy, nothing to compress", &through, &small, false),
    ];
    for (name, url, body, opt_out) in cases {
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(batch(&client, url, body, opt_out)));
        });
    }
    group.finish();
    let stats = runtime.block_on(handle.stats());
    assert!(
        stats.outputs_compressed > 0 && stats.views_reused > 0,
        "the later-turn case compressed, reusing its view"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
