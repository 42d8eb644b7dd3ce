//! The rtnetlink socket of the Linux dataplane: requests packed many to a
//! `sendmsg`, the kernel's answers framed and its errors parsed with
//! netlink-packet-core, and the dump of our routes.

use std::collections::HashSet;
use std::io;
use std::net::Ipv6Addr;
use std::time::Duration;

use netlink_packet_core::{
    Emitable, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, Parseable, NLMSG_ALIGNTO,
    NLMSG_ERROR, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use oxnet::Ipv6Net;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::RTPROT_DDM;

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

/// `NLMSGERR_ATTR_MSG`: the extended-ack attribute holding a text (not
/// among netlink-packet-core's constants).
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A blocking rtnetlink socket that sends requests in packed batches.
#[derive(Debug)]
pub(super) struct RouteSocket {
    /// The socket, connected to the kernel.
    socket: Socket,
    /// The next sequence number.
    seq: u32,
    /// Requests per `sendmsg`, sized so that their errors fit the receive
    /// buffer the kernel granted.
    pub(super) batch: usize,
    /// Outgoing packet, reused.
    send_buf: Vec<u8>,
    /// Incoming datagram, reused.
    recv_buf: Vec<u8>,
}

impl RouteSocket {
    /// Open and configure the socket.
    pub(super) fn open() -> io::Result<Self> {
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
    pub(super) fn execute(
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
                // The length, measured once (each measure walks every
                // attribute): the flags set below do not change it.
                r.finalize();
                let len = r.header.length as usize;
                let last = end == count
                    || end - start >= self.batch
                    || at + len >= MAX_BATCH_BYTES;
                if last {
                    r.header.flags |= NLM_F_ACK;
                } else {
                    r.header.flags &= !NLM_F_ACK;
                }
                self.send_buf.resize(at + len, 0);
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
    pub(super) fn dump_ddm_routes(
        &mut self,
    ) -> io::Result<Vec<(Ipv6Net, u32)>> {
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
