//! The Windows agent end to end, under Wine, against a Linux `flex-server` on
//! loopback: the MSI installed silently with its properties, the service
//! started by the Service Control Manager, `flexctl.exe` over the named pipe,
//! detection by polling (by file name and by version resource), the offline
//! close, a major upgrade that keeps config, journal and enrollment, and
//! uninstall. Then deployment as IT meets it (issue 18): `sc stop` while the
//! enrollment answer is on its way, a refused token replaced through the MSI,
//! a corrected server URL given to a second install or a reinstall, and the
//! exit codes of bad properties, rebuilds and downgrades.
//!
//! Needs wine64, mingw and the Windows build and MSI, which tests/run.sh
//! installs and builds (`bash install/windows/build-msi.sh --debug`). It never
//! skips: without them it fails and says what to run.
//!
//! Not shown here because Wine cannot: a second Windows account (every Wine
//! process runs as the one prefix user, who is an administrator), a caller
//! who is not an administrator (Wine's ImpersonateNamedPipeClient gives the
//! agent an administrator's token even for a client started with the
//! Administrators group deny-only), toasts, and the Session 0 isolation of a
//! real service.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use flex_e2e::agent::{charges_of, eventually, Running, USER};
use flex_e2e::proxy::Proxy;
use flex_e2e::wine::{msi, msi_version, Wine, MSI_FAILED};
use flex_e2e::{Server, ServerOpts};
use serde_json::{json, Value};

/// A "day" of one minute, and an offline limit of ten seconds.
const POLICY: &str = r#"
[policy]
window = "60s"
flex_offline_limit = "10s"
offline_warnings = ["5s"]
subscription_offline_limit = "60s"
subscription_warning = "10s"
heartbeat_interval = "1s"
renewal_grace = "2s"
close_grace = "2s"
"#;

const OFFLINE_LIMIT: Duration = Duration::from_secs(10);
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Windows executable names of this test's products. Every copy of the test
/// product says OriginalFilename flexfake.exe; only a copy no file name
/// matches is taken for Inventor by that.
const RATES: &str = r#"
[[products]]
id = "autocad"
name = "AutoCAD"
charge = { model = "daily", tokens = 7 }
executables = { windows = ["acad.exe"] }

[[products]]
id = "navisworks"
name = "Navisworks"
charge = { model = "daily", tokens = 9 }
executables = { windows = ["Roamer.exe"] }

[[products]]
id = "inventor"
name = "Inventor"
charge = { model = "daily", tokens = 5 }
executables = { windows = ["Inventor.exe"], windows_version = [{ original_filename = "flexfake.exe" }] }

[[products]]
id = "revit"
name = "Revit"
charge = { model = "daily", tokens = 10 }
executables = { windows = ["Revit.exe"] }
"#;

const WAIT: Duration = Duration::from_secs(60);
const PROGRAM_FILES: &str = r"C:\Program Files\Flex";

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `flexctl.exe ARGS...` as installed by the MSI.
fn flexctl(wine: &Wine, args: &[&str]) -> Output {
    wine.run(&format!(r"{PROGRAM_FILES}\flexctl.exe"), args)
}

