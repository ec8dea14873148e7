//! Windows held and claims in flight: the agent's side of the money.
//!
//! A window is held per (user, product) with the server's signed lease for it;
//! a claim is journaled before it is sent and settled once its answer was acted
//! upon. This module owns both maps and the renewal retry schedule; which runs
//! wait for a claim is the enforcement set's business ([`super::runs`]).
//!
//! A claim's fate once it could not be delivered: a *renewal* stays journaled and
//! is resent with its id at the next contact (the product is still running and
//! owes the window). A *launch* claim is settled as abandoned: its runs were
//! refused as offline, and if the server did receive it the window lives in the
//! server's ledger, where a later claim for the same user and product falls inside
//! it and is free, so resending could only charge a launch the user was refused.
//! After an agent restart every unsettled claim is resent, since the agent cannot
//! tell which were delivered.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use flex_protocol::api::ClaimRequest;
use flex_protocol::lease::LeaseVerifier;
use flex_protocol::Email;
use flex_protocol::{ClaimId, ProductId, SessionId, WindowId};

use super::{Action, HeldWindow, Persist};

/// A wrapper's `launch` waiting for a claim's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LaunchWaiter {
    pub request: String,
    /// The session id the reply gives the wrapper.
    pub session: SessionId,
}

/// A per-result job waiting for its claim's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JobWaiter {
    pub request: String,
    pub account: crate::account::AccountId,
    pub job: String,
}

#[derive(Debug, Clone)]
pub(super) struct PendingClaim {
    pub request: ClaimRequest,
    /// Sent and not yet answered nor failed.
    pub in_flight: bool,
    /// Trusted time it was first sent in this run of the agent.
    pub since: DateTime<Utc>,
    pub launches: Vec<LaunchWaiter>,
    pub jobs: Vec<JobWaiter>,
}

/// Ordered maps throughout: the order of the claims a tick sends must not
/// depend on hashing (the simulation replays a seed exactly).
#[derive(Debug, Default)]
pub(super) struct Ledger {
    windows: BTreeMap<(Email, ProductId), HeldWindow>,
    claims: BTreeMap<ClaimId, PendingClaim>,
    /// Renewals whose grant could not be verified, by window id: when to try
    /// again and how many tries failed. Never a tight loop of fresh claims.
    renewal_retry: BTreeMap<WindowId, (DateTime<Utc>, u32)>,
    /// Windows whose users were told of the coming renewal.
    noticed: BTreeSet<WindowId>,
}

/// Checks a lease's signature and that it says what the window says.
pub(super) fn check_lease(
    verifier: &LeaseVerifier,
    device_id: &str,
    held: &HeldWindow,
) -> Result<(), String> {
    let body = verifier.verify(&held.lease).map_err(|e| e.to_string())?;
    let w = &held.window;
    if body.user != held.user
        || body.product != held.product
        || body.device_id != device_id
        || body.window_id != w.id
        || body.start != w.start
        || body.end != w.end
        || body.source != held.source
    {
        return Err(format!(
            "lease for window '{}' does not match the window, user, product or device",
            w.id
        ));
    }
    Ok(())
}

impl Ledger {
    /// Holds `held` (already verified) unless a newer window is held for the
    /// same (user, product); returns the window now held.
    pub fn hold(&mut self, held: HeldWindow, out: &mut Vec<Action>) -> HeldWindow {
        let key = (held.user.clone(), held.product.clone());
        match self.windows.get(&key) {
            // A resent claim's original answer can be older than what is held.
            Some(newer) if newer.window.end > held.window.end => newer.clone(),
            // The same window again (a free launch inside it): keep its cost.
            Some(same) if same.window.id == held.window.id => same.clone(),
            _ => {
                out.push(Action::Persist(Persist::Window(held.clone())));
                self.windows.insert(key, held.clone());
                held
            }
        }
    }

    /// Restores a journaled window (verified by the caller).
    pub fn restore(&mut self, held: HeldWindow) {
        self.windows
            .insert((held.user.clone(), held.product.clone()), held);
    }

