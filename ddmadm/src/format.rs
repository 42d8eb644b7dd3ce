//! Rendering API values as text: aligned tables for people, JSON for
//! programs. Every function here is pure: values in, text out.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use ddm_admin_api::counters::CountersReport;
use ddm_admin_api::latest::{PathVector, PeerInfo, TunnelOrigin, TunnelRoute};
use oxnet::Ipv6Net;
use serde::Serialize;
use tabwriter::TabWriter;

/// Render `rows` under `header` as columns aligned with two spaces between
/// them. Control characters in cells (a tab in a peer's hostname, say) are
/// shown as `?` so they cannot break the layout.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut tw = TabWriter::new(Vec::new()).padding(2);
    let mut line = |cells: &mut dyn Iterator<Item = String>| {
        let text: Vec<String> = cells.map(|c| sanitize(&c)).collect();
        // Writing into a Vec cannot fail.
        let _ = writeln!(tw, "{}", text.join("\t"));
    };
    line(&mut header.iter().map(|h| h.to_string()));
    for row in rows {
        line(&mut row.iter().cloned());
    }
    let bytes = tw.into_inner().unwrap_or_default();
    // Trailing spaces of the last column are noise for people and for diff.
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

fn sanitize(cell: &str) -> String {
    cell.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// A duration for people, at most two units, truncated: `450ms`, `12s`,
/// `3m12s`, `2h5m`, `4d3h`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.subsec_millis());
    }
    let (days, hours, mins, s) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// The peers table of `get-peers`: one row per interface, ordered by
/// interface index. `ifname` names an interface index when it can (only
/// meaningful when ddmadm runs on the router's own host).
pub fn peers_table(
    peers: &HashMap<String, PeerInfo>,
    ifname: impl Fn(u32) -> Option<String>,
) -> String {
    let mut entries: Vec<(&String, &PeerInfo)> = peers.iter().collect();
    // Numeric order of the index; a key that is not a number goes last.
    entries.sort_by_key(|(k, _)| (k.parse::<u32>().unwrap_or(u32::MAX), *k));
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|(index, p)| {
            let interface = match index.parse().ok().and_then(&ifname) {
                Some(name) => format!("{name} ({index})"),
                None => index.clone(),
            };
            vec![
                interface,
                p.host.clone(),
                p.addr.to_string(),
                p.kind.to_string(),
                p.status.name().to_string(),
                human_duration(p.status.duration()),
            ]
        })
        .collect();
    table(
        &["Interface", "Host", "Address", "Kind", "Status", "Duration"],
        &rows,
    )
}

/// The paths table of `get-prefixes`: one row per (destination, next hop,
/// path), ordered by destination then next hop. The path lists the routers
/// the announcement crossed, originator first, separated by spaces.
pub fn prefixes_table(prefixes: &HashMap<String, Vec<PathVector>>) -> String {
    let mut rows: Vec<(Ipv6Net, &str, String)> = prefixes
        .iter()
        .flat_map(|(nexthop, paths)| {
            paths.iter().map(move |pv| {
                (pv.destination, nexthop.as_str(), pv.path.join(" "))
            })
        })
        .collect();
    rows.sort();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(dst, nh, path)| vec![dst.to_string(), nh.to_string(), path])
        .collect();
    table(&["Destination", "Next hop", "Path"], &rows)
}

/// The table of `get-originated`: one prefix per row, in order.
pub fn originated_table(prefixes: &[Ipv6Net]) -> String {
    let mut prefixes = prefixes.to_vec();
    prefixes.sort();
    let rows: Vec<Vec<String>> =
        prefixes.iter().map(|p| vec![p.to_string()]).collect();
    table(&["Prefix"], &rows)
}

fn origin_cells(o: &TunnelOrigin) -> Vec<String> {
    vec![
        o.overlay_prefix.to_string(),
        o.boundary_addr.to_string(),
        o.vni.to_string(),
        o.metric.to_string(),
    ]
}

