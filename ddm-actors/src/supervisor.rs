//! The supervisor: starts, watches and restarts every other actor.
//!
//! It always starts the [admin](crate::admin) actor. Unless the daemon runs
//! admin-only, it also starts the router and one discovery actor per
//! interface, spawns an exchange actor for each peer discovery reports and
//! stops it when the peer goes away, and forwards link events (carrier
//! loss, links coming back) to the discovery actor of that interface. It
//! keeps the one record per peer that `GET /peers` reports.
//!
//! A child that fails is restarted after a back-off that doubles with each
//! consecutive failure. An exchange actor that fails (or reports that its
//! peer stopped answering) is not restarted directly: the peer is expired,
//! and discovery brings it back, with a fresh exchange actor, once it
//! advertises again.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ddm_admin_api::latest::PeerInfo;
use ddm_admin_api::PeerMap;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort,
    SupervisionEvent,
};
use slog::{error, info, o, warn, Logger};
use tokio::time::Instant;

use crate::admin::{Admin, AdminArgs, AdminMsg, AdminRef};
use crate::config::{DaemonConfig, InterfaceSpec};
use crate::dataplane::{Dataplane, DataplaneError};
use crate::discovery::{
    Discovery, DiscoveryArgs, DiscoveryEvent, DiscoveryMsg, DiscoveryRef,
    DiscoveryState, PacketIo, PeerIdentity,
};
use crate::exchange::actor::{
    Exchange, ExchangeArgs, ExchangeFailed, ExchangeRef,
};
use crate::exchange::transport::ExchangeTransport;
use crate::metrics::{CounterSources, StoreCounters};
use crate::rib::PeerId;
use crate::router::{Router, RouterArgs, RouterMsg, RouterRef};
use crate::store::Store;

/// A handle to the supervisor.
pub type SupervisorRef = ActorRef<SupervisorMsg>;

/// Makes the dataplane for each router started (it is made anew when the
/// router restarts).
pub type DataplaneFactory = Arc<
    dyn Fn(&Logger) -> Result<Box<dyn Dataplane>, DataplaneError> + Send + Sync,
>;

/// Makes the discovery packet I/O of an interface (UDP sockets in the
/// daemon, in-memory links in tests).
pub type PacketIoFactory =
    Arc<dyn Fn(&InterfaceSpec) -> PacketIo + Send + Sync>;

/// First restart delay of a failed child.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The children the supervisor restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Child {
    /// The admin API actor.
    Admin,
    /// The router.
    Router,
    /// The discovery actor of this interface (by name).
    Discovery(String),
}

/// Messages the supervisor handles.
pub enum SupervisorMsg {
    /// `GET /peers`: one entry per interface with a peer.
    GetPeers(RpcReplyPort<PeerMap<PeerInfo>>),
    /// `DELETE /peers/{addr}`: expire that peer now (no-op if unknown).
    ExpirePeer(Ipv6Addr, RpcReplyPort<()>),
    /// The current admin actor (it changes when restarted).
    GetAdmin(RpcReplyPort<AdminRef>),
    /// The current router, if one runs.
    GetRouter(RpcReplyPort<Option<RouterRef>>),
    /// Where the admin API listens.
    GetAdminAddr(RpcReplyPort<SocketAddr>),
    /// Every child that keeps counters, for the metrics listener.
    GetCounterSources(RpcReplyPort<CounterSources>),
    /// A restart back-off elapsed: start this child again.
    Restart(Child),
    /// A discovery actor reports on its interface.
    Discovery(DiscoveryEvent),
    /// An exchange actor gave up on its peer.
    ExchangeFailed(ExchangeFailed),
    /// The kernel reports a link change.
    #[cfg(all(target_os = "linux", feature = "netlink"))]
    Link(crate::netlink::LinkEvent),
}

impl From<DiscoveryEvent> for SupervisorMsg {
    fn from(e: DiscoveryEvent) -> Self {
        SupervisorMsg::Discovery(e)
    }
}

