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
mod console_sessions;
pub mod db;
mod device_users;
mod devices;
mod enrollment;
mod heartbeat;
mod import;
mod leader;
mod lots;
mod mail;
mod notices;
#[cfg(feature = "planted-bugs")]
mod planted;
mod refunds;
mod reports;
mod schema;
pub mod testing;
mod usage_blocks;
mod users;

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::SigningKey;
use flex_protocol::lease::LeaseSigner;
use rusqlite::{Connection, TransactionBehavior};

use crate::clock::Clock;
use crate::config::PolicyConfig;
use crate::rates::RateSheet;

pub use batch::ClaimBatcher;
pub(crate) use lots::load_lots;
pub(crate) use schema::{migrate_postgres, migrate_sqlite};

/// The newest schema version of each backend: (SQLite, PostgreSQL).
pub fn schema_versions() -> (usize, usize) {
    (schema::SQLITE.len(), schema::POSTGRES.len())
}
pub use charges::ChargeFilter;
pub use claims::ClaimOutcome;
pub use console_sessions::{ConsoleSession, MAX_SESSIONS, SESSION_TTL};
pub use db::Backend;
use db::{params, Conn};
pub use devices::DeviceAuth;
pub use import::{parse_csv, ImportRow, MAX_IMPORT_ROWS};
#[cfg(feature = "planted-bugs")]
pub use planted::PlantedBug;
pub use users::check_name;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request names an invalid value, in the field it names; nothing
    /// was written. The API answers 400 with the message; the console shows
    /// it next to the field.
    #[error(transparent)]
    Invalid(#[from] crate::rules::Invalid),
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
    #[error("database error: {}", db::postgres::describe(.0))]
    Postgres(#[from] postgres::Error),
    /// The database cannot be reached; nothing was written.
    #[error("{0}")]
    Unavailable(String),
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

impl From<crate::rules::Conflict> for StoreError {
    fn from(c: crate::rules::Conflict) -> Self {
        StoreError::Conflict(c.message)
    }
}

impl StoreError {
    /// A refused value of request field `field` (`email`, `rows.2.users`).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> StoreError {
        StoreError::Invalid(crate::rules::Invalid::new(field, message))
    }
}

/// Times are stored as fixed-width RFC 3339 text so that text order is time order.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time '{s}': {e}")))
}

/// Where the ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `flex.db` in this directory: the default, nothing to set up.
    Sqlite { data_dir: std::path::PathBuf },
    /// A PostgreSQL database that any number of replicas share.
    Postgres { url: String },
}

impl Database {
    pub fn backend(&self) -> Backend {
        match self {
            Database::Sqlite { .. } => Backend::Sqlite,
            Database::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Where, for logs: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite { data_dir } => data_dir.join("flex.db").display().to_string(),
            Database::Postgres { url } => db::postgres::redact(url),
        }
    }
}

pub(crate) enum Engine {
    /// One connection; writers are serialised by the mutex.
    Sqlite(Mutex<Connection>),
    Postgres(db::postgres::Pool),
}

pub struct Store {
    engine: Engine,
    clock: Arc<dyn Clock>,
    policy: PolicyConfig,
    rates: RateSheet,
    signer: LeaseSigner,
    pub(crate) enrollment_ttl: std::time::Duration,
    leadership: leader::Leadership,
    /// Where new window and device ids come from.
    ids: flex_protocol::IdSource,
    #[cfg(feature = "planted-bugs")]
    planted: Option<PlantedBug>,
}

impl Store {
    /// Opens (creating if needed) `data_dir/flex.db` and migrates it.
    pub fn open(
        data_dir: &Path,
        clock: Arc<dyn Clock>,
        policy: PolicyConfig,
        rates: RateSheet,
    ) -> Result<Store> {
        let conn = open_sqlite(&data_dir.join("flex.db"))?;
        schema::migrate_sqlite(&conn)?;
        Store::with_engine(Engine::Sqlite(Mutex::new(conn)), clock, policy, rates)
    }

    /// Connects to the PostgreSQL database at `url` (a `postgres://` URL or
    /// key=value settings) and migrates it; replicas may do this at once.
    pub fn open_postgres(
        url: &str,
        clock: Arc<dyn Clock>,
        policy: PolicyConfig,
        rates: RateSheet,
    ) -> Result<Store> {
        let pool = db::postgres::pool(url, db::postgres::DEFAULT_POOL)?;
        schema::migrate_postgres(&pool)?;
        Store::with_engine(Engine::Postgres(pool), clock, policy, rates)
    }

