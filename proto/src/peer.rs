//! Who a peer is.

use std::net::Ipv6Addr;

/// Who a peer is: the link it is on and its address there.
///
/// Links are point-to-point, so the pair names one peer and is also the
/// nexthop of every route learned from it (the router turns it into a
/// dataplane nexthop). A peer that renumbers is, to the RIB, a peer going
/// down and another coming up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    /// Index of the interface the peer is reached through.
    pub ifindex: u32,
    /// The peer's link-local address on that interface.
    pub addr: Ipv6Addr,
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%{}", self.addr, self.ifindex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_scoped_address() {
        let p = PeerId { ifindex: 7, addr: "fe80::1".parse().unwrap() };
        assert_eq!(p.to_string(), "fe80::1%7");
    }
}
