//! The Linux kernel dataplane, programmed over rtnetlink.
//!
//! Every destination is one IPv6 route in the main table, tagged with the
//! routing protocol number [`RTPROT_DDM`] so that routes this router
//! installed can be told apart from everybody else's (and found again after
//! a crash). A destination with one nexthop is, while the daemon's link
//! watcher runs (below), a route through a kernel
//! nexthop object of that gateway and interface (`nhid ID`; `ip nexthop`
//! lists the objects, tagged with our protocol too; with the kernel's
//! default `net.ipv4.nexthop_compat_mode=1`, `ip route` still shows each
//! route's gateway and interface), made the first time a route needs it
//! and shared by every route through it; one with several is a single
//! multipath route holding the whole ECMP set, at a metric of its own
//! ([`ROUTE_METRIC`]), so that it never replaces anybody else's route to
//! the same prefix. Either way a change is one
//! `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_REPLACE`, and an empty set is
//! one `RTM_DELROUTE`; making an object, and looking the objects up after
//! a link went down, cost one request each (below).
//!
//! # Nexthop objects
//!
//! Through a shared object the kernel sets up no nexthop per route, which
//! was most of the cost of an add: the fabric benchmark's kernel floor
//! filled two tables with 100,000 routes each in 0.34x the time through one
//! object, and the transit's share of the announce fell from 0.52-0.54 to
//! 0.40-0.44 CPU seconds.
//!
//! The kernel deletes an object, with every route through it, when its
//! interface goes down or loses carrier, and says nothing of it. (A plain
//! route is deleted too when its interface goes down, but only marked
//! linkdown on carrier loss, and comes back with the carrier.) So objects
//! are used only while the daemon's link watcher runs
//! ([`crate::netlink::links_watched`]): each carrier loss then ends the
//! peer on that link at once, the router withdraws the routes through it,
//! and sends them again when the peer is back. Without a watcher (it could
//! not start, or it ended) routes name their gateways, as before objects:
//! when it ends, the next batch first sends every route of ours through an
//! object again naming its gateway (dumping again after each round, since
//! a dump of a changing table can pass over routes; see
//! `Kernel::in_rounds`).
//!
//! The first batch after the link watcher saw a link go down or away
//! ([`crate::netlink::links_lost`] changed) looks up every object it
//! knows (one request each): an object the kernel dropped, or one that is
//! no longer the one we made (protocol, gateway, interface), is made again
//! under a new id when next needed. Other batches use the objects they
//! know without a lookup. A route refused with `EINVAL` through an object
//! that turns out to be gone (a link went down as the batch went in) is
//! sent once more through a new one. A route refused for want of memory
//! or buffer space (`ENOBUFS`, `ENOMEM`, `EAGAIN`, as on illumos) is
//! handed back to the router's worker, which applies it again after its
//! back-off (1 s, doubling to 30 s); any other refusal stands. Ids are ours
//! in a range (our protocol number in the top byte, wrapping within it),
//! skipping any somebody else holds; `remove_stale` and `remove_all` delete the objects of ours in
//! that range after our routes (deleting an object deletes every route
//! through it, whoever made the route). An object stays until then, or
//! until the kernel drops it with its link: one per (gateway, interface)
//! used while the link stays up, and one more each time it was dropped. A
//! kernel without objects (before Linux 5.3) refuses the first as unknown;
//! every route then names its gateway. An object that cannot be made (its
//! interface down) is asked for again by the next batch that needs it, and
//! its routes name their gateway meanwhile. ECMP sets are not made objects
//! (group objects): the kernel shrinks a group when a member goes, and a
//! kept group would come back short.
//!
//! # Speed
//!
//! Batches can hold 100,000 destinations, so requests are not sent one at a
//! time. Many requests are packed into one `sendmsg` on a netlink socket;
//! only the last request of each packet asks for an acknowledgement. The
//! kernel handles a packet's requests in order and answers a failed request
//! with an error whether or not it asked for an acknowledgement, so once the
//! last acknowledgement arrives every failure of the packet has been read.
//! That costs two system calls per packet instead of two per route. The
//! socket calls block (the kernel does the work inside `sendmsg`), so a
//! batch runs on tokio's blocking pool, unless it is a few routes (one
//! packet, tens of microseconds: see [`INLINE_REQUESTS`]) and nothing slow
//! is pending ([`Kernel::quick`]). Requests are
//! built as their packet is filled, so a batch of any size holds one
//! packet's worth of requests.
//!
//! # State
//!
//! The dataplane keeps no copy of what it installed: the kernel has it, and
//! our routes and nexthop objects are found again by dumping those of
//! protocol [`RTPROT_DDM`] (which `remove_stale` and `remove_all` do,
//! dumping again after each deletion until only routes the kernel refused
//! to delete are left, or reporting what may be: see
//! `Kernel::in_rounds`). It
//! keeps only the id of each nexthop object it made.
//!
//! # Tunnel endpoints
//!
//! The Linux kernel has no counterpart of illumos' encapsulation service
//! that the tunnel routes program there, so [`Dataplane::set_tunnels`] only
//! records and logs the effective set.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use netlink_packet_core::{
    NetlinkMessage, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use oxnet::Ipv6Net;
