//! The exchange actor: one per peer, the glue around its [`Session`].
//!
//! ```text
//!                 ┌──────────── Exchange actor ─────────────┐
//!   router ─Push/Pull─▶ Session::handle ─effects─▶ push task ─push─▶ peer
//!                 │         ▲ ◀─PushDone──┘                       │
//!                 │         │   pull task ─pull──────────────────▶ peer
//!                 │         │ ◀─PullDone──┘   ─PullResult/Import─▶ router
//!   timers ─Retry{gen}─▶    │                                     │
//!                 └─────────────────────────────────────────────┘
//!   peer ─push─▶ server (transport) ─Pushed─▶ actor ─Import─▶ router
//!   peer ─pull─▶ server (transport) ─PullFor (call)─▶ router
//! ```
//!
//! Every rule of the session (pushes held during a pull, pushes waiting
//! for the first pull and its limit, merging, parts, splitting on a refusal,
//! back-off, when a failing peer is reported, `Delivered`) is in
//! [`super::session`], a pure state machine tested by replaying step files.
//! This actor turns its messages into session inputs and carries out the
//! effects: it starts the request tasks and timers, binds the server through
//! the [`Transport`](super::transport::Transport) (HTTP in production, [`super::transport::ExchangeNet`]
//! in tests and simulations), casts to the router and to `on_failure`,
//! counts and logs. Requests run on tasks that cast their outcome back, so
//! the mailbox never waits on the network.
//!
//! On start the actor sends the router `PeerUp` (so the router knows the
//! peer before any of its imports arrive), then starts the session (bind,
//! first pull). `post_stop` aborts every task and waits for the server to
//! close, so a new exchange actor for the same peer can bind at once.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ddm_admin_api::latest::RouterKind;
use ractor::{
    Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort,
};
use slog::{debug, error, info, o, warn, Logger};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::client::{ClientError, Pulled};
use ddm_proto::outgoing::OutUpdate;
// The push rules and the version live in the protocol floor; they stay
// reachable here, where the session uses them.
pub use ddm_proto::outgoing::{
    merge, take_chunk, Chunk, PushBounds, DEFAULT_PUSH_LIMIT, MAX_PUSH_ITEMS,
};
pub use ddm_proto::Version;

use super::server::{ServerCtx, IMPORTS_IN_FLIGHT, UNPACED_IN_FLIGHT};
pub use super::session::{
    backoff, TimerKind as RetryKind, BACKOFF_MAX, BACKOFF_MIN, MAX_ATTEMPTS,
};
use super::session::{
    Counter, Effect, Failure, Input, Op, PullAnswer, Session, TimerKind,
};
pub use super::stats::{ExchangeCounters, Stats};
use super::transport::{ExchangeClient, ExchangeTransport, Serving};
use crate::config::RouterConfig;
use crate::discovery::limit::LogLimiter;
use crate::discovery::PeerIdentity;
use crate::mem;
use crate::router::ImportPermit;
use crate::router::{PeerCmd, RouterMsg, RouterRef};
use crate::timer::{abort_and_wait, cast_after, replace_task};
use ddm_proto::PeerId;

/// A handle to an exchange actor.
pub type ExchangeRef = ActorRef<ExchangeMsg>;
/// Told to `on_failure` when exchange with a peer keeps failing: the peer
/// should be expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeFailed {
    /// The peer.
    pub peer: PeerId,
    /// The exchange actor that gave up: a report from one that no longer
    /// runs for the peer (a session since replaced) is stale.
    pub exchange: ractor::ActorId,
}

/// The exchange actor; everything it needs comes in [`ExchangeArgs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Exchange;