/// The table of `tunnel-originated`, ordered by overlay prefix.
pub fn tunnel_originated_table(origins: &[TunnelOrigin]) -> String {
    let mut origins = origins.to_vec();
    origins.sort();
    let rows: Vec<Vec<String>> = origins.iter().map(origin_cells).collect();
    table(&["Overlay", "Boundary", "VNI", "Metric"], &rows)
}

/// The table of `tunnel-imported`, ordered by overlay prefix, with the peer
/// each endpoint was learned through.
pub fn tunnel_imported_table(routes: &[TunnelRoute]) -> String {
    let mut routes = routes.to_vec();
    routes.sort();
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let mut cells = origin_cells(&r.origin);
            cells.push(r.nexthop.to_string());
            cells
        })
        .collect();
    table(&["Overlay", "Boundary", "VNI", "Metric", "Next hop"], &rows)
}

/// The `counters` table: one row per counter, grouped by what counts it
/// (an interface's discovery, a peer's exchange, a peer's import refusals,
/// the router, the store). Refusal reasons that never happened are left
/// out; every other counter is shown, zero or not. A first line names the
/// rack and sled when statistics are enabled, a last one the actors that
/// did not answer in time.
pub fn counters_table(r: &CountersReport) -> String {
    let mut rows = Vec::new();
    let mut row = |scope: &str, name: &str, v: u64| {
        rows.push(vec![scope.to_string(), name.to_string(), v.to_string()]);
    };
    for i in &r.discovery {
        let scope = format!("discovery {}", i.interface);
        for (name, v) in &i.counters {
            row(&scope, name, *v);
        }
        for (reason, v) in &i.drops {
            row(&scope, &format!("dropped {reason}"), *v);
        }
    }
    for p in &r.exchange {
        let scope = format!("exchange {}%{}", p.peer, p.interface);
        for (name, v) in &p.counters {
            row(&scope, name, *v);
        }
    }
    for p in &r.import_refusals {
        let scope = format!("import {}%{}", p.peer, p.ifindex);
        for (reason, v) in p.reasons.iter().filter(|(_, v)| **v > 0) {
            row(&scope, &format!("refused {reason}"), *v);
        }
    }
    for (name, v) in r.router.iter().flatten() {
        row("router", name, *v);
    }
    for (name, v) in &r.store {
        row("store", name, *v);
    }
    let mut out = String::new();
    if let (Some(rack), Some(sled)) = (r.rack_id, r.sled_id) {
        out.push_str(&format!("rack {rack}, sled {sled}\n"));
    }
    out.push_str(&table(&["Scope", "Counter", "Value"], &rows));
    if !r.unanswered.is_empty() {
        out.push_str(&format!(
            "not answered in time: {}\n",
            sanitize(&r.unanswered.join(", "))
        ));
    }
    out
}

/// `value` as pretty JSON (two-space indent) with object keys sorted and a
/// final newline: the `--json` output.
pub fn json<T: Serialize>(value: &T) -> String {
    // Going through `Value` sorts the keys of maps the client holds in
    // hash order, so the output is stable.
    let value = serde_json::to_value(value)
        .expect("API values always serialise to JSON");
    let mut text = serde_json::to_string_pretty(&value)
        .expect("a JSON value always serialises");
    text.push('\n');
    text
}

