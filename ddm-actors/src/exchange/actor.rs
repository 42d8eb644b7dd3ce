//! The exchange actor: one per peer (in progress).

use ractor::ActorRef;

use super::wire::v3;

/// A handle to an exchange actor.
pub type ExchangeRef = ActorRef<ExchangeMsg>;

/// Messages an exchange actor handles.
pub enum ExchangeMsg {
    /// Push this update to the peer (from the router), in order.
    Push(v3::Update),
    /// Pull the peer's full set again and hand it to the router (sync).
    Pull,
}
