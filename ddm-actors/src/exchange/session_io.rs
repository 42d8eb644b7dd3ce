//! The exchange session's inputs and effects: serde enums, so that a
//! session's history is data (the step files in `steps/` hold them). An
//! update travels as its compact [`OutUpdate`], written and read as its
//! wire form ([`v3::Update`]).

use std::sync::Arc;

use ddm_proto::outgoing::{OutPull, OutUpdate};
use ddm_proto::wire::v3;
use serde::{Deserialize, Serialize};

/// What a timer retries, or (`Quiet`) lets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// Pull the peer's full set.
    Pull,
    /// Send the pending update.
    Push,
    /// Bind the server's listener.
    Bind,
    /// Send the pending update once the quiet after a pull answer is
    /// over.
    Quiet,
}

/// What failed, in [`Effect::Failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A pull of the peer's full set.
    Pull,
    /// A push of the pending update.
    Push,
    /// Binding the server's listener.
    Bind,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The peer refused the push as too large (400 or 413).
    TooLarge(String),
    /// The peer's router is behind (429): the push is sent again after a
    /// pause, and the peer is not failing.
    Busy(String),
    /// Anything else: no connection, a timeout, another status.
    Other(String),
}

/// A pull answer, as the session needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullAnswer {
    /// The peer's full set, in v3's compact form.
    #[serde(with = "wire_pull")]
    pub response: OutPull,
    /// The largest push body the peer announced, if it did.
    #[serde(default)]
    pub push_limit: Option<usize>,
    /// The answer's body size in bytes.
    pub bytes: usize,
    /// The id of the peer's session that answered ([`SESSION_HEADER`]),
    /// if it sent one.
    ///
    /// [`SESSION_HEADER`]: super::server::SESSION_HEADER
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

/// Counters the session bumps through [`Effect::Count`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// Pushes the peer accepted.
    PushesSent,
    /// Body bytes of the pushes the peer accepted.
    PushBytesSent,
    /// Pulls the peer answered.
    PullsSent,
    /// Body bytes of the pull answers the peer sent.
    PullBytesReceived,
    /// Pushes the peer answered 429, to be sent again.
    PushesDeferred,
}

/// Why items were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Larger than the peer's push limit, even alone.
    OverLimit,
    /// Refused by the peer as too large, even alone.
    RefusedAlone,
}

