//! The router actor: owner of the RIB and of the dataplane it programs.
//!
//! Every input that changes routing state arrives here as a message: what
//! the admin actor originates or withdraws, peers coming and going (from
//! the supervisor), updates pushed by peers and answers to pulls (from the
//! exchange actors). The [`Rib`] turns each into effects, which the router
//! carries out in this order:
//!
//! 1. pushes to the exchange actors, so the rest of the fabric hears of the
//!    change before this router's own kernel work on it starts (collected per
//!    peer and handed over once the messages queued behind the first one
//!    are handled: `Flush`, sent to itself);
//! 2. route updates and the tunnel set to the dataplane worker, a task that
//!    owns the [`Dataplane`] and coalesces whatever queued while it was busy
//!    into one batch (latest set per destination wins); collected with the
//!    pushes and sent right after them at the same `Flush`.
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

use ddm_proto::outgoing::{OutPull, OutUnderlay, OutUpdate};
use ddm_proto::wire::v3;

use ddm_admin_api::latest::{
    PathVector, RouterKind, TunnelOrigin, TunnelRoute,
};
use oxnet::Ipv6Net;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort,
};
use slog::{debug, error, info, o, warn, Logger};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::dataplane::Dataplane;
use crate::policy::{
    ImportPolicy, PolicyConfig, PolicyCounters, RefusalNote, RibHoldings,
};
use crate::rib::{Effects, ImportedPath, PeerId, Rib, Told};

mod hold;
mod worker;

use hold::Hold;
pub use worker::DataplaneTurn;
use worker::{dataplane_worker, DataplaneCmd, DataplaneStats};

/// Held by a pushed update from before it is read until the router has
/// imported it and its dataplane worker has taken the route changes it
/// made (`exchange::server::IMPORTS_IN_FLIGHT`). Defined here, where it is
/// given back, so that the router imports nothing of the exchange.
pub type ImportPermit = tokio::sync::OwnedSemaphorePermit;

/// What the router asks of a peer's exchange actor. The exchange actor's
/// own message type converts from it, so the router reaches it through a
/// [`PeerRef`] without knowing that type.
#[derive(Debug)]
pub enum PeerCmd {
    /// Push this update to the peer, in order.
    Push(OutUpdate),
    /// Pull the peer's full set again (sync).
    Pull,
    /// The router answered a pull of the peer: every push handed over
    /// before this was in the answer, so the peer may hold what they
    /// announce (in order with the pushes; see `Session`).
    Answered,
}

