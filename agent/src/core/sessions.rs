//! Session bookkeeping: creating, attaching, ending and journaling product runs.

use flex_protocol::api::SessionRecord;
use flex_protocol::socket::{CloseReason, Event};

use super::{Action, Closing, Core, Origin, Persist, Session, SessionRow, Waiter};

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
            uid: s.uid,
            account: s.account.clone(),
            pid: s.pid,
            origin: s.origin,
        })
    }

    pub(super) fn persist_session(&mut self, id: &str, out: &mut Vec<Action>) {
        if let Some(row) = self.sessions.get(id).and_then(|s| self.row(s, false)) {
            self.unsent += 1;
            out.push(Action::Persist(Persist::Session(row)));
        }
    }

    /// Rebuilds sessions from the journal. Wrapper sessions without a pid lost
    /// their wrapper with the agent, so they are ended; the watcher adopts the
    /// product again if it still runs. After a reboot all are ended, at the last
    /// moment the agent was known to run (`ended_by_reboot`).
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
                uid: row.uid,
                account: row.account,
                user: row.record.user,
                product: row.record.product,
                version: row.record.version,
                pid: row.pid,
                origin: row.origin,
                source: Some(row.record.source),
                window_id: row.record.window_id,
                started_at: row.record.started_at,
                warned: Vec::new(),
                closing: None,
            };
            let id = s.id.clone();
            let orphan = s.pid.is_none();
            self.sessions.insert(id.clone(), s);
            if orphan {
                self.end_session(&id, out);
            }
        }
    }

    /// The wrapper started the granted product. If the watcher saw the process
    /// first, its duplicate session is forgotten.
    pub(super) fn attach(&mut self, session: &str, pid: u32, out: &mut Vec<Action>) {
        if !self.sessions.contains_key(session) {
            return;
        }
        let dups: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.pid == Some(pid) && s.id != session && s.origin == Origin::Watcher)
            .map(|s| s.id.clone())
            .collect();
        for dup in dups {
            self.drop_session(&dup, out);
        }
        if let Some(s) = self.sessions.get_mut(session) {
            s.pid = Some(pid);
        }
        self.persist_session(session, out);
    }

    /// Removes a session that should leave no usage record (a duplicate).
    fn drop_session(&mut self, id: &str, out: &mut Vec<Action>) {
        if let Some(s) = self.sessions.remove(id) {
            if s.source.is_some() {
                // Already journaled as running: end it at its own start so the
                // record adds no usage.
                let mut row = self.row(&s, true).expect("licensed session has a row");
                row.record.ended_at = Some(s.started_at);
                out.push(Action::Persist(Persist::Session(row)));
            }
            self.forget_waiter(id);
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
    ) {
        if let Some(s) = self.sessions.get_mut(id) {
            match &s.closing {
                Some(c) if c.kill_at.is_some() || c.term_at <= term_at => {}
                _ => {
                    s.closing = Some(Closing {
                        reason,
                        message,
                        term_at,
                        kill_at: None,
                        killed: false,
                    })
                }
            }
        }
    }

    /// Carries out due closes: SIGTERM (and tell the user why), then SIGKILL.
    pub(super) fn run_closes(&mut self, out: &mut Vec<Action>) {
        let now = self.clock.trusted_now();
        let grace = chrono::Duration::seconds(self.policy.close_grace_secs as i64);
        for s in self.sessions.values_mut() {
            let Some(c) = s.closing.as_mut() else {
                continue;
            };
            if c.kill_at.is_none() && now >= c.term_at {
                c.kill_at = Some(now + grace);
                out.push(Action::Close {
                    session: s.id.clone(),
                    pid: s.pid,
                    graceful: true,
                });
                out.push(Action::Notify {
                    uid: Some(s.uid),
                    event: Event::ProductClosed {
                        product: s.product.clone(),
                        reason: c.reason,
                        message: c.message.clone(),
                    },
                });
            }
            if let Some(kill_at) = c.kill_at {
                if !c.killed && now >= kill_at {
                    c.killed = true;
                    out.push(Action::Kill {
                        session: s.id.clone(),
                        pid: s.pid,
                    });
                }
            }
        }
    }
}
