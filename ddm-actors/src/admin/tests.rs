//! Tests of the admin actor and its HTTP helpers.

use super::http::{
    canonical_prefixes, canonical_tunnels, store_failed, AdminContext,
};
use super::*;
use crate::store::Faults;
use crate::test_actors::Forward;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the router heard, as the tests compare it.
fn describe(msg: RouterMsg) -> String {
    match msg {
        RouterMsg::Originate(p) => format!("originate {}", text(&p)),
        RouterMsg::Withdraw(p) => format!("withdraw {}", text(&p)),
        RouterMsg::SetOriginated { prefixes, .. } => {
            format!("set {}", text(&prefixes))
        }
        RouterMsg::Sync => "sync".to_string(),
        _ => "other".to_string(),
    }
}

fn text(prefixes: &BTreeSet<Ipv6Net>) -> String {
    let all: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    format!("{{{}}}", all.join(","))
}

/// Stands in for the supervisor, which these tests never ask.
struct Sink;

impl Actor for Sink {
    type Msg = PeerQuery;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<PeerQuery>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Everything the router heard up to now (a `Sync` marks the end).
async fn heard(
    router: &RouterRef,
    rx: &mut mpsc::UnboundedReceiver<RouterMsg>,
) -> Vec<String> {
    router.cast(RouterMsg::Sync).unwrap();
    let mut out = Vec::new();
    loop {
        match describe(rx.recv().await.unwrap()) {
            s if s == "sync" => return out,
            s => out.push(s),
        }
    }
}

fn add(prefix: &str) -> StoreChange {
    StoreChange {
        add_prefixes: [prefix.parse().unwrap()].into(),
        ..Default::default()
    }
}

/// An admin actor's state over `store`, telling a forwarder in place of
/// the router.
async fn state_over(
    store: Store,
) -> (AdminState, RouterRef, mpsc::UnboundedReceiver<RouterMsg>, impl Drop) {
    let (router, rx, supervisor, stop) = stand_ins().await;
    let state = AdminState {
        guard: None,
        server: None,
        local_addr: None,
        store,
        originated: Originated::default(),
        supervisor: supervisor.get_derived(),
        router: Some(router.clone()),
        stats: super::stats_identity(),
        store_counters: Arc::new(StoreCounters::default()),
        log: Logger::root(slog::Discard, o!()),
    };
    (state, router, rx, stop)
}

/// A forwarder in place of the router (what it hears comes out of the
/// receiver), a sink in place of the supervisor, and what stops both.
async fn stand_ins(
) -> (RouterRef, mpsc::UnboundedReceiver<RouterMsg>, ActorRef<PeerQuery>, Stop)
{
    let (tx, rx) = mpsc::unbounded_channel();
    let (router, _) =
        Actor::spawn(None, Forward::<RouterMsg>::new(), tx).await.unwrap();
    let (supervisor, _) = Actor::spawn(None, Sink, ()).await.unwrap();
    let stop = Stop(vec![router.get_cell(), supervisor.get_cell()]);
    (router, rx, supervisor, stop)
}

/// Stops the actors it holds when dropped.
struct Stop(Vec<ractor::ActorCell>);

impl Drop for Stop {
    fn drop(&mut self) {
        for a in &self.0 {
            a.stop(None);
        }
    }
}

/// Past the places for changes not yet carried out, a change is refused
/// at once; a change carried out gives its place back.
#[tokio::test(start_paused = true)]
async fn changes_past_the_queue_are_refused_at_once() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (admin, _) =
        Actor::spawn(None, Forward::<AdminMsg>::new(), tx).await.unwrap();
    let ctx =
        Arc::new(AdminContext::new(admin.clone(), 2, super::stats_identity()));
    let ask = |p: &str| {
        let (ctx, change) = (Arc::clone(&ctx), add(p));
        tokio::spawn(async move { ctx.change(change).await })
    };
    let first = ask("fd00:1::/64");
    let _second = ask("fd00:2::/64");
    let held = rx.recv().await.unwrap();
    let _held_too = rx.recv().await.unwrap();
    let Err(err) = ctx.change(add("fd00:3::/64")).await else {
        panic!("a third change was taken");
    };
    assert_eq!(err.status_code, ErrorStatusCode::SERVICE_UNAVAILABLE);
    assert!(err.external_message.contains("earlier changes"), "{err:?}");
    let AdminMsg::Queued(_, place, reply) = held else {
        panic!("not a queued change");
    };
    reply.send(Ok(())).unwrap();
    drop(place);
    assert!(first.await.unwrap().is_ok());
    let _third = ask("fd00:3::/64");
    assert!(matches!(rx.recv().await, Some(AdminMsg::Queued(..))));
    admin.stop(None);
}

