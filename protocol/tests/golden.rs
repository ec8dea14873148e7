//! Golden files pin the wire format: each sample value must serialize to exactly
//! the JSON in `tests/data/NAME.json`, and that JSON must read back to the value.
//! A deliberate format change is recorded with `UPDATE_GOLDEN=1 cargo test`.

use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use flex_protocol::api::*;
use flex_protocol::lease::SignedLease;
use flex_protocol::socket::{self, Event, OkReply, Request};
use flex_protocol::{ErrorCode, ProductId};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn t(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, h, 0, 0).unwrap()
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.json"));
    let json = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &json).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(json, golden, "{name}: serialized form changed");
    let back: T = serde_json::from_str(&golden).unwrap();
    assert_eq!(&back, value, "{name}: golden file does not read back");
}

fn lease() -> SignedLease {
    SignedLease {
        kid: "k-2026".into(),
        payload: "eyJ3aW5kb3dfaWQiOiJ3LTEifQ==".into(),
        signature: "c2lnbmF0dXJl".into(),
    }
}

#[test]
fn claim_request() {
    check(
        "claim_request",
        &ClaimRequest {
            claim_id: "c-1".parse().unwrap(),
            user: flex_protocol::Email::parse("ada@example.com").unwrap(),
            product: "autocad".parse().unwrap(),
            version: Some("2026".into()),
            results: None,
            renews: None,
        },
    );
    check(
        "claim_request_renewal",
        &ClaimRequest {
            claim_id: "c-2".parse().unwrap(),
            user: flex_protocol::Email::parse("ada@example.com").unwrap(),
            product: "autocad".parse().unwrap(),
            version: None,
            results: None,
            renews: Some("w-1".parse().unwrap()),
        },
    );
}

#[test]
fn claim_responses() {
    check(
        "claim_granted",
        &ClaimResponse::Granted(Grant {
            source: Source::Tokens,
            window: Some(Window {
                id: "w-1".parse().unwrap(),
                start: t(8),
                end: t(8) + chrono::Duration::hours(24),
            }),
            tokens_charged: 7,
            balance: 493,
            lease: Some(lease()),
        }),
    );
    check(
        "claim_denied",
        &ClaimResponse::Denied(Denial {
            reason: ErrorCode::OutOfTokens,
            message: "balance 3 does not cover autocad's 7 tokens".into(),
            balance: Some(3),
        }),
    );
}

#[test]
fn error_body() {
    check(
        "error_body",
        &ErrorBody::new(ErrorCode::InvalidRequest, "missing field `claim_id`"),
    );
}

#[test]
fn products() {
    check(
        "products",
        &ProductList {
            products: vec![
                Product {
                    id: "autocad".parse().unwrap(),
                    name: "AutoCAD".into(),
                    charge: ChargeModel::Daily { tokens: 7 },
                    executables: Executables {
                        linux: vec!["acad".into()],
                        macos: vec!["AutoCAD".into()],
                        windows: vec!["acad.exe".into()],
                        windows_version: Vec::new(),
                    },
                    sample: false,
                },
                Product {
                    id: "recap-photo".parse().unwrap(),
                    name: "ReCap Photo".into(),
                    charge: ChargeModel::PerResult { tokens: 1, per: 50 },
                    executables: Executables::default(),
                    sample: true,
                },
            ],
        },
    );
}

#[test]
fn balance_and_notices() {
    check(
        "balance",
        &Balance {
            balance: 500,
            low_balance_threshold: 100,
            lots: vec![Lot {
                id: 1,
                tokens: 500,
                remaining: 500,
                purchased_at: t(10),
                expires_at: Utc.with_ymd_and_hms(2027, 11, 2, 10, 0, 0).unwrap(),
            }],
        },
    );
    check(
        "notices",
        &NoticeList {
            notices: vec![
                Notice {
                    id: 4,
                    kind: NoticeKind::DeviceUsers,
                    message: "device d-1 (ws-17) claimed for 11 different users on 2026-11-02"
                        .into(),
                    created_at: t(10),
                },
                Notice {
                    id: 3,
                    kind: NoticeKind::LowBalance,
                    message: "balance 100 is at or below 20% of 500 tokens".into(),
                    created_at: t(9),
                },
            ],
        },
    );
}

