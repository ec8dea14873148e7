//! Idle awareness (R14): what desktop sessions report about their users, what
//! the kernel says the products' processes used, and the rule that pauses a
//! product nobody uses instead of renewing it.
//!
//! A product is **idle** when, over the last `idle_after`, every desktop
//! session of its user reported no keyboard or mouse input (or was locked)
//! *and* its processes used under `idle_cpu_percent` of one core. A window
//! that ends while its product is idle is not renewed: the product keeps
//! running, paused (its usage record ends), until input returns or it uses
//! the CPU again; then a new window is claimed at once, charged like a reopen.
//! An account no notifier reports for is never idle, and a product whose CPU
//! history does not span `idle_after` is not either: the rule only ever spares
//! a charge when both signals agree, so a forged idle report cannot run a
//! product unpaid while someone works in it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::socket::Event;
use flex_protocol::{ProductId, WindowId};

use super::contact::chrono;
use super::runs::{Found, RunState};
use super::{Action, ConnId, Core, Persist};
use crate::account::AccountId;
use crate::process::ProcessId;

/// A report older than this says nothing any more (notifiers report every
/// 30 seconds): the account counts as active.
pub(super) const REPORT_TTL: chrono::Duration = chrono::Duration::seconds(120);

#[derive(Debug, Clone)]
struct Report {
    account: AccountId,
    /// Trusted time of the report.
    at: DateTime<Utc>,
    idle: Duration,
    /// Since when the session has been locked, as far as the reports tell
    /// (the report that first said so): input at a lock screen is not use.
    locked_since: Option<DateTime<Utc>>,
}

/// The latest report of every notifier connection, and CPU time samples of
/// the product processes.
#[derive(Debug, Default)]
pub(super) struct Activity {
    reports: HashMap<ConnId, Report>,
    /// (trusted time, CPU time used so far) per process, oldest first.
    cpu: HashMap<ProcessId, VecDeque<(DateTime<Utc>, Duration)>>,
    /// When CPU times were last asked for.
    sampled_at: Option<DateTime<Utc>>,
}

impl Activity {
    pub fn report(
        &mut self,
        conn: ConnId,
        account: AccountId,
        at: DateTime<Utc>,
        idle: Duration,
        locked: bool,
    ) {
        // The lock began after the last unlocked report; its first locked
        // report is the latest it can have begun (counting it later spares
        // less, never more).
        let locked_since = locked.then(|| {
            self.reports
                .get(&conn)
                .and_then(|r| r.locked_since)
                .unwrap_or(at)
        });
        self.reports.insert(
            conn,
            Report {
                account,
                at,
                idle,
                locked_since,
            },
        );
    }

    /// Whether a notifier of `account` reports now: its desktop can be asked
    /// to close a product's windows.
    pub fn has_desktop(&self, account: &AccountId, now: DateTime<Utc>) -> bool {
        self.reports
            .values()
            .any(|r| &r.account == account && now - r.at <= REPORT_TTL)
    }

    pub fn forget(&mut self, conn: ConnId) {
        self.reports.remove(&conn);
    }

    pub fn cpu_sample(
        &mut self,
        process: ProcessId,
        at: DateTime<Utc>,
        used: Duration,
        keep: chrono::Duration,
    ) {
        let samples = self.cpu.entry(process).or_default();
        samples.push_back((at, used));
        // Keep one sample older than the span, so the span is covered.
        while samples.len() > 2 && samples[1].0 <= at - keep {
            samples.pop_front();
        }
    }

    pub fn forget_process(&mut self, process: ProcessId) {
        self.cpu.remove(&process);
    }

    /// CPU used by `processes` over the `span` ending at their latest sample,
    /// in percent of one core; `None` when some process's samples do not span
    /// it (too young, or just adopted): then nothing can be said.
    pub fn cpu_percent(
        &self,
        processes: &[ProcessId],
        now: DateTime<Utc>,
        span: chrono::Duration,
    ) -> Option<f64> {
        let mut percent = 0.0;
        for p in processes {
            let samples = self.cpu.get(p)?;
            let &(t1, c1) = samples.back()?;
            let &(t0, c0) = samples.iter().rev().find(|(t, _)| *t <= now - span)?;
            let secs = (t1 - t0).num_milliseconds() as f64 / 1000.0;
            if secs <= 0.0 {
                return None;
            }
            percent += c1.saturating_sub(c0).as_secs_f64() / secs * 100.0;
        }
        Some(percent)
    }

    /// Since when `account` has given no input in any of its sessions (a
    /// locked session gives none), as of `now`; `None` when it is active, or
    /// when nothing (fresh) reports for it.
    pub fn idle_since(&self, account: &AccountId, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut since: Option<DateTime<Utc>> = None;
        let mut any = false;
        for r in self.reports.values().filter(|r| &r.account == account) {
            if now - r.at > REPORT_TTL {
                return None;
            }
            any = true;
            // Locked: a mouse moved at the lock screen is no use of a
            // product; the user has been away at least since the lock.
            let input = r.at - chrono(r.idle);
            let last_input = r.locked_since.map_or(input, |l| l.min(input));
            since = Some(since.map_or(last_input, |s| s.max(last_input)));
        }
        any.then_some(since).flatten()
    }
}

