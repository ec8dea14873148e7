//! The handles of the processes in the enforcement set: opened when the core
//! says [`Track`](crate::core::Action::Track), closed on `Release`, and the
//! only way the daemon signals a process. Each tracked process has a task that
//! waits for its exit (its pidfd becomes readable) and reports it, so a
//! wrapped product the rate sheet does not name, or a run restored after a
//! restart, ends when its process does without polling `/proc`.
//!
//! A process costs one descriptor (the pidfd, waited on as it is), and an
//! account's processes at most [`limits::MAX_HANDLES_PER_ACCOUNT`] of them, so
//! one account cannot exhaust the agent's descriptors. Beyond that cap, or
//! when no descriptor can be opened, the process is held by pid and start time
//! (checked before every signal) and stays enforced: running out is an error
//! to work around, never a sign the process is gone. One descriptor is kept in
//! reserve and given up to try again.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::account::AccountId;
use crate::limits;
use crate::process::{out_of_descriptors, ProcessError, ProcessHandle, ProcessId, Stop};

struct Tracked {
    handle: Arc<ProcessHandle>,
    waiter: tokio::task::JoinHandle<()>,
    /// Holds a descriptor (counted against its owner's cap).
    fd: bool,
}

/// Tracked processes, and where their exits are reported.
pub struct Processes {
    tracked: HashMap<ProcessId, Tracked>,
    exits: mpsc::Sender<ProcessId>,
    /// A descriptor kept to be given up when the agent runs out.
    reserve: Option<std::fs::File>,
    /// Descriptors held per owner, and the cap.
    held: HashMap<AccountId, usize>,
    cap: usize,
}

/// What became of a request to track a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// Held through a pidfd (or a handle on Windows).
    Handle,
    /// Held by pid and start time: no descriptor could be opened for it.
    ByPid,
    /// It does not run (any more): report it as exited.
    Gone,
}

fn reserve() -> Option<std::fs::File> {
    std::fs::File::open(if cfg!(windows) { "NUL" } else { "/dev/null" }).ok()
}

impl Processes {
    pub fn new(exits: mpsc::Sender<ProcessId>) -> Processes {
        Self::with_cap(exits, limits::MAX_HANDLES_PER_ACCOUNT)
    }

    pub fn with_cap(exits: mpsc::Sender<ProcessId>, cap: usize) -> Processes {
        Processes {
            tracked: HashMap::new(),
            exits,
            reserve: reserve(),
            held: HashMap::new(),
            cap,
        }
    }

    /// Opens a handle on `id` and watches for its exit.
    pub fn track(&mut self, id: ProcessId) -> Tracking {
        if self.tracked.contains_key(&id) {
            return Tracking::Handle;
        }
        let (mut handle, mut how) = match self.open(id) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::info!(pid = id.pid, "product process ended: {e}");
                return Tracking::Gone;
            }
        };
        if how == Tracking::Handle
            && self.held.get(handle.owner()).copied().unwrap_or(0) >= self.cap
        {
            match ProcessHandle::by_pid(id) {
                Ok(h) => {
                    tracing::warn!(pid = id.pid, owner = %handle.owner(), "the account holds {} process handles, the limit: holding this one by pid", self.cap);
                    handle = h;
                    how = Tracking::ByPid;
                }
                Err(_) => return Tracking::Gone,
            }
        }
        let fd = how == Tracking::Handle;
        if fd {
            *self.held.entry(handle.owner().clone()).or_default() += 1;
        }
        let handle = Arc::new(handle);
        let exits = self.exits.clone();
        let watched = handle.clone();
        let waiter = tokio::spawn(async move {
            watched.exited().await;
            let _ = exits.send(id).await;
        });
        self.tracked.insert(id, Tracked { handle, waiter, fd });
        how
    }

    /// A handle on `id`: a pidfd if one can be had, else by pid; an error only
    /// when the process is gone.
    fn open(&mut self, id: ProcessId) -> Result<(ProcessHandle, Tracking), ProcessError> {
        match ProcessHandle::open_as(id) {
            Ok(h) => return Ok((h, Tracking::Handle)),
            Err(e) if !out_of_descriptors(&e) && !matches!(e, ProcessError::Io { .. }) => {
                return Err(e)
            }
            Err(e) => tracing::warn!(pid = id.pid, "cannot open a process handle: {e}"),
        }
        // Give up the reserve for one more try, then for reading /proc.
        self.reserve = None;
        let result = match ProcessHandle::open_as(id) {
            Ok(h) => Ok((h, Tracking::Handle)),
            Err(e) if out_of_descriptors(&e) || matches!(e, ProcessError::Io { .. }) => {
                ProcessHandle::by_pid(id).map(|h| (h, Tracking::ByPid))
            }
            Err(e) => Err(e),
        };
        self.reserve = reserve();
        if let Ok((_, Tracking::ByPid)) = &result {
            tracing::warn!(
                pid = id.pid,
                "out of file descriptors: holding the product process by pid and start time"
            );
        }
        result
    }

    /// CPU time used so far by each of `ids` still tracked (the idle rule).
    pub fn cpu_times(&self, ids: &[ProcessId]) -> Vec<(ProcessId, std::time::Duration)> {
        ids.iter()
            .filter_map(|id| {
                let t = self.tracked.get(id)?;
                Some((*id, t.handle.cpu_time()?))
            })
            .collect()
    }

    pub fn release(&mut self, id: ProcessId) {
        if let Some(t) = self.tracked.remove(&id) {
            t.waiter.abort();
            if t.fd {
                if let Some(n) = self.held.get_mut(t.handle.owner()) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    /// Signals `id` through its handle; an untracked process is never signalled.
    pub fn stop(&self, id: ProcessId, how: Stop) {
        match self.tracked.get(&id) {
            Some(t) => {
                tracing::info!(pid = id.pid, ?how, "closing product");
                if let Err(e) = t.handle.stop(how) {
                    tracing::warn!("{e}");
                }
            }
            None => tracing::warn!(pid = id.pid, "no handle on this process: not signalled"),
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for t in self.tracked.values() {
            t.waiter.abort();
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn max_handles_per_account() {
        let (tx, mut exits) = mpsc::channel(8);
        let mut procs = Processes::with_cap(tx, 2);
        let mut children: Vec<std::process::Child> = (0..3)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let ids: Vec<ProcessId> = children
            .iter()
            .map(|c| crate::process::identify(c.id()).unwrap())
            .collect();
        let how: Vec<Tracking> = ids.iter().map(|id| procs.track(*id)).collect();
        assert_eq!(how, [Tracking::Handle, Tracking::Handle, Tracking::ByPid]);
        // Held by pid, it is still signalled, and its exit still reported.
        procs.stop(ids[2], Stop::Forced);
        children[2].wait().unwrap();
        let exited = tokio::time::timeout(Duration::from_secs(20), exits.recv())
            .await
            .expect("the exit of a process held by pid is reported");
        assert_eq!(exited, Some(ids[2]));
        // A released handle makes room again.
        procs.release(ids[2]);
        procs.release(ids[0]);
        children.push(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        );
        let next = crate::process::identify(children[3].id()).unwrap();
        assert_eq!(procs.track(next), Tracking::Handle);
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
