//! The routing information base: DDM's protocol core as a pure state
//! machine.
//!
//! [`Rib`] holds what this router originates, what each peer announced, the
//! ECMP set of every destination and the effective tunnel endpoint set. Each
//! operation changes that state and returns [`Effects`]: routes to program,
//! the new tunnel set, updates to push to peers. The router actor executes
//! them; nothing here does I/O, reads a clock or spawns anything, so every
//! rule of the protocol is tested with plain function calls.
//!
//! Rules:
//! * an originated prefix is announced as `path = [own hostname]`;
//! * a received path that already contains our hostname is a loop: dropped
//!   and counted ([`RibStats::loops_dropped`]);
//! * shortest paths only: of the paths imported for a destination, only
//!   the shortest (fewest hostnames) count. The destination's ECMP set is
//!   the nexthops of its shortest paths, and a transit router re-announces
//!   only those, with its own hostname appended: each peer hears the first
//!   [`MAX_ADVERTISED_PATHS`] of them, in a ranking by hash, that it did
//!   not offer itself. Longer
//!   paths stay stored and take over when the shorter ones go. In a fabric
//!   of racks this is what keeps forwarding loop-free: a path through a
//!   spine is never equal to a direct one, so no flow is hashed back up;
//! * a server never redistributes;
//! * per overlay prefix, tunnel routes with a positive metric win; only when
//!   none has one are the metric-0 routes used.
//!
//! Cost: announcing or withdrawing k paths costs O(k) expected, plus, on a
//! transit router, sorting the destinations whose re-announcement changed
//! (usually already in order) and telling each peer of them; a peer
//! going down costs one pass over the destination table. Memory:
//! hostnames and paths are interned, and every destination is one entry of
//! one (sharded) hash table whose value holds its (peer slot, path) offers,
//! the common single offer inline in 16 bytes: the ECMP set and who holds a
//! path are both read from that entry. Pushed updates share the interned
//! paths.

mod intern;
mod offers;
mod origin;
mod peers;
mod table;
#[cfg(test)]
mod tests;
mod told;
mod tunnels;
mod underlay;

use tunnels::entries_of_set;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::Arc;

use ddm_admin_api::latest::{RouterKind, TunnelRoute};
use oxnet::{IpNet, Ipv6Net};

use crate::dataplane::{Nexthop, Nexthops, RouteUpdate, TunnelEntry};
use ddm_proto::outgoing::{OutPath, OutPull, OutUpdate};
use ddm_proto::wire::v3::{PathVector, PullResponse, TunnelOrigin};
use ddm_proto::wire::{normalise_tunnel, normalise_v6};
use intern::{Interner, Path};
use offers::{for_peer, Offer, Offers, Slot};
use table::Table;
pub use told::Told;

pub use ddm_proto::PeerId;

/// A peer's address as a dataplane nexthop: links are point-to-point, so
/// the peer names the nexthop of every route learned from it. (An extension
/// trait: [`PeerId`] lives in the protocol floor, which knows no dataplane.)
pub trait PeerNexthop {
    /// The nexthop of routes learned from this peer.
    fn nexthop(&self) -> Nexthop;
}

impl PeerNexthop for PeerId {
    fn nexthop(&self) -> Nexthop {
        Nexthop { addr: self.addr, ifindex: self.ifindex }
    }
}

/// Add `more` to `set`. A few are inserted one by one; many are merged
/// with the set into packed B-tree nodes (`BTreeSet::append`), since
/// inserting items in order, as a sorted request is read, leaves each node
/// just over half full: 100,000 originated prefixes took 2.9 MB that way
/// against about 1.9 MB packed, in the admin actor's mirror and in the RIB.
pub fn extend_packed<T: Ord>(set: &mut BTreeSet<T>, mut more: BTreeSet<T>) {
    if few_of(&more, set) {
        set.extend(more);
    } else {
        set.append(&mut more);
    }
}

