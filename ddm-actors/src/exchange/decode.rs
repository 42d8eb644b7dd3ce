//! Decoding a peer's push body into the compact update the router imports,
//! and a pull answer into the compact [`OutPull`] alike.
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
use ddm_proto::outgoing::{Names, OutPull, OutUpdate};
use ddm_proto::Version;

use crate::policy::MAX_PATH_LEN_BOUND;

/// A push body in `version`, as the router's compact update (a v2
/// destination is converted to v3 as it is read), each path read up to one
/// name past `max_path_len`, the longest the policy takes; with how many
/// items were dropped as malformed ([`Shared::malformed`]).
pub(crate) fn decode_update(
    version: Version,
    body: Bytes,
    max_path_len: usize,
) -> Result<(OutUpdate, usize), String> {
    match version {
        Version::V3 => read::<exact::Update<exact::V3>, _>(&body, max_path_len)
            .map_err(|e| format!("invalid v3 update: {e}")),
        Version::V2 => read::<exact::Update<exact::V2>, _>(&body, max_path_len)
            .map_err(|e| format!("invalid v2 update: {e}")),
    }
}

/// A pull answer's body in `version`, in the compact form a push takes
/// (hostnames shared, each path read up to one name past `max_path_len`,
/// the longest the policy takes): read into the wire types instead, a
/// name cost a `String` of its own, and an answer of short names (256 MiB
/// of `"a",`) grew to gigabytes before the policy saw it. With how many
/// items were dropped as malformed, as [`decode_update`].
pub(crate) fn decode_pull_answer(
    version: Version,
    body: &[u8],
    max_path_len: usize,
) -> Result<(OutPull, usize), String> {
    match version {
        Version::V3 => read::<exact::Pull<exact::V3>, _>(body, max_path_len),
        Version::V2 => read::<exact::Pull<exact::V2>, _>(body, max_path_len),
    }
}

/// Read `body` as `T`, then convert it, with the name table of this
/// thread emptied before and after; with how many items were dropped as
/// malformed.
fn read<T, U>(body: &[u8], max_path_len: usize) -> Result<(U, usize), String>
where
    T: serde::de::DeserializeOwned,
    U: From<T>,
{
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.max_path_len = max_path_len.min(MAX_PATH_LEN_BOUND);
    });
    // The body's UTF-8 is checked once, whole, rather than string by
    // string as `from_slice` checks it (a call per destination and per
    // hostname, 7-8 ms of a receiver's 100,000-prefix withdrawal); a body
    // that is not UTF-8 is read as bytes, for `from_slice`'s own error.
    let read = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str::<T>(text),
        Err(_) => serde_json::from_slice::<T>(body),
    };
    let read = read.map(U::from).map_err(|e| e.to_string());
    // The names read are the update's now; drop the body's table.
    let malformed = SHARED.with(|s| {
        let mut s = s.borrow_mut();
        let malformed = s.malformed;
        s.clear();
        malformed
    });
    read.map(|r| (r, malformed))
}

/// Count one item of the body being read as malformed, and drop it.
fn malformed<T>(_why: impl std::fmt::Display) -> Option<T> {
    SHARED.with(|s| s.borrow_mut().malformed += 1);
    None
}

thread_local! {
    /// The hostnames and the last path of the body being read on this
    /// thread. Reading a body is synchronous (`serde_json::from_str`, or
    /// `from_slice` for one that is not UTF-8; no await), so one body at a
    /// time uses it; [`read`] empties it before and after.
    static SHARED: RefCell<Shared> = RefCell::default();
}

