//! What each peer may still hold from us: the rule that makes a one-sided
//! session reset lose nothing.
//!
//! A session can end on our side only: we expire a peer (`DELETE
//! /peers/{addr}`, a carrier flap only we saw, failing pushes) while the
//! peer's own session with us never leaves Exchange. The peer then never
//! pulls again, and keeps whatever we told it, including paths we withdrew
//! while the session was down and withdrawals that were still queued (in
//! the router, or in the old session's exchange actor) when it stopped.
//!
//! So whenever a session with a peer starts, we push it its whole view
//! ([`crate::rib::Rib::view_for`]) and withdraw everything it may still hold
//! from us that is not in that view. "May still hold" is kept per peer, in
//! the compact form of the pushes:
//!
//! * a path or tunnel endpoint we withdrew is remembered, with the sequence
//!   number of the push that carried the withdrawal, until the session's
//!   exchange actor reports that push delivered;
//! * when a session ends, everything the peer's view held is remembered
//!   (pushes of an announcement may have been delivered, and nothing of
//!   that session will be acknowledged any more).
//!
//! The wire protocol is unchanged: a resync is an ordinary push, so it
//! works with original peers too. Withdrawing a path a peer never had is a
//! no-op at the receiver, so remembering too much costs bytes, never
//! correctness. What is remembered for a peer is dropped once delivered.
//! When another address comes up on the same interface, the old address's
//! record becomes the new one's: the router behind it may be the same one,
//! renumbered, whose session with us never reset (pushes to its old
//! address failed from the moment it moved); its first push withdraws what
//! the old session may have left. It is at most one record per interface.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ddm_proto::outgoing::{OutPath, OutUpdate};
use ddm_proto::wire::v3::TunnelOrigin;
use oxnet::Ipv6Net;

use super::PeerId;

/// Sequence number of a withdrawal that no session will acknowledge.
const UNACKED: u64 = u64::MAX;

/// Most paths kept in flight for one peer, counted once per push that
/// withdrew them (about 10 MB as one path each, less where they are kept
/// in runs: [`Withdrawn`]), before the lists are merged into one, each
/// path once, delivered with the newest of their pushes (and merged again
/// only once they have grown to twice what the last merge kept): a peer
/// that acknowledges slowly while what we offer it keeps changing (paths
/// withdrawn and announced again, push after push) made the lists grow by
/// every push's withdrawals until delivery.
const IN_FLIGHT_CAP: usize = 1 << 18;

/// Most pushes whose items are counted apart while undelivered, for one
/// peer: past it the two oldest are counted as one (delivered with the
/// later), so a peer that acknowledges slowly costs a bounded list.
const UNDELIVERED_CAP: usize = 4096;

/// What one peer may hold from us beyond its current view.
#[derive(Debug, Default)]
struct Stale {
    /// Pushes handed to the current session so far; the next one gets
    /// `sent + 1`.
    sent: u64,
    /// The paths withdrawn by each push of the current session that is not
    /// yet delivered, oldest first, with the push's sequence number, each
    /// push's as one [`Withdrawn`] of exactly its size.
    in_flight: VecDeque<(u64, Withdrawn)>,
    /// The paths in `in_flight`, each push's counted apart.
    in_flight_paths: usize,
    /// The paths the last merge of `in_flight` kept (see [`IN_FLIGHT_CAP`]).
    merged_paths: usize,
    /// Paths an ended session may have left with the peer (no push will
    /// report them delivered).
    paths: BTreeSet<OutPath>,
    /// Withdrawn tunnel endpoints, each with the push that withdrew it.
    tunnels: BTreeMap<TunnelOrigin, u64>,
    /// The items of each push of the current session not yet delivered,
    /// oldest first, with the push's sequence number, and their sum: how
    /// far the peer's exchange actor is behind (`router/hold.rs`).
    undelivered: VecDeque<(u64, usize)>,
    undelivered_items: usize,
}

