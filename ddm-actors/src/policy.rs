//! Import policy: what a peer may put in this router's RIB.
//!
//! Every update a peer pushes and every answer to a pull passes through
//! [`ImportPolicy`] before the RIB sees it. The policy keeps the acceptable
//! part and refuses, item by item:
//!
//! * a destination that overlaps a special-purpose range
//!   ([`SPECIAL_PURPOSE`]: unspecified, loopback, link-local, multicast,
//!   IPv4-mapped), judged by overlap so that `::/1` or `fe00::/7` are
//!   refused too; the default route `::/0` unless
//!   [`PolicyConfig::accept_default_route`] (then `::/0` itself is accepted,
//!   anything else overlapping a special range still is not);
//! * an empty path, a path of more than [`PolicyConfig::max_path_len`]
//!   hostnames, a path naming an empty hostname or one longer than
//!   [`MAX_HOSTNAME_LEN`] bytes;
//! * a tunnel endpoint whose VNI does not fit in 24 bits or whose boundary
//!   address lies in a special-purpose range (overlay prefixes are the
//!   virtual network's own, IPv4 or IPv6, and are not judged);
//! * past [`PolicyConfig::max_prefixes_per_peer`] distinct destinations
//!   held from one peer, announcements of new destinations (and likewise
//!   past that many tunnel endpoints, new endpoints). Destinations the peer
//!   already has keep being accepted, withdrawals always pass, and the
//!   session stays up.
//!
//! Withdrawals are never refused: they only remove what the peer gave us.
//! In a pull answer, which the RIB takes as the peer's whole set, a refused
//! item is simply left out (so it is withdrawn if it was held).
//!
//! Every refusal is counted by reason, per peer and in total
//! ([`PolicyCounters`]). The policy does not log: it returns
//! [`RefusalNote`]s for the caller to log, at most one per peer, reason and
//! [`LOG_INTERVAL`], each carrying how many refusals it stands for.
//!
//! Nothing here does I/O or reads a clock: the caller passes `now`, and the
//! RIB's view of what a peer holds comes through [`Holdings`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use oxnet::Ipv6Net;
use tokio::time::Instant;

use crate::exchange::wire::v3::{
    PathVector, PullResponse, TunnelOrigin, Update,
};
use crate::exchange::wire::{normalise_ip, normalise_v6};
use crate::rib::{PeerId, Rib};

/// Default of [`PolicyConfig::max_path_len`]: far more hops than any
/// fabric of racks has (a path crosses a server, a rack transit, a spine, a
/// rack transit: four names).
pub const DEFAULT_MAX_PATH_LEN: usize = 32;

/// Default of [`PolicyConfig::max_prefixes_per_peer`]. A large fabric's
/// transit hears every server prefix of the fabric from each of its peers:
/// 250,000 leaves room for thousands of racks of /64s (and admits the
/// 100,000-prefix benchmark) while bounding how many destinations one
/// hostile peer can make us hold (with ordinary paths, about 80 MB).
pub const DEFAULT_MAX_PREFIXES_PER_PEER: usize = 250_000;

/// Longest hostname accepted in a path, in bytes (what discovery can
/// carry).
pub const MAX_HOSTNAME_LEN: usize = 255;

/// Smallest VNI refused: VNIs are 24 bits.
pub const VNI_LIMIT: u32 = 1 << 24;

/// A refusal of one reason from one peer is logged at most this often.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Special-purpose IPv6 ranges no peer may route to us: unspecified,
/// loopback, link-local, multicast, IPv4-mapped.
pub const SPECIAL_PURPOSE: [Ipv6Net; 5] = [
    Ipv6Net::new_unchecked(Ipv6Addr::UNSPECIFIED, 128),
    Ipv6Net::new_unchecked(Ipv6Addr::LOCALHOST, 128),
    Ipv6Net::new_unchecked(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_unchecked(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    Ipv6Net::new_unchecked(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
];

/// Whether `net` shares any address with a special-purpose range.
pub fn overlaps_special_purpose(net: &Ipv6Net) -> bool {
    SPECIAL_PURPOSE.iter().any(|s| s.overlaps(net))
}

/// Whether `addr` lies in a special-purpose range.
pub fn is_special_purpose(addr: Ipv6Addr) -> bool {
    SPECIAL_PURPOSE.iter().any(|s| s.contains(addr))
}

/// The operator's settings of the import policy (`ddmd` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Accept `::/0` itself from peers (`--accept-default-route`).
    pub accept_default_route: bool,
    /// Longest path accepted, in hostnames (`--max-path-len`).
    pub max_path_len: usize,
    /// Most distinct destinations, and separately most tunnel endpoints,
    /// held from one peer (`--max-prefixes-per-peer`).
    pub max_prefixes_per_peer: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            accept_default_route: false,
            max_path_len: DEFAULT_MAX_PATH_LEN,
            max_prefixes_per_peer: DEFAULT_MAX_PREFIXES_PER_PEER,
        }
    }
}

/// Why an announced item was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The default route `::/0`, without `--accept-default-route`.
    DefaultRoute,
    /// A destination overlapping a special-purpose range.
    SpecialDestination,
    /// A path naming no router.
    EmptyPath,
    /// A path longer than `--max-path-len`.
    PathTooLong,
    /// A path naming an empty hostname.
    EmptyHostname,
    /// A path naming a hostname longer than [`MAX_HOSTNAME_LEN`] bytes.
    HostnameTooLong,
    /// A tunnel endpoint whose VNI does not fit in 24 bits.
    VniTooLarge,
    /// A tunnel endpoint whose boundary address is special-purpose.
    SpecialBoundary,
    /// A new destination past `--max-prefixes-per-peer`.
    PrefixLimit,
    /// A new tunnel endpoint past `--max-prefixes-per-peer`.
    TunnelLimit,
}

