//! Background work (notice checks, the usage rollup, notice mail) runs on one
//! replica at a time.
//!
//! On SQLite there is one server, which always leads. On PostgreSQL a replica
//! leads while it holds a session-level advisory lock on a connection of its
//! own; the lock goes with that connection, so when the leader dies (or loses
//! the database) PostgreSQL releases it and the next replica to ask takes
//! over. Callers ask before each round of work ([`Store::lead`]), so at most
//! one round overlaps a change of leader.

use std::sync::Mutex;

use postgres::{Client, NoTls};

use super::{Engine, Result, Store};

/// Advisory lock key of the leader ("flexlead" in ASCII).
const LEADER_LOCK: i64 = 0x666c_6578_6c65_6164;

/// The connection that holds the leader's lock, while this replica leads.
#[derive(Default)]
pub(crate) struct Leadership {
    held: Mutex<Option<Client>>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let held = self.held.get_mut().map(Option::take).unwrap_or(None);
        super::db::postgres::off_runtime(move || drop(held));
    }
}

impl Store {
    /// Whether this replica should run background work now: always on
    /// SQLite; on PostgreSQL, when it holds (or just took) the leader's lock.
    pub fn lead(&self) -> Result<bool> {
        let Engine::Postgres(pool) = self.engine() else {
            return Ok(true);
        };
        let mut held = self
            .leadership
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(client) = held.as_mut() {
            if client.simple_query("SELECT 1").is_ok() {
                return Ok(true);
            }
            tracing::warn!(
                "lost the connection that held the leader's lock; background work stops here"
            );
            *held = None;
        }
        // Named so that an operator (and the tests) can see in
        // pg_stat_activity which replica leads.
        let mut config = pool.connection_config().clone();
        config.application_name(&format!("flex-server leader pid={}", std::process::id()));
        let mut client = config.connect(NoTls)?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])?
            .get(0);
        if got {
            tracing::info!("this replica now runs the background work (notices, rollup, mail)");
            *held = Some(client);
        }
        Ok(got)
    }

    /// Gives the lead up (a clean shutdown), so another replica takes it at once.
    pub fn resign(&self) {
        let mut held = self
            .leadership
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(mut client) = held.take() {
            let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK]);
        }
    }
}
