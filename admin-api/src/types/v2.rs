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
