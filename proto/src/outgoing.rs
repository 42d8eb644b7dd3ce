//! What the router pushes to a peer, kept compact until it is written;
//! also the form a peer's push is read into (`ddm-actors`' exchange
//! decoder), so that it waits for the router just as compactly.
//!
//! A transit router that imports 100,000 paths re-announces 100,000 paths to
//! every other peer; as wire path vectors that is two allocations per path
//! (the list of names and each name), held until the exchange actor has
//! sent them. [`OutPath`] instead shares the RIB's interned path and names
//! and appends our own hostname, if it is to be appended, only when it is
//! written. [`OutUpdate`] serialises to exactly the JSON of the
//! [`v3::Update`] it stands for ([`OutUpdate::to_wire`]), and
//! [`V2Update`] to exactly that of the converted [`v2::Update`]: no wire
//! path vector is built on the way out.
//!
//! The exchange actor bounds each push by the peer's body limit, so every
//! item's written size is measured here too: exactly ([`OutPath::json_len`],
//! [`tunnel_json_len`]: the item serialised into a byte counter, nothing
//! stored), or bounded from the hostnames' lengths alone
//! ([`OutPath::json_len_bound`]), which costs no formatting at all.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{btree_map, BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use ddm_types::text;
use oxnet::{IpNet, Ipv6Net};
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

use crate::version::Version;
use crate::wire::{v2, v3};

/// A writer that only counts what it is given.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How many bytes `value` takes as compact JSON (what `serde_json` writes),
/// measured without storing them.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut count = ByteCount(0);
    // Counting cannot fail; a value that refuses to serialise fails the
    // push itself when it is written, so what was counted is good enough.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// How many bytes a tunnel origin takes in a push body of `version`.
pub fn tunnel_json_len(t: &v3::TunnelOrigin, version: Version) -> usize {
    match version {
        Version::V3 => json_len(t),
        Version::V2 => json_len(&v2::TunnelOrigin::from(t)),
    }
}

/// The most bytes a path vector's fixed part takes in either version: v2's
/// `{"destination":{"addr":"…","len":…},"path":[…]}` with the longest
/// address (39 bytes) and length (3) is 86 bytes; v3's
/// `{"destination":"…/…","path":[…]}` is at most 71.
const PATH_FIXED_MAX: usize = 86;

/// A path's hostnames, originator first, shared with the RIB (or, in an
/// update read from a peer, between that update's paths); a thin pointer,
/// to keep the RIB's table entries small.
pub type Names = Arc<Box<[Arc<str>]>>;

/// One path vector to push (or read from a peer's push): a destination, a
/// shared path and optionally one more hostname (ours, when re-announcing)
/// after it.
///
/// Ordered, and equal, exactly as the [`v3::PathVector`] it stands for.
#[derive(Debug, Clone)]
pub struct OutPath {
    /// The destination prefix.
    destination: Ipv6Net,
    /// The path as stored.
    path: Names,
    /// Appended to `path` when written.
    suffix: Option<Suffix>,
}

/// The hostname a re-announcing router appends to a path: its own, one
/// shared copy behind a thin pointer, so that an [`OutPath`] (of which a
/// router may hold hundreds of thousands in its pending and in-flight
/// updates) takes 40 bytes rather than 48.
pub type Suffix = Arc<Arc<str>>;

const _: () = assert!(std::mem::size_of::<OutPath>() <= 40);

impl OutPath {
    /// `destination` reached along `path`, then `suffix` if any.
    pub fn new(
        destination: Ipv6Net,
        path: Names,
        suffix: Option<Suffix>,
    ) -> Self {
        OutPath { destination, path, suffix }
    }

    /// The lowest path to `destination` in path order (no hostnames), a
    /// bound to search a set of paths from: paths sort by destination
    /// first.
    fn lowest_to(destination: Ipv6Net) -> OutPath {
        static NO_NAMES: LazyLock<Names> = LazyLock::new(Names::default);
        OutPath::new(destination, NO_NAMES.clone(), None)
    }

    /// Whether `other` shares this path's storage (the same stored
    /// hostnames and suffix): then their hostnames are equal, known
    /// without comparing them. False says nothing. The exchange's decoder
    /// (in `ddm-actors`) makes the equal paths of one body in a row share
    /// storage: the 100,000 prefixes of one origin among them.
    pub fn shares_path(&self, other: &OutPath) -> bool {
        Arc::ptr_eq(&self.path, &other.path)
            && match (&self.suffix, &other.suffix) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// The destination prefix.
    pub fn destination(&self) -> Ipv6Net {
        self.destination
    }

    /// The same path (sharing its storage) to `destination`.
    pub fn to(&self, destination: Ipv6Net) -> OutPath {
        OutPath { destination, ..self.clone() }
    }

    /// The hostnames as written, originator first.
    pub fn names(&self) -> impl Iterator<Item = &str> + Clone + '_ {
        self.path
            .iter()
            .map(|n| &**n)
            .chain(self.suffix.as_deref().map(|s| &**s))
    }

