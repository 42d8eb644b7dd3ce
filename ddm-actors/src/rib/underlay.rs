//! Underlay paths: announcing, withdrawing and re-advertising them.

use super::*;

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
        let seed = self.readvertise_seed();
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let slot = state.slot;
        let transit = self.kind == RouterKind::Transit;
        let path = self.interner.intern(path);
        let offer = Offer { peer: slot, path: Arc::clone(&path) };
        let slots = &self.slots;
        let (before, adv_before, adv_after, new_dest) =
            match self.routes.shard_mut(&dest).entry(dest) {
                Entry::Vacant(v) => {
                    let offers = v.insert(Offers::One(offer));
                    let after = offers.advertised(seed, &dest);
                    (Nexthops::new(), Vec::new(), after, true)
                }
                Entry::Occupied(mut o) => {
                    let offers = o.get_mut();
                    let had = offers.has_peer(slot);
                    if path.len() > offers.shortest_len() {
                        // Longer than a path held: neither the ECMP set nor
                        // what is re-announced changes (a spine hears
                        // every other rack's detour of each destination).
                        if !offers.insert(offer) {
                            self.interner.release(path);
                            return;
                        }
                        state.paths += 1;
                        if !had {
                            state.destinations += 1;
                        }
                        return;
                    }
                    let before = offers.nexthops(|s| hop(slots, s));
                    let adv_before = offers.advertised(seed, &dest);
                    if !offers.insert(offer) {
                        // Already known: idempotent.
                        self.interner.release(path);
                        return;
                    }
                    let adv_after = offers.advertised(seed, &dest);
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

    pub(super) fn underlay_withdraw(
        &mut self,
        peer: PeerId,
        withdrawn: &OutPath,
        pending: &mut Pending,
    ) {
        let Some(path) = self.interner.lookup(&withdrawn.hostnames()) else {
            return;
        };
        let dest = normalise_v6(withdrawn.destination());
        let seed = self.readvertise_seed();
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(offers) = self.routes.shard_mut(&dest).get_mut(&dest) else {
            return;
        };
        let transit = self.kind == RouterKind::Transit;
        let slot = state.slot;
        // A path longer than the shortest held changes neither the ECMP set
        // nor what is re-announced.
        let longer = path.len() > offers.shortest_len();
        let (before, adv_before) = if longer {
            (Nexthops::new(), Vec::new())
        } else {
            (
                offers.nexthops(|s| hop(&self.slots, s)),
                offers.advertised(seed, &dest),
            )
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
        if longer {
            self.interner.release(stored);
            return;
        }
        let adv_after = offers.advertised(seed, &dest);
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
    /// `before` to `after` (the ranked candidates, see
    /// [`Offers::advertised`]; a peer hears what [`for_peer`] picks for
    /// it); it is told only what changes for it.
    pub(super) fn readvertise(
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
                for_peer(offers, state.slot).any(|o| o.path == *path)
            };
            for o in for_peer(before, state.slot) {
                if !seen(after, &o.path) {
                    pending.withdraw_path(*id, self.extended(dest, &o.path));
                }
            }
            for o in for_peer(after, state.slot) {
                if !seen(before, &o.path) {
                    pending.announce_path(*id, self.extended(dest, &o.path));
                }
            }
        }
    }
}
