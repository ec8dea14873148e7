//! The trust boundary in the core: every product exec is a launch of that
//! product, who may attach and end a session, one session per (process,
//! product), per-account caps, processes tracked only while held, status
//! within bounds, renewals the agent cannot verify, and per-result job retries.

use std::time::Duration;

use flex_protocol::api::Source;
use flex_protocol::socket::{CloseReason, Event};
use flex_protocol::ErrorCode;

use super::testkit::*;
use super::{Action, CloseRoute};
use crate::limits;

fn tuesday(h: u32, m: u32) -> chrono::DateTime<chrono::Utc> {
    monday(h, m) + chrono::Duration::days(1)
}

fn job_reply(actions: &[Action]) -> Result<flex_protocol::socket::ResultReply, super::Refusal> {
    actions
        .iter()
        .find_map(|a| match a {
            Action::ReplyJob { result, .. } => Some(result.clone()),
            _ => None,
        })
        .expect("the job was answered")
}

#[test]
fn product_swap_through_the_wrapper_is_claimed_as_the_real_product() {
    // Regression: `flexctl run --product revit -- <a copy of acad>` ran
    // AutoCAD on the wrapper's (subscription) session: attaching dropped the
    // watcher's autocad session of the same pid, and the watcher ignored pids
    // a session already held.
    let mut h = Harness::new(monday(8, 0), 100);
    h.server
        .subscriptions
        .insert((email_of("alice").to_string(), "revit".into()));
    let conn = 1;
    let grant = h.launch_on(conn, "alice", "revit", None).unwrap().unwrap();
    assert_eq!(
        (grant.source, grant.tokens_charged),
        (Source::Subscription, 0)
    );
    let p = process(5000);
    // The watcher sees the exec first, then the wrapper attaches (or the
    // other way round: both orders are tested).
    let detected = h.detect("alice", "autocad", p);
    assert_eq!(claims(&detected).len(), 1, "autocad is claimed as itself");
    assert_eq!(h.attach(conn, "alice", grant.session.as_str(), p), Ok(()));
    let sessions = h.core.status(None).sessions;
    let products: Vec<(&str, Source)> = sessions
        .iter()
        .map(|s| (s.product.as_str(), s.source))
        .collect();
    assert!(
        products.contains(&("autocad", Source::Tokens)),
        "{products:?}"
    );
    assert!(
        products.contains(&("revit", Source::Subscription)),
        "{products:?}"
    );
    assert_eq!(h.server.total_charged(), 7);

    // Attach first, then the exec: the same.
    let conn = 2;
    let grant = h.launch_on(conn, "bob", "autocad", None).unwrap().unwrap();
    let q = process(5001);
    h.attach(conn, "bob", grant.session.as_str(), q).unwrap();
    let detected = h.detect("bob", "revit", q);
    assert_eq!(
        claims(&detected).len(),
        1,
        "revit found inside autocad's wrapper"
    );
    assert_eq!(h.server.total_charged(), 7 + 7 + 10);
}

#[test]
fn a_denied_product_inside_another_wrapper_is_closed_through_its_process() {
    let mut h = Harness::new(monday(8, 0), 100);
    let conn = 1;
    let grant = h.launch_on(conn, "alice", "revit", None).unwrap().unwrap();
    let p = process(5000);
    h.attach(conn, "alice", grant.session.as_str(), p).unwrap();
    // The real product is one the server refuses.
    h.server.rates.remove("autocad");
    let detected = h.detect("alice", "autocad", p);
    let close = detected.iter().find_map(|a| match a {
        Action::Close { route, .. } => Some(route.clone()),
        _ => None,
    });
    assert_eq!(close, Some(CloseRoute::Signal { process: p }));
}

