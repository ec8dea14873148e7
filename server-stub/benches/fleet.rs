//! One server against a fleet (issue 17 §2, DESIGN.md §5): 10,000 simulated
//! agents over real HTTP to the real `flex-server` binary on loopback, started
//! as a child process so that its RSS and CPU are read from its own `/proc`.
//!
//! Setup: tokens bought in 10,000-token packs, the users imported by CSV
//! (which puts them on Flex), one enrollment key for the whole fleet, and every
//! agent enrolled through `POST /v1/agent/enroll` (the real enrollment path).
//! Then three phases, each a schedule of requests played by a fixed pool of
//! client tasks sharing one keep-alive HTTP client on one thread:
//!
//! 1. Heartbeats: every agent heartbeats once per policy interval (10 min),
//!    the interval compressed `FLEET_COMPRESSION` times (20: one round every
//!    30 s), for `FLEET_HB_ROUNDS` rounds, agents evenly spread over a round.
//! 2. "Monday 9:00": every agent makes its first claim (its own user, one
//!    daily product, a fresh claim id), spread evenly over `FLEET_BURST_SECS`
//!    (60), while the fleet keeps heartbeating at the real, uncompressed rate.
//! 3. "Tuesday 9:00": every agent renews Monday's window (a fresh claim id)
//!    over the same span and heartbeats once, uploading Monday's session record.
//!
//! A request is sent at its due time unless every client task is busy; the
//! latency is from the send to the end of the answer, and how late the pool
//! was against the schedule is printed beside it. Database growth is measured
//! over phases 2 and 3 (two agent-days: two windows charged and one session
//! record per agent) and scaled to 250 working days.
//!
//! PostgreSQL: the cluster named by `FLEX_BENCH_DATABASE_URL`, else a
//! throwaway durable one from tests/support/pg-cluster.sh, as the claims bench.
//!
//! Run with `cargo bench -p flex-server --bench fleet`; `FLEET_AGENTS`,
//! `FLEET_CLIENTS`, `FLEET_COMPRESSION`, `FLEET_HB_ROUNDS`, `FLEET_BURST_SECS`
//! and `FLEET_BACKENDS` (`sqlite,postgres`) shrink or steer it. Nothing is
//! asserted.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flex_protocol::api::ChargeModel;
use flex_server::rates::RateSheet;
use serde_json::{json, Value};

/// At least 16 characters, as the server requires.
const ADMIN: &str = "bench-admin-token-2026";
/// The policy's heartbeat interval (PolicyConfig::default).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);
/// Working days in an agent-year, for the growth extrapolation.
const WORKDAYS: f64 = 250.0;
/// Agent-days phases 2 and 3 stand for: Monday and Tuesday.
const DAYS_MEASURED: f64 = 2.0;

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

struct Knobs {
    agents: usize,
    clients: usize,
    compression: u64,
    hb_rounds: usize,
    burst: Duration,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            agents: knob("FLEET_AGENTS", 10_000),
            clients: knob("FLEET_CLIENTS", 64),
            compression: knob("FLEET_COMPRESSION", 20),
            hb_rounds: knob("FLEET_HB_ROUNDS", 3),
            burst: Duration::from_secs(knob("FLEET_BURST_SECS", 60)),
        }
    }
}

// ------------------------------------------------------------ the server

