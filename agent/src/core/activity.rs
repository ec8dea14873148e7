//! What desktop sessions report about their users (R14): when each account
//! last gave input, as its notifiers say. An account no notifier reports for
//! is never idle.
// The idle rule that reads these reports lands with the paused run state.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::contact::chrono;
use super::{Action, ConnId, Core};
use crate::account::AccountId;

/// A report older than this says nothing any more (notifiers report every
/// 30 seconds): the account counts as active.
pub(super) const REPORT_TTL: chrono::Duration = chrono::Duration::seconds(120);

#[derive(Debug, Clone)]
struct Report {
    account: AccountId,
    /// Trusted time of the report.
    at: DateTime<Utc>,
    idle: Duration,
    locked: bool,
}

/// The latest report of every notifier connection.
#[derive(Debug, Default)]
pub(super) struct Activity {
    reports: HashMap<ConnId, Report>,
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
        self.reports.insert(
            conn,
            Report {
                account,
                at,
                idle,
                locked,
            },
        );
    }

    pub fn forget(&mut self, conn: ConnId) {
        self.reports.remove(&conn);
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
            let last_input = if r.locked {
                // Locked: no input can come; idle at least since the report
                // said so, and since the lock.
                r.at - chrono(r.idle)
            } else {
                r.at - chrono(r.idle)
            };
            since = Some(since.map_or(last_input, |s| s.max(last_input)));
        }
        any.then_some(since).flatten()
    }
}

impl Core {
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

    /// A notifier asked windows of `pid` to close; with none found, the
    /// process is stopped by signal at once.
    pub(super) fn windows_closing(
        &mut self,
        _account: &AccountId,
        _pid: u32,
        _windows: u32,
        _out: &mut [Action],
    ) {
    }
}
