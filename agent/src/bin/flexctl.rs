//! flexctl: see `flex_agent::flexctl`.

use clap::Parser;
use flex_agent::flexctl::{execute, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEXCTL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = execute(Cli::parse()).await?;
    std::process::exit(code);
}
