//! Closes that keep unsaved work (issue 15 §3): announced with their deadline,
//! then the user's desktop asks the product's windows to close; SIGTERM only
//! when there is no window; the kill after close_grace whatever happens.

use std::time::Duration;

use flex_protocol::socket::{CloseReason, Event};

use super::testkit::*;
use super::{Action, CloseRoute, Input};

/// Alice runs AutoCAD through a wrapper (connection 1), her notifier reports
/// on connection 50; the server is last reached at 09:00 and then unreachable.
fn offline_with_a_desktop() -> (Harness, u32) {
    let mut h = Harness::new(monday(8, 0), 100);
    let grant = h.launch_on(1, "alice", "autocad", None).unwrap().unwrap();
    let p = process(5000);
    h.attach(1, "alice", grant.session.as_str(), p).unwrap();
    h.advance_to(monday(9, 0));
    h.network = Network::Down;
    (h, p.pid)
}

fn signalled(actions: &[Action]) -> Vec<(CloseRoute, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close {
                route, graceful, ..
            } => Some((route.clone(), *graceful)),
            Action::Kill { process, .. } => Some((CloseRoute::Signal { process: *process }, false)),
            _ => None,
        })
        .collect()
}

fn asked_to_close_windows(actions: &[Action]) -> Option<u32> {
    events(actions).iter().find_map(|e| match e {
        Event::CloseWindows { pid, .. } => Some(*pid),
        _ => None,
    })
}

#[test]
fn the_desktop_closes_the_windows_and_no_sigterm_is_sent() {
    let (mut h, pid) = offline_with_a_desktop();
    let limit = tuesday(9, 0);
    // The notifier keeps reporting (active user).
    let mut at_limit = Vec::new();
    while h.true_time < limit {
        h.activity(50, "alice", Duration::from_secs(5));
        let step = (limit - h.true_time).min(chrono::Duration::seconds(60));
        at_limit = h.advance(step.to_std().unwrap());
    }
    assert_eq!(asked_to_close_windows(&at_limit), Some(pid), "{at_limit:?}");
    assert!(
        signalled(&at_limit).is_empty(),
        "no SIGTERM while the desktop answers"
    );
    // The wrapper was told, with the deadline, before anything was stopped.
    assert!(at_limit.iter().any(|a| matches!(
        a,
        Action::TellWrapper {
            conn: 1,
            event: Event::ProductClosing {
                reason: CloseReason::Offline,
                ..
            }
        }
    )));
    let answered = h.feed(Input::WindowsClosing {
        account: uid_of("alice"),
        pid,
        windows: 2,
    });
    assert!(signalled(&answered).is_empty());
    let later = h.advance(Duration::from_secs(10));
    assert!(signalled(&later).is_empty(), "the product may save");
    // Killed at close_grace (30 s) whatever it did.
    let killed = h.advance(Duration::from_secs(20));
    assert_eq!(
        signalled(&killed),
        vec![(
            CloseRoute::Signal {
                process: process(pid)
            },
            false
        )]
    );
}

#[test]
fn no_window_found_means_sigterm_at_once() {
    let (mut h, pid) = offline_with_a_desktop();
    h.activity(50, "alice", Duration::from_secs(5));
    // Keep the notifier fresh up to the limit.
    while h.true_time < tuesday(9, 0) - chrono::Duration::seconds(60) {
        h.advance(Duration::from_secs(60));
        h.activity(50, "alice", Duration::from_secs(5));
    }
    let at_limit = h.advance(Duration::from_secs(60));
    assert_eq!(asked_to_close_windows(&at_limit), Some(pid));
    let answered = h.feed(Input::WindowsClosing {
        account: uid_of("alice"),
        pid,
        windows: 0,
    });
    let graceful: Vec<_> = signalled(&answered);
    assert_eq!(graceful.len(), 1, "{answered:?}");
    assert!(matches!(
        &graceful[0],
        (CloseRoute::Wrapper { conn: 1, .. }, true)
    ));
}

#[test]
fn a_silent_desktop_gets_sigterm_after_three_seconds() {
    let (mut h, pid) = offline_with_a_desktop();
    while h.true_time < tuesday(9, 0) - chrono::Duration::seconds(60) {
        h.advance(Duration::from_secs(60));
        h.activity(50, "alice", Duration::from_secs(5));
    }
    let at_limit = h.advance(Duration::from_secs(60));
    assert_eq!(asked_to_close_windows(&at_limit), Some(pid));
    let soon = h.advance(Duration::from_secs(2));
    assert!(signalled(&soon).is_empty());
    let then = h.advance(Duration::from_secs(1));
    assert_eq!(signalled(&then).len(), 1, "{then:?}");
}

#[test]
fn without_a_notifier_the_product_gets_sigterm_at_the_deadline() {
    let (mut h, _pid) = offline_with_a_desktop();
    let at_limit = h.advance_to(tuesday(9, 0));
    assert_eq!(asked_to_close_windows(&at_limit), None);
    assert_eq!(signalled(&at_limit).len(), 1);
}

#[test]
fn was_closed_is_told_once_when_the_product_has_closed() {
    let (mut h, pid) = offline_with_a_desktop();
    let second = process(5001);
    h.detect("alice", "autocad", second);
    let at_limit = h.advance_to(tuesday(9, 0));
    let closing = events(&at_limit)
        .iter()
        .filter(|e| matches!(e, Event::ProductClosing { .. }))
        .count();
    assert!(closing >= 1);
    assert!(!events(&at_limit)
        .iter()
        .any(|e| matches!(e, Event::ProductClosed { .. })));
    let first_gone = h.exit(pid);
    assert!(
        !events(&first_gone)
            .iter()
            .any(|e| matches!(e, Event::ProductClosed { .. })),
        "another process still closing"
    );
    let all_gone = h.exit(second.pid);
    assert_eq!(
        events(&all_gone)
            .iter()
            .filter(|e| matches!(e, Event::ProductClosed { .. }))
            .count(),
        1
    );
}

fn tuesday(h: u32, m: u32) -> chrono::DateTime<chrono::Utc> {
    monday(h, m) + chrono::Duration::days(1)
}
