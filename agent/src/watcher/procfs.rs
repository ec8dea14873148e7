//! Reading process details from Linux `/proc`.
//!
//! Only what matching and reporting need: the pid list, the names a process goes by
//! (the file name of `/proc/PID/exe`, `comm`, `argv[0]`), its real uid and its start
//! time. Every read tolerates the process vanishing half-way: that is normal, and
//! the caller just skips it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};

/// The names a process can be recognised by, cheapest to read first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub exe_path: Option<PathBuf>,
    pub comm: Option<String>,
    pub argv0: Option<String>,
}

impl Names {
    /// File name of the executable, with the kernel's " (deleted)" marker removed
    /// (a product upgraded while running still counts).
    pub fn exe_name(&self) -> Option<String> {
        let name = self.exe_path.as_ref()?.file_name()?.to_string_lossy();
        Some(name.strip_suffix(" (deleted)").unwrap_or(&name).to_string())
    }

    /// Candidates in the order they are tried: exe file name, comm, argv[0] base name.
    /// comm and argv[0] cover interpreters and launch scripts, whose exe is the
    /// interpreter.
    pub fn candidates(&self) -> impl Iterator<Item = String> + '_ {
        let argv0 = self.argv0.as_deref().and_then(|a| {
            Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
        self.exe_name()
            .into_iter()
            .chain(self.comm.clone())
            .chain(argv0)
    }
}

/// Every numeric entry of `/proc`.
pub fn list_pids() -> std::io::Result<Vec<u32>> {
    let mut pids = Vec::with_capacity(512);
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

pub fn names(pid: u32) -> Names {
    let base = format!("/proc/{pid}");
    let exe_path = fs::read_link(format!("{base}/exe")).ok();
    let comm = fs::read_to_string(format!("{base}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string());
    let argv0 = read_argv0(&format!("{base}/cmdline"));
    Names {
        exe_path,
        comm,
        argv0,
    }
}

fn read_argv0(path: &str) -> Option<String> {
    // argv can be huge; the first 4 KiB hold argv[0] in any sane case.
    let mut buf = [0u8; 4096];
    let n = fs::File::open(path).ok()?.read(&mut buf).ok()?;
    let arg = buf[..n].split(|&b| b == 0).next()?;
    (!arg.is_empty()).then(|| String::from_utf8_lossy(arg).into_owned())
}

/// Real uid of `pid`: the user who started it, even for a setuid binary.
pub fn uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`);
/// with the pid it identifies one process even after pid reuse.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state), so field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Wall-clock time of a start time in ticks since boot.
pub fn ticks_to_time(ticks: u64) -> DateTime<Utc> {
    static BOOT: OnceLock<(i64, u64)> = OnceLock::new();
    let (btime, hz) = *BOOT.get_or_init(|| {
        let btime = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (btime, if hz > 0 { hz as u64 } else { 100 })
    });
    let millis = btime * 1000 + (ticks * 1000 / hz) as i64;
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(list_pids().unwrap().contains(&me));
        let names = names(me);
        assert_eq!(names.exe_path.unwrap(), std::env::current_exe().unwrap());
        assert_eq!(uid(me), Some(nix::unistd::getuid().as_raw()));
        let started = ticks_to_time(start_ticks(me).unwrap());
        let age = Utc::now() - started;
        assert!(
            age.num_seconds() >= -2 && age.num_minutes() < 30,
            "{started}"
        );
    }

    #[test]
    fn deleted_marker_and_argv0_basename() {
        let names = Names {
            exe_path: Some("/opt/acad/acad (deleted)".into()),
            comm: Some("acad-main".into()),
            argv0: Some("/usr/bin/acadlaunch".into()),
        };
        let all: Vec<_> = names.candidates().collect();
        assert_eq!(all, ["acad", "acad-main", "acadlaunch"]);
    }
}
