//! The Flex entitlement server: token ledger, assignments, claims and the admin
//! API, over one SQLite database.
//!
//! The rules live in [`store`] (SQL next to the rule that needs it) with the pure
//! token arithmetic in [`ledger`]; [`api`] maps HTTP to those calls and
//! [`server`] wires configuration, TLS and the listener together.

pub mod admin;
pub mod api;
pub mod clock;
pub mod config;
pub mod console;
pub mod ledger;
pub mod mail;
pub mod rates;
pub mod rules;
pub mod server;
pub mod store;
