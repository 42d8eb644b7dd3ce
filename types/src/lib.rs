//! Types shared by the admin API (`ddm-admin-api`, which depends on
//! dropshot), the dataplanes (`ddm-dataplane`) and the protocol floor
//! (`ddm-proto`), which must not: dropshot cannot be built for illumos
//! here. The admin API re-exports them where
//! its published versions name them, so their OpenAPI shapes are unchanged.

pub mod text;

use std::net::Ipv6Addr;

use oxnet::{IpNet, Ipv6Net};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// A path to an underlay destination: the routers an announcement crossed,
// originator first.
//
// (A plain comment, not a doc comment, like TunnelOrigin's below.)
#[allow(missing_docs)]
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
    JsonSchema,
)]
pub struct PathVector {
    pub destination: Ipv6Net,
    pub path: Vec<String>,
}

// An overlay prefix reachable through a boundary (tunnel endpoint) address.
//
// (A plain comment, not a doc comment: a doc comment would become the
// schema's description and change the frozen admin API documents.)
#[allow(missing_docs)]
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
pub struct TunnelOrigin {
    pub overlay_prefix: IpNet,
    pub boundary_addr: Ipv6Addr,
    pub vni: u32,
    #[serde(default)]
    pub metric: u64,
}
