//! Decoding a peer's push body into the compact update the router imports.
//!
//! A push waits for its router as an [`OutUpdate`], the form the RIB's own
//! pushes take: each hostname is stored once per body and shared by every
//! path that names it, and a path equal to the one read before it (the
//! 100,000 prefixes of one origin) shares that path. Read into the wire
//! types instead, every hostname of every path was its own allocation:
//! about 300 bytes per path of 4 hostnames waiting in a mailbox, against
//! about 60 now.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use ddm_proto::outgoing::{Names, OutUpdate};
use ddm_proto::Version;

/// A push body in `version`, as the router's compact update (a v2
/// destination is converted to v3 as it is read).
pub(crate) fn decode_update(
    version: Version,
    body: Bytes,
) -> Result<OutUpdate, String> {
    match version {
        Version::V3 => read::<exact::V3>(&body)
            .map_err(|e| format!("invalid v3 update: {e}")),
        Version::V2 => read::<exact::V2>(&body)
            .map_err(|e| format!("invalid v2 update: {e}")),
    }
}

fn read<W: exact::Wire>(body: &[u8]) -> Result<OutUpdate, String> {
    SHARED.with(|s| s.borrow_mut().clear());
    let read = serde_json::from_slice::<exact::Update<W>>(body)
        .map_err(|e| e.to_string())
        .and_then(OutUpdate::try_from);
    // The names read are the update's now; drop the body's table.
    SHARED.with(|s| s.borrow_mut().clear());
    read
}

thread_local! {
    /// The hostnames and the last path of the body being read on this
    /// thread. Reading a body is synchronous (`serde_json::from_slice`,
    /// no await), so one body at a time uses it; [`read`] empties it
    /// before and after.
    static SHARED: RefCell<Shared> = RefCell::default();
}

/// Most distinct hostnames one body's table shares.
const SHARED_NAMES: usize = 1 << 16;

/// What the paths of one body share.
#[derive(Default)]
struct Shared {
    /// Every hostname read so far.
    names: HashSet<Arc<str>, foldhash::quality::RandomState>,
    /// The path read last.
    last: Option<Names>,
    /// The hostnames of the path being read.
    path: Vec<Arc<str>>,
}

impl Shared {
    fn clear(&mut self) {
        *self = Shared::default();
    }

    /// The shared copy of hostname `n`. Past [`SHARED_NAMES`] distinct
    /// names (no fabric has that many routers; a hostile body may) a new
    /// name is its own copy, so the table stays small whatever the body.
    fn name(&mut self, n: &str) -> Arc<str> {
        if let Some(a) = self.names.get(n) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(n);
        if self.names.len() < SHARED_NAMES {
            self.names.insert(Arc::clone(&a));
        }
        a
    }

    /// The path whose hostnames were just read into `self.path`: the last
    /// path again when equal.
    fn take_path(&mut self) -> Names {
        let path = std::mem::take(&mut self.path);
        if let Some(last) = &self.last {
            if last.len() == path.len()
                && last.iter().zip(&path).all(|(a, b)| Arc::ptr_eq(a, b))
            {
                return Arc::clone(last);
            }
        }
        let names: Names = Arc::new(path.into_boxed_slice());
        self.last = Some(Arc::clone(&names));
        names
    }
}

/// A push as it is read: the fields of the version's update, with each
/// path vector read into its compact form.
mod exact {
    use std::collections::BTreeSet;
    use std::fmt;
    use std::marker::PhantomData;
    use std::sync::Arc;

    use oxnet::Ipv6Net;
    use serde::de::{
        DeserializeOwned, Deserializer, Error, SeqAccess, Visitor,
    };
    use serde::Deserialize;

    use ddm_proto::outgoing::{Names, OutPath, OutUnderlay, OutUpdate};
    use ddm_proto::wire::{v2, v3};

    use super::SHARED;
    use crate::policy::MAX_PATH_LEN_BOUND;

    /// What differs between the versions' push bodies.
    pub(super) trait Wire {
        /// A destination as written.
        type Destination: DeserializeOwned;
        /// The tunnel half as written.
        type Tunnel: DeserializeOwned;
        /// The destination in v3.
        fn destination(d: Self::Destination) -> Result<Ipv6Net, String>;
        /// The tunnel half in v3.
        fn tunnel(t: Self::Tunnel) -> Result<v3::TunnelUpdate, String>;
    }

    /// Version 3's body.
    pub(super) enum V3 {}

    /// Version 2's body.
    pub(super) enum V2 {}

    impl Wire for V3 {
        type Destination = Ipv6Net;
        type Tunnel = v3::TunnelUpdate;
        fn destination(d: Ipv6Net) -> Result<Ipv6Net, String> {
            Ok(d)
        }
        fn tunnel(t: v3::TunnelUpdate) -> Result<v3::TunnelUpdate, String> {
            Ok(t)
        }
    }

    impl Wire for V2 {
        type Destination = v2::Ipv6Prefix;
        type Tunnel = v2::TunnelUpdate;
        fn destination(d: v2::Ipv6Prefix) -> Result<Ipv6Net, String> {
            d.try_into().map_err(|e: ddm_proto::wire::WireError| e.to_string())
        }
        fn tunnel(t: v2::TunnelUpdate) -> Result<v3::TunnelUpdate, String> {
            t.try_into().map_err(|e: ddm_proto::wire::WireError| e.to_string())
        }
    }

    /// A path vector as written in either version.
    #[derive(Deserialize)]
    #[serde(bound = "")]
    struct WirePath<W: Wire> {
        destination: W::Destination,
        path: SharedPath,
    }

    /// A path's hostnames, read into the body's shared names.
    struct SharedPath(Names);

