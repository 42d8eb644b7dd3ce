//! [`SimFabric`]: one real supervisor per router of a [`Topology`], in this
//! process, over in-memory links.
//!
//! Each router runs as the daemon does (supervisor, admin, router,
//! discovery and exchange actors) with four seams swapped: discovery
//! sends over [`MemoryPort`] pairs (which can be cut), the exchange over
//! one shared [`ExchangeNet`] (which injects faults and counts what it
//! delivers), routes go to a [`MemoryDataplane`] the fabric keeps a handle
//! on, and each store lives in memory (it outlives its router's crashes,
//! as a data directory would). Admin queries go by message: no listener.
//! Run it on a current-thread runtime with paused time
//! (`#[tokio::test(start_paused = true)]`): time then advances only while
//! every actor waits.
//!
//! [`SimFabric::apply`] applies every kind of [`Fault`] of a schedule;
//! [`SimFabric::converge`] waits until the exchange has been quiet for a
//! while, then takes one snapshot and checks the invariants.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use ddm_actors::admin::{AdminMsg, AdminRef};
use ddm_actors::config::{
    AdminConfig, DaemonConfig, InterfaceSpec, RouterConfig,
};
use ddm_actors::dataplane::memory::MemoryDataplane;
use ddm_actors::dataplane::{
    Dataplane, DataplaneError, Nexthop, RouteUpdate, TunnelEntry,
};
use ddm_actors::discovery::{MemoryPort, PacketIo};
use ddm_actors::exchange::transport::{
    ExchangeNet, ExchangeTransport, Fault as NetFault, NetStats,
};
use ddm_actors::router::RouterMsg;
use ddm_actors::store::{Store, StoreChange};
use ddm_actors::supervisor::{
    DataplaneFactory, PacketIoFactory, Supervisor, SupervisorArgs,
    SupervisorMsg, SupervisorRef,
};
use ddm_admin_api::latest::RouterKind as ApiKind;
use ractor::Actor;
use slog::{o, Logger};

use super::faults::{Fault, FaultState, RequestFailure};
use super::invariants::{self, HeldPath, RouterView, Snapshot};
use super::topology::{RouterKind, Topology};

/// One-way latency of every exchange request and answer: a request over
/// a link takes a round trip of twice this (HTTP over TCP between
/// neighbours in a rack takes about that). Without it an in-memory push
/// would complete in the same instant it was sent, and a session would
/// never merge what queued behind it, as a real one does.
pub const EXCHANGE_LATENCY: Duration = Duration::from_micros(100);

/// When any router's dataplane last changed (tokio time), shared by the
/// fabric's dataplanes.
type LastChange = Arc<std::sync::Mutex<Option<tokio::time::Instant>>>;

/// A router's memory dataplane, noting when it changes.
struct Watched {
    /// The tables.
    inner: MemoryDataplane,
    /// Where to note a change.
    last: LastChange,
}

impl Watched {
    fn changed(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now());
    }
}

#[async_trait::async_trait]
impl Dataplane for Watched {
    fn name(&self) -> &'static str {
        "sim"
    }

    async fn remove_stale(&mut self) -> Result<usize, DataplaneError> {
        self.inner.remove_stale().await
    }

    async fn apply(
        &mut self,
        updates: Vec<RouteUpdate>,
    ) -> Result<(), DataplaneError> {
        if !updates.is_empty() {
            self.changed();
        }
        self.inner.apply(updates).await
    }

    async fn set_tunnels(
        &mut self,
        tunnels: std::collections::BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        self.inner.set_tunnels(tunnels).await
    }

    async fn remove_all(&mut self) -> Result<usize, DataplaneError> {
        self.changed();
        self.inner.remove_all().await
    }
}

/// One running router.
struct SimRouter {
    /// Its supervisor.
    sup: SupervisorRef,
    /// Its dataplane's tables.
    dataplane: MemoryDataplane,
}

