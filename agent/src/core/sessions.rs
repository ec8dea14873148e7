//! What clients and the watcher tell the core about runs: a wrapper's
//! `launch`, `attach` and `exit`, a connection closing, a product process
//! starting or exiting.
//!
//! The enforcement set ([`super::runs`]) decides what may leave it; this module
//! only feeds it. The rules a hostile local user meets here:
//!
//! * every exec of a product's file is a run of that product, whoever started
//!   it and whatever a wrapper said about the process before;
//! * a wrapper naming a process (in `launch` or `attach`) that the set already
//!   holds for that product joins that run: it learns its session and may be
//!   told of its close, nothing more. A run being closed stays closing;
//! * `exit` and a closed connection end only a run with no process; a run with
//!   a process ends when the kernel says the process exited;
//! * only the run's account, or an admin, may attach or end it; `exit` of a
//!   session that already ended is `ok` (the wrapper may learn of the exit
//!   after the agent), `not_found` only for one that never existed;
//! * a connection holds at most one wrapper session; an account at most
//!   [`limits::MAX_WRAPPER_SESSIONS_PER_ACCOUNT`] at once.

use flex_protocol::api::ClaimRequest;
use flex_protocol::socket::LaunchReply;
use flex_protocol::ErrorCode;
use flex_protocol::SessionId;

use super::ledger::LaunchWaiter;
use super::runs::{Cover, Found, Run, RunState, WrapperLink};
use super::{
    Action, Caller, ConnId, Core, HeldWindow, LaunchRequest, Origin, Persist, ProcessInfo, Refusal,
    SessionRow,
};
use crate::limits;
use crate::process::ProcessId;

impl Core {
    /// Rebuilds runs from the journal. Runs without a known process lost
    /// their wrapper with the agent, so they are ended; the others are tracked
    /// again, and the driver reports the ones whose process is gone (or whose
    /// pid now runs another process). After a reboot all are ended, at the last
    /// moment the agent was known to run (`ended_by_reboot`).
    pub(super) fn restore_sessions(
        &mut self,
        rows: Vec<SessionRow>,
        ended_by_reboot: Option<chrono::DateTime<chrono::Utc>>,
        out: &mut Vec<Action>,
    ) {
        for mut row in rows {
            let process = match (ended_by_reboot, row.process) {
                (None, Some(p)) => p,
                (reboot, _) => {
                    let at = reboot.unwrap_or_else(|| self.contact.now());
                    row.record.ended_at = Some(at.max(row.record.started_at));
                    self.contact.changed();
                    out.push(Action::Persist(Persist::Session(row)));
                    continue;
                }
            };
            let run = Run {
                id: row.record.id.clone(),
                account: row.account,
                account_name: row.account_name,
                user: row.record.user,
                product: row.record.product,
                version: row.record.version,
                process: Some(process),
                origin: row.origin,
                // The watcher's adoption scan confirms it again.
                seen: false,
                wrapper: None,
                started_at: row.record.started_at,
                state: RunState::Covered(Cover {
                    window: row.record.window_id,
                    source: row.record.source,
                }),
                warned: Vec::new(),
                resuming: false,
            };
            if self.add_live(run.clone(), out).is_err() {
                // The same run journaled twice: keep one.
                self.end_unused(&run, out);
            }
        }
    }

    /// Adds a run with a process to the set, tracking the process if no
    /// other run holds it. Returns the run's key, or the key of the run
    /// already holding (process, product).
    fn add_live(&mut self, run: Run, out: &mut Vec<Action>) -> Result<Found, Found> {
        let process = run.process.expect("a live run has a process");
        let key = (process, run.product.clone());
        let tracked = self.runs.holds(process);
        if !self.runs.insert_live(run) {
            return Err(Found::Live(key));
        }
        if !tracked {
            out.push(Action::Track { process });
        }
        Ok(Found::Live(key))
    }

    fn new_run(&self, req: &LaunchRequest, process: Option<ProcessId>, conn: ConnId) -> Run {
        let id = self.ids.next_session_id();
        Run {
            wrapper: Some(WrapperLink {
                session: id.clone(),
                conn: Some(conn),
            }),
            id,
            account: req.account.clone(),
            account_name: req.account_name.clone(),
            user: req.user.clone(),
            product: req.product.clone(),
            version: req.version.clone(),
            process,
            origin: Origin::Wrapper,
            seen: false,
            started_at: self.contact.now(),
            state: RunState::Unlicensed {
                reason: ErrorCode::Internal,
            },
            warned: Vec::new(),
            resuming: false,
        }
    }

