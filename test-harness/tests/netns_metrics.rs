//! The metrics listener (`ddmd --metrics-addr`) with real routers in
//! network namespaces.
//!
//! A pair s1 (server) — t1 (transit), each serving its counters on
//! `[::1]:9100` of its own namespace. The test provokes each kind of
//! counter and waits for it to move, reading `ddmadm counters --json`:
//! s1 originating prefixes (pushes and their bytes sent by s1 and received
//! by t1, routes and dataplane batches at t1, store commits at s1),
//! truncated discovery datagrams sent to t1 (its discovery drop counter)
//! and a push of the default route to t1 from s1's address (t1's import
//! refusal counter).
//! Then it scrapes t1's `/metrics` and checks metric names, labels (the
//! rack and sled ids of `enable-stats` among them) and values.
//!
//! Build the binaries first (`cargo build --workspace --bins`). Every test
//! skips loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpStream, UdpSocket};
use std::time::Duration;

use ddm_admin_api::counters::CountersReport;
use ddm_admin_api::latest::EnableStatsRequest;
use ddm_test_harness::fabric::Fabric;
use ddm_test_harness::netns::{require_netns, wait_until};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

/// Generous bound for anything that involves the routers' timers, under a
/// loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// The exchange protocol's TCP port.
const EXCHANGE_PORT: u16 = 56797;

/// The discovery protocol's UDP port.
const DDM_PORT: u16 = 3549;

/// Where each router serves its counters, inside its own namespace.
const METRICS_PORT: u16 = 9100;

/// `ddmadm counters --json` of `node`, parsed.
fn counters(f: &Fabric, node: &str) -> Result<CountersReport, String> {
    let port = METRICS_PORT.to_string();
    let v = f.adm(node, &["counters", "--metrics-port", &port])?;
    serde_json::from_value(v).map_err(|e| format!("{node}: counters: {e}"))
}

/// Waits until `node`'s counters satisfy `ok`; returns them.
fn wait_counters(
    f: &Fabric,
    node: &str,
    what: &str,
    ok: impl Fn(&CountersReport) -> bool,
) -> CountersReport {
    let mut last = Err("never read".to_string());
    let waited = wait_until(DEADLINE, &format!("{node}: {what}"), || {
        last = counters(f, node);
        matches!(&last, Ok(c) if ok(c))
    });
    if let Err(e) = waited {
        panic!(
            "{e}; last counters: {last:?}\n(router logs under {})",
            f.dir().display()
        );
    }
    last.unwrap()
}

/// The exchange counter `name` of `node`'s peer at `peer` (0 if absent).
fn exchange(c: &CountersReport, peer: Ipv6Addr, name: &str) -> u64 {
    c.exchange
        .iter()
        .filter(|p| p.peer == peer)
        .filter_map(|p| p.counters.get(name))
        .sum()
}

/// The router counter `name` (0 without a router).
fn router(c: &CountersReport, name: &str) -> u64 {
    c.router.as_ref().and_then(|r| r.get(name)).copied().unwrap_or(0)
}

/// The discovery drops for `reason` on `ifname`.
fn drops(c: &CountersReport, ifname: &str, reason: &str) -> u64 {
    c.discovery
        .iter()
        .filter(|i| i.interface == ifname)
        .filter_map(|i| i.drops.get(reason))
        .sum()
}

/// Import refusals of `reason` from `peer`.
fn refused(c: &CountersReport, peer: Ipv6Addr, reason: &str) -> u64 {
    c.import_refusals
        .iter()
        .filter(|p| p.peer == peer)
        .filter_map(|p| p.reasons.get(reason))
        .sum()
}

/// One HTTP/1.1 GET of `path` on `[::1]:METRICS_PORT` inside `node`:
/// the status line, the headers (lower-cased names) and the body.
fn http_get(
    f: &Fabric,
    node: &str,
    path: &str,
) -> Result<(String, BTreeMap<String, String>, String), String> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: [::1]:{METRICS_PORT}\r\n\
         Connection: close\r\n\r\n"
    );
    let raw = f.topo().in_node(node, move || {
        let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
        let mut s = TcpStream::connect((Ipv6Addr::LOCALHOST, METRICS_PORT))
            .map_err(|err| e("connect", err))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|err| e("timeout", err))?;
        s.write_all(request.as_bytes()).map_err(|err| e("write", err))?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).map_err(|err| e("read", err))?;
        Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
    })?;
    let (head, body) =
        raw.split_once("\r\n\r\n").ok_or(format!("no header end: {raw}"))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of an exposition (comments skipped). Label values here hold