/// A fabric of real routers in one process.
pub struct SimFabric {
    /// What runs.
    topo: Topology,
    /// Per router: running, or `None` once crashed.
    routers: Vec<Option<SimRouter>>,
    /// Per router: its interfaces' link ends by name.
    ports: Vec<Arc<HashMap<String, MemoryPort>>>,
    /// Per router: its data directory (kept across a crash).
    stores: Vec<Store>,
    /// Per router: the far end's address → our interface index.
    ifindex_of: Vec<HashMap<Ipv6Addr, u32>>,
    /// The exchange network.
    net: ExchangeNet,
    /// Per link: its `a` end (cutting it cuts both ends).
    cables: Vec<MemoryPort>,
    /// Which routers and links are down.
    state: FaultState,
    /// Per link: a standing delay or reordering of its exchange requests.
    slow: BTreeMap<usize, NetFault>,
    /// When the last event (start, fault) began, in virtual time.
    last_event: tokio::time::Instant,
    /// When a dataplane last changed.
    last_change: LastChange,
}

/// What [`SimFabric::converge`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converged {
    /// Virtual time from the event to the last exchange request delivered
    /// or dataplane change before the fabric went quiet and passed the
    /// invariants.
    pub virtual_time: Duration,
    /// Snapshots taken (each costs a query of every router).
    pub snapshots: u32,
    /// Wall time spent taking those snapshots and checking them: the
    /// harness's cost, not the fabric's.
    pub check_wall: Duration,
    /// This process's peak resident set (`VmHWM`, KiB) just before the
    /// last snapshot: the fabric's peak without the harness's snapshot
    /// and check, which at a thousand routers reach higher (`None` where
    /// `/proc` does not say).
    pub peak_kib_before_check: Option<u64>,
}

/// A figure of this process's `/proc/self/status` in KiB, such as
/// `"VmHWM:"` (Linux; `None` elsewhere).
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix(field))?;
    v.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Traffic counters of the fabric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Exchange requests delivered, and bytes (bodies both ways).
    pub exchange: NetStats,
    /// Discovery datagrams delivered.
    pub datagrams: u64,
}

/// An error starting or querying the fabric.
pub type SimError = String;

