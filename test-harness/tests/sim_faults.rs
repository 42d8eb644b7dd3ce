//! Seeded faults on the simulated fabric. `DDM_SIM_SEED=N` runs that seed
//! alone; otherwise a fixed set runs. A failing run names its seed, the
//! step and the first violated invariant.
//!
//! Phase 1 applies the router faults of a schedule (crash, restart) and
//! its settle points; the link and exchange faults need link cutting in
//! the memory links and the driver's use of the exchange network's fault
//! injection (phase 2), so they are filtered out here, not pretended.

use std::time::Duration;

use ddm_test_harness::sim::faults::{seed_from_env, Fault, Schedule, SEED_ENV};
use ddm_test_harness::sim::topology::Topology;
use ddm_test_harness::sim::SimFabric;

/// The seeds CI runs. Seed 2 is left out: it finds a bug (see
/// [`seed_2_a_transit_restarting_before_expiry_leaves_stale_paths`]).
const SEEDS: &[u64] = &[1, 3, 4];

async fn run(topo: Topology, seed: u64) {
    let schedule = Schedule::generate(&topo, seed, 24, 4);
    let steps: Vec<_> = schedule
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.fault,
                Fault::Crash { .. } | Fault::Restart { .. } | Fault::Settle
            )
        })
        .cloned()
        .collect();
    let name = topo.name.clone();
    let mut f = SimFabric::start(topo).await.expect("the fabric starts");
    let limit = Duration::from_secs(60);
    let step = Duration::from_millis(100);
    f.converge(step, limit)
        .await
        .unwrap_or_else(|e| panic!("{SEED_ENV}={seed} {name} cold start: {e}"));
    let mut applied = 0;
    for (n, s) in steps.iter().enumerate() {
        tokio::time::sleep(s.after).await;
        match &s.fault {
            Fault::Crash { router } => f.crash(*router).await,
            Fault::Restart { router } => f.restart(*router).await.unwrap(),
            Fault::Settle => {
                f.converge(step, limit).await.unwrap_or_else(|e| {
                    let done: Vec<String> = steps[..n]
                        .iter()
                        .map(|s| format!("+{:?} {}", s.after, s.fault))
                        .collect();
                    panic!(
                        "{SEED_ENV}={seed} {name} step {n} ({}): {e}\n\
                         steps so far: {done:#?}",
                        s.fault
                    )
                });
            }
            _ => unreachable!("filtered above"),
        }
        applied += 1;
    }
    assert!(applied > 0);
    f.stop().await;
}

/// What the simulation found (issue 11): on a rack of 6+2, s0 crashes,
/// then t1 crashes and restarts 0.56 s later, before s1's discovery
/// expires it (5 s). s1 never sees t1 go down, keeps the session, and
/// keeps the path `s0 → t1` learned from t1's earlier life: the new t1
/// never knew it, so never withdraws it. A one-sided reset needs a resync
/// (the real-fabrics rule); until the exchange does one this fails.
#[tokio::test(start_paused = true)]
#[ignore = "finds a bug: stale paths after a one-sided restart (issue 11)"]
async fn seed_2_a_transit_restarting_before_expiry_leaves_stale_paths() {
    run(Topology::rack(6, 2), 2).await;
}

fn seeds() -> Vec<u64> {
    match std::env::var(SEED_ENV) {
        Ok(_) => vec![seed_from_env(0).unwrap_or_else(|e| panic!("{e}"))],
        Err(_) => SEEDS.to_vec(),
    }
}

#[tokio::test(start_paused = true)]
async fn seeded_router_crashes_on_a_rack() {
    for seed in seeds() {
        run(Topology::rack(6, 2), seed).await;
    }
}

#[tokio::test(start_paused = true)]
async fn seeded_router_crashes_on_two_racks() {
    for seed in seeds() {
        run(Topology::racks(2, 4, 2, 2), seed).await;
    }
}
