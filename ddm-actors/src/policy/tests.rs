//! Tests of the import policy: plain calls, no actors.

use super::*;
use ddm_admin_api::latest::RouterKind;
use ddm_proto::wire::v3::{PullResponse, TunnelUpdate, UnderlayUpdate, Update};

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn peer(i: u16) -> PeerId {
    PeerId {
        ifindex: u32::from(i),
        addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i),
    }
}

fn pv(dest: &str, path: &[&str]) -> PathVector {
    PathVector {
        destination: net(dest),
        path: path.iter().map(|s| s.to_string()).collect(),
    }
}

fn tun(boundary: &str, vni: u32) -> TunnelOrigin {
    TunnelOrigin {
        overlay_prefix: "203.0.113.0/24".parse().unwrap(),
        boundary_addr: boundary.parse().unwrap(),
        vni,
        metric: 0,
    }
}

fn announce(pvs: impl IntoIterator<Item = PathVector>) -> Update {
    Update {
        underlay: Some(UnderlayUpdate {
            announce: pvs.into_iter().collect(),
            withdraw: BTreeSet::new(),
        }),
        tunnel: None,
    }
}

/// A stand-in for the RIB: the destinations and tunnels a peer holds.
#[derive(Default)]
struct Held {
    dests: BTreeSet<Ipv6Net>,
    tunnels: BTreeSet<TunnelOrigin>,
}

impl Holdings for Held {
    fn destination_count(&self) -> usize {
        self.dests.len()
    }
    fn holds_destination(&self, d: Ipv6Net) -> bool {
        self.dests.contains(&d)
    }
    fn tunnel_count(&self) -> usize {
        self.tunnels.len()
    }
    fn holds_tunnel(&self, o: &TunnelOrigin) -> bool {
        self.tunnels.contains(o)
    }
}

/// An [`UpdateVerdict`] with its updates in wire form, as the tests write
/// them.
struct WireVerdict {
    accepted: Update,
    deferred: Update,
    refused: RefusalCounts,
    notes: Vec<RefusalNote>,
}

impl From<UpdateVerdict> for WireVerdict {
    fn from(v: UpdateVerdict) -> Self {
        WireVerdict {
            accepted: v.accepted.to_wire(),
            deferred: v.deferred.to_wire(),
            refused: v.refused,
            notes: v.notes,
        }
    }
}

/// The policy's push filters over wire updates.
impl ImportPolicy {
    fn filter_wire(
        &mut self,
        peer: PeerId,
        update: Update,
        held: &impl Holdings,
        now: Instant,
    ) -> WireVerdict {
        self.filter_update(peer, update.into(), held, now).into()
    }
    fn admit_wire(
        &mut self,
        peer: PeerId,
        deferred: Update,
        held: &impl Holdings,
        now: Instant,
    ) -> WireVerdict {
        self.admit_deferred(peer, deferred.into(), held, now).into()
    }
}

fn policy() -> ImportPolicy {
    ImportPolicy::new(PolicyConfig::default())
}

/// What `policy` refuses of one announced destination with a sane
/// path (None: accepted).
fn verdict_on(policy: &mut ImportPolicy, dest: &str) -> Option<Refusal> {
    let v = policy.filter_wire(
        peer(1),
        announce([pv(dest, &["s1"])]),
        &Held::default(),
        Instant::now(),
    );
    let kept = v.accepted.underlay.unwrap().announce.len();
    let refused: Vec<Refusal> =
        v.refused.iter().filter(|(_, n)| *n > 0).map(|(r, _)| r).collect();
    assert_eq!(kept + refused.len(), 1, "{dest}: {refused:?}");
    refused.first().copied()
}

#[test]
fn each_special_range_is_refused() {
    let mut p = policy();
    for d in [
        "::/128",
        "::1/128",
        "fe80::/10",
        "fe80::/64",
        "fe80::1:2/128",
        "febf:ffff::/32",
        "ff00::/8",
        "ff02::/16",
        "ff02::dd/128",
        "::ffff:0:0/96",
        "::ffff:10.0.0.0/104",
    ] {
        assert_eq!(
            verdict_on(&mut p, d),
            Some(Refusal::SpecialDestination),
            "{d}"
        );
    }
}

