//! The agent's local socket: newline-delimited JSON over a Unix socket, or the
//! named pipe `\\.\pipe\flex-agent` on Windows.
//!
//! [`SocketServer`] owns the listener (bound by [`SocketServer::bind`] or handed over
//! by systemd; on Windows [`pipe_windows`]) and admits clients within the per-account limits of
//! [`crate::limits`] ([`admission`]). Each connection reads one [`Request`] per
//! line, capped at [`MAX_LINE`]; oversize and malformed lines get an
//! `invalid_request` reply and the connection goes on.
//!
//! Who the client is comes from the kernel once, when the connection is accepted
//! ([`Peer`]: peer credentials of the socket, the pipe client's token on
//! Windows), and turns into the connection's [`Permissions`]: which account a
//! request may act for and which processes it may hand over. The server applies
//! them before calling the daemon's [`Handler`], whose methods are typed per
//! operation and get only checked values. `hello` is answered here.
//!
//! Every connection has an event stream: events the daemon sends on the
//! connection's sender are written as lines of their own (`{"event":...}`)
//! between replies. This is how `subscribe` works, and how a wrapper learns that
//! its session was closed (`Event::ProductClosed`). A connection that holds a
//! subscription or a session ([`Reply::long_lived`]) is exempt from the idle
//! timeout; any other closes after [`SocketConfig::idle_timeout`] without a
//! request (blank lines are not requests).

mod admission;
mod line;
#[cfg(unix)]
mod listen;
mod peer;
#[cfg(windows)]
mod peer_windows;
#[cfg(windows)]
mod pipe_windows;

#[cfg(any(test, feature = "test-support"))]
pub mod fake;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flex_protocol::socket::{ErrReply, Event, HelloReply, OkReply, Request, MAX_LINE};
use flex_protocol::{ErrorCode, PROTOCOL_VERSION};
use flex_protocol::{ProductId, SessionId};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::limits;
pub use admission::Admission;
pub use line::{write_json, write_line, LineRead, LineReader};
#[cfg(unix)]
pub use listen::{bind_path, systemd_listener, ListenOrigin, Listener};
pub use peer::{Acting, Peer, Permissions};
#[cfg(windows)]
pub use pipe_windows::{ListenOrigin, Listener};

/// Events queued for one connection before new ones are dropped: a client that
/// stops reading loses events rather than slowing the daemon.
pub const EVENT_QUEUE: usize = 64;

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another flex-agent already answers on {path}: stop it first (systemctl stop flex-agent; \
         on Windows: sc stop flex-agent)"
    )]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket: refusing to remove it; move it away or choose another socket_path")]
    NotASocket { path: PathBuf },
    #[error(
        "the socket directory {path} is {problem}: only root may create entries in it; \
         fix its owner and mode (chown root {path}; chmod 755 {path}) or choose another socket_path"
    )]
    UnsafeDirectory { path: PathBuf, problem: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One reply line; `long_lived` marks a connection that now holds a session or
/// a subscription, which the idle timeout must not close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    line: String,
    long_lived: bool,
}

impl Reply {
    /// `{"ok":true, ...data}`; `data` must serialize to a JSON object. A reply
    /// that would not fit in a line becomes an `internal` error: no reply may
    /// break the framing the client relies on.
    pub fn ok<T: Serialize>(data: T) -> Reply {
        match serde_json::to_string(&OkReply::new(data)) {
            Ok(line) if line.len() < MAX_LINE => Reply {
                line,
                long_lived: false,
            },
            Ok(line) => Reply::error(
                ErrorCode::Internal,
                format!(
                    "the reply ({} bytes) is over the {MAX_LINE}-byte line limit",
                    line.len()
                ),
            ),
            Err(e) => Reply::error(ErrorCode::Internal, format!("cannot encode reply: {e}")),
        }
    }

    /// `{"ok":false,"error":{"code","message"}}`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::refusal(code, message, None)
    }

    /// An error reply that names the product refused (`"product_name"`).
    pub fn refusal(
        code: ErrorCode,
        message: impl Into<String>,
        product_name: Option<String>,
    ) -> Reply {
        let mut message: String = message.into();
        if message.len() > 4096 {
            let mut end = 4096;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let line = serde_json::to_string(&ErrReply::new(code, message).about(product_name))
            .expect("an error reply always encodes");
        Reply {
            line,
            long_lived: false,
        }
    }

    /// The connection now holds a session or subscription.
    pub fn long_lived(mut self) -> Reply {
        self.long_lived = true;
        self
    }

    /// The JSON line, without its newline.
    pub fn line(&self) -> &str {
        &self.line
    }
}

