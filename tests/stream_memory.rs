//! Memory the stream filters hold while 16 MiB stream through one round with `max_body_bytes`
//! at 1 MiB, measured with a counting allocator (its own test binary, one test, so nothing else
//! allocates meanwhile): bounded by the limit, not by the stream. Chat text (while streaming
//! and after `finish_reason`), a Chat call and a Responses call whose name never comes, and
//! an Anthropic round of endless content blocks.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use common::streaming::*;
use common::*;
use http_body::Body;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_ccr::CcrLayer;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LIMIT: usize = 1 << 20;
const STREAMED: usize = 16 << 20;
const RESPONSES_URL: &str = "https://api.example.com/v1/responses";
const MESSAGES_URL: &str = "https://api.anthropic.com/v1/messages";

fn chunk(delta: Value, finish_reason: Option<&str>) -> Bytes {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
        "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]});
    Bytes::from(format!("data: {chunk}\n\n"))
}

fn named_event(event: Value) -> Bytes {
    let kind = event["type"].as_str().unwrap().to_owned();
    Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
}

/// Polls the body until it has nothing more for now; what it gives is dropped at once.
fn drain<B: Body<Data = Bytes> + Unpin>(body: &mut B) {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut *body).poll_frame(&mut cx) {}
}

/// One round's stream: the request that starts it, the events that open the round, and the
/// event sent again and again (its number passed in) until `STREAMED` bytes went through.
struct Scenario {
    name: &'static str,
    request: http::Request<http_body_util::Full<Bytes>>,
    opening: Vec<Bytes>,
    repeated: fn(usize) -> Bytes,
}

fn chat(name: &'static str, opening: Vec<Bytes>, repeated: fn(usize) -> Bytes) -> Scenario {
    let body = chat_body(
        conversation(&big_log(2_000)),
        json!({"stream": true, "tools": [{"type": "function", "function": {"name": "bash"}}]}),
    );
    Scenario {
        name,
        request: post(CHAT_URL, body),
        opening,
        repeated,
    }
}

fn scenarios() -> Vec<Scenario> {
    let role = || chunk(json!({"role": "assistant", "content": ""}), None);
    let responses_request = json!({"model": "gpt-x", "stream": true, "input": [
        {"type": "function_call", "call_id": "c1", "name": "bash", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": big_log(2_000)}]});
    let response = json!({"id": "resp_1", "object": "response", "created_at": 7, "status": "in_progress",
        "model": "gpt-x", "output": [], "usage": null});
    let messages_request = json!({"model": "claude-x", "max_tokens": 100, "stream": true, "messages": [
        {"role": "user", "content": "Why did the payment fail?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": big_log(2_000)}]}]});
    let mut anthropic = post(MESSAGES_URL, messages_request.to_string());
    anthropic
        .headers_mut()
        .insert("x-api-key", "sk-ant-test".parse().unwrap());
    vec![
        chat("chat text", vec![role()], |_| {
            chunk(json!({"content": "x".repeat(8_000)}), None)
        }),
        chat(
            "chat text after finish_reason",
            vec![role(), chunk(json!({}), Some("stop"))],
            |_| chunk(json!({"content": "x".repeat(8_000)}), None),
        ),
        chat(
            "chat call never named",
            vec![
                role(),
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"arguments": ""}}]}),
                    None,
                ),
            ],
            |_| {
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "x".repeat(8_000)}}]}),
                    None,
                )
            },
        ),
        Scenario {
            name: "responses call never named",
            request: post(RESPONSES_URL, responses_request.to_string()),
            opening: vec![
                named_event(
                    json!({"type": "response.created", "sequence_number": 0, "response": response}),
                ),
                named_event(
                    json!({"type": "response.output_item.added", "sequence_number": 1,
                    "output_index": 0, "item": {"id": "fc_1", "type": "function_call",
                    "status": "in_progress", "arguments": "", "call_id": "call_1", "name": ""}}),
                ),
            ],
            repeated: |n| {
                named_event(json!({"type": "response.function_call_arguments.delta",
                    "sequence_number": n + 2, "item_id": "fc_1", "output_index": 0,
                    "delta": "x".repeat(8_000)}))
            },
        },
        Scenario {
            name: "anthropic endless blocks",
            request: anthropic,
            opening: vec![named_event(json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                "model": "claude-x", "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 1}}}))],
            repeated: |n| {
                named_event(json!({"type": "content_block_start", "index": n,
                    "content_block": {"type": "text", "text": ""}}))
            },
        },
    ]
}

/// The live heap the layer keeps after `STREAMED` bytes of the scenario's events went through
/// one round, with `max_body_bytes` at 1 MiB, the client reading as the upstream sends.
async fn held(scenario: Scenario) -> isize {
    let (body, sender) = TestBody::channel();
    let body = Mutex::new(Some(body));
    let (upstream, log) = sse_upstream(move |_, _| sse(body.lock().unwrap().take().unwrap()));
    let service = CcrLayer::new().max_body_bytes(LIMIT).layer(upstream);
    let response = service.oneshot(scenario.request).await.unwrap();
    assert!(
        marker_hash(log.lock().unwrap()[0].text()).is_some(),
        "{}: compressed",
        scenario.name
    );
    let mut body = Box::pin(response.into_body());
    for event in scenario.opening {
        sender.send(Ok(event)).unwrap();
    }
    tokio::task::yield_now().await;
    drain(&mut body);
    let before = LIVE.load(Ordering::Relaxed);
    let mut sent = 0;
    let mut n = 0;
    while sent < STREAMED {
        let event = (scenario.repeated)(n);
        sent += event.len();
        n += 1;
        sender.send(Ok(event)).unwrap();
        if n % 16 == 0 {
            tokio::task::yield_now().await; // Fresh coop budget for the channel.
            drain(&mut body); // The client reads as the upstream sends.
        }
    }
    tokio::task::yield_now().await;
    drain(&mut body);
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(sender);
    drop(body);
    held
}

#[tokio::test]
async fn stream_filter_memory_stays_bounded_by_max_body_bytes() {
    let mut failures = Vec::new();
    for scenario in scenarios() {
        let name = scenario.name;
        let held = held(scenario).await;
        eprintln!(
            "{name}: streamed {} MiB with max_body_bytes 1 MiB, {:.1} MiB live",
            STREAMED >> 20,
            held as f64 / f64::from(1 << 20)
        );
        if held >= 4 * LIMIT as isize {
            failures.push(format!("{name}: {held} bytes live"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
