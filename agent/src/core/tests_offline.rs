//! The offline rule (R8) under a driven clock: warnings, the close at the limit,
//! wall-clock changes, suspend, restart and reboot, reconnecting.

use std::time::Duration;

use flex_protocol::socket::{CloseReason, Event};

use super::testkit::*;
use super::Action;

fn tuesday(h: u32, m: u32) -> chrono::DateTime<chrono::Utc> {
    monday(h, m) + chrono::Duration::days(1)
}

/// Alice runs AutoCAD from Monday 08:00; the server is last reached at 09:00.
fn offline_from_nine() -> (Harness, u32) {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    h.advance_to(monday(9, 0));
    assert_eq!(h.core.status(None).last_server_contact, Some(monday(9, 0)));
    h.network = Network::Down;
    (h, pid)
}

fn warnings(actions: &[Action]) -> Vec<u64> {
    events(actions)
        .iter()
        .filter_map(|e| match e {
            Event::OfflineWarning { seconds_left, .. } => Some(*seconds_left),
            _ => None,
        })
        .collect()
}

/// The user was told the product closes for being offline (`product_closing`
/// when the close begins; `product_closed` comes when the process is gone).
fn offline_closed(actions: &[Action]) -> bool {
    events(actions).iter().any(|e| {
        matches!(
            e,
            Event::ProductClosing {
                reason: CloseReason::Offline,
                ..
            }
        )
    })
}

#[test]
fn warned_at_each_offset_then_closed_exactly_at_the_limit() {
    let (mut h, pid) = offline_from_nine();
    let before = h.advance_to(tuesday(9, 0) - chrono::Duration::seconds(1));
    assert_eq!(warnings(&before), vec![7200, 1800, 300], "each offset once");
    let deadline = events(&before).iter().find_map(|e| match e {
        Event::OfflineWarning { deadline, .. } => Some(*deadline),
        _ => None,
    });
    assert_eq!(deadline, Some(tuesday(9, 0)));
    assert!(closes(&before).is_empty(), "not one second early");

    let at = h.advance(Duration::from_secs(1));
    assert_eq!(closes(&at), vec![(Some(pid), true)]);
    assert!(offline_closed(&at));
    let forced = h.advance(Duration::from_secs(29));
    assert!(closes(&forced).is_empty());
    let forced = h.advance(Duration::from_secs(1));
    assert_eq!(
        closes(&forced),
        vec![(Some(pid), false)],
        "SIGKILL after close_grace"
    );
    let after = h.advance(hours(1));
    assert!(closes(&after).is_empty(), "each signal once");
}

#[test]
fn reconnecting_before_the_limit_cancels_the_close() {
    let (mut h, _) = offline_from_nine();
    let warned = h.advance_to(tuesday(8, 40));
    assert_eq!(warnings(&warned), vec![7200, 1800]);
    h.network = Network::Up;
    let after = h.advance_to(tuesday(12, 0));
    assert!(closes(&after).is_empty());
    assert!(warnings(&after).is_empty());
    // The renewal that failed at 08:00 was resent on reconnection.
    assert_eq!(h.server.total_charged(), 14);
    assert!(h.core.status(None).online);
}

#[test]
fn wall_clock_back_three_days_neither_extends_nor_goes_unreported() {
    let (mut h, pid) = offline_from_nine();
    h.advance_to(monday(12, 0));
    let moved = h.move_wall_clock(-chrono::Duration::days(3));
    assert!(events(&moved)
        .iter()
        .any(|e| matches!(e, Event::ClockRollback { seconds } if *seconds == 3 * 86_400)));
    let batch = h.journal.heartbeat_batch().unwrap();
    assert_eq!(
        batch.clock_rollbacks.len(),
        1,
        "kept for the next heartbeat"
    );
    assert_eq!(batch.clock_rollbacks[0].seconds, 3 * 86_400);

    let before = h.advance_to(tuesday(9, 0) - chrono::Duration::seconds(1));
    assert!(closes(&before).is_empty());
    let at = h.advance(Duration::from_secs(1));
    assert_eq!(
        closes(&at),
        vec![(Some(pid), true)],
        "closed at the true limit"
    );
}

