//! The illumos kernel dataplane: one route per (prefix, nexthop,
//! interface), added and deleted by difference through the routing socket
//! (the kernel spreads traffic over several routes to one destination),
//! each bound to the interface of its link-local nexthop; tunnel endpoints
//! to OPTE ([`super::tunnels`]).
//!
//! The routes we own are the ones recorded under the data directory
//! ([`super::record`]) before they were added: at start the recorded routes
//! a previous run left are removed (a listing, where the kernel offers
//! `RTM_GETALL`, only confirms which still exist), and a route we did not
//! record is never touched. An add that finds its route already there
//! (`EEXIST`: the same prefix through the same gateway on the same
//! interface) takes it over, as the original daemon does: it is recorded
//! and deleted when withdrawn. Otherwise a swap from an original daemon
//! stopped with SIGTERM (it cleans up on SIGINT only) kept its routes for
//! good, also through peers that later went away. Every route goes at
//! shutdown.
//!
//! A write the kernel could not carry out for want of buffers or memory
//! (`ENOBUFS`, `ENOMEM`, `EAGAIN`), or that the socket failed, is handed
//! back to the router's dataplane worker as `Incomplete` with its
//! destinations' updates, and applied again after the worker's back-off;
//! so is a whole batch the route record could not take. A refusal of the
//! route itself stands (an error, not retried), as on Linux. A route that
//! may be in the kernel though no batch installed it is deleted, apart
//! from the batch (its failures are not the batch's), when a later batch
//! does not want it: one a previous run left whose delete at start
//! failed, by the next batch; an add of a batch that failed part way, by
//! the next batch naming its destination (others leave it to the failed
//! batch's retry). One the kernel refuses to delete then stays recorded
//! until shutdown.
//!
//! The logic is platform-independent and tested with a fake socket; the
//! socket itself ([`RouteSocket`]) is illumos-only.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use oxnet::Ipv6Net;
use slog::{info, warn, Logger};

use super::record::RouteRecord;
use super::rtsock::{KernelRoute, WriteOutcome};
use super::tunnels::{Opener, OpteDriver, Tunnels};
use crate::{masked, Dataplane, DataplaneError, RouteUpdate, TunnelEntry};

/// The kernel's routing socket, as the dataplane uses it (blocking calls;
/// the dataplane runs them off the async runtime).
pub trait RouteSocket: Send + 'static {
    /// Adds a route; the outcome of the write.
    fn add(&mut self, r: &KernelRoute) -> std::io::Result<WriteOutcome>;
    /// Deletes a route; the outcome of the write.
    fn delete(&mut self, r: &KernelRoute) -> std::io::Result<WriteOutcome>;
    /// Whether an interface with this index exists (a route bound to one
    /// that was removed went with it).
    fn interface_exists(&mut self, ifindex: u16) -> bool;
    /// Every IPv6 gateway route in the kernel, or an error where the kernel
    /// cannot list (no `RTM_GETALL`) or the listing was cut short or
    /// malformed: a partial listing taken as whole would leave the routes
    /// it missed in the kernel.
    fn list(&mut self) -> std::io::Result<Vec<KernelRoute>>;
}

/// Counters of the kernel dataplane.
#[derive(Debug, Default)]
pub struct KernelStats {
    /// Adds that found the route already there, taken over (an original
    /// daemon's left behind, say).
    pub foreign: AtomicU64,
    /// Nexthops whose interface index does not fit the routing socket.
    pub skipped: AtomicU64,
    /// Writes the kernel refused.
    pub refused: AtomicU64,
    /// Malformed lines of the route record.
    pub bad_record_lines: AtomicU64,
}

/// The illumos kernel dataplane over a routing socket `S` and an OPTE
/// driver `D`.
pub struct KernelDataplane<S: RouteSocket, D: OpteDriver> {
    /// The routing socket and the route record, which block (the record
    /// syncs its file): once made (`new` opens and reads the record
    /// where it is called), used on tokio's blocking pool only, never on
    /// the runtime thread. `None` only while a blocking call holds them
    /// (for good if one could not give them back).
    io: Option<Io<S>>,
    /// What we installed, per destination.
    installed: BTreeMap<Ipv6Net, BTreeSet<KernelRoute>>,
    /// Recorded routes that may be in the kernel though not installed
    /// (none of them is), and why.
    left: BTreeMap<KernelRoute, Left>,
    /// The tunnel endpoints, used on the blocking pool (their driver's
    /// ioctls, and its opening, are system calls of their own); `None`
    /// only while there, or once lost as `io` is.
    tunnels: Option<Tunnels<D>>,
    stats: Arc<KernelStats>,
    log: Logger,
}

/// What [`KernelDataplane`] uses on the blocking pool.
struct Io<S> {
    sock: S,
    record: RouteRecord,
}

