//! Prefix exchange and forwarding with real routers, proven in network
//! namespaces.
//!
//! Each test runs real `ddmd` routers (see [`Fabric`]) in namespaces joined
//! by veth pairs and checks what the exchange protocol promises: originated prefixes
//! reach every router with their path vectors, the kernel gets one route per
//! destination (one multipath route across equal-cost nexthops), packets
//! really flow between the servers' own addresses through the transit
//! routers, and routes follow restarts, expiries, withdrawals and dead
//! routers. Tunnel endpoints follow the same flow.
//!
//! Every test ends by stopping all its routers with SIGTERM and checking that
//! none of them left a route of ours (`proto 221`) behind.
//!
//! Build the binaries first (`cargo build --workspace --bins`). Every test
//! skips loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ddm_test_harness::fabric::Fabric;
use ddm_test_harness::netns::{require_netns, wait_until};

/// Generous bound for anything that involves the routers' timers, under a
/// loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(15);

/// Extra time allowed on top of a protocol timer for `ddmadm` round trips
/// and scheduling on a busy machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// Faster discovery timers, so dead peers expire quickly.
const EXPIRE_MS: u64 = 2000;
const FAST: [&str; 4] =
    ["--solicit-interval", "500", "--expire-threshold", "2000"];

/// The servers' own /64s and the address each puts on `lo`.
const P1: &str = "fd00:1::/64";
const A1: &str = "fd00:1::1";
const P2: &str = "fd00:2::/64";
const A2: &str = "fd00:2::1";

/// What a node is in a test topology.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A server with this address (`/64`) on `lo`.
    Server(&'static str),
    /// A transit router (forwarding on).
    Transit,
}

/// One end of a link, seen from a node: the local interface and the
/// neighbour's link-local address on it.
#[derive(Debug, Clone)]
struct Port {
    ifname: String,
    peer: String,
    peer_ll: Ipv6Addr,
}

/// A fabric whose routers all run and have peered on every link.
struct Net {
    f: Fabric,
    /// Node names, in creation order.
    nodes: Vec<String>,
    /// Per node, its ports in link order.
    ports: BTreeMap<String, Vec<Port>>,
}

impl Net {
    /// Builds the nodes and links, starts a router in every node with
    /// `extra` arguments, and waits until every router has all its
    /// neighbours in `Exchange`.
    fn new(
        tag: &str,
        nodes: &[(&str, Kind)],
        links: &[(&str, &str)],
        extra: &[&str],
    ) -> Net {
        let mut f = Fabric::new(tag).unwrap();
        for (name, kind) in nodes {
            match kind {
                Kind::Server(addr) => {
                    f.topo_mut().node(name).unwrap();
                    f.topo().add_lo_addr(name, &format!("{addr}/64")).unwrap();
                }
                Kind::Transit => {
                    f.topo_mut().transit(name).unwrap();
                }
            }
        }
        let mut ports: BTreeMap<String, Vec<Port>> = BTreeMap::new();
        for (a, b) in links {
            let l = f.topo_mut().link(a, b).unwrap();
            let ll_a = f.topo().wait_link_local(a, &l.a_if, DEADLINE).unwrap();
            let ll_b = f.topo().wait_link_local(b, &l.b_if, DEADLINE).unwrap();
            ports.entry(a.to_string()).or_default().push(Port {
                ifname: l.a_if.clone(),
                peer: b.to_string(),
                peer_ll: ll_b,
            });
            ports.entry(b.to_string()).or_default().push(Port {
                ifname: l.b_if.clone(),
                peer: a.to_string(),
                peer_ll: ll_a,
            });
        }
        for (name, kind) in nodes {
            let ifs: Vec<&str> =
                ports[*name].iter().map(|p| p.ifname.as_str()).collect();
            let kind = match kind {
                Kind::Server(_) => "server",
                Kind::Transit => "transit",
            };
            f.spawn_router(name, kind, &ifs, extra).unwrap();
        }
        for (name, _) in nodes {
            f.wait_ready(name).unwrap();
        }
        let net = Net {
            f,
            nodes: nodes.iter().map(|(n, _)| n.to_string()).collect(),
            ports,
        };
        for node in &net.nodes {
            net.wait_peered(node);
        }
        net
    }

