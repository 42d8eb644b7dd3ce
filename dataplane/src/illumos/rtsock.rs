//! The illumos routing socket's messages: a pure encoder of route
//! add/delete and `RTM_GETALL` requests and a parser of replies and
//! listings (compiled and tested on every platform; only the socket I/O is
//! illumos-specific).
//!
//! Layout (native endian; illumos has no `sa_len`, so each socket address
//! takes the full fixed size of its family, with no rounding):
//!
//! * `rt_msghdr`, 76 bytes: `msglen` u16 @0, `version` u8 @2 (= 3), `type`
//!   u8 @3, `index` u16 @4, pad @6, `flags` i32 @8, `addrs` i32 @12, `pid`
//!   @16, `seq` @20, `errno` @24, `use` @28, `inits` @32, `rt_metrics` (ten
//!   u32) @36.
//! * then one socket address per bit of `addrs`, in ascending bit order:
//!   `sockaddr_in` 16 bytes, `sockaddr_in6` 32 (family u16, port u16,
//!   flowinfo u32, addr @8, scope_id u32 @24, src_id u32 @28),
//!   `sockaddr_dl` 252 (family u16 = 25, index u16, type, nlen, alen, slen,
//!   data\[244\] holding the name without NUL); `RTA_DELAY` is a bare u32.
//!
//! An IPv6 add or delete is header + DST + GATEWAY + NETMASK (the mask in
//! `sin6_addr`) + IFP: 424 bytes (172 without IFP). A link-local gateway
//! keeps `sin6_scope_id` 0: the interface is named by the IFP's `sdl_index`
//! alone, and a delete must name the add's interface.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use oxnet::Ipv6Net;

/// Size of `rt_msghdr`.
pub const RT_MSGHDR_LEN: usize = 76;
/// `RTM_VERSION`.
pub const RTM_VERSION: u8 = 3;
/// Add a route.
pub const RTM_ADD: u8 = 1;
/// Delete a route.
pub const RTM_DELETE: u8 = 2;
/// Look a route up (also the type of each entry of a listing).
pub const RTM_GET: u8 = 4;
/// List every route (Oxide's illumos only).
pub const RTM_GETALL: u8 = 0x11;

/// Destination address present.
pub const RTA_DST: u32 = 0x1;
/// Gateway address present.
pub const RTA_GATEWAY: u32 = 0x2;
/// Netmask present.
pub const RTA_NETMASK: u32 = 0x4;
/// Cloning mask present.
pub const RTA_GENMASK: u32 = 0x8;
/// Interface (link-level address) present.
pub const RTA_IFP: u32 = 0x10;
/// Interface address present.
pub const RTA_IFA: u32 = 0x20;
/// Author of a redirect present.
pub const RTA_AUTHOR: u32 = 0x40;
/// Broadcast or point-to-point destination present.
pub const RTA_BRD: u32 = 0x80;
/// Source address present.
pub const RTA_SRC: u32 = 0x100;
/// DDM delay (a bare u32; Oxide's illumos only; never sent in add/delete).
pub const RTA_DELAY: u32 = 0x200;

/// Route usable.
pub const RTF_UP: u32 = 0x1;
/// Destination is reached through a gateway.
pub const RTF_GATEWAY: u32 = 0x2;
/// Host route.
pub const RTF_HOST: u32 = 0x4;
/// Message confirmed.
pub const RTF_DONE: u32 = 0x40;
/// Added by hand (or by a routing daemon).
pub const RTF_STATIC: u32 = 0x800;

/// IPv4 (illumos numbering).
pub const AF_INET: u16 = 2;
/// Link level (illumos numbering).
pub const AF_LINK: u16 = 25;
/// IPv6 (illumos numbering).
pub const AF_INET6: u16 = 26;
/// The routing socket's own family.
pub const AF_ROUTE: i32 = 24;

/// Size of `sockaddr_in`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// Size of `sockaddr_in6`.
pub const SOCKADDR_IN6_LEN: usize = 32;
/// Size of `sockaddr_dl`.
pub const SOCKADDR_DL_LEN: usize = 252;
/// Size of `sockaddr_dl`'s data (name, then link address).
pub const SDL_DATA_LEN: usize = 244;