/// What an exchange actor is started with.
pub struct ExchangeArgs {
    /// The peer: interface index (the scope of both addresses; 0 for none)
    /// and its link-local address.
    pub peer: PeerId,
    /// The peer's name, for logs.
    pub peer_hostname: String,
    /// The peer's kind, for logs.
    pub peer_kind: RouterKind,
    /// Exchange version from the peer's discovery packets (2 or 3).
    pub version: u8,
    /// Our link-local address on the peer's interface; the server binds it.
    pub local_addr: Ipv6Addr,
    /// Port our server listens on (`--exchange-port`; 0 picks one, for
    /// tests).
    pub port: u16,
    /// Port the peer's server listens on: the same as `port` in a
    /// deployment, where both ends use `--exchange-port`.
    pub peer_port: u16,
    /// Bound on every request, both ways (`--exchange-timeout`).
    pub timeout: Duration,
    /// The longest path the import policy takes (`--max-path-len`): what
    /// a peer sends is read up to one name past it.
    pub max_path_len: usize,
    /// Where imports and pull results go, and who answers pulls.
    pub router: RouterRef,
    /// Told once when exchange keeps failing (the supervisor).
    pub on_failure: Option<DerivedActorRef<ExchangeFailed>>,
    /// How long exchange must have been failing, besides
    /// [`MAX_ATTEMPTS`] attempts, before `on_failure` is told: the peer's
    /// expiry threshold, so that a peer whose server starts a little after
    /// ours (it reaches Exchange up to one solicit interval later) is not
    /// expired for it.
    pub give_up_after: Duration,
    /// Parent logger; the actor adds its component and peer.
    pub log: Logger,
    /// The network side: HTTP in production, in-memory in tests.
    pub transport: ExchangeTransport,
}

impl ExchangeArgs {
    /// Arguments for the peer `identity` on interface `ifindex`, from the
    /// router's configuration.
    pub fn new(
        config: &RouterConfig,
        ifindex: u32,
        local_addr: Ipv6Addr,
        identity: &PeerIdentity,
        router: RouterRef,
        on_failure: Option<DerivedActorRef<ExchangeFailed>>,
        log: Logger,
    ) -> Self {
        ExchangeArgs {
            peer: PeerId { ifindex, addr: identity.addr },
            peer_hostname: identity.hostname.clone(),
            peer_kind: identity.kind,
            version: identity.version,
            local_addr,
            port: config.exchange_port,
            peer_port: config.exchange_port,
            timeout: config.exchange_timeout,
            max_path_len: config.policy.max_path_len,
            router,
            on_failure,
            give_up_after: config.expire_threshold,
            log,
            transport: ExchangeTransport::http(),
        }
    }
}

/// Messages an exchange actor handles.
pub enum ExchangeMsg {
    /// Push this update to the peer (from the router), in order.
    Push(OutUpdate),
    /// Pull the peer's full set again and hand it to the router (sync).
    Pull,
    /// The router answered a pull of the peer ([`PeerCmd::Answered`]).
    Answered,
    /// The peer pushed this update to our server (from the server task).
    /// Passed on to the router with its permit, or held back with it
    /// while a pull is out.
    Pushed(OutUpdate, ImportPermit),
    /// Our server answered a pull from the peer (from the server task).
    PeerPulled {
        /// The pulling session's id (`server::SESSION_HEADER`), if sent.
        session: Option<u64>,
        /// The answer's size in bytes.
        bytes: usize,
        /// Encoded `session::ORIGINAL_PULL_WAIT` or more after the pull
        /// arrived.
        late: bool,
    },
    /// Our server refused a push of the peer (from the server task).
    PushRefused,
    /// A pull task found the pull slot taken and waits for it
    /// (internal).
    PullWaiting {
        /// The generation the pull was started with.
        gen: u64,
    },
    /// A pull task that waited got the slot and sends the pull
    /// (internal).
    PullSent {
        /// The generation the pull was started with.
        gen: u64,
    },
    /// A pull task finished (internal).
    PullDone {
        /// The generation the pull was started with.
        gen: u64,
        /// The peer's full set, in v3, and its push limit, or why not.
        result: Result<Pulled, ClientError>,
        /// The peer's pull slot, taken before the request: handed to the
        /// router with the answer.
        slot: Option<ImportPermit>,
    },
    /// A push task finished (internal).
    PushDone {
        /// The generation the push was started with.
        gen: u64,
        /// Whether the peer accepted it, and if so the body's bytes.
        result: Result<usize, ClientError>,
    },
    /// A back-off elapsed (internal).
    Retry {
        /// What to try again.
        kind: RetryKind,
        /// The generation the timer was set with.
        gen: u64,
    },
    /// Where the server listens, once bound.
    GetLocalAddr(RpcReplyPort<Option<SocketAddrV6>>),
    /// The actor's counters.
    GetCounters(RpcReplyPort<ExchangeCounters>),
    /// The body limit pushes to the peer are held to: what its last pull
    /// answer announced, else [`DEFAULT_PUSH_LIMIT`].
    GetPushLimit(RpcReplyPort<usize>),
}

