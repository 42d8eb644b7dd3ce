//! Fabrics of racks: servers, rack transits and spines, with real routers.
//!
//! [`Racks::build`] lays out a two-tier fabric in a [`Fabric`]: every rack
//! has servers and rack transits, every server is wired to every transit
//! of its rack, and every spine transit is wired to every rack transit.
//! Each server puts the first address of its own /64 on `lo` (there is no
//! dummy driver), and [`Racks::originate_own`] makes each originate that
//! /64. Nodes are named `r<rack>s<i>` (servers), `r<rack>t<j>` (rack
//! transits) and `sp<k>` (spines); server `r<R>s<I>` owns
//! `fd00:<R+1>:<I+1>::/64` (hexadecimal) and its address `…::1`.
//!
//! ```text
//!            sp0           sp1            spines: each wired to every
//!                                         rack transit
//!      r0t0      r0t1  r1t0      r1t1     rack transits
//!
//!   r0s0  r0s1  r0s2    r1s0  r1s1  r1s2  servers: each wired to both
//!                                         transits of its rack
//! ```
//!
//! The builder then answers what a forwarding test asks: which servers
//! still lack a route to another's /64, the kernel route of a router to a
//! destination (with its nexthops named by neighbour), whether each flow
//! between servers' own addresses is answered (pings, sent in parallel,
//! each one bounded), and how many paths per destination each router holds
//! (`GET /prefixes`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::fabric::Fabric;
use crate::netns::{ping_available, wait_until};
use crate::routes::{self, Hop, KernelRoute, Prefix};

/// How long all routers of a fabric may take to peer on every link, and
/// to start, on a loaded 2-core machine with debug builds.
pub const PEER_DEADLINE: Duration = Duration::from_secs(40);

/// The shape of a fabric of racks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RacksSpec {
    /// Number of racks.
    pub racks: usize,
    /// Servers in each rack.
    pub servers_per_rack: usize,
    /// Rack transits in each rack; every server of the rack is wired to
    /// each of them.
    pub transits_per_rack: usize,
    /// Spine transits; each is wired to every rack transit.
    pub spines: usize,
}

impl RacksSpec {
    /// Two racks of three servers and two rack transits, joined by two
    /// spines: 12 routers, 20 links.
    pub const TWO_RACKS: RacksSpec = RacksSpec {
        racks: 2,
        servers_per_rack: 3,
        transits_per_rack: 2,
        spines: 2,
    };

    /// Number of routers.
    pub fn routers(&self) -> usize {
        self.racks * (self.servers_per_rack + self.transits_per_rack)
            + self.spines
    }

    /// Number of links.
    pub fn links(&self) -> usize {
        self.racks
            * self.transits_per_rack
            * (self.servers_per_rack + self.spines)
    }
}

/// What a node of the fabric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Server `index` of rack `rack`.
    Server {
        /// Its rack.
        rack: usize,
        /// Its index in the rack.
        index: usize,
    },
    /// Transit `index` of rack `rack`.
    RackTransit {
        /// Its rack.
        rack: usize,
        /// Its index in the rack.
        index: usize,
    },
    /// Spine transit `index`.
    Spine {
        /// Its index among the spines.
        index: usize,
    },
}

impl Role {
    /// The node name of this role: `r0s1`, `r1t0`, `sp1`.
    pub fn name(&self) -> String {
        match self {
            Role::Server { rack, index } => format!("r{rack}s{index}"),
            Role::RackTransit { rack, index } => format!("r{rack}t{index}"),
            Role::Spine { index } => format!("sp{index}"),
        }
    }

    /// `server`, `rack transit` or `spine`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Role::Server { .. } => "server",
            Role::RackTransit { .. } => "rack transit",
            Role::Spine { .. } => "spine",
        }
    }

    /// Whether this is a server (as opposed to a transit).
    pub fn is_server(&self) -> bool {
        matches!(self, Role::Server { .. })
    }
}

/// One end of a link, seen from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The local interface.
    pub ifname: String,
    /// The neighbour's node name.
    pub peer: String,
    /// The neighbour's link-local address on this link.
    pub peer_ll: Ipv6Addr,
}

