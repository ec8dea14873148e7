//! Enforcement by process, with a real agent, server and processes: each test
//! is named after a way a hostile local user beat the agent while enforcement
//! hung on sessions (issue 14), and fails on the agent before the fix. The
//! hostile account is `nobody` (uid 65534), made a Flex user where the test
//! needs one; `root` plays the well-behaved user.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flex_e2e::agent::{
    alive, as_uid, charged, eventually, fake_product, flex_server, open_socket_dir, resident_kib,
    Agent, Rates, Running, NOBODY, SHORT_POLICY, WAIT,
};
use serde_json::{json, Value};

const NOBODY_EMAIL: &str = "nobody@example.com";

/// A directory of products `nobody` may run, outside the agent's private dir.
fn product_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Starts `program args` as `nobody` (retrying a freshly copied file's
/// ETXTBSY, as [`Running::product`] does).
fn spawn_nobody(program: &Path, args: &[&str]) -> Running {
    let mut tries = 0;
    loop {
        let spawned = Command::new(program)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => return Running::new(child),
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("start {} as nobody: {e}", program.display()),
        }
    }
}

/// A connection to the agent opened by `nobody`: the kernel records the
/// credentials at connect time, so it may be used from any thread after.
struct NobodyConn {
    stream: StdStream,
    reader: BufReader<StdStream>,
}

impl NobodyConn {
    fn open(agent: &Agent) -> NobodyConn {
        let path = agent.socket.clone();
        let stream = as_uid(NOBODY, move || StdStream::connect(path).expect("connect"));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        NobodyConn { stream, reader }
    }

