//! The doctor's report: checks with a status, what was found and the fix, as a
//! terminal table or JSON (`--json`, for fleet tools).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Works, but not as it should (e.g. plain http).
    Warn,
    Fail,
    /// Not checked, and why (a check it depends on failed, or it needs root).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do, for `warn` and `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail.into(), None)
    }

    pub fn warn(name: &str, detail: impl Into<String>, fix: &str) -> Check {
        Check::new(name, Status::Warn, detail.into(), Some(fix))
    }

    pub fn fail(name: &str, detail: impl Into<String>, fix: &str) -> Check {
        Check::new(name, Status::Fail, detail.into(), Some(fix))
    }

    pub fn skip(name: &str, why: impl Into<String>) -> Check {
        Check::new(name, Status::Skip, why.into(), None)
    }

    fn new(name: &str, status: Status, detail: String, fix: Option<&str>) -> Check {
        Check {
            name: name.to_string(),
            status,
            detail,
            fix: fix.map(str::to_string),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, c: Check) {
        self.checks.push(c);
    }

    /// No check failed.
    pub fn ok(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// One line per check, the fix indented under a failure, a verdict last.
    pub fn render(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4}  {:<width$}  {}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
            }
        }
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name.as_str())
            .collect();
        if failed.is_empty() {
            out.push_str("\nall checks passed\n");
        } else {
            out.push_str(&format!(
                "\n{} check(s) failed: {}\n",
                failed.len(),
                failed.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_its_fix_and_fails_the_report() {
        let mut r = Report::default();
        r.push(Check::ok("config", "parses"));
        r.push(Check::fail(
            "server",
            "connection refused",
            "start flex-server",
        ));
        r.push(Check::skip("clock", "the server did not answer"));
        assert!(!r.ok());
        assert_eq!(
            r.render(),
            "ok    config  parses\n\
             FAIL  server  connection refused\n\
             \x20             fix: start flex-server\n\
             skip  clock   the server did not answer\n\
             \n1 check(s) failed: server\n"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["fix"], "start flex-server");
        assert!(json["checks"][0].get("fix").is_none());
    }

    #[test]
    fn warnings_and_skips_do_not_fail() {
        let mut r = Report::default();
        r.push(Check::warn("tls", "http", "use https"));
        r.push(Check::skip("user", "needs root"));
        assert!(r.ok());
        assert!(r.render().ends_with("all checks passed\n"));
    }
}
