//! The mock dpd against the published OpenAPI document, and the switch
//! dataplane (`ddm_actors::dataplane::dpd`) against the mock. No root
//! needed: the mock serves on `[::1]`.
//!
//! The reference document is read from `../shared/reference/` next to the
//! workspace; where it is missing the schema checks are skipped loudly, and
//! fail when `CI=true`.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ddm_actors::dataplane::dpd::{DpdConfig, DpdDataplane, API_VERSION};
use ddm_actors::dataplane::{
    Dataplane, DataplaneError, Nexthop, Nexthops, RouteUpdate,
};
use ddm_test_harness::mock_dpd::{MockDpd, Recorded, Target};
use serde_json::{json, Value};

// ---- the reference document and a small validator for its schemas ----

/// The reference OpenAPI document, or `None` (with a loud line) when it is
/// not there outside CI.
fn reference_doc() -> Option<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/dpd-routes.openapi.json");
    match std::fs::read(&path) {
        Ok(b) => Some(serde_json::from_slice(&b).expect("reference parses")),
        Err(e) => {
            let msg = format!(
                "dpd reference document {} not readable: {e}",
                path.display()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}");
            }
            eprintln!("SKIP schema checks: {msg}");
            None
        }
    }
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `null` added to `type`.
fn nullable_to_type(mut v: Value) -> Value {
    match &mut v {
        Value::Object(o) => {
            if o.get("nullable") == Some(&json!(true)) {
                if let Some(t) = o.get("type").cloned() {
                    o.insert("type".into(), json!([t, "null"]));
                }
                o.remove("nullable");
            }
            for val in o.values_mut() {
                *val = nullable_to_type(val.take());
            }
        }
        Value::Array(a) => {
            for val in a.iter_mut() {
                *val = nullable_to_type(val.take());
            }
        }
        _ => {}
    }
    v
}

/// A JSON Schema validator of `schema` (which may `$ref` the document's
/// `#/components/schemas/…`).
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = nullable_to_type(schema.clone());
    root["components"] = nullable_to_type(doc["components"].clone());
    // Formats (`ipv6`) are checked too; unknown ones (`uint8`) are not.
    jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema {schema}: {e}"))
}

/// Checks `v` against `schema`; the error lists every violation.
fn validate(
    doc: &Value,
    schema: &Value,
    v: &Value,
    at: &str,
) -> Result<(), String> {
    let errors: Vec<String> = validator(doc, schema)
        .iter_errors(v)
        .map(|e| format!("{at}: {e}"))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Whether `path` (no query) matches an OpenAPI path template: `{cidr}`
/// must be one segment (so its `/` is `%2F`).
fn path_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if *t == "{cidr}" {
                p.contains("%2F")
            } else {
                t.starts_with('{') || t == p
            }
        })
}

/// Checks every recorded request of a dpd client against the document:
/// the version header, a documented path and method, the request body's
/// schema, and the schema of every successful or error answer.
fn check_against_reference(requests: &[Recorded]) {
    let Some(doc) = reference_doc() else { return };
    assert!(!requests.is_empty());
    for r in requests {
        assert_eq!(r.api_version.as_deref(), Some(API_VERSION), "{r:?}");
        let path = r.path.split('?').next().unwrap();
        let method = r.method.as_str().to_ascii_lowercase();
        let (template, op) = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(t, ops)| {
                path_matches(t, path) && ops.get(&method).is_some()
            })
            .unwrap_or_else(|| panic!("undocumented request {r:?}"));
        let op = &op[&method];
        if let Some(body) = op.get("requestBody") {
            let s = &body["content"]["application/json"]["schema"];
            let b = r.body.as_ref().expect("a documented body was sent");
            validate(&doc, s, b, "body")
                .unwrap_or_else(|e| panic!("{} {template}: {e}", r.method));
        }
        if let Some(resp) = &r.response {
            let s = if r.status < 300 {
                &op["responses"][r.status.to_string()]["content"]
                    ["application/json"]["schema"]
            } else {
                &doc["components"]["responses"]["Error"]["content"]
                    ["application/json"]["schema"]
            };
            validate(&doc, s, resp, "response")
                .unwrap_or_else(|e| panic!("{} {template}: {e}", r.method));
        }
    }
}

