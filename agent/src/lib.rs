//! The Flex workstation agent: detects product launches, claims charge windows
//! from the entitlement server, enforces the offline rule and notifies users.
pub mod account;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod credentials;
pub mod daemon;
pub mod enroll;
pub mod flexctl;
pub mod journal;
pub mod limits;
pub mod paths;
pub mod process;
pub mod provision;
pub mod residency;
pub mod socket;
pub mod sysclock;
pub mod watcher;
/// Win32 wrappers shared by the Windows edges (service, pipe, processes, DPAPI).
#[cfg(windows)]
pub mod win32;

/// Fakes for tests (private D-Bus bus, notification service, Secret Service);
/// other crates' tests get them with the `test-support` feature.
#[cfg(any(test, feature = "test-support"))]
pub mod testsupport;