    /// Waits until `node` has every neighbour in `Exchange`.
    fn wait_peered(&self, node: &str) {
        let n = self.ports[node].len();
        self.f
            .wait_peer_state(node, n, "Exchange", DEADLINE)
            .unwrap_or_else(|e| self.fail(&e));
    }

    /// The port of `node` that leads to `peer`.
    fn port(&self, node: &str, peer: &str) -> &Port {
        self.ports[node]
            .iter()
            .find(|p| p.peer == peer)
            .unwrap_or_else(|| panic!("{node} has no link to {peer}"))
    }

    /// The kernel nexthop `node` uses to reach `peer` directly.
    fn hop(&self, node: &str, peer: &str) -> Hop {
        let p = self.port(node, peer);
        Hop { via: p.peer_ll, dev: p.ifname.clone() }
    }

    /// Panics with `msg`, pointing at the routers' logs (the fabric keeps
    /// its directory when a test panics).
    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n(router logs under {})", self.f.dir().display())
    }

    /// Runs `ddmadm --json` in `node`, failing the test on error.
    fn adm(&self, node: &str, args: &[&str]) -> serde_json::Value {
        self.f.adm(node, args).unwrap_or_else(|e| self.fail(&e))
    }

    /// Waits until `check` passes; on timeout, fails with its last error.
    fn wait(&self, what: &str, mut check: impl FnMut() -> Result<(), String>) {
        let mut last = Err("never checked".to_string());
        if let Err(e) = wait_until(DEADLINE, what, || {
            last = check();
            last.is_ok()
        }) {
            self.fail(&format!("{e}: {}", last.unwrap_err()));
        }
    }

    /// `node`'s learned paths (`get-prefixes`), sorted.
    fn paths(&self, node: &str) -> Result<Vec<PathEntry>, String> {
        parse_prefixes(&self.f.adm(node, &["get-prefixes"])?)
    }

    /// Waits until the numbers of learned paths of `nodes` are `counts`.
    fn wait_counts(&self, nodes: &[&str], counts: &[usize]) {
        self.wait(&format!("path counts {counts:?} on {nodes:?}"), || {
            let mut got = Vec::new();
            for node in nodes {
                got.push(self.paths(node)?);
            }
            let n: Vec<usize> = got.iter().map(Vec::len).collect();
            if n == counts {
                Ok(())
            } else {
                Err(format!("counts {n:?}, paths {got:?}"))
            }
        });
    }

    /// `node`'s kernel routes of ours, by destination.
    fn routes(&self, node: &str) -> Result<BTreeMap<String, Route>, String> {
        Ok(parse_routes(&self.f.kernel_routes(node)?))
    }

    /// Waits until `node`'s kernel route to `dest` goes through exactly
    /// `hops` (in any order); an empty `hops` waits for no route.
    fn wait_route(&self, node: &str, dest: &str, hops: &[Hop]) {
        let mut want = hops.to_vec();
        want.sort();
        self.wait(&format!("{node}: route to {dest} via {want:?}"), || {
            let routes = self.routes(node)?;
            let got = routes.get(dest).map(|r| r.hops.clone());
            match got {
                None if want.is_empty() => Ok(()),
                Some(g) if g == want => Ok(()),
                _ => Err(format!("routes: {routes:?}")),
            }
        });
    }

    /// Waits until a ping from `node`, sourced from `src`, reaches `dst`.
    fn wait_ping(&self, node: &str, src: &str, dst: &str) {
        self.wait(&format!("{node}: ping {src} → {dst}"), || {
            let out = self.f.topo().exec(
                node,
                &["ping", "-6", "-n", "-c1", "-W1", "-I", src, dst],
            )?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        });
    }

    /// Stops every running router with SIGTERM, checks each exited cleanly,
    /// and that no route of ours is left in any namespace.
    fn finish(mut self) {
        for node in self.nodes.clone() {
            if self.f.is_running(&node) {
                let status = self.f.stop_router(&node).unwrap();
                assert!(status.success(), "{node}: ddmd exited with {status}");
            }
        }
        for node in &self.nodes {
            let left = self.f.kernel_routes(node).unwrap();
            assert!(left.is_empty(), "{node}: routes left behind: {left:?}");
        }
    }
}

