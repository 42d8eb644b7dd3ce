//! Discovery and peering over real sockets, proven in network namespaces.
//!
//! Each test runs real `ddmd` routers (see [`Fabric`]) in namespaces joined
//! by veth pairs and checks what the discovery protocol promises: routers find each other
//! by link-local multicast, a link going down expires the peer on both sides
//! at once, a dead router expires after the threshold, a renumbered peer
//! stays up, garbage is dropped, and hand-built packets from a plain socket
//! are understood in both protocol versions.
//!
//! Build the binaries first (`cargo build --workspace --bins`). Every test
//! skips loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::collections::BTreeSet;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use ddm_test_harness::fabric::{Fabric, Peer};
use ddm_test_harness::netns::{require_netns, wait_until, Link};

/// DDM's discovery multicast group and port.
const DDM_GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xdd);
const DDM_PORT: u16 = 3549;

/// Packet flags and kinds on the wire.
const SOLICIT: u8 = 0x01;
const ADVERTISE: u8 = 0x02;
const SERVER: u8 = 0;
const TRANSIT: u8 = 1;

/// Generous bound for anything that involves the routers' timers, under a
/// loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(15);

/// Extra time allowed on top of a protocol timer for process start-up,
/// `ddmadm` round trips and scheduling on a busy machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// A discovery packet as the wire carries it.
fn packet(version: u8, flags: u8, kind: u8, host: &str) -> Vec<u8> {
    let mut p = vec![version, flags, kind, host.len() as u8];
    p.extend_from_slice(host.as_bytes());
    p
}

/// Whether `p` is a well-formed discovery packet (the discovery packet layout: bytes after
/// the hostname are ignored, reserved flag bits too).
fn is_valid_packet(p: &[u8]) -> bool {
    p.len() >= 4
        && (p[0] == 2 || p[0] == 3)
        && p[1] & (SOLICIT | ADVERTISE) != 0
        && p[2] <= 1
        && p.len() >= 4 + p[3] as usize
        && std::str::from_utf8(&p[4..4 + p[3] as usize]).is_ok()
}

/// Nodes `s1` and `s2` joined by one link, each with its link-local address
/// ready, and a server router on each with `extra` arguments.
fn server_pair(tag: &str, extra: &[&str]) -> (Fabric, Link) {
    let mut f = Fabric::new(tag).unwrap();
    f.topo_mut().node("s1").unwrap();
    f.topo_mut().node("s2").unwrap();
    let link = f.topo_mut().link("s1", "s2").unwrap();
    f.topo().wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
    f.topo().wait_link_local("s2", &link.b_if, DEADLINE).unwrap();
    f.start_router("s1", "server", &[&link.a_if], extra).unwrap();
    f.start_router("s2", "server", &[&link.b_if], extra).unwrap();
    (f, link)
}

/// The single peer of `node`; fails unless there is exactly one.
fn only_peer(f: &Fabric, node: &str) -> Peer {
    let peers = f.peers(node).unwrap();
    assert_eq!(peers.len(), 1, "{node}: {peers:?}");
    peers.into_iter().next().unwrap()
}

/// Waits until `node`'s only peer satisfies `ok`, and returns it.
fn wait_only_peer(
    f: &Fabric,
    node: &str,
    what: &str,
    deadline: Duration,
    ok: impl Fn(&Peer) -> bool,
) -> Peer {
    let mut last = Err(String::new());
    let waited = wait_until(deadline, &format!("{node}: {what}"), || {
        last = f.peers(node);
        matches!(&last, Ok(p) if p.len() == 1 && ok(&p[0]))
    });
    if let Err(e) = waited {
        panic!("{e}; last get-peers: {last:?}\nlog:\n{}", f.log(node));
    }
    last.unwrap().remove(0)
}

/// `node`'s log records of the discovery component with message `msg`.
fn discovery_records(
    f: &Fabric,
    node: &str,
    msg: &str,
) -> Vec<serde_json::Value> {
    f.log_records(node, msg)
        .into_iter()
        .filter(|r| r["component"] == "discovery")
        .collect()
}

