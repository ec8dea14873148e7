//! Issue 14, defect 9: no throttle on admin-token guesses (708 console logins/s,
//! 1,594 bearer guesses/s). Now an address that presents
//! `limits.admin_auth_failures` wrong tokens (10 by default) within
//! `limits.admin_auth_window` answers 429 with `Retry-After`, on the bearer API
//! and the console's login form alike, and the server logs the address (never
//! the token); the right token from another address still works.

use std::net::{IpAddr, Ipv4Addr};

use flex_e2e::{client_from, Server, ServerOpts, ADMIN_TOKEN};
use reqwest::{redirect, Client, StatusCode};
use serde_json::Value;

fn from(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn balance(s: &Server, client: &Client, token: &str) -> (StatusCode, Option<u64>, Value) {
    let r = client
        .get(format!("{}/v1/admin/balance", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, r.json().await.unwrap())
}

/// A console client from `ip` that does not follow redirects.
fn browser(ip: IpAddr) -> Client {
    Client::builder()
        .local_address(ip)
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `name=value` of cookie `name` that `r` sets.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

/// Loads the login form (its anti-forgery cookie and field) and posts `token`,
/// as a browser would.
async fn login(s: &Server, b: &Client, token: &str) -> reqwest::Response {
    let page = b
        .get(format!("{}/admin/login", s.url))
        .send()
        .await
        .unwrap();
    let guard = set_cookie(&page, "flex_login").expect("the login cookie");
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the login form carries a csrf field")
        .to_owned();
    b.post(format!("{}/admin/login", s.url))
        .header("cookie", guard)
        .form(&[("token", token), ("csrf", &csrf)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn bearer_guesses_get_429_after_ten_while_another_address_still_gets_in() {
    let s = Server::start(ServerOpts {
        capture_log: true,
        ..Default::default()
    });
    let guesser = client_from(from(21), None);
    let wrong = "wrong-admin-token-guess-0001";
    for i in 1..=10 {
        let (status, _, v) = balance(&s, &guesser, wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {i}: {v}");
    }
    let (status, retry, v) = balance(&s, &guesser, wrong).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "too_many_attempts", "{v}");
    let retry = retry.expect("a Retry-After header");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Blocked means blocked: the right token is not even looked at from there.
    let (status, _, _) = balance(&s, &guesser, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    let admin = client_from(from(22), None);
    let (status, _, v) = balance(&s, &admin, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _, _) = balance(&s, &admin, wrong).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "its own count, not the guesser's"
    );

    let log = s.log();
    assert!(
        log.contains("wrong admin token from 127.0.0.21 (1 of 10 allowed in 60s)"),
        "{log}"
    );
    assert!(
        log.contains("admin-token attempts from 127.0.0.21 answer 429"),
        "{log}"
    );
    assert!(
        !log.contains(wrong),
        "the log must never hold a presented token: {log}"
    );
    assert!(!log.contains(ADMIN_TOKEN), "{log}");
}

#[tokio::test]
async fn console_login_guesses_get_429_and_count_with_bearer_guesses() {
    let s = Server::start(ServerOpts::default());
    let guesser = browser(from(31));
    for i in 1..=10 {
        let r = login(&s, &guesser, "wrong-admin-token-guess-0002").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let r = login(&s, &guesser, "wrong-admin-token-guess-0002").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("too many wrong tokens from this address"),
        "the page says why"
    );
    // One count per address, whichever door.
    let bearer = client_from(from(31), None);
    let (status, _, _) = balance(&s, &bearer, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    let admin = browser(from(32));
    let r = login(&s, &admin, ADMIN_TOKEN).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the admin logs in from elsewhere"
    );
    let session = set_cookie(&r, "flex_console").expect("a session cookie");
    let overview = admin
        .get(format!("{}/admin/", s.url))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), StatusCode::OK);
}
