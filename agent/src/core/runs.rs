//! The enforcement set: every running product process the agent knows of, and
//! where each stands.
//!
//! A *run* is one process running one product for one user. The process
//! watcher adds a run for every process the kernel shows executing a product's
//! file; a wrapper (`flexctl run`, or any client of `launch`) adds one for the
//! process it declares, or a *pending* run for a product it has not started yet.
//! Every run is, at every moment, in exactly one [`RunState`]: claiming a window
//! (bounded by [`CLAIM_TIMEOUT`]), covered by a held window, closing (a deadline,
//! then killed), paused (idle when its window ended, R14), or — only where the
//! site does not enforce — unlicensed.
//!
//! The rule this module makes structural: **a run that has a process leaves the
//! set only when that process exits** ([`Runs::exited`]). There is no other way
//! to remove one: wrappers, sessions and requests only add information (the
//! version, which wrapper to tell, that the kernel confirmed the product), so no
//! client can take a running product out of enforcement. Pending runs — nothing
//! running yet — may be dropped by their wrapper ([`Runs::take_pending`]).
//! There is at most one run per (process, product): a second claim on the same
//! pair joins the first ([`RunKey`] is the map key).

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use flex_protocol::api::{SessionRecord, Source};
use flex_protocol::socket::CloseReason;
use flex_protocol::{ClaimId, ProductId, SessionId, WindowId};
use flex_protocol::{Email, ErrorCode};

use super::{ConnId, Origin, SessionRow};
use crate::account::AccountId;
use crate::process::ProcessId;

/// How long a run may wait for its first claim's answer before it is treated as
/// refused for being offline. Above the driver's own retries (three attempts of
/// at most 30 s each), so only a claim that is truly stuck runs into it.
pub const CLAIM_TIMEOUT: chrono::Duration = chrono::Duration::seconds(120);

/// How many ended session ids are remembered, so that a wrapper's `exit` after
/// its product was already seen to end is answered `ok`, not `not_found`.
const ENDED_MEMORY: usize = 1024;

/// A run with a process: the process and the product it runs.
pub(super) type RunKey = (ProcessId, ProductId);

/// The window a run is licensed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cover {
    /// `None` only for a run restored from a journaled record that named no
    /// window: it matches no window (and its record names none).
    pub window: Option<WindowId>,
    pub source: Source,
}

/// A close in progress: announced, graceful from `term_at` (the desktop asks
/// the product's windows to close; SIGTERM when it has none), forced
/// `close_grace` later.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Closing {
    pub reason: CloseReason,
    pub message: String,
    /// Set when a failed renewal of this window scheduled the close: a later
    /// successful renewal of it cancels the close.
    pub renewal_of: Option<WindowId>,
    pub term_at: DateTime<Utc>,
    /// Set once the close began (at `term_at`): when it is forced.
    pub kill_at: Option<DateTime<Utc>>,
    pub killed: bool,
    /// The user and the wrapper were told when it closes.
    pub announced: bool,
    /// When the user's desktop was asked to close the product's windows.
    pub asked_desktop: Option<DateTime<Utc>>,
    /// The graceful step was taken: windows asked to close, or SIGTERM (or
    /// the wrapper's order) sent.
    pub graceful: bool,
}

impl Closing {
    pub fn new(
        reason: CloseReason,
        message: String,
        term_at: DateTime<Utc>,
        renewal_of: Option<WindowId>,
    ) -> Closing {
        Closing {
            reason,
            message,
            renewal_of,
            term_at,
            kill_at: None,
            killed: false,
            announced: false,
            asked_desktop: None,
            graceful: false,
        }
    }
}

/// Where a run stands: exactly one of these at every moment.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RunState {
    /// Waiting for claim `claim` since `since` (trusted time).
    Claiming {
        claim: ClaimId,
        since: DateTime<Utc>,
    },
    /// Licensed by a held window (which may have just ended, with its renewal
    /// under way; the offline rule bounds how long that may last).
    Covered(Cover),
    /// Being closed; `cover` is the window it was licensed by, if any, which a
    /// reconnect or a successful renewal retry may restore.
    Closing {
        close: Closing,
        cover: Option<Cover>,
    },
    /// Refused (or its claim failed) where the site does not enforce: left
    /// running, not licensed, never charged.
    Unlicensed { reason: ErrorCode },
    /// Idle when its window ended (R14): not renewed, left running, not
    /// charged, until its user comes back (input, or CPU use).
    Paused {
        since: DateTime<Utc>,
        /// What paid for the window it was paused at the end of.
        source: Source,
    },
}

