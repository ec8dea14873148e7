//! Group commit for claims.
//!
//! Every claim must be on disk before it is answered, and with
//! `synchronous=FULL` each commit costs an fsync. Under load most of a claim's
//! time would be spent waiting for other claims' fsyncs. The batcher's thread
//! takes every claim waiting at that moment, runs them in order in one
//! transaction ([`Store::claim_batch`]: one savepoint each) and commits once, so
//! an fsync is shared by the whole batch while each claim still sees all earlier
//! ones exactly as if they had committed separately. An idle server runs batches of
//! one, so a lone claim waits for nothing.
//!
//! On PostgreSQL the same thread makes each replica one writer of claims:
//! its claims never conflict with each other, only with another replica's,
//! and a batch that lost such a conflict runs again whole.

use std::sync::Arc;

use flex_protocol::api::ClaimRequest;
use tokio::sync::{mpsc, oneshot};

use super::{ClaimOutcome, Result, Store, StoreError};

/// Most claims answered by one commit; bounds a batch's latency.
const MAX_BATCH: usize = 256;
/// Claims queued before callers wait (backpressure instead of unbounded memory).
const QUEUE: usize = 4096;

struct Job {
    device_id: String,
    request: ClaimRequest,
    reply: oneshot::Sender<Result<ClaimOutcome>>,
}

/// Hands claims to the writer thread. Cheap to clone; the thread ends when the
/// last clone is dropped.
#[derive(Clone)]
pub struct ClaimBatcher {
    jobs: mpsc::Sender<Job>,
}

impl ClaimBatcher {
    pub fn start(store: Arc<Store>) -> ClaimBatcher {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("claim-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    write_batch(&store, jobs);
                }
            })
            .expect("spawn the claim writer thread");
        ClaimBatcher { jobs: tx }
    }

    /// Answers one claim, durably, sharing the commit with concurrent claims.
    pub async fn claim(&self, device_id: String, request: ClaimRequest) -> Result<ClaimOutcome> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            device_id,
            request,
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> StoreError {
    StoreError::Commit("the claim writer stopped; retry with the same claim id".into())
}