#[test]
fn enrollment() {
    check(
        "enroll_request",
        &EnrollRequest {
            enrollment_token: "et-abc".into(),
            hostname: "ws-17".into(),
            platform: None,
            agent_version: None,
            enrollment_request_id: None,
        },
    );
    check(
        "enroll_request_platform",
        &EnrollRequest {
            enrollment_token: "fet_abc".into(),
            hostname: "ws-17".into(),
            platform: Some("linux".into()),
            agent_version: Some("0.2.0".into()),
            enrollment_request_id: None,
        },
    );
    check(
        "enroll_request_idempotent",
        &EnrollRequest {
            enrollment_token: "fet_abc".into(),
            hostname: "ws-17".into(),
            platform: Some("windows".into()),
            agent_version: Some("0.2.0".into()),
            enrollment_request_id: Some("fer_5f0c2a4e9b7d4c1e8a3f6b2d9e0c7a1b".into()),
        },
    );
    check(
        "enroll_response",
        &EnrollResponse {
            device_id: "d-1".into(),
            device_token: "dt-secret".into(),
            lease_keys: vec![LeaseKey {
                kid: "k-2026".into(),
                public_key: "AAAA".into(),
            }],
        },
    );
}

/// Every request, reply and event of the local socket. `docs/local-api.md`
/// shows each of these as its example (checked by `tests/local_api_doc.rs`).
#[test]
fn socket_requests() {
    check(
        "socket_hello",
        &Request::Hello {
            protocol: 1,
            client: Some("my-wrapper 1.0".into()),
        },
    );
    check(
        "socket_launch",
        &Request::Launch {
            product: "autocad".parse().unwrap(),
            version: Some("2026".into()),
            pid: None,
            user: None,
        },
    );
    check(
        "socket_attach",
        &Request::Attach {
            session: "5f0c7a52-93c1-4d4e-8a51-0b9e3f1c2d77".parse().unwrap(),
            pid: 48213,
        },
    );
    check(
        "socket_exit",
        &Request::Exit {
            session: "5f0c7a52-93c1-4d4e-8a51-0b9e3f1c2d77".parse().unwrap(),
            code: Some(0),
        },
    );
    check(
        "socket_result",
        &Request::Result {
            product: "recap-photo".parse().unwrap(),
            count: 85,
            job: Some("survey-2026-11-02".into()),
            user: None,
        },
    );
    check("socket_status", &Request::Status);
    check("socket_subscribe", &Request::Subscribe);
}

#[test]
fn socket_replies() {
    check(
        "socket_hello_reply",
        &OkReply::new(socket::HelloReply {
            protocol: 1,
            agent_version: "0.1.0".into(),
            account: "ada".into(),
            uid: 1000,
        }),
    );
    check(
        "socket_launch_reply",
        &OkReply::new(socket::LaunchReply {
            session: "5f0c7a52-93c1-4d4e-8a51-0b9e3f1c2d77".parse().unwrap(),
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            source: Source::Tokens,
            window_end: t(8) + chrono::Duration::hours(24),
            tokens_charged: 7,
            balance: Some(493),
            offline: false,
            close_grace_secs: Some(30),
        }),
    );
    check("socket_ok", &OkReply::new(socket::Empty {}));
    check(
        "socket_result_reply",
        &OkReply::new(socket::ResultReply {
            product: "recap-photo".parse().unwrap(),
            product_name: Some("ReCap Photo".into()),
            job: "survey-2026-11-02".into(),
            tokens_charged: 2,
            balance: 491,
            already_charged: false,
        }),
    );
    check(
        "socket_status_reply",
        &OkReply::new(socket::StatusReply {
            agent_version: "0.1.0".into(),
            server_url: "https://flex.example.com".into(),
            device_id: Some("d-1".into()),
            credential_store: "keyring".into(),
            detection: "proc-connector".into(),
            sessions: vec![socket::SessionStatus {
                session: "5f0c7a52-93c1-4d4e-8a51-0b9e3f1c2d77".parse().unwrap(),
                user: "ada@example.com".into(),
                product: "autocad".parse().unwrap(),
                product_name: Some("AutoCAD".into()),
                version: Some("2026".into()),
                pid: Some(48213),
                source: Source::Tokens,
                started_at: t(8),
                window_end: t(8) + chrono::Duration::hours(24),
                origin: "wrapper".into(),
                state: "running".into(),
                paused_since: None,
                closes_at: None,
            }],
            sessions_omitted: 0,
            windows: vec![socket::WindowStatus {
                user: "ada@example.com".into(),
                product: "autocad".parse().unwrap(),
                product_name: Some("AutoCAD".into()),
                source: Source::Tokens,
                tokens_charged: 7,
                start: t(8),
                end: t(8) + chrono::Duration::hours(24),
            }],
            windows_omitted: 0,
            balance: Some(493),
            last_server_contact: Some(t(9)),
            offline_seconds_left: Some(86_400),
            online: true,
        }),
    );
    check(
        "socket_error",
        &socket::ErrReply::new(
            ErrorCode::OutOfTokens,
            "AutoCAD costs 7 tokens for 24 hours and the balance is 3; ask your license admin to buy tokens",
        )
        .about(Some("AutoCAD".into())),
    );
}

