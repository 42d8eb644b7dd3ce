//! The metrics listener: every counter of the daemon, on request.
//!
//! `ddmd --metrics-addr ADDR:PORT` starts [`serve`], a small HTTP/1.1
//! server apart from the admin API (it is not an admin API version). It
//! answers
//!
//! * `GET /metrics`: the counters in the Prometheus text exposition format
//!   (the OpenMetrics flavour, written by the `prometheus-client` crate),
//!   labelled with the rack and sled ids of `POST /enable-stats` when set;
//! * `GET /counters`: the same counters as one JSON object
//!   ([`CountersReport`]), which `ddmadm counters` reads.
//!
//! Nothing is kept here between requests. Each request asks the supervisor
//! for its children ([`SupervisorMsg::GetCounterSources`]) and then asks
//! every child for its counters by message, all at once, each with a short
//! deadline ([`GATHER_TIMEOUT`]): a busy actor delays a scrape by at most
//! that long and is reported in [`CountersReport::unanswered`], and no actor
//! waits on the scrape. The store's counters are atomics the admin actor
//! bumps around its store calls ([`StoreCounters`]), kept by the supervisor
//! so they survive an admin restart.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ddm_admin_api::counters::{
    CountersReport, InterfaceCounters, PeerCounters, PeerRefusals,
};
use futures::future::join_all;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use slog::{debug, warn, Logger};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::admin::{AdminMsg, AdminRef};
use crate::discovery::DiscoveryRef;
use crate::discovery::{
    Counters as DiscoveryCounters, DiscoveryMsg, DropCounters,
};
use crate::exchange::actor::{ExchangeMsg, ExchangeRef};
use crate::router::{RouterMsg, RouterRef};
use crate::supervisor::{SupervisorMsg, SupervisorRef};

/// How long one request waits for each actor's answer.
pub const GATHER_TIMEOUT: Duration = Duration::from_millis(500);

/// Most connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of `GET /metrics`.
pub const METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Store writes counted by the admin actor (shared, so that the counts
/// survive an admin restart).
#[derive(Debug, Default)]
pub struct StoreCounters {
    commits: AtomicU64,
    failures: AtomicU64,
}

impl StoreCounters {
    /// Count one store write: committed (`true`) or failed.
    pub fn record(&self, committed: bool) {
        let c = if committed { &self.commits } else { &self.failures };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by name.
    pub fn named(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("commits".to_string(), self.commits.load(Ordering::Relaxed)),
            ("failures".to_string(), self.failures.load(Ordering::Relaxed)),
        ])
    }
}

/// Who to ask for counters, from the supervisor.
pub struct CounterSources {
    /// Discovery actors by interface name.
    pub discovery: Vec<(String, DiscoveryRef)>,
    /// Exchange actors: interface name, index, peer address, actor.
    pub exchange: Vec<(String, u32, Ipv6Addr, ExchangeRef)>,
    /// The router, if one runs.
    pub router: Option<RouterRef>,
    /// The admin actor, if it runs (it knows the statistics identity).
    pub admin: Option<AdminRef>,
    /// The store's counters.
    pub store: Arc<StoreCounters>,
}

/// The discovery counters by name, and the drops by reason. (Every field
/// is named here: a counter added to discovery fails to compile until it
/// is served.)
pub fn discovery_named(
    c: &DiscoveryCounters,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let DiscoveryCounters {
        solicitations_sent,
        solicitations_received,
        solicitations_rate_limited,
        advertisements_sent,
        advertisements_received,
        send_errors,
        peer_ups,
        expirations,
        address_changes,
        drops,
        peer_log_lines_suppressed,
    } = *c;
    let counters = [
        ("solicitations_sent", solicitations_sent),
        ("solicitations_received", solicitations_received),
        ("solicitations_rate_limited", solicitations_rate_limited),
        ("advertisements_sent", advertisements_sent),
        ("advertisements_received", advertisements_received),
        ("send_errors", send_errors),
        ("peer_ups", peer_ups),
        ("expirations", expirations),
        ("address_changes", address_changes),
        ("peer_log_lines_suppressed", peer_log_lines_suppressed),
    ];
    let DropCounters {
        truncated,
        unknown_version,
        unknown_kind,
        bad_hostname,
        no_kind_flags,
        wrong_interface,
        not_link_local,
        own_packet,
        link_down,
    } = drops;
    let drops = [
        ("truncated", truncated),
        ("unknown_version", unknown_version),
        ("unknown_kind", unknown_kind),
        ("bad_hostname", bad_hostname),
        ("no_kind_flags", no_kind_flags),
        ("wrong_interface", wrong_interface),
        ("not_link_local", not_link_local),
        ("own_packet", own_packet),
        ("link_down", link_down),
    ];
    let named = |kv: &[(&str, u64)]| {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    (named(&counters), named(&drops))
}

/// Ask `actor` with a deadline; `None` if it did not answer in time.
async fn ask<M, T>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
) -> Option<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(timeout)).await {
        Ok(CallResult::Success(v)) => Some(v),
        _ => None,
    }
}