/// A peer's exchange actor, as the router sees it.
pub type PeerRef = DerivedActorRef<PeerCmd>;

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
    /// Every imported path, sharing the RIB's hostnames (for simulations:
    /// `GetPrefixes` copies every name).
    GetPaths(RpcReplyPort<Vec<ImportedPath>>),
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
        exchange: PeerRef,
    },
    /// An interface was re-created under a new index (`to`; from the
    /// supervisor, after the old index's peer went down): what its peers
    /// may still hold from us is kept under the new index, for the next
    /// session there to withdraw, not left under an index no session will
    /// use again.
    InterfaceMoved {
        /// The old index.
        from: u32,
        /// The new one.
        to: u32,
    },
    /// A peer went away: forget everything learned from it.
    PeerDown(PeerId),
    /// A peer's exchange actor delivered every push it was given up to
    /// `through` (from the exchange actor, as each batch of its pending
    /// update is delivered).
    Delivered {
        /// The peer.
        peer: PeerId,
        /// The exchange actor, so that a stopped session's late report is
        /// not taken for the current one's.
        exchange: ActorId,
        /// How many of the pushes that actor was given are delivered,
        /// counted from its first.
        through: u64,
    },
    /// A peer pushed an update (from its exchange actor).
    Import {
        /// Who pushed.
        peer: PeerId,
        /// What it pushed, read into the compact form.
        update: OutUpdate,
        /// Counts the update against the peer's pushes in flight until it
        /// is imported and the dataplane worker has taken the route changes
        /// it made (`exchange::server::IMPORTS_IN_FLIGHT`), and no other
        /// peer lags, on a transit (`router/hold.rs`).
        permit: Option<ImportPermit>,
    },
    /// A pull of a peer's full set completed (from its exchange actor).
    PullResult {
        /// Who answered.
        peer: PeerId,
        /// Its full set.
        response: OutPull,
        /// The peer's one pull slot: its exchange actor sends no other
        /// pull until this is imported and the dataplane worker has taken
        /// the route changes it made (the slot dropped then), so that a
        /// peer's decoded answers, and the work they make, never queue
        /// here.
        slot: Option<ImportPermit>,
    },
    /// A peer pulls from us: answer with what it should hear.
    PullFor(PeerId, RpcReplyPort<v3::PullResponse>),
    /// The number of installed destinations, for tests and logs.
    GetRouteCount(RpcReplyPort<usize>),
    /// What the import policy refused, by reason, in total and per peer.
    GetPolicyCounters(RpcReplyPort<PolicyCounters>),
    /// The router's own counters (routes, dataplane work, loops dropped).
    GetCounters(RpcReplyPort<RouterCounters>),
    /// Hand the pushes collected so far to the exchange actors, then the
    /// dataplane work to its worker (sent to itself, behind whatever was
    /// queued when the first was collected).
    Flush,
    /// Give back the import permits whose hold is over (sent to itself,
    /// see `router/hold.rs`).
    HoldDue,
    /// The wait for the originated set ([`RouterArgs::await_originated`])
    /// has passed since the start (to itself): pulls still waiting for it
    /// are answered without it.
    OriginatedWaitOver {
        /// How long it was (logged).
        waited: std::time::Duration,
    },
    /// The dataplane worker ended on its own (it panicked): the router
    /// fails, so that its supervisor starts another with a new worker.
    /// Without it, the router went on importing and advertising what no
    /// worker would program, for good.
    WorkerGone(String),
}

crate::counters::named_counters! {
    /// The router's counters, for the metrics listener (`routes` is a
    /// gauge; the rest only grow).
    pub struct RouterCounters {
        /// Destinations with a route now (a gauge, not a counter).
        routes,
        /// Paths dropped because they held this router's own name.
        loops_dropped,
        /// Paths let go past the bound of paths per peer and destination
        /// (`rib::MAX_PATHS_PER_PEER`).
        paths_over_limit,
        /// Paths dropped past a peer's budget of path bytes
        /// (`PolicyConfig::path_budget`).
        paths_over_budget,
        /// Route batches handed to the dataplane.
        dataplane_batches,
        /// Of those, the ones the dataplane reported failed.
        dataplane_batch_errors,
        /// Destination updates (installs, replacements, removals) handed to
        /// the dataplane, in batches that succeeded.
        route_updates_applied,
        /// Tunnel sets handed to the dataplane.
        tunnel_updates,
        /// Of those, the ones the dataplane reported failed.
        tunnel_update_errors,
    }
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
    /// Shared by the routers one supervisor starts, one after another.
    pub turn: DataplaneTurn,
    /// Whether the originated set will come (`SetOriginated`, from the
    /// admin actor): pulls of peers are then answered only once it has,
    /// or after this long (see [`RouterMsg::OriginatedWaitOver`] and
    /// [`originated_wait`]).
    pub await_originated: Option<std::time::Duration>,
    /// Logger.
    pub log: Logger,
}

/// The parts, in prefixes, whose pushes a large originate or withdraw
/// hands over before working out the rest
/// ([`RouterState::originated_in_parts`]): two and four pushes' worth
/// ([`ddm_proto::outgoing::MAX_PUSH_ITEMS`]), one and two milliseconds of
/// work.
const ORIGINATED_PARTS: [usize; 2] = [
    2 * ddm_proto::outgoing::MAX_PUSH_ITEMS,
    4 * ddm_proto::outgoing::MAX_PUSH_ITEMS,
];