#[test]
fn supernets_of_special_ranges_are_refused_by_overlap() {
    let mut p = policy();
    // Each covers part of a special range without being inside one.
    for d in [
        "::/1",
        "::/8",
        "::/96",
        "::/127",
        "fe00::/7",
        "fe00::/8",
        "fc00::/6",
        "8000::/1",
        "ff00::/7",
        "::ffff:0:0/95",
    ] {
        assert_eq!(
            verdict_on(&mut p, d),
            Some(Refusal::SpecialDestination),
            "{d}"
        );
    }
    // Host bits set do not hide a special range.
    assert_eq!(
        verdict_on(&mut p, "fe80::1/10"),
        Some(Refusal::SpecialDestination)
    );
}

#[test]
fn ordinary_prefixes_next_to_special_ranges_are_accepted() {
    let mut p = policy();
    for d in [
        "fd00:1::/64",
        "fd00::/8",
        "fc00::/7",
        "2001:db8::/32",
        "fec0::/10",
        "fe00::/9",
        "::2/128",
        "::fffe:0:0/96",
        "::1:0:0:0/80",
        "4000::/2",
    ] {
        assert_eq!(verdict_on(&mut p, d), None, "{d}");
    }
    assert!(p.counters().total.is_empty());
}

#[test]
fn the_default_route_needs_the_flag() {
    let mut p = policy();
    assert_eq!(verdict_on(&mut p, "::/0"), Some(Refusal::DefaultRoute));
    // Host bits do not disguise it.
    assert_eq!(verdict_on(&mut p, "fd00::/0"), Some(Refusal::DefaultRoute));
    let mut p = ImportPolicy::new(PolicyConfig {
        accept_default_route: true,
        ..PolicyConfig::default()
    });
    assert_eq!(verdict_on(&mut p, "::/0"), None);
    // Only `::/0` itself: the others overlapping a special range stay
    // refused.
    for d in ["::/1", "fe00::/7", "ff00::/8", "::/128"] {
        assert_eq!(
            verdict_on(&mut p, d),
            Some(Refusal::SpecialDestination),
            "{d}"
        );
    }
    // The path is still judged.
    let v = p.filter_wire(
        peer(1),
        announce([pv("::/0", &[])]),
        &Held::default(),
        Instant::now(),
    );
    assert_eq!(v.refused.get(Refusal::EmptyPath), 1);
}

#[test]
fn paths_are_bounded_in_length_and_hostnames() {
    let mut p = ImportPolicy::new(PolicyConfig {
        max_path_len: 4,
        ..PolicyConfig::default()
    });
    let name_255 = "h".repeat(255);
    let name_256 = "h".repeat(256);
    let cases: Vec<(PathVector, Option<Refusal>)> = vec![
        (pv("fd00:1::/64", &["a", "b", "c", "d"]), None),
        (
            pv("fd00:2::/64", &["a", "b", "c", "d", "e"]),
            Some(Refusal::PathTooLong),
        ),
        (pv("fd00:3::/64", &[]), Some(Refusal::EmptyPath)),
        (pv("fd00:4::/64", &["a", ""]), Some(Refusal::EmptyHostname)),
        (pv("fd00:5::/64", &[&name_255]), None),
        (pv("fd00:6::/64", &["a", &name_256]), Some(Refusal::HostnameTooLong)),
    ];
    let all: Vec<PathVector> = cases.iter().map(|(x, _)| x.clone()).collect();
    let v =
        p.filter_wire(peer(1), announce(all), &Held::default(), Instant::now());
    let kept = v.accepted.underlay.unwrap().announce;
    for (x, why) in &cases {
        assert_eq!(kept.contains(x), why.is_none(), "{x:?}");
        if let Some(r) = why {
            assert_eq!(v.refused.get(*r), 1, "{r}");
        }
    }
    assert_eq!(v.refused.total(), 4);
    // The example logged is short, whatever the path held.
    let note =
        v.notes.iter().find(|n| n.reason == Refusal::HostnameTooLong).unwrap();
    assert!(note.example.len() < 100, "{}", note.example);
    assert!(note.example.contains("256 bytes"), "{}", note.example);
}

#[test]
fn the_default_path_limit_is_32() {
    let mut p = policy();
    let names: Vec<String> = (0..33).map(|i| format!("h{i}")).collect();
    let path = |n: usize| PathVector {
        destination: net(&format!("fd00:{n}::/64")),
        path: names[..n].to_vec(),
    };
    let v = p.filter_wire(
        peer(1),
        announce([path(32), path(33)]),
        &Held::default(),
        Instant::now(),
    );
    assert_eq!(v.accepted.underlay.unwrap().announce, [path(32)].into());
    assert_eq!(v.refused.get(Refusal::PathTooLong), 1);
}

