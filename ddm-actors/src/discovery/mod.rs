//! Discovery: finding the one peer on each interface (DESIGN §2).
//!
//! * [`packet`] is the wire codec;
//! * [`fsm`] is the per-interface peer state machine (pure: inputs in,
//!   effects out, time passed in);
//! * `actor` runs the machine over a packet I/O seam and timers.

pub mod fsm;
pub mod packet;

use std::net::Ipv6Addr;

use ddm_admin_api::latest::RouterKind;

pub use fsm::{Counters, DiscoveryState, DropCounters};
pub use packet::{DecodeError, DiscoveryPacket};

/// Who the peer on an interface is, as its advertisements say.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The peer's link-local address: the nexthop of routes through it and
    /// where its exchange server listens.
    pub addr: Ipv6Addr,
    /// The peer's name, as it appears in paths.
    pub hostname: String,
    /// Server or transit: whether the peer redistributes.
    pub kind: RouterKind,
    /// Exchange protocol version the peer speaks (2 or 3).
    pub version: u8,
}