/// What the session is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// The session begins.
    Start,
    /// Push this update to the peer (from the router), in order.
    Push(#[serde(with = "wire_update")] OutUpdate),
    /// Pull the peer's full set again (from the router).
    Pull,
    /// The router answered a pull of the peer (in order with its pushes):
    /// the answer carried everything handed over before, so the peer may
    /// hold what that announces. Pushes wait a while (the session's
    /// quiet).
    Answered,
    /// The peer pushed this update to our server.
    Pushed(#[serde(with = "wire_update")] OutUpdate),
    /// Our server answered a pull from the peer. It may be the first pull
    /// of a restarted peer's new session, whose process knows nothing of
    /// what the old one told us: unless the answer we hold comes from the
    /// session that pulled, pull the peer again.
    PeerPulled {
        /// The pulling session's id ([`SESSION_HEADER`]), if it sent one
        /// (the original daemon does not).
        ///
        /// [`SESSION_HEADER`]: super::server::SESSION_HEADER
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
        /// The answer's size in bytes: how long pushes wait, if the pull
        /// named no session.
        #[serde(default)]
        bytes: usize,
        /// The answer was encoded `ORIGINAL_PULL_WAIT` or more after the
        /// pull arrived: an original has stopped waiting for it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        late: bool,
    },
    /// Our server refused a push of the peer (too large, malformed, its
    /// body too slow, or nothing to hand it to). An original peer ignores
    /// the answer and never sends the push again: its whole set comes with
    /// a pull. (Ours send it again, so they are not pulled for it.)
    PushRefused,
    /// The outcome of [`Effect::Bind`]: the error's text if it failed.
    Bound(Result<(), String>),
    /// The pull `gen` waits, unsent, for the router to import the last
    /// answer (its pull slot): pushes are not held meanwhile.
    PullWaiting {
        /// The generation it was started with.
        gen: u64,
    },
    /// The pull `gen`, which waited, is being sent now: pushes are held
    /// again until its answer.
    PullSent {
        /// The generation it was started with.
        gen: u64,
    },
    /// A pull finished.
    PullDone {
        /// The generation it was started with.
        gen: u64,
        /// The answer, or why none came.
        result: Result<PullAnswer, Failure>,
    },
    /// A push finished.
    PushDone {
        /// The generation it was started with.
        gen: u64,
        /// The body's bytes if the peer accepted it, or why not.
        result: Result<usize, Failure>,
    },
    /// A timer elapsed.
    Timer {
        /// What it retries.
        kind: TimerKind,
        /// The generation it was set with.
        gen: u64,
    },
}

/// What the session asks the actor to do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Bind the server now and answer with [`Input::Bound`].
    Bind,
    /// Pull the peer's full set; answer with [`Input::PullDone`].
    Pull {
        /// Generation to answer with.
        gen: u64,
    },
    /// Push `update`; answer with [`Input::PushDone`].
    Push {
        /// Generation to answer with.
        gen: u64,
        /// The part to send.
        #[serde(with = "wire_arc_update")]
        update: Arc<OutUpdate>,
    },
    /// Answer with [`Input::Timer`] after `after_ms` milliseconds.
    StartTimer {
        /// What it retries.
        kind: TimerKind,
        /// Generation to answer with.
        gen: u64,
        /// The delay, in milliseconds.
        after_ms: u64,
    },
    /// Hand the peer's push to the router.
    Import(#[serde(with = "wire_update")] OutUpdate),
    /// Hand the peer's pull answer to the router.
    PullResult(#[serde(with = "wire_pull")] OutPull),
    /// Every push the router gave, up to and including the `through`th,
    /// has been handled (reported once per value, in increasing order).
    Delivered {
        /// How many of the router's pushes, counted from the first.
        through: u64,
    },
    /// Exchange keeps failing: report the peer (once per streak).
    ReportFailure {
        /// Consecutive failed pushes.
        push_failures: u32,
        /// Consecutive failed pulls.
        pull_failures: u32,
    },
    /// Add `n` to `counter`.
    Count {
        /// The counter.
        counter: Counter,
        /// How much.
        n: u64,
    },
    /// A request failed (count it per kind, log it).
    Failed {
        /// Which.
        op: Op,
        /// Consecutive failures of that kind, this one included.
        failures: u32,
        /// Why.
        error: String,
    },
    /// The peer refused a push of `items` items as too large (count,
    /// log); it is split, or dropped if single.
    Refused {
        /// Items in the refused push.
        items: usize,
        /// The peer's answer.
        error: String,
    },
    /// Items no push can carry, dropped for good (count, log).
    Dropped {
        /// Why.
        why: DropReason,
        /// The push limit at the time.
        limit: usize,
        /// What was dropped.
        #[serde(with = "wire_update")]
        update: OutUpdate,
    },
    /// The peer's push limit changed (log).
    PushLimit {
        /// The new limit, in bytes.
        bytes: usize,
        /// The old one.
        was: usize,
    },
}

/// Serialises an [`OutUpdate`] as its wire form.
mod wire_update {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        u: &OutUpdate,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        u.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<OutUpdate, D::Error> {
        v3::Update::deserialize(d).map(OutUpdate::from)
    }
}

/// Serialises an [`OutPull`] as its wire form.
mod wire_pull {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        p: &OutPull,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        p.to_wire().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<OutPull, D::Error> {
        v3::PullResponse::deserialize(d).map(OutPull::from)
    }
}

/// Serialises a shared [`OutUpdate`] as its wire form.
mod wire_arc_update {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        u: &Arc<OutUpdate>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        u.as_ref().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<OutUpdate>, D::Error> {
        super::wire_update::deserialize(d).map(Arc::new)
    }
}
