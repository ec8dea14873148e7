//! Sessions: who holds them, which process they stand for, and how they end.
//!
//! A session is one run of one product for one user. It is found by the process
//! watcher (every exec of a product's executable, whoever started it) or
//! announced by a wrapper (`launch`), which then holds it on its connection.
//! The rules that keep a local user from getting a product unpaid or making the
//! agent stop someone else's process live here:
//!
//! * a session stands for one process identity (pid + start time) and one
//!   product; there is never a second session for the same (process, product),
//!   but a process may be in sessions of two products: a wrapper's session for
//!   the product it asked for, and a watcher session for the product it really
//!   execs, which is claimed and enforced as itself;
//! * only the session's account, or an admin, may attach or end it, and only
//!   while a wrapper holds it; a session the watcher found, or whose wrapper went
//!   away, ends when its process does;
//! * a connection holds at most one session; an account at most
//!   [`limits::MAX_WRAPPER_SESSIONS_PER_ACCOUNT`] wrapper sessions;
//! * a process is tracked ([`Action::Track`]) while any session holds it, and
//!   every close goes through that handle or the holding wrapper.

use flex_protocol::api::SessionRecord;
use flex_protocol::socket::{CloseReason, Event};
use flex_protocol::ErrorCode;

use super::{
    Action, Caller, CloseRoute, Closing, ConnId, Core, Origin, Persist, Refusal, Session,
    SessionRow, Waiter,
};
use crate::limits;
use crate::process::ProcessId;

impl Core {
    pub(super) fn new_session_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// The journal row of a licensed session; `None` while it has no source.
    pub(super) fn row(&self, s: &Session, ended: bool) -> Option<SessionRow> {
        Some(SessionRow {
            record: SessionRecord {
                id: s.id.clone(),
                user: s.user.clone(),
                product: s.product.clone(),
                version: s.version.clone(),
                source: s.source?,
                window_id: s.window_id.clone(),
                started_at: s.started_at,
                ended_at: ended.then(|| self.clock.trusted_now()),
            },
            account: s.account.clone(),
            account_name: s.account_name.clone(),
            process: s.process,
            origin: s.origin,
        })
    }

    pub(super) fn persist_session(&mut self, id: &str, out: &mut Vec<Action>) {
        if let Some(row) = self.sessions.get(id).and_then(|s| self.row(s, false)) {
            self.unsent += 1;
            out.push(Action::Persist(Persist::Session(row)));
        }
    }

    /// Rebuilds sessions from the journal. Sessions without a known process
    /// lost their wrapper with the agent, so they are ended; the others are
    /// tracked again, and the driver reports the ones whose process is gone (or
    /// whose pid now runs another process). After a reboot all are ended, at the
    /// last moment the agent was known to run (`ended_by_reboot`).
    pub(super) fn restore_sessions(
        &mut self,
        rows: Vec<SessionRow>,
        ended_by_reboot: Option<chrono::DateTime<chrono::Utc>>,
        out: &mut Vec<Action>,
    ) {
        for mut row in rows {
            if let Some(at) = ended_by_reboot {
                row.record.ended_at = Some(at.max(row.record.started_at));
                self.unsent += 1;
                out.push(Action::Persist(Persist::Session(row)));
                continue;
            }
            let s = Session {
                id: row.record.id.clone(),
                account: row.account,
                account_name: row.account_name,
                user: row.record.user,
                product: row.record.product,
                version: row.record.version,
                process: None,
                origin: row.origin,
                holder: None,
                source: Some(row.record.source),
                window_id: row.record.window_id,
                started_at: row.record.started_at,
                warned: Vec::new(),
                closing: None,
            };
            let id = s.id.clone();
            self.sessions.insert(id.clone(), s);
            match row.process {
                Some(p) => self.set_process(&id, p, out),
                None => self.end_session(&id, out),
            }
        }
    }

