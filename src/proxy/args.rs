//! [`ProxyArgs`]: the flags and environment variables of `ccr-proxy`.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use http::HeaderName;

use crate::{
    CcrLayer, DEFAULT_MAX_ROUNDS, DEFAULT_MIN_TOKENS, DEFAULT_TOOL_NAME, MemoryStore, Store,
};

use super::ConfigError;
use super::routing::{
    DEFAULT_ANTHROPIC_BASE, DEFAULT_GEMINI_BASE, DEFAULT_OPENAI_BASE, Mount, Routes, Upstream,
};
use super::server::Proxy;

const ABOUT: &str = "An HTTP proxy in front of the OpenAI, Anthropic and Gemini APIs that compresses large tool outputs, keeps the originals and answers the model's retrieval calls itself.";

const LONG_ABOUT: &str = "\
An HTTP proxy in front of the OpenAI, Anthropic and Gemini APIs that compresses large tool
outputs, keeps the originals and answers the model's retrieval calls itself (tower-ccr).

Point any client's base URL at it: requests of OpenAI Chat Completions, OpenAI Responses,
Anthropic Messages and Gemini generateContent (streamed or not) get their large tool outputs
replaced by short views ending in a marker, and a retrieval tool the client never sees; every
other request, and every response, streams through untouched.

Routing (mounts given with --upstream first, longest prefix winning):
  Anthropic  /v1/messages…, /v1/complete, and any request with an anthropic-version header
  Gemini     /v1beta/…, /v1alpha/…, /upload/…, /v1/models/{model}:{generateContent|…},
             /v1/tunedModels/…, and /v1/… requests with x-goog-api-key or a key= parameter
  OpenAI     everything else (/v1/chat/completions, /v1/responses, /v1/models, …)
The base URL's path is put before the request's path. GET /healthz and GET /metrics
(Prometheus text) are answered by the proxy itself.

Every flag can be set by the environment variable shown with it; flags win.";

const AFTER_LONG_HELP: &str = "\
Examples:
  ccr-proxy --secret \"$CCR_SECRET\"
  OPENAI_BASE_URL=http://127.0.0.1:8787/v1 ANTHROPIC_BASE_URL=http://127.0.0.1:8787 my-agent
  ccr-proxy --openai-base http://127.0.0.1:8000 --upstream /groq=https://api.groq.com/openai
  ccr-proxy --store redis://127.0.0.1:6379 --secret \"$CCR_SECRET\"   # replicas sharing originals

Logs go to stderr; RUST_LOG sets the level (default info; debug shows each upstream call).";

/// The flags of `ccr-proxy`, each with an environment variable (the flag wins).
///
/// ```
/// use clap::Parser;
/// use tower_ccr::proxy::ProxyArgs;
///
/// let args = ProxyArgs::try_parse_from([
///     "ccr-proxy",
///     "--listen", "0.0.0.0:9000",
///     "--upstream", "/groq=https://api.groq.com/openai",
///     "--ttl", "1h",
///     "--min-tokens", "500",
/// ])?;
/// assert_eq!(args.listen.port(), 9000);
/// assert_eq!(args.ttl.as_secs(), 3600);
/// assert_eq!(args.routes().labels().last(), Some("/groq"));
/// # Ok::<(), clap::Error>(())
/// ```
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ccr-proxy",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
#[non_exhaustive]
pub struct ProxyArgs {
    /// Address to listen on (IP:PORT). HTTP/1.1 and cleartext HTTP/2 (prior knowledge).
    #[arg(long, env = "CCR_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// Base URL of OpenAI, which also gets every path no other rule claims (so an
    /// OpenAI-compatible server: vLLM, Ollama, LiteLLM…). http:// is allowed.
    #[arg(long, env = "CCR_OPENAI_BASE", default_value = DEFAULT_OPENAI_BASE, value_name = "URL")]
    pub openai_base: Upstream,

    /// Base URL of Anthropic.
    #[arg(long, env = "CCR_ANTHROPIC_BASE", default_value = DEFAULT_ANTHROPIC_BASE, value_name = "URL")]
    pub anthropic_base: Upstream,

    /// Base URL of Gemini.
    #[arg(long, env = "CCR_GEMINI_BASE", default_value = DEFAULT_GEMINI_BASE, value_name = "URL")]
    pub gemini_base: Upstream,

