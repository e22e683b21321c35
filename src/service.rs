//! [`CcrService`]: the request/response loop.

use std::collections::{HashMap, VecDeque};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_service::Service;

use crate::BoxError;
use crate::body::CcrBody;
use crate::compress::{CompressContext, compress_estimated};
use crate::future::ResponseFuture;
use crate::handle::Counters;
use crate::id::{EntryId, TenantId};
use crate::json::{Splice, quote};
use crate::layer::Shared;
use crate::marker::{trailing_marker, view_with_marker};
use crate::provider::{self, Adapter, Answer, Call, Inspection, Turn};
use crate::retrieve;
use crate::store::{Entry, Lookup};
use crate::stream::{ExchangeContext, StreamedExchange, is_event_stream};
use crate::tokens::estimate_tokens;
use crate::upstream::{
    remember_unsettled_calls, remember_upstream_turn, resolve_alias, settle_unsettled_calls,
    upstream_turn_id,
};
use crate::view_cache::Computed;

/// The service [`CcrLayer`](crate::CcrLayer) wraps around an HTTP client.
///
/// Requests of a supported API shape are buffered, their large tool outputs replaced by views
/// with markers, and the retrieval tool added; responses in which the model calls only that
/// tool are answered by the service itself, which sends the continuation through the inner
/// service (at most `max_rounds` times) and returns the last response. Everything else passes
/// through untouched.
///
/// # Clone
/// Cloning clones the inner service and shares the layer's configuration, store and counters.
/// `call` swaps in a clone of the inner service, so the future owns a service that was driven
/// to readiness, and waits for readiness again before every continuation request.
#[derive(Clone)]
pub struct CcrService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CcrService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> std::fmt::Debug for CcrService<S>
where
    S: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CcrService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for CcrService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CcrBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(run(inner, self.shared.clone(), request))
    }
}

/// Upper bound of [`estimate_tokens`] per byte of text, for cheap size tests.
const MAX_TOKENS_PER_BYTE: usize = 3;

/// A request rewritten for upstream, and what answering its retrieval calls needs.
struct Prepared {
    body: String,
    /// Ids whose markers this request carries, with their originals.
    issued: HashMap<EntryId, Arc<str>>,
    tenant: TenantId,
    /// Whether the retrieval tool was added (a marker went out, or the request continues an
    /// upstream turn that had the tool). Without it, the response is none of the layer's
    /// business.
    tool_injected: bool,
    /// The upstream turn the request continues, when its history lives upstream.
    upstream: Option<String>,
}

async fn run<S, B, ResBody>(
    mut inner: S,
    shared: Arc<Shared>,
    request: Request<B>,
) -> Result<Response<CcrBody<ResBody>>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Some(adapter) = eligible(&shared, &request) else {
        return passthrough(inner.call(request).await);
    };
    let (parts, body) = request.into_parts();
    let (bytes, complete) = read_request_body(body, shared.max_body_bytes).await?;
    if !complete {
        tracing::debug!(
            api = adapter.name(),
            bytes = bytes.len(),
            "request over max_body_bytes; passed through"
        );
        return passthrough(inner.call(Request::from_parts(parts, B::from(bytes))).await);
    }
    let prepared = match prepare(&shared, adapter, &parts, &bytes).await {
        Ok(Some(prepared)) => prepared,
        Ok(None) => {
            return passthrough(inner.call(Request::from_parts(parts, B::from(bytes))).await);
        }
        Err(error) => {
            Counters::add(&shared.counters.requests_failed_open, 1);
            tracing::warn!(api = adapter.name(), %error, "ccr failed; request sent unchanged");
            return passthrough(inner.call(Request::from_parts(parts, B::from(bytes))).await);
        }
    };
    exchange(inner, &shared, adapter, &parts, prepared).await
}

/// The request header that turns the layer off for one request: `x-ccr: off`.
pub const OPT_OUT_HEADER: &str = "x-ccr";

