//! A slow proxy between an agent and `flex-server`: it passes every request
//! on, but keeps the server's answers to the first enrollments to itself (the
//! server has acted, the agent never hears), as a proxy slower than the
//! agent's request timeout or a connection cut mid-answer would.
//!
//! Plain HTTP on loopback (the test servers speak it), axum in front and
//! reqwest behind, on a runtime of its own so that a test may block on an
//! agent's readiness meanwhile. [`Proxy::held`] waits on a signal, not a clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use tokio::sync::watch;

/// The path whose answers the proxy may keep.
const ENROLL: &str = "/v1/agent/enroll";

/// Requests and answers are small JSON documents.
const MAX_BODY: usize = 1 << 20;

struct Shared {
    upstream: String,
    http: reqwest::Client,
    /// Enroll answers still to keep.
    to_hold: AtomicUsize,
    /// Enroll answers kept so far.
    held: watch::Sender<usize>,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub url: String,
    held: watch::Receiver<usize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a loopback port to the server at `upstream` that keeps the
    /// answers of the first `hold` enroll requests.
    pub fn holding_enroll_answers(upstream: &str, hold: usize) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let (held_tx, held_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: crate::http_client(),
            to_hold: AtomicUsize::new(hold),
            held: held_tx,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new().fallback(forward).with_state(shared);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("serve the proxy");
            });
        });
        Proxy {
            url,
            held: held_rx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Waits until `n` enroll answers have been kept from the agent (so the
    /// server has enrolled that many devices), up to `timeout`.
    pub async fn held(&mut self, n: usize, timeout: Duration) {
        let reached = tokio::time::timeout(timeout, self.held.wait_for(|&h| h >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "the proxy kept {} enroll answer(s) within {timeout:?}, not {n}",
            *self.held.borrow()
        );
    }

    /// Enroll answers kept so far.
    pub fn held_now(&self) -> usize {
        *self.held.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A kept answer's handler never ends; the graceful shutdown would wait
        // for it forever, so the thread is left to end with the process.
        drop(self.thread.take());
    }
}

/// Passes `req` to the server; keeps the answer of an enroll request while
/// answers are still to be kept.
async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str())
        .to_string();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .expect("read the request body");
    let mut upstream = shared
        .http
        .request(parts.method.clone(), format!("{}{path}", shared.upstream))
        .body(body);
    for (name, value) in parts.headers.iter().filter(|(n, _)| passed_on(n)) {
        upstream = upstream.header(name, value);
    }
    let answer = match upstream.send().await {
        Ok(a) => a,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(format!("proxy: {e}")))
                .expect("a response")
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();
    let hold = parts.uri.path() == ENROLL
        && shared
            .to_hold
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if hold {
        shared.held.send_modify(|h| *h += 1);
        // The server has answered; the agent never hears (until it gives up).
        std::future::pending::<()>().await;
    }
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in headers.iter().filter(|(n, _)| passed_on(n)) {
        response = response.header(name, value);
    }
    response.body(Body::from(bytes)).expect("a response")
}

/// Headers about this hop (and the length, which each side sets itself) stay.
fn passed_on(name: &axum::http::HeaderName) -> bool {
    use axum::http::header;
    ![
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
    ]
    .contains(name)
}