/// Gather every counter: the supervisor names the actors, then each is
/// asked at once, with `timeout` each. Fails only if the supervisor does
/// not answer.
pub async fn gather(
    supervisor: &SupervisorRef,
    timeout: Duration,
) -> Result<CountersReport, String> {
    let src = ask(supervisor, SupervisorMsg::GetCounterSources, timeout)
        .await
        .ok_or("the supervisor did not answer in time")?;
    let mut report =
        CountersReport { store: src.store.named(), ..Default::default() };
    let discovery =
        join_all(src.discovery.iter().map(|(name, d)| async move {
            (name, ask(d, DiscoveryMsg::GetCounters, timeout).await)
        }));
    let exchange = join_all(src.exchange.iter().map(
        |(name, ifindex, peer, x)| async move {
            let c = ask(x, ExchangeMsg::GetCounters, timeout).await;
            (name, *ifindex, *peer, c)
        },
    ));
    let router = async {
        match &src.router {
            Some(r) => Some((
                ask(r, RouterMsg::GetCounters, timeout).await,
                ask(r, RouterMsg::GetPolicyCounters, timeout).await,
            )),
            None => None,
        }
    };
    let identity = async {
        match &src.admin {
            Some(a) => Some(ask(a, AdminMsg::GetStats, timeout).await),
            None => None,
        }
    };
    let (discovery, exchange, router, identity) =
        futures::join!(discovery, exchange, router, identity);

    for (name, c) in discovery {
        match c {
            Some(c) => {
                let (counters, drops) = discovery_named(&c);
                report.discovery.push(InterfaceCounters {
                    interface: name.clone(),
                    counters,
                    drops,
                });
            }
            None => report.unanswered.push(format!("discovery:{name}")),
        }
    }
    for (name, ifindex, peer, c) in exchange {
        match c {
            Some(c) => report.exchange.push(PeerCounters {
                interface: name.clone(),
                ifindex,
                peer,
                counters: c.named(),
            }),
            None => report.unanswered.push(format!("exchange:{peer}%{name}")),
        }
    }
    if let Some((counters, policy)) = router {
        match counters {
            Some(c) => report.router = Some(c.named()),
            None => report.unanswered.push("router".to_string()),
        }
        match policy {
            Some(p) => {
                for (id, counts) in p.per_peer {
                    report.import_refusals.push(PeerRefusals {
                        ifindex: id.ifindex,
                        peer: id.addr,
                        reasons: counts
                            .iter()
                            .map(|(r, n)| (r.name().to_string(), n))
                            .collect(),
                    });
                }
            }
            None => report.unanswered.push("router:policy".to_string()),
        }
    }
    match identity {
        Some(Some(Some(id))) => {
            report.rack_id = Some(id.rack_id);
            report.sled_id = Some(id.sled_id);
        }
        Some(Some(None)) => {}
        Some(None) => report.unanswered.push("admin".to_string()),
        None => {}
    }
    Ok(report)
}

/// Label sets of the metric families.
type Labels = Vec<(String, String)>;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What a counter of `group` named `name` counts, for `# HELP`.
fn help(group: &str, name: &str) -> String {
    let what = name.replace('_', " ");
    match group {
        "discovery" => format!("Discovery, per interface: {what}."),
        "exchange" => format!("Prefix exchange, per peer: {what}."),
        "router" => format!("Router: {what}."),
        "store" => format!("Durable store writes: {what}."),
        _ => what,
    }
}

/// Counter families by name, filled as the report is walked.
struct Families(BTreeMap<String, (String, Family<Labels, Counter>)>);

impl Families {
    fn add(&mut self, group: &str, name: &str, l: Labels, value: u64) {
        let key = format!("{group}_{name}");
        let (_, fam) = self
            .0
            .entry(key)
            .or_insert_with(|| (help(group, name), Family::default()));
        fam.get_or_create(&l).inc_by(value);
    }
}

