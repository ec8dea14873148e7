//! `flexctl run` on Windows: the product runs in a Job object, so everything
//! it starts is closed with it.
//!
//! The product is created suspended, put in a new job, then resumed: nothing
//! it starts can escape the job in between. Closing asks each process of the
//! job to quit (WM_CLOSE to its top-level windows); killing terminates the
//! whole job. The wrapper itself is not in the job.

use std::io;
use std::process::ExitStatus;

use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Thread32First, Thread32Next, TH32CS_SNAPTHREAD, THREADENTRY32,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectBasicProcessIdList,
    QueryInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    OpenThread, ResumeThread, CREATE_SUSPENDED, THREAD_SUSPEND_RESUME,
};

#[cfg(test)]
use crate::process::ProcessHandle;
use crate::process::{close_windows_of, KILLED_EXIT_CODE};
use crate::win32::{check, Handle};

/// The product of a `flexctl run` and the job holding it and its children.
pub struct ProductJob {
    job: Handle,
}

impl ProductJob {
    /// Starts `command` (program and arguments) inside a new job.
    pub fn spawn(command: &[String]) -> io::Result<(tokio::process::Child, ProductJob)> {
        // SAFETY: no attributes, no name: a new anonymous job.
        let job = Handle::check(unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) })?;
        let child = tokio::process::Command::new(&command[0])
            .args(&command[1..])
            .creation_flags(CREATE_SUSPENDED)
            .spawn()?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        let started = (|| {
            let process = child
                .raw_handle()
                .ok_or_else(|| io::Error::other("the product exited before it started"))?;
            // SAFETY: two valid handles (the child's has all access rights).
            check(unsafe { AssignProcessToJobObject(job.raw(), process) })?;
            resume_threads(pid)
        })();
        let this = ProductJob { job };
        if let Err(e) = started {
            this.kill();
            return Err(e);
        }
        Ok((child, this))
    }

    /// The pids in the job now.
    pub fn pids(&self) -> Vec<u32> {
        // Header (two u32) plus up to 1024 pids.
        let mut buf = vec![0usize; 1 + 1024];
        // SAFETY: a buffer of the size passed; the header is two u32s, one usize.
        let ok = unsafe {
            QueryInformationJobObject(
                self.job.raw(),
                JobObjectBasicProcessIdList,
                buf.as_mut_ptr().cast(),
                (buf.len() * std::mem::size_of::<usize>()) as u32,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Vec::new();
        }
        let listed = (buf[0] >> 32) as usize;
        buf[1..=listed.min(1024)]
            .iter()
            .map(|&p| p as u32)
            .collect()
    }

    /// Asks every process of the job to close; returns how many windows were asked.
    pub fn close(&self) -> usize {
        self.pids().into_iter().map(close_windows_of).sum()
    }

    /// Terminates every process of the job.
    pub fn kill(&self) {
        // SAFETY: a valid job handle.
        unsafe { TerminateJobObject(self.job.raw(), KILLED_EXIT_CODE) };
    }
}

/// Resumes the threads of a process created suspended.
fn resume_threads(pid: u32) -> io::Result<()> {
    // SAFETY: plain flags; the result is checked.
    let snap = Handle::check(unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) })?;
    // SAFETY: an all-zero THREADENTRY32 is valid; dwSize is set below.
    let mut entry: THREADENTRY32 = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
    let mut resumed = 0;
    // SAFETY: a snapshot handle and an entry with its size set.
    let mut more = unsafe { Thread32First(snap.raw(), &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: plain arguments; the handle is checked and owned.
            let thread =
                Handle::check(unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID) })?;
            // SAFETY: a thread handle opened with THREAD_SUSPEND_RESUME.
            if unsafe { ResumeThread(thread.raw()) } == u32::MAX {
                return Err(io::Error::last_os_error());
            }
            resumed += 1;
        }
        // SAFETY: as for Thread32First.
        more = unsafe { Thread32Next(snap.raw(), &mut entry) } != 0;
    }
    if resumed == 0 {
        return Err(io::Error::other(format!(
            "process {pid} has no thread to resume"
        )));
    }
    Ok(())
}

/// The exit code `flexctl run` passes on.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn children_of_the_product_are_killed_with_it() {
        // cmd starts a second process (ping) that would outlive a plain kill of cmd.
        let command: Vec<String> = ["cmd", "/c", "ping -n 60 127.0.0.1 >NUL"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (mut child, job) = ProductJob::spawn(&command).unwrap();
        let pids = {
            let mut pids = job.pids();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while pids.len() < 2 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                pids = job.pids();
            }
            pids
        };
        assert!(pids.len() >= 2, "cmd and its ping run in the job: {pids:?}");
        assert!(pids.contains(&child.id().unwrap()));
        let handles: Vec<ProcessHandle> = pids
            .iter()
            .filter_map(|&p| ProcessHandle::open(p).ok())
            .collect();
        // Console programs have no windows to close.
        assert_eq!(job.close(), 0);
        job.kill();
        let status = child.wait().await.unwrap();
        assert_eq!(exit_code(status), KILLED_EXIT_CODE as i32);
        for h in &handles {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while h.is_alive() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(!h.is_alive(), "process {} outlived its job", h.id());
        }
    }
}