/// What the daemon plugs into the socket server: one method per operation.
///
/// The server has already checked what the kernel-given identity allows: a
/// `user` in `launch`/`result` is resolved to an [`Acting`] account only for an
/// admin (anyone else may only name themselves), and a `pid` in `launch` or
/// `attach` is resolved to a [`ProcessId`](crate::process::ProcessId) only if the
/// process belongs to the caller (any process for an admin). The handler checks
/// what needs its state: that a session named in `attach`/`exit` belongs to the
/// caller.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection state: the connection's permissions and its event sender.
    type Conn: AsRef<Permissions> + Send + Sync + 'static;

    /// A connection was admitted; `events` writes to it.
    fn open(&self, perms: Permissions, events: mpsc::Sender<Event>) -> Self::Conn;

    fn launch(
        &self,
        conn: &Self::Conn,
        acting: Acting,
        product: ProductId,
        version: Option<String>,
        process: Option<crate::process::ProcessId>,
    ) -> impl Future<Output = Reply> + Send;

    fn attach(
        &self,
        conn: &Self::Conn,
        session: SessionId,
        process: crate::process::ProcessId,
    ) -> impl Future<Output = Reply> + Send;

    fn exit(
        &self,
        conn: &Self::Conn,
        session: SessionId,
        code: Option<i32>,
    ) -> impl Future<Output = Reply> + Send;

    fn result(
        &self,
        conn: &Self::Conn,
        acting: Acting,
        product: ProductId,
        count: u64,
        job: Option<String>,
    ) -> impl Future<Output = Reply> + Send;

    fn status(&self, conn: &Self::Conn) -> impl Future<Output = Reply> + Send;

    /// Start sending this account's events on the connection.
    fn subscribe(&self, conn: &Self::Conn) -> Reply;

    /// The caller's desktop session reports its activity (R14).
    fn idle(
        &self,
        conn: &Self::Conn,
        idle_secs: u64,
        locked: bool,
    ) -> impl Future<Output = Reply> + Send;

    /// The caller's notifier asked `windows` windows of `pid` to close.
    fn closing(
        &self,
        conn: &Self::Conn,
        pid: u32,
        windows: u32,
    ) -> impl Future<Output = Reply> + Send;

    /// The connection closed; release what it held.
    fn close(&self, conn: Self::Conn) -> impl Future<Output = ()> + Send;
}

/// Limits and modes of the socket.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Mode of the socket file: 0666 so every local user can connect; identity
    /// comes from peer credentials, not from the file mode.
    pub mode: u32,
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
            idle_timeout: limits::IDLE_TIMEOUT,
            write_timeout: limits::WRITE_TIMEOUT,
        }
    }
}

/// A listening local socket, ready to [`serve`](SocketServer::serve).
pub struct SocketServer {
    listener: Listener,
    config: SocketConfig,
}

impl SocketServer {
    /// Takes the socket from systemd when socket-activated, else binds
    /// `config.path` (creates the named pipe on Windows). Must be called inside
    /// a tokio runtime.
    pub fn bind(config: SocketConfig) -> Result<SocketServer, SocketError> {
        Ok(SocketServer {
            listener: Listener::bind(&config)?,
            config,
        })
    }

    /// Wraps a listener the caller bound.
    #[cfg(unix)]
    pub fn from_listener(listener: tokio::net::UnixListener, config: SocketConfig) -> SocketServer {
        SocketServer {
            listener: Listener::bound(listener, &config.path),
            config,
        }
    }

    pub fn origin(&self) -> ListenOrigin {
        self.listener.origin()
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Accepts and serves clients until `shutdown` resolves, then drops every
    /// connection and, if the agent bound the path itself, removes it.
    pub async fn serve<H: Handler>(self, handler: Arc<H>, shutdown: impl Future<Output = ()>) {
        let SocketServer {
            mut listener,
            config,
        } = self;
        let admission = Admission::default();
        let next_id = AtomicU64::new(1);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok(stream) => stream,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accepting a socket client failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let handler = handler.clone();
                    let limits = config.clone();
                    let admission = admission.clone();
                    conns.spawn(async move {
                        let (peer, mut stream) = match Listener::identify(stream, id).await {
                            Ok(identified) => identified,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read peer credentials; closing");
                                return;
                            }
                        };
                        match admission.admit(&peer) {
                            Ok(_ticket) => serve_connection(stream, peer, handler, &limits).await,
                            Err(refused) => {
                                tracing::warn!(account = %peer.account, "connection refused: {}", refused.line());
                                // Best effort, never for long: the client is told why.
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(1),
                                    write_line(&mut stream, refused.line()),
                                )
                                .await;
                            }
                        }
                    });
                }
            }
        }
        conns.shutdown().await;
        listener.close();
    }
}