/// Remove `gone` from `set`. A few are removed one by one; many leave
/// what stays rebuilt, packed, in one walk over both (removing 100,000 of
/// as many one lookup at a time took about 12 ms).
pub fn remove_packed<T: Ord + Clone>(
    set: &mut BTreeSet<T>,
    gone: &BTreeSet<T>,
) {
    if few_of(gone, set) {
        for x in gone {
            set.remove(x);
        }
    } else {
        *set = packed(set.difference(gone).cloned());
    }
}

/// The set of `items`, in packed B-tree nodes when they come in ascending
/// order (any order gives the right set), built without holding every
/// item twice: in parts of a quarter of what is built so far (at least
/// `PACK_PART`), each collected, packed and appended (about five moves
/// per item in all). Inserted one by one, 100,000 own paths took 7.5 MiB
/// at the originator; packed they take about 4.4, and the largest part's
/// list with its tree adds about half of that while it is built (one list
/// of them all, sorted and packed at once, would add 3.8 MiB).
pub fn packed<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    let mut set = BTreeSet::new();
    let mut items = items.into_iter();
    loop {
        let want = (set.len() / 4).max(PACK_PART);
        let mut part: BTreeSet<T> = items.by_ref().take(want).collect();
        if part.is_empty() {
            return set;
        }
        set.append(&mut part);
    }
}

/// Keep the members of `want` that `have` holds (`present`), or lacks.
/// Against a set not much larger, one walk over both in order replaces a
/// lookup per member: withdrawing 100,000 of as many took 10 ms of
/// lookups at the admin actor, before the router could start.
pub fn retain_present<T: Ord>(
    want: &mut BTreeSet<T>,
    have: &BTreeSet<T>,
    present: bool,
) {
    let (Some(first), Some(last)) = (want.first(), want.last()) else {
        return;
    };
    if few_of(want, have) {
        want.retain(|x| have.contains(x) == present);
    } else {
        // `retain` visits `want` in ascending order; only the part of
        // `have` within its range is walked (a million prefixes
        // originated in ten requests walked the whole set for each).
        let mut have = have.range(first..=last).peekable();
        want.retain(|x| {
            while have.next_if(|y| *y < x).is_some() {}
            (have.peek() == Some(&x)) == present
        });
    }
}

/// Whether `some` is so much smaller than `all` that a lookup, insertion
/// or removal per member of `some` beats one walk over both (the rule of
/// [`extend_packed`] and [`retain_present`]).
pub(crate) fn few_of<T>(some: &BTreeSet<T>, all: &BTreeSet<T>) -> bool {
    some.len().saturating_mul(8) < all.len()
}

/// The fewest items [`packed`] collects at a time.
const PACK_PART: usize = 1024;

/// What the router must do after a RIB operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// For each destination whose ECMP set changed, the complete new set
    /// (empty: remove the route), ordered by destination.
    pub route_updates: Vec<RouteUpdate>,
    /// The new effective tunnel endpoint set, if it changed.
    pub tunnel_set: Option<BTreeSet<TunnelEntry>>,
    /// Updates to push, at most one per peer, ordered by peer (in the
    /// compact form, sharing the RIB's paths).
    pub pushes: Vec<(PeerId, OutUpdate)>,
}

impl Effects {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.route_updates.is_empty()
            && self.tunnel_set.is_none()
            && self.pushes.is_empty()
    }
}

/// One imported path, as [`Rib::imported_paths`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedPath {
    /// The address of the peer it came from.
    pub from: Ipv6Addr,
    /// Its destination.
    pub destination: Ipv6Net,
    /// Its hostnames, originator first (shared with the RIB).
    pub path: ddm_proto::outgoing::Names,
}

/// Counters of what the RIB refused, for logs and statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RibStats {
    /// Announced paths dropped because they already contain our hostname.
    pub loops_dropped: u64,
    /// Announced paths dropped because they name no router at all.
    pub invalid_dropped: u64,
    /// Paths past [`MAX_PATHS_PER_PEER`] of one peer to one destination:
    /// the announced path when it was no shorter than the peer's longest,
    /// else that longest one, which the announced path replaced.
    pub paths_over_limit: u64,
    /// Announced paths dropped because the peer's held paths would have
    /// taken more than its budget of bytes ([`Rib::set_path_budget`]).
    pub paths_over_budget: u64,
}

