//! Tests of the router actor.

use super::worker::coalesce;
use super::*;
use crate::dataplane::memory::MemoryDataplane;
use crate::dataplane::Nexthop;
use crate::dataplane::{RouteUpdate, TunnelEntry};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A stand-in exchange actor that records what the router pushes, and an
/// empty update where the router says it answered a pull
/// ([`PeerCmd::Answered`]; the router never pushes an empty update).
struct FakeExchange;

type Pushed = Arc<Mutex<Vec<v3::Update>>>;

impl Actor for FakeExchange {
    type Msg = PeerCmd;
    type State = Pushed;
    type Arguments = Pushed;

    async fn pre_start(
        &self,
        _: ActorRef<PeerCmd>,
        pushed: Pushed,
    ) -> Result<Pushed, ActorProcessingErr> {
        Ok(pushed)
    }

    async fn handle(
        &self,
        _: ActorRef<PeerCmd>,
        msg: PeerCmd,
        pushed: &mut Pushed,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PeerCmd::Push(u) => pushed.lock().unwrap().push(u.to_wire()),
            PeerCmd::Answered => {
                pushed.lock().unwrap().push(v3::Update::default())
            }
            PeerCmd::Pull => {}
        }
        Ok(())
    }
}

fn p(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn peer(i: u32) -> PeerId {
    PeerId { ifindex: i, addr: format!("fe80::{i}").parse().unwrap() }
}

/// The pull answer offering what `u` announces.
fn pull_answer(u: &OutUpdate) -> OutPull {
    let underlay = u.to_wire().underlay.map(|u| u.announce);
    v3::PullResponse { underlay, tunnel: None }.into()
}

fn announce(dest: &str, path: &[&str]) -> OutUpdate {
    OutUpdate::from(v3::Update {
        underlay: Some(v3::UnderlayUpdate {
            announce: [PathVector {
                destination: p(dest),
                path: path.iter().map(|s| s.to_string()).collect(),
            }]
            .into(),
            withdraw: BTreeSet::new(),
        }),
        tunnel: None,
    })
}

async fn router(kind: RouterKind) -> (RouterRef, MemoryDataplane) {
    router_with(kind, PolicyConfig::default()).await
}

async fn router_with(
    kind: RouterKind,
    policy: PolicyConfig,
) -> (RouterRef, MemoryDataplane) {
    let dp = MemoryDataplane::new();
    (router_on(kind, policy, Box::new(dp.clone())).await, dp)
}

/// A router named "me" programming `dataplane`.
async fn router_on(
    kind: RouterKind,
    policy: PolicyConfig,
    dataplane: Box<dyn Dataplane>,
) -> RouterRef {
    let turn = DataplaneTurn::default();
    router_taking(kind, policy, dataplane, turn).await
}

/// A router named "me" programming `dataplane` in its `turn`.
async fn router_taking(
    kind: RouterKind,
    policy: PolicyConfig,
    dataplane: Box<dyn Dataplane>,
    turn: DataplaneTurn,
) -> RouterRef {
    let args = RouterArgs {
        hostname: "me".to_string(),
        kind,
        dataplane,
        policy,
        turn,
        await_originated: None,
        log: Logger::root(slog::Discard, o!()),
    };
    Actor::spawn(None, Router, args).await.unwrap().0
}

async fn add_peer(r: &RouterRef, i: u32, kind: RouterKind) -> Pushed {
    add_peer_with_id(r, i, kind).await.0
}

/// As [`add_peer`], with the stand-in's id (for `Delivered`).
async fn add_peer_with_id(
    r: &RouterRef,
    i: u32,
    kind: RouterKind,
) -> (Pushed, ractor::ActorId) {
    let pushed = Pushed::default();
    let (x, _) =
        Actor::spawn(None, FakeExchange, pushed.clone()).await.unwrap();
    r.cast(RouterMsg::PeerUp {
        peer: peer(i),
        kind,
        exchange: x.get_derived(),
    })
    .unwrap();
    (pushed, x.get_id())
}

/// Peer 1 announces `dest` along "x", without an import permit.
fn import_from_1(r: &RouterRef, dest: &str) {
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce(dest, &["x"]),
        permit: None,
    })
    .unwrap()
}

/// Wait (in paused time) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

fn nh(i: u32) -> Nexthop {
    use crate::rib::PeerNexthop;
    peer(i).nexthop()
}

#[tokio::test(start_paused = true)]
async fn imports_program_the_dataplane_as_ecmp_sets() {
    let (r, dp) = router(RouterKind::Server).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    add_peer(&r, 2, RouterKind::Transit).await;
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd00:9::/64", &["far", "t1"]),
        permit: None,
    })
    .unwrap();
    r.cast(RouterMsg::Import {
        peer: peer(2),
        update: announce("fd00:9::/64", &["far", "t2"]),
        permit: None,
    })
    .unwrap();
    until("two nexthops", || {
        dp.tables().routes.get(&p("fd00:9::/64"))
            == Some(&[nh(1), nh(2)].into())
    })
    .await;
    // One path goes: the set shrinks; the other goes: the route goes.
    r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
    until("one nexthop", || {
        dp.tables().routes.get(&p("fd00:9::/64")) == Some(&[nh(2)].into())
    })
    .await;
    r.cast(RouterMsg::PeerDown(peer(2))).unwrap();
    until("no route", || dp.tables().routes.is_empty()).await;
}

/// The permit a pushed update carries comes back once it is imported and
/// its routes are taken by the dataplane worker: the peer's server reads
/// its next push only then.
#[tokio::test(start_paused = true)]
async fn an_import_gives_its_permit_back() {
    let (r, dp) = router(RouterKind::Server).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let permit = permits.clone().try_acquire_owned().unwrap();
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd00:9::/64", &["far", "t1"]),
        permit: Some(permit),
    })
    .unwrap();
    let back = permits.acquire();
    let back = tokio::time::timeout(Duration::from_secs(5), back).await;
    assert!(back.is_ok(), "the permit never came back");
    // And the update was imported.
    assert_eq!(
        r.call(RouterMsg::GetRouteCount, None).await.unwrap().unwrap(),
        1
    );
    drop(dp);
}