/// An admin actor started beside a running router hands it the stored
/// set: a router restarted while the admin actor was down heard it from
/// nobody else.
#[tokio::test]
async fn a_started_admin_hands_the_router_the_stored_set() {
    let store = Store::in_memory();
    store.apply(&add("fd00:1::/64")).unwrap();
    let (router, mut rx, supervisor, _stop) = stand_ins().await;
    let args = AdminArgs {
        listen: None,
        store,
        supervisor: supervisor.get_derived(),
        router: Some(router.clone()),
        store_counters: Arc::new(StoreCounters::default()),
        stats: super::stats_identity(),
        log: Logger::root(slog::Discard, o!()),
    };
    let (admin, _) = Actor::spawn(None, Admin, args).await.unwrap();
    assert_eq!(heard(&router, &mut rx).await, ["set {fd00:1::/64}"]);
    admin.stop_and_wait(None, None).await.unwrap();
}

/// A change whose HTTP handler gave up waiting (and answered 503) is not
/// made when the actor gets to it.
#[tokio::test]
async fn a_change_nobody_waits_for_is_dropped() {
    let store = Store::in_memory();
    let (mut state, router, mut rx, _stop) = state_over(store.clone()).await;
    let (tx, gone) = tokio::sync::oneshot::channel();
    drop(gone);
    state.change(add("fd00:1::/64"), tx.into()).await;
    assert!(heard(&router, &mut rx).await.is_empty());
    assert!(store.load().unwrap().prefixes.is_empty());
    // One waited for is made.
    let (tx, answer) = tokio::sync::oneshot::channel();
    state.change(add("fd00:1::/64"), tx.into()).await;
    answer.await.unwrap().unwrap();
    assert_eq!(heard(&router, &mut rx).await, ["originate {fd00:1::/64}"]);
    assert_eq!(store.load().unwrap().prefixes.len(), 1);
}

/// A write whose commit failed only at its end (the sync) is answered as
/// failed although the store reads back with it: after a failed `fsync`
/// the pages are in the page cache, not necessarily on disk. Once writes
/// work again, what the store holds is followed.
#[tokio::test]
async fn a_write_whose_sync_failed_is_not_answered_as_made() {
    let faults = Arc::new(Faults::default());
    let store = Store::in_memory_with_faults(faults.clone());
    let (mut state, router, mut rx, _stop) = state_over(store.clone()).await;
    faults.fail_syncs(libc::EIO);
    // Its pages were written, its sync failed: it reads back, but it
    // need not be on disk.
    state.update(add("fd00:1::/64")).await.unwrap_err();
    assert_eq!(
        heard(&router, &mut rx).await,
        ["originate {fd00:1::/64}", "withdraw {fd00:1::/64}"]
    );
    assert!(state.originated.prefixes.is_empty());
    // The memory store kept the failed commit's pages, as a page cache
    // does.
    assert_eq!(store.load_written().unwrap().prefixes.len(), 1);
    // Writes work again: the change answered as failed is undone in the
    // store, so the store, the mirror and the router agree with what
    // clients were told.
    faults.fail_syncs(0);
    state.update(add("fd00:2::/64")).await.unwrap();
    assert_eq!(heard(&router, &mut rx).await, ["originate {fd00:2::/64}"]);
    assert_eq!(store.load().unwrap(), state.originated);
    let want: Ipv6Net = "fd00:2::/64".parse().unwrap();
    assert_eq!(state.originated.prefixes, [want].into());
}