/// The wrapper that announced or adopted a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WrapperLink {
    /// The session id the wrapper was given (the run's own id, or the id of the
    /// pending run it started with, which merged into this one).
    pub session: SessionId,
    /// Its connection, while open: where a close is announced.
    pub conn: Option<ConnId>,
}

#[derive(Debug, Clone)]
pub(super) struct Run {
    /// The session id: the usage record's id.
    pub id: SessionId,
    pub account: AccountId,
    pub account_name: String,
    pub user: Email,
    pub product: ProductId,
    pub version: Option<String>,
    pub process: Option<ProcessId>,
    pub origin: Origin,
    /// The kernel showed this process executing the product's file (as opposed
    /// to a wrapper declaring it).
    pub seen: bool,
    pub wrapper: Option<WrapperLink>,
    pub started_at: DateTime<Utc>,
    pub state: RunState,
    /// Offline warning offsets (seconds before the limit) already sent.
    pub warned: Vec<u64>,
    /// Waiting for a new window after a pause: its user is told it resumed.
    pub resuming: bool,
}

impl Run {
    /// The window licensing this run, also while it is being closed.
    pub fn cover(&self) -> Option<&Cover> {
        match &self.state {
            RunState::Covered(c) => Some(c),
            RunState::Closing { cover, .. } => cover.as_ref(),
            _ => None,
        }
    }

    pub fn closing(&self) -> Option<&Closing> {
        match &self.state {
            RunState::Closing { close, .. } => Some(close),
            _ => None,
        }
    }

    /// Whether `session` names this run for a wrapper.
    pub fn answers_to(&self, session: &SessionId) -> bool {
        self.id == session || self.wrapper.as_ref().is_some_and(|w| w.session == session)
    }

    /// Runs in `window` and is not being closed, except by a failed renewal of
    /// that window, which a retry may still save.
    pub fn runs_in(&self, window: &WindowId) -> bool {
        match &self.state {
            RunState::Covered(c) => c.window.as_ref() == Some(window),
            RunState::Closing {
                close,
                cover: Some(c),
            } => {
                c.window.as_ref() == Some(window)
                    && close.kill_at.is_none()
                    && close.renewal_of.as_ref() == Some(window)
            }
            _ => false,
        }
    }

    /// Starts closing: graceful at `term_at`. An earlier close already
    /// scheduled wins; a close already under way is never replaced.
    pub fn close(
        &mut self,
        reason: CloseReason,
        message: String,
        term_at: DateTime<Utc>,
        renewal_of: Option<WindowId>,
    ) {
        let cover = match &self.state {
            RunState::Closing { close, .. }
                if close.kill_at.is_some() || close.term_at <= term_at =>
            {
                return;
            }
            RunState::Closing { cover, .. } => cover.clone(),
            RunState::Covered(c) => Some(c.clone()),
            _ => None,
        };
        self.state = RunState::Closing {
            close: Closing::new(reason, message, term_at, renewal_of),
            cover,
        };
    }

    /// The journal row of a licensed run; `None` while it has no window.
    pub fn row(&self, ended_at: Option<DateTime<Utc>>) -> Option<SessionRow> {
        let cover = self.cover()?;
        Some(SessionRow {
            record: SessionRecord {
                id: self.id.clone(),
                user: self.user.clone(),
                product: self.product.clone(),
                version: self.version.clone(),
                source: cover.source,
                window_id: cover.window.clone(),
                started_at: self.started_at,
                ended_at,
            },
            account: self.account.clone(),
            account_name: self.account_name.clone(),
            process: self.process,
            origin: self.origin,
        })
    }
}

/// Where a run was found by session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    Live(RunKey),
    Pending(SessionId),
}

/// The enforcement set.
#[derive(Debug, Default)]
pub(super) struct Runs {
    /// Runs with a process, one per (process, product): removed only by
    /// [`Runs::exited`].
    live: BTreeMap<RunKey, Run>,
    /// Wrapper runs whose product has not started yet, by session id.
    pending: BTreeMap<SessionId, Run>,
    /// Recently ended session ids and their accounts.
    ended: VecDeque<(SessionId, AccountId)>,
}

