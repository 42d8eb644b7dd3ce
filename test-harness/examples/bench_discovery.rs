//! Discovery timings of real `ddmd` routers in network namespaces.
//!
//! ```text
//! cargo build --release --workspace --bins
//! sudo cargo run --release -p ddm-test-harness --example bench_discovery \
//!     [-- --runs 10 --solicit-interval 2000]
//! ```
//!
//! Each run builds a fresh pair `s1 — s2` of namespaces with one veth link
//! and measures:
//!
//! 1. **Peering**: from spawning both daemons at once (t0, taken just before
//!    the first spawn) to both having their peer in Exchange. Reported two
//!    ways: by the `time` of each router's own discovery `peer up` log record
//!    (the later of the two), and by polling `ddmadm get-peers` on both
//!    (which adds a `ddmadm` round trip, ~10–30 ms).
//! 2. **Link down**: from `ip link set <s1 end> down` to s2 (the OTHER side,
//!    whose veth only loses its carrier) reporting its peer gone. Reported
//!    by the `time` of s2's discovery `peer down` log record, measured from
//!    just before the `ip` command was spawned (so it includes starting
//!    `ip`; the time `ip` took is shown too), and by polling s2's
//!    `get-peers` as tightly as `ddmadm` allows. The link is taken down at
//!    least 3 s after it was created: the kernel delays a link's
//!    non-urgent events by up to a second after its previous one, which
//!    would otherwise be measured instead of ddmd.
//!
//! Log timestamps come from the daemons' wall clock, the same clock as the
//! benchmark's, so no polling delay enters the log-based figures.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ddm_test_harness::fabric::Fabric;

/// How long a new link is left alone before it is taken down. The kernel
/// rate-limits link events to one batch a second; on this machine a link
/// younger than about 2.5 s still had its carrier loss delayed by up to a
/// second (measured: 950 ms with no wait, 480 ms at 1.5 s, 2 ms at 3 s).
const LINK_SETTLE: Duration = Duration::from_millis(3000);
use ddm_test_harness::netns::{netns_available, wait_until};

/// Bound on anything one run waits for.
const DEADLINE: Duration = Duration::from_secs(30);

/// Nanoseconds since the epoch of a wall-clock instant.
fn epoch_nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as i128
}

/// The `time` of a bunyan record, in nanoseconds since the epoch.
fn record_nanos(r: &serde_json::Value) -> Option<i128> {
    let t = chrono::DateTime::parse_from_rfc3339(r["time"].as_str()?).ok()?;
    Some(t.timestamp_nanos_opt()? as i128)
}

/// Times (ns since epoch) of `node`'s discovery records with message `msg`.
fn discovery_times(f: &Fabric, node: &str, msg: &str) -> Vec<i128> {
    f.log_records(node, msg)
        .iter()
        .filter(|r| r["component"] == "discovery")
        .filter_map(record_nanos)
        .collect()
}

fn ms(nanos: i128) -> f64 {
    nanos as f64 / 1e6
}

/// One run's measurements, in milliseconds.
#[derive(Debug, Default)]
struct Run {
    /// Spawn → both discovery `peer up` records.
    peer_log: f64,
    /// Spawn → both `get-peers` show Exchange.
    peer_poll: f64,
    /// Spawn → s1's and s2's `interface ready` (the later of the two).
    ready_log: f64,
    /// Solicitations that failed to send before the peering.
    failed_solicits: usize,
    /// `ip link set down` spawned → s2's discovery `peer down` record.
    down_log: f64,
    /// `ip link set down` spawned → s2's `link down` record.
    down_link_log: f64,
    /// `ip link set down` spawned → s1's (the downed side's) `peer down`.
    down_local_log: f64,
    /// How long the `ip` command itself took.
    ip_took: f64,
    /// `ip link set down` returned → s2's `get-peers` shows no Exchange.
    down_poll: f64,
}

