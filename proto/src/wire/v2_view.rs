use serde::ser::{SerializeStruct, Serializer};

use super::*;

/// A path vector in v2 shape, borrowing its path.
#[derive(Serialize)]
struct PathVector<'a> {
    destination: v2::Ipv6Prefix,
    path: &'a [String],
}

/// A set of v3 path vectors, written as a v2 sequence.
struct Paths<'a>(&'a BTreeSet<v3::PathVector>);

impl Serialize for Paths<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|pv| PathVector {
            destination: pv.destination.into(),
            path: &pv.path,
        }))
    }
}

/// A set of v3 tunnel origins, written as a v2 sequence.
struct Tunnels<'a>(&'a BTreeSet<v3::TunnelOrigin>);

impl Serialize for Tunnels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(v2::TunnelOrigin::from))
    }
}

/// A v3 pull response, serialised as [`v2::PullResponse`].
pub struct PullResponse<'a>(pub &'a v3::PullResponse);

impl Serialize for PullResponse<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("PullResponse", 2)?;
        st.serialize_field("underlay", &self.0.underlay.as_ref().map(Paths))?;
        st.serialize_field("tunnel", &self.0.tunnel.as_ref().map(Tunnels))?;
        st.end()
    }
}
