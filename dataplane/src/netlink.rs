//! Link and address events from the Linux kernel.
//!
//! The watcher listens on the rtnetlink multicast groups for links
//! (`RTNLGRP_LINK`) and IPv6 addresses (`RTNLGRP_IPV6_IFADDR`): the kernel
//! pushes a message the moment an interface loses its carrier or an address
//! changes, so nothing is polled. It first reports a snapshot (one `Up` or
//! `Down` per existing link, one `AddressAdded` per IPv6 address), then only
//! changes: repeated kernel messages that change nothing the events carry
//! are dropped. When the kernel dropped messages (its buffer overran), a
//! fresh dump is compared with what was reported: what changed is reported,
//! and a link up in both whose carrier went down meanwhile (the kernel's
//! count of its carrier losses grew) is reported `Down` then `Up`; messages
//! that were queued before the dump and are older than it (a lower count,
//! or a carrier loss at the count the dump saw the link up with) are
//! dropped. A connection that ends (netlink-proto ends it on a receive
//! error), or whose dump fails, is made again after a pause (100 ms,
//! doubling to 5 s) and compared with a fresh dump the same way: without
//! it, the daemon went on with no link events for good (an interface held
//! down stayed down, and routes through nexthop objects the kernel dropped
//! with a link that flapped meanwhile were never put back).
//!
//! ```text
//! kernel ──multicast──▶ netlink connection task ──▶ watcher task ──▶ sink
//! ```
//!
//! The sockets belong to the network namespace of the thread that calls
//! [`spawn_link_watcher`] or [`link_is_up`].

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use slog::{debug, info, o, warn, Logger};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::DataplaneError;

/// A change of a link or of one of its IPv6 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link is administratively up and has a carrier.
    Up {
        /// Interface index.
        ifindex: u32,
        /// Interface name.
        ifname: String,
    },
    /// The link lost its carrier or was set administratively down.
    Down {
        /// Interface index.
        ifindex: u32,
        /// Interface name.
        ifname: String,
    },
    /// The link is gone.
    Removed {
        /// Interface index (no longer valid).
        ifindex: u32,
        /// Interface name it had.
        ifname: String,
    },
    /// An IPv6 address appeared, or its tentative state changed (reported
    /// again with `tentative: false` once duplicate address detection
    /// succeeds).
    AddressAdded {
        /// Interface index.
        ifindex: u32,
        /// The address.
        addr: Ipv6Addr,
        /// Still undergoing (or failed) duplicate address detection: not
        /// usable as a source yet.
        tentative: bool,
    },
    /// An IPv6 address went away.
    AddressRemoved {
        /// Interface index.
        ifindex: u32,
        /// The address.
        addr: Ipv6Addr,
    },
}

/// Link watchers running in this process.
static WATCHING: AtomicUsize = AtomicUsize::new(0);

/// Whether a link watcher runs in this process: carrier loss is then
/// seen as it happens (the Linux dataplane uses kernel nexthop objects,
/// which the kernel drops with their routes on carrier loss, only then).
pub fn links_watched() -> bool {
    WATCHING.load(Ordering::Relaxed) > 0
}

/// The link watcher's netlink receive buffer, in bytes.
const WATCH_RCVBUF: libc::c_int = 1 << 20;

/// Links seen going down or away by the watchers of this process, ever,
/// and times their events may have been lost (an overrun, a connection
/// that ended, one that could not be made or dumped meanwhile).
static LINKS_LOST: AtomicU64 = AtomicU64::new(0);

/// How many links the watchers of this process have seen go down or away:
/// while it has not changed, the kernel has dropped no nexthop object
/// with its link (the Linux dataplane looks its objects up only then).
pub fn links_lost() -> u64 {
    LINKS_LOST.load(Ordering::Relaxed)
}

/// Count a link lost, as a watcher does (tests of the dataplane).
#[cfg(test)]
pub(crate) fn count_link_lost() {
    LINKS_LOST.fetch_add(1, Ordering::Relaxed);
}

/// Held by the tests that count links lost, and by those that tell by the
/// count where a batch runs: the count is the process's.
#[cfg(test)]
pub(crate) fn links_lost_serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One running watcher, counted in [`WATCHING`] while it lives.
struct Watching;

