//! The router actor: owner of the RIB and of the dataplane it programs.
//!
//! Every input that changes routing state arrives here as a message: what
//! the admin actor originates or withdraws, peers coming and going (from
//! the supervisor), updates pushed by peers and answers to pulls (from the
//! exchange actors). The [`Rib`] turns each into effects, which the router
//! carries out in this order:
//!
//! 1. pushes to the exchange actors, so the rest of the fabric hears of the
//!    change before this router's own kernel work starts;
//! 2. route updates and the tunnel set to the dataplane worker, a task that
//!    owns the [`Dataplane`] and coalesces whatever queued while it was busy
//!    into one batch (latest set per destination wins).
//!
//! On stop the worker removes every route this router installed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ddm_admin_api::latest::{
    PathVector, RouterKind, TunnelOrigin, TunnelRoute,
};
use oxnet::Ipv6Net;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use slog::{debug, info, o, warn, Logger};
use tokio::sync::{mpsc, oneshot};

use crate::dataplane::{Dataplane, RouteUpdate, TunnelEntry};
use crate::exchange::actor::{ExchangeMsg, ExchangeRef};
use crate::exchange::wire::v3;
use crate::rib::{Effects, PeerId, Rib};

/// A handle to the router actor.
pub type RouterRef = ActorRef<RouterMsg>;

/// Messages the router actor handles.
pub enum RouterMsg {
    /// Make the originated set exactly this (sent by the admin actor whenever
    /// a router starts, so a restarted router catches up).
    SetOriginated {
        /// Every originated prefix.
        prefixes: BTreeSet<Ipv6Net>,
        /// Every originated tunnel endpoint.
        tunnels: BTreeSet<TunnelOrigin>,
    },
    /// Start originating these prefixes (already stored durably).
    Originate(BTreeSet<Ipv6Net>),
    /// Stop originating these prefixes (already removed from the store).
    Withdraw(BTreeSet<Ipv6Net>),
    /// Start originating these tunnel endpoints.
    OriginateTunnels(BTreeSet<TunnelOrigin>),
    /// Stop originating these tunnel endpoints.
    WithdrawTunnels(BTreeSet<TunnelOrigin>),
    /// Imported paths by nexthop, for `GET /prefixes`.
    GetPrefixes(RpcReplyPort<BTreeMap<String, BTreeSet<PathVector>>>),
    /// Imported tunnel endpoints, for `GET /tunnel_endpoints`.
    GetTunnelEndpoints(RpcReplyPort<BTreeSet<TunnelRoute>>),
    /// Re-pull every peer (`PUT /sync`).
    Sync,
    /// A peer entered exchange; `exchange` talks to it (from the
    /// supervisor).
    PeerUp {
        /// The peer.
        peer: PeerId,
        /// Its kind, from discovery.
        kind: RouterKind,
        /// Its exchange actor.
        exchange: ExchangeRef,
    },
    /// A peer went away: forget everything learned from it.
    PeerDown(PeerId),
    /// A peer pushed an update (from its exchange actor).
    Import {
        /// Who pushed.
        peer: PeerId,
        /// What it pushed, validated and in v3 form.
        update: v3::Update,
    },
    /// A pull of a peer's full set completed (from its exchange actor).
    PullResult {
        /// Who answered.
        peer: PeerId,
        /// Its full set.
        response: v3::PullResponse,
    },
    /// A peer pulls from us: answer with what it should hear.
    PullFor(PeerId, RpcReplyPort<v3::PullResponse>),
    /// The number of installed destinations, for tests and logs.
    GetRouteCount(RpcReplyPort<usize>),
}

/// Commands of the dataplane worker.
enum DataplaneCmd {
    /// Program these destinations.
    Apply(Vec<RouteUpdate>),
    /// Replace the tunnel set.
    Tunnels(BTreeSet<TunnelEntry>),
}

/// The router actor.
pub struct Router;

/// What the supervisor hands a router.
pub struct RouterArgs {
    /// This router's name in paths.
    pub hostname: String,
    /// Server or transit.
    pub kind: RouterKind,
    /// The forwarding plane to program.
    pub dataplane: Box<dyn Dataplane>,
    /// Logger.
    pub log: Logger,
}

/// The router's state.
pub struct RouterState {
    /// The routing information base.
    rib: Rib,
    /// The exchange actor of every peer in exchange.
    exchanges: HashMap<PeerId, ExchangeRef>,
    /// Commands to the dataplane worker.
    dataplane: mpsc::UnboundedSender<DataplaneCmd>,
    /// The worker; on stop it removes our routes and returns.
    worker: Option<tokio::task::JoinHandle<()>>,
    /// Tells the worker to remove everything and finish.
    shutdown: Option<oneshot::Sender<()>>,
    /// Logger.
    log: Logger,
}

impl RouterState {
    fn carry_out(&mut self, effects: Effects) {
        for (peer, update) in effects.pushes {
            match self.exchanges.get(&peer) {
                Some(x) => {
                    if let Err(e) = x.cast(ExchangeMsg::Push(update)) {
                        warn!(self.log, "exchange actor gone";
                            "peer" => %peer, "error" => %e);
                    }
                }
                None => {
                    debug!(self.log, "push to a peer without exchange";
                        "peer" => %peer);
                }
            }
        }
        if !effects.route_updates.is_empty() {
            let _ =
                self.dataplane.send(DataplaneCmd::Apply(effects.route_updates));
        }
        if let Some(tunnels) = effects.tunnel_set {
            let _ = self.dataplane.send(DataplaneCmd::Tunnels(tunnels));
        }
    }
}

