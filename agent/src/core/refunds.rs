//! Short runs are free (R13): a window in which no process of its (user,
//! product) runs on this device at the window's start plus `short_use_grace`
//! is asked back from the server.
//!
//! The decision is taken once per window, at that moment: if no run of the
//! user and product with a process is in the enforcement set, the window is
//! dropped (a reopen claims a new one: "closed at 4:59, reopened at 5:01 is a
//! refund and a new charge") and the refund is journaled, then asked. The
//! server checks the request against the session records it holds and the ones
//! the request carries, and answers a repeat as it answered the first, so a
//! refund is applied at most once through crashes and retries; one that cannot
//! be delivered is asked again at the next contact. While a refund is in
//! flight, a claim for the same user and product waits for its answer, so the
//! server never sees a launch inside a window being refunded.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use flex_protocol::api::RefundResponse;
use flex_protocol::socket::Event;
use flex_protocol::Email;
use flex_protocol::{ProductId, WindowId};

use super::{Action, Core, Persist, RefundAsk};
use crate::account::AccountId;

#[derive(Debug, Default)]
pub(super) struct Refunds {
    /// Journaled refunds not yet answered, and whether each is in flight.
    pending: BTreeMap<WindowId, (RefundAsk, bool)>,
    /// Windows whose grace point was judged (once each).
    checked: HashSet<WindowId>,
    /// Who last ran each (user, product): whom to tell of a refund.
    last_account: HashMap<(Email, ProductId), AccountId>,
}

impl Refunds {
    pub fn ran(&mut self, user: &Email, product: &ProductId, account: &AccountId) {
        self.last_account
            .insert((user.clone(), product.clone()), account.clone());
    }

    /// A refund of (user, product) is in flight: its claims wait.
    pub fn in_flight(&self, user: &Email, product: &ProductId) -> bool {
        self.pending
            .values()
            .any(|(a, flying)| *flying && &a.user == user && a.product == product)
    }

    pub fn checked(&self, window: &WindowId) -> bool {
        self.checked.contains(window)
    }
}

impl Core {
    /// Journaled refunds after a restart: asked again. Windows whose grace
    /// point passed while the agent was down are not judged (what ran then is
    /// not known).
    pub(super) fn restore_refunds(&mut self, asks: Vec<RefundAsk>, out: &mut Vec<Action>) {
        let now = self.contact.now();
        let grace = self.short_use_grace();
        for h in self.ledger.windows() {
            if h.window.start + grace <= now {
                self.refunds.checked.insert(h.window.id.clone());
            }
        }
        for ask in asks {
            self.refunds.checked.insert(ask.window_id.clone());
            out.push(Action::Refund(ask.clone()));
            self.refunds
                .pending
                .insert(ask.window_id.clone(), (ask, true));
        }
    }