#[test]
fn withdrawals_always_pass() {
    let mut p = policy();
    let bad = [
        pv("::/0", &["x"]),
        pv("fe80::/64", &[]),
        pv("fd00:1::/64", &[&"h".repeat(300)]),
    ];
    let update = Update {
        underlay: Some(UnderlayUpdate {
            announce: BTreeSet::new(),
            withdraw: bad.iter().cloned().collect(),
        }),
        tunnel: Some(TunnelUpdate {
            announce: BTreeSet::new(),
            withdraw: [tun("::1", 1 << 30)].into(),
        }),
    };
    let v = p.filter_wire(
        peer(1),
        update.clone(),
        &Held::default(),
        Instant::now(),
    );
    assert_eq!(v.accepted, update);
    assert!(v.refused.is_empty());
    assert!(v.notes.is_empty());
}

#[test]
fn tunnel_endpoints_need_a_24_bit_vni_and_an_ordinary_boundary() {
    let mut p = policy();
    let good = [tun("fd00:99::1", 0), tun("fd00:99::1", (1 << 24) - 1)];
    let big_vni = tun("fd00:99::1", 1 << 24);
    let special = [
        tun("::", 5),
        tun("::1", 5),
        tun("fe80::1", 5),
        tun("ff02::1", 5),
        tun("::ffff:192.0.2.1", 5),
    ];
    let mut announce: BTreeSet<TunnelOrigin> = good.into();
    announce.insert(big_vni);
    announce.extend(special);
    let v = p.filter_wire(
        peer(1),
        Update {
            underlay: None,
            tunnel: Some(TunnelUpdate { announce, withdraw: BTreeSet::new() }),
        },
        &Held::default(),
        Instant::now(),
    );
    assert_eq!(v.accepted.tunnel.unwrap().announce, good.into());
    assert_eq!(v.refused.get(Refusal::VniTooLarge), 1);
    assert_eq!(v.refused.get(Refusal::SpecialBoundary), 5);
    // An IPv6 overlay, even a default one, is the virtual network's
    // business.
    let v6 = TunnelOrigin {
        overlay_prefix: "::/0".parse().unwrap(),
        ..tun("fd00:99::2", 9)
    };
    let v = p.filter_pull(
        peer(1),
        PullResponse { underlay: None, tunnel: Some([v6].into()) },
        &Held::default(),
        Instant::now(),
    );
    assert_eq!(v.accepted.tunnel.unwrap(), [v6].into());
}

fn limited(n: usize) -> ImportPolicy {
    ImportPolicy::new(PolicyConfig {
        max_prefixes_per_peer: n,
        ..PolicyConfig::default()
    })
}

fn dest(i: u16) -> PathVector {
    pv(&format!("fd00:{i:x}::/64"), &["s1"])
}

#[test]
fn past_the_limit_new_destinations_are_refused_held_ones_kept() {
    let mut p = limited(3);
    let mut held = Held::default();
    // Two held; of three new ones only one fits.
    held.dests.extend([dest(1).destination, dest(2).destination]);
    let v = p.filter_wire(
        peer(1),
        announce([
            dest(1),
            pv("fd00:2::/64", &["t2", "s1"]),
            dest(3),
            dest(4),
            dest(5),
        ]),
        &held,
        Instant::now(),
    );
    let kept = v.accepted.underlay.unwrap().announce;
    // Held destinations pass with any path; one new one fits.
    assert!(kept.contains(&dest(1)));
    assert!(kept.contains(&pv("fd00:2::/64", &["t2", "s1"])));
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(v.refused.get(Refusal::PrefixLimit), 2);
    assert!(v.deferred.is_empty(), "no withdrawal: nothing deferred");
    // A second path to a new destination counts once.
    let mut p = limited(1);
    let v = p.filter_wire(
        peer(1),
        announce([dest(7), pv("fd00:7::/64", &["t", "s"]), dest(8)]),
        &Held::default(),
        Instant::now(),
    );
    assert_eq!(v.accepted.underlay.unwrap().announce.len(), 2);
    assert_eq!(v.refused.get(Refusal::PrefixLimit), 1);
}