/// One learned path: the nexthop it came from, its destination, its path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PathEntry {
    nexthop: Ipv6Addr,
    dest: String,
    path: Vec<String>,
}

/// Parses `get-prefixes`: a map from nexthop to a list of path vectors.
fn parse_prefixes(v: &serde_json::Value) -> Result<Vec<PathEntry>, String> {
    let map =
        v.as_object().ok_or_else(|| format!("get-prefixes not a map: {v}"))?;
    let mut out = Vec::new();
    for (nexthop, pvs) in map {
        let nexthop: Ipv6Addr =
            nexthop.parse().map_err(|_| format!("bad nexthop in {v}"))?;
        let pvs = pvs.as_array().ok_or_else(|| format!("not a list: {v}"))?;
        for pv in pvs {
            let dest = pv["destination"]
                .as_str()
                .ok_or_else(|| format!("no destination in {pv}"))?
                .to_string();
            let path = pv["path"]
                .as_array()
                .ok_or_else(|| format!("no path in {pv}"))?
                .iter()
                .map(|h| h.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("bad path in {pv}"))?;
            out.push(PathEntry { nexthop, dest, path });
        }
    }
    out.sort();
    Ok(out)
}

/// A kernel nexthop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Hop {
    via: Ipv6Addr,
    dev: String,
}

/// A kernel route: its nexthops (sorted), and how many `nexthop` lines
/// (multipath members) it was printed with.
#[derive(Debug, Clone, Default)]
struct Route {
    hops: Vec<Hop>,
    nexthop_lines: usize,
}

/// The `via ADDR` and `dev NAME` of one line of `ip -6 route show`.
fn parse_hop(line: &str) -> Option<Hop> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| {
        words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1))
    };
    let via = after("via")?.parse().ok()?;
    let dev = after("dev")?.to_string();
    Some(Hop { via, dev })
}

/// Groups the lines of `ip -6 route show` into routes by destination; a
/// multipath route's `nexthop` lines are indented under its first line.
fn parse_routes(lines: &[String]) -> BTreeMap<String, Route> {
    let mut routes: BTreeMap<String, Route> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in lines {
        if line.starts_with(char::is_whitespace) {
            let Some(dest) = &current else { continue };
            let route = routes.get_mut(dest).expect("current route");
            if line.trim_start().starts_with("nexthop") {
                route.nexthop_lines += 1;
            }
            route.hops.extend(parse_hop(line));
        } else {
            let Some(dest) = line.split_whitespace().next() else { continue };
            let route = routes.entry(dest.to_string()).or_default();
            route.hops.extend(parse_hop(line));
            current = Some(dest.to_string());
        }
    }
    for route in routes.values_mut() {
        route.hops.sort();
    }
    routes
}

/// `(nexthop, dest, path)` as a [`PathEntry`].
fn pe(nexthop: Ipv6Addr, dest: &str, path: &[&str]) -> PathEntry {
    PathEntry {
        nexthop,
        dest: dest.to_string(),
        path: path.iter().map(|h| h.to_string()).collect(),
    }
}

/// s1 — t1 — s2, peered, with the given router arguments.
fn trio(tag: &str, extra: &[&str]) -> Net {
    Net::new(
        tag,
        &[
            ("s1", Kind::Server(A1)),
            ("s2", Kind::Server(A2)),
            ("t1", Kind::Transit),
        ],
        &[("s1", "t1"), ("s2", "t1")],
        extra,
    )
}