/// Run `f` with what `slot` holds (`what`) on tokio's blocking pool, never
/// on the runtime's thread: with one runtime thread, nothing else would
/// run meanwhile. A panic of `f` is its error (`doing` panicked), not the
/// loss of what it holds: that comes back either way (lost, every later
/// call fails for good).
async fn off_runtime<T: Send + 'static, R: Send + 'static>(
    slot: &mut Option<T>,
    what: &str,
    doing: &str,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<R, DataplaneError> {
    let mut held = slot
        .take()
        .ok_or_else(|| DataplaneError::Unavailable(format!("{what} lost")))?;
    let (held, done) = tokio::task::spawn_blocking(move || {
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut held)));
        (held, done)
    })
    .await
    .map_err(|e| DataplaneError::Unavailable(format!("{e}")))?;
    *slot = Some(held);
    done.map_err(|_| DataplaneError::Request(format!("{doing} panicked")))
}

/// The routes the record in `io` holds; none once it is lost (see
/// [`KernelDataplane::io`]).
fn recorded_in<S>(io: &Option<Io<S>>) -> &BTreeSet<KernelRoute> {
    static NONE: BTreeSet<KernelRoute> = BTreeSet::new();
    io.as_ref().map_or(&NONE, |io| io.record.routes())
}

/// Why a recorded route may be in the kernel though no batch installed
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// A previous run left it, and its delete at start failed: each later
    /// batch that does not want it deletes it.
    Stale,
    /// An add of a batch that failed part way: a later batch naming its
    /// destination without wanting it deletes it (one that does not name
    /// it leaves it to the failed batch's retry).
    Unsure,
}

/// What one batch of writes did.
struct Done {
    added: Vec<KernelRoute>,
    foreign: Vec<KernelRoute>,
    /// Deleted, or found gone already.
    deleted: Vec<KernelRoute>,
    /// How many deletes removed a route that was there.
    removed: usize,
    failures: Vec<String>,
    /// Destinations with a write that failed for a reason that is not
    /// the route's (the socket failed, the kernel was out of buffers or
    /// memory): tried again, unlike a refusal of the route itself.
    transient: BTreeSet<Ipv6Net>,
}

/// Whether a write the kernel answered with `outcome` may succeed as it
/// is a moment later: the kernel ran short, not refused it.
fn transient(outcome: WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Failed(e)
        if crate::TRANSIENT_ERRNOS.contains(&e))
}

fn run_batch<S: RouteSocket>(
    sock: &mut S,
    adds: &[KernelRoute],
    dels: &[KernelRoute],
) -> Done {
    let mut d = Done {
        added: Vec::new(),
        foreign: Vec::new(),
        deleted: Vec::new(),
        removed: 0,
        failures: Vec::new(),
        transient: BTreeSet::new(),
    };
    for r in adds {
        match sock.add(r) {
            Ok(WriteOutcome::Done) => d.added.push(*r),
            Ok(WriteOutcome::AlreadyPresent) => {
                d.added.push(*r);
                d.foreign.push(*r);
            }
            Ok(o) => d.failed("add", r, &format!("{o:?}"), transient(o)),
            Err(e) => d.failed("add", r, &e.to_string(), true),
        }
    }
    for r in dels {
        match sock.delete(r) {
            Ok(WriteOutcome::Done) => {
                d.deleted.push(*r);
                d.removed += 1;
            }
            Ok(WriteOutcome::AlreadyGone) => d.deleted.push(*r),
            // A route bound to an interface that was removed went with
            // it; deleting it names an interface the kernel no longer
            // knows (EINVAL). Left as ours, every later batch for its
            // destination, and every shutdown, failed on it.
            Ok(WriteOutcome::Failed(libc::EINVAL))
                if !sock.interface_exists(r.ifindex) =>
            {
                d.deleted.push(*r)
            }
            Ok(o) => d.failed("delete", r, &format!("{o:?}"), transient(o)),
            Err(e) => d.failed("delete", r, &e.to_string(), true),
        }
    }
    d
}

impl Done {
    /// The write `op` of `r` failed; `transient`: not for a reason of the
    /// route's (see [`Done::transient`]; a socket that failed is one).
    fn failed(
        &mut self,
        op: &str,
        r: &KernelRoute,
        why: &str,
        transient: bool,
    ) {
        self.failures.push(format!("{op} {r:?}: {why}"));
        if transient {
            self.transient.insert(r.dest);
        }
    }
}

