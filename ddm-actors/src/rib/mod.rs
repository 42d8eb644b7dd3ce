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
//!   only those, at most [`MAX_ADVERTISED_PATHS`] of them, each to every
//!   peer but the one it came from, with its own hostname appended. Longer
//!   paths stay stored and take over when the shorter ones go. In a fabric
//!   of racks this is what keeps forwarding loop-free: a path through a
//!   spine is never equal to a direct one, so no flow is hashed back up;
//! * a server never redistributes;
//! * per overlay prefix, tunnel routes with a positive metric win; only when
//!   none has one are the metric-0 routes used.
//!
//! Cost: announcing or withdrawing k paths costs O(k) expected (plus the
//! number of peers on a transit router, to decide whom to tell); a peer
//! going down costs one pass over the destination table. Memory:
//! hostnames and paths are interned, and every destination is one entry of
//! one (sharded) hash table whose value holds its (peer slot, path) offers,
//! the common single offer inline in 16 bytes: the ECMP set and who holds a
//! path are both read from that entry. Pushed updates share the interned
//! paths.

mod intern;
mod offers;
mod table;
#[cfg(test)]
mod tests;
mod told;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::Arc;

use ddm_admin_api::latest::{RouterKind, TunnelRoute};
use oxnet::{IpNet, Ipv6Net};

use crate::dataplane::{Nexthop, Nexthops, RouteUpdate, TunnelEntry};
use ddm_proto::outgoing::{OutPath, OutUpdate};
use ddm_proto::wire::v3::{PathVector, PullResponse, TunnelOrigin, Update};
use ddm_proto::wire::{normalise_ip, normalise_v6};
use intern::{Interner, Path};
use offers::{Offer, Offers, Slot};
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

/// Counters of what the RIB refused, for logs and statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RibStats {
    /// Announced paths dropped because they already contain our hostname.
    pub loops_dropped: u64,
    /// Announced paths dropped because they name no router at all.
    pub invalid_dropped: u64,
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
/// about, so one path would do for forwarding; a few more let a transit
/// lose a path without first announcing a replacement, and keep the paths a
/// server holds per destination small: 2 × 4 in a fabric of racks whatever
/// the number of racks and spines.
pub const MAX_ADVERTISED_PATHS: usize = 4;

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
}

impl Pending {
    fn announce_path(&mut self, to: PeerId, pv: OutPath) {
        let u = self.pushes.entry(to).or_default().underlay_mut();
        u.withdraw.remove(&pv);
        u.announce.insert(pv);
    }

    fn withdraw_path(&mut self, to: PeerId, pv: OutPath) {
        let u = self.pushes.entry(to).or_default().underlay_mut();
        u.announce.remove(&pv);
        u.withdraw.insert(pv);
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
    /// Our name in paths: appended when redistributing, the loop detector.
    hostname: Arc<str>,
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
}

impl Rib {
    /// An empty RIB for a router named `hostname` of the given kind.
    pub fn new(hostname: impl AsRef<str>, kind: RouterKind) -> Self {
        let hostname: Arc<str> = Arc::from(hostname.as_ref());
        Rib {
            own: Arc::new(Box::new([Arc::clone(&hostname)])),
            hostname,
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
        }
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
        let origin = TunnelOrigin {
            overlay_prefix: normalise_ip(origin.overlay_prefix),
            ..*origin
        };
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
        for (d, offers) in self.routes.iter() {
            for o in offers.as_slice() {
                out.entry(self.peer_at(o.peer).addr)
                    .or_default()
                    .insert(path_vector(*d, &o.path));
            }
        }
        out
    }

    /// Every imported tunnel endpoint with the peer it came from, selected
    /// or not (`GET /tunnel_endpoints`).
    pub fn imported_tunnels(&self) -> BTreeSet<TunnelRoute> {
        self.tunnel_refs
            .keys()
            .map(|e| TunnelRoute { origin: e.origin, nexthop: e.nexthop })
            .collect()
    }