/// Longest time pulls wait for the originated set.
pub const ORIGINATED_WAIT: std::time::Duration =
    std::time::Duration::from_secs(2);

/// How long pulls wait for the originated set, given the exchange timeout
/// a pull is answered within: [`ORIGINATED_WAIT`], or three quarters of
/// the timeout if shorter. A pull reaches the router no earlier than its
/// start, when the wait begins, so one that waited is still answered in
/// time (with `--exchange-timeout` of 2 s or less, a pull that waited 2 s
/// could time out at the server and be answered for nothing); the default
/// timeout (3 s) keeps the whole wait.
pub fn originated_wait(
    exchange_timeout: std::time::Duration,
) -> std::time::Duration {
    ORIGINATED_WAIT.min(exchange_timeout * 3 / 4)
}

/// The router's state.
pub struct RouterState {
    /// The routing information base.
    rib: Rib,
    /// What peers may put in it, and what they were refused.
    policy: ImportPolicy,
    /// The exchange actor of every peer in exchange.
    exchanges: HashMap<PeerId, PeerRef>,
    /// What each peer may still hold from us beyond its view, so that a
    /// new session can make the peer's view whole (see [`Told`]).
    told: Told,
    /// The import permits held while another peer lags ([`hold`]; what
    /// each peer's exchange actor has undelivered is counted in `told`).
    hold: Hold<ImportPermit>,
    /// Whether a [`RouterMsg::HoldDue`] is scheduled.
    hold_timer: bool,
    /// Pushes collected and not yet handed to the exchange actors, merged
    /// per peer: everything queued behind the first one is handled before
    /// they go ([`RouterMsg::Flush`]), so that a burst of imports (a
    /// transit hearing every spine at once) becomes one push per peer
    /// rather than one per import, with the paths that lost in between
    /// never sent.
    unsent: BTreeMap<PeerId, OutUpdate>,
    /// Work for the dataplane worker collected with `unsent`, sent in
    /// order right after those pushes are handed over, so that peers hear
    /// of a change before this router's kernel work on it starts (one
    /// route's kernel work took longer than a push to leave).
    dataplane_unsent: Vec<DataplaneCmd>,
    /// Whether a [`RouterMsg::Flush`] is queued.
    flush_queued: bool,
    /// Pulls of peers waiting for the originated set: a pull answer is
    /// the peer's whole view of us, and one without our own prefixes,
    /// answered by a router restarted while the admin actor was busy,
    /// made peers withdraw them fabric-wide until they came. `None` once
    /// it came (or was never to come).
    pulls_waiting: Option<Vec<(PeerId, RpcReplyPort<v3::PullResponse>)>>,
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
    /// Answer a pull of `peer`. The answer holds everything we offer,
    /// including what is still unsent here or pending in the exchange
    /// actor: the peer may hold that now. What is collected for it is
    /// handed over first, and the exchange actor, which marks its pending
    /// update held, hears of the answer in order after it.
    fn answer_pull(
        &mut self,
        peer: PeerId,
        reply: RpcReplyPort<v3::PullResponse>,
    ) {
        if let Some(u) = self.unsent.remove(&peer) {
            self.hand_over(peer, u);
        }
        if let Some(x) = self.exchanges.get(&peer) {
            let _ = x.send_message(PeerCmd::Answered);
        }
        let _ = reply.send(self.rib.pull_response_for(peer));
    }

    /// The originated set came (or will not): answer the pulls that
    /// waited for it, in order, and every later one at once.
    fn answer_waiting_pulls(&mut self) {
        for (peer, reply) in self.pulls_waiting.take().unwrap_or_default() {
            self.answer_pull(peer, reply);
        }
    }

