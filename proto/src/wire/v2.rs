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
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
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