impl From<PeerCmd> for ExchangeMsg {
    fn from(cmd: PeerCmd) -> Self {
        match cmd {
            PeerCmd::Push(update) => ExchangeMsg::Push(update),
            PeerCmd::Pull => ExchangeMsg::Pull,
            PeerCmd::Answered => ExchangeMsg::Answered,
        }
    }
}

impl TryFrom<ExchangeMsg> for PeerCmd {
    type Error = ExchangeMsg;

    fn try_from(msg: ExchangeMsg) -> Result<Self, ExchangeMsg> {
        match msg {
            ExchangeMsg::Push(update) => Ok(PeerCmd::Push(update)),
            ExchangeMsg::Pull => Ok(PeerCmd::Pull),
            ExchangeMsg::Answered => Ok(PeerCmd::Answered),
            other => Err(other),
        }
    }
}

/// A request failure as the session sees it.
fn failure(e: ClientError) -> Failure {
    if e.is_refused_as_too_large() {
        Failure::TooLarge(e.to_string())
    } else if e.is_router_behind() {
        Failure::Busy(e.to_string())
    } else {
        Failure::Other(e.to_string())
    }
}

/// State of an exchange actor.
pub struct State {
    /// The session's rules.
    session: Session,
    /// When the session started (its clock's zero).
    started: tokio::time::Instant,
    /// The peer.
    peer: PeerId,
    /// The router.
    router: RouterRef,
    /// Told when exchange keeps failing.
    on_failure: Option<DerivedActorRef<ExchangeFailed>>,
    /// The peer's server.
    client: Arc<dyn ExchangeClient>,
    /// Serves the peer.
    transport: ExchangeTransport,
    /// Counters, shared with the server.
    stats: Arc<Stats>,
    /// Where the server is to listen.
    listen: SocketAddrV6,
    /// What the server's handlers need.
    server_ctx: Arc<ServerCtx>,
    /// The server, once bound.
    server: Option<Serving>,
    /// The pull task in flight (waiting for the pull slot, then the
    /// request).
    pull_task: Option<JoinHandle<()>>,
    /// The push task in flight.
    push_task: Option<JoinHandle<()>>,
    /// The latest timer of each kind (an earlier one is stale anyway).
    timers: HashMap<TimerKind, Option<JoinHandle<()>>>,
    /// The permit of the push being stepped, passed on to the router (which
    /// gives it back through its dataplane worker).
    permit: Option<ImportPermit>,
    /// The permits of the pushes the session holds while our pull is out,
    /// passed on with them: a held push still counts against the peer, so
    /// a peer that keeps a pull of ours out cannot push past the router's
    /// pace into the held list (import permits and unpaced slots,
    /// `server::UNPACED_IN_FLIGHT`, are alike here: any goes with any, and
    /// each goes back to its own kind when dropped).
    held_permits: Vec<ImportPermit>,
    /// One slot: a pull of the peer is sent only once the router has
    /// imported the last answer (which carries the slot there), so that a
    /// peer answering at once, pull after pull, cannot queue decoded
    /// answers (each up to `client::MAX_PULL_BODY` of text) in front of a
    /// router slower than it.
    pull_slots: Arc<Semaphore>,
    /// The slot of the pull answer being stepped, handed to the router
    /// with it.
    answer_slot: Option<ImportPermit>,
    /// Bounds the lines about pushes refused as too large: a peer that
    /// refuses every push (`400`) makes each item of every change one.
    refusals_log: LogLimiter,
    /// Bounds the error lines about updates dropped for good (apart from
    /// the refusals', so that those never hide one).
    dropped_log: LogLimiter,
    /// The push bytes sent (`Stats::push_bytes_sent`) when freed memory
    /// was last handed back (see [`mem::TRIM_AFTER_BYTES`]).
    trimmed_at: u64,
    /// Logger with the peer.
    log: Logger,
}

/// An actor that failed (an error or a panic in a handler) or was killed
/// skips `post_stop`: its tasks are aborted here, as its state goes. Left
/// running, its server kept the address, and the exchange actor started
/// next for the peer retried its bind for good while the peer's pushes
/// reached the orphan.
impl Drop for State {
    fn drop(&mut self) {
        for task in self.take_tasks() {
            task.abort();
        }
    }
}

