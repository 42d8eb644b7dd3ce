//! Tests of the supervisor actor.

use super::*;
use crate::config::{AdminConfig, RouterConfig};
use crate::dataplane::memory::MemoryDataplane;
use crate::discovery::MemoryPort;
use crate::store::StoreChange;
use std::net::Ipv6Addr;

fn log() -> Logger {
    Logger::root(slog::Discard, o!())
}

/// A configuration; `listen` serves the admin API on a free port.
fn config(admin_only: bool, listen: bool) -> DaemonConfig {
    DaemonConfig {
        admin_only,
        admin: AdminConfig {
            listen: listen
                .then(|| SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0)),
        },
        // The store is in memory: nothing reads this.
        data_dir: "/nonexistent".into(),
        router: RouterConfig {
            hostname: "sup-test".to_string(),
            interfaces: vec!["ddmtest0".parse().unwrap()],
            ..Default::default()
        },
    }
}

async fn start(admin_only: bool, listen: bool) -> SupervisorRef {
    let dp = MemoryDataplane::new();
    let factory: DataplaneFactory = Arc::new(move |_log: &Logger| {
        Ok(Box::new(dp.clone()) as Box<dyn Dataplane>)
    });
    start_on(admin_only, listen, factory).await
}

async fn start_on(
    admin_only: bool,
    listen: bool,
    factory: DataplaneFactory,
) -> SupervisorRef {
    start_reporting(admin_only, listen, factory, Default::default()).await
}

/// [`start_on`], setting `routes_left` if routes are left at its stop.
async fn start_reporting(
    admin_only: bool,
    listen: bool,
    factory: DataplaneFactory,
    routes_left: Arc<std::sync::atomic::AtomicBool>,
) -> SupervisorRef {
    let store = Store::in_memory();
    let (a, _b) = MemoryPort::pair(
        (1, "fe80::1".parse().unwrap()),
        (2, "fe80::2".parse().unwrap()),
    );
    let packet_io: PacketIoFactory =
        Arc::new(move |_spec: &InterfaceSpec| PacketIo::Memory(a.clone()));
    let args = SupervisorArgs {
        config: config(admin_only, listen),
        store,
        dataplane: Some(factory),
        packet_io,
        watch_links: false,
        exchange_net: Default::default(),
        routes_left,
        log: log(),
    };
    Actor::spawn(None, Supervisor, args).await.unwrap().0
}

