//! What the doctor tells IT to do, per OS, from one table.
//!
//! A fix names the OS's own tools and places: `systemctl` and `journalctl` on
//! Linux, `launchctl` and the launchd log on macOS, `sc` and the log folder on
//! Windows, where the token and config go, and which installer property
//! changes a value. [`fixes`] is a pure function of the OS and its default
//! paths ([`crate::paths::defaults`]), so every OS's texts are tested on any
//! machine; [`current`] is the table of the OS the doctor was built for.

use crate::paths::{Defaults, Os};

/// The fix for each finding the doctor can report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixes {
    /// The config does not parse or has an invalid value.
    pub config: String,
    /// The agent does not answer on its socket or pipe.
    pub start_agent: String,
    /// The state directory (or socket) is missing or wrong.
    pub paths: String,
    /// Not enrolled, and no enrollment token waits.
    pub enroll: String,
    /// Not enrolled, but a token waits: the agent is enrolling, or was refused.
    pub enrolling: String,
    /// The server revoked the device, or no longer knows its credential.
    pub reenroll: String,
    /// This machine's clock is off.
    pub clock: String,
    /// The server's certificate is not trusted.
    pub tls: String,
    /// The server does not answer.
    pub server: String,
    /// One of several servers (`server_urls`) does not answer.
    pub replica: String,
    /// A URL in `server_urls` is not usable.
    pub server_urls: String,
    /// An account has no email mapping.
    pub user_mapping: String,
    /// The user is unknown to the server: `{email}` and `{account}` are filled in.
    pub user_unknown: String,
    /// The agent runs without process detection.
    pub detection_off: String,
    /// Linux: the kernel's process connector cannot be used.
    pub detection_connector: String,
    /// The user's notifier does not run.
    pub notifier: String,
    /// What a check that needs an administrator says to a user.
    pub elevate: String,
    /// What the notifier check says to an account without a desktop.
    pub no_desktop: String,
    /// Where to read why the agent stopped.
    pub agent_log: String,
    /// Where self-enrollment reads the enrollment token.
    pub token_file: String,
    /// Why a user's doctor cannot test the device credential.
    pub credential_owner: String,
    /// Where the service keeps a credential that not even an administrator's
    /// doctor can read (Windows: LocalSystem's Credential Manager).
    pub credential_elsewhere: Option<String>,
    /// The server URL is plain http.
    pub https: String,
    /// The user check failed the way the credential check did.
    pub see_credential: String,
    /// `--user` named no local account.
    pub local_account: String,
    os: Os,
}

impl Fixes {
    /// [`Fixes::user_unknown`] for `email` and `account`.
    pub fn user_unknown(&self, email: &str, account: &str) -> String {
        self.user_unknown
            .replace("{email}", email)
            .replace("{account}", account)
    }

    /// Whether `account` (an administrator when `admin`) has no desktop of
    /// its own to check a notifier in: root on Unix; on Windows LocalSystem
    /// only, as an elevated administrator is a desktop user.
    pub fn has_no_desktop(&self, account: &str, admin: bool) -> bool {
        match self.os {
            Os::Windows => {
                let a = account.to_ascii_uppercase();
                a == "SYSTEM" || a.ends_with("\\SYSTEM") || a == "S-1-5-18"
            }
            Os::Linux | Os::MacOs => admin,
        }
    }
}

/// The same on every OS.
const HTTPS: &str = "use an https:// server_url";
const SEE_CREDENTIAL: &str = "see the credential check above";
const LOCAL_ACCOUNT: &str = "give --user the name of a local account";
/// A replica is a server like the others: where it runs is not this machine's.
const REPLICA: &str = "the agent uses the other servers meanwhile; check that flex-server runs \
                       there and the network path from here to it";

/// The fixes of the OS this doctor was built for, with its default paths.
pub fn current() -> Fixes {
    fixes(Os::current(), &crate::paths::current())
}

