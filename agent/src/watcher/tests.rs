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
        id: id.parse().unwrap(),
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
        // A content of its own: products are also known by their content, and
        // a plain copy of `sleep` would make every `sleep` on the machine one.
        unique_content(&path, name);
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

/// Appends bytes to an executable copy (an ELF file runs the same with a
/// tail): its content is its own.
pub(crate) fn unique_content(path: &Path, tag: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "flex test product {tag} {}", uuid::Uuid::new_v4()).unwrap();
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
        product_dirs: Vec::new(),
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

/// A child killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A product whose main thread ends while another thread runs on (a
/// `pthread_exit` in `main`) still runs: it is found when it starts and when
/// it runs already, its main thread's end does not end its run, and the run
/// ends when its last thread does.
#[tokio::test]
async fn a_product_that_ends_its_main_thread_runs_until_its_last_thread_ends() {
    use crate::testsupport::leaderless;
    let program = leaderless::program().to_str().unwrap();
    for (source, name) in [
        (SourceChoice::Polling, "headlesspoll"),
        (SourceChoice::ProcConnector, "headlesscn"),
    ] {
        let fake = FakeProduct::new(program, name);
        // Without its main thread before the watcher starts: adopted.
        let mut early = KillOnDrop(fake.spawn(&[], Stdio::null()));
        leaderless::wait_main_thread_ended(early.id());
        let (_handle, mut rx) = Watcher::start(config(source), &[product(name, name)]).unwrap();
        let ev = next_for(&mut rx, early.id()).await;
        assert_start(&ev, ProcEventKind::Adopted, early.id(), name, fake.path());

        // Seen while whole, then its main thread ends.
        let mut late = KillOnDrop(fake.spawn(&["wait"], Stdio::piped()));
        let ev = next_for(&mut rx, late.id()).await;
        assert_start(&ev, ProcEventKind::Started, late.id(), name, fake.path());
        std::io::Write::write_all(late.stdin.as_mut().unwrap(), b"x").unwrap();
        leaderless::wait_main_thread_ended(late.id());

        // Started after that (and itself ending its main thread at once):
        // whatever the watcher made of the main thread's end came first.
        let mut marker = KillOnDrop(fake.spawn(&[], Stdio::null()));
        let ev = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let ev = rx.recv().await.expect("watcher stopped");
                assert!(
                    !matches!(ev.kind, ProcEventKind::Exited { .. }),
                    "{source:?}: a run ended while its process runs: {ev:?}"
                );
                if ev.process.pid == marker.id() {
                    return ev;
                }
            }
        })
        .await
        .expect("the marker is seen");
        assert_start(&ev, ProcEventKind::Started, marker.id(), name, fake.path());

        for child in [&mut early, &mut late, &mut marker] {
            let child = &mut child.0;
            let pid = child.id();
            child.kill().unwrap();
            child.wait().unwrap();
            let ev = next_for(&mut rx, pid).await;
            assert!(
                matches!(ev.kind, ProcEventKind::Exited { .. }),
                "{source:?}: {ev:?}"
            );
        }
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

/// Starts `program args` as `nobody`, retrying ETXTBSY (see [`FakeProduct::spawn`]).
fn spawn_nobody(program: &str, args: &[&str]) -> Child {
    for _ in 0..50 {
        match Command::new(program)
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .spawn()
        {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::yield_now(),
            Err(e) => panic!("cannot start {program} as nobody (tests run as root): {e}"),
        }
    }
    panic!("{program} stayed busy");
}

/// A product installed in a directory the watcher indexes (`product_dirs`),
/// and a directory `nobody` may write to.
struct Installed {
    product: FakeProduct,
    scratch: tempfile::TempDir,
}

impl Installed {
    fn new(name: &str) -> Installed {
        let product = FakeProduct::new("/bin/sleep", name);
        let scratch = tempfile::tempdir().unwrap();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        Installed { product, scratch }
    }

    fn config(&self, source: SourceChoice) -> WatcherConfig {
        WatcherConfig {
            product_dirs: vec![self.product.path().parent().unwrap().to_path_buf()],
            ..config(source)
        }
    }

