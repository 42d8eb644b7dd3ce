//! A transit programming a switch through dpd (`--dendrite`), proven in
//! the namespace trio `s1 — t1 — s2` against the mock dpd.
//!
//! t1's links are named like a switch's rear ports (`tfportrear0_0` towards
//! s1, `tfportrear1_0` towards s2) and its `ddmd` runs with `--dendrite
//! --dpd-host ::1 --dpd-port P`, where P is a mock dpd serving inside t1's
//! namespace. The mock's table must equal the kernel table a Linux transit
//! would have had — each server's prefix through the port facing it, via
//! that server's link-local address — through advertise, withdraw, SIGTERM
//! (emptied) and `kill -9` followed by a restart (stale routes reconciled
//! away). t1's kernel gets no route of ours at any point.
//!
//! Build the binaries first (`cargo build --workspace --bins`). Skips
//! loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, TcpListener};
use std::time::Duration;

use ddm_test_harness::fabric::Fabric;
use ddm_test_harness::mock_dpd::{MockDpd, Target};
use ddm_test_harness::netns::{in_netns, require_netns, wait_until};

/// Generous bound for anything involving the routers' timers.
const DEADLINE: Duration = Duration::from_secs(20);

const P1: &str = "fd00:1::/64";
const P2: &str = "fd00:2::/64";
const FAST: [&str; 4] =
    ["--solicit-interval", "500", "--expire-threshold", "2000"];

/// A table in the kernel's terms: destination → sorted "via LL dev IF".
type KernelTable = BTreeMap<String, Vec<String>>;

/// The mock's `ddmd` routes, written as a Linux transit's kernel would
/// hold them (port `rearN` is interface `tfportrearN_0`).
fn as_kernel(mock: &MockDpd) -> KernelTable {
    let mut out = KernelTable::new();
    for ((addr, len), targets) in mock.table() {
        let mut hops: Vec<String> = targets
            .iter()
            .filter(|t| t.tag == "ddmd")
            .map(|t| {
                let n = t.port_id.strip_prefix("rear").expect("rear port");
                assert_eq!(t.link_id, 0);
                format!("via {} dev tfportrear{n}_0", t.tgt_ip)
            })
            .collect();
        hops.sort();
        if !hops.is_empty() {
            out.insert(format!("{addr}/{len}"), hops);
        }
    }
    out
}

struct Trio {
    f: Fabric,
    mock: MockDpd,
    /// s1's and s2's link-local addresses on their links to t1.
    ll_s1: Ipv6Addr,
    ll_s2: Ipv6Addr,
}

impl Trio {
    fn new(tag: &str) -> Trio {
        let mut f = Fabric::new(tag).unwrap();
        for s in ["s1", "s2"] {
            f.topo_mut().node(s).unwrap();
        }
        f.topo_mut().transit("t1").unwrap();
        f.topo().add_lo_addr("s1", "fd00:1::1/64").unwrap();
        f.topo().add_lo_addr("s2", "fd00:2::1/64").unwrap();
        let l1 = f
            .topo_mut()
            .link_named("t1", "s1", Some("tfportrear0_0"), None)
            .unwrap();
        let l2 = f
            .topo_mut()
            .link_named("t1", "s2", Some("tfportrear1_0"), None)
            .unwrap();
        let ll_s1 = f.topo().wait_link_local("s1", &l1.b_if, DEADLINE).unwrap();
        let ll_s2 = f.topo().wait_link_local("s2", &l2.b_if, DEADLINE).unwrap();
        f.topo().wait_link_local("t1", &l1.a_if, DEADLINE).unwrap();
        f.topo().wait_link_local("t1", &l2.a_if, DEADLINE).unwrap();

        // The mock listens on t1's own loopback.
        let ns = f.topo().ns("t1").unwrap().to_string();
        let listener = in_netns(&ns, || TcpListener::bind("[::1]:0"))
            .expect("listen in t1");
        let mock = MockDpd::serve(listener).unwrap();
        let port = mock.port().to_string();

        f.spawn_router("s1", "server", &[&l1.b_if], &FAST).unwrap();
        f.spawn_router("s2", "server", &[&l2.b_if], &FAST).unwrap();
        let mut extra = FAST.to_vec();
        extra.extend(["--dendrite", "--dpd-host", "::1", "--dpd-port", &port]);
        f.spawn_router("t1", "transit", &[&l1.a_if, &l2.a_if], &extra).unwrap();
        for n in ["s1", "s2", "t1"] {
            f.wait_ready(n).unwrap();
        }
        f.wait_peer_state("t1", 2, "Exchange", DEADLINE).unwrap();
        Trio { f, mock, ll_s1, ll_s2 }
    }

    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n(router logs under {})", self.f.dir().display())
    }

    fn adm(&self, node: &str, args: &[&str]) {
        self.f.adm(node, args).unwrap_or_else(|e| self.fail(&e));
    }

    /// What a Linux transit's kernel would hold for these prefixes.
    fn linux_table(&self, p1: bool, p2: bool) -> KernelTable {
        let mut t = KernelTable::new();
        if p1 {
            t.insert(
                P1.into(),
                vec![format!("via {} dev tfportrear0_0", self.ll_s1)],
            );
        }
        if p2 {
            t.insert(
                P2.into(),
                vec![format!("via {} dev tfportrear1_0", self.ll_s2)],
            );
        }
        t
    }

    /// Waits until the mock's table is `want`.
    fn wait_table(&self, what: &str, want: &KernelTable) {
        let mut last = KernelTable::new();
        if let Err(e) = wait_until(DEADLINE, what, || {
            last = as_kernel(&self.mock);
            &last == want
        }) {
            self.fail(&format!("{e}: want {want:?}, mock has {last:?}"));
        }
    }

    /// t1's kernel holds no route of ours.
    fn check_t1_kernel_clean(&self) {
        let k = self.f.kernel_routes("t1").unwrap();
        assert!(k.is_empty(), "t1 programmed its kernel: {k:?}");
    }
}

