//! The notifier on a real X display: Xvfb started by each test on a display
//! number of its own, the real `flexctl notify` binary, `xdotool` for input,
//! and `flex-test-x11-app`, a program with unsaved work that saves when asked
//! to close the way a window manager asks and loses it on SIGTERM.
//!
//! * Idle time reaches the real agent (its log of `idle` reports), grows
//!   without input, and drops to zero when the pointer moves.
//! * `close_windows` makes the program save and exit, and the notifier
//!   answers with the number of windows it asked: from the socket fake
//!   (`flex_agent::socket::fake`), which pins the notifier's side alone, and
//!   end to end, when the real agent closes the program as a product that has
//!   been offline too long.
//! * A refused launch nobody would see is shown by the wrapper itself.
//! * Idle awareness (R14) with the real agent and server: a product with no
//!   input on its display and no CPU is paused at its window's end instead of
//!   renewed, and the pointer moving resumes it with one new charge; a
//!   product busy on the CPU with no input is renewed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use flex_agent::socket::fake::{start_fake_agent, FakeHandler};
use flex_agent::testsupport::x11::Xvfb;
use flex_e2e::agent::{
    alive, charges_of, eventually, fake_product, fake_product_of, flex_server, Agent, Rates,
    Running, SHORT_POLICY, WAIT,
};
use flex_e2e::bin;
use flex_e2e::notifier::Notifier;
use flex_protocol::socket::{Event, Request};

/// `flexctl --socket SOCKET notify --print --no-desktop` on `x`'s display,
/// reporting every `every`.
fn notifier(socket: &Path, x: &Xvfb, every: &str) -> Notifier {
    let mut cmd = Command::new(bin("flexctl"));
    cmd.arg("--socket")
        .arg(socket)
        .args(["notify", "--print", "--no-desktop", "--report-every", every])
        .env("DISPLAY", &x.display)
        // No session bus, no logind session: the X display is the source.
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("WAYLAND_DISPLAY");
    Notifier::start(cmd)
}

/// The idle times the agent logged as reported, in order.
fn reports(agent: &Agent) -> Vec<u64> {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("idle report"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("idle_secs=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_time_reaches_the_agent_and_input_resets_it() {
    let x = Xvfb::start();
    let server = flex_server(SHORT_POLICY, None, 100).await;
    let agent = Agent::start(&server, "").await;
    let notifier = notifier(&agent.socket, &x, "1s");
    assert!(
        notifier
            .said()
            .iter()
            .any(|l| l == "flexctl notify: idle time from X11"),
        "{:?}",
        notifier.said()
    );

    // No input on the new display: the reported idle time grows.
    let grown = eventually("an idle report of 3 s or more", WAIT, || async {
        reports(&agent).into_iter().rposition(|s| s >= 3)
    })
    .await;
    let before = reports(&agent)[grown];
    x.move_pointer(200, 100);
    // Without input the idle time only grows: a smaller one is the input.
    eventually("a report of the input", WAIT, || async {
        reports(&agent)[grown + 1..]
            .iter()
            .any(|&s| s < before)
            .then_some(())
    })
    .await;
}

/// Starts `flex-test-x11-app FILE` on `x`'s display and waits for its window.
fn x11_app(x: &Xvfb, file: &Path) -> Running {
    x11_program(&bin("flex-test-x11-app"), x, file)
}

/// Starts `exe` (a copy of flex-test-x11-app) with FILE on `x`'s display and
/// waits for its window.
fn x11_program(exe: &Path, x: &Xvfb, file: &Path) -> Running {
    let mut child = Command::new(exe)
        .arg(file)
        .env("DISPLAY", &x.display)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start flex-test-x11-app");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("app stdout"))
        .read_line(&mut line)
        .expect("read the app's readiness");
    assert_eq!(
        line.trim(),
        "ready",
        "flex-test-x11-app did not show its window"
    );
    Running::new(child)
}

#[tokio::test(flavor = "multi_thread")]
async fn close_windows_makes_the_program_save_and_exit() {
    let x = Xvfb::start();
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler.clone());
    let notifier = notifier(&agent.path, &x, "30s");

    // The control: SIGTERM loses the work, so only a close request saves it.
    let lost = dir.path().join("lost.dwg");
    let mut killed = x11_app(&x, &lost);
    killed.term();
    killed.wait_exit(WAIT).await;
    assert!(
        !lost.exists(),
        "the program saved on SIGTERM: the test proves nothing"
    );

    let saved = dir.path().join("drawing.dwg");
    let mut app = x11_app(&x, &saved);
    let kill_at = Utc::now() + chrono::Duration::seconds(30);
    handler
        .publish(Event::CloseWindows {
            pid: app.pid(),
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            kill_at,
        })
        .await;
    let status = app.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "saved\n");

    // The agent is told one window was asked; the user, by when it is stopped.
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            match seen.recv().await.expect("fake agent stopped").1 {
                Request::Closing { pid, windows } => return (pid, windows),
                _ => continue,
            }
        }
    })
    .await
    .expect("no closing answer");
    assert_eq!(answer, (app.pid(), 1));
    let told = notifier
        .printed_where("the close under way", |l| {
            l.starts_with("[critical] AutoCAD is being closed: ")
        })
        .await;
    assert!(told.contains("A save prompt has "), "{told}");

    // A pid with no window: 0, so the agent signals it instead.
    handler
        .publish(Event::CloseWindows {
            pid: 1,
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            kill_at,
        })
        .await;
    let none = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Request::Closing { pid, windows } = seen.recv().await.unwrap().1 {
                return (pid, windows);
            }
        }
    })
    .await
    .expect("no closing answer for a pid without windows");
    assert_eq!(none, (1, 0));
    agent.stop().await;
}