    /// The held window for (user, product) that covers `now`.
    pub fn valid(
        &self,
        user: &Email,
        product: &ProductId,
        now: DateTime<Utc>,
    ) -> Option<&HeldWindow> {
        self.windows
            .get(&(user.clone(), product.clone()))
            .filter(|h| h.window.start <= now && now < h.window.end)
    }

    pub fn window(&self, user: &Email, product: &ProductId) -> Option<&HeldWindow> {
        self.windows.get(&(user.clone(), product.clone()))
    }

    pub fn window_by_id(&self, id: &WindowId) -> Option<&HeldWindow> {
        self.windows.values().find(|h| h.window.id == id)
    }

    pub fn windows(&self) -> impl Iterator<Item = &HeldWindow> {
        self.windows.values()
    }

    /// Forgets the window held for (user, product).
    pub fn drop_window(&mut self, user: &Email, product: &ProductId, out: &mut Vec<Action>) {
        if let Some(h) = self.windows.remove(&(user.clone(), product.clone())) {
            out.push(Action::Persist(Persist::DropWindow {
                user: h.user,
                product: h.product,
            }));
        }
    }

    /// Forgets every window (the workstation was revoked).
    pub fn drop_all(&mut self, out: &mut Vec<Action>) {
        let keys: Vec<(Email, ProductId)> = self.windows.keys().cloned().collect();
        for (user, product) in keys {
            self.drop_window(&user, &product, out);
        }
    }

    /// An outstanding launch or renewal claim for (user, product), if any: a
    /// launch joins it rather than opening a second window.
    pub fn open_claim_for(&self, user: &Email, product: &ProductId) -> Option<&PendingClaim> {
        self.claims.values().find(|c| {
            &c.request.user == user && c.request.product == product && c.request.results.is_none()
        })
    }

    pub fn renewing(&self, window: &WindowId) -> bool {
        self.claims
            .values()
            .any(|c| c.request.renews.as_ref() == Some(window))
    }

    pub fn claim_mut(&mut self, id: &ClaimId) -> Option<&mut PendingClaim> {
        self.claims.get_mut(id)
    }

    pub fn claims(&self) -> impl Iterator<Item = &PendingClaim> {
        self.claims.values()
    }

    pub fn has_claims(&self) -> bool {
        !self.claims.is_empty()
    }

    /// Journals and sends a new claim, or resends an outstanding one; returns it
    /// so the caller can add who waits. With `hold`, it is journaled but not
    /// sent yet (a refund of the same user and product is in flight).
    pub fn send(
        &mut self,
        request: ClaimRequest,
        now: DateTime<Utc>,
        hold: bool,
        out: &mut Vec<Action>,
    ) -> &mut PendingClaim {
        let id = request.claim_id.clone();
        let pending = self.claims.entry(id.clone()).or_insert_with(|| {
            out.push(Action::Persist(Persist::ClaimPending(request.clone())));
            PendingClaim {
                request,
                in_flight: false,
                since: now,
                launches: Vec::new(),
                jobs: Vec::new(),
            }
        });
        if !pending.in_flight && !hold {
            pending.in_flight = true;
            out.push(Action::Claim {
                claim_id: id,
                request: pending.request.clone(),
            });
        }
        pending
    }

    /// A journaled claim restored at start: resent at once, nobody waits.
    pub fn resume(&mut self, request: ClaimRequest, now: DateTime<Utc>, out: &mut Vec<Action>) {
        out.push(Action::Claim {
            claim_id: request.claim_id.clone(),
            request: request.clone(),
        });
        self.claims.insert(
            request.claim_id.clone(),
            PendingClaim {
                request,
                in_flight: true,
                since: now,
                launches: Vec::new(),
                jobs: Vec::new(),
            },
        );
    }

    /// Removes a claim whose answer is being acted upon (or that is abandoned)
    /// and journals it as settled.
    pub fn settle(&mut self, id: &ClaimId, out: &mut Vec<Action>) -> Option<PendingClaim> {
        let pending = self.claims.remove(id)?;
        out.push(Action::Persist(Persist::ClaimSettled {
            claim_id: id.clone(),
        }));
        Some(pending)
    }

