//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie that
//! expires, and a per-session CSRF token that every form posts back.
//!
//! Sessions live in the database (`store/console_sessions.rs`), kept by the
//! SHA-256 of their id. Time comes from the server's clock, so tests drive
//! expiry with the test clock.

use chrono::Duration;
use sha2::{Digest, Sha256};

/// Name of the session cookie.
pub const COOKIE: &str = "flex_console";
/// Name of the cookie that guards the login form against cross-site posts.
pub const LOGIN_COOKIE: &str = "flex_login";
/// A session ends this long after login, whatever happens.
pub const TTL: Duration = crate::store::SESSION_TTL;

/// A live session as a handler sees it (kept by the store).
pub use crate::store::ConsoleSession as Session;

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// A random hex secret of 32 bytes.
pub fn secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Equal strings, compared in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (x, y): ([u8; 32], [u8; 32]) = (key(a), key(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, scoped to the console,
/// `Secure` when the server speaks TLS. `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_parsed_and_set_strictly() {
        assert_eq!(cookie("a=1; flex_console=abc; b=2", COOKIE), Some("abc"));
        assert_eq!(cookie("flex_console_x=abc", COOKIE), None);
        let c = set_cookie(COOKIE, "abc", 60, true);
        assert_eq!(
            c,
            "flex_console=abc; Path=/admin; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(same("x", "x") && !same("x", "y"));
    }
}
