//! The admin actor: serves the admin API and owns the durable store.
//!
//! The actor runs a dropshot server whose handlers never touch state: each
//! one sends a message to this actor and awaits the reply. This actor owns
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
use ddm_admin_api::{types::v1, DdmAdminApi, PeerAddr, PeerMap};
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
    /// `POST /enable-stats`.
    EnableStats(EnableStatsRequest),
    /// `POST /disable-stats`.
    DisableStats,
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
    /// Logger.
    pub log: Logger,
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
    /// What is originated (always equal to the store's contents).
    originated: Originated,
    /// The supervisor, for peer questions.
    supervisor: PeersRef,
    /// The router, if any.
    router: Option<RouterRef>,
    /// Statistics identity from `POST /enable-stats`.
    stats: Option<EnableStatsRequest>,
    /// Store writes counted, for the metrics listener.
    store_counters: Arc<StoreCounters>,
    /// Logger.
    log: Logger,
}

impl AdminState {
    async fn commit(&mut self, change: StoreChange) -> Result<(), StoreError> {
        let written = self.store.apply_async(change.clone()).await;
        self.store_counters.record(written.is_ok());
        written.map_err(|e| {
            warn!(self.log, "store write failed"; "error" => %e);
            e
        })?;
        let o = &mut self.originated;
        for p in &change.add_prefixes {
            o.prefixes.insert(*p);
        }
        for p in &change.remove_prefixes {
            o.prefixes.remove(p);
        }
        for t in &change.add_tunnels {
            o.tunnels.insert(*t);
        }
        for t in &change.remove_tunnels {
            o.tunnels.remove(t);
        }
        Ok(())
    }

    /// Carry out `change`: tell the router and make it durable, and
    /// update the in-memory mirror once it is. While the store works, the
    /// router hears first, so the fabric starts converging while the store
    /// syncs to disk; if the write fails, the router is told the opposite
    /// and the caller gets the error (nothing unacknowledged stays
    /// announced, nothing acknowledged is lost). While the store is failing
    /// (the last write failed), the write comes first and the router hears
    /// only once it succeeds, so client retries against a full disk do not
    /// make the fabric see the change announced and withdrawn again and
    /// again. An empty change (a duplicate advertise, a withdrawal of
    /// something never originated) touches neither.
    async fn update(&mut self, change: StoreChange) -> Result<(), StoreError> {
        if change.is_empty() {
            return Ok(());
        }
        if self.store.failing().is_some() {
            self.commit(change.clone()).await?;
            info!(self.log, "store writes succeed again");
            self.reconcile().await;
            self.tell_router_change(&change);
            return Ok(());
        }
        self.tell_router_change(&change);
        if let Err(e) = self.commit(change.clone()).await {
            self.tell_router_change(&change.inverse());
            return Err(e);
        }
        Ok(())
    }