impl Watching {
    fn start() -> Self {
        WATCHING.fetch_add(1, Ordering::Relaxed);
        Watching
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Start watching links and IPv6 addresses; events go to `sink`.
///
/// Must be called within a tokio runtime. The returned task ends when
/// `sink` is closed; aborting it stops the watch. A connection that ends
/// is made again (see the module's docs).
pub fn spawn_link_watcher(
    log: Logger,
    sink: UnboundedSender<LinkEvent>,
) -> Result<JoinHandle<()>, DataplaneError> {
    let log = log.new(o!("component" => "link-watcher"));
    let first = connect(&log).map_err(|e| {
        DataplaneError::Unavailable(format!("netlink multicast socket: {e}"))
    })?;
    let watcher =
        Watcher { sink, links: HashMap::new(), addrs: HashMap::new() };
    let again = log.clone();
    Ok(tokio::spawn(watch(watcher, first, move || connect(&again), log)))
}

/// One connection of the watcher: its dump of every link and address, and
/// the multicast messages.
struct Conn {
    /// The connection's own task, if it has one (aborted with this).
    _task: Option<AbortOnDrop>,
    /// A dump of every link and IPv6 address.
    dump: Box<
        dyn Fn() -> futures::future::BoxFuture<'static, DumpResult>
            + Send
            + Sync,
    >,
    /// The multicast messages, until the connection ends.
    messages: futures::stream::BoxStream<
        'static,
        NetlinkMessage<RouteNetlinkMessage>,
    >,
}

/// Every link and every address, or why not.
type DumpResult = Result<(Vec<LinkMessage>, Vec<AddressMessage>), String>;

/// A multicast connection for links and IPv6 addresses.
fn connect(log: &Logger) -> std::io::Result<Conn> {
    let (mut conn, handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv6Ifaddr,
    ])?;
    // A burst (many links or addresses changing, or a busy runtime) must
    // not overflow the default buffer; if it does, see `Overrun` below.
    let socket = conn.socket_mut().socket_mut();
    if let Err(e) = crate::linux::set_rcvbuf(socket, WATCH_RCVBUF) {
        warn!(log, "could not size the netlink receive buffer"; "error" => %e);
    }
    Ok(Conn {
        _task: Some(AbortOnDrop(tokio::spawn(conn))),
        dump: Box::new(move || {
            let handle = handle.clone();
            Box::pin(async move {
                let links = handle.link().get().execute().try_collect();
                let links: Vec<LinkMessage> =
                    links.await.map_err(|e| e.to_string())?;
                let addrs = handle.address().get().execute().try_collect();
                let addrs: Vec<AddressMessage> =
                    addrs.await.map_err(|e| e.to_string())?;
                Ok((links, addrs))
            })
        }),
        messages: messages.map(|(m, _)| m).boxed(),
    })
}

/// The pause before the connection is made again after `failures` in a
/// row: 100 ms, doubling to 5 s.
fn reconnect_pause(failures: u32) -> std::time::Duration {
    use std::time::Duration;
    crate::backoff_between(
        Duration::from_millis(100),
        Duration::from_secs(5),
        failures + 1,
    )
}

/// Report through `watcher` what `first`, then each connection `connect`
/// makes, dumps and sends, until the sink closes; a connection that ends,
/// or whose dump fails, is made again after a pause.
async fn watch(
    mut watcher: Watcher,
    first: Conn,
    mut connect: impl FnMut() -> std::io::Result<Conn>,
    log: Logger,
) {
    // Counted as watching until this task ends or is aborted.
    let _watching = Watching::start();
    let mut conn = Some(first);
    let mut failures = 0;
    loop {
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                tokio::time::sleep(reconnect_pause(failures)).await;
                failures += 1;
                if watcher.sink.is_closed() {
                    return;
                }
                match connect() {
                    Ok(c) => c,
                    Err(e) => {
                        // Still no events: links may go down unseen.
                        LINKS_LOST.fetch_add(1, Ordering::Relaxed);
                        warn!(log, "netlink multicast socket"; "error" => %e);
                        continue;
                    }
                }
            }
        };
        // At start every link and address; after a connection ended, what
        // changed meanwhile.
        if let Err(e) = watcher.dump((c.dump)()).await {
            LINKS_LOST.fetch_add(1, Ordering::Relaxed);
            warn!(log, "link and address dump failed; connecting again";
                "error" => %e);
            continue;
        }
        if watcher.sink.is_closed() {
            return;
        }
        info!(log, "watching links and addresses";
            "links" => watcher.links.len(),
            "addresses" => watcher.addrs.len());
        while let Some(message) = c.messages.next().await {
            // A connection that delivers: the pause starts short again
            // (one that ends after each dump waits longer each time).
            failures = 0;
            if let NetlinkPayload::Overrun(_) = message.payload {
                // Events were dropped: a link may have gone down (and its
                // nexthop objects with it) and come back unseen. Compare
                // with a fresh dump, and count a link lost either way.
                LINKS_LOST.fetch_add(1, Ordering::Relaxed);
                warn!(
                    log,
                    "link events were lost (netlink overrun); \
                    comparing with a fresh dump"
                );
                if let Err(e) = watcher.dump((c.dump)()).await {
                    warn!(log, "link and address dump failed; connecting \
                        again"; "error" => %e);
                    break;
                }
            } else {
                watcher.handle(message);
            }
            if watcher.sink.is_closed() {
                debug!(log, "event sink closed, stopping");
                return;
            }
        }
        // Events may be lost until the next connection's dump: a link may
        // go down (its nexthop objects with it) meanwhile.
        LINKS_LOST.fetch_add(1, Ordering::Relaxed);
        warn!(log, "netlink multicast connection ended; connecting again");
    }
}