/// The adapter for a request the layer may rewrite, judged from its head alone (so that
/// everything else streams through without being buffered).
fn eligible<B: Body>(shared: &Shared, request: &Request<B>) -> Option<&'static dyn Adapter> {
    let adapter = provider::select(request.method(), request.uri())?;
    let headers = request.headers();
    if headers
        .get(OPT_OUT_HEADER)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"off"))
    {
        return None;
    }
    let encoded = headers
        .get(CONTENT_ENCODING)
        .is_some_and(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"));
    let not_json = headers.get(CONTENT_TYPE).is_some_and(|value| {
        !value
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("json")
    });
    // Buffer only a body whose size is known to fit: one of unknown length streams through as it
    // came, instead of being held in memory whole.
    let declared_len = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .or_else(|| request.body().size_hint().upper());
    let fits = declared_len.is_some_and(|len| len <= shared.max_body_bytes as u64);
    (!encoded && !not_json && fits).then_some(adapter)
}

/// Reads a request body whole. `false` when it was larger than `limit`: then it is forwarded
/// unchanged (an `http_body::Body` the client gave cannot be rebuilt from a stream, only from
/// bytes, so the rest is read too).
async fn read_request_body<B>(body: B, limit: usize) -> Result<(Bytes, bool), BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(mut data) = frame.map_err(Into::into)?.into_data() {
            let chunk = data.copy_to_bytes(data.remaining());
            total += chunk.len();
            chunks.push(chunk);
        }
    }
    let bytes = if chunks.len() == 1 {
        chunks.pop().unwrap_or_default()
    } else {
        let mut joined = BytesMut::with_capacity(total);
        chunks
            .iter()
            .for_each(|chunk| joined.extend_from_slice(chunk));
        joined.freeze()
    };
    Ok((bytes, total <= limit))
}

