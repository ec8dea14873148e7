//! Acting on the server's answer to a claim: a grant opens or renews a window
//! (after checking its signed lease) and covers every run waiting for it; a
//! denial is passed on to whoever waits and closes what must not run; an
//! undelivered claim is refused as offline.

use flex_protocol::api::{ClaimResponse, Denial, Grant};
use flex_protocol::socket::{display_name, CloseReason, Event};
use flex_protocol::ErrorCode;
use flex_protocol::{ClaimId, ProductId, WindowId};

use super::jobs::job_reply;
use super::ledger::{check_lease, PendingClaim};
use super::runs::{Found, RunState, CLAIM_TIMEOUT};
use super::{Action, Core, HeldWindow, Persist, Refusal};
use crate::account::AccountId;

/// First wait before retrying a renewal whose grant could not be verified; it
/// doubles with each failure, up to the renewal grace.
const RENEWAL_RETRY_START: chrono::Duration = chrono::Duration::seconds(30);

fn offline_message(product: &str) -> String {
    format!(
        "cannot reach the license server and this computer holds no license for {product}: \
         connect to the network and try again"
    )
}

/// The error code a wrapper is given for a run closed for `reason`.
pub(super) fn close_code(reason: CloseReason) -> ErrorCode {
    match reason {
        CloseReason::Offline => ErrorCode::Offline,
        CloseReason::OutOfTokens => ErrorCode::OutOfTokens,
        CloseReason::NotEntitled => ErrorCode::NotEntitled,
        CloseReason::Denied => ErrorCode::Forbidden,
    }
}

pub(super) fn close_reason(code: ErrorCode) -> CloseReason {
    match code {
        ErrorCode::OutOfTokens => CloseReason::OutOfTokens,
        ErrorCode::NotEntitled => CloseReason::NotEntitled,
        ErrorCode::Offline => CloseReason::Offline,
        _ => CloseReason::Denied,
    }
}

impl Core {
    /// The server answered a claim.
    pub(super) fn claim_answered(
        &mut self,
        claim_id: &ClaimId,
        response: ClaimResponse,
        out: &mut Vec<Action>,
    ) {
        let Some(pending) = self.ledger.settle(claim_id, out) else {
            // The claim was given up (no answer in time) or is a late duplicate:
            // a grant is still a paid window, so it is held.
            if let ClaimResponse::Granted(grant) = response {
                self.late_grant(grant, out);
            }
            return;
        };
        match response {
            ClaimResponse::Granted(grant) => self.granted(&pending, grant, out),
            ClaimResponse::Denied(denial) => self.denied(&pending, denial, out),
        }
    }

    fn set_balance(&mut self, balance: u64, out: &mut Vec<Action>) {
        if self.balance != Some(balance) {
            self.balance = Some(balance);
            out.push(Action::Persist(Persist::Balance(balance)));
        }
    }

