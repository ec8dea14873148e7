//! The PostgreSQL side of [`Conn`](super::Conn): a pool of connections, each
//! with its prepared statements, and SERIALIZABLE transactions retried when
//! PostgreSQL reports that a concurrent one (on this replica or another) got
//! in the way.
//!
//! SERIALIZABLE makes every store call behave as if the calls of all replicas
//! ran one at a time — the property SQLite's single writer gives for free —
//! so the rules need no locking of their own: two replicas answering the same
//! claim id, or charging the last tokens of a lot, cannot both commit; the
//! loser is rolled back with SQLSTATE 40001 and run again from the start, and
//! then sees what the winner wrote.

use std::collections::HashMap;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, IsolationLevel, NoTls, Statement};

use super::{dollar_placeholders, Conn, Param, Row, Value};
use crate::store::{Result, StoreError};

/// Attempts of one store call before a serialization failure is returned.
const ATTEMPTS: u32 = 60;
/// Connections per replica; claims beyond this wait for a free one.
pub const DEFAULT_POOL: u32 = 16;
/// How long a call waits for a free connection before it fails.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// One pooled connection and the statements prepared on it.
pub struct PgConnection {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl PgConnection {
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Opens connections for the pool.
pub struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<PgConnection, postgres::Error> {
        Ok(PgConnection {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("")?;
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.client.is_closed()
    }
}

/// The pool, and the settings it connects with (for connections of its own,
/// such as the leader's).
pub struct Pool {
    /// Always Some; taken only when the pool is dropped.
    pool: Option<r2d2::Pool<Manager>>,
    config: postgres::Config,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let pool = self.pool.take();
        off_runtime(move || drop(pool));
    }
}

/// Runs `f` (which may block on PostgreSQL's client, as closing a connection
/// does) on a thread of its own when called on an async runtime's thread.
pub(crate) fn off_runtime(f: impl FnOnce() + Send) {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(f);
        });
    } else {
        f();
    }
}

impl Pool {
    pub fn connection_config(&self) -> &postgres::Config {
        &self.config
    }

    pub(crate) fn get(&self) -> Result<r2d2::PooledConnection<Manager>> {
        self.pool
            .as_ref()
            .expect("the pool until dropped")
            .get()
            .map_err(|e| StoreError::Unavailable(format!("no database connection: {e}")))
    }
}

/// The parsed connection settings of a `postgres://` URL (or key=value string).
pub fn config(url: &str) -> Result<postgres::Config> {
    url.parse::<postgres::Config>().map_err(|e| {
        StoreError::invalid(
            "database_url",
            format!(
                "database url '{}' is not a PostgreSQL connection string: {e}",
                redact(url)
            ),
        )
    })
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub fn pool(url: &str, size: u32) -> Result<Pool> {
    let mut config = config(url)?;
    if config.get_application_name().is_none() {
        config.application_name("flex-server");
    }
    let pool = r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(CHECKOUT_TIMEOUT)
        .build(Manager {
            config: config.clone(),
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to {}: {e}", redact(url))))?;
    Ok(Pool {
        pool: Some(pool),
        config,
    })
}

fn checkout(pool: &Pool) -> Result<r2d2::PooledConnection<Manager>> {
    pool.get()
}

/// PostgreSQL's own message (its `Display` says only "db error").
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut out = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                out.push_str(": ");
                out.push_str(&s.to_string());
                source = s.source();
            }
            out
        }
    }
}

/// Whether PostgreSQL rolled a transaction back because a concurrent one won:
/// running it again from the start is safe and will see the winner's writes.
pub(crate) fn is_conflict(e: &StoreError) -> bool {
    let StoreError::Postgres(e) = e else {
        return false;
    };
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            // Two replicas inserting the same key at once: the retry reads the
            // row the other wrote (a claim id answers with the stored answer).
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// Runs `f` in a SERIALIZABLE transaction, again from the start after a
/// conflict, and commits once it returns Ok.
pub(crate) fn write<T>(pool: &Pool, mut f: impl FnMut(&Conn<'_>) -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        let mut conn = checkout(pool)?;
        let outcome = run(&mut conn, IsolationLevel::Serializable, false, &mut f);
        match outcome {
            Err(e) if is_conflict(&e) && attempt + 1 < ATTEMPTS => {
                drop(conn);
                attempt += 1;
                backoff(attempt);
            }
            other => return other,
        }
    }
}

/// Like [`write`], holding the session-level advisory lock `key` around the
/// transaction, taken before it starts (so its snapshot is taken after the
/// previous holder committed): writers of the same kind on every replica take
/// turns instead of running into each other and starting again.
/// SERIALIZABLE still keeps them correct against every other writer. The lock
/// goes with the connection if this process dies.
pub(crate) fn write_in_turn<T>(
    pool: &Pool,
    key: i64,
    mut f: impl FnMut(&Conn<'_>) -> Result<T>,
) -> Result<T> {
    let mut attempt = 0;
    loop {
        let mut conn = checkout(pool)?;
        conn.client
            .execute("SELECT pg_advisory_lock($1)", &[&key])?;
        let outcome = run(&mut conn, IsolationLevel::Serializable, false, &mut f);
        // A failed unlock means a broken connection, which r2d2 then drops,
        // and PostgreSQL releases the lock with it.
        let _ = conn
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&key]);
        match outcome {
            Err(e) if is_conflict(&e) && attempt + 1 < ATTEMPTS => {
                drop(conn);
                attempt += 1;
                backoff(attempt);
            }
            other => return other,
        }
    }
}