/// The fabric a router sees, as Graphviz DOT (`ddmadm fabric-dot`): nodes
/// and links reconstructed from the paths it holds. Each path vector
/// (originator first, then every transit it crossed) is a chain of links,
/// and its last router is linked to `me`, the viewing router. Originators
/// are boxes labelled with the prefixes they originate; `me` is drawn
/// bold. A router that holds only shortest paths sees only the links on
/// them: the picture is part of the fabric, not all of it.
pub fn fabric_dot(
    me: &str,
    prefixes: &HashMap<String, Vec<PathVector>>,
) -> String {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt::Write as _;

    let mut nodes: BTreeSet<&str> = BTreeSet::from([me]);
    let mut origins: BTreeMap<&str, BTreeSet<Ipv6Net>> = BTreeMap::new();
    let mut links: BTreeSet<(&str, &str)> = BTreeSet::new();
    for pv in prefixes.values().flatten() {
        let Some(first) = pv.path.first() else { continue };
        origins.entry(first).or_default().insert(pv.destination);
        nodes.extend(pv.path.iter().map(String::as_str));
        let mut hops: Vec<&str> = pv.path.iter().map(String::as_str).collect();
        hops.push(me);
        for w in hops.windows(2) {
            let (a, b) = (w[0].min(w[1]), w[0].max(w[1]));
            if a != b {
                links.insert((a, b));
            }
        }
    }

    // DOT's quoted strings escape `"` and `\`; control characters (a
    // hostile hostname's) become `?`.
    let esc = |s: &str| {
        let mut q = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '"' | '\\' => {
                    q.push('\\');
                    q.push(c);
                }
                c if c.is_control() => q.push('?'),
                c => q.push(c),
            }
        }
        q
    };
    let quote = |s: &str| format!("\"{}\"", esc(s));
    let mut out = String::from("graph fabric {\n  node [shape=ellipse];\n");
    for n in &nodes {
        let mut attrs = Vec::new();
        if let Some(ps) = origins.get(n) {
            // The name, then one line per prefix (DOT's `\n` escape).
            let label: Vec<String> = std::iter::once(esc(n))
                .chain(ps.iter().map(|p| p.to_string()))
                .collect();
            attrs.push(format!("shape=box, label=\"{}\"", label.join("\\n")));
        }
        if *n == me {
            attrs.push("style=bold".to_string());
        }
        if attrs.is_empty() {
            let _ = writeln!(out, "  {};", quote(n));
        } else {
            let _ = writeln!(out, "  {} [{}];", quote(n), attrs.join(", "));
        }
    }
    for (a, b) in &links {
        let _ = writeln!(out, "  {} -- {};", quote(a), quote(b));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddm_admin_api::latest::{PeerStatus, RouterKind};

    #[test]
    fn counters_table_lists_every_scope() {
        use ddm_admin_api::counters::{
            InterfaceCounters, PeerCounters, PeerRefusals,
        };
        use std::collections::BTreeMap;
        let m = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let r = CountersReport {
            rack_id: Some(uuid::Uuid::from_u128(1)),
            sled_id: Some(uuid::Uuid::from_u128(2)),
            unanswered: vec!["router".to_string()],
            discovery: vec![InterfaceCounters {
                interface: "eth0".to_string(),
                counters: m(&[("solicitations_sent", 3)]),
                drops: m(&[("truncated", 1)]),
            }],
            exchange: vec![PeerCounters {
                interface: "eth0".to_string(),
                ifindex: 2,
                peer: "fe80::2".parse().unwrap(),
                counters: m(&[("pushes_sent", 4)]),
            }],
            import_refusals: vec![PeerRefusals {
                ifindex: 2,
                peer: "fe80::2".parse().unwrap(),
                reasons: m(&[("default_route", 9), ("empty_path", 0)]),
            }],
            router: None,
            store: m(&[("commits", 5)]),
        };
        let text = counters_table(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "rack 00000000-0000-0000-0000-000000000001, \
             sled 00000000-0000-0000-0000-000000000002"
        );
        assert_eq!(
            lines[1],
            "Scope                  Counter                Value"
        );
        assert_eq!(lines[2], "discovery eth0         solicitations_sent     3");
        assert_eq!(lines[3], "discovery eth0         dropped truncated      1");
        assert_eq!(lines[4], "exchange fe80::2%eth0  pushes_sent            4");
        assert_eq!(lines[5], "import fe80::2%2       refused default_route  9");
        assert_eq!(lines[6], "store                  commits                5");
        assert_eq!(lines[7], "not answered in time: router");
        assert_eq!(lines.len(), 8, "{text}");
    }

    #[test]
    fn durations_for_people() {
        let cases = [
            (Duration::ZERO, "0ms"),
            (Duration::from_millis(450), "450ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_millis(1_999), "1s"),
            (Duration::from_secs(59), "59s"),
            (Duration::from_secs(192), "3m12s"),
            (Duration::from_secs(3600), "1h0m"),
            (Duration::from_secs(2 * 3600 + 5 * 60 + 9), "2h5m"),
            (Duration::from_secs(4 * 86_400 + 3 * 3600 + 7), "4d3h"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn table_aligns_columns_under_a_header() {
        let text = table(
            &["A", "Long header"],
            &[
                vec!["wide value".into(), "x".into()],
                vec!["b".into(), "y".into()],
            ],
        );
        assert_eq!(
            text,
            "A           Long header\n\
             wide value  x\n\
             b           y\n"
        );
    }

    #[test]
    fn table_neutralises_control_characters() {
        let text = table(&["Host"], &[vec!["evil\thost\nname".into()]]);
        assert_eq!(text, "Host\nevil?host?name\n");
    }

    fn peer(host: &str, kind: RouterKind, status: PeerStatus) -> PeerInfo {
        PeerInfo {
            status,
            addr: format!("fe80::{}", host.len()).parse().unwrap(),
            host: host.into(),
            kind,
        }
    }

    #[test]
    fn peers_sorted_by_index_with_names() {
        let peers: HashMap<String, PeerInfo> = [
            (
                "10".to_string(),
                peer(
                    "sled-ten",
                    RouterKind::Server,
                    PeerStatus::Solicit(Duration::from_millis(450)),
                ),
            ),
            (
                "2".to_string(),
                peer(
                    "sw0",
                    RouterKind::Transit,
                    PeerStatus::Exchange(Duration::from_secs(192)),
                ),
            ),
        ]
        .into_iter()
        .collect();
        let text =
            peers_table(&peers, |i| (i == 2).then(|| "eth1".to_string()));
        assert_eq!(
            text,
            "Interface  Host      Address  Kind     Status    Duration\n\
             eth1 (2)   sw0       fe80::3  transit  Exchange  3m12s\n\
             10         sled-ten  fe80::8  server   Solicit   450ms\n"
        );
    }

    #[test]
    fn empty_tables_keep_their_header() {
        assert_eq!(peers_table(&HashMap::new(), |_| None).lines().count(), 1);
        assert_eq!(
            prefixes_table(&HashMap::new()),
            "Destination  Next hop  Path\n"
        );
    }

    #[test]
    fn prefixes_one_row_per_path() {
        let pv = |dst: &str, path: &[&str]| PathVector {
            destination: dst.parse().unwrap(),
            path: path.iter().map(|s| s.to_string()).collect(),
        };
        let prefixes: HashMap<String, Vec<PathVector>> = [
            (
                "fe80::2".to_string(),
                vec![
                    pv("fd00:2::/64", &["b"]),
                    pv("fd00:1::/64", &["a", "sw1"]),
                ],
            ),
            ("fe80::1".to_string(), vec![pv("fd00:1::/64", &["a"])]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            prefixes_table(&prefixes),
            "Destination  Next hop  Path\n\
             fd00:1::/64  fe80::1   a\n\
             fd00:1::/64  fe80::2   a sw1\n\
             fd00:2::/64  fe80::2   b\n"
        );
    }

    #[test]
    fn originated_sorted() {
        let prefixes: Vec<Ipv6Net> = vec![
            "fd00:2::/64".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ];
        assert_eq!(
            originated_table(&prefixes),
            "Prefix\nfd00:1::/64\nfd00:2::/64\n"
        );
    }

    fn origin(overlay: &str, metric: u64) -> TunnelOrigin {
        TunnelOrigin {
            overlay_prefix: overlay.parse().unwrap(),
            boundary_addr: "fd00::99".parse().unwrap(),
            vni: 77,
            metric,
        }
    }

    #[test]
    fn tunnel_tables() {
        assert_eq!(
            tunnel_originated_table(&[
                origin("fd00:99::/64", 0),
                origin("203.0.113.0/24", 10),
            ]),
            "Overlay         Boundary  VNI  Metric\n\
             203.0.113.0/24  fd00::99  77   10\n\
             fd00:99::/64    fd00::99  77   0\n"
        );
        assert_eq!(
            tunnel_imported_table(&[TunnelRoute {
                origin: origin("203.0.113.0/24", 1),
                nexthop: "fe80::7".parse().unwrap(),
            }]),
            "Overlay         Boundary  VNI  Metric  Next hop\n\
             203.0.113.0/24  fd00::99  77   1       fe80::7\n"
        );
    }

    #[test]
    fn json_is_pretty_with_sorted_keys() {
        let peers: HashMap<String, PeerInfo> = [
            (
                "3".to_string(),
                peer(
                    "sw0",
                    RouterKind::Transit,
                    PeerStatus::Init(Duration::new(1, 5)),
                ),
            ),
            (
                "1".to_string(),
                peer(
                    "a",
                    RouterKind::Server,
                    PeerStatus::Expired(Duration::ZERO),
                ),
            ),
        ]
        .into_iter()
        .collect();
        let text = json(&peers);
        assert!(text.ends_with("}\n"));
        assert!(text.find("\"1\"").unwrap() < text.find("\"3\"").unwrap());
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back["3"],
            serde_json::json!({
                "addr": "fe80::3",
                "host": "sw0",
                "kind": 1,
                "status": {"type": "Init", "duration": {"secs": 1, "nanos": 5}},
            })
        );
    }

    fn pv(dest: &str, path: &[&str]) -> PathVector {
        PathVector {
            destination: dest.parse().unwrap(),
            path: path.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn fabric_dot_reconstructs_nodes_and_links_from_paths() {
        // s0 in a rack of two transits sees s1 and s2 through both, and
        // r1s0 (another rack) only through t0 and spine0.
        let prefixes = HashMap::from([
            (
                "fe80::1%2".to_string(),
                vec![
                    pv("fd00:0:1::/64", &["s1", "t0"]),
                    pv("fd00:0:2::/64", &["s2", "t0"]),
                    pv("fd00:1::/64", &["r1s0", "r1t0", "spine0", "t0"]),
                ],
            ),
            (
                "fe80::2%3".to_string(),
                vec![
                    pv("fd00:0:1::/64", &["s1", "t1"]),
                    pv("fd00:0:2::/64", &["s2", "t1"]),
                ],
            ),
        ]);
        let dot = fabric_dot("s0", &prefixes);
        let want = "graph fabric {
  node [shape=ellipse];
  \"r1s0\" [shape=box, label=\"r1s0\\nfd00:1::/64\"];
  \"r1t0\";
  \"s0\" [style=bold];
  \"s1\" [shape=box, label=\"s1\\nfd00:0:1::/64\"];
  \"s2\" [shape=box, label=\"s2\\nfd00:0:2::/64\"];
  \"spine0\";
  \"t0\";
  \"t1\";
  \"r1s0\" -- \"r1t0\";
  \"r1t0\" -- \"spine0\";
  \"s0\" -- \"t0\";
  \"s0\" -- \"t1\";
  \"s1\" -- \"t0\";
  \"s1\" -- \"t1\";
  \"s2\" -- \"t0\";
  \"s2\" -- \"t1\";
  \"spine0\" -- \"t0\";
}
";
        assert_eq!(dot, want);
        // r1t1, spine1 and the other racks' servers exist but are on no
        // shortest path s0 holds: they are not drawn.
        assert!(!dot.contains("spine1"));
    }

    #[test]
    fn fabric_dot_of_nothing_is_the_router_alone() {
        assert_eq!(
            fabric_dot("me", &HashMap::new()),
            "graph fabric {\n  node [shape=ellipse];\n  \"me\" [style=bold];\n}\n"
        );
    }

    #[test]
    fn fabric_dot_quotes_hostile_names() {
        let prefixes = HashMap::from([(
            "x".to_string(),
            vec![pv("fd00::/64", &["a\"b", "c\\d\te"]), pv("fd00:1::/64", &[])],
        )]);
        let dot = fabric_dot("me", &prefixes);
        assert!(dot.contains(r#""a\"b" [shape=box"#), "{dot}");
        assert!(dot.contains(r#""c\\d?e""#), "{dot}");
        // The empty path is skipped, not a panic.
        assert!(!dot.contains("fd00:1::/64"), "{dot}");
    }
}
