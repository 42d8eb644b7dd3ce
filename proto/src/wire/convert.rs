//! The conversions between versions 2 and 3 of the wire types.

use super::*;

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