/// Both servers advertise their /64; waits until everything learned it
/// and the servers reach each other.
fn advertise_both(n: &Net) {
    n.adm("s1", &["advertise-prefixes", P1]);
    n.adm("s2", &["advertise-prefixes", P2]);
    n.wait_counts(&["s1", "s2", "t1"], &[1, 1, 2]);
    n.wait_route("s1", P2, &[n.hop("s1", "t1")]);
    n.wait_route("s2", P1, &[n.hop("s2", "t1")]);
    n.wait_ping("s1", A1, A2);
}

#[test]
fn trio_exchanges_prefixes_and_forwards() {
    if !require_netns("trio_exchanges_prefixes_and_forwards") {
        return;
    }
    let n = trio("rt_trio", &[]);
    // Peering alone installs nothing.
    for node in ["s1", "s2", "t1"] {
        assert_eq!(n.paths(node).unwrap(), vec![], "{node}");
        assert!(n.routes(node).unwrap().is_empty(), "{node}");
    }

    n.adm("s1", &["advertise-prefixes", P1]);
    n.wait_counts(&["s1", "s2", "t1"], &[0, 1, 1]);
    let t1_s1 = n.port("t1", "s1").peer_ll;
    let t1_s2 = n.port("t1", "s2").peer_ll;
    let s1_t1 = n.port("s1", "t1").peer_ll;
    let s2_t1 = n.port("s2", "t1").peer_ll;
    assert_eq!(n.paths("t1").unwrap(), vec![pe(t1_s1, P1, &["s1"])]);
    assert_eq!(n.paths("s2").unwrap(), vec![pe(s2_t1, P1, &["s1", "t1"])]);

    n.adm("s2", &["advertise-prefixes", P2]);
    n.wait_counts(&["s1", "s2", "t1"], &[1, 1, 2]);
    assert_eq!(n.paths("s1").unwrap(), vec![pe(s1_t1, P2, &["s2", "t1"])]);
    let mut want = vec![pe(t1_s1, P1, &["s1"]), pe(t1_s2, P2, &["s2"])];
    want.sort();
    assert_eq!(n.paths("t1").unwrap(), want);

    // One route per destination, each through the direct neighbour.
    n.wait_route("s1", P2, &[n.hop("s1", "t1")]);
    n.wait_route("s2", P1, &[n.hop("s2", "t1")]);
    n.wait_route("t1", P1, &[n.hop("t1", "s1")]);
    n.wait_route("t1", P2, &[n.hop("t1", "s2")]);
    for (node, count) in [("s1", 1), ("s2", 1), ("t1", 2)] {
        let routes = n.routes(node).unwrap();
        assert_eq!(routes.len(), count, "{node}: {routes:?}");
    }
    n.wait_ping("s1", A1, A2);
    n.wait_ping("s2", A2, A1);

    // Withdraw and re-advertise.
    n.adm("s1", &["withdraw-prefixes", P1]);
    n.wait_counts(&["s1", "s2", "t1"], &[1, 0, 1]);
    n.wait_route("s2", P1, &[]);
    n.wait_route("t1", P1, &[]);
    assert_eq!(n.adm("s1", &["get-originated"]), serde_json::json!([]));
    n.adm("s1", &["advertise-prefixes", P1]);
    n.wait_counts(&["s1", "s2", "t1"], &[1, 1, 2]);
    n.wait_route("s2", P1, &[n.hop("s2", "t1")]);
    n.wait_ping("s2", A2, A1);

    // Three at once: exactly three more kernel routes on the other server.
    let three = ["fd00:11::/64", "fd00:12::/64", "fd00:13::/64"];
    let mut args = vec!["advertise-prefixes"];
    args.extend(three);
    n.adm("s1", &args);
    n.wait_counts(&["s1", "s2", "t1"], &[1, 4, 5]);
    for p in three {
        n.wait_route("s2", p, &[n.hop("s2", "t1")]);
    }
    let routes = n.routes("s2").unwrap();
    let mut dests: Vec<&str> = routes.keys().map(String::as_str).collect();
    dests.sort();
    let mut want = vec![P1, three[0], three[1], three[2]];
    want.sort();
    assert_eq!(dests, want, "{routes:?}");
    for p in three {
        assert_eq!(routes[p].hops, vec![n.hop("s2", "t1")], "{p}");
    }

    n.finish();
}