fn one_run(i: usize, solicit: &str) -> Result<Run, String> {
    let mut f = Fabric::new(&format!("bench{i}"))?;
    f.topo_mut().node("s1")?;
    f.topo_mut().node("s2")?;
    let link = f.topo_mut().link("s1", "s2")?;
    f.topo().wait_link_local("s1", &link.a_if, DEADLINE)?;
    f.topo().wait_link_local("s2", &link.b_if, DEADLINE)?;
    let args = ["--solicit-interval", solicit];
    let mut run = Run::default();

    // 1. Peering.
    let t0 = SystemTime::now();
    let start = Instant::now();
    f.spawn_router("s1", "server", &[&link.a_if], &args)?;
    f.spawn_router("s2", "server", &[&link.b_if], &args)?;
    f.wait_ready("s1")?;
    f.wait_ready("s2")?;
    wait_until(DEADLINE, "both peers in Exchange", || {
        ["s1", "s2"].iter().all(|n| {
            f.peers(n).is_ok_and(|p| p.len() == 1 && p[0].state == "Exchange")
        })
    })?;
    run.peer_poll = start.elapsed().as_secs_f64() * 1e3;
    let first = |node: &str, msg: &str| {
        discovery_times(&f, node, msg)
            .into_iter()
            .min()
            .ok_or_else(|| format!("{node}: no {msg:?} record"))
    };
    let up = first("s1", "peer up")?.max(first("s2", "peer up")?);
    run.peer_log = ms(up - epoch_nanos(t0));
    let ready =
        first("s1", "interface ready")?.max(first("s2", "interface ready")?);
    run.ready_log = ms(ready - epoch_nanos(t0));
    run.failed_solicits = ["s1", "s2"]
        .iter()
        .map(|n| {
            f.log_records(n, "sending solicitation failed")
                .iter()
                .filter_map(record_nanos)
                .filter(|&t| t <= up)
                .count()
        })
        .sum();

    // 2. Link down, seen from the other side. The kernel holds back a
    // link's non-urgent state changes (the veth peer's carrier loss among
    // them) for up to a second after its previous change, so measure on a
    // link that has been up for longer than that, as a link in service is.
    std::thread::sleep(
        LINK_SETTLE.saturating_sub(t0.elapsed().unwrap_or_default()),
    );
    let ns1 = f.topo().ns("s1")?.to_string();
    let before = SystemTime::now();
    let status = Command::new("ip")
        .args(["-n", &ns1, "link", "set", &link.a_if, "down"])
        .status()
        .map_err(|e| format!("ip: {e}"))?;
    let after = SystemTime::now();
    let returned = Instant::now();
    if !status.success() {
        return Err(format!("ip link set down: {status}"));
    }
    run.ip_took = ms(epoch_nanos(after) - epoch_nanos(before));
    wait_until(Duration::from_secs(10), "s2's peer to leave Exchange", || {
        f.peers("s2").is_ok_and(|p| p.iter().all(|p| p.state != "Exchange"))
    })?;
    run.down_poll = returned.elapsed().as_secs_f64() * 1e3;
    let since = |node: &str, msg: &str| {
        discovery_times(&f, node, msg)
            .into_iter()
            .filter(|&t| t >= epoch_nanos(before))
            .min()
            .ok_or_else(|| format!("{node}: no {msg:?} record after link down"))
    };
    // The record may trail the state change by the async log drain.
    let mut down = Err(String::new());
    wait_until(Duration::from_secs(2), "s2's peer down record", || {
        down = since("s2", "peer down");
        down.is_ok()
    })
    .map_err(|e| format!("{e}: {down:?}"))?;
    run.down_log = ms(down? - epoch_nanos(before));
    let mut local = Err(String::new());
    wait_until(Duration::from_secs(10), "s1's peer down record", || {
        local = since("s1", "peer down");
        local.is_ok()
    })
    .map_err(|e| format!("{e}: {local:?}"))?;
    run.down_local_log = ms(local? - epoch_nanos(before));
    run.down_link_log = since("s2", "link down")
        .map(|t| ms(t - epoch_nanos(before)))
        .unwrap_or(f64::NAN);
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summary(name: &str, runs: &[Run], get: impl Fn(&Run) -> f64) {
    let v: Vec<f64> = runs.iter().map(get).collect();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{name:<58} median {:>8.1} ms  (min {min:.1}, max {max:.1})",
        median(v)
    );
}

fn main() {
    let mut runs_n = 10usize;
    let mut solicit = "2000".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs_n = args.next().and_then(|v| v.parse().ok()).unwrap_or(10)
            }
            "--solicit-interval" => {
                solicit = args.next().unwrap_or(solicit);
            }
            other => {
                eprintln!(
                    "usage: bench_discovery [--runs N] [--solicit-interval \
                     MS] (unknown {other})"
                );
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = netns_available() {
        eprintln!("bench_discovery needs network namespaces: {e}");
        std::process::exit(1);
    }
    println!(
        "ddmd {} — {runs_n} runs, --solicit-interval {solicit}",
        ddm_test_harness::ddmd_bin().display()
    );
    let mut runs = Vec::new();
    for i in 0..runs_n {
        match one_run(i, &solicit) {
            Ok(r) => {
                println!(
                    "run {i:>2}: peer {:>7.1} ms (log) {:>7.1} ms (poll), \
                     ready {:>5.1} ms, failed solicitations {}; link down → \
                     peer down {:>6.1} ms (log, link-down record {:>6.1}), \
                     {:>6.1} ms (poll), ip took {:>4.1} ms; downed side's \
                     own peer down {:>6.1} ms",
                    r.peer_log,
                    r.peer_poll,
                    r.ready_log,
                    r.failed_solicits,
                    r.down_log,
                    r.down_link_log,
                    r.down_poll,
                    r.ip_took,
                    r.down_local_log
                );
                runs.push(r);
            }
            Err(e) => {
                eprintln!("run {i}: {e}");
                std::process::exit(1);
            }
        }
    }
    println!();
    summary("spawn both → both peers up (discovery log)", &runs, |r| {
        r.peer_log
    });
    summary("spawn both → both Exchange (get-peers poll)", &runs, |r| {
        r.peer_poll
    });
    summary("spawn both → both interfaces ready (log)", &runs, |r| {
        r.ready_log
    });
    summary("ip link set down (s1) → s2 peer down (s2 log)", &runs, |r| {
        r.down_log
    });
    summary(
        "ip link set down returned → s2 not Exchange (poll)",
        &runs,
        |r| r.down_poll,
    );
    summary("time `ip link set down` itself took", &runs, |r| r.ip_took);
    summary("ip link set down (s1) → s1 peer down (s1 log)", &runs, |r| {
        r.down_local_log
    });
    let failed: usize = runs.iter().map(|r| r.failed_solicits).sum();
    println!(
        "solicitations that failed to send before peering: {failed} in {} runs",
        runs.len()
    );
}
