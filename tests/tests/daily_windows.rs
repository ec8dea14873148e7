//! R5 daily windows and R4 entitlement over real HTTP against a real server.

use flex_e2e::{t, Server};
use reqwest::Method as M;
use serde_json::json;

#[tokio::test]
async fn monday_tuesday_costs_fourteen_tokens() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T07:00:00Z").await; // a Monday
    s.buy(500).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;

    // Mon 08:00: opens [Mon 08:00, Tue 08:00) and charges 7.
    s.set_time("2026-11-02T08:00:00Z").await;
    let (_, first) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad", "version": "2026"}),
        )
        .await;
    assert_eq!(first["decision"], "granted");
    assert_eq!(first["tokens_charged"], 7);
    assert_eq!(first["source"], "tokens");
    let w1 = first["window"].clone();
    assert_eq!(t(w1["start"].as_str().unwrap()), t("2026-11-02T08:00:00Z"));
    assert_eq!(t(w1["end"].as_str().unwrap()), t("2026-11-03T08:00:00Z"));

    // Closed at 17:00 (nothing to tell the server). Tue 07:00: inside Monday's window.
    s.set_time("2026-11-03T07:00:00Z").await;
    let (_, reopen) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(reopen["tokens_charged"], 0, "{reopen}");
    assert_eq!(reopen["window"]["id"], w1["id"]);

    // Still running at Tue 08:00: the agent renews; the next window starts at the old end.
    s.set_time("2026-11-03T08:00:00Z").await;
    let (_, renewal) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad", "renews": w1["id"]}),
        )
        .await;
    assert_eq!(renewal["tokens_charged"], 7, "{renewal}");
    assert_eq!(
        t(renewal["window"]["start"].as_str().unwrap()),
        t("2026-11-03T08:00:00Z")
    );
    assert_eq!(
        t(renewal["window"]["end"].as_str().unwrap()),
        t("2026-11-04T08:00:00Z")
    );

    let charges = s.charges().await;
    let total: u64 = charges.iter().map(|c| c["tokens"].as_u64().unwrap()).sum();
    assert_eq!(total, 14);
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[0]["kind"], "window");
    assert_eq!(charges[1]["kind"], "renewal");
    assert_eq!(s.balance().await, 486);

    // A second renewal of the same window (another device, a retry with a new id)
    // gets the existing window for free.
    let (_, again) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad", "renews": w1["id"]}),
        )
        .await;
    assert_eq!(again["tokens_charged"], 0);
    assert_eq!(again["window"]["id"], renewal["window"]["id"]);
    assert_eq!(s.balance().await, 486);
}

#[tokio::test]
async fn another_version_or_device_inside_the_window_is_free() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let laptop = s.enroll().await;
    let desktop = s.enroll().await;
    let (_, a) = s
        .claim(
            &laptop,
            json!({"user": "ada@example.com", "product": "autocad", "version": "2025"}),
        )
        .await;
    assert_eq!(a["tokens_charged"], 7);
    s.set_time("2026-11-02T15:00:00Z").await;
    let (_, b) = s
        .claim(
            &desktop,
            json!({"user": "ada@example.com", "product": "autocad", "version": "2026"}),
        )
        .await;
    assert_eq!(b["tokens_charged"], 0);
    assert_eq!(a["window"]["id"], b["window"]["id"]);
    assert_eq!(s.balance().await, 93);

    // After the window with nothing running: a fresh window at the launch time.
    s.set_time("2026-11-04T10:30:00Z").await;
    let (_, c) = s
        .claim(
            &laptop,
            json!({"user": "ada@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(c["tokens_charged"], 7);
    assert_eq!(
        t(c["window"]["start"].as_str().unwrap()),
        t("2026-11-04T10:30:00Z")
    );
    assert_eq!(s.balance().await, 86);
}

#[tokio::test]
async fn subscription_is_used_before_tokens() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("sam@example.com").await;
    s.ok(
        M::POST,
        "/subscriptions",
        Some(json!({"email": "sam@example.com", "product": "revit"})),
    )
    .await;
    let dev = s.enroll().await;
    let (_, revit) = s
        .claim(&dev, json!({"user": "sam@example.com", "product": "revit"}))
        .await;
    assert_eq!(revit["source"], "subscription");
    assert_eq!(revit["tokens_charged"], 0);
    let (_, navis) = s
        .claim(
            &dev,
            json!({"user": "sam@example.com", "product": "navisworks"}),
        )
        .await;
    assert_eq!(navis["source"], "tokens");
    assert_eq!(navis["tokens_charged"], 9);
    assert_eq!(s.balance().await, 91);
    // The ledger shows both windows, the subscription one at 0 tokens.
    let charges = s.charges().await;
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[0]["source"], "subscription");
    assert_eq!(charges[0]["tokens"], 0);
}

