//! Human output for each answer of the admin API.
//!
//! [`render`] decodes a success body into its `flex_protocol::api` type and
//! formats it: a sentence for a single change, a [`Table`] for lists. It does no
//! I/O, so every format is tested from JSON text. Times are shown as RFC 3339
//! UTC to the second.

use chrono::{DateTime, SecondsFormat, Utc};
use flex_protocol::api::{
    AssignmentMode, Balance, ChargeKind, ChargeList, ChargeModel, DefaultAssignments,
    EnrollmentToken, EnrollmentTokenList, Health, ImportResult, Lot, NoticeList, Product,
    ProductList, Subscription, TestClock, User, UserList,
};
use serde::de::DeserializeOwned;

use super::cli::{
    Command, DefaultsCmd, DevicesCmd, EnrollTokenCmd, SubscriptionsCmd, TestClockCmd, TokensCmd,
    UsersCmd,
};
use super::error::AdminError;
use super::fleet;
pub use super::names::Names;
use super::table::Table;

/// Formats the success answer `body` of `command`; `what` names the call for
/// errors; products are shown by their `names`.
pub fn render(
    command: &Command,
    what: &str,
    body: &str,
    names: &Names,
) -> Result<String, AdminError> {
    let out = match command {
        Command::Users(UsersCmd::Add { .. }) => {
            let user: User = decode(what, body)?;
            format!(
                "added user {}\n{}",
                user.email,
                users_table(std::slice::from_ref(&user), names)
            )
        }
        Command::Users(UsersCmd::Flex { .. }) => {
            let user: User = decode(what, body)?;
            let state = if user.flex_assigned {
                "is now assigned to Flex"
            } else {
                "is no longer assigned to Flex"
            };
            format!("{} {state}\n", user.email)
        }
        Command::Users(UsersCmd::List) => {
            let list: UserList = decode(what, body)?;
            if list.users.is_empty() {
                "no users yet: add one with `flex-admin users add` or `flex-admin users import`\n"
                    .to_owned()
            } else {
                users_table(&list.users, names)
            }
        }
        Command::Users(UsersCmd::Import { .. }) => import(&decode(what, body)?),
        Command::Subscriptions(SubscriptionsCmd::Add { .. }) => {
            let s: Subscription = decode(what, body)?;
            format!(
                "{} now has a subscription to {} (since {})\n",
                s.email,
                names.label(&s.product),
                time(&s.created_at)
            )
        }
        Command::Subscriptions(SubscriptionsCmd::Remove { email, product }) => {
            format!(
                "removed the subscription of {email} to {}\n",
                names.label(product)
            )
        }
        Command::Products => products(&decode::<ProductList>(what, body)?.products),
        Command::Defaults(DefaultsCmd::Show | DefaultsCmd::Set { .. }) => {
            defaults(&decode(what, body)?, names)
        }
        Command::Tokens(TokensCmd::Buy { .. }) => {
            let lot: Lot = decode(what, body)?;
            format!(
                "bought lot {}: {} tokens, expires {}\n",
                lot.id,
                lot.tokens,
                time(&lot.expires_at)
            )
        }
        Command::Tokens(TokensCmd::Balance) => balance(&decode(what, body)?),
        Command::Charges { .. } => charges(&decode(what, body)?, names),
        Command::Notices => notices(&decode(what, body)?),
        Command::EnrollToken(args) => match args.action {
            None => fleet::created(&decode::<EnrollmentToken>(what, body)?),
            Some(EnrollTokenCmd::List) => {
                fleet::tokens(&decode::<EnrollmentTokenList>(what, body)?.enrollment_tokens)
            }
            Some(EnrollTokenCmd::Revoke { .. }) => fleet::token_revoked(&decode(what, body)?),
        },
        Command::Devices(DevicesCmd::List) => fleet::devices(&decode(what, body)?),
        Command::Devices(DevicesCmd::Revoke { .. }) => fleet::device_revoked(&decode(what, body)?),
        Command::TestClock(TestClockCmd::Set { .. }) => {
            let t: TestClock = decode(what, body)?;
            format!("server time is now {}\n", time(&t.now))
        }
        Command::Health => {
            let h: Health = decode(what, body)?;
            format!(
                "flex-server {}: {}, server time {}\n",
                h.version,
                h.status,
                time(&h.server_time)
            )
        }
        Command::Report(r) if r.csv => body.to_owned(),
        Command::Report(_) => super::render_reports::usage(&decode(what, body)?, names),
        Command::Recommend { .. } => {
            super::render_reports::recommendations(&decode(what, body)?, names)
        }
        Command::Estimate(_) => super::render_reports::estimate(&decode(what, body)?, names),
        Command::Forecast => super::render_reports::forecast(&decode(what, body)?),
    };
    Ok(out)
}

