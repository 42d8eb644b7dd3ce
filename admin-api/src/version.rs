//! API versions and how a request picks one.

use dropshot::{Body, ClientErrorStatusCode, DynamicVersionPolicy, HttpError};
use http::HeaderName;
use semver::Version;

/// The header a client names its API version in.
pub const API_VERSION_HEADER: &str = "api-version";

/// The first published version.
pub const VERSION_1: Version = Version::new(1, 0, 0);
/// Peer status with durations.
pub const VERSION_2: Version = Version::new(2, 0, 0);
/// The version served when a request names none.
pub const VERSION_LATEST: Version = VERSION_2;
/// Every version this server speaks, oldest first.
pub const API_VERSIONS: &[Version] = &[VERSION_1, VERSION_2];

/// Picks the version of each request from its `api-version` header.
///
/// A request without the header is served as [`VERSION_LATEST`]. A header
/// that is not a version this server speaks (unparsable, or a version that
/// does not exist, older or newer) is rejected with a 400 whose message
/// lists the versions that exist.
#[derive(Debug, Default)]
pub struct VersionHeaderPolicy;

impl VersionHeaderPolicy {
    fn supported() -> String {
        API_VERSIONS
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Resolve a header value (or its absence) to a served version.
    pub fn resolve(value: Option<&[u8]>) -> Result<Version, String> {
        let Some(raw) = value else {
            return Ok(VERSION_LATEST);
        };
        let text = std::str::from_utf8(raw).map_err(|_| {
            format!(
                "{API_VERSION_HEADER} header is not valid UTF-8; \
                 supported versions: {}",
                Self::supported()
            )
        })?;
        let version = Version::parse(text.trim()).map_err(|e| {
            format!(
                "{API_VERSION_HEADER} header {text:?} is not a version ({e}); \
                 supported versions: {}",
                Self::supported()
            )
        })?;
        if API_VERSIONS.contains(&version) {
            Ok(version)
        } else {
            Err(format!(
                "API version {version} is not supported; \
                 supported versions: {}",
                Self::supported()
            ))
        }
    }
}

impl DynamicVersionPolicy for VersionHeaderPolicy {
    fn request_extract_version(
        &self,
        request: &http::Request<Body>,
        _log: &slog::Logger,
    ) -> Result<Version, HttpError> {
        let name = HeaderName::from_static(API_VERSION_HEADER);
        let value = request.headers().get(name).map(|v| v.as_bytes());
        Self::resolve(value).map_err(|message| {
            HttpError::for_client_error(
                Some("BadApiVersion".to_string()),
                ClientErrorStatusCode::BAD_REQUEST,
                message,
            )
        })
    }
}

/// The OpenAPI document of one version of the API, as pretty JSON with a
/// trailing newline (the form checked in under `openapi/`).
pub fn openapi_document(version: &Version) -> String {
    let api = crate::ddm_admin_api_mod::stub_api_description()
        .expect("the admin API description is valid");
    let mut doc = api.openapi("DDM Admin", version.clone());
    doc.contact_url("https://oxide.computer")
        .contact_email("api@oxide.computer");
    let mut out = Vec::new();
    doc.write(&mut out).expect("writing to a Vec cannot fail");
    let mut s = String::from_utf8(out).expect("OpenAPI JSON is UTF-8");
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}
