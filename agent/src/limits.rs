//! Every resource limit of the local API, in one table.
//!
//! The agent runs as root and answers every local account, so anything a client
//! can make it hold (connections, subscriptions, sessions, pending jobs, reply
//! size) is capped per account, and capacity is kept back for root (the service
//! that may act for others) and for other accounts: one user cannot starve the
//! rest. `SECURITY.md` repeats this table; each limit has a test named after it.
//!
//! | limit | value | what happens beyond it |
//! |---|---|---|
//! | [`MAX_LINE`] | 64 KiB | the line is discarded, `invalid_request` |
//! | [`MAX_CONNECTIONS`] | 256 | `limit_exceeded` line, connection closed |
//! | [`RESERVED_FOR_ADMIN`] | 16 | other accounts share the rest |
//! | [`MAX_CONNECTIONS_PER_ACCOUNT`] | 32 | `limit_exceeded`, connection closed |
//! | [`MAX_SUBSCRIPTIONS_PER_ACCOUNT`] | 8 | `subscribe` answers `limit_exceeded` |
//! | [`MAX_WRAPPER_SESSIONS_PER_ACCOUNT`] | 64 | `launch` answers `limit_exceeded` |
//! | [`MAX_PENDING_JOBS_PER_ACCOUNT`] | 16 | `result` answers `limit_exceeded` |
//! | [`MAX_STORED_JOBS_PER_ACCOUNT`] | 1024 | the oldest settled job is forgotten (safe: job claim ids are derived, the server answers them again) |
//! | [`MAX_HANDLES_PER_ACCOUNT`] | 4096 | the account's further product processes are held by pid and start time (still enforced) |
//! | [`MAX_STATUS_ITEMS`] | 50 | `status` lists the first ones and counts the rest |
//! | [`IDLE_TIMEOUT`] | 60 s | a connection without a subscription or session is closed |
//! | [`WRITE_TIMEOUT`] | 10 s | a client that does not read its replies is dropped |
//!
//! A subscription is one per connection (a repeated `subscribe` is answered, not
//! added), and a connection holds at most one wrapper session (a second `launch`
//! on it releases the first, as if its wrapper had gone).

use std::time::Duration;

pub use flex_protocol::socket::MAX_LINE;

/// Connections served at once, all accounts together.
pub const MAX_CONNECTIONS: usize = 256;
/// Of [`MAX_CONNECTIONS`], kept for root / Administrators only.
pub const RESERVED_FOR_ADMIN: usize = 16;
/// Connections of one (non-admin) account at once.
pub const MAX_CONNECTIONS_PER_ACCOUNT: usize = 32;
/// Event subscriptions (`flexctl notify`) of one account at once.
pub const MAX_SUBSCRIPTIONS_PER_ACCOUNT: usize = 8;
/// Sessions announced through `launch` of one account at once. Sessions the
/// process watcher finds are not capped: each is a real process the kernel
/// started, and the kernel's own limits bound them.
pub const MAX_WRAPPER_SESSIONS_PER_ACCOUNT: usize = 64;
/// Per-result jobs of one account waiting for the server at once.
pub const MAX_PENDING_JOBS_PER_ACCOUNT: usize = 16;
/// Per-result job states kept for one account (user) for retries. Jobs for a
/// product the rate sheet does not name are refused without keeping anything.
pub const MAX_STORED_JOBS_PER_ACCOUNT: usize = 1024;
/// Process handles (pidfds: one descriptor each) held for one account's
/// product processes. With the service's 65,536 descriptors this keeps any one
/// account from exhausting them; beyond it a process is held by pid and start
/// time, checked before every signal.
pub const MAX_HANDLES_PER_ACCOUNT: usize = 4096;
/// Sessions (and windows) listed by `status`; the rest are counted.
pub const MAX_STATUS_ITEMS: usize = 50;
/// A connection without a subscription or a session that sends no request for
/// this long is closed. Blank lines are not requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not read a reply or event for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        // Admins always keep room, and one account can never take everything.
        const { assert!(RESERVED_FOR_ADMIN < MAX_CONNECTIONS) };
        const { assert!(MAX_CONNECTIONS_PER_ACCOUNT < MAX_CONNECTIONS - RESERVED_FOR_ADMIN) };
        const { assert!(MAX_SUBSCRIPTIONS_PER_ACCOUNT <= MAX_CONNECTIONS_PER_ACCOUNT) };
        // A status reply listing every session and window it may list fits in a
        // line: a session is at most ~700 bytes (an email of 254, product and
        // version ids of 128), a window ~300, the rest of the reply ~4 KiB.
        const { assert!(MAX_STATUS_ITEMS * (700 + 300) + 4096 < MAX_LINE) };
    }
}
