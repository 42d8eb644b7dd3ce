//! Two exchange actors over the in-memory transport, on paused time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ddm_admin_api::latest::RouterKind;
use ractor::{Actor, DerivedActorRef};
use slog::Logger;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::super::actor::{
    Exchange, ExchangeArgs, ExchangeFailed, ExchangeMsg, ExchangeRef,
    MAX_ATTEMPTS,
};
use super::super::testing::{fake_router_keeping, KeptSlots, Seen};
use super::super::wire::v3;
use super::*;
use crate::test_actors::Forward;
use ddm_proto::PeerId;

/// Longer than anything waited for here (virtual time).
const DEADLINE: Duration = Duration::from_secs(60);
const PORT: u16 = 9000;

fn addr(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n)
}

fn pv(dest: &str, path: &[&str]) -> v3::PathVector {
    v3::PathVector {
        destination: dest.parse().unwrap(),
        path: path.iter().map(|s| s.to_string()).collect(),
    }
}

fn announce(dests: &[&str]) -> v3::Update {
    let mut u = v3::Update::default();
    u.underlay_mut().announce =
        dests.iter().map(|d| pv(d, &["a"])).collect::<BTreeSet<_>>();
    u
}

fn answer(dest: &str) -> v3::PullResponse {
    offer(&[dest])
}

/// A pull answer offering `dests`.
fn offer(dests: &[&str]) -> v3::PullResponse {
    v3::PullResponse {
        underlay: Some(dests.iter().map(|d| pv(d, &["x"])).collect()),
        tunnel: None,
    }
}

/// One side: its exchange actor (peer `them`), its fake router's record.
struct Side {
    x: ExchangeRef,
    seen: mpsc::UnboundedReceiver<Seen>,
    failed: mpsc::UnboundedReceiver<ExchangeFailed>,
    /// Imports the router was handed with an import permit.
    permitted: Arc<AtomicU64>,
    /// The pull slots the router keeps, if it was asked to.
    kept: KeptSlots,
}

async fn side(
    net: &ExchangeNet,
    us: u16,
    them: u16,
    offering: &str,
    give_up_after: Duration,
) -> Side {
    side_offering(net, us, them, &[offering], give_up_after).await
}

/// A side whose router offers `dests` to the peer.
async fn side_offering(
    net: &ExchangeNet,
    us: u16,
    them: u16,
    dests: &[&str],
    give_up_after: Duration,
) -> Side {
    side_keeping(net, us, them, dests, give_up_after, false).await
}

/// [`side_offering`], its router keeping (with `keep`) the pull slots it
/// is handed in `kept` while that is `Some`.
async fn side_keeping(
    net: &ExchangeNet,
    us: u16,
    them: u16,
    dests: &[&str],
    give_up_after: Duration,
    keep: bool,
) -> Side {
    let (router, seen, permitted, kept) =
        fake_router_keeping(offer(dests), keep).await;
    let (tx, failed) = mpsc::unbounded_channel();
    let (c, _) =
        Actor::spawn(None, Forward::<ExchangeFailed>::new(), tx).await.unwrap();
    let on_failure: DerivedActorRef<ExchangeFailed> = c.get_derived();
    let args = ExchangeArgs {
        peer: PeerId { ifindex: u32::from(us), addr: addr(them) },
        peer_hostname: format!("r{them}"),
        peer_kind: RouterKind::Server,
        version: 3,
        local_addr: addr(us),
        port: PORT,
        peer_port: PORT,
        timeout: Duration::from_secs(1),
        max_path_len: crate::policy::MAX_PATH_LEN_BOUND,
        router,
        on_failure: Some(on_failure),
        give_up_after,
        log: Logger::root(slog::Discard, slog::o!()),
        transport: ExchangeTransport::memory(net.clone()),
    };
    let (x, _) = Actor::spawn(None, Exchange, args).await.unwrap();
    Side { x, seen, failed, permitted, kept }
}

/// The next thing seen that `pick` takes, skipping the rest.
async fn until<T>(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    mut pick: impl FnMut(Seen) -> Option<T>,
) -> T {
    timeout(DEADLINE, async {
        loop {
            if let Some(t) = pick(rx.recv().await.expect("router gone")) {
                return t;
            }
        }
    })
    .await
    .expect("nothing in time")
}