#[test]
fn wall_clock_forward_three_days_does_not_close_early() {
    let (mut h, pid) = offline_from_nine();
    h.advance_to(monday(12, 0));
    let moved = h.move_wall_clock(chrono::Duration::days(3));
    assert!(closes(&moved).is_empty());
    assert!(events(&moved).is_empty());
    // The window is still honoured: trusted time did not jump.
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(r.tokens_charged, 0);
    let before = h.advance_to(tuesday(9, 0) - chrono::Duration::seconds(1));
    assert!(closes(&before).is_empty());
    let at = h.advance(Duration::from_secs(1));
    assert!(closes(&at).contains(&(Some(pid), true)));
}

#[test]
fn suspend_counts_as_offline_time() {
    let (mut h, pid) = offline_from_nine();
    h.advance_to(monday(12, 0));
    // Asleep 20 h: wakes at Tuesday 08:00, one hour before the limit.
    let woke = h.suspend(hours(20));
    assert_eq!(
        warnings(&woke),
        vec![3600],
        "one warning for the offsets slept through"
    );
    assert!(closes(&woke).is_empty());
    let at = h.advance_to(tuesday(9, 0));
    assert_eq!(closes(&at), vec![(Some(pid), true)]);

    // Asleep past the limit: closed on waking.
    let (mut h, pid) = offline_from_nine();
    let woke = h.suspend(hours(30));
    assert_eq!(closes(&woke), vec![(Some(pid), true)]);
    assert!(offline_closed(&woke));
}

#[test]
fn restart_while_offline_keeps_the_deadline() {
    let (mut h, pid) = offline_from_nine();
    h.advance_to(monday(20, 7));
    // Agent killed at 20:07 and started again an hour later.
    h.restart(hours(1));
    assert_eq!(h.core.status(None).last_server_contact, Some(monday(9, 0)));
    let before = h.advance_to(tuesday(9, 0) - chrono::Duration::seconds(1));
    assert!(closes(&before).is_empty());
    let at = h.advance(Duration::from_secs(1));
    assert_eq!(closes(&at), vec![(Some(pid), true)]);
}

#[test]
fn reboot_while_offline_keeps_the_deadline_even_with_the_clock_wound_back() {
    let (mut h, _) = offline_from_nine();
    h.advance_to(monday(20, 3));
    h.reboot(hours(2));
    assert!(
        h.core.status(None).sessions.is_empty(),
        "no process survives a reboot"
    );
    let ended = h.journal.heartbeat_batch().unwrap();
    assert!(ended.sessions.iter().all(|s| s.ended_at.is_some()));
    // Started again offline: free inside Monday's window, same deadline.
    let r = h.launch("alice", "autocad").unwrap().unwrap();
    assert!(r.offline && r.tokens_charged == 0);
    let pid = h.pid_of("alice", "autocad").unwrap();
    let before = h.advance_to(tuesday(9, 0) - chrono::Duration::seconds(1));
    assert!(closes(&before).is_empty());
    let at = h.advance(Duration::from_secs(1));
    assert_eq!(
        closes(&at),
        vec![(Some(pid), true)],
        "reboot does not reset the count"
    );

    // Wound back by a day while off: the uptime still counts, and it is reported.
    let (mut h, _) = offline_from_nine();
    h.advance_to(monday(20, 3));
    h.wall_offset = -chrono::Duration::days(1);
    let up = h.reboot(Duration::ZERO);
    assert!(events(&up)
        .iter()
        .any(|e| matches!(e, Event::ClockRollback { .. })));
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    // At most the checkpoint interval (one minute) is lost, never more.
    let before = h.advance_to(tuesday(9, 0) - chrono::Duration::seconds(1));
    assert!(closes(&before).is_empty());
    let at = h.advance_to(tuesday(9, 1));
    assert_eq!(closes(&at)[0], (Some(pid), true));
}