    fn granted(&mut self, pending: &PendingClaim, grant: Grant, out: &mut Vec<Action>) {
        self.set_balance(grant.balance, out);
        let req = &pending.request;
        let now = self.contact.now();
        if req.results.is_some() {
            let already = self.jobs.answered(req, true, None, now, out);
            for w in &pending.jobs {
                out.push(Action::ReplyJob {
                    request: w.request.clone(),
                    result: Ok(job_reply(
                        req,
                        self.product_name(&req.product),
                        &w.job,
                        grant.tokens_charged,
                        grant.balance,
                        already,
                    )),
                });
                if !already {
                    self.notify_charged(&w.account, &req.product, &grant, false, out);
                }
            }
            return;
        }
        let held = match (grant.window.clone(), grant.lease.clone()) {
            (Some(window), Some(lease)) => HeldWindow {
                user: req.user.clone(),
                product: req.product.clone(),
                source: grant.source,
                window,
                lease,
                tokens_charged: grant.tokens_charged,
            },
            _ => {
                let message = format!(
                    "the server granted '{}' without a signed lease",
                    req.product
                );
                return self.unverifiable(pending, message, out);
            }
        };
        if let Err(e) = check_lease(&self.config.verifier, &self.config.device_id, &held) {
            let message = format!("refusing the server's grant for '{}': {e}", req.product);
            return self.unverifiable(pending, message, out);
        }
        let held = self.ledger.hold(held, out);
        let mut charged = grant.tokens_charged;
        // Runs in the renewed window move to the new one; a close a failed
        // renewal scheduled is off.
        if let Some(old) = &req.renews {
            self.ledger.renewal_done(old);
            let renewed: Vec<Found> = self
                .runs
                .all()
                .into_iter()
                .filter(|f| self.runs.get(f).is_some_and(|r| r.runs_in(old)))
                .collect();
            let account = renewed
                .first()
                .and_then(|f| self.runs.get(f))
                .map(|r| r.account.clone());
            for f in &renewed {
                self.cover(f, &held, out);
            }
            if let Some(account) = account {
                self.notify_charged(&account, &req.product, &grant, true, out);
                // Told once: launches that joined the renewal got it free.
                charged = 0;
            }
        }
        // One claim, one charge: it is told to the first who waited, and the
        // first wrapper's reply carries it; a paused product in use again is
        // told it resumed.
        let first = pending
            .launches
            .first()
            .and_then(|w| self.runs.find(&w.session))
            .or_else(|| self.runs.waiting_for(&req.claim_id).into_iter().next())
            .and_then(|f| self.runs.get(&f))
            .map(|r| (r.account.clone(), r.resuming));
        self.cover_all(&held, out);
        match first {
            Some((account, true)) => out.push(Action::Notify {
                account: Some(account),
                event: Event::Resumed {
                    product: req.product.clone(),
                    product_name: self.product_name(&req.product),
                    tokens: charged,
                },
            }),
            Some((account, false)) => {
                let grant = Grant {
                    tokens_charged: charged,
                    ..grant.clone()
                };
                self.notify_charged(&account, &req.product, &grant, false, out);
            }
            None => {}
        }
        for run in self.runs.iter_mut() {
            if run.user == held.user && run.product == held.product {
                run.resuming = false;
            }
        }
        for w in &pending.launches {
            self.reply_granted(&w.request, &w.session, &held, charged, out);
            charged = 0;
        }
    }

    /// A window is held for (user, product): every run of that user and
    /// product that has none (waiting, left unlicensed, or refused and not yet
    /// sent its close) runs in it now.
    fn cover_all(&mut self, held: &HeldWindow, out: &mut Vec<Action>) {
        let uncovered: Vec<Found> = self
            .runs
            .all()
            .into_iter()
            .filter(|f| {
                self.runs.get(f).is_some_and(|r| {
                    r.user == held.user
                        && r.product == held.product
                        && match &r.state {
                            RunState::Claiming { .. }
                            | RunState::Unlicensed { .. }
                            | RunState::Paused { .. } => true,
                            RunState::Closing { close, cover } => {
                                cover.is_none() && close.kill_at.is_none()
                            }
                            RunState::Covered(_) => false,
                        }
                })
            })
            .collect();
        for f in &uncovered {
            self.cover(f, held, out);
        }
    }

    /// A grant for a claim the agent gave up on: if its lease verifies, the
    /// window is held (it was paid for) and covers the runs that need it.
    fn late_grant(&mut self, grant: Grant, out: &mut Vec<Action>) {
        let (Some(window), Some(lease)) = (grant.window, grant.lease) else {
            return;
        };
        let Ok(body) = self.config.verifier.verify(&lease) else {
            return;
        };
        let held = HeldWindow {
            user: body.user,
            product: body.product,
            source: grant.source,
            window,
            lease,
            tokens_charged: grant.tokens_charged,
        };
        if check_lease(&self.config.verifier, &self.config.device_id, &held).is_ok() {
            self.set_balance(grant.balance, out);
            let held = self.ledger.hold(held, out);
            self.cover_all(&held, out);
        }
    }

