//! Published types of the admin API.
//!
//! The admin API is versioned; every type that appears in it lives in the
//! module of the version that introduced its current shape.  `v1` holds the
//! types of 1.0.0 (most of which are still current), `v2` those that changed
//! in 2.0.0.  Code outside this crate should use [`crate::latest`] unless it
//! deliberately speaks an older version.
//!
//! These shapes are frozen: existing clients depend on them byte for byte.
//! `tests/openapi.rs` guards them against the checked-in documents.

pub mod v1;
pub mod v2;
