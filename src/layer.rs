//! [`CcrLayer`]: configuration and the tower [`Layer`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;

use crate::handle::{CcrHandle, Counters};
use crate::id::IdKey;
use crate::service::CcrService;
use crate::store::{MemoryStore, Retention, Store};
use crate::view_cache::ViewCache;

/// Default for [`CcrLayer::min_tokens`].
pub const DEFAULT_MIN_TOKENS: usize = 1_000;
/// Default for [`CcrLayer::max_rounds`].
pub const DEFAULT_MAX_ROUNDS: usize = 3;
/// Default for [`CcrLayer::tool_name`].
pub const DEFAULT_TOOL_NAME: &str = "ccr_retrieve";
/// Default for [`CcrLayer::max_body_bytes`]: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Default for [`CcrLayer::max_original_bytes`]: 8 MiB.
pub const DEFAULT_MAX_ORIGINAL_BYTES: usize = 8 * 1024 * 1024;
/// Default for [`CcrLayer::max_outputs_per_request`].
pub const DEFAULT_MAX_OUTPUTS_PER_REQUEST: usize = 256;
/// Default for [`CcrLayer::max_answer_bytes`]: 64 KiB.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Smallest [`CcrLayer::max_answer_bytes`]: room for a page and the note that says how to read on.
pub const MIN_ANSWER_BYTES: usize = 2 * 1024;
/// Default for [`CcrLayer::round_budget`]: 60 seconds.
pub const DEFAULT_ROUND_BUDGET: Duration = Duration::from_secs(60);
/// Default for [`CcrLayer::view_cache_bytes`]: 32 MiB.
pub const DEFAULT_VIEW_CACHE_BYTES: usize = 32 * 1024 * 1024;

type TenantFn = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// The headers that carry an API credential, in the order they are looked at: OpenAI and
/// compatible servers (and Anthropic's newer SDKs) use `Authorization`, Azure OpenAI `api-key`,
/// Anthropic `x-api-key`, Gemini `x-goog-api-key`.
const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "api-key", "x-api-key", "x-goog-api-key"];

/// Gemini also takes its API key as a `key` query parameter.
fn key_query_parameter(uri: &http::Uri) -> Option<Vec<u8>> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .map(|key| key.as_bytes().to_vec())
}

/// Where the tenant of a request comes from.
#[derive(Clone)]
pub(crate) enum TenantSource {
    /// The first credential header present (the default).
    Credentials,
    /// The value of a header (the credential by default), hashed with the id key.
    Header(HeaderName),
    /// A user function; `None` means the anonymous tenant.
    Function(Arc<TenantFn>),
}

/// Everything a service needs, shared by the layer, its services and its handles.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) min_tokens: usize,
    pub(crate) max_rounds: usize,
    pub(crate) retention: Retention,
    pub(crate) tool_name: Arc<str>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_original_bytes: usize,
    pub(crate) max_outputs_per_request: usize,
    pub(crate) max_answer_bytes: usize,
    pub(crate) round_budget: Duration,
    pub(crate) view_cache_bytes: usize,
    /// Views already computed, shared by the layer's services (and its clones until one of
    /// them sets another budget).
    pub(crate) views: Arc<ViewCache>,
    /// Tools whose outputs are never compressed.
    pub(crate) exclude_tools: Arc<[String]>,
    pub(crate) key: IdKey,
    pub(crate) tenant: TenantSource,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) counters: Arc<Counters>,
}

impl Shared {
    /// The tenant of a request.
    pub(crate) fn tenant_of(&self, parts: &http::request::Parts) -> crate::TenantId {
        let credential = match &self.tenant {
            TenantSource::Credentials => CREDENTIAL_HEADERS
                .iter()
                .find_map(|name| parts.headers.get(*name))
                .map(|value| value.as_bytes().to_vec())
                .or_else(|| key_query_parameter(&parts.uri)),
            TenantSource::Header(name) => parts
                .headers
                .get(name)
                .map(|value| value.as_bytes().to_vec()),
            TenantSource::Function(function) => function(parts).map(String::into_bytes),
        };
        self.key.tenant(credential.as_deref().unwrap_or_default())
    }
}

/// A tower [`Layer`] that compresses large tool outputs in LLM requests, caches the originals
/// and answers the model's retrieval calls itself (Compress → Cache → Retrieve).
///
/// Wrap any HTTP client service that sends OpenAI Chat Completions, OpenAI Responses, Anthropic
/// Messages or Gemini generateContent requests (any host); everything else passes through
/// untouched.
///
/// ```
/// use std::time::Duration;
/// use tower_ccr::CcrLayer;
///
/// let layer = CcrLayer::new()
///     .min_tokens(2_000)
///     .max_rounds(2)
///     .ttl(Duration::from_secs(15 * 60))
///     .secret("shared by every replica");
/// let handle = layer.handle(); // for the application: retrieve, search, stats
/// # let _ = handle;
/// ```
///
/// # Clone
/// Cloning a layer is cheap: the clones share the store and the statistics. Setters called on a
/// clone afterwards change only that clone's configuration.
#[derive(Clone)]
pub struct CcrLayer {
    shared: Arc<Shared>,
}