    /// The hostnames as written, as one slice: the stored path itself when
    /// nothing is appended (every path read from a peer), else a copy.
    pub fn hostnames(&self) -> Cow<'_, [Arc<str>]> {
        match &self.suffix {
            None => Cow::Borrowed(&self.path[..]),
            Some(s) => {
                Cow::Owned(self.path.iter().chain([&**s]).cloned().collect())
            }
        }
    }

    /// How many hostnames are written.
    pub fn len(&self) -> usize {
        self.path.len() + usize::from(self.suffix.is_some())
    }

    /// True when no hostname is written (never pushed by the RIB).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many bytes this path vector takes in a push body of `version`,
    /// exactly.
    pub fn json_len(&self, version: Version) -> usize {
        match version {
            Version::V3 => json_len(self),
            Version::V2 => json_len(&V2Path(self)),
        }
    }

    /// At least [`OutPath::json_len`] in either version, computed from the
    /// hostnames' lengths alone: a name byte is written as at most six (a
    /// control character as `\u00XX`), plus its quotes and a comma.
    pub fn json_len_bound(&self) -> usize {
        PATH_FIXED_MAX
            + self
                .names()
                .map(|n| n.len().saturating_mul(6).saturating_add(3))
                .fold(0usize, usize::saturating_add)
    }

    /// The wire path vector this stands for.
    pub fn to_wire(&self) -> v3::PathVector {
        v3::PathVector {
            destination: self.destination,
            path: self.names().map(str::to_string).collect(),
        }
    }
}

impl From<&v3::PathVector> for OutPath {
    fn from(pv: &v3::PathVector) -> Self {
        let path: Names =
            Arc::new(pv.path.iter().map(|n| Arc::from(n.as_str())).collect());
        OutPath { destination: pv.destination, path, suffix: None }
    }
}

impl Ord for OutPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.destination
            .cmp(&other.destination)
            .then_with(|| self.names().cmp(other.names()))
    }
}

impl PartialOrd for OutPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for OutPath {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for OutPath {}

/// The hostnames of an [`OutPath`], written as a sequence of strings.
struct NamesOut<'a>(&'a OutPath);

impl Serialize for NamesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.names())
    }
}

/// A prefix written as the string its `Display` gives, straight into the
/// serializer's output: `oxnet`'s own `Serialize` formats it into a new
/// `String` first, an allocation and a copy per path written (100,000 of
/// them per 100,000-route push at every hop), and through `core::fmt`
/// (see [`ddm_types::text`]).
struct PrefixText<'a>(&'a Ipv6Net);

impl Serialize for PrefixText<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(text::net_text(self.0).as_str())
    }
}

impl Serialize for OutPath {
    /// As [`v3::PathVector`]: `{"destination": "…", "path": […]}`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("PathVector", 2)?;
        st.serialize_field("destination", &PrefixText(&self.destination))?;
        st.serialize_field("path", &NamesOut(self))?;
        st.end()
    }
}

/// An [`OutPath`] written as [`v2::PathVector`].
struct V2Path<'a>(&'a OutPath);

impl Serialize for V2Path<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("PathVector", 2)?;
        st.serialize_field("destination", &V2Prefix(&self.0.destination))?;
        st.serialize_field("path", &NamesOut(self.0))?;
        st.end()
    }
}

/// A destination written as [`v2::Ipv6Prefix`] (`{"addr": "…", "len":
/// …}`), its address as [`PrefixText`] writes a prefix's.
struct V2Prefix<'a>(&'a Ipv6Net);

impl Serialize for V2Prefix<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Ipv6Prefix", 2)?;
        let addr = text::addr_text(&self.0.addr());
        st.serialize_field("addr", addr.as_str())?;
        st.serialize_field("len", &self.0.width())?;
        st.end()
    }
}

/// The underlay half of an [`OutUpdate`].
///
/// As an update waiting to be sent (the RIB's pushes, the router's and the
/// session's pending ones), it also knows which of its announcements the
/// peer may hold already (`held`, never written): the rest of `announce`
/// the peer holds not, so a later withdrawal of one of them cancels it
/// instead of being sent ([`OutUnderlay::withdraw_path`]). Without that, a
/// transit that re-announced one path and then, before it was sent,
/// another instead sent the peer a withdrawal of a path it never had: in
/// the simulated fabric of 1,024 routers, every withdrawal received in
/// the cold start was one (about half of all path vectors written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutUnderlay {
    /// Paths we now offer.
    pub announce: BTreeSet<OutPath>,
    /// Paths we no longer offer.
    pub withdraw: BTreeSet<OutPath>,
    /// Of `announce`, those the peer may hold already: announced again
    /// after a withdrawal that is not sent yet, re-announced to a new
    /// session of a peer that may have kept them, or put back after a
    /// push that failed and may have been applied. Not part of the wire
    /// update.
    #[serde(skip)]
    pub held: BTreeSet<OutPath>,
}

impl OutUnderlay {
    /// How many items the half carries, announced and withdrawn.
    pub fn len(&self) -> usize {
        self.announce.len() + self.withdraw.len()
    }

    /// Announce `p` after this update. `held`: whether the peer may hold
    /// `p` already, if this update does not name it (if it does, the
    /// update knows: `p` withdrawn here is held, `p` announced here keeps
    /// its mark).
    pub fn announce_path(&mut self, p: OutPath, held: bool) {
        // `announce` and `withdraw` never share a path.
        if self.withdraw.remove(&p) {
            self.held.insert(p.clone());
            self.announce.insert(p);
        } else if held {
            if self.announce.insert(p.clone()) {
                self.held.insert(p);
            }
        } else {
            self.announce.insert(p);
        }
    }

