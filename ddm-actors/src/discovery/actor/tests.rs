//! Tests of [`super`] (`actor.rs`).

use super::*;
use crate::discovery::io::{MemoryDatagram, MemoryPort};
use crate::discovery::limit::LOG_LINES_PER_MINUTE;
use crate::discovery::{DiscoveryState, PeerIdentity};
use crate::test_actors::Forward;
use ractor::call;
use std::sync::Arc;
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
    start_logging(io, hostname, Logger::root(slog::Discard, o!())).await
}

async fn start_logging(
    io: PacketIo,
    hostname: &str,
    log: Logger,
) -> (DiscoveryRef, mpsc::UnboundedReceiver<DiscoveryEvent>) {
    let (tx, events) = mpsc::unbounded_channel();
    let (collector, _) =
        Actor::spawn(None, Forward::<DiscoveryEvent>::new(), tx).await.unwrap();
    let args = DiscoveryArgs {
        interface: "ddm-none0".parse().unwrap(),
        hostname: hostname.into(),
        kind: RouterKind::Server,
        solicit_interval: SOLICIT,
        expire_threshold: EXPIRE,
        ip_addr_wait: Duration::from_millis(1000),
        log,
        events: collector.get_derived(),
        io,
    };
    let (actor, _) = Actor::spawn(None, Discovery, args).await.unwrap();
    (actor, events)
}

async fn rig() -> Rig {
    rig_and_port().await.0
}

/// A rig, and a handle on our side's port (to re-create the interface).
async fn rig_and_port() -> (Rig, MemoryPort) {
    let (local, remote) =
        MemoryPort::pair((OUR_IF, ours()), (THEIR_IF, theirs()));
    let probe = local.clone();
    let wire = remote.subscribe();
    let (actor, events) = start_with(PacketIo::Memory(local), "me").await;
    (Rig { actor, remote, wire, events }, probe)
}

fn advert(host: &str) -> Vec<u8> {
    DiscoveryPacket::advertisement(RouterKind::Transit, host).encode().unwrap()
}

