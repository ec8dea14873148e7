//! What the idle agent keeps resident.
//!
//! Most of the agent's resident memory is code mapped from files: its own
//! executable and the C library. Start-up runs a great deal of code once
//! (configuration, the journal's migrations, enrollment, TLS set-up), and the
//! kernel maps each page touched together with its neighbours, so after
//! start-up about 5 MB of code stays mapped that the idle agent never runs
//! again. [`release_startup_code`] unmaps the pages of the executable
//! mappings; they stay in the page cache, and any page run again is mapped
//! back by an ordinary minor fault. Only mappings that are executable and
//! private to a file are touched: their pages are never written, so nothing
//! is lost (written pages, such as relocated data, live in other mappings).

/// How long after it is ready the agent has done what it does once: its
/// first contact with the server, the first scan of processes.
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(5);

/// Unmaps the executable file mappings' pages; returns the bytes of the
/// mappings (not all of them were resident).
#[cfg(target_os = "linux")]
pub fn release_startup_code() -> std::io::Result<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut released = 0;
    for (start, end) in code_mappings(&maps) {
        // SAFETY: the range is a whole mapping of this process, executable and
        // private to a file, so never written: dropping its pages loses nothing
        // and a later access maps them again from the file.
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
pub fn release_startup_code() -> std::io::Result<u64> {
    Ok(0)
}

/// The ranges of `/proc/self/maps` lines that are executable, private and
/// backed by a file (not `[vdso]` and the like, nor anonymous JIT memory).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn code_mappings(maps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // offset, device, inode, then the path.
        let inode = fields.nth(2);
        let path = fields.next();
        let file_backed =
            inode.is_some_and(|i| i != "0") && path.is_some_and(|p| p.starts_with('/'));
        if perms != "r-xp" || !file_backed {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
            if b > a {
                out.push((a, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executable_private_file_mappings() {
        let maps = "\
55d0c8a00000-55d0c8b00000 r--p 00000000 fe:01 1234 /usr/bin/flex-agent
55d0c8b00000-55d0c8f00000 r-xp 00100000 fe:01 1234 /usr/bin/flex-agent
55d0c8f00000-55d0c9000000 rw-p 00500000 fe:01 1234 /usr/bin/flex-agent
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
7f0000002000-7f0000003000 r-xs 00000000 fe:01 99 /dev/shm/x
7f1000000000-7f1000100000 r-xp 00028000 fe:01 555 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            code_mappings(maps),
            [
                (0x55d0c8b00000, 0x55d0c8f00000),
                (0x7f1000000000, 0x7f1000100000)
            ]
        );
    }

    /// This test binary keeps running after its own code is unmapped: the
    /// pages come back from the file as they are run.
    /// Resident kB of this process's executable private mappings.
    #[cfg(target_os = "linux")]
    fn code_resident_kb() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_code = false;
        let mut kb = 0;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                if in_code {
                    kb += rss
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap();
                }
            } else if !line.split_whitespace().next().unwrap_or("").ends_with(':') {
                // A mapping's header line: "start-end perms offset dev inode path".
                in_code = line.split_whitespace().nth(1) == Some("r-xp");
            }
        }
        kb
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn code_runs_on_after_its_pages_are_released() {
        let before = code_resident_kb();
        let released = release_startup_code().unwrap();
        let after = code_resident_kb();
        assert!(released > 0);
        assert!(
            after < before,
            "code resident before {before} kB, after {after} kB"
        );
        let v: Vec<String> = (0..1000).map(|i| format!("{i}")).collect();
        assert_eq!(v.join("").len(), 2890);
    }
}