/// The fixes for `os`, whose default paths are `d`.
pub fn fixes(os: Os, d: &Defaults) -> Fixes {
    let config = d.config.display().to_string();
    let token_file = beside(&config, os, crate::enroll::TOKEN_FILE_NAME);
    let dropins = beside(&config, os, "agent.d");
    let state = d.state_dir.display().to_string();
    match os {
        Os::Linux => Fixes {
            config: "fix the file and key named above (every key is documented in \
                     /usr/share/doc/flex-agent/agent.toml.example), then: systemctl restart flex-agent"
                .into(),
            start_agent: "start it: systemctl start flex-agent; see why it stopped: journalctl -u \
                          flex-agent -n 50"
                .into(),
            paths: "the unit creates both (StateDirectory=, flex-agent.socket): systemctl restart \
                    flex-agent.socket flex-agent; with a custom state_dir: chmod 0700 it"
                .into(),
            enroll: format!(
                "put an enrollment token in {token_file} (mode 0600; an admin creates one with \
                 flex-admin enroll-token) and run: systemctl restart flex-agent"
            ),
            enrolling: format!(
                "the agent enrolls with the token in {token_file} and retries while the server \
                 cannot be reached; see why it has not yet: journalctl -u flex-agent -n 50 (a \
                 refused token: replace the file, then systemctl restart flex-agent)"
            ),
            reenroll: format!(
                "enroll again: put a new enrollment token in {token_file} and run: flex-agent \
                 enroll --force --config {config} --token-file {token_file}"
            ),
            clock: "enable time synchronisation (timedatectl set-ntp true) on this machine, or fix \
                    the server's clock"
                .into(),
            tls: "set ca_file to the PEM certificate of the CA that signed the server's \
                  certificate (install.sh --ca-file PEM), or fix the server's certificate"
                .into(),
            server: "check server_url, that flex-server runs (systemctl status flex-server on the \
                     server), and DNS, firewall and proxy between here and there"
                .into(),
            replica: REPLICA.into(),
            server_urls: format!("fix server_urls in {config}, then: systemctl restart flex-agent"),
            user_mapping: format!(
                "set [users] email_template (e.g. \"{{user}}@corp.example\") or add the account \
                 to [users.overrides] in {config} or a drop-in"
            ),
            user_unknown: format!(
                "ask the license admin to add the user (flex-admin users add {{email}} --first \
                 NAME --last NAME), or fix the mapping in {config} or {dropins}/*.toml \
                 ([users.overrides] {{account}} = \"EMAIL\")"
            ),
            detection_off: "see journalctl -u flex-agent for why; set detection = \"auto\"".into(),
            detection_connector: "the agent falls back to polling /proc; check that \
                                  flex-agent.service keeps CAP_NET_ADMIN and runs in the host's \
                                  network namespace"
                .into(),
            notifier: "log out and in again, or: systemctl --user enable --now flexctl-notify \
                       (desktops without systemd user sessions use \
                       /etc/xdg/autostart/flexctl-notify.desktop)"
                .into(),
            elevate: "run sudo flexctl doctor".into(),
            no_desktop: "root has no desktop: run flexctl doctor as the desktop user, or sudo \
                         flexctl doctor --user ACCOUNT"
                .into(),
            agent_log: "journalctl -u flex-agent -n 50".into(),
            token_file,
            credential_owner: "the device credential is root's: run sudo flexctl doctor --user \
                               ACCOUNT"
                .into(),
            credential_elsewhere: None,
            https: HTTPS.into(),
            see_credential: SEE_CREDENTIAL.into(),
            local_account: LOCAL_ACCOUNT.into(),
            os,
        },
        Os::MacOs => {
            let restart = "sudo launchctl kickstart -k system/com.example.flex-agent";
            let log = "/Library/Logs/flex-agent.log";
            Fixes {
                config: format!("fix the file and key named above in {config}, then: {restart}"),
                start_agent: format!(
                    "start it: sudo launchctl bootstrap system \
                     /Library/LaunchDaemons/com.example.flex-agent.plist; see why it stopped: \
                     tail -n 50 {log}"
                ),
                paths: format!(
                    "the agent creates both at start: {restart}; with a custom state_dir: chmod \
                     0700 it"
                ),
                enroll: format!(
                    "put an enrollment token in {token_file} (mode 0600; an admin creates one \
                     with flex-admin enroll-token) and run: {restart}"
                ),
                enrolling: format!(
                    "the agent enrolls with the token in {token_file} and retries while the \
                     server cannot be reached; see why it has not yet: tail -n 50 {log} (a \
                     refused token: replace the file, then {restart})"
                ),
                reenroll: format!(
                    "enroll again: put a new enrollment token in {token_file} and run: sudo \
                     flex-agent enroll --force --config '{config}' --token-file '{token_file}'"
                ),
                clock: "turn on \"Set time and date automatically\" (sudo sntp -sS time.apple.com), \
                        or fix the server's clock"
                    .into(),
                tls: format!(
                    "set ca_file in {config} to the PEM certificate of the CA that signed the \
                     server's certificate, or fix the server's certificate"
                ),
                server: "check server_url, that flex-server runs, and DNS, firewall and proxy \
                         between here and there"
                    .into(),
                replica: REPLICA.into(),
                server_urls: format!("fix server_urls in {config}, then: {restart}"),
                user_mapping: format!(
                    "set [users] email_template (e.g. \"{{user}}@corp.example\") or add the \
                     account to [users.overrides] in {config} or a drop-in"
                ),
                user_unknown: format!(
                    "ask the license admin to add the user (flex-admin users add {{email}} \
                     --first NAME --last NAME), or fix the mapping in {config} or \
                     {dropins}/*.toml ([users.overrides] {{account}} = \"EMAIL\")"
                ),
                detection_off: format!("see {log} for why; set detection = \"auto\""),
                detection_connector: String::new(),
                notifier: "log out and in again (the LaunchAgent com.example.flexctl-notify starts \
                           it at login)"
                    .into(),
                elevate: "run sudo flexctl doctor".into(),
                no_desktop: "root has no desktop: run flexctl doctor as the desktop user, or sudo \
                             flexctl doctor --user ACCOUNT"
                    .into(),
                agent_log: format!("tail -n 50 {log}"),
                token_file,
                credential_owner: "the device credential is root's: run sudo flexctl doctor \
                                   --user ACCOUNT"
                    .into(),
                credential_elsewhere: None,
                https: HTTPS.into(),
                see_credential: SEE_CREDENTIAL.into(),
                local_account: LOCAL_ACCOUNT.into(),
                os,
            }
        }
        Os::Windows => {
            let logs = d
                .log_dir
                .as_ref()
                .map_or_else(|| state.clone(), |l| l.display().to_string());
            let restart = "restart the service: sc stop flex-agent, then once sc query \
                           flex-agent says STOPPED, sc start flex-agent";
            let msi = "msiexec /i flex-agent-VERSION-x64.msi /qn";
            let journal = format!("{state}\\{}", crate::journal::FILE_NAME);
            Fixes {
                config: format!(
                    "fix the key named above in {config}, or install again with the right \
                     property ({msi} SERVER_URL=https://... EMAIL_TEMPLATE=...), which replaces \
                     it; then {restart}"
                ),
                start_agent: format!(
                    "start it: sc start flex-agent (sc query flex-agent shows its state and exit \
                     code); see why it stopped in the newest log in {logs}"
                ),
                paths: "the service creates it at start: sc start flex-agent".into(),
                enroll: format!(
                    "give the installer an enrollment token ({msi} ENROLL_TOKEN_FILE=PATH, a file \
                     from flex-admin enroll-token), which places it in {token_file} and restarts \
                     the service"
                ),
                enrolling: format!(
                    "the service enrolls with the token in {token_file} and retries while the \
                     server cannot be reached: see why it has not yet in the newest log in \
                     {logs}; a refused token: give the installer a new one ({msi} \
                     ENROLL_TOKEN_FILE=PATH)"
                ),
                reenroll: format!(
                    "enroll again: sc stop flex-agent, delete {journal} (a revoked device's usage \
                     can no longer be sent), then give the installer a new token ({msi} \
                     ENROLL_TOKEN_FILE=PATH); the service enrolls at its start"
                ),
                clock: "turn on time synchronisation on this machine (w32tm /resync; in a domain \
                        the domain controllers keep time), or fix the server's clock"
                    .into(),
                tls: format!(
                    "set ca_file in {config} to the PEM certificate of the CA that signed the \
                     server's certificate, or fix the server's certificate; then {restart}"
                ),
                server: format!(
                    "check server_url ({msi} SERVER_URL=https://... changes it), that flex-server \
                     runs, and DNS, firewall and proxy between here and there (the service \
                     connects as LocalSystem: a user's proxy settings do not apply)"
                ),
                replica: format!(
                    "{REPLICA} (the service connects as LocalSystem: a user's proxy settings do \
                     not apply)"
                ),
                server_urls: format!("fix server_urls in {config}, then {restart}"),
                user_mapping: format!(
                    "set [users] email_template (e.g. \"{{user}}@corp.example\"; the installer's \
                     EMAIL_TEMPLATE) or add the account to [users.overrides] in {config} or a \
                     drop-in; then {restart}"
                ),
                user_unknown: format!(
                    "ask the license admin to add the user (flex-admin users add {{email}} \
                     --first NAME --last NAME), or fix the mapping in {config} or \
                     {dropins}\\*.toml ([users.overrides] '{{account}}' = \"EMAIL\")"
                ),
                detection_off: format!(
                    "see why in the newest log in {logs}; set detection = \"auto\""
                ),
                detection_connector: String::new(),
                notifier: "log off and on again (it starts at logon: HKLM\\SOFTWARE\\Microsoft\\\
                           Windows\\CurrentVersion\\Run, value FlexNotify), or start it: \
                           \"C:\\Program Files\\Flex\\flexctl.exe\" notify"
                    .into(),
                elevate: "run flexctl doctor from an elevated prompt (Run as administrator)".into(),
                no_desktop: "LocalSystem has no desktop: run flexctl doctor as the desktop user, \
                             or flexctl doctor --user ACCOUNT from an elevated prompt"
                    .into(),
                agent_log: format!("the newest log in {logs}"),
                token_file,
                credential_owner: "the device credential is the service's: run flexctl doctor \
                                   from an elevated prompt (Run as administrator)"
                    .into(),
                credential_elsewhere: Some(
                    "in LocalSystem's Credential Manager, which only the service reads".into(),
                ),
                https: HTTPS.into(),
                see_credential: SEE_CREDENTIAL.into(),
                local_account: LOCAL_ACCOUNT.into(),
                os,
            }
        }
    }
}

