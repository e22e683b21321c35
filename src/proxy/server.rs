//! [`Proxy`]: the server, its own endpoints, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_layer::Layer;

use crate::{CcrBody, CcrHandle, CcrLayer, CcrService};

use super::body::ProxyBody;
use super::forward::{Forward, error_chain};
use super::metrics::{Metrics, Outcome};
use super::routing::{Api, Routes};

/// Default for [`Proxy::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Proxy::connect_timeout`].
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The body of a proxy response: the upstream's (through the layer), or one the proxy wrote.
pub type ResponseBody = Either<CcrBody<Incoming>, Full<Bytes>>;

/// The proxy: a [`CcrLayer`] over [`Forward`], served over HTTP/1.1 and cleartext HTTP/2
/// (prior knowledge), with `GET /healthz` and `GET /metrics`.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_ccr::CcrLayer;
/// use tower_ccr::proxy::{Proxy, Routes};
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let routes = Routes::default().mount("/local=http://127.0.0.1:8000".parse().unwrap());
/// let proxy = Proxy::new(CcrLayer::new(), routes).shutdown_timeout(Duration::from_secs(5));
/// let handle = proxy.handle(); // the store and statistics
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(proxy.serve(listener, async move { let _ = stopped.await; }));
/// // … requests …
/// let _ = stop.send(());
/// server.await??; // returns once in-flight responses finished (or the deadline passed)
/// # let _ = handle;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Proxy {
    layer: CcrLayer,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    connect_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Proxy {
    /// A proxy that compresses with `layer` and sends requests where `routes` say.
    pub fn new(layer: CcrLayer, routes: Routes) -> Self {
        let metrics = Arc::new(Metrics::new(routes.labels()));
        Self {
            layer,
            routes: Arc::new(routes),
            metrics,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// How long connecting to an upstream (TCP and TLS) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// After the shutdown signal, how long in-flight requests and streams may go on before
    /// their connections are closed (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The layer's handle: originals, searches, statistics.
    pub fn handle(&self) -> CcrHandle {
        self.layer.handle()
    }

    /// The proxy's metrics (also served at `GET /metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The routing table.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Serves connections from `listener` until `shutdown` completes; then stops accepting,
    /// lets in-flight requests and streams finish (HTTP/1.1 connections close after their
    /// current response, HTTP/2 ones get a GOAWAY; upgraded connections such as WebSockets
    /// go on) for at most the shutdown timeout, closes what is left, and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let forward = Forward::new(
            self.routes.clone(),
            self.metrics.clone(),
            self.connect_timeout,
        );
        let tunnels = forward.tunnels();
        let app = App {
            service: self.layer.layer(forward),
            handle: self.layer.handle(),
            metrics: self.metrics.clone(),
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A timer makes hyper enforce its 30 s limit on reading a request head.
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tracing::info!(addr = %listener.local_addr()?, "listening");
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let app = app.clone();
                    let service = hyper::service::service_fn(move |request| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.respond(request).await) }
                    });
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, error = %error_chain(&*error), "connection ended with an error");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(
            connections = connections.len(),
            deadline_s = self.shutdown_timeout.as_secs_f64(),
            "shutting down: letting in-flight requests finish"
        );
        // Upgraded connections (WebSockets) left hyper's watch when they were handed over:
        // they get the same deadline.
        let finished = async {
            graceful.shutdown().await;
            tunnels.all_closed().await;
        };
        tokio::select! {
            () = finished => tracing::info!("every connection closed"),
            () = tokio::time::sleep(self.shutdown_timeout) => tracing::warn!(
                connections = connections.len(),
                "shutdown deadline passed; closing the remaining connections"
            ),
        }
        connections.shutdown().await;
        tunnels.close_all().await;
        Ok(())
    }
}

/// What answers each request.
#[derive(Clone)]
struct App {
    service: CcrService<Forward>,
    handle: CcrHandle,
    metrics: Arc<Metrics>,
}

impl App {
    async fn respond(self, request: Request<Incoming>) -> Response<ResponseBody> {
        if matches!(*request.method(), Method::GET | Method::HEAD) {
            match request.uri().path() {
                "/healthz" => return own(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
                "/metrics" => {
                    let stats = self.handle.stats().await;
                    return own(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        self.metrics.render(&stats),
                    );
                }
                _ => {}
            }
        }
        let started = Instant::now();
        let api = Api::of(request.method(), request.uri());
        let method = request.method().clone();
        // The path only: a query may carry a key (Gemini's `key=`).
        let path = request.uri().path().to_owned();
        let (response, outcome) = match self
            .service
            .oneshot(request.map(ProxyBody::Streaming))
            .await
        {
            Ok(response) => {
                let outcome = Outcome::of(response.status());
                (response.map(Either::Left), outcome)
            }
            Err(error) => {
                let error = error_chain(&*error);
                tracing::warn!(%method, path, api = api.name(), %error, "no response from the upstream");
                let body = serde_json::json!({"error": {
                    "type": "proxy_error",
                    "message": format!("ccr-proxy: no response from the upstream: {error}"),
                }});
                let response = own(
                    StatusCode::BAD_GATEWAY,
                    "application/json",
                    body.to_string(),
                );
                (response, Outcome::ProxyError)
            }
        };
        self.metrics.request(api, outcome);
        tracing::info!(
            %method,
            path,
            api = api.name(),
            status = response.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "request"
        );
        response
    }
}

/// A response the proxy writes itself.
fn own(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM, for [`Proxy::serve`].
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}