/// A transit whose other peer has not taken what it was pushed holds the
/// importing peer's permits: until that peer's backlog is delivered, or
/// for [`hold::HOLD_MAX`] at most, whatever it does.
#[tokio::test(start_paused = true)]
async fn a_lagging_peer_holds_imports_for_a_while() {
    let (r, _dp) = router(RouterKind::Transit).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    let (to_2, id_2) = add_peer_with_id(&r, 2, RouterKind::Server).await;
    let permits = Arc::new(tokio::sync::Semaphore::new(3));
    let import = |update: OutUpdate| RouterMsg::Import {
        peer: peer(1),
        update,
        permit: Some(permits.clone().try_acquire_owned().unwrap()),
    };
    // More than the limit, passed on to peer 2, which never reports it
    // delivered.
    let many: Vec<PathVector> = (0..=hold::BACKLOG_LIMIT)
        .map(|i| PathVector {
            destination: p(&format!("fd00:{i:x}::/64")),
            path: vec!["far".into(), "t1".into()],
        })
        .collect();
    let many = OutUpdate::from(v3::Update {
        underlay: Some(v3::UnderlayUpdate {
            announce: many.into_iter().collect(),
            withdraw: BTreeSet::new(),
        }),
        tunnel: None,
    });
    r.cast(import(many)).unwrap();
    until("pushed to peer 2", || !to_2.lock().unwrap().is_empty()).await;
    until("the first permit back", || permits.available_permits() == 3).await;

    // The next import's permit is held for the bound.
    let t0 = tokio::time::Instant::now();
    r.cast(import(announce("fd01::/64", &["far", "t1"]))).unwrap();
    until("the held permit back", || permits.available_permits() == 3).await;
    let held = t0.elapsed();
    assert!(held >= hold::HOLD_MAX, "back after {held:?}");

    // Peer 2 reports everything delivered: a held permit goes back then.
    let t0 = tokio::time::Instant::now();
    r.cast(import(announce("fd02::/64", &["far", "t1"]))).unwrap();
    tokio::time::sleep(hold::HOLD_MAX / 4).await;
    assert_eq!(permits.available_permits(), 2, "held");
    r.cast(RouterMsg::Delivered { peer: peer(2), exchange: id_2, through: 99 })
        .unwrap();
    until("the permit back", || permits.available_permits() == 3).await;
    assert!(t0.elapsed() < hold::HOLD_MAX, "back after {:?}", t0.elapsed());
}

/// A server passes nothing on: its own pushes lagging (a large origination
/// not yet delivered) never hold a peer's permits.
#[tokio::test(start_paused = true)]
async fn a_server_never_holds_imports() {
    let (r, _dp) = router(RouterKind::Server).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    let to_2 = add_peer(&r, 2, RouterKind::Transit).await;
    let own: BTreeSet<Ipv6Net> = (0..=hold::BACKLOG_LIMIT)
        .map(|i| p(&format!("fd00:{i:x}::/64")))
        .collect();
    r.cast(RouterMsg::Originate(own)).unwrap();
    until("pushed to peer 2", || !to_2.lock().unwrap().is_empty()).await;
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let t0 = tokio::time::Instant::now();
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd01::/64", &["far", "t1"]),
        permit: Some(permits.clone().try_acquire_owned().unwrap()),
    })
    .unwrap();
    until("the permit back", || permits.available_permits() == 1).await;
    assert!(t0.elapsed() < hold::HOLD_MAX, "back after {:?}", t0.elapsed());
}

/// A server whose dataplane lands a batch for each permit added to the
/// returned gate, with transit peer 1 up.
async fn gated_server(
) -> (RouterRef, Arc<tokio::sync::Semaphore>, MemoryDataplane) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let dp = MemoryDataplane::new();
    let gated = TestDataplane::Gated { gate: gate.clone(), inner: dp.clone() };
    let r = router_on(RouterKind::Server, Default::default(), Box::new(gated))
        .await;
    add_peer(&r, 1, RouterKind::Transit).await;
    (r, gate, dp)
}

/// While the dataplane is busy with a batch, the permit of an import
/// queued behind it stays out: the peer's next push waits rather than its
/// routes piling up in front of a slow kernel. It comes back once the
/// worker takes the queued routes.
#[tokio::test(start_paused = true)]
async fn an_import_behind_a_busy_dataplane_keeps_its_permit() {
    let (r, gate, dp) = gated_server().await;
    // One permit: each import's comes back before the next can be had.
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    let import = |dest: &str, permit| RouterMsg::Import {
        peer: peer(1),
        update: announce(dest, &["far", "t1"]),
        permit: Some(permit),
    };
    let back = || {
        let p = permits.clone().acquire_owned();
        tokio::time::timeout(Duration::from_secs(5), p)
    };
    let first = permits.clone().try_acquire_owned().unwrap();
    r.cast(import("fd00:1::/64", first)).unwrap();
    // The worker took the first batch (its permit is back) and waits in
    // the dataplane.
    let second = back().await.expect("the first permit came back").unwrap();
    r.cast(import("fd00:2::/64", second)).unwrap();
    // Both imported, the second's routes queued: its permit stays out.
    assert_eq!(
        r.call(RouterMsg::GetRouteCount, None).await.unwrap().unwrap(),
        2
    );
    let held = permits.acquire();
    assert!(
        tokio::time::timeout(Duration::from_secs(30), held).await.is_err(),
        "a permit came back while its routes waited for the dataplane"
    );
    // An import that queues nothing (its peer is not up) gives its permit
    // back at once, busy dataplane or not.
    let other = Arc::new(tokio::sync::Semaphore::new(1));
    r.cast(RouterMsg::Import {
        peer: peer(9),
        update: announce("fd00:3::/64", &["x"]),
        permit: Some(other.clone().try_acquire_owned().unwrap()),
    })
    .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), other.acquire());
    assert!(
        again.await.is_ok(),
        "an import that queued nothing kept its permit"
    );
    // The first batch lands; the worker takes the second and gives its
    // permit back.
    gate.add_permits(1);
    let _third = back().await.expect("the second permit came back").unwrap();
    // Taken, not yet programmed.
    assert_eq!(dp.tables().routes.len(), 1);
    gate.add_permits(1);
    until("both programmed", || dp.tables().routes.len() == 2).await;
    r.stop_and_wait(None, None).await.unwrap();
}

