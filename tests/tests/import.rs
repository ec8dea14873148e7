//! R12 CSV import to assign.

use flex_e2e::{Server, ADMIN_TOKEN};
use reqwest::Method as M;
use serde_json::Value;

async fn import(s: &Server, csv: &str) -> (u16, Value) {
    let resp = s
        .http
        .post(format!("{}/v1/admin/users/import", s.url))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/csv")
        .body(csv.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn user_count(s: &Server) -> usize {
    s.ok(M::GET, "/users", None).await["users"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_file_with_a_bad_line_changes_nothing_and_names_the_line() {
    let s = Server::start_test_clock();
    let csv = "First Name,Last Name,Email\n\
               Ada,Lovelace,ada@example.com\n\
               Grace,Hopper,grace-at-example.com\n\
               Alan,Turing,alan@example.com\n";
    let (status, v) = import(&s, csv).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["created"], 0);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["line"], 3);
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("'grace-at-example.com' is not an email address"));
    assert_eq!(v["error"]["code"], "invalid_request");
    assert_eq!(user_count(&s).await, 0, "nothing was imported");
}

#[tokio::test]
async fn import_assigns_and_reimport_changes_nothing() {
    let s = Server::start_test_clock();
    // Any header order and case, a BOM, CRLF line ends.
    let csv = "\u{feff}email,LAST NAME,first name\r\n\
               ada@example.com,Lovelace,Ada\r\n\
               grace@example.com,Hopper,Grace\r\n";
    let (status, v) = import(&s, csv).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["created"].as_u64(), v["assigned"].as_u64()),
        (Some(2), Some(2))
    );
    let (status, again) = import(&s, csv).await;
    assert_eq!(status, 200);
    assert_eq!(again["created"], 0);
    assert_eq!(again["updated"], 0);
    assert_eq!(again["assigned"], 0);
    let users = s.ok(M::GET, "/users", None).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    assert!(users["users"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["flex_assigned"] == true));

    // A user who existed off Flex gets assigned; a changed name is an update.
    s.ok(
        M::PUT,
        "/users/ada@example.com/flex",
        Some(serde_json::json!({"assigned": false})),
    )
    .await;
    let (_, v) = import(
        &s,
        "First Name,Last Name,Email\nAda,King,ada@example.com\nGrace,Hopper,grace@example.com\n",
    )
    .await;
    assert_eq!(
        (
            v["created"].as_u64(),
            v["updated"].as_u64(),
            v["assigned"].as_u64()
        ),
        (Some(0), Some(1), Some(1))
    );
}

#[tokio::test]
async fn oversized_files_are_refused() {
    let s = Server::start_test_clock();
    let mut csv = String::from("First Name,Last Name,Email\n");
    for i in 0..5001 {
        csv.push_str(&format!("A,B,user{i}@example.com\n"));
    }
    let (status, v) = import(&s, &csv).await;
    assert_eq!(status, 422);
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("more than 5000 rows"));
    assert_eq!(user_count(&s).await, 0);

    let huge = "x".repeat(9 * 1024 * 1024);
    let (status, v) = import(&s, &huge).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
}