    /// Filter an update pushed by `peer` and import what is accepted;
    /// whether that queued work for the dataplane worker.
    fn import(&mut self, peer: PeerId, update: OutUpdate) -> bool {
        if !self.exchanges.contains_key(&peer) {
            debug!(self.log, "update dropped";
                "peer" => %peer, "reason" => "peer is not up");
            return false;
        }
        let now = Instant::now();
        let held = RibHoldings { rib: &self.rib, peer };
        let verdict = self.policy.filter_update(peer, update, &held, now);
        self.log_refusals(&verdict.notes);
        let mut queued = self.import_accepted(peer, verdict.accepted);
        if !verdict.deferred.is_empty() {
            // New items that waited for the update's withdrawals to make
            // room under the per-peer limit.
            let held = RibHoldings { rib: &self.rib, peer };
            let more =
                self.policy.admit_deferred(peer, verdict.deferred, &held, now);
            self.log_refusals(&more.notes);
            queued |= self.import_accepted(peer, more.accepted);
        }
        queued
    }

    /// Import `update` (accepted by the policy); whether that queued work
    /// for the dataplane worker.
    fn import_accepted(&mut self, peer: PeerId, update: OutUpdate) -> bool {
        if update.is_empty() {
            return false;
        }
        match self.rib.import(peer, update) {
            Ok(e) => self.carry_out(e),
            Err(e) => {
                debug!(self.log, "update dropped";
                    "peer" => %peer, "reason" => %e);
                false
            }
        }
    }

