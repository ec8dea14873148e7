//! Admin notices by email, against a real SMTP server (aiosmtpd): every
//! recipient gets each notice once, with its subject and message; a notice
//! raised while the SMTP server is down is sent when it comes back, and the
//! claims that raised it were not held up.

use flex_e2e::smtp::{free_port, SmtpSink};
use flex_e2e::{Device, Server, ServerOpts};
use serde_json::{json, Value};

fn config(port: u16) -> String {
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\n\
         from = \"Flex licensing <flex@example.com>\"\n\
         to = [\"it@example.com\", \"Finance <finance@example.com>\"]\n\
         console_url = \"https://licensing.example.com/admin/\"\n\
         check_interval = \"100ms\"\nretry = \"200ms\"\n"
    )
}

fn server(port: u16) -> Server {
    Server::start(ServerOpts {
        test_clock: true,
        config: Some(config(port)),
        ..Default::default()
    })
}

/// A per-result job of `results` photos (1 token per 50) that must be granted.
async fn photos(s: &Server, dev: &Device, results: u64) -> Value {
    let (status, v) = s
        .claim(
            dev,
            json!({"user": "ada@example.com", "product": "recap-photo", "results": results}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["decision"], "granted", "{v}");
    v
}

fn assert_mail(m: &Value, subject: &str, body_starts: &str) {
    assert_eq!(
        m["rcpt_tos"],
        json!(["it@example.com", "finance@example.com"]),
        "{m}"
    );
    assert_eq!(m["mail_from"], "flex@example.com");
    assert_eq!(m["subject"], subject, "{m}");
    let body = m["body"].as_str().unwrap();
    assert!(body.starts_with(body_starts), "{body}");
    assert!(
        body.contains("https://licensing.example.com/admin/"),
        "{body}"
    );
}

/// Waits until the server has recorded notice `id` as mailed.
fn mailed_recorded(s: &Server, id: i64) {
    let db = rusqlite::Connection::open(s.data_dir.join("flex.db")).unwrap();
    for _ in 0..600 {
        let sent: Option<String> = db
            .query_row(
                "SELECT sent_at FROM notice_mail WHERE notice_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap_or(None);
        if sent.is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("notice {id} was mailed but never recorded as sent");
}

#[tokio::test]
async fn each_notice_is_mailed_once_to_every_recipient() {
    let sink = SmtpSink::start(0);
    let mut s = server(sink.port);
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;

    photos(&s, &dev, 4000).await; // 80 tokens: 20 left, the low-balance line
    assert_mail(
        &sink.next(30),
        "[Flex] Low token balance",
        "token balance is 20, at or below 20% of the 100 tokens",
    );
    photos(&s, &dev, 1000).await; // the last 20
    assert_mail(
        &sink.next(30),
        "[Flex] Out of tokens: Flex launches are refused",
        "token balance is 0",
    );
    s.buy(500).await;
    // 90 days before the new lot expires.
    s.set_time("2027-08-10T08:00:00Z").await;
    let m = sink.next(30);
    assert_mail(
        &m,
        "[Flex] Tokens expiring soon",
        "lot 2: 500 tokens expire on 2027-11-02",
    );

    // After a restart nothing is mailed again: the next mail is a new notice.
    // (Killed between a send and its record, a server sends that notice again:
    // wait for the record, as a clean stop would.)
    mailed_recorded(&s, 3);
    s.restart();
    let dev2 = s.enroll().await;
    let (_, denied) = s
        .claim(
            &dev2,
            json!({"user": "ada@example.com", "product": "recap-photo", "results": 50000}),
        )
        .await;
    assert_eq!(denied["reason"], "out_of_tokens", "{denied}");
    assert_mail(
        &sink.next(30),
        "[Flex] Out of tokens: Flex launches are refused",
        "ada@example.com was refused ReCap Photo",
    );
}

#[tokio::test]
async fn a_notice_raised_while_smtp_is_down_is_sent_when_it_is_back() {
    let port = free_port();
    let s = server(port);
    s.set_time("2026-11-02T08:00:00Z").await;
    s.buy(100).await;
    s.flex_user("ada@example.com").await;
    let dev = s.enroll().await;
    // Nothing listens on the SMTP port: the claim that raises the notice and
    // the ones after it are answered all the same.
    photos(&s, &dev, 4000).await;
    let v = photos(&s, &dev, 50).await;
    assert_eq!(v["balance"], 19);
    assert_eq!(s.notices().await.len(), 1);

    let sink = SmtpSink::start(port);
    assert_mail(
        &sink.next(60),
        "[Flex] Low token balance",
        "token balance is 20",
    );
    // The retried notice went once: the next mail is the next notice.
    photos(&s, &dev, 950).await;
    assert_mail(
        &sink.next(30),
        "[Flex] Out of tokens: Flex launches are refused",
        "token balance is 0",
    );
}

#[tokio::test]
async fn a_bad_smtp_section_stops_the_server_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        "[smtp]\nhost = \"127.0.0.1\"\nport = 25\nsecurity = \"none\"\nfrom = \"flex@example.com\"\nto = [\"nobody\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(flex_e2e::bin("flex-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("smtp.to = nobody is not valid: is not an email address"),
        "{err}"
    );
}
