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
//! the [`Transport`] (HTTP in production, [`super::transport::ExchangeNet`]
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ddm_admin_api::latest::RouterKind;
use ractor::{
    Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort,
};
use slog::{debug, error, info, o, warn, Logger};
use tokio::task::JoinHandle;

use super::client::{ClientError, Pulled};
use ddm_proto::outgoing::OutUpdate;
// The push rules and the version live in the protocol floor; they stay
// reachable here, where the session uses them.
pub use ddm_proto::outgoing::{
    merge, take_chunk, Chunk, PushBounds, DEFAULT_PUSH_LIMIT, MAX_PUSH_ITEMS,
};
pub use ddm_proto::Version;

use super::server::ServerCtx;
pub use super::session::{
    backoff, TimerKind as RetryKind, BACKOFF_MAX, BACKOFF_MIN, MAX_ATTEMPTS,
};
use super::session::{
    Counter, Effect, Failure, Input, PullAnswer, Session, TimerKind,
};
use super::transport::{ExchangeClient, ExchangeTransport, Serving};
use super::wire::v3;
use crate::config::RouterConfig;
use crate::discovery::PeerIdentity;
use crate::router::{PeerCmd, RouterMsg, RouterRef};
use ddm_proto::PeerId;

/// A handle to an exchange actor.
pub type ExchangeRef = ActorRef<ExchangeMsg>;
/// Told to `on_failure` when exchange with a peer keeps failing: the peer
/// should be expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeFailed {
    /// The peer.
    pub peer: PeerId,
}

