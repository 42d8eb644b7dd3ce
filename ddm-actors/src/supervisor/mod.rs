//! The supervisor: starts, watches and restarts every other actor.
//!
//! It always starts the [admin](crate::admin) actor. Unless the daemon runs
//! admin-only, it also starts the router and one discovery actor per
//! interface, spawns an exchange actor for each peer discovery reports and
//! stops it when the peer goes away, and forwards link events (carrier
//! loss, links coming back) to the discovery actor of that interface. It
//! keeps the one record per peer that `GET /peers` reports in its peer
//! table ([`table::PeerTable`], pure: events in, [`table::Action`]s out),
//! and carries out the table's actions.
//!
//! A child that fails is restarted after a back-off that doubles with each
//! consecutive failure. An exchange actor that fails (or reports that its
//! peer stopped answering) is not restarted directly: the peer is expired,
//! and discovery brings it back, with a fresh exchange actor, once it
//! advertises again.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ddm_admin_api::latest::PeerInfo;
use ddm_admin_api::PeerMap;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort,
    SupervisionEvent,
};
use slog::{debug, error, info, o, warn, Logger};
use tokio::time::Instant;

use crate::admin::{
    Admin, AdminArgs, AdminMsg, AdminRef, PeerQuery, StatsIdentity,
};
use crate::config::{DaemonConfig, InterfaceSpec};
use crate::dataplane::{Dataplane, DataplaneError};
use crate::discovery::{
    Discovery, DiscoveryArgs, DiscoveryEvent, DiscoveryMsg, DiscoveryRef,
    PacketIo, PeerIdentity,
};
use crate::exchange::actor::{
    Exchange, ExchangeArgs, ExchangeFailed, ExchangeRef,
};
use crate::exchange::transport::ExchangeTransport;
use crate::rib::PeerId;
use crate::router::{
    originated_wait, DataplaneTurn, Router, RouterArgs, RouterMsg, RouterRef,
};
use crate::store::{Store, StoreCounters};

mod children;
mod peers;
pub mod table;

use table::{Action, PeerTable};

/// A handle to the supervisor.
pub type SupervisorRef = ActorRef<SupervisorMsg>;

/// How long stopping waits for the router, which ends its batch in the
/// kernel and then removes every route of ours (a million routes take
/// seconds): gone before, the runtime dropped the removal and the routes
/// stayed.
pub const ROUTER_STOP_GRACE: Duration = Duration::from_secs(30);

/// Makes the dataplane for each router started (it is made anew when the
/// router restarts).
pub type DataplaneFactory = Arc<
    dyn Fn(&Logger) -> Result<Box<dyn Dataplane>, DataplaneError> + Send + Sync,
>;

/// Makes the discovery packet I/O of an interface (UDP sockets in the
/// daemon, in-memory links in tests).
pub type PacketIoFactory =
    Arc<dyn Fn(&InterfaceSpec) -> PacketIo + Send + Sync>;

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
    /// Where the admin API listens (`None` without a listener).
    GetAdminAddr(RpcReplyPort<Option<SocketAddr>>),
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

/// Who to ask for counters, from the supervisor.
pub struct CounterSources {
    /// Discovery actors by interface name.
    pub discovery: Vec<(String, DiscoveryRef)>,
    /// Exchange actors: interface name, index, peer address, actor.
    pub exchange: Vec<(String, u32, Ipv6Addr, ExchangeRef)>,
    /// The router, if one runs.
    pub router: Option<RouterRef>,
    /// The statistics identity (`POST /enable-stats`), if set.
    pub identity: Option<ddm_admin_api::latest::EnableStatsRequest>,
    /// The store's counters.
    pub store: Arc<StoreCounters>,
}

impl From<PeerQuery> for SupervisorMsg {
    fn from(q: PeerQuery) -> Self {
        match q {
            PeerQuery::GetPeers(reply) => SupervisorMsg::GetPeers(reply),
            PeerQuery::ExpirePeer(addr, reply) => {
                SupervisorMsg::ExpirePeer(addr, reply)
            }
        }
    }
}

impl TryFrom<SupervisorMsg> for PeerQuery {
    type Error = SupervisorMsg;

    fn try_from(m: SupervisorMsg) -> Result<Self, SupervisorMsg> {
        match m {
            SupervisorMsg::GetPeers(reply) => Ok(PeerQuery::GetPeers(reply)),
            SupervisorMsg::ExpirePeer(addr, reply) => {
                Ok(PeerQuery::ExpirePeer(addr, reply))
            }
            other => Err(other),
        }
    }
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
    /// Set when the supervisor stopped without the router's routes all
    /// removed: not in time (set here), or a removal failed (set by the
    /// dataplane worker, through the turn); read by `ddmd` for its exit
    /// status.
    pub routes_left: Arc<std::sync::atomic::AtomicBool>,
    /// Logger.
    pub log: Logger,
}