impl Refusal {
    /// How many reasons there are.
    pub const COUNT: usize = 10;

    /// Every reason, in declaration order.
    pub const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::DefaultRoute,
        Refusal::SpecialDestination,
        Refusal::EmptyPath,
        Refusal::PathTooLong,
        Refusal::EmptyHostname,
        Refusal::HostnameTooLong,
        Refusal::VniTooLarge,
        Refusal::SpecialBoundary,
        Refusal::PrefixLimit,
        Refusal::TunnelLimit,
    ];

    /// The reason's name in logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::DefaultRoute => "default_route",
            Refusal::SpecialDestination => "special_purpose_destination",
            Refusal::EmptyPath => "empty_path",
            Refusal::PathTooLong => "path_too_long",
            Refusal::EmptyHostname => "empty_hostname",
            Refusal::HostnameTooLong => "hostname_too_long",
            Refusal::VniTooLarge => "vni_too_large",
            Refusal::SpecialBoundary => "special_purpose_boundary",
            Refusal::PrefixLimit => "prefix_limit",
            Refusal::TunnelLimit => "tunnel_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Refusals counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; Refusal::COUNT]);

impl RefusalCounts {
    /// How many items were refused for `reason`.
    pub fn get(&self, reason: Refusal) -> u64 {
        self.0[reason.index()]
    }

    /// How many items were refused in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// True when nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Every reason with its count (zeros included), in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// Count `n` more refusals for `reason`.
    pub fn add(&mut self, reason: Refusal, n: u64) {
        let c = &mut self.0[reason.index()];
        *c = c.saturating_add(n);
    }
}

impl std::fmt::Display for RefusalCounts {
    /// `reason=count` for every non-zero count, comma-separated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (r, n) in self.iter().filter(|(_, n)| *n > 0) {
            if !first {
                f.write_str(",")?;
            }
            write!(f, "{r}={n}")?;
            first = false;
        }
        Ok(())
    }
}

/// The policy's counters, for `RouterMsg::GetPolicyCounters`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    /// Every refusal since the router started.
    pub total: RefusalCounts,
    /// Refusals per peer, for peers that are up (and, for up to
    /// [`LOG_INTERVAL`], peers that went down).
    pub per_peer: BTreeMap<PeerId, RefusalCounts>,
}

/// A refusal to log now: the first of its peer and reason, or the first
/// after [`LOG_INTERVAL`] of silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalNote {
    /// Who sent the refused items.
    pub peer: PeerId,
    /// Why they were refused.
    pub reason: Refusal,
    /// One refused item, briefly (never a whole oversized path).
    pub example: String,
    /// Refusals of this reason from this peer since it was first seen.
    pub refused: u64,
    /// Of those, how many this note is the first log line for (the ones
    /// since the previous note of this peer and reason).
    pub unlogged: u64,
}

/// What the RIB holds from one peer: the policy's view for its limits.
pub trait Holdings {
    /// How many distinct destinations the peer offers.
    fn destination_count(&self) -> usize;
    /// Whether the peer offers `destination` (host bits cleared).
    fn holds_destination(&self, destination: Ipv6Net) -> bool;
    /// How many tunnel endpoints the peer offers.
    fn tunnel_count(&self) -> usize;
    /// Whether the peer offers `origin` (overlay host bits cleared).
    fn holds_tunnel(&self, origin: &TunnelOrigin) -> bool;
}

/// A peer's holdings, read from the RIB.
#[derive(Debug, Clone, Copy)]
pub struct RibHoldings<'a> {
    /// The RIB.
    pub rib: &'a Rib,
    /// The peer.
    pub peer: PeerId,
}

impl Holdings for RibHoldings<'_> {
    fn destination_count(&self) -> usize {
        self.rib.peer_destination_count(self.peer)
    }
    fn holds_destination(&self, destination: Ipv6Net) -> bool {
        self.rib.peer_offers(self.peer, destination)
    }
    fn tunnel_count(&self) -> usize {
        self.rib.peer_tunnel_count(self.peer)
    }
    fn holds_tunnel(&self, origin: &TunnelOrigin) -> bool {
        self.rib.peer_offers_tunnel(self.peer, origin)
    }
}

/// The outcome of filtering a pushed update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateVerdict {
    /// What may reach the RIB: every withdrawal, the acceptable
    /// announcements.
    pub accepted: Update,
    /// Announcements of new items that did not fit under the per-peer limit
    /// while the same update also withdraws: the withdrawals may make room.
    /// Import `accepted` first, then pass this to
    /// [`ImportPolicy::admit_deferred`]. Empty otherwise.
    pub deferred: Update,
    /// What this call refused, by reason.
    pub refused: RefusalCounts,
    /// What to log now.
    pub notes: Vec<RefusalNote>,
}

/// The outcome of filtering a pull answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullVerdict {
    /// The peer's whole set as the RIB should take it: refused items are
    /// left out.
    pub accepted: PullResponse,
    /// What this call refused, by reason.
    pub refused: RefusalCounts,
    /// What to log now.
    pub notes: Vec<RefusalNote>,
}

