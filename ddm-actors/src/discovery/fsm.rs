//! The peer state machine of one interface.
//!
//! Pure: [`PeerFsm::handle`] takes the time and one [`Input`] and returns the
//! [`Effect`]s the caller must carry out (send, schedule, report). It never
//! reads a clock, touches a socket or spawns anything, so every rule of
//! The discovery protocol is tested here without actors.
//!
//! ```text
//!            LinkUp                 advertisement
//!   Init ─────────────▶ Solicit ─────────────────▶ Exchange
//!    ▲                                              │    ▲
//!    │ LinkDown (no peer)      expire timer /       │    │ advertisement
//!    └──────────────────      LinkDown / admin      ▼    │
//!                                               Expired ─┘
//! ```
//!
//! Solicitations go out at `LinkUp` and then every `solicit_interval` while
//! the link is up, whatever the state. Every advertisement from the peer
//! restarts its expiry timer: the peer expires exactly `expire_threshold`
//! after its last advertisement. Timers carry a generation number; a timer
//! whose generation is not the current one was cancelled and is ignored.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use ddm_admin_api::latest::PeerStatus;
use tokio::time::Instant;

use crate::counters::named_counters;

use super::limit::{AnswerLimiter, TokenBucket};
use super::packet::{DecodeError, DiscoveryPacket};
use super::PeerIdentity;

/// Where the peer relationship of an interface stands (the admin API's
/// `PeerStatus` without the duration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiscoveryState {
    /// The interface is not usable yet (no address, link down).
    Init,
    /// Soliciting; no peer has advertised.
    Solicit,
    /// A peer advertises regularly.
    Exchange,
    /// The peer stopped advertising (or was expired by hand or link down).
    Expired,
}

impl DiscoveryState {
    /// The admin API's status for this state, held for `duration`.
    pub fn status(self, duration: Duration) -> PeerStatus {
        match self {
            DiscoveryState::Init => PeerStatus::Init(duration),
            DiscoveryState::Solicit => PeerStatus::Solicit(duration),
            DiscoveryState::Exchange => PeerStatus::Exchange(duration),
            DiscoveryState::Expired => PeerStatus::Expired(duration),
        }
    }
}

/// The two timers of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Time to send the next solicitation.
    Solicit,
    /// The peer has been silent for the expiry threshold.
    Expire,
}

/// Something that happened to the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The interface is usable: its index and link-local address are known.
    LinkUp {
        /// Index of the interface (the scope id of its link-local traffic).
        ifindex: u32,
        /// This router's link-local address on it.
        local_addr: Ipv6Addr,
    },
    /// The interface went away or down: expire the peer, stop soliciting.
    LinkDown,
    /// A timer fired.
    Timer {
        /// Which timer.
        kind: TimerKind,
        /// The generation it was scheduled with.
        gen: u64,
    },
    /// A datagram arrived on the discovery port.
    Datagram {
        /// Its source, with the scope id of the interface it came in on.
        from: SocketAddrV6,
        /// Its bytes.
        payload: Vec<u8>,
    },
    /// An operator asked to expire the peer with this address.
    AdminExpire {
        /// The peer's address.
        addr: Ipv6Addr,
    },
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Multicast a solicitation on the interface.
    SendSolicit,
    /// Unicast an advertisement to a soliciting router.
    SendAdvertisement {
        /// The soliciting router's link-local address.
        to: Ipv6Addr,
    },
    /// Start (or restart) a timer; a previous timer of the same kind is
    /// stale from now on.
    Schedule {
        /// Which timer.
        kind: TimerKind,
        /// How long from now.
        after: Duration,
        /// Generation to hand back in [`Input::Timer`].
        gen: u64,
    },
    /// A peer appeared on the interface.
    PeerUp(PeerIdentity),
    /// The peer is gone: withdraw what was learned from it.
    PeerDown(PeerIdentity),
    /// The same peer now advertises from another address.
    PeerAddrChanged {
        /// The address it used before.
        old: Ipv6Addr,
        /// The peer, with its new address.
        peer: PeerIdentity,
    },
    /// A datagram was dropped as malformed (and counted): the caller logs
    /// it, within a bound.
    Malformed {
        /// Its source.
        from: Ipv6Addr,
        /// What was wrong with it.
        why: Malformed,
    },
    /// The state changed (or was re-entered, restarting its duration).
    StateChanged {
        /// The new state.
        state: DiscoveryState,
        /// When it was entered.
        since: Instant,
    },
}

/// Why a datagram from the link was not taken as a discovery packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// It does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An advertisement of a version exchange does not speak.
    #[error("advertisement of unknown version {0}")]
    Version(u8),
}

