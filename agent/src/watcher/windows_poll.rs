//! Polling on Windows: a Toolhelp snapshot of the process table each interval.
//!
//! The snapshot gives every pid with its executable's file name, which is all a
//! name match needs, so a poll reads nothing else for processes seen before.
//! A new process whose name matches, or any new process while some product is
//! recognised by its version resource, is opened once: the handle gives its
//! full path (for the version resource, read once per path), its owner and its
//! creation time, and is then held for as long as it is tracked (see
//! [`crate::process::hold`]), so its exit is seen on that handle and a close
//! reaches this very process. There is no event-driven source yet: ETW and WMI
//! process traces would slot in beside this one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};

use super::tracker::{exited, Matcher};
use super::{ProcEvent, ProcEventKind};
use crate::process::{filetime_to_utc, hold, ProcessHandle};
use crate::win32::version::{self, VersionInfo};
use crate::win32::{from_wide, Handle};

/// Version resources kept per executable path (a product runs many times).
const VERSION_CACHE: usize = 4096;

struct Tracked {
    handle: Arc<ProcessHandle>,
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

/// (pid, executable file name) of every process.
fn snapshot() -> Vec<(u32, String)> {
    // SAFETY: plain flags; the handle is checked and owned.
    let Ok(snap) = Handle::check(unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) }) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(512);
    // SAFETY: an all-zero PROCESSENTRY32W is valid; dwSize is set below.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    // SAFETY: a snapshot handle and an entry with its size set.
    let mut more = unsafe { Process32FirstW(snap.raw(), &mut entry) } != 0;
    while more {
        out.push((entry.th32ProcessID, from_wide(&entry.szExeFile)));
        // SAFETY: as above.
        more = unsafe { Process32NextW(snap.raw(), &mut entry) } != 0;
    }
    out
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
        let owner = handle.owner()?;
        let event = ProcEvent {
            kind,
            pid,
            uid: crate::socket::account_uid(&owner),
            product,
            exe_name,
            exe_path,
            started_at: filetime_to_utc(handle.identity().start_time),
        };
        Some(Tracked {
            handle: Arc::new(handle),
            event,
        })
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
        let current = snapshot();
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
                    hold(t.handle.clone());
                    self.tracked.insert(*pid, t);
                }
            }
        }
        self.known = current.into_iter().collect();
        self.scanned = true;
        out
    }
}

pub(crate) async fn run(
    mut tracker: WindowsTracker,
    initial: Vec<ProcEvent>,
    interval: Duration,
    matcher: Arc<RwLock<Matcher>>,
    rescan: Arc<Notify>,
    tx: mpsc::Sender<ProcEvent>,
) {
    for ev in initial {
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            _ = ticker.tick() => false,
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
            id: id.into(),
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
        let of = |pid: u32| events.iter().find(|e| e.pid == pid).cloned();
        let ea = of(a.id()).expect("copy named like the product detected");
        assert_eq!(ea.product, "by-name");
        assert_eq!(ea.kind, ProcEventKind::Started);
        assert!(ea.exe_name.eq_ignore_ascii_case("flexnamed.exe"));
        let eb = of(b.id()).expect("renamed copy detected by its version resource");
        assert_eq!(eb.product, "by-version");
        assert!(eb.exe_name.eq_ignore_ascii_case(original));
        let age = chrono::Utc::now() - ea.started_at;
        assert!(age.num_seconds() >= -5 && age.num_seconds() < 120, "{age}");
        assert!(crate::process::held_handle(a.id()).is_some());

        // Seen again: nothing new.
        assert!(tracker
            .scan(&matcher, false)
            .iter()
            .all(|e| e.pid != a.id() && e.pid != b.id()));
        a.kill().unwrap();
        a.wait().unwrap();
        let gone = tracker.scan(&matcher, false);
        let exit = gone.iter().find(|e| e.pid == a.id()).expect("exit seen");
        assert!(matches!(
            exit.kind,
            ProcEventKind::Exited { code: Some(_), .. }
        ));

        // Closing through the handle held since detection: WM_CLOSE reaches
        // the product's window and it quits by itself (exit code 0).
        let held = crate::process::held_handle(b.id()).expect("held since detection");
        // Detection can come before the product has created its window.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while held.close_gracefully() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the product never showed a window"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = b.wait().unwrap();
        assert_eq!(status.code(), Some(0), "closed gracefully, not killed");
    }
}
