//! Charge windows, renewals, enforcement, jobs and claim crash-safety, under a
//! driven clock against the fake server.

use std::time::Duration;

use flex_protocol::api::{ClaimResponse, Grant, Source, Window};
use flex_protocol::lease::{LeaseBody, LeaseSigner};
use flex_protocol::socket::{CloseReason, Event};
use flex_protocol::ErrorCode;

use super::testkit::*;
use super::{Action, Input};

fn tuesday(h: u32, m: u32) -> chrono::DateTime<chrono::Utc> {
    monday(h, m) + chrono::Duration::days(1)
}

#[test]
fn monday_tuesday_costs_14_tokens() {
    let mut h = Harness::new(monday(7, 0), 100);
    h.advance_to(monday(8, 0));
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!((r.tokens_charged, r.source), (7, Source::Tokens));
    assert_eq!(r.window_end, tuesday(8, 0));
    let pid = h.pid_of("alice", "autocad").unwrap();
    h.advance_to(monday(17, 0));
    h.exit(pid);

    h.advance_to(tuesday(7, 0));
    let before = h.server.received.len();
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(r.tokens_charged, 0, "Monday's window covers Tuesday 07:00");
    assert_eq!(
        h.server.received.len(),
        before,
        "no claim inside the window"
    );
    let pid = h.pid_of("alice", "autocad").unwrap();

    let renewal = h.advance_to(tuesday(8, 0));
    let sent = claims(&renewal);
    assert_eq!(sent.len(), 1, "renewal exactly at window end");
    assert!(sent[0].renews.is_some());
    assert!(events(&renewal)
        .iter()
        .any(|e| matches!(e, Event::Charged { tokens: 7, .. })));
    h.advance_to(tuesday(17, 0));
    h.exit(pid);
    h.advance_to(tuesday(17, 0) + chrono::Duration::days(2));

    assert_eq!(h.server.total_charged(), 14);
    assert_eq!(h.server.balance, 86);
}

#[test]
fn reopen_inside_window_is_free_and_sends_no_claim() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    h.advance(hours(1));
    h.exit(pid);
    h.advance(hours(3));
    let request = "again".to_string();
    let actions = h.feed(Input::Launch(super::LaunchRequest {
        request: request.clone(),
        uid: uid_of("alice"),
        account: "alice".into(),
        user: email_of("alice"),
        product: "autocad".into(),
        version: Some("2025".into()),
        pid: None,
    }));
    assert!(claims(&actions).is_empty());
    assert!(actions.iter().any(|a| matches!(a,
        Action::ReplyLaunch { request: r, result: Ok(reply) } if *r == request && reply.tokens_charged == 0)));
    // Another user is another window.
    assert_eq!(
        h.launch("bob", "autocad").unwrap().unwrap().tokens_charged,
        7
    );
    assert_eq!(h.server.total_charged(), 14);
}

#[test]
fn renewal_only_while_running() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    h.advance_to(monday(12, 0));
    h.exit(pid);
    let after = h.advance_to(tuesday(12, 0));
    assert!(
        claims(&after).is_empty(),
        "closed before window end: no renewal"
    );
    assert_eq!(h.server.total_charged(), 7);
    // A later launch opens a fresh window at its own time.
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(r.tokens_charged, 7);
    assert_eq!(r.window_end, tuesday(12, 0) + chrono::Duration::days(1));
}

