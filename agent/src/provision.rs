//! First start after a silent install: the config written from the
//! installer's properties.
//!
//! IT deploys the agent with three values (the MSI's `SERVER_URL`,
//! `ENROLL_TOKEN_FILE` and `EMAIL_TEMPLATE`, which it stores in the registry).
//! The service, running as LocalSystem, turns them into its config file when
//! there is none yet. An existing config is never overwritten, so an upgrade
//! or a repair keeps what IT edited. Enrollment is the agent's own
//! self-enrollment at start ([`crate::enroll::self_enroll`]), the same on
//! every OS, so the device credential is written by the account that will
//! read it; the service only puts the installer's token where it looks
//! (`win32::service`).

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::paths::Defaults;

/// What the installer was told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallValues {
    pub server_url: Option<String>,
    /// A file holding the one-time enrollment token (often on a share).
    pub enroll_token_file: Option<PathBuf>,
    pub email_template: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(
        "no config file at {path} and no server URL from the installer: reinstall with \
         SERVER_URL=https://... or write the config file"
    )]
    NoServer { path: PathBuf },
    #[error("the installer's values make an invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The config file text for `values`, with the OS's default state directory.
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
        "# Written by flex-agent on its first start from the installer's properties.\n\
         # Edit freely: upgrades keep this file. Keys: see agent.toml.example.\n{body}"
    ))
}

/// Writes the config from `values` if `path` does not exist; returns whether
/// it wrote one.
pub fn write_config_if_missing(
    path: &Path,
    values: &InstallValues,
    defaults: &Defaults,
) -> Result<bool, ProvisionError> {
    if path.exists() {
        return Ok(false);
    }
    if values
        .server_url
        .as_deref()
        .is_none_or(|u| u.trim().is_empty())
    {
        return Err(ProvisionError::NoServer {
            path: path.to_path_buf(),
        });
    }
    let text = config_text(values, defaults)?;
    let io = |action| {
        let path = path.to_path_buf();
        move |source| ProvisionError::Io {
            action,
            path,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
    }
    std::fs::write(path, text).map_err(io("write config file"))?;
    Ok(true)
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

    #[test]
    fn existing_config_is_kept_and_missing_url_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Flex").join("agent.toml");
        let mut d = defaults(Os::current(), None);
        d.state_dir = dir.path().join("state");
        let err = write_config_if_missing(&path, &InstallValues::default(), &d).unwrap_err();
        assert!(err.to_string().contains("SERVER_URL"), "{err}");
        assert!(write_config_if_missing(&path, &values("https://a.example", None), &d).unwrap());
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(!write_config_if_missing(&path, &values("https://b.example", None), &d).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        assert!(first.contains("https://a.example"));
    }
}
