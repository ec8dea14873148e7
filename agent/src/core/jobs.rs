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
//! What a client can make the agent keep is bounded: a job for a product the
//! rate sheet does not name is refused without a claim and leaves nothing
//! behind; each account keeps at most [`limits::MAX_STORED_JOBS_PER_ACCOUNT`]
//! job states (the oldest settled ones make room; forgetting one is safe, as its
//! claim id is derived, and the server answers it again); states are forgotten
//! after [`JOB_MEMORY`]. Answers find their job through an index by claim id,
//! never by scanning every job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use flex_protocol::api::ClaimRequest;
use flex_protocol::socket::ResultReply;
use flex_protocol::{ClaimId, ProductId};
use flex_protocol::{Email, ErrorCode};

use super::{Action, JobOutcome, JobState, Persist, Refusal};
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

type JobKey = (Email, ProductId, String);

#[derive(Debug, Default)]
pub(super) struct Jobs {
    device_id: String,
    states: BTreeMap<JobKey, JobState>,
    by_claim: BTreeMap<ClaimId, JobKey>,
}

impl Jobs {
    pub fn new(device_id: &str) -> Jobs {
        Jobs {
            device_id: device_id.to_string(),
            ..Jobs::default()
        }
    }

    pub fn restore(&mut self, job: JobState) {
        self.insert(job);
    }

    fn insert(&mut self, state: JobState) {
        let key = (state.user.clone(), state.product.clone(), state.job.clone());
        if let Some(old) = self.states.get(&key) {
            let old_claim = self.claim_id(old);
            self.by_claim.remove(&old_claim);
        }
        self.by_claim.insert(self.claim_id(&state), key.clone());
        self.states.insert(key, state);
    }

    fn remove(&mut self, key: &JobKey) {
        if let Some(old) = self.states.remove(key) {
            let claim = self.claim_id(&old);
            self.by_claim.remove(&claim);
        }
    }

    fn claim_id(&self, s: &JobState) -> ClaimId {
        job_claim_id(&self.device_id, &s.user, &s.product, &s.job, s.attempt)
    }

    /// Starts (or retries) job `job` of `user` on `product`: the claim to send,
    /// or why not. The caller checked the product and the pending-job cap.
    pub fn begin(
        &mut self,
        user: &Email,
        product: &ProductId,
        job: &str,
        count: u64,
        now: DateTime<Utc>,
        out: &mut Vec<Action>,
    ) -> Result<ClaimRequest, Refusal> {
        let key = (user.clone(), product.clone(), job.to_string());
        let state = match self.states.get(&key) {
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
            None => {
                self.make_room(user)?;
                JobState {
                    user: user.clone(),
                    product: product.clone(),
                    job: job.to_string(),
                    attempt: 0,
                    outcome: JobOutcome::Pending,
                    updated: now,
                }
            }
        };
        let claim_id = self.claim_id(&state);
        out.push(Action::Persist(Persist::Job(state.clone())));
        self.insert(state);
        Ok(ClaimRequest {
            claim_id,
            user: user.clone(),
            product: product.clone(),
            version: None,
            results: Some(count),
            renews: None,
        })
    }

    /// Keeps `user` within its job cap by forgetting its oldest settled job.
    fn make_room(&mut self, user: &Email) -> Result<(), Refusal> {
        let mine: Vec<(&JobKey, &JobState)> =
            self.states.iter().filter(|(k, _)| &k.0 == user).collect();
        if mine.len() < limits::MAX_STORED_JOBS_PER_ACCOUNT {
            return Ok(());
        }
        let oldest = mine
            .iter()
            .filter(|(_, s)| s.outcome != JobOutcome::Pending)
            .min_by_key(|(_, s)| s.updated)
            .map(|(k, _)| (*k).clone());
        match oldest {
            Some(k) => {
                self.remove(&k);
                Ok(())
            }
            None => Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} jobs of this account are waiting for the license server, the limit: \
                     retry when they are answered",
                    mine.len()
                ),
            )),
        }
    }

    /// The server answered a job's claim: charged (now, or before), or refused.
    /// Returns whether the job was already known as charged.
    pub fn answered(
        &mut self,
        req: &ClaimRequest,
        charged: bool,
        denial: Option<ErrorCode>,
        now: DateTime<Utc>,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(key) = self.by_claim.get(&req.claim_id).cloned() else {
            return false;
        };
        let Some(state) = self.states.get(&key) else {
            return false;
        };
        let already = state.outcome == JobOutcome::Charged;
        let outcome = match (charged, denial) {
            (true, _) => JobOutcome::Charged,
            (false, Some(code)) if !already && retryable(code) => JobOutcome::Refused,
            _ => state.outcome,
        };
        if outcome != state.outcome {
            let mut state = state.clone();
            state.outcome = outcome;
            state.updated = now;
            out.push(Action::Persist(Persist::Job(state.clone())));
            self.insert(state);
        }
        already
    }

    /// Forgets jobs older than [`JOB_MEMORY`] (the journal prunes its rows).
    pub fn forget_old(&mut self, now: DateTime<Utc>) {
        let cutoff = now - JOB_MEMORY;
        let old: Vec<JobKey> = self
            .states
            .iter()
            .filter(|(_, s)| s.outcome != JobOutcome::Pending && s.updated < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.remove(&k);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.states.len()
    }
}