named_counters! {
    /// Received datagrams dropped, by reason.
    pub struct DropCounters {
        /// Shorter than its length fields say.
        truncated,
        /// Advertisements of a version outside 2..=3 (solicitations of any
        /// version are answered).
        unknown_version,
        /// Router kind other than server or transit.
        unknown_kind,
        /// Hostname not UTF-8.
        bad_hostname,
        /// Neither solicitation nor advertisement.
        no_kind_flags,
        /// Arrived with another interface's scope id.
        wrong_interface,
        /// Source address is not link-local.
        not_link_local,
        /// Sent by this router itself.
        own_packet,
        /// Sent by another router under our own hostname: every path between
        /// us would be taken as a loop on both sides (a misconfiguration,
        /// refused before it becomes a peer).
        own_hostname,
        /// Arrived while the interface was not up.
        link_down,
        /// Arrived while the actor had as many waiting as it may
        /// (`MAX_QUEUED_DATAGRAMS`, in the actor).
        queue_full,
    }
}

impl DropCounters {
    /// Every drop, whatever the reason.
    pub fn total(&self) -> u64 {
        self.counts().map(|(_, n)| n).sum()
    }

    fn count(&mut self, why: Malformed) {
        match why {
            Malformed::Decode(DecodeError::Truncated) => self.truncated += 1,
            Malformed::Decode(DecodeError::UnknownKind(_)) => {
                self.unknown_kind += 1
            }
            Malformed::Decode(DecodeError::BadHostname) => {
                self.bad_hostname += 1
            }
            Malformed::Decode(DecodeError::NoKindFlags) => {
                self.no_kind_flags += 1
            }
            Malformed::Version(_) => self.unknown_version += 1,
        }
    }
}

named_counters! {
    /// Per-interface statistics, for operators and tests.
    pub struct Counters {
        /// Solicitations handed to the socket successfully.
        solicitations_sent,
        /// Valid solicitations received.
        solicitations_received,
        /// Valid solicitations left unanswered because their source (or all
        /// sources together) exceeded the answer rate (see [`super::limit`]).
        solicitations_rate_limited,
        /// Advertisements handed to the socket successfully.
        advertisements_sent,
        /// Valid advertisements received.
        advertisements_received,
        /// Sends the socket refused.
        send_errors,
        /// Times a peer came up.
        peer_ups,
        /// Times a peer expired (silence, link down or by hand).
        expirations,
        /// Times the peer advertised from a new address.
        address_changes,
        /// Advertisements of a live peer that changed its identity (name,
        /// kind, version or address) past the rate of such changes
        /// ([`IDENTITY_CHANGE_BURST`], [`IDENTITY_CHANGES_PER_SECOND`]):
        /// dropped, the peer kept as it was.
        identity_changes_rate_limited,
        /// Peer up/down/renumbered log lines held back by the rate limit (kept
        /// by the actor; always 0 in the machine's own copy).
        peer_log_lines_suppressed,
    }
    and {
        /// Datagrams dropped, by reason.
        pub drops: DropCounters,
    }
}

/// What a send was, for [`PeerFsm::record_send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A solicitation.
    Solicitation,
    /// An advertisement.
    Advertisement,
}

/// The peer state machine of one interface.
#[derive(Debug, Clone)]
pub struct PeerFsm {
    /// How often to solicit.
    solicit_interval: Duration,
    /// Silence after which the peer expires.
    expire_threshold: Duration,
    /// The interface index, once the link is up (datagrams must carry it
    /// as scope id).
    ifindex: Option<u32>,
    /// Our own link-local address, once known (our own packets are dropped).
    local_addr: Option<Ipv6Addr>,
    /// Whether the link is up: solicit and accept packets.
    up: bool,
    /// Current state.
    state: DiscoveryState,
    /// When the current state was entered.
    since: Instant,
    /// The peer, once one advertised (kept when it expires, for display).
    peer: Option<PeerIdentity>,
    /// When the peer last advertised.
    last_advertisement: Option<Instant>,
    /// Generation of the live solicit timer.
    solicit_gen: u64,
    /// Generation of the live expire timer.
    expire_gen: u64,
    /// Statistics.
    counters: Counters,
    /// Bounds the answers to solicitations.
    answers: AnswerLimiter,
    /// Bounds how often a live peer may change its identity.
    identity_changes: TokenBucket,
    /// Our own hostname, if known: a router using it is refused.
    hostname: Option<String>,
}

/// Changes of a live peer's identity (name, kind, version: a peer down and
/// a peer up; or address: a renumbering) taken at once. Each one stops an
/// exchange session and starts another, and walks the routing table twice:
/// a link partner alternating two names in its advertisements at line rate
/// made that thousands of times a second.
pub const IDENTITY_CHANGE_BURST: f64 = 3.0;

