//! Prefix exchange with one peer.
//!
//! [`wire`] (from the protocol floor, `ddm-proto`) holds the frozen JSON shapes of the push/pull protocol (versions
//! 2 and 3) and the conversions between them; version 3 is what the rest of
//! the router works with; [`outgoing`] (also the floor's) is the compact form of what it
//! pushes, written as either version. [`actor`] is the per-peer exchange
//! actor: glue around [`session`], the pure state machine that holds every
//! session rule (its [`session_io`] inputs and effects are serde enums; the
//! step files in `steps/` replay one rule each). The actor reaches the
//! network through a [`transport`]: HTTP in production (it serves the peer
//! through [`server`], which reads push bodies with `decode.rs`, and calls
//! it through [`client`]), or the in-memory
//! [`transport::ExchangeNet`] for tests and simulated fabrics. The
//! counters the actor and its server share are in [`stats`].

pub mod actor;
pub mod client;
mod decode;
pub mod server;
pub mod session;
pub mod session_io;
pub mod stats;
pub mod transport;
mod watched;

#[cfg(test)]
pub(crate) mod testing;

// The wire types and the outgoing update are the protocol floor's
// (`ddm-proto`), which the RIB uses too; re-exported at their old paths.
pub use ddm_proto::{outgoing, wire};
