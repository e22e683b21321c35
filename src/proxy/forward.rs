//! [`Forward`]: the service under the layer, which sends each request to its upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use crate::BoxError;

use super::body::ProxyBody;
use super::metrics::Metrics;
use super::routing::Routes;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, with the
/// `Proxy-*` and `Keep-Alive` of older practice): never forwarded. `Expect` too: the proxy's own
/// server already answered `100-continue`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "expect",
];

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP client to the upstreams: HTTPS (rustls, Mozilla roots) and plain HTTP, HTTP/1.1.
type UpstreamClient = Client<ConnectWithin<HttpsConnector<HttpConnector>>, ProxyBody>;

/// A connector whose whole connection (DNS, TCP and the TLS handshake) must be made within
/// `limit`: `HttpConnector`'s own timeout bounds each TCP attempt only, so an upstream that
/// accepts and then stalls the handshake would hold the request forever.
#[derive(Clone)]
struct ConnectWithin<C> {
    connector: C,
    limit: Duration,
}

impl<C> Service<http::Uri> for ConnectWithin<C>
where
    C: Service<http::Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let limit = self.limit;
        let connecting = self.connector.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(format!("connecting to the upstream took over {limit:?}").into()),
            }
        })
    }
}

/// The service the proxy wraps in [`CcrLayer`](crate::CcrLayer): it sends a request to the
/// upstream [`Routes`] pick (every continuation round of the layer too), with the `Host` of
/// that upstream and without hop-by-hop headers, and returns the upstream's response head
/// as soon as it arrives, its body streaming. A WebSocket (or other) upgrade is tunnelled.
///
/// # Clone
/// Clones share the connection pool, the routes and the metrics.
#[derive(Clone)]
pub struct Forward {
    client: UpstreamClient,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    tunnels: Tunnels,
}

/// The upgraded connections (WebSockets) a [`Forward`] tunnels: once hyper hands a connection
/// over, the server's graceful shutdown no longer sees it, so the proxy counts them here and
/// can close them at its shutdown deadline.
#[derive(Clone, Debug)]
pub(crate) struct Tunnels {
    /// Tunnels open now.
    open: Arc<tokio::sync::watch::Sender<usize>>,
    /// Set to `true` to close every tunnel.
    close: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Self {
            open: Arc::new(tokio::sync::watch::Sender::new(0)),
            close: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl Tunnels {
    /// Waits until no tunnel is open.
    pub(crate) async fn all_closed(&self) {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open == 0).await;
    }

    /// Closes every tunnel (open now or opened later) and waits until they are gone.
    pub(crate) async fn close_all(&self) {
        self.close.send_replace(true);
        self.all_closed().await;
    }

    /// Counts a tunnel as open until the returned guard is dropped.
    fn opened(&self) -> TunnelGuard {
        self.open.send_modify(|open| *open += 1);
        TunnelGuard(self.open.clone())
    }
}

struct TunnelGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// A forwarder over a new connection pool; connecting to an upstream gives up after
    /// `connect_timeout`.
    pub fn new(routes: Arc<Routes>, metrics: Arc<Metrics>, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // The provider is named so that no other crate's choice of a default can change it.
        let https = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .expect("ring supports rustls' safe default protocol versions")
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let connector = ConnectWithin {
            connector: https,
            limit: connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            routes,
            metrics,
            tunnels: Tunnels::default(),
        }
    }

    /// The tunnels this forwarder (and its clones) opened.
    pub(crate) fn tunnels(&self) -> Tunnels {
        self.tunnels.clone()
    }
}

type ForwardFuture = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The pooled client queues requests itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<ProxyBody>) -> ForwardFuture {
        let started = Instant::now();
        let target = match self.routes.target(request.uri(), request.headers()) {
            Ok(target) => target,
            Err(error) => return Box::pin(std::future::ready(Err(error.into()))),
        };
        let route = target.route.to_owned();
        let upgrade = upgrade_protocol(request.headers());
        let headers = request.headers_mut();
        remove_hop_by_hop(headers);
        // The client sets `Host` from the URI: the upstream's own name, as TLS (SNI) needs.
        headers.remove(HOST);
        let client_upgrade = upgrade.map(|protocol| {
            let headers = request.headers_mut();
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, protocol);
            hyper::upgrade::on(&mut request)
        });
        *request.uri_mut() = target.uri;
        // Upstreams are spoken to in HTTP/1.1, whatever the client used.
        *request.version_mut() = Version::HTTP_11;
        let sent = self.client.request(request);
        let metrics = self.metrics.clone();
        let tunnels = self.tunnels.clone();
        Box::pin(async move {
            match sent.await {
                Ok(mut response) => {
                    let elapsed = started.elapsed();
                    metrics.upstream_latency(&route, elapsed);
                    tracing::debug!(
                        route,
                        status = response.status().as_u16(),
                        ms = elapsed.as_secs_f64() * 1e3,
                        "upstream answered"
                    );
                    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    match client_upgrade {
                        Some(client_upgrade) if upgraded => {
                            let protocol = response.headers().get(UPGRADE).cloned();
                            let upstream_upgrade = hyper::upgrade::on(&mut response);
                            remove_hop_by_hop(response.headers_mut());
                            if let Some(protocol) = protocol {
                                let headers = response.headers_mut();
                                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                                headers.insert(UPGRADE, protocol);
                            }
                            let guard = tunnels.opened();
                            let closing = tunnels.close.subscribe();
                            tokio::spawn(async move {
                                let _open = guard;
                                tunnel(route, client_upgrade, upstream_upgrade, closing).await;
                            });
                        }
                        _ => remove_hop_by_hop(response.headers_mut()),
                    }
                    Ok(response)
                }
                Err(error) => {
                    metrics.upstream_error(&route);
                    tracing::warn!(route, error = %error_chain(&error), "upstream request failed");
                    Err(error.into())
                }
            }
        })
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` with `Upgrade: …`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(UPGRADE).cloned()).flatten()
}

/// Removes hop-by-hop headers, those the `Connection` header names included.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Copies bytes both ways between an upgraded client connection and its upstream connection,
/// until either side closes or `closing` turns `true` (the proxy's shutdown deadline).
async fn tunnel(
    route: String,
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let upgraded = async { tokio::try_join!(client, upstream) };
    let upgraded = tokio::select! {
        upgraded = upgraded => upgraded,
        () = close_requested(&mut closing) => return,
    };
    let (client, upstream) = match upgraded {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(route, %error, "upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((sent, received)) => tracing::debug!(route, sent, received, "tunnel closed"),
            Err(error) => tracing::debug!(route, %error, "tunnel broke"),
        },
        () = close_requested(&mut closing) => {
            tracing::debug!(route, "tunnel closed at the shutdown deadline");
        }
    }
}

/// Completes when the tunnels are told to close; never when the forwarder that could tell them
/// is gone (a tunnel then lives until one of its sides closes).
async fn close_requested(closing: &mut tokio::sync::watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An error and its causes, on one line (hyper-util's errors say little at the top).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Trace-Hop"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
            ("upgrade", "websocket"),
            ("authorization", "Bearer sk"),
            ("x-stays", "1"),
            ("x-stays", "2"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        assert_eq!(
            upgrade_protocol(&headers),
            None,
            "no `upgrade` token in Connection"
        );
        remove_hop_by_hop(&mut headers);
        let left: Vec<_> = headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            left,
            ["authorization: Bearer sk", "x-stays: 1", "x-stays: 2"]
        );
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&headers), None);
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(
            upgrade_protocol(&headers),
            Some(HeaderValue::from_static("websocket"))
        );
    }
}
