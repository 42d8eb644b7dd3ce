//! What this router originates: prefixes and tunnel endpoints, one at a
//! time or as a whole set ([`Rib::set_originated`]).

use super::*;

impl Rib {
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

    pub(super) fn originate_into(
        &mut self,
        pending: &mut Pending,
        prefixes: impl IntoIterator<Item = Ipv6Net>,
    ) {
        let mut added = BTreeSet::new();
        for p in prefixes {
            if !self.originated.contains(&p) && added.insert(p) {
                let pv = self.own_path(p);
                for id in self.peers.keys() {
                    pending.announce_path(*id, pv.clone());
                }
            }
        }
        extend_packed(&mut self.originated, added);
    }

    pub(super) fn withdraw_originated_into(
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

    pub(super) fn originate_tunnels_into(
        &mut self,
        pending: &mut Pending,
        origins: impl IntoIterator<Item = TunnelOrigin>,
    ) {
        for t in origins {
            if self.originated_tunnels.contains(&t) {
                continue;
            }
            self.originated_tunnels.insert(t);
            self.tell_tunnel(Source::Local, t, true, pending);
        }
    }

    pub(super) fn withdraw_tunnels_into(
        &mut self,
        pending: &mut Pending,
        origins: impl IntoIterator<Item = TunnelOrigin>,
    ) {
        for t in origins {
            if !self.originated_tunnels.remove(&t) {
                continue;
            }
            self.tell_tunnel(Source::Local, t, false, pending);
        }
    }
}