pub(super) fn job_reply(
    req: &ClaimRequest,
    product_name: Option<String>,
    job: &str,
    tokens_charged: u64,
    balance: u64,
    already_charged: bool,
) -> ResultReply {
    ResultReply {
        product: req.product.clone(),
        product_name,
        job: job.to_string(),
        tokens_charged,
        balance,
        already_charged,
    }
}

/// The claim id of a job's attempt: the same (device, user, product, job,
/// attempt) is always the same claim, and the id fits the server's limits
/// whatever the job id looks like.
fn job_claim_id(
    device: &str,
    user: &Email,
    product: &ProductId,
    job: &str,
    attempt: u32,
) -> ClaimId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(device)
        .chain_update([0])
        .chain_update(user.as_str())
        .chain_update([0])
        .chain_update(product.as_str())
        .chain_update([0])
        .chain_update(job)
        .chain_update([0])
        .chain_update(attempt.to_be_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    ClaimId::parse(&format!("job-{hex}")).expect("a hex digest is a claim id")
}

impl super::Core {
    /// A per-result job: one claim per job and attempt.
    pub(super) fn job(&mut self, req: super::JobRequest, out: &mut Vec<Action>) {
        let name = self.product_name(&req.product);
        let refuse = |out: &mut Vec<Action>, r: Refusal| {
            out.push(Action::ReplyJob {
                request: req.request.clone(),
                result: Err(r.about(name.clone())),
            })
        };
        match self.products.get(&req.product) {
            Some(p) if p.charge.per_result_cost(req.count).is_none() => {
                let message = format!(
                    "{} is charged per day, not per result: launch it instead",
                    p.name
                );
                return refuse(out, Refusal::new(ErrorCode::InvalidRequest, message));
            }
            // Refused here, with nothing kept: a flood of jobs for products
            // that do not exist costs the agent (and the server) nothing.
            None if !self.products.is_empty() => {
                let message = format!(
                    "'{}' is not on the rate sheet: check the product id (flexctl status shows the agent's products)",
                    req.product
                );
                return refuse(out, Refusal::new(ErrorCode::UnknownProduct, message));
            }
            _ => {}
        }
        let pending = self
            .ledger
            .claims()
            .flat_map(|c| &c.jobs)
            .filter(|w| w.account == req.account)
            .count();
        if pending >= limits::MAX_PENDING_JOBS_PER_ACCOUNT {
            let message = format!(
                "{pending} jobs of this account are waiting for the license server, the limit: \
                 retry when they are answered"
            );
            return refuse(out, Refusal::new(ErrorCode::LimitExceeded, message));
        }
        let now = self.contact.now();
        let request = match self
            .jobs
            .begin(&req.user, &req.product, &req.job, req.count, now, out)
        {
            Ok(r) => r,
            Err(r) => return refuse(out, r),
        };
        let pending = self.ledger.send(request, now, false, out);
        pending.jobs.push(super::ledger::JobWaiter {
            request: req.request,
            account: req.account,
            job: req.job,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_ids_separate_products_and_attempts() {
        let u = Email::parse("ada@example.com").unwrap();
        let a = job_claim_id("d", &u, &"recap-photo".parse().unwrap(), "j1", 0);
        assert_eq!(
            a,
            job_claim_id("d", &u, &"recap-photo".parse().unwrap(), "j1", 0)
        );
        assert_ne!(a, job_claim_id("d", &u, &"other".parse().unwrap(), "j1", 0));
        assert_ne!(
            a,
            job_claim_id("d", &u, &"recap-photo".parse().unwrap(), "j1", 1)
        );
        assert_ne!(
            a,
            job_claim_id("e", &u, &"recap-photo".parse().unwrap(), "j1", 0)
        );
        assert!(a.as_str().starts_with("job-") && a.as_str().len() == 36);
    }

    #[test]
    fn max_stored_jobs_per_account_forgets_the_oldest_settled() {
        let u = Email::parse("ada@example.com").unwrap();
        let other = Email::parse("bob@example.com").unwrap();
        let t0 = chrono::DateTime::<Utc>::UNIX_EPOCH;
        let mut jobs = Jobs::new("d");
        let mut out = Vec::new();
        let first = jobs
            .begin(&u, &"p".parse().unwrap(), "j0", 1, t0, &mut out)
            .unwrap();
        jobs.answered(&first, true, None, t0, &mut out);
        for i in 1..limits::MAX_STORED_JOBS_PER_ACCOUNT {
            let at = t0 + chrono::Duration::seconds(i as i64);
            let req = jobs
                .begin(&u, &"p".parse().unwrap(), &format!("j{i}"), 1, at, &mut out)
                .unwrap();
            jobs.answered(&req, true, None, at, &mut out);
        }
        jobs.begin(&other, &"p".parse().unwrap(), "x", 1, t0, &mut out)
            .unwrap();
        assert_eq!(jobs.len(), limits::MAX_STORED_JOBS_PER_ACCOUNT + 1);
        // One more job of ada's: j0 (the oldest settled) makes room.
        jobs.begin(&u, &"p".parse().unwrap(), "new", 1, t0, &mut out)
            .unwrap();
        assert_eq!(jobs.len(), limits::MAX_STORED_JOBS_PER_ACCOUNT + 1);
        assert!(!jobs.by_claim.contains_key(&first.claim_id));
        assert_eq!(jobs.by_claim.len(), jobs.states.len());
    }
}