/// Errors of RIB operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RibError {
    /// An update arrived from a peer that is not up (it expired meanwhile,
    /// or `peer_up` was never called).
    #[error("peer {0} is not up")]
    UnknownPeer(PeerId),
}

/// What the RIB knows about one peer.
#[derive(Debug)]
struct PeerState {
    /// Its index in [`Rib::slots`], which the table's offers name it by.
    slot: Slot,
    /// The peer's role, as its discovery packets say.
    kind: RouterKind,
    /// How many paths the peer announced and has not withdrawn (they are
    /// in [`Rib::routes`]).
    paths: usize,
    /// How many distinct destinations those paths lead to (for the import
    /// policy's per-peer limit).
    destinations: usize,
    /// What those paths cost, counted by [`path_cost`].
    path_bytes: usize,
    /// Every tunnel endpoint the peer announced and has not withdrawn.
    tunnels: BTreeSet<TunnelOrigin>,
}

/// Where an announcement comes from, for redistribution decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This router originates it.
    Local,
    /// A peer announced it.
    Peer(PeerId),
}

/// Most shortest paths a transit router re-announces for one destination.
///
/// A receiver forwards over the sender whichever of its paths it is told
/// about, so one path does for forwarding, and the transit itself still
/// forwards over all of its shortest paths. The peer whose path ranks
/// first hears the next one from another peer (a second origin of an
/// anycast prefix, say). When the announced path goes, the transit
/// withdraws it and announces a replacement in the same update (a
/// receiver applies both at once, so its route does not move). Each
/// path re-announced costs every peer's memory and every push: in the
/// simulated fabric of 1,024 routers, 4 made a server hold 7.8 paths per
/// destination and its cold start take 30 s and 0.8 MB per router; 1
/// holds 2 paths, and the cold start took 15 s and 0.4 MB.
pub const MAX_ADVERTISED_PATHS: usize = 1;

/// Most paths one peer may offer to one destination; of more, the RIB
/// keeps the shortest (a longer path announced past this is dropped, a
/// shorter one takes the place of the peer's longest) and counts each
/// path let go ([`RibStats::paths_over_limit`]). Our own transits announce
/// [`MAX_ADVERTISED_PATHS`] per destination, an original transit every
/// path it imported: a spine of a fabric of racks offers one per transit
/// of the destination's rack, and a few detours. Without a bound, one push
/// of 20,000 paths to one destination (a megabyte) made every insert walk,
/// rank and copy every path held before it: quadratic time, and gigabytes
/// of candidates pending for re-announcement. A path let go is forgotten:
/// if the peer's shorter paths are withdrawn, it is not restored until
/// the peer announces it again (a pull does).
pub const MAX_PATHS_PER_PEER: usize = 16;

/// The bytes one path held from a peer is counted as against the peer's
/// budget ([`Rib::set_path_budget`]): its names and a pointer to each,
/// and a fixed part for the path and its offer, as if no name were shared
/// (a peer's names are shared with other peers' only when they are the
/// same). A path of three 16-byte names counts 160.
pub fn path_cost(names: &[Arc<str>]) -> usize {
    const PER_PATH: usize = 64;
    let per_name = std::mem::size_of::<Arc<str>>();
    names.iter().map(|n| n.len() + per_name).sum::<usize>() + PER_PATH
}

/// Which sources, other than the one changing, offer an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holders {
    None,
    One(Source),
    Many,
}

impl Holders {
    fn add(self, s: Source) -> Holders {
        match self {
            Holders::None => Holders::One(s),
            _ => Holders::Many,
        }
    }
}

