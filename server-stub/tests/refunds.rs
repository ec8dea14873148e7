//! Refunds of short runs (R13) through the real store (a SQLite file and a
//! PostgreSQL database, test clock): what a refund writes, what it refuses,
//! what it keeps for a repeat, and how claims treat a refunded window.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use flex_protocol::api::{
    ClaimRequest, ClaimResponse, EnrollRequest, NewEnrollmentToken, NewSubscription, NewUser,
    NoticeKind, RefundRequest, RefundResponse, SessionRecord, Source, Window,
};
use flex_protocol::{Email, WindowId};
use flex_server::clock::{Clock, TestClock};
use flex_server::config::PolicyConfig;
use flex_server::rates::RateSheet;
use flex_server::store::testing::{backends, TestBackend};
use flex_server::store::{ClaimOutcome, Store, StoreError};
use serde_json::Value;

const ANN: &str = "ann@example.com";

struct World {
    store: Store,
    clock: TestClock,
    device: String,
    other_device: String,
    claims: u32,
    // Last: the store closes before its database goes.
    _backend: TestBackend,
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A world on each backend, in turn; the backend's name goes to the test's
/// output, which is shown when it fails.
fn worlds(policy: PolicyConfig) -> impl Iterator<Item = World> {
    backends().into_iter().map(move |backend| {
        eprintln!("on {}", backend.name());
        World::new(backend, policy.clone())
    })
}

impl World {
    fn new(backend: TestBackend, policy: PolicyConfig) -> World {
        let clock = TestClock::new(at("2026-11-02T08:00:00Z"));
        let store = backend.open(Arc::new(clock.clone()), policy, RateSheet::sample());
        store
            .add_user(NewUser {
                email: Email::parse(ANN).unwrap(),
                first_name: "Ann".into(),
                last_name: "Lee".into(),
            })
            .unwrap();
        store.set_flex(&Email::parse(ANN).unwrap(), true).unwrap();
        let enroll = |host: &str| {
            let token = store
                .create_enrollment_token(&NewEnrollmentToken::default())
                .unwrap()
                .token;
            store
                .enroll(&EnrollRequest {
                    enrollment_token: token,
                    hostname: host.into(),
                    platform: None,
                    agent_version: None,
                    enrollment_request_id: None,
                })
                .unwrap()
                .device_id
        };
        let device = enroll("ws-1");
        let other_device = enroll("ws-2");
        World {
            store,
            clock,
            device,
            other_device,
            claims: 0,
            _backend: backend,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn set(&self, t: &str) {
        self.clock.set(at(t));
    }

    /// A ReCap Photo job that costs `tokens` (50 photos a token), granted.
    fn photos(&mut self, tokens: u64) {
        self.claims += 1;
        let out = self
            .store
            .claim(
                &self.device,
                &ClaimRequest {
                    claim_id: format!("c{}", self.claims).parse().unwrap(),
                    user: Email::parse(ANN).unwrap(),
                    product: "recap-photo".parse().unwrap(),
                    version: None,
                    results: Some(tokens * 50),
                    renews: None,
                },
            )
            .unwrap();
        assert!(out.body.contains("granted"), "{}", out.body);
    }

    fn claim_on(
        &mut self,
        device: &str,
        product: &str,
        renews: Option<&WindowId>,
    ) -> ClaimResponse {
        self.claims += 1;
        let out = self
            .store
            .claim(
                device,
                &ClaimRequest {
                    claim_id: format!("c{}", self.claims).parse().unwrap(),
                    user: Email::parse(ANN).unwrap(),
                    product: product.parse().unwrap(),
                    version: None,
                    results: None,
                    renews: renews.cloned(),
                },
            )
            .unwrap();
        serde_json::from_str(&out.body).unwrap()
    }

    /// A launch on the first device that must be granted: its window and charge.
    fn launch(&mut self, product: &str) -> (Window, u64) {
        let device = self.device.clone();
        granted(self.claim_on(&device, product, None))
    }

    fn refund_on(
        &self,
        device: &str,
        window: impl AsRef<str>,
        product: &str,
        sessions: Vec<SessionRecord>,
    ) -> Result<ClaimOutcome, StoreError> {
        self.store.refund(
            device,
            &RefundRequest {
                window_id: window.as_ref().parse().unwrap(),
                user: Email::parse(ANN).unwrap(),
                product: product.parse().unwrap(),
                sessions,
            },
        )
    }

    fn refund(&self, window: impl AsRef<str>, sessions: Vec<SessionRecord>) -> ClaimOutcome {
        self.refund_on(&self.device, window, "autocad", sessions)
            .unwrap()
    }

    fn balance(&self) -> u64 {
        self.store.balance().unwrap().balance
    }
}

fn granted(r: ClaimResponse) -> (Window, u64) {
    match r {
        ClaimResponse::Granted(g) => (g.window.expect("a window"), g.tokens_charged),
        ClaimResponse::Denied(d) => panic!("denied: {}", d.message),
    }
}

fn session(
    id: &str,
    product: &str,
    from: &str,
    to: Option<&str>,
    window: impl AsRef<str>,
) -> SessionRecord {
    SessionRecord {
        id: id.parse().unwrap(),
        user: Email::parse(ANN).unwrap(),
        product: product.parse().unwrap(),
        version: None,
        source: Source::Tokens,
        window_id: Some(window.as_ref().parse().unwrap()),
        started_at: at(from),
        ended_at: to.map(at),
    }
}

fn refunded(out: &ClaimOutcome) -> RefundResponse {
    assert_eq!(out.status, 200, "{}", out.body);
    serde_json::from_str(&out.body).unwrap()
}

/// The message of a 409 answer.
fn refused(out: &ClaimOutcome) -> String {
    assert_eq!(out.status, 409, "{}", out.body);
    let v: Value = serde_json::from_str(&out.body).unwrap();
    assert_eq!(v["error"]["code"], "conflict", "{v}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

/// R13's example end to end through the store: AutoCAD opened at 08:00 and
/// closed at 08:04:59 is refunded at 08:05; reopened at 08:05:01 it is a new
/// window, charged: one charge in all. A repeat gets the first answer.
#[test]
fn closed_at_4_59_is_refunded_once_and_reopened_at_5_01_is_charged_again() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store.buy_tokens(100).unwrap();
        let (first, cost) = w.launch("autocad");
        assert_eq!(cost, 7);
        w.set("2026-11-02T08:05:00Z");
        let run = session(
            "s1",
            "autocad",
            "2026-11-02T08:00:00Z",
            Some("2026-11-02T08:04:59Z"),
            &first.id,
        );
        let answer = w.refund(&first.id, vec![run.clone()]);
        assert_eq!(
            refunded(&answer),
            RefundResponse {
                window_id: first.id.clone(),
                refunded_tokens: 7,
                balance: 100
            }
        );
        assert_eq!(w.balance(), 100);
        let lots = w.store.balance().unwrap().lots;
        assert_eq!(lots[0].remaining, 100, "the tokens went back to their lot");
        // The burn rate is charges less refunds; the chart's today is 100 again.
        assert_eq!(w.store.forecast().unwrap().burn_per_day, 0.0);
        assert_eq!(w.store.balance_history(1).unwrap()[0].1, 100);

        // A repeat, later and with other sessions, gets the first answer byte for
        // byte and moves nothing.
        w.set("2026-11-02T09:00:00Z");
        assert_eq!(w.refund(&first.id, vec![run]), answer);
        assert_eq!(w.refund(&first.id, vec![]), answer);
        assert_eq!(w.balance(), 100);

        // Reopened at 08:05:01: the refunded window no longer covers it.
        w.set("2026-11-02T08:05:01Z");
        let (second, cost) = w.launch("autocad");
        assert_eq!(cost, 7);
        assert_ne!(second.id, first.id);
        assert_eq!(second.start, at("2026-11-02T08:05:01Z"));
        let charges = w.store.charges(&Default::default()).unwrap();
        assert_eq!(charges.len(), 2);
        assert_eq!(charges[0].refunded_tokens, 7);
        assert_eq!(charges[0].refunded_at, Some(at("2026-11-02T08:05:00Z")));
        assert_eq!(
            (charges[1].refunded_tokens, charges[1].refunded_at),
            (0, None)
        );
        let net: u64 = charges.iter().map(|c| c.tokens - c.refunded_tokens).sum();
        assert_eq!(net, 7, "one charge in all");
        assert_eq!(w.balance(), 93);
        assert_eq!(w.store.forecast().unwrap().burn_per_day, 0.23);
    }
}

/// The sessions a request carries are stored even when the answer is "too
/// early" (which is not kept): a later request without them is refused
/// because they show AutoCAD running at 08:05, and that refusal is kept.
#[test]
fn a_run_at_the_cut_refuses_and_the_request_s_sessions_are_stored_first() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store.buy_tokens(100).unwrap();
        let (win, _) = w.launch("autocad");
        w.set("2026-11-02T08:03:00Z");
        let running = session("s1", "autocad", "2026-11-02T08:00:00Z", None, &win.id);
        let early = refused(&w.refund(&win.id, vec![running]));
        assert!(
            early.contains("from 2026-11-02 08:05:00 UTC"),
            "names the time: {early}"
        );
        w.set("2026-11-02T08:10:00Z");
        let out = w.refund(&win.id, vec![]);
        let why = refused(&out);
        assert!(
            why.contains("was running on this device at 2026-11-02 08:05:00 UTC"),
            "{why}"
        );
        assert!(why.contains("'s1'"), "{why}");
        // The verdict is kept: the session ending at 08:02 afterwards changes nothing.
        let ended = session(
            "s1",
            "autocad",
            "2026-11-02T08:00:00Z",
            Some("2026-11-02T08:02:00Z"),
            &win.id,
        );
        assert_eq!(w.refund(&win.id, vec![ended]), out);
        assert_eq!(w.balance(), 93);
        let charges = w.store.charges(&Default::default()).unwrap();
        assert_eq!(charges[0].refunded_at, None);
    }
}

/// A launch answered with the window at or after its start plus the grace
/// used it, whatever the session records say.
#[test]
fn a_launch_inside_the_window_after_the_cut_keeps_it_charged() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store.buy_tokens(100).unwrap();
        let (win, _) = w.launch("autocad");
        w.set("2026-11-02T08:06:00Z");
        let (again, cost) = w.launch("autocad");
        assert_eq!((again.id.as_str(), cost), (win.id.as_str(), 0));
        w.set("2026-11-02T08:07:00Z");
        let why = refused(&w.refund(&win.id, vec![]));
        assert!(
            why.contains("launched on this device at 2026-11-02 08:06:00 UTC"),
            "{why}"
        );
        assert_eq!(w.balance(), 93);
    }
}

