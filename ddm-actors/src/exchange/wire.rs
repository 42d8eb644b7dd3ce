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
//! tunnel origins are the admin API's own types (prefixes as strings such as
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

/// Version 3 of the exchange protocol: the internal representation.
pub mod v3 {
    use super::*;

    pub use ddm_admin_api::latest::{PathVector, TunnelOrigin};

    /// A push: what changed at the sender since it last told us.
    ///
    /// A missing half means "nothing changed" for that half.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Update {
        /// Changes to underlay (sled prefix) reachability.
        #[serde(default)]
        pub underlay: Option<UnderlayUpdate>,
        /// Changes to tunnel endpoint reachability.
        #[serde(default)]
        pub tunnel: Option<TunnelUpdate>,
    }

    /// The underlay half of an [`Update`].
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UnderlayUpdate {
        /// Paths the sender now offers.
        #[serde(default)]
        pub announce: BTreeSet<PathVector>,
        /// Paths the sender no longer offers.
        #[serde(default)]
        pub withdraw: BTreeSet<PathVector>,
    }

    /// The tunnel half of an [`Update`].
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TunnelUpdate {
        /// Tunnel endpoints the sender now offers.
        #[serde(default)]
        pub announce: BTreeSet<TunnelOrigin>,
        /// Tunnel endpoints the sender no longer offers.
        #[serde(default)]
        pub withdraw: BTreeSet<TunnelOrigin>,
    }

    /// The answer to a pull: everything the sender offers to the puller.
    ///
    /// A missing half means the empty set.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PullResponse {
        /// Every underlay path offered.
        #[serde(default)]
        pub underlay: Option<BTreeSet<PathVector>>,
        /// Every tunnel endpoint offered.
        #[serde(default)]
        pub tunnel: Option<BTreeSet<TunnelOrigin>>,
    }

    impl Update {
        /// True when the update carries no change at all (nothing to send).
        pub fn is_empty(&self) -> bool {
            self.underlay
                .as_ref()
                .is_none_or(|u| u.announce.is_empty() && u.withdraw.is_empty())
                && self.tunnel.as_ref().is_none_or(|t| {
                    t.announce.is_empty() && t.withdraw.is_empty()
                })
        }

        /// How many path vectors and tunnel origins the update carries,
        /// announced and withdrawn.
        pub fn len(&self) -> usize {
            self.underlay
                .as_ref()
                .map_or(0, |u| u.announce.len() + u.withdraw.len())
                + self
                    .tunnel
                    .as_ref()
                    .map_or(0, |t| t.announce.len() + t.withdraw.len())
        }

        /// The underlay half, created empty if absent (for building pushes).
        pub fn underlay_mut(&mut self) -> &mut UnderlayUpdate {
            self.underlay.get_or_insert_with(Default::default)
        }

        /// The tunnel half, created empty if absent (for building pushes).
        pub fn tunnel_mut(&mut self) -> &mut TunnelUpdate {
            self.tunnel.get_or_insert_with(Default::default)
        }

        /// The same update with every prefix's host bits cleared.
        pub fn normalised(self) -> Self {
            Update {
                underlay: self.underlay.map(|u| UnderlayUpdate {
                    announce: normalise_paths(u.announce),
                    withdraw: normalise_paths(u.withdraw),
                }),
                tunnel: self.tunnel.map(|t| TunnelUpdate {
                    announce: normalise_tunnels(t.announce),
                    withdraw: normalise_tunnels(t.withdraw),
                }),
            }
        }
    }

    impl PullResponse {
        /// The same response with every prefix's host bits cleared.
        pub fn normalised(self) -> Self {
            PullResponse {
                underlay: self.underlay.map(normalise_paths),
                tunnel: self.tunnel.map(normalise_tunnels),
            }
        }
    }

    fn normalise_paths(set: BTreeSet<PathVector>) -> BTreeSet<PathVector> {
        set.into_iter()
            .map(|pv| PathVector {
                destination: normalise_v6(pv.destination),
                path: pv.path,
            })
            .collect()
    }

    fn normalise_tunnels(
        set: BTreeSet<TunnelOrigin>,
    ) -> BTreeSet<TunnelOrigin> {
        set.into_iter()
            .map(|t| TunnelOrigin {
                overlay_prefix: normalise_ip(t.overlay_prefix),
                ..t
            })
            .collect()
    }
}

