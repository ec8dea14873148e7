//! Turning a parsed subcommand into the HTTP call it stands for.
//!
//! [`plan`] is pure: it decides method, path, query and body from the arguments
//! alone, so the mapping from the command line to the API contract is tested
//! without a server. Bodies are built from the `flex_protocol::api` types; the
//! CSV for `users import` is only named here and read when the call is sent.

use std::fmt;
use std::path::PathBuf;

use flex_protocol::api::{
    BuyTokens, DefaultAssignments, FlexAssignment, NewEnrollmentToken, NewSubscription, NewUser,
    TestClock,
};
use flex_protocol::ProductId;
use serde::Serialize;
use serde_json::Value;

use super::cli::{
    ByArg, Command, DefaultsCmd, DevicesCmd, EnrollTokenCmd, SubscriptionsCmd, TestClockCmd,
    TokensCmd, UsersCmd,
};

/// HTTP method of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        })
    }
}

/// What a call sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    None,
    Json(Value),
    /// A CSV file sent as `text/csv`, read when the call is made.
    CsvFile(PathBuf),
}

/// One request to the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    /// Path with query, percent-encoded, e.g. `/v1/admin/charges?user=a%2Bb@c.d`.
    pub path: String,
    pub body: Body,
    /// Whether the admin token is sent (everything but `health`).
    pub auth: bool,
}

impl Call {
    fn get(path: String) -> Call {
        Call {
            method: Method::Get,
            path,
            body: Body::None,
            auth: true,
        }
    }

    fn delete(path: String) -> Call {
        Call {
            method: Method::Delete,
            path,
            body: Body::None,
            auth: true,
        }
    }

    fn json(method: Method, path: String, body: &impl Serialize) -> Call {
        let body = serde_json::to_value(body).expect("api types serialize to json");
        Call {
            method,
            path,
            body: Body::Json(body),
            auth: true,
        }
    }