/// no `,` `"` or `}`, so a plain split is enough.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) =
            line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let value: f64 =
            value.parse().map_err(|_| format!("bad value: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or(format!("unclosed labels: {line}"))?;
                let labels = inner
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once('=')
                            .ok_or(format!("bad label: {line}"))?;
                        Ok((k.to_string(), v.trim_matches('"').to_string()))
                    })
                    .collect::<Result<_, String>>()?;
                (name.to_string(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    Ok(out)
}

/// The value of the one sample named `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{name} {want:?}: {hits:?}");
    hits[0].value
}

#[test]
fn counters_move_and_metrics_are_served() {
    if !require_netns("counters_move_and_metrics_are_served") {
        return;
    }
    let metrics = format!("[::1]:{METRICS_PORT}");
    let extra = ["--metrics-addr", metrics.as_str()];
    let mut f = Fabric::new("metrics").unwrap();
    f.topo_mut().node("s1").unwrap();
    f.topo_mut().transit("t1").unwrap();
    let link = f.topo_mut().link("s1", "t1").unwrap();
    let s1_ll = f.topo().wait_link_local("s1", &link.a_if, DEADLINE).unwrap();
    let t1_ll = f.topo().wait_link_local("t1", &link.b_if, DEADLINE).unwrap();
    f.start_router("s1", "server", &[&link.a_if], &extra).unwrap();
    f.start_router("t1", "transit", &[&link.b_if], &extra).unwrap();
    for node in ["s1", "t1"] {
        f.wait_peer_state(node, 1, "Exchange", DEADLINE).unwrap();
    }
    let stats = EnableStatsRequest {
        rack_id: uuid::Uuid::from_u128(0xdd01),
        sled_id: uuid::Uuid::from_u128(0xdd02),
    };
    f.with_admin("t1", |c| async move { c.enable_stats(&stats).await })
        .unwrap()
        .unwrap();

    // Before: t1 sees its interface and its peer, s1 stored nothing yet.
    let t1_before = wait_counters(&f, "t1", "s1's exchange counted", |c| {
        c.exchange.iter().any(|p| p.peer == s1_ll)
    });
    assert_eq!(t1_before.rack_id, Some(stats.rack_id));
    assert_eq!(t1_before.sled_id, Some(stats.sled_id));
    assert_eq!(t1_before.discovery.len(), 1, "{t1_before:?}");
    assert_eq!(t1_before.discovery[0].interface, link.b_if);
    assert!(t1_before.unanswered.is_empty(), "{t1_before:?}");
    let s1_before = counters(&f, "s1").unwrap();
    assert_eq!(s1_before.store["commits"], 0, "{s1_before:?}");
    assert_eq!(s1_before.rack_id, None);

    // Originating prefixes: pushes sent by s1 and received by t1, routes
    // and dataplane batches at t1, a store commit at s1.
    f.adm("s1", &["advertise-prefixes", "fd00:1::/64", "fd00:2::/64"]).unwrap();
    let s1_after = wait_counters(&f, "s1", "pushes sent", |c| {
        exchange(c, t1_ll, "pushes_sent")
            > exchange(&s1_before, t1_ll, "pushes_sent")
    });
    assert!(
        exchange(&s1_after, t1_ll, "push_bytes_sent")
            > exchange(&s1_before, t1_ll, "push_bytes_sent"),
        "{s1_after:?}"
    );
    assert_eq!(s1_after.store["commits"], 1, "{s1_after:?}");
    assert_eq!(s1_after.store["failures"], 0, "{s1_after:?}");
    let t1_after = wait_counters(&f, "t1", "routes installed", |c| {
        router(c, "routes") >= 2
            && router(c, "route_updates_applied")
                >= router(&t1_before, "route_updates_applied") + 2
    });
    assert!(
        exchange(&t1_after, s1_ll, "pushes_received")
            > exchange(&t1_before, s1_ll, "pushes_received"),
        "{t1_before:?}\n{t1_after:?}"
    );
    assert!(
        exchange(&t1_after, s1_ll, "push_bytes_received")
            > exchange(&t1_before, s1_ll, "push_bytes_received"),
        "{t1_before:?}\n{t1_after:?}"
    );
    assert!(
        router(&t1_after, "dataplane_batches")
            > router(&t1_before, "dataplane_batches")
    );
    assert_eq!(router(&t1_after, "dataplane_batch_errors"), 0);

    // Truncated discovery datagrams, unicast from s1's namespace to t1.
    let ifindex = f.ifindex("s1", &link.a_if).unwrap();
    let sock = f
        .topo()
        .in_node("s1", || {
            UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))
        })
        .unwrap();
    let to = SocketAddrV6::new(t1_ll, DDM_PORT, 0, ifindex);
    for _ in 0..5 {
        sock.send_to(&[2, 1], to).unwrap();
    }
    let truncated_before = drops(&t1_after, &link.b_if, "truncated");
    wait_counters(&f, "t1", "truncated datagrams dropped", |c| {
        drops(c, &link.b_if, "truncated") >= truncated_before + 5
    });

    // A push of the default route from s1's address: refused by t1's
    // import policy and counted against s1.
    let body = json!({
        "underlay": {
            "announce": [{ "destination": "::/0", "path": ["s1"] }],
            "withdraw": [],
        },
    })
    .to_string();
    let status = f
        .topo()
        .in_node("s1", move || -> std::io::Result<String> {
            let sock =
                Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
            sock.bind(&SocketAddrV6::new(s1_ll, 0, 0, ifindex).into())?;
            let to = SocketAddrV6::new(t1_ll, EXCHANGE_PORT, 0, ifindex);
            sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
            let mut s: TcpStream = sock.into();
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                s,
                "PUT /v3/push HTTP/1.1\r\nHost: [{t1_ll}%{ifindex}]:\
                 {EXCHANGE_PORT}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok(answer.lines().next().unwrap_or_default().to_string())
        })
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 204"), "push answered {status:?}");
    let t1_refused = wait_counters(&f, "t1", "default route refused", |c| {
        refused(c, s1_ll, "default_route") >= 1
    });

    // The same counters through /metrics, labelled with rack and sled.
    let (status, headers, text) = http_get(&f, "t1", "/metrics").unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let ctype = headers.get("content-type").cloned().unwrap_or_default();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let samples = parse_exposition(&text).unwrap();
    let rack = stats.rack_id.to_string();
    let sled = stats.sled_id.to_string();
    for s in &samples {
        assert_eq!(s.labels.get("rack_id"), Some(&rack), "{s:?}");
        assert_eq!(s.labels.get("sled_id"), Some(&sled), "{s:?}");
    }
    let peer = s1_ll.to_string();
    let iface = link.b_if.as_str();
    assert!(value(&samples, "ddm_router_routes", &[]) >= 2.0);
    assert!(
        value(
            &samples,
            "ddm_exchange_pushes_received_total",
            &[("peer", &peer), ("interface", iface)]
        ) >= exchange(&t1_after, s1_ll, "pushes_received") as f64
    );
    assert!(
        value(
            &samples,
            "ddm_discovery_drops_total",
            &[("interface", iface), ("reason", "truncated")]
        ) >= (truncated_before + 5) as f64
    );
    assert_eq!(
        value(
            &samples,
            "ddm_exchange_import_refusals_total",
            &[("peer", &peer), ("reason", "default_route")]
        ),
        refused(&t1_refused, s1_ll, "default_route") as f64
    );
    assert!(
        value(
            &samples,
            "ddm_discovery_advertisements_received_total",
            &[("interface", iface)]
        ) >= 1.0
    );
    assert_eq!(value(&samples, "ddm_store_failures_total", &[]), 0.0);
    assert_eq!(value(&samples, "ddm_scrape_unanswered_actors", &[]), 0.0);

    // The table form, and what is not served.
    let port = METRICS_PORT.to_string();
    let bin = ddm_test_harness::ddmadm_bin().display().to_string();
    let out = f
        .topo()
        .exec("t1", &[bin.as_str(), "counters", "--metrics-port", &port])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("rack {rack}, sled {sled}")), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("router") && l.contains("routes")),
        "{table}"
    );
    let (status, _, _) = http_get(&f, "t1", "/nothing").unwrap();
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    for node in ["s1", "t1"] {
        let status = f.stop_router(node).unwrap();
        assert!(status.success(), "{node}: ddmd exited with {status}");
    }
}