    fn notify_charged(
        &self,
        account: &AccountId,
        product: &ProductId,
        grant: &Grant,
        renewal: bool,
        out: &mut Vec<Action>,
    ) {
        if grant.tokens_charged > 0 {
            out.push(Action::Notify {
                account: Some(account.clone()),
                event: Event::Charged {
                    product: product.clone(),
                    product_name: self.product_name(product),
                    tokens: grant.tokens_charged,
                    balance: grant.balance,
                    window_end: grant.window.as_ref().map(|w| w.end),
                    renewal,
                },
            });
        }
    }

    fn denied(&mut self, pending: &PendingClaim, d: Denial, out: &mut Vec<Action>) {
        if let Some(b) = d.balance {
            self.set_balance(b, out);
        }
        let req = &pending.request;
        let now = self.contact.now();
        if req.results.is_some() && self.jobs.answered(req, false, Some(d.reason), now, out) {
            // A charged job retried with another body: it stays charged.
            return self.refuse(pending, d.reason, d.message, out);
        }
        if d.reason == ErrorCode::DeviceRevoked {
            self.revoked(d.message.clone(), out);
        }
        if d.reason == ErrorCode::OutOfTokens {
            let account = pending
                .jobs
                .first()
                .map(|w| w.account.clone())
                .or_else(|| {
                    pending
                        .launches
                        .first()
                        .and_then(|w| self.runs.find(&w.session))
                        .and_then(|f| self.runs.get(&f))
                        .map(|r| r.account.clone())
                })
                .or_else(|| {
                    let old = req.renews.as_ref();
                    self.runs
                        .iter()
                        .find(|r| {
                            old.is_some_and(|w| r.runs_in(w))
                                || matches!(&r.state, RunState::Claiming { claim, .. } if *claim == req.claim_id)
                        })
                        .map(|r| r.account.clone())
                });
            out.push(Action::Notify {
                account,
                event: Event::OutOfTokens {
                    product: req.product.clone(),
                    product_name: self.product_name(&req.product),
                },
            });
        }
        if let Some(old) = &req.renews {
            // Renewal refused: warn, close after the renewal grace, and try
            // again meanwhile (and at once when the balance grows): an admin
            // who buys tokens during the grace saves the run. A revoked
            // workstation has dropped every window already.
            if d.reason != ErrorCode::DeviceRevoked {
                self.renewal_failed(old, d.reason, d.message.clone(), out);
            }
        }
        self.refuse(pending, d.reason, d.message, out);
    }

    /// The server granted a claim the agent cannot trust (no lease, or a lease
    /// that fails verification: a changed signing key, a mismatch). A launch is
    /// refused; a renewal warns, closes the product after the renewal grace,
    /// and is retried with backoff meanwhile — never at once, which would send
    /// a fresh claim in a tight loop.
    fn unverifiable(&mut self, pending: &PendingClaim, message: String, out: &mut Vec<Action>) {
        tracing::error!("{message}");
        if let Some(old) = &pending.request.renews {
            self.renewal_failed(old, ErrorCode::Internal, message.clone(), out);
        }
        self.refuse(pending, ErrorCode::Internal, message, out);
    }

    /// Warns the users of window `old` that it could not be renewed and schedules
    /// their products' close after the renewal grace; the renewal is tried
    /// again meanwhile (with backoff, and at once when the balance grows) and
    /// a success cancels the close.
    fn renewal_failed(
        &mut self,
        old: &WindowId,
        reason: ErrorCode,
        message: String,
        out: &mut Vec<Action>,
    ) {
        let now = self.contact.now();
        let grace = chrono::Duration::seconds(self.policy.renewal_grace_secs as i64);
        let first = self
            .ledger
            .renewal_retry_after(old, now, RENEWAL_RETRY_START, grace);
        if !first {
            return; // warned and scheduled at the first failure
        }
        let closes_at = now + grace;
        let wall = self.contact.clock.wall_at(closes_at);
        let products = &self.products;
        for run in self.runs.iter_mut().filter(|r| r.runs_in(old)) {
            out.push(Action::Notify {
                account: Some(run.account.clone()),
                event: Event::RenewalFailed {
                    product_name: super::name_of(products, &run.product),
                    product: run.product.clone(),
                    reason,
                    closes_at: wall,
                },
            });
            run.close(
                close_reason(reason),
                message.clone(),
                closes_at,
                Some(old.clone()),
            );
        }
    }