    /// Sessions of (process, product) other than `except`.
    pub(super) fn same_run(
        &self,
        process: ProcessId,
        product: &str,
        except: Option<&str>,
    ) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.process == Some(process) && s.product == product)
            .filter(|s| except != Some(s.id.as_str()))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Makes room for a wrapper session of `product` on `process`: the watcher's
    /// session of the same run is a duplicate and goes; a session another
    /// wrapper holds (or held) for it is a conflict.
    pub(super) fn claim_run(
        &mut self,
        process: ProcessId,
        product: &str,
        except: Option<&str>,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let others = self.same_run(process, product, except);
        if let Some(held) = others
            .iter()
            .find(|id| self.sessions[*id].origin == Origin::Wrapper)
        {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("process {process} already runs '{product}' in session {held}"),
            ));
        }
        for dup in others {
            self.drop_session(&dup, out);
        }
        Ok(())
    }

    /// Gives session `id` its process, tracking the process if no other
    /// session did.
    pub(super) fn set_process(&mut self, id: &str, process: ProcessId, out: &mut Vec<Action>) {
        let tracked = self.sessions.values().any(|s| s.process == Some(process));
        if let Some(s) = self.sessions.get_mut(id) {
            s.process = Some(process);
        }
        if !tracked {
            out.push(Action::Track { process });
        }
    }

    /// Whether a wrapper may open another session for `account`.
    pub(super) fn wrapper_room(&self, account: &crate::account::AccountId) -> Result<(), Refusal> {
        let held = self
            .sessions
            .values()
            .filter(|s| &s.account == account && s.origin == Origin::Wrapper)
            .count();
        if held >= limits::MAX_WRAPPER_SESSIONS_PER_ACCOUNT {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "account {account} already has {held} wrapped product sessions, the limit: \
                     close some products first"
                ),
            ));
        }
        Ok(())
    }

    /// A connection that starts a new session lets go of the one it held.
    pub(super) fn release_hold(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        let held: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.holder == Some(conn))
            .map(|s| s.id.clone())
            .collect();
        for id in held {
            self.unhold(&id, out);
        }
    }

    /// The wrapper of session `id` is gone: without a process there is nothing
    /// left to track and the session ends; otherwise it ends with its process.
    fn unhold(&mut self, id: &str, out: &mut Vec<Action>) {
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        s.holder = None;
        if s.process.is_none() {
            self.end_session(id, out);
        }
    }

    pub(super) fn connection_closed(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        self.release_hold(conn, out);
    }

    /// Checks that `caller` may manage session `id` through its wrapper.
    fn managed(&self, caller: &Caller, id: &str) -> Result<&Session, Refusal> {
        let Some(s) = self.sessions.get(id) else {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("no running session {id}: it ended or was never granted"),
            ));
        };
        if s.account != caller.account && !caller.admin {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("session {id} belongs to another account"),
            ));
        }
        if s.holder.is_none() {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "session {id} {}: it ends when its product process exits",
                    match s.origin {
                        Origin::Watcher => "was found by the process watcher",
                        Origin::Wrapper => "lost its flexctl run connection",
                    }
                ),
            ));
        }
        Ok(s)
    }

    /// The wrapper started the granted product as `process`.
    pub(super) fn attach(
        &mut self,
        _conn: ConnId,
        caller: &Caller,
        id: &str,
        process: ProcessId,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let s = self.managed(caller, id)?;
        if s.process == Some(process) {
            return Ok(());
        }
        if let Some(p) = s.process {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!("session {id} is already attached to process {p}"),
            ));
        }
        let product = s.product.clone();
        self.claim_run(process, &product, Some(id), out)?;
        self.set_process(id, process, out);
        self.persist_session(id, out);
        Ok(())
    }

    /// The wrapper reports that its product exited.
    pub(super) fn exit(
        &mut self,
        caller: &Caller,
        id: &str,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        self.managed(caller, id)?;
        self.end_session(id, out);
        Ok(())
    }

    /// Removes a session that should leave no usage record (a duplicate).
    pub(super) fn drop_session(&mut self, id: &str, out: &mut Vec<Action>) {
        if let Some(s) = self.sessions.remove(id) {
            if s.source.is_some() {
                // Already journaled as running: end it at its own start so the
                // record adds no usage.
                let mut row = self.row(&s, true).expect("licensed session has a row");
                row.record.ended_at = Some(s.started_at);
                out.push(Action::Persist(Persist::Session(row)));
            }
            self.forget_waiter(id);
            self.release_process(s.process, out);
        }
    }

    /// The product of a session exited (or the wrapper says so).
    pub(super) fn end_session(&mut self, id: &str, out: &mut Vec<Action>) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        if let Some(row) = self.row(&s, true) {
            self.unsent += 1;
            out.push(Action::Persist(Persist::Session(row)));
        }
        self.forget_waiter(id);
        self.release_process(s.process, out);
    }

    /// Closes the handle of a process no session holds any more.
    fn release_process(&self, process: Option<ProcessId>, out: &mut Vec<Action>) {
        if let Some(p) = process {
            if !self.sessions.values().any(|s| s.process == Some(p)) {
                out.push(Action::Release { process: p });
            }
        }
    }

    /// A session gone before its claim was answered: the claim still settles (the
    /// server may have opened the window) but nobody waits for it any more.
    fn forget_waiter(&mut self, id: &str) {
        for claim in self.claims.values_mut() {
            claim.waiters.retain(|w| match w {
                Waiter::Launch { session, .. } | Waiter::Watch { session } => session != id,
                Waiter::Job { .. } => true,
            });
        }
    }

    /// Schedules a close: graceful at `term_at`, forced `close_grace` later. An
    /// earlier close already scheduled wins.
    pub(super) fn schedule_close(
        &mut self,
        id: &str,
        reason: CloseReason,
        message: String,
        term_at: chrono::DateTime<chrono::Utc>,
        renewal_of: Option<String>,
    ) {
        if let Some(s) = self.sessions.get_mut(id) {
            match &s.closing {
                Some(c) if c.kill_at.is_some() || c.term_at <= term_at => {}
                _ => {
                    s.closing = Some(Closing {
                        reason,
                        message,
                        renewal_of,
                        term_at,
                        kill_at: None,
                        killed: false,
                    })
                }
            }
        }
    }

    /// Carries out due closes: the graceful close (and tell the user why), then
    /// the forced one. A session with neither a wrapper nor a process just ends.
    pub(super) fn run_closes(&mut self, out: &mut Vec<Action>) {
        let products = &self.products;
        let now = self.clock.trusted_now();
        let grace = chrono::Duration::seconds(self.policy.close_grace_secs as i64);
        let mut ended = Vec::new();
        for s in self.sessions.values_mut() {
            let Some(c) = s.closing.as_mut() else {
                continue;
            };
            if c.kill_at.is_none() && now >= c.term_at {
                c.kill_at = Some(now + grace);
                let event = Event::ProductClosed {
                    product: s.product.clone(),
                    product_name: super::name_of(products, &s.product),
                    reason: c.reason,
                    message: c.message.clone(),
                };
                let route = match (s.holder, s.process) {
                    (Some(conn), fallback) => CloseRoute::Wrapper {
                        conn,
                        event: event.clone(),
                        fallback,
                    },
                    (None, Some(process)) => CloseRoute::Signal { process },
                    (None, None) => CloseRoute::Nothing,
                };
                if route == CloseRoute::Nothing {
                    ended.push(s.id.clone());
                }
                out.push(Action::Close {
                    session: s.id.clone(),
                    route,
                    graceful: true,
                });
                out.push(Action::Notify {
                    account: Some(s.account.clone()),
                    event,
                });
            }
            if let (Some(kill_at), Some(process)) = (c.kill_at, s.process) {
                if !c.killed && now >= kill_at {
                    c.killed = true;
                    out.push(Action::Kill {
                        session: s.id.clone(),
                        process,
                    });
                }
            }
        }
        for id in ended {
            self.end_session(&id, out);
        }
    }
}