impl Stale {
    fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
            && self.paths.is_empty()
            && self.tunnels.is_empty()
    }

    /// Take in `old`, another record of the same peer's interface (an
    /// earlier address's, or an earlier index's): all it may have left is
    /// now unacknowledged here.
    fn absorb(&mut self, mut old: Stale) {
        old.unacked();
        self.paths.extend(old.paths);
        self.tunnels.extend(old.tunnels);
    }

    /// The session ended: nothing in flight will be acknowledged now.
    fn unacked(&mut self) {
        self.undelivered.clear();
        self.undelivered_items = 0;
        self.in_flight_paths = 0;
        self.merged_paths = 0;
        for (_, paths) in self.in_flight.drain(..) {
            paths.extend_into(&mut self.paths);
        }
        for seq in self.tunnels.values_mut() {
            *seq = UNACKED;
        }
    }

    /// Merge the lists in flight into one, each path once, delivered with
    /// the newest push (see [`IN_FLIGHT_CAP`]).
    fn merge_in_flight(&mut self) {
        let Some(&(newest, _)) = self.in_flight.back() else { return };
        let mut all = Vec::with_capacity(self.in_flight_paths);
        for (_, paths) in self.in_flight.drain(..) {
            paths.extend_into(&mut all);
        }
        all.sort_unstable();
        all.dedup();
        self.in_flight_paths = all.len();
        self.merged_paths = all.len();
        self.in_flight.push_back((newest, Withdrawn::from_vec(all)));
    }
}

/// The paths one push withdrew, in order, as kept until it is delivered:
/// each destination once (17 bytes) and, for each run of destinations
/// whose paths share their storage ([`OutPath::shares_path`]), one path
/// standing for the run. A withdrawal of 100,000 originated prefixes, or
/// of one origin's paths at a transit, is one run: 1.7 MB, against 4 MB
/// as one [`OutPath`] each, held beside the same push in the exchange
/// actor until it is delivered (measured with heaptrack at the
/// originator's peak: this record was 3.8 of its 14 MiB of heap). The
/// form is chosen for the whole push: where runs would not be smaller
/// (paths whose neighbours mostly have storage of their own), every path
/// is kept as one [`OutPath`]; in runs, a path alone in its run costs 65
/// bytes.
#[derive(Debug)]
enum Withdrawn {
    /// Each run's first index in `destinations`, and its path.
    Runs { destinations: Box<[Ipv6Net]>, runs: Box<[(usize, OutPath)]> },
    /// One path each.
    Paths(Box<[OutPath]>),
}

impl Withdrawn {
    /// `paths`, in the order given, in whichever form is smaller.
    fn new<'a, I>(paths: I) -> Withdrawn
    where
        I: ExactSizeIterator<Item = &'a OutPath> + Clone,
    {
        match Self::runs_if_smaller(paths.clone()) {
            Some(runs) => Self::in_runs(paths, runs),
            None => Withdrawn::Paths(paths.cloned().collect()),
        }
    }

    /// [`Withdrawn::new`] of a list it may keep as it is.
    fn from_vec(paths: Vec<OutPath>) -> Withdrawn {
        match Self::runs_if_smaller(paths.iter()) {
            Some(runs) => Self::in_runs(paths.iter(), runs),
            None => Withdrawn::Paths(paths.into_boxed_slice()),
        }
    }

    /// How many runs `paths` make, if runs take fewer bytes than a path
    /// each.
    fn runs_if_smaller<'a>(
        paths: impl ExactSizeIterator<Item = &'a OutPath>,
    ) -> Option<usize> {
        let len = paths.len();
        let mut last: Option<&OutPath> = None;
        let runs = paths
            .filter(|p| !last.replace(*p).is_some_and(|l| l.shares_path(p)))
            .count();
        let as_runs = len * std::mem::size_of::<Ipv6Net>()
            + runs * std::mem::size_of::<(usize, OutPath)>();
        (as_runs < len * std::mem::size_of::<OutPath>()).then_some(runs)
    }

    /// `paths` (`runs` runs of them) kept in runs.
    fn in_runs<'a>(
        paths: impl ExactSizeIterator<Item = &'a OutPath>,
        runs: usize,
    ) -> Withdrawn {
        let len = paths.len();
        let mut destinations = Vec::with_capacity(len);
        let mut starts = Vec::with_capacity(runs);
        for p in paths {
            let shared = starts
                .last()
                .is_some_and(|(_, l): &(usize, OutPath)| l.shares_path(p));
            if !shared {
                starts.push((destinations.len(), p.clone()));
            }
            destinations.push(p.destination());
        }
        Withdrawn::Runs {
            destinations: destinations.into_boxed_slice(),
            runs: starts.into_boxed_slice(),
        }
    }

    /// How many paths it holds.
    fn len(&self) -> usize {
        match self {
            Withdrawn::Runs { destinations, .. } => destinations.len(),
            Withdrawn::Paths(paths) => paths.len(),
        }
    }

    /// Hand every path, in order, to `out`.
    fn extend_into(self, out: &mut impl Extend<OutPath>) {
        match self {
            Withdrawn::Paths(paths) => out.extend(paths),
            Withdrawn::Runs { destinations, runs } => {
                let ends = runs
                    .iter()
                    .skip(1)
                    .map(|(start, _)| *start)
                    .chain([destinations.len()]);
                for ((start, path), end) in runs.iter().zip(ends) {
                    out.extend(
                        destinations[*start..end].iter().map(|d| path.to(*d)),
                    );
                }
            }
        }
    }
}

