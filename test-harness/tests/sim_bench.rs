//! Figures of the simulated fabric, for `scripts/bench-sim.sh` (ignored in
//! the normal suite: `cargo test -p ddm-test-harness --test sim_bench --
//! --ignored --nocapture`). `DDM_SIM_TOPOLOGY` picks the fabric: `rack`
//! (32 servers, 2 transits), `racks-N` (N racks of 32+2, 4 spines) or
//! `thousand` (1,024 routers). Prints one line of figures per event; a
//! broken invariant fails the run with the violation.

use std::time::{Duration, Instant};

use ddm_test_harness::sim::topology::{RouterKind, Topology};
use ddm_test_harness::sim::SimFabric;

fn topology() -> Topology {
    let name = std::env::var("DDM_SIM_TOPOLOGY").unwrap_or("rack".into());
    match name.as_str() {
        "rack" => Topology::rack(32, 2),
        "thousand" => Topology::thousand(),
        other => {
            let n = other
                .strip_prefix("racks-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("DDM_SIM_TOPOLOGY={other:?}"));
            let mut t = Topology::racks(n, 32, 2, 4);
            t.name = other.to_string();
            t
        }
    }
}

/// The peak resident set of this process, in MiB (Linux).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| {
                v.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
        .map_or(0.0, |kb: f64| kb / 1024.0)
}

#[tokio::test(start_paused = true)]
#[ignore = "a benchmark: scripts/bench-sim.sh"]
async fn bench_sim() {
    let topo = topology();
    let name = topo.name.clone();
    let routers = topo.routers.len();
    let step = Duration::from_millis(100);
    let limit = Duration::from_secs(120);
    let wall = Instant::now();
    let mut f = SimFabric::start(topo).await.expect("the fabric starts");
    let virt = f.converge(step, limit).await.unwrap_or_else(|e| panic!("{e}"));
    let snap = f.snapshot().await.unwrap();
    let t = f.topology().clone();
    // Paths held per destination, on average over the servers.
    let (mut paths, mut dests) = (0usize, 0usize);
    for (i, v) in snap.routers.iter().enumerate() {
        if let (Some(v), RouterKind::Server) = (v, t.routers[i].kind) {
            paths += v.paths.len();
            dests += v.routes.len();
        }
    }
    println!(
        "topology={name} event=cold-start routers={routers} \
         converge_wall_s={:.3} converge_virtual_s={:.3} \
         peak_rss_mib={:.1} rss_per_router_kib={:.0} \
         server_paths_per_destination={:.2} invariants=ok",
        wall.elapsed().as_secs_f64(),
        virt.as_secs_f64(),
        peak_rss_mib(),
        peak_rss_mib() * 1024.0 / routers as f64,
        paths as f64 / dests.max(1) as f64,
    );
    // A spine (if any) dies, then a rack transit.
    let victims = ["spine0", "r0t0", "t0"]
        .iter()
        .filter_map(|n| t.router(n).map(|i| (*n, i)))
        .collect::<Vec<_>>();
    for (what, i) in victims {
        let wall = Instant::now();
        f.crash(i).await;
        let virt =
            f.converge(step, limit).await.unwrap_or_else(|e| panic!("{e}"));
        println!(
            "topology={name} event=crash-{what} routers={routers} \
             converge_wall_s={:.3} converge_virtual_s={:.3} \
             peak_rss_mib={:.1} invariants=ok",
            wall.elapsed().as_secs_f64(),
            virt.as_secs_f64(),
            peak_rss_mib(),
        );
    }
    f.stop().await;
}
