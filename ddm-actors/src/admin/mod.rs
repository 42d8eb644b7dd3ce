//! The admin actor: serves the admin API and owns the durable store.
//!
//! The actor runs a dropshot server (`http.rs`) whose handlers never touch
//! state: each one sends a message to this actor and awaits the reply.
//! Without a listen address it runs no server, and the same messages are
//! the only way in (as in a simulation). This actor owns
//! the originated configuration (in memory and in the [`Store`]) and the
//! statistics identity; questions about peers go to the supervisor and
//! questions about routes to the router, by handing them the reply port so
//! that this actor never waits on another.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ddm_admin_api::latest::{
    EnableStatsRequest, PathVector, PeerInfo, TunnelOrigin, TunnelRoute,
};
use ddm_admin_api::{types::v1, DdmAdminApi, PeerAddr, PeerMap, PrefixList};
use dropshot::{
    ConfigDropshot, ErrorStatusCode, HttpError, HttpResponseOk,
    HttpResponseUpdatedNoContent, HttpServer, Path, RequestContext,
    ServerBuilder, TypedBody, VersionPolicy,
};
use oxnet::Ipv6Net;
use ractor::{
    rpc::CallResult, Actor, ActorProcessingErr, ActorRef, DerivedActorRef,
    RpcReplyPort,
};
use slog::{info, o, warn, Logger};

use crate::admin_guard::{self, AdminGuard};
use crate::router::{RouterMsg, RouterRef};
use crate::store::{Originated, Store, StoreChange, StoreCounters, StoreError};
use ddm_proto::wire::{normalise_ip, normalise_v6};
use http::serve;
pub use http::{AdminApiImpl, AdminContext};

/// A handle to the admin actor.
pub type AdminRef = ActorRef<AdminMsg>;

/// How long an API handler waits for the actors before giving up with 503.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages the admin actor handles. Most come from the API handlers and
/// carry the port to answer on.
pub enum AdminMsg {
    /// `GET /originated`.
    GetOriginated(RpcReplyPort<BTreeSet<Ipv6Net>>),
    /// `GET /originated_tunnel_endpoints`.
    GetOriginatedTunnels(RpcReplyPort<BTreeSet<TunnelOrigin>>),
    /// `PUT`/`DELETE` of `/prefix` and `/tunnel_endpoint`: what the
    /// request asks to add and remove; the actor keeps only what changes
    /// something, stores it durably and tells the router.
    Change(StoreChange, RpcReplyPort<Result<(), StoreError>>),
    /// A [`AdminMsg::Change`] from the API, with its place among the
    /// changes the API may have queued (`http::CHANGES_QUEUED`), given
    /// back once the actor has carried the change out or dropped it.
    Queued(
        StoreChange,
        tokio::sync::OwnedSemaphorePermit,
        RpcReplyPort<Result<(), StoreError>>,
    ),
    /// `GET /peers`: answered by the supervisor.
    GetPeers(RpcReplyPort<PeerMap<PeerInfo>>),
    /// `DELETE /peers/{addr}`: answered by the supervisor.
    ExpirePeer(Ipv6Addr, RpcReplyPort<()>),
    /// `GET /prefixes`: answered by the router, if there is one.
    GetPrefixes(RpcReplyPort<BTreeMap<String, BTreeSet<PathVector>>>),
    /// `GET /tunnel_endpoints`: answered by the router, if there is one.
    GetTunnelEndpoints(RpcReplyPort<BTreeSet<TunnelRoute>>),
    /// `PUT /sync`: re-pull every peer.
    Sync,
    /// Set the statistics identity, as `POST /enable-stats` does (its
    /// handler writes the identity itself: the actor may be busy with a
    /// store write; this message serves callers without HTTP).
    EnableStats(EnableStatsRequest),
    /// The statistics identity currently recorded.
    GetStats(RpcReplyPort<Option<EnableStatsRequest>>),
    /// The address the API server is bound to (`None` without one).
    GetLocalAddr(RpcReplyPort<Option<SocketAddr>>),
    /// The supervisor (re)started the router, or it is gone.
    SetRouter(Option<RouterRef>),
}

