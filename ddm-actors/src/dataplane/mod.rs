//! Where routes go: the forwarding plane the router programs.
//!
//! The trait, its update types and the dpd, illumos and in-memory
//! dataplanes live in the `ddm-dataplane` crate (which builds for illumos)
//! and are re-exported here; the Linux netlink dataplane, which shares this
//! crate's netlink code, is [`linux`].

pub use ddm_dataplane::*;

#[cfg(all(target_os = "linux", feature = "netlink"))]
pub mod linux;
