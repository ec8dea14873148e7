//! Matching processes to products and turning observations into start/exit events.
//!
//! [`Tracker`] remembers which pids are product processes (with their start time, so
//! a reused pid is not mistaken for the old process) and which pids the last scan
//! saw, so a poll reads details only for pids that are new. The same tracker serves
//! the connector, fed exec and exit events, with a full scan at start, when the rate
//! sheet changes and when the kernel reports lost events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
#[cfg(target_os = "linux")]
use std::sync::RwLock;
#[cfg(target_os = "linux")]
use std::time::Duration;

use flex_protocol::api::{Executables, Product, VersionMatch};
use flex_protocol::ids::ProductId;
#[cfg(target_os = "linux")]
use tokio::sync::{mpsc, Notify};

use super::{DetectionSource, ProcEvent, ProcEventKind};

/// Executable names of the current OS mapped to product ids.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    names: HashMap<String, ProductId>,
    /// Windows version-resource entries, with their product id.
    versions: Vec<(VersionMatch, ProductId)>,
}

impl Matcher {
    pub fn new(products: &[Product]) -> Matcher {
        let mut names = HashMap::new();
        let mut versions = Vec::new();
        for p in products {
            for name in os_names(&p.executables) {
                names.entry(key(name)).or_insert_with(|| p.id.clone());
            }
            if cfg!(windows) {
                for v in &p.executables.windows_version {
                    versions.push((v.clone(), p.id.clone()));
                }
            }
        }
        Matcher { names, versions }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.versions.is_empty()
    }

    /// Whether `product` is one this matcher recognises.
    pub fn has_product(&self, product: &ProductId) -> bool {
        self.names.values().any(|p| p == product) || self.versions.iter().any(|(_, p)| p == product)
    }

    /// Whether any product is recognised by its version resource, which costs
    /// reading the executable of each new process.
    pub fn wants_versions(&self) -> bool {
        !self.versions.is_empty()
    }

    /// The product whose version-resource entry matches these strings, with
    /// the name to report (`OriginalFilename`, else `ProductName`).
    pub fn find_version(
        &self,
        original_filename: Option<&str>,
        product_name: Option<&str>,
    ) -> Option<(ProductId, String)> {
        let (_, id) = self
            .versions
            .iter()
            .find(|(v, _)| v.matches(original_filename, product_name))?;
        let name = original_filename.or(product_name).unwrap_or_default();
        Some((id.clone(), name.to_string()))
    }

    /// The product of the first candidate name that matches, with that name.
    pub fn find(
        &self,
        candidates: impl IntoIterator<Item = String>,
    ) -> Option<(ProductId, String)> {
        candidates
            .into_iter()
            .find_map(|name| self.names.get(&key(&name)).map(|id| (id.clone(), name)))
    }
}

fn os_names(e: &Executables) -> &[String] {
    if cfg!(target_os = "macos") {
        &e.macos
    } else if cfg!(windows) {
        &e.windows
    } else {
        &e.linux
    }
}

/// File names compare exactly on Linux and case-insensitively where the file
/// system usually is (macOS, Windows).
fn key(name: &str) -> String {
    if cfg!(any(target_os = "macos", windows)) {
        name.to_lowercase()
    } else {
        name.to_string()
    }
}

/// Splits a wait(2) status into exit code and signal.
#[cfg(unix)]
pub(crate) fn decode_status(status: u32) -> (Option<i32>, Option<i32>) {
    let signal = (status & 0x7f) as i32;
    if signal == 0 {
        (Some(((status >> 8) & 0xff) as i32), None)
    } else {
        (None, Some(signal))
    }
}

pub(crate) fn exited(mut ev: ProcEvent, code: Option<i32>, signal: Option<i32>) -> ProcEvent {
    ev.kind = ProcEventKind::Exited { code, signal };
    ev
}

/// The source in use, shared with the handle; the connector task falls back to
/// polling if its socket fails later.
pub(crate) type SharedSource = Arc<AtomicU8>;

pub(crate) fn load_source(s: &SharedSource) -> DetectionSource {
    match s.load(Ordering::Relaxed) {
        0 => DetectionSource::ProcConnector,
        2 => DetectionSource::Etw,
        _ => DetectionSource::Polling,
    }
}