#[test]
fn the_wrappers_own_product_is_one_session_whatever_the_order() {
    let mut h = Harness::new(monday(8, 0), 100);
    let p = process(5000);
    h.detect("alice", "autocad", p);
    let grant = h.launch_on(1, "alice", "autocad", None).unwrap().unwrap();
    assert_eq!(grant.tokens_charged, 0, "inside the watcher's window");
    h.attach(1, "alice", grant.session.as_str(), p).unwrap();
    let sessions = h.core.status(None).sessions;
    assert_eq!(sessions.len(), 1, "the watcher's duplicate was dropped");
    assert_eq!(sessions[0].origin, "wrapper");
    // The process is tracked once, and released when it ends.
    assert_eq!(h.tracked.len(), 1);
    h.exit(p.pid);
    assert!(h.tracked.is_empty());
    assert!(h.core.status(None).sessions.is_empty());
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn only_the_owner_attaches_or_ends_a_session_and_only_through_a_wrapper() {
    let mut h = Harness::new(monday(8, 0), 100);
    let grant = h.launch_on(1, "alice", "autocad", None).unwrap().unwrap();
    let forbidden = h
        .attach(1, "bob", grant.session.as_str(), process(5000))
        .unwrap_err();
    assert_eq!(forbidden.code, ErrorCode::Forbidden);
    let forbidden = h
        .wrapper_exit(2, "bob", grant.session.as_str())
        .unwrap_err();
    assert_eq!(forbidden.code, ErrorCode::Forbidden);
    // Root may.
    h.attach(1, "root", grant.session.as_str(), process(5000))
        .unwrap();
    // Attached once: another process is a conflict.
    let again = h
        .attach(1, "alice", grant.session.as_str(), process(5001))
        .unwrap_err();
    assert_eq!(again.code, ErrorCode::Conflict);
    // A watched session ends with its process, whatever a client says: an
    // `exit` of it is answered and changes nothing.
    let (pid, _) = h.start_process("alice", "revit");
    let watched = h
        .core
        .status(None)
        .sessions
        .into_iter()
        .find(|s| s.pid == Some(pid))
        .unwrap()
        .session;
    assert_eq!(h.wrapper_exit(1, "alice", watched.as_str()), Ok(()));
    assert!(h.pid_of("alice", "revit").is_some(), "still enforced");
    assert_eq!(
        h.wrapper_exit(1, "alice", "no-such-session")
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    h.wrapper_exit(1, "alice", grant.session.as_str()).unwrap();
}

#[test]
fn session_flood_with_one_pid_leaves_one_session() {
    // Regression: 2,000 launches naming one long-lived process left 2,000 live
    // sessions, and `status` no longer fit in a line.
    let mut h = Harness::new(monday(8, 0), 100);
    let p = process(5000);
    let first = h.launch_on(1, "alice", "autocad", Some(p)).unwrap();
    assert!(first.is_ok());
    for conn in 2..2_000 {
        let r = h.launch_on(conn, "alice", "autocad", Some(p)).unwrap();
        assert_eq!(r.unwrap_err().code, ErrorCode::Conflict);
    }
    assert_eq!(h.core.status(None).sessions.len(), 1);
    assert_eq!(h.server.total_charged(), 7);
}

#[test]
fn a_second_launch_on_a_connection_releases_the_first() {
    let mut h = Harness::new(monday(8, 0), 100);
    let first = h.launch_on(1, "alice", "autocad", None).unwrap().unwrap();
    let second = h.launch_on(1, "alice", "revit", None).unwrap().unwrap();
    let ids: Vec<String> = h
        .core
        .status(None)
        .sessions
        .into_iter()
        .map(|s| s.session.to_string())
        .collect();
    assert_eq!(ids, vec![second.session], "{} was released", first.session);
}

#[test]
fn max_wrapper_sessions_per_account() {
    let mut h = Harness::new(monday(8, 0), 1_000);
    for conn in 0..limits::MAX_WRAPPER_SESSIONS_PER_ACCOUNT as u64 {
        h.launch_on(conn, "alice", "autocad", None)
            .unwrap()
            .unwrap();
    }
    let over = h.launch_on(999, "alice", "autocad", None).unwrap();
    assert_eq!(over.unwrap_err().code, ErrorCode::LimitExceeded);
    // Bob is not affected; a session closing makes room again.
    assert!(h.launch_on(1000, "bob", "autocad", None).unwrap().is_ok());
    h.feed(super::Input::ConnectionClosed { conn: 0 });
    assert!(h.launch_on(999, "alice", "autocad", None).unwrap().is_ok());
}

#[test]
fn a_closed_connection_ends_unattached_sessions_and_keeps_running_ones() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch_on(1, "alice", "autocad", None).unwrap().unwrap();
    let running = h.launch_on(2, "alice", "revit", None).unwrap().unwrap();
    h.attach(2, "alice", running.session.as_str(), process(5000))
        .unwrap();
    h.feed(super::Input::ConnectionClosed { conn: 1 });
    h.feed(super::Input::ConnectionClosed { conn: 2 });
    let left: Vec<String> = h
        .core
        .status(None)
        .sessions
        .into_iter()
        .map(|s| s.product.to_string())
        .collect();
    assert_eq!(left, vec!["revit"], "runs on until its process exits");
    h.exit(5000);
    assert!(h.core.status(None).sessions.is_empty());
}

#[test]
fn a_restarted_agent_tracks_the_journaled_processes_again() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    let (pid, _) = h.start_process("bob", "revit");
    let restored = h.restart(Duration::from_secs(5));
    let tracked: Vec<u32> = restored
        .iter()
        .filter_map(|a| match a {
            Action::Track { process } => Some(process.pid),
            _ => None,
        })
        .collect();
    assert_eq!(tracked.len(), 2, "{restored:?}");
    assert!(tracked.contains(&pid));
    // The driver finds bob's pid running another process now: it ends.
    h.exit(pid);
    assert_eq!(h.core.status(None).sessions.len(), 1);
}