    /// Withdraw `p` after this update: cancels an announcement of `p` the
    /// peer does not hold yet; otherwise `p` is withdrawn.
    pub fn withdraw_path(&mut self, p: OutPath) {
        if self.announce.remove(&p) && !self.held.remove(&p) {
            return;
        }
        self.withdraw.insert(p);
    }

    /// [`OutUnderlay::announce_path`] for each of `paths` (none of them
    /// held): while the update announces nothing yet, `paths` becomes its
    /// announcements whole, keeping the set's packed nodes, and those it
    /// withdrew are marked held.
    pub fn announce_paths(&mut self, paths: BTreeSet<OutPath>) {
        if !self.announce.is_empty() {
            for p in paths {
                self.announce_path(p, false);
            }
            return;
        }
        // `held` is a subset of `announce`: empty too.
        if !self.withdraw.is_empty() {
            self.held = paths
                .iter()
                .filter(|p| self.withdraw.remove(*p))
                .cloned()
                .collect();
        }
        self.announce = paths;
    }

    /// [`OutUnderlay::withdraw_path`] for each of `paths`: while the
    /// update withdraws nothing yet, `paths` becomes its withdrawals whole
    /// (packed), less the announcements it cancels.
    pub fn withdraw_paths(&mut self, mut paths: BTreeSet<OutPath>) {
        if !self.withdraw.is_empty() {
            for p in paths {
                self.withdraw_path(p);
            }
            return;
        }
        if !self.announce.is_empty() {
            // Kept unless it cancels an announcement the peer does not
            // hold.
            paths.retain(|p| !self.announce.remove(p) || self.held.remove(p));
        }
        self.withdraw = paths;
    }

    /// Whether the half announces or withdraws a path to `destination`.
    pub fn names_destination(&self, destination: Ipv6Net) -> bool {
        let from = OutPath::lowest_to(destination);
        [&self.announce, &self.withdraw].into_iter().any(|set| {
            set.range(&from..)
                .next()
                .is_some_and(|p| p.destination == destination)
        })
    }

    /// The destinations the half names: each half's in order, each once
    /// per half (a destination both announced and withdrawn comes twice).
    fn destinations(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let mut last = None;
        self.announce
            .iter()
            .chain(&self.withdraw)
            .map(|p| p.destination)
            .filter(move |d| last.replace(*d) != Some(*d))
    }

    /// The lowest and highest destination the half names, if any.
    fn destination_range(&self) -> Option<(Ipv6Net, Ipv6Net)> {
        let sets = [&self.announce, &self.withdraw];
        let first = sets.iter().filter_map(|s| s.first()).min()?;
        let last = sets.iter().filter_map(|s| s.last()).max()?;
        Some((first.destination, last.destination))
    }

    /// Every announcement of this update may be held by the peer (a push
    /// that failed may have been applied all the same).
    pub fn mark_held(&mut self) {
        self.held = self.announce.clone();
    }

    /// True when the half carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An update to push, or a peer's push as read: the compact form of a
/// [`v3::Update`], serialised exactly as it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutUpdate {
    /// Changes to underlay reachability.
    pub underlay: Option<OutUnderlay>,
    /// Changes to tunnel endpoint reachability.
    pub tunnel: Option<v3::TunnelUpdate>,
}

impl OutUpdate {
    /// True when the update carries no change at all (nothing to send).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many path vectors and tunnel origins the update carries,
    /// announced and withdrawn.
    pub fn len(&self) -> usize {
        self.underlay.as_ref().map_or(0, |u| u.len())
            + self.tunnel.as_ref().map_or(0, v3::TunnelUpdate::len)
    }

    /// Every path this update announces may be held by the peer already
    /// ([`OutUnderlay::mark_held`]).
    pub fn mark_held(&mut self) {
        if let Some(u) = &mut self.underlay {
            u.mark_held();
        }
    }

    /// Take out of this update the paths to every destination `other`
    /// names (announces or withdraws a path to) and the tunnel origins it
    /// names, as an update of their own, with their `held` marks. A
    /// session merges what a later push says of a destination still
    /// pending in an earlier batch into that batch, so that a path and its
    /// replacement go out together.
    pub fn take_named_by(&mut self, other: &OutUpdate) -> OutUpdate {
        let mut out = OutUpdate::default();
        if let (Some(u), Some(o)) = (&mut self.underlay, &other.underlay) {
            // Searched from the smaller side: a push of a few paths against
            // a batch of many looks up each of its destinations; a large
            // push against a small batch looks up each path's.
            let (announce, withdraw) = if o.len() < u.len() {
                let mut taken = (BTreeSet::new(), BTreeSet::new());
                // A destination named twice finds nothing the second time.
                for d in o.destinations() {
                    take_destination(&mut u.announce, d, &mut taken.0);
                    take_destination(&mut u.withdraw, d, &mut taken.1);
                }
                taken
            } else {
                // Most pushes name none of the batch's destinations: one
                // look at their range spares a search per path.
                let range = o.destination_range();
                take_if(&mut u.announce, &mut u.withdraw, |p| {
                    let d = p.destination;
                    range.is_some_and(|(a, z)| a <= d && d <= z)
                        && o.names_destination(d)
                })
            };
            if !announce.is_empty() || !withdraw.is_empty() {
                let held =
                    announce.iter().filter_map(|p| u.held.take(p)).collect();
                out.underlay = Some(OutUnderlay { announce, withdraw, held });
            }
        }
        if let (Some(t), Some(o)) = (&mut self.tunnel, &other.tunnel) {
            let (announce, withdraw) =
                take_if(&mut t.announce, &mut t.withdraw, |x| {
                    o.announce.contains(x) || o.withdraw.contains(x)
                });
            if !announce.is_empty() || !withdraw.is_empty() {
                out.tunnel = Some(v3::TunnelUpdate { announce, withdraw });
            }
        }
        out
    }

