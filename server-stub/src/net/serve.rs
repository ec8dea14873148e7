//! The accept loop: admission, the TLS handshake under a timeout, HTTP/1.1 with
//! a header-read timeout, and a graceful stop.
//!
//! hyper starts its header-read timer whenever a connection may send the next
//! request (right after accept, or after the previous answer), so the one
//! timeout bounds a half-sent head and an idle kept-alive connection alike.
//! Each request, body and answer, gets `request_timeout` (a middleware, see
//! [`request_timeout`]). HTTP/2 is not offered: agents and `flex-admin` speak
//! HTTP/1.1, and one protocol is one set of limits to reason about.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::admission::{Admission, Refused};
use super::client_key;
use crate::config::LimitsConfig;

/// How long open connections get to finish when the server stops.
const DRAIN: Duration = Duration::from_secs(5);
/// Refused connections are logged at most this often (an attack is many).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the loop needs besides the listener and the app.
pub struct Edge {
    pub limits: LimitsConfig,
    pub admission: Admission,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Counts refusals between log lines.
#[derive(Default)]
struct RefusalLog {
    since: Option<Instant>,
    total: u64,
    per_address: u64,
    last: Option<SocketAddr>,
}

impl RefusalLog {
    fn note(&mut self, why: Refused, peer: SocketAddr, admission: &Admission) {
        match why {
            Refused::Total => self.total += 1,
            Refused::PerAddress => self.per_address += 1,
        }
        self.last = Some(peer);
        let now = Instant::now();
        if self
            .since
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            at_total_cap = self.total,
            at_address_cap = self.per_address,
            last_from = %peer.ip(),
            max_connections = admission.total_cap(),
            max_connections_per_address = admission.per_address_cap(),
            "refused connections: the server or one client address holds as many \
             connections as [limits] allows"
        );
        *self = RefusalLog {
            since: Some(now),
            ..RefusalLog::default()
        };
    }
}

/// Accept errors that concern one connection, not the listener.
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// Serves `app` on `listener` until `stop` resolves, then lets open requests
/// finish for a few seconds.
pub async fn run(
    listener: TcpListener,
    app: Router,
    edge: Edge,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(
        edge.limits.request_timeout,
        request_timeout,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(edge.limits.header_read_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let tls = edge.tls.map(TlsAcceptor::from);
    let handshake = edge.limits.tls_handshake_timeout;
    let graceful = GracefulShutdown::new();
    let mut refusals = RefusalLog::default();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if per_connection(&e) => continue,
                Err(e) => {
                    // EMFILE and the like: the connection waits in the backlog;
                    // spinning on it would only burn the CPU others need.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let permit = match edge.admission.admit(client_key(peer.ip())) {
            Ok(p) => p,
            Err(why) => {
                refusals.note(why, peer, &edge.admission);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn({
            let app = app.clone();
            move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move { app.call(req).await }
            }
        });
        let http = Arc::clone(&http);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => match tls_handshake(&acceptor, stream, handshake).await {
                    Some(s) => {
                        watcher
                            .watch(http.serve_connection(TokioIo::new(s), service))
                            .await
                    }
                    None => return,
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::info!("stopped with connections still open after {DRAIN:?}");
        }
    }
    Ok(())
}

async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(?peer, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "TLS handshake not done within {limit:?}");
            None
        }
    }
}

/// Bounds reading the body and answering: a body sent a byte at a time cannot
/// hold a connection (and a request slot) for longer than `limit`. The answer
/// is a 503 (agents retry those with the same claim id; a claim that went
/// through is replayed) and closes the connection, whose body may be half read.
pub async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(?peer, path = %path, "request not received and answered within {limit:?}");
            let body = flex_protocol::api::ErrorBody::new(
                flex_protocol::ErrorCode::Internal,
                format!(
                    "the request was not received and answered within {}s; send it again",
                    limit.as_secs()
                ),
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONNECTION, "close")],
                axum::Json(body),
            )
                .into_response()
        }
    }
}
