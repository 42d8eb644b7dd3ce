//! [`SimFabric`]: one real supervisor per router of a [`Topology`], in this
//! process, over in-memory links.
//!
//! Each router runs as the daemon does (supervisor, admin, router,
//! discovery and exchange actors) with three seams swapped: discovery
//! sends over [`MemoryPort`] pairs, the exchange over one shared
//! [`ExchangeNet`], and routes go to a [`MemoryDataplane`] the fabric keeps
//! a handle on. Run it on a current-thread runtime with paused time
//! (`#[tokio::test(start_paused = true)]`): time then advances only while
//! every actor waits.
//!
//! Not yet in memory (phase 2, once the store and admin seams land on the
//! same branch as the exchange one): each router's store is a redb file in
//! its own temporary directory, and its admin actor binds an HTTP listener
//! on `[::1]:0` that the simulation never uses (queries go by message).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use ddm_actors::admin::{AdminMsg, AdminRef};
use ddm_actors::config::{
    AdminConfig, DaemonConfig, InterfaceSpec, RouterConfig,
};
use ddm_actors::dataplane::memory::MemoryDataplane;
use ddm_actors::dataplane::{Dataplane, Nexthop};
use ddm_actors::discovery::{MemoryPort, PacketIo};
use ddm_actors::exchange::transport::{ExchangeNet, ExchangeTransport};
use ddm_actors::store::{Store, StoreChange};
use ddm_actors::supervisor::{
    DataplaneFactory, PacketIoFactory, Supervisor, SupervisorArgs,
    SupervisorMsg, SupervisorRef,
};
use ddm_admin_api::latest::RouterKind as ApiKind;
use ractor::Actor;
use slog::{o, Logger};

use super::invariants::{self, HeldPath, RouterView, Snapshot};
use super::topology::{RouterKind, Topology};

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
    /// Dead links (phase 2: memory links cannot be cut yet).
    dead_links: BTreeSet<usize>,
    /// When the last event (start, crash, restart) began, in virtual time.
    last_event: tokio::time::Instant,
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
        for l in &topo.links {
            let (pa, pb) = MemoryPort::pair(
                (l.a.ifindex, l.a.addr),
                (l.b.ifindex, l.b.addr),
            );
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
            net: ExchangeNet::new(),
            dead_links: BTreeSet::new(),
            last_event,
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
        let factory: DataplaneFactory = Arc::new(move |_: &Logger| {
            Ok(Box::new(dp.clone()) as Box<dyn Dataplane>)
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
        if let Some(r) = self.routers[i].take() {
            let _ = r.sup.stop_and_wait(None, None).await;
        }
    }

    /// Restart a crashed router from its configuration and store.
    pub async fn restart(&mut self, i: usize) -> Result<(), SimError> {
        self.last_event = tokio::time::Instant::now();
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
            let held = ractor::call!(admin, AdminMsg::GetPrefixes)
                .map_err(|e| format!("{name}: {e}"))?;
            let mut paths = Vec::new();
            for (peer, pvs) in held {
                let addr: Ipv6Addr = peer
                    .parse()
                    .map_err(|_| format!("{name}: peer key {peer:?}"))?;
                // A peer not on any of our links shows as interface 0,
                // which the invariants report.
                let ifindex =
                    self.ifindex_of[i].get(&addr).copied().unwrap_or(0);
                for pv in pvs {
                    paths.push(HeldPath {
                        destination: pv.destination,
                        via: Nexthop { addr, ifindex },
                        path: pv.path,
                    });
                }
            }
            let routes = r
                .dataplane
                .tables()
                .routes
                .into_iter()
                .map(|(d, nhs)| (d, nhs.iter().copied().collect()))
                .collect();
            routers.push(Some(RouterView { originated, routes, paths }));
        }
        Ok(Snapshot { routers, dead_links: self.dead_links.clone() })
    }

    /// Let virtual time pass in steps of `step` until the invariants hold
    /// (the fabric converged) or `limit` of virtual time has passed since
    /// the last event (start, crash, restart). The virtual time from that
    /// event to the first snapshot that passed, or the last violation.
    pub async fn converge(
        &self,
        step: Duration,
        limit: Duration,
    ) -> Result<Duration, SimError> {
        let start = self.last_event;
        loop {
            let snap = self.snapshot().await?;
            let verdict = invariants::check(&self.topo, &snap);
            let took = start.elapsed();
            match verdict {
                Ok(()) => return Ok(took),
                Err(e) if took >= limit => {
                    return Err(format!(
                        "not converged after {took:?} of virtual time: {e}"
                    ))
                }
                Err(_) => tokio::time::sleep(step).await,
            }
        }
    }

    /// Stop every router.
    pub async fn stop(mut self) {
        for i in 0..self.routers.len() {
            self.crash(i).await;
        }
    }
}
