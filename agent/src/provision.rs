//! The install's values applied to this machine: `flex-agent configure`.
//!
//! IT deploys the agent with three values (the MSI's `SERVER_URL`,
//! `ENROLL_TOKEN_FILE` and `EMAIL_TEMPLATE`). The MSI runs `flex-agent.exe
//! configure` with the values it was given, as LocalSystem, through its custom
//! action DLL (`install/windows/msi-action`), which copies what it prints into
//! the install log; IT may run it by hand on any OS. A value given wins over
//! what is kept: `server_url` (in place of a list of replicas, `server_urls`)
//! and `[users] email_template` are set in the config file (written if
//! missing; its other keys and comments stay), and the
//! token file's token replaces the one waiting in `enroll-token` beside the
//! config, where self-enrollment ([`crate::enroll::self_enroll`]) reads it. A
//! value not given changes nothing, so an upgrade or a repair without
//! properties keeps what IT edited.
//!
//! Everything is checked before anything is written, so a bad value changes
//! nothing and fails the install with the reason: a server URL without a
//! scheme, a token file that cannot be read, a drop-in that would override the
//! given value, and, on a workstation that is not enrolled, no server URL or
//! no token at all. The server is not contacted: an offline machine (an image
//! being built) installs, and enrolls at the service's start once the server
//! is in reach.

use std::path::{Path, PathBuf};

use crate::config::{self, Config, ConfigError};
use crate::credentials::CredentialError;
use crate::enroll::{self, EnrollError};
use crate::paths::Defaults;

/// What the installer was given; `None` (or blank) is "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallValues {
    pub server_url: Option<String>,
    /// A file holding an enrollment token (often on a share).
    pub enroll_token_file: Option<PathBuf>,
    pub email_template: Option<String>,
}

impl InstallValues {
    /// The values actually given: the MSI passes every property, blank when
    /// it was not set.
    fn given(&self) -> InstallValues {
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        InstallValues {
            server_url: text(&self.server_url),
            enroll_token_file: self
                .enroll_token_file
                .as_ref()
                .filter(|p| !p.as_os_str().to_string_lossy().trim().is_empty())
                .cloned(),
            email_template: text(&self.email_template),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "there is no config file at {} and no server URL was given: give SERVER_URL=https://... \
         to the installer (flex-agent configure --server-url URL)",
        path.display()
    )]
    NoServer { path: PathBuf },
    #[error(
        "this workstation is not enrolled and no enrollment token waits in {}: give \
         ENROLL_TOKEN_FILE=PATH to the installer (flex-agent configure --token-file PATH), a \
         file holding a token from flex-admin enroll-token",
        token_file.display()
    )]
    NoToken { token_file: PathBuf },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(
        "{key} '{value}' was given but {} sets {key} too and would win: remove it there, \
         then install again",
        file.display()
    )]
    Overridden {
        key: &'static str,
        value: String,
        file: PathBuf,
    },
    #[error("{0}")]
    Token(EnrollError),
    #[error("cannot place the enrollment token: {0}")]
    Keep(#[from] CredentialError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`apply`] did, one line each, for the install log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub lines: Vec<String>,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.lines.join("\n"))
    }
}

