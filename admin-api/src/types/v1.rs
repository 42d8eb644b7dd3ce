//! Types of admin API version 1.0.0.
//!
//! FROZEN: these serialise exactly as the 1.0.0 document in
//! `openapi/ddm-admin-1.0.0.json` says. Add new shapes in a new version
//! module instead of changing these.

use std::net::Ipv6Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

// The role of a router: whether it redistributes what it learns.
//
// On the wire (discovery packets and the admin API) this is the integer
// 0 (server) or 1 (transit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum RouterKind {
    // A sled: announces only what it originates.
    #[default]
    Server,
    // A switch: re-announces what it learns with its own name appended.
    Transit,
}

impl RouterKind {
    /// The wire value of this kind.
    pub const fn as_u8(self) -> u8 {
        match self {
            RouterKind::Server => 0,
            RouterKind::Transit => 1,
        }
    }

    /// The kind for a wire value, if the value names one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(RouterKind::Server),
            1 => Some(RouterKind::Transit),
            _ => None,
        }
    }
}

impl std::fmt::Display for RouterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouterKind::Server => "server",
            RouterKind::Transit => "transit",
        })
    }
}

impl std::str::FromStr for RouterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" | "0" => Ok(RouterKind::Server),
            "transit" | "1" => Ok(RouterKind::Transit),
            other => Err(format!(
                "unknown router kind {other:?} (expected server or transit)"
            )),
        }
    }
}

impl Serialize for RouterKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for RouterKind {
    fn deserialize<D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        RouterKind::from_u8(v).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid router kind {v} (expected 0 or 1)"
            ))
        })
    }
}

impl JsonSchema for RouterKind {
    fn schema_name() -> String {
        "RouterKind".to_string()
    }

    fn json_schema(
        _: &mut schemars::gen::SchemaGenerator,
    ) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::Integer.into()),
            enum_values: Some(vec![0.into(), 1.into()]),
            ..Default::default()
        }
        .into()
    }
}

// Peer status as version 1.0.0 reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
pub enum PeerStatus {
    NoContact,
    Active,
    Expired,
}

// A DDM peer as version 1.0.0 reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PeerInfo {
    pub status: PeerStatus,
    pub addr: Ipv6Addr,
    pub host: String,
    pub kind: RouterKind,
}

// A path to an underlay destination; defined in ddm-types so that the
// protocol floor (ddm-proto) can use it without dropshot.
pub use ddm_types::PathVector;

// An overlay prefix reachable through a boundary (tunnel endpoint) address;
// defined in ddm-types so that the dataplanes can use it without dropshot.
pub use ddm_types::TunnelOrigin;

// A tunnel endpoint learned from a peer, with the peer it came through.
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
    JsonSchema,
)]
pub struct TunnelRoute {
    pub origin: TunnelOrigin,
    pub nexthop: Ipv6Addr,
}

// Identity under which the router reports statistics.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
pub struct EnableStatsRequest {
    pub sled_id: Uuid,
    pub rack_id: Uuid,
}
