//! Polling on Windows: a Toolhelp snapshot of the process table each interval.
//!
//! The snapshot gives every pid with its executable's file name, which is all a
//! name match needs, so a poll reads nothing else for processes seen before.
//! A new process whose name matches, or any new process while some product is
//! recognised by its version resource, is opened once: the handle gives its
//! full path (for the version resource, read once per path), its owner and its
//! creation time, and is then held for as long as it is tracked, so its exit is
//! seen on that handle and its pid cannot be reused meanwhile: the daemon's own
//! handle ([`crate::daemon`], opened for the reported [`ProcessId`]) reaches
//! this very process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::tracker::{exited, Matcher};
use super::{ProcEvent, ProcEventKind};
use crate::process::{self, ProcessHandle};
use crate::win32::version::{self, VersionInfo};

/// Version resources kept per executable path (a product runs many times).
const VERSION_CACHE: usize = 4096;

struct Tracked {
    handle: ProcessHandle,
    event: ProcEvent,
}

#[derive(Default)]
pub(crate) struct WindowsTracker {
    tracked: HashMap<u32, Tracked>,
    /// pid → executable name at the last snapshot: a pid reused by another
    /// program between two polls shows up under its new name.
    known: HashMap<u32, String>,
    versions: HashMap<PathBuf, Option<VersionInfo>>,
    scanned: bool,
}

impl WindowsTracker {
    fn version_of(&mut self, path: &PathBuf) -> Option<VersionInfo> {
        if let Some(v) = self.versions.get(path) {
            return v.clone();
        }
        if self.versions.len() >= VERSION_CACHE {
            self.versions.clear();
        }
        let v = version::read(path);
        self.versions.insert(path.clone(), v.clone());
        v
    }

    /// Opens `pid` and returns its event if it is a product process.
    fn examine(
        &mut self,
        pid: u32,
        name: &str,
        matcher: &Matcher,
        kind: ProcEventKind,
    ) -> Option<Tracked> {
        let by_name = matcher.find([name.to_string()]);
        if by_name.is_none() && !matcher.wants_versions() {
            return None;
        }
        let handle = ProcessHandle::open(pid).ok()?;
        let exe_path = handle.exe_path();
        let (product, exe_name) = match by_name {
            Some(found) => found,
            None => {
                let info = self.version_of(exe_path.as_ref()?)?;
                matcher.find_version(
                    info.original_filename.as_deref(),
                    info.product_name.as_deref(),
                )?
            }
        };
        let event = ProcEvent {
            kind,
            process: handle.id(),
            owner: handle.owner().clone(),
            product,
            exe_name,
            exe_path,
            started_at: process::start_time(handle.id()),
        };
        Some(Tracked { handle, event })
    }

    /// Exits of tracked processes (seen on their handles), then new product
    /// processes. With `all`, every process is examined again (the rate sheet
    /// changed); those and everything on the first scan are adopted.
    pub fn scan(&mut self, matcher: &Matcher, all: bool) -> Vec<ProcEvent> {
        let mut out = Vec::new();
        self.tracked.retain(|_, t| {
            let alive = t.handle.is_alive();
            if !alive {
                let code = t.handle.exit_code().map(|c| c as i32);
                out.push(exited(t.event.clone(), code, None));
            }
            alive
        });
        // Once its handle is closed an ended product's pid may go to a new
        // process of the same name before the snapshot: not "seen" any more.
        for ev in &out {
            self.known.remove(&ev.process.pid);
        }
        let Ok(current) = process::snapshot() else {
            return out;
        };
        if !matcher.is_empty() {
            for (pid, name) in &current {
                let seen = self.known.get(pid) == Some(name);
                if (seen && !all) || self.tracked.contains_key(pid) {
                    continue;
                }
                let kind = if !self.scanned || seen {
                    ProcEventKind::Adopted
                } else {
                    ProcEventKind::Started
                };
                if let Some(t) = self.examine(*pid, name, matcher, kind) {
                    out.push(t.event.clone());
                    self.tracked.insert(*pid, t);
                }
            }
        }
        self.known = current.into_iter().collect();
        self.scanned = true;
        out
    }
}

/// When the poller looks: every `interval`, and at once when `events` is
/// notified (by the ETW `session`, kept running as long as the poller).
pub(crate) struct Wakers {
    pub interval: Duration,
    pub events: Arc<Notify>,
    pub session: Option<super::windows_etw::EtwSession>,
}

