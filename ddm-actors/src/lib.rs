//! The DDM router as actors.
//!
//! See `ARCHITECTURE.md` at the root of the repository for the actors, the
//! messages between them and who owns what. In short:
//!
//! * [`supervisor`] starts and restarts everything else, and keeps the
//!   peer table (`supervisor::table`, pure);
//! * [`admin`] serves the admin API and owns the durable [`store`];
//! * [`discovery`] finds the one peer on each interface;
//! * [`exchange`] trades path vectors with one peer;
//! * [`router`] owns the RIB ([`rib`]), filters what peers send through the
//!   import [`policy`] and programs a [`dataplane`];
//! * [`metrics`] serves every actor's counters on a listener of its own.
//!
//! No module imports one that imports it back: where one actor only sends
//! to another, it holds a derived ref of a message type its own module
//! defines (`router::PeerCmd`, `admin::PeerQuery`).

pub mod admin;
pub mod admin_guard;
pub mod config;
mod counters;
pub mod dataplane;
pub mod discovery;
pub mod exchange;
mod mem;
pub mod metrics;
/// Link and address events from the Linux kernel (in `ddm-dataplane`,
/// re-exported at its old path).
#[cfg(all(target_os = "linux", feature = "netlink"))]
pub use ddm_dataplane::netlink;
pub mod policy;
pub mod rib;
pub mod router;
pub mod store;
pub mod supervisor;
pub mod timer;

#[cfg(test)]
mod test_actors;
