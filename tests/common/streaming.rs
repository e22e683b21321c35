//! A scripted upstream that streams server-sent events, for the streaming tests of every API.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tower::{BoxError, Service, service_fn};

use super::{Log, Recorded};

/// An upstream body: scripted chunks, then (optionally) whatever a channel sends, then
/// (optionally) an error.
pub struct TestBody {
    chunks: VecDeque<Bytes>,
    channel: Option<mpsc::UnboundedReceiver<Result<Bytes, BoxError>>>,
    error_at_end: Option<BoxError>,
}

impl TestBody {
    pub fn chunks(chunks: impl IntoIterator<Item = impl Into<Bytes>>) -> Self {
        Self {
            chunks: chunks.into_iter().map(Into::into).collect(),
            channel: None,
            error_at_end: None,
        }
    }

    /// The chunks, then a transport error.
    pub fn broken(chunks: impl IntoIterator<Item = impl Into<Bytes>>) -> Self {
        Self {
            error_at_end: Some("connection reset by upstream".into()),
            ..Self::chunks(chunks)
        }
    }

    /// A body fed by the returned sender; it ends when the sender is dropped.
    pub fn channel() -> (Self, mpsc::UnboundedSender<Result<Bytes, BoxError>>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let body = Self {
            chunks: VecDeque::new(),
            channel: Some(receiver),
            error_at_end: None,
        };
        (body, sender)
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(channel) = &mut self.channel {
            match channel.poll_recv(cx) {
                Poll::Ready(Some(item)) => return Poll::Ready(Some(item.map(Frame::data))),
                Poll::Ready(None) => self.channel = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(self.error_at_end.take().map(Err))
    }
}

/// A 200 `text/event-stream` response with `body`.
pub fn sse(body: TestBody) -> Response<TestBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("x-request-id", "req_stream")
        .body(body)
        .unwrap()
}

/// A 200 `text/event-stream` response of the given events, one chunk each.
pub fn sse_events(events: &[String]) -> Response<TestBody> {
    sse(TestBody::chunks(events.iter().cloned()))
}

/// A JSON error response.
pub fn sse_error(status: StatusCode, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", "req_error")
        .body(TestBody::chunks([body.to_owned()]))
        .unwrap()
}

/// A mock upstream whose answers stream: records every request, answers `script(round, request)`.
pub fn sse_upstream(
    script: impl Fn(usize, &Recorded) -> Response<TestBody> + Send + Sync + 'static,
) -> (
    impl Service<
        Request<Full<Bytes>>,
        Response = Response<TestBody>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Log,
) {
    let log: Log = Arc::default();
    let script = Arc::new(script);
    let recorder = log.clone();
    let service = service_fn(move |request: Request<Full<Bytes>>| {
        let log = recorder.clone();
        let script = script.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let recorded = Recorded {
                headers: parts.headers,
                body,
            };
            let round = {
                let mut log = log.lock().unwrap();
                log.push(recorded.clone());
                log.len() - 1
            };
            Ok::<_, Infallible>(script(round, &recorded))
        }
    });
    (service, log)
}

/// One event a client read: its `event:` name and its data lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The events of a stream the client got (LF line ends; the layer writes no others).
pub fn client_events(text: &str) -> Vec<ClientEvent> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut event = None;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event = Some(value.trim_start().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            (event.is_some() || !data.is_empty()).then(|| ClientEvent {
                event,
                data: data.join("\n"),
            })
        })
        .collect()
}

/// Reads a streamed response whole, or up to its body error.
pub async fn read_stream<B>(
    response: Response<B>,
) -> (http::response::Parts, String, Option<String>)
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    let mut body = std::pin::pin!(body);
    let mut text = Vec::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    (parts, String::from_utf8(text).unwrap(), error)
}

/// Sends `request` through a `CcrLayer` with the defaults over `upstream`, and reads the stream
/// the client gets whole (or up to its body error).
pub async fn stream_through_layer<S>(
    upstream: S,
    request: Request<Full<Bytes>>,
) -> (http::response::Parts, String, Option<String>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<TestBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use tower::{Layer, ServiceExt};
    let service = tower_ccr::CcrLayer::new().layer(upstream);
    read_stream(service.oneshot(request).await.unwrap()).await
}
