//! Tests of [`super`] (`fsm.rs`).

use super::*;
use ddm_admin_api::latest::RouterKind;

const IF: u32 = 7;
const SOLICIT: Duration = Duration::from_millis(2000);
const EXPIRE: Duration = Duration::from_millis(5000);

fn local() -> Ipv6Addr {
    "fe80::1".parse().unwrap()
}
fn peer_a() -> Ipv6Addr {
    "fe80::a".parse().unwrap()
}
fn peer_b() -> Ipv6Addr {
    "fe80::b".parse().unwrap()
}
fn from(addr: Ipv6Addr) -> SocketAddrV6 {
    SocketAddrV6::new(addr, 3549, 0, IF)
}
fn advert(host: &str) -> Vec<u8> {
    DiscoveryPacket::advertisement(RouterKind::Transit, host).encode().unwrap()
}
fn solicit(host: &str) -> Vec<u8> {
    DiscoveryPacket::solicitation(RouterKind::Server, host).encode().unwrap()
}
fn ident(addr: Ipv6Addr, host: &str) -> PeerIdentity {
    PeerIdentity {
        addr,
        hostname: host.into(),
        kind: RouterKind::Transit,
        version: 2,
    }
}
fn up_fsm(t0: Instant) -> PeerFsm {
    let mut f = PeerFsm::new(t0, SOLICIT, EXPIRE);
    f.handle(t0, Input::LinkUp { ifindex: IF, local_addr: local() });
    f
}
fn gen_of(fx: &[Effect], want: TimerKind) -> Option<u64> {
    fx.iter().find_map(|e| match e {
        Effect::Schedule { kind, gen, .. } if *kind == want => Some(*gen),
        _ => None,
    })
}

#[test]
fn link_up_solicits_at_once_and_schedules() {
    let t0 = Instant::now();
    let mut f = PeerFsm::new(t0, SOLICIT, EXPIRE);
    assert_eq!(f.state(), DiscoveryState::Init);
    let t1 = t0 + Duration::from_secs(1);
    let fx = f.handle(t1, Input::LinkUp { ifindex: IF, local_addr: local() });
    assert_eq!(
        fx,
        vec![
            Effect::StateChanged { state: DiscoveryState::Solicit, since: t1 },
            Effect::SendSolicit,
            Effect::Schedule {
                kind: TimerKind::Solicit,
                after: SOLICIT,
                gen: 1
            },
        ]
    );
    // The timer fires: solicit again with a fresh generation.
    let fx = f.handle(
        t1 + SOLICIT,
        Input::Timer { kind: TimerKind::Solicit, gen: 1 },
    );
    assert_eq!(fx[0], Effect::SendSolicit);
    assert_eq!(gen_of(&fx, TimerKind::Solicit), Some(2));
    // The old generation is stale now.
    let fx = f.handle(
        t1 + SOLICIT,
        Input::Timer { kind: TimerKind::Solicit, gen: 1 },
    );
    assert!(fx.is_empty());
}

#[test]
fn a_solicitation_flood_is_answered_at_a_bounded_rate() {
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    // The peer comes up.
    f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: advert("s1") },
    );
    // 5,000 solicitations in one second from another source.
    let mut adverts = 0;
    let mut solicits = 0;
    for i in 0..5000u64 {
        let now = t0 + Duration::from_micros(200 * i);
        let fx = f.handle(
            now,
            Input::Datagram { from: from(peer_b()), payload: solicit("x") },
        );
        for e in fx {
            match e {
                Effect::SendAdvertisement { to } => {
                    assert_eq!(to, peer_b());
                    adverts += 1;
                }
                Effect::SendSolicit => solicits += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // Burst 4 and 2 per second: 6 at most in the first second.
    assert!((4..=6).contains(&adverts), "{adverts}");
    assert_eq!(solicits, adverts, "one solicit-back per answer at most");
    let c = f.counters();
    assert_eq!(c.solicitations_received, 5000);
    assert_eq!(c.solicitations_rate_limited, 5000 - adverts);
    // The peer is still answered, and still the peer.
    let t1 = t0 + Duration::from_secs(1);
    let fx = f.handle(
        t1,
        Input::Datagram { from: from(peer_a()), payload: solicit("s1") },
    );
    assert_eq!(fx, vec![Effect::SendAdvertisement { to: peer_a() }]);
    assert_eq!(f.state(), DiscoveryState::Exchange);
    assert_eq!(f.peer().unwrap().addr, peer_a());
}

#[test]
fn solicitation_is_answered_to_its_sender() {
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    let fx = f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: solicit("s1") },
    );
    // Answered, and solicited back at once: the sender is up now.
    assert_eq!(
        fx,
        vec![Effect::SendAdvertisement { to: peer_a() }, Effect::SendSolicit]
    );
    assert_eq!(f.counters().solicitations_received, 1);
    // A solicitation alone does not make a peer.
    assert_eq!(f.state(), DiscoveryState::Solicit);
    assert!(f.peer().is_none());
    // Once exchanging with that router, its solicitations are only
    // answered.
    f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: advert("s1") },
    );
    assert_eq!(f.state(), DiscoveryState::Exchange);
    let fx = f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: solicit("s1") },
    );
    assert_eq!(fx, vec![Effect::SendAdvertisement { to: peer_a() }]);
}