#[test]
fn two_servers_peer_within_a_solicit_interval() {
    if !require_netns("two_servers_peer_within_a_solicit_interval") {
        return;
    }
    let solicit = Duration::from_millis(1000);
    let mut f = Fabric::new("disc_pair").unwrap();
    f.topo_mut().node("s1").unwrap();
    f.topo_mut().node("s2").unwrap();
    let link = f.topo_mut().link("s1", "s2").unwrap();
    let ll1 = f.topo().wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
    let ll2 = f.topo().wait_link_local("s2", &link.b_if, DEADLINE).unwrap();
    let args = ["--solicit-interval", "1000"];
    f.start_router("s1", "server", &[&link.a_if], &args).unwrap();

    // s1 already solicits; from s2's start, s2's first solicitation makes
    // s1 advertise at once, and s1's next solicitation (within one
    // interval) makes s2 advertise.
    let start = Instant::now();
    f.start_router("s2", "server", &[&link.b_if], &args).unwrap();
    let both_exchange = |f: &Fabric| {
        ["s1", "s2"].iter().all(|n| {
            f.peers(n).is_ok_and(|p| p.len() == 1 && p[0].state == "Exchange")
        })
    };
    wait_until(DEADLINE, "s1 and s2 to peer", || both_exchange(&f))
        .unwrap_or_else(|e| {
            panic!("{e}\ns1 log:\n{}\ns2 log:\n{}", f.log("s1"), f.log("s2"))
        });
    let took = start.elapsed();
    eprintln!("s1 and s2 peered {took:?} after s2 was spawned");

    let p1 = only_peer(&f, "s1");
    assert_eq!(p1.ifindex, f.ifindex("s1", &link.a_if).unwrap(), "{p1:?}");
    assert_eq!((p1.host.as_str(), p1.addr, p1.kind), ("s2", ll2, 0));
    let p2 = only_peer(&f, "s2");
    assert_eq!(p2.ifindex, f.ifindex("s2", &link.b_if).unwrap(), "{p2:?}");
    assert_eq!((p2.host.as_str(), p2.addr, p2.kind), ("s1", ll1, 0));
    assert!(
        took < solicit + MARGIN,
        "peering took {took:?}, more than the solicit interval {solicit:?} \
         + {MARGIN:?}"
    );
    // Nothing was announced, so nothing was installed.
    assert_eq!(f.kernel_routes("s1").unwrap(), Vec::<String>::new());
}

#[test]
fn transit_peers_with_three_servers() {
    if !require_netns("transit_peers_with_three_servers") {
        return;
    }
    let args = ["--solicit-interval", "1000"];
    let mut f = Fabric::new("disc_transit").unwrap();
    f.topo_mut().transit("t1").unwrap();
    let servers = ["s1", "s2", "s3"];
    let mut links = Vec::new();
    for s in servers {
        f.topo_mut().node(s).unwrap();
        links.push(f.topo_mut().link("t1", s).unwrap());
    }
    let mut ll_t1 = Vec::new();
    let mut ll_s = Vec::new();
    for l in &links {
        ll_t1.push(f.topo().wait_link_local("t1", &l.a_if, DEADLINE).unwrap());
        ll_s.push(f.topo().wait_link_local(&l.b, &l.b_if, DEADLINE).unwrap());
        f.start_router(&l.b, "server", &[&l.b_if], &args).unwrap();
    }
    let t1_ifs: Vec<&str> = links.iter().map(|l| l.a_if.as_str()).collect();
    f.start_router("t1", "transit", &t1_ifs, &args).unwrap();

    let peers = f
        .wait_peer_state("t1", 3, "Exchange", DEADLINE)
        .unwrap_or_else(|e| panic!("{e}\nt1 log:\n{}", f.log("t1")));
    let want_keys: BTreeSet<u32> =
        t1_ifs.iter().map(|i| f.ifindex("t1", i).unwrap()).collect();
    let keys: BTreeSet<u32> = peers.iter().map(|p| p.ifindex).collect();
    assert_eq!(keys, want_keys, "{peers:?}");
    for (i, l) in links.iter().enumerate() {
        let index = f.ifindex("t1", &l.a_if).unwrap();
        let p = peers.iter().find(|p| p.ifindex == index).unwrap();
        assert_eq!((p.host.as_str(), p.addr, p.kind), (&*l.b, ll_s[i], 0));
    }
    for (i, l) in links.iter().enumerate() {
        let p =
            f.wait_peer_state(&l.b, 1, "Exchange", DEADLINE).unwrap().remove(0);
        assert_eq!(p.ifindex, f.ifindex(&l.b, &l.b_if).unwrap());
        assert_eq!((p.host.as_str(), p.addr, p.kind), ("t1", ll_t1[i], 1));
    }
}

