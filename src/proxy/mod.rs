//! `ccr-proxy` as a library (feature `proxy`): the layer in front of the OpenAI, Anthropic and
//! Gemini APIs as an HTTP proxy, for clients that cannot take a tower layer but take a base URL.
//!
//! The server's service is [`CcrLayer`](crate::CcrLayer) over [`Forward`], which sends each
//! request to the upstream its path names (see [`Routes`] and [`Provider::of`]) with an HTTPS
//! client (rustls). Requests of a supported API are compressed and their retrieval calls
//! answered as the layer does anywhere; every other request, and every response body, streams
//! through untouched. `GET /healthz` and `GET /metrics` (Prometheus text) are the proxy's own.
//!
//! ```no_run
//! use tower_ccr::CcrLayer;
//! use tower_ccr::proxy::{Proxy, Routes, shutdown_signal};
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let layer = CcrLayer::new().secret("shared by every replica");
//! let proxy = Proxy::new(layer, Routes::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! proxy.serve(listener, shutdown_signal()).await
//! # }
//! ```
//!
//! The `ccr-proxy` binary builds the same from flags and environment variables
//! ([`ProxyArgs`]).

mod args;
mod body;
mod forward;
mod metrics;
mod routing;
mod server;

use std::fmt;

pub use args::{LogFormat, ProxyArgs, Secret, StoreSpec, parse_duration, parse_size};
pub use body::ProxyBody;
pub use forward::Forward;
pub use metrics::{Metrics, Outcome};
pub use routing::{
    Api, DEFAULT_ANTHROPIC_BASE, DEFAULT_GEMINI_BASE, DEFAULT_OPENAI_BASE, Mount, Provider, Routes,
    Target, Upstream,
};
pub use server::{DEFAULT_SHUTDOWN_TIMEOUT, Proxy, ResponseBody, shutdown_signal};

/// A configuration the proxy cannot run with: a bad URL, flag value or store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}
