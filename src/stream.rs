//! Streamed exchanges (`stream: true`): the client's body is built while the upstream streams.
//!
//! Events go to the client as they arrive; the adapter's [`StreamFilter`] holds back only the
//! retrieval tool's calls and the events that end a round. When a round ends with only
//! retrieval calls, the layer answers them, sends the continuation (which streams too) through
//! the inner service and feeds its events to the same filter, so the client reads one response.
//! Dropping the body (the client went away) drops the upstream body and any continuation in
//! flight: upstream work stops with it.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_service::Service;

use crate::BoxError;
use crate::handle::Counters;
use crate::id::{EntryId, TenantId};
use crate::layer::Shared;
use crate::provider::{Adapter, StreamFilter, Turn};
use crate::service::{
    ExchangeRequests, answer_calls, remember_final_turn, round_budget_left, upstream_request,
};
use crate::sse::SseParser;
use crate::upstream::remember_alias;

/// Whether a response streams server-sent events.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// What a streamed exchange keeps for all its rounds.
pub(crate) struct ExchangeContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) adapter: &'static dyn Adapter,
    pub(crate) parts: http::request::Parts,
    pub(crate) issued: HashMap<EntryId, Arc<str>>,
    pub(crate) tenant: TenantId,
    pub(crate) upstream: Option<String>,
    /// The request the exchange started with, kept once a continuation replaces it: ids are
    /// looked up in it, never in a continuation, which holds the model's calls and the layer's
    /// answers (an id the model made up would be "in the conversation" there).
    pub(crate) first_request: std::sync::OnceLock<String>,
    /// When the upstream's first answer arrived: the round budget counts from there.
    pub(crate) rounds_started: std::time::Instant,
}

/// How a round ended, once the layer has looked at it.
enum Outcome<ResBody> {
    /// The continuation's response, streaming.
    Continue(ResBody),
    /// The round was the last one.
    Finish,
    /// The continuation could not be sent or was refused: the client gets an error event.
    /// What went wrong, and what the upstream said about it (for the client only: an error
    /// body may echo the request, so it is never logged).
    Failed(String, String),
}

type Decision<S, ResBody> = Pin<Box<dyn Future<Output = (S, String, Outcome<ResBody>)> + Send>>;

enum Phase<S, ResBody> {
    /// Reading a round's upstream body.
    Reading {
        body: Pin<Box<ResBody>>,
        inner: S,
        request_body: String,
    },
    /// Answering the round's retrieval calls and sending the continuation.
    Deciding(Decision<S, ResBody>),
    Done,
}

/// The client's body of a streamed exchange.
pub(crate) struct StreamedExchange<S, ReqBody, ResBody> {
    context: Arc<ExchangeContext>,
    phase: Phase<S, ResBody>,
    parser: SseParser,
    filter: Box<dyn StreamFilter>,
    /// What the client gets next.
    out: Vec<Bytes>,
    /// Rounds done so far.
    round: usize,
    /// The upstream id of the first round's response, which the client sees for all rounds.
    first_response_id: Option<String>,
    _request: PhantomData<fn() -> ReqBody>,
}

// No field is structurally pinned: the upstream body and the decision future are boxed.
impl<S, ReqBody, ResBody> Unpin for StreamedExchange<S, ReqBody, ResBody> {}

impl<S, ReqBody, ResBody> StreamedExchange<S, ReqBody, ResBody> {
    pub(crate) fn new(
        context: ExchangeContext,
        filter: Box<dyn StreamFilter>,
        inner: S,
        request_body: String,
        body: ResBody,
    ) -> Self {
        let limit = context.shared.max_body_bytes;
        Self {
            context: Arc::new(context),
            phase: Phase::Reading {
                body: Box::pin(body),
                inner,
                request_body,
            },
            parser: SseParser::new(limit),
            filter,
            out: Vec::new(),
            round: 0,
            first_response_id: None,
            _request: PhantomData,
        }
    }

    fn fail(&mut self, message: &str) {
        self.fail_with(message, "");
    }

    fn fail_with(&mut self, message: &str, upstream_said: &str) {
        tracing::warn!(
            api = self.context.adapter.name(),
            message,
            "streamed exchange failed"
        );
        let event = if upstream_said.is_empty() {
            self.filter.error_event(message)
        } else {
            self.filter
                .error_event(&format!("{message}: {upstream_said}"))
        };
        self.out.push(event);
        self.phase = Phase::Done;
    }

