//! The journal against a real SQLite file in a temporary state directory.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use flex_protocol::api::{
    ChargeModel, ClaimRequest, ClockRollback, Executables, LeaseKey, Product, SessionRecord,
    Source, Window,
};
use flex_protocol::lease::SignedLease;

use super::{Enrollment, Journal, JournalError, PendingEnrollment};
use crate::core::{default_policy, Action, ClockState, HeldWindow, Origin, Persist, SessionRow};

fn t(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, h, 0, 0).unwrap()
}

pub(super) fn open_at(dir: &std::path::Path) -> Journal {
    Journal::open_in(&dir.join("state")).unwrap()
}

fn open() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open_in(&dir.path().join("state")).unwrap();
    (dir, j)
}

fn claim(id: &str) -> ClaimRequest {
    ClaimRequest {
        claim_id: id.parse().unwrap(),
        user: flex_protocol::Email::parse("ada@example.com").unwrap(),
        product: "autocad".parse().unwrap(),
        version: Some("2026".into()),
        results: None,
        renews: None,
    }
}

pub(super) fn session(id: &str, ended: Option<DateTime<Utc>>) -> SessionRow {
    SessionRow {
        record: SessionRecord {
            id: id.parse().unwrap(),
            user: flex_protocol::Email::parse("ada@example.com").unwrap(),
            product: "autocad".parse().unwrap(),
            version: None,
            source: Source::Tokens,
            window_id: Some("w1".parse().unwrap()),
            started_at: t(8),
            ended_at: ended,
        },
        account: crate::account::AccountId::from_uid(1001),
        account_name: "ada".into(),
        process: Some(crate::process::ProcessId {
            pid: 4242,
            start: 99,
        }),
        origin: Origin::Watcher,
    }
}

fn persist(j: &mut Journal, items: Vec<Persist>) {
    let actions: Vec<Action> = items.into_iter().map(Action::Persist).collect();
    j.apply(&actions).unwrap();
}

#[test]
fn opens_durable_private_and_migrated() {
    let (dir, j) = open();
    let state = dir.path().join("state");
    let sync: i64 = j
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let mode: String = j
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(super::FILE_NAME)), 0o600);
    }
    drop(j);
    // Reopening migrates nothing twice.
    let j = Journal::open_in(&state).unwrap();
    let v: i64 = j
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, super::MIGRATIONS.len() as i64);
}

#[test]
fn refuses_a_newer_schema() {
    let (dir, j) = open();
    j.conn.pragma_update(None, "user_version", 99).unwrap();
    drop(j);
    let err = Journal::open_in(&dir.path().join("state")).err().unwrap();
    assert!(matches!(err, JournalError::TooNew { found: 99, .. }));
    assert!(err.to_string().contains("upgrade flex-agent"), "{err}");
}

#[test]
fn pending_claims_survive_until_settled_in_order() {
    let (dir, mut j) = open();
    persist(
        &mut j,
        vec![
            Persist::ClaimPending(claim("c2")),
            Persist::ClaimPending(claim("c1")),
        ],
    );
    // Writing the same claim again (a resend) keeps one row and its place.
    persist(&mut j, vec![Persist::ClaimPending(claim("c2"))]);
    drop(j);
    let mut j = Journal::open_in(&dir.path().join("state")).unwrap();
    let ids: Vec<String> = j
        .load_state()
        .unwrap()
        .pending_claims
        .into_iter()
        .map(|c| c.claim_id.to_string())
        .collect();
    assert_eq!(ids, ["c2", "c1"]);
    persist(
        &mut j,
        vec![Persist::ClaimSettled {
            claim_id: "c2".parse().unwrap(),
        }],
    );
    assert_eq!(j.load_state().unwrap().pending_claims, vec![claim("c1")]);
}

