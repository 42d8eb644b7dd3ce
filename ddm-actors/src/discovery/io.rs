//! The packet I/O seam of discovery: real UDP sockets, or an in-memory
//! point-to-point link for tests and simulated fabrics.
//!
//! ```text
//!   MemoryPort A                         MemoryPort B
//!   send(to, bytes) ──▶ B's inbound ──▶ B.subscribe() / B's reader
//!   A's reader ◀── A's inbound ◀────── send(to, bytes)
//! ```
//!
//! A memory link delivers what is sent to the group or to the other end's
//! address, stamped with the sender's address and the receiver's interface
//! index as scope id (as a kernel would); anything else is lost, as on a
//! wire.

use std::io;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::iface::{self, NotReady};
use super::socket::{self, UdpLink, DISCOVERY_GROUP, DISCOVERY_PORT};

/// How a discovery actor sends and receives packets.
#[derive(Debug, Clone)]
pub enum PacketIo {
    /// UDP sockets on the named interface, on this port (normally
    /// [`DISCOVERY_PORT`]).
    Udp {
        /// The discovery port.
        port: u16,
    },
    /// One end of an in-memory link.
    Memory(MemoryPort),
}

impl PacketIo {
    /// Real sockets on the standard port.
    pub fn udp() -> Self {
        PacketIo::Udp { port: DISCOVERY_PORT }
    }

    /// The interface's current index and usable link-local address, to
    /// notice an open link that went stale (interface re-created, address
    /// changed or gone). Reads `/proc` on Linux: cheap, never blocks long.
    pub(crate) fn current(
        &self,
        ifname: &str,
    ) -> Result<(u32, Ipv6Addr), NotReady> {
        match self {
            PacketIo::Udp { .. } => iface::resolve(ifname),
            PacketIo::Memory(port) => {
                Ok((port.current_index(), port.local_addr))
            }
        }
    }

    /// Resolve the interface and open it. Must not block: called from the
    /// actor's handlers (every step is a quick system call).
    pub(crate) fn open(&self, ifname: &str) -> Result<OpenLink, NotReady> {
        match self {
            PacketIo::Udp { port } => {
                let (ifindex, local_addr) = iface::resolve(ifname)?;
                let link = std::sync::Arc::new(socket::open(
                    ifindex, local_addr, *port,
                )?);
                Ok(OpenLink {
                    ifindex,
                    local_addr,
                    tx: LinkTx::Udp { link: link.clone(), port: *port },
                    rx: LinkRx::Udp(link),
                })
            }
            PacketIo::Memory(port) => Ok(OpenLink {
                ifindex: port.current_index(),
                local_addr: port.local_addr,
                rx: LinkRx::Memory(port.inbound.subscribe()),
                tx: LinkTx::Memory(port.clone()),
            }),
        }
    }
}

/// An interface ready for discovery.
#[derive(Debug)]
pub(crate) struct OpenLink {
    /// Its index.
    pub ifindex: u32,
    /// Our usable link-local address on it.
    pub local_addr: Ipv6Addr,
    /// The sending half (kept by the actor).
    pub tx: LinkTx,
    /// The receiving half (moved into the reader task).
    pub rx: LinkRx,
}

/// The sending half of an open link.
#[derive(Debug)]
pub(crate) enum LinkTx {
    /// UDP sockets.
    Udp {
        /// The sockets (shared with the reader).
        link: std::sync::Arc<UdpLink>,
        /// Destination port.
        port: u16,
    },
    /// In memory.
    Memory(MemoryPort),
}

impl LinkTx {
    /// Send without waiting.
    pub fn send(
        &self,
        to: Ipv6Addr,
        ifindex: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        match self {
            LinkTx::Udp { link, port } => {
                socket::send(link, to, ifindex, *port, payload)
            }
            LinkTx::Memory(p) => {
                p.send(to, payload.to_vec());
                Ok(())
            }
        }
    }
}

/// The receiving half of an open link.
#[derive(Debug)]
pub(crate) enum LinkRx {
    /// UDP sockets.
    Udp(std::sync::Arc<UdpLink>),
    /// In memory.
    Memory(broadcast::Receiver<MemoryDatagram>),
}

impl LinkRx {
    /// The next datagram: source (with scope id) and bytes.
    pub async fn recv(&mut self) -> io::Result<(SocketAddrV6, Vec<u8>)> {
        match self {
            LinkRx::Udp(link) => socket::recv(link).await,
            LinkRx::Memory(rx) => loop {
                match rx.recv().await {
                    Ok(d) => return Ok((d.from, d.payload)),
                    // Lost datagrams, as on a congested wire.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(io::Error::other("memory link closed"))
                    }
                }
            },
        }
    }
}

/// A datagram on a memory link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDatagram {
    /// Source, with the receiving end's interface index as scope id.
    pub from: SocketAddrV6,
    /// Destination: the group or the receiver's link-local address.
    pub to: Ipv6Addr,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// Datagrams a memory link buffers per receiver before the oldest are lost.
/// Discovery sends a few per second and its reader takes each at once (on
/// paused time, the clock moves only once every reader has drained);
/// every slot is allocated up front: 1,024 made the links 28 MB of a
/// 72-router simulation's 52 MB of heap, 128 still 28 MB of the 548-router
/// one's 520 MB.
const MEMORY_LINK_DEPTH: usize = 32;

