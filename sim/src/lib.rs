//! A deterministic simulation of a fleet of agents and the entitlement server,
//! all driven from one seed.
//!
//! Each simulated workstation runs the real agent decision core
//! (`flex_agent::core`) with a real SQLite journal, driven the way the daemon
//! drives it (journal first, then act); the server is the real store and
//! rules (`flex_server::store`) on a SQLite file in a temporary directory,
//! its time read from a test clock the simulation moves. Between them sits a
//! simulated network that delays, reorders, drops and duplicates requests and
//! answers, partitions workstations from the server and tampers with leases.
//! The server crashes and reopens its store from disk; agents crash and
//! restart from their journals; machines reboot, suspend, and have their wall
//! clocks moved. Users start and close products over simulated days.
//!
//! After every step the invariants of `checks` must hold; the first one that
//! does not ends the run with a [`Violation`] naming it, with the last steps
//! that led there. Every random choice comes from one ChaCha generator seeded
//! with the run's seed (ids too, through [`flex_protocol::IdSource`]), and no
//! order comes from hashing, so a seed replays the same run exactly:
//! [`Outcome::trace_hash`] covers every step and every server answer.

mod checks;
mod world;

pub use world::{run, Options, Outcome, Plant, Stats, Violation};