/// Most distinct hostnames one body may name; a body with more is
/// refused. No fabric has that many routers. Past a bound that only
/// stopped sharing, a hostile body could make each further name an
/// allocation of its own: a name of two letters is 5 bytes of text
/// (`"zz",`) and about 50 bytes decoded (its allocation and its pointer
/// in the path), so a 64 MiB push of such paths after 65,536 names that
/// fill the table would decode to several hundred MiB.
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
    /// The longest path the policy takes: names past one more are read
    /// and dropped.
    max_path_len: usize,
    /// Items of the body dropped as malformed: a v2 prefix longer than its
    /// family's addresses (`len` is any byte in v2, and an original
    /// transit passes on what it took). One such item failed the whole
    /// body before: an original transit holding one failed every pull of
    /// it, and was expired and pulled again, for good.
    malformed: usize,
}

impl Shared {
    fn clear(&mut self) {
        *self = Shared::default();
    }

    /// The shared copy of hostname `n`; an error past [`SHARED_NAMES`]
    /// distinct names.
    fn name(&mut self, n: &str) -> Result<Arc<str>, String> {
        if let Some(a) = self.names.get(n) {
            return Ok(Arc::clone(a));
        }
        if self.names.len() >= SHARED_NAMES {
            return Err(format!(
                "more than {SHARED_NAMES} distinct hostnames in one body"
            ));
        }
        let a: Arc<str> = Arc::from(n);
        self.names.insert(Arc::clone(&a));
        Ok(a)
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
    use std::net::Ipv6Addr;
    use std::sync::Arc;

    use ddm_types::text::{self, read_str};
    use oxnet::Ipv6Net;
    use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
    use serde::Deserialize;

    use ddm_proto::outgoing::{
        Names, OutPath, OutPull, OutUnderlay, OutUpdate,
    };
    use ddm_proto::wire::{v2, v3};

    use super::SHARED;

    /// What differs between the versions' push and pull bodies.
    pub(super) trait Wire {
        /// A destination as written.
        type Destination: DeserializeOwned;
        /// The tunnel half as written.
        type Tunnel: DeserializeOwned;
        /// A tunnel endpoint as written.
        type Origin: DeserializeOwned + Ord;
        /// The destination in v3; `None` if malformed (counted).
        fn destination(d: Self::Destination) -> Option<Ipv6Net>;
        /// The tunnel half in v3, malformed endpoints dropped.
        fn tunnel(t: Self::Tunnel) -> v3::TunnelUpdate;
        /// A tunnel endpoint in v3; `None` if malformed (counted).
        fn origin(o: Self::Origin) -> Option<v3::TunnelOrigin>;
    }

    /// Version 3's body.
    pub(super) enum V3 {}

    /// Version 2's body.
    pub(super) enum V2 {}

    impl Wire for V3 {
        type Destination = text::NetText;
        type Tunnel = v3::TunnelUpdate;
        type Origin = v3::TunnelOrigin;
        fn destination(d: text::NetText) -> Option<Ipv6Net> {
            Some(d.0)
        }
        fn tunnel(t: v3::TunnelUpdate) -> v3::TunnelUpdate {
            t
        }
        fn origin(o: v3::TunnelOrigin) -> Option<v3::TunnelOrigin> {
            Some(o)
        }
    }

    impl Wire for V2 {
        type Destination = Ipv6Prefix;
        type Tunnel = v2::TunnelUpdate;
        type Origin = v2::TunnelOrigin;
        fn destination(d: Ipv6Prefix) -> Option<Ipv6Net> {
            let d = v2::Ipv6Prefix { addr: d.addr.0, len: d.len };
            d.try_into().map_or_else(super::malformed, Some)
        }
        fn tunnel(t: v2::TunnelUpdate) -> v3::TunnelUpdate {
            let set = |s: BTreeSet<v2::TunnelOrigin>| {
                s.into_iter().filter_map(Self::origin).collect()
            };
            v3::TunnelUpdate {
                announce: set(t.announce),
                withdraw: set(t.withdraw),
            }
        }
        fn origin(o: v2::TunnelOrigin) -> Option<v3::TunnelOrigin> {
            o.try_into().map_or_else(super::malformed, Some)
        }
    }

    /// A v2 destination as [`v2::Ipv6Prefix`] reads it (its name too: the
    /// derived errors a peer is answered name the type), its address
    /// parsed by [`text::parse_addr`]. A v3 one is read as
    /// [`text::NetText`].
    #[derive(Deserialize)]
    pub(super) struct Ipv6Prefix {
        addr: Addr,
        len: u8,
    }

    /// An address read as `Ipv6Addr`'s own `Deserialize` reads it (the
    /// same strings taken, the same error text), faster.
    struct Addr(Ipv6Addr);

    impl<'de> Deserialize<'de> for Addr {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            read_str(d, "IPv6 address", |v| text::parse_addr(v).map(Addr))
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
                    // one more than the longest path the policy takes
                    // are read and dropped: the path is refused as too
                    // long all the same, and holds no more (a name of
                    // three bytes of text is 16 bytes read).
                    while let Some(Hostname(n)) = seq.next_element()? {
                        SHARED.with(|s| {
                            let s = &mut *s.borrow_mut();
                            if s.path.len() <= s.max_path_len {
                                s.path.push(n);
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
            read_str(d, "a hostname", |n| {
                SHARED.with(|s| s.borrow_mut().name(n)).map(Hostname)
            })
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

    impl<W: Wire> From<Update<W>> for OutUpdate {
        fn from(u: Update<W>) -> OutUpdate {
            OutUpdate {
                underlay: u.underlay.map(|u| OutUnderlay {
                    announce: u.announce,
                    withdraw: u.withdraw,
                    held: Default::default(),
                }),
                tunnel: u.tunnel.map(W::tunnel),
            }
        }
    }

    /// A pull answer as read.
    #[derive(Deserialize)]
    #[serde(bound = "")]
    pub(super) struct Pull<W: Wire> {
        #[serde(default)]
        underlay: Option<PathSet<W>>,
        #[serde(default)]
        tunnel: Option<BTreeSet<W::Origin>>,
    }

    /// A set of path vectors read as [`paths`] reads them (a type of its
    /// own, so that `null` is read as no set).
    struct PathSet<W>(BTreeSet<OutPath>, PhantomData<W>);

    impl<'de, W: Wire> Deserialize<'de> for PathSet<W> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            paths::<D, W>(d).map(|set| PathSet(set, PhantomData))
        }
    }

    impl<W: Wire> From<Pull<W>> for OutPull {
        fn from(p: Pull<W>) -> OutPull {
            let tunnel = p
                .tunnel
                .map(|set| set.into_iter().filter_map(W::origin).collect());
            OutPull { underlay: p.underlay.map(|s| s.0), tunnel }
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
                    if let Some(d) = W::destination(p.destination) {
                        read.push(OutPath::new(d, p.path.0, None));
                    }
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

    /// Our decoder's error for `body`, and the error reading it into the
    /// version's wire type gives (both as the peer is answered).
    fn both_errors(version: Version, body: &[u8]) -> (String, String) {
        use ddm_proto::wire::{v2, v3};
        let ours = decode_update(
            version,
            Bytes::copy_from_slice(body),
            MAX_PATH_LEN_BOUND,
        )
        .map(|_| ())
        .unwrap_err();
        let theirs = match version {
            Version::V2 => serde_json::from_slice::<v2::Update>(body)
                .map(|_| ())
                .map_err(|e| format!("invalid v2 update: {e}")),
            Version::V3 => serde_json::from_slice::<v3::Update>(body)
                .map(|_| ())
                .map_err(|e| format!("invalid v3 update: {e}")),
        }
        .unwrap_err();
        (ours, theirs)
    }

    /// A malformed destination is refused with the text reading into the
    /// wire types gives (a v3 one's position aside: see
    /// `ddm_types::text::NetText`), which
    /// the peer is answered.
    #[test]
    fn malformed_destinations_are_refused_as_the_wire_types_refuse_them() {
        let item = |d: &str| {
            format!(
                r#"{{"underlay":{{"announce":[{{"destination":{d},"path":["a"]}}]}}}}"#
            )
        };
        let v2 = [
            r#""fd00::/64""#,
            r#"["fd00::"]"#,
            r#"{"addr":"fd00::g","len":64}"#,
            r#"{"addr":7,"len":64}"#,
            r#"{"addr":"fd00::"}"#,
            r#"{"addr":"fd00::","len":300}"#,
            r#"{"addr":"::ffff:1.2.3","len":64}"#,
        ];
        let v3 = [
            r#""fd00::/129""#,
            r#""fd00::g/64""#,
            r#""fd00::""#,
            r#"7"#,
            r#"{"addr":"fd00::","len":64}"#,
        ];
        let cases = v2.map(|d| (Version::V2, d)).into_iter();
        for (version, d) in cases.chain(v3.map(|d| (Version::V3, d))) {
            let (ours, theirs) = both_errors(version, item(d).as_bytes());
            match version {
                Version::V2 => assert_eq!(ours, theirs, "{d}"),
                Version::V3 => {
                    let position = ddm_types::text::without_position;
                    assert_eq!(position(&ours), position(&theirs), "{d}")
                }
            }
        }
    }

    /// A body that is not UTF-8 is refused with the error the wire types
    /// give, position and all, wherever the stray byte is: the body is
    /// checked whole first, then read as bytes when it fails.
    #[test]
    fn bodies_that_are_not_utf8_are_refused_as_the_wire_types_refuse_them() {
        let dest = |v: Version| match v {
            Version::V2 => r#"{"addr":"fd00::","len":64}"#,
            Version::V3 => r#""fd00::/64""#,
        };
        for version in [Version::V2, Version::V3] {
            let d = dest(version);
            let bodies: [Vec<u8>; 4] = [
                [
                    format!(r#"{{"underlay":{{"announce":[{{"destination":{d},"path":["a"#)
                        .as_bytes(),
                    b"\xff\"]}]}}",
                ]
                .concat(),
                b"{\"underlay\":{\"withdraw\":[\xc3]}}".to_vec(),
                b"{\"tunnel\":\xe2\x82}".to_vec(),
                b"{\"underlay\":null,\"tunnel\":null}\xff".to_vec(),
            ];
            for body in bodies {
                let (ours, theirs) = both_errors(version, &body);
                assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(&body));
            }
        }
    }

    /// At its bound the table still shares the names it holds and refuses
    /// a new one; nothing stays behind once a body is read.
    #[test]
    fn the_name_table_is_bounded_and_emptied() {
        let mut s = Shared::default();
        for i in 0..SHARED_NAMES {
            s.name(&format!("h{i}")).unwrap();
        }
        let again = s.name("h7").unwrap();
        assert!(Arc::ptr_eq(&again, s.names.get("h7").unwrap()));
        assert!(s.name("past-the-bound").is_err());
        assert_eq!(s.names.len(), SHARED_NAMES);

        let body = r#"{"underlay":{"announce":[
            {"destination":"fd00:1::/64","path":["a","b"]}]}}"#;
        let got =
            decode_update(Version::V3, Bytes::from(body), MAX_PATH_LEN_BOUND)
                .unwrap()
                .0;
        assert_eq!(got.len(), 1);
        assert!(SHARED.with(|s| {
            let s = s.borrow();
            s.names.is_empty() && s.last.is_none() && s.path.is_empty()
        }));
        let bad = r#"{"underlay":{"announce":[
            {"destination":"fd00:1::/64","path":["a","b",7]}]}}"#;
        assert!(decode_update(
            Version::V3,
            Bytes::from(bad),
            MAX_PATH_LEN_BOUND
        )
        .is_err());
        assert!(SHARED.with(|s| s.borrow().path.is_empty()));
    }

