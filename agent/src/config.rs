//! The agent's TOML configuration (`flex-agent --config FILE`).
//!
//! ```toml
//! server_url = "https://flex.example.com"
//! ca_file = "/etc/flex-agent/ca.pem"      # optional; else the system roots
//! state_dir = "/var/lib/flex-agent"            # default: see crate::paths
//! socket_path = "/run/flex-agent/agent.sock"   # a named pipe on Windows
//! poll_interval = "1s"
//! enforce = true
//! credential_store = "auto"               # or "keyring", "file"
//! detection = "auto"                      # or "proc-connector", "polling"
//!
//! [users]
//! email_template = "{user}@example.com"
//!
//! [users.overrides]
//! alice = "alice.smith@corp.com"
//! ```
//!
//! Unknown keys are errors, so a typo is caught at start rather than silently
//! ignored. The rate sheet and the policy come from the server, not from here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Placeholder in `email_template` replaced by the local account name.
pub const USER_PLACEHOLDER: &str = "{user}";

/// Placeholder in `email_template` replaced by the account's Windows domain
/// (`CORP` of `CORP\alice`; empty for accounts without one).
pub const DOMAIN_PLACEHOLDER: &str = "{domain}";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key '{key}' has invalid value '{value}': {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("account '{account}' has no email: set [users] email_template or add it to [users.overrides]")]
    NoEmail { account: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server_url: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_socket_path")]
    pub socket_path: PathBuf,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Close products that are not licensed (denied, offline too long).
    #[serde(default = "default_true")]
    pub enforce: bool,
    /// Where the device token lives: `auto`, `keyring` or `file`.
    #[serde(default)]
    pub credential_store: crate::credentials::StoreChoice,
    /// Process detection: `auto` (the kernel's process connector where it can be
    /// opened, else polling), `proc-connector` or `polling`.
    #[serde(default)]
    pub detection: Detection,
    #[serde(default)]
    pub users: Users,
}

/// The `detection` config key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detection {
    #[default]
    Auto,
    ProcConnector,
    Polling,
}

impl Detection {
    pub fn source_choice(self) -> crate::watcher::SourceChoice {
        use crate::watcher::SourceChoice;
        match self {
            Detection::Auto => SourceChoice::Auto,
            Detection::ProcConnector => SourceChoice::ProcConnector,
            Detection::Polling => SourceChoice::Polling,
        }
    }
}

/// How local accounts map to the emails the server knows users by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// `{user}` is replaced by the account name, e.g. `"{user}@example.com"`.
    #[serde(default)]
    pub email_template: Option<String>,
    /// Account name → email, for accounts the template gets wrong.
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
}

fn default_state_dir() -> PathBuf {
    crate::paths::current().state_dir
}

fn default_socket_path() -> PathBuf {
    crate::paths::current().socket
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}

