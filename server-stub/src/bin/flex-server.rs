//! `flex-server`: the entitlement server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use flex_server::server::{prepare, serve, ServerOptions};

/// The Flex entitlement server: token ledger, assignments, claims and reports.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory for the database and the generated admin token.
    #[arg(long)]
    data_dir: PathBuf,
    /// TOML configuration (policy, admin token, production flag).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Let PUT /v1/admin/test-clock set the server's time (never in production).
    #[arg(long)]
    test_clock: bool,
    /// PEM certificate chain; serves HTTPS together with --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Rate sheet (TOML) replacing the shipped sample rates.
    #[arg(long)]
    rates: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let prepared = prepare(&ServerOptions {
        listen: a.listen,
        data_dir: a.data_dir,
        config: a.config,
        test_clock: a.test_clock,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        rates: a.rates,
    })?;
    serve(prepared).await?;
    Ok(())
}