impl TryFrom<SupervisorMsg> for DiscoveryEvent {
    type Error = SupervisorMsg;
    fn try_from(m: SupervisorMsg) -> Result<Self, SupervisorMsg> {
        match m {
            SupervisorMsg::Discovery(e) => Ok(e),
            other => Err(other),
        }
    }
}

impl From<ExchangeFailed> for SupervisorMsg {
    fn from(e: ExchangeFailed) -> Self {
        SupervisorMsg::ExchangeFailed(e)
    }
}

impl TryFrom<SupervisorMsg> for ExchangeFailed {
    type Error = SupervisorMsg;
    fn try_from(m: SupervisorMsg) -> Result<Self, SupervisorMsg> {
        match m {
            SupervisorMsg::ExchangeFailed(e) => Ok(e),
            other => Err(other),
        }
    }
}

/// The supervisor actor.
pub struct Supervisor;

/// What the daemon hands the supervisor.
pub struct SupervisorArgs {
    /// The daemon's configuration.
    pub config: DaemonConfig,
    /// The opened store (opened by the caller so that an unusable data
    /// directory fails before anything starts).
    pub store: Store,
    /// Makes the router's dataplane (unused in admin-only mode).
    pub dataplane: Option<DataplaneFactory>,
    /// Makes each interface's discovery I/O.
    pub packet_io: PacketIoFactory,
    /// Watch the kernel's link events (Linux with netlink only).
    pub watch_links: bool,
    /// The exchange actors' network side (HTTP in a deployment).
    pub exchange_net: ExchangeTransport,
    /// Logger.
    pub log: Logger,
}

/// What the supervisor knows of the peer on one interface.
struct PeerRecord {
    /// The interface's name.
    ifname: String,
    /// Our link-local address there.
    local_addr: Ipv6Addr,
    /// The peer, once one advertised.
    peer: Option<PeerIdentity>,
    /// The interface's discovery state and since when.
    state: DiscoveryState,
    /// When the state was entered.
    since: Instant,
    /// The exchange actor while the peer is up.
    exchange: Option<ExchangeRef>,
}

/// The supervisor's state.
pub struct SupervisorState {
    /// Configuration.
    config: DaemonConfig,
    /// The store, handed to each admin actor started.
    store: Store,
    /// Store writes counted by the admin actors.
    store_counters: Arc<StoreCounters>,
    /// Makes dataplanes.
    dataplane: Option<DataplaneFactory>,
    /// Makes discovery I/O.
    packet_io: PacketIoFactory,
    /// The admin actor, while it runs.
    admin: Option<AdminRef>,
    /// Where the admin API listens; kept across restarts so the port
    /// does not change.
    admin_addr: SocketAddr,
    /// The router, while it runs.
    router: Option<RouterRef>,
    /// Discovery actors by interface name.
    discovery: BTreeMap<String, DiscoveryRef>,
    /// Peer records by interface index.
    peers: BTreeMap<u32, PeerRecord>,
    /// The link watcher and the task forwarding its events.
    link_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Consecutive failures per child, for the back-off.
    failures: BTreeMap<Child, u32>,
    /// Set once shutdown began: children that stop are not restarted.
    stopping: bool,
    /// The daemon's root logger, handed to children.
    root_log: Logger,
    /// The exchange actors' network side.
    exchange_net: ExchangeTransport,
    /// This actor's logger.
    log: Logger,
}

impl SupervisorState {
    async fn start_admin(
        &mut self,
        myself: &SupervisorRef,
    ) -> Result<(), ActorProcessingErr> {
        let args = AdminArgs {
            listen: self.admin_addr,
            store: self.store.clone(),
            supervisor: myself.clone(),
            router: self.router.clone(),
            store_counters: self.store_counters.clone(),
            log: self.root_log.clone(),
        };
        let (admin, _) =
            Actor::spawn_linked(None, Admin, args, myself.get_cell()).await?;
        let addr = ractor::call!(admin, AdminMsg::GetLocalAddr)?;
        self.admin_addr = addr;
        self.admin = Some(admin);
        Ok(())
    }

