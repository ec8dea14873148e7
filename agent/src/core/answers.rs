//! Acting on the server's answer to a claim: a grant opens or renews a window
//! (after checking its signed lease), a denial is passed on to whoever waits and
//! closes what must not run, and an undelivered claim is refused as offline.

use flex_protocol::api::{ClaimResponse, Denial, Grant};
use flex_protocol::socket::{display_name, CloseReason, Event, LaunchReply};
use flex_protocol::ErrorCode;

use super::{Action, Core, HeldWindow, PendingClaim, Persist, Refusal, Waiter};
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

impl Core {
    /// The server answered a claim.
    pub(super) fn claim_answered(
        &mut self,
        claim_id: &str,
        response: ClaimResponse,
        out: &mut Vec<Action>,
    ) {
        let Some(pending) = self.claims.remove(claim_id) else {
            return; // a late duplicate of an answer already acted upon
        };
        match response {
            ClaimResponse::Granted(grant) => self.granted(&pending, grant, out),
            ClaimResponse::Denied(denial) => self.denied(&pending, denial, out),
        }
        out.push(Action::Persist(Persist::ClaimSettled {
            claim_id: claim_id.to_string(),
        }));
    }

    fn granted(&mut self, pending: &PendingClaim, grant: Grant, out: &mut Vec<Action>) {
        self.balance = Some(grant.balance);
        out.push(Action::Persist(Persist::Balance(grant.balance)));
        let req = &pending.request;
        if req.results.is_some() {
            let already =
                self.job_answered(req, Some((grant.tokens_charged, grant.balance)), None, out);
            for w in &pending.waiters {
                if let Waiter::Job {
                    request,
                    account,
                    job,
                } = w
                {
                    out.push(Action::ReplyJob {
                        request: request.clone(),
                        result: Ok(self.job_reply(
                            req,
                            job,
                            grant.tokens_charged,
                            grant.balance,
                            already,
                        )),
                    });
                    if !already {
                        self.notify_charged(account, &req.product, &grant, out);
                    }
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
        if let Err(e) = self.check_lease(&held) {
            let message = format!("refusing the server's grant for '{}': {e}", req.product);
            return self.unverifiable(pending, message, out);
        }
        let key = (held.user.clone(), held.product.clone());
        let held = match self.windows.get(&key) {
            // A resent claim's original answer can be older than what is held.
            Some(newer) if newer.window.end > held.window.end => newer.clone(),
            // The same window again (a free launch inside it): keep its cost.
            Some(same) if same.window.id == held.window.id => same.clone(),
            _ => {
                out.push(Action::Persist(Persist::Window(held.clone())));
                self.windows.insert(key, held.clone());
                held
            }
        };
        let mut charged = grant.tokens_charged;
        // Sessions in the renewed window move to the new one.
        if let Some(old) = &req.renews {
            self.renewal_retry.remove(old);
            let ids: Vec<String> = self.running_in(old).map(|s| s.id.clone()).collect();
            let account = ids.first().map(|id| self.sessions[id].account.clone());
            for id in ids {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.window_id = Some(held.window.id.clone());
                    // A retry saved the run: the failed renewal's close is off.
                    if s.closing
                        .as_ref()
                        .is_some_and(|c| c.renewal_of.as_deref() == Some(old))
                    {
                        s.closing = None;
                    }
                }
                self.persist_session(&id, out);
            }
            if let Some(account) = account {
                self.notify_charged(&account, &req.product, &grant, out);
                // Told once: launches that joined the renewal got it free.
                charged = 0;
            }
        }
        for w in &pending.waiters {
            if let Some(account) = self.waiter_account(w) {
                self.notify_charged(
                    &account,
                    &req.product,
                    &Grant {
                        tokens_charged: charged,
                        ..grant.clone()
                    },
                    out,
                );
            }
            self.grant_waiter(w, &held, charged, out);
            // One claim, one charge: later waiters on it got their launch free.
            charged = 0;
        }
    }

    fn waiter_account(&self, w: &Waiter) -> Option<AccountId> {
        match w {
            Waiter::Launch { session, .. } | Waiter::Watch { session } => {
                self.sessions.get(session).map(|s| s.account.clone())
            }
            Waiter::Job { account, .. } => Some(account.clone()),
        }
    }

    fn notify_charged(
        &self,
        account: &AccountId,
        product: &str,
        grant: &Grant,
        out: &mut Vec<Action>,
    ) {
        if grant.tokens_charged > 0 {
            out.push(Action::Notify {
                account: Some(account.clone()),
                event: Event::Charged {
                    product: product.to_string(),
                    product_name: self.product_name(product),
                    tokens: grant.tokens_charged,
                    balance: grant.balance,
                    window_end: grant.window.as_ref().map(|w| w.end),
                },
            });
        }
    }

    /// A session runs in `held`; a wrapper gets its answer.
    pub(super) fn grant_waiter(
        &mut self,
        w: &Waiter,
        held: &HeldWindow,
        charged: u64,
        out: &mut Vec<Action>,
    ) {
        let (Waiter::Launch { session, .. } | Waiter::Watch { session }) = w else {
            return;
        };
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        s.source = Some(held.source);
        s.window_id = Some(held.window.id.clone());
        let id = s.id.clone();
        self.persist_session(&id, out);
        if let Waiter::Launch { request, session } = w {
            out.push(Action::ReplyLaunch {
                request: request.clone(),
                result: Ok(LaunchReply {
                    session: session.clone(),
                    product: held.product.clone(),
                    product_name: self.product_name(&held.product),
                    source: held.source,
                    window_end: held.window.end,
                    tokens_charged: charged,
                    balance: self.balance,
                    offline: !self.online,
                    close_grace_secs: Some(self.policy.close_grace_secs),
                }),
            });
        }
    }

    fn denied(&mut self, pending: &PendingClaim, d: Denial, out: &mut Vec<Action>) {
        if let Some(b) = d.balance {
            self.balance = Some(b);
            out.push(Action::Persist(Persist::Balance(b)));
        }
        let req = &pending.request;
        if req.results.is_some() && self.job_answered(req, None, Some(d.reason), out) {
            // A charged job retried with another body: it stays charged.
            return self.refuse(pending, d.reason, d.message, out);
        }
        if d.reason == ErrorCode::OutOfTokens {
            let account = pending
                .waiters
                .iter()
                .find_map(|w| self.waiter_account(w))
                .or_else(|| {
                    req.renews
                        .as_deref()
                        .and_then(|w| self.running_in(w).next().map(|s| s.account.clone()))
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
            // Renewal refused: warn, then close after the renewal grace.
            self.renewal_failed(old, d.reason, d.message.clone(), false, out);
            self.windows
                .remove(&(req.user.clone(), req.product.clone()));
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
            self.renewal_failed(old, ErrorCode::Internal, message.clone(), true, out);
        }
        self.refuse(pending, ErrorCode::Internal, message, out);
    }

    /// Warns the users of window `old` that it could not be renewed and schedules
    /// their products' close after the renewal grace; with `retry`, the renewal
    /// is tried again later and a success cancels the close.
    fn renewal_failed(
        &mut self,
        old: &str,
        reason: ErrorCode,
        message: String,
        retry: bool,
        out: &mut Vec<Action>,
    ) {
        let now = self.clock.trusted_now();
        let grace = chrono::Duration::seconds(self.policy.renewal_grace_secs as i64);
        let first = !self.renewal_retry.contains_key(old);
        if retry {
            let tries = self.renewal_retry.get(old).map_or(0, |(_, n)| *n) + 1;
            let wait = (RENEWAL_RETRY_START * 2i32.pow((tries - 1).min(16)))
                .min(grace.max(RENEWAL_RETRY_START));
            self.renewal_retry
                .insert(old.to_string(), (now + wait, tries));
        }
        if !first {
            return; // warned and scheduled at the first failure
        }
        let closes_at = now + grace;
        let ids: Vec<(String, AccountId, String)> = self
            .running_in(old)
            .map(|s| (s.id.clone(), s.account.clone(), s.product.clone()))
            .collect();
        for (id, account, product) in ids {
            out.push(Action::Notify {
                account: Some(account),
                event: Event::RenewalFailed {
                    product_name: self.product_name(&product),
                    product,
                    reason,
                    closes_at: self.clock.wall_at(closes_at),
                },
            });
            let renewal_of = retry.then(|| old.to_string());
            self.schedule_close(
                &id,
                close_reason(reason),
                message.clone(),
                closes_at,
                renewal_of,
            );
        }
    }

    /// Tells every waiter of a claim that it was refused; watched processes are
    /// closed when enforcing.
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
        for w in &pending.waiters {
            match w {
                Waiter::Job { request, .. } => out.push(Action::ReplyJob {
                    request: request.clone(),
                    result: Err(refusal()),
                }),
                Waiter::Launch { request, session } => {
                    if let Some(account) = self.sessions.get(session).map(|s| s.account.clone()) {
                        self.drop_session(session, out);
                        out.push(Action::Notify {
                            account: Some(account),
                            event: Event::LaunchDenied {
                                product: product.clone(),
                                product_name: product_name.clone(),
                                reason: code,
                                message: message.clone(),
                            },
                        });
                    }
                    out.push(Action::ReplyLaunch {
                        request: request.clone(),
                        result: Err(refusal()),
                    });
                }
                Waiter::Watch { session } => {
                    let Some(account) = self.sessions.get(session).map(|s| s.account.clone())
                    else {
                        continue;
                    };
                    out.push(Action::Notify {
                        account: Some(account),
                        event: Event::LaunchDenied {
                            product: product.clone(),
                            product_name: product_name.clone(),
                            reason: code,
                            message: message.clone(),
                        },
                    });
                    if self.config.enforce {
                        let now = self.clock.trusted_now();
                        self.schedule_close(
                            session,
                            close_reason(code),
                            message.clone(),
                            now,
                            None,
                        );
                    }
                }
            }
        }
    }

    /// A claim could not be delivered.
    pub(super) fn claim_failed(&mut self, claim_id: &str, error: &str, out: &mut Vec<Action>) {
        let Some(pending) = self.claims.get_mut(claim_id) else {
            return;
        };
        pending.in_flight = false;
        let pending = pending.clone();
        if pending.request.renews.is_none() {
            self.claims.remove(claim_id);
            out.push(Action::Persist(Persist::ClaimSettled {
                claim_id: claim_id.to_string(),
            }));
        } else if let Some(p) = self.claims.get_mut(claim_id) {
            p.waiters.clear();
        }
        let name = self.product_name(&pending.request.product);
        let product = display_name(&pending.request.product, name.as_deref());
        let message = if pending.request.results.is_some() {
            format!("cannot reach the license server to charge the {product} job ({error}): connect to the network and retry with the same job id")
        } else {
            offline_message(product)
        };
        self.refuse(&pending, ErrorCode::Offline, message, out);
    }

    /// Back in touch with the server: resend renewals that could not be delivered.
    pub(super) fn resend_claims(&mut self, out: &mut Vec<Action>) {
        for pending in self.claims.values_mut().filter(|c| !c.in_flight) {
            pending.in_flight = true;
            out.push(Action::Claim {
                claim_id: pending.request.claim_id.clone(),
                request: pending.request.clone(),
            });
        }
    }
}

fn close_reason(code: ErrorCode) -> CloseReason {
    match code {
        ErrorCode::OutOfTokens => CloseReason::OutOfTokens,
        ErrorCode::NotEntitled => CloseReason::NotEntitled,
        ErrorCode::Offline => CloseReason::Offline,
        _ => CloseReason::Denied,
    }
}