    /// `METHOD /path`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// The call a subcommand makes.
pub fn plan(command: &Command) -> Call {
    let admin = |rest: &str| format!("/v1/admin/{rest}");
    match command {
        Command::Users(UsersCmd::Add { email, first, last }) => Call::json(
            Method::Post,
            admin("users"),
            &NewUser {
                email: email.clone(),
                first_name: first.clone(),
                last_name: last.clone(),
            },
        ),
        Command::Users(UsersCmd::List) => Call::get(admin("users")),
        Command::Users(UsersCmd::Import { file }) => Call {
            method: Method::Post,
            path: admin("users/import"),
            body: Body::CsvFile(file.clone()),
            auth: true,
        },
        Command::Users(UsersCmd::Flex { email, assign, .. }) => Call::json(
            Method::Put,
            admin(&format!("users/{}/flex", encode(email))),
            &FlexAssignment { assigned: *assign },
        ),
        Command::Subscriptions(SubscriptionsCmd::Add { email, product }) => Call::json(
            Method::Post,
            admin("subscriptions"),
            &NewSubscription {
                email: email.clone(),
                product: product.clone(),
            },
        ),
        Command::Subscriptions(SubscriptionsCmd::Remove { email, product }) => Call::delete(admin(
            &format!("subscriptions/{}/{}", encode(email), product),
        )),
        Command::Products => Call::get(admin("products")),
        Command::Defaults(DefaultsCmd::Show) => Call::get(admin("default-assignments")),
        Command::Defaults(DefaultsCmd::Set { mode, products }) => Call::json(
            Method::Put,
            admin("default-assignments"),
            &DefaultAssignments {
                mode: (*mode).into(),
                products: products.clone(),
            },
        ),
        Command::Tokens(TokensCmd::Buy { tokens }) => Call::json(
            Method::Post,
            admin("token-lots"),
            &BuyTokens { tokens: *tokens },
        ),
        Command::Tokens(TokensCmd::Balance) => Call::get(admin("balance")),
        Command::Charges { user, product } => {
            let product = product.as_ref().map(ProductId::as_str);
            let query: Vec<String> = [("user", user.as_deref()), ("product", product)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
                .collect();
            let mut path = admin("charges");
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            Call::get(path)
        }
        Command::Notices => Call::get(admin("notices")),
        Command::EnrollToken(args) => match &args.action {
            None => Call::json(
                Method::Post,
                admin("enrollment-tokens"),
                &NewEnrollmentToken {
                    uses: args.uses,
                    ttl: args.ttl.clone(),
                    note: args.note.clone(),
                },
            ),
            Some(EnrollTokenCmd::List) => Call::get(admin("enrollment-tokens")),
            Some(EnrollTokenCmd::Revoke { id }) => {
                Call::delete(admin(&format!("enrollment-tokens/{}", encode(id))))
            }
        },
        Command::Devices(DevicesCmd::List) => Call::get(admin("devices")),
        Command::Devices(DevicesCmd::Revoke { id }) => {
            Call::delete(admin(&format!("devices/{}", encode(id))))
        }
        Command::TestClock(TestClockCmd::Set { now }) => {
            Call::json(Method::Put, admin("test-clock"), &TestClock { now: *now })
        }
        Command::Health => Call {
            method: Method::Get,
            path: "/v1/health".to_owned(),
            body: Body::None,
            auth: false,
        },
        Command::Report(r) => {
            let by = match r.by {
                ByArg::Product => "product",
                ByArg::User => "user",
            };
            // A month is sent as its first and last day; a bad one goes as
            // written so the server names it.
            let (from, to) = match &r.month {
                Some(m) => match crate::rules::calendar::Period::month(m) {
                    Ok(p) => (p.from.to_string(), p.to.to_string()),
                    Err(_) => (m.clone(), m.clone()),
                },
                None => (
                    r.from.clone().unwrap_or_default(),
                    r.to.clone().unwrap_or_default(),
                ),
            };
            let csv = if r.csv { "&format=csv" } else { "" };
            Call::get(admin(&format!(
                "reports/usage?from={}&to={}&by={by}{csv}",
                encode(&from),
                encode(&to)
            )))
        }
        Command::Recommend { month } => {
            Call::get(admin(&format!("recommendations?month={}", encode(month))))
        }
        Command::Estimate(e) => {
            let body = flex_protocol::reports::EstimateRequest {
                months: e.months,
                rows: (!e.row.is_empty()).then(|| {
                    e.row
                        .iter()
                        .map(
                            |(product, users, days)| flex_protocol::reports::EstimateInput {
                                product: product.clone(),
                                users: *users,
                                days_per_month: *days,
                            },
                        )
                        .collect()
                }),
                from_usage: None,
            };
            let mut value = serde_json::to_value(&body).expect("api types serialize to json");
            if let (Some(from), Some(to)) = (&e.usage_from, &e.usage_to) {
                // Sent as written: the server names a bad date.
                value["from_usage"] = serde_json::json!({ "from": from, "to": to });
            }
            Call {
                method: Method::Post,
                path: admin("estimate"),
                body: Body::Json(value),
                auth: true,
            }
        }
        Command::Forecast => Call::get(admin("forecast")),
    }
}

/// Percent-encodes one path segment or query value: everything but RFC 3986
/// unreserved characters and `@` (so emails stay readable in logs).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::cli::Cli;
    use clap::Parser;
    use flex_protocol::api::AssignmentMode;
    use serde::de::DeserializeOwned;

    fn plan_of(args: &[&str]) -> Call {
        let cli = Cli::try_parse_from(std::iter::once("flex-admin").chain(args.iter().copied()))
            .expect("arguments parse");
        plan(&cli.command)
    }

    fn body_as<T: DeserializeOwned>(call: &Call) -> T {
        match &call.body {
            Body::Json(v) => serde_json::from_value(v.clone()).expect("body is the api type"),
            other => panic!("expected a json body, got {other:?}"),
        }
    }

    #[test]
    fn users_add_posts_a_new_user() {
        let call = plan_of(&[
            "users",
            "add",
            "ann@example.com",
            "--first",
            "Ann",
            "--last",
            "Lee",
        ]);
        assert_eq!(call.method, Method::Post);
        assert_eq!(call.path, "/v1/admin/users");
        assert!(call.auth);
        assert_eq!(
            body_as::<NewUser>(&call),
            NewUser {
                email: flex_protocol::Email::parse("ann@example.com").unwrap(),
                first_name: "Ann".into(),
                last_name: "Lee".into()
            }
        );
    }

    #[test]
    fn users_list_and_import() {
        let call = plan_of(&["users", "list"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/admin/users")
        );
        assert_eq!(call.body, Body::None);

        let call = plan_of(&["users", "import", "staff.csv"]);
        assert_eq!(call.method, Method::Post);
        assert_eq!(call.path, "/v1/admin/users/import");
        assert_eq!(call.body, Body::CsvFile("staff.csv".into()));
    }

    #[test]
    fn users_flex_puts_the_assignment_with_the_email_encoded() {
        let call = plan_of(&["users", "flex", "ann+cad@example.com", "--assign"]);
        assert_eq!(call.method, Method::Put);
        assert_eq!(call.path, "/v1/admin/users/ann%2Bcad@example.com/flex");
        assert_eq!(
            body_as::<FlexAssignment>(&call),
            FlexAssignment { assigned: true }
        );

        let call = plan_of(&["users", "flex", "ann@example.com", "--unassign"]);
        assert_eq!(
            body_as::<FlexAssignment>(&call),
            FlexAssignment { assigned: false }
        );
    }

    #[test]
    fn subscriptions_add_and_remove() {
        let call = plan_of(&["subscriptions", "add", "ann@example.com", "revit"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Post, "/v1/admin/subscriptions")
        );
        assert_eq!(
            body_as::<NewSubscription>(&call),
            NewSubscription {
                email: flex_protocol::Email::parse("ann@example.com").unwrap(),
                product: "revit".parse().unwrap()
            }
        );

        let call = plan_of(&["subscriptions", "remove", "ann@example.com", "revit"]);
        assert_eq!(call.method, Method::Delete);
        assert_eq!(call.path, "/v1/admin/subscriptions/ann@example.com/revit");
        assert_eq!(call.body, Body::None);
    }

    #[test]
    fn products_and_defaults() {
        let call = plan_of(&["products"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/admin/products")
        );

        let call = plan_of(&["defaults", "show"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/admin/default-assignments")
        );

        let call = plan_of(&["defaults", "set", "--mode", "deny", "maya"]);
        assert_eq!(call.method, Method::Put);
        assert_eq!(call.path, "/v1/admin/default-assignments");
        assert_eq!(
            body_as::<DefaultAssignments>(&call),
            DefaultAssignments {
                mode: AssignmentMode::Deny,
                products: vec!["maya".parse().unwrap()]
            }
        );

        let call = plan_of(&["defaults", "set", "--mode", "all"]);
        assert_eq!(
            body_as::<DefaultAssignments>(&call),
            DefaultAssignments {
                mode: AssignmentMode::All,
                products: vec![]
            }
        );
    }

    #[test]
    fn tokens_buy_and_balance() {
        let call = plan_of(&["tokens", "buy", "500"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Post, "/v1/admin/token-lots")
        );
        assert_eq!(body_as::<BuyTokens>(&call), BuyTokens { tokens: 500 });

        let call = plan_of(&["tokens", "balance"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/admin/balance")
        );
    }

    #[test]
    fn charges_filters_become_an_encoded_query() {
        assert_eq!(plan_of(&["charges"]).path, "/v1/admin/charges");
        assert_eq!(
            plan_of(&["charges", "--product", "autocad"]).path,
            "/v1/admin/charges?product=autocad"
        );
        assert_eq!(
            plan_of(&["charges", "--product", "autocad", "--user", "a+b@c.d"]).path,
            "/v1/admin/charges?user=a%2Bb@c.d&product=autocad"
        );
    }

    #[test]
    fn notices_enroll_token_test_clock_and_health() {
        let call = plan_of(&["notices"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/admin/notices")
        );

        let call = plan_of(&["enroll-token"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Post, "/v1/admin/enrollment-tokens")
        );
        assert_eq!(call.body, Body::Json(serde_json::json!({})));
        let call = plan_of(&[
            "enroll-token",
            "--uses",
            "1000",
            "--ttl",
            "30d",
            "--note",
            "x",
        ]);
        assert_eq!(
            body_as::<NewEnrollmentToken>(&call),
            NewEnrollmentToken {
                uses: Some(1000),
                ttl: Some("30d".into()),
                note: Some("x".into())
            }
        );
        let call = plan_of(&["enroll-token", "list"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/admin/enrollment-tokens")
        );
        let call = plan_of(&["enroll-token", "revoke", "ek_1"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Delete, "/v1/admin/enrollment-tokens/ek_1")
        );
        let call = plan_of(&["devices", "list"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/admin/devices")
        );
        let call = plan_of(&["devices", "revoke", "d 1"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Delete, "/v1/admin/devices/d%201")
        );

        let call = plan_of(&["test-clock", "set", "2026-03-15T10:00:00Z"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Put, "/v1/admin/test-clock")
        );
        assert_eq!(
            body_as::<TestClock>(&call).now.to_rfc3339(),
            "2026-03-15T10:00:00+00:00"
        );

        let call = plan_of(&["health"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Get, "/v1/health")
        );
        assert!(!call.auth, "health needs no token");
    }

    #[test]
    fn reports_and_estimates() {
        assert_eq!(
            plan_of(&["report", "--by", "user", "--month", "2026-02"]).path,
            "/v1/admin/reports/usage?from=2026-02-01&to=2026-02-28&by=user"
        );
        assert_eq!(
            plan_of(&[
                "report",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-15",
                "--csv"
            ])
            .path,
            "/v1/admin/reports/usage?from=2026-11-01&to=2026-11-15&by=product&format=csv"
        );
        assert_eq!(
            plan_of(&["recommend", "--month", "2026-11"]).path,
            "/v1/admin/recommendations?month=2026-11"
        );
        assert_eq!(plan_of(&["forecast"]).path, "/v1/admin/forecast");
        let call = plan_of(&["estimate", "--months", "3", "--row", "autocad:10:4"]);
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::Post, "/v1/admin/estimate")
        );
        assert_eq!(
            call.body,
            Body::Json(
                serde_json::json!({"months": 3, "rows": [{"product": "autocad", "users": 10, "days_per_month": 4.0}]})
            )
        );
        let call = plan_of(&[
            "estimate",
            "--from-usage",
            "2026-09-01",
            "--usage-to",
            "2026-11-30",
        ]);
        assert_eq!(
            call.body,
            Body::Json(
                serde_json::json!({"months": 12, "from_usage": {"from": "2026-09-01", "to": "2026-11-30"}})
            )
        );
    }

    #[test]
    fn encode_keeps_unreserved_and_at_and_escapes_the_rest() {
        assert_eq!(encode("ann@example.com"), "ann@example.com");
        assert_eq!(encode("a b/c?d&e=f+g#"), "a%20b%2Fc%3Fd%26e%3Df%2Bg%23");
        assert_eq!(encode("zoë"), "zo%C3%AB");
    }
}
