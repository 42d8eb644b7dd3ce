//! The exchange session with one peer, as a pure state machine.
//!
//! [`Session::handle`] takes the time since the session started and one
//! [`Input`] (the router's pushes and pull requests, the peer's pushes,
//! the outcome of a request, a timer) and returns the [`Effect`]s the
//! exchange actor carries out (start a request, set a timer, hand something
//! to the router, count, log). It spawns nothing and reads no clock, so
//! every rule is tested by replaying inputs (`steps/*.json`, one file per
//! rule). The rules:
//!
//! * **Start**: bind the server ([`Effect::Bind`]) and pull the peer's
//!   whole set once.
//! * **Pushes from the peer are held while a pull is out** and handed on
//!   right after its answer (or its failure): the router takes an answer
//!   as the peer's whole set, so it never sees an answer after a push the
//!   peer sent later. A pull that must wait, unsent, for the router to
//!   import the last answer ([`Input::PullWaiting`]) holds nothing until
//!   it is sent ([`Input::PullSent`]): what the peer pushes before then is
//!   older than its answer. A pull asked for while one is out is made
//!   again after it.
//! * **A restarted peer is pulled again**: a new session of the peer
//!   starts with the peer pulling us, and a peer that restarted quickly
//!   may do so while our session goes on, its new process knowing nothing
//!   of what the old one told us (and so never withdrawing it). Our own
//!   daemons send their session's id with every pull and every pull answer
//!   (`server::SESSION_HEADER`). When our server answers a pull from the
//!   peer ([`Input::PeerPulled`]), we pull the peer again unless the
//!   answer we hold comes from the session that pulled; the answer, taken
//!   as the peer's whole set, drops what an old process told us. While a
//!   pull of ours is out (or due after a failure), its answer is compared
//!   when it comes instead, and pulled again after if it differs. A pull
//!   without an id (the original daemon's) is answered by one pull back,
//!   unless it comes before our first answer (which is then the peer's
//!   current set). So a pull back is at most one per pull the peer makes,
//!   and two of our daemons never pull each other back and forth.
//! * **Pushes to the peer wait for the first pull** (answered or failed),
//!   which tells the peer's body limit ([`DEFAULT_PUSH_LIMIT`], 1024 bytes,
//!   unless the answer announces more). Updates from the router are merged
//!   into a pending update ([`merge`]: a later withdraw cancels a pending
//!   announce, and of a path the peer does not hold yet nothing is sent;
//!   once the router has answered a pull of the peer, which carried
//!   everything we offer, every pending announcement counts as held:
//!   [`Input::Answered`], in order with the router's pushes)
//!   and go out one request at a time, in parts cut by [`take_chunk`]; an
//!   item no push can carry is dropped and counted (a path whose
//!   withdrawal was dropped is marked held when announced again: the peer
//!   may still hold it).
//! * **After an answer to a pull of the peer, pushes wait**
//!   ([`TimerKind::Quiet`]): the original adds a pull answer to what it
//!   holds once it has read it, so a withdrawal reaching it first would be
//!   undone. They wait [`ANSWER_QUIET`] from the router's answer, then,
//!   once our server has encoded it, [`answer_quiet`] of its size if the
//!   pull named no session and the answer was not too late for it
//!   ([`ORIGINAL_PULL_WAIT`]); a pull that named one (our own daemons)
//!   ends the wait. A later answer never shortens it; quiets back to back
//!   (or one for a very large answer) last [`QUIET_MAX`] at most, and then
//!   none starts until what waited is delivered, unprotected. What the
//!   router pushes meanwhile waits in order, in the pending batch or the
//!   next one.
//! * **A push refused as too large** (400 or 413) is no failure: it is put
//!   back and sent in halves until one is accepted; a single item refused
//!   is dropped (counted). The failure streak is untouched.
//! * **A push answered 429** (the peer's router is behind: our server's
//!   answer past its import pace) is no failure either (it ends a streak
//!   of failures): it is put back as a failed push is, and sent again
//!   after [`backoff`] of its own streak of 429s
//!   (100 ms doubling to [`BACKOFF_MAX`], back to the start once a push is
//!   accepted; counted as deferred).
//! * **Failures**: a failed push is put back in front of the pending one,
//!   its announcements marked as possibly held (it may have been applied);
//!   a failed push or pull is retried after [`backoff`]. After
//!   [`MAX_ATTEMPTS`] consecutive failures, spread over at least
//!   `give_up_after`, the peer is reported once ([`Effect::ReportFailure`])
//!   and retries go on. A bind that fails is retried on the same schedule,
//!   and once it succeeds the peer is pulled again: it may have pushed while
//!   nothing listened, and an original peer never sends a refused push
//!   again.
//! * **A push our server refused** (too large, malformed, too slow, or
//!   429 for a router behind) is
//!   pulled for, unless the peer's answers name its session (ours send it
//!   again): after the pull out, or on the pull timer.
//! * **Delivered in batches**: the pending update is cut into batches.
//!   While a part is in flight, a batch going out that needs more than one
//!   more part is closed: the router's pushes wait in the next batch,
//!   except what they say of a destination the closed batch still holds
//!   (merged there, so that everything unsent of a destination is in one
//!   place). When a batch's last part is delivered, the router is told
//!   its last push ([`Effect::Delivered`]; when nothing is left, the last
//!   push given), so that it forgets the withdrawals it remembers for a
//!   reset (`rib::Told`) while it keeps pushing, not only once the peer
//!   has caught up. A failed part puts everything unsent back into one
//!   batch.
//! * Requests and timers carry a generation; a stale one is ignored.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub use super::session_io::{
    Counter, DropReason, Effect, Failure, Input, Op, PullAnswer, TimerKind,
};

