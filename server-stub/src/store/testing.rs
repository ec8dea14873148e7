//! Test support: the backends a store test runs on.
//!
//! Every store test runs once on SQLite (a file in a fresh directory) and
//! once on PostgreSQL (a fresh database in the cluster named by
//! `FLEX_TEST_DATABASE_URL`, dropped afterwards). `tests/run.sh` and CI start
//! a throwaway cluster (`tests/support/pg-cluster.sh`) and set
//! `FLEX_REQUIRE_POSTGRES=1`, which turns a missing or unreachable cluster
//! into a test failure. A plain `cargo test` without the variable runs the
//! SQLite half and says on stderr that PostgreSQL was left out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Database, Store};
use crate::clock::Clock;
use crate::config::PolicyConfig;
use crate::rates::RateSheet;

/// The cluster tests create their databases in (a connection string).
pub const URL_ENV: &str = "FLEX_TEST_DATABASE_URL";
/// Set to 1 where a test without PostgreSQL must fail instead of running SQLite only.
pub const REQUIRE_ENV: &str = "FLEX_REQUIRE_POSTGRES";

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        use rand::Rng;
        let name = format!("flex-test-{:016x}", rand::thread_rng().gen::<u64>());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty PostgreSQL database, dropped when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

/// `url` (a `postgres://` URL or key=value settings) naming database `name`.
pub fn with_dbname(url: &str, name: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let (base, query) = match rest.find('?') {
            Some(q) => (&rest[..q], &rest[q..]),
            None => (rest, ""),
        };
        let authority = base.split('/').next().unwrap_or("");
        format!("{scheme}{authority}/{name}{query}")
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        format!("{} dbname={name}", kept.join(" "))
    }
}

/// Whether this run must include PostgreSQL.
pub fn postgres_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

impl TestDatabase {
    /// A new database in the test cluster, or None when no cluster is
    /// configured and none is required (said once on stderr).
    pub fn create() -> Option<TestDatabase> {
        let admin = match std::env::var(URL_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                assert!(
                    !postgres_required(),
                    "{REQUIRE_ENV}=1 but {URL_ENV} is not set: start a cluster with \
                     tests/support/pg-cluster.sh and export its connection string"
                );
                static SAID: std::sync::Once = std::sync::Once::new();
                // Straight to the process's stderr: the test harness captures
                // eprintln!, and this must be seen.
                SAID.call_once(|| {
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "note: {URL_ENV} is not set: store tests run on SQLite only \
                         (tests/run.sh runs them on PostgreSQL too)"
                    );
                });
                return None;
            }
        };
        Some(TestDatabase::create_in(&admin))
    }

    /// A new database in the cluster at `admin`; panics if it cannot.
    pub fn create_in(admin: &str) -> TestDatabase {
        use rand::Rng;
        let name = format!("flex_test_{:016x}", rand::thread_rng().gen::<u64>());
        admin_sql(admin, &format!("CREATE DATABASE {name} TEMPLATE template0"))
            .unwrap_or_else(|e| panic!("cannot create test database {name} in {admin}: {e}"));
        TestDatabase {
            url: with_dbname(admin, &name),
            admin: admin.to_string(),
            name,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = admin_sql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Runs `sql` on the cluster, on a thread of its own: the blocking client must
/// not run on an async test's runtime.
fn admin_sql(admin: &str, sql: &str) -> Result<(), postgres::Error> {
    std::thread::scope(|s| {
        s.spawn(|| postgres::Client::connect(admin, postgres::NoTls)?.batch_execute(sql))
            .join()
            .expect("the admin connection's thread")
    })
}

/// One place a test's store lives; the files or the database go when dropped.
#[derive(Debug)]
pub struct TestBackend {
    pub database: Database,
    _dir: Option<TempDir>,
    _db: Option<TestDatabase>,
}

impl TestBackend {
    pub fn sqlite() -> TestBackend {
        let dir = TempDir::new();
        TestBackend {
            database: Database::Sqlite {
                data_dir: dir.path().to_path_buf(),
            },
            _dir: Some(dir),
            _db: None,
        }
    }

    pub fn postgres() -> Option<TestBackend> {
        let db = TestDatabase::create()?;
        Some(TestBackend {
            database: Database::Postgres {
                url: db.url().to_string(),
            },
            _dir: None,
            _db: Some(db),
        })
    }

    pub fn name(&self) -> &'static str {
        self.database.backend().name()
    }

    pub fn open(&self, clock: Arc<dyn Clock>, policy: PolicyConfig, rates: RateSheet) -> Store {
        Store::open_at(&self.database, clock, policy, rates)
            .unwrap_or_else(|e| panic!("open a {} store: {e}", self.name()))
    }
}

/// SQLite, and PostgreSQL when the test cluster is there (see the module docs).
pub fn backends() -> Vec<TestBackend> {
    let mut out = vec![TestBackend::sqlite()];
    out.extend(TestBackend::postgres());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_name_replaces_the_one_in_the_url() {
        assert_eq!(
            with_dbname("postgres://u:p@db:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@db:5432/t1?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://db", "t1"), "postgres://db/t1");
        assert_eq!(
            with_dbname("host=/tmp/pg user=postgres dbname=postgres", "t1"),
            "host=/tmp/pg user=postgres dbname=t1"
        );
    }
}