use slog::{debug, info, o, warn, Logger};

use crate::{Dataplane, DataplaneError, RouteUpdate, TunnelEntry};

mod socket;

pub(crate) use socket::set_rcvbuf;
use socket::{DdmRoute, Refused, RouteSocket};

/// The routing protocol number (`proto` in `ip route`) every route of this
/// router carries.
///
/// 221 (0xdd) is not assigned in the kernel's `rtnetlink.h` nor in
/// iproute2's `rt_protos`.
pub const RTPROT_DDM: u8 = 0xdd;

/// The metric (`metric` in `ip route`, the kernel's route priority) every
/// route of this router carries.
///
/// The kernel's replace matches a route by destination and metric, not by
/// its owner: at the metric it gives a route added without one (1024, as
/// `ip route add` and router advertisements do), an update of ours would
/// replace somebody else's route to the same prefix, and our withdrawal
/// would then leave the prefix with no route at all. At a metric of its
/// own, ours sits beside theirs and is never theirs: one below 1024, so
/// ours carries the traffic over theirs, and above the 256 of the
/// kernel's own routes to connected prefixes, which stay first.
pub const ROUTE_METRIC: u32 = 1023;

/// The main routing table.
const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// `RT_TABLE_COMPAT`: the header's table when the real one needs 32 bits.
const RT_TABLE_COMPAT: u8 = 252;

/// How many failed destinations an error message names.
const ERRORS_SHOWN: usize = 5;

/// The Linux kernel dataplane.
///
/// Create it inside the network namespace it should program: the netlink
/// socket is opened by [`LinuxDataplane::new`] and stays in that namespace.
#[derive(Debug)]
pub struct LinuxDataplane {
    /// Where decisions and failures are logged.
    log: Logger,
    /// The netlink socket and the nexthop objects made through it, shared
    /// with the blocking task using them.
    socket: Arc<Mutex<Kernel>>,
    /// The effective tunnel endpoint set, recorded only.
    tunnels: BTreeSet<TunnelEntry>,
}

/// Route changes few enough to write on the calling task: one send and
/// its acknowledgement, tens of microseconds in the kernel, where handing
/// the socket to the blocking pool and back costs more. One prefix took
/// 0.40 ms from the router's dataplane worker into the kernel and back
/// through the pool at the fabric benchmark's transit, 0.065 ms here
/// (medians of 12); larger batches still go to the pool, so that the
/// runtime's threads never wait on a long batch. Not inside
/// `block_in_place` either: that hands the runtime thread's work to
/// another thread, waking one (at the benchmark's transit and receiver,
/// after an idle pause, a pool thread that then took a CPU from the
/// daemons on the prefix's way), for a call shorter than the hand-over.
const INLINE_REQUESTS: usize = 8;

impl LinuxDataplane {
    /// Open the netlink socket in the calling thread's network namespace.
    ///
    /// Needs `CAP_NET_ADMIN` only when routes are changed, not here.
    pub fn new(log: Logger) -> Result<Self, DataplaneError> {
        let socket = RouteSocket::open().map_err(|e| {
            DataplaneError::Unavailable(format!("netlink socket: {e}"))
        })?;
        let log = log.new(o!("component" => "dataplane", "unit" => "linux"));
        debug!(log, "netlink socket open"; "batch" => socket.batch);
        Ok(Self {
            log,
            socket: Arc::new(Mutex::new(Kernel {
                socket,
                nexthops: Nexthops::default(),
                #[cfg(test)]
                panic_next: false,
            })),
            tunnels: BTreeSet::new(),
        })
    }