#[test]
fn socket_events() {
    let name = |n: &str| Some(n.to_string());
    check(
        "socket_event_charged",
        &Event::Charged {
            product: "autocad".parse().unwrap(),
            product_name: name("AutoCAD"),
            tokens: 7,
            balance: 493,
            window_end: Some(t(8) + chrono::Duration::hours(24)),
            renewal: false,
        },
    );
    check(
        "socket_event_low_balance",
        &Event::LowBalance { balance: 95 },
    );
    check(
        "socket_event_out_of_tokens",
        &Event::OutOfTokens {
            product: "revit".parse().unwrap(),
            product_name: name("Revit"),
        },
    );
    check(
        "socket_event_launch_denied",
        &Event::LaunchDenied {
            product: "maya".parse().unwrap(),
            product_name: name("Maya"),
            reason: ErrorCode::NotEntitled,
            message: "ada@example.com has no subscription to Maya and Flex does not include it; ask your license admin".into(),
        },
    );
    check(
        "socket_event_offline_warning",
        &Event::OfflineWarning {
            product: "autocad".parse().unwrap(),
            product_name: name("AutoCAD"),
            seconds_left: 300,
            deadline: t(12),
        },
    );
    check(
        "socket_event_renewal_failed",
        &Event::RenewalFailed {
            product: "autocad".parse().unwrap(),
            product_name: name("AutoCAD"),
            reason: ErrorCode::OutOfTokens,
            closes_at: t(8) + chrono::Duration::minutes(30),
        },
    );
    check(
        "socket_event_product_closed",
        &Event::ProductClosed {
            product: "autocad".parse().unwrap(),
            product_name: name("AutoCAD"),
            reason: socket::CloseReason::Offline,
            message: "this workstation has not reached the license server for 24 h".into(),
        },
    );
    check(
        "socket_event_clock_rollback",
        &Event::ClockRollback { seconds: -3600 },
    );
    let acad = || {
        (
            ProductId::parse("autocad").unwrap(),
            Some("AutoCAD".to_string()),
        )
    };
    check(
        "socket_event_product_closing",
        &Event::ProductClosing {
            product: acad().0,
            product_name: acad().1,
            reason: socket::CloseReason::Offline,
            message: "this workstation has not reached the license server for 24 h".into(),
            deadline: t(9),
        },
    );
    check(
        "socket_event_close_windows",
        &Event::CloseWindows {
            pid: 48213,
            product: acad().0,
            product_name: acad().1,
            kill_at: t(9),
        },
    );
    check(
        "socket_event_refunded",
        &Event::Refunded {
            product: acad().0,
            product_name: acad().1,
            tokens: 7,
            balance: 500,
            grace_secs: 300,
        },
    );
    check(
        "socket_event_renewal_notice",
        &Event::RenewalNotice {
            product: acad().0,
            product_name: acad().1,
            at: t(8) + chrono::Duration::hours(24),
            tokens: 7,
        },
    );
    check(
        "socket_event_paused",
        &Event::Paused {
            product: acad().0,
            product_name: acad().1,
            since: t(8),
        },
    );
    check(
        "socket_event_resumed",
        &Event::Resumed {
            product: acad().0,
            product_name: acad().1,
            tokens: 7,
        },
    );
    check("socket_event_back_online", &Event::BackOnline);
}

#[test]
fn idle_and_short_use() {
    check(
        "socket_idle",
        &Request::Idle {
            idle_secs: 840,
            locked: false,
        },
    );
    check(
        "socket_closing",
        &Request::Closing {
            pid: 48213,
            windows: 2,
        },
    );
    check(
        "refund_request",
        &RefundRequest {
            window_id: "w-1".parse().unwrap(),
            user: flex_protocol::Email::parse("ada@example.com").unwrap(),
            product: "autocad".parse().unwrap(),
            sessions: vec![SessionRecord {
                id: "s-1".parse().unwrap(),
                user: flex_protocol::Email::parse("ada@example.com").unwrap(),
                product: "autocad".parse().unwrap(),
                version: None,
                source: Source::Tokens,
                window_id: Some("w-1".parse().unwrap()),
                started_at: t(8),
                ended_at: Some(t(8) + chrono::Duration::minutes(3)),
            }],
        },
    );
    check(
        "refund_response",
        &RefundResponse {
            window_id: "w-1".parse().unwrap(),
            refunded_tokens: 7,
            balance: 500,
        },
    );
}

#[test]
fn older_peers_still_read_newer_lines() {
    // A line from an agent before display names parses, without the name.
    let old =
        r#"{"event":"charged","product":"autocad","tokens":7,"balance":493,"window_end":null}"#;
    match serde_json::from_str::<Event>(old).unwrap() {
        Event::Charged { product_name, .. } => assert_eq!(product_name, None),
        other => panic!("{other:?}"),
    }
    // Fields an older reader does not know are ignored.
    let newer = r#"{"ok":true,"session":"s","product":"autocad","product_name":"AutoCAD","source":"tokens","window_end":"2026-11-03T08:00:00Z","tokens_charged":0,"some_future_field":[1,2]}"#;
    let r: socket::LaunchReply = socket::parse_reply(newer).unwrap().unwrap();
    assert_eq!(r.product_name.as_deref(), Some("AutoCAD"));
}

