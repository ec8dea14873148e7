//! Every request that names a product, claim, session or window refuses a
//! bad id as it is deserialised, with a message naming the value and the
//! rule: no handler ever sees it.

use flex_protocol::api::{
    ClaimRequest, DefaultAssignments, HeartbeatRequest, NewSubscription, NewUser, RefundRequest,
    Subscription, User, UserCheck,
};
use flex_protocol::reports::EstimateRequest;
use flex_protocol::socket::Request;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

const PRODUCT_RULE: &str = "is not a product id: 1-64 lowercase letters, digits or dashes";
const ID_RULE: &str = "must be 1-128 printable characters without spaces";

/// `body` with `path` (a JSON pointer) set to `value`.
fn with(mut body: Value, path: &str, value: Value) -> Value {
    *body.pointer_mut(path).unwrap() = value;
    body
}

/// Deserialises `good` (which must pass), then each bad variant, which must
/// fail with `want` in the message.
fn refused<T: DeserializeOwned>(good: &Value, bad: &[(&str, Value, String)]) {
    serde_json::from_value::<T>(good.clone()).unwrap_or_else(|e| panic!("{good}: {e}"));
    for (path, value, want) in bad {
        let body = with(good.clone(), path, value.clone());
        let e = serde_json::from_value::<T>(body.clone())
            .err()
            .unwrap_or_else(|| panic!("{body} was accepted"))
            .to_string();
        assert!(e.contains(want.as_str()), "{body}: {e}");
    }
}

fn session() -> Value {
    json!({"id": "s1", "user": "ada@example.com", "product": "autocad", "source": "tokens",
           "window_id": "w1", "started_at": "2026-11-02T08:00:00Z"})
}

#[test]
fn a_claim_with_a_bad_id_is_refused() {
    refused::<ClaimRequest>(
        &json!({"claim_id": "c1", "user": "ada@example.com", "product": "autocad", "renews": "w1"}),
        &[
            (
                "/product",
                json!("AutoCAD"),
                format!("product 'AutoCAD' {PRODUCT_RULE}"),
            ),
            (
                "/product",
                json!("acad.exe"),
                format!("product 'acad.exe' {PRODUCT_RULE}"),
            ),
            ("/product", json!("a".repeat(65)), PRODUCT_RULE.to_string()),
            (
                "/claim_id",
                json!("two words"),
                format!("claim_id 'two words' {ID_RULE}"),
            ),
            ("/claim_id", json!(""), format!("claim_id '' {ID_RULE}")),
            (
                "/renews",
                json!("w 1"),
                format!("window id 'w 1' {ID_RULE}"),
            ),
        ],
    );
}

#[test]
fn a_refund_request_with_a_bad_id_is_refused() {
    refused::<RefundRequest>(
        &json!({"window_id": "w1", "user": "ada@example.com", "product": "autocad",
                "sessions": [session()]}),
        &[
            (
                "/window_id",
                json!("w\t1"),
                format!("window id 'w\t1' {ID_RULE}"),
            ),
            (
                "/product",
                json!("Revit"),
                format!("product 'Revit' {PRODUCT_RULE}"),
            ),
            (
                "/sessions/0/id",
                json!("s 1"),
                format!("session id 's 1' {ID_RULE}"),
            ),
            (
                "/sessions/0/product",
                json!("Maya"),
                format!("product 'Maya' {PRODUCT_RULE}"),
            ),
            (
                "/sessions/0/window_id",
                json!(""),
                format!("window id '' {ID_RULE}"),
            ),
        ],
    );
}

#[test]
fn a_heartbeat_with_a_bad_session_record_is_refused() {
    refused::<HeartbeatRequest>(
        &json!({"sessions": [session()]}),
        &[
            (
                "/sessions/0/id",
                json!("x".repeat(129)),
                ID_RULE.to_string(),
            ),
            (
                "/sessions/0/product",
                json!("auto cad"),
                format!("product 'auto cad' {PRODUCT_RULE}"),
            ),
            (
                "/sessions/0/window_id",
                json!("w 1"),
                format!("window id 'w 1' {ID_RULE}"),
            ),
        ],
    );
}