/// The supervisor's state.
pub struct SupervisorState {
    /// Configuration.
    config: DaemonConfig,
    /// The store, handed to each admin actor started.
    store: Store,
    /// Store writes counted by the admin actors.
    store_counters: Arc<StoreCounters>,
    /// The statistics identity, kept across admin restarts like the store
    /// counters (the admin actor writes it, scrapes read it).
    stats_identity: StatsIdentity,
    /// Makes dataplanes.
    dataplane: Option<DataplaneFactory>,
    /// Passed from each router to the next (see [`DataplaneTurn`]).
    dataplane_turn: DataplaneTurn,
    /// Makes discovery I/O.
    packet_io: PacketIoFactory,
    /// The admin actor, while it runs.
    admin: Option<AdminRef>,
    /// Where the admin API listens; kept across restarts so the port
    /// does not change.
    admin_addr: Option<SocketAddr>,
    /// The router, while it runs.
    router: Option<RouterRef>,
    /// Discovery actors by interface name.
    discovery: BTreeMap<String, DiscoveryRef>,
    /// The peer table (pure): one record per interface.
    table: PeerTable,
    /// The exchange actor of each interface whose peer is up.
    exchanges: BTreeMap<u32, ExchangeRef>,
    /// The link watcher and the task forwarding its events.
    link_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Consecutive failures per child, for the back-off.
    failures: BTreeMap<Child, u32>,
    /// When each child was last restarted (successfully): one that ran
    /// [`children::RESTART_STABLE`] since failed anew, not again.
    restarted: BTreeMap<Child, Instant>,
    /// Set once shutdown began: children that stop are not restarted.
    stopping: bool,
    /// The daemon's root logger, handed to children.
    root_log: Logger,
    /// The exchange actors' network side.
    exchange_net: ExchangeTransport,
    /// This actor's logger.
    log: Logger,
    /// See [`SupervisorArgs::routes_left`].
    routes_left: Arc<std::sync::atomic::AtomicBool>,
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
            stats_identity: crate::admin::stats_identity(),
            dataplane: args.dataplane,
            dataplane_turn: DataplaneTurn::reporting(args.routes_left.clone()),
            packet_io: args.packet_io,
            admin: None,
            router: None,
            discovery: BTreeMap::new(),
            table: PeerTable::new(),
            exchanges: BTreeMap::new(),
            link_tasks: Vec::new(),
            failures: BTreeMap::new(),
            restarted: BTreeMap::new(),
            stopping: false,
            root_log: args.log,
            exchange_net: args.exchange_net,
            routes_left: args.routes_left,
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
        // No router starts after this: a failed router's worker still at
        // its removal removes everything, as at a clean stop.
        state.dataplane_turn.set_stopping();
        let grace = Some(Duration::from_millis(300));
        for (_, d) in std::mem::take(&mut state.discovery) {
            let _ = d.stop_and_wait(None, grace).await;
        }
        for (_, x) in std::mem::take(&mut state.exchanges) {
            let _ = x.stop_and_wait(None, grace).await;
        }
        // The router removes its routes as it stops; so does the worker
        // of one that failed, which may still be at it (stopped in the
        // failed router's back-off, there is no router to wait for).
        let removed = async {
            if let Some(router) = state.router.take() {
                let _ = router.stop_and_wait(None, None).await;
            }
            state.dataplane_turn.free().await;
        };
        if tokio::time::timeout(ROUTER_STOP_GRACE, removed).await.is_err() {
            warn!(state.root_log, "the router's routes were not removed in time";
                "waited_s" => ROUTER_STOP_GRACE.as_secs());
            state.routes_left.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // The link watcher goes last: while it runs, the routes' nexthop
        // objects stay in use. Stopped first, every batch the router took
        // meanwhile dumped and sent again every route of ours through an
        // object (as routes leave them once no watcher runs), only for
        // the removal to delete them.
        for t in state.link_tasks.drain(..) {
            t.abort();
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
                let _ = reply.send(state.table.peers(Instant::now()));
            }
            SupervisorMsg::ExpirePeer(addr, reply) => {
                let actions = state.table.expire(addr);
                state.run(&myself, actions).await;
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
                let current =
                    state.exchanges.get(&f.peer.ifindex).map(|x| x.get_id());
                if current != Some(f.exchange) {
                    debug!(state.log, "failure report of a replaced \
                        exchange; ignored"; "peer" => %f.peer);
                    return Ok(());
                }
                warn!(state.log, "peer stopped answering exchange; expiring";
                    "peer" => %f.peer);
                let actions = state.table.exchange_failed(f.peer);
                state.run(&myself, actions).await;
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
                state.child_gone(&myself, &cell, why).await;
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.child_gone(&myself, &cell, err.to_string()).await;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
