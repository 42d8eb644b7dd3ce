//! The router's dataplane worker: a task that owns the [`Dataplane`] and
//! applies route batches and tunnel sets in order, coalescing whatever
//! queued while the previous batch was in the kernel.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slog::{debug, info, warn, Logger};
use tokio::sync::{mpsc, oneshot};

use super::ImportPermit;
use crate::dataplane::{Dataplane, DataplaneError, RouteUpdate, TunnelEntry};

/// What the dataplane worker counts, shared with the router actor.
#[derive(Debug, Default)]
pub(super) struct DataplaneStats {
    pub(super) batches: AtomicU64,
    pub(super) batch_errors: AtomicU64,
    pub(super) updates_applied: AtomicU64,
    pub(super) tunnel_updates: AtomicU64,
    pub(super) tunnel_errors: AtomicU64,
}

impl DataplaneStats {
    pub(super) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Merge the route batches queued while the worker was busy: one update per
/// destination, the latest, ordered by destination.
pub(super) fn coalesce(mut batches: Vec<Vec<RouteUpdate>>) -> Vec<RouteUpdate> {
    if batches.len() <= 1 {
        // One batch from the RIB already has one update per destination.
        return batches.pop().unwrap_or_default();
    }
    let mut all = Vec::with_capacity(batches.iter().map(Vec::len).sum());
    // Latest first, so that the stable sort keeps each destination's latest
    // update in front of the older ones, which `dedup` then drops.
    for batch in batches.into_iter().rev() {
        all.extend(batch.into_iter().rev());
    }
    all.sort_by_key(|u: &RouteUpdate| u.destination);
    all.dedup_by_key(|u| u.destination);
    all
}

/// Commands of the dataplane worker.
pub(super) enum DataplaneCmd {
    /// Program these destinations.
    Apply(Vec<RouteUpdate>),
    /// Replace the tunnel set.
    Tunnels(BTreeSet<TunnelEntry>),
    /// Give a peer's import permit back once the worker takes everything
    /// handed over before it: a peer's server reads its next push only
    /// then, so the routes waiting for the kernel are at most the batch
    /// in the kernel and the imports of the peers' permits (a transit's
    /// queue no longer grows with the kernel's lag).
    Release(ImportPermit),
}

/// The dataplane's turn, held by one router's dataplane worker at a time,
/// from its removal of what a previous run left to the end of its own
/// removal. A router that failed (panicked, or was killed) skips its
/// `post_stop`: its worker, detached, ends its batch and removes our
/// routes (`Dataplane::remove_all_after_failure`, which the switch's may
/// cut short, as the next router's start reconciles), while the restarted
/// router's worker waits. Without the turn, that removal also took the
/// routes (and nexthop objects) the new worker had just installed, and
/// the new RIB believed them installed.
///
/// It also carries what the supervisor's stop needs: whether the daemon
/// is stopping (then no next router comes, and a failed router's worker
/// removes everything, as at a clean stop), and the flag a failed removal
/// or a panicked worker sets, and a worker's removal of what was left
/// clears ([`DataplaneTurn::reporting`]).
#[derive(Debug, Clone, Default)]
pub struct DataplaneTurn(Arc<Turn>);

/// See [`DataplaneTurn`].
#[derive(Debug, Default)]
struct Turn {
    lock: tokio::sync::Mutex<()>,
    stopping: std::sync::atomic::AtomicBool,
    removal_failed: Arc<std::sync::atomic::AtomicBool>,
}

impl DataplaneTurn {
    /// Once no worker holds the turn: every worker that began has removed
    /// its routes and ended.
    pub async fn free(&self) {
        drop(self.0.lock.lock().await);
    }

