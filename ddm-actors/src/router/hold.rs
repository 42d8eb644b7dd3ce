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
//! yet reported delivered (`rib::Told` counts them, by the pushes' sequence
//! numbers it already keeps for a reset); it goes back as soon as that backlog is back to
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

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::rib::PeerId;

/// Items handed to a peer's exchange actor and not yet delivered beyond
/// which imports from other peers are held (two pushes' worth).
pub(super) const BACKLOG_LIMIT: usize = 4096;

/// The longest a permit is held for a lagging peer.
pub(super) const HOLD_MAX: Duration = Duration::from_millis(20);

/// The import permits held while another peer lags. `lagging(from)` says
/// whether a peer other than `from` is more than [`BACKLOG_LIMIT`] behind.
#[derive(Debug)]
pub(super) struct Hold<P> {
    /// Held permits, oldest first: the importing peer, when the permit
    /// goes back at the latest, the permit.
    held: VecDeque<(PeerId, Instant, P)>,
}

impl<P> Default for Hold<P> {
    fn default() -> Self {
        Hold { held: VecDeque::new() }
    }
}

impl<P> Hold<P> {
    /// The permit of an import from `from`: back at once (`Some`) or held
    /// (`None`; [`Hold::due`] gives it back).
    pub fn take(
        &mut self,
        from: PeerId,
        permit: P,
        now: Instant,
        lagging: impl Fn(PeerId) -> bool,
    ) -> Option<P> {
        if lagging(from) {
            self.held.push_back((from, now + HOLD_MAX, permit));
            None
        } else {
            Some(permit)
        }
    }

    /// The held permits that go back now, oldest first: their time is up,
    /// or no other peer lags any more.
    pub fn due(
        &mut self,
        now: Instant,
        lagging: impl Fn(PeerId) -> bool,
    ) -> Vec<P> {
        let mut back = Vec::new();
        let mut kept = VecDeque::new();
        for (from, until, permit) in std::mem::take(&mut self.held) {
            if until <= now || !lagging(from) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn peer(i: u32) -> PeerId {
        PeerId { ifindex: i, addr: format!("fe80::{i}").parse().unwrap() }
    }

    #[test]
    fn a_permit_is_held_only_while_another_peer_lags() {
        let now = Instant::now();
        let mut h: Hold<u32> = Hold::default();
        // Peer 2 lags: imports from any other peer are held.
        let lags = Cell::new(false);
        let lagging = |from| lags.get() && from != peer(2);
        assert_eq!(h.take(peer(1), 1, now, lagging), Some(1));
        lags.set(true);
        assert_eq!(h.take(peer(1), 3, now, lagging), None);
        assert_eq!(h.take(peer(2), 4, now, lagging), Some(4), "its own");
        assert!(h.due(now, lagging).is_empty());
        assert_eq!(h.next_due(), Some(now + HOLD_MAX));
        // It catches up: the permit goes back.
        lags.set(false);
        assert_eq!(h.due(now, lagging), vec![3]);
        assert_eq!(h.next_due(), None);
    }

    #[test]
    fn a_held_permit_goes_back_after_the_bound() {
        let now = Instant::now();
        let mut h: Hold<u32> = Hold::default();
        let lagging = |_| true;
        assert_eq!(h.take(peer(1), 1, now, lagging), None);
        let later = now + HOLD_MAX / 2;
        assert_eq!(h.take(peer(1), 2, later, lagging), None);
        // A peer that never delivers holds each permit for the bound.
        let before = now + HOLD_MAX - Duration::from_millis(1);
        assert!(h.due(before, lagging).is_empty());
        assert_eq!(h.due(now + HOLD_MAX, lagging), vec![1]);
        assert_eq!(h.next_due(), Some(later + HOLD_MAX));
        assert_eq!(h.due(later + HOLD_MAX, lagging), vec![2]);
    }
}