#[test]
fn subscription_sessions_get_thirty_days_and_three_days_of_warnings() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.server
        .subscriptions
        .insert((email_of("alice").to_string(), "revit".into()));
    h.launch("alice", "revit").unwrap().unwrap();
    let pid = h.pid_of("alice", "revit").unwrap();
    h.network = Network::Down;
    let limit = monday(8, 0) + chrono::Duration::days(30);
    let before = h.advance_to(limit - chrono::Duration::seconds(1));
    assert_eq!(
        warnings(&before),
        vec![3 * 86_400, 2 * 86_400, 86_400, 7200, 1800, 300]
    );
    assert!(closes(&before).is_empty());
    let at = h.advance(Duration::from_secs(1));
    assert_eq!(closes(&at), vec![(Some(pid), true)]);
    assert_eq!(h.server.total_charged(), 0);
}

#[test]
fn killed_on_open_while_online() {
    // Issue 15 §4: with no product open the agent stopped contacting the
    // server; a free reopen inside a paid window was then judged against the
    // offline limit before any contact and killed at once, with the server up.
    let mut h = Harness::new(monday(8, 0), 100);
    h.server.policy.flex_offline_limit_secs = 120;
    h.server.policy.offline_warning_secs = vec![60];
    h.advance(Duration::from_secs(600)); // the policy arrives
    let (pid, _) = h.start_process("alice", "autocad");
    h.exit(pid);
    // Nothing runs for half an hour; the server stays up.
    h.advance(Duration::from_secs(1800));
    let (pid, reopened) = h.start_process("alice", "autocad");
    assert!(closes(&reopened).is_empty(), "{reopened:?}");
    assert!(warnings(&reopened).is_empty());
    let later = h.advance(Duration::from_secs(300));
    assert!(closes(&later).is_empty());
    assert!(warnings(&later).is_empty());
    assert_eq!(h.pid_of("alice", "autocad"), Some(pid));
}

#[test]
fn a_warning_waits_for_a_failed_contact_attempt() {
    // Never alarm while the server is reachable: the warning comes only once
    // a contact attempt made to check has failed.
    let (mut h, _pid) = offline_from_nine();
    h.network = Network::Up;
    // The server is up again but the agent has not tried it since 09:00
    // (backoff): at the first warning time it checks first, and stays quiet.
    let quiet = h.advance_to(tuesday(7, 0));
    assert!(warnings(&quiet).is_empty(), "{quiet:?}");
    assert!(closes(&quiet).is_empty());
}

#[test]
fn no_timer_in_the_past_while_a_check_of_the_server_waits() {
    // At the first warning time the last failure is old, so the agent asks
    // the server first; the answer does not come. Until the check gives up
    // the warning's moment has passed, and it must not be the next timer: the
    // driver would wake at once, again and again, for a minute (found by
    // flex-sim as a busy loop).
    let (mut h, _pid) = offline_from_nine();
    h.advance_to(tuesday(6, 50));
    h.network = Network::Silent;
    let quiet = h.advance_to(tuesday(7, 0));
    assert!(warnings(&quiet).is_empty(), "{quiet:?}");
    let next = h.core.next_deadline().expect("a timer");
    assert!(
        next > h.now().boot,
        "next timer {next:?} is not after now {:?}",
        h.now().boot
    );
    // The check gives up after its minute: then the user is warned, with the
    // time really left, and no timer stays in the past.
    let later = h.advance_to(tuesday(7, 2));
    assert_eq!(warnings(&later), vec![7140], "{later:?}");
}

#[test]
fn one_warning_per_product_however_many_processes_and_back_online_after() {
    let (mut h, _pid) = offline_from_nine();
    h.detect("alice", "autocad", process(7777));
    let before = h.advance_to(tuesday(7, 0));
    assert_eq!(
        warnings(&before),
        vec![7200],
        "one warning for two processes"
    );
    h.network = Network::Up;
    let back = h.advance(Duration::from_secs(700));
    assert!(
        events(&back).iter().any(|e| matches!(e, Event::BackOnline)),
        "{back:?}"
    );
}