/// A pull answer's slot, like a push's permit, stays out while the routes
/// it queued wait behind a busy dataplane (the peer is not pulled again
/// meanwhile), and comes back once the worker takes them.
#[tokio::test(start_paused = true)]
async fn a_pull_answer_behind_a_busy_dataplane_keeps_its_slot() {
    let (r, gate, dp) = gated_server().await;
    // A first import keeps the worker in the dataplane.
    let permits = Arc::new(tokio::sync::Semaphore::new(1));
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd00:1::/64", &["far", "t1"]),
        permit: Some(permits.clone().try_acquire_owned().unwrap()),
    })
    .unwrap();
    let taken = tokio::time::timeout(Duration::from_secs(5), permits.acquire());
    assert!(taken.await.is_ok(), "the worker never took the first batch");
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    r.cast(RouterMsg::PullResult {
        peer: peer(1),
        response: pull_answer(&announce("fd00:2::/64", &["far", "t1"])),
        slot: Some(slots.clone().try_acquire_owned().unwrap()),
    })
    .unwrap();
    let held = slots.acquire();
    assert!(
        tokio::time::timeout(Duration::from_secs(30), held).await.is_err(),
        "the slot came back while the answer's routes waited"
    );
    gate.add_permits(1);
    let back = tokio::time::timeout(Duration::from_secs(5), slots.acquire());
    assert!(back.await.is_ok(), "the slot never came back");
    // The answer is the peer's whole set: fd00:1 went, fd00:2 came.
    gate.add_permits(1);
    until("the answer programmed", || {
        let t = dp.tables();
        t.routes.len() == 1 && t.routes.contains_key(&p("fd00:2::/64"))
    })
    .await;
    r.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_transit_redistributes_to_the_other_peers_only() {
    let (r, _dp) = router(RouterKind::Transit).await;
    let from = add_peer(&r, 1, RouterKind::Server).await;
    let other = add_peer(&r, 2, RouterKind::Server).await;
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd00:1::/64", &["s1"]),
        permit: None,
    })
    .unwrap();
    until("pushed to the other peer", || {
        other.lock().unwrap().iter().any(|u| {
            u.underlay.as_ref().is_some_and(|ul| {
                ul.announce.iter().any(|pv| {
                    pv.destination == p("fd00:1::/64")
                        && pv.path == ["s1", "me"]
                })
            })
        })
    })
    .await;
    assert!(from.lock().unwrap().is_empty(), "never back to its source");
    // The source expires: the other peer hears the withdrawal.
    r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
    until("withdrawn from the other peer", || {
        other.lock().unwrap().iter().any(|u| {
            u.underlay.as_ref().is_some_and(|ul| !ul.withdraw.is_empty())
        })
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn imports_queued_together_become_one_push_per_peer() {
    let (r, _dp) = router(RouterKind::Transit).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    add_peer(&r, 2, RouterKind::Transit).await;
    let other = add_peer(&r, 3, RouterKind::Server).await;
    // Both imports are in the mailbox before the router handles either;
    // the first path to fd00:2 loses to the shorter second one before
    // anything is pushed, so peer 3 is never told of it (only that it is
    // withdrawn: an earlier push might have told it).
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce_all(&[
            ("fd00:1::/64", &["a"]),
            ("fd00:2::/64", &["b", "x"]),
        ]),
        permit: None,
    })
    .unwrap();
    r.cast(RouterMsg::Import {
        peer: peer(2),
        update: announce("fd00:2::/64", &["b"]),
        permit: None,
    })
    .unwrap();
    until("pushed to peer 3", || !other.lock().unwrap().is_empty()).await;
    // Nothing more is on its way.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let pushed = other.lock().unwrap().clone();
    assert_eq!(pushed.len(), 1, "one push: {pushed:?}");
    let under = pushed[0].underlay.clone().unwrap_or_default();
    assert_eq!(
        under.announce,
        [
            PathVector {
                destination: p("fd00:1::/64"),
                path: vec!["a".into(), "me".into()],
            },
            PathVector {
                destination: p("fd00:2::/64"),
                path: vec!["b".into(), "me".into()],
            },
        ]
        .into()
    );
    assert!(
        under.withdraw.iter().all(|pv| pv.path == ["b", "x", "me"]),
        "{:?}",
        under.withdraw
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_announces_what_it_originates_and_drops_loops() {
    let (r, dp) = router(RouterKind::Server).await;
    let t = add_peer(&r, 1, RouterKind::Transit).await;
    r.cast(RouterMsg::Originate([p("fd00:5::/64")].into())).unwrap();
    until("originated prefix pushed", || {
        t.lock().unwrap().iter().any(|u| {
            u.underlay.as_ref().is_some_and(|ul| {
                ul.announce.iter().any(|pv| pv.path == ["me"])
            })
        })
    })
    .await;
    // A path through us is a loop: dropped, nothing installed.
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd00:6::/64", &["x", "me", "t1"]),
        permit: None,
    })
    .unwrap();
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd00:7::/64", &["y", "t1"]),
        permit: None,
    })
    .unwrap();
    until("the good path installed", || {
        dp.tables().routes.contains_key(&p("fd00:7::/64"))
    })
    .await;
    assert!(!dp.tables().routes.contains_key(&p("fd00:6::/64")));
    // Withdrawing what we originate is pushed too.
    r.cast(RouterMsg::Withdraw([p("fd00:5::/64")].into())).unwrap();
    until("withdrawal pushed", || {
        t.lock().unwrap().iter().any(|u| {
            u.underlay.as_ref().is_some_and(|ul| {
                ul.withdraw.iter().any(|pv| pv.destination == p("fd00:5::/64"))
            })
        })
    })
    .await;
}

/// The union of what `pushed` announced and withdrew, applied in
/// order: what the peer holds from us if every push arrived.
fn held(pushed: &Pushed) -> BTreeSet<PathVector> {
    let mut held = BTreeSet::new();
    for u in pushed.lock().unwrap().iter() {
        if let Some(u) = &u.underlay {
            for pv in &u.withdraw {
                held.remove(pv);
            }
            held.extend(u.announce.iter().cloned());
        }
    }
    held
}

/// A large change of what we originate is handed to the exchange actors
/// in parts, the first before the rest is worked out, and changes queued
/// behind it still take effect after it, in order.
#[tokio::test(start_paused = true)]
async fn a_large_change_is_pushed_in_parts_and_in_order() {
    let (r, _dp) = router(RouterKind::Server).await;
    let t = add_peer(&r, 1, RouterKind::Transit).await;
    let told = |t: &Pushed| {
        held(t).into_iter().map(|pv| pv.destination).collect::<BTreeSet<_>>()
    };
    let before = t.lock().unwrap().len();
    let all: Vec<Ipv6Net> = (0..10_000).map(|i| p(&nth(i))).collect();
    r.cast(RouterMsg::Originate(all.iter().copied().collect())).unwrap();
    let want: BTreeSet<Ipv6Net> = all.iter().copied().collect();
    until("the peer told all of it", || told(&t) == want).await;
    // The first push of the change held only its first part.
    let first = t.lock().unwrap()[before].clone();
    let first = first.underlay.map_or(0, |u| u.announce.len());
    assert!(
        (1..=5_000).contains(&first),
        "the first push announced {first} of 10,000"
    );
    // Withdraw the first 6,000, then take back the last 10 of them (in
    // the withdrawal's last part), queued together: the second change
    // takes effect after the whole first.
    r.cast(RouterMsg::Withdraw(all[..6_000].iter().copied().collect()))
        .unwrap();
    let back = &all[5_990..6_000];
    r.cast(RouterMsg::Originate(back.iter().copied().collect())).unwrap();
    let want: BTreeSet<Ipv6Net> =
        back.iter().chain(&all[6_000..]).copied().collect();
    assert_eq!(pulled(&r, peer(1)).await, want);
    until("the peer told the rest", || told(&t) == want).await;
}

