//! Types of admin API version 2.0.0: the peer status gained a duration.
//!
//! FROZEN: these serialise exactly as `openapi/ddm-admin-2.0.0.json` says.

use std::net::Ipv6Addr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::v1::{self, RouterKind};

/// Status of a DDM peer, including how long the peer has been in its
/// current state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[serde(tag = "type", content = "duration")]
pub enum PeerStatus {
    Init(Duration),
    Solicit(Duration),
    Exchange(Duration),
    Expired(Duration),
}

impl PeerStatus {
    /// How long the peer has been in this state.
    pub fn duration(&self) -> Duration {
        match *self {
            PeerStatus::Init(d)
            | PeerStatus::Solicit(d)
            | PeerStatus::Exchange(d)
            | PeerStatus::Expired(d) => d,
        }
    }

    /// The state's name, as the wire spells it.
    pub fn name(&self) -> &'static str {
        match self {
            PeerStatus::Init(_) => "Init",
            PeerStatus::Solicit(_) => "Solicit",
            PeerStatus::Exchange(_) => "Exchange",
            PeerStatus::Expired(_) => "Expired",
        }
    }
}

impl From<PeerStatus> for v1::PeerStatus {
    fn from(s: PeerStatus) -> Self {
        match s {
            PeerStatus::Init(_) | PeerStatus::Solicit(_) => {
                v1::PeerStatus::NoContact
            }
            PeerStatus::Exchange(_) => v1::PeerStatus::Active,
            PeerStatus::Expired(_) => v1::PeerStatus::Expired,
        }
    }
}

/// Information about a DDM peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PeerInfo {
    pub status: PeerStatus,
    pub addr: Ipv6Addr,
    pub host: String,
    pub kind: RouterKind,
}

impl From<PeerInfo> for v1::PeerInfo {
    fn from(p: PeerInfo) -> Self {
        v1::PeerInfo {
            status: p.status.into(),
            addr: p.addr,
            host: p.host,
            kind: p.kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(status: PeerStatus) -> PeerInfo {
        PeerInfo {
            status,
            addr: "fe80::1".parse().unwrap(),
            host: "sw0".to_string(),
            kind: RouterKind::Transit,
        }
    }

    /// The 2.0.0 shape: status tagged by `type`, with a `{secs, nanos}`
    /// duration; kind as a number.
    #[test]
    fn v2_peer_shape() {
        let d = Duration::new(3, 500);
        let got = serde_json::to_value(peer(PeerStatus::Exchange(d))).unwrap();
        assert_eq!(
            got,
            json!({
                "status": {"type": "Exchange", "duration": {"secs": 3, "nanos": 500}},
                "addr": "fe80::1",
                "host": "sw0",
                "kind": 1,
            })
        );
    }

    /// The 1.0.0 shape, derived from 2.0.0: a bare status name.
    #[test]
    fn v1_peer_shape_from_v2() {
        let d = Duration::from_secs(1);
        for (status, name) in [
            (PeerStatus::Init(d), "NoContact"),
            (PeerStatus::Solicit(d), "NoContact"),
            (PeerStatus::Exchange(d), "Active"),
            (PeerStatus::Expired(d), "Expired"),
        ] {
            let v1: v1::PeerInfo = peer(status).into();
            let got = serde_json::to_value(v1).unwrap();
            assert_eq!(
                got,
                json!({"status": name, "addr": "fe80::1", "host": "sw0", "kind": 1})
            );
        }
    }
}
