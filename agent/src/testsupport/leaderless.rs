//! A real process whose main thread ends while another runs on, built from
//! `leaderless.c` with the C compiler Rust links with. Linux only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const SOURCE: &str = include_str!("leaderless.c");

/// The program, built once per source version next to the test binary (so
/// test binaries share it and nothing is left in `/tmp`). Panics with what
/// to install when there is no C compiler.
pub fn program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        SOURCE.hash(&mut h);
        let dir = std::env::current_exe()
            .expect("the test binary's path")
            .parent()
            .expect("the test binary's directory")
            .to_path_buf();
        let out = dir.join(format!("flex-test-leaderless-{:016x}", h.finish()));
        if out.exists() {
            return out;
        }
        let work = tempfile::tempdir().expect("a temporary directory");
        let src = work.path().join("leaderless.c");
        std::fs::write(&src, SOURCE).expect("write the C source");
        let built = work.path().join("leaderless");
        let status = Command::new("cc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&built)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run cc to build the leaderless test program (install gcc): {e}")
            });
        assert!(
            status.success(),
            "cc failed to build the leaderless test program: {status}"
        );
        // Another test binary may build it at the same time: the rename is atomic.
        let staged = dir.join(format!("{}.{}", out.display(), std::process::id()));
        std::fs::copy(&built, &staged).expect("copy the built program");
        std::fs::rename(&staged, &out).expect("put the built program in place");
        out
    })
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