/// Compresses the request's large tool outputs. `None`: nothing to do, send it unchanged.
async fn prepare(
    shared: &Shared,
    adapter: &dyn Adapter,
    parts: &http::request::Parts,
    bytes: &Bytes,
) -> Result<Option<Prepared>, BoxError> {
    // The token estimate never exceeds three tokens a byte, and escapes only lengthen a JSON
    // string: no literal this short can hold an output worth compressing.
    let min_bytes = shared.min_tokens / MAX_TOKENS_PER_BYTE;
    let Ok(body) = std::str::from_utf8(bytes) else {
        return Ok(None);
    };
    let mut upstream = adapter.upstream_history(body);
    if upstream.is_none() && !adapter.may_hold_outputs(bytes, min_bytes) {
        return Ok(None);
    }
    let tenant = shared.tenant_of(parts);
    let mut splice = Splice::default();
    // A streamed response the client saw under its first round's id continues from its last
    // round, whatever else the request holds.
    if let Some(turn) = &upstream
        && let Some(real) = resolve_alias(shared, &tenant, turn).await
        && adapter.redirect_history(body, &real, &mut splice).is_ok()
    {
        tracing::debug!(api = adapter.name(), shown = %turn, real = %real, "continues the last round of a streamed response");
        upstream = Some(real);
    }
    let redirected_only = |splice: Splice, tenant: TenantId, upstream: Option<String>| {
        if splice.is_empty() {
            return Ok(None);
        }
        Ok(Some(Prepared {
            body: splice.apply(body).ok_or("overlapping edits")?,
            issued: HashMap::new(),
            tenant,
            tool_injected: false,
            upstream,
        }))
    };
    let inspection = match adapter.inspect(body, &shared.tool_name, min_bytes) {
        Ok(inspection) => inspection,
        Err(malformed) => {
            tracing::debug!(api = adapter.name(), %malformed, "not a request of this API; passed through");
            return redirected_only(splice, tenant, upstream);
        }
    };
    let (outputs, redeemable) = match inspection {
        Inspection::Skip(reason) => {
            tracing::debug!(api = adapter.name(), reason, "request passed through");
            return redirected_only(splice, tenant, upstream);
        }
        // Without a way for the model to call the tool, a marker could not be redeemed: only
        // lossless views may go out then.
        Inspection::Outputs {
            outputs,
            redeemable,
        } => (
            outputs,
            redeemable && shared.max_rounds > 0 && !shared.round_budget.is_zero(),
        ),
    };
    // A request that continues an upstream turn the tool was added to keeps the tool: the
    // markers of that turn live upstream, and so must the way to redeem them.
    let sticky = match &upstream {
        Some(turn) if redeemable => matches!(
            shared.store.get(upstream_turn_id(shared, &tenant, turn), shared.retention).await,
            Ok(Lookup::Found(entry)) if entry.tenant == tenant
        ),
        _ => false,
    };
    if let Some(turn) = &upstream {
        settle_unsettled_calls(shared, adapter, &tenant, turn, body, &mut splice).await;
    }
    let mut issued: HashMap<EntryId, Arc<str>> = HashMap::new();
    let (mut tokens_before, mut tokens_after, mut compressed, mut markers) =
        (0u64, 0u64, 0u64, 0u64);
    // Outputs that reached the compressors, in request order: the first
    // `max_outputs_per_request` of them are compressed, later ones are left as they are. The
    // earliest rather than the largest, so that a new output never changes which earlier ones
    // are compressed: the same history keeps giving the same bytes, turn after turn.
    let mut candidates = 0usize;
    for output in outputs {
        // An output that already ends with one of this tenant's markers was compressed by this
        // layer (a request rewritten before, or a stacked layer sharing the store). Its marker
        // must stay redeemable. A marker-like ending with any other id (forged, stale, another
        // tenant's) proves nothing: that output is compressed like any other.
        if let Some(id) = trailing_marker(&output.text) {
            if let Some(original) = issued_original(shared, &tenant, &issued, &id).await {
                if redeemable {
                    issued.insert(id, original);
                    markers += 1;
                }
                continue;
            }
            tracing::debug!(id = %id, "marker-like ending with an id not issued to this tenant");
        }
        if let Some(tool) = &output.tool_name
            && shared.exclude_tools.iter().any(|excluded| excluded == tool)
        {
            continue;
        }
        if output.text.len() > shared.max_original_bytes {
            tracing::debug!(
                bytes = output.text.len(),
                "tool output over max_original_bytes; left as is"
            );
            continue;
        }
        let context = CompressContext {
            query: &output.query,
            tool_name: output.tool_name.as_deref(),
        };
        // What an earlier turn computed for this output, when the view cache still has it:
        // the same tokens and view, without estimating or compressing again.
        let id = shared.key.entry(&tenant, &output.text);
        let cached = shared.views.get(&id, &context);
        let tokens = match &cached {
            Some(cached) => cached.tokens,
            None => estimate_tokens(&output.text),
        };
        if tokens < shared.min_tokens {
            continue;
        }
        candidates += 1;
        if candidates > shared.max_outputs_per_request {
            tracing::debug!(
                bytes = output.text.len(),
                "max_outputs_per_request reached; tool output left as is"
            );
            continue;
        }
        let computed = match cached {
            Some(cached) => {
                Counters::add(&shared.counters.views_reused, 1);
                cached
            }
            None => {
                let view = compress_estimated(&output.text, tokens, &context);
                let computed = Arc::new(Computed { tokens, view });
                shared.views.insert(&id, &context, computed.clone());
                computed
            }
        };
        let Some(view) = &computed.view else {
            continue;
        };
        // A lossless view still over `min_tokens` would be compressed again by the next pass
        // over the request (a second layer, a replayed request): it goes out with a marker,
        // which no pass compresses again, whenever the marker can be redeemed.
        let view_tokens = estimate_tokens(&view.text);
        if view.lossless && (view_tokens < shared.min_tokens || !redeemable) {
            tokens_before += tokens as u64;
            tokens_after += view_tokens as u64;
            compressed += 1;
            splice.replace(output.span, quote(&view.text));
            continue;
        }
        if !redeemable {
            continue;
        }
        if !issued.contains_key(&id) {
            let original: Arc<str> = Arc::from(output.text);
            let entry = Entry {
                tenant: tenant.clone(),
                original: original.clone(),
            };
            // Store first, emit the marker only for a resident original.
            match shared.store.put(id.clone(), entry, shared.retention).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(id = %id, "original not resident in the store; output left as is");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(id = %id, %error, "store failed; output left as is");
                    continue;
                }
            }
            issued.insert(id.clone(), original);
        }
        let replacement = view_with_marker(&view.text, view.total, view.unit, view.kept, &id);
        tokens_before += tokens as u64;
        tokens_after += estimate_tokens(&replacement) as u64;
        compressed += 1;
        markers += 1;
        tracing::debug!(id = %id, tokens, view_tokens = estimate_tokens(&replacement), "tool output compressed");
        splice.replace(output.span, quote(&replacement));
    }
    // A marker going out (new, or already in the request) needs the tool that redeems it.
    let tool_injected = markers > 0 || sticky;
    if splice.is_empty() && !tool_injected {
        return Ok(None);
    }
    if tool_injected {
        adapter.inject_tool(body, &shared.tool_name, &mut splice)?;
    }
    let rewritten = splice.apply(body).ok_or("overlapping edits")?;
    let counters = &shared.counters;
    Counters::add(&counters.requests_rewritten, 1);
    Counters::add(&counters.outputs_compressed, compressed);
    Counters::add(&counters.tokens_before, tokens_before);
    Counters::add(&counters.tokens_after, tokens_after);
    Ok(Some(Prepared {
        body: rewritten,
        issued,
        tenant,
        tool_injected,
        upstream,
    }))
}

