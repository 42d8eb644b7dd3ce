//! The router actor: owner of the RIB and of the dataplane it programs.

use std::collections::{BTreeMap, BTreeSet};

use ddm_admin_api::latest::{PathVector, TunnelOrigin, TunnelRoute};
use oxnet::Ipv6Net;
use ractor::{ActorRef, RpcReplyPort};

/// A handle to the router actor.
pub type RouterRef = ActorRef<RouterMsg>;

/// Messages the router actor handles.
pub enum RouterMsg {
    /// Start originating these prefixes (already stored durably).
    Originate(BTreeSet<Ipv6Net>),
    /// Stop originating these prefixes (already removed from the store).
    Withdraw(BTreeSet<Ipv6Net>),
    /// Start originating these tunnel endpoints.
    OriginateTunnels(BTreeSet<TunnelOrigin>),
    /// Stop originating these tunnel endpoints.
    WithdrawTunnels(BTreeSet<TunnelOrigin>),
    /// Imported paths by nexthop, for `GET /prefixes`.
    GetPrefixes(RpcReplyPort<BTreeMap<String, BTreeSet<PathVector>>>),
    /// Imported tunnel endpoints, for `GET /tunnel_endpoints`.
    GetTunnelEndpoints(RpcReplyPort<BTreeSet<TunnelRoute>>),
    /// Re-pull every peer (`PUT /sync`).
    Sync,
}
