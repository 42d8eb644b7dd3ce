//! Decoding a peer's push body into the router's v3 update, with each
//! path vector kept at its exact length.

use bytes::Bytes;
use ddm_proto::wire::v3;
use ddm_proto::Version;

/// A push body in `version`, as the router's v3: each path vector read
/// straight into its v3 form at its exact length (a v2 destination is
/// converted as it is read) and inserted into its half's set. Before, a v2 body
/// was parsed into v2 sets, then converted into v3 sets: both were alive
/// at once, and a decoded update held about twice the memory it needs.
pub(crate) fn decode_update(
    version: Version,
    body: Bytes,
) -> Result<v3::Update, String> {
    match version {
        Version::V3 => read::<exact::V3>(&body)
            .map_err(|e| format!("invalid v3 update: {e}")),
        Version::V2 => read::<exact::V2>(&body)
            .map_err(|e| format!("invalid v2 update: {e}")),
    }
}

fn read<W: exact::Wire>(body: &[u8]) -> Result<v3::Update, String> {
    serde_json::from_slice::<exact::Update<W>>(body)
        .map_err(|e| e.to_string())?
        .try_into()
}

/// A push as it is read: the fields of the version's update, with each
/// path vector converted to v3 and its hostnames kept at their exact
/// length as it is read. serde's `Vec` leaves room for four hostnames in
/// every path vector (it has no length to go by), and a push of thousands
/// of them is held whole until the router takes it.
mod exact {
    use std::collections::BTreeSet;
    use std::fmt;
    use std::marker::PhantomData;

    use oxnet::Ipv6Net;
    use serde::de::{
        DeserializeOwned, Deserializer, Error, SeqAccess, Visitor,
    };
    use serde::Deserialize;

    use ddm_proto::wire::{v2, v3};

    /// What differs between the versions' push bodies.
    pub(super) trait Wire {
        /// A path vector as written.
        type Path: DeserializeOwned;
        /// The tunnel half as written.
        type Tunnel: DeserializeOwned;
        /// The path vector in v3, with its path as read.
        fn path(p: Self::Path) -> Result<v3::PathVector, String>;
        /// The tunnel half in v3.
        fn tunnel(t: Self::Tunnel) -> Result<v3::TunnelUpdate, String>;
    }

    /// Version 3's body.
    pub(super) enum V3 {}

    /// Version 2's body.
    pub(super) enum V2 {}

    /// A v3 path vector as written.
    #[derive(Deserialize)]
    pub(super) struct V3Path {
        destination: Ipv6Net,
        path: Vec<String>,
    }

    impl Wire for V3 {
        type Path = V3Path;
        type Tunnel = v3::TunnelUpdate;
        fn path(p: V3Path) -> Result<v3::PathVector, String> {
            Ok(v3::PathVector { destination: p.destination, path: p.path })
        }
        fn tunnel(t: v3::TunnelUpdate) -> Result<v3::TunnelUpdate, String> {
            Ok(t)
        }
    }

    impl Wire for V2 {
        type Path = v2::PathVector;
        type Tunnel = v2::TunnelUpdate;
        fn path(p: v2::PathVector) -> Result<v3::PathVector, String> {
            v3::PathVector::try_from(p).map_err(|e| e.to_string())
        }
        fn tunnel(t: v2::TunnelUpdate) -> Result<v3::TunnelUpdate, String> {
            t.try_into().map_err(|e: ddm_proto::wire::WireError| e.to_string())
        }
    }

    /// The update, read with exact v3 paths.
    #[derive(Deserialize)]
    #[serde(bound = "")]
    pub(super) struct Update<W: Wire> {
        #[serde(default)]
        underlay: Option<Underlay<W>>,
        #[serde(default)]
        tunnel: Option<W::Tunnel>,
    }

    /// The underlay half, read with exact v3 paths.
    #[derive(Deserialize)]
    #[serde(bound = "")]
    struct Underlay<W: Wire> {
        #[serde(default, deserialize_with = "paths::<_, W>")]
        announce: BTreeSet<v3::PathVector>,
        #[serde(default, deserialize_with = "paths::<_, W>")]
        withdraw: BTreeSet<v3::PathVector>,
        #[serde(skip)]
        wire: PhantomData<W>,
    }

    impl<W: Wire> TryFrom<Update<W>> for v3::Update {
        type Error = String;
        fn try_from(u: Update<W>) -> Result<v3::Update, String> {
            Ok(v3::Update {
                underlay: u.underlay.map(|u| v3::UnderlayUpdate {
                    announce: u.announce,
                    withdraw: u.withdraw,
                }),
                tunnel: u.tunnel.map(W::tunnel).transpose()?,
            })
        }
    }

    /// A set of path vectors, each converted and its path shrunk to its
    /// length as it is read.
    fn paths<'de, D: Deserializer<'de>, W: Wire>(
        d: D,
    ) -> Result<BTreeSet<v3::PathVector>, D::Error> {
        struct Paths<W>(PhantomData<W>);
        impl<'de, W: Wire> Visitor<'de> for Paths<W> {
            type Value = BTreeSet<v3::PathVector>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of path vectors")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = BTreeSet::new();
                while let Some(p) = seq.next_element::<W::Path>()? {
                    let mut pv = W::path(p).map_err(A::Error::custom)?;
                    pv.path.shrink_to_fit();
                    out.insert(pv);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Paths::<W>(PhantomData))
    }
}
