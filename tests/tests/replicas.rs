//! Several `flex-server` replicas on one PostgreSQL database: claims stay
//! exactly-once across replicas and lots are never overdrawn.
//!
//! Each test makes a fresh database in the throwaway cluster tests/run.sh
//! starts (`FLEX_TEST_DATABASE_URL`); without one, a plain `cargo test` says
//! so and runs nothing here, and tests/run.sh (`FLEX_REQUIRE_POSTGRES=1`)
//! fails instead.

use std::sync::Arc;

use flex_e2e::{Server, ServerOpts};
use flex_server::store::testing::TestDatabase;
use reqwest::Method;
use serde_json::json;

fn replicas(n: usize) -> Option<(TestDatabase, Vec<Server>)> {
    let db = TestDatabase::create()?;
    let servers = (0..n)
        .map(|_| {
            Server::start(ServerOpts {
                database_url: Some(db.url().to_string()),
                ..Default::default()
            })
        })
        .collect();
    Some((db, servers))
}

#[tokio::test]
async fn the_same_claim_id_through_two_replicas_charges_once() {
    let Some((_db, s)) = replicas(2) else { return };
    s[0].buy(100).await;
    s[1].flex_user("ada@example.com").await;
    // A device enrolled through one replica is known to the other.
    let dev = s[0].enroll().await;
    let body = json!({"claim_id": "c-1", "user": "ada@example.com", "product": "autocad"});
    let (a, b) = tokio::join!(
        s[0].claim(&dev, body.clone()),
        s[1].claim(&dev, body.clone())
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1, b.1, "both replicas give the one stored answer");
    assert_eq!(a.1["tokens_charged"], 7);
    // Retries through either replica later get the same answer too.
    assert_eq!(s[1].claim(&dev, body.clone()).await.1, a.1);
    assert_eq!(s[0].charges().await.len(), 1);
    assert_eq!(s[1].balance().await, 93);
    // Same id, other body: a conflict on either replica.
    let other = json!({"claim_id": "c-1", "user": "ada@example.com", "product": "revit"});
    assert_eq!(s[1].claim(&dev, other).await.0, 409);
    // Both sign leases with the one key in the database.
    let lease_kid = |v: &serde_json::Value| v["lease"]["kid"].clone();
    assert_eq!(lease_kid(&a.1), dev.enroll["lease_keys"][0]["kid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_and_sixty_four_clients_spend_a_small_lot_exactly() {
    let Some((_db, s)) = replicas(2) else { return };
    // 100 tokens; AutoCAD costs 7 a day: 14 launches fit, 2 tokens stay.
    s[0].buy(100).await;
    const CLIENTS: usize = 32;
    for (r, server) in s.iter().enumerate() {
        for c in 0..CLIENTS {
            server.flex_user(&format!("u{r}-{c}@example.com")).await;
        }
    }
    let dev = Arc::new(s[0].enroll().await);
    let servers: Vec<Arc<Server>> = s.into_iter().map(Arc::new).collect();
    let mut tasks = Vec::new();
    for (r, server) in servers.iter().enumerate() {
        for c in 0..CLIENTS {
            let (server, dev) = (Arc::clone(server), Arc::clone(&dev));
            tasks.push(tokio::spawn(async move {
                let user = format!("u{r}-{c}@example.com");
                // Each client launches AutoCAD twice: the second launch is
                // free inside the window the first paid for, or refused again.
                let mut charged = 0;
                for _ in 0..2 {
                    let (status, v) = server
                        .claim(&dev, json!({"user": user, "product": "autocad"}))
                        .await;
                    assert_eq!(status, 200, "{v}");
                    if v["decision"] == "granted" {
                        charged += v["tokens_charged"].as_u64().unwrap();
                    } else {
                        assert_eq!(v["reason"], "out_of_tokens", "{v}");
                        assert!(v["balance"].as_u64().unwrap() < 7, "{v}");
                    }
                }
                charged
            }));
        }
    }
    let mut charged = 0;
    for t in tasks {
        charged += t.await.unwrap();
    }
    let balance = servers[1].balance().await;
    let charges = servers[0].charges().await;
    let in_ledger: u64 = charges.iter().map(|c| c["tokens"].as_u64().unwrap()).sum();
    assert_eq!(
        charged, in_ledger,
        "every grant is one charge, and only those"
    );
    assert_eq!(charges.len(), 14, "fourteen windows of 7 fit in 100 tokens");
    assert_eq!(
        (in_ledger, balance),
        (98, 2),
        "nothing lost, nothing overdrawn"
    );
    let lot = &servers[0].ok(Method::GET, "/balance", None).await["lots"][0];
    assert_eq!(lot["remaining"].as_u64(), Some(balance));
}
