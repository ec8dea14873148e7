//! The agent's local socket: newline-delimited JSON over a Unix socket.
//!
//! [`SocketServer`] owns the listener (bound by [`SocketServer::bind`] or handed over
//! by systemd), accepts at most `max_connections` clients at a time and serves each
//! one with [`serve_connection`]. A connection reads one [`Request`] per line, capped
//! at [`MAX_LINE`]; oversize and malformed lines get an `invalid_request` reply and
//! the connection goes on. `hello` and the `user`-field permission check are handled
//! here; every other request goes to the daemon's [`Handler`].
//!
//! A reply may carry an event stream ([`Reply::with_events`]). From then on the
//! connection also writes each [`Event`] the daemon sends as a line of its own
//! (`{"event":...}`), still answering further requests, and is exempt from the idle
//! timeout. This is how `subscribe` works, and how a wrapper learns that its
//! session was closed: the daemon answers a granted `launch` with a stream and, to
//! close the session, sends `Event::ProductClosed` on it (see [`Handler`]).

mod line;
#[cfg(unix)]
mod listen;
#[cfg(unix)]
mod peer;
#[cfg(windows)]
mod peer_windows;
#[cfg(windows)]
mod pipe_windows;

#[cfg(all(test, unix))]
pub(crate) mod fake;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flex_protocol::socket::{ErrReply, Event, HelloReply, OkReply, Request, MAX_LINE};
use flex_protocol::{ErrorCode, PROTOCOL_VERSION};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

pub use line::{write_json, write_line, LineRead, LineReader};
#[cfg(unix)]
pub use listen::{bind_path, systemd_listener, ListenOrigin};
#[cfg(unix)]
pub use peer::{account_name, process_uid, Peer};
#[cfg(windows)]
pub use peer_windows::{account_name, account_uid, account_uid_by_name, process_uid, Peer};
#[cfg(windows)]
pub use pipe_windows::PipeListener;

/// The platform's listener: a Unix socket, or the named pipe on Windows.
#[cfg(unix)]
type Listener = UnixListener;
#[cfg(windows)]
type Listener = PipeListener;

/// Where the listener came from, for logs and status (Windows: always bound).
#[cfg(windows)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenOrigin {
    Bound,
}

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another flex-agent already answers on {path}: stop it first (systemctl stop flex-agent)"
    )]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket: refusing to remove it; move it away or choose another socket_path")]
    NotASocket { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One reply line, plus optionally a stream of events to forward on the same
/// connection afterwards.
#[derive(Debug)]
pub struct Reply {
    line: String,
    events: Option<mpsc::Receiver<Event>>,
}

impl Reply {
    /// `{"ok":true, ...data}`; `data` must serialize to a JSON object.
    pub fn ok<T: Serialize>(data: T) -> Reply {
        match serde_json::to_string(&OkReply::new(data)) {
            Ok(line) => Reply { line, events: None },
            Err(e) => Reply::error(ErrorCode::Internal, format!("cannot encode reply: {e}")),
        }
    }

    /// `{"ok":false,"error":{"code","message"}}`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        let line = serde_json::to_string(&ErrReply::new(code, message))
            .expect("an error reply always encodes");
        Reply { line, events: None }
    }

    /// Forward `events` on this connection after the reply, until the sender is
    /// dropped or the client disconnects. Replaces any stream the connection had.
    pub fn with_events(mut self, events: mpsc::Receiver<Event>) -> Reply {
        self.events = Some(events);
        self
    }

    /// The JSON line, without its newline.
    pub fn line(&self) -> &str {
        &self.line
    }
}

/// What the daemon plugs into the socket server.
///
/// The server has already checked, before calling [`Handler::handle`], that a
/// `user` field in `launch`/`result` names the peer's own account unless the peer is
/// root, so `peer.acting_user(user)` is safe to use, and that a `pid` in `attach` or
/// `launch` is a process of the peer's uid (any process for root), so the agent
/// never stops someone else's process on a wrapper's word. `attach` and `exit` name
/// a session: the handler must check that the session belongs to `peer.uid` (or
/// that the peer is root).
///
/// Run sessions: answer a granted `launch` with `Reply::ok(LaunchReply).with_events(rx)`
/// and keep the sender with the session. To close the session send
/// `Event::ProductClosed` on it: `flexctl run` then stops its child gracefully
/// (SIGTERM, SIGKILL after a grace period) and reports `exit`. The sender's
/// `closed()` resolves when the wrapper's connection goes away, which tells the
/// daemon that the wrapper died without reporting an exit.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request other than `hello` and `subscribe`.
    fn handle(&self, peer: &Peer, req: Request) -> impl Future<Output = Reply> + Send;

    /// The events for `peer`'s account, for `subscribe`.
    fn subscribe(&self, peer: &Peer) -> mpsc::Receiver<Event>;
}