#[tokio::test]
async fn insufficient_balance_is_denied_with_no_partial_charge() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    s.flex_user("bob@example.com").await;
    let dev = s.enroll().await;
    // 100 tokens of per-result work leaves 5: 95 tokens = 4750 photos.
    let (_, job) = s
        .claim(
            &dev,
            json!({"user": "bob@example.com", "product": "recap-photo", "results": 4750}),
        )
        .await;
    assert_eq!(job["tokens_charged"], 95);
    let (status, denied) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(denied["decision"], "denied");
    assert_eq!(denied["reason"], "out_of_tokens");
    assert_eq!(denied["balance"], 5);
    assert_eq!(s.balance().await, 5, "nothing was taken");
    assert_eq!(s.charges().await.len(), 1);
    let notices = s.notices().await;
    assert!(
        notices.iter().any(|n| n["kind"] == "out_of_tokens"),
        "{notices:?}"
    );
}

#[tokio::test]
async fn unknown_or_unassigned_users_and_products_are_denied() {
    let s = Server::start_test_clock();
    s.buy(100).await;
    s.ok(
        M::POST,
        "/users",
        Some(json!({"email": "off@example.com", "first_name": "Off", "last_name": "Flex"})),
    )
    .await;
    let dev = s.enroll().await;
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "off@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(v["reason"], "not_entitled");
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "ghost@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(v["reason"], "not_entitled");
    assert!(v["message"].as_str().unwrap().contains("not a known user"));
    s.flex_user("ada@example.com").await;
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "photoshop"}),
        )
        .await;
    assert_eq!(v["reason"], "unknown_product");
    assert_eq!(s.balance().await, 100);
}

#[tokio::test]
async fn default_assignments_allow_and_deny_lists() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(500).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let launch = |product: &'static str| {
        let s = &s;
        let dev = &dev;
        async move {
            let (_, v) = s
                .claim(dev, json!({"user": "ada@example.com", "product": product}))
                .await;
            v
        }
    };

    s.ok(
        M::PUT,
        "/default-assignments",
        Some(json!({"mode": "allow", "products": ["autocad"]})),
    )
    .await;
    assert_eq!(launch("autocad").await["decision"], "granted");
    assert_eq!(launch("maya").await["reason"], "not_entitled");

    s.ok(
        M::PUT,
        "/default-assignments",
        Some(json!({"mode": "deny", "products": ["autocad", "maya"]})),
    )
    .await;
    // A window already open is not affected by the change (R7).
    let open = launch("autocad").await;
    assert_eq!(open["decision"], "granted");
    assert_eq!(open["tokens_charged"], 0);
    assert_eq!(launch("maya").await["reason"], "not_entitled");
    assert_eq!(launch("revit").await["decision"], "granted");
    // ...but the next window is: no renewal of a denied product.
    s.set_time("2026-11-03T08:00:00Z").await;
    let (_, renewal) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad", "renews": open["window"]["id"]}),
        )
        .await;
    assert_eq!(renewal["reason"], "not_entitled");

    s.ok(
        M::PUT,
        "/default-assignments",
        Some(json!({"mode": "all", "products": []})),
    )
    .await;
    assert_eq!(launch("maya").await["decision"], "granted");

    let (status, v) = s
        .admin(
            M::PUT,
            "/default-assignments",
            Some(json!({"mode": "allow", "products": ["photoshop"]})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("photoshop"));
}

#[tokio::test]
async fn leases_verify_against_the_enrollment_key() {
    use flex_protocol::api::{ClaimResponse, LeaseKey};
    use flex_protocol::lease::LeaseVerifier;

    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let keys: Vec<LeaseKey> = serde_json::from_value(dev.enroll["lease_keys"].clone()).unwrap();
    let verifier = LeaseVerifier::from_keys(&keys).unwrap();
    let (_, v) = s
        .claim(
            &dev,
            json!({"user": "ada@example.com", "product": "autocad"}),
        )
        .await;
    let ClaimResponse::Granted(grant) = serde_json::from_value(v).unwrap() else {
        panic!("denied")
    };
    let body = verifier.verify(grant.lease.as_ref().unwrap()).unwrap();
    assert_eq!(body.user, "ada@example.com");
    assert_eq!(body.product, "autocad");
    assert_eq!(body.device_id, dev.id);
    assert_eq!(body.window_id, grant.window.unwrap().id);
    assert_eq!(body.end, t("2026-11-03T08:00:00Z"));
}