/// After a failed sync, the first change to succeed writes the whole
/// store, whatever it asks for: a withdrawal of what only the failed
/// commit added changes nothing in the mirror, yet it is answered only
/// once the file no longer holds it; a retry of a failed withdrawal,
/// likewise, puts the entry back into the file.
#[tokio::test]
async fn after_a_failed_sync_an_empty_change_repairs_the_store() {
    let faults = Arc::new(Faults::default());
    let store = Store::in_memory_with_faults(faults.clone());
    let (mut state, router, mut rx, _stop) = state_over(store.clone()).await;
    let p: Ipv6Net = "fd00:1::/64".parse().unwrap();
    let q: Ipv6Net = "fd00:2::/64".parse().unwrap();
    state.update(add("fd00:2::/64")).await.unwrap();
    heard(&router, &mut rx).await;

    // An advertise of p fails at its sync: the file shows p all the same.
    faults.fail_syncs(libc::EIO);
    state.update(add("fd00:1::/64")).await.unwrap_err();
    heard(&router, &mut rx).await;
    assert!(store.load_written().unwrap().prefixes.contains(&p));
    // The client withdraws p, which the mirror never held: empty.
    faults.fail_syncs(0);
    let withdraw_p =
        StoreChange { remove_prefixes: [p].into(), ..Default::default() };
    let (tx, answer) = tokio::sync::oneshot::channel();
    state.change(withdraw_p, tx.into()).await;
    answer.await.unwrap().unwrap();
    assert_eq!(store.load().unwrap().prefixes, [q].into());
    assert!(store.failing().is_none());
    assert!(heard(&router, &mut rx).await.is_empty());

    // A withdrawal of q fails at its sync: the file no longer shows q,
    // the mirror (what was acknowledged) still holds it.
    faults.fail_syncs(libc::EIO);
    let withdraw_q =
        StoreChange { remove_prefixes: [q].into(), ..Default::default() };
    state.update(withdraw_q).await.unwrap_err();
    heard(&router, &mut rx).await;
    assert!(store.load_written().unwrap().prefixes.is_empty());
    // The client advertises q again, which the mirror holds: empty.
    faults.fail_syncs(0);
    let (tx, answer) = tokio::sync::oneshot::channel();
    state.change(add("fd00:2::/64"), tx.into()).await;
    answer.await.unwrap().unwrap();
    assert_eq!(store.load().unwrap().prefixes, [q].into());
    assert_eq!(store.load().unwrap(), state.originated);
    assert!(heard(&router, &mut rx).await.is_empty());
}

/// A withdrawal whose write fails leaves the mirror as it was, prefixes
/// and tunnel endpoints alike (they leave it before the write and come
/// back when the write fails), and the router hears it undone.
#[tokio::test]
async fn a_failed_withdrawal_leaves_the_mirror_whole() {
    let faults = Arc::new(Faults::default());
    let store = Store::in_memory_with_faults(faults.clone());
    let (mut state, router, mut rx, _stop) = state_over(store.clone()).await;
    let tunnel = TunnelOrigin {
        overlay_prefix: "fd00:99::/64".parse().unwrap(),
        boundary_addr: "fd00:1::1".parse().unwrap(),
        vni: 7,
        metric: 0,
    };
    let mut both = add("fd00:1::/64");
    both.add_tunnels = [tunnel].into();
    state.update(both.clone()).await.unwrap();
    heard(&router, &mut rx).await;
    let before = state.originated.clone();
    faults.fail_writes(libc::EIO);
    state.update(both.inverse()).await.unwrap_err();
    assert_eq!(state.originated, before);
    // Withdrawn (the prefix, the tunnel endpoint), then undone.
    assert_eq!(
        heard(&router, &mut rx).await,
        ["withdraw {fd00:1::/64}", "other", "originate {fd00:1::/64}", "other"]
    );
}

