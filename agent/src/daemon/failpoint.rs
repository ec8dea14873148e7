//! Crash points for the kill -9 tests: `FLEX_AGENT_FAILPOINT=<name>` makes the
//! agent SIGKILL itself at that step, the way a power cut or an OOM kill would,
//! with no cleanup. Unset (always, in production) it costs one load per step.

use std::sync::OnceLock;

/// The steps of a claim where a crash must not lose or double a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The claim id is journaled; the request is not sent yet.
    ClaimJournaled,
    /// The server answered; the answer is not journaled yet.
    ClaimAnswered,
}

impl Failpoint {
    fn name(self) -> &'static str {
        match self {
            Failpoint::ClaimJournaled => "claim-journaled",
            Failpoint::ClaimAnswered => "claim-answered",
        }
    }
}

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("FLEX_AGENT_FAILPOINT").ok())
        .as_deref()
}

/// Dies here if `point` is armed.
pub fn hit(point: Failpoint) {
    if armed() == Some(point.name()) {
        eprintln!("flex-agent: failpoint {} hit: killing myself", point.name());
        #[cfg(unix)]
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // As abrupt as SIGKILL: no destructors, no flushing.
        #[cfg(windows)]
        std::process::abort();
    }
}