    fn path(&self) -> &str {
        self.product.path().to_str().unwrap()
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

/// Waits for the start of `pid` as `product` (any other events are skipped).
async fn started_as(rx: &mut mpsc::Receiver<ProcEvent>, pid: u32, product: &str) {
    let ev = next_for(rx, pid).await;
    assert_eq!(ev.kind, ProcEventKind::Started, "{ev:?}");
    assert_eq!(ev.product, product, "{ev:?}");
    assert_eq!(ev.owner.uid(), Some(NOBODY));
}

#[tokio::test]
async fn renamed_without_a_copy_symlink_through_the_loader() {
    // Defect 3a: `ld-linux-x86-64.so.2 ~/notes`, `notes` a symlink to the
    // product, ran uncharged: every name the kernel shows is the loader's or
    // the symlink's.
    let p = Installed::new("acadlnk");
    let link = p.scratch("notes");
    std::os::unix::fs::symlink(p.product.path(), &link).unwrap();
    let (_h, mut rx) = Watcher::start(
        p.config(SourceChoice::ProcConnector),
        &[product("acadlnk", "acadlnk")],
    )
    .unwrap();
    let mut child = spawn_nobody(
        "/lib64/ld-linux-x86-64.so.2",
        &[link.to_str().unwrap(), "30"],
    );
    started_as(&mut rx, child.id(), "acadlnk").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn renamed_without_a_copy_long_library_path() {
    // Defect 3b: a `--library-path` longer than 4 KiB pushed the program out
    // of the part of the command line the agent read.
    let p = Installed::new("acadlib");
    let long = format!("/nonexistent/{}", "x".repeat(6000));
    let (_h, mut rx) = Watcher::start(
        config(SourceChoice::ProcConnector),
        &[product("acadlib", "acadlib")],
    )
    .unwrap();
    let mut child = spawn_nobody(
        "/lib64/ld-linux-x86-64.so.2",
        &["--library-path", &long, p.path(), "30"],
    );
    started_as(&mut rx, child.id(), "acadlib").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn renamed_without_a_copy_valgrind() {
    // Defect 3c: `valgrind --tool=none PRODUCT` runs the product's code in a
    // process whose executable is valgrind's tool.
    let p = Installed::new("revitvg");
    let (_h, mut rx) = Watcher::start(
        p.config(SourceChoice::ProcConnector),
        &[product("revitvg", "revitvg")],
    )
    .unwrap();
    let mut child = spawn_nobody("valgrind", &["--tool=none", "-q", p.path(), "30"]);
    // valgrind execs its tool: the event is about the same pid.
    started_as(&mut rx, child.id(), "revitvg").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn renamed_without_a_copy_bind_mount_in_a_user_namespace() {
    // Defect 3d: an execute-only product bind-mounted under another name in
    // a user namespace: the exe link shows the mount's name, and the file
    // cannot be read by the user to be copied.
    let p = Installed::new("acadbind");
    std::fs::set_permissions(p.product.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let report = p.scratch("report");
    std::fs::write(&report, b"").unwrap();
    std::os::unix::fs::chown(&report, Some(NOBODY), Some(NOBODY)).unwrap();
    let (_h, mut rx) = Watcher::start(
        p.config(SourceChoice::ProcConnector),
        &[product("acadbind", "acadbind")],
    )
    .unwrap();
    let script = format!(
        "mount --bind {} {r} && exec {r} 30",
        p.path(),
        r = report.display()
    );
    let mut child = spawn_nobody("unshare", &["-Urm", "sh", "-c", &script]);
    started_as(&mut rx, child.id(), "acadbind").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn renamed_copy_is_known_by_its_content() {
    let p = Installed::new("acadcopy");
    let copy = p.scratch("holiday-photos");
    std::fs::copy(p.product.path(), &copy).unwrap();
    std::os::unix::fs::chown(&copy, Some(NOBODY), Some(NOBODY)).unwrap();
    let (_h, mut rx) = Watcher::start(
        p.config(SourceChoice::ProcConnector),
        &[product("acadcopy", "acadcopy")],
    )
    .unwrap();
    let mut child = spawn_nobody(copy.to_str().unwrap(), &["30"]);
    started_as(&mut rx, child.id(), "acadcopy").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn polling_never_looks_twice() {
    // Defect 4: with polling, a pid already seen was never examined again, so
    // `sh -c 'sleep 1; exec PRODUCT'` was never charged.
    let p = Installed::new("acadlate");
    let (_h, mut rx) = Watcher::start(
        config(SourceChoice::Polling),
        &[product("acadlate", "acadlate")],
    )
    .unwrap();
    let script = format!("sleep 1; exec {} 30", p.path());
    let mut child = spawn_nobody("sh", &["-c", &script]);
    started_as(&mut rx, child.id(), "acadlate").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The connector lets through only the exits of the pids it was told to
/// follow, and is told after a product is tracked: a product that ended in
/// between sent an exit the kernel filtered out. The tracker ends it when it
/// is told which pids it now follows.
#[cfg(target_os = "linux")]
#[test]
fn a_product_gone_before_its_exit_was_followed_is_ended() {
    let fake = FakeProduct::new("/bin/sleep", "acadgone");
    let matcher = tracker::Matcher::new(&[product("acadgone", "acadgone")]);
    let mut t = tracker::Tracker::new(Vec::new());
    t.scan(&matcher, true);
    let mut child = fake.spawn(&["30"], Stdio::null());
    let pid = child.id();
    let started = t.exec(pid);
    assert!(
        started
            .iter()
            .any(|e| e.kind == ProcEventKind::Started && e.process.pid == pid),
        "{started:?}"
    );
    assert_eq!(t.followed(), [pid]);
    assert!(t.gone(&[pid]).is_empty(), "ended while it runs");
    child.kill().unwrap();
    child.wait().unwrap();
    let ended = t.gone(&[pid]);
    assert!(
        matches!(
            &ended[..],
            [e] if e.process.pid == pid && matches!(e.kind, ProcEventKind::Exited { .. })
        ),
        "{ended:?}"
    );
    assert!(t.followed().is_empty());
}