/// Whether `ifname` is up (administratively and operationally), `None` if
/// there is no such interface or it cannot be asked.
pub fn link_is_up(ifname: &str) -> Option<bool> {
    let name = CString::new(ifname).ok()?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain socket creation; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is an open socket and req a valid ifreq for SIOCGIFFLAGS.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) };
    // SAFETY: fd is ours and open.
    unsafe { libc::close(fd) };
    if r < 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS filled in the flags member.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    let want = libc::IFF_UP | libc::IFF_RUNNING;
    Some(flags & want == want)
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the watcher last reported, to drop repeats.
struct Watcher {
    /// Where events go.
    sink: UnboundedSender<LinkEvent>,
    /// ifindex → what was last reported of the link.
    links: HashMap<u32, Seen>,
    /// (ifindex, address) → tentative.
    addrs: HashMap<(u32, Ipv6Addr), bool>,
}

impl Watcher {
    /// Report what differs from a fresh dump of every link and address:
    /// at start, when nothing is reported yet, every one of them; after
    /// lost events, what changed meanwhile.
    async fn dump(
        &mut self,
        dump: futures::future::BoxFuture<'static, DumpResult>,
    ) -> Result<(), String> {
        let (links, addrs) = dump.await?;
        self.reconcile(&links, &addrs);
        Ok(())
    }

    /// Report what differs between what was reported and `links` and
    /// `addrs`, a dump of every link and address: links and addresses
    /// gone, then every link and address as it is (repeats are dropped).
    fn reconcile(&mut self, links: &[LinkMessage], addrs: &[AddressMessage]) {
        let present: HashSet<u32> = links
            .iter()
            .filter(|l| l.header.interface_family == AddressFamily::Unspec)
            .map(|l| l.header.index)
            .collect();
        let gone: Vec<(u32, String)> = self
            .links
            .iter()
            .filter(|(i, _)| !present.contains(i))
            .map(|(i, seen)| (*i, seen.name.clone()))
            .collect();
        for (ifindex, ifname) in gone {
            self.links.remove(&ifindex);
            self.addrs.retain(|(i, _), _| *i != ifindex);
            self.send(LinkEvent::Removed { ifindex, ifname });
        }
        let now: HashSet<(u32, Ipv6Addr)> = addrs
            .iter()
            .filter_map(ipv6_address)
            .map(|(i, a, _)| (i, a))
            .collect();
        let lost: Vec<(u32, Ipv6Addr)> =
            self.addrs.keys().filter(|k| !now.contains(k)).copied().collect();
        for (ifindex, addr) in lost {
            self.addrs.remove(&(ifindex, addr));
            self.send(LinkEvent::AddressRemoved { ifindex, addr });
        }
        for link in links {
            self.flapped_unseen(link);
            self.link_is(link);
        }
        for addr in addrs {
            self.address_added(addr);
        }
    }

