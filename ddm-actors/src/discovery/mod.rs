//! Discovery: finding the one peer on each interface.
//!
//! * [`packet`] is the wire codec;
//! * [`fsm`] is the per-interface peer state machine (pure: inputs in,
//!   effects out, time passed in);
//! * [`limit`] bounds the answers to solicitations and the peer-churn log
//!   lines (pure too);
//! * [`actor`] runs the machine for one interface, over the packet I/O seam
//!   of [`io`] (real sockets in [`socket`], interface lookup in [`iface`],
//!   or an in-memory link), and reports [`DiscoveryEvent`]s to whoever
//!   started it.

pub mod actor;
pub mod fsm;
pub mod iface;
pub mod io;
pub mod limit;
pub mod packet;
pub mod socket;

use std::net::Ipv6Addr;

use ddm_admin_api::latest::{PeerInfo, RouterKind};
use tokio::time::Instant;

pub use actor::{Discovery, DiscoveryArgs, DiscoveryMsg, DiscoveryRef};
pub use fsm::{Counters, DiscoveryState, DropCounters};
pub use io::{MemoryDatagram, MemoryPort, PacketIo};
pub use packet::{DecodeError, DiscoveryPacket};
pub use socket::{DISCOVERY_GROUP, DISCOVERY_PORT};

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

/// What a discovery actor tells its supervisor. Every event names the
/// interface, so the supervisor can keep one record per interface (links
/// are point-to-point: one peer each) and answer `GET /peers` from the
/// latest `PeerUp`/`PeerAddrChanged` and `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A peer appeared: start exchanging with it.
    PeerUp {
        /// The interface, as named on the command line.
        ifname: String,
        /// Its index (the key of `GET /peers`, the nexthop's interface).
        ifindex: u32,
        /// Our link-local address there (where our exchange server listens).
        local_addr: Ipv6Addr,
        /// The peer.
        peer: PeerIdentity,
    },
    /// The peer expired (silence, link down or by hand): stop exchanging,
    /// withdraw what it taught us.
    PeerDown {
        /// The interface.
        ifname: String,
        /// Its index.
        ifindex: u32,
        /// The peer that went away.
        peer: PeerIdentity,
    },
    /// The same peer now advertises from another address: routes through
    /// the old address move to the new one.
    PeerAddrChanged {
        /// The interface.
        ifname: String,
        /// Its index.
        ifindex: u32,
        /// Our link-local address there.
        local_addr: Ipv6Addr,
        /// The address the peer used before.
        old_addr: Ipv6Addr,
        /// The peer, with its new address.
        peer: PeerIdentity,
    },
    /// The interface's state changed (its duration restarts at `since`).
    Status {
        /// The interface.
        ifname: String,
        /// Its index.
        ifindex: u32,
        /// The new state.
        state: DiscoveryState,
        /// When it was entered.
        since: Instant,
    },
}

impl DiscoveryEvent {
    /// The interface the event is about, by name.
    pub fn ifname(&self) -> &str {
        match self {
            DiscoveryEvent::PeerUp { ifname, .. }
            | DiscoveryEvent::PeerDown { ifname, .. }
            | DiscoveryEvent::PeerAddrChanged { ifname, .. }
            | DiscoveryEvent::Status { ifname, .. } => ifname,
        }
    }

    /// The interface index the event is about.
    pub fn ifindex(&self) -> u32 {
        match self {
            DiscoveryEvent::PeerUp { ifindex, .. }
            | DiscoveryEvent::PeerDown { ifindex, .. }
            | DiscoveryEvent::PeerAddrChanged { ifindex, .. }
            | DiscoveryEvent::Status { ifindex, .. } => *ifindex,
        }
    }
}

/// The peer of one interface, as `GetPeer` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// The interface, as named on the command line.
    pub ifname: String,
    /// Its index.
    pub ifindex: u32,
    /// Our link-local address there.
    pub local_addr: Ipv6Addr,
    /// The current (or, when expired, last) peer.
    pub peer: PeerIdentity,
    /// The interface's state.
    pub state: DiscoveryState,
    /// When that state was entered.
    pub since: Instant,
    /// When the peer last advertised.
    pub last_advertisement: Option<Instant>,
}

impl PeerSnapshot {
    /// The admin API's view of this peer at `now`.
    pub fn info(&self, now: Instant) -> PeerInfo {
        PeerInfo {
            status: self
                .state
                .status(now.saturating_duration_since(self.since)),
            addr: self.peer.addr,
            host: self.peer.hostname.clone(),
            kind: self.peer.kind,
        }
    }
}