#[test]
fn admin_requests_naming_a_bad_product_are_refused() {
    refused::<NewSubscription>(
        &json!({"email": "ada@example.com", "product": "revit"}),
        &[(
            "/product",
            json!("Revit"),
            format!("product 'Revit' {PRODUCT_RULE}"),
        )],
    );
    refused::<DefaultAssignments>(
        &json!({"mode": "allow", "products": ["autocad", "revit"]}),
        &[(
            "/products/1",
            json!("REVIT"),
            format!("product 'REVIT' {PRODUCT_RULE}"),
        )],
    );
    refused::<EstimateRequest>(
        &json!({"months": 12, "rows": [{"product": "autocad", "users": 2, "days_per_month": 4.0}]}),
        &[(
            "/rows/0/product",
            json!("AutoCAD"),
            format!("product 'AutoCAD' {PRODUCT_RULE}"),
        )],
    );
}

const EMAIL_RULE: &str = "is not an email address";

/// The admin API's users and subscriptions name their user by a checked
/// [`flex_protocol::Email`]: a bad address is refused as the body is read,
/// and a good one arrives trimmed and lowercased, so no handler or store
/// function parses it again. Answers are read the same way by flex-admin and
/// `flexctl doctor`.
#[test]
fn admin_requests_and_answers_naming_a_bad_email_are_refused() {
    fn bad(path: &str) -> [(&str, Value, String); 4] {
        [
            ("nope", "'nope'"),
            ("ada@localhost", "'ada@localhost'"),
            (" a b@example.com ", "'a b@example.com'"),
            ("", "''"),
        ]
        .map(|(v, quoted)| (path, json!(v), format!("{quoted} {EMAIL_RULE}")))
    }
    refused::<NewUser>(
        &json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}),
        &bad("/email"),
    );
    refused::<NewSubscription>(
        &json!({"email": "ada@example.com", "product": "revit"}),
        &bad("/email"),
    );
    refused::<Subscription>(
        &json!({"email": "ada@example.com", "product": "revit",
                "created_at": "2026-11-02T08:00:00Z"}),
        &bad("/email"),
    );
    refused::<User>(
        &json!({"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
                "flex_assigned": true, "subscriptions": []}),
        &bad("/email"),
    );
    refused::<UserCheck>(
        &json!({"email": "ada@example.com", "known": true}),
        &bad("/email"),
    );

    let new: NewUser = serde_json::from_value(
        json!({"email": "  Ada@Example.COM ", "first_name": "Ada", "last_name": "Lovelace"}),
    )
    .unwrap();
    assert_eq!(new.email.as_str(), "ada@example.com");
    let sub: NewSubscription =
        serde_json::from_value(json!({"email": "GRACE@example.com\t", "product": "revit"}))
            .unwrap();
    assert_eq!(sub.email.as_str(), "grace@example.com");
    // Written back in the normal form.
    assert_eq!(
        serde_json::to_value(&new).unwrap()["email"],
        json!("ada@example.com")
    );
}

#[test]
fn socket_lines_with_a_bad_id_are_refused() {
    refused::<Request>(
        &json!({"op": "launch", "product": "autocad"}),
        &[
            (
                "/product",
                json!("AutoCAD"),
                format!("product 'AutoCAD' {PRODUCT_RULE}"),
            ),
            (
                "/product",
                json!("acad:2026"),
                format!("product 'acad:2026' {PRODUCT_RULE}"),
            ),
        ],
    );
    refused::<Request>(
        &json!({"op": "result", "product": "recap-photo", "count": 3}),
        &[(
            "/product",
            json!("ReCap_Photo"),
            format!("product 'ReCap_Photo' {PRODUCT_RULE}"),
        )],
    );
    refused::<Request>(
        &json!({"op": "exit", "session": "s1"}),
        &[(
            "/session",
            json!("s 1"),
            format!("session id 's 1' {ID_RULE}"),
        )],
    );
    refused::<Request>(
        &json!({"op": "attach", "session": "s1", "pid": 7}),
        &[("/session", json!(""), format!("session id '' {ID_RULE}"))],
    );
}