/// The report in the Prometheus (OpenMetrics) text format. Every metric
/// is prefixed `ddm_`; counters end in `_total`.
pub fn render_prometheus(report: &CountersReport) -> String {
    let mut constant: Vec<(Cow<'static, str>, Cow<'static, str>)> = Vec::new();
    if let Some(rack) = report.rack_id {
        constant.push(("rack_id".into(), rack.to_string().into()));
    }
    if let Some(sled) = report.sled_id {
        constant.push(("sled_id".into(), sled.to_string().into()));
    }
    let mut registry =
        Registry::with_prefix_and_labels("ddm", constant.into_iter());
    let mut fams = Families(BTreeMap::new());

    for i in &report.discovery {
        let l = labels(&[("interface", &i.interface)]);
        for (name, v) in &i.counters {
            fams.add("discovery", name, l.clone(), *v);
        }
        for (reason, v) in &i.drops {
            let l = labels(&[("interface", &i.interface), ("reason", reason)]);
            fams.add("discovery", "drops", l, *v);
        }
    }
    for p in &report.exchange {
        let peer = p.peer.to_string();
        let l = labels(&[("interface", &p.interface), ("peer", &peer)]);
        for (name, v) in &p.counters {
            fams.add("exchange", name, l.clone(), *v);
        }
    }
    for p in &report.import_refusals {
        let peer = p.peer.to_string();
        let ifindex = p.ifindex.to_string();
        for (reason, v) in &p.reasons {
            let l = labels(&[
                ("peer", &peer),
                ("ifindex", &ifindex),
                ("reason", reason),
            ]);
            fams.add("exchange", "import_refusals", l, *v);
        }
    }
    if let Some(router) = &report.router {
        for (name, v) in router {
            if name == "routes" {
                let g = Gauge::<i64>::default();
                g.set(i64::try_from(*v).unwrap_or(i64::MAX));
                registry.register(
                    "router_routes",
                    "Router: destinations with a route now.",
                    g,
                );
            } else {
                fams.add("router", name, Labels::new(), *v);
            }
        }
    }
    for (name, v) in &report.store {
        fams.add("store", name, Labels::new(), *v);
    }
    for (name, (help, fam)) in fams.0 {
        registry.register(name, help, fam);
    }
    let unanswered = Gauge::<i64>::default();
    unanswered.set(report.unanswered.len() as i64);
    registry.register(
        "scrape_unanswered_actors",
        "Actors that did not answer this scrape in time.",
        unanswered,
    );

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Bind the metrics listener (a failure names the address).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics listener on {addr}: {e}"))
}

/// Serve `/metrics` and `/counters` on `listener` until the task is
/// aborted, gathering from `supervisor` at each request.
pub fn serve(
    listener: TcpListener,
    supervisor: SupervisorRef,
    log: Logger,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, from) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(log, "metrics: accept failed"; "error" => %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let sup = supervisor.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let sup = sup.clone();
                    async move { Ok::<_, Infallible>(answer(req, &sup).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    debug!(log, "metrics connection ended";
                        "from" => %from, "error" => %e);
                }
                drop(permit);
            });
        }
    })
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