/// The original behind a marker id found in a request, when the layer issued that id to this
/// tenant: in this request, or earlier (then it is in the store under this tenant).
async fn issued_original(
    shared: &Shared,
    tenant: &TenantId,
    issued: &HashMap<EntryId, Arc<str>>,
    id: &EntryId,
) -> Option<Arc<str>> {
    if let Some(original) = issued.get(id) {
        return Some(original.clone());
    }
    match shared.store.get(id.clone(), shared.retention).await {
        Ok(Lookup::Found(entry)) if entry.tenant == *tenant => Some(entry.original),
        _ => None,
    }
}

/// Whether the continuation rounds that started at `started` may send one more: the layer's
/// `round_budget` is not spent. When it is, the exchange ends with the latest response, without
/// the retrieval tool's calls. Non-streamed and streamed exchanges both ask before every
/// continuation.
pub(crate) fn round_budget_left(shared: &Shared, started: Instant) -> bool {
    let elapsed = started.elapsed();
    if elapsed < shared.round_budget {
        return true;
    }
    Counters::add(&shared.counters.round_budget_exhausted, 1);
    tracing::debug!(
        elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "round_budget spent; the latest response goes back"
    );
    false
}

/// Sends the rewritten request, answers retrieval turns, and returns the response for the
/// client.
async fn exchange<S, B, ResBody>(
    mut inner: S,
    shared: &Arc<Shared>,
    adapter: &'static dyn Adapter,
    parts: &http::request::Parts,
    prepared: Prepared,
) -> Result<Response<CcrBody<ResBody>>, BoxError>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: From<Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Prepared {
        body: mut request_body,
        issued,
        tenant,
        tool_injected,
        upstream,
    } = prepared;
    let mut earlier_usage = Vec::new();
    let mut round = 0;
    let mut response = inner
        .call(upstream_request(parts, &request_body, false))
        .await
        .map_err(Into::into)?;
    // The round budget bounds the time the layer adds to the exchange, from the first answer on.
    let rounds_started = Instant::now();
    // A streamed answer to the first request: the client gets its events as they come.
    let encoded = response
        .headers()
        .get(CONTENT_ENCODING)
        .is_some_and(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"));
    if tool_injected
        && response.status().is_success()
        && is_event_stream(response.headers())
        && !encoded
    {
        let filter = adapter.stream_filter(&shared.tool_name, shared.max_body_bytes);
        let (mut response_parts, body) = response.into_parts();
        response_parts.headers.remove(CONTENT_LENGTH);
        let context = ExchangeContext {
            shared: shared.clone(),
            adapter,
            parts: parts.clone(),
            issued,
            tenant,
            upstream,
            first_request: std::sync::OnceLock::new(),
            rounds_started,
        };
        let streamed = StreamedExchange::new(context, filter, inner, request_body, body);
        return Ok(Response::from_parts(
            response_parts,
            CcrBody::stream(streamed),
        ));
    }
    let mut first_request: Option<String> = None;
    loop {
        if !tool_injected || !inspectable(response.headers(), response.status()) {
            return Ok(response.map(CcrBody::passthrough));
        }
        let (response_parts, body) = response.into_parts();
        let data = match read_response_body(body, shared.max_body_bytes).await? {
            Ok(data) => data,
            Err((chunks, rest)) => {
                tracing::warn!(
                    api = adapter.name(),
                    "response over max_body_bytes; passed through"
                );
                return Ok(Response::from_parts(
                    response_parts,
                    CcrBody::replay(chunks, rest),
                ));
            }
        };
        let Ok(text) = std::str::from_utf8(&data) else {
            return Ok(Response::from_parts(response_parts, CcrBody::full(data)));
        };
        if let Ok(Turn::Retrieve(calls)) = adapter.read_turn(text, &shared.tool_name)
            && round < shared.max_rounds
            && round_budget_left(shared, rounds_started)
        {
            // Ids are looked up in the request the exchange started with, never in a
            // continuation: that holds the model's calls and the layer's answers, so an id the
            // model made up would be "in the conversation" from the second round on.
            let conversation = upstream
                .is_none()
                .then(|| first_request.as_deref().unwrap_or(&request_body));
            let answers = answer_calls(shared, &tenant, &issued, conversation, calls).await;
            round += 1;
            match adapter.continuation(&request_body, text, &answers, round == shared.max_rounds) {
                Ok(next) => {
                    earlier_usage.extend(adapter.usage(text));
                    let replaced = std::mem::replace(&mut request_body, next);
                    first_request.get_or_insert(replaced);
                    Counters::add(&shared.counters.continuation_rounds, 1);
                    tracing::debug!(
                        api = adapter.name(),
                        round,
                        calls = answers.len(),
                        "continuation"
                    );
                    let ready = inner.ready().await.map_err(Into::into)?;
                    response = ready
                        .call(upstream_request(parts, &request_body, true))
                        .await
                        .map_err(Into::into)?;
                    continue;
                }
                Err(malformed) => {
                    tracing::warn!(api = adapter.name(), %malformed, "no continuation; response returned without retrieval calls");
                }
            }
        }
        remember_final_turn(
            shared,
            adapter,
            &tenant,
            &issued,
            ExchangeRequests {
                last: &request_body,
                first: first_request.as_deref().unwrap_or(&request_body),
            },
            &upstream,
            text,
        )
        .await;
        let body = match adapter.finalize(text, &shared.tool_name, &earlier_usage) {
            Ok(Some(rewritten)) => Bytes::from(rewritten),
            Ok(None) => data,
            Err(malformed) => {
                tracing::debug!(api = adapter.name(), %malformed, "response not of this API; returned as is");
                data
            }
        };
        let mut response = Response::from_parts(response_parts, ());
        set_length(response.headers_mut(), body.len());
        return Ok(response.map(|()| CcrBody::full(body)));
    }
}