/// The path of `name` in the folder of the file at `path`, with `os`'s
/// separator: built as text, as [`crate::paths::defaults`] does, so that
/// every OS's table is built on any machine.
fn beside(path: &str, os: Os, name: &str) -> String {
    let sep = if os == Os::Windows { '\\' } else { '/' };
    match path.rsplit_once(sep) {
        Some((dir, _)) => format!("{dir}{sep}{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::defaults;

    /// The texts of `os`, with its default paths.
    fn of(os: Os) -> Fixes {
        fixes(os, &defaults(os, None))
    }

    /// Every text of a table.
    fn texts(f: &Fixes) -> Vec<(&'static str, &str)> {
        vec![
            ("config", &f.config),
            ("start_agent", &f.start_agent),
            ("paths", &f.paths),
            ("enroll", &f.enroll),
            ("enrolling", &f.enrolling),
            ("reenroll", &f.reenroll),
            ("clock", &f.clock),
            ("tls", &f.tls),
            ("server", &f.server),
            ("replica", &f.replica),
            ("server_urls", &f.server_urls),
            ("user_mapping", &f.user_mapping),
            ("user_unknown", &f.user_unknown),
            ("detection_off", &f.detection_off),
            ("notifier", &f.notifier),
            ("elevate", &f.elevate),
            ("no_desktop", &f.no_desktop),
            ("agent_log", &f.agent_log),
            ("credential_owner", &f.credential_owner),
        ]
    }

    /// Issue 18, item 5: on Windows no fix sends IT to Linux tools or paths.
    #[test]
    fn windows_fixes_name_windows_tools_and_places() {
        let f = of(Os::Windows);
        for (name, text) in texts(&f) {
            for linux in [
                "systemctl",
                "journalctl",
                "/etc/",
                "/usr/",
                "sudo",
                "chmod",
                "0600",
                "root",
            ] {
                assert!(!text.contains(linux), "{name} says '{linux}': {text}");
            }
        }
        assert_eq!(f.token_file, r"C:\ProgramData\Flex\enroll-token");
        assert!(
            f.start_agent.contains("sc start flex-agent"),
            "{}",
            f.start_agent
        );
        assert!(
            f.start_agent.contains("sc query flex-agent"),
            "{}",
            f.start_agent
        );
        assert!(
            f.start_agent.contains(r"C:\ProgramData\Flex\logs"),
            "{}",
            f.start_agent
        );
        assert!(
            f.agent_log.contains(r"C:\ProgramData\Flex\logs"),
            "{}",
            f.agent_log
        );
        assert!(f.enroll.contains("ENROLL_TOKEN_FILE=") && f.enroll.contains("msiexec"));
        assert!(
            f.enroll.contains(r"C:\ProgramData\Flex\enroll-token"),
            "{}",
            f.enroll
        );
        assert!(
            f.enrolling.contains(r"C:\ProgramData\Flex\logs"),
            "{}",
            f.enrolling
        );
        assert!(f.server.contains("SERVER_URL="), "{}", f.server);
        assert!(
            f.config.contains(r"C:\ProgramData\Flex\agent.toml"),
            "{}",
            f.config
        );
        assert!(
            f.config.contains("STOPPED"),
            "sc stop returns before the stop: {}",
            f.config
        );
        assert!(f
            .reenroll
            .contains(r"C:\ProgramData\Flex\state\journal.sqlite3"));
        assert!(f.notifier.contains("flexctl.exe"), "{}", f.notifier);
        assert!(f.elevate.contains("elevated"), "{}", f.elevate);
        let unknown = f.user_unknown("alice@corp.example", r"CORP\alice");
        assert!(unknown.contains(r"'CORP\alice'") && unknown.contains("alice@corp.example"));
        assert!(
            unknown.contains(r"C:\ProgramData\Flex\agent.d\*.toml"),
            "{unknown}"
        );
        // A relocated ProgramData moves every path.
        let moved = fixes(Os::Windows, &defaults(Os::Windows, Some(r"D:\Data")));
        assert_eq!(moved.token_file, r"D:\Data\Flex\enroll-token");
        assert!(moved.start_agent.contains(r"D:\Data\Flex\logs"));
    }

    #[test]
    fn linux_fixes_name_systemd_and_etc() {
        let f = of(Os::Linux);
        assert_eq!(f.token_file, "/etc/flex-agent/enroll-token");
        assert!(f.start_agent.contains("systemctl start flex-agent"));
        assert!(f.enroll.contains("/etc/flex-agent/enroll-token"));
        assert!(f.enrolling.contains("journalctl -u flex-agent"));
        assert!(f.clock.contains("timedatectl"));
        assert!(f.reenroll.contains("--config /etc/flex-agent/agent.toml"));
        assert!(f
            .user_unknown("a@b.c", "alice")
            .contains("/etc/flex-agent/agent.d/*.toml"));
        for (name, text) in texts(&f) {
            for other in ["msiexec", "sc start", r"C:\", "launchctl"] {
                assert!(!text.contains(other), "{name} says '{other}': {text}");
            }
        }
    }

    #[test]
    fn macos_fixes_name_launchd_and_library() {
        let f = of(Os::MacOs);
        assert_eq!(
            f.token_file,
            "/Library/Application Support/Flex/enroll-token"
        );
        for (name, text) in texts(&f) {
            for other in [
                "systemctl",
                "journalctl",
                "/etc/flex-agent",
                "msiexec",
                "sc start",
                r"C:\",
            ] {
                assert!(!text.contains(other), "{name} says '{other}': {text}");
            }
        }
        assert!(f.start_agent.contains("launchctl"), "{}", f.start_agent);
    }

    /// Issue 18, item 5: an elevated administrator on Windows is a desktop
    /// user whose notifier is checked; root and LocalSystem have no desktop.
    #[test]
    fn only_root_and_local_system_have_no_desktop() {
        let win = of(Os::Windows);
        assert!(!win.has_no_desktop(r"CORP\it-admin", true));
        assert!(win.has_no_desktop(r"NT AUTHORITY\SYSTEM", true));
        assert!(!of(Os::Linux).has_no_desktop("alice", false));
        assert!(of(Os::Linux).has_no_desktop("root", true));
        assert!(of(Os::MacOs).has_no_desktop("root", true));
    }
}
