//! flexctl against the fake agent (the real socket server with a scripted handler).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use flex_protocol::socket::{CloseReason, Event, Request};
use flex_protocol::ErrorCode;
use tokio::sync::mpsc;

use super::notify::{self, human_duration, notification_for, Notification, Urgency};
use super::run::{run, RunOptions};
use super::*;
use crate::socket::fake::{start_fake_agent, FakeHandler};
use crate::socket::Peer;

fn opts(socket: &std::path::Path, command: &[&str]) -> RunOptions {
    let mut o = RunOptions::new(
        socket.to_owned(),
        "autocad".parse().unwrap(),
        Some("2026".into()),
        command.iter().map(|s| s.to_string()).collect(),
    );
    o.close_grace = Duration::from_millis(300);
    o
}

/// Waits for the request matching `pick` (other requests are skipped).
async fn wait_for<T>(
    seen: &mut mpsc::UnboundedReceiver<(Peer, Request)>,
    pick: impl FnMut(Request) -> Option<T>,
) -> T {
    wait_for_peer(seen, pick).await.1
}

/// Like [`wait_for`], with the peer that sent the request.
async fn wait_for_peer<T>(
    seen: &mut mpsc::UnboundedReceiver<(Peer, Request)>,
    mut pick: impl FnMut(Request) -> Option<T>,
) -> (Peer, T) {
    let wait = async {
        loop {
            let (peer, req) = seen.recv().await.expect("fake agent stopped");
            if let Some(t) = pick(req) {
                return (peer, t);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the request never reached the fake agent")
}

#[tokio::test]
async fn run_passes_the_exit_code_through_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler);
    let socket = agent.path.clone();
    let (_sig_tx, sig_rx) = mpsc::channel(1);
    // The product waits on a FIFO until its attach has reached the agent: the
    // agent only takes a process that still runs.
    let go = dir.path().join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let script = format!("read x < {}; exit 3", go.display());
    let wrapper = tokio::spawn(run(opts(&socket, &["sh", "-c", &script]), sig_rx));

    let (product, version) = wait_for(&mut seen, |r| match r {
        Request::Launch {
            product, version, ..
        } => Some((product, version)),
        _ => None,
    })
    .await;
    assert_eq!(
        (product.as_str(), version.as_deref()),
        ("autocad", Some("2026"))
    );
    let (session, pid) = wait_for(&mut seen, |r| match r {
        Request::Attach { session, pid } => Some((session, pid)),
        _ => None,
    })
    .await;
    assert!(pid > 0);
    tokio::task::spawn_blocking(move || std::fs::write(go, "go\n"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wrapper.await.unwrap().unwrap(), 3);
    let (exit_session, exit_code) = wait_for(&mut seen, |r| match r {
        Request::Exit { session, code } => Some((session, code)),
        _ => None,
    })
    .await;
    assert_eq!((exit_session, exit_code), (session, Some(3)));
}

#[tokio::test]
async fn denied_run_exits_77_without_starting_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    handler.deny(
        ErrorCode::OutOfTokens,
        "the balance of 3 tokens does not cover 7",
    );
    let agent = start_fake_agent(dir.path(), handler);
    let socket = agent.path.clone();
    let marker = dir.path().join("started");
    let (_sig_tx, sig_rx) = mpsc::channel(1);
    let code = run(opts(&socket, &["touch", marker.to_str().unwrap()]), sig_rx)
        .await
        .unwrap();
    assert_eq!(code, EXIT_DENIED);
    assert!(
        !marker.exists(),
        "the command ran although the launch was denied"
    );
    let (_, first) = seen.recv().await.unwrap();
    assert!(matches!(first, Request::Launch { .. }));
    assert!(
        seen.try_recv().is_err(),
        "nothing is attached after a denial"
    );
}

#[tokio::test]
async fn run_forwards_signals_to_the_product() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler);
    let socket = agent.path.clone();
    let (sig_tx, sig_rx) = mpsc::channel(1);
    let wrapper = tokio::spawn(run(opts(&socket, &["sleep", "30"]), sig_rx));
    wait_for(&mut seen, |r| {
        matches!(r, Request::Attach { .. }).then_some(())
    })
    .await;
    // SIGTERM, not Ctrl-C's SIGINT: a suite started in the background by a
    // non-interactive shell inherits SIGINT ignored, and so does the product
    // (as any program started from there would), so SIGINT would not end it.
    sig_tx.send(libc::SIGTERM).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), wrapper)
        .await
        .expect("the forwarded SIGTERM did not end the product")
        .unwrap()
        .unwrap();
    assert_eq!(code, 128 + libc::SIGTERM);
}