/// The dataplane worker: applies commands in order, coalescing whatever
/// queued while the previous batch was in the kernel.
async fn dataplane_worker(
    mut dp: Box<dyn Dataplane>,
    mut rx: mpsc::UnboundedReceiver<DataplaneCmd>,
    mut shutdown: oneshot::Receiver<()>,
    log: Logger,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            cmd = rx.recv() => match cmd {
                Some(c) => c,
                None => break,
            },
        };
        let mut routes: BTreeMap<Ipv6Net, RouteUpdate> = BTreeMap::new();
        let mut tunnels = None;
        let mut absorb = |cmd| match cmd {
            DataplaneCmd::Apply(batch) => {
                for u in batch {
                    routes.insert(u.destination, u);
                }
            }
            DataplaneCmd::Tunnels(t) => tunnels = Some(t),
        };
        absorb(first);
        while let Ok(cmd) = rx.try_recv() {
            absorb(cmd);
        }
        if !routes.is_empty() {
            let n = routes.len();
            let batch: Vec<_> = routes.into_values().collect();
            match dp.apply(batch).await {
                Ok(()) => debug!(log, "routes programmed"; "count" => n),
                Err(e) => warn!(log, "programming routes failed";
                    "count" => n, "error" => %e),
            }
        }
        if let Some(t) = tunnels {
            let n = t.len();
            if let Err(e) = dp.set_tunnels(t).await {
                warn!(log, "programming tunnels failed";
                    "count" => n, "error" => %e);
            }
        }
    }
    match dp.remove_all().await {
        Ok(n) => info!(log, "removed our routes"; "count" => n),
        Err(e) => warn!(log, "removing our routes failed"; "error" => %e),
    }
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        _myself: RouterRef,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        let log = args.log.new(o!("component" => "router"));
        let mut dp = args.dataplane;
        match dp.remove_stale().await {
            Ok(0) => {}
            Ok(n) => info!(log, "removed routes left by a previous run";
                "count" => n, "dataplane" => dp.name()),
            Err(e) => warn!(log, "could not remove stale routes";
                "error" => %e, "dataplane" => dp.name()),
        }
        info!(log, "router started"; "hostname" => &args.hostname,
            "kind" => %args.kind, "dataplane" => dp.name());
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let worker = tokio::spawn(dataplane_worker(
            dp,
            rx,
            stop_rx,
            log.new(o!("unit" => "dataplane")),
        ));
        Ok(RouterState {
            rib: Rib::new(&args.hostname, args.kind),
            exchanges: HashMap::new(),
            dataplane: tx,
            worker: Some(worker),
            shutdown: Some(stop_tx),
            log,
        })
    }

    async fn post_stop(
        &self,
        _myself: RouterRef,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stop) = state.shutdown.take() {
            let _ = stop.send(());
        }
        if let Some(worker) = state.worker.take() {
            let _ = worker.await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: RouterRef,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::SetOriginated { prefixes, tunnels } => {
                let rib = &mut state.rib;
                let stale: Vec<_> =
                    rib.originated().difference(&prefixes).copied().collect();
                let stale_tunnels: Vec<_> = rib
                    .originated_tunnels()
                    .difference(&tunnels)
                    .copied()
                    .collect();
                let mut all = vec![
                    rib.withdraw_originated(stale),
                    rib.withdraw_tunnels(stale_tunnels),
                    rib.originate(prefixes),
                    rib.originate_tunnels(tunnels),
                ];
                for e in all.drain(..) {
                    state.carry_out(e);
                }
            }
            RouterMsg::Originate(p) => {
                let e = state.rib.originate(p);
                state.carry_out(e);
            }
            RouterMsg::Withdraw(p) => {
                let e = state.rib.withdraw_originated(p);
                state.carry_out(e);
            }
            RouterMsg::OriginateTunnels(t) => {
                let e = state.rib.originate_tunnels(t);
                state.carry_out(e);
            }
            RouterMsg::WithdrawTunnels(t) => {
                let e = state.rib.withdraw_tunnels(t);
                state.carry_out(e);
            }
            RouterMsg::GetPrefixes(reply) => {
                let by_nexthop = state
                    .rib
                    .imported_prefixes()
                    .into_iter()
                    .map(|(nh, paths)| (nh.to_string(), paths))
                    .collect();
                let _ = reply.send(by_nexthop);
            }
            RouterMsg::GetTunnelEndpoints(reply) => {
                let _ = reply.send(state.rib.imported_tunnels());
            }
            RouterMsg::Sync => {
                for x in state.exchanges.values() {
                    let _ = x.cast(ExchangeMsg::Pull);
                }
            }
            RouterMsg::PeerUp { peer, kind, exchange } => {
                info!(state.log, "peer up"; "peer" => %peer, "kind" => %kind);
                state.rib.peer_up(peer, kind);
                state.exchanges.insert(peer, exchange);
            }
            RouterMsg::PeerDown(peer) => {
                if state.exchanges.remove(&peer).is_some() {
                    info!(state.log, "peer down"; "peer" => %peer);
                }
                let e = state.rib.peer_down(peer);
                state.carry_out(e);
            }
            RouterMsg::Import { peer, update } => {
                match state.rib.import(peer, update) {
                    Ok(e) => state.carry_out(e),
                    Err(e) => debug!(state.log, "update dropped";
                        "peer" => %peer, "reason" => %e),
                }
            }
            RouterMsg::PullResult { peer, response } => {
                match state.rib.import_pull(peer, response) {
                    Ok(e) => state.carry_out(e),
                    Err(e) => debug!(state.log, "pull result dropped";
                        "peer" => %peer, "reason" => %e),
                }
            }
            RouterMsg::PullFor(peer, reply) => {
                let _ = reply.send(state.rib.pull_response_for(peer));
            }
            RouterMsg::GetRouteCount(reply) => {
                let _ = reply.send(state.rib.route_count());
            }
        }
        Ok(())
    }
}
