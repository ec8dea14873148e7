//! Claims: one claim per window however many launches wait on it, per-result
//! jobs, lease verification, crash safety around sending, and server notices.

use std::time::Duration;

use flex_protocol::api::{ClaimResponse, Grant, Notice, NoticeKind, Source, Window};
use flex_protocol::lease::{LeaseBody, LeaseSigner};
use flex_protocol::socket::Event;
use flex_protocol::ErrorCode;

use super::testkit::*;
use super::{Action, Input};

fn tuesday(h: u32, m: u32) -> chrono::DateTime<chrono::Utc> {
    monday(h, m) + chrono::Duration::days(1)
}

#[test]
fn launches_waiting_on_one_claim_share_one_window() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::DieBeforeSend;
    assert!(h.launch("alice", "autocad").is_none());
    assert!(h.launch("alice", "autocad").is_none());
    let sent = claims(&h.log);
    assert_eq!(sent.len(), 1, "the second launch joins the first claim");
    let request = sent[0].clone();
    let response = h.server.claim(&request, h.true_time);
    h.network = Network::Up;
    let actions = h.feed(Input::ClaimAnswered {
        claim_id: request.claim_id.clone(),
        response,
    });
    let mut charged: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::ReplyLaunch { result: Ok(r), .. } => Some(r.tokens_charged),
            _ => None,
        })
        .collect();
    charged.sort_unstable();
    assert_eq!(charged, vec![0, 7]);
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn per_result_jobs_are_claimed_per_job_and_retries_charge_once() {
    let mut h = Harness::new(monday(8, 0), 100);
    let a = h.job("alice", "recap-photo", 85, "job-1");
    let reply = a.iter().find_map(|a| match a {
        Action::ReplyJob { result, .. } => Some(result.clone()),
        _ => None,
    });
    let reply = reply.unwrap().unwrap();
    assert_eq!((reply.tokens_charged, reply.job.as_str()), (2, "job-1"));
    h.job("alice", "recap-photo", 85, "job-1");
    assert_eq!(h.server.total_charged(), 2, "same job id: one charge");
    h.job("alice", "recap-photo", 10, "job-2");
    assert_eq!(h.server.total_charged(), 3);
}

#[test]
fn a_lease_signed_by_an_unknown_key_is_refused() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::DieBeforeSend;
    assert!(h.launch("alice", "autocad").is_none());
    let claim_id = claims(&h.log).last().unwrap().claim_id.clone();
    let window = Window {
        id: "w-forged".parse().unwrap(),
        start: monday(8, 0),
        end: tuesday(8, 0),
    };
    let forger = LeaseSigner::new("k1", ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    let lease = forger.sign(&LeaseBody {
        window_id: window.id.clone(),
        device_id: DEVICE.into(),
        user: email_of("alice"),
        product: "autocad".parse().unwrap(),
        source: Source::Tokens,
        start: window.start,
        end: window.end,
        issued_at: window.start,
    });
    let actions = h.feed(Input::ClaimAnswered {
        claim_id,
        response: ClaimResponse::Granted(Grant {
            source: Source::Tokens,
            window: Some(window),
            tokens_charged: 0,
            balance: 100,
            lease: Some(lease),
        }),
    });
    assert!(actions.iter().any(|a| matches!(a,
        Action::ReplyLaunch { result: Err(r), .. } if r.code == ErrorCode::Internal)));
    h.network = Network::Up;
    assert_eq!(
        h.launch("alice", "autocad")
            .unwrap()
            .unwrap()
            .tokens_charged,
        7
    );
}

#[test]
fn kill_between_journal_write_and_send_charges_once() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::DieBeforeSend;
    assert!(h.launch("alice", "autocad").is_none());
    let id = claims(&h.log)[0].claim_id.clone();
    h.network = Network::Up;
    let actions = h.restart(Duration::from_secs(5));
    assert_eq!(
        claims(&actions)[0].claim_id,
        id,
        "resent with the journaled id"
    );
    assert_eq!(h.server.total_charged(), 7);
    assert_eq!(h.journal.load_state().unwrap().pending_claims, vec![]);
    assert_eq!(
        h.launch("alice", "autocad")
            .unwrap()
            .unwrap()
            .tokens_charged,
        0
    );
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn kill_after_answer_before_journal_update_charges_once() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::LoseAnswers;
    assert!(h.launch("alice", "autocad").is_none());
    assert_eq!(h.server.total_charged(), 7);
    h.network = Network::Up;
    h.restart(Duration::from_secs(5));
    assert_eq!(h.server.received.len(), 2);
    assert_eq!(h.server.received[0], h.server.received[1]);
    // The resent claim's answer gave the agent the window: the launch is free.
    let before = h.server.received.len();
    assert_eq!(
        h.launch("alice", "autocad")
            .unwrap()
            .unwrap()
            .tokens_charged,
        0
    );
    assert_eq!(h.server.received.len(), before);
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn low_balance_notices_reach_users_once() {
    let notice = |id| Notice {
        id,
        kind: NoticeKind::LowBalance,
        message: "balance below 20%".into(),
        created_at: monday(8, 0),
    };
    // The backlog at first contact is old news; later ones are told.
    let mut h = Harness::with_backlog(monday(8, 0), 100, vec![notice(1)]);
    assert!(!events(&h.log)
        .iter()
        .any(|e| matches!(e, Event::LowBalance { .. })));
    assert_eq!(h.core.notices_after(), Some(1));
    h.launch("alice", "autocad").unwrap().unwrap();
    let quiet = h.advance(Duration::from_secs(600));
    assert!(!events(&quiet)
        .iter()
        .any(|e| matches!(e, Event::LowBalance { .. })));
    h.server.notices = vec![notice(2)];
    let second = h.advance(Duration::from_secs(600));
    assert!(second.iter().any(|a| matches!(
        a,
        Action::Notify {
            account: None,
            event: Event::LowBalance { balance: 93 }
        }
    )));
    h.restart(Duration::ZERO);
    assert_eq!(h.core.notices_after(), Some(2), "journaled");
}

#[test]
fn the_first_notice_of_a_tenant_without_backlog_reaches_users() {
    // Regression: with no notice at all at the first contact, nothing was marked
    // as seen, so the tenant's first low_balance notice was taken for backlog.
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    h.advance(Duration::from_secs(600));
    assert_eq!(h.core.notices_after(), Some(0), "empty backlog marked");
    h.server.notices = vec![Notice {
        id: 1,
        kind: NoticeKind::LowBalance,
        message: "balance below 20%".into(),
        created_at: monday(8, 10),
    }];
    let next = h.advance(Duration::from_secs(600));
    assert!(
        events(&next)
            .iter()
            .any(|e| matches!(e, Event::LowBalance { balance: 93 })),
        "{next:?}"
    );
    h.restart(Duration::ZERO);
    assert_eq!(h.core.notices_after(), Some(1), "journaled");
}

#[test]
fn a_window_forged_into_the_journal_is_not_honoured_after_restart() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    // Copy Alice's genuine lease onto Bob: the signature no longer matches the
    // window it is attached to.
    let mut state = h.journal.load_state().unwrap();
    let mut forged = state.windows.remove(0);
    forged.user = email_of("bob");
    h.journal
        .apply_persist([&super::Persist::Window(forged)])
        .unwrap();
    h.network = Network::Down;
    h.restart(Duration::from_secs(1));
    let refused = h.launch("bob", "autocad").unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::Offline);
    assert!(h.launch("alice", "autocad").unwrap().is_ok());
}