    /// Filter the answer to a pull from `peer` and take what is accepted
    /// as its whole set (refused items are left out, so withdrawn if held);
    /// whether it queued dataplane work.
    fn import_pull(&mut self, peer: PeerId, response: OutPull) -> bool {
        if !self.exchanges.contains_key(&peer) {
            debug!(self.log, "pull result dropped";
                "peer" => %peer, "reason" => "peer is not up");
            return false;
        }
        let held = RibHoldings { rib: &self.rib, peer };
        let verdict =
            self.policy.filter_pull(peer, response, &held, Instant::now());
        self.log_refusals(&verdict.notes);
        // The answer is the peer's whole set; our exchange actor holds back
        // the peer's pushes while a pull is sent and unanswered, so no push
        // imported before this answer is newer than it.
        match self.rib.import_pull(peer, verdict.accepted) {
            Ok(e) => self.carry_out(e),
            Err(e) => {
                debug!(self.log, "pull result dropped";
                    "peer" => %peer, "reason" => %e);
                false
            }
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

    /// Give `permit` (a push's, or a pull's slot) back once the dataplane
    /// worker takes the work queued so far, if this import `queued` any;
    /// at once (dropped here) if not.
    fn release_behind(&mut self, queued: bool, permit: Option<ImportPermit>) {
        if let (true, Some(p)) = (queued, permit) {
            self.dataplane_unsent.push(DataplaneCmd::Release(p));
        }
    }

    /// Carry out `effects` (pushes, then the dataplane's work, collected
    /// for the next flush); whether any work was queued for the dataplane
    /// worker.
    fn carry_out(&mut self, effects: Effects) -> bool {
        for (peer, update) in effects.pushes {
            if self.exchanges.contains_key(&peer) {
                ddm_proto::outgoing::merge_into(&mut self.unsent, peer, update);
            } else {
                debug!(self.log, "push to a peer without exchange";
                    "peer" => %peer);
            }
        }
        let mut queued = false;
        if !effects.route_updates.is_empty() {
            queued = true;
            self.dataplane_unsent
                .push(DataplaneCmd::Apply(effects.route_updates));
        }
        if let Some(tunnels) = effects.tunnel_set {
            queued = true;
            self.dataplane_unsent.push(DataplaneCmd::Tunnels(tunnels));
        }
        queued
    }
}

impl RouterState {
    /// Drop what was collected for `peer`'s session, which ended: what it
    /// withdraws the peer may still hold, so it is remembered as if
    /// handed over ([`Told`]), for the next session to withdraw.
    fn drop_unsent(&mut self, peer: PeerId) {
        if let Some(u) = self.unsent.remove(&peer) {
            self.told.pushed(peer, &u);
        }
    }

    /// Hand every collected push to its peer's exchange actor (every
    /// peer in `unsent` has one: a peer going down or coming up again
    /// leaves it), then the collected work to the dataplane worker.
    fn flush(&mut self) {
        for (peer, update) in std::mem::take(&mut self.unsent) {
            self.hand_over(peer, update);
        }
        for cmd in self.dataplane_unsent.drain(..) {
            let _ = self.dataplane.send(cmd);
        }
    }

    /// Carry out `change` of `prefixes` (originating them, or telling
    /// peers of their withdrawal once [`Rib::forget_originated`] changed
    /// the set at once) in [`ORIGINATED_PARTS`], then the rest whole:
    /// after each part, its pushes and kernel work are handed over and the
    /// runtime's thread yielded, so that the exchange actors send the
    /// first pushes while the rest is worked out. 100,000 prefixes at once
    /// left the originator's first push about 40 ms after the request was
    /// read, every other hop idle meanwhile; the next hop's kernel work
    /// now starts about 33 ms after the request's first byte, against 60.
    /// Only two small parts go ahead: with parts doubling to the end, the exchange actor merged each into the
    /// larger pending update a path at a time, and the originator's peak
    /// grew by 1.5 MiB. No other message is handled in between, so changes
    /// keep their order.
    async fn originated_in_parts(
        &mut self,
        mut prefixes: BTreeSet<Ipv6Net>,
        change: fn(&mut Rib, BTreeSet<Ipv6Net>) -> Effects,
    ) {
        let size = prefixes.len();
        for part in ORIGINATED_PARTS {
            let Some(&first) = prefixes.iter().nth(part) else {
                break;
            };
            let rest = prefixes.split_off(&first);
            let e =
                change(&mut self.rib, std::mem::replace(&mut prefixes, rest));
            self.carry_out(e);
            self.flush();
            tokio::task::yield_now().await;
        }
        let e = change(&mut self.rib, prefixes);
        self.carry_out(e);
        crate::mem::trim_after(size);
    }

    /// Give back the held import permits whose hold is over, behind the
    /// dataplane work queued so far (their imports' among it).
    fn permits_due(&mut self) {
        let told = &self.told;
        let lagging = |from| told.lags(from, hold::BACKLOG_LIMIT);
        for p in self.hold.due(Instant::now(), lagging) {
            self.dataplane_unsent.push(DataplaneCmd::Release(p));
        }
    }

    /// Whether anything waits for the next flush.
    fn has_unsent(&self) -> bool {
        !self.unsent.is_empty() || !self.dataplane_unsent.is_empty()
    }

    /// Hand `update` to `peer`'s exchange actor, if it has one.
    fn hand_over(&mut self, peer: PeerId, update: OutUpdate) {
        if let Some(x) = self.exchanges.get(&peer) {
            send_push(&mut self.told, &self.log, peer, x, update);
        }
    }

    /// A session with `peer` starts (its exchange actor says so before
    /// anything else). The peer may have kept state from an earlier session
    /// that only our side saw end, and will not pull again: its first push
    /// announces its whole view and withdraws whatever it may still hold
    /// beyond it ([`Told::session_up`]).
    fn peer_up(&mut self, peer: PeerId, kind: RouterKind, exchange: PeerRef) {
        match self.exchanges.get(&peer).map(|x| x.get_id()) {
            Some(id) if id == exchange.get_id() => {
                self.rib.peer_up(peer, kind);
                return;
            }
            Some(_) => {
                // Replaced without a `PeerDown`: the old session ended.
                self.drop_unsent(peer);
                let view = self.rib.view_for(peer);
                self.told.session_down(peer, view);
            }
            None => {}
        }
        info!(self.log, "peer up"; "peer" => %peer, "kind" => %kind);
        // What was collected for an earlier session is in the view.
        self.drop_unsent(peer);
        self.rib.peer_up(peer, kind);
        let push = self.told.session_up(peer, self.rib.view_for(peer));
        // The old session's backlog is gone with it.
        self.permits_due();
        if !push.is_empty() {
            debug!(self.log, "making the peer's view whole";
                "peer" => %peer, "items" => push.len());
            send_push(&mut self.told, &self.log, peer, &exchange, push);
        }
        self.exchanges.insert(peer, exchange);
    }
}

/// Push `update` to `peer` through its exchange actor `x`, recording in
/// `told` what the push withdraws.
fn send_push(
    told: &mut Told,
    log: &Logger,
    peer: PeerId,
    x: &PeerRef,
    update: OutUpdate,
) {
    told.pushed(peer, &update);
    if let Err(e) = x.send_message(PeerCmd::Push(update)) {
        warn!(log, "exchange actor gone"; "peer" => %peer, "error" => %e);
    }
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: RouterRef,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        let log = args.log.new(o!("component" => "router"));
        let dp = args.dataplane;
        info!(log, "router started"; "hostname" => &args.hostname,
            "kind" => %args.kind, "dataplane" => dp.name(),
            "accept_default_route" => args.policy.accept_default_route,
            "max_path_len" => args.policy.max_path_len,
            "max_prefixes_per_peer" => args.policy.max_prefixes_per_peer);
        let mut rib = Rib::new(&args.hostname, args.kind);
        rib.set_path_budget(args.policy.path_budget());
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let dp_stats = Arc::new(DataplaneStats::default());
        let worker = tokio::spawn(dataplane_worker(
            dp,
            rx,
            stop_rx,
            args.turn,
            dp_stats.clone(),
            log.new(o!("unit" => "dataplane")),
        ));
        if let Some(wait) = args.await_originated {
            myself.send_after(wait, move || RouterMsg::OriginatedWaitOver {
                waited: wait,
            });
        }
        // The worker ends by itself only if it panics (it runs until the
        // router's stop, or until the router's end drops its queue):
        // then the router is told, and fails. (A panicked worker removed
        // nothing: it flags our routes as left, until the next router's
        // worker removes them at its start.)
        let worker = tokio::spawn(async move {
            if let Err(e) = worker.await {
                if e.is_panic() {
                    let why = format!("the dataplane worker panicked: {e}");
                    let _ = myself.cast(RouterMsg::WorkerGone(why));
                }
            }
        });
        Ok(RouterState {
            rib,
            policy: ImportPolicy::new(args.policy),
            exchanges: HashMap::new(),
            told: Told::new(),
            hold: Hold::default(),
            hold_timer: false,
            unsent: BTreeMap::new(),
            dataplane_unsent: Vec::new(),
            flush_queued: false,
            pulls_waiting: args.await_originated.map(|_| Vec::new()),
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
        // Never sent: its routes were never installed, and its import
        // permits (and those held) go back now, not after the worker's
        // removal.
        state.dataplane_unsent.clear();
        state.hold = Hold::default();
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
        myself: RouterRef,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::SetOriginated { prefixes, tunnels } => {
                let size = prefixes.len();
                let e = state.rib.set_originated(prefixes, tunnels);
                state.carry_out(e);
                crate::mem::trim_after(size);
                state.answer_waiting_pulls();
            }
            RouterMsg::OriginatedWaitOver { waited } => {
                if state.pulls_waiting.is_some() {
                    warn!(
                        state.log,
                        "the originated set did not come in \
                        time; answering pulls without it";
                        "waited_ms" => waited.as_millis()
                    );
                    state.answer_waiting_pulls();
                }
            }
            RouterMsg::Originate(p) => {
                state.originated_in_parts(p, Rib::originate).await;
            }
            RouterMsg::Withdraw(p) => {
                // The originated set changed at once, the peers told in
                // parts.
                let gone = state.rib.forget_originated(p);
                state.originated_in_parts(gone, Rib::tell_withdrawn).await;
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
            RouterMsg::GetPaths(reply) => {
                let _ = reply.send(state.rib.imported_paths().collect());
            }
            RouterMsg::GetTunnelEndpoints(reply) => {
                let _ = reply.send(state.rib.imported_tunnels());
            }
            RouterMsg::Sync => {
                for x in state.exchanges.values() {
                    let _ = x.send_message(PeerCmd::Pull);
                }
            }
            RouterMsg::PeerUp { peer, kind, exchange } => {
                state.policy.peer_up(peer, Instant::now());
                state.peer_up(peer, kind, exchange);
            }
            RouterMsg::InterfaceMoved { from, to } => {
                state.told.moved(from, to);
            }
            RouterMsg::PeerDown(peer) => {
                state.drop_unsent(peer);
                if state.exchanges.remove(&peer).is_some() {
                    info!(state.log, "peer down"; "peer" => %peer);
                    let view = state.rib.view_for(peer);
                    state.told.session_down(peer, view);
                    state.permits_due();
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
                    state.permits_due();
                }
            }
            RouterMsg::Import { peer, update, permit } => {
                let size = update.underlay.as_ref().map_or(0, OutUnderlay::len);
                let queued = state.import(peer, update);
                // The peer's server may take its next push once the
                // dataplane worker takes what this import queued (and
                // whatever was queued before it); at once if it queued
                // nothing; on a transit, later while another peer lags
                // behind what it passes on ([`hold`]; a server passes
                // nothing on).
                let permit = match permit {
                    Some(p) if state.rib.kind() == RouterKind::Transit => {
                        let told = &state.told;
                        state.hold.take(peer, p, Instant::now(), |from| {
                            told.lags(from, hold::BACKLOG_LIMIT)
                        })
                    }
                    p => p,
                };
                state.release_behind(queued, permit);
                crate::mem::trim_after(size);
            }
            RouterMsg::PullResult { peer, response, slot } => {
                let size = response.underlay.as_ref().map_or(0, BTreeSet::len);
                let queued = state.import_pull(peer, response);
                // The next pull of the peer may go once the dataplane
                // worker takes what this one queued, as for a push's permit.
                state.release_behind(queued, slot);
                crate::mem::trim_after(size);
            }
            RouterMsg::PullFor(peer, reply) => match &mut state.pulls_waiting {
                Some(waiting) => waiting.push((peer, reply)),
                None => state.answer_pull(peer, reply),
            },
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
                    paths_over_limit: state.rib.stats().paths_over_limit,
                    paths_over_budget: state.rib.stats().paths_over_budget,
                    dataplane_batches: get(&d.batches),
                    dataplane_batch_errors: get(&d.batch_errors),
                    route_updates_applied: get(&d.updates_applied),
                    tunnel_updates: get(&d.tunnel_updates),
                    tunnel_update_errors: get(&d.tunnel_errors),
                });
            }
            RouterMsg::Flush => {
                state.flush_queued = false;
                state.flush();
            }
            RouterMsg::HoldDue => {
                state.hold_timer = false;
                state.permits_due();
            }
            RouterMsg::WorkerGone(why) => {
                error!(state.log, "dataplane worker gone; the router fails";
                    "why" => &why);
                return Err(why.into());
            }
        }
        if !state.hold_timer {
            if let Some(at) = state.hold.next_due() {
                state.hold_timer = true;
                let wait = at.saturating_duration_since(Instant::now());
                myself.send_after(wait, || RouterMsg::HoldDue);
            }
        }
        if state.has_unsent() && !state.flush_queued {
            state.flush_queued = true;
            if myself.send_message(RouterMsg::Flush).is_err() {
                // Stopping: nothing will be pushed or programmed any more.
                state.unsent.clear();
                state.dataplane_unsent.clear();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