/// Our side resets the session while a withdrawal is still queued (the
/// old exchange actor never delivered it) and more changes happen while
/// the peer is down; the peer never noticed. The new session's first
/// push makes the peer's view whole: what it got over both sessions
/// equals what we originate now.
#[tokio::test(start_paused = true)]
async fn a_one_sided_reset_loses_nothing() {
    let (r, _dp) = router(RouterKind::Server).await;
    let old = add_peer(&r, 1, RouterKind::Transit).await;
    r.cast(RouterMsg::Originate([p("fd00:1::/64"), p("fd00:2::/64")].into()))
        .unwrap();
    // Handed over first: withdrawn while still unsent, fd00:2 would never
    // reach the peer (nor would its withdrawal).
    until("announcements handed to the old session", || {
        !old.lock().unwrap().is_empty()
    })
    .await;
    r.cast(RouterMsg::Withdraw([p("fd00:2::/64")].into())).unwrap();
    until("withdrawal handed to the old session", || {
        old.lock().unwrap().iter().any(|u| {
            u.underlay.as_ref().is_some_and(|u| !u.withdraw.is_empty())
        })
    })
    .await;
    // The peer got the announcements, but not the withdrawal.
    let got: Vec<v3::Update> = old
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u.underlay.as_ref().is_some_and(|u| u.withdraw.is_empty()))
        .cloned()
        .collect();
    r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
    r.cast(RouterMsg::Withdraw([p("fd00:1::/64")].into())).unwrap();
    r.cast(RouterMsg::Originate([p("fd00:3::/64")].into())).unwrap();
    let new = add_peer(&r, 1, RouterKind::Transit).await;
    until("resync pushed", || !new.lock().unwrap().is_empty()).await;
    let mut all: Vec<v3::Update> = got;
    all.extend(new.lock().unwrap().iter().cloned());
    let view = held(&Pushed::new(Mutex::new(all)));
    let dests: Vec<Ipv6Net> = view.iter().map(|pv| pv.destination).collect();
    assert_eq!(dests, vec![p("fd00:3::/64")]);
}

/// The interface of a peer is re-created under a new index while a
/// withdrawal is owed to the peer: once told the interface moved, the
/// router withdraws it in the first push of the session on the new index.
#[tokio::test(start_paused = true)]
async fn a_withdrawal_owed_follows_a_re_created_interface() {
    let (r, _dp) = router(RouterKind::Server).await;
    let old = add_peer(&r, 1, RouterKind::Transit).await;
    r.cast(RouterMsg::Originate([p("fd00:1::/64")].into())).unwrap();
    until("the announcement handed over", || !old.lock().unwrap().is_empty())
        .await;
    r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
    r.cast(RouterMsg::Withdraw([p("fd00:1::/64")].into())).unwrap();
    r.cast(RouterMsg::InterfaceMoved { from: 1, to: 7 }).unwrap();
    let pushed = Pushed::default();
    let (x, _) =
        Actor::spawn(None, FakeExchange, pushed.clone()).await.unwrap();
    let moved = PeerId { ifindex: 7, ..peer(1) };
    r.cast(RouterMsg::PeerUp {
        peer: moved,
        kind: RouterKind::Transit,
        exchange: x.get_derived(),
    })
    .unwrap();
    until("the new session's first push", || {
        !pushed.lock().unwrap().is_empty()
    })
    .await;
    let first = pushed.lock().unwrap()[0].clone();
    let withdrawn: Vec<Ipv6Net> = first
        .underlay
        .iter()
        .flat_map(|u| u.withdraw.iter().map(|pv| pv.destination))
        .collect();
    assert_eq!(withdrawn, [p("fd00:1::/64")]);
}

/// A pull answered while an announcement is still unsent carries it: its
/// withdrawal is then sent, though the announcement itself never was.
#[tokio::test(start_paused = true)]
async fn a_pull_answer_makes_unsent_announcements_held() {
    let (r, _dp) = router(RouterKind::Server).await;
    let x = add_peer(&r, 1, RouterKind::Transit).await;
    // Queued together: the pull is answered between the origination and
    // the push it collected, and the withdrawal merges into that push.
    r.cast(RouterMsg::Originate([p("fd00:1::/64")].into())).unwrap();
    let (tx, rx) = ractor::concurrency::oneshot();
    r.cast(RouterMsg::PullFor(peer(1), tx.into())).unwrap();
    r.cast(RouterMsg::Withdraw([p("fd00:1::/64")].into())).unwrap();
    let answer = rx.await.unwrap().underlay.unwrap();
    assert_eq!(answer.len(), 1, "{answer:?}");
    until("the withdrawal pushed", || {
        x.lock().unwrap().iter().any(|u| {
            u.underlay.as_ref().is_some_and(|u| {
                u.withdraw.iter().any(|pv| pv.destination == p("fd00:1::/64"))
            })
        })
    })
    .await;
}

/// The exchange actor hears that a pull was answered in order with the
/// pushes: after every push handed over before the answer, before any
/// handed over after it.
#[tokio::test(start_paused = true)]
async fn a_pull_answer_is_told_in_order_with_the_pushes() {
    let (r, _dp) = router(RouterKind::Server).await;
    let x = add_peer(&r, 1, RouterKind::Transit).await;
    r.cast(RouterMsg::Originate([p("fd00:1::/64")].into())).unwrap();
    until("pushed", || !x.lock().unwrap().is_empty()).await;
    ractor::call!(r, RouterMsg::PullFor, peer(1)).unwrap();
    r.cast(RouterMsg::Originate([p("fd00:2::/64")].into())).unwrap();
    until("pushed again", || x.lock().unwrap().len() == 3).await;
    let got = x.lock().unwrap().clone();
    let dests = |u: &v3::Update| -> Vec<Ipv6Net> {
        u.underlay
            .iter()
            .flat_map(|u| &u.announce)
            .map(|pv| pv.destination)
            .collect()
    };
    assert_eq!(dests(&got[0]), [p("fd00:1::/64")]);
    assert_eq!(got[1], v3::Update::default(), "the answer's mark");
    assert_eq!(dests(&got[2]), [p("fd00:2::/64")]);
}

