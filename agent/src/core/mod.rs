//! The agent's decision core: charge windows, renewals, the offline rule and
//! enforcement, without any I/O.
//!
//! A driver owns one [`Core`] and calls [`Core::handle`] with every fact it
//! observes and the current [`Now`]; the core answers with [`Action`]s. The driver
//!
//! 1. applies every [`Action::Persist`] of the batch to the journal in one
//!    transaction (a claim id is therefore durable before it is sent),
//! 2. then carries out the other actions in order: sends claims, signals
//!    processes, answers the socket, publishes events,
//! 3. arms a timer for the latest [`Action::SetTimer`] (a boot-clock reading; see
//!    also [`Core::next_deadline`]) and feeds [`Input::Tick`] when it fires, and
//!    also at its poll interval, since a monotonic timer may not count suspend.
//!
//! In outline (the driver, not part of this module):
//!
//! ```text
//! let journal = Journal::open_in(&config.state_dir)?;
//! let (mut core, first) = Core::restore(cfg, journal.load_state()?, sysclock::now(), sysclock::boot_id());
//! run(first);                       // same as below
//! loop {
//!     let input = next event: socket request, watcher event, claim/heartbeat
//!                 answer, or Tick when the SetTimer deadline / poll interval passes;
//!     let actions = core.handle(input, sysclock::now());
//!     journal.apply(&actions)?;     // all Persist, one transaction, before anything else
//!     for a in actions { Claim => POST /v1/agent/claims then feed ClaimAnswered/ClaimFailed,
//!                        Heartbeat => batch = journal.heartbeat_batch(); POST with
//!                                     notices_after = core.notices_after(); on success
//!                                     feed ContactOk with batch.receipt(accepted)
//!                                     (+ RateSheet if products came),
//!                        Close/Kill => signal, Notify => publish, Reply* => answer socket }
//! }
//! ```
//!
//! After a restart, [`Core::restore`] rebuilds the core from the journal's
//! [`CoreState`]: open windows are honoured again, unsettled claims are resent
//! with their ids, and the offline time keeps counting (see [`clock`]).
//!
//! Every comparison with a window or a deadline uses the clock's trusted time
//! (server time at last contact plus boot-clock time since), never the raw wall
//! clock, so a user moving the clock neither stretches a window nor escapes the
//! offline rule.

pub mod actions;
mod activity;
mod answers;
pub mod clock;
mod closes;
mod contact;
mod jobs;
mod ledger;
mod offline;
mod policy;
mod refunds;
mod runs;
mod sessions;

// The core's tests decide claims with the server's own rules (flex-server),
// which builds for Unix only; the core itself has no per-OS code, so they run
// on Linux only.
#[cfg(all(test, unix))]
mod testkit;
#[cfg(all(test, unix))]
mod tests_claims;
#[cfg(all(test, unix))]
mod tests_closes;
#[cfg(all(test, unix))]
mod tests_enforcement;
#[cfg(all(test, unix))]
mod tests_hostile;
#[cfg(all(test, unix))]
mod tests_idle;
#[cfg(all(test, unix))]
mod tests_offline;
#[cfg(all(test, unix))]
mod tests_sessions;
#[cfg(all(test, unix))]
mod tests_short_use;
#[cfg(all(test, unix))]
mod tests_windows;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::api::{Policy, Product};
use flex_protocol::lease::LeaseVerifier;
use flex_protocol::socket::{Event, SessionStatus, WindowStatus};
use flex_protocol::ProductId;
use flex_protocol::{Email, IdSource};

use crate::limits;

pub use actions::{
    Action, Caller, CloseRoute, ConnId, CoreState, HeldWindow, Input, JobOutcome, JobRequest,
    JobState, LaunchRequest, Origin, Persist, ProcessInfo, RefundAsk, Refusal, SessionRow,
    UploadReceipt,
};
pub use clock::{ClockState, Now, OfflineClock};
pub use jobs::JOB_MEMORY;
pub use policy::default_policy;
pub use runs::CLAIM_TIMEOUT;

use activity::Activity;
use contact::Contact;
use jobs::Jobs;
use ledger::Ledger;
use refunds::Refunds;
use runs::Runs;

/// The display name of `product` in a rate sheet keyed by id.
fn name_of(products: &HashMap<ProductId, Product>, product: &ProductId) -> Option<String> {
    products.get(product).map(|p| p.name.clone())
}