impl State {
    /// Every task the actor runs: its pull, its push, its timers and its
    /// server, taken to abort.
    fn take_tasks(&mut self) -> Vec<JoinHandle<()>> {
        let timers = self.timers.drain().filter_map(|(_, t)| t);
        [self.pull_task.take(), self.push_task.take()]
            .into_iter()
            .flatten()
            .chain(timers)
            .chain(self.server.take().map(|s| s.task))
            .collect()
    }

    /// Feed `input` to the session and carry out what it asks, including
    /// the inputs that carrying it out produces at once (a bind's result).
    fn step(&mut self, myself: &ExchangeRef, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let now = self.started.elapsed();
            for effect in self.session.handle(now, input) {
                inputs.extend(self.execute(myself, effect));
            }
        }
        // The pushes sent, encoded and freed here after the router's own
        // trim, go back to the system once nothing is left to send.
        let sent = self.stats.push_bytes_sent.load(Ordering::Relaxed);
        if self.session.is_drained()
            && sent - self.trimmed_at >= mem::TRIM_AFTER_BYTES
        {
            self.trimmed_at = sent;
            mem::trim();
        }
    }

    fn execute(
        &mut self,
        myself: &ExchangeRef,
        effect: Effect,
    ) -> Option<Input> {
        match effect {
            Effect::Bind => return Some(self.bind()),
            Effect::Pull { gen } => {
                let (client, me) = (self.client.clone(), myself.clone());
                let id = self.server_ctx.session;
                let max_path_len = self.server_ctx.max_path_len;
                let slots = Arc::clone(&self.pull_slots);
                self.pull_task = Some(tokio::spawn(async move {
                    // Not before the router has imported the last answer;
                    // the session holds no pushes while this waits.
                    let slot = match slots.clone().try_acquire_owned() {
                        Ok(slot) => Some(slot),
                        Err(_) => {
                            let _ = me.cast(ExchangeMsg::PullWaiting { gen });
                            let slot = slots.acquire_owned().await.ok();
                            let _ = me.cast(ExchangeMsg::PullSent { gen });
                            slot
                        }
                    };
                    let result = client.pull(Some(id), max_path_len).await;
                    let _ =
                        me.cast(ExchangeMsg::PullDone { gen, result, slot });
                }));
            }
            Effect::Push { gen, update } => {
                let (client, me) = (self.client.clone(), myself.clone());
                self.push_task = Some(tokio::spawn(async move {
                    let result = client.push(&update).await;
                    let _ = me.cast(ExchangeMsg::PushDone { gen, result });
                }));
            }
            Effect::StartTimer { kind, gen, after_ms } => {
                let after = Duration::from_millis(after_ms);
                let timer =
                    cast_after(myself, after, ExchangeMsg::Retry { kind, gen });
                replace_task(self.timers.entry(kind).or_default(), timer);
            }
            Effect::Import(update) => {
                let permit =
                    self.permit.take().or_else(|| self.held_permits.pop());
                let msg = RouterMsg::Import { peer: self.peer, update, permit };
                if let Err(e) = self.router.cast(msg) {
                    warn!(self.log, "router gone; push dropped"; "error" => %e);
                }
            }
            Effect::PullResult(response) => {
                let slot = self.answer_slot.take();
                let msg =
                    RouterMsg::PullResult { peer: self.peer, response, slot };
                if let Err(e) = self.router.cast(msg) {
                    warn!(self.log, "router gone; pull result dropped";
                        "error" => %e);
                }
            }
            Effect::Delivered { through } => {
                // The router's pushes through `through` have reached the
                // peer: it forgets the withdrawals they carried (see
                // `rib::Told`).
                let msg = RouterMsg::Delivered {
                    peer: self.peer,
                    exchange: myself.get_id(),
                    through,
                };
                if let Err(e) = self.router.cast(msg) {
                    debug!(self.log, "router gone; delivery not reported";
                        "error" => %e);
                }
            }
            Effect::ReportFailure { push_failures, pull_failures } => {
                Stats::bump(&self.stats.failures_reported);
                error!(self.log, "exchange with peer keeps failing";
                    "push_failures" => push_failures,
                    "pull_failures" => pull_failures);
                if let Some(to) = &self.on_failure {
                    let failed = ExchangeFailed {
                        peer: self.peer,
                        exchange: myself.get_id(),
                    };
                    if let Err(e) = to.send_message(failed) {
                        warn!(self.log, "cannot report the failure";
                            "error" => %e);
                    }
                }
            }
            Effect::Count { counter, n } => {
                let c = match counter {
                    Counter::PushesSent => &self.stats.pushes_sent,
                    Counter::PushBytesSent => &self.stats.push_bytes_sent,
                    Counter::PullsSent => &self.stats.pulls_sent,
                    Counter::PushesDeferred => &self.stats.pushes_deferred,
                    Counter::PullBytesReceived => {
                        &self.stats.pull_bytes_received
                    }
                };
                c.fetch_add(n, Ordering::Relaxed);
            }
            Effect::Failed { op, failures, error } => {
                let c = match op {
                    Op::Push => &self.stats.push_failures,
                    Op::Pull => &self.stats.pull_failures,
                    Op::Bind => &self.stats.bind_failures,
                };
                Stats::bump(c);
                match op {
                    Op::Bind => warn!(self.log,
                        "cannot bind the exchange server; will retry";
                        "addr" => %self.listen, "error" => error,
                        "failures" => failures),
                    Op::Push => warn!(self.log, "push failed";
                        "error" => error, "failures" => failures),
                    Op::Pull => warn!(self.log, "pull failed";
                        "error" => error, "failures" => failures),
                }
            }
            Effect::Refused { items, error } => {
                Stats::bump(&self.stats.pushes_refused);
                // A single item is dropped instead (`Effect::Dropped`).
                if items > 1
                    && self.refusals_log.allow(&self.log, "refused pushes")
                {
                    info!(self.log,
                        "push refused as too large; sending it in halves";
                        "items" => items, "half" => items / 2,
                        "error" => error);
                }
            }
            Effect::Dropped { why, limit, update } => {
                let n = update.len() as u64;
                self.stats
                    .items_dropped_oversize
                    .fetch_add(n, Ordering::Relaxed);
                if !self.dropped_log.allow(&self.log, "dropped updates") {
                    return None;
                }
                let wire = update.to_wire();
                let (u, t) = (wire.underlay.unwrap_or_default(), wire.tunnel);
                let first = u.withdraw.iter().chain(&u.announce).next();
                error!(self.log, "dropping an update no push can carry";
                    "why" => ?why, "items" => n, "limit" => limit,
                    "destination" => first.map(|p| p.destination.to_string()),
                    "path_len" => first.map(|p| p.path.len()),
                    "tunnels" => t.map_or(0, |t| t.len()));
            }
            Effect::PushLimit { bytes, was } => {
                info!(self.log, "push limit for this peer";
                    "bytes" => bytes, "was" => was);
            }
        }
        None
    }

    /// Bind the server now; the outcome for the session.
    fn bind(&mut self) -> Input {
        match self.transport.0.serve(self.listen, self.server_ctx.clone()) {
            Ok(serving) => {
                info!(self.log, "exchange server listening";
                    "addr" => %serving.addr);
                self.server = Some(serving);
                Input::Bound(Ok(()))
            }
            Err(e) => Input::Bound(Err(e.to_string())),
        }
    }
}