/// Poll `f` until it yields `Some`, for at most ten seconds.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn admin_only_starts_only_the_admin_actor() {
    let sup = start(true, false).await;
    assert_eq!(sup.get_children().len(), 1);
    // No listener: the admin actor answers by message only.
    assert_eq!(ractor::call!(sup, SupervisorMsg::GetAdminAddr).unwrap(), None);
    let admin = ractor::call!(sup, SupervisorMsg::GetAdmin).unwrap();
    assert_eq!(sup.get_children()[0].get_id(), admin.get_id());
    assert!(ractor::call!(sup, SupervisorMsg::GetRouter).unwrap().is_none());
    let peers = ractor::call!(sup, SupervisorMsg::GetPeers).unwrap();
    assert!(peers.is_empty());
    sup.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn full_mode_starts_router_and_one_discovery_per_interface() {
    let sup = start(false, false).await;
    // admin + router + one discovery actor
    assert_eq!(sup.get_children().len(), 3);
    assert!(ractor::call!(sup, SupervisorMsg::GetRouter).unwrap().is_some());
    sup.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn a_killed_admin_is_restarted_on_the_same_port() {
    let sup = start(true, true).await;
    let admin = ractor::call!(sup, SupervisorMsg::GetAdmin).unwrap();
    let addr = ractor::call!(admin, AdminMsg::GetLocalAddr).unwrap();
    assert!(addr.is_some());
    admin.kill();
    let again = eventually("a new admin actor", || async {
        let a = ractor::call!(sup, SupervisorMsg::GetAdmin).ok()?;
        (a.get_id() != admin.get_id()).then_some(a)
    })
    .await;
    let addr2 = ractor::call!(again, AdminMsg::GetLocalAddr).unwrap();
    assert_eq!(addr, addr2);
    sup.stop_and_wait(None, None).await.unwrap();
}

#[tokio::test]
async fn a_killed_router_is_restarted_and_gets_the_originated_set() {
    let sup = start(false, false).await;
    let admin = ractor::call!(sup, SupervisorMsg::GetAdmin).unwrap();
    let prefix: oxnet::Ipv6Net = "fd00:7::/64".parse().unwrap();
    let change =
        StoreChange { add_prefixes: [prefix].into(), ..Default::default() };
    ractor::call!(admin, AdminMsg::Change, change).unwrap().unwrap();
    let router = ractor::call!(sup, SupervisorMsg::GetRouter).unwrap().unwrap();
    router.kill();
    let anyone = PeerId { ifindex: 0, addr: Ipv6Addr::UNSPECIFIED };
    eventually("the new router announces the stored prefix", || async {
        let r = ractor::call!(sup, SupervisorMsg::GetRouter).ok()??;
        if r.get_id() == router.get_id() {
            return None;
        }
        let pull = ractor::call!(r, RouterMsg::PullFor, anyone).ok()?;
        let announced = pull.underlay.unwrap_or_default();
        announced.iter().any(|pv| pv.destination == prefix).then_some(())
    })
    .await;
    sup.stop_and_wait(None, None).await.unwrap();
}

/// A dataplane whose removal of every route takes `removal` (of tokio
/// time), and says when it is done; with `fails`, it fails at once (a dpd
/// that does not answer). Its removal of what a previous run left counts
/// in `started`, and panics with `panics_at_start`.
#[derive(Default)]
struct SlowRemoval {
    removal: Duration,
    removed: Arc<std::sync::atomic::AtomicBool>,
    fails: bool,
    started: Arc<std::sync::atomic::AtomicUsize>,
    panics_at_start: bool,
}

#[async_trait::async_trait]
impl Dataplane for SlowRemoval {
    fn name(&self) -> &'static str {
        "slow-removal"
    }
    async fn remove_stale(&mut self) -> Result<usize, DataplaneError> {
        self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(!self.panics_at_start, "a bug in the dataplane");
        Ok(0)
    }
    async fn apply(
        &mut self,
        _: Vec<crate::dataplane::RouteUpdate>,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }
    async fn set_tunnels(
        &mut self,
        _: std::collections::BTreeSet<crate::dataplane::TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }
    async fn remove_all(&mut self) -> Result<usize, DataplaneError> {
        if self.fails {
            return Err(DataplaneError::Unavailable("no answer".into()));
        }
        tokio::time::sleep(self.removal).await;
        self.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(0)
    }
}

/// A supervisor whose routers' removal of every route takes 5 s, and
/// the flag that removal sets.
async fn start_slow_removal(
) -> (SupervisorRef, Arc<std::sync::atomic::AtomicBool>) {
    let (sup, removed, _) =
        start_removing_in(Duration::from_secs(5), false).await;
    (sup, removed)
}

/// A supervisor whose router's removal takes `removal`: whether it was
/// done, and whether the supervisor reported routes left.
async fn start_removing_in(
    removal: Duration,
    fails: bool,
) -> (
    SupervisorRef,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = removed.clone();
    let factory: DataplaneFactory = Arc::new(move |_log: &Logger| {
        Ok(Box::new(SlowRemoval {
            removal,
            removed: flag.clone(),
            fails,
            ..SlowRemoval::default()
        }) as Box<dyn Dataplane>)
    });
    let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sup = start_reporting(false, false, factory, left.clone()).await;
    (sup, removed, left)
}

/// A removal past the router's stop grace, or one that failed, is
/// reported as routes left (`ddmd` exits 1 for it); one within the grace
/// is not.
#[tokio::test(start_paused = true)]
async fn a_removal_past_the_grace_or_failed_is_reported() {
    use std::sync::atomic::Ordering::SeqCst;
    let five = Duration::from_secs(5);
    let long = ROUTER_STOP_GRACE + five;
    for (removal, fails, done, reported) in [
        (five, false, true, false),
        (long, false, false, true),
        (five, true, false, true),
    ] {
        let (sup, removed, left) = start_removing_in(removal, fails).await;
        sup.stop_and_wait(None, None).await.unwrap();
        assert_eq!((removed.load(SeqCst), left.load(SeqCst)), (done, reported));
    }
}

