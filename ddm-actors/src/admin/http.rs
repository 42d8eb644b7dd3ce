//! The admin API over HTTP: the dropshot server (on loopback, behind the
//! connection guard on the admin address) and its handlers, each of which
//! sends the admin actor a message and awaits the reply. The actor runs
//! without it when it has no listen address.

use super::*;

/// Start the API server on loopback and the guard on `listen` in front of
/// it.
pub(super) async fn serve(
    listen: SocketAddr,
    admin: AdminRef,
    stats: StatsIdentity,
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
        AdminContext::new(admin, CHANGES_QUEUED, stats),
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

/// Most changes the API hands the admin actor that it has not carried out
/// yet. A client that sends a change and goes away frees its connection
/// at once, while its parsed change (up to about 20 MB for a body of
/// 8 MiB) waits in the actor's mailbox: without a bound, clients that
/// kept doing so while the store was slow could queue any number. One
/// past the bound is answered 503 at once.
pub const CHANGES_QUEUED: usize = 16;

/// The dropshot server context: the way to reach the admin actor, and the
/// places of the changes it may queue.
pub struct AdminContext {
    /// The admin actor.
    admin: AdminRef,
    /// [`CHANGES_QUEUED`] places.
    changes: Arc<tokio::sync::Semaphore>,
    /// The statistics identity, written here before `POST /enable-stats`
    /// is answered: the admin actor may be busy with a store write, and a
    /// scrape in between would have found no identity.
    stats: StatsIdentity,
}

impl AdminContext {
    /// A context reaching `admin`, with `queued` places for changes.
    pub(super) fn new(
        admin: AdminRef,
        queued: usize,
        stats: StatsIdentity,
    ) -> Self {
        let changes = Arc::new(tokio::sync::Semaphore::new(queued));
        AdminContext { admin, changes, stats }
    }

    async fn ask<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> AdminMsg,
    ) -> Result<T, HttpError> {
        // Answered by the admin actor, the router or the supervisor,
        // whichever the question is for: the daemon, to the client.
        self.call(msg, "the daemon did not answer in time; try again").await
    }

    /// [`AdminContext::ask`], answering `late` when the actor does not
    /// answer within [`CALL_TIMEOUT`].
    async fn call<T: Send + 'static>(
        &self,
        msg: impl FnOnce(RpcReplyPort<T>) -> AdminMsg,
        late: &str,
    ) -> Result<T, HttpError> {
        match self.admin.call(msg, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => Err(unavailable(late)),
            // The reply was dropped unanswered: by the router or the
            // supervisor the question was handed to (one of them is
            // restarting), or by an admin actor stopping.
            Ok(CallResult::SenderError) => Err(unavailable(
                "the part of the daemon that answers this is restarting; \
                 try again",
            )),
            Err(_) => Err(unavailable(RESTARTING)),
        }
    }

    /// Ask the actor to carry out a change of the originated set.
    pub(super) async fn change(
        &self,
        change: StoreChange,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let Ok(place) = Arc::clone(&self.changes).try_acquire_owned() else {
            return Err(unavailable(
                "as many earlier changes as may wait are not carried out \
                 yet; try again",
            ));
        };
        let late = "the daemon did not get to the change in time; it is \
                    dropped unless it had begun (GET /originated shows what \
                    is originated)";
        self.call(|r| AdminMsg::Queued(change, place, r), late)
            .await?
            .map_err(store_failed)?;
        Ok(HttpResponseUpdatedNoContent())
    }

    fn tell(&self, msg: AdminMsg) -> Result<(), HttpError> {
        self.admin.cast(msg).map_err(|_| unavailable(RESTARTING))
    }
}

/// The answer while the admin actor is gone (its supervisor restarts it).
const RESTARTING: &str = "the daemon's admin service is restarting; try again";