/// Runs `f` in a read-only REPEATABLE READ transaction: one consistent
/// snapshot, and never a serialization failure.
pub(crate) fn read<T>(pool: &Pool, mut f: impl FnMut(&Conn<'_>) -> Result<T>) -> Result<T> {
    let mut conn = checkout(pool)?;
    run(&mut conn, IsolationLevel::RepeatableRead, true, &mut f)
}

fn run<T>(
    conn: &mut PgConnection,
    level: IsolationLevel,
    read_only: bool,
    f: &mut dyn FnMut(&Conn<'_>) -> Result<T>,
) -> Result<T> {
    let PgConnection { client, statements } = conn;
    let tx = client
        .build_transaction()
        .isolation_level(level)
        .read_only(read_only)
        .start()?;
    let c = Conn::Pg(Tx {
        tx: std::cell::RefCell::new(tx),
        statements: std::cell::RefCell::new(statements),
    });
    let out = f(&c)?;
    let Conn::Pg(tx) = c else { unreachable!() };
    tx.tx.into_inner().commit()?;
    Ok(out)
}

/// A short random pause that grows with the attempts, so that the replicas
/// that lost a conflict do not all come back at the same instant.
fn backoff(attempt: u32) {
    use rand::Rng;
    let cap_ms = 1u64 << attempt.min(6);
    let ms = rand::thread_rng().gen_range(0..=cap_ms);
    std::thread::sleep(Duration::from_micros(200 + ms * 1000));
}

/// A PostgreSQL transaction seen through [`Conn`].
pub struct Tx<'a> {
    tx: std::cell::RefCell<postgres::Transaction<'a>>,
    statements: std::cell::RefCell<&'a mut HashMap<String, Statement>>,
}

impl Tx<'_> {
    fn statement(&self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.borrow_mut().prepare(&dollar_placeholders(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(crate) fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<usize> {
        let stmt = self.statement(sql)?;
        let args = args(params);
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        Ok(self.tx.borrow_mut().execute(&stmt, &refs)? as usize)
    }

    pub(crate) fn query_each(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: &mut dyn FnMut(&Row<'_>) -> Result<()>,
    ) -> Result<()> {
        let stmt = self.statement(sql)?;
        let args = args(params);
        let refs: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        let rows = self.tx.borrow_mut().query(&stmt, &refs)?;
        for r in &rows {
            f(&Row::Pg(r))?;
        }
        Ok(())
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.tx.borrow_mut().batch_execute(sql)?)
    }
}

/// A parameter, converted to whatever type PostgreSQL inferred for it.
#[derive(Debug)]
struct Arg<'a>(Value<'a>);

fn args<'a>(params: &'a [&'a dyn Param]) -> Vec<Arg<'a>> {
    params.iter().map(|p| Arg(p.value())).collect()
}

impl ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
                Type::BOOL => (n != 0).to_sql(ty, out),
                Type::FLOAT8 => (n as f64).to_sql(ty, out),
                _ => Err(format!("integer {n} for a {ty} parameter").into()),
            },
            Value::Real(x) => match *ty {
                Type::FLOAT8 => x.to_sql(ty, out),
                Type::FLOAT4 => (x as f32).to_sql(ty, out),
                _ => Err(format!("number {x} for a {ty} parameter").into()),
            },
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

pub(crate) fn value<'r>(r: &'r postgres::Row, i: usize) -> Result<Value<'r>> {
    let ty = r
        .columns()
        .get(i)
        .ok_or_else(|| StoreError::Corrupt(format!("no column {i}")))?
        .type_()
        .clone();
    let v = match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)?
            .map(|n| Value::Int(n.into())),
        Type::INT2 => r
            .try_get::<_, Option<i16>>(i)?
            .map(|n| Value::Int(n.into())),
        Type::BOOL => r
            .try_get::<_, Option<bool>>(i)?
            .map(|b| Value::Int(b.into())),
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            r.try_get::<_, Option<&str>>(i)?.map(Value::Text)
        }
        Type::BYTEA => r.try_get::<_, Option<&[u8]>>(i)?.map(Value::Blob),
        other => {
            return Err(StoreError::Corrupt(format!(
                "column {i} has type {other}, which the store does not read"
            )))
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_left_out_of_messages() {
        assert_eq!(
            redact("postgres://flex:s3cret@db.example.com/flex"),
            "postgres://flex:***@db.example.com/flex"
        );
        assert_eq!(redact("postgres://flex@db/flex"), "postgres://flex@db/flex");
        assert_eq!(redact("host=/tmp user=x"), "host=/tmp user=x");
    }
}