/// illumos `EEXIST`: an add found the route already there.
pub const EEXIST: i32 = 17;
/// illumos `ESRCH`: a delete found no such route.
pub const ESRCH: i32 = 3;

/// The flags of every route we add or delete (no `RTF_UP`, as the original
/// sends them).
pub const ROUTE_FLAGS: u32 = RTF_GATEWAY | RTF_STATIC;
/// What a listing asks for: DST, GATEWAY, NETMASK, IFP and DELAY.
pub const GETALL_ADDRS: u32 =
    RTA_DST | RTA_GATEWAY | RTA_NETMASK | RTA_IFP | RTA_DELAY;

/// Add or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// `RTM_ADD`.
    Add,
    /// `RTM_DELETE`.
    Delete,
}

/// One IPv6 route as we program it: a prefix via a link-local (or any)
/// gateway, bound to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelRoute {
    /// Destination (host bits are cleared when encoded).
    pub dest: Ipv6Net,
    /// Gateway.
    pub gateway: Ipv6Addr,
    /// Interface index of the gateway's link (0: none).
    pub ifindex: u16,
}

fn header(
    buf: &mut Vec<u8>,
    len: usize,
    ty: u8,
    flags: u32,
    addrs: u32,
    seq: i32,
) {
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.push(RTM_VERSION);
    buf.push(ty);
    buf.extend_from_slice(&0u16.to_ne_bytes()); // rtm_index
    buf.extend_from_slice(&[0, 0]); // pad
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&addrs.to_ne_bytes());
    buf.extend_from_slice(&0i32.to_ne_bytes()); // pid: the kernel fills it
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.resize(buf.len() + 4 * 3 + 40, 0); // errno, use, inits, metrics
}

fn sockaddr_in6(buf: &mut Vec<u8>, addr: Ipv6Addr) {
    buf.extend_from_slice(&AF_INET6.to_ne_bytes());
    buf.extend_from_slice(&[0; 6]); // port, flowinfo
    buf.extend_from_slice(&addr.octets());
    buf.extend_from_slice(&[0; 8]); // scope_id (stays 0), src_id
}

fn sockaddr_dl(buf: &mut Vec<u8>, index: u16) {
    buf.extend_from_slice(&AF_LINK.to_ne_bytes());
    buf.extend_from_slice(&index.to_ne_bytes());
    buf.resize(buf.len() + 4 + SDL_DATA_LEN, 0); // type, lens, data
}

/// The mask of a prefix length, as an address.
fn mask6(len: u8) -> Ipv6Addr {
    let len = u32::from(len.min(128));
    Ipv6Addr::from(u128::MAX.checked_shl(128 - len).unwrap_or(0))
}

/// Encodes an IPv6 route add or delete (with `RTA_IFP` when the route has
/// an interface index). `seq` identifies the message.
pub fn encode_route(op: RouteOp, route: &KernelRoute, seq: i32) -> Vec<u8> {
    let mut addrs = RTA_DST | RTA_GATEWAY | RTA_NETMASK;
    let mut len = RT_MSGHDR_LEN + 3 * SOCKADDR_IN6_LEN;
    if route.ifindex != 0 {
        addrs |= RTA_IFP;
        len += SOCKADDR_DL_LEN;
    }
    let ty = match op {
        RouteOp::Add => RTM_ADD,
        RouteOp::Delete => RTM_DELETE,
    };
    let mut buf = Vec::with_capacity(len);
    header(&mut buf, len, ty, ROUTE_FLAGS, addrs, seq);
    sockaddr_in6(&mut buf, route.dest.prefix());
    sockaddr_in6(&mut buf, route.gateway);
    sockaddr_in6(&mut buf, mask6(route.dest.width()));
    if route.ifindex != 0 {
        sockaddr_dl(&mut buf, route.ifindex);
    }
    debug_assert_eq!(buf.len(), len);
    buf
}

