//! A real process whose main thread ends while another runs on, built from
//! `leaderless.c`. Linux only.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The program (see [`super::c_program`]).
pub fn program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| super::c_program("leaderless", include_str!("leaderless.c")))
}

/// Waits until the main thread of `pid` has ended while another runs on;
/// the deadline only bounds a failing test.
pub fn wait_main_thread_ended(pid: u32) {
    let deadline = std::time::Instant::now() + super::READY_DEADLINE;
    while crate::process::leaderless(pid).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the main thread of {pid} never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
