//! One way to talk SQL to either backend, so every query is written once.
//!
//! The store's SQL is the dialect SQLite and PostgreSQL share: `?N`
//! placeholders (rewritten to `$N` for PostgreSQL), `ON CONFLICT … DO`,
//! `RETURNING`, times as fixed-width RFC 3339 text, integers as 64-bit, and
//! the column names PostgreSQL reserves (`"user"`, `"end"`) quoted. A store
//! function takes a [`Conn`] — a SQLite connection inside the store's
//! transaction, or a PostgreSQL transaction — and calls
//! [`execute`](Conn::execute), [`query_opt`](Conn::query_opt) and friends
//! with [`params!`]; rows are read through [`Row::get`], whatever the
//! backend's column types. Which transaction a call runs in, how it retries
//! and how connections are pooled is each backend's business (`sqlite.rs`,
//! `postgres.rs`).

pub(crate) mod postgres;
pub(crate) mod sqlite;

use super::{Result, StoreError};

/// Which engine holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A borrowed SQL value, as both drivers take and give them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// Something that can be a query parameter.
pub trait Param {
    fn value(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                // Counts and ids in this store stay far below i64::MAX.
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, u64, usize);

impl Param for bool {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

macro_rules! id_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Text(self.as_str())
            }
        }

        impl FromCol for $t {
            fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
                match v {
                    Value::Text(s) => <$t>::parse(s).map_err(|e| e.to_string()),
                    v => Err(wrong(v, "text")),
                }
            }
        }
    )*};
}
id_param!(
    flex_protocol::ProductId,
    flex_protocol::ClaimId,
    flex_protocol::SessionId,
    flex_protocol::WindowId
);

impl Param for flex_protocol::Email {
    fn value(&self) -> Value<'_> {
        Value::Text(self.as_str())
    }
}

/// A stored email must already be in the normal form it was written in: one
/// that is not (written around the store, or damaged) is reported, not
/// silently lowercased into a user no query would find.
impl FromCol for flex_protocol::Email {
    fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => match flex_protocol::Email::parse(s) {
                Ok(e) if e.as_str() == s => Ok(e),
                Ok(_) => Err(format!("stored email '{s}' is not trimmed and lowercase")),
                Err(e) => Err(format!("stored {e}")),
            },
            v => Err(wrong(v, "text")),
        }
    }
}

impl Param for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl Param for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}

impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        match self {
            Some(v) => v.value(),
            None => Value::Null,
        }
    }
}

impl Param for Value<'_> {
    fn value(&self) -> Value<'_> {
        *self
    }
}

/// `params![a, b]`: the parameters `?1`, `?2` of a query.
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::db::Param] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::Param),+] as &[&dyn $crate::store::db::Param] };
}
pub(crate) use params;

/// A type a column can be read as.
pub trait FromCol: Sized {
    fn from_col(v: Value<'_>) -> std::result::Result<Self, String>;
}

fn wrong(v: Value<'_>, want: &str) -> String {
    format!("expected {want}, found {v:?}")
}

macro_rules! int_col {
    ($($t:ty),*) => {$(
        impl FromCol for $t {
            fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
                match v {
                    Value::Int(n) => <$t>::try_from(n)
                        .map_err(|_| format!("{n} does not fit {}", stringify!($t))),
                    v => Err(wrong(v, "an integer")),
                }
            }
        }
    )*};
}
int_col!(i64, i32, u32, u16, u64, usize);

impl FromCol for bool {
    fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Int(n) => Ok(n != 0),
            v => Err(wrong(v, "a boolean")),
        }
    }
}

impl FromCol for f64 {
    fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Real(x) => Ok(x),
            Value::Int(n) => Ok(n as f64),
            v => Err(wrong(v, "a number")),
        }
    }
}

impl FromCol for String {
    fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.to_owned()),
            v => Err(wrong(v, "text")),
        }
    }
}

impl FromCol for Vec<u8> {
    fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.to_vec()),
            v => Err(wrong(v, "bytes")),
        }
    }
}

impl<T: FromCol> FromCol for Option<T> {
    fn from_col(v: Value<'_>) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_col(v).map(Some),
        }
    }
}

/// One row of a result, read by column index.
pub enum Row<'r> {
    Lite(&'r rusqlite::Row<'r>),
    Pg(&'r ::postgres::Row),
}