/// One flow between two servers' own addresses and how its pings went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The sending server.
    pub from: String,
    /// The receiving server.
    pub to: String,
    /// Pings sent (one per round until answered).
    pub attempts: usize,
    /// Whether a ping was answered.
    pub answered: bool,
    /// The output of the last unanswered ping (empty once answered).
    pub last_output: String,
}

/// Paths held per (router, destination), from `GET /prefixes`.
pub type PathCounts = BTreeMap<String, BTreeMap<Prefix, usize>>;

/// A fabric of racks with a router running in every node, all peered.
#[derive(Debug)]
pub struct Racks {
    f: Fabric,
    spec: RacksSpec,
    /// Every node in creation order: servers, rack transits, spines.
    roles: Vec<Role>,
    /// Per node, its ports in link order.
    ports: BTreeMap<String, Vec<Port>>,
}

impl Racks {
    /// Builds the fabric `spec` (namespaces, links, an address on each
    /// server's `lo`), starts a `ddmd` in every node with `extra_args`, and
    /// waits (up to [`PEER_DEADLINE`]) until every router has all its
    /// neighbours in `Exchange`. Originates nothing yet.
    pub fn build(
        tag: &str,
        spec: RacksSpec,
        extra_args: &[&str],
    ) -> Result<Racks, String> {
        let started = Instant::now();
        let mut f = Fabric::new(tag)?;
        let mut roles = Vec::with_capacity(spec.routers());
        for rack in 0..spec.racks {
            for index in 0..spec.servers_per_rack {
                roles.push(Role::Server { rack, index });
            }
        }
        for rack in 0..spec.racks {
            for index in 0..spec.transits_per_rack {
                roles.push(Role::RackTransit { rack, index });
            }
        }
        for index in 0..spec.spines {
            roles.push(Role::Spine { index });
        }
        for role in &roles {
            let name = role.name();
            if role.is_server() {
                f.topo_mut().node(&name)?;
                let (addr, len) = server_prefix(role);
                let addr = server_addr_of(addr);
                f.topo().add_lo_addr(&name, &format!("{addr}/{len}"))?;
            } else {
                f.topo_mut().transit(&name)?;
            }
        }
        let mut pairs = Vec::with_capacity(spec.links());
        for rack in 0..spec.racks {
            for s in 0..spec.servers_per_rack {
                for t in 0..spec.transits_per_rack {
                    pairs.push((
                        Role::Server { rack, index: s }.name(),
                        Role::RackTransit { rack, index: t }.name(),
                    ));
                }
            }
        }
        for sp in 0..spec.spines {
            for rack in 0..spec.racks {
                for t in 0..spec.transits_per_rack {
                    pairs.push((
                        Role::RackTransit { rack, index: t }.name(),
                        Role::Spine { index: sp }.name(),
                    ));
                }
            }
        }
        let mut ports: BTreeMap<String, Vec<Port>> = BTreeMap::new();
        for (a, b) in &pairs {
            let l = f.topo_mut().link(a, b)?;
            let ll_a = f.topo().wait_link_local(a, &l.a_if, PEER_DEADLINE)?;
            let ll_b = f.topo().wait_link_local(b, &l.b_if, PEER_DEADLINE)?;
            ports.entry(a.clone()).or_default().push(Port {
                ifname: l.a_if.clone(),
                peer: b.clone(),
                peer_ll: ll_b,
            });
            ports.entry(b.clone()).or_default().push(Port {
                ifname: l.b_if.clone(),
                peer: a.clone(),
                peer_ll: ll_a,
            });
        }
        for role in &roles {
            let name = role.name();
            let ifs: Vec<&str> = ports
                .get(&name)
                .map(|ps| ps.iter().map(|p| p.ifname.as_str()).collect())
                .unwrap_or_default();
            let kind = if role.is_server() { "server" } else { "transit" };
            f.spawn_router(&name, kind, &ifs, extra_args)?;
        }
        for role in &roles {
            f.wait_ready(&role.name())?;
        }
        let racks = Racks { f, spec, roles, ports };
        for role in &racks.roles {
            let name = role.name();
            let n = racks.ports.get(&name).map_or(0, Vec::len);
            let left = PEER_DEADLINE.saturating_sub(started.elapsed());
            racks
                .f
                .wait_peer_state(&name, n, "Exchange", left)
                .map_err(|e| racks.with_logs(&e))?;
        }
        Ok(racks)
    }

