//! [`CcrBody`]: the response body the client gets.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sync_wrapper::SyncWrapper;

use crate::BoxError;

pin_project! {
    /// The response body of [`CcrService`](crate::CcrService): the upstream body as it came, or a
    /// body the layer rewrote (a response with the retrieval tool's calls removed, or the answer
    /// of the last continuation round).
    ///
    /// It is `Send` and `Sync` whenever the upstream body is, so it fits clients that need a
    /// `Sync` body (reqwest's `Body::wrap`).
    pub struct CcrBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // The upstream body, untouched.
        Passthrough { #[pin] body: B },
        // A body the layer holds in full.
        Full { data: Option<Bytes> },
        // Chunks already read, then the rest of the upstream body.
        Replay { chunks: VecDeque<Bytes>, rest: Pin<Box<B>> },
        // A streamed exchange: the upstream's events, the retrieval tool's taken out, over as
        // many rounds as the model retrieves. Only ever polled through `&mut`, so it is `Sync`.
        Stream { body: SyncWrapper<Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>> },
    }
}

impl<B> CcrBody<B> {
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough { body },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn stream(body: impl Body<Data = Bytes, Error = BoxError> + Send + 'static) -> Self {
        Self {
            kind: Kind::Stream {
                body: SyncWrapper::new(Box::pin(body)),
            },
        }
    }

    pub(crate) fn replay(chunks: VecDeque<Bytes>, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Replay { chunks, rest },
        }
    }
}

impl<B> std::fmt::Debug for CcrBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Full { .. } => "Full",
            Kind::Replay { .. } => "Replay",
            Kind::Stream { .. } => "Stream",
        };
        f.debug_struct("CcrBody").field("kind", &kind).finish()
    }
}

impl<B> Body for CcrBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Full { data } => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            KindProj::Replay { chunks, rest } => match chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => rest.as_mut().poll_frame(cx).map_err(Into::into),
            },
            KindProj::Stream { body } => body.get_mut().as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Replay { chunks, rest } => chunks.is_empty() && rest.is_end_stream(),
            // Only `&mut` reaches the stream; it says when it ends by ending.
            Kind::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Replay { chunks, rest } => {
                let buffered: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + buffered);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
            Kind::Stream { .. } => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn stays_send_and_sync() {
        assert_send_sync::<CcrBody<Full<Bytes>>>();
    }

    #[tokio::test]
    async fn replay_yields_buffered_chunks_then_the_rest() {
        let body = CcrBody::replay(
            VecDeque::from([Bytes::from("ab"), Bytes::from("c")]),
            Box::pin(Full::new(Bytes::from("de"))),
        );
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "abcde");
        let full = CcrBody::<Full<Bytes>>::full(Bytes::from("xyz"));
        assert_eq!(full.collect().await.unwrap().to_bytes(), "xyz");
    }
}
