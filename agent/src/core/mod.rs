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
//!                                     journal.acknowledge(&batch, &resp.accepted_sessions)
//!                                     and feed ContactOk (+ RateSheet if products came),
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
mod answers;
pub mod clock;
mod jobs;
mod offline;
mod policy;
mod sessions;
mod windows;

// The core's tests decide claims with the server's own rules (flex-server),
// which builds for Unix only; the core itself has no per-OS code, so they run
// on Linux only.
#[cfg(all(test, unix))]
mod testkit;
#[cfg(all(test, unix))]
mod tests_claims;
#[cfg(all(test, unix))]
mod tests_offline;
#[cfg(all(test, unix))]
mod tests_sessions;
#[cfg(all(test, unix))]
mod tests_windows;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::api::{ClaimRequest, Policy, Product, Source};
use flex_protocol::lease::LeaseVerifier;
use flex_protocol::socket::{CloseReason, Event, SessionStatus, WindowStatus};
use flex_protocol::Email;

use crate::account::AccountId;
use crate::limits;
use crate::process::ProcessId;

pub use actions::{
    Action, Caller, CloseRoute, ConnId, CoreState, HeldWindow, Input, JobOutcome, JobRequest,
    JobState, LaunchRequest, Origin, Persist, ProcessInfo, Refusal, SessionRow,
};
pub use clock::{ClockState, Now, OfflineClock};
pub use jobs::JOB_MEMORY;
pub use policy::default_policy;

