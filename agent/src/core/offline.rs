//! The offline rule (R8), server contact, heartbeats and the timer: what is due
//! at a given time.
//!
//! Offline time is the clock's time since the last successful contact (a
//! heartbeat or a claim answer). Each licensed session is warned once at every
//! offset before its limit that it reaches, then closed when offline time reaches
//! the limit exactly; reconnecting first clears the warnings and cancels any close
//! the offline rule scheduled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::api::{Notice, NoticeKind, Policy};
use flex_protocol::socket::{CloseReason, Event};

use super::policy::{offline_limit, warning_offsets};
use super::{Action, Closing, Core, Persist};

/// First retry delay after a failed heartbeat; it doubles up to the interval.
const BACKOFF_START: Duration = Duration::from_secs(5);

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// "24h", "30m", "1h 30m", "45s": a duration as people read it.
fn format_span(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if sec > 0 || parts.is_empty() {
        parts.push(format!("{sec} s"));
    }
    parts.join(" ")
}

impl Core {
    /// Everything time-driven, run after every input.
    pub(super) fn evaluate(&mut self, out: &mut Vec<Action>) {
        let windows = &self.windows;
        self.renewal_retry
            .retain(|id, _| windows.values().any(|h| h.window.id == *id));
        self.renewals(out);
        self.offline_rule(out);
        self.run_closes(out);
        self.heartbeat(out);
    }

    fn offline_rule(&mut self, out: &mut Vec<Action>) {
        let Some(offline) = self.clock.offline_for() else {
            return;
        };
        let now = self.clock.trusted_now();
        for s in self.sessions.values_mut() {
            let Some(source) = s.source else {
                continue;
            };
            if s.closing.is_some() {
                continue;
            }
            let limit = offline_limit(&self.policy, source);
            if offline >= limit {
                s.closing = Some(Closing {
                    reason: CloseReason::Offline,
                    // The why; notifier and wrapper add the next step for the reason.
                    message: format!(
                        "this workstation has not reached the license server for {}",
                        format_span(limit)
                    ),
                    renewal_of: None,
                    term_at: now,
                    kill_at: None,
                    killed: false,
                });
                continue;
            }
            let left = limit - offline;
            let due: Vec<u64> = warning_offsets(&self.policy, source)
                .into_iter()
                .filter(|&o| Duration::from_secs(o) >= left && !s.warned.contains(&o))
                .collect();
            if !due.is_empty() {
                s.warned.extend(due);
                out.push(Action::Notify {
                    account: Some(s.account.clone()),
                    event: Event::OfflineWarning {
                        product: s.product.clone(),
                        product_name: super::name_of(&self.products, &s.product),
                        seconds_left: left.as_secs(),
                        deadline: self.clock.wall_at(now + chrono(left)),
                    },
                });
            }
        }
    }

    /// Back in touch with the server: resend undelivered claims, clear warnings
    /// and cancel the offline rule's closes of licensed sessions. Unlicensed
    /// watched processes keep their close: they never had a window.
    pub(super) fn reconnected(&mut self, out: &mut Vec<Action>) {
        self.heartbeat_in_flight = false;
        self.resend_claims(out);
        for s in self.sessions.values_mut() {
            s.warned.clear();
            let offline_close = matches!(&s.closing, Some(c) if c.reason == CloseReason::Offline);
            if offline_close && s.source.is_some() {
                s.closing = None;
            }
        }
    }

    /// Whether there is anything to tell the server or to keep fresh.
    fn heartbeat_needed(&self) -> bool {
        !self.sessions.is_empty()
            || self.unsent > self.acked
            || !self.claims.is_empty()
            || self.clock.last_contact().is_none()
    }

    /// When the next heartbeat is due: at the policy interval after the last one,
    /// sooner with exponential backoff while the server is unreachable.
    fn heartbeat_due(&self) -> Option<DateTime<Utc>> {
        if self.heartbeat_in_flight || !self.heartbeat_needed() {
            return None;
        }
        let interval = Duration::from_secs(self.policy.heartbeat_interval_secs.max(1));
        let delay = match self.failures {
            0 => interval,
            n => BACKOFF_START
                .saturating_mul(1u32 << (n - 1).min(16))
                .min(interval),
        };
        Some(match self.heartbeat_at {
            None => self.clock.trusted_now(),
            Some(t) => t + chrono(delay),
        })
    }