    /// Everything waiting for the client, as one chunk.
    fn take_out(&mut self) -> Bytes {
        if self.out.len() == 1 {
            return self.out.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(self.out.iter().map(Bytes::len).sum());
        self.out
            .drain(..)
            .for_each(|chunk| joined.extend_from_slice(&chunk));
        joined.freeze()
    }
}

impl<S, ReqBody, ResBody> Body for StreamedExchange<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: From<Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.take_out()))));
            }
            match &mut this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Reading { body, .. } => match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue; // Trailers of an event stream carry nothing for the client.
                        };
                        let (filter, out) = (&mut this.filter, &mut this.out);
                        if this
                            .parser
                            .push(&data, |event| filter.event(event, out))
                            .is_err()
                        {
                            this.fail("an upstream event was larger than max_body_bytes");
                        } else if this.filter.gave_up() {
                            // The client has its error event: the upstream is dropped.
                            this.phase = Phase::Done;
                        }
                    }
                    Some(Err(error)) => {
                        let error: BoxError = error.into();
                        if this.round == 0 {
                            // As the client would have seen it without the layer.
                            this.phase = Phase::Done;
                            return Poll::Ready(Some(Err(error)));
                        }
                        this.fail(&format!("the continuation's stream broke: {error}"));
                    }
                    None => {
                        let (filter, out) = (&mut this.filter, &mut this.out);
                        this.parser.finish(|event| filter.event(event, out));
                        let response = this.filter.end_round();
                        if this.round > 0 && response.is_none() && this.filter.cut_short() {
                            this.fail("the continuation's stream ended before its response");
                            continue;
                        }
                        if this.round == 0 {
                            this.first_response_id = response
                                .as_deref()
                                .and_then(|response| this.context.adapter.response_id(response));
                        }
                        let Phase::Reading {
                            inner,
                            request_body,
                            ..
                        } = std::mem::replace(&mut this.phase, Phase::Done)
                        else {
                            unreachable!("matched above")
                        };
                        this.phase = Phase::Deciding(Box::pin(decide(
                            this.context.clone(),
                            inner,
                            request_body,
                            response,
                            this.round,
                            this.first_response_id.clone(),
                        )));
                    }
                },
                Phase::Deciding(decision) => {
                    let (inner, request_body, outcome) = ready!(decision.as_mut().poll(cx));
                    match outcome {
                        Outcome::Continue(body) => {
                            this.filter.next_round();
                            this.round += 1;
                            this.phase = Phase::Reading {
                                body: Box::pin(body),
                                inner,
                                request_body,
                            };
                        }
                        Outcome::Finish => {
                            this.filter.finish(&mut this.out);
                            this.phase = Phase::Done;
                        }
                        Outcome::Failed(message, upstream_said) => {
                            this.fail_with(&message, &upstream_said)
                        }
                    }
                }
            }
        }
    }
}

/// Looks at a round that ended: answers its retrieval calls and sends the continuation, or
/// settles the exchange.
async fn decide<S, ReqBody, ResBody>(
    context: Arc<ExchangeContext>,
    mut inner: S,
    request_body: String,
    response: Option<String>,
    round: usize,
    first_response_id: Option<String>,
) -> (S, String, Outcome<ResBody>)
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Send,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: From<Bytes>,
    ResBody: Body<Data = Bytes> + Send,
    ResBody::Error: Into<BoxError>,
{
    let ExchangeContext {
        shared,
        adapter,
        parts,
        issued,
        tenant,
        upstream,
        first_request,
        rounds_started,
    } = &*context;
    let Some(response) = response else {
        return (inner, request_body, Outcome::Finish);
    };
    let conversation = upstream
        .is_none()
        .then(|| first_request.get().unwrap_or(&request_body).as_str());
    if round < shared.max_rounds
        && let Ok(Turn::Retrieve(calls)) = adapter.read_turn(&response, &shared.tool_name)
        && round_budget_left(shared, *rounds_started)
    {
        let answers = answer_calls(shared, tenant, issued, conversation, calls).await;
        let force_final = round + 1 == shared.max_rounds;
        match adapter.continuation(&request_body, &response, &answers, force_final) {
            Ok(next) => {
                Counters::add(&shared.counters.continuation_rounds, 1);
                tracing::debug!(
                    api = adapter.name(),
                    round = round + 1,
                    calls = answers.len(),
                    "streamed continuation"
                );
                let outcome = continue_upstream(&mut inner, parts, &next).await;
                let _ = first_request.set(request_body);
                return (inner, next, outcome);
            }
            Err(malformed) => {
                tracing::warn!(api = adapter.name(), %malformed, "no continuation; the stream ends without retrieval");
            }
        }
    }
    remember_final_turn(
        shared,
        *adapter,
        tenant,
        issued,
        ExchangeRequests {
            last: &request_body,
            first: first_request.get().unwrap_or(&request_body),
        },
        upstream,
        &response,
    )
    .await;
    // The client saw the first round's id: requests continuing it must continue this round.
    if let (Some(shown), Some(real)) = (first_response_id, adapter.response_id(&response))
        && shown != real
    {
        remember_alias(shared, tenant, &shown, &real).await;
    }
    (inner, request_body, Outcome::Finish)
}

/// Sends a continuation and checks that it streams.
async fn continue_upstream<S, ReqBody, ResBody>(
    inner: &mut S,
    parts: &http::request::Parts,
    body: &str,
) -> Outcome<ResBody>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: From<Bytes>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let ready = match inner.ready().await {
        Ok(ready) => ready,
        Err(error) => {
            return Outcome::Failed(
                format!(
                    "the upstream could not take the continuation: {}",
                    error.into()
                ),
                String::new(),
            );
        }
    };
    let response = match ready.call(upstream_request(parts, body, true)).await {
        Ok(response) => response,
        Err(error) => {
            return Outcome::Failed(
                format!("the continuation request failed: {}", error.into()),
                String::new(),
            );
        }
    };
    if response.status().is_success() && is_event_stream(response.headers()) {
        return Outcome::Continue(response.into_body());
    }
    let status = response.status().as_u16();
    // The start of the upstream's answer tells the client why (an error body, usually).
    let mut excerpt = String::new();
    let mut body = Box::pin(response.into_body());
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            excerpt.push_str(&String::from_utf8_lossy(&data));
            if excerpt.len() > MAX_EXCERPT_BYTES {
                break;
            }
        }
    }
    let excerpt = crate::provider::truncated(excerpt, MAX_EXCERPT_BYTES);
    Outcome::Failed(
        format!("the continuation was answered with {status}"),
        excerpt,
    )
}

/// Most bytes of a refused continuation's body that go into the client's error event.
const MAX_EXCERPT_BYTES: usize = 2_000;
