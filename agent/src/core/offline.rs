//! What time brings: renewals at window end, the offline rule (R8), closes
//! carried out, claims given up, heartbeats, and the timer.
//!
//! Each covered run is warned once at every offset before its offline limit
//! that it reaches, then closed when offline time reaches the limit exactly;
//! reconnecting first clears the warnings and cancels any close the offline
//! rule scheduled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::api::{ChargeModel, ClaimRequest, Notice, NoticeKind, Policy, Source};
use flex_protocol::socket::{CloseReason, Event};
use flex_protocol::{ProductId, WindowId};

use super::contact::chrono;
use super::policy::{offline_limit, warning_offsets};
use super::runs::{RunState, CLAIM_TIMEOUT};
use super::{Action, Core, Persist, UploadReceipt};

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
        self.ledger.prune_retries();
        self.give_up_stuck_claims(out);
        self.short_use(out);
        self.sample_cpu(out);
        self.resume_paused(out);
        self.renewals(out);
        self.renewal_notices(out);
        self.offline_rule(out);
        self.run_closes(out);
        let busy = !self.runs.is_empty() || self.ledger.has_claims();
        self.contact
            .heartbeat(self.policy.heartbeat_interval_secs, busy, out);
    }

    /// Starts a renewal claim for every held window that ended while a run of
    /// it still runs.
    fn renewals(&mut self, out: &mut Vec<Action>) {
        let now = self.contact.now();
        let runs = &self.runs;
        let due = self
            .ledger
            .renewals_due(now, |w| runs.running_in(w).next().is_some());
        for h in due {
            if self.window_idle(&h.window.id) {
                self.pause(&h.window.id, h.window.end, out);
                continue;
            }
            let version = self
                .runs
                .running_in(&h.window.id)
                .find_map(|r| r.version.clone());
            let request = ClaimRequest {
                claim_id: self.ids.next_claim_id(),
                user: h.user.clone(),
                product: h.product.clone(),
                version,
                results: None,
                renews: Some(h.window.id.clone()),
            };
            self.ledger.send(request, now, false, out);
        }
    }

    /// The daily rate of `product`, when it is charged per day.
    fn daily_rate(&self, product: &ProductId) -> Option<u64> {
        match self.products.get(product)?.charge {
            ChargeModel::Daily { tokens } => Some(tokens),
            _ => None,
        }
    }

    /// Tells the users of a token window with a product still running in it,
    /// `renewal_notice` before its end, that it will be renewed and for how
    /// much — once per window, once per user. Not while the product is idle:
    /// it would be paused, not renewed, at the end; input before then sends
    /// the notice (this runs after every input).
    fn renewal_notices(&mut self, out: &mut Vec<Action>) {
        let notice = chrono::Duration::seconds(self.policy.renewal_notice_secs as i64);
        if notice.is_zero() {
            return;
        }
        let now = self.contact.now();
        let due: Vec<(WindowId, ProductId, DateTime<Utc>)> = self
            .ledger
            .windows()
            .filter(|h| h.source == Source::Tokens && !self.ledger.noticed(&h.window.id))
            .filter(|h| h.window.end - notice <= now && now < h.window.end)
            .map(|h| (h.window.id.clone(), h.product.clone(), h.window.end))
            .collect();
        for (id, product, end) in due {
            let mut accounts: Vec<crate::account::AccountId> = self
                .runs
                .iter()
                .filter(
                    |r| matches!(&r.state, RunState::Covered(c) if c.window.as_ref() == Some(&id)),
                )
                .map(|r| r.account.clone())
                .collect();
            accounts.sort();
            accounts.dedup();
            let Some(tokens) = self.daily_rate(&product) else {
                continue;
            };
            if accounts.is_empty() || self.window_idle(&id) || !self.ledger.notice(&id) {
                continue;
            }
            for account in accounts {
                out.push(Action::Notify {
                    account: Some(account),
                    event: Event::RenewalNotice {
                        product: product.clone(),
                        product_name: self.product_name(&product),
                        at: self.contact.clock.wall_at(end),
                        tokens,
                    },
                });
            }
        }
    }

    fn renewal_notice_deadlines(&self) -> Vec<DateTime<Utc>> {
        let notice = chrono::Duration::seconds(self.policy.renewal_notice_secs as i64);
        if notice.is_zero() {
            return Vec::new();
        }
        let now = self.contact.now();
        self.ledger
            .windows()
            .filter(|h| h.source == Source::Tokens && !self.ledger.noticed(&h.window.id))
            .filter(|h| {
                self.runs
                    .iter()
                    .any(|r| matches!(&r.state, RunState::Covered(c) if c.window.as_ref() == Some(&h.window.id)))
            })
            .map(|h| h.window.end - notice)
            .filter(|at| *at > now)
            .collect()
    }

    fn offline_rule(&mut self, out: &mut Vec<Action>) {
        let Some(offline) = self.contact.clock.offline_for() else {
            return;
        };
        let now = self.contact.now();
        // What is due: closes, and warnings not yet sent.
        let mut due_any = false;
        for run in self.runs.iter() {
            let RunState::Covered(cover) = &run.state else {
                continue;
            };
            let limit = offline_limit(&self.policy, cover.source);
            let left = limit.saturating_sub(offline);
            due_any |= offline >= limit
                || warning_offsets(&self.policy, cover.source)
                    .into_iter()
                    .any(|o| Duration::from_secs(o) >= left && !run.warned.contains(&o));
        }
        // Never alarm or close while the server is reachable: before warning
        // or closing, make sure a contact attempt just failed.
        if !due_any || !self.contact.confirm_offline(now, out) {
            return;
        }
        let deadline_wall = |left: Duration| self.contact.clock.wall_at(now + chrono(left));
        let mut told: Vec<(crate::account::AccountId, ProductId)> = Vec::new();
        let mut events = Vec::new();
        for run in self.runs.iter_mut() {
            let RunState::Covered(cover) = &run.state else {
                continue;
            };
            let limit = offline_limit(&self.policy, cover.source);
            if offline >= limit {
                // The why; notifier and wrapper add the next step for the reason.
                let message = format!(
                    "this workstation has not reached the license server for {}",
                    format_span(limit)
                );
                run.close(CloseReason::Offline, message, now, None);
                continue;
            }
            let left = limit - offline;
            let due: Vec<u64> = warning_offsets(&self.policy, cover.source)
                .into_iter()
                .filter(|&o| Duration::from_secs(o) >= left && !run.warned.contains(&o))
                .collect();
            if due.is_empty() {
                continue;
            }
            run.warned.extend(due);
            // One warning per user and product, however many of its
            // processes run.
            let key = (run.account.clone(), run.product.clone());
            if told.contains(&key) {
                continue;
            }
            told.push(key);
            events.push(Action::Notify {
                account: Some(run.account.clone()),
                event: Event::OfflineWarning {
                    product: run.product.clone(),
                    product_name: super::name_of(&self.products, &run.product),
                    seconds_left: left.as_secs(),
                    deadline: deadline_wall(left),
                },
            });
        }
        out.extend(events);
    }

    /// Back in touch with the server: resend undelivered claims, clear warnings
    /// and cancel the offline rule's closes of licensed runs. Unlicensed runs
    /// keep their close: they never had a window.
    pub(super) fn reconnected(&mut self, out: &mut Vec<Action>) {
        let refunds = &self.refunds;
        self.ledger
            .resend(|c| refunds.in_flight(&c.user, &c.product), out);
        self.resend_refunds(out);
        // Whoever was warned is told it no longer applies.
        let mut warned: Vec<crate::account::AccountId> = self
            .runs
            .iter()
            .filter(|r| {
                !r.warned.is_empty()
                    || matches!(r.closing(), Some(c) if c.reason == CloseReason::Offline && !c.killed)
            })
            .map(|r| r.account.clone())
            .collect();
        warned.sort();
        warned.dedup();
        for account in warned {
            out.push(Action::Notify {
                account: Some(account),
                event: Event::BackOnline,
            });
        }
        for run in self.runs.iter_mut() {
            run.warned.clear();
            if let RunState::Closing {
                close,
                cover: Some(cover),
            } = &run.state
            {
                if close.reason == CloseReason::Offline {
                    run.state = RunState::Covered(cover.clone());
                }
            }
        }
    }

    /// Every future moment at which something becomes due, in trusted time.
    pub(super) fn deadlines(&self) -> Vec<DateTime<Utc>> {
        let now = self.contact.now();
        let runs = &self.runs;
        let mut at = self
            .ledger
            .renewal_deadlines(|w| runs.running_in(w).next().is_some());
        if let Some(offline) = self.contact.clock.offline_for() {
            let contact = now - chrono(offline);
            // A warning or close whose moment has passed waits for the check
            // of the server in flight; the check's own deadline wakes the core.
            let waiting = self.contact.checking();
            let mut due = |t: DateTime<Utc>| {
                if !(waiting && t <= now) {
                    at.push(t);
                }
            };
            for run in self.runs.iter() {
                let RunState::Covered(cover) = &run.state else {
                    continue;
                };
                let limit = offline_limit(&self.policy, cover.source);
                due(contact + chrono(limit));
                for o in warning_offsets(&self.policy, cover.source) {
                    if !run.warned.contains(&o) {
                        due(contact + chrono(limit - Duration::from_secs(o)));
                    }
                }
            }
        }
        at.extend(self.close_deadlines());
        at.extend(self.short_use_deadlines());
        at.extend(self.sample_deadline());
        at.extend(self.contact.check_deadline());
        at.extend(self.renewal_notice_deadlines());
        for c in self.ledger.claims() {
            if c.request.renews.is_none() && c.request.results.is_none() {
                at.push(c.since + CLAIM_TIMEOUT);
            }
        }
        let busy = !self.runs.is_empty() || self.ledger.has_claims();
        at.extend(
            self.contact
                .heartbeat_due(self.policy.heartbeat_interval_secs, busy),
        );
        if !self.runs.is_empty() {
            at.push(self.contact.next_checkpoint());
        }
        at
    }

    pub(super) fn contact_ok(
        &mut self,
        server_time: DateTime<Utc>,
        policy: Policy,
        balance: u64,
        uploaded: UploadReceipt,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Persist(Persist::Uploaded(uploaded)));
        self.contact.heartbeat_ok(server_time, out);
        if policy != self.policy {
            out.push(Action::Persist(Persist::Policy(policy.clone())));
            self.policy = policy;
        }
        if self.balance != Some(balance) {
            if self.balance.is_some_and(|b| balance > b) {
                self.ledger.retry_renewals_now(self.contact.now());
            }
            self.balance = Some(balance);
            out.push(Action::Persist(Persist::Balance(balance)));
        }
        self.jobs.forget_old(self.contact.now());
        self.reconnected(out);
    }

    /// Passes new low-balance notices (R9) on to every subscribed user. At the
    /// first contact the backlog is only marked as seen: old news is not news.
    /// An empty backlog is marked too (as "seen up to 0"), or the tenant's very
    /// first notice would later be taken for backlog and never told.
    pub(super) fn notices(&mut self, notices: Vec<Notice>, out: &mut Vec<Action>) {
        let seen = self.contact.notices_seen;
        let Some(newest) = notices.iter().map(|n| n.id).max() else {
            if seen.is_none() {
                self.contact.notices_seen = Some(0);
                out.push(Action::Persist(Persist::NoticesSeen(0)));
            }
            return;
        };
        if let (Some(seen), Some(balance)) = (seen, self.balance) {
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
        if seen.is_none_or(|seen| newest > seen) {
            self.contact.notices_seen = Some(newest);
            out.push(Action::Persist(Persist::NoticesSeen(newest)));
        }
    }
}