/// Per peer, what it may still hold from us that we no longer offer it.
#[derive(Debug, Default)]
pub struct Told {
    peers: HashMap<PeerId, Stale>,
}

impl Told {
    /// An empty record.
    pub fn new() -> Self {
        Told::default()
    }

    /// A push to `peer`'s current session is handed to its exchange actor
    /// (or, collected when the session ended, dropped unsent: what it
    /// withdraws is remembered all the same); returns the push's sequence
    /// number in that session.
    ///
    /// A path it announces is no longer remembered from an ended session;
    /// a withdrawal of it still in flight stays remembered until delivered
    /// (finding it there would cost a search per announcement). That costs
    /// bytes only: a new session withdraws only what is not in its view.
    pub fn pushed(&mut self, peer: PeerId, update: &OutUpdate) -> u64 {
        let stale = self.peers.entry(peer).or_default();
        stale.sent += 1;
        let seq = stale.sent;
        stale.undelivered.push_back((seq, update.len()));
        stale.undelivered_items += update.len();
        if stale.undelivered.len() > UNDELIVERED_CAP {
            if let (Some((_, older)), Some((seq, items))) =
                (stale.undelivered.pop_front(), stale.undelivered.pop_front())
            {
                stale.undelivered.push_front((seq, older + items));
            }
        }
        if let Some(u) = &update.underlay {
            if !stale.paths.is_empty() {
                for p in &u.announce {
                    stale.paths.remove(p);
                }
            }
            if !u.withdraw.is_empty() {
                stale
                    .in_flight
                    .push_back((seq, Withdrawn::new(u.withdraw.iter())));
                stale.in_flight_paths += u.withdraw.len();
                let merge_past = IN_FLIGHT_CAP.max(2 * stale.merged_paths);
                if stale.in_flight_paths > merge_past {
                    stale.merge_in_flight();
                }
            }
        }
        if let Some(t) = &update.tunnel {
            for o in &t.announce {
                stale.tunnels.remove(o);
            }
            for o in &t.withdraw {
                stale.tunnels.insert(*o, seq);
            }
        }
        seq
    }

    /// `peer`'s current session delivered every push up to `through`.
    pub fn delivered(&mut self, peer: PeerId, through: u64) {
        if let Some(stale) = self.peers.get_mut(&peer) {
            while stale.in_flight.front().is_some_and(|(s, _)| *s <= through) {
                if let Some((_, paths)) = stale.in_flight.pop_front() {
                    stale.in_flight_paths -= paths.len();
                }
            }
            if stale.in_flight.is_empty() {
                stale.merged_paths = 0;
            }
            while let Some(&(seq, items)) = stale.undelivered.front() {
                if seq > through {
                    break;
                }
                stale.undelivered.pop_front();
                stale.undelivered_items -= items;
            }
            stale.tunnels.retain(|_, seq| *seq > through);
        }
    }

    /// `peer`'s session ended; `view` is everything it was offered, any of
    /// which it may hold.
    pub fn session_down(&mut self, peer: PeerId, view: OutUpdate) {
        let stale = self.peers.entry(peer).or_default();
        stale.unacked();
        if let Some(u) = view.underlay {
            stale.paths.extend(u.announce);
        }
        if let Some(t) = view.tunnel {
            stale.tunnels.extend(t.announce.into_iter().map(|o| (o, UNACKED)));
        }
        if stale.is_empty() {
            self.peers.remove(&peer);
        }
    }

