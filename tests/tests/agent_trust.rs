//! The trust boundary, with a real agent, server and processes: each test is
//! named after a defect a hostile local user could exploit (issue 6) and fails
//! on the agent before the fix.
//!
//! These tests need root, as the whole agent suite does: the agent runs as
//! root, other accounts are played by threads switched to uid 65534 (a raw
//! `setresuid` changes only the calling thread), and the pid-reuse test moves
//! the kernel's pid counter.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flex_e2e::agent::{
    alive, as_uid, ask_blocking, charged, eventually, fake_product, flex_server, open_socket_dir,
    resident_kib, setup, Agent, Rates, Running, SocketConn, NOBODY, SHORT_POLICY, USER, WAIT,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn product_swap_through_the_wrapper() {
    // `flexctl run --product recap-photo -- <a copy of acad>` ran AutoCAD for
    // 0 tokens even where AutoCAD is not part of Flex. Every exec of a
    // product's executable is a launch of that product, whoever started it.
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(json!({"mode": "deny", "products": ["autocad"]})),
        )
        .await;
    let agent = Agent::start(&server, "").await;
    let acad = fake_product(agent.dir.path(), &rates.exe("acad"));
    let acad = acad.to_str().unwrap();
    // Straight inside the wrapper, and as a child of a shell it started: the
    // product is closed (SIGTERM) either way.
    let through_shell = format!("{acad} 60; echo \"product exit $?\"");
    for command in [vec![acad, "60"], vec!["sh", "-c", &through_shell]] {
        let out = tokio::time::timeout(WAIT, async {
            let mut cmd = agent.flexctl();
            cmd.args(["run", "--product", "recap-photo", "--"])
                .args(&command);
            tokio::process::Command::from(cmd).output().await.unwrap()
        })
        .await
        .expect("the swapped product was closed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let closed = out.status.code() == Some(128 + 15) || stdout.contains("product exit 143");
        assert!(closed, "{command:?} ran unlicensed: {out:?}");
    }
    assert_eq!(charged(&server, "autocad").await, 0);
    let log = agent.log();
    assert!(
        log.contains("NotEntitled"),
        "autocad claimed as itself: {log}"
    );

    // Where AutoCAD is in Flex, the same swap is charged AutoCAD's rate.
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(json!({"mode": "all", "products": []})),
        )
        .await;
    let mut wrapper = Running::new(
        agent
            .flexctl()
            .args(["run", "--product", "recap-photo", "--", acad, "60"])
            .spawn()
            .unwrap(),
    );
    eventually("autocad charged", WAIT, || async {
        (charged(&server, "autocad").await == 7).then_some(())
    })
    .await;
    let sessions = agent.sessions();
    let products: Vec<&str> = sessions
        .iter()
        .filter_map(|s| s["product"].as_str())
        .collect();
    assert!(
        products.contains(&"autocad") && products.contains(&"recap-photo"),
        "{sessions:?}"
    );
    wrapper.quit();
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_exhaustion_by_subscribe() {
    // 200,000 `subscribe` lines on one connection took the agent from 15 MB to
    // 491 MB, kept after the client left. One subscription per connection,
    // freed when it closes; at most 8 per account.
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (_rates, _server, agent) = setup().await;
    open_socket_dir(&agent);
    let pid = agent.pid().unwrap();
    let (read, mut write) = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap()
        .into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    write.write_all(b"{\"op\":\"subscribe\"}\n").await.unwrap();
    assert!(lines
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .contains("\"ok\":true"));
    let before = resident_kib(pid);
    const FLOOD: usize = 200_000;
    let reader = tokio::spawn(async move {
        for _ in 0..FLOOD {
            let line = lines.next_line().await.unwrap().expect("a reply per line");
            assert!(line.contains("\"ok\":true"), "{line}");
        }
        lines
    });
    let chunk = b"{\"op\":\"subscribe\"}\n".repeat(1000);
    for _ in 0..FLOOD / 1000 {
        write.write_all(&chunk).await.unwrap();
    }
    let lines = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the agent answered the flood")
        .unwrap();
    let after = resident_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    drop((lines, write));

    // Per account: 8 subscriptions, the 9th refused; freed as they close;
    // another account is not affected.
    let path = agent.socket.clone();
    as_uid(NOBODY, move || {
        let held: Vec<StdStream> = (0..8)
            .map(|_| {
                let (s, reply) = ask_blocking(&path, r#"{"op":"subscribe"}"#);
                assert_eq!(reply["ok"], true, "{reply}");
                s
            })
            .collect();
        let (_s, refused) = ask_blocking(&path, r#"{"op":"subscribe"}"#);
        assert_eq!(refused["error"]["code"], "limit_exceeded", "{refused}");
        drop(held);
        // Closed connections free their subscriptions (noticed asynchronously).
        let deadline = Instant::now() + WAIT;
        let mut again = Vec::new();
        while again.len() < 8 {
            let (s, reply) = ask_blocking(&path, r#"{"op":"subscribe"}"#);
            if reply["ok"] == true {
                again.push(s);
            } else {
                assert!(
                    Instant::now() < deadline,
                    "subscriptions never freed: {reply}"
                );
                std::thread::yield_now();
            }
        }
    });
    let mut root = SocketConn::open(&agent.socket).await;
    assert_eq!(root.ask(br#"{"op":"subscribe"}"#).await["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_case_email_charged_then_refused() {
    // With `root = "Root@Example.com"`, `flexctl run` exited 77 ("lease does
    // not match") after the server had charged 7 tokens, twice for two
    // launches: the server lowercased the email, the agent did not.
    let rates = Rates::unique();
    let server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    let agent = Agent::start(&server, "[users.overrides]\nroot = \" Root@Example.com \"").await;
    for _ in 0..2 {
        let out = agent.run("autocad", &["true"]);
        assert!(out.status.success(), "{out:?}\n{}", agent.log());
    }
    assert_eq!(
        charged(&server, "autocad").await,
        7,
        "one window, charged once"
    );
    let windows = agent.status()["windows"].clone();
    assert_eq!(windows[0]["user"], USER, "{windows}");
}

/// Makes the server sign with a new key the agent never pinned (a server
/// restored without its key, or re-keyed): its next start creates one.
fn rotate_server_key(server: &mut flex_e2e::Server) {
    server.kill9();
    let db = std::fs::read_dir(&server.data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension()
                .is_some_and(|e| e == "sqlite3" || e == "db" || e == "sqlite")
        })
        .expect("the server's database file");
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute("UPDATE lease_keys SET active = 0", [])
        .unwrap();
    drop(conn);
    server.restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_with_an_unverifiable_lease_loops() {
    // A renewal whose lease failed verification was retried at once with a
    // fresh claim id, in a tight loop. It must back off and close the product
    // after `renewal_grace` (2 s here), saying why.
    let (_rates, mut server, agent) = setup().await;
    let mut wrapper = Running::wrapper(&agent, "autocad");
    let session = eventually("autocad's window", WAIT, || async {
        agent
            .sessions()
            .into_iter()
            .find(|s| s["product"] == "autocad")
    })
    .await;
    rotate_server_key(&mut server);
    let window_end = flex_e2e::t(session["window_end"].as_str().unwrap());
    let status = wrapper.wait_exit(WAIT * 2).await;
    let closed_at = chrono::Utc::now();
    assert_eq!(status.code(), Some(128 + 15), "closed: {status:?}");
    assert!(
        closed_at >= window_end + chrono::Duration::seconds(2),
        "closed at {closed_at}, before window end {window_end} + renewal grace"
    );
    let refusals = agent.log().matches("refusing the server's grant").count();
    assert!(
        (1..=3).contains(&refusals),
        "{refusals} unverifiable grants: the renewal looped"
    );
    assert!(wrapper.stderr().contains("lease"), "the user is told why");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_exhaustion() {
    // One uid could hold all 256 connections; everyone else's `flexctl run`
    // then failed. Per-account cap, capacity kept for root and other accounts.
    let (_rates, server, agent) = setup().await;
    open_socket_dir(&agent);
    let path = agent.socket.clone();
    let (held, refused) = as_uid(NOBODY, move || {
        let held: Vec<StdStream> = (0..flex_agent::limits::MAX_CONNECTIONS_PER_ACCOUNT)
            .map(|_| {
                let (s, hello) = ask_blocking(&path, r#"{"op":"hello","protocol":1}"#);
                assert_eq!(hello["ok"], true, "{hello}");
                s
            })
            .collect();
        // The next one is told why, without sending anything, and closed.
        let (_s, refused) = ask_blocking(&path, "");
        (held, refused)
    });
    assert_eq!(refused["error"]["code"], "limit_exceeded", "{refused}");
    // Root and other accounts are served while nobody holds its share.
    let out = agent.run("autocad", &["true"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(charged(&server, "autocad").await, 7);
    let path = agent.socket.clone();
    let (_s, hello) = as_uid(1, move || {
        ask_blocking(&path, r#"{"op":"hello","protocol":1}"#)
    });
    assert_eq!(hello["ok"], true, "{hello}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_flood() {
    // 2,000 `launch` requests naming one long-lived process left 2,000 live
    // sessions and `flexctl status` failed (a 508 KB reply). One session per
    // (process, product); a per-account cap; `status` always fits a line.
    let (_rates, server, agent) = setup().await;
    let long = Running::new(Command::new("sleep").arg("60").spawn().unwrap());
    let launch = json!({"op": "launch", "product": "autocad", "pid": long.pid()}).to_string();
    let mut conn = SocketConn::open(&agent.socket).await;
    let first = conn.ask(launch.as_bytes()).await;
    assert_eq!(first["ok"], true, "{first}");
    // Again on the same connection: the same run, joined again.
    for _ in 0..2_000 {
        let reply = conn.ask(launch.as_bytes()).await;
        assert_eq!(reply["session"], first["session"], "{reply}");
    }
    for _ in 0..50 {
        let mut other = SocketConn::open(&agent.socket).await;
        assert_eq!(
            other.ask(launch.as_bytes()).await["error"]["code"],
            "conflict"
        );
    }
    assert_eq!(agent.sessions().len(), 1);
    assert_eq!(charged(&server, "autocad").await, 7);

    // Distinct processes: up to the per-account cap of wrapped sessions.
    let cap = flex_agent::limits::MAX_WRAPPER_SESSIONS_PER_ACCOUNT;
    let mut procs = Vec::new();
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..cap + 5 {
        let p = Running::new(Command::new("sleep").arg("60").spawn().unwrap());
        let mut c = SocketConn::open(&agent.socket).await;
        let line = json!({"op": "launch", "product": "revit", "pid": p.pid()}).to_string();
        let reply = c.ask(line.as_bytes()).await;
        if reply["ok"] != true {
            assert_eq!(reply["error"]["code"], "limit_exceeded", "{reply}");
            refused += 1;
        }
        procs.push(p);
        conns.push(c);
    }
    assert_eq!(
        refused, 6,
        "{cap} wrapped sessions at most, one held already"
    );
    let status = agent.status();
    let listed = status["sessions"].as_array().unwrap().len();
    assert_eq!(listed, flex_agent::limits::MAX_STATUS_ITEMS);
    assert_eq!(status["sessions_omitted"], cap - listed, "{status}");
    let out = agent.flexctl().arg("status").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("more sessions"));
}

/// Starts `sleep 60` as pid `pid`, moving the kernel's pid counter; `None` if
/// other processes kept taking it.
fn spawn_with_pid(pid: u32) -> Option<std::process::Child> {
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid (root, and a kernel with the sysctl)");
        let mut c = Command::new("sleep").arg("60").spawn().unwrap();
        if c.id() == pid {
            return Some(c);
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn pid_reuse_kills_the_wrong_process() {
    // Processes were signalled by bare pid: a client launched with the pid of
    // a short-lived process of its own, let it exit, and a later close hit
    // whatever held that pid by then. Sessions hold a pidfd: a process that
    // exits ends its session, and a gone process is never signalled.
    let (rates, mut server, agent) = setup().await;
    let mut short = Command::new("sleep").arg("1").spawn().unwrap();
    let pid = short.id();
    {
        let mut conn = SocketConn::open(&agent.socket).await;
        let line = json!({"op": "launch", "product": "fusion", "pid": pid}).to_string();
        assert_eq!(conn.ask(line.as_bytes()).await["ok"], true);
        // The connection closes; the session lives on with its process.
    }
    // A product the offline rule must close, to know when it has acted.
    let exe = fake_product(agent.dir.path(), &rates.exe("navisworks"));
    let mut control = Running::product(&exe);
    eventually("the control product's session", WAIT, || async {
        agent.session_of(control.pid())
    })
    .await;
    short.wait().unwrap();
    let mut victim = spawn_with_pid(pid).expect("pid reused for the victim");
    eventually("the exited process's session to end", WAIT, || async {
        agent
            .sessions()
            .iter()
            .all(|s| s["product"] != "fusion")
            .then_some(())
    })
    .await;
    server.kill9();
    let status = control.wait_exit(Duration::from_secs(8) + WAIT).await;
    assert_eq!(status.signal(), Some(15), "the offline close happened");
    assert!(
        alive(victim.id()),
        "the process that reused pid {pid} was signalled"
    );
    let _ = victim.kill();
    let _ = victim.wait();
}

/// The system's dynamic loader for this architecture.
fn dynamic_loader() -> PathBuf {
    [
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/ld-linux-aarch64.so.1",
        "/lib/ld-linux-x86-64.so.2",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("a dynamic loader")
}

#[tokio::test(flavor = "multi_thread")]
async fn detection_evaded_through_the_loader() {
    // `ld-linux-x86-64.so.2 ./acad` runs the product with the loader's comm,
    // exe and argv[0]: it was not detected.
    let (rates, server, agent) = setup().await;
    let exe = fake_product(agent.dir.path(), &rates.exe("maya"));
    let loader = dynamic_loader();
    for args in [vec![], vec!["--argv0", "notepad", "--inhibit-cache"]] {
        let mut p = Running::new(
            Command::new(&loader)
                .args(&args)
                .arg(&exe)
                .arg("60")
                .spawn()
                .unwrap(),
        );
        let s = eventually("the loaded product's session", WAIT, || async {
            agent.session_of(p.pid())
        })
        .await;
        assert_eq!(s["product"], "maya", "{s}");
        assert_eq!(s["origin"], "watcher", "{s}");
        p.quit();
    }
    assert_eq!(
        charged(&server, "maya").await,
        7,
        "one window for both runs"
    );
}

/// Adds a second per-result product to a rate sheet.
fn with_stitch(rates: &Rates) -> String {
    format!(
        "{}\n\n[[products]]\nid = \"photo-stitch\"\nname = \"Photo Stitch\"\n\
         charge = {{ model = \"per_result\", tokens = 1, per = 10 }}\n\
         executables = {{ linux = [\"{}\"], macos = [], windows = [] }}\n",
        rates.toml,
        rates.exe("stitch")
    )
}

fn result(agent: &Agent, args: &[&str]) -> std::process::Output {
    agent.flexctl().arg("result").args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn per_result_job_charged_twice_or_refused_forever() {
    // Without --job every call was a new claim (a retry after a lost answer
    // charged twice); the job's claim id left out the product (the same job
    // id on another product was a 409); a refusal for lack of tokens was
    // cached forever under that job id.
    let mut rates = Rates::unique();
    rates.toml = with_stitch(&rates);
    let policy = format!("{SHORT_POLICY}pack_sizes = [1, 100]\n");
    let server = flex_server(&policy, Some(&rates), 1).await;
    let mut agent = Agent::start(&server, "").await;

    let job = [
        "--product",
        "recap-photo",
        "--count",
        "85",
        "--job",
        "scan-1",
    ];
    let out = result(&agent, &job);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("out_of_tokens"));
    server.buy(100).await;
    let out = result(&agent, &job);
    assert!(out.status.success(), "retried after the purchase: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("charged 2 tokens"));
    let out = result(&agent, &job);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already charged"),
        "{out:?}"
    );
    assert_eq!(charged(&server, "recap-photo").await, 2);
    let out = result(
        &agent,
        &[
            "--product",
            "photo-stitch",
            "--count",
            "20",
            "--job",
            "scan-1",
        ],
    );
    assert!(
        out.status.success(),
        "same job id, another product: {out:?}"
    );
    assert_eq!(charged(&server, "photo-stitch").await, 2);

    // Without --job: when the answer cannot be had, flexctl prints the line
    // that retries the same job; running it twice charges once.
    agent.kill9();
    let out = result(&agent, &["--product", "recap-photo", "--count", "10"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retry = stderr
        .lines()
        .find_map(|l| {
            l.split_once("run: flexctl ")
                .map(|(_, cmd)| cmd.to_string())
        })
        .unwrap_or_else(|| panic!("no retry line in: {stderr}"));
    assert!(retry.contains("--job "), "{retry}");
    agent.spawn();
    for _ in 0..2 {
        let args: Vec<&str> = retry.split_whitespace().collect();
        let out = agent.flexctl().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    assert_eq!(charged(&server, "recap-photo").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_hides_what_the_user_paid_for() {
    // After a charged launch had ended, `flexctl status` said "no product
    // sessions" and showed no window.
    let (_rates, _server, agent) = setup().await;
    let out = agent.run("autocad", &["true"]);
    assert!(out.status.success(), "{out:?}");
    let status = agent.status();
    assert_eq!(status["sessions"], json!([]));
    let w = &status["windows"][0];
    assert_eq!(
        (&w["product"], &w["source"], &w["tokens_charged"]),
        (&json!("autocad"), &json!("tokens"), &json!(7)),
        "{status}"
    );
    let (start, end) = (
        flex_e2e::t(w["start"].as_str().unwrap()),
        flex_e2e::t(w["end"].as_str().unwrap()),
    );
    assert_eq!(
        end - start,
        chrono::Duration::seconds(6),
        "the short policy's day"
    );
    let out = agent.flexctl().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("AutoCAD") && text.contains("7 tokens"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_admin_token() {
    // An empty or short admin token was accepted.
    for token in ["", "short"] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(flex_e2e::bin("flex-server"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("FLEX_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with admin token {token:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("16"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_directory_others_can_write() {
    // The socket's directory was not checked: another account could swap the
    // socket for a symlink between bind and chmod.
    let (_rates, _server, mut agent) = setup().await;
    agent.kill9();
    let open = agent.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let config = std::fs::read_to_string(&agent.config).unwrap().replace(
        &agent.socket.display().to_string(),
        &open.join("agent.sock").display().to_string(),
    );
    let path = agent.dir.path().join("unsafe.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(flex_e2e::bin("flex-agent"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("writable by others") && stderr.contains("open"),
        "{stderr}"
    );
    assert!(!open.join("agent.sock").exists());
}
