//! The one fake agent behind the socket, for the socket server's and flexctl's
//! tests, and (through the `test-support` feature) the end-to-end tests of
//! the notifier binary.
//!
//! [`FakeHandler`] grants or denies launches as told, reports every request it sees
//! on a channel (so tests wait for "attach arrived" instead of sleeping), and lets a
//! test close a run session or publish an event to subscribers.
// flexctl's tests, which use all of it, run on Unix; the pipe's only part.
#![cfg_attr(windows, allow(dead_code))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use flex_protocol::api::Source;
use flex_protocol::socket::{
    CloseReason, Empty, Event, LaunchReply, Request, ResultReply, SessionStatus, StatusReply,
    WindowStatus,
};
use flex_protocol::ErrorCode;
use flex_protocol::{ProductId, SessionId};
use tokio::sync::mpsc;

use super::{Acting, Handler, Peer, Permissions, Reply, SocketConfig, SocketServer};
use crate::process::ProcessId;

/// What the fake answers to `launch`.
#[derive(Debug, Clone)]
pub enum LaunchAnswer {
    Grant,
    Deny(ErrorCode, String),
}

pub struct FakeHandler {
    pub launch: Mutex<LaunchAnswer>,
    seen: mpsc::UnboundedSender<(Peer, Request)>,
    sessions: Mutex<HashMap<SessionId, mpsc::Sender<Event>>>,
    subscribers: Mutex<Vec<mpsc::Sender<Event>>>,
    next_session: Mutex<u32>,
}

/// A connection of the fake: who it is and where its events go.
pub struct FakeConn {
    perms: Permissions,
    events: mpsc::Sender<Event>,
}

impl AsRef<Permissions> for FakeConn {
    fn as_ref(&self) -> &Permissions {
        &self.perms
    }
}

impl FakeHandler {
    /// The handler and the stream of every request it is given (`subscribe`
    /// included, as `Request::Subscribe`).
    pub fn new() -> (Arc<FakeHandler>, mpsc::UnboundedReceiver<(Peer, Request)>) {
        let (seen, rx) = mpsc::unbounded_channel();
        let handler = FakeHandler {
            launch: Mutex::new(LaunchAnswer::Grant),
            seen,
            sessions: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            next_session: Mutex::new(0),
        };
        (Arc::new(handler), rx)
    }

    pub fn deny(&self, code: ErrorCode, message: &str) {
        *self.launch.lock().unwrap() = LaunchAnswer::Deny(code, message.to_string());
    }

    /// Closes a run session the way the daemon does: a `product_closed` event on
    /// the wrapper's connection.
    pub async fn close_session(&self, session: &str) {
        let tx = self.sessions.lock().unwrap().get(session).cloned();
        let tx = tx.unwrap_or_else(|| panic!("no session {session}"));
        tx.send(Event::ProductClosed {
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            reason: CloseReason::Offline,
            message: "offline for more than 24 hours".into(),
        })
        .await
        .expect("wrapper connection is gone");
    }

    /// Sends `event` to every subscriber.
    pub async fn publish(&self, event: Event) {
        let subs = self.subscribers.lock().unwrap().clone();
        for tx in subs {
            let _ = tx.send(event.clone()).await;
        }
    }

    fn saw(&self, conn: &FakeConn, req: Request) {
        let _ = self.seen.send((conn.perms.peer().clone(), req));
    }
}

impl Handler for FakeHandler {
    type Conn = FakeConn;

    fn open(&self, perms: Permissions, events: mpsc::Sender<Event>) -> FakeConn {
        FakeConn { perms, events }
    }

    async fn launch(
        &self,
        conn: &FakeConn,
        acting: Acting,
        product: ProductId,
        version: Option<String>,
        process: Option<ProcessId>,
    ) -> Reply {
        self.saw(
            conn,
            Request::Launch {
                product: product.clone(),
                version,
                pid: process.map(|p| p.pid),
                user: Some(acting.name),
            },
        );
        if let LaunchAnswer::Deny(code, message) = self.launch.lock().unwrap().clone() {
            return Reply::error(code, message);
        }
        let session = {
            let mut n = self.next_session.lock().unwrap();
            *n += 1;
            SessionId::parse(&format!("s{n}")).expect("a session id")
        };
        self.sessions
            .lock()
            .unwrap()
            .insert(session.clone(), conn.events.clone());
        Reply::ok(LaunchReply {
            session,
            product_name: None,
            product,
            source: Source::Tokens,
            window_end: Utc::now() + Duration::hours(24),
            tokens_charged: 7,
            balance: Some(93),
            offline: false,
            close_grace_secs: None,
        })
        .long_lived()
    }