/// Stopping waits for the router's removal of our routes even when it
/// takes seconds (a large table): before, it waited 600 ms, and the
/// daemon exited with the routes in the kernel.
#[tokio::test(start_paused = true)]
async fn stopping_waits_for_the_routes_to_be_removed() {
    let (sup, removed) = start_slow_removal().await;
    sup.stop_and_wait(None, None).await.unwrap();
    assert!(removed.load(std::sync::atomic::Ordering::SeqCst));
}

/// Stopped while a failed router's worker still removes its routes (in
/// the failed router's back-off, with no router to wait for), stopping
/// waits for that removal too.
#[tokio::test(start_paused = true)]
async fn stopping_waits_for_a_failed_routers_removal() {
    let (sup, removed) = start_slow_removal().await;
    let router = ractor::call!(sup, SupervisorMsg::GetRouter).unwrap().unwrap();
    router.kill_and_wait(None).await.unwrap();
    sup.stop_and_wait(None, None).await.unwrap();
    assert!(removed.load(std::sync::atomic::Ordering::SeqCst));
}

/// A dataplane worker that panicked removed nothing: a stop before the
/// next router's worker removed what it left reports routes left
/// (`ddmd` exits 1); once that worker has, nothing is reported.
#[tokio::test(start_paused = true)]
async fn routes_a_panicked_worker_left_are_reported_until_removed() {
    use std::sync::atomic::Ordering::SeqCst;
    for restarted in [false, true] {
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = started.clone();
        let factory: DataplaneFactory = Arc::new(move |_log: &Logger| {
            Ok(Box::new(SlowRemoval {
                panics_at_start: seen.load(SeqCst) == 0,
                started: seen.clone(),
                ..SlowRemoval::default()
            }) as Box<dyn Dataplane>)
        });
        let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sup = start_reporting(false, false, factory, left.clone()).await;
        eventually("the first worker panicked and left routes", || async {
            (started.load(SeqCst) >= 1 && left.load(SeqCst)).then_some(())
        })
        .await;
        if restarted {
            eventually("a second worker started", || async {
                (started.load(SeqCst) >= 2).then_some(())
            })
            .await;
        }
        sup.stop_and_wait(None, None).await.unwrap();
        assert_eq!(left.load(SeqCst), !restarted, "restarted {restarted}");
    }
}

/// The back-off counts failures in a row: a child that ran a minute since
/// its last restart starts over at one; one that failed sooner, or whose
/// restart failed, counts on.
#[test]
fn the_back_off_starts_over_after_a_stable_run() {
    use super::children::{failures_after, RESTART_STABLE};
    assert_eq!(failures_after(0, None), 1);
    assert_eq!(failures_after(6, None), 7);
    assert_eq!(failures_after(6, Some(RESTART_STABLE / 2)), 7);
    assert_eq!(failures_after(6, Some(RESTART_STABLE)), 1);
    assert_eq!(failures_after(u32::MAX, Some(Duration::ZERO)), u32::MAX);
}

/// An event of an interface without a discovery actor (one that failed
/// since it queued the event) is dropped: its peer would otherwise come
/// up with nothing to ever expire it. The running actor's are taken.
#[tokio::test]
async fn events_of_a_discovery_actor_that_is_gone_are_dropped() {
    let sup = start(false, false).await;
    let up = |ifname: &str, ifindex: u32| {
        SupervisorMsg::Discovery(DiscoveryEvent::PeerUp {
            ifname: ifname.to_string(),
            ifindex,
            local_addr: "fe80::1".parse().unwrap(),
            peer: crate::discovery::PeerIdentity {
                addr: "fe80::77".parse().unwrap(),
                hostname: "gone".into(),
                kind: ddm_admin_api::latest::RouterKind::Server,
                version: 3,
            },
        })
    };
    sup.cast(up("gone0", 40)).unwrap();
    sup.cast(up("ddmtest0", 41)).unwrap();
    let peers = ractor::call!(sup, SupervisorMsg::GetPeers).unwrap();
    assert_eq!(peers.keys().copied().collect::<Vec<_>>(), [41]);
    sup.stop_and_wait(None, None).await.unwrap();
}
