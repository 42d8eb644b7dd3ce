//! Peers coming and going, what they push and answer, and what each one
//! should hear from us.

use super::*;

impl Rib {
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
                path_bytes: 0,
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
        if state.paths > 0 {
            let seed = self.readvertise_seed();
            let touched = &mut pending.touched;
            let readvertised = &mut pending.readvertised;
            let slots = &self.slots;
            self.routes.retain(|dest, offers| {
                if !offers.has_peer(slot) {
                    return true;
                }
                let before = offers.nexthops(|s| hop(slots, s));
                let adv_before = offers.advertised(seed, dest);
                offers.remove_peer(slot, |path| gone.push(path));
                touched
                    .push(RouteUpdate { destination: *dest, nexthops: before });
                if transit {
                    let adv_after = offers.advertised(seed, dest);
                    readvertised.push((*dest, adv_before, adv_after));
                }
                !offers.is_empty()
            });
        }
        for path in gone {
            self.interner.release(path);
        }
        for t in state.tunnels {
            self.tunnel_remove(t, peer.addr, &mut pending);
            if self.kind == RouterKind::Transit {
                self.tell_tunnel(from, t, false, &mut pending);
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
        update: impl Into<OutUpdate>,
    ) -> Result<Effects, RibError> {
        if !self.peers.contains_key(&peer) {
            return Err(RibError::UnknownPeer(peer));
        }
        let update = update.into();
        let mut pending = Pending::default();
        if let Some(u) = update.underlay {
            // The interned copy of each path is looked up once per run of
            // paths sharing their storage (one origin's prefixes), not
            // hashed again for each.
            let mut last: Option<(&OutPath, Option<Path>)> = None;
            let mut ahead =
                u.withdraw.iter().map(|p| normalise_v6(p.destination()));
            for (i, p) in u.withdraw.iter().enumerate() {
                if i % table::WARM_AHEAD == 0 {
                    self.routes.warm(ahead.by_ref().take(table::WARM_AHEAD));
                }
                let path = match &last {
                    Some((q, path)) if q.shares_path(p) => path.clone(),
                    _ => {
                        let path = self.interner.lookup(&p.hostnames());
                        last = Some((p, path.clone()));
                        path
                    }
                };
                self.withdraw_interned(
                    peer,
                    p.destination(),
                    path,
                    &mut pending,
                );
            }
            for p in &u.announce {
                self.underlay_announce(peer, p, &mut pending);
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
        response: impl Into<OutPull>,
    ) -> Result<Effects, RibError> {
        let response = response.into().normalised();
        let Some(state) = self.peers.get(&peer) else {
            return Err(RibError::UnknownPeer(peer));
        };
        let announce = response.underlay.unwrap_or_default();
        let tunnels = response.tunnel.unwrap_or_default();
        let mut withdraw = BTreeSet::new();
        if state.paths > 0 {
            let slot = state.slot;
            for (d, offers) in self.routes.iter() {
                for o in offers.of_peer(slot) {
                    let p = OutPath::new(*d, Arc::clone(&o.path), None);
                    if !announce.contains(&p) {
                        withdraw.insert(p);
                    }
                }
            }
        }
        let withdraw_tunnels: BTreeSet<TunnelOrigin> =
            state.tunnels.difference(&tunnels).copied().collect();
        let update = OutUpdate {
            underlay: Some(ddm_proto::outgoing::OutUnderlay {
                announce,
                withdraw,
                held: BTreeSet::new(),
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
                let ranked = offers.advertised(Some(self.seed), d);
                for o in for_peer(&ranked, slot) {
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
}