#[test]
fn dendrite_transit_programs_the_switch_like_a_linux_kernel() {
    if !require_netns(
        "dendrite_transit_programs_the_switch_like_a_linux_kernel",
    ) {
        return;
    }
    let mut t = Trio::new("dendrite");
    t.adm("s1", &["advertise-prefixes", P1]);
    t.adm("s2", &["advertise-prefixes", P2]);
    t.wait_table("both prefixes in the switch", &t.linux_table(true, true));
    t.check_t1_kernel_clean();
    // Every request carried the API version; every route our tag.
    for r in t.mock.requests() {
        assert_eq!(r.api_version.as_deref(), Some("12.0.0"), "{r:?}");
        assert!(r.status < 300, "dpd refused {r:?}");
    }

    // Withdraw and re-advertise.
    t.adm("s2", &["withdraw-prefixes", P2]);
    t.wait_table("P2 withdrawn", &t.linux_table(true, false));
    t.adm("s2", &["advertise-prefixes", P2]);
    t.wait_table("P2 back", &t.linux_table(true, true));

    // SIGTERM empties the switch of our routes (and only ours).
    let other = Target {
        port_id: "qsfp0".into(),
        link_id: 0,
        tgt_ip: "fe80::99".parse().unwrap(),
        tag: "operator".into(),
        vlan_id: None,
    };
    t.mock.insert("fd00:99::".parse().unwrap(), 64, other.clone());
    let status = t.f.stop_router("t1").unwrap();
    assert!(status.success(), "t1 exited with {status}");
    assert_eq!(as_kernel(&t.mock), KernelTable::new(), "SIGTERM empties");
    assert_eq!(
        t.mock.table()[&("fd00:99::".parse().unwrap(), 64)],
        vec![other],
        "another owner's route survives"
    );

    // Back again, then kill -9: the routes stay in the switch.
    t.f.restart_router("t1").unwrap();
    t.wait_table("routes after a restart", &t.linux_table(true, true));
    t.f.kill_router("t1").unwrap();
    assert_eq!(as_kernel(&t.mock), t.linux_table(true, true));
    // While t1 is dead, s2 withdraws P2, and a route of our tag that no
    // router wants appears: both are stale when t1 comes back.
    t.adm("s2", &["withdraw-prefixes", P2]);
    t.mock.insert(
        "fd00:77::".parse().unwrap(),
        64,
        Target {
            port_id: "rear0".into(),
            link_id: 0,
            tgt_ip: t.ll_s1,
            tag: "ddmd".into(),
            vlan_id: None,
        },
    );
    t.f.restart_router("t1").unwrap();
    t.wait_table("stale routes reconciled away", &t.linux_table(true, false));
    t.check_t1_kernel_clean();

    for n in ["s1", "s2", "t1"] {
        let status = t.f.stop_router(n).unwrap();
        assert!(status.success(), "{n}: ddmd exited with {status}");
    }
    assert_eq!(as_kernel(&t.mock), KernelTable::new());
    for n in ["s1", "s2"] {
        let left = t.f.kernel_routes(n).unwrap();
        assert!(left.is_empty(), "{n}: routes left behind: {left:?}");
    }
}
