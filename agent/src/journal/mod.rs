//! The agent's journal: one SQLite file in the state directory.
//!
//! It records what the core says must survive a crash ([`crate::core::Persist`] actions):
//! claims before they are sent, the windows held with their signed leases,
//! session records until the server stored them, the offline clock and clock
//! rollbacks not yet reported, plus enrollment facts (device id, server URL,
//! pinned lease keys; never the device token, which the credential store keeps)
//! and, while an enrollment request is unanswered, its id
//! ([`PendingEnrollment`]).
//!
//! Durability: WAL, and every batch of actions from one `Core::handle` call is
//! applied in one transaction. A batch that holds money ([`Persist::is_money`]:
//! a claim or refund about to be sent, a window and its lease, a job attempt,
//! the offline clock) commits with `synchronous=FULL` before anything else of
//! the batch happens, so it survives power loss. A batch of usage records and
//! caches only (the common case: a launch inside an open window) commits with
//! `synchronous=NORMAL` after the reply was sent: it survives a crash of the
//! agent (it is in the OS cache), and a power cut may lose the usage records of
//! its last moments — never a charge, a window, or a pending claim or refund.
//! The schema is created by numbered migrations embedded in the binary and
//! tracked with `PRAGMA user_version`.
//!
//! Crash safety of a claim, kill -9 at any point:
//! * before the `ClaimPending` commit: the claim was never sent; nothing to redo;
//! * after it, before or after sending: the claim is in `pending_claims` and
//!   [`crate::core::Core::restore`] resends it with the same id, which the server
//!   answers with the original result: one charge;
//! * after the answer, before the batch with `Window` + `ClaimSettled` commits: the
//!   same resend happens; the answer is identical, so the window is recorded once.

mod read;
mod write;
mod writer;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use flex_protocol::api::LeaseKey;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::core::Persist;

pub use read::HeartbeatBatch;
pub use writer::JournalWriter;

/// The journal's file name inside the state directory.
pub const FILE_NAME: &str = "journal.sqlite3";

const MIGRATIONS: &[&str] = &[
    include_str!("0001_init.sql"),
    include_str!("0002_identity.sql"),
    include_str!("0003_refunds.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {action} journal {path}: {source}")]
    Sqlite {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} holds an unreadable {what}: {detail}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error(
        "journal {path} has schema version {found}, newer than this agent supports \
         ({supported}): upgrade flex-agent"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("the journal's writer thread has stopped")]
    WriterGone,
}

/// What enrollment leaves behind, apart from the secret device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub device_id: String,
    pub server_url: String,
    pub lease_keys: Vec<LeaseKey>,
}

/// An enrollment request written down before it is sent, so that a retry
/// (after a timeout, a stop, a crash) asks the server again with the same id
/// and gets the same device. The id is a secret: with the server's help it
/// yields the device credential until the device first contacts the server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnrollment {
    pub request_id: String,
    pub server_url: String,
    /// SHA-256 (hex) of the enrollment token it was sent with.
    pub token_sha256: String,
    pub hostname: String,
}

impl std::fmt::Debug for PendingEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingEnrollment")
            .field("request_id", &"<secret>")
            .field("server_url", &self.server_url)
            .field("token_sha256", &self.token_sha256)
            .field("hostname", &self.hostname)
            .finish()
    }
}

pub struct Journal {
    conn: Connection,
    path: PathBuf,
    /// Whether the connection is at synchronous=FULL now (see `apply`).
    durable: bool,
}

impl Journal {
    /// Opens (creating if needed) the journal in `state_dir`, which is created
    /// with mode 0700 when missing.
    pub fn open_in(state_dir: &Path) -> Result<Self, JournalError> {
        if !state_dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(state_dir)
                .map_err(|source| JournalError::Io {
                    action: "create state directory",
                    path: state_dir.to_path_buf(),
                    source,
                })?;
        }
        Self::open(&state_dir.join(FILE_NAME))
    }

    /// Opens (creating if needed) the journal file at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let path = path.to_path_buf();
        let err = |action| {
            let path = path.clone();
            move |source| JournalError::Sqlite {
                action,
                path,
                source,
            }
        };
        let conn = Connection::open(&path).map_err(err("open"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| JournalError::Io {
                    action: "restrict permissions of",
                    path: path.clone(),
                    source,
                },
            )?;
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("configure"))?;
        // Room for every statement `apply` writes (about twenty), so none is
        // parsed twice.
        conn.set_prepared_statement_cache_capacity(64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err("enable WAL in"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Corrupt {
                path,
                what: "journal mode",
                detail: format!("'{mode}' instead of 'wal'"),
            });
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(err("configure"))?;
        let mut journal = Journal {
            conn,
            path,
            durable: true,
        };
        journal.migrate()?;
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError {
        let path = self.path.clone();
        move |source| JournalError::Sqlite {
            action,
            path,
            source,
        }
    }

    fn corrupt(&self, what: &'static str, detail: impl ToString) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            what,
            detail: detail.to_string(),
        }
    }

    fn migrate(&mut self) -> Result<(), JournalError> {
        let supported = MIGRATIONS.len() as i64;
        let found: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.sqlite("read schema version of"))?;
        if found > supported {
            return Err(JournalError::TooNew {
                path: self.path.clone(),
                found,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self
                .conn
                .transaction()
                .map_err(self_err(&self.path, "migrate"))?;
            tx.execute_batch(sql)
                .and_then(|_| tx.pragma_update(None, "user_version", i as i64 + 1))
                .and_then(|_| tx.commit())
                .map_err(self_err(&self.path, "migrate"))?;
        }
        Ok(())
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.sqlite("read"))
    }

    fn meta_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, JournalError> {
        match self.meta_get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_str(&v)
                .map(Some)
                .map_err(|e| self.corrupt(key, e)),
        }
    }

    /// Records enrollment, and in the same transaction forgets the enrollment
    /// request it answered.
    pub fn set_enrollment(&mut self, e: &Enrollment) -> Result<(), JournalError> {
        let json = serde_json::to_string(e).expect("enrollment serializes");
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(self_err(&path, "record enrollment in"))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('enrollment', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [json],
        )
        .and_then(|_| tx.execute("DELETE FROM meta WHERE key = 'enrollment_request'", []))
        .and_then(|_| tx.commit())
        .map_err(self_err(&path, "record enrollment in"))?;
        Ok(())
    }

    /// The enrollment request sent and not yet answered, if any.
    pub fn pending_enrollment(&self) -> Result<Option<PendingEnrollment>, JournalError> {
        self.meta_json("enrollment_request")
    }

    /// Writes down the enrollment request about to be sent (durably, before it goes).
    pub fn set_pending_enrollment(&mut self, p: &PendingEnrollment) -> Result<(), JournalError> {
        let json = serde_json::to_string(p).expect("enrollment request serializes");
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('enrollment_request', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [json],
            )
            .map_err(self.sqlite("record the enrollment request in"))?;
        Ok(())
    }

    /// Forgets the pending enrollment request (refused, or no longer answerable).
    pub fn clear_pending_enrollment(&mut self) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM meta WHERE key = 'enrollment_request'", [])
            .map_err(self.sqlite("forget the enrollment request in"))?;
        Ok(())
    }

    /// The enrollment, or `None` when the agent was never enrolled.
    pub fn enrollment(&self) -> Result<Option<Enrollment>, JournalError> {
        self.meta_json("enrollment")
    }
}

fn self_err(path: &Path, action: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Sqlite {
        action,
        path,
        source,
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests;
