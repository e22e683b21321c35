//! [`async-openai`](https://docs.rs/async-openai) integration (feature `async-openai`): a
//! service for `Client::with_http_service` that runs every request through [`CcrLayer`] over a
//! reqwest transport.
//!
//! ```no_run
//! use async_openai::{Client, config::OpenAIConfig};
//! use tower_ccr::CcrLayer;
//! use tower_ccr::async_openai::CcrHttpService;
//!
//! let layer = CcrLayer::new();
//! let handle = layer.handle();
//! let client = Client::with_config(OpenAIConfig::new().with_api_base("http://127.0.0.1:8080/v1"))
//!     .with_http_service(CcrHttpService::new(&layer, reqwest::Client::new()));
//! # let _ = (client, handle);
//! ```
//!
//! async-openai's default client retries 429 and 5xx answers; `with_http_service` replaces that
//! stack, so add `async_openai::middleware::retry::OpenAIRetryLayer` above this service (with
//! `tower::ServiceBuilder`) to keep retries. For `https` upstreams, enable a TLS feature of
//! reqwest (for example async-openai's `rustls` feature).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::async_openai::error::OpenAIError;
use ::async_openai::middleware::HttpRequestFactory;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, CcrLayer, CcrService};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A `reqwest::Client` as a tower service of `http` requests and responses: the transport
/// under [`CcrLayer`].
///
/// # Clone
/// Cloning is cheap: reqwest clients share their connection pool.
#[derive(Clone, Debug, Default)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A transport on `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }
}

impl Service<http::Request<reqwest::Body>> for ReqwestTransport {
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<reqwest::Body>) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            Ok(http::Response::from(response))
        })
    }
}

/// The service to give `async_openai::Client::with_http_service`: async-openai's request
/// factory in, `reqwest::Response` out, [`CcrLayer`] in between.
///
/// # Clone
/// Cloning is cheap; clones share the layer's store and statistics.
#[derive(Clone, Debug)]
pub struct CcrHttpService {
    inner: CcrService<ReqwestTransport>,
}

impl CcrHttpService {
    /// Runs `layer` over `client`.
    pub fn new(layer: &CcrLayer, client: reqwest::Client) -> Self {
        Self {
            inner: layer.layer(ReqwestTransport::new(client)),
        }
    }
}

fn to_openai_error(error: BoxError) -> OpenAIError {
    match error.downcast::<reqwest::Error>() {
        Ok(error) => OpenAIError::Reqwest(*error),
        Err(error) => OpenAIError::Boxed(error),
    }
}

impl Service<HttpRequestFactory> for CcrHttpService {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<reqwest::Body>>::poll_ready(&mut self.inner, cx)
            .map_err(to_openai_error)
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let request = factory.build().await?;
            let request = http::Request::<reqwest::Body>::try_from(request)?;
            let response = inner.oneshot(request).await.map_err(to_openai_error)?;
            Ok(reqwest::Response::from(response.map(reqwest::Body::wrap)))
        })
    }
}
