//! Test support: a private D-Bus session bus, a recording desktop notification
//! service on it, a real Secret Service (gnome-keyring) on it, and a private
//! X server ([`x11::Xvfb`]). One fake of each thing, shared by the agent's unit
//! tests and, through the `test-support` cargo feature, by the end-to-end
//! tests in `tests/`.
//!
//! Tests that need a desktop bus (the credential store's keyring path, desktop
//! notifications) start their own bus here instead of touching the machine's: a
//! `dbus-daemon` with a throwaway config that allows everything and activates
//! nothing, so the only services on it are the ones a test starts. Readiness is
//! never a guess: the bus is up once it has printed its address, and a service is
//! up once its well-known name has an owner, polled with a deadline.
//!
//! Setup failures panic with what to install, so a machine without D-Bus or
//! gnome-keyring fails these tests loudly instead of skipping them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::OwnedVariant;

#[cfg(target_os = "linux")]
pub mod leaderless;
#[cfg(target_os = "linux")]
pub mod x11;

/// How long a test waits for a daemon, or a notification, to appear before failing.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A C program of the tests (a process shape Rust cannot make safely, a bare
/// reader for a benchmark's floor), built with `cc` once per source version
/// next to the test binary: test binaries share it and nothing is left in
/// `/tmp`. Panics with what to install when there is no C compiler.
#[cfg(unix)]
pub fn c_program(name: &str, source: &str) -> std::path::PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    let dir = std::env::current_exe()
        .expect("the test binary's path")
        .parent()
        .expect("the test binary's directory")
        .to_path_buf();
    let out = dir.join(format!("flex-test-{name}-{:016x}", h.finish()));
    if out.exists() {
        return out;
    }
    let work = tempfile::tempdir().expect("a temporary directory");
    let src = work.path().join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write the C source");
    let built = work.path().join(name);
    let status = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&built)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run cc to build the test program {name} (install gcc): {e}")
        });
    assert!(
        status.success(),
        "cc failed to build the test program {name}: {status}"
    );
    // Another test binary may build it at the same time: the rename is atomic.
    let staged = dir.join(format!("flex-test-{name}.{}", std::process::id()));
    std::fs::copy(&built, &staged).expect("copy the built program");
    std::fs::rename(&staged, &out).expect("put the built program in place");
    out
}

/// A `dbus-daemon` for one test; killed on drop.
pub struct PrivateBus {
    child: Child,
    /// The address to put in `DBUS_SESSION_BUS_ADDRESS` or to connect to.
    pub address: String,
    dir: tempfile::TempDir,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        let dir = tempfile::tempdir().expect("temp dir for the private bus");
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        // No <servicedir>: nothing is auto-activated, so gnome-keyring or a
        // notification daemon from the host cannot answer in place of the test's.
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write the private bus config");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--print-address=1")
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start dbus-daemon ({e}): install D-Bus (apt-get install -y dbus)")
            });
        // dbus-daemon prints the address only once it listens: that is readiness.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("dbus-daemon stdout"))
            .read_line(&mut line)
            .expect("read the private bus address");
        let address = line.trim().to_string();
        if address.is_empty() {
            let status = child.wait().ok();
            panic!("dbus-daemon exited without printing an address ({status:?})");
        }
        PrivateBus {
            child,
            address,
            dir,
        }
    }

    /// A scratch directory that lives as long as the bus.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether `name` currently has an owner on this bus.
    pub fn name_has_owner(&self, name: &str) -> bool {
        let out = Command::new("dbus-send")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
            ])
            .arg(format!("string:{name}"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run dbus-send ({e}): install D-Bus (apt-get install -y dbus)")
            });
        assert!(
            out.status.success(),
            "dbus-send NameHasOwner failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).contains("boolean true")
    }

    /// Waits until `name` has an owner; panics after the deadline or when
    /// `owner` (the process expected to take the name) exits first.
    pub fn wait_for_name(&self, name: &str, owner: &mut Child) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if self.name_has_owner(name) {
                return;
            }
            if let Ok(Some(status)) = owner.try_wait() {
                panic!("the process meant to own {name} exited first ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not appear on the private bus within {READY_DEADLINE:?}"
            );
            // A bounded poll: the bus offers no cheaper "wait for a name" to a
            // client that is not yet connected.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The desktop notification service's well-known name.
pub const NOTIFICATIONS_NAME: &str = "org.freedesktop.Notifications";

/// One notification as the desktop's notification service received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The id the service gave it: a replacement keeps the id it replaces.
    pub id: u32,
    /// The `replaces_id` it was sent with (0: a new notification).
    pub replaces_id: u32,
    pub app_name: String,
    pub summary: String,
    pub body: String,
    /// The `urgency` hint: 0 low, 1 normal, 2 critical; `None` when not sent.
    pub urgency: Option<u8>,
}

