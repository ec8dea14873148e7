//! Backups and moves of the ledger through the real binary:
//! `flex-server backup` of a running SQLite server and `restore` give the same
//! charges and balance; `migrate` into PostgreSQL keeps every admin report,
//! the devices' credentials, the lease key and the claims' answers.

use std::path::Path;
use std::process::{Command, Output};

use flex_e2e::{bin, Device, Server, ServerOpts};
use flex_server::store::testing::TestDatabase;
use reqwest::Method;
use serde_json::{json, Value};

fn flex_server(args: &[&str]) -> Output {
    Command::new(bin("flex-server"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run flex-server")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "flex-server failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A ledger with purchases, users, a subscription, devices and claims over a
/// few weeks of test-clock time; returns the device.
async fn fill(s: &Server) -> Device {
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(500).await;
    s.buy(100).await;
    for u in ["ada@example.com", "bob@example.com", "cy@example.com"] {
        s.flex_user(u).await;
    }
    s.ok(
        Method::POST,
        "/subscriptions",
        Some(json!({"email": "bob@example.com", "product": "revit"})),
    )
    .await;
    let dev = s.enroll().await;
    for day in 2..=20 {
        s.set_time(&format!("2026-11-{day:02}T09:00:00Z")).await;
        s.launch(&dev, "ada@example.com", "autocad").await;
        if day % 3 == 0 {
            s.launch(&dev, "bob@example.com", "revit").await;
            s.launch(&dev, "cy@example.com", "fusion").await;
        }
    }
    // A short run refunded (R13): its refund, lot shares, the device's grant
    // and the stored answer are part of the ledger too.
    let (status, v) = s
        .claim(
            &dev,
            json!({"user": "cy@example.com", "product": "autocad"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    s.set_time("2026-11-20T09:05:00Z").await;
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/agent/refunds",
            &dev.token,
            Some(short_run(&v)),
        )
        .await;
    assert_eq!((status, &v["refunded_tokens"]), (200, &json!(7)), "{v}");
    let (status, v) = s
        .claim(
            &dev,
            json!({"claim_id": "job-1", "user": "cy@example.com", "product": "recap-photo", "results": 85}),
        )
        .await;
    assert_eq!((status, &v["tokens_charged"]), (200, &json!(2)), "{v}");
    dev
}

/// The refund request of the window granted in `grant` (Cy's AutoCAD).
fn short_run(grant: &Value) -> Value {
    json!({"window_id": grant["window"]["id"], "user": "cy@example.com", "product": "autocad", "sessions": []})
}

/// The window Cy's AutoCAD was refunded for in [`fill`].
async fn refunded(s: &Server) -> Value {
    let charges = s.charges().await;
    let c = charges
        .iter()
        .find(|c| c["user"] == "cy@example.com" && c["product"] == "autocad")
        .expect("cy's autocad charge");
    assert_eq!(c["refunded_tokens"], 7, "{c}");
    json!({"window": c["window"]})
}

/// Every admin read, as the API answers it.
async fn reports(s: &Server) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in [
        "/balance",
        "/charges",
        "/users",
        "/notices",
        "/devices",
        "/enrollment-tokens",
        "/products",
        "/forecast",
        "/recommendations?month=2026-11",
        "/reports/usage?from=2026-11-01&to=2026-11-30&by=product",
        "/reports/usage?from=2026-11-01&to=2026-11-30&by=user",
    ] {
        out.push((path.to_string(), s.ok(Method::GET, path, None).await));
    }
    let estimate = s
        .ok(
            Method::POST,
            "/estimate",
            Some(json!({"months": 12, "from_usage": {"from": "2026-11-01", "to": "2026-11-30"}})),
        )
        .await;
    out.push(("/estimate".into(), estimate));
    out
}

#[tokio::test]
async fn a_backup_of_a_running_server_restores_the_same_charges_and_balance() {
    let s = Server::start_test_clock();
    fill(&s).await;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("flex-backup.db");
    // The server keeps running (and holds its data directory) meanwhile.
    let said = ok(&flex_server(&[
        "backup",
        "--data-dir",
        path(&s.data_dir),
        "--to",
        path(&copy),
    ]));
    let charges = s.charges().await;
    let balance = s.balance().await;
    let total: u64 = charges.iter().map(|c| c["tokens"].as_u64().unwrap()).sum();
    assert!(
        said.contains(&format!("{} charges ({total} tokens)", charges.len())),
        "{said}"
    );

    // A restore into the running server's directory is refused, and changes nothing.
    let refused = flex_server(&[
        "restore",
        "--data-dir",
        path(&s.data_dir),
        "--from",
        path(&copy),
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let target = dir.path().join("restored");
    ok(&flex_server(&[
        "restore",
        "--data-dir",
        path(&target),
        "--from",
        path(&copy),
    ]));
    let mut restored = Server::start_test_clock();
    restored.kill9();
    restored.data_dir = target;
    restored.restart();
    assert_eq!(restored.charges().await, charges);
    assert_eq!(restored.balance().await, balance);

    // Not a ledger: refused, named.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not sqlite").unwrap();
    let out = flex_server(&[
        "restore",
        "--data-dir",
        path(&dir.path().join("other")),
        "--from",
        path(&junk),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a usable Flex ledger"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_ledger_migrated_to_postgres_answers_every_report_the_same() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let mut s = Server::start_test_clock();
    let dev = fill(&s).await;
    let before = reports(&s).await;
    let short = short_run(&refunded(&s).await);
    let first_refund = s
        .call(
            Method::POST,
            "/v1/agent/refunds",
            &dev.token,
            Some(short.clone()),
        )
        .await;
    let job = s
        .claim(
            &dev,
            json!({"claim_id": "job-1", "user": "cy@example.com", "product": "recap-photo", "results": 85}),
        )
        .await;

    // A running server's ledger is not migrated.
    let busy = flex_server(&[
        "migrate",
        "--data-dir",
        path(&s.data_dir),
        "--to-database-url",
        db.url(),
    ]);
    assert!(!busy.status.success(), "migrated a ledger in use");
    s.kill9();
    let said = ok(&flex_server(&[
        "migrate",
        "--data-dir",
        path(&s.data_dir),
        "--to-database-url",
        db.url(),
    ]));
    assert!(said.contains("charges"), "{said}");

    let pg = Server::start(ServerOpts {
        test_clock: true,
        database_url: Some(db.url().to_string()),
        ..Default::default()
    });
    let after = reports(&pg).await;
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{path} differs after the migration");
    }
    // The device's credential, the lease key and the claims' answers came along.
    assert_eq!(
        pg.claim(
            &dev,
            json!({"claim_id": "job-1", "user": "cy@example.com", "product": "recap-photo", "results": 85}),
        )
        .await,
        job
    );
    let (status, v) = pg
        .claim(&dev, json!({"user": "ada@example.com", "product": "revit"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["lease"]["kid"], dev.enroll["lease_keys"][0]["kid"]);
    // The refund's answer too: a repeat gets it and nothing is refunded twice.
    assert_eq!(
        pg.call(Method::POST, "/v1/agent/refunds", &dev.token, Some(short))
            .await,
        first_refund
    );
    assert_eq!(first_refund.0, 200, "{first_refund:?}");
    // New rows continue after the copied ones.
    let charges = pg.charges().await;
    let ids: Vec<i64> = charges.iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // A second migration into the now-full database is refused.
    let again = flex_server(&[
        "migrate",
        "--data-dir",
        path(&s.data_dir),
        "--to-database-url",
        db.url(),
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a ledger"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