/// Encodes the `RTM_GETALL` request: a bare header.
pub fn encode_getall(seq: i32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(RT_MSGHDR_LEN);
    header(&mut buf, RT_MSGHDR_LEN, RTM_GETALL, 0, GETALL_ADDRS, seq);
    buf
}

/// What the result of writing an add or delete means (the routing socket
/// reports it as the `write()` errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Done.
    Done,
    /// An add found the route there already (success for us).
    AlreadyPresent,
    /// A delete found no such route (success for us).
    AlreadyGone,
    /// Refused with this errno.
    Failed(i32),
}

/// Classifies a write's errno (0: success).
pub fn outcome(op: RouteOp, errno: i32) -> WriteOutcome {
    match (op, errno) {
        (_, 0) => WriteOutcome::Done,
        (RouteOp::Add, EEXIST) => WriteOutcome::AlreadyPresent,
        (RouteOp::Delete, ESRCH) => WriteOutcome::AlreadyGone,
        (_, e) => WriteOutcome::Failed(e),
    }
}

/// A link-level socket address: interface index and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddr {
    /// Interface index.
    pub index: u16,
    /// Interface name (empty if the kernel gave none).
    pub name: String,
}

/// One socket address of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    /// An IP address (v4 or v6); for v6, with its scope id.
    Ip(IpAddr, u32),
    /// A link-level address.
    Link(LinkAddr),
    /// `RTA_DELAY`'s bare value.
    Delay(u32),
}

/// One parsed routing-socket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMsg {
    /// `rtm_type`.
    pub ty: u8,
    /// `rtm_flags`.
    pub flags: u32,
    /// `rtm_addrs`.
    pub addrs: u32,
    /// `rtm_index`.
    pub index: u16,
    /// `rtm_pid`.
    pub pid: i32,
    /// `rtm_seq`.
    pub seq: i32,
    /// `rtm_errno`.
    pub errno: i32,
    /// The addresses, by `RTA_` bit, ascending.
    pub sockaddrs: Vec<(u32, SockAddr)>,
}

impl RouteMsg {
    /// The address of `bit`, if present.
    pub fn get(&self, bit: u32) -> Option<&SockAddr> {
        self.sockaddrs.iter().find(|(b, _)| *b == bit).map(|(_, a)| a)
    }

    fn ip6(&self, bit: u32) -> Option<Ipv6Addr> {
        match self.get(bit) {
            Some(SockAddr::Ip(IpAddr::V6(a), _)) => Some(*a),
            _ => None,
        }
    }

