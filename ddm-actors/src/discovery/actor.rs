//! The discovery actor of one interface.
//!
//! ```text
//!   reader task ──Datagram──▶ ┌───────────┐ ──PeerUp/PeerDown/…──▶ events
//!   timer tasks ──Timer─────▶ │ Discovery │      (supervisor)
//!   retry task  ──RetryOpen─▶ │  PeerFsm  │ ──solicit/advertise──▶ LinkTx
//!   supervisor/admin ───────▶ └───────────┘
//! ```
//!
//! The actor owns the [`PeerFsm`] and carries out its effects. Until the
//! interface exists and has a usable link-local address the actor stays in
//! `Init` and retries every `ip_addr_wait`; a missing interface is logged,
//! never fatal. Timers are tasks that sleep and cast back a generation; the
//! machine ignores stale ones, and the actor also aborts the task a new
//! timer of the same kind replaces.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ddm_admin_api::latest::RouterKind;
use ractor::{
    Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort,
};
use slog::{debug, info, o, warn, Logger};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fsm::{Effect, Input, PeerFsm, Sent, TimerKind};
use super::io::{LinkTx, PacketIo};
use super::limit::LogLimiter;
use super::packet::DiscoveryPacket;
use super::socket::DISCOVERY_GROUP;
use super::{Counters, DiscoveryEvent, PeerSnapshot};
use crate::config::{InterfaceSpec, RouterConfig};
use crate::timer::{cast_after, replace_task};

/// Handle on a discovery actor.
pub type DiscoveryRef = ActorRef<DiscoveryMsg>;

/// The discovery actor; everything it needs comes in [`DiscoveryArgs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Discovery;

/// What a discovery actor is started with.
#[derive(Clone)]
pub struct DiscoveryArgs {
    /// The interface to run on.
    pub interface: InterfaceSpec,
    /// Our name, sent in every packet.
    pub hostname: String,
    /// Our kind, sent in every packet.
    pub kind: RouterKind,
    /// How often to solicit.
    pub solicit_interval: Duration,
    /// Silence after which the peer expires.
    pub expire_threshold: Duration,
    /// Retry interval while the interface or its address is missing.
    pub ip_addr_wait: Duration,
    /// Parent logger; the actor adds its component and interface.
    pub log: Logger,
    /// Where peer events go (the supervisor).
    pub events: DerivedActorRef<DiscoveryEvent>,
    /// Sockets or an in-memory link.
    pub io: PacketIo,
}

impl DiscoveryArgs {
    /// Arguments for `interface` from the router's configuration.
    pub fn new(
        config: &RouterConfig,
        interface: InterfaceSpec,
        log: Logger,
        events: DerivedActorRef<DiscoveryEvent>,
        io: PacketIo,
    ) -> Self {
        DiscoveryArgs {
            interface,
            hostname: config.hostname.clone(),
            kind: config.kind,
            solicit_interval: config.solicit_interval,
            expire_threshold: config.expire_threshold,
            ip_addr_wait: config.ip_addr_wait,
            log,
            events,
            io,
        }
    }
}

/// Messages of the discovery actor.
pub enum DiscoveryMsg {
    /// A datagram arrived (from the reader task).
    Datagram {
        /// Which open link the reader belongs to; a stale reader's datagram
        /// is dropped.
        link_gen: u64,
        /// Its source, with the scope id it arrived with.
        from: SocketAddrV6,
        /// Its bytes.
        payload: Vec<u8>,
        /// Its place among the datagrams the actor has not taken yet.
        queued: Queued,
    },
    /// The reader task failed: close the link and retry opening it.
    ReaderFailed {
        /// Which open link failed.
        link_gen: u64,
        /// What went wrong.
        error: String,
    },
    /// A protocol timer fired.
    Timer {
        /// Which timer.
        kind: TimerKind,
        /// The generation it was scheduled with.
        gen: u64,
    },
    /// Try again to open the interface.
    RetryOpen,
    /// The link went down: expire the peer at once, stop soliciting.
    LinkDown,
    /// The link is up again: solicit.
    LinkUp,
    /// Expire the peer if it has this address (admin `DELETE /peers/{addr}`);
    /// the reply says whether this interface's peer had it.
    ExpirePeer {
        /// The peer's address.
        addr: Ipv6Addr,
        /// Answered with whether the address was this interface's peer.
        reply: Option<RpcReplyPort<bool>>,
    },
    /// The interface's statistics.
    GetCounters(RpcReplyPort<Counters>),
    /// The interface's peer, if one ever advertised.
    GetPeer(RpcReplyPort<Option<PeerSnapshot>>),
}