    async fn attach(&self, conn: &FakeConn, session: SessionId, process: ProcessId) -> Reply {
        self.saw(
            conn,
            Request::Attach {
                session,
                pid: process.pid,
            },
        );
        Reply::ok(Empty {})
    }

    async fn exit(&self, conn: &FakeConn, session: SessionId, code: Option<i32>) -> Reply {
        self.saw(conn, Request::Exit { session, code });
        Reply::ok(Empty {})
    }

    async fn result(
        &self,
        conn: &FakeConn,
        acting: Acting,
        product: ProductId,
        count: u64,
        job: Option<String>,
    ) -> Reply {
        self.saw(
            conn,
            Request::Result {
                product: product.clone(),
                count,
                job: job.clone(),
                user: Some(acting.name),
            },
        );
        Reply::ok(ResultReply {
            product_name: None,
            product,
            job: job.unwrap_or_else(|| "job-1".into()),
            tokens_charged: count.div_ceil(50),
            balance: 90,
            already_charged: false,
        })
    }

    async fn status(&self, conn: &FakeConn) -> Reply {
        self.saw(conn, Request::Status);
        Reply::ok(sample_status())
    }

    fn subscribe(&self, conn: &FakeConn) -> Reply {
        self.subscribers.lock().unwrap().push(conn.events.clone());
        self.saw(conn, Request::Subscribe);
        Reply::ok(Empty {}).long_lived()
    }

    async fn idle(&self, conn: &FakeConn, idle_secs: u64, locked: bool) -> Reply {
        self.saw(conn, Request::Idle { idle_secs, locked });
        Reply::ok(Empty {})
    }

    async fn closing(&self, conn: &FakeConn, pid: u32, windows: u32) -> Reply {
        self.saw(conn, Request::Closing { pid, windows });
        Reply::ok(Empty {})
    }

    async fn close(&self, _conn: FakeConn) {}
}

pub fn sample_status() -> StatusReply {
    let start = Utc::now() - Duration::hours(2);
    StatusReply {
        agent_version: "0.1.0".into(),
        server_url: "https://flex.example.com".into(),
        device_id: Some("dev-1".into()),
        credential_store: "file:/var/lib/flex-agent/device-token".into(),
        detection: "proc-connector".into(),
        sessions: vec![SessionStatus {
            session: "s1".parse().unwrap(),
            user: "alice".into(),
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            version: Some("2026".into()),
            pid: Some(4242),
            source: Source::Tokens,
            started_at: start,
            window_end: start + Duration::hours(24),
            origin: "wrapper".into(),
            state: "running".into(),
            paused_since: None,
            closes_at: None,
        }],
        sessions_omitted: 0,
        windows: vec![WindowStatus {
            user: "alice@example.com".into(),
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            source: Source::Tokens,
            tokens_charged: 7,
            start,
            end: start + Duration::hours(24),
        }],
        windows_omitted: 0,
        balance: Some(93),
        last_server_contact: Some(Utc::now() - Duration::minutes(5)),
        offline_seconds_left: Some(86_100),
        online: true,
    }
}

/// A fake agent serving on `dir/agent.sock` (a pipe of its own on Windows).
pub struct FakeAgent {
    pub path: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    /// Stops like the daemon does: connections dropped, socket path removed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("fake agent panicked");
    }
}

pub fn start_fake_agent(dir: &Path, handler: Arc<FakeHandler>) -> FakeAgent {
    #[cfg(unix)]
    let path = dir.join("agent.sock");
    // A pipe of its own per test; `dir` is unused.
    #[cfg(windows)]
    let path = {
        let _ = dir;
        PathBuf::from(format!(
            r"\\.\pipe\flex-agent-test-{}",
            uuid::Uuid::new_v4().simple()
        ))
    };
    let server = SocketServer::bind(SocketConfig::new(&path)).expect("bind fake agent socket");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(handler, async move {
        let _ = stopped.await;
    }));
    FakeAgent { path, stop, task }
}
