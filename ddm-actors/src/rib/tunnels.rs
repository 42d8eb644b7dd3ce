//! Tunnel endpoints: which candidates hold each overlay prefix, which are
//! selected, and who hears of a change.

use super::*;

impl Rib {
    pub(super) fn tunnel_announce(
        &mut self,
        peer: PeerId,
        t: TunnelOrigin,
        pending: &mut Pending,
    ) {
        let t = normalise_tunnel(t);
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
            self.tell_tunnel(Source::Peer(peer), t, true, pending);
        }
    }

    pub(super) fn tunnel_withdraw(
        &mut self,
        peer: PeerId,
        t: TunnelOrigin,
        pending: &mut Pending,
    ) {
        let t = normalise_tunnel(t);
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if !state.tunnels.remove(&t) {
            return;
        }
        self.tunnel_remove(t, peer.addr, pending);
        if self.kind == RouterKind::Transit {
            self.tell_tunnel(Source::Peer(peer), t, false, pending);
        }
    }

    pub(super) fn tunnel_remove(
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
    pub(super) fn tunnel_holders(
        &self,
        t: &TunnelOrigin,
        except: Source,
    ) -> Holders {
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
    pub(super) fn select_tunnels(
        &self,
        prefix: IpNet,
    ) -> BTreeSet<TunnelEntry> {
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

    /// Tell the peers whose view of `t` changes that `from` now offers it
    /// (`announce`) or no longer does.
    pub(super) fn tell_tunnel(
        &self,
        from: Source,
        t: TunnelOrigin,
        announce: bool,
        pending: &mut Pending,
    ) {
        let holders = self.tunnel_holders(&t, from);
        for to in self.targets(from, holders) {
            if announce {
                pending.announce_tunnel(to, t);
            } else {
                pending.withdraw_tunnel(to, t);
            }
        }
    }

    /// The peers whose view of an item changes when `changer` starts or
    /// stops offering it, given the other sources that offer it.
    ///
    /// A peer hears of an item while some source other than itself offers
    /// it. With no other source, every peer but the changer is affected;
    /// with exactly one other peer, only that peer (it had no other source);
    /// otherwise nobody.
    pub(super) fn targets(
        &self,
        changer: Source,
        holders: Holders,
    ) -> Vec<PeerId> {
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
}

/// The smallest tunnel entry of `prefix`, to start range scans from.
pub(super) fn first_entry(prefix: IpNet) -> TunnelEntry {
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

pub(super) fn entries_of(
    map: &BTreeMap<TunnelEntry, u32>,
    prefix: IpNet,
) -> impl Iterator<Item = (&TunnelEntry, &u32)> {
    map.range(first_entry(prefix)..)
        .take_while(move |(e, _)| e.origin.overlay_prefix == prefix)
}

pub(super) fn entries_of_set(
    set: &BTreeSet<TunnelEntry>,
    prefix: IpNet,
) -> impl Iterator<Item = &TunnelEntry> {
    set.range(first_entry(prefix)..)
        .take_while(move |e| e.origin.overlay_prefix == prefix)
}