    /// An interface was re-created: its index `from` is now `to`. The
    /// records under `from` move to `to` (folded into any there), where
    /// the next session withdraws what they hold; under `from` they would
    /// stay for good.
    pub fn moved(&mut self, from: u32, to: u32) {
        if from == to {
            return;
        }
        let ids: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|id| id.ifindex == from)
            .copied()
            .collect();
        for id in ids {
            let Some(old) = self.peers.remove(&id) else { continue };
            let new = PeerId { ifindex: to, ..id };
            self.peers.entry(new).or_default().absorb(old);
        }
    }

    /// A session with `peer` starts and `view` is everything it should
    /// have from us: returns the push that makes its view whole, to be
    /// handed to [`Told::pushed`] and sent like any other (it is the new
    /// session's first). It announces `view` and withdraws whatever the
    /// peer may hold beyond it. Records of other addresses on the same
    /// interface are folded into this one (see the module's text).
    pub fn session_up(&mut self, peer: PeerId, view: OutUpdate) -> OutUpdate {
        let moved: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|id| id.ifindex == peer.ifindex && **id != peer)
            .copied()
            .collect();
        let inherited: Vec<Stale> =
            moved.iter().filter_map(|id| self.peers.remove(id)).collect();
        let stale = self.peers.entry(peer).or_default();
        // Whatever the last session had in flight is now unacknowledged.
        stale.unacked();
        for old in inherited {
            stale.absorb(old);
        }
        stale.sent = 0;
        let mut push = view;
        // What the peer may hold beyond the view is withdrawn by this push,
        // and remembered again, as in flight, once it is handed over. What
        // it may hold of the view is marked so: withdrawing it later is
        // not a no-op.
        let (held, withdraw): (BTreeSet<OutPath>, BTreeSet<OutPath>) = {
            let announce = push.underlay.as_ref().map(|u| &u.announce);
            std::mem::take(&mut stale.paths)
                .into_iter()
                .partition(|p| announce.is_some_and(|a| a.contains(p)))
        };
        if !held.is_empty() {
            push.underlay_mut().held = held;
        }
        let withdraw_tunnels: BTreeSet<TunnelOrigin> = {
            let announce = push.tunnel.as_ref().map(|t| &t.announce);
            stale
                .tunnels
                .keys()
                .filter(|o| !announce.is_some_and(|a| a.contains(*o)))
                .copied()
                .collect()
        };
        if !withdraw.is_empty() {
            push.underlay_mut().withdraw = withdraw;
        }
        if !withdraw_tunnels.is_empty() {
            push.tunnel_mut().withdraw = withdraw_tunnels;
        }
        push
    }

    /// How many paths and tunnel endpoints are remembered, over all peers
    /// (memory statistics and tests; a path withdrawn by two pushes in
    /// flight counts twice).
    pub fn len(&self) -> usize {
        self.peers
            .values()
            .map(|s| s.paths.len() + s.tunnels.len() + s.in_flight_paths)
            .sum()
    }

    /// Whether a peer other than `besides` has more than `limit` items of
    /// its current session's pushes not yet reported delivered.
    pub fn lags(&self, besides: PeerId, limit: usize) -> bool {
        self.peers
            .iter()
            .any(|(p, s)| *p != besides && s.undelivered_items > limit)
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.peers.values().all(Stale::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::sync::Arc;

    use ddm_proto::outgoing::{Names, Suffix};
    use oxnet::Ipv6Net;

    use super::*;

    fn peer(ifindex: u32, n: u16) -> PeerId {
        PeerId { ifindex, addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n) }
    }

    /// The path to `fd00:n::/64` from `s1`, all of them sharing one
    /// storage, as an originator's and a decoded body's do: what they
    /// withdraw is remembered in runs ([`Withdrawn::Runs`]).
    fn path(n: u16) -> OutPath {
        static S1: std::sync::LazyLock<Names> =
            std::sync::LazyLock::new(|| Arc::new(Box::new([Arc::from("s1")])));
        OutPath::new(net(n), S1.clone(), None)
    }

    fn net(n: u16) -> Ipv6Net {
        Ipv6Net::new(Ipv6Addr::new(0xfd00, n, 0, 0, 0, 0, 0, 0), 64).unwrap()
    }

    /// Withdrawals come back as they were given, each with the storage it
    /// had, in runs where paths share storage and one by one where runs
    /// would not be smaller.
    #[test]
    fn withdrawn_paths_come_back_as_given() {
        let own = |n: u16, name: &str| {
            OutPath::new(net(n), Arc::new(Box::new([Arc::from(name)])), None)
        };
        let t1: Suffix = Arc::new(Arc::from("t1"));
        let s5: Names = Arc::new(Box::new([Arc::from("s5")]));
        let mut given: Vec<OutPath> = (1..=40).map(path).collect();
        // The same hostnames as 1–40, on storage of their own.
        given.extend((41..=60).map(|n| own(n, "s1")));
        let shared = own(61, "s2");
        given.extend((61..=80).map(|n| shared.to(net(n))));
        given.extend((81..=84).map(|n| own(n, "s3")));
        given.extend(
            (85..=99)
                .map(|n| OutPath::new(net(n), s5.clone(), Some(t1.clone()))),
        );
        // The same storage without the suffix: a run of its own.
        given.extend(
            (100..=102).map(|n| OutPath::new(net(n), s5.clone(), None)),
        );
        let kept = Withdrawn::new(given.iter());
        let Withdrawn::Runs { runs, .. } = &kept else {
            panic!("runs are smaller: {kept:?}");
        };
        // 1–40, 61–80, 85–99 and 100–102 are one run each; 41–60 and
        // 81–84 one each (fresh storage every time).
        assert_eq!(runs.len(), 1 + 20 + 1 + 4 + 1 + 1);
        assert_eq!(kept.len(), given.len());
        let mut back = Vec::new();
        kept.extend_into(&mut back);
        assert_eq!(back, given);
        assert!(back.iter().zip(&given).all(|(b, g)| b.shares_path(g)));
        // Every path on storage of its own: kept one by one.
        let apart: Vec<OutPath> = (1..=10).map(|n| own(n, "s4")).collect();
        let kept = Withdrawn::new(apart.iter());
        assert!(matches!(kept, Withdrawn::Paths(_)), "{kept:?}");
        let mut back = Vec::new();
        kept.extend_into(&mut back);
        assert_eq!(back, apart);
        assert!(back.iter().zip(&apart).all(|(b, g)| b.shares_path(g)));
    }

    fn update(announce: &[u16], withdraw: &[u16]) -> OutUpdate {
        let mut u = OutUpdate::default();
        let under = u.underlay_mut();
        under.announce = announce.iter().map(|n| path(*n)).collect();
        under.withdraw = withdraw.iter().map(|n| path(*n)).collect();
        u
    }

    fn announced(u: &OutUpdate) -> Vec<OutPath> {
        u.underlay.iter().flat_map(|u| u.announce.iter().cloned()).collect()
    }

    fn withdrawn(u: &OutUpdate) -> Vec<OutPath> {
        u.underlay.iter().flat_map(|u| u.withdraw.iter().cloned()).collect()
    }

    /// The scenario of a one-sided reset: the peer got 1 and 2; a
    /// withdrawal of 2 was queued when our side reset the session; while
    /// it was down we withdrew 1 and originated 3. The new session's first
    /// push announces the view (3) and withdraws 1 and 2.
    #[test]
    fn a_new_session_announces_the_view_and_withdraws_the_rest() {
        let p = peer(1, 1);
        let mut told = Told::new();
        let first = told.session_up(p, update(&[1, 2], &[]));
        assert_eq!(told.pushed(p, &first), 1);
        told.delivered(p, 1);
        assert_eq!(told.pushed(p, &update(&[], &[2])), 2);
        // Not delivered: the session ends with the withdrawal queued.
        told.session_down(p, update(&[1], &[]));
        let resync = told.session_up(p, update(&[3], &[]));
        assert_eq!(announced(&resync), vec![path(3)]);
        assert_eq!(withdrawn(&resync), vec![path(1), path(2)]);
        assert_eq!(told.pushed(p, &resync), 1, "sequence restarts");
        assert_eq!(told.len(), 2, "kept until delivered");
        told.delivered(p, 1);
        assert!(told.is_empty());
        // Nothing stale: the next session only announces.
        told.session_down(p, OutUpdate::default());
        told.delivered(p, 1);
        let again = told.session_up(p, update(&[3], &[]));
        assert!(withdrawn(&again).is_empty());
    }

    /// A withdrawal kept in runs that was in flight when the session
    /// ended is withdrawn by the next session's first push, every path of
    /// it, and forgotten once that push is delivered.
    #[test]
    fn a_withdrawal_in_runs_outlives_the_session() {
        let p = peer(1, 1);
        let mut told = Told::new();
        let first = told.session_up(p, update(&[1, 2, 3, 4, 5, 6], &[]));
        told.pushed(p, &first);
        told.delivered(p, 1);
        let gone = update(&[], &[2, 3, 4, 5]);
        told.pushed(p, &gone);
        assert!(matches!(
            told.peers[&p].in_flight.back(),
            Some((_, Withdrawn::Runs { .. }))
        ));
        told.session_down(p, update(&[1, 6], &[]));
        let resync = told.session_up(p, update(&[6], &[]));
        assert_eq!(announced(&resync), vec![path(6)]);
        let expected: Vec<OutPath> = [1, 2, 3, 4, 5].map(path).into();
        assert_eq!(withdrawn(&resync), expected);
        let seq = told.pushed(p, &resync);
        told.delivered(p, seq);
        assert!(told.is_empty());
    }

    /// A path of its own for each `n` (more than `path` has).
    fn path32(n: u32) -> OutPath {
        let (hi, lo) = ((n >> 16) as u16, n as u16);
        let dest =
            Ipv6Net::new(Ipv6Addr::new(0xfd01, hi, lo, 0, 0, 0, 0, 0), 64)
                .unwrap();
        OutPath::new(dest, Arc::new(Box::new([Arc::from("s1")])), None)
    }

    /// A peer that acknowledges nothing while the same paths are withdrawn
    /// and announced again, push after push, costs a bounded record: past
    /// the cap, the lists in flight are merged into one, each path once,
    /// delivered with the newest push; the undelivered counts stay bounded
    /// too, and all comes back to nothing once delivered.
    #[test]
    fn a_peer_that_never_acknowledges_costs_a_bounded_record() {
        let p = peer(1, 1);
        let mut told = Told::new();
        told.session_up(p, OutUpdate::default());
        let many: Vec<u16> = (0..4096).collect();
        let pushes = 2 * IN_FLIGHT_CAP / many.len() + 1;
        for _ in 0..pushes {
            told.pushed(p, &update(&[], &many));
            told.pushed(p, &update(&many, &[]));
        }
        assert!(told.len() <= IN_FLIGHT_CAP + many.len(), "{}", told.len());
        let mut last = 0;
        for _ in 0..UNDELIVERED_CAP {
            last = told.pushed(p, &update(&[1], &[]));
        }
        let stale = &told.peers[&p];
        assert_eq!(stale.undelivered.len(), UNDELIVERED_CAP);
        let items = 2 * pushes * many.len() + UNDELIVERED_CAP;
        assert_eq!(stale.undelivered_items, items);
        assert!(told.lags(peer(2, 2), items - 1));
        told.delivered(p, last - 1);
        assert!(told.lags(peer(2, 2), 0), "one push still undelivered");
        told.delivered(p, last);
        assert!(!told.lags(peer(2, 2), 0));
        assert!(told.is_empty(), "all delivered: nothing remembered");
    }

    /// One push withdrawing more than the cap (a transit's peer gone with
    /// its 250,000 prefixes) is forgotten once delivered, as any push is;
    /// so is a new session's first push withdrawing as many.
    #[test]
    fn a_withdrawal_past_the_cap_is_forgotten_once_delivered() {
        let p = peer(1, 1);
        let mut told = Told::new();
        told.session_up(p, OutUpdate::default());
        let mut big = OutUpdate::default();
        big.underlay_mut().withdraw =
            (0..=IN_FLIGHT_CAP as u32).map(path32).collect();
        let seq = told.pushed(p, &big);
        assert_eq!(told.len(), IN_FLIGHT_CAP + 1);
        told.delivered(p, seq);
        assert!(told.is_empty());
        // Stale beyond the cap at a new session: withdrawn, and forgotten
        // once that push is delivered.
        told.pushed(p, &big);
        told.session_down(p, OutUpdate::default());
        let resync = told.session_up(p, OutUpdate::default());
        assert_eq!(withdrawn(&resync).len(), IN_FLIGHT_CAP + 1);
        let seq = told.pushed(p, &resync);
        told.delivered(p, seq);
        assert!(told.is_empty());
    }

    #[test]
    fn delivered_withdrawals_are_forgotten() {
        let p = peer(1, 1);
        let mut told = Told::new();
        told.session_up(p, OutUpdate::default());
        told.pushed(p, &update(&[], &[1, 2]));
        told.pushed(p, &update(&[], &[3]));
        told.delivered(p, 1);
        assert_eq!(told.len(), 1, "only the second push is outstanding");
        told.pushed(p, &update(&[3], &[]));
        told.delivered(p, 3);
        assert!(told.is_empty(), "everything delivered: nothing stale");
    }

    /// A peer lags while more than the limit of what its session was
    /// pushed is undelivered; not once delivered, nor once the session
    /// ended; a peer never lags for itself.
    #[test]
    fn a_peer_lags_by_its_undelivered_items() {
        let (p, q) = (peer(1, 1), peer(2, 2));
        let mut told = Told::new();
        told.session_up(p, OutUpdate::default());
        told.pushed(p, &update(&[1, 2], &[]));
        assert!(!told.lags(q, 2), "at the limit");
        told.pushed(p, &update(&[], &[3]));
        assert!(told.lags(q, 2));
        assert!(!told.lags(p, 2), "its own backlog");
        told.delivered(p, 1);
        assert!(told.lags(q, 0), "the second push is outstanding");
        assert!(!told.lags(q, 1));
        told.pushed(p, &update(&[4, 5], &[]));
        assert!(told.lags(q, 2));
        told.session_down(p, OutUpdate::default());
        assert!(!told.lags(q, 0), "nothing of an ended session lags");
        told.session_up(p, OutUpdate::default());
        told.delivered(p, 9);
        assert!(!told.lags(q, 0));
    }

    /// A path withdrawn and announced again while the withdrawal is in
    /// flight is not withdrawn by the next session if the view has it.
    #[test]
    fn an_announcement_after_a_withdrawal_in_flight_is_not_withdrawn() {
        let p = peer(1, 1);
        let mut told = Told::new();
        told.session_up(p, OutUpdate::default());
        told.pushed(p, &update(&[], &[1, 2]));
        told.pushed(p, &update(&[1], &[]));
        told.session_down(p, update(&[1], &[]));
        let resync = told.session_up(p, update(&[1], &[]));
        assert_eq!(announced(&resync), vec![path(1)]);
        assert_eq!(withdrawn(&resync), vec![path(2)]);
    }

    /// What a resync withdraws is forgotten once that push is delivered.
    #[test]
    fn a_delivered_resync_leaves_nothing_stale() {
        let p = peer(1, 1);
        let mut told = Told::new();
        told.session_down(p, update(&[1, 2], &[]));
        let resync = told.session_up(p, update(&[1], &[]));
        assert_eq!(withdrawn(&resync), vec![path(2)]);
        assert_eq!(told.pushed(p, &resync), 1);
        assert_eq!(told.len(), 1);
        told.delivered(p, 1);
        assert!(told.is_empty());
    }

    /// A peer renumbered on its interface: what the old address's
    /// session may have left (a withdrawal in flight, the view it held)
    /// is withdrawn by the new address's first push, in one record per
    /// interface; another interface's record stays its own.
    #[test]
    fn a_new_address_on_the_interface_inherits_the_old_ones_record() {
        let (old, new, other) = (peer(1, 1), peer(1, 2), peer(2, 1));
        let mut told = Told::new();
        let first = told.session_up(old, update(&[1, 3], &[]));
        told.pushed(old, &first);
        told.delivered(old, 1);
        // A withdrawal of 3 in flight when the address went away.
        told.pushed(old, &update(&[], &[3]));
        told.session_down(old, update(&[1], &[]));
        told.session_down(other, update(&[2], &[]));
        let push = told.session_up(new, update(&[4], &[]));
        assert_eq!(announced(&push), vec![path(4)]);
        assert_eq!(withdrawn(&push), vec![path(1), path(3)]);
        told.pushed(new, &push);
        told.delivered(new, 1);
        assert_eq!(told.len(), 1, "the other interface's record stays");
        let again = told.session_up(other, OutUpdate::default());
        assert_eq!(withdrawn(&again), vec![path(2)]);
    }

    /// A re-created interface's records move to its new index, where the
    /// next session withdraws them; nothing stays under the old index.
    #[test]
    fn records_move_with_a_re_created_interface() {
        let (old, new) = (peer(1, 1), peer(7, 1));
        let mut told = Told::new();
        told.session_down(old, update(&[1, 2], &[]));
        told.moved(1, 7);
        let push = told.session_up(new, update(&[2], &[]));
        assert_eq!(withdrawn(&push), vec![path(1)]);
        told.pushed(new, &push);
        told.delivered(new, 1);
        assert!(told.is_empty(), "nothing left under the old index");
    }
}