    /// The IPv6 gateway route this message describes, if it is one: a
    /// destination, a gateway, a contiguous netmask and `RTF_GATEWAY`.
    /// The interface index is the IFP's, else the header's.
    pub fn ipv6_route(&self) -> Option<KernelRoute> {
        if self.flags & RTF_GATEWAY == 0 {
            return None;
        }
        let dst = self.ip6(RTA_DST)?;
        let gateway = self.ip6(RTA_GATEWAY)?;
        let len = match self.ip6(RTA_NETMASK) {
            Some(m) => {
                let m = u128::from(m);
                let len = m.leading_ones();
                if m.checked_shl(len).unwrap_or(0) != 0 {
                    return None; // not contiguous
                }
                len as u8
            }
            // No mask: a host route.
            None => 128,
        };
        let ifindex = match self.get(RTA_IFP) {
            Some(SockAddr::Link(l)) if l.index != 0 => l.index,
            _ => self.index,
        };
        let dest = Ipv6Net::new(dst, len).ok()?;
        Some(KernelRoute {
            dest: Ipv6Net::new_unchecked(dest.prefix(), len),
            gateway,
            ifindex,
        })
    }
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than a header, or than the header's length.
    #[error("truncated message at offset {0}")]
    Truncated(usize),
    /// `rtm_msglen` smaller than a header.
    #[error("bad message length {len} at offset {at}")]
    BadLength {
        /// Offset of the message.
        at: usize,
        /// Its `rtm_msglen`.
        len: usize,
    },
    /// Not version 3.
    #[error("unknown routing message version {0}")]
    Version(u8),
    /// A socket address of a family whose size is unknown.
    #[error("unknown address family {0}")]
    Family(u16),
    /// The addresses run past `rtm_msglen`.
    #[error("addresses overrun the message at offset {0}")]
    Overrun(usize),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one message at the start of `buf`; returns it and its length.
pub fn parse_one(buf: &[u8]) -> Result<(RouteMsg, usize), ParseError> {
    if buf.len() < RT_MSGHDR_LEN {
        return Err(ParseError::Truncated(0));
    }
    let len = usize::from(u16_at(buf, 0));
    if len < RT_MSGHDR_LEN {
        return Err(ParseError::BadLength { at: 0, len });
    }
    if len > buf.len() {
        return Err(ParseError::Truncated(0));
    }
    if buf[2] != RTM_VERSION {
        return Err(ParseError::Version(buf[2]));
    }
    let msg = &buf[..len];
    let addrs = u32_at(msg, 12);
    let mut at = RT_MSGHDR_LEN;
    let mut sockaddrs = Vec::new();
    for i in 0..32 {
        let bit = 1u32 << i;
        if addrs & bit == 0 {
            continue;
        }
        if bit == RTA_DELAY {
            if at + 4 > len {
                return Err(ParseError::Overrun(at));
            }
            sockaddrs.push((bit, SockAddr::Delay(u32_at(msg, at))));
            at += 4;
            continue;
        }
        if at + 2 > len {
            return Err(ParseError::Overrun(at));
        }
        let family = u16_at(msg, at);
        let size = match family {
            AF_INET => SOCKADDR_IN_LEN,
            AF_INET6 => SOCKADDR_IN6_LEN,
            AF_LINK => SOCKADDR_DL_LEN,
            f => return Err(ParseError::Family(f)),
        };
        if at + size > len {
            return Err(ParseError::Overrun(at));
        }
        let sa = &msg[at..at + size];
        let addr = match family {
            AF_INET => {
                let a: [u8; 4] = sa[4..8].try_into().unwrap_or_default();
                SockAddr::Ip(IpAddr::V4(Ipv4Addr::from(a)), 0)
            }
            AF_INET6 => {
                let a: [u8; 16] = sa[8..24].try_into().unwrap_or_default();
                SockAddr::Ip(IpAddr::V6(Ipv6Addr::from(a)), u32_at(sa, 24))
            }
            _ => {
                let nlen = usize::from(sa[5]).min(SDL_DATA_LEN);
                SockAddr::Link(LinkAddr {
                    index: u16_at(sa, 2),
                    name: String::from_utf8_lossy(&sa[8..8 + nlen])
                        .into_owned(),
                })
            }
        };
        sockaddrs.push((bit, addr));
        at += size;
    }
    Ok((
        RouteMsg {
            ty: buf[3],
            flags: u32_at(msg, 8),
            addrs,
            index: u16_at(msg, 4),
            pid: u32_at(msg, 16) as i32,
            seq: u32_at(msg, 20) as i32,
            errno: u32_at(msg, 24) as i32,
            sockaddrs,
        },
        len,
    ))
}

/// Parses a read of back-to-back messages (a `RTM_GETALL` listing), stepping
/// by each message's `rtm_msglen`. Stops at the first malformed message and
/// reports it with what was parsed before it.
pub fn parse_all(buf: &[u8]) -> (Vec<RouteMsg>, Option<ParseError>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match parse_one(&buf[at..]) {
            Ok((m, len)) => {
                out.push(m);
                at += len;
            }
            Err(e) => return (out, Some(offset(e, at))),
        }
    }
    (out, None)
}

