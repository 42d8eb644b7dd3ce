//! Prefix exchange with one peer.
//!
//! [`wire`] (from the protocol floor, `ddm-proto`) holds the frozen JSON shapes of the push/pull protocol (versions
//! 2 and 3) and the conversions between them; version 3 is what the rest of
//! the router works with; [`outgoing`] (also the floor's) is the compact form of what it
//! pushes, written as either version. [`actor`] is the per-peer exchange actor; it
//! serves the peer through [`server`] and calls it through [`client`].

pub mod actor;
pub mod client;
pub mod server;
pub mod session;
pub mod session_io;
pub mod transport;

// The wire types and the outgoing update are the protocol floor's
// (`ddm-proto`), which the RIB uses too; re-exported at their old paths.
pub use ddm_proto::{outgoing, wire};