/// Declares the counters once, as the live atomics and their snapshot.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// What an exchange actor has done, for tests and logs.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct ExchangeCounters {
            $($(#[$doc])* pub $name: u64,)*
        }

        /// The live counters, shared by the actor and its server task.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl ExchangeCounters {
            /// Every counter by name.
            pub fn named(&self) -> std::collections::BTreeMap<String, u64> {
                [$((stringify!($name), self.$name),)*]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            }
        }

        impl Stats {
            /// The current values.
            pub fn snapshot(&self) -> ExchangeCounters {
                ExchangeCounters {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Pushes from the peer handed to the router.
    pushes_received,
    /// Pulls from the peer answered.
    pulls_received,
    /// Body bytes of the pushes received from the peer (accepted or not,
    /// once read whole).
    push_bytes_received,
    /// Body bytes of the pull answers sent to the peer.
    pull_bytes_sent,
    /// Requests refused with 403: not from the peer's address.
    rejected_forbidden,
    /// Requests refused with 400: malformed JSON or an invalid prefix.
    rejected_malformed,
    /// Requests refused with 413: body over the bound.
    rejected_too_large,
    /// Requests refused otherwise: unknown path, wrong method, slow body.
    rejected_other,
    /// Requests answered 503 because the router was gone or slow.
    router_unavailable,
    /// Connections closed on accept: too many from one kind of address
    /// were open already (see `server::MAX_PEER_CONNECTIONS`).
    connections_refused,
    /// Pushes the peer accepted.
    pushes_sent,
    /// Pushes the peer refused as too large (400 or 413): split and sent
    /// again, or dropped when they held a single item.
    pushes_refused,
    /// Path vectors and tunnel origins never sent because no push the
    /// peer takes can carry them, even alone (logged).
    items_dropped_oversize,
    /// Pulls the peer answered.
    pulls_sent,
    /// Body bytes of the pushes the peer accepted.
    push_bytes_sent,
    /// Body bytes of the pull answers the peer sent.
    pull_bytes_received,
    /// Pushes that failed (each retry counts).
    push_failures,
    /// Pulls that failed (each retry counts).
    pull_failures,
    /// Times the peer was reported failed to `on_failure`.
    failures_reported,
    /// Failed attempts to bind the server's listener.
    bind_failures,
}

impl Stats {
    /// Add one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
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
    /// The peer pushed this update to our server (from the server task).
    /// Passed on to the router, or held back while a pull is out.
    Pushed(v3::Update),
    /// Our server answered a pull from the peer (from the server task).
    PeerPulled {
        /// The pulling session's id (`server::SESSION_HEADER`), if sent.
        session: Option<u64>,
    },
    /// A pull task finished (internal).
    PullDone {
        /// The generation the pull was started with.
        gen: u64,
        /// The peer's full set, in v3, and its push limit, or why not.
        result: Result<Pulled, ClientError>,
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
        }
    }
}

impl TryFrom<ExchangeMsg> for PeerCmd {
    type Error = ExchangeMsg;

    fn try_from(msg: ExchangeMsg) -> Result<Self, ExchangeMsg> {
        match msg {
            ExchangeMsg::Push(update) => Ok(PeerCmd::Push(update)),
            ExchangeMsg::Pull => Ok(PeerCmd::Pull),
            other => Err(other),
        }
    }
}

/// A request failure as the session sees it.
fn failure(e: ClientError) -> Failure {
    if e.is_refused_as_too_large() {
        Failure::TooLarge(e.to_string())
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
    /// The pull task in flight.
    pull_task: Option<JoinHandle<()>>,
    /// The push task in flight.
    push_task: Option<JoinHandle<()>>,
    /// The latest timer of each kind (an earlier one is stale anyway).
    timers: HashMap<TimerKind, JoinHandle<()>>,
    /// Logger with the peer.
    log: Logger,
}

impl State {
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
                self.pull_task = Some(tokio::spawn(async move {
                    let result = client.pull(Some(id)).await;
                    let _ = me.cast(ExchangeMsg::PullDone { gen, result });
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
                let me = myself.clone();
                let timer = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    let _ = me.cast(ExchangeMsg::Retry { kind, gen });
                });
                if let Some(old) = self.timers.insert(kind, timer) {
                    old.abort();
                }
            }
            Effect::Import(update) => {
                let msg = RouterMsg::Import { peer: self.peer, update };
                if let Err(e) = self.router.cast(msg) {
                    warn!(self.log, "router gone; push dropped"; "error" => %e);
                }
            }
            Effect::PullResult(response) => {
                let msg = RouterMsg::PullResult { peer: self.peer, response };
                if let Err(e) = self.router.cast(msg) {
                    warn!(self.log, "router gone; pull result dropped";
                        "error" => %e);
                }
            }
            Effect::Delivered { through } => {
                // Every push the router gave so far has reached the peer:
                // the router forgets the withdrawals they carried (see
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
                    let failed = ExchangeFailed { peer: self.peer };
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
                    Counter::PullBytesReceived => {
                        &self.stats.pull_bytes_received
                    }
                };
                c.fetch_add(n, Ordering::Relaxed);
            }
            Effect::Failed { op, failures, error } => {
                let c = match op {
                    TimerKind::Push => &self.stats.push_failures,
                    TimerKind::Pull => &self.stats.pull_failures,
                    TimerKind::Bind => &self.stats.bind_failures,
                };
                Stats::bump(c);
                match op {
                    TimerKind::Bind => warn!(self.log,
                        "cannot bind the exchange server; will retry";
                        "addr" => %self.listen, "error" => error,
                        "failures" => failures),
                    TimerKind::Push => warn!(self.log, "push failed";
                        "error" => error, "failures" => failures),
                    TimerKind::Pull => warn!(self.log, "pull failed";
                        "error" => error, "failures" => failures),
                }
            }
            Effect::Refused { items, error } => {
                Stats::bump(&self.stats.pushes_refused);
                // A single item is dropped instead (`Effect::Dropped`).
                if items > 1 {
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
                let wire = update.to_wire();
                let (u, t) = (wire.underlay.unwrap_or_default(), wire.tunnel);
                let first = u.withdraw.iter().chain(&u.announce).next();
                error!(self.log, "dropping an update no push can carry";
                    "why" => ?why, "items" => n, "limit" => limit,
                    "destination" => first.map(|p| p.destination.to_string()),
                    "path_len" => first.map(|p| p.path.len()),
                    "tunnels" => t.map_or(0, |t| t.announce.len() + t.withdraw.len()));
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
            pushes: Some(myself.clone()),
            // Random, so that a restarted daemon's sessions differ from
            // its earlier process's.
            session: uuid::Uuid::new_v4().as_u64_pair().0,
            timeout: args.timeout,
            stats: stats.clone(),
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
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        tasks.extend(state.pull_task.take());
        tasks.extend(state.push_task.take());
        tasks.extend(state.timers.drain().map(|(_, t)| t));
        tasks.extend(state.server.take().map(|s| s.task));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
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
            ExchangeMsg::Pushed(update) => Input::Pushed(update),
            ExchangeMsg::PeerPulled { session } => {
                Input::PeerPulled { session }
            }
            ExchangeMsg::PullDone { gen, result } => Input::PullDone {
                gen,
                result: result
                    .map(|p| PullAnswer {
                        response: p.response,
                        push_limit: p.push_limit,
                        bytes: p.bytes,
                        session: p.session,
                    })
                    .map_err(failure),
            },
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
        Ok(())
    }
}

/// Test doubles shared by the exchange tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use tokio::sync::mpsc;

    /// What the fake router was told.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Seen {
        /// `RouterMsg::PeerUp`.
        PeerUp(PeerId, RouterKind),
        /// `RouterMsg::Import`.
        Import(PeerId, v3::Update),
        /// `RouterMsg::PullResult`.
        PullResult(PeerId, v3::PullResponse),
        /// `RouterMsg::PullFor` (answered with the canned response).
        PullFor(PeerId),
        /// `RouterMsg::Delivered`: pushes delivered through this count.
        Delivered(PeerId, u64),
    }

    /// Stands in for the router: records what exchange tells it and
    /// answers pulls with a canned response.
    pub(crate) struct FakeRouter;

    impl Actor for FakeRouter {
        type Msg = RouterMsg;
        type State = (mpsc::UnboundedSender<Seen>, v3::PullResponse);
        type Arguments = (mpsc::UnboundedSender<Seen>, v3::PullResponse);

        async fn pre_start(
            &self,
            _: RouterRef,
            args: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(
            &self,
            _: RouterRef,
            msg: RouterMsg,
            (tx, answer): &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = match msg {
                RouterMsg::PeerUp { peer, kind, .. } => {
                    tx.send(Seen::PeerUp(peer, kind))
                }
                RouterMsg::Import { peer, update } => {
                    tx.send(Seen::Import(peer, update))
                }
                RouterMsg::PullResult { peer, response } => {
                    tx.send(Seen::PullResult(peer, response))
                }
                RouterMsg::PullFor(peer, reply) => {
                    let _ = reply.send(answer.clone());
                    tx.send(Seen::PullFor(peer))
                }
                RouterMsg::Delivered { peer, through, .. } => {
                    tx.send(Seen::Delivered(peer, through))
                }
                _ => Ok(()),
            };
            Ok(())
        }
    }

    /// A fake router answering pulls with `answer`.
    pub(crate) async fn fake_router(
        answer: v3::PullResponse,
    ) -> (RouterRef, mpsc::UnboundedReceiver<Seen>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (r, _) =
            Actor::spawn(None, FakeRouter, (tx, answer)).await.unwrap();
        (r, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::Client;
    use super::super::server;
    use super::testing::{fake_router, Seen};
    use super::*;
    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use ractor::call;
    use std::sync::Mutex;
    use tokio::sync::{mpsc, Semaphore};
    use tokio::time::timeout;

    /// Every wait in these tests is bounded by this.
    const DEADLINE: Duration = Duration::from_secs(15);

    fn discard() -> Logger {
        Logger::root(slog::Discard, o!())
    }

    fn pv(dest: &str, path: &str) -> v3::PathVector {
        v3::PathVector {
            destination: dest.parse().unwrap(),
            path: vec![path.to_string()],
        }
    }

    fn to(prefix: &str, vni: u32) -> v3::TunnelOrigin {
        v3::TunnelOrigin {
            overlay_prefix: prefix.parse().unwrap(),
            boundary_addr: "fd00::99".parse().unwrap(),
            vni,
            metric: 0,
        }
    }

    fn announce(dests: &[&str]) -> v3::Update {
        let mut u = v3::Update::default();
        for d in dests {
            u.underlay_mut().announce.insert(pv(d, "x"));
        }
        u
    }

    fn withdraw(dests: &[&str]) -> v3::Update {
        let mut u = v3::Update::default();
        for d in dests {
            u.underlay_mut().withdraw.insert(pv(d, "x"));
        }
        u
    }

    /// An update announcing `n` paths under `fd00::/16` and withdrawing
    /// `w` under `fd01::/16`.
    fn big(n: usize, w: usize) -> v3::Update {
        let mut u = v3::Update::default();
        for i in 0..n {
            u.underlay_mut()
                .announce
                .insert(pv(&format!("fd00:{i:x}::/64"), "x"));
        }
        for i in 0..w {
            u.underlay_mut()
                .withdraw
                .insert(pv(&format!("fd01:{i:x}::/64"), "x"));
        }
        u
    }

    /// Check that `parts`, sent in order, are `whole` in bounded requests:
    /// no part over the bound, their union is `whole`, and no announcement
    /// is sent before the last withdrawal.
    fn check_parts(parts: &[v3::Update], whole: &v3::Update) {
        let mut union = v3::Update::default();
        let mut announced = false;
        for p in parts {
            assert!(p.len() <= MAX_PUSH_ITEMS, "part of {}", p.len());
            assert!(!p.is_empty(), "empty part");
            let (u, t) = (p.underlay.as_ref(), p.tunnel.as_ref());
            let withdraws = u.is_some_and(|u| !u.withdraw.is_empty())
                || t.is_some_and(|t| !t.withdraw.is_empty());
            assert!(!(announced && withdraws), "withdrawal after announcement");
            announced |= u.is_some_and(|u| !u.announce.is_empty())
                || t.is_some_and(|t| !t.announce.is_empty());
            if let Some(u) = &p.underlay {
                let w = &mut union.underlay_mut().withdraw;
                w.extend(u.withdraw.iter().cloned());
                let a = &mut union.underlay_mut().announce;
                a.extend(u.announce.iter().cloned());
            }
            if let Some(t) = &p.tunnel {
                union.tunnel_mut().withdraw.extend(t.withdraw.iter().copied());
                union.tunnel_mut().announce.extend(t.announce.iter().copied());
            }
        }
        assert_eq!(
            union.len(),
            parts.iter().map(v3::Update::len).sum::<usize>()
        );
        assert_eq!(&union, whole);
    }

    /// A path vector to `dest` along `hops` hostnames of `name_len` bytes.
    fn long_pv(dest: &str, hops: usize, name_len: usize) -> v3::PathVector {
        v3::PathVector {
            destination: dest.parse().unwrap(),
            path: (0..hops)
                .map(|i| format!("{i:02}{}", "n".repeat(name_len - 2)))
                .collect(),
        }
    }

    /// A 300-prefix update to a peer that announces no limit goes out in
    /// pushes of at most 1024 bytes, none refused.
    #[tokio::test]
    async fn a_peer_without_a_limit_gets_1024_byte_pushes() {
        for (version, pull) in [(2, PULL2), (3, PULL3)] {
            let mut fake = FakePeer::start(pull, false).await;
            *fake.ctl.announce.lock().unwrap() = None;
            *fake.ctl.body_cap.lock().unwrap() = Some(DEFAULT_PUSH_LIMIT);
            let (router, _seen) = fake_router(Default::default()).await;
            let (x, _) = Actor::spawn(
                None,
                Exchange,
                args(loopback_peer(), version, fake.port, router, None),
            )
            .await
            .unwrap();
            assert!(fake.next().await.path.ends_with("/pull"));
            let whole = big(300, 0);
            x.cast(ExchangeMsg::Push(whole.clone().into())).unwrap();
            let parts = receive_parts(&mut fake, version, whole.len()).await;
            check_parts(
                &parts.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(),
                &whole,
            );
            assert!(parts.iter().all(|(_, n)| *n <= DEFAULT_PUSH_LIMIT));
            let c = wait_counters(&x, |c| c.pushes_sent == parts.len() as u64)
                .await;
            assert_eq!((c.pushes_refused, c.push_failures), (0, 0));
            assert_eq!(
                call!(x, ExchangeMsg::GetPushLimit).unwrap(),
                DEFAULT_PUSH_LIMIT
            );
            println!("v{version}: 300 prefixes in {} pushes", parts.len());
            x.stop_and_wait(None, None).await.unwrap();
        }
    }

    /// Pushes received by `fake` in `version` until they carry `items`
    /// items, with their body sizes.
    async fn receive_parts(
        fake: &mut FakePeer,
        version: u8,
        items: usize,
    ) -> Vec<(v3::Update, usize)> {
        let mut parts = Vec::new();
        while parts
            .iter()
            .map(|(u, _): &(v3::Update, usize)| u.len())
            .sum::<usize>()
            < items
        {
            let r = fake.next().await;
            assert_eq!(r.path, format!("/v{version}/push"));
            let u = if version == 2 {
                let u: super::super::wire::v2::Update =
                    serde_json::from_slice(&r.body).unwrap();
                v3::Update::try_from(u).unwrap()
            } else {
                serde_json::from_slice(&r.body).unwrap()
            };
            parts.push((u, r.body.len()));
        }
        parts
    }

    /// Pushes wait for the first pull's answer, then are cut to the limit
    /// it announces; the limit belongs to the session's latest answer.
    #[tokio::test]
    async fn pushes_wait_for_the_first_pull_and_its_limit() {
        let mut fake = FakePeer::start_with(PULL3, false, true).await;
        *fake.ctl.announce.lock().unwrap() = Some(4096);
        let (router, _seen) = fake_router(Default::default()).await;
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(loopback_peer(), 3, fake.port, router, None),
        )
        .await
        .unwrap();
        let whole = big(400, 0);
        x.cast(ExchangeMsg::Push(whole.clone().into())).unwrap();
        assert_eq!(fake.next().await.path, "/v3/pull");
        // A new session starts at the default, and waits.
        assert_eq!(
            call!(x, ExchangeMsg::GetPushLimit).unwrap(),
            DEFAULT_PUSH_LIMIT
        );
        fake.ctl.pull_gate.as_ref().unwrap().add_permits(1);
        let parts = receive_parts(&mut fake, 3, whole.len()).await;
        // Cut to 4096 bytes, not 1024: the push waited for the answer.
        assert!(parts[0].1 > DEFAULT_PUSH_LIMIT, "{}", parts[0].1);
        assert!(parts.iter().all(|(_, n)| *n <= 4096));
        let parts: Vec<_> = parts.into_iter().map(|(u, _)| u).collect();
        check_parts(&parts, &whole);
        assert_eq!(call!(x, ExchangeMsg::GetPushLimit).unwrap(), 4096);

        // A later answer without the header: back to the default. One
        // below the default is raised to it.
        for (announce, want) in [
            (None, DEFAULT_PUSH_LIMIT),
            (Some(100), DEFAULT_PUSH_LIMIT),
            (Some(1 << 20), 1 << 20),
        ] {
            *fake.ctl.announce.lock().unwrap() = announce;
            let before = call!(x, ExchangeMsg::GetCounters).unwrap().pulls_sent;
            x.cast(ExchangeMsg::Pull).unwrap();
            fake.ctl.pull_gate.as_ref().unwrap().add_permits(1);
            assert_eq!(fake.next().await.path, "/v3/pull");
            wait_counters(&x, |c| c.pulls_sent == before + 1).await;
            assert_eq!(call!(x, ExchangeMsg::GetPushLimit).unwrap(), want);
        }
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// A peer refusing bodies over 600 bytes with 400 while we assume
    /// 1024: each refused push is resent in halves, a single item it
    /// refuses alone is dropped, and one larger than 1024 is never sent.
    /// None of it counts as a failure: the peer is not reported.
    #[tokio::test]
    async fn refused_pushes_are_split_and_single_items_dropped() {
        let mut fake = FakePeer::start(PULL2, false).await;
        *fake.ctl.announce.lock().unwrap() = None;
        *fake.ctl.body_cap.lock().unwrap() = Some(600);
        let (router, mut seen) = fake_router(Default::default()).await;
        let (tx, mut failed) = mpsc::unbounded_channel();
        let (sup, _) = Actor::spawn(None, Collector, tx).await.unwrap();
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(
                loopback_peer(),
                2,
                fake.port,
                router,
                Some(sup.get_derived()),
            ),
        )
        .await
        .unwrap();
        assert_eq!(fake.next().await.path, "/v2/pull");
        let mut whole = big(200, 30);
        let refused = long_pv("fd02:1::/64", 9, 60);
        let never = long_pv("fd02:2::/64", 20, 60);
        whole.underlay_mut().announce.insert(refused.clone());
        whole.underlay_mut().announce.insert(never.clone());
        x.cast(ExchangeMsg::Push(whole.clone().into())).unwrap();

        let mut want = whole.clone();
        want.underlay_mut().announce.remove(&refused);
        want.underlay_mut().announce.remove(&never);
        let mut accepted = Vec::new();
        let mut delivered = 0;
        let mut refusals = 0;
        while delivered < want.len() {
            let r = fake.next().await;
            let u: super::super::wire::v2::Update =
                serde_json::from_slice(&r.body).unwrap();
            let u = v3::Update::try_from(u).unwrap();
            let text = String::from_utf8_lossy(&r.body);
            assert!(!text.contains("fd02:2::"), "sent the oversize item");
            assert!(r.body.len() <= DEFAULT_PUSH_LIMIT);
            if r.body.len() > 600 {
                refusals += 1;
                continue;
            }
            delivered += u.len();
            accepted.push(u);
        }
        check_parts(&accepted, &want);
        let c = wait_counters(&x, |c| {
            c.pushes_sent == accepted.len() as u64
                && c.items_dropped_oversize == 2
        })
        .await;
        assert!(refusals >= MAX_ATTEMPTS as usize, "{refusals}");
        assert!(c.pushes_refused >= refusals as u64, "{c:?}");
        assert_eq!((c.push_failures, c.failures_reported), (0, 0), "{c:?}");
        assert!(failed.try_recv().is_err(), "a refusal reported the peer");
        // What was dropped is as final as what was delivered: the one
        // update the router gave is reported done.
        let peer = loopback_peer();
        loop {
            match recv(&mut seen).await {
                Seen::Delivered(p, n) => {
                    assert_eq!((p, n), (peer, 1));
                    break;
                }
                Seen::PeerUp(..) | Seen::PullResult(..) => {}
                other => panic!("{other:?}"),
            }
        }
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// A push of 20,000 paths reaches the peer as several requests, in
    /// order; one mixing withdrawals and announcements sends every
    /// withdrawal first. An update queued meanwhile joins the rest.
    #[tokio::test]
    async fn large_pushes_go_out_in_parts() {
        let mut fake = FakePeer::start(PULL3, false).await;
        let (router, _seen) = fake_router(Default::default()).await;
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(loopback_peer(), 3, fake.port, router, None),
        )
        .await
        .unwrap();
        assert_eq!(fake.next().await.path, "/v3/pull");

        let whole = big(20_000, 0);
        x.cast(ExchangeMsg::Push(whole.clone().into())).unwrap();
        let mut parts = Vec::new();
        while parts.iter().map(v3::Update::len).sum::<usize>() < whole.len() {
            let r = fake.next().await;
            assert_eq!(r.path, "/v3/push");
            parts.push(serde_json::from_slice::<v3::Update>(&r.body).unwrap());
        }
        assert!(parts.len() >= 3, "{} parts", parts.len());
        check_parts(&parts, &whole);
        wait_counters(&x, |c| c.pushes_sent == parts.len() as u64).await;

        // Withdraw those, announce as many others: withdrawals first.
        let mut mix = big(0, 0);
        mix.underlay_mut().withdraw = whole.underlay.clone().unwrap().announce;
        mix.underlay_mut().announce = big(0, 12_000).underlay.unwrap().withdraw;
        x.cast(ExchangeMsg::Push(mix.clone().into())).unwrap();
        let mut parts = Vec::new();
        while parts.iter().map(v3::Update::len).sum::<usize>() < mix.len() {
            let r = fake.next().await;
            parts.push(serde_json::from_slice::<v3::Update>(&r.body).unwrap());
        }
        assert!(parts.len() >= 4, "{} parts", parts.len());
        check_parts(&parts, &mix);
        wait_counters(&x, |c| c.pushes_sent >= 3 + 4).await;
        assert!(fake.received.try_recv().is_err(), "nothing more");
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// A version 2 peer gets the same parts, in version 2.
    #[tokio::test]
    async fn large_v2_pushes_go_out_in_parts() {
        let mut fake = FakePeer::start(PULL2, false).await;
        let (router, _seen) = fake_router(Default::default()).await;
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(loopback_peer(), 2, fake.port, router, None),
        )
        .await
        .unwrap();
        assert_eq!(fake.next().await.path, "/v2/pull");
        let whole = big(MAX_PUSH_ITEMS, MAX_PUSH_ITEMS / 2);
        x.cast(ExchangeMsg::Push(whole.clone().into())).unwrap();
        let mut parts = Vec::new();
        while parts.iter().map(v3::Update::len).sum::<usize>() < whole.len() {
            let r = fake.next().await;
            assert_eq!(r.path, "/v2/push");
            let u: super::super::wire::v2::Update =
                serde_json::from_slice(&r.body).unwrap();
            parts.push(v3::Update::try_from(u).unwrap());
        }
        assert_eq!(parts.len(), 2);
        check_parts(&parts, &whole);
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// One request the fake peer received.
    #[derive(Debug)]
    struct Received {
        method: Method,
        path: String,
        /// The session id the request named.
        session: Option<u64>,
        body: Bytes,
    }

    /// How the fake peer answers.
    struct PeerCtl {
        /// Body of every pull answer.
        pull_body: Mutex<String>,
        /// The push limit its pull answers announce, if any (by default
        /// our own server's).
        announce: Mutex<Option<usize>>,
        /// Status of every push answer.
        push_status: Mutex<StatusCode>,
        /// A push body over this many bytes is refused with 400, as the
        /// original daemon refuses one over 1024.
        body_cap: Mutex<Option<usize>>,
        /// When set, each push waits for a permit before answering.
        gate: Option<Semaphore>,
        /// When set, each pull waits for a permit before answering.
        pull_gate: Option<Semaphore>,
    }

    /// A fake peer exchange server on `[::1]:port`.
    struct FakePeer {
        port: u16,
        ctl: Arc<PeerCtl>,
        received: mpsc::UnboundedReceiver<Received>,
        /// Connections accepted so far.
        accepted: Arc<AtomicU64>,
        task: JoinHandle<()>,
    }

    impl Drop for FakePeer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakePeer {
        async fn start(pull_body: &str, gated: bool) -> FakePeer {
            Self::start_with(pull_body, gated, false).await
        }

        async fn start_with(
            pull_body: &str,
            gated: bool,
            pull_gated: bool,
        ) -> FakePeer {
            let ctl = Arc::new(PeerCtl {
                pull_body: Mutex::new(pull_body.to_string()),
                announce: Mutex::new(Some(server::MAX_BODY)),
                push_status: Mutex::new(StatusCode::NO_CONTENT),
                body_cap: Mutex::new(None),
                gate: gated.then(|| Semaphore::new(0)),
                pull_gate: pull_gated.then(|| Semaphore::new(0)),
            });
            let listener =
                server::bind(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0))
                    .unwrap();
            let port = listener.local_addr().unwrap().port();
            let (tx, received) = mpsc::unbounded_channel();
            let c = ctl.clone();
            let accepted = Arc::new(AtomicU64::new(0));
            let count = accepted.clone();
            let task = tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                    let (ctl, tx) = (c.clone(), tx.clone());
                    let svc = hyper::service::service_fn(move |req| {
                        fake_answer(req, ctl.clone(), tx.clone())
                    });
                    conns.spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc),
                    );
                }
            });
            FakePeer { port, ctl, received, accepted, task }
        }

        async fn next(&mut self) -> Received {
            timeout(DEADLINE, self.received.recv())
                .await
                .expect("the peer heard nothing in time")
                .unwrap()
        }
    }

    async fn fake_answer(
        req: Request<Incoming>,
        ctl: Arc<PeerCtl>,
        tx: mpsc::UnboundedSender<Received>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let session = server::session_id(req.headers());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let is_push = method == Method::PUT;
        let size = body.len();
        let _ = tx.send(Received { method, path, session, body });
        let mut answer = Response::builder();
        let (status, body) = if is_push {
            if let Some(gate) = &ctl.gate {
                gate.acquire().await.unwrap().forget();
            }
            match *ctl.body_cap.lock().unwrap() {
                Some(cap) if size > cap => (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{{\"request_id\":\"1\",\"message\":\"request body \
                         exceeded maximum size of {cap} bytes\"}}"
                    ),
                ),
                _ => (*ctl.push_status.lock().unwrap(), String::new()),
            }
        } else {
            if let Some(gate) = &ctl.pull_gate {
                gate.acquire().await.unwrap().forget();
            }
            if let Some(limit) = *ctl.announce.lock().unwrap() {
                answer = answer.header(server::PUSH_LIMIT_HEADER, limit);
            }
            (StatusCode::OK, ctl.pull_body.lock().unwrap().clone())
        };
        Ok(answer.status(status).body(Full::new(Bytes::from(body))).unwrap())
    }

    /// Stands in for the supervisor: forwards failure reports.
    struct Collector;

    impl Actor for Collector {
        type Msg = ExchangeFailed;
        type State = mpsc::UnboundedSender<ExchangeFailed>;
        type Arguments = mpsc::UnboundedSender<ExchangeFailed>;

        async fn pre_start(
            &self,
            _: ActorRef<ExchangeFailed>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _: ActorRef<ExchangeFailed>,
            msg: ExchangeFailed,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(msg);
            Ok(())
        }
    }

    fn loopback_peer() -> PeerId {
        PeerId { ifindex: 0, addr: Ipv6Addr::LOCALHOST }
    }

    fn args(
        peer: PeerId,
        version: u8,
        peer_port: u16,
        router: RouterRef,
        on_failure: Option<DerivedActorRef<ExchangeFailed>>,
    ) -> ExchangeArgs {
        ExchangeArgs {
            peer,
            peer_hostname: "peer".to_string(),
            peer_kind: RouterKind::Transit,
            version,
            local_addr: Ipv6Addr::LOCALHOST,
            port: 0,
            peer_port,
            timeout: Duration::from_secs(2),
            give_up_after: Duration::ZERO,
            router,
            on_failure,
            log: discard(),
            transport: ExchangeTransport::http(),
        }
    }

    async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
        timeout(DEADLINE, rx.recv()).await.expect("nothing in time").unwrap()
    }

    /// Poll the counters until `done` holds, within the deadline.
    async fn wait_counters(
        x: &ExchangeRef,
        done: impl Fn(&ExchangeCounters) -> bool,
    ) -> ExchangeCounters {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            let c = call!(x, ExchangeMsg::GetCounters).unwrap();
            if done(&c) {
                return c;
            }
            assert!(tokio::time::Instant::now() < give_up, "counters: {c:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const PULL3: &str =
        r#"{"underlay":[{"destination":"fd00:5::/64","path":["peer"]}]}"#;
    const PULL2: &str = r#"{"underlay":[{"destination":{"addr":"fd00:5::","len":64},"path":["peer"]}]}"#;

    fn pull_answer() -> v3::PullResponse {
        v3::PullResponse {
            underlay: Some([pv("fd00:5::/64", "peer")].into()),
            tunnel: None,
        }
    }

    /// A push that reaches us while our pull is out is passed on only after
    /// the pull's answer: the answer may be older than the push.
    #[tokio::test]
    async fn pushes_are_held_back_while_a_pull_is_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (router, mut seen) = fake_router(Default::default()).await;
        let peer = loopback_peer();
        let (x, _) =
            Actor::spawn(None, Exchange, args(peer, 3, port, router, None))
                .await
                .unwrap();
        assert_eq!(
            recv(&mut seen).await,
            Seen::PeerUp(peer, RouterKind::Transit)
        );
        // The pull arrives; we do not answer yet.
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"GET /v3/pull"));
        // Meanwhile the peer pushes; the actor has handled it once it has
        // answered a later call (its mailbox is in order).
        let pushed = announce(&["fd00:9::/64"]);
        x.cast(ExchangeMsg::Pushed(pushed.clone())).unwrap();
        call!(x, ExchangeMsg::GetCounters).unwrap();
        assert!(seen.try_recv().is_err(), "the push was not held back");
        // The answer, then the held push, in that order.
        let body = PULL3.as_bytes();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(body).await.unwrap();
        assert_eq!(
            recv(&mut seen).await,
            Seen::PullResult(peer, pull_answer())
        );
        assert_eq!(recv(&mut seen).await, Seen::Import(peer, pushed.clone()));
        // With no pull out, pushes go straight through.
        x.cast(ExchangeMsg::Pushed(pushed.clone())).unwrap();
        assert_eq!(recv(&mut seen).await, Seen::Import(peer, pushed));
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// Start: one pull, its result to the router. Then pushes in order,
    /// merged while one is in flight; `Pull` pulls again.
    #[tokio::test]
    async fn pulls_at_start_then_pushes_in_order_merging() {
        let mut fake = FakePeer::start(PULL3, true).await;
        let (router, mut seen) = fake_router(Default::default()).await;
        let peer = loopback_peer();
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(peer, 3, fake.port, router, None),
        )
        .await
        .unwrap();
        assert_eq!(
            recv(&mut seen).await,
            Seen::PeerUp(peer, RouterKind::Transit)
        );

        let r = fake.next().await;
        assert_eq!((r.method, r.path.as_str()), (Method::GET, "/v3/pull"));
        assert_eq!(
            recv(&mut seen).await,
            Seen::PullResult(peer, pull_answer())
        );

        // The first push is held by the peer...
        x.cast(ExchangeMsg::Push(announce(&["fd00:1::/64"]).into())).unwrap();
        let r = fake.next().await;
        assert_eq!((r.method, r.path.as_str()), (Method::PUT, "/v3/push"));
        let first: v3::Update = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(first, announce(&["fd00:1::/64"]));
        let first_len = r.body.len();
        // ...while three more arrive (the empty one is ignored).
        x.cast(ExchangeMsg::Push(announce(&["fd00:2::/64"]).into())).unwrap();
        x.cast(ExchangeMsg::Push(withdraw(&["fd00:1::/64"]).into())).unwrap();
        x.cast(ExchangeMsg::Push(v3::Update::default().into())).unwrap();
        x.cast(ExchangeMsg::Push(announce(&["fd00:3::/64"]).into())).unwrap();
        let c = call!(x, ExchangeMsg::GetCounters).unwrap();
        assert_eq!(c.pushes_sent, 0, "the first push is still held");
        fake.ctl.gate.as_ref().unwrap().add_permits(100);

        let r = fake.next().await;
        let second: v3::Update = serde_json::from_slice(&r.body).unwrap();
        let r2_len = r.body.len();
        let mut want = announce(&["fd00:2::/64", "fd00:3::/64"]);
        want.underlay_mut().withdraw.insert(pv("fd00:1::/64", "x"));
        assert_eq!(second, want);
        wait_counters(&x, |c| c.pushes_sent == 2).await;
        assert!(fake.received.try_recv().is_err(), "exactly two pushes");
        // Only now is everything the router gave (5 pushes) delivered.
        assert_eq!(recv(&mut seen).await, Seen::Delivered(peer, 5));

        x.cast(ExchangeMsg::Pull).unwrap();
        let r = fake.next().await;
        assert_eq!((r.method, r.path.as_str()), (Method::GET, "/v3/pull"));
        assert_eq!(
            recv(&mut seen).await,
            Seen::PullResult(peer, pull_answer())
        );
        let c = wait_counters(&x, |c| c.pulls_sent == 2).await;
        assert_eq!(c.push_failures + c.pull_failures, 0);
        assert_eq!(c.push_bytes_sent, (first_len + r2_len) as u64);
        assert_eq!(c.pull_bytes_received, 2 * PULL3.len() as u64);
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// A version 2 peer is pulled and pushed to in version 2.
    #[tokio::test]
    async fn speaks_v2_to_a_v2_peer() {
        let mut fake = FakePeer::start(PULL2, false).await;
        let (router, mut seen) = fake_router(Default::default()).await;
        let peer = loopback_peer();
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(peer, 2, fake.port, router, None),
        )
        .await
        .unwrap();
        assert_eq!(
            recv(&mut seen).await,
            Seen::PeerUp(peer, RouterKind::Transit)
        );
        let r = fake.next().await;
        assert_eq!(r.path, "/v2/pull");
        assert_eq!(
            recv(&mut seen).await,
            Seen::PullResult(peer, pull_answer())
        );

        let mut u = announce(&["fd00:1::/64"]);
        u.tunnel_mut().announce.insert(to("10.0.0.0/8", 4));
        x.cast(ExchangeMsg::Push(u.clone().into())).unwrap();
        let r = fake.next().await;
        assert_eq!(r.path, "/v2/push");
        let text = std::str::from_utf8(&r.body).unwrap();
        assert!(
            text.contains(r#"{"V4":{"addr":"10.0.0.0","len":8}}"#),
            "{text}"
        );
        let got: super::super::wire::v2::Update =
            serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v3::Update::try_from(got).unwrap(), u);
        wait_counters(&x, |c| c.pushes_sent == 1).await;
        // The pull's connection was kept alive and carried the push.
        assert_eq!(fake.accepted.load(Ordering::Relaxed), 1);
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// A peer that refuses pushes: retried with back-off, reported once
    /// after `MAX_ATTEMPTS`, and delivered once the peer recovers.
    #[tokio::test]
    async fn failing_pushes_are_retried_and_reported() {
        let mut fake = FakePeer::start(PULL3, false).await;
        *fake.ctl.push_status.lock().unwrap() =
            StatusCode::INTERNAL_SERVER_ERROR;
        let (router, _seen) = fake_router(Default::default()).await;
        let (tx, mut failed) = mpsc::unbounded_channel();
        let (sup, _) = Actor::spawn(None, Collector, tx).await.unwrap();
        let peer = loopback_peer();
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(peer, 3, fake.port, router, Some(sup.get_derived())),
        )
        .await
        .unwrap();
        assert_eq!(fake.next().await.path, "/v3/pull");

        let started = tokio::time::Instant::now();
        x.cast(ExchangeMsg::Push(announce(&["fd00:1::/64"]).into())).unwrap();
        assert_eq!(recv(&mut failed).await, ExchangeFailed { peer });
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1500), "{took:?}");
        let c = call!(x, ExchangeMsg::GetCounters).unwrap();
        assert_eq!(c.push_failures, u64::from(MAX_ATTEMPTS));
        assert_eq!(c.failures_reported, 1);
        assert_eq!(c.pushes_sent, 0);
        for _ in 0..MAX_ATTEMPTS {
            let r = fake.next().await;
            let u: v3::Update = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(u, announce(&["fd00:1::/64"]));
        }

        // An update queued during the back-off joins the retried one.
        x.cast(ExchangeMsg::Push(announce(&["fd00:2::/64"]).into())).unwrap();
        *fake.ctl.push_status.lock().unwrap() = StatusCode::NO_CONTENT;
        let r = fake.next().await;
        let u: v3::Update = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(u, announce(&["fd00:1::/64", "fd00:2::/64"]));
        let c = wait_counters(&x, |c| c.pushes_sent == 1).await;
        assert_eq!(c.failures_reported, 1);
        assert!(failed.try_recv().is_err(), "reported once");
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// Nothing listens at the peer: the pull is retried, then reported.
    #[tokio::test]
    async fn unreachable_peer_is_reported() {
        // A port that was just free: nothing listens there.
        let l = server::bind(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0))
            .unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let (router, mut seen) = fake_router(Default::default()).await;
        let (tx, mut failed) = mpsc::unbounded_channel();
        let (sup, _) = Actor::spawn(None, Collector, tx).await.unwrap();
        let peer = loopback_peer();
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(peer, 3, port, router, Some(sup.get_derived())),
        )
        .await
        .unwrap();
        assert_eq!(
            recv(&mut seen).await,
            Seen::PeerUp(peer, RouterKind::Transit)
        );
        assert_eq!(recv(&mut failed).await, ExchangeFailed { peer });
        let c = call!(x, ExchangeMsg::GetCounters).unwrap();
        assert!(c.pull_failures >= u64::from(MAX_ATTEMPTS), "{c:?}");
        assert_eq!(c.pulls_sent, 0);
        assert!(seen.try_recv().is_err(), "no pull result");
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// Failures spread over less than `give_up_after` are not reported: a
    /// peer whose server starts a little after ours is not expired for it.
    #[tokio::test]
    async fn short_failure_streaks_are_not_reported() {
        let l = server::bind(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0))
            .unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let (router, mut seen) = fake_router(Default::default()).await;
        let (tx, mut failed) = mpsc::unbounded_channel();
        let (sup, _) = Actor::spawn(None, Collector, tx).await.unwrap();
        let peer = loopback_peer();
        let mut a = args(peer, 3, port, router, Some(sup.get_derived()));
        a.give_up_after = Duration::from_secs(3600);
        let (x, _) = Actor::spawn(None, Exchange, a).await.unwrap();
        assert_eq!(
            recv(&mut seen).await,
            Seen::PeerUp(peer, RouterKind::Transit)
        );
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            let c = call!(x, ExchangeMsg::GetCounters).unwrap();
            if c.pull_failures > u64::from(MAX_ATTEMPTS) {
                break;
            }
            assert!(tokio::time::Instant::now() < give_up, "{c:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(failed.try_recv().is_err(), "reported too early");
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// The actor's own server over a real socket: the peer's push reaches
    /// the router, its pull is answered; a stranger is refused.
    #[tokio::test]
    async fn serves_the_peer_and_refuses_strangers() {
        let mut fake = FakePeer::start(PULL3, false).await;
        let answer = pull_answer();
        let (router, mut seen) = fake_router(answer.clone()).await;
        let peer = loopback_peer();
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(peer, 3, fake.port, router.clone(), None),
        )
        .await
        .unwrap();
        assert_eq!(
            recv(&mut seen).await,
            Seen::PeerUp(peer, RouterKind::Transit)
        );
        let local = call!(x, ExchangeMsg::GetLocalAddr).unwrap().unwrap();
        assert_ne!(local.port(), 0);
        assert!(matches!(recv(&mut seen).await, Seen::PullResult(..)));

        let as_peer = Client::new(local, Version::V3, Duration::from_secs(2));
        let u = announce(&["fd00:8::/64"]);
        let pushed = as_peer.push(&(&u).into()).await.unwrap();
        assert_eq!(recv(&mut seen).await, Seen::Import(peer, u.clone()));
        let pulled = as_peer.pull(None).await.unwrap();
        assert_eq!(pulled.response, answer);
        assert_eq!(pulled.push_limit, Some(server::MAX_BODY));
        // The answer names the actor's session, the same one its own
        // pulls name.
        let ours = pulled.session.expect("a session id");
        let first = fake.next().await;
        assert_eq!(
            (first.path.as_str(), first.session),
            ("/v3/pull", Some(ours))
        );
        assert_eq!(recv(&mut seen).await, Seen::PullFor(peer));
        let as_v2 = Client::new(local, Version::V2, Duration::from_secs(2));
        let pulled_v2 = as_v2.pull(None).await.unwrap();
        assert_eq!(pulled_v2.response, answer);
        let c = call!(x, ExchangeMsg::GetCounters).unwrap();
        assert_eq!((c.pushes_received, c.pulls_received), (1, 2));
        assert!(pushed > 0 && pulled.bytes > 0 && pulled_v2.bytes > 0);
        assert_eq!(c.push_bytes_received, pushed as u64);
        assert_eq!(c.pull_bytes_sent, (pulled.bytes + pulled_v2.bytes) as u64);

        // Another exchange actor whose peer is someone else: our loopback
        // source address is a stranger to it.
        let other = PeerId { ifindex: 0, addr: "fd00::2".parse().unwrap() };
        let (y, _) = Actor::spawn(
            None,
            Exchange,
            args(other, 3, fake.port, router, None),
        )
        .await
        .unwrap();
        let local = call!(y, ExchangeMsg::GetLocalAddr).unwrap().unwrap();
        let stranger = Client::new(local, Version::V3, Duration::from_secs(2));
        match stranger.push(&(&u).into()).await {
            Err(ClientError::Status { status, .. }) => {
                assert_eq!(status, StatusCode::FORBIDDEN)
            }
            other => panic!("expected 403, got {other:?}"),
        }
        let c = call!(y, ExchangeMsg::GetCounters).unwrap();
        assert_eq!((c.rejected_forbidden, c.pushes_received), (1, 0));
        y.stop_and_wait(None, None).await.unwrap();
        x.stop_and_wait(None, None).await.unwrap();
    }

    /// Stopping closes the listener: a new actor can bind the same port at
    /// once. A port in use is retried, not fatal.
    #[tokio::test]
    async fn stop_frees_the_port_and_busy_ports_are_retried() {
        let fake = FakePeer::start(PULL3, false).await;
        let (router, _seen) = fake_router(Default::default()).await;
        let peer = loopback_peer();
        let (x, _) = Actor::spawn(
            None,
            Exchange,
            args(peer, 3, fake.port, router.clone(), None),
        )
        .await
        .unwrap();
        let port = call!(x, ExchangeMsg::GetLocalAddr).unwrap().unwrap().port();

        // While x holds the port, a second actor on it cannot bind yet.
        let mut same = args(peer, 3, fake.port, router.clone(), None);
        same.port = port;
        let (y, _) = Actor::spawn(None, Exchange, same).await.unwrap();
        assert_eq!(call!(y, ExchangeMsg::GetLocalAddr).unwrap(), None);
        assert!(call!(y, ExchangeMsg::GetCounters).unwrap().bind_failures >= 1);

        x.stop_and_wait(None, None).await.unwrap();
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(a) = call!(y, ExchangeMsg::GetLocalAddr).unwrap() {
                assert_eq!(a.port(), port);
                break;
            }
            assert!(tokio::time::Instant::now() < give_up, "never rebound");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        y.stop_and_wait(None, None).await.unwrap();
        // And once y is gone, the port is free right away.
        server::bind(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0))
            .unwrap();
    }

    #[tokio::test]
    async fn unknown_version_fails_to_start() {
        let (router, _seen) = fake_router(Default::default()).await;
        let r = Actor::spawn(
            None,
            Exchange,
            args(loopback_peer(), 4, 1, router, None),
        )
        .await;
        assert!(r.is_err());
    }
}
