//! Enforcement by process (issue 14): each test is named after a way a
//! hostile local user beat the session-based agent, and checks that the
//! product process stays in the enforcement set until it exits.

use std::time::Duration;

use flex_protocol::api::Source;
use flex_protocol::socket::Event;
use flex_protocol::ErrorCode;

use super::testkit::*;
use super::{Action, CloseRoute, CLAIM_TIMEOUT};

fn short_policy(h: &mut Harness) {
    h.server.policy.window_secs = 3600;
    h.server.policy.flex_offline_limit_secs = 2 * 3600;
    h.server.policy.offline_warning_secs = vec![600];
    h.server.policy.heartbeat_interval_secs = 600;
    // The policy reaches the agent with the next heartbeat.
    h.advance(Duration::from_secs(600));
}

/// (pid, graceful) of the signals sent to processes (not through a wrapper).
fn signals(actions: &[Action]) -> Vec<(u32, bool)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close {
                route: CloseRoute::Signal { process },
                graceful,
                ..
            } => Some((process.pid, *graceful)),
            Action::Close {
                route:
                    CloseRoute::Wrapper {
                        fallback: Some(process),
                        ..
                    },
                graceful,
                ..
            } => Some((process.pid, *graceful)),
            Action::Kill { process, .. } => Some((process.pid, false)),
            _ => None,
        })
        .collect()
}

#[test]
fn pay_one_window_run_forever() {
    // Defect 1: the account starts the product directly (the watcher charges a
    // window), then sends `launch` naming that pid (free inside the window):
    // the watcher's session was dropped as a duplicate, and the wrapper's
    // `exit` ended the last session holding the process. No renewal was ever
    // charged and the offline rule never closed it.
    let mut h = Harness::new(monday(8, 0), 100);
    short_policy(&mut h);
    let (pid, _) = h.start_process("mallory", "autocad");
    assert_eq!(h.server.total_charged(), 7);
    let conn = 77;
    let joined = h
        .launch_on(conn, "mallory", "autocad", Some(process(pid)))
        .unwrap()
        .unwrap();
    assert_eq!(joined.tokens_charged, 0, "inside the watcher's window");
    assert_eq!(
        h.wrapper_exit(conn, "mallory", joined.session.as_str()),
        Ok(())
    );
    assert_eq!(
        h.pid_of("mallory", "autocad"),
        Some(pid),
        "the process is still enforced"
    );
    // The window ends while the process runs: renewed.
    h.advance(Duration::from_secs(3600));
    assert_eq!(h.server.total_charged(), 14);
    // Offline past the limit: closed.
    h.network = Network::Down;
    let after = h.advance(Duration::from_secs(3 * 3600));
    assert!(signals(&after).contains(&(pid, true)), "{after:?}");
    assert!(
        signals(&after).contains(&(pid, false)),
        "killed after the grace"
    );
}

#[test]
fn unentitled_unclosed() {
    // Defect 2: a user who is not entitled forks a child that ignores
    // SIGTERM, sends `launch` naming the child's pid, and lets the child exec
    // the product while the claim is in flight. The watcher opened no session
    // ("this very run" had one) and the denial only dropped the wrapper's.
    let mut h = Harness::new(monday(8, 0), 100);
    h.server.not_on_flex.insert(email_of("mallory").to_string());
    h.network = Network::Hold;
    let child = process(6000);
    let asked = h.launch_on(5, "mallory", "autocad", Some(child));
    assert!(asked.is_none(), "the claim is in flight");
    h.detect("mallory", "autocad", child);
    let answered = h.release_claims();
    let refused = answered.iter().find_map(|a| match a {
        Action::ReplyLaunch { result, .. } => Some(result.clone()),
        _ => None,
    });
    assert_eq!(refused.unwrap().unwrap_err().code, ErrorCode::NotEntitled);
    let closes = signals(&answered);
    assert!(
        closes.contains(&(child.pid, true)),
        "the named process is closed: {answered:?}"
    );
    h.network = Network::Up;
    // The child ignores SIGTERM: after close_grace it is killed.
    let later = h.advance(Duration::from_secs(31));
    assert!(signals(&later).contains(&(child.pid, false)), "{later:?}");

    // The watcher wins the race instead, and a second `launch` naming the
    // pid comes during close_grace: refused, and the kill still comes.
    let other = process(6001);
    let detected = h.detect("mallory", "autocad", other);
    assert!(signals(&detected).contains(&(other.pid, true)));
    let again = h
        .launch_on(6, "mallory", "autocad", Some(other))
        .unwrap()
        .unwrap_err();
    assert_eq!(again.code, ErrorCode::NotEntitled);
    let later = h.advance(Duration::from_secs(31));
    assert!(signals(&later).contains(&(other.pid, false)), "{later:?}");
    assert_eq!(h.server.total_charged(), 0);
}

