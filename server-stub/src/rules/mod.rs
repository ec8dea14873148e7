//! The server's rules as pure functions: loaded facts and `now` in, a decision
//! out, no I/O. The store loads the facts, calls a rule and writes what it
//! decided; the console and the API render the same answers. Each module carries
//! DESIGN.md's worked examples as unit tests.

pub mod calendar;
pub mod claim;
pub mod entitlement;
pub mod estimate;
pub mod forecast;
pub mod notices;
pub mod per_result;
pub mod recommendations;
pub mod refunds;
pub mod reports;
pub mod windows;

/// A request names a value the rules cannot accept; nothing was changed. The
/// message names the parameter or row and the value; `field` says which one
/// to forms that show the error next to it (`from`, `months`, `rows.2.users`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A request the rules refuse because of what already happened (a refunded
/// window renewed); nothing was changed. The API answers 409 with the
/// message, which says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Conflict {
    pub message: String,
}

impl Conflict {
    pub fn new(message: impl Into<String>) -> Self {
        Conflict {
            message: message.into(),
        }
    }
}

/// Either refusal of the claim rules, for facts that have no errors of their
/// own (the unit tests' facts, the agent's fake server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Conflict(#[from] Conflict),
}
