//! Memory the Chat stream filter holds while 16 MiB stream through one round with
//! `max_body_bytes` at 1 MiB, measured with a counting allocator (its own test binary, one test,
//! so nothing else allocates meanwhile): bounded by the limit, not by the stream.

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

fn chunk(delta: Value, finish_reason: Option<&str>) -> Bytes {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
        "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]});
    Bytes::from(format!("data: {chunk}\n\n"))
}

/// Polls the body until it has nothing more for now; what it gives is dropped at once.
fn drain<B: Body<Data = Bytes> + Unpin>(body: &mut B) {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut *body).poll_frame(&mut cx) {}
}

/// The live heap the layer keeps after `STREAMED` bytes of chunks went through one round, with
/// `max_body_bytes` at 1 MiB. `after_finish`: the chunks come after the `finish_reason` chunk.
async fn held_after(after_finish: bool) -> isize {
    let (body, sender) = TestBody::channel();
    let body = Mutex::new(Some(body));
    let (upstream, log) = sse_upstream(move |_, _| sse(body.lock().unwrap().take().unwrap()));
    let service = CcrLayer::new().max_body_bytes(LIMIT).layer(upstream);
    let request = post(
        CHAT_URL,
        chat_body(
            conversation(&big_log(2_000)),
            json!({"stream": true, "tools": [{"type": "function", "function": {"name": "bash"}}]}),
        ),
    );
    let response = service.oneshot(request).await.unwrap();
    assert!(
        marker_hash(log.lock().unwrap()[0].text()).is_some(),
        "compressed"
    );
    let mut body = Box::pin(response.into_body());
    sender
        .send(Ok(chunk(json!({"role": "assistant", "content": ""}), None)))
        .unwrap();
    if after_finish {
        sender.send(Ok(chunk(json!({}), Some("stop")))).unwrap();
    }
    tokio::task::yield_now().await;
    drain(&mut body);
    let before = LIVE.load(Ordering::Relaxed);
    let piece = chunk(json!({"content": "x".repeat(8_000)}), None);
    let mut sent = 0;
    while sent < STREAMED {
        sender.send(Ok(piece.clone())).unwrap();
        sent += piece.len();
        tokio::task::yield_now().await; // Fresh coop budget for the channel.
        drain(&mut body); // The client reads as the upstream sends.
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(sender);
    drop(body);
    held
}

#[tokio::test]
async fn chat_filter_memory_stays_bounded_by_max_body_bytes() {
    let while_streaming = held_after(false).await;
    let after_finish = held_after(true).await;
    eprintln!(
        "streamed {} MiB with max_body_bytes 1 MiB: held {} MiB while streaming, {} MiB after finish_reason",
        STREAMED >> 20,
        while_streaming >> 20,
        after_finish >> 20
    );
    assert!(
        while_streaming < 4 * LIMIT as isize,
        "the round's text is kept whole: {while_streaming} bytes live"
    );
    assert!(
        after_finish < 4 * LIMIT as isize,
        "every chunk after finish_reason is held: {after_finish} bytes live"
    );
}