#[tokio::test]
async fn agent_closing_the_session_stops_the_product() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler.clone());
    let socket = agent.path.clone();

    // A product that exits on SIGTERM.
    let (_sig_tx, sig_rx) = mpsc::channel(1);
    let wrapper = tokio::spawn(run(opts(&socket, &["sleep", "30"]), sig_rx));
    let session = wait_for(&mut seen, |r| match r {
        Request::Attach { session, .. } => Some(session),
        _ => None,
    })
    .await;
    handler.close_session(session.as_str()).await;
    assert_eq!(wrapper.await.unwrap().unwrap(), 128 + libc::SIGTERM);

    // A product that ignores SIGTERM is killed after the grace period. It says
    // on a fifo when its trap is set, so the close cannot arrive before it.
    let fifo = dir.path().join("ready");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = format!(
        "trap '' TERM; echo > {}; while :; do :; done",
        fifo.display()
    );
    let (_sig_tx, sig_rx) = mpsc::channel(1);
    let wrapper = tokio::spawn(run(opts(&socket, &["sh", "-c", &script]), sig_rx));
    let session = wait_for(&mut seen, |r| match r {
        Request::Attach { session, .. } => Some(session),
        _ => None,
    })
    .await;
    tokio::task::spawn_blocking(move || std::fs::read(fifo).unwrap())
        .await
        .unwrap();
    handler.close_session(session.as_str()).await;
    assert_eq!(wrapper.await.unwrap().unwrap(), 128 + libc::SIGKILL);
}

#[tokio::test]
async fn missing_agent_names_the_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-home.sock");
    let (_sig_tx, sig_rx) = mpsc::channel(1);
    let err = run(opts(&socket, &["true"]), sig_rx).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
        "cannot reach flex-agent at {}: is the service running? try: systemctl status flex-agent",
        socket.display()
    )),
        "{msg}"
    );
}

