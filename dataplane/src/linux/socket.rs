//! The rtnetlink socket of the Linux dataplane: requests packed many to a
//! `sendmsg`, the kernel's answers framed and its errors parsed with
//! netlink-packet-core, and the dump of our routes.

use std::collections::HashSet;
use std::io;
use std::net::Ipv6Addr;
use std::time::Duration;

use netlink_packet_core::{
    parse_ipv6, parse_u32, DefaultNla, DoneBuffer, Emitable, ErrorBuffer,
    ErrorMessage, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator, Parseable, NLMSG_ALIGNTO, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
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

/// Nexthop objects (Linux 5.3), which netlink-packet-route 0.34 has no
/// messages for: the message types, `struct nhmsg`'s length and the
/// attributes used (`linux/nexthop.h`).
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHMSG_LEN: usize = 8;
const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;

/// A nexthop object as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NexthopObject {
    /// Who made it (`nh_protocol`).
    pub(super) protocol: u8,
    /// Its interface, if it has one.
    pub(super) oif: Option<u32>,
    /// Its IPv6 gateway, if it has one.
    pub(super) gateway: Option<Ipv6Addr>,
}

/// A request the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    /// Its index among the requests.
    pub(super) index: usize,
    /// The kernel's errno.
    pub(super) errno: i32,
    /// The errno's text, with the kernel's explanation if it gave one.
    pub(super) reason: String,
}

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

    /// Set the next sequence number (tests: the numbers' wrap).
    #[cfg(test)]
    pub(super) fn set_seq(&mut self, seq: u32) {
        self.seq = seq;
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
    ) -> io::Result<Vec<Refused>> {
        let mut failures = Vec::new();
        let mut packet_failures = Vec::new();
        // Whether each request of the packet is a deletion.
        let mut deletes = Vec::with_capacity(self.batch);
        let mut start = 0;
        while start < count {
            // A packet's answers are matched to its requests by their
            // offset from its first sequence number, so no packet spans
            // the numbers' wrap (which skips 0).
            if self.seq > u32::MAX - MAX_BATCH_MESSAGES as u32 {
                self.seq = 1;
            }
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
            .map(|(index, errno, text)| Refused {
                index,
                errno,
                reason: reason(errno, text),
            })
            .collect())
    }

    /// Create nexthop object `id` through `gateway` on interface `oif`
    /// (one request, acknowledged, `NLM_F_EXCL`: an id taken by anyone
    /// is refused with `EEXIST`), tagged with our protocol; or, with
    /// `via` None, delete object `id`. `Ok(None)` when the kernel took
    /// it, `Ok(Some((errno, reason)))` when it refused.
    pub(super) fn nexthop(
        &mut self,
        id: u32,
        via: Option<(Ipv6Addr, u32)>,
    ) -> io::Result<Option<(i32, String)>> {
        let seq = match via {
            Some((gateway, oif)) => self.send_nexthop_request(
                RTM_NEWNEXTHOP,
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                [libc::AF_INET6 as u8, 0, RTPROT_DDM, 0, 0, 0, 0, 0],
                &[
                    DefaultNla::new(NHA_ID, id.to_ne_bytes().into()),
                    DefaultNla::new(NHA_OIF, oif.to_ne_bytes().into()),
                    DefaultNla::new(NHA_GATEWAY, gateway.octets().into()),
                ],
            )?,
            // A deletion's header must be empty.
            None => self.send_nexthop_request(
                RTM_DELNEXTHOP,
                NLM_F_ACK,
                [0; NHMSG_LEN],
                &[DefaultNla::new(NHA_ID, id.to_ne_bytes().into())],
            )?,
        };
        let mut failures = Vec::new();
        self.reap(seq, seq, 0, &mut failures)?;
        Ok(failures.pop().map(|(_, errno, text)| (errno, reason(errno, text))))
    }

    /// Nexthop object `id` as the kernel has it, or None if there is none.
    pub(super) fn get_nexthop(
        &mut self,
        id: u32,
    ) -> io::Result<Option<NexthopObject>> {
        let seq = self.send_nexthop_request(
            RTM_GETNEXTHOP,
            0,
            [0; NHMSG_LEN],
            &[DefaultNla::new(NHA_ID, id.to_ne_bytes().into())],
        )?;
        let mut found = None;
        let read = self.replies(seq, |header, raw| {
            if header.message_type != RTM_NEWNEXTHOP {
                return Ok(false);
            }
            found = parse_nexthop(NetlinkBuffer::new(raw).payload())
                .map(|(_, o)| o);
            Ok(found.is_some())
        });
        match read {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            read => read.map(|()| found),
        }
    }

    /// The ids of every nexthop object of ours (our protocol).
    pub(super) fn dump_ddm_nexthops(&mut self) -> io::Result<Vec<u32>> {
        // A dump request's header must be empty (strict checking).
        let seq = self.send_nexthop_request(
            RTM_GETNEXTHOP,
            NLM_F_DUMP,
            [0; NHMSG_LEN],
            &[],
        )?;
        let mut found = Vec::new();
        self.replies(seq, |header, raw| {
            if header.message_type == RTM_NEWNEXTHOP {
                let payload = NetlinkBuffer::new(raw).payload();
                if let Some((Some(id), o)) = parse_nexthop(payload) {
                    if o.protocol == RTPROT_DDM {
                        found.push(id);
                    }
                }
            }
            Ok(false)
        })?;
        Ok(found)
    }

    /// Send one nexthop request (`struct nhmsg` `header`, then `attrs`),
    /// `NLM_F_REQUEST` and `flags` set; its sequence number.
    fn send_nexthop_request(
        &mut self,
        kind: u16,
        flags: u16,
        header: [u8; NHMSG_LEN],
        attrs: &[DefaultNla],
    ) -> io::Result<u32> {
        let seq = self.next_seq();
        let mut nl = NetlinkHeader::default();
        nl.message_type = kind;
        nl.flags = NLM_F_REQUEST | flags;
        nl.sequence_number = seq;
        let at = nl.buffer_len();
        nl.length = (at + NHMSG_LEN + attrs.buffer_len()) as u32;
        let b = &mut self.send_buf;
        b.clear();
        b.resize(nl.length as usize, 0);
        nl.emit(&mut b[..at]);
        b[at..at + NHMSG_LEN].copy_from_slice(&header);
        attrs.emit(&mut b[at + NHMSG_LEN..]);
        self.socket.send(&self.send_buf, 0)?;
        Ok(seq)
    }

    /// Read the answers to request `seq` (answers to others are skipped):
    /// each item (its header and raw bytes) goes to `each`, which ends the
    /// reading by returning true (a lookup's one answer). An error answer
    /// is the error, with the kernel's errno; the end of a dump ends the
    /// reading, or is the error its negative code gives (the dump's own
    /// failure).
    fn replies(
        &mut self,
        seq: u32,
        mut each: impl FnMut(&NetlinkHeader, &[u8]) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let n = self.recv()?;
            for (header, raw) in messages(&self.recv_buf[..n]) {
                if header.sequence_number != seq {
                    continue;
                }
                let payload = NetlinkBuffer::new(raw).payload();
                match header.message_type {
                    NLMSG_ERROR => {
                        if ErrorBuffer::new_checked(&payload).is_err() {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "unreadable error answer",
                            ));
                        }
                        // An acknowledgement (none is asked for) is passed
                        // over.
                        if let Some((errno, _)) =
                            parse_error(payload, header.flags)
                        {
                            return Err(io::Error::from_raw_os_error(errno));
                        }
                    }
                    NLMSG_DONE => {
                        let code = DoneBuffer::new_checked(payload)
                            .map_or(0, |d| d.code());
                        return if code < 0 {
                            Err(io::Error::from_raw_os_error(-code))
                        } else {
                            Ok(())
                        };
                    }
                    _ => {
                        if each(&header, raw)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
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

    /// Every route of ours in any table.
    pub(super) fn dump_ddm_routes(&mut self) -> io::Result<Vec<DdmRoute>> {
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
        self.replies(seq, |_, raw| {
            let parsed =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, e)
                    })?;
            if let NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(route),
            ) = parsed.payload
            {
                if let Some(r) = ddm_route(&route) {
                    if seen.insert((r.dst, r.table)) {
                        found.push(r);
                    }
                }
            }
            Ok(false)
        })?;
        Ok(found)
    }
}