#[test]
fn a_normal_wrapper_run_ends_without_an_error() {
    // Defect 10: launch, attach, the product exits, `exit`: the agent saw the
    // process end first and answered `exit` with not_found.
    let mut h = Harness::new(monday(8, 0), 100);
    let grant = h.launch_on(1, "alice", "autocad", None).unwrap().unwrap();
    let p = process(5000);
    h.attach(1, "alice", grant.session.as_str(), p).unwrap();
    h.exit(p.pid);
    assert_eq!(h.wrapper_exit(1, "alice", grant.session.as_str()), Ok(()));
    assert_eq!(
        h.wrapper_exit(1, "alice", grant.session.as_str()),
        Ok(()),
        "again"
    );
    // Someone else's ended session is still not theirs.
    assert_eq!(
        h.wrapper_exit(2, "bob", grant.session.as_str())
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    assert_eq!(
        h.wrapper_exit(1, "alice", "never-was").unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[test]
fn a_run_waiting_for_a_claim_is_bounded_by_the_claim_timeout() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::Hold;
    let (pid, _) = h.start_process("alice", "autocad");
    let before = h.advance(CLAIM_TIMEOUT.to_std().unwrap() - Duration::from_secs(1));
    assert!(signals(&before).is_empty());
    let after = h.advance(Duration::from_secs(1));
    assert!(signals(&after).contains(&(pid, true)), "{after:?}");
    assert!(events(&after).iter().any(|e| matches!(
        e,
        Event::LaunchDenied {
            reason: ErrorCode::Offline,
            ..
        }
    )));
    // The answer comes late after all: the window was paid, so it is held,
    // and the next launch inside it is free.
    h.network = Network::Up;
    h.release_claims();
    assert_eq!(h.server.total_charged(), 7);
    let next = h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(next.tokens_charged, 0);
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn a_revoked_device_drops_every_window() {
    // Defect 9: a revoked device kept granting launches inside windows it
    // already held for up to 24 h.
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    assert!(h.launch("alice", "autocad").unwrap().is_ok(), "free");
    let actions = h.feed(super::Input::DeviceRevoked {
        message: "this workstation was removed from the license server".into(),
    });
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Persist(super::Persist::DropWindow { .. }))),
        "{actions:?}"
    );
    assert!(h.core.status(None).windows.is_empty());
    // The running product is closed after the renewal grace, not at once.
    assert!(signals(&actions).is_empty());
    let later = h.advance(Duration::from_secs(30 * 60));
    assert!(signals(&later).contains(&(pid, true)), "{later:?}");
    // And a launch is no longer free: it needs the server, which refuses.
    h.network = Network::Down;
    let refused = h.launch("alice", "autocad").unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::Offline);
}

#[test]
fn job_flood_for_a_product_not_on_the_sheet_keeps_nothing() {
    // Defect 6: 12,000 `result` requests with fresh job ids for a product not
    // on the sheet grew the agent, its journal and the server, and each
    // answer hashed every stored job.
    let mut h = Harness::new(monday(8, 0), 100);
    let products = h.server.products();
    h.feed(super::Input::RateSheet(products));
    let received = h.server.received.len();
    for i in 0..200 {
        let actions = h.job("alice", "no-such-product", 5, &format!("j{i}"));
        assert!(claims(&actions).is_empty());
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::ReplyJob { result: Err(r), .. } if r.code == ErrorCode::UnknownProduct
        )));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::Persist(super::Persist::Job(_)))));
    }
    assert_eq!(h.server.received.len(), received);
    assert!(h.journal.load_state().unwrap().jobs.is_empty());
}

#[test]
fn a_wrapper_cannot_move_a_covered_process_to_another_users_window() {
    // A wrapper naming a process the set holds for another user (an admin
    // acting for bob on alice's process) is refused, and alice's run is
    // untouched.
    let mut h = Harness::new(monday(8, 0), 100);
    let (pid, _) = h.start_process("alice", "autocad");
    let req = super::LaunchRequest {
        request: "r-x".into(),
        conn: 9,
        account: uid_of("bob"),
        account_name: "bob".into(),
        user: email_of("bob"),
        product: "autocad".parse().unwrap(),
        version: None,
        process: Some(process(pid)),
    };
    let actions = h.feed(super::Input::Launch(req));
    let reply = actions.iter().find_map(|a| match a {
        Action::ReplyLaunch { result, .. } => Some(result.clone()),
        _ => None,
    });
    assert_eq!(reply.unwrap().unwrap_err().code, ErrorCode::Conflict);
    let s = h.core.status(None).sessions;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].user, email_of("alice").as_str());
    assert_eq!(s[0].source, Source::Tokens);
    assert_eq!(h.server.total_charged(), 7);
}