    /// A body naming more distinct hostnames than the table holds is
    /// refused, as a push and as a pull answer: past the table, each name
    /// would be an allocation of its own however often it repeats.
    #[test]
    fn a_body_cannot_name_more_hostnames_than_the_table_holds() {
        let fill: Vec<String> =
            (0..SHARED_NAMES).map(|i| format!("\"h{i}\"")).collect();
        let repeated = vec!["\"zz\""; 32].join(",");
        let paths = format!(
            r#"{{"destination":"fd00:1::/64","path":[{}]}},
               {{"destination":"fd00:2::/64","path":[{repeated}]}}"#,
            fill.join(",")
        );
        let push = format!(r#"{{"underlay":{{"announce":[{paths}]}}}}"#);
        let err =
            decode_update(Version::V3, Bytes::from(push), MAX_PATH_LEN_BOUND)
                .unwrap_err();
        assert!(err.contains("distinct hostnames"), "{err}");
        let pull = format!(r#"{{"underlay":[{paths}]}}"#);
        let err = decode_pull_answer(
            Version::V3,
            pull.as_bytes(),
            MAX_PATH_LEN_BOUND,
        )
        .unwrap_err();
        assert!(err.contains("distinct hostnames"), "{err}");
        // The table filled, then only names it holds: taken.
        let within = format!(
            r#"{{"underlay":{{"announce":[
               {{"destination":"fd00:1::/64","path":[{}]}},
               {{"destination":"fd00:2::/64","path":["h1","h2"]}}]}}}}"#,
            fill.join(",")
        );
        decode_update(Version::V3, Bytes::from(within), MAX_PATH_LEN_BOUND)
            .unwrap();
    }

    /// A pull answer decodes as serde's derive reads the wire types, in
    /// either version, `null` and missing halves included; its hostnames
    /// are shared, and its paths bounded as a push's.
    #[test]
    fn pull_answers_decode_as_the_wire_types_read_them() {
        use ddm_proto::wire::{v2, v3};
        let v3_bodies = [
            r#"{"underlay":[
                {"destination":"fd00:1::/64","path":["s1","t1"]},
                {"destination":"fd00:3::/64","path":["s3","t1"]}],
              "tunnel":[{"overlay_prefix":"10.0.0.0/8",
                "boundary_addr":"fd00:99::1","vni":7,"metric":0}]}"#,
            "{}",
            r#"{"underlay":null,"tunnel":null}"#,
        ];
        for body in v3_bodies {
            let want: v3::PullResponse = serde_json::from_str(body).unwrap();
            let got = decode_pull_answer(
                Version::V3,
                body.as_bytes(),
                MAX_PATH_LEN_BOUND,
            );
            assert_eq!(got.unwrap().0.to_wire(), want, "{body}");
        }
        let v2_body = r#"{"underlay":[{"destination":
            {"addr":"fd00:1::","len":64},"path":["s1","t1"]}],
            "tunnel":[{"overlay_prefix":{"V4":{"addr":"10.0.0.0","len":8}},
            "boundary_addr":"fd00:99::1","vni":7}]}"#;
        let wire: v2::PullResponse = serde_json::from_str(v2_body).unwrap();
        let want = v3::PullResponse::try_from(wire).unwrap();
        let (got, malformed) = decode_pull_answer(
            Version::V2,
            v2_body.as_bytes(),
            MAX_PATH_LEN_BOUND,
        )
        .unwrap();
        assert_eq!((got.to_wire(), malformed), (want, 0));
        // An item that does not convert is dropped and counted; the rest
        // of the answer is taken.
        let with_bad = r#"{"underlay":[
            {"destination":{"addr":"fd00:1::","len":64},"path":["s1"]},
            {"destination":{"addr":"fd00:2::","len":255},"path":["s1"]}],
            "tunnel":[{"overlay_prefix":{"V6":{"addr":"fd00::","len":130}},
            "boundary_addr":"fd00:99::1","vni":7}]}"#;
        let (got, malformed) = decode_pull_answer(
            Version::V2,
            with_bad.as_bytes(),
            MAX_PATH_LEN_BOUND,
        )
        .unwrap();
        assert_eq!(malformed, 2);
        assert_eq!(got.underlay.unwrap().len(), 1);
        assert_eq!(got.tunnel.unwrap().len(), 0);
        assert_eq!(SHARED.with(|s| s.borrow().malformed), 0, "emptied");

        let got = decode_pull_answer(
            Version::V3,
            v3_bodies[0].as_bytes(),
            MAX_PATH_LEN_BOUND,
        );
        let paths: Vec<_> =
            got.unwrap().0.underlay.unwrap().into_iter().collect();
        let (a, b) = (paths[0].hostnames(), paths[1].hostnames());
        assert!(Arc::ptr_eq(&a[1], &b[1]), "t1 is one name");

        let names = vec!["\"a\""; 100_000].join(",");
        let long = format!(
            r#"{{"underlay":[{{"destination":"fd00:1::/64","path":[{names}]}}]}}"#
        );
        let got = decode_pull_answer(
            Version::V3,
            long.as_bytes(),
            MAX_PATH_LEN_BOUND,
        )
        .unwrap()
        .0;
        let path = got.underlay.unwrap().pop_first().unwrap();
        assert_eq!(path.hostnames().len(), MAX_PATH_LEN_BOUND + 1);
        for bad in [r#"{"underlay":{}}"#, r#"{"underlay":[{"path":[]}]}"#] {
            assert!(decode_pull_answer(
                Version::V3,
                bad.as_bytes(),
                MAX_PATH_LEN_BOUND
            )
            .is_err());
        }
    }

    /// A path of a million names keeps one past the longest the policy
    /// takes (its `--max-path-len`, at most [`MAX_PATH_LEN_BOUND`]), so it
    /// is still refused as too long; the next path is read whole.
    #[test]
    fn a_path_past_the_bound_keeps_one_name_more() {
        let names = vec!["\"a\""; 1_000_000].join(",");
        let body = format!(
            r#"{{"underlay":{{"announce":[
            {{"destination":"fd00:1::/64","path":[{names}]}},
            {{"destination":"fd00:2::/64","path":["a","b"]}}]}}}}"#
        );
        for (max, kept) in [
            (32, 33),
            (MAX_PATH_LEN_BOUND, MAX_PATH_LEN_BOUND + 1),
            (usize::MAX, MAX_PATH_LEN_BOUND + 1),
        ] {
            let body = Bytes::from(body.clone());
            let got = decode_update(Version::V3, body, max).unwrap().0;
            let lens: Vec<usize> = got
                .underlay
                .unwrap()
                .announce
                .iter()
                .map(|p| p.hostnames().len())
                .collect();
            assert_eq!(lens, vec![kept, 2], "max {max}");
        }
    }

    /// A destination is taken, or refused with the same error, as the
    /// wire type's own decoding (`oxnet`'s) takes or refuses it (in a
    /// compact body: see `ddm_types::text::NetText` for the position).
    #[test]
    fn destinations_are_read_as_the_wire_type_reads_them() {
        for d in [
            r#""fd00:1::/64""#,
            r#""FD00:0:0:1:0:0:0:0/64""#,
            r#""::ffff:10.0.0.1/128""#,
            r#""fd00:1::/129""#,
            r#""fd00:1::""#,
            r#""fd00:1::/6x""#,
            r#""fd00:\u0031::/64""#,
            "7",
            "null",
        ] {
            let body = format!(
                r#"{{"underlay":{{"announce":[{{"destination":{d},"path":["a"]}}]}}}}"#
            );
            let ours = decode_update(
                Version::V3,
                Bytes::from(body.clone()),
                MAX_PATH_LEN_BOUND,
            );
            let theirs =
                serde_json::from_str::<ddm_proto::wire::v3::Update>(&body);
            match (ours, theirs) {
                (Ok((o, _)), Ok(t)) => assert_eq!(o.to_wire(), t, "{d}"),
                (Err(o), Err(t)) => {
                    assert_eq!(o, format!("invalid v3 update: {t}"), "{d}")
                }
                (o, t) => panic!("{d}: ours {o:?}, theirs {t:?}"),
            }
        }
    }
}