use ddm_proto::outgoing::{
    merge, take_chunk, Chunk, OutPath, OutUpdate, PushBounds,
    DEFAULT_PUSH_LIMIT, MAX_PUSH_ITEMS,
};
use ddm_proto::Version;

// The back-off is the crate's one (`crate::timer`), re-exported here
// where the session's rules use it.
pub use crate::timer::{backoff, BACKOFF_MAX, BACKOFF_MIN};
/// Most paths whose dropped withdrawal a session remembers one by one
/// ([`Session`]'s `dropped`); past it, every later announcement counts as
/// held, which costs bytes only.
const MAX_DROPPED: usize = 65_536;

/// How long the original waits for a pull's answer to begin (its
/// headers), counted from sending the request; it then reads, parses and
/// applies the answer with no time limit.
pub const ORIGINAL_PULL_WAIT: Duration = Duration::from_millis(250);

/// How long pushes wait after the router answered a pull of the peer,
/// until our server has encoded the answer: longer than
/// [`ORIGINAL_PULL_WAIT`], counted from before our answer was built.
const ANSWER_QUIET: Duration = Duration::from_millis(400);

/// What each KiB of a pull answer adds to the quiet once the answer is
/// encoded: the original reads, parses and applies it (its routes
/// included) with no time limit. About 1 µs a byte, 60 to 80 µs a path;
/// an assumption, not measured against the original here.
const APPLY_PER_KIB: Duration = Duration::from_millis(1);

/// The longest quiet, after one answer or after several in a row (a
/// table of 250,000 prefixes is about 15 MB of answer): a peer pulling
/// again and again cannot hold our pushes for longer.
pub const QUIET_MAX: Duration = Duration::from_secs(20);

/// How long pushes to a peer that named no session wait once our server
/// has encoded an answer of `bytes` to its pull: [`ANSWER_QUIET`] and
/// [`APPLY_PER_KIB`] for each KiB, at most [`QUIET_MAX`].
pub fn answer_quiet(bytes: usize) -> Duration {
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    ANSWER_QUIET
        .saturating_add(APPLY_PER_KIB.saturating_mul(kib))
        .min(QUIET_MAX)
}

/// Consecutive failed pushes (or pulls) after which the peer is reported
/// as failed: with [`backoff`] that is about 1.5 s plus the requests' own
/// time.
pub const MAX_ATTEMPTS: u32 = 5;