/// The peer questions the admin actor forwards, with their reply ports, to
/// whoever keeps the peer table (the supervisor, whose message type
/// converts from this one).
#[derive(Debug)]
pub enum PeerQuery {
    /// `GET /peers`: one entry per interface with a peer.
    GetPeers(RpcReplyPort<PeerMap<PeerInfo>>),
    /// `DELETE /peers/{addr}`: expire that peer now (no-op if unknown).
    ExpirePeer(Ipv6Addr, RpcReplyPort<()>),
}

/// Whoever answers [`PeerQuery`]s (the supervisor).
pub type PeersRef = DerivedActorRef<PeerQuery>;

/// The admin actor; it holds nothing mutable itself.
pub struct Admin;

/// What the supervisor hands the admin actor.
pub struct AdminArgs {
    /// Where to listen (port 0 picks a free one); `None` runs no HTTP
    /// server, and the API's operations answer only by message.
    pub listen: Option<SocketAddr>,
    /// The durable store.
    pub store: Store,
    /// The supervisor, which answers peer questions.
    pub supervisor: PeersRef,
    /// The router, if the routing state machine runs.
    pub router: Option<RouterRef>,
    /// Store writes counted, for the metrics listener.
    pub store_counters: Arc<StoreCounters>,
    /// The statistics identity (`POST /enable-stats`), shared with the
    /// metrics listener and kept across restarts of this actor.
    pub stats: StatsIdentity,
    /// Logger.
    pub log: Logger,
}

/// The statistics identity from `POST /enable-stats`, written by the admin
/// actor and read by the metrics listener at each scrape. A watch, not a
/// question to the admin actor: that actor waits on the store's writes,
/// and a scrape that found it busy (or restarting) emitted its samples
/// without the `rack_id`/`sled_id` labels, a second set of series.
pub type StatsIdentity =
    Arc<tokio::sync::watch::Sender<Option<EnableStatsRequest>>>;

/// A statistics identity not set yet.
pub fn stats_identity() -> StatsIdentity {
    Arc::new(tokio::sync::watch::channel(None).0)
}

/// Record `id` as the statistics identity (`None`: disabled), and log it.
fn set_stats_identity(
    stats: &StatsIdentity,
    log: &Logger,
    id: Option<EnableStatsRequest>,
) {
    match id {
        Some(req) => {
            info!(log, "statistics enabled";
                "sled_id" => %req.sled_id, "rack_id" => %req.rack_id);
            stats.send_replace(Some(req));
        }
        None => {
            if stats.send_replace(None).is_some() {
                info!(log, "statistics disabled");
            }
        }
    }
}

/// The admin actor's state.
pub struct AdminState {
    /// What listens on the admin address and relays to the server.
    guard: Option<AdminGuard>,
    /// The running API server, on loopback behind the guard.
    server: Option<HttpServer<AdminContext>>,
    /// Where it listens, if it does.
    local_addr: Option<SocketAddr>,
    /// The store and its in-memory mirror.
    store: Store,
    /// What is originated: what clients were answered 204 for. The
    /// store holds the same, but while a write is under way
    /// ([`AdminState::commit`]) and after a write whose sync failed,
    /// which may show in the file until the next write rewrites it
    /// ([`AdminState::recover`]).
    originated: Originated,
    /// The supervisor, for peer questions.
    supervisor: PeersRef,
    /// The router, if any.
    router: Option<RouterRef>,
    /// Statistics identity from `POST /enable-stats`.
    stats: StatsIdentity,
    /// Store writes counted, for the metrics listener.
    store_counters: Arc<StoreCounters>,
    /// Logger.
    log: Logger,
}

