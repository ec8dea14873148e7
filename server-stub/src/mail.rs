//! Admin notices by email (R9 notices to the `[smtp]` recipients), with lettre.
//!
//! A task of its own reads notices not yet mailed, sends each, and records it
//! as sent in the same database, so each notice is mailed once (a crash between
//! the send and the record can send one twice; none is lost). When the SMTP
//! server is down the task waits with exponential backoff and tries again;
//! claims never wait for it. Notices raised before mail was first configured
//! are not mailed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::{Security, SmtpConfig};
use crate::store::Store;
use flex_protocol::api::{Notice, NoticeKind};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Notices sent per look.
const BATCH: i64 = 20;

/// Why mail cannot be set up; the server refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot read the SMTP password from {path}: {source}")]
    Password {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use {path} as the SMTP CA certificate: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("cannot set up SMTP to {host}: {reason}")]
    Setup { host: String, reason: String },
}

/// Subject and body of the mail for `notice`.
pub fn compose(notice: &Notice, console_url: Option<&str>) -> (String, String) {
    let subject = match notice.kind {
        NoticeKind::LowBalance => "[Flex] Low token balance",
        NoticeKind::OutOfTokens => "[Flex] Out of tokens: Flex launches are refused",
        NoticeKind::TokensExpiring => "[Flex] Tokens expiring soon",
        NoticeKind::DeviceUsers => "[Flex] One workstation claims for many users",
    };
    let mut body = format!(
        "{}\n\nRaised by the Flex licensing server at {} (notice {}).\n",
        notice.message,
        notice.created_at.format("%Y-%m-%d %H:%M UTC"),
        notice.id
    );
    match (notice.kind, console_url) {
        (NoticeKind::DeviceUsers, _) => body.push_str(
            "List the workstations with: flex-admin devices; revoke one that should not \
             speak for these users with: flex-admin devices revoke ID\n",
        ),
        (_, Some(url)) => body.push_str(&format!("Balance, forecast and lots: {url}\n")),
        (_, None) => {}
    }
    (subject.to_owned(), body)
}

/// The doubled wait after `failures` failures in a row.
pub fn backoff(first: Duration, failures: u32) -> Duration {
    first
        .checked_mul(1u32 << failures.min(16))
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// Sends notices to the configured recipients.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    config: SmtpConfig,
}

