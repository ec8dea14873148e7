//! The Flex entitlement server: token ledger, assignments, claims and the admin
//! API, over one SQLite database.
//!
//! The rules are pure functions in [`rules`] (entitlement, windows, per-result
//! jobs, notices, reports, recommendations, estimator, forecast) and [`ledger`]
//! (lots and the spending order); [`store`] loads their facts from SQLite and
//! writes what they decide; [`api`] maps HTTP to those calls, [`console`]
//! renders the admin's web pages, [`mail`] sends notices by email, [`net`]
//! bounds what one client may hold (connections, timeouts, admin-token
//! guesses) and [`server`] wires configuration, TLS and the listener together.

pub mod admin;
pub mod api;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod ledger;
pub mod mail;
pub mod net;
pub mod rates;
pub mod rules;
pub mod server;
pub mod store;
