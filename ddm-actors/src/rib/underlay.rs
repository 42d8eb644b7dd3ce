//! Underlay paths: announcing, withdrawing and re-advertising them.

use super::*;
use ddm_proto::outgoing::{merge_into, OutUnderlay};
use hashbrown::hash_map::Entry;

/// What [`Rib::make_room`] found.
enum Room {
    /// The path may be held.
    Made,
    /// The peer offers as many paths to the destination as it may, none
    /// longer than this one.
    OverBound,
    /// The path would take the peer past its budget.
    OverBudget,
}

impl Rib {
    pub(super) fn underlay_announce(
        &mut self,
        peer: PeerId,
        announced: &OutPath,
        pending: &mut Pending,
    ) {
        let path = &*announced.hostnames();
        if path.is_empty() {
            self.stats.invalid_dropped += 1;
            return;
        }
        if path.iter().any(|h| **h == *self.hostname()) {
            self.stats.loops_dropped += 1;
            return;
        }
        let dest = normalise_v6(announced.destination());
        let cost = path_cost(path);
        match self.make_room(peer, dest, path, cost, pending) {
            Room::Made => {}
            Room::OverBound => {
                self.stats.paths_over_limit += 1;
                return;
            }
            Room::OverBudget => {
                self.stats.paths_over_budget += 1;
                return;
            }
        }
        let seed = self.readvertise_seed();
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let slot = state.slot;
        let transit = self.kind == RouterKind::Transit;
        let path = self.interner.intern(path);
        let offer = Offer { peer: slot, path: Arc::clone(&path) };
        let slots = &self.slots;
        // The ECMP set and the re-announced candidates before the path
        // joins, and after: none for a path longer than one held, which
        // changes neither (a spine hears every other rack's detour of
        // each destination).
        let (change, new_dest) = match self.routes.shard_mut(&dest).entry(dest)
        {
            Entry::Vacant(v) => {
                let offers = v.insert(Offers::One(offer));
                let after = offers.advertised(seed, &dest);
                (Some((Nexthops::new(), Vec::new(), after)), true)
            }
            Entry::Occupied(mut o) => {
                let offers = o.get_mut();
                let had = offers.has_peer(slot);
                let before = (path.len() <= offers.shortest_len()).then(|| {
                    (
                        offers.nexthops(|s| hop(slots, s)),
                        offers.advertised(seed, &dest),
                    )
                });
                if !offers.insert(offer) {
                    // Already known: idempotent.
                    self.interner.release(path);
                    return;
                }
                let change = before.map(|(nexthops, adv)| {
                    (nexthops, adv, offers.advertised(seed, &dest))
                });
                (change, !had)
            }
        };
        state.paths += 1;
        state.path_bytes += cost;
        if new_dest {
            state.destinations += 1;
        }
        let Some((before, adv_before, adv_after)) = change else {
            return;
        };
        pending
            .touched
            .push(RouteUpdate { destination: dest, nexthops: before });
        if transit {
            pending.readvertised.push((dest, adv_before, adv_after));
        }
    }

    /// Whether `peer` may offer one more path to `dest`, `path`, costing
    /// `cost` ([`path_cost`]): yes when it already offers `path`; under
    /// [`MAX_PATHS_PER_PEER`], when the cost keeps it within its budget
    /// ([`Rib::set_path_budget`]); at that bound, when `path` is shorter
    /// than its longest, which is withdrawn (and counted) to make room, and
    /// the budget holds once it is.
    fn make_room(
        &mut self,
        peer: PeerId,
        dest: Ipv6Net,
        path: &[Arc<str>],
        cost: usize,
        pending: &mut Pending,
    ) -> Room {
        let Some(state) = self.peers.get(&peer) else {
            return Room::Made;
        };
        let slot = state.slot;
        // Within the budget once `freed` bytes are let go.
        let budget = self.path_budget;
        let fits = |freed: usize| {
            state.path_bytes.saturating_sub(freed).saturating_add(cost)
                <= budget
        };
        let Some(offers) = self.routes.get(&dest) else {
            return if fits(0) { Room::Made } else { Room::OverBudget };
        };
        let mine = offers.of_peer(slot);
        if mine.iter().any(|o| **o.path == *path) {
            return Room::Made;
        }
        if mine.len() < MAX_PATHS_PER_PEER {
            return if fits(0) { Room::Made } else { Room::OverBudget };
        }
        // The last of the longest, so that the choice follows path order.
        let Some(longest) = mine.iter().max_by_key(|o| o.path.len()) else {
            return Room::Made;
        };
        if longest.path.len() <= path.len() {
            return Room::OverBound;
        }
        if !fits(path_cost(&longest.path)) {
            return Room::OverBudget;
        }
        // The stored path is the interned one: no lookup by its names.
        let evicted = Arc::clone(&longest.path);
        self.withdraw_interned(peer, dest, Some(evicted), pending);
        self.stats.paths_over_limit += 1;
        Room::Made
    }