    /// The underlay half, created empty if absent.
    pub fn underlay_mut(&mut self) -> &mut OutUnderlay {
        self.underlay.get_or_insert_with(Default::default)
    }

    /// The tunnel half, created empty if absent.
    pub fn tunnel_mut(&mut self) -> &mut v3::TunnelUpdate {
        self.tunnel.get_or_insert_with(Default::default)
    }

    /// The wire update this stands for.
    pub fn to_wire(&self) -> v3::Update {
        let set =
            |s: &BTreeSet<OutPath>| s.iter().map(OutPath::to_wire).collect();
        v3::Update {
            underlay: self.underlay.as_ref().map(|u| v3::UnderlayUpdate {
                announce: set(&u.announce),
                withdraw: set(&u.withdraw),
            }),
            tunnel: self.tunnel.clone(),
        }
    }
}

impl From<&v3::Update> for OutUpdate {
    fn from(u: &v3::Update) -> Self {
        let set = |s: &BTreeSet<v3::PathVector>| {
            s.iter().map(OutPath::from).collect()
        };
        OutUpdate {
            underlay: u.underlay.as_ref().map(|u| OutUnderlay {
                announce: set(&u.announce),
                withdraw: set(&u.withdraw),
                held: BTreeSet::new(),
            }),
            tunnel: u.tunnel.clone(),
        }
    }
}

impl From<v3::Update> for OutUpdate {
    fn from(u: v3::Update) -> Self {
        OutUpdate::from(&u)
    }
}

/// A peer's pull answer as read: the compact form of a
/// [`v3::PullResponse`], its hostnames shared as in a push read
/// ([`OutUpdate`]). A missing half means the empty set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutPull {
    /// Every underlay path offered.
    pub underlay: Option<BTreeSet<OutPath>>,
    /// Every tunnel endpoint offered.
    pub tunnel: Option<BTreeSet<v3::TunnelOrigin>>,
}

impl OutPull {
    /// The same answer with every prefix's host bits cleared.
    /// A set already in canonical form (every peer of ours writes one) is
    /// kept as it is, not rebuilt: a whole table, at the start of every
    /// session.
    pub fn normalised(self) -> Self {
        use crate::wire::normalise_v6;
        OutPull {
            underlay: self.underlay.map(|set| {
                if set
                    .iter()
                    .all(|p| normalise_v6(p.destination) == p.destination)
                {
                    return set;
                }
                set.into_iter()
                    .map(|p| OutPath {
                        destination: normalise_v6(p.destination),
                        ..p
                    })
                    .collect()
            }),
            tunnel: self.tunnel.map(v3::normalise_tunnels),
        }
    }

    /// The wire answer this stands for.
    pub fn to_wire(&self) -> v3::PullResponse {
        v3::PullResponse {
            underlay: self
                .underlay
                .as_ref()
                .map(|s| s.iter().map(OutPath::to_wire).collect()),
            tunnel: self.tunnel.clone(),
        }
    }
}

impl From<&v3::PullResponse> for OutPull {
    fn from(r: &v3::PullResponse) -> Self {
        OutPull {
            underlay: r
                .underlay
                .as_ref()
                .map(|s| s.iter().map(OutPath::from).collect()),
            tunnel: r.tunnel.clone(),
        }
    }
}

impl From<v3::PullResponse> for OutPull {
    fn from(r: v3::PullResponse) -> Self {
        OutPull::from(&r)
    }
}

/// A set of paths written as a v2 sequence.
struct V2Paths<'a>(&'a BTreeSet<OutPath>);

impl Serialize for V2Paths<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(V2Path))
    }
}

/// A set of tunnel origins written as a v2 sequence.
struct V2Tunnels<'a>(&'a BTreeSet<v3::TunnelOrigin>);

impl Serialize for V2Tunnels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(v2::TunnelOrigin::from))
    }
}

/// An [`OutUpdate`] serialised exactly as the [`v2::Update`] converted
/// from its wire form. The order is the same: v3 prefixes order by
/// (address, length) like v2's `{addr, len}`.
pub struct V2Update<'a>(pub &'a OutUpdate);

impl Serialize for V2Update<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Underlay<'a> {
            announce: V2Paths<'a>,
            withdraw: V2Paths<'a>,
        }
        #[derive(Serialize)]
        struct Tunnel<'a> {
            announce: V2Tunnels<'a>,
            withdraw: V2Tunnels<'a>,
        }
        let mut st = s.serialize_struct("Update", 2)?;
        st.serialize_field(
            "underlay",
            &self.0.underlay.as_ref().map(|u| Underlay {
                announce: V2Paths(&u.announce),
                withdraw: V2Paths(&u.withdraw),
            }),
        )?;
        st.serialize_field(
            "tunnel",
            &self.0.tunnel.as_ref().map(|t| Tunnel {
                announce: V2Tunnels(&t.announce),
                withdraw: V2Tunnels(&t.withdraw),
            }),
        )?;
        st.end()
    }
}

