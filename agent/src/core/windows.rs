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

use flex_protocol::api::ClaimRequest;
use flex_protocol::Email;

use super::{
    Action, Core, HeldWindow, LaunchRequest, Origin, PendingClaim, Persist, ProcessInfo, Refusal,
    Session, Waiter,
};

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
    fn valid_window(&self, user: &Email, product: &str) -> Option<&HeldWindow> {
        let now = self.clock.trusted_now();
        self.windows
            .get(&(user.clone(), product.to_string()))
            .filter(|h| h.window.start <= now && now < h.window.end)
    }

    /// An outstanding launch or renewal claim for (user, product), if any: a
    /// launch joins it rather than opening a second window.
    fn launch_claim_for(&self, user: &Email, product: &str) -> Option<String> {
        self.claims
            .values()
            .find(|c| {
                &c.request.user == user
                    && c.request.product == product
                    && c.request.results.is_none()
            })
            .map(|c| c.request.claim_id.clone())
    }

    /// Journals and sends a new claim (or resends an outstanding one) for a waiter.
    pub(super) fn claim(
        &mut self,
        request: ClaimRequest,
        waiter: Option<Waiter>,
        out: &mut Vec<Action>,
    ) {
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

    /// A wrapper asks to launch: free inside a held window, otherwise claim. The
    /// session is held by the asking connection, which lets go of any session it
    /// held before.
    pub(super) fn launch(&mut self, req: LaunchRequest, out: &mut Vec<Action>) {
        let name = self.product_name(&req.product);
        let refused = |result: Refusal| Action::ReplyLaunch {
            request: req.request.clone(),
            result: Err(result.about(name.clone())),
        };
        if let Err(r) = self.wrapper_room(&req.account) {
            out.push(refused(r));
            return;
        }
        if let Some(p) = req.process {
            if let Err(r) = self.claim_run(p, &req.product, None, out) {
                out.push(refused(r));
                return;
            }
        }
        self.release_hold(req.conn, out);
        let session = Session {
            id: Self::new_session_id(),
            account: req.account.clone(),
            account_name: req.account_name.clone(),
            user: req.user.clone(),
            product: req.product.clone(),
            version: req.version.clone(),
            process: None,
            origin: Origin::Wrapper,
            holder: Some(req.conn),
            source: None,
            window_id: None,
            started_at: self.clock.trusted_now(),
            warned: Vec::new(),
            closing: None,
        };
        let request = req.request;
        let waiter = self.open_session(session, |session| Waiter::Launch { request, session });
        if let (Some(p), Waiter::Launch { session, .. }) = (req.process, &waiter) {
            self.set_process(session, p, out);
        }
        self.start_or_claim(&req.user, &req.product, req.version, waiter, out);
    }

    /// The watcher saw a product start. Every exec of a product's executable is
    /// a launch of that product, whoever started it: only a session of this very
    /// run (same process, same product) makes it nothing new. A product found
    /// inside another product's wrapper gets a session, a claim and enforcement
    /// of its own.
    pub(super) fn process_started(&mut self, p: ProcessInfo, out: &mut Vec<Action>) {
        if !self.same_run(p.process, &p.product, None).is_empty() {
            return;
        }
        let session = Session {
            id: Self::new_session_id(),
            account: p.account,
            account_name: p.account_name,
            user: p.user.clone(),
            product: p.product.clone(),
            version: p.version.clone(),
            process: None,
            origin: Origin::Watcher,
            holder: None,
            source: None,
            window_id: None,
            // The process may have started before the agent saw it (adoption).
            started_at: p.started_at.min(self.clock.trusted_now()),
            warned: Vec::new(),
            closing: None,
        };
        let waiter = self.open_session(session, |session| Waiter::Watch { session });
        if let Waiter::Watch { session } = &waiter {
            self.set_process(session, p.process, out);
        }
        self.start_or_claim(&p.user, &p.product, p.version, waiter, out);
    }

    fn start_or_claim(
        &mut self,
        user: &Email,
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
                user: user.clone(),
                product: product.to_string(),
                version,
                results: None,
                renews: None,
            },
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
                self.renewal_retry
                    .get(&h.window.id)
                    .is_none_or(|(at, _)| *at <= now)
            })
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

    /// Licensed sessions running in window `window_id` and not being closed,
    /// except by a failed renewal of that window, which a retry may still save.
    pub(super) fn running_in<'a>(
        &'a self,
        window_id: &'a str,
    ) -> impl Iterator<Item = &'a Session> {
        self.sessions.values().filter(move |s| {
            s.window_id.as_deref() == Some(window_id)
                && match &s.closing {
                    None => true,
                    Some(c) => c.kill_at.is_none() && c.renewal_of.as_deref() == Some(window_id),
                }
        })
    }
}
