//! The socket side of the daemon: turns requests into [`Command`]s for the
//! driver loop and waits for its answer.
//!
//! Identity is settled here, from the peer credentials the socket server read:
//! the account a request acts for is the peer's own, or, for root only, the one
//! named in `user`; its email comes from the config's user mapping. Everything
//! that needs the core's state (sessions, windows) is decided by the driver.

use std::sync::Arc;

use flex_protocol::socket::{Event, Request};
use flex_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use super::hub::Hub;
use crate::config::Config;
use crate::core::{JobRequest, LaunchRequest};
use crate::socket::{Handler, Peer, Reply};

/// Longest product id, version or job id accepted from a client.
const MAX_ID: usize = 128;

/// What the socket asks of the driver loop.
#[derive(Debug)]
pub enum Command {
    Launch {
        req: LaunchRequest,
        reply: oneshot::Sender<Reply>,
    },
    Attach {
        peer_uid: u32,
        session: String,
        pid: u32,
        reply: oneshot::Sender<Reply>,
    },
    Exit {
        peer_uid: u32,
        session: String,
        reply: oneshot::Sender<Reply>,
    },
    Job {
        req: JobRequest,
        reply: oneshot::Sender<Reply>,
    },
    /// `only`: the email whose sessions to show; `None` shows all (root).
    Status {
        only: Option<String>,
        reply: oneshot::Sender<Reply>,
    },
    /// A wrapper's connection closed (it exited, maybe without saying so).
    WrapperGone { session: String },
}

pub struct SocketHandler {
    config: Arc<Config>,
    commands: mpsc::Sender<Command>,
    hub: Hub,
}

impl SocketHandler {
    pub fn new(config: Arc<Config>, commands: mpsc::Sender<Command>, hub: Hub) -> Self {
        SocketHandler {
            config,
            commands,
            hub,
        }
    }

    /// The (uid, account, email) a request acts for.
    fn acting(&self, peer: &Peer, user: Option<String>) -> Result<(u32, String, String), Reply> {
        let (uid, account) = match user {
            Some(name) if name != peer.account => {
                // The socket server let this through only for root.
                match account_uid(&name) {
                    Some(uid) => (uid, name),
                    None => {
                        return Err(Reply::error(
                            ErrorCode::UnknownUser,
                            format!("there is no local account named '{name}'"),
                        ))
                    }
                }
            }
            _ => (peer.uid, peer.account.clone()),
        };
        match self.config.email_for(&account) {
            Ok(email) => Ok((uid, account, email)),
            Err(e) => Err(Reply::error(
                ErrorCode::UnknownUser,
                format!("{e}; ask IT to fix the flex-agent config"),
            )),
        }
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Reply>) -> Command) -> Reply {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(make(tx)).await.is_err() {
            return stopping();
        }
        rx.await.unwrap_or_else(|_| stopping())
    }
}

/// The uid of local account `name`, if it exists.
#[cfg(unix)]
fn account_uid(name: &str) -> Option<u32> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Some(u.uid.as_raw()),
        _ => None,
    }
}

#[cfg(windows)]
use crate::socket::account_uid_by_name as account_uid;

fn stopping() -> Reply {
    Reply::error(
        ErrorCode::Internal,
        "flex-agent is stopping: retry in a moment",
    )
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

impl Handler for SocketHandler {
    async fn handle(&self, peer: &Peer, req: Request) -> Reply {
        match req {
            Request::Launch {
                product,
                version,
                pid,
                user,
            } => {
                if let Err(r) = check_id("product", &product) {
                    return r;
                }
                if let Some(Err(r)) = version.as_deref().map(|v| check_id("version", v)) {
                    return r;
                }
                let (uid, account, email) = match self.acting(peer, user) {
                    Ok(a) => a,
                    Err(r) => return r,
                };
                let req = LaunchRequest {
                    request: uuid::Uuid::new_v4().to_string(),
                    uid,
                    account,
                    user: email,
                    product,
                    version,
                    pid,
                };
                self.ask(|reply| Command::Launch { req, reply }).await
            }
            Request::Attach { session, pid } => {
                self.ask(|reply| Command::Attach {
                    peer_uid: peer.uid,
                    session,
                    pid,
                    reply,
                })
                .await
            }
            Request::Exit { session, .. } => {
                self.ask(|reply| Command::Exit {
                    peer_uid: peer.uid,
                    session,
                    reply,
                })
                .await
            }
            Request::Result {
                product,
                count,
                job,
                user,
            } => {
                if let Err(r) = check_id("product", &product) {
                    return r;
                }
                if let Some(Err(r)) = job.as_deref().map(|j| check_id("job", j)) {
                    return r;
                }
                if count == 0 {
                    return Reply::error(
                        ErrorCode::InvalidRequest,
                        "count 0 is not valid: a job has at least one result",
                    );
                }
                let (uid, _account, email) = match self.acting(peer, user) {
                    Ok(a) => a,
                    Err(r) => return r,
                };
                let req = JobRequest {
                    request: uuid::Uuid::new_v4().to_string(),
                    uid,
                    user: email,
                    product,
                    count,
                    job,
                };
                self.ask(|reply| Command::Job { req, reply }).await
            }
            Request::Status => {
                let only = if peer.is_root() {
                    None
                } else {
                    match self.config.email_for(&peer.account) {
                        Ok(e) => Some(e),
                        // No mapping: the account can have no sessions of its own.
                        Err(_) => Some(String::new()),
                    }
                };
                self.ask(|reply| Command::Status { only, reply }).await
            }
            Request::Hello { .. } | Request::Subscribe => Reply::error(
                ErrorCode::Internal,
                "hello and subscribe are answered by the socket server",
            ),
        }
    }

    fn subscribe(&self, peer: &Peer) -> mpsc::Receiver<Event> {
        self.hub.subscribe(peer.uid)
    }
}
