//! Simulated fabric topologies: routers (servers and transits), point-to-point
//! links with a unique link-local address and an interface index at each
//! end, and the prefixes each server originates.
//!
//! Naming and numbering, so that a failing run reads easily:
//!
//! * a lone rack: servers `s0..`, transits `t0..`;
//! * racks: `r{R}s{I}` servers, `r{R}t{J}` rack transits, `spine{K}`;
//! * link `L` has the ends `fe80::{L>>16}:{L&0xffff}:1` (its `a` end) and
//!   `…:2` (its `b` end); interface indexes count from 2 on each router
//!   (1 is loopback) in the order its links were added, named `sim{index}`;
//! * server number `N` (in router order, counting servers only) originates
//!   `fd00:{N>>16}:{N&0xffff}::/64`.

use std::collections::{BTreeSet, VecDeque};
use std::net::Ipv6Addr;

use oxnet::Ipv6Net;

/// What a router does in the fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouterKind {
    /// Originates prefixes; does not re-announce what it learns.
    Server,
    /// Re-announces what it learns (rack transits and spines).
    Transit,
}

/// One router of a topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    /// Its hostname (unique in the topology).
    pub name: String,
    /// Server or transit.
    pub kind: RouterKind,
    /// The prefixes it originates at start.
    pub prefixes: Vec<Ipv6Net>,
}

/// One end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkEnd {
    /// Index of the router in [`Topology::routers`].
    pub router: usize,
    /// The interface index on that router.
    pub ifindex: u32,
    /// The end's link-local address (unique in the topology).
    pub addr: Ipv6Addr,
}

impl LinkEnd {
    /// The interface's name on its router.
    pub fn ifname(&self) -> String {
        format!("sim{}", self.ifindex)
    }
}

/// A point-to-point link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkSpec {
    /// One end.
    pub a: LinkEnd,
    /// The other end.
    pub b: LinkEnd,
}

impl LinkSpec {
    /// The end on `router`, and the other end, if the link touches it.
    pub fn ends_at(&self, router: usize) -> Option<(LinkEnd, LinkEnd)> {
        if self.a.router == router {
            Some((self.a, self.b))
        } else if self.b.router == router {
            Some((self.b, self.a))
        } else {
            None
        }
    }
}

/// A fabric to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// A short name for reports (`rack`, `racks-16`, …).
    pub name: String,
    /// The routers.
    pub routers: Vec<RouterSpec>,
    /// The links.
    pub links: Vec<LinkSpec>,
    /// Per router, the next free interface index.
    next_ifindex: Vec<u32>,
    /// Servers numbered so far (for their prefixes).
    servers: u32,
}

impl Topology {
    /// An empty topology.
    pub fn new(name: impl Into<String>) -> Self {
        Topology {
            name: name.into(),
            routers: Vec::new(),
            links: Vec::new(),
            next_ifindex: Vec::new(),
            servers: 0,
        }
    }

    /// Add a router; a server originates the next free `/64`. Returns its
    /// index.
    pub fn add_router(
        &mut self,
        name: impl Into<String>,
        kind: RouterKind,
    ) -> usize {
        let prefixes = match kind {
            RouterKind::Server => {
                let n = self.servers;
                self.servers += 1;
                let addr = Ipv6Addr::new(
                    0xfd00,
                    (n >> 16) as u16,
                    (n & 0xffff) as u16,
                    0,
                    0,
                    0,
                    0,
                    0,
                );
                vec![Ipv6Net::new(addr, 64).expect("64 is a valid length")]
            }
            RouterKind::Transit => Vec::new(),
        };
        self.routers.push(RouterSpec { name: name.into(), kind, prefixes });
        self.next_ifindex.push(2);
        self.routers.len() - 1
    }