/// Applies the given `values` to the config at `config_path` and the token
/// waiting beside it (see the module docs). `enrolled` says whether the
/// workstation holds a working enrollment under a config; it is asked only
/// when no token is given or waiting.
pub fn apply(
    config_path: &Path,
    values: &InstallValues,
    defaults: &Defaults,
    enrolled: impl FnOnce(&Config) -> bool,
) -> Result<Applied, ProvisionError> {
    let values = values.given();
    let mut applied = Applied::default();
    let token = match &values.enroll_token_file {
        Some(path) => Some((
            path.clone(),
            enroll::read_token_file(path).map_err(ProvisionError::Token)?,
        )),
        None => None,
    };

    let existing = match std::fs::read_to_string(config_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ProvisionError::Io {
                action: "read config file",
                path: config_path.to_path_buf(),
                source,
            })
        }
    };
    let new_text = match &existing {
        None if values.server_url.is_none() => {
            return Err(ProvisionError::NoServer {
                path: config_path.to_path_buf(),
            })
        }
        None => Some(config_text(&values, defaults)?),
        Some(_) if values.server_url.is_none() && values.email_template.is_none() => None,
        Some(text) => Some(edited(config_path, text, &values)?),
    };
    let config = match &new_text {
        Some(text) => Config::load_with(config_path, text)?,
        None => Config::load(config_path)?,
    };
    check_not_overridden(config_path, &config, &values)?;

    let token_file = enroll::token_file_for(config_path);
    if token.is_none() && !token_file.exists() && !enrolled(&config) {
        return Err(ProvisionError::NoToken { token_file });
    }

    // Checked: now write.
    match (&existing, new_text) {
        (_, None) => applied.lines.push(format!(
            "kept {} as it is (no server URL or email template given)",
            config_path.display()
        )),
        (existing, Some(text)) => {
            write_config(config_path, &text)?;
            let what = if existing.is_some() {
                "updated"
            } else {
                "wrote"
            };
            let mut set = vec![format!("server_url {}", config.server_url)];
            let replicas = existing
                .as_deref()
                .and_then(|t| Config::parse(t).ok())
                .map(|c| c.server_urls)
                .filter(|r| !r.is_empty() && values.server_url.is_some());
            if let Some(replicas) = replicas {
                set.push(format!("in place of server_urls {}", replicas.join(", ")));
            }
            if let Some(t) = &values.email_template {
                set.push(format!("users.email_template {t}"));
            }
            applied.lines.push(format!(
                "{what} {} ({})",
                config_path.display(),
                set.join(", ")
            ));
        }
    }
    if let Some((source, token)) = token {
        let replacing = token_file.exists();
        crate::credentials::write_private_file(&token_file, format!("{token}\n").as_bytes())?;
        applied.lines.push(format!(
            "placed the enrollment token from {} in {}{}",
            source.display(),
            token_file.display(),
            if replacing {
                ", replacing the one waiting there"
            } else {
                ""
            }
        ));
    }
    Ok(applied)
}

/// The config file text for `values` (a server URL given), with the OS's
/// default state directory.
pub fn config_text(values: &InstallValues, defaults: &Defaults) -> Result<String, ConfigError> {
    use toml::{Table, Value};
    let mut top = Table::new();
    let url = values.server_url.as_deref().unwrap_or_default().trim();
    top.insert("server_url".into(), Value::String(url.to_string()));
    top.insert(
        "state_dir".into(),
        Value::String(defaults.state_dir.display().to_string()),
    );
    if let Some(t) = values
        .email_template
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let mut users = Table::new();
        users.insert("email_template".into(), Value::String(t.to_string()));
        top.insert("users".into(), Value::Table(users));
    }
    let body = toml::to_string(&top).map_err(|e| ConfigError::Parse {
        path: PathBuf::from("<installer values>"),
        message: e.to_string(),
    })?;
    // Validate exactly what will be written.
    Config::parse(&body)?;
    Ok(format!(
        "# Written by flex-agent configure from the installer's properties.\n\
         # Edit freely; properties given to a later install replace server_url and\n\
         # users.email_template. Keys: see agent.toml.example.\n{body}"
    ))
}

/// `text` (the config at `path`) with the given values set, everything else
/// (other keys, comments, layout) as it was.
fn edited(path: &Path, text: &str, values: &InstallValues) -> Result<String, ConfigError> {
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })?;
    if let Some(url) = &values.server_url {
        // The given URL names the server: a kept list of replicas would
        // contradict it (the config takes one or the other).
        doc.remove("server_urls");
        doc["server_url"] = toml_edit::value(url.as_str());
    }
    if let Some(t) = &values.email_template {
        if !doc.contains_key("users") {
            doc["users"] = toml_edit::table();
        }
        doc["users"]["email_template"] = toml_edit::value(t.as_str());
    }
    Ok(doc.to_string())
}

/// A given value must be the one the agent will use: no drop-in may set it too.
fn check_not_overridden(
    path: &Path,
    config: &Config,
    values: &InstallValues,
) -> Result<(), ProvisionError> {
    let given = [
        (
            "server_url",
            values.server_url.as_deref(),
            Some(config.server_url.as_str()),
        ),
        (
            "users.email_template",
            values.email_template.as_deref(),
            config.users.email_template.as_deref(),
        ),
    ];
    for (key, value, effective) in given {
        let Some(value) = value else { continue };
        if effective == Some(value) {
            continue;
        }
        let file = config::sources(path)?
            .into_iter()
            .skip(1)
            .rev()
            .find(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                let table: toml::Table = toml::from_str(&text).unwrap_or_default();
                match key.split_once('.') {
                    Some((t, k)) => table
                        .get(t)
                        .and_then(|v| v.as_table())
                        .is_some_and(|t| t.contains_key(k)),
                    None => table.contains_key(key),
                }
            })
            .unwrap_or_else(|| config::dropin_dir(path));
        return Err(ProvisionError::Overridden {
            key,
            value: value.to_string(),
            file,
        });
    }
    Ok(())
}