#[test]
fn state_round_trips() {
    let (_dir, mut j) = open();
    let clock = ClockState {
        contact: Some(t(9)),
        since_contact: Duration::from_millis(12_345),
        checkpoint_wall: t(10),
        checkpoint_boot: Duration::from_millis(99_001),
        boot_id: Some("b-1".into()),
        high_water: t(11),
    };
    let window = |id: &str| HeldWindow {
        user: flex_protocol::Email::parse("ada@example.com").unwrap(),
        product: "autocad".parse().unwrap(),
        source: Source::Tokens,
        window: Window {
            id: id.parse().unwrap(),
            start: t(8),
            end: t(8) + chrono::Duration::days(1),
        },
        lease: SignedLease {
            kid: "k1".into(),
            payload: "cGF5".into(),
            signature: "c2ln".into(),
        },
        tokens_charged: 7,
    };
    let product = Product {
        id: "autocad".parse().unwrap(),
        name: "AutoCAD".into(),
        charge: ChargeModel::Daily { tokens: 7 },
        executables: Executables::default(),
        sample: true,
    };
    let mut policy = default_policy();
    policy.window_secs = 6;
    persist(
        &mut j,
        vec![
            Persist::Clock(clock.clone()),
            Persist::Window(window("w1")),
            Persist::Window(window("w2")),
            Persist::Policy(policy.clone()),
            Persist::RateSheet(vec![product.clone()]),
            Persist::Balance(86),
            Persist::NoticesSeen(12),
            Persist::Session(session("s-run", None)),
            Persist::Session(session("s-done", Some(t(17)))),
        ],
    );
    let s = j.load_state().unwrap();
    assert_eq!(s.clock, Some(clock));
    assert_eq!(
        s.windows,
        vec![window("w2")],
        "one window per user and product"
    );
    assert_eq!(s.policy, Some(policy));
    assert_eq!(s.products, vec![product]);
    assert_eq!(s.balance, Some(86));
    assert_eq!(s.notices_seen, Some(12));
    assert_eq!(
        s.sessions,
        vec![session("s-run", None)],
        "only open sessions"
    );
}

/// Regression: a session of a Windows account (a SID, stored with uid -1)
/// could not be read back, which stopped the agent on Windows.
#[test]
fn a_session_of_a_windows_account_round_trips() {
    let (_dir, mut j) = open();
    let mut row = session("s-win", None);
    row.account = crate::account::AccountId::new("S-1-5-21-1-2-3-1001");
    row.account_name = r"CORP\ada".into();
    row.process = Some(crate::process::ProcessId {
        pid: 4242,
        // A FILETIME creation time: 100 ns ticks since 1601.
        start: 134_000_000_000_000_000,
    });
    persist(&mut j, vec![Persist::Session(row.clone())]);
    assert_eq!(j.load_state().unwrap().sessions, vec![row]);
}

#[test]
fn uploads_are_acknowledged_by_revision() {
    let (_dir, mut j) = open();
    persist(
        &mut j,
        vec![
            Persist::Session(session("a", None)),
            Persist::Session(session("b", Some(t(12)))),
            Persist::ClockRollback(ClockRollback {
                detected_at: t(10),
                seconds: 3600,
            }),
        ],
    );
    let batch = j.heartbeat_batch().unwrap();
    assert_eq!(batch.sessions.len(), 2);
    assert_eq!(batch.clock_rollbacks.len(), 1);
    // While the upload is in flight, "a" ends and another rollback is seen.
    persist(
        &mut j,
        vec![
            Persist::Session(session("a", Some(t(13)))),
            Persist::ClockRollback(ClockRollback {
                detected_at: t(11),
                seconds: 60,
            }),
        ],
    );
    j.apply_persist([&Persist::Uploaded(
        batch.receipt(["a".parse().unwrap(), "b".parse().unwrap()].to_vec()),
    )])
    .unwrap();
    let next = j.heartbeat_batch().unwrap();
    let ids: Vec<&str> = next.sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["a"],
        "the newer revision of 'a' is still due; 'b' is done"
    );
    assert_eq!(next.sessions[0].ended_at, Some(t(13)));
    assert_eq!(next.clock_rollbacks.len(), 1);
    assert_eq!(next.clock_rollbacks[0].seconds, 60);
    j.apply_persist([&Persist::Uploaded(
        next.receipt(["a".parse().unwrap()].to_vec()),
    )])
    .unwrap();
    let empty = j.heartbeat_batch().unwrap();
    assert!(empty.sessions.is_empty() && empty.clock_rollbacks.is_empty());
    let rows: i64 = j
        .conn
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "uploaded ended sessions are deleted");
}

