//! The switch dataplane: routes programmed through the switch's dataplane
//! daemon (dpd) over its HTTP API.
//!
//! Every request carries the `api-version` header dpd requires
//! ([`API_VERSION`]). Each destination's ECMP set becomes one dpd IPv6
//! route with one target per nexthop: the first target is created with
//! `PUT /route/ipv6` (`replace: false`), further ones are added with
//! `POST /route/ipv6`, and a withdrawn nexthop deletes exactly its own
//! target (`DELETE /route/ipv6/{cidr}/{port}/{link}/{tgt_ip}`); a
//! destination whose last target is deleted is gone.
//!
//! Targets carry the tag [`TAG`] (`ddmd`, as the original daemon uses, so
//! a swap takes over its routes). dpd keeps no other owner mark, so the
//! routes with our tag are ours: at start, and whenever dpd comes back
//! after being unreachable, they are listed (paged `GET /route/ipv6`) and
//! reconciled to what the router wants — stale ones removed, missing ones
//! added. A background watcher notices dpd going away (a failed request or
//! a failed probe every [`DpdConfig::probe_interval`]) and retries the
//! reconciliation until it succeeds; a full reconciliation also runs every
//! [`DpdConfig::resync_interval`], which catches a dpd restart that fell
//! between two probes, and tries again the changes dpd refused (a
//! reconciliation that meets refusals still completes: they are counted
//! in [`DpdStats::refused`] and logged).
//!
//! Interfaces map to switch ports by name: `tfportrearN_0` is port `rearN`,
//! link 0. A nexthop on any other interface is skipped with one log line per
//! interface and counted ([`DpdStats::skipped`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oxnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use slog::{debug, info, warn, Logger};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::{masked, Dataplane, DataplaneError, RouteUpdate, TunnelEntry};

/// The dpd API version every request announces (the version the original
/// daemon's client speaks; dpd's IPv6 route endpoints are unchanged from
/// 1.0.0 to 13.0.0).
pub const API_VERSION: &str = "12.0.0";

/// The tag on every target we program.
pub const TAG: &str = "ddmd";

/// The most targets dpd keeps for one route.
pub const MAX_TARGETS: usize = 32;

/// Routes asked for per page when listing.
const PAGE_LIMIT: u32 = 1000;

/// Requests to dpd in flight at once during a large batch.
const CONCURRENCY: usize = 32;

/// Largest response body read from dpd (a page of [`PAGE_LIMIT`] routes
/// with a few targets each fits easily).
const MAX_RESPONSE: usize = 16 << 20;

/// The switch port and link of an interface name: `tfportrearN_0` (N in
/// 0..=31, written without leading zeros) is port `rearN`, link 0; any
/// other name has none.
pub fn port_link(ifname: &str) -> Option<(String, u8)> {
    let n = ifname.strip_prefix("tfportrear")?.strip_suffix("_0")?;
    let v: u8 = n.parse().ok()?;
    (v <= 31 && v.to_string() == n).then(|| (format!("rear{v}"), 0))
}

/// One target of a dpd IPv6 route, as we identify it (the tag is always
/// [`TAG`]; the VLAN always none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DpdTarget {
    /// The switch port (`rear3`).
    pub port_id: String,
    /// The link within the port.
    pub link_id: u8,
    /// The nexthop's address.
    pub tgt_ip: Ipv6Addr,
}

/// dpd's `Ipv6Route`: one target of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Route {
    /// Owner tag.
    pub tag: String,
    /// Switch port.
    pub port_id: String,
    /// Link within the port.
    pub link_id: u8,
    /// Nexthop address.
    pub tgt_ip: Ipv6Addr,
    /// VLAN, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
}

/// dpd's `Ipv6RouteUpdate`: the body of `PUT`/`POST /route/ipv6`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6RouteUpdate {
    /// The destination, `addr/len`.
    pub cidr: Ipv6Net,
    /// The target to set or add.
    pub target: Ipv6Route,
    /// Whether a `PUT` may replace a different existing target.
    pub replace: bool,
}