/// A launcher's refusal with no terminal and no notifier on its display is
/// shown by `flexctl run` itself: a `zenity` dialog when zenity is installed
/// (here a script on PATH that records what it was asked to show).
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_nobody_would_see_is_shown_by_the_wrapper() {
    use std::os::unix::fs::PermissionsExt;
    let x = Xvfb::start();
    let server = flex_server(SHORT_POLICY, None, 100).await;
    server
        .ok(
            reqwest::Method::PUT,
            "/default-assignments",
            Some(serde_json::json!({"mode": "deny", "products": ["maya"]})),
        )
        .await;
    let agent = Agent::start(&server, "").await;
    agent.rate_sheet_known().await;
    let bin_dir = tempfile::tempdir().unwrap();
    let shown = bin_dir.path().join("shown");
    let zenity = bin_dir.path().join("zenity");
    std::fs::write(
        &zenity,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {0}.tmp && mv {0}.tmp {0}\n",
            shown.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&zenity, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin_dir.path().to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();

    // As a desktop launcher runs it: no terminal on stderr.
    let out = agent
        .flexctl()
        .args(["run", "--product", "maya", "--", "true"])
        .env("DISPLAY", &x.display)
        .env("PATH", &path)
        .stderr(Stdio::piped())
        .output()
        .expect("run flexctl");
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let args = eventually("the zenity dialog", WAIT, || async {
        std::fs::read_to_string(&shown).ok()
    })
    .await;
    assert!(args.starts_with("--error\n"), "{args}");
    assert!(args.contains("--title=Maya was not started\n"), "{args}");
    assert!(
        args.contains(
            "Your account is not licensed for Maya. Ask your license administrator for access."
        ),
        "{args}"
    );
}

/// A copy of flex-test-x11-app named `exe_name`, with a tail of its own so
/// that only this test's agent takes it for the product (see
/// [`flex_e2e::agent::fake_product`]).
fn x11_product(dir: &Path, exe_name: &str) -> std::path::PathBuf {
    fake_product_of(&bin("flex-test-x11-app"), dir, exe_name)
}

/// The whole close that keeps work, with the real agent: a product with
/// unsaved work is charged, the server goes away, and at the offline limit
/// the agent asks the notifier, which asks the product's window; the product
/// saves and exits by itself (SIGTERM would have lost the work, see
/// `close_windows_makes_the_program_save_and_exit`), and the user is told
/// how long the save prompt has, then that it was closed.
#[tokio::test(flavor = "multi_thread")]
async fn an_offline_close_lets_the_product_save() {
    let x = Xvfb::start();
    let rates = Rates::unique();
    let mut server = flex_server(SHORT_POLICY, Some(&rates), 500).await;
    let agent = Agent::start(&server, "").await;
    agent.rate_sheet_known().await;
    let notifier = notifier(&agent.socket, &x, "2s");
    let dir = tempfile::tempdir().unwrap();
    let exe = x11_product(dir.path(), &rates.exe("acad"));
    let saved = dir.path().join("drawing.dwg");
    let mut product = x11_program(&exe, &x, &saved);
    let pid = product.pid();
    eventually("the product charged", WAIT, || async {
        agent.session_of(pid).map(|_| ())
    })
    .await;
    notifier
        .printed_where("the charge", |l| {
            l.starts_with("[normal] AutoCAD: 7 tokens charged")
        })
        .await;

    server.kill9();
    let status = product.wait_exit(Duration::from_secs(40)).await;
    assert!(
        status.success(),
        "the product did not exit by itself: {status:?}"
    );
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), "saved\n");
    let closing = notifier
        .printed_where("the close under way", |l| {
            l.starts_with("[critical] AutoCAD is being closed: ")
        })
        .await;
    assert!(
        closing.contains("AutoCAD was asked to close: save your work now. A save prompt has "),
        "{closing}"
    );
    notifier
        .printed_where("the closure", |l| {
            l.starts_with("[critical] AutoCAD was closed: ")
        })
        .await;
}

