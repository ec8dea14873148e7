//! Process identity and control, one interface per OS.
//!
//! A process is named by [`ProcessId`] (pid plus start time, so a reused pid is
//! never taken for the old process) and controlled through a handle opened when
//! it is detected or attached.

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// A process, unambiguously: its pid and its OS-specific start time (clock
/// ticks since boot from /proc on Linux; the FILETIME creation time on Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}