#[test]
fn link_down_expires_the_peer_on_both_sides_at_once() {
    if !require_netns("link_down_expires_the_peer_on_both_sides_at_once") {
        return;
    }
    // With a 60 s threshold, only the link watcher can expire the peers
    // within seconds: s1's end goes down, s2's end loses its carrier.
    let (f, link) = server_pair(
        "disc_linkdown",
        &["--solicit-interval", "1000", "--expire-threshold", "60000"],
    );
    for n in ["s1", "s2"] {
        f.wait_peer_state(n, 1, "Exchange", DEADLINE).unwrap();
    }
    let start = Instant::now();
    f.topo().link_set("s1", &link.a_if, false).unwrap();
    let limit = Duration::from_secs(3);
    let mut last = (Vec::new(), Vec::new());
    let gone = wait_until(limit, "both peers to leave Exchange", || {
        last = (f.peers("s1").unwrap(), f.peers("s2").unwrap());
        [&last.0, &last.1]
            .iter()
            .all(|p| p.iter().all(|p| p.state != "Exchange"))
    });
    if let Err(e) = gone {
        panic!(
            "{e}: s1 {:?}, s2 {:?}\ns1 log:\n{}\ns2 log:\n{}",
            last.0,
            last.1,
            f.log("s1"),
            f.log("s2")
        );
    }
    eprintln!("both sides left Exchange {:?} after link down", start.elapsed());
    // Both sides remember who the peer was.
    assert_eq!(last.0.len(), 1, "{last:?}");
    assert_eq!(last.1.len(), 1, "{last:?}");
    assert_eq!(last.0[0].host, "s2");
    assert_eq!(last.1[0].host, "s1");

    f.topo().link_set("s1", &link.a_if, true).unwrap();
    for n in ["s1", "s2"] {
        f.wait_peer_state(n, 1, "Exchange", DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\n{n} log:\n{}", f.log(n)));
    }
}

#[test]
fn killed_router_expires_after_the_threshold() {
    if !require_netns("killed_router_expires_after_the_threshold") {
        return;
    }
    let threshold = Duration::from_millis(3000);
    let (mut f, _link) = server_pair(
        "disc_kill",
        &["--solicit-interval", "500", "--expire-threshold", "3000"],
    );
    for n in ["s1", "s2"] {
        f.wait_peer_state(n, 1, "Exchange", DEADLINE).unwrap();
    }
    let start = Instant::now();
    f.kill_router("s2").unwrap();
    let p = wait_only_peer(&f, "s1", "peer s2 expired", DEADLINE, |p| {
        p.state != "Exchange"
    });
    let took = start.elapsed();
    eprintln!("s1 expired s2 {took:?} after SIGKILL");
    assert_eq!((p.state.as_str(), p.host.as_str()), ("Expired", "s2"));
    // Whichever notices first, the silent discovery or the refused
    // exchange, the peer is gone within the threshold.
    assert!(took < threshold + MARGIN, "{took:?}");
    assert!(f.is_running("s1"));
}

#[test]
fn renumbered_peer_stays_in_exchange() {
    if !require_netns("renumbered_peer_stays_in_exchange") {
        return;
    }
    let (f, link) =
        server_pair("disc_renumber", &["--solicit-interval", "1000"]);
    let old = f.topo().link_local_addr("s2", &link.b_if).unwrap();
    let new: Ipv6Addr = "fe80::beef".parse().unwrap();
    assert_ne!(old, new);
    // Let the peering age, so a restart from zero would be unmistakable.
    let before =
        wait_only_peer(&f, "s1", "s2 in Exchange for 2 s", DEADLINE, |p| {
            p.state == "Exchange" && p.duration >= Duration::from_secs(2)
        });
    let before_done = Instant::now();
    assert_eq!(before.addr, old);

    let ns2 = f.topo().ns("s2").unwrap().to_string();
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns2, "-6", "addr"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["add", "fe80::beef/64", "dev", &link.b_if, "nodad"]);
    ip(&["del", &format!("{old}/64"), "dev", &link.b_if]);

    let after_start = Instant::now();
    let after =
        wait_only_peer(&f, "s1", "s2 renumbered", DEADLINE, |p| p.addr == new);
    let after = if after.state == "Exchange" {
        after
    } else {
        panic!("s1's peer left Exchange while renumbering: {after:?}")
    };
    assert_eq!(after.host, "s2");
    // Never restarted: it aged at least by the time between the queries.
    let gap = after_start - before_done;
    assert!(
        after.duration >= before.duration + gap,
        "s1's peer restarted while renumbering: {:?} before, {:?} after, \
         {gap:?} apart\ns1 log:\n{}",
        before.duration,
        after.duration,
        f.log("s1")
    );
    assert_eq!(
        discovery_records(&f, "s1", "peer down"),
        Vec::<serde_json::Value>::new(),
        "{}",
        f.log("s1")
    );
    let renumbered = discovery_records(&f, "s1", "peer renumbered");
    assert_eq!(renumbered.len(), 1, "{}", f.log("s1"));
    assert_eq!(renumbered[0]["old"], old.to_string());
    assert_eq!(renumbered[0]["new"], new.to_string());
    // s2, whose own address changed, reopens its interface; it must end
    // up peered with s1 again.
    let back =
        wait_only_peer(&f, "s2", "s1 in Exchange again", DEADLINE, |p| {
            p.state == "Exchange"
        });
    assert_eq!(back.host, "s1");
}