#[test]
fn a_session_the_server_did_not_accept_stays_due() {
    let (_dir, mut j) = open();
    persist(&mut j, vec![Persist::Session(session("a", Some(t(12))))]);
    let batch = j.heartbeat_batch().unwrap();
    j.apply_persist([&Persist::Uploaded(batch.receipt([].to_vec()))])
        .unwrap();
    assert_eq!(j.heartbeat_batch().unwrap().sessions.len(), 1);
}

#[test]
fn enrollment_round_trips() {
    let (_dir, mut j) = open();
    assert_eq!(j.enrollment().unwrap(), None);
    let e = Enrollment {
        device_id: "dev-1".into(),
        server_url: "https://flex.example.com".into(),
        lease_keys: vec![LeaseKey {
            kid: "k1".into(),
            public_key: "AAAA".into(),
        }],
    };
    j.set_enrollment(&e).unwrap();
    assert_eq!(j.enrollment().unwrap(), Some(e));
}

#[test]
fn a_pending_enrollment_request_lasts_until_the_enrollment_is_recorded() {
    let (dir, mut j) = open();
    assert_eq!(j.pending_enrollment().unwrap(), None);
    let p = PendingEnrollment {
        request_id: "fer_secret_0123456789abcdef0123456789".into(),
        server_url: "https://flex.example.com".into(),
        token_sha256: "ab12".into(),
        hostname: "ws-17".into(),
    };
    j.set_pending_enrollment(&p).unwrap();
    assert!(
        !format!("{p:?}").contains("fer_secret"),
        "Debug hides the id"
    );
    drop(j);
    // Durable: a stopped or killed agent finds it at its next start.
    let mut j = Journal::open_in(&dir.path().join("state")).unwrap();
    assert_eq!(j.pending_enrollment().unwrap(), Some(p.clone()));
    j.set_enrollment(&Enrollment {
        device_id: "dev-1".into(),
        server_url: p.server_url.clone(),
        lease_keys: Vec::new(),
    })
    .unwrap();
    assert_eq!(j.pending_enrollment().unwrap(), None);
    j.set_pending_enrollment(&p).unwrap();
    j.clear_pending_enrollment().unwrap();
    assert_eq!(j.pending_enrollment().unwrap(), None);
}

#[test]
fn corrupt_rows_are_named() {
    let (_dir, mut j) = open();
    persist(&mut j, vec![Persist::Session(session("a", None))]);
    j.conn
        .execute("UPDATE sessions SET source = 'bogus'", [])
        .unwrap();
    let err = j.load_state().unwrap_err().to_string();
    assert!(err.contains("session") && err.contains("source"), "{err}");
}

#[test]
fn a_bad_state_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = Journal::open_in(&file.join("state"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("not-a-dir") && err.starts_with("cannot"),
        "{err}"
    );
}

/// An agent that took product names the rate sheet's rule refuses could
/// journal a claim for one (`flexctl run --product AutoCAD` offline). The
/// server refuses such a claim, so after an upgrade it is left out rather
/// than failing the start; a damaged row is still named.
#[test]
fn a_pending_claim_journaled_under_the_old_product_rule_is_left_out() {
    let (_dir, mut j) = open();
    persist(&mut j, vec![Persist::ClaimPending(claim("c1"))]);
    let legacy = r#"{"claim_id":"c0","user":"ada@example.com","product":"AutoCAD"}"#;
    j.conn
        .execute(
            "INSERT INTO pending_claims (claim_id, request, created) VALUES ('c0', ?1, '2026-11-02T08:00:00Z')",
            [legacy],
        )
        .unwrap();
    let state = j.load_state().unwrap();
    let ids: Vec<&str> = state
        .pending_claims
        .iter()
        .map(|c| c.claim_id.as_str())
        .collect();
    assert_eq!(ids, ["c1"]);

    j.conn
        .execute(
            "UPDATE pending_claims SET request = '{\"claim_id\":7}' WHERE claim_id = 'c0'",
            [],
        )
        .unwrap();
    let err = j.load_state().unwrap_err().to_string();
    assert!(err.contains("pending claim"), "{err}");
}
