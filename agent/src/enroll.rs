//! `flex-agent enroll`: trades a one-time enrollment token for this workstation's
//! device credential.
//!
//! The server answers with a device id, the secret device token and the public
//! keys it signs leases with. The token goes to the credential store
//! ([`crate::credentials`]); the rest is not secret and goes to the journal
//! ([`crate::journal::Journal::set_enrollment`]), where the daemon reads the pinned
//! lease keys at start. The keys are checked to parse before anything is stored,
//! so a bad answer never leaves a half-enrolled agent behind.
//!
//! Errors say what to do next: a refused token needs a new one from the admin, an
//! unreachable server names the URL and what to check.

use std::path::PathBuf;

use flex_protocol::api::EnrollRequest;
use flex_protocol::lease::LeaseVerifier;

use crate::client::{Client, ClientError, ClientOptions};
use crate::config::Config;
use crate::credentials::{
    ensure_private_dir, CredentialError, CredentialStore, DeviceToken, StoreChoice,
};
use crate::journal::{Enrollment, Journal, JournalError};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "the enrollment token was refused: ask your admin for a new one \
         (flex-admin enroll-token); the server said: {message}"
    )]
    Refused { message: String },
    #[error(
        "cannot reach the server at {url}: {reason}. Check the URL, that flex-server \
         is running and reachable from this machine (DNS, firewall, proxy), and \
         ca_file in the agent config when the server uses a private CA"
    )]
    Unreachable { url: String, reason: String },
    #[error("enrollment at {url} failed: {source}")]
    Server {
        url: String,
        #[source]
        source: ClientError,
    },
    #[error("the server at {url} sent lease keys this agent cannot use: {reason}")]
    BadKeys { url: String, reason: String },
    #[error("cannot store the device token: {0}")]
    Credential(#[from] CredentialError),
    #[error("cannot record the enrollment: {0}")]
    Journal(#[from] JournalError),
    #[error("the enrollment task failed: {0}")]
    Task(String),
}

/// What `flex-agent enroll` reports on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollOutcome {
    pub device_id: String,
    pub server_url: String,
    pub hostname: String,
    /// Where the token went: `keyring (Secret Service)` or `file:/path`.
    pub credential_store: String,
    /// Ids of the pinned lease keys.
    pub lease_key_ids: Vec<String>,
    pub journal_path: PathBuf,
}

impl std::fmt::Display for EnrollOutcome {
    /// The summary `flex-agent enroll` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "enrolled {} with {} as device {}",
            self.hostname, self.server_url, self.device_id
        )?;
        writeln!(f, "device token stored in {}", self.credential_store)?;
        writeln!(f, "lease keys pinned: {}", self.lease_key_ids.join(", "))?;
        write!(f, "enrollment recorded in {}", self.journal_path.display())
    }
}

/// Enrolls with the agent's configured credential store choice.
pub async fn run_enroll(
    config: &Config,
    server: &str,
    token: &str,
) -> Result<EnrollOutcome, EnrollError> {
    run_enroll_with(config, server, token, config.credential_store).await
}