/// One retried activity: whether its request or timer is out, and its
/// failure streak.
#[derive(Debug, Default, Clone)]
struct Activity {
    /// A request is in flight.
    busy: bool,
    /// A retry timer is pending.
    timer: bool,
    /// Generation of the request or timer that counts.
    gen: u64,
    /// Consecutive failures.
    failures: u32,
}

/// Quiets back to back, each making the last one longer.
#[derive(Debug, Default, Clone, Copy)]
struct QuietRun {
    /// When it must end at the latest: [`QUIET_MAX`] after it began.
    bound: Duration,
    /// When it ends.
    until: Duration,
}

impl QuietRun {
    /// It ends at its bound.
    fn bounded(&self) -> bool {
        self.until == self.bound
    }
}

/// A counter's effect.
fn count(counter: Counter, n: u64) -> Effect {
    Effect::Count { counter, n }
}

/// The session with one peer; see the module docs.
#[derive(Debug, Clone)]
pub struct Session {
    /// The version spoken: what pushes are measured in.
    version: Version,
    /// How long a streak must last before it is reported.
    give_up_after: Duration,
    /// Source of generations.
    next_gen: u64,
    /// Bind retries.
    bind: Activity,
    /// Whether the server is bound.
    bound: bool,
    /// The pull.
    pull: Activity,
    /// A pull was asked for while one was out: pull again after it.
    pull_again: bool,
    /// The peer's pushes held while a pull is out (`Some` from the pull's
    /// start until its answer, except while it waits, unsent, for its
    /// slot).
    held: Option<Vec<OutUpdate>>,
    /// The push.
    push: Activity,
    /// After the router answered a pull of the peer: its timer holds
    /// every push until the answer is applied or abandoned, should the
    /// peer be an original ([`Self::answered_pull`]).
    quiet: Activity,
    /// The run of quiets the current one belongs to.
    quiet_run: QuietRun,
    /// A run ended at its bound: no quiet starts until the router's pushes
    /// through this one (all given by then) are delivered.
    quiet_rest: Option<u64>,
    /// The part in flight; if it fails, it and everything unsent become
    /// one batch again.
    in_flight: Option<Arc<OutUpdate>>,
    /// If the part in flight is the last of its batch: the batch's last
    /// push, delivered with it.
    completes: Option<u64>,
    /// The batch going out: what is unsent of the router's pushes through
    /// `pending_through`, merged into one, and what later pushes said of
    /// the destinations it holds.
    pending: Option<OutUpdate>,
    /// The last push whose unsent items are all in `pending` (or in the
    /// part in flight).
    pending_through: u64,
    /// The next batch: the pushes given while a part was in flight and
    /// `pending` was closed (needed more than one more part), merged into
    /// one, sent once `pending` is.
    next: Option<OutUpdate>,
    /// Whether a pull has completed (answered or failed).
    pulled_once: bool,
    /// Once a pull of ours was answered: the id of the peer's session
    /// that answered the last one (`None` inside if it sent none).
    answered: Option<Option<u64>>,
    /// The peer pulled us while our answer was out or due: the pulling
    /// session's id, compared with that answer when it comes.
    pull_back: Option<Option<u64>>,
    /// The largest push body the peer takes.
    push_limit: usize,
    /// After a refusal as too large: at most this many items per push.
    split_items: Option<usize>,
    /// Pushes in a row the peer answered 429 (its router behind): the
    /// pause before the next doubles with them.
    deferrals: u32,
    /// Paths whose withdrawal was dropped (no push could carry it): the
    /// peer may still hold them, so an announcement of one is marked held.
    /// Past [`MAX_DROPPED`] paths, every announcement is (`None`).
    dropped: Option<BTreeSet<OutPath>>,
    /// How many pushes the router gave.
    received: u64,
    /// The last push reported delivered.
    delivered: u64,
    /// Whether the current failure streak was reported.
    reported: bool,
    /// When the current failure streak began.
    failing_since: Option<Duration>,
}