/// Changes of a live peer's identity taken per second past the burst (one
/// every 10 s). An advertisement past it is dropped and counted, and does
/// not keep the peer alive: a partner that really became another router
/// is the new peer once the old one expires, or once a change is allowed.
pub const IDENTITY_CHANGES_PER_SECOND: f64 = 0.1;

impl PeerFsm {
    /// A machine in `Init`, entered at `now`.
    pub fn new(
        now: Instant,
        solicit_interval: Duration,
        expire_threshold: Duration,
    ) -> Self {
        PeerFsm {
            solicit_interval,
            expire_threshold,
            ifindex: None,
            local_addr: None,
            up: false,
            state: DiscoveryState::Init,
            since: now,
            peer: None,
            last_advertisement: None,
            solicit_gen: 0,
            expire_gen: 0,
            counters: Counters::default(),
            answers: AnswerLimiter::new(now, solicit_interval),
            identity_changes: TokenBucket::new(
                now,
                IDENTITY_CHANGE_BURST,
                IDENTITY_CHANGES_PER_SECOND,
            ),
            hostname: None,
        }
    }

    /// Refuse packets of any router using `hostname`, our own.
    pub fn with_hostname(mut self, hostname: &str) -> Self {
        self.hostname = Some(hostname.to_string());
        self
    }