/// dpd's `Ipv6Routes`: a destination and all its targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Routes {
    /// The destination.
    pub cidr: Ipv6Net,
    /// Its targets.
    pub targets: Vec<Ipv6Route>,
}

/// dpd's `Ipv6RoutesResultsPage`: one page of a route listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6RoutesPage {
    /// The routes of this page.
    pub items: Vec<Ipv6Routes>,
    /// The token of the next page; none on the last.
    #[serde(default)]
    pub next_page: Option<String>,
}

impl DpdTarget {
    fn to_route(&self) -> Ipv6Route {
        Ipv6Route {
            tag: TAG.to_string(),
            port_id: self.port_id.clone(),
            link_id: self.link_id,
            tgt_ip: self.tgt_ip,
            vlan_id: None,
        }
    }
}

/// Maps an interface index to its name (the interfaces the router was
/// started on); `None` for an index it does not know.
pub type InterfaceNames = Arc<dyn Fn(u32) -> Option<String> + Send + Sync>;

/// How to reach dpd and which interfaces are which.
#[derive(Clone)]
pub struct DpdConfig {
    /// Host name or address of dpd (an IPv6 address without brackets).
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// Interface index → name, for the port mapping.
    pub interfaces: InterfaceNames,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How often the watcher probes dpd (or, while it is unreachable,
    /// retries the reconciliation).
    pub probe_interval: Duration,
    /// How often a full reconciliation runs while dpd is reachable.
    pub resync_interval: Duration,
}

impl DpdConfig {
    /// A configuration with the default timers: 5 s requests, a probe every
    /// second, a full reconciliation every minute.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        interfaces: InterfaceNames,
    ) -> Self {
        DpdConfig {
            host: host.into(),
            port,
            interfaces,
            request_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            resync_interval: Duration::from_secs(60),
        }
    }

    /// An interface map from a fixed index → name table.
    pub fn fixed_interfaces(map: BTreeMap<u32, String>) -> InterfaceNames {
        Arc::new(move |i| map.get(&i).cloned())
    }

