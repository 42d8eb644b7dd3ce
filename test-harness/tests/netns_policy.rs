//! The import policy against a hostile peer, with real routers in network
//! namespaces.
//!
//! A trio s1 — t1 — s2 of real `ddmd`. In the first test a hostile client
//! inside s1's namespace, bound to s1's link-local address on the s1–t1
//! link (the only address t1's exchange server takes requests from on that
//! link), pushes special-purpose destinations, the default route, a
//! 100-hop path and a 300-byte hostname to t1 next to one legitimate
//! prefix: only that prefix (and s1's own) may reach t1's and s2's RIBs and
//! kernels. In the second, t1 holds at most 100 prefixes from a peer: s1
//! originates 150 more than the one it had, t1 keeps 100 without the session
//! ever leaving Exchange, withdrawals still pass, and a new pull fills the
//! room they made.
//!
//! Build the binaries first (`cargo build --workspace --bins`). Every test
//! skips loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpStream};
use std::time::{Duration, Instant};

use ddm_test_harness::fabric::Fabric;
use ddm_test_harness::netns::{require_netns, wait_until};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, Socket, Type};

/// Generous bound for anything that involves the routers' timers, under a
/// loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// The exchange protocol's TCP port.
const EXCHANGE_PORT: u16 = 56797;

/// What s1 originates before t1 starts.
const P1: &str = "fd00:1::/64";

/// The trio, peered: the fabric, and on each side of the s1–t1 link the
/// interface and its link-local address.
struct Trio {
    f: Fabric,
    s1_if: String,
    s1_ll: Ipv6Addr,
    t1_of_s1_ll: Ipv6Addr,
    s2_of_t1_ll: Ipv6Addr,
}

impl Trio {
    /// Builds s1 — t1 — s2, starts the routers (t1 with `t1_extra`) and
    /// waits until every session is in Exchange and t1 has pulled s1.
    ///
    /// s1 originates [`P1`] before t1 starts, so t1 can learn it only from
    /// its pull of s1: once t1 has it, that pull is done and no later one
    /// (which t1 would take as s1's whole set) can undo what s1 pushes.
    fn new(tag: &str, t1_extra: &[&str]) -> Trio {
        let mut f = Fabric::new(tag).unwrap();
        f.topo_mut().node("s1").unwrap();
        f.topo_mut().node("s2").unwrap();
        f.topo_mut().transit("t1").unwrap();
        let a = f.topo_mut().link("s1", "t1").unwrap();
        let b = f.topo_mut().link("s2", "t1").unwrap();
        let s1_ll = f.topo().wait_link_local("s1", &a.a_if, DEADLINE).unwrap();
        let t1_of_s1_ll =
            f.topo().wait_link_local("t1", &a.b_if, DEADLINE).unwrap();
        f.topo().wait_link_local("s2", &b.a_if, DEADLINE).unwrap();
        let s2_of_t1_ll =
            f.topo().wait_link_local("t1", &b.b_if, DEADLINE).unwrap();
        f.start_router("s1", "server", &[&a.a_if], &[]).unwrap();
        f.adm("s1", &["advertise-prefixes", P1]).unwrap();
        f.spawn_router("s2", "server", &[&b.a_if], &[]).unwrap();
        let t1_ifs = [a.b_if.as_str(), b.b_if.as_str()];
        // t1 serves its counters, to tell when its first pull of s1 is in.
        let mut t1_args = t1_extra.to_vec();
        t1_args.extend(["--metrics-addr", "[::1]:9100"]);
        f.spawn_router("t1", "transit", &t1_ifs, &t1_args).unwrap();
        for node in ["s2", "t1"] {
            f.wait_ready(node).unwrap();
        }
        let t = Trio { f, s1_if: a.a_if, s1_ll, t1_of_s1_ll, s2_of_t1_ll };
        for (node, n) in [("s1", 1), ("s2", 1), ("t1", 2)] {
            t.f.wait_peer_state(node, n, "Exchange", DEADLINE)
                .unwrap_or_else(|e| t.fail(&e));
        }
        t.wait("t1 to hold s1's prefix", || {
            let got = t.paths("t1")?;
            got.iter()
                .any(|(_, d, _)| d == P1)
                .then_some(())
                .ok_or(format!("{got:?}"))
        });
        // s1 pushes its whole view when the session starts, so holding P1
        // does not mean t1's own pull of s1 is in. That answer is taken as
        // s1's whole set, so a push accepted before it would be withdrawn
        // by it: wait for it.
        t.wait("t1's first pull of s1 to complete", || {
            let v = t.f.adm("t1", &["counters", "--metrics-port", "9100"])?;
            let pulls = v["exchange"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["peer"] == t.s1_ll.to_string())
                .filter_map(|p| p["counters"]["pulls_sent"].as_u64())
                .sum::<u64>();
            (pulls >= 1).then_some(()).ok_or(format!("pulls_sent {pulls}"))
        });
        t
    }