    /// Withdraw `peer`'s path to `destination` whose hostnames' interned
    /// copy is `path` (`None`: no entry holds them, so nothing to do). A
    /// copy the interner has let go of since it was looked up is held by
    /// no entry either: nothing matches it.
    pub(super) fn withdraw_interned(
        &mut self,
        peer: PeerId,
        destination: Ipv6Net,
        path: Option<Path>,
        pending: &mut Pending,
    ) {
        let Some(path) = path else {
            return;
        };
        let dest = normalise_v6(destination);
        let seed = self.readvertise_seed();
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        // One probe of the table (the destination's entry), not a second
        // one to remove it: at 100,000 destinations nearly every probe
        // misses the cache.
        let Entry::Occupied(mut entry) =
            self.routes.shard_mut(&dest).entry(dest)
        else {
            return;
        };
        let offers = entry.get_mut();
        let transit = self.kind == RouterKind::Transit;
        let slot = state.slot;
        // A path longer than the shortest held changes neither the ECMP set
        // nor what is re-announced: nothing to compare before and after.
        let before = (path.len() <= offers.shortest_len()).then(|| {
            (
                offers.nexthops(|s| hop(&self.slots, s)),
                offers.advertised(seed, &dest),
            )
        });
        let Some(stored) = offers.remove(slot, &path) else {
            return;
        };
        // The interner counts its holders itself (see `release`): the
        // candidates kept for re-announcing may hold the path a while yet.
        state.path_bytes = state.path_bytes.saturating_sub(path_cost(&path));
        drop(path);
        state.paths -= 1;
        if !offers.has_peer(slot) {
            state.destinations -= 1;
        }
        if let Some((before, adv_before)) = before {
            let adv_after = offers.advertised(seed, &dest);
            if offers.is_empty() {
                entry.remove();
            }
            pending
                .touched
                .push(RouteUpdate { destination: dest, nexthops: before });
            if transit {
                pending.readvertised.push((dest, adv_before, adv_after));
            }
        }
        self.interner.release(stored);
    }

    /// Tell every peer how our re-announcements changed over one
    /// operation: each entry of `changes` is a destination and its ranked
    /// candidates before and after a step of it ([`Offers::advertised`]; a
    /// peer hears what [`for_peer`] picks for it). A destination changed
    /// in several steps is told once, from its first candidates to its
    /// last, and each peer only what changes for it.
    ///
    /// Done once per operation rather than per step and peer: each peer's
    /// changes come out in destination order and are built into its
    /// update's sets in one pass. Inserting them one by one into every
    /// peer's sets took a third of a transit's import (each insertion
    /// searches a B-tree node by node, comparing paths).
    pub(super) fn readvertise(
        &self,
        mut changes: Vec<Readvertised>,
        pending: &mut Pending,
    ) {
        if changes.is_empty() {
            return;
        }
        // Stable: a destination's steps stay in order.
        if !changes.is_sorted_by_key(|c| c.0) {
            changes.sort_by_key(|c| c.0);
        }
        changes.dedup_by(|later, first| {
            if later.0 != first.0 {
                return false;
            }
            first.2 = std::mem::take(&mut later.2);
            true
        });
        changes.retain(|(_, before, after)| {
            before.len() != after.len()
                || before
                    .iter()
                    .zip(after)
                    .any(|(a, b)| a.peer != b.peer || a.path != b.path)
        });
        if changes.is_empty() {
            return;
        }
        for (id, state) in &self.peers {
            let seen = |offers: &[Offer], path: &Path| {
                for_peer(offers, state.slot).any(|o| o.path == *path)
            };
            let (mut announce, mut withdraw) = (Vec::new(), Vec::new());
            for (dest, before, after) in &changes {
                for o in for_peer(before, state.slot) {
                    if !seen(after, &o.path) {
                        withdraw.push(self.extended(*dest, &o.path));
                    }
                }
                for o in for_peer(after, state.slot) {
                    if !seen(before, &o.path) {
                        announce.push(self.extended(*dest, &o.path));
                    }
                }
            }
            if announce.is_empty() && withdraw.is_empty() {
                continue;
            }
            // In destination order already: collected into sets in one
            // pass. Every announcement is fresh (it was not in the peer's
            // view before the operation), every withdrawal genuine.
            let told = OutUpdate {
                underlay: Some(OutUnderlay {
                    announce: announce.into_iter().collect(),
                    withdraw: withdraw.into_iter().collect(),
                    held: BTreeSet::new(),
                }),
                tunnel: None,
            };
            merge_into(&mut pending.pushes, *id, told);
        }
    }
}
