//! The handles of the processes sessions stand for: opened when the core says
//! [`Track`](crate::core::Action::Track), closed on `Release`, and the only way
//! the daemon signals a process. Each tracked process has a task that waits
//! for its exit (a pidfd becomes readable) and reports it, so a wrapped product
//! the rate sheet does not name, or a session restored after a restart, ends
//! when its process does without polling `/proc`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::process::{ProcessHandle, ProcessId, Stop};

struct Tracked {
    handle: Arc<ProcessHandle>,
    waiter: tokio::task::JoinHandle<()>,
}

/// Tracked processes, and where their exits are reported.
pub struct Processes {
    tracked: HashMap<ProcessId, Tracked>,
    exits: mpsc::Sender<ProcessId>,
}

impl Processes {
    pub fn new(exits: mpsc::Sender<ProcessId>) -> Processes {
        Processes {
            tracked: HashMap::new(),
            exits,
        }
    }

    /// Opens a handle on `id` and watches for its exit. `false` when `id` is
    /// not running (any more): the caller reports it as exited.
    pub fn track(&mut self, id: ProcessId) -> bool {
        if self.tracked.contains_key(&id) {
            return true;
        }
        let handle = match ProcessHandle::open_as(id) {
            Ok(h) => Arc::new(h),
            Err(e) => {
                tracing::info!(pid = id.pid, "product process ended: {e}");
                return false;
            }
        };
        let exits = self.exits.clone();
        let watched = handle.clone();
        let waiter = tokio::spawn(async move {
            watched.exited().await;
            let _ = exits.send(id).await;
        });
        self.tracked.insert(id, Tracked { handle, waiter });
        true
    }

    pub fn release(&mut self, id: ProcessId) {
        if let Some(t) = self.tracked.remove(&id) {
            t.waiter.abort();
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
