//! The simulated fabric: real routers in one process over in-memory links,
//! on a current-thread runtime with paused time.

use std::time::{Duration, Instant};

use ddm_test_harness::sim::topology::Topology;
use ddm_test_harness::sim::SimFabric;

const STEP: Duration = Duration::from_millis(100);
const QUIET: Duration = Duration::from_secs(1);

/// Start `topo`, converge within `limit` of virtual time, check the
/// invariants; print the figures.
async fn converges(topo: Topology, limit: Duration) -> SimFabric {
    let name = topo.name.clone();
    let routers = topo.routers.len();
    let wall = Instant::now();
    let fabric = SimFabric::start(topo).await.expect("the fabric starts");
    let virt = fabric
        .converge(STEP, QUIET, limit)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .virtual_time;
    eprintln!(
        "topology={name} routers={routers} converge_wall_s={:.3} \
         converge_virtual_s={:.3} invariants=ok",
        wall.elapsed().as_secs_f64(),
        virt.as_secs_f64()
    );
    fabric
}

#[tokio::test(start_paused = true)]
async fn a_small_rack_converges() {
    let f = converges(Topology::rack(4, 2), Duration::from_secs(60)).await;
    // Each server routes to the three others over both transits.
    let snap = f.snapshot().await.unwrap();
    let s0 = f.topology().router("s0").unwrap();
    let routes = &snap.routers[s0].as_ref().unwrap().routes;
    assert_eq!(routes.len(), 3, "{routes:?}");
    assert!(routes.values().all(|nhs| nhs.len() == 2), "{routes:?}");
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_rack_converges() {
    let f = converges(Topology::rack(32, 2), Duration::from_secs(60)).await;
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn two_racks_and_two_spines_converge() {
    let f =
        converges(Topology::racks(2, 4, 2, 2), Duration::from_secs(60)).await;
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_transit_is_routed_around_and_comes_back() {
    let mut f = converges(Topology::rack(4, 2), Duration::from_secs(60)).await;
    let t1 = f.topology().router("t1").unwrap();
    f.crash(t1).await;
    let virt = f
        .converge(STEP, QUIET, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("after t1 crashed: {e}"))
        .virtual_time;
    eprintln!(
        "event=transit-crash reconverge_virtual_s={:.3}",
        virt.as_secs_f64()
    );
    f.restart(t1).await.unwrap();
    f.converge(STEP, QUIET, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("after t1 restarted: {e}"));
    f.stop().await;
}

/// A cut cable: both ends expire each other and route around it; mended,
/// the link carries again. A one-sided session reset is healed by the
/// next discovery.
#[tokio::test(start_paused = true)]
async fn a_cut_link_is_routed_around_and_mended() {
    use ddm_test_harness::sim::faults::Fault;
    let mut f = converges(Topology::rack(4, 2), Duration::from_secs(60)).await;
    let t = f.topology().clone();
    let (s0, t1) = (t.router("s0").unwrap(), t.router("t1").unwrap());
    let link = t
        .links
        .iter()
        .position(|l| l.ends_at(s0).is_some_and(|(_, far)| far.router == t1))
        .unwrap();
    let nexthops = |snap: &ddm_test_harness::sim::invariants::Snapshot| {
        let v = snap.routers[s0].as_ref().unwrap();
        v.routes.values().map(|n| n.len()).collect::<Vec<_>>()
    };
    f.apply(&Fault::LinkDown { link }).await.unwrap();
    let c = f.converge(STEP, QUIET, Duration::from_secs(60)).await.unwrap();
    assert!(c.virtual_time > Duration::ZERO);
    assert_eq!(nexthops(&f.snapshot().await.unwrap()), vec![1, 1, 1]);
    f.apply(&Fault::LinkUp { link }).await.unwrap();
    f.converge(STEP, QUIET, Duration::from_secs(60)).await.unwrap();
    assert_eq!(nexthops(&f.snapshot().await.unwrap()), vec![2, 2, 2]);
    f.apply(&Fault::SessionReset { router: s0, link }).await.unwrap();
    f.converge(STEP, QUIET, Duration::from_secs(60)).await.unwrap();
    assert_eq!(nexthops(&f.snapshot().await.unwrap()), vec![2, 2, 2]);
    f.stop().await;
}