    /// The fabric, to run commands or reach a router's admin API.
    pub fn fabric(&self) -> &Fabric {
        &self.f
    }

    /// The shape the fabric was built with.
    pub fn spec(&self) -> RacksSpec {
        self.spec
    }

    /// Every node: servers, then rack transits, then spines.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The role of the node named `node`.
    pub fn role(&self, node: &str) -> Option<Role> {
        self.roles.iter().copied().find(|r| r.name() == node)
    }

    /// The servers' node names, rack by rack.
    pub fn servers(&self) -> Vec<String> {
        self.roles.iter().filter(|r| r.is_server()).map(Role::name).collect()
    }

    /// The rack transits' node names, rack by rack.
    pub fn rack_transits(&self) -> Vec<String> {
        self.roles
            .iter()
            .filter(|r| matches!(r, Role::RackTransit { .. }))
            .map(Role::name)
            .collect()
    }

    /// The servers of rack `rack`.
    pub fn servers_of_rack(&self, rack: usize) -> Vec<String> {
        (0..self.spec.servers_per_rack)
            .map(|index| Role::Server { rack, index }.name())
            .collect()
    }

    /// The /64 server `server` owns and originates.
    pub fn prefix_of(&self, server: &str) -> Result<Prefix, String> {
        match self.role(server) {
            Some(role) if role.is_server() => Ok(server_prefix(&role)),
            _ => Err(format!("{server} is no server of this fabric")),
        }
    }

    /// The address server `server` has on `lo` (the first of its /64).
    pub fn addr_of(&self, server: &str) -> Result<Ipv6Addr, String> {
        Ok(server_addr_of(self.prefix_of(server)?.0))
    }

    /// The node whose /64 is `prefix`, or the prefix written out.
    pub fn name_of_prefix(&self, prefix: &Prefix) -> String {
        self.roles
            .iter()
            .find(|r| r.is_server() && server_prefix(r) == *prefix)
            .map_or_else(|| format!("{}/{}", prefix.0, prefix.1), Role::name)
    }

    /// `node`'s ports, in link order.
    pub fn ports(&self, node: &str) -> &[Port] {
        self.ports.get(node).map_or(&[], Vec::as_slice)
    }

    /// The kernel nexthop `node` uses to reach its neighbour `peer`
    /// directly.
    pub fn hop(&self, node: &str, peer: &str) -> Result<Hop, String> {
        self.ports(node)
            .iter()
            .find(|p| p.peer == peer)
            .map(|p| Hop { via: p.peer_ll, dev: p.ifname.clone() })
            .ok_or_else(|| format!("{node} has no link to {peer}"))
    }

    /// The neighbour of `node` a kernel nexthop leads to, or the nexthop
    /// written out if it leads to none.
    pub fn peer_of_hop(&self, node: &str, hop: &Hop) -> String {
        self.ports(node)
            .iter()
            .find(|p| p.ifname == hop.dev && p.peer_ll == hop.via)
            .map_or_else(
                || format!("{}%{}", hop.via, hop.dev),
                |p| p.peer.clone(),
            )
    }

    /// The neighbours a kernel route leads to, sorted.
    pub fn peers_of_route(
        &self,
        node: &str,
        route: &KernelRoute,
    ) -> Vec<String> {
        let mut peers: Vec<String> =
            route.hops.iter().map(|h| self.peer_of_hop(node, h)).collect();
        peers.sort();
        peers
    }

    /// `node`'s kernel routes of ours (`proto 221`), by destination.
    pub fn kernel_routes(
        &self,
        node: &str,
    ) -> Result<BTreeMap<Prefix, KernelRoute>, String> {
        Ok(routes::parse_routes(&self.f.kernel_routes(node)?))
    }