    /// After the store recovered from a failure, make the mirror (and the
    /// router) equal to what the store holds, in case a write reported as
    /// failed reached the disk after all (a transaction is all or nothing,
    /// so this is a whole change, never part of one).
    async fn reconcile(&mut self) {
        let loaded = match self.store.load_async().await {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!(self.log, "cannot re-read the store"; "error" => %e);
                return;
            }
        };
        if loaded != self.originated {
            warn!(self.log, "the store holds a change reported as failed; \
                following the store";
                "prefixes" => loaded.prefixes.len(),
                "tunnels" => loaded.tunnels.len());
            self.originated = loaded;
            self.tell_router(RouterMsg::SetOriginated {
                prefixes: self.originated.prefixes.clone(),
                tunnels: self.originated.tunnels.clone(),
            });
        }
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

/// Start the API server on loopback and the guard on `listen` in front of
/// it.
async fn serve(
    listen: SocketAddr,
    admin: AdminRef,
    log: &Logger,
) -> Result<(AdminGuard, HttpServer<AdminContext>), ActorProcessingErr> {
    let api =
        ddm_admin_api::ddm_admin_api_mod::api_description::<AdminApiImpl>()
            .map_err(|e| format!("admin API description: {e}"))?;
    // dropshot bounds body sizes only; it listens on loopback behind a
    // guard that bounds connections and their idle time.
    let config = ConfigDropshot {
        bind_address: admin_guard::backend_bind(listen),
        default_request_body_max_bytes: ddm_admin_api::REQUEST_BODY_MAX_BYTES,
        ..Default::default()
    };
    let server = ServerBuilder::new(
        api,
        AdminContext { admin },
        log.new(o!("unit" => "dropshot")),
    )
    .config(config)
    .version_policy(VersionPolicy::Dynamic(Box::new(
        ddm_admin_api::VersionHeaderPolicy,
    )))
    .start()
    .map_err(|e| format!("admin API behind {}: {e}", listen))?;
    let guard = match AdminGuard::start(
        listen,
        server.local_addr(),
        log.new(o!("unit" => "guard")),
    ) {
        Ok(g) => g,
        Err(e) => {
            let _ = server.close().await;
            return Err(format!("admin API on {}: {e}", listen).into());
        }
    };
    Ok((guard, server))
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
                let (guard, server) = serve(listen, myself, &log).await?;
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
        Ok(AdminState {
            guard,
            server,
            local_addr,
            store,
            originated,
            supervisor: args.supervisor,
            router: args.router,
            stats: None,
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
            AdminMsg::Change(asked, reply) => {
                let o = &state.originated;
                let change = StoreChange {
                    add_prefixes: not_in(asked.add_prefixes, &o.prefixes),
                    remove_prefixes: only_in(
                        asked.remove_prefixes,
                        &o.prefixes,
                    ),
                    add_tunnels: not_in(asked.add_tunnels, &o.tunnels),
                    remove_tunnels: only_in(asked.remove_tunnels, &o.tunnels),
                };
                let _ = reply.send(state.update(change).await);
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
                info!(state.log, "statistics enabled";
                    "sled_id" => %req.sled_id, "rack_id" => %req.rack_id);
                state.stats = Some(req);
            }
            AdminMsg::DisableStats => {
                if state.stats.take().is_some() {
                    info!(state.log, "statistics disabled");
                }
            }
            AdminMsg::GetStats(reply) => {
                let _ = reply.send(state.stats);
            }
            AdminMsg::GetLocalAddr(reply) => {
                let _ = reply.send(state.local_addr);
            }
            AdminMsg::SetRouter(router) => {
                // A (re)started router starts empty: hand it everything
                // we originate.
                if let Some(r) = &router {
                    let _ = r.cast(RouterMsg::SetOriginated {
                        prefixes: state.originated.prefixes.clone(),
                        tunnels: state.originated.tunnels.clone(),
                    });
                }
                state.router = router;
            }
        }
        Ok(())
    }
}

/// The members of `want` that `have` lacks.
fn not_in<T: Ord>(want: BTreeSet<T>, have: &BTreeSet<T>) -> BTreeSet<T> {
    want.into_iter().filter(|x| !have.contains(x)).collect()
}

/// The members of `want` that `have` holds.
fn only_in<T: Ord>(want: BTreeSet<T>, have: &BTreeSet<T>) -> BTreeSet<T> {
    want.into_iter().filter(|x| have.contains(x)).collect()
}

/// The dropshot server context: only the way to reach the admin actor.
pub struct AdminContext {
    /// The admin actor.
    admin: AdminRef,
}

impl AdminContext {
    async fn ask<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> AdminMsg,
    ) -> Result<T, HttpError> {
        match self.admin.call(msg, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => Err(HttpError::for_unavail(
                None,
                "the router did not answer in time".to_string(),
            )),
            Ok(CallResult::SenderError) | Err(_) => {
                Err(HttpError::for_unavail(
                    None,
                    "the router is restarting; try again".to_string(),
                ))
            }
        }
    }

