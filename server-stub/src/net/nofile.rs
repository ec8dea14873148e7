//! The open-file limit. systemd and most shells start a process with a soft
//! `RLIMIT_NOFILE` of 1,024 and a much higher hard limit; each connection
//! takes one descriptor, so the server raises its soft limit to the hard one at
//! start and keeps its connection cap below what it got.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept back from connections: the database and its WAL, the
/// listener, the runtime's epoll and wakers, logs, mail.
pub const RESERVED_FDS: u64 = 64;

/// Raises the soft open-file limit to the hard limit; returns the soft limit in
/// force afterwards. A refusal (a seccomp filter, say) keeps the old limit.
pub fn raise() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(from = soft, to = hard, "raised the open-file limit");
            hard
        }
        Err(e) => {
            tracing::warn!(
                soft,
                hard,
                "cannot raise the open-file limit ({e}); set LimitNOFILE= in the unit"
            );
            soft
        }
    }
}

/// The connection cap that fits `nofile` descriptors.
pub fn connection_cap(configured: u32, nofile: u64) -> u32 {
    let room = nofile.saturating_sub(RESERVED_FDS).max(1);
    u64::from(configured).min(room) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_descriptors() {
        assert_eq!(connection_cap(10_000, 1024), 960);
        assert_eq!(connection_cap(10_000, 65_536), 10_000);
        assert_eq!(connection_cap(10, 3), 1);
    }

    #[test]
    fn raising_leaves_soft_at_hard() {
        let got = raise();
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(got, soft);
        assert_eq!(soft, hard);
    }
}
