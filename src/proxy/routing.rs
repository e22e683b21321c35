//! Where a request goes: the upstream base URLs and the rules that pick one by path (and, where
//! the path alone is ambiguous, by the provider's own headers).

use std::fmt;
use std::str::FromStr;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Uri};

use super::ConfigError;

/// OpenAI's API, the default for every path no other rule claims.
pub const DEFAULT_OPENAI_BASE: &str = "https://api.openai.com";
/// Anthropic's API.
pub const DEFAULT_ANTHROPIC_BASE: &str = "https://api.anthropic.com";
/// Google's Gemini API.
pub const DEFAULT_GEMINI_BASE: &str = "https://generativelanguage.googleapis.com";

/// An upstream base URL: `http` or `https`, a host, and an optional path that is put before the
/// request's path (`https://openrouter.ai/api` sends `/v1/chat/completions` to
/// `https://openrouter.ai/api/v1/chat/completions`).
///
/// ```
/// use tower_ccr::proxy::Upstream;
///
/// let upstream: Upstream = "https://openrouter.ai/api/".parse()?;
/// assert_eq!(upstream.to_string(), "https://openrouter.ai/api");
/// assert_eq!(
///     upstream.uri("/v1/chat/completions", Some("x=1"))?.to_string(),
///     "https://openrouter.ai/api/v1/chat/completions?x=1"
/// );
/// assert!("ftp://example.com".parse::<Upstream>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Empty, or `/…` without a trailing slash.
    base_path: String,
}

impl Upstream {
    /// The upstream's host and port, as the `Host` header it gets carries them.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The URI of `path` (which starts with `/`, or is empty) on this upstream, with `query`.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut path_and_query = String::with_capacity(self.base_path.len() + path.len() + 64);
        path_and_query.push_str(&self.base_path);
        path_and_query.push_str(path);
        if path_and_query.is_empty() {
            path_and_query.push('/');
        }
        if let Some(query) = query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(path_and_query)?)
            .build()
    }
}

impl FromStr for Upstream {
    type Err = ConfigError;

    fn from_str(url: &str) -> Result<Self, ConfigError> {
        let invalid = |why: &str| ConfigError::new(format!("upstream URL {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = uri
            .scheme()
            .filter(|scheme| **scheme == Scheme::HTTP || **scheme == Scheme::HTTPS)
            .ok_or_else(|| invalid("the scheme must be http or https"))?
            .clone();
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query is not supported"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            base_path,
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// A path prefix served by an upstream of its own (`--upstream PREFIX=URL`): the prefix is
/// replaced by the URL's path, as nginx's `location /groq/ { proxy_pass https://host/openai/; }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    prefix: String,
    upstream: Upstream,
}

impl Mount {
    /// A mount of `upstream` at `prefix` (which starts with `/`; a trailing `/` is ignored).
    pub fn new(prefix: &str, upstream: Upstream) -> Result<Self, ConfigError> {
        if !prefix.starts_with('/') {
            return Err(ConfigError::new(format!(
                "upstream prefix {prefix:?} must start with /"
            )));
        }
        let prefix = prefix.trim_end_matches('/').to_owned();
        Ok(Self { prefix, upstream })
    }

    /// What of `path` follows the prefix, when the prefix matches whole segments.
    fn rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

impl FromStr for Mount {
    type Err = ConfigError;

    /// `PREFIX=URL`, as `--upstream` takes it.
    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let (prefix, url) = spec
            .split_once('=')
            .ok_or_else(|| ConfigError::new(format!("--upstream {spec:?}: expected PREFIX=URL")))?;
        Self::new(prefix.trim(), url.trim().parse()?)
    }
}

/// The provider whose API a request speaks, for the built-in routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI and every OpenAI-compatible server: the default.
    OpenAi,
    /// Anthropic.
    Anthropic,
    /// Google Gemini (the Generative Language API).
    Gemini,
}

impl Provider {
    /// The provider of a request that no mount claims.
    ///
    /// - **Anthropic**: `/v1/messages` and everything under it, `/v1/complete`, and any request
    ///   that carries an `anthropic-version` header (every Anthropic SDK sends it, so
    ///   `GET /v1/models` of an Anthropic client goes to Anthropic).
    /// - **Gemini**: `/v1beta/…`, `/v1alpha/…`, `/upload/…`; `/v1/models/{model}:{method}` where
    ///   the method is one of Gemini's (`generateContent`, `streamGenerateContent`,
    ///   `countTokens`, `embedContent`, `batchEmbedContents`, …; an OpenAI fine-tuned model id
    ///   such as `ft:gpt-4o:org::id` ends otherwise); `/v1/tunedModels/…`; and any `/v1/…`
    ///   request that carries Google's credential (an `x-goog-api-key` header or a `key` query
    ///   parameter).
    /// - **OpenAI**: everything else (`/v1/chat/completions`, `/v1/responses`, `/v1/models`,
    ///   `/v1/files`, and paths of no known API).
    ///
    /// ```
    /// use http::{HeaderMap, Uri};
    /// use tower_ccr::proxy::Provider;
    ///
    /// let of = |uri: &str| Provider::of(&uri.parse::<Uri>().unwrap(), &HeaderMap::new());
    /// assert_eq!(of("/v1/models"), Provider::OpenAi);
    /// assert_eq!(of("/v1/models/gemini-2.5-flash:generateContent"), Provider::Gemini);
    /// assert_eq!(of("/v1/models/ft:gpt-4o:acme::B1x2"), Provider::OpenAi);
    /// assert_eq!(of("/v1/messages"), Provider::Anthropic);
    /// ```
    pub fn of(uri: &Uri, headers: &HeaderMap) -> Self {
        let path = uri.path();
        if headers.contains_key("anthropic-version")
            || under(path, "/v1/messages")
            || under(path, "/v1/complete")
        {
            return Provider::Anthropic;
        }
        let google_key = headers.contains_key("x-goog-api-key")
            || uri
                .query()
                .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("key=")));
        if under(path, "/v1beta")
            || under(path, "/v1alpha")
            || under(path, "/upload")
            || under(path, "/v1/tunedModels")
            || is_gemini_model_method(path)
            || (google_key && under(path, "/v1"))
        {
            return Provider::Gemini;
        }
        Provider::OpenAi
    }