    /// A wrapper asks to launch: free inside a held window, otherwise claim.
    /// The session is held by the asking connection, which lets go of any
    /// session it held before.
    pub(super) fn launch(&mut self, req: LaunchRequest, out: &mut Vec<Action>) {
        let name = self.product_name(&req.product);
        let refuse = |out: &mut Vec<Action>, r: Refusal| {
            out.push(Action::ReplyLaunch {
                request: req.request.clone(),
                result: Err(r.about(name.clone())),
            })
        };
        self.release_hold(req.conn, out);
        let held = self.runs.wrapped_by(&req.account);
        if held >= limits::MAX_WRAPPER_SESSIONS_PER_ACCOUNT {
            let message = format!(
                "account {} already has {held} wrapped product sessions, the limit: close some \
                 products first",
                req.account
            );
            return refuse(out, Refusal::new(ErrorCode::LimitExceeded, message));
        }
        let Some(process) = req.process else {
            let run = self.new_run(&req, None, req.conn);
            let id = run.id.clone();
            self.runs.insert_pending(run);
            return self.start_or_claim(Found::Pending(id), Some(req.request), out);
        };
        let run = self.new_run(&req, Some(process), req.conn);
        let found = match self.add_live(run, out) {
            Ok(found) => return self.start_or_claim(found, Some(req.request), out),
            Err(existing) => existing,
        };
        // The set already holds this process as this product: the wrapper
        // joins that run and changes nothing about it.
        if let Err(r) = self.join(&found, &req.user, req.conn, None, req.version.clone(), out) {
            return refuse(out, r);
        }
        let run = self.runs.get(&found).expect("joined").clone();
        match &run.state {
            RunState::Closing { close, .. } => {
                let r = Refusal::new(
                    super::answers::close_code(close.reason),
                    format!("this product is being closed: {}", close.message),
                );
                refuse(out, r)
            }
            RunState::Covered(_) => match self.ledger.window(&run.user, &run.product).cloned() {
                Some(held) => self.reply_granted(&req.request, &run.id, &held, 0, out),
                None => self.start_or_claim(found, Some(req.request), out),
            },
            RunState::Claiming { claim, .. } => {
                let claim = claim.clone();
                if let Some(p) = self.ledger.claim_mut(&claim) {
                    p.launches.push(LaunchWaiter {
                        request: req.request,
                        session: run.id.clone(),
                    });
                }
            }
            RunState::Unlicensed { .. } | RunState::Paused { .. } => {
                self.start_or_claim(found, Some(req.request), out)
            }
        }
    }