// ---- the mock itself ----

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn update(cidr: &str, port: &str, ip: &str, replace: bool) -> Value {
    json!({"cidr": cidr, "replace": replace,
           "target": {"tag": "ddmd", "port_id": port, "link_id": 0,
                      "tgt_ip": ip}})
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    version: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method, url);
    if let Some(v) = version {
        r = r.header("api-version", v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("mock answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn mock_requires_a_parsable_api_version_not_newer_than_12() {
    let mock = MockDpd::start().unwrap();
    let url = format!("http://{}/route/ipv6", mock.addr());
    let c = http();
    let body = update("fd00:1::/64", "rear0", "fe80::1", false);
    for bad in
        [None, Some("twelve"), Some("12"), Some("12.0.1"), Some("13.0.0")]
    {
        let (status, err) = send(
            &c,
            reqwest::Method::PUT,
            url.clone(),
            bad,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "api-version {bad:?}");
        assert!(err["message"].is_string() && err["request_id"].is_string());
    }
    assert!(mock.table().is_empty(), "refused requests change nothing");
    for good in ["12.0.0", "1.0.0"] {
        let (status, _) = send(
            &c,
            reqwest::Method::PUT,
            url.clone(),
            Some(good),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 204, "api-version {good}");
    }
    // The refusals' error bodies have the documented shape too.
    if let Some(doc) = reference_doc() {
        for r in mock.requests().iter().filter(|r| r.status == 400) {
            let s = &doc["components"]["responses"]["Error"]["content"]
                ["application/json"]["schema"];
            validate(&doc, s, r.response.as_ref().unwrap(), "error").unwrap();
        }
    }
}

#[tokio::test]
async fn mock_put_post_delete_semantics() {
    use reqwest::Method as M;
    let mock = MockDpd::start().unwrap();
    let base = format!("http://{}/route/ipv6", mock.addr());
    let c = http();
    let v = Some(API_VERSION);
    let put = |b| send(&c, M::PUT, base.clone(), v, Some(b));
    let cidr = "fd00:1::/64";
    assert_eq!(put(update(cidr, "rear0", "fe80::1", false)).await.0, 204);
    // The identical target again: a no-op.
    assert_eq!(put(update(cidr, "rear0", "fe80::1", false)).await.0, 204);
    assert_eq!(mock.routes()[cidr], ["rear0/0 fe80::1 ddmd"]);
    // A different one without replace: 409, table unchanged.
    assert_eq!(put(update(cidr, "rear1", "fe80::2", false)).await.0, 409);
    assert_eq!(mock.routes()[cidr], ["rear0/0 fe80::1 ddmd"]);
    // With replace: replaced.
    assert_eq!(put(update(cidr, "rear1", "fe80::2", true)).await.0, 204);
    assert_eq!(mock.routes()[cidr], ["rear1/0 fe80::2 ddmd"]);
    // POST adds targets, up to 32.
    for i in 0..31u16 {
        let ip = format!("fe80::1:{i:x}");
        let (s, _) = send(
            &c,
            M::POST,
            base.clone(),
            v,
            Some(update(cidr, "rear2", &ip, false)),
        )
        .await;
        assert_eq!(s, 204);
    }
    assert_eq!(mock.routes()[cidr].len(), 32);
    let (s, _) = send(
        &c,
        M::POST,
        base.clone(),
        v,
        Some(update(cidr, "rear2", "fe80::99", false)),
    )
    .await;
    assert_eq!(s, 400, "a 33rd target is refused");
    // Malformed bodies and ports: 400; a link that does not exist: 404.
    let mut no_tag = update(cidr, "rear0", "fe80::1", false);
    no_tag["target"].as_object_mut().unwrap().remove("tag");
    assert_eq!(put(no_tag).await.0, 400);
    assert_eq!(put(update(cidr, "rear32", "fe80::1", false)).await.0, 400);
    assert_eq!(
        put(update("fd00::/129", "rear0", "fe80::1", false)).await.0,
        400
    );
    let mut link1 = update(cidr, "rear0", "fe80::1", false);
    link1["target"]["link_id"] = json!(1);
    assert_eq!(put(link1).await.0, 404);
    // Deleting one target; a missing target or route is 404.
    let del = |p: &str| send(&c, M::DELETE, format!("{base}/{p}"), v, None);
    assert_eq!(del("fd00:1::%2F64/rear1/0/fe80::2").await.0, 204);
    assert_eq!(del("fd00:1::%2F64/rear1/0/fe80::2").await.0, 404);
    assert_eq!(del("fd00:9::%2F64/rear1/0/fe80::2").await.0, 404);
    assert_eq!(mock.routes()[cidr].len(), 31);
    // A raw `/` in the path is not the route endpoint.
    assert_eq!(del("fd00:1::/64").await.0, 404);
    assert_eq!(del("fd00:1::%2F64").await.0, 204);
    assert!(mock.table().is_empty());
    assert_eq!(del("fd00:1::%2F64").await.0, 404);
    // The last target going removes the route.
    assert_eq!(put(update(cidr, "rear0", "fe80::1", false)).await.0, 204);
    assert_eq!(del("fd00:1::%2F64/rear0/0/fe80::1").await.0, 204);
    assert!(mock.table().is_empty());
    // An oversized body is refused.
    let mut huge = update(cidr, "rear0", "fe80::1", false);
    huge["target"]["tag"] = json!("x".repeat(11_000));
    assert_eq!(put(huge).await.0, 400);
}

#[tokio::test]
async fn mock_lists_in_pages() {
    let mock = MockDpd::start().unwrap();
    for i in 0..5u16 {
        mock.insert(
            Ipv6Addr::new(0xfd00, i, 0, 0, 0, 0, 0, 0),
            64,
            target("rear0", "fe80::1", "ddmd"),
        );
    }
    let c = http();
    let mut token: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut url = format!("http://{}/route/ipv6?limit=2", mock.addr());
        if let Some(t) = &token {
            url.push_str(&format!("&page_token={}", t.replace('/', "%2F")));
        }
        let (s, page) =
            send(&c, reqwest::Method::GET, url, Some(API_VERSION), None).await;
        assert_eq!(s, 200);
        for it in page["items"].as_array().unwrap() {
            seen.push(it["cidr"].as_str().unwrap().to_string());
        }
        match page["next_page"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] != w[1]));
    check_against_reference(&mock.requests());
}

