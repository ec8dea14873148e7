//! Idle awareness (R14, issue 15 §2): a product nobody uses is paused at its
//! window's end instead of renewed, and resumes (charged like a reopen) when
//! its user comes back.

use std::time::Duration;

use flex_protocol::socket::Event;

use super::testkit::*;
use super::Action;

/// Lets time pass with alice's notifier reporting every 30 s; her last input
/// was at `last_input` (true time), or she keeps working if `None`.
fn pass(
    h: &mut Harness,
    d: Duration,
    last_input: Option<chrono::DateTime<chrono::Utc>>,
) -> Vec<Action> {
    let end = h.true_time + chrono::Duration::from_std(d).unwrap();
    let mut all = Vec::new();
    while h.true_time < end {
        let idle = match last_input {
            Some(t) => (h.true_time - t).to_std().unwrap_or_default(),
            None => Duration::ZERO,
        };
        all.extend(h.activity(50, "alice", idle));
        let step = (end - h.true_time).min(chrono::Duration::seconds(30));
        all.extend(h.advance(step.to_std().unwrap()));
    }
    all
}

fn charges(actions: &[Action]) -> Vec<u64> {
    events(actions)
        .iter()
        .filter_map(|e| match e {
            Event::Charged { tokens, .. } | Event::Resumed { tokens, .. } => Some(*tokens),
            _ => None,
        })
        .collect()
}

#[test]
fn a_product_left_open_over_the_weekend_is_paused_not_renewed() {
    // Issue 15: a designer who leaves AutoCAD open Friday evening costs 21
    // extra tokens by Monday.
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    let stopped = monday(17, 0);
    pass(&mut h, Duration::from_secs(9 * 3600), None);
    assert_eq!(h.true_time, stopped);
    // Nobody touches it from 17:00; it uses no CPU.
    let weekend = pass(&mut h, Duration::from_secs(3 * 86_400), Some(stopped));
    assert_eq!(h.server.total_charged(), 7, "not renewed while idle");
    assert!(events(&weekend)
        .iter()
        .any(|e| matches!(e, Event::Paused { .. })));
    let s = h.core.status(None).sessions;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].state, "paused");
    assert_eq!(
        s[0].paused_since,
        Some(monday(8, 0) + chrono::Duration::days(1))
    );
    assert_eq!(
        s[0].pid,
        Some(pid),
        "still running: never closed for being idle"
    );
    // The mouse moves: a new window at once, told as resumed.
    let back = pass(&mut h, Duration::from_secs(60), None);
    assert!(
        events(&back)
            .iter()
            .any(|e| matches!(e, Event::Resumed { tokens: 7, .. })),
        "{back:?}"
    );
    assert_eq!(h.server.total_charged(), 14);
    assert_eq!(h.core.status(None).sessions[0].state, "running");
}

#[test]
fn a_busy_product_without_input_is_renewed() {
    // An overnight render is use.
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    h.cpu_percent.insert(pid, 80.0);
    let night = pass(&mut h, Duration::from_secs(26 * 3600), Some(monday(8, 0)));
    assert_eq!(charges(&night), vec![7], "renewed");
    assert_eq!(h.server.total_charged(), 14);
}

#[test]
fn a_forged_idle_report_does_not_run_a_product_unpaid() {
    // A user reports "no input" while working in the product: its CPU use
    // says otherwise, so it is renewed.
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    h.cpu_percent.insert(pid, 25.0);
    pass(&mut h, Duration::from_secs(25 * 3600), Some(monday(7, 0)));
    assert_eq!(h.server.total_charged(), 14);
}

#[test]
fn no_report_means_never_idle() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.start_process("alice", "autocad");
    h.advance_to(monday(9, 0) + chrono::Duration::days(1));
    assert_eq!(
        h.server.total_charged(),
        14,
        "renewed: nothing said it was idle"
    );
}

#[test]
fn zero_idle_after_turns_it_off() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.server.policy.idle_after_secs = 0;
    h.advance(Duration::from_secs(600));
    h.start_process("alice", "autocad");
    pass(&mut h, Duration::from_secs(25 * 3600), Some(monday(8, 0)));
    assert_eq!(h.server.total_charged(), 14);
}

#[test]
fn input_at_a_locked_screen_is_not_use() {
    // Alice locks her screen at 17:00 and leaves; the mouse is nudged at the
    // lock screen now and then, which resets the session's input idle time.
    let mut h = Harness::new(monday(8, 0), 100);
    h.start_process("alice", "autocad");
    pass(&mut h, Duration::from_secs(9 * 3600), None);
    let mut night = Vec::new();
    while h.true_time < monday(8, 30) + chrono::Duration::days(1) {
        night.extend(h.report(50, "alice", Duration::from_secs(5), true));
        night.extend(h.advance(Duration::from_secs(30)));
    }
    assert!(
        events(&night)
            .iter()
            .any(|e| matches!(e, Event::Paused { .. })),
        "a locked session counted as use"
    );
    assert_eq!(
        h.server.total_charged(),
        7,
        "renewed behind a locked screen"
    );
    // She unlocks: in use again.
    let back = h.report(50, "alice", Duration::ZERO, false);
    let back = [back, h.advance(Duration::from_secs(1))].concat();
    assert_eq!(charges(&back), vec![7], "{back:?}");
}

fn renewal_notices(actions: &[Action]) -> usize {
    events(actions)
        .iter()
        .filter(|e| matches!(e, Event::RenewalNotice { .. }))
        .count()
}

#[test]
fn an_idle_product_gets_no_renewal_notice_until_its_user_is_back() {
    // "AutoCAD renews at 08:00 for 7 tokens" went to a user whose product
    // was then paused as idle, not renewed.
    let mut h = Harness::new(monday(8, 0), 100);
    let products = h.server.products();
    h.feed(super::Input::RateSheet(products));
    h.start_process("alice", "autocad");
    let stopped = monday(17, 0);
    pass(&mut h, Duration::from_secs(9 * 3600), None);
    let evening = pass(
        &mut h,
        Duration::from_secs(14 * 3600 + 50 * 60),
        Some(stopped),
    );
    assert_eq!(h.true_time, monday(7, 50) + chrono::Duration::days(1));
    assert_eq!(renewal_notices(&evening), 0, "idle at the notice time");
    // Back at 07:50, ten minutes before the end: now it will be renewed.
    let back = pass(&mut h, Duration::from_secs(60), None);
    assert_eq!(renewal_notices(&back), 1, "{back:?}");
    let end = pass(&mut h, Duration::from_secs(15 * 60), None);
    assert_eq!(renewal_notices(&end), 0, "once");
    assert_eq!(h.server.total_charged(), 14, "renewed");
}