    async fn start_router(
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
            log: self.root_log.clone(),
        };
        let (router, _) =
            Actor::spawn_linked(None, Router, args, myself.get_cell()).await?;
        if let Some(admin) = &self.admin {
            let _ = admin.cast(AdminMsg::SetRouter(Some(router.clone())));
        }
        self.router = Some(router);
        // Exchange actors hold the router they were started with: peers
        // already up get fresh ones, which announce them to the new router
        // and pull their full sets again.
        let up: Vec<(u32, Ipv6Addr, PeerIdentity)> = self
            .peers
            .iter()
            .filter(|(_, r)| r.exchange.is_some())
            .filter_map(|(i, r)| Some((*i, r.local_addr, r.peer.clone()?)))
            .collect();
        for (ifindex, local_addr, peer) in up {
            if let Some(x) =
                self.peers.get_mut(&ifindex).and_then(|r| r.exchange.take())
            {
                let _ =
                    x.stop_and_wait(None, Some(Duration::from_secs(1))).await;
            }
            self.start_exchange(myself, ifindex, local_addr, &peer).await;
        }
        Ok(())
    }

    async fn start_discovery(
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

    async fn start_exchange(
        &mut self,
        myself: &SupervisorRef,
        ifindex: u32,
        local_addr: Ipv6Addr,
        peer: &PeerIdentity,
    ) {
        let Some(router) = self.router.clone() else {
            return;
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
                if let Some(rec) = self.peers.get_mut(&ifindex) {
                    rec.exchange = Some(x);
                }
            }
            Err(e) => {
                error!(self.log, "cannot start exchange; expiring peer";
                    "peer" => %id, "error" => %e);
                self.expire(&peer.addr);
            }
        }
    }

    /// Stop the exchange actor of a peer that went away (waiting, so its
    /// port is free for the next one) and tell the router.
    async fn stop_exchange(&mut self, ifindex: u32, addr: Ipv6Addr) {
        let x = self.peers.get_mut(&ifindex).and_then(|r| r.exchange.take());
        if let Some(x) = x {
            let _ = x
                .stop_and_wait(
                    Some("peer down".to_string()),
                    Some(Duration::from_secs(1)),
                )
                .await;
        }
        if let Some(router) = &self.router {
            let _ = router.cast(RouterMsg::PeerDown(PeerId { ifindex, addr }));
        }
    }

    /// Ask every discovery actor to expire the peer with this address.
    fn expire(&self, addr: &Ipv6Addr) {
        for d in self.discovery.values() {
            let _ =
                d.cast(DiscoveryMsg::ExpirePeer { addr: *addr, reply: None });
        }
    }

    async fn on_discovery(
        &mut self,
        myself: &SupervisorRef,
        e: DiscoveryEvent,
    ) {
        match e {
            DiscoveryEvent::Status { ifname, ifindex, state, since } => {
                let rec =
                    self.peers.entry(ifindex).or_insert_with(|| PeerRecord {
                        ifname: ifname.clone(),
                        local_addr: Ipv6Addr::UNSPECIFIED,
                        peer: None,
                        state,
                        since,
                        exchange: None,
                    });
                rec.ifname = ifname;
                rec.state = state;
                rec.since = since;
            }
            DiscoveryEvent::PeerUp { ifname, ifindex, local_addr, peer } => {
                info!(self.log, "peer up"; "interface" => &ifname,
                    "peer" => %peer.addr, "host" => &peer.hostname,
                    "kind" => %peer.kind, "version" => peer.version);
                // An interface re-created under a new index: forget the
                // records of its old index.
                self.peers.retain(|i, r| *i == ifindex || r.ifname != ifname);
                let rec =
                    self.peers.entry(ifindex).or_insert_with(|| PeerRecord {
                        ifname: ifname.clone(),
                        local_addr,
                        peer: None,
                        state: DiscoveryState::Exchange,
                        since: Instant::now(),
                        exchange: None,
                    });
                rec.local_addr = local_addr;
                let old = rec.peer.replace(peer.clone());
                if let Some(old) = old {
                    if rec.exchange.is_some() {
                        self.stop_exchange(ifindex, old.addr).await;
                    }
                }
                self.start_exchange(myself, ifindex, local_addr, &peer).await;
            }
            DiscoveryEvent::PeerDown { ifname, ifindex, peer } => {
                info!(self.log, "peer down"; "interface" => &ifname,
                    "peer" => %peer.addr, "host" => &peer.hostname);
                self.stop_exchange(ifindex, peer.addr).await;
            }
            DiscoveryEvent::PeerAddrChanged {
                ifname,
                ifindex,
                local_addr,
                old_addr,
                peer,
            } => {
                info!(self.log, "peer renumbered"; "interface" => &ifname,
                    "old" => %old_addr, "new" => %peer.addr);
                self.stop_exchange(ifindex, old_addr).await;
                if let Some(rec) = self.peers.get_mut(&ifindex) {
                    rec.peer = Some(peer.clone());
                    rec.local_addr = local_addr;
                }
                self.start_exchange(myself, ifindex, local_addr, &peer).await;
            }
        }
    }

    fn counter_sources(&self) -> CounterSources {
        CounterSources {
            discovery: self
                .discovery
                .iter()
                .map(|(name, d)| (name.clone(), d.clone()))
                .collect(),
            exchange: self
                .peers
                .iter()
                .filter_map(|(ifindex, r)| {
                    let x = r.exchange.clone()?;
                    let addr = r.peer.as_ref()?.addr;
                    Some((r.ifname.clone(), *ifindex, addr, x))
                })
                .collect(),
            router: self.router.clone(),
            admin: self.admin.clone(),
            store: self.store_counters.clone(),
        }
    }

    fn peer_map(&self) -> PeerMap<PeerInfo> {
        let now = Instant::now();
        self.peers
            .iter()
            .filter_map(|(ifindex, rec)| {
                let peer = rec.peer.as_ref()?;
                Some((
                    *ifindex,
                    PeerInfo {
                        status: rec
                            .state
                            .status(now.saturating_duration_since(rec.since)),
                        addr: peer.addr,
                        host: peer.hostname.clone(),
                        kind: peer.kind,
                    },
                ))
            })
            .collect()
    }

    fn which(&self, cell: &ActorCell) -> Option<Child> {
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

    fn exchange_of(&self, cell: &ActorCell) -> Option<(u32, Ipv6Addr)> {
        let id = cell.get_id();
        self.peers.iter().find_map(|(ifindex, rec)| {
            let x = rec.exchange.as_ref()?;
            let addr = rec.peer.as_ref()?.addr;
            (x.get_id() == id).then_some((*ifindex, addr))
        })
    }

    fn child_gone(
        &mut self,
        myself: &SupervisorRef,
        cell: &ActorCell,
        why: String,
    ) {
        if let Some((ifindex, addr)) = self.exchange_of(cell) {
            if let Some(rec) = self.peers.get_mut(&ifindex) {
                rec.exchange = None;
            }
            if !self.stopping {
                warn!(self.log, "exchange stopped; expiring its peer";
                    "peer" => %addr, "reason" => why);
                if let Some(router) = &self.router {
                    let _ = router
                        .cast(RouterMsg::PeerDown(PeerId { ifindex, addr }));
                }
                self.expire(&addr);
            }
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
        self.schedule_restart(myself, child);
    }

    /// Start `child` again after its back-off.
    fn schedule_restart(&mut self, myself: &SupervisorRef, child: Child) {
        let n = self.failures.entry(child.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let delay =
            BACKOFF_MIN.saturating_mul(1 << (*n - 1).min(16)).min(BACKOFF_MAX);
        info!(self.log, "restart scheduled";
            "child" => ?child, "failures" => *n,
            "delay_ms" => delay.as_millis() as u64);
        myself.send_after(delay, move || SupervisorMsg::Restart(child));
    }

    async fn restart(&mut self, myself: &SupervisorRef, child: Child) {
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
            Ok(()) => info!(self.log, "restarted"; "child" => ?child),
            Err(e) => {
                error!(self.log, "restart failed";
                    "child" => ?child, "error" => %e);
                self.schedule_restart(myself, child);
            }
        }
    }

    #[cfg(all(target_os = "linux", feature = "netlink"))]
    fn watch_links(&mut self, myself: &SupervisorRef) {
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
    fn watch_links(&mut self, _myself: &SupervisorRef) {
        warn!(
            self.log,
            "no link watcher on this platform; carrier loss \
            will be noticed only by the expiry timer"
        );
    }

    #[cfg(all(target_os = "linux", feature = "netlink"))]
    fn on_link(&mut self, e: crate::netlink::LinkEvent) {
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

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: SupervisorRef,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let log = args.log.new(o!("component" => "supervisor"));
        let mut state = SupervisorState {
            admin_addr: args.config.admin.listen,
            config: args.config,
            store: args.store,
            store_counters: Arc::new(StoreCounters::default()),
            dataplane: args.dataplane,
            packet_io: args.packet_io,
            admin: None,
            router: None,
            discovery: BTreeMap::new(),
            peers: BTreeMap::new(),
            link_tasks: Vec::new(),
            failures: BTreeMap::new(),
            stopping: false,
            root_log: args.log,
            exchange_net: args.exchange_net,
            log,
        };
        state.start_admin(&myself).await?;
        if state.config.admin_only {
            info!(
                state.log,
                "admin-only mode: no discovery, exchange or routing"
            );
            return Ok(state);
        }
        state.start_router(&myself).await?;
        if args.watch_links {
            state.watch_links(&myself);
        }
        for spec in state.config.router.interfaces.clone() {
            state.start_discovery(&myself, spec).await?;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: SupervisorRef,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        for t in state.link_tasks.drain(..) {
            t.abort();
        }
        let grace = Some(Duration::from_millis(300));
        for (_, d) in std::mem::take(&mut state.discovery) {
            let _ = d.stop_and_wait(None, grace).await;
        }
        for rec in state.peers.values_mut() {
            if let Some(x) = rec.exchange.take() {
                let _ = x.stop_and_wait(None, grace).await;
            }
        }
        // The router removes its routes as it stops.
        if let Some(router) = state.router.take() {
            let _ = router
                .stop_and_wait(None, Some(Duration::from_millis(600)))
                .await;
        }
        if let Some(admin) = state.admin.take() {
            let _ = admin.stop_and_wait(None, grace).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: SupervisorRef,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::GetPeers(reply) => {
                let _ = reply.send(state.peer_map());
            }
            SupervisorMsg::ExpirePeer(addr, reply) => {
                state.expire(&addr);
                let _ = reply.send(());
            }
            SupervisorMsg::GetAdmin(reply) => {
                if let Some(admin) = &state.admin {
                    let _ = reply.send(admin.clone());
                }
            }
            SupervisorMsg::GetRouter(reply) => {
                let _ = reply.send(state.router.clone());
            }
            SupervisorMsg::GetAdminAddr(reply) => {
                let _ = reply.send(state.admin_addr);
            }
            SupervisorMsg::GetCounterSources(reply) => {
                let _ = reply.send(state.counter_sources());
            }
            SupervisorMsg::Restart(child) => {
                state.restart(&myself, child).await;
            }
            SupervisorMsg::Discovery(e) => state.on_discovery(&myself, e).await,
            SupervisorMsg::ExchangeFailed(f) => {
                warn!(state.log, "peer stopped answering exchange; expiring";
                    "peer" => %f.peer);
                state.expire(&f.peer.addr);
            }
            #[cfg(all(target_os = "linux", feature = "netlink"))]
            SupervisorMsg::Link(e) => state.on_link(e),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: SupervisorRef,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let why = reason.unwrap_or_else(|| "stopped".to_string());
                state.child_gone(&myself, &cell, why);
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.child_gone(&myself, &cell, err.to_string());
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdminConfig, RouterConfig};
    use crate::dataplane::memory::MemoryDataplane;
    use crate::discovery::MemoryPort;
    use crate::store::StoreChange;
    use std::net::Ipv6Addr;

    fn log() -> Logger {
        Logger::root(slog::Discard, o!())
    }

    fn config(dir: &std::path::Path, admin_only: bool) -> DaemonConfig {
        DaemonConfig {
            admin_only,
            admin: AdminConfig {
                listen: SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
            },
            data_dir: dir.to_path_buf(),
            router: RouterConfig {
                hostname: "sup-test".to_string(),
                interfaces: vec!["ddmtest0".parse().unwrap()],
                ..Default::default()
            },
        }
    }

    async fn start(dir: &std::path::Path, admin_only: bool) -> SupervisorRef {
        let store = Store::open(dir).unwrap();
        let dp = MemoryDataplane::new();
        let factory: DataplaneFactory = Arc::new(move |_log: &Logger| {
            Ok(Box::new(dp.clone()) as Box<dyn Dataplane>)
        });
        let (a, _b) = MemoryPort::pair(
            (1, "fe80::1".parse().unwrap()),
            (2, "fe80::2".parse().unwrap()),
        );
        let packet_io: PacketIoFactory =
            Arc::new(move |_spec: &InterfaceSpec| PacketIo::Memory(a.clone()));
        let args = SupervisorArgs {
            config: config(dir, admin_only),
            store,
            dataplane: Some(factory),
            packet_io,
            watch_links: false,
            exchange_net: Default::default(),
            log: log(),
        };
        Actor::spawn(None, Supervisor, args).await.unwrap().0
    }

    /// Poll `f` until it yields `Some`, for at most ten seconds.
    async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn admin_only_starts_only_the_admin_actor() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(dir.path(), true).await;
        assert_eq!(sup.get_children().len(), 1);
        let admin = ractor::call!(sup, SupervisorMsg::GetAdmin).unwrap();
        assert_eq!(sup.get_children()[0].get_id(), admin.get_id());
        assert!(ractor::call!(sup, SupervisorMsg::GetRouter)
            .unwrap()
            .is_none());
        let peers = ractor::call!(sup, SupervisorMsg::GetPeers).unwrap();
        assert!(peers.is_empty());
        sup.stop_and_wait(None, None).await.unwrap();
    }

    #[tokio::test]
    async fn full_mode_starts_router_and_one_discovery_per_interface() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(dir.path(), false).await;
        // admin + router + one discovery actor
        assert_eq!(sup.get_children().len(), 3);
        assert!(ractor::call!(sup, SupervisorMsg::GetRouter)
            .unwrap()
            .is_some());
        sup.stop_and_wait(None, None).await.unwrap();
    }

    #[tokio::test]
    async fn a_killed_admin_is_restarted_on_the_same_port() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(dir.path(), true).await;
        let admin = ractor::call!(sup, SupervisorMsg::GetAdmin).unwrap();
        let addr = ractor::call!(admin, AdminMsg::GetLocalAddr).unwrap();
        admin.kill();
        let again = eventually("a new admin actor", || async {
            let a = ractor::call!(sup, SupervisorMsg::GetAdmin).ok()?;
            (a.get_id() != admin.get_id()).then_some(a)
        })
        .await;
        let addr2 = ractor::call!(again, AdminMsg::GetLocalAddr).unwrap();
        assert_eq!(addr, addr2);
        sup.stop_and_wait(None, None).await.unwrap();
    }

    #[tokio::test]
    async fn a_killed_router_is_restarted_and_gets_the_originated_set() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(dir.path(), false).await;
        let admin = ractor::call!(sup, SupervisorMsg::GetAdmin).unwrap();
        let prefix: oxnet::Ipv6Net = "fd00:7::/64".parse().unwrap();
        let change =
            StoreChange { add_prefixes: [prefix].into(), ..Default::default() };
        ractor::call!(admin, AdminMsg::Change, change).unwrap().unwrap();
        let router =
            ractor::call!(sup, SupervisorMsg::GetRouter).unwrap().unwrap();
        router.kill();
        let anyone = PeerId { ifindex: 0, addr: Ipv6Addr::UNSPECIFIED };
        eventually("the new router announces the stored prefix", || async {
            let r = ractor::call!(sup, SupervisorMsg::GetRouter).ok()??;
            if r.get_id() == router.get_id() {
                return None;
            }
            let pull = ractor::call!(r, RouterMsg::PullFor, anyone).ok()?;
            let announced = pull.underlay.unwrap_or_default();
            announced.iter().any(|pv| pv.destination == prefix).then_some(())
        })
        .await;
        sup.stop_and_wait(None, None).await.unwrap();
    }
}
