//! Where routes go: the forwarding plane the router programs.
//!
//! The router hands a dataplane whole ECMP sets: for each destination the
//! complete set of nexthops it should forward over (an empty set means the
//! destination is gone). Implementations turn that into kernel (or switch)
//! state; they never see individual paths.
//!
//! This crate holds the trait, its update types and every dataplane: the
//! switch through dpd ([`dpd`]), illumos ([`illumos`]), an in-memory one
//! for tests ([`memory`]) and, on Linux with the `netlink` feature, the
//! kernel's over rtnetlink (`linux`) with the kernel's link and address
//! events that the daemon watches (`netlink`). It does not depend on
//! dropshot (whose TLS backend compiles C and cannot be built for illumos
//! here), so it can be checked for illumos: `cargo check -p ddm-dataplane
//! --features illumos --target x86_64-unknown-illumos`.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use async_trait::async_trait;
use oxnet::Ipv6Net;

pub use ddm_types::TunnelOrigin;

/// The delay before the next attempt after `failures` consecutive
/// failures: `first` after the first, doubling, at most `most`. Written
/// once for the whole daemon (`ddm_actors::timer` re-exports it): the
/// actors' back-off and the link watcher's reconnection use it.
pub fn backoff_between(
    first: std::time::Duration,
    most: std::time::Duration,
    failures: u32,
) -> std::time::Duration {
    let doublings = failures.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(most)
}

pub mod dpd;
pub mod illumos;
#[cfg(all(target_os = "linux", feature = "netlink"))]
pub mod linux;
pub mod memory;
#[cfg(all(target_os = "linux", feature = "netlink"))]
pub mod netlink;
#[cfg(all(target_os = "linux", any(test, feature = "testns")))]
pub mod testns;

/// One way out to a destination: a peer's link-local address on an
/// interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexthop {
    /// The peer's link-local address.
    pub addr: Ipv6Addr,
    /// Index of the interface the peer is on.
    pub ifindex: u32,
}

/// A destination's ECMP set: distinct nexthops in ascending order.
///
/// A router may hold 100,000 destinations, nearly all with one nexthop, so
/// a single nexthop is stored inline (the whole set is 24 bytes) and a
/// larger set is one boxed slice; a B-tree set would cost a node each.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Nexthops(Repr);

/// The storage of [`Nexthops`]: `One` exactly when there is one nexthop,
/// so that equal sets are equal values.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    One(Nexthop),
    Many(Box<[Nexthop]>),
}

impl Nexthops {
    /// The empty set.
    pub fn new() -> Self {
        Nexthops(Repr::Many(Box::default()))
    }

    /// The set holding only `nh`.
    pub fn one(nh: Nexthop) -> Self {
        Nexthops(Repr::One(nh))
    }

    /// The nexthops, in ascending order.
    pub fn as_slice(&self) -> &[Nexthop] {
        match &self.0 {
            Repr::One(nh) => std::slice::from_ref(nh),
            Repr::Many(all) => all,
        }
    }

    /// The nexthops, in ascending order.
    pub fn iter(&self) -> std::slice::Iter<'_, Nexthop> {
        self.as_slice().iter()
    }

    /// How many nexthops there are.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// True when the set is empty (the route is to be removed).
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The smallest nexthop.
    pub fn first(&self) -> Option<&Nexthop> {
        self.as_slice().first()
    }

    /// Whether `nh` is in the set.
    pub fn contains(&self, nh: &Nexthop) -> bool {
        self.as_slice().binary_search(nh).is_ok()
    }

    /// The set of an ascending, duplicate-free vector.
    fn from_sorted(mut v: Vec<Nexthop>) -> Self {
        match v.len() {
            1 => Nexthops(Repr::One(v[0])),
            _ => {
                v.shrink_to_fit();
                Nexthops(Repr::Many(v.into_boxed_slice()))
            }
        }
    }
}

impl Default for Nexthops {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Nexthops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Nexthop> for Nexthops {
    fn from_iter<I: IntoIterator<Item = Nexthop>>(iter: I) -> Self {
        let mut v: Vec<Nexthop> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Self::from_sorted(v)
    }
}

impl<const N: usize> From<[Nexthop; N]> for Nexthops {
    fn from(a: [Nexthop; N]) -> Self {
        a.into_iter().collect()
    }
}

impl From<&BTreeSet<Nexthop>> for Nexthops {
    fn from(s: &BTreeSet<Nexthop>) -> Self {
        Self::from_sorted(s.iter().copied().collect())
    }
}

impl<'a> IntoIterator for &'a Nexthops {
    type Item = &'a Nexthop;
    type IntoIter = std::slice::Iter<'a, Nexthop>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The desired forwarding state of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate {
    /// The destination prefix.
    pub destination: Ipv6Net,
    /// Every nexthop of the destination's ECMP set; empty removes the route.
    pub nexthops: Nexthops,
}

/// A tunnel endpoint route as the tunnel dataplane receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelEntry {
    /// The endpoint and its overlay prefix.
    pub origin: TunnelOrigin,
    /// The peer it was learned through.
    pub nexthop: Ipv6Addr,
}

/// The errnos with which a kernel refuses a route change for want of
/// memory or buffer space, not for a reason of the route's: the same
/// change may succeed a moment later, so it is tried again (after the
/// router's back-off), on Linux as on illumos.
pub const TRANSIENT_ERRNOS: [i32; 3] =
    [libc::ENOBUFS, libc::ENOMEM, libc::EAGAIN];

/// Errors a dataplane reports.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel (or daemon) refused or failed a request.
    #[error("dataplane request failed: {0}")]
    Request(String),
    /// The dataplane could not be reached or opened.
    #[error("dataplane unavailable: {0}")]
    Unavailable(String),
    /// Route updates to apply again: a batch failed as a whole, part way
    /// through (the socket failed, or the kernel's answers did not come),
    /// or the kernel refused some of its updates for want of memory or
    /// buffer space ([`TRANSIENT_ERRNOS`]). Some of `updates` may be in
    /// place, some not. Each sets its destination's nexthops, so applying
    /// them again is safe.
    #[error("dataplane batch failed: {error} ({} updates to apply again)", updates.len())]
    Incomplete {
        /// What failed.
        error: String,
        /// The batch.
        updates: Vec<RouteUpdate>,
    },
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

    /// [`Dataplane::remove_all`] for a router that failed: another starts
    /// after it, whose own start removes what this one leaves, so the
    /// removal may give up where waiting is long (the switch's: at the
    /// first unanswered request, as a batch does). By default the same
    /// removal.
    async fn remove_all_after_failure(
        &mut self,
    ) -> Result<usize, DataplaneError> {
        self.remove_all().await
    }
}

/// A destination with its host bits cleared: the key of its routes, in
/// the switch and in the illumos kernel alike.
pub(crate) fn masked(net: &Ipv6Net) -> Ipv6Net {
    Ipv6Net::new_unchecked(net.prefix(), net.width())
}