/// The answer of `users import`, good or refused.
pub fn import(result: &ImportResult) -> String {
    let mut out = String::new();
    if result.errors.is_empty() {
        out.push_str(&format!(
            "imported: {} created, {} updated, {} assigned to Flex\n",
            result.created, result.updated, result.assigned
        ));
    } else {
        out.push_str(&format!(
            "{} bad line(s), nothing was imported:\n",
            result.errors.len()
        ));
        for e in &result.errors {
            out.push_str(&format!("line {}: {}\n", e.line, e.message));
        }
    }
    out
}

/// Decodes `body` as `T`, naming the call on failure.
pub fn decode<T: DeserializeOwned>(what: &str, body: &str) -> Result<T, AdminError> {
    serde_json::from_str(body).map_err(|e| AdminError::Decode {
        what: what.to_owned(),
        cause: e.to_string(),
    })
}

/// Re-indents a JSON answer two spaces deep, keeping the server's key order
/// (a `serde_json::Value` would sort the keys).
pub fn pretty_json(what: &str, body: &str) -> Result<String, AdminError> {
    decode::<serde::de::IgnoredAny>(what, body)?;
    let chars: Vec<char> = body.chars().collect();
    let mut out = String::with_capacity(body.len() * 2);
    let mut depth = 0usize;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                out.push(c);
                if chars.get(j) == Some(&close) {
                    out.push(close);
                    i = j + 1;
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn users_table(users: &[User], names: &Names) -> String {
    let mut t = Table::new(&["EMAIL", "NAME", "FLEX", "SUBSCRIPTIONS"]);
    for u in users {
        t.row([
            u.email.to_string(),
            format!("{} {}", u.first_name, u.last_name),
            if u.flex_assigned { "yes" } else { "no" }.to_owned(),
            if u.subscriptions.is_empty() {
                "-".to_owned()
            } else {
                names.list(&u.subscriptions)
            },
        ]);
    }
    t.render()
}

fn charge_model(model: &ChargeModel) -> String {
    let tokens = |n: u64| {
        if n == 1 {
            "1 token".to_owned()
        } else {
            format!("{n} tokens")
        }
    };
    match *model {
        ChargeModel::Daily { tokens: n } => format!("{}/day", tokens(n)),
        ChargeModel::PerResult { tokens: n, per } => format!("{} per {per} results", tokens(n)),
    }
}

fn products(products: &[Product]) -> String {
    let mut t = Table::new(&["ID", "NAME", "CHARGE", "RATE"]);
    for p in products {
        t.row([
            p.id.to_string(),
            p.name.clone(),
            charge_model(&p.charge),
            if p.sample { "sample" } else { "" }.to_owned(),
        ]);
    }
    let mut out = t.render();
    if products.iter().any(|p| p.sample) {
        out.push_str("sample rates are illustrative: replace them with your own rate sheet (flex-server --rates FILE)\n");
    }
    out
}

fn defaults(d: &DefaultAssignments, names: &Names) -> String {
    let list = names.list(&d.products);
    match d.mode {
        AssignmentMode::All => "Flex users may open every product (mode all)\n".to_owned(),
        AssignmentMode::Allow if d.products.is_empty() => {
            "Flex users may open no product (mode allow, empty list)\n".to_owned()
        }
        AssignmentMode::Allow => format!("Flex users may open only: {list} (mode allow)\n"),
        AssignmentMode::Deny if d.products.is_empty() => {
            "Flex users may open every product (mode deny, empty list)\n".to_owned()
        }
        AssignmentMode::Deny => {
            format!("Flex users may open every product but: {list} (mode deny)\n")
        }
    }
}

fn balance(b: &Balance) -> String {
    let mut out = format!(
        "balance:               {} tokens\nlow-balance threshold: {} tokens\n",
        b.balance, b.low_balance_threshold
    );
    if b.lots.is_empty() {
        out.push_str("no token lots: buy a pack with `flex-admin tokens buy 500`\n");
        return out;
    }
    let mut t =
        Table::new(&["LOT", "TOKENS", "REMAINING", "PURCHASED", "EXPIRES"]).right(&[0, 1, 2]);
    for lot in &b.lots {
        t.row([
            lot.id.to_string(),
            lot.tokens.to_string(),
            lot.remaining.to_string(),
            time(&lot.purchased_at),
            time(&lot.expires_at),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

fn charges(list: &ChargeList, names: &Names) -> String {
    if list.charges.is_empty() {
        return "no charges\n".to_owned();
    }
    let mut t = Table::new(&[
        "TIME", "USER", "PRODUCT", "KIND", "SOURCE", "TOKENS", "REFUNDED", "LOTS",
    ])
    .right(&[5]);
    let (mut total, mut refunded, mut refunds) = (0u64, 0u64, 0usize);
    for c in &list.charges {
        total = total.saturating_add(c.tokens);
        // A short run's refund (R13): its tokens and when; a subscription
        // window is refunded with 0.
        let refund = match c.refunded_at {
            Some(at) => {
                refunded = refunded.saturating_add(c.refunded_tokens);
                refunds += 1;
                format!("{} at {}", c.refunded_tokens, time(&at))
            }
            None => "-".to_owned(),
        };
        let kind = match c.kind {
            ChargeKind::Window => "window".to_owned(),
            ChargeKind::Renewal => "renewal".to_owned(),
            ChargeKind::PerResult => match c.results {
                Some(n) => format!("per-result ({n})"),
                None => "per-result".to_owned(),
            },
        };
        let lots = if c.lots.is_empty() {
            "-".to_owned()
        } else {
            c.lots
                .iter()
                .map(|s| format!("{}:{}", s.lot_id, s.tokens))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.row([
            time(&c.created_at),
            c.user.clone(),
            names.label(&c.product).to_owned(),
            kind,
            c.source.as_str().to_owned(),
            c.tokens.to_string(),
            refund,
            lots,
        ]);
    }
    let mut out = t.render();
    if refunds == 0 {
        out.push_str(&format!(
            "total: {total} tokens in {} charge(s); LOTS shows lot:tokens\n",
            list.charges.len()
        ));
    } else {
        out.push_str(&format!(
            "total: {total} tokens in {} charge(s), {refunded} refunded in {refunds} short run(s): {} spent; LOTS shows lot:tokens\n",
            list.charges.len(),
            total.saturating_sub(refunded)
        ));
    }
    out
}

fn notices(list: &NoticeList) -> String {
    if list.notices.is_empty() {
        return "no notices\n".to_owned();
    }
    let mut t = Table::new(&["TIME", "KIND", "MESSAGE"]);
    for n in &list.notices {
        t.row([
            time(&n.created_at),
            n.kind.as_str().to_owned(),
            n.message.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::cli::ModeArg;
    use serde_json::json;

    fn show(command: Command, body: serde_json::Value) -> String {
        render(&command, "GET /x", &body.to_string(), &Names::default()).expect("renders")
    }

    #[test]
    fn users_list_is_a_table() {
        let out = show(
            Command::Users(UsersCmd::List),
            json!({"users": [
                {"email": "ann@example.com", "first_name": "Ann", "last_name": "Lee",
                 "flex_assigned": true, "subscriptions": ["revit", "maya"]},
                {"email": "bo@example.com", "first_name": "Bo", "last_name": "Ng",
                 "flex_assigned": false}
            ]}),
        );
        assert_eq!(
            out,
            "EMAIL            NAME     FLEX  SUBSCRIPTIONS\n\
             ann@example.com  Ann Lee  yes   revit, maya\n\
             bo@example.com   Bo Ng    no    -\n"
        );
    }

    #[test]
    fn balance_shows_total_threshold_and_lots() {
        let out = show(
            Command::Tokens(TokensCmd::Balance),
            json!({"balance": 486, "low_balance_threshold": 100, "lots": [
                {"id": 1, "tokens": 500, "remaining": 486,
                 "purchased_at": "2026-03-15T10:00:00Z", "expires_at": "2027-03-15T10:00:00Z"}
            ]}),
        );
        assert_eq!(
            out,
            "balance:               486 tokens\n\
             low-balance threshold: 100 tokens\n\
             \n\
             LOT  TOKENS  REMAINING  PURCHASED             EXPIRES\n\
             \x20 1     500        486  2026-03-15T10:00:00Z  2027-03-15T10:00:00Z\n"
        );
    }

    #[test]
    fn empty_balance_says_how_to_buy() {
        let out = show(
            Command::Tokens(TokensCmd::Balance),
            json!({"balance": 0, "low_balance_threshold": 0, "lots": []}),
        );
        assert!(out.contains("flex-admin tokens buy"), "{out}");
    }

    #[test]
    fn charges_table_has_the_columns_and_a_total() {
        let out = show(
            Command::Charges {
                user: None,
                product: None,
            },
            json!({"charges": [
                {"id": 1, "claim_id": "c1", "user": "ann@example.com", "product": "autocad",
                 "kind": "window", "source": "tokens", "tokens": 7,
                 "lots": [{"lot_id": 1, "tokens": 5}, {"lot_id": 2, "tokens": 2}],
                 "window": {"id": "w1", "start": "2026-03-16T08:00:00Z", "end": "2026-03-17T08:00:00Z"},
                 "created_at": "2026-03-16T08:00:00Z"},
                {"id": 2, "claim_id": "c2", "user": "ann@example.com", "product": "recap-photo",
                 "kind": "per_result", "source": "tokens", "tokens": 2, "results": 85,
                 "lots": [{"lot_id": 2, "tokens": 2}], "created_at": "2026-03-16T09:00:00Z"},
                {"id": 3, "claim_id": "c3", "user": "bo@example.com", "product": "revit",
                 "kind": "renewal", "source": "subscription", "tokens": 0, "lots": [],
                 "created_at": "2026-03-17T08:00:00Z"}
            ]}),
        );
        let refunded = show(
            Command::Charges {
                user: None,
                product: None,
            },
            json!({"charges": [
                {"id": 1, "claim_id": "c1", "user": "ann@example.com", "product": "autocad",
                 "kind": "window", "source": "tokens", "tokens": 7,
                 "lots": [{"lot_id": 1, "tokens": 7}],
                 "window": {"id": "w1", "start": "2026-03-16T08:00:00Z", "end": "2026-03-17T08:00:00Z"},
                 "created_at": "2026-03-16T08:00:00Z",
                 "refunded_tokens": 7, "refunded_at": "2026-03-16T08:05:00Z"},
                {"id": 2, "claim_id": "c2", "user": "ann@example.com", "product": "autocad",
                 "kind": "window", "source": "tokens", "tokens": 7,
                 "lots": [{"lot_id": 1, "tokens": 7}],
                 "window": {"id": "w2", "start": "2026-03-16T08:05:01Z", "end": "2026-03-17T08:05:01Z"},
                 "created_at": "2026-03-16T08:05:01Z"},
                {"id": 3, "claim_id": "c3", "user": "bo@example.com", "product": "revit",
                 "kind": "window", "source": "subscription", "tokens": 0, "lots": [],
                 "window": {"id": "w3", "start": "2026-03-16T09:00:00Z", "end": "2026-03-17T09:00:00Z"},
                 "created_at": "2026-03-16T09:00:00Z", "refunded_at": "2026-03-16T09:10:00Z"}
            ]}),
        );
        assert_eq!(
            refunded,
            "TIME                  USER             PRODUCT  KIND    SOURCE        TOKENS  REFUNDED                   LOTS\n\
             2026-03-16T08:00:00Z  ann@example.com  autocad  window  tokens             7  7 at 2026-03-16T08:05:00Z  1:7\n\
             2026-03-16T08:05:01Z  ann@example.com  autocad  window  tokens             7  -                          1:7\n\
             2026-03-16T09:00:00Z  bo@example.com   revit    window  subscription       0  0 at 2026-03-16T09:10:00Z  -\n\
             total: 14 tokens in 3 charge(s), 7 refunded in 2 short run(s): 7 spent; LOTS shows lot:tokens\n"
        );
        assert_eq!(
            out,
            "TIME                  USER             PRODUCT      KIND             SOURCE        TOKENS  REFUNDED  LOTS\n\
             2026-03-16T08:00:00Z  ann@example.com  autocad      window           tokens             7  -         1:5, 2:2\n\
             2026-03-16T09:00:00Z  ann@example.com  recap-photo  per-result (85)  tokens             2  -         2:2\n\
             2026-03-17T08:00:00Z  bo@example.com   revit        renewal          subscription       0  -         -\n\
             total: 9 tokens in 3 charge(s); LOTS shows lot:tokens\n"
        );
    }

    #[test]
    fn products_show_charge_models_and_sample_marker() {
        let out = show(
            Command::Products,
            json!({"products": [
                {"id": "autocad", "name": "AutoCAD", "charge": {"model": "daily", "tokens": 7},
                 "executables": {"linux": [], "macos": [], "windows": ["acad.exe"]}, "sample": true},
                {"id": "recap-photo", "name": "ReCap Photo",
                 "charge": {"model": "per_result", "tokens": 1, "per": 50}}
            ]}),
        );
        assert!(out.starts_with(
            "ID           NAME         CHARGE                  RATE\n\
             autocad      AutoCAD      7 tokens/day            sample\n\
             recap-photo  ReCap Photo  1 token per 50 results\n"
        ));
        assert!(out.contains("sample rates are illustrative"));
    }

    #[test]
    fn defaults_describe_the_mode() {
        let set = Command::Defaults(DefaultsCmd::Set {
            mode: ModeArg::Allow,
            products: vec![],
        });
        assert_eq!(
            show(
                set.clone(),
                json!({"mode": "allow", "products": ["autocad", "revit"]})
            ),
            "Flex users may open only: autocad, revit (mode allow)\n"
        );
        assert_eq!(
            show(set.clone(), json!({"mode": "deny", "products": ["maya"]})),
            "Flex users may open every product but: maya (mode deny)\n"
        );
        assert_eq!(
            show(set, json!({"mode": "all", "products": []})),
            "Flex users may open every product (mode all)\n"
        );
    }

    #[test]
    fn notices_and_single_answers() {
        let out = show(
            Command::Notices,
            json!({"notices": [{"id": 2, "kind": "low_balance", "message": "99 tokens left",
                                "created_at": "2026-03-20T10:00:00Z"}]}),
        );
        assert_eq!(
            out,
            "TIME                  KIND         MESSAGE\n\
             2026-03-20T10:00:00Z  low_balance  99 tokens left\n"
        );
        let out = show(
            Command::Tokens(TokensCmd::Buy { tokens: 500 }),
            json!({"id": 3, "tokens": 500, "remaining": 500,
                   "purchased_at": "2026-03-15T10:00:00Z", "expires_at": "2027-03-15T10:00:00Z"}),
        );
        assert_eq!(
            out,
            "bought lot 3: 500 tokens, expires 2027-03-15T10:00:00Z\n"
        );
        let out = show(
            Command::EnrollToken(crate::admin::cli::EnrollTokenArgs {
                action: None,
                uses: None,
                ttl: None,
                note: None,
            }),
            json!({"token": "et_abc", "expires_at": "2026-03-16T10:00:00Z"}),
        );
        assert!(out.starts_with("enrollment token: et_abc\n"), "{out}");
        let remove = Command::Subscriptions(SubscriptionsCmd::Remove {
            email: flex_protocol::Email::parse("ann@example.com").unwrap(),
            product: "revit".parse().unwrap(),
        });
        assert_eq!(
            render(&remove, "DELETE /x", "", &Names::default()).unwrap(),
            "removed the subscription of ann@example.com to revit\n"
        );
    }

    #[test]
    fn import_lists_each_bad_line() {
        let out = import(
            &serde_json::from_value(json!({
                "created": 0, "updated": 0, "assigned": 0,
                "errors": [{"line": 3, "message": "'not-an-email' is not an email address"},
                           {"line": 7, "message": "first name is empty"}],
                "error": {"code": "invalid_request", "message": "2 bad lines"}
            }))
            .unwrap(),
        );
        assert_eq!(
            out,
            "2 bad line(s), nothing was imported:\n\
             line 3: 'not-an-email' is not an email address\n\
             line 7: first name is empty\n"
        );
        let out = import(&ImportResult {
            created: 2,
            updated: 1,
            assigned: 3,
            errors: vec![],
        });
        assert_eq!(out, "imported: 2 created, 1 updated, 3 assigned to Flex\n");
    }

    #[test]
    fn pretty_json_keeps_key_order_and_matches_serde_json_layout() {
        let body =
            r#"{"z":1,"a":{"s":"x, {y}: \\\"q\\\"","e":[],"o":{}},"l":[1, {"b":true}],"n":null}"#;
        let pretty = pretty_json("GET /x", body).unwrap();
        assert_eq!(
            pretty,
            r#"{
  "z": 1,
  "a": {
    "s": "x, {y}: \\\"q\\\"",
    "e": [],
    "o": {}
  },
  "l": [
    1,
    {
      "b": true
    }
  ],
  "n": null
}"#
        );
        // Same layout as serde_json's own pretty printer when the keys happen to be sorted.
        let sorted = r#"{ "a" : [ 1 , 2 ], "b" : { "c" : "d" } }"#;
        let value: serde_json::Value = serde_json::from_str(sorted).unwrap();
        assert_eq!(
            pretty_json("GET /x", sorted).unwrap(),
            serde_json::to_string_pretty(&value).unwrap()
        );
        assert!(pretty_json("GET /x", "{\"a\":").is_err());
    }

    #[test]
    fn an_unexpected_body_is_a_decode_error_naming_the_call() {
        let err = render(
            &Command::Notices,
            "GET /v1/admin/notices",
            "{\"nope\":1}",
            &Names::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot read the server's answer to GET /v1/admin/notices:"),
            "{msg}"
        );
    }
}