/// Monday's window renewed at Tuesday 08:00, AutoCAD closed at 08:03: the
/// renewal is refunded; Monday's window, renewed, is not.
#[test]
fn a_renewal_whose_product_exits_within_the_grace_is_refunded() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store.buy_tokens(100).unwrap();
        let (monday, _) = w.launch("autocad");
        w.set("2026-11-03T08:00:00Z");
        let device = w.device.clone();
        let (tuesday, cost) = granted(w.claim_on(&device, "autocad", Some(&monday.id)));
        assert_eq!((tuesday.start, cost), (monday.end, 7));
        w.set("2026-11-03T08:20:00Z");
        let run = session(
            "s1",
            "autocad",
            "2026-11-02T08:00:00Z",
            Some("2026-11-03T08:03:00Z"),
            &monday.id,
        );
        assert_eq!(
            refunded(&w.refund(&tuesday.id, vec![run])).refunded_tokens,
            7
        );
        let why = refused(&w.refund(&monday.id, vec![]));
        assert!(why.contains("renewed"), "{why}");
        assert_eq!(w.balance(), 93);

        // The refunded renewal cannot be renewed in its turn.
        w.set("2026-11-04T08:00:00Z");
        let err = w
            .store
            .claim(
                &device,
                &ClaimRequest {
                    claim_id: "renew-refunded".parse().unwrap(),
                    user: Email::parse(ANN).unwrap(),
                    product: "autocad".parse().unwrap(),
                    version: None,
                    results: None,
                    renews: Some(tuesday.id.clone()),
                },
            )
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("refunded") && m.contains("cannot be renewed")),
            "{err}"
        );
        assert_eq!(w.balance(), 93, "the refused renewal charged nothing");
    }
}

