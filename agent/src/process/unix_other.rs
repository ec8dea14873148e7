//! Unix without procfs or pidfd (macOS, the BSDs): details from `sysinfo`,
//! signals by pid after checking the start time again.
//!
//! Without a pidfd there is a window of microseconds between the check and the
//! signal in which the pid could be reused; the check makes an old, remembered
//! pid harmless, which is the attack that matters (a pid saved long ago).

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::{Names, ProcessError, ProcessId, Stop};
use crate::account::AccountId;

fn load(pid: u32) -> Option<(u64, Option<u32>, Names)> {
    let mut sys = System::new();
    let spid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[spid]),
        true,
        ProcessRefreshKind::nothing()
            .with_user(UpdateKind::Always)
            .with_exe(UpdateKind::Always)
            .with_cmd(UpdateKind::Always),
    );
    let p = sys.process(spid)?;
    if matches!(p.status(), sysinfo::ProcessStatus::Zombie) {
        return None;
    }
    Some((
        p.start_time(),
        p.user_id().map(|u| **u),
        Names::of_sysinfo(p),
    ))
}

pub fn names(pid: u32) -> Names {
    load(pid).map(|(_, _, n)| n).unwrap_or_default()
}

pub fn owner(pid: u32) -> Option<AccountId> {
    load(pid)?.1.map(AccountId::from_uid)
}

pub fn identify(pid: u32) -> Option<ProcessId> {
    load(pid).map(|(start, _, _)| ProcessId { pid, start })
}

/// Start times are seconds since the epoch here.
pub fn start_time(id: ProcessId) -> DateTime<Utc> {
    Utc.timestamp_opt(id.start as i64, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

#[derive(Debug)]
pub struct ProcessHandle {
    id: ProcessId,
    owner: AccountId,
}

impl ProcessHandle {
    pub fn open(pid: u32) -> Result<ProcessHandle, ProcessError> {
        let (start, uid, _) = load(pid).ok_or(ProcessError::Gone { pid })?;
        let owner = uid
            .map(AccountId::from_uid)
            .ok_or(ProcessError::Gone { pid })?;
        Ok(ProcessHandle {
            id: ProcessId { pid, start },
            owner,
        })
    }

    /// The same as [`open_as`](Self::open_as) here: there is no descriptor to
    /// run out of.
    pub fn by_pid(id: ProcessId) -> Result<ProcessHandle, ProcessError> {
        Self::open_as(id)
    }

    pub fn open_as(id: ProcessId) -> Result<ProcessHandle, ProcessError> {
        let h = Self::open(id.pid)?;
        if h.id.start != id.start {
            return Err(ProcessError::Replaced {
                pid: id.pid,
                expected: id.start,
                found: h.id.start,
            });
        }
        Ok(h)
    }

    pub fn id(&self) -> ProcessId {
        self.id
    }

    pub fn owner(&self) -> &AccountId {
        &self.owner
    }

    pub fn is_alive(&self) -> bool {
        identify(self.id.pid) == Some(self.id)
    }

    /// CPU time used so far: not read here (sysinfo has no cumulative figure),
    /// so the idle rule never finds such a product idle by its CPU.
    pub fn cpu_time(&self) -> Option<std::time::Duration> {
        None
    }

    pub fn stop(&self, how: Stop) -> Result<(), ProcessError> {
        if !self.is_alive() {
            return Ok(());
        }
        let sig = match how {
            Stop::Graceful => nix::sys::signal::Signal::SIGTERM,
            Stop::Forced => nix::sys::signal::Signal::SIGKILL,
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.id.pid as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(ProcessError::Io {
                pid: self.id.pid,
                action: "signal",
                source: e.into(),
            }),
        }
    }

    pub async fn exited(&self) {
        while self.is_alive() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