/// Changes collected during one operation, turned into [`Effects`] at the
/// end.
#[derive(Default)]
struct Pending {
    /// Each destination whose ECMP set changed, with the set before the
    /// change. A destination changed twice appears twice; its first entry
    /// holds the set before the operation.
    touched: Vec<RouteUpdate>,
    /// Overlay prefixes whose candidate tunnel routes changed.
    tunnel_prefixes: BTreeSet<IpNet>,
    /// Updates to push, by peer.
    pushes: BTreeMap<PeerId, OutUpdate>,
    /// Destinations whose re-announced candidates changed, with them
    /// before and after the step ([`Rib::readvertise`], at the end).
    readvertised: Vec<Readvertised>,
}

/// A destination and its ranked re-announced candidates before and after
/// one step of an operation.
type Readvertised = (Ipv6Net, Vec<Offer>, Vec<Offer>);

impl Pending {
    /// Every path of `paths` enters the peer's view: it does not hold
    /// them (every earlier push to it withdrew what left its view).
    fn announce_paths(&mut self, to: PeerId, paths: BTreeSet<OutPath>) {
        self.pushes.entry(to).or_default().underlay_mut().announce_paths(paths);
    }

    /// Every path of `paths` leaves the peer's view.
    fn withdraw_paths(&mut self, to: PeerId, paths: BTreeSet<OutPath>) {
        self.pushes.entry(to).or_default().underlay_mut().withdraw_paths(paths);
    }

    fn announce_tunnel(&mut self, to: PeerId, t: TunnelOrigin) {
        let u = self.pushes.entry(to).or_default().tunnel_mut();
        u.withdraw.remove(&t);
        u.announce.insert(t);
    }

    fn withdraw_tunnel(&mut self, to: PeerId, t: TunnelOrigin) {
        let u = self.pushes.entry(to).or_default().tunnel_mut();
        u.announce.remove(&t);
        u.withdraw.insert(t);
    }
}

/// The routing information base of one router.
#[derive(Debug)]
pub struct Rib {
    /// Our name in paths: appended when redistributing (behind the thin
    /// pointer an [`OutPath`] keeps), the loop detector.
    hostname: ddm_proto::outgoing::Suffix,
    /// A hash of the hostname: which shortest paths we re-announce
    /// ([`Offers::advertised`]).
    seed: u64,
    /// The path of what we originate: our hostname alone.
    own: Path,
    /// Whether we redistribute what we learn.
    kind: RouterKind,
    /// Prefixes we originate (announced as `[hostname]`).
    originated: BTreeSet<Ipv6Net>,
    /// Tunnel endpoints we originate.
    originated_tunnels: BTreeSet<TunnelOrigin>,
    /// Every peer that is up, with what it announced.
    peers: BTreeMap<PeerId, PeerState>,
    /// The peer in each slot (`None`: free, for the next peer to come up).
    slots: Vec<Option<PeerId>>,
    /// Every imported path, by destination: a destination has a route
    /// exactly while it is here, through the peers offering it.
    routes: Table,
    /// Candidate tunnel routes, with the number of peers offering each (two
    /// links may lead to peers with the same link-local address).
    tunnel_refs: BTreeMap<TunnelEntry, u32>,
    /// The tunnel routes selected by metric: what the dataplane has.
    effective_tunnels: BTreeSet<TunnelEntry>,
    /// Shared hostnames and paths.
    interner: Interner,
    /// Counters of refused input.
    stats: RibStats,
    /// Most bytes one peer's held paths may count ([`path_cost`]).
    path_budget: usize,
}

impl Rib {
    /// An empty RIB for a router named `hostname` of the given kind.
    pub fn new(hostname: impl AsRef<str>, kind: RouterKind) -> Self {
        let hostname: Arc<str> = Arc::from(hostname.as_ref());
        Rib {
            seed: offers::stable_hash(&hostname),
            own: Arc::new(Box::new([Arc::clone(&hostname)])),
            hostname: Arc::new(hostname),
            kind,
            originated: BTreeSet::new(),
            originated_tunnels: BTreeSet::new(),
            peers: BTreeMap::new(),
            slots: Vec::new(),
            routes: Table::default(),
            tunnel_refs: BTreeMap::new(),
            effective_tunnels: BTreeSet::new(),
            interner: Interner::default(),
            stats: RibStats::default(),
            path_budget: usize::MAX,
        }
    }