impl AdminState {
    /// Write `change` durably (the store's task shares it: a change of
    /// 100,000 prefixes is not copied) and apply it to the mirror.
    ///
    /// The mirror loses what the change removes before the write (and
    /// takes it back if the write fails), and gains what it adds after:
    /// nothing reads the mirror meanwhile (this actor handles one message
    /// at a time), and the mirror's share of the heap is then smallest
    /// while the store writes, when the router works out the change's
    /// pushes. Removed after the write, a withdrawal's entries were held
    /// through that work in the runs whose write took longer: 1.6 MiB of
    /// 100,000 prefixes on the originator's peak, in those runs only.
    ///
    /// A commit that failed is not taken as made, even when the file
    /// reads back with it: one whose sync failed is in the page cache, not
    /// necessarily on disk (Linux marks the pages clean after a failed
    /// `fsync`), and 204 promises the disk. The next write rewrites the
    /// whole store ([`AdminState::recover`]), which undoes it.
    ///
    /// If the write fails, the router is told the opposite of `change`.
    /// Once it succeeds, the store's task has let go of `change`, and its
    /// additions move into the mirror (copied only if it still holds it).
    async fn commit(
        &mut self,
        change: Arc<StoreChange>,
    ) -> Result<(), StoreError> {
        let o = &mut self.originated;
        // Made against the mirror (see `update`): what is removed is
        // there, what is added is not, so adding the removals back undoes
        // them exactly.
        debug_assert!(change.remove_prefixes.is_subset(&o.prefixes));
        debug_assert!(change.remove_tunnels.is_subset(&o.tunnels));
        debug_assert!(change.add_prefixes.is_disjoint(&o.prefixes));
        debug_assert!(change.add_tunnels.is_disjoint(&o.tunnels));
        remove_from(o, &change.remove_prefixes, &change.remove_tunnels);
        let written = self.store.apply_async(Arc::clone(&change)).await;
        if let Err(e) = self.written(written) {
            self.tell_router_change(&change.inverse());
            let o = &mut self.originated;
            add_to(o, change.remove_prefixes.clone(), &change.remove_tunnels);
            return Err(e);
        }
        let StoreChange { add_prefixes, add_tunnels, .. } =
            Arc::unwrap_or_clone(change);
        add_to(&mut self.originated, add_prefixes, &add_tunnels);
        Ok(())
    }

    /// Count a store write's outcome, and log it when it failed.
    fn written(
        &self,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.store_counters.record(result.is_ok());
        if let Err(e) = &result {
            warn!(self.log, "store write failed"; "error" => %e);
        }
        result
    }

    /// Carry out `change`: tell the router, make it durable and update
    /// the in-memory mirror (which keeps it only if it is made durable:
    /// [`AdminState::commit`]). While the store works, the
    /// router hears first, so the fabric starts converging while the store
    /// syncs to disk; if the write fails, the router is told the opposite
    /// and the caller gets the error (nothing unacknowledged stays
    /// announced, nothing acknowledged is lost). While the store is
    /// failing (the last write failed), see [`AdminState::recover`]. An
    /// empty change (a duplicate advertise, a withdrawal of something never
    /// originated) touches neither, unless the store is failing.
    /// `change` is made against the mirror (it adds only what the mirror
    /// lacks, removes only what it holds), as `change` builds it.
    async fn update(&mut self, change: StoreChange) -> Result<(), StoreError> {
        if self.store.failing().is_some() {
            return self.recover(change).await;
        }
        if change.is_empty() {
            return Ok(());
        }
        self.tell_router_change(&change);
        self.commit(Arc::new(change)).await
    }

    /// Carry out `change` while the store is failing: the write comes
    /// first and the router hears only once it succeeds, so client
    /// retries against a full disk do not make the fabric see the change
    /// announced and withdrawn again and again.
    ///
    /// The write is the whole set, the mirror with `change` applied,
    /// every entry written afresh ([`Store::rewrite`]), even for an empty
    /// change. A commit answered as failed may be in the file all the same
    /// (one whose final sync failed reads back from the page cache, not
    /// necessarily from the disk); writing only the change would leave
    /// such a commit's entries to come into effect at the next start, or
    /// leave out of the disk the very entries a retry asks for again
    /// (the file already shows them, so the retry changes nothing there).
    /// A withdrawal of what a failed advertise left in the file is then
    /// answered only once it is gone from it.
    async fn recover(&mut self, change: StoreChange) -> Result<(), StoreError> {
        // The mirror itself, with the change, goes to the store's task (not
        // a copy of it); taken back after, the change undone if the write
        // failed (it was made against the mirror: see `change`).
        apply_to(&mut self.originated, &change);
        let all = Arc::new(std::mem::take(&mut self.originated));
        let written = self.store.rewrite_async(Arc::clone(&all)).await;
        self.originated = Arc::unwrap_or_clone(all);
        if written.is_ok() {
            info!(self.log, "store writes succeed again: the store was \
                written afresh"; "prefixes" => self.originated.prefixes.len(),
                "tunnels" => self.originated.tunnels.len());
            self.tell_router_change(&change);
        } else {
            apply_to(&mut self.originated, &change.inverse());
        }
        self.written(written)
    }