/// A solicitation of any version is answered, as the original daemon
/// answers them; an advertisement of a version we do not speak makes
/// no peer and is counted. One packet that is both is answered and
/// still makes no peer.
#[test]
fn solicitations_of_any_version_are_answered() {
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    // A second apart, within the per-source answer rate.
    for (i, v) in [0u8, 1, 4, 7, 0xff].into_iter().enumerate() {
        let mut p = solicit("odd");
        p[0] = v;
        let fx = f.handle(
            t0 + Duration::from_secs(i as u64),
            Input::Datagram { from: from(peer_a()), payload: p },
        );
        assert_eq!(
            fx,
            vec![
                Effect::SendAdvertisement { to: peer_a() },
                Effect::SendSolicit
            ],
            "version {v}"
        );
    }
    assert_eq!(f.counters().solicitations_received, 5);
    let t5 = t0 + Duration::from_secs(5);
    let mut p = advert("odd");
    p[0] = 7;
    let fx = f.handle(t5, Input::Datagram { from: from(peer_a()), payload: p });
    let version_7 =
        Effect::Malformed { from: peer_a(), why: Malformed::Version(7) };
    assert_eq!(fx, vec![version_7.clone()]);
    let mut both = advert("odd");
    both[0] = 7;
    both[1] = 0x03;
    let fx =
        f.handle(t5, Input::Datagram { from: from(peer_a()), payload: both });
    assert_eq!(
        fx,
        vec![
            Effect::SendAdvertisement { to: peer_a() },
            Effect::SendSolicit,
            version_7
        ]
    );
    let c = f.counters();
    assert_eq!((c.drops.unknown_version, c.advertisements_received), (2, 0));
    assert_eq!(c.solicitations_received, 6);
    assert!(f.peer().is_none());
    assert_eq!(f.state(), DiscoveryState::Solicit);
}

#[test]
fn advertisement_brings_peer_up_and_refreshes_expiry() {
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    let fx = f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: advert("sw0") },
    );
    assert_eq!(fx[0], Effect::PeerUp(ident(peer_a(), "sw0")));
    assert!(fx.contains(&Effect::StateChanged {
        state: DiscoveryState::Exchange,
        since: t0
    }));
    let g1 = gen_of(&fx, TimerKind::Expire).unwrap();
    assert_eq!(f.state(), DiscoveryState::Exchange);

    // Another advertisement: only a new expiry timer.
    let t1 = t0 + Duration::from_secs(2);
    let fx = f.handle(
        t1,
        Input::Datagram { from: from(peer_a()), payload: advert("sw0") },
    );
    let g2 = gen_of(&fx, TimerKind::Expire).unwrap();
    assert_eq!(fx.len(), 1);
    assert_ne!(g1, g2);
    assert_eq!(f.since(), t0, "state duration not restarted");

    // The first timer is stale and does nothing.
    let fx = f
        .handle(t0 + EXPIRE, Input::Timer { kind: TimerKind::Expire, gen: g1 });
    assert!(fx.is_empty());
    assert_eq!(f.state(), DiscoveryState::Exchange);

    // The live one expires the peer.
    let fx = f
        .handle(t1 + EXPIRE, Input::Timer { kind: TimerKind::Expire, gen: g2 });
    assert_eq!(
        fx,
        vec![
            Effect::PeerDown(ident(peer_a(), "sw0")),
            Effect::StateChanged {
                state: DiscoveryState::Expired,
                since: t1 + EXPIRE
            }
        ]
    );
    assert_eq!(f.counters().expirations, 1);
    assert_eq!(f.counters().advertisements_received, 2);

    // It comes back.
    let fx = f.handle(
        t1 + EXPIRE * 2,
        Input::Datagram { from: from(peer_a()), payload: advert("sw0") },
    );
    assert_eq!(fx[0], Effect::PeerUp(ident(peer_a(), "sw0")));
    assert_eq!(f.counters().peer_ups, 2);
}