/// What one read holds, on a routing socket that asked for the listing
/// (`RTM_GETALL`): `None` when it is not the listing, else the IPv6
/// routes it lists, or why it cannot be taken as whole (a listing that
/// does not parse to its end: the routes it missed would be struck from
/// the record, and left in the kernel).
///
/// Other messages may be read first: the copy of every route change the
/// kernel sends each routing socket, and another process's `RTM_GET`
/// answer, which names that process (`rtm_pid`, neither 0 nor
/// `own_pid`). Taken as the listing, that answer of one route would have
/// every other recorded route struck from the record. A message read
/// before the listing that does not parse is skipped.
pub fn listing(
    read: &[u8],
    own_pid: i32,
) -> Option<Result<Vec<KernelRoute>, ParseError>> {
    let (msgs, bad) = parse_all(read);
    let ours =
        |m: &&RouteMsg| m.ty == RTM_GET && (m.pid == 0 || m.pid == own_pid);
    if !msgs.iter().any(|m| ours(&m)) {
        return None;
    }
    if let Some(e) = bad {
        return Some(Err(e));
    }
    Some(Ok(msgs
        .iter()
        .filter(ours)
        .filter_map(RouteMsg::ipv6_route)
        .collect()))
}

fn offset(e: ParseError, base: usize) -> ParseError {
    match e {
        ParseError::Truncated(o) => ParseError::Truncated(base + o),
        ParseError::BadLength { at, len } => {
            ParseError::BadLength { at: base + at, len }
        }
        ParseError::Overrun(o) => ParseError::Overrun(base + o),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ifindex: u16) -> KernelRoute {
        KernelRoute {
            dest: "fd00:1122:3344:101::7/64".parse().unwrap(),
            gateway: "fe80::aa:bbff:fecc:ddee".parse().unwrap(),
            ifindex,
        }
    }

    #[test]
    fn sizes_are_the_kernels() {
        assert_eq!(encode_getall(1).len(), 76);
        assert_eq!(encode_route(RouteOp::Add, &route(0), 1).len(), 172);
        assert_eq!(encode_route(RouteOp::Add, &route(3), 1).len(), 424);
        assert_eq!(encode_route(RouteOp::Delete, &route(3), 1).len(), 424);
    }

    /// Golden bytes of an add with an interface, on a little-endian host
    /// (illumos on x86-64).
    #[cfg(target_endian = "little")]
    #[test]
    fn add_with_interface_golden_bytes() {
        let b = encode_route(RouteOp::Add, &route(7), 1701);
        let mut want = vec![0u8; 424];
        want[0..2].copy_from_slice(&[0xa8, 0x01]); // 424
        want[2] = 3; // version
        want[3] = 1; // RTM_ADD
        want[8..12].copy_from_slice(&[0x02, 0x08, 0, 0]); // GATEWAY|STATIC
        want[12..16].copy_from_slice(&[0x17, 0, 0, 0]); // DST|GW|MASK|IFP
        want[20..24].copy_from_slice(&[0xa5, 0x06, 0, 0]); // seq 1701
                                                           // DST @76: family 26, the prefix with host bits cleared.
        want[76..78].copy_from_slice(&[26, 0]);
        want[84..92]
            .copy_from_slice(&[0xfd, 0x00, 0x11, 0x22, 0x33, 0x44, 0x01, 0x01]);
        // GATEWAY @108: the link-local address, scope id 0.
        want[108..110].copy_from_slice(&[26, 0]);
        want[116..118].copy_from_slice(&[0xfe, 0x80]);
        want[124..132]
            .copy_from_slice(&[0x00, 0xaa, 0xbb, 0xff, 0xfe, 0xcc, 0xdd, 0xee]);
        // NETMASK @140: /64.
        want[140..142].copy_from_slice(&[26, 0]);
        want[148..156].copy_from_slice(&[0xff; 8]);
        // IFP @172: sockaddr_dl, family 25, index 7, no name.
        want[172..174].copy_from_slice(&[25, 0]);
        want[174..176].copy_from_slice(&[7, 0]);
        assert_eq!(b, want);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn getall_and_delete_headers() {
        let g = encode_getall(9);
        assert_eq!(&g[0..4], &[76, 0, 3, 0x11]);
        assert_eq!(&g[8..16], &[0, 0, 0, 0, 0x17, 0x02, 0, 0]); // addrs 0x217
        assert_eq!(&g[20..24], &[9, 0, 0, 0]);
        let d = encode_route(RouteOp::Delete, &route(0), 2);
        assert_eq!(&d[0..4], &[172, 0, 3, 2]);
        assert_eq!(&d[12..16], &[0x07, 0, 0, 0]);
        assert!(d[36..76].iter().all(|&x| x == 0), "metrics zero");
    }

    #[test]
    fn errnos_of_writes() {
        assert_eq!(outcome(RouteOp::Add, 0), WriteOutcome::Done);
        assert_eq!(outcome(RouteOp::Add, EEXIST), WriteOutcome::AlreadyPresent);
        assert_eq!(outcome(RouteOp::Delete, ESRCH), WriteOutcome::AlreadyGone);
        assert_eq!(outcome(RouteOp::Delete, EEXIST), WriteOutcome::Failed(17));
        assert_eq!(outcome(RouteOp::Add, 22), WriteOutcome::Failed(22));
    }

    /// A message as the kernel would list it: header, then the given
    /// sockaddrs.
    fn listed(ty: u8, flags: u32, addrs: u32, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        header(&mut b, RT_MSGHDR_LEN + body.len(), ty, flags, addrs, 0);
        b.extend_from_slice(body);
        b
    }

    fn named_dl(index: u16, name: &str) -> Vec<u8> {
        let mut b = Vec::new();
        sockaddr_dl(&mut b, index);
        b[5] = name.len() as u8;
        b[8..8 + name.len()].copy_from_slice(name.as_bytes());
        b
    }

    fn in4(a: [u8; 4]) -> Vec<u8> {
        let mut b = AF_INET.to_ne_bytes().to_vec();
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&a);
        b.resize(16, 0);
        b
    }

    #[test]
    fn a_synthetic_listing_parses() {
        let mut buf = Vec::new();
        // 1: our kind of route, with IFP (name and index) and a DELAY.
        let mut body = Vec::new();
        sockaddr_in6(&mut body, "fd00:1::".parse().unwrap());
        sockaddr_in6(&mut body, "fe80::1".parse().unwrap());
        sockaddr_in6(&mut body, mask6(64));
        body.extend(named_dl(4, "cxgbe0"));
        body.extend_from_slice(&250u32.to_ne_bytes());
        buf.extend(listed(
            RTM_GET,
            RTF_UP | RTF_GATEWAY | RTF_STATIC,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK | RTA_IFP | RTA_DELAY,
            &body,
        ));
        // 2: an IPv4 interface route (no gateway flag), with IFA.
        let mut body = in4([10, 0, 0, 0]);
        body.extend(in4([10, 0, 0, 1]));
        body.extend(in4([255, 255, 255, 0]));
        body.extend(named_dl(2, "igb0"));
        body.extend(in4([10, 0, 0, 1]));
        buf.extend(listed(
            RTM_GET,
            RTF_UP,
            RTA_DST | RTA_GATEWAY | RTA_NETMASK | RTA_IFP | RTA_IFA,
            &body,
        ));
        // 3: an IPv6 host route without netmask or interface.
        let mut body = Vec::new();
        sockaddr_in6(&mut body, "fd00:9::1".parse().unwrap());
        sockaddr_in6(&mut body, "fe80::9".parse().unwrap());
        buf.extend(listed(
            RTM_GET,
            RTF_UP | RTF_GATEWAY | RTF_HOST,
            RTA_DST | RTA_GATEWAY,
            &body,
        ));

        let (msgs, err) = parse_all(&buf);
        assert_eq!(err, None);
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[0].ipv6_route(),
            Some(KernelRoute {
                dest: "fd00:1::/64".parse().unwrap(),
                gateway: "fe80::1".parse().unwrap(),
                ifindex: 4
            })
        );
        assert_eq!(
            msgs[0].get(RTA_IFP),
            Some(&SockAddr::Link(LinkAddr { index: 4, name: "cxgbe0".into() }))
        );
        assert_eq!(msgs[0].get(RTA_DELAY), Some(&SockAddr::Delay(250)));
        assert_eq!(msgs[1].ipv6_route(), None);
        assert_eq!(
            msgs[1].get(RTA_IFA),
            Some(&SockAddr::Ip("10.0.0.1".parse().unwrap(), 0))
        );
        let host = msgs[2].ipv6_route().unwrap();
        assert_eq!(host.dest, "fd00:9::1/128".parse().unwrap());
        assert_eq!(host.ifindex, 0);
    }

    /// A read is taken as the listing only if it holds an `RTM_GET` of
    /// no other process, and then only whole.
    #[test]
    fn only_our_listing_is_taken_as_the_listing() {
        let mut body = Vec::new();
        sockaddr_in6(&mut body, "fd00:1::".parse().unwrap());
        sockaddr_in6(&mut body, "fe80::1".parse().unwrap());
        sockaddr_in6(&mut body, mask6(64));
        let get = |pid: i32| {
            let mut m = listed(
                RTM_GET,
                RTF_UP | RTF_GATEWAY,
                RTA_DST | RTA_GATEWAY | RTA_NETMASK,
                &body,
            );
            m[16..20].copy_from_slice(&pid.to_ne_bytes());
            m
        };
        let one = KernelRoute {
            dest: "fd00:1::/64".parse().unwrap(),
            gateway: "fe80::1".parse().unwrap(),
            ifindex: 0,
        };
        // Another process's question, answered.
        assert_eq!(listing(&get(4242), 77), None);
        // A route change's copy.
        let change = encode_route(RouteOp::Add, &route(1), 5);
        assert_eq!(listing(&change, 77), None);
        // The listing: entries naming no process, or us.
        assert_eq!(listing(&get(0), 77), Some(Ok(vec![one])));
        let mut two = get(77);
        two.extend(get(0));
        assert_eq!(listing(&two, 77), Some(Ok(vec![one, one])));
        // Cut short: no listing to take.
        two.truncate(two.len() - 8);
        assert!(matches!(listing(&two, 77), Some(Err(_))));
    }

    #[test]
    fn our_own_messages_parse_back() {
        for ifindex in [0, 5] {
            let r = route(ifindex);
            let (m, len) =
                parse_one(&encode_route(RouteOp::Add, &r, 3)).unwrap();
            assert_eq!(len, if ifindex == 0 { 172 } else { 424 });
            assert_eq!(m.ty, RTM_ADD);
            assert_eq!(m.seq, 3);
            assert_eq!(
                m.ipv6_route(),
                Some(KernelRoute {
                    dest: "fd00:1122:3344:101::/64".parse().unwrap(),
                    ..r
                })
            );
        }
    }

    #[test]
    fn malformed_listings_are_errors() {
        let good = encode_route(RouteOp::Add, &route(1), 1);
        // Truncated after the first message.
        let mut b = good.clone();
        b.extend_from_slice(&good[..100]);
        let (msgs, err) = parse_all(&b);
        assert_eq!(msgs.len(), 1);
        assert_eq!(err, Some(ParseError::Truncated(424)));
        // A length shorter than a header.
        let mut b = good.clone();
        b[0] = 10;
        b[1] = 0;
        assert!(matches!(parse_all(&b).1, Some(ParseError::BadLength { .. })));
        // Addresses running past the length.
        let mut b = good.clone();
        b[0..2].copy_from_slice(&(200u16).to_ne_bytes());
        assert!(matches!(parse_one(&b), Err(ParseError::Overrun(_))));
        // An unknown family.
        let mut b = good.clone();
        b[76..78].copy_from_slice(&99u16.to_ne_bytes());
        assert_eq!(parse_one(&b).unwrap_err(), ParseError::Family(99));
        // Another version.
        let mut b = good;
        b[2] = 2;
        assert_eq!(parse_one(&b).unwrap_err(), ParseError::Version(2));
    }

    proptest::proptest! {
        /// Any bytes: a result, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(
            proptest::prelude::any::<u8>(), 0..2000)) {
            let _ = parse_all(&b);
        }
    }
}