pub(crate) async fn run(
    mut tracker: WindowsTracker,
    initial: Vec<ProcEvent>,
    wakers: Wakers,
    matcher: Arc<RwLock<Matcher>>,
    rescan: Arc<Notify>,
    tx: mpsc::Sender<ProcEvent>,
) {
    for ev in initial {
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    let Wakers {
        interval,
        events,
        session: _session,
    } = wakers;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            _ = ticker.tick() => false,
            _ = events.notified() => false,
            _ = rescan.notified() => true,
            _ = tx.closed() => return,
        };
        // A snapshot and a few handle calls: quick, but not async.
        let events = tokio::task::block_in_place(|| {
            let m = matcher.read().unwrap_or_else(|e| e.into_inner());
            tracker.scan(&m, all)
        });
        for ev in events {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flex_protocol::api::{ChargeModel, Executables, Product, VersionMatch};

    fn product(id: &str, windows: &[&str], versions: Vec<VersionMatch>) -> Product {
        Product {
            id: id.parse().unwrap(),
            name: id.into(),
            charge: ChargeModel::Daily { tokens: 7 },
            executables: Executables {
                windows: windows.iter().map(|s| s.to_string()).collect(),
                windows_version: versions,
                ..Default::default()
            },
            sample: false,
        }
    }

    fn start(exe: &std::path::Path) -> std::process::Child {
        std::process::Command::new(exe)
            .arg("60")
            .spawn()
            .expect("start a copy of the test product")
    }

    #[test]
    fn detects_by_name_and_by_version_resource_and_sees_exits() {
        // The test product's version resource says OriginalFilename flexfake.exe.
        let product_exe = crate::win32::version::tests::fake_product();
        let original = "flexfake.exe";
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("flexnamed.exe");
        let renamed = dir.path().join("renamed-tool.exe");
        std::fs::copy(&product_exe, &named).unwrap();
        std::fs::copy(&product_exe, &renamed).unwrap();
        let matcher = Matcher::new(&[
            product("by-name", &["FlexNamed.exe"], vec![]),
            product(
                "by-version",
                &["nothing-runs-under-this-name.exe"],
                vec![VersionMatch {
                    original_filename: Some(original.to_uppercase()),
                    product_name: None,
                }],
            ),
        ]);
        let mut tracker = WindowsTracker::default();
        let first = tracker.scan(&matcher, true);
        assert!(
            first.iter().all(|e| e.product != "by-name"),
            "nothing named so runs yet: {first:?}"
        );

        let mut a = start(&named);
        let mut b = start(&renamed);
        let events = tracker.scan(&matcher, false);
        let of = |pid: u32| events.iter().find(|e| e.process.pid == pid).cloned();
        let ea = of(a.id()).expect("copy named like the product detected");
        assert_eq!(ea.product, "by-name");
        assert_eq!(ea.kind, ProcEventKind::Started);
        assert!(ea.exe_name.eq_ignore_ascii_case("flexnamed.exe"));
        let eb = of(b.id()).expect("renamed copy detected by its version resource");
        assert_eq!(eb.product, "by-version");
        assert!(eb.exe_name.eq_ignore_ascii_case(original));
        let age = chrono::Utc::now() - ea.started_at;
        assert!(age.num_seconds() >= -5 && age.num_seconds() < 120, "{age}");
        assert_eq!(ea.owner, process::owner(std::process::id()).unwrap());
        assert_eq!(ea.process, process::identify(a.id()).unwrap());

        // Seen again: nothing new.
        assert!(tracker
            .scan(&matcher, false)
            .iter()
            .all(|e| e.process.pid != a.id() && e.process.pid != b.id()));
        a.kill().unwrap();
        a.wait().unwrap();
        let gone = tracker.scan(&matcher, false);
        let exit = gone
            .iter()
            .find(|e| e.process.pid == a.id())
            .expect("exit seen");
        assert!(matches!(
            exit.kind,
            ProcEventKind::Exited { code: Some(_), .. }
        ));

        // Closing through a handle opened for the detected identity, as the
        // daemon does: WM_CLOSE reaches the product's window and it quits by
        // itself (exit code 0).
        let handle = ProcessHandle::open_as(eb.process).expect("the detected process");
        // Detection can come before the product has created its window.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !process::has_window(b.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the product never showed a window"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        handle.stop(process::Stop::Graceful).unwrap();
        let status = b.wait().unwrap();
        assert_eq!(status.code(), Some(0), "closed gracefully, not killed");
    }
}
