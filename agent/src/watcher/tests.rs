//! Watcher tests with real processes: a copy of a harmless binary under a product's
//! executable name, run as another user so the reported uid means something.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use flex_protocol::api::{ChargeModel, Executables, Product};
use tokio::sync::mpsc;

use super::*;

const NOBODY: u32 = 65534;

fn product(id: &str, exe: &str) -> Product {
    Product {
        id: id.into(),
        name: format!("Test {id}"),
        charge: ChargeModel::Daily { tokens: 7 },
        executables: Executables {
            linux: vec![exe.into()],
            macos: vec![exe.into()],
            windows: vec![format!("{exe}.exe")],
            windows_version: Vec::new(),
        },
        sample: false,
    }
}

/// The fake product process: `binary` copied to a temp dir as `name`.
struct FakeProduct {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl FakeProduct {
    fn new(binary: &str, name: &str) -> FakeProduct {
        let dir = tempfile::tempdir().unwrap();
        // Let the unprivileged test user reach the binary.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join(name);
        std::fs::copy(binary, &path).unwrap();
        FakeProduct { _dir: dir, path }
    }

    /// Starts it as `nobody`. Retries ETXTBSY: a thread of this test process may
    /// have forked while the copy was still open for writing.
    fn spawn(&self, args: &[&str], stdin: Stdio) -> Child {
        let mut stdin = Some(stdin);
        for _ in 0..50 {
            let mut cmd = Command::new(&self.path);
            cmd.args(args).uid(NOBODY).gid(NOBODY);
            cmd.stdin(stdin.take().unwrap_or(Stdio::null()));
            match cmd.spawn() {
                Ok(child) => return child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::yield_now();
                    continue;
                }
                Err(e) => panic!(
                    "cannot start {} as nobody (tests run as root): {e}",
                    self.path.display()
                ),
            }
        }
        panic!("{} stayed busy", self.path.display());
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

/// Next event about `pid`; other processes' events are skipped. The timeout only
/// bounds a failing test.
async fn next_for(rx: &mut mpsc::Receiver<ProcEvent>, pid: u32) -> ProcEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = rx.recv().await.expect("watcher stopped");
            if ev.process.pid == pid {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event for pid {pid}"))
}

fn assert_start(ev: &ProcEvent, kind: ProcEventKind, pid: u32, product: &str, exe: &Path) {
    assert_eq!(ev.kind, kind, "{ev:?}");
    assert_eq!(ev.process.pid, pid);
    assert_eq!(ev.owner.uid().unwrap(), NOBODY);
    assert_eq!(ev.product, product);
    assert_eq!(ev.exe_name, exe.file_name().unwrap().to_str().unwrap());
    assert_eq!(ev.exe_path.as_deref(), Some(exe));
    let age = Utc::now() - ev.started_at;
    assert!(
        age.num_seconds() >= -2 && age.num_seconds() < 60,
        "start time {}",
        ev.started_at
    );
}

fn config(source: SourceChoice) -> WatcherConfig {
    WatcherConfig {
        source,
        poll_interval: Duration::from_millis(50),
        channel_capacity: 64,
    }
}

async fn start_and_exit(source: SourceChoice, expected: DetectionSource, name: &str) {
    let fake = FakeProduct::new("/bin/sleep", name);
    let (handle, mut rx) = Watcher::start(config(source), &[product(name, name)])
        .unwrap_or_else(|e| panic!("cannot start the {expected:?} watcher: {e}"));
    assert_eq!(handle.source(), expected);

    let mut child = fake.spawn(&["30"], Stdio::null());
    let pid = child.id();
    let ev = next_for(&mut rx, pid).await;
    assert_start(&ev, ProcEventKind::Started, pid, name, fake.path());

    child.kill().unwrap();
    child.wait().unwrap();
    let ev = next_for(&mut rx, pid).await;
    match ev.kind {
        ProcEventKind::Exited { signal, .. } => {
            if expected == DetectionSource::ProcConnector {
                assert_eq!(signal, Some(libc::SIGKILL));
            }
        }
        other => panic!("expected an exit, got {other:?}"),
    }
    assert_eq!(
        (ev.owner.uid().unwrap(), ev.product.as_str()),
        (NOBODY, name)
    );
}

#[tokio::test]
async fn polling_reports_start_and_exit() {
    start_and_exit(SourceChoice::Polling, DetectionSource::Polling, "acadpoll").await;
}

#[tokio::test]
async fn connector_reports_start_and_exit() {
    start_and_exit(
        SourceChoice::ProcConnector,
        DetectionSource::ProcConnector,
        "acadcn",
    )
    .await;
}

#[tokio::test]
async fn connector_reports_the_exit_code() {
    let fake = FakeProduct::new("/bin/sh", "acadsh");
    let (_handle, mut rx) = Watcher::start(
        config(SourceChoice::ProcConnector),
        &[product("acadsh", "acadsh")],
    )
    .unwrap();
    // The product waits for a line on stdin, so it is still there when /proc is read.
    let mut child = fake.spawn(&["-c", "read x; exit 3"], Stdio::piped());
    let pid = child.id();
    let ev = next_for(&mut rx, pid).await;
    assert_start(&ev, ProcEventKind::Started, pid, "acadsh", fake.path());
    drop(child.stdin.take());
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert_eq!(
        next_for(&mut rx, pid).await.kind,
        ProcEventKind::Exited {
            code: Some(3),
            signal: None
        }
    );
}

#[tokio::test]
async fn running_processes_are_adopted() {
    for (source, name) in [
        (SourceChoice::Polling, "adoptpoll"),
        (SourceChoice::ProcConnector, "adoptcn"),
    ] {
        let fake = FakeProduct::new("/bin/sleep", name);
        let mut child = fake.spawn(&["30"], Stdio::null());
        let pid = child.id();
        let (_handle, mut rx) = Watcher::start(config(source), &[product(name, name)]).unwrap();
        let ev = next_for(&mut rx, pid).await;
        assert_start(&ev, ProcEventKind::Adopted, pid, name, fake.path());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(
            next_for(&mut rx, pid).await.kind,
            ProcEventKind::Exited { .. }
        ));
    }
}

#[tokio::test]
async fn new_rate_sheet_adopts_running_processes() {
    for (source, name) in [
        (SourceChoice::Polling, "latepoll"),
        (SourceChoice::ProcConnector, "latecn"),
    ] {
        let fake = FakeProduct::new("/bin/sleep", name);
        let (handle, mut rx) = Watcher::start(config(source), &[]).unwrap();
        let mut child = fake.spawn(&["30"], Stdio::null());
        let pid = child.id();
        handle.set_products(&[product(name, name)]);
        let ev = next_for(&mut rx, pid).await;
        assert_eq!(ev.product, name);
        assert_eq!(ev.owner.uid().unwrap(), NOBODY);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn sysinfo_poller_diffs_processes() {
    let name = "acadsysinfo";
    let fake = FakeProduct::new("/bin/sleep", name);
    let matcher = Matcher::new(&[product(name, name)]);
    let mut tracker = sysinfo_poll::SysinfoTracker::default();
    let _ = tracker.scan(&matcher, false);
    let mut child = fake.spawn(&["30"], Stdio::null());
    let pid = child.id();
    let events = tracker.scan(&matcher, false);
    let ev = events
        .iter()
        .find(|e| e.process.pid == pid)
        .expect("start not seen");
    assert_eq!(ev.kind, ProcEventKind::Started);
    assert_eq!(
        (
            ev.owner.uid().unwrap(),
            ev.product.as_str(),
            ev.exe_name.as_str()
        ),
        (NOBODY, name, name)
    );
    assert!(
        tracker
            .scan(&matcher, false)
            .iter()
            .all(|e| e.process.pid != pid),
        "reported twice"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let events = tracker.scan(&matcher, false);
    let ev = events
        .iter()
        .find(|e| e.process.pid == pid)
        .expect("exit not seen");
    assert!(matches!(ev.kind, ProcEventKind::Exited { .. }));
}