    /// Bound what one peer's held paths may count ([`path_cost`]) to
    /// `bytes` (unbounded until set): an announced path past it is
    /// dropped and counted ([`RibStats::paths_over_budget`]). Without a
    /// bound, a peer within its limits of destinations and paths per
    /// destination (250,000 and 16) could still make us hold gigabytes:
    /// 4 million paths of 32 distinct 255-byte names each.
    pub fn set_path_budget(&mut self, bytes: usize) {
        self.path_budget = bytes;
    }

    /// The seed of our re-announcements ([`Offers::advertised`]): only a
    /// transit router has one.
    fn readvertise_seed(&self) -> Option<u64> {
        (self.kind == RouterKind::Transit).then_some(self.seed)
    }

    /// Our hostname.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Our kind.
    pub fn kind(&self) -> RouterKind {
        self.kind
    }

    /// Counters of refused input.
    pub fn stats(&self) -> RibStats {
        self.stats
    }

    /// The prefixes we originate (`GET /originated`).
    pub fn originated(&self) -> &BTreeSet<Ipv6Net> {
        &self.originated
    }

    /// The tunnel endpoints we originate
    /// (`GET /originated_tunnel_endpoints`).
    pub fn originated_tunnels(&self) -> &BTreeSet<TunnelOrigin> {
        &self.originated_tunnels
    }