#[test]
fn renumbered_peer_is_an_address_change() {
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: advert("sw0") },
    );
    let fx = f.handle(
        t0,
        Input::Datagram { from: from(peer_b()), payload: advert("sw0") },
    );
    assert_eq!(
        fx[0],
        Effect::PeerAddrChanged { old: peer_a(), peer: ident(peer_b(), "sw0") }
    );
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::PeerUp(_) | Effect::PeerDown(_))));
    assert_eq!(f.peer().unwrap().addr, peer_b());
    assert_eq!(f.counters().address_changes, 1);
    // The admin expires by the new address only.
    assert!(f.handle(t0, Input::AdminExpire { addr: peer_a() }).is_empty());
    let fx = f.handle(t0, Input::AdminExpire { addr: peer_b() });
    assert_eq!(fx[0], Effect::PeerDown(ident(peer_b(), "sw0")));
    assert_eq!(f.state(), DiscoveryState::Expired);
}

#[test]
fn another_router_replaces_the_peer() {
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: advert("sw0") },
    );
    let fx = f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: advert("sw1") },
    );
    assert_eq!(fx[0], Effect::PeerDown(ident(peer_a(), "sw0")));
    assert_eq!(fx[1], Effect::PeerUp(ident(peer_a(), "sw1")));
}

#[test]
fn link_down_expires_at_once_and_stops_soliciting() {
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    let fx = f.handle(
        t0,
        Input::Datagram { from: from(peer_a()), payload: advert("sw0") },
    );
    let g = gen_of(&fx, TimerKind::Expire).unwrap();
    let t1 = t0 + Duration::from_millis(10);
    let fx = f.handle(t1, Input::LinkDown);
    assert_eq!(fx[0], Effect::PeerDown(ident(peer_a(), "sw0")));
    assert_eq!(f.state(), DiscoveryState::Expired);
    assert_eq!(f.since(), t1);
    // Pending timers are stale; packets are dropped.
    assert!(f
        .handle(t0 + SOLICIT, Input::Timer { kind: TimerKind::Solicit, gen: 1 })
        .is_empty());
    assert!(f
        .handle(t0 + EXPIRE, Input::Timer { kind: TimerKind::Expire, gen: g })
        .is_empty());
    assert!(f
        .handle(
            t1,
            Input::Datagram { from: from(peer_a()), payload: advert("sw0") }
        )
        .is_empty());
    assert_eq!(f.counters().drops.link_down, 1);
    // Link up again: solicit at once.
    let fx = f.handle(t1, Input::LinkUp { ifindex: IF, local_addr: local() });
    assert_eq!(fx[0], Effect::SendSolicit);
}