pub(crate) fn store_source(s: &SharedSource, d: DetectionSource) {
    s.store(
        match d {
            DetectionSource::ProcConnector => 0,
            DetectionSource::Polling => 1,
            DetectionSource::Etw => 2,
        },
        Ordering::Relaxed,
    );
}

#[cfg(target_os = "linux")]
pub(crate) use linux::{run_connector, run_procfs_polling, Tracker};

#[cfg(target_os = "linux")]
mod linux {
    use std::path::PathBuf;

    use super::*;
    use crate::process::{self, ExeLookup, FileId, ProcessId};
    use crate::watcher::connector::{CnEvent, ProcConnector, WakeFd};
    use crate::watcher::identify::{Identifier, Identity, RECHECKS};
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    struct Tracked {
        event: ProcEvent,
    }

    /// Product processes by pid, what every pid ran at the last look, and the
    /// identifier that tells products apart.
    #[derive(Default)]
    pub(crate) struct Tracker {
        tracked: HashMap<u32, Tracked>,
        /// pid → the file it executed at the last look: with polling, an
        /// exec shows as a changed file (the pid and start time stay).
        known: HashMap<u32, Option<FileId>>,
        scanned: bool,
        identifier: Identifier,
        product_dirs: Vec<PathBuf>,
        /// Runners to look at again: pid → (process, looks left).
        recheck: HashMap<u32, (ProcessId, u8)>,
        /// Tracked processes whose main thread exited while others run on,
        /// with that thread's wait status if it was seen: the connector lets
        /// only main threads' exits through, so their end is found by
        /// looking at each tick.
        leaderless: HashMap<u32, Option<u32>>,
    }

    impl Tracker {
        pub fn new(product_dirs: Vec<PathBuf>) -> Tracker {
            Tracker {
                product_dirs,
                ..Tracker::default()
            }
        }

        /// Takes a new rate sheet: the identifier learns it and indexes the
        /// product directories again.
        fn sync(&mut self, matcher: &Matcher) {
            self.identifier.set_matcher(matcher.clone());
            if !matcher.is_empty() {
                self.identifier.index_dirs(&self.product_dirs);
            }
        }

        /// Indexes the product directories again (products installed since).
        pub fn reindex(&mut self) {
            if !self.product_dirs.is_empty() {
                self.identifier.index_dirs(&self.product_dirs);
            }
        }

        /// Reads `pid` and returns its event if it is a product process.
        fn examine(&mut self, pid: u32, kind: ProcEventKind) -> Option<Tracked> {
            // The file first: a process already gone (most short-lived
            // ones by the time their exec is read) costs one stat.
            let exe = match process::exe_lookup(pid) {
                Ok(file) => Some(file),
                Err(ExeLookup::NoProgram) => return None,
                Err(ExeLookup::NotReadable) => {
                    process::identify(pid)?;
                    None
                }
            };
            let names = process::names(pid);
            let (product, exe_name) = match self.identifier.identify(pid, &names, exe) {
                Identity::Product { product, name } => (product, name),
                Identity::Runner => {
                    if let Some(id) = process::identify(pid) {
                        self.recheck.insert(pid, (id, RECHECKS));
                    }
                    return None;
                }
                Identity::Nothing => return None,
            };
            let owner = process::owner(pid)?;
            let id = process::identify(pid)?;
            Some(Tracked {
                event: ProcEvent {
                    kind,
                    process: id,
                    owner,
                    product,
                    exe_name,
                    exe_path: names.exe_path,
                    started_at: process::start_time(id),
                },
            })
        }

        fn track(&mut self, t: Tracked, out: &mut Vec<ProcEvent>) {
            let pid = t.event.process.pid;
            self.recheck.remove(&pid);
            self.leaderless.remove(&pid);
            // Its main thread may be gone already (an adopted process): no
            // exit of a main thread will come for it.
            if process::leaderless(pid).is_some() {
                self.leaderless.insert(pid, None);
            }
            out.push(t.event.clone());
            self.tracked.insert(pid, t);
        }