    /// The provider's name, as routes are labelled in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }
}

/// Whether `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The methods of Gemini's model resource (`models/{model}:{method}`).
const GEMINI_MODEL_METHODS: &[&str] = &[
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "computeTokens",
    "embedContent",
    "batchEmbedContents",
    "batchGenerateContent",
    "asyncBatchEmbedContent",
    "generateAnswer",
    "predict",
    "predictLongRunning",
];

/// `/v1/models/{model}:{method}` with one of Gemini's methods.
fn is_gemini_model_method(path: &str) -> bool {
    path.strip_prefix("/v1/models/")
        .and_then(|model| model.trim_end_matches('/').rsplit_once(':'))
        .is_some_and(|(_, method)| GEMINI_MODEL_METHODS.contains(&method))
}

/// The API a request speaks, as the layer tells them apart (by method and path), for metrics.
/// A request whose path matches but whose body is not of that API (OpenAI's
/// `/v1/threads/{id}/messages` matches Anthropic's `…/messages`) passes through untouched and
/// still counts under the API its path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `POST …/chat/completions`.
    OpenAiChat,
    /// `POST …/responses`.
    OpenAiResponses,
    /// `POST …/messages`.
    Anthropic,
    /// `POST …:generateContent` and `POST …:streamGenerateContent`.
    Gemini,
    /// Anything else: forwarded untouched.
    Other,
}

impl Api {
    /// Every API, in the order metrics list them.
    pub const ALL: [Api; 5] = [
        Api::OpenAiChat,
        Api::OpenAiResponses,
        Api::Anthropic,
        Api::Gemini,
        Api::Other,
    ];

    /// The API of a request.
    ///
    /// ```
    /// use http::Method;
    /// use tower_ccr::proxy::Api;
    ///
    /// let post = |path: &str| Api::of(&Method::POST, &path.parse().unwrap());
    /// assert_eq!(post("/v1/chat/completions"), Api::OpenAiChat);
    /// assert_eq!(post("/v1beta/models/m:streamGenerateContent?alt=sse"), Api::Gemini);
    /// assert_eq!(post("/v1/messages/count_tokens"), Api::Other);
    /// assert_eq!(Api::of(&Method::GET, &"/v1/responses".parse().unwrap()), Api::Other);
    /// ```
    pub fn of(method: &Method, uri: &Uri) -> Self {
        if method != Method::POST {
            return Api::Other;
        }
        let path = uri.path().trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Api::OpenAiChat
        } else if path.ends_with("/responses") {
            Api::OpenAiResponses
        } else if path.ends_with("/messages") {
            Api::Anthropic
        } else if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
            Api::Gemini
        } else {
            Api::Other
        }
    }

    /// The API's label in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai-chat",
            Api::OpenAiResponses => "openai-responses",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
            Api::Other => "other",
        }
    }

    /// The index of the API in [`Api::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The routing table: mounts first (the longest prefix wins), then the provider rules of
