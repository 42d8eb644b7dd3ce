//! An exchange actor's counters: the live atomics its server task and the
//! actor share ([`Stats`]), and their snapshot ([`ExchangeCounters`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::named_counters;

/// Declares the counters once, as the live atomics and their snapshot.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        named_counters! {
            /// What an exchange actor has done, for tests and logs.
            pub struct ExchangeCounters {
                $($(#[$doc])* $name,)*
            }
        }

        /// The live counters, shared by the actor and its server task.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// The current values.
            pub fn snapshot(&self) -> ExchangeCounters {
                ExchangeCounters {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Pushes from the peer handed to the router.
    pushes_received,
    /// Pulls from the peer answered.
    pulls_received,
    /// Pulls from the peer that waited to be answered: it pulled again
    /// within `server::PULL_SPACING` of the last answer.
    pulls_paced,
    /// Pulls from the peer answered 503 unanswered: its earlier pulls,
    /// answered at most one per `server::PULL_SPACING`, held it past the
    /// exchange timeout (the peer pulls faster than that pace). Not the
    /// router's doing, so not in `router_unavailable`.
    pulls_busy,
    /// Body bytes of the pushes received from the peer (accepted or not,
    /// once read whole).
    push_bytes_received,
    /// Body bytes of the pull answers sent to the peer.
    pull_bytes_sent,
    /// Requests refused with 403: not from the peer's address.
    rejected_forbidden,
    /// Requests refused with 400: malformed JSON, or a v3 prefix that does
    /// not parse.
    rejected_malformed,
    /// Requests refused with 413: body over the bound.
    rejected_too_large,
    /// Requests refused otherwise: unknown path, wrong method, slow body.
    rejected_other,
    /// Requests answered 503 because the router (or, for a push, the
    /// exchange actor) was gone or slow.
    router_unavailable,
    /// Pushes taken without an import permit: the router had not taken in
    /// the peer's earlier pushes (imported them, and its dataplane worker
    /// taken their route changes) within half the exchange timeout (see
    /// `server::IMPORTS_IN_FLIGHT`). The router or the kernel under it is
    /// the bottleneck then.
    pushes_unpaced,
    /// Pushes answered 429 (push again later): neither an import permit
    /// within half the exchange timeout nor one of
    /// `server::UNPACED_IN_FLIGHT` slots for pushes taken without one was
    /// free, so that a peer pushing faster than the router imports cannot
    /// make the daemon hold ever more decoded pushes.
    pushes_refused_behind,
    /// Connections closed on accept: too many from one kind of address
    /// were open already (see `server::MAX_PEER_CONNECTIONS`).
    connections_refused,
    /// Pushes the peer accepted.
    pushes_sent,
    /// Pushes the peer refused as too large (400 or 413): split and sent
    /// again, or dropped when they held a single item.
    pushes_refused,
    /// Pushes the peer answered 429 (its router behind): sent again after
    /// a pause, not counted as failures.
    pushes_deferred,
    /// Path vectors and tunnel origins never sent because no push the
    /// peer takes can carry them, even alone (logged).
    items_dropped_oversize,
    /// Path vectors and tunnel origins the peer sent, in a push or a pull
    /// answer, that do not convert to v3 (a v2 prefix longer than its
    /// family's addresses): dropped, the rest of the body taken.
    items_malformed,
    /// Pulls the peer answered.
    pulls_sent,
    /// Body bytes of the pushes the peer accepted.
    push_bytes_sent,
    /// Body bytes of the pull answers the peer sent.
    pull_bytes_received,
    /// Pushes that failed (each retry counts).
    push_failures,
    /// Pulls that failed (each retry counts).
    pull_failures,
    /// Times the peer was reported failed to `on_failure`.
    failures_reported,
    /// Failed attempts to bind the server's listener.
    bind_failures,
}

impl Stats {
    /// Add one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Count `n` items of a body (`what`: a push, a pull answer) dropped
    /// as malformed, and say so.
    pub fn malformed_items(&self, n: usize, what: &str, log: &slog::Logger) {
        if n > 0 {
            Self::add(&self.items_malformed, n);
            slog::debug!(log, "malformed items dropped";
                "count" => n, "from" => what);
        }
    }
}
