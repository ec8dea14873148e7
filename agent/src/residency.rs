//! What the idle agent keeps resident.
//!
//! Most of the agent's resident memory is code mapped from files: its own
//! executable and the C library. Start-up runs a great deal of code once
//! (configuration, the journal's migrations, enrollment, TLS set-up), and the
//! kernel maps each page touched together with its neighbours, so after
//! start-up about 5 MB of code stays mapped that the idle agent never runs
//! again. [`release_code_pages`] unmaps the pages of the executable
//! mappings, once start-up is over and then every [`AGAIN_EVERY`]; they stay
//! in the page cache, and any page run again is mapped back by an ordinary
//! minor fault. Only mappings that are executable and
//! private to a file are touched: their pages are never written, so nothing
//! is lost (written pages, such as relocated data, live in other mappings).

/// How long after it is ready the agent has done what it does once: its
/// first contact with the server, the first scan of processes.
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the code pages are handed back again after that. An idle agent
/// runs a little code often (the watcher, the timer) and some rarely (a
/// heartbeat, a reconnect with its TLS handshake, a rate sheet update), and
/// each rare path left its pages mapped until the resident set held most of
/// the client. Released again, a page run since costs one minor fault from
/// the page cache: a few hundred a minute at most, against one read of
/// `/proc/self/smaps`.
pub const AGAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The least time between two hand-backs made when the journal's thread goes
/// idle. A journal write (the once-a-minute record of an idle agent) brings
/// back about a megabyte of SQLite's code, which would otherwise stay until
/// the next timed hand-back; at most one in this time keeps a burst of
/// launches from paying for it more than once. Timed hand-backs do not
/// count: one just before a write would leave the write's pages mapped.
pub const AFTER_JOURNAL_GAP: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the journal's thread hands code pages back (the service turns it
/// on once start-up is over; tests and tools leave it off).
static AFTER_JOURNAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// When the journal's thread last handed pages back, in milliseconds since
/// [`epoch`].
static LAST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn now_ms() -> u64 {
    // Never 0, which means "never".
    epoch().elapsed().as_millis() as u64 + 1
}

/// Lets the journal's thread hand code pages back after its work.
pub fn release_after_journal_work() {
    AFTER_JOURNAL.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Called by the journal's thread when it has nothing more to do: hands the
/// code pages back, unless that is off or was done within
/// [`AFTER_JOURNAL_GAP`]. Returns whether it did.
pub fn journal_idle() -> bool {
    use std::sync::atomic::Ordering;
    let on = AFTER_JOURNAL.load(Ordering::Relaxed);
    if !due(on, LAST_MS.load(Ordering::Relaxed), now_ms()) {
        return false;
    }
    LAST_MS.store(now_ms(), Ordering::Relaxed);
    release_code_pages().is_ok()
}

/// Whether a hand-back is due after journal work, the last one made at
/// `last_ms` (0: never).
fn due(on: bool, last_ms: u64, now_ms: u64) -> bool {
    on && (last_ms == 0 || now_ms.saturating_sub(last_ms) >= AFTER_JOURNAL_GAP.as_millis() as u64)
}

/// Unmaps the executable file mappings' pages; returns the bytes of the
/// mappings (not all of them were resident).
#[cfg(target_os = "linux")]
pub fn release_code_pages() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for (start, end) in code_mappings(&smaps) {
        // SAFETY: the range is a whole mapping of this process, executable,
        // private to a file and with no page of its own (never written):
        // dropping its pages loses nothing and a later access maps them again
        // from the file. MADV_RANDOM only stops the kernel reading around a
        // page that comes back.
        let rc = unsafe {
            let (addr, len) = (start as *mut libc::c_void, (end - start) as libc::size_t);
            libc::madvise(addr, len, libc::MADV_RANDOM);
            libc::madvise(addr, len, libc::MADV_DONTNEED)
        };
        if rc == 0 {
            released += (end - start) as u64;
        }
    }
    Ok(released)
}

#[cfg(not(target_os = "linux"))]
pub fn release_code_pages() -> std::io::Result<u64> {
    Ok(0)
}

/// The ranges of `/proc/self/smaps` mappings that are executable, private,
/// backed by a file (not `[vdso]` and the like, nor anonymous JIT memory) and
/// hold no written page (`Anonymous` and `Private_Dirty` 0: a library with
/// text relocations has written copies of its code, which must stay).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn code_mappings(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read, while it still qualifies.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some(field) = first.strip_suffix(':') {
            let written = matches!(field, "Anonymous" | "Private_Dirty")
                && fields.next().is_some_and(|kb| kb != "0");
            if written {
                current = None;
            }
            continue;
        }
        // A header: "start-end perms offset device inode path".
        out.extend(current.take());
        let perms = fields.next();
        let inode = fields.nth(2);
        let path = fields.next();
        let file_backed =
            inode.is_some_and(|i| i != "0") && path.is_some_and(|p| p.starts_with('/'));
        if perms != Some("r-xp") || !file_backed {
            continue;
        }
        let Some((a, b)) = first.split_once('-') else {
            continue;
        };
        if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
            if b > a {
                current = Some((a, b));
            }
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_executable_private_file_mappings() {
        let smaps = "\
55d0c8a00000-55d0c8b00000 r--p 00000000 fe:01 1234 /usr/bin/flex-agent
Rss:                 100 kB
Anonymous:             0 kB
55d0c8b00000-55d0c8f00000 r-xp 00100000 fe:01 1234 /usr/bin/flex-agent
Size:               4096 kB
Rss:                3000 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55d0c8f00000-55d0c9000000 rw-p 00500000 fe:01 1234 /usr/bin/flex-agent
Private_Dirty:        12 kB
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
7f0000002000-7f0000003000 r-xs 00000000 fe:01 99 /dev/shm/x
7f0800000000-7f0800010000 r-xp 00000000 fe:01 77 /usr/lib/libtextrel.so
Private_Dirty:         8 kB
Anonymous:             8 kB
7f1000000000-7f1000100000 r-xp 00028000 fe:01 555 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 876 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            code_mappings(smaps),
            [
                (0x55d0c8b00000, 0x55d0c8f00000),
                (0x7f1000000000, 0x7f1000100000)
            ]
        );
    }

    #[test]
    fn after_journal_work_a_hand_back_is_due_when_on_and_at_most_once_a_gap() {
        let gap = AFTER_JOURNAL_GAP.as_millis() as u64;
        assert!(!due(false, 0, 5), "off until the service turns it on");
        assert!(due(true, 0, 5), "never handed back yet");
        assert!(!due(true, 1_000, 1_000 + gap - 1), "handed back just now");
        assert!(due(true, 1_000, 1_000 + gap));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn code_runs_on_after_its_pages_are_released() {
        let released = release_code_pages().unwrap();
        assert!(released > 0);
        let v: Vec<String> = (0..1000).map(|i| format!("{i}")).collect();
        assert_eq!(v.join("").len(), 2890);
    }
}