    /// Ask the actor to carry out a change of the originated set.
    async fn change(
        &self,
        change: StoreChange,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        self.ask(|r| AdminMsg::Change(change, r))
            .await?
            .map_err(store_failed)?;
        Ok(HttpResponseUpdatedNoContent())
    }

    fn tell(&self, msg: AdminMsg) -> Result<(), HttpError> {
        self.admin.cast(msg).map_err(|_| {
            HttpError::for_unavail(
                None,
                "the router is restarting; try again".to_string(),
            )
        })
    }
}

/// `prefixes` in canonical form: a prefix with host bits set stands for
/// its network (`fd00:1::1/64` is `fd00:1::/64`), as the original daemon
/// takes it; each such prefix is logged as a warning.
fn canonical_prefixes(
    log: &Logger,
    prefixes: BTreeSet<Ipv6Net>,
) -> BTreeSet<Ipv6Net> {
    prefixes
        .into_iter()
        .map(|p| {
            let net = normalise_v6(p);
            if net != p {
                warn!(log, "prefix has host bits set; using its network";
                    "given" => %p, "network" => %net);
            }
            net
        })
        .collect()
}

/// `tunnels` with their overlay prefixes in canonical form (see
/// [`canonical_prefixes`]).
fn canonical_tunnels(
    log: &Logger,
    tunnels: BTreeSet<TunnelOrigin>,
) -> BTreeSet<TunnelOrigin> {
    tunnels
        .into_iter()
        .map(|t| {
            let net = normalise_ip(t.overlay_prefix);
            if net != t.overlay_prefix {
                warn!(log, "overlay prefix has host bits set; using its network";
                    "given" => %t.overlay_prefix, "network" => %net);
            }
            TunnelOrigin { overlay_prefix: net, ..t }
        })
        .collect()
}

/// A failed store write: 507 Insufficient Storage when the data directory
/// is full, 503 Service Unavailable for any other I/O failure, with the
/// store's message (which names the directory and the cause) for the
/// client as well as the log.
fn store_failed(e: StoreError) -> HttpError {
    let (status_code, code) = if e.is_no_space() {
        (ErrorStatusCode::INSUFFICIENT_STORAGE, "StoreFull")
    } else {
        (ErrorStatusCode::SERVICE_UNAVAILABLE, "StoreFailed")
    };
    let message = format!("store write failed: {e}");
    HttpError {
        status_code,
        error_code: Some(code.to_string()),
        external_message: message.clone(),
        internal_message: message,
        headers: None,
    }
}

/// The implementation of the API trait.
pub enum AdminApiImpl {}

impl DdmAdminApi for AdminApiImpl {
    type Context = AdminContext;

