//! Discovery under a solicitation flood, in network namespaces.
//!
//! A plain UDP socket in the peer's namespace, on a second link-local
//! address of the peer's interface, sends 5,000 unicast solicitations to a
//! real router. The router answers a bounded number of them (per-source
//! token bucket: burst 4, then 2 per second), never one each, while the
//! real router next to the socket keeps peering.
//!
//! Build the binaries first (`cargo build --workspace --bins`). Skips
//! loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use ddm_test_harness::fabric::Fabric;
use ddm_test_harness::netns::{require_netns, wait_until};

const DDM_PORT: u16 = 3549;
const SOLICIT: u8 = 0x01;
const ADVERTISE: u8 = 0x02;
const DEADLINE: Duration = Duration::from_secs(15);
/// The flood's size.
const FLOOD: usize = 5000;
/// Per-source burst and rate of answers (ddm-actors' discovery::limit).
const BURST: f64 = 4.0;
const RATE: f64 = 2.0;

#[test]
fn a_solicitation_flood_is_answered_at_a_bounded_rate() {
    if !require_netns("a_solicitation_flood_is_answered_at_a_bounded_rate") {
        return;
    }
    let mut f = Fabric::new("disc_flood").unwrap();
    f.topo_mut().node("s1").unwrap();
    f.topo_mut().node("s2").unwrap();
    let link = f.topo_mut().link("s1", "s2").unwrap();
    let ll1 = f.topo().wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
    f.topo().wait_link_local("s2", &link.b_if, DEADLINE).unwrap();
    let args = ["--solicit-interval", "1000"];
    f.start_router("s1", "server", &[&link.a_if], &args).unwrap();
    f.start_router("s2", "server", &[&link.b_if], &args).unwrap();
    let peered = |f: &Fabric| {
        ["s1", "s2"].iter().all(|n| {
            f.peers(n).is_ok_and(|p| p.len() == 1 && p[0].state == "Exchange")
        })
    };
    wait_until(DEADLINE, "s1 and s2 to peer", || peered(&f)).unwrap();

    // The attacker: s2's interface, a second link-local address, above
    // any address derived from a MAC (ddmd uses the lowest one, so s2's
    // router keeps its own), and deprecated (so s2's kernel does not pick
    // it as the source of s2's exchange connections, which s1 would refuse:
    // only the discovered peer's address may call).
    let attacker: Ipv6Addr = "fe80::ffff:ffff:ffff:bad1".parse().unwrap();
    let add =
        ["ip", "-6", "addr", "add", "fe80::ffff:ffff:ffff:bad1/64", "dev"];
    let argv: Vec<&str> = add
        .iter()
        .copied()
        .chain([link.b_if.as_str(), "nodad", "preferred_lft", "0"])
        .collect();
    f.topo().exec_ok("s2", &argv).unwrap();
    let if2 = f.ifindex("s2", &link.b_if).unwrap();
    let sock = f.topo().in_node("s2", || {
        UdpSocket::bind(SocketAddrV6::new(attacker, DDM_PORT, 0, if2)).unwrap()
    });
    let to = SocketAddrV6::new(ll1, DDM_PORT, 0, if2);
    let solicitation = [2, SOLICIT, 0, 1, b'x'];

    let start = Instant::now();
    let mut sent = 0;
    // Paced at about two per millisecond, so the flood lasts a few
    // seconds and shows the steady rate, not only the burst.
    for i in 0..FLOOD {
        if sock.send_to(&solicitation, to).is_ok() {
            sent += 1;
        }
        if i % 2 == 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let flood_took = start.elapsed();
    // Count the advertisements that come back until none has come for
    // three seconds (the socket queues them meanwhile).
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut answered = 0usize;
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        assert_eq!(from.ip(), std::net::IpAddr::V6(ll1), "from {from}");
        assert!(n >= 4 && buf[1] & ADVERTISE != 0, "{:?}", &buf[..n]);
        answered += 1;
        assert!(start.elapsed() < Duration::from_secs(60), "never quiet");
    }
    // The last answer came no later than three seconds before now.
    let window = start.elapsed().saturating_sub(Duration::from_secs(3));
    let bound = BURST + RATE * (window.as_secs_f64() + 1.0);
    eprintln!(
        "flood: {sent} solicitations in {flood_took:?} ({:.0}/s), {answered} \
         advertisements within {window:?} ({:.1}/s; bound {bound:.0})",
        sent as f64 / flood_took.as_secs_f64(),
        answered as f64 / window.as_secs_f64().max(1e-3)
    );
    assert_eq!(sent, FLOOD);
    assert!(answered >= 1, "the flooding source was never answered");
    assert!(
        answered as f64 <= bound,
        "{answered} answers to {sent} solicitations in {window:?}, more \
         than {bound:.0}\ns1 log:\n{}",
        f.log("s1")
    );

    // The real peers kept peering throughout: still in Exchange, never
    // down, and the attacker never became a peer.
    assert!(peered(&f), "s1: {:?}\ns2: {:?}", f.peers("s1"), f.peers("s2"));
    let p1 = f.peers("s1").unwrap().remove(0);
    assert_eq!(p1.host, "s2", "{p1:?}");
    assert!(p1.duration >= start.elapsed(), "s1's peer restarted: {p1:?}");
    for node in ["s1", "s2"] {
        let down = f.log_records(node, "peer down");
        assert!(down.is_empty(), "{node}:\n{}", f.log(node));
    }
}
