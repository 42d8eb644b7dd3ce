//! Starting the supervisor's children (admin, router, discovery), restarting
//! them after a back-off when they stop, and forwarding link events.

use super::*;

/// How long a restarted child must run for its next failure to count as a
/// first one: its back-off starts over at the shortest. Without it, the
/// count only grew over the daemon's life, and a child that failed seven
/// times in a month waited the longest back-off every time after.
pub(super) const RESTART_STABLE: Duration = Duration::from_secs(60);

/// The failure count a child's back-off uses when it fails again, after
/// `before` failures, having run `ran` since its last restart (`None`: it
/// was not restarted, or its last restart failed).
pub(super) fn failures_after(before: u32, ran: Option<Duration>) -> u32 {
    if ran.is_some_and(|r| r >= RESTART_STABLE) {
        1
    } else {
        before.saturating_add(1)
    }
}

impl SupervisorState {
    pub(super) async fn start_admin(
        &mut self,
        myself: &SupervisorRef,
    ) -> Result<(), ActorProcessingErr> {
        let args = AdminArgs {
            listen: self.admin_addr,
            store: self.store.clone(),
            supervisor: myself.get_derived(),
            router: self.router.clone(),
            store_counters: self.store_counters.clone(),
            stats: self.stats_identity.clone(),
            log: self.root_log.clone(),
        };
        let (admin, _) =
            Actor::spawn_linked(None, Admin, args, myself.get_cell()).await?;
        let addr = ractor::call!(admin, AdminMsg::GetLocalAddr)?;
        self.admin_addr = addr;
        self.admin = Some(admin);
        Ok(())
    }

    pub(super) async fn start_router(
        &mut self,
        myself: &SupervisorRef,
    ) -> Result<(), ActorProcessingErr> {
        let Some(factory) = &self.dataplane else {
            return Err("no dataplane configured".into());
        };
        let dataplane = factory(&self.root_log)?;
        let args = RouterArgs {
            hostname: self.config.router.hostname.clone(),
            kind: self.config.router.kind,
            dataplane,
            policy: self.config.router.policy.clone(),
            turn: self.dataplane_turn.clone(),
            // The admin actor hands every router started the originated
            // set (one in its back-off, when it starts again).
            await_originated: Some(originated_wait(
                self.config.router.exchange_timeout,
            )),
            log: self.root_log.clone(),
        };
        let (router, _) =
            Actor::spawn_linked(None, Router, args, myself.get_cell()).await?;
        if let Some(admin) = &self.admin {
            let _ = admin.cast(AdminMsg::SetRouter(Some(router.clone())));
        }
        self.router = Some(router);
        // Exchange actors hold the router they were started with: peers
        // already up get fresh ones.
        let actions = self.table.router_restarted();
        self.run(myself, actions).await;
        Ok(())
    }

    pub(super) async fn start_discovery(
        &mut self,
        myself: &SupervisorRef,
        spec: InterfaceSpec,
    ) -> Result<(), ActorProcessingErr> {
        let io = (self.packet_io)(&spec);
        let args = DiscoveryArgs::new(
            &self.config.router,
            spec.clone(),
            self.root_log.clone(),
            myself.get_derived(),
            io,
        );
        let (d, _) =
            Actor::spawn_linked(None, Discovery, args, myself.get_cell())
                .await?;
        self.discovery.insert(spec.ifname, d);
        Ok(())
    }

    pub(super) fn which(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        if self.admin.as_ref().is_some_and(|a| a.get_id() == id) {
            return Some(Child::Admin);
        }
        if self.router.as_ref().is_some_and(|r| r.get_id() == id) {
            return Some(Child::Router);
        }
        self.discovery
            .iter()
            .find(|(_, d)| d.get_id() == id)
            .map(|(name, _)| Child::Discovery(name.clone()))
    }

    /// The interface whose exchange actor this is.
    pub(super) fn exchange_of(&self, cell: &ActorCell) -> Option<u32> {
        let id = cell.get_id();
        self.exchanges
            .iter()
            .find_map(|(ifindex, x)| (x.get_id() == id).then_some(*ifindex))
    }

