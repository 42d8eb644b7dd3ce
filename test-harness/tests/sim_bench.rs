//! Figures of the simulated fabric, for `scripts/bench-sim.sh` (ignored in
//! the normal suite: `cargo test -p ddm-test-harness --test sim_bench --
//! --ignored --nocapture`). `DDM_SIM_TOPOLOGY` picks the fabric: `rack`
//! (32 servers, 2 transits), `racks-N` (N racks of 32+2, 4 spines) or
//! `thousand` (1,024 routers). Prints one line of figures per event; a
//! broken invariant fails the run with the violation.

use std::time::{Duration, Instant};

use ddm_test_harness::sim::topology::{RouterKind, Topology};
use ddm_test_harness::sim::{status_kib, Converged, SimFabric, Traffic};

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

/// A figure of this process's `/proc/self/status`, in MiB (Linux).
fn status_mib(field: &str) -> f64 {
    status_kib(field).map_or(0.0, |kb| kb as f64 / 1024.0)
}

/// The peak resident set of this process, in MiB.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// The resident set now, after handing freed heap back: what the
/// converged routers hold, without the peak's requests in flight.
fn held_rss_mib() -> f64 {
    // SAFETY: malloc_trim only returns free memory to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    status_mib("VmRSS:")
}

/// This process's CPU time so far (user, system) and its minor page
/// faults: apart from the wall time, which on a virtual machine moves
/// with the cost of a page fault.
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: f64,
    sys: f64,
    faults: i64,
}

fn cpu() -> Cpu {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Cpu::default();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cpu { user: secs(u.ru_utime), sys: secs(u.ru_stime), faults: u.ru_minflt }
}

/// The figures of one event: from `before` (traffic when it began) to now.
fn line(
    f: &SimFabric,
    event: &str,
    (wall, cpu0): (Instant, Cpu),
    c: Converged,
    before: Traffic,
) -> String {
    let routers = f.topology().routers.len() as f64;
    let now = f.traffic();
    let cpu1 = cpu();
    format!(
        "topology={} event={event} routers={routers} converge_wall_s={:.3} \
         converge_virtual_s={:.3} peak_rss_mib={:.1} \
         fabric_peak_rss_mib={:.1} msgs_per_router={:.1} \
         bytes_per_router={:.0} datagrams_per_router={:.1} snapshots={} \
         check_wall_s={:.3} cpu_user_s={:.2} cpu_sys_s={:.2} \
         page_faults={} invariants=ok",
        f.topology().name,
        // The fabric's time: the harness's snapshots and checks are apart.
        (wall.elapsed() - c.check_wall).as_secs_f64(),
        c.virtual_time.as_secs_f64(),
        peak_rss_mib(),
        c.peak_kib_before_check.map_or(0.0, |k| k as f64 / 1024.0),
        (now.exchange.requests - before.exchange.requests) as f64 / routers,
        (now.exchange.bytes - before.exchange.bytes) as f64 / routers,
        (now.datagrams - before.datagrams) as f64 / routers,
        c.snapshots,
        c.check_wall.as_secs_f64(),
        cpu1.user - cpu0.user,
        cpu1.sys - cpu0.sys,
        cpu1.faults - cpu0.faults,
    )
}

#[tokio::test(start_paused = true)]
#[ignore = "a benchmark: scripts/bench-sim.sh"]
async fn bench_sim() {
    let topo = topology();
    let name = topo.name.clone();
    let routers = topo.routers.len();
    let (step, quiet) = (Duration::from_millis(100), Duration::from_secs(1));
    let limit = Duration::from_secs(120);
    // libtest printed `test bench_sim ... ` without a newline.
    println!();
    let wall = (Instant::now(), cpu());
    let mut f = SimFabric::start(topo).await.expect("the fabric starts");
    let c =
        f.converge(step, quiet, limit).await.unwrap_or_else(|e| panic!("{e}"));
    println!("{}", line(&f, "cold-start", wall, c, Traffic::default()));
    let snap = f.snapshot().await.unwrap();
    let t = f.topology().clone();
    // Paths held per destination and routes, on average over the servers;
    // memory per router.
    let (mut paths, mut dests) = (0usize, 0usize);
    for (i, v) in snap.routers.iter().enumerate() {
        if let (Some(v), RouterKind::Server) = (v, t.routers[i].kind) {
            paths += v.paths.len();
            dests += v.routes.len();
        }
    }
    drop(snap);
    let held = held_rss_mib();
    println!(
        "topology={name} event=held routers={routers} \
         server_paths_per_destination={:.2} peak_rss_mib={:.1} \
         held_rss_mib={held:.1} held_kib_per_router={:.0}",
        paths as f64 / dests.max(1) as f64,
        peak_rss_mib(),
        held * 1024.0 / routers as f64,
    );
    // Idle: what a converged fabric does between solicitations.
    let idle = Duration::from_secs(10);
    let (before, wall) = (f.traffic(), Instant::now());
    tokio::time::sleep(idle).await;
    let after = f.traffic();
    println!(
        "topology={name} event=idle routers={routers} virtual_s={} \
         wall_ms_per_virtual_s={:.1} exchange_requests={} \
         datagrams_per_router_per_s={:.2}",
        idle.as_secs(),
        wall.elapsed().as_secs_f64() * 1000.0 / idle.as_secs_f64(),
        after.exchange.requests - before.exchange.requests,
        (after.datagrams - before.datagrams) as f64
            / routers as f64
            / idle.as_secs_f64(),
    );
    // A spine (if any) dies, then a rack transit.
    let victims = ["spine0", "r0t0", "t0"]
        .iter()
        .filter_map(|n| t.router(n).map(|i| (*n, i)))
        .collect::<Vec<_>>();
    for (what, i) in victims {
        let (before, wall) = (f.traffic(), (Instant::now(), cpu()));
        f.crash(i).await;
        let c = f
            .converge(step, quiet, limit)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        println!("{}", line(&f, &format!("crash-{what}"), wall, c, before));
    }
    f.stop().await;
}