impl SimFabric {
    /// Start every router of `topo`; servers originate their prefixes.
    pub async fn start(topo: Topology) -> Result<SimFabric, SimError> {
        let last_event = tokio::time::Instant::now();
        let mut ports: Vec<HashMap<String, MemoryPort>> =
            vec![HashMap::new(); topo.routers.len()];
        let mut ifindex_of = vec![HashMap::new(); topo.routers.len()];
        let mut cables = Vec::with_capacity(topo.links.len());
        for l in &topo.links {
            let (pa, pb) = MemoryPort::pair(
                (l.a.ifindex, l.a.addr),
                (l.b.ifindex, l.b.addr),
            );
            cables.push(pa.clone());
            ports[l.a.router].insert(l.a.ifname(), pa);
            ports[l.b.router].insert(l.b.ifname(), pb);
            ifindex_of[l.a.router].insert(l.b.addr, l.a.ifindex);
            ifindex_of[l.b.router].insert(l.a.addr, l.b.ifindex);
        }
        // Each router's durable store lives in memory and outlives its
        // crashes, as a data directory would.
        let stores =
            (0..topo.routers.len()).map(|_| Store::in_memory()).collect();
        let mut fabric = SimFabric {
            routers: Vec::new(),
            ports: ports.into_iter().map(Arc::new).collect(),
            stores,
            ifindex_of,
            net: {
                let net = ExchangeNet::new();
                net.set_latency(EXCHANGE_LATENCY);
                net
            },
            cables,
            state: FaultState::default(),
            slow: BTreeMap::new(),
            last_event,
            last_change: LastChange::default(),
            topo,
        };
        for i in 0..fabric.topo.routers.len() {
            let r = fabric.start_router(i).await?;
            fabric.routers.push(Some(r));
        }
        for (i, spec) in fabric.topo.routers.iter().enumerate() {
            if spec.prefixes.is_empty() {
                continue;
            }
            let admin = fabric.admin(i).await?;
            let change = StoreChange {
                add_prefixes: spec.prefixes.iter().copied().collect(),
                ..Default::default()
            };
            ractor::call!(admin, AdminMsg::Change, change)
                .map_err(|e| format!("{}: {e}", spec.name))?
                .map_err(|e| format!("{}: {e}", spec.name))?;
        }
        Ok(fabric)
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    async fn start_router(&self, i: usize) -> Result<SimRouter, SimError> {
        let spec = &self.topo.routers[i];
        let store = self.stores[i].clone();
        let dataplane = MemoryDataplane::new();
        let dp = dataplane.clone();
        let last = self.last_change.clone();
        let factory: DataplaneFactory = Arc::new(move |_: &Logger| {
            Ok(Box::new(Watched { inner: dp.clone(), last: last.clone() })
                as Box<dyn Dataplane>)
        });
        let ports = self.ports[i].clone();
        let packet_io: PacketIoFactory = Arc::new(move |s: &InterfaceSpec| {
            match ports.get(&s.ifname) {
                Some(p) => PacketIo::Memory(p.clone()),
                // Every configured interface has a port; anything else is
                // an unplugged one.
                None => PacketIo::Memory(
                    MemoryPort::pair(
                        (0, Ipv6Addr::UNSPECIFIED),
                        (0, Ipv6Addr::UNSPECIFIED),
                    )
                    .0,
                ),
            }
        });
        let mut interfaces: Vec<InterfaceSpec> = self.ports[i]
            .keys()
            .map(|n| InterfaceSpec { ifname: n.clone(), tag: None })
            .collect();
        interfaces.sort();
        let config = DaemonConfig {
            admin_only: false,
            // No listener: the admin actor answers by message only.
            admin: AdminConfig { listen: None },
            data_dir: std::path::PathBuf::new(),
            router: RouterConfig {
                hostname: spec.name.clone(),
                kind: match spec.kind {
                    RouterKind::Server => ApiKind::Server,
                    RouterKind::Transit => ApiKind::Transit,
                },
                interfaces,
                ..Default::default()
            },
        };
        let args = SupervisorArgs {
            config,
            store,
            dataplane: Some(factory),
            packet_io,
            watch_links: false,
            exchange_net: ExchangeTransport::memory(self.net.clone()),
            routes_left: Default::default(),
            log: Logger::root(slog::Discard, o!()),
        };
        let (sup, _) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| format!("{}: {e}", spec.name))?;
        Ok(SimRouter { sup, dataplane })
    }

    async fn admin(&self, i: usize) -> Result<AdminRef, SimError> {
        let r = self.routers[i]
            .as_ref()
            .ok_or_else(|| format!("{} is down", self.topo.routers[i].name))?;
        ractor::call!(r.sup, SupervisorMsg::GetAdmin)
            .map_err(|e| format!("{}: {e}", self.topo.routers[i].name))
    }

    /// Crash router `i`: its supervisor and every actor under it stop.
    pub async fn crash(&mut self, i: usize) {
        self.last_event = tokio::time::Instant::now();
        self.state.dead_routers.insert(i);
        if let Some(r) = self.routers[i].take() {
            let _ = r.sup.stop_and_wait(None, None).await;
        }
    }

    /// Restart a crashed router from its configuration and store.
    pub async fn restart(&mut self, i: usize) -> Result<(), SimError> {
        self.last_event = tokio::time::Instant::now();
        self.state.dead_routers.remove(&i);
        if self.routers[i].is_none() {
            let r = self.start_router(i).await?;
            self.routers[i] = Some(r);
        }
        Ok(())
    }

