//! Decoding a peer's push body into the router's v3 update, with each
//! path vector kept at its exact length.

use bytes::Bytes;
use ddm_proto::wire::{v2, v3};
use ddm_proto::Version;

/// A push body in `version`, as the router's v3. The body is dropped as
/// soon as it is parsed, so that at most the text and one parsed form, or
/// two parsed forms being converted, are alive at a time.
pub(crate) fn decode_update(
    version: Version,
    body: Bytes,
) -> Result<v3::Update, String> {
    match version {
        Version::V3 => serde_json::from_slice::<exact::Update>(&body)
            .map(v3::Update::from)
            .map_err(|e| format!("invalid v3 update: {e}")),
        Version::V2 => {
            let parsed = serde_json::from_slice::<v2::Update>(&body)
                .map_err(|e| format!("invalid v2 update: {e}"));
            drop(body);
            parsed?.try_into().map_err(|e| format!("invalid v2 update: {e}"))
        }
    }
}

/// A v3 push as it is read: the fields of [`v3::Update`], with each path's
/// hostnames kept at their exact length. serde's `Vec` leaves room for
/// four hostnames in every path vector (it has no length to go by), and a
/// push of thousands of them is held whole until the router takes it.
mod exact {
    use std::collections::BTreeSet;
    use std::fmt;

    use oxnet::Ipv6Net;
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Deserialize;

    use ddm_proto::wire::v3;

    /// [`v3::Update`], read with exact paths.
    #[derive(Deserialize)]
    pub(super) struct Update {
        #[serde(default)]
        underlay: Option<Underlay>,
        #[serde(default)]
        tunnel: Option<v3::TunnelUpdate>,
    }

    /// [`v3::UnderlayUpdate`], read with exact paths.
    #[derive(Deserialize)]
    struct Underlay {
        #[serde(default, deserialize_with = "paths")]
        announce: BTreeSet<v3::PathVector>,
        #[serde(default, deserialize_with = "paths")]
        withdraw: BTreeSet<v3::PathVector>,
    }

    /// One path vector as written.
    #[derive(Deserialize)]
    struct Path {
        destination: Ipv6Net,
        path: Vec<String>,
    }

    impl From<Update> for v3::Update {
        fn from(u: Update) -> v3::Update {
            v3::Update {
                underlay: u.underlay.map(|u| v3::UnderlayUpdate {
                    announce: u.announce,
                    withdraw: u.withdraw,
                }),
                tunnel: u.tunnel,
            }
        }
    }

    /// A set of path vectors, each path shrunk to its length as it is read.
    fn paths<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeSet<v3::PathVector>, D::Error> {
        struct Paths;
        impl<'de> Visitor<'de> for Paths {
            type Value = BTreeSet<v3::PathVector>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of path vectors")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = BTreeSet::new();
                while let Some(Path { destination, mut path }) =
                    seq.next_element()?
                {
                    path.shrink_to_fit();
                    out.insert(v3::PathVector { destination, path });
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Paths)
    }
}
