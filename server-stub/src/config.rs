//! Server configuration: a TOML file with the admin token source, the policy and
//! the enrollment settings. Durations are written like `24h`, `30m` or `5s`.
//!
//! ```toml
//! production = true            # refuses --test-clock
//! admin_token = "..."          # optional; FLEX_ADMIN_TOKEN wins
//! enrollment_token_ttl = "7d"
//! background_interval = "60s"  # notice checks and the usage rollup
//!
//! [policy]
//! window = "24h"
//! flex_offline_limit = "24h"
//! subscription_offline_limit = "30d"
//! offline_warnings = ["2h", "30m", "5m"]
//! subscription_warning = "3d"
//! heartbeat_interval = "10m"
//! renewal_grace = "30m"
//! close_grace = "30s"
//! low_balance_ratio = 0.2
//! short_use_grace = "5m"              # R13: a shorter run is refunded ("0s": off)
//! idle_after = "15m"                  # R14: idle after this without input or CPU ("0s": off)
//! idle_cpu_percent = 2.0              # R14: CPU use under which a product is idle
//! renewal_notice = "15m"              # tell users this long before a renewal
//! timezone = "Europe/Paris"
//! pack_sizes = [100, 500, 1000, 2500, 5000, 10000]
//! device_users_alert = 10
//!
//! [limits]                     # what one client may hold of the server, see crate::net
//! header_read_timeout = "10s"
//! request_timeout = "30s"
//! tls_handshake_timeout = "10s"
//! max_connections = 10000
//! max_connections_per_address = 1000
//! admin_auth_failures = 10
//! admin_auth_window = "1m"
//!
//! [smtp]                       # optional: admin notices by email, see crate::mail
//! host = "mail.example.com"
//! port = 587
//! security = "starttls"
//! from = "Flex <flex@example.com>"
//! to = ["it@example.com"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use flex_protocol::api::Policy;
use lettre::message::Mailbox;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config value {key} = {value} is not valid: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A production server refuses `--test-clock`.
    #[serde(default)]
    pub production: bool,
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default = "default_enrollment_ttl", with = "humantime_serde")]
    pub enrollment_token_ttl: Duration,
    /// How often the leading replica checks time-driven notices and folds the
    /// usage rollup; also how soon a surviving replica takes over that work.
    #[serde(default = "default_background_interval", with = "humantime_serde")]
    pub background_interval: Duration,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Admin notices by email; off when absent.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Timeouts and caps on what clients may hold.
    #[serde(default)]
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            production: false,
            admin_token: None,
            enrollment_token_ttl: default_enrollment_ttl(),
            background_interval: default_background_interval(),
            policy: PolicyConfig::default(),
            smtp: None,
            limits: LimitsConfig::default(),
        }
    }
}

fn default_background_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_enrollment_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// The rules' tunable numbers (DESIGN.md defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub flex_offline_limit: Duration,
    #[serde(with = "humantime_serde")]
    pub subscription_offline_limit: Duration,
    #[serde(with = "humantime_vec")]
    pub offline_warnings: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub subscription_warning: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub renewal_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub close_grace: Duration,
    pub low_balance_ratio: f64,
    pub timezone: String,
    pub pack_sizes: Vec<u64>,
    /// A `device_users` notice is raised when one device claims for more
    /// distinct users than this in one tenant day.
    pub device_users_alert: u32,
    /// R13: a window no process uses past this is refunded ("0s": off).
    #[serde(with = "humantime_serde")]
    pub short_use_grace: Duration,
    /// R14: no input and little CPU for this long is idle ("0s": off).
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// R14: CPU use (percent of one core) under which a product is idle.
    pub idle_cpu_percent: f64,
    /// How long before a renewal its user is told ("0s": not told).
    #[serde(with = "humantime_serde")]
    pub renewal_notice: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let h = |n: u64| Duration::from_secs(n * 3600);
        let m = |n: u64| Duration::from_secs(n * 60);
        PolicyConfig {
            window: h(24),
            flex_offline_limit: h(24),
            subscription_offline_limit: h(24 * 30),
            offline_warnings: vec![h(2), m(30), m(5)],
            subscription_warning: h(24 * 3),
            heartbeat_interval: m(10),
            renewal_grace: m(30),
            close_grace: Duration::from_secs(30),
            low_balance_ratio: 0.2,
            timezone: "UTC".into(),
            pack_sizes: vec![100, 500, 1000, 2500, 5000, 10000],
            device_users_alert: 10,
            short_use_grace: m(5),
            idle_after: m(15),
            idle_cpu_percent: 2.0,
            renewal_notice: m(15),
        }
    }
}

