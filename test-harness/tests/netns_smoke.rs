//! Checks that the namespace topology builder gives later tests what DDM
//! needs: fast link-local addresses, link-local multicast between
//! namespaces, processes inside namespaces, and complete cleanup.
//!
//! Every test skips loudly without root (and fails with
//! `DDM_REQUIRE_NETNS=1`).

use ddm_test_harness::netns::{
    die_with_test, in_netns, owner_file, require_netns, sweep_stale, wait_exit,
    wait_until, Topology,
};
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

/// DDM's discovery multicast group and port.
const DDM_GROUP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xdd);
const DDM_PORT: u16 = 3549;

/// Generous bound for anything the kernel does asynchronously.
const DEADLINE: Duration = Duration::from_secs(10);

/// Namespaces currently listed by `ip netns list`.
fn listed_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Index of interface `ifname` in the calling thread's namespace.
fn if_index(ifname: &str) -> u32 {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}");
    index
}

/// Two nodes and one link between them.
fn pair(tag: &str) -> (Topology, ddm_test_harness::netns::Link) {
    let mut topo = Topology::new(tag).unwrap();
    topo.node("s1").unwrap();
    topo.transit("t1").unwrap();
    let link = topo.link("s1", "t1").unwrap();
    (topo, link)
}

#[test]
fn link_local_addresses_are_usable_quickly() {
    if !require_netns("link_local_addresses_are_usable_quickly") {
        return;
    }
    let (topo, link) = pair("lladdr");
    assert!(link.a_if.len() <= 15 && link.b_if.len() <= 15, "{link:?}");
    assert_ne!(link.a_if, link.b_if);

    // Duplicate address detection is off in every node (it would hold a
    // new address tentative for ~2 s); how fast addresses become usable is
    // measured by the discovery benchmark, not asserted here.
    for node in ["s1", "t1"] {
        let out = topo
            .exec_ok(
                node,
                &["sysctl", "-n", "net.ipv6.conf.default.accept_dad"],
            )
            .unwrap();
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(value, "0", "{node}: accept_dad");
    }
    let a = topo
        .wait_link_local("s1", &link.a_if, Duration::from_secs(10))
        .unwrap();
    let b = topo
        .wait_link_local("t1", &link.b_if, Duration::from_secs(10))
        .unwrap();
    assert_eq!(a.segments()[0], 0xfe80, "{a}");
    assert_eq!(b.segments()[0], 0xfe80, "{b}");
    assert_ne!(a, b);

    // The transit node forwards, the end host does not.
    let forwarding = |node: &str| {
        let out = topo
            .exec_ok(node, &["sysctl", "-n", "net.ipv6.conf.all.forwarding"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(forwarding("t1"), "1");
    assert_eq!(forwarding("s1"), "0");

    // Link state follows link_set.
    topo.link_set("s1", &link.a_if, false).unwrap();
    let out =
        topo.exec_ok("s1", &["ip", "-o", "link", "show", &link.a_if]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains(",UP"), "{text}");
}

#[test]
fn link_local_multicast_crosses_the_link() {
    if !require_netns("link_local_multicast_crosses_the_link") {
        return;
    }
    let (topo, link) = pair("mcast");
    topo.wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
    let from = topo.wait_link_local("t1", &link.b_if, DEADLINE).unwrap();

    // Receiver in s1: bound to the DDM port, joined to ff02::dd on its end.
    let receiver = topo.in_node("s1", || {
        let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, DDM_PORT)).unwrap();
        sock.join_multicast_v6(&DDM_GROUP, if_index(&link.a_if)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        sock
    });
    // Sender in t1, scoped to its end of the link.
    let (sender, scope) = topo.in_node("t1", || {
        let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap();
        (sock, if_index(&link.b_if))
    });
    let dest = SocketAddrV6::new(DDM_GROUP, DDM_PORT, 0, scope);

    // Resend until one arrives: the first may race the group join.
    let mut buf = [0u8; 64];
    let mut got = None;
    wait_until(DEADLINE, "a multicast datagram in s1", || {
        sender.send_to(b"ddm-hello", dest).unwrap();
        match receiver.recv_from(&mut buf) {
            Ok((n, src)) => {
                got = Some((buf[..n].to_vec(), src));
                true
            }
            Err(_) => false,
        }
    })
    .unwrap();
    let (payload, src) = got.unwrap();
    assert_eq!(payload, b"ddm-hello");
    match src {
        std::net::SocketAddr::V6(src) => assert_eq!(*src.ip(), from),
        other => panic!("unexpected source {other}"),
    }
}

#[test]
fn addresses_routes_and_spawned_processes() {
    if !require_netns("addresses_routes_and_spawned_processes") {
        return;
    }
    let (topo, link) = pair("spawn");
    topo.add_lo_addr("s1", "fd00:1::1/64").unwrap();
    let kernel = topo.routes("s1", Some("kernel")).unwrap();
    assert!(kernel.iter().any(|r| r.starts_with("fd00:1::/64")), "{kernel:?}");
    assert!(topo
        .routes("t1", None)
        .unwrap()
        .iter()
        .all(|r| !r.contains("fd00:1::")));

    // A spawned process lives in the node's namespace and dies with the
    // topology.
    let mut cmd = Command::new("sleep");
    cmd.arg("600").stdout(Stdio::null());
    let id = topo.spawn("t1", cmd).unwrap();
    let pid = topo.with_child(id, |c| c.id()).unwrap();
    let ns_of = |path: String| {
        std::fs::metadata(path).map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        })
    };
    let want =
        ns_of(format!("/var/run/netns/{}", topo.ns("t1").unwrap())).unwrap();
    assert_eq!(ns_of(format!("/proc/{pid}/ns/net")).unwrap(), want);
    assert_ne!(ns_of("/proc/self/ns/net".to_string()).unwrap(), want);

    // Ping between the two ends (the gate checked ping is there).
    let peer = topo.wait_link_local("t1", &link.b_if, DEADLINE).unwrap();
    let target = format!("{peer}%{}", link.a_if);
    assert!(topo.ping6("s1", &target).unwrap(), "ping {target}");

    drop(topo);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
    assert!(status.is_err(), "pid {pid} still exists after drop");
}

