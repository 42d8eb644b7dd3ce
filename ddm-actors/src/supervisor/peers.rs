//! Carrying out the peer table's actions: starting and stopping exchange
//! actors, telling the router, expiring peers.

use super::*;

impl SupervisorState {
    /// Carry out the peer table's actions, in order (and those that their
    /// outcomes lead to).
    pub(super) async fn run(
        &mut self,
        myself: &SupervisorRef,
        actions: Vec<Action>,
    ) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::StartExchange { ifindex, local_addr, peer } => {
                    if !self
                        .start_exchange(myself, ifindex, local_addr, &peer)
                        .await
                    {
                        queue.extend(
                            self.table
                                .exchange_start_failed(ifindex, peer.addr),
                        );
                    }
                }
                Action::StopExchange { ifindex } => {
                    // Waiting, so that its port is free for the next one.
                    if let Some(x) = self.exchanges.remove(&ifindex) {
                        let _ = x
                            .stop_and_wait(
                                Some("peer down".to_string()),
                                Some(Duration::from_secs(1)),
                            )
                            .await;
                    }
                }
                Action::PeerDown(peer) => {
                    if let Some(router) = &self.router {
                        let _ = router.cast(RouterMsg::PeerDown(peer));
                    }
                }
                Action::InterfaceMoved { from, to } => {
                    if let Some(router) = &self.router {
                        let _ =
                            router.cast(RouterMsg::InterfaceMoved { from, to });
                    }
                }
                Action::Expire { ifname, addr } => {
                    self.expire(ifname.as_deref(), &addr)
                }
            }
        }
    }

    /// Start an exchange actor; false if that failed (without a router,
    /// none is started, which is not a failure).
    pub(super) async fn start_exchange(
        &mut self,
        myself: &SupervisorRef,
        ifindex: u32,
        local_addr: Ipv6Addr,
        peer: &PeerIdentity,
    ) -> bool {
        let Some(router) = self.router.clone() else {
            return true;
        };
        let id = PeerId { ifindex, addr: peer.addr };
        let mut args = ExchangeArgs::new(
            &self.config.router,
            ifindex,
            local_addr,
            peer,
            router.clone(),
            Some(myself.get_derived()),
            self.root_log.clone(),
        );
        args.transport = self.exchange_net.clone();
        match Actor::spawn_linked(None, Exchange, args, myself.get_cell()).await
        {
            // The exchange actor announces the peer to the router itself,
            // before anything it imports.
            Ok((x, _)) => {
                self.exchanges.insert(ifindex, x);
                self.table.exchange_started(ifindex);
                true
            }
            Err(e) => {
                error!(self.log, "cannot start exchange; expiring peer";
                    "peer" => %id, "error" => %e);
                false
            }
        }
    }

    /// Ask the discovery actor of `ifname` (every one, for `None`) to
    /// expire the peer with this address.
    pub(super) fn expire(&self, ifname: Option<&str>, addr: &Ipv6Addr) {
        let on = self
            .discovery
            .iter()
            .filter(|(name, _)| ifname.is_none_or(|n| n == name.as_str()));
        for (_, d) in on {
            let _ =
                d.cast(DiscoveryMsg::ExpirePeer { addr: *addr, reply: None });
        }
    }

    pub(super) async fn on_discovery(
        &mut self,
        myself: &SupervisorRef,
        e: DiscoveryEvent,
    ) {
        // An event queued by a discovery actor that failed since: its
        // failure is handled first (ractor gives supervision events
        // priority), which took its peer down, and its successor starts
        // after a back-off. Taken now, a `PeerUp` would start an exchange
        // for a peer no discovery actor knows, which nothing would ever
        // expire.
        if !self.discovery.contains_key(e.ifname()) {
            debug!(self.log, "event of a discovery actor that is gone; \
                dropped"; "interface" => e.ifname());
            return;
        }
        match &e {
            DiscoveryEvent::Status { .. } => {}
            DiscoveryEvent::PeerUp { ifname, peer, .. } => {
                info!(self.log, "peer up"; "interface" => ifname,
                    "peer" => %peer.addr, "host" => &peer.hostname,
                    "kind" => %peer.kind, "version" => peer.version);
            }
            DiscoveryEvent::PeerDown { ifname, peer, .. } => {
                info!(self.log, "peer down"; "interface" => ifname,
                    "peer" => %peer.addr, "host" => &peer.hostname);
            }
            DiscoveryEvent::PeerAddrChanged {
                ifname, old_addr, peer, ..
            } => {
                info!(self.log, "peer renumbered"; "interface" => ifname,
                    "old" => %old_addr, "new" => %peer.addr);
            }
        }
        let actions = self.table.on_discovery(e, Instant::now());
        self.run(myself, actions).await;
    }

    pub(super) fn counter_sources(&self) -> CounterSources {
        CounterSources {
            discovery: self
                .discovery
                .iter()
                .map(|(name, d)| (name.clone(), d.clone()))
                .collect(),
            exchange: self
                .exchanges
                .iter()
                .filter_map(|(ifindex, x)| {
                    let (ifname, addr) = self.table.peer_of(*ifindex)?;
                    Some((ifname.to_string(), *ifindex, addr, x.clone()))
                })
                .collect(),
            router: self.router.clone(),
            identity: *self.stats_identity.borrow(),
            store: self.store_counters.clone(),
        }
    }
}
