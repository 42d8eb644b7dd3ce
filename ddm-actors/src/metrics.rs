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
use std::net::SocketAddr;
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

use crate::discovery::DiscoveryMsg;
use crate::exchange::actor::ExchangeMsg;
use crate::router::RouterMsg;
use crate::supervisor::{SupervisorMsg, SupervisorRef};

/// How long one request waits for each actor's answer.
pub const GATHER_TIMEOUT: Duration = Duration::from_millis(500);

/// Most connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a metrics connection may last, head to the last byte of the
/// answer: a scrape's gathering takes at most a few of the actors' 500 ms
/// deadlines, and its answer a few hundred KB.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The content type of `GET /metrics`.
pub const METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub use crate::store::StoreCounters;
pub use crate::supervisor::CounterSources;

/// Why an actor asked for its counters gave none.
enum NoAnswer {
    /// It did not answer within the deadline: listed as unanswered.
    Late,
    /// It stopped before it could. An exchange actor whose peer just
    /// expired has nothing left to report and is not listed; any other
    /// actor is listed as unanswered (its counters are missing).
    Gone,
}

/// Ask `actor` with a deadline.
async fn ask<M, T>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
) -> Result<T, NoAnswer>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(timeout)).await {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(NoAnswer::Late),
        Ok(CallResult::SenderError) | Err(_) => Err(NoAnswer::Gone),
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
        .map_err(|_| "the supervisor did not answer in time")?;
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
            Some(r) => Some(futures::join!(
                ask(r, RouterMsg::GetCounters, timeout),
                ask(r, RouterMsg::GetPolicyCounters, timeout),
            )),
            None => None,
        }
    };
    let (discovery, exchange, router) =
        futures::join!(discovery, exchange, router);

    for (name, c) in discovery {
        match c {
            Ok(c) => {
                let (counters, drops) = (c.named(), c.drops.named());
                report.discovery.push(InterfaceCounters {
                    interface: name.clone(),
                    counters,
                    drops,
                });
            }
            Err(_) => report.unanswered.push(format!("discovery:{name}")),
        }
    }
    for (name, ifindex, peer, c) in exchange {
        match c {
            Ok(c) => report.exchange.push(PeerCounters {
                interface: name.clone(),
                ifindex,
                peer,
                counters: c.named(),
            }),
            Err(NoAnswer::Late) => {
                report.unanswered.push(format!("exchange:{peer}%{name}"))
            }
            Err(NoAnswer::Gone) => {}
        }
    }
    if let Some((counters, policy)) = router {
        match counters {
            Ok(c) => report.router = Some(c.named()),
            Err(_) => report.unanswered.push("router".to_string()),
        }
        match policy {
            Ok(p) => {
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
            Err(_) => report.unanswered.push("router:policy".to_string()),
        }
    }
    // Read, not asked: present whatever the admin actor is doing.
    if let Some(id) = src.identity {
        report.rack_id = Some(id.rack_id);
        report.sled_id = Some(id.sled_id);
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
        // prometheus-client ends each `# HELP` with a period itself.
        "discovery" => format!("Discovery, per interface: {what}"),
        "exchange" => format!("Prefix exchange, per peer: {what}"),
        "router" => format!("Router: {what}"),
        "store" => format!("Durable store writes: {what}"),
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
                    "Router: destinations with a route now",
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
        "Actors that did not answer this scrape in time",
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
                // A client that never reads its answer would otherwise
                // hold its slot for good (hyper has no write deadline).
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(log, "metrics connection ended";
                        "from" => %from, "error" => %e),
                    Err(_) => debug!(log, "metrics connection cut: too slow";
                        "from" => %from),
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
mod tests;
