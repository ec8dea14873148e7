//! The SQLite side of [`Conn`](super::Conn): cached statements on the store's
//! one connection. Transactions, the group commit of claims and migrations
//! stay in `store/mod.rs` and `store/claims.rs`, which own the connection.

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{Param, Row, Value};
use crate::store::{Result, StoreError};

struct Arg<'a>(Value<'a>);

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(n),
            Value::Real(x) => ValueRef::Real(x),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn args<'a>(params: &'a [&'a dyn Param]) -> Vec<Arg<'a>> {
    params.iter().map(|p| Arg(p.value())).collect()
}

pub(crate) fn execute(c: &rusqlite::Connection, sql: &str, params: &[&dyn Param]) -> Result<usize> {
    let mut stmt = c.prepare_cached(sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(args(params)))?)
}

pub(crate) fn query_each(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[&dyn Param],
    f: &mut dyn FnMut(&Row<'_>) -> Result<()>,
) -> Result<()> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args(params)))?;
    while let Some(r) = rows.next()? {
        f(&Row::Lite(r))?;
    }
    Ok(())
}

pub(crate) fn value<'r>(r: &'r rusqlite::Row<'r>, i: usize) -> Result<Value<'r>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| StoreError::Corrupt(format!("column {i} is not UTF-8: {e}")))?,
        ),
        ValueRef::Blob(b) => Value::Blob(b),
    })
}
