//! A fabric of racks forwards every flow, loop-free (issue 7, point 4).
//!
//! Two racks, each of three servers and two rack transits (every server
//! wired to both transits of its rack), joined by two spine transits wired
//! to every rack transit: 12 real `ddmd` routers, 20 links (see
//! [`Racks`]). Every server originates its own /64 and has its first
//! address on `lo`. Once every server routes to every other server's /64,
//! the test checks that
//!
//! * a rack transit reaches each server wired to it only directly: its
//!   kernel route to that server's /64 has exactly one nexthop, the
//!   server's link (a path through a spine is longer);
//! * every flow between servers' own addresses is answered, within a rack
//!   and across racks (30 flows; `ping -c 1 -W 1` per try, retried in
//!   rounds within a deadline);
//!
//! and prints the paths per destination each router holds (`GET
//! /prefixes`), with their maximum and mean: the "paths per destination"
//! figure. All findings are printed before the test fails on any of them.
//!
//! The same checks run on one rack alone (three servers, two transits, no
//! spine), which must keep forwarding as it always has.
//!
//! Build the binaries first (`cargo build --workspace --bins`). The tests
//! skip loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::time::Duration;

use ddm_test_harness::netns::{require_netns, wait_until};
use ddm_test_harness::racks::{Racks, RacksSpec, Role};

/// How long the fabric may take to route every server to every other.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);

/// How long a rack transit's routes to its servers may take to settle
/// on the direct link once the fabric has converged.
const DIRECT_DEADLINE: Duration = Duration::from_secs(5);

/// How long unanswered flows are pinged again (about once a second each).
const PING_DEADLINE: Duration = Duration::from_secs(6);

#[test]
fn two_racks_forward_every_flow_loop_free() {
    if !require_netns("two_racks_forward_every_flow_loop_free") {
        return;
    }
    forwards_every_flow("two racks", "racks2", RacksSpec::TWO_RACKS);
}

/// One rack alone (three servers, two transits) forwards as it always has.
#[test]
fn one_rack_forwards_every_flow() {
    if !require_netns("one_rack_forwards_every_flow") {
        return;
    }
    let spec = RacksSpec { racks: 1, spines: 0, ..RacksSpec::TWO_RACKS };
    forwards_every_flow("one rack", "racks1", spec);
}

/// Builds `spec`, originates every server's /64, waits for convergence,
/// then checks and reports as the module says; fails naming every finding.
fn forwards_every_flow(what: &str, tag: &str, spec: RacksSpec) {
    let racks = Racks::build(tag, spec, &[])
        .unwrap_or_else(|e| panic!("building the fabric ({what}): {e}"));
    eprintln!(
        "{what}: {} routers, {} links, all peered",
        spec.routers(),
        spec.links()
    );
    racks.originate_own().unwrap();
    let took = racks
        .wait_converged(CONVERGE_DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "every server routes to every other server's /64 {took:?} after the \
         last one originated its own"
    );

    let mut failures = Vec::new();

    // A rack transit's route to a server wired to it: that server's link
    // only. Checked for all such routes at once, until all are direct or
    // the deadline has passed.
    let mut pairs = Vec::new();
    for role in racks.roles() {
        if let Role::RackTransit { rack, .. } = *role {
            for server in racks.servers_of_rack(rack) {
                pairs.push((role.name(), server));
            }
        }
    }
    let checked = pairs.len();
    let mut indirect = Vec::new();
    let _ = wait_until(
        DIRECT_DEADLINE,
        "every rack transit to route to its servers directly only",
        || {
            indirect.clear();
            for (transit, server) in &pairs {
                let got = match racks.kernel_routes(transit) {
                    Ok(routes) => racks
                        .prefix_of(server)
                        .map(|dest| {
                            routes
                                .get(&dest)
                                .map(|r| racks.peers_of_route(transit, r))
                                .unwrap_or_default()
                        })
                        .unwrap_or_else(|e| vec![e]),
                    Err(e) => vec![e],
                };
                if got != [server.clone()] {
                    indirect.push(format!(
                        "{transit} → {server}: nexthops {got:?} (want [{server:?}])"
                    ));
                }
            }
            indirect.is_empty()
        },
    );
    eprintln!(
        "rack transits reaching a server of their rack only directly: {} of {checked}",
        checked - indirect.len()
    );
    for line in &indirect {
        eprintln!("  {line}");
    }
    if !indirect.is_empty() {
        failures.push(format!(
            "{} of {checked} rack-transit routes to their own servers are not \
             the direct link alone:\n  {}",
            indirect.len(),
            indirect.join("\n  ")
        ));
    }

    // Every flow, in a rack and across racks.
    let flows = racks.ping_all(PING_DEADLINE).unwrap();
    let answered = flows.iter().filter(|f| f.answered).count();
    eprintln!("pings answered: {answered} of {} flows", flows.len());
    let mut lost = Vec::new();
    for f in &flows {
        let same_rack =
            racks.role(&f.from).map(rack_of) == racks.role(&f.to).map(rack_of);
        let scope = if same_rack { "in rack" } else { "across racks" };
        let result = if f.answered { "answered" } else { "UNANSWERED" };
        eprintln!(
            "  {} → {} ({scope}): {result} after {} ping(s)",
            f.from, f.to, f.attempts
        );
        if !f.answered {
            let last = ping_summary(&f.last_output);
            lost.push(format!(
                "{} → {} ({scope}, {} pings; last: {last})",
                f.from, f.to, f.attempts
            ));
        }
    }
    if !lost.is_empty() {
        failures.push(format!(
            "{} of {} flows between servers were never answered within \
             {PING_DEADLINE:?}:\n  {}",
            lost.len(),
            flows.len(),
            lost.join("\n  ")
        ));
    }

    // The figure: paths per destination.
    let counts = racks.path_counts().unwrap();
    eprintln!("paths per destination held by each router (GET /prefixes):");
    eprint!("{}", racks.path_table(&counts));
    let mut missing = Vec::new();
    for role in racks.roles() {
        let node = role.name();
        for server in racks.servers().into_iter().filter(|s| *s != node) {
            let dest = racks.prefix_of(&server).unwrap();
            if counts.get(&node).and_then(|m| m.get(&dest)).is_none() {
                missing.push(format!("{node} → {server}"));
            }
        }
    }
    if !missing.is_empty() {
        failures.push(format!(
            "routers hold no path to some server's /64: {}",
            missing.join(", ")
        ));
    }

    if !failures.is_empty() {
        panic!(
            "the fabric of {what} does not forward loop-free:\n{}",
            racks.with_logs(&failures.join("\n"))
        );
    }
    racks.finish().unwrap_or_else(|e| panic!("{e}"));
}

/// The rack of a server or rack transit; spines have none.
fn rack_of(role: Role) -> Option<usize> {
    match role {
        Role::Server { rack, .. } | Role::RackTransit { rack, .. } => {
            Some(rack)
        }
        Role::Spine { .. } => None,
    }
}

/// What `ping` said about an unanswered ping, on one line: its output
/// without the banner lines.
fn ping_summary(output: &str) -> String {
    output
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("PING ") && !l.starts_with("--- ")
        })
        .collect::<Vec<_>>()
        .join("; ")
}