#[test]
fn trio_recovers_from_a_transit_restart() {
    if !require_netns("trio_recovers_from_a_transit_restart") {
        return;
    }
    let mut n = trio("rt_transit", &FAST);
    advertise_both(&n);

    let status = n.f.stop_router("t1").unwrap();
    assert!(status.success(), "t1: {status}");
    assert!(n.routes("t1").unwrap().is_empty(), "t1 kept its routes");
    // The servers expire t1 and drop what they learned from it.
    n.wait_counts(&["s1", "s2"], &[0, 0]);
    n.wait_route("s1", P2, &[]);
    n.wait_route("s2", P1, &[]);

    n.f.restart_router("t1").unwrap();
    for node in ["t1", "s1", "s2"] {
        n.wait_peered(node);
    }
    n.wait_counts(&["s1", "s2", "t1"], &[1, 1, 2]);
    n.wait_route("s1", P2, &[n.hop("s1", "t1")]);
    n.wait_route("s2", P1, &[n.hop("s2", "t1")]);
    n.wait_ping("s1", A1, A2);
    n.wait_ping("s2", A2, A1);

    n.finish();
}

#[test]
fn trio_recovers_from_a_server_restart() {
    if !require_netns("trio_recovers_from_a_server_restart") {
        return;
    }
    let mut n = trio("rt_server", &FAST);
    advertise_both(&n);

    let status = n.f.stop_router("s1").unwrap();
    assert!(status.success(), "s1: {status}");
    assert!(n.routes("s1").unwrap().is_empty(), "s1 kept its routes");
    n.wait_counts(&["s2", "t1"], &[0, 1]);
    n.wait_route("s2", P1, &[]);
    n.wait_route("t1", P1, &[]);

    n.f.restart_router("s1").unwrap();
    // What s1 originates comes back from its store, not from anyone.
    assert_eq!(n.adm("s1", &["get-originated"]), serde_json::json!([P1]));
    for node in ["s1", "t1"] {
        n.wait_peered(node);
    }
    n.wait_counts(&["s1", "s2", "t1"], &[1, 1, 2]);
    n.wait_route("s1", P2, &[n.hop("s1", "t1")]);
    n.wait_route("s2", P1, &[n.hop("s2", "t1")]);
    n.wait_ping("s1", A1, A2);
    n.wait_ping("s2", A2, A1);

    n.finish();
}

#[test]
fn trio_recovers_from_an_admin_expiry() {
    if !require_netns("trio_recovers_from_an_admin_expiry") {
        return;
    }
    let n = trio("rt_expire", &FAST);
    advertise_both(&n);

    let s1_ll = n.port("t1", "s1").peer_ll;
    let s1_index = n.f.ifindex("t1", &n.port("t1", "s1").ifname).unwrap();
    let before = n.f.peers("t1").unwrap();
    let asked = Instant::now();
    n.adm("t1", &["expire-peer", &s1_ll.to_string()]);
    // The peer comes back: in Exchange again, for less time than has passed
    // since the expiry (so it really went through it).
    n.wait("t1 to peer with s1 again", || {
        let peers = n.f.peers("t1")?;
        let p = peers
            .iter()
            .find(|p| p.ifindex == s1_index)
            .ok_or_else(|| format!("no s1 entry: {peers:?}"))?;
        if p.state == "Exchange" && p.duration < asked.elapsed() {
            Ok(())
        } else {
            Err(format!("before: {before:?}, now: {peers:?}"))
        }
    });
    n.wait_counts(&["s1", "s2", "t1"], &[1, 1, 2]);
    n.wait_route("t1", P1, &[n.hop("t1", "s1")]);
    n.wait_route("s2", P1, &[n.hop("s2", "t1")]);
    n.wait_ping("s2", A2, A1);
    n.wait_ping("s1", A1, A2);

    // Expiring an address that is no peer is accepted and changes nothing.
    let peers = n.f.peers("t1").unwrap();
    n.adm("t1", &["expire-peer", "fe80::dead"]);
    let after = n.f.peers("t1").unwrap();
    assert!(after.iter().all(|p| p.state == "Exchange"), "{after:?}");
    for (b, a) in peers.iter().zip(&after) {
        assert!(a.duration >= b.duration, "reset: {peers:?} → {after:?}");
    }
    n.wait_counts(&["s1", "s2", "t1"], &[1, 1, 2]);

    n.finish();
}