/// Version 2 of the exchange protocol: prefixes spelled as objects.
pub mod v2 {
    use super::*;

    /// An IPv6 prefix as version 2 spells it.
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
    )]
    pub struct Ipv6Prefix {
        /// The network address.
        pub addr: Ipv6Addr,
        /// The prefix length in bits (valid: 0..=128).
        pub len: u8,
    }

    /// An IPv4 prefix as version 2 spells it.
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
    )]
    pub struct Ipv4Prefix {
        /// The network address.
        pub addr: Ipv4Addr,
        /// The prefix length in bits (valid: 0..=32).
        pub len: u8,
    }

    /// An overlay prefix of either family, externally tagged (`V4`/`V6`).
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
    )]
    pub enum IpPrefix {
        /// An IPv4 overlay prefix.
        V4(Ipv4Prefix),
        /// An IPv6 overlay prefix.
        V6(Ipv6Prefix),
    }

    /// A path to an underlay destination, originator first.
    #[derive(
        Debug,
        Clone,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
    )]
    pub struct PathVector {
        /// The destination prefix.
        pub destination: Ipv6Prefix,
        /// Hostnames of the routers the announcement crossed.
        pub path: Vec<String>,
    }

    /// An overlay prefix reachable through a boundary address.
    #[derive(
        Debug,
        Clone,
        Copy,
        PartialEq,
        Eq,
        Hash,
        PartialOrd,
        Ord,
        Serialize,
        Deserialize,
    )]
    pub struct TunnelOrigin {
        /// The overlay prefix reachable through the tunnel.
        pub overlay_prefix: IpPrefix,
        /// The tunnel endpoint in the underlay.
        pub boundary_addr: Ipv6Addr,
        /// The virtual network the prefix belongs to.
        pub vni: u32,
        /// Preference: positive metrics win over 0 (absent means 0).
        #[serde(default)]
        pub metric: u64,
    }

    /// A push, version 2 (see [`v3::Update`]).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Update {
        /// Changes to underlay reachability.
        #[serde(default)]
        pub underlay: Option<UnderlayUpdate>,
        /// Changes to tunnel endpoint reachability.
        #[serde(default)]
        pub tunnel: Option<TunnelUpdate>,
    }

    /// The underlay half of an [`Update`].
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UnderlayUpdate {
        /// Paths the sender now offers.
        #[serde(default)]
        pub announce: BTreeSet<PathVector>,
        /// Paths the sender no longer offers.
        #[serde(default)]
        pub withdraw: BTreeSet<PathVector>,
    }

    /// The tunnel half of an [`Update`].
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TunnelUpdate {
        /// Tunnel endpoints the sender now offers.
        #[serde(default)]
        pub announce: BTreeSet<TunnelOrigin>,
        /// Tunnel endpoints the sender no longer offers.
        #[serde(default)]
        pub withdraw: BTreeSet<TunnelOrigin>,
    }

    /// The answer to a pull, version 2 (see [`v3::PullResponse`]).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PullResponse {
        /// Every underlay path offered.
        #[serde(default)]
        pub underlay: Option<BTreeSet<PathVector>>,
        /// Every tunnel endpoint offered.
        #[serde(default)]
        pub tunnel: Option<BTreeSet<TunnelOrigin>>,
    }
}

// ---- v3 -> v2 (always possible) ----

impl From<Ipv6Net> for v2::Ipv6Prefix {
    fn from(n: Ipv6Net) -> Self {
        v2::Ipv6Prefix { addr: n.addr(), len: n.width() }
    }
}

impl From<Ipv4Net> for v2::Ipv4Prefix {
    fn from(n: Ipv4Net) -> Self {
        v2::Ipv4Prefix { addr: n.addr(), len: n.width() }
    }
}

impl From<IpNet> for v2::IpPrefix {
    fn from(n: IpNet) -> Self {
        match n {
            IpNet::V4(n) => v2::IpPrefix::V4(n.into()),
            IpNet::V6(n) => v2::IpPrefix::V6(n.into()),
        }
    }
}

impl From<v3::PathVector> for v2::PathVector {
    fn from(pv: v3::PathVector) -> Self {
        v2::PathVector { destination: pv.destination.into(), path: pv.path }
    }
}