    /// Carry out the change `asked` for and answer it, unless its asker
    /// stopped waiting: the HTTP handler answers 503 after
    /// `http::CALL_TIMEOUT`, and a change made after that answer would
    /// be one the client was told failed.
    async fn change(
        &mut self,
        asked: StoreChange,
        reply: RpcReplyPort<Result<(), StoreError>>,
    ) {
        if reply.is_closed() {
            warn!(self.log, "change dropped: its request stopped waiting";
                "prefixes" => asked.add_prefixes.len()
                    + asked.remove_prefixes.len(),
                "tunnels" => asked.add_tunnels.len()
                    + asked.remove_tunnels.len());
            return;
        }
        let size = asked.add_prefixes.len() + asked.remove_prefixes.len();
        let o = &self.originated;
        let change = StoreChange {
            add_prefixes: not_in(asked.add_prefixes, &o.prefixes),
            remove_prefixes: only_in(asked.remove_prefixes, &o.prefixes),
            add_tunnels: not_in(asked.add_tunnels, &o.tunnels),
            remove_tunnels: only_in(asked.remove_tunnels, &o.tunnels),
        };
        // A failing store is rewritten whole (`recover`).
        let rewrite = self.store.failing().is_some();
        let _ = reply.send(self.update(change).await);
        // The change's sets, the store's write (a rewrite's: the whole
        // set) and the request are freed by now, after the router's own
        // trim, and after the answer: without this, what a large change
        // left in the allocator's free lists stayed resident (4 to 5 MiB
        // of 100,000 prefixes at the originator, in some runs).
        let written = if rewrite { self.originated.prefixes.len() } else { 0 };
        crate::mem::trim_after(size.max(written));
    }

    /// The router messages that carry out `change`.
    fn tell_router_change(&self, change: &StoreChange) {
        let StoreChange {
            add_prefixes,
            remove_prefixes,
            add_tunnels,
            remove_tunnels,
        } = change;
        if !remove_prefixes.is_empty() {
            self.tell_router(RouterMsg::Withdraw(remove_prefixes.clone()));
        }
        if !remove_tunnels.is_empty() {
            self.tell_router(RouterMsg::WithdrawTunnels(
                remove_tunnels.clone(),
            ));
        }
        if !add_prefixes.is_empty() {
            self.tell_router(RouterMsg::Originate(add_prefixes.clone()));
        }
        if !add_tunnels.is_empty() {
            self.tell_router(RouterMsg::OriginateTunnels(add_tunnels.clone()));
        }
    }

    fn tell_router(&self, msg: RouterMsg) {
        if let Some(router) = &self.router {
            if let Err(e) = router.cast(msg) {
                warn!(self.log, "router unreachable"; "error" => %e);
            }
        }
    }
}

/// Make `change` in `o`.
fn apply_to(o: &mut Originated, change: &StoreChange) {
    add_to(o, change.add_prefixes.clone(), &change.add_tunnels);
    remove_from(o, &change.remove_prefixes, &change.remove_tunnels);
}

/// Add `prefixes` and `tunnels` to `o`.
fn add_to(
    o: &mut Originated,
    prefixes: BTreeSet<Ipv6Net>,
    tunnels: &BTreeSet<TunnelOrigin>,
) {
    crate::rib::extend_packed(&mut o.prefixes, prefixes);
    o.tunnels.extend(tunnels);
}

/// Remove `prefixes` and `tunnels` from `o`.
fn remove_from(
    o: &mut Originated,
    prefixes: &BTreeSet<Ipv6Net>,
    tunnels: &BTreeSet<TunnelOrigin>,
) {
    crate::rib::remove_packed(&mut o.prefixes, prefixes);
    crate::rib::remove_packed(&mut o.tunnels, tunnels);
}

/// Hand `router` everything we originate (it reconciles: what it has is
/// replaced).
fn hand_over(router: &RouterRef, originated: &Originated) {
    let _ = router.cast(RouterMsg::SetOriginated {
        prefixes: originated.prefixes.clone(),
        tunnels: originated.tunnels.clone(),
    });
}

