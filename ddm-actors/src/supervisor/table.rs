//! The supervisor's peer table, pure: one record per interface, changed by
//! discovery events, exchange actors stopping and router restarts, and
//! answering `GET /peers`. Each method takes the event (and `now` where a
//! duration is measured) and returns the [`Action`]s the supervisor actor
//! carries out, in order; nothing here spawns, awaits or reads a clock.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use ddm_admin_api::latest::PeerInfo;
use ddm_admin_api::PeerMap;
use ddm_proto::PeerId;
use tokio::time::Instant;

use crate::discovery::{DiscoveryEvent, DiscoveryState, PeerIdentity};

/// What the supervisor actor must do after a table change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an exchange actor for this peer on this interface; report
    /// the outcome with [`PeerTable::exchange_started`] or
    /// [`PeerTable::exchange_start_failed`].
    StartExchange {
        /// The interface.
        ifindex: u32,
        /// Our link-local address there.
        local_addr: Ipv6Addr,
        /// The peer.
        peer: PeerIdentity,
    },
    /// Stop the exchange actor of this interface (waiting, so that its
    /// port is free for the next one).
    StopExchange {
        /// The interface.
        ifindex: u32,
    },
    /// Tell the router the peer is gone.
    PeerDown(PeerId),
    /// Tell the router an interface was re-created under a new index.
    InterfaceMoved {
        /// The old index.
        from: u32,
        /// The new one.
        to: u32,
    },
    /// Ask the discovery actor of interface `ifname` (every one, when
    /// `None`) to expire the peer with this address. Routers commonly
    /// use one link-local address on every port, so a failure on one link
    /// expires the peer on that link only.
    Expire {
        /// The interface, if the peer's is known.
        ifname: Option<String>,
        /// The peer's address.
        addr: Ipv6Addr,
    },
}

/// What the table knows of the peer on one interface.
#[derive(Debug, Clone)]
struct Record {
    /// The interface's name.
    ifname: String,
    /// Our link-local address there.
    local_addr: Ipv6Addr,
    /// The peer, once one advertised.
    peer: Option<PeerIdentity>,
    /// The interface's discovery state.
    state: DiscoveryState,
    /// When the state was entered.
    since: Instant,
    /// The peer's exchange actor.
    exchange: Exchange,
}

/// Where a record's exchange actor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// None is wanted: no peer, or the peer is down.
    None,
    /// Asked for ([`Action::StartExchange`]) but not running: its start
    /// is under way, or waits for a router (none runs while the router
    /// restarts), so the next router start starts it.
    Wanted,
    /// Running.
    Running,
}

