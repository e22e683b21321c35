//! `ccr-proxy`: tower-ccr as an HTTP proxy in front of the OpenAI, Anthropic and Gemini APIs.
//! `ccr-proxy --help` explains the flags; the library side is `tower_ccr::proxy`.

use std::process::ExitCode;

use clap::Parser;
use tower_ccr::proxy::{LogFormat, ProxyArgs, StoreSpec, shutdown_signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ProxyArgs::parse();
    init_logging(args.log_format);
    let proxy = match args.proxy().await {
        Ok(proxy) => proxy,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    if args.secret.is_none() {
        tracing::warn!(
            "no --secret (CCR_SECRET): ids are random per process, so markers change at each restart and replicas cannot share a store"
        );
    }
    if args.store != StoreSpec::Memory && args.secret.is_none() {
        tracing::warn!("a shared store needs the same --secret on every replica");
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(addr = %args.listen, %error, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        openai = %args.openai_base,
        anthropic = %args.anthropic_base,
        gemini = %args.gemini_base,
        mounts = args.upstreams.len(),
        store = %args.store,
        "ccr-proxy {}",
        env!("CARGO_PKG_VERSION")
    );
    match proxy.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
