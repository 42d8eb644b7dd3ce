//! The counters the daemon serves as JSON on its metrics listener
//! (`ddmd --metrics-addr`, `GET /counters`), and `ddmadm counters` reads.
//!
//! These types are **not** part of the admin API and carry no API version:
//! the metrics listener is a separate server. Counter sets are maps from a
//! counter's name to its value, so that a counter added later appears in
//! the JSON, in `/metrics` and in `ddmadm counters` without a format change.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every counter of one daemon, gathered at one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersReport {
    /// The rack id from `POST /enable-stats`, while statistics are enabled.
    pub rack_id: Option<Uuid>,
    /// The sled id from `POST /enable-stats`, while statistics are enabled.
    pub sled_id: Option<Uuid>,
    /// Actors that did not answer within the gathering deadline (their
    /// counters are missing from this report), e.g. `router`.
    pub unanswered: Vec<String>,
    /// Discovery, one entry per interface.
    pub discovery: Vec<InterfaceCounters>,
    /// Prefix exchange, one entry per peer in exchange.
    pub exchange: Vec<PeerCounters>,
    /// What the import policy refused, by reason, per peer (peers that are
    /// up, and for a while those that went down).
    pub import_refusals: Vec<PeerRefusals>,
    /// The router, if one runs (not in admin-only mode).
    pub router: Option<BTreeMap<String, u64>>,
    /// The durable store, as seen by the admin actor.
    pub store: BTreeMap<String, u64>,
}

/// The discovery counters of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounters {
    /// The interface's name.
    pub interface: String,
    /// Packets sent and received, peers up and expired, send errors.
    pub counters: BTreeMap<String, u64>,
    /// Received datagrams dropped, by reason.
    pub drops: BTreeMap<String, u64>,
}

/// The exchange counters of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    /// The interface the peer is on.
    pub interface: String,
    /// That interface's index.
    pub ifindex: u32,
    /// The peer's link-local address.
    pub peer: Ipv6Addr,
    /// Pushes and pulls sent, received, refused and split, failures.
    pub counters: BTreeMap<String, u64>,
}

/// Import refusals of one peer, by reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRefusals {
    /// The interface index the peer was on.
    pub ifindex: u32,
    /// The peer's link-local address.
    pub peer: Ipv6Addr,
    /// Refused items by reason (every reason, zeros included).
    pub reasons: BTreeMap<String, u64>,
}