#[tokio::test]
async fn status_and_result_against_the_fake_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, _seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler);
    let socket = agent.path.clone();
    let cli = |args: &[&str]| {
        let mut all = vec!["flexctl", "--socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    };
    assert_eq!(execute(cli(&["status"])).await.unwrap(), 0);
    assert_eq!(execute(cli(&["status", "--json"])).await.unwrap(), 0);
    assert_eq!(
        execute(cli(&[
            "result",
            "--product",
            "recap-photo",
            "--count",
            "85"
        ]))
        .await
        .unwrap(),
        0
    );
}

#[tokio::test]
async fn user_option_fills_the_user_field_of_run_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler);
    let socket = agent.path.clone();
    // Our own account: the socket server lets anyone name themselves.
    let me = crate::account::name_of_uid(nix::unistd::getuid().as_raw());
    let cli = |args: &[&str]| {
        let mut all = vec!["flexctl", "--socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    };
    let run = cli(&["run", "--product", "autocad", "--user", &me, "--", "true"]);
    assert_eq!(execute(run).await.unwrap(), 0);
    let user = wait_for(&mut seen, |r| match r {
        Request::Launch { user, .. } => Some(user),
        _ => None,
    })
    .await;
    assert_eq!(user.as_deref(), Some(me.as_str()));

    let result = cli(&[
        "result",
        "--product",
        "recap-photo",
        "--count",
        "3",
        "--user",
        &me,
    ]);
    assert_eq!(execute(result).await.unwrap(), 0);
    let user = wait_for(&mut seen, |r| match r {
        Request::Result { user, .. } => Some(user),
        _ => None,
    })
    .await;
    assert_eq!(user.as_deref(), Some(me.as_str()));
}

#[test]
fn status_table_shows_the_facts() {
    let status = crate::socket::fake::sample_status();
    let berlin = super::zone::Zone::Named(chrono_tz::Europe::Berlin);
    let now = Utc::now();
    let text = status::render(&status, now, &berlin);
    for needle in [
        "detection      proc-connector",
        "credentials    file:/var/lib/flex-agent/device-token",
        "balance        93 tokens",
        "(5 min ago)",
        "PRODUCT",
        "AutoCAD",
        "alice",
        "4242",
        "tokens",
        "wrapper",
        "STATE",
        "running",
        // The window the user paid for, and how long reopening is free.
        "FREE TO REOPEN UNTIL",
        "7 tokens",
        "21 h 59 min",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // Times carry their zone.
    let zone_name = berlin
        .format(now, "%H")
        .split_once(' ')
        .unwrap()
        .1
        .to_string();
    assert!(text.contains(&format!(" {zone_name}")), "{text}");
    // Online, nothing counts down.
    assert!(!text.contains("offline left"), "{text}");
    // Without sessions the windows still show (the run ended, the window did not).
    let mut ended = status.clone();
    ended.sessions.clear();
    let text = status::render(&ended, now, &berlin);
    assert!(text.contains("no product sessions"), "{text}");
    assert!(text.contains("7 tokens"), "{text}");
    // People read display names; ids are for `--json`.
    assert!(!text.contains("autocad"), "{text}");
}

#[test]
fn status_shows_paused_and_closing_products_and_the_offline_allowance_when_offline() {
    let mut status = crate::socket::fake::sample_status();
    let utc = super::zone::Zone::Named(chrono_tz::UTC);
    let now = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
    let mut paused = status.sessions[0].clone();
    paused.product_name = Some("Revit".into());
    paused.state = "paused".into();
    paused.paused_since = Some(Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).unwrap());
    let mut closing = status.sessions[0].clone();
    closing.product_name = Some("Maya".into());
    closing.state = "closing".into();
    closing.closes_at = Some(now + chrono::Duration::seconds(89));
    status.sessions = vec![paused, closing];
    status.online = false;
    status.offline_seconds_left = Some(89);
    let text = status::render(&status, now, &utc);
    for needle in [
        "paused since 08:00 UTC",
        "closes at 09:01:29 UTC (in 2 min)",
        "OFFLINE",
        "offline left   2 min before offline products close",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // `--json` carries the same facts.
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["sessions"][0]["paused_since"], "2026-11-30T08:00:00Z");
    assert_eq!(json["sessions"][1]["closes_at"], "2026-11-30T09:01:29Z");
}

#[test]
fn cli_parses_run_with_the_command_after_dashes() {
    let cli = Cli::try_parse_from([
        "flexctl",
        "run",
        "--product",
        "autocad",
        "--",
        "/opt/acad/acad",
        "--flag",
        "file.dwg",
    ])
    .unwrap();
    assert_eq!(cli.socket, crate::paths::current().socket);
    match cli.command {
        Command::Run {
            product,
            command,
            version,
            user,
        } => {
            assert_eq!(product, "autocad");
            assert_eq!(version, None);
            assert_eq!(user, None);
            assert_eq!(command, ["/opt/acad/acad", "--flag", "file.dwg"]);
        }
        other => panic!("parsed as {other:?}"),
    }
    assert!(Cli::try_parse_from(["flexctl", "run", "--product", "autocad"]).is_err());
}

/// The text of every event, pinned as a user reads it (times in UTC here).
#[test]
fn notification_texts_and_urgency() {
    let at = Utc.with_ymd_and_hms(2026, 11, 28, 17, 0, 0).unwrap();
    let name = |n: &str| Some(n.to_string());
    let cases: Vec<(Event, &str, &str, Urgency)> = vec![
        (
            Event::Charged {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                tokens: 7,
                balance: 93,
                window_end: Some(at),
                renewal: false,
            },
            "AutoCAD: 7 tokens charged",
            "Reopening AutoCAD is free until Sat 17:00 UTC. Balance: 93 tokens.",
            Urgency::Normal,
        ),
        (
            Event::Charged {
                product: "recap-photo".parse().unwrap(),
                product_name: name("ReCap Photo"),
                tokens: 1,
                balance: 1,
                window_end: None,
                renewal: false,
            },
            "ReCap Photo: 1 token charged",
            "The job is paid for. Balance: 1 token.",
            Urgency::Normal,
        ),
        (
            Event::Charged {
                product: "revit".parse().unwrap(),
                product_name: name("Revit"),
                tokens: 0,
                balance: 93,
                window_end: Some(at),
                renewal: false,
            },
            "Revit is licensed",
            "No tokens charged. Reopening Revit is free until Sat 17:00 UTC.",
            Urgency::Normal,
        ),
        (
            Event::LowBalance { balance: 12 },
            "Flex token balance is low",
            "12 tokens left. Ask your license administrator to buy more before they run out.",
            Urgency::Normal,
        ),
        (
            Event::OutOfTokens {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
            },
            "Out of Flex tokens",
            "AutoCAD cannot be charged: the token balance is used up. Ask your license administrator to buy tokens.",
            Urgency::Critical,
        ),
        (
            Event::LaunchDenied {
                product: "maya".parse().unwrap(),
                product_name: name("Maya"),
                reason: ErrorCode::NotEntitled,
                message: "ada@example.com has no subscription to Maya and Flex does not include it; ask your license admin".into(),
            },
            "Maya was not started",
            "Your account is not licensed for Maya. Ask your license administrator for access.",
            Urgency::Normal,
        ),
        (
            Event::LaunchDenied {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                reason: ErrorCode::OutOfTokens,
                message: "AutoCAD costs 7 tokens for 24 hours and the balance is 3.".into(),
            },
            "AutoCAD was not started",
            "The Flex token balance does not cover AutoCAD. Ask your license administrator to buy tokens.",
            Urgency::Normal,
        ),
        (
            Event::LaunchDenied {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                reason: ErrorCode::Offline,
                message: "cannot reach the license server".into(),
            },
            "AutoCAD was not started",
            "This computer cannot reach the license server and holds no license for AutoCAD. Connect to the network, then start it again.",
            Urgency::Normal,
        ),
        (
            Event::LaunchDenied {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                reason: ErrorCode::Internal,
                message: "refusing the server's grant for AutoCAD: bad signature.".into(),
            },
            "AutoCAD was not started",
            "Refusing the server's grant for AutoCAD: bad signature. If it happens again, run flexctl status and tell your license administrator.",
            Urgency::Normal,
        ),
        (
            Event::OfflineWarning {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                seconds_left: 1800,
                deadline: at,
            },
            "AutoCAD closes in 30 min",
            "This computer has not reached the license server for too long. Connect to the network before Sat 17:00 UTC, or save your work: AutoCAD will be closed.",
            Urgency::Critical,
        ),
        (
            Event::RenewalFailed {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                reason: ErrorCode::OutOfTokens,
                closes_at: at,
            },
            "AutoCAD license could not be renewed",
            "The token balance does not cover the next window. Save your work: AutoCAD will be closed at Sat 17:00 UTC.",
            Urgency::Critical,
        ),
        (
            Event::ProductClosed {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                reason: CloseReason::Offline,
                message: "this workstation has not reached the license server for 24 h".into(),
            },
            "AutoCAD was closed",
            "This workstation has not reached the license server for 24 h. Connect to the network, then start it again.",
            Urgency::Critical,
        ),
        (
            Event::ProductClosed {
                product: "revit".parse().unwrap(),
                product_name: name("Revit"),
                reason: CloseReason::OutOfTokens,
                message: "Revit costs 10 tokens for 24 hours and the balance is 3; ask your license admin to buy tokens".into(),
            },
            "Revit was closed",
            "The token balance does not cover Revit. Ask your license administrator to buy tokens.",
            Urgency::Critical,
        ),
        (
            Event::ClockRollback { seconds: -259_200 },
            "System clock was set back",
            "The clock moved back by 3 d. Offline time still counts from the last server contact, and the change was reported to your administrator.",
            Urgency::Critical,
        ),
        (
            Event::OfflineWarning {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                seconds_left: 89,
                deadline: at,
            },
            // Rounded up: 89 s is not "1 min".
            "AutoCAD closes in 2 min",
            "This computer has not reached the license server for too long. Connect to the network before Sat 17:00 UTC, or save your work: AutoCAD will be closed.",
            Urgency::Critical,
        ),
        (
            Event::ProductClosing {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                reason: CloseReason::Offline,
                message: "this workstation has not reached the license server for 24 h".into(),
                deadline: at,
            },
            "AutoCAD closes at Sat 17:00 UTC",
            "This workstation has not reached the license server for 24 h. Save your work now. Connect to the network, then start it again.",
            Urgency::Critical,
        ),
        (
            Event::RenewalNotice {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                at,
                tokens: 7,
            },
            "AutoCAD renews at Sat 17:00 UTC for 7 tokens",
            "Close AutoCAD before then to avoid the charge.",
            Urgency::Normal,
        ),
        (
            Event::Refunded {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                tokens: 7,
                balance: 500,
                grace_secs: 300,
            },
            "AutoCAD closed within 5 min: 7 tokens returned",
            "A run this short is not charged. Balance: 500 tokens.",
            Urgency::Normal,
        ),
        (
            Event::Paused {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                since: at,
            },
            "AutoCAD is paused",
            "AutoCAD was not used for a while, so its license was not renewed. It stays open; using it again starts a new charge.",
            Urgency::Normal,
        ),
        (
            Event::Resumed {
                product: "autocad".parse().unwrap(),
                product_name: name("AutoCAD"),
                tokens: 7,
            },
            "AutoCAD is in use again",
            "7 tokens charged for a new window.",
            Urgency::Normal,
        ),
        (
            Event::BackOnline,
            "Back online",
            "The license server is reachable again.",
            Urgency::Normal,
        ),
    ];
    let texts = notify::Texts {
        now: at - chrono::Duration::minutes(30),
        zone: super::zone::Zone::Named(chrono_tz::UTC),
    };
    for (event, summary, body, urgency) in cases {
        let n = texts.event(&event);
        assert_eq!(
            (n.summary.as_str(), n.body.as_str()),
            (summary, body),
            "{event:?}"
        );
        assert_eq!(n.urgency, urgency, "{event:?}");
        assert_reads_well(&n);
    }
    assert_eq!(human_duration(7200), "2 h");
    assert_eq!(human_duration(7500), "2 h 5 min");
    assert_eq!(human_duration(300), "5 min");
    assert_eq!(human_duration(45), "45 s");
    assert_eq!(notify::countdown(89), "2 min");
    assert_eq!(notify::countdown(60), "1 min");
    assert_eq!(notify::countdown(59), "59 s");
    assert_eq!(notify::countdown(3601), "1 h 1 min");
}

/// One summary line without a full stop, one body line of sentences, no
/// repeated punctuation, and no product id when a display name is known.
fn assert_reads_well(n: &Notification) {
    assert!(!n.summary.contains('\n') && !n.body.contains('\n'), "{n:?}");
    assert!(!n.summary.ends_with('.'), "{n:?}");
    assert!(n.body.ends_with('.'), "{n:?}");
    for doubled in ["..", ". .", ";.", ":.", ",.", "  ", "::", ";;", ".;"] {
        assert!(
            !n.body.contains(doubled) && !n.summary.contains(doubled),
            "{doubled:?} in {n:?}"
        );
    }
    for id in ["autocad", "revit", "maya", "recap-photo"] {
        assert!(
            !n.summary.contains(id) && !n.body.contains(id),
            "{id} in {n:?}"
        );
    }
}

/// An agent that sends no display names (older, or before it learned the rate
/// sheet) still gets readable notifications, naming the product by its id.
#[test]
fn notifications_fall_back_to_the_product_id() {
    let n = notification_for(&Event::OutOfTokens {
        product: "autocad".parse().unwrap(),
        product_name: None,
    });
    assert!(n.body.starts_with("autocad cannot be charged"), "{n:?}");
    let n = notification_for(&Event::ProductClosed {
        product: "autocad".parse().unwrap(),
        product_name: Some("  ".into()),
        reason: CloseReason::Denied,
        message: "refused.".into(),
    });
    assert_eq!(n.summary, "autocad was closed");
    assert_eq!(
        n.body,
        "Refused. Ask your license administrator for access."
    );
}

/// A display that hands what it is told to the test.
struct Recorder(mpsc::UnboundedSender<Option<Notification>>);

impl notify::Display for Recorder {
    async fn show(&self, _slot: &notify::Slot, n: Notification) {
        let _ = self.0.send(Some(n));
    }

    async fn withdraw(&self, _slot: &notify::Slot) {
        let _ = self.0.send(None);
    }
}

/// A desktop whose user has been idle for a time the test sets, and whose
/// windows "close" by being counted.
#[derive(Clone, Default)]
struct FakeDesk {
    idle_secs: Arc<AtomicU64>,
    asked: Arc<Mutex<Vec<u32>>>,
}

impl desktop::IdleSource for FakeDesk {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn read(&mut self) -> Result<desktop::IdleReading, desktop::DesktopError> {
        Ok(desktop::IdleReading {
            idle: Duration::from_secs(self.idle_secs.load(Ordering::SeqCst)),
            locked: false,
        })
    }
}

impl desktop::WindowCloser for FakeDesk {
    fn close_windows(&mut self, pid: u32) -> Result<u32, desktop::DesktopError> {
        self.asked.lock().unwrap().push(pid);
        Ok(2)
    }
}

fn fake_desk() -> (FakeDesk, notify::Desk) {
    let fake = FakeDesk::default();
    let desk = notify::Desk::new(desktop::Session::new(
        vec![Box::new(fake.clone())],
        None,
        Some(Box::new(fake.clone())),
    ));
    (fake, desk)
}

#[tokio::test]
async fn notifier_shows_events_and_survives_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler.clone());
    let socket = agent.path.clone();
    let (shown_tx, mut shown) = mpsc::unbounded_channel();
    let options = notify::Options {
        backoff: notify::Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..Default::default()
    };
    let path = socket.clone();
    let (_, desk) = fake_desk();
    let notifier =
        tokio::spawn(async move { notify::run(&path, &Recorder(shown_tx), &desk, options).await });

    wait_for(&mut seen, |r| matches!(r, Request::Subscribe).then_some(())).await;
    handler.publish(Event::LowBalance { balance: 12 }).await;
    assert_eq!(
        shown.recv().await.unwrap().unwrap().summary,
        "Flex token balance is low"
    );

    // The agent restarts: same path, new process (here: new server and handler).
    agent.stop().await;
    let (handler, mut seen) = FakeHandler::new();
    let _agent = start_fake_agent(dir.path(), handler.clone());
    wait_for(&mut seen, |r| matches!(r, Request::Subscribe).then_some(())).await;
    handler
        .publish(Event::OutOfTokens {
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
        })
        .await;
    let n = shown.recv().await.unwrap().unwrap();
    assert_eq!(
        (n.summary.as_str(), n.urgency),
        ("Out of Flex tokens", Urgency::Critical)
    );
    notifier.abort();
}