// ---- the rules of a pending update ----

/// Merge `later` into the not yet sent `pending`, as if both were sent in
/// order. A receiver applies an update's withdraws before its announces,
/// so `later`'s withdraws are applied first here too.
///
/// Underlay paths keep what the peer may hold ([`OutUnderlay::held`]): a
/// path `pending` announces fresh and `later` withdraws is sent neither
/// way. Tunnel origins carry no such mark: a withdrawal after an
/// announcement of one is always sent.
pub fn merge(pending: &mut OutUpdate, later: OutUpdate) {
    if let Some(u) = later.underlay {
        merge_underlay(pending.underlay_mut(), u);
    }
    if let Some(t) = later.tunnel {
        let p = pending.tunnel_mut();
        merge_tunnels(&mut p.announce, &mut p.withdraw, t.announce, t.withdraw);
    }
}

/// [`merge`] `later` into the update `updates` holds for `key`, or make it
/// that update.
pub fn merge_into<K: Ord>(
    updates: &mut BTreeMap<K, OutUpdate>,
    key: K,
    later: OutUpdate,
) {
    match updates.entry(key) {
        btree_map::Entry::Vacant(v) => {
            v.insert(later);
        }
        btree_map::Entry::Occupied(mut o) => merge(o.get_mut(), later),
    }
}

/// [`merge`] of the underlay halves.
fn merge_underlay(pending: &mut OutUnderlay, later: OutUnderlay) {
    if later.len() < pending.len() {
        for p in later.withdraw {
            pending.withdraw_path(p);
        }
        for p in later.announce {
            let held = !later.held.is_empty() && later.held.contains(&p);
            pending.announce_path(p, held);
        }
        return;
    }
    // Fold the smaller pending update into the later one: what `later`
    // names wins (whether the peer may hold a path before both is still
    // `pending`'s to say), the rest of `pending` stays.
    let mut merged = later;
    // A path `later` both withdraws and announces (withdraws come first)
    // is announced, and the peer may hold it.
    if !merged.withdraw.is_empty() && !merged.announce.is_empty() {
        let both: Vec<OutPath> = merged
            .withdraw
            .iter()
            .filter(|p| merged.announce.contains(*p))
            .cloned()
            .collect();
        for p in both {
            merged.withdraw.remove(&p);
            merged.held.insert(p);
        }
    }
    let held = std::mem::take(&mut pending.held);
    for p in std::mem::take(&mut pending.announce) {
        let was_held = !held.is_empty() && held.contains(&p);
        if !merged.withdraw.is_empty() && merged.withdraw.contains(&p) {
            if !was_held {
                // Announced fresh, then withdrawn: the peer never had it.
                merged.withdraw.remove(&p);
            }
        } else if was_held {
            merged.held.insert(p.clone());
            merged.announce.insert(p);
        } else {
            if !merged.held.is_empty() {
                merged.held.remove(&p);
            }
            merged.announce.insert(p);
        }
    }
    for p in std::mem::take(&mut pending.withdraw) {
        if merged.announce.contains(&p) {
            merged.held.insert(p);
        } else {
            merged.withdraw.insert(p);
        }
    }
    *pending = merged;
}

/// Move the paths to `destination` from `set` into `into`.
fn take_destination(
    set: &mut BTreeSet<OutPath>,
    destination: Ipv6Net,
    into: &mut BTreeSet<OutPath>,
) {
    let from = OutPath::lowest_to(destination);
    while let Some(p) = set
        .range(&from..)
        .next()
        .filter(|p| p.destination == destination)
        .cloned()
    {
        set.remove(&p);
        into.insert(p);
    }
}

/// Take out of `announce` and `withdraw` the items `named` picks.
fn take_if<T: Ord + Clone>(
    announce: &mut BTreeSet<T>,
    withdraw: &mut BTreeSet<T>,
    named: impl Fn(&T) -> bool,
) -> (BTreeSet<T>, BTreeSet<T>) {
    let take = |set: &mut BTreeSet<T>| {
        let mut taken = BTreeSet::new();
        set.retain(|x| {
            let n = named(x);
            if n {
                taken.insert(x.clone());
            }
            !n
        });
        taken
    };
    (take(announce), take(withdraw))
}

/// [`merge`] of the tunnel halves: a later item replaces an earlier one.
fn merge_tunnels<T: Ord>(
    announce: &mut BTreeSet<T>,
    withdraw: &mut BTreeSet<T>,
    mut later_announce: BTreeSet<T>,
    mut later_withdraw: BTreeSet<T>,
) {
    if later_announce.len() + later_withdraw.len()
        >= announce.len() + withdraw.len()
    {
        // Fold the smaller pending update into the later one: what
        // `later` names wins, the rest of `pending` stays. An item `later`
        // both withdraws and announces ends up announced; in `pending` no
        // item is both (merging keeps it so).
        later_withdraw.retain(|x| !later_announce.contains(x));
        for x in std::mem::take(announce) {
            if !later_withdraw.contains(&x) {
                later_announce.insert(x);
            }
        }
        for x in std::mem::take(withdraw) {
            if !later_announce.contains(&x) {
                later_withdraw.insert(x);
            }
        }
        *announce = later_announce;
        *withdraw = later_withdraw;
        return;
    }
    for x in later_withdraw {
        announce.remove(&x);
        withdraw.insert(x);
    }
    for x in later_announce {
        withdraw.remove(&x);
        announce.insert(x);
    }
}