    /// A claim could not be delivered: a launch claim is settled (returned), a
    /// renewal waits for the next contact (its waiters are returned in a copy).
    pub fn undelivered(&mut self, id: &ClaimId, out: &mut Vec<Action>) -> Option<PendingClaim> {
        let pending = self.claims.get_mut(id)?;
        pending.in_flight = false;
        if pending.request.renews.is_none() {
            return self.settle(id, out);
        }
        let copy = pending.clone();
        pending.launches.clear();
        pending.jobs.clear();
        Some(copy)
    }

    /// Back in touch with the server (or a refund answered): resend what could
    /// not be delivered or was held, except what `held` still holds.
    pub fn resend(&mut self, held: impl Fn(&ClaimRequest) -> bool, out: &mut Vec<Action>) {
        for pending in self
            .claims
            .values_mut()
            .filter(|c| !c.in_flight && !held(&c.request))
        {
            pending.in_flight = true;
            out.push(Action::Claim {
                claim_id: pending.request.claim_id.clone(),
                request: pending.request.clone(),
            });
        }
    }

    /// Launch claims waiting (in flight, or held) for longer than `timeout`.
    pub fn stuck(&self, now: DateTime<Utc>, timeout: chrono::Duration) -> Vec<ClaimId> {
        self.claims
            .values()
            .filter(|c| c.request.renews.is_none() && c.request.results.is_none())
            .filter(|c| now - c.since >= timeout)
            .map(|c| c.request.claim_id.clone())
            .collect()
    }

    /// Held windows that ended and are due for renewal now, given which have
    /// runs in them.
    pub fn renewals_due(
        &self,
        now: DateTime<Utc>,
        running: impl Fn(&WindowId) -> bool,
    ) -> Vec<HeldWindow> {
        self.windows
            .values()
            .filter(|h| h.window.end <= now)
            .filter(|h| {
                self.renewal_retry
                    .get(&h.window.id)
                    .is_none_or(|(at, _)| *at <= now)
            })
            .filter(|h| !self.renewing(&h.window.id))
            .filter(|h| running(&h.window.id))
            .cloned()
            .collect()
    }

    /// When the held windows next need attention for renewal.
    pub fn renewal_deadlines(&self, running: impl Fn(&WindowId) -> bool) -> Vec<DateTime<Utc>> {
        self.windows
            .values()
            .filter(|h| !self.renewing(&h.window.id) && running(&h.window.id))
            .map(|h| {
                let retry = self.renewal_retry.get(&h.window.id).map(|(at, _)| *at);
                retry.unwrap_or(h.window.end).max(h.window.end)
            })
            .collect()
    }

    /// Records a renewal that failed verification; returns whether it was the
    /// first failure (the caller warns and schedules the close only then).
    pub fn renewal_retry_after(
        &mut self,
        window: &WindowId,
        now: DateTime<Utc>,
        start: chrono::Duration,
        max: chrono::Duration,
    ) -> bool {
        let tries = self.renewal_retry.get(window).map_or(0, |(_, n)| *n) + 1;
        let wait = (start * 2i32.pow((tries - 1).min(16))).min(max.max(start));
        self.renewal_retry
            .insert(window.clone(), (now + wait, tries));
        tries == 1
    }

    /// Renewals waiting for a retry are tried at once (the balance grew).
    pub fn retry_renewals_now(&mut self, now: DateTime<Utc>) {
        for (at, _) in self.renewal_retry.values_mut() {
            *at = (*at).min(now);
        }
    }

    pub fn renewal_done(&mut self, window: &WindowId) {
        self.renewal_retry.remove(window);
    }

    /// Drops retry schedules and notices of windows no longer held.
    pub fn prune_retries(&mut self) {
        let windows = &self.windows;
        self.renewal_retry
            .retain(|id, _| windows.values().any(|h| h.window.id == *id));
        self.noticed
            .retain(|id| windows.values().any(|h| h.window.id == *id));
    }

    /// Marks window `id`'s renewal as announced; `false` if it already was.
    pub fn notice(&mut self, id: &WindowId) -> bool {
        self.noticed.insert(id.clone())
    }

    pub fn noticed(&self, id: &WindowId) -> bool {
        self.noticed.contains(id)
    }
}