    /// Panics with `msg`, pointing at the routers' logs (kept on panic).
    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n(router logs under {})", self.f.dir().display())
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

    /// `node`'s learned paths as (nexthop, destination, path), sorted.
    fn paths(
        &self,
        node: &str,
    ) -> Result<BTreeSet<(Ipv6Addr, String, Vec<String>)>, String> {
        let v = self.f.adm(node, &["get-prefixes"])?;
        let map = v.as_object().ok_or_else(|| format!("not a map: {v}"))?;
        let mut out = BTreeSet::new();
        for (nexthop, pvs) in map {
            let nexthop = nexthop.parse().map_err(|_| format!("in {v}"))?;
            for pv in pvs.as_array().ok_or_else(|| format!("in {v}"))? {
                let dest = pv["destination"].as_str().ok_or("no dest")?;
                let path = pv["path"]
                    .as_array()
                    .ok_or("no path")?
                    .iter()
                    .map(|h| h.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("bad path")?;
                out.insert((nexthop, dest.to_string(), path));
            }
        }
        Ok(out)
    }

    /// The destinations of `node`'s kernel routes of ours (`proto 221`).
    fn routes(&self, node: &str) -> Result<BTreeSet<String>, String> {
        Ok(self
            .f
            .kernel_routes(node)?
            .iter()
            .filter(|l| !l.starts_with(char::is_whitespace))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    }

    /// `t1`'s `import refused` log records of `reason`.
    fn refusals(&self, reason: &str) -> Vec<Value> {
        self.f
            .log_records("t1", "import refused")
            .into_iter()
            .filter(|r| r["reason"] == reason)
            .collect()
    }

    /// t1's entry for s1 in `get-peers`.
    fn t1_sees_s1(&self) -> Result<ddm_test_harness::fabric::Peer, String> {
        let peers = self.f.peers("t1")?;
        peers
            .iter()
            .find(|p| p.addr == self.s1_ll)
            .cloned()
            .ok_or_else(|| format!("t1 has no s1: {peers:?}"))
    }

    /// Stops every router with SIGTERM and checks each exited cleanly and
    /// left no route of ours behind.
    fn finish(mut self) {
        for node in ["s1", "s2", "t1"] {
            let status = self.f.stop_router(node).unwrap();
            assert!(status.success(), "{node}: ddmd exited with {status}");
        }
        for node in ["s1", "s2", "t1"] {
            let left = self.f.kernel_routes(node).unwrap();
            assert!(left.is_empty(), "{node}: routes left behind: {left:?}");
        }
    }

    /// From inside s1's namespace, bound to s1's link-local address on the
    /// s1–t1 link, PUTs `body` to t1's `/v3/push`; returns the status line.
    fn hostile_push(&self, body: &Value) -> Result<String, String> {
        let ifindex = self.f.ifindex("s1", &self.s1_if)?;
        let from = SocketAddrV6::new(self.s1_ll, 0, 0, ifindex);
        let to = SocketAddrV6::new(self.t1_of_s1_ll, EXCHANGE_PORT, 0, ifindex);
        let body = body.to_string();
        self.f.topo().in_node("s1", move || {
            let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
            let sock =
                Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))
                    .map_err(|err| e("socket", err))?;
            sock.bind(&from.into()).map_err(|err| e("bind", err))?;
            sock.connect_timeout(&to.into(), Duration::from_secs(5))
                .map_err(|err| e("connect", err))?;
            let mut stream: TcpStream = sock.into();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|err| e("timeout", err))?;
            let head = format!(
                "PUT /v3/push HTTP/1.1\r\nHost: [{}%{}]:{}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                to.ip(),
                ifindex,
                to.port(),
                body.len()
            );
            stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(body.as_bytes()))
                .map_err(|err| e("write", err))?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).map_err(|err| e("read", err))?;
            let text = String::from_utf8_lossy(&answer);
            Ok(text.lines().next().unwrap_or_default().to_string())
        })
    }
}