    /// Opens the store wherever `db` says.
    pub fn open_at(
        db: &Database,
        clock: Arc<dyn Clock>,
        policy: PolicyConfig,
        rates: RateSheet,
    ) -> Result<Store> {
        match db {
            Database::Sqlite { data_dir } => Store::open(data_dir, clock, policy, rates),
            Database::Postgres { url } => Store::open_postgres(url, clock, policy, rates),
        }
    }

    fn with_engine(
        engine: Engine,
        clock: Arc<dyn Clock>,
        policy: PolicyConfig,
        rates: RateSheet,
    ) -> Result<Store> {
        let mut store = Store {
            engine,
            clock,
            policy,
            rates,
            // Replaced below by the key in the database.
            signer: LeaseSigner::new(String::new(), SigningKey::from_bytes(&[0; 32])),
            enrollment_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
            leadership: leader::Leadership::default(),
            ids: flex_protocol::IdSource::Random,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        };
        let now = store.now();
        store.signer = store.write(|c| load_or_create_signer(c, now))?;
        Ok(store)
    }

    /// New window and device ids come from `ids` (the deterministic
    /// simulation's seeded sequence) instead of random UUIDs.
    pub fn with_ids(mut self, ids: flex_protocol::IdSource) -> Self {
        self.ids = ids;
        self
    }

    pub(crate) fn new_id(&self) -> String {
        self.ids.next_id()
    }

    pub(crate) fn new_window_id(&self) -> flex_protocol::WindowId {
        self.ids.next_window_id()
    }

    /// How long a new enrollment token stays valid.
    pub fn with_enrollment_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.enrollment_ttl = ttl;
        self
    }

    pub fn backend(&self) -> Backend {
        match self.engine {
            Engine::Sqlite(_) => Backend::Sqlite,
            Engine::Postgres(_) => Backend::Postgres,
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
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

    /// Runs `f` in one write transaction and commits only if it returns Ok:
    /// SQLite's `IMMEDIATE` (one writer at a time), or PostgreSQL's
    /// SERIALIZABLE, where `f` runs again from the start when a concurrent
    /// transaction of any replica conflicted with it.
    pub(crate) fn write<T>(&self, mut f: impl FnMut(&Conn<'_>) -> Result<T>) -> Result<T> {
        match &self.engine {
            Engine::Sqlite(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&Conn::Lite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Engine::Postgres(pool) => db::postgres::write(pool, f),
        }
    }

    /// Like [`write`](Self::write), but on PostgreSQL the writers of one kind
    /// (`key`, an advisory lock) take turns across every replica instead of
    /// running into each other: for transactions that all update one row,
    /// such as an enrollment key's use counter during a fleet rollout.
    pub(crate) fn write_in_turn<T>(
        &self,
        key: i64,
        f: impl FnMut(&Conn<'_>) -> Result<T>,
    ) -> Result<T> {
        match &self.engine {
            Engine::Sqlite(_) => self.write(f),
            Engine::Postgres(pool) => db::postgres::write_in_turn(pool, key, f),
        }
    }

    /// Runs read-only queries that see one consistent state.
    pub(crate) fn read<T>(&self, mut f: impl FnMut(&Conn<'_>) -> Result<T>) -> Result<T> {
        match &self.engine {
            Engine::Sqlite(conn) => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let out = f(&Conn::Lite(&conn));
                out
            }
            Engine::Postgres(pool) => db::postgres::read(pool, f),
        }
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

    /// The value of `key` in `meta`, set to `make()` by the first caller: every
    /// replica that asks gets the same value.
    pub fn shared_secret(&self, key: &str, make: impl Fn() -> String) -> Result<String> {
        self.write(|tx| match get_meta(tx, key)? {
            Some(v) => Ok(v),
            None => {
                let v = make();
                set_meta(tx, key, &v)?;
                Ok(v)
            }
        })
    }
}

/// Opens a SQLite file with the store's settings: WAL, `synchronous=FULL`.
pub(crate) fn open_sqlite(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub(crate) fn get_meta(conn: &Conn<'_>, key: &str) -> Result<Option<String>> {
    conn.query_opt("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
}

pub(crate) fn set_meta(conn: &Conn<'_>, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The lease signing key lives in the database, so that one file (or one
/// PostgreSQL database shared by every replica) is the whole server state; it
/// is created on first start. Two replicas starting at once on an empty
/// database both try to create one; SERIALIZABLE lets only one commit and the
/// other, run again, loads it.
fn load_or_create_signer(conn: &Conn<'_>, now: DateTime<Utc>) -> Result<LeaseSigner> {
    let row: Option<(String, Vec<u8>)> = conn.query_opt(
        "SELECT kid, secret FROM lease_keys WHERE active = 1 ORDER BY created_at DESC LIMIT 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
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
        params![kid, key.to_bytes().to_vec(), ts(now)],
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
