//! The command line of `flex-agent` (the binary in `src/bin/flex-agent.rs` only
//! parses it and runs), here so that its man page is generated from it too.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The Flex licensing agent: detects product launches, claims charge windows,
/// enforces the offline rule and notifies users.
///
/// Run by systemd as `flex-agent --config /etc/flex-agent/agent.toml`. Not
/// enrolled yet, it enrolls itself at start with the token in FLEX_ENROLL_TOKEN
/// or in the file enroll-token next to the config (deleted once used); without
/// either it exits with status 78 and says what to do.
#[derive(Debug, Parser)]
#[command(name = "flex-agent", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Agent configuration (TOML); drop-ins in the directory of the same name
    /// with .d (agent.d/*.toml) are read after it, in name order.
    #[arg(long, default_value_os_t = default_config())]
    pub config: PathBuf,
    /// Run under the Windows Service Control Manager (the MSI registers the
    /// service with this).
    #[cfg(windows)]
    #[arg(long)]
    pub service: bool,
    /// Ask the Service Control Manager to start the flex-agent service, and
    /// return (the MSI runs this once the service is registered).
    #[cfg(windows)]
    #[arg(long, conflicts_with = "service")]
    pub start_service: bool,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// The config file of the system service on this OS ([`crate::paths`]).
pub fn default_config() -> PathBuf {
    crate::paths::current().config
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Trade an enrollment token for this workstation's device credential.
    ///
    /// Exit status: 0 enrolled, 2 bad arguments, 3 already enrolled (nothing
    /// changed), 4 server unreachable, 5 TLS error, 6 token refused (unknown,
    /// used up, revoked), 7 token expired, 8 server error, 9 the credential
    /// cannot be kept on this machine (the token was not used), 78 bad config.
    Enroll(EnrollArgs),
    /// Apply install values: set server_url and [users] email_template in the
    /// config (written if missing) and place an enrollment token where the agent
    /// reads it (enroll-token beside the config), replacing one waiting.
    ///
    /// A value given wins over what is kept; none given changes nothing.
    /// Everything is checked before anything is written, and without a working
    /// enrollment a server URL and a token (given or waiting) are required. The
    /// server is not contacted. The MSI runs this with its properties. Restart
    /// the agent afterwards. Exit status: 0 applied, 78 a bad or missing value
    /// (nothing changed), 9 the files cannot be written.
    Configure(ConfigureArgs),
}

#[derive(Debug, Args)]
pub struct ConfigureArgs {
    #[arg(long, default_value_os_t = default_config())]
    pub config: PathBuf,
    /// The server URL, e.g. https://flex.corp.example:8443 (blank: not given).
    #[arg(long, value_name = "URL")]
    pub server_url: Option<String>,
    /// A file holding an enrollment token from `flex-admin enroll-token`
    /// (blank: not given).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<String>,
    /// How accounts map to emails, e.g. {user}@corp.example (blank: not given).
    #[arg(long, value_name = "TEMPLATE")]
    pub email_template: Option<String>,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[arg(long, default_value_os_t = default_config())]
    pub config: PathBuf,
    /// Server URL, e.g. https://flex.corp.example:8443 (default: server_url
    /// from the config).
    #[arg(long)]
    pub server: Option<String>,
    /// Enrollment token from `flex-admin enroll-token`.
    #[arg(
        long,
        env = "FLEX_ENROLL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file",
        required_unless_present = "token_file"
    )]
    pub token: Option<String>,
    /// Read the enrollment token from this file (keeps it out of `ps`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Enroll even if this workstation is already enrolled (a new device id).
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The MSI passes every property, blank when it was not given.
    #[test]
    fn configure_takes_blank_values() {
        let cli = Cli::try_parse_from([
            "flex-agent",
            "configure",
            "--server-url=",
            "--token-file=",
            "--email-template=",
        ])
        .unwrap();
        let Some(Cmd::Configure(a)) = cli.command else {
            panic!("not configure")
        };
        assert_eq!(
            (a.server_url, a.token_file, a.email_template),
            (
                Some(String::new()),
                Some(String::new()),
                Some(String::new())
            )
        );
    }

    #[test]
    fn enroll_needs_exactly_one_token_source() {
        let parse = |args: &[&str]| Cli::try_parse_from(args);
        assert!(parse(&["flex-agent", "enroll", "--token", "t", "--token-file", "f"]).is_err());
        let cli = parse(&["flex-agent", "enroll", "--token-file", "/f", "--force"]).unwrap();
        let Some(Cmd::Enroll(a)) = cli.command else {
            panic!("not enroll")
        };
        assert!(a.force && a.token.is_none() && a.server.is_none());
    }
}
