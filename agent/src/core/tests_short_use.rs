//! Short runs are free (R13, issue 15 §1): a window in which no process of its
//! user and product runs at its start plus `short_use_grace` is refunded, at
//! most once, through outages and restarts.

use std::time::Duration;

use flex_protocol::socket::Event;

use super::testkit::*;
use super::Action;

fn refunded(actions: &[Action]) -> Vec<u64> {
    events(actions)
        .iter()
        .filter_map(|e| match e {
            Event::Refunded { tokens, .. } => Some(*tokens),
            _ => None,
        })
        .collect()
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

#[test]
fn closed_at_4_59_and_reopened_at_5_01_is_one_charge() {
    // DESIGN.md R13's example.
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    h.advance(Duration::from_secs(4 * 60 + 59));
    h.exit(pid);
    let at_grace = h.advance(Duration::from_secs(1));
    assert_eq!(refunded(&at_grace), vec![7], "{at_grace:?}");
    h.advance(minutes(1));
    let (_, reopened) = h.start_process("alice", "autocad");
    assert_eq!(claims(&reopened).len(), 1, "a new window is claimed");
    assert_eq!(h.server.total_charged() - h.server.total_refunded(), 7);
    assert_eq!(h.server.balance, 93);
}

#[test]
fn reopening_within_the_grace_keeps_the_window() {
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    h.advance(minutes(2));
    h.exit(pid);
    h.advance(minutes(1));
    let (_, again) = h.start_process("alice", "autocad");
    assert!(claims(&again).is_empty(), "free inside the window");
    let later = h.advance(minutes(10));
    assert!(refunded(&later).is_empty());
    assert!(h.server.refund_requests.is_empty());
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn a_renewal_the_product_leaves_within_the_grace_is_refunded() {
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    h.advance_to(monday(8, 0) + chrono::Duration::days(1));
    assert_eq!(h.server.total_charged(), 14, "renewed");
    h.advance(minutes(3));
    h.exit(pid);
    let at_grace = h.advance(minutes(2));
    assert_eq!(refunded(&at_grace), vec![7]);
    assert_eq!(h.server.balance, 93);
}

#[test]
fn a_refund_asked_offline_is_asked_at_the_next_contact_and_applied_once() {
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    h.advance(minutes(1));
    h.exit(pid);
    h.network = Network::Down;
    let offline = h.advance(minutes(10));
    assert!(refunded(&offline).is_empty());
    h.network = Network::Up;
    let back = h.advance(minutes(15));
    assert_eq!(refunded(&back), vec![7]);
    assert_eq!(h.server.balance, 100);
    let more = h.advance(minutes(60));
    assert!(refunded(&more).is_empty());
    assert_eq!(h.server.balance, 100);
}

#[test]
fn kill_9_before_the_refund_answer_asks_again_and_refunds_once() {
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    h.advance(minutes(1));
    h.exit(pid);
    // The server refunds, the answer is lost: the agent dies.
    h.network = Network::LoseAnswers;
    h.advance(minutes(5));
    assert_eq!(h.server.refund_requests.len(), 1);
    h.network = Network::Up;
    let restarted = h.restart(Duration::from_secs(5));
    assert_eq!(h.server.refund_requests.len(), 2, "asked again");
    assert_eq!(refunded(&restarted), vec![7]);
    assert_eq!(h.server.balance, 100, "refunded once");
}

#[test]
fn a_run_still_there_at_the_grace_keeps_the_charge() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.start_process("alice", "autocad");
    let later = h.advance(minutes(30));
    assert!(refunded(&later).is_empty());
    assert!(h.server.refund_requests.is_empty());
    assert_eq!(h.server.balance, 93);
}

#[test]
fn zero_grace_turns_refunds_off() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.server.policy.short_use_grace_secs = 0;
    h.advance(minutes(10)); // the policy arrives
    let (pid, _) = h.start_process("alice", "autocad");
    h.advance(minutes(1));
    h.exit(pid);
    h.advance(minutes(30));
    assert!(h.server.refund_requests.is_empty());
    assert_eq!(h.server.balance, 93);
}