/// What the core needs to know about this device.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub device_id: String,
    /// Close watched products that are not licensed (denied, offline).
    pub enforce: bool,
    /// The lease keys pinned at enrollment.
    pub verifier: LeaseVerifier,
}

/// A summary for `flexctl status`.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreStatus {
    pub sessions: Vec<SessionStatus>,
    pub sessions_omitted: usize,
    /// Windows held now (not yet ended).
    pub windows: Vec<WindowStatus>,
    pub windows_omitted: usize,
    pub balance: Option<u64>,
    pub last_server_contact: Option<DateTime<Utc>>,
    /// Seconds before token-backed products would be closed for being offline.
    pub offline_seconds_left: Option<i64>,
    pub online: bool,
}

/// The decision core, split by owner: each part keeps its own fields and rules,
/// and `Core` only passes facts between them.
///
/// * [`Contact`]: the offline clock, heartbeats, what the server has yet to hear;
/// * [`Ledger`]: windows held and claims in flight;
/// * [`Runs`]: the enforcement set, every product process and its state;
/// * [`Jobs`]: per-result jobs.
pub struct Core {
    config: CoreConfig,
    policy: Policy,
    products: HashMap<ProductId, Product>,
    balance: Option<u64>,
    contact: Contact,
    ledger: Ledger,
    runs: Runs,
    jobs: Jobs,
    activity: Activity,
    refunds: Refunds,
    timer: Option<Duration>,
    /// Where new session and claim ids come from.
    ids: IdSource,
}

impl Core {
    /// Builds the core at agent start from what the journal holds (an empty
    /// [`CoreState`] for a fresh journal); carry out the returned actions. They
    /// resend unsettled claims, report a clock rollback that happened while the
    /// agent was down and ask for a heartbeat. After a reboot (a new `boot_id`)
    /// every journaled session is ended; otherwise the driver must report
    /// [`Input::ProcessExited`] for restored processes that no longer run
    /// (checking the process start time, as pids are reused).
    pub fn restore(
        config: CoreConfig,
        state: CoreState,
        now: Now,
        boot_id: Option<String>,
    ) -> (Self, Vec<Action>) {
        Core::restore_with_ids(config, state, now, boot_id, IdSource::Random)
    }

    /// [`restore`](Self::restore), making new ids from `ids` (the
    /// deterministic simulation's seeded sequence).
    pub fn restore_with_ids(
        config: CoreConfig,
        state: CoreState,
        now: Now,
        boot_id: Option<String>,
        ids: IdSource,
    ) -> (Self, Vec<Action>) {
        let mut out = Vec::new();
        // No process survives a reboot: sessions journaled before it ended then.
        let ended_by_reboot = state
            .clock
            .as_ref()
            .filter(|saved| saved.rebooted(now, boot_id.as_deref()))
            .map(ClockState::checkpoint_trusted);
        let (clock, rollback) = match state.clock {
            Some(saved) => OfflineClock::resume(saved, now, boot_id),
            None => (OfflineClock::new(now, boot_id), None),
        };
        let mut core = Core {
            jobs: Jobs::new(&config.device_id),
            config,
            policy: state.policy.unwrap_or_else(default_policy),
            products: state
                .products
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
            balance: state.balance,
            contact: Contact::new(clock, state.notices_seen),
            ledger: Ledger::default(),
            runs: Runs::default(),
            activity: Activity::default(),
            refunds: Refunds::default(),
            timer: None,
            ids,
        };
        core.note_rollback(rollback, &mut out);
        for held in state.windows {
            // A journal edited by hand cannot mint windows: re-verify each lease.
            if ledger::check_lease(&core.config.verifier, &core.config.device_id, &held).is_ok() {
                core.ledger.restore(held);
            }
        }
        for job in state.jobs {
            core.jobs.restore(job);
        }
        core.restore_sessions(state.sessions, ended_by_reboot, &mut out);
        let now = core.contact.now();
        for request in state.pending_claims {
            core.ledger.resume(request, now, &mut out);
        }
        core.restore_refunds(state.pending_refunds, &mut out);
        core.contact.persist_clock(&mut out);
        core.evaluate(&mut out);
        core.arm_timer(&mut out);
        (core, out)
    }