/// 7 tokens: 5 from a lot expiring at 08:03, 2 from a younger one. Refunded at
/// 08:05, only the 2 come back; the expired lot stays as it was.
#[test]
fn a_lot_expired_meanwhile_does_not_get_its_share_back() {
    for mut w in worlds(PolicyConfig::default()) {
        // Lot 1 bought a year before 08:03, spent down to 5 by a photo job.
        w.set("2025-11-02T08:03:00Z");
        w.store.buy_tokens(100).unwrap();
        w.set("2025-11-03T08:00:00Z");
        w.store.buy_tokens(100).unwrap();
        w.photos(95);
        w.set("2026-11-02T08:00:00Z");
        let (win, _) = w.launch("autocad");
        let charges = w.store.charges(&Default::default()).unwrap();
        let shares: Vec<(i64, u64)> = charges[1]
            .lots
            .iter()
            .map(|s| (s.lot_id, s.tokens))
            .collect();
        assert_eq!(shares, vec![(1, 5), (2, 2)]);
        w.set("2026-11-02T08:05:00Z");
        let r = refunded(&w.refund(&win.id, vec![]));
        assert_eq!((r.refunded_tokens, r.balance), (2, 100));
        let lots = w.store.balance().unwrap().lots;
        assert_eq!((lots[0].remaining, lots[1].remaining), (0, 100));
        let charges = w.store.charges(&Default::default()).unwrap();
        assert_eq!(charges[1].refunded_tokens, 2);
    }
}

