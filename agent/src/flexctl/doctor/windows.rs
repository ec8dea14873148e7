//! The doctor's Windows edges: who runs it, the state folder and the pipe,
//! the notifier processes, and the agent's log files for the bundle.

use std::path::Path;

use super::bundle::LOG_LINES;
use super::fixes::Fixes;
use super::report::Check;
use crate::config::Config;
use crate::process;

/// The account running the doctor (`DOMAIN\user`) and whether it is an
/// administrator (elevated), who may read the journal and the credential.
pub fn caller() -> (String, bool) {
    let name = process::owner(std::process::id())
        .map(|id| crate::account::name_of(&id))
        .unwrap_or_else(|| std::env::var("USERNAME").unwrap_or_default());
    (name, crate::win32::current_is_admin())
}

/// The state folder exists; the pipe is the agent check's business (a pipe
/// has no file to inspect).
pub fn paths_check(c: &Config, socket: &Path, fixes: &Fixes) -> Check {
    match std::fs::metadata(&c.state_dir) {
        Ok(m) if m.is_dir() => Check::ok(
            "paths",
            format!(
                "state_dir {} (SYSTEM and Administrators only), pipe {}",
                c.state_dir.display(),
                socket.display()
            ),
        ),
        Ok(_) => Check::fail(
            "paths",
            format!("{} is not a folder: move it away", c.state_dir.display()),
            &fixes.paths,
        ),
        Err(e) => Check::fail(
            "paths",
            format!("state_dir {}: {e}", c.state_dir.display()),
            &fixes.paths,
        ),
    }
}

/// Pids of the `flexctl.exe notify` processes of `account`; `None` when
/// Windows knows no such account.
pub fn notifier_pids_of(account: &str) -> Option<std::io::Result<Vec<u32>>> {
    let id = crate::account::lookup(account)?;
    let mut sys = sysinfo::System::new();
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::All,
        true,
        sysinfo::ProcessRefreshKind::nothing().with_cmd(sysinfo::UpdateKind::Always),
    );
    let mut pids: Vec<u32> = sys
        .processes()
        .iter()
        .filter(|(_, p)| p.name().eq_ignore_ascii_case("flexctl.exe"))
        .filter(|(_, p)| p.cmd().iter().any(|a| a == "notify"))
        .map(|(pid, _)| pid.as_u32())
        .filter(|&pid| process::owner(pid).as_ref() == Some(&id))
        .collect();
    pids.sort_unstable();
    Some(Ok(pids))
}

/// The last lines of the agent's newest log file (`C:\ProgramData\Flex\logs`).
pub fn agent_log() -> String {
    let Some(dir) = crate::paths::current().log_dir else {
        return "no log folder on this system\n".into();
    };
    let newest = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("flex-agent"))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
    });
    let Some(file) = newest else {
        return format!(
            "no flex-agent log in {} (run the doctor as an administrator)\n",
            dir.display()
        );
    };
    match std::fs::read_to_string(file.path()) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_LINES as usize);
            lines[from..].join("\n") + "\n"
        }
        Err(e) => format!(
            "cannot read {}: {e} (run the doctor as an administrator)\n",
            file.path().display()
        ),
    }
}

pub fn system() -> String {
    format!(
        "flexctl {}\n{} {} {}\ncollected {}\n",
        env!("CARGO_PKG_VERSION"),
        sysinfo::System::long_os_version().unwrap_or_else(|| "Windows".into()),
        sysinfo::System::host_name().unwrap_or_default(),
        std::env::consts::ARCH,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}
