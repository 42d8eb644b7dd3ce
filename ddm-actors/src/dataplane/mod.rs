//! Where routes go: the forwarding plane the router programs.
//!
//! The trait, its update types and every dataplane (dpd, illumos,
//! in-memory and, on Linux with the `netlink` feature, the kernel's over
//! rtnetlink: [`linux`]) live in the `ddm-dataplane` crate, which builds
//! for illumos, and are re-exported here.

pub use ddm_dataplane::*;

#[cfg(all(target_os = "linux", feature = "netlink"))]
pub use ddm_dataplane::linux;