    /// Current state.
    pub fn state(&self) -> DiscoveryState {
        self.state
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The current (or last, if expired) peer.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// When the peer last advertised.
    pub fn last_advertisement(&self) -> Option<Instant> {
        self.last_advertisement
    }

    /// Our link-local address, once the link came up.
    pub fn local_addr(&self) -> Option<Ipv6Addr> {
        self.local_addr
    }

    /// Statistics.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Account for the outcome of a send the machine asked for.
    pub fn record_send(&mut self, what: Sent, ok: bool) {
        match (what, ok) {
            (_, false) => self.counters.send_errors += 1,
            (Sent::Solicitation, true) => self.counters.solicitations_sent += 1,
            (Sent::Advertisement, true) => {
                self.counters.advertisements_sent += 1
            }
        }
    }

    /// Feed one input; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::LinkUp { ifindex, local_addr } => {
                self.link_up(now, ifindex, local_addr, &mut fx)
            }
            Input::LinkDown => self.link_down(now, &mut fx),
            Input::Timer { kind: TimerKind::Solicit, gen } => {
                if self.up && gen == self.solicit_gen {
                    fx.push(Effect::SendSolicit);
                    self.schedule_solicit(&mut fx);
                }
            }
            Input::Timer { kind: TimerKind::Expire, gen } => {
                if gen == self.expire_gen
                    && self.state == DiscoveryState::Exchange
                {
                    self.expire(now, &mut fx);
                }
            }
            Input::Datagram { from, payload } => {
                self.datagram(now, from, &payload, &mut fx)
            }
            Input::AdminExpire { addr } => {
                if self.state == DiscoveryState::Exchange
                    && self.peer.as_ref().is_some_and(|p| p.addr == addr)
                {
                    self.expire(now, &mut fx);
                }
            }
        }
        fx
    }

    fn enter(
        &mut self,
        now: Instant,
        state: DiscoveryState,
        fx: &mut Vec<Effect>,
    ) {
        self.state = state;
        self.since = now;
        fx.push(Effect::StateChanged { state, since: now });
    }

    fn schedule_solicit(&mut self, fx: &mut Vec<Effect>) {
        self.solicit_gen += 1;
        fx.push(Effect::Schedule {
            kind: TimerKind::Solicit,
            after: self.solicit_interval,
            gen: self.solicit_gen,
        });
    }

    fn schedule_expire(&mut self, fx: &mut Vec<Effect>) {
        self.expire_gen += 1;
        fx.push(Effect::Schedule {
            kind: TimerKind::Expire,
            after: self.expire_threshold,
            gen: self.expire_gen,
        });
    }

    fn link_up(
        &mut self,
        now: Instant,
        ifindex: u32,
        local_addr: Ipv6Addr,
        fx: &mut Vec<Effect>,
    ) {
        self.ifindex = Some(ifindex);
        self.local_addr = Some(local_addr);
        if self.up {
            return;
        }
        self.up = true;
        if self.state == DiscoveryState::Init {
            self.enter(now, DiscoveryState::Solicit, fx);
        }
        fx.push(Effect::SendSolicit);
        self.schedule_solicit(fx);
    }

    fn link_down(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !self.up {
            return;
        }
        self.up = false;
        // Cancel both timers.
        self.solicit_gen += 1;
        if self.state == DiscoveryState::Exchange {
            self.expire(now, fx);
        } else {
            self.expire_gen += 1;
            if self.state == DiscoveryState::Solicit {
                self.enter(now, DiscoveryState::Init, fx);
            }
        }
    }

    fn expire(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        self.expire_gen += 1;
        self.counters.expirations += 1;
        if let Some(p) = &self.peer {
            fx.push(Effect::PeerDown(p.clone()));
        }
        self.enter(now, DiscoveryState::Expired, fx);
    }

    fn datagram(
        &mut self,
        now: Instant,
        from: SocketAddrV6,
        payload: &[u8],
        fx: &mut Vec<Effect>,
    ) {
        let drops = &mut self.counters.drops;
        if !self.up {
            drops.link_down += 1;
            return;
        }
        if Some(from.scope_id()) != self.ifindex {
            drops.wrong_interface += 1;
            return;
        }
        let addr = *from.ip();
        if !addr.is_unicast_link_local() {
            drops.not_link_local += 1;
            return;
        }
        if Some(addr) == self.local_addr {
            drops.own_packet += 1;
            return;
        }
        let packet = match DiscoveryPacket::decode(payload) {
            Ok(p) => p,
            Err(e) => return self.malformed(addr, e.into(), fx),
        };
        if self.hostname.as_deref() == Some(packet.hostname.as_str()) {
            drops.own_hostname += 1;
            return;
        }
        if packet.solicit {
            self.counters.solicitations_received += 1;
            // Answers are rate-limited (the peer's in a bucket of its own,
            // strangers' per source and all together), so a flood of
            // solicitations draws a trickle of advertisements, never one
            // each.
            let peer = self.peer.as_ref().is_some_and(|p| p.addr == addr);
            if self.answers.allow(now, addr, peer) {
                fx.push(Effect::SendAdvertisement { to: addr });
                // A router we are not exchanging with is soliciting: it is
                // up now, so solicit back at once instead of at our next
                // tick. Both ends then peer within a round trip of the
                // later one starting, not a solicit interval. In Exchange
                // with that very router there is nothing to learn, so
                // steady state sends no extra packets.
                let known = peer && self.state == DiscoveryState::Exchange;
                if !known {
                    fx.push(Effect::SendSolicit);
                }
            } else {
                self.counters.solicitations_rate_limited += 1;
            }
        }
        if packet.advertise {
            // The sender would become our peer, and exchange speaks its
            // version: only 2 and 3 will do.
            if packet.version_supported() {
                self.counters.advertisements_received += 1;
                self.advertisement(now, addr, packet, fx);
            } else {
                self.malformed(addr, Malformed::Version(packet.version), fx);
            }
        }
    }

    /// A datagram from `from` that was not a discovery packet we take:
    /// counted, and reported (the actor logs it, within its limit).
    fn malformed(
        &mut self,
        from: Ipv6Addr,
        why: Malformed,
        fx: &mut Vec<Effect>,
    ) {
        self.counters.drops.count(why);
        fx.push(Effect::Malformed { from, why });
    }

    fn advertisement(
        &mut self,
        now: Instant,
        addr: Ipv6Addr,
        packet: DiscoveryPacket,
        fx: &mut Vec<Effect>,
    ) {
        let new = PeerIdentity {
            addr,
            hostname: packet.hostname,
            kind: packet.kind,
            version: packet.version,
        };
        let live = self.state == DiscoveryState::Exchange;
        let changed = live && self.peer.as_ref().is_some_and(|old| *old != new);
        if changed && !self.identity_changes.take(now) {
            self.counters.identity_changes_rate_limited += 1;
            return;
        }
        self.last_advertisement = Some(now);
        match self.peer.take() {
            Some(old) if live && old == new => {
                self.peer = Some(old);
            }
            Some(old)
                if live
                    && old.hostname == new.hostname
                    && old.kind == new.kind
                    && old.version == new.version =>
            {
                // Same router, renumbered.
                self.counters.address_changes += 1;
                fx.push(Effect::PeerAddrChanged {
                    old: old.addr,
                    peer: new.clone(),
                });
                self.peer = Some(new);
            }
            old => {
                // A peer appears, or a live peer turned into another router
                // (other name, kind or version): the old one goes first.
                if let Some(old) = old.filter(|_| live) {
                    fx.push(Effect::PeerDown(old));
                }
                self.counters.peer_ups += 1;
                fx.push(Effect::PeerUp(new.clone()));
                self.peer = Some(new);
                self.enter(now, DiscoveryState::Exchange, fx);
            }
        }
        self.schedule_expire(fx);
    }
}

#[cfg(test)]
mod tests;