fn write_batch(store: &Store, jobs: Vec<Job>) {
    let (claims, replies): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|j| ((j.device_id, j.request), j.reply))
        .unzip();
    // A panic must not take the writer down with it: fail this batch (its
    // transaction was rolled back when the panic unwound) and go on.
    let answers =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.claim_batch(&claims)))
            .unwrap_or_else(|_| {
                tracing::error!("a claim batch panicked; its claims were not written");
                claims
                    .iter()
                    .map(|_| {
                        Err(StoreError::Commit(
                            "internal error; nothing was written".into(),
                        ))
                    })
                    .collect()
            });
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TestClock;
    use crate::config::PolicyConfig;
    use crate::rates::RateSheet;
    use crate::store::testing::{backends, TestBackend};
    use flex_protocol::api::{ClaimResponse, NewUser};

    fn store(backend: &TestBackend) -> Arc<Store> {
        let clock = Arc::new(TestClock::new(
            chrono::DateTime::parse_from_rfc3339("2026-11-02T08:00:00Z")
                .unwrap()
                .into(),
        ));
        let s = backend.open(clock, PolicyConfig::default(), RateSheet::sample());
        s.buy_tokens(100).unwrap();
        for email in ["ada@example.com", "bob@example.com"] {
            let email = flex_protocol::Email::parse(email).unwrap();
            s.add_user(NewUser {
                email: email.clone(),
                first_name: "T".into(),
                last_name: "U".into(),
            })
            .unwrap();
            s.set_flex(&email, true).unwrap();
        }
        Arc::new(s)
    }

    fn req(id: &str, user: &str, product: &str) -> (String, ClaimRequest) {
        (
            "dev-1".into(),
            ClaimRequest {
                claim_id: id.parse().unwrap(),
                user: flex_protocol::Email::parse(user).unwrap(),
                product: product.parse().unwrap(),
                version: None,
                results: None,
                renews: None,
            },
        )
    }

    fn charged(o: &Result<ClaimOutcome>) -> u64 {
        match serde_json::from_str(&o.as_ref().unwrap().body).unwrap() {
            ClaimResponse::Granted(g) => g.tokens_charged,
            ClaimResponse::Denied(d) => panic!("denied: {d:?}"),
        }
    }

    #[test]
    fn job_flood_for_a_product_not_on_the_sheet_is_kept_nowhere() {
        for backend in backends() {
            job_flood_is_kept_nowhere_on(&backend);
        }
    }

    fn job_flood_is_kept_nowhere_on(backend: &TestBackend) {
        // Issue 14, defect 6: every refused claim for a product that does not
        // exist was stored for ever (the server grew 7.8 MB in 12,000 claims).
        let s = store(backend);
        let rows = |s: &Store| -> i64 {
            s.read(|c| {
                c.query_one(
                    "SELECT count(*) FROM claims",
                    crate::store::db::params![],
                    |r| r.get(0),
                )
            })
            .unwrap()
        };
        let before = rows(&s);
        for i in 0..100 {
            let (dev, mut r) = req(&format!("flood-{i}"), "ada@example.com", "no-such-product");
            r.results = Some(5);
            let out = s.claim(&dev, &r).unwrap();
            let answer: ClaimResponse = serde_json::from_str(&out.body).unwrap();
            assert!(
                matches!(answer, ClaimResponse::Denied(d) if d.reason == flex_protocol::ErrorCode::UnknownProduct)
            );
        }
        assert_eq!(rows(&s), before);
    }

    #[test]
    fn a_batch_behaves_like_claims_committed_one_by_one() {
        for backend in backends() {
            a_batch_behaves_like_claims_committed_one_by_one_on(&backend);
        }
    }

    fn a_batch_behaves_like_claims_committed_one_by_one_on(backend: &TestBackend) {
        let s = store(backend);
        let mut conflicting = req("c1", "ada@example.com", "autocad");
        conflicting.1.product = "revit".parse().unwrap();
        let answers = s.claim_batch(&[
            req("c1", "ada@example.com", "autocad"),
            // Same user+product inside the batch: the window the first opened.
            req("c2", "ada@example.com", "autocad"),
            // Same id, other body: a conflict that writes nothing.
            conflicting,
            // Repeated id and body: the first answer again.
            req("c1", "ada@example.com", "autocad"),
            req("c3", "bob@example.com", "autocad"),
        ]);
        assert_eq!(charged(&answers[0]), 7);
        assert_eq!(charged(&answers[1]), 0);
        assert!(matches!(answers[2], Err(StoreError::Conflict(_))));
        assert_eq!(answers[3].as_ref().unwrap(), answers[0].as_ref().unwrap());
        assert_eq!(charged(&answers[4]), 7);
        assert_eq!(s.balance().unwrap().balance, 86);
        // Only the two windows were charged.
        let rows: i64 = s
            .read(|c| {
                c.query_one(
                    "SELECT COUNT(*) FROM charges",
                    super::super::db::params![],
                    |r| r.get::<i64>(0),
                )
            })
            .unwrap();
        assert_eq!(rows, 2);
    }

    #[test]
    fn concurrent_claims_through_the_batcher_never_overdraw() {
        for backend in backends() {
            concurrent_claims_never_overdraw_on(&backend);
        }
    }

    fn concurrent_claims_never_overdraw_on(backend: &TestBackend) {
        let s = store(backend);
        // 100 tokens, 40 users' first AutoCAD launches at 7 each: 14 fit.
        for i in 0..40 {
            let email = flex_protocol::Email::parse(&format!("u{i}@example.com")).unwrap();
            s.add_user(NewUser {
                email: email.clone(),
                first_name: "T".into(),
                last_name: "U".into(),
            })
            .unwrap();
            s.set_flex(&email, true).unwrap();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let granted = rt.block_on(async {
            let batcher = ClaimBatcher::start(s.clone());
            let mut tasks = Vec::new();
            for i in 0..40 {
                let b = batcher.clone();
                let (dev, r) = req(&format!("k{i}"), &format!("u{i}@example.com"), "autocad");
                tasks.push(tokio::spawn(async move { b.claim(dev, r).await }));
            }
            let mut granted = 0;
            for t in tasks {
                let o = t.await.unwrap().unwrap();
                if let ClaimResponse::Granted(g) = serde_json::from_str(&o.body).unwrap() {
                    assert_eq!(g.tokens_charged, 7);
                    granted += 1;
                }
            }
            granted
        });
        assert_eq!(granted, 14, "{}", backend.name());
        assert_eq!(s.balance().unwrap().balance, 2);
    }
}