#[test]
fn at_the_limit_withdrawals_pass_and_make_room() {
    let mut p = limited(2);
    let mut held = Held::default();
    held.dests.extend([dest(1).destination, dest(2).destination]);
    // Withdraw one, announce two new ones: both are deferred.
    let update = Update {
        underlay: Some(UnderlayUpdate {
            announce: [dest(3), dest(4)].into(),
            withdraw: [dest(1)].into(),
        }),
        tunnel: None,
    };
    let now = Instant::now();
    let v = p.filter_wire(peer(1), update, &held, now);
    let u = v.accepted.underlay.unwrap();
    assert_eq!(u.withdraw, [dest(1)].into());
    assert!(u.announce.is_empty());
    assert!(v.refused.is_empty(), "deferred, not refused yet");
    assert_eq!(
        v.deferred.underlay.as_ref().unwrap().announce,
        [dest(3), dest(4)].into()
    );
    // The RIB applied the withdrawal: one of the two now fits.
    held.dests.remove(&dest(1).destination);
    let v2 = p.admit_wire(peer(1), v.deferred, &held, now);
    assert_eq!(v2.accepted.underlay.unwrap().announce, [dest(3)].into());
    assert_eq!(v2.refused.get(Refusal::PrefixLimit), 1);
    assert!(v2.deferred.is_empty());
    assert_eq!(p.counters().per_peer[&peer(1)].get(Refusal::PrefixLimit), 1);
}

#[test]
fn a_pull_keeps_held_destinations_first_then_fills_the_room() {
    let mut p = limited(3);
    let mut held = Held::default();
    held.dests.extend([dest(8).destination, dest(9).destination]);
    let v = p.filter_pull(
        peer(1),
        PullResponse {
            underlay: Some(
                [dest(1), dest(2), dest(3), dest(8), dest(9)].into(),
            ),
            tunnel: None,
        },
        &held,
        Instant::now(),
    );
    // Held 8 and 9 stay; of the new ones, the first in order fits.
    assert_eq!(
        v.accepted.to_wire().underlay.unwrap(),
        [dest(1), dest(8), dest(9)].into()
    );
    assert_eq!(v.refused.get(Refusal::PrefixLimit), 2);
    // Bad items are left out of the set (so the RIB withdraws them).
    let v = p.filter_pull(
        peer(1),
        PullResponse {
            underlay: Some([dest(1), pv("ff02::/16", &["x"])].into()),
            tunnel: Some([tun("fe80::1", 1)].into()),
        },
        &held,
        Instant::now(),
    );
    assert_eq!(v.accepted.to_wire().underlay.unwrap(), [dest(1)].into());
    assert_eq!(v.accepted.tunnel.unwrap(), BTreeSet::new());
    assert_eq!(v.refused.get(Refusal::SpecialDestination), 1);
    assert_eq!(v.refused.get(Refusal::SpecialBoundary), 1);
}

#[test]
fn tunnel_endpoints_have_their_own_limit() {
    let mut p = limited(1);
    let mut held = Held::default();
    held.dests.insert(dest(1).destination);
    let a = tun("fd00:99::1", 1);
    let b = tun("fd00:99::2", 2);
    let v = p.filter_wire(
        peer(1),
        Update {
            underlay: None,
            tunnel: Some(TunnelUpdate {
                announce: [a, b].into(),
                withdraw: BTreeSet::new(),
            }),
        },
        &held,
        Instant::now(),
    );
    assert_eq!(v.accepted.tunnel.unwrap().announce.len(), 1);
    assert_eq!(v.refused.get(Refusal::TunnelLimit), 1);
    held.tunnels.insert(a);
    let v = p.filter_pull(
        peer(1),
        PullResponse { underlay: None, tunnel: Some([a, b].into()) },
        &held,
        Instant::now(),
    );
    assert_eq!(v.accepted.tunnel.unwrap(), [a].into());
}