/// A deterministic stream of invalid discovery datagrams of many shapes.
struct Garbage(u64);

impl Garbage {
    fn next_u64(&mut self) -> u64 {
        // xorshift64*: plenty for test data, no dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next_u64() % n) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    fn datagram(&mut self, i: usize) -> Vec<u8> {
        let valid = |g: &mut Garbage| {
            let host = "g".repeat(g.below(40));
            packet(
                2 + g.below(2) as u8,
                1 + g.below(3) as u8,
                g.below(2) as u8,
                &host,
            )
        };
        let mut p = match i % 8 {
            // Random bytes, short.
            0 => {
                let len = self.below(65);
                self.bytes(len)
            }
            // A valid packet cut short.
            1 => {
                let mut p = valid(self);
                let len = self.below(p.len() as u64);
                p.truncate(len);
                p
            }
            // Unknown version.
            2 => {
                let mut p = valid(self);
                p[0] = [0, 1, 4, 5, 0x7f, 0xff][self.below(6)];
                p
            }
            // Unknown kind.
            3 => {
                let mut p = valid(self);
                p[2] = 2 + self.below(254) as u8;
                p
            }
            // A length byte far beyond the datagram.
            4 => {
                let mut p = valid(self);
                p[3] = 255;
                p.truncate(4 + self.below(100));
                p
            }
            // A hostname that is not UTF-8.
            5 => packet(2, ADVERTISE, SERVER, "xx")
                .into_iter()
                .take(4)
                .chain([0xc3, 0x28])
                .collect(),
            // Neither solicitation nor advertisement.
            6 => {
                let mut p = valid(self);
                p[1] &= !(SOLICIT | ADVERTISE);
                p
            }
            // Random bytes, up to a full frame.
            _ => {
                let len = self.below(1401);
                self.bytes(len)
            }
        };
        if is_valid_packet(&p) {
            // Random bytes can form a packet; make sure none does.
            p[0] = 0xff;
        }
        p
    }
}