impl Session {
    /// A session speaking `version`, reporting a failing peer only after
    /// `give_up_after`.
    pub fn new(version: Version, give_up_after: Duration) -> Self {
        Session {
            version,
            give_up_after,
            next_gen: 0,
            bind: Activity::default(),
            bound: false,
            pull: Activity::default(),
            pull_again: false,
            held: None,
            push: Activity::default(),
            quiet: Activity::default(),
            quiet_run: QuietRun::default(),
            quiet_rest: None,
            in_flight: None,
            completes: None,
            pending: None,
            pending_through: 0,
            next: None,
            pulled_once: false,
            answered: None,
            pull_back: None,
            push_limit: DEFAULT_PUSH_LIMIT,
            split_items: None,
            deferrals: 0,
            dropped: Some(BTreeSet::new()),
            received: 0,
            delivered: 0,
            reported: false,
            failing_since: None,
        }
    }

    /// How many of the peer's pushes are held while our pull is out.
    pub fn held_pushes(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::len)
    }

    /// The body limit pushes are held to.
    pub fn push_limit(&self) -> usize {
        self.push_limit
    }

    /// Take `input` at `now` (time since the session started); what to do.
    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                out.push(Effect::Bind);
                self.start_pull(&mut out);
            }
            Input::Push(update) => self.queue(update, &mut out),
            Input::Pull => self.start_pull(&mut out),
            Input::Answered => self.answered_pull(now, &mut out),
            Input::PeerPulled { session, bytes, late } => {
                self.peer_pulled(now, session, bytes, late, &mut out)
            }
            Input::PushRefused => self.push_refused(&mut out),
            Input::Pushed(update) => match &mut self.held {
                Some(held) => held.push(update),
                None => out.push(Effect::Import(update)),
            },
            Input::Bound(Ok(())) => {
                self.bound = true;
                // While nothing listened, the peer's pushes were refused,
                // and an original peer never sends them again (it ignores
                // what a push is answered) nor pulls until its session
                // starts over: pull now, or what it pushed in the gap is
                // lost for the session.
                if std::mem::take(&mut self.bind.failures) > 0 {
                    self.start_pull(&mut out);
                }
            }
            Input::Bound(Err(error)) => {
                self.bind.failures += 1;
                let failures = self.bind.failures;
                out.push(Effect::Failed { op: Op::Bind, failures, error });
                self.schedule(TimerKind::Bind, &mut out);
            }
            Input::PullWaiting { gen } => {
                // Not sent yet: what the peer pushed so far is older than
                // its answer, and what it pushes until it is sent will be.
                if self.pull_out(gen) {
                    self.release_held(&mut out);
                }
            }
            Input::PullSent { gen } => {
                if self.pull_out(gen) {
                    self.held.get_or_insert_with(Vec::new);
                }
            }
            Input::PullDone { gen, result } => {
                self.pull_done(now, gen, result, &mut out)
            }
            Input::PushDone { gen, result } => {
                self.push_done(now, gen, result, &mut out)
            }
            Input::Timer { kind, gen } => self.timer(kind, gen, &mut out),
        }
        out
    }

    fn activity(&mut self, kind: TimerKind) -> &mut Activity {
        match kind {
            TimerKind::Pull => &mut self.pull,
            TimerKind::Push => &mut self.push,
            TimerKind::Bind => &mut self.bind,
            TimerKind::Quiet => &mut self.quiet,
        }
    }

    fn gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }

    fn schedule(&mut self, kind: TimerKind, out: &mut Vec<Effect>) {
        let after = backoff(self.activity(kind).failures);
        self.schedule_after(kind, after, out);
    }

    fn schedule_after(
        &mut self,
        kind: TimerKind,
        after: Duration,
        out: &mut Vec<Effect>,
    ) {
        let gen = self.gen();
        let a = self.activity(kind);
        a.gen = gen;
        a.timer = true;
        let after_ms = after.as_millis() as u64;
        out.push(Effect::StartTimer { kind, gen, after_ms });
    }

    fn timer(&mut self, kind: TimerKind, gen: u64, out: &mut Vec<Effect>) {
        let bound = self.bound;
        let a = self.activity(kind);
        if gen != a.gen || !a.timer {
            return;
        }
        a.timer = false;
        match kind {
            TimerKind::Pull => self.start_pull(out),
            TimerKind::Push => self.push_if_idle(out),
            TimerKind::Quiet => {
                // A run that reached its bound starts no quiet until
                // what waited is delivered.
                self.quiet_rest =
                    self.quiet_run.bounded().then_some(self.received);
                self.end_quiet(out);
            }
            TimerKind::Bind if !bound => out.push(Effect::Bind),
            TimerKind::Bind => {}
        }
    }

    /// Whether `gen` is the pull out now (not a stale one's).
    fn pull_out(&self, gen: u64) -> bool {
        gen == self.pull.gen && self.pull.busy
    }

    fn start_pull(&mut self, out: &mut Vec<Effect>) {
        if self.pull.busy {
            self.pull_again = true;
            return;
        }
        let gen = self.gen();
        self.pull = Activity { busy: true, timer: false, gen, ..self.pull };
        self.held.get_or_insert_with(Vec::new);
        out.push(Effect::Pull { gen });
    }

    /// The router answered a pull of the peer with everything we offer it,
    /// including what is pending here: the peer may hold that now, so a
    /// later withdrawal of it must be sent. Pushes wait: an original adds
    /// a pull answer to what it holds once it has read it, so a withdrawal
    /// reaching it first would be undone by the answer for the whole
    /// session. For [`ANSWER_QUIET`], which outlasts the original's wait
    /// for the answer to begin, until our server has encoded it (see
    /// [`Self::peer_pulled`]), which ends the quiet for a pull that named
    /// its session (one of our daemons, which takes an answer as its whole
    /// set and holds our pushes while its pull is out).
    fn answered_pull(&mut self, now: Duration, out: &mut Vec<Effect>) {
        for p in self.pending.iter_mut().chain(&mut self.next) {
            p.mark_held();
        }
        self.quiet_for(now, ANSWER_QUIET, out);
    }

    /// Hold pushes for `d` from `now`: a quiet already running is made
    /// longer, never shorter; a run of quiets ends [`QUIET_MAX`] after it
    /// began (one very large answer may fill it), and then no quiet starts
    /// until what waited is delivered (so a peer pulling again and again
    /// cannot hold our pushes for good; those pushes go unprotected).
    fn quiet_for(&mut self, now: Duration, d: Duration, out: &mut Vec<Effect>) {
        if let Some(through) = self.quiet_rest {
            if self.delivered < through {
                return;
            }
            self.quiet_rest = None;
        }
        if !self.quiet.timer {
            let bound = now.saturating_add(QUIET_MAX);
            self.quiet_run = QuietRun { bound, until: now };
        }
        let run = &mut self.quiet_run;
        let until = now.saturating_add(d).min(run.bound);
        if until <= run.until {
            return;
        }
        run.until = until;
        self.schedule_after(TimerKind::Quiet, until.saturating_sub(now), out);
    }

    /// The quiet is over: what waited may go.
    fn end_quiet(&mut self, out: &mut Vec<Effect>) {
        self.quiet.timer = false;
        self.push_if_idle(out);
    }

    /// Our server answered a pull of the peer with `bytes`. A pull that
    /// named its session (one of our daemons) ends the quiet. One that
    /// named none holds pushes [`answer_quiet`] more, while the peer
    /// reads, parses and applies the answer, unless the answer was `late`
    /// (encoded [`ORIGINAL_PULL_WAIT`] or more after the pull arrived: the
    /// original stopped waiting for it, and a quiet would only hold
    /// pushes up each time it pulls again).
    fn peer_pulled(
        &mut self,
        now: Duration,
        session: Option<u64>,
        bytes: usize,
        late: bool,
        out: &mut Vec<Effect>,
    ) {
        match session {
            Some(_) if self.quiet.timer => self.end_quiet(out),
            Some(_) => {}
            None if late => {}
            None => self.quiet_for(now, answer_quiet(bytes), out),
        }
        if self.pull.busy || self.answered.is_none() {
            // An answer is out or due: compare it when it comes. A pull
            // without an id before our first answer needs nothing: that
            // answer is the peer's current set.
            if session.is_some() || self.answered.is_some() {
                self.pull_back = Some(session);
            }
            return;
        }
        if session.is_none() || self.answered != Some(session) {
            self.start_pull(out);
        }
    }

    /// Our server refused a push of the peer. One whose answers name its
    /// session runs this daemon and sends the push again; another (an
    /// original, or one not answered yet) is pulled: after the pull out
    /// (whose answer may predate the push), else on the pull timer, so
    /// refusals in a row make one pull, not one each. A pull waiting,
    /// unsent, for its slot needs no other: its answer comes after the
    /// push.
    fn push_refused(&mut self, out: &mut Vec<Effect>) {
        if matches!(self.answered, Some(Some(_))) {
            return;
        }
        if self.pull.busy {
            if self.held.is_some() {
                self.pull_again = true;
            }
        } else if !self.pull.timer {
            self.schedule(TimerKind::Pull, out);
        }
    }

    fn release_held(&mut self, out: &mut Vec<Effect>) {
        let held = self.held.take().unwrap_or_default();
        out.extend(held.into_iter().map(Effect::Import));
    }

    fn pull_done(
        &mut self,
        now: Duration,
        gen: u64,
        result: Result<PullAnswer, Failure>,
        out: &mut Vec<Effect>,
    ) {
        if !self.pull_out(gen) {
            return;
        }
        self.pull.busy = false;
        let first = !std::mem::replace(&mut self.pulled_once, true);
        match result {
            Ok(PullAnswer { response, push_limit, bytes, session }) => {
                out.push(count(Counter::PullsSent, 1));
                out.push(count(Counter::PullBytesReceived, bytes as u64));
                let limit = push_limit
                    .map_or(DEFAULT_PUSH_LIMIT, |l| l.max(DEFAULT_PUSH_LIMIT));
                if limit != self.push_limit {
                    let was = std::mem::replace(&mut self.push_limit, limit);
                    out.push(Effect::PushLimit { bytes: limit, was });
                }
                self.pull.failures = 0;
                self.answered = Some(session);
                self.clear_report();
                out.push(Effect::PullResult(response));
                self.release_held(out);
                // The peer pulled meanwhile: pull again unless this answer
                // comes from the session that pulled.
                let back = self
                    .pull_back
                    .take()
                    .is_some_and(|s| s.is_none() || s != session);
                if std::mem::take(&mut self.pull_again) || back {
                    self.start_pull(out);
                }
            }
            Err(e) => {
                self.pull.failures += 1;
                self.pull_again = false;
                out.push(Effect::Failed {
                    op: Op::Pull,
                    failures: self.pull.failures,
                    error: failure_text(e),
                });
                // No answer is coming: what the peer pushed meanwhile is
                // newer than anything it answered before.
                self.release_held(out);
                self.check_report(now, out);
                self.schedule(TimerKind::Pull, out);
            }
        }
        if first {
            // The limit is known (or assumed): queued pushes can go.
            self.push_if_idle(out);
        }
    }

    fn queue(&mut self, mut update: OutUpdate, out: &mut Vec<Effect>) {
        self.received += 1;
        if let Some(u) = update.underlay.as_mut() {
            match &mut self.dropped {
                None => u.mark_held(),
                Some(d) if d.is_empty() => {}
                Some(d) => {
                    for p in &u.announce {
                        if d.remove(p) {
                            u.held.insert(p.clone());
                        }
                    }
                }
            }
        }
        // A batch going out that needs more than one more part is closed.
        // A part that left some of its batch behind was full: the next
        // holds as many items; otherwise the bound on items.
        let part = match (&self.in_flight, self.completes) {
            (Some(p), None) => p.len(),
            _ => self.split_items.unwrap_or(MAX_PUSH_ITEMS),
        };
        let pending = self.pending.as_ref().map_or(0, OutUpdate::len);
        // A next batch waits also while nothing is in flight, during a
        // quiet: what comes after it stays after it.
        if self.next.is_some() || (self.push.busy && pending >= part) {
            // Closed, so that the batch's pushes are reported delivered
            // with its last part however long the router keeps pushing.
            // What the push says of a destination the batch still holds is
            // merged there all the same: everything unsent of one
            // destination is in one batch (an announcement withdrawn
            // before it went out is never sent, a path and its replacement
            // go out together).
            if let Some(p) = &mut self.pending {
                merge(p, update.take_named_by(p));
            }
            merge_batch(&mut self.next, update);
        } else if !update.is_empty() {
            // Idle, or a small batch going out (no next one): it takes
            // the push, which goes out in its next part (see
            // `outgoing::items` for the order).
            self.pending_through = self.received;
            merge_batch(&mut self.pending, update);
            self.push_if_idle(out);
        }
        self.delivered_if_drained(out);
    }

    /// Whether nothing is left to send: no push out, none waiting.
    pub fn is_drained(&self) -> bool {
        !self.push.busy && self.pending.is_none() && self.next.is_none()
    }

    /// Tell the router its pushes are handled, if nothing is left.
    fn delivered_if_drained(&mut self, out: &mut Vec<Effect>) {
        if self.is_drained() {
            self.deliver(self.received, out);
        }
    }

    /// Tell the router its pushes through `through` are handled, unless
    /// it knows.
    fn deliver(&mut self, through: u64, out: &mut Vec<Effect>) {
        if through > self.delivered {
            self.delivered = through;
            out.push(Effect::Delivered { through });
        }
    }

    fn push_if_idle(&mut self, out: &mut Vec<Effect>) {
        if self.pulled_once
            && !self.push.busy
            && !self.push.timer
            && !self.quiet.timer
        {
            self.send_next(out);
        }
    }

    fn send_next(&mut self, out: &mut Vec<Effect>) {
        let mut bounds = PushBounds::new(self.push_limit, self.version);
        if let Some(n) = self.split_items {
            bounds.items = bounds.items.min(n);
        }
        loop {
            if self.pending.is_none() {
                // Everything before is sent: the next batch goes out.
                self.pending = self.next.take();
                self.pending_through = self.received;
            }
            let Some(pending) = self.pending.as_mut() else {
                return;
            };
            let Chunk { part, oversize } = take_chunk(pending, bounds);
            let completes = pending.is_empty().then_some(self.pending_through);
            if completes.is_some() {
                self.pending = None;
            }
            if !oversize.is_empty() {
                self.remember_dropped(&oversize);
                out.push(Effect::Dropped {
                    why: DropReason::OverLimit,
                    limit: self.push_limit,
                    update: oversize,
                });
            }
            if part.is_empty() {
                // Nothing of the batch left to send (all of it dropped):
                // it is done; the next one may go.
                match completes {
                    Some(through) => self.deliver(through, out),
                    None => return,
                }
                continue;
            }
            let update = Arc::new(part);
            let gen = self.gen();
            self.push.gen = gen;
            self.push.busy = true;
            self.in_flight = Some(update.clone());
            self.completes = completes;
            out.push(Effect::Push { gen, update });
            return;
        }
    }

    fn push_done(
        &mut self,
        now: Duration,
        gen: u64,
        result: Result<usize, Failure>,
        out: &mut Vec<Effect>,
    ) {
        if gen != self.push.gen || !self.push.busy {
            return;
        }
        self.push.busy = false;
        let sent = self.in_flight.take();
        let completes = self.completes.take();
        match result {
            Ok(bytes) => {
                out.push(count(Counter::PushesSent, 1));
                out.push(count(Counter::PushBytesSent, bytes as u64));
                self.push.failures = 0;
                self.deferrals = 0;
                self.split_items = None;
                self.clear_report();
                self.sent_on(completes, out);
            }
            Err(Failure::TooLarge(error)) => {
                // The peer answered, so the session is not failing.
                let mut done = None;
                if let Some(sent) = sent {
                    let items = sent.len();
                    out.push(Effect::Refused { items, error });
                    if items <= 1 {
                        self.remember_dropped(&sent);
                        out.push(Effect::Dropped {
                            why: DropReason::RefusedAlone,
                            limit: self.push_limit,
                            update: unshare(sent),
                        });
                        done = completes;
                    } else {
                        self.split_items = Some(items / 2);
                        self.put_back(sent);
                    }
                }
                self.sent_on(done, out);
            }
            Err(Failure::Busy(_)) => {
                // The peer's router is behind: not a failure (the peer
                // answered, so any streak of failures ends); the push goes
                // again after a pause that doubles while this goes on (our
                // server waits half its timeout before saying so; another
                // might at once). Put back as any push is, its
                // announcements marked held: the peer did not apply it, but
                // a pull answer of ours the peer took meanwhile may have
                // told it the same paths, and only a part in flight is not
                // marked held by that answer.
                out.push(count(Counter::PushesDeferred, 1));
                if let Some(sent) = sent {
                    self.put_back(sent);
                }
                self.push.failures = 0;
                self.clear_report();
                self.deferrals = self.deferrals.saturating_add(1);
                let after = backoff(self.deferrals);
                self.schedule_after(TimerKind::Push, after, out);
            }
            Err(Failure::Other(error)) => {
                self.push.failures += 1;
                let failures = self.push.failures;
                out.push(Effect::Failed { op: Op::Push, failures, error });
                if let Some(sent) = sent {
                    self.put_back(sent);
                }
                self.check_report(now, out);
                self.schedule(TimerKind::Push, out);
            }
        }
    }

    /// The paths `dropped` withdraws may stay with the peer: an
    /// announcement of one already pending is marked held, and one queued
    /// later will be (see [`Session::dropped`]).
    fn remember_dropped(&mut self, dropped: &OutUpdate) {
        let Some(u) = &dropped.underlay else {
            return;
        };
        for p in &u.withdraw {
            let announced = self
                .pending
                .iter_mut()
                .chain(&mut self.next)
                .filter_map(|q| q.underlay.as_mut())
                .find(|q| q.announce.contains(p));
            match announced {
                Some(q) => {
                    q.held.insert(p.clone());
                }
                None => {
                    let Some(d) = &mut self.dropped else {
                        return;
                    };
                    if d.len() >= MAX_DROPPED {
                        self.dropped = None;
                        return;
                    }
                    d.insert(p.clone());
                }
            }
        }
    }

    /// A part is done with (`completes`: the batch it ended, if any): send
    /// the next, and report what is delivered.
    fn sent_on(&mut self, completes: Option<u64>, out: &mut Vec<Effect>) {
        self.push_if_idle(out);
        // Drained, everything is; otherwise the batch the part ended, if
        // it ended one.
        self.delivered_if_drained(out);
        if let Some(through) = completes {
            self.deliver(through, out);
        }
    }

    /// Put an undelivered part back in front of everything unsent, which
    /// becomes one batch again: a retry carries as much as it can.
    fn put_back(&mut self, sent: Arc<OutUpdate>) {
        let mut again = unshare(sent);
        // It may have been applied all the same: the peer may hold what
        // it announced, so withdrawing that later is no longer a no-op.
        again.mark_held();
        for later in
            [self.pending.take(), self.next.take()].into_iter().flatten()
        {
            merge(&mut again, later);
        }
        self.pending = Some(again);
        self.pending_through = self.received;
    }

    fn check_report(&mut self, now: Duration, out: &mut Vec<Effect>) {
        let streak = self.push.failures.max(self.pull.failures);
        let since = *self.failing_since.get_or_insert(now);
        if streak < MAX_ATTEMPTS
            || self.reported
            || now.saturating_sub(since) < self.give_up_after
        {
            return;
        }
        self.reported = true;
        out.push(Effect::ReportFailure {
            push_failures: self.push.failures,
            pull_failures: self.pull.failures,
        });
    }

    fn clear_report(&mut self) {
        if self.push.failures.max(self.pull.failures) < MAX_ATTEMPTS {
            self.reported = false;
        }
        if self.push.failures == 0 && self.pull.failures == 0 {
            self.failing_since = None;
        }
    }
}

/// Merge `later` into `batch`, which it starts if there is none (and an
/// empty update does not).
fn merge_batch(batch: &mut Option<OutUpdate>, later: OutUpdate) {
    match batch {
        Some(b) => merge(b, later),
        None if later.is_empty() => {}
        None => *batch = Some(later),
    }
}

fn unshare(u: Arc<OutUpdate>) -> OutUpdate {
    Arc::try_unwrap(u).unwrap_or_else(|a| (*a).clone())
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::TooLarge(s) | Failure::Busy(s) | Failure::Other(s) => s,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
