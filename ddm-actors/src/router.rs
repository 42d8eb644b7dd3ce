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
//! What peers push and answer passes the [`ImportPolicy`] first: only the
//! part it accepts reaches the RIB. Its refusals are counted by reason
//! (`GetPolicyCounters`) and logged as `import refused`, at most once a
//! minute per peer and reason.
//!
//! On stop the worker removes every route this router installed.
//!
//! After a large batch (thousands of prefixes originated, withdrawn or
//! imported, or the kernel work for thousands of destinations) the freed heap is handed back to the
//! system, so a burst does not leave the daemon's footprint at its peak.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ddm_admin_api::latest::{
    PathVector, RouterKind, TunnelOrigin, TunnelRoute,
};
use oxnet::Ipv6Net;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use slog::{debug, info, o, warn, Logger};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::dataplane::{Dataplane, RouteUpdate, TunnelEntry};
use crate::exchange::actor::{ExchangeMsg, ExchangeRef};
use crate::exchange::wire::v3;
use crate::policy::{
    ImportPolicy, PolicyConfig, PolicyCounters, RefusalNote, RibHoldings,
};
use crate::rib::{Effects, PeerId, Rib, Told};

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
    /// A peer's exchange actor delivered every push it was given so far
    /// (from the exchange actor, when its queue empties).
    Delivered {
        /// The peer.
        peer: PeerId,
        /// The exchange actor, so that a stopped session's late report is
        /// not taken for the current one's.
        exchange: ActorId,
        /// How many pushes that actor has been given, all delivered.
        through: u64,
    },
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
    /// What the import policy refused, by reason, in total and per peer.
    GetPolicyCounters(RpcReplyPort<PolicyCounters>),
    /// The router's own counters (routes, dataplane work, loops dropped).
    GetCounters(RpcReplyPort<RouterCounters>),
}

/// The router's counters, for the metrics listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// Destinations with a route now (a gauge, not a counter).
    pub routes: u64,
    /// Paths dropped because they held this router's own name.
    pub loops_dropped: u64,
    /// Route batches handed to the dataplane.
    pub dataplane_batches: u64,
    /// Of those, the ones the dataplane reported failed.
    pub dataplane_batch_errors: u64,
    /// Destination updates (installs, replacements, removals) handed to
    /// the dataplane, in batches that succeeded.
    pub route_updates_applied: u64,
    /// Tunnel sets handed to the dataplane.
    pub tunnel_updates: u64,
    /// Of those, the ones the dataplane reported failed.
    pub tunnel_update_errors: u64,
}

