//! The UDP sockets of one interface.
//!
//! Two sockets, both bound with the interface as scope, which ties them to
//! that interface without privileges (the kernel treats a scoped bind like
//! `SO_BINDTODEVICE`), so datagrams of other interfaces never reach them:
//!
//! * the *multicast* socket, bound to the group `ff02::dd` and joined to it
//!   on this interface only, receives solicitations;
//! * the *unicast* socket, bound to our link-local address, receives
//!   advertisements and sends everything (solicitations to the group,
//!   advertisements to the soliciting router), so our packets carry the
//!   link-local source address and the discovery port.
//!
//! Binding the link-local address fails while it is tentative, which is why
//! [`super::iface`] waits for a usable one first.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// UDP port of discovery (0xddd).
pub const DISCOVERY_PORT: u16 = 0xddd;

/// The link-local multicast group solicitations go to.
pub const DISCOVERY_GROUP: Ipv6Addr =
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xdd);

/// Largest datagram we read; a valid packet is at most 4 + 255 bytes, a
/// larger one is truncated by the read and still parses (trailing bytes are
/// ignored).
pub const MAX_DATAGRAM: usize = 512;

/// The open sockets of one interface.
#[derive(Debug)]
pub struct UdpLink {
    /// Receives advertisements; sends everything.
    pub unicast: UdpSocket,
    /// Receives solicitations.
    pub multicast: UdpSocket,
}

fn new_socket() -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn into_tokio(s: Socket) -> io::Result<UdpSocket> {
    UdpSocket::from_std(std::net::UdpSocket::from(s))
}

/// Open the sockets of interface `ifindex` whose link-local address is
/// `local_addr`, on `port` (normally [`DISCOVERY_PORT`]). Needs a tokio
/// runtime.
pub fn open(
    ifindex: u32,
    local_addr: Ipv6Addr,
    port: u16,
) -> io::Result<UdpLink> {
    let m = new_socket()?;
    #[cfg(not(any(target_os = "solaris", target_os = "illumos")))]
    m.set_reuse_port(true)?;
    #[cfg(target_os = "linux")]
    m.bind(
        &SocketAddr::V6(SocketAddrV6::new(DISCOVERY_GROUP, port, 0, ifindex))
            .into(),
    )?;
    #[cfg(not(target_os = "linux"))]
    {
        #[cfg(any(target_os = "solaris", target_os = "illumos"))]
        m.bind_device_by_index_v6(std::num::NonZeroU32::new(ifindex))?;
        m.bind(
            &SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::UNSPECIFIED,
                port,
                0,
                0,
            ))
            .into(),
        )?;
    }
    m.join_multicast_v6(&DISCOVERY_GROUP, ifindex)?;
    m.set_multicast_loop_v6(false)?;

    let u = new_socket()?;
    u.bind(
        &SocketAddr::V6(SocketAddrV6::new(local_addr, port, 0, ifindex)).into(),
    )?;
    u.set_multicast_if_v6(ifindex)?;
    u.set_multicast_loop_v6(false)?;
    u.set_multicast_hops_v6(1)?;

    Ok(UdpLink { unicast: into_tokio(u)?, multicast: into_tokio(m)? })
}

/// Read one datagram from either socket: its source and bytes. Sources that
/// are not IPv6 cannot occur on these sockets and are reported as an error.
pub async fn recv(link: &UdpLink) -> io::Result<(SocketAddrV6, Vec<u8>)> {
    let mut ubuf = [0u8; MAX_DATAGRAM];
    let mut mbuf = [0u8; MAX_DATAGRAM];
    let (n, from, buf) = tokio::select! {
        r = link.unicast.recv_from(&mut ubuf) => { let (n, f) = r?; (n, f, &ubuf) }
        r = link.multicast.recv_from(&mut mbuf) => { let (n, f) = r?; (n, f, &mbuf) }
    };
    match from {
        SocketAddr::V6(from) => Ok((from, buf[..n].to_vec())),
        SocketAddr::V4(from) => Err(io::Error::other(format!(
            "IPv4 datagram from {from} on an IPv6-only socket"
        ))),
    }
}

/// Send `payload` to `[to%ifindex]:port` without waiting: a full socket
/// buffer is an error (counted by the caller), never a blocked actor.
pub fn send(
    link: &UdpLink,
    to: Ipv6Addr,
    ifindex: u32,
    port: u16,
    payload: &[u8],
) -> io::Result<()> {
    let dest = SocketAddr::V6(SocketAddrV6::new(to, port, 0, ifindex));
    // Straight to the (non-blocking) socket: tokio's `try_send_to` answers
    // WouldBlock until its reactor has first seen the socket writable, which
    // would lose the first solicitation after every (re)open.
    let n =
        socket2::SockRef::from(&link.unicast).send_to(payload, &dest.into())?;
    if n != payload.len() {
        return Err(io::Error::other(format!(
            "short send: {n} of {} bytes",
            payload.len()
        )));
    }
    Ok(())
}

/// The socket tests run in a namespace of their own, made by the netlink
/// test support.
#[cfg(all(test, target_os = "linux", feature = "netlink"))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The link-local address of interface `ifindex` once it is usable,
    /// read from the calling thread's own namespace.
    fn link_local(ifindex: u32) -> Option<Ipv6Addr> {
        let text =
            std::fs::read_to_string("/proc/thread-self/net/if_inet6").ok()?;
        crate::discovery::iface::parse_if_inet6(&text, ifindex)
    }

    fn free_port(ifindex: u32, addr: Ipv6Addr) -> u16 {
        let s =
            std::net::UdpSocket::bind(SocketAddrV6::new(addr, 0, 0, ifindex))
                .unwrap();
        s.local_addr().unwrap().port()
    }

    /// In a namespace of its own (veth `a0`), so nothing leaves the
    /// machine and the test never depends on the host's interfaces.
    #[test]
    fn unicast_and_multicast_reach_the_link() {
        ddm_dataplane::testns::run(
            "unicast_and_multicast_reach_the_link",
            |ns| async move {
                let ifindex = ns.ifindex("a0");
                let deadline =
                    tokio::time::Instant::now() + Duration::from_secs(10);
                let ll = loop {
                    if let Some(ll) = link_local(ifindex) {
                        break ll;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "a0 never got a usable link-local address"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                reach_the_link(ifindex, ll).await;
            },
        );
    }

    async fn reach_the_link(ifindex: u32, ll: Ipv6Addr) {
        let port = free_port(ifindex, ll);
        let link = open(ifindex, ll, port).unwrap();

        // A neighbour's socket (same host: multicast loop on).
        let peer = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
            .unwrap();
        peer.bind(&SocketAddr::V6(SocketAddrV6::new(ll, 0, 0, ifindex)).into())
            .unwrap();
        peer.set_multicast_if_v6(ifindex).unwrap();
        peer.set_multicast_loop_v6(true).unwrap();
        let peer = std::net::UdpSocket::from(peer);

        for (dest, payload) in [(ll, b"uni"), (DISCOVERY_GROUP, b"mul")] {
            peer.send_to(payload, SocketAddrV6::new(dest, port, 0, ifindex))
                .unwrap();
            let (from, got) =
                tokio::time::timeout(Duration::from_secs(5), recv(&link))
                    .await
                    .expect("datagram not received")
                    .unwrap();
            assert_eq!(got, payload);
            assert_eq!(from.ip(), &ll);
            assert_eq!(from.scope_id(), ifindex);
        }
        // Our own sends do not come back (loop off).
        send(&link, DISCOVERY_GROUP, ifindex, port, b"own").unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), recv(&link))
            .await
            .is_err());
    }
}