/// The open link of the interface.
struct Link {
    /// Interface index.
    ifindex: u32,
    /// Our link-local address.
    local_addr: Ipv6Addr,
    /// Sending half.
    tx: LinkTx,
    /// The reader task.
    reader: JoinHandle<()>,
}

/// State of the discovery actor.
pub struct State {
    /// Logger with our interface.
    log: Logger,
    /// Arguments we were started with.
    args: DiscoveryArgs,
    /// The protocol.
    fsm: PeerFsm,
    /// The open link, once the interface is ready.
    link: Option<Link>,
    /// Bumped on every open, so datagrams of a closed link are ignored.
    link_gen: u64,
    /// Held down by `LinkDown` until `LinkUp`.
    held_down: bool,
    /// Pending solicit timer.
    solicit_timer: Option<JoinHandle<()>>,
    /// Pending expire timer.
    expire_timer: Option<JoinHandle<()>>,
    /// Pending open retry.
    retry: Option<JoinHandle<()>>,
    /// Encoded solicitation (constant).
    solicitation: Vec<u8>,
    /// Encoded advertisement (constant).
    advertisement: Vec<u8>,
    /// Bounds the peer up/down/renumbered log lines.
    churn_log: LogLimiter,
    /// Bounds the malformed-packet log lines (apart, so that junk on the
    /// link does not hold back the peer changes).
    malformed_log: LogLimiter,
    /// The datagrams handed on by the readers and not taken yet.
    queue: Arc<Queue>,
}

/// Most datagrams the reader hands on that the actor has not taken yet:
/// past it, the reader drops what arrives (counted as `queue_full`), so a
/// link partner sending faster than the actor keeps up (while the machine
/// is busy) cannot grow the actor's mailbox without bound.
const MAX_QUEUED_DATAGRAMS: usize = 1024;

/// What the readers handed on and the actor has not taken yet.
#[derive(Debug)]
struct Queue {
    /// A place per datagram that may wait in the mailbox.
    places: Arc<Semaphore>,
    /// Datagrams dropped because it was full, ever.
    full: AtomicU64,
}

impl Default for Queue {
    fn default() -> Self {
        let places = Arc::new(Semaphore::new(MAX_QUEUED_DATAGRAMS));
        Queue { places, full: AtomicU64::new(0) }
    }
}

impl Queue {
    /// A place for one more datagram, or `None` (counted) when
    /// [`MAX_QUEUED_DATAGRAMS`] wait already.
    fn admit(&self) -> Option<Queued> {
        let place = Arc::clone(&self.places).try_acquire_owned().ok();
        if place.is_none() {
            self.full.fetch_add(1, Ordering::Relaxed);
        }
        place
    }
}

/// A datagram's place in the [`Queue`], given back when it is dropped
/// (taken, or lost with its message).
pub type Queued = OwnedSemaphorePermit;

impl State {
    fn ifname(&self) -> &str {
        &self.args.interface.ifname
    }

    fn feed(&mut self, myself: &DiscoveryRef, input: Input) {
        let effects = self.fsm.handle(Instant::now(), input);
        for e in effects {
            self.apply(myself, e);
        }
    }