impl Row<'_> {
    /// The raw value of column `i`.
    pub fn value(&self, i: usize) -> Result<Value<'_>> {
        match self {
            Row::Lite(r) => sqlite::value(r, i),
            Row::Pg(r) => postgres::value(r, i),
        }
    }

    pub fn get<T: FromCol>(&self, i: usize) -> Result<T> {
        T::from_col(self.value(i)?).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
    }

    /// Column `i` as text, borrowed from the row.
    pub fn str(&self, i: usize) -> Result<&str> {
        match self.value(i)? {
            Value::Text(s) => Ok(s),
            v => Err(StoreError::Corrupt(format!(
                "column {i}: {}",
                wrong(v, "text")
            ))),
        }
    }

    /// Column `i` as text or NULL, borrowed from the row.
    pub fn opt_str(&self, i: usize) -> Result<Option<&str>> {
        match self.value(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            v => Err(StoreError::Corrupt(format!(
                "column {i}: {}",
                wrong(v, "text")
            ))),
        }
    }

    /// Column `i` as bytes, borrowed from the row.
    pub fn blob(&self, i: usize) -> Result<&[u8]> {
        match self.value(i)? {
            Value::Blob(b) => Ok(b),
            v => Err(StoreError::Corrupt(format!(
                "column {i}: {}",
                wrong(v, "bytes")
            ))),
        }
    }
}

/// A connection inside the transaction a store call runs in.
pub enum Conn<'a> {
    Lite(&'a rusqlite::Connection),
    Pg(postgres::Tx<'a>),
}

impl Conn<'_> {
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Lite(_) => Backend::Sqlite,
            Conn::Pg(_) => Backend::Postgres,
        }
    }

    /// Runs a statement; returns the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<usize> {
        match self {
            Conn::Lite(c) => sqlite::execute(c, sql, params),
            Conn::Pg(tx) => tx.execute(sql, params),
        }
    }

    /// Calls `f` on each row of a query, in order.
    pub fn query_each(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<()>,
    ) -> Result<()> {
        match self {
            Conn::Lite(c) => sqlite::query_each(c, sql, params, &mut f),
            Conn::Pg(tx) => tx.query_each(sql, params, &mut f),
        }
    }

    /// Every row of a query, each mapped by `f`.
    pub fn query_all<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_each(sql, params, |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query, if any, mapped by `f`.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each(sql, params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query that always returns one.
    pub fn query_one<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "no row from: {}",
                sql.split_whitespace().collect::<Vec<_>>().join(" ")
            ))
        })
    }

    /// Runs several statements without parameters (DDL, savepoints).
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Lite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(tx) => tx.batch(sql),
        }
    }

    /// Makes sure every transaction that inserted into `table` before this one
    /// has ended, and none can insert until this one does, so the rows this
    /// transaction sees are all there will ever be below the largest id it
    /// sees. SQLite has one writer at a time, so this holds already; on
    /// PostgreSQL ids from a sequence may commit out of order.
    pub fn settle_inserts(&self, table: &str) -> Result<()> {
        match self {
            Conn::Lite(_) => Ok(()),
            Conn::Pg(tx) => tx.batch(&format!("LOCK TABLE {table} IN SHARE MODE")),
        }
    }
}

/// `?N` placeholders as PostgreSQL writes them (`$N`); text in quotes is kept.
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT '?1', x FROM t WHERE a = ?1 AND b = ?12 AND c = ?"),
            "SELECT '?1', x FROM t WHERE a = $1 AND b = $12 AND c = ?"
        );
    }

    #[test]
    fn columns_convert_or_name_what_was_found() {
        assert_eq!(u32::from_col(Value::Int(7)), Ok(7));
        assert!(u32::from_col(Value::Int(-1)).unwrap_err().contains("-1"));
        assert_eq!(Option::<String>::from_col(Value::Null), Ok(None));
        assert!(String::from_col(Value::Int(3))
            .unwrap_err()
            .contains("expected text"));
        assert_eq!(bool::from_col(Value::Int(1)), Ok(true));
    }

    #[test]
    fn stored_emails_are_read_only_in_their_normal_form() {
        use flex_protocol::Email;
        assert_eq!(
            Email::from_col(Value::Text("ada@example.com")),
            Ok(Email::parse("ada@example.com").unwrap())
        );
        assert_eq!(
            Email::from_col(Value::Text("Ada@example.com")).unwrap_err(),
            "stored email 'Ada@example.com' is not trimmed and lowercase"
        );
        assert_eq!(
            Email::from_col(Value::Text("nope")).unwrap_err(),
            "stored 'nope' is not an email address"
        );
    }
}