/// Most path vectors and tunnel origins, announced and withdrawn together,
/// sent in one push request. A larger pending update goes out as several
/// requests, one after the other, so that the peer imports (and passes on,
/// and programs) the first part while the rest is still being written and
/// read, instead of every stage of the fabric waiting for the whole update.
/// 2,048 path vectors are about 150 KB of JSON, under a millisecond to
/// write or parse. The bound also sizes what each stage holds in flight
/// (the body, the decoded push, the router's next push): 8,192 held 3.4
/// MiB more at the transit of the 100,000-prefix benchmark (peak 24.9 →
/// 21.5 MiB, medians of 4 runs) and was no faster.
pub const MAX_PUSH_ITEMS: usize = 2048;

/// The push body limit assumed for a peer that has not announced its own:
/// the original daemon's exchange server refuses bodies over 1024 bytes
/// (its HTTP framework's default), and every DDM server takes at least
/// that. A peer announces a larger limit in the
/// push-limit header (the exchange server's `PUSH_LIMIT_HEADER`) of its pull answers; a smaller announced
/// value is raised to this one (a refusal still splits the push).
pub const DEFAULT_PUSH_LIMIT: usize = 1024;

/// Bounds on one push request to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushBounds {
    /// Most path vectors and tunnel origins.
    pub items: usize,
    /// Most bytes of JSON body.
    pub bytes: usize,
    /// The version the body is written in (v2 items are longer).
    pub version: Version,
}

impl PushBounds {
    /// Bounds of [`MAX_PUSH_ITEMS`] items and `bytes` bytes in `version`.
    pub fn new(bytes: usize, version: Version) -> Self {
        PushBounds { items: MAX_PUSH_ITEMS, bytes, version }
    }
}

/// What [`take_chunk`] takes from a pending update.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// The part to send next.
    pub part: OutUpdate,
    /// Items that no push within the bounds can carry, even alone: they
    /// are taken out of the pending update so that the rest can go.
    pub oversize: OutUpdate,
}

/// One item of a pending update, in the order [`take_chunk`] takes them.
enum Item<'a> {
    /// A path vector.
    Path(&'a OutPath),
    /// A tunnel origin.
    Tunnel(&'a v3::TunnelOrigin),
}

/// What a part keeps together: a destination, or an overlay prefix.
#[derive(Debug, PartialEq, Eq)]
enum Group {
    Destination(Ipv6Net),
    Overlay(IpNet),
}

impl Item<'_> {
    /// The group it belongs to.
    fn group(&self) -> Group {
        match self {
            Item::Path(p) => Group::Destination(p.destination()),
            Item::Tunnel(t) => Group::Overlay(t.overlay_prefix),
        }
    }

    /// Its exact size in a body of `version`.
    fn len(&self, version: Version) -> usize {
        match self {
            Item::Path(p) => p.json_len(version),
            Item::Tunnel(t) => tunnel_json_len(t, version),
        }
    }

    /// At least its size in a body of `version`, cheaply.
    fn bound(&self, version: Version) -> usize {
        match self {
            Item::Path(p) => p.json_len_bound(),
            Item::Tunnel(t) => tunnel_json_len(t, version),
        }
    }
}

/// Which half of an update an item is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    Withdraw,
    Announce,
}

/// The items of `u` in sending order: underlay paths by destination, each
/// destination's withdrawals before its announcements, then tunnel origins
/// likewise by overlay prefix. A path and its replacement are neighbours,
/// and [`take_chunk`] cuts parts between destinations: an original peer at
/// its 1,024-byte limit, sent every withdrawal first, removed a changed
/// route between two parts (no path left) and, as a transit, passed the
/// withdrawal on to its own peers. Each set is taken in its own order
/// (sets order by destination first), so a part is a prefix of each set,
/// found without a lookup.
fn items(u: &OutUpdate) -> impl Iterator<Item = (Half, Item<'_>)> {
    let under = u.underlay.as_ref();
    let tun = u.tunnel.as_ref();
    let paths = by_key(
        under.map(|u| &u.withdraw),
        under.map(|u| &u.announce),
        OutPath::destination,
    )
    .map(|(h, p)| (h, Item::Path(p)));
    let tunnels = by_key(
        tun.map(|t| &t.withdraw),
        tun.map(|t| &t.announce),
        |t: &v3::TunnelOrigin| t.overlay_prefix,
    )
    .map(|(h, t)| (h, Item::Tunnel(t)));
    paths.chain(tunnels)
}

/// The items of `withdraw` and `announce`, both sorted by `key` first,
/// merged by it: for each key, its withdrawals, then its announcements.
fn by_key<'a, T, K: Ord>(
    withdraw: Option<&'a BTreeSet<T>>,
    announce: Option<&'a BTreeSet<T>>,
    key: impl Fn(&T) -> K,
) -> impl Iterator<Item = (Half, &'a T)> {
    let mut w = withdraw.into_iter().flatten().peekable();
    let mut a = announce.into_iter().flatten().peekable();
    std::iter::from_fn(move || match (w.peek(), a.peek()) {
        (Some(x), Some(y)) if key(x) > key(y) => {
            a.next().map(|y| (Half::Announce, y))
        }
        (Some(_), _) => w.next().map(|x| (Half::Withdraw, x)),
        (None, _) => a.next().map(|y| (Half::Announce, y)),
    })
}

