//! The exchange actor: one per peer.
//!
//! ```text
//!                 ┌──────────── Exchange actor ─────────────┐
//!   router ─Push/Pull─▶ pending (merged) ─▶ push task ─PUT /vN/push─▶ peer
//!                 │                     ◀─PushDone──┘            │
//!                 │     pull task ─GET /vN/pull─────────────────▶ peer
//!                 │     ◀─PullDone──┘ ─PullResult─▶ router        │
//!   timers ─Retry{gen}─▶                                          │
//!                 └─────────────────────────────────────────────┘
//!   peer ─PUT /vN/push─▶ server task ─Pushed─▶ actor ─Import─▶ router
//!   peer ─GET /vN/pull─▶ server task ─PullFor (call)─▶ router
//! ```
//!
//! On start the actor sends the router `PeerUp` (so the router knows the
//! peer before any of its imports arrive), binds its [`server`] on
//! `[local%ifindex]:port` and pulls the peer's full set once, handing it to
//! the router as `PullResult`. Afterwards it pushes every update the router
//! gives it, in order, one request at a time: while a push is in flight the
//! updates that arrive are merged into one pending update (a later withdraw
//! of a path cancels its pending announce and the other way round), sent
//! when the in-flight one completes. Requests run on tasks that cast their
//! outcome back, so the mailbox never waits on the network.
//!
//! Every push fits the peer's body limit, which belongs to the session: the
//! original daemon's server refuses bodies over [`DEFAULT_PUSH_LIMIT`]
//! (1024 bytes), so that is assumed until the peer's pull answer announces
//! more ([`server::PUSH_LIMIT_HEADER`]; our own server announces its 64 MiB).
//! Pushes wait for the first pull to complete (answered or failed), so the
//! limit is known before the first one goes out. A pending update goes out
//! in parts ([`take_chunk`]: withdrawals first) of at most
//! [`MAX_PUSH_ITEMS`] items and the limit in bytes, so the peer starts on
//! the first part while the rest follows; between our own daemons the item
//! bound is the one that cuts. An item too large for any push is counted
//! and logged, and dropped.
//!
//! A push the peer refuses as too large (`400`, the original's answer, or
//! `413`) is no failure: it is put back and sent again in halves (the next
//! pushes carry at most half its items until one is accepted); a single
//! item refused alone is dropped like an oversize one. Either way the
//! session's failure streak is untouched.
//!
//! Failures: a failed push or pull is retried after [`backoff`] (100 ms,
//! doubling, at most 5 s); a failed push is put back in front of the pending
//! one. After [`MAX_ATTEMPTS`] consecutive failures of either kind, spread
//! over at least `give_up_after` (the expiry threshold), the actor sends
//! [`ExchangeFailed`] to `on_failure` once (the supervisor expires the peer)
//! and keeps retrying, the update still pending. A listener that
//! cannot be bound (address still tentative, previous actor's socket not yet
//! closed) is retried on the same schedule forever and logged; the actor
//! keeps pushing and pulling meanwhile.
//!
//! The peer's pushes reach the router through this actor, in one stream
//! with the pull answers: while a pull is out they are held back and passed
//! on right after its answer, so the router (which takes an answer as the
//! peer's whole set) never applies an answer over a newer push.
//!
//! Timers and request results carry a generation; a stale one is ignored.
//! `post_stop` aborts every task and waits for the server to close its
//! socket, so a new exchange actor for the same peer can bind at once.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ddm_admin_api::latest::RouterKind;
use ractor::{
    Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort,
};
use slog::{debug, error, info, o, warn, Logger};
use tokio::task::JoinHandle;

use super::client::{Client, ClientError, Pulled};
use ddm_proto::outgoing::OutUpdate;
// The push rules and the version live in the protocol floor; they stay
// reachable here, where the session uses them.
pub use ddm_proto::outgoing::{
    merge, take_chunk, Chunk, PushBounds, DEFAULT_PUSH_LIMIT, MAX_PUSH_ITEMS,
};
pub use ddm_proto::Version;

use super::server::{self, ServerCtx};
use super::wire::v3;
use crate::config::RouterConfig;
use crate::discovery::PeerIdentity;
use crate::router::{PeerCmd, RouterMsg, RouterRef};
use ddm_proto::PeerId;

/// A handle to an exchange actor.
pub type ExchangeRef = ActorRef<ExchangeMsg>;

/// First retry delay after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Consecutive failed pushes (or pulls) after which the peer is reported
/// as failed: with [`backoff`] that is about 1.5 s plus the requests' own
/// time.
pub const MAX_ATTEMPTS: u32 = 5;

