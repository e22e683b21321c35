//! Time the layer adds to one request, measured side by side with the bare inner service.
//!
//! `cargo bench --bench overhead`. Bodies: a conversation whose tool output is 10 KB, 100 KB or
//! 1 MB of server log (compressed by the layer), and a 100 KB conversation of small messages
//! (nothing to compress: the pass-through cost).
//!
//! `layer` has the view cache off, so every request pays for compression as a tool output's
//! first turn does; `layer_later_turn` has it on (the default) and sends the same output again,
//! as every later turn of a conversation does.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ccr::CcrLayer;

const ANSWER: &[u8] = br#"{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

fn model() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(|request: Request<Full<Bytes>>| async move {
        // Read the body as a real upstream would.
        let body = request.into_body().collect().await.unwrap().to_bytes();
        std::hint::black_box(body.len());
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(ANSWER)))
                .unwrap(),
        )
    })
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

fn body_with_output(output: &str) -> Bytes {
    Bytes::from(
        json!({"model": "m", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Which jobs failed?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "bash", "arguments": "{\"cmd\":\"cat jobs.log\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": output}
        ], "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]})
        .to_string(),
    )
}

/// About 100 KB of short turns: nothing reaches the token threshold.
fn small_messages_body() -> Bytes {
    let mut messages = Vec::new();
    let mut i = 0;
    while serde_json::to_string(&messages).unwrap().len() < 100_000 {
        messages.push(json!({"role": "user", "content": format!("question {i}: how is the deployment going in region {}?", i % 7)}));
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("c{i}"), "type": "function",
            "function": {"name": "status", "arguments": format!("{{\"region\":{}}}", i % 7)}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": format!("c{i}"), "content": format!("region {} healthy: 12/12 pods ready, p99 84ms", i % 7)}));
        i += 1;
    }
    Bytes::from(json!({"model": "m", "messages": messages}).to_string())
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("http://model.local/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer bench")
        .body(Full::new(body.clone()))
        .unwrap()
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cases = [
        ("tool_output_10kb", body_with_output(&log_of(10_000))),
        ("tool_output_100kb", body_with_output(&log_of(100_000))),
        ("tool_output_1mb", body_with_output(&log_of(1_000_000))),
        ("passthrough_100kb", small_messages_body()),
    ];
    let first_turn = CcrLayer::new().view_cache_bytes(0);
    let later_turn = CcrLayer::new();
    let mut group = c.benchmark_group("overhead");
    for (name, body) in &cases {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("bare", name), body, |b, body| {
            let service = model();
            b.iter(|| {
                runtime.block_on(async {
                    let response = service.clone().oneshot(request(body)).await.unwrap();
                    response.into_body().collect().await.unwrap().to_bytes()
                })
            });
        });
        for (id, layer) in [("layer", &first_turn), ("layer_later_turn", &later_turn)] {
            group.bench_with_input(BenchmarkId::new(id, name), body, |b, body| {
                let service = layer.layer(model());
                b.iter(|| {
                    runtime.block_on(async {
                        let response = service.clone().oneshot(request(body)).await.unwrap();
                        response.into_body().collect().await.unwrap().to_bytes()
                    })
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