/// `{ destination, path }`.
fn pv(dest: &str, path: &[String]) -> Value {
    json!({ "destination": dest, "path": path })
}

#[test]
fn hostile_routes_never_reach_the_rib_or_kernel() {
    if !require_netns("hostile_routes_never_reach_the_rib_or_kernel") {
        return;
    }
    let t = Trio::new("pol_hostile", &[]);
    let s1 = vec!["s1".to_string()];
    let legit = "fd00:77::/64";
    let special = [
        "fe80::/10",
        "fe80::/64",
        "ff00::/8",
        "ff02::/16",
        "::1/128",
        "::/128",
        "::ffff:0:0/96",
        "::/1",
    ];
    let hops: Vec<String> = (0..100).map(|i| format!("hop{i}")).collect();
    let mut announce: Vec<Value> = special.iter().map(|d| pv(d, &s1)).collect();
    announce.extend([
        pv("::/0", &s1),
        pv("fd00:aa::/64", &hops),
        pv("fd00:bb::/64", &["h".repeat(300)]),
        pv(legit, &s1),
    ]);
    let tunnel = |boundary: &str, vni: u64| {
        json!({ "overlay_prefix": "203.0.113.0/24",
                "boundary_addr": boundary, "vni": vni, "metric": 0 })
    };
    let body = json!({
        "underlay": { "announce": announce, "withdraw": [] },
        "tunnel": {
            "announce": [tunnel("fe80::1", 5), tunnel("fd00:99::1", 1 << 24)],
            "withdraw": [],
        },
    });
    let status = t.hostile_push(&body).unwrap_or_else(|e| t.fail(&e));
    assert!(status.starts_with("HTTP/1.1 204"), "push answered {status:?}");

    // Only the legitimate prefixes (s1's own and the hostile push's one),
    // in both RIBs and both kernels.
    let via_t1 = vec!["s1".to_string(), "t1".to_string()];
    let want_t1 = BTreeSet::from([
        (t.s1_ll, P1.to_string(), s1.clone()),
        (t.s1_ll, legit.to_string(), s1.clone()),
    ]);
    let want_s2 = BTreeSet::from([
        (t.s2_of_t1_ll, P1.to_string(), via_t1.clone()),
        (t.s2_of_t1_ll, legit.to_string(), via_t1),
    ]);
    t.wait("s2 to learn the legitimate prefix", || {
        let got = t.paths("s2")?;
        (got == want_s2).then_some(()).ok_or(format!("{got:?}"))
    });
    assert_eq!(t.paths("t1").unwrap(), want_t1);
    let legit_only = BTreeSet::from([P1.to_string(), legit.to_string()]);
    for node in ["t1", "s2"] {
        t.wait(&format!("{node}: routes to {legit_only:?} only"), || {
            let got = t.routes(node)?;
            (got == legit_only).then_some(()).ok_or(format!("{got:?}"))
        });
    }
    assert_eq!(t.paths("s1").unwrap(), BTreeSet::new());
    for node in ["s1", "s2", "t1"] {
        let lines = t.f.kernel_routes(node).unwrap();
        assert!(
            !lines.iter().any(|l| l.starts_with("default")),
            "{node}: a default route of ours: {lines:?}"
        );
    }
    let tunnels = t.f.adm("t1", &["tunnel-imported"]).unwrap();
    assert_eq!(tunnels, json!([]), "t1 imported a bad tunnel endpoint");

    // Each refusal is counted by reason in t1's log.
    for (reason, n) in [
        ("special_purpose_destination", special.len()),
        ("default_route", 1),
        ("path_too_long", 1),
        ("hostname_too_long", 1),
        ("special_purpose_boundary", 1),
        ("vni_too_large", 1),
    ] {
        t.wait(&format!("t1 to log {n} {reason} refusal(s)"), || {
            let records = t.refusals(reason);
            let counted = records.iter().any(|r| {
                r["refused"] == n
                    && r["peer"].as_str().is_some_and(|p| {
                        p.starts_with(&format!("{}%", t.s1_ll))
                    })
            });
            counted.then_some(()).ok_or(format!("{records:?}"))
        });
    }
    // The session survived all of it.
    assert_eq!(t.t1_sees_s1().unwrap().state, "Exchange");

    t.finish();
}