impl Runs {
    /// Adds a run with a process; `false` (and nothing changes) if (process,
    /// product) is already in the set: the caller joins that one instead.
    pub fn insert_live(&mut self, run: Run) -> bool {
        let Some(process) = run.process else {
            return false;
        };
        let key = (process, run.product.clone());
        if self.live.contains_key(&key) {
            return false;
        }
        self.live.insert(key, run);
        true
    }

    pub fn insert_pending(&mut self, run: Run) -> &mut Run {
        debug_assert!(run.process.is_none());
        self.pending.entry(run.id.clone()).or_insert(run)
    }

    pub fn live(&self, key: &RunKey) -> Option<&Run> {
        self.live.get(key)
    }

    pub fn live_mut(&mut self, key: &RunKey) -> Option<&mut Run> {
        self.live.get_mut(key)
    }

    /// Whether any run holds `process`.
    pub fn holds(&self, process: ProcessId) -> bool {
        self.live.keys().any(|(p, _)| *p == process)
    }

    /// The run a wrapper knows as `session`.
    pub fn find(&self, session: &SessionId) -> Option<Found> {
        if self.pending.contains_key(session) {
            return Some(Found::Pending(session.clone()));
        }
        self.live
            .iter()
            .find(|(_, r)| r.answers_to(session))
            .map(|(k, _)| Found::Live(k.clone()))
    }

    pub fn get(&self, found: &Found) -> Option<&Run> {
        match found {
            Found::Live(k) => self.live.get(k),
            Found::Pending(id) => self.pending.get(id),
        }
    }

    pub fn get_mut(&mut self, found: &Found) -> Option<&mut Run> {
        match found {
            Found::Live(k) => self.live.get_mut(k),
            Found::Pending(id) => self.pending.get_mut(id),
        }
    }

    /// Removes a pending run (nothing of it runs); `None` for any other.
    pub fn take_pending(&mut self, session: &SessionId) -> Option<Run> {
        let run = self.pending.remove(session)?;
        self.remember(&run);
        Some(run)
    }

    /// `process` exited: its runs leave the set. The only way out for a run
    /// with a process.
    pub fn exited(&mut self, process: ProcessId) -> Vec<Run> {
        let keys: Vec<RunKey> = self
            .live
            // "-" sorts before every other product id.
            .range((process, ProductId::parse("-").expect("a product id"))..)
            .take_while(|((p, _), _)| *p == process)
            .map(|(k, _)| k.clone())
            .collect();
        let runs: Vec<Run> = keys.iter().filter_map(|k| self.live.remove(k)).collect();
        for r in &runs {
            self.remember(r);
        }
        runs
    }

    fn remember(&mut self, run: &Run) {
        let mut ids = vec![run.id.clone()];
        if let Some(w) = &run.wrapper {
            if w.session != run.id {
                ids.push(w.session.clone());
            }
        }
        for id in ids {
            if self.ended.len() >= ENDED_MEMORY {
                self.ended.pop_front();
            }
            self.ended.push_back((id, run.account.clone()));
        }
    }

    /// The account of a session that ended recently.
    pub fn ended_account(&self, session: &SessionId) -> Option<&AccountId> {
        self.ended
            .iter()
            .rev()
            .find(|(id, _)| id == session)
            .map(|(_, a)| a)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Run> {
        self.live.values().chain(self.pending.values())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Run> {
        self.live.values_mut().chain(self.pending.values_mut())
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.pending.is_empty()
    }

    /// Every run's place in the set, for callers that change runs one by one.
    pub fn all(&self) -> Vec<Found> {
        self.live
            .keys()
            .map(|k| Found::Live(k.clone()))
            .chain(self.pending.keys().map(|id| Found::Pending(id.clone())))
            .collect()
    }

    /// Runs waiting for claim `claim`.
    pub fn waiting_for(&self, claim: &ClaimId) -> Vec<Found> {
        self.all()
            .into_iter()
            .filter(|f| {
                matches!(self.get(f).map(|r| &r.state),
                    Some(RunState::Claiming { claim: c, .. }) if c == claim)
            })
            .collect()
    }

    /// Runs licensed by window `window` and still running in it.
    pub fn running_in(&self, window: &WindowId) -> impl Iterator<Item = &Run> + '_ {
        let window = window.clone();
        self.iter().filter(move |r| r.runs_in(&window))
    }

    /// Wrapper-held runs of `account`.
    pub fn wrapped_by(&self, account: &AccountId) -> usize {
        self.iter()
            .filter(|r| {
                &r.account == account && r.wrapper.as_ref().is_some_and(|w| w.conn.is_some())
            })
            .count()
    }
}