    /// Turn one kernel message into events.
    fn handle(&mut self, message: NetlinkMessage<RouteNetlinkMessage>) {
        if let NetlinkPayload::InnerMessage(m) = message.payload {
            match m {
                RouteNetlinkMessage::NewLink(link) => self.link_changed(&link),
                RouteNetlinkMessage::DelLink(link) => self.link_removed(&link),
                RouteNetlinkMessage::NewAddress(a) => self.address_added(&a),
                RouteNetlinkMessage::DelAddress(a) => self.address_removed(&a),
                _ => {}
            }
        }
    }

    fn send(&self, event: LinkEvent) {
        if matches!(event, LinkEvent::Down { .. } | LinkEvent::Removed { .. }) {
            LINKS_LOST.fetch_add(1, Ordering::Relaxed);
        }
        // A closed sink is noticed by the caller.
        let _ = self.sink.send(event);
    }

    /// A link message from the kernel: dropped if it was queued before a
    /// dump that saw later carrier losses of the link (stale). So is a
    /// carrier loss (the link set up, without a carrier) whose count is
    /// the one seen with the link up: the kernel counts a loss before it
    /// builds its message, so a loss after the link was seen up carries a
    /// higher count; this one was queued before a dump that saw the link
    /// up again after it, the message of its return lost in the overrun.
    /// (Reported, it would hold the link down until its next change.)
    fn link_changed(&mut self, link: &LinkMessage) {
        if let Some(seen) = self.links.get(&link.header.index) {
            if let (Some(before), Some(downs)) =
                (seen.downs, carrier_downs(link))
            {
                let carrier_lost = link.header.flags.contains(LinkFlags::Up)
                    && !link.header.flags.contains(LinkFlags::LowerUp);
                if downs < before
                    || (downs == before && seen.up && carrier_lost)
                {
                    return;
                }
            }
        }
        self.link_is(link);
    }

    /// Report the link as `link` says it is, if that changes what was
    /// reported.
    fn link_is(&mut self, link: &LinkMessage) {
        // Bridge-port and other per-family messages are not link changes.
        if link.header.interface_family != AddressFamily::Unspec {
            return;
        }
        let ifindex = link.header.index;
        let downs = carrier_downs(link);
        let up = is_up(link);
        let ifname = link_name(link)
            .or_else(|| self.links.get(&ifindex).map(|s| s.name.clone()))
            .unwrap_or_default();
        let seen = Seen { name: ifname.clone(), up, downs };
        let previous = self.links.insert(ifindex, seen);
        if previous.is_some_and(|p| p.up == up) {
            return;
        }
        self.send(if up {
            LinkEvent::Up { ifindex, ifname }
        } else {
            LinkEvent::Down { ifindex, ifname }
        });
    }

    /// A link of a dump taken after lost events that was up when last
    /// reported and is up again, but whose carrier went down meanwhile
    /// (the kernel's count of carrier losses grew): the kernel may have
    /// dropped its nexthop objects, and every route through them, with
    /// nothing reported. It is reported down here (then up by
    /// [`Watcher::link_is`]), so that its peer ends and its routes
    /// are sent again when the peer is back, as after a loss that was seen.
    fn flapped_unseen(&mut self, link: &LinkMessage) {
        if link.header.interface_family != AddressFamily::Unspec {
            return;
        }
        let ifindex = link.header.index;
        let Some(seen) = self.links.get_mut(&ifindex) else {
            return;
        };
        let lost = match (seen.downs, carrier_downs(link)) {
            (Some(before), Some(now)) => now != before,
            _ => false,
        };
        if !(seen.up && is_up(link) && lost) {
            return;
        }
        seen.up = false;
        let ifname = seen.name.clone();
        self.send(LinkEvent::Down { ifindex, ifname });
    }

    fn link_removed(&mut self, link: &LinkMessage) {
        if link.header.interface_family != AddressFamily::Unspec {
            return;
        }
        let ifindex = link.header.index;
        let known = self.links.remove(&ifindex).map(|s| s.name);
        let ifname = link_name(link).or(known).unwrap_or_default();
        self.addrs.retain(|(i, _), _| *i != ifindex);
        self.send(LinkEvent::Removed { ifindex, ifname });
    }