fn status(wine: &Wine) -> Option<Value> {
    let out = flexctl(wine, &["status", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

async fn balance(server: &Server) -> i64 {
    server.ok(reqwest::Method::GET, "/balance", None).await["balance"]
        .as_i64()
        .expect("balance")
}

fn session<'a>(status: &'a Value, product: &str) -> Option<&'a Value> {
    status["sessions"]
        .as_array()?
        .iter()
        .find(|s| s["product"] == product)
}

fn service_state(wine: &Wine) -> String {
    text(&wine.run("sc", &["query", "flex-agent"]))
}

/// Starts a copy of the test product (a GUI program with a window and a
/// version resource) at Windows path `exe`, running for `secs` seconds.
fn start_product(wine: &Wine, exe: &str, secs: u32) -> Running {
    wine.put(&wine.helpers.join("fake-product.exe"), exe);
    Running::new(
        wine.cmd(exe)
            .arg(secs.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the test product under Wine"),
    )
}

/// Resident memory of a process of this prefix (the first whose command line
/// names `program`) as Linux sees the Wine process: `VmRSS` (Wine's own mapped code included) and `RssAnon` (its
/// private memory), in KiB. A figure for the report, not a test.
fn rss_kib(wine: &Wine, program: &str) -> Option<(u64, u64)> {
    let prefix = format!("WINEPREFIX={}", wine.prefix.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let dir = e.path();
        let cmd = std::fs::read(dir.join("cmdline")).ok()?;
        if !String::from_utf8_lossy(&cmd).contains(program) {
            return None;
        }
        let env = std::fs::read(dir.join("environ")).ok()?;
        env.split(|&b| b == 0)
            .any(|v| v == prefix.as_bytes())
            .then_some(())?;
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some((field("VmRSS:")?, field("RssAnon:")?))
    })
}

/// The lines of a child's output, as they come.
fn line_reader(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test]
async fn msi_service_pipe_detection_and_offline_close_under_wine() {
    let msi = msi();
    let mut wine = Wine::new();
    let mut server = Server::start(ServerOpts {
        config: Some(POLICY.to_string()),
        rates: Some(RATES.to_string()),
        ..Default::default()
    });
    server.buy(500).await;
    server.flex_user(USER).await;
    let token = server
        .ok(
            reqwest::Method::POST,
            "/enrollment-tokens",
            Some(json!({"note": "wine"})),
        )
        .await["token"]
        .as_str()
        .expect("enrollment token")
        .to_string();
    let token_file = wine.host_path(r"C:\deploy\enroll-token.txt");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    // Test setup only: Wine 8 lacks ProcessPrng (see tests/wine/prng-shim.c).
    wine.shim_into(PROGRAM_FILES);

    // ---- silent install, as Intune/SCCM/GPO would run it
    let install = wine.run(
        "msiexec",
        &[
            "/i",
            &Wine::windows_path(&msi),
            "/qn",
            &format!("SERVER_URL={}", server.url),
            r"ENROLL_TOKEN_FILE=C:\deploy\enroll-token.txt",
            "EMAIL_TEMPLATE={user}@example.com",
        ],
    );
    assert!(
        install.status.success(),
        "msiexec /i failed: {}",
        text(&install)
    );
    assert!(wine
        .host_path(r"C:\Program Files\Flex\flex-agent.exe")
        .exists());
    assert!(wine
        .host_path(r"C:\Program Files\Flex\flexctl.exe")
        .exists());
    // The notifier starts at every user's logon.
    let entry = run_key(&wine);
    let said = String::from_utf8_lossy(&entry.stdout);
    assert!(
        entry.status.success() && said.contains("flexctl.exe") && said.contains("notify"),
        "the notifier's Run entry: {}",
        text(&entry)
    );
    let query = service_state(&wine);
    assert!(
        query.contains("flex-agent"),
        "service not registered: {query}"
    );
    // The MSI starts the service (StartAgent) on Windows; Wine's service
    // manager sees a service msiexec installed only after a restart.
    wine.reboot();
    // Automatic start: it runs after the "reboot". Stopped and started by hand
    // as IT would.
    eventually("the service to start at boot", WAIT, || async {
        service_state(&wine).contains("RUNNING").then_some(())
    })
    .await;
    let stop = wine.run("sc", &["stop", "flex-agent"]);
    assert!(stop.status.success(), "sc stop flex-agent: {}", text(&stop));
    eventually("the service to stop", WAIT, || async {
        service_state(&wine).contains("STOPPED").then_some(())
    })
    .await;
    let start = wine.run("sc", &["start", "flex-agent"]);
    assert!(
        start.status.success(),
        "sc start flex-agent: {}",
        text(&start)
    );
    let ready = eventually("the service to answer on its pipe", WAIT, || async {
        status(&wine)
    })
    .await;
    assert_eq!(ready["detection"], "polling", "{ready}");
    let device_id = ready["device_id"].clone();
    assert!(
        ready["device_id"].is_string(),
        "enrolled on first start: {ready}"
    );
    assert!(
        service_state(&wine).contains("RUNNING"),
        "{}",
        service_state(&wine)
    );
    let config =
        std::fs::read_to_string(wine.host_path(r"C:\ProgramData\Flex\agent.toml")).unwrap();
    assert!(config.contains(&server.url), "{config}");
    assert!(config.contains("{user}@example.com"), "{config}");

    // ---- the notifier (printing; Wine shows no toasts) subscribed over the pipe
    let mut notifier = wine
        .cmd(format!(r"{PROGRAM_FILES}\flexctl.exe"))
        .args(["notify", "--print", "--no-desktop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flexctl.exe notify");
    let lines = line_reader(notifier.stdout.take().expect("notifier stdout"));
    let said = line_reader(notifier.stderr.take().expect("notifier stderr"));
    let mut notifier = Running::new(notifier);
    // Its readiness line (after what it says about its idle source): from
    // here on no event of this user is missed.
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = said
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the notifier did not subscribe; it said {before:?}"));
        if line.contains("subscribed") {
            break;
        }
        before.push(line);
    }
    eprintln!(
        "windows: resident memory under Wine, idle (VmRSS, RssAnon) in KiB: agent service \
         {:?}; flexctl.exe notify {:?}; a plain Wine process (the keep-alive cmd /c ping) {:?}",
        rss_kib(&wine, "flex-agent.exe"),
        rss_kib(&wine, "notify"),
        rss_kib(&wine, "ping")
    );

    // ---- flexctl run: charged once, then free inside the window
    let ran = wine.host_path(r"C:\deploy\ran-autocad.txt");
    let first = flexctl(
        &wine,
        &[
            "run",
            "--product",
            "autocad",
            "--",
            "cmd",
            "/c",
            r"echo ran>C:\deploy\ran-autocad.txt",
        ],
    );
    assert!(first.status.success(), "{}", text(&first));
    assert!(ran.exists(), "the wrapped command ran");
    assert_eq!(charges_of(&server, "autocad").await.len(), 1);
    assert_eq!(charges_of(&server, "autocad").await[0]["tokens"], 7);
    assert_eq!(balance(&server).await, 493);
    let shown = lines
        .recv_timeout(WAIT)
        .expect("the notifier prints the charge");
    assert!(
        shown.contains("AutoCAD: 7 tokens charged") && shown.contains("Balance: 493 tokens"),
        "{shown}"
    );
    let second = flexctl(
        &wine,
        &["run", "--product", "autocad", "--", "cmd", "/c", "exit 3"],
    );
    assert_eq!(
        second.status.code(),
        Some(3),
        "exit code passed on: {}",
        text(&second)
    );
    assert_eq!(
        charges_of(&server, "autocad").await.len(),
        1,
        "second launch free"
    );
    assert_eq!(balance(&server).await, 493);

    // ---- a denied launch exits 77 and never runs the command
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(json!({"mode": "deny", "products": ["revit"]})),
        )
        .await;
    let denied = flexctl(
        &wine,
        &[
            "run",
            "--product",
            "revit",
            "--",
            "cmd",
            "/c",
            r"echo ran>C:\deploy\ran-revit.txt",
        ],
    );
    assert_eq!(denied.status.code(), Some(77), "{}", text(&denied));
    assert!(!wine.host_path(r"C:\deploy\ran-revit.txt").exists());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Revit not started"));

    // ---- detection by polling: a copy named like Navisworks' executable
    let started = Instant::now();
    let mut roamer = start_product(&wine, r"C:\apps\Roamer.exe", 300);
    let detected = eventually("Roamer.exe to be detected and charged", WAIT, || async {
        let s = status(&wine)?;
        let sess = session(&s, "navisworks")?.clone();
        (!charges_of(&server, "navisworks").await.is_empty()).then_some(sess)
    })
    .await;
    eprintln!(
        "windows: Roamer.exe charged {:?} after its start (Wine start included)",
        started.elapsed()
    );
    assert_eq!(detected["source"], "tokens", "{detected}");
    assert_eq!(charges_of(&server, "navisworks").await[0]["tokens"], 9);

    // ---- a renamed copy, recognised by its version resource
    let mut renamed = start_product(&wine, r"C:\apps\tools\renamed-tool.exe", 300);
    eventually(
        "the renamed copy to be charged as inventor",
        WAIT,
        || async { (!charges_of(&server, "inventor").await.is_empty()).then_some(()) },
    )
    .await;
    let s = status(&wine).expect("status");
    assert_eq!(s["detection"], "polling");
    let pid = session(&s, "inventor").expect("inventor session")["pid"]
        .as_u64()
        .expect("the session's pid")
        .to_string();
    // The helper the service starts in a user's session asks the product to
    // close (WM_CLOSE); the product quits by itself and the session ends.
    eventually(
        "flexctl close-windows to find the product's window",
        WAIT,
        || async {
            flexctl(&wine, &["close-windows", &pid])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        renamed.wait_exit(WAIT).await.code(),
        Some(0),
        "quit on WM_CLOSE"
    );
    eventually("the inventor session to end", WAIT, || async {
        let s = status(&wine)?;
        session(&s, "inventor").is_none().then_some(())
    })
    .await;

    // ---- offline: closed after the limit, not before
    server.kill9();
    let s = eventually("a status without the server", WAIT, || async {
        status(&wine)
    })
    .await;
    let last_contact: chrono::DateTime<chrono::Utc> = s["last_server_contact"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("last_server_contact");
    let deadline = last_contact + chrono::Duration::from_std(OFFLINE_LIMIT).unwrap();
    let code = roamer.wait_exit(WAIT).await.code();
    let closed_at = chrono::Utc::now();
    assert!(
        closed_at >= deadline,
        "closed at {closed_at}, before the offline limit ends at {deadline}"
    );
    let late = closed_at - deadline;
    assert!(
        late < chrono::Duration::from_std(CLOSE_GRACE + Duration::from_secs(8)).unwrap(),
        "closed {late} after the offline limit"
    );
    eprintln!(
        "windows: Roamer.exe closed {late} after the offline limit, exit code {code:?} \
         (0: it quit on WM_CLOSE; 1: TerminateProcess after the grace)"
    );
    assert!(matches!(code, Some(0) | Some(1)), "{code:?}");

    notifier.quit();

    // ---- a major upgrade keeps the config, the journal and the enrollment
    let newer_dir = tempfile::tempdir().expect("temp dir");
    let newer = msi_version("0.1.1", newer_dir.path());
    stop_service(&wine).await;
    let upgrade = wine.run("msiexec", &["/i", &Wine::windows_path(&newer), "/qn"]);
    assert!(upgrade.status.success(), "upgrade: {}", text(&upgrade));
    wine.reboot();
    let after = eventually("the upgraded service to answer", WAIT, || async {
        status(&wine)
    })
    .await;
    assert_eq!(after["device_id"], device_id, "still enrolled: {after}");
    assert_eq!(
        std::fs::read_to_string(wine.host_path(r"C:\ProgramData\Flex\agent.toml")).unwrap(),
        config,
        "the config is kept"
    );
    assert_eq!(
        after["last_server_contact"], s["last_server_contact"],
        "the journal is kept: {after}"
    );

    // ---- uninstall removes the service, the binaries and the logon entry
    stop_service(&wine).await;
    let remove = wine.run("msiexec", &["/x", &Wine::windows_path(&newer), "/qn"]);
    assert!(
        remove.status.success(),
        "msiexec /x failed: {}",
        text(&remove)
    );
    // `sc query` named the service before; now it fails and names nothing
    // (Windows says 1060, ERROR_SERVICE_DOES_NOT_EXIST; Wine 8 says nothing).
    let gone = wine.run("sc", &["query", "flex-agent"]);
    assert!(
        !gone.status.success() && !String::from_utf8_lossy(&gone.stdout).contains("flex-agent"),
        "the service is still registered: {}",
        text(&gone)
    );
    assert!(
        !wine
            .host_path(r"C:\Program Files\Flex\flex-agent.exe")
            .exists(),
        "binaries removed"
    );
    assert!(
        !Path::new(&wine.host_path(r"C:\Program Files\Flex\flexctl.exe")).exists(),
        "binaries removed"
    );
    assert!(
        !run_key(&wine).status.success(),
        "the notifier's Run entry is removed: {}",
        text(&run_key(&wine))
    );
}

/// Stops the service and waits until its process has ended. Windows Installer
/// stops a service and waits for it (ServiceControl Wait="yes") before it
/// replaces or removes files; Wine's msi sends the stop without waiting, so
/// the files of a service still ending would stay behind: the test stops it
/// first, as Windows Installer would.
async fn stop_service(wine: &Wine) {
    let stop = wine.run("sc", &["stop", "flex-agent"]);
    assert!(stop.status.success(), "sc stop flex-agent: {}", text(&stop));
    eventually(
        "the service to stop and its process to end",
        WAIT,
        || async {
            (service_state(wine).contains("STOPPED") && rss_kib(wine, "flex-agent.exe").is_none())
                .then_some(())
        },
    )
    .await;
}

/// The notifier's logon entry the MSI writes.
fn run_key(wine: &Wine) -> Output {
    wine.run(
        "reg",
        &[
            "query",
            r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run",
            "/v",
            "FlexNotify",
        ],
    )
}

// ------------------------------------------------------------------ deployment as IT meets it

const DEPLOY: &str = r"C:\deploy";
const CONFIG: &str = r"C:\ProgramData\Flex\agent.toml";
const WAITING_TOKEN: &str = r"C:\ProgramData\Flex\enroll-token";

/// A server with tokens and a Flex user, as the first test has.
async fn deploy_server() -> Server {
    let server = Server::start(ServerOpts {
        config: Some(POLICY.to_string()),
        rates: Some(RATES.to_string()),
        ..Default::default()
    });
    server.buy(500).await;
    server.flex_user(USER).await;
    server
}

/// A new enrollment token of `uses` uses.
async fn enroll_token(server: &Server, uses: u32) -> String {
    server
        .ok(
            reqwest::Method::POST,
            "/enrollment-tokens",
            Some(json!({"uses": uses})),
        )
        .await["token"]
        .as_str()
        .expect("enrollment token")
        .to_string()
}

/// Writes `token` to `C:\deploy\NAME` and returns that Windows path.
fn token_file(wine: &Wine, name: &str, token: &str) -> String {
    let path = format!(r"{DEPLOY}\{name}");
    let host = wine.host_path(&path);
    std::fs::create_dir_all(host.parent().unwrap()).unwrap();
    std::fs::write(host, format!("{token}\n")).unwrap();
    path
}

/// `msiexec /i MSI /qn PROPERTIES... /l*v LOG`, as a deployment tool runs it:
/// its output and the text of its log.
fn install(wine: &Wine, msi: &Path, properties: &[&str]) -> (Output, String) {
    let log = format!(r"{DEPLOY}\msiexec-{}.log", uuid::Uuid::new_v4().simple());
    std::fs::create_dir_all(wine.host_path(DEPLOY)).unwrap();
    let path = Wine::windows_path(msi);
    let mut args = vec!["/i", path.as_str(), "/qn", "/l*v", log.as_str()];
    args.extend_from_slice(properties);
    let out = wine.run("msiexec", &args);
    let bytes = std::fs::read(wine.host_path(&log)).unwrap_or_default();
    (out, String::from_utf8_lossy(&bytes).into_owned())
}

/// The newest lines of the service's log files.
fn agent_log(wine: &Wine) -> String {
    let dir = wine.host_path(r"C:\ProgramData\Flex\logs");
    let mut text = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    text
}

fn config_text(wine: &Wine) -> String {
    std::fs::read_to_string(wine.host_path(CONFIG)).unwrap_or_default()
}

/// The devices the server knows.
async fn devices(server: &Server) -> Vec<Value> {
    server.ok(reqwest::Method::GET, "/devices", None).await["devices"]
        .as_array()
        .expect("devices")
        .clone()
}

/// `sc start flex-agent` (the service stopped), then its status once it answers.
async fn start_and_wait_enrolled(wine: &Wine) -> Value {
    let start = wine.run("sc", &["start", "flex-agent"]);
    assert!(start.status.success(), "sc start: {}", text(&start));
    eventually("the service to enroll and answer", WAIT, || async {
        status(wine).filter(|s| s["device_id"].is_string())
    })
    .await
}

/// The service's status once it has enrolled, after an install that (re)started
/// it. Should Wine's service manager not know the service yet (see the first
/// test), a service left stopped is started as IT would.
async fn enrolled_after_install(wine: &Wine) -> Value {
    eventually(
        "the service, (re)started by the install, to enroll",
        WAIT,
        || async {
            if let Some(s) = status(wine).filter(|s| s["device_id"].is_string()) {
                return Some(s);
            }
            if service_state(wine).contains("STOPPED") {
                eprintln!("windows: the service is stopped after the install; sc start");
                let _ = wine.run("sc", &["start", "flex-agent"]);
            }
            None
        },
    )
    .await
}

/// Issue 18, item 1, on Windows: `sc stop` lands while the enroll request is
/// in flight (the server made the device and spent the token, the answer is
/// still on its way); `sc start` enrolls as that same device, spending nothing
/// more, instead of being refused with the spent token.
#[tokio::test]
async fn msi_service_stopped_while_enrolling_wastes_no_token() {
    let msi = msi();
    let mut wine = Wine::new();
    let server = deploy_server().await;
    let token = enroll_token(&server, 1).await;
    let mut proxy = Proxy::holding_enroll_answers(&server.url, 1);
    let file = token_file(&wine, "enroll-token.txt", &token);
    wine.shim_into(PROGRAM_FILES);
    let (out, log) = install(
        &wine,
        &msi,
        &[
            &format!("SERVER_URL={}", proxy.url),
            &format!("ENROLL_TOKEN_FILE={file}"),
        ],
    );
    assert!(out.status.success(), "msiexec /i: {}\n{log}", text(&out));
    wine.reboot();
    proxy.held(1, WAIT).await;
    assert_eq!(
        devices(&server).await.len(),
        1,
        "the server made the device"
    );
    // sc stop returns before the stop completes: wait for STOPPED first.
    stop_service(&wine).await;
    let status = start_and_wait_enrolled(&wine).await;
    let made = devices(&server).await;
    assert_eq!(made.len(), 1, "no orphan device: {made:?}");
    assert_eq!(status["device_id"], made[0]["id"], "{status}");
    let keys = server
        .ok(reqwest::Method::GET, "/enrollment-tokens", None)
        .await;
    assert_eq!(keys["enrollment_tokens"][0]["uses_left"], 0);
    assert!(
        !wine.host_path(WAITING_TOKEN).exists(),
        "the token is used and removed"
    );
    assert!(
        agent_log(&wine).contains("earlier attempt"),
        "{}",
        agent_log(&wine)
    );
}

/// Issue 18, items 2 and 5 (and 6): a token the server refuses stops the
/// service with its reason in the log; the doctor says so in Windows terms;
/// a token file given to the MSI again (a second `msiexec /i`, the product
/// installed) replaces the refused one waiting, and the service enrolls.
#[tokio::test]
async fn msi_token_file_given_again_replaces_a_refused_one() {
    let msi = msi();
    let mut wine = Wine::new();
    let server = deploy_server().await;
    let refused = token_file(&wine, "old-token.txt", "fet_0000not0known0to0this0server");
    wine.shim_into(PROGRAM_FILES);
    let url = format!("SERVER_URL={}", server.url);
    let (out, log) = install(
        &wine,
        &msi,
        &[&url, &format!("ENROLL_TOKEN_FILE={refused}")],
    );
    assert!(out.status.success(), "msiexec /i: {}\n{log}", text(&out));
    assert!(log.contains("placed the enrollment token"), "{log}");
    wine.reboot();
    eventually(
        "the refused token to stop the service, its reason logged",
        WAIT,
        || async {
            let log = agent_log(&wine);
            (service_state(&wine).contains("STOPPED")
                && log.contains("ERROR")
                && log.contains("not known"))
            .then_some(())
        },
    )
    .await;
    assert!(
        wine.host_path(WAITING_TOKEN).exists(),
        "the refused token waits"
    );

    // The doctor, as the administrator IT is: Windows fixes only.
    let doctor = flexctl(&wine, &["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&doctor.stdout).expect("doctor --json");
    let check = |name: &str| -> Value {
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
    };
    let agent = check("agent");
    assert!(
        agent["fix"]
            .as_str()
            .unwrap()
            .contains("sc start flex-agent"),
        "{agent}"
    );
    let enrollment = check("enrollment");
    assert!(
        enrollment["detail"]
            .as_str()
            .unwrap()
            .contains(WAITING_TOKEN),
        "{enrollment}"
    );
    assert!(
        enrollment["fix"]
            .as_str()
            .unwrap()
            .contains(r"C:\ProgramData\Flex\logs"),
        "{enrollment}"
    );
    let whole = report.to_string();
    for linux in ["systemctl", "journalctl", "/etc/flex-agent", "sudo "] {
        assert!(!whole.contains(linux), "the doctor says '{linux}': {whole}");
    }

    // IT gives the installer a good token.
    let good = token_file(&wine, "new-token.txt", &enroll_token(&server, 1).await);
    let (out, log) = install(&wine, &msi, &[&format!("ENROLL_TOKEN_FILE={good}")]);
    assert!(
        out.status.success(),
        "msiexec /i again: {}\n{log}",
        text(&out)
    );
    assert!(log.contains("replacing the one waiting"), "{log}");
    let status = enrolled_after_install(&wine).await;
    assert_eq!(status["device_id"], devices(&server).await[0]["id"]);
}

/// Issue 18, item 3: a server URL that cannot be reached installs (an image
/// built offline must), and the corrected URL given to a second `msiexec /i`
/// replaces it in the kept config, as does one given to a reinstall; what
/// else is in the config stays.
#[tokio::test]
async fn msi_corrected_server_url_replaces_the_kept_one() {
    let msi = msi();
    let mut wine = Wine::new();
    let server = deploy_server().await;
    let file = token_file(&wine, "enroll-token.txt", &enroll_token(&server, 1).await);
    wine.shim_into(PROGRAM_FILES);
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let (out, log) = install(
        &wine,
        &msi,
        &[
            &format!("SERVER_URL={unreachable}"),
            &format!("ENROLL_TOKEN_FILE={file}"),
        ],
    );
    assert!(
        out.status.success(),
        "an unreachable server installs: {}\n{log}",
        text(&out)
    );
    assert!(config_text(&wine).contains(&unreachable));
    // IT's own edit, kept by every later install.
    let edited = format!(
        "# IT: polling is fine here\ndetection = \"polling\"\n{}",
        config_text(&wine)
    );
    std::fs::write(wine.host_path(CONFIG), &edited).unwrap();
    wine.reboot();
    eventually("the service to wait for the server", WAIT, || async {
        agent_log(&wine).contains("cannot enroll yet").then_some(())
    })
    .await;

    let (out, log) = install(&wine, &msi, &[&format!("SERVER_URL={}", server.url)]);
    assert!(
        out.status.success(),
        "msiexec /i again: {}\n{log}",
        text(&out)
    );
    let config = config_text(&wine);
    assert!(
        config.contains(&server.url) && !config.contains(&unreachable),
        "{config}"
    );
    assert!(config.contains("# IT: polling is fine here"), "{config}");
    // The install restarted the service, which now enrolls with the new URL.
    let status = enrolled_after_install(&wine).await;
    assert_eq!(status["device_id"], devices(&server).await[0]["id"]);

    // Uninstall, then reinstall with the server under another name: the kept
    // config takes the new URL, the enrollment stays.
    stop_service(&wine).await;
    let remove = wine.run("msiexec", &["/x", &Wine::windows_path(&msi), "/qn"]);
    assert!(remove.status.success(), "msiexec /x: {}", text(&remove));
    let renamed = server.url.replace("127.0.0.1", "localhost");
    let (out, log) = install(&wine, &msi, &[&format!("SERVER_URL={renamed}")]);
    assert!(out.status.success(), "reinstall: {}\n{log}", text(&out));
    let config = config_text(&wine);
    assert!(config.contains(&renamed), "{config}");
    assert!(config.contains("# IT: polling is fine here"), "{config}");
}

/// Issue 18, item 4: what deployment tools branch on. Missing or malformed
/// properties fail with 1603 and the reason in the `/l*v` log, installing
/// nothing; a rebuilt MSI of the installed version replaces it (one entry in
/// Add/Remove Programs); a downgrade is refused with 1603.
#[tokio::test]
async fn msi_exit_codes_for_bad_properties_rebuilds_and_downgrades() {
    let msi = msi();
    let wine = Wine::new();
    let file = token_file(&wine, "enroll-token.txt", "fet_0123456789abcdef");
    let exe = wine.host_path(r"C:\Program Files\Flex\flex-agent.exe");
    let refused = [
        (
            vec!["SERVER_URL=https://flex.corp.example:8443".to_string()],
            "give ENROLL_TOKEN_FILE=PATH",
        ),
        (
            vec![
                "SERVER_URL=https://flex.corp.example:8443".to_string(),
                r"ENROLL_TOKEN_FILE=C:\deploy\missing.txt".to_string(),
            ],
            r"cannot read the enrollment token file C:\deploy\missing.txt",
        ),
        (
            vec![
                "SERVER_URL=flex.corp.example:8443".to_string(),
                format!("ENROLL_TOKEN_FILE={file}"),
            ],
            "'flex.corp.example:8443'",
        ),
        (
            vec![format!("ENROLL_TOKEN_FILE={file}")],
            "no server URL was given",
        ),
    ];
    for (properties, reason) in refused {
        let props: Vec<&str> = properties.iter().map(String::as_str).collect();
        let (out, log) = install(&wine, &msi, &props);
        assert_eq!(
            out.status.code(),
            Some(MSI_FAILED),
            "{props:?}: {}\n{log}",
            text(&out)
        );
        assert!(
            log.contains(reason),
            "{props:?}: the log does not say {reason}:\n{log}"
        );
        assert!(!exe.exists(), "{props:?}: rolled back");
        assert!(wine.installed_products("Flex licensing agent").is_empty());
    }

    let good = [
        "SERVER_URL=https://flex.corp.example:8443".to_string(),
        format!("ENROLL_TOKEN_FILE={file}"),
    ];
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let (out, log) = install(&wine, &msi, &good);
    assert!(out.status.success(), "{}\n{log}", text(&out));
    let first = wine.installed_products("Flex licensing agent");
    assert_eq!(first.len(), 1, "{first:?}");

    let dir = tempfile::tempdir().unwrap();
    let rebuilt = msi_version(env!("CARGO_PKG_VERSION"), dir.path());
    let (out, log) = install(&wine, &rebuilt, &[]);
    assert!(out.status.success(), "a rebuild: {}\n{log}", text(&out));
    let now = wine.installed_products("Flex licensing agent");
    assert_eq!(now.len(), 1, "one entry in Add/Remove Programs: {now:?}");
    assert_ne!(now, first, "the rebuild replaced the installed product");

    let older = msi_version("0.0.1", dir.path());
    let (out, log) = install(&wine, &older, &[]);
    assert_eq!(
        out.status.code(),
        Some(MSI_FAILED),
        "a downgrade: {}\n{log}",
        text(&out)
    );
    // The launch condition refused it (Windows also logs its message, "A
    // newer version ..."; Wine logs only the condition's outcome).
    assert!(
        log.contains("WIX_DOWNGRADE_DETECTED = {") && log.contains("LaunchConditions"),
        "{log}"
    );
    assert_eq!(wine.installed_products("Flex licensing agent"), now);
}