    /// Makes every server originate its own /64.
    pub fn originate_own(&self) -> Result<(), String> {
        for server in self.servers() {
            let (addr, len) = self.prefix_of(&server)?;
            self.f.adm(
                &server,
                &["advertise-prefixes", &format!("{addr}/{len}")],
            )?;
        }
        Ok(())
    }

    /// `(server, other server)` pairs where the first has no kernel route
    /// to the second's /64.
    pub fn missing_routes(&self) -> Result<Vec<(String, String)>, String> {
        let servers = self.servers();
        let mut missing = Vec::new();
        for server in &servers {
            let routes = self.kernel_routes(server)?;
            for other in servers.iter().filter(|o| *o != server) {
                if !routes.contains_key(&self.prefix_of(other)?) {
                    missing.push((server.clone(), other.clone()));
                }
            }
        }
        Ok(missing)
    }

    /// Waits up to `deadline` until every server has a kernel route to
    /// every other server's /64, and returns how long that took.
    pub fn wait_converged(
        &self,
        deadline: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = Err("never checked".to_string());
        wait_until(
            deadline,
            "every server to route to every other's /64",
            || {
                last = self.missing_routes();
                matches!(&last, Ok(m) if m.is_empty())
            },
        )
        .map_err(|e| self.with_logs(&format!("{e}; missing: {last:?}")))?;
        Ok(start.elapsed())
    }