/// The peer table: records by interface index.
#[derive(Debug, Default)]
pub struct PeerTable {
    records: BTreeMap<u32, Record>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A discovery actor reported on its interface at `now`.
    pub fn on_discovery(
        &mut self,
        e: DiscoveryEvent,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match e {
            DiscoveryEvent::Status { ifname, ifindex, state, since } => {
                let rec =
                    self.records.entry(ifindex).or_insert_with(|| Record {
                        ifname: ifname.clone(),
                        local_addr: Ipv6Addr::UNSPECIFIED,
                        peer: None,
                        state,
                        since,
                        exchange: Exchange::None,
                    });
                rec.ifname = ifname;
                rec.state = state;
                rec.since = since;
            }
            DiscoveryEvent::PeerUp { ifname, ifindex, local_addr, peer } => {
                // An interface re-created under a new index: forget the
                // records of its old index, and stop their exchanges.
                let stale: Vec<u32> = self
                    .records
                    .iter()
                    .filter(|(i, r)| **i != ifindex && r.ifname == ifname)
                    .map(|(i, _)| *i)
                    .collect();
                for i in stale {
                    if let Some(r) = self.records.remove(&i) {
                        if let (Exchange::Running, Some(p)) =
                            (r.exchange, r.peer)
                        {
                            out.push(Action::StopExchange { ifindex: i });
                            out.push(Action::PeerDown(PeerId {
                                ifindex: i,
                                addr: p.addr,
                            }));
                        }
                        out.push(Action::InterfaceMoved {
                            from: i,
                            to: ifindex,
                        });
                    }
                }
                let rec =
                    self.records.entry(ifindex).or_insert_with(|| Record {
                        ifname: ifname.clone(),
                        local_addr,
                        peer: None,
                        state: DiscoveryState::Exchange,
                        since: now,
                        exchange: Exchange::None,
                    });
                rec.local_addr = local_addr;
                let old = rec.peer.replace(peer.clone());
                if let (Some(old), Exchange::Running) = (old, rec.exchange) {
                    out.push(Action::StopExchange { ifindex });
                    out.push(Action::PeerDown(PeerId {
                        ifindex,
                        addr: old.addr,
                    }));
                }
                rec.exchange = Exchange::Wanted;
                out.push(Action::StartExchange { ifindex, local_addr, peer });
            }
            DiscoveryEvent::PeerDown { ifindex, peer, .. } => {
                out.extend(self.stop(ifindex, peer.addr));
            }
            DiscoveryEvent::PeerAddrChanged {
                ifindex,
                local_addr,
                old_addr,
                peer,
                ..
            } => {
                out.extend(self.stop(ifindex, old_addr));
                if let Some(rec) = self.records.get_mut(&ifindex) {
                    rec.peer = Some(peer.clone());
                    rec.local_addr = local_addr;
                    rec.exchange = Exchange::Wanted;
                }
                out.push(Action::StartExchange { ifindex, local_addr, peer });
            }
        }
        out
    }

