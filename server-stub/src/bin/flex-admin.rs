//! `flex-admin`: parse the command line and hand it to `flex_server::admin::run`.

use std::process::ExitCode;

use clap::Parser;
use flex_server::admin::{run, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env_token = std::env::var_os("FLEX_ADMIN_TOKEN").map(|t| t.to_string_lossy().into_owned());
    let mut stdout = std::io::stdout();
    match run(&cli, env_token, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err = anyhow::Error::from(err);
            eprintln!("flex-admin: {err}");
            ExitCode::FAILURE
        }
    }
}