    /// Sends one request and returns the next reply (events are skipped).
    fn ask(&mut self, request: Value) -> Value {
        writeln!(self.stream, "{request}").unwrap();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("a reply");
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}

/// Waits until `running` has exited; panics after `timeout`.
async fn gone(running: &mut Running, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while running.exited().is_none() {
        assert!(
            Instant::now() < deadline,
            "{what}: still running after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pay_one_window_run_forever() {
    // The account starts the product directly (the watcher charges a window),
    // then sends `launch` naming that pid (free inside the window) and `exit`:
    // no session held the process any more, so no renewal was charged and the
    // offline rule never closed it.
    let rates = Rates::unique();
    let mut server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    server.flex_user(NOBODY_EMAIL).await;
    let agent = Agent::start(&server, "").await;
    open_socket_dir(&agent);
    agent.rate_sheet_known().await;
    let dir = product_dir();
    let acad = fake_product(dir.path(), &rates.exe("acad"));
    let mut product = spawn_nobody(&acad, &["60"]);
    eventually("the first window", WAIT, || async {
        (charged(&server, "autocad").await == 7).then_some(())
    })
    .await;
    let mut conn = NobodyConn::open(&agent);
    let joined = conn.ask(json!({"op": "launch", "product": "autocad", "pid": product.pid()}));
    assert_eq!(joined["ok"], true, "{joined}");
    assert_eq!(joined["tokens_charged"], 0, "inside the window: {joined}");
    let session = joined["session"].as_str().unwrap().to_string();
    let done = conn.ask(json!({"op": "exit", "session": session, "code": 0}));
    assert_eq!(done["ok"], true, "{done}");
    // 6-second windows: renewed while it runs.
    eventually("renewals charged", Duration::from_secs(30), || async {
        (charged(&server, "autocad").await >= 21).then_some(())
    })
    .await;
    // And the offline rule (8 s) still closes it.
    server.kill9();
    gone(
        &mut product,
        Duration::from_secs(30),
        "the product offline past the limit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unentitled_unclosed() {
    // An account that is not entitled forks a child that ignores SIGTERM,
    // sends `launch` naming the child's pid, and lets the child exec the
    // product while the claim is in flight: the watcher opened no session of
    // its own and the denial only dropped the wrapper's. 5 of 5 such runs
    // survived uncharged.
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    let agent = Agent::start(&server, "").await;
    open_socket_dir(&agent);
    agent.rate_sheet_known().await;
    let dir = product_dir();
    let acad = fake_product(dir.path(), &rates.exe("acad"));
    let fifo = dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    for round in 0..5 {
        // The child waits on the FIFO, then execs the product, ignoring TERM.
        let script = format!(
            "trap '' TERM; read x < {fifo}; exec {acad} 60",
            fifo = fifo.display(),
            acad = acad.display()
        );
        let mut child = spawn_nobody(Path::new("/bin/sh"), &["-c", &script]);
        let mut conn = NobodyConn::open(&agent);
        writeln!(
            conn.stream,
            "{}",
            json!({"op": "launch", "product": "autocad", "pid": child.pid()})
        )
        .unwrap();
        // The exec races the claim.
        std::fs::write(&fifo, "go\n").unwrap();
        let mut line = String::new();
        conn.reader.read_line(&mut line).unwrap();
        assert!(line.contains("not_entitled"), "round {round}: {line}");
        gone(
            &mut child,
            WAIT,
            &format!("round {round}: the unlicensed product"),
        )
        .await;
    }
    assert_eq!(charged(&server, "autocad").await, 0);

    // The watcher wins the race, and a second `launch` naming the pid comes
    // during close_grace: refused, and the kill still comes.
    let script = format!("trap '' TERM; exec {} 60", acad.display());
    let mut child = spawn_nobody(Path::new("/bin/sh"), &["-c", &script]);
    eventually("the product closing", WAIT, || async {
        agent.log().contains("closing product").then_some(())
    })
    .await;
    let mut conn = NobodyConn::open(&agent);
    let again = conn.ask(json!({"op": "launch", "product": "autocad", "pid": child.pid()}));
    assert_eq!(again["ok"], false, "{again}");
    gone(
        &mut child,
        WAIT,
        "the product launched again during its close",
    )
    .await;
}

/// Products installed in a directory the agent indexes (`install` makes them,
/// before the agent starts), and the agent.
async fn indexed(
    detection: &str,
    install: impl FnOnce(&Rates, &Path),
) -> (Rates, flex_e2e::Server, Agent, tempfile::TempDir) {
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    server.flex_user(NOBODY_EMAIL).await;
    let dir = product_dir();
    install(&rates, dir.path());
    let extra = format!(
        "product_dirs = [\"{}\"]\ndetection = \"{detection}\"",
        dir.path().display()
    );
    let agent = Agent::start(&server, &extra).await;
    agent.rate_sheet_known().await;
    (rates, server, agent, dir)
}

/// A directory `nobody` may write to.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn renamed_without_a_copy() {
    // (a) `ld-linux-x86-64.so.2 ~/notes`, `notes` a symlink to the product;
    // (b) a `--library-path` longer than 4 KiB; (c) `valgrind --tool=none
    // PRODUCT`; (d) an execute-only product bind-mounted under another name
    // in a user namespace. All four ran uncharged.
    let (rates, server, agent, dir) = indexed("auto", |rates, dir| {
        for base in ["acad", "revit", "maya", "inventor"] {
            fake_product(dir, &rates.exe(base));
        }
        let inventor = dir.join(rates.exe("inventor"));
        std::fs::set_permissions(inventor, std::fs::Permissions::from_mode(0o711)).unwrap();
    })
    .await;
    let scratch = scratch();
    let cases: Vec<(&str, &str, PathBuf, Vec<String>)> = {
        let acad = dir.path().join(rates.exe("acad"));
        let revit = dir.path().join(rates.exe("revit"));
        let maya = dir.path().join(rates.exe("maya"));
        let inventor = dir.path().join(rates.exe("inventor"));
        let notes = scratch.path().join("notes");
        std::os::unix::fs::symlink(&acad, &notes).unwrap();
        let report = scratch.path().join("report");
        std::fs::write(&report, b"").unwrap();
        std::os::unix::fs::chown(&report, Some(NOBODY), Some(NOBODY)).unwrap();
        let loader = PathBuf::from("/lib64/ld-linux-x86-64.so.2");
        vec![
            (
                "symlink through the loader",
                "autocad",
                loader.clone(),
                vec![notes.display().to_string(), "60".into()],
            ),
            (
                "long library path",
                "revit",
                loader,
                vec![
                    "--library-path".into(),
                    format!("/nonexistent/{}", "x".repeat(6000)),
                    revit.display().to_string(),
                    "60".into(),
                ],
            ),
            (
                "valgrind",
                "maya",
                PathBuf::from("/usr/bin/valgrind"),
                vec![
                    "--tool=none".into(),
                    "-q".into(),
                    maya.display().to_string(),
                    "60".into(),
                ],
            ),
            (
                "bind mount in a user namespace",
                "inventor",
                PathBuf::from("/usr/bin/unshare"),
                vec![
                    "-Urm".into(),
                    "sh".into(),
                    "-c".into(),
                    format!(
                        "mount --bind {} {r} && exec {r} 60",
                        inventor.display(),
                        r = report.display()
                    ),
                ],
            ),
        ]
    };
    let mut running = Vec::new();
    for (what, product, program, args) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        running.push(spawn_nobody(&program, &args));
        eventually(&format!("{what}: {product} charged"), WAIT, || async {
            (charged(&server, product).await > 0).then_some(())
        })
        .await;
    }
    let sessions = agent.sessions();
    for p in ["autocad", "revit", "maya", "inventor"] {
        assert!(
            sessions
                .iter()
                .any(|s| s["product"] == p && s["user"] == NOBODY_EMAIL),
            "{p}: {sessions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_never_looks_twice() {
    // With polling, a pid already seen was never examined again:
    // `sh -c 'sleep 1; exec PRODUCT 600'` was never charged.
    let (rates, server, _agent, dir) = indexed("polling", |_, _| {}).await;
    let acad = fake_product(dir.path(), &rates.exe("acad"));
    let script = format!("sleep 1; exec {} 60", acad.display());
    let _late = spawn_nobody(Path::new("/bin/sh"), &["-c", &script]);
    eventually("the late exec charged", WAIT, || async {
        (charged(&server, "autocad").await == 7).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn file_descriptors() {
    // With systemd's default soft RLIMIT_NOFILE of 1024, 600 product
    // processes of one account (two descriptors each) exhausted the agent:
    // another account's product was charged but taken for gone (EMFILE read as
    // "no process") — no renewal, no offline close — and `accept` failed.
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 5000).await;
    server.flex_user(NOBODY_EMAIL).await;
    let mut agent = Agent::configured(&server, "");
    // systemd's default soft limit; the hard one as this machine has it.
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    assert!(
        hard.rlim_max > 2048,
        "this test needs a hard open-file limit above 2048"
    );
    agent.nofile = Some((1024, hard.rlim_max));
    let token = server
        .ok(reqwest::Method::POST, "/enrollment-tokens", Some(json!({})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(agent.enroll_command(&token).status().unwrap().success());
    agent.spawn();
    agent.rate_sheet_known().await;
    let dir = product_dir();
    let revit = fake_product(dir.path(), &rates.exe("revit"));
    let flood: Vec<Running> = (0..600).map(|_| spawn_nobody(&revit, &["120"])).collect();
    eventually("the flood tracked", Duration::from_secs(60), || async {
        // `status` lists 50 sessions and counts the rest.
        let status = agent.status();
        let listed = status["sessions"].as_array().map_or(0, Vec::len);
        let n = listed as u64 + status["sessions_omitted"].as_u64().unwrap_or(0);
        (n == 600).then_some(())
    })
    .await;
    let pid = agent.pid().unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 1024,
        "the agent holds {fds} descriptors for 600 processes"
    );
    // Root's product is tracked, renewed, and the socket still accepts.
    let acad = fake_product(dir.path(), &rates.exe("acad"));
    let mut mine = Running::product(&acad);
    eventually(
        "root's product renewed",
        Duration::from_secs(30),
        || async { (charged(&server, "autocad").await >= 14).then_some(()) },
    )
    .await;
    assert!(agent.status()["sessions"].is_array(), "status answers");
    assert!(
        !agent.log().contains("there is no process"),
        "{}",
        agent.log()
    );
    drop(flood);
    mine.quit();
}

#[tokio::test(flavor = "multi_thread")]
async fn job_flood() {
    // 12,000 `result` requests with fresh job ids for a product not on the
    // sheet: agent RSS 8.0 → 18.5 MB, journal +8.5 MB, server +7.8 MB, and
    // each answer hashed every stored job.
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    server.flex_user(NOBODY_EMAIL).await;
    let agent = Agent::start(&server, "").await;
    open_socket_dir(&agent);
    agent.rate_sheet_known().await;
    let journal = agent.state_dir.join("journal.sqlite3");
    let size = |p: &Path| {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
            + std::fs::metadata(p.with_extension("sqlite3-wal"))
                .map(|m| m.len())
                .unwrap_or(0)
    };
    let journal_before = size(&journal);
    let rss_before = resident_kib(agent.pid().unwrap());
    let mut conn = NobodyConn::open(&agent);
    for i in 0..12_000 {
        let reply = conn.ask(json!({"op": "result", "product": "no-such-product", "count": 5, "job": format!("j{i}")}));
        assert_eq!(reply["error"]["code"], "unknown_product", "{reply}");
    }
    let rss_after = resident_kib(agent.pid().unwrap());
    assert!(
        rss_after < rss_before + 2048,
        "agent memory grew from {rss_before} to {rss_after} KiB"
    );
    assert!(
        size(&journal) <= journal_before + 64 * 1024,
        "the journal grew from {journal_before} to {} bytes",
        size(&journal)
    );
    assert!(server.charges().await.is_empty());
    assert!(
        !agent.log().contains("claim refused"),
        "no claim was sent for a product not on the sheet"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_normal_wrapper_run_ends_in_an_error() {
    // Following docs/local-api.md (launch, attach, the product exits, `exit`),
    // `exit` usually answered not_found because the agent saw the process end
    // first.
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    server.flex_user(NOBODY_EMAIL).await;
    let agent = Agent::start(&server, "").await;
    open_socket_dir(&agent);
    agent.rate_sheet_known().await;
    for _ in 0..3 {
        let mut conn = NobodyConn::open(&agent);
        let grant = conn.ask(json!({"op": "launch", "product": "autocad"}));
        let session = grant["session"].as_str().unwrap().to_string();
        let mut product = spawn_nobody(Path::new("/bin/sleep"), &["0.2"]);
        let attached = conn.ask(json!({"op": "attach", "session": session, "pid": product.pid()}));
        assert_eq!(attached["ok"], true, "{attached}");
        product.wait();
        // The agent sees the exit first.
        eventually("the agent saw the exit", WAIT, || async {
            (!agent
                .sessions()
                .iter()
                .any(|s| s["session"] == session.as_str()))
            .then_some(())
        })
        .await;
        let done = conn.ask(json!({"op": "exit", "session": session, "code": 0}));
        assert_eq!(done["ok"], true, "{done}");
    }
    let mut conn = NobodyConn::open(&agent);
    let unknown = conn.ask(json!({"op": "exit", "session": "never-was"}));
    assert_eq!(unknown["error"]["code"], "not_found", "{unknown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_keeps_granting_launches() {
    // A revoked device kept granting launches inside windows it already held
    // for up to 24 h. Once the server answers device_revoked, every window
    // goes.
    let rates = Rates::unique();
    let server = flex_server(
        &SHORT_POLICY.replace("window = \"6s\"", "window = \"1h\""),
        Some(&rates),
        500,
    )
    .await;
    let agent = Agent::start(&server, "").await;
    agent.rate_sheet_known().await;
    assert!(agent.run("autocad", &["true"]).status.success());
    let device = agent.status()["device_id"].as_str().unwrap().to_string();
    server
        .ok(reqwest::Method::DELETE, &format!("/devices/{device}"), None)
        .await;
    eventually("the revocation noticed", WAIT, || async {
        agent.status()["windows"]
            .as_array()
            .is_some_and(|w| w.is_empty())
            .then_some(())
    })
    .await;
    let refused = agent.run("autocad", &["true"]);
    assert_eq!(refused.status.code(), Some(77), "{refused:?}");
}

/// The hostile-client property test, end to end and bounded: random sequences
/// of what `nobody` can do with real processes and the real socket, and after
/// each step every product process `nobody` runs is either paid for (a window
/// in the server's ledger covers the moment) or gone within close_grace and
/// a few seconds; root's own plain process is never touched.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_sequences_never_keep_a_product_running_unpaid() {
    use rand::{Rng, SeedableRng};
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 100).await;
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(json!({"mode": "deny", "products": ["revit"]})),
        )
        .await;
    server.flex_user(NOBODY_EMAIL).await;
    let agent = Agent::start(&server, "").await;
    open_socket_dir(&agent);
    agent.rate_sheet_known().await;
    let dir = product_dir();
    let products = [
        ("autocad", fake_product(dir.path(), &rates.exe("acad"))),
        ("revit", fake_product(dir.path(), &rates.exe("revit"))),
    ];
    let bystander = Running::new(Command::new("sleep").arg("600").spawn().unwrap());
    let seed: u64 = std::env::var("FLEX_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("hostile sequence seed {seed} (FLEX_HOSTILE_SEED replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut procs: Vec<(Running, Option<&str>)> = Vec::new();
    let mut conns: Vec<NobodyConn> = Vec::new();
    let mut sessions: Vec<String> = Vec::new();
    for step in 0..30 {
        match rng.gen_range(0..6) {
            0 => {
                let (product, exe) = &products[rng.gen_range(0..2)];
                procs.push((spawn_nobody(exe, &["60"]), Some(*product)));
            }
            1 => {
                // Not a product yet: may be named in a launch first.
                let (product, exe) = &products[rng.gen_range(0..2)];
                let script = format!("sleep 0.{}; exec {} 60", rng.gen_range(1..9), exe.display());
                procs.push((
                    spawn_nobody(Path::new("/bin/sh"), &["-c", &script]),
                    Some(*product),
                ));
            }
            2 if !procs.is_empty() => {
                let i = rng.gen_range(0..procs.len());
                let pid = procs[i].0.pid();
                if conns.len() < 4 {
                    conns.push(NobodyConn::open(&agent));
                }
                let c = rng.gen_range(0..conns.len());
                let product = products[rng.gen_range(0..2)].0;
                let reply = conns[c].ask(json!({"op": "launch", "product": product, "pid": pid}));
                if let Some(s) = reply["session"].as_str() {
                    sessions.push(s.to_string());
                }
            }
            3 if !sessions.is_empty() && !conns.is_empty() => {
                let s = sessions[rng.gen_range(0..sessions.len())].clone();
                let c = rng.gen_range(0..conns.len());
                conns[c].ask(json!({"op": "exit", "session": s}));
            }
            4 if !conns.is_empty() => {
                conns.swap_remove(rng.gen_range(0..conns.len()));
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.gen_range(100..3000))).await,
        }
        // Every product process is paid for, or goes.
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let charges = server.charges().await;
            let now = chrono::Utc::now();
            for (p, _) in procs.iter_mut() {
                p.exited();
            }
            let unpaid: Vec<u32> = procs
                .iter()
                .filter(|(p, _)| alive(p.pid()))
                .filter(|(p, product)| {
                    let execed = std::fs::read_link(format!("/proc/{}/exe", p.pid()))
                        .map(|e| products.iter().any(|(_, x)| e == *x))
                        .unwrap_or(false);
                    execed
                        && !charges.iter().any(|c| {
                            c["user"] == NOBODY_EMAIL
                                && Some(c["product"].as_str().unwrap()) == *product
                                && c["window"]["start"].as_str().is_some_and(|s| {
                                    flex_e2e::t(s) <= now + chrono::Duration::seconds(1)
                                })
                                && c["window"]["end"].as_str().is_some_and(|e| {
                                    now < flex_e2e::t(e) + chrono::Duration::seconds(3)
                                })
                        })
                })
                .map(|(p, _)| p.pid())
                .collect();
            if unpaid.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}, step {step}: {unpaid:?} run unpaid\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        alive(bystander.pid()),
        "a process that runs no product was signalled"
    );
    assert_eq!(
        charged(&server, "revit").await,
        0,
        "revit is not entitled: never charged"
    );
}
