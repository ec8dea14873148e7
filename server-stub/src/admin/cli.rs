//! The command line of `flex-admin`, as clap derive types.
//!
//! Global options (`--server`, `--token-file`, `--ca-file`, `--json`) may come
//! before or after the subcommand. The admin token is deliberately not an
//! option: a token on the command line shows in `ps` and shell history, so it
//! comes from `FLEX_ADMIN_TOKEN` or a file.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use flex_protocol::api::AssignmentMode;
use flex_protocol::{Email, ProductId};

/// Default `--server` when neither the option nor `FLEX_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Administer a Flex entitlement server: users, subscriptions, tokens, charges.
#[derive(Debug, Clone, Parser)]
#[command(name = "flex-admin", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,

    #[command(subcommand)]
    pub command: Command,
}

/// Options that apply to every subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// URL of the flex-server, e.g. https://licensing.example.com:8443
    #[arg(long, global = true, env = "FLEX_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// Read the admin token from this file (the server writes DATA_DIR/admin-token);
    /// otherwise it comes from FLEX_ADMIN_TOKEN
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Trust this PEM CA certificate (bundle) for an https server with a private CA
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// Print the server's JSON answer instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum Command {
    /// Add, list, import users and assign them to Flex
    #[command(subcommand)]
    Users(UsersCmd),
    /// Assign or remove product subscriptions
    #[command(subcommand)]
    Subscriptions(SubscriptionsCmd),
    /// Show the rate sheet
    Products,
    /// Show or set which products Flex users may open
    #[command(subcommand)]
    Defaults(DefaultsCmd),
    /// Buy token packs and show the balance
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Show the ledger of charges
    Charges {
        /// Only charges of this user (email)
        #[arg(long, value_name = "EMAIL")]
        user: Option<Email>,
        /// Only charges for this product id
        #[arg(long, value_name = "ID")]
        product: Option<ProductId>,
    },
    /// Show balance notices, newest first
    Notices,
    /// Create an enrollment token for one agent or a fleet (--uses), or list/revoke them
    EnrollToken(EnrollTokenArgs),
    /// List enrolled workstations, or revoke one
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Set the server's clock (only on a server started with --test-clock)
    #[command(subcommand)]
    TestClock(TestClockCmd),
    /// Check that the server answers (needs no token)
    Health,
    /// Usage report: tokens and usage days by product or by user, week by week
    Report(ReportArgs),
    /// Who should move from Flex to a subscription, or back, for a month
    Recommend {
        /// The month, YYYY-MM
        #[arg(long, value_name = "YYYY-MM")]
        month: String,
    },
    /// Tokens and packs to buy for planned use, or for the use of a past period
    Estimate(EstimateArgs),
    /// Burn rate, days left and lots that will expire unused
    Forecast,
}

/// What to report on and for when.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(group(ArgGroup::new("period").required(true).args(["month", "from"])))]
pub struct ReportArgs {
    /// Rows by product or by user
    #[arg(long, value_enum, default_value = "product")]
    pub by: ByArg,
    /// A whole month, YYYY-MM
    #[arg(long, value_name = "YYYY-MM", conflicts_with_all = ["from", "to"])]
    pub month: Option<String>,
    /// First day, YYYY-MM-DD (with --to)
    #[arg(long, value_name = "YYYY-MM-DD", requires = "to")]
    pub from: Option<String>,
    /// Last day, inclusive, YYYY-MM-DD
    #[arg(long, value_name = "YYYY-MM-DD", requires = "from")]
    pub to: Option<String>,
    /// Print the rows as CSV (as the server sends them)
    #[arg(long)]
    pub csv: bool,
}

/// `--by` of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    Product,
    User,
}

/// Planned use (`--row`) or a past period (`--from-usage`).
#[derive(Debug, Clone, PartialEq, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["row", "usage_from"])))]
pub struct EstimateArgs {
    /// Months to buy for
    #[arg(long, default_value_t = 12)]
    pub months: i64,
    /// PRODUCT:USERS:DAYS_PER_MONTH, e.g. autocad:10:4 (repeat for more rows)
    #[arg(long = "row", value_name = "PRODUCT:USERS:DAYS", value_parser = parse_row)]
    pub row: Vec<(ProductId, i64, f64)>,
    /// Take the rows from real Flex usage from this day, YYYY-MM-DD (with --usage-to)
    #[arg(long = "from-usage", value_name = "YYYY-MM-DD", requires = "usage_to")]
    pub usage_from: Option<String>,
    /// Last day of that usage, inclusive
    #[arg(long = "usage-to", value_name = "YYYY-MM-DD", requires = "usage_from")]
    pub usage_to: Option<String>,
}