/// Answer one request. Request bodies are never read.
async fn answer<B>(
    req: Request<B>,
    supervisor: &SupervisorRef,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    if path != "/metrics" && path != "/counters" {
        return response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics or /counters\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n");
    }
    let report = match gather(supervisor, GATHER_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            return response(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("{e}\n"),
            )
        }
    };
    if path == "/metrics" {
        response(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            render_prometheus(&report),
        )
    } else {
        match serde_json::to_vec(&report) {
            Ok(body) => response(StatusCode::OK, "application/json", body),
            Err(e) => response(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("cannot encode counters: {e}\n"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn report() -> CountersReport {
        let mut disc = DiscoveryCounters {
            solicitations_sent: 3,
            advertisements_received: 2,
            ..Default::default()
        };
        disc.drops.truncated = 5;
        let (counters, drops) = discovery_named(&disc);
        CountersReport {
            rack_id: Some(Uuid::from_u128(1)),
            sled_id: Some(Uuid::from_u128(2)),
            unanswered: vec![],
            discovery: vec![InterfaceCounters {
                interface: "eth0".to_string(),
                counters,
                drops,
            }],
            exchange: vec![PeerCounters {
                interface: "eth0".to_string(),
                ifindex: 7,
                peer: "fe80::2".parse().unwrap(),
                counters: BTreeMap::from([("pushes_sent".to_string(), 4)]),
            }],
            import_refusals: vec![PeerRefusals {
                ifindex: 7,
                peer: "fe80::2".parse().unwrap(),
                reasons: BTreeMap::from([("default_route".to_string(), 9)]),
            }],
            router: Some(BTreeMap::from([
                ("routes".to_string(), 2),
                ("dataplane_batches".to_string(), 6),
            ])),
            store: BTreeMap::from([
                ("commits".to_string(), 8),
                ("failures".to_string(), 1),
            ]),
        }
    }

    /// The value of the one sample line that starts with `name{` and holds
    /// every one of `labels`.
    fn sample(text: &str, name: &str, labels: &[&str]) -> Option<u64> {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .collect();
        assert!(lines.len() <= 1, "{name} {labels:?}: {lines:?}");
        lines.first()?.rsplit(' ').next()?.parse().ok()
    }

    #[test]
    fn prometheus_text_has_names_labels_and_values() {
        let text = render_prometheus(&report());
        let ids = [
            "rack_id=\"00000000-0000-0000-0000-000000000001\"",
            "sled_id=\"00000000-0000-0000-0000-000000000002\"",
        ];
        let with = |extra: &[&'static str]| {
            let mut v = ids.to_vec();
            v.extend_from_slice(extra);
            v
        };
        assert_eq!(
            sample(
                &text,
                "ddm_discovery_solicitations_sent_total",
                &with(&["interface=\"eth0\""])
            ),
            Some(3),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "ddm_discovery_drops_total",
                &with(&["interface=\"eth0\"", "reason=\"truncated\""])
            ),
            Some(5)
        );
        assert_eq!(
            sample(
                &text,
                "ddm_exchange_pushes_sent_total",
                &with(&["peer=\"fe80::2\""])
            ),
            Some(4)
        );
        assert_eq!(
            sample(
                &text,
                "ddm_exchange_import_refusals_total",
                &with(&["reason=\"default_route\"", "ifindex=\"7\""])
            ),
            Some(9)
        );
        assert_eq!(sample(&text, "ddm_router_routes", &ids), Some(2));
        assert_eq!(
            sample(&text, "ddm_router_dataplane_batches_total", &ids),
            Some(6)
        );
        assert_eq!(sample(&text, "ddm_store_commits_total", &ids), Some(8));
        assert_eq!(sample(&text, "ddm_store_failures_total", &ids), Some(1));
        assert!(text.contains("# TYPE ddm_router_routes gauge"), "{text}");
        assert!(text.contains("# TYPE ddm_store_commits counter"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn without_stats_identity_there_are_no_id_labels() {
        let mut r = report();
        r.rack_id = None;
        r.sled_id = None;
        let text = render_prometheus(&r);
        assert!(!text.contains("rack_id"), "{text}");
        assert!(!text.contains("sled_id"), "{text}");
        assert_eq!(sample(&text, "ddm_store_commits_total", &[]), None);
        assert!(text.contains("ddm_store_commits_total 8"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut r = report();
        r.discovery[0].interface = "we\"ird\\n".to_string();
        let text = render_prometheus(&r);
        assert!(text.contains(r#"interface="we\"ird\\n""#), "{text}");
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let json = serde_json::to_string(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["discovery"][0]["drops"]["truncated"], 5);
        assert_eq!(v["exchange"][0]["peer"], "fe80::2");
        assert_eq!(v["router"]["routes"], 2);
        assert_eq!(v["store"]["commits"], 8);
        let back: CountersReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    /// A supervisor over in-memory discovery and dataplane, listening on
    /// a free loopback port.
    async fn supervisor(dir: &std::path::Path) -> SupervisorRef {
        use crate::config::{
            AdminConfig, DaemonConfig, InterfaceSpec, RouterConfig,
        };
        use crate::dataplane::{memory::MemoryDataplane, Dataplane};
        use crate::discovery::{MemoryPort, PacketIo};
        use crate::supervisor::{
            DataplaneFactory, PacketIoFactory, Supervisor, SupervisorArgs,
        };
        let dp = MemoryDataplane::new();
        let dataplane: DataplaneFactory = Arc::new(move |_: &Logger| {
            Ok(Box::new(dp.clone()) as Box<dyn Dataplane>)
        });
        let (a, _b) = MemoryPort::pair(
            (1, "fe80::1".parse().unwrap()),
            (2, "fe80::2".parse().unwrap()),
        );
        let packet_io: PacketIoFactory =
            Arc::new(move |_: &InterfaceSpec| PacketIo::Memory(a.clone()));
        let args = SupervisorArgs {
            config: DaemonConfig {
                admin_only: false,
                admin: AdminConfig {
                    listen: SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
                },
                data_dir: dir.to_path_buf(),
                router: RouterConfig {
                    hostname: "metrics-test".to_string(),
                    interfaces: vec!["ddmtest0".parse().unwrap()],
                    ..Default::default()
                },
            },
            store: crate::store::Store::open(dir).unwrap(),
            dataplane: Some(dataplane),
            packet_io,
            watch_links: false,
            exchange_net: Default::default(),
            log: Logger::root(slog::Discard, slog::o!()),
        };
        ractor::Actor::spawn(None, Supervisor, args).await.unwrap().0
    }

    #[tokio::test]
    async fn gathering_asks_every_child() {
        use crate::store::StoreChange;
        use ddm_admin_api::latest::EnableStatsRequest;
        let dir = tempfile::tempdir().unwrap();
        let sup = supervisor(dir.path()).await;
        let before = gather(&sup, GATHER_TIMEOUT).await.unwrap();
        assert!(before.unanswered.is_empty(), "{before:?}");
        assert_eq!(before.discovery.len(), 1);
        assert_eq!(before.discovery[0].interface, "ddmtest0");
        assert_eq!(before.store["commits"], 0);
        assert_eq!(before.rack_id, None);
        assert_eq!(before.router.as_ref().unwrap()["routes"], 0);

        let admin = ractor::call!(sup, SupervisorMsg::GetAdmin).unwrap();
        let change = StoreChange {
            add_prefixes: ["fd00:7::/64".parse().unwrap()].into(),
            ..Default::default()
        };
        ractor::call!(admin, AdminMsg::Change, change).unwrap().unwrap();
        let id = EnableStatsRequest {
            rack_id: Uuid::from_u128(3),
            sled_id: Uuid::from_u128(4),
        };
        admin.cast(AdminMsg::EnableStats(id)).unwrap();
        let after = gather(&sup, GATHER_TIMEOUT).await.unwrap();
        assert_eq!(after.store["commits"], 1, "{after:?}");
        assert_eq!(after.rack_id, Some(id.rack_id));
        assert_eq!(after.sled_id, Some(id.sled_id));

        // The store counters outlive the admin actor.
        admin.kill();
        let mut again = None;
        for _ in 0..1000 {
            // No answer while no admin actor runs.
            let a = ractor::call!(sup, SupervisorMsg::GetAdmin).ok();
            if a.as_ref().is_some_and(|a| a.get_id() != admin.get_id()) {
                again = a;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(again.is_some(), "the admin actor was not restarted");
        let later = gather(&sup, GATHER_TIMEOUT).await.unwrap();
        assert_eq!(later.store["commits"], 1, "{later:?}");
        sup.stop_and_wait(None, None).await.unwrap();
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_counters_only() {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::client::legacy::Client;
        let dir = tempfile::tempdir().unwrap();
        let sup = supervisor(dir.path()).await;
        let listener =
            bind(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = serve(
            listener,
            sup.clone(),
            Logger::root(slog::Discard, slog::o!()),
        );
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        let get = |method: Method, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .body(Empty::new())
                .unwrap();
            let client = client.clone();
            async move {
                let r = client.request(req).await.unwrap();
                let status = r.status();
                let ctype = r.headers()[http::header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .to_string();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                (status, ctype, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (status, ctype, body) = get(Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, METRICS_CONTENT_TYPE);
        assert!(body.contains("ddm_store_commits_total 0"), "{body}");
        let (status, ctype, body) = get(Method::GET, "/counters").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        let r: CountersReport = serde_json::from_str(&body).unwrap();
        assert_eq!(r.discovery.len(), 1);
        let (status, _, _) = get(Method::GET, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = get(Method::POST, "/metrics").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

        // Without a supervisor there is nothing to gather: 503, not a hang.
        sup.stop_and_wait(None, None).await.unwrap();
        let (status, _, body) = get(Method::GET, "/counters").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        task.abort();
    }

    #[test]
    fn store_counters_count_commits_and_failures() {
        let s = StoreCounters::default();
        s.record(true);
        s.record(true);
        s.record(false);
        assert_eq!(s.named()["commits"], 2);
        assert_eq!(s.named()["failures"], 1);
    }
}