/// `[limits]`: what one client may hold of the server (see [`crate::net`]).
///
/// An idle kept-alive connection and a half-sent request look alike (both owe
/// the server a request head), so `header_read_timeout` bounds both.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// From the moment a connection may send a request until its head is in.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Reading the body and answering one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// From accept until the TLS handshake is done.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Open connections in total (also held below the open-file limit).
    pub max_connections: u32,
    /// Open connections from one IPv4 address or IPv6 /64.
    pub max_connections_per_address: u32,
    /// Wrong admin tokens one address may present per `admin_auth_window`
    /// before its attempts answer 429 until the window ends.
    pub admin_auth_failures: u32,
    #[serde(with = "humantime_serde")]
    pub admin_auth_window: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            admin_auth_failures: 10,
            admin_auth_window: Duration::from_secs(60),
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("limits.header_read_timeout", self.header_read_timeout),
            ("limits.request_timeout", self.request_timeout),
            ("limits.tls_handshake_timeout", self.tls_handshake_timeout),
            ("limits.admin_auth_window", self.admin_auth_window),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "0s", "must be positive"));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("limits.max_connections", "0", "must be at least 1"));
        }
        if self.max_connections_per_address == 0
            || self.max_connections_per_address > self.max_connections
        {
            return Err(invalid(
                "limits.max_connections_per_address",
                self.max_connections_per_address.to_string(),
                "must be between 1 and limits.max_connections",
            ));
        }
        if self.admin_auth_failures == 0 {
            return Err(invalid(
                "limits.admin_auth_failures",
                "0",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

mod humantime_vec {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| {
                humantime::parse_duration(s)
                    .map_err(|e| serde::de::Error::custom(format!("'{s}': {e}")))
            })
            .collect()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_string(),
        })?;
        config.policy.validate()?;
        config.limits.validate()?;
        if let Some(smtp) = &config.smtp {
            smtp.validate()?;
        }
        Ok(config)
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secs = |d: Duration| format!("{}s", d.as_secs());
        if self.window.as_secs() == 0 {
            return Err(ConfigError::Invalid {
                key: "policy.window",
                value: secs(self.window),
                why: "must be at least one second",
            });
        }
        if self.flex_offline_limit.as_secs() == 0 {
            return Err(ConfigError::Invalid {
                key: "policy.flex_offline_limit",
                value: secs(self.flex_offline_limit),
                why: "must be at least one second",
            });
        }
        if self.heartbeat_interval.as_secs() == 0 {
            return Err(ConfigError::Invalid {
                key: "policy.heartbeat_interval",
                value: secs(self.heartbeat_interval),
                why: "must be at least one second",
            });
        }
        if !(self.low_balance_ratio > 0.0 && self.low_balance_ratio < 1.0) {
            return Err(ConfigError::Invalid {
                key: "policy.low_balance_ratio",
                value: self.low_balance_ratio.to_string(),
                why: "must be between 0 and 1",
            });
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(ConfigError::Invalid {
                key: "policy.timezone",
                value: self.timezone.clone(),
                why: "is not an IANA time zone name such as Europe/Paris",
            });
        }
        if !(self.idle_cpu_percent >= 0.0 && self.idle_cpu_percent <= 100.0) {
            return Err(ConfigError::Invalid {
                key: "policy.idle_cpu_percent",
                value: self.idle_cpu_percent.to_string(),
                why: "must be a percentage of one core, from 0 to 100",
            });
        }
        if self.device_users_alert == 0 {
            return Err(ConfigError::Invalid {
                key: "policy.device_users_alert",
                value: "0".into(),
                why: "must be at least 1",
            });
        }
        if self.pack_sizes.is_empty() || self.pack_sizes.contains(&0) {
            return Err(ConfigError::Invalid {
                key: "policy.pack_sizes",
                value: format!("{:?}", self.pack_sizes),
                why: "must list at least one positive pack size",
            });
        }
        Ok(())
    }

    /// The wire form sent to agents.
    pub fn to_wire(&self) -> Policy {
        Policy {
            window_secs: self.window.as_secs(),
            flex_offline_limit_secs: self.flex_offline_limit.as_secs(),
            subscription_offline_limit_secs: self.subscription_offline_limit.as_secs(),
            offline_warning_secs: self.offline_warnings.iter().map(|d| d.as_secs()).collect(),
            subscription_warning_secs: self.subscription_warning.as_secs(),
            heartbeat_interval_secs: self.heartbeat_interval.as_secs(),
            renewal_grace_secs: self.renewal_grace.as_secs(),
            close_grace_secs: self.close_grace.as_secs(),
            low_balance_ratio: self.low_balance_ratio,
            timezone: self.timezone.clone(),
            pack_sizes: self.pack_sizes.clone(),
            short_use_grace_secs: self.short_use_grace.as_secs(),
            idle_after_secs: self.idle_after.as_secs(),
            idle_cpu_percent: self.idle_cpu_percent,
            renewal_notice_secs: self.renewal_notice.as_secs(),
        }
    }
}

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a relay on the same host or a test sink.
    None,
}

