//! The agent's TOML configuration (`flex-agent --config FILE`).
//!
//! ```toml
//! server_url = "https://flex.corp.example:8443"
//! # or, with several flex-server replicas, tried in this order:
//! # server_urls = ["https://flex-a.corp.example:8443", "https://flex-b.corp.example:8443"]
//! ca_file = "/etc/flex-agent/ca.pem"      # optional; else the system roots
//! state_dir = "/var/lib/flex-agent"            # default: see crate::paths
//! socket_path = "/run/flex-agent/agent.sock"   # a named pipe on Windows
//! poll_interval = "1s"
//! enforce = true
//! credential_store = "file"               # or "auto", "keyring"
//! detection = "auto"                      # or "proc-connector", "polling"
//! product_dirs = ["/opt", "/usr/local"]   # where products are installed (Linux)
//!
//! [users]
//! email_template = "{user}@corp.example"
//!
//! [users.overrides]
//! alice = "alice.smith@corp.example"
//! ```
//!
//! The file is read with its drop-ins: every `*.toml` in the directory named like
//! the file with `.d` for `.toml` (`/etc/flex-agent/agent.d/` for
//! `/etc/flex-agent/agent.toml`), in name order, each overriding the keys it sets
//! and adding to tables such as `[users.overrides]`. A package ships a small main
//! file and never touches the drop-ins, so a site's settings survive upgrades.
//!
//! Unknown keys are errors naming the file, so a typo is caught at start rather
//! than silently ignored. The rate sheet and the policy come from the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flex_protocol::Email;
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
    #[error("cannot list the config drop-ins in {dir}: {source}")]
    DropIns {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "server_url is not set: put server_url = \"https://SERVER:8443\" in {main} or in a \
         drop-in such as {dropin}"
    )]
    NoServer { main: PathBuf, dropin: PathBuf },
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
    #[error(
        "account '{account}' is in domain {domain}, and [users] email_template has no {{domain}}: \
         its user name alone could be another domain's user. Put {{domain}} in the template, \
         set [users] domain = \"{domain}\" if every account of that domain maps by its name, \
         or add '{account}' to [users.overrides]"
    )]
    OtherDomain { account: String, domain: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Required; checked once every file is merged ([`ConfigError::NoServer`]).
    /// With `server_urls`, the first of them.
    #[serde(default)]
    pub server_url: String,
    /// Several replicas of the server, tried in order; the agent stays with
    /// the one that answers (see [`crate::client`]).
    #[serde(default)]
    pub server_urls: Vec<String>,
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
    /// Where the device token lives: `file` (the default on Linux, where the
    /// system service has no desktop keyring), `auto` or `keyring`.
    #[serde(default)]
    pub credential_store: crate::credentials::StoreChoice,
    /// Process detection: `auto` (Linux: the kernel's process connector where it
    /// can be opened, else polling; Windows: polling woken by ETW process events
    /// where a session can be opened), `proc-connector` or `polling`.
    #[serde(default)]
    pub detection: Detection,
    /// Where products are installed: indexed at start so that a product is
    /// recognised by its file (device and inode, content) under any name.
    #[serde(default = "default_product_dirs")]
    pub product_dirs: Vec<PathBuf>,
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
    /// Windows: another domain whose accounts a template without `{domain}`
    /// maps by user name alone (`CORP` for `CORP\alice`). Local accounts and
    /// those of the domain the computer is joined to always do; accounts of
    /// any other domain (a trusted forest) are refused rather than taken for a
    /// same-named user of this one.
    #[serde(default)]
    pub domain: Option<String>,
}

fn default_state_dir() -> PathBuf {
    crate::paths::current().state_dir
}

fn default_socket_path() -> PathBuf {
    crate::paths::current().socket
}

