//! `flexctl doctor --bundle FILE`: a support archive (.tar.gz, mode 0600) to
//! attach to a ticket: the doctor's report (text and JSON), the agent's status,
//! the config files with anything secret-looking redacted, the agent's last
//! 1,000 log lines, and what system this is. Never the device credential or an
//! enrollment token: those files are not read.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flex_protocol::socket::StatusReply;

use super::report::Report;
use crate::config;

/// Log lines included.
pub const LOG_LINES: u32 = 1000;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the support bundle {path}: {source}")]
pub struct BundleError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Writes the bundle to `path`.
pub fn write(
    path: &Path,
    config_path: &Path,
    report: &Report,
    status: Option<&StatusReply>,
) -> Result<(), BundleError> {
    let err = |source| BundleError {
        path: path.to_path_buf(),
        source,
    };
    // `sudo flexctl doctor --bundle FILE` runs as root in a directory a user
    // may write to: never open FILE itself (a planted symlink would be
    // followed, a planted file would keep its owner and mode). Write a new
    // file of our own beside it, then rename it over FILE.
    let (tmp, file) = create_new_beside(path).map_err(err)?;
    let written = write_archive(file, config_path, report, status);
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err(e))
        }
    }
}

/// Creates a new file (0600, never an existing one, never through a symlink)
/// in `path`'s directory.
fn create_new_beside(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let mut last = None;
    for _ in 0..16 {
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        }
        match opts.open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

fn write_archive(
    file: std::fs::File,
    config_path: &Path,
    report: &Report,
    status: Option<&StatusReply>,
) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(GzEncoder::new(file, flate2::Compression::default()));
    let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        header.set_cksum();
        tar.append_data(&mut header, format!("flex-doctor/{name}"), bytes)
    };
    (|| {
        add("doctor.txt", report.render().as_bytes())?;
        add(
            "doctor.json",
            serde_json::to_string_pretty(report)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        let status = match status {
            Some(s) => serde_json::to_string_pretty(s).unwrap_or_default(),
            None => "the agent did not answer: see doctor.txt\n".into(),
        };
        add("status.json", status.as_bytes())?;
        match config::sources(config_path) {
            Ok(files) => {
                for f in files {
                    let text = std::fs::read_to_string(&f)
                        .map(|t| redact(&t))
                        .unwrap_or_else(|e| format!("# cannot read {}: {e}\n", f.display()));
                    let name = f
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    let dir = if f == config_path {
                        "config"
                    } else {
                        "config/agent.d"
                    };
                    add(&format!("{dir}/{name}"), text.as_bytes())?;
                }
            }
            Err(e) => add("config/ERROR.txt", e.to_string().as_bytes())?,
        }
        add("log.txt", agent_log().as_bytes())?;
        add("system.txt", system().as_bytes())?;
        Ok::<(), std::io::Error>(())
    })()?;
    let gz = tar.into_inner()?;
    let mut file = gz.finish()?;
    file.flush()?;
    file.sync_all()
}

/// Lines whose key names a secret keep the key, not the value.
fn redact(text: &str) -> String {
    text.lines()
        .map(|line| {
            let key = line
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let secret = ["token", "secret", "password", "key"]
                .iter()
                .any(|w| key.contains(w));
            if line.contains('=') && secret && !key.starts_with('#') {
                format!(
                    "{} = \"<redacted>\"",
                    line.split('=').next().unwrap_or("").trim_end()
                )
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(windows)]
use super::windows::{agent_log, system};

/// The agent's last log lines from journald, or why there are none.
#[cfg(unix)]
fn agent_log() -> String {
    let out = std::process::Command::new("journalctl")
        .args([
            "-u",
            "flex-agent",
            "-n",
            &LOG_LINES.to_string(),
            "--no-pager",
            "-o",
            "short-iso",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => format!(
            "journalctl failed ({}): {}\n(run the doctor as root, or as a member of group \
             systemd-journal, for the agent's log)\n",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run journalctl: {e}\n"),
    }
}

#[cfg(unix)]
fn system() -> String {
    let uname = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {} {} {}",
                u.sysname().to_string_lossy(),
                u.nodename().to_string_lossy(),
                u.release().to_string_lossy(),
                u.machine().to_string_lossy()
            )
        })
        .unwrap_or_else(|e| format!("uname failed: {e}"));
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    format!(
        "flexctl {}\n{uname}\ncollected {}\n\n{os}",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_values_are_redacted() {
        let text = "server_url = \"https://s\"\nadmin_token = \"abc\"\n# api_key = \"x\"\n[users]\nemail_template = \"{user}@c.example\"\n";
        let r = redact(text);
        assert!(r.contains("admin_token = \"<redacted>\""), "{r}");
        assert!(!r.contains("abc"), "{r}");
        assert!(r.contains("server_url = \"https://s\""), "{r}");
        assert!(r.contains("email_template = \"{user}@c.example\""), "{r}");
    }

    #[cfg(unix)]
    #[test]
    fn the_bundle_is_private_and_holds_the_report_and_config() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, "server_url = \"https://s\"\n").unwrap();
        std::fs::create_dir(dir.path().join("agent.d")).unwrap();
        std::fs::write(dir.path().join("agent.d/10-x.toml"), "enforce = false\n").unwrap();
        std::fs::write(dir.path().join("enroll-token"), "fet_secret").unwrap();
        let mut report = Report::default();
        report.push(super::super::report::Check::ok("config", "parses"));
        let out = dir.path().join("bundle.tar.gz");
        write(&out, &config, &report, None).unwrap();
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&out).unwrap(),
        ));
        let mut names = Vec::new();
        let mut all = String::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            names.push(e.path().unwrap().display().to_string());
            std::io::Read::read_to_string(&mut e, &mut all).unwrap();
        }
        for want in [
            "flex-doctor/doctor.txt",
            "flex-doctor/doctor.json",
            "flex-doctor/status.json",
            "flex-doctor/config/agent.toml",
            "flex-doctor/config/agent.d/10-x.toml",
            "flex-doctor/log.txt",
            "flex-doctor/system.txt",
        ] {
            assert!(names.contains(&want.to_string()), "{want} in {names:?}");
        }
        assert!(
            !all.contains("fet_secret"),
            "no enrollment token in the bundle"
        );
    }
}
