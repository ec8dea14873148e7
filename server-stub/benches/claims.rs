//! Claim throughput and latency, printed as figures and ratios (DESIGN.md §5).
//!
//! 1. Durable single-claim throughput through the store (every claim one
//!    `synchronous=FULL` WAL transaction) next to a bare SQLite insert with the
//!    same durability on the same disk, in the same run: the ratio is the figure
//!    (target ≥ 0.5). Per-result jobs (a charge each) and launches inside an
//!    open window (free; each notes the device's grant of the window, which a
//!    refund of a short run looks at).
//! 2. HTTP claims/s and latency p50/p99 over loopback with 64 concurrent
//!    clients, for each way to run the server: SQLite, PostgreSQL with one
//!    replica, PostgreSQL with two replicas (the clients split between them).
//!    Every claim is a per-result job paid from the same lot, the ledger's
//!    most contended write.
//!
//! PostgreSQL: the cluster named by `FLEX_BENCH_DATABASE_URL`, else a
//! throwaway durable cluster started with tests/support/pg-cluster.sh
//! (fsync on, as SQLite's synchronous=FULL). Each run gets a fresh database.
//!
//! Run with `cargo bench -p flex-server --bench claims`. Nothing is asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flex_protocol::api::{ClaimRequest, NewUser};
use flex_server::clock::SystemClock;
use flex_server::config::PolicyConfig;
use flex_server::rates::RateSheet;
use flex_server::server::{prepare, serve, ServerOptions};
use flex_server::store::Store;

const N: usize = 2000;
/// At least 16 characters, as the server requires.
const ADMIN: &str = "bench-admin-token-2026";

fn bare_insert_rate(dir: &std::path::Path) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("bare.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .unwrap();
    let start = Instant::now();
    for i in 0..N {
        conn.execute("INSERT INTO t (body) VALUES (?1)", [format!("claim-{i}")])
            .unwrap();
    }
    N as f64 / start.elapsed().as_secs_f64()
}

/// Claims per second: `launch` claims AutoCAD (one window, then free
/// launches inside it), otherwise per-result jobs.
fn store_claim_rate(dir: &std::path::Path, launch: bool) -> f64 {
    let dir = dir.join(if launch { "launches" } else { "jobs" });
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(
        &dir,
        Arc::new(SystemClock),
        PolicyConfig::default(),
        RateSheet::sample(),
    )
    .unwrap();
    for _ in 0..(N / 10000 + 1) {
        store.buy_tokens(10000).unwrap();
    }
    let bench = flex_protocol::Email::parse("bench@example.com").unwrap();
    store
        .add_user(NewUser {
            email: bench.clone(),
            first_name: "B".into(),
            last_name: "U".into(),
        })
        .unwrap();
    store.set_flex(&bench, true).unwrap();
    let start = Instant::now();
    for i in 0..N {
        let out = store
            .claim(
                "bench-device",
                &ClaimRequest {
                    claim_id: format!("bench-{i}").parse().unwrap(),
                    user: flex_protocol::Email::parse("bench@example.com").unwrap(),
                    product: if launch { "autocad" } else { "recap-photo" }
                        .parse()
                        .unwrap(),
                    version: None,
                    results: (!launch).then_some(50),
                    renews: None,
                },
            )
            .unwrap();
        debug_assert!(out.body.contains("granted"));
    }
    N as f64 / start.elapsed().as_secs_f64()
}

/// One flex-server in this process, on a loopback port; its URL.
async fn start_server(data_dir: std::path::PathBuf, database_url: Option<String>) -> String {
    let prepared = tokio::task::spawn_blocking(move || {
        prepare(&ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            database_url,
            config: None,
            test_clock: false,
            tls_cert: None,
            tls_key: None,
            rates: None,
        })
    })
    .await
    .unwrap()
    .unwrap();
    let url = format!("http://{}", prepared.listener.local_addr().unwrap());
    tokio::spawn(serve(prepared));
    url
}

struct Figures {
    p50: Duration,
    p99: Duration,
    max: Duration,
    rate: f64,
}