/// The display name of `product` in a rate sheet keyed by id.
fn name_of(products: &HashMap<String, Product>, product: &str) -> Option<String> {
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

/// One product run the agent tracks.
#[derive(Debug, Clone)]
struct Session {
    id: String,
    account: AccountId,
    account_name: String,
    user: Email,
    product: String,
    version: Option<String>,
    /// The product's process, once attached or detected.
    process: Option<ProcessId>,
    origin: Origin,
    /// The `flexctl run` connection holding this session, while it is open. A
    /// wrapper session whose connection is gone goes on while its process runs.
    holder: Option<ConnId>,
    /// `None` while the claim is outstanding or when the run is not licensed.
    source: Option<Source>,
    window_id: Option<String>,
    started_at: DateTime<Utc>,
    /// Offline warning offsets (seconds before the limit) already sent.
    warned: Vec<u64>,
    closing: Option<Closing>,
}

/// A close in progress: graceful at `term_at`, forced `close_grace` later.
#[derive(Debug, Clone, PartialEq)]
struct Closing {
    reason: CloseReason,
    message: String,
    /// Set when a failed renewal of this window scheduled the close: a later
    /// successful renewal of it cancels the close.
    renewal_of: Option<String>,
    term_at: DateTime<Utc>,
    /// Set once the graceful close was sent.
    kill_at: Option<DateTime<Utc>>,
    killed: bool,
}

/// Who waits for a claim's answer.
#[derive(Debug, Clone, PartialEq)]
enum Waiter {
    Launch {
        request: String,
        session: String,
    },
    Watch {
        session: String,
    },
    Job {
        request: String,
        account: AccountId,
        job: String,
    },
}

#[derive(Debug, Clone)]
struct PendingClaim {
    request: ClaimRequest,
    waiters: Vec<Waiter>,
    /// Sent and not yet answered nor failed.
    in_flight: bool,
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

pub struct Core {
    config: CoreConfig,
    policy: Policy,
    products: HashMap<String, Product>,
    balance: Option<u64>,
    notices_seen: Option<i64>,
    clock: OfflineClock,
    /// The last contact attempt succeeded.
    online: bool,
    windows: HashMap<(Email, String), HeldWindow>,
    sessions: BTreeMap<String, Session>,
    claims: BTreeMap<String, PendingClaim>,
    /// Per-result jobs by (user, product, job id).
    jobs: HashMap<(Email, String, String), JobState>,
    /// Renewals whose grant could not be verified, by window id: when to try
    /// again and how many tries failed. Never a tight loop of fresh claims.
    renewal_retry: HashMap<String, (DateTime<Utc>, u32)>,
    /// Trusted time of the last heartbeat sent, and failures in a row since.
    heartbeat_at: Option<DateTime<Utc>>,
    heartbeat_in_flight: bool,
    failures: u32,
    /// Session changes counted: made, included in the heartbeat in flight, and
    /// acknowledged by a successful heartbeat. `unsent > acked`: upload due.
    unsent: u64,
    sending: u64,
    acked: u64,
    clock_persisted_at: DateTime<Utc>,
    timer: Option<Duration>,
}

/// How often the clock's checkpoint is journaled while sessions run. A reboot
/// with the wall clock wound back can lose at most this much offline time (the
/// boot clock restarts and the wall clock is not believed), so it is short; one
/// small row write a minute costs nothing.
const CLOCK_PERSIST_EVERY: chrono::Duration = chrono::Duration::minutes(1);

impl Core {
    /// Builds the core at agent start from what the journal holds (an empty
    /// [`CoreState`] for a fresh journal); carry out the returned actions. They
    /// actions resend unsettled claims, report a clock rollback that happened while
    /// the agent was down and ask for a heartbeat. After a reboot (a new
    /// `boot_id`) every journaled session is ended; otherwise the driver must
    /// report [`Input::ProcessExited`] for restored session pids that no longer
    /// run (checking the process start time, as pids are reused).
    pub fn restore(
        config: CoreConfig,
        state: CoreState,
        now: Now,
        boot_id: Option<String>,
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
            config,
            policy: state.policy.unwrap_or_else(default_policy),
            products: state
                .products
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
            balance: state.balance,
            notices_seen: state.notices_seen,
            online: false,
            clock_persisted_at: clock.trusted_now(),
            clock,
            windows: HashMap::new(),
            sessions: BTreeMap::new(),
            claims: BTreeMap::new(),
            jobs: HashMap::new(),
            renewal_retry: HashMap::new(),
            heartbeat_at: None,
            heartbeat_in_flight: false,
            failures: 0,
            // The journal may hold records from before the restart.
            unsent: 1,
            sending: 0,
            acked: 0,
            timer: None,
        };
        core.note_rollback(rollback, &mut out);
        for held in state.windows {
            // A journal edited by hand cannot mint windows: re-verify each lease.
            if core.check_lease(&held).is_ok() {
                core.windows
                    .insert((held.user.clone(), held.product.clone()), held);
            }
        }
        for job in state.jobs {
            core.jobs.insert(
                (job.user.clone(), job.product.clone(), job.job.clone()),
                job,
            );
        }
        core.restore_sessions(state.sessions, ended_by_reboot, &mut out);
        for request in state.pending_claims {
            out.push(Action::Claim {
                claim_id: request.claim_id.clone(),
                request: request.clone(),
            });
            core.claims.insert(
                request.claim_id.clone(),
                PendingClaim {
                    request,
                    waiters: Vec::new(),
                    in_flight: true,
                },
            );
        }
        out.push(Action::Persist(Persist::Clock(core.clock.state().clone())));
        core.evaluate(&mut out);
        core.arm_timer(&mut out);
        (core, out)
    }

    /// Feeds one observed fact; returns what the driver must do, in order.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        let rollback = self.clock.advance(now);
        self.note_rollback(rollback, &mut out);
        match input {
            Input::Launch(req) => self.launch(req, &mut out),
            Input::Attach {
                request,
                conn,
                caller,
                session,
                process,
            } => {
                let result = self.attach(conn, &caller, &session, process, &mut out);
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
            Input::ConnectionClosed { conn } => self.connection_closed(conn, &mut out),
            Input::ProcessStarted(info) => self.process_started(info, &mut out),
            Input::ProcessExited { process } => {
                let ids: Vec<String> = self
                    .sessions
                    .values()
                    .filter(|s| s.process == Some(process))
                    .map(|s| s.id.clone())
                    .collect();
                for id in ids {
                    self.end_session(&id, &mut out);
                }
            }
            Input::ClaimAnswered { claim_id, response } => {
                self.contact_by_claim(&mut out);
                self.claim_answered(&claim_id, response, &mut out)
            }
            Input::ClaimFailed { claim_id, error } => {
                self.online = false;
                self.claim_failed(&claim_id, &error, &mut out)
            }
            Input::ContactOk {
                server_time,
                policy,
                balance,
                notices,
            } => {
                self.contact_ok(server_time, policy, balance, &mut out);
                self.notices(notices, &mut out);
            }
            Input::ContactFailed { .. } => {
                self.online = false;
                self.heartbeat_in_flight = false;
                self.failures = self.failures.saturating_add(1);
            }
            Input::RateSheet(products) => {
                self.products = products.iter().map(|p| (p.id.clone(), p.clone())).collect();
                out.push(Action::Persist(Persist::RateSheet(products)));
            }
            Input::Job(req) => self.job(req, &mut out),
            Input::Tick => {}
        }
        self.evaluate(&mut out);
        if self.clock.trusted_now() - self.clock_persisted_at >= CLOCK_PERSIST_EVERY {
            self.persist_clock(&mut out);
        }
        self.arm_timer(&mut out);
        out
    }

    /// The boot-clock reading at which the core next needs a [`Input::Tick`].
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines().min().map(|at| self.clock.boot_at(at))
    }

    /// For the heartbeat request: only notices newer than this are wanted.
    pub fn notices_after(&self) -> Option<i64> {
        self.notices_seen
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values()
    }

    /// The rate sheet's display name of `product` ("AutoCAD"), if the agent
    /// has a rate sheet naming it. Events and replies carry it beside the id.
    pub fn product_name(&self, product: &str) -> Option<String> {
        name_of(&self.products, product)
    }

    /// The agent's trusted estimate of the server's time.
    pub fn trusted_now(&self) -> DateTime<Utc> {
        self.clock.trusted_now()
    }

    /// What `flexctl status` shows: every session and held window, or only
    /// those of `user`; at most [`limits::MAX_STATUS_ITEMS`] of each, the rest
    /// counted, so the reply always fits in a socket line.
    pub fn status(&self, user: Option<&Email>) -> CoreStatus {
        let mine = |u: &Email| user.is_none_or(|x| x == u);
        let mut sessions: Vec<SessionStatus> = self
            .sessions
            .values()
            .filter(|s| mine(&s.user))
            .filter_map(|s| {
                let source = s.source?;
                let window = self.windows.get(&(s.user.clone(), s.product.clone()))?;
                Some(SessionStatus {
                    session: s.id.clone(),
                    user: s.user.to_string(),
                    product: s.product.clone(),
                    product_name: self.product_name(&s.product),
                    version: s.version.clone(),
                    pid: s.process.map(|p| p.pid),
                    source,
                    started_at: s.started_at,
                    window_end: window.window.end,
                    origin: s.origin.as_str().to_string(),
                })
            })
            .collect();
        let now = self.clock.trusted_now();
        let mut windows: Vec<WindowStatus> = self
            .windows
            .values()
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
            last_server_contact: self.clock.last_contact(),
            offline_seconds_left: self.clock.offline_for().map(|d| {
                (limit - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
                    .num_seconds()
                    .max(0)
            }),
            online: self.online,
        }
    }

    pub fn last_server_contact(&self) -> Option<DateTime<Utc>> {
        self.clock.last_contact()
    }

    /// Whether any session runs: the driver then wakes at its poll interval.
    pub fn has_sessions(&self) -> bool {
        !self.sessions.is_empty()
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
            self.persist_clock(out);
        }
    }

    fn persist_clock(&mut self, out: &mut Vec<Action>) {
        self.clock_persisted_at = self.clock.trusted_now();
        out.push(Action::Persist(Persist::Clock(self.clock.state().clone())));
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