/// A withdrawal collected but not handed over when the session ends is
/// remembered: the next session withdraws it (the peer may hold the path
/// from the session before).
#[tokio::test(start_paused = true)]
async fn a_withdrawal_unsent_at_session_end_is_sent_to_the_next() {
    let (r, _dp) = router(RouterKind::Server).await;
    let old = add_peer(&r, 1, RouterKind::Transit).await;
    r.cast(RouterMsg::Originate([p("fd00:1::/64"), p("fd00:2::/64")].into()))
        .unwrap();
    until("announced", || !old.lock().unwrap().is_empty()).await;
    // Queued together: the peer goes down before the withdrawal's push is
    // handed over.
    r.cast(RouterMsg::Withdraw([p("fd00:1::/64")].into())).unwrap();
    r.cast(RouterMsg::PeerDown(peer(1))).unwrap();
    let new = add_peer(&r, 1, RouterKind::Transit).await;
    until("resync pushed", || !new.lock().unwrap().is_empty()).await;
    let first = new.lock().unwrap()[0].clone();
    let u = first.underlay.unwrap();
    let dests = |s: &BTreeSet<PathVector>| {
        s.iter().map(|pv| pv.destination).collect::<Vec<_>>()
    };
    assert_eq!(dests(&u.withdraw), [p("fd00:1::/64")]);
    assert_eq!(dests(&u.announce), [p("fd00:2::/64")]);
}

#[tokio::test(start_paused = true)]
async fn updates_from_unknown_peers_change_nothing() {
    let (r, dp) = router(RouterKind::Server).await;
    r.cast(RouterMsg::Import {
        peer: peer(9),
        update: announce("fd00:9::/64", &["x"]),
        permit: None,
    })
    .unwrap();
    let n = ractor::call!(r, RouterMsg::GetRouteCount).unwrap();
    assert_eq!(n, 0);
    assert!(dp.tables().routes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn stopping_removes_every_route() {
    let (r, dp) = router(RouterKind::Server).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce("fd00:9::/64", &["x"]),
        permit: None,
    })
    .unwrap();
    until("installed", || !dp.tables().routes.is_empty()).await;
    r.stop_and_wait(None, None).await.unwrap();
    assert!(dp.tables().routes.is_empty());
}

/// Poll the router's counters until `done` holds.
async fn counters_until(
    r: &RouterRef,
    done: impl Fn(&RouterCounters) -> bool,
) -> RouterCounters {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = ractor::call!(r, RouterMsg::GetCounters).unwrap();
        if done(&c) {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "counters: {c:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn counters_count_routes_batches_and_loops() {
    let (r, _dp) = router(RouterKind::Server).await;
    let before = ractor::call!(r, RouterMsg::GetCounters).unwrap();
    assert_eq!(before, RouterCounters::default());
    add_peer(&r, 1, RouterKind::Transit).await;
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce_all(&[
            ("fd00:1::/64", &["x"]),
            ("fd00:2::/64", &["x"]),
            ("fd00:3::/64", &["x", "me"]),
        ]),
        permit: None,
    })
    .unwrap();
    let c = counters_until(&r, |c| c.route_updates_applied >= 2).await;
    assert_eq!(c.routes, 2);
    assert_eq!(c.loops_dropped, 1);
    assert!(c.dataplane_batches >= 1);
    assert_eq!(c.dataplane_batch_errors, 0);
    assert_eq!(c.named()["routes"], 2);
    r.stop_and_wait(None, None).await.unwrap();
}

/// Dataplane doubles.
enum TestDataplane {
    /// Refuses every request.
    Broken,
    /// Every batch waits for one permit of `gate`, then lands in `inner`:
    /// a kernel that is behind.
    Gated { gate: Arc<tokio::sync::Semaphore>, inner: MemoryDataplane },
    /// Fails its first `failures` batches as a whole (as a netlink socket
    /// that failed part way), then lands them in `inner`.
    Failing {
        failures: Arc<std::sync::atomic::AtomicUsize>,
        inner: MemoryDataplane,
    },
    /// Panics at its first batch (a bug in a dataplane).
    Panicking,
    /// Writes what it does to `log` as "`name` stale", "`name` apply N"
    /// and "`name` removed" (or "`name` removal after a failure", as it
    /// begins); its removal waits for one permit of `removal`.
    Logged {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        removal: Arc<tokio::sync::Semaphore>,
    },
}

type DpResult<T> = Result<T, crate::dataplane::DataplaneError>;

fn refused<T>() -> DpResult<T> {
    Err(crate::dataplane::DataplaneError::Request("no".into()))
}

#[async_trait::async_trait]
impl Dataplane for TestDataplane {
    fn name(&self) -> &'static str {
        match self {
            TestDataplane::Broken => "broken",
            TestDataplane::Gated { .. } => "gated",
            TestDataplane::Logged { .. } => "logged",
            TestDataplane::Failing { .. } => "failing",
            TestDataplane::Panicking => "panicking",
        }
    }
    async fn remove_stale(&mut self) -> DpResult<usize> {
        if let TestDataplane::Logged { name, log, .. } = self {
            log.lock().unwrap().push(format!("{name} stale"));
        }
        Ok(0)
    }
    async fn apply(&mut self, updates: Vec<RouteUpdate>) -> DpResult<()> {
        match self {
            TestDataplane::Broken => refused(),
            TestDataplane::Panicking => panic!("a dataplane bug"),
            TestDataplane::Gated { gate, inner } => {
                gate.acquire().await.expect("gate open").forget();
                inner.apply(updates).await
            }
            TestDataplane::Logged { name, log, .. } => {
                log.lock()
                    .unwrap()
                    .push(format!("{name} apply {}", updates.len()));
                Ok(())
            }
            TestDataplane::Failing { failures, inner } => {
                use std::sync::atomic::Ordering::SeqCst;
                let left = failures.load(SeqCst);
                if left > 0 {
                    failures.store(left - 1, SeqCst);
                    return Err(crate::dataplane::DataplaneError::Incomplete {
                        error: "socket failed".into(),
                        updates,
                    });
                }
                inner.apply(updates).await
            }
        }
    }
    async fn set_tunnels(
        &mut self,
        tunnels: BTreeSet<TunnelEntry>,
    ) -> DpResult<()> {
        match self {
            TestDataplane::Broken | TestDataplane::Panicking => refused(),
            TestDataplane::Gated { inner, .. } => {
                inner.set_tunnels(tunnels).await
            }
            TestDataplane::Logged { .. } => Ok(()),
            TestDataplane::Failing { failures, inner } => {
                use std::sync::atomic::Ordering::SeqCst;
                let left = failures.load(SeqCst);
                if left > 0 {
                    failures.store(left - 1, SeqCst);
                    return Err(crate::dataplane::DataplaneError::Unavailable(
                        "the tunnel driver is short of memory".into(),
                    ));
                }
                inner.set_tunnels(tunnels).await
            }
        }
    }
    async fn remove_all(&mut self) -> DpResult<usize> {
        match self {
            TestDataplane::Broken | TestDataplane::Panicking => Ok(0),
            TestDataplane::Gated { inner, .. } => inner.remove_all().await,
            TestDataplane::Failing { inner, .. } => inner.remove_all().await,
            TestDataplane::Logged { name, log, removal } => {
                removal.acquire().await.expect("gate open").forget();
                log.lock().unwrap().push(format!("{name} removed"));
                Ok(0)
            }
        }
    }
    async fn remove_all_after_failure(&mut self) -> DpResult<usize> {
        if let TestDataplane::Logged { name, log, removal } = self {
            log.lock().unwrap().push(format!("{name} removal after a failure"));
            removal.acquire().await.expect("gate open").forget();
            return Ok(0);
        }
        self.remove_all().await
    }
}

