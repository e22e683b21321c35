//! Streaming through the layer, side by side with the bare inner service: time to the first
//! byte of the client's body, and time to read a whole stream.
//!
//! `cargo bench --bench streaming`. The inner service answers at once with a 200-chunk Chat
//! Completions stream (a 1-chunk head, then the rest), so what is measured is the layer's own
//! work: reading and compressing the request (a 10 KB log tool output, or nothing to compress)
//! and filtering the events.

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::json;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_ccr::CcrLayer;

type Frames = std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>;
type SseBody = StreamBody<futures::stream::Iter<Frames>>;

fn sse_chunks() -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null});
        Bytes::from(format!("data: {chunk}\n\n"))
    };
    chunks.push(chunk(json!({"role": "assistant", "content": ""}), None));
    for i in 0..200 {
        chunks.push(chunk(json!({"content": format!("word{i} ")}), None));
    }
    chunks.push(chunk(json!({}), Some("stop")));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

fn model(
    chunks: Vec<Bytes>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<SseBody>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |request: Request<Full<Bytes>>| {
        let chunks = chunks.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            std::hint::black_box(body.len());
            let frames: Vec<_> = chunks
                .into_iter()
                .map(|c| Ok(http_body::Frame::data(c)))
                .collect();
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(futures::stream::iter(frames)))
                    .unwrap(),
            )
        }
    })
}

fn log_of(bytes: usize) -> String {
    let mut log = String::with_capacity(bytes + 200);
    let mut i = 0;
    while log.len() < bytes {
        log.push_str(&format!(
            "2026-11-23T10:{:02}:{:02}Z INFO worker-{} GET /api/items/{i} 200 in {}ms\n",
            i / 60 % 60,
            i % 60,
            i % 8,
            3 + i % 17
        ));
        i += 1;
    }
    log
}

fn body(output: &str) -> Bytes {
    Bytes::from(
        json!({"model": "m", "stream": true, "messages": [
            {"role": "user", "content": "Which jobs failed?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "bash", "arguments": "{\"cmd\":\"cat jobs.log\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": output}
        ]})
        .to_string(),
    )
}

fn request(body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("http://model.local/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer bench")
        .body(Full::new(body.clone()))
        .unwrap()
}

async fn first_byte<B: Body<Data = Bytes> + Unpin>(mut body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    loop {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return data.len();
        }
    }
}

fn streaming(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cases = [
        ("tool_output_10kb", body(&log_of(10_000))),
        ("nothing_to_compress", body("region eu-west-1 healthy")),
    ];
    // The view cache off: each request compresses its output, as a first turn does.
    let layer = CcrLayer::new().view_cache_bytes(0);
    let chunks = sse_chunks();
    for (measure, whole) in [("first_byte", false), ("whole_stream", true)] {
        let mut group = c.benchmark_group(format!("streaming_{measure}"));
        for (name, body) in &cases {
            group.bench_with_input(BenchmarkId::new("bare", name), body, |b, body| {
                let service = model(chunks.clone());
                b.iter(|| {
                    runtime.block_on(async {
                        let response = service.clone().oneshot(request(body)).await.unwrap();
                        if whole {
                            response
                                .into_body()
                                .collect()
                                .await
                                .unwrap()
                                .to_bytes()
                                .len()
                        } else {
                            first_byte(response.into_body()).await
                        }
                    })
                });
            });
            group.bench_with_input(BenchmarkId::new("layer", name), body, |b, body| {
                let service = layer.layer(model(chunks.clone()));
                b.iter(|| {
                    runtime.block_on(async {
                        let response = service.clone().oneshot(request(body)).await.unwrap();
                        if whole {
                            response
                                .into_body()
                                .collect()
                                .await
                                .unwrap()
                                .to_bytes()
                                .len()
                        } else {
                            first_byte(response.into_body()).await
                        }
                    })
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, streaming);
criterion_main!(benches);