/// The `urgency` hint value of a critical notification.
pub const URGENCY_CRITICAL: u8 = 2;
/// The `urgency` hint value of a normal notification.
pub const URGENCY_NORMAL: u8 = 1;

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Recorded>>,
    /// Ids taken off the screen with `CloseNotification`, in order.
    closed: Mutex<Vec<u32>>,
    next_id: Mutex<u32>,
    changed: tokio::sync::Notify,
}

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.closed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The D-Bus object: records what `Notify` is called with.
struct Recorder(Arc<Log>);

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Recorder {
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        hints: HashMap<String, OwnedVariant>,
        _expire_timeout: i32,
    ) -> u32 {
        let urgency = hints.get("urgency").and_then(|v| u8::try_from(&**v).ok());
        // As the specification says: a replacement keeps its id, anything
        // else gets a new one.
        let id = if replaces_id != 0 {
            replaces_id
        } else {
            let mut next = self.0.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *next += 1;
            *next
        };
        self.0.lock().push(Recorded {
            id,
            replaces_id,
            app_name,
            summary,
            body,
            urgency,
        });
        self.0.changed.notify_waiters();
        id
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "recorder".into(),
            "flex tests".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, id: u32) {
        self.0.closed().push(id);
        self.0.changed.notify_waiters();
    }
}

/// A recording `org.freedesktop.Notifications` service on a [`PrivateBus`],
/// standing in for the desktop's notification daemon. It serves from the
/// calling tokio runtime until dropped.
pub struct NotificationServer {
    _connection: zbus::Connection,
    log: Arc<Log>,
}

impl NotificationServer {
    /// Serves on `bus`; the name is owned (clients can notify) once this returns.
    pub async fn start(bus: &PrivateBus) -> NotificationServer {
        let log = Arc::new(Log::default());
        let connection = zbus::connection::Builder::address(bus.address.as_str())
            .name(NOTIFICATIONS_NAME)
            .serve_at("/org/freedesktop/Notifications", Recorder(log.clone()))
            .build()
            .await
            .expect("cannot serve notifications on the private bus");
        NotificationServer {
            _connection: connection,
            log,
        }
    }

    /// Everything received so far, oldest first.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().clone()
    }

    /// The ids closed so far (`CloseNotification`), oldest first.
    pub fn closed(&self) -> Vec<u32> {
        self.log.closed().clone()
    }

    /// Waits (up to [`READY_DEADLINE`]) until notification `id` was closed.
    pub async fn wait_closed(&self, id: u32) {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            let changed = self.log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.closed().contains(&id) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "notification {id} was not closed within {READY_DEADLINE:?}; closed: {:?}, received: {:#?}",
                    self.closed(),
                    self.recorded()
                );
            }
        }
    }

    /// The first notification received (already, or within
    /// [`READY_DEADLINE`]) that satisfies `matches`; panics naming `what` and
    /// listing what did arrive when none does.
    pub async fn wait_for(&self, what: &str, matches: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            // Registered before looking, so a notification arriving in between
            // still wakes us.
            let changed = self.log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = self.log.lock().iter().find(|r| matches(r)) {
                return found.clone();
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "no notification {what} within {READY_DEADLINE:?}; received: {:#?}",
                    self.recorded()
                );
            }
        }
    }
}

/// GNOME's idle monitor (`org.gnome.Mutter.IdleMonitor`) on a
/// [`PrivateBus`], answering `GetIdletime` with the milliseconds the test
/// sets in [`IdleMonitor::idle_ms`]. Serves until dropped.
pub struct IdleMonitor {
    _connection: zbus::Connection,
    pub idle_ms: Arc<std::sync::atomic::AtomicU64>,
}

struct IdleMonitorObject(Arc<std::sync::atomic::AtomicU64>);

#[zbus::interface(name = "org.gnome.Mutter.IdleMonitor")]
impl IdleMonitorObject {
    fn get_idletime(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl IdleMonitor {
    pub async fn start(bus: &PrivateBus) -> IdleMonitor {
        let idle_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let connection = zbus::connection::Builder::address(bus.address.as_str())
            .name("org.gnome.Mutter.IdleMonitor")
            .serve_at(
                "/org/gnome/Mutter/IdleMonitor/Core",
                IdleMonitorObject(idle_ms.clone()),
            )
            .build()
            .await
            .expect("cannot serve the idle monitor on the private bus");
        IdleMonitor {
            _connection: connection,
            idle_ms,
        }
    }
}

/// The Secret Service name gnome-keyring takes.
pub const SECRETS_NAME: &str = "org.freedesktop.secrets";

/// gnome-keyring's Secret Service on a private bus, with a scratch HOME and an
/// unlocked login keyring; both are torn down on drop.
pub struct SecretService {
    daemon: Child,
    // Declared after the daemon so the bus outlives it while dropping.
    pub bus: PrivateBus,
}

impl SecretService {
    /// The password of the scratch login keyring.
    pub const PASSWORD: &'static str = "flex-test-keyring";

    pub fn start() -> SecretService {
        let bus = PrivateBus::start();
        let home = bus.dir().join("home");
        let runtime = bus.dir().join("run");
        for d in [&home, &runtime] {
            std::fs::create_dir_all(d).expect("scratch dirs for gnome-keyring");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))
                .expect("XDG_RUNTIME_DIR mode");
        }
        let mut daemon = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start gnome-keyring-daemon ({e}): install it \
                     (apt-get install -y gnome-keyring)"
                )
            });
        // --unlock reads the login keyring's password up to EOF, creating the
        // keyring with it when there is none (a fresh HOME).
        {
            let mut stdin = daemon.stdin.take().expect("gnome-keyring stdin");
            stdin
                .write_all(Self::PASSWORD.as_bytes())
                .expect("give gnome-keyring its password");
        }
        bus.wait_for_name(SECRETS_NAME, &mut daemon);
        SecretService { daemon, bus }
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