    fn apply(&mut self, myself: &DiscoveryRef, effect: Effect) {
        let Some(link) = &self.link else {
            // Without a link the machine is down and asks for nothing but
            // reports; those need an interface index, which we lack.
            debug!(self.log, "effect without a link"; "effect" => ?effect);
            return;
        };
        let (ifindex, local_addr) = (link.ifindex, link.local_addr);
        match effect {
            Effect::SendSolicit => {
                let r =
                    link.tx.send(DISCOVERY_GROUP, ifindex, &self.solicitation);
                if let Err(e) = &r {
                    warn!(self.log, "sending solicitation failed"; "error" => %e);
                }
                self.fsm.record_send(Sent::Solicitation, r.is_ok());
            }
            Effect::SendAdvertisement { to } => {
                let r = link.tx.send(to, ifindex, &self.advertisement);
                if let Err(e) = &r {
                    warn!(self.log, "sending advertisement failed"; "to" => %to, "error" => %e);
                }
                self.fsm.record_send(Sent::Advertisement, r.is_ok());
            }
            Effect::Schedule { kind, after, gen } => {
                let task = cast_after(
                    myself,
                    after,
                    DiscoveryMsg::Timer { kind, gen },
                );
                let slot = match kind {
                    TimerKind::Solicit => &mut self.solicit_timer,
                    TimerKind::Expire => &mut self.expire_timer,
                };
                replace_task(slot, task);
            }
            Effect::PeerUp(peer) => {
                if self.churn_log_allowed() {
                    info!(self.log, "peer up"; "peer" => %peer.addr, "host" => &peer.hostname,
                          "kind" => %peer.kind, "version" => peer.version);
                }
                self.emit(DiscoveryEvent::PeerUp {
                    ifname: self.ifname().to_string(),
                    ifindex,
                    local_addr,
                    peer,
                });
            }
            Effect::PeerDown(peer) => {
                if self.churn_log_allowed() {
                    info!(self.log, "peer down"; "peer" => %peer.addr, "host" => &peer.hostname);
                }
                self.emit(DiscoveryEvent::PeerDown {
                    ifname: self.ifname().to_string(),
                    ifindex,
                    peer,
                });
            }
            Effect::PeerAddrChanged { old, peer } => {
                if self.churn_log_allowed() {
                    info!(self.log, "peer renumbered"; "old" => %old, "new" => %peer.addr,
                          "host" => &peer.hostname);
                }
                self.emit(DiscoveryEvent::PeerAddrChanged {
                    ifname: self.ifname().to_string(),
                    ifindex,
                    local_addr,
                    old_addr: old,
                    peer,
                });
            }
            Effect::Malformed { from, why } => {
                if self.malformed_log.allow(&self.log, "malformed packets") {
                    warn!(self.log, "malformed discovery packet dropped";
                          "from" => %from, "why" => %why);
                }
            }
            Effect::StateChanged { state, since } => {
                debug!(self.log, "state"; "state" => ?state);
                self.emit(DiscoveryEvent::Status {
                    ifname: self.ifname().to_string(),
                    ifindex,
                    state,
                    since,
                });
            }
        }
    }

    /// Whether a peer-churn line may be logged now: a few per minute, so
    /// a link partner that keeps changing its name or kind cannot fill the
    /// log. The first line of a new minute reports how many were held
    /// back.
    fn churn_log_allowed(&mut self) -> bool {
        self.churn_log.allow(&self.log, "peer changes")
    }

    fn emit(&self, event: DiscoveryEvent) {
        if self.args.events.send_message(event).is_err() {
            warn!(self.log, "event sink is gone; event dropped");
        }
    }

