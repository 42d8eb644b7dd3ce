//! Prefix exchange with one peer.
//!
//! [`wire`] holds the frozen JSON shapes of the push/pull protocol (versions
//! 2 and 3) and the conversions between them; version 3 is what the rest of
//! the router works with; [`outgoing`] is the compact form of what it
//! pushes, written as either version. [`actor`] is the per-peer exchange actor; it
//! serves the peer through [`server`] and calls it through [`client`].

pub mod actor;
pub mod client;
pub mod outgoing;
pub mod server;
pub mod wire;