/// Limits and modes of the socket.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Mode of the socket file: 0666 so every local user can connect; identity
    /// comes from peer credentials, not from the file mode.
    pub mode: u32,
    pub max_connections: usize,
    /// A connection without an event stream that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A client that does not read its replies for this long is dropped.
    pub write_timeout: Duration,
}

impl SocketConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SocketConfig {
            path: path.into(),
            mode: 0o666,
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A listening local socket, ready to [`serve`](SocketServer::serve).
pub struct SocketServer {
    listener: Listener,
    config: SocketConfig,
    origin: ListenOrigin,
}

impl SocketServer {
    /// Takes the socket from systemd when socket-activated, else binds `config.path`.
    /// Must be called inside a tokio runtime.
    #[cfg(unix)]
    pub fn bind(config: SocketConfig) -> Result<SocketServer, SocketError> {
        let (std, origin) = match systemd_listener() {
            Some(l) => (l, ListenOrigin::Systemd),
            None => (bind_path(&config.path, config.mode)?, ListenOrigin::Bound),
        };
        let listener = UnixListener::from_std(std).map_err(|e| SocketError::Io {
            action: "register listener",
            path: config.path.clone(),
            source: e,
        })?;
        Ok(SocketServer {
            listener,
            config,
            origin,
        })
    }

    /// Creates the named pipe `config.path` (`\\.\pipe\flex-agent`).
    /// Must be called inside a tokio runtime.
    #[cfg(windows)]
    pub fn bind(config: SocketConfig) -> Result<SocketServer, SocketError> {
        Ok(SocketServer {
            listener: PipeListener::bind(&config.path)?,
            config,
            origin: ListenOrigin::Bound,
        })
    }

    /// Wraps a listener the caller bound.
    #[cfg(unix)]
    pub fn from_listener(listener: UnixListener, config: SocketConfig) -> SocketServer {
        SocketServer {
            listener,
            config,
            origin: ListenOrigin::Bound,
        }
    }

    pub fn origin(&self) -> ListenOrigin {
        self.origin
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Accepts and serves clients until `shutdown` resolves, then drops every
    /// connection and, if the agent bound the path itself, removes it.
    pub async fn serve<H: Handler>(self, handler: Arc<H>, shutdown: impl Future<Output = ()>) {
        #[allow(unused_mut)] // accepting a pipe client replaces its instance
        let SocketServer {
            mut listener,
            config,
            origin,
        } = self;
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let next_id = AtomicU64::new(1);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = accept(&mut listener) => {
                    let stream = match accepted {
                        Ok(stream) => stream,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accepting a socket client failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        let reply = Reply::error(
                            ErrorCode::Internal,
                            format!("flex-agent is serving {} connections, its limit: retry shortly", config.max_connections),
                        );
                        // Best effort without blocking the accept loop; then close.
                        let _ = stream.try_write(format!("{}\n", reply.line()).as_bytes());
                        continue;
                    };
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let handler = handler.clone();
                    let limits = config.clone();
                    conns.spawn(async move {
                        let _permit = permit;
                        match peer_of(&stream, id, limits.idle_timeout).await {
                            Ok(peer) => serve_connection(stream, peer, handler, &limits).await,
                            Err(e) => tracing::warn!(error = %e, "cannot read peer credentials; closing"),
                        }
                    });
                }
            }
        }
        conns.shutdown().await;
        #[cfg(unix)]
        if origin == ListenOrigin::Bound {
            let _ = std::fs::remove_file(&config.path);
        }
        #[cfg(windows)]
        let _ = (origin, config);
    }
}

#[cfg(unix)]
async fn accept(listener: &mut Listener) -> std::io::Result<tokio::net::UnixStream> {
    listener.accept().await.map(|(stream, _)| stream)
}