    /// Link two routers (by index). Returns the link's index.
    pub fn add_link(&mut self, a: usize, b: usize) -> usize {
        assert!(a != b, "a link joins two distinct routers");
        let l = self.links.len() as u32;
        let addr = |end: u16| {
            Ipv6Addr::new(
                0xfe80,
                0,
                0,
                0,
                0,
                (l >> 16) as u16,
                (l & 0xffff) as u16,
                end,
            )
        };
        let mut end = |router: usize, n: u16| {
            let ifindex = self.next_ifindex[router];
            self.next_ifindex[router] += 1;
            LinkEnd { router, ifindex, addr: addr(n) }
        };
        let a = end(a, 1);
        let b = end(b, 2);
        self.links.push(LinkSpec { a, b });
        self.links.len() - 1
    }

    /// One rack: `servers` servers each wired to every one of `transits`
    /// transits (a real rack is `rack(32, 2)`).
    pub fn rack(servers: usize, transits: usize) -> Self {
        let mut t = Topology::new(format!("rack-{servers}x{transits}"));
        let ts: Vec<usize> = (0..transits)
            .map(|j| t.add_router(format!("t{j}"), RouterKind::Transit))
            .collect();
        for i in 0..servers {
            let s = t.add_router(format!("s{i}"), RouterKind::Server);
            for &tj in &ts {
                t.add_link(s, tj);
            }
        }
        t
    }

    /// `racks` racks of `servers` servers and `transits` rack transits
    /// (every server to every transit of its rack), joined by `spines`
    /// spines (every rack transit to every spine).
    pub fn racks(
        racks: usize,
        servers: usize,
        transits: usize,
        spines: usize,
    ) -> Self {
        let mut t = Topology::new(format!(
            "racks-{racks}x({servers}+{transits})+{spines}"
        ));
        let sp: Vec<usize> = (0..spines)
            .map(|k| t.add_router(format!("spine{k}"), RouterKind::Transit))
            .collect();
        for r in 0..racks {
            let ts: Vec<usize> = (0..transits)
                .map(|j| t.add_router(format!("r{r}t{j}"), RouterKind::Transit))
                .collect();
            for &tj in &ts {
                for &s in &sp {
                    t.add_link(tj, s);
                }
            }
            for i in 0..servers {
                let s = t.add_router(format!("r{r}s{i}"), RouterKind::Server);
                for &tj in &ts {
                    t.add_link(s, tj);
                }
            }
        }
        t
    }

    /// The large fabric: 30 racks of 32 servers and 2 transits, 4 spines —
    /// 1,024 routers, 2,160 links.
    pub fn thousand() -> Self {
        let mut t = Topology::racks(30, 32, 2, 4);
        t.name = "thousand".to_string();
        t
    }

    /// The index of the router named `name`.
    pub fn router(&self, name: &str) -> Option<usize> {
        self.routers.iter().position(|r| r.name == name)
    }

    /// How many routers are servers.
    pub fn servers(&self) -> usize {
        self.routers.iter().filter(|r| r.kind == RouterKind::Server).count()
    }

    /// Per router, its links as (link index, its end, the far end).
    pub fn adjacency(&self) -> Vec<Vec<(usize, LinkEnd, LinkEnd)>> {
        let mut adj = vec![Vec::new(); self.routers.len()];
        for (i, l) in self.links.iter().enumerate() {
            adj[l.a.router].push((i, l.a, l.b));
            adj[l.b.router].push((i, l.b, l.a));
        }
        adj
    }