    /// Whether single-nexthop routes go through kernel nexthop objects:
    /// by default only while a link watcher runs in this process; `Some`
    /// decides it (tests).
    pub fn set_nexthop_objects(&mut self, on: Option<bool>) {
        let mut kernel = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        kernel.nexthops.set = on;
    }

    /// The tunnel endpoint set last given to [`Dataplane::set_tunnels`].
    pub fn tunnels(&self) -> &BTreeSet<TunnelEntry> {
        &self.tunnels
    }

    /// Run `f` with the socket: on tokio's blocking pool, or on this task
    /// when it asks for at most [`INLINE_REQUESTS`] route changes and the
    /// kernel side has no slow work pending ([`Kernel::quick`]), which
    /// `f` is then given: whether routes go through objects, as found, so
    /// that the batch does the work found quick even if the link watcher
    /// ends in between. A panic of `f` is this batch's error either way,
    /// not the worker's end.
    async fn with_socket<T: Send + 'static>(
        &self,
        requests: usize,
        f: impl FnOnce(&mut Kernel, Option<bool>) -> T + Send + 'static,
    ) -> Result<T, DataplaneError> {
        let failed = |e: &dyn std::fmt::Display| {
            DataplaneError::Request(format!("netlink worker failed: {e}"))
        };
        if requests <= INLINE_REQUESTS {
            let mut guard =
                self.socket.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(on) = guard.quick() {
                return std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    || f(&mut guard, Some(on)),
                ))
                .map_err(|_| failed(&"panicked"));
            }
        }
        let socket = Arc::clone(&self.socket);
        tokio::task::spawn_blocking(move || {
            let mut guard = socket.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard, None)
        })
        .await
        .map_err(|e| failed(&e))
    }

    /// Delete every route carrying [`RTPROT_DDM`], then every nexthop
    /// object of ours; how many routes went.
    async fn flush(&self) -> Result<usize, DataplaneError> {
        let (deleted, (objects, tried)) = self
            .with_socket(usize::MAX, |k, _| {
                let deleted = k.delete_ddm_routes()?;
                let objects = k.remove_nexthops()?;
                Ok::<_, io::Error>((deleted, objects))
            })
            .await?
            .map_err(|e| DataplaneError::Request(format!("netlink: {e}")))?;
        let removed = deleted.sent - deleted.refused.len();
        let mut named: Vec<_> = deleted
            .refused
            .iter()
            .map(|(d, reason)| (d.dst.to_string(), reason.clone()))
            .collect();
        named.extend(objects);
        let failed = (!named.is_empty())
            .then(|| summary("delete", named, deleted.sent + tried));
        let message = match (failed, deleted.short()) {
            (None, None) => return Ok(removed),
            (Some(failed), None) => failed,
            (None, Some(why)) => {
                format!("{removed} routes deleted, and then: {why}")
            }
            (Some(failed), Some(why)) => format!("{failed}; and then: {why}"),
        };
        Err(DataplaneError::Request(message))
    }
}

/// What [`Kernel::in_rounds`] did.
#[derive(Debug)]
struct Rounds<T> {
    /// How many requests were sent.
    sent: usize,
    /// Those the kernel refused, with its reason.
    refused: Vec<(T, String)>,
    /// How many the last dump, after the rounds, still picked.
    left: usize,
    /// A dump or a send that failed, and its round (from 0).
    failed: Option<(usize, io::Error)>,
}

impl<T> Rounds<T> {
    /// Why routes may be left besides those refused, if they may.
    fn short(&self) -> Option<String> {
        match &self.failed {
            Some((round, e)) => {
                Some(format!("round {} failed: {e}", round + 1))
            }
            None => (self.left > 0).then(|| {
                format!(
                    "{} of ours still found after {FLUSH_DUMPS} rounds",
                    self.left
                )
            }),
        }
    }
}