#[cfg(windows)]
async fn accept(
    listener: &mut Listener,
) -> std::io::Result<tokio::net::windows::named_pipe::NamedPipeServer> {
    listener.accept().await
}

#[cfg(unix)]
async fn peer_of(
    stream: &tokio::net::UnixStream,
    id: u64,
    _idle: Duration,
) -> std::io::Result<Peer> {
    Peer::from_stream(stream, id).await
}

/// A pipe client's identity needs its first request: one that sends nothing
/// is dropped after the idle timeout.
#[cfg(windows)]
async fn peer_of(
    stream: &tokio::net::windows::named_pipe::NamedPipeServer,
    id: u64,
    idle: Duration,
) -> std::io::Result<Peer> {
    tokio::time::timeout(idle, Peer::from_pipe(stream, id))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// Serves one client until it disconnects, idles out or stops reading.
pub async fn serve_connection<S, H>(stream: S, peer: Peer, handler: Arc<H>, limits: &SocketConfig)
where
    S: AsyncRead + AsyncWrite + Send,
    H: Handler,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = LineReader::new(read, MAX_LINE);
    let mut events: Option<mpsc::Receiver<Event>> = None;
    tracing::debug!(conn = peer.conn_id, uid = peer.uid, pid = ?peer.pid, "socket client connected");
    loop {
        let streaming = events.is_some();
        let idle = async {
            if streaming {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(limits.idle_timeout).await
            }
        };
        let out: Reply = tokio::select! {
            read = reader.next() => match read {
                Ok(LineRead::Line) => {
                    let line = reader.line();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Request>(line) {
                        Ok(req) => dispatch(&peer, req, handler.as_ref()).await,
                        Err(e) => Reply::error(ErrorCode::InvalidRequest, format!("malformed request: {e}")),
                    }
                }
                Ok(LineRead::TooLong { len }) => Reply::error(
                    ErrorCode::InvalidRequest,
                    format!("request line of {len} bytes is over the {MAX_LINE}-byte limit; it was discarded"),
                ),
                Ok(LineRead::Eof) => break,
                Err(e) => {
                    tracing::debug!(conn = peer.conn_id, error = %e, "socket read failed");
                    break;
                }
            },
            event = recv(&mut events) => match event {
                Some(event) => match serde_json::to_string(&event) {
                    Ok(line) => Reply { line, events: None },
                    Err(_) => continue,
                },
                None => {
                    events = None;
                    continue;
                }
            },
            _ = idle => {
                tracing::debug!(conn = peer.conn_id, "closing idle socket client");
                break;
            }
        };
        if let Some(stream) = out.events {
            events = Some(stream);
        }
        let written =
            tokio::time::timeout(limits.write_timeout, write_line(&mut write, &out.line)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!(
                conn = peer.conn_id,
                "socket client stopped reading; closing"
            );
            break;
        }
    }
}

async fn recv(events: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn dispatch<H: Handler>(peer: &Peer, req: Request, handler: &H) -> Reply {
    match req {
        Request::Hello { protocol, .. } => {
            if protocol != PROTOCOL_VERSION {
                return Reply::error(
                    ErrorCode::UnsupportedProtocol,
                    format!(
                        "client speaks socket protocol {protocol}, this agent speaks {PROTOCOL_VERSION}: install matching flexctl and flex-agent versions"
                    ),
                );
            }
            Reply::ok(HelloReply {
                protocol: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                account: peer.account.clone(),
                uid: peer.uid,
            })
        }
        Request::Subscribe => {
            Reply::ok(flex_protocol::socket::Empty {}).with_events(handler.subscribe(peer))
        }
        Request::Launch {
            user: Some(ref user),
            ..
        }
        | Request::Result {
            user: Some(ref user),
            ..
        } if !peer.may_act_as(user) => Reply::error(
            ErrorCode::Forbidden,
            format!(
                "account '{}' (uid {}) cannot act for '{user}': only root may name another user",
                peer.account, peer.uid
            ),
        ),
        Request::Attach { pid, .. } | Request::Launch { pid: Some(pid), .. } => {
            match peer.may_attach(pid) {
                Ok(()) => handler.handle(peer, req).await,
                Err(why) => Reply::error(ErrorCode::Forbidden, format!("cannot attach: {why}")),
            }
        }
        req => handler.handle(peer, req).await,
    }
}

#[cfg(all(test, unix))]
mod tests;