impl<S: RouteSocket, D: OpteDriver> KernelDataplane<S, D> {
    /// A dataplane over `sock`, recording its routes in `data_dir`, with
    /// tunnel endpoints to the driver `opte` opens (recorded only while
    /// it finds none; see [`Tunnels`]).
    pub fn new(
        sock: S,
        opte: Opener<D>,
        data_dir: &Path,
        log: Logger,
    ) -> Result<Self, DataplaneError> {
        let (record, bad) = RouteRecord::open(data_dir).map_err(|e| {
            DataplaneError::Unavailable(format!(
                "route record in {}: {e}",
                data_dir.display()
            ))
        })?;
        let stats = Arc::new(KernelStats::default());
        if bad > 0 {
            warn!(log, "skipped malformed lines of the route record";
                "count" => bad);
            stats.bad_record_lines.fetch_add(bad as u64, Ordering::Relaxed);
        }
        Ok(KernelDataplane {
            io: Some(Io { sock, record }),
            installed: BTreeMap::new(),
            left: BTreeMap::new(),
            tunnels: Some(Tunnels::new(opte, log.clone())),
            stats,
            log,
        })
    }

    /// The dataplane's counters.
    pub fn stats(&self) -> Arc<KernelStats> {
        self.stats.clone()
    }

    /// The routes the record holds.
    fn recorded(&self) -> &BTreeSet<KernelRoute> {
        recorded_in(&self.io)
    }

    /// Run `f` with the socket and the record on tokio's blocking pool
    /// ([`off_runtime`]).
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Io<S>) -> T + Send + 'static,
    ) -> Result<T, DataplaneError> {
        off_runtime(&mut self.io, "routing socket", "the route batch", f).await
    }

    /// Runs adds then deletes off the async runtime, keeping the record:
    /// adds are recorded before they are written, deletes after.
    async fn write(
        &mut self,
        adds: Vec<KernelRoute>,
        dels: Vec<KernelRoute>,
    ) -> Result<Done, DataplaneError> {
        let log = self.log.clone();
        let mut done = self
            .blocking(move |io| {
                io.record.add(&adds).map_err(|e| {
                    DataplaneError::Request(format!("recording routes: {e}"))
                })?;
                let done = run_batch(&mut io.sock, &adds, &dels);
                if let Err(e) = io.record.remove(&done.deleted) {
                    warn!(log, "could not update the route record";
                        "error" => %e);
                }
                Ok::<_, DataplaneError>(done)
            })
            .await??;
        // Our own, left by a failure, are not someone else's.
        done.foreign.retain(|r| !self.left.contains_key(r));
        if !done.foreign.is_empty() {
            // Recorded with the adds: ours from now on.
            self.stats
                .foreign
                .fetch_add(done.foreign.len() as u64, Ordering::Relaxed);
            info!(self.log, "routes already present were taken over";
                "count" => done.foreign.len(), "first" => ?done.foreign[0]);
        }
        if !done.failures.is_empty() {
            self.stats
                .refused
                .fetch_add(done.failures.len() as u64, Ordering::Relaxed);
            for f in done.failures.iter().take(5) {
                warn!(self.log, "the kernel refused a route change";
                    "detail" => f);
            }
        }
        Ok(done)
    }

    /// Delete routes left by earlier failures (`left`), apart from the
    /// batch: their failures are not the batch's. One the kernel refuses
    /// for good is let go here (it stays recorded, and goes at shutdown);
    /// one it could not delete for now is tried again with the next batch.
    async fn delete_left(&mut self, tried: Vec<KernelRoute>) {
        let Ok(done) = self.write(Vec::new(), tried.clone()).await else {
            return;
        };
        for r in done.deleted.iter() {
            self.left.remove(r);
        }
        for r in tried.iter().filter(|r| !done.transient.contains(&r.dest)) {
            self.left.remove(r);
        }
    }

    fn result(done: &Done) -> Result<(), DataplaneError> {
        match done.failures.first() {
            None => Ok(()),
            Some(f) => Err(DataplaneError::Request(format!(
                "{} route changes failed, first: {f}",
                done.failures.len()
            ))),
        }
    }
}