/// Serves one client until it disconnects, idles out or stops reading.
pub async fn serve_connection<S, H>(stream: S, peer: Peer, handler: Arc<H>, limits: &SocketConfig)
where
    S: AsyncRead + AsyncWrite + Send,
    H: Handler,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = LineReader::new(read, MAX_LINE);
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    tracing::debug!(conn = peer.conn_id, account = %peer.account, pid = ?peer.pid, "socket client connected");
    let conn_id = peer.conn_id;
    let conn = handler.open(Permissions::new(peer), events_tx);
    let mut long_lived = false;
    let mut idle_until = tokio::time::Instant::now() + limits.idle_timeout;
    loop {
        let idle = async {
            if long_lived {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep_until(idle_until).await
            }
        };
        let out: Reply = tokio::select! {
            read = reader.next() => match read {
                Ok(LineRead::Line) => {
                    let line = reader.line();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    idle_until = tokio::time::Instant::now() + limits.idle_timeout;
                    match serde_json::from_slice::<Request>(line) {
                        Ok(req) => dispatch(&conn, req, handler.as_ref()).await,
                        Err(e) => Reply::error(ErrorCode::InvalidRequest, format!("malformed request: {e}")),
                    }
                }
                Ok(LineRead::TooLong { len }) => Reply::error(
                    ErrorCode::InvalidRequest,
                    format!("request line of {len} bytes is over the {MAX_LINE}-byte limit; it was discarded"),
                ),
                Ok(LineRead::Eof) => break,
                Err(e) => {
                    tracing::debug!(conn = conn_id, error = %e, "socket read failed");
                    break;
                }
            },
            Some(event) = events.recv() => match serde_json::to_string(&event) {
                Ok(line) if line.len() < MAX_LINE => Reply { line, long_lived: false },
                _ => continue,
            },
            _ = idle => {
                tracing::debug!(conn = conn_id, "closing idle socket client");
                break;
            }
        };
        long_lived |= out.long_lived;
        let written =
            tokio::time::timeout(limits.write_timeout, write_line(&mut write, &out.line)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!(conn = conn_id, "socket client stopped reading; closing");
            break;
        }
    }
    handler.close(conn).await;
}

/// Checks identity-based permissions, then calls the handler's method.
async fn dispatch<H: Handler>(conn: &H::Conn, req: Request, handler: &H) -> Reply {
    let perms: &Permissions = conn.as_ref();
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
                account: perms.peer().name.clone(),
                uid: perms.peer().account.uid().unwrap_or(u32::MAX),
            })
        }
        Request::Subscribe => handler.subscribe(conn),
        Request::Launch {
            product,
            version,
            pid,
            user,
        } => {
            let acting = match perms.acting(user.as_deref()) {
                Ok(a) => a,
                Err(r) => return r,
            };
            let process = match pid.map(|p| perms.process(p)).transpose() {
                Ok(p) => p,
                Err(r) => return r,
            };
            handler
                .launch(conn, acting, product, version, process)
                .await
        }
        Request::Attach { session, pid } => match perms.process(pid) {
            Ok(process) => handler.attach(conn, session, process).await,
            Err(r) => r,
        },
        Request::Exit { session, code } => handler.exit(conn, session, code).await,
        Request::Result {
            product,
            count,
            job,
            user,
        } => match perms.acting(user.as_deref()) {
            Ok(acting) => handler.result(conn, acting, product, count, job).await,
            Err(r) => r,
        },
        Request::Status => handler.status(conn).await,
        Request::Idle { idle_secs, locked } => handler.idle(conn, idle_secs, locked).await,
        Request::Closing { pid, windows } => handler.closing(conn, pid, windows).await,
    }
}

#[cfg(all(test, unix))]
mod tests;