/// [`SHORT_POLICY`] with idle awareness on a scale a test can wait for: idle
/// after 2 s without input and under 2 % of a core, in 6 s windows. Short
/// runs are not refunded here, so every charge row stays a charge.
fn idle_policy() -> String {
    format!("{SHORT_POLICY}idle_after = \"2s\"\nidle_cpu_percent = 2.0\nshort_use_grace = \"0s\"\n")
}

/// The bed of the idle tests: an X display, a server under [`idle_policy`],
/// an agent that has contacted it, and a notifier on the display reporting
/// every second.
struct IdleBed {
    x: Xvfb,
    rates: Rates,
    server: flex_e2e::Server,
    agent: Agent,
    notifier: Notifier,
    dir: tempfile::TempDir,
}

impl IdleBed {
    async fn start() -> IdleBed {
        let x = Xvfb::start();
        let rates = Rates::unique();
        let server = flex_server(&idle_policy(), Some(&rates), 500).await;
        let agent = Agent::start(&server, "").await;
        agent.rate_sheet_known().await;
        let notifier = notifier(&agent.socket, &x, "1s");
        IdleBed {
            x,
            rates,
            server,
            agent,
            notifier,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// AutoCAD's charge rows.
    async fn charges(&self) -> usize {
        charges_of(&self.server, "autocad").await.len()
    }

    /// Waits until AutoCAD has `n` charge rows.
    async fn charged_times(&self, what: &str, n: usize) {
        eventually(what, WAIT, || async {
            (self.charges().await == n).then_some(())
        })
        .await;
    }
}

/// A product nobody uses (no input on its X display, a `sleep` using no CPU)
/// is not renewed when its window ends: no second charge, it keeps running,
/// `flexctl status` shows it paused, and the user is told. Moving the mouse
/// resumes it with exactly one new charge.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_product_is_paused_not_renewed_and_input_resumes_it() {
    let bed = IdleBed::start().await;
    let product = Running::product(&fake_product(bed.dir.path(), &bed.rates.exe("acad")));
    let pid = product.pid();
    bed.charged_times("the product charged", 1).await;

    // The window (6 s) ends with no input for over 2 s and no CPU: paused.
    let session = eventually("the product paused", WAIT, || async {
        bed.agent
            .session_of(pid)
            .filter(|s| !s["paused_since"].is_null())
    })
    .await;
    assert_eq!(session["state"], "paused", "{session}");
    assert_eq!(bed.charges().await, 1, "a paused product was charged again");
    assert!(alive(pid), "a paused product was closed");
    let out = bed
        .agent
        .flexctl()
        .arg("status")
        .output()
        .expect("flexctl status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("AutoCAD") && l.contains("paused since ")),
        "{text}"
    );
    let paused = |l: &str| l.starts_with("[normal] AutoCAD is paused: ");
    bed.notifier.printed_where("the pause", paused).await;
    // Paused stays unpaid while nobody comes back (another window's length).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(bed.charges().await, 1);
    assert!(!bed.agent.session_of(pid).unwrap()["paused_since"].is_null());

    // Input: a new window at once, charged once.
    bed.x.move_pointer(300, 200);
    bed.notifier
        .printed_where("the resume", |l| {
            l.starts_with("[normal] AutoCAD is in use again: 7 tokens charged")
        })
        .await;
    assert_eq!(bed.charges().await, 2);
    let session = bed.agent.session_of(pid).expect("the resumed session");
    assert!(session["paused_since"].is_null(), "{session}");
    let told = bed.notifier.printed_lines();
    assert_eq!(
        told.iter().filter(|l| paused(l)).count(),
        1,
        "the pause was told more than once: {told:?}"
    );
}

/// A product busy on the CPU (a render, say) is in use even with no input on
/// the desktop: its window is renewed. The notifier does report the user
/// idle for longer than `idle_after`, so only the CPU keeps it charged.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_product_without_input_is_renewed() {
    let bed = IdleBed::start().await;
    // `yes` into /dev/null: a process that uses a whole core.
    let exe = fake_product_of(
        Path::new("/usr/bin/yes"),
        bed.dir.path(),
        &bed.rates.exe("acad"),
    );
    let product = Running::spawn(Command::new(&exe).stdout(Stdio::null()));
    let pid = product.pid();
    bed.charged_times("the product charged", 1).await;
    bed.charged_times("the renewal", 2).await;
    let idle = reports(&bed.agent);
    assert!(
        idle.iter().any(|&s| s >= 2),
        "the user was never reported idle: the renewal proves nothing; reports {idle:?}"
    );
    let session = bed.agent.session_of(pid).expect("the renewed session");
    assert!(session["paused_since"].is_null(), "{session}");
    let told = bed.notifier.printed_lines();
    assert!(!told.iter().any(|l| l.contains("is paused")), "{told:?}");
}
