//! Backups and moves of the ledger: `flex-server backup`, `restore` and
//! `migrate`.
//!
//! A backup is SQLite's online backup of `flex.db`, copied in one step so it
//! is one consistent moment even while the server writes, to a temporary file
//! that is checked (`integrity_check`) and then renamed over the target. A
//! restore checks the backup the same way, refuses while a server holds the
//! data directory (the lock in [`DirLock`]), keeps the ledger it replaces as
//! `flex.db.before-restore-TIME` and puts the backup in place. A migration
//! copies every table of a SQLite ledger into an empty PostgreSQL database in
//! one transaction, so a failed one leaves the database empty.
//!
//! The PostgreSQL side has its own tools for backups (`pg_dump`, streaming
//! replication); install/README.md shows them.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::Utc;
use rusqlite::{Connection, OpenFlags};

use crate::store::db::{self, params, Conn, Value};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("there is no ledger at {0}: check --data-dir")]
    NoLedger(PathBuf),
    #[error("{path} is not a usable Flex ledger: {why}")]
    NotALedger { path: PathBuf, why: String },
    #[error(
        "a flex-server is running on {0}: stop it first (systemctl stop flex-server), then \
         run this again"
    )]
    InUse(PathBuf),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the PostgreSQL database already holds a ledger ({0}): migrate into a new, empty \
         database"
    )]
    NotEmpty(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The exclusive lock a server holds on its SQLite data directory while it
/// runs (`DATA_DIR/flex.lock`); released by the kernel when it exits, even on
/// kill -9.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, or says that a server holds it.
    pub fn take(data_dir: &Path) -> Result<DirLock, BackupError> {
        use std::os::unix::io::AsRawFd;
        let path = data_dir.join("flex.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(BackupError::InUse(data_dir.to_path_buf()));
            }
            return Err(io("lock", &path)(e));
        }
        Ok(DirLock { _file: file })
    }
}

/// What a ledger file holds, for the summary lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSummary {
    pub charges: u64,
    pub tokens_charged: u64,
    pub balance: u64,
}

impl LedgerSummary {
    pub fn describe(&self, path: &Path) -> String {
        format!(
            "{}: {} charges ({} tokens), balance {} tokens",
            path.display(),
            self.charges,
            self.tokens_charged,
            self.balance
        )
    }
}

fn summarize(conn: &Conn<'_>) -> Result<LedgerSummary, StoreError> {
    let (charges, tokens_charged) = conn.query_one(
        "SELECT COUNT(*), CAST(COALESCE(SUM(tokens), 0) AS BIGINT) FROM charges",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let lots = crate::store::load_lots(conn)?;
    Ok(LedgerSummary {
        charges,
        tokens_charged,
        balance: crate::ledger::balance(&lots, Utc::now()),
    })
}

/// Checks that `path` is a whole Flex ledger this server can open.
fn check_ledger(path: &Path) -> Result<LedgerSummary, BackupError> {
    let not = |why: String| BackupError::NotALedger {
        path: path.to_path_buf(),
        why,
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| not(e.to_string()))?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| not(e.to_string()))?;
    if verdict != "ok" {
        return Err(not(format!("integrity check: {verdict}")));
    }
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| not(e.to_string()))?;
    let known = crate::store::schema_versions().0;
    if version == 0 || version > known {
        return Err(not(format!(
            "schema version {version}; this flex-server reads 1 to {known}"
        )));
    }
    let summary = summarize(&Conn::Lite(&conn)).map_err(|e| not(e.to_string()));
    summary
}