#[tokio::test]
async fn a_failing_store_refuses_changes_before_the_router_hears() {
    let faults = Arc::new(Faults::default());
    let store = Store::in_memory_with_faults(faults.clone());
    let (mut state, router, mut rx, _stop) = state_over(store.clone()).await;

    state.update(add("fd00:1::/64")).await.unwrap();
    assert_eq!(heard(&router, &mut rx).await, ["originate {fd00:1::/64}"]);

    // The first failure is found out after the router heard: it is
    // undone once.
    faults.fail_writes(libc::ENOSPC);
    let err = state.update(add("fd00:2::/64")).await.unwrap_err();
    assert!(err.is_no_space(), "{err}");
    assert_eq!(
        heard(&router, &mut rx).await,
        ["originate {fd00:2::/64}", "withdraw {fd00:2::/64}"]
    );
    // Retries while the store is failing never reach the router.
    for _ in 0..3 {
        let err = state.update(add("fd00:2::/64")).await.unwrap_err();
        assert!(err.is_no_space(), "{err}");
    }
    assert!(heard(&router, &mut rx).await.is_empty());
    assert_eq!(state.originated.prefixes.len(), 1);

    // Space returns: the next change is written, then told.
    faults.fail_writes(0);
    state.update(add("fd00:2::/64")).await.unwrap();
    assert_eq!(heard(&router, &mut rx).await, ["originate {fd00:2::/64}"]);
    assert_eq!(state.originated, store.load().unwrap());
    assert_eq!(state.originated.prefixes.len(), 2);
    // Every write attempt was counted: two committed, four failed.
    let counted = state.store_counters.named();
    assert_eq!((counted["commits"], counted["failures"]), (2, 4));
}

#[test]
fn store_failures_answer_507_or_503_with_the_cause() {
    let full = store_failed(StoreError::NoSpace(
        "/var/ddm".into(),
        "No space left on device (os error 28)".into(),
    ));
    assert_eq!(full.status_code, ErrorStatusCode::INSUFFICIENT_STORAGE);
    assert!(full.external_message.contains("/var/ddm"));
    assert!(full.external_message.contains("No space left"));
    let broken = store_failed(StoreError::Io(
        "/var/ddm/ddmdb".into(),
        "Input/output error (os error 5)".into(),
    ));
    assert_eq!(broken.status_code, ErrorStatusCode::SERVICE_UNAVAILABLE);
    assert!(broken.external_message.contains("/var/ddm/ddmdb"));
    assert!(broken.external_message.contains("Input/output error"));
}

fn log() -> Logger {
    Logger::root(slog::Discard, o!())
}

#[test]
fn host_bits_are_cleared_and_duplicates_merge() {
    // Out of order, with a repeat, and two that are one network.
    let given = PrefixList(
        ["fd00:3::5/128", "fd00:1::1/64", "fd00:2::/48", "fd00:1::/64"]
            .iter()
            .chain(&["fd00:2::/48"])
            .map(|p| p.parse().unwrap())
            .collect(),
    );
    let want: BTreeSet<Ipv6Net> =
        ["fd00:1::/64", "fd00:2::/48", "fd00:3::5/128"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
    assert_eq!(canonical_prefixes(&log(), given), want);

    let t = |prefix: &str| TunnelOrigin {
        overlay_prefix: prefix.parse().unwrap(),
        boundary_addr: "fd00::1".parse().unwrap(),
        vni: 7,
        metric: 0,
    };
    let given = [t("10.1.2.3/8"), t("fd00:9::9/64"), t("10.0.0.0/8")].into();
    let want = [t("10.0.0.0/8"), t("fd00:9::/64")].into();
    assert_eq!(canonical_tunnels(&log(), given), want);
}
