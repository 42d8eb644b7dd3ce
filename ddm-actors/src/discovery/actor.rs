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
use std::time::Duration;

use ddm_admin_api::latest::RouterKind;
use ractor::{
    Actor, ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort,
};
use slog::{debug, info, o, warn, Logger};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fsm::{Effect, Input, PeerFsm, Sent, TimerKind};
use super::io::{LinkTx, PacketIo};
use super::limit::{LogLimiter, LogVerdict};
use super::packet::DiscoveryPacket;
use super::socket::DISCOVERY_GROUP;
use super::{Counters, DiscoveryEvent, PeerSnapshot};
use crate::config::{InterfaceSpec, RouterConfig};

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
}

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
        let ifname = self.ifname().to_string();
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
                if let Some(old) = slot.replace(task) {
                    old.abort();
                }
            }
            Effect::PeerUp(peer) => {
                if self.churn_log_allowed() {
                    info!(self.log, "peer up"; "peer" => %peer.addr, "host" => &peer.hostname,
                          "kind" => %peer.kind, "version" => peer.version);
                }
                self.emit(DiscoveryEvent::PeerUp {
                    ifname,
                    ifindex,
                    local_addr,
                    peer,
                });
            }
            Effect::PeerDown(peer) => {
                if self.churn_log_allowed() {
                    info!(self.log, "peer down"; "peer" => %peer.addr, "host" => &peer.hostname);
                }
                self.emit(DiscoveryEvent::PeerDown { ifname, ifindex, peer });
            }
            Effect::PeerAddrChanged { old, peer } => {
                if self.churn_log_allowed() {
                    info!(self.log, "peer renumbered"; "old" => %old, "new" => %peer.addr,
                          "host" => &peer.hostname);
                }
                self.emit(DiscoveryEvent::PeerAddrChanged {
                    ifname,
                    ifindex,
                    local_addr,
                    old_addr: old,
                    peer,
                });
            }
            Effect::StateChanged { state, since } => {
                debug!(self.log, "state"; "state" => ?state);
                self.emit(DiscoveryEvent::Status {
                    ifname,
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
        match self.churn_log.check(Instant::now()) {
            LogVerdict::Show { held_before } => {
                if held_before > 0 {
                    warn!(self.log, "peer changes not logged (rate limit)";
                          "suppressed" => held_before);
                }
                true
            }
            LogVerdict::Hold => false,
        }
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
                let reader = tokio::spawn(async move {
                    loop {
                        let msg = match rx.recv().await {
                            Ok((from, payload)) => DiscoveryMsg::Datagram {
                                link_gen,
                                from,
                                payload,
                            },
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
        if let Some(old) = self.retry.replace(task) {
            old.abort();
        }
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
        self.feed(myself, Input::LinkDown);
        if let Some(link) = self.link.take() {
            link.reader.abort();
        }
        self.schedule_retry(myself);
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
        if let Some(link) = self.link.take() {
            link.reader.abort();
        }
    }
}

/// Cast `msg` to `myself` after `after`, unless the task is aborted first.
fn cast_after(
    myself: &DiscoveryRef,
    after: Duration,
    msg: DiscoveryMsg,
) -> JoinHandle<()> {
    let me = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        // The actor may be gone by then; nothing to do about it.
        let _ = me.cast(msg);
    })
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
        );
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
        };
        state.try_open(&myself);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: DiscoveryRef,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop_tasks();
        Ok(())
    }

    async fn handle(
        &self,
        myself: DiscoveryRef,
        msg: DiscoveryMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DiscoveryMsg::Datagram { link_gen, from, payload } => {
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
mod tests {
    use super::*;
    use crate::discovery::io::{MemoryDatagram, MemoryPort};
    use crate::discovery::{DiscoveryState, PeerIdentity};
    use ractor::call;
    use tokio::sync::{broadcast, mpsc};

    const SOLICIT: Duration = Duration::from_millis(2000);
    const EXPIRE: Duration = Duration::from_millis(5000);
    const OUR_IF: u32 = 3;
    const THEIR_IF: u32 = 9;

    fn ours() -> Ipv6Addr {
        "fe80::1".parse().unwrap()
    }
    fn theirs() -> Ipv6Addr {
        "fe80::2".parse().unwrap()
    }

    /// Stands in for the supervisor: forwards every event to the test.
    struct Collector;

    impl Actor for Collector {
        type Msg = DiscoveryEvent;
        type State = mpsc::UnboundedSender<DiscoveryEvent>;
        type Arguments = mpsc::UnboundedSender<DiscoveryEvent>;

        async fn pre_start(
            &self,
            _: ActorRef<DiscoveryEvent>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _: ActorRef<DiscoveryEvent>,
            ev: DiscoveryEvent,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(ev);
            Ok(())
        }
    }

    struct Rig {
        actor: DiscoveryRef,
        /// The far end of the link, driven by the test.
        remote: MemoryPort,
        /// What the actor sent.
        wire: broadcast::Receiver<MemoryDatagram>,
        /// What the actor reported.
        events: mpsc::UnboundedReceiver<DiscoveryEvent>,
    }

    async fn start_with(
        io: PacketIo,
        hostname: &str,
    ) -> (DiscoveryRef, mpsc::UnboundedReceiver<DiscoveryEvent>) {
        let (tx, events) = mpsc::unbounded_channel();
        let (collector, _) = Actor::spawn(None, Collector, tx).await.unwrap();
        let args = DiscoveryArgs {
            interface: "ddm-none0".parse().unwrap(),
            hostname: hostname.into(),
            kind: RouterKind::Server,
            solicit_interval: SOLICIT,
            expire_threshold: EXPIRE,
            ip_addr_wait: Duration::from_millis(1000),
            log: Logger::root(slog::Discard, o!()),
            events: collector.get_derived(),
            io,
        };
        let (actor, _) = Actor::spawn(None, Discovery, args).await.unwrap();
        (actor, events)
    }

    async fn rig() -> Rig {
        let (local, remote) =
            MemoryPort::pair((OUR_IF, ours()), (THEIR_IF, theirs()));
        let wire = remote.subscribe();
        let (actor, events) = start_with(PacketIo::Memory(local), "me").await;
        Rig { actor, remote, wire, events }
    }

    fn advert(host: &str) -> Vec<u8> {
        DiscoveryPacket::advertisement(RouterKind::Transit, host)
            .encode()
            .unwrap()
    }

    impl Rig {
        async fn sent(&mut self) -> (MemoryDatagram, DiscoveryPacket) {
            let d =
                tokio::time::timeout(Duration::from_secs(60), self.wire.recv())
                    .await
                    .expect("nothing sent")
                    .unwrap();
            let p = DiscoveryPacket::decode(&d.payload).unwrap();
            (d, p)
        }

        /// The next event other than a status change.
        async fn peer_event(&mut self) -> DiscoveryEvent {
            loop {
                let ev = tokio::time::timeout(
                    Duration::from_secs(60),
                    self.events.recv(),
                )
                .await
                .expect("no event")
                .unwrap();
                if !matches!(ev, DiscoveryEvent::Status { .. }) {
                    return ev;
                }
            }
        }

        async fn peer(&self) -> Option<PeerSnapshot> {
            call!(self.actor, DiscoveryMsg::GetPeer).unwrap()
        }

        async fn counters(&self) -> Counters {
            call!(self.actor, DiscoveryMsg::GetCounters).unwrap()
        }

        /// The counters once `done` holds for them: datagrams travel through
        /// the reader task, so the actor sees them a few turns after `send`.
        async fn counters_when(
            &self,
            done: impl Fn(&Counters) -> bool,
        ) -> Counters {
            for _ in 0..1000 {
                let c = self.counters().await;
                if done(&c) {
                    return c;
                }
                tokio::task::yield_now().await;
            }
            panic!("counters never reached the expected values");
        }

        async fn bring_peer_up(&mut self) {
            self.remote.send(ours(), advert("sw0"));
            assert!(matches!(
                self.peer_event().await,
                DiscoveryEvent::PeerUp { .. }
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn solicits_at_start_and_every_interval() {
        let mut r = rig().await;
        let t0 = Instant::now();
        for i in 0..3u32 {
            let (d, p) = r.sent().await;
            assert_eq!(Instant::now() - t0, SOLICIT * i);
            assert_eq!(d.to, DISCOVERY_GROUP);
            assert_eq!(d.from.ip(), &ours());
            assert!(p.solicit && !p.advertise);
            assert_eq!((p.version, p.hostname.as_str()), (2, "me"));
        }
        assert_eq!(r.counters().await.solicitations_sent, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_a_solicitation_to_its_sender() {
        let mut r = rig().await;
        r.sent().await; // our first solicitation
        let solicit = DiscoveryPacket::solicitation(RouterKind::Transit, "sw0");
        let asked = Instant::now();
        r.remote.send(DISCOVERY_GROUP, solicit.encode().unwrap());
        let (d, p) = r.sent().await;
        assert_eq!(d.to, theirs());
        assert!(p.advertise && !p.solicit);
        assert_eq!(p.kind, RouterKind::Server);
        // Right away (in paused time), not at the next solicitation.
        assert!(asked.elapsed() < SOLICIT, "{:?}", asked.elapsed());
        let c = r.counters().await;
        assert_eq!((c.solicitations_received, c.advertisements_sent), (1, 1));
        assert!(r.peer().await.is_none(), "a solicitation makes no peer");
    }

    #[tokio::test(start_paused = true)]
    async fn advertisement_brings_the_peer_up() {
        let mut r = rig().await;
        let t0 = Instant::now();
        r.remote.send(ours(), advert("sw0"));
        let ev = r.peer_event().await;
        let want = PeerIdentity {
            addr: theirs(),
            hostname: "sw0".into(),
            kind: RouterKind::Transit,
            version: 2,
        };
        assert_eq!(
            ev,
            DiscoveryEvent::PeerUp {
                ifname: "ddm-none0".into(),
                ifindex: OUR_IF,
                local_addr: ours(),
                peer: want.clone(),
            }
        );
        let snap = r.peer().await.unwrap();
        assert_eq!(snap.peer, want);
        assert_eq!(snap.state, DiscoveryState::Exchange);
        let info = snap.info(t0 + Duration::from_secs(1));
        assert_eq!(info.status.name(), "Exchange");
        assert_eq!(info.status.duration(), Duration::from_secs(1));
        assert_eq!(info.host, "sw0");
    }

    #[tokio::test(start_paused = true)]
    async fn peer_expires_exactly_at_threshold_after_last_advertisement() {
        let mut r = rig().await;
        r.bring_peer_up().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let last = Instant::now();
        r.remote.send(ours(), advert("sw0"));
        let ev = r.peer_event().await;
        assert!(
            matches!(ev, DiscoveryEvent::PeerDown { ref peer, .. } if peer.addr == theirs())
        );
        assert_eq!(Instant::now() - last, EXPIRE);
        let snap = r.peer().await.unwrap();
        assert_eq!(snap.state, DiscoveryState::Expired);
        assert_eq!(snap.since, last + EXPIRE);
        assert_eq!(r.counters().await.expirations, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn renumbered_peer_is_an_address_change() {
        let mut r = rig().await;
        r.bring_peer_up().await;
        let new: Ipv6Addr = "fe80::3".parse().unwrap();
        r.remote.send_as(new, ours(), advert("sw0"));
        match r.peer_event().await {
            DiscoveryEvent::PeerAddrChanged { old_addr, peer, .. } => {
                assert_eq!((old_addr, peer.addr), (theirs(), new));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(r.peer().await.unwrap().peer.addr, new);
        assert_eq!(r.counters().await.address_changes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_timer_messages_are_ignored() {
        let mut r = rig().await;
        r.bring_peer_up().await; // expire timer generation 1
        r.remote.send(ours(), advert("sw0")); // generation 2
        let c0 = r.counters_when(|c| c.advertisements_received == 2).await;
        r.actor
            .cast(DiscoveryMsg::Timer { kind: TimerKind::Expire, gen: 1 })
            .unwrap();
        r.actor
            .cast(DiscoveryMsg::Timer { kind: TimerKind::Solicit, gen: 0 })
            .unwrap();
        assert_eq!(r.peer().await.unwrap().state, DiscoveryState::Exchange);
        let c1 = r.counters().await;
        assert_eq!(c1.solicitations_sent, c0.solicitations_sent);
        assert_eq!(c1.expirations, 0);
        // The live generation still works.
        r.actor
            .cast(DiscoveryMsg::Timer { kind: TimerKind::Expire, gen: 2 })
            .unwrap();
        assert!(matches!(
            r.peer_event().await,
            DiscoveryEvent::PeerDown { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn link_down_expires_at_once_and_silences() {
        let mut r = rig().await;
        r.bring_peer_up().await;
        let t = Instant::now();
        r.actor.cast(DiscoveryMsg::LinkDown).unwrap();
        assert!(matches!(
            r.peer_event().await,
            DiscoveryEvent::PeerDown { .. }
        ));
        assert_eq!(Instant::now(), t);
        let sent = r.counters().await.solicitations_sent;
        tokio::time::sleep(SOLICIT * 5).await;
        assert_eq!(r.counters().await.solicitations_sent, sent);
        // Advertisements while down are dropped, not a peer.
        r.remote.send(ours(), advert("sw0"));
        r.counters_when(|c| c.drops.link_down == 1).await;
        assert_eq!(r.peer().await.unwrap().state, DiscoveryState::Expired);
        // Up again: solicit at once, accept the peer.
        r.actor.cast(DiscoveryMsg::LinkUp).unwrap();
        assert_eq!(r.counters().await.solicitations_sent, sent + 1);
        r.bring_peer_up().await;
    }

    #[tokio::test(start_paused = true)]
    async fn admin_expire_by_address() {
        let mut r = rig().await;
        r.bring_peer_up().await;
        let other: Ipv6Addr = "fe80::99".parse().unwrap();
        let hit = call!(r.actor, |reply| DiscoveryMsg::ExpirePeer {
            addr: other,
            reply: Some(reply)
        })
        .unwrap();
        assert!(!hit);
        assert_eq!(r.peer().await.unwrap().state, DiscoveryState::Exchange);
        let hit = call!(r.actor, |reply| DiscoveryMsg::ExpirePeer {
            addr: theirs(),
            reply: Some(reply)
        })
        .unwrap();
        assert!(hit);
        assert!(matches!(
            r.peer_event().await,
            DiscoveryEvent::PeerDown { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn bad_packets_are_counted_not_fatal() {
        let r = rig().await;
        r.remote.send(ours(), vec![2, 2]);
        r.remote.send(ours(), vec![7, 2, 0, 0]);
        let c = r.counters_when(|c| c.drops.total() == 2).await;
        assert_eq!((c.drops.truncated, c.drops.unknown_version), (1, 1));
        assert!(r.peer().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn two_routers_find_each_other() {
        let (a, b) = MemoryPort::pair((1, ours()), (2, theirs()));
        let (_ra, mut ea) = start_with(PacketIo::Memory(a), "a").await;
        let (_rb, mut eb) = start_with(PacketIo::Memory(b), "b").await;
        for (events, host, addr) in
            [(&mut ea, "b", theirs()), (&mut eb, "a", ours())]
        {
            loop {
                let ev = tokio::time::timeout(
                    Duration::from_secs(60),
                    events.recv(),
                )
                .await
                .unwrap()
                .unwrap();
                if let DiscoveryEvent::PeerUp { peer, .. } = ev {
                    assert_eq!(
                        (peer.hostname.as_str(), peer.addr),
                        (host, addr)
                    );
                    break;
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn peer_churn_log_lines_are_rate_limited_and_counted() {
        let mut r = rig().await;
        // 50 advertisements alternating the name: each one replaces the
        // peer (a down and an up), 99 churn lines in all.
        for i in 0..50 {
            r.remote.send(ours(), advert(if i % 2 == 0 { "x" } else { "y" }));
        }
        let c = r.counters_when(|c| c.advertisements_received == 50).await;
        assert_eq!(c.peer_ups, 50);
        let limit = u64::from(crate::discovery::limit::LOG_LINES_PER_MINUTE);
        assert_eq!(c.peer_log_lines_suppressed, 99 - limit);
        // Events still flow in full: only the log is limited.
        let mut ups = 0;
        while ups < 50 {
            if let DiscoveryEvent::PeerUp { .. } = r.peer_event().await {
                ups += 1;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn missing_interface_keeps_retrying() {
        let (actor, _events) = start_with(PacketIo::udp(), "me").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let peer = call!(actor, DiscoveryMsg::GetPeer).unwrap();
        assert!(peer.is_none());
        let c = call!(actor, DiscoveryMsg::GetCounters).unwrap();
        assert_eq!(c.solicitations_sent, 0);
    }
}