/// A subscription window costs 0 and is refunded with 0, recorded alike.
#[test]
fn a_subscription_window_is_refunded_with_zero_tokens() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store
            .add_subscription(NewSubscription {
                email: Email::parse(ANN).unwrap(),
                product: "revit".parse().unwrap(),
            })
            .unwrap();
        let (win, cost) = w.launch("revit");
        assert_eq!(cost, 0);
        w.set("2026-11-02T08:05:00Z");
        let out = w.refund_on(&w.device, &win.id, "revit", vec![]).unwrap();
        assert_eq!(refunded(&out).refunded_tokens, 0);
        let charges = w.store.charges(&Default::default()).unwrap();
        assert_eq!(charges[0].refunded_at, Some(w.now()));
        assert_eq!(
            w.refund_on(&w.device, &win.id, "revit", vec![]).unwrap(),
            out
        );
    }
}

/// Another device's window, a wrong product and an unknown window are
/// refused and keep nothing: the device that holds the window still gets it.
#[test]
fn requests_about_another_device_s_window_change_nothing() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store.buy_tokens(100).unwrap();
        let (win, _) = w.launch("autocad");
        w.set("2026-11-02T08:06:00Z");
        let other = w.other_device.clone();
        let err = w.refund_on(&other, &win.id, "autocad", vec![]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("not granted to this device")),
            "{err}"
        );
        let err = w
            .refund_on(&w.device, &win.id, "revit", vec![])
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("belongs to")),
            "{err}"
        );
        let err = w
            .refund_on(&w.device, "no-such-window", "autocad", vec![])
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        // An empty window id cannot reach the store: the request's type
        // refuses it as it is read (a 400 naming it, tests/tests/api_errors.rs).
        let body =
            serde_json::json!({"window_id": "", "user": ANN, "product": "autocad", "sessions": []});
        let err = serde_json::from_value::<RefundRequest>(body).unwrap_err();
        assert!(err.to_string().contains("window id '' must be"), "{err}");
        assert_eq!(w.balance(), 93);
        assert_eq!(refunded(&w.refund(&win.id, vec![])).refunded_tokens, 7);
    }
}

/// A window a second device joined cannot be vouched for by the first.
#[test]
fn a_window_granted_to_two_devices_stays_charged() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store.buy_tokens(100).unwrap();
        let (win, _) = w.launch("autocad");
        w.set("2026-11-02T08:01:00Z");
        let other = w.other_device.clone();
        let (joined, cost) = granted(w.claim_on(&other, "autocad", None));
        assert_eq!((joined.id.as_str(), cost), (win.id.as_str(), 0));
        w.set("2026-11-02T08:06:00Z");
        let why = refused(&w.refund(&win.id, vec![]));
        assert!(why.contains("another device"), "{why}");
        assert_eq!(w.balance(), 93);
    }
}

#[test]
fn refunds_off_refuse_every_window() {
    for mut w in worlds(PolicyConfig {
        short_use_grace: std::time::Duration::ZERO,
        ..PolicyConfig::default()
    }) {
        w.store.buy_tokens(100).unwrap();
        let (win, _) = w.launch("autocad");
        w.set("2026-11-02T09:00:00Z");
        let why = refused(&w.refund(&win.id, vec![]));
        assert!(why.contains("short_use_grace"), "{why}");
        assert_eq!(w.balance(), 93);
    }
}

/// 100 bought, the line at 20: a photo job of 70 tokens and AutoCAD take
/// the balance to 23, Revit to 13, which raises low_balance; Revit's refund
/// lifts it to 23, above the line, which re-arms the notice as a purchase
/// would; Revit again at 13 raises it again.
#[test]
fn a_refund_above_the_low_balance_line_re_arms_the_notice() {
    for mut w in worlds(PolicyConfig::default()) {
        w.store.buy_tokens(100).unwrap();
        w.photos(70);
        w.launch("autocad");
        let low = |w: &World| {
            w.store
                .notices()
                .unwrap()
                .iter()
                .filter(|n| n.kind == NoticeKind::LowBalance)
                .count()
        };
        assert_eq!((w.balance(), low(&w)), (23, 0));
        let (revit, _) = w.launch("revit");
        assert_eq!((w.balance(), low(&w)), (13, 1));
        w.set("2026-11-02T08:05:00Z");
        let back = refunded(&w.refund_on(&w.device, &revit.id, "revit", vec![]).unwrap());
        assert_eq!(back.balance, 23);
        w.set("2026-11-02T08:06:00Z");
        w.launch("revit");
        assert_eq!((w.balance(), low(&w)), (13, 2), "re-armed by the refund");
    }
}