/// The layer's answers to retrieval calls, in order.
pub(crate) async fn answer_calls(
    shared: &Shared,
    tenant: &TenantId,
    issued: &HashMap<EntryId, Arc<str>>,
    conversation: Option<&str>,
    calls: Vec<Call>,
) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        let text = retrieve::answer(shared, tenant, issued, conversation, &call.arguments).await;
        answers.push(Answer {
            call_id: call.id,
            text,
        });
    }
    answers
}

/// The requests of an exchange, for the bookkeeping of its last response.
pub(crate) struct ExchangeRequests<'a> {
    /// The request sent last (the first, or the latest continuation): its `store` flag says
    /// whether the upstream keeps the response.
    pub(crate) last: &'a str,
    /// The request the exchange started with: ids are looked up in it, never in a
    /// continuation, which quotes the model's calls and the layer's answers.
    pub(crate) first: &'a str,
}

/// Bookkeeping for the response that goes to the client, when its history lives upstream: the
/// answers to retrieval calls the upstream keeps but the client never saw, and the turns the
/// tool was added to.
pub(crate) async fn remember_final_turn(
    shared: &Shared,
    adapter: &dyn Adapter,
    tenant: &TenantId,
    issued: &HashMap<EntryId, Arc<str>>,
    requests: ExchangeRequests<'_>,
    upstream: &Option<String>,
    response: &str,
) {
    let response_id = adapter.response_id(response);
    if let Some(response_id) = &response_id {
        let unsettled = adapter.unsettled_calls(requests.last, response, &shared.tool_name);
        if !unsettled.is_empty() {
            let conversation = upstream.is_none().then_some(requests.first);
            let answers = answer_calls(shared, tenant, issued, conversation, unsettled).await;
            remember_unsettled_calls(shared, tenant, response_id, &answers).await;
        }
    }
    let turns = response_id.into_iter().chain(upstream.clone());
    remember_upstream_turn(shared, tenant, turns).await;
}