/// Replaces the config file at `path` with `text`, atomically.
fn write_config(path: &Path, text: &str) -> Result<(), ProvisionError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ProvisionError::Io {
            action,
            path,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create the folder of", path))?;
    let tmp = dir.join(format!(".agent.toml.tmp.{}", std::process::id()));
    let written = std::fs::write(&tmp, text)
        .map_err(io("write", &tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("replace config file", path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::{defaults, Os};

    fn values(url: &str, template: Option<&str>) -> InstallValues {
        InstallValues {
            server_url: Some(url.into()),
            enroll_token_file: None,
            email_template: template.map(Into::into),
        }
    }

    /// A config path in a temp dir, and the defaults with the state there.
    fn place() -> (tempfile::TempDir, PathBuf, Defaults) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Flex").join("agent.toml");
        let mut d = defaults(Os::current(), None);
        d.state_dir = dir.path().join("state");
        (dir, path, d)
    }

    fn token_file(dir: &Path, token: &str) -> PathBuf {
        let path = dir.join(format!("token-{token}.txt"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }

    #[test]
    fn config_from_installer_values_parses_back() {
        // The defaults of the OS running the test: the config is validated as
        // that OS would (a Windows path is not absolute on Linux).
        let win = defaults(Os::current(), None);
        let text = config_text(
            &values("https://flex.corp.example:8443", Some("{user}@corp.com")),
            &win,
        )
        .unwrap();
        assert!(text.starts_with("# Written by flex-agent"), "{text}");
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.server_url, "https://flex.corp.example:8443");
        assert_eq!(c.state_dir, win.state_dir);
        // An account of the domain the computer is joined to maps by name.
        assert_eq!(
            c.email_for_on(r"CORP\alice", &["CORP".to_string()])
                .unwrap(),
            "alice@corp.com"
        );
    }

    #[test]
    fn bad_installer_values_are_named() {
        let here = crate::paths::current();
        let err = config_text(&values("flex.corp", None), &here)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server_url") && err.contains("flex.corp"),
            "{err}"
        );
        let err = config_text(&values("https://f", Some("corp.com")), &here)
            .unwrap_err()
            .to_string();
        assert!(err.contains("email_template"), "{err}");
    }

    /// Issue 18, item 3: a corrected SERVER_URL given to a repair, a second
    /// `msiexec /i` or a reinstall replaces the kept one; what IT edited stays.
    #[test]
    fn a_given_server_url_replaces_the_kept_one_and_keeps_the_rest() {
        let (dir, path, d) = place();
        let token = token_file(dir.path(), "fet_first");
        let first = InstallValues {
            enroll_token_file: Some(token),
            ..values("https://flex.corp:8443", Some("{user}@corp.example"))
        };
        apply(&path, &first, &d, |_| false).unwrap();
        // IT edits the file; a later install without properties keeps it all.
        let text = format!(
            "# site: keep detection by polling\ndetection = \"polling\"\n{}",
            std::fs::read_to_string(&path).unwrap()
        );
        std::fs::write(&path, &text).unwrap();
        let kept = apply(&path, &InstallValues::default(), &d, |_| false).unwrap();
        assert!(kept.lines[0].starts_with("kept"), "{kept}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // The corrected URL wins; the comment and the other keys stay.
        let fixed = apply(
            &path,
            &values("https://flex.corp.example:8443", None),
            &d,
            |_| false,
        )
        .unwrap();
        assert!(fixed.lines[0].starts_with("updated"), "{fixed}");
        let now = std::fs::read_to_string(&path).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.server_url, "https://flex.corp.example:8443");
        assert_eq!(
            c.users.email_template.as_deref(),
            Some("{user}@corp.example")
        );
        assert_eq!(c.detection, crate::config::Detection::Polling);
        assert!(now.contains("# site: keep detection by polling"), "{now}");
    }

    /// A SERVER_URL given where the config lists replicas (`server_urls`)
    /// replaces the list, and says so, instead of failing on a config that
    /// names both.
    #[test]
    fn a_given_server_url_replaces_a_list_of_replicas() {
        let (_dir, path, d) = place();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "# replicas\nserver_urls = [\"https://a.corp:8443\", \"https://b.corp:8443\"]\n\
             detection = \"polling\"\n",
        )
        .unwrap();
        let done = apply(
            &path,
            &values("https://flex.corp.example:8443", None),
            &d,
            |_| true,
        )
        .unwrap();
        assert!(
            done.lines[0]
                .contains("in place of server_urls https://a.corp:8443, https://b.corp:8443"),
            "{done}"
        );
        let c = Config::load(&path).unwrap();
        assert_eq!(c.servers(), vec!["https://flex.corp.example:8443"]);
        assert_eq!(c.detection, crate::config::Detection::Polling);
    }

    /// Issue 18, items 3 and 4: a bad value fails with the reason and changes
    /// nothing; on a workstation that is not enrolled, no URL or no token at
    /// all fails too.
    #[test]
    fn bad_or_missing_install_values_fail_and_change_nothing() {
        let (dir, path, d) = place();
        let token = token_file(dir.path(), "fet_ok");
        // First install: both are needed.
        let err = apply(&path, &InstallValues::default(), &d, |_| false).unwrap_err();
        assert!(matches!(err, ProvisionError::NoServer { .. }), "{err}");
        assert!(err.to_string().contains("SERVER_URL"), "{err}");
        let err = apply(&path, &values("https://flex.corp", None), &d, |_| false).unwrap_err();
        assert!(matches!(err, ProvisionError::NoToken { .. }), "{err}");
        assert!(err.to_string().contains("ENROLL_TOKEN_FILE"), "{err}");
        assert!(!path.exists(), "nothing written");
        let no_scheme = InstallValues {
            enroll_token_file: Some(token.clone()),
            ..values("flex.corp:8443", None)
        };
        let err = apply(&path, &no_scheme, &d, |_| false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'flex.corp:8443'") && err.contains("http"),
            "{err}"
        );
        let missing = InstallValues {
            enroll_token_file: Some(dir.path().join("nope.txt")),
            ..values("https://flex.corp", None)
        };
        let err = apply(&path, &missing, &d, |_| false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.txt"), "{err}");
        assert!(!path.exists() && !enroll::token_file_for(&path).exists());

        // Installed; a later bad value leaves the working config as it was.
        let good = InstallValues {
            enroll_token_file: Some(token),
            ..values("https://flex.corp", None)
        };
        apply(&path, &good, &d, |_| false).unwrap();
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(apply(&path, &values("flex.other", None), &d, |_| true).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        // An enrolled workstation needs no token; one waiting is enough too.
        std::fs::remove_file(enroll::token_file_for(&path)).unwrap();
        apply(&path, &InstallValues::default(), &d, |_| true).unwrap();
        // A drop-in that would override the given URL is named.
        let dropins = config::dropin_dir(&path);
        std::fs::create_dir_all(&dropins).unwrap();
        std::fs::write(
            dropins.join("50-site.toml"),
            "server_url = \"https://old\"\n",
        )
        .unwrap();
        let err = apply(&path, &values("https://new", None), &d, |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("50-site.toml") && err.contains("https://new"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }

    /// Issue 18, item 2: a token file given to the installer replaces the
    /// token waiting (one the server refused, say).
    #[test]
    fn a_given_token_replaces_the_one_waiting() {
        let (dir, path, d) = place();
        let bad = token_file(dir.path(), "fet_refused");
        let install = |file: PathBuf| InstallValues {
            enroll_token_file: Some(file),
            ..values("https://flex.corp", None)
        };
        let first = apply(&path, &install(bad), &d, |_| false).unwrap();
        let waiting = enroll::token_file_for(&path);
        assert!(
            first.lines[1].ends_with(&waiting.display().to_string()),
            "{first}"
        );
        assert_eq!(enroll::read_token_file(&waiting).unwrap(), "fet_refused");
        let good = token_file(dir.path(), "fet_good");
        let second = apply(&path, &install(good), &d, |_| false).unwrap();
        assert!(
            second.lines[1].contains("replacing the one waiting"),
            "{second}"
        );
        assert_eq!(enroll::read_token_file(&waiting).unwrap(), "fet_good");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&waiting).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn blank_values_are_not_given() {
        let blank = InstallValues {
            server_url: Some("  ".into()),
            enroll_token_file: Some(PathBuf::from("")),
            email_template: Some(String::new()),
        };
        assert_eq!(blank.given(), InstallValues::default());
    }
}