/// The notifier reports its user's idle time on its subscription, at once
/// on connecting and at once when the user comes back; it answers
/// `close_windows` with the windows it asked and tells the user.
#[tokio::test]
async fn notifier_reports_idle_time_and_answers_close_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (handler, mut seen) = FakeHandler::new();
    let agent = start_fake_agent(dir.path(), handler.clone());
    let (shown_tx, mut shown) = mpsc::unbounded_channel();
    let (fake, desk) = fake_desk();
    fake.idle_secs.store(900, Ordering::SeqCst);
    let path = agent.path.clone();
    let notifier = tokio::spawn(async move {
        notify::run(&path, &Recorder(shown_tx), &desk, Default::default()).await
    });

    // Reported on the subscribed connection (the agent forgets a report
    // when its connection closes), as soon as it subscribed.
    let (subscriber, ()) =
        wait_for_peer(&mut seen, |r| matches!(r, Request::Subscribe).then_some(())).await;
    let (peer, idle) = wait_for_peer(&mut seen, |r| match r {
        Request::Idle { idle_secs, locked } => Some((idle_secs, locked)),
        _ => None,
    })
    .await;
    assert_eq!(idle, (900, false));
    assert_eq!(peer.conn_id, subscriber.conn_id);
    // Input: reported within a sample or two, not at the next half minute.
    fake.idle_secs.store(0, Ordering::SeqCst);
    let back = wait_for(&mut seen, |r| match r {
        Request::Idle { idle_secs, .. } => Some(idle_secs),
        _ => None,
    })
    .await;
    assert_eq!(back, 0);

    let kill_at = Utc::now() + chrono::Duration::seconds(30);
    handler
        .publish(Event::CloseWindows {
            pid: 4242,
            product: "autocad".parse().unwrap(),
            product_name: Some("AutoCAD".into()),
            kill_at,
        })
        .await;
    let answer = wait_for(&mut seen, |r| match r {
        Request::Closing { pid, windows } => Some((pid, windows)),
        _ => None,
    })
    .await;
    assert_eq!(answer, (4242, 2));
    assert_eq!(*fake.asked.lock().unwrap(), [4242]);
    let n = shown.recv().await.unwrap().unwrap();
    assert_eq!(n.summary, "AutoCAD is being closed");
    assert!(
        n.body
            .starts_with("AutoCAD was asked to close: save your work now. A save prompt has "),
        "{n:?}"
    );
    notifier.abort();
    agent.stop().await;
}

/// `flexctl run|result|wrap --product` takes the rate sheet's ids only, and
/// says which value broke the rule before anything reaches the agent.
#[test]
fn a_product_id_off_the_rate_sheets_rule_is_refused_by_name() {
    for args in [
        &["flexctl", "run", "--product", "AutoCAD", "--", "/bin/true"][..],
        &["flexctl", "result", "--product", "AutoCAD", "--count", "3"][..],
        &["flexctl", "wrap", "--product", "AutoCAD", "--", "/bin/true"][..],
    ] {
        let e = Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(
            e.contains("invalid value 'AutoCAD' for '--product <PRODUCT>'")
                && e.contains("product 'AutoCAD' is not a product id: 1-64 lowercase letters, digits or dashes"),
            "{args:?}: {e}"
        );
    }
    assert!(
        Cli::try_parse_from(["flexctl", "run", "--product", "autocad", "--", "/bin/true"]).is_ok()
    );
}
