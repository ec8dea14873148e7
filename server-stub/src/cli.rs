//! The command line of `flex-server` (the binary only parses it and serves),
//! here so that its man page is generated from it too.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// The Flex entitlement server: token ledger, assignments, claims and reports.
#[derive(Debug, Parser)]
#[command(name = "flex-server", version)]
pub struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the database (flex.db, SQLite) and the generated admin token.
    #[arg(long)]
    pub data_dir: PathBuf,
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