impl RouterCounters {
    /// Every counter by name (`routes` is a gauge; the rest only grow).
    pub fn named(&self) -> BTreeMap<String, u64> {
        [
            ("routes", self.routes),
            ("loops_dropped", self.loops_dropped),
            ("dataplane_batches", self.dataplane_batches),
            ("dataplane_batch_errors", self.dataplane_batch_errors),
            ("route_updates_applied", self.route_updates_applied),
            ("tunnel_updates", self.tunnel_updates),
            ("tunnel_update_errors", self.tunnel_update_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// What the dataplane worker counts, shared with the router actor.
#[derive(Debug, Default)]
struct DataplaneStats {
    batches: AtomicU64,
    batch_errors: AtomicU64,
    updates_applied: AtomicU64,
    tunnel_updates: AtomicU64,
    tunnel_errors: AtomicU64,
}

impl DataplaneStats {
    fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// How many paths or route updates make a batch large enough to hand
/// freed memory back to the system afterwards.
const TRIM_AFTER: usize = 10_000;

/// Hand free heap pages back to the system (glibc keeps them otherwise).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Merge the route batches queued while the worker was busy: one update per
/// destination, the latest, ordered by destination.
fn coalesce(mut batches: Vec<Vec<RouteUpdate>>) -> Vec<RouteUpdate> {
    if batches.len() <= 1 {
        // One batch from the RIB already has one update per destination.
        return batches.pop().unwrap_or_default();
    }
    let mut all = Vec::with_capacity(batches.iter().map(Vec::len).sum());
    // Latest first, so that the stable sort keeps each destination's latest
    // update in front of the older ones, which `dedup` then drops.
    for batch in batches.into_iter().rev() {
        all.extend(batch.into_iter().rev());
    }
    all.sort_by_key(|u: &RouteUpdate| u.destination);
    all.dedup_by_key(|u| u.destination);
    all
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
    /// What peers may put in the RIB.
    pub policy: PolicyConfig,
    /// Logger.
    pub log: Logger,
}

/// The router's state.
pub struct RouterState {
    /// The routing information base.
    rib: Rib,
    /// What peers may put in it, and what they were refused.
    policy: ImportPolicy,
    /// The exchange actor of every peer in exchange.
    exchanges: HashMap<PeerId, ExchangeRef>,
    /// What each peer may still hold from us beyond its view, so that a
    /// new session can make the peer's view whole (see [`Told`]).
    told: Told,
    /// Commands to the dataplane worker.
    dataplane: mpsc::UnboundedSender<DataplaneCmd>,
    /// The worker; on stop it removes our routes and returns.
    worker: Option<tokio::task::JoinHandle<()>>,
    /// Tells the worker to remove everything and finish.
    shutdown: Option<oneshot::Sender<()>>,
    /// What the worker counts.
    dp_stats: Arc<DataplaneStats>,
    /// Logger.
    log: Logger,
}

impl RouterState {
    /// Filter an update pushed by `peer` and import what is accepted.
    fn import(&mut self, peer: PeerId, update: v3::Update) {
        if !self.exchanges.contains_key(&peer) {
            debug!(self.log, "update dropped";
                "peer" => %peer, "reason" => "peer is not up");
            return;
        }
        let now = Instant::now();
        let held = RibHoldings { rib: &self.rib, peer };
        let verdict = self.policy.filter_update(peer, update, &held, now);
        self.log_refusals(&verdict.notes);
        self.import_accepted(peer, verdict.accepted);
        if !verdict.deferred.is_empty() {
            // New items that waited for the update's withdrawals to make
            // room under the per-peer limit.
            let held = RibHoldings { rib: &self.rib, peer };
            let more =
                self.policy.admit_deferred(peer, verdict.deferred, &held, now);
            self.log_refusals(&more.notes);
            self.import_accepted(peer, more.accepted);
        }
    }

    fn import_accepted(&mut self, peer: PeerId, update: v3::Update) {
        if update.is_empty() {
            return;
        }
        match self.rib.import(peer, update) {
            Ok(e) => self.carry_out(e),
            Err(e) => debug!(self.log, "update dropped";
                "peer" => %peer, "reason" => %e),
        }
    }

    /// Filter the answer to a pull from `peer` and take what is accepted
    /// as its whole set (refused items are left out, so withdrawn if held).
    fn import_pull(&mut self, peer: PeerId, response: v3::PullResponse) {
        if !self.exchanges.contains_key(&peer) {
            debug!(self.log, "pull result dropped";
                "peer" => %peer, "reason" => "peer is not up");
            return;
        }
        let held = RibHoldings { rib: &self.rib, peer };
        let verdict =
            self.policy.filter_pull(peer, response, &held, Instant::now());
        self.log_refusals(&verdict.notes);
        // The answer is the peer's whole set; our exchange actor holds back
        // the peer's pushes while a pull is out, so none of them can be
        // older than this answer.
        match self.rib.import_pull(peer, verdict.accepted) {
            Ok(e) => self.carry_out(e),
            Err(e) => debug!(self.log, "pull result dropped";
                "peer" => %peer, "reason" => %e),
        }
    }

    fn log_refusals(&self, notes: &[RefusalNote]) {
        for n in notes {
            warn!(self.log, "import refused";
                "peer" => %n.peer,
                "reason" => n.reason.name(),
                "example" => &n.example,
                "refused" => n.refused,
                "unlogged" => n.unlogged);
        }
    }

    fn carry_out(&mut self, effects: Effects) {
        for (peer, update) in effects.pushes {
            match self.exchanges.get(&peer) {
                Some(x) => {
                    self.told.pushed(peer, &update);
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

impl RouterState {
    /// A session with `peer` starts (its exchange actor says so before
    /// anything else). The peer may have kept state from an earlier session
    /// that only our side saw end, and will not pull again: its first push
    /// announces its whole view and withdraws whatever it may still hold
    /// beyond it ([`Told::session_up`]).
    fn peer_up(
        &mut self,
        peer: PeerId,
        kind: RouterKind,
        exchange: ExchangeRef,
    ) {
        match self.exchanges.get(&peer).map(|x| x.get_id()) {
            Some(id) if id == exchange.get_id() => {
                self.rib.peer_up(peer, kind);
                return;
            }
            Some(_) => {
                // Replaced without a `PeerDown`: the old session ended.
                let view = self.rib.view_for(peer);
                self.told.session_down(peer, view);
            }
            None => {}
        }
        info!(self.log, "peer up"; "peer" => %peer, "kind" => %kind);
        self.rib.peer_up(peer, kind);
        let push = self.told.session_up(peer, self.rib.view_for(peer));
        if !push.is_empty() {
            debug!(self.log, "making the peer's view whole";
                "peer" => %peer, "items" => push.len());
            self.told.pushed(peer, &push);
            if let Err(e) = exchange.cast(ExchangeMsg::Push(push)) {
                warn!(self.log, "exchange actor gone";
                    "peer" => %peer, "error" => %e);
            }
        }
        self.exchanges.insert(peer, exchange);
    }
}

/// The dataplane worker: applies commands in order, coalescing whatever
/// queued while the previous batch was in the kernel.
async fn dataplane_worker(
    mut dp: Box<dyn Dataplane>,
    mut rx: mpsc::UnboundedReceiver<DataplaneCmd>,
    mut shutdown: oneshot::Receiver<()>,
    stats: Arc<DataplaneStats>,
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
        let mut batches = Vec::new();
        let mut tunnels = None;
        let mut absorb = |cmd| match cmd {
            DataplaneCmd::Apply(batch) => batches.push(batch),
            DataplaneCmd::Tunnels(t) => tunnels = Some(t),
        };
        absorb(first);
        while let Ok(cmd) = rx.try_recv() {
            absorb(cmd);
        }
        let batch = coalesce(batches);
        if !batch.is_empty() {
            let n = batch.len();
            DataplaneStats::bump(&stats.batches, 1);
            match dp.apply(batch).await {
                Ok(()) => {
                    DataplaneStats::bump(&stats.updates_applied, n as u64);
                    debug!(log, "routes programmed"; "count" => n)
                }
                Err(e) => {
                    DataplaneStats::bump(&stats.batch_errors, 1);
                    warn!(log, "programming routes failed";
                        "count" => n, "error" => %e)
                }
            }
            if n >= TRIM_AFTER {
                trim_heap();
            }
        }
        if let Some(t) = tunnels {
            let n = t.len();
            DataplaneStats::bump(&stats.tunnel_updates, 1);
            if let Err(e) = dp.set_tunnels(t).await {
                DataplaneStats::bump(&stats.tunnel_errors, 1);
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
            "kind" => %args.kind, "dataplane" => dp.name(),
            "accept_default_route" => args.policy.accept_default_route,
            "max_path_len" => args.policy.max_path_len,
            "max_prefixes_per_peer" => args.policy.max_prefixes_per_peer);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let dp_stats = Arc::new(DataplaneStats::default());
        let worker = tokio::spawn(dataplane_worker(
            dp,
            rx,
            stop_rx,
            dp_stats.clone(),
            log.new(o!("unit" => "dataplane")),
        ));
        Ok(RouterState {
            rib: Rib::new(&args.hostname, args.kind),
            policy: ImportPolicy::new(args.policy),
            exchanges: HashMap::new(),
            told: Told::new(),
            dataplane: tx,
            worker: Some(worker),
            shutdown: Some(stop_tx),
            dp_stats,
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
                let size = p.len();
                let e = state.rib.originate(p);
                state.carry_out(e);
                if size >= TRIM_AFTER {
                    trim_heap();
                }
            }
            RouterMsg::Withdraw(p) => {
                let size = p.len();
                let e = state.rib.withdraw_originated(p);
                state.carry_out(e);
                if size >= TRIM_AFTER {
                    trim_heap();
                }
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
                state.policy.peer_up(peer, Instant::now());
                state.peer_up(peer, kind, exchange);
            }
            RouterMsg::PeerDown(peer) => {
                if state.exchanges.remove(&peer).is_some() {
                    info!(state.log, "peer down"; "peer" => %peer);
                    let view = state.rib.view_for(peer);
                    state.told.session_down(peer, view);
                }
                if let Some(c) = state.policy.peer_down(peer, Instant::now()) {
                    info!(state.log, "import refusals of a departed peer";
                        "peer" => %peer, "refused" => %c);
                }
                let e = state.rib.peer_down(peer);
                state.carry_out(e);
            }
            RouterMsg::Delivered { peer, exchange, through } => {
                let current = state.exchanges.get(&peer).map(|x| x.get_id());
                if current == Some(exchange) {
                    state.told.delivered(peer, through);
                }
            }
            RouterMsg::Import { peer, update } => {
                let size = update
                    .underlay
                    .as_ref()
                    .map_or(0, |u| u.announce.len() + u.withdraw.len());
                state.import(peer, update);
                if size >= TRIM_AFTER {
                    trim_heap();
                }
            }
            RouterMsg::PullResult { peer, response } => {
                let size = response.underlay.as_ref().map_or(0, BTreeSet::len);
                state.import_pull(peer, response);
                if size >= TRIM_AFTER {
                    trim_heap();
                }
            }
            RouterMsg::PullFor(peer, reply) => {
                let _ = reply.send(state.rib.pull_response_for(peer));
            }
            RouterMsg::GetRouteCount(reply) => {
                let _ = reply.send(state.rib.route_count());
            }
            RouterMsg::GetPolicyCounters(reply) => {
                let _ = reply.send(state.policy.counters());
            }
            RouterMsg::GetCounters(reply) => {
                let d = &state.dp_stats;
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let _ = reply.send(RouterCounters {
                    routes: state.rib.route_count() as u64,
                    loops_dropped: state.rib.stats().loops_dropped,
                    dataplane_batches: get(&d.batches),
                    dataplane_batch_errors: get(&d.batch_errors),
                    route_updates_applied: get(&d.updates_applied),
                    tunnel_updates: get(&d.tunnel_updates),
                    tunnel_update_errors: get(&d.tunnel_errors),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::memory::MemoryDataplane;
    use crate::dataplane::Nexthop;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A stand-in exchange actor that records what the router pushes.
    struct FakeExchange;

    type Pushed = Arc<Mutex<Vec<v3::Update>>>;

    impl Actor for FakeExchange {
        type Msg = ExchangeMsg;
        type State = Pushed;
        type Arguments = Pushed;

        async fn pre_start(
            &self,
            _: ActorRef<ExchangeMsg>,
            pushed: Pushed,
        ) -> Result<Pushed, ActorProcessingErr> {
            Ok(pushed)
        }

        async fn handle(
            &self,
            _: ActorRef<ExchangeMsg>,
            msg: ExchangeMsg,
            pushed: &mut Pushed,
        ) -> Result<(), ActorProcessingErr> {
            if let ExchangeMsg::Push(u) = msg {
                pushed.lock().unwrap().push(u.to_wire());
            }
            Ok(())
        }
    }

    fn p(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn peer(i: u32) -> PeerId {
        PeerId { ifindex: i, addr: format!("fe80::{i}").parse().unwrap() }
    }

    fn announce(dest: &str, path: &[&str]) -> v3::Update {
        v3::Update {
            underlay: Some(v3::UnderlayUpdate {
                announce: [PathVector {
                    destination: p(dest),
                    path: path.iter().map(|s| s.to_string()).collect(),
                }]
                .into(),
                withdraw: BTreeSet::new(),
            }),
            tunnel: None,
        }
    }

    async fn router(kind: RouterKind) -> (RouterRef, MemoryDataplane) {
        router_with(kind, PolicyConfig::default()).await
    }

    async fn router_with(
        kind: RouterKind,
        policy: PolicyConfig,
    ) -> (RouterRef, MemoryDataplane) {
        let dp = MemoryDataplane::new();
        let args = RouterArgs {
            hostname: "me".to_string(),
            kind,
            dataplane: Box::new(dp.clone()),
            policy,
            log: Logger::root(slog::Discard, o!()),
        };
        let (r, _) = Actor::spawn(None, Router, args).await.unwrap();
        (r, dp)
    }

    async fn add_peer(r: &RouterRef, i: u32, kind: RouterKind) -> Pushed {
        let pushed = Pushed::default();
        let (x, _) =
            Actor::spawn(None, FakeExchange, pushed.clone()).await.unwrap();
        r.cast(RouterMsg::PeerUp { peer: peer(i), kind, exchange: x }).unwrap();
        pushed
    }

    /// Wait (in paused time) until `f` holds.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never happened: {what}");
    }

    fn nh(i: u32) -> Nexthop {
        use crate::rib::PeerNexthop;
        peer(i).nexthop()
    }

    #[tokio::test(start_paused = true)]
    async fn imports_program_the_dataplane_as_ecmp_sets() {
        let (r, dp) = router(RouterKind::Server).await;
        add_peer(&r, 1, RouterKind::Transit).await;
        add_peer(&r, 2, RouterKind::Transit).await;
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce("fd00:9::/64", &["far", "t1"]),
        })
        .unwrap();
        r.cast(RouterMsg::Import {
            peer: peer(2),
            update: announce("fd00:9::/64", &["far", "t2"]),
        })
        .unwrap();
        until("two nexthops", || {
            dp.tables().routes.get(&p("fd00:9::/64"))
                == Some(&[nh(1), nh(2)].into())
        })
        .await;
        // One path goes: the set shrinks; the other goes: the route goes.
        r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
        until("one nexthop", || {
            dp.tables().routes.get(&p("fd00:9::/64")) == Some(&[nh(2)].into())
        })
        .await;
        r.cast(RouterMsg::PeerDown(peer(2))).unwrap();
        until("no route", || dp.tables().routes.is_empty()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_transit_redistributes_to_the_other_peers_only() {
        let (r, _dp) = router(RouterKind::Transit).await;
        let from = add_peer(&r, 1, RouterKind::Server).await;
        let other = add_peer(&r, 2, RouterKind::Server).await;
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce("fd00:1::/64", &["s1"]),
        })
        .unwrap();
        until("pushed to the other peer", || {
            other.lock().unwrap().iter().any(|u| {
                u.underlay.as_ref().is_some_and(|ul| {
                    ul.announce.iter().any(|pv| {
                        pv.destination == p("fd00:1::/64")
                            && pv.path == ["s1", "me"]
                    })
                })
            })
        })
        .await;
        assert!(from.lock().unwrap().is_empty(), "never back to its source");
        // The source expires: the other peer hears the withdrawal.
        r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
        until("withdrawn from the other peer", || {
            other.lock().unwrap().iter().any(|u| {
                u.underlay.as_ref().is_some_and(|ul| !ul.withdraw.is_empty())
            })
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_announces_what_it_originates_and_drops_loops() {
        let (r, dp) = router(RouterKind::Server).await;
        let t = add_peer(&r, 1, RouterKind::Transit).await;
        r.cast(RouterMsg::Originate([p("fd00:5::/64")].into())).unwrap();
        until("originated prefix pushed", || {
            t.lock().unwrap().iter().any(|u| {
                u.underlay.as_ref().is_some_and(|ul| {
                    ul.announce.iter().any(|pv| pv.path == ["me"])
                })
            })
        })
        .await;
        // A path through us is a loop: dropped, nothing installed.
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce("fd00:6::/64", &["x", "me", "t1"]),
        })
        .unwrap();
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce("fd00:7::/64", &["y", "t1"]),
        })
        .unwrap();
        until("the good path installed", || {
            dp.tables().routes.contains_key(&p("fd00:7::/64"))
        })
        .await;
        assert!(!dp.tables().routes.contains_key(&p("fd00:6::/64")));
        // Withdrawing what we originate is pushed too.
        r.cast(RouterMsg::Withdraw([p("fd00:5::/64")].into())).unwrap();
        until("withdrawal pushed", || {
            t.lock().unwrap().iter().any(|u| {
                u.underlay.as_ref().is_some_and(|ul| {
                    ul.withdraw
                        .iter()
                        .any(|pv| pv.destination == p("fd00:5::/64"))
                })
            })
        })
        .await;
    }

    /// The union of what `pushed` announced and withdrew, applied in
    /// order: what the peer holds from us if every push arrived.
    fn held(pushed: &Pushed) -> BTreeSet<PathVector> {
        let mut held = BTreeSet::new();
        for u in pushed.lock().unwrap().iter() {
            if let Some(u) = &u.underlay {
                for pv in &u.withdraw {
                    held.remove(pv);
                }
                held.extend(u.announce.iter().cloned());
            }
        }
        held
    }

    /// Our side resets the session while a withdrawal is still queued (the
    /// old exchange actor never delivered it) and more changes happen while
    /// the peer is down; the peer never noticed. The new session's first
    /// push makes the peer's view whole: what it got over both sessions
    /// equals what we originate now.
    #[tokio::test(start_paused = true)]
    async fn a_one_sided_reset_loses_nothing() {
        let (r, _dp) = router(RouterKind::Server).await;
        let old = add_peer(&r, 1, RouterKind::Transit).await;
        r.cast(RouterMsg::Originate(
            [p("fd00:1::/64"), p("fd00:2::/64")].into(),
        ))
        .unwrap();
        r.cast(RouterMsg::Withdraw([p("fd00:2::/64")].into())).unwrap();
        until("withdrawal handed to the old session", || {
            old.lock().unwrap().iter().any(|u| {
                u.underlay.as_ref().is_some_and(|u| !u.withdraw.is_empty())
            })
        })
        .await;
        // The peer got the announcements, but not the withdrawal.
        let got: Vec<v3::Update> = old
            .lock()
            .unwrap()
            .iter()
            .filter(|u| {
                u.underlay.as_ref().is_some_and(|u| u.withdraw.is_empty())
            })
            .cloned()
            .collect();
        r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
        r.cast(RouterMsg::Withdraw([p("fd00:1::/64")].into())).unwrap();
        r.cast(RouterMsg::Originate([p("fd00:3::/64")].into())).unwrap();
        let new = add_peer(&r, 1, RouterKind::Transit).await;
        until("resync pushed", || !new.lock().unwrap().is_empty()).await;
        let mut all: Vec<v3::Update> = got;
        all.extend(new.lock().unwrap().iter().cloned());
        let view = held(&Pushed::new(Mutex::new(all)));
        let dests: Vec<Ipv6Net> =
            view.iter().map(|pv| pv.destination).collect();
        assert_eq!(dests, vec![p("fd00:3::/64")]);
    }

    #[tokio::test(start_paused = true)]
    async fn updates_from_unknown_peers_change_nothing() {
        let (r, dp) = router(RouterKind::Server).await;
        r.cast(RouterMsg::Import {
            peer: peer(9),
            update: announce("fd00:9::/64", &["x"]),
        })
        .unwrap();
        let n = ractor::call!(r, RouterMsg::GetRouteCount).unwrap();
        assert_eq!(n, 0);
        assert!(dp.tables().routes.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_removes_every_route() {
        let (r, dp) = router(RouterKind::Server).await;
        add_peer(&r, 1, RouterKind::Transit).await;
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce("fd00:9::/64", &["x"]),
        })
        .unwrap();
        until("installed", || !dp.tables().routes.is_empty()).await;
        r.stop_and_wait(None, None).await.unwrap();
        assert!(dp.tables().routes.is_empty());
    }

    /// Poll the router's counters until `done` holds.
    async fn counters_until(
        r: &RouterRef,
        done: impl Fn(&RouterCounters) -> bool,
    ) -> RouterCounters {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = ractor::call!(r, RouterMsg::GetCounters).unwrap();
            if done(&c) {
                return c;
            }
            assert!(std::time::Instant::now() < deadline, "counters: {c:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn counters_count_routes_batches_and_loops() {
        let (r, _dp) = router(RouterKind::Server).await;
        let before = ractor::call!(r, RouterMsg::GetCounters).unwrap();
        assert_eq!(before, RouterCounters::default());
        add_peer(&r, 1, RouterKind::Transit).await;
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce_all(&[
                ("fd00:1::/64", &["x"]),
                ("fd00:2::/64", &["x"]),
                ("fd00:3::/64", &["x", "me"]),
            ]),
        })
        .unwrap();
        let c = counters_until(&r, |c| c.route_updates_applied >= 2).await;
        assert_eq!(c.routes, 2);
        assert_eq!(c.loops_dropped, 1);
        assert!(c.dataplane_batches >= 1);
        assert_eq!(c.dataplane_batch_errors, 0);
        assert_eq!(c.named()["routes"], 2);
        r.stop_and_wait(None, None).await.unwrap();
    }

    /// A dataplane that refuses every request.
    struct BrokenDataplane;

    #[async_trait::async_trait]
    impl Dataplane for BrokenDataplane {
        fn name(&self) -> &'static str {
            "broken"
        }
        async fn remove_stale(
            &mut self,
        ) -> Result<usize, crate::dataplane::DataplaneError> {
            Ok(0)
        }
        async fn apply(
            &mut self,
            _: Vec<RouteUpdate>,
        ) -> Result<(), crate::dataplane::DataplaneError> {
            Err(crate::dataplane::DataplaneError::Request("no".into()))
        }
        async fn set_tunnels(
            &mut self,
            _: BTreeSet<TunnelEntry>,
        ) -> Result<(), crate::dataplane::DataplaneError> {
            Err(crate::dataplane::DataplaneError::Request("no".into()))
        }
        async fn remove_all(
            &mut self,
        ) -> Result<usize, crate::dataplane::DataplaneError> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn failed_dataplane_batches_are_counted() {
        let args = RouterArgs {
            hostname: "me".to_string(),
            kind: RouterKind::Server,
            dataplane: Box::new(BrokenDataplane),
            policy: PolicyConfig::default(),
            log: Logger::root(slog::Discard, o!()),
        };
        let (r, _) = Actor::spawn(None, Router, args).await.unwrap();
        add_peer(&r, 1, RouterKind::Transit).await;
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce("fd00:9::/64", &["x"]),
        })
        .unwrap();
        let c = counters_until(&r, |c| c.dataplane_batch_errors >= 1).await;
        assert_eq!(c.dataplane_batch_errors, c.dataplane_batches);
        assert_eq!(c.route_updates_applied, 0);
        r.stop_and_wait(None, None).await.unwrap();
    }

    #[test]
    fn coalescing_keeps_the_latest_update_of_each_destination() {
        let u = |d: &str, hops: &[u32]| RouteUpdate {
            destination: p(d),
            nexthops: hops.iter().map(|i| nh(*i)).collect(),
        };
        let merged = coalesce(vec![
            vec![u("fd00:1::/64", &[1]), u("fd00:3::/64", &[1])],
            vec![u("fd00:2::/64", &[2]), u("fd00:3::/64", &[1, 2])],
            vec![u("fd00:1::/64", &[])],
        ]);
        assert_eq!(
            merged,
            [
                u("fd00:1::/64", &[]),
                u("fd00:2::/64", &[2]),
                u("fd00:3::/64", &[1, 2]),
            ]
        );
        let one = vec![u("fd00:1::/64", &[1])];
        assert_eq!(coalesce(vec![one.clone()]), one);
        assert!(coalesce(Vec::new()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn set_originated_reconciles() {
        let (r, _dp) = router(RouterKind::Server).await;
        r.cast(RouterMsg::Originate(
            [p("fd00:1::/64"), p("fd00:2::/64")].into(),
        ))
        .unwrap();
        r.cast(RouterMsg::SetOriginated {
            prefixes: [p("fd00:2::/64"), p("fd00:3::/64")].into(),
            tunnels: BTreeSet::new(),
        })
        .unwrap();
        let pull = ractor::call!(r, RouterMsg::PullFor, peer(1)).unwrap();
        let dests: BTreeSet<_> = pull
            .underlay
            .unwrap_or_default()
            .into_iter()
            .map(|pv| pv.destination)
            .collect();
        assert_eq!(dests, [p("fd00:2::/64"), p("fd00:3::/64")].into());
    }

    fn announce_all(pvs: &[(&str, &[&str])]) -> v3::Update {
        v3::Update {
            underlay: Some(v3::UnderlayUpdate {
                announce: pvs
                    .iter()
                    .map(|(d, path)| PathVector {
                        destination: p(d),
                        path: path.iter().map(|s| s.to_string()).collect(),
                    })
                    .collect(),
                withdraw: BTreeSet::new(),
            }),
            tunnel: None,
        }
    }

    fn nth(i: usize) -> String {
        format!("fd00:{i:x}::/64")
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_pushes_and_pulls_are_filtered_and_counted() {
        use crate::policy::Refusal;
        let (r, dp) = router(RouterKind::Transit).await;
        let other = add_peer(&r, 2, RouterKind::Server).await;
        add_peer(&r, 1, RouterKind::Server).await;
        let long: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let big = "h".repeat(300);
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce_all(&[
                ("::/0", &["s1"]),
                ("fe80::/10", &["s1"]),
                ("ff02::/16", &["s1"]),
                ("::/1", &["s1"]),
                ("fd00:aa::/64", &long),
                ("fd00:bb::/64", &[&big]),
                ("fd00:1::/64", &["s1"]),
            ]),
        })
        .unwrap();
        until("the legitimate prefix installed", || {
            dp.tables().routes.contains_key(&p("fd00:1::/64"))
        })
        .await;
        assert_eq!(dp.tables().routes.len(), 1, "{:?}", dp.tables().routes);
        let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
        let mine = c.per_peer[&peer(1)];
        assert_eq!(mine.get(Refusal::DefaultRoute), 1);
        assert_eq!(mine.get(Refusal::SpecialDestination), 3);
        assert_eq!(mine.get(Refusal::PathTooLong), 1);
        assert_eq!(mine.get(Refusal::HostnameTooLong), 1);
        assert_eq!(c.total, mine);
        // Only the legitimate prefix is redistributed.
        until("redistributed", || !other.lock().unwrap().is_empty()).await;
        let told: Vec<Ipv6Net> = other
            .lock()
            .unwrap()
            .iter()
            .flat_map(|u| u.underlay.iter().flat_map(|u| u.announce.iter()))
            .map(|pv| pv.destination)
            .collect();
        assert_eq!(told, [p("fd00:1::/64")]);
        // A pull answer is filtered too: the refused items are left out,
        // so what was held and is now refused goes.
        r.cast(RouterMsg::PullResult {
            peer: peer(1),
            response: v3::PullResponse {
                underlay: Some(
                    announce_all(&[
                        ("fd00:2::/64", &["s1"]),
                        ("::1/128", &["s1"]),
                    ])
                    .underlay
                    .unwrap()
                    .announce,
                ),
                tunnel: None,
            },
        })
        .unwrap();
        until("the pull replaced the set", || {
            let t = dp.tables();
            t.routes.len() == 1 && t.routes.contains_key(&p("fd00:2::/64"))
        })
        .await;
        let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
        assert_eq!(c.total.get(Refusal::SpecialDestination), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_peer_limit_refuses_new_destinations_only() {
        use crate::policy::Refusal;
        let (r, dp) = router_with(
            RouterKind::Server,
            PolicyConfig { max_prefixes_per_peer: 10, ..Default::default() },
        )
        .await;
        add_peer(&r, 1, RouterKind::Transit).await;
        add_peer(&r, 2, RouterKind::Transit).await;
        let names: Vec<String> = (0..15).map(nth).collect();
        let all: Vec<(&str, &[&str])> =
            names.iter().map(|d| (d.as_str(), &["s1"][..])).collect();
        r.cast(RouterMsg::Import { peer: peer(1), update: announce_all(&all) })
            .unwrap();
        until("ten installed", || dp.tables().routes.len() == 10).await;
        let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
        assert_eq!(c.per_peer[&peer(1)].get(Refusal::PrefixLimit), 5);
        // Another peer has its own limit.
        r.cast(RouterMsg::Import {
            peer: peer(2),
            update: announce_all(&all[10..]),
        })
        .unwrap();
        until("the other peer's five", || dp.tables().routes.len() == 15).await;
        // A held destination takes a new path; a new one is refused.
        let held = dp
            .tables()
            .routes
            .keys()
            .copied()
            .find(|d| dp.tables().routes[d] == [nh(1)].into());
        let held = held.unwrap().to_string();
        let extra = nth(99);
        r.cast(RouterMsg::Import {
            peer: peer(1),
            update: announce_all(&[
                (held.as_str(), &["x", "s1"]),
                (extra.as_str(), &["s1"]),
            ]),
        })
        .unwrap();
        let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
        assert_eq!(c.per_peer[&peer(1)].get(Refusal::PrefixLimit), 6);
        let prefixes = ractor::call!(r, RouterMsg::GetPrefixes).unwrap();
        let from1 = &prefixes[&peer(1).addr.to_string()];
        assert_eq!(from1.len(), 11, "ten destinations, one with two paths");
        assert!(!from1.iter().any(|pv| pv.destination == p(&extra)));
        // Withdrawing one and announcing a new one in the same update: the
        // withdrawal makes room.
        let mut u = announce_all(&[(extra.as_str(), &["s1"])]);
        u.underlay_mut().withdraw = [
            PathVector { destination: p(&held), path: vec!["s1".to_string()] },
            PathVector {
                destination: p(&held),
                path: vec!["x".to_string(), "s1".to_string()],
            },
        ]
        .into();
        r.cast(RouterMsg::Import { peer: peer(1), update: u }).unwrap();
        until("the new one installed", || {
            dp.tables().routes.contains_key(&p(&extra))
        })
        .await;
        let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
        assert_eq!(c.per_peer[&peer(1)].get(Refusal::PrefixLimit), 6);
        let prefixes = ractor::call!(r, RouterMsg::GetPrefixes).unwrap();
        assert_eq!(prefixes[&peer(1).addr.to_string()].len(), 10);
    }
}
