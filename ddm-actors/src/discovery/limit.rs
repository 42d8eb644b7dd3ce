//! Rate limits that keep discovery from being turned against the link.
//!
//! Pure, like the state machine: every call takes the time, so tests drive
//! them with made-up instants.
//!
//! * [`TokenBucket`]: at most `burst` at once, refilled at `rate` per
//!   second.
//! * [`AnswerLimiter`]: whether to answer a solicitation from a source. Each
//!   source has its own bucket (burst [`PER_SOURCE_BURST`], at least
//!   [`PER_SOURCE_RATE`] per second), so one flooding router draws a
//!   trickle of advertisements, never one per solicitation; all sources
//!   other than the current peer share one more bucket, so an attacker that
//!   rotates spoofed source addresses is bounded too, while the peer keeps
//!   being answered. At most [`MAX_SOURCES`] sources are remembered. The
//!   peer has a bucket of its own ([`PEER_BURST`], [`PEER_RATE`]): the
//!   original daemon answers every solicitation, and a peer soliciting
//!   faster than we do (its own solicit interval, with an expiry to
//!   match) must be answered each time, or it expires us.
//! * [`LogLimiter`]: at most [`LOG_LINES_PER_MINUTE`] log lines of a kind
//!   per minute on an interface (one for peer churn, one for malformed
//!   packets), counting the ones it holds back.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use slog::{warn, Logger};
use tokio::time::Instant;

/// Solicitations from one source answered back to back.
pub const PER_SOURCE_BURST: f64 = 4.0;
/// Solicitations from one source answered per second once the burst is
/// spent (raised to two per solicit interval if that is shorter).
pub const PER_SOURCE_RATE: f64 = 2.0;
/// Solicitations from the current peer answered back to back.
pub const PEER_BURST: f64 = 8.0;
/// Solicitations from the current peer answered per second once the burst
/// is spent (raised to two per solicit interval if that is more): every
/// one of a peer soliciting every 50 ms.
pub const PEER_RATE: f64 = 20.0;
/// Solicitations from all sources but the peer answered back to back.
pub const SHARED_BURST: f64 = 16.0;
/// Solicitations from all sources but the peer answered per second.
pub const SHARED_RATE: f64 = 8.0;
/// Sources remembered per interface; beyond that, new sources are not
/// answered until old ones are forgotten (once their bucket is full again).
pub const MAX_SOURCES: usize = 256;
/// Peer-churn log lines per interface per minute.
pub const LOG_LINES_PER_MINUTE: u32 = 6;

/// A token bucket: [`TokenBucket::take`] succeeds while tokens remain;
/// tokens come back at a steady rate up to the burst.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Most tokens held.
    burst: f64,
    /// Tokens added per second.
    rate: f64,
    /// Tokens held at `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(now: Instant, burst: f64, rate: f64) -> Self {
        TokenBucket { burst, rate, tokens: burst, last: now }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards adds nothing.
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// True when the bucket has refilled completely (it then behaves as a
    /// new one and can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Decides which solicitations get an answer.
#[derive(Debug, Clone)]
pub struct AnswerLimiter {
    /// Per-source refill rate.
    rate: f64,
    /// One bucket per recent source.
    sources: HashMap<Ipv6Addr, TokenBucket>,
    /// The bucket all sources but the peer share.
    shared: TokenBucket,
    /// The current peer's.
    peer: TokenBucket,
}

impl AnswerLimiter {
    /// A limiter for an interface that solicits every `solicit_interval`.
    pub fn new(now: Instant, solicit_interval: Duration) -> Self {
        let interval = solicit_interval.as_secs_f64();
        let rate = if interval > 0.0 {
            PER_SOURCE_RATE.max(2.0 / interval)
        } else {
            PER_SOURCE_RATE
        };
        AnswerLimiter {
            rate,
            sources: HashMap::new(),
            shared: TokenBucket::new(now, SHARED_BURST, SHARED_RATE),
            peer: TokenBucket::new(now, PEER_BURST, PEER_RATE.max(rate)),
        }
    }

    /// Whether to answer a solicitation from `from`; `peer` says whether
    /// it is the router this interface exchanges with (which takes from
    /// its own bucket only).
    pub fn allow(&mut self, now: Instant, from: Ipv6Addr, peer: bool) -> bool {
        if peer {
            return self.peer.take(now);
        }
        if !self.sources.contains_key(&from)
            && self.sources.len() >= MAX_SOURCES
        {
            self.sources.retain(|_, b| !b.is_full(now));
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let rate = self.rate;
        let bucket = self
            .sources
            .entry(from)
            .or_insert_with(|| TokenBucket::new(now, PER_SOURCE_BURST, rate));
        bucket.take(now) && self.shared.take(now)
    }

    /// Sources currently remembered.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// Lets a few log lines through per minute and counts the rest.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    /// Start of the current minute.
    window_start: Option<Instant>,
    /// Lines let through in it.
    shown: u32,
    /// Lines held back in it (reported when the next window opens).
    held: u64,
    /// Lines held back in all.
    total_held: u64,
}

/// What to do with one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    /// Write it; `held_before` lines were held back in the previous
    /// window (write that too, when not zero).
    Show {
        /// Lines held back since the last line shown.
        held_before: u64,
    },
    /// Hold it back (it is counted).
    Hold,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// A limiter that has let nothing through yet.
    pub fn new() -> Self {
        LogLimiter { window_start: None, shown: 0, held: 0, total_held: 0 }
    }