fn default_product_dirs() -> Vec<PathBuf> {
    if cfg!(target_os = "linux") {
        vec!["/opt".into(), "/usr/local".into()]
    } else {
        Vec::new()
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_true() -> bool {
    true
}

/// The domains whose accounts a template without `{domain}` maps by name:
/// on Windows the computer's own (its local accounts) and the one it is
/// joined to; elsewhere accounts have no domain.
fn home_domains() -> Vec<String> {
    #[cfg(windows)]
    {
        let mut home: Vec<String> = std::env::var("COMPUTERNAME")
            .ok()
            .filter(|n| !n.is_empty())
            .into_iter()
            .collect();
        home.extend(crate::win32::joined_domain());
        home
    }
    #[cfg(not(windows))]
    Vec::new()
}

/// The drop-in directory of config file `path`: `agent.toml` → `agent.d`.
pub fn dropin_dir(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "agent".into());
    path.with_file_name(format!("{stem}.d"))
}

/// The files that make up the config at `path`, in the order they apply: the
/// file itself, then its drop-ins (`*.toml`, by name). A missing drop-in
/// directory is no drop-ins.
pub fn sources(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = dropin_dir(path);
    let mut dropins = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ConfigError::DropIns {
                dir: dir.clone(),
                source,
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(ConfigError::DropIns { dir, source }),
    };
    // Editor backups and disabled files (`10-site.toml.off`) do not count.
    dropins.retain(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file());
    dropins.sort();
    Ok(std::iter::once(path.to_path_buf()).chain(dropins).collect())
}

/// Merges `over` into `base`: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parses one file's text; each file must be a valid config on its own (every
/// key known, every value of the right type), so errors name the file.
fn parse_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.message().into()))?;
    Config::deserialize(table.clone()).map_err(|e| parse_err(e.message().into()))?;
    Ok(table)
}

