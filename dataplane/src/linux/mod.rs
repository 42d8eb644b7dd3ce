//! The Linux kernel dataplane, programmed over rtnetlink.
//!
//! Every destination is one IPv6 route in the main table, tagged with the
//! routing protocol number [`RTPROT_DDM`] so that routes this router
//! installed can be told apart from everybody else's (and found again after
//! a crash). A destination with one nexthop is a plain route (`via ADDR dev
//! IF`); one with several is a single multipath route holding the whole ECMP
//! set. Either way a change is one `RTM_NEWROUTE` with
//! `NLM_F_CREATE | NLM_F_REPLACE`, and an empty set is one `RTM_DELROUTE`.
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
//! packet, tens of microseconds: see [`INLINE_REQUESTS`]). Requests are
//! built as their packet is filled, so a batch of any size holds one
//! packet's worth of requests.
//!
//! # State
//!
//! The dataplane keeps no copy of what it installed: the kernel has it, and
//! our routes are found again by dumping those of protocol [`RTPROT_DDM`]
//! (which `remove_stale` and `remove_all` do).
//!
//! # Tunnel endpoints
//!
//! The Linux kernel has no counterpart of illumos' encapsulation service
//! that the tunnel routes program there, so [`Dataplane::set_tunnels`] only
//! records and logs the effective set.

use std::collections::BTreeSet;
use std::io;
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

use socket::RouteSocket;

/// The routing protocol number (`proto` in `ip route`) every route of this
/// router carries.
///
/// 221 (0xdd) is not assigned in the kernel's `rtnetlink.h` nor in
/// iproute2's `rt_protos`.
pub const RTPROT_DDM: u8 = 0xdd;

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
    /// The netlink socket, shared with the blocking task using it.
    socket: Arc<Mutex<RouteSocket>>,
    /// The effective tunnel endpoint set, recorded only.
    tunnels: BTreeSet<TunnelEntry>,
}

/// Route changes few enough to write on the calling task: one send and
/// its acknowledgement, tens of microseconds in the kernel, where handing
/// the socket to the blocking pool and back costs more. One prefix took
/// 0.40 ms from the router's dataplane worker into the kernel and back
/// through the pool at the fabric benchmark's transit, 0.065 ms here
/// (medians of 12); larger batches still go to the pool, so that the
/// runtime's threads never wait on a long batch.
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
            socket: Arc::new(Mutex::new(socket)),
            tunnels: BTreeSet::new(),
        })
    }

    /// The tunnel endpoint set last given to [`Dataplane::set_tunnels`].
    pub fn tunnels(&self) -> &BTreeSet<TunnelEntry> {
        &self.tunnels
    }

    /// Run `f` with the socket: on tokio's blocking pool, or on this task
    /// when it asks for at most [`INLINE_REQUESTS`] route changes (inside
    /// `block_in_place` on a multi-threaded runtime, so that the thread's
    /// other tasks move on meanwhile). A panic of `f` is this batch's
    /// error either way, not the worker's end.
    async fn with_socket<T: Send + 'static>(
        &self,
        requests: usize,
        f: impl FnOnce(&mut RouteSocket) -> T + Send + 'static,
    ) -> Result<T, DataplaneError> {
        let socket = Arc::clone(&self.socket);
        let run = move || {
            let mut guard = socket.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        };
        let failed = |e: &dyn std::fmt::Display| {
            DataplaneError::Request(format!("netlink worker failed: {e}"))
        };
        if requests > INLINE_REQUESTS {
            return tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| failed(&e));
        }
        let caught =
            || std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        let done = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(caught)
            }
            _ => caught(),
        };
        done.map_err(|_| failed(&"panicked"))
    }

    /// Delete every route carrying [`RTPROT_DDM`]; how many went.
    async fn flush(&self) -> Result<usize, DataplaneError> {
        let (found, failures) = self
            .with_socket(usize::MAX, |s| {
                let routes = s.dump_ddm_routes()?;
                let failures = s.execute(routes.len(), |i| {
                    let (dst, table) = routes[i];
                    del_route(dst, table)
                })?;
                Ok::<_, io::Error>((routes, failures))
            })
            .await?
            .map_err(|e| DataplaneError::Request(format!("netlink: {e}")))?;
        let removed = found.len() - failures.len();
        if failures.is_empty() {
            Ok(removed)
        } else {
            let named: Vec<_> = failures
                .into_iter()
                .map(|(i, e)| (found[i].0.to_string(), e))
                .collect();
            Err(summary("delete", named, found.len()))
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
        let (updates, failures) = self
            .with_socket(updates.len(), move |s| {
                let failures =
                    s.execute(updates.len(), |i| route_request(&updates[i]));
                (updates, failures)
            })
            .await?;
        let failures = failures
            .map_err(|e| DataplaneError::Request(format!("netlink: {e}")))?;
        let total = updates.len();
        let mut named = Vec::new();
        for (i, e) in failures {
            let u = &updates[i];
            warn!(self.log, "route update failed";
                "destination" => %u.destination,
                "nexthops" => u.nexthops.len(),
                "error" => &e);
            named.push((u.destination.to_string(), e));
        }
        drop(updates);
        debug!(self.log, "applied route updates";
            "count" => total, "failed" => named.len());
        if named.is_empty() {
            Ok(())
        } else {
            Err(summary("update", named, total))
        }
    }

    async fn set_tunnels(
        &mut self,
        tunnels: BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        info!(self.log,
            "tunnel endpoints recorded (no kernel tunnel service on Linux)";
            "count" => tunnels.len(),
            "tunnels" => ?tunnels);
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

/// A summary error for `failures` (destination, reason) out of `total`.
fn summary(
    what: &str,
    failures: Vec<(String, String)>,
    total: usize,
) -> DataplaneError {
    let shown: Vec<String> = failures
        .iter()
        .take(ERRORS_SHOWN)
        .map(|(dst, e)| format!("{dst}: {e}"))
        .collect();
    let more = failures.len().saturating_sub(ERRORS_SHOWN);
    let tail =
        if more > 0 { format!("; and {more} more") } else { String::new() };
    DataplaneError::Request(format!(
        "{} of {total} route {what}s failed: {}{tail}",
        failures.len(),
        shown.join("; "),
    ))
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

/// The one request that makes the kernel match `update`.
fn route_request(update: &RouteUpdate) -> NetlinkMessage<RouteNetlinkMessage> {
    let dst = update.destination;
    if update.nexthops.is_empty() {
        return del_route(dst, RT_TABLE_MAIN);
    }
    let mut message = RouteMessage::default();
    message.header = route_header(dst, RT_TABLE_MAIN);
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet6(dst.prefix())));
    if let (1, Some(nh)) = (update.nexthops.len(), update.nexthops.first()) {
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(nh.addr)));
        message.attributes.push(RouteAttribute::Oif(nh.ifindex));
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