/// The delay before the next attempt, after `failures` consecutive ones.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

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
        }
    }
}

/// What a retry timer retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// Pull the peer's full set.
    Pull,
    /// Send the pending update.
    Push,
    /// Bind the server's listener.
    Bind,
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

/// One retried activity: its task or timer and its failure streak.
#[derive(Default)]
struct Track {
    /// The request task in flight.
    task: Option<JoinHandle<()>>,
    /// The pending retry timer.
    timer: Option<JoinHandle<()>>,
    /// Generation of the task or timer that counts; others are stale.
    gen: u64,
    /// Consecutive failures.
    failures: u32,
}

impl Track {
    /// Abort the task and the timer; their handles, to await.
    fn abort(&mut self) -> impl Iterator<Item = JoinHandle<()>> {
        let both = [self.task.take(), self.timer.take()];
        both.into_iter().flatten().inspect(|t| t.abort())
    }
}

/// State of an exchange actor.
pub struct State {
    /// The peer.
    peer: PeerId,
    /// The router.
    router: RouterRef,
    /// Told when exchange keeps failing.
    on_failure: Option<DerivedActorRef<ExchangeFailed>>,
    /// Whether the current failure streak was reported.
    reported: bool,
    /// When the current failure streak began.
    failing_since: Option<tokio::time::Instant>,
    /// How long a streak must last before it is reported.
    give_up_after: Duration,
    /// The peer's server.
    client: Client,
    /// Counters, shared with the server task.
    stats: Arc<Stats>,
    /// Where the server is to listen.
    listen: SocketAddrV6,
    /// What the server's handlers need.
    server_ctx: Arc<ServerCtx>,
    /// The server task and where it listens, once bound.
    server: Option<(SocketAddrV6, JoinHandle<()>)>,
    /// Bind retries.
    bind: Track,
    /// The pull in flight or waiting to be retried.
    pull: Track,
    /// A pull was asked for while one was in flight: pull again after it.
    pull_again: bool,
    /// Pushes from the peer that arrived while a pull was out, in order.
    ///
    /// The peer computes a pull answer at one moment; a push it sends after
    /// that moment reaches us through our server and could reach the router
    /// before the answer, which comes back through our client. The router
    /// takes an answer as the peer's whole set, so it must never see the
    /// answer after a push the peer sent later: pushes are held here while
    /// a pull is out and passed on right after its answer.
    held: Option<Vec<v3::Update>>,
    /// The push in flight or waiting to be retried.
    push: Track,
    /// The update in flight, put back in front of `pending` if it fails.
    in_flight: Option<Arc<OutUpdate>>,
    /// Updates not yet sent, merged into one.
    pending: Option<OutUpdate>,
    /// Whether a pull has completed (answered or failed): pushes wait for
    /// it, so that they are cut to the limit its answer announces.
    pulled_once: bool,
    /// The largest push body the peer takes, for this session: announced
    /// in its pull answers, else [`DEFAULT_PUSH_LIMIT`].
    push_limit: usize,
    /// After the peer refused a push as too large: at most this many items
    /// per push, until one is accepted.
    split_items: Option<usize>,
    /// How many `Push` messages the router has given us.
    received: u64,
    /// Source of generations.
    next_gen: u64,
    /// Logger with the peer.
    log: Logger,
}