/// [`Provider::of`], each provider to its base URL.
#[derive(Clone, Debug)]
pub struct Routes {
    /// Sorted longest prefix first.
    mounts: Vec<Mount>,
    openai: Upstream,
    anthropic: Upstream,
    gemini: Upstream,
}

impl Default for Routes {
    /// The public APIs: [`DEFAULT_OPENAI_BASE`], [`DEFAULT_ANTHROPIC_BASE`],
    /// [`DEFAULT_GEMINI_BASE`], no mounts.
    fn default() -> Self {
        let parse = |url: &str| url.parse().expect("the default upstream URLs are valid");
        Self::new(
            parse(DEFAULT_OPENAI_BASE),
            parse(DEFAULT_ANTHROPIC_BASE),
            parse(DEFAULT_GEMINI_BASE),
        )
    }
}

/// Where one request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The route's label: a provider's name, or a mount's prefix.
    pub route: &'a str,
    /// The upstream's URI for the request.
    pub uri: Uri,
    /// The upstream's host and port, for the `Host` header.
    pub authority: &'a Authority,
}

impl Routes {
    /// A table with these provider base URLs and no mounts.
    pub fn new(openai: Upstream, anthropic: Upstream, gemini: Upstream) -> Self {
        Self {
            mounts: Vec::new(),
            openai,
            anthropic,
            gemini,
        }
    }