/// A 503 whose message the client sees (dropshot's `for_unavail` shows it
/// only "Service Unavailable").
fn unavailable(message: &str) -> HttpError {
    visible(ErrorStatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
}

/// An error answer with `status`, `code` and `message`, which the client
/// sees as well as the log.
fn visible(
    status_code: ErrorStatusCode,
    code: &str,
    message: &str,
) -> HttpError {
    HttpError {
        status_code,
        error_code: Some(code.to_string()),
        external_message: message.to_string(),
        internal_message: message.to_string(),
        headers: None,
    }
}

/// The prefixes of one request that had host bits set: how many, and the
/// first with its network, for one warning per request (a body of 8 MiB
/// holds a million prefixes).
struct HostBits<T> {
    first: Option<(T, T)>,
    count: usize,
}

impl<T: Copy + PartialEq + std::fmt::Display> HostBits<T> {
    fn new() -> Self {
        HostBits { first: None, count: 0 }
    }

    /// `net`, the network of `given`; noted if they differ.
    fn note(&mut self, given: T, net: T) -> T {
        if net != given {
            self.first.get_or_insert((given, net));
            self.count += 1;
        }
        net
    }

    /// The request's warning, if any prefix had host bits set.
    fn warn(self, log: &Logger, what: &str) {
        if let Some((given, network)) = self.first {
            warn!(log, "{what} with host bits set; using their networks";
                "count" => self.count, "first" => %given,
                "its_network" => %network);
        }
    }
}

/// `prefixes` in canonical form: a prefix with host bits set stands for
/// its network (`fd00:1::1/64` is `fd00:1::/64`), as the original daemon
/// takes it; a request with such prefixes logs one warning, naming the
/// first and how many. The list is sorted and built into a set in one
/// pass, in packed B-tree nodes (this set and its copies, the router's and
/// the admin actor's mirror, are kept).
pub(super) fn canonical_prefixes(
    log: &Logger,
    PrefixList(mut prefixes): PrefixList,
) -> BTreeSet<Ipv6Net> {
    let mut bits = HostBits::new();
    for p in prefixes.iter_mut() {
        *p = bits.note(*p, normalise_v6(*p));
    }
    bits.warn(log, "prefixes");
    // A stable sort of a list already in order is one pass over it, and a
    // set collected from a list sorts it so, drops repeats and fills its
    // nodes one after the other.
    prefixes.into_iter().collect()
}

/// `tunnels` with their overlay prefixes in canonical form (see
/// [`canonical_prefixes`]).
pub(super) fn canonical_tunnels(
    log: &Logger,
    tunnels: BTreeSet<TunnelOrigin>,
) -> BTreeSet<TunnelOrigin> {
    if tunnels
        .iter()
        .all(|t| normalise_ip(t.overlay_prefix) == t.overlay_prefix)
    {
        return tunnels;
    }
    let mut bits = HostBits::new();
    let canonical = tunnels
        .into_iter()
        .map(|t| {
            let net =
                bits.note(t.overlay_prefix, normalise_ip(t.overlay_prefix));
            TunnelOrigin { overlay_prefix: net, ..t }
        })
        .collect();
    bits.warn(log, "overlay prefixes");
    canonical
}

/// A failed store write: 507 Insufficient Storage when the data directory
/// is full, 503 Service Unavailable for any other I/O failure, with the
/// store's message (which names the directory and the cause) for the
/// client as well as the log.
pub(super) fn store_failed(e: StoreError) -> HttpError {
    let (status_code, code) = if e.is_no_space() {
        (ErrorStatusCode::INSUFFICIENT_STORAGE, "StoreFull")
    } else {
        (ErrorStatusCode::SERVICE_UNAVAILABLE, "StoreFailed")
    };
    visible(status_code, code, &format!("store write failed: {e}"))
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
        request: TypedBody<PrefixList>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let add_prefixes = canonical_prefixes(&rqctx.log, request.into_inner());
        let change = StoreChange { add_prefixes, ..Default::default() };
        rqctx.context().change(change).await
    }

    async fn withdraw_prefixes(
        rqctx: RequestContext<AdminContext>,
        request: TypedBody<PrefixList>,
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
        let id = Some(request.into_inner());
        set_stats_identity(&rqctx.context().stats, &rqctx.log, id);
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn disable_stats(
        rqctx: RequestContext<AdminContext>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        set_stats_identity(&rqctx.context().stats, &rqctx.log, None);
        Ok(HttpResponseUpdatedNoContent())
    }
}
