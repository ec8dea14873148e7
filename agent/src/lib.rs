//! The Flex workstation agent: detects product launches, claims charge windows
//! from the entitlement server, enforces the offline rule and notifies users.
pub mod config;
pub mod core;
pub mod journal;
pub mod sysclock;
pub mod socket;
pub mod watcher;
pub mod flexctl;