    /// What every router holds now.
    pub async fn snapshot(&self) -> Result<Snapshot, SimError> {
        let mut routers = Vec::with_capacity(self.routers.len());
        for (i, r) in self.routers.iter().enumerate() {
            let Some(r) = r else {
                routers.push(None);
                continue;
            };
            let name = &self.topo.routers[i].name;
            let admin = self.admin(i).await?;
            let originated = ractor::call!(admin, AdminMsg::GetOriginated)
                .map_err(|e| format!("{name}: {e}"))?;
            let router = ractor::call!(r.sup, SupervisorMsg::GetRouter)
                .map_err(|e| format!("{name}: {e}"))?
                .ok_or_else(|| format!("{name}: its router is restarting"))?;
            let held = ractor::call!(router, RouterMsg::GetPaths)
                .map_err(|e| format!("{name}: {e}"))?;
            let paths = held
                .into_iter()
                .map(|p| HeldPath {
                    destination: p.destination,
                    // A peer not on any of our links shows as interface 0,
                    // which the invariants report.
                    via: Nexthop {
                        addr: p.from,
                        ifindex: self.ifindex_of[i]
                            .get(&p.from)
                            .copied()
                            .unwrap_or(0),
                    },
                    path: p.path,
                })
                .collect();
            let routes = r
                .dataplane
                .tables()
                .routes
                .into_iter()
                .map(|(d, nhs)| (d, nhs.iter().copied().collect()))
                .collect();
            routers.push(Some(RouterView { originated, routes, paths }));
        }
        Ok(Snapshot { routers, dead_links: self.state.dead_links() })
    }

    /// Wait until the fabric converged: poll the exchange's counters and
    /// the dataplanes' last change every `step` of virtual time; once no
    /// request was delivered and no route changed for `quiet`, take one snapshot and check the invariants. If they fail,
    /// wait for new exchange activity (or a back-off of virtual time, for
    /// changes driven by timers alone, such as a peer's expiry) and check
    /// again, until `limit` of virtual time has passed since the last event
    /// (then the last violation is the error).
    pub async fn converge(
        &self,
        step: Duration,
        quiet: Duration,
        limit: Duration,
    ) -> Result<Converged, SimError> {
        let start = self.last_event;
        let mut snapshots = 0;
        let mut checked_at: Option<(
            Option<tokio::time::Instant>,
            tokio::time::Instant,
        )> = None;
        let mut backoff = quiet;
        let mut check_wall = Duration::ZERO;
        loop {
            let now = tokio::time::Instant::now();
            let last = self.last_activity(start);
            let since = now - last.unwrap_or(start);
            let due = match checked_at {
                None => true,
                Some((seen, at)) => seen != last || now - at >= backoff,
            };
            if since >= quiet && due {
                let peak_kib_before_check = status_kib("VmHWM:");
                let wall = std::time::Instant::now();
                let snap = self.snapshot().await?;
                snapshots += 1;
                let verdict = invariants::check(&self.topo, &snap);
                drop(snap);
                check_wall += wall.elapsed();
                match verdict {
                    Ok(()) => {
                        let virtual_time =
                            last.map_or(Duration::ZERO, |t| t - start);
                        return Ok(Converged {
                            virtual_time,
                            snapshots,
                            check_wall,
                            peak_kib_before_check,
                        });
                    }
                    Err(e) if start.elapsed() >= limit => {
                        return Err(format!(
                            "not converged after {:?} of virtual time \
                             ({snapshots} snapshots): {e}",
                            start.elapsed()
                        ))
                    }
                    Err(_) => {
                        backoff = match checked_at {
                            Some((seen, _)) if seen == last => {
                                (backoff * 2).min(Duration::from_secs(4))
                            }
                            _ => quiet,
                        };
                        checked_at = Some((last, tokio::time::Instant::now()));
                    }
                }
            } else if start.elapsed() >= limit + quiet * 4 {
                return Err(format!(
                    "the exchange never went quiet within {:?}",
                    start.elapsed()
                ));
            }
            tokio::time::sleep(step).await;
        }
    }

    /// The last exchange request delivered or dataplane change, if any
    /// since `start`.
    fn last_activity(
        &self,
        start: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        let dp = *self.last_change.lock().unwrap_or_else(|p| p.into_inner());
        self.net.stats().last.max(dp).filter(|t| *t >= start)
    }

