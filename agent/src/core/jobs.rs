//! Per-result jobs (R6): one charge per job, however often it is retried.
//!
//! A job is named by its caller (`flexctl result --job ID`; `flexctl` makes one
//! up and prints it when the caller gave none). Its claim id derives from the
//! device, user, product, job id and an *attempt* number, so:
//!
//! * a retry after a lost answer reuses the claim id, and the server answers it
//!   with the original result: charged once;
//! * a retry of a charged job reuses the claim id too and is told it was
//!   already charged;
//! * a refused job (out of tokens, not entitled) moves to the next attempt, so
//!   once the cause is fixed a retry is a new claim instead of the cached
//!   refusal;
//! * the same job id on another product is another job.
//!
//! Job states are journaled and forgotten after [`JOB_MEMORY`].

use flex_protocol::api::ClaimRequest;
use flex_protocol::socket::ResultReply;
use flex_protocol::{Email, ErrorCode};

use super::{Action, Core, JobOutcome, JobRequest, JobState, Persist, Refusal, Waiter};
use crate::limits;

/// How long a job's state is kept: retries come within minutes, so a quarter
/// is generous; a retry after that is charged if it was never charged before.
pub const JOB_MEMORY: chrono::Duration = chrono::Duration::days(90);

/// Denials that leave nothing charged and can change once an admin acts.
fn retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::OutOfTokens
            | ErrorCode::NotEntitled
            | ErrorCode::UnknownUser
            | ErrorCode::UnknownProduct
    )
}

impl Core {
    /// A per-result job: one claim per job and attempt.
    pub(super) fn job(&mut self, req: JobRequest, out: &mut Vec<Action>) {
        let name = self.product_name(&req.product);
        let refuse = |out: &mut Vec<Action>, r: Refusal| {
            out.push(Action::ReplyJob {
                request: req.request.clone(),
                result: Err(r.about(name.clone())),
            })
        };
        if let Some(p) = self.products.get(&req.product) {
            if p.charge.per_result_cost(req.count).is_none() {
                let message = format!(
                    "{} is charged per day, not per result: launch it instead",
                    p.name
                );
                return refuse(out, Refusal::new(ErrorCode::InvalidRequest, message));
            }
        }
        let pending = self
            .claims
            .values()
            .flat_map(|c| &c.waiters)
            .filter(|w| matches!(w, Waiter::Job { account, .. } if *account == req.account))
            .count();
        if pending >= limits::MAX_PENDING_JOBS_PER_ACCOUNT {
            let message = format!(
                "{pending} jobs of this account are waiting for the license server, the limit: \
                 retry when they are answered"
            );
            return refuse(out, Refusal::new(ErrorCode::LimitExceeded, message));
        }
        let key = (req.user.clone(), req.product.clone(), req.job.clone());
        let now = self.clock.trusted_now();
        let state = match self.jobs.get(&key) {
            Some(s) if s.outcome == JobOutcome::Refused => JobState {
                attempt: s.attempt + 1,
                outcome: JobOutcome::Pending,
                updated: now,
                ..s.clone()
            },
            Some(s) => JobState {
                updated: now,
                ..s.clone()
            },
            None => JobState {
                user: req.user.clone(),
                product: req.product.clone(),
                job: req.job.clone(),
                attempt: 0,
                outcome: JobOutcome::Pending,
                updated: now,
            },
        };
        let claim_id = job_claim_id(
            &self.config.device_id,
            &req.user,
            &req.product,
            &req.job,
            state.attempt,
        );
        out.push(Action::Persist(Persist::Job(state.clone())));
        self.jobs.insert(key, state);
        let request = ClaimRequest {
            claim_id,
            user: req.user,
            product: req.product,
            version: None,
            results: Some(req.count),
            renews: None,
        };
        let waiter = Waiter::Job {
            request: req.request,
            account: req.account,
            job: req.job,
        };
        self.claim(request, Some(waiter), out);
    }

    /// The server charged a job (now, or before: `already` when the job was
    /// known as charged).
    pub(super) fn job_answered(
        &mut self,
        req: &ClaimRequest,
        charged: Option<(u64, u64)>,
        denial: Option<ErrorCode>,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(state) = self.job_of(req) else {
            return false;
        };
        let already = state.outcome == JobOutcome::Charged;
        let outcome = match (charged, denial) {
            (Some(_), _) => JobOutcome::Charged,
            (None, Some(code)) if !already && retryable(code) => JobOutcome::Refused,
            _ => state.outcome,
        };
        let mut state = state.clone();
        if outcome != state.outcome {
            state.outcome = outcome;
            state.updated = self.clock.trusted_now();
            out.push(Action::Persist(Persist::Job(state.clone())));
            self.jobs.insert(
                (state.user.clone(), state.product.clone(), state.job.clone()),
                state,
            );
        }
        already
    }

    fn job_of(&self, req: &ClaimRequest) -> Option<&JobState> {
        self.jobs.values().find(|s| {
            s.user == req.user
                && s.product == req.product
                && job_claim_id(
                    &self.config.device_id,
                    &s.user,
                    &s.product,
                    &s.job,
                    s.attempt,
                ) == req.claim_id
        })
    }

    /// Forgets jobs older than [`JOB_MEMORY`] (the journal prunes its rows).
    pub(super) fn forget_old_jobs(&mut self) {
        let cutoff = self.clock.trusted_now() - JOB_MEMORY;
        self.jobs
            .retain(|_, s| s.outcome == JobOutcome::Pending || s.updated >= cutoff);
    }

    pub(super) fn job_reply(
        &self,
        req: &ClaimRequest,
        job: &str,
        tokens_charged: u64,
        balance: u64,
        already_charged: bool,
    ) -> ResultReply {
        ResultReply {
            product: req.product.clone(),
            product_name: self.product_name(&req.product),
            job: job.to_string(),
            tokens_charged,
            balance,
            already_charged,
        }
    }
}

/// The claim id of a job's attempt: the same (device, user, product, job,
/// attempt) is always the same claim, and the id fits the server's limits
/// whatever the job id looks like.
fn job_claim_id(device: &str, user: &Email, product: &str, job: &str, attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(device)
        .chain_update([0])
        .chain_update(user.as_str())
        .chain_update([0])
        .chain_update(product)
        .chain_update([0])
        .chain_update(job)
        .chain_update([0])
        .chain_update(attempt.to_be_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("job-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_ids_separate_products_and_attempts() {
        let u = Email::parse("ada@example.com").unwrap();
        let a = job_claim_id("d", &u, "recap-photo", "j1", 0);
        assert_eq!(a, job_claim_id("d", &u, "recap-photo", "j1", 0));
        assert_ne!(a, job_claim_id("d", &u, "other", "j1", 0));
        assert_ne!(a, job_claim_id("d", &u, "recap-photo", "j1", 1));
        assert_ne!(a, job_claim_id("e", &u, "recap-photo", "j1", 0));
        assert!(a.starts_with("job-") && a.len() == 36);
    }
}
