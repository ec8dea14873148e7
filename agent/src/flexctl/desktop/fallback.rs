//! A refused launch that nobody would see otherwise: `flexctl run` started
//! from a desktop launcher has no terminal, and without a notifier in the
//! session nothing shows the refusal. Then the wrapper shows it itself, as a
//! dialog through `zenity` when it is installed (it cannot be missed), else
//! as a notification through `notify-send`.
//!
//! A notifier counts when it is a `flexctl notify` of this user on the same
//! display (its `DISPLAY` or `WAYLAND_DISPLAY`), found in `/proc`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How the refusal is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    Zenity(PathBuf),
    NotifySend(PathBuf),
}

/// What decides whether and how.
#[derive(Debug, Clone, Default)]
pub struct Situation {
    /// `DISPLAY` or `WAYLAND_DISPLAY` is set.
    pub desktop: bool,
    /// stderr is a terminal: the user reads the refusal there.
    pub terminal: bool,
    /// A notifier shows this session's refusals.
    pub notifier: bool,
    pub zenity: Option<PathBuf>,
    pub notify_send: Option<PathBuf>,
}

/// Whether and how to show a refusal in `s`.
pub fn choose(s: Situation) -> Option<Fallback> {
    if !s.desktop || s.terminal || s.notifier {
        return None;
    }
    s.zenity
        .map(Fallback::Zenity)
        .or(s.notify_send.map(Fallback::NotifySend))
}

/// `name` in one of the `PATH` directories `path`.
pub fn find_in(path: &OsStr, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether `cmdline` (NUL-separated, from `/proc/PID/cmdline`) runs
/// `flexctl [--socket PATH] notify`, and `environ` holds the display entry
/// `display` (`DISPLAY=:0`).
pub fn is_notifier(cmdline: &[u8], environ: &[u8], display: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut args = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty());
    let runs_flexctl = args
        .next()
        .and_then(|a| Path::new(OsStr::from_bytes(a)).file_name())
        .is_some_and(|n| n == "flexctl");
    // The subcommand: the first argument that is not a global option.
    let mut subcommand = None;
    while let Some(a) = args.next() {
        if a == b"--socket" {
            args.next();
        } else if !a.starts_with(b"-") {
            subcommand = Some(a);
            break;
        }
    }
    runs_flexctl
        && subcommand == Some(b"notify".as_slice())
        && environ
            .split(|&b| b == 0)
            .any(|entry| entry == display.as_bytes())
}

/// The display entry this process runs on: `WAYLAND_DISPLAY=...` or
/// `DISPLAY=...`.
fn display_entry() -> Option<String> {
    ["WAYLAND_DISPLAY", "DISPLAY"].into_iter().find_map(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| format!("{k}={v}"))
    })
}

/// A `flexctl notify` of this user on this display, from `/proc`.
#[cfg(target_os = "linux")]
fn notifier_running(display: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::getuid().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .any(|e| {
            let read = |f: &str| std::fs::read(e.path().join(f)).unwrap_or_default();
            is_notifier(&read("cmdline"), &read("environ"), display)
        })
}

#[cfg(not(target_os = "linux"))]
fn notifier_running(_display: &str) -> bool {
    false
}

/// The situation of this process.
fn here() -> Situation {
    use std::io::IsTerminal;
    let display = display_entry();
    let path = std::env::var_os("PATH").unwrap_or_default();
    Situation {
        desktop: display.is_some(),
        terminal: std::io::stderr().is_terminal(),
        notifier: display.as_deref().is_some_and(notifier_running),
        zenity: find_in(&path, "zenity"),
        notify_send: find_in(&path, "notify-send"),
    }
}

/// Shows `summary` and `body` if nothing else would (see the module's doc).
/// Does not wait for the dialog: the launcher's answer (exit 77) is not held up.
pub fn show_refusal(summary: &str, body: &str) {
    let Some(how) = choose(here()) else {
        return;
    };
    let mut cmd = match &how {
        Fallback::Zenity(exe) => {
            let mut c = Command::new(exe);
            c.arg("--error")
                .arg("--no-markup")
                .arg(format!("--title={summary}"))
                .arg(format!("--text={summary}\n\n{body}"));
            c
        }
        Fallback::NotifySend(exe) => {
            let mut c = Command::new(exe);
            c.args(["--app-name=Flex licensing", "--urgency=normal", "--"])
                .arg(summary)
                .arg(body);
            c
        }
    };
    let started = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = started {
        tracing::warn!(error = %e, ?how, "cannot show the refusal on the desktop");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation() -> Situation {
        Situation {
            desktop: true,
            terminal: false,
            notifier: false,
            zenity: Some("/usr/bin/zenity".into()),
            notify_send: Some("/usr/bin/notify-send".into()),
        }
    }

    #[test]
    fn only_a_launcher_on_a_desktop_without_a_notifier_shows_it() {
        assert_eq!(
            choose(situation()),
            Some(Fallback::Zenity("/usr/bin/zenity".into()))
        );
        let no_zenity = Situation {
            zenity: None,
            ..situation()
        };
        assert_eq!(
            choose(no_zenity),
            Some(Fallback::NotifySend("/usr/bin/notify-send".into()))
        );
        for quiet in [
            Situation {
                desktop: false,
                ..situation()
            },
            Situation {
                terminal: true,
                ..situation()
            },
            Situation {
                notifier: true,
                ..situation()
            },
            Situation {
                zenity: None,
                notify_send: None,
                ..situation()
            },
        ] {
            assert_eq!(choose(quiet.clone()), None, "{quiet:?}");
        }
    }

    #[test]
    fn a_notifier_counts_on_its_own_display() {
        let cmd = b"/usr/bin/flexctl\0notify\0";
        let env = b"HOME=/home/ada\0DISPLAY=:0\0";
        assert!(is_notifier(cmd, env, "DISPLAY=:0"));
        assert!(!is_notifier(cmd, env, "DISPLAY=:1"));
        assert!(is_notifier(
            b"flexctl\0--socket\0/tmp/a.sock\0notify\0--print\0",
            env,
            "DISPLAY=:0"
        ));
        assert!(!is_notifier(
            b"/usr/bin/flexctl\0run\0--product\0notify\0",
            b"",
            "DISPLAY=:0"
        ));
        assert!(!is_notifier(b"/usr/bin/vim\0notify\0", env, "DISPLAY=:0"));
        assert!(!is_notifier(b"", env, "DISPLAY=:0"));
    }

    #[test]
    fn programs_are_found_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("zenity");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(find_in(&path, "zenity"), None, "not executable yet");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in(&path, "zenity"), Some(exe));
    }
}
