//! The paths imported for one destination.
//!
//! The RIB keeps one table keyed by destination; its value lists every
//! (peer, path) pair offering that destination. That single list answers
//! every question the RIB asks about a destination: which peers offer a
//! shortest path (its ECMP set), and which paths a transit re-announces.
//! Nearly every destination is offered by one peer along one path, so that
//! case is stored inline, without an allocation of its own. An offer is
//! 16 bytes: the peer's slot in the RIB's peer table and a thin pointer to
//! the interned path.

use oxnet::Ipv6Net;

use super::intern::Path;
use super::MAX_ADVERTISED_PATHS;
use crate::dataplane::{Nexthop, Nexthops};

/// A peer's index in the RIB's table of peers that are up.
pub(crate) type Slot = u32;

/// One imported path: the peer that offers it and its hostnames.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    /// Who announced it.
    pub(crate) peer: Slot,
    /// The interned path.
    pub(crate) path: Path,
}

impl Offer {
    fn key(&self) -> (Slot, &Path) {
        (self.peer, &self.path)
    }
}

/// Every path offered to one destination, ordered by peer slot, then path.
///
/// `One` exactly when there is a single offer; `Many` otherwise (empty only
/// transiently, before the table drops the destination). `Many` is boxed so
/// that the common `One` sets the size of every table entry.
#[derive(Debug)]
pub(crate) enum Offers {
    One(Offer),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Offer>>),
}

impl Offers {
    /// The offers, ordered by peer, then path.
    pub(crate) fn as_slice(&self) -> &[Offer] {
        match self {
            Offers::One(o) => std::slice::from_ref(o),
            Offers::Many(v) => v,
        }
    }

    /// True when nothing is offered any more.
    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    fn find(&self, peer: Slot, path: &Path) -> Result<usize, usize> {
        self.as_slice().binary_search_by(|o| o.key().cmp(&(peer, path)))
    }

    /// Add an offer; false (and nothing changes) if it is already there.
    pub(crate) fn insert(&mut self, offer: Offer) -> bool {
        let Err(at) = self.find(offer.peer, &offer.path) else {
            return false;
        };
        match self {
            Offers::Many(v) if v.is_empty() => *self = Offers::One(offer),
            Offers::Many(v) => v.insert(at, offer),
            Offers::One(_) => {
                let Offers::One(old) =
                    std::mem::replace(self, Offers::Many(Box::default()))
                else {
                    unreachable!("matched One above");
                };
                let mut v = Vec::with_capacity(2);
                v.push(old);
                v.insert(at, offer);
                *self = Offers::Many(Box::new(v));
            }
        }
        true
    }

    /// Remove `peer`'s offer of `path`; the stored path if it was there.
    pub(crate) fn remove(&mut self, peer: Slot, path: &Path) -> Option<Path> {
        let at = self.find(peer, path).ok()?;
        Some(self.remove_at(at).path)
    }

    fn remove_at(&mut self, at: usize) -> Offer {
        match self {
            Offers::One(_) => {
                let Offers::One(old) =
                    std::mem::replace(self, Offers::Many(Box::default()))
                else {
                    unreachable!("matched One above");
                };
                old
            }
            Offers::Many(v) => {
                let old = v.remove(at);
                if v.len() == 1 {
                    if let Some(last) = v.pop() {
                        *self = Offers::One(last);
                    }
                }
                old
            }
        }
    }

    /// Remove every offer of `peer`, handing each path to `gone`.
    pub(crate) fn remove_peer(
        &mut self,
        peer: Slot,
        mut gone: impl FnMut(Path),
    ) {
        while let Some(at) = self.as_slice().iter().position(|o| o.peer == peer)
        {
            gone(self.remove_at(at).path);
        }
    }

    /// Whether `peer` offers at least one path.
    pub(crate) fn has_peer(&self, peer: Slot) -> bool {
        !self.of_peer(peer).is_empty()
    }

