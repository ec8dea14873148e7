//! The web console in a real browser: Debian's chromium, headless, driven over
//! WebDriver (chromedriver) by fantoccini. Log in (a wrong token refused), see
//! the balance, open token usage by user, follow a user, submit the estimator,
//! import a CSV with a bad line and see its error, log out; no page loads
//! without the session cookie, and a cross-site post is refused.
//!
//! Screenshots of each page go to target/artifacts/console/ (CI artifacts).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use flex_e2e::smtp::free_port;
use flex_e2e::{Server, ADMIN_TOKEN};
use reqwest::Method as M;
use serde_json::json;

/// chromedriver on a loopback port, with chromium headless in a fresh profile.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let mut driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start /usr/bin/chromedriver (Debian's chromium-driver: tests/run.sh installs it)",
            );
        // chromedriver says when it listens.
        let mut lines = BufReader::new(driver.stdout.take().expect("stdout")).lines();
        loop {
            let line = lines
                .next()
                .expect("chromedriver exited before it was ready")
                .expect("read chromedriver output");
            if line.contains("started successfully") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let client = ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromedriver opens a chromium session");
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts/console");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            client: Some(client),
            _profile: profile,
            shots,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn shot(&self, name: &str) {
        let png = self.c().screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The element's visible text, whitespace runs made single spaces.
    async fn text(&self, css: &str) -> String {
        let e = match self.c().find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => {
                let page = self.c().source().await.unwrap_or_default();
                panic!("no {css} on the page: {e}\n{page}")
            }
        };
        let t = e.text().await.unwrap();
        t.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    async fn path(&self) -> String {
        let u = self.c().current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.c().find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    /// Clicks a submit button or link and waits until the next page replaced
    /// this one (its old root element goes stale).
    async fn submit(&self, css: &str) {
        let old = self.c().find(Locator::Css("html")).await.unwrap();
        self.click(css).await;
        for _ in 0..400 {
            if old.tag_name().await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("clicking {css} did not load another page");
    }

    async fn click(&self, css: &str) {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} to click: {e}"))
            .click()
            .await
            .unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.driver.kill().ok();
        self.driver.wait().ok();
    }
}

/// Ada on AutoCAD 5 days of November, Bob on his Revit subscription 3 days.
async fn seed(s: &Server) {
    s.set_time("2026-11-01T07:00:00Z").await;
    s.buy(500).await;
    s.flex_user("ada@example.com").await;
    s.flex_user("bob@example.com").await;
    s.ok(
        M::POST,
        "/subscriptions",
        Some(json!({"email": "bob@example.com", "product": "revit"})),
    )
    .await;
    let dev = s.enroll().await;
    for day in 2..=6 {
        s.set_time(&format!("2026-11-{day:02}T08:00:00Z")).await;
        s.launch(&dev, "ada@example.com", "autocad").await;
        if day <= 4 {
            s.launch(&dev, "bob@example.com", "revit").await;
        }
    }
    s.set_time("2026-11-20T09:00:00Z").await;
}

const PAGES: [&str; 6] = [
    "/admin/",
    "/admin/usage",
    "/admin/recommendations",
    "/admin/estimator",
    "/admin/users",
    "/admin/users/ada@example.com",
];

#[tokio::test]
async fn an_admin_uses_the_console_in_chromium() {
    let s = Server::start_test_clock();
    seed(&s).await;
    let mut b = Browser::start().await;
    let base = s.url.clone();

    // No session: every page sends the browser to the login page.
    b.c().goto(&format!("{base}/admin/usage")).await.unwrap();
    assert_eq!(b.path().await, "/admin/login");
    b.shot("login").await;

    // A wrong token is refused, next to the field.
    b.fill("#token", "not-the-token").await;
    b.submit("form.card button[type=submit]").await;
    assert_eq!(b.path().await, "/admin/login");
    assert_eq!(
        b.text(".field-error").await,
        "this is not the admin token of this server"
    );
    b.shot("login-refused").await;

    // The right one opens the overview with the balance: 500 - 5 × 7.
    b.fill("#token", ADMIN_TOKEN).await;
    b.submit("form.card button[type=submit]").await;
    assert_eq!(b.path().await, "/admin/");
    assert_eq!(b.text("#balance").await, "465 tokens");
    assert!(b
        .c()
        .find(Locator::Css("svg.chart polyline.past"))
        .await
        .is_ok());
    b.shot("overview").await;
    // The session cookie is not readable by page scripts.
    let cookies = b
        .c()
        .execute("return document.cookie", vec![])
        .await
        .unwrap();
    assert!(
        !cookies.as_str().unwrap_or("").contains("flex_console"),
        "{cookies}"
    );

    // Token usage, by user, for November.
    b.c()
        .goto(&format!("{base}/admin/usage?from=2026-11-01&to=2026-11-30"))
        .await
        .unwrap();
    b.c()
        .find(Locator::Css("#by"))
        .await
        .unwrap()
        .select_by_value("user")
        .await
        .unwrap();
    b.submit("form.filters button[type=submit]").await;
    assert!(b.path().await.contains("by=user"), "{}", b.path().await);
    assert_eq!(b.text("#total-tokens").await, "35");
    let table = b.text("table.usage").await;
    assert!(table.contains("ada@example.com 35 5 1"), "{table}");
    assert!(table.contains("bob@example.com 0 3 1"), "{table}");
    b.shot("usage-by-user").await;

    // Follow Ada.
    b.submit("a[href='/admin/users/ada@example.com']").await;
    assert_eq!(b.text("main h1").await, "ada@example.com");
    let usage = b.text("#user-usage").await;
    assert!(usage.contains("2026-11 5 days · 35 tokens"), "{usage}");
    b.shot("user").await;

    // A month earlier there is no usage: the empty state says so.
    b.c()
        .goto(&format!("{base}/admin/usage?from=2026-10-01&to=2026-10-31"))
        .await
        .unwrap();
    assert_eq!(b.text("p.empty").await, "No usage in this period.");

    // Recommendations for November: Bob's Revit subscription, 3 days.
    b.c()
        .goto(&format!("{base}/admin/recommendations?month=2026-11"))
        .await
        .unwrap();
    let rec = b.text("main table").await;
    assert!(
        rec.contains("bob@example.com revit 3 subscription flex"),
        "{rec}"
    );
    b.shot("recommendations").await;

    // The estimator: a bad row first, its error next to it; then a good one.
    b.c()
        .goto(&format!("{base}/admin/estimator"))
        .await
        .unwrap();
    b.c()
        .find(Locator::Css("select[name=product_1]"))
        .await
        .unwrap()
        .select_by_value("revit")
        .await
        .unwrap();
    b.fill("input[name=users_1]", "0").await;
    b.fill("input[name=days_1]", "20").await;
    b.fill("#months", "1").await;
    b.submit("button[value=rows]").await;
    let err = b.text("input[name=users_1] + .field-error").await;
    assert!(err.starts_with("row 1 (revit): users must be"), "{err}");
    b.fill("input[name=users_1]", "12").await;
    b.submit("button[value=rows]").await;
    assert_eq!(b.text("#tokens-total").await, "2,400");
    assert_eq!(
        b.text("#packs").await,
        "Buy: 2 × 1,000 + 4 × 100 = 2,400 tokens"
    );
    b.shot("estimator").await;

    // Users: a CSV with a bad line changes nothing and says which line.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("staff.csv");
    std::fs::write(
        &csv,
        "First Name,Last Name,Email\nCy,Young,cy@example.com\nDee,Doe,not-an-email\n",
    )
    .unwrap();
    b.c().goto(&format!("{base}/admin/users")).await.unwrap();
    b.c()
        .find(Locator::Css("#file"))
        .await
        .unwrap()
        .send_keys(csv.to_str().unwrap())
        .await
        .unwrap();
    b.submit("form[action='/admin/users/import'] button[type=submit]")
        .await;
    let errors = b.text("#import-errors").await;
    assert!(
        errors.contains("3 'not-an-email' is not an email address"),
        "{errors}"
    );
    assert!(b
        .text("#file + .field-error")
        .await
        .contains("nothing was imported"));
    assert!(!b.text("#users").await.contains("cy@example.com"));
    b.shot("users-import-error").await;

    // An address the browser's own check lets through (no dot in the
    // domain) is refused by the server, beside the field, and adds no one.
    b.fill("#email", "ann@localhost").await;
    b.fill("#first_name", "Ann").await;
    b.fill("#last_name", "Lee").await;
    b.submit("form[action='/admin/users'] button[type=submit]")
        .await;
    assert!(
        b.text("#email + .field-error")
            .await
            .contains("'ann@localhost' is not an email address"),
        "{}",
        b.text("body").await
    );
    assert!(!b.text("#users").await.contains("ann@localhost"));
    b.shot("users-add-bad-email").await;
    // A user page for something that is not an address says so.
    b.c()
        .goto(&format!("{base}/admin/users/not-an-email"))
        .await
        .unwrap();
    assert!(
        b.text("main")
            .await
            .contains("'not-an-email' is not an email address"),
        "{}",
        b.text("body").await
    );
    b.shot("user-bad-email-path").await;
    b.c().goto(&format!("{base}/admin/users")).await.unwrap();
    let users = s.ok(M::GET, "/users", None).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2);

    // Flex off for Bob, from the list.
    b.submit("button[aria-label='turn Flex off for bob@example.com']")
        .await;
    assert_eq!(b.path().await, "/admin/users");
    let bob = s.ok(M::GET, "/users", None).await;
    assert_eq!(bob["users"][1]["flex_assigned"], false, "{bob}");

    // A post from another site, with the session cookie, is refused.
    let session = b
        .c()
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name() == "flex_console")
        .expect("session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let forged = raw
        .post(format!("{base}/admin/users/ada@example.com/flex"))
        .header("cookie", format!("flex_console={}", session.value()))
        .header("origin", "https://evil.example")
        .form(&[("assigned", "off")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // Same site but without the form's CSRF token: refused too.
    let no_csrf = raw
        .post(format!("{base}/admin/users/ada@example.com/flex"))
        .header("cookie", format!("flex_console={}", session.value()))
        .form(&[("assigned", "off")])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
    let ada = s.ok(M::GET, "/users", None).await;
    assert_eq!(ada["users"][0]["flex_assigned"], true, "{ada}");

    // Log out: the cookie is gone and pages need a login again.
    b.c().goto(&format!("{base}/admin/")).await.unwrap();
    b.submit("form.logout button").await;
    assert_eq!(b.path().await, "/admin/login?out=1");
    assert_eq!(b.text("p.note").await, "You are logged out.");
    b.c()
        .goto(&format!("{base}/admin/estimator"))
        .await
        .unwrap();
    assert_eq!(b.path().await, "/admin/login");
    // The old cookie value is dead even if replayed.
    let replay = raw
        .get(format!("{base}/admin/"))
        .header("cookie", format!("flex_console={}", session.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 303);

    if let Some(c) = b.client.take() {
        c.close().await.ok();
    }
}

/// The login page's guard cookie (`flex_login=…`) and its form's CSRF field.
async fn login_page(s: &Server, raw: &reqwest::Client) -> (String, String) {
    let login = raw
        .get(format!("{}/admin/login", s.url))
        .send()
        .await
        .unwrap();
    let guard = set_cookie(&login, "flex_login=");
    let guard = guard.split(';').next().unwrap().to_owned();
    (guard, csrf_field(&login.text().await.unwrap()))
}

/// Logs in as a browser would (the login cookie and form field, then the
/// token); returns the session's whole `Set-Cookie` line.
async fn log_in(s: &Server, raw: &reqwest::Client) -> String {
    let (guard, csrf) = login_page(s, raw).await;
    let r = raw
        .post(format!("{}/admin/login", s.url))
        .header("cookie", &guard)
        .form(&[("token", ADMIN_TOKEN), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    set_cookie(&r, "flex_console=")
}

fn set_cookie(r: &reqwest::Response, prefix: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} cookie"))
}

/// The value of a page's hidden `csrf` field.
fn csrf_field(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a csrf field")
        .to_owned()
}

/// A console path naming something that is not an email address answers a
/// 400 page that says so (it was a 500 "something went wrong" when the store
/// found out) and changes nothing; the add form names a bad address next to
/// its field and stores a good one trimmed and lowercase.
#[tokio::test]
async fn console_paths_and_forms_parse_emails_where_they_enter() {
    let s = Server::start_test_clock();
    s.flex_user("ada@example.com").await;
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = log_in(&s, &raw).await;
    let session = session.split(';').next().unwrap().to_owned();
    let page = |path: &str| {
        raw.get(format!("{}{path}", s.url))
            .header("cookie", &session)
            .send()
    };
    let r = page("/admin/users").await.unwrap();
    let csrf = csrf_field(&r.text().await.unwrap());
    let post = |path: &str, form: &[(&str, &str)]| {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        form.push(("csrf", &csrf));
        raw.post(format!("{}{path}", s.url))
            .header("cookie", &session)
            .form(&form)
            .send()
    };
    let said = |body: &str, value: &str| {
        body.contains(&format!("{value}' is not an email address")) && body.contains("<nav>")
    };

    let r = page("/admin/users/not-an-email").await.unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(said(&body, "not-an-email"), "{body}");
    for (path, form) in [
        ("/admin/users/ada@/flex", &[("assigned", "off")][..]),
        ("/admin/users/ada@/subscriptions", &[("product", "revit")]),
        (
            "/admin/users/ada@/subscriptions/remove",
            &[("product", "revit")],
        ),
    ] {
        let r = post(path, form).await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body = r.text().await.unwrap();
        assert!(said(&body, "ada@"), "{path}: {body}");
    }
    let r = post(
        "/admin/users",
        &[("email", "nope"), ("first_name", "N"), ("last_name", "O")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(said(&body, "nope"), "{body}");
    assert_eq!(
        s.ok(M::GET, "/users", None).await["users"],
        json!([{"email": "ada@example.com", "first_name": "Test", "last_name": "User",
                "flex_assigned": true, "subscriptions": []}])
    );

    // Good addresses, however written, name the one lowercase user.
    let r = post(
        "/admin/users",
        &[
            ("email", " Grace@Example.COM "),
            ("first_name", "Grace"),
            ("last_name", "Hopper"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = post(
        "/admin/users/GRACE@example.com/subscriptions",
        &[("product", "revit")],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/users/grace@example.com");
    let r = page("/admin/users/Grace@Example.com").await.unwrap();
    assert_eq!(r.status(), 200);
    let users = s.ok(M::GET, "/users", None).await;
    assert_eq!(users["users"][1]["email"], "grace@example.com", "{users}");
    assert_eq!(
        users["users"][1]["subscriptions"],
        json!(["revit"]),
        "{users}"
    );
}

#[tokio::test]
async fn no_page_without_a_session_and_sessions_expire() {
    let s = Server::start_test_clock();
    s.set_time("2026-11-02T08:00:00Z").await;
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for page in PAGES {
        let r = raw.get(format!("{}{page}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{page}");
        assert_eq!(r.headers()["location"], "/admin/login", "{page}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    }
    // Posts without a session change nothing either.
    let r = raw
        .post(format!("{}/admin/users", s.url))
        .form(&[
            ("email", "x@example.com"),
            ("first_name", "X"),
            ("last_name", "Y"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(s.ok(M::GET, "/users", None).await["users"], json!([]));

    // A login posted without the login cookie (from another site) is refused.
    let (_, csrf) = login_page(&s, &raw).await;
    let r = raw
        .post(format!("{}/admin/login", s.url))
        .form(&[("token", ADMIN_TOKEN), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let cookie = log_in(&s, &raw).await;
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Max-Age=28800"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    for page in PAGES {
        let r = raw
            .get(format!("{}{page}", s.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // Ada does not exist on this server: her page is a 404, still rendered.
        assert!(
            status == 200 || (page.ends_with("example.com") && status == 404),
            "{page}: {status}"
        );
        let body = r.text().await.unwrap();
        assert!(
            body.contains("<nav>") && !body.contains(ADMIN_TOKEN),
            "{page}"
        );
    }
    // Eight hours later the session has expired.
    s.set_time("2026-11-02T16:00:01Z").await;
    let r = raw
        .get(format!("{}/admin/", s.url))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}
