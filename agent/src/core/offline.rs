//! What time brings: renewals at window end, the offline rule (R8), closes
//! carried out, claims given up, heartbeats, and the timer.
//!
//! Each covered run is warned once at every offset before its offline limit
//! that it reaches, then closed when offline time reaches the limit exactly;
//! reconnecting first clears the warnings and cancels any close the offline
//! rule scheduled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flex_protocol::api::{ClaimRequest, Notice, NoticeKind, Policy};
use flex_protocol::socket::{CloseReason, Event};

use super::contact::chrono;
use super::policy::{offline_limit, warning_offsets};
use super::runs::{Found, RunState, CLAIM_TIMEOUT};
use super::{Action, CloseRoute, Core, Persist, UploadReceipt};

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
        self.renewals(out);
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
            let version = self
                .runs
                .running_in(&h.window.id)
                .find_map(|r| r.version.clone());
            let request = ClaimRequest {
                claim_id: uuid::Uuid::new_v4().to_string(),
                user: h.user.clone(),
                product: h.product.clone(),
                version,
                results: None,
                renews: Some(h.window.id.clone()),
            };
            self.ledger.send(request, now, out);
        }
    }

    fn offline_rule(&mut self, out: &mut Vec<Action>) {
        let Some(offline) = self.contact.clock.offline_for() else {
            return;
        };
        let now = self.contact.now();
        let deadline_wall = |left: Duration| self.contact.clock.wall_at(now + chrono(left));
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
            if !due.is_empty() {
                run.warned.extend(due);
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
        }
        out.extend(events);
    }

    /// Carries out due closes: the graceful close (and tell the user why), then
    /// the forced one. A run with neither a wrapper nor a process just ends.
    fn run_closes(&mut self, out: &mut Vec<Action>) {
        let now = self.contact.now();
        let grace = chrono::Duration::seconds(self.policy.close_grace_secs as i64);
        let mut ended = Vec::new();
        for found in self.runs.all() {
            let products = &self.products;
            let Some(run) = self.runs.get_mut(&found) else {
                continue;
            };
            let RunState::Closing { close, .. } = &mut run.state else {
                continue;
            };
            if close.kill_at.is_none() && now >= close.term_at {
                close.kill_at = Some(now + grace);
                let event = Event::ProductClosed {
                    product: run.product.clone(),
                    product_name: super::name_of(products, &run.product),
                    reason: close.reason,
                    message: close.message.clone(),
                };
                let conn = run.wrapper.as_ref().and_then(|w| w.conn);
                let route = match (conn, run.process) {
                    (Some(conn), fallback) => CloseRoute::Wrapper {
                        conn,
                        event: event.clone(),
                        fallback,
                    },
                    (None, Some(process)) => CloseRoute::Signal { process },
                    (None, None) => CloseRoute::Nothing,
                };
                if route == CloseRoute::Nothing {
                    ended.push(found.clone());
                }
                out.push(Action::Close {
                    session: run.id.clone(),
                    route,
                    graceful: true,
                });
                out.push(Action::Notify {
                    account: Some(run.account.clone()),
                    event,
                });
            }
            if let Some(kill_at) = close.kill_at {
                if !close.killed && now >= kill_at {
                    close.killed = true;
                    match run.process {
                        Some(process) => out.push(Action::Kill {
                            session: run.id.clone(),
                            process,
                        }),
                        // A wrapper told to close a product it never
                        // attached: nothing runs, the session ends.
                        None => ended.push(found.clone()),
                    }
                }
            }
        }
        for found in ended {
            if let Found::Pending(id) = found {
                if let Some(run) = self.runs.take_pending(&id) {
                    self.end_run(&run, out);
                }
            }
        }
    }

    /// Back in touch with the server: resend undelivered claims, clear warnings
    /// and cancel the offline rule's closes of licensed runs. Unlicensed runs
    /// keep their close: they never had a window.
    pub(super) fn reconnected(&mut self, out: &mut Vec<Action>) {
        self.ledger.resend(out);
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
            for run in self.runs.iter() {
                let RunState::Covered(cover) = &run.state else {
                    continue;
                };
                let limit = offline_limit(&self.policy, cover.source);
                at.push(contact + chrono(limit));
                for o in warning_offsets(&self.policy, cover.source) {
                    if !run.warned.contains(&o) {
                        at.push(contact + chrono(limit - Duration::from_secs(o)));
                    }
                }
            }
        }
        for close in self.runs.iter().filter_map(|r| r.closing()) {
            match close.kill_at {
                None => at.push(close.term_at),
                Some(k) if !close.killed => at.push(k),
                Some(_) => {}
            }
        }
        for c in self.ledger.claims() {
            if c.in_flight && c.request.renews.is_none() && c.request.results.is_none() {
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