impl Core {
    fn idle_after(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.policy.idle_after_secs as i64)
    }

    /// How often CPU times are sampled: often enough to judge `idle_after`.
    fn cpu_every(&self) -> chrono::Duration {
        (self.idle_after() / 6).clamp(chrono::Duration::seconds(1), chrono::Duration::seconds(60))
    }

    /// Asks the driver for the CPU times of the product processes when due.
    pub(super) fn sample_cpu(&mut self, out: &mut Vec<Action>) {
        if self.idle_after().is_zero() {
            return;
        }
        let now = self.contact.now();
        if self
            .activity
            .sampled_at
            .is_some_and(|t| now < t + self.cpu_every())
        {
            return;
        }
        let processes: Vec<ProcessId> = self.runs.iter().filter_map(|r| r.process).collect();
        if processes.is_empty() {
            self.activity.sampled_at = None;
            return;
        }
        self.activity.sampled_at = Some(now);
        out.push(Action::SampleCpu { processes });
    }

    pub(super) fn sample_deadline(&self) -> Option<DateTime<Utc>> {
        if self.idle_after().is_zero() || !self.runs.iter().any(|r| r.process.is_some()) {
            return None;
        }
        Some(
            self.activity
                .sampled_at
                .map_or(self.contact.now(), |t| t + self.cpu_every()),
        )
    }

    pub(super) fn cpu_times(&mut self, samples: Vec<(ProcessId, Duration)>) {
        let now = self.contact.now();
        let keep = self.idle_after() + self.cpu_every() * 2;
        for (process, used) in samples {
            self.activity.cpu_sample(process, now, used, keep);
        }
    }

    /// Whether the runs of window `window` are idle now.
    pub(super) fn window_idle(&self, window: &WindowId) -> bool {
        let span = self.idle_after();
        if span.is_zero() {
            return false;
        }
        let now = self.contact.now();
        let runs: Vec<&super::runs::Run> = self.runs.running_in(window).collect();
        if runs.is_empty() {
            return false;
        }
        let no_input = runs.iter().all(|r| {
            self.activity
                .idle_since(&r.account, now)
                .is_some_and(|since| since <= now - span)
        });
        if !no_input {
            return false;
        }
        let processes: Vec<ProcessId> = runs.iter().filter_map(|r| r.process).collect();
        self.activity
            .cpu_percent(&processes, now, span)
            .is_some_and(|p| p < self.policy.idle_cpu_percent)
    }

    /// Window `window` ended while its product was idle: its runs are paused
    /// (their usage records end with the window) instead of renewed.
    pub(super) fn pause(&mut self, window: &WindowId, ended: DateTime<Utc>, out: &mut Vec<Action>) {
        let found: Vec<Found> = self
            .runs
            .all()
            .into_iter()
            .filter(|f| self.runs.get(f).is_some_and(|r| r.runs_in(window)))
            .collect();
        let mut told: Vec<(AccountId, ProductId)> = Vec::new();
        for f in found {
            let Some(run) = self.runs.get(&f).cloned() else {
                continue;
            };
            if let Some(row) = run.row(Some(ended)) {
                self.contact.changed();
                out.push(Action::Persist(Persist::Session(row)));
            }
            let source = run
                .cover()
                .map_or(flex_protocol::api::Source::Tokens, |c| c.source);
            if let Some(r) = self.runs.get_mut(&f) {
                r.state = RunState::Paused {
                    since: ended,
                    source,
                };
            }
            let key = (run.account.clone(), run.product.clone());
            if !told.contains(&key) {
                told.push(key);
                out.push(Action::Notify {
                    account: Some(run.account.clone()),
                    event: Event::Paused {
                        product_name: self.product_name(&run.product),
                        product: run.product.clone(),
                        since: self.contact.clock.wall_at(ended),
                    },
                });
            }
        }
    }

    /// Paused runs whose user came back (input since the pause, or the
    /// product used the CPU again) claim a new window at once.
    pub(super) fn resume_paused(&mut self, out: &mut Vec<Action>) {
        let now = self.contact.now();
        let recent = self.cpu_every() * 2;
        let back: Vec<Found> = self
            .runs
            .all()
            .into_iter()
            .filter(|f| {
                let Some(run) = self.runs.get(f) else {
                    return false;
                };
                let RunState::Paused { since, .. } = run.state else {
                    return false;
                };
                let input = self
                    .activity
                    .idle_since(&run.account, now)
                    .is_none_or(|idle_since| idle_since > since);
                let busy = run.process.is_some_and(|p| {
                    self.activity
                        .cpu_percent(&[p], now, recent)
                        .is_some_and(|c| c >= self.policy.idle_cpu_percent)
                });
                input || busy
            })
            .collect();
        for f in back {
            if let Some(run) = self.runs.get_mut(&f) {
                // A new usage record from now: the pause was no usage.
                run.id = self.ids.next_session_id();
                run.started_at = now;
                run.resuming = true;
            }
            self.start_or_claim(f, None, out);
        }
    }

    pub(super) fn activity(
        &mut self,
        conn: ConnId,
        account: AccountId,
        idle: Duration,
        locked: bool,
    ) {
        let now = self.contact.now();
        self.activity.report(conn, account, now, idle, locked);
    }
}