/// Until `log` has `n` entries (time is paused: each sleep lets every
/// task run first), then what it has.
async fn logged(log: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
    for _ in 0..1000 {
        if log.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_restarted_router_programs_routes_only_after_the_failed_one_removed_its_own(
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let removal = Arc::new(tokio::sync::Semaphore::new(0));
    let turn = DataplaneTurn::default();
    let dp = |name| {
        Box::new(TestDataplane::Logged {
            name,
            log: log.clone(),
            removal: removal.clone(),
        })
    };
    let old = router_taking(
        RouterKind::Server,
        PolicyConfig::default(),
        dp("old"),
        turn.clone(),
    )
    .await;
    add_peer(&old, 1, RouterKind::Transit).await;
    import_from_1(&old, "fd00:9::/64");
    assert_eq!(logged(&log, 2).await, ["old stale", "old apply 1"]);
    // Killed: no post_stop. Its worker, detached, begins its removal,
    // which waits here, while the restarted router imports.
    old.kill_and_wait(None).await.unwrap();
    let new = router_taking(
        RouterKind::Server,
        PolicyConfig::default(),
        dp("new"),
        turn,
    )
    .await;
    add_peer(&new, 1, RouterKind::Transit).await;
    import_from_1(&new, "fd00:9::/64");
    // Its removal of what a previous run left waits too: beside the
    // failed worker's, the two would race.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        *log.lock().unwrap(),
        ["old stale", "old apply 1", "old removal after a failure"]
    );
    removal.add_permits(2);
    assert_eq!(
        logged(&log, 5).await,
        [
            "old stale",
            "old apply 1",
            "old removal after a failure",
            "new stale",
            "new apply 1"
        ]
    );
    new.stop_and_wait(None, None).await.unwrap();
    assert_eq!(logged(&log, 6).await[5], "new removed");
}

/// A server router with peer 1 up over a dataplane that fails its first
/// `failures` batches as a whole, and the tables behind it.
/// Two failures in a row since `started`: the worker waited one second,
/// then two (its back-off), before the third try.
fn waited_one_second_then_two(started: tokio::time::Instant) {
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
}

async fn failing_router(failures: usize) -> (RouterRef, MemoryDataplane) {
    let inner = MemoryDataplane::new();
    let dp = Box::new(TestDataplane::Failing {
        failures: Arc::new(failures.into()),
        inner: inner.clone(),
    });
    let r = router_on(RouterKind::Server, Default::default(), dp).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    (r, inner)
}

/// A batch that failed as a whole is applied again, after a wait that
/// doubles with each failure in a row: the kernel ends up as the RIB says
/// without any later change of those destinations.
#[tokio::test(start_paused = true)]
async fn a_batch_that_failed_as_a_whole_is_applied_again() {
    let (r, inner) = failing_router(2).await;
    let started = tokio::time::Instant::now();
    import_from_1(&r, "fd00:9::/64");
    let c = counters_until(&r, |c| c.route_updates_applied >= 1).await;
    assert_eq!(c.dataplane_batch_errors, 2);
    assert_eq!(inner.tables().routes.len(), 1);
    waited_one_second_then_two(started);
    r.stop_and_wait(None, None).await.unwrap();
}

/// A failed router's worker removes our routes as after a failure (the
/// switch's may stop short, the next router reconciling), unless the
/// daemon stops meanwhile: then no router comes next, and it removes them
/// all.
#[tokio::test(start_paused = true)]
async fn a_failed_routers_worker_removes_everything_if_the_daemon_stops() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let removal = Arc::new(tokio::sync::Semaphore::new(0));
    let turn = DataplaneTurn::default();
    let dp = Box::new(TestDataplane::Logged {
        name: "old",
        log: log.clone(),
        removal: removal.clone(),
    });
    let old =
        router_taking(RouterKind::Server, Default::default(), dp, turn.clone())
            .await;
    add_peer(&old, 1, RouterKind::Transit).await;
    import_from_1(&old, "fd00:9::/64");
    assert_eq!(logged(&log, 2).await, ["old stale", "old apply 1"]);
    old.kill_and_wait(None).await.unwrap();
    // Its worker begins the removal after a failure; then the daemon
    // stops.
    assert_eq!(logged(&log, 3).await[2], "old removal after a failure");
    turn.set_stopping();
    removal.add_permits(2);
    turn.free().await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            "old stale",
            "old apply 1",
            "old removal after a failure",
            "old removed"
        ]
    );
}

/// A dataplane worker that panicked fails its router (whose supervisor
/// starts another): the router does not go on importing what nothing
/// programs.
#[tokio::test(start_paused = true)]
async fn a_router_whose_worker_panicked_fails() {
    let args = RouterArgs {
        hostname: "me".to_string(),
        kind: RouterKind::Server,
        dataplane: Box::new(TestDataplane::Panicking),
        policy: Default::default(),
        turn: DataplaneTurn::default(),
        await_originated: None,
        log: Logger::root(slog::Discard, o!()),
    };
    let (r, ended) = Actor::spawn(None, Router, args).await.unwrap();
    add_peer(&r, 1, RouterKind::Transit).await;
    import_from_1(&r, "fd00:9::/64");
    tokio::time::timeout(Duration::from_secs(60), ended)
        .await
        .expect("the router failed")
        .unwrap();
    assert_eq!(r.get_status(), ractor::ActorStatus::Stopped);
}

/// A tunnel endpoint announced by peer 1.
fn import_tunnel_from_1(r: &RouterRef) {
    let origin = v3::TunnelOrigin {
        overlay_prefix: "10.9.0.0/16".parse().unwrap(),
        boundary_addr: "fd00:99::1".parse().unwrap(),
        vni: 77,
        metric: 0,
    };
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: OutUpdate::from(v3::Update {
            underlay: None,
            tunnel: Some(v3::TunnelUpdate {
                announce: [origin].into(),
                withdraw: BTreeSet::new(),
            }),
        }),
        permit: None,
    })
    .unwrap();
}