#[test]
fn kill_reaps_one_child() {
    if !require_netns("kill_reaps_one_child") {
        return;
    }
    let (topo, _) = pair("kill");
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let id = topo.spawn("s1", cmd).unwrap();
    let status = topo.kill(id).unwrap();
    assert!(!status.success());
    assert!(topo.kill(id).is_err());
    assert!(topo.with_child(id, |_| ()).is_err());
}

#[test]
fn drop_removes_namespaces_even_on_panic() {
    if !require_netns("drop_removes_namespaces_even_on_panic") {
        return;
    }
    let (topo, _) = pair("cleanup");
    let names = topo.namespaces();
    assert_eq!(names.len(), 2);
    let listed = listed_namespaces();
    assert!(names.iter().all(|n| listed.contains(n)), "{listed:?}");
    drop(topo);
    let listed = listed_namespaces();
    assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");

    // A test that panics halfway still cleans up.
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let (topo, _) = pair("panicky");
        tx.send(topo.namespaces()).unwrap();
        panic!("deliberate panic with a live topology");
    })
    .join();
    assert!(result.is_err());
    let names = rx.recv().unwrap();
    let listed = listed_namespaces();
    assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
}

#[test]
fn parallel_topologies_do_not_collide() {
    if !require_netns("parallel_topologies_do_not_collide") {
        return;
    }
    // Same tag and node names in both: only the builder keeps them apart.
    let handles: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let (topo, link) = pair("parallel");
                let a =
                    topo.wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
                // in_netns sees the node's interfaces, not the root's.
                let index =
                    in_netns(topo.ns("s1").unwrap(), || if_index(&link.a_if));
                assert!(index > 1, "{index}");
                let out =
                    topo.exec_ok("t1", &["ip", "-o", "link", "show"]).unwrap();
                let links =
                    String::from_utf8_lossy(&out.stdout).lines().count();
                assert_eq!(links, 2, "lo and one veth in t1");
                (topo.namespaces(), link, a, topo)
            })
        })
        .collect();
    let results: Vec<_> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (ns0, link0, a0, _t0) = &results[0];
    let (ns1, link1, a1, _t1) = &results[1];
    assert!(ns0.iter().all(|n| !ns1.contains(n)), "{ns0:?} {ns1:?}");
    assert_ne!(link0.a_if, link1.a_if);
    assert_ne!(a0, a1);
    let names: Vec<String> = results.iter().flat_map(|r| r.0.clone()).collect();
    drop(results);
    let listed = listed_namespaces();
    assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
}

