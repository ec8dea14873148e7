//! Authentication, body caps and malformed input: a clear error and no change.

use flex_e2e::{Server, ServerOpts, ADMIN_TOKEN};
use reqwest::Method as M;
use serde_json::json;

#[tokio::test]
async fn admin_and_device_tokens_are_not_interchangeable() {
    let s = Server::start_test_clock();
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let claim = json!({"claim_id": "c1", "user": "ada@example.com", "product": "autocad"});

    let (status, v) = s.call(M::GET, "/v1/admin/balance", "", None).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (status, _) = s.call(M::GET, "/v1/admin/balance", "wrong", None).await;
    assert_eq!(status, 401);
    let (status, _) = s.call(M::GET, "/v1/admin/balance", &dev.token, None).await;
    assert_eq!(status, 401, "a device token is not an admin token");
    let (status, _) = s
        .call(
            M::POST,
            "/v1/agent/claims",
            ADMIN_TOKEN,
            Some(claim.clone()),
        )
        .await;
    assert_eq!(status, 401, "the admin token is not a device token");
    let (status, _) = s
        .call(M::POST, "/v1/agent/claims", "fdt_forged", Some(claim))
        .await;
    assert_eq!(status, 401);
    assert!(s.charges().await.is_empty());
}

#[tokio::test]
async fn enrollment_tokens_are_single_use() {
    let s = Server::start_test_clock();
    let t = s.ok(M::POST, "/enrollment-tokens", Some(json!({}))).await;
    let body = json!({"enrollment_token": t["token"], "hostname": "ws-1"});
    let (status, _) = s
        .call(M::POST, "/v1/agent/enroll", "", Some(body.clone()))
        .await;
    assert_eq!(status, 200);
    let (status, v) = s.call(M::POST, "/v1/agent/enroll", "", Some(body)).await;
    assert_eq!(status, 401);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("enrolled 1 device(s), its limit"));
    let (status, _) = s
        .call(
            M::POST,
            "/v1/agent/enroll",
            "",
            Some(json!({"enrollment_token": "fet_guess", "hostname": "ws-2"})),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn malformed_bodies_name_the_problem_and_change_nothing() {
    let s = Server::start_test_clock();
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;

    let (status, v) = s
        .call(
            M::POST,
            "/v1/agent/claims",
            &dev.token,
            Some(json!({"user": "ada@example.com", "product": "autocad"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "invalid_request");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("claim_id"),
        "{v}"
    );

    let (status, v) = s
        .admin(M::POST, "/token-lots", Some(json!({"tokens": "many"})))
        .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{v}"
    );

    let resp = s
        .http
        .post(format!("{}/v1/admin/users", s.url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{v}"
    );

    let (status, v) = s
        .admin(
            M::POST,
            "/users",
            Some(json!({"email": "nope", "first_name": "A", "last_name": "B"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("'nope'"));

    let (status, v) = s
        .claim(&dev, json!({"claim_id": "bad id with spaces", "user": "ada@example.com", "product": "autocad"}))
        .await;
    assert_eq!(status, 400, "{v}");

    let big = json!({"email": "x".repeat(2 * 1024 * 1024), "first_name": "A", "last_name": "B"});
    let (status, v) = s.admin(M::POST, "/users", Some(big)).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], "payload_too_large");

    let (status, v) = s.admin(M::GET, "/no-such-thing", None).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "not_found");

    assert_eq!(s.balance().await, 100);
    assert!(s.charges().await.is_empty());
    assert_eq!(
        s.ok(M::GET, "/users", None).await["users"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Ids follow their rules on every request (the rate sheet's for products,
/// 1-128 printable characters for claim, session and window ids), checked as
/// the body is read: a 400 naming the value, and nothing changes. Session
/// records in heartbeats and refund requests were stored whatever their
/// product or window id said until the wire types carried typed ids.
#[tokio::test]
async fn bad_ids_are_refused_as_the_body_is_read_and_change_nothing() {
    let s = Server::start_test_clock();
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let refused = |(status, v): (u16, serde_json::Value), want: &str| {
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{m}");
    };
    let product_rule = "is not a product id: 1-64 lowercase letters, digits or dashes";
    let id_rule = "must be 1-128 printable characters without spaces";

    let claim = |product: &str, claim_id: &str| json!({"claim_id": claim_id, "user": "ada@example.com", "product": product});
    refused(
        s.claim(&dev, claim("AutoCAD", "c1")).await,
        &format!("product 'AutoCAD' {product_rule}"),
    );
    refused(
        s.claim(&dev, claim("autocad", "c 1")).await,
        &format!("claim_id 'c 1' {id_rule}"),
    );
    let mut renewal = claim("autocad", "c2");
    renewal["renews"] = json!("w 1");
    refused(
        s.claim(&dev, renewal).await,
        &format!("window id 'w 1' {id_rule}"),
    );

    let record = |id: &str, product: &str, window: &str| {
        json!({"id": id, "user": "ada@example.com", "product": product, "source": "tokens",
               "window_id": window, "started_at": "2026-11-02T08:00:00Z"})
    };
    for (rec, want) in [
        (
            record("s1", "Revit", "w1"),
            format!("product 'Revit' {product_rule}"),
        ),
        (
            record("s1", "revit", "w 1"),
            format!("window id 'w 1' {id_rule}"),
        ),
        (
            record("s 1", "revit", "w1"),
            format!("session id 's 1' {id_rule}"),
        ),
    ] {
        let body = json!({"sessions": [rec]});
        refused(
            s.call(M::POST, "/v1/agent/heartbeat", &dev.token, Some(body))
                .await,
            &want,
        );
        let refund = json!({"window_id": "w1", "user": "ada@example.com", "product": "autocad",
                            "sessions": [rec]});
        refused(
            s.call(M::POST, "/v1/agent/refunds", &dev.token, Some(refund))
                .await,
            &want,
        );
    }
    let refund = json!({"window_id": "", "user": "ada@example.com", "product": "autocad",
                        "sessions": []});
    refused(
        s.call(M::POST, "/v1/agent/refunds", &dev.token, Some(refund))
            .await,
        &format!("window id '' {id_rule}"),
    );

    refused(
        s.admin(
            M::POST,
            "/subscriptions",
            Some(json!({"email": "ada@example.com", "product": "Revit"})),
        )
        .await,
        &format!("product 'Revit' {product_rule}"),
    );
    refused(
        s.admin(
            M::PUT,
            "/default-assignments",
            Some(json!({"mode": "deny", "products": ["AutoCAD"]})),
        )
        .await,
        &format!("product 'AutoCAD' {product_rule}"),
    );
    refused(
        s.admin(M::DELETE, "/subscriptions/ada@example.com/Revit", None)
            .await,
        &format!("product 'Revit' {product_rule}"),
    );

    // Nothing moved: no charge, no subscription, Flex still opens every product.
    assert_eq!(s.balance().await, 100);
    assert!(s.charges().await.is_empty());
    let users = s.ok(M::GET, "/users", None).await;
    assert_eq!(users["users"][0]["subscriptions"], json!([]), "{users}");
    let defaults = s.ok(M::GET, "/default-assignments", None).await;
    assert_eq!(defaults["mode"], "all", "{defaults}");
    // The ids those requests named are free: the same claim id charges once.
    let (status, v) = s.claim(&dev, claim("autocad", "c1")).await;
    assert_eq!((status, &v["decision"]), (200, &json!("granted")), "{v}");
    assert_eq!(s.balance().await, 93);
}

/// A user's email, in a body or a path, is checked as the request is read
/// (a 400 naming the value) and nothing changes. The path's email is read
/// before the body, so a bad address is named even when the body is wrong too;
/// a device's user check names the value once (it was quoted twice).
#[tokio::test]
async fn bad_emails_are_refused_as_the_request_is_read_and_change_nothing() {
    let s = Server::start_test_clock();
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    let refused = |(status, v): (u16, serde_json::Value), want: &str| {
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{m}");
    };

    for email in ["not-an-email", "ada@localhost", "ada @example.com", ""] {
        let want = format!("'{email}' is not an email address");
        refused(
            s.admin(
                M::POST,
                "/users",
                Some(json!({"email": email, "first_name": "B", "last_name": "C"})),
            )
            .await,
            &want,
        );
        refused(
            s.admin(
                M::POST,
                "/subscriptions",
                Some(json!({"email": email, "product": "revit"})),
            )
            .await,
            &want,
        );
    }
    for email in ["not-an-email", "ada@example..com", "ada%20@example.com"] {
        let shown = email.replace("%20", " ");
        let want = format!("'{shown}' is not an email address");
        refused(
            s.admin(
                M::PUT,
                &format!("/users/{email}/flex"),
                Some(json!({"assigned": false})),
            )
            .await,
            &want,
        );
        // The path is read before the body: the address is what is named.
        refused(
            s.admin(
                M::PUT,
                &format!("/users/{email}/flex"),
                Some(json!({"assigned": "no"})),
            )
            .await,
            &want,
        );
        refused(
            s.admin(M::DELETE, &format!("/subscriptions/{email}/revit"), None)
                .await,
            &want,
        );
        let (status, v) = s
            .call(
                M::GET,
                &format!("/v1/agent/users/{email}"),
                &dev.token,
                None,
            )
            .await;
        assert_eq!((status, &v["error"]["message"]), (400, &json!(want)), "{v}");
        // A filter that names no address is an error, not an empty ledger.
        refused(
            s.admin(M::GET, &format!("/charges?user={email}"), None)
                .await,
            &format!("user: {want}"),
        );
    }

    // Nothing moved: Ada alone, still on Flex, with no subscription.
    let users = s.ok(M::GET, "/users", None).await;
    assert_eq!(
        users["users"],
        json!([{"email": "ada@example.com", "first_name": "Test", "last_name": "User",
                "flex_assigned": true, "subscriptions": []}]),
        "{users}"
    );
}

/// An address written with capitals or spaces around it, in a body or a
/// path, names the one user stored in lower case.
#[tokio::test]
async fn emails_are_stored_and_answered_trimmed_and_lowercase() {
    let s = Server::start_test_clock();
    let dev = s.enroll().await;
    let (status, v) = s
        .admin(
            M::POST,
            "/users",
            Some(json!({"email": "  Grace@Example.COM ", "first_name": "Grace", "last_name": "Hopper"})),
        )
        .await;
    assert_eq!(
        (status, &v["email"]),
        (201, &json!("grace@example.com")),
        "{v}"
    );
    let (status, v) = s
        .admin(
            M::POST,
            "/users",
            Some(json!({"email": "GRACE@example.com", "first_name": "G", "last_name": "H"})),
        )
        .await;
    assert_eq!(status, 409, "the same user: {v}");
    let (status, v) = s
        .admin(
            M::POST,
            "/subscriptions",
            Some(json!({"email": "\tgrace@EXAMPLE.com", "product": "revit"})),
        )
        .await;
    assert_eq!(
        (status, &v["email"]),
        (201, &json!("grace@example.com")),
        "{v}"
    );
    let v = s
        .ok(
            M::PUT,
            "/users/%20Grace@Example.Com%20/flex",
            Some(json!({"assigned": true})),
        )
        .await;
    assert_eq!(v["email"], "grace@example.com", "{v}");
    let (status, v) = s
        .call(
            M::GET,
            "/v1/agent/users/GRACE@example.COM",
            &dev.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"email": "grace@example.com", "known": true}));

    let users = s.ok(M::GET, "/users", None).await;
    assert_eq!(
        users["users"],
        json!([{"email": "grace@example.com", "first_name": "Grace", "last_name": "Hopper",
                "flex_assigned": true, "subscriptions": ["revit"]}]),
        "{users}"
    );
    let (status, _) = s
        .admin(M::DELETE, "/subscriptions/Grace@Example.com/revit", None)
        .await;
    assert_eq!(status, 204);
    let users = s.ok(M::GET, "/users", None).await;
    assert_eq!(users["users"][0]["subscriptions"], json!([]), "{users}");
}

#[tokio::test]
async fn test_clock_exists_only_when_asked_for() {
    let s = Server::start(ServerOpts::default());
    let (status, _) = s
        .admin(
            M::PUT,
            "/test-clock",
            Some(json!({"now": "2030-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s.admin(M::GET, "/test-clock", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn health_and_openapi_need_no_token() {
    let s = Server::start_test_clock();
    let (status, v) = s.call(M::GET, "/v1/health", "", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "ok");
    let (status, v) = s.call(M::GET, "/v1/openapi.json", "", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/agent/claims",
        "/v1/agent/heartbeat",
        "/v1/agent/enroll",
        "/v1/admin/users/import",
        "/v1/admin/token-lots",
        "/v1/admin/balance",
        "/v1/admin/charges",
        "/v1/admin/notices",
        "/v1/admin/default-assignments",
        "/v1/admin/enrollment-tokens",
        "/v1/admin/enrollment-tokens/{id}",
        "/v1/admin/devices",
        "/v1/admin/devices/{id}",
    ] {
        assert!(v["paths"].get(path).is_some(), "openapi lacks {path}");
    }
}

#[tokio::test]
async fn production_config_refuses_the_test_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("server.toml");
    std::fs::write(&cfg, "production = true\n").unwrap();
    let out = std::process::Command::new(flex_e2e::bin("flex-server"))
        .args(["--listen", "127.0.0.1:0", "--test-clock", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--test-clock is refused"), "{err}");
}

#[tokio::test]
async fn generated_admin_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut child = std::process::Command::new(flex_e2e::bin("flex-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("FLEX_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("listening on"));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let mode = std::fs::metadata(data.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("admin-token"), "the path is logged: {log}");
    assert!(
        !log.contains(token.trim()),
        "the token itself is never logged"
    );
}