    /// Start originating `prefixes`; announces the new ones to every peer.
    pub fn originate(
        &mut self,
        prefixes: impl IntoIterator<Item = Ipv6Net>,
    ) -> Effects {
        let mut pending = Pending::default();
        self.originate_into(&mut pending, prefixes);
        self.finish(pending)
    }

    /// Stop originating `prefixes`; withdraws them from every peer.
    pub fn withdraw_originated(
        &mut self,
        prefixes: impl IntoIterator<Item = Ipv6Net>,
    ) -> Effects {
        let mut pending = Pending::default();
        self.withdraw_originated_into(&mut pending, prefixes);
        self.finish(pending)
    }

    /// Start originating tunnel endpoints; announces the new ones to every
    /// peer that does not already hear of them from elsewhere.
    pub fn originate_tunnels(
        &mut self,
        origins: impl IntoIterator<Item = TunnelOrigin>,
    ) -> Effects {
        let mut pending = Pending::default();
        self.originate_tunnels_into(&mut pending, origins);
        self.finish(pending)
    }

    /// Stop originating tunnel endpoints; withdraws them from every peer
    /// that no longer hears of them from elsewhere.
    pub fn withdraw_tunnels(
        &mut self,
        origins: impl IntoIterator<Item = TunnelOrigin>,
    ) -> Effects {
        let mut pending = Pending::default();
        self.withdraw_tunnels_into(&mut pending, origins);
        self.finish(pending)
    }

    /// Make the originated prefixes and tunnel endpoints exactly these
    /// (the whole set the admin actor hands a started router): withdraws
    /// what is no longer in them, then originates what is new, all in one
    /// set of effects (at most one push per peer).
    pub fn set_originated(
        &mut self,
        prefixes: BTreeSet<Ipv6Net>,
        tunnels: BTreeSet<TunnelOrigin>,
    ) -> Effects {
        let stale: Vec<Ipv6Net> =
            self.originated.difference(&prefixes).copied().collect();
        let stale_tunnels: Vec<TunnelOrigin> =
            self.originated_tunnels.difference(&tunnels).copied().collect();
        let mut pending = Pending::default();
        self.withdraw_originated_into(&mut pending, stale);
        self.withdraw_tunnels_into(&mut pending, stale_tunnels);
        self.originate_into(&mut pending, prefixes);
        self.originate_tunnels_into(&mut pending, tunnels);
        self.finish(pending)
    }

    fn originate_into(
        &mut self,
        pending: &mut Pending,
        prefixes: impl IntoIterator<Item = Ipv6Net>,
    ) {
        for p in prefixes {
            if self.originated.insert(p) {
                let pv = self.own_path(p);
                for id in self.peers.keys() {
                    pending.announce_path(*id, pv.clone());
                }
            }
        }
    }

    fn withdraw_originated_into(
        &mut self,
        pending: &mut Pending,
        prefixes: impl IntoIterator<Item = Ipv6Net>,
    ) {
        for p in prefixes {
            if self.originated.remove(&p) {
                let pv = self.own_path(p);
                for id in self.peers.keys() {
                    pending.withdraw_path(*id, pv.clone());
                }
            }
        }
    }

    fn originate_tunnels_into(
        &mut self,
        pending: &mut Pending,
        origins: impl IntoIterator<Item = TunnelOrigin>,
    ) {
        for t in origins {
            if self.originated_tunnels.contains(&t) {
                continue;
            }
            let holders = self.tunnel_holders(&t, Source::Local);
            self.originated_tunnels.insert(t);
            for to in self.targets(Source::Local, holders) {
                pending.announce_tunnel(to, t);
            }
        }
    }

    fn withdraw_tunnels_into(
        &mut self,
        pending: &mut Pending,
        origins: impl IntoIterator<Item = TunnelOrigin>,
    ) {
        for t in origins {
            if !self.originated_tunnels.remove(&t) {
                continue;
            }
            let holders = self.tunnel_holders(&t, Source::Local);
            for to in self.targets(Source::Local, holders) {
                pending.withdraw_tunnel(to, t);
            }
        }
    }