/// [`run_enroll`] with the credential store choice given explicitly.
pub async fn run_enroll_with(
    config: &Config,
    server: &str,
    token: &str,
    choice: StoreChoice,
) -> Result<EnrollOutcome, EnrollError> {
    let server = server.trim_end_matches('/').to_string();
    if server != config.server_url.trim_end_matches('/') {
        tracing::warn!(
            "enrolling with {server} but the config's server_url is {}: the daemon \
             will talk to the config's server",
            config.server_url
        );
    }
    let client = Client::new(
        &server,
        &ClientOptions {
            ca_file: config.ca_file.clone(),
            ..ClientOptions::default()
        },
    )
    .map_err(|source| EnrollError::Server {
        url: server.clone(),
        source,
    })?;
    let hostname = hostname();
    let answer = client
        .enroll(&EnrollRequest {
            enrollment_token: token.to_string(),
            hostname: hostname.clone(),
        })
        .await
        .map_err(|e| match e {
            ClientError::Unauthorized { message, .. } => EnrollError::Refused { message },
            ClientError::Transport { url, reason } => EnrollError::Unreachable { url, reason },
            ClientError::Timeout { url, timeout } => EnrollError::Unreachable {
                url,
                reason: format!("no answer within {timeout:?}"),
            },
            source => EnrollError::Server {
                url: server.clone(),
                source,
            },
        })?;

    if answer.lease_keys.is_empty() {
        return Err(EnrollError::BadKeys {
            url: server,
            reason: "no lease keys in the answer".into(),
        });
    }
    LeaseVerifier::from_keys(&answer.lease_keys).map_err(|e| EnrollError::BadKeys {
        url: server.clone(),
        reason: e.to_string(),
    })?;

    let state_dir = config.state_dir.clone();
    let dir = state_dir.clone();
    tokio::task::spawn_blocking(move || ensure_private_dir(&dir))
        .await
        .map_err(|e| EnrollError::Task(e.to_string()))??;

    let store = CredentialStore::select_async(choice, state_dir.clone()).await?;
    store
        .save_async(DeviceToken::new(answer.device_token))
        .await?;

    let enrollment = Enrollment {
        device_id: answer.device_id.clone(),
        server_url: server.clone(),
        lease_keys: answer.lease_keys.clone(),
    };
    let journal_path = tokio::task::spawn_blocking(move || {
        let mut journal = Journal::open_in(&state_dir)?;
        journal.set_enrollment(&enrollment)?;
        Ok::<_, JournalError>(journal.path().to_path_buf())
    })
    .await
    .map_err(|e| EnrollError::Task(e.to_string()))??;

    tracing::info!(
        device_id = %answer.device_id,
        credential_store = %store.describe(),
        "enrolled with {server}"
    );
    Ok(EnrollOutcome {
        device_id: answer.device_id,
        server_url: server,
        hostname,
        credential_store: store.describe(),
        lease_key_ids: answer.lease_keys.into_iter().map(|k| k.kid).collect(),
        journal_path,
    })
}

/// This machine's name as the admin will see it in the device list.
pub fn hostname() -> String {
    sysinfo::System::host_name()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(state_dir: &std::path::Path, url: &str) -> Config {
        Config::parse(&format!(
            "server_url = \"{url}\"\nstate_dir = '{}'\n",
            state_dir.display()
        ))
        .unwrap()
    }

    /// A one-request HTTP server answering `status` with `body`; bound before the
    /// client starts, so no readiness wait is needed.
    async fn answer_once(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Read the request head and its JSON body before answering.
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
        });
        url
    }

    #[tokio::test]
    async fn unusable_lease_keys_store_nothing() {
        let url = answer_once(
            "200 OK",
            r#"{"device_id":"d-1","device_token":"dt-1","lease_keys":[{"kid":"k1","public_key":"not-a-key"}]}"#,
        )
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(&config(tmp.path(), &url), &url, "et", StoreChoice::File)
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::BadKeys { .. }), "{err:?}");
        assert!(err.to_string().contains("'k1'"), "{err}");
        assert!(!tmp.path().join(crate::credentials::TOKEN_FILE).exists());
        assert!(!tmp.path().join(crate::journal::FILE_NAME).exists());
    }

    #[tokio::test]
    async fn a_failing_server_is_not_called_unreachable() {
        let url = answer_once(
            "500 Internal Server Error",
            r#"{"error":{"code":"internal","message":"database is locked"}}"#,
        )
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(&config(tmp.path(), &url), &url, "et", StoreChoice::File)
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::Server { .. }), "{err:?}");
        assert!(err.to_string().contains("database is locked"), "{err}");
    }

    #[test]
    fn hostname_is_not_empty() {
        assert!(!hostname().is_empty());
    }

    #[tokio::test]
    async fn unreachable_server_names_the_url_and_what_to_check() {
        // A port that was just ours and is now closed: connection refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(&config(tmp.path(), &url), &url, "et", StoreChoice::File)
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::Unreachable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&url) && msg.contains("firewall") && msg.contains("ca_file"),
            "{msg}"
        );
        // Nothing was stored.
        assert!(!tmp.path().join(crate::credentials::TOKEN_FILE).exists());
    }

    #[tokio::test]
    async fn a_bad_server_url_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = run_enroll_with(
            &config(tmp.path(), "https://flex.example.com"),
            "flex.example.com",
            "et",
            StoreChoice::File,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("'flex.example.com'"), "{err}");
    }
}