/// Parses `PRODUCT:USERS:DAYS`.
pub fn parse_row(text: &str) -> Result<(ProductId, i64, f64), String> {
    let bad = || format!("'{text}' is not PRODUCT:USERS:DAYS_PER_MONTH, e.g. autocad:10:4");
    let mut parts = text.split(':');
    let (Some(p), Some(u), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let product = ProductId::parse(p.trim()).map_err(|e| format!("'{text}': {e}"))?;
    let users = u.trim().parse().map_err(|_| bad())?;
    let days = d.trim().parse().map_err(|_| bad())?;
    Ok((product, users, days))
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum UsersCmd {
    /// Add a user
    Add {
        /// The user's email, their identity on every workstation
        email: Email,
        /// First name
        #[arg(long, value_name = "NAME")]
        first: String,
        /// Last name
        #[arg(long, value_name = "NAME")]
        last: String,
    },
    /// List users with their Flex assignment and subscriptions
    List,
    /// Add users from a CSV file (First Name, Last Name, Email) and assign them to Flex
    Import {
        /// UTF-8 CSV with a header row; bad lines are listed and nothing is imported
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
    },
    /// Assign a user to Flex or remove them from it
    #[command(group(ArgGroup::new("assignment").required(true).args(["assign", "unassign"])))]
    Flex {
        /// The user's email
        email: Email,
        /// Assign the user to Flex
        #[arg(long)]
        assign: bool,
        /// Remove the user from Flex
        #[arg(long)]
        unassign: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum SubscriptionsCmd {
    /// Give a user a subscription to a product
    Add {
        /// The user's email
        email: Email,
        /// Product id, see `flex-admin products`
        product: ProductId,
    },
    /// Take a user's subscription to a product away
    Remove {
        /// The user's email
        email: Email,
        /// Product id
        product: ProductId,
    },
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum DefaultsCmd {
    /// Show the default assignments
    Show,
    /// Set the default assignments, e.g. `defaults set --mode allow autocad revit`
    Set {
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Products the mode lists (allowed for `allow`, excluded for `deny`)
        products: Vec<ProductId>,
    },
}

/// `--mode` of `defaults set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Every product
    All,
    /// Only the listed products
    Allow,
    /// Every product but the listed ones
    Deny,
}

impl From<ModeArg> for AssignmentMode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::All => AssignmentMode::All,
            ModeArg::Allow => AssignmentMode::Allow,
            ModeArg::Deny => AssignmentMode::Deny,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum TokensCmd {
    /// Buy a pack of N tokens (N must be one of the server's pack sizes)
    Buy {
        /// Tokens in the pack, e.g. 500
        tokens: u64,
    },
    /// Show the balance, the low-balance threshold and the lots
    Balance,
}

/// `enroll-token [--uses N] [--ttl 30d] [--note TEXT]`, `enroll-token list`,
/// `enroll-token revoke ID`.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EnrollTokenArgs {
    #[command(subcommand)]
    pub action: Option<EnrollTokenCmd>,
    /// How many agents may enroll with the token, e.g. 1000 for a fleet (default 1)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: Option<u32>,
    /// How long the token stays valid, e.g. 30d, 12h (default: the server's
    /// enrollment_token_ttl, 7d)
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// A note shown in `enroll-token list`, e.g. "Berlin rollout"
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum EnrollTokenCmd {
    /// List enrollment tokens (never their secrets) with uses left and state
    List,
    /// Revoke an enrollment token: no further agent enrolls with it
    Revoke {
        /// Token id from `enroll-token list` (ek_...)
        id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum DevicesCmd {
    /// List enrolled workstations: host, platform, agent version, last contact
    List,
    /// Revoke a workstation: the server refuses its credential from now on
    Revoke {
        /// Device id from `devices list`
        id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum TestClockCmd {
    /// Set the server's time, e.g. 2026-03-15T10:00:00Z
    Set {
        #[arg(value_name = "RFC3339", value_parser = parse_rfc3339)]
        now: DateTime<Utc>,
    },
}

/// Parses an RFC 3339 time with any offset into UTC.
pub fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("'{text}' is not an RFC 3339 time ({e}): write it like 2026-03-15T10:00:00Z")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("flex-admin").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_may_follow_the_subcommand() {
        let cli = parse(&["tokens", "balance", "--json", "--server", "https://x:1"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.server, "https://x:1");
        assert_eq!(cli.command, Command::Tokens(TokensCmd::Balance));
    }

    #[test]
    fn flex_needs_exactly_one_of_assign_and_unassign() {
        assert!(parse(&["users", "flex", "a@b.c"]).is_err());
        assert!(parse(&["users", "flex", "a@b.c", "--assign", "--unassign"]).is_err());
        let cli = parse(&["users", "flex", "a@b.c", "--unassign"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Users(UsersCmd::Flex {
                email: Email::parse("a@b.c").unwrap(),
                assign: false,
                unassign: true
            })
        );
    }

    /// An email argument is parsed (trimmed, lowercased, checked) before any
    /// request is made; a bad one names the argument and the value.
    #[test]
    fn email_arguments_are_checked_before_any_call() {
        let cli = parse(&[
            "users",
            "add",
            " Ann@Example.COM",
            "--first",
            "A",
            "--last",
            "L",
        ])
        .unwrap();
        let Command::Users(UsersCmd::Add { email, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(email.as_str(), "ann@example.com");
        for args in [
            &["users", "add", "ann", "--first", "A", "--last", "L"][..],
            &["users", "flex", "ann", "--assign"],
            &["subscriptions", "add", "ann", "revit"],
            &["subscriptions", "remove", "ann", "revit"],
            &["charges", "--user", "ann"],
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(
                err.contains("'ann' is not an email address") && err.contains("EMAIL"),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn defaults_set_takes_a_mode_and_products() {
        let cli = parse(&["defaults", "set", "--mode", "allow", "autocad", "revit"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Defaults(DefaultsCmd::Set {
                mode: ModeArg::Allow,
                products: vec![pid("autocad"), pid("revit")]
            })
        );
        assert!(parse(&["defaults", "set", "--mode", "some"]).is_err());
    }

    #[test]
    fn test_clock_accepts_offsets_and_rejects_garbage() {
        let cli = parse(&["test-clock", "set", "2026-03-15T12:00:00+02:00"]).unwrap();
        let Command::TestClock(TestClockCmd::Set { now }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(now.to_rfc3339(), "2026-03-15T10:00:00+00:00");
        let err = parse(&["test-clock", "set", "monday"]).unwrap_err();
        assert!(err.to_string().contains("'monday' is not an RFC 3339 time"));
    }

    #[test]
    fn enroll_token_creates_lists_and_revokes() {
        let cli = parse(&["enroll-token", "--uses", "1000", "--ttl", "30d"]).unwrap();
        let Command::EnrollToken(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            (args.action, args.uses, args.ttl.as_deref()),
            (None, Some(1000), Some("30d"))
        );
        let cli = parse(&["enroll-token", "revoke", "ek_1"]).unwrap();
        let Command::EnrollToken(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            args.action,
            Some(EnrollTokenCmd::Revoke { id: "ek_1".into() })
        );
        assert!(parse(&["enroll-token", "--uses", "0"]).is_err());
        assert!(parse(&["enroll-token", "--uses", "3", "list"]).is_err());
        let cli = parse(&["devices", "revoke", "d-1"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Devices(DevicesCmd::Revoke { id: "d-1".into() })
        );
    }

    #[test]
    fn report_takes_a_month_or_a_period() {
        let cli = parse(&["report", "--by", "user", "--month", "2026-11"]).unwrap();
        let Command::Report(r) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!((r.by, r.month.as_deref()), (ByArg::User, Some("2026-11")));
        assert!(parse(&["report"]).is_err());
        assert!(parse(&["report", "--from", "2026-11-01"]).is_err());
        assert!(parse(&[
            "report",
            "--month",
            "2026-11",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-02"
        ])
        .is_err());
    }

    #[test]
    fn estimate_rows_are_product_users_days() {
        let cli = parse(&["estimate", "--row", "autocad:10:4", "--row", "revit:2:10.5"]).unwrap();
        let Command::Estimate(e) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(
            e.row,
            vec![(pid("autocad"), 10, 4.0), (pid("revit"), 2, 10.5)]
        );
        assert_eq!(e.months, 12);
        let err = parse(&["estimate", "--row", "autocad:ten:4"]).unwrap_err();
        assert!(err
            .to_string()
            .contains("'autocad:ten:4' is not PRODUCT:USERS:DAYS_PER_MONTH"));
        let err = parse(&["estimate", "--row", "AutoCAD:10:4"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("'AutoCAD:10:4': product 'AutoCAD' is not a product id"),
            "{err}"
        );
        assert!(parse(&["estimate"]).is_err());
    }

    #[test]
    fn tokens_buy_needs_a_number() {
        assert!(parse(&["tokens", "buy", "many"]).is_err());
        let cli = parse(&["tokens", "buy", "500"]).unwrap();
        assert_eq!(cli.command, Command::Tokens(TokensCmd::Buy { tokens: 500 }));
    }
}
