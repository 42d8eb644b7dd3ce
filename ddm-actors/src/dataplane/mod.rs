//! Where routes go: the forwarding plane the router programs.
//!
//! The router hands a dataplane whole ECMP sets: for each destination the
//! complete set of nexthops it should forward over (an empty set means the
//! destination is gone). Implementations turn that into kernel (or switch)
//! state; they never see individual paths.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use async_trait::async_trait;
use ddm_admin_api::latest::TunnelOrigin;
use oxnet::Ipv6Net;

#[cfg(all(target_os = "linux", feature = "netlink"))]
pub mod linux;
pub mod memory;

/// One way out to a destination: a peer's link-local address on an
/// interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexthop {
    /// The peer's link-local address.
    pub addr: Ipv6Addr,
    /// Index of the interface the peer is on.
    pub ifindex: u32,
}

/// The desired forwarding state of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate {
    /// The destination prefix.
    pub destination: Ipv6Net,
    /// Every nexthop of the destination's ECMP set; empty removes the route.
    pub nexthops: BTreeSet<Nexthop>,
}

/// A tunnel endpoint route as the tunnel dataplane receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelEntry {
    /// The endpoint and its overlay prefix.
    pub origin: TunnelOrigin,
    /// The peer it was learned through.
    pub nexthop: Ipv6Addr,
}

/// Errors a dataplane reports.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel (or daemon) refused or failed a request.
    #[error("dataplane request failed: {0}")]
    Request(String),
    /// The dataplane could not be reached or opened.
    #[error("dataplane unavailable: {0}")]
    Unavailable(String),
}

/// A forwarding plane the router can program.
///
/// Calls come from one task at a time (the router's dataplane worker), in
/// order; an implementation may keep state without locking.
#[async_trait]
pub trait Dataplane: Send + 'static {
    /// A short name for logs (`"linux"`, `"memory"`, …).
    fn name(&self) -> &'static str;

    /// Remove every route a previous run of this router left behind.
    async fn remove_stale(&mut self) -> Result<usize, DataplaneError>;

    /// Make each destination forward over exactly the given nexthops.
    ///
    /// The batch may be large (100,000 entries); implementations should
    /// pipeline their requests rather than wait on each one.
    async fn apply(
        &mut self,
        updates: Vec<RouteUpdate>,
    ) -> Result<(), DataplaneError>;

    /// Replace the effective tunnel endpoint set.
    async fn set_tunnels(
        &mut self,
        tunnels: BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError>;

    /// Remove every route this router installed (at shutdown).
    async fn remove_all(&mut self) -> Result<usize, DataplaneError>;
}