/// Set for [`interrupted_while_holding_a_topology`] by the test that runs it.
const HELPER_ENV: &str = "DDM_INTERRUPT_HELPER";

/// Run only by [`an_interrupted_test_leaves_no_namespace_or_process`], in
/// a process of its own: holds a topology with a process in it, says so,
/// and waits to be interrupted.
#[test]
#[ignore = "a helper: an_interrupted_test_leaves_no_namespace_or_process runs it"]
fn interrupted_while_holding_a_topology() {
    use std::io::Write;
    if std::env::var_os(HELPER_ENV).is_none() {
        eprintln!("a helper, run by an_interrupted_test_leaves_no_namespace_or_process; nothing to do on its own");
        return;
    }
    let (topo, _) = pair("interrupted");
    let mut sleeper = Command::new("sleep");
    sleeper.arg("600");
    let id = topo.spawn("s1", sleeper).unwrap();
    let pid = topo.with_child(id, |c| c.id()).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "HOLDING {pid} {}", topo.namespaces().join(" ")).unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

/// A test process interrupted (SIGINT, as by Ctrl-C), which runs no
/// `Drop`, still deletes its namespaces and kills what ran in them.
#[test]
fn an_interrupted_test_leaves_no_namespace_or_process() {
    use std::io::BufRead;
    if !require_netns("an_interrupted_test_leaves_no_namespace_or_process") {
        return;
    }
    let mut helper = Command::new(std::env::current_exe().unwrap());
    helper
        .args([
            "--exact",
            "interrupted_while_holding_a_topology",
            "--ignored",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    die_with_test(&mut helper);
    let mut helper = helper.spawn().unwrap();
    // Killed if this test fails before it is done with it.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = helper.stdout.take().unwrap();
    let mut helper = Reap(helper);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in
            std::io::BufReader::new(stdout).lines().map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("HOLDING ") {
                let _ = tx.send(rest.to_string());
                return;
            }
        }
    });
    let holding = rx.recv_timeout(DEADLINE * 3).expect("the helper never held");
    let mut words = holding.split_whitespace();
    let pid: u32 = words.next().unwrap().parse().unwrap();
    let names: Vec<String> = words.map(str::to_string).collect();
    assert_eq!(names.len(), 2, "{holding}");
    let listed = listed_namespaces();
    assert!(names.iter().all(|n| listed.contains(n)), "{listed:?}");
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(helper.0.id() as i32, libc::SIGINT) };
    let status =
        wait_exit(&mut helper.0, DEADLINE, "the helper to end on SIGINT")
            .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    let listed = listed_namespaces();
    assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
    wait_until(DEADLINE, "the process in the namespace to go", || {
        ddm_netns::process_gone(pid)
    })
    .unwrap();
}

/// The namespaces of a test run killed outright (SIGKILL: no handler sees
/// it) are deleted by the next run's gate: their recorded owner is gone.
/// One alive is left alone.
#[test]
fn namespaces_whose_owner_is_gone_are_swept() {
    if !require_netns("namespaces_whose_owner_is_gone_are_swept") {
        return;
    }
    // An owner that has ended: a process run to its end.
    let mut ended = Command::new("true").spawn().unwrap();
    let gone = ended.id();
    ended.wait().unwrap();
    let stale = format!("ddm-stale-{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &stale]).status();
    assert!(ok.unwrap().success());
    // One of this (live) process's, made through the crate (which makes
    // the owners' directory).
    let (topo, _) = pair("sweep");
    std::fs::write(owner_file(&stale), format!("{gone} 1\n")).unwrap();
    assert!(sweep_stale() >= 1);
    let listed = listed_namespaces();
    assert!(!listed.contains(&stale), "{listed:?}");
    assert!(!owner_file(&stale).exists());
    assert!(topo.namespaces().iter().all(|n| listed.contains(n)), "{listed:?}");
}