/// `[smtp]` of the server config: admin notices by email (see [`crate::mail`]).
///
/// ```toml
/// [smtp]
/// host = "mail.example.com"
/// port = 587
/// security = "starttls"            # starttls | tls | none
/// username = "flex"                # optional, with password_file
/// password_file = "/etc/flex/smtp-password"
/// from = "Flex licensing <flex@example.com>"
/// to = ["it@example.com", "finance@example.com"]
/// console_url = "https://licensing.example.com:8443/admin/"   # optional link
/// ca_file = "/etc/flex/smtp-ca.pem" # optional private CA
/// check_interval = "10s"           # how often new notices are looked for
/// retry = "5s"                     # first wait after a failure, doubled up to 15m
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default)]
    pub console_url: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    #[serde(default = "default_retry", with = "humantime_serde")]
    pub retry: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_retry() -> Duration {
    Duration::from_secs(5)
}

fn invalid(key: &'static str, value: impl Into<String>, why: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        why,
    }
}

impl SmtpConfig {
    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(invalid("smtp.host", "", "must name the SMTP server"));
        }
        if self.port == 0 {
            return Err(invalid(
                "smtp.port",
                "0",
                "must be a port number such as 587",
            ));
        }
        self.from.parse::<Mailbox>().map_err(|_| {
            invalid(
                "smtp.from",
                &self.from,
                "is not an email address such as Flex <flex@example.com>",
            )
        })?;
        if self.to.is_empty() {
            return Err(invalid("smtp.to", "[]", "must list at least one recipient"));
        }
        for to in &self.to {
            to.parse::<Mailbox>()
                .map_err(|_| invalid("smtp.to", to, "is not an email address"))?;
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err(invalid(
                "smtp.username",
                self.username.clone().unwrap_or_default(),
                "and smtp.password_file go together",
            ));
        }
        if self.retry.is_zero() || self.check_interval.is_zero() {
            return Err(invalid(
                "smtp.retry",
                format!("{:?}", self.retry),
                "and smtp.check_interval must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.policy.window, Duration::from_secs(86400));
        assert_eq!(c.policy.offline_warnings.len(), 3);
        assert_eq!(c.policy.pack_sizes, vec![100, 500, 1000, 2500, 5000, 10000]);
    }

    #[test]
    fn durations_are_human() {
        let c = Config::parse(
            "[policy]\nwindow = \"6s\"\noffline_warnings = [\"3s\", \"1s\"]\nclose_grace = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.policy.window, Duration::from_secs(6));
        assert_eq!(
            c.policy.offline_warnings,
            vec![Duration::from_secs(3), Duration::from_secs(1)]
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("[policy]\ntimezone = \"Mars/Olympus\"\n").unwrap_err();
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
        let e = Config::parse("[policy]\nwindow = \"soon\"\n").unwrap_err();
        assert!(
            e.to_string().contains("soon") || e.to_string().contains("window"),
            "{e}"
        );
        let e = Config::parse("[limits]\nmax_connections = 10\nmax_connections_per_address = 11\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("limits.max_connections_per_address = 11"),
            "{e}"
        );
        let e = Config::parse("polcy = 1\n").unwrap_err();
        assert!(e.to_string().contains("polcy"), "{e}");
    }
}