/// An imported tunnel endpoint: `(overlay prefix, boundary, vni, metric,
/// nexthop)`.
type Tunnel = (String, String, u64, u64, String);

/// `node`'s imported tunnel endpoints, sorted.
fn tunnels(n: &Net, node: &str) -> Result<Vec<Tunnel>, String> {
    let v = n.f.adm(node, &["tunnel-imported"])?;
    let list = v.as_array().ok_or_else(|| format!("not a list: {v}"))?;
    let mut out = Vec::new();
    for r in list {
        let o = &r["origin"];
        let s = |v: &serde_json::Value| {
            v.as_str().map(str::to_string).ok_or_else(|| format!("in {r}"))
        };
        let u =
            |v: &serde_json::Value| v.as_u64().ok_or_else(|| format!("in {r}"));
        out.push((
            s(&o["overlay_prefix"])?,
            s(&o["boundary_addr"])?,
            u(&o["vni"])?,
            u(&o["metric"])?,
            s(&r["nexthop"])?,
        ));
    }
    out.sort();
    Ok(out)
}

#[test]
fn trio_carries_tunnel_endpoints() {
    if !require_netns("trio_carries_tunnel_endpoints") {
        return;
    }
    let mut n = trio("rt_tunnel", &FAST);
    let ep = ["-o", "203.0.113.0/24", "-b", "fd00:99::1", "-v", "10"];
    let barrier = ["-o", "198.51.100.0/24", "-b", "fd00:99::2", "-v", "11"];
    let adv = |n: &Net, ep: &[&str]| {
        let mut args = vec!["tunnel-advertise"];
        args.extend(ep);
        n.adm("t1", &args);
    };
    let want = |n: &Net, node: &str, eps: &[(&str, &str, u64)]| {
        let nexthop = n.port(node, "t1").peer_ll.to_string();
        let mut v: Vec<_> = eps
            .iter()
            .map(|(o, b, vni)| {
                (o.to_string(), b.to_string(), *vni, 0, nexthop.clone())
            })
            .collect();
        v.sort();
        v
    };
    let wait_tunnels = |n: &Net, eps: &[(&str, &str, u64)]| {
        for node in ["s1", "s2"] {
            let want = want(n, node, eps);
            n.wait(&format!("{node}: tunnel endpoints {want:?}"), || {
                let got = tunnels(n, node)?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("got {got:?}"))
                }
            });
        }
    };
    let one = [("203.0.113.0/24", "fd00:99::1", 10)];
    let two = [one[0], ("198.51.100.0/24", "fd00:99::2", 11)];

    adv(&n, &ep);
    wait_tunnels(&n, &one);
    assert_eq!(tunnels(&n, "t1").unwrap(), vec![], "t1 imported its own");

    // A duplicate changes nothing: once a later change has arrived, the
    // servers still hold the endpoint exactly once.
    adv(&n, &ep);
    let originated = n.adm("t1", &["tunnel-originated"]);
    assert_eq!(originated.as_array().map(Vec::len), Some(1), "{originated}");
    adv(&n, &barrier);
    wait_tunnels(&n, &two);
    let mut args = vec!["tunnel-withdraw"];
    args.extend(barrier);
    n.adm("t1", &args);
    wait_tunnels(&n, &one);

    // A restarted server learns it again.
    n.f.restart_router("s1").unwrap();
    n.wait_peered("s1");
    wait_tunnels(&n, &one);
    assert_eq!(n.adm("s1", &["tunnel-originated"]), serde_json::json!([]));

    // Its withdrawal removes it everywhere.
    let mut args = vec!["tunnel-withdraw"];
    args.extend(ep);
    n.adm("t1", &args);
    wait_tunnels(&n, &[]);
    assert_eq!(n.adm("t1", &["tunnel-originated"]), serde_json::json!([]));

    n.finish();
}

