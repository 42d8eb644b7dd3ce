//! Tests of the RIB as a pure state machine: plain calls, no actors.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use ddm_proto::outgoing::{Names, OutUnderlay};
use ddm_proto::wire::v3::{TunnelUpdate, UnderlayUpdate, Update};

fn peer(n: u16) -> PeerId {
    PeerId {
        ifindex: u32::from(n),
        addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n),
    }
}

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn pv(dest: &str, path: &[&str]) -> PathVector {
    PathVector {
        destination: net(dest),
        path: path.iter().map(|s| s.to_string()).collect(),
    }
}

fn tunnel(prefix: &str, boundary: u16, metric: u64) -> TunnelOrigin {
    TunnelOrigin {
        overlay_prefix: prefix.parse().unwrap(),
        boundary_addr: Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, boundary),
        vni: 7,
        metric,
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

fn withdraw(pvs: impl IntoIterator<Item = PathVector>) -> Update {
    Update {
        underlay: Some(UnderlayUpdate {
            announce: BTreeSet::new(),
            withdraw: pvs.into_iter().collect(),
        }),
        tunnel: None,
    }
}

fn tunnels(announce: &[TunnelOrigin], withdraw: &[TunnelOrigin]) -> Update {
    Update {
        underlay: None,
        tunnel: Some(TunnelUpdate {
            announce: announce.iter().copied().collect(),
            withdraw: withdraw.iter().copied().collect(),
        }),
    }
}

fn route(dest: &str, peers: &[PeerId]) -> RouteUpdate {
    RouteUpdate {
        destination: net(dest),
        nexthops: peers.iter().map(PeerId::nexthop).collect(),
    }
}

fn rib_with_peers(kind: RouterKind, n: u16) -> Rib {
    let mut rib = Rib::new("me", kind);
    for i in 1..=n {
        rib.peer_up(peer(i), RouterKind::Server);
    }
    rib
}

/// The pushes of `e` as a map, for order-free comparison.
fn pushes(e: &Effects) -> BTreeMap<PeerId, Update> {
    e.pushes.iter().map(|(p, u)| (*p, u.to_wire())).collect()
}

#[test]
fn set_originated_withdraws_the_stale_and_originates_the_new_at_once() {
    let (t1, t2) = (tunnel("10.1.0.0/16", 1, 0), tunnel("10.2.0.0/16", 2, 0));
    let start = || {
        let mut rib = rib_with_peers(RouterKind::Server, 1);
        rib.originate([net("fd00:1::/64"), net("fd00:2::/64")]);
        rib.originate_tunnels([t1]);
        rib
    };
    let (mut rib, mut twin) = (start(), start());

    let e = rib.set_originated(
        [net("fd00:2::/64"), net("fd00:3::/64")].into(),
        [t2].into(),
    );
    assert_eq!(
        rib.originated(),
        &BTreeSet::from([net("fd00:2::/64"), net("fd00:3::/64")])
    );
    assert_eq!(rib.originated_tunnels(), &BTreeSet::from([t2]));
    // One push: the stale prefix and tunnel withdrawn, the new announced,
    // the kept one not repeated.
    let want = Update {
        underlay: Some(UnderlayUpdate {
            announce: [pv("fd00:3::/64", &["me"])].into(),
            withdraw: [pv("fd00:1::/64", &["me"])].into(),
        }),
        tunnel: Some(TunnelUpdate {
            announce: [t2].into(),
            withdraw: [t1].into(),
        }),
    };
    assert_eq!(pushes(&e), [(peer(1), want.clone())].into());
    assert!(e.route_updates.is_empty());
    assert_eq!(e.tunnel_set, None, "own tunnels are not routes here");

    // The same as the four steps the router used to take one by one.
    let steps = [
        twin.withdraw_originated([net("fd00:1::/64")]),
        twin.withdraw_tunnels([t1]),
        twin.originate([net("fd00:2::/64"), net("fd00:3::/64")]),
        twin.originate_tunnels([t2]),
    ];
    let mut merged = Update::default();
    for s in &steps {
        for (_, u) in pushes(s) {
            let (mu, mt) = (
                merged.underlay.get_or_insert_with(Default::default),
                u.underlay,
            );
            if let Some(x) = mt {
                mu.announce.extend(x.announce);
                mu.withdraw.extend(x.withdraw);
            }
            if let Some(x) = u.tunnel {
                let m = merged.tunnel.get_or_insert_with(Default::default);
                m.announce.extend(x.announce);
                m.withdraw.extend(x.withdraw);
            }
        }
    }
    assert_eq!(merged, want);
    assert_eq!(twin.originated(), rib.originated());

    // Setting the same sets again changes nothing.
    let again = rib.set_originated(
        [net("fd00:2::/64"), net("fd00:3::/64")].into(),
        [t2].into(),
    );
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn originate_and_withdraw_push_to_every_peer() {
    for kind in [RouterKind::Server, RouterKind::Transit] {
        let mut rib = rib_with_peers(kind, 2);
        let e = rib.originate([net("fd00:1::/64")]);
        assert!(e.route_updates.is_empty(), "no local route for own prefixes");
        assert_eq!(
            pushes(&e),
            [
                (peer(1), announce([pv("fd00:1::/64", &["me"])])),
                (peer(2), announce([pv("fd00:1::/64", &["me"])]))
            ]
            .into()
        );
        assert!(
            rib.originate([net("fd00:1::/64")]).is_empty(),
            "duplicate is idempotent"
        );
        assert_eq!(rib.originated(), &BTreeSet::from([net("fd00:1::/64")]));

        let e =
            rib.withdraw_originated([net("fd00:1::/64"), net("fd00:2::/64")]);
        assert_eq!(
            pushes(&e),
            [
                (peer(1), withdraw([pv("fd00:1::/64", &["me"])])),
                (peer(2), withdraw([pv("fd00:1::/64", &["me"])]))
            ]
            .into()
        );
        assert!(rib.withdraw_originated([net("fd00:1::/64")]).is_empty());
        assert!(rib.originated().is_empty());
    }
}

#[test]
fn withdrawing_few_or_most_of_the_originated_is_the_same() {
    let all: BTreeSet<Ipv6Net> =
        (0..20u16).map(|i| net(&format!("fd00:{i:x}::/64"))).collect();
    let mut rib = rib_with_peers(RouterKind::Server, 1);
    rib.originate(all.clone());
    // One of twenty (a lookup each), then most of the rest and one never
    // originated (one walk): only what was originated is withdrawn.
    for gone in [
        BTreeSet::from([net("fd00:3::/64")]),
        all.iter().copied().skip(5).chain([net("fd00:99::/64")]).collect(),
    ] {
        let had = rib.originated().clone();
        let e = rib.withdraw_originated(gone.clone());
        let want: BTreeSet<Ipv6Net> =
            had.intersection(&gone).copied().collect();
        let pv = |p: &Ipv6Net| pv(&p.to_string(), &["me"]);
        assert_eq!(
            pushes(&e),
            [(peer(1), withdraw(want.iter().map(pv)))].into()
        );
        let left: BTreeSet<Ipv6Net> = had.difference(&gone).copied().collect();
        assert_eq!(rib.originated(), &left);
    }
    assert_eq!(rib.originated().len(), 4);
}

#[test]
fn import_creates_a_route_through_the_peer() {
    let mut rib = rib_with_peers(RouterKind::Server, 1);
    let e = rib.import(peer(1), announce([pv("fd00:1::/64", &["a"])])).unwrap();
    assert_eq!(e.route_updates, vec![route("fd00:1::/64", &[peer(1)])]);
    assert!(e.pushes.is_empty(), "a server never redistributes");
    assert!(e.tunnel_set.is_none());
    assert_eq!(rib.route_count(), 1);
    assert_eq!(
        rib.imported_prefixes(),
        BTreeMap::from([(
            peer(1).addr,
            BTreeSet::from([pv("fd00:1::/64", &["a"])])
        )])
    );
}

#[test]
fn ecmp_set_grows_and_shrinks_with_peers() {
    let mut rib = rib_with_peers(RouterKind::Server, 2);
    let d = "fd00:1::/64";
    rib.import(peer(1), announce([pv(d, &["x", "s1"])])).unwrap();
    let e = rib.import(peer(2), announce([pv(d, &["x", "s2"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[peer(1), peer(2)])]);
    let e = rib.import(peer(1), withdraw([pv(d, &["x", "s1"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[peer(2)])]);
    let e = rib.import(peer(2), withdraw([pv(d, &["x", "s2"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[])], "empty set deletes");
    assert_eq!(rib.route_count(), 0);
    assert_eq!(rib.interned_counts(), (0, 0), "nothing left interned");
}

#[test]
fn a_route_stays_until_its_last_path_goes() {
    let mut rib = rib_with_peers(RouterKind::Server, 1);
    let d = "fd00:1::/64";
    let e = rib
        .import(peer(1), announce([pv(d, &["x", "a"]), pv(d, &["y", "a"])]))
        .unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[peer(1)])]);
    let e = rib.import(peer(1), withdraw([pv(d, &["x", "a"])])).unwrap();
    assert!(e.is_empty(), "one path remains: {e:?}");
    assert_eq!(rib.ecmp_set(net(d)).len(), 1);
    let e = rib.import(peer(1), withdraw([pv(d, &["y", "a"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[])]);
}

/// A withdrawal of `dests`, every path sharing one storage of `path`'s
/// hostnames, as a decoded push's paths do.
fn withdraw_shared(dests: &[&str], path: &[&str]) -> OutUpdate {
    let names: Names =
        Arc::new(path.iter().map(|n| Arc::from(*n)).collect::<Box<[_]>>());
    let withdraw = dests
        .iter()
        .map(|d| OutPath::new(net(d), Arc::clone(&names), None))
        .collect();
    OutUpdate {
        underlay: Some(OutUnderlay { withdraw, ..Default::default() }),
        tunnel: None,
    }
}

#[test]
fn withdrawals_sharing_one_path_are_each_taken() {
    let [d1, d2, d3, d4] =
        ["fd00:1::/64", "fd00:2::/64", "fd00:3::/64", "fd00:4::/64"];
    let mut rib = rib_with_peers(RouterKind::Server, 2);
    rib.import(peer(1), announce([d1, d2, d3].map(|d| pv(d, &["x"])))).unwrap();
    rib.import(peer(2), announce([pv(d2, &["x"])])).unwrap();
    assert_eq!(rib.interned_counts(), (1, 1));
    // Peer 1 withdraws what it offered, and one it never did: the path is
    // looked up once, and still held by peer 2's offer.
    let e = rib.import(peer(1), withdraw_shared(&[d1, d2, d3, d4], &["x"]));
    let mut routes = e.unwrap().route_updates;
    routes.sort_by_key(|r| r.destination);
    assert_eq!(
        routes,
        vec![route(d1, &[]), route(d2, &[peer(2)]), route(d3, &[])]
    );
    assert_eq!(rib.interned_counts(), (1, 1));
    // The interner lets the path go at d2; the copy looked up before
    // matches nothing after it.
    let e = rib.import(peer(2), withdraw_shared(&[d1, d2, d3], &["x"]));
    assert_eq!(e.unwrap().route_updates, vec![route(d2, &[])]);
    assert_eq!(rib.interned_counts(), (0, 0));
    assert_eq!(rib.route_count(), 0);
    // Announced again, it is interned afresh and withdrawn alike.
    rib.import(peer(1), announce([pv(d3, &["x"])])).unwrap();
    let e = rib.import(peer(1), withdraw_shared(&[d3], &["x"]));
    assert_eq!(e.unwrap().route_updates, vec![route(d3, &[])]);
    assert_eq!(rib.interned_counts(), (0, 0));
    // Paths in a row not sharing storage are each looked up: d2's path
    // through y and z goes, its shorter one through x stays.
    rib.import(
        peer(1),
        announce([pv(d1, &["x"]), pv(d2, &["x"]), pv(d2, &["y", "z"])]),
    )
    .unwrap();
    let mut u = withdraw_shared(&[d1], &["x"]);
    let other = withdraw_shared(&[d2], &["y", "z"]).underlay.unwrap();
    u.underlay.as_mut().unwrap().withdraw.extend(other.withdraw);
    rib.import(peer(1), u).unwrap();
    assert_eq!(held_lengths(&rib, peer(1), d1), Vec::<usize>::new());
    assert_eq!(held_lengths(&rib, peer(1), d2), vec![1]);
}

#[test]
fn loops_and_empty_paths_are_dropped_and_counted() {
    let mut rib = rib_with_peers(RouterKind::Transit, 2);
    let e = rib
        .import(
            peer(1),
            announce([
                pv("fd00:1::/64", &["a", "me", "b"]),
                pv("fd00:2::/64", &[]),
            ]),
        )
        .unwrap();
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(
        rib.stats(),
        RibStats {
            loops_dropped: 1,
            invalid_dropped: 1,
            paths_over_limit: 0,
            paths_over_budget: 0,
        }
    );
    assert!(rib.imported_prefixes().is_empty());
    // Withdrawing them is harmless.
    assert!(rib
        .import(peer(1), withdraw([pv("fd00:1::/64", &["a", "me", "b"])]))
        .unwrap()
        .is_empty());
}

/// The path lengths `peer` offers to `dest`, shortest first.
fn held_lengths(rib: &Rib, p: PeerId, dest: &str) -> Vec<usize> {
    let slot = rib.peers[&p].slot;
    let mut lens: Vec<usize> = rib
        .routes
        .get(&net(dest))
        .map(|o| o.of_peer(slot).iter().map(|o| o.path.len()).collect())
        .unwrap_or_default();
    lens.sort();
    lens
}

/// A peer's held paths count against a budget of bytes: one of long
/// distinct names per path reaches it with few paths; past it, announced
/// paths are dropped and counted, an already held one is still taken, and
/// what the peer withdraws makes room again. Another peer has its own.
#[test]
fn a_peer_holds_paths_within_a_budget_of_bytes() {
    let mut rib = rib_with_peers(RouterKind::Transit, 2);
    let name = |i: usize| format!("{i:03}{}", "n".repeat(252));
    let path = |i: usize| pv(&format!("fd00:{i:x}::/64"), &["o", &name(i)]);
    let cost = path_cost(&[Arc::from("o"), Arc::from(name(0).as_str())]);
    rib.set_path_budget(10 * cost);
    let twelve: Vec<_> = (0..12).map(path).collect();
    rib.import(peer(1), announce(twelve.clone())).unwrap();
    assert_eq!(rib.peers[&peer(1)].paths, 10);
    assert_eq!(rib.peers[&peer(1)].path_bytes, 10 * cost);
    assert_eq!(rib.stats().paths_over_budget, 2);
    assert_eq!(rib.route_count(), 10);
    // Held already: taken again, nothing counted.
    rib.import(peer(1), announce([path(0)])).unwrap();
    assert_eq!(rib.stats().paths_over_budget, 2);
    // Another peer's budget is its own.
    rib.import(peer(2), announce([path(11)])).unwrap();
    assert_eq!(rib.route_count(), 11);
    // A withdrawal makes room.
    rib.import(peer(1), withdraw([path(0), path(1)])).unwrap();
    assert_eq!(rib.peers[&peer(1)].path_bytes, 8 * cost);
    rib.import(peer(1), announce(twelve)).unwrap();
    assert_eq!(rib.peers[&peer(1)].paths, 10);
    assert_eq!(rib.stats().paths_over_budget, 2 + 2);

    // At the bound of paths to one destination and at the budget, a
    // shorter path takes the longest one's place: what it lets go counts.
    let mut rib = rib_with_peers(RouterKind::Transit, 1);
    let d = "fd00:1::/64";
    let long: Vec<_> = (0..MAX_PATHS_PER_PEER)
        .map(|i| pv(d, &["o", &format!("x{i:02}"), "t"]))
        .collect();
    let names = |p: &PathVector| -> Vec<Arc<str>> {
        p.path.iter().map(|n| Arc::from(n.as_str())).collect()
    };
    rib.set_path_budget(long.iter().map(|p| path_cost(&names(p))).sum());
    rib.import(peer(1), announce(long)).unwrap();
    rib.import(peer(1), announce([pv(d, &["o", "y"])])).unwrap();
    assert_eq!(held_lengths(&rib, peer(1), d)[0], 2);
    assert_eq!(rib.stats().paths_over_budget, 0);
    assert_eq!(rib.stats().paths_over_limit, 1);
}

#[test]
fn a_peer_holds_at_most_a_bound_of_paths_per_destination_the_shortest() {
    let mut rib = rib_with_peers(RouterKind::Transit, 2);
    let d = "fd00:1::/64";
    // Detours first, each three names long: past the bound they go.
    let long: Vec<_> =
        (0..40).map(|i| pv(d, &["o", &format!("x{i}"), "t"])).collect();
    rib.import(peer(1), announce(long.clone())).unwrap();
    assert_eq!(held_lengths(&rib, peer(1), d), vec![3; MAX_PATHS_PER_PEER]);
    assert_eq!(rib.stats().paths_over_limit, 40 - MAX_PATHS_PER_PEER as u64);
    // Shorter paths take the longest ones' places, and the ECMP set and
    // what peer 2 hears follow the shortest.
    let short: Vec<_> =
        (0..20).map(|i| pv(d, &["o", &format!("y{i:02}")])).collect();
    let e = rib.import(peer(1), announce(short.clone())).unwrap();
    assert_eq!(held_lengths(&rib, peer(1), d), vec![2; MAX_PATHS_PER_PEER]);
    assert_eq!(
        rib.stats().paths_over_limit,
        40 - MAX_PATHS_PER_PEER as u64 + 20
    );
    let told = &pushes(&e)[&peer(2)];
    let told = told.underlay.as_ref().unwrap();
    assert_eq!(told.announce.len(), MAX_ADVERTISED_PATHS, "{told:?}");
    assert!(told.announce.iter().all(|p| p.path.len() == 3), "{told:?}");
    assert_eq!(rib.ecmp_set(net(d)).len(), 1);
    // Another peer has a bound of its own.
    rib.import(peer(2), announce([pv(d, &["o", "z"])])).unwrap();
    assert_eq!(held_lengths(&rib, peer(2), d), vec![2]);
    // An announced path already held is no new path: nothing is let go.
    let over = rib.stats().paths_over_limit;
    rib.import(peer(1), announce([short[0].clone()])).unwrap();
    assert_eq!(held_lengths(&rib, peer(1), d), vec![2; MAX_PATHS_PER_PEER]);
    assert_eq!(rib.stats().paths_over_limit, over);
    // Withdrawing all it announced leaves nothing of peer 1's.
    let all: Vec<_> = long.into_iter().chain(short).collect();
    rib.import(peer(1), withdraw(all)).unwrap();
    assert!(held_lengths(&rib, peer(1), d).is_empty());
    assert_eq!(rib.ecmp_set(net(d)).len(), 1);
}

#[test]
fn a_server_peer_re_announcing_is_accepted() {
    // Quartet: one server may advertise another's prefix: two paths.
    let mut rib = Rib::new("s1", RouterKind::Server);
    rib.peer_up(peer(1), RouterKind::Server);
    rib.peer_up(peer(2), RouterKind::Transit);
    rib.import(peer(1), announce([pv("fd00:3::/64", &["s3", "s2"])])).unwrap();
    let e = rib
        .import(peer(2), announce([pv("fd00:3::/64", &["s3", "t1"])]))
        .unwrap();
    assert_eq!(
        e.route_updates,
        vec![route("fd00:3::/64", &[peer(1), peer(2)])]
    );
}

#[test]
fn transit_redistributes_to_other_peers_with_hostname_appended() {
    let mut rib = rib_with_peers(RouterKind::Transit, 3);
    let e = rib.import(peer(1), announce([pv("fd00:1::/64", &["a"])])).unwrap();
    let out = announce([pv("fd00:1::/64", &["a", "me"])]);
    assert_eq!(pushes(&e), [(peer(2), out.clone()), (peer(3), out)].into());
    assert_eq!(e.route_updates, vec![route("fd00:1::/64", &[peer(1)])]);

    let e = rib.import(peer(1), withdraw([pv("fd00:1::/64", &["a"])])).unwrap();
    let out = withdraw([pv("fd00:1::/64", &["a", "me"])]);
    assert_eq!(pushes(&e), [(peer(2), out.clone()), (peer(3), out)].into());
}

#[test]
fn each_origin_of_an_anycast_prefix_hears_the_other() {
    // Peers 1 and 3 both originate fd00:1: each hears the other's path
    // (it did not offer that one), and peer 2 hears one of the two.
    let mut rib = rib_with_peers(RouterKind::Transit, 3);
    rib.import(peer(1), announce([pv("fd00:1::/64", &["s1"])])).unwrap();
    rib.import(peer(3), announce([pv("fd00:1::/64", &["s3"])])).unwrap();
    let view = |i: u16| rib.view_for(peer(i)).to_wire().underlay.unwrap();
    assert_eq!(view(1).announce, [pv("fd00:1::/64", &["s3", "me"])].into());
    assert_eq!(view(3).announce, [pv("fd00:1::/64", &["s1", "me"])].into());
    let to_2 = view(2).announce;
    assert_eq!(to_2.len(), MAX_ADVERTISED_PATHS, "{to_2:?}");
    assert!(
        to_2.iter()
            .all(|pv| pv.path == ["s1", "me"] || pv.path == ["s3", "me"]),
        "{to_2:?}"
    );
}

#[test]
fn transit_tells_a_peer_only_when_its_view_changes() {
    // Two peers offer the same path (parallel links): the third hears of it
    // once and loses it only when both stop.
    let mut rib = rib_with_peers(RouterKind::Transit, 3);
    let p = pv("fd00:1::/64", &["x"]);
    let out = pv("fd00:1::/64", &["x", "me"]);
    let e = rib.import(peer(1), announce([p.clone()])).unwrap();
    assert_eq!(
        pushes(&e).keys().copied().collect::<Vec<_>>(),
        vec![peer(2), peer(3)]
    );
    let e = rib.import(peer(2), announce([p.clone()])).unwrap();
    assert_eq!(
        pushes(&e),
        [(peer(1), announce([out.clone()]))].into(),
        "peer 1 now has a source besides itself"
    );
    let e = rib.import(peer(1), withdraw([p.clone()])).unwrap();
    assert_eq!(pushes(&e), [(peer(2), withdraw([out.clone()]))].into());
    let e = rib.peer_down(peer(2));
    assert_eq!(
        pushes(&e),
        [(peer(1), withdraw([out.clone()])), (peer(3), withdraw([out]))].into()
    );
    assert_eq!(e.route_updates, vec![route("fd00:1::/64", &[])]);
}

#[test]
fn only_shortest_paths_are_forwarded_over() {
    let mut rib = rib_with_peers(RouterKind::Server, 3);
    let d = "fd00:1::/64";
    let e = rib.import(peer(2), announce([pv(d, &["a", "x", "y"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[peer(2)])]);
    // A shorter path replaces the longer one in the ECMP set.
    let e = rib.import(peer(1), announce([pv(d, &["a", "t"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[peer(1)])]);
    // One as short joins it; a longer one from a third peer does not.
    let e = rib.import(peer(3), announce([pv(d, &["a", "u"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[peer(1), peer(3)])]);
    let e = rib.import(peer(2), announce([pv(d, &["a", "z", "y"])])).unwrap();
    assert!(e.route_updates.is_empty(), "{:?}", e.route_updates);
    // A peer offering a short and a long path is in the set once.
    let e = rib.import(peer(2), announce([pv(d, &["a", "v"])])).unwrap();
    assert_eq!(e.route_updates, vec![route(d, &[peer(1), peer(2), peer(3)])]);
    // When the shortest go, the longer ones take over.
    rib.import(peer(1), withdraw([pv(d, &["a", "t"])])).unwrap();
    rib.import(peer(3), withdraw([pv(d, &["a", "u"])])).unwrap();
    let e = rib.import(peer(2), withdraw([pv(d, &["a", "v"])])).unwrap();
    assert!(e.route_updates.is_empty(), "still peer 2, along longer paths");
    assert_eq!(rib.ecmp_set(net(d)), [peer(2).nexthop()].into());
    let e = rib.peer_down(peer(2));
    assert_eq!(e.route_updates, vec![route(d, &[])]);
}

#[test]
fn transit_re_announces_only_its_shortest_paths() {
    let mut rib = rib_with_peers(RouterKind::Transit, 3);
    let d = "fd00:1::/64";
    let long = pv(d, &["a", "x"]);
    let short = pv(d, &["a"]);
    rib.import(peer(2), announce([long.clone()])).unwrap();
    // The direct path replaces the longer one for every other peer; the
    // peer that offered the longer one now hears of the shorter one.
    let e = rib.import(peer(1), announce([short.clone()])).unwrap();
    assert_eq!(
        pushes(&e),
        [
            (peer(1), withdraw([pv(d, &["a", "x", "me"])])),
            (peer(2), announce([pv(d, &["a", "me"])])),
            (
                peer(3),
                Update {
                    underlay: Some(UnderlayUpdate {
                        announce: [pv(d, &["a", "me"])].into(),
                        withdraw: [pv(d, &["a", "x", "me"])].into(),
                    }),
                    tunnel: None,
                }
            ),
        ]
        .into()
    );
    assert_eq!(
        rib.pull_response_for(peer(3)).underlay.unwrap(),
        [pv(d, &["a", "me"])].into()
    );
    // Losing it brings the longer one back.
    let e = rib.peer_down(peer(1));
    assert_eq!(
        pushes(&e),
        [
            (peer(2), withdraw([pv(d, &["a", "me"])])),
            (
                peer(3),
                Update {
                    underlay: Some(UnderlayUpdate {
                        announce: [pv(d, &["a", "x", "me"])].into(),
                        withdraw: [pv(d, &["a", "me"])].into(),
                    }),
                    tunnel: None,
                }
            ),
        ]
        .into()
    );
}

/// A path longer than one held comes and goes without a route change or a
/// push, but is stored: it takes over when the shorter one goes.
#[test]
fn a_longer_path_changes_nothing_until_it_is_the_shortest() {
    let mut rib = rib_with_peers(RouterKind::Transit, 3);
    let d = "fd00:1::/64";
    rib.import(peer(1), announce([pv(d, &["a"])])).unwrap();
    for (p, path) in [(2, ["a", "x"]), (3, ["a", "y"])] {
        let e = rib.import(peer(p), announce([pv(d, &path)])).unwrap();
        assert!(e.is_empty(), "{e:?}");
    }
    let e = rib.import(peer(3), withdraw([pv(d, &["a", "y"])])).unwrap();
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(rib.imported_paths().count(), 2);
    let e = rib.peer_down(peer(1));
    assert_eq!(e.route_updates, vec![route(d, &[peer(2)])]);
    assert_eq!(
        pushes(&e).get(&peer(3)),
        Some(&Update {
            underlay: Some(UnderlayUpdate {
                announce: [pv(d, &["a", "x", "me"])].into(),
                withdraw: [pv(d, &["a", "me"])].into(),
            }),
            tunnel: None,
        })
    );
}

#[test]
fn transit_re_announces_at_most_a_few_paths() {
    let n = u16::try_from(MAX_ADVERTISED_PATHS).unwrap() + 3;
    let mut rib = rib_with_peers(RouterKind::Transit, n + 1);
    let d = "fd00:1::/64";
    for i in 1..=n {
        let hop = format!("t{i}");
        rib.import(peer(i), announce([pv(d, &["a", &hop])])).unwrap();
    }
    let told = rib.pull_response_for(peer(n + 1)).underlay.unwrap();
    assert_eq!(told.len(), MAX_ADVERTISED_PATHS);
    // Forwarding still uses every shortest path.
    assert_eq!(rib.ecmp_set(net(d)).len(), usize::from(n));
}

/// A fabric of pure RIBs joined by links, exchanging effects until quiet:
/// the protocol's rules at fabric scale without actors or sockets.
struct Model {
    ribs: Vec<Rib>,
    /// For each router, its neighbours: (peer id as this router sees it,
    /// neighbour index).
    links: Vec<Vec<(PeerId, usize)>>,
    /// Each router's ECMP sets as its dataplane would hold them.
    planes: Vec<BTreeMap<Ipv6Net, BTreeSet<Nexthop>>>,
}

impl Model {
    fn new(kinds: &[RouterKind], edges: &[(usize, usize)]) -> Model {
        let ribs = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| Rib::new(format!("r{i}"), *k))
            .collect();
        let mut links = vec![Vec::new(); kinds.len()];
        for (n, (a, b)) in edges.iter().enumerate() {
            let at = |i: usize| PeerId {
                ifindex: u32::try_from(n).unwrap() + 1,
                addr: Ipv6Addr::new(
                    0xfe80,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    u16::try_from(i).unwrap(),
                ),
            };
            links[*a].push((at(*b), *b));
            links[*b].push((at(*a), *a));
        }
        Model { ribs, links, planes: vec![BTreeMap::new(); kinds.len()] }
    }

    /// The neighbour of `router` reached as `peer`, and `router` as that
    /// neighbour sees it.
    fn across(&self, router: usize, peer: PeerId) -> (usize, PeerId) {
        let (_, n) =
            *self.links[router].iter().find(|(p, _)| *p == peer).unwrap();
        let back = self.links[n].iter().find(|(_, r)| *r == router).unwrap().0;
        (n, back)
    }

    /// Apply effects of `router`, delivering its pushes; until quiet.
    fn run(&mut self, mut queue: Vec<(usize, Effects)>) {
        while let Some((r, e)) = queue.pop() {
            for u in &e.route_updates {
                if u.nexthops.is_empty() {
                    self.planes[r].remove(&u.destination);
                } else {
                    self.planes[r].insert(
                        u.destination,
                        u.nexthops.iter().copied().collect(),
                    );
                }
            }
            for (to, update) in e.pushes {
                let (n, from) = self.across(r, to);
                let e = self.ribs[n].import(from, update.to_wire()).unwrap();
                queue.insert(0, (n, e));
            }
        }
    }

    fn start(&mut self) {
        for r in 0..self.ribs.len() {
            for (p, n) in self.links[r].clone() {
                let kind = self.ribs[n].kind();
                self.ribs[r].peer_up(p, kind);
            }
        }
        let mut queue = Vec::new();
        for r in 0..self.ribs.len() {
            for (p, n) in self.links[r].clone() {
                let back = self.across(r, p).1;
                let answer = self.ribs[n].pull_response_for(back);
                queue.push((r, self.ribs[r].import_pull(p, answer).unwrap()));
            }
        }
        self.run(queue);
    }

    fn originate(&mut self, r: usize, prefix: Ipv6Net) {
        let e = self.ribs[r].originate([prefix]);
        self.run(vec![(r, e)]);
    }

    /// Hop counts from every router to `origin`.
    fn distances(&self, origin: usize) -> Vec<Option<usize>> {
        let mut dist = vec![None; self.ribs.len()];
        dist[origin] = Some(0);
        let mut frontier = std::collections::VecDeque::from([origin]);
        while let Some(r) = frontier.pop_front() {
            for (_, n) in &self.links[r] {
                // Servers do not carry traffic for others.
                if dist[*n].is_none() {
                    dist[*n] = Some(dist[r].unwrap() + 1);
                    if self.ribs[*n].kind() == RouterKind::Transit {
                        frontier.push_back(*n);
                    }
                }
            }
        }
        dist
    }

    /// Every router's nexthops towards `origin`'s prefix lead one hop
    /// closer to it: no loop, no detour, no black hole.
    fn check_forwarding(&self, origin: usize, prefix: Ipv6Net) {
        let dist = self.distances(origin);
        for r in 0..self.ribs.len() {
            if r == origin {
                continue;
            }
            let set = self.planes[r].get(&prefix).cloned().unwrap_or_default();
            let Some(d) = dist[r] else {
                assert!(set.is_empty(), "r{r} routes to unreachable r{origin}");
                continue;
            };
            assert!(!set.is_empty(), "r{r} has no route to r{origin}");
            for nh in set {
                let peer = PeerId { ifindex: nh.ifindex, addr: nh.addr };
                let (n, _) = self.across(r, peer);
                assert_eq!(
                    dist[n].map(|x| x + 1),
                    Some(d),
                    "r{r} forwards to r{origin} over r{n}, not one hop closer"
                );
            }
        }
    }
}

/// Two racks (servers wired to both rack transits) joined by two spines:
/// every router forwards only along shortest paths, and a server holds at
/// most 2 × MAX_ADVERTISED_PATHS paths per destination.
#[test]
fn a_fabric_of_racks_forwards_along_shortest_paths_only() {
    let (racks, servers, spines) = (2, 3, 2);
    let mut kinds = Vec::new();
    let mut edges = Vec::new();
    let spine0 = racks * (servers + 2);
    for r in 0..racks {
        let base = r * (servers + 2);
        let (ta, tb) = (base + servers, base + servers + 1);
        for s in 0..servers {
            kinds.push(RouterKind::Server);
            edges.push((base + s, ta));
            edges.push((base + s, tb));
        }
        kinds.extend([RouterKind::Transit, RouterKind::Transit]);
        for sp in 0..spines {
            edges.push((ta, spine0 + sp));
            edges.push((tb, spine0 + sp));
        }
    }
    kinds.extend(vec![RouterKind::Transit; spines]);
    let mut m = Model::new(&kinds, &edges);
    m.start();
    let mut prefixes = Vec::new();
    for r in 0..racks {
        for s in 0..servers {
            let origin = r * (servers + 2) + s;
            let prefix = Ipv6Net::new(
                Ipv6Addr::new(
                    0xfd00,
                    u16::try_from(origin).unwrap(),
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ),
                64,
            )
            .unwrap();
            m.originate(origin, prefix);
            prefixes.push((origin, prefix));
        }
    }
    for (origin, prefix) in &prefixes {
        m.check_forwarding(*origin, *prefix);
    }
    for (r, rib) in m.ribs.iter().enumerate() {
        let mut per_dest: BTreeMap<Ipv6Net, usize> = BTreeMap::new();
        for pv in rib.imported_prefixes().values().flatten() {
            *per_dest.entry(pv.destination).or_default() += 1;
        }
        let max = per_dest.values().copied().max().unwrap_or(0);
        if rib.kind() == RouterKind::Server {
            assert!(max <= 2 * MAX_ADVERTISED_PATHS, "r{r} holds {max} paths");
        }
    }
    // A spine dies: the fabric reroutes through the other one.
    let spine = spine0;
    let gone: Vec<(PeerId, usize)> = m.links[spine].clone();
    let mut queue = Vec::new();
    for (_, n) in gone {
        let back = m.links[n].iter().find(|(_, r)| *r == spine).unwrap().0;
        queue.push((n, m.ribs[n].peer_down(back)));
        m.links[n].retain(|(_, r)| *r != spine);
    }
    m.links[spine].clear();
    m.planes[spine].clear();
    m.run(queue);
    for (origin, prefix) in &prefixes {
        m.check_forwarding(*origin, *prefix);
    }
}

#[test]
fn server_does_not_redistribute() {
    let mut rib = rib_with_peers(RouterKind::Server, 3);
    let e = rib.import(peer(1), announce([pv("fd00:1::/64", &["a"])])).unwrap();
    assert!(e.pushes.is_empty());
    let e = rib
        .import(peer(1), tunnels(&[tunnel("10.0.0.0/8", 1, 0)], &[]))
        .unwrap();
    assert!(e.pushes.is_empty());
    let e = rib.peer_down(peer(1));
    assert!(e.pushes.is_empty());
    assert_eq!(e.route_updates, vec![route("fd00:1::/64", &[])]);
    assert_eq!(e.tunnel_set, Some(BTreeSet::new()));
}

#[test]
fn peer_down_removes_everything_learned_from_it() {
    let mut rib = rib_with_peers(RouterKind::Transit, 3);
    rib.import(
        peer(1),
        announce([pv("fd00:1::/64", &["a"]), pv("fd00:2::/64", &["a"])]),
    )
    .unwrap();
    // A longer path: peer 1's is the one announced until it goes.
    rib.import(peer(2), announce([pv("fd00:2::/64", &["b", "c"])])).unwrap();
    rib.import(peer(1), tunnels(&[tunnel("10.0.0.0/8", 1, 0)], &[])).unwrap();
    let e = rib.peer_down(peer(1));
    assert_eq!(
        e.route_updates,
        vec![route("fd00:1::/64", &[]), route("fd00:2::/64", &[peer(2)])]
    );
    assert_eq!(e.tunnel_set, Some(BTreeSet::new()));
    let out = Update {
        underlay: Some(UnderlayUpdate {
            announce: BTreeSet::new(),
            withdraw: [
                pv("fd00:1::/64", &["a", "me"]),
                pv("fd00:2::/64", &["a", "me"]),
            ]
            .into(),
        }),
        tunnel: Some(TunnelUpdate {
            announce: BTreeSet::new(),
            withdraw: [tunnel("10.0.0.0/8", 1, 0)].into(),
        }),
    };
    let mut to_3 = out.clone();
    to_3.underlay_mut().announce.insert(pv("fd00:2::/64", &["b", "c", "me"]));
    assert_eq!(pushes(&e), [(peer(2), out), (peer(3), to_3)].into());
    assert!(rib.peer_down(peer(1)).is_empty(), "second down is a no-op");
    assert_eq!(
        rib.import(peer(1), announce([])),
        Err(RibError::UnknownPeer(peer(1)))
    );
    assert!(rib.imported_tunnels().is_empty());
}

#[test]
fn pull_response_on_server_and_transit() {
    for kind in [RouterKind::Server, RouterKind::Transit] {
        let mut rib = rib_with_peers(kind, 2);
        rib.originate([net("fd00:9::/64")]);
        rib.originate_tunnels([tunnel("10.9.0.0/16", 9, 0)]);
        rib.import(peer(1), announce([pv("fd00:1::/64", &["a"])])).unwrap();
        rib.import(peer(1), tunnels(&[tunnel("10.1.0.0/16", 1, 0)], &[]))
            .unwrap();
        rib.import(peer(2), announce([pv("fd00:2::/64", &["b"])])).unwrap();

        let to_peer1 = rib.pull_response_for(peer(1));
        let to_peer3 = rib.pull_response_for(peer(3));
        let own = pv("fd00:9::/64", &["me"]);
        match kind {
            RouterKind::Server => {
                assert_eq!(to_peer1.underlay, Some([own.clone()].into()));
                assert_eq!(
                    to_peer1.tunnel,
                    Some([tunnel("10.9.0.0/16", 9, 0)].into())
                );
                assert_eq!(to_peer3, to_peer1);
            }
            RouterKind::Transit => {
                assert_eq!(
                    to_peer1.underlay,
                    Some([own.clone(), pv("fd00:2::/64", &["b", "me"])].into())
                );
                assert_eq!(
                    to_peer1.tunnel,
                    Some([tunnel("10.9.0.0/16", 9, 0)].into())
                );
                assert_eq!(
                    to_peer3.underlay,
                    Some(
                        [
                            own,
                            pv("fd00:1::/64", &["a", "me"]),
                            pv("fd00:2::/64", &["b", "me"])
                        ]
                        .into()
                    )
                );
                assert_eq!(
                    to_peer3.tunnel,
                    Some(
                        [
                            tunnel("10.9.0.0/16", 9, 0),
                            tunnel("10.1.0.0/16", 1, 0)
                        ]
                        .into()
                    )
                );
            }
        }
    }
}

#[test]
fn tunnel_routes_with_positive_metric_win() {
    let mut rib = rib_with_peers(RouterKind::Server, 3);
    let zero = tunnel("10.0.0.0/8", 1, 0);
    let high = tunnel("10.0.0.0/8", 2, 5);
    let other = tunnel("fd10::/48", 3, 0);
    let entry = |t: TunnelOrigin, p: u16| TunnelEntry {
        origin: t,
        nexthop: peer(p).addr,
    };

    let e = rib.import(peer(1), tunnels(&[zero, other], &[])).unwrap();
    assert_eq!(e.tunnel_set, Some([entry(zero, 1), entry(other, 1)].into()));
    let e = rib.import(peer(2), tunnels(&[high], &[])).unwrap();
    assert_eq!(e.tunnel_set, Some([entry(high, 2), entry(other, 1)].into()));
    // Another metric-0 route changes nothing effective.
    let e = rib.import(peer(3), tunnels(&[zero], &[])).unwrap();
    assert_eq!(e.tunnel_set, None);
    assert_eq!(rib.imported_tunnels().len(), 4);
    // The positive one goes: both metric-0 routes are used.
    let e = rib.import(peer(2), tunnels(&[], &[high])).unwrap();
    assert_eq!(
        e.tunnel_set,
        Some([entry(zero, 1), entry(zero, 3), entry(other, 1)].into())
    );
    assert_eq!(
        rib.tunnel_set(),
        &[entry(zero, 1), entry(zero, 3), entry(other, 1)].into()
    );
    assert!(rib.import(peer(2), tunnels(&[], &[high])).unwrap().is_empty());
}

#[test]
fn tunnel_origination_on_transit_respects_other_sources() {
    let mut rib = rib_with_peers(RouterKind::Transit, 3);
    let t = tunnel("10.0.0.0/8", 1, 0);
    rib.import(peer(1), tunnels(&[t], &[])).unwrap();
    // Peers 2 and 3 already hear of t through peer 1; only peer 1 learns.
    let e = rib.originate_tunnels([t]);
    assert_eq!(pushes(&e), [(peer(1), tunnels(&[t], &[]))].into());
    // Peer 1 withdraws: we still originate it, so nobody is told.
    let e = rib.import(peer(1), tunnels(&[], &[t])).unwrap();
    assert!(e.pushes.is_empty());
    let e = rib.withdraw_tunnels([t]);
    assert_eq!(pushes(&e).len(), 3);
    assert!(rib.withdraw_tunnels([t]).is_empty());
}

#[test]
fn duplicates_are_idempotent() {
    for kind in [RouterKind::Server, RouterKind::Transit] {
        let mut rib = rib_with_peers(kind, 2);
        let mut u = announce([pv("fd00:1::/64", &["a"])]);
        u.tunnel = Some(TunnelUpdate {
            announce: [tunnel("10.0.0.0/8", 1, 0)].into(),
            withdraw: BTreeSet::new(),
        });
        assert!(!rib.import(peer(1), u.clone()).unwrap().is_empty());
        assert!(rib.import(peer(1), u).unwrap().is_empty());
        rib.peer_up(peer(1), RouterKind::Transit);
        assert_eq!(rib.route_count(), 1, "peer_up again keeps state");
    }
}

#[test]
fn host_bits_are_cleared_on_import() {
    let mut rib = rib_with_peers(RouterKind::Server, 1);
    let e =
        rib.import(peer(1), announce([pv("fd00:1::5/64", &["a"])])).unwrap();
    assert_eq!(e.route_updates, vec![route("fd00:1::/64", &[peer(1)])]);
    let e =
        rib.import(peer(1), withdraw([pv("fd00:1::9/64", &["a"])])).unwrap();
    assert_eq!(e.route_updates, vec![route("fd00:1::/64", &[])]);
}

#[test]
fn a_pull_replaces_what_the_peer_offered() {
    let mut rib = rib_with_peers(RouterKind::Server, 1);
    rib.import(
        peer(1),
        announce([pv("fd00:1::/64", &["a"]), pv("fd00:2::/64", &["a"])]),
    )
    .unwrap();
    let resp = PullResponse {
        underlay: Some(
            [pv("fd00:2::/64", &["a"]), pv("fd00:3::/64", &["a"])].into(),
        ),
        tunnel: None,
    };
    let e = rib.import_pull(peer(1), resp).unwrap();
    assert_eq!(
        e.route_updates,
        vec![route("fd00:1::/64", &[]), route("fd00:3::/64", &[peer(1)])]
    );
    assert_eq!(
        rib.import_pull(peer(9), PullResponse::default()),
        Err(RibError::UnknownPeer(peer(9)))
    );
}

#[test]
fn a_hundred_thousand_prefixes() {
    let mut rib = rib_with_peers(RouterKind::Server, 1);
    let pvs: Vec<PathVector> = (0..100_000u32)
        .map(|i| PathVector {
            destination: Ipv6Net::new(
                Ipv6Addr::new(
                    0xfd00,
                    (i >> 16) as u16,
                    i as u16,
                    0,
                    0,
                    0,
                    0,
                    0,
                ),
                64,
            )
            .unwrap(),
            path: vec!["a".to_string(), "t".to_string()],
        })
        .collect();
    let e = rib.import(peer(1), announce(pvs.iter().cloned())).unwrap();
    assert_eq!(e.route_updates.len(), 100_000);
    assert!(e.route_updates.iter().all(|r| r.nexthops.len() == 1));
    assert_eq!(rib.interned_counts(), (1, 2), "one shared path, two names");
    let e = rib.import(peer(1), withdraw(pvs)).unwrap();
    assert_eq!(e.route_updates.len(), 100_000);
    assert!(e.route_updates.iter().all(|r| r.nexthops.is_empty()));
    assert_eq!(rib.route_count(), 0);
    assert_eq!(rib.interned_counts(), (0, 0));
}

// ---- model check: random operation sequences ----

#[derive(Debug, Clone)]
enum Op {
    Up(u16),
    Down(u16),
    Originate(u8),
    WithdrawOriginated(u8),
    OriginateTunnel(u8),
    WithdrawTunnel(u8),
    Import(u16, Vec<(bool, u8, u8)>, Vec<(bool, u8)>),
}

const HOSTS: [&str; 4] = ["a", "b", "me", "c"];

fn op_pv(dest: u8, path: u8) -> PathVector {
    let d = Ipv6Net::new(
        Ipv6Addr::new(0xfd00, u16::from(dest % 4), 0, 0, 0, 0, 0, 0),
        64,
    )
    .unwrap();
    let names: Vec<String> = (0..(path % 3) + 1)
        .map(|i| HOSTS[usize::from((path / 3 + i) % 4)].to_string())
        .collect();
    PathVector { destination: d, path: names }
}

fn op_tunnel(t: u8) -> TunnelOrigin {
    tunnel(
        if t.is_multiple_of(2) { "10.0.0.0/8" } else { "10.1.0.0/16" },
        u16::from(t % 3),
        u64::from(t / 3 % 2),
    )
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u16..5).prop_map(Op::Up),
        (1u16..5).prop_map(Op::Down),
        any::<u8>().prop_map(Op::Originate),
        any::<u8>().prop_map(Op::WithdrawOriginated),
        any::<u8>().prop_map(Op::OriginateTunnel),
        any::<u8>().prop_map(Op::WithdrawTunnel),
        (
            1u16..5,
            prop::collection::vec(
                (any::<bool>(), any::<u8>(), any::<u8>()),
                0..5
            ),
            prop::collection::vec((any::<bool>(), any::<u8>()), 0..3),
        )
            .prop_map(|(p, u, t)| Op::Import(p, u, t)),
    ]
}

/// What a peer has been told: what it would get from a fresh pull.
type Told = (BTreeSet<PathVector>, BTreeSet<TunnelOrigin>);

fn apply_pushes(told: &mut BTreeMap<PeerId, Told>, e: &Effects) {
    for (to, u) in &e.pushes {
        let u = &u.to_wire();
        let t = told.get_mut(to).expect("pushes go only to peers that are up");
        if let Some(u) = &u.underlay {
            t.0.retain(|x| !u.withdraw.contains(x));
            t.0.extend(u.announce.iter().cloned());
        }
        if let Some(u) = &u.tunnel {
            t.1.retain(|x| !u.withdraw.contains(x));
            t.1.extend(u.announce.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever happens, the routes announced through effects equal the
    /// RIB's ECMP sets, and every peer's accumulated pushes equal what a
    /// fresh pull would give it.
    #[test]
    fn effects_keep_peers_and_dataplane_in_sync(
        transit in any::<bool>(),
        ops in prop::collection::vec(arb_op(), 1..40),
    ) {
        let kind = if transit { RouterKind::Transit } else { RouterKind::Server };
        let mut rib = Rib::new("me", kind);
        let mut dataplane: BTreeMap<Ipv6Net, BTreeSet<Nexthop>> = BTreeMap::new();
        let mut tunnel_plane: BTreeSet<TunnelEntry> = BTreeSet::new();
        let mut told: BTreeMap<PeerId, Told> = BTreeMap::new();
        for op in ops {
            let e = match op {
                Op::Up(p) => {
                    rib.peer_up(peer(p), RouterKind::Server);
                    let r = rib.pull_response_for(peer(p));
                    told.entry(peer(p)).or_insert((r.underlay.unwrap_or_default(), r.tunnel.unwrap_or_default()));
                    Effects::default()
                }
                Op::Down(p) => {
                    told.remove(&peer(p));
                    rib.peer_down(peer(p))
                }
                Op::Originate(d) => rib.originate([op_pv(d, 0).destination]),
                Op::WithdrawOriginated(d) => rib.withdraw_originated([op_pv(d, 0).destination]),
                Op::OriginateTunnel(t) => rib.originate_tunnels([op_tunnel(t)]),
                Op::WithdrawTunnel(t) => rib.withdraw_tunnels([op_tunnel(t)]),
                Op::Import(p, u, t) => {
                    let mut upd = Update::default();
                    for (ann, d, path) in u {
                        let x = op_pv(d, path);
                        if ann { upd.underlay_mut().announce.insert(x); } else { upd.underlay_mut().withdraw.insert(x); }
                    }
                    for (ann, t) in t {
                        let x = op_tunnel(t);
                        if ann { upd.tunnel_mut().announce.insert(x); } else { upd.tunnel_mut().withdraw.insert(x); }
                    }
                    match rib.import(peer(p), upd) {
                        Ok(e) => e,
                        Err(RibError::UnknownPeer(q)) => {
                            prop_assert!(!told.contains_key(&q));
                            Effects::default()
                        }
                    }
                }
            };
            for r in &e.route_updates {
                if r.nexthops.is_empty() { dataplane.remove(&r.destination); } else { dataplane.insert(r.destination, r.nexthops.iter().copied().collect()); }
            }
            if let Some(ts) = &e.tunnel_set {
                tunnel_plane = ts.clone();
            }
            apply_pushes(&mut told, &e);
            if !transit {
                for (_, u) in &e.pushes {
                    let u = &u.to_wire();
                    // A server only ever speaks of its own prefixes.
                    for x in u.underlay.iter().flat_map(|u| u.announce.iter().chain(u.withdraw.iter())) {
                        prop_assert_eq!(&x.path, &vec!["me".to_string()]);
                    }
                }
            }

            // The dataplane as effects built it equals the RIB's view.
            let expected: BTreeMap<Ipv6Net, BTreeSet<Nexthop>> = (0..4u8)
                .map(|d| op_pv(d, 0).destination)
                .map(|d| (d, rib.ecmp_set(d)))
                .filter(|(_, s)| !s.is_empty())
                .collect();
            prop_assert_eq!(&dataplane, &expected);
            prop_assert_eq!(&tunnel_plane, rib.tunnel_set());
            // Routes are exactly the nexthops of peers holding a shortest
            // path.
            let imported = rib.imported_prefixes();
            for (d, set) in &expected {
                let shortest = imported.values().flatten().filter(|x| x.destination == *d).map(|x| x.path.len()).min();
                for (addr, paths) in &imported {
                    let has_shortest = paths.iter().any(|x| x.destination == *d && Some(x.path.len()) == shortest);
                    prop_assert_eq!(set.iter().any(|nh| nh.addr == *addr), has_shortest, "{} via {}", d, addr);
                }
            }
            for (id, t) in &told {
                let r = rib.pull_response_for(*id);
                prop_assert_eq!(&t.0, &r.underlay.unwrap_or_default(), "underlay told to {}", id);
                prop_assert_eq!(&t.1, &r.tunnel.unwrap_or_default(), "tunnels told to {}", id);
            }
            for x in rib.imported_prefixes().values().flatten() {
                prop_assert!(!x.path.iter().any(|h| h == "me"), "loop stored: {:?}", x);
            }
        }
    }
}

#[test]
fn per_peer_holdings_count_distinct_destinations() {
    let mut rib = rib_with_peers(RouterKind::Transit, 2);
    let (a, b) = (peer(1), peer(2));
    // Two paths to one destination and one to another: two destinations.
    rib.import(
        a,
        announce([
            pv("fd00:1::/64", &["x"]),
            pv("fd00:1::/64", &["y", "z"]),
            pv("fd00:2::/64", &["x"]),
        ]),
    )
    .unwrap();
    rib.import(b, announce([pv("fd00:1::/64", &["w"])])).unwrap();
    assert_eq!(rib.peer_destination_count(a), 2);
    assert_eq!(rib.peer_destination_count(b), 1);
    assert!(rib.peer_offers(a, net("fd00:1::/64")));
    assert!(rib.peer_offers(a, net("fd00:2::5/64")), "host bits ignored");
    assert!(!rib.peer_offers(b, net("fd00:2::/64")));
    // Withdrawing one of two paths keeps the destination; the last goes.
    rib.import(a, withdraw([pv("fd00:1::/64", &["x"])])).unwrap();
    assert_eq!(rib.peer_destination_count(a), 2);
    rib.import(a, withdraw([pv("fd00:1::/64", &["y", "z"])])).unwrap();
    assert_eq!(rib.peer_destination_count(a), 1);
    assert!(!rib.peer_offers(a, net("fd00:1::/64")));
    // A pull replaces the set; a peer going down holds nothing.
    rib.import_pull(
        a,
        PullResponse {
            underlay: Some(
                [pv("fd00:3::/64", &["x"]), pv("fd00:4::/64", &["x"])].into(),
            ),
            tunnel: Some([tunnel("10.0.0.0/8", 1, 0)].into()),
        },
    )
    .unwrap();
    assert_eq!(rib.peer_destination_count(a), 2);
    assert_eq!(rib.peer_tunnel_count(a), 1);
    assert!(rib.peer_offers_tunnel(a, &tunnel("10.0.0.5/8", 1, 0)));
    assert!(!rib.peer_offers_tunnel(b, &tunnel("10.0.0.0/8", 1, 0)));
    rib.peer_down(a);
    assert_eq!(rib.peer_destination_count(a), 0);
    assert_eq!(rib.peer_tunnel_count(a), 0);
    assert!(!rib.peer_offers(a, net("fd00:3::/64")));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Whatever peers announce and withdraw, each peer's destination count
    /// is the number of distinct destinations it offers.
    #[test]
    fn per_peer_destination_counts_stay_exact(
        ops in prop::collection::vec(arb_op(), 1..40),
    ) {
        let mut rib = Rib::new("me", RouterKind::Transit);
        for op in ops {
            match op {
                Op::Up(p) => rib.peer_up(peer(p), RouterKind::Server),
                Op::Down(p) => {
                    rib.peer_down(peer(p));
                }
                Op::Import(p, u, _) => {
                    let mut upd = Update::default();
                    for (ann, d, path) in u {
                        let x = op_pv(d, path);
                        let half = upd.underlay_mut();
                        if ann { half.announce.insert(x); } else { half.withdraw.insert(x); }
                    }
                    let _ = rib.import(peer(p), upd);
                }
                _ => {}
            }
            let imported = rib.imported_prefixes();
            for p in 1u16..5 {
                let dests: BTreeSet<Ipv6Net> = imported
                    .get(&peer(p).addr)
                    .into_iter()
                    .flatten()
                    .map(|x| x.destination)
                    .collect();
                prop_assert_eq!(rib.peer_destination_count(peer(p)), dests.len());
                for d in 0..4u8 {
                    let d = op_pv(d, 0).destination;
                    prop_assert_eq!(rib.peer_offers(peer(p), d), dests.contains(&d));
                }
            }
        }
    }
}

/// Both ways of adding to a set give the union: a few one by one, many
/// merged into packed nodes.
#[test]
fn extend_packed_is_the_union() {
    for (have, more) in [(1000u32, 3u32), (10, 500), (0, 7), (5, 0)] {
        let mut set: BTreeSet<u32> = (0..have).map(|i| i * 2).collect();
        let add: BTreeSet<u32> = (0..more).map(|i| i * 3).collect();
        let want: BTreeSet<u32> = set.union(&add).copied().collect();
        extend_packed(&mut set, add);
        assert_eq!(set, want, "{have} + {more}");
    }
}

#[test]
fn packed_holds_exactly_its_items() {
    for n in [0u32, 1, 1023, 1024, 1025, 1281, 6000] {
        let want: BTreeSet<u32> = (0..n).map(|i| i * 3).collect();
        assert_eq!(packed(want.iter().copied()), want, "{n} in order");
        // Out of order and repeated: still the set, only less packed.
        let mixed = (0..n).rev().chain(0..n / 2).map(|i| i * 3);
        assert_eq!(packed(mixed), want, "{n} out of order");
    }
}

proptest! {
    /// A whole set announced or withdrawn at once leaves a peer's pending
    /// update exactly as the same paths one by one would, whatever the
    /// update held before (announced, withdrawn, held).
    #[test]
    fn paths_at_once_are_paths_one_by_one(
        before in proptest::collection::vec((0u8..24, 0u8..3), 0..24),
        paths in proptest::collection::btree_set(0u8..24, 0..24),
        announce in any::<bool>(),
    ) {
        let names: Names = Arc::new(vec![Arc::from("a")].into_boxed_slice());
        let path = |i: u8| {
            let d = Ipv6Net::new(Ipv6Addr::new(0xfd00, u16::from(i), 0, 0, 0, 0, 0, 0), 64)
                .unwrap();
            OutPath::new(d, names.clone(), None)
        };
        let mut start = OutUnderlay::default();
        for (i, op) in before {
            match op {
                0 => start.announce_path(path(i), false),
                1 => start.announce_path(path(i), true),
                _ => start.withdraw_path(path(i)),
            }
        }
        let mut one_by_one = start.clone();
        for i in &paths {
            if announce {
                one_by_one.announce_path(path(*i), false);
            } else {
                one_by_one.withdraw_path(path(*i));
            }
        }
        let to = peer(1);
        let mut pending = Pending::default();
        *pending.pushes.entry(to).or_default().underlay_mut() = start;
        let set: BTreeSet<OutPath> = paths.iter().map(|i| path(*i)).collect();
        if announce {
            pending.announce_paths(to, set);
        } else {
            pending.withdraw_paths(to, set);
        }
        let got = pending.pushes[&to].underlay.clone().unwrap();
        prop_assert_eq!(&got.announce, &one_by_one.announce);
        prop_assert_eq!(&got.withdraw, &one_by_one.withdraw);
        prop_assert_eq!(&got.held, &one_by_one.held);
    }
}

proptest! {
    /// The walk and the lookups keep the same members, whichever is used.
    #[test]
    fn retain_present_is_membership(
        want in proptest::collection::btree_set(0u16..300, 0..120),
        have in proptest::collection::btree_set(0u16..300, 0..300),
    ) {
        for present in [true, false] {
            let mut kept = want.clone();
            retain_present(&mut kept, &have, present);
            let naive: BTreeSet<u16> = want
                .iter()
                .filter(|x| have.contains(x) == present)
                .copied()
                .collect();
            prop_assert_eq!(kept, naive);
        }
    }
}
