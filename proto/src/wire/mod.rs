//! Wire types of the prefix exchange protocol, versions 2 and 3.
//!
//! FROZEN: these types serialise exactly as deployed DDM routers expect on
//! `PUT /v{2,3}/push` and `GET /v{2,3}/pull`. Never rename, reorder or
//! retype a field; a new shape needs a new protocol version. The golden tests
//! at the bottom of this file pin the JSON byte for byte and validate it
//! against the published JSON Schemas (`shared/reference` beside the
//! repository; required in CI).
//!
//! Version 3 is the router's internal representation: its path vectors and
//! tunnel origins are the admin API's own types (defined in `ddm-types`) (prefixes as strings such as
//! `"fd00:1::/64"`). Version 2 spells prefixes as objects
//! (`{"addr": "fd00:1::", "len": 64}`, overlay prefixes wrapped in
//! `{"V4": …}` / `{"V6": …}`) and converts to and from version 3 here.
//!
//! Validation policy, applied by [`normalise_v6`] and [`normalise_ip`] and by
//! every v2 → v3 conversion:
//! * a prefix length beyond the address width (129 for IPv6, 33 for IPv4) is
//!   an error ([`WireError`]) that rejects the whole message, just as a bad
//!   v3 prefix string fails deserialisation of the whole body;
//! * host bits below the prefix length are cleared: `fd00:1::5/64` becomes
//!   `fd00:1::/64`. Peers that set them mean the network, and the forwarding
//!   plane only accepts network addresses.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use oxnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// Why a received message cannot be turned into the internal representation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// An IPv6 prefix longer than 128 bits: no such network exists.
    #[error("invalid IPv6 prefix {addr}/{len}: length exceeds 128")]
    Ipv6PrefixLength {
        /// The address the peer sent.
        addr: Ipv6Addr,
        /// The length the peer sent.
        len: u8,
    },
    /// An IPv4 prefix longer than 32 bits: no such network exists.
    #[error("invalid IPv4 prefix {addr}/{len}: length exceeds 32")]
    Ipv4PrefixLength {
        /// The address the peer sent.
        addr: Ipv4Addr,
        /// The length the peer sent.
        len: u8,
    },
}

/// `net` with its host bits cleared, so that one network has one key.
pub fn normalise_v6(net: Ipv6Net) -> Ipv6Net {
    Ipv6Net::new_unchecked(net.prefix(), net.width())
}

/// `net` with its host bits cleared, so that one network has one key.
pub fn normalise_v4(net: Ipv4Net) -> Ipv4Net {
    Ipv4Net::new_unchecked(net.prefix(), net.width())
}

/// `net` with its host bits cleared, so that one network has one key.
pub fn normalise_ip(net: IpNet) -> IpNet {
    match net {
        IpNet::V4(n) => IpNet::V4(normalise_v4(n)),
        IpNet::V6(n) => IpNet::V6(normalise_v6(n)),
    }
}

/// `t` with its overlay prefix's host bits cleared.
pub fn normalise_tunnel(t: v3::TunnelOrigin) -> v3::TunnelOrigin {
    v3::TunnelOrigin { overlay_prefix: normalise_ip(t.overlay_prefix), ..t }
}

/// Version 3 of the exchange protocol: the internal representation.
pub mod v3;

/// Version 2 of the exchange protocol: prefixes spelled as objects.
pub mod v2;

/// A borrowing view of a v3 pull answer that serialises exactly as the v2
/// answer converted from it, byte for byte, without building it: no path
/// vector is copied on the way out. (Pushes are written the same way from
/// the compact form in [`crate::outgoing`].)
///
/// The element order is the same as the converted sets': v3 prefixes order
/// by (address, length) like v2's `{addr, len}`, and tunnel origins compare
/// field by field in the same order in both versions.
pub mod v2_view;

// The conversions between the versions: v3 -> v2 always, v2 -> v3 validated.
mod convert;

#[cfg(test)]
mod tests;
