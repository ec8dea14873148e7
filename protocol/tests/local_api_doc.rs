//! `docs/local-api.md` cannot drift from the code: every example in it parses as
//! the current types and means exactly what its golden file says, and every
//! operation, event and error code is documented.
//!
//! An example is a fenced block ```` ```json golden=NAME ````; NAME is a file of
//! `tests/data` (pinned by `golden.rs`). The example must parse as that golden's
//! type, name no field the type does not have, and re-encode to the golden's
//! value (so an example may leave out optional fields, but not change them).
//! The lists of operations, events and codes come from the types themselves
//! (serde's "expected one of" list), so a new variant fails here until it is
//! documented.

use std::collections::BTreeSet;
use std::path::PathBuf;

use flex_protocol::socket::{
    Empty, ErrReply, Event, HelloReply, LaunchReply, OkReply, Request, ResultReply, StatusReply,
};
use flex_protocol::ErrorCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

fn doc() -> String {
    repo_file("docs/local-api.md")
}

/// One ```` ```json golden=NAME ```` block of the document.
struct Example {
    golden: String,
    text: String,
    line: usize,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let golden = words.find_map(|w| w.strip_prefix("golden="));
        let mut text = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        if lang != "json" {
            continue;
        }
        let golden = golden.unwrap_or_else(|| {
            panic!(
                "docs/local-api.md:{}: a json example needs golden=NAME",
                n + 1
            )
        });
        out.push(Example {
            golden: golden.to_string(),
            text,
            line: n + 1,
        });
    }
    out
}