    /// Serve a path prefix from another upstream, the prefix replaced by the URL's path:
    /// `/groq=https://api.groq.com/openai` sends `/groq/v1/chat/completions` to
    /// `https://api.groq.com/openai/v1/chat/completions`. Repeatable; comma-separated in the
    /// environment variable.
    #[arg(
        long = "upstream",
        env = "CCR_UPSTREAMS",
        value_name = "PREFIX=URL",
        value_delimiter = ','
    )]
    pub upstreams: Vec<Mount>,

    /// Where originals are kept: `memory` (this process only) or `redis://[:PASSWORD@]HOST[:PORT][/DB]`
    /// (shared by replicas; needs a build with the `redis` feature).
    #[arg(
        long,
        env = "CCR_STORE",
        default_value = "memory",
        value_name = "STORE"
    )]
    pub store: StoreSpec,

    /// Prefix of every Redis key. Deployments that share a Redis server but not a secret
    /// keep apart by their prefixes.
    #[arg(
        long,
        env = "CCR_REDIS_PREFIX",
        default_value = "ccr:",
        value_name = "PREFIX"
    )]
    pub redis_prefix: String,

    /// Bound of one Redis call, connecting included: a write that takes longer leaves its
    /// output uncompressed, a read answers that the data is unavailable.
    #[arg(long, env = "CCR_REDIS_TIMEOUT", default_value = "200ms", value_parser = parse_duration, value_name = "DURATION")]
    pub redis_timeout: Duration,

    /// Byte budget of the memory store (B, KiB, MiB, GiB, or KB, MB, GB).
    #[arg(long, env = "CCR_MEMORY_MAX_BYTES", default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub memory_max_bytes: u64,

    /// Key for the ids in markers. Replicas that share a store must share it; set it in
    /// production, or markers (and so the bytes of compressed outputs, and the provider's
    /// prompt cache) change at each restart. Random when unset.
    #[arg(
        long,
        env = "CCR_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<Secret>,

    /// How long an original stays after its last use (ms, s, m, h, d; `1h30m`).
    #[arg(long, env = "CCR_TTL", default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    pub ttl: Duration,

    /// Hard maximum age of an original, however often it is used.
    #[arg(long, env = "CCR_MAX_AGE", default_value = "24h", value_parser = parse_duration, value_name = "DURATION")]
    pub max_age: Duration,

    /// Tool outputs estimated below this many tokens are left alone.
    #[arg(long, env = "CCR_MIN_TOKENS", default_value_t = DEFAULT_MIN_TOKENS, value_name = "TOKENS")]
    pub min_tokens: usize,

    /// Most continuation requests the proxy sends for one client request (retrieval rounds);
    /// 0 turns lossy compression off.
    #[arg(long, env = "CCR_MAX_ROUNDS", default_value_t = DEFAULT_MAX_ROUNDS, value_name = "N")]
    pub max_rounds: usize,

    /// Larger request bodies pass through untouched (and larger responses stream back
    /// untouched).
    #[arg(long, env = "CCR_MAX_BODY_BYTES", default_value = "32MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_body_bytes: u64,

    /// Memory for views already computed, so an output resent in every later turn is
    /// compressed once; 0 turns the cache off.
    #[arg(long, env = "CCR_VIEW_CACHE_BYTES", default_value = "32MiB", value_parser = parse_size, value_name = "SIZE")]
    pub view_cache_bytes: u64,

    /// Name of the injected retrieval tool (1–64 of a-z A-Z 0-9 _ -).
    #[arg(long, env = "CCR_TOOL_NAME", default_value = DEFAULT_TOOL_NAME, value_parser = parse_tool_name, value_name = "NAME")]
    pub tool_name: String,

    /// Never compress the outputs of this tool. Repeatable; comma-separated in the
    /// environment variable.
    #[arg(
        long = "exclude-tool",
        env = "CCR_EXCLUDE_TOOLS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub exclude_tools: Vec<String>,

    /// Take the tenant (whose originals a retrieval may read) from this header only. Default:
    /// the first of Authorization, api-key, x-api-key, x-goog-api-key, or Gemini's key=.
    #[arg(long, env = "CCR_TENANT_HEADER", value_name = "HEADER")]
    pub tenant_header: Option<HeaderName>,

    /// How long connecting to an upstream (TCP and TLS) may take.
    #[arg(long, env = "CCR_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// On SIGINT or SIGTERM, how long in-flight requests and streams may go on before their
    /// connections are closed.
    #[arg(long, env = "CCR_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Log lines as text or as JSON objects (one a line, on stderr).
    #[arg(long, env = "CCR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A secret flag value, shown as `***` in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(secret: &str) -> Result<Self, Self::Err> {
        Ok(Secret(secret.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Where the proxy keeps originals.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In this process ([`MemoryStore`]).
    Memory,
    /// A Redis server, shared by every replica pointed at it (`redis://` or `rediss://`).
    Redis(String),
}

impl FromStr for StoreSpec {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        if spec.eq_ignore_ascii_case("memory") {
            Ok(StoreSpec::Memory)
        } else if spec.starts_with("redis://") || spec.starts_with("rediss://") {
            Ok(StoreSpec::Redis(spec.to_owned()))
        } else {
            Err(ConfigError::new(format!(
                "store {spec:?}: expected `memory` or a redis:// URL"
            )))
        }
    }
}