    fn heartbeat(&mut self, out: &mut Vec<Action>) {
        let now = self.clock.trusted_now();
        if self.heartbeat_due().is_some_and(|due| now >= due) {
            self.heartbeat_at = Some(now);
            self.heartbeat_in_flight = true;
            self.sending = self.unsent;
            out.push(Action::Heartbeat);
        }
    }

    /// Every future moment at which something becomes due, in trusted time.
    pub(super) fn deadlines(&self) -> impl Iterator<Item = DateTime<Utc>> {
        let now = self.clock.trusted_now();
        let mut at = Vec::new();
        for h in self.windows.values() {
            let renewing = self
                .claims
                .values()
                .any(|c| c.request.renews.as_deref() == Some(&h.window.id));
            if !renewing && self.running_in(&h.window.id).next().is_some() {
                // A renewal that failed verification waits for its retry.
                let retry = self.renewal_retry.get(&h.window.id).map(|(at, _)| *at);
                at.push(retry.unwrap_or(h.window.end).max(h.window.end));
            }
        }
        if let Some(offline) = self.clock.offline_for() {
            let contact = now - chrono(offline);
            for s in self.sessions.values() {
                let (Some(source), None) = (s.source, &s.closing) else {
                    continue;
                };
                let limit = offline_limit(&self.policy, source);
                at.push(contact + chrono(limit));
                for o in warning_offsets(&self.policy, source) {
                    if !s.warned.contains(&o) {
                        at.push(contact + chrono(limit - Duration::from_secs(o)));
                    }
                }
            }
        }
        for c in self.sessions.values().filter_map(|s| s.closing.as_ref()) {
            match c.kill_at {
                None => at.push(c.term_at),
                Some(k) if !c.killed => at.push(k),
                Some(_) => {}
            }
        }
        at.extend(self.heartbeat_due());
        if !self.sessions.is_empty() {
            at.push(self.clock_persisted_at + super::CLOCK_PERSIST_EVERY);
        }
        at.into_iter()
    }

    pub(super) fn contact_ok(
        &mut self,
        server_time: DateTime<Utc>,
        policy: Policy,
        balance: u64,
        out: &mut Vec<Action>,
    ) {
        self.clock.contact(server_time);
        self.online = true;
        self.failures = 0;
        self.acked = self.sending;
        if policy != self.policy {
            out.push(Action::Persist(Persist::Policy(policy.clone())));
            self.policy = policy;
        }
        if self.balance != Some(balance) {
            self.balance = Some(balance);
            out.push(Action::Persist(Persist::Balance(balance)));
        }
        self.persist_clock(out);
        self.forget_old_jobs();
        self.reconnected(out);
    }

    /// Passes new low-balance notices (R9) on to every subscribed user. At the
    /// first contact the backlog is only marked as seen: old news is not news.
    /// An empty backlog is marked too (as "seen up to 0"), or the tenant's very
    /// first notice would later be taken for backlog and never told.
    pub(super) fn notices(&mut self, notices: Vec<Notice>, out: &mut Vec<Action>) {
        let Some(newest) = notices.iter().map(|n| n.id).max() else {
            if self.notices_seen.is_none() {
                self.notices_seen = Some(0);
                out.push(Action::Persist(Persist::NoticesSeen(0)));
            }
            return;
        };
        if let (Some(seen), Some(balance)) = (self.notices_seen, self.balance) {
            let low = notices
                .iter()
                .any(|n| n.id > seen && n.kind == NoticeKind::LowBalance);
            if low {
                out.push(Action::Notify {
                    account: None,
                    event: Event::LowBalance { balance },
                });
            }
        }
        if self.notices_seen.is_none_or(|seen| newest > seen) {
            self.notices_seen = Some(newest);
            out.push(Action::Persist(Persist::NoticesSeen(newest)));
        }
    }

    /// A claim answer proves the server is reachable: the offline time restarts.
    pub(super) fn contact_by_claim(&mut self, out: &mut Vec<Action>) {
        let now = self.clock.trusted_now();
        self.clock.contact(now);
        self.online = true;
        self.failures = 0;
        self.persist_clock(out);
        self.reconnected(out);
    }
}