/// A 2xx JSON response the layer can read; anything else (errors, encoded or streamed bodies)
/// goes back as it came.
fn inspectable(headers: &HeaderMap, status: http::StatusCode) -> bool {
    let encoded = headers
        .get(CONTENT_ENCODING)
        .is_some_and(|value| !value.as_bytes().eq_ignore_ascii_case(b"identity"));
    let json = headers.get(CONTENT_TYPE).is_none_or(|value| {
        value
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("json")
    });
    status.is_success() && !encoded && json
}

/// Reads a response body whole, or gives back what was read and the rest of the body when it
/// is larger than `limit`.
#[allow(clippy::type_complexity)]
async fn read_response_body<B>(
    body: B,
    limit: usize,
) -> Result<Result<Bytes, (VecDeque<Bytes>, Pin<Box<B>>)>, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    let mut chunks = VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame.map_err(Into::into)?.into_data() {
            total += chunk.len();
            chunks.push_back(chunk);
            if total > limit {
                return Ok(Err((chunks, body)));
            }
        }
    }
    Ok(Ok(if chunks.len() == 1 {
        chunks.pop_front().unwrap_or_default()
    } else {
        let mut joined = BytesMut::with_capacity(total);
        chunks
            .iter()
            .for_each(|chunk| joined.extend_from_slice(chunk));
        joined.freeze()
    }))
}

/// A request for upstream with the head of the client's request and a new body.
pub(crate) fn upstream_request<B: From<Bytes>>(
    parts: &http::request::Parts,
    body: &str,
    continuation: bool,
) -> Request<B> {
    let mut request = Request::new(B::from(Bytes::copy_from_slice(body.as_bytes())));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.extensions_mut() = parts.extensions.clone();
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    set_length(headers, body.len());
    // The layer must read the response to find retrieval calls.
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if continuation {
        // The client's idempotency key must not make the server replay its first answer.
        headers.remove("idempotency-key");
    }
    request
}

fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

fn passthrough<ResBody, E: Into<BoxError>>(
    result: Result<Response<ResBody>, E>,
) -> Result<Response<CcrBody<ResBody>>, BoxError> {
    result
        .map(|response| response.map(CcrBody::passthrough))
        .map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_estimate_stays_under_the_per_byte_bound() {
        let samples = [
            "a".repeat(1000),
            "1 2 3 4 5 6 7 8 9 0 ".repeat(50),
            "a  b  c  d  ".repeat(80),
            "!@#$%^&*()_+{}|:<>?~`".repeat(40),
            "\n\n a\n".repeat(200),
            "aA1 .\n\u{e9}\u{4e2d}".repeat(100),
            "x\ty\rz ".repeat(100),
        ];
        for sample in &samples {
            assert!(
                estimate_tokens(sample) <= sample.len() * MAX_TOKENS_PER_BYTE,
                "{sample:?}"
            );
        }
    }
}