    pub(super) async fn child_gone(
        &mut self,
        myself: &SupervisorRef,
        cell: &ActorCell,
        why: String,
    ) {
        if let Some(ifindex) = self.exchange_of(cell) {
            self.exchanges.remove(&ifindex);
            let actions = self.table.exchange_stopped(ifindex, self.stopping);
            if !actions.is_empty() {
                warn!(self.log, "exchange stopped; expiring its peer";
                    "interface" => ifindex, "reason" => why);
            }
            self.run(myself, actions).await;
            return;
        }
        let Some(child) = self.which(cell) else {
            return;
        };
        match &child {
            Child::Admin => self.admin = None,
            Child::Router => {
                self.router = None;
                if let Some(admin) = &self.admin {
                    let _ = admin.cast(AdminMsg::SetRouter(None));
                }
            }
            Child::Discovery(name) => {
                self.discovery.remove(name);
            }
        }
        if self.stopping {
            return;
        }
        warn!(self.log, "child stopped"; "child" => ?child, "reason" => why);
        if let Child::Discovery(name) = &child {
            let actions = self.table.discovery_gone(name);
            self.run(myself, actions).await;
        }
        self.schedule_restart(myself, child);
    }

    /// Start `child` again after its back-off.
    pub(super) fn schedule_restart(
        &mut self,
        myself: &SupervisorRef,
        child: Child,
    ) {
        let ran = self.restarted.remove(&child).map(|t| t.elapsed());
        let n = self.failures.entry(child.clone()).or_insert(0);
        *n = failures_after(*n, ran);
        let delay = crate::timer::backoff(*n);
        info!(self.log, "restart scheduled";
            "child" => ?child, "failures" => *n,
            "delay_ms" => delay.as_millis() as u64);
        myself.send_after(delay, move || SupervisorMsg::Restart(child));
    }

    pub(super) async fn restart(
        &mut self,
        myself: &SupervisorRef,
        child: Child,
    ) {
        let result = match &child {
            Child::Admin if self.admin.is_none() => {
                self.start_admin(myself).await
            }
            Child::Router if self.router.is_none() => {
                self.start_router(myself).await
            }
            Child::Discovery(name) if !self.discovery.contains_key(name) => {
                let spec = self
                    .config
                    .router
                    .interfaces
                    .iter()
                    .find(|s| &s.ifname == name)
                    .cloned();
                match spec {
                    Some(spec) => self.start_discovery(myself, spec).await,
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => {
                info!(self.log, "restarted"; "child" => ?child);
                self.restarted.insert(child, Instant::now());
            }
            Err(e) => {
                error!(self.log, "restart failed";
                    "child" => ?child, "error" => %e);
                self.schedule_restart(myself, child);
            }
        }
    }

    #[cfg(all(target_os = "linux", feature = "netlink"))]
    pub(super) fn watch_links(&mut self, myself: &SupervisorRef) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        match crate::netlink::spawn_link_watcher(
            self.root_log.new(o!("component" => "link-watcher")),
            tx,
        ) {
            Ok(watcher) => {
                let me = myself.clone();
                let forward = tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        if me.cast(SupervisorMsg::Link(e)).is_err() {
                            break;
                        }
                    }
                });
                self.link_tasks.push(watcher);
                self.link_tasks.push(forward);
            }
            Err(e) => warn!(self.log, "cannot watch link events; carrier \
                loss will be noticed only by the expiry timer";
                "error" => %e),
        }
    }

    #[cfg(not(all(target_os = "linux", feature = "netlink")))]
    pub(super) fn watch_links(&mut self, _myself: &SupervisorRef) {
        warn!(
            self.log,
            "no link watcher on this platform; carrier loss \
            will be noticed only by the expiry timer"
        );
    }

    #[cfg(all(target_os = "linux", feature = "netlink"))]
    pub(super) fn on_link(&mut self, e: crate::netlink::LinkEvent) {
        use crate::netlink::LinkEvent;
        let (ifname, msg) = match e {
            LinkEvent::Up { ifname, .. } => (ifname, DiscoveryMsg::LinkUp),
            LinkEvent::Down { ifname, .. }
            | LinkEvent::Removed { ifname, .. } => {
                (ifname, DiscoveryMsg::LinkDown)
            }
            _ => return,
        };
        if let Some(d) = self.discovery.get(&ifname) {
            let _ = d.cast(msg);
        }
    }
}