/// The real `flex-server` binary, a child of this process.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(data_dir: &Path, database_url: Option<&str>) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.join("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flex-server"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .env("FLEX_ADMIN_TOKEN", ADMIN)
            .env_remove("FLEX_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        let mut child = cmd.spawn().expect("start flex-server");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("flex-server exited; see {}", log.display()))
                .unwrap();
            if let Some(url) = line.strip_prefix("flex-server listening on ") {
                break url.to_string();
            }
        };
        // Keep reading: a closed pipe would fail the server's next print.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, url, log }
    }

    /// Warnings and errors the server logged, and the first few of them.
    fn complaints(&self) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        (
            bad.len(),
            bad.iter().take(3).map(|l| l.to_string()).collect(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (clock ticks) and resident memory (kB) of a process, and of the
/// children it reaped, from /proc.
#[derive(Clone, Copy, Default)]
struct ProcSample {
    ticks: u64,
    rss_kb: u64,
    peak_kb: u64,
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn proc_kb(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One process (utime + stime + reaped children's) and, with `tree`, the
/// live children too (PostgreSQL's backends are children of the postmaster).
/// A tree's memory is the sum of proportional set sizes, so that shared
/// buffers count once.
fn sample(pid: u32, tree: bool) -> ProcSample {
    // Fields after the name: state=0 ppid=1 … utime=11 stime=12 cutime=13 cstime=14.
    let ticks = |f: &[String], upto: usize| -> u64 {
        f[11..=upto]
            .iter()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    };
    let Some(own) = stat_fields(pid) else {
        return ProcSample::default();
    };
    let mut s = ProcSample {
        ticks: ticks(&own, 14),
        rss_kb: if tree {
            proc_kb(pid, "smaps_rollup", "Pss:")
        } else {
            proc_kb(pid, "status", "VmRSS:")
        },
        peak_kb: proc_kb(pid, "status", "VmHWM:"),
    };
    if tree {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(child) {
                if f[1] == pid.to_string() {
                    s.ticks += ticks(&f, 12);
                    s.rss_kb += proc_kb(child, "smaps_rollup", "Pss:");
                }
            }
        }
    }
    s
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

// ------------------------------------------------------------ the fleet

#[derive(Default)]
struct AgentState {
    device_token: String,
    /// Monday's window: id and start, as the claim answered.
    window: Option<(String, String)>,
}

struct Agent {
    user: String,
    product: flex_protocol::ProductId,
    state: Mutex<AgentState>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Enroll,
    Heartbeat,
    /// A heartbeat carrying the agent's session record of Monday.
    HeartbeatSession,
    Claim,
    Renew,
}

#[derive(Clone, Copy)]
struct Job {
    at: Duration,
    agent: usize,
    kind: Kind,
}

struct Sample {
    kind: Kind,
    latency: Duration,
    late: Duration,
    error: Option<String>,
}

struct Fleet {
    http: reqwest::Client,
    url: String,
    agents: Vec<Agent>,
    enrollment_key: String,
}

impl Fleet {
    /// One request of `job`; `Err` says what went wrong.
    async fn send(&self, job: Job) -> Result<(), String> {
        let agent = &self.agents[job.agent];
        let url = &self.url;
        let token = agent.state.lock().unwrap().device_token.clone();
        let (path, body) = match job.kind {
            Kind::Enroll => (
                "enroll",
                json!({"enrollment_token": self.enrollment_key,
                       "hostname": format!("ws-{:05}", job.agent),
                       "platform": "linux", "agent_version": "fleet-bench"}),
            ),
            Kind::Heartbeat => ("heartbeat", json!({"agent_version": "fleet-bench"})),
            Kind::HeartbeatSession => {
                let window = agent.state.lock().unwrap().window.clone();
                let Some((window_id, start)) = window else {
                    return Err("no Monday window to report".into());
                };
                (
                    "heartbeat",
                    json!({"agent_version": "fleet-bench", "sessions": [{
                        "id": format!("s-{window_id}"), "user": agent.user,
                        "product": agent.product, "source": "tokens",
                        "window_id": window_id, "started_at": start,
                        "ended_at": chrono::Utc::now()}]}),
                )
            }
            Kind::Claim => (
                "claims",
                json!({"claim_id": uuid::Uuid::new_v4().to_string(),
                       "user": agent.user, "product": agent.product}),
            ),
            Kind::Renew => {
                let window = agent.state.lock().unwrap().window.clone();
                let Some((window_id, _)) = window else {
                    return Err("no Monday window to renew".into());
                };
                (
                    "claims",
                    json!({"claim_id": uuid::Uuid::new_v4().to_string(),
                           "user": agent.user, "product": agent.product,
                           "renews": window_id}),
                )
            }
        };
        let mut req = self.http.post(format!("{url}/v1/agent/{path}")).json(&body);
        if job.kind != Kind::Enroll {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| format!("send: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("read: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(160)
                    .collect::<String>()
            ));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("json: {e}"))?;
        match job.kind {
            Kind::Enroll => {
                agent.state.lock().unwrap().device_token =
                    v["device_token"].as_str().unwrap_or_default().to_string();
            }
            Kind::Claim | Kind::Renew => {
                if v["decision"] != "granted" {
                    return Err(format!("denied: {}", v["reason"]));
                }
                if job.kind == Kind::Claim {
                    let w = &v["window"];
                    agent.state.lock().unwrap().window = Some((
                        w["id"].as_str().unwrap_or_default().to_string(),
                        w["start"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Plays `jobs` (sorted by due time) with `clients` concurrent tasks.
    async fn play(self: &Arc<Self>, jobs: Vec<Job>, clients: usize) -> (Vec<Sample>, Duration) {
        let jobs = Arc::new(jobs);
        let next = Arc::new(AtomicUsize::new(0));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (fleet, jobs, next) = (self.clone(), jobs.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&job) = jobs.get(i) else { break };
                    tokio::time::sleep_until(start + job.at).await;
                    let sent = tokio::time::Instant::now();
                    let error = fleet.send(job).await.err();
                    out.push(Sample {
                        kind: job.kind,
                        latency: sent.elapsed(),
                        late: sent - (start + job.at),
                        error,
                    });
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        (all, start.elapsed())
    }
}

/// `n` jobs of `kind`, agent i due at i/n of `span`.
fn spread(n: usize, kind: Kind, span: Duration, offset: Duration) -> Vec<Job> {
    (0..n)
        .map(|agent| Job {
            at: offset + span.mul_f64(agent as f64 / n as f64),
            agent,
            kind,
        })
        .collect()
}

/// The fleet's heartbeats at the real interval during `span`: agent i's
/// phase in the interval is i/n of it.
fn background_heartbeats(n: usize, span: Duration) -> Vec<Job> {
    let mut jobs = Vec::new();
    for agent in 0..n {
        let mut at = HEARTBEAT_INTERVAL.mul_f64(agent as f64 / n as f64);
        while at < span {
            jobs.push(Job {
                at,
                agent,
                kind: Kind::Heartbeat,
            });
            at += HEARTBEAT_INTERVAL;
        }
    }
    jobs
}

struct Figures {
    count: usize,
    errors: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    late_p99: Duration,
    first_error: Option<String>,
}

fn figures(samples: &[Sample], kinds: &[Kind]) -> Figures {
    let of: Vec<&Sample> = samples.iter().filter(|s| kinds.contains(&s.kind)).collect();
    let mut lat: Vec<Duration> = of.iter().map(|s| s.latency).collect();
    let mut late: Vec<Duration> = of.iter().map(|s| s.late).collect();
    lat.sort();
    late.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        count: of.len(),
        errors: of.iter().filter(|s| s.error.is_some()).count(),
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
        late_p99: pct(&late, 0.99),
        first_error: of.iter().find_map(|s| s.error.clone()),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_figures(label: &str, f: &Figures, target: &str) {
    println!(
        "    {label:<22} {:>6} req  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  \
         late p99 {:>7.2} ms  errors {}{target}",
        f.count,
        ms(f.p50),
        ms(f.p99),
        ms(f.max),
        ms(f.late_p99),
        f.errors
    );
    if let Some(e) = &f.first_error {
        println!("      first error: {e}");
    }
}

// ------------------------------------------------------------ the database

/// Where the ledger lives, to measure its size.
enum Ledger {
    Sqlite(PathBuf),
    Postgres(String),
}

struct Size {
    /// SQLite: the database file; PostgreSQL: pg_database_size.
    db: u64,
    /// SQLite's WAL file (bounded by checkpoints; not scaled).
    wal: u64,
}

impl Ledger {
    fn size(&self) -> Size {
        match self {
            Ledger::Sqlite(dir) => {
                let len = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
                Size {
                    db: len("flex.db"),
                    wal: len("flex.db-wal"),
                }
            }
            Ledger::Postgres(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                let db: i64 = c
                    .query_one("SELECT pg_database_size(current_database())", &[])
                    .unwrap()
                    .get(0);
                Size {
                    db: db as u64,
                    wal: 0,
                }
            }
        }
    }

    /// PostgreSQL's committed and rolled-back transactions in the database so
    /// far (a rollback is mostly a serialization failure, run again).
    fn transactions(&self) -> Option<(i64, i64)> {
        let Ledger::Postgres(url) = self else {
            return None;
        };
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        let row = c
            .query_one(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database
                 WHERE datname = current_database()",
                &[],
            )
            .unwrap();
        Some((row.get(0), row.get(1)))
    }

    /// The tables (with their indexes) that hold the most bytes.
    fn largest_tables(&self) -> Vec<(String, u64)> {
        match self {
            Ledger::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.join("flex.db")).unwrap();
                // Each index counted with its table.
                let sql = "SELECT COALESCE(m.tbl_name, d.name), SUM(d.pgsize)
                           FROM dbstat d LEFT JOIN sqlite_master m ON m.name = d.name
                           GROUP BY 1 ORDER BY 2 DESC LIMIT 5";
                let mut st = match c.prepare(sql) {
                    Ok(st) => st,
                    Err(_) => return Vec::new(),
                };
                st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                    .unwrap()
                    .flatten()
                    .collect()
            }
            Ledger::Postgres(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                c.query(
                    "SELECT relname::text, pg_total_relation_size(oid) FROM pg_class
                     WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
                     ORDER BY 2 DESC LIMIT 5",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
                .collect()
            }
        }
    }

    /// Moves SQLite's WAL into the database file so its size is the data's.
    fn checkpoint(&self) {
        if let Ledger::Sqlite(dir) = self {
            let c = rusqlite::Connection::open(dir.join("flex.db")).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let _: i64 = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .unwrap();
        }
    }
}

// ------------------------------------------------------------ one run

async fn admin(http: &reqwest::Client, url: &str, path: &str, body: reqwest::Body) -> Value {
    let r = http
        .post(format!("{url}/v1/admin{path}"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "admin {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn run(label: &str, k: &Knobs, data_dir: &Path, database_url: Option<&str>, db_pid: Option<u32>) {
    let wall = Instant::now();
    let server = Server::start(data_dir, database_url);
    let pid = server.child.id();
    let ledger = match database_url {
        Some(u) => Ledger::Postgres(u.to_string()),
        None => Ledger::Sqlite(data_dir.to_path_buf()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(k.clients)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let n = k.agents;
    let daily: Vec<flex_protocol::ProductId> = RateSheet::sample()
        .products()
        .iter()
        .filter(|p| matches!(p.charge, ChargeModel::Daily { .. }))
        .map(|p| p.id.clone())
        .collect();
    println!("{label}: {n} agents, {} client tasks", k.clients);

    // Setup: tokens for two windows per agent at the dearest daily rate, the
    // users (on Flex), the enrollment key.
    let enrollment_key = rt.block_on(async {
        let lots = (n * 2 * 10).div_ceil(10_000) + 1;
        for _ in 0..lots {
            admin(
                &http,
                &server.url,
                "/token-lots",
                r#"{"tokens":10000}"#.into(),
            )
            .await;
        }
        for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
            let mut csv = String::from("email,first name,last name\n");
            for i in chunk {
                csv += &format!("user{i:05}@fleet.example.com,User,{i:05}\n");
            }
            let r = http
                .post(format!("{}/v1/admin/users/import", server.url))
                .bearer_auth(ADMIN)
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "import: {}",
                r.text().await.unwrap()
            );
        }
        let key = admin(
            &http,
            &server.url,
            "/enrollment-tokens",
            json!({"uses": n, "note": "fleet bench"}).to_string().into(),
        )
        .await;
        key["token"].as_str().unwrap().to_string()
    });
    let fleet = Arc::new(Fleet {
        http,
        url: server.url.clone(),
        agents: (0..n)
            .map(|i| Agent {
                user: format!("user{i:05}@fleet.example.com"),
                product: daily[i % daily.len()].clone(),
                state: Mutex::new(AgentState::default()),
            })
            .collect(),
        enrollment_key,
    });

    let t = Instant::now();
    let (enrolled, _) = rt.block_on(fleet.play(
        spread(n, Kind::Enroll, Duration::ZERO, Duration::ZERO),
        k.clients,
    ));
    let e = figures(&enrolled, &[Kind::Enroll]);
    println!(
        "  enrollment (POST /v1/agent/enroll, as fast as the pool goes): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    print_figures("enroll", &e, "");

    let tick = clock_ticks_per_sec();
    let report_proc = |before: (ProcSample, Instant), db_before: Option<ProcSample>| {
        let secs = before.1.elapsed().as_secs_f64();
        let now = sample(pid, false);
        println!(
            "    server process: CPU {:>5.1} % of a core, RSS {:>6.1} MB (peak {:.1} MB){}",
            (now.ticks - before.0.ticks) as f64 / tick / secs * 100.0,
            now.rss_kb as f64 / 1024.0,
            now.peak_kb as f64 / 1024.0,
            match (db_pid, db_before) {
                (Some(p), Some(b)) => {
                    let d = sample(p, true);
                    format!(
                        "; PostgreSQL: CPU {:.1} % of a core, PSS {:.1} MB",
                        d.ticks.saturating_sub(b.ticks) as f64 / tick / secs * 100.0,
                        d.rss_kb as f64 / 1024.0
                    )
                }
                _ => String::new(),
            }
        );
    };
    let mark = || {
        (
            (sample(pid, false), Instant::now()),
            db_pid.map(|p| sample(p, true)),
        )
    };

    // 1. Heartbeats, compressed.
    ledger.checkpoint();
    let size0 = ledger.size();
    if database_url.is_some() {
        // Backends report their counts when idle, at most 10 s late: let the
        // enrollments' be counted before phase 1.
        std::thread::sleep(Duration::from_secs(11));
    }
    let xacts0 = ledger.transactions();
    let round = HEARTBEAT_INTERVAL / k.compression as u32;
    let mut jobs = Vec::new();
    for r in 0..k.hb_rounds {
        jobs.extend(spread(n, Kind::Heartbeat, round, round * r as u32));
    }
    println!(
        "  1. heartbeats: {} rounds, interval {}s compressed {}x to {:.1} s ({:.0} heartbeats/s offered)",
        k.hb_rounds,
        HEARTBEAT_INTERVAL.as_secs(),
        k.compression,
        round.as_secs_f64(),
        n as f64 / round.as_secs_f64()
    );
    let (m, dbm) = mark();
    let (hb, took) = rt.block_on(fleet.play(jobs, k.clients));
    println!("    took {:.1} s", took.as_secs_f64());
    print_figures("heartbeat", &figures(&hb, &[Kind::Heartbeat]), "");
    report_proc(m, dbm);
    ledger.checkpoint();
    let size1 = ledger.size();

    // 2. Monday 9:00.
    let mut jobs = spread(n, Kind::Claim, k.burst, Duration::ZERO);
    jobs.extend(background_heartbeats(n, k.burst));
    jobs.sort_by_key(|j| j.at);
    println!(
        "  2. Monday 9:00: {n} first claims over {} s ({:.0} claims/s offered), heartbeats at the real interval",
        k.burst.as_secs(),
        n as f64 / k.burst.as_secs_f64()
    );
    let (m, dbm) = mark();
    let (burst, took) = rt.block_on(fleet.play(jobs, k.clients));
    println!("    took {:.1} s", took.as_secs_f64());
    print_figures(
        "first claim",
        &figures(&burst, &[Kind::Claim]),
        "   (target p99 <= 50 ms with SQLite)",
    );
    print_figures("heartbeat", &figures(&burst, &[Kind::Heartbeat]), "");
    report_proc(m, dbm);

    // 3. Tuesday 9:00: renewals and Monday's session records.
    let mut jobs = spread(n, Kind::Renew, k.burst, Duration::ZERO);
    jobs.extend(spread(
        n,
        Kind::HeartbeatSession,
        k.burst,
        k.burst / (2 * n as u32),
    ));
    jobs.sort_by_key(|j| j.at);
    println!(
        "  3. Tuesday 9:00: {n} renewals and {n} heartbeats with Monday's session record, over {} s",
        k.burst.as_secs()
    );
    let (m, dbm) = mark();
    let (renew, took) = rt.block_on(fleet.play(jobs, k.clients));
    println!("    took {:.1} s", took.as_secs_f64());
    print_figures("renewal", &figures(&renew, &[Kind::Renew]), "");
    print_figures(
        "heartbeat + session",
        &figures(&renew, &[Kind::HeartbeatSession]),
        "",
    );
    report_proc(m, dbm);

    ledger.checkpoint();
    let size2 = ledger.size();
    let mb = |b: u64| b as f64 / 1e6;
    let what = match ledger {
        Ledger::Sqlite(_) => "flex.db after a TRUNCATE checkpoint",
        Ledger::Postgres(_) => "pg_database_size, WAL not counted",
    };
    println!(
        "  database ({what}): {:.1} MB after setup, {:.1} MB after heartbeats, {:.1} MB after Monday and Tuesday",
        mb(size0.db),
        mb(size1.db),
        mb(size2.db)
    );
    if let Ledger::Sqlite(_) = ledger {
        println!(
            "    WAL before each checkpoint is bounded by SQLite's auto-checkpoint; {:.1} MB after the last",
            mb(size2.wal)
        );
    }
    let per_agent_day = size2.db.saturating_sub(size1.db) as f64 / (n as f64 * DAYS_MEASURED);
    println!(
        "    growth {:.0} B per agent-day (a window charged, its claim, one session record) -> {:.2} MB per agent-year ({WORKDAYS} days), {:.1} GB per year for {n} agents",
        per_agent_day,
        per_agent_day * WORKDAYS / 1e6,
        per_agent_day * WORKDAYS * n as f64 / 1e9
    );
    let largest: Vec<String> = ledger
        .largest_tables()
        .iter()
        .map(|(t, b)| format!("{t} {:.1} MB", mb(*b)))
        .collect();
    println!(
        "    largest tables with their indexes: {}",
        largest.join(", ")
    );
    if let (Some((c0, r0)), Some(_)) = (xacts0, ledger.transactions()) {
        std::thread::sleep(Duration::from_secs(11));
        let (c1, r1) = ledger.transactions().unwrap();
        println!(
            "    PostgreSQL transactions in phases 1-3: {} committed, {} rolled back",
            c1 - c0,
            r1 - r0
        );
    }
    let (count, first) = server.complaints();
    println!("  server log: {count} warnings/errors");
    for l in first {
        println!("    {}", l.chars().take(200).collect::<String>());
    }
    println!("  wall time: {:.0} s", wall.elapsed().as_secs_f64());
}

/// The PostgreSQL cluster to measure on, the directory of one this bench
/// started (stopped at the end), and its postmaster's pid; or why there is none.
fn postgres_cluster() -> Result<(String, Option<PathBuf>, Option<u32>), String> {
    if let Ok(url) = std::env::var("FLEX_BENCH_DATABASE_URL") {
        let pid = postmaster_of(&url);
        return Ok((url, None, pid));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/pg-cluster.sh");
    let dir = std::env::temp_dir().join(format!("flex-fleet-pg-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .arg("--durable")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let pid = postmaster_of(&url);
    Ok((url, Some(dir), pid))
}

/// The postmaster's pid when the cluster runs on this machine: the parent of
/// the backend serving a connection.
fn postmaster_of(url: &str) -> Option<u32> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).ok()?;
    let backend: i32 = c.query_one("SELECT pg_backend_pid()", &[]).ok()?.get(0);
    let ppid = stat_fields(backend as u32)?.get(1)?.parse().ok()?;
    let name = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    name.starts_with("postgres").then_some(ppid)
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let k = Knobs::from_env();
    let backends: String = knob("FLEET_BACKENDS", "sqlite,postgres".to_string());
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap_or_else(|_| tempfile::tempdir().unwrap());
    if backends.contains("sqlite") {
        run("sqlite", &k, &dir.path().join("sqlite"), None, None);
    }
    if backends.contains("postgres") {
        match postgres_cluster() {
            Err(why) => println!("postgresql: not measured ({why})"),
            Ok((admin_url, started, pid)) => {
                let db = flex_server::store::testing::TestDatabase::create_in(&admin_url);
                run(
                    "postgresql",
                    &k,
                    &dir.path().join("pg"),
                    Some(db.url()),
                    pid,
                );
                drop(db);
                if let Some(dir) = started {
                    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../tests/support/pg-cluster.sh");
                    let _ = Command::new("bash")
                        .arg(script)
                        .arg("stop")
                        .arg(dir)
                        .status();
                }
            }
        }
    }
}
