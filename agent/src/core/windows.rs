//! Charge windows (R5): free launches inside a held window, claims otherwise,
//! renewals at window end while the product runs, and per-result jobs (R6).
//!
//! A claim's fate once it could not be delivered: a *renewal* stays journaled and
//! is resent with its id at the next contact (the product is still running and
//! owes the window). A *launch* claim is settled as abandoned: its launch was
//! refused as offline, and if the server did receive it the window lives in the
//! server's ledger, where a later claim for the same user and product falls inside
//! it and is free, so resending could only charge a launch the user was refused.
//! After an agent restart every unsettled claim is resent, since the agent cannot
//! tell which were delivered. Job claim ids derive from the caller's job id, so a
//! retried job is charged once.

use flex_protocol::api::{ClaimRequest, ClaimResponse, Denial, Grant};
use flex_protocol::socket::{CloseReason, Event, LaunchReply, ResultReply};
use flex_protocol::ErrorCode;

use super::{
    Action, Core, HeldWindow, JobRequest, LaunchRequest, Origin, PendingClaim, Persist,
    ProcessInfo, Refusal, Session, Waiter,
};

fn offline_message(product: &str) -> String {
    format!(
        "cannot reach the licence server and no window is held for '{product}': \
         connect to the network and try again"
    )
}

