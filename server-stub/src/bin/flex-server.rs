//! `flex-server`: the entitlement server.

use clap::Parser;
use flex_server::cli::Args;
use flex_server::server::{prepare, serve, ServerOptions};

fn main() -> anyhow::Result<()> {
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
        database_url: a.database_url,
        config: a.config,
        test_clock: a.test_clock,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        rates: a.rates,
    })?;
    // The store is opened before the runtime starts: PostgreSQL's blocking
    // client must not run on the runtime's threads.
    tokio::runtime::Runtime::new()?.block_on(serve(prepared))?;
    Ok(())
}
