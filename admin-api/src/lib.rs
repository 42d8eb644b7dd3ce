//! The DDM admin API.
//!
//! This crate defines the admin API as a dropshot API trait
//! ([`DdmAdminApi`]) together with the published types of every version.
//! The daemon implements the trait; the OpenAPI document of every version is
//! generated from it ([`openapi_document`]) and checked in under `openapi/`,
//! and the client is generated from those documents.
//!
//! Versions are chosen per request with the `api-version` header (see
//! [`VersionHeaderPolicy`]).
//!
//! The published types and endpoints carry no doc comments on purpose: a
//! doc comment becomes a `description` in the generated OpenAPI documents,
//! which must stay identical to the published ones. Hence `missing_docs`
//! is allowed here.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use dropshot::{
    HttpError, HttpResponseOk, HttpResponseUpdatedNoContent, Path,
    RequestContext, TypedBody,
};
use oxnet::Ipv6Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod counters;
pub mod types;
mod version;

pub use version::{
    openapi_document, VersionHeaderPolicy, API_VERSIONS, API_VERSION_HEADER,
    VERSION_1, VERSION_2, VERSION_LATEST,
};

/// The types of the newest version of the API, under one roof.
pub mod latest {
    pub use crate::types::v1::{
        EnableStatsRequest, PathVector, RouterKind, TunnelOrigin, TunnelRoute,
    };
    pub use crate::types::v2::{PeerInfo, PeerStatus};
}

/// Largest request body the admin server accepts, in bytes.
///
/// Large enough for 100,000 prefixes in one `PUT /prefix` even in their
/// longest text form (`"ffff:…:ffff/128",` is 48 bytes: 4.8 MB); small
/// enough that a runaway client cannot make the daemon buffer without bound.
pub const REQUEST_BODY_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Path parameter of `DELETE /peers/{addr}`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
pub struct PeerAddr {
    pub addr: Ipv6Addr,
}

/// Peers keyed by interface index (rendered as a string key in JSON).
pub type PeerMap<P> = BTreeMap<u32, P>;

/// The body of `PUT` and `DELETE /prefix`: a set of prefixes, published as
/// `BTreeSet<Ipv6Net>`'s schema (an array of unique prefixes) but read as
/// the list it is on the wire, in its order and with any repeats. Read into
/// a set, each prefix was an insertion that searched the tree from its
/// root: 100,000 prefixes took about 20 ms before the daemon could act on
/// them, half of it in those insertions; a list is sorted and built into a
/// set in one pass by whoever takes it. Each prefix is read as
/// [`ddm_types::text::NetText`]: as `Ipv6Net`'s own `Deserialize` reads
/// it, without a new `String` each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixList(pub Vec<Ipv6Net>);

impl<'de> Deserialize<'de> for PrefixList {
    fn deserialize<D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Self, D::Error> {
        let list = Vec::<ddm_types::text::NetText>::deserialize(d)?;
        Ok(PrefixList(list.into_iter().map(|p| p.0).collect()))
    }
}

impl JsonSchema for PrefixList {
    fn schema_name() -> String {
        <BTreeSet<Ipv6Net>>::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        <BTreeSet<Ipv6Net>>::schema_id()
    }

    fn json_schema(
        generator: &mut schemars::gen::SchemaGenerator,
    ) -> schemars::schema::Schema {
        <BTreeSet<Ipv6Net>>::json_schema(generator)
    }

    fn is_referenceable() -> bool {
        <BTreeSet<Ipv6Net>>::is_referenceable()
    }
}

#[dropshot::api_description]
pub trait DdmAdminApi {
    type Context: Send + Sync + 'static;

    #[endpoint {
        method = GET,
        path = "/peers",
        operation_id = "get_peers",
        versions = .."2.0.0",
    }]
    async fn get_peers_v1(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<PeerMap<types::v1::PeerInfo>>, HttpError>;

    #[endpoint {
        method = GET,
        path = "/peers",
        operation_id = "get_peers",
        versions = "2.0.0"..,
    }]
    async fn get_peers(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<PeerMap<latest::PeerInfo>>, HttpError>;

    #[endpoint { method = DELETE, path = "/peers/{addr}" }]
    async fn expire_peer(
        rqctx: RequestContext<Self::Context>,
        params: Path<PeerAddr>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint { method = GET, path = "/originated" }]
    async fn get_originated(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<BTreeSet<Ipv6Net>>, HttpError>;

    #[endpoint { method = GET, path = "/originated_tunnel_endpoints" }]
    async fn get_originated_tunnel_endpoints(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<BTreeSet<latest::TunnelOrigin>>, HttpError>;

    #[endpoint { method = GET, path = "/prefixes" }]
    async fn get_prefixes(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<
        HttpResponseOk<BTreeMap<String, BTreeSet<latest::PathVector>>>,
        HttpError,
    >;

    #[endpoint { method = GET, path = "/tunnel_endpoints" }]
    async fn get_tunnel_endpoints(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<BTreeSet<latest::TunnelRoute>>, HttpError>;

    #[endpoint {
        method = PUT,
        path = "/prefix",
        request_body_max_bytes = REQUEST_BODY_MAX_BYTES,
    }]
    async fn advertise_prefixes(
        rqctx: RequestContext<Self::Context>,
        request: TypedBody<PrefixList>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint {
        method = DELETE,
        path = "/prefix",
        request_body_max_bytes = REQUEST_BODY_MAX_BYTES,
    }]
    async fn withdraw_prefixes(
        rqctx: RequestContext<Self::Context>,
        request: TypedBody<PrefixList>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint {
        method = PUT,
        path = "/tunnel_endpoint",
        request_body_max_bytes = REQUEST_BODY_MAX_BYTES,
    }]
    async fn advertise_tunnel_endpoints(
        rqctx: RequestContext<Self::Context>,
        request: TypedBody<BTreeSet<latest::TunnelOrigin>>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint {
        method = DELETE,
        path = "/tunnel_endpoint",
        request_body_max_bytes = REQUEST_BODY_MAX_BYTES,
    }]
    async fn withdraw_tunnel_endpoints(
        rqctx: RequestContext<Self::Context>,
        request: TypedBody<BTreeSet<latest::TunnelOrigin>>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint { method = PUT, path = "/sync" }]
    async fn sync(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint { method = POST, path = "/enable-stats" }]
    async fn enable_stats(
        rqctx: RequestContext<Self::Context>,
        request: TypedBody<latest::EnableStatsRequest>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint { method = POST, path = "/disable-stats" }]
    async fn disable_stats(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_list_reads_as_a_list_of_prefixes() {
        for body in [
            r#"["fd00::/64", "fd00:1::/48", "fd00::/64"]"#,
            r#"[]"#,
            r#"["FD00::1/128", "::/0", "::ffff:1.2.3.4/128"]"#,
            r#"["fd00::/129"]"#,
            r#"["fd00::"]"#,
            r#"["fd00::g/64"]"#,
            r#"["fd00::/64", 5]"#,
            r#"["fd\u0030::/64"]"#,
            r#"{"a": 1}"#,
            r#"null"#,
            r#"["fd00::/64""#,
        ] {
            let text = |e: serde_json::Error| {
                ddm_types::text::without_position(&e.to_string()).to_string()
            };
            let ours = serde_json::from_str::<PrefixList>(body)
                .map(|l| l.0)
                .map_err(text);
            let theirs =
                serde_json::from_str::<Vec<Ipv6Net>>(body).map_err(text);
            assert_eq!(ours, theirs, "{body}");
        }
    }
}