impl From<v3::TunnelOrigin> for v2::TunnelOrigin {
    fn from(t: v3::TunnelOrigin) -> Self {
        v2::TunnelOrigin {
            overlay_prefix: t.overlay_prefix.into(),
            boundary_addr: t.boundary_addr,
            vni: t.vni,
            metric: t.metric,
        }
    }
}

impl From<v3::UnderlayUpdate> for v2::UnderlayUpdate {
    fn from(u: v3::UnderlayUpdate) -> Self {
        v2::UnderlayUpdate {
            announce: u.announce.into_iter().map(Into::into).collect(),
            withdraw: u.withdraw.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<v3::TunnelUpdate> for v2::TunnelUpdate {
    fn from(u: v3::TunnelUpdate) -> Self {
        v2::TunnelUpdate {
            announce: u.announce.into_iter().map(Into::into).collect(),
            withdraw: u.withdraw.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<v3::Update> for v2::Update {
    fn from(u: v3::Update) -> Self {
        v2::Update {
            underlay: u.underlay.map(Into::into),
            tunnel: u.tunnel.map(Into::into),
        }
    }
}

impl From<v3::PullResponse> for v2::PullResponse {
    fn from(p: v3::PullResponse) -> Self {
        v2::PullResponse {
            underlay: p
                .underlay
                .map(|s| s.into_iter().map(Into::into).collect()),
            tunnel: p.tunnel.map(|s| s.into_iter().map(Into::into).collect()),
        }
    }
}

// ---- v3 -> v2 by reference, for sending without a copy ----

impl From<&v3::PathVector> for v2::PathVector {
    fn from(pv: &v3::PathVector) -> Self {
        v2::PathVector {
            destination: pv.destination.into(),
            path: pv.path.clone(),
        }
    }
}

impl From<&v3::TunnelOrigin> for v2::TunnelOrigin {
    fn from(t: &v3::TunnelOrigin) -> Self {
        (*t).into()
    }
}

/// A borrowing view of a v3 pull answer that serialises exactly as the v2
/// answer converted from it, byte for byte, without building it: no path
/// vector is copied on the way out. (Pushes are written the same way from
/// the compact form in [`super::outgoing`].)
///
/// The element order is the same as the converted sets': v3 prefixes order
/// by (address, length) like v2's `{addr, len}`, and tunnel origins compare
/// field by field in the same order in both versions.
pub mod v2_view {
    use serde::ser::{SerializeStruct, Serializer};

    use super::*;

    /// A path vector in v2 shape, borrowing its path.
    #[derive(Serialize)]
    struct PathVector<'a> {
        destination: v2::Ipv6Prefix,
        path: &'a [String],
    }

    /// A set of v3 path vectors, written as a v2 sequence.
    struct Paths<'a>(&'a BTreeSet<v3::PathVector>);

    impl Serialize for Paths<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|pv| PathVector {
                destination: pv.destination.into(),
                path: &pv.path,
            }))
        }
    }

    /// A set of v3 tunnel origins, written as a v2 sequence.
    struct Tunnels<'a>(&'a BTreeSet<v3::TunnelOrigin>);

    impl Serialize for Tunnels<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(v2::TunnelOrigin::from))
        }
    }

    /// A v3 pull response, serialised as [`v2::PullResponse`].
    pub struct PullResponse<'a>(pub &'a v3::PullResponse);

    impl Serialize for PullResponse<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("PullResponse", 2)?;
            st.serialize_field(
                "underlay",
                &self.0.underlay.as_ref().map(Paths),
            )?;
            st.serialize_field("tunnel", &self.0.tunnel.as_ref().map(Tunnels))?;
            st.end()
        }
    }
}

// ---- v2 -> v3 (validated; host bits cleared) ----

impl TryFrom<v2::Ipv6Prefix> for Ipv6Net {
    type Error = WireError;
    fn try_from(p: v2::Ipv6Prefix) -> Result<Self, WireError> {
        Ipv6Net::new(p.addr, p.len).map(normalise_v6).map_err(|_| {
            WireError::Ipv6PrefixLength { addr: p.addr, len: p.len }
        })
    }
}

impl TryFrom<v2::Ipv4Prefix> for Ipv4Net {
    type Error = WireError;
    fn try_from(p: v2::Ipv4Prefix) -> Result<Self, WireError> {
        Ipv4Net::new(p.addr, p.len).map(normalise_v4).map_err(|_| {
            WireError::Ipv4PrefixLength { addr: p.addr, len: p.len }
        })
    }
}