#[test]
fn garbage_datagrams_are_dropped() {
    if !require_netns("garbage_datagrams_are_dropped") {
        return;
    }
    let (f, link) =
        server_pair("disc_garbage", &["--solicit-interval", "1000"]);
    for n in ["s1", "s2"] {
        f.wait_peer_state(n, 1, "Exchange", DEADLINE).unwrap();
    }
    let ll1 = f.topo().link_local_addr("s1", &link.a_if).unwrap();
    let if2 = f.ifindex("s2", &link.b_if).unwrap();
    let before = only_peer(&f, "s1");
    let before_done = Instant::now();

    // From s2's namespace (so from s2's link-local address), unicast to s1
    // and multicast to the group (s2's own router hears those too).
    let sock = f.topo().in_node("s2", || {
        UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))
            .unwrap()
    });
    let unicast = SocketAddrV6::new(ll1, DDM_PORT, 0, if2);
    let group = SocketAddrV6::new(DDM_GROUP, DDM_PORT, 0, if2);
    let mut gen = Garbage(0x5eed_dd3d_0bad_cafe);
    let mut sent = 0;
    let mut errors = Vec::new();
    for i in 0..10_000 {
        let p = gen.datagram(i);
        assert!(!is_valid_packet(&p), "{p:?}");
        let to = if i % 2 == 0 { unicast } else { group };
        match sock.send_to(&p, to) {
            Ok(_) => sent += 1,
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(
        sent >= 9_900,
        "only {sent} sent: {:?}",
        &errors[..5.min(errors.len())]
    );

    // Both routers stay up and keep the peering, without a restart, for
    // two more solicit intervals after the flood.
    let flood_end = only_peer(&f, "s1").duration;
    let after = wait_only_peer(
        &f,
        "s1",
        "peering to outlive the flood",
        DEADLINE,
        |p| {
            p.state != "Exchange"
                || p.duration >= flood_end + Duration::from_secs(2)
        },
    );
    assert!(f.is_running("s1"), "s1 died: {}", f.stderr("s1"));
    assert!(f.is_running("s2"), "s2 died: {}", f.stderr("s2"));
    assert_eq!((after.state.as_str(), after.host.as_str()), ("Exchange", "s2"));
    assert!(
        after.duration >= before.duration + before_done.elapsed() / 2,
        "s1's peer restarted: {before:?} then {after:?}"
    );
    let p2 = only_peer(&f, "s2");
    assert_eq!((p2.state.as_str(), p2.host.as_str()), ("Exchange", "s1"));
    assert_eq!(
        discovery_records(&f, "s1", "peer down"),
        Vec::<serde_json::Value>::new(),
        "{}",
        f.log("s1")
    );
}

#[test]
fn hand_built_packets_of_both_versions_are_understood() {
    if !require_netns("hand_built_packets_of_both_versions_are_understood") {
        return;
    }
    let mut f = Fabric::new("disc_hand").unwrap();
    f.topo_mut().node("s1").unwrap();
    f.topo_mut().node("f1").unwrap();
    let link = f.topo_mut().link("s1", "f1").unwrap();
    let ll_s1 = f.topo().wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
    let ll_f1 = f.topo().wait_link_local("f1", &link.b_if, DEADLINE).unwrap();
    let if_f1 = f.ifindex("f1", &link.b_if).unwrap();
    f.start_router("s1", "server", &[&link.a_if], &[]).unwrap();

    // A plain socket where a router's would be: f1's link-local address,
    // the discovery port. Only unicast to that address reaches it.
    let local = SocketAddrV6::new(ll_f1, DDM_PORT, 0, if_f1);
    let sock = f.topo().in_node("f1", || UdpSocket::bind(local).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let group = SocketAddrV6::new(DDM_GROUP, DDM_PORT, 0, if_f1);

    for version in [2, 3] {
        let solicitation = packet(version, SOLICIT, SERVER, "f1");
        let end = Instant::now() + DEADLINE;
        let answer = loop {
            assert!(
                Instant::now() < end,
                "no advertisement for a v{version} solicitation\ns1 log:\n{}",
                f.log("s1")
            );
            // Resent until answered: the first may beat s1's socket.
            sock.send_to(&solicitation, group).unwrap();
            let mut buf = [0u8; 512];
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let std::net::SocketAddr::V6(from) = from else {
                        panic!("IPv4 source {from}")
                    };
                    assert_eq!(*from.ip(), ll_s1, "from {from}");
                    break buf[..n].to_vec();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
        };
        assert!(answer.len() >= 4, "v{version}: {answer:?}");
        assert_eq!(answer[0], 2, "s1 speaks version 2: {answer:?}");
        assert_ne!(
            answer[1] & ADVERTISE,
            0,
            "not an advertisement: {answer:?}"
        );
        assert_eq!(answer[2], SERVER, "{answer:?}");
        let len = answer[3] as usize;
        assert_eq!(&answer[4..4 + len], b"s1", "{answer:?}");
    }

    // A version-3 router advertising itself is accepted as s1's peer.
    let advertisement = packet(3, ADVERTISE, TRANSIT, "foreign3");
    let to = SocketAddrV6::new(ll_s1, DDM_PORT, 0, if_f1);
    let mut last = Err(String::new());
    wait_until(DEADLINE, "s1 to list foreign3", || {
        sock.send_to(&advertisement, to).unwrap();
        last = f.peers("s1");
        matches!(&last, Ok(p) if p.iter().any(|p| p.host == "foreign3"))
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}\ns1 log:\n{}", f.log("s1")));
    let peers = last.unwrap();
    let p = peers.iter().find(|p| p.host == "foreign3").unwrap();
    assert_eq!((p.addr, p.kind), (ll_f1, 1), "{p:?}");
    assert_eq!(p.ifindex, f.ifindex("s1", &link.a_if).unwrap());
    let up = f.log_records("s1", "peer up");
    assert!(
        up.iter().any(|r| r["host"] == "foreign3" && r["version"] == 3),
        "{up:?}"
    );
}
