//! `flex-server`: the entitlement server.

use clap::Parser;
use flex_server::backup;
use flex_server::cli::{Args, Command};
use flex_server::server::{prepare, serve, ServerOptions};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    match a.command {
        Some(Command::Backup { data_dir, to }) => {
            let copy = backup::backup(&data_dir, &to)?;
            println!("{}", copy.describe(&to));
        }
        Some(Command::Restore { data_dir, from }) => {
            let done = backup::restore(&data_dir, &from)?;
            println!("{done}");
        }
        Some(Command::Migrate {
            data_dir,
            to_database_url,
        }) => {
            let done = backup::migrate(&data_dir, &to_database_url)?;
            println!("{done}");
        }
        None => {
            let opts = ServerOptions {
                listen: a.listen,
                data_dir: a.data_dir.expect("clap requires --data-dir"),
                database_url: a.database_url,
                config: a.config,
                test_clock: a.test_clock,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
                rates: a.rates,
            };
            // The store opens on a blocking thread: PostgreSQL's client blocks,
            // which the runtime's own threads must not.
            tokio::runtime::Runtime::new()?.block_on(async move {
                let prepared = tokio::task::spawn_blocking(move || prepare(&opts)).await??;
                serve(prepared).await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}