    /// The peer of `ifindex` (address `addr`) is gone: stop its exchange
    /// actor, if one runs, and tell the router.
    fn stop(&mut self, ifindex: u32, addr: Ipv6Addr) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(rec) = self.records.get_mut(&ifindex) {
            if rec.exchange == Exchange::Running {
                out.push(Action::StopExchange { ifindex });
            }
            rec.exchange = Exchange::None;
        }
        out.push(Action::PeerDown(PeerId { ifindex, addr }));
        out
    }

    /// The exchange actor asked for by [`Action::StartExchange`] runs.
    pub fn exchange_started(&mut self, ifindex: u32) {
        if let Some(rec) = self.records.get_mut(&ifindex) {
            rec.exchange = Exchange::Running;
        }
    }

    /// The exchange actor of `ifindex` could not be started: expire its
    /// peer (address `addr`) on that interface.
    pub fn exchange_start_failed(
        &mut self,
        ifindex: u32,
        addr: Ipv6Addr,
    ) -> Vec<Action> {
        vec![self.expire_on(ifindex, addr)]
    }

    /// Expire `addr` on the interface of `ifindex` (on every one if the
    /// table has no record of it).
    fn expire_on(&self, ifindex: u32, addr: Ipv6Addr) -> Action {
        let ifname = self.records.get(&ifindex).map(|r| r.ifname.clone());
        Action::Expire { ifname, addr }
    }

    /// The exchange actor of `ifindex` stopped on its own (not asked to);
    /// while the daemon is not `stopping`, the peer is told down and
    /// expired.
    pub fn exchange_stopped(
        &mut self,
        ifindex: u32,
        stopping: bool,
    ) -> Vec<Action> {
        let Some(rec) = self.records.get_mut(&ifindex) else {
            return Vec::new();
        };
        rec.exchange = Exchange::None;
        match (&rec.peer, stopping) {
            (Some(p), false) => {
                let addr = p.addr;
                vec![
                    Action::PeerDown(PeerId { ifindex, addr }),
                    self.expire_on(ifindex, addr),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// The running exchange actor of `peer` gave up on it: expire it on
    /// its interface. (The supervisor drops a report from an exchange
    /// actor that no longer runs for the peer: a replaced session's.)
    pub fn exchange_failed(&mut self, peer: PeerId) -> Vec<Action> {
        vec![self.expire_on(peer.ifindex, peer.addr)]
    }

    /// `DELETE /peers/{addr}`: expire that peer on every interface it is
    /// on (no-op if unknown).
    pub fn expire(&mut self, addr: Ipv6Addr) -> Vec<Action> {
        vec![Action::Expire { ifname: None, addr }]
    }

    /// The discovery actor of `ifname` stopped (it failed, or was killed;
    /// it is restarted after a back-off). The restarted one knows no peer
    /// and has no expiry timer running, so nothing would ever report the
    /// peer gone: its exchange is stopped and the router told the peer is
    /// down now, and it is found again as a new peer.
    pub fn discovery_gone(&mut self, ifname: &str) -> Vec<Action> {
        let mut out = Vec::new();
        for (ifindex, rec) in &mut self.records {
            if rec.ifname != ifname {
                continue;
            }
            let Some(peer) = rec.peer.take() else {
                continue;
            };
            if rec.exchange == Exchange::Running {
                out.push(Action::StopExchange { ifindex: *ifindex });
            }
            rec.exchange = Exchange::None;
            out.push(Action::PeerDown(PeerId {
                ifindex: *ifindex,
                addr: peer.addr,
            }));
        }
        out
    }

    /// A new router started: exchange actors hold the router they were
    /// started with, so every peer in exchange gets a fresh one, which
    /// announces it to the new router and pulls its full set again. So
    /// does a peer that came up while no router ran: its exchange was
    /// wanted, but could not start.
    pub fn router_restarted(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for (ifindex, rec) in &mut self.records {
            let Some(peer) = &rec.peer else {
                continue;
            };
            match rec.exchange {
                Exchange::None => continue,
                Exchange::Wanted => {}
                Exchange::Running => {
                    out.push(Action::StopExchange { ifindex: *ifindex })
                }
            }
            rec.exchange = Exchange::Wanted;
            out.push(Action::StartExchange {
                ifindex: *ifindex,
                local_addr: rec.local_addr,
                peer: peer.clone(),
            });
        }
        out
    }

    /// The interface name and peer address of `ifindex`'s peer.
    pub fn peer_of(&self, ifindex: u32) -> Option<(&str, Ipv6Addr)> {
        let rec = self.records.get(&ifindex)?;
        Some((&rec.ifname, rec.peer.as_ref()?.addr))
    }

    /// `GET /peers` at `now`: one entry per interface with a peer.
    pub fn peers(&self, now: Instant) -> PeerMap<PeerInfo> {
        self.records
            .iter()
            .filter_map(|(ifindex, rec)| {
                let peer = rec.peer.as_ref()?;
                Some((
                    *ifindex,
                    PeerInfo {
                        status: rec
                            .state
                            .status(now.saturating_duration_since(rec.since)),
                        addr: peer.addr,
                        host: peer.hostname.clone(),
                        kind: peer.kind,
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddm_admin_api::latest::{PeerStatus, RouterKind};
    use std::time::Duration;

    fn ident(last: u16) -> PeerIdentity {
        PeerIdentity {
            addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last),
            hostname: format!("peer{last}"),
            kind: RouterKind::Server,
            version: 3,
        }
    }

    fn local() -> Ipv6Addr {
        "fe80::99".parse().unwrap()
    }

    fn up(ifname: &str, ifindex: u32, peer: PeerIdentity) -> DiscoveryEvent {
        DiscoveryEvent::PeerUp {
            ifname: ifname.to_string(),
            ifindex,
            local_addr: local(),
            peer,
        }
    }

    fn start(ifindex: u32, peer: PeerIdentity) -> Action {
        Action::StartExchange { ifindex, local_addr: local(), peer }
    }

    fn down(ifindex: u32, last: u16) -> Action {
        Action::PeerDown(PeerId { ifindex, addr: ident(last).addr })
    }

    #[test]
    fn a_peer_up_starts_exchange_and_a_peer_down_stops_it() {
        let now = Instant::now();
        let mut t = PeerTable::new();
        let a = t.on_discovery(up("eth0", 2, ident(1)), now);
        assert_eq!(a, [start(2, ident(1))]);
        t.exchange_started(2);
        let e = DiscoveryEvent::PeerDown {
            ifname: "eth0".to_string(),
            ifindex: 2,
            peer: ident(1),
        };
        let a = t.on_discovery(e.clone(), now);
        assert_eq!(a, [Action::StopExchange { ifindex: 2 }, down(2, 1)]);
        // Down again: no exchange to stop; the router is told anyway.
        assert_eq!(t.on_discovery(e, now), [down(2, 1)]);
    }

    #[test]
    fn a_new_peer_on_an_interface_replaces_the_old_session() {
        let now = Instant::now();
        let mut t = PeerTable::new();
        t.on_discovery(up("eth0", 2, ident(1)), now);
        t.exchange_started(2);
        let a = t.on_discovery(up("eth0", 2, ident(7)), now);
        assert_eq!(
            a,
            [
                Action::StopExchange { ifindex: 2 },
                down(2, 1),
                start(2, ident(7))
            ]
        );
    }

    #[test]
    fn an_interface_recreated_under_a_new_index_forgets_the_old_one() {
        let now = Instant::now();
        let mut t = PeerTable::new();
        t.on_discovery(up("eth0", 2, ident(1)), now);
        t.exchange_started(2);
        let a = t.on_discovery(up("eth0", 5, ident(1)), now);
        assert_eq!(
            a,
            [
                Action::StopExchange { ifindex: 2 },
                down(2, 1),
                // What the old index's peer may hold moves with it.
                Action::InterfaceMoved { from: 2, to: 5 },
                start(5, ident(1))
            ]
        );
        assert_eq!(t.peers(now).keys().copied().collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn a_renumbered_peer_gets_a_new_session() {
        let now = Instant::now();
        let mut t = PeerTable::new();
        t.on_discovery(up("eth0", 2, ident(1)), now);
        t.exchange_started(2);
        let a = t.on_discovery(
            DiscoveryEvent::PeerAddrChanged {
                ifname: "eth0".to_string(),
                ifindex: 2,
                local_addr: local(),
                old_addr: ident(1).addr,
                peer: ident(3),
            },
            now,
        );
        assert_eq!(
            a,
            [
                Action::StopExchange { ifindex: 2 },
                down(2, 1),
                start(2, ident(3))
            ]
        );
        assert_eq!(t.peer_of(2), Some(("eth0", ident(3).addr)));
    }

    #[test]
    fn an_exchange_that_stops_expires_its_peer_unless_shutting_down() {
        let now = Instant::now();
        let mut t = PeerTable::new();
        t.on_discovery(up("eth0", 2, ident(1)), now);
        t.exchange_started(2);
        assert!(t.exchange_stopped(2, true).is_empty());
        t.exchange_started(2);
        assert_eq!(t.exchange_stopped(2, false), [down(2, 1), expire(1)]);
        assert!(t.exchange_stopped(9, false).is_empty(), "unknown index");
        assert_eq!(t.exchange_start_failed(2, ident(1).addr), [expire(1)]);
    }

    /// `ident(last)` expired on eth0.
    fn expire(last: u16) -> Action {
        Action::Expire { ifname: Some("eth0".into()), addr: ident(last).addr }
    }

    /// A table with `a` on eth0 (index 2) and `b` on eth1 (index 3), both
    /// in exchange.
    fn two_links(a: PeerIdentity, b: PeerIdentity, now: Instant) -> PeerTable {
        let mut t = PeerTable::new();
        t.on_discovery(up("eth0", 2, a), now);
        t.on_discovery(up("eth1", 3, b), now);
        t.exchange_started(2);
        t.exchange_started(3);
        t
    }

    /// One router on two links, with one link-local address on both (as
    /// routers commonly have): the exchange failing on one link expires
    /// the peer there only; the admin API's expiry names no interface.
    #[test]
    fn a_failure_expires_the_peer_on_its_own_link_only() {
        let mut t = two_links(ident(1), ident(1), Instant::now());
        let failed = PeerId { ifindex: 3, addr: ident(1).addr };
        assert_eq!(
            t.exchange_failed(failed),
            [Action::Expire {
                ifname: Some("eth1".into()),
                addr: ident(1).addr
            }]
        );
        assert_eq!(
            t.expire(ident(1).addr),
            [Action::Expire { ifname: None, addr: ident(1).addr }]
        );
    }

    /// A restarted discovery actor knows no peer: the one its predecessor
    /// had is told down (its exchange stopped), once, and found again as
    /// a new peer; other interfaces keep theirs.
    #[test]
    fn a_discovery_actor_gone_takes_its_peer_down() {
        let now = Instant::now();
        let mut t = two_links(ident(1), ident(2), now);
        assert_eq!(
            t.discovery_gone("eth0"),
            [Action::StopExchange { ifindex: 2 }, down(2, 1)]
        );
        assert!(t.discovery_gone("eth0").is_empty(), "told once");
        assert_eq!(t.peer_of(2), None);
        assert_eq!(t.peer_of(3), Some(("eth1", ident(2).addr)));
        // Found again: a fresh start, with nothing more to stop.
        assert_eq!(
            t.on_discovery(up("eth0", 2, ident(1)), now),
            [start(2, ident(1))]
        );
        // A peer whose exchange waits (no router) is told down too.
        let mut t = PeerTable::new();
        t.on_discovery(up("eth0", 2, ident(1)), now);
        assert_eq!(t.discovery_gone("eth0"), [down(2, 1)]);
    }

    #[test]
    fn a_router_restart_starts_every_exchange_that_runs_or_waits_for_one() {
        let now = Instant::now();
        let mut t = PeerTable::new();
        t.on_discovery(up("eth0", 2, ident(1)), now);
        t.on_discovery(up("eth1", 3, ident(2)), now);
        t.on_discovery(up("eth2", 4, ident(3)), now);
        t.exchange_started(2);
        t.exchange_started(4);
        t.on_discovery(
            DiscoveryEvent::PeerDown {
                ifname: "eth2".to_string(),
                ifindex: 4,
                peer: ident(3),
            },
            now,
        );
        // eth0's runs: stopped and started afresh. eth1's came up while no
        // router ran (never started): started now. eth2's peer is down.
        assert_eq!(
            t.router_restarted(),
            [
                Action::StopExchange { ifindex: 2 },
                start(2, ident(1)),
                start(3, ident(2)),
            ]
        );
        // Until they run, a second restart starts both again, stopping none.
        assert_eq!(
            t.router_restarted(),
            [start(2, ident(1)), start(3, ident(2))]
        );
    }

    #[test]
    fn peers_report_state_and_how_long_it_has_held() {
        let start = Instant::now();
        let mut t = PeerTable::new();
        t.on_discovery(
            DiscoveryEvent::Status {
                ifname: "eth0".to_string(),
                ifindex: 2,
                state: DiscoveryState::Solicit,
                since: start,
            },
            start,
        );
        assert!(t.peers(start).is_empty(), "no peer yet");
        t.on_discovery(up("eth0", 2, ident(1)), start);
        t.on_discovery(
            DiscoveryEvent::Status {
                ifname: "eth0".to_string(),
                ifindex: 2,
                state: DiscoveryState::Exchange,
                since: start,
            },
            start,
        );
        let peers = t.peers(start + Duration::from_secs(4));
        let info = &peers[&2];
        assert_eq!(info.addr, ident(1).addr);
        assert_eq!(info.host, "peer1");
        assert_eq!(info.status, PeerStatus::Exchange(Duration::from_secs(4)));
    }
}