    impl<'de> Deserialize<'de> for SharedPath {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Hostnames;
            impl<'de> Visitor<'de> for Hostnames {
                type Value = SharedPath;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a sequence of hostnames")
                }
                fn visit_seq<A: SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<SharedPath, A::Error> {
                    // `path` is empty: the last path took it, and `read`
                    // empties the table after a failed body. Names past
                    // one more than the longest path the policy may take
                    // are read and dropped: the path is refused as too
                    // long all the same, and holds no more.
                    while let Some(Hostname(n)) = seq.next_element()? {
                        SHARED.with(|s| {
                            let path = &mut s.borrow_mut().path;
                            if path.len() <= MAX_PATH_LEN_BOUND {
                                path.push(n);
                            }
                        });
                    }
                    Ok(SharedPath(SHARED.with(|s| s.borrow_mut().take_path())))
                }
            }
            d.deserialize_seq(Hostnames)
        }
    }

    /// One hostname, read into the body's shared names.
    struct Hostname(Arc<str>);

    impl<'de> Deserialize<'de> for Hostname {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Name;
            impl Visitor<'_> for Name {
                type Value = Hostname;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a hostname")
                }
                fn visit_str<E: Error>(self, n: &str) -> Result<Hostname, E> {
                    Ok(Hostname(SHARED.with(|s| s.borrow_mut().name(n))))
                }
            }
            d.deserialize_str(Name)
        }
    }

    /// The update as read.
    #[derive(Deserialize)]
    #[serde(bound = "")]
    pub(super) struct Update<W: Wire> {
        #[serde(default)]
        underlay: Option<Underlay<W>>,
        #[serde(default)]
        tunnel: Option<W::Tunnel>,
    }

    /// The underlay half as read.
    #[derive(Deserialize)]
    #[serde(bound = "")]
    struct Underlay<W: Wire> {
        #[serde(default, deserialize_with = "paths::<_, W>")]
        announce: BTreeSet<OutPath>,
        #[serde(default, deserialize_with = "paths::<_, W>")]
        withdraw: BTreeSet<OutPath>,
        #[serde(skip)]
        wire: PhantomData<W>,
    }

    impl<W: Wire> TryFrom<Update<W>> for OutUpdate {
        type Error = String;
        fn try_from(u: Update<W>) -> Result<OutUpdate, String> {
            Ok(OutUpdate {
                underlay: u.underlay.map(|u| OutUnderlay {
                    announce: u.announce,
                    withdraw: u.withdraw,
                    held: Default::default(),
                }),
                tunnel: u.tunnel.map(W::tunnel).transpose()?,
            })
        }
    }

    /// A set of path vectors, each converted to v3 as it is read.
    fn paths<'de, D: Deserializer<'de>, W: Wire>(
        d: D,
    ) -> Result<BTreeSet<OutPath>, D::Error> {
        struct Paths<W>(PhantomData<W>);
        impl<'de, W: Wire> Visitor<'de> for Paths<W> {
            type Value = BTreeSet<OutPath>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of path vectors")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut read = Vec::new();
                while let Some(p) = seq.next_element::<WirePath<W>>()? {
                    let d = W::destination(p.destination)
                        .map_err(A::Error::custom)?;
                    read.push(OutPath::new(d, p.path.0, None));
                }
                // Built from the whole list (sorted, then packed into full
                // nodes), not inserted one by one: a peer writes its
                // paths in order, and ordered inserts leave every B-tree
                // node a little over half full.
                Ok(read.into_iter().collect())
            }
        }
        d.deserialize_seq(Paths::<W>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past its bound the table shares no new name, yet every name read
    /// is right; nothing stays behind once a body is read.
    #[test]
    fn the_name_table_is_bounded_and_emptied() {
        let mut s = Shared::default();
        for i in 0..SHARED_NAMES {
            s.name(&format!("h{i}"));
        }
        let again = s.name("h7");
        assert!(Arc::ptr_eq(&again, s.names.get("h7").unwrap()));
        assert_eq!(&*s.name("past-the-bound"), "past-the-bound");
        assert_eq!(s.names.len(), SHARED_NAMES);

        let body = r#"{"underlay":{"announce":[
            {"destination":"fd00:1::/64","path":["a","b"]}]}}"#;
        let got = decode_update(Version::V3, Bytes::from(body)).unwrap();
        assert_eq!(got.len(), 1);
        assert!(SHARED.with(|s| {
            let s = s.borrow();
            s.names.is_empty() && s.last.is_none() && s.path.is_empty()
        }));
        let bad = r#"{"underlay":{"announce":[
            {"destination":"fd00:1::/64","path":["a","b",7]}]}}"#;
        assert!(decode_update(Version::V3, Bytes::from(bad)).is_err());
        assert!(SHARED.with(|s| s.borrow().path.is_empty()));
    }

    /// A path of a million names keeps one past the longest the policy
    /// may take, so it is still refused as too long; the next path is
    /// read whole.
    #[test]
    fn a_path_past_the_bound_keeps_one_name_more() {
        use crate::policy::MAX_PATH_LEN_BOUND;
        let names = vec!["\"a\""; 1_000_000].join(",");
        let body = format!(
            r#"{{"underlay":{{"announce":[
            {{"destination":"fd00:1::/64","path":[{names}]}},
            {{"destination":"fd00:2::/64","path":["a","b"]}}]}}}}"#
        );
        let got = decode_update(Version::V3, Bytes::from(body)).unwrap();
        let lens: Vec<usize> = got
            .underlay
            .unwrap()
            .announce
            .iter()
            .map(|p| p.hostnames().len())
            .collect();
        assert_eq!(lens, vec![MAX_PATH_LEN_BOUND + 1, 2]);
    }
}