#[async_trait]
impl Dataplane for LinuxDataplane {
    fn name(&self) -> &'static str {
        "linux"
    }

    async fn remove_stale(&mut self) -> Result<usize, DataplaneError> {
        let n = self.flush().await?;
        if n > 0 {
            info!(self.log, "removed stale routes"; "count" => n);
        }
        Ok(n)
    }

    async fn apply(
        &mut self,
        updates: Vec<RouteUpdate>,
    ) -> Result<(), DataplaneError> {
        if updates.is_empty() {
            return Ok(());
        }
        let log = self.log.clone();
        // Shared with the batch, so that they come back whatever becomes
        // of it: a batch that panicked (or whose task failed) is tried
        // again, as one whose socket failed, not taken as refused.
        let shared = Arc::new(updates);
        let batch = Arc::clone(&shared);
        let done = self
            .with_socket(shared.len(), move |k, decided| {
                k.apply(&batch, decided, &log)
            })
            .await;
        let updates = Arc::try_unwrap(shared).unwrap_or_else(|u| (*u).clone());
        let done = done
            .map_err(|e| e.to_string())
            .and_then(|f| f.map_err(|e| format!("netlink: {e}")));
        let failures = match done {
            Ok(f) => f,
            Err(error) => {
                return Err(DataplaneError::Incomplete { error, updates })
            }
        };
        refusals(updates, failures, &self.log)
    }

    async fn set_tunnels(
        &mut self,
        tunnels: BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        // Counts, not the set: a peer may offer a quarter of a million
        // endpoints, and each change would log them all.
        info!(self.log,
            "tunnel endpoints recorded (no kernel tunnel service on Linux)";
            "count" => tunnels.len(),
            "added" => tunnels.difference(&self.tunnels).count(),
            "removed" => self.tunnels.difference(&tunnels).count());
        self.tunnels = tunnels;
        Ok(())
    }

    async fn remove_all(&mut self) -> Result<usize, DataplaneError> {
        let result = self.flush().await;
        self.tunnels.clear();
        if let Ok(n) = result {
            info!(self.log, "removed all routes"; "count" => n);
        }
        result
    }
}

/// The most rounds of [`Kernel::in_rounds`].
const FLUSH_DUMPS: usize = 8;

/// The kernel side of the dataplane: the socket, and the nexthop objects
/// made through it.
#[derive(Debug)]
struct Kernel {
    socket: RouteSocket,
    nexthops: Nexthops,
    /// Tests: the next batch panics.
    #[cfg(test)]
    panic_next: bool,
}

/// The first id tried for a nexthop object of ours: ids are the kernel's
/// namespace's, shared with anyone else making objects (`ip nexthop`,
/// FRR), so ours start high, at our protocol number in the top byte, and
/// an id someone holds is skipped (`EEXIST`).
const NEXTHOP_ID_BASE: u32 = (RTPROT_DDM as u32) << 24;

/// The ids our objects take (wrapping around): those with our protocol
/// number in the top byte.
const NEXTHOP_IDS: std::ops::Range<u32> =
    NEXTHOP_ID_BASE..NEXTHOP_ID_BASE + (1 << 24);

/// Ids tried for one object before it is given up (the route then goes
/// in with its gateway and interface, as without objects).
const NEXTHOP_ID_TRIES: usize = 16;

/// The nexthop objects this dataplane made, one per (gateway, interface)
/// of a destination with one nexthop.
#[derive(Debug)]
struct Nexthops {
    /// Whether routes go through objects: `None` while a link watcher runs
    /// in this process ([`crate::netlink::links_watched`]: the kernel
    /// drops an object with its routes on carrier loss, which the router
    /// then sees and answers), `Some` when set ([`LinuxDataplane::set_nexthop_objects`]).
    set: Option<bool>,
    /// False once the kernel refused an object as an unknown request
    /// (before Linux 5.3): every route then names its gateway.
    supported: bool,
    /// The object of each (gateway, interface index).
    ids: HashMap<(Ipv6Addr, u32), u32>,
    /// The next id to try.
    next: u32,
    /// [`crate::netlink::links_lost`] when the objects in `ids` were last
    /// looked up: until it changes, the kernel dropped none of them with
    /// its link, and they are used without a lookup.
    checked_at: u64,
}

impl Default for Nexthops {
    fn default() -> Self {
        Self {
            set: None,
            supported: true,
            ids: HashMap::new(),
            next: NEXTHOP_ID_BASE,
            checked_at: crate::netlink::links_lost(),
        }
    }
}

/// The (gateway, interface) of a destination with one nexthop.
fn single(update: &RouteUpdate) -> Option<(Ipv6Addr, u32)> {
    match (update.nexthops.len(), update.nexthops.first()) {
        (1, Some(nh)) => Some((nh.addr, nh.ifindex)),
        _ => None,
    }
}

impl Nexthops {
    fn enabled(&self) -> bool {
        self.supported && self.set.unwrap_or_else(crate::netlink::links_watched)
    }

    /// The object `update`'s route goes through, if it has one.
    fn object_of(&self, update: &RouteUpdate) -> Option<u32> {
        single(update).and_then(|key| self.ids.get(&key).copied())
    }