/// Copies `from` (a SQLite file, possibly in use) to `to` in one step, through
/// a temporary file beside `to`, and returns the copy's path once renamed.
fn copy_sqlite(from: &Path, to: &Path) -> Result<(), BackupError> {
    let tmp = to.with_extension(format!("partial-{}", std::process::id()));
    let copy = |source| BackupError::Copy {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(copy)?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(copy)?;
    {
        let mut dst = Connection::open(&tmp).map_err(copy)?;
        let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(copy)?;
        // All pages in one step: one read transaction, one moment of the ledger.
        loop {
            use rusqlite::backup::StepResult;
            match b.step(-1).map_err(copy)? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", &tmp))?;
    if let Err(e) = check_ledger(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, to).map_err(io("rename the copy to", to))?;
    Ok(())
}

/// `flex-server backup`: a consistent copy of `DATA_DIR/flex.db` at `to`.
pub fn backup(data_dir: &Path, to: &Path) -> Result<LedgerSummary, BackupError> {
    let db = data_dir.join("flex.db");
    if !db.exists() {
        return Err(BackupError::NoLedger(db));
    }
    copy_sqlite(&db, to)?;
    check_ledger(to)
}

/// `flex-server restore`: `from` becomes the ledger of `data_dir`.
pub fn restore(data_dir: &Path, from: &Path) -> Result<String, BackupError> {
    let summary = check_ledger(from)?;
    std::fs::create_dir_all(data_dir).map_err(io("create", data_dir))?;
    let _lock = DirLock::take(data_dir)?;
    let db = data_dir.join("flex.db");
    let mut kept = None;
    if db.exists() {
        // The current ledger, WAL folded in, is kept beside the restored one.
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let old = data_dir.join(format!("flex.db.before-restore-{stamp}"));
        copy_sqlite(&db, &old)?;
        kept = Some(old);
    }
    let incoming = data_dir.join("flex.db.restoring");
    copy_sqlite(from, &incoming)?;
    for side in ["flex.db-wal", "flex.db-shm"] {
        let p = data_dir.join(side);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &p)(e)),
        }
    }
    std::fs::rename(&incoming, &db).map_err(io("put the backup in place at", &db))?;
    let mut out = format!("restored {}", summary.describe(&db));
    if let Some(old) = kept {
        out.push_str(&format!("; the ledger it replaced is in {}", old.display()));
    }
    Ok(out)
}

/// The tables a migration copies, parents before children (a renewal's
/// window after the one it renews: in insertion order), and whether the
/// PostgreSQL table has a `rowid` column standing for SQLite's implicit one.
/// The rollup's WITHOUT ROWID tables are copied in key order.
const TABLES: &[(&str, bool)] = &[
    ("meta", false),
    ("users", false),
    ("subscriptions", false),
    ("default_assignments", false),
    ("lots", false),
    ("windows", false),
    ("charges", false),
    ("charge_lots", true),
    ("window_grants", false),
    ("refunds", false),
    ("refund_lots", false),
    ("refund_answers", false),
    ("claims", false),
    ("notices", false),
    ("lease_keys", false),
    ("enrollment_keys", true),
    ("devices", true),
    ("enrollment_requests", false),
    ("sessions", false),
    ("clock_rollbacks", false),
    ("notice_mail", false),
    ("usage_pairs", false),
    ("usage_days", false),
    ("usage_weeks", false),
    ("device_user_days", false),
    ("device_user_alerts", false),
    ("console_sessions", false),
];

/// Tables SQLite keeps WITHOUT ROWID.
const WITHOUT_ROWID: &[&str] = &[
    "window_grants",
    "usage_days",
    "usage_weeks",
    "device_user_days",
    "device_user_alerts",
];

/// Identity columns whose sequences continue after the copied rows.
const SEQUENCES: &[(&str, &str)] = &[
    ("lots", "id"),
    ("charges", "id"),
    ("charge_lots", "rowid"),
    ("refunds", "id"),
    ("notices", "id"),
    ("enrollment_keys", "rowid"),
    ("devices", "rowid"),
    ("clock_rollbacks", "id"),
    ("usage_pairs", "id"),
];

/// An owned copy of a value on its way from one database to the other.
enum Owned {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl db::Param for Owned {
    fn value(&self) -> Value<'_> {
        match self {
            Owned::Null => Value::Null,
            Owned::Int(n) => Value::Int(*n),
            Owned::Real(x) => Value::Real(*x),
            Owned::Text(s) => Value::Text(s),
            Owned::Blob(b) => Value::Blob(b),
        }
    }
}