    /// Adds a mount; a later mount of the same prefix replaces the earlier one.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts
            .retain(|existing| existing.prefix != mount.prefix);
        self.mounts.push(mount);
        // Longest prefix first, so `/a/b` wins over `/a`.
        self.mounts
            .sort_by_key(|mount| std::cmp::Reverse(mount.prefix.len()));
        self
    }

    /// The base URL of a provider.
    pub fn provider(&self, provider: Provider) -> &Upstream {
        match provider {
            Provider::OpenAi => &self.openai,
            Provider::Anthropic => &self.anthropic,
            Provider::Gemini => &self.gemini,
        }
    }

    /// Every route's label: the providers', then the mounts'.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        [Provider::OpenAi, Provider::Anthropic, Provider::Gemini]
            .into_iter()
            .map(|provider| -> &str { provider.name() })
            .chain(self.mounts.iter().map(|mount| mount.prefix.as_str()))
    }

    /// Where a request with this URI (origin or absolute form: only the path and query count)
    /// and these headers goes.
    pub fn target(&self, uri: &Uri, headers: &HeaderMap) -> Result<Target<'_>, http::Error> {
        let path = uri.path();
        let query = uri.query();
        for mount in &self.mounts {
            if let Some(rest) = mount.rest(path) {
                return Ok(Target {
                    route: &mount.prefix,
                    uri: mount.upstream.uri(rest, query)?,
                    authority: mount.upstream.authority(),
                });
            }
        }
        let provider = Provider::of(uri, headers);
        let upstream = self.provider(provider);
        Ok(Target {
            route: provider.name(),
            uri: upstream.uri(path, query)?,
            authority: upstream.authority(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    fn target(routes: &Routes, uri: &str, with: &[(&'static str, &'static str)]) -> String {
        let target = routes
            .target(&uri.parse().unwrap(), &headers(with))
            .unwrap();
        format!("{} {}", target.route, target.uri)
    }

    #[test]
    fn each_provider_gets_its_paths() {
        let routes = Routes::default();
        for (uri, expected) in [
            (
                "/v1/chat/completions",
                "openai https://api.openai.com/v1/chat/completions",
            ),
            (
                "/v1/responses",
                "openai https://api.openai.com/v1/responses",
            ),
            (
                "/v1/responses/resp_1?include=x",
                "openai https://api.openai.com/v1/responses/resp_1?include=x",
            ),
            ("/v1/models", "openai https://api.openai.com/v1/models"),
            (
                "/v1/models/ft:gpt-4o-mini:acme:custom:B1x2",
                "openai https://api.openai.com/v1/models/ft:gpt-4o-mini:acme:custom:B1x2",
            ),
            ("/v1/files", "openai https://api.openai.com/v1/files"),
            (
                "/anything/else",
                "openai https://api.openai.com/anything/else",
            ),
            ("/", "openai https://api.openai.com/"),
            (
                "/v1/messages",
                "anthropic https://api.anthropic.com/v1/messages",
            ),
            (
                "/v1/messages/count_tokens",
                "anthropic https://api.anthropic.com/v1/messages/count_tokens",
            ),
            (
                "/v1/messages/batches/b_1/results",
                "anthropic https://api.anthropic.com/v1/messages/batches/b_1/results",
            ),
            (
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                "gemini https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            ),
            (
                "/v1beta/models",
                "gemini https://generativelanguage.googleapis.com/v1beta/models",
            ),
            (
                "/v1/models/gemini-2.5-flash:generateContent",
                "gemini https://generativelanguage.googleapis.com/v1/models/gemini-2.5-flash:generateContent",
            ),
            (
                "/v1/models/text-embedding-004:batchEmbedContents",
                "gemini https://generativelanguage.googleapis.com/v1/models/text-embedding-004:batchEmbedContents",
            ),
            (
                "/v1/models?key=AIza",
                "gemini https://generativelanguage.googleapis.com/v1/models?key=AIza",
            ),
            (
                "/upload/v1beta/files",
                "gemini https://generativelanguage.googleapis.com/upload/v1beta/files",
            ),
        ] {
            assert_eq!(target(&routes, uri, &[]), expected, "{uri}");
        }
        // Prefixes match whole segments only.
        assert_eq!(
            target(&routes, "/v1/messagesx", &[]),
            "openai https://api.openai.com/v1/messagesx"
        );
        assert_eq!(
            target(&routes, "/v1betax/models", &[]),
            "openai https://api.openai.com/v1betax/models"
        );
    }

    #[test]
    fn provider_headers_settle_shared_paths() {
        let routes = Routes::default();
        assert_eq!(
            target(
                &routes,
                "/v1/models",
                &[("anthropic-version", "2023-06-01")]
            ),
            "anthropic https://api.anthropic.com/v1/models"
        );
        assert_eq!(
            target(&routes, "/v1/models", &[("x-goog-api-key", "AIza")]),
            "gemini https://generativelanguage.googleapis.com/v1/models"
        );
        // An OpenAI request is not moved by an unrelated header or a `key`-like parameter.
        assert_eq!(
            target(
                &routes,
                "/v1/models?monkey=1",
                &[("authorization", "Bearer sk")]
            ),
            "openai https://api.openai.com/v1/models?monkey=1"
        );
    }

    #[test]
    fn base_paths_and_mounts() {
        let routes = Routes::new(
            "http://127.0.0.1:8000/".parse().unwrap(),
            "https://anthropic.internal/proxy".parse().unwrap(),
            "https://gemini.internal".parse().unwrap(),
        )
        .mount("/groq=https://api.groq.com/openai".parse().unwrap())
        .mount(
            "/groq/special/=http://special.internal:9/x"
                .parse()
                .unwrap(),
        )
        .mount(
            "/v1/embeddings=http://embedder:8080/v1/embeddings"
                .parse()
                .unwrap(),
        );
        for (uri, expected) in [
            (
                "/v1/chat/completions",
                "openai http://127.0.0.1:8000/v1/chat/completions",
            ),
            (
                "/v1/messages?beta=true",
                "anthropic https://anthropic.internal/proxy/v1/messages?beta=true",
            ),
            (
                "/groq/v1/chat/completions",
                "/groq https://api.groq.com/openai/v1/chat/completions",
            ),
            ("/groq", "/groq https://api.groq.com/openai"),
            (
                "/groq/special/v1/responses",
                "/groq/special http://special.internal:9/x/v1/responses",
            ),
            ("/groqx/v1", "openai http://127.0.0.1:8000/groqx/v1"),
            (
                "/v1/embeddings",
                "/v1/embeddings http://embedder:8080/v1/embeddings",
            ),
        ] {
            assert_eq!(target(&routes, uri, &[]), expected, "{uri}");
        }
        assert_eq!(
            routes.labels().collect::<Vec<_>>(),
            [
                "openai",
                "anthropic",
                "gemini",
                "/v1/embeddings",
                "/groq/special",
                "/groq"
            ]
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for url in [
            "api.openai.com",
            "ftp://x",
            "https://user:pw@host",
            "https://host/?q=1",
            "https://",
        ] {
            assert!(url.parse::<Upstream>().is_err(), "{url}");
        }
        for spec in ["groq=https://x", "/groq", "/groq=notaurl"] {
            assert!(spec.parse::<Mount>().is_err(), "{spec}");
        }
    }
}