    async fn get_peers_v1(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseOk<PeerMap<v1::PeerInfo>>, HttpError> {
        let peers = rqctx.context().ask(AdminMsg::GetPeers).await?;
        Ok(HttpResponseOk(
            peers.into_iter().map(|(k, v)| (k, v.into())).collect(),
        ))
    }

    async fn get_peers(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseOk<PeerMap<PeerInfo>>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().ask(AdminMsg::GetPeers).await?))
    }

    async fn expire_peer(
        rqctx: RequestContext<AdminContext>,
        params: Path<PeerAddr>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let addr = params.into_inner().addr;
        rqctx.context().ask(|r| AdminMsg::ExpirePeer(addr, r)).await?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn get_originated(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseOk<BTreeSet<Ipv6Net>>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().ask(AdminMsg::GetOriginated).await?))
    }

    async fn get_originated_tunnel_endpoints(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseOk<BTreeSet<TunnelOrigin>>, HttpError> {
        Ok(HttpResponseOk(
            rqctx.context().ask(AdminMsg::GetOriginatedTunnels).await?,
        ))
    }

    async fn get_prefixes(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseOk<BTreeMap<String, BTreeSet<PathVector>>>, HttpError>
    {
        Ok(HttpResponseOk(rqctx.context().ask(AdminMsg::GetPrefixes).await?))
    }

    async fn get_tunnel_endpoints(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseOk<BTreeSet<TunnelRoute>>, HttpError> {
        Ok(HttpResponseOk(
            rqctx.context().ask(AdminMsg::GetTunnelEndpoints).await?,
        ))
    }

    async fn advertise_prefixes(
        rqctx: RequestContext<AdminContext>,
        request: TypedBody<BTreeSet<Ipv6Net>>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let add_prefixes = canonical_prefixes(&rqctx.log, request.into_inner());
        let change = StoreChange { add_prefixes, ..Default::default() };
        rqctx.context().change(change).await
    }

    async fn withdraw_prefixes(
        rqctx: RequestContext<AdminContext>,
        request: TypedBody<BTreeSet<Ipv6Net>>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let remove_prefixes =
            canonical_prefixes(&rqctx.log, request.into_inner());
        let change = StoreChange { remove_prefixes, ..Default::default() };
        rqctx.context().change(change).await
    }

    async fn advertise_tunnel_endpoints(
        rqctx: RequestContext<AdminContext>,
        request: TypedBody<BTreeSet<TunnelOrigin>>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let add_tunnels = canonical_tunnels(&rqctx.log, request.into_inner());
        let change = StoreChange { add_tunnels, ..Default::default() };
        rqctx.context().change(change).await
    }

    async fn withdraw_tunnel_endpoints(
        rqctx: RequestContext<AdminContext>,
        request: TypedBody<BTreeSet<TunnelOrigin>>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let remove_tunnels =
            canonical_tunnels(&rqctx.log, request.into_inner());
        let change = StoreChange { remove_tunnels, ..Default::default() };
        rqctx.context().change(change).await
    }

    async fn sync(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        rqctx.context().tell(AdminMsg::Sync)?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn enable_stats(
        rqctx: RequestContext<AdminContext>,
        request: TypedBody<EnableStatsRequest>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        rqctx.context().tell(AdminMsg::EnableStats(request.into_inner()))?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn disable_stats(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        rqctx.context().tell(AdminMsg::DisableStats)?;
        Ok(HttpResponseUpdatedNoContent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Faults;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// Stands in for the router: forwards what it hears to the test.
    struct Recorder;

    impl Actor for Recorder {
        type Msg = RouterMsg;
        type State = mpsc::UnboundedSender<String>;
        type Arguments = mpsc::UnboundedSender<String>;

        async fn pre_start(
            &self,
            _myself: ActorRef<RouterMsg>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _myself: ActorRef<RouterMsg>,
            msg: RouterMsg,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let text = match msg {
                RouterMsg::Originate(p) => format!("originate {}", text(&p)),
                RouterMsg::Withdraw(p) => format!("withdraw {}", text(&p)),
                RouterMsg::SetOriginated { prefixes, .. } => {
                    format!("set {}", text(&prefixes))
                }
                RouterMsg::Sync => "sync".to_string(),
                _ => "other".to_string(),
            };
            let _ = tx.send(text);
            Ok(())
        }
    }

    fn text(prefixes: &BTreeSet<Ipv6Net>) -> String {
        let all: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        format!("{{{}}}", all.join(","))
    }

    /// Stands in for the supervisor, which these tests never ask.
    struct Sink;

    impl Actor for Sink {
        type Msg = PeerQuery;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<PeerQuery>,
            _: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    /// Everything the router heard up to now (a `Sync` marks the end).
    async fn heard(
        router: &RouterRef,
        rx: &mut mpsc::UnboundedReceiver<String>,
    ) -> Vec<String> {
        router.cast(RouterMsg::Sync).unwrap();
        let mut out = Vec::new();
        loop {
            match rx.recv().await.unwrap() {
                s if s == "sync" => return out,
                s => out.push(s),
            }
        }
    }

    fn add(prefix: &str) -> StoreChange {
        StoreChange {
            add_prefixes: [prefix.parse().unwrap()].into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_failing_store_refuses_changes_before_the_router_hears() {
        let faults = Arc::new(Faults::default());
        let store = Store::in_memory_with_faults(faults.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (router, router_task) =
            Actor::spawn(None, Recorder, tx).await.unwrap();
        let (supervisor, sup_task) =
            Actor::spawn(None, Sink, ()).await.unwrap();
        let mut state = AdminState {
            guard: None,
            server: None,
            local_addr: None,
            store: store.clone(),
            originated: Originated::default(),
            supervisor: supervisor.get_derived(),
            router: Some(router.clone()),
            stats: None,
            store_counters: Arc::new(StoreCounters::default()),
            log: Logger::root(slog::Discard, o!()),
        };

        state.update(add("fd00:1::/64")).await.unwrap();
        assert_eq!(heard(&router, &mut rx).await, ["originate {fd00:1::/64}"]);

        // The first failure is found out after the router heard: it is
        // undone once.
        faults.fail_writes(libc::ENOSPC);
        let err = state.update(add("fd00:2::/64")).await.unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert_eq!(
            heard(&router, &mut rx).await,
            ["originate {fd00:2::/64}", "withdraw {fd00:2::/64}"]
        );
        // Retries while the store is failing never reach the router.
        for _ in 0..3 {
            let err = state.update(add("fd00:2::/64")).await.unwrap_err();
            assert!(err.is_no_space(), "{err}");
        }
        assert!(heard(&router, &mut rx).await.is_empty());
        assert_eq!(state.originated.prefixes.len(), 1);

        // Space returns: the next change is written, then told.
        faults.fail_writes(0);
        state.update(add("fd00:2::/64")).await.unwrap();
        assert_eq!(heard(&router, &mut rx).await, ["originate {fd00:2::/64}"]);
        assert_eq!(state.originated, store.load().unwrap());
        assert_eq!(state.originated.prefixes.len(), 2);
        // Every write attempt was counted: two committed, four failed.
        let counted = state.store_counters.named();
        assert_eq!((counted["commits"], counted["failures"]), (2, 4));

        router.stop(None);
        supervisor.stop(None);
        router_task.await.unwrap();
        sup_task.await.unwrap();
    }

    #[test]
    fn store_failures_answer_507_or_503_with_the_cause() {
        let full = store_failed(StoreError::NoSpace(
            "/var/ddm".into(),
            "No space left on device (os error 28)".into(),
        ));
        assert_eq!(full.status_code, ErrorStatusCode::INSUFFICIENT_STORAGE);
        assert!(full.external_message.contains("/var/ddm"));
        assert!(full.external_message.contains("No space left"));
        let broken = store_failed(StoreError::Io(
            "/var/ddm/ddmdb".into(),
            "Input/output error (os error 5)".into(),
        ));
        assert_eq!(broken.status_code, ErrorStatusCode::SERVICE_UNAVAILABLE);
        assert!(broken.external_message.contains("/var/ddm/ddmdb"));
        assert!(broken.external_message.contains("Input/output error"));
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, o!())
    }

    #[test]
    fn host_bits_are_cleared_and_duplicates_merge() {
        let given: BTreeSet<Ipv6Net> =
            ["fd00:1::1/64", "fd00:1::/64", "fd00:2::/48", "fd00:3::5/128"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect();
        let want: BTreeSet<Ipv6Net> =
            ["fd00:1::/64", "fd00:2::/48", "fd00:3::5/128"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect();
        assert_eq!(canonical_prefixes(&log(), given), want);

        let t = |prefix: &str| TunnelOrigin {
            overlay_prefix: prefix.parse().unwrap(),
            boundary_addr: "fd00::1".parse().unwrap(),
            vni: 7,
            metric: 0,
        };
        let given =
            [t("10.1.2.3/8"), t("fd00:9::9/64"), t("10.0.0.0/8")].into();
        let want = [t("10.0.0.0/8"), t("fd00:9::/64")].into();
        assert_eq!(canonical_tunnels(&log(), given), want);
    }
}
