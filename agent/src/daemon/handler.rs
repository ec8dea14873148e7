//! The socket side of the daemon: one method per operation, each turning a
//! checked request into a [`Command`] for the driver loop and waiting for its
//! answer.
//!
//! The socket server has already resolved who a request acts for and which
//! process it hands over ([`Permissions`]); here the account becomes an email
//! through the config's user mapping, and versions and job ids from the
//! client are checked (product and session ids were, as the line was read).
//! Everything that needs the core's state (sessions, windows, who owns a
//! session) is decided by the core.

use std::sync::Arc;

use flex_protocol::socket::{Empty, Event};
use flex_protocol::{Email, ErrorCode};
use flex_protocol::{ProductId, SessionId};
use tokio::sync::{mpsc, oneshot};

use super::hub::Hub;
use crate::config::Config;
use crate::core::{Caller, ConnId, JobRequest, LaunchRequest};
use crate::process::ProcessId;
use crate::socket::{Acting, Handler, Permissions, Reply};

/// Longest version or job id accepted from a client (product and session
/// ids follow their types' rules, checked as the request is read).
const MAX_ID: usize = 128;

/// Whose sessions and windows `status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusFor {
    /// An admin sees everyone's.
    All,
    User(Email),
    /// An account with no email can have none of its own.
    Nobody,
}

/// What the socket asks of the driver loop.
#[derive(Debug)]
pub enum Command {
    Launch {
        req: LaunchRequest,
        /// The connection's event sender: a close of its session goes there.
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<Reply>,
    },
    Attach {
        conn: ConnId,
        caller: Caller,
        session: SessionId,
        process: ProcessId,
        reply: oneshot::Sender<Reply>,
    },
    Exit {
        conn: ConnId,
        caller: Caller,
        session: SessionId,
        reply: oneshot::Sender<Reply>,
    },
    Job {
        req: JobRequest,
        reply: oneshot::Sender<Reply>,
    },
    Status {
        only: StatusFor,
        reply: oneshot::Sender<Reply>,
    },
    /// A connection closed (a wrapper exited, maybe without saying so).
    Closed { conn: ConnId },
    /// A notifier reported its desktop session's activity.
    Idle {
        conn: ConnId,
        caller: Caller,
        idle_secs: u64,
        locked: bool,
    },
    /// A notifier asked a process's windows to close.
    Closing {
        caller: Caller,
        pid: u32,
        windows: u32,
    },
}

pub struct SocketHandler {
    config: Arc<Config>,
    commands: mpsc::Sender<Command>,
    hub: Hub,
}

/// One connection: its permissions, its event sender, and its own email.
pub struct Conn {
    perms: Permissions,
    events: mpsc::Sender<Event>,
    email: Result<Email, String>,
}

impl AsRef<Permissions> for Conn {
    fn as_ref(&self) -> &Permissions {
        &self.perms
    }
}

impl Conn {
    fn id(&self) -> ConnId {
        self.perms.peer().conn_id
    }

    fn caller(&self) -> Caller {
        Caller {
            account: self.perms.peer().account.clone(),
            admin: self.perms.admin(),
        }
    }
}

impl SocketHandler {
    pub fn new(config: Arc<Config>, commands: mpsc::Sender<Command>, hub: Hub) -> Self {
        SocketHandler {
            config,
            commands,
            hub,
        }
    }

    /// The email of the account a request acts for.
    fn email(&self, conn: &Conn, acting: &Acting) -> Result<Email, Reply> {
        let email = if acting.account == conn.perms.peer().account {
            conn.email.clone()
        } else {
            self.config
                .email_for(&acting.name)
                .map_err(|e| e.to_string())
        };
        email.map_err(|e| {
            Reply::error(
                ErrorCode::UnknownUser,
                format!("{e}; ask IT to fix the flex-agent config"),
            )
        })
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Reply>) -> Command) -> Reply {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(make(tx)).await.is_err() {
            return stopping();
        }
        rx.await.unwrap_or_else(|_| stopping())
    }
}

