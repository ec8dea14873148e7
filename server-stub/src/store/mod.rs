//! Durable state and the rules that change it.
//!
//! One SQLite file in WAL mode with `synchronous=FULL`: an answer is sent only
//! after the transaction that produced it is on disk. Writers are serialised by a
//! mutex around the single connection and every rule runs in one `IMMEDIATE`
//! transaction, so concurrent claims can neither open two windows for one
//! user+product nor overdraw the balance. Handlers call in via
//! [`Store::run`], which moves the blocking work off the async runtime; claims,
//! the hot path, go through [`ClaimBatcher`], which shares one commit among the
//! claims waiting at the same moment.

mod batch;
mod charges;
mod claims;
mod device_users;
mod devices;
mod enrollment;
mod heartbeat;
mod import;
mod lots;
mod mail;
mod notices;
mod refunds;
mod reports;
mod usage_blocks;
mod users;

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::SigningKey;
use flex_protocol::lease::LeaseSigner;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::clock::Clock;
use crate::config::PolicyConfig;
use crate::rates::RateSheet;

pub use batch::ClaimBatcher;
pub use charges::ChargeFilter;
pub use claims::ClaimOutcome;
pub use devices::DeviceAuth;
pub use import::{parse_csv, ImportRow, MAX_IMPORT_ROWS};
pub use users::{check_name, normalize_email};

/// Numbered migrations, embedded in the binary and applied in order.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_enrollment_keys.sql"),
    include_str!("../../migrations/0003_reports.sql"),
    include_str!("../../migrations/0004_usage_blocks.sql"),
    include_str!("../../migrations/0005_device_users.sql"),
    include_str!("../../migrations/0006_refunds.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request names an invalid value; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A rule refused a value, naming the field it is in; nothing was written.
    #[error(transparent)]
    Rule(#[from] crate::rules::Invalid),
    #[error("{what} '{key}' does not exist")]
    NotFound { what: &'static str, key: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    /// A credential that was valid once and has run out (an enrollment key).
    #[error("{0}")]
    Expired(String),
    /// A CSV import with bad lines; nothing was written.
    #[error("{} invalid line(s); nothing was imported", .0.len())]
    Import(Vec<flex_protocol::api::ImportError>),
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// A batch's shared transaction could not begin or commit; nothing was written.
    #[error("cannot commit to the database: {0}")]
    Commit(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Times are stored as fixed-width RFC 3339 text so that text order is time order.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time '{s}': {e}")))
}

pub struct Store {
    conn: Mutex<Connection>,
    clock: Arc<dyn Clock>,
    policy: PolicyConfig,
    rates: RateSheet,
    signer: LeaseSigner,
    pub(crate) enrollment_ttl: std::time::Duration,
}

impl Store {
    /// Opens (creating if needed) `data_dir/flex.db` and migrates it.
    pub fn open(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        policy: PolicyConfig,
        rates: RateSheet,
    ) -> Result<Store> {
        let path = data_dir.join("flex.db");
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        let signer = load_or_create_signer(&conn, clock.now())?;
        Ok(Store {
            conn: Mutex::new(conn),
            clock,
            policy,
            rates,
            signer,
            enrollment_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
        })
    }

    /// How long a new enrollment token stays valid.
    pub fn with_enrollment_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.enrollment_ttl = ttl;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn policy(&self) -> &PolicyConfig {
        &self.policy
    }

    pub fn rates(&self) -> &RateSheet {
        &self.rates
    }

    pub fn signer(&self) -> &LeaseSigner {
        &self.signer
    }

    /// Runs `f` inside one IMMEDIATE transaction; commits only if it returns Ok.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs a read-only query on the connection.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Runs blocking store work off the async runtime.
    pub async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Reads a value from the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| get_meta(c, key))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.write(|tx| set_meta(tx, key, value))
    }
}

pub(crate) fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub(crate) fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

fn migrate(conn: &Connection) -> Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// The lease signing key lives in the database so that one file is the whole
/// server state; it is created on first start.
fn load_or_create_signer(conn: &Connection, now: DateTime<Utc>) -> Result<LeaseSigner> {
    let row: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT kid, secret FROM lease_keys WHERE active = 1 ORDER BY created_at DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((kid, secret)) = row {
        let bytes: [u8; 32] = secret
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("lease key '{kid}' is not 32 bytes")))?;
        return Ok(LeaseSigner::new(kid, SigningKey::from_bytes(&bytes)));
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.verifying_key().as_bytes());
    let kid = format!("k-{}", hex::encode(&digest[..6]));
    conn.execute(
        "INSERT INTO lease_keys (kid, secret, created_at) VALUES (?1, ?2, ?3)",
        rusqlite::params![kid, key.to_bytes().to_vec(), ts(now)],
    )?;
    Ok(LeaseSigner::new(kid, key))
}

/// Hex SHA-256, used for stored token hashes and claim body fingerprints.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A random secret with a recognisable prefix (`fdt_…`, `fet_…`).
pub(crate) fn new_secret(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}
