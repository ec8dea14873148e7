//! The schema of each backend, as numbered migrations embedded in the binary.
//!
//! SQLite keeps its history (`migrations/0001…`), counted in `user_version`.
//! PostgreSQL starts from the schema SQLite has today
//! (`migrations/postgres/0001_init.sql`), counted in `schema_migrations`; a
//! change to the schema adds one file to each list. Replicas starting at once
//! migrate one after the other: the first takes an advisory lock, the others
//! wait for it and then find nothing left to do.

use rusqlite::Connection;

use super::db::postgres::Pool;
use super::{Result, StoreError};

/// SQLite's migrations, applied in order.
pub(crate) const SQLITE: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_enrollment_keys.sql"),
    include_str!("../../migrations/0003_reports.sql"),
    include_str!("../../migrations/0004_usage_blocks.sql"),
    include_str!("../../migrations/0005_device_users.sql"),
    include_str!("../../migrations/0006_console_sessions.sql"),
    include_str!("../../migrations/0007_refunds.sql"),
    include_str!("../../migrations/0008_enrollment_requests.sql"),
];

/// PostgreSQL's migrations, applied in order.
pub(crate) const POSTGRES: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_refunds.sql"),
    include_str!("../../migrations/postgres/0003_enrollment_requests.sql"),
];

/// Advisory lock key held while a replica migrates ("flexmig" in ASCII).
const MIGRATE_LOCK: i64 = 0x0066_6c65_786d_6967;

pub(crate) fn migrate_sqlite(conn: &Connection) -> Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in SQLITE.iter().enumerate().skip(current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub(crate) fn migrate_postgres(pool: &Pool) -> Result<()> {
    let mut conn = pool.get()?;
    let mut tx = conn.client().transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    if current as usize > POSTGRES.len() {
        return Err(StoreError::Corrupt(format!(
            "the database is at schema version {current}, newer than this flex-server \
             knows ({}): upgrade flex-server on every replica",
            POSTGRES.len()
        )));
    }
    for (i, sql) in POSTGRES.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )?;
        tracing::info!(version = i + 1, "migrated the PostgreSQL schema");
    }
    tx.commit()?;
    Ok(())
}