/// The next update the router was handed (`Import`), skipping the rest.
async fn next_import(rx: &mut mpsc::UnboundedReceiver<Seen>) -> v3::Update {
    until(rx, |s| match s {
        Seen::Import(_, u) => Some(u),
        _ => None,
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn two_exchanges_pull_and_push_in_memory() {
    let net = ExchangeNet::new();
    let mut a = side(&net, 1, 2, "fd00:a::/64", Duration::ZERO).await;
    let mut b = side(&net, 2, 1, "fd00:b::/64", Duration::ZERO).await;
    // Each pulls the other's set (a pull that found no server yet is
    // retried after the back-off).
    let got = until(&mut a.seen, |s| match s {
        Seen::PullResult(_, r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(got, answer("fd00:b::/64"));
    let got = until(&mut b.seen, |s| match s {
        Seen::PullResult(_, r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(got, answer("fd00:a::/64"));
    assert!(net.is_bound(SocketAddrV6::new(addr(1), PORT, 0, 1)));

    // A's router pushes; B's router imports it, and A reports delivery.
    let update = announce(&["fd00:1::/64", "fd00:2::/64"]);
    a.x.cast(ExchangeMsg::Push(OutUpdate::from(&update))).unwrap();
    let imported = until(&mut b.seen, |s| match s {
        Seen::Import(p, u) => Some((p, u)),
        _ => None,
    })
    .await;
    assert_eq!(imported, (PeerId { ifindex: 2, addr: addr(1) }, update));
    let through = until(&mut a.seen, |s| match s {
        Seen::Delivered(_, n) => Some(n),
        _ => None,
    })
    .await;
    assert_eq!(through, 1);
    let c = ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!(c.pushes_received, 1);
    assert!(a.failed.try_recv().is_err());
    a.x.stop(None);
    b.x.stop(None);
}

#[tokio::test(start_paused = true)]
async fn requests_take_the_latency_and_what_queues_meanwhile_merges() {
    let net = ExchangeNet::new();
    let latency = Duration::from_millis(5);
    net.set_latency(latency);
    let mut a = side(&net, 1, 2, "fd00:a::/64", Duration::ZERO).await;
    let mut b = side(&net, 2, 1, "fd00:b::/64", Duration::ZERO).await;
    for s in [&mut a.seen, &mut b.seen] {
        until(s, |s| matches!(s, Seen::PullResult(..)).then_some(())).await;
    }
    // The first push is on its way for one latency; the two queued behind
    // it go together, one round trip after it.
    let sent = tokio::time::Instant::now();
    for d in ["fd00:1::/64", "fd00:2::/64", "fd00:3::/64"] {
        let update = announce(&[d]);
        a.x.cast(ExchangeMsg::Push(OutUpdate::from(&update))).unwrap();
    }
    let first = next_import(&mut b.seen).await;
    assert_eq!(first, announce(&["fd00:1::/64"]));
    assert!(sent.elapsed() >= latency, "{:?}", sent.elapsed());
    let second = next_import(&mut b.seen).await;
    assert_eq!(second, announce(&["fd00:2::/64", "fd00:3::/64"]));
    assert!(sent.elapsed() >= latency * 3, "{:?}", sent.elapsed());
    a.x.stop(None);
    b.x.stop(None);
}

#[tokio::test(start_paused = true)]
async fn injected_faults_fail_without_losing_a_push() {
    let net = ExchangeNet::new();
    let give_up = Duration::from_secs(1);
    let mut a = side(&net, 1, 2, "fd00:a::/64", give_up).await;
    let mut b = side(&net, 2, 1, "fd00:b::/64", give_up).await;
    until(&mut a.seen, |s| matches!(s, Seen::PullResult(..)).then_some(()))
        .await;

    // Refused, then timing out: A retries, reports B once, and keeps the
    // update; B's router sees nothing meanwhile.
    net.set_fault(addr(1), addr(2), Fault::Refuse);
    let update = announce(&["fd00:1::/64"]);
    a.x.cast(ExchangeMsg::Push(OutUpdate::from(&update))).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    net.set_fault(addr(1), addr(2), Fault::Timeout);
    let failed = timeout(DEADLINE, a.failed.recv()).await.unwrap().unwrap();
    assert_eq!(failed.peer.addr, addr(2));
    let c = ractor::call!(a.x, ExchangeMsg::GetCounters).unwrap();
    assert!(c.push_failures >= u64::from(MAX_ATTEMPTS), "{c:?}");
    assert_eq!(c.failures_reported, 1);

    // Healed (with a delay): delivered exactly once.
    net.set_fault(addr(1), addr(2), Fault::Delay(Duration::from_millis(50)));
    let imported = next_import(&mut b.seen).await;
    assert_eq!(imported, update);
    until(&mut a.seen, |s| matches!(s, Seen::Delivered(..)).then_some(()))
        .await;
    let c = ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!(c.pushes_received, 1);
    net.clear_fault(addr(1), addr(2));

    // A stopped: its server leaves the network, and B's pulls are refused.
    a.x.stop_and_wait(None, None).await.unwrap();
    assert!(!net.is_bound(SocketAddrV6::new(addr(1), PORT, 0, 1)));
    b.x.cast(ExchangeMsg::Pull).unwrap();
    let c = loop {
        let c = ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
        if c.pull_failures > 0 {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(c.pull_failures, 1);
    b.x.stop(None);
}

/// A stranger (any address but the peer's) is refused 403 in memory as
/// over HTTP, and nothing reaches the router.
#[tokio::test(start_paused = true)]
async fn strangers_are_refused_in_memory() {
    let net = ExchangeNet::new();
    let mut b = side(&net, 2, 1, "fd00:b::/64", Duration::ZERO).await;
    let to_b = SocketAddrV6::new(addr(2), PORT, 0, 0);
    timeout(DEADLINE, async {
        while !net.is_bound(to_b) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let stranger =
        net.client(to_b, addr(7), Version::V3, Duration::from_secs(1));
    let e = stranger
        .pull(None, crate::policy::MAX_PATH_LEN_BOUND)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Status { status, .. } if status == http::StatusCode::FORBIDDEN),
        "{e}"
    );
    let c = ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!(c.rejected_forbidden, 1);
    assert!(b.seen.try_recv().map_or(true, |s| !matches!(s, Seen::Import(..))));
    b.x.stop(None);
}

/// A peer that restarts before we notice it went down (its new process
/// holds less): its new session pulls us, we pull it back, and its answer
/// replaces what the old process told us. Then all is quiet: no pull
/// ping-pong between the two.
#[tokio::test(start_paused = true)]
async fn a_restarted_peer_is_pulled_back() {
    let net = ExchangeNet::new();
    let old = ["fd00:a::/64", "fd00:b::/64"];
    let a = side_offering(&net, 1, 2, &old, Duration::ZERO).await;
    let mut b = side(&net, 2, 1, "fd00:c::/64", Duration::ZERO).await;
    // What B's router holds from A: pull answers replace, pushes apply.
    let mut view = BTreeSet::new();
    let follow = |s: Seen, view: &mut BTreeSet<v3::PathVector>| match s {
        Seen::PullResult(_, r) => {
            *view = r.underlay.unwrap_or_default().into_iter().collect();
        }
        Seen::Import(_, u) => {
            let u = u.underlay.unwrap_or_default();
            u.withdraw.iter().for_each(|p| {
                view.remove(p);
            });
            view.extend(u.announce);
        }
        _ => {}
    };
    let want_old = offer(&old).underlay.unwrap().into_iter().collect();
    until(&mut b.seen, |s| {
        follow(s, &mut view);
        (view == want_old).then_some(())
    })
    .await;

    // A's process is replaced before B's discovery notices anything.
    a.x.stop_and_wait(None, None).await.unwrap();
    let fresh = ["fd00:a::/64"];
    let a = side_offering(&net, 1, 2, &fresh, Duration::ZERO).await;
    let want_fresh = offer(&fresh).underlay.unwrap().into_iter().collect();
    until(&mut b.seen, |s| {
        follow(s, &mut view);
        (view == want_fresh).then_some(())
    })
    .await;

    // Quiet afterwards: A pulled once, B pulled A twice in all (its first
    // pull, and the pull back), and both stay there.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let ca = ractor::call!(a.x, ExchangeMsg::GetCounters).unwrap();
    let cb = ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!((ca.pulls_sent, ca.pulls_received), (1, 1), "{ca:?}");
    assert_eq!(cb.pulls_sent, 2, "{cb:?}");
    while let Ok(s) = b.seen.try_recv() {
        follow(s, &mut view);
    }
    assert_eq!(view, want_fresh);
    a.x.stop(None);
    b.x.stop(None);
}

/// A push that reaches us while our pull is out is handed to the router
/// only after the pull's answer (which the router takes as the peer's
/// whole set, and which may be older than the push).
#[tokio::test(start_paused = true)]
async fn pushes_are_held_while_a_pull_is_out() {
    let net = ExchangeNet::new();
    let mut a = side(&net, 1, 2, "fd00:a::/64", Duration::ZERO).await;
    let mut b = side(&net, 2, 1, "fd00:b::/64", Duration::ZERO).await;
    until(&mut a.seen, |s| matches!(s, Seen::PullResult(..)).then_some(()))
        .await;
    until(&mut b.seen, |s| matches!(s, Seen::PullResult(..)).then_some(()))
        .await;
    // B's next pull of A takes a while; A pushes to B meanwhile.
    net.set_fault(addr(2), addr(1), Fault::Delay(Duration::from_millis(500)));
    b.x.cast(ExchangeMsg::Pull).unwrap();
    ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
    let update = announce(&["fd00:1::/64"]);
    a.x.cast(ExchangeMsg::Push(OutUpdate::from(&update))).unwrap();
    until(&mut a.seen, |s| matches!(s, Seen::Delivered(..)).then_some(()))
        .await;
    // Accepted by B's server, yet not handed on: the pull is still out.
    let c = ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!((c.pushes_received, c.pulls_sent), (1, 1), "{c:?}");
    assert!(b.seen.try_recv().is_err(), "the push was not held");
    let first = until(&mut b.seen, |s| match s {
        Seen::PullResult(..) | Seen::Import(..) => Some(s),
        _ => None,
    })
    .await;
    assert!(matches!(first, Seen::PullResult(..)), "{first:?}");
    let next = next_import(&mut b.seen).await;
    assert_eq!(next, update);
    // With the permit it was taken with: held, it still counted against
    // A, so A could not push past the router's pace meanwhile.
    assert_eq!(b.permitted.load(Ordering::Relaxed), 1);
    net.clear_fault(addr(2), addr(1));
    a.x.stop(None);
    b.x.stop(None);
}

/// A pull of the peer goes only once the router has imported the last
/// answer (it hands the pull slot back then): a peer answering at once,
/// pull after pull, cannot queue decoded answers in front of a router
/// slower than it.
#[tokio::test(start_paused = true)]
async fn a_pull_waits_for_the_router_to_import_the_last_answer() {
    let net = ExchangeNet::new();
    let mut a =
        side_keeping(&net, 1, 2, &["fd00:a::/64"], Duration::ZERO, true).await;
    let mut b = side(&net, 2, 1, "fd00:b::/64", Duration::ZERO).await;
    until(&mut a.seen, |s| matches!(s, Seen::PullResult(..)).then_some(()))
        .await;
    until(&mut b.seen, |s| matches!(s, Seen::PullFor(..)).then_some(())).await;
    // A's router still holds the first answer's slot: a second pull of B
    // waits, unsent.
    a.x.cast(ExchangeMsg::Pull).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        !std::iter::from_fn(|| b.seen.try_recv().ok())
            .any(|s| matches!(s, Seen::PullFor(..))),
        "pulled again before the last answer was imported"
    );
    let c = ractor::call!(a.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!(c.pulls_sent, 1, "{c:?}");
    // Unsent, the pull holds none of B's pushes: they are older than its
    // answer, and are imported at once.
    let update = announce(&["fd00:5::/64"]);
    b.x.cast(ExchangeMsg::Push(OutUpdate::from(&update))).unwrap();
    let imported = next_import(&mut a.seen).await;
    assert_eq!(imported, update);
    // Imported: the slot goes back, and the pull goes.
    a.kept.lock().unwrap().take();
    until(&mut b.seen, |s| matches!(s, Seen::PullFor(..)).then_some(())).await;
    until(&mut a.seen, |s| matches!(s, Seen::PullResult(..)).then_some(()))
        .await;
    a.x.stop(None);
    b.x.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_reset_before_the_answer_is_retried_and_counted_faults_run_out() {
    let net = ExchangeNet::new();
    let give_up = Duration::from_secs(30);
    let mut a = side(&net, 1, 2, "fd00:a::/64", give_up).await;
    let mut b = side(&net, 2, 1, "fd00:b::/64", give_up).await;
    until(&mut a.seen, |s| matches!(s, Seen::PullResult(..)).then_some(()))
        .await;
    let before = net.stats();
    assert!(before.requests > 0 && before.bytes > 0, "{before:?}");

    // The first push is handled by B but A sees the connection reset: A
    // cannot tell, so it pushes again; B holds the update either way.
    net.set_fault_count(addr(1), addr(2), Fault::Reset, 1);
    let update = announce(&["fd00:1::/64"]);
    a.x.cast(ExchangeMsg::Push(OutUpdate::from(&update))).unwrap();
    let imported = next_import(&mut b.seen).await;
    assert_eq!(imported, update);
    until(&mut a.seen, |s| matches!(s, Seen::Delivered(..)).then_some(()))
        .await;
    let c = ractor::call!(a.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!(c.push_failures, 1, "{c:?}");
    let c = ractor::call!(b.x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!(c.pushes_received, 2, "{c:?}");
    let after = net.stats();
    assert_eq!(after.requests, before.requests + 2);

    // A cut link (standing refusal) wins over a counted fault and leaves
    // it for later.
    net.set_fault(addr(1), addr(2), Fault::Refuse);
    net.set_fault_count(addr(1), addr(2), Fault::Timeout, 1);
    assert_eq!(net.next_fault(addr(1), addr(2)), Some(Fault::Refuse));
    net.clear_fault(addr(1), addr(2));
    assert_eq!(net.next_fault(addr(1), addr(2)), Some(Fault::Timeout));
    assert_eq!(net.next_fault(addr(1), addr(2)), None);
    // Jitter draws a delay within its bound.
    net.set_fault(addr(1), addr(2), Fault::Jitter(Duration::from_millis(5)));
    for _ in 0..20 {
        match net.next_fault(addr(1), addr(2)) {
            Some(Fault::Delay(d)) => assert!(d < Duration::from_millis(5)),
            f => panic!("{f:?}"),
        }
    }
}