/// A route of ours as a dump shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DdmRoute {
    pub(super) dst: Ipv6Net,
    pub(super) table: u32,
    /// The nexthop object it goes through, if it does.
    pub(super) object: Option<u32>,
}

/// `route` if it is one of ours.
fn ddm_route(route: &RouteMessage) -> Option<DdmRoute> {
    if u8::from(route.header.protocol) != RTPROT_DDM
        || route.header.address_family != AddressFamily::Inet6
    {
        return None;
    }
    let mut dst = Ipv6Addr::UNSPECIFIED;
    let mut table = u32::from(route.header.table);
    let mut object = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = *a,
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::NhId(id) => object = Some(*id),
            _ => {}
        }
    }
    let dst = Ipv6Net::new(dst, route.header.destination_prefix_length).ok()?;
    Some(DdmRoute { dst, table, object })
}

/// Ask for big socket buffers (root may exceed the system maximum) and a
/// receive timeout, so that a lost answer is an error rather than a hang.
fn set_buffers(socket: &Socket) -> io::Result<()> {
    let size = RECV_BUFFER_BYTES as libc::c_int;
    set_rcvbuf(socket, size)?;
    if set_option(socket, libc::SO_SNDBUFFORCE, &size).is_err() {
        set_option(socket, libc::SO_SNDBUF, &size)?;
    }
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    set_option(socket, libc::SO_RCVTIMEO, &timeout)
}