impl fmt::Debug for StoreSpec {
    /// The password of a Redis URL is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for StoreSpec {
    /// The password of a Redis URL is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory"),
            StoreSpec::Redis(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
                match rest.rsplit_once('@') {
                    Some((_, host)) => write!(f, "{scheme}://***@{host}"),
                    None => f.write_str(url),
                }
            }
        }
    }
}

impl ProxyArgs {
    /// The routing table the flags describe.
    pub fn routes(&self) -> Routes {
        self.upstreams.iter().cloned().fold(
            Routes::new(
                self.openai_base.clone(),
                self.anthropic_base.clone(),
                self.gemini_base.clone(),
            ),
            Routes::mount,
        )
    }

    /// The store the flags name. A Redis server that does not answer yet does not stop the
    /// proxy: it starts, sends outputs uncompressed, and connects when Redis comes (a warning
    /// says so); only a malformed URL is an error.
    pub async fn store(&self) -> Result<Arc<dyn Store>, ConfigError> {
        match &self.store {
            StoreSpec::Memory => Ok(Arc::new(
                MemoryStore::builder()
                    .max_bytes(self.memory_max_bytes)
                    .build(),
            )),
            #[cfg(feature = "redis")]
            StoreSpec::Redis(url) => {
                let builder = crate::store::RedisStore::builder(url.as_str())
                    .prefix(self.redis_prefix.as_str())
                    .timeout(self.redis_timeout);
                let store = match builder.clone().build().await {
                    Ok(store) => store,
                    Err(error) => {
                        tracing::warn!(
                            store = %self.store,
                            %error,
                            "Redis does not answer: starting anyway; outputs go uncompressed until it does"
                        );
                        builder.build_lazy().map_err(|error| {
                            ConfigError::new(format!("store {}: {error}", self.store))
                        })?
                    }
                };
                Ok(Arc::new(store))
            }
            #[cfg(not(feature = "redis"))]
            StoreSpec::Redis(_) => Err(ConfigError::new(format!(
                "store {}: this build has no Redis store (build with the `redis` feature)",
                self.store
            ))),
        }
    }

    /// The layer the flags configure, over `store`.
    pub fn layer(&self, store: impl Store) -> Result<CcrLayer, ConfigError> {
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .map_err(|_| ConfigError::new("--max-body-bytes is too large for this machine"))?;
        let view_cache_bytes = usize::try_from(self.view_cache_bytes)
            .map_err(|_| ConfigError::new("--view-cache-bytes is too large for this machine"))?;
        let mut layer = CcrLayer::new()
            .min_tokens(self.min_tokens)
            .max_rounds(self.max_rounds)
            .ttl(self.ttl)
            .max_age(self.max_age)
            .max_body_bytes(max_body_bytes)
            .view_cache_bytes(view_cache_bytes)
            .tool_name(self.tool_name.clone())
            .exclude_tools(self.exclude_tools.iter().cloned())
            .store(store);
        if let Some(secret) = &self.secret {
            layer = layer.secret(&secret.0);
        }
        if let Some(header) = &self.tenant_header {
            layer = layer.tenant_header(header.clone());
        }
        Ok(layer)
    }

    /// The proxy the flags describe, its store connected.
    pub async fn proxy(&self) -> Result<Proxy, ConfigError> {
        let store = self.store().await?;
        Ok(Proxy::new(self.layer(store)?, self.routes())
            .connect_timeout(self.connect_timeout)
            .shutdown_timeout(self.shutdown_timeout))
    }
}

/// Parses a duration: one or more `<integer><unit>` with the units `ms`, `s`, `m`, `h`, `d`
/// (`90s`, `1h30m`); a bare integer is seconds.
///
/// ```
/// use std::time::Duration;
/// use tower_ccr::proxy::parse_duration;
///
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
/// assert!(parse_duration("1 fortnight").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let invalid = || format!("{text:?} is not a duration such as 500ms, 30s, 15m, 2h or 1h30m");
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            _ => return Err(invalid()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses a size in bytes: an integer with an optional unit, binary (`KiB`, `MiB`, `GiB`) or
/// decimal (`KB`, `MB`, `GB`), in any case.
///
/// ```
/// use tower_ccr::proxy::parse_size;
///
/// assert_eq!(parse_size("256MiB"), Ok(256 << 20));
/// assert_eq!(parse_size("64 kb"), Ok(64_000));
/// assert_eq!(parse_size("1048576"), Ok(1 << 20));
/// assert!(parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("{text:?} is not a size such as 1048576, 512KiB, 256MiB or 1GB");
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let value: u64 = trimmed[..digits].parse().map_err(|_| invalid())?;
    let multiplier: u64 = match trimmed[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(invalid()),
    };
    value.checked_mul(multiplier).ok_or_else(invalid)
}