#[test]
fn renewal_refused_for_tokens_warns_then_closes_after_grace() {
    let mut h = Harness::new(monday(8, 0), 10);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    let at_end = h.advance_to(tuesday(8, 0));
    let ev = events(&at_end);
    assert!(ev.iter().any(|e| matches!(e, Event::OutOfTokens { .. })));
    let closes_at = ev
        .iter()
        .find_map(|e| match e {
            Event::RenewalFailed {
                reason: ErrorCode::OutOfTokens,
                closes_at,
                ..
            } => Some(*closes_at),
            _ => None,
        })
        .expect("renewal failure announced");
    assert_eq!(closes_at, tuesday(8, 30));
    assert!(closes(&at_end).is_empty(), "not closed before the grace");
    let almost = h.advance_to(tuesday(8, 30) - chrono::Duration::seconds(1));
    assert!(closes(&almost).is_empty());
    let closed = h.advance(Duration::from_secs(1));
    assert_eq!(closes(&closed), vec![(Some(pid), true)]);
    assert!(events(&closed).iter().any(|e| matches!(
        e,
        Event::ProductClosed {
            reason: CloseReason::OutOfTokens,
            ..
        }
    )));
    let killed = h.advance(Duration::from_secs(30));
    assert_eq!(closes(&killed), vec![(Some(pid), false)]);
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn watched_unlicensed_process_is_closed_and_user_told() {
    let mut h = Harness::new(monday(8, 0), 3);
    let (pid, actions) = h.start_process("bob", "autocad");
    assert_eq!(closes(&actions), vec![(Some(pid), true)]);
    let ev = events(&actions);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::LaunchDenied {
            reason: ErrorCode::OutOfTokens,
            ..
        }
    )));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::ProductClosed {
            reason: CloseReason::OutOfTokens,
            ..
        }
    )));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify {
            uid: Some(1002),
            ..
        }
    )));
    let later = h.advance(Duration::from_secs(30));
    assert_eq!(
        closes(&later),
        vec![(Some(pid), false)],
        "forced after close_grace"
    );
    h.exit(pid);
    assert_eq!(h.server.total_charged(), 0);
}

#[test]
fn not_enforcing_only_tells_the_user() {
    let mut h = Harness::new(monday(8, 0), 3);
    h.enforce = false;
    h.restart(Duration::ZERO);
    let (_, actions) = h.start_process("bob", "autocad");
    assert!(closes(&actions).is_empty());
    assert!(events(&actions)
        .iter()
        .any(|e| matches!(e, Event::LaunchDenied { .. })));
}

#[test]
fn watched_licensed_process_is_charged_once_and_wrapper_duplicate_dropped() {
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, actions) = h.start_process("alice", "autocad");
    assert_eq!(claims(&actions).len(), 1);
    assert!(closes(&actions).is_empty());
    // The same pid seen again (adoption after a rescan) changes nothing.
    let again = h.feed(Input::ProcessStarted(super::ProcessInfo {
        pid,
        uid: 1001,
        account: "alice".into(),
        user: email_of("alice"),
        product: "autocad".into(),
        version: None,
        started_at: h.now().wall,
    }));
    assert!(claims(&again).is_empty());
    assert_eq!(h.core.status().sessions.len(), 1);
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn subscription_windows_cost_nothing() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.server
        .subscriptions
        .insert((email_of("alice"), "revit".into()));
    let r = h.launch("alice", "revit").unwrap().unwrap();
    assert_eq!((r.source, r.tokens_charged), (Source::Subscription, 0));
    assert_eq!(r.window_end, tuesday(8, 0), "24 h window like tokens");
    assert_eq!(
        h.launch("alice", "autocad")
            .unwrap()
            .unwrap()
            .tokens_charged,
        7
    );
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
fn offline_launch_is_free_inside_a_held_window_and_denied_otherwise() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    h.exit(pid);
    h.network = Network::Down;
    h.advance(hours(2));
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert!(r.offline);
    assert_eq!(r.tokens_charged, 0);
    let refused = h.launch("alice", "revit").unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::Offline);
    assert!(
        refused.message.contains("connect to the network"),
        "{}",
        refused.message
    );
    // The refused launch is not charged when the network comes back.
    h.network = Network::Up;
    h.advance(hours(1));
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn a_lease_signed_by_an_unknown_key_is_refused() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::DieBeforeSend;
    assert!(h.launch("alice", "autocad").is_none());
    let claim_id = claims(&h.log).last().unwrap().claim_id.clone();
    let window = Window {
        id: "w-forged".into(),
        start: monday(8, 0),
        end: tuesday(8, 0),
    };
    let forger = LeaseSigner::new("k1", ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    let lease = forger.sign(&LeaseBody {
        window_id: window.id.clone(),
        device_id: DEVICE.into(),
        user: email_of("alice"),
        product: "autocad".into(),
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
fn restart_inside_window_honours_it_without_network() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    h.network = Network::Down;
    h.restart(hours(2));
    assert_eq!(
        h.core.status().sessions.len(),
        1,
        "running session restored"
    );
    let r = h.launch("bob", "autocad").unwrap().unwrap_err();
    assert_eq!(r.code, ErrorCode::Offline);
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(r.tokens_charged, 0);
    assert!(r.offline);
}