    /// Tells everyone waiting for a claim that it was refused: wrappers and
    /// jobs get the refusal; runs waiting for it with no process leave the
    /// set; runs with a process are closed where the site enforces, left
    /// unlicensed otherwise.
    fn refuse(
        &mut self,
        pending: &PendingClaim,
        code: ErrorCode,
        message: String,
        out: &mut Vec<Action>,
    ) {
        let product = &pending.request.product;
        let product_name = self.product_name(product);
        let refusal = || Refusal::new(code, message.clone()).about(product_name.clone());
        let denied = |account: AccountId| Action::Notify {
            account: Some(account),
            event: Event::LaunchDenied {
                product: product.clone(),
                product_name: product_name.clone(),
                reason: code,
                message: message.clone(),
            },
        };
        for w in &pending.jobs {
            out.push(Action::ReplyJob {
                request: w.request.clone(),
                result: Err(refusal()),
            });
        }
        let mut told = Vec::new();
        for w in &pending.launches {
            if let Some(run) = self.runs.find(&w.session).and_then(|f| self.runs.get(&f)) {
                told.push(run.id.clone());
                out.push(denied(run.account.clone()));
            }
            out.push(Action::ReplyLaunch {
                request: w.request.clone(),
                result: Err(refusal()),
            });
        }
        let now = self.contact.now();
        for found in self.runs.waiting_for(&pending.request.claim_id) {
            if let Found::Pending(id) = &found {
                if let Some(run) = self.runs.take_pending(id) {
                    self.end_run(&run, out);
                }
                continue;
            }
            let enforce = self.config.enforce;
            let Some(run) = self.runs.get_mut(&found) else {
                continue;
            };
            if !told.contains(&run.id) {
                out.push(denied(run.account.clone()));
            }
            if enforce {
                run.close(close_reason(code), message.clone(), now, None);
            } else {
                run.state = RunState::Unlicensed { reason: code };
            }
        }
    }

    /// A claim could not be delivered (or got no answer in time).
    pub(super) fn claim_failed(&mut self, claim_id: &ClaimId, error: &str, out: &mut Vec<Action>) {
        let Some(pending) = self.ledger.undelivered(claim_id, out) else {
            return;
        };
        let name = self.product_name(&pending.request.product);
        let product = display_name(pending.request.product.as_str(), name.as_deref());
        let message = if pending.request.results.is_some() {
            format!("cannot reach the license server to charge the {product} job ({error}): connect to the network and retry with the same job id")
        } else {
            offline_message(product)
        };
        self.refuse(&pending, ErrorCode::Offline, message, out);
    }

    /// Launch claims that got no answer within [`CLAIM_TIMEOUT`] are given up:
    /// their runs do not wait unlicensed any longer.
    pub(super) fn give_up_stuck_claims(&mut self, out: &mut Vec<Action>) {
        let now = self.contact.now();
        for id in self.ledger.stuck(now, CLAIM_TIMEOUT) {
            tracing::warn!(claim_id = %id, "no answer to the claim in time: refusing its launches as offline");
            self.claim_failed(&id, "no answer in time", out);
        }
    }

    /// The server says this workstation was removed: no window it holds is
    /// honoured any more, and what runs in one is closed after the renewal
    /// grace (its users are told why, and may save).
    pub(super) fn revoked(&mut self, message: String, out: &mut Vec<Action>) {
        self.ledger.drop_all(out);
        let now = self.contact.now();
        let closes_at = now + chrono::Duration::seconds(self.policy.renewal_grace_secs as i64);
        for run in self.runs.iter_mut() {
            if matches!(run.state, RunState::Covered(_)) {
                run.close(CloseReason::Denied, message.clone(), closes_at, None);
            }
        }
    }
}
