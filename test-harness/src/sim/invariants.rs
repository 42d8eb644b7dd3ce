//! Invariants of a converged fabric, checked over a [`Snapshot`].
//!
//! Pure functions of the topology and a snapshot: what each live router
//! originates, the routes its dataplane holds (destination → nexthops, as
//! the memory dataplane keeps them), the paths it holds with their path
//! vectors, and which routers and links are dead. [`check`] returns the
//! first violation as a sentence naming routers, links and prefixes.
//!
//! The checks, in the order they run:
//!
//! 1. no path vector is empty or holds a router twice;
//! 2. nothing of a dead router or link remains: no path names a dead
//!    router, no nexthop leaves over a dead link, every nexthop is the far
//!    end of one of the router's links;
//! 3. every server holds a route to every prefix originated by a live
//!    router it can reach, and no router holds a route or a path to a
//!    prefix that is withdrawn or unreachable;
//! 4. per destination, following installed nexthops from any router that
//!    holds a route reaches the originator: no loop, no black hole;
//! 5. every installed path is a shortest one: each installed nexthop is one
//!    hop closer to the originator (BFS over live links), and the shortest
//!    path held through it is as long as the router's distance;
//! 6. a server holding a route installs every shortest nexthop (every live
//!    transit one hop closer), so that a mended link or a restarted transit
//!    counts as converged only once it carries traffic again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use ddm_dataplane::Nexthop;
pub use ddm_proto::outgoing::Names;
use oxnet::Ipv6Net;

use super::topology::{RouterKind, Topology};

/// A path a router holds: learned from the peer at `via`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldPath {
    /// The destination.
    pub destination: Ipv6Net,
    /// The peer it was learned from (its address and our interface).
    pub via: Nexthop,
    /// The path vector, originator first (the router's own shared names).
    pub path: Names,
}

/// What one live router holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterView {
    /// The prefixes it originates.
    pub originated: BTreeSet<Ipv6Net>,
    /// Its installed routes.
    pub routes: BTreeMap<Ipv6Net, BTreeSet<Nexthop>>,
    /// The paths it holds, in no particular order.
    pub paths: Vec<HeldPath>,
}

/// The fabric at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per router (as in [`Topology::routers`]): what it holds, or `None`
    /// when it is dead.
    pub routers: Vec<Option<RouterView>>,
    /// Indexes of dead links.
    pub dead_links: BTreeSet<usize>,
}

impl Snapshot {
    /// The dead routers' indexes.
    pub fn dead_routers(&self) -> BTreeSet<usize> {
        (0..self.routers.len()).filter(|&i| self.routers[i].is_none()).collect()
    }
}