impl Core {
    /// Checks a lease's signature and that it says what the window says.
    pub(super) fn check_lease(&self, held: &HeldWindow) -> Result<(), String> {
        let body = self
            .config
            .verifier
            .verify(&held.lease)
            .map_err(|e| e.to_string())?;
        let w = &held.window;
        if body.user != held.user
            || body.product != held.product
            || body.device_id != self.config.device_id
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

    /// The held window for (user, product) that covers trusted now.
    fn valid_window(&self, user: &str, product: &str) -> Option<&HeldWindow> {
        let now = self.clock.trusted_now();
        self.windows
            .get(&(user.to_string(), product.to_string()))
            .filter(|h| h.window.start <= now && now < h.window.end)
    }

    /// An outstanding launch or renewal claim for (user, product), if any: a
    /// launch joins it rather than opening a second window.
    fn launch_claim_for(&self, user: &str, product: &str) -> Option<String> {
        self.claims
            .values()
            .find(|c| {
                c.request.user == user
                    && c.request.product == product
                    && c.request.results.is_none()
            })
            .map(|c| c.request.claim_id.clone())
    }

    /// Journals and sends a new claim (or resends an outstanding one) for a waiter.
    fn claim(&mut self, request: ClaimRequest, waiter: Option<Waiter>, out: &mut Vec<Action>) {
        let id = request.claim_id.clone();
        let pending = self.claims.entry(id.clone()).or_insert_with(|| {
            out.push(Action::Persist(Persist::ClaimPending(request.clone())));
            PendingClaim {
                request,
                waiters: Vec::new(),
                in_flight: false,
            }
        });
        pending.waiters.extend(waiter);
        if !pending.in_flight {
            pending.in_flight = true;
            out.push(Action::Claim {
                claim_id: id,
                request: pending.request.clone(),
            });
        }
    }

    fn open_session(&mut self, s: Session, waiter: impl FnOnce(String) -> Waiter) -> Waiter {
        let id = s.id.clone();
        self.sessions.insert(id.clone(), s);
        waiter(id)
    }

    /// A wrapper asks to launch: free inside a held window, otherwise claim.
    pub(super) fn launch(&mut self, req: LaunchRequest, out: &mut Vec<Action>) {
        let session = Session {
            id: Self::new_session_id(),
            uid: req.uid,
            account: req.account.clone(),
            user: req.user.clone(),
            product: req.product.clone(),
            version: req.version.clone(),
            pid: req.pid,
            origin: Origin::Wrapper,
            source: None,
            window_id: None,
            started_at: self.clock.trusted_now(),
            warned: Vec::new(),
            closing: None,
        };
        let request = req.request;
        let waiter = self.open_session(session, |session| Waiter::Launch { request, session });
        self.start_or_claim(&req.user, &req.product, req.version, waiter, out);
    }

    /// The watcher saw a product start; a pid already tracked is ignored.
    pub(super) fn process_started(&mut self, p: ProcessInfo, out: &mut Vec<Action>) {
        if self.sessions.values().any(|s| s.pid == Some(p.pid)) {
            return;
        }
        let session = Session {
            id: Self::new_session_id(),
            uid: p.uid,
            account: p.account,
            user: p.user.clone(),
            product: p.product.clone(),
            version: p.version.clone(),
            pid: Some(p.pid),
            origin: Origin::Watcher,
            source: None,
            window_id: None,
            // The process may have started before the agent saw it (adoption).
            started_at: p.started_at.min(self.clock.trusted_now()),
            warned: Vec::new(),
            closing: None,
        };
        let waiter = self.open_session(session, |session| Waiter::Watch { session });
        self.start_or_claim(&p.user, &p.product, p.version, waiter, out);
    }

    fn start_or_claim(
        &mut self,
        user: &str,
        product: &str,
        version: Option<String>,
        waiter: Waiter,
        out: &mut Vec<Action>,
    ) {
        if let Some(held) = self.valid_window(user, product).cloned() {
            self.grant_waiter(&waiter, &held, 0, out);
            return;
        }
        let request = match self.launch_claim_for(user, product) {
            Some(id) => self.claims[&id].request.clone(),
            None => ClaimRequest {
                claim_id: uuid::Uuid::new_v4().to_string(),
                user: user.to_string(),
                product: product.to_string(),
                version,
                results: None,
                renews: None,
            },
        };
        self.claim(request, Some(waiter), out);
    }

    /// A per-result job: one claim per job.
    pub(super) fn job(&mut self, req: JobRequest, out: &mut Vec<Action>) {
        if let Some(p) = self.products.get(&req.product) {
            if p.charge.per_result_cost(req.count).is_none() {
                out.push(Action::ReplyJob {
                    request: req.request,
                    result: Err(Refusal {
                        code: ErrorCode::InvalidRequest,
                        message: format!(
                            "'{}' is charged per day, not per result: launch it instead",
                            req.product
                        ),
                    }),
                });
                return;
            }
        }
        let claim_id = match &req.job {
            Some(job) => format!("job:{}:{}:{}", self.config.device_id, req.user, job),
            None => uuid::Uuid::new_v4().to_string(),
        };
        let waiter = Waiter::Job {
            request: req.request,
            uid: req.uid,
            job: req.job.unwrap_or_else(|| claim_id.clone()),
        };
        let request = ClaimRequest {
            claim_id,
            user: req.user,
            product: req.product,
            version: None,
            results: Some(req.count),
            renews: None,
        };
        self.claim(request, Some(waiter), out);
    }

    /// Starts a renewal claim for every held window that ended while its product
    /// still runs for the user.
    pub(super) fn renewals(&mut self, out: &mut Vec<Action>) {
        let now = self.clock.trusted_now();
        let due: Vec<HeldWindow> = self
            .windows
            .values()
            .filter(|h| h.window.end <= now)
            .filter(|h| {
                !self
                    .claims
                    .values()
                    .any(|c| c.request.renews.as_deref() == Some(&h.window.id))
            })
            .filter(|h| self.running_in(&h.window.id).next().is_some())
            .cloned()
            .collect();
        for h in due {
            let version = self
                .running_in(&h.window.id)
                .find_map(|s| s.version.clone());
            let request = ClaimRequest {
                claim_id: uuid::Uuid::new_v4().to_string(),
                user: h.user.clone(),
                product: h.product.clone(),
                version,
                results: None,
                renews: Some(h.window.id.clone()),
            };
            self.claim(request, None, out);
        }
    }

    /// Licensed sessions running in window `window_id` and not being closed.
    pub(super) fn running_in<'a>(
        &'a self,
        window_id: &'a str,
    ) -> impl Iterator<Item = &'a Session> {
        self.sessions
            .values()
            .filter(move |s| s.window_id.as_deref() == Some(window_id) && s.closing.is_none())
    }

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
            for w in &pending.waiters {
                if let Waiter::Job { request, uid, job } = w {
                    out.push(Action::ReplyJob {
                        request: request.clone(),
                        result: Ok(ResultReply {
                            product: req.product.clone(),
                            job: job.clone(),
                            tokens_charged: grant.tokens_charged,
                            balance: grant.balance,
                        }),
                    });
                    self.notify_charged(*uid, &req.product, &grant, out);
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
            },
            _ => {
                let message = format!(
                    "the server granted '{}' without a signed lease",
                    req.product
                );
                return self.refuse(pending, ErrorCode::Internal, message, out);
            }
        };
        if let Err(e) = self.check_lease(&held) {
            let message = format!("refusing the server's grant for '{}': {e}", req.product);
            return self.refuse(pending, ErrorCode::Internal, message, out);
        }
        out.push(Action::Persist(Persist::Window(held.clone())));
        self.windows
            .insert((held.user.clone(), held.product.clone()), held.clone());
        // Sessions in the renewed window move to the new one.
        if let Some(old) = &req.renews {
            let ids: Vec<String> = self.running_in(old).map(|s| s.id.clone()).collect();
            let uid = ids.first().map(|id| self.sessions[id].uid);
            for id in ids {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.window_id = Some(held.window.id.clone());
                }
                self.persist_session(&id, out);
            }
            if let Some(uid) = uid {
                self.notify_charged(uid, &req.product, &grant, out);
            }
        }
        let mut charged = grant.tokens_charged;
        for w in &pending.waiters {
            if let Some(uid) = self.waiter_uid(w) {
                self.notify_charged(
                    uid,
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

    fn waiter_uid(&self, w: &Waiter) -> Option<u32> {
        match w {
            Waiter::Launch { session, .. } | Waiter::Watch { session } => {
                self.sessions.get(session).map(|s| s.uid)
            }
            Waiter::Job { uid, .. } => Some(*uid),
        }
    }

    fn notify_charged(&self, uid: u32, product: &str, grant: &Grant, out: &mut Vec<Action>) {
        if grant.tokens_charged > 0 {
            out.push(Action::Notify {
                uid: Some(uid),
                event: Event::Charged {
                    product: product.to_string(),
                    tokens: grant.tokens_charged,
                    balance: grant.balance,
                    window_end: grant.window.as_ref().map(|w| w.end),
                },
            });
        }
    }

    /// A session runs in `held`; a wrapper gets its answer.
    fn grant_waiter(&mut self, w: &Waiter, held: &HeldWindow, charged: u64, out: &mut Vec<Action>) {
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
                    source: held.source,
                    window_end: held.window.end,
                    tokens_charged: charged,
                    balance: self.balance,
                    offline: !self.online,
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
        if d.reason == ErrorCode::OutOfTokens {
            let uid = pending
                .waiters
                .iter()
                .find_map(|w| self.waiter_uid(w))
                .or_else(|| {
                    req.renews
                        .as_deref()
                        .and_then(|w| self.running_in(w).next().map(|s| s.uid))
                });
            out.push(Action::Notify {
                uid,
                event: Event::OutOfTokens {
                    product: req.product.clone(),
                },
            });
        }
        if let Some(old) = &req.renews {
            // Renewal refused: warn, then close after the renewal grace.
            let closes_at = self.clock.trusted_now()
                + chrono::Duration::seconds(self.policy.renewal_grace_secs as i64);
            let ids: Vec<(String, u32)> = self
                .running_in(old)
                .map(|s| (s.id.clone(), s.uid))
                .collect();
            for (id, uid) in ids {
                out.push(Action::Notify {
                    uid: Some(uid),
                    event: Event::RenewalFailed {
                        product: req.product.clone(),
                        reason: d.reason,
                        closes_at: self.clock.wall_at(closes_at),
                    },
                });
                self.schedule_close(&id, close_reason(d.reason), d.message.clone(), closes_at);
            }
            self.windows
                .remove(&(req.user.clone(), req.product.clone()));
        }
        self.refuse(pending, d.reason, d.message, out);
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
        for w in &pending.waiters {
            match w {
                Waiter::Job { request, .. } => out.push(Action::ReplyJob {
                    request: request.clone(),
                    result: Err(Refusal {
                        code,
                        message: message.clone(),
                    }),
                }),
                Waiter::Launch { request, session } => {
                    if let Some(s) = self.sessions.remove(session) {
                        out.push(Action::Notify {
                            uid: Some(s.uid),
                            event: Event::LaunchDenied {
                                product: product.clone(),
                                reason: code,
                                message: message.clone(),
                            },
                        });
                    }
                    out.push(Action::ReplyLaunch {
                        request: request.clone(),
                        result: Err(Refusal {
                            code,
                            message: message.clone(),
                        }),
                    });
                }
                Waiter::Watch { session } => {
                    let Some(uid) = self.sessions.get(session).map(|s| s.uid) else {
                        continue;
                    };
                    out.push(Action::Notify {
                        uid: Some(uid),
                        event: Event::LaunchDenied {
                            product: product.clone(),
                            reason: code,
                            message: message.clone(),
                        },
                    });
                    if self.config.enforce {
                        let now = self.clock.trusted_now();
                        self.schedule_close(session, close_reason(code), message.clone(), now);
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
        let product = &pending.request.product;
        let message = if pending.request.results.is_some() {
            format!("cannot reach the licence server to charge the '{product}' job ({error}): connect to the network and retry with the same job id")
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