    /// The base URL, e.g. `http://[::1]:12224`.
    fn base(&self) -> String {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Debug for DpdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Counters of the switch dataplane, shared with whoever watches it.
#[derive(Debug, Default)]
pub struct DpdStats {
    /// Nexthops not programmed because their interface is not a rear port
    /// (or is unknown).
    pub skipped: AtomicU64,
    /// Nexthops beyond the [`MAX_TARGETS`] a route can hold.
    pub over_limit: AtomicU64,
    /// Requests dpd refused (other than the tolerated 404 on a delete).
    pub refused: AtomicU64,
    /// Reconciliations completed (the start's included).
    pub reconciliations: AtomicU64,
    /// Times dpd was found unreachable after being reachable.
    pub lost: AtomicU64,
    /// Rounds of the watcher, those before the start (which ask dpd
    /// nothing) included.
    pub watch_rounds: AtomicU64,
}

/// Why a request failed.
#[derive(Debug)]
enum CallError {
    /// No answer (connection refused or reset, timeout).
    Unreachable(String),
    /// dpd answered with an error status.
    Status(StatusCode, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => write!(f, "dpd unreachable: {e}"),
            CallError::Status(s, m) => write!(f, "dpd answered {s}: {m}"),
        }
    }
}

/// A thin client of dpd's IPv6 route endpoints.
struct DpdClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

/// `cidr` as a path segment: `/` becomes `%2F` (`:` stays raw).
fn cidr_segment(cidr: &Ipv6Net) -> String {
    format!("{}%2F{}", cidr.prefix(), cidr.width())
}

impl DpdClient {
    fn new(config: &DpdConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.request_timeout));
        connector.set_nodelay(true);
        DpdClient {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            base: config.base(),
            timeout: config.request_timeout,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, CallError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("api-version", API_VERSION)
            .header("accept", "application/json");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CallError::Unreachable(format!("bad request: {e}")))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                let msg = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .and_then(|m| m.as_str())
                            .map(Into::into)
                    })
                    .unwrap_or_else(|| {
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                            .into_owned()
                    });
                Err(CallError::Status(status, msg))
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn update(
        &self,
        method: Method,
        cidr: &Ipv6Net,
        target: &DpdTarget,
    ) -> Result<(), CallError> {
        let body = Ipv6RouteUpdate {
            cidr: *cidr,
            target: target.to_route(),
            replace: false,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        self.call(method, "/route/ipv6", Some(body)).await.map(drop)
    }

    async fn delete_target(
        &self,
        cidr: &Ipv6Net,
        t: &DpdTarget,
    ) -> Result<(), CallError> {
        let path = format!(
            "/route/ipv6/{}/{}/{}/{}",
            cidr_segment(cidr),
            t.port_id,
            t.link_id,
            t.tgt_ip
        );
        match self.call(Method::DELETE, &path, None).await {
            Err(CallError::Status(StatusCode::NOT_FOUND, _)) => Ok(()),
            r => r.map(drop),
        }
    }

    /// One page of the listing (a cheap liveness probe with a small limit).
    async fn page(
        &self,
        limit: u32,
        token: Option<&str>,
    ) -> Result<Ipv6RoutesPage, CallError> {
        let mut path = format!("/route/ipv6?limit={limit}");
        if let Some(t) = token {
            path.push_str("&page_token=");
            path.push_str(&percent_encode(t));
        }
        let body = self.call(Method::GET, &path, None).await?;
        serde_json::from_slice(&body).map_err(|e| {
            CallError::Status(
                StatusCode::BAD_GATEWAY,
                format!("unreadable route page: {e}"),
            )
        })
    }

    /// Every target carrying our tag, by destination.
    async fn list_ours(&self) -> Result<Table, CallError> {
        let mut out = Table::new();
        let mut token: Option<String> = None;
        let mut pages = Pages::default();
        loop {
            let page = self.page(PAGE_LIMIT, token.as_deref()).await?;
            for r in page.items {
                let ours: BTreeSet<DpdTarget> = r
                    .targets
                    .into_iter()
                    .filter(|t| t.tag == TAG)
                    .map(|t| DpdTarget {
                        port_id: t.port_id,
                        link_id: t.link_id,
                        tgt_ip: t.tgt_ip,
                    })
                    .collect();
                if !ours.is_empty() {
                    out.entry(masked(&r.cidr)).or_default().extend(ours);
                }
            }
            match pages.next(page.next_page)? {
                Some(next) => token = Some(next),
                None => return Ok(out),
            }
        }
    }
}

/// Most pages of one listing: 10,000,000 routes, far past any switch's
/// table. A dpd whose listing goes on past them is not listing a table.
const MAX_PAGES: usize = 10_000;

/// The page tokens of one listing so far: a listing whose token comes
/// back (dpd going round in a cycle) or that never ends is an error,
/// not a loop for ever with the dataplane's lock held.
#[derive(Debug, Default)]
struct Pages {
    seen: std::collections::HashSet<String>,
}

impl Pages {
    /// The token of the page after one whose `next_page` is `next`:
    /// `None` at the end.
    fn next(
        &mut self,
        next: Option<String>,
    ) -> Result<Option<String>, CallError> {
        let Some(next) = next else {
            return Ok(None);
        };
        let refuse = |why: &str| {
            Err(CallError::Status(StatusCode::BAD_GATEWAY, why.into()))
        };
        if self.seen.len() + 1 >= MAX_PAGES {
            return refuse("the route listing did not end");
        }
        if !self.seen.insert(next.clone()) {
            return refuse("the route listing repeated a page token");
        }
        Ok(Some(next))
    }
}

/// Percent-encodes everything but unreserved characters (for a query
/// value).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Targets by destination.
type Table = BTreeMap<Ipv6Net, BTreeSet<DpdTarget>>;

