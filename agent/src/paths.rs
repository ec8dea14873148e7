//! Default locations of the agent's files, per operating system.
//!
//! One pure function, [`defaults`], decides them for every OS, so the choices for
//! all three are tested on any machine; [`current`] applies it to the OS the
//! binary was built for. The config file, `flexctl --socket` and the installers
//! all start from these.

use std::path::PathBuf;

/// The operating systems the agent ships for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    MacOs,
    Windows,
}

impl Os {
    /// The OS this binary was built for (other Unix systems use the Linux layout).
    pub const fn current() -> Os {
        if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else {
            Os::Linux
        }
    }
}

/// Where the agent's files live when the config does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// `flex-agent --config` and `flex-agent enroll --config`.
    pub config: PathBuf,
    /// The journal and, with the file credential store, the device token.
    pub state_dir: PathBuf,
    /// The local API: a Unix socket path, or a named pipe on Windows.
    pub socket: PathBuf,
    /// Log files, where the service writes its own (Windows); `None` where the
    /// service manager keeps the log (journald, launchd's StandardErrorPath).
    pub log_dir: Option<PathBuf>,
}

/// The named pipe of the local API on Windows.
pub const WINDOWS_PIPE: &str = r"\\.\pipe\flex-agent";

/// The defaults for `os`. `program_data` is Windows' `%ProgramData%` (normally
/// `C:\ProgramData`; `None` uses that), ignored elsewhere.
///
/// macOS has no `/run`, and `/var/run` is where launchd daemons put sockets;
/// machine-wide application data lives under `/Library/Application Support`.
pub fn defaults(os: Os, program_data: Option<&str>) -> Defaults {
    match os {
        Os::Linux => Defaults {
            config: "/etc/flex-agent/agent.toml".into(),
            state_dir: "/var/lib/flex-agent".into(),
            socket: "/run/flex-agent/agent.sock".into(),
            log_dir: None,
        },
        Os::MacOs => {
            let base = "/Library/Application Support/Flex";
            Defaults {
                config: format!("{base}/agent.toml").into(),
                state_dir: format!("{base}/state").into(),
                socket: "/var/run/flex-agent/agent.sock".into(),
                log_dir: None,
            }
        }
        Os::Windows => {
            // Built as text: this runs on every OS, where `Path::join` would use
            // the host's separator.
            let data = program_data
                .map(|p| p.trim_end_matches(['\\', '/']))
                .filter(|p| !p.is_empty())
                .unwrap_or(r"C:\ProgramData");
            Defaults {
                config: format!(r"{data}\Flex\agent.toml").into(),
                state_dir: format!(r"{data}\Flex\state").into(),
                socket: WINDOWS_PIPE.into(),
                log_dir: Some(format!(r"{data}\Flex\logs").into()),
            }
        }
    }
}

/// The defaults of the OS this binary runs on.
pub fn current() -> Defaults {
    #[cfg(windows)]
    let program_data = crate::win32::program_data();
    #[cfg(not(windows))]
    let program_data: Option<String> = None;
    defaults(Os::current(), program_data.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_layout() {
        let d = defaults(Os::Linux, Some(r"D:\ignored"));
        assert_eq!(d.config, PathBuf::from("/etc/flex-agent/agent.toml"));
        assert_eq!(d.state_dir, PathBuf::from("/var/lib/flex-agent"));
        assert_eq!(d.socket, PathBuf::from("/run/flex-agent/agent.sock"));
        assert_eq!(
            d.socket.to_str(),
            Some(flex_protocol::socket::DEFAULT_SOCKET)
        );
        assert_eq!(d.log_dir, None);
    }

    #[test]
    fn macos_layout_avoids_run() {
        let d = defaults(Os::MacOs, None);
        assert_eq!(
            d.config,
            PathBuf::from("/Library/Application Support/Flex/agent.toml")
        );
        assert_eq!(
            d.state_dir,
            PathBuf::from("/Library/Application Support/Flex/state")
        );
        assert_eq!(d.socket, PathBuf::from("/var/run/flex-agent/agent.sock"));
        assert!(!d.socket.starts_with("/run"));
    }

    #[test]
    fn windows_layout_under_program_data() {
        let d = defaults(Os::Windows, None);
        assert_eq!(d.config.to_str(), Some(r"C:\ProgramData\Flex\agent.toml"));
        assert_eq!(d.state_dir.to_str(), Some(r"C:\ProgramData\Flex\state"));
        assert_eq!(d.socket.to_str(), Some(r"\\.\pipe\flex-agent"));
        assert_eq!(
            d.log_dir.as_deref().and_then(|p| p.to_str()),
            Some(r"C:\ProgramData\Flex\logs")
        );
        // A relocated ProgramData, with or without a trailing separator.
        for data in [r"D:\Data", r"D:\Data\"] {
            let d = defaults(Os::Windows, Some(data));
            assert_eq!(d.state_dir.to_str(), Some(r"D:\Data\Flex\state"));
        }
        assert_eq!(defaults(Os::Windows, Some("")), defaults(Os::Windows, None));
    }

    #[test]
    fn current_matches_the_build() {
        assert_eq!(current().socket, defaults(Os::current(), None).socket);
        #[cfg(target_os = "linux")]
        assert_eq!(Os::current(), Os::Linux);
        #[cfg(windows)]
        assert_eq!(Os::current(), Os::Windows);
    }
}