    /// Feeds one observed fact; returns what the driver must do, in order.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        let rollback = self.contact.advance(now);
        self.note_rollback(rollback, &mut out);
        match input {
            Input::Launch(req) => self.launch(req, &mut out),
            Input::Attach {
                request,
                conn: _,
                caller,
                session,
                process,
            } => {
                let result = self.attach(&caller, &session, process, &mut out);
                out.push(Action::ReplyDone { request, result });
            }
            Input::Exit {
                request,
                conn: _,
                caller,
                session,
            } => {
                let result = self.exit(&caller, &session, &mut out);
                out.push(Action::ReplyDone { request, result });
            }
            Input::ConnectionClosed { conn } => {
                self.activity.forget(conn);
                self.connection_closed(conn, &mut out)
            }
            Input::ProcessStarted(info) => self.process_started(info, &mut out),
            Input::ProcessExited { process } => self.process_exited(process, &mut out),
            Input::ClaimAnswered { claim_id, response } => {
                self.contact.claim_answered(&mut out);
                self.reconnected(&mut out);
                self.claim_answered(&claim_id, response, &mut out)
            }
            Input::ClaimFailed { claim_id, error } => {
                self.contact.claim_failed();
                self.claim_failed(&claim_id, &error, &mut out)
            }
            Input::ContactOk {
                server_time,
                policy,
                balance,
                notices,
                uploaded,
            } => {
                self.contact_ok(server_time, policy, balance, uploaded, &mut out);
                self.notices(notices, &mut out);
            }
            Input::ContactFailed { .. } => self.contact.heartbeat_failed(),
            Input::RefundAnswered { window_id, result } => {
                self.contact.claim_answered(&mut out);
                self.refund_answered(&window_id, result, &mut out)
            }
            Input::RefundFailed { window_id } => {
                self.contact.claim_failed();
                self.refund_failed(&window_id, &mut out)
            }
            Input::DeviceRevoked { message } => {
                self.contact.heartbeat_failed();
                self.revoked(message, &mut out);
            }
            Input::RateSheet(products) => {
                self.products = products.iter().map(|p| (p.id.clone(), p.clone())).collect();
                out.push(Action::Persist(Persist::RateSheet(products)));
            }
            Input::Job(req) => self.job(req, &mut out),
            Input::Activity {
                conn,
                account,
                idle,
                locked,
            } => self.activity(conn, account, idle, locked),
            Input::WindowsClosing {
                account,
                pid,
                windows,
            } => self.windows_closing(&account, pid, windows),
            Input::CpuTimes { samples } => self.cpu_times(samples),
            Input::Tick => {}
        }
        self.evaluate(&mut out);
        self.contact.checkpoint(&mut out);
        self.arm_timer(&mut out);
        out
    }

    /// The boot-clock reading at which the core next needs a [`Input::Tick`].
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines()
            .into_iter()
            .min()
            .map(|at| self.contact.clock.boot_at(at))
    }

    /// For the heartbeat request: only notices newer than this are wanted.
    pub fn notices_after(&self) -> Option<i64> {
        self.contact.notices_seen
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    /// Whether `new` is the rate sheet the core already has (in any order).
    pub fn same_products(&self, new: &[Product]) -> bool {
        new.len() == self.products.len() && new.iter().all(|p| self.products.get(&p.id) == Some(p))
    }

    /// The rate sheet's display name of `product` ("AutoCAD"), if the agent
    /// has a rate sheet naming it. Events and replies carry it beside the id.
    pub fn product_name(&self, product: &ProductId) -> Option<String> {
        name_of(&self.products, product)
    }

    /// The agent's trusted estimate of the server's time.
    pub fn trusted_now(&self) -> DateTime<Utc> {
        self.contact.now()
    }

    /// Whether the next heartbeat may wait for its jitter: only once the server
    /// was reached (the first contact brings the rate sheet, so it goes at once).
    pub fn heartbeat_jitter(&self) -> Duration {
        // A check before a warning or a close goes at once too.
        if self.contact.clock.last_contact().is_some() && !self.contact.checking() {
            Duration::from_secs(self.policy.heartbeat_interval_secs)
        } else {
            Duration::ZERO
        }
    }

    /// What `flexctl status` shows: every session and held window, or only
    /// those of `user`; at most [`limits::MAX_STATUS_ITEMS`] of each, the rest
    /// counted, so the reply always fits in a socket line.
    pub fn status(&self, user: Option<&Email>) -> CoreStatus {
        let mine = |u: &Email| user.is_none_or(|x| x == u);
        let mut sessions: Vec<SessionStatus> = self
            .runs
            .iter()
            .filter(|r| mine(&r.user))
            .filter_map(|r| {
                let (source, window_end) = match (&r.state, r.cover()) {
                    (runs::RunState::Paused { since, source }, _) => (*source, *since),
                    (_, Some(cover)) => {
                        let window = cover
                            .window
                            .as_ref()
                            .and_then(|id| self.ledger.window_by_id(id))
                            .or_else(|| self.ledger.window(&r.user, &r.product))?;
                        (cover.source, window.window.end)
                    }
                    _ => return None,
                };
                let (state, closes_at) = match &r.state {
                    runs::RunState::Closing { close, .. } => ("closing", Some(close.term_at)),
                    runs::RunState::Paused { .. } => ("paused", None),
                    _ => ("running", None),
                };
                let paused_since = match &r.state {
                    runs::RunState::Paused { since, .. } => {
                        Some(self.contact.clock.wall_at(*since))
                    }
                    _ => None,
                };
                Some(SessionStatus {
                    session: r.wrapper.as_ref().map_or(&r.id, |w| &w.session).clone(),
                    user: r.user.to_string(),
                    product: r.product.clone(),
                    product_name: self.product_name(&r.product),
                    version: r.version.clone(),
                    pid: r.process.map(|p| p.pid),
                    source,
                    started_at: r.started_at,
                    window_end,
                    origin: r.origin.as_str().to_string(),
                    state: state.into(),
                    paused_since,
                    closes_at: closes_at.map(|t| self.contact.clock.wall_at(t)),
                })
            })
            .collect();
        sessions.sort_by(|a, b| (a.started_at, &a.session).cmp(&(b.started_at, &b.session)));
        let now = self.contact.now();
        let mut windows: Vec<WindowStatus> = self
            .ledger
            .windows()
            .filter(|h| mine(&h.user) && h.window.end > now)
            .map(|h| WindowStatus {
                user: h.user.to_string(),
                product: h.product.clone(),
                product_name: self.product_name(&h.product),
                source: h.source,
                tokens_charged: h.tokens_charged,
                start: h.window.start,
                end: h.window.end,
            })
            .collect();
        windows.sort_by(|a, b| (&a.user, &a.product).cmp(&(&b.user, &b.product)));
        let sessions_omitted = sessions.len().saturating_sub(limits::MAX_STATUS_ITEMS);
        sessions.truncate(limits::MAX_STATUS_ITEMS);
        let windows_omitted = windows.len().saturating_sub(limits::MAX_STATUS_ITEMS);
        windows.truncate(limits::MAX_STATUS_ITEMS);
        let limit = chrono::Duration::seconds(self.policy.flex_offline_limit_secs as i64);
        CoreStatus {
            sessions,
            sessions_omitted,
            windows,
            windows_omitted,
            balance: self.balance,
            last_server_contact: self.contact.clock.last_contact(),
            offline_seconds_left: self.contact.clock.offline_for().map(|d| {
                (limit - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
                    .num_seconds()
                    .max(0)
            }),
            online: self.contact.online,
        }
    }

    pub fn last_server_contact(&self) -> Option<DateTime<Utc>> {
        self.contact.clock.last_contact()
    }

    /// Whether any product process is tracked: the driver then wakes at its
    /// poll interval.
    pub fn has_sessions(&self) -> bool {
        !self.runs.is_empty()
    }

    fn note_rollback(
        &mut self,
        rollback: Option<flex_protocol::api::ClockRollback>,
        out: &mut Vec<Action>,
    ) {
        if let Some(rb) = rollback {
            out.push(Action::Persist(Persist::ClockRollback(rb.clone())));
            out.push(Action::Notify {
                account: None,
                event: Event::ClockRollback {
                    seconds: rb.seconds,
                },
            });
            self.contact.persist_clock(out);
        }
    }

    fn arm_timer(&mut self, out: &mut Vec<Action>) {
        let next = self.next_deadline();
        if next != self.timer {
            self.timer = next;
            if let Some(at) = next {
                out.push(Action::SetTimer(at));
            }
        }
    }
}
