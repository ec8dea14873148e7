//! The command line of `flex-server` (the binary only parses it and serves),
//! here so that its man page is generated from it too.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The Flex entitlement server: token ledger, assignments, claims and reports.
///
/// Without a command it serves; `backup`, `restore` and `migrate` look after
/// the ledger.
#[derive(Debug, Parser)]
#[command(
    name = "flex-server",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the database (flex.db, SQLite) and the generated admin token.
    #[arg(long, required = true)]
    pub data_dir: Option<PathBuf>,
    /// Keep the ledger in PostgreSQL instead of SQLite, e.g.
    /// postgres://flex@db.example.com/flex; any number of servers may share it.
    #[arg(long, env = "FLEX_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// TOML configuration (policy, admin token, production flag).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Let PUT /v1/admin/test-clock set the server's time (never in production).
    #[arg(long)]
    pub test_clock: bool,
    /// PEM certificate chain; serves HTTPS together with --tls-key.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Rate sheet (TOML) replacing the shipped sample rates.
    #[arg(long)]
    pub rates: Option<PathBuf>,
}

/// What to do instead of serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy the SQLite ledger of a server, running or not, to FILE: one
    /// consistent moment, through SQLite's online backup.
    Backup {
        /// The server's data directory (holding flex.db).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where to write the copy; replaced atomically if it exists.
        #[arg(long)]
        to: PathBuf,
    },
    /// Put a backup in place of the ledger in DATA_DIR. Stop the server
    /// first; the ledger it replaces is kept beside it.
    Restore {
        #[arg(long)]
        data_dir: PathBuf,
        /// A file written by `flex-server backup`.
        #[arg(long)]
        from: PathBuf,
    },
    /// Copy the SQLite ledger in DATA_DIR into an empty PostgreSQL database,
    /// with every balance, charge, lease key, enrollment and the admin token.
    Migrate {
        #[arg(long)]
        data_dir: PathBuf,
        /// The PostgreSQL database to fill, e.g. postgres://flex@db/flex.
        #[arg(long, env = "FLEX_DATABASE_URL", hide_env_values = true)]
        to_database_url: String,
    },
}