#[async_trait]
impl<S: RouteSocket, D: OpteDriver> Dataplane for KernelDataplane<S, D> {
    fn name(&self) -> &'static str {
        "illumos"
    }

    async fn remove_stale(&mut self) -> Result<usize, DataplaneError> {
        let recorded: Vec<KernelRoute> =
            self.recorded().iter().copied().collect();
        if recorded.is_empty() {
            return Ok(0);
        }
        // Where the kernel can list, only routes still there need a
        // delete: those it does not list leave the record.
        let log = self.log.clone();
        let present = self
            .blocking(move |io| {
                let Ok(listed) = io.sock.list() else {
                    return recorded;
                };
                let listed: BTreeSet<_> = listed.into_iter().collect();
                let (present, absent): (Vec<_>, Vec<_>) =
                    recorded.into_iter().partition(|r| listed.contains(r));
                if let Err(e) = io.record.remove(&absent) {
                    warn!(log, "could not update the route record";
                        "error" => %e);
                }
                present
            })
            .await;
        // The listing failed (it panicked: the socket came back) or the
        // socket is lost: every recorded route is deleted, as when the
        // kernel cannot list (or the write fails as it would).
        let present = match present {
            Ok(p) => p,
            Err(_) => self.recorded().iter().copied().collect(),
        };
        let done = self.write(Vec::new(), present.clone()).await;
        let deleted: BTreeSet<KernelRoute> = match &done {
            Ok(d) => d.deleted.iter().copied().collect(),
            Err(_) => BTreeSet::new(),
        };
        // Deleted with a later batch instead, unless it wants them.
        for r in present.into_iter().filter(|r| !deleted.contains(r)) {
            self.left.insert(r, Left::Stale);
        }
        let done = done?;
        Self::result(&done)?;
        Ok(done.removed)
    }

    async fn apply(
        &mut self,
        updates: Vec<RouteUpdate>,
    ) -> Result<(), DataplaneError> {
        let mut adds = Vec::new();
        let mut dels = Vec::new();
        let empty = BTreeSet::new();
        let mut wanted: BTreeMap<Ipv6Net, BTreeSet<KernelRoute>> =
            BTreeMap::new();
        for u in &updates {
            let dest = masked(&u.destination);
            let mut want = BTreeSet::new();
            for nh in u.nexthops.iter() {
                match u16::try_from(nh.ifindex) {
                    Ok(ifindex) => {
                        want.insert(KernelRoute {
                            dest,
                            gateway: nh.addr,
                            ifindex,
                        });
                    }
                    Err(_) => {
                        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let have = self.installed.get(&dest).unwrap_or(&empty);
            adds.extend(want.difference(have).copied());
            dels.extend(have.difference(&want).copied());
            wanted.insert(dest, want);
        }
        // What may be left of earlier failures, unless this batch wants it.
        let left: Vec<KernelRoute> = self
            .left
            .iter()
            .filter(|(r, why)| match wanted.get(&r.dest) {
                Some(want) => !want.contains(r),
                None => **why == Left::Stale,
            })
            .map(|(r, _)| *r)
            .collect();
        if !left.is_empty() {
            self.delete_left(left).await;
        }
        let tried = adds.clone();
        let done = match self.write(adds, dels).await {
            // Nothing was written (the record could not take the adds),
            // or the batch panicked part way: the whole batch again, after
            // the worker's back-off (adds already written then come back
            // as already present, and are taken back, not counted as
            // taken over). Its adds may be in the kernel meanwhile:
            // should a later batch not want them, it deletes them.
            Err(DataplaneError::Request(error)) => {
                let recorded = recorded_in(&self.io);
                for r in tried.into_iter().filter(|r| recorded.contains(r)) {
                    self.left.entry(r).or_insert(Left::Unsure);
                }
                return Err(DataplaneError::Incomplete { error, updates });
            }
            r => r?,
        };
        for r in &done.added {
            self.left.remove(r);
            self.installed.entry(r.dest).or_default().insert(*r);
        }
        for r in &done.deleted {
            if let Some(s) = self.installed.get_mut(&r.dest) {
                s.remove(r);
                if s.is_empty() {
                    self.installed.remove(&r.dest);
                }
            }
        }
        if !done.transient.is_empty() {
            // Applied again, each of these finds what is installed and
            // writes only what failed.
            let again: Vec<RouteUpdate> = updates
                .into_iter()
                .filter(|u| done.transient.contains(&masked(&u.destination)))
                .collect();
            return Err(DataplaneError::Incomplete {
                error: format!(
                    "{} route changes failed for want of kernel resources \
                     or of the socket, first: {}",
                    done.failures.len(),
                    done.failures[0]
                ),
                updates: again,
            });
        }
        Self::result(&done)
    }

    async fn set_tunnels(
        &mut self,
        tunnels: BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        off_runtime(&mut self.tunnels, "tunnel driver", "the tunnel update", {
            move |t| t.set(&tunnels)
        })
        .await?
    }

    async fn remove_all(&mut self) -> Result<usize, DataplaneError> {
        let tunnels = off_runtime(
            &mut self.tunnels,
            "tunnel driver",
            "the tunnels' removal",
            Tunnels::clear_all,
        )
        .await
        .and_then(|cleared| cleared);
        // Everything recorded: what we installed, and anything a failed
        // delete left.
        let all: Vec<KernelRoute> = self.recorded().iter().copied().collect();
        let done = self.write(Vec::new(), all).await?;
        self.installed.clear();
        self.left.clear();
        Self::result(&done)?;
        tunnels?;
        Ok(done.removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Nexthop, Nexthops};
    use std::sync::Mutex;

    /// A kernel table: routes, with an owner name for the test.
    #[derive(Clone, Default)]
    struct FakeKernel {
        table: Arc<Mutex<BTreeSet<KernelRoute>>>,
        can_list: bool,
        refuse: Arc<Mutex<BTreeSet<KernelRoute>>>,
        /// Writes of these fail once, for want of buffers.
        short: Arc<Mutex<BTreeSet<KernelRoute>>>,
        /// Interfaces removed: their routes are gone with them, and a
        /// delete naming one is refused (EINVAL).
        removed: Arc<Mutex<BTreeSet<u16>>>,
        /// Adds of these panic once (a bug in the socket's code).
        panics: Arc<Mutex<BTreeSet<KernelRoute>>>,
        /// Deletes of these are refused (EPERM).
        undeletable: Arc<Mutex<BTreeSet<KernelRoute>>>,
        /// The threads each call came on.
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    }

    impl FakeKernel {
        fn called(&self) {
            self.threads.lock().unwrap().push(std::thread::current().id());
        }
    }

    impl RouteSocket for FakeKernel {
        fn add(&mut self, r: &KernelRoute) -> std::io::Result<WriteOutcome> {
            self.called();
            if self.panics.lock().unwrap().remove(r) {
                panic!("a bug in the routing socket's code");
            }
            if self.refuse.lock().unwrap().contains(r) {
                return Ok(WriteOutcome::Failed(22));
            }
            if self.short.lock().unwrap().remove(r) {
                return Ok(WriteOutcome::Failed(libc::ENOBUFS));
            }
            Ok(if self.table.lock().unwrap().insert(*r) {
                WriteOutcome::Done
            } else {
                WriteOutcome::AlreadyPresent
            })
        }
        fn delete(&mut self, r: &KernelRoute) -> std::io::Result<WriteOutcome> {
            self.called();
            if self.short.lock().unwrap().remove(r) {
                return Err(std::io::Error::other("socket failed"));
            }
            if self.removed.lock().unwrap().contains(&r.ifindex) {
                return Ok(WriteOutcome::Failed(libc::EINVAL));
            }
            if self.undeletable.lock().unwrap().contains(r) {
                return Ok(WriteOutcome::Failed(libc::EPERM));
            }
            Ok(if self.table.lock().unwrap().remove(r) {
                WriteOutcome::Done
            } else {
                WriteOutcome::AlreadyGone
            })
        }
        fn interface_exists(&mut self, ifindex: u16) -> bool {
            !self.removed.lock().unwrap().contains(&ifindex)
        }
        fn list(&mut self) -> std::io::Result<Vec<KernelRoute>> {
            self.called();
            if !self.can_list {
                return Err(std::io::Error::other("no RTM_GETALL"));
            }
            Ok(self.table.lock().unwrap().iter().copied().collect())
        }
    }

    struct NoOpte;
    impl OpteDriver for NoOpte {
        fn send(
            &mut self,
            _: super::super::tunnels::V2bCmd,
            _: &[u8],
        ) -> Result<(), super::super::tunnels::OpteError> {
            Ok(())
        }
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn kr(dest: &str, gw: &str, ifindex: u16) -> KernelRoute {
        KernelRoute {
            dest: dest.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            ifindex,
        }
    }

    fn upd(dest: &str, nhs: &[(&str, u32)]) -> RouteUpdate {
        RouteUpdate {
            destination: dest.parse().unwrap(),
            nexthops: nhs
                .iter()
                .map(|(a, i)| Nexthop { addr: a.parse().unwrap(), ifindex: *i })
                .collect::<Nexthops>(),
        }
    }

    fn dp(k: &FakeKernel, dir: &Path) -> KernelDataplane<FakeKernel, NoOpte> {
        KernelDataplane::new(k.clone(), Box::new(|| Ok(None)), dir, log())
            .unwrap()
    }

    /// A dataplane over an empty fake kernel, with its record in a fresh
    /// directory (kept alive by the first of the three).
    fn fresh(
    ) -> (tempfile::TempDir, FakeKernel, KernelDataplane<FakeKernel, NoOpte>)
    {
        let dir = tempfile::tempdir().unwrap();
        let k = FakeKernel::default();
        let d = dp(&k, dir.path());
        (dir, k, d)
    }

    fn table(k: &FakeKernel) -> Vec<KernelRoute> {
        k.table.lock().unwrap().iter().copied().collect()
    }

    /// The socket is used on the blocking pool only, never on the
    /// runtime's thread: with one runtime thread, nothing else would run
    /// meanwhile. (The record, which syncs its file, is used in the same
    /// calls, `blocking`; this fake cannot see it.)
    #[tokio::test]
    async fn the_socket_and_the_record_are_used_off_the_runtime_thread() {
        let (dir, k, mut d) = fresh();
        d.apply(vec![upd("fd00:1::/64", &[("fe80::a", 2)])]).await.unwrap();
        drop(d);
        let listing = FakeKernel { can_list: true, ..k.clone() };
        let mut d = dp(&listing, dir.path());
        assert_eq!(d.remove_stale().await.unwrap(), 1);
        let here = std::thread::current().id();
        let seen = k.threads.lock().unwrap();
        assert_eq!(seen.len(), 3, "add, list, delete");
        assert!(seen.iter().all(|t| *t != here));
    }

    /// The tunnel driver (opened, and sent its ioctls, in the calls to
    /// `Tunnels`) is used on the blocking pool only, as the socket is.
    #[tokio::test]
    async fn the_tunnel_driver_is_used_off_the_runtime_thread() {
        type Threads = Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>;
        /// Notes where each ioctl is made.
        struct Noting(Threads);
        impl OpteDriver for Noting {
            fn send(
                &mut self,
                _: super::super::tunnels::V2bCmd,
                _: &[u8],
            ) -> Result<(), super::super::tunnels::OpteError> {
                self.0.lock().unwrap().push(std::thread::current().id());
                Ok(())
            }
        }
        let sent = Threads::default();
        let opened = Threads::default();
        let (sent2, opened2) = (Arc::clone(&sent), Arc::clone(&opened));
        let dir = tempfile::tempdir().unwrap();
        let mut d = KernelDataplane::new(
            FakeKernel::default(),
            Box::new(move || {
                opened2.lock().unwrap().push(std::thread::current().id());
                // Absent when the dataplane is made, found at the change.
                let found = opened2.lock().unwrap().len() > 1;
                Ok(found.then(|| Noting(Arc::clone(&sent2))))
            }),
            dir.path(),
            log(),
        )
        .unwrap();
        let here = std::thread::current().id();
        let tunnel = TunnelEntry {
            origin: crate::TunnelOrigin {
                overlay_prefix: "10.0.0.0/8".parse().unwrap(),
                boundary_addr: "fd00::1".parse().unwrap(),
                vni: 5,
                metric: 0,
            },
            nexthop: "fe80::1".parse().unwrap(),
        };
        d.set_tunnels([tunnel].into()).await.unwrap();
        assert_eq!(d.remove_all().await.unwrap(), 0);
        let opened = opened.lock().unwrap();
        assert_eq!(opened.len(), 2, "at the start, and at the change");
        assert_ne!(opened[1], here, "opened on the runtime's thread");
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2, "the set, then its removal");
        assert!(sent.iter().all(|t| *t != here), "an ioctl on the runtime's");
    }

    /// A batch that panicked is its own error; the socket stays, and the
    /// next batch is written.
    #[tokio::test]
    async fn a_batch_that_panicked_keeps_the_socket() {
        let (_dir, k, mut d) = fresh();
        k.panics.lock().unwrap().insert(kr("fd00:1::/64", "fe80::a", 2));
        let err = d
            .apply(vec![upd("fd00:1::/64", &[("fe80::a", 2)])])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        d.apply(vec![upd("fd00:2::/64", &[("fe80::a", 2)])]).await.unwrap();
        assert_eq!(table(&k), [kr("fd00:2::/64", "fe80::a", 2)]);
    }

    /// A route a batch that panicked may have written is left alone by a
    /// batch that does not name its destination (the failed batch's retry
    /// will), and deleted by one that does not want it, though that batch
    /// replaces the retry (the worker's later update wins).
    #[tokio::test]
    async fn what_a_batch_that_panicked_wrote_is_deleted_when_unwanted() {
        let (_dir, k, mut d) = fresh();
        k.panics.lock().unwrap().insert(kr("fd00:2::/64", "fe80::b", 2));
        let r = d
            .apply(vec![
                upd("fd00:1::/64", &[("fe80::a", 2)]),
                upd("fd00:2::/64", &[("fe80::b", 2)]),
            ])
            .await;
        assert!(matches!(r, Err(DataplaneError::Incomplete { .. })), "{r:?}");
        assert_eq!(table(&k), [kr("fd00:1::/64", "fe80::a", 2)]);
        d.apply(vec![upd("fd00:3::/64", &[("fe80::c", 2)])]).await.unwrap();
        assert_eq!(
            table(&k),
            [kr("fd00:1::/64", "fe80::a", 2), kr("fd00:3::/64", "fe80::c", 2)]
        );
        d.apply(vec![upd("fd00:1::/64", &[]), upd("fd00:2::/64", &[])])
            .await
            .unwrap();
        assert_eq!(table(&k), [kr("fd00:3::/64", "fe80::c", 2)]);
        assert_eq!(d.stats().foreign.load(Ordering::Relaxed), 0);
    }

    /// A route of the last run whose delete failed at start is deleted by
    /// a later batch, whether or not that batch names its destination,
    /// and kept where a batch wants it.
    #[tokio::test]
    async fn a_stale_route_whose_delete_failed_goes_with_a_later_batch() {
        let dir = tempfile::tempdir().unwrap();
        let k = FakeKernel { can_list: true, ..FakeKernel::default() };
        let (p_a, q_a, r_a) = (
            kr("fd00:1::/64", "fe80::a", 2),
            kr("fd00:2::/64", "fe80::a", 2),
            kr("fd00:3::/64", "fe80::a", 2),
        );
        {
            // A run that dies without cleaning up (kill -9).
            let mut d = dp(&k, dir.path());
            d.apply(vec![
                upd("fd00:1::/64", &[("fe80::a", 2)]),
                upd("fd00:2::/64", &[("fe80::a", 2)]),
                upd("fd00:3::/64", &[("fe80::a", 2)]),
            ])
            .await
            .unwrap();
        }
        k.short.lock().unwrap().extend([p_a, q_a, r_a]);
        let mut d = dp(&k, dir.path());
        d.remove_stale().await.unwrap_err();
        assert_eq!(table(&k), [p_a, q_a, r_a]);
        // p now through another nexthop; q not named; r wanted as it is.
        d.apply(vec![
            upd("fd00:1::/64", &[("fe80::b", 3)]),
            upd("fd00:3::/64", &[("fe80::a", 2)]),
        ])
        .await
        .unwrap();
        assert_eq!(table(&k), [kr("fd00:1::/64", "fe80::b", 3), r_a]);
        d.apply(vec![upd("fd00:3::/64", &[])]).await.unwrap();
        assert_eq!(table(&k), [kr("fd00:1::/64", "fe80::b", 3)]);
    }

    /// A stale route the kernel refuses to delete is tried once more with
    /// the next batch, apart from it (that batch succeeds), then let go
    /// until shutdown.
    #[tokio::test]
    async fn a_stale_route_refused_for_good_fails_no_batch() {
        let dir = tempfile::tempdir().unwrap();
        let k = FakeKernel { can_list: true, ..FakeKernel::default() };
        let p_a = kr("fd00:1::/64", "fe80::a", 2);
        {
            let mut d = dp(&k, dir.path());
            d.apply(vec![upd("fd00:1::/64", &[("fe80::a", 2)])]).await.unwrap();
        }
        k.undeletable.lock().unwrap().insert(p_a);
        let mut d = dp(&k, dir.path());
        d.remove_stale().await.unwrap_err();
        d.apply(vec![upd("fd00:2::/64", &[("fe80::b", 2)])]).await.unwrap();
        let refused = d.stats().refused.load(Ordering::Relaxed);
        assert_eq!(refused, 2);
        d.apply(vec![upd("fd00:3::/64", &[("fe80::c", 2)])]).await.unwrap();
        assert_eq!(d.stats().refused.load(Ordering::Relaxed), refused);
        assert!(d.recorded().contains(&p_a));
    }

    #[tokio::test]
    async fn ecmp_sets_become_one_route_per_nexthop_by_difference() {
        let (_dir, k, mut d) = fresh();
        d.apply(vec![upd("fd00:1::/64", &[("fe80::a", 2), ("fe80::b", 3)])])
            .await
            .unwrap();
        assert_eq!(
            table(&k),
            [kr("fd00:1::/64", "fe80::a", 2), kr("fd00:1::/64", "fe80::b", 3)]
        );
        d.apply(vec![upd("fd00:1::/64", &[("fe80::b", 3)])]).await.unwrap();
        assert_eq!(table(&k), [kr("fd00:1::/64", "fe80::b", 3)]);
        d.apply(vec![upd("fd00:1::/64", &[])]).await.unwrap();
        assert!(table(&k).is_empty());
    }

    /// A route we want that is there already (an original daemon's, left
    /// by a SIGTERM) is taken over: withdrawn when the router withdraws
    /// it. Any other route, even to the same prefix, is never touched.
    #[tokio::test]
    async fn a_route_already_there_is_taken_over_and_others_survive_us() {
        let dir = tempfile::tempdir().unwrap();
        let k = FakeKernel::default();
        let left = kr("fd00:9::/64", "fe80::9", 2);
        let operators = kr("fd00:9::/64", "fe80::8", 2);
        k.table.lock().unwrap().extend([left, operators]);
        let mut d = dp(&k, dir.path());
        d.apply(vec![
            upd("fd00:9::/64", &[("fe80::9", 2)]),
            upd("fd00:1::/64", &[("fe80::a", 2)]),
        ])
        .await
        .unwrap();
        assert_eq!(d.stats().foreign.load(Ordering::Relaxed), 1);
        d.apply(vec![upd("fd00:9::/64", &[])]).await.unwrap();
        assert_eq!(table(&k), [kr("fd00:1::/64", "fe80::a", 2), operators]);
        // Recorded as ours, so a restart after kill -9 removes it too.
        d.apply(vec![upd("fd00:9::/64", &[("fe80::9", 2)])]).await.unwrap();
        drop(d);
        let mut d = dp(&k, dir.path());
        assert_eq!(d.remove_stale().await.unwrap(), 2);
        assert_eq!(table(&k), [operators]);
    }

    #[tokio::test]
    async fn a_restart_removes_what_the_last_run_recorded() {
        for can_list in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let k = FakeKernel { can_list, ..FakeKernel::default() };
            let operators = kr("fd00:9::/64", "fe80::9", 2);
            k.table.lock().unwrap().insert(operators);
            {
                // A run that dies without cleaning up (kill -9).
                let mut d = dp(&k, dir.path());
                d.apply(vec![
                    upd("fd00:1::/64", &[("fe80::a", 2)]),
                    upd("fd00:2::/64", &[("fe80::b", 3)]),
                ])
                .await
                .unwrap();
            }
            // Meanwhile someone removed one of them.
            k.table.lock().unwrap().remove(&kr("fd00:2::/64", "fe80::b", 3));
            let mut d = dp(&k, dir.path());
            assert_eq!(d.remove_stale().await.unwrap(), 1, "list {can_list}");
            assert_eq!(table(&k), [operators]);
            // Nothing left recorded.
            drop(d);
            let d = dp(&k, dir.path());
            assert!(d.recorded().is_empty());
        }
    }

    #[tokio::test]
    async fn refused_adds_are_errors_and_stay_recorded_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let k = FakeKernel::default();
        k.refuse.lock().unwrap().insert(kr("fd00:1::/64", "fe80::a", 2));
        let mut d = dp(&k, dir.path());
        let r = d.apply(vec![upd("fd00:1::/64", &[("fe80::a", 2)])]).await;
        assert!(matches!(r, Err(DataplaneError::Request(_))), "{r:?}");
        assert!(table(&k).is_empty());
        assert_eq!(d.stats().refused.load(Ordering::Relaxed), 1);
        // Shutdown deletes what is recorded (ESRCH is fine) and clears the
        // record.
        d.remove_all().await.unwrap();
        assert!(d.recorded().is_empty());
    }

    /// Writes that failed for want of kernel buffers, or because the
    /// socket failed, come back as `Incomplete` with the updates of their
    /// destinations (and only those); applied again, they write only what
    /// failed. A refusal of the route itself stays an error, not retried.
    #[tokio::test]
    async fn writes_that_failed_for_want_of_resources_come_back_to_retry() {
        let (_dir, k, mut d) = fresh();
        d.apply(vec![upd("fd00:3::/64", &[("fe80::c", 2)])]).await.unwrap();
        k.short.lock().unwrap().insert(kr("fd00:1::/64", "fe80::a", 2));
        k.short.lock().unwrap().insert(kr("fd00:3::/64", "fe80::c", 2));
        let r = d
            .apply(vec![
                upd("fd00:1::/64", &[("fe80::a", 2)]),
                upd("fd00:2::/64", &[("fe80::b", 2)]),
                upd("fd00:3::/64", &[]),
            ])
            .await;
        let Err(DataplaneError::Incomplete { updates, .. }) = r else {
            panic!("{r:?}");
        };
        let again: Vec<String> =
            updates.iter().map(|u| u.destination.to_string()).collect();
        assert_eq!(again, ["fd00:1::/64", "fd00:3::/64"]);
        assert_eq!(
            table(&k),
            [kr("fd00:2::/64", "fe80::b", 2), kr("fd00:3::/64", "fe80::c", 2)]
        );
        d.apply(updates).await.unwrap();
        assert_eq!(
            table(&k),
            [kr("fd00:1::/64", "fe80::a", 2), kr("fd00:2::/64", "fe80::b", 2)]
        );
    }

    /// A route whose interface was removed went with it: deleting it (the
    /// kernel refuses to name the interface, EINVAL) counts as done, not
    /// as a failure that every later batch and the shutdown would repeat.
    #[tokio::test]
    async fn routes_of_a_removed_interface_are_gone_with_it() {
        let (_dir, k, mut d) = fresh();
        d.apply(vec![
            upd("fd00:1::/64", &[("fe80::a", 2)]),
            upd("fd00:2::/64", &[("fe80::b", 3)]),
        ])
        .await
        .unwrap();
        // Interface 2 is removed, and its route with it.
        k.removed.lock().unwrap().insert(2);
        k.table.lock().unwrap().remove(&kr("fd00:1::/64", "fe80::a", 2));
        d.apply(vec![upd("fd00:1::/64", &[])]).await.unwrap();
        assert!(d.recorded().iter().all(|r| r.ifindex != 2));
        assert_eq!(d.remove_all().await.unwrap(), 1);
        assert!(table(&k).is_empty());
    }
}