    /// Hop counts from `from` over live routers and links, as DDM routes:
    /// only transits carry others' traffic, so a path goes through no
    /// server but its two ends (`None`: unreachable). A dead `from`
    /// reaches nothing. Symmetric: the distance from `a` to `b` is the
    /// distance from `b` to `a`.
    pub fn distances(
        &self,
        from: usize,
        dead_routers: &BTreeSet<usize>,
        dead_links: &BTreeSet<usize>,
    ) -> Vec<Option<usize>> {
        let adj = self.adjacency();
        let mut dist = vec![None; self.routers.len()];
        if dead_routers.contains(&from) {
            return dist;
        }
        dist[from] = Some(0);
        let mut queue = VecDeque::from([from]);
        while let Some(r) = queue.pop_front() {
            let d = dist[r].expect("queued routers have a distance");
            if r != from && self.routers[r].kind == RouterKind::Server {
                continue;
            }
            for (link, _, far) in &adj[r] {
                if dead_links.contains(link)
                    || dead_routers.contains(&far.router)
                    || dist[far.router].is_some()
                {
                    continue;
                }
                dist[far.router] = Some(d + 1);
                queue.push_back(far.router);
            }
        }
        dist
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn unique_addresses_and_ifindexes(t: &Topology) {
        let mut addrs = HashSet::new();
        let mut ifs = HashSet::new();
        for l in &t.links {
            for e in [l.a, l.b] {
                assert!(addrs.insert(e.addr), "duplicate address {}", e.addr);
                assert!(
                    ifs.insert((e.router, e.ifindex)),
                    "duplicate ifindex {} on {}",
                    e.ifindex,
                    t.routers[e.router].name
                );
                assert!(e.ifindex >= 2);
            }
        }
        let names: HashSet<_> = t.routers.iter().map(|r| &r.name).collect();
        assert_eq!(names.len(), t.routers.len(), "duplicate router names");
        let prefixes: HashSet<_> =
            t.routers.iter().flat_map(|r| r.prefixes.iter()).collect();
        assert_eq!(prefixes.len(), t.servers(), "one /64 per server");
    }

    #[test]
    fn a_rack_counts() {
        let t = Topology::rack(32, 2);
        assert_eq!(t.routers.len(), 34);
        assert_eq!(t.servers(), 32);
        assert_eq!(t.links.len(), 64);
        unique_addresses_and_ifindexes(&t);
        // Every server is two hops from every other.
        let d = t.distances(
            t.router("s0").unwrap(),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(d[t.router("s31").unwrap()], Some(2));
        assert_eq!(d[t.router("t1").unwrap()], Some(1));
    }

    #[test]
    fn racks_counts() {
        let t = Topology::racks(2, 32, 2, 4);
        assert_eq!(t.routers.len(), 2 * 34 + 4);
        assert_eq!(t.servers(), 64);
        // servers×transits per rack, transits×spines per rack.
        assert_eq!(t.links.len(), 2 * (64 + 8));
        unique_addresses_and_ifindexes(&t);
        let d = t.distances(
            t.router("r0s0").unwrap(),
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        // server → rack transit → spine → rack transit → server.
        assert_eq!(d[t.router("r1s5").unwrap()], Some(4));
        assert_eq!(d[t.router("r0s5").unwrap()], Some(2));
    }

    #[test]
    fn the_thousand_has_at_least_a_thousand_routers() {
        let t = Topology::thousand();
        assert_eq!(t.routers.len(), 1024);
        assert!(t.routers.len() >= 1000);
        assert_eq!(t.servers(), 960);
        assert_eq!(t.links.len(), 30 * (64 + 8));
        unique_addresses_and_ifindexes(&t);
    }

    #[test]
    fn dead_links_and_routers_cut_distances() {
        let t = Topology::rack(2, 2);
        let s0 = t.router("s0").unwrap();
        let s1 = t.router("s1").unwrap();
        let t0 = t.router("t0").unwrap();
        let t1 = t.router("t1").unwrap();
        let none = BTreeSet::new();
        assert_eq!(t.distances(s0, &none, &none)[s1], Some(2));
        let both = BTreeSet::from([t0, t1]);
        assert_eq!(t.distances(s0, &both, &none)[s1], None);
        assert_eq!(t.distances(s0, &BTreeSet::from([s0]), &none)[s0], None);
        // The links of s0: cut both and it is alone.
        let s0_links: BTreeSet<usize> =
            t.adjacency()[s0].iter().map(|(l, _, _)| *l).collect();
        assert_eq!(t.distances(s0, &none, &s0_links)[t0], None);
        // Servers do not carry others' traffic: with t0–s1 cut, t0 reaches
        // s1 only through s0 and t1, which DDM does not do.
        let t0_s1 = t.adjacency()[t0]
            .iter()
            .find(|(_, _, far)| far.router == s1)
            .map(|(l, _, _)| *l)
            .unwrap();
        assert_eq!(t.distances(t0, &none, &BTreeSet::from([t0_s1]))[s1], None);
        assert_eq!(t.distances(s1, &none, &BTreeSet::from([t0_s1]))[t0], None);
    }
}