/// Per-peer counters and log limiter.
#[derive(Debug, Default)]
struct PeerRecord {
    /// Whether the peer is up.
    down: bool,
    /// Refusals by reason.
    counts: RefusalCounts,
    /// When each reason was last logged.
    logged: [Option<Instant>; Refusal::COUNT],
    /// Refusals of each reason since it was last logged.
    unlogged: [u64; Refusal::COUNT],
}

impl PeerRecord {
    /// Whether the record limits nothing any more: the peer is down and no
    /// reason was logged within the interval.
    fn expired(&self, now: Instant) -> bool {
        self.down
            && self
                .logged
                .iter()
                .flatten()
                .all(|t| now.saturating_duration_since(*t) >= LOG_INTERVAL)
    }
}

/// Refusals of one filtering call: counts and a first example per reason.
#[derive(Default)]
struct Tally {
    counts: RefusalCounts,
    examples: [Option<String>; Refusal::COUNT],
}

impl Tally {
    fn refuse(&mut self, reason: Refusal, example: impl FnOnce() -> String) {
        self.counts.add(reason, 1);
        let slot = &mut self.examples[reason.index()];
        if slot.is_none() {
            *slot = Some(example());
        }
    }
}

/// A path vector, briefly: its destination and the shape of its path.
fn describe_path(pv: &PathVector) -> String {
    let longest = pv.path.iter().map(String::len).max().unwrap_or(0);
    format!(
        "{} (path of {} hostnames, longest {} bytes)",
        pv.destination,
        pv.path.len(),
        longest
    )
}

/// A tunnel origin, briefly.
fn describe_tunnel(t: &TunnelOrigin) -> String {
    format!(
        "{} via {} vni {} metric {}",
        t.overlay_prefix, t.boundary_addr, t.vni, t.metric
    )
}

/// The import policy of one router: its settings, counters and log limiter.
#[derive(Debug)]
pub struct ImportPolicy {
    config: PolicyConfig,
    total: RefusalCounts,
    peers: BTreeMap<PeerId, PeerRecord>,
}