/// Where the group of item `n` (its destination, or its overlay prefix)
/// begins in `items`, if after the first item; else `n`. A part cut
/// there carries each destination whole, unless one destination alone
/// fills it.
fn group_start(items: &[(Half, Item<'_>)], n: usize) -> usize {
    let Some((_, next)) = items.get(n) else {
        return n;
    };
    let same = |i: &usize| items[*i].1.group() == next.group();
    let start = (0..n).rev().take_while(same).last().unwrap_or(n);
    if start == 0 {
        n
    } else {
        start
    }
}

/// The body of a push carrying no item: both halves present, every list
/// empty. A body with items is at most this plus each item and one comma
/// per item; the lists' first items need no comma and an absent half is
/// shorter (`null`), so the estimate is at most a few dozen bytes high.
fn empty_body_len(version: Version) -> usize {
    let mut empty = OutUpdate::default();
    empty.underlay_mut();
    empty.tunnel_mut();
    match version {
        Version::V3 => json_len(&empty),
        Version::V2 => json_len(&V2Update(&empty)),
    }
}

/// Take the first part of `pending` to send on its own: as many items as
/// fit `bounds` (at most `bounds.items`, and a JSON body of at most
/// `bounds.bytes`), in the order of [`items`], and cut between two
/// destinations unless one fills the part alone. Sending the part and then
/// what is left of `pending` leaves the receiver as sending `pending` at
/// once would (a receiver applies an update's withdraws before its
/// announces, and a path is never in both halves). A receiver at its limit
/// of destinations may refuse a new one that a withdrawal in a later part
/// would have made room for; it learns it on a later pull. What is left
/// stays a pending update that later ones are merged into as usual.
///
/// Sizes are first bounded from the hostnames' lengths alone; only when
/// that bound does not show that `bounds.items` items fit (a small limit,
/// as an original peer's) is each item measured exactly. An item that
/// does not fit even in an otherwise empty body is moved to
/// [`Chunk::oversize`] instead.
pub fn take_chunk(pending: &mut OutUpdate, bounds: PushBounds) -> Chunk {
    let version = bounds.version;
    let budget = bounds.bytes.saturating_sub(empty_body_len(version));
    let mut oversize = OutUpdate::default();
    loop {
        let head = items(pending).next().map(|(_, i)| i.len(version));
        match head {
            Some(size) if size.saturating_add(1) > budget => {
                let alone = take_first(pending, 1);
                merge(&mut oversize, alone);
            }
            _ => break,
        }
    }
    let most = bounds.items.min(pending.len());
    // One walk: the first `most` items, and the one after them (whether a
    // cut there splits a destination).
    let head: Vec<_> = items(pending).take(most + 1).collect();
    let fitting = |size: &dyn Fn(&Item) -> usize| {
        let mut used = 0usize;
        head[..most]
            .iter()
            .take_while(|(_, i)| {
                used = used.saturating_add(size(i)).saturating_add(1);
                used <= budget
            })
            .count()
    };
    let mut n = fitting(&|i| i.bound(version));
    if n < most {
        n = fitting(&|i| i.len(version));
    }
    let n = group_start(&head, n);
    let counts = Counts::of(&head[..n]);
    Chunk { part: take_counted(pending, n, counts), oversize }
}

/// How many of each set's first items a run of items in sending order
/// holds: underlay withdrawals and announcements, tunnel withdrawals and
/// announcements.
#[derive(Debug, Clone, Copy, Default)]
struct Counts([usize; 4]);

impl Counts {
    fn of(items: &[(Half, Item<'_>)]) -> Counts {
        let mut c = [0; 4];
        for (half, item) in items {
            let at = match (item, half) {
                (Item::Path(_), Half::Withdraw) => 0,
                (Item::Path(_), Half::Announce) => 1,
                (Item::Tunnel(_), Half::Withdraw) => 2,
                (Item::Tunnel(_), Half::Announce) => 3,
            };
            c[at] += 1;
        }
        Counts(c)
    }
}

/// Take the first `n` items of `pending` in sending order (all of it when
/// it holds at most `n`).
fn take_first(pending: &mut OutUpdate, n: usize) -> OutUpdate {
    let head: Vec<_> = items(pending).take(n).collect();
    let counts = Counts::of(&head);
    take_counted(pending, n, counts)
}

/// [`take_first`] of `n` items, `counts` of them from each set.
fn take_counted(
    pending: &mut OutUpdate,
    n: usize,
    counts: Counts,
) -> OutUpdate {
    if pending.len() <= n {
        let mut all = std::mem::take(pending);
        // A part is what is sent: it marks nothing.
        if let Some(u) = &mut all.underlay {
            u.held.clear();
        }
        return all;
    }
    /// Move the first `n` elements of `from` into a new set.
    fn first<T: Ord + Clone>(from: &mut BTreeSet<T>, n: usize) -> BTreeSet<T> {
        match from.iter().nth(n).cloned() {
            // `split_off` keeps the first elements in place; swap halves.
            Some(key) => {
                let rest = from.split_off(&key);
                std::mem::replace(from, rest)
            }
            None => std::mem::take(from),
        }
    }
    let Counts([uw, ua, tw, ta]) = counts;
    let mut under = OutUnderlay::default();
    let mut tun = v3::TunnelUpdate::default();
    if let Some(u) = &mut pending.underlay {
        under.withdraw = first(&mut u.withdraw, uw);
        under.announce = first(&mut u.announce, ua);
        // The paths sent are no longer the pending update's to mark.
        if !u.held.is_empty() {
            for p in &under.announce {
                u.held.remove(p);
            }
        }
    }
    if let Some(t) = &mut pending.tunnel {
        tun.withdraw = first(&mut t.withdraw, tw);
        tun.announce = first(&mut t.announce, ta);
    }
    OutUpdate {
        underlay: (!under.announce.is_empty() || !under.withdraw.is_empty())
            .then_some(under),
        tunnel: (!tun.announce.is_empty() || !tun.withdraw.is_empty())
            .then_some(tun),
    }
}

#[cfg(test)]
mod rules_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(d: &str, path: &[&str]) -> v3::PathVector {
        v3::PathVector {
            destination: d.parse().unwrap(),
            path: path.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(n: &[&str]) -> Names {
        Arc::new(n.iter().map(|s| Arc::from(*s)).collect())
    }

    fn sample() -> v3::Update {
        let mut u = v3::Update::default();
        let ul = u.underlay_mut();
        ul.announce.insert(pv("fd00:1::/64", &["a", "b"]));
        ul.announce.insert(pv("fd00:1::/64", &["a"]));
        ul.announce.insert(pv("fd00:0:1::/48", &["zz", "a\"q"]));
        ul.withdraw.insert(pv("fd00:2::/64", &["c"]));
        u.tunnel_mut().announce.insert(v3::TunnelOrigin {
            overlay_prefix: "10.0.0.0/8".parse().unwrap(),
            boundary_addr: "fd00::1".parse().unwrap(),
            vni: 7,
            metric: 3,
        });
        u
    }

    #[test]
    fn writes_the_wire_json_byte_for_byte() {
        for u in [sample(), v3::Update::default(), {
            let mut u = sample();
            u.tunnel = None;
            u
        }] {
            let out = OutUpdate::from(&u);
            assert_eq!(out.to_wire(), u);
            assert_eq!(
                serde_json::to_string(&out).unwrap(),
                serde_json::to_string(&u).unwrap()
            );
            assert_eq!(
                serde_json::to_string(&V2Update(&out)).unwrap(),
                serde_json::to_string(&v2::Update::from(u.clone())).unwrap()
            );
        }
    }

    /// Measured sizes are the written sizes, in both versions; the bound
    /// holds even for the longest address, escaped names and a suffix.
    #[test]
    fn sizes_are_exact_and_bounds_hold() {
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128";
        let odd = "q\"\\\u{1}\n\u{7f}é\u{1F600}";
        let paths = [
            OutPath::from(&pv("fd00:1::/64", &["a"])),
            OutPath::from(&pv(long, &[odd, "", "sled-12"])),
            OutPath::new(
                long.parse().unwrap(),
                names(&[odd, odd]),
                Some(Arc::new(Arc::from(odd))),
            ),
            OutPath::from(&pv("::/0", &[])),
        ];
        for p in &paths {
            let v3 = serde_json::to_string(p).unwrap();
            let v2 = serde_json::to_string(&v2::PathVector::from(p.to_wire()))
                .unwrap();
            assert_eq!(p.json_len(Version::V3), v3.len(), "{v3}");
            assert_eq!(p.json_len(Version::V2), v2.len(), "{v2}");
            assert!(p.json_len_bound() >= v2.len().max(v3.len()), "{v2}");
        }
        // The fixed part is as large as it gets for the longest address.
        let bare = OutPath::from(&pv(long, &[]));
        assert_eq!(bare.json_len(Version::V2), PATH_FIXED_MAX);
        assert!(bare.json_len(Version::V3) <= PATH_FIXED_MAX);
        let u = sample();
        for t in &u.tunnel.as_ref().unwrap().announce {
            assert_eq!(
                tunnel_json_len(t, Version::V3),
                serde_json::to_string(t).unwrap().len()
            );
            assert_eq!(
                tunnel_json_len(t, Version::V2),
                serde_json::to_string(&v2::TunnelOrigin::from(t))
                    .unwrap()
                    .len()
            );
        }
    }

    #[test]
    fn a_suffix_orders_and_compares_as_the_written_path() {
        let d: Ipv6Net = "fd00:1::/64".parse().unwrap();
        let split =
            OutPath::new(d, names(&["a"]), Some(Arc::new(Arc::from("b"))));
        let whole = OutPath::new(d, names(&["a", "b"]), None);
        assert_eq!(split, whole);
        assert_eq!(split.to_wire(), pv("fd00:1::/64", &["a", "b"]));
        let shorter = OutPath::new(d, names(&["a"]), None);
        let later =
            OutPath::new(d, names(&["a"]), Some(Arc::new(Arc::from("c"))));
        assert!(shorter < split && split < later);
        assert_eq!(
            shorter.cmp(&split),
            pv("fd00:1::/64", &["a"]).cmp(&pv("fd00:1::/64", &["a", "b"]))
        );
        let mut u = OutUpdate::default();
        u.underlay_mut().announce.insert(later);
        u.underlay_mut().announce.insert(split);
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            serde_json::to_string(&u.to_wire()).unwrap()
        );
    }
}