    /// Pings every other server from every server, from its own address
    /// to the other's (`ping -c 1 -W 1`), all flows of a round in
    /// parallel. Unanswered flows are pinged again, round after round,
    /// until all are answered or `deadline` has passed (at least one
    /// round runs), so each flow gets at most about one ping per second.
    pub fn ping_all(&self, deadline: Duration) -> Result<Vec<Flow>, String> {
        ping_available()?;
        let servers = self.servers();
        let mut flows = Vec::new();
        for from in &servers {
            for to in servers.iter().filter(|t| *t != from) {
                flows.push(Flow {
                    from: from.clone(),
                    to: to.clone(),
                    attempts: 0,
                    answered: false,
                    last_output: String::new(),
                });
            }
        }
        let end = Instant::now() + deadline;
        loop {
            let pending: Vec<usize> =
                (0..flows.len()).filter(|&i| !flows[i].answered).collect();
            let results: Vec<Result<(bool, String), String>> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = pending
                        .iter()
                        .map(|&i| {
                            let flow = &flows[i];
                            scope.spawn(move || self.ping(&flow.from, &flow.to))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err("ping thread panicked".into())
                            })
                        })
                        .collect()
                });
            for (i, result) in pending.into_iter().zip(results) {
                let (answered, output) = result?;
                let flow = &mut flows[i];
                flow.attempts += 1;
                flow.answered = answered;
                flow.last_output =
                    if answered { String::new() } else { output };
            }
            if flows.iter().all(|f| f.answered) || Instant::now() >= end {
                return Ok(flows);
            }
        }
    }

    /// One ping from server `from`'s address to server `to`'s: whether it
    /// was answered, and what `ping` printed.
    pub fn ping(&self, from: &str, to: &str) -> Result<(bool, String), String> {
        let src = self.addr_of(from)?.to_string();
        let dst = self.addr_of(to)?.to_string();
        let out = self.f.topo().exec(
            from,
            &["ping", "-6", "-n", "-c", "1", "-W", "1", "-I", &src, &dst],
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// How many paths (path vectors, over all nexthops) each router holds
    /// per destination, from its `GET /prefixes`.
    pub fn path_counts(&self) -> Result<PathCounts, String> {
        let mut counts = PathCounts::new();
        for role in &self.roles {
            let node = role.name();
            let answer = self
                .f
                .with_admin(&node, |c| async move { c.get_prefixes().await })?
                .map_err(|e| format!("{node}: GET /prefixes: {e}"))?
                .into_inner();
            let per_dest = counts.entry(node.clone()).or_default();
            for paths in answer.values() {
                for pv in paths {
                    let text = pv.destination.to_string();
                    let dest =
                        routes::parse_prefix(&text).ok_or_else(|| {
                            format!("{node}: bad destination {text}")
                        })?;
                    *per_dest.entry(dest).or_default() += 1;
                }
            }
        }
        Ok(counts)
    }

    /// A table of `counts` (routers down, servers' /64s across) followed by
    /// the maximum and mean number of paths per destination, overall and
    /// per kind of router. A router's own /64 is left out; a destination a
    /// router holds no path to counts as 0.
    pub fn path_table(&self, counts: &PathCounts) -> String {
        let servers = self.servers();
        let mut out = String::new();
        let _ = write!(out, "{:>8}", "router");
        for s in &servers {
            let _ = write!(out, " {s:>5}");
        }
        out.push('\n');
        let mut by_kind: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for role in &self.roles {
            let node = role.name();
            let _ = write!(out, "{node:>8}");
            for s in &servers {
                if *s == node {
                    let _ = write!(out, " {:>5}", "-");
                    continue;
                }
                let dest = server_prefix(&self.role(s).expect("a server"));
                let n = counts
                    .get(&node)
                    .and_then(|m| m.get(&dest))
                    .copied()
                    .unwrap_or(0);
                let _ = write!(out, " {n:>5}");
                by_kind.entry(role.kind_name()).or_default().push(n);
                by_kind.entry("all routers").or_default().push(n);
            }
            out.push('\n');
        }
        for (kind, ns) in &by_kind {
            let _ = writeln!(
                out,
                "paths per destination, {kind}: max {}, mean {:.2}",
                ns.iter().max().copied().unwrap_or(0),
                ns.iter().sum::<usize>() as f64 / ns.len().max(1) as f64
            );
        }
        out
    }

    /// Stops every router with SIGTERM and checks that each exited cleanly
    /// and that no route of ours is left in any namespace.
    pub fn finish(mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        for role in self.roles.clone() {
            let node = role.name();
            if self.f.is_running(&node) {
                match self.f.stop_router(&node) {
                    Ok(status) if status.success() => {}
                    Ok(status) => {
                        problems.push(format!("{node}: exited with {status}"))
                    }
                    Err(e) => problems.push(e),
                }
            }
        }
        for role in &self.roles {
            let node = role.name();
            let left = self.f.kernel_routes(&node)?;
            if !left.is_empty() {
                problems.push(format!("{node}: routes left behind: {left:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// `msg` with a pointer to the routers' logs (kept when a test panics).
    pub fn with_logs(&self, msg: &str) -> String {
        format!("{msg}\n(router logs under {})", self.f.dir().display())
    }
}

/// The /64 of a server role: `fd00:<rack+1>:<index+1>::/64`.
fn server_prefix(role: &Role) -> Prefix {
    let Role::Server { rack, index } = *role else {
        unreachable!("only servers own a /64")
    };
    let seg = |n: usize| u16::try_from(n + 1).unwrap_or(u16::MAX);
    (Ipv6Addr::new(0xfd00, seg(rack), seg(index), 0, 0, 0, 0, 0), 64)
}

/// The first address of a server's /64 (the one on its `lo`).
fn server_addr_of(net: Ipv6Addr) -> Ipv6Addr {
    let mut seg = net.segments();
    seg[7] = 1;
    Ipv6Addr::from(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_racks_have_twelve_routers_and_twenty_links() {
        let spec = RacksSpec::TWO_RACKS;
        assert_eq!(spec.routers(), 12);
        assert_eq!(spec.links(), 20);
    }

    #[test]
    fn servers_own_distinct_prefixes() {
        let a = Role::Server { rack: 0, index: 0 };
        let b = Role::Server { rack: 1, index: 2 };
        assert_eq!(a.name(), "r0s0");
        assert_eq!(b.name(), "r1s2");
        assert_eq!(server_prefix(&a), ("fd00:1:1::".parse().unwrap(), 64));
        assert_eq!(server_prefix(&b), ("fd00:2:3::".parse().unwrap(), 64));
        assert_eq!(
            server_addr_of(server_prefix(&b).0),
            "fd00:2:3::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(Role::RackTransit { rack: 1, index: 0 }.name(), "r1t0");
        assert_eq!(Role::Spine { index: 1 }.name(), "sp1");
    }
}