#[test]
fn quartet_keeps_both_origins_of_a_prefix() {
    if !require_netns("quartet_keeps_both_origins_of_a_prefix") {
        return;
    }
    let n = Net::new(
        "rt_quartet",
        &[
            ("s1", Kind::Server(A1)),
            ("s2", Kind::Server(A2)),
            ("s3", Kind::Server("fd00:3::1")),
            ("t1", Kind::Transit),
        ],
        &[("s1", "t1"), ("s2", "t1"), ("s3", "t1")],
        &[],
    );
    n.adm("s1", &["advertise-prefixes", P1]);
    n.adm("s2", &["advertise-prefixes", P2]);
    n.wait_counts(&["s1", "s2", "s3", "t1"], &[1, 1, 2, 2]);

    // s3 serves s1's address too (anycast), so whichever origin the
    // transit's multipath hash picks answers. s1 also learns s3's origin of
    // its own prefix: the path does not name s1, so it is no loop.
    n.f.topo().add_lo_addr("s3", &format!("{A1}/64")).unwrap();
    // The transit re-announces one of the two origins' paths to s2 (s2
    // forwards to the transit either way), and to each origin the other's.
    n.adm("s3", &["advertise-prefixes", P1]);
    n.wait_counts(&["s1", "s2", "s3", "t1"], &[2, 1, 2, 3]);
    let s2_t1 = n.port("s2", "t1").peer_ll;
    let held = n.paths("s2").unwrap();
    assert!(
        held == vec![pe(s2_t1, P1, &["s1", "t1"])]
            || held == vec![pe(s2_t1, P1, &["s3", "t1"])],
        "{held:?}"
    );
    let s1_t1 = n.port("s1", "t1").peer_ll;
    assert!(
        n.paths("s1").unwrap().contains(&pe(s1_t1, P1, &["s3", "t1"])),
        "s1 hears s3's origin of its prefix"
    );
    // The transit spreads over both origins.
    n.wait_route("s2", P1, &[n.hop("s2", "t1")]);
    n.wait_route("t1", P1, &[n.hop("t1", "s1"), n.hop("t1", "s3")]);
    n.wait_ping("s2", A2, A1);

    n.adm("s3", &["withdraw-prefixes", P1]);
    n.wait_counts(&["s1", "s2", "s3", "t1"], &[1, 1, 2, 2]);
    assert_eq!(n.paths("s2").unwrap(), vec![pe(s2_t1, P1, &["s1", "t1"])]);
    n.wait_route("t1", P1, &[n.hop("t1", "s1")]);
    let routes = n.routes("s2").unwrap();
    assert_eq!(
        routes.get(P1).map(|r| r.hops.clone()),
        Some(vec![n.hop("s2", "t1")])
    );
    // Only s1 answers for its address now, and is reached.
    n.f.topo()
        .exec_ok(
            "s3",
            &["ip", "-6", "addr", "del", &format!("{A1}/64"), "dev", "lo"],
        )
        .unwrap();
    n.wait_ping("s2", A2, A1);

    n.finish();
}