impl Default for CcrLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CcrLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("CcrLayer")
            .field("min_tokens", &shared.min_tokens)
            .field("max_rounds", &shared.max_rounds)
            .field("retention", &shared.retention)
            .field("tool_name", &shared.tool_name)
            .field("max_body_bytes", &shared.max_body_bytes)
            .field("max_original_bytes", &shared.max_original_bytes)
            .field("max_outputs_per_request", &shared.max_outputs_per_request)
            .field("max_answer_bytes", &shared.max_answer_bytes)
            .field("round_budget", &shared.round_budget)
            .field("view_cache_bytes", &shared.view_cache_bytes)
            .finish_non_exhaustive()
    }
}

impl CcrLayer {
    /// A layer with the defaults: outputs from 1,000 estimated tokens up are compressed, up to
    /// 3 retrieval rounds, originals kept 30 minutes after their last use (24 hours at most)
    /// in a 256 MiB [`MemoryStore`], the tenant from the request's credential (the first of the
    /// `Authorization`, `api-key`, `x-api-key` and `x-goog-api-key` headers, or a `key` query
    /// parameter), a random secret.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                min_tokens: DEFAULT_MIN_TOKENS,
                max_rounds: DEFAULT_MAX_ROUNDS,
                retention: Retention::default(),
                tool_name: Arc::from(DEFAULT_TOOL_NAME),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_original_bytes: DEFAULT_MAX_ORIGINAL_BYTES,
                max_outputs_per_request: DEFAULT_MAX_OUTPUTS_PER_REQUEST,
                max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
                round_budget: DEFAULT_ROUND_BUDGET,
                view_cache_bytes: DEFAULT_VIEW_CACHE_BYTES,
                views: Arc::new(ViewCache::new(DEFAULT_VIEW_CACHE_BYTES)),
                exclude_tools: Arc::from([]),
                key: IdKey::random(),
                tenant: TenantSource::Credentials,
                store: Arc::new(MemoryStore::new()),
                counters: Arc::new(Counters::default()),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        change(Arc::make_mut(&mut self.shared));
        self
    }

    /// Tool outputs estimated below this many tokens are left alone (default 1,000).
    pub fn min_tokens(self, min_tokens: usize) -> Self {
        self.with(|s| s.min_tokens = min_tokens)
    }

    /// Most continuation requests the layer sends for one client request (default 3). The last
    /// one forbids tool calls so the model has to answer. `0` disables lossy compression, since
    /// no marker could be redeemed.
    pub fn max_rounds(self, max_rounds: usize) -> Self {
        self.with(|s| s.max_rounds = max_rounds)
    }

    /// How long an original stays after its last use (default 30 minutes). Every retrieval and
    /// every request that carries the output again refreshes it.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.with(|s| s.retention.idle = ttl)
    }

    /// Hard maximum age of an original, however often it is used (default 24 hours).
    pub fn max_age(self, max_age: Duration) -> Self {
        self.with(|s| s.retention.max_age = max_age)
    }

    /// Name of the injected retrieval tool (default `ccr_retrieve`).
    ///
    /// # Panics
    /// When `name` is not 1 to 64 characters of `a-z A-Z 0-9 _ -` (what the APIs accept).
    pub fn tool_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "tool name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -: {name:?}"
        );
        self.with(|s| s.tool_name = Arc::from(name))
    }

    /// Largest request (and response) body the layer buffers to inspect (default 32 MiB).
    /// Larger requests pass through untouched.
    pub fn max_body_bytes(self, max_body_bytes: usize) -> Self {
        self.with(|s| s.max_body_bytes = max_body_bytes)
    }

    /// Largest tool output the layer compresses and stores (default 8 MiB). A larger output is
    /// left as it is: never half-stored, and the compressors' work per output stays bounded.
    pub fn max_original_bytes(self, max_original_bytes: usize) -> Self {
        self.with(|s| s.max_original_bytes = max_original_bytes)
    }

    /// Most tool outputs compressed in one request (default 256). They are the first ones, in
    /// request order, that are large enough to compress; later ones are left as they are. The
    /// earliest rather than the largest: a new turn never changes which earlier outputs are
    /// compressed, so the history keeps its bytes (and the provider's prompt cache) turn after
    /// turn. Bounds the store writes and compression work a single request can cause.
    pub fn max_outputs_per_request(self, max_outputs_per_request: usize) -> Self {
        self.with(|s| s.max_outputs_per_request = max_outputs_per_request)
    }

    /// Largest answer to one retrieval call, in bytes (default 64 KiB; values under 2 KiB count
    /// as 2 KiB). A larger original comes in pages: the answer carries the first
    /// lines (or JSON items), says how many there are, and tells the model the `query` that
    /// reads on (`"lines 813-5000"`) or to search with words instead. Query answers are cut to
    /// the same size.
    pub fn max_answer_bytes(self, max_answer_bytes: usize) -> Self {
        self.with(|s| s.max_answer_bytes = max_answer_bytes.max(MIN_ANSWER_BYTES))
    }

    /// Memory for views already computed (default 32 MiB; 0 turns the cache off). A client
    /// sends its whole history every turn, and each large tool output in it gets the same
    /// view every time: the cache computes that view once per output (and tenant, and
    /// context), so a later turn costs a hash of the output instead of the compressors' pass.
    /// Only views are kept, never originals; what goes upstream is the same either way.
    pub fn view_cache_bytes(self, view_cache_bytes: usize) -> Self {
        self.with(|s| {
            s.view_cache_bytes = view_cache_bytes;
            s.views = Arc::new(ViewCache::new(view_cache_bytes));
        })
    }

    /// Time the continuation rounds of one request may take, from the upstream's first answer
    /// (default 60 s). It is checked before every continuation: once spent, no further
    /// continuation is sent and the latest response goes to the client, without the retrieval
    /// tool's calls. A continuation already sent is not cut short (bound each upstream call with
    /// your client's timeout), so the rounds take at most this budget plus one request.
    /// `Duration::ZERO` sends no continuation, and so disables lossy compression, like
    /// `max_rounds(0)`.
    pub fn round_budget(self, round_budget: Duration) -> Self {
        self.with(|s| s.round_budget = round_budget)
    }

    /// Never compress the outputs of these tools (say, file reads the agent will edit, where
    /// every byte matters). Matched against the name of the call that produced the output.
    pub fn exclude_tools<I, N>(self, tools: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        let tools: Arc<[String]> = tools.into_iter().map(Into::into).collect();
        self.with(|s| s.exclude_tools = tools)
    }

    /// Key for ids (default: random per process). Layers that share a secret and a store
    /// issue and resolve the same ids, as replicas of one application need.
    pub fn secret(self, secret: impl AsRef<[u8]>) -> Self {
        let key = IdKey::from_secret(secret.as_ref());
        self.with(|s| s.key = key)
    }

    /// Take the tenant from this header only (default: the first credential header present of
    /// `Authorization`, `api-key`, `x-api-key`, `x-goog-api-key`). Its value is hashed with the
    /// secret; requests without it share the anonymous tenant.
    pub fn tenant_header(self, name: HeaderName) -> Self {
        self.with(|s| s.tenant = TenantSource::Header(name))
    }

    /// Compute the tenant with a function of the request head (a user id, an API key from a
    /// query parameter…). `None` means the anonymous tenant. The value is hashed with the secret.
    pub fn tenant_with<F>(self, tenant: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.with(|s| s.tenant = TenantSource::Function(Arc::new(tenant)))
    }

    /// Where originals are kept (default: a 256 MiB [`MemoryStore`]). Take [`handle`](Self::handle)
    /// after this call: a handle taken before still points at the previous store.
    pub fn store(self, store: impl Store) -> Self {
        let store: Arc<dyn Store> = Arc::new(store);
        self.with(|s| s.store = store)
    }

    /// A handle for the application: read originals, search them, read statistics. It shares
    /// the layer's store and counters.
    pub fn handle(&self) -> CcrHandle {
        CcrHandle::new(self.shared.clone())
    }
}