    /// If a link went down (or its events may have been lost) since the
    /// objects in `ids` were last looked up, the count of such losses now.
    fn stale(&self) -> Option<u64> {
        let lost = crate::netlink::links_lost();
        (lost != self.checked_at).then_some(lost)
    }

    /// Past `next`, within our range.
    fn advance(&mut self) {
        self.next = Some(self.next + 1)
            .filter(|id| NEXTHOP_IDS.contains(id))
            .unwrap_or(NEXTHOP_IDS.start);
    }
}

impl Kernel {
    /// Whether a batch of a few route changes, run now, is quick enough
    /// for the runtime thread: it will not leave nexthop objects (which
    /// dumps and sends again every route of ours, after the link watcher
    /// ended), nor look them all up again. If so, whether its routes go
    /// through objects.
    fn quick(&self) -> Option<bool> {
        let on = self.nexthops.enabled();
        // Nor will it look every known object up again (a link went down
        // since the last look): one netlink round trip each.
        let recheck = on
            && !self.nexthops.ids.is_empty()
            && self.nexthops.stale().is_some();
        (!recheck && (on || self.nexthops.ids.is_empty())).then_some(on)
    }

    /// Program `updates`; the requests the kernel refused.
    ///
    /// A destination with one nexthop goes through the nexthop object of
    /// its (gateway, interface) (see the module's docs): the objects are
    /// looked up after a link went down, made when missing, and a route
    /// refused through an object found gone is sent once more. Whether
    /// routes go through objects is `decided` (by [`Kernel::quick`]), or
    /// decided here, once per batch.
    fn apply(
        &mut self,
        updates: &[RouteUpdate],
        decided: Option<bool>,
        log: &Logger,
    ) -> io::Result<Vec<Refused>> {
        #[cfg(test)]
        if std::mem::take(&mut self.panic_next) {
            panic!("a batch made to panic");
        }
        let on = decided.unwrap_or_else(|| self.nexthops.enabled());
        if !on && !self.nexthops.ids.is_empty() {
            self.leave_nexthops(log)?;
        }
        if on {
            self.prepare_nexthops(updates.iter(), log)?;
        }
        let nexthops = &self.nexthops;
        let object_of = |u: &RouteUpdate| on.then(|| nexthops.object_of(u))?;
        let mut refused = self.socket.execute(updates.len(), |i| {
            route_request(&updates[i], object_of(&updates[i]))
        })?;
        let (suspect, mut kept): (Vec<_>, Vec<_>) =
            refused.drain(..).partition(|r| {
                r.errno == libc::EINVAL
                    && object_of(&updates[r.index]).is_some()
            });
        // Each object looked up once, however many of its routes were
        // refused: whether it was gone.
        let mut gone = HashMap::new();
        for r in &suspect {
            let Some(key) = single(&updates[r.index]) else { continue };
            if let std::collections::hash_map::Entry::Vacant(v) =
                gone.entry(key)
            {
                v.insert(self.forget_if_gone(key)?);
            }
        }
        let (retry, stand): (Vec<_>, Vec<_>) =
            suspect.into_iter().partition(|r| {
                single(&updates[r.index])
                    .is_some_and(|k| gone.get(&k) == Some(&true))
            });
        kept.extend(stand);
        if !retry.is_empty() {
            debug!(log, "routes named nexthop objects that are gone; again";
                "count" => retry.len());
            self.prepare_nexthops(
                retry.iter().map(|r| &updates[r.index]),
                log,
            )?;
            let nexthops = &self.nexthops;
            let again = self.socket.execute(retry.len(), |j| {
                let u = &updates[retry[j].index];
                route_request(u, nexthops.object_of(u))
            })?;
            kept.extend(
                again
                    .into_iter()
                    .map(|r| Refused { index: retry[r.index].index, ..r }),
            );
        }
        kept.sort_by_key(|r| r.index);
        Ok(kept)
    }

