//! `flex-admin` against a real `flex-server`: every subcommand's human output and
//! `--json`, import refusals, and the next-step messages for a wrong or missing
//! token, an unreachable server, a server without a test clock and a private CA.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use flex_e2e::{bin, Server, ServerOpts, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Runs `flex-admin --server URL ARGS` with the test admin token.
fn admin(url: &str, args: &[&str]) -> Output {
    admin_with(url, args, Some(ADMIN_TOKEN))
}

fn admin_with(url: &str, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("flex-admin"));
    cmd.arg("--server")
        .arg(url)
        .args(args)
        .env_remove("FLEX_SERVER");
    match token {
        Some(t) => cmd.env("FLEX_ADMIN_TOKEN", t),
        None => cmd.env_remove("FLEX_ADMIN_TOKEN"),
    };
    cmd.output().expect("run flex-admin")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(url: &str, args: &[&str]) -> String {
    let out = admin(url, args);
    assert!(
        out.status.success(),
        "flex-admin {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs a command with `--json` that must succeed and returns the parsed answer.
fn ok_json(url: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let text = ok(url, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed no json ({e}): {text}"))
}

/// Runs a command that must fail with exit status 1 and returns stdout and stderr.
fn fails(url: &str, args: &[&str], token: Option<&str>) -> (String, String) {
    let out = admin_with(url, args, token);
    assert_eq!(
        out.status.code(),
        Some(1),
        "flex-admin {args:?} should fail: {}{}",
        stdout(&out),
        stderr(&out)
    );
    (stdout(&out), stderr(&out))
}

#[tokio::test]
async fn every_subcommand_works_against_the_server() {
    let s = Server::start_test_clock();
    let url = s.url.as_str();

    assert!(ok(url, &["health"]).starts_with("flex-server "));
    assert_eq!(
        ok(url, &["test-clock", "set", "2026-03-15T10:00:00Z"]),
        "server time is now 2026-03-15T10:00:00Z\n"
    );
    assert!(
        ok(url, &["tokens", "buy", "500"]).ends_with("500 tokens, expires 2027-03-15T10:00:00Z\n")
    );
    let balance = ok(url, &["tokens", "balance"]);
    assert!(
        balance
            .starts_with("balance:               500 tokens\nlow-balance threshold: 100 tokens\n"),
        "{balance}"
    );
    assert!(
        balance.contains("2026-03-15T10:00:00Z  2027-03-15T10:00:00Z"),
        "{balance}"
    );

    ok(
        url,
        &[
            "users",
            "add",
            "ann@example.com",
            "--first",
            "Ann",
            "--last",
            "Lee",
        ],
    );
    assert_eq!(
        ok(url, &["users", "flex", "ann@example.com", "--assign"]),
        "ann@example.com is now assigned to Flex\n"
    );
    // Tables name products as people know them; --json keeps the ids.
    assert!(
        ok(url, &["subscriptions", "add", "ann@example.com", "revit"])
            .starts_with("ann@example.com now has a subscription to Revit (since "),
    );
    let users = ok(url, &["users", "list"]);
    assert_eq!(
        users,
        "EMAIL            NAME     FLEX  SUBSCRIPTIONS\nann@example.com  Ann Lee  yes   Revit\n"
    );
    let users = ok_json(url, &["users", "list"]);
    assert_eq!(users["users"][0]["subscriptions"], json!(["revit"]));

    assert_eq!(
        ok(
            url,
            &["subscriptions", "remove", "ann@example.com", "revit"],
        ),
        "removed the subscription of ann@example.com to Revit\n"
    );
    assert_eq!(
        ok_json(url, &["users", "list"])["users"][0]["subscriptions"],
        json!([])
    );

    let products = ok(url, &["products"]);
    assert!(
        products.contains("autocad") && products.contains("7 tokens/day"),
        "{products}"
    );
    assert!(products.contains("1 token per 50 results"), "{products}");

    assert_eq!(
        ok(
            url,
            &["defaults", "set", "--mode", "allow", "autocad", "revit"]
        ),
        "Flex users may open only: AutoCAD, Revit (mode allow)\n"
    );
    assert_eq!(
        ok_json(url, &["defaults", "show"]),
        json!({"mode": "allow", "products": ["autocad", "revit"]})
    );
    ok(url, &["defaults", "set", "--mode", "all"]);

    let token = ok_json(url, &["enroll-token"]);
    assert!(
        token["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{token}"
    );
    assert!(ok(url, &["enroll-token"]).starts_with("enrollment token: "));

    // A launch shows up in the ledger, filtered by user and product.
    let dev = s.enroll().await;
    s.launch(&dev, "ann@example.com", "autocad").await;
    let charges = ok(
        url,
        &[
            "charges",
            "--user",
            "ann@example.com",
            "--product",
            "autocad",
        ],
    );
    let lines: Vec<&str> = charges.lines().collect();
    assert_eq!(
        lines[0],
        "TIME                  USER             PRODUCT  KIND    SOURCE  TOKENS  REFUNDED  LOTS"
    );
    assert!(
        lines[1].starts_with(
            "2026-03-15T10:00:00Z  ann@example.com  AutoCAD  window  tokens       7  -         "
        ),
        "{charges}"
    );
    assert_eq!(
        lines[2],
        "total: 7 tokens in 1 charge(s); LOTS shows lot:tokens"
    );
    assert_eq!(ok(url, &["charges", "--product", "revit"]), "no charges\n");
    let charges = ok_json(url, &["charges"]);
    assert_eq!(charges["charges"][0]["tokens"], 7);
    assert_eq!(charges["charges"][0]["product"], "autocad");

    // 493 of 500 left is above the 20% line: no notice yet.
    assert_eq!(ok(url, &["notices"]), "no notices\n");
}

#[tokio::test]
async fn a_bad_import_lists_the_lines_changes_nothing_and_fails() {
    let s = Server::start_test_clock();
    let url = s.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.csv",
        "First Name,Last Name,Email\nBo,Ng,bo@example.com\nCy,Ox,not-an-email\n",
    );
    let (out, err) = fails(url, &["users", "import", &bad], Some(ADMIN_TOKEN));
    assert!(
        out.starts_with("1 bad line(s), nothing was imported:\nline 3: "),
        "{out}"
    );
    assert!(out.contains("not-an-email"), "{out}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(ok_json(url, &["users", "list"]), json!({"users": []}));

    let good = write(
        dir.path(),
        "good.csv",
        "\u{feff}email,first name,last name\nbo@example.com,Bo,Ng\ncy@example.com,Cy,Ox\n",
    );
    assert_eq!(
        ok(url, &["users", "import", &good]),
        "imported: 2 created, 0 updated, 2 assigned to Flex\n"
    );
    assert_eq!(
        ok(url, &["users", "import", &good]),
        "imported: 0 created, 0 updated, 0 assigned to Flex\n"
    );
}

#[tokio::test]
async fn errors_tell_the_admin_what_to_do() {
    let s = Server::start(ServerOpts::default()); // no --test-clock
    let url = s.url.as_str();

    let (_, err) = fails(url, &["tokens", "balance"], Some("not-the-token"));
    assert!(
        err.contains("the server refused the admin token: check FLEX_ADMIN_TOKEN or --token-file"),
        "{err}"
    );

    let (_, err) = fails(url, &["tokens", "balance"], None);
    assert!(
        err.contains("set FLEX_ADMIN_TOKEN or pass --token-file"),
        "{err}"
    );

    // The token file the server wrote is not used here (the token came from the
    // environment), so write one like it.
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(dir.path(), "admin-token", &format!("{ADMIN_TOKEN}\n"));
    let out = admin_with(
        url,
        &["tokens", "balance", "--token-file", &token_file],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let (_, err) = fails(
        url,
        &["test-clock", "set", "2026-03-15T10:00:00Z"],
        Some(ADMIN_TOKEN),
    );
    assert!(err.contains("start flex-server with --test-clock"), "{err}");

    let (_, err) = fails(url, &["tokens", "buy", "7"], Some(ADMIN_TOKEN));
    assert!(err.contains("(invalid_request, http 400)"), "{err}");

    let (out, err) = fails(
        url,
        &["users", "flex", "zed@example.com", "--assign", "--json"],
        Some(ADMIN_TOKEN),
    );
    let body: Value = serde_json::from_str(&out).expect("--json prints the error body");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(err.contains("zed@example.com"), "{err}");

    // Usage errors are clap's: exit status 2.
    let out = admin(url, &["users", "flex", "zed@example.com"]);
    assert_eq!(out.status.code(), Some(2));
    // So is an email that is not one: checked before any request, naming the
    // argument and the value, and nothing reaches the server.
    for args in [
        &["users", "add", "zed@", "--first", "Z", "--last", "Ed"][..],
        &["subscriptions", "add", "zed@", "revit"],
    ] {
        let out = admin(url, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("'zed@' is not an email address") && err.contains("<EMAIL>"),
            "{err}"
        );
    }
    assert_eq!(ok_json(url, &["users", "list"]), json!({"users": []}));

    let gone = s.url.clone();
    drop(s);
    let (_, err) = fails(&gone, &["health"], None);
    assert!(
        err.contains(&format!("cannot reach flex-server at {gone}"))
            && err.contains("is it running? check --server or FLEX_SERVER"),
        "{err}"
    );
}

#[tokio::test]
async fn a_private_ca_is_trusted_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_pem = write(dir.path(), "ca.pem", &ca.pem());
    let cert = write(dir.path(), "cert.pem", &leaf.pem());
    let key = write(dir.path(), "key.pem", &leaf_key.serialize_pem());

    let s = Server::start(ServerOpts {
        tls: Some((cert.into(), key.into())),
        ..Default::default()
    });
    let url = s.url.as_str();
    assert!(url.starts_with("https://"), "{url}");

    assert!(ok(url, &["health", "--ca-file", &ca_pem]).starts_with("flex-server "));
    ok(url, &["tokens", "balance", "--ca-file", &ca_pem]);

    let (_, err) = fails(url, &["health"], None);
    assert!(
        err.contains("cannot reach flex-server at") && err.contains("--ca-file"),
        "{err}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path.to_str().unwrap().to_owned()
}