/// s1 and s2 joined through both t1 and t2; `victim` is killed, then
/// restarted.
fn ecmp_survives_losing(tag: &str, victim: &str) {
    let survivor = if victim == "t1" { "t2" } else { "t1" };
    let mut n = Net::new(
        tag,
        &[
            ("s1", Kind::Server(A1)),
            ("s2", Kind::Server(A2)),
            ("t1", Kind::Transit),
            ("t2", Kind::Transit),
        ],
        &[("s1", "t1"), ("s1", "t2"), ("s2", "t1"), ("s2", "t2")],
        &FAST,
    );
    n.adm("s1", &["advertise-prefixes", P1]);
    n.adm("s2", &["advertise-prefixes", P2]);
    n.wait_counts(&["s1", "s2", "t1", "t2"], &[2, 2, 2, 2]);
    let both1 = [n.hop("s1", "t1"), n.hop("s1", "t2")];
    let both2 = [n.hop("s2", "t1"), n.hop("s2", "t2")];
    n.wait_route("s1", P2, &both1);
    n.wait_route("s2", P1, &both2);
    // ONE multipath route, with one nexthop line per transit.
    let routes = n.routes("s1").unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[P2].nexthop_lines, 2, "{routes:?}");
    let lines = n.f.kernel_routes("s1").unwrap();
    assert_eq!(
        lines.iter().filter(|l| !l.starts_with(char::is_whitespace)).count(),
        1,
        "{lines:?}"
    );
    n.wait_ping("s1", A1, A2);

    // A dead box forwards nothing: kill the router and stop forwarding.
    n.f.kill_router(victim).unwrap();
    let killed = Instant::now();
    n.f.topo()
        .exec_ok(victim, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])
        .unwrap();
    n.wait_route("s1", P2, &[n.hop("s1", survivor)]);
    n.wait_route("s2", P1, &[n.hop("s2", survivor)]);
    let took = killed.elapsed();
    eprintln!("{victim}'s nexthops left the servers' routes after {took:?}");
    let bound = Duration::from_millis(EXPIRE_MS) + MARGIN;
    assert!(took < bound, "took {took:?}, more than {bound:?}");
    assert_eq!(n.routes("s1").unwrap()[P2].nexthop_lines, 0);
    n.wait_ping("s1", A1, A2);
    n.wait_ping("s2", A2, A1);

    // Back to two nexthops once it returns (its stale routes are removed
    // when it starts).
    n.f.topo()
        .exec_ok(victim, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    n.f.restart_router(victim).unwrap();
    n.wait_peered(victim);
    n.wait_route("s1", P2, &both1);
    n.wait_route("s2", P1, &both2);
    n.wait_ping("s1", A1, A2);

    n.finish();
}

#[test]
fn ecmp_survives_losing_t1() {
    if !require_netns("ecmp_survives_losing_t1") {
        return;
    }
    ecmp_survives_losing("rt_ecmp_t1", "t1");
}

#[test]
fn ecmp_survives_losing_t2() {
    if !require_netns("ecmp_survives_losing_t2") {
        return;
    }
    ecmp_survives_losing("rt_ecmp_t2", "t2");
}

#[test]
fn route_lines_group_into_routes() {
    let lines: Vec<String> = [
        "fd00:1::/64 via fe80::1 dev a proto 221 metric 1024 pref medium",
        "fd00:2::/64 proto 221 metric 1024 pref medium",
        "\tnexthop via fe80::2 dev b weight 1 ",
        "\tnexthop via fe80::3 dev c weight 1 ",
    ]
    .map(str::to_string)
    .to_vec();
    let routes = parse_routes(&lines);
    assert_eq!(routes.len(), 2);
    let hop = |via: &str, dev: &str| Hop {
        via: via.parse().unwrap(),
        dev: dev.to_string(),
    };
    assert_eq!(routes["fd00:1::/64"].hops, vec![hop("fe80::1", "a")]);
    assert_eq!(routes["fd00:1::/64"].nexthop_lines, 0);
    assert_eq!(
        routes["fd00:2::/64"].hops,
        vec![hop("fe80::2", "b"), hop("fe80::3", "c")]
    );
    assert_eq!(routes["fd00:2::/64"].nexthop_lines, 2);
}