    fn short_use_grace(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.policy.short_use_grace_secs as i64)
    }

    /// Judges every window whose start plus the grace has come.
    pub(super) fn short_use(&mut self, out: &mut Vec<Action>) {
        let grace = self.short_use_grace();
        let now = self.contact.now();
        let due: Vec<(WindowId, Email, ProductId)> = self
            .ledger
            .windows()
            .filter(|h| !self.refunds.checked(&h.window.id))
            .filter(|h| h.window.start + grace <= now)
            .map(|h| (h.window.id.clone(), h.user.clone(), h.product.clone()))
            .collect();
        for (window_id, user, product) in due {
            self.refunds.checked.insert(window_id.clone());
            if grace.is_zero() {
                continue; // refunds are off
            }
            let running = self
                .runs
                .iter()
                .any(|r| r.user == user && r.product == product && r.process.is_some());
            if running {
                continue;
            }
            let ask = RefundAsk {
                window_id: window_id.clone(),
                user: user.clone(),
                product: product.clone(),
                account: self
                    .refunds
                    .last_account
                    .get(&(user.clone(), product.clone()))
                    .cloned(),
            };
            // The window is no longer ours: a reopen claims a new one. A
            // wrapper's session granted in it that never started its product
            // holds nothing now; it claims when the product starts.
            self.ledger.drop_window(&user, &product, out);
            self.unhold_window(&window_id, out);
            out.push(Action::Persist(Persist::RefundPending(ask.clone())));
            out.push(Action::Refund(ask.clone()));
            self.refunds.pending.insert(window_id, (ask, true));
        }
    }

    /// Runs (without a process: nothing ran) covered by a refunded window
    /// lose it: their records end, and they claim if their product starts.
    fn unhold_window(&mut self, window_id: &WindowId, out: &mut Vec<Action>) {
        let covered: Vec<super::runs::Found> = self
            .runs
            .all()
            .into_iter()
            .filter(|f| {
                self.runs
                    .get(f)
                    .and_then(|r| r.cover())
                    .is_some_and(|c| c.window.as_ref() == Some(window_id))
            })
            .collect();
        for f in covered {
            let Some(run) = self.runs.get(&f).cloned() else {
                continue;
            };
            if let Some(row) = run.row(Some(run.started_at)) {
                self.contact.changed();
                out.push(Action::Persist(Persist::Session(row)));
            }
            if let Some(r) = self.runs.get_mut(&f) {
                r.state = super::runs::RunState::Unlicensed {
                    reason: flex_protocol::ErrorCode::NotFound,
                };
            }
        }
    }

    /// When a window's grace point comes.
    pub(super) fn short_use_deadlines(&self) -> Vec<DateTime<Utc>> {
        let grace = self.short_use_grace();
        self.ledger
            .windows()
            .filter(|h| !self.refunds.checked(&h.window.id))
            .map(|h| h.window.start + grace)
            .collect()
    }

    pub(super) fn refund_answered(
        &mut self,
        window_id: &WindowId,
        result: Result<RefundResponse, String>,
        out: &mut Vec<Action>,
    ) {
        let Some((ask, _)) = self.refunds.pending.remove(window_id) else {
            return;
        };
        out.push(Action::Persist(Persist::RefundSettled {
            window_id: window_id.clone(),
        }));
        match result {
            Ok(r) => {
                // Nothing may run in a refunded window: a process that got it
                // from the server meanwhile claims anew.
                let uncovered: Vec<super::runs::Found> = self
                    .runs
                    .all()
                    .into_iter()
                    .filter(|f| {
                        self.runs.get(f).is_some_and(|r| {
                            r.process.is_some()
                                && r.cover()
                                    .is_some_and(|c| c.window.as_ref() == Some(window_id))
                        })
                    })
                    .collect();
                for f in uncovered {
                    self.start_or_claim(f, None, out);
                }
                if self.balance != Some(r.balance) {
                    self.balance = Some(r.balance);
                    out.push(Action::Persist(Persist::Balance(r.balance)));
                }
                if r.refunded_tokens > 0 {
                    out.push(Action::Notify {
                        account: ask.account.clone(),
                        event: Event::Refunded {
                            product: ask.product.clone(),
                            product_name: self.product_name(&ask.product),
                            tokens: r.refunded_tokens,
                            balance: r.balance,
                            grace_secs: self.policy.short_use_grace_secs,
                        },
                    });
                }
            }
            Err(why) => tracing::info!(window = %window_id, "refund refused: {why}"),
        }
        self.release_claims(out);
    }

    pub(super) fn refund_failed(&mut self, window_id: &WindowId, out: &mut Vec<Action>) {
        if let Some((_, flying)) = self.refunds.pending.get_mut(window_id) {
            *flying = false;
        }
        self.release_claims(out);
    }

    /// Back in touch: refunds that could not be delivered are asked again.
    pub(super) fn resend_refunds(&mut self, out: &mut Vec<Action>) {
        for (ask, flying) in self.refunds.pending.values_mut() {
            if !*flying {
                *flying = true;
                out.push(Action::Refund(ask.clone()));
            }
        }
    }

    /// Claims that waited for a refund go now.
    fn release_claims(&mut self, out: &mut Vec<Action>) {
        let refunds = &self.refunds;
        self.ledger
            .resend(|c| refunds.in_flight(&c.user, &c.product), out);
    }
}
