//! The Windows agent end to end, under Wine, against a Linux `flex-server` on
//! loopback: the MSI installed silently with its properties, the service
//! started by the Service Control Manager, `flexctl.exe` over the named pipe,
//! detection by polling (by file name and by version resource), the offline
//! close, a major upgrade that keeps config, journal and enrollment, and
//! uninstall.
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
use flex_e2e::wine::{msi, msi_version, Wine};
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
    // Its readiness line: from here on no event of this user is missed.
    let ready = said.recv_timeout(WAIT).expect("the notifier subscribes");
    assert!(ready.contains("subscribed"), "{ready}");
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