impl ImportPolicy {
    /// A policy with these settings and no refusals yet.
    pub fn new(config: PolicyConfig) -> Self {
        ImportPolicy {
            config,
            total: RefusalCounts::default(),
            peers: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The counters: in total and per peer.
    pub fn counters(&self) -> PolicyCounters {
        PolicyCounters {
            total: self.total,
            per_peer: self
                .peers
                .iter()
                .map(|(id, r)| (*id, r.counts))
                .collect(),
        }
    }

    /// `peer` entered exchange.
    pub fn peer_up(&mut self, peer: PeerId, now: Instant) {
        self.prune(now);
        if let Some(r) = self.peers.get_mut(&peer) {
            r.down = false;
        }
    }

    /// `peer` went down. Returns what was refused from it, if anything, for
    /// a closing log line. Its record (counters and log limiter) is kept
    /// while it still limits logging, so a flapping peer is not logged
    /// more often than a steady one.
    pub fn peer_down(
        &mut self,
        peer: PeerId,
        now: Instant,
    ) -> Option<RefusalCounts> {
        let counts = self.peers.get_mut(&peer).map(|r| {
            r.down = true;
            r.counts
        });
        self.prune(now);
        counts.filter(|c| !c.is_empty())
    }

    /// Forget the records of peers that are down and limit nothing.
    fn prune(&mut self, now: Instant) {
        self.peers.retain(|_, r| !r.expired(now));
    }

    /// Filter an update pushed by `peer`, given what it already holds.
    ///
    /// Withdrawals pass untouched. Announcements are judged one by one
    /// (see the module documentation). New destinations beyond the
    /// per-peer limit are refused, or, when the update also withdraws,
    /// deferred (see [`UpdateVerdict::deferred`]).
    pub fn filter_update(
        &mut self,
        peer: PeerId,
        update: Update,
        held: &impl Holdings,
        now: Instant,
    ) -> UpdateVerdict {
        self.filter_push(peer, update, held, now, true)
    }

    /// Admit what [`ImportPolicy::filter_update`] deferred, once the
    /// update's accepted part is in the RIB: what fits under the limit now
    /// is accepted, the rest refused and counted.
    pub fn admit_deferred(
        &mut self,
        peer: PeerId,
        deferred: Update,
        held: &impl Holdings,
        now: Instant,
    ) -> UpdateVerdict {
        self.filter_push(peer, deferred, held, now, false)
    }

    fn filter_push(
        &mut self,
        peer: PeerId,
        mut update: Update,
        held: &impl Holdings,
        now: Instant,
        may_defer: bool,
    ) -> UpdateVerdict {
        let mut tally = Tally::default();
        let mut deferred = Update::default();
        let limit = self.config.max_prefixes_per_peer;
        if let Some(u) = &mut update.underlay {
            let defer = may_defer && !u.withdraw.is_empty();
            // Room for this many destinations not held yet.
            let room = limit.saturating_sub(held.destination_count());
            let all_fit = u.announce.len() <= room;
            let mut fresh: HashSet<Ipv6Net> = HashSet::new();
            let mut later = BTreeSet::new();
            u.announce.retain(|pv| {
                let dest = match self.judge_path(pv) {
                    Ok(d) => d,
                    Err(r) => {
                        tally.refuse(r, || describe_path(pv));
                        return false;
                    }
                };
                if all_fit
                    || fresh.contains(&dest)
                    || held.holds_destination(dest)
                {
                    return true;
                }
                if fresh.len() < room {
                    fresh.insert(dest);
                    return true;
                }
                if defer {
                    later.insert(pv.clone());
                } else {
                    tally.refuse(Refusal::PrefixLimit, || describe_path(pv));
                }
                false
            });
            if !later.is_empty() {
                deferred.underlay_mut().announce = later;
            }
        }
        if let Some(t) = &mut update.tunnel {
            let defer = may_defer && !t.withdraw.is_empty();
            let room = limit.saturating_sub(held.tunnel_count());
            let all_fit = t.announce.len() <= room;
            let mut fresh: HashSet<TunnelOrigin> = HashSet::new();
            let mut later = BTreeSet::new();
            t.announce.retain(|o| {
                let norm = match judge_tunnel(o) {
                    Ok(n) => n,
                    Err(r) => {
                        tally.refuse(r, || describe_tunnel(o));
                        return false;
                    }
                };
                if all_fit || fresh.contains(&norm) || held.holds_tunnel(&norm)
                {
                    return true;
                }
                if fresh.len() < room {
                    fresh.insert(norm);
                    return true;
                }
                if defer {
                    later.insert(*o);
                } else {
                    tally.refuse(Refusal::TunnelLimit, || describe_tunnel(o));
                }
                false
            });
            if !later.is_empty() {
                deferred.tunnel_mut().announce = later;
            }
        }
        let refused = tally.counts;
        let notes = self.record(peer, tally, now);
        UpdateVerdict { accepted: update, deferred, refused, notes }
    }

    /// Filter the answer to a pull from `peer`, given what it already
    /// holds. The answer is the peer's whole set: under the per-peer limit,
    /// destinations it already holds are kept first, then new ones in
    /// order while there is room.
    pub fn filter_pull(
        &mut self,
        peer: PeerId,
        mut response: PullResponse,
        held: &impl Holdings,
        now: Instant,
    ) -> PullVerdict {
        let mut tally = Tally::default();
        let limit = self.config.max_prefixes_per_peer;
        if let Some(set) = &mut response.underlay {
            set.retain(|pv| match self.judge_path(pv) {
                Ok(_) => true,
                Err(r) => {
                    tally.refuse(r, || describe_path(pv));
                    false
                }
            });
            if set.len() > limit {
                let kept: HashSet<Ipv6Net> = set
                    .iter()
                    .map(|pv| normalise_v6(pv.destination))
                    .filter(|d| held.holds_destination(*d))
                    .collect();
                let room = limit.saturating_sub(kept.len());
                let mut fresh: HashSet<Ipv6Net> = HashSet::new();
                set.retain(|pv| {
                    let d = normalise_v6(pv.destination);
                    if kept.contains(&d) || fresh.contains(&d) {
                        return true;
                    }
                    if fresh.len() < room {
                        fresh.insert(d);
                        return true;
                    }
                    tally.refuse(Refusal::PrefixLimit, || describe_path(pv));
                    false
                });
            }
        }
        if let Some(set) = &mut response.tunnel {
            set.retain(|o| match judge_tunnel(o) {
                Ok(_) => true,
                Err(r) => {
                    tally.refuse(r, || describe_tunnel(o));
                    false
                }
            });
            if set.len() > limit {
                let kept: HashSet<TunnelOrigin> = set
                    .iter()
                    .map(normalise_tunnel)
                    .filter(|o| held.holds_tunnel(o))
                    .collect();
                let room = limit.saturating_sub(kept.len());
                let mut fresh: HashSet<TunnelOrigin> = HashSet::new();
                set.retain(|o| {
                    let n = normalise_tunnel(o);
                    if kept.contains(&n) || fresh.contains(&n) {
                        return true;
                    }
                    if fresh.len() < room {
                        fresh.insert(n);
                        return true;
                    }
                    tally.refuse(Refusal::TunnelLimit, || describe_tunnel(o));
                    false
                });
            }
        }
        let refused = tally.counts;
        let notes = self.record(peer, tally, now);
        PullVerdict { accepted: response, refused, notes }
    }

    /// The destination of an acceptable path vector (host bits cleared),
    /// or why it is refused.
    fn judge_path(&self, pv: &PathVector) -> Result<Ipv6Net, Refusal> {
        let dest = normalise_v6(pv.destination);
        if dest.width() == 0 {
            if !self.config.accept_default_route {
                return Err(Refusal::DefaultRoute);
            }
        } else if overlaps_special_purpose(&dest) {
            return Err(Refusal::SpecialDestination);
        }
        if pv.path.is_empty() {
            return Err(Refusal::EmptyPath);
        }
        if pv.path.len() > self.config.max_path_len {
            return Err(Refusal::PathTooLong);
        }
        for h in &pv.path {
            if h.is_empty() {
                return Err(Refusal::EmptyHostname);
            }
            if h.len() > MAX_HOSTNAME_LEN {
                return Err(Refusal::HostnameTooLong);
            }
        }
        Ok(dest)
    }

    /// Count a call's refusals and decide which to log now.
    fn record(
        &mut self,
        peer: PeerId,
        tally: Tally,
        now: Instant,
    ) -> Vec<RefusalNote> {
        if tally.counts.is_empty() {
            return Vec::new();
        }
        let rec = self.peers.entry(peer).or_default();
        let mut notes = Vec::new();
        for (reason, n) in tally.counts.iter().filter(|(_, n)| *n > 0) {
            let i = reason.index();
            self.total.add(reason, n);
            rec.counts.add(reason, n);
            rec.unlogged[i] = rec.unlogged[i].saturating_add(n);
            let due = rec.logged[i].is_none_or(|t| {
                now.saturating_duration_since(t) >= LOG_INTERVAL
            });
            if due {
                notes.push(RefusalNote {
                    peer,
                    reason,
                    example: tally.examples[i].clone().unwrap_or_default(),
                    refused: rec.counts.get(reason),
                    unlogged: rec.unlogged[i],
                });
                rec.logged[i] = Some(now);
                rec.unlogged[i] = 0;
            }
        }
        notes
    }
}

/// `t` with its overlay prefix's host bits cleared.
fn normalise_tunnel(t: &TunnelOrigin) -> TunnelOrigin {
    TunnelOrigin { overlay_prefix: normalise_ip(t.overlay_prefix), ..*t }
}

/// An acceptable tunnel origin (overlay host bits cleared), or why it is
/// refused.
fn judge_tunnel(t: &TunnelOrigin) -> Result<TunnelOrigin, Refusal> {
    if t.vni >= VNI_LIMIT {
        return Err(Refusal::VniTooLarge);
    }
    if is_special_purpose(t.boundary_addr) {
        return Err(Refusal::SpecialBoundary);
    }
    Ok(normalise_tunnel(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::wire::v3::{TunnelUpdate, UnderlayUpdate};
    use ddm_admin_api::latest::RouterKind;

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn peer(i: u16) -> PeerId {
        PeerId {
            ifindex: u32::from(i),
            addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i),
        }
    }

    fn pv(dest: &str, path: &[&str]) -> PathVector {
        PathVector {
            destination: net(dest),
            path: path.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tun(boundary: &str, vni: u32) -> TunnelOrigin {
        TunnelOrigin {
            overlay_prefix: "203.0.113.0/24".parse().unwrap(),
            boundary_addr: boundary.parse().unwrap(),
            vni,
            metric: 0,
        }
    }

    fn announce(pvs: impl IntoIterator<Item = PathVector>) -> Update {
        Update {
            underlay: Some(UnderlayUpdate {
                announce: pvs.into_iter().collect(),
                withdraw: BTreeSet::new(),
            }),
            tunnel: None,
        }
    }

    /// A stand-in for the RIB: the destinations and tunnels a peer holds.
    #[derive(Default)]
    struct Held {
        dests: BTreeSet<Ipv6Net>,
        tunnels: BTreeSet<TunnelOrigin>,
    }

    impl Holdings for Held {
        fn destination_count(&self) -> usize {
            self.dests.len()
        }
        fn holds_destination(&self, d: Ipv6Net) -> bool {
            self.dests.contains(&d)
        }
        fn tunnel_count(&self) -> usize {
            self.tunnels.len()
        }
        fn holds_tunnel(&self, o: &TunnelOrigin) -> bool {
            self.tunnels.contains(o)
        }
    }

    fn policy() -> ImportPolicy {
        ImportPolicy::new(PolicyConfig::default())
    }

    /// What `policy` refuses of one announced destination with a sane
    /// path (None: accepted).
    fn verdict_on(policy: &mut ImportPolicy, dest: &str) -> Option<Refusal> {
        let v = policy.filter_update(
            peer(1),
            announce([pv(dest, &["s1"])]),
            &Held::default(),
            Instant::now(),
        );
        let kept = v.accepted.underlay.unwrap().announce.len();
        let refused: Vec<Refusal> =
            v.refused.iter().filter(|(_, n)| *n > 0).map(|(r, _)| r).collect();
        assert_eq!(kept + refused.len(), 1, "{dest}: {refused:?}");
        refused.first().copied()
    }

    #[test]
    fn each_special_range_is_refused() {
        let mut p = policy();
        for d in [
            "::/128",
            "::1/128",
            "fe80::/10",
            "fe80::/64",
            "fe80::1:2/128",
            "febf:ffff::/32",
            "ff00::/8",
            "ff02::/16",
            "ff02::dd/128",
            "::ffff:0:0/96",
            "::ffff:10.0.0.0/104",
        ] {
            assert_eq!(
                verdict_on(&mut p, d),
                Some(Refusal::SpecialDestination),
                "{d}"
            );
        }
    }

    #[test]
    fn supernets_of_special_ranges_are_refused_by_overlap() {
        let mut p = policy();
        // Each covers part of a special range without being inside one.
        for d in [
            "::/1",
            "::/8",
            "::/96",
            "::/127",
            "fe00::/7",
            "fe00::/8",
            "fc00::/6",
            "8000::/1",
            "ff00::/7",
            "::ffff:0:0/95",
        ] {
            assert_eq!(
                verdict_on(&mut p, d),
                Some(Refusal::SpecialDestination),
                "{d}"
            );
        }
        // Host bits set do not hide a special range.
        assert_eq!(
            verdict_on(&mut p, "fe80::1/10"),
            Some(Refusal::SpecialDestination)
        );
    }

    #[test]
    fn ordinary_prefixes_next_to_special_ranges_are_accepted() {
        let mut p = policy();
        for d in [
            "fd00:1::/64",
            "fd00::/8",
            "fc00::/7",
            "2001:db8::/32",
            "fec0::/10",
            "fe00::/9",
            "::2/128",
            "::fffe:0:0/96",
            "::1:0:0:0/80",
            "4000::/2",
        ] {
            assert_eq!(verdict_on(&mut p, d), None, "{d}");
        }
        assert!(p.counters().total.is_empty());
    }

    #[test]
    fn the_default_route_needs_the_flag() {
        let mut p = policy();
        assert_eq!(verdict_on(&mut p, "::/0"), Some(Refusal::DefaultRoute));
        // Host bits do not disguise it.
        assert_eq!(verdict_on(&mut p, "fd00::/0"), Some(Refusal::DefaultRoute));
        let mut p = ImportPolicy::new(PolicyConfig {
            accept_default_route: true,
            ..PolicyConfig::default()
        });
        assert_eq!(verdict_on(&mut p, "::/0"), None);
        // Only `::/0` itself: the others overlapping a special range stay
        // refused.
        for d in ["::/1", "fe00::/7", "ff00::/8", "::/128"] {
            assert_eq!(
                verdict_on(&mut p, d),
                Some(Refusal::SpecialDestination),
                "{d}"
            );
        }
        // The path is still judged.
        let v = p.filter_update(
            peer(1),
            announce([pv("::/0", &[])]),
            &Held::default(),
            Instant::now(),
        );
        assert_eq!(v.refused.get(Refusal::EmptyPath), 1);
    }

    #[test]
    fn paths_are_bounded_in_length_and_hostnames() {
        let mut p = ImportPolicy::new(PolicyConfig {
            max_path_len: 4,
            ..PolicyConfig::default()
        });
        let name_255 = "h".repeat(255);
        let name_256 = "h".repeat(256);
        let cases: Vec<(PathVector, Option<Refusal>)> = vec![
            (pv("fd00:1::/64", &["a", "b", "c", "d"]), None),
            (
                pv("fd00:2::/64", &["a", "b", "c", "d", "e"]),
                Some(Refusal::PathTooLong),
            ),
            (pv("fd00:3::/64", &[]), Some(Refusal::EmptyPath)),
            (pv("fd00:4::/64", &["a", ""]), Some(Refusal::EmptyHostname)),
            (pv("fd00:5::/64", &[&name_255]), None),
            (
                pv("fd00:6::/64", &["a", &name_256]),
                Some(Refusal::HostnameTooLong),
            ),
        ];
        let all: Vec<PathVector> =
            cases.iter().map(|(x, _)| x.clone()).collect();
        let v = p.filter_update(
            peer(1),
            announce(all),
            &Held::default(),
            Instant::now(),
        );
        let kept = v.accepted.underlay.unwrap().announce;
        for (x, why) in &cases {
            assert_eq!(kept.contains(x), why.is_none(), "{x:?}");
            if let Some(r) = why {
                assert_eq!(v.refused.get(*r), 1, "{r}");
            }
        }
        assert_eq!(v.refused.total(), 4);
        // The example logged is short, whatever the path held.
        let note = v
            .notes
            .iter()
            .find(|n| n.reason == Refusal::HostnameTooLong)
            .unwrap();
        assert!(note.example.len() < 100, "{}", note.example);
        assert!(note.example.contains("256 bytes"), "{}", note.example);
    }

    #[test]
    fn the_default_path_limit_is_32() {
        let mut p = policy();
        let names: Vec<String> = (0..33).map(|i| format!("h{i}")).collect();
        let path = |n: usize| PathVector {
            destination: net(&format!("fd00:{n}::/64")),
            path: names[..n].to_vec(),
        };
        let v = p.filter_update(
            peer(1),
            announce([path(32), path(33)]),
            &Held::default(),
            Instant::now(),
        );
        assert_eq!(v.accepted.underlay.unwrap().announce, [path(32)].into());
        assert_eq!(v.refused.get(Refusal::PathTooLong), 1);
    }

    #[test]
    fn withdrawals_always_pass() {
        let mut p = policy();
        let bad = [
            pv("::/0", &["x"]),
            pv("fe80::/64", &[]),
            pv("fd00:1::/64", &[&"h".repeat(300)]),
        ];
        let update = Update {
            underlay: Some(UnderlayUpdate {
                announce: BTreeSet::new(),
                withdraw: bad.iter().cloned().collect(),
            }),
            tunnel: Some(TunnelUpdate {
                announce: BTreeSet::new(),
                withdraw: [tun("::1", 1 << 30)].into(),
            }),
        };
        let v = p.filter_update(
            peer(1),
            update.clone(),
            &Held::default(),
            Instant::now(),
        );
        assert_eq!(v.accepted, update);
        assert!(v.refused.is_empty());
        assert!(v.notes.is_empty());
    }

    #[test]
    fn tunnel_endpoints_need_a_24_bit_vni_and_an_ordinary_boundary() {
        let mut p = policy();
        let good = [tun("fd00:99::1", 0), tun("fd00:99::1", (1 << 24) - 1)];
        let big_vni = tun("fd00:99::1", 1 << 24);
        let special = [
            tun("::", 5),
            tun("::1", 5),
            tun("fe80::1", 5),
            tun("ff02::1", 5),
            tun("::ffff:192.0.2.1", 5),
        ];
        let mut announce: BTreeSet<TunnelOrigin> = good.into();
        announce.insert(big_vni);
        announce.extend(special);
        let v = p.filter_update(
            peer(1),
            Update {
                underlay: None,
                tunnel: Some(TunnelUpdate {
                    announce,
                    withdraw: BTreeSet::new(),
                }),
            },
            &Held::default(),
            Instant::now(),
        );
        assert_eq!(v.accepted.tunnel.unwrap().announce, good.into());
        assert_eq!(v.refused.get(Refusal::VniTooLarge), 1);
        assert_eq!(v.refused.get(Refusal::SpecialBoundary), 5);
        // An IPv6 overlay, even a default one, is the virtual network's
        // business.
        let v6 = TunnelOrigin {
            overlay_prefix: "::/0".parse().unwrap(),
            ..tun("fd00:99::2", 9)
        };
        let v = p.filter_pull(
            peer(1),
            PullResponse { underlay: None, tunnel: Some([v6].into()) },
            &Held::default(),
            Instant::now(),
        );
        assert_eq!(v.accepted.tunnel.unwrap(), [v6].into());
    }

    fn limited(n: usize) -> ImportPolicy {
        ImportPolicy::new(PolicyConfig {
            max_prefixes_per_peer: n,
            ..PolicyConfig::default()
        })
    }

    fn dest(i: u16) -> PathVector {
        pv(&format!("fd00:{i:x}::/64"), &["s1"])
    }

    #[test]
    fn past_the_limit_new_destinations_are_refused_held_ones_kept() {
        let mut p = limited(3);
        let mut held = Held::default();
        // Two held; of three new ones only one fits.
        held.dests.extend([dest(1).destination, dest(2).destination]);
        let v = p.filter_update(
            peer(1),
            announce([
                dest(1),
                pv("fd00:2::/64", &["t2", "s1"]),
                dest(3),
                dest(4),
                dest(5),
            ]),
            &held,
            Instant::now(),
        );
        let kept = v.accepted.underlay.unwrap().announce;
        // Held destinations pass with any path; one new one fits.
        assert!(kept.contains(&dest(1)));
        assert!(kept.contains(&pv("fd00:2::/64", &["t2", "s1"])));
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!(v.refused.get(Refusal::PrefixLimit), 2);
        assert!(v.deferred.is_empty(), "no withdrawal: nothing deferred");
        // A second path to a new destination counts once.
        let mut p = limited(1);
        let v = p.filter_update(
            peer(1),
            announce([dest(7), pv("fd00:7::/64", &["t", "s"]), dest(8)]),
            &Held::default(),
            Instant::now(),
        );
        assert_eq!(v.accepted.underlay.unwrap().announce.len(), 2);
        assert_eq!(v.refused.get(Refusal::PrefixLimit), 1);
    }

    #[test]
    fn at_the_limit_withdrawals_pass_and_make_room() {
        let mut p = limited(2);
        let mut held = Held::default();
        held.dests.extend([dest(1).destination, dest(2).destination]);
        // Withdraw one, announce two new ones: both are deferred.
        let update = Update {
            underlay: Some(UnderlayUpdate {
                announce: [dest(3), dest(4)].into(),
                withdraw: [dest(1)].into(),
            }),
            tunnel: None,
        };
        let now = Instant::now();
        let v = p.filter_update(peer(1), update, &held, now);
        let u = v.accepted.underlay.unwrap();
        assert_eq!(u.withdraw, [dest(1)].into());
        assert!(u.announce.is_empty());
        assert!(v.refused.is_empty(), "deferred, not refused yet");
        assert_eq!(
            v.deferred.underlay.as_ref().unwrap().announce,
            [dest(3), dest(4)].into()
        );
        // The RIB applied the withdrawal: one of the two now fits.
        held.dests.remove(&dest(1).destination);
        let v2 = p.admit_deferred(peer(1), v.deferred, &held, now);
        assert_eq!(v2.accepted.underlay.unwrap().announce, [dest(3)].into());
        assert_eq!(v2.refused.get(Refusal::PrefixLimit), 1);
        assert!(v2.deferred.is_empty());
        assert_eq!(
            p.counters().per_peer[&peer(1)].get(Refusal::PrefixLimit),
            1
        );
    }

    #[test]
    fn a_pull_keeps_held_destinations_first_then_fills_the_room() {
        let mut p = limited(3);
        let mut held = Held::default();
        held.dests.extend([dest(8).destination, dest(9).destination]);
        let v = p.filter_pull(
            peer(1),
            PullResponse {
                underlay: Some(
                    [dest(1), dest(2), dest(3), dest(8), dest(9)].into(),
                ),
                tunnel: None,
            },
            &held,
            Instant::now(),
        );
        // Held 8 and 9 stay; of the new ones, the first in order fits.
        assert_eq!(
            v.accepted.underlay.unwrap(),
            [dest(1), dest(8), dest(9)].into()
        );
        assert_eq!(v.refused.get(Refusal::PrefixLimit), 2);
        // Bad items are left out of the set (so the RIB withdraws them).
        let v = p.filter_pull(
            peer(1),
            PullResponse {
                underlay: Some([dest(1), pv("ff02::/16", &["x"])].into()),
                tunnel: Some([tun("fe80::1", 1)].into()),
            },
            &held,
            Instant::now(),
        );
        assert_eq!(v.accepted.underlay.unwrap(), [dest(1)].into());
        assert_eq!(v.accepted.tunnel.unwrap(), BTreeSet::new());
        assert_eq!(v.refused.get(Refusal::SpecialDestination), 1);
        assert_eq!(v.refused.get(Refusal::SpecialBoundary), 1);
    }

    #[test]
    fn tunnel_endpoints_have_their_own_limit() {
        let mut p = limited(1);
        let mut held = Held::default();
        held.dests.insert(dest(1).destination);
        let a = tun("fd00:99::1", 1);
        let b = tun("fd00:99::2", 2);
        let v = p.filter_update(
            peer(1),
            Update {
                underlay: None,
                tunnel: Some(TunnelUpdate {
                    announce: [a, b].into(),
                    withdraw: BTreeSet::new(),
                }),
            },
            &held,
            Instant::now(),
        );
        assert_eq!(v.accepted.tunnel.unwrap().announce.len(), 1);
        assert_eq!(v.refused.get(Refusal::TunnelLimit), 1);
        held.tunnels.insert(a);
        let v = p.filter_pull(
            peer(1),
            PullResponse { underlay: None, tunnel: Some([a, b].into()) },
            &held,
            Instant::now(),
        );
        assert_eq!(v.accepted.tunnel.unwrap(), [a].into());
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_peer_and_reason() {
        let mut p = policy();
        let t0 = Instant::now();
        let bad = |i: u16| announce([pv(&format!("ff0{i}::/16"), &["x"])]);
        let held = Held::default();
        // First refusal: logged.
        let v = p.filter_update(peer(1), bad(1), &held, t0);
        assert_eq!(v.notes.len(), 1);
        assert_eq!(v.notes[0].reason, Refusal::SpecialDestination);
        assert_eq!((v.notes[0].refused, v.notes[0].unlogged), (1, 1));
        assert_eq!(
            v.notes[0].example,
            "ff01::/16 (path of 1 hostnames, longest 1 bytes)"
        );
        // Within the minute: counted, not logged.
        for s in [1, 30, 59] {
            let v = p.filter_update(
                peer(1),
                bad(2),
                &held,
                t0 + Duration::from_secs(s),
            );
            assert_eq!(v.refused.total(), 1);
            assert!(v.notes.is_empty(), "at {s} s");
        }
        // Another reason, or another peer, has its own limiter.
        let v = p.filter_update(
            peer(1),
            announce([pv("::/0", &["x"])]),
            &held,
            t0 + Duration::from_secs(2),
        );
        assert_eq!(v.notes.len(), 1);
        assert_eq!(v.notes[0].reason, Refusal::DefaultRoute);
        let v = p.filter_update(
            peer(2),
            bad(3),
            &held,
            t0 + Duration::from_secs(3),
        );
        assert_eq!(v.notes.len(), 1);
        // A minute on: logged again, standing for the three suppressed.
        let v = p.filter_update(peer(1), bad(4), &held, t0 + LOG_INTERVAL);
        assert_eq!(v.notes.len(), 1);
        assert_eq!((v.notes[0].refused, v.notes[0].unlogged), (5, 4));
        let c = p.counters();
        assert_eq!(c.total.get(Refusal::SpecialDestination), 6);
        assert_eq!(c.total.get(Refusal::DefaultRoute), 1);
        assert_eq!(c.per_peer[&peer(1)].total(), 6);
        assert_eq!(c.per_peer[&peer(2)].total(), 1);
    }

    #[test]
    fn a_flapping_peer_is_not_logged_more_often() {
        let mut p = policy();
        let t0 = Instant::now();
        let held = Held::default();
        let bad = announce([pv("ff02::/16", &["x"])]);
        assert_eq!(
            p.filter_update(peer(1), bad.clone(), &held, t0).notes.len(),
            1
        );
        let gone = p.peer_down(peer(1), t0 + Duration::from_secs(1));
        assert_eq!(gone.map(|c| c.total()), Some(1));
        p.peer_up(peer(1), t0 + Duration::from_secs(2));
        let v = p.filter_update(
            peer(1),
            bad.clone(),
            &held,
            t0 + Duration::from_secs(3),
        );
        assert!(v.notes.is_empty());
        // Once down for longer than the interval, its record goes; the
        // total stays.
        p.peer_down(peer(1), t0 + Duration::from_secs(4));
        p.peer_up(peer(2), t0 + Duration::from_secs(4) + LOG_INTERVAL);
        let c = p.counters();
        assert!(c.per_peer.is_empty(), "{c:?}");
        assert_eq!(c.total.total(), 2);
        // A peer without refusals has nothing to report.
        assert_eq!(p.peer_down(peer(3), t0), None);
    }

    #[test]
    fn the_rib_view_counts_what_a_peer_holds() {
        let mut rib = Rib::new("me", RouterKind::Transit);
        rib.peer_up(peer(1), RouterKind::Server);
        rib.import(
            peer(1),
            announce([dest(1), pv("fd00:1::/64", &["t", "s1"]), dest(2)]),
        )
        .unwrap();
        let held = RibHoldings { rib: &rib, peer: peer(1) };
        assert_eq!(held.destination_count(), 2);
        assert!(held.holds_destination(dest(2).destination));
        assert!(!held.holds_destination(dest(3).destination));
        let mut p = limited(2);
        let v = p.filter_update(
            peer(1),
            announce([dest(1), dest(3)]),
            &held,
            Instant::now(),
        );
        assert_eq!(v.accepted.underlay.unwrap().announce, [dest(1)].into());
        assert_eq!(v.refused.get(Refusal::PrefixLimit), 1);
    }

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let names: BTreeSet<&str> =
            Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Refusal::COUNT);
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r}");
        }
    }

    #[test]
    fn counts_print_their_non_zero_reasons() {
        let mut c = RefusalCounts::default();
        assert_eq!(c.to_string(), "");
        c.add(Refusal::PathTooLong, 2);
        c.add(Refusal::DefaultRoute, 1);
        assert_eq!(c.to_string(), "default_route=1,path_too_long=2");
        assert_eq!(c.total(), 3);
    }
}
