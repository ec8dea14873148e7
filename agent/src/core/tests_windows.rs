//! Charge windows, renewals, enforcement, jobs and claim crash-safety, under a
//! driven clock against the fake server.

use std::time::Duration;

use flex_protocol::api::Source;
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
        conn: 77,
        account: uid_of("alice"),
        account_name: "alice".into(),
        user: email_of("alice"),
        product: "autocad".parse().unwrap(),
        version: Some("2025".into()),
        process: None,
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
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::ProductClosing {
            reason: CloseReason::OutOfTokens,
            deadline,
            ..
        } if *deadline == tuesday(8, 30)
    )));
    assert!(closes(&at_end).is_empty(), "not closed before the grace");
    let almost = h.advance_to(tuesday(8, 30) - chrono::Duration::seconds(1));
    assert!(closes(&almost).is_empty());
    let closed = h.advance(Duration::from_secs(1));
    assert_eq!(closes(&closed), vec![(Some(pid), true)]);
    let killed = h.advance(Duration::from_secs(30));
    assert_eq!(closes(&killed), vec![(Some(pid), false)]);
    let gone = h.exit(pid);
    assert!(events(&gone).iter().any(|e| matches!(
        e,
        Event::ProductClosed {
            reason: CloseReason::OutOfTokens,
            ..
        }
    )));
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
    // Told once, as not started: no "closing" or "closed" on top of it.
    assert!(!ev.iter().any(|e| matches!(
        e,
        Event::ProductClosed { .. } | Event::ProductClosing { .. }
    )));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Notify {
            account: Some(a),
            ..
        } if *a == uid_of("bob")
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
    let again = h.detect("alice", "autocad", process(pid));
    assert!(claims(&again).is_empty());
    assert_eq!(h.core.status(None).sessions.len(), 1);
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn subscription_windows_cost_nothing() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.server
        .subscriptions
        .insert((email_of("alice").to_string(), "revit".into()));
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
fn offline_launch_is_free_inside_a_held_window_and_denied_otherwise() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    // Used past the short-use grace: the window is kept.
    h.advance(Duration::from_secs(600));
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
fn restart_inside_window_honours_it_without_network() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    h.network = Network::Down;
    h.restart(hours(2));
    assert_eq!(
        h.core.status(None).sessions.len(),
        1,
        "running session restored"
    );
    let r = h.launch("bob", "autocad").unwrap().unwrap_err();
    assert_eq!(r.code, ErrorCode::Offline);
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(r.tokens_charged, 0);
    assert!(r.offline);
}

/// Events, grants, refusals and the status name products by the rate sheet's
/// display name, beside the id; before the agent has a rate sheet they carry
/// the id only.
#[test]
fn products_are_named_as_the_rate_sheet_names_them() {
    use flex_protocol::api::{ChargeModel, Executables, Product};
    let mut h = Harness::new(monday(8, 0), 14);
    let unnamed = h.launch("bob", "autocad").unwrap().unwrap();
    assert_eq!(unnamed.product_name, None, "no rate sheet yet");

    let sheet = |id: &str, name: &str| Product {
        id: id.parse().unwrap(),
        name: name.into(),
        charge: ChargeModel::Daily { tokens: 7 },
        executables: Executables::default(),
        sample: false,
    };
    h.feed(Input::RateSheet(vec![sheet("autocad", "AutoCAD")]));
    let granted = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(granted.product, "autocad");
    assert_eq!(granted.product_name.as_deref(), Some("AutoCAD"));
    let status = h.core.status(None);
    assert!(status
        .sessions
        .iter()
        .all(|s| s.product_name.as_deref() == Some("AutoCAD")));
    assert!(status
        .windows
        .iter()
        .all(|w| w.product_name.as_deref() == Some("AutoCAD")));

    // The balance (14 - 7 - 7 = 0) cannot pay carol's window: the refusal and
    // the events name AutoCAD too.
    let conn = 77;
    let refused = h.launch_on(conn, "carol", "autocad", None).unwrap();
    let refusal = refused.unwrap_err();
    assert_eq!(refusal.code, ErrorCode::OutOfTokens);
    assert_eq!(refusal.product_name.as_deref(), Some("AutoCAD"));
}

#[test]
fn topping_up_during_the_renewal_grace_rescues_the_product() {
    // Issue 15 §4: the admin bought tokens during Revit's renewal grace (the
    // agent showed the new balance), and Revit was still closed with "the
    // token balance does not cover Revit".
    let mut h = Harness::new(monday(8, 0), 10);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    let at_end = h.advance_to(tuesday(8, 0));
    assert!(events(&at_end)
        .iter()
        .any(|e| matches!(e, Event::RenewalFailed { .. })));
    h.server.balance += 100;
    // The next heartbeat brings the new balance: the renewal is tried at once.
    let rescued = h.advance_to(tuesday(8, 10));
    assert!(events(&rescued)
        .iter()
        .any(|e| matches!(e, Event::Charged { tokens: 7, .. })));
    let after_grace = h.advance_to(tuesday(9, 0));
    assert!(closes(&after_grace).is_empty(), "{after_grace:?}");
    assert_eq!(h.pid_of("alice", "autocad"), Some(pid));
    assert_eq!(h.server.total_charged(), 14);
}

#[test]
fn a_renewal_is_announced_ahead_with_its_price() {
    // Issue 15 §4: a product left open was charged again at window end with
    // the same pop-up as a first launch, with no warning.
    let mut h = Harness::new(monday(8, 0), 100);
    let products = h.server.products();
    h.feed(super::Input::RateSheet(products));
    h.launch("alice", "autocad").unwrap().unwrap();
    let before = h.advance_to(tuesday(7, 45) - chrono::Duration::seconds(1));
    assert!(!events(&before)
        .iter()
        .any(|e| matches!(e, Event::RenewalNotice { .. })));
    let notice = h.advance(Duration::from_secs(1));
    let told: Vec<_> = events(&notice)
        .into_iter()
        .filter_map(|e| match e {
            Event::RenewalNotice { at, tokens, .. } => Some((*at, *tokens)),
            _ => None,
        })
        .collect();
    assert_eq!(
        told,
        vec![(tuesday(8, 0), 7)],
        "once, with the time and price"
    );
    let renewed = h.advance_to(tuesday(8, 0));
    assert!(events(&renewed).iter().any(|e| matches!(
        e,
        Event::Charged {
            tokens: 7,
            renewal: true,
            ..
        }
    )));
    assert!(!events(&renewed)
        .iter()
        .any(|e| matches!(e, Event::RenewalNotice { .. })));
}