/// A deliberately small check: something@something, no spaces.
fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text (errors name the key and the value).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.message().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: &str, reason| ConfigError::Invalid {
            key,
            value: value.to_string(),
            reason,
        };
        let url = self.server_url.as_str();
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 9 {
            return Err(invalid(
                "server_url",
                url,
                "expected an http:// or https:// URL",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(invalid("poll_interval", "0s", "must be longer than zero"));
        }
        if !self.state_dir.is_absolute() {
            let dir = self.state_dir.display().to_string();
            return Err(invalid("state_dir", &dir, "must be an absolute path"));
        }
        if let Some(t) = &self.users.email_template {
            let sample = t
                .replace(USER_PLACEHOLDER, "x")
                .replace(DOMAIN_PLACEHOLDER, "d");
            if !t.contains(USER_PLACEHOLDER) || !looks_like_email(&sample) {
                return Err(invalid(
                    "users.email_template",
                    t,
                    "expected an email containing {user}, like \"{user}@example.com\"",
                ));
            }
        }
        for email in self.users.overrides.values() {
            if !looks_like_email(email) {
                return Err(invalid("users.overrides", email, "not an email address"));
            }
        }
        Ok(())
    }

    /// The email the server knows local account `account` by: its override, else
    /// the template with `{user}` and `{domain}` replaced. A Windows account
    /// `DOMAIN\user` splits into both; its override may name it either way.
    pub fn email_for(&self, account: &str) -> Result<String, ConfigError> {
        let (domain, user) = account.rsplit_once('\\').unwrap_or(("", account));
        let overridden = self.users.overrides.get(account).or_else(|| {
            self.users
                .overrides
                .iter()
                .find(|(k, _)| {
                    k.eq_ignore_ascii_case(account)
                        || (!domain.is_empty() && k.eq_ignore_ascii_case(user))
                })
                .map(|(_, v)| v)
        });
        if let Some(email) = overridden {
            return Ok(email.clone());
        }
        match &self.users.email_template {
            Some(t) => Ok(t
                .replace(USER_PLACEHOLDER, user)
                .replace(DOMAIN_PLACEHOLDER, domain)),
            None => Err(ConfigError::NoEmail {
                account: account.to_string(),
            }),
        }
    }

    /// Where the journal lives.
    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join(crate::journal::FILE_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An absolute state directory of the OS the tests run on.
    #[cfg(windows)]
    const STATE: &str = r"C:\ProgramData\Flex\state";
    #[cfg(not(windows))]
    const STATE: &str = "/var/lib/flex-agent";

    const FULL: &str = r#"
server_url = "https://flex.example.com"
ca_file = "/etc/flex-agent/ca.pem"
socket_path = "/run/flex-agent/agent.sock"
poll_interval = "250ms"
enforce = false

[users]
email_template = "{user}@example.com"

[users.overrides]
alice = "alice.smith@corp.com"
"#;

    #[test]
    fn full_config_parses() {
        let c = Config::parse(&format!("state_dir = '{STATE}'\n{FULL}")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from(STATE));
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert!(!c.enforce);
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/flex-agent/ca.pem")));
        assert_eq!(c.email_for("alice").unwrap(), "alice.smith@corp.com");
        assert_eq!(c.email_for("bob").unwrap(), "bob@example.com");
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse("server_url = \"https://s\"\n").unwrap();
        assert!(c.enforce);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.socket_path, crate::paths::current().socket);
        assert_eq!(c.state_dir, crate::paths::current().state_dir);
        let err = c.email_for("bob").unwrap_err().to_string();
        assert!(
            err.contains("'bob'") && err.contains("email_template"),
            "{err}"
        );
    }

    #[test]
    fn windows_accounts_split_into_user_and_domain() {
        let c = Config::parse(
            "server_url = \"https://s\"\n[users]\nemail_template = \"{user}@{domain}.corp.com\"\n\
             [users.overrides]\n\"CORP\\\\carol\" = \"carol.x@corp.com\"\nDave = \"dave.y@corp.com\"\n",
        )
        .unwrap();
        assert_eq!(c.email_for(r"CORP\alice").unwrap(), "alice@CORP.corp.com");
        assert_eq!(c.email_for("bob").unwrap(), "bob@.corp.com");
        assert_eq!(c.email_for(r"corp\carol").unwrap(), "carol.x@corp.com");
        assert_eq!(c.email_for(r"CORP\dave").unwrap(), "dave.y@corp.com");
        let err = Config::parse(
            "server_url = \"https://s\"\n[users]\nemail_template = \"{domain}@x.com\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("{user}"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("server_url = \"https://s\"\nenforced = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("enforced"), "{err}");
        let err = Config::parse("server_url = \"https://s\"\n[users]\ntemplate = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("template"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("server_url = \"flex.example.com\"", "server_url"),
            (
                "server_url = \"https://s\"\npoll_interval = \"soon\"",
                "soon",
            ),
            (
                "server_url = \"https://s\"\npoll_interval = \"0s\"",
                "poll_interval",
            ),
            (
                "server_url = \"https://s\"\nstate_dir = \"state\"",
                "state_dir",
            ),
            (
                "server_url = \"https://s\"\n[users]\nemail_template = \"example.com\"",
                "users.email_template",
            ),
            (
                "server_url = \"https://s\"\n[users.overrides]\nbob = \"bob at corp\"",
                "bob at corp",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.starts_with(char::is_lowercase), "lowercase: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("agent.toml"), "{err}");
        std::fs::write(&path, "server_url = 3\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("invalid"),
            "{err}"
        );
    }
}