fn read_ca(path: &Path) -> Result<Certificate, MailError> {
    let pem = std::fs::read(path).map_err(|e| MailError::Ca {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Certificate::from_pem(&pem).map_err(|e| MailError::Ca {
        path: path.into(),
        reason: e.to_string(),
    })
}

impl Mailer {
    /// Builds the transport; reads the password and CA files now so a typo stops
    /// the server at start, not at the first notice.
    pub fn new(config: &SmtpConfig) -> Result<Mailer, MailError> {
        let setup = |reason: String| MailError::Setup {
            host: config.host.clone(),
            reason,
        };
        let tls = || -> Result<TlsParameters, MailError> {
            let mut b = TlsParameters::builder(config.host.clone());
            if let Some(ca) = &config.ca_file {
                b = b.add_root_certificate(read_ca(ca)?);
            }
            b.build_rustls().map_err(|e| setup(e.to_string()))
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str())
                .port(config.port)
                .timeout(Some(Duration::from_secs(30)));
        builder = match config.security {
            Security::None => builder.tls(Tls::None),
            Security::Starttls => builder.tls(Tls::Required(tls()?)),
            Security::Tls => builder.tls(Tls::Wrapper(tls()?)),
        };
        if let (Some(user), Some(path)) = (&config.username, &config.password_file) {
            let password = std::fs::read_to_string(path).map_err(|source| MailError::Password {
                path: path.clone(),
                source,
            })?;
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.trim_end_matches(['\r', '\n']).to_owned(),
            ));
        }
        let from = config
            .from
            .parse()
            .map_err(|e| setup(format!("from: {e}")))?;
        let to = config
            .to
            .iter()
            .map(|t| t.parse())
            .collect::<Result<Vec<Mailbox>, _>>()
            .map_err(|e| setup(format!("to: {e}")))?;
        Ok(Mailer {
            transport: builder.build(),
            from,
            to,
            config: config.clone(),
        })
    }

    async fn send(&self, notice: &Notice) -> Result<(), String> {
        let (subject, body) = compose(notice, self.config.console_url.as_deref());
        let mut m = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            m = m.to(to.clone());
        }
        let message = m
            .body(body)
            .map_err(|e| format!("cannot build the message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Mails notices until the process ends.
    pub async fn run(self, store: Arc<Store>) {
        if let Err(e) = store.run(|s| s.start_mail()).await {
            tracing::error!("notice mail is off: {e}");
            return;
        }
        let mut failures = 0u32;
        loop {
            // One replica mails (see store/leader.rs).
            if !store.run(|s| s.lead()).await.unwrap_or(false) {
                tokio::time::sleep(self.config.check_interval).await;
                continue;
            }
            let pending = match store.run(|s| s.unmailed_notices(BATCH)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("cannot read notices to mail: {e}");
                    Vec::new()
                }
            };
            let mut failed = false;
            for notice in pending {
                let id = notice.id;
                match self.send(&notice).await {
                    Ok(()) => {
                        failures = 0;
                        tracing::info!(
                            notice = id,
                            "notice mailed to {}",
                            self.config.to.join(", ")
                        );
                        if let Err(e) = store.run(move |s| s.mail_sent(id)).await {
                            tracing::warn!(notice = id, "notice mailed but not recorded: {e}");
                        }
                    }
                    Err(why) => {
                        failures += 1;
                        let wait = backoff(self.config.retry, failures - 1);
                        tracing::warn!(
                            notice = id,
                            "cannot mail notice via {}:{}: {why}; retrying in {wait:?}",
                            self.config.host,
                            self.config.port
                        );
                        let w = why.clone();
                        if let Err(e) = store.run(move |s| s.mail_failed(id, &w)).await {
                            tracing::warn!(notice = id, "cannot record the mail failure: {e}");
                        }
                        tokio::time::sleep(wait).await;
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                tokio::time::sleep(self.config.check_interval).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn config(to: &str, extra: &str) -> Result<SmtpConfig, String> {
        let text = format!("host = \"127.0.0.1\"\nport = 2525\nsecurity = \"none\"\nfrom = \"Flex <flex@example.com>\"\nto = [{to}]\n{extra}");
        let c: SmtpConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn config_is_checked() {
        let c = config("\"it@example.com\"", "").unwrap();
        assert_eq!(
            (c.check_interval, c.retry),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        assert!(config("\"it@example.com\"", "username = \"u\"")
            .unwrap_err()
            .contains("password_file go together"));
        assert!(config("\"not an address\"", "")
            .unwrap_err()
            .contains("smtp.to = not an address"));
        assert!(config("", "")
            .unwrap_err()
            .contains("at least one recipient"));
        assert!(config("\"it@example.com\"", "security = \"ssl\"").is_err());
    }

    #[test]
    fn mails_say_what_happened_and_where_to_look() {
        let n = Notice {
            id: 7,
            kind: NoticeKind::LowBalance,
            message: "token balance is 90, at or below 20% of the 500 tokens in unexpired lots"
                .into(),
            created_at: chrono::Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap(),
        };
        let (subject, body) = compose(&n, Some("https://flex.example.com/admin/"));
        assert_eq!(subject, "[Flex] Low token balance");
        assert!(body.starts_with("token balance is 90"));
        assert!(body.contains("2026-11-02 08:00 UTC (notice 7)"));
        assert!(body.ends_with("https://flex.example.com/admin/\n"));
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let s = Duration::from_secs(5);
        assert_eq!(backoff(s, 0), s);
        assert_eq!(backoff(s, 3), Duration::from_secs(40));
        assert_eq!(backoff(s, 40), MAX_BACKOFF);
    }
}