#[test]
fn drops_are_counted_by_reason() {
    let t0 = Instant::now();
    let mut f = PeerFsm::new(t0, SOLICIT, EXPIRE).with_hostname("me");
    let d = |f: &mut PeerFsm, from: SocketAddrV6, payload: Vec<u8>| {
        assert!(f.handle(t0, Input::Datagram { from, payload }).is_empty());
    };
    // A malformed packet is dropped, counted and handed on to be logged.
    let bad = |f: &mut PeerFsm, payload: Vec<u8>, why: Malformed| {
        let fx =
            f.handle(t0, Input::Datagram { from: from(peer_a()), payload });
        assert_eq!(fx, vec![Effect::Malformed { from: peer_a(), why }]);
    };
    d(&mut f, from(peer_a()), advert("x"));
    f.handle(t0, Input::LinkUp { ifindex: IF, local_addr: local() });
    d(&mut f, SocketAddrV6::new(peer_a(), 3549, 0, IF + 1), advert("x"));
    d(&mut f, from("fd00::1".parse().unwrap()), advert("x"));
    d(&mut f, from(local()), advert("x"));
    bad(&mut f, vec![2], Malformed::Decode(DecodeError::Truncated));
    bad(&mut f, vec![9, 2, 0, 0], Malformed::Version(9));
    bad(
        &mut f,
        vec![2, 1, 5, 0],
        Malformed::Decode(DecodeError::UnknownKind(5)),
    );
    bad(
        &mut f,
        vec![2, 1, 0, 1, 0xff],
        Malformed::Decode(DecodeError::BadHostname),
    );
    bad(&mut f, vec![2, 0, 0, 0], Malformed::Decode(DecodeError::NoKindFlags));
    // Another router under our name, advertising and soliciting.
    d(&mut f, from(peer_a()), advert("me"));
    d(&mut f, from(peer_a()), solicit("me"));
    let c = f.counters().drops;
    assert_eq!(
        c,
        DropCounters {
            truncated: 1,
            unknown_version: 1,
            unknown_kind: 1,
            bad_hostname: 1,
            no_kind_flags: 1,
            wrong_interface: 1,
            not_link_local: 1,
            own_packet: 1,
            own_hostname: 2,
            link_down: 1,
            queue_full: 0,
        }
    );
    assert_eq!(c.total(), 11);
    assert!(f.peer().is_none());
}

#[test]
fn send_outcomes_are_counted() {
    let mut f = PeerFsm::new(Instant::now(), SOLICIT, EXPIRE);
    f.record_send(Sent::Solicitation, true);
    f.record_send(Sent::Advertisement, true);
    f.record_send(Sent::Advertisement, false);
    let c = f.counters();
    assert_eq!(
        (c.solicitations_sent, c.advertisements_sent, c.send_errors),
        (1, 1, 1)
    );
}

#[test]
fn status_maps_to_admin_api() {
    let d = Duration::from_secs(3);
    assert_eq!(DiscoveryState::Exchange.status(d), PeerStatus::Exchange(d));
    assert_eq!(DiscoveryState::Init.status(d).name(), "Init");
}

/// Past the burst of identity changes, an advertisement naming another
/// router is dropped and keeps nothing alive: the peer expires on its last
/// accepted advertisement's timer, and the next advertisement, from an
/// expired peer, is taken without a token. Tokens come back with time.
#[test]
fn identity_changes_past_the_rate_are_dropped_and_keep_nothing_alive() {
    use super::IDENTITY_CHANGE_BURST;
    let t0 = Instant::now();
    let mut f = up_fsm(t0);
    let adv = |f: &mut PeerFsm, t: Instant, host: &str| {
        f.handle(
            t,
            Input::Datagram { from: from(peer_a()), payload: advert(host) },
        )
    };
    let mut expire = gen_of(&adv(&mut f, t0, "x"), TimerKind::Expire).unwrap();
    let mut host = "x";
    for _ in 0..IDENTITY_CHANGE_BURST as usize {
        host = if host == "x" { "y" } else { "x" };
        let fx = adv(&mut f, t0, host);
        assert!(fx.contains(&Effect::PeerUp(ident(peer_a(), host))), "{fx:?}");
        expire = gen_of(&fx, TimerKind::Expire).unwrap();
    }
    let other = if host == "x" { "y" } else { "x" };
    let t1 = t0 + Duration::from_secs(1);
    assert!(adv(&mut f, t1, other).is_empty());
    assert_eq!(f.counters().identity_changes_rate_limited, 1);
    assert_eq!(f.peer().map(|p| p.hostname.clone()), Some(host.to_string()));
    // Its timer, set by the last change taken, expires the peer.
    let fx = f.handle(
        t0 + EXPIRE,
        Input::Timer { kind: TimerKind::Expire, gen: expire },
    );
    assert_eq!(fx[0], Effect::PeerDown(ident(peer_a(), host)));
    let fx = adv(&mut f, t0 + EXPIRE, other);
    assert_eq!(fx[0], Effect::PeerUp(ident(peer_a(), other)));
    // Ten seconds bring back a token: a change is taken again.
    let t2 = t0 + EXPIRE + Duration::from_secs(10);
    let fx = adv(&mut f, t2, host);
    assert!(fx.contains(&Effect::PeerUp(ident(peer_a(), host))), "{fx:?}");
    assert_eq!(f.counters().identity_changes_rate_limited, 1);
}
