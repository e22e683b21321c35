//! [`ResponseFuture`]: what [`CcrService::call`](crate::CcrService) returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::BoxError;
use crate::body::CcrBody;

type Inner<ResBody> =
    Pin<Box<dyn Future<Output = Result<Response<CcrBody<ResBody>>, BoxError>> + Send>>;

/// Response future of [`CcrService`](crate::CcrService). It resolves once the upstream has
/// answered (and, when the model asked for an original, once the continuation rounds are done).
pub struct ResponseFuture<ResBody> {
    inner: Inner<ResBody>,
}

impl<ResBody> ResponseFuture<ResBody> {
    pub(crate) fn new(
        future: impl Future<Output = Result<Response<CcrBody<ResBody>>, BoxError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(future),
        }
    }
}

impl<ResBody> Future for ResponseFuture<ResBody> {
    type Output = Result<Response<CcrBody<ResBody>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<ResBody> fmt::Debug for ResponseFuture<ResBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
