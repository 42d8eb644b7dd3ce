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

use ddm_proto::outgoing::{OutPath, OutPull, OutUpdate};
use ddm_proto::wire::v3::{PathVector, TunnelOrigin};
use ddm_proto::wire::{normalise_tunnel, normalise_v6};

use crate::rib::{PeerId, Rib};

mod refusal;

pub use refusal::{PolicyCounters, Refusal, RefusalCounts, RefusalNote};

/// Default of [`PolicyConfig::max_path_len`]: far more hops than any
/// fabric of racks has (a path crosses a server, a rack transit, a spine, a
/// rack transit: four names).
pub const DEFAULT_MAX_PATH_LEN: usize = 32;

/// Largest [`PolicyConfig::max_path_len`] the daemon takes. The decoders
/// of pushes and pull answers keep at most one name more of any path, so
/// that a path of millions of names (a few bytes of body each, 16 bytes
/// each decoded) costs no more than one just over the limit before it is
/// refused.
pub const MAX_PATH_LEN_BOUND: usize = 1024;

/// Default of [`PolicyConfig::max_prefixes_per_peer`]. A large fabric's
/// transit hears every server prefix of the fabric from each of its peers:
/// 250,000 leaves room for thousands of racks of /64s (and admits the
/// 100,000-prefix benchmark) while bounding how many destinations one
/// hostile peer can make us hold (with ordinary paths, about 80 MB).
pub const DEFAULT_MAX_PREFIXES_PER_PEER: usize = 250_000;

/// The bytes of paths ([`crate::rib::path_cost`]) one peer's held paths
/// may count, per destination it may hold ([`PolicyConfig::path_budget`]):
/// three paths of three 16-byte names each. At the default limit, 128 MB;
/// a hostile peer's paths of distinct long names are bounded by it rather
/// than by the limits on destinations and paths per destination alone
/// (gigabytes).
pub const PATH_BYTES_PER_PREFIX: usize = 512;

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

impl PolicyConfig {
    /// What one peer's held paths may count, in bytes of
    /// [`crate::rib::path_cost`].
    pub fn path_budget(&self) -> usize {
        self.max_prefixes_per_peer.saturating_mul(PATH_BYTES_PER_PREFIX)
    }
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
    pub accepted: OutUpdate,
    /// Announcements of new items that did not fit under the per-peer limit
    /// while the same update also withdraws: the withdrawals may make room.
    /// Import `accepted` first, then pass this to
    /// [`ImportPolicy::admit_deferred`]. Empty otherwise.
    pub deferred: OutUpdate,
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
    pub accepted: OutPull,
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

/// A path vector as the policy judges it: as read from a pull's answer,
/// or in the compact form a push is read into.
trait Judged {
    /// Its destination, as written.
    fn destination(&self) -> Ipv6Net;
    /// Its hostnames, originator first.
    fn names(&self) -> impl Iterator<Item = &str>;
    /// How many hostnames it has.
    fn len(&self) -> usize;
}

impl Judged for PathVector {
    fn destination(&self) -> Ipv6Net {
        self.destination
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.path.iter().map(String::as_str)
    }
    fn len(&self) -> usize {
        self.path.len()
    }
}

impl Judged for OutPath {
    fn destination(&self) -> Ipv6Net {
        OutPath::destination(self)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        OutPath::names(self)
    }
    fn len(&self) -> usize {
        OutPath::len(self)
    }
}

/// A path vector, briefly: its destination and the shape of its path.
fn describe_path(pv: &impl Judged) -> String {
    let longest = pv.names().map(str::len).max().unwrap_or(0);
    format!(
        "{} (path of {} hostnames, longest {} bytes)",
        pv.destination(),
        pv.len(),
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
    /// A `max_path_len` over [`MAX_PATH_LEN_BOUND`] is taken as that
    /// bound: the decoders keep no more of a path (one name past it), so a
    /// longer path could not be judged whole.
    pub fn new(mut config: PolicyConfig) -> Self {
        config.max_path_len = config.max_path_len.min(MAX_PATH_LEN_BOUND);
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

    /// The counters: in total, and per peer that is up (those of a peer
    /// that went down go with it, though its record stays a while to
    /// limit its log lines).
    pub fn counters(&self) -> PolicyCounters {
        PolicyCounters {
            total: self.total,
            per_peer: self
                .peers
                .iter()
                .filter(|(_, r)| !r.down)
                .map(|(id, r)| (*id, r.counts))
                .collect(),
        }
    }

    /// `peer` entered exchange: its counters start again from zero (a new
    /// session's), its log limiter goes on.
    pub fn peer_up(&mut self, peer: PeerId, now: Instant) {
        self.prune(now);
        if let Some(r) = self.peers.get_mut(&peer) {
            r.down = false;
            r.counts = RefusalCounts::default();
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
        update: OutUpdate,
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
        deferred: OutUpdate,
        held: &impl Holdings,
        now: Instant,
    ) -> UpdateVerdict {
        self.filter_push(peer, deferred, held, now, false)
    }

    fn filter_push(
        &mut self,
        peer: PeerId,
        mut update: OutUpdate,
        held: &impl Holdings,
        now: Instant,
        may_defer: bool,
    ) -> UpdateVerdict {
        let mut tally = Tally::default();
        let mut deferred = OutUpdate::default();
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
        response: impl Into<OutPull>,
        held: &impl Holdings,
        now: Instant,
    ) -> PullVerdict {
        let mut response = response.into();
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
                    .map(|pv| normalise_v6(pv.destination()))
                    .filter(|d| held.holds_destination(*d))
                    .collect();
                let room = limit.saturating_sub(kept.len());
                let mut fresh: HashSet<Ipv6Net> = HashSet::new();
                set.retain(|pv| {
                    let d = normalise_v6(pv.destination());
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
                    .copied()
                    .map(normalise_tunnel)
                    .filter(|o| held.holds_tunnel(o))
                    .collect();
                let room = limit.saturating_sub(kept.len());
                let mut fresh: HashSet<TunnelOrigin> = HashSet::new();
                set.retain(|o| {
                    let n = normalise_tunnel(*o);
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
    fn judge_path(&self, pv: &impl Judged) -> Result<Ipv6Net, Refusal> {
        let dest = normalise_v6(pv.destination());
        if dest.width() == 0 {
            if !self.config.accept_default_route {
                return Err(Refusal::DefaultRoute);
            }
        } else if overlaps_special_purpose(&dest) {
            return Err(Refusal::SpecialDestination);
        }
        let len = Judged::len(pv);
        if len == 0 {
            return Err(Refusal::EmptyPath);
        }
        if len > self.config.max_path_len {
            return Err(Refusal::PathTooLong);
        }
        for h in pv.names() {
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

/// An acceptable tunnel origin (overlay host bits cleared), or why it is
/// refused.
fn judge_tunnel(t: &TunnelOrigin) -> Result<TunnelOrigin, Refusal> {
    if t.vni >= VNI_LIMIT {
        return Err(Refusal::VniTooLarge);
    }
    if is_special_purpose(t.boundary_addr) {
        return Err(Refusal::SpecialBoundary);
    }
    Ok(normalise_tunnel(*t))
}

#[cfg(test)]
mod tests;