#[test]
fn status_shows_the_windows_the_user_paid_for() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    h.exit(pid);
    h.launch("bob", "revit").unwrap().unwrap();
    let alice = h.core.status(Some(&email_of("alice")));
    assert!(alice.sessions.is_empty());
    assert_eq!(
        alice.windows.len(),
        1,
        "bob's window is not alice's business"
    );
    let w = &alice.windows[0];
    assert_eq!(
        (
            w.product.as_str(),
            w.source,
            w.tokens_charged,
            w.start,
            w.end
        ),
        ("autocad", Source::Tokens, 7, monday(8, 0), tuesday(8, 0))
    );
    // A free reopen does not change what the window cost.
    h.launch("alice", "autocad").unwrap().unwrap();
    assert_eq!(
        h.core.status(Some(&email_of("alice"))).windows[0].tokens_charged,
        7
    );
    // Kept across a restart; gone once the window ends.
    h.restart(Duration::ZERO);
    assert_eq!(
        h.core.status(Some(&email_of("alice"))).windows[0].tokens_charged,
        7
    );
    assert_eq!(h.core.status(None).windows.len(), 2);
}

#[test]
fn max_status_items() {
    let mut h = Harness::new(monday(8, 0), 10_000);
    for i in 0..(limits::MAX_STATUS_ITEMS as u32 + 5) {
        h.start_process("alice", "autocad");
        let _ = i;
    }
    let s = h.core.status(None);
    assert_eq!(s.sessions.len(), limits::MAX_STATUS_ITEMS);
    assert_eq!(s.sessions_omitted, 5);
}

#[test]
fn a_renewal_the_agent_cannot_verify_backs_off_and_closes_after_the_grace() {
    // Regression: a renewal whose lease failed verification (a changed server
    // key) was retried at once with a fresh claim id, in a tight loop.
    let mut h = Harness::new(monday(8, 0), 1_000);
    h.launch("alice", "autocad").unwrap().unwrap();
    let pid = h.pid_of("alice", "autocad").unwrap();
    h.server.rotate_key();
    let before = h.server.received.len();
    let at_end = h.advance_to(tuesday(8, 0));
    assert!(events(&at_end).iter().any(|e| matches!(
        e,
        Event::RenewalFailed {
            reason: ErrorCode::Internal,
            ..
        }
    )));
    // Announced with its deadline and why.
    assert!(events(&at_end).iter().any(|e| matches!(
        e,
        Event::ProductClosing {
            reason: CloseReason::Denied,
            message,
            deadline,
            ..
        } if message.contains("lease") && *deadline == tuesday(8, 30)
    )));
    let grace_end = tuesday(8, 30);
    let before_close = h.advance_to(grace_end - chrono::Duration::seconds(1));
    assert!(closes(&before_close).is_empty());
    let tries = h.server.received.len() - before;
    assert!(
        (2..=8).contains(&tries),
        "{tries} claims in the 30 min grace: backoff, not a loop"
    );
    let closed = h.advance(Duration::from_secs(1));
    assert_eq!(closes(&closed), vec![(Some(pid), true)]);
    // "Was closed" once it has.
    let gone = h.exit(pid);
    assert!(events(&gone).iter().any(|e| matches!(
        e,
        Event::ProductClosed {
            reason: CloseReason::Denied,
            message,
            ..
        } if message.contains("lease")
    )));
}