/// A tunnel set the dataplane refused is not set again: a refusal stands.
#[tokio::test(start_paused = true)]
async fn a_refused_tunnel_set_is_not_set_again() {
    let broken = Box::new(TestDataplane::Broken);
    let r = router_on(RouterKind::Server, Default::default(), broken).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    import_tunnel_from_1(&r);
    counters_until(&r, |c| c.tunnel_update_errors == 1).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let c = counters_until(&r, |_| true).await;
    assert_eq!((c.tunnel_updates, c.tunnel_update_errors), (1, 1));
    r.stop_and_wait(None, None).await.unwrap();
}

/// A tunnel set the dataplane could not set for now is set again after
/// the back-off: the set changes only when the endpoints do, which may be
/// never. A refused set is not set again.
#[tokio::test(start_paused = true)]
async fn a_tunnel_set_that_failed_is_set_again() {
    let (r, inner) = failing_router(2).await;
    let started = tokio::time::Instant::now();
    import_tunnel_from_1(&r);
    let c = counters_until(&r, |c| c.tunnel_updates == 3).await;
    assert_eq!(c.tunnel_update_errors, 2);
    assert_eq!(inner.tables().tunnels.len(), 1);
    waited_one_second_then_two(started);
    r.stop_and_wait(None, None).await.unwrap();
}