        /// Diffs `/proc` against the last scan: exits (and reused pids) of tracked
        /// processes, execs (a pid whose file changed), then new product
        /// processes. With `all`, pids seen before are examined too (after a
        /// rate sheet change or lost events); those are reported as adopted, as
        /// is everything on the first scan.
        pub fn scan(&mut self, matcher: &Matcher, all: bool) -> Vec<ProcEvent> {
            if all || !self.scanned {
                self.sync(matcher);
            }
            let Ok(pids) = process::list_pids() else {
                return Vec::new();
            };
            let mut current: HashMap<u32, Option<FileId>> = HashMap::with_capacity(pids.len());
            for pid in pids {
                current.insert(pid, process::exe_file(pid));
            }
            let mut out = Vec::new();
            self.tracked.retain(|pid, t| {
                let same =
                    current.contains_key(pid) && process::identify(*pid) == Some(t.event.process);
                if !same {
                    out.push(exited(t.event.clone(), None, None));
                }
                same
            });
            self.recheck.retain(|pid, _| current.contains_key(pid));
            if !matcher.is_empty() {
                let mut look: Vec<(u32, bool)> = current
                    .iter()
                    .filter_map(|(pid, file)| match self.known.get(pid) {
                        // Followed since an exec the connector reported.
                        None if self.tracked.contains_key(pid) => None,
                        None => Some((*pid, false)),
                        Some(old) if old != file => Some((*pid, true)),
                        Some(_) if all && !self.tracked.contains_key(pid) => Some((*pid, false)),
                        Some(_) => None,
                    })
                    .collect();
                look.sort_unstable();
                for (pid, execed) in look {
                    if execed {
                        out.extend(self.exec_seen(pid));
                        continue;
                    }
                    let kind = if !self.scanned || self.known.contains_key(&pid) {
                        ProcEventKind::Adopted
                    } else {
                        ProcEventKind::Started
                    };
                    if let Some(t) = self.examine(pid, kind) {
                        self.track(t, &mut out);
                    }
                }
            }
            self.known = current;
            self.scanned = true;
            out
        }

        /// `pid` replaced its program (as the connector reports it: the
        /// connector lets through only the exits of tracked processes, so
        /// `known` is not kept for the others, whose exits never come).
        pub fn exec(&mut self, pid: u32) -> Vec<ProcEvent> {
            self.known.remove(&pid);
            self.exec_seen(pid)
        }

        /// The processes whose exits must be reported.
        pub fn followed(&self) -> Vec<u32> {
            let mut pids: Vec<u32> = self.tracked.keys().copied().collect();
            pids.sort_unstable();
            pids
        }

        /// Ends the processes without a main thread whose other threads have
        /// ended too (the status is the main thread's: the last thread's
        /// exit is not reported).
        fn leaderless_gone(&mut self) -> Vec<ProcEvent> {
            let mut out = Vec::new();
            let tracked = &mut self.tracked;
            self.leaderless.retain(|pid, status| {
                let Some(t) = tracked.get(pid) else {
                    return false;
                };
                if process::identify(*pid) == Some(t.event.process) {
                    return true;
                }
                let t = tracked.remove(pid).expect("present");
                let (code, signal) = status.map(decode_status).unwrap_or((None, None));
                out.push(exited(t.event, code, signal));
                false
            });
            for ev in &out {
                self.known.remove(&ev.process.pid);
            }
            out
        }

        /// Ends the tracked processes among `pids` that are gone: their exits
        /// may have come before the connector was told to let them through.
        pub fn gone(&mut self, pids: &[u32]) -> Vec<ProcEvent> {
            let mut out = Vec::new();
            for pid in pids {
                let Some(t) = self.tracked.get(pid) else {
                    continue;
                };
                if process::identify(*pid) != Some(t.event.process) {
                    let t = self.tracked.remove(pid).expect("present");
                    self.known.remove(pid);
                    self.leaderless.remove(pid);
                    out.push(exited(t.event, None, None));
                } else if !self.leaderless.contains_key(pid) && process::leaderless(*pid).is_some()
                {
                    // Its main thread's exit too came before the filter.
                    self.leaderless.insert(*pid, None);
                }
            }
            out
        }

        fn exec_seen(&mut self, pid: u32) -> Vec<ProcEvent> {
            let mut out = Vec::new();
            self.recheck.remove(&pid);
            // An exec makes the thread that called it the main thread.
            self.leaderless.remove(&pid);
            let found = self.examine(pid, ProcEventKind::Started);
            if let Some(old) = self.tracked.get(&pid) {
                if found
                    .as_ref()
                    .is_some_and(|f| f.event.product == old.event.product)
                {
                    return out; // a product re-executing itself is the same run
                }
                let old = self.tracked.remove(&pid).expect("present");
                out.push(exited(old.event, None, None));
            }
            if let Some(t) = found {
                self.track(t, &mut out);
            }
            out
        }