    /// A peer entered exchange. Updates are accepted from it, and pushed to
    /// it, from now on. Calling it again only updates the kind.
    pub fn peer_up(&mut self, peer: PeerId, kind: RouterKind) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.kind = kind;
            return;
        }
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(peer);
                free
            }
            None => {
                self.slots.push(Some(peer));
                self.slots.len() - 1
            }
        };
        let slot = Slot::try_from(slot).expect("fewer than 2^32 peers");
        self.peers.insert(
            peer,
            PeerState {
                slot,
                kind,
                paths: 0,
                destinations: 0,
                tunnels: BTreeSet::new(),
            },
        );
    }

    /// A peer expired: forget everything learned from it (and, on a transit
    /// router, withdraw it from the other peers). Unknown peers are ignored.
    pub fn peer_down(&mut self, peer: PeerId) -> Effects {
        let mut pending = Pending::default();
        let Some(state) = self.peers.remove(&peer) else {
            return Effects::default();
        };
        let from = Source::Peer(peer);
        let slot = state.slot;
        let transit = self.kind == RouterKind::Transit;
        let mut gone: Vec<Path> = Vec::with_capacity(state.paths);
        let mut readvertise: Vec<(Ipv6Net, Vec<Offer>, Vec<Offer>)> =
            Vec::new();
        if state.paths > 0 {
            let touched = &mut pending.touched;
            let slots = &self.slots;
            self.routes.retain(|dest, offers| {
                if !offers.has_peer(slot) {
                    return true;
                }
                let before = offers.nexthops(|s| hop(slots, s));
                let adv_before = if transit {
                    offers.advertised(MAX_ADVERTISED_PATHS)
                } else {
                    Vec::new()
                };
                offers.remove_peer(slot, |path| gone.push(path));
                touched
                    .push(RouteUpdate { destination: *dest, nexthops: before });
                if transit {
                    let adv_after = offers.advertised(MAX_ADVERTISED_PATHS);
                    readvertise.push((*dest, adv_before, adv_after));
                }
                !offers.is_empty()
            });
        }
        for (dest, before, after) in readvertise {
            self.readvertise(dest, &before, &after, &mut pending);
        }
        for path in gone {
            self.interner.release(path);
        }
        for t in state.tunnels {
            self.tunnel_remove(t, peer.addr, &mut pending);
            if self.kind == RouterKind::Transit {
                let holders = self.tunnel_holders(&t, from);
                for to in self.targets(from, holders) {
                    pending.withdraw_tunnel(to, t);
                }
            }
        }
        // Nothing in the table names the slot any more.
        self.slots[slot as usize] = None;
        self.finish(pending)
    }

    /// Apply an update pushed by `peer`.
    ///
    /// Withdrawals are applied before announcements, so an item in both
    /// ends up announced. Prefixes have their host bits cleared.
    pub fn import(
        &mut self,
        peer: PeerId,
        update: Update,
    ) -> Result<Effects, RibError> {
        if !self.peers.contains_key(&peer) {
            return Err(RibError::UnknownPeer(peer));
        }
        let mut pending = Pending::default();
        if let Some(u) = update.underlay {
            for pv in u.withdraw {
                self.underlay_withdraw(peer, pv, &mut pending);
            }
            for pv in u.announce {
                self.underlay_announce(peer, pv, &mut pending);
            }
        }
        if let Some(t) = update.tunnel {
            for o in t.withdraw {
                self.tunnel_withdraw(peer, o, &mut pending);
            }
            for o in t.announce {
                self.tunnel_announce(peer, o, &mut pending);
            }
        }
        Ok(self.finish(pending))
    }

    /// Apply the answer to a pull from `peer`: it is everything the peer
    /// offers, so whatever we held from it and it no longer lists goes.
    pub fn import_pull(
        &mut self,
        peer: PeerId,
        response: PullResponse,
    ) -> Result<Effects, RibError> {
        let response = response.normalised();
        let Some(state) = self.peers.get(&peer) else {
            return Err(RibError::UnknownPeer(peer));
        };
        let announce = response.underlay.unwrap_or_default();
        let tunnels = response.tunnel.unwrap_or_default();
        let mut withdraw = BTreeSet::new();
        if state.paths > 0 {
            let slot = state.slot;
            for (d, offers) in self.routes.iter() {
                for o in offers.as_slice().iter().filter(|o| o.peer == slot) {
                    let pv = path_vector(*d, &o.path);
                    if !announce.contains(&pv) {
                        withdraw.insert(pv);
                    }
                }
            }
        }
        let withdraw_tunnels: BTreeSet<TunnelOrigin> =
            state.tunnels.difference(&tunnels).copied().collect();
        let update = Update {
            underlay: Some(ddm_proto::wire::v3::UnderlayUpdate {
                announce,
                withdraw,
            }),
            tunnel: Some(ddm_proto::wire::v3::TunnelUpdate {
                announce: tunnels,
                withdraw: withdraw_tunnels,
            }),
        };
        self.import(peer, update)
    }

    /// What to answer a pull from `peer`: what we originate and, on a
    /// transit router, the shortest paths imported from other peers (path
    /// extended with our hostname). Never what came from `peer` itself.
    pub fn pull_response_for(&self, peer: PeerId) -> PullResponse {
        let view = self.view_for(peer).to_wire();
        PullResponse {
            underlay: Some(
                view.underlay.map(|u| u.announce).unwrap_or_default(),
            ),
            tunnel: Some(view.tunnel.map(|t| t.announce).unwrap_or_default()),
        }
    }

    /// Everything `peer` should have from us, in the compact form of a
    /// push that announces it: what a pull from it is answered with.
    pub fn view_for(&self, peer: PeerId) -> OutUpdate {
        let mut view = OutUpdate::default();
        let under = view.underlay_mut();
        under.announce =
            self.originated.iter().map(|p| self.own_path(*p)).collect();
        let mut tunnel = self.originated_tunnels.clone();
        if self.kind == RouterKind::Transit {
            let slot = self.peers.get(&peer).map(|p| p.slot);
            for (d, offers) in self.routes.iter() {
                for o in offers
                    .advertised(MAX_ADVERTISED_PATHS)
                    .iter()
                    .filter(|o| Some(o.peer) != slot)
                {
                    under.announce.insert(self.extended(*d, &o.path));
                }
            }
            for (id, state) in &self.peers {
                if *id != peer {
                    tunnel.extend(state.tunnels.iter().copied());
                }
            }
        }
        view.tunnel_mut().announce = tunnel;
        view
    }

    // ---- underlay ----

    fn underlay_announce(
        &mut self,
        peer: PeerId,
        pv: PathVector,
        pending: &mut Pending,
    ) {
        if pv.path.is_empty() {
            self.stats.invalid_dropped += 1;
            return;
        }
        if pv.path.iter().any(|h| **h == *self.hostname) {
            self.stats.loops_dropped += 1;
            return;
        }
        let dest = normalise_v6(pv.destination);
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let slot = state.slot;
        let transit = self.kind == RouterKind::Transit;
        let path = self.interner.intern(&pv.path);
        let offer = Offer { peer: slot, path: Arc::clone(&path) };
        let slots = &self.slots;
        let (before, adv_before, adv_after, new_dest) =
            match self.routes.shard_mut(&dest).entry(dest) {
                Entry::Vacant(v) => {
                    let offers = v.insert(Offers::One(offer));
                    let after = if transit {
                        offers.advertised(MAX_ADVERTISED_PATHS)
                    } else {
                        Vec::new()
                    };
                    (Nexthops::new(), Vec::new(), after, true)
                }
                Entry::Occupied(mut o) => {
                    let offers = o.get_mut();
                    let had = offers.has_peer(slot);
                    let before = offers.nexthops(|s| hop(slots, s));
                    let adv_before = if transit {
                        offers.advertised(MAX_ADVERTISED_PATHS)
                    } else {
                        Vec::new()
                    };
                    if !offers.insert(offer) {
                        // Already known: idempotent.
                        self.interner.release(path);
                        return;
                    }
                    let adv_after = if transit {
                        offers.advertised(MAX_ADVERTISED_PATHS)
                    } else {
                        Vec::new()
                    };
                    (before, adv_before, adv_after, !had)
                }
            };
        state.paths += 1;
        if new_dest {
            state.destinations += 1;
        }
        pending
            .touched
            .push(RouteUpdate { destination: dest, nexthops: before });
        if transit {
            self.readvertise(dest, &adv_before, &adv_after, pending);
        }
    }

    fn underlay_withdraw(
        &mut self,
        peer: PeerId,
        pv: PathVector,
        pending: &mut Pending,
    ) {
        let Some(path) = self.interner.lookup(&pv.path) else {
            return;
        };
        let dest = normalise_v6(pv.destination);
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(offers) = self.routes.shard_mut(&dest).get_mut(&dest) else {
            return;
        };
        let transit = self.kind == RouterKind::Transit;
        let slot = state.slot;
        let before = offers.nexthops(|s| hop(&self.slots, s));
        let adv_before = if transit {
            offers.advertised(MAX_ADVERTISED_PATHS)
        } else {
            Vec::new()
        };
        let Some(stored) = offers.remove(slot, &path) else {
            return;
        };
        // Only `stored` may keep the path alive now (see `release`).
        drop(path);
        state.paths -= 1;
        if !offers.has_peer(slot) {
            state.destinations -= 1;
        }
        let adv_after = if transit {
            offers.advertised(MAX_ADVERTISED_PATHS)
        } else {
            Vec::new()
        };
        if offers.is_empty() {
            self.routes.remove(&dest);
        }
        pending
            .touched
            .push(RouteUpdate { destination: dest, nexthops: before });
        if transit {
            self.readvertise(dest, &adv_before, &adv_after, pending);
        }
        drop(adv_before);
        self.interner.release(stored);
    }

    /// Tell every peer how our re-announcement of `dest` changed from
    /// `before` to `after` (the advertised offers, see
    /// [`Offers::advertised`]). A peer hears of every advertised path but
    /// those it offered itself; it is told only what changes for it.
    fn readvertise(
        &self,
        dest: Ipv6Net,
        before: &[Offer],
        after: &[Offer],
        pending: &mut Pending,
    ) {
        if before.len() == after.len()
            && before
                .iter()
                .zip(after)
                .all(|(a, b)| a.peer == b.peer && a.path == b.path)
        {
            return;
        }
        for (id, state) in &self.peers {
            let seen = |offers: &[Offer], path: &Path| {
                offers.iter().any(|o| o.peer != state.slot && o.path == *path)
            };
            for o in before.iter().filter(|o| o.peer != state.slot) {
                if !seen(after, &o.path) {
                    pending.withdraw_path(*id, self.extended(dest, &o.path));
                }
            }
            for o in after.iter().filter(|o| o.peer != state.slot) {
                if !seen(before, &o.path) {
                    pending.announce_path(*id, self.extended(dest, &o.path));
                }
            }
        }
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

    fn tunnel_announce(
        &mut self,
        peer: PeerId,
        t: TunnelOrigin,
        pending: &mut Pending,
    ) {
        let t = TunnelOrigin {
            overlay_prefix: normalise_ip(t.overlay_prefix),
            ..t
        };
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if !state.tunnels.insert(t) {
            return;
        }
        let entry = TunnelEntry { origin: t, nexthop: peer.addr };
        *self.tunnel_refs.entry(entry).or_insert(0) += 1;
        pending.tunnel_prefixes.insert(t.overlay_prefix);
        if self.kind == RouterKind::Transit {
            let from = Source::Peer(peer);
            let holders = self.tunnel_holders(&t, from);
            for to in self.targets(from, holders) {
                pending.announce_tunnel(to, t);
            }
        }
    }

    fn tunnel_withdraw(
        &mut self,
        peer: PeerId,
        t: TunnelOrigin,
        pending: &mut Pending,
    ) {
        let t = TunnelOrigin {
            overlay_prefix: normalise_ip(t.overlay_prefix),
            ..t
        };
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if !state.tunnels.remove(&t) {
            return;
        }
        self.tunnel_remove(t, peer.addr, pending);
        if self.kind == RouterKind::Transit {
            let from = Source::Peer(peer);
            let holders = self.tunnel_holders(&t, from);
            for to in self.targets(from, holders) {
                pending.withdraw_tunnel(to, t);
            }
        }
    }

    fn tunnel_remove(
        &mut self,
        t: TunnelOrigin,
        nexthop: Ipv6Addr,
        pending: &mut Pending,
    ) {
        let entry = TunnelEntry { origin: t, nexthop };
        match self.tunnel_refs.get_mut(&entry) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.tunnel_refs.remove(&entry);
                pending.tunnel_prefixes.insert(t.overlay_prefix);
            }
            None => {}
        }
    }

    /// Which sources other than `except` offer `t` to our peers: we do if
    /// we originate it; peers do only on a transit router.
    fn tunnel_holders(&self, t: &TunnelOrigin, except: Source) -> Holders {
        let mut h = Holders::None;
        if except != Source::Local && self.originated_tunnels.contains(t) {
            h = h.add(Source::Local);
        }
        if self.kind == RouterKind::Transit {
            for (id, state) in &self.peers {
                if h == Holders::Many {
                    break;
                }
                if Source::Peer(*id) != except && state.tunnels.contains(t) {
                    h = h.add(Source::Peer(*id));
                }
            }
        }
        h
    }

    /// The tunnel routes of `prefix` selected by metric.
    fn select_tunnels(&self, prefix: IpNet) -> BTreeSet<TunnelEntry> {
        let candidates: Vec<TunnelEntry> =
            entries_of(&self.tunnel_refs, prefix).map(|(e, _)| *e).collect();
        let positive: BTreeSet<TunnelEntry> = candidates
            .iter()
            .filter(|e| e.origin.metric > 0)
            .copied()
            .collect();
        if positive.is_empty() {
            candidates.into_iter().collect()
        } else {
            positive
        }
    }

    // ---- redistribution and results ----

    /// The peers whose view of an item changes when `changer` starts or
    /// stops offering it, given the other sources that offer it.
    ///
    /// A peer hears of an item while some source other than itself offers
    /// it. With no other source, every peer but the changer is affected;
    /// with exactly one other peer, only that peer (it had no other source);
    /// otherwise nobody.
    fn targets(&self, changer: Source, holders: Holders) -> Vec<PeerId> {
        match holders {
            Holders::None => self
                .peers
                .keys()
                .filter(|id| Source::Peer(**id) != changer)
                .copied()
                .collect(),
            Holders::One(Source::Peer(r)) => vec![r],
            Holders::One(Source::Local) | Holders::Many => Vec::new(),
        }
    }

    fn finish(&mut self, pending: Pending) -> Effects {
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

/// The smallest tunnel entry of `prefix`, to start range scans from.
fn first_entry(prefix: IpNet) -> TunnelEntry {
    TunnelEntry {
        origin: TunnelOrigin {
            overlay_prefix: prefix,
            boundary_addr: Ipv6Addr::UNSPECIFIED,
            vni: 0,
            metric: 0,
        },
        nexthop: Ipv6Addr::UNSPECIFIED,
    }
}

fn entries_of(
    map: &BTreeMap<TunnelEntry, u32>,
    prefix: IpNet,
) -> impl Iterator<Item = (&TunnelEntry, &u32)> {
    map.range(first_entry(prefix)..)
        .take_while(move |(e, _)| e.origin.overlay_prefix == prefix)
}

fn entries_of_set(
    set: &BTreeSet<TunnelEntry>,
    prefix: IpNet,
) -> impl Iterator<Item = &TunnelEntry> {
    set.range(first_entry(prefix)..)
        .take_while(move |e| e.origin.overlay_prefix == prefix)
}