/// One end of an in-memory point-to-point link. Cloning gives another
/// handle on the same end.
#[derive(Debug, Clone)]
pub struct MemoryPort {
    /// This end's link-local address.
    pub local_addr: Ipv6Addr,
    /// What this end receives.
    inbound: broadcast::Sender<MemoryDatagram>,
    /// What the other end receives.
    remote: broadcast::Sender<MemoryDatagram>,
    /// The other end's interface index now (scope id of what it
    /// receives; its [`MemoryPort::recreate`] changes it).
    remote_index: Arc<std::sync::atomic::AtomicU32>,
    /// The other end's address (unicast to anything else is lost).
    remote_addr: Ipv6Addr,
    /// The cable, shared by both ends: whether it carries, and what it
    /// carried.
    wire: Arc<Wire>,
    /// This end's interface index: the one it was made with, until
    /// [`MemoryPort::recreate`]; shared by every handle on this end.
    index: Arc<std::sync::atomic::AtomicU32>,
}

/// The state both ends of a memory link share.
#[derive(Debug)]
struct Wire {
    /// Whether the link carries anything (a cut cable does not).
    up: AtomicBool,
    /// Datagrams delivered so far, both ways.
    carried: AtomicU64,
}

impl MemoryPort {
    /// A link between two ends given as (interface index, link-local
    /// address).
    pub fn pair(
        a: (u32, Ipv6Addr),
        b: (u32, Ipv6Addr),
    ) -> (MemoryPort, MemoryPort) {
        let (a_in, _) = broadcast::channel(MEMORY_LINK_DEPTH);
        let (b_in, _) = broadcast::channel(MEMORY_LINK_DEPTH);
        let wire = Arc::new(Wire {
            up: AtomicBool::new(true),
            carried: AtomicU64::new(0),
        });
        let a_index = Arc::new(std::sync::atomic::AtomicU32::new(a.0));
        let b_index = Arc::new(std::sync::atomic::AtomicU32::new(b.0));
        (
            MemoryPort {
                local_addr: a.1,
                inbound: a_in.clone(),
                remote: b_in.clone(),
                remote_index: b_index.clone(),
                remote_addr: b.1,
                wire: wire.clone(),
                index: a_index.clone(),
            },
            MemoryPort {
                local_addr: b.1,
                inbound: b_in,
                remote: a_in,
                remote_index: a_index,
                remote_addr: a.1,
                wire,
                index: b_index,
            },
        )
    }

    /// Send from this end's address.
    pub fn send(&self, to: Ipv6Addr, payload: Vec<u8>) {
        self.send_as(self.local_addr, to, payload)
    }

    /// Send with any source address (to simulate a renumbered or rogue
    /// neighbour).
    pub fn send_as(&self, from: Ipv6Addr, to: Ipv6Addr, payload: Vec<u8>) {
        if to != DISCOVERY_GROUP && to != self.remote_addr {
            return;
        }
        if !self.is_up() {
            // A cut cable: lost, and no carrier change is reported (the
            // far end learns it only from its peer falling silent).
            return;
        }
        self.wire.carried.fetch_add(1, Ordering::Relaxed);
        // No receiver yet is like no one listening on the wire.
        let _ = self.remote.send(MemoryDatagram {
            from: SocketAddrV6::new(
                from,
                DISCOVERY_PORT,
                0,
                self.remote_index.load(Ordering::Relaxed),
            ),
            to,
            payload,
        });
    }

    /// Cut (`false`) or mend (`true`) the link, for both ends: while cut,
    /// nothing sent either way is delivered. Datagrams already delivered
    /// to a receiver's queue stay there, as on a wire.
    pub fn set_up(&self, up: bool) {
        self.wire.up.store(up, Ordering::Relaxed);
    }

    /// Whether the link carries (see [`MemoryPort::set_up`]).
    pub fn is_up(&self) -> bool {
        self.wire.up.load(Ordering::Relaxed)
    }

    /// Datagrams the link delivered so far, both ways.
    pub fn carried(&self) -> u64 {
        self.wire.carried.load(Ordering::Relaxed)
    }

    /// Everything this end receives from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemoryDatagram> {
        self.inbound.subscribe()
    }

    /// Re-create this end's interface under `ifindex` (as when a link is
    /// deleted and made again): the discovery actor resolves and opens it
    /// under that index from now on.
    pub fn recreate(&self, ifindex: u32) {
        self.index.store(ifindex, Ordering::Relaxed);
    }

    /// This end's interface index now.
    pub fn current_index(&self) -> u32 {
        self.index.load(Ordering::Relaxed)
    }

    /// How many receivers listen on this end (a discovery actor's reader
    /// task is one while it runs).
    pub fn listeners(&self) -> usize {
        self.inbound.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_memory_link_carries_nothing_either_way_until_mended() {
        let a: Ipv6Addr = "fe80::a".parse().unwrap();
        let b: Ipv6Addr = "fe80::b".parse().unwrap();
        let (pa, pb) = MemoryPort::pair((1, a), (2, b));
        let (mut ra, mut rb) = (pa.subscribe(), pb.subscribe());
        pa.send(b, vec![1]);
        assert_eq!(rb.try_recv().unwrap().payload, vec![1]);
        // Either end (or a clone) cuts the cable for both.
        pb.clone().set_up(false);
        assert!(!pa.is_up());
        pa.send(DISCOVERY_GROUP, vec![2]);
        pb.send(a, vec![3]);
        assert!(rb.try_recv().is_err());
        assert!(ra.try_recv().is_err());
        pa.set_up(true);
        pb.send(a, vec![4]);
        assert_eq!(ra.try_recv().unwrap().payload, vec![4]);
        assert_eq!(pa.carried(), 2);
    }
}