    /// Open the interface if it is ready, else schedule a retry.
    fn try_open(&mut self, myself: &DiscoveryRef) {
        if self.link.is_some() {
            return;
        }
        match self.args.io.open(self.ifname()) {
            Ok(open) => {
                info!(self.log, "interface ready";
                      "ifindex" => open.ifindex, "local_addr" => %open.local_addr);
                self.link_gen += 1;
                let link_gen = self.link_gen;
                let mut rx = open.rx;
                let me = myself.clone();
                let queue = Arc::clone(&self.queue);
                let reader = tokio::spawn(async move {
                    loop {
                        let msg = match rx.recv().await {
                            Ok((from, payload)) => {
                                let Some(queued) = queue.admit() else {
                                    continue;
                                };
                                DiscoveryMsg::Datagram {
                                    link_gen,
                                    from,
                                    payload,
                                    queued,
                                }
                            }
                            Err(e) => DiscoveryMsg::ReaderFailed {
                                link_gen,
                                error: e.to_string(),
                            },
                        };
                        let failed =
                            matches!(msg, DiscoveryMsg::ReaderFailed { .. });
                        if me.cast(msg).is_err() || failed {
                            return;
                        }
                    }
                });
                let (ifindex, local_addr) = (open.ifindex, open.local_addr);
                self.link =
                    Some(Link { ifindex, local_addr, tx: open.tx, reader });
                if !self.held_down {
                    self.feed(myself, Input::LinkUp { ifindex, local_addr });
                }
            }
            Err(e) => {
                info!(self.log, "interface not ready, retrying";
                      "reason" => %e, "retry_ms" => self.args.ip_addr_wait.as_millis());
                self.schedule_retry(myself);
            }
        }
    }

    fn schedule_retry(&mut self, myself: &DiscoveryRef) {
        let task =
            cast_after(myself, self.args.ip_addr_wait, DiscoveryMsg::RetryOpen);
        replace_task(&mut self.retry, task);
    }

    /// Whether the open link still matches the interface (or there is no
    /// open link to check).
    fn link_is_current(&self) -> bool {
        let Some(link) = &self.link else {
            return true;
        };
        match self.args.io.current(self.ifname()) {
            Ok((ifindex, addr))
                if (ifindex, addr) == (link.ifindex, link.local_addr) =>
            {
                true
            }
            Ok((ifindex, addr)) => {
                warn!(self.log, "interface changed; reopening";
                      "ifindex" => ifindex, "local_addr" => %addr);
                false
            }
            Err(e) => {
                warn!(self.log, "interface lost; reopening"; "reason" => %e);
                false
            }
        }
    }

    /// Take the link down (expiring the peer), close it and retry opening
    /// after `ip_addr_wait`.
    fn close_and_retry(&mut self, myself: &DiscoveryRef) {
        self.drop_link(myself);
        self.schedule_retry(myself);
    }

    /// The machine down (its peer reported down while the link is still
    /// known), then the link closed.
    fn drop_link(&mut self, myself: &DiscoveryRef) {
        self.feed(myself, Input::LinkDown);
        self.close_link();
    }

    fn snapshot(&self) -> Option<PeerSnapshot> {
        let link = self.link.as_ref()?;
        Some(PeerSnapshot {
            ifname: self.ifname().to_string(),
            ifindex: link.ifindex,
            local_addr: link.local_addr,
            peer: self.fsm.peer()?.clone(),
            state: self.fsm.state(),
            since: self.fsm.since(),
            last_advertisement: self.fsm.last_advertisement(),
        })
    }

    /// Close the open link, if any (its reader task ends).
    fn close_link(&mut self) {
        if let Some(link) = self.link.take() {
            link.reader.abort();
        }
    }

    fn stop_tasks(&mut self) {
        for t in [
            self.solicit_timer.take(),
            self.expire_timer.take(),
            self.retry.take(),
        ]
        .into_iter()
        .flatten()
        {
            t.abort();
        }
        self.close_link();
    }
}

/// The actor's tasks end with its state, however it stopped (a failed or
/// killed actor skips `post_stop`): its reader task (holding the
/// interface's sockets) and timers would otherwise run on until the next
/// datagram or deadline, beside the restarted actor's own.
impl Drop for State {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

impl Actor for Discovery {
    type Msg = DiscoveryMsg;
    type State = State;
    type Arguments = DiscoveryArgs;