impl Config {
    /// Reads the config file at `path` with its drop-ins and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_from(path, None)
    }

    /// [`Config::load`] with `main` as the text of the file at `path`: an edit
    /// checked, drop-ins and all, before it is written.
    pub fn load_with(path: &Path, main: &str) -> Result<Config, ConfigError> {
        Self::load_from(path, Some(main))
    }

    fn load_from(path: &Path, main: Option<&str>) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        for file in sources(path)? {
            let text = match main.filter(|_| file == path) {
                Some(text) => text.to_string(),
                None => std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                    path: file.clone(),
                    source,
                })?,
            };
            merge(&mut merged, parse_table(&file, &text)?);
        }
        let mut config = Config::deserialize(merged).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        config.settle_servers()?;
        if config.server_url.is_empty() {
            return Err(ConfigError::NoServer {
                main: path.to_path_buf(),
                dropin: dropin_dir(path).join("50-site.toml"),
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates config text (errors name the key and the value).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.message().to_string(),
        })?;
        config.settle_servers()?;
        config.validate()?;
        Ok(config)
    }

    /// `server_urls`, when given, names the servers and the first becomes
    /// `server_url`; setting both is refused rather than guessed at.
    fn settle_servers(&mut self) -> Result<(), ConfigError> {
        if self.server_urls.is_empty() {
            return Ok(());
        }
        if !self.server_url.is_empty() {
            return Err(ConfigError::Invalid {
                key: "server_urls",
                value: self.server_urls.join(", "),
                reason: "set either server_url (one server) or server_urls (replicas, in the \
                         order to try them), not both",
            });
        }
        self.server_url = self.server_urls[0].clone();
        Ok(())
    }

    /// Every server to try, in order: `server_urls`, or the one `server_url`.
    pub fn servers(&self) -> Vec<String> {
        if self.server_urls.is_empty() {
            vec![self.server_url.clone()]
        } else {
            self.server_urls.clone()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: &str, reason| ConfigError::Invalid {
            key,
            value: value.to_string(),
            reason,
        };
        let key = if self.server_urls.is_empty() {
            "server_url"
        } else {
            "server_urls"
        };
        for url in self.servers() {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 9 {
                return Err(invalid(key, &url, "expected an http:// or https:// URL"));
            }
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
            if !t.contains(USER_PLACEHOLDER) || Email::parse(&sample).is_err() {
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
    /// the template with `{user}` and `{domain}` replaced. A Windows account
    /// `DOMAIN\user` splits into both; its override may name it either way.
    pub fn email_for(&self, account: &str) -> Result<Email, ConfigError> {
        self.email_for_on(account, &home_domains())
    }

    /// [`email_for`](Self::email_for) on a computer whose own domains (its
    /// name for local accounts, the domain it is joined to) are `home`.
    pub fn email_for_on(&self, account: &str, home: &[String]) -> Result<Email, ConfigError> {
        let (domain, user) = account.rsplit_once('\\').unwrap_or(("", account));
        let same = |d: &str| d.eq_ignore_ascii_case(domain);
        // An account's user name alone names it only outside any domain, in
        // the computer's own domains, or in the one the config names.
        let by_name = domain.is_empty()
            || home.iter().any(|d| same(d))
            || self.users.domain.as_deref().is_some_and(same);
        let overridden = self.users.overrides.get(account).or_else(|| {
            self.users
                .overrides
                .iter()
                .find(|(k, _)| {
                    k.eq_ignore_ascii_case(account) || (by_name && k.eq_ignore_ascii_case(user))
                })
                .map(|(_, v)| v)
        });
        if let Some(email) = overridden {
            return Ok(email.clone());
        }
        match &self.users.email_template {
            Some(t) if !by_name && !t.contains(DOMAIN_PLACEHOLDER) => {
                Err(ConfigError::OtherDomain {
                    account: account.to_string(),
                    domain: domain.to_string(),
                })
            }
            Some(t) => Email::parse(
                &t.replace(USER_PLACEHOLDER, user)
                    .replace(DOMAIN_PLACEHOLDER, domain),
            )
            .map_err(|source| ConfigError::BadEmail {
                account: account.to_string(),
                source,
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
        assert_eq!(c.socket_path, crate::paths::current().socket);
        assert_eq!(c.state_dir, crate::paths::current().state_dir);
        let err = c.email_for("bob").unwrap_err().to_string();
        assert!(
            err.contains("'bob'") && err.contains("email_template"),
            "{err}"
        );
    }

    #[test]
    fn the_default_template_maps_two_domains_users_to_one_person() {
        // Regression (issue 14, defect 9): with `{user}@corp.example`, CORP\alice
        // and OTHER\alice were both charged as alice@corp.example.
        let c = Config::parse(
            "server_url = \"https://s\"\n[users]\nemail_template = \"{user}@corp.example\"\n\
             domain = \"CORP\"\n[users.overrides]\nbob = \"robert@corp.example\"\n",
        )
        .unwrap();
        assert_eq!(c.email_for(r"CORP\alice").unwrap(), "alice@corp.example");
        assert_eq!(c.email_for(r"corp\bob").unwrap(), "robert@corp.example");
        let err = c.email_for(r"OTHER\alice").unwrap_err();
        assert!(
            matches!(&err, ConfigError::OtherDomain { domain, .. } if domain == "OTHER"),
            "{err}"
        );
        assert!(err.to_string().contains("{domain}"), "{err}");
        // Nor does a bare-name override reach into another domain.
        assert!(c.email_for(r"OTHER\bob").is_err());
        // Local accounts (the computer's own name) map by name.
        let home = ["ws042".to_string(), "CORPX".to_string()];
        assert_eq!(
            c.email_for_on(r"WS042\alice", &home).unwrap(),
            "alice@corp.example"
        );
        // Without a configured domain: local accounts and those of the domain
        // the computer is joined to.
        let c = Config::parse(
            "server_url = \"https://s\"\n[users]\nemail_template = \"{user}@corp.example\"\n",
        )
        .unwrap();
        assert!(c.email_for_on(r"CORPX\alice", &home).is_ok());
        assert!(c.email_for_on(r"WS042\alice", &home).is_ok());
        assert!(c.email_for_on(r"OTHER\alice", &home).is_err());
        assert!(c.email_for("alice").is_ok());
    }

    #[test]
    fn windows_accounts_split_into_user_and_domain() {
        let c = Config::parse(
            "server_url = \"https://s\"\n[users]\nemail_template = \"{user}@{domain}.corp.com\"\n\
             [users.overrides]\n\"CORP\\\\carol\" = \"carol.x@corp.com\"\nDave = \"dave.y@corp.com\"\n",
        )
        .unwrap();
        assert_eq!(c.email_for(r"CORP\alice").unwrap(), "alice@corp.corp.com");
        // No domain to put in the template: an error naming the account.
        let err = c.email_for("bob").unwrap_err().to_string();
        assert!(err.contains("'bob'"), "{err}");
        assert_eq!(c.email_for(r"corp\carol").unwrap(), "carol.x@corp.com");
        // A bare-name override does not reach into a domain it was not
        // given for: the template maps CORP\dave.
        assert_eq!(c.email_for(r"CORP\dave").unwrap(), "dave@corp.corp.com");
        assert_eq!(c.email_for("dave").unwrap(), "dave.y@corp.com");
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
    fn dropins_override_and_extend_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("agent.toml");
        std::fs::write(&main, "# only comments: everything comes from drop-ins\n").unwrap();
        let d = dir.path().join("agent.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("10-server.toml"),
            "server_url = \"https://a\"\nenforce = false\n[users]\nemail_template = \"{user}@corp.example\"\n[users.overrides]\nann = \"ann@corp.example\"\n",
        )
        .unwrap();
        std::fs::write(
            d.join("20-site.toml"),
            "server_url = \"https://b\"\n[users.overrides]\nbob = \"robert@corp.example\"\n",
        )
        .unwrap();
        // Not *.toml: ignored.
        std::fs::write(d.join("30-off.toml.disabled"), "garbage = [").unwrap();
        let c = Config::load(&main).unwrap();
        assert_eq!(c.server_url, "https://b");
        assert!(!c.enforce);
        assert_eq!(c.email_for("ann").unwrap(), "ann@corp.example");
        assert_eq!(c.email_for("bob").unwrap(), "robert@corp.example");
        assert_eq!(c.email_for("cy").unwrap(), "cy@corp.example");
        assert_eq!(
            sources(&main).unwrap(),
            vec![
                main.clone(),
                d.join("10-server.toml"),
                d.join("20-site.toml")
            ]
        );
    }

    #[test]
    fn a_bad_dropin_is_named_and_a_missing_server_says_where_to_put_it() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("agent.toml");
        std::fs::write(&main, "enforce = true\n").unwrap();
        let err = Config::load(&main).unwrap_err().to_string();
        assert!(
            err.contains("server_url is not set")
                && err.contains(&dropin_dir(&main).join("50-site.toml").display().to_string()),
            "{err}"
        );
        let d = dir.path().join("agent.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("10-x.toml"), "server_ulr = \"https://a\"\n").unwrap();
        let err = Config::load(&main).unwrap_err().to_string();
        assert!(
            err.contains("10-x.toml") && err.contains("server_ulr"),
            "{err}"
        );
    }

    #[test]
    fn server_urls_list_replicas_in_order_and_server_url_still_works() {
        let c = Config::parse("server_urls = [\"https://a:8443\", \"https://b:8443\"]\n").unwrap();
        assert_eq!(c.servers(), vec!["https://a:8443", "https://b:8443"]);
        assert_eq!(c.server_url, "https://a:8443", "the first is the primary");
        let c = Config::parse("server_url = \"https://a\"\n").unwrap();
        assert_eq!(c.servers(), vec!["https://a"]);
        let err = Config::parse("server_url = \"https://a\"\nserver_urls = [\"https://b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        let err = Config::parse("server_urls = [\"https://a\", \"b.example\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server_urls") && err.contains("b.example"),
            "{err}"
        );
    }

    #[test]
    fn the_system_service_keeps_its_credential_in_a_file_by_default() {
        let c = Config::parse("server_url = \"https://s\"\n").unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(c.credential_store, crate::credentials::StoreChoice::File);
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