impl TryFrom<v2::IpPrefix> for IpNet {
    type Error = WireError;
    fn try_from(p: v2::IpPrefix) -> Result<Self, WireError> {
        Ok(match p {
            v2::IpPrefix::V4(p) => IpNet::V4(p.try_into()?),
            v2::IpPrefix::V6(p) => IpNet::V6(p.try_into()?),
        })
    }
}

impl TryFrom<v2::PathVector> for v3::PathVector {
    type Error = WireError;
    fn try_from(pv: v2::PathVector) -> Result<Self, WireError> {
        Ok(v3::PathVector {
            destination: pv.destination.try_into()?,
            path: pv.path,
        })
    }
}

impl TryFrom<v2::TunnelOrigin> for v3::TunnelOrigin {
    type Error = WireError;
    fn try_from(t: v2::TunnelOrigin) -> Result<Self, WireError> {
        Ok(v3::TunnelOrigin {
            overlay_prefix: t.overlay_prefix.try_into()?,
            boundary_addr: t.boundary_addr,
            vni: t.vni,
            metric: t.metric,
        })
    }
}

fn try_set<A, B>(set: BTreeSet<A>) -> Result<BTreeSet<B>, WireError>
where
    B: TryFrom<A, Error = WireError> + Ord,
{
    set.into_iter().map(B::try_from).collect()
}

impl TryFrom<v2::UnderlayUpdate> for v3::UnderlayUpdate {
    type Error = WireError;
    fn try_from(u: v2::UnderlayUpdate) -> Result<Self, WireError> {
        Ok(v3::UnderlayUpdate {
            announce: try_set(u.announce)?,
            withdraw: try_set(u.withdraw)?,
        })
    }
}

impl TryFrom<v2::TunnelUpdate> for v3::TunnelUpdate {
    type Error = WireError;
    fn try_from(u: v2::TunnelUpdate) -> Result<Self, WireError> {
        Ok(v3::TunnelUpdate {
            announce: try_set(u.announce)?,
            withdraw: try_set(u.withdraw)?,
        })
    }
}

impl TryFrom<v2::Update> for v3::Update {
    type Error = WireError;
    fn try_from(u: v2::Update) -> Result<Self, WireError> {
        Ok(v3::Update {
            underlay: u.underlay.map(TryInto::try_into).transpose()?,
            tunnel: u.tunnel.map(TryInto::try_into).transpose()?,
        })
    }
}