fn stopping() -> Reply {
    Reply::error(
        ErrorCode::Internal,
        "flex-agent is stopping: retry in a moment",
    )
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn check_id(field: &str, value: &str) -> Result<(), Reply> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Reply::error(
            ErrorCode::InvalidRequest,
            format!(
                "{field} '{}' is not valid: use 1 to {MAX_ID} letters, digits, '-', '_', '.' or ':'",
                value.chars().take(MAX_ID).collect::<String>()
            ),
        ))
    }
}

/// Runs the checks, returning the first refusal.
macro_rules! check {
    ($($e:expr),* $(,)?) => {
        $( if let Err(r) = $e { return r; } )*
    };
}

impl Handler for SocketHandler {
    type Conn = Conn;

    fn open(&self, perms: Permissions, events: mpsc::Sender<Event>) -> Conn {
        let email = self
            .config
            .email_for(&perms.peer().name)
            .map_err(|e| e.to_string());
        Conn {
            perms,
            events,
            email,
        }
    }

    async fn launch(
        &self,
        conn: &Conn,
        acting: Acting,
        product: ProductId,
        version: Option<String>,
        process: Option<ProcessId>,
    ) -> Reply {
        // The product id was checked when the request was read (ProductId).
        check!(version
            .as_deref()
            .map_or(Ok(()), |v| check_id("version", v)));
        let user = match self.email(conn, &acting) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let req = LaunchRequest {
            request: request_id(),
            conn: conn.id(),
            account: acting.account,
            account_name: acting.name,
            user,
            product,
            version,
            process,
        };
        let events = conn.events.clone();
        self.ask(|reply| Command::Launch { req, events, reply })
            .await
    }

    async fn attach(&self, conn: &Conn, session: SessionId, process: ProcessId) -> Reply {
        self.ask(|reply| Command::Attach {
            conn: conn.id(),
            caller: conn.caller(),
            session,
            process,
            reply,
        })
        .await
    }

    async fn exit(&self, conn: &Conn, session: SessionId, _code: Option<i32>) -> Reply {
        self.ask(|reply| Command::Exit {
            conn: conn.id(),
            caller: conn.caller(),
            session,
            reply,
        })
        .await
    }

    async fn result(
        &self,
        conn: &Conn,
        acting: Acting,
        product: ProductId,
        count: u64,
        job: Option<String>,
    ) -> Reply {
        check!(job.as_deref().map_or(Ok(()), |j| check_id("job", j)));
        if count == 0 {
            return Reply::error(
                ErrorCode::InvalidRequest,
                "count 0 is not valid: a job has at least one result",
            );
        }
        let user = match self.email(conn, &acting) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let req = JobRequest {
            request: request_id(),
            account: acting.account,
            user,
            product,
            count,
            // A caller that names no job gets one: the reply carries it, so a
            // retry with it is charged at most once.
            job: job.unwrap_or_else(request_id),
        };
        self.ask(|reply| Command::Job { req, reply }).await
    }

    async fn status(&self, conn: &Conn) -> Reply {
        let only = if conn.perms.admin() {
            StatusFor::All
        } else {
            match &conn.email {
                Ok(e) => StatusFor::User(e.clone()),
                Err(_) => StatusFor::Nobody,
            }
        };
        self.ask(|reply| Command::Status { only, reply }).await
    }

    fn subscribe(&self, conn: &Conn) -> Reply {
        match self
            .hub
            .subscribe(conn.id(), &conn.perms.peer().account, &conn.events)
        {
            Ok(()) => Reply::ok(Empty {}).long_lived(),
            Err(r) => Reply::error(r.code, r.message),
        }
    }

    async fn idle(&self, conn: &Conn, idle_secs: u64, locked: bool) -> Reply {
        let cmd = Command::Idle {
            conn: conn.id(),
            caller: conn.caller(),
            idle_secs,
            locked,
        };
        if self.commands.send(cmd).await.is_err() {
            return stopping();
        }
        Reply::ok(Empty {})
    }

    async fn closing(&self, conn: &Conn, pid: u32, windows: u32) -> Reply {
        let cmd = Command::Closing {
            caller: conn.caller(),
            pid,
            windows,
        };
        if self.commands.send(cmd).await.is_err() {
            return stopping();
        }
        Reply::ok(Empty {})
    }

    async fn close(&self, conn: Conn) {
        self.hub.unsubscribe(conn.id());
        let _ = self
            .commands
            .send(Command::Closed { conn: conn.id() })
            .await;
    }
}