        /// The main thread of `pid` ended with wait status `status`. That
        /// ends the process unless other threads run on (a `pthread_exit`
        /// in `main`): then it is looked at each tick until it is gone, so
        /// a product cannot end its run early by ending one thread.
        pub fn exit(&mut self, pid: u32, status: u32) -> Option<ProcEvent> {
            self.recheck.remove(&pid);
            let t = self.tracked.get(&pid)?;
            if process::identify(pid) == Some(t.event.process) {
                self.leaderless.insert(pid, Some(status));
                return None;
            }
            self.known.remove(&pid);
            let t = self.tracked.remove(&pid).expect("present");
            let (code, signal) = decode_status(status);
            Some(exited(t.event, code, signal))
        }

        /// Whether runners, or processes without a main thread, wait to be
        /// looked at again.
        pub fn rechecking(&self) -> bool {
            !self.recheck.is_empty() || !self.leaderless.is_empty()
        }

        /// Looks again at the files runners have mapped executable: a loader
        /// maps its program after the exec the watcher saw.
        pub fn recheck(&mut self) -> Vec<ProcEvent> {
            let mut out = self.leaderless_gone();
            let due: Vec<(u32, ProcessId, u8)> = self
                .recheck
                .iter()
                .map(|(p, (id, n))| (*p, *id, *n))
                .collect();
            for (pid, id, left) in due {
                if process::identify(pid) != Some(id) || self.tracked.contains_key(&pid) {
                    self.recheck.remove(&pid);
                    continue;
                }
                let found = match self.identifier.mappings(pid) {
                    Some(Identity::Product { product, name }) => Some((product, name)),
                    _ => None,
                };
                match found.zip(process::owner(pid)) {
                    Some(((product, name), owner)) => {
                        let event = ProcEvent {
                            kind: ProcEventKind::Started,
                            process: id,
                            owner,
                            product,
                            exe_name: name,
                            exe_path: process::names(pid).exe_path,
                            started_at: process::start_time(id),
                        };
                        self.track(Tracked { event }, &mut out);
                    }
                    None if left <= 1 => {
                        self.recheck.remove(&pid);
                    }
                    None => {
                        self.recheck.insert(pid, (id, left - 1));
                    }
                }
            }
            out
        }
    }

    /// How often the product directories are indexed again, for products
    /// installed while the agent runs.
    const REINDEX_EVERY: Duration = Duration::from_secs(600);

    fn reindex_timer() -> tokio::time::Interval {
        let mut t =
            tokio::time::interval_at(tokio::time::Instant::now() + REINDEX_EVERY, REINDEX_EVERY);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }

    async fn send_all(tx: &mpsc::Sender<ProcEvent>, events: Vec<ProcEvent>) -> bool {
        for ev in events {
            if tx.send(ev).await.is_err() {
                return false;
            }
        }
        true
    }

    fn read(matcher: &RwLock<Matcher>) -> std::sync::RwLockReadGuard<'_, Matcher> {
        matcher.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls `/proc`, after sending `initial` (the adoption scan done by the caller
    /// before it returned, so "running at start" has a clear meaning).
    pub(crate) async fn run_procfs_polling(
        tracker: Tracker,
        initial: Vec<ProcEvent>,
        interval: Duration,
        matcher: Arc<RwLock<Matcher>>,
        rescan: Arc<Notify>,
        tx: mpsc::Sender<ProcEvent>,
    ) {
        if send_all(&tx, initial).await {
            run_polling(tracker, interval, matcher, rescan, tx).await
        }
    }

    async fn run_polling(
        mut tracker: Tracker,
        interval: Duration,
        matcher: Arc<RwLock<Matcher>>,
        rescan: Arc<Notify>,
        tx: mpsc::Sender<ProcEvent>,
    ) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reindex = reindex_timer();
        loop {
            let all = tokio::select! {
                _ = ticker.tick() => false,
                _ = rescan.notified() => true,
                _ = reindex.tick() => {
                    tracker.reindex();
                    continue;
                }
                _ = tx.closed() => return,
            };
            let mut events = tracker.scan(&read(&matcher), all);
            events.extend(tracker.recheck());
            if !send_all(&tx, events).await {
                return;
            }
        }
    }

