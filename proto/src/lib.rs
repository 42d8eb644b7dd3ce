//! The DDM protocol floor: what both the RIB and the exchange speak, owned
//! by neither.
//!
//! * [`peer`]: who a peer is ([`PeerId`]);
//! * [`version`]: the exchange protocol version spoken with a peer
//!   ([`Version`]);
//! * [`wire`]: the frozen JSON shapes of the push/pull protocol, one module
//!   per version, and the conversions between them;
//! * [`outgoing`]: the compact form of what the router pushes, written as
//!   either version, and its rules: merging a later update into a pending
//!   one, and cutting a pending update into bounded pushes.
//!
//! It depends on no part of the router and not on dropshot, so it builds
//! for every target the dataplanes build for (illumos included).

pub mod outgoing;
pub mod peer;
pub mod version;
pub mod wire;

pub use peer::PeerId;
pub use version::Version;