#[test]
fn the_per_peer_limit_holds_while_the_session_stays_up() {
    if !require_netns("the_per_peer_limit_holds_while_the_session_stays_up") {
        return;
    }
    let t = Trio::new("pol_limit", &["--max-prefixes-per-peer", "100"]);
    let before = Instant::now();
    let mut prefixes: Vec<String> =
        (0..150).map(|i| format!("fd00:{:x}::/64", 0x100 + i)).collect();
    let mut args = vec!["advertise-prefixes"];
    args.extend(prefixes.iter().map(String::as_str));
    t.f.adm("s1", &args).unwrap_or_else(|e| t.fail(&e));
    // With P1, held since the start, s1 now originates 151.
    prefixes.push(P1.to_string());

    let held = |node: &str| -> Result<BTreeSet<String>, String> {
        Ok(t.paths(node)?.into_iter().map(|(_, d, _)| d).collect())
    };
    // Once t1 holds 100 from s1, whatever else s1 announces is refused:
    // the count cannot change any more.
    t.wait("t1 to hold 100 prefixes and log the refusals", || {
        let (n, logged) = (held("t1")?.len(), t.refusals("prefix_limit"));
        (n == 100 && !logged.is_empty())
            .then_some(())
            .ok_or(format!("{n} held; log: {logged:?}"))
    });
    let on_t1 = held("t1").unwrap();
    assert_eq!(on_t1.len(), 100, "{on_t1:?}");
    assert!(on_t1.iter().all(|d| prefixes.contains(d)), "{on_t1:?}");
    t.wait("s2 to learn t1's 100", || {
        let got = held("s2")?;
        (got == on_t1).then_some(()).ok_or(format!("{} held", got.len()))
    });
    t.wait("t1's kernel to hold the 100", || {
        let got = t.routes("t1")?;
        (got == on_t1).then_some(()).ok_or(format!("{} routes", got.len()))
    });

    // The session never left Exchange: on both sides it has been up since
    // before the advertisement.
    let since = before.elapsed();
    let p = t.t1_sees_s1().unwrap();
    assert!(p.state == "Exchange" && p.duration >= since, "t1: {p:?}");
    let s1_peers = t.f.peers("s1").unwrap();
    assert!(
        s1_peers.iter().all(|p| p.state == "Exchange" && p.duration >= since),
        "s1: {s1_peers:?}"
    );

    // Withdrawing held prefixes still works, everywhere.
    let gone: Vec<&str> = on_t1.iter().take(10).map(String::as_str).collect();
    let mut args = vec!["withdraw-prefixes"];
    args.extend(gone.iter().copied());
    t.f.adm("s1", &args).unwrap_or_else(|e| t.fail(&e));
    let mut left = on_t1.clone();
    for d in &gone {
        left.remove(*d);
    }
    for node in ["t1", "s2"] {
        t.wait(&format!("{node} to drop the 10 withdrawn"), || {
            let (paths, routes) = (held(node)?, t.routes(node)?);
            (paths == left && routes == left).then_some(()).ok_or(format!(
                "{} paths, {} routes",
                paths.len(),
                routes.len()
            ))
        });
    }
    // What was refused is not remembered: a new pull of s1's set (141 now)
    // fills the room again, up to the limit.
    t.f.adm("t1", &["sync"]).unwrap_or_else(|e| t.fail(&e));
    t.wait("t1 to fill up to 100 again", || {
        let got = held("t1")?;
        (got.len() == 100 && got.is_superset(&left))
            .then_some(())
            .ok_or(format!("{} held", got.len()))
    });
    assert_eq!(t.t1_sees_s1().unwrap().state, "Exchange");

    t.finish();
}