/// The state behind the lock shared with the watcher.
struct Inner {
    client: DpdClient,
    /// What the router wants.
    desired: Table,
    /// What we believe dpd holds with our tag.
    installed: Table,
    /// False once dpd was unreachable, until a reconciliation succeeds.
    synced: bool,
    /// Set by `remove_all` (a clean shutdown, not the removal after a
    /// router's failure): a batch no longer stops at its first unanswered
    /// request.
    stopping: bool,
    /// Set by `remove_stale`, which the router's worker calls once it has
    /// the dataplane turn: until then the watcher does not reconcile (a
    /// failed router's worker may still be removing our routes).
    started: bool,
    interfaces: InterfaceNames,
    /// Interfaces already reported as unmappable.
    warned: HashSet<String>,
    stats: Arc<DpdStats>,
    log: Logger,
}

/// Outcome of synchronising one destination.
struct Synced {
    cidr: Ipv6Net,
    now: BTreeSet<DpdTarget>,
    unreachable: Option<String>,
    refused: Vec<String>,
}

/// Brings one destination from `have` to `want`: adds first (so traffic
/// keeps a way out), then deletes exactly the targets no longer wanted,
/// then the adds dpd refused once more: a route holds at most
/// [`MAX_TARGETS`] targets, so one that is full (ours, with anybody
/// else's) takes a new target only once an old one is gone.
async fn sync_one(
    client: &DpdClient,
    cidr: Ipv6Net,
    have: BTreeSet<DpdTarget>,
    want: BTreeSet<DpdTarget>,
) -> Synced {
    /// One request of the sync: an add (`retry`: it may be tried once
    /// more, after the deletes), or a delete.
    #[derive(Clone, Copy, PartialEq)]
    enum Op {
        Add { retry: bool },
        Delete,
    }
    let mut now = have.clone();
    let mut refused = Vec::new();
    let mut ops: VecDeque<(Op, &DpdTarget)> = want
        .difference(&have)
        .map(|t| (Op::Add { retry: true }, t))
        .chain(have.difference(&want).map(|t| (Op::Delete, t)))
        .collect();
    while let Some((op, t)) = ops.pop_front() {
        let r = match op {
            Op::Add { .. } => add_target(client, &cidr, &now, t).await,
            Op::Delete => client.delete_target(&cidr, t).await,
        };
        match r {
            Ok(()) if op == Op::Delete => {
                now.remove(t);
            }
            Ok(()) => {
                now.insert(t.clone());
            }
            Err(CallError::Unreachable(e)) => {
                return Synced { cidr, now, unreachable: Some(e), refused };
            }
            // Behind the deletes, which may make room.
            Err(_) if op == (Op::Add { retry: true }) => {
                ops.push_back((Op::Add { retry: false }, t));
            }
            Err(e) => {
                let what = if op == Op::Delete { "delete" } else { "add" };
                refused.push(format!("{what} {cidr} via {t:?}: {e}"));
            }
        }
    }
    Synced { cidr, now, unreachable: None, refused }
}

/// Adds target `t` to `cidr`, of which we hold `now`: the route is
/// created (`PUT`) when we hold none of it, and, when someone else's
/// target is there already, ours goes beside it (`POST`).
async fn add_target(
    client: &DpdClient,
    cidr: &Ipv6Net,
    now: &BTreeSet<DpdTarget>,
    t: &DpdTarget,
) -> Result<(), CallError> {
    if !now.is_empty() {
        return client.update(Method::POST, cidr, t).await;
    }
    match client.update(Method::PUT, cidr, t).await {
        Err(CallError::Status(StatusCode::CONFLICT, _)) => {
            client.update(Method::POST, cidr, t).await
        }
        r => r,
    }
}