/// Every key of `example` is in `encoded`, with the same value; keys only in
/// `encoded` must be null or `false`/empty there (left-out optional fields).
fn same_meaning(example: &Value, encoded: &Value, at: &str) {
    match (example, encoded) {
        (Value::Object(e), Value::Object(c)) => {
            for (k, v) in e {
                let other = c.get(k).unwrap_or_else(|| {
                    panic!("{at}: field `{k}` is not a field of the current type")
                });
                same_meaning(v, other, &format!("{at}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(c)) => {
            assert_eq!(e.len(), c.len(), "{at}: array length");
            for (i, (e, c)) in e.iter().zip(c).enumerate() {
                same_meaning(e, c, &format!("{at}[{i}]"));
            }
        }
        (e, c) => assert_eq!(e, c, "{at}"),
    }
}

/// Parses `text` as `T`, checks it names only real fields, and returns its
/// encoding, to compare with the golden's.
fn typed<T: Serialize + DeserializeOwned>(text: &str, at: &str) -> Value {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{at}: not one JSON value: {e}"));
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{at}: does not parse as the current type: {e}"));
    let encoded = serde_json::to_value(&parsed).unwrap();
    same_meaning(&value, &encoded, at);
    encoded
}

/// The example's encoding as the type its golden file has.
fn check_example(ex: &Example) -> Value {
    let at = format!("docs/local-api.md:{} ({})", ex.line, ex.golden);
    let text = ex.text.as_str();
    match ex.golden.as_str() {
        "socket_error" => typed::<ErrReply>(text, &at),
        "socket_ok" => typed::<OkReply<Empty>>(text, &at),
        "socket_hello_reply" => typed::<OkReply<HelloReply>>(text, &at),
        "socket_launch_reply" => typed::<OkReply<LaunchReply>>(text, &at),
        "socket_result_reply" => typed::<OkReply<ResultReply>>(text, &at),
        "socket_status_reply" => typed::<OkReply<StatusReply>>(text, &at),
        g if g.starts_with("socket_event_") => typed::<Event>(text, &at),
        g if g.starts_with("socket_") => typed::<Request>(text, &at),
        other => panic!("{at}: no type known for golden '{other}'"),
    }
}

#[test]
fn every_example_parses_and_matches_its_golden_file() {
    let doc = doc();
    let examples = examples(&doc);
    assert!(examples.len() >= 20, "only {} examples", examples.len());
    for ex in &examples {
        let encoded = check_example(ex);
        let golden: Value = serde_json::from_str(&repo_file(&format!(
            "protocol/tests/data/{}.json",
            ex.golden
        )))
        .unwrap();
        assert_eq!(
            encoded, golden,
            "docs/local-api.md:{}: the example does not say what {}.json says",
            ex.line, ex.golden
        );
        // On the wire each message is one line: every example but the one shown
        // on several lines for reading must be one.
        if ex.golden != "socket_status_reply" {
            assert_eq!(
                ex.text.trim().lines().count(),
                1,
                "docs/local-api.md:{}: one line, as on the wire",
                ex.line
            );
        }
    }
    // Every socket golden file is shown.
    let shown: BTreeSet<&str> = examples.iter().map(|e| e.golden.as_str()).collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(stem) = name
            .strip_suffix(".json")
            .filter(|s| s.starts_with("socket_"))
        {
            assert!(
                shown.contains(stem),
                "{name} is not shown in docs/local-api.md"
            );
        }
    }
}

/// The wire transcripts (```` ```text ```` blocks of `> request` and `< reply`
/// lines) parse too: requests as requests, replies and events as the agent's.
#[test]
fn every_transcript_line_parses() {
    let doc = doc();
    let mut seen = 0;
    for (n, line) in doc.lines().enumerate() {
        let at = format!("docs/local-api.md:{}", n + 1);
        if let Some(req) = line.strip_prefix("> {") {
            typed::<Request>(&format!("{{{req}"), &at);
            seen += 1;
        } else if let Some(reply) = line.strip_prefix("< {") {
            let value: Value = serde_json::from_str(&format!("{{{reply}")).unwrap();
            if value.get("event").is_some() {
                typed::<Event>(&value.to_string(), &at);
            } else {
                assert_eq!(value["ok"], true, "{at}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 6, "only {seen} transcript lines");
}

/// The variant names serde knows for a type, from the error for an unknown one.
fn variants<T: DeserializeOwned + std::fmt::Debug>(probe: &str) -> Vec<String> {
    let err = serde_json::from_str::<T>(probe).expect_err("the probe names no variant");
    let msg = err.to_string();
    let list = msg
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("unexpected serde message: {msg}"))
        .1;
    list.split(", ")
        .map(|v| v.trim_matches(|c: char| c == '`' || c.is_whitespace()))
        .map(|v| v.split('`').next().unwrap().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

#[test]
fn every_operation_event_and_error_code_is_documented() {
    let doc = doc();
    let ops = variants::<Request>(r#"{"op":"no-such-op"}"#);
    assert!(ops.len() >= 7, "{ops:?}");
    for op in &ops {
        assert!(
            doc.contains(&format!("### `{op}`")),
            "operation `{op}` has no section (### `{op}`) in docs/local-api.md"
        );
        assert!(
            doc.contains(&format!("\"op\":\"{op}\"")),
            "operation `{op}` has no example in docs/local-api.md"
        );
    }
    let events = variants::<Event>(r#"{"event":"no-such-event"}"#);
    assert!(events.len() >= 8, "{events:?}");
    for ev in &events {
        assert!(
            doc.contains(&format!("### `{ev}`")),
            "event `{ev}` has no section in docs/local-api.md"
        );
        assert!(
            doc.contains(&format!("golden=socket_event_{ev}")),
            "event `{ev}` has no example in docs/local-api.md"
        );
    }
    let codes = variants::<ErrorCode>(r#""no-such-code""#);
    assert!(codes.len() >= 14, "{codes:?}");
    for code in &codes {
        assert!(
            doc.contains(&format!("| `{code}` |")),
            "error code `{code}` has no row in the error table of docs/local-api.md"
        );
    }
}

#[test]
fn the_document_states_the_contract() {
    let doc = doc();
    for needle in [
        "/run/flex-agent/agent.sock",
        "/var/run/flex-agent/agent.sock",
        r"\\.\pipe\flex-agent",
        "64 KiB",
        "SO_PEERCRED",
        "**77**",
        &format!(
            "protocol version, **{}** today",
            flex_protocol::PROTOCOL_VERSION
        ),
        "never removed or renamed",
        "ignore fields it does not know",
    ] {
        assert!(
            doc.contains(needle),
            "docs/local-api.md does not say {needle:?}"
        );
    }
}
