//! A simulated fabric: many routers in one process over in-memory links.
//!
//! * [`topology`] describes the fabric (routers, links, prefixes);
//! * [`invariants`] checks a snapshot of a converged fabric;
//! * [`faults`] draws a seeded, replayable schedule of faults.

pub mod faults;
pub mod invariants;
pub mod topology;
