//! Import permits held while a downstream peer lags (pure: time passed in).
//!
//! A peer's push is read only with one of its import permits, and the
//! router gives a permit back once its dataplane worker has taken the
//! import's route changes: a router takes in no faster than its kernel
//! takes routes. A transit also passes what it imports on, and a peer that
//! takes it slower than this router's kernel (a busier machine, a peer with
//! more to program) makes the difference pile up here: in that peer's
//! exchange actor, and for withdrawals a second time in `rib::Told`. On the
//! 100,000-prefix benchmark the receiving server trailed the transit by up
//! to 36,000 routes, and the transit's peak memory moved with it by up to
//! 1.8 MiB from run to run (3 MiB once); with the hold, by up to 15,000
//! routes and 0.5 MiB, in the same time.
//!
//! So on a transit an import's permit is also held while more than
//! [`BACKLOG_LIMIT`] items handed to another peer's exchange actor are not
//! yet reported delivered; it goes back as soon as that backlog is back to
//! the limit, and after [`HOLD_MAX`] whatever the peer does (its `Release`
//! then still goes to the dataplane worker behind the work queued before
//! it). A server passes nothing on, so its permits are never held. The
//! bound keeps a dead or stalled peer, a peer still taking a new session's
//! first push (one batch, delivered only at its end), or two transits each
//! waiting for the other from doing more than slowing imports to about two
//! pushes per [`HOLD_MAX`] per peer (at most 200,000 items a second at
//! 2,048 items a push) until the backlog is delivered or the session ends.
//! The importing peer's own backlog does not hold its permits: what we push
//! back to it does not grow with what it pushes us.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::rib::PeerId;

/// Items handed to a peer's exchange actor and not yet delivered beyond
/// which imports from other peers are held (two pushes' worth).
pub(super) const BACKLOG_LIMIT: usize = 4096;

/// The longest a permit is held for a lagging peer.
pub(super) const HOLD_MAX: Duration = Duration::from_millis(20);

/// What each peer's exchange actor holds undelivered, and the permits held
/// for it.
#[derive(Debug)]
pub(super) struct Hold<P> {
    /// Per peer: the undelivered pushes of its current session (sequence
    /// number, items), oldest first, and their items in all.
    backlog: HashMap<PeerId, (VecDeque<(u64, usize)>, usize)>,
    /// Held permits, oldest first: the importing peer, when the permit
    /// goes back at the latest, the permit.
    held: VecDeque<(PeerId, Instant, P)>,
}

impl<P> Default for Hold<P> {
    fn default() -> Self {
        Hold { backlog: HashMap::new(), held: VecDeque::new() }
    }
}

impl<P> Hold<P> {
    /// Push `seq` of `peer`'s current session, of `items` items, is handed
    /// to its exchange actor.
    pub fn pushed(&mut self, peer: PeerId, seq: u64, items: usize) {
        let (pushes, total) = self.backlog.entry(peer).or_default();
        pushes.push_back((seq, items));
        *total += items;
    }

    /// `peer`'s exchange actor delivered its pushes through `through`.
    pub fn delivered(&mut self, peer: PeerId, through: u64) {
        if let Some((pushes, total)) = self.backlog.get_mut(&peer) {
            while let Some(&(seq, items)) = pushes.front() {
                if seq > through {
                    break;
                }
                pushes.pop_front();
                *total -= items;
            }
            if pushes.is_empty() {
                self.backlog.remove(&peer);
            }
        }
    }

    /// `peer`'s session ended or a new one started: nothing of the old one
    /// will be reported delivered.
    pub fn session_ended(&mut self, peer: PeerId) {
        self.backlog.remove(&peer);
    }

    /// Whether a permit of `from` is to be held now.
    fn lagging(&self, from: PeerId) -> bool {
        self.backlog
            .iter()
            .any(|(peer, (_, items))| *peer != from && *items > BACKLOG_LIMIT)
    }

    /// The permit of an import from `from`: back at once (`Some`) or held
    /// (`None`; [`Hold::due`] gives it back).
    pub fn take(&mut self, from: PeerId, permit: P, now: Instant) -> Option<P> {
        if self.lagging(from) {
            self.held.push_back((from, now + HOLD_MAX, permit));
            None
        } else {
            Some(permit)
        }
    }

    /// The held permits that go back now, oldest first: their time is up,
    /// or no other peer lags any more.
    pub fn due(&mut self, now: Instant) -> Vec<P> {
        let mut back = Vec::new();
        let mut kept = VecDeque::new();
        for (from, until, permit) in std::mem::take(&mut self.held) {
            if until <= now || !self.lagging(from) {
                back.push(permit);
            } else {
                kept.push_back((from, until, permit));
            }
        }
        self.held = kept;
        back
    }

    /// When the oldest held permit goes back at the latest.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.iter().map(|(_, until, _)| *until).min()
    }

    /// How many permits are held (tests).
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u32) -> PeerId {
        PeerId { ifindex: i, addr: format!("fe80::{i}").parse().unwrap() }
    }

    #[test]
    fn a_permit_is_held_only_while_another_peer_lags() {
        let now = Instant::now();
        let mut h: Hold<u32> = Hold::default();
        // Nothing undelivered: back at once.
        assert_eq!(h.take(peer(1), 1, now), Some(1));
        // Peer 2 lags by more than the limit: peer 1's permits are held,
        // peer 2's own are not.
        h.pushed(peer(2), 1, BACKLOG_LIMIT);
        assert_eq!(h.take(peer(1), 2, now), Some(2), "at the limit");
        h.pushed(peer(2), 2, 1);
        assert_eq!(h.take(peer(1), 3, now), None);
        assert_eq!(h.take(peer(2), 4, now), Some(4), "its own backlog");
        assert_eq!(h.held(), 1);
        assert!(h.due(now).is_empty());
        assert_eq!(h.next_due(), Some(now + HOLD_MAX));
        // Its first push delivered: under the limit, the permit goes back.
        h.delivered(peer(2), 1);
        assert_eq!(h.due(now), vec![3]);
        assert_eq!(h.next_due(), None);
    }

    #[test]
    fn a_held_permit_goes_back_after_the_bound_or_when_the_session_ends() {
        let now = Instant::now();
        let mut h: Hold<u32> = Hold::default();
        h.pushed(peer(2), 1, BACKLOG_LIMIT + 1);
        assert_eq!(h.take(peer(1), 1, now), None);
        let later = now + HOLD_MAX / 2;
        assert_eq!(h.take(peer(1), 2, later), None);
        // A peer that never delivers holds each permit for the bound.
        assert!(h.due(now + HOLD_MAX - Duration::from_millis(1)).is_empty());
        assert_eq!(h.due(now + HOLD_MAX), vec![1]);
        assert_eq!(h.next_due(), Some(later + HOLD_MAX));
        // Its session ends: nothing of it will be delivered, nothing held.
        h.session_ended(peer(2));
        assert_eq!(h.due(later), vec![2]);
        // Delivery reports of a session that ended change nothing.
        h.delivered(peer(2), 9);
        assert_eq!(h.take(peer(1), 3, later), Some(3));
    }
}