/// 64 clients claiming through `urls` (client i through `urls[i % n]`).
async fn http_claims(urls: &[String]) -> Figures {
    const CLIENTS: usize = 64;
    const PER_CLIENT: usize = 40;
    let url = urls[0].clone();
    let http = reqwest::Client::new();
    let admin = |path: &str| {
        http.post(format!("{url}/v1/admin{path}"))
            .bearer_auth(ADMIN)
    };
    admin("/token-lots")
        .json(&serde_json::json!({"tokens": 10000}))
        .send()
        .await
        .unwrap();
    admin("/users")
        .json(
            &serde_json::json!({"email": "bench@example.com", "first_name": "B", "last_name": "U"}),
        )
        .send()
        .await
        .unwrap();
    http.put(format!("{url}/v1/admin/users/bench@example.com/flex"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"assigned": true}))
        .send()
        .await
        .unwrap();
    let token: serde_json::Value = admin("/enrollment-tokens")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let enrolled: serde_json::Value = http
        .post(format!("{url}/v1/agent/enroll"))
        .json(&serde_json::json!({"enrollment_token": token["token"], "hostname": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_token = enrolled["device_token"].as_str().unwrap().to_string();

    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let http = http.clone();
        let url = urls[c % urls.len()].clone();
        let token = device_token.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(PER_CLIENT);
            for i in 0..PER_CLIENT {
                let t = Instant::now();
                let r = http
                    .post(format!("{url}/v1/agent/claims"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({
                        "claim_id": format!("h-{c}-{i}"),
                        "user": "bench@example.com",
                        "product": "recap-photo",
                        "results": 50
                    }))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        p50: pct(0.50),
        p99: pct(0.99),
        max: *all.last().unwrap(),
        rate: all.len() as f64 / wall.as_secs_f64(),
    }
}

fn print(label: &str, f: &Figures) {
    println!(
        "  {label:<22} {:>6.0} claims/s   p50 {:>6.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        f.rate,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3
    );
}

/// The PostgreSQL cluster to measure on, and the directory of one this bench
/// started (stopped at the end), or why there is none.
fn postgres_cluster() -> Result<(String, Option<std::path::PathBuf>), String> {
    if let Ok(url) = std::env::var("FLEX_BENCH_DATABASE_URL") {
        return Ok((url, None));
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/pg-cluster.sh");
    let dir = std::env::temp_dir().join(format!("flex-bench-pg-{}", std::process::id()));
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .arg("--durable")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Some(dir),
    ))
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let bare = bare_insert_rate(dir.path());
    let claims = store_claim_rate(dir.path(), false);
    let launches = store_claim_rate(dir.path(), true);
    println!("durable writes ({N} each, WAL + synchronous=FULL, one transaction each):");
    println!("  bare sqlite insert : {bare:>9.0} /s");
    println!("  store claim (job)  : {claims:>9.0} /s");
    println!("  store claim (launch in an open window): {launches:>9.0} /s");
    println!(
        "  ratio claim/bare   : {:>9.2}   (target >= 0.50); launch/bare {:.2}",
        claims / bare,
        launches / bare
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    std::env::set_var("FLEX_ADMIN_TOKEN", ADMIN);
    println!("http claims, 64 concurrent clients on loopback (target p99 <= 50 ms):");
    let sqlite = rt.block_on(async {
        let url = start_server(dir.path().join("data"), None).await;
        http_claims(&[url]).await
    });
    print("sqlite", &sqlite);
    match postgres_cluster() {
        Err(why) => println!("  postgresql: not measured ({why})"),
        Ok((admin, started)) => {
            for replicas in [1, 2] {
                let db = flex_server::store::testing::TestDatabase::create_in(&admin);
                let figures = rt.block_on(async {
                    let mut urls = Vec::new();
                    for r in 0..replicas {
                        let data = dir.path().join(format!("pg-{replicas}-{r}"));
                        urls.push(start_server(data, Some(db.url().to_string())).await);
                    }
                    http_claims(&urls).await
                });
                print(&format!("postgresql, {replicas} replica(s)"), &figures);
            }
            if let Some(dir) = started {
                let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/support/pg-cluster.sh");
                let _ = std::process::Command::new("bash")
                    .arg(script)
                    .arg("stop")
                    .arg(dir)
                    .status();
            }
        }
    }
}