    /// What the connector's thread and the task that owns it share.
    struct Control {
        wake: WakeFd,
        stop: AtomicBool,
        rescan: AtomicBool,
        reindex: AtomicBool,
    }

    /// Stops the connector's thread when the task that owns it ends or is
    /// aborted (the watcher's handle was dropped).
    struct StopOnDrop(Arc<Control>);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::SeqCst);
            self.0.wake.wake();
        }
    }

    /// Follows connector events, after sending `initial`. The caller subscribed
    /// before its adoption scan, so nothing started in between is missed; anything
    /// seen twice is deduplicated by the tracked set. Runners are looked at
    /// again at the poll interval, only while there are any.
    ///
    /// The events are read on a thread of their own that blocks in poll(2):
    /// each exec on the machine wakes that thread alone, and one that ended
    /// before it was read costs a stat. Through the async runtime the same
    /// event cost several times more (its scheduler, timers and wake-ups, on
    /// caches gone cold since the last exec). This task only hands over
    /// rescans, and takes the tracker back to poll `/proc` if the connector fails.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_connector(
        connector: ProcConnector,
        tracker: Tracker,
        initial: Vec<ProcEvent>,
        source: SharedSource,
        interval: Duration,
        matcher: Arc<RwLock<Matcher>>,
        rescan: Arc<Notify>,
        tx: mpsc::Sender<ProcEvent>,
    ) {
        if !send_all(&tx, initial).await {
            return;
        }
        let control = match WakeFd::new() {
            Ok(wake) => Arc::new(Control {
                wake,
                stop: AtomicBool::new(false),
                rescan: AtomicBool::new(false),
                reindex: AtomicBool::new(false),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the process connector's wake-up descriptor; polling /proc instead");
                store_source(&source, DetectionSource::Polling);
                return run_polling(tracker, interval, matcher, rescan, tx).await;
            }
        };
        let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
        // The thread gets its state once it runs, so a failed start keeps it here.
        let (state_tx, state_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (control, matcher, tx) = (control.clone(), matcher.clone(), tx.clone());
            std::thread::Builder::new()
                .name("connector".into())
                .spawn(move || {
                    let Ok((connector, tracker)) = state_rx.recv() else {
                        return;
                    };
                    let back = follow(connector, tracker, interval, &matcher, &control, &tx);
                    let _ = ended_tx.send(back);
                })
        };
        if let Err(e) = thread {
            tracing::warn!(error = %e, "cannot start the process connector's thread; polling /proc instead");
            store_source(&source, DetectionSource::Polling);
            return run_polling(tracker, interval, matcher, rescan, tx).await;
        }
        let _ = state_tx.send((connector, tracker));
        let _stop = StopOnDrop(control.clone());
        // Timed here, so the thread's wait has no timer to arm and cancel
        // for each event (a visible share of its cost) while no runner is
        // being looked at again.
        let mut reindex = reindex_timer();
        loop {
            tokio::select! {
                back = &mut ended => {
                    match back {
                        Ok(Some(tracker)) => {
                            store_source(&source, DetectionSource::Polling);
                            run_polling(tracker, interval, matcher, rescan, tx).await;
                        }
                        Ok(None) => {}
                        Err(_) => tracing::error!("the process connector's thread ended unexpectedly; processes are no longer detected"),
                    }
                    return;
                }
                _ = tx.closed() => return,
                _ = rescan.notified() => {
                    control.rescan.store(true, Ordering::SeqCst);
                    control.wake.wake();
                }
                _ = reindex.tick() => {
                    control.reindex.store(true, Ordering::SeqCst);
                    control.wake.wake();
                }
            }
        }
    }

    /// The connector's thread. Returns the tracker when the connector failed
    /// (the caller polls `/proc` from then on), `None` when told to stop or
    /// when nobody listens any more.
    fn follow(
        mut connector: ProcConnector,
        mut tracker: Tracker,
        interval: Duration,
        matcher: &RwLock<Matcher>,
        control: &Control,
        tx: &mpsc::Sender<ProcEvent>,
    ) -> Option<Tracker> {
        let send =
            |events: Vec<ProcEvent>| events.into_iter().all(|ev| tx.blocking_send(ev).is_ok());
        let mut batch = Vec::new();
        // The pids the connector lets exits through for; none while the
        // kernel refuses the filter (every exit then comes).
        let mut following: Vec<u32> = Vec::new();
        let filtering = match connector.follow_exits_of(&following) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot filter the process connector's events; every exit wakes the agent");
                false
            }
        };
        let mut next_recheck: Option<Instant> = None;
        loop {
            batch.clear();
            // Runners are looked at again an interval after they are first
            // seen, then every interval while any are left.
            next_recheck = match (tracker.rechecking(), next_recheck) {
                (false, _) => None,
                (true, None) => Some(Instant::now() + interval),
                (true, at) => at,
            };
            let timeout = next_recheck.map(|at| at.saturating_duration_since(Instant::now()));
            let ready = match connector.wait(control.wake.as_fd(), timeout) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "process connector failed; polling /proc from now on");
                    return Some(tracker);
                }
            };
            if ready.other {
                control.wake.clear();
            }
            if control.stop.load(Ordering::SeqCst) || tx.is_closed() {
                return None;
            }
            let all = control.rescan.swap(false, Ordering::SeqCst);
            if ready.events && !all {
                if let Err(e) = connector.recv_now(&mut batch) {
                    tracing::warn!(error = %e, "process connector failed; polling /proc from now on");
                    return Some(tracker);
                }
            }
            let now = Instant::now();
            let mut events = {
                let m = read(matcher);
                if all || batch.contains(&CnEvent::Overflow) {
                    tracker.scan(&m, true)
                } else {
                    let mut events = Vec::new();
                    for ev in &batch {
                        match *ev {
                            CnEvent::Exec { pid } if !m.is_empty() => {
                                events.extend(tracker.exec(pid))
                            }
                            CnEvent::Exit { pid, status } => {
                                events.extend(tracker.exit(pid, status))
                            }
                            _ => {}
                        }
                    }
                    events
                }
            };
            if next_recheck.is_some_and(|at| at <= now) {
                events.extend(tracker.recheck());
                next_recheck = Some(now + interval);
            }
            if control.reindex.swap(false, Ordering::SeqCst) {
                tracker.reindex();
            }
            let followed = if filtering {
                tracker.followed()
            } else {
                Vec::new()
            };
            if followed != following {
                if let Err(e) = connector.follow_exits_of(&followed) {
                    // The old filter would hide the exits of new products.
                    tracing::warn!(error = %e, "cannot update the process connector's filter; polling /proc from now on");
                    return send(events).then_some(tracker);
                }
                let new: Vec<u32> = followed
                    .iter()
                    .filter(|p| following.binary_search(p).is_err())
                    .copied()
                    .collect();
                following = followed;
                events.extend(tracker.gone(&new));
            }
            if !send(events) {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flex_protocol::api::ChargeModel;

    fn product(id: &str, linux: &[&str]) -> Product {
        Product {
            id: id.parse().unwrap(),
            name: id.into(),
            charge: ChargeModel::Daily { tokens: 7 },
            executables: Executables {
                // The same names for every OS, so the test runs on each.
                linux: linux.iter().map(|s| s.to_string()).collect(),
                macos: linux.iter().map(|s| s.to_string()).collect(),
                windows: linux.iter().map(|s| s.to_string()).collect(),
                windows_version: Vec::new(),
            },
            sample: false,
        }
    }

    #[test]
    fn first_matching_candidate_wins() {
        let m = Matcher::new(&[
            product("autocad", &["acad"]),
            product("maya", &["maya.bin", "maya"]),
        ]);
        assert_eq!(
            m.find(["python3".to_string(), "maya".to_string()]),
            Some(("maya".parse().unwrap(), "maya".into()))
        );
        assert_eq!(m.find(["bash".to_string()]), None);
        assert!(Matcher::new(&[]).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn wait_status_decoding() {
        assert_eq!(decode_status(3 << 8), (Some(3), None));
        assert_eq!(decode_status(0), (Some(0), None));
        assert_eq!(decode_status(15), (None, Some(15)));
        assert_eq!(decode_status(9 | 0x80), (None, Some(9))); // core dumped
    }
}