    async fn pre_start(
        &self,
        myself: DiscoveryRef,
        args: DiscoveryArgs,
    ) -> Result<State, ActorProcessingErr> {
        let log = args.log.new(o!(
            "component" => "discovery",
            "interface" => args.interface.to_string(),
        ));
        // A hostname too long for the wire cannot be fixed by retrying.
        let solicitation =
            DiscoveryPacket::solicitation(args.kind, &args.hostname)
                .encode()?;
        let advertisement =
            DiscoveryPacket::advertisement(args.kind, &args.hostname)
                .encode()?;
        let fsm = PeerFsm::new(
            Instant::now(),
            args.solicit_interval,
            args.expire_threshold,
        )
        .with_hostname(&args.hostname);
        let mut state = State {
            log,
            args,
            fsm,
            link: None,
            link_gen: 0,
            held_down: false,
            solicit_timer: None,
            expire_timer: None,
            retry: None,
            solicitation,
            advertisement,
            churn_log: LogLimiter::new(),
            malformed_log: LogLimiter::new(),
            queue: Arc::default(),
        };
        state.try_open(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: DiscoveryRef,
        msg: DiscoveryMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DiscoveryMsg::Datagram { link_gen, from, payload, queued } => {
                drop(queued);
                if link_gen == state.link_gen && state.link.is_some() {
                    state.feed(&myself, Input::Datagram { from, payload });
                }
            }
            DiscoveryMsg::ReaderFailed { link_gen, error } => {
                if link_gen == state.link_gen && state.link.is_some() {
                    warn!(state.log, "reading failed; reopening the interface"; "error" => error);
                    state.close_and_retry(&myself);
                }
            }
            DiscoveryMsg::Timer { kind, gen } => {
                // Each solicitation first checks that the interface is still
                // the one we opened, with the same address.
                if kind == TimerKind::Solicit && !state.link_is_current() {
                    state.close_and_retry(&myself);
                } else {
                    state.feed(&myself, Input::Timer { kind, gen });
                }
            }
            DiscoveryMsg::RetryOpen => {
                state.retry = None;
                state.try_open(&myself);
            }
            DiscoveryMsg::LinkDown => {
                info!(state.log, "link down");
                state.held_down = true;
                state.feed(&myself, Input::LinkDown);
            }
            DiscoveryMsg::LinkUp => {
                info!(state.log, "link up");
                state.held_down = false;
                if !state.link_is_current() {
                    // Re-created under a new index (or renumbered) while
                    // down: the open link is stale; open the new one now,
                    // not at the next solicitation's check. Its peer goes
                    // down first (reported while the stale link is still
                    // known), also when no link-down came before: the
                    // machine, still up, would otherwise take the new
                    // link as the same and keep the peer on the old index.
                    state.drop_link(&myself);
                }
                match &state.link {
                    Some(link) => {
                        let input = Input::LinkUp {
                            ifindex: link.ifindex,
                            local_addr: link.local_addr,
                        };
                        state.feed(&myself, input);
                    }
                    None => state.try_open(&myself),
                }
            }
            DiscoveryMsg::ExpirePeer { addr, reply } => {
                let known = state.fsm.peer().is_some_and(|p| p.addr == addr);
                if known {
                    info!(state.log, "expiring peer by request"; "peer" => %addr);
                    state.feed(&myself, Input::AdminExpire { addr });
                }
                if let Some(reply) = reply {
                    let _ = reply.send(known);
                }
            }
            DiscoveryMsg::GetCounters(reply) => {
                let mut counters = *state.fsm.counters();
                counters.peer_log_lines_suppressed =
                    state.churn_log.total_held();
                counters.drops.queue_full =
                    state.queue.full.load(Ordering::Relaxed);
                let _ = reply.send(counters);
            }
            DiscoveryMsg::GetPeer(reply) => {
                let _ = reply.send(state.snapshot());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
