//! A simulated fabric: many routers in one process over in-memory links.
//!
//! * [`topology`] describes the fabric (routers, links, prefixes);
//! * [`invariants`] checks a snapshot of a converged fabric;
//! * [`faults`] draws a seeded, replayable schedule of faults;
//! * [`fabric`] runs one real supervisor per router ([`SimFabric`]).

pub mod fabric;
pub mod faults;
pub mod invariants;
pub mod topology;

pub use fabric::{status_kib, Converged, SimFabric, Traffic};