impl Inner {
    /// The dpd targets of a router update's nexthops (skipping and counting
    /// unmappable ones).
    fn targets(
        &mut self,
        u: &RouteUpdate,
        ports: &mut HashMap<u32, Option<(String, u8)>>,
    ) -> BTreeSet<DpdTarget> {
        let mut out = BTreeSet::new();
        for nh in u.nexthops.iter() {
            let port = ports
                .entry(nh.ifindex)
                .or_insert_with(|| {
                    let name = (self.interfaces)(nh.ifindex);
                    let port = name.as_deref().and_then(port_link);
                    if port.is_none() {
                        let shown = name.unwrap_or_else(|| {
                            format!("ifindex {}", nh.ifindex)
                        });
                        if self.warned.insert(shown.clone()) {
                            warn!(self.log,
                                "nexthops on this interface are not \
                                 programmed: only tfportrearN_0 interfaces \
                                 map to switch ports";
                                "interface" => shown);
                        }
                    }
                    port
                })
                .clone();
            match port {
                Some((port_id, link_id)) => {
                    if out.len() == MAX_TARGETS {
                        self.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    out.insert(DpdTarget { port_id, link_id, tgt_ip: nh.addr });
                }
                None => {
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        out
    }

    /// Synchronises the given destinations, in parallel.
    async fn sync(
        &mut self,
        keys: Vec<Ipv6Net>,
    ) -> Result<usize, DataplaneError> {
        let empty = BTreeSet::new();
        let work: Vec<_> = keys
            .into_iter()
            .filter_map(|k| {
                let have = self.installed.get(&k).unwrap_or(&empty);
                let want = self.desired.get(&k).unwrap_or(&empty);
                (have != want).then(|| (k, have.clone(), want.clone()))
            })
            .collect();
        let client = &self.client;
        let mut pending = stream::iter(work)
            .map(|(k, have, want)| sync_one(client, k, have, want))
            .buffer_unordered(CONCURRENCY);
        let mut results: Vec<Synced> = Vec::new();
        while let Some(s) = pending.next().await {
            let unreachable = s.unreachable.is_some();
            results.push(s);
            if unreachable && !self.stopping {
                // No more requests to a dpd that does not answer (each
                // would wait out its timeout, holding the dataplane):
                // those not made are made by the reconciliation once it
                // answers again. At a clean shutdown there is no later
                // reconciliation: every removal is tried (the router's
                // stop grace bounds the wait). After a router's failure
                // there is, the next router's start.
                break;
            }
        }
        drop(pending);
        let mut removed = 0;
        let mut unreachable = None;
        let mut refused = Vec::new();
        for s in results {
            if s.now.is_empty() {
                if self.installed.remove(&s.cidr).is_some() {
                    removed += 1;
                }
            } else {
                self.installed.insert(s.cidr, s.now);
            }
            if s.unreachable.is_some() {
                unreachable = s.unreachable;
            }
            refused.extend(s.refused);
        }
        if let Some(e) = unreachable {
            self.lost(&e);
            return Err(DataplaneError::Unavailable(e));
        }
        if !refused.is_empty() {
            self.stats
                .refused
                .fetch_add(refused.len() as u64, Ordering::Relaxed);
            for r in refused.iter().take(5) {
                warn!(self.log, "dpd refused a route change"; "detail" => r);
            }
            return Err(DataplaneError::Request(format!(
                "dpd refused {} route changes, first: {}",
                refused.len(),
                refused[0]
            )));
        }
        Ok(removed)
    }

    /// Notes that dpd stopped answering.
    fn lost(&mut self, e: &str) {
        if self.synced {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            warn!(self.log, "dpd unreachable; routes will be reconciled \
                when it answers again"; "error" => e);
        }
        self.synced = false;
    }

    /// Lists our routes in dpd and brings them to what the router wants.
    /// Returns how many destinations that the router does not want were
    /// removed.
    async fn reconcile(&mut self) -> Result<usize, DataplaneError> {
        let ours = match self.client.list_ours().await {
            Ok(t) => t,
            Err(CallError::Unreachable(e)) => {
                self.lost(&e);
                return Err(DataplaneError::Unavailable(e));
            }
            Err(e) => return Err(DataplaneError::Request(e.to_string())),
        };
        let stale =
            ours.keys().filter(|k| !self.desired.contains_key(k)).count();
        self.installed = ours;
        let keys: BTreeSet<Ipv6Net> =
            self.installed.keys().chain(self.desired.keys()).copied().collect();
        let synced = self.sync(keys.into_iter().collect()).await;
        if let Err(DataplaneError::Unavailable(e)) = synced {
            return Err(DataplaneError::Unavailable(e));
        }
        // In sync even when dpd refused some changes (a target past its
        // limit, a port it does not know): they are counted and logged,
        // and tried again at the next full reconciliation. Left out of
        // sync, the watcher listed the whole table again at every probe.
        if !self.synced {
            info!(self.log, "dpd reachable; routes reconciled";
                "routes" => self.installed.len(), "stale_removed" => stale);
        }
        self.synced = true;
        self.stats.reconciliations.fetch_add(1, Ordering::Relaxed);
        synced.map(|_| stale)
    }

    /// One round of the watcher: reconcile if out of sync (or due), else
    /// probe.
    async fn watch_once(&mut self, full: bool) {
        self.stats.watch_rounds.fetch_add(1, Ordering::Relaxed);
        if !self.started {
            return;
        }
        if !self.synced || full {
            if let Err(e) = self.reconcile().await {
                debug!(self.log, "reconciliation with dpd failed";
                    "error" => %e);
            }
            return;
        }
        match self.client.page(1, None).await {
            Ok(_) => {}
            Err(CallError::Unreachable(e)) => self.lost(&e),
            Err(e) => debug!(self.log, "dpd probe refused"; "error" => %e),
        }
    }
}

/// The switch dataplane: a client of dpd's route API.
pub struct DpdDataplane {
    inner: Arc<Mutex<Inner>>,
    stats: Arc<DpdStats>,
    watcher: Option<JoinHandle<()>>,
}

impl DpdDataplane {
    /// A dataplane programming the dpd at `config.host`:`config.port`.
    ///
    /// The watcher starts at once (so this must be called within a tokio
    /// runtime), but does nothing until the router's worker, in its
    /// dataplane turn, runs the first reconciliation
    /// ([`Dataplane::remove_stale`]).
    pub fn new(config: DpdConfig, log: Logger) -> Self {
        let stats = Arc::new(DpdStats::default());
        info!(log, "programming the switch through dpd";
            "url" => config.base(), "api_version" => API_VERSION,
            "tag" => TAG);
        let inner = Arc::new(Mutex::new(Inner {
            client: DpdClient::new(&config),
            desired: Table::new(),
            installed: Table::new(),
            synced: false,
            stopping: false,
            started: false,
            interfaces: config.interfaces.clone(),
            warned: HashSet::new(),
            stats: stats.clone(),
            log,
        }));
        let watcher = tokio::spawn(watch(
            Arc::downgrade(&inner),
            config.probe_interval,
            config.resync_interval,
        ));
        DpdDataplane { inner, stats, watcher: Some(watcher) }
    }

    /// The dataplane's counters.
    pub fn stats(&self) -> Arc<DpdStats> {
        self.stats.clone()
    }

    /// Remove every route of ours; `every`: try each one even past one
    /// unanswered (a clean shutdown), else stop there.
    async fn remove_every_route(
        &mut self,
        every: bool,
    ) -> Result<usize, DataplaneError> {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let mut inner = self.inner.lock().await;
        inner.desired.clear();
        inner.stopping = every;
        match inner.reconcile().await {
            Ok(n) => Ok(n),
            // The listing was refused, or (at a clean stop, which tries
            // every route) not answered: delete what we know of.
            Err(e)
                if matches!(e, DataplaneError::Request(_))
                    || (every
                        && matches!(e, DataplaneError::Unavailable(_))) =>
            {
                let keys = inner.installed.keys().copied().collect();
                inner.sync(keys).await
            }
            Err(e) => Err(e),
        }
    }
}

/// Probes dpd and reconciles when it comes back, until the dataplane is
/// dropped.
async fn watch(
    inner: std::sync::Weak<Mutex<Inner>>,
    probe: Duration,
    resync: Duration,
) {
    let probe = probe.max(Duration::from_millis(10));
    let every = (resync.as_millis() / probe.as_millis()).max(1) as u64;
    let mut tick = tokio::time::interval(probe);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let Some(inner) = inner.upgrade() else { return };
        inner.lock().await.watch_once(n.is_multiple_of(every)).await;
    }
}

impl Drop for DpdDataplane {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

#[async_trait]
impl Dataplane for DpdDataplane {
    fn name(&self) -> &'static str {
        "dpd"
    }

    async fn remove_stale(&mut self) -> Result<usize, DataplaneError> {
        let mut inner = self.inner.lock().await;
        inner.started = true;
        inner.reconcile().await
    }

    async fn apply(
        &mut self,
        updates: Vec<RouteUpdate>,
    ) -> Result<(), DataplaneError> {
        let mut inner = self.inner.lock().await;
        let mut ports = HashMap::new();
        let mut keys = Vec::with_capacity(updates.len());
        for u in &updates {
            let cidr = masked(&u.destination);
            let want = inner.targets(u, &mut ports);
            if want.is_empty() {
                inner.desired.remove(&cidr);
            } else {
                inner.desired.insert(cidr, want);
            }
            keys.push(cidr);
        }
        if !inner.synced {
            // dpd was away (or never reached): the listing tells what it
            // holds now.
            return inner.reconcile().await.map(drop);
        }
        inner.sync(keys).await.map(drop)
    }

    async fn set_tunnels(
        &mut self,
        tunnels: BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        let inner = self.inner.lock().await;
        info!(inner.log,
            "tunnel endpoints recorded (the switch has no tunnel service)";
            "count" => tunnels.len());
        Ok(())
    }

    async fn remove_all(&mut self) -> Result<usize, DataplaneError> {
        self.remove_every_route(true).await
    }

    async fn remove_all_after_failure(
        &mut self,
    ) -> Result<usize, DataplaneError> {
        // The next router's start reconciles dpd's table: against a dpd
        // that does not answer, trying every route (each its own timeout,
        // 32 at a time) held the dataplane turn from it for many minutes.
        self.remove_every_route(false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rear_ports_map_and_others_do_not() {
        assert_eq!(port_link("tfportrear0_0"), Some(("rear0".into(), 0)));
        assert_eq!(port_link("tfportrear31_0"), Some(("rear31".into(), 0)));
        for bad in [
            "tfportrear32_0",
            "tfportrear01_0",
            "tfportrear_0",
            "tfportrear1_1",
            "tfportqsfp0_0",
            "tfportrear+1_0",
            "eth0",
            "",
        ] {
            assert_eq!(port_link(bad), None, "{bad}");
        }
    }

    #[test]
    fn cidr_path_segments_encode_the_slash() {
        let net: Ipv6Net = "fd00:1::/64".parse().unwrap();
        assert_eq!(cidr_segment(&net), "fd00:1::%2F64");
        let host: Ipv6Net = "fd00:1::5/64".parse().unwrap();
        assert_eq!(masked(&host), net);
    }

    #[test]
    fn update_body_has_the_documented_shape() {
        let body = Ipv6RouteUpdate {
            cidr: "fd00:1122:3344:101::/64".parse().unwrap(),
            target: DpdTarget {
                port_id: "rear3".into(),
                link_id: 0,
                tgt_ip: "fe80::1".parse().unwrap(),
            }
            .to_route(),
            replace: false,
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "cidr": "fd00:1122:3344:101::/64",
                "replace": false,
                "target": {"tag": "ddmd", "port_id": "rear3", "link_id": 0,
                           "tgt_ip": "fe80::1"}
            })
        );
    }

    #[test]
    fn page_tokens_are_query_encoded() {
        assert_eq!(percent_encode("a b/c=d&e"), "a%20b%2Fc%3Dd%26e");
        assert_eq!(percent_encode("abc-_.~9"), "abc-_.~9");
    }

    #[test]
    fn a_listing_going_round_or_without_end_is_refused() {
        let mut p = Pages::default();
        assert_eq!(p.next(Some("a".into())).unwrap(), Some("a".into()));
        assert_eq!(p.next(Some("b".into())).unwrap(), Some("b".into()));
        let e = p.next(Some("a".into())).unwrap_err();
        assert!(e.to_string().contains("repeated"), "{e}");
        assert_eq!(Pages::default().next(None).unwrap(), None);
        let mut p = Pages::default();
        for i in 0..MAX_PAGES - 1 {
            assert!(p.next(Some(i.to_string())).is_ok(), "page {i}");
        }
        let e = p.next(Some("last".into())).unwrap_err();
        assert!(e.to_string().contains("did not end"), "{e}");
    }
}
