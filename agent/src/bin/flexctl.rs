//! flexctl: see `flex_agent::flexctl`.

use clap::Parser;
use flex_agent::flexctl::{execute, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEXCTL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Library errors already say what happened and what to do: one line, no chain.
    let code = match execute(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flexctl: {e}");
            1
        }
    };
    std::process::exit(code);
}