impl State {
    fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    fn schedule(&mut self, myself: &ExchangeRef, kind: RetryKind) {
        let gen = self.gen();
        let track = match kind {
            RetryKind::Pull => &mut self.pull,
            RetryKind::Push => &mut self.push,
            RetryKind::Bind => &mut self.bind,
        };
        let delay = backoff(track.failures);
        track.gen = gen;
        let me = myself.clone();
        track.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = me.cast(ExchangeMsg::Retry { kind, gen });
        }));
    }

    fn try_bind(&mut self, myself: &ExchangeRef) {
        let bound = server::bind(self.listen).and_then(|l| {
            let addr = match l.local_addr()? {
                SocketAddr::V6(a) => a,
                SocketAddr::V4(_) => self.listen,
            };
            Ok((l, addr))
        });
        match bound {
            Ok((listener, addr)) => {
                info!(self.log, "exchange server listening"; "addr" => %addr);
                self.bind.failures = 0;
                let task = server::spawn(listener, self.server_ctx.clone());
                self.server = Some((addr, task));
            }
            Err(e) => {
                self.bind.failures += 1;
                Stats::bump(&self.stats.bind_failures);
                warn!(self.log, "cannot bind the exchange server; will retry";
                    "addr" => %self.listen, "error" => %e,
                    "failures" => self.bind.failures);
                self.schedule(myself, RetryKind::Bind);
            }
        }
    }

    fn start_pull(&mut self, myself: &ExchangeRef) {
        if self.pull.task.is_some() {
            self.pull_again = true;
            return;
        }
        if let Some(t) = self.pull.timer.take() {
            t.abort();
        }
        let gen = self.gen();
        self.pull.gen = gen;
        self.held.get_or_insert_with(Vec::new);
        let (client, me) = (self.client.clone(), myself.clone());
        self.pull.task = Some(tokio::spawn(async move {
            let result = client.pull().await;
            let _ = me.cast(ExchangeMsg::PullDone { gen, result });
        }));
    }

    fn pull_done(
        &mut self,
        myself: &ExchangeRef,
        gen: u64,
        result: Result<Pulled, ClientError>,
    ) {
        if gen != self.pull.gen || self.pull.task.take().is_none() {
            return;
        }
        let first = !std::mem::replace(&mut self.pulled_once, true);
        match result {
            Ok(Pulled { response, push_limit, bytes }) => {
                Stats::bump(&self.stats.pulls_sent);
                Stats::add(&self.stats.pull_bytes_received, bytes);
                self.learn_push_limit(push_limit);
                self.pull.failures = 0;
                self.clear_report();
                let peer = self.peer;
                let msg = RouterMsg::PullResult { peer, response };
                if let Err(e) = self.router.cast(msg) {
                    warn!(self.log, "router gone; pull result dropped";
                        "error" => %e);
                }
                self.release_held();
                if std::mem::take(&mut self.pull_again) {
                    self.start_pull(myself);
                }
            }
            Err(e) => {
                Stats::bump(&self.stats.pull_failures);
                self.pull.failures += 1;
                self.pull_again = false;
                // No answer is coming: what the peer pushed meanwhile is
                // newer than anything it answered before.
                self.release_held();
                warn!(self.log, "pull failed"; "error" => %e,
                    "failures" => self.pull.failures);
                self.check_report();
                self.schedule(myself, RetryKind::Pull);
            }
        }
        if first {
            // The limit is known (or, without an answer, assumed): the
            // pushes queued meanwhile can go.
            self.push_if_idle(myself);
        }
    }

    /// Take the push limit a pull answer announced (none: the default).
    fn learn_push_limit(&mut self, announced: Option<usize>) {
        let limit =
            announced.map_or(DEFAULT_PUSH_LIMIT, |l| l.max(DEFAULT_PUSH_LIMIT));
        if limit != self.push_limit {
            info!(self.log, "push limit for this peer";
                "bytes" => limit, "was" => self.push_limit,
                "announced" => announced.is_some());
            self.push_limit = limit;
        }
    }

    /// A push from the peer: to the router, unless a pull is out.
    fn pushed(&mut self, update: v3::Update) {
        match &mut self.held {
            Some(held) => held.push(update),
            None => self.import(update),
        }
    }

    /// Pass on the pushes held back while a pull was out.
    fn release_held(&mut self) {
        for update in self.held.take().unwrap_or_default() {
            self.import(update);
        }
    }

    fn import(&self, update: v3::Update) {
        let msg = RouterMsg::Import { peer: self.peer, update };
        if let Err(e) = self.router.cast(msg) {
            warn!(self.log, "router gone; push dropped"; "error" => %e);
        }
    }

    fn queue(&mut self, myself: &ExchangeRef, update: OutUpdate) {
        self.received += 1;
        if update.is_empty() {
            if self.pending.is_none() && self.push.task.is_none() {
                self.report_delivered(myself);
            }
            return;
        }
        match &mut self.pending {
            Some(p) => merge(p, update),
            None => self.pending = Some(update),
        }
        self.push_if_idle(myself);
        if self.push.task.is_none() && self.pending.is_none() {
            // Nothing went out: the update held only items no push can
            // carry, dropped for good.
            self.report_delivered(myself);
        }
    }

    /// Send the next part unless a push is in flight or waiting to be
    /// retried, or the first pull has not completed yet.
    fn push_if_idle(&mut self, myself: &ExchangeRef) {
        if self.pulled_once
            && self.push.task.is_none()
            && self.push.timer.is_none()
        {
            self.send_next(myself);
        }
    }

    /// What one push may carry now.
    fn push_bounds(&self) -> PushBounds {
        let mut bounds =
            PushBounds::new(self.push_limit, self.client.version());
        if let Some(n) = self.split_items {
            bounds.items = bounds.items.min(n);
        }
        bounds
    }

    fn send_next(&mut self, myself: &ExchangeRef) {
        let bounds = self.push_bounds();
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        let Chunk { part: update, oversize } = take_chunk(pending, bounds);
        if pending.is_empty() {
            self.pending = None;
        }
        if !oversize.is_empty() {
            self.drop_oversize(&oversize, "larger than the peer's push limit");
        }
        if update.is_empty() {
            return;
        }
        let update = Arc::new(update);
        let gen = self.gen();
        self.push.gen = gen;
        self.in_flight = Some(update.clone());
        let (client, me) = (self.client.clone(), myself.clone());
        self.push.task = Some(tokio::spawn(async move {
            let result = client.push(&update).await;
            let _ = me.cast(ExchangeMsg::PushDone { gen, result });
        }));
    }

    fn push_done(
        &mut self,
        myself: &ExchangeRef,
        gen: u64,
        result: Result<usize, ClientError>,
    ) {
        if gen != self.push.gen || self.push.task.take().is_none() {
            return;
        }
        let sent = self.in_flight.take();
        match result {
            Ok(bytes) => {
                Stats::bump(&self.stats.pushes_sent);
                Stats::add(&self.stats.push_bytes_sent, bytes);
                self.push.failures = 0;
                self.split_items = None;
                self.clear_report();
                self.send_next(myself);
                if self.push.task.is_none() && self.pending.is_none() {
                    self.report_delivered(myself);
                }
            }
            Err(e) if e.is_refused_as_too_large() => {
                // The peer answered, so this is no failure of the session
                // (the original answers 400 to a body over its limit):
                // smaller pushes go out at once. A single item refused is
                // dropped, as final as a delivery.
                Stats::bump(&self.stats.pushes_refused);
                if let Some(sent) = sent {
                    self.split(sent, &e);
                }
                self.send_next(myself);
                if self.push.task.is_none() && self.pending.is_none() {
                    self.report_delivered(myself);
                }
            }
            Err(e) => {
                Stats::bump(&self.stats.push_failures);
                self.push.failures += 1;
                warn!(self.log, "push failed"; "error" => %e,
                    "failures" => self.push.failures);
                if let Some(sent) = sent {
                    self.put_back(sent);
                }
                self.check_report();
                self.schedule(myself, RetryKind::Push);
            }
        }
    }

    /// Put an update that was not delivered back in front of the pending
    /// one.
    fn put_back(&mut self, sent: Arc<OutUpdate>) {
        let mut again = Arc::try_unwrap(sent).unwrap_or_else(|a| (*a).clone());
        if let Some(later) = self.pending.take() {
            merge(&mut again, later);
        }
        self.pending = Some(again);
    }

    /// The peer refused `sent` as too large: send it again in halves (the
    /// next pushes carry at most half as many items until one is
    /// accepted), or drop it if it is a single item.
    fn split(&mut self, sent: Arc<OutUpdate>, e: &ClientError) {
        let items = sent.len();
        if items <= 1 {
            self.drop_oversize(&sent, "refused by the peer even alone");
            return;
        }
        let half = items / 2;
        info!(self.log, "push refused as too large; sending it in halves";
            "items" => items, "half" => half, "error" => %e);
        self.split_items = Some(half);
        self.put_back(sent);
    }

    /// Count and log items that no push to this peer can carry.
    fn drop_oversize(&self, dropped: &OutUpdate, why: &str) {
        let n = dropped.len() as u64;
        self.stats.items_dropped_oversize.fetch_add(n, Ordering::Relaxed);
        let wire = dropped.to_wire();
        let (u, t) = (wire.underlay.unwrap_or_default(), wire.tunnel);
        let first = u.withdraw.iter().chain(&u.announce).next();
        error!(self.log, "dropping an update no push can carry";
            "why" => why, "items" => n, "limit" => self.push_limit,
            "destination" => first.map(|p| p.destination.to_string()),
            "path_len" => first.map(|p| p.path.len()),
            "tunnels" => t.map_or(0, |t| t.announce.len() + t.withdraw.len()));
    }

    /// Every push the router gave us so far has reached the peer: the
    /// router forgets the withdrawals they carried (see `rib::Told`).
    fn report_delivered(&self, myself: &ExchangeRef) {
        let msg = RouterMsg::Delivered {
            peer: self.peer,
            exchange: myself.get_id(),
            through: self.received,
        };
        if let Err(e) = self.router.cast(msg) {
            debug!(self.log, "router gone; delivery not reported";
                "error" => %e);
        }
    }

    fn check_report(&mut self) {
        let streak = self.push.failures.max(self.pull.failures);
        let now = tokio::time::Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        if streak < MAX_ATTEMPTS
            || self.reported
            || now.saturating_duration_since(since) < self.give_up_after
        {
            return;
        }
        self.reported = true;
        Stats::bump(&self.stats.failures_reported);
        error!(self.log, "exchange with peer keeps failing";
            "push_failures" => self.push.failures,
            "pull_failures" => self.pull.failures);
        if let Some(to) = &self.on_failure {
            if let Err(e) = to.send_message(ExchangeFailed { peer: self.peer })
            {
                warn!(self.log, "cannot report the failure"; "error" => %e);
            }
        }
    }

    fn clear_report(&mut self) {
        if self.push.failures.max(self.pull.failures) < MAX_ATTEMPTS {
            self.reported = false;
        }
        if self.push.failures == 0 && self.pull.failures == 0 {
            self.failing_since = None;
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
        let mut state = State {
            peer,
            router: args.router,
            on_failure: args.on_failure,
            reported: false,
            failing_since: None,
            give_up_after: args.give_up_after,
            client: Client::new(peer_addr, version, args.timeout)
                .bound_to(args.local_addr),
            stats,
            listen,
            server_ctx,
            server: None,
            bind: Track::default(),
            pull: Track::default(),
            pull_again: false,
            held: None,
            push: Track::default(),
            in_flight: None,
            pending: None,
            pulled_once: false,
            push_limit: DEFAULT_PUSH_LIMIT,
            split_items: None,
            received: 0,
            next_gen: 0,
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
        state.try_bind(&myself);
        state.start_pull(&myself);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ExchangeRef,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        for track in [&mut state.bind, &mut state.pull, &mut state.push] {
            tasks.extend(track.abort());
        }
        if let Some((_, server)) = state.server.take() {
            server.abort();
            tasks.push(server);
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
        match msg {
            ExchangeMsg::Push(update) => state.queue(&myself, update),
            ExchangeMsg::Pull => state.start_pull(&myself),
            ExchangeMsg::Pushed(update) => state.pushed(update),
            ExchangeMsg::PullDone { gen, result } => {
                state.pull_done(&myself, gen, result)
            }
            ExchangeMsg::PushDone { gen, result } => {
                state.push_done(&myself, gen, result)
            }
            ExchangeMsg::Retry { kind, gen } => match kind {
                RetryKind::Pull if gen == state.pull.gen => {
                    state.pull.timer = None;
                    state.start_pull(&myself);
                }
                RetryKind::Push if gen == state.push.gen => {
                    state.push.timer = None;
                    state.push_if_idle(&myself);
                }
                RetryKind::Bind
                    if gen == state.bind.gen && state.server.is_none() =>
                {
                    state.bind.timer = None;
                    state.try_bind(&myself);
                }
                _ => debug!(state.log, "stale timer"; "kind" => ?kind),
            },
            ExchangeMsg::GetLocalAddr(reply) => {
                let _ = reply.send(state.server.as_ref().map(|(a, _)| *a));
            }
            ExchangeMsg::GetCounters(reply) => {
                let _ = reply.send(state.stats.snapshot());
            }
            ExchangeMsg::GetPushLimit(reply) => {
                let _ = reply.send(state.push_limit);
            }
        }
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

    #[test]
    fn backoff_doubles_and_is_capped() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5)],
            [100, 200, 400, 800, 1600]
        );
        assert_eq!(backoff(7), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        // The report comes after the fifth failure, i.e. after the first
        // four back-offs: well within a few seconds.
        let total: Duration = (1..MAX_ATTEMPTS).map(backoff).sum();
        assert_eq!(total, Duration::from_millis(1500));
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
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let is_push = method == Method::PUT;
        let size = body.len();
        let _ = tx.send(Received { method, path, body });
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
        let fake = FakePeer::start(PULL3, false).await;
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
        let pulled = as_peer.pull().await.unwrap();
        assert_eq!(pulled.response, answer);
        assert_eq!(pulled.push_limit, Some(server::MAX_BODY));
        assert_eq!(recv(&mut seen).await, Seen::PullFor(peer));
        let as_v2 = Client::new(local, Version::V2, Duration::from_secs(2));
        let pulled_v2 = as_v2.pull().await.unwrap();
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