#[test]
fn enrollment_keys_and_devices() {
    check(
        "enrollment_token_new",
        &NewEnrollmentToken {
            uses: Some(1000),
            ttl: Some("30d".into()),
            note: Some("Berlin rollout".into()),
        },
    );
    check(
        "enrollment_token",
        &EnrollmentToken {
            token: "fet_secret".into(),
            expires_at: t(8) + chrono::Duration::days(30),
            id: "ek_1a2b3c4d5e6f".into(),
            uses_left: 1000,
            uses: 1000,
            note: Some("Berlin rollout".into()),
        },
    );
    check(
        "enrollment_tokens",
        &EnrollmentTokenList {
            enrollment_tokens: vec![EnrollmentTokenInfo {
                id: "ek_1a2b3c4d5e6f".into(),
                note: None,
                uses: 3,
                uses_left: 0,
                created_at: t(8),
                expires_at: t(8) + chrono::Duration::days(7),
                revoked_at: None,
                state: EnrollmentTokenState::UsedUp,
            }],
        },
    );
    check(
        "devices",
        &DeviceList {
            devices: vec![DeviceInfo {
                id: "d-1".into(),
                hostname: "ws-17".into(),
                platform: Some("linux".into()),
                agent_version: Some("0.2.0".into()),
                enrolled_at: t(8),
                last_seen: Some(t(9)),
                revoked: true,
                revoked_at: Some(t(10)),
                enrollment_token: Some("ek_1a2b3c4d5e6f".into()),
            }],
        },
    );
    check(
        "user_check",
        &UserCheck {
            email: flex_protocol::Email::parse("ada@example.com").unwrap(),
            known: true,
        },
    );
    check(
        "error_device_revoked",
        &ErrorBody::new(
            ErrorCode::DeviceRevoked,
            "device d-1 was revoked by an admin: enroll this workstation again",
        ),
    );
}

fn day(y: i32, m: u32, d: u32) -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

#[test]
fn reports() {
    use flex_protocol::reports::*;
    check(
        "usage_report",
        &UsageReport {
            from: day(2026, 11, 1),
            to: day(2026, 11, 30),
            timezone: "Europe/Paris".into(),
            by: ReportBy::User,
            total_tokens: 119,
            rows: vec![UsageRow {
                key: "ada@example.com".into(),
                tokens: 119,
                usage_days: 17,
                users: None,
                products: Some(1),
                weeks: vec![WeekUsage {
                    week_start: day(2026, 10, 26),
                    tokens: 7,
                    usage_days: 1,
                }],
            }],
        },
    );
    check(
        "recommendations",
        &RecommendationList {
            month: "2026-11".into(),
            recommendations: vec![Recommendation {
                email: "ada@example.com".into(),
                product: "autocad".parse().unwrap(),
                usage_days: 17,
                current: Plan::Flex,
                recommend: Plan::Subscription,
                tokens: 119,
                reason: "used on 17 days in 2026-11, more than 7".into(),
            }],
        },
    );
    check(
        "estimate_request",
        &EstimateRequest {
            months: 12,
            rows: Some(vec![EstimateInput {
                product: "autocad".parse().unwrap(),
                users: 10,
                days_per_month: 4.0,
            }]),
            from_usage: None,
        },
    );
    check(
        "estimate_request_from_usage",
        &EstimateRequest {
            months: 3,
            rows: None,
            from_usage: Some(UsagePeriod {
                from: day(2026, 9, 1),
                to: day(2026, 11, 30),
            }),
        },
    );
    check(
        "estimate",
        &Estimate {
            months: 12,
            tokens_per_month: 280,
            tokens_total: 3360,
            packs: vec![
                PackCount {
                    size: 2500,
                    count: 1,
                },
                PackCount {
                    size: 500,
                    count: 1,
                },
                PackCount {
                    size: 100,
                    count: 4,
                },
            ],
            packs_tokens: 3400,
            rows: vec![EstimateRow {
                product: "autocad".parse().unwrap(),
                users: 10,
                days_per_month: 4.0,
                tokens_per_month: 280,
                subscription_cheaper: false,
            }],
        },
    );
    check(
        "forecast",
        &Forecast {
            balance: 450,
            burn_per_day: 12.5,
            days_left: Some(36),
            empty_on: Some(day(2026, 12, 8)),
            expiring_unused: vec![ExpiringLot {
                lot_id: 1,
                remaining: 100,
                expires_at: t(10),
                projected_unused: 40,
            }],
        },
    );
}