/// Check every invariant; the first violation, as a message, if any.
pub fn check(topo: &Topology, snap: &Snapshot) -> Result<(), String> {
    if snap.routers.len() != topo.routers.len() {
        return Err(format!(
            "snapshot has {} routers, topology {}",
            snap.routers.len(),
            topo.routers.len()
        ));
    }
    let dead = snap.dead_routers();
    let names: HashMap<&str, usize> = topo
        .routers
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    // Per router: ifindex → (link, far end router, far end address).
    let adj = topo.adjacency();
    let ifs: Vec<HashMap<u32, (usize, usize, std::net::Ipv6Addr)>> = adj
        .iter()
        .map(|links| {
            links
                .iter()
                .map(|(l, near, far)| {
                    (near.ifindex, (*l, far.router, far.addr))
                })
                .collect()
        })
        .collect();
    let live = || {
        snap.routers
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
    };
    let name = |i: usize| topo.routers[i].name.as_str();

    // 1. Path vectors.
    for (r, view) in live() {
        for p in &view.paths {
            if p.path.is_empty() {
                return Err(format!(
                    "{} holds an empty path to {} via {}",
                    name(r),
                    p.destination,
                    show_nh(&p.via)
                ));
            }
            // Paths are a few names long: comparing each with those
            // before it beats a set.
            for (k, h) in p.path.iter().enumerate() {
                if p.path[..k].contains(h) {
                    return Err(format!(
                        "{} holds a path to {} naming {h} twice: {}",
                        name(r),
                        p.destination,
                        p.path.join(" → ")
                    ));
                }
            }
        }
    }

    // 2. Nothing dead remains; every nexthop is a neighbour.
    let neighbour = |r: usize, nh: &Nexthop| -> Result<usize, String> {
        let Some(&(link, far, addr)) = ifs[r].get(&nh.ifindex) else {
            return Err(format!(
                "{} has nexthop {} on an interface it does not have",
                name(r),
                show_nh(nh)
            ));
        };
        if addr != nh.addr {
            return Err(format!(
                "{} has nexthop {}, but the far end of link {link} is {addr}",
                name(r),
                show_nh(nh)
            ));
        }
        if snap.dead_links.contains(&link) {
            return Err(format!(
                "{} still uses dead link {link} (to {}) via {}",
                name(r),
                name(far),
                show_nh(nh)
            ));
        }
        if dead.contains(&far) {
            return Err(format!(
                "{} still uses dead router {} via {}",
                name(r),
                name(far),
                show_nh(nh)
            ));
        }
        Ok(far)
    };
    for (r, view) in live() {
        for p in &view.paths {
            if let Some(h) = p
                .path
                .iter()
                .find(|h| names.get(&***h).is_some_and(|i| dead.contains(i)))
            {
                return Err(format!(
                    "{} holds a path to {} through dead router {h}: {}",
                    name(r),
                    p.destination,
                    p.path.join(" → ")
                ));
            }
            neighbour(r, &p.via)?;
        }
        for (d, nhs) in &view.routes {
            for nh in nhs {
                neighbour(r, nh).map_err(|e| format!("{e} (route to {d})"))?;
            }
        }
    }

    // 3. Reachability. Each prefix's live originator.
    let mut origin: BTreeMap<Ipv6Net, usize> = BTreeMap::new();
    for (r, view) in live() {
        for p in &view.originated {
            if let Some(other) = origin.insert(*p, r) {
                return Err(format!(
                    "{p} is originated by both {} and {}",
                    name(other),
                    name(r)
                ));
            }
        }
    }
    let dist: Vec<Vec<Option<usize>>> = (0..topo.routers.len())
        .map(|r| topo.distances(r, &dead, &snap.dead_links))
        .collect();
    for (r, view) in live() {
        let reachable = |d: &Ipv6Net| {
            origin.get(d).is_some_and(|&o| o != r && dist[r][o].is_some())
        };
        if topo.routers[r].kind == RouterKind::Server {
            if let Some((d, o)) = origin
                .iter()
                .find(|(d, _)| reachable(d) && !view.routes.contains_key(d))
            {
                return Err(format!(
                    "{} has no route to {d} of {}, reachable in {} hops",
                    name(r),
                    name(*o),
                    dist[r][*o].unwrap_or(0)
                ));
            }
        }
        for d in view.routes.keys() {
            if !reachable(d) && !view.originated.contains(d) {
                return Err(format!(
                    "{} holds a route to {d}, which is {}",
                    name(r),
                    why_not(&origin, &dist[r], d, &name)
                ));
            }
        }
        for p in &view.paths {
            let d = &p.destination;
            if !reachable(d) && !view.originated.contains(d) {
                return Err(format!(
                    "{} holds a path to {d} ({}), which is {}",
                    name(r),
                    p.path.join(" → "),
                    why_not(&origin, &dist[r], d, &name)
                ));
            }
        }
    }

    // 4. No loop, no black hole; 5. shortest paths.
    // Per router: the shortest path held per (destination, peer).
    let shortest_held: Vec<HashMap<(Ipv6Net, Nexthop), usize>> = snap
        .routers
        .iter()
        .map(|v| {
            let mut m: HashMap<(Ipv6Net, Nexthop), usize> = HashMap::new();
            for p in v.iter().flat_map(|v| &v.paths) {
                let e = m.entry((p.destination, p.via)).or_insert(usize::MAX);
                *e = (*e).min(p.path.len());
            }
            m
        })
        .collect();
    for (&d, &o) in &origin {
        // 0 unvisited, 1 on the current walk, 2 reaches `o`.
        let mut mark = vec![0u8; topo.routers.len()];
        mark[o] = 2;
        for (r, view) in live() {
            if r != o && view.routes.contains_key(&d) {
                let mut walk = Vec::new();
                reaches(r, d, snap, &neighbour, &mut mark, &mut walk, &name)?;
            }
        }
        for (r, view) in live() {
            let Some(nhs) = view.routes.get(&d) else { continue };
            if r == o {
                continue;
            }
            let Some(want) = dist[r][o] else { continue };
            for nh in nhs {
                let far = neighbour(r, nh)?;
                if far != o && topo.routers[far].kind == RouterKind::Server {
                    return Err(format!(
                        "{} routes {d} via server {}, which carries no \
                         one else's traffic",
                        name(r),
                        name(far)
                    ));
                }
                if dist[far][o] != Some(want - 1) {
                    return Err(format!(
                        "{} routes {d} via {} ({} hops from {}), not on a \
                         shortest path ({want} hops)",
                        name(r),
                        name(far),
                        dist[far][o]
                            .map_or("∞".to_string(), |x| x.to_string()),
                        name(o)
                    ));
                }
                let held = shortest_held[r].get(&(d, *nh)).copied();
                if let Some(len) = held {
                    if len != want {
                        return Err(format!(
                            "{} installs a {len}-hop path to {d} via {}; the \
                             shortest is {want} hops",
                            name(r),
                            name(far)
                        ));
                    }
                }
            }
            // 6. A server installs every shortest nexthop (its transits all
            //    announce every destination they reach).
            if topo.routers[r].kind != RouterKind::Server {
                continue;
            }
            for (l, near, far) in &adj[r] {
                let usable = !snap.dead_links.contains(l)
                    && !dead.contains(&far.router)
                    && (far.router == o
                        || topo.routers[far.router].kind
                            == RouterKind::Transit);
                let nh = Nexthop { addr: far.addr, ifindex: near.ifindex };
                if usable
                    && dist[far.router][o] == Some(want - 1)
                    && !nhs.contains(&nh)
                {
                    return Err(format!(
                        "{} routes {d} without {}, on a shortest path \
                         ({want} hops)",
                        name(r),
                        name(far.router)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Follow `r`'s nexthops for `d` depth first; `mark` as in [`check`].
fn reaches<'a>(
    r: usize,
    d: Ipv6Net,
    snap: &Snapshot,
    neighbour: &dyn Fn(usize, &Nexthop) -> Result<usize, String>,
    mark: &mut [u8],
    walk: &mut Vec<usize>,
    name: &dyn Fn(usize) -> &'a str,
) -> Result<(), String> {
    match mark[r] {
        2 => return Ok(()),
        1 => {
            let from = walk.iter().position(|&x| x == r).unwrap_or(0);
            let mut s = String::new();
            for &x in &walk[from..] {
                let _ = write!(s, "{} → ", name(x));
            }
            s.push_str(name(r));
            return Err(format!("forwarding loop for {d}: {s}"));
        }
        _ => {}
    }
    let Some(nhs) = snap.routers[r].as_ref().and_then(|v| v.routes.get(&d))
    else {
        let before = walk.last().map_or("?", |&x| name(x));
        return Err(format!(
            "black hole for {d}: {before} forwards to {}, which holds no route",
            name(r)
        ));
    };
    mark[r] = 1;
    walk.push(r);
    for nh in nhs {
        let far = neighbour(r, nh)?;
        reaches(far, d, snap, neighbour, mark, walk, name)?;
    }
    walk.pop();
    mark[r] = 2;
    Ok(())
}

fn why_not<'a>(
    origin: &BTreeMap<Ipv6Net, usize>,
    dist: &[Option<usize>],
    d: &Ipv6Net,
    name: &dyn Fn(usize) -> &'a str,
) -> String {
    match origin.get(d) {
        None => "originated by no live router".to_string(),
        Some(&o) if dist[o].is_none() => {
            format!("originated by {}, unreachable", name(o))
        }
        Some(&o) => format!("its own ({})", name(o)),
    }
}

fn show_nh(nh: &Nexthop) -> String {
    format!("{}%{}", nh.addr, nh.ifindex)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path vector of these names.
    fn names<S: AsRef<str>>(path: &[S]) -> Names {
        std::sync::Arc::new(path.iter().map(|h| h.as_ref().into()).collect())
    }

    /// The converged state of `topo`, computed by BFS: every router holds
    /// every shortest nexthop to every other server's prefixes, with the
    /// path vector each would have announced.
    fn converged(topo: &Topology, snap_dead: &Snapshot) -> Snapshot {
        let dead = snap_dead.dead_routers();
        let adj = topo.adjacency();
        let mut routers: Vec<Option<RouterView>> = topo
            .routers
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (!dead.contains(&i)).then(|| RouterView {
                    originated: r.prefixes.iter().copied().collect(),
                    ..Default::default()
                })
            })
            .collect();
        for (o, spec) in topo.routers.iter().enumerate() {
            if dead.contains(&o) {
                continue;
            }
            let dist = topo.distances(o, &dead, &snap_dead.dead_links);
            for (r, view) in routers.iter_mut().enumerate() {
                let Some(view) = view else { continue };
                let Some(dr) = dist[r] else { continue };
                if r == o {
                    continue;
                }
                for (link, _near, far) in &adj[r] {
                    if snap_dead.dead_links.contains(link)
                        || dist[far.router] != Some(dr - 1)
                    {
                        continue;
                    }
                    // A server does not carry others' paths.
                    if far.router != o
                        && topo.routers[far.router].kind == RouterKind::Server
                    {
                        continue;
                    }
                    let nh = Nexthop { addr: far.addr, ifindex: _near.ifindex };
                    for d in &spec.prefixes {
                        view.routes.entry(*d).or_default().insert(nh);
                        // A representative path: originator, then the
                        // far end if it is not the originator, padded
                        // with distinct names to the right length.
                        let mut path = vec![spec.name.clone()];
                        for k in 1..dr - 1 {
                            path.push(format!("x{k}"));
                        }
                        if far.router != o {
                            path.push(topo.routers[far.router].name.clone());
                        }
                        view.paths.push(HeldPath {
                            destination: *d,
                            via: nh,
                            path: names(&path),
                        });
                    }
                }
            }
        }
        Snapshot { routers, dead_links: snap_dead.dead_links.clone() }
    }

    fn rack() -> (Topology, Snapshot) {
        let t = Topology::rack(3, 2);
        let s = converged(&t, &Snapshot::default_for(&t));
        (t, s)
    }

    impl Snapshot {
        fn default_for(t: &Topology) -> Self {
            Snapshot {
                routers: vec![Some(RouterView::default()); t.routers.len()],
                dead_links: BTreeSet::new(),
            }
        }
    }

    fn view<'a>(
        t: &Topology,
        s: &'a mut Snapshot,
        n: &str,
    ) -> &'a mut RouterView {
        s.routers[t.router(n).unwrap()].as_mut().unwrap()
    }

    fn prefix_of(t: &Topology, n: &str) -> Ipv6Net {
        t.routers[t.router(n).unwrap()].prefixes[0]
    }

    fn nh_to(t: &Topology, from: &str, to: &str) -> Nexthop {
        let (f, o) = (t.router(from).unwrap(), t.router(to).unwrap());
        let (_, near, far) = t.adjacency()[f]
            .iter()
            .copied()
            .find(|(_, _, far)| far.router == o)
            .unwrap();
        Nexthop { addr: far.addr, ifindex: near.ifindex }
    }

    #[test]
    fn a_converged_rack_passes() {
        let (t, s) = rack();
        check(&t, &s).unwrap();
        let t = Topology::racks(2, 3, 2, 2);
        let s = converged(&t, &Snapshot::default_for(&t));
        check(&t, &s).unwrap();
    }

    #[test]
    fn a_missing_route_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        view(&t, &mut s, "s0").routes.remove(&d);
        let e = check(&t, &s).unwrap_err();
        assert!(e.starts_with("s0 has no route to fd00:0:2::/64 of s2"), "{e}");
    }

    #[test]
    fn a_route_to_a_withdrawn_prefix_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        view(&t, &mut s, "s2").originated.clear();
        // s0's paths too would be stale; the route is found first.
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("originated by no live router"), "{e}");
        assert!(e.contains(&d.to_string()), "{e}");
    }

    #[test]
    fn a_route_to_an_unreachable_router_fails() {
        let (t, mut s) = rack();
        // Cut both of s2's links but leave everyone's state as it was.
        let links: BTreeSet<usize> = t.adjacency()[t.router("s2").unwrap()]
            .iter()
            .map(|(l, _, _)| *l)
            .collect();
        s.dead_links = links;
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("dead link"), "{e}");
        // With the routes over the dead links gone, only the unreachable
        // prefix is left.
        let mut s = converged(&t, &s);
        let d = prefix_of(&t, "s2");
        let nh = nh_to(&t, "s0", "t0");
        view(&t, &mut s, "s0").routes.insert(d, [nh].into());
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("originated by s2, unreachable"), "{e}");
    }

    #[test]
    fn a_dead_router_in_a_path_fails() {
        let t = Topology::rack(3, 2);
        let mut dead = Snapshot::default_for(&t);
        dead.routers[t.router("t1").unwrap()] = None;
        let mut s = converged(&t, &dead);
        check(&t, &s).unwrap();
        let d = prefix_of(&t, "s2");
        view(&t, &mut s, "s0").paths.push(HeldPath {
            destination: d,
            via: nh_to(&t, "s0", "t0"),
            path: names(&["s2", "t1", "t0"]),
        });
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("through dead router t1"), "{e}");
    }

    #[test]
    fn a_nexthop_to_a_dead_router_fails() {
        let (t, mut s) = rack();
        s.routers[t.router("t1").unwrap()] = None;
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("dead router t1"), "{e}");
    }

    #[test]
    fn a_path_naming_a_router_twice_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        view(&t, &mut s, "s0").paths.push(HeldPath {
            destination: d,
            via: nh_to(&t, "s0", "t0"),
            path: names(&["s2", "t1", "s2", "t0"]),
        });
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("naming s2 twice"), "{e}");
    }

    #[test]
    fn a_loop_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        // t0 → s1 → t0 for s2's prefix.
        view(&t, &mut s, "t0").routes.insert(d, [nh_to(&t, "t0", "s1")].into());
        view(&t, &mut s, "s1").routes.insert(d, [nh_to(&t, "s1", "t0")].into());
        let e = check(&t, &s).unwrap_err();
        assert!(e.starts_with("forwarding loop for fd00:0:2::/64"), "{e}");
        assert!(
            e.contains("t0 → s1 → t0") || e.contains("s1 → t0 → s1"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_shortest_nexthop_on_a_server_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        let t1 = nh_to(&t, "s0", "t1");
        let v = view(&t, &mut s, "s0");
        v.routes.get_mut(&d).unwrap().remove(&t1);
        v.paths.retain(|p| !(p.destination == d && p.via == t1));
        let e = check(&t, &s).unwrap_err();
        assert!(e.starts_with("s0 routes fd00:0:2::/64 without t1"), "{e}");
    }

    #[test]
    fn a_black_hole_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        view(&t, &mut s, "t0").routes.remove(&d);
        view(&t, &mut s, "t0").paths.retain(|p| p.destination != d);
        let e = check(&t, &s).unwrap_err();
        assert!(e.starts_with("black hole for fd00:0:2::/64"), "{e}");
        assert!(e.contains("forwards to t0, which holds no route"), "{e}");
    }

    #[test]
    fn a_route_through_a_server_fails() {
        let t = Topology::racks(2, 2, 2, 1);
        let mut s = converged(&t, &Snapshot::default_for(&t));
        let d = prefix_of(&t, "r1s0");
        // r0t0 also routes via r0s1, a server: it carries no one's traffic.
        let nh = nh_to(&t, "r0t0", "r0s1");
        view(&t, &mut s, "r0t0").routes.get_mut(&d).unwrap().insert(nh);
        view(&t, &mut s, "r0s1")
            .routes
            .insert(d, [nh_to(&t, "r0s1", "r0t1")].into());
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("r0t0 routes fd00:0:2::/64 via server r0s1"), "{e}");
    }

    #[test]
    fn a_longer_path_fails() {
        let t = Topology::racks(2, 2, 2, 2);
        let mut s = converged(&t, &Snapshot::default_for(&t));
        let d = prefix_of(&t, "r0s0");
        // spine0 → r1t0 → spine1 → r0t* → r0s0: no loop, but 4 hops where
        // spine0 is 2 away.
        let nh = nh_to(&t, "spine0", "r1t0");
        view(&t, &mut s, "spine0").routes.insert(d, [nh].into());
        let nh = nh_to(&t, "r1t0", "spine1");
        view(&t, &mut s, "r1t0").routes.insert(d, [nh].into());
        let e = check(&t, &s).unwrap_err();
        assert!(
            e.starts_with("spine0 routes fd00::/64 via r1t0 (3 hops from r0s0), not on a shortest path (2 hops)"),
            "{e}"
        );
    }

    #[test]
    fn a_long_path_vector_on_a_shortest_nexthop_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        let v = view(&t, &mut s, "s0");
        for p in v.paths.iter_mut().filter(|p| p.destination == d) {
            p.path = names(&["s2", "x", "y"]);
        }
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("installs a 3-hop path"), "{e}");
    }

    #[test]
    fn a_foreign_nexthop_fails() {
        let (t, mut s) = rack();
        let d = prefix_of(&t, "s2");
        let bogus = Nexthop { addr: "fe80::99".parse().unwrap(), ifindex: 2 };
        view(&t, &mut s, "s0").routes.insert(d, [bogus].into());
        let e = check(&t, &s).unwrap_err();
        assert!(e.contains("but the far end of link"), "{e}");
    }
}