impl Actor for Admin {
    type Msg = AdminMsg;
    type State = AdminState;
    type Arguments = AdminArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AdminMsg>,
        args: AdminArgs,
    ) -> Result<AdminState, ActorProcessingErr> {
        let log = args.log.new(o!("component" => "admin"));
        let store = args.store;
        let originated = store.load_async().await?;
        let (guard, server, local_addr) = match args.listen {
            Some(listen) => {
                let (guard, server) =
                    serve(listen, myself, args.stats.clone(), &log).await?;
                let addr = guard.local_addr();
                info!(log, "admin: listening on {addr}";
                    "originated_prefixes" => originated.prefixes.len(),
                    "originated_tunnels" => originated.tunnels.len());
                (Some(guard), Some(server), Some(addr))
            }
            None => {
                info!(log, "admin: no listener; answering by message";
                    "originated_prefixes" => originated.prefixes.len(),
                    "originated_tunnels" => originated.tunnels.len());
                (None, None, None)
            }
        };
        // A router restarted while this actor was down (failed, or
        // waiting out its back-off) was never handed the set: the
        // supervisor tells only a running admin actor of a new router.
        if let Some(r) = &args.router {
            hand_over(r, &originated);
        }
        Ok(AdminState {
            guard,
            server,
            local_addr,
            store,
            originated,
            supervisor: args.supervisor,
            router: args.router,
            stats: args.stats,
            store_counters: args.store_counters,
            log,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AdminMsg>,
        state: &mut AdminState,
    ) -> Result<(), ActorProcessingErr> {
        drop(state.guard.take());
        if let Some(server) = state.server.take() {
            let _ = server.close().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<AdminMsg>,
        msg: AdminMsg,
        state: &mut AdminState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AdminMsg::GetOriginated(reply) => {
                let _ = reply.send(state.originated.prefixes.clone());
            }
            AdminMsg::GetOriginatedTunnels(reply) => {
                let _ = reply.send(state.originated.tunnels.clone());
            }
            AdminMsg::Change(asked, reply) => state.change(asked, reply).await,
            AdminMsg::Queued(asked, _place, reply) => {
                state.change(asked, reply).await;
            }
            AdminMsg::GetPeers(reply) => {
                if let Err(e) =
                    state.supervisor.send_message(PeerQuery::GetPeers(reply))
                {
                    warn!(state.log, "supervisor unreachable"; "error" => %e);
                }
            }
            AdminMsg::ExpirePeer(addr, reply) => {
                if let Err(e) = state
                    .supervisor
                    .send_message(PeerQuery::ExpirePeer(addr, reply))
                {
                    warn!(state.log, "supervisor unreachable"; "error" => %e);
                }
            }
            AdminMsg::GetPrefixes(reply) => match &state.router {
                Some(r) => {
                    let _ = r.cast(RouterMsg::GetPrefixes(reply));
                }
                None => {
                    let _ = reply.send(BTreeMap::new());
                }
            },
            AdminMsg::GetTunnelEndpoints(reply) => match &state.router {
                Some(r) => {
                    let _ = r.cast(RouterMsg::GetTunnelEndpoints(reply));
                }
                None => {
                    let _ = reply.send(BTreeSet::new());
                }
            },
            AdminMsg::Sync => state.tell_router(RouterMsg::Sync),
            AdminMsg::EnableStats(req) => {
                set_stats_identity(&state.stats, &state.log, Some(req));
            }
            AdminMsg::GetStats(reply) => {
                let _ = reply.send(*state.stats.borrow());
            }
            AdminMsg::GetLocalAddr(reply) => {
                let _ = reply.send(state.local_addr);
            }
            AdminMsg::SetRouter(router) => {
                // A (re)started router starts empty: hand it everything
                // we originate.
                if let Some(r) = &router {
                    hand_over(r, &state.originated);
                }
                state.router = router;
            }
        }
        Ok(())
    }
}

/// The members of `want` that `have` lacks (in place: a body of 100,000
/// prefixes is not built into a second set).
fn not_in<T: Ord>(mut want: BTreeSet<T>, have: &BTreeSet<T>) -> BTreeSet<T> {
    crate::rib::retain_present(&mut want, have, false);
    want
}

/// The members of `want` that `have` holds (in place, as [`not_in`]).
fn only_in<T: Ord>(mut want: BTreeSet<T>, have: &BTreeSet<T>) -> BTreeSet<T> {
    crate::rib::retain_present(&mut want, have, true);
    want
}

mod http;
#[cfg(test)]
mod tests;
