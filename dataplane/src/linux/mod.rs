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
//! socket calls block (the kernel does the work inside `sendmsg`), so they
//! run on tokio's blocking pool. Requests are built as their packet is
//! filled, so a batch of any size holds one packet's worth of requests.
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

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use netlink_packet_core::{
    Emitable, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, Parseable, NLMSG_ALIGNTO,
    NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use oxnet::Ipv6Net;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use slog::{debug, info, o, warn, Logger};

use crate::{Dataplane, DataplaneError, RouteUpdate, TunnelEntry};

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

/// Upper bound on the requests packed into one `sendmsg`.
const MAX_BATCH_MESSAGES: usize = 1024;

/// Upper bound on the bytes packed into one `sendmsg` (well under the
/// default socket send buffer, which bounds a netlink datagram).
const MAX_BATCH_BYTES: usize = 96 * 1024;

/// Receive buffer asked for, so that a whole packet's worth of errors fits.
const RECV_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// What one queued error costs in the receive buffer (the kernel accounts
/// the socket buffer's full size, not the 36 bytes of the message).
const RECV_COST_PER_ERROR: usize = 2048;

/// How long to wait for the kernel's answer before giving up.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// How many failed destinations an error message names.
const ERRORS_SHOWN: usize = 5;

/// `NLMSGERR_ATTR_MSG`: the extended-ack attribute holding a text (not
/// among netlink-packet-core's constants).
const NLMSGERR_ATTR_MSG: u16 = 1;

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

    /// Run `f` with the socket on tokio's blocking pool.
    async fn with_socket<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut RouteSocket) -> T + Send + 'static,
    ) -> Result<T, DataplaneError> {
        let socket = Arc::clone(&self.socket);
        tokio::task::spawn_blocking(move || {
            let mut guard = socket.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| {
            DataplaneError::Request(format!("netlink worker failed: {e}"))
        })
    }

    /// Delete every route carrying [`RTPROT_DDM`]; how many went.
    async fn flush(&self) -> Result<usize, DataplaneError> {
        let (found, failures) = self
            .with_socket(|s| {
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
            .with_socket(move |s| {
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

/// A blocking rtnetlink socket that sends requests in packed batches.
#[derive(Debug)]
struct RouteSocket {
    /// The socket, connected to the kernel.
    socket: Socket,
    /// The next sequence number.
    seq: u32,
    /// Requests per `sendmsg`, sized so that their errors fit the receive
    /// buffer the kernel granted.
    batch: usize,
    /// Outgoing packet, reused.
    send_buf: Vec<u8>,
    /// Incoming datagram, reused.
    recv_buf: Vec<u8>,
}

impl RouteSocket {
    /// Open and configure the socket.
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors without the failed request echoed back, but with the
        // kernel's explanation.
        socket.set_cap_ack(true)?;
        socket.set_ext_ack(true)?;
        // Dumps filtered by the kernel on protocol.
        socket.set_netlink_get_strict_chk(true)?;
        set_buffers(&socket)?;
        let granted = socket.get_rx_buf_sz()?;
        let batch =
            (granted / RECV_COST_PER_ERROR).clamp(16, MAX_BATCH_MESSAGES);
        Ok(Self {
            socket,
            seq: 1,
            batch,
            send_buf: Vec::with_capacity(MAX_BATCH_BYTES + 4096),
            recv_buf: vec![0; 64 * 1024],
        })
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        seq
    }

    /// Send requests `0..count`, packed, building each (`request(i)`) as
    /// its packet fills; returns (index, reason) of each one the kernel
    /// refused. Deleting a route that is not there is no failure.
    ///
    /// An `Err` means the socket itself failed; the requests' fate is then
    /// unknown.
    fn execute(
        &mut self,
        count: usize,
        mut request: impl FnMut(usize) -> NetlinkMessage<RouteNetlinkMessage>,
    ) -> io::Result<Vec<(usize, String)>> {
        let mut failures = Vec::new();
        let mut packet_failures = Vec::new();
        // Whether each request of the packet is a deletion.
        let mut deletes = Vec::with_capacity(self.batch);
        let mut start = 0;
        while start < count {
            // Fill the packet; only its last request asks for an
            // acknowledgement.
            self.send_buf.clear();
            deletes.clear();
            let first_seq = self.seq;
            let mut end = start;
            let last_seq = loop {
                let mut r = request(end);
                end += 1;
                deletes.push(matches!(
                    r.payload,
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::DelRoute(_)
                    )
                ));
                let seq = self.next_seq();
                r.header.sequence_number = seq;
                let at = self.send_buf.len();
                let len = r.buffer_len();
                let last = end == count
                    || end - start >= self.batch
                    || at + len >= MAX_BATCH_BYTES;
                if last {
                    r.header.flags |= NLM_F_ACK;
                } else {
                    r.header.flags &= !NLM_F_ACK;
                }
                r.finalize();
                self.send_buf.resize(at + r.buffer_len(), 0);
                r.serialize(&mut self.send_buf[at..]);
                if last {
                    break seq;
                }
            };
            self.socket.send(&self.send_buf, 0)?;
            packet_failures.clear();
            self.reap(first_seq, last_seq, start, &mut packet_failures)?;
            failures.extend(packet_failures.drain(..).filter(
                |(i, errno, _)| !(deletes[*i - start] && *errno == libc::ESRCH),
            ));
            start = end;
        }
        Ok(failures
            .into_iter()
            .map(|(i, errno, text)| {
                let reason = io::Error::from_raw_os_error(errno).to_string();
                match text {
                    Some(text) => (i, format!("{reason} ({text})")),
                    None => (i, reason),
                }
            })
            .collect())
    }

    /// Read answers until the acknowledgement of `last_seq`, recording
    /// every error (request index, errno, explanation) of the packet that
    /// started at request `start`.
    fn reap(
        &mut self,
        first_seq: u32,
        last_seq: u32,
        start: usize,
        failures: &mut Vec<(usize, i32, Option<String>)>,
    ) -> io::Result<()> {
        loop {
            let n = self.recv()?;
            let mut done = false;
            for (header, raw) in messages(&self.recv_buf[..n]) {
                if header.message_type != NLMSG_ERROR {
                    continue;
                }
                let seq = header.sequence_number;
                let offset = seq.wrapping_sub(first_seq) as usize;
                if offset > last_seq.wrapping_sub(first_seq) as usize {
                    // A late answer to an earlier, abandoned packet.
                    continue;
                }
                let code = parse_error(
                    NetlinkBuffer::new(raw).payload(),
                    header.flags,
                );
                if let Some((errno, text)) = code {
                    failures.push((start + offset, errno, text));
                }
                if seq == last_seq {
                    done = true;
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// One datagram into `recv_buf`; its length.
    fn recv(&mut self) -> io::Result<usize> {
        self.recv_buf.clear();
        self.recv_buf.reserve(64 * 1024);
        match self.socket.recv(&mut self.recv_buf, 0) {
            Ok(n) => Ok(n.min(self.recv_buf.len())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not answer in time",
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Every route of ours in any table: (destination, table).
    fn dump_ddm_routes(&mut self) -> io::Result<Vec<(Ipv6Net, u32)>> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet6;
        message.header.protocol = RouteProtocol::from(RTPROT_DDM);
        let mut request =
            NetlinkMessage::from(RouteNetlinkMessage::GetRoute(message));
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let seq = self.next_seq();
        request.header.sequence_number = seq;
        request.finalize();
        self.send_buf.clear();
        self.send_buf.resize(request.buffer_len(), 0);
        request.serialize(&mut self.send_buf);
        self.socket.send(&self.send_buf, 0)?;

        let mut found = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let n = self.recv()?;
            for (header, raw) in messages(&self.recv_buf[..n]) {
                if header.sequence_number != seq {
                    continue;
                }
                let parsed =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                        .map_err(|e| {
                            io::Error::new(io::ErrorKind::InvalidData, e)
                        })?;
                match parsed.payload {
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(e.to_io());
                    }
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewRoute(route),
                    ) => {
                        if let Some(key) = ddm_route_key(&route) {
                            if seen.insert(key) {
                                found.push(key);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// (destination, table) of `route` if it is one of ours.
fn ddm_route_key(route: &RouteMessage) -> Option<(Ipv6Net, u32)> {
    if u8::from(route.header.protocol) != RTPROT_DDM
        || route.header.address_family != AddressFamily::Inet6
    {
        return None;
    }
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut table = u32::from(route.header.table);
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = *a,
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let net = Ipv6Net::new(dst, route.header.destination_prefix_length).ok()?;
    Some((net, table))
}

/// Ask for big socket buffers (root may exceed the system maximum) and a
/// receive timeout, so that a lost answer is an error rather than a hang.
fn set_buffers(socket: &Socket) -> io::Result<()> {
    let size = RECV_BUFFER_BYTES as libc::c_int;
    if set_option(socket, libc::SO_RCVBUFFORCE, &size).is_err() {
        set_option(socket, libc::SO_RCVBUF, &size)?;
    }
    if set_option(socket, libc::SO_SNDBUFFORCE, &size).is_err() {
        set_option(socket, libc::SO_SNDBUF, &size)?;
    }
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    set_option(socket, libc::SO_RCVTIMEO, &timeout)
}

/// `setsockopt(SOL_SOCKET, option, value)`.
fn set_option<T>(
    socket: &Socket,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call and
    // `value` points to `size_of::<T>()` readable bytes.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Round up to netlink's 4-byte alignment.
fn align4(n: usize) -> usize {
    let a = usize::from(NLMSG_ALIGNTO);
    (n + a - 1) & !(a - 1)
}

/// The messages of a datagram, each its header and its raw bytes (header
/// included), framed by netlink-packet-core's [`NetlinkBuffer`]; the walk
/// stops at the first message that is cut short or malformed.
fn messages(buf: &[u8]) -> impl Iterator<Item = (NetlinkHeader, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(at..)?;
        let framed = NetlinkBuffer::new_checked(rest).ok()?;
        let header = NetlinkHeader::parse(&framed).ok()?;
        let len = header.length as usize;
        at += align4(len).min(rest.len());
        Some((header, &rest[..len]))
    })
}

/// The errno of an `NLMSG_ERROR` payload (None for an acknowledgement or
/// a payload too short to hold a code) and the kernel's explanation if it
/// gave one (an extended-ack attribute).
fn parse_error(payload: &[u8], flags: u16) -> Option<(i32, Option<String>)> {
    let error =
        ErrorMessage::parse(&ErrorBuffer::new_checked(&payload).ok()?).ok()?;
    let code = error.code?.get();
    let mut text = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the echoed request is its header alone;
        // the attributes follow it.
        let echoed = NetlinkHeader::default().buffer_len();
        let tlvs = error.header.get(echoed..).unwrap_or_default();
        for nla in NlasIterator::new(tlvs).flatten() {
            if nla.kind() == NLMSGERR_ATTR_MSG {
                let raw = nla.value();
                let s = raw.split(|b| *b == 0).next().unwrap_or(raw);
                text = Some(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    Some((-code, text))
}

#[cfg(test)]
mod tests;
