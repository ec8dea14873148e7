//! The agent's TOML configuration (`flex-agent --config FILE`).
//!
//! ```toml
//! server_url = "https://flex.example.com"
//! ca_file = "/etc/flex-agent/ca.pem"      # optional; else the system roots
//! state_dir = "/var/lib/flex-agent"
//! socket_path = "/run/flex-agent/agent.sock"
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

use flex_protocol::Email;
use serde::Deserialize;

/// Placeholder in `email_template` replaced by the local account name.
pub const USER_PLACEHOLDER: &str = "{user}";

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
    #[error("account '{account}' maps to no valid email through [users] email_template: {source}; add it to [users.overrides]")]
    BadEmail {
        account: String,
        #[source]
        source: flex_protocol::EmailError,
    },
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
    /// Account name → email, for accounts the template gets wrong. Emails are
    /// normalised (trimmed, lowercased) as they are read, like everywhere else.
    #[serde(default)]
    pub overrides: BTreeMap<String, Email>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/flex-agent")
}

fn default_socket_path() -> PathBuf {
    PathBuf::from(flex_protocol::socket::DEFAULT_SOCKET)
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
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
            if !t.contains(USER_PLACEHOLDER)
                || Email::parse(&t.replace(USER_PLACEHOLDER, "x")).is_err()
            {
                return Err(invalid(
                    "users.email_template",
                    t,
                    "expected an email containing {user}, like \"{user}@example.com\"",
                ));
            }
        }
        Ok(())
    }

    /// The email the server knows local account `account` by: its override, else
    /// the template with `{user}` replaced.
    pub fn email_for(&self, account: &str) -> Result<Email, ConfigError> {
        if let Some(email) = self.users.overrides.get(account) {
            return Ok(email.clone());
        }
        match &self.users.email_template {
            Some(t) => Email::parse(&t.replace(USER_PLACEHOLDER, account)).map_err(|source| {
                ConfigError::BadEmail {
                    account: account.to_string(),
                    source,
                }
            }),
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

    const FULL: &str = r#"
server_url = "https://flex.example.com"
ca_file = "/etc/flex-agent/ca.pem"
state_dir = "/var/lib/flex-agent"
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
        let c = Config::parse(FULL).unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(250));
        assert!(!c.enforce);
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/flex-agent/ca.pem")));
        assert_eq!(c.email_for("alice").unwrap(), "alice.smith@corp.com");
        assert_eq!(c.email_for("bob").unwrap(), "bob@example.com");
    }

    #[test]
    fn emails_are_normalised_where_they_are_read() {
        // Regression: an override written in mixed case was charged by the
        // server (which lowercases) and then refused by the agent, whose lease
        // check compared it exactly.
        let c = Config::parse(
            "server_url = \"https://s\"\n[users]\nemail_template = \"{user}@Example.COM\"\n\
             [users.overrides]\nroot = \" Root@Example.com \"\n",
        )
        .unwrap();
        assert_eq!(c.email_for("root").unwrap(), "root@example.com");
        assert_eq!(c.email_for("Bob").unwrap(), "bob@example.com");
        let err = c.email_for("bad name").unwrap_err().to_string();
        assert!(err.contains("'bad name'"), "{err}");
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse("server_url = \"https://s\"\n").unwrap();
        assert!(c.enforce);
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.socket_path, PathBuf::from("/run/flex-agent/agent.sock"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/flex-agent"));
        let err = c.email_for("bob").unwrap_err().to_string();
        assert!(
            err.contains("'bob'") && err.contains("email_template"),
            "{err}"
        );
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