    /// Whether to write a line at `now`.
    pub fn check(&mut self, now: Instant) -> LogVerdict {
        let minute = Duration::from_secs(60);
        let mut held_before = 0;
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < minute => {}
            _ => {
                self.window_start = Some(now);
                self.shown = 0;
                held_before = std::mem::take(&mut self.held);
            }
        }
        if self.shown < LOG_LINES_PER_MINUTE {
            self.shown += 1;
            LogVerdict::Show { held_before }
        } else {
            self.held += 1;
            self.total_held += 1;
            LogVerdict::Hold
        }
    }

    /// Whether a line may be written now; when it may, and lines were
    /// held back before it, a warning saying how many (of `what`) goes
    /// first.
    pub fn allow(&mut self, log: &Logger, what: &str) -> bool {
        match self.check(Instant::now()) {
            LogVerdict::Show { held_before } => {
                if held_before > 0 {
                    warn!(log, "{what} not logged (rate limit)";
                        "suppressed" => held_before);
                }
                true
            }
            LogVerdict::Hold => false,
        }
    }

    /// Lines held back since the limiter was made.
    pub fn total_held(&self) -> u64 {
        self.total_held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n)
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 4.0, 2.0);
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 4);
        // Half a second brings back one token.
        let t = t0 + Duration::from_millis(500);
        assert!(b.take(t));
        assert!(!b.take(t));
        // Ten seconds refill only up to the burst.
        let t = t + Duration::from_secs(10);
        assert!(b.is_full(t));
        assert_eq!((0..10).filter(|_| b.take(t)).count(), 4);
        // A clock going backwards neither panics nor adds tokens.
        assert!(!b.take(t0));
    }

    #[test]
    fn a_flooding_source_is_answered_at_the_bounded_rate() {
        let t0 = Instant::now();
        let mut l = AnswerLimiter::new(t0, Duration::from_secs(2));
        // 5,000 solicitations over 10 s (one every 2 ms) from one source.
        let mut answered = 0;
        for i in 0..5000u64 {
            let now = t0 + Duration::from_millis(2 * i);
            if l.allow(now, addr(9), false) {
                answered += 1;
            }
        }
        // Burst 4, then 2 per second for ~10 s.
        assert!((20..=25).contains(&answered), "{answered}");
    }

    #[test]
    fn the_peer_is_answered_while_spoofed_sources_flood() {
        let t0 = Instant::now();
        let mut l = AnswerLimiter::new(t0, Duration::from_secs(2));
        let mut answered_flood = 0;
        let mut answered_peer = 0;
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(i);
            // Every solicitation from a new spoofed address.
            if l.allow(now, addr(1000 + (i % 5000) as u16), false) {
                answered_flood += 1;
            }
            // The peer solicits every two seconds.
            if i % 2000 == 0 && l.allow(now, addr(1), true) {
                answered_peer += 1;
            }
        }
        assert_eq!(answered_peer, 5);
        // The shared bucket: burst 16, then 8 per second for 10 s.
        assert!(answered_flood <= 16 + 8 * 10, "{answered_flood}");
        assert!(l.sources() <= MAX_SOURCES);
    }

    /// A peer soliciting faster than we do is answered each time (the
    /// original answers every solicitation), and one flooding is answered
    /// at the peer's bounded rate.
    #[test]
    fn the_peer_is_answered_at_its_own_pace() {
        let t0 = Instant::now();
        let mut l = AnswerLimiter::new(t0, Duration::from_secs(2));
        for i in 0..200u64 {
            let now = t0 + Duration::from_millis(50 * i);
            assert!(l.allow(now, addr(1), true), "solicitation {i}");
        }
        let t1 = t0 + Duration::from_secs(60);
        let answered = (0..10_000u64)
            .filter(|i| l.allow(t1 + Duration::from_millis(*i), addr(1), true))
            .count();
        // Burst 8, then 20 per second for 10 s.
        assert!((200..=210).contains(&answered), "{answered}");
    }

    #[test]
    fn a_short_solicit_interval_raises_the_per_source_rate() {
        let t0 = Instant::now();
        let mut l = AnswerLimiter::new(t0, Duration::from_millis(100));
        // A router soliciting every 200 ms (past the 2 per second of a
        // 2 s interval) is always answered.
        for i in 0..100u64 {
            let now = t0 + Duration::from_millis(200 * i);
            assert!(l.allow(now, addr(1), false), "solicitation {i}");
        }
    }

    #[test]
    fn log_lines_are_limited_per_minute_and_counted() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new();
        let verdicts: Vec<_> = (0..100)
            .map(|i| l.check(t0 + Duration::from_millis(10 * i)))
            .collect();
        let shown = verdicts
            .iter()
            .filter(|v| matches!(v, LogVerdict::Show { .. }))
            .count();
        assert_eq!(shown, LOG_LINES_PER_MINUTE as usize);
        assert_eq!(l.total_held(), 100 - LOG_LINES_PER_MINUTE as u64);
        // The next minute's first line reports what was held back.
        let next = l.check(t0 + Duration::from_secs(61));
        assert_eq!(
            next,
            LogVerdict::Show { held_before: 100 - LOG_LINES_PER_MINUTE as u64 }
        );
        assert_eq!(
            l.check(t0 + Duration::from_secs(62)),
            LogVerdict::Show { held_before: 0 }
        );
    }
}