impl Actor for Exchange {
    type Msg = ExchangeMsg;
    type State = State;
    type Arguments = ExchangeArgs;

    async fn pre_start(
        &self,
        myself: ExchangeRef,
        args: ExchangeArgs,
    ) -> Result<State, ActorProcessingErr> {
        let peer = args.peer;
        let log = args.log.new(o!(
            "component" => "exchange",
            "peer" => peer.to_string(),
            "peer_hostname" => args.peer_hostname.clone(),
        ));
        let Some(version) = Version::from_advertised(args.version) else {
            return Err(format!(
                "peer {peer} advertises exchange version {}; \
                 only 2 and 3 are spoken",
                args.version
            )
            .into());
        };
        let stats = Arc::new(Stats::default());
        let server_ctx = Arc::new(ServerCtx {
            peer,
            router: args.router.clone(),
            exchange: myself.clone(),
            // Random, so that a restarted daemon's sessions differ from
            // its earlier process's.
            session: uuid::Uuid::new_v4().as_u64_pair().0,
            timeout: args.timeout,
            stats: stats.clone(),
            imports: Arc::new(Semaphore::new(IMPORTS_IN_FLIGHT)),
            unpaced: Arc::new(Semaphore::new(UNPACED_IN_FLIGHT)),
            max_path_len: args.max_path_len,
            pulls: Default::default(),
            log: log.new(o!("unit" => "server")),
        });
        let listen =
            SocketAddrV6::new(args.local_addr, args.port, 0, peer.ifindex);
        let peer_addr =
            SocketAddrV6::new(peer.addr, args.peer_port, 0, peer.ifindex);
        info!(log, "exchange starting"; "kind" => %args.peer_kind,
            "version" => ?version, "peer_server" => %peer_addr);
        let client = args.transport.0.client(
            peer_addr,
            args.local_addr,
            version,
            args.timeout,
        );
        let mut state = State {
            session: Session::new(version, args.give_up_after),
            started: tokio::time::Instant::now(),
            peer,
            router: args.router,
            on_failure: args.on_failure,
            client,
            transport: args.transport,
            stats,
            listen,
            server_ctx,
            server: None,
            pull_task: None,
            push_task: None,
            timers: HashMap::new(),
            permit: None,
            held_permits: Vec::new(),
            trimmed_at: 0,
            pull_slots: Arc::new(Semaphore::new(1)),
            answer_slot: None,
            refusals_log: LogLimiter::new(),
            dropped_log: LogLimiter::new(),
            log,
        };
        // Tell the router first, so that its mailbox holds `PeerUp` ahead
        // of every `Import` and `PullResult` for this peer: nothing is
        // bound or pulled yet. This is the only `PeerUp` the router gets
        // for this session; its answer is the push that makes the peer's
        // view of us whole (see `rib::Told`).
        let up = RouterMsg::PeerUp {
            peer,
            kind: args.peer_kind,
            exchange: myself.get_derived(),
        };
        if let Err(e) = state.router.cast(up) {
            warn!(state.log, "router gone at start"; "error" => %e);
        }
        state.step(&myself, Input::Start);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ExchangeRef,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        abort_and_wait(state.take_tasks()).await;
        debug!(state.log, "exchange stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ExchangeRef,
        msg: ExchangeMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let input = match msg {
            ExchangeMsg::Push(update) => Input::Push(update),
            ExchangeMsg::Pull => Input::Pull,
            ExchangeMsg::Answered => Input::Answered,
            ExchangeMsg::Pushed(update, permit) => {
                state.permit = Some(permit);
                Input::Pushed(update)
            }
            ExchangeMsg::PeerPulled { session, bytes, late } => {
                Input::PeerPulled { session, bytes, late }
            }
            ExchangeMsg::PushRefused => Input::PushRefused,
            ExchangeMsg::PullWaiting { gen } => Input::PullWaiting { gen },
            ExchangeMsg::PullSent { gen } => Input::PullSent { gen },
            ExchangeMsg::PullDone { gen, result, slot } => {
                state.answer_slot = slot;
                Input::PullDone {
                    gen,
                    result: result
                        .map(|p| {
                            state.stats.malformed_items(
                                p.malformed,
                                "a pull answer",
                                &state.log,
                            );
                            PullAnswer {
                                response: p.response,
                                push_limit: p.push_limit,
                                bytes: p.bytes,
                                session: p.session,
                            }
                        })
                        .map_err(failure),
                }
            }
            ExchangeMsg::PushDone { gen, result } => {
                Input::PushDone { gen, result: result.map_err(failure) }
            }
            ExchangeMsg::Retry { kind, gen } => Input::Timer { kind, gen },
            ExchangeMsg::GetLocalAddr(reply) => {
                let _ = reply.send(state.server.as_ref().map(|s| s.addr));
                return Ok(());
            }
            ExchangeMsg::GetCounters(reply) => {
                let _ = reply.send(state.stats.snapshot());
                return Ok(());
            }
            ExchangeMsg::GetPushLimit(reply) => {
                let _ = reply.send(state.session.push_limit());
                return Ok(());
            }
        };
        state.step(&myself, input);
        // Not imported at once: held (its permit goes with it), or dropped
        // (and the permits of held pushes the session let go with it).
        state.held_permits.extend(state.permit.take());
        state.held_permits.truncate(state.session.held_pushes());
        // A failed pull's slot, or a stale answer's, goes back now.
        state.answer_slot = None;
        Ok(())
    }
}

#[cfg(test)]
#[path = "actor_tests.rs"]
mod tests;