impl TryFrom<v2::PullResponse> for v3::PullResponse {
    type Error = WireError;
    fn try_from(p: v2::PullResponse) -> Result<Self, WireError> {
        Ok(v3::PullResponse {
            underlay: p.underlay.map(try_set).transpose()?,
            tunnel: p.tunnel.map(try_set).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn pv3(dest: &str, path: &[&str]) -> v3::PathVector {
        v3::PathVector {
            destination: net6(dest),
            path: path.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn to3(
        prefix: &str,
        boundary: &str,
        vni: u32,
        metric: u64,
    ) -> v3::TunnelOrigin {
        v3::TunnelOrigin {
            overlay_prefix: prefix.parse().unwrap(),
            boundary_addr: boundary.parse().unwrap(),
            vni,
            metric,
        }
    }

    /// The v3 update of the golden tests.
    fn update3() -> v3::Update {
        v3::Update {
            underlay: Some(v3::UnderlayUpdate {
                announce: [pv3("fd00:1::/64", &["sled-a", "switch-0"])].into(),
                withdraw: [pv3("fd00:2::/64", &["sled-b"])].into(),
            }),
            tunnel: Some(v3::TunnelUpdate {
                announce: [to3("203.0.113.0/24", "fd00:99::1", 77, 0)].into(),
                withdraw: [to3("fd10::/48", "fd00:99::2", 78, 5)].into(),
            }),
        }
    }

    /// The v3 pull response of the golden tests.
    fn pull3() -> v3::PullResponse {
        v3::PullResponse {
            underlay: Some([pv3("fd00:1::/64", &["sled-a"])].into()),
            tunnel: Some([to3("198.51.100.0/24", "fd00:99::3", 9, 100)].into()),
        }
    }

    const UPDATE3: &str = concat!(
        r#"{"underlay":{"announce":[{"destination":"fd00:1::/64","path":["sled-a","switch-0"]}],"#,
        r#""withdraw":[{"destination":"fd00:2::/64","path":["sled-b"]}]},"#,
        r#""tunnel":{"announce":[{"overlay_prefix":"203.0.113.0/24","boundary_addr":"fd00:99::1","vni":77,"metric":0}],"#,
        r#""withdraw":[{"overlay_prefix":"fd10::/48","boundary_addr":"fd00:99::2","vni":78,"metric":5}]}}"#
    );

    const UPDATE2: &str = concat!(
        r#"{"underlay":{"announce":[{"destination":{"addr":"fd00:1::","len":64},"path":["sled-a","switch-0"]}],"#,
        r#""withdraw":[{"destination":{"addr":"fd00:2::","len":64},"path":["sled-b"]}]},"#,
        r#""tunnel":{"announce":[{"overlay_prefix":{"V4":{"addr":"203.0.113.0","len":24}},"boundary_addr":"fd00:99::1","vni":77,"metric":0}],"#,
        r#""withdraw":[{"overlay_prefix":{"V6":{"addr":"fd10::","len":48}},"boundary_addr":"fd00:99::2","vni":78,"metric":5}]}}"#
    );

    const PULL3: &str = concat!(
        r#"{"underlay":[{"destination":"fd00:1::/64","path":["sled-a"]}],"#,
        r#""tunnel":[{"overlay_prefix":"198.51.100.0/24","boundary_addr":"fd00:99::3","vni":9,"metric":100}]}"#
    );

    const PULL2: &str = concat!(
        r#"{"underlay":[{"destination":{"addr":"fd00:1::","len":64},"path":["sled-a"]}],"#,
        r#""tunnel":[{"overlay_prefix":{"V4":{"addr":"198.51.100.0","len":24}},"boundary_addr":"fd00:99::3","vni":9,"metric":100}]}"#
    );

    #[test]
    fn golden_v3_update() {
        assert_eq!(serde_json::to_string(&update3()).unwrap(), UPDATE3);
        let back: v3::Update = serde_json::from_str(UPDATE3).unwrap();
        assert_eq!(back, update3());
    }

    #[test]
    fn golden_v2_update() {
        let u2 = v2::Update::from(update3());
        assert_eq!(serde_json::to_string(&u2).unwrap(), UPDATE2);
        let back: v2::Update = serde_json::from_str(UPDATE2).unwrap();
        assert_eq!(v3::Update::try_from(back).unwrap(), update3());
    }

    #[test]
    fn golden_v3_pull() {
        assert_eq!(serde_json::to_string(&pull3()).unwrap(), PULL3);
        let back: v3::PullResponse = serde_json::from_str(PULL3).unwrap();
        assert_eq!(back, pull3());
    }

    #[test]
    fn golden_v2_pull() {
        let p2 = v2::PullResponse::from(pull3());
        assert_eq!(serde_json::to_string(&p2).unwrap(), PULL2);
        let view = v2_view::PullResponse(&pull3());
        assert_eq!(serde_json::to_string(&view).unwrap(), PULL2);
        let back: v2::PullResponse = serde_json::from_str(PULL2).unwrap();
        assert_eq!(v3::PullResponse::try_from(back).unwrap(), pull3());
    }

    #[test]
    fn empty_halves_are_null_and_may_be_absent() {
        let empty = v3::Update::default();
        assert!(empty.is_empty());
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"underlay":null,"tunnel":null}"#
        );
        for text in ["{}", r#"{"underlay":null}"#] {
            let u: v3::Update = serde_json::from_str(text).unwrap();
            assert_eq!(u, empty);
            let p: v2::PullResponse = serde_json::from_str(text).unwrap();
            assert_eq!(p, v2::PullResponse::default());
        }
        assert!(!update3().is_empty());
    }

    #[test]
    fn metric_defaults_to_zero() {
        let t: v2::TunnelOrigin = serde_json::from_value(json!({
            "overlay_prefix": {"V6": {"addr": "fd10::", "len": 48}},
            "boundary_addr": "fd00::1",
            "vni": 3
        }))
        .unwrap();
        assert_eq!(t.metric, 0);
        let t: v3::TunnelOrigin = serde_json::from_value(json!({
            "overlay_prefix": "fd10::/48", "boundary_addr": "fd00::1", "vni": 3
        }))
        .unwrap();
        assert_eq!(t.metric, 0);
    }

    #[test]
    fn v2_prefix_length_is_validated() {
        let bad6 = v2::Ipv6Prefix { addr: "fd00::".parse().unwrap(), len: 129 };
        assert_eq!(
            Ipv6Net::try_from(bad6),
            Err(WireError::Ipv6PrefixLength { addr: bad6.addr, len: 129 })
        );
        let bad4 =
            v2::Ipv4Prefix { addr: "10.0.0.0".parse().unwrap(), len: 33 };
        assert!(Ipv4Net::try_from(bad4).is_err());
        assert!(IpNet::try_from(v2::IpPrefix::V4(bad4)).is_err());
        // One bad prefix rejects the whole message.
        let text = UPDATE2.replace(r#""len":48"#, r#""len":200"#);
        let u: v2::Update = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            v3::Update::try_from(u),
            Err(WireError::Ipv6PrefixLength { len: 200, .. })
        ));
        // Lengths beyond a byte do not even parse.
        let text = UPDATE2.replace(r#""len":48"#, r#""len":300"#);
        assert!(serde_json::from_str::<v2::Update>(&text).is_err());
    }

    #[test]
    fn host_bits_are_cleared() {
        let p = v2::Ipv6Prefix { addr: "fd00:1::5".parse().unwrap(), len: 64 };
        assert_eq!(Ipv6Net::try_from(p).unwrap(), net6("fd00:1::/64"));
        let p = v2::Ipv4Prefix { addr: "10.1.2.3".parse().unwrap(), len: 8 };
        assert_eq!(Ipv4Net::try_from(p).unwrap().to_string(), "10.0.0.0/8");
        let u = v3::Update {
            underlay: Some(v3::UnderlayUpdate {
                announce: [pv3("fd00:1::7/64", &["a"])].into(),
                withdraw: BTreeSet::new(),
            }),
            tunnel: Some(v3::TunnelUpdate {
                announce: [to3("10.9.9.9/16", "fd00::1", 1, 0)].into(),
                withdraw: BTreeSet::new(),
            }),
        }
        .normalised();
        let u = u.underlay.unwrap().announce.into_iter().next().unwrap();
        assert_eq!(u.destination, net6("fd00:1::/64"));
        assert_eq!(normalise_v6(net6("fd00::/0")), net6("::/0"));
        assert_eq!(normalise_v6(net6("fd00::1/128")), net6("fd00::1/128"));
    }

    #[test]
    fn wrong_shapes_are_errors() {
        // A v2 body on the v3 endpoint and vice versa.
        assert!(serde_json::from_str::<v3::Update>(UPDATE2).is_err());
        assert!(serde_json::from_str::<v2::Update>(UPDATE3).is_err());
        assert!(serde_json::from_str::<v3::PullResponse>(
            r#"{"underlay":[{"destination":"fd00::/129","path":[]}]}"#
        )
        .is_err());
    }

    // ---- the published schemas ----

    /// The published schema of exchange version `version`, from the
    /// `shared/reference` directory beside the repository. Missing, it is a
    /// loud skip on a developer's machine and a failure in CI (`CI=true`).
    fn published_schema(version: u8) -> Option<Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/reference")
            .join(format!("ddm-exchange-v{version}.schema.json"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{} is not JSON: {e}", path.display())
            })),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!(
                    "{}: {e} (CI must check the wire shapes)",
                    path.display()
                )
            }
            Err(e) => {
                eprintln!("SKIP: {} not available ({e})", path.display());
                None
            }
        }
    }

    /// Check our JSON against the published schema with a JSON Schema
    /// validator, and that we write every property each object of the
    /// schema lists (the schema does not forbid omitting the optional ones,
    /// but the original's decoder expects them).
    fn check_against_schema(version: u8, update: Value, pull: Value) {
        let Some(schema) = published_schema(version) else {
            return;
        };
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("v{version} schema: {e}"));
        let doc = json!({ "update": update, "pull_response": pull });
        let errors: Vec<String> =
            validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "v{version} example: {errors:#?}");
        for (name, value) in [("Update", &update), ("PullResponse", &pull)] {
            let listed: BTreeSet<&str> = schema["definitions"][name]
                ["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("v{version} schema lacks {name}"))
                .keys()
                .map(String::as_str)
                .collect();
            let written: BTreeSet<&str> = value
                .as_object()
                .expect("an object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(written, listed, "v{version} {name} properties");
        }
        // Empty halves, as we and the original write them, are valid too.
        let empty = json!({ "update": {"underlay": null, "tunnel": null},
                            "pull_response": {"underlay": null, "tunnel": null} });
        assert!(validator.is_valid(&empty), "v{version}: empty halves");
        // And the validator does refuse what the schema forbids.
        let bad = json!({ "update": {"underlay": {"announce": "x"}},
                          "pull_response": {} });
        assert!(!validator.is_valid(&bad), "v{version}: a string for a list");
    }

    #[test]
    fn v3_examples_fit_published_schema() {
        check_against_schema(
            3,
            serde_json::to_value(update3()).unwrap(),
            serde_json::to_value(pull3()).unwrap(),
        );
    }

    #[test]
    fn v2_examples_fit_published_schema() {
        check_against_schema(
            2,
            serde_json::to_value(v2::Update::from(update3())).unwrap(),
            serde_json::to_value(v2::PullResponse::from(pull3())).unwrap(),
        );
    }

    // ---- properties ----

    fn arb_net6() -> impl Strategy<Value = Ipv6Net> {
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| normalise_v6(Ipv6Net::new(a.into(), l).unwrap()))
    }

    fn arb_ipnet() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            arb_net6().prop_map(IpNet::V6),
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| IpNet::V4(
                normalise_v4(Ipv4Net::new(a.into(), l).unwrap())
            )),
        ]
    }

    fn arb_pv() -> impl Strategy<Value = v3::PathVector> {
        (arb_net6(), prop::collection::vec("[a-z0-9-]{1,12}", 0..4)).prop_map(
            |(destination, path)| v3::PathVector { destination, path },
        )
    }

    fn arb_to() -> impl Strategy<Value = v3::TunnelOrigin> {
        (arb_ipnet(), any::<u128>(), any::<u32>(), any::<u64>()).prop_map(
            |(overlay_prefix, b, vni, metric)| v3::TunnelOrigin {
                overlay_prefix,
                boundary_addr: b.into(),
                vni,
                metric,
            },
        )
    }

    fn arb_update() -> impl Strategy<Value = v3::Update> {
        let pvs = || prop::collection::btree_set(arb_pv(), 0..4);
        let tos = || prop::collection::btree_set(arb_to(), 0..4);
        (prop::option::of((pvs(), pvs())), prop::option::of((tos(), tos())))
            .prop_map(|(u, t)| v3::Update {
                underlay: u.map(|(announce, withdraw)| v3::UnderlayUpdate {
                    announce,
                    withdraw,
                }),
                tunnel: t.map(|(announce, withdraw)| v3::TunnelUpdate {
                    announce,
                    withdraw,
                }),
            })
    }

    proptest! {
        #[test]
        fn v3_v2_round_trip(u in arb_update()) {
            let json2 = serde_json::to_string(&v2::Update::from(u.clone())).unwrap();
            let back2: v2::Update = serde_json::from_str(&json2).unwrap();
            prop_assert_eq!(&v3::Update::try_from(back2).unwrap(), &u);
            let json3 = serde_json::to_string(&u).unwrap();
            let back3: v3::Update = serde_json::from_str(&json3).unwrap();
            prop_assert_eq!(&back3.normalised(), &u);
        }

        #[test]
        fn pull_round_trip(
            underlay in prop::option::of(prop::collection::btree_set(arb_pv(), 0..4)),
            tunnel in prop::option::of(prop::collection::btree_set(arb_to(), 0..4)),
        ) {
            let p = v3::PullResponse { underlay, tunnel };
            let json2 = serde_json::to_string(&v2::PullResponse::from(p.clone())).unwrap();
            let viewed = serde_json::to_string(&v2_view::PullResponse(&p)).unwrap();
            prop_assert_eq!(&viewed, &json2);
            let back2: v2::PullResponse = serde_json::from_str(&json2).unwrap();
            prop_assert_eq!(v3::PullResponse::try_from(back2).unwrap(), p);
        }

        #[test]
        fn v2_prefix_conversion_never_panics(addr in any::<u128>(), len in any::<u8>()) {
            let p = v2::Ipv6Prefix { addr: addr.into(), len };
            match Ipv6Net::try_from(p) {
                Ok(n) => {
                    prop_assert!(len <= 128);
                    prop_assert!(n.is_network_address());
                    prop_assert_eq!(n.width(), len);
                }
                Err(_) => prop_assert!(len > 128),
            }
        }
    }
}
