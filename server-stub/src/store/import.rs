//! CSV import to assign (R12).
//!
//! The whole file is checked before anything is written: a file with any bad
//! line changes nothing and the answer names every bad line. Headers are matched
//! case-insensitively in any order; a UTF-8 byte-order mark is ignored.
//! Re-importing a file changes nothing the second time.

use std::collections::HashMap;

use super::db::params;
use flex_protocol::api::{ImportError, ImportResult};
use flex_protocol::Email;

use super::users::{check_name, load_user};
use super::{ts, Result, Store, StoreError};

/// Most data rows one file may hold.
pub const MAX_IMPORT_ROWS: usize = 5000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    pub line: u64,
    pub email: Email,
    pub first_name: String,
    pub last_name: String,
}

fn err(line: u64, message: impl Into<String>) -> ImportError {
    ImportError {
        line,
        message: message.into(),
    }
}

/// Parses and checks a CSV file; either every row is good or every bad line is named.
pub fn parse_csv(data: &[u8]) -> std::result::Result<Vec<ImportRow>, Vec<ImportError>> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let text = std::str::from_utf8(data).map_err(|e| {
        // Name the line of the first invalid byte.
        let line = data[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
            + 1;
        vec![err(
            line,
            "the file is not UTF-8 text; save it as CSV UTF-8",
        )]
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| vec![err(1, format!("cannot read the header line: {e}"))])?
        .clone();
    let mut col: HashMap<&str, usize> = HashMap::new();
    let mut errors = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let key = match h.to_lowercase().as_str() {
            "first name" => "first",
            "last name" => "last",
            "email" => "email",
            _ => continue,
        };
        if col.insert(key, i).is_some() {
            errors.push(err(1, format!("column '{h}' appears twice")));
        }
    }
    for (key, name) in [
        ("first", "First Name"),
        ("last", "Last Name"),
        ("email", "Email"),
    ] {
        if !col.contains_key(key) {
            errors.push(err(
                1,
                format!(
                    "missing column '{name}'; the header must name First Name, Last Name and Email"
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut rows = Vec::new();
    let mut seen: HashMap<Email, u64> = HashMap::new();
    let mut count = 0usize;
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(err(line, format!("cannot read the line: {e}")));
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(|f| f.is_empty()) {
            continue; // blank lines are not rows
        }
        count += 1;
        if count > MAX_IMPORT_ROWS {
            errors.push(err(
                line,
                format!("more than {MAX_IMPORT_ROWS} rows; split the file"),
            ));
            break;
        }
        let field = |k: &str| record.get(col[k]).unwrap_or("");
        let mut problems = Vec::new();
        // Raw text enters here: each row's email is parsed once, into the
        // normal form every later step (and the duplicate check) compares.
        let email = Email::parse(field("email"))
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        let first = check_name("First Name", field("first"))
            .map_err(|e| problems.push(e))
            .ok();
        let last = check_name("Last Name", field("last"))
            .map_err(|e| problems.push(e))
            .ok();
        if let Some(email) = &email {
            if let Some(first_line) = seen.get(email) {
                problems.push(format!("'{email}' already appears on line {first_line}"));
            } else {
                seen.insert(email.clone(), line);
            }
        }
        if !problems.is_empty() {
            errors.push(err(line, problems.join("; ")));
            continue;
        }
        rows.push(ImportRow {
            line,
            email: email.expect("checked"),
            first_name: first.expect("checked"),
            last_name: last.expect("checked"),
        });
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

impl Store {
    /// Adds or updates every row's user and assigns them to Flex, in one transaction.
    pub fn import_users(&self, csv: &[u8]) -> Result<ImportResult> {
        let rows = parse_csv(csv).map_err(StoreError::Import)?;
        let now = self.now();
        self.write(|tx| {
            let mut result = ImportResult::default();
            for row in &rows {
                match load_user(tx, &row.email)? {
                    None => {
                        tx.execute(
                            "INSERT INTO users (email, first_name, last_name, flex_assigned, created_at)
                             VALUES (?1, ?2, ?3, 1, ?4)",
                            params![row.email, row.first_name, row.last_name, ts(now)],
                        )?;
                        result.created += 1;
                        result.assigned += 1;
                    }
                    Some(u) => {
                        if u.first_name != row.first_name || u.last_name != row.last_name {
                            tx.execute(
                                "UPDATE users SET first_name = ?1, last_name = ?2 WHERE email = ?3",
                                params![row.first_name, row.last_name, row.email],
                            )?;
                            result.updated += 1;
                        }
                        if !u.flex_assigned {
                            tx.execute(
                                "UPDATE users SET flex_assigned = 1 WHERE email = ?1",
                                params![row.email],
                            )?;
                            result.assigned += 1;
                        }
                    }
                }
            }
            Ok(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_any_order_any_case_with_bom() {
        let csv = "\u{feff}EMAIL,last name,First Name\nada@example.com,Lovelace,Ada\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(
            rows,
            vec![ImportRow {
                line: 2,
                email: Email::parse("ada@example.com").unwrap(),
                first_name: "Ada".into(),
                last_name: "Lovelace".into()
            }]
        );
    }

    #[test]
    fn every_bad_line_is_named() {
        let csv = "First Name,Last Name,Email\nAda,Lovelace,ada@example.com\n,Hopper,grace\nAlan,Turing,ADA@example.com\n";
        let errors = parse_csv(csv.as_bytes()).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].line, 3);
        assert!(errors[0]
            .message
            .contains("'grace' is not an email address"));
        assert!(errors[0].message.contains("First Name is empty"));
        assert_eq!(errors[1].line, 4);
        assert!(errors[1].message.contains("already appears on line 2"));
    }

    #[test]
    fn missing_columns_and_non_utf8_are_explained() {
        let errors = parse_csv(b"Name,Email\nAda,ada@example.com\n").unwrap_err();
        assert!(errors.iter().any(|e| e.message.contains("'First Name'")));
        let errors =
            parse_csv(b"First Name,Last Name,Email\nAd\xe9,L,a@example.com\n").unwrap_err();
        assert_eq!(errors[0].line, 2);
        assert!(errors[0].message.contains("UTF-8"));
    }

    #[test]
    fn row_cap() {
        let mut csv = String::from("First Name,Last Name,Email\n");
        for i in 0..=MAX_IMPORT_ROWS {
            csv.push_str(&format!("A,B,u{i}@example.com\n"));
        }
        let errors = parse_csv(csv.as_bytes()).unwrap_err();
        assert!(errors[0].message.contains("more than 5000 rows"));
    }
}