impl<S> Layer<S> for CcrLayer {
    type Service = CcrService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CcrService::new(inner, self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(layer: &CcrLayer, request: http::Request<()>) -> crate::TenantId {
        layer.shared.tenant_of(&request.into_parts().0)
    }

    #[test]
    fn the_default_tenant_comes_from_the_first_credential() {
        let layer = CcrLayer::new();
        let with = |name: &str, value: &str| {
            http::Request::post("http://x/v1/chat/completions")
                .header(name, value)
                .body(())
                .unwrap()
        };
        let anonymous = tenant(&layer, http::Request::post("http://x/").body(()).unwrap());
        let alice = tenant(&layer, with("authorization", "Bearer alice"));
        assert_ne!(alice, anonymous);
        assert_eq!(alice, tenant(&layer, with("authorization", "Bearer alice")));
        assert_ne!(alice, tenant(&layer, with("authorization", "Bearer bob")));
        for header in ["api-key", "x-api-key", "x-goog-api-key"] {
            assert_ne!(tenant(&layer, with(header, "k1")), anonymous, "{header}");
            assert_ne!(
                tenant(&layer, with(header, "k1")),
                tenant(&layer, with(header, "k2"))
            );
        }
        let by_query = |uri: &str| tenant(&layer, http::Request::post(uri).body(()).unwrap());
        assert_ne!(
            by_query("http://x/v1beta/models/m:generateContent?key=k1"),
            anonymous
        );
        assert_ne!(
            by_query("http://x/v1beta/models/m:generateContent?alt=sse&key=k1"),
            by_query("http://x/v1beta/models/m:generateContent?key=k2")
        );
        // A configured header or function replaces the default.
        let by_user = CcrLayer::new().tenant_with(|parts| {
            parts
                .headers
                .get("x-user")
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        });
        assert_eq!(
            tenant(&by_user, with("x-user", "u1")),
            tenant(&by_user, with("x-user", "u1"))
        );
        assert_ne!(
            tenant(&by_user, with("x-user", "u1")),
            tenant(&by_user, with("x-user", "u2"))
        );
    }
}