#[test]
fn refusals_are_logged_once_a_minute_per_peer_and_reason() {
    let mut p = policy();
    let t0 = Instant::now();
    let bad = |i: u16| announce([pv(&format!("ff0{i}::/16"), &["x"])]);
    let held = Held::default();
    // First refusal: logged.
    let v = p.filter_wire(peer(1), bad(1), &held, t0);
    assert_eq!(v.notes.len(), 1);
    assert_eq!(v.notes[0].reason, Refusal::SpecialDestination);
    assert_eq!((v.notes[0].refused, v.notes[0].unlogged), (1, 1));
    assert_eq!(
        v.notes[0].example,
        "ff01::/16 (path of 1 hostnames, longest 1 bytes)"
    );
    // Within the minute: counted, not logged.
    for s in [1, 30, 59] {
        let v =
            p.filter_wire(peer(1), bad(2), &held, t0 + Duration::from_secs(s));
        assert_eq!(v.refused.total(), 1);
        assert!(v.notes.is_empty(), "at {s} s");
    }
    // Another reason, or another peer, has its own limiter.
    let v = p.filter_wire(
        peer(1),
        announce([pv("::/0", &["x"])]),
        &held,
        t0 + Duration::from_secs(2),
    );
    assert_eq!(v.notes.len(), 1);
    assert_eq!(v.notes[0].reason, Refusal::DefaultRoute);
    let v = p.filter_wire(peer(2), bad(3), &held, t0 + Duration::from_secs(3));
    assert_eq!(v.notes.len(), 1);
    // A minute on: logged again, standing for the three suppressed.
    let v = p.filter_wire(peer(1), bad(4), &held, t0 + LOG_INTERVAL);
    assert_eq!(v.notes.len(), 1);
    assert_eq!((v.notes[0].refused, v.notes[0].unlogged), (5, 4));
    let c = p.counters();
    assert_eq!(c.total.get(Refusal::SpecialDestination), 6);
    assert_eq!(c.total.get(Refusal::DefaultRoute), 1);
    assert_eq!(c.per_peer[&peer(1)].total(), 6);
    assert_eq!(c.per_peer[&peer(2)].total(), 1);
}

#[test]
fn a_flapping_peer_is_not_logged_more_often() {
    let mut p = policy();
    let t0 = Instant::now();
    let held = Held::default();
    let bad = announce([pv("ff02::/16", &["x"])]);
    assert_eq!(p.filter_wire(peer(1), bad.clone(), &held, t0).notes.len(), 1);
    let gone = p.peer_down(peer(1), t0 + Duration::from_secs(1));
    assert_eq!(gone.map(|c| c.total()), Some(1));
    // Its counters go with it at once (no series of a peer that is gone),
    // and start from zero when it comes back.
    assert!(p.counters().per_peer.is_empty());
    p.peer_up(peer(1), t0 + Duration::from_secs(2));
    assert_eq!(p.counters().per_peer[&peer(1)].total(), 0);
    let v =
        p.filter_wire(peer(1), bad.clone(), &held, t0 + Duration::from_secs(3));
    assert!(v.notes.is_empty());
    assert_eq!(p.counters().per_peer[&peer(1)].total(), 1);
    // Once down for longer than the interval, its record goes; the
    // total stays.
    p.peer_down(peer(1), t0 + Duration::from_secs(4));
    p.peer_up(peer(2), t0 + Duration::from_secs(4) + LOG_INTERVAL);
    let c = p.counters();
    assert!(c.per_peer.is_empty(), "{c:?}");
    assert_eq!(c.total.total(), 2);
    // A peer without refusals has nothing to report.
    assert_eq!(p.peer_down(peer(3), t0), None);
}

#[test]
fn the_rib_view_counts_what_a_peer_holds() {
    let mut rib = Rib::new("me", RouterKind::Transit);
    rib.peer_up(peer(1), RouterKind::Server);
    rib.import(
        peer(1),
        announce([dest(1), pv("fd00:1::/64", &["t", "s1"]), dest(2)]),
    )
    .unwrap();
    let held = RibHoldings { rib: &rib, peer: peer(1) };
    assert_eq!(held.destination_count(), 2);
    assert!(held.holds_destination(dest(2).destination));
    assert!(!held.holds_destination(dest(3).destination));
    let mut p = limited(2);
    let v = p.filter_wire(
        peer(1),
        announce([dest(1), dest(3)]),
        &held,
        Instant::now(),
    );
    assert_eq!(v.accepted.underlay.unwrap().announce, [dest(1)].into());
    assert_eq!(v.refused.get(Refusal::PrefixLimit), 1);
}

#[test]
fn every_reason_has_its_own_slot_and_name() {
    let names: BTreeSet<&str> = Refusal::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), Refusal::COUNT);
    for (i, r) in Refusal::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r}");
    }
}

#[test]
fn counts_print_their_non_zero_reasons() {
    let mut c = RefusalCounts::default();
    assert_eq!(c.to_string(), "");
    c.add(Refusal::PathTooLong, 2);
    c.add(Refusal::DefaultRoute, 1);
    assert_eq!(c.to_string(), "default_route=1,path_too_long=2");
    assert_eq!(c.total(), 3);
}