    /// The offers of `peer` (ordered by path).
    pub(crate) fn of_peer(&self, peer: Slot) -> &[Offer] {
        let all = self.as_slice();
        let from = all.partition_point(|o| o.peer < peer);
        let to = all.partition_point(|o| o.peer <= peer);
        &all[from..to]
    }

    /// The length of the shortest offered path (0 when nothing is
    /// offered).
    pub(crate) fn shortest_len(&self) -> usize {
        self.as_slice().iter().map(|o| o.path.len()).min().unwrap_or(0)
    }

    /// The ECMP set: the nexthop of every peer offering a shortest path,
    /// `hop` giving a slot's. Longer paths stay stored (they take over when
    /// the shorter ones go) but are not forwarded over.
    pub(crate) fn nexthops(&self, hop: impl Fn(Slot) -> Nexthop) -> Nexthops {
        match self {
            Offers::One(o) => Nexthops::one(hop(o.peer)),
            Offers::Many(v) => {
                let min = self.shortest_len();
                v.iter()
                    .filter(|o| o.path.len() == min)
                    .map(|o| hop(o.peer))
                    .collect()
            }
        }
    }

    /// The candidates a transit router re-announces of `dest`: its shortest
    /// offers, ranked by a hash of `seed` (the router's own, from its
    /// hostname), the destination and the path (then the path, then the
    /// lowest slot). Each peer hears the first [`MAX_ADVERTISED_PATHS`] of
    /// them that it did not offer itself ([`for_peer`]). The ranking does
    /// not depend on the order in which offers arrived; it differs from
    /// destination to destination, so that a spine or transit going away
    /// touches only its share of the destinations (ranking by path order
    /// put the same spine first for all of them); and it differs between
    /// the transits of one rack, which hold the same candidates, so that
    /// one spine's death rarely takes the paths both of them announce.
    /// Without a seed (a server, which re-announces nothing): none.
    pub(crate) fn advertised(
        &self,
        seed: Option<u64>,
        dest: &Ipv6Net,
    ) -> Vec<Offer> {
        let Some(seed) = seed else {
            return Vec::new();
        };
        let min = self.shortest_len();
        let mut best: Vec<(u64, &Offer)> = self
            .as_slice()
            .iter()
            .filter(|o| o.path.len() == min)
            .map(|o| (0, o))
            .collect();
        if best.len() > 1 {
            // One candidate needs no ranking (and no hashing).
            for (h, o) in &mut best {
                *h = spread(seed, dest, &o.path);
            }
            best.sort_by(|a, b| {
                a.0.cmp(&b.0)
                    .then_with(|| a.1.path.cmp(&b.1.path))
                    .then(a.1.peer.cmp(&b.1.peer))
            });
        }
        best.into_iter().map(|(_, o)| o.clone()).collect()
    }
}

/// What the peer in `slot` hears of the ranked candidates `ranked`
/// ([`Offers::advertised`]): the first [`MAX_ADVERTISED_PATHS`] it did not
/// offer itself. The peer whose path ranks first still hears another
/// origin's or transit's path, as long as there is one. With no slot (not
/// a peer that is up), the first ones.
pub(crate) fn for_peer(
    ranked: &[Offer],
    slot: impl Into<Option<Slot>>,
) -> impl Iterator<Item = &Offer> + '_ {
    let slot = slot.into();
    ranked
        .iter()
        .filter(move |o| Some(o.peer) != slot)
        .take(MAX_ADVERTISED_PATHS)
}

/// A hash of a seed, a destination and a path.
fn spread(seed: u64, dest: &Ipv6Net, path: &Path) -> u64 {
    stable_hash(&(seed, dest, path))
}

/// A hash of `x`, the same in every process of one build (foldhash with a
/// fixed seed), so that choices made by it replay. It ranks every shortest
/// path of every destination on each change: std's SipHash took 2% of a
/// simulated fabric's cold start.
pub(crate) fn stable_hash(x: &impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0).hash_one(x)
}