/// While a failed batch waits, later batches are applied at once, and
/// the failed one only when its wait is over (not with the next batch:
/// against a failing kernel, a growing batch re-sent at every change).
#[tokio::test(start_paused = true)]
async fn a_failed_batch_waits_its_turn_while_later_ones_go() {
    let (r, inner) = failing_router(1).await;
    import_from_1(&r, "fd00:1::/64");
    counters_until(&r, |c| c.dataplane_batch_errors == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    import_from_1(&r, "fd00:2::/64");
    counters_until(&r, |c| c.route_updates_applied == 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let routes: Vec<_> = inner.tables().routes.into_keys().collect();
    assert_eq!(routes, [p("fd00:2::/64")]);
    counters_until(&r, |c| c.route_updates_applied == 2).await;
    assert_eq!(inner.tables().routes.len(), 2);
    r.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn failed_dataplane_batches_are_counted() {
    let broken = Box::new(TestDataplane::Broken);
    let r = router_on(RouterKind::Server, Default::default(), broken).await;
    add_peer(&r, 1, RouterKind::Transit).await;
    import_from_1(&r, "fd00:9::/64");
    let c = counters_until(&r, |c| c.dataplane_batch_errors >= 1).await;
    assert_eq!(c.dataplane_batch_errors, c.dataplane_batches);
    assert_eq!(c.route_updates_applied, 0);
    r.stop_and_wait(None, None).await.unwrap();
}

#[test]
fn coalescing_keeps_the_latest_update_of_each_destination() {
    let u = |d: &str, hops: &[u32]| RouteUpdate {
        destination: p(d),
        nexthops: hops.iter().map(|i| nh(*i)).collect(),
    };
    let merged = coalesce(vec![
        vec![u("fd00:1::/64", &[1]), u("fd00:3::/64", &[1])],
        vec![u("fd00:2::/64", &[2]), u("fd00:3::/64", &[1, 2])],
        vec![u("fd00:1::/64", &[])],
    ]);
    assert_eq!(
        merged,
        [
            u("fd00:1::/64", &[]),
            u("fd00:2::/64", &[2]),
            u("fd00:3::/64", &[1, 2]),
        ]
    );
    let one = vec![u("fd00:1::/64", &[1])];
    assert_eq!(coalesce(vec![one.clone()]), one);
    assert!(coalesce(Vec::new()).is_empty());
}

#[tokio::test(start_paused = true)]
async fn set_originated_reconciles() {
    let (r, _dp) = router(RouterKind::Server).await;
    r.cast(RouterMsg::Originate([p("fd00:1::/64"), p("fd00:2::/64")].into()))
        .unwrap();
    r.cast(RouterMsg::SetOriginated {
        prefixes: [p("fd00:2::/64"), p("fd00:3::/64")].into(),
        tunnels: BTreeSet::new(),
    })
    .unwrap();
    let dests = pulled(&r, peer(1)).await;
    assert_eq!(dests, [p("fd00:2::/64"), p("fd00:3::/64")].into());
}

/// The destinations of `r`'s answer to a pull of `from`.
async fn pulled(r: &RouterRef, from: PeerId) -> BTreeSet<Ipv6Net> {
    let answer = ractor::call!(r, RouterMsg::PullFor, from).unwrap();
    answer
        .underlay
        .unwrap_or_default()
        .into_iter()
        .map(|pv| pv.destination)
        .collect()
}

fn announce_all(pvs: &[(&str, &[&str])]) -> OutUpdate {
    OutUpdate::from(v3::Update {
        underlay: Some(v3::UnderlayUpdate {
            announce: pvs
                .iter()
                .map(|(d, path)| PathVector {
                    destination: p(d),
                    path: path.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            withdraw: BTreeSet::new(),
        }),
        tunnel: None,
    })
}

fn nth(i: usize) -> String {
    format!("fd00:{i:x}::/64")
}

#[tokio::test(start_paused = true)]
async fn hostile_pushes_and_pulls_are_filtered_and_counted() {
    use crate::policy::Refusal;
    let (r, dp) = router(RouterKind::Transit).await;
    let other = add_peer(&r, 2, RouterKind::Server).await;
    add_peer(&r, 1, RouterKind::Server).await;
    let long: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let big = "h".repeat(300);
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce_all(&[
            ("::/0", &["s1"]),
            ("fe80::/10", &["s1"]),
            ("ff02::/16", &["s1"]),
            ("::/1", &["s1"]),
            ("fd00:aa::/64", &long),
            ("fd00:bb::/64", &[&big]),
            ("fd00:1::/64", &["s1"]),
        ]),
        permit: None,
    })
    .unwrap();
    until("the legitimate prefix installed", || {
        dp.tables().routes.contains_key(&p("fd00:1::/64"))
    })
    .await;
    assert_eq!(dp.tables().routes.len(), 1, "{:?}", dp.tables().routes);
    let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
    let mine = c.per_peer[&peer(1)];
    assert_eq!(mine.get(Refusal::DefaultRoute), 1);
    assert_eq!(mine.get(Refusal::SpecialDestination), 3);
    assert_eq!(mine.get(Refusal::PathTooLong), 1);
    assert_eq!(mine.get(Refusal::HostnameTooLong), 1);
    assert_eq!(c.total, mine);
    // Only the legitimate prefix is redistributed.
    until("redistributed", || !other.lock().unwrap().is_empty()).await;
    let told: Vec<Ipv6Net> = other
        .lock()
        .unwrap()
        .iter()
        .flat_map(|u| u.underlay.iter().flat_map(|u| u.announce.iter()))
        .map(|pv| pv.destination)
        .collect();
    assert_eq!(told, [p("fd00:1::/64")]);
    // A pull answer is filtered too: the refused items are left out,
    // so what was held and is now refused goes.
    r.cast(RouterMsg::PullResult {
        peer: peer(1),
        response: pull_answer(&announce_all(&[
            ("fd00:2::/64", &["s1"]),
            ("::1/128", &["s1"]),
        ])),
        slot: None,
    })
    .unwrap();
    until("the pull replaced the set", || {
        let t = dp.tables();
        t.routes.len() == 1 && t.routes.contains_key(&p("fd00:2::/64"))
    })
    .await;
    let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
    assert_eq!(c.total.get(Refusal::SpecialDestination), 4);
}

#[tokio::test(start_paused = true)]
async fn the_per_peer_limit_refuses_new_destinations_only() {
    use crate::policy::Refusal;
    let (r, dp) = router_with(
        RouterKind::Server,
        PolicyConfig { max_prefixes_per_peer: 10, ..Default::default() },
    )
    .await;
    add_peer(&r, 1, RouterKind::Transit).await;
    add_peer(&r, 2, RouterKind::Transit).await;
    let names: Vec<String> = (0..15).map(nth).collect();
    let all: Vec<(&str, &[&str])> =
        names.iter().map(|d| (d.as_str(), &["s1"][..])).collect();
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce_all(&all),
        permit: None,
    })
    .unwrap();
    until("ten installed", || dp.tables().routes.len() == 10).await;
    let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
    assert_eq!(c.per_peer[&peer(1)].get(Refusal::PrefixLimit), 5);
    // Another peer has its own limit.
    r.cast(RouterMsg::Import {
        peer: peer(2),
        update: announce_all(&all[10..]),
        permit: None,
    })
    .unwrap();
    until("the other peer's five", || dp.tables().routes.len() == 15).await;
    // A held destination takes a new path; a new one is refused.
    let held = dp
        .tables()
        .routes
        .keys()
        .copied()
        .find(|d| dp.tables().routes[d] == [nh(1)].into());
    let held = held.unwrap().to_string();
    let extra = nth(99);
    r.cast(RouterMsg::Import {
        peer: peer(1),
        update: announce_all(&[
            (held.as_str(), &["x", "s1"]),
            (extra.as_str(), &["s1"]),
        ]),
        permit: None,
    })
    .unwrap();
    let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
    assert_eq!(c.per_peer[&peer(1)].get(Refusal::PrefixLimit), 6);
    let prefixes = ractor::call!(r, RouterMsg::GetPrefixes).unwrap();
    let from1 = &prefixes[&peer(1).addr.to_string()];
    assert_eq!(from1.len(), 11, "ten destinations, one with two paths");
    assert!(!from1.iter().any(|pv| pv.destination == p(&extra)));
    // Withdrawing one and announcing a new one in the same update: the
    // withdrawal makes room.
    let mut u = announce_all(&[(extra.as_str(), &["s1"])]).to_wire();
    u.underlay_mut().withdraw = [
        PathVector { destination: p(&held), path: vec!["s1".to_string()] },
        PathVector {
            destination: p(&held),
            path: vec!["x".to_string(), "s1".to_string()],
        },
    ]
    .into();
    r.cast(RouterMsg::Import { peer: peer(1), update: u.into(), permit: None })
        .unwrap();
    until("the new one installed", || {
        dp.tables().routes.contains_key(&p(&extra))
    })
    .await;
    let c = ractor::call!(r, RouterMsg::GetPolicyCounters).unwrap();
    assert_eq!(c.per_peer[&peer(1)].get(Refusal::PrefixLimit), 6);
    let prefixes = ractor::call!(r, RouterMsg::GetPrefixes).unwrap();
    assert_eq!(prefixes[&peer(1).addr.to_string()].len(), 10);
}

/// A router the admin actor will hand the originated set answers pulls
/// only once it has come (a pull answer is the peer's whole view of us: one
/// without our prefixes made peers withdraw them), or after
/// `ORIGINATED_WAIT` without it.
#[tokio::test(start_paused = true)]
async fn pulls_wait_for_the_originated_set() {
    let anyone = PeerId { ifindex: 0, addr: std::net::Ipv6Addr::UNSPECIFIED };
    let spawn = || async {
        let args = RouterArgs {
            hostname: "me".to_string(),
            kind: RouterKind::Server,
            dataplane: Box::new(MemoryDataplane::new()),
            policy: Default::default(),
            turn: DataplaneTurn::default(),
            await_originated: Some(ORIGINATED_WAIT),
            log: Logger::root(slog::Discard, o!()),
        };
        Actor::spawn(None, Router, args).await.unwrap().0
    };
    let pull = |r: &RouterRef| {
        let r = r.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let own = pulled(&r, anyone).await;
            (own, started.elapsed())
        })
    };
    let r = spawn().await;
    let early = pull(&r);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!early.is_finished(), "answered before the originated set");
    r.cast(RouterMsg::SetOriginated {
        prefixes: [p("fd00:7::/64")].into(),
        tunnels: Default::default(),
    })
    .unwrap();
    assert_eq!(early.await.unwrap().0, [p("fd00:7::/64")].into());
    // Later pulls are answered at once.
    let (own, took) = pull(&r).await.unwrap();
    assert_eq!((own, took), ([p("fd00:7::/64")].into(), Duration::ZERO));
    r.stop_and_wait(None, None).await.unwrap();

    // A set that never comes: answered without it, after the wait.
    let r = spawn().await;
    let (own, took) = pull(&r).await.unwrap();
    assert!(own.is_empty());
    assert_eq!(took, ORIGINATED_WAIT);
    r.stop_and_wait(None, None).await.unwrap();
}

/// Pulls wait for the originated set at most three quarters of the
/// exchange timeout, so that one that waited is still answered in time;
/// the default timeout keeps the whole wait.
#[test]
fn pulls_wait_at_most_three_quarters_of_the_exchange_timeout() {
    let (s, ms) = (Duration::from_secs, Duration::from_millis);
    assert_eq!(originated_wait(s(10)), ORIGINATED_WAIT);
    assert_eq!(originated_wait(s(3)), ORIGINATED_WAIT);
    assert_eq!(originated_wait(s(2)), ms(1500));
    assert_eq!(originated_wait(s(1)), ms(750));
}
