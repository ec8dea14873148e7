//! Polling with `sysinfo`, the source on Unix systems without `/proc` (macOS).
//!
//! sysinfo has no cheap "list pids only" call, so each tick refreshes the process
//! table with nothing but the fields matching needs, and only for processes it
//! has not loaded before (`UpdateKind::OnlyIfNotSet`). On Linux the `/proc` poller
//! is used instead; this one is compiled there only so its tests run.
#![cfg_attr(target_os = "linux", allow(dead_code))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
use tokio::sync::{mpsc, Notify};

use super::tracker::{exited, Matcher};
use super::{ProcEvent, ProcEventKind};

#[derive(Default)]
pub(crate) struct SysinfoTracker {
    sys: Option<System>,
    /// pid → (start time, event) of product processes.
    tracked: HashMap<u32, (u64, ProcEvent)>,
    /// pid → (start time, executable) of every process seen, so unchanged ones
    /// are skipped and an exec (same pid and start, another executable) is
    /// looked at again.
    known: HashMap<u32, (u64, Option<PathBuf>)>,
}

impl SysinfoTracker {
    pub fn scan(&mut self, matcher: &Matcher, all: bool) -> Vec<ProcEvent> {
        let first = self.sys.is_none();
        let sys = self.sys.get_or_insert_with(System::new);
        // The executable is read every time: an exec keeps the pid and start
        // time, and only a changed executable shows it.
        sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_exe(UpdateKind::Always)
                .with_cmd(UpdateKind::OnlyIfNotSet)
                .with_user(UpdateKind::OnlyIfNotSet),
        );
        let mut out = Vec::new();
        let procs = sys.processes();
        let mut current = HashMap::with_capacity(procs.len());
        for (pid, p) in procs {
            current.insert(
                pid.as_u32(),
                (p.start_time(), p.exe().map(|e| e.to_path_buf())),
            );
        }
        self.tracked.retain(|pid, (start, ev)| {
            let same = current
                .get(pid)
                .is_some_and(|(s, exe)| s == start && exe.as_deref() == ev.exe_path.as_deref());
            if !same {
                out.push(exited(ev.clone(), None, None));
            }
            same
        });
        for (pid, p) in procs {
            let pid = pid.as_u32();
            let now = &current[&pid];
            let seen = self.known.get(&pid);
            let unchanged = seen == Some(now);
            if matcher.is_empty() || (unchanged && !all) || self.tracked.contains_key(&pid) {
                continue;
            }
            // Same process, another executable: it exec'd; its command line
            // is read again.
            let execed = seen.is_some_and(|(start, _)| *start == now.0) && !unchanged;
            let names = if execed {
                crate::process::names(pid)
            } else {
                crate::process::Names::of_sysinfo(p)
            };
            let Some((product, name)) = matcher.find(names.candidates()) else {
                continue;
            };
            let Some(uid) = p.user_id().map(|u| **u) else {
                continue;
            };
            let kind = if first || (seen.is_some() && !execed) {
                ProcEventKind::Adopted
            } else {
                ProcEventKind::Started
            };
            let ev = ProcEvent {
                kind,
                process: crate::process::ProcessId {
                    pid,
                    start: p.start_time(),
                },
                owner: crate::account::AccountId::from_uid(uid),
                product,
                exe_name: name,
                exe_path: p.exe().map(|e| e.to_path_buf()),
                started_at: Utc
                    .timestamp_opt(p.start_time() as i64, 0)
                    .single()
                    .unwrap_or_else(Utc::now),
            };
            out.push(ev.clone());
            self.tracked.insert(pid, (p.start_time(), ev));
        }
        self.known = current;
        out
    }
}

pub(crate) async fn run(
    mut tracker: SysinfoTracker,
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
        let events = {
            let m = matcher.read().unwrap_or_else(|e| e.into_inner());
            tracker.scan(&m, all)
        };
        for ev in events {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}