    /// Rounds of: dump our routes, turn those `pick` wants into requests
    /// (`request`), skipping any the kernel refused in an earlier round
    /// (by `key`), and send them; until a whole dump picks none, for at
    /// most [`FLUSH_DUMPS`] rounds and a last dump to check.
    ///
    /// A dump taken while the table changes can pass over routes: the
    /// kernel resumes a walk of a changed IPv6 table from its root,
    /// skipping as many routes as it had given, so routes removed behind
    /// the walk hide as many ahead of it (and a few routes left of ours
    /// hide often: a namespace test with another program's routes coming
    /// and going found none to pick in a dump while dozens were left in
    /// most runs). So a dump is taken as whole only if it accounts for as
    /// many routes of ours as any before it: those it shows, and those
    /// the requests sent since removed (`removes`: each request not
    /// refused removes its route, as a deletion does; otherwise requests
    /// keep their routes ours). After the rounds, `left` is what the last
    /// dump picked, or, if it was not whole, how many it may have missed.
    fn in_rounds<T>(
        &mut self,
        mut pick: impl FnMut(DdmRoute) -> Option<T>,
        key: impl Fn(&T) -> (Ipv6Net, u32),
        request: impl Fn(&T) -> NetlinkMessage<RouteNetlinkMessage>,
        removes: bool,
    ) -> Rounds<T> {
        let mut r =
            Rounds { sent: 0, refused: Vec::new(), left: 0, failed: None };
        // What the kernel refused, not asked again.
        let mut refused: HashSet<(Ipv6Net, u32)> = HashSet::new();
        // Routes of ours removed so far, and the most any dump accounted
        // for.
        let (mut removed, mut most) = (0usize, 0usize);
        for round in 0..=FLUSH_DUMPS {
            let all = match self.socket.dump_ddm_routes() {
                Ok(all) => all,
                Err(e) => {
                    r.failed = Some((round, e));
                    break;
                }
            };
            let accounted = all.len() + removed;
            let missed = most.saturating_sub(accounted);
            most = most.max(accounted);
            let batch: Vec<T> = all
                .into_iter()
                .filter_map(&mut pick)
                .filter(|t| !refused.contains(&key(t)))
                .collect();
            if (batch.is_empty() && missed == 0) || round == FLUSH_DUMPS {
                r.left = batch.len().max(missed);
                break;
            }
            if batch.is_empty() {
                continue;
            }
            match self.socket.execute(batch.len(), |i| request(&batch[i])) {
                Ok(mut refusals) => {
                    r.sent += batch.len();
                    if removes {
                        removed += batch.len() - refusals.len();
                    }
                    refusals.sort_by_key(|x| x.index);
                    let mut refusals = refusals.into_iter().peekable();
                    for (i, t) in batch.into_iter().enumerate() {
                        if let Some(x) = refusals.next_if(|x| x.index == i) {
                            refused.insert(key(&t));
                            r.refused.push((t, x.reason));
                        }
                    }
                }
                Err(e) => {
                    r.failed = Some((round, e));
                    break;
                }
            }
        }
        r
    }

    /// Delete every route of ours, in rounds ([`Kernel::in_rounds`]). A
    /// failure of the first round is the error; of a later one, it is
    /// reported with what was done ([`Rounds::short`]).
    fn delete_ddm_routes(&mut self) -> io::Result<Rounds<DdmRoute>> {
        let r = self.in_rounds(
            Some,
            |d| (d.dst, d.table),
            |d| del_route(d.dst, d.table),
            true,
        );
        if let Some((0, e)) = r.failed {
            return Err(e);
        }
        Ok(r)
    }

    /// Objects are off (the link watcher ended): send every route of ours
    /// that goes through one of them again naming its gateway, which the
    /// kernel keeps through a carrier loss, in rounds
    /// ([`Kernel::in_rounds`]), and forget the objects (they go at
    /// `remove_all`). If a round fails, or routes still go through them
    /// after the rounds, the objects are kept known, so that the next
    /// batch tries again.
    fn leave_nexthops(&mut self, log: &Logger) -> io::Result<()> {
        let keys: HashMap<u32, (Ipv6Addr, u32)> =
            self.nexthops.ids.drain().map(|(key, id)| (id, key)).collect();
        let r = self.in_rounds(
            |d| {
                let (addr, ifindex) = *keys.get(&d.object?)?;
                (d.table == RT_TABLE_MAIN).then(|| RouteUpdate {
                    destination: d.dst,
                    nexthops: [crate::Nexthop { addr, ifindex }].into(),
                })
            },
            |u| (u.destination, RT_TABLE_MAIN),
            |u| route_request(u, None),
            false,
        );
        if r.failed.is_some() || r.left > 0 {
            self.nexthops.ids.extend(keys.iter().map(|(id, key)| (*key, *id)));
        }
        info!(log, "no link watcher: routes name their gateways again";
            "routes" => r.sent, "refused" => r.refused.len());
        if let Some((_, e)) = r.failed {
            return Err(e);
        }
        if r.left > 0 {
            warn!(log, "routes still through nexthop objects; \
                tried again at the next batch";
                "routes" => r.left, "rounds" => FLUSH_DUMPS);
        }
        Ok(())
    }

