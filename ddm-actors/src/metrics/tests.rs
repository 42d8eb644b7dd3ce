//! Tests of [`super`] (`metrics.rs`).

use super::*;
use crate::discovery::Counters as DiscoveryCounters;
use std::net::Ipv6Addr;
use uuid::Uuid;

fn report() -> CountersReport {
    let mut disc = DiscoveryCounters {
        solicitations_sent: 3,
        advertisements_received: 2,
        ..Default::default()
    };
    disc.drops.truncated = 5;
    let (counters, drops) = (disc.named(), disc.drops.named());
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
    // One period ends each help text (prometheus-client adds it).
    let helps: Vec<&str> =
        text.lines().filter(|l| l.starts_with("# HELP")).collect();
    assert!(!helps.is_empty());
    let bad: Vec<&&str> = helps
        .iter()
        .filter(|l| !l.ends_with('.') || l.ends_with(".."))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
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
                listen: Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0)),
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
        routes_left: Default::default(),
        log: Logger::root(slog::Discard, slog::o!()),
    };
    ractor::Actor::spawn(None, Supervisor, args).await.unwrap().0
}

#[tokio::test]
async fn gathering_asks_every_child() {
    use crate::admin::AdminMsg;
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
    // Taken in (the admin actor answers in order).
    assert_eq!(ractor::call!(admin, AdminMsg::GetStats).unwrap(), Some(id));
    let after = gather(&sup, GATHER_TIMEOUT).await.unwrap();
    assert_eq!(after.store["commits"], 1, "{after:?}");
    assert_eq!(after.rack_id, Some(id.rack_id));
    assert_eq!(after.sled_id, Some(id.sled_id));

    // The store counters and the statistics identity outlive the admin
    // actor.
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
    assert_eq!(later.rack_id, Some(id.rack_id), "{later:?}");
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
    let task =
        serve(listener, sup.clone(), Logger::root(slog::Discard, slog::o!()));
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