// ---- the switch dataplane against the mock ----

fn target(port: &str, ip: &str, tag: &str) -> Target {
    Target {
        port_id: port.into(),
        link_id: 0,
        tgt_ip: ip.parse().unwrap(),
        tag: tag.into(),
        vlan_id: None,
    }
}

fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// ifindex 1 is `tfportrear0_0`, 2 `tfportrear1_0`, 3 `eth0`.
fn dataplane(mock: &MockDpd) -> DpdDataplane {
    let ifs = BTreeMap::from([
        (1, "tfportrear0_0".to_string()),
        (2, "tfportrear1_0".to_string()),
        (3, "eth0".to_string()),
    ]);
    let mut config =
        DpdConfig::new("::1", mock.port(), DpdConfig::fixed_interfaces(ifs));
    config.probe_interval = Duration::from_millis(20);
    config.request_timeout = Duration::from_secs(2);
    DpdDataplane::new(config, log())
}

fn nh(addr: &str, ifindex: u32) -> Nexthop {
    Nexthop { addr: addr.parse().unwrap(), ifindex }
}

fn upd(dest: &str, nhs: &[Nexthop]) -> RouteUpdate {
    RouteUpdate {
        destination: dest.parse().unwrap(),
        nexthops: nhs.iter().copied().collect::<Nexthops>(),
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A route of ours (tagged `ddmd`) to `prefix`/64 an earlier run left.
fn left_by_an_earlier_run(mock: &MockDpd, prefix: &str, port: &str, via: &str) {
    mock.insert(prefix.parse().unwrap(), 64, target(port, via, "ddmd"));
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_programs_ecmp_sets_target_by_target() {
    let mock = MockDpd::start().unwrap();
    // Left by an earlier run (ours), and someone else's.
    left_by_an_earlier_run(&mock, "fd00:99::", "rear5", "fe80::5");
    mock.insert(
        "fd00:98::".parse().unwrap(),
        64,
        target("qsfp0", "fe80::6", "operator"),
    );
    let mut dp = dataplane(&mock);
    assert_eq!(dp.remove_stale().await.unwrap(), 1);
    assert_eq!(
        mock.routes(),
        BTreeMap::from([(
            "fd00:98::/64".into(),
            strs(&["qsfp0/0 fe80::6 operator"])
        )])
    );

    // A two-way ECMP set, and a nexthop on an interface that is no port.
    let (a, b) = (nh("fe80::a", 1), nh("fe80::b", 2));
    dp.apply(vec![
        upd("fd00:1::/64", &[a, b]),
        upd("fd00:2::/64", &[nh("fe80::c", 3)]),
        upd("fd00:3::/64", &[b, nh("fe80::c", 3)]),
    ])
    .await
    .unwrap();
    let routes = mock.routes();
    assert_eq!(
        routes["fd00:1::/64"],
        strs(&["rear0/0 fe80::a ddmd", "rear1/0 fe80::b ddmd"])
    );
    assert!(!routes.contains_key("fd00:2::/64"));
    assert_eq!(routes["fd00:3::/64"], strs(&["rear1/0 fe80::b ddmd"]));
    assert_eq!(dp.stats().skipped.load(Ordering::Relaxed), 2);

    // Withdrawing one nexthop deletes exactly its target.
    let before = mock.requests().len();
    dp.apply(vec![upd("fd00:1::/64", &[b])]).await.unwrap();
    assert_eq!(mock.routes()["fd00:1::/64"], strs(&["rear1/0 fe80::b ddmd"]));
    // (The watcher's probes, GETs, may interleave.)
    let new: Vec<_> = mock.requests()[before..]
        .iter()
        .filter(|r| r.method != http::Method::GET)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(new, ["DELETE /route/ipv6/fd00:1::%2F64/rear0/0/fe80::a"]);

    // The last one going removes the destination.
    dp.apply(vec![upd("fd00:1::/64", &[])]).await.unwrap();
    assert!(!mock.routes().contains_key("fd00:1::/64"));

    // Shutdown removes ours and only ours.
    assert_eq!(dp.remove_all().await.unwrap(), 1);
    assert_eq!(
        mock.routes(),
        BTreeMap::from([(
            "fd00:98::/64".into(),
            strs(&["qsfp0/0 fe80::6 operator"])
        )])
    );
    check_against_reference(&mock.requests());
}

/// A route holding as many targets as dpd allows still takes a changed
/// nexthop: the old target goes first, then the new one is added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_route_takes_a_changed_nexthop() {
    let mock = MockDpd::start().unwrap();
    let mut dp = dataplane(&mock);
    dp.remove_stale().await.unwrap();
    // One neighbour more than a route holds, on one port: fe80::1 on.
    let max = ddm_test_harness::mock_dpd::MAX_TARGETS;
    let target = |i: usize| format!("rear0/0 fe80::{i:x} ddmd");
    let hops: Vec<Nexthop> =
        (1..=max + 1).map(|i| nh(&format!("fe80::{i:x}"), 1)).collect();
    dp.apply(vec![upd("fd00:1::/64", &hops[..max])]).await.unwrap();
    assert_eq!(mock.routes()["fd00:1::/64"].len(), max);
    // The first nexthop gives way to the last.
    dp.apply(vec![upd("fd00:1::/64", &hops[1..])]).await.unwrap();
    let now = &mock.routes()["fd00:1::/64"];
    assert_eq!(now.len(), max);
    assert!(now.contains(&target(max + 1)), "{now:?}");
    assert!(!now.contains(&target(1)), "{now:?}");
    check_against_reference(&mock.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_reconciles_when_dpd_comes_back() {
    let mock = MockDpd::start().unwrap();
    let mut dp = dataplane(&mock);
    dp.remove_stale().await.unwrap();
    let (a, b) = (nh("fe80::a", 1), nh("fe80::b", 2));
    dp.apply(vec![upd("fd00:1::/64", &[a]), upd("fd00:2::/64", &[a, b])])
        .await
        .unwrap();
    let want = mock.routes();
    assert_eq!(want.len(), 2);

    // dpd goes away; changes meanwhile fail as "unavailable"…
    mock.set_down(true);
    let r =
        dp.apply(vec![upd("fd00:1::/64", &[]), upd("fd00:3::/64", &[b])]).await;
    assert!(matches!(r, Err(DataplaneError::Unavailable(_))), "{r:?}");
    // …and it comes back as a fresh dpd (empty), with a stale route of ours
    // from before that the router no longer wants.
    mock.clear();
    left_by_an_earlier_run(&mock, "fd00:1::", "rear0", "fe80::a");
    mock.set_down(false);
    let expect = BTreeMap::from([
        (
            "fd00:2::/64".to_string(),
            strs(&["rear0/0 fe80::a ddmd", "rear1/0 fe80::b ddmd"]),
        ),
        ("fd00:3::/64".to_string(), strs(&["rear1/0 fe80::b ddmd"])),
    ]);
    // The table converges while the reconciliation's last answers are
    // still on their way back: wait for its count as well.
    let stats = dp.stats();
    eventually("the watcher reconciles", || {
        mock.routes() == expect
            && stats.reconciliations.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(stats.lost.load(Ordering::Relaxed) >= 1);
    assert_eq!(mock.routes(), expect);
    check_against_reference(&mock.requests());
}

/// A route dpd refuses (a 33rd target, past its limit: 32 of another
/// owner's share the prefix) does not keep the dataplane out of sync: the
/// reconciliation after dpd comes back completes (and is counted) with the
/// refusal reported, and the watcher goes back to probing rather than
/// listing the table at every probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_route_does_not_keep_reconciling() {
    let mock = MockDpd::start().unwrap();
    for i in 0..32u16 {
        mock.insert(
            "fd00:5::".parse().unwrap(),
            64,
            target("qsfp0", &format!("fe80::{:x}", 0x100 + i), "operator"),
        );
    }
    let mut dp = dataplane(&mock);
    dp.remove_stale().await.unwrap();
    let a = nh("fe80::a", 1);
    let r = dp
        .apply(vec![upd("fd00:5::/64", &[a]), upd("fd00:6::/64", &[a])])
        .await;
    assert!(matches!(r, Err(DataplaneError::Request(_))), "{r:?}");
    assert!(mock.routes().contains_key("fd00:6::/64"));
    // dpd goes away and comes back: the watcher reconciles, meets the
    // same refusal, and is in sync all the same.
    mock.set_down(true);
    let r = dp.apply(vec![upd("fd00:7::/64", &[a])]).await;
    assert!(matches!(r, Err(DataplaneError::Unavailable(_))), "{r:?}");
    let stats = dp.stats();
    let before = stats.reconciliations.load(Ordering::Relaxed);
    mock.set_down(false);
    eventually("the reconciliation completes", || {
        stats.reconciliations.load(Ordering::Relaxed) > before
    })
    .await;
    assert!(mock.routes().contains_key("fd00:7::/64"));
    // Back to probing: over the next ten probes (GETs), the refused
    // route is not tried again (a reconciliation would).
    let settled = mock.requests().len();
    eventually("ten more probes", || {
        mock.requests()[settled..]
            .iter()
            .filter(|r| r.method == http::Method::GET)
            .count()
            >= 10
    })
    .await;
    let posts = mock.requests()[settled..]
        .iter()
        .filter(|r| r.method != http::Method::GET)
        .count();
    assert_eq!(posts, 0, "the refused route is not tried at every probe");
    assert_eq!(stats.reconciliations.load(Ordering::Relaxed), before + 1);
}

/// A dpd that takes connections but never answers: the first request
/// that times out ends the batch (the rest wait for the reconciliation),
/// rather than every destination waiting out its own timeout, 32 at a
/// time, with the dataplane held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_dpd_stops_a_batch_at_its_first_timeout() {
    let mock = MockDpd::start().unwrap();
    let mut dp = dataplane(&mock);
    dp.remove_stale().await.unwrap();
    mock.set_silent(true);
    let a = nh("fe80::a", 1);
    let batch: Vec<RouteUpdate> =
        (0..200u16).map(|i| upd(&format!("fd00:{i:x}::/64"), &[a])).collect();
    let r = dp.apply(batch).await;
    assert!(matches!(r, Err(DataplaneError::Unavailable(_))), "{r:?}");
    let held = mock.unanswered();
    // The watcher's probe may add one.
    assert!(held <= 33, "{held} requests made to a dpd that never answers");
    mock.set_silent(false);
    // Once it answers, the reconciliation makes every route.
    let stats = dp.stats();
    eventually("the reconciliation makes every route", || {
        mock.routes().len() == 200
            && stats.reconciliations.load(Ordering::Relaxed) >= 2
    })
    .await;
}

/// The watcher does not reconcile before the router's worker, in its
/// dataplane turn, calls `remove_stale` (a failed router's worker may
/// still be removing our routes): the dataplane asks dpd nothing until
/// then, and then removes the routes a previous run left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_reconciled_before_the_start() {
    let mock = MockDpd::start().unwrap();
    left_by_an_earlier_run(&mock, "fd00:77::", "rear0", "fe80::1");
    let mut dp = dataplane(&mock);
    // Fifteen rounds of the watcher: an absence, given the rounds to be
    // wrong in.
    let stats = dp.stats();
    eventually("fifteen rounds of the watcher", || {
        stats.watch_rounds.load(Ordering::Relaxed) >= 15
    })
    .await;
    assert!(mock.requests().is_empty(), "{:?}", mock.requests().len());
    assert_eq!(mock.table().len(), 1);
    assert_eq!(dp.remove_stale().await.unwrap(), 1);
    assert!(mock.table().is_empty());
}

/// A failed router's removal gives up at the first unanswered deletion
/// (the next router's start reconciles dpd's table); a clean shutdown's
/// tries every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_after_a_failure_stops_at_the_first_timeout() {
    let mock = MockDpd::start().unwrap();
    let mut dp = dataplane(&mock);
    dp.remove_stale().await.unwrap();
    let a = nh("fe80::a", 1);
    let batch: Vec<RouteUpdate> =
        (0..200u16).map(|i| upd(&format!("fd00:{i:x}::/64"), &[a])).collect();
    dp.apply(batch).await.unwrap();
    assert_eq!(mock.routes().len(), 200);
    mock.set_silent_deletes(true);
    let r = dp.remove_all_after_failure().await;
    assert!(r.is_err(), "{r:?}");
    let held = mock.unanswered();
    assert!(held <= 33, "{held} deletions sent to a dpd that never answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_lists_every_page_of_a_large_table() {
    let mock = MockDpd::start().unwrap();
    for i in 0..2500u32 {
        mock.insert(
            Ipv6Addr::new(
                0xfd00,
                (i >> 8) as u16,
                (i & 0xff) as u16,
                0,
                0,
                0,
                0,
                0,
            ),
            64,
            target("rear0", "fe80::1", "ddmd"),
        );
    }
    let mut dp = dataplane(&mock);
    assert_eq!(dp.remove_stale().await.unwrap(), 2500);
    assert!(mock.table().is_empty());
    let pages = mock
        .requests()
        .iter()
        .filter(|r| r.method == http::Method::GET)
        .count();
    assert!(pages >= 3, "{pages} pages");
}

/// The validator used above really rejects what the document rejects (so
/// the checks of the recorded traffic can fail).
#[test]
fn validator_rejects_what_the_document_rejects() {
    let Some(doc) = reference_doc() else { return };
    let s = json!({ "$ref": "#/components/schemas/Ipv6RouteUpdate" });
    let good = update("fd00:1::/64", "rear3", "fe80::1", false);
    validate(&doc, &s, &good, "body").unwrap();
    // `vlan_id` is nullable.
    let mut vlan = good.clone();
    vlan["target"]["vlan_id"] = Value::Null;
    validate(&doc, &s, &vlan, "body").unwrap();
    vlan["target"]["vlan_id"] = json!("x");
    assert!(validate(&doc, &s, &vlan, "body").is_err());
    let mut no_tag = good.clone();
    no_tag["target"].as_object_mut().unwrap().remove("tag");
    for bad in [
        no_tag,
        update("fd00:1::/64", "rear32", "fe80::1", false),
        update("fd00:1::", "rear3", "fe80::1", false),
        update("fd00:1::/64", "rear3", "10.0.0.1", false),
        json!({"cidr": "fd00:1::/64", "target": good["target"]}),
    ] {
        assert!(validate(&doc, &s, &bad, "body").is_err(), "{bad}");
    }
}