    /// Look up the object known for `key`; if the kernel no longer has it
    /// as we made it, forget it. Whether it was forgotten.
    fn forget_if_gone(&mut self, key: (Ipv6Addr, u32)) -> io::Result<bool> {
        let Some(&id) = self.nexthops.ids.get(&key) else {
            return Ok(false);
        };
        let ours = self.socket.get_nexthop(id)?.is_some_and(|o| {
            o.protocol == RTPROT_DDM
                && o.gateway == Some(key.0)
                && o.oif == Some(key.1)
        });
        if !ours {
            self.nexthops.ids.remove(&key);
        }
        Ok(!ours)
    }

    /// Make sure each destination with one nexthop among `updates` has the
    /// object of its (gateway, interface): every known one is looked up if
    /// a link went down since the last look, a missing one is made. One
    /// that cannot be made (its interface down, no free id) is not: its
    /// routes name their gateway, as without objects, and the next batch
    /// tries again.
    fn prepare_nexthops<'a>(
        &mut self,
        updates: impl Iterator<Item = &'a RouteUpdate>,
        log: &Logger,
    ) -> io::Result<()> {
        // A link went down since the last look: the kernel may have
        // dropped objects with it, so every known one is looked up first.
        if let Some(lost) = self.nexthops.stale() {
            let known: Vec<_> = self.nexthops.ids.keys().copied().collect();
            for key in known {
                self.forget_if_gone(key)?;
            }
            self.nexthops.checked_at = lost;
        }
        // Routes of a batch mostly share their nexthop: a key like the
        // last one is passed over without a lookup, and one that could not
        // be made is not tried twice in a batch.
        let (mut last, mut failed) = (None, HashSet::new());
        for key in updates.filter_map(single) {
            if last.replace(key) == Some(key) {
                continue;
            }
            if !self.nexthops.supported {
                return Ok(());
            }
            if !self.nexthops.ids.contains_key(&key)
                && !failed.contains(&key)
                && !self.make_nexthop(key, log)?
            {
                failed.insert(key);
            }
        }
        Ok(())
    }

    /// Make the object of `key` under the first free id of ours; whether
    /// it was made.
    fn make_nexthop(
        &mut self,
        key: (Ipv6Addr, u32),
        log: &Logger,
    ) -> io::Result<bool> {
        for _ in 0..NEXTHOP_ID_TRIES {
            let id = self.nexthops.next;
            match self.socket.nexthop(id, Some(key))? {
                None => {
                    self.nexthops.advance();
                    self.nexthops.ids.insert(key, id);
                    return Ok(true);
                }
                // Somebody's: the next.
                Some((libc::EEXIST, _)) => self.nexthops.advance(),
                Some((libc::EOPNOTSUPP, reason)) => {
                    warn!(log, "no nexthop objects in this kernel; \
                        routes name their gateways";
                        "error" => reason);
                    self.nexthops.supported = false;
                    return Ok(false);
                }
                Some((_, reason)) => {
                    debug!(log, "nexthop object not made";
                        "gateway" => %key.0, "ifindex" => key.1,
                        "error" => reason);
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    /// Delete every nexthop object of ours (protocol and id range; those
    /// of an earlier run too): (object, reason) of each the kernel refused
    /// to delete, and how many there were. Deleting an object deletes the
    /// routes through it, so our routes go first.
    fn remove_nexthops(
        &mut self,
    ) -> io::Result<(Vec<(String, String)>, usize)> {
        if !self.nexthops.supported {
            self.nexthops.ids.clear();
            return Ok((Vec::new(), 0));
        }
        let found = match self.socket.dump_ddm_nexthops() {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.nexthops.supported = false;
                Vec::new()
            }
            found => found?,
        };
        self.nexthops.ids.clear();
        let found: Vec<u32> =
            found.into_iter().filter(|id| NEXTHOP_IDS.contains(id)).collect();
        let mut refused = Vec::new();
        for &id in &found {
            match self.socket.nexthop(id, None)? {
                None | Some((libc::ENOENT, _)) => {}
                Some((_, reason)) => {
                    refused.push((format!("nexthop object {id}"), reason))
                }
            }
        }
        Ok((refused, found.len()))
    }
}

/// What became of a batch of `updates` the kernel refused `failures` of:
/// each refusal logged; those refused for want of memory or buffer space
/// ([`crate::TRANSIENT_ERRNOS`]) handed back to apply again
/// ([`DataplaneError::Incomplete`], which the router's worker retries
/// after a back-off), the rest reported as failed for good.
fn refusals(
    updates: Vec<RouteUpdate>,
    failures: Vec<Refused>,
    log: &Logger,
) -> Result<(), DataplaneError> {
    let total = updates.len();
    let mut named = Vec::new();
    let mut again = BTreeSet::new();
    for Refused { index, errno, reason: e } in failures {
        let u = &updates[index];
        warn!(log, "route update failed";
            "destination" => %u.destination,
            "nexthops" => u.nexthops.len(),
            "error" => &e);
        named.push((u.destination.to_string(), e));
        if crate::TRANSIENT_ERRNOS.contains(&errno) {
            again.insert(index);
        }
    }
    debug!(log, "applied route updates";
        "count" => total, "failed" => named.len());
    if named.is_empty() {
        return Ok(());
    }
    let error = summary("update", named, total);
    if again.is_empty() {
        return Err(DataplaneError::Request(error));
    }
    let updates = updates
        .into_iter()
        .enumerate()
        .filter_map(|(i, u)| again.contains(&i).then_some(u))
        .collect();
    Err(DataplaneError::Incomplete { error, updates })
}

/// A summary error for `failures` (destination, reason) out of `total`.
fn summary(
    what: &str,
    failures: Vec<(String, String)>,
    total: usize,
) -> String {
    let shown: Vec<String> = failures
        .iter()
        .take(ERRORS_SHOWN)
        .map(|(dst, e)| format!("{dst}: {e}"))
        .collect();
    let more = failures.len().saturating_sub(ERRORS_SHOWN);
    let tail =
        if more > 0 { format!("; and {more} more") } else { String::new() };
    format!(
        "{} of {total} route {what}s failed: {}{tail}",
        failures.len(),
        shown.join("; "),
    )
}

/// The header every route message of this router carries.
fn route_header(dst: Ipv6Net, table: u32) -> RouteHeader {
    RouteHeader {
        address_family: AddressFamily::Inet6,
        destination_prefix_length: dst.width(),
        table: u8::try_from(table).unwrap_or(RT_TABLE_COMPAT),
        protocol: RouteProtocol::from(RTPROT_DDM),
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..Default::default()
    }
}

/// The one request that makes the kernel match `update`: through nexthop
/// object `object` when it has one.
fn route_request(
    update: &RouteUpdate,
    object: Option<u32>,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let dst = update.destination;
    if update.nexthops.is_empty() {
        return del_route(dst, RT_TABLE_MAIN);
    }
    let mut message = RouteMessage::default();
    message.header = route_header(dst, RT_TABLE_MAIN);
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet6(dst.prefix())));
    message.attributes.push(RouteAttribute::Priority(ROUTE_METRIC));
    if let Some(id) = object {
        message.attributes.push(RouteAttribute::NhId(id));
    } else if let Some((gateway, ifindex)) = single(update) {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(gateway)));
        message.attributes.push(RouteAttribute::Oif(ifindex));
    } else {
        let hops = update
            .nexthops
            .iter()
            .map(|nh| {
                let mut hop = RouteNextHop::default();
                hop.interface_index = nh.ifindex;
                hop.attributes =
                    vec![RouteAttribute::Gateway(RouteAddress::Inet6(nh.addr))];
                hop
            })
            .collect();
        message.attributes.push(RouteAttribute::MultiPath(hops));
    }
    let mut request =
        NetlinkMessage::from(RouteNetlinkMessage::NewRoute(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE;
    request
}

/// A request deleting our route to `dst` (every nexthop of it).
fn del_route(dst: Ipv6Net, table: u32) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = RouteMessage::default();
    message.header = route_header(dst, table);
    message.header.scope = RouteScope::NoWhere;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet6(dst.prefix())));
    if table > u32::from(u8::MAX) {
        message.attributes.push(RouteAttribute::Table(table));
    }
    let mut request =
        NetlinkMessage::from(RouteNetlinkMessage::DelRoute(message));
    request.header.flags = NLM_F_REQUEST;
    request
}

#[cfg(test)]
mod tests;