    fn address_added(&mut self, msg: &AddressMessage) {
        let Some((ifindex, addr, tentative)) = ipv6_address(msg) else {
            return;
        };
        let previous = self.addrs.insert((ifindex, addr), tentative);
        if previous != Some(tentative) {
            self.send(LinkEvent::AddressAdded { ifindex, addr, tentative });
        }
    }

    fn address_removed(&mut self, msg: &AddressMessage) {
        let Some((ifindex, addr, _)) = ipv6_address(msg) else {
            return;
        };
        self.addrs.remove(&(ifindex, addr));
        self.send(LinkEvent::AddressRemoved { ifindex, addr });
    }
}

/// What the watcher last reported of a link.
struct Seen {
    /// Its name.
    name: String,
    /// Whether it was up (administratively, running, with a carrier).
    up: bool,
    /// The kernel's count of its carrier losses then (`None` from a
    /// kernel before 4.16, which has no such count).
    downs: Option<u32>,
}

/// Whether a link is up: administratively, running and with a carrier.
fn is_up(link: &LinkMessage) -> bool {
    link.header
        .flags
        .contains(LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp)
}

/// The kernel's count of the link's carrier losses
/// (`IFLA_CARRIER_DOWN_COUNT`). Setting a veth down counts too, as it does
/// for any link whose driver drops its carrier when stopped; a flap of a
/// link whose driver keeps it would go unseen after lost events.
fn carrier_downs(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::CarrierDownCount(n) => Some(*n),
        _ => None,
    })
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// (ifindex, address, tentative) of an IPv6 address message.
fn ipv6_address(msg: &AddressMessage) -> Option<(u32, Ipv6Addr, bool)> {
    if msg.header.family != AddressFamily::Inet6 {
        return None;
    }
    let mut addr = None;
    let mut flags = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Address(IpAddr::V6(a)) => addr = Some(*a),
            AddressAttribute::Flags(f) => flags = Some(*f),
            _ => {}
        }
    }
    // The 32-bit attribute, when present, supersedes the header's 8 bits.
    let tentative = match flags {
        Some(f) => {
            f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed)
        }
        None => msg.header.flags.intersects(
            AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed,
        ),
    };
    Some((msg.header.index, addr?, tentative))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use slog::o;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use super::*;
    use crate::testns;

    const DEADLINE: Duration = Duration::from_secs(5);

    /// Wait for the first event matching `want`, skipping others; panics
    /// at the deadline. Returns how long it took.
    async fn expect(
        events: &mut UnboundedReceiver<LinkEvent>,
        what: &str,
        want: impl Fn(&LinkEvent) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(e)) if want(&e) => return started.elapsed(),
                Ok(Some(_)) => {}
                Ok(None) => panic!("watcher stopped while waiting for {what}"),
                Err(_) => panic!("no {what} within {DEADLINE:?}"),
            }
        }
    }

    /// Link a0's (index 2) event, up or down.
    fn a0(up: bool) -> LinkEvent {
        let ifname = "a0".into();
        if up {
            LinkEvent::Up { ifindex: 2, ifname }
        } else {
            LinkEvent::Down { ifindex: 2, ifname }
        }
    }

    fn link(ifindex: u32, name: &str, up: bool) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = ifindex;
        l.header.interface_family = AddressFamily::Unspec;
        if up {
            l.header.flags =
                LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp;
        }
        l.attributes.push(LinkAttribute::IfName(name.to_string()));
        l
    }

    fn address(ifindex: u32, addr: &str) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet6;
        a.header.index = ifindex;
        let addr: Ipv6Addr = addr.parse().unwrap();
        a.attributes.push(AddressAttribute::Address(IpAddr::V6(addr)));
        a
    }

    /// After lost events, a fresh dump is compared with what was
    /// reported: what went away is reported gone, what changed or came
    /// is reported as it is, and what did not change is not repeated.
    #[test]
    fn a_fresh_dump_after_lost_events_reports_the_differences() {
        let _serial = links_lost_serial();
        let (tx, mut rx) = unbounded_channel();
        let mut w =
            Watcher { sink: tx, links: HashMap::new(), addrs: HashMap::new() };
        w.link_changed(&link(2, "a0", true));
        w.link_changed(&link(3, "b0", true));
        w.link_changed(&link(5, "d0", true));
        w.address_added(&address(2, "fe80::1"));
        w.address_added(&address(5, "fe80::5"));
        while rx.try_recv().is_ok() {}
        w.reconcile(
            &[link(2, "a0", false), link(4, "c0", true), link(5, "d0", true)],
            &[address(4, "fe80::4"), address(5, "fe80::5")],
        );
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        let fe80 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            got,
            [
                LinkEvent::Removed { ifindex: 3, ifname: "b0".into() },
                LinkEvent::AddressRemoved { ifindex: 2, addr: fe80("fe80::1") },
                LinkEvent::Down { ifindex: 2, ifname: "a0".into() },
                LinkEvent::Up { ifindex: 4, ifname: "c0".into() },
                LinkEvent::AddressAdded {
                    ifindex: 4,
                    addr: fe80("fe80::4"),
                    tentative: false,
                },
            ]
        );
    }

    /// A link that went down and came back while events were lost is
    /// reported down and up when the kernel's count of its carrier losses
    /// grew; one whose count did not, or that has none, is not.
    #[test]
    fn a_flap_hidden_by_lost_events_is_reported() {
        let _serial = links_lost_serial();
        let (tx, mut rx) = unbounded_channel();
        let mut w =
            Watcher { sink: tx, links: HashMap::new(), addrs: HashMap::new() };
        let counted = |i, name, downs| {
            let mut l = link(i, name, true);
            l.attributes.push(LinkAttribute::CarrierDownCount(downs));
            l
        };
        w.link_changed(&counted(2, "a0", 1));
        w.link_changed(&counted(3, "b0", 1));
        w.link_changed(&link(4, "c0", true));
        while rx.try_recv().is_ok() {}
        let dump =
            [counted(2, "a0", 2), counted(3, "b0", 1), link(4, "c0", true)];
        w.reconcile(&dump, &[]);
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(e);
        }
        assert_eq!(
            got,
            [
                LinkEvent::Down { ifindex: 2, ifname: "a0".into() },
                LinkEvent::Up { ifindex: 2, ifname: "a0".into() },
            ]
        );
        // The count now known, the same dump again reports nothing, nor do
        // messages queued before it (a lower count).
        w.reconcile(&dump, &[]);
        let mut stale = counted(2, "a0", 1);
        stale.header.flags = LinkFlags::empty();
        w.link_changed(&stale);
        assert!(rx.try_recv().is_err());
        // A later loss is reported.
        let mut down = counted(2, "a0", 3);
        down.header.flags = LinkFlags::empty();
        w.link_changed(&down);
        assert_eq!(rx.try_recv().unwrap(), a0(false));
        // The up that followed came through; then events were lost again
        // while the carrier went down and came back: the dump sees the
        // link up at the count of that loss, and the loss's own message,
        // queued before the dump, comes after it. It is stale: the link
        // stays up.
        w.link_changed(&counted(2, "a0", 3));
        assert_eq!(rx.try_recv().unwrap(), a0(true));
        let dump =
            [counted(2, "a0", 4), counted(3, "b0", 1), link(4, "c0", true)];
        w.reconcile(&dump, &[]);
        assert_eq!(rx.try_recv().unwrap(), a0(false));
        assert_eq!(rx.try_recv().unwrap(), a0(true));
        let mut lost = counted(2, "a0", 4);
        lost.header.flags = LinkFlags::Up;
        w.link_changed(&lost);
        assert!(rx.try_recv().is_err(), "a stale carrier loss was reported");
        // Set down by hand, at the same count (a driver that keeps its
        // carrier counts no loss): reported.
        let mut admin_down = counted(2, "a0", 4);
        admin_down.header.flags = LinkFlags::empty();
        w.link_changed(&admin_down);
        assert_eq!(rx.try_recv().unwrap(), a0(false));
        // Set up again without a carrier, at that count: the link was
        // seen down, so nothing stale about it (and nothing to report).
        w.link_changed(&lost);
        assert!(rx.try_recv().is_err());
        // Its carrier back, then lost: a higher count, reported.
        w.link_changed(&counted(2, "a0", 4));
        assert_eq!(rx.try_recv().unwrap(), a0(true));
        let mut later = counted(2, "a0", 5);
        later.header.flags = LinkFlags::Up;
        w.link_changed(&later);
        assert_eq!(rx.try_recv().unwrap(), a0(false));
        // A dump is taken as it is, even with a lower count (the link
        // re-created under the same index while events were lost).
        let dump =
            [counted(2, "a0", 0), counted(3, "b0", 1), link(4, "c0", true)];
        w.reconcile(&dump, &[]);
        assert_eq!(rx.try_recv().unwrap(), a0(true));
    }

    /// A connection whose messages end, and one whose dump fails, are
    /// made again after a pause; the next dump is compared with what was
    /// reported (here a flap that the carrier count tells), and a link is
    /// counted lost.
    #[test]
    fn a_connection_that_ends_is_made_again_and_compared() {
        let _serial = links_lost_serial();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            type Sender = futures::channel::mpsc::UnboundedSender<
                NetlinkMessage<RouteNetlinkMessage>,
            >;
            let counted = |downs| {
                let mut l = link(2, "a0", true);
                l.attributes.push(LinkAttribute::CarrierDownCount(downs));
                l
            };
            // A connection that dumps `dump`; its messages end when the
            // sender returned is dropped.
            let fake = |dump: DumpResult| -> (Conn, Sender) {
                let (tx, messages) = futures::channel::mpsc::unbounded();
                let conn = Conn {
                    _task: None,
                    dump: Box::new(move || {
                        let d = dump.clone();
                        Box::pin(async move { d })
                    }),
                    messages: messages.boxed(),
                };
                (conn, tx)
            };
            let (first, ended) = fake(Ok((vec![counted(1)], vec![])));
            drop(ended);
            let (failing, _unused) = fake(Err("dump refused".into()));
            let (third, open) = fake(Ok((vec![counted(2)], vec![])));
            let later = std::sync::Mutex::new(vec![third, failing]);
            let made = std::sync::Arc::new(AtomicUsize::new(0));
            let counting = std::sync::Arc::clone(&made);
            let (tx, mut rx) = unbounded_channel();
            let watcher = Watcher {
                sink: tx,
                links: HashMap::new(),
                addrs: HashMap::new(),
            };
            let lost = links_lost();
            let start = tokio::time::Instant::now();
            let task = tokio::spawn(watch(
                watcher,
                first,
                move || {
                    counting.fetch_add(1, Ordering::Relaxed);
                    later.lock().unwrap().pop().ok_or_else(|| {
                        std::io::Error::other("no more connections")
                    })
                },
                slog::Logger::root(slog::Discard, o!()),
            ));
            for want in [a0(true), a0(false), a0(true)] {
                assert_eq!(rx.recv().await, Some(want));
            }
            assert_eq!(
                made.load(Ordering::Relaxed),
                2,
                "the failing, the third"
            );
            // 100 ms after the first ended, 200 ms after the dump failed.
            assert_eq!(start.elapsed(), Duration::from_millis(300));
            assert_eq!(
                links_lost(),
                lost + 3,
                "the end, the failed dump, and the flap"
            );
            task.abort();
            drop(open);
        });
    }

    /// The kernel's own dumps carry the count a hidden flap is told by: a
    /// watcher given only a dump before and one after the peer's end went
    /// down and up reports the link down and up.
    #[test]
    fn a_flap_between_two_dumps_is_reported() {
        let _serial = links_lost_serial();
        testns::run("a_flap_between_two_dumps_is_reported", |ns| async move {
            let a0 = ns.ifindex("a0");
            let log = slog::Logger::root(slog::Discard, o!());
            let conn = connect(&log).expect("netlink");
            let (tx, mut rx) = unbounded_channel();
            let mut w = Watcher {
                sink: tx,
                links: HashMap::new(),
                addrs: HashMap::new(),
            };
            w.dump((conn.dump)()).await.expect("first dump");
            while rx.try_recv().is_ok() {}
            ns.ip(&["link", "set", "dev", "a1", "down"]);
            ns.ip(&["link", "set", "dev", "a1", "up"]);
            let deadline = Instant::now() + DEADLINE;
            let mut got = Vec::new();
            // The carrier comes back through the kernel's link watch, up
            // to a second later: dump until a0 is up again.
            while got.len() < 2 {
                assert!(Instant::now() < deadline, "a0 reported {got:?}");
                if link_is_up("a0") == Some(true) {
                    w.dump((conn.dump)()).await.expect("second dump");
                    while let Ok(e) = rx.try_recv() {
                        if let LinkEvent::Down { ifindex, .. }
                        | LinkEvent::Up { ifindex, .. } = e
                        {
                            if ifindex == a0 {
                                got.push(e);
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                got,
                [
                    LinkEvent::Down { ifindex: a0, ifname: "a0".into() },
                    LinkEvent::Up { ifindex: a0, ifname: "a0".into() },
                ]
            );
            drop(conn);
        });
    }

    #[test]
    fn reports_link_and_address_changes() {
        let _serial = links_lost_serial();
        testns::run("reports_link_and_address_changes", |ns| async move {
            let log = Logger::root(slog::Discard, o!());
            let (a0, b0) = (ns.ifindex("a0"), ns.ifindex("b0"));
            let (tx, mut rx) = unbounded_channel();
            let task = spawn_link_watcher(log, tx).expect("watcher");

            // The snapshot: every link, up.
            for (i, name) in [(a0, "a0"), (b0, "b0")] {
                expect(&mut rx, &format!("initial Up for {name}"), |e| {
                    *e == LinkEvent::Up { ifindex: i, ifname: name.into() }
                })
                .await;
            }
            assert_eq!(link_is_up("a0"), Some(true));
            assert_eq!(link_is_up("nonexistent0"), None);

            // Carrier loss: the peer end goes down.
            ns.ip(&["link", "set", "dev", "a1", "down"]);
            let took = expect(&mut rx, "Down for a0 (carrier)", |e| {
                *e == LinkEvent::Down { ifindex: a0, ifname: "a0".into() }
            })
            .await;
            eprintln!("carrier loss reported {took:?} after `ip` returned");
            assert_eq!(link_is_up("a0"), Some(false));

            ns.ip(&["link", "set", "dev", "a1", "up"]);
            expect(&mut rx, "Up for a0", |e| {
                *e == LinkEvent::Up { ifindex: a0, ifname: "a0".into() }
            })
            .await;

            // Administratively down.
            ns.ip(&["link", "set", "dev", "a0", "down"]);
            let took = expect(&mut rx, "Down for a0 (admin)", |e| {
                *e == LinkEvent::Down { ifindex: a0, ifname: "a0".into() }
            })
            .await;
            eprintln!("admin down reported {took:?} after `ip` returned");
            ns.ip(&["link", "set", "dev", "a0", "up"]);
            expect(&mut rx, "Up for a0 again", |e| {
                *e == LinkEvent::Up { ifindex: a0, ifname: "a0".into() }
            })
            .await;

            // Addresses: without and with duplicate address detection.
            let quick: Ipv6Addr = "fd00::1".parse().unwrap();
            ns.ip(&["addr", "add", "fd00::1/64", "dev", "a0", "nodad"]);
            expect(&mut rx, "AddressAdded fd00::1", |e| {
                *e == LinkEvent::AddressAdded {
                    ifindex: a0,
                    addr: quick,
                    tentative: false,
                }
            })
            .await;
            let slow: Ipv6Addr = "fd00::2".parse().unwrap();
            ns.ip(&["addr", "add", "fd00::2/64", "dev", "a0"]);
            expect(&mut rx, "tentative AddressAdded fd00::2", |e| {
                *e == LinkEvent::AddressAdded {
                    ifindex: a0,
                    addr: slow,
                    tentative: true,
                }
            })
            .await;
            ns.ip(&["addr", "del", "fd00::1/64", "dev", "a0"]);
            expect(&mut rx, "AddressRemoved fd00::1", |e| {
                *e == LinkEvent::AddressRemoved { ifindex: a0, addr: quick }
            })
            .await;

            // Removal.
            ns.ip(&["link", "del", "b0"]);
            expect(&mut rx, "Removed b0", |e| {
                *e == LinkEvent::Removed { ifindex: b0, ifname: "b0".into() }
            })
            .await;

            // Closing the sink ends the watcher at its next message.
            drop(rx);
            ns.ip(&["link", "set", "dev", "a0", "down"]);
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("watcher ends once its sink is closed")
                .expect("watcher task");
        });
    }
}