/// Give `socket` a receive buffer of `bytes`: past the system's bound
/// (`net.core.rmem_max`) where allowed (`SO_RCVBUFFORCE`, which needs
/// `CAP_NET_ADMIN`), else up to it.
pub(crate) fn set_rcvbuf(
    socket: &impl std::os::fd::AsRawFd,
    bytes: libc::c_int,
) -> io::Result<()> {
    if set_option(socket, libc::SO_RCVBUFFORCE, &bytes).is_err() {
        set_option(socket, libc::SO_RCVBUF, &bytes)?;
    }
    Ok(())
}

/// `setsockopt(SOL_SOCKET, option, value)`.
fn set_option<T>(
    socket: &impl std::os::fd::AsRawFd,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
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

/// A nexthop object's id (if given) and description, from the payload of
/// an `RTM_NEWNEXTHOP` (`struct nhmsg`, then attributes).
fn parse_nexthop(payload: &[u8]) -> Option<(Option<u32>, NexthopObject)> {
    let header = payload.get(..NHMSG_LEN)?;
    let mut object =
        NexthopObject { protocol: header[2], oif: None, gateway: None };
    let mut id = None;
    for nla in NlasIterator::new(&payload[NHMSG_LEN..]).flatten() {
        let value = nla.value();
        match nla.kind() {
            NHA_ID => id = parse_u32(value).ok(),
            NHA_OIF => object.oif = parse_u32(value).ok(),
            NHA_GATEWAY => {
                object.gateway = parse_ipv6(value).ok().map(Ipv6Addr::from)
            }
            _ => {}
        }
    }
    Some((id, object))
}

/// The text of `errno`, with the kernel's explanation if it gave one.
fn reason(errno: i32, text: Option<String>) -> String {
    let reason = io::Error::from_raw_os_error(errno).to_string();
    match text {
        Some(text) => format!("{reason} ({text})"),
        None => reason,
    }
}
