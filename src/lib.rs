//! # tower-ccr
//!
//! Compress → Cache → Retrieve for LLM tool outputs, as a [tower] layer under any async HTTP
//! client.
//!
//! Agents feed large tool outputs (logs, JSON API results, grep hits, build output) back to the
//! model on every turn. [`CcrLayer`] replaces each large output in an outgoing request by a short,
//! content-aware view that ends in a marker such as
//! `[120 items compressed to 12. Retrieve more: hash=0123456789abcdef01234567]`, keeps the
//! original in a [`Store`], and adds a retrieval tool to the request. When the model calls that
//! tool, the layer answers from the store (the whole original, or the items that best match a
//! query) and sends the continuation upstream itself. The client never sees the tool.
//!
//! Supported: OpenAI Chat Completions (and every server that speaks it), OpenAI Responses,
//! Anthropic Messages and Gemini generateContent, each detected by path (any host) and checked
//! by body shape, with or without `stream: true`. Every other request passes through untouched.
//!
//! Streams keep streaming: events reach the client as they arrive, the retrieval tool's events
//! are dropped, and retrieval rounds are answered and spliced into the same client stream as one
//! response (one start, one end, usage summed). A continuation that fails after the stream began
//! ends it with an error event in the API's format.
//!
//! ## Guarantees
//! - **No lost data.** A marker goes out only when its original is stored and the layer itself
//!   will answer the call. On any internal failure the original request goes upstream unchanged.
//! - **Byte fidelity.** Only the replaced tool-output strings and the tools array change; every
//!   other byte of the request is identical (key order, numbers, whitespace, escapes).
//! - **Determinism.** The view of an output depends only on the output and the conversation
//!   before it, so the next turn sends the same bytes; the injected tool's bytes never change.
//! - **Upstream errors pass through untouched**, and so does the retrieval tool's absence: the
//!   client never sees it.
//! - **Hashes are not capabilities.** Ids are keyed hashes of (secret, tenant, original); only
//!   ids issued for the request's conversation and tenant resolve.
//!
//! ## Example
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_ccr::CcrLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // Any `Service<http::Request<B>>` works: a hyper-util or reqwest client in real use.
//! let upstream = service_fn(|request: Request<Full<Bytes>>| async move {
//!     let body = request.into_body().collect().await?.to_bytes();
//!     assert!(body.len() < 20_000, "the big tool output was compressed");
//!     Ok::<_, tower::BoxError>(Response::new(Full::new(Bytes::from_static(
//!         br#"{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"done"}}]}"#,
//!     ))))
//! });
//! let layer = CcrLayer::new();
//! let handle = layer.handle();
//! let client = ServiceBuilder::new().layer(layer).service(upstream);
//!
//! let log: String = (0..2_000).map(|i| format!("INFO request {i} served in 3ms\n")).collect();
//! let body = serde_json::json!({
//!     "model": "gpt-x",
//!     "messages": [
//!         {"role": "user", "content": "Anything odd in the log?"},
//!         {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
//!             "function": {"name": "bash", "arguments": "{\"cmd\":\"cat app.log\"}"}}]},
//!         {"role": "tool", "tool_call_id": "call_1", "content": log},
//!     ]
//! });
//! let request = Request::post("https://api.openai.com/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(body.to_string())))?;
//! let response = client.oneshot(request).await?;
//! assert!(response.status().is_success());
//! assert_eq!(handle.stats().await.outputs_compressed, 1);
//! # Ok(())
//! # }
//! ```
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "async-openai")]
pub mod async_openai;
mod body;
mod compress;
#[cfg(feature = "tiktoken")]
mod exact_tokens;
mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod id;
mod items;
mod json;
mod layer;
mod marker;
mod provider;
#[cfg(feature = "proxy")]
pub mod proxy;
mod retrieve;
pub mod search;
mod service;
mod sse;
pub mod store;
mod stream;
mod tokens;
mod upstream;
mod view_cache;

pub use body::CcrBody;
#[cfg(feature = "tiktoken")]
pub use exact_tokens::count_tokens;
pub use future::ResponseFuture;
pub use handle::{CcrHandle, RetrievalStats, Stats};
pub use id::{EntryId, TenantId};
pub use layer::{
    CcrLayer, DEFAULT_MAX_ANSWER_BYTES, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ORIGINAL_BYTES,
    DEFAULT_MAX_OUTPUTS_PER_REQUEST, DEFAULT_MAX_ROUNDS, DEFAULT_MIN_TOKENS, DEFAULT_ROUND_BUDGET,
    DEFAULT_TOOL_NAME, DEFAULT_VIEW_CACHE_BYTES, MIN_ANSWER_BYTES,
};
pub use service::{CcrService, OPT_OUT_HEADER};
#[cfg(feature = "redis")]
pub use store::RedisStore;
pub use store::{MemoryStore, Store};
pub use tokens::estimate_tokens;

/// The error type of [`CcrService`] and of [`Store`] operations.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
