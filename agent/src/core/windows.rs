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
use flex_protocol::ErrorCode;

use super::{
    Action, Core, HeldWindow, JobRequest, LaunchRequest, Origin, PendingClaim, Persist,
    ProcessInfo, Refusal, Session, Waiter,
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
            Some(job) => job_claim_id(&self.config.device_id, &req.user, job),
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
}

/// The claim id of a caller-named job: the same job retried is the same claim,
/// and the id fits the server's limits whatever the job id looks like.
fn job_claim_id(device: &str, user: &str, job: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(device)
        .chain_update([0])
        .chain_update(user)
        .chain_update([0])
        .chain_update(job)
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("job-{hex}")
}