fn owned(v: Value<'_>) -> Owned {
    match v {
        Value::Null => Owned::Null,
        Value::Int(n) => Owned::Int(n),
        Value::Real(x) => Owned::Real(x),
        Value::Text(s) => Owned::Text(s.to_owned()),
        Value::Blob(b) => Owned::Blob(b.to_vec()),
    }
}

/// `flex-server migrate`: the SQLite ledger of `data_dir` into the empty
/// PostgreSQL database at `url`.
pub fn migrate(data_dir: &Path, url: &str) -> Result<String, BackupError> {
    let path = data_dir.join("flex.db");
    if !path.exists() {
        return Err(BackupError::NoLedger(path));
    }
    // A server still writing would write past the copy.
    let _lock = DirLock::take(data_dir)?;
    // Brings the file to the current schema first, as a start would.
    let lite = crate::store::open_sqlite(&path)?;
    crate::store::migrate_sqlite(&lite)?;
    let before = summarize(&Conn::Lite(&lite))?;
    let pool = db::postgres::pool(url, 1)?;
    crate::store::migrate_postgres(&pool)?;
    let token = std::fs::read_to_string(data_dir.join("admin-token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let mut copied = Vec::new();
    let after = db::postgres::write(&pool, |pg| {
        copied.clear();
        for table in ["lease_keys", "users", "lots", "charges", "devices"] {
            let n: i64 =
                pg.query_one(&format!("SELECT COUNT(*) FROM {table}"), params![], |r| {
                    r.get(0)
                })?;
            if n > 0 {
                return Err(StoreError::Conflict(format!("{n} rows in {table}")));
            }
        }
        // The one row every schema starts with.
        pg.execute("DELETE FROM default_assignments", params![])?;
        for &(table, rowid) in TABLES {
            let columns = Conn::Lite(&lite).query_all(
                &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
                params![],
                |r| Ok(format!("\"{}\"", r.str(0)?)),
            )?;
            let mut cols = columns.join(", ");
            if rowid {
                cols = format!("rowid, {cols}");
            }
            let n = columns.len() + usize::from(rowid);
            let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
            let insert = format!("INSERT INTO {table} ({cols}) VALUES ({})", marks.join(", "));
            let mut rows = 0u64;
            let mut pending: Vec<Vec<Owned>> = Vec::new();
            Conn::Lite(&lite).query_each(
                &format!(
                    "SELECT {cols} FROM {table} ORDER BY {}",
                    if WITHOUT_ROWID.contains(&table) {
                        "1, 2"
                    } else {
                        "rowid"
                    }
                ),
                params![],
                |r| {
                    pending.push(
                        (0..n)
                            .map(|i| r.value(i).map(owned))
                            .collect::<Result<_, _>>()?,
                    );
                    Ok(())
                },
            )?;
            for row in &pending {
                let args: Vec<&dyn db::Param> = row.iter().map(|v| v as &dyn db::Param).collect();
                pg.execute(&insert, &args)?;
                rows += 1;
            }
            copied.push(format!("{table} {rows}"));
        }
        for (table, column) in SEQUENCES {
            pg.query_one(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                                   COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
                ),
                params![],
                |_| Ok(()),
            )?;
        }
        if let Some(t) = &token {
            crate::store::set_meta(pg, "admin_token", t)?;
        }
        summarize(pg)
    })
    .map_err(|e| match e {
        StoreError::Conflict(what) => BackupError::NotEmpty(what),
        e => BackupError::Store(e),
    })?;
    if after.charges != before.charges || after.tokens_charged != before.tokens_charged {
        return Err(BackupError::NotALedger {
            path,
            why: format!("the copy differs: {before:?} became {after:?}"),
        });
    }
    Ok(format!(
        "migrated {} into {} (rows: {}){}",
        before.describe(&path),
        db::postgres::redact(url),
        copied.join(", "),
        if token.is_some() {
            "; the admin token came along"
        } else {
            ""
        }
    ))
}