impl Rig {
    async fn sent(&mut self) -> (MemoryDatagram, DiscoveryPacket) {
        let d = tokio::time::timeout(Duration::from_secs(60), self.wire.recv())
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
    assert!(matches!(r.peer_event().await, DiscoveryEvent::PeerDown { .. }));
}

#[tokio::test(start_paused = true)]
async fn link_down_expires_at_once_and_silences() {
    let mut r = rig().await;
    r.bring_peer_up().await;
    let t = Instant::now();
    r.actor.cast(DiscoveryMsg::LinkDown).unwrap();
    assert!(matches!(r.peer_event().await, DiscoveryEvent::PeerDown { .. }));
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

/// An interface deleted and made again under a new index while down: at
/// link up the actor opens the new one at once (its peer comes up on the
/// new index), rather than soliciting through the stale link until the
/// next solicitation's check.
#[tokio::test(start_paused = true)]
async fn link_up_on_a_re_created_interface_opens_it_at_once() {
    let (mut r, probe) = rig_and_port().await;
    r.bring_peer_up().await;
    r.actor.cast(DiscoveryMsg::LinkDown).unwrap();
    assert!(matches!(r.peer_event().await, DiscoveryEvent::PeerDown { .. }));
    probe.recreate(12);
    while r.wire.try_recv().is_ok() {}
    let t = Instant::now();
    r.actor.cast(DiscoveryMsg::LinkUp).unwrap();
    // It solicits at once; the peer answers.
    let (_, p) = r.sent().await;
    assert!(p.solicit && !p.advertise, "{p:?}");
    r.remote.send(ours(), advert("sw0"));
    match r.peer_event().await {
        DiscoveryEvent::PeerUp { ifindex, .. } => assert_eq!(ifindex, 12),
        e => panic!("{e:?}"),
    }
    assert_eq!(Instant::now(), t, "at once");
}

/// The same without a link-down first (an event lost, a rename): the
/// peer on the old index goes down, then comes up on the new one, and
/// soliciting goes on from there.
#[tokio::test(start_paused = true)]
async fn link_up_on_a_re_created_interface_without_a_down_moves_the_peer() {
    let (mut r, probe) = rig_and_port().await;
    r.bring_peer_up().await;
    probe.recreate(12);
    r.actor.cast(DiscoveryMsg::LinkUp).unwrap();
    match r.peer_event().await {
        DiscoveryEvent::PeerDown { ifindex, .. } => assert_eq!(ifindex, OUR_IF),
        e => panic!("{e:?}"),
    }
    r.remote.send(ours(), advert("sw0"));
    match r.peer_event().await {
        DiscoveryEvent::PeerUp { ifindex, .. } => assert_eq!(ifindex, 12),
        e => panic!("{e:?}"),
    }
    // Still soliciting on the new link, timer and all: the next
    // solicitation within an interval, and no other peer event.
    while r.wire.try_recv().is_ok() {}
    let t = Instant::now();
    let (_, p) = r.sent().await;
    assert!(p.solicit, "{p:?}");
    assert!(t.elapsed() <= SOLICIT, "{:?}", t.elapsed());
    while let Ok(e) = r.events.try_recv() {
        assert!(matches!(e, DiscoveryEvent::Status { .. }), "{e:?}");
    }
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
    assert!(matches!(r.peer_event().await, DiscoveryEvent::PeerDown { .. }));
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
            let ev =
                tokio::time::timeout(Duration::from_secs(60), events.recv())
                    .await
                    .unwrap()
                    .unwrap();
            if let DiscoveryEvent::PeerUp { peer, .. } = ev {
                assert_eq!((peer.hostname.as_str(), peer.addr), (host, addr));
                break;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn peer_churn_is_damped_and_its_log_lines_rate_limited() {
    use crate::discovery::fsm::IDENTITY_CHANGE_BURST;
    let mut r = rig().await;
    // 50 advertisements alternating the name: past the first, each would
    // replace the peer (a down and an up). A burst of changes is taken;
    // the rest are dropped and counted. Sent ten at a time, within what a
    // memory link buffers.
    for i in 0..50u64 {
        r.remote.send(ours(), advert(if i % 2 == 0 { "x" } else { "y" }));
        if i % 10 == 9 {
            r.counters_when(|c| c.advertisements_received == i + 1).await;
        }
    }
    let c = r.counters_when(|c| c.advertisements_received == 50).await;
    let changes = IDENTITY_CHANGE_BURST as u64;
    assert_eq!(c.peer_ups, 1 + changes);
    // Of the 46 after them, half name the peer as it now is (kept), the
    // other half another (dropped).
    assert_eq!(c.identity_changes_rate_limited, (49 - changes) / 2);
    // The first up, then a down and an up per change: past the limit of
    // lines a minute, the rest are held back and counted.
    let limit = u64::from(crate::discovery::limit::LOG_LINES_PER_MINUTE);
    assert_eq!(c.peer_log_lines_suppressed, 1 + 2 * changes - limit);
    // The events of the changes taken flow in full.
    let mut ups = 0;
    while ups < 1 + changes {
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

/// A killed actor skips `post_stop`; its reader task (holding the
/// interface's sockets) ends all the same, as its state is dropped.
#[tokio::test(start_paused = true)]
async fn a_killed_actor_stops_reading_its_link() {
    let (local, remote) =
        MemoryPort::pair((OUR_IF, ours()), (THEIR_IF, theirs()));
    let probe = local.clone();
    let mut wire = remote.subscribe();
    let (actor, _events) = start_with(PacketIo::Memory(local), "me").await;
    // It solicits once its link is open, with its reader listening.
    wire.recv().await.unwrap();
    assert_eq!(probe.listeners(), 1);
    actor.kill_and_wait(None).await.unwrap();
    for _ in 0..100 {
        if probe.listeners() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(probe.listeners(), 0, "the reader outlived its actor");
}

/// The messages of the lines logged through it.
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<String>>>);

impl slog::Drain for Lines {
    type Ok = ();
    type Err = slog::Never;
    fn log(
        &self,
        record: &slog::Record<'_>,
        _: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        self.0.lock().unwrap().push(record.msg().to_string());
        Ok(())
    }
}

/// Malformed packets are dropped, counted and logged, a few lines a
/// minute however many arrive.
#[tokio::test(start_paused = true)]
async fn malformed_packets_are_logged_within_a_bound() {
    let (local, remote) =
        MemoryPort::pair((OUR_IF, ours()), (THEIR_IF, theirs()));
    let lines = Lines::default();
    let log = Logger::root(slog::Fuse(lines.clone()), o!());
    let (actor, _events) =
        start_logging(PacketIo::Memory(local), "me", log).await;
    let rig = Rig {
        actor,
        remote,
        wire: broadcast::channel(1).1,
        events: mpsc::unbounded_channel().1,
    };
    for _ in 0..20 {
        rig.remote.send(ours(), vec![2]);
    }
    rig.counters_when(|c| c.drops.truncated == 20).await;
    let logged = |what: &str| {
        lines.0.lock().unwrap().iter().filter(|m| m.contains(what)).count()
    };
    assert_eq!(
        logged("malformed discovery packet dropped"),
        LOG_LINES_PER_MINUTE as usize
    );
}

/// The readers hand on at most so many datagrams the actor has not taken;
/// past them what arrives is dropped and counted, and a place comes back
/// as each is taken (or lost with its message).
#[test]
fn the_datagram_queue_is_bounded() {
    let queue = Queue::default();
    let mut held: Vec<Queued> =
        (0..MAX_QUEUED_DATAGRAMS).map(|_| queue.admit().unwrap()).collect();
    assert!(queue.admit().is_none());
    assert!(queue.admit().is_none());
    assert_eq!(queue.full.load(Ordering::Relaxed), 2);
    held.pop();
    let again = queue.admit().expect("a place came back");
    assert!(queue.admit().is_none());
    drop((again, held));
    assert_eq!(queue.places.available_permits(), MAX_QUEUED_DATAGRAMS);
}