    /// The peers that are up, with their kinds.
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, RouterKind)> + '_ {
        self.peers.iter().map(|(id, p)| (*id, p.kind))
    }

    /// The current ECMP set of `destination` (empty: no route).
    pub fn ecmp_set(&self, destination: Ipv6Net) -> BTreeSet<Nexthop> {
        self.nexthops(destination).iter().copied().collect()
    }

    /// How many destinations have a route.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// How many distinct paths and hostnames are stored (memory statistics:
    /// both stay small however many destinations there are).
    pub fn interned_counts(&self) -> (usize, usize) {
        (self.interner.path_count(), self.interner.name_count())
    }

    /// How many distinct destinations `peer` offers a path to (0 for a
    /// peer that is not up).
    pub fn peer_destination_count(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.destinations)
    }

    /// Whether `peer` offers at least one path to `destination` (host bits
    /// ignored).
    pub fn peer_offers(&self, peer: PeerId, destination: Ipv6Net) -> bool {
        let Some(state) = self.peers.get(&peer) else {
            return false;
        };
        self.routes
            .get(&normalise_v6(destination))
            .is_some_and(|o| o.has_peer(state.slot))
    }

    /// How many tunnel endpoints `peer` offers (0 for a peer that is not
    /// up).
    pub fn peer_tunnel_count(&self, peer: PeerId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.tunnels.len())
    }

    /// Whether `peer` offers the tunnel endpoint `origin` (overlay host bits
    /// ignored).
    pub fn peer_offers_tunnel(
        &self,
        peer: PeerId,
        origin: &TunnelOrigin,
    ) -> bool {
        let origin = normalise_tunnel(*origin);
        self.peers.get(&peer).is_some_and(|p| p.tunnels.contains(&origin))
    }

    /// The effective tunnel endpoint set (what the dataplane should have).
    pub fn tunnel_set(&self) -> &BTreeSet<TunnelEntry> {
        &self.effective_tunnels
    }

    /// Every imported path, by the address of the peer it came from
    /// (`GET /prefixes`).
    pub fn imported_prefixes(
        &self,
    ) -> BTreeMap<Ipv6Addr, BTreeSet<PathVector>> {
        let mut out: BTreeMap<Ipv6Addr, BTreeSet<PathVector>> = BTreeMap::new();
        for p in self.imported_paths() {
            out.entry(p.from)
                .or_default()
                .insert(path_vector(p.destination, &p.path));
        }
        out
    }

    /// Every imported path, in table order, sharing the stored hostnames
    /// (no copy of a name: what a simulation of a thousand routers reads).
    pub fn imported_paths(&self) -> impl Iterator<Item = ImportedPath> + '_ {
        self.routes.iter().flat_map(move |(d, offers)| {
            offers.as_slice().iter().map(move |o| ImportedPath {
                from: self.peer_at(o.peer).addr,
                destination: *d,
                path: Arc::clone(&o.path),
            })
        })
    }

    /// Every imported tunnel endpoint with the peer it came from, selected
    /// or not (`GET /tunnel_endpoints`).
    pub fn imported_tunnels(&self) -> BTreeSet<TunnelRoute> {
        self.tunnel_refs
            .keys()
            .map(|e| TunnelRoute { origin: e.origin, nexthop: e.nexthop })
            .collect()
    }

    /// The ECMP set of `dest`.
    fn nexthops(&self, dest: Ipv6Net) -> Nexthops {
        self.routes
            .get(&dest)
            .map(|o| o.nexthops(|s| hop(&self.slots, s)))
            .unwrap_or_default()
    }

    /// The peer in `slot`, which some offer names.
    fn peer_at(&self, slot: Slot) -> PeerId {
        hop_peer(&self.slots, slot)
    }

    /// `[own hostname]` for an originated prefix.
    fn own_path(&self, dest: Ipv6Net) -> OutPath {
        OutPath::new(dest, Arc::clone(&self.own), None)
    }

    /// An imported path as we re-announce it: our hostname appended.
    fn extended(&self, dest: Ipv6Net, path: &Path) -> OutPath {
        OutPath::new(dest, Arc::clone(path), Some(Arc::clone(&self.hostname)))
    }

    // ---- tunnels ----

    fn finish(&mut self, mut pending: Pending) -> Effects {
        let readvertised = std::mem::take(&mut pending.readvertised);
        self.readvertise(readvertised, &mut pending);
        // Keep the first snapshot of each destination (the sort is stable)
        // and turn it, in place, into the destination's new set.
        let mut route_updates = pending.touched;
        if !route_updates.is_sorted_by_key(|u| u.destination) {
            route_updates.sort_by_key(|u| u.destination);
        }
        route_updates.dedup_by_key(|u| u.destination);
        route_updates.retain_mut(|u| {
            let now = self.nexthops(u.destination);
            if now == u.nexthops {
                false
            } else {
                u.nexthops = now;
                true
            }
        });
        if route_updates.capacity() > 2 * route_updates.len() + 16 {
            route_updates.shrink_to_fit();
        }
        // A table that held many more destinations gives the space back.
        self.routes.shrink_sparse();
        let mut tunnels_changed = false;
        for prefix in pending.tunnel_prefixes {
            let selected = self.select_tunnels(prefix);
            let old: BTreeSet<TunnelEntry> =
                entries_of_set(&self.effective_tunnels, prefix)
                    .copied()
                    .collect();
            if old != selected {
                tunnels_changed = true;
                for e in &old {
                    self.effective_tunnels.remove(e);
                }
                self.effective_tunnels.extend(selected);
            }
        }
        Effects {
            route_updates,
            tunnel_set: tunnels_changed.then(|| self.effective_tunnels.clone()),
            pushes: pending
                .pushes
                .into_iter()
                .filter(|(_, u)| !u.is_empty())
                .collect(),
        }
    }
}

/// A stored path as a wire path vector.
fn path_vector(dest: Ipv6Net, path: &Path) -> PathVector {
    PathVector {
        destination: dest,
        path: path.iter().map(|h| h.to_string()).collect(),
    }
}

/// The peer in `slot` of `slots`; every slot an offer names is taken.
fn hop_peer(slots: &[Option<PeerId>], slot: Slot) -> PeerId {
    slots
        .get(slot as usize)
        .copied()
        .flatten()
        .expect("offers name only slots of peers that are up")
}

/// The nexthop of the peer in `slot` of `slots`.
fn hop(slots: &[Option<PeerId>], slot: Slot) -> Nexthop {
    hop_peer(slots, slot).nexthop()
}