fn parse_tool_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?}: a tool name is 1 to 64 characters of a-z, A-Z, 0-9, _ and -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn defaults_match_the_layer_and_the_public_apis() {
        let args = ProxyArgs::try_parse_from(["ccr-proxy"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(args.store, StoreSpec::Memory);
        assert_eq!(args.memory_max_bytes, 256 << 20);
        assert_eq!(args.max_body_bytes, crate::DEFAULT_MAX_BODY_BYTES as u64);
        assert_eq!(
            args.view_cache_bytes,
            crate::DEFAULT_VIEW_CACHE_BYTES as u64
        );
        assert_eq!(args.ttl, Duration::from_secs(30 * 60));
        assert_eq!(args.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(args.min_tokens, DEFAULT_MIN_TOKENS);
        assert_eq!(args.max_rounds, DEFAULT_MAX_ROUNDS);
        assert_eq!(args.tool_name, DEFAULT_TOOL_NAME);
        assert_eq!(args.secret, None);
        assert_eq!(args.log_format, LogFormat::Text);
        let routes = args.routes();
        assert_eq!(
            routes.provider(super::super::Provider::Gemini).to_string(),
            DEFAULT_GEMINI_BASE
        );
    }

    #[test]
    fn flags_are_parsed_and_checked() {
        let args = ProxyArgs::try_parse_from([
            "ccr-proxy",
            "--upstream",
            "/a=http://127.0.0.1:1",
            "--upstream",
            "/b=http://127.0.0.1:2/v1",
            "--store",
            "redis://:hunter2@cache:6379/0",
            "--exclude-tool",
            "read_file",
            "--tenant-header",
            "x-user",
            "--log-format",
            "json",
            "--max-rounds",
            "0",
            "--secret",
            "s3cr3t-value",
        ])
        .unwrap();
        assert_eq!(args.upstreams.len(), 2);
        assert_eq!(args.exclude_tools, ["read_file"]);
        assert_eq!(args.log_format, LogFormat::Json);
        // The password never shows in logs or errors.
        assert_eq!(args.store.to_string(), "redis://***@cache:6379/0");
        assert!(!format!("{args:?}").contains("hunter2"));
        assert!(!format!("{args:?}").contains("s3cr3t"));
        for bad in [
            &["--listen", "localhost"][..],
            &["--openai-base", "api.openai.com"],
            &["--upstream", "groq"],
            &["--store", "postgres://x"],
            &["--ttl", "soon"],
            &["--tool-name", "has space"],
            &["--memory-max-bytes", "99999999999GiB"],
        ] {
            let argv = std::iter::once("ccr-proxy").chain(bad.iter().copied());
            assert!(ProxyArgs::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn help_names_every_environment_variable() {
        let help = ProxyArgs::command().render_long_help().to_string();
        for variable in [
            "CCR_LISTEN",
            "CCR_OPENAI_BASE",
            "CCR_ANTHROPIC_BASE",
            "CCR_GEMINI_BASE",
            "CCR_UPSTREAMS",
            "CCR_STORE",
            "CCR_MEMORY_MAX_BYTES",
            "CCR_REDIS_PREFIX",
            "CCR_REDIS_TIMEOUT",
            "CCR_SECRET",
            "CCR_TTL",
            "CCR_MAX_AGE",
            "CCR_MIN_TOKENS",
            "CCR_MAX_ROUNDS",
            "CCR_MAX_BODY_BYTES",
            "CCR_TOOL_NAME",
            "CCR_EXCLUDE_TOOLS",
            "CCR_TENANT_HEADER",
            "CCR_CONNECT_TIMEOUT",
            "CCR_SHUTDOWN_TIMEOUT",
            "CCR_LOG_FORMAT",
        ] {
            assert!(help.contains(&format!("[env: {variable}")), "{variable}");
        }
        assert!(
            help.contains("/v1/messages"),
            "the routing rules are explained"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "m", "10x", "1h 30m", "-5s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("7b"), Ok(7));
        for bad in ["", "MiB", "1.5MiB", "-1", "20000000000GB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