    /// The daemon is stopping: no router starts after this one.
    pub fn set_stopping(&self) {
        self.0.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A turn whose workers set `removal_failed` when their removal of
    /// our routes fails (or they panicked), and clear it once their
    /// removal of what a previous run left succeeded.
    pub fn reporting(
        removal_failed: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        DataplaneTurn(Arc::new(Turn { removal_failed, ..Turn::default() }))
    }
}

/// The first wait before updates handed back to apply again (or a tunnel set
/// the dataplane could not set for now) is applied again; each failure in
/// a row doubles it, up to [`RETRY_MAX`] ([`crate::timer::backoff_between`]).
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait before a failed batch is applied again.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Updates handed back to apply again (a batch that failed as a whole,
/// or what the kernel refused for want of memory), and when.
struct Retry {
    updates: Vec<RouteUpdate>,
    at: tokio::time::Instant,
}

/// A tunnel set the dataplane could not set for now
/// (`DataplaneError::Unavailable`: its driver short of memory, say), and
/// when to set it again, unless a later set comes first. The set changes
/// only when the endpoints do, which may be never: without this, one such
/// failure left the tunnel dataplane without them for good. A set the
/// dataplane refused (`Request`) is not set again. Kept apart from the
/// routes' retry, with its own count, so that neither delays the other.
struct TunnelRetry {
    set: BTreeSet<TunnelEntry>,
    at: tokio::time::Instant,
}

/// One more failure in a row (counted in `failures`): how long to wait
/// before trying again, and until when.
fn next_retry(failures: &mut u32) -> (Duration, tokio::time::Instant) {
    *failures += 1;
    let wait = crate::timer::backoff_between(RETRY_FIRST, RETRY_MAX, *failures);
    (wait, tokio::time::Instant::now() + wait)
}

/// The earlier of two deadlines, either of which may be absent.
fn earliest(
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Until `at`, or for ever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The dataplane worker: applies commands in order, coalescing whatever
/// queued while the previous batch was in the kernel. It begins when it
/// has the dataplane's `turn`; commands queue until then.
pub(super) async fn dataplane_worker(
    mut dp: Box<dyn Dataplane>,
    mut rx: mpsc::UnboundedReceiver<DataplaneCmd>,
    mut shutdown: oneshot::Receiver<()>,
    turn: DataplaneTurn,
    stats: Arc<DataplaneStats>,
    log: Logger,
) {
    let _turn = turn.0.lock.lock().await;
    // Declared after the turn's guard, so dropped before it: a worker
    // that does not finish (it panicked, or was aborted) flags our routes
    // as left before anyone else can take the turn.
    let mut unfinished = Unfinished(turn.0.removal_failed.clone(), true);
    // What a previous run left is removed in the turn too: beside a failed
    // router's worker still removing its own, the two removals raced, and
    // each reported the other's routes as refusals.
    let removed = dp.remove_stale().await;
    if removed.is_ok() {
        // Nothing of ours left by an earlier worker (one that panicked,
        // or whose removal failed) is in place any more.
        turn.0
            .removal_failed
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
    match removed {
        Ok(0) => {}
        Ok(n) => info!(log, "removed routes left by a previous run";
            "count" => n, "dataplane" => dp.name()),
        Err(e) => warn!(log, "could not remove stale routes";
            "error" => %e, "dataplane" => dp.name()),
    }
    // Updates handed back, waiting to be applied again (what
    // comes meanwhile is applied at once, and wins where both name a
    // destination).
    let mut retry: Option<Retry> = None;
    let mut failed_in_a_row = 0u32;
    let mut tunnel_retry: Option<TunnelRetry> = None;
    let mut tunnels_failed_in_a_row = 0u32;
    // Whether the router stopped cleanly (it sent the shutdown), rather
    // than failed (it dropped the sender, or the queue, unsent).
    let mut clean = false;
    loop {
        let due = earliest(
            retry.as_ref().map(|r| r.at),
            tunnel_retry.as_ref().map(|t| t.at),
        );
        let first = tokio::select! {
            biased;
            stopped = &mut shutdown => {
                clean = stopped.is_ok();
                break;
            }
            cmd = rx.recv() => match cmd {
                Some(c) => Some(c),
                None => break,
            },
            _ = sleep_until(due), if due.is_some() => None,
        };
        if first.is_some() {
            // Let the tasks already woken run first: the router hands a
            // change's pushes over before its work here, and they go out
            // through the exchange actor and its request task. On one
            // runtime thread, this task, woken last, would otherwise run
            // first (tokio runs the last task woken next), and the push
            // left after this router's own kernel work.
            tokio::task::yield_now().await;
        }
        let now = tokio::time::Instant::now();
        let mut batches = Vec::new();
        if let Some(due) = retry.take_if(|r| now >= r.at) {
            batches.push(due.updates);
        }
        let mut tunnels = tunnel_retry.take_if(|t| now >= t.at).map(|t| t.set);
        let mut absorb = |cmd| match cmd {
            DataplaneCmd::Apply(batch) => batches.push(batch),
            DataplaneCmd::Tunnels(t) => tunnels = Some(t),
            // Everything queued before the permit is taken (commands are
            // absorbed in order): its peer may send the next push while
            // this batch is in the kernel.
            DataplaneCmd::Release(p) => drop(p),
        };
        if let Some(first) = first {
            absorb(first);
        }
        while let Ok(cmd) = rx.try_recv() {
            absorb(cmd);
        }
        let batch = coalesce(batches);
        if let (Some(r), false) = (&mut retry, batch.is_empty()) {
            // Not due yet: what this batch sets is set, not retried.
            let named: HashSet<_> =
                batch.iter().map(|u| u.destination).collect();
            r.updates.retain(|u| !named.contains(&u.destination));
            retry.take_if(|r| r.updates.is_empty());
        }
        if tunnels.is_some() {
            // A set given now replaces the one waiting.
            tunnel_retry = None;
        }
        if !batch.is_empty() {
            let n = batch.len();
            DataplaneStats::bump(&stats.batches, 1);
            match dp.apply(batch).await {
                Ok(()) => {
                    DataplaneStats::bump(&stats.updates_applied, n as u64);
                    if retry.is_none() {
                        failed_in_a_row = 0;
                    }
                    debug!(log, "routes programmed"; "count" => n)
                }
                Err(DataplaneError::Incomplete { error, updates }) => {
                    DataplaneStats::bump(&stats.batch_errors, 1);
                    let (wait, at) = next_retry(&mut failed_in_a_row);
                    warn!(log, "programming routes failed; trying again";
                        "count" => n, "again" => updates.len(),
                        "error" => error, "after_ms" => wait.as_millis());
                    retry = Some(match retry.take() {
                        // Behind what waits already (the later wins), and
                        // not putting off its wait.
                        Some(r) => Retry {
                            updates: coalesce(vec![r.updates, updates]),
                            at: r.at.min(at),
                        },
                        None => Retry { updates, at },
                    });
                }
                Err(e) => {
                    DataplaneStats::bump(&stats.batch_errors, 1);
                    warn!(log, "programming routes failed";
                        "count" => n, "error" => %e)
                }
            }
            crate::mem::trim_after(n);
        }
        if let Some(t) = tunnels {
            let n = t.len();
            DataplaneStats::bump(&stats.tunnel_updates, 1);
            // Kept to set again if the dataplane cannot now: a few
            // entries.
            match dp.set_tunnels(t.clone()).await {
                Ok(()) => tunnels_failed_in_a_row = 0,
                Err(DataplaneError::Unavailable(e)) => {
                    DataplaneStats::bump(&stats.tunnel_errors, 1);
                    let (wait, at) = next_retry(&mut tunnels_failed_in_a_row);
                    warn!(log, "programming tunnels failed; trying again";
                        "count" => n, "error" => e,
                        "after_ms" => wait.as_millis());
                    tunnel_retry = Some(TunnelRetry { set: t, at });
                }
                Err(e) => {
                    DataplaneStats::bump(&stats.tunnel_errors, 1);
                    tunnels_failed_in_a_row = 0;
                    warn!(log, "programming tunnels failed";
                        "count" => n, "error" => %e);
                }
            }
        }
    }
    // Permits still queued go back now, not after the removal.
    drop(rx);
    let stopping =
        || turn.0.stopping.load(std::sync::atomic::Ordering::Relaxed);
    let removed = if clean || stopping() {
        dp.remove_all().await
    } else {
        let removed = dp.remove_all_after_failure().await;
        // The daemon began to stop meanwhile: no router comes after this
        // one to reconcile, so everything goes now.
        if stopping() {
            dp.remove_all().await
        } else {
            removed
        }
    };
    // A failed removal left routes, as an unfinished one does.
    unfinished.1 = removed.is_err();
    match removed {
        Ok(n) => info!(log, "removed our routes"; "count" => n),
        Err(e) => warn!(log, "removing our routes failed"; "error" => %e),
    }
}

/// Sets the flag it holds when dropped while still armed: a dataplane
/// worker that did not get to the end of its removal, or whose removal
/// failed, left routes.
struct Unfinished(Arc<std::sync::atomic::AtomicBool>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