#[test]
fn a_renewal_retry_that_verifies_cancels_the_close() {
    let mut h = Harness::new(monday(8, 0), 1_000);
    h.launch("alice", "autocad").unwrap().unwrap();
    h.server.rotate_key();
    h.advance_to(tuesday(8, 0));
    // The server is fixed (its old key back; its ledger holds the renewal it
    // granted): the next retry is covered by it and verifies.
    h.server.restore_key();
    let later = h.advance_to(tuesday(9, 0));
    assert!(closes(&later).is_empty(), "the retry renewed the window");
    assert_eq!(h.core.status(None).sessions.len(), 1);
}

#[test]
fn a_refused_job_can_be_retried_once_tokens_are_bought() {
    let mut h = Harness::new(monday(8, 0), 1);
    let refused = job_reply(&h.job("alice", "recap-photo", 85, "j1")).unwrap_err();
    assert_eq!(refused.code, ErrorCode::OutOfTokens);
    h.server.balance += 100;
    let charged = job_reply(&h.job("alice", "recap-photo", 85, "j1")).unwrap();
    assert_eq!(
        (charged.tokens_charged, charged.already_charged),
        (2, false)
    );
    // A charged job is never charged again, and says so.
    let again = job_reply(&h.job("alice", "recap-photo", 85, "j1")).unwrap();
    assert_eq!((again.tokens_charged, again.already_charged), (2, true));
    assert_eq!(h.server.total_charged(), 2);
    // Also after a restart (the job's state is journaled).
    h.restart(Duration::ZERO);
    let again = job_reply(&h.job("alice", "recap-photo", 85, "j1")).unwrap();
    assert!(again.already_charged);
    assert_eq!(h.server.total_charged(), 2);
}

#[test]
fn the_same_job_id_on_another_product_is_another_job() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.server.rates.insert(
        "photo-2".parse().unwrap(),
        flex_protocol::api::ChargeModel::PerResult { tokens: 1, per: 10 },
    );
    job_reply(&h.job("alice", "recap-photo", 85, "j1")).unwrap();
    let other = job_reply(&h.job("alice", "photo-2", 20, "j1")).unwrap();
    assert_eq!((other.tokens_charged, other.already_charged), (2, false));
    assert_eq!(h.server.total_charged(), 4);
}

#[test]
fn a_job_whose_answer_was_lost_is_resent_with_the_same_claim() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::LoseAnswers;
    h.job("alice", "recap-photo", 85, "j1");
    // The agent dies waiting; the caller retries with the job id it printed.
    h.network = Network::Up;
    h.restart(Duration::ZERO);
    let reply = job_reply(&h.job("alice", "recap-photo", 85, "j1")).unwrap();
    assert_eq!((reply.tokens_charged, reply.already_charged), (2, true));
    assert_eq!(h.server.total_charged(), 2, "charged once across the retry");
    let ids: std::collections::BTreeSet<&str> = h
        .server
        .received
        .iter()
        .map(|c| c.claim_id.as_str())
        .collect();
    assert_eq!(ids.len(), 1);
}

#[test]
fn max_pending_jobs_per_account() {
    let mut h = Harness::new(monday(8, 0), 100);
    h.network = Network::DieBeforeSend;
    for i in 0..limits::MAX_PENDING_JOBS_PER_ACCOUNT {
        h.job("alice", "recap-photo", 10, &format!("j{i}"));
    }
    let over = job_reply(&h.job("alice", "recap-photo", 10, "one-more")).unwrap_err();
    assert_eq!(over.code, ErrorCode::LimitExceeded);
    // Another account is not held up.
    assert!(h
        .job("bob", "recap-photo", 10, "b1")
        .iter()
        .all(|a| !matches!(a, Action::ReplyJob { result: Err(_), .. })));
}