    /// Apply one fault of a schedule (`Settle` is the caller's: it is a
    /// [`SimFabric::converge`]).
    ///
    /// * link down/up and partitions cut or mend the memory link (both
    ///   ends stop hearing each other, so each expires the other) and
    ///   refuse exchange requests between its two addresses both ways, as
    ///   a cut cable shows both;
    /// * a one-sided session reset expires the peer on that router only
    ///   (as `DELETE /peers/{addr}` does): its exchange session stops and
    ///   starts afresh when discovery finds the peer again; the peer does
    ///   not notice;
    /// * request failures hit the router's next requests over the link:
    ///   refused (not delivered), reset before the answer (delivered, the
    ///   requester sees an error), or timed out (not delivered, after the
    ///   requester's deadline);
    /// * delay and reordering hold each request over the link back by a
    ///   fixed or a drawn time, until the link goes down.
    pub async fn apply(&mut self, fault: &Fault) -> Result<(), SimError> {
        match fault {
            Fault::Crash { router } => self.crash(*router).await,
            Fault::Restart { router } => self.restart(*router).await?,
            Fault::LinkDown { .. }
            | Fault::LinkUp { .. }
            | Fault::Partition { .. }
            | Fault::Heal => {
                self.last_event = tokio::time::Instant::now();
                let before = self.state.dead_links();
                self.state.apply(fault);
                let after = self.state.dead_links();
                for &l in before.symmetric_difference(&after) {
                    self.wire_link(l);
                }
            }
            Fault::SessionReset { router, link } => {
                self.last_event = tokio::time::Instant::now();
                let l = self.topo.links[*link];
                let far = if l.a.router == *router { l.b } else { l.a };
                if let Some(r) = &self.routers[*router] {
                    ractor::call!(r.sup, SupervisorMsg::ExpirePeer, far.addr)
                        .map_err(|e| {
                        format!("{}: {e}", self.topo.routers[*router].name)
                    })?;
                }
            }
            Fault::RequestsFail { router, link, how, count } => {
                self.last_event = tokio::time::Instant::now();
                let l = self.topo.links[*link];
                let (near, far) =
                    if l.a.router == *router { (l.a, l.b) } else { (l.b, l.a) };
                let f = match how {
                    RequestFailure::Refused => NetFault::Refuse,
                    RequestFailure::ResetBeforeReply => NetFault::Reset,
                    RequestFailure::Timeout => NetFault::Timeout,
                };
                self.net.set_fault_count(near.addr, far.addr, f, *count);
            }
            Fault::Delay { link, by } => {
                self.last_event = tokio::time::Instant::now();
                self.slow.insert(*link, NetFault::Delay(*by));
                self.wire_link(*link);
            }
            Fault::Reorder { link, within } => {
                self.last_event = tokio::time::Instant::now();
                self.slow.insert(*link, NetFault::Jitter(*within));
                self.wire_link(*link);
            }
            Fault::Settle => {}
        }
        Ok(())
    }

    /// Set link `l`'s cable and exchange faults from the fault state.
    fn wire_link(&self, l: usize) {
        let link = self.topo.links[l];
        let dead = self.state.dead_links().contains(&l);
        self.cables[l].set_up(!dead);
        let fault = if dead {
            Some(NetFault::Refuse)
        } else {
            self.slow.get(&l).copied()
        };
        for (from, to) in
            [(link.a.addr, link.b.addr), (link.b.addr, link.a.addr)]
        {
            match fault {
                Some(f) => self.net.set_fault(from, to, f),
                None => self.net.clear_fault(from, to),
            }
        }
    }

    /// What the fabric carried so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            exchange: self.net.stats(),
            datagrams: self.cables.iter().map(MemoryPort::carried).sum(),
        }
    }

    /// A digest of what every router holds now and of what the fabric
    /// carried: two runs of one seed must give the same.
    pub async fn digest(&self) -> Result<u64, SimError> {
        let mut snap = self.snapshot().await?;
        // A router lists its paths in its table's (hash) order.
        for v in snap.routers.iter_mut().flatten() {
            v.paths.sort_unstable();
        }
        let t = self.traffic();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{snap:?}").hash(&mut h);
        (t.exchange.requests, t.exchange.bytes, t.datagrams).hash(&mut h);
        Ok(h.finish())
    }

    /// Stop every router.
    pub async fn stop(mut self) {
        for i in 0..self.routers.len() {
            self.crash(i).await;
        }
    }
}