    /// Links a wrapper to an existing run: its session id (`session`, or the
    /// run's own), its connection, and the version it reports.
    fn join(
        &mut self,
        found: &Found,
        user: &flex_protocol::Email,
        conn: ConnId,
        session: Option<SessionId>,
        version: Option<String>,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let run = self.runs.get_mut(found).expect("found");
        if &run.user != user {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "process {} already runs '{}' for another user",
                    run.process.map_or(0, |p| p.pid),
                    run.product
                ),
            ));
        }
        if let Some(w) = &run.wrapper {
            if w.conn.is_some_and(|c| c != conn) {
                return Err(Refusal::new(
                    ErrorCode::Conflict,
                    format!(
                        "process {} already runs '{}' in session {}",
                        run.process.map_or(0, |p| p.pid),
                        run.product,
                        w.session
                    ),
                ));
            }
        }
        run.wrapper = Some(WrapperLink {
            session: session.unwrap_or_else(|| run.id.clone()),
            conn: Some(conn),
        });
        run.origin = Origin::Wrapper;
        if version.is_some() {
            run.version = version;
        }
        self.persist_run(found, out);
        Ok(())
    }

    /// The watcher saw a product start (or adopted one at agent start). Every
    /// exec of a product's file is a run of that product, whoever started it:
    /// only a run of this very (process, product) makes it nothing new.
    pub(super) fn process_started(&mut self, p: ProcessInfo, out: &mut Vec<Action>) {
        let key = (p.process, p.product.clone());
        if let Some(run) = self.runs.live_mut(&key) {
            run.seen = true;
            return;
        }
        let run = Run {
            id: self.ids.next_session_id(),
            account: p.account,
            account_name: p.account_name,
            user: p.user,
            product: p.product,
            version: p.version,
            process: Some(p.process),
            origin: Origin::Watcher,
            seen: true,
            wrapper: None,
            // The process may have started before the agent saw it (adoption).
            started_at: p.started_at.min(self.contact.now()),
            state: RunState::Unlicensed {
                reason: ErrorCode::Internal,
            },
            warned: Vec::new(),
            resuming: false,
        };
        if let Ok(found) = self.add_live(run, out) {
            self.start_or_claim(found, None, out);
        }
    }

    /// A run needs a window: free inside a held one, otherwise a claim (joining
    /// the one in flight for the same user and product, if any). `launch` is
    /// the wrapper request to answer.
    pub(super) fn start_or_claim(
        &mut self,
        found: Found,
        launch: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(run) = self.runs.get(&found) else {
            return;
        };
        let (user, product, version, session) = (
            run.user.clone(),
            run.product.clone(),
            run.version.clone(),
            run.wrapper.as_ref().map_or(&run.id, |w| &w.session).clone(),
        );
        let now = self.contact.now();
        if let Some(held) = self.ledger.valid(&user, &product, now).cloned() {
            // Free inside the window; but the offline rule will judge this
            // product by the last contact, so make it a fresh one.
            self.contact
                .refresh_if_stale(self.policy.heartbeat_interval_secs, now, out);
            self.cover(&found, &held, out);
            if let Some(request) = launch {
                self.reply_granted(&request, &session, &held, 0, out);
            }
            return;
        }
        let request = match self.ledger.open_claim_for(&user, &product) {
            Some(c) => c.request.clone(),
            None => ClaimRequest {
                claim_id: self.ids.next_claim_id(),
                user,
                product,
                version,
                results: None,
                renews: None,
            },
        };
        let claim = request.claim_id.clone();
        let hold = self.refunds.in_flight(&request.user, &request.product);
        let pending = self.ledger.send(request, now, hold, out);
        if let Some(request) = launch {
            pending.launches.push(LaunchWaiter { request, session });
        }
        let since = pending.since;
        if let Some(run) = self.runs.get_mut(&found) {
            run.state = RunState::Claiming { claim, since };
        }
    }

    /// The run now runs in `held`.
    pub(super) fn cover(&mut self, found: &Found, held: &HeldWindow, out: &mut Vec<Action>) {
        if let Some(run) = self.runs.get_mut(found) {
            run.state = RunState::Covered(Cover {
                window: Some(held.window.id.clone()),
                source: held.source,
            });
            self.refunds.ran(&run.user, &run.product, &run.account);
        }
        self.persist_run(found, out);
    }

    pub(super) fn reply_granted(
        &self,
        request: &str,
        session: &SessionId,
        held: &HeldWindow,
        charged: u64,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::ReplyLaunch {
            request: request.to_string(),
            result: Ok(LaunchReply {
                session: session.clone(),
                product: held.product.clone(),
                product_name: self.product_name(&held.product),
                source: held.source,
                window_end: held.window.end,
                tokens_charged: charged,
                balance: self.balance,
                offline: !self.contact.online,
                close_grace_secs: Some(self.policy.close_grace_secs),
            }),
        });
    }

    /// Journals a licensed run's current record.
    pub(super) fn persist_run(&mut self, found: &Found, out: &mut Vec<Action>) {
        if let Some(row) = self.runs.get(found).and_then(|r| r.row(None)) {
            self.contact.changed();
            out.push(Action::Persist(Persist::Session(row)));
        }
    }

    /// Journals the end of a run that left the set.
    pub(super) fn end_run(&mut self, run: &Run, out: &mut Vec<Action>) {
        if let Some(row) = run.row(Some(self.contact.now())) {
            self.contact.changed();
            out.push(Action::Persist(Persist::Session(row)));
        }
    }

    /// Journals a run that merged into another as adding no usage: ended at
    /// its own start.
    fn end_unused(&mut self, run: &Run, out: &mut Vec<Action>) {
        if let Some(row) = run.row(Some(run.started_at)) {
            self.contact.changed();
            out.push(Action::Persist(Persist::Session(row)));
        }
    }

    /// A process exited: its runs leave the set.
    pub(super) fn process_exited(&mut self, process: ProcessId, out: &mut Vec<Action>) {
        let runs = self.runs.exited(process);
        self.activity.forget_process(process);
        for run in &runs {
            self.end_run(run, out);
            self.closed(run, out);
        }
        if !runs.is_empty() {
            out.push(Action::Release { process });
        }
    }

    /// The wrapper started the granted product as `process`.
    pub(super) fn attach(
        &mut self,
        caller: &Caller,
        session: &SessionId,
        process: ProcessId,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let found = self.managed(caller, session)?;
        let run = self.runs.get(&found).expect("found");
        if run.wrapper.as_ref().is_none_or(|w| w.conn.is_none()) {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                format!(
                    "session {session} {}: it ends when its product process exits",
                    match run.origin {
                        Origin::Watcher => "was found by the process watcher",
                        Origin::Wrapper => "lost its flexctl run connection",
                    }
                ),
            ));
        }
        let id = match &found {
            Found::Live((p, _)) if *p == process => return Ok(()),
            Found::Live((p, _)) => {
                return Err(Refusal::new(
                    ErrorCode::Conflict,
                    format!("session {session} is already attached to process {p}"),
                ))
            }
            Found::Pending(id) => id.clone(),
        };
        let key = (process, run.product.clone());
        if self.runs.live(&key).is_none() {
            let mut run = self.runs.take_pending(&id).expect("pending");
            run.process = Some(process);
            let covered = run.cover().is_some() || matches!(run.state, RunState::Claiming { .. });
            let found = self.add_live(run, out).expect("checked free");
            if covered {
                self.persist_run(&found, out);
            } else {
                // Its window was given back before the product started.
                self.start_or_claim(found, None, out);
            }
            return Ok(());
        }
        // The set already holds this process as this product (the watcher saw
        // it exec first): the pending run merges into that one, which keeps
        // its state; a window the pending run holds covers it too.
        let user = run.user.clone();
        let conn = run.wrapper.as_ref().and_then(|w| w.conn).expect("held");
        let version = run.version.clone();
        let existing = Found::Live(key);
        self.join(&existing, &user, conn, Some(id.clone()), version, out)?;
        let pending = self.runs.take_pending(&id).expect("pending");
        if let Some(cover) = pending.cover().cloned() {
            let run = self.runs.get_mut(&existing).expect("joined");
            if matches!(
                run.state,
                RunState::Claiming { .. } | RunState::Unlicensed { .. } | RunState::Paused { .. }
            ) {
                run.state = RunState::Covered(cover);
                self.persist_run(&existing, out);
            }
        }
        self.end_unused(&pending, out);
        Ok(())
    }

    /// The wrapper reports that its product exited. A run with a process
    /// ends when the kernel says so; this only lets go of the wrapper.
    pub(super) fn exit(
        &mut self,
        caller: &Caller,
        session: &SessionId,
        out: &mut Vec<Action>,
    ) -> Result<(), Refusal> {
        let found = match self.managed(caller, session) {
            Ok(found) => found,
            Err(r) if r.code == ErrorCode::NotFound => {
                return match self.runs.ended_account(session) {
                    Some(account) if *account == caller.account || caller.admin => Ok(()),
                    Some(_) => Err(Refusal::new(
                        ErrorCode::Forbidden,
                        format!("session {session} belongs to another account"),
                    )),
                    None => Err(r),
                };
            }
            Err(r) => return Err(r),
        };
        match found {
            Found::Pending(id) => {
                let run = self.runs.take_pending(&id).expect("pending");
                self.end_run(&run, out);
            }
            Found::Live(_) => {
                if let Some(w) = self.runs.get_mut(&found).and_then(|r| r.wrapper.as_mut()) {
                    w.conn = None;
                }
            }
        }
        Ok(())
    }

    /// Finds the run a wrapper names and checks that `caller` may manage it.
    fn managed(&self, caller: &Caller, session: &SessionId) -> Result<Found, Refusal> {
        let Some(found) = self.runs.find(session) else {
            return Err(Refusal::new(
                ErrorCode::NotFound,
                format!("no session {session}: it was never granted"),
            ));
        };
        let run = self.runs.get(&found).expect("found");
        if run.account != caller.account && !caller.admin {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("session {session} belongs to another account"),
            ));
        }
        Ok(found)
    }

    /// A connection that starts a new session, or closes, lets go of what it
    /// held: a run with no process ends, one with a process goes on.
    pub(super) fn release_hold(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        let held: Vec<Found> = self
            .runs
            .all()
            .into_iter()
            .filter(|f| {
                self.runs
                    .get(f)
                    .and_then(|r| r.wrapper.as_ref())
                    .is_some_and(|w| w.conn == Some(conn))
            })
            .collect();
        for found in held {
            match found {
                Found::Pending(id) => {
                    let run = self.runs.take_pending(&id).expect("pending");
                    self.end_run(&run, out);
                }
                Found::Live(_) => {
                    if let Some(w) = self.runs.get_mut(&found).and_then(|r| r.wrapper.as_mut()) {
                        w.conn = None;
                    }
                }
            }
        }
    }

    pub(super) fn connection_closed(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        self.release_hold(conn, out);
    }
}
