//! The real `ddmadm` binary against a live admin-only `ddmd`: every
//! subcommand, as a table and as `--json`, and how it fails.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv6Addr, TcpListener};
use std::process::{Command, Output, Stdio};

use ddm_admin_api::latest::TunnelOrigin;
use ddm_test_harness::ddmadm_bin;
use ddm_test_harness::fixture::DdmdInstance;
use oxnet::Ipv6Net;

fn p(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

async fn start() -> DdmdInstance {
    DdmdInstance::start().await.expect("ddmd starts")
}

/// `ddmadm -a ::1 -p <port> <args>`, run to completion.
fn ddmadm_at(port: u16, args: &[&str]) -> Output {
    Command::new(ddmadm_bin())
        .args(["-a", "::1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ddmadm runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `args` against `d`; it must succeed silently on stderr. Returns
/// stdout.
fn ok(d: &DdmdInstance, args: &[&str]) -> String {
    let o = ddmadm_at(d.addr().port(), args);
    assert!(
        o.status.success(),
        "ddmadm {args:?} failed ({}): {}",
        o.status,
        stderr(&o)
    );
    assert_eq!(stderr(&o), "", "ddmadm {args:?} wrote to stderr");
    stdout(&o)
}

/// A change: succeeds and prints nothing, with or without `--json`.
fn change(d: &DdmdInstance, args: &[&str]) {
    assert_eq!(ok(d, args), "", "ddmadm {args:?} printed something");
}

/// `args` with `--json` appended, parsed.
fn json(d: &DdmdInstance, args: &[&str]) -> serde_json::Value {
    let mut with = args.to_vec();
    with.push("--json");
    let text = ok(d, &with);
    assert!(text.ends_with('\n'), "{with:?}: no final newline: {text:?}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{with:?}: {e}: {text:?}"))
}

/// A table as rows of whitespace-separated cells, header first.
fn cells(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn row(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn prefixes_advertise_list_withdraw() {
    let d = start().await;
    let (a, b) = ("fd00:1122:3344:101::/64", "fd00:1::/64");
    change(&d, &["advertise-prefixes", a, b]);

    let table = ok(&d, &["get-originated"]);
    // Sorted, one prefix per row, under the header.
    assert_eq!(cells(&table), vec![row(&["Prefix"]), row(&[b]), row(&[a])]);
    let got: BTreeSet<Ipv6Net> =
        serde_json::from_value(json(&d, &["get-originated"])).unwrap();
    assert_eq!(got, BTreeSet::from([p(a), p(b)]));
    // What ddmadm showed is what the daemon holds.
    let held: BTreeSet<Ipv6Net> = d
        .client()
        .get_originated()
        .await
        .unwrap()
        .into_inner()
        .into_iter()
        .collect();
    assert_eq!(held, got);

    change(&d, &["withdraw-prefixes", b, "--json"]);
    assert_eq!(
        cells(&ok(&d, &["get-originated"])),
        vec![row(&["Prefix"]), row(&[a])]
    );
    assert_eq!(json(&d, &["get-originated"]), serde_json::json!([a]));

    change(&d, &["withdraw-prefixes", a]);
    assert_eq!(ok(&d, &["get-originated"]), "Prefix\n");
    assert_eq!(json(&d, &["get-originated"]), serde_json::json!([]));
    d.cleanup();
}

#[tokio::test]
async fn tunnel_advertise_list_withdraw() {
    let d = start().await;
    let endpoint =
        ["-o", "203.0.113.0/24", "-b", "fd00:99::1", "-v", "10", "-m", "2"];
    let advertise: Vec<&str> =
        std::iter::once("tunnel-advertise").chain(endpoint).collect();
    change(&d, &advertise);

    let table = ok(&d, &["tunnel-originated"]);
    assert_eq!(
        cells(&table),
        vec![
            row(&["Overlay", "Boundary", "VNI", "Metric"]),
            row(&["203.0.113.0/24", "fd00:99::1", "10", "2"]),
        ]
    );
    let want = TunnelOrigin {
        overlay_prefix: "203.0.113.0/24".parse().unwrap(),
        boundary_addr: "fd00:99::1".parse().unwrap(),
        vni: 10,
        metric: 2,
    };
    let value = json(&d, &["tunnel-originated"]);
    let got: Vec<TunnelOrigin> = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(got, vec![want]);
    assert_eq!(
        value,
        serde_json::json!([{
            "overlay_prefix": "203.0.113.0/24",
            "boundary_addr": "fd00:99::1",
            "vni": 10,
            "metric": 2,
        }])
    );
    assert_eq!(
        d.client()
            .get_originated_tunnel_endpoints()
            .await
            .unwrap()
            .into_inner(),
        vec![want]
    );

    let withdraw: Vec<&str> =
        std::iter::once("tunnel-withdraw").chain(endpoint).collect();
    change(&d, &withdraw);
    assert_eq!(
        cells(&ok(&d, &["tunnel-originated"])),
        vec![row(&["Overlay", "Boundary", "VNI", "Metric"])]
    );
    assert_eq!(json(&d, &["tunnel-originated"]), serde_json::json!([]));

    // Without -m, whatever metric it was advertised with; one not
    // originated is said so, and is not an error.
    change(&d, &advertise);
    let any: Vec<&str> = std::iter::once("tunnel-withdraw")
        .chain(endpoint[..6].iter().copied())
        .collect();
    change(&d, &any);
    assert_eq!(json(&d, &["tunnel-originated"]), serde_json::json!([]));
    let o = ddmadm_at(d.addr().port(), &any);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "ddmadm: 203.0.113.0/24 via fd00:99::1 (VNI 10) is not originated; \
         nothing withdrawn\n"
    );
    d.cleanup();
}

/// An admin-only daemon has no peers and learns nothing: each query is a
/// header alone, or an empty JSON value.
#[tokio::test]
async fn learned_state_is_empty() {
    let d = start().await;
    let peers = ok(&d, &["get-peers"]);
    assert_eq!(
        cells(&peers),
        vec![row(&[
            "Interface",
            "Host",
            "Address",
            "Kind",
            "Status",
            "Duration"
        ])]
    );
    assert_eq!(json(&d, &["get-peers"]), serde_json::json!({}));

    assert_eq!(
        cells(&ok(&d, &["get-prefixes"])),
        vec![row(&["Destination", "Next", "hop", "Path"])]
    );
    assert_eq!(json(&d, &["get-prefixes"]), serde_json::json!({}));

    assert_eq!(
        cells(&ok(&d, &["tunnel-imported"])),
        vec![row(&["Overlay", "Boundary", "VNI", "Metric", "Next", "hop"])]
    );
    assert_eq!(json(&d, &["tunnel-imported"]), serde_json::json!([]));
    d.cleanup();
}

/// `fabric-dot` over a router that learned nothing draws the router alone.
#[tokio::test]
async fn fabric_dot_of_a_lone_router() {
    let d = start().await;
    assert_eq!(
        ok(&d, &["fabric-dot", "--me", "lone"]),
        "graph fabric {\n  node [shape=ellipse];\n  \"lone\" [style=bold];\n}\n"
    );
    d.cleanup();
}

#[tokio::test]
async fn sync_and_expire_peer_are_accepted() {
    let d = start().await;
    change(&d, &["sync"]);
    change(&d, &["sync", "--json"]);
    // No such peer: exit 0 (the daemon takes it as a no-op), with a note
    // on stderr; the address as `counters` prints it is taken too.
    for args in [
        &["expire-peer", "fe80::1"][..],
        &["expire-peer", "fe80::1%eth0", "--json"][..],
    ] {
        let o = ddmadm_at(d.addr().port(), args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), "", "{args:?}");
        assert_eq!(
            stderr(&o),
            "ddmadm: fe80::1 is not a peer; nothing expired\n",
            "{args:?}"
        );
    }
    // The daemon is still serving afterwards.
    assert_eq!(ok(&d, &["get-originated"]), "Prefix\n");
    d.cleanup();
}

/// A daemon that has gone away: exit 1, nothing on stdout, one line on
/// stderr that names the address.
#[tokio::test]
async fn stopped_daemon_is_one_line_naming_the_address() {
    let mut d = start().await;
    let addr = d.addr();
    d.kill();
    for args in [
        &["get-peers"][..],
        &["get-originated", "--json"],
        &["advertise-prefixes", "fd00:1::/64"],
        &["sync"],
    ] {
        let o = ddmadm_at(addr.port(), args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(stdout(&o), "", "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.ends_with('\n'), "{args:?}: {err:?}");
        assert!(err.contains(&addr.to_string()), "{args:?}: {err:?}");
        assert!(err.starts_with("ddmadm: "), "{args:?}: {err:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err:?}");
    }
    d.cleanup();
}

/// A malformed prefix is refused by the parser: no connection is made and
/// nothing reaches the daemon.
#[tokio::test]
async fn invalid_prefix_is_refused_before_any_request() {
    // A listener nobody else knows about: any connection attempt would
    // sit in its backlog.
    let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let d = start().await;
    for bad in ["fd00::1/64", "10.0.0.0/8", "fd00::", "fd00::/129"] {
        let args = ["advertise-prefixes", "fd00:1::/64", bad];
        for target in [port, d.addr().port()] {
            let o = ddmadm_at(target, &args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
            assert_eq!(stdout(&o), "");
        }
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("ddmadm connected: {other:?}"),
    }
    // The valid prefix before the bad one was not sent either.
    assert!(d.client().get_originated().await.unwrap().into_inner().is_empty());
    d.cleanup();
}

/// `ddmadm get-originated | head -1` with far more output than the pipe
/// holds: ddmadm hits a closed pipe, and says nothing about it.
#[tokio::test]
async fn closed_stdout_is_quiet_success() {
    let d = start().await;
    // Long prefixes, so the table is well over a default 64 KiB pipe plus
    // what the reader takes.
    let prefixes: Vec<Ipv6Net> = (0..2_000u32)
        .map(|i| p(&format!("fd00:1122:3344:5566:7788:99aa:{:x}:1/128", i + 1)))
        .collect();
    d.client().advertise_prefixes(&prefixes).await.unwrap();
    let full = ok(&d, &["get-originated"]);
    assert_eq!(full.lines().count(), 2_001);
    assert!(full.len() > 72 * 1024, "table is only {} bytes", full.len());

    for json in [false, true] {
        let (mut reader, writer) = std::io::pipe().unwrap();
        shrink_pipe(&reader);
        let mut cmd = Command::new(ddmadm_bin());
        cmd.args(["-a", "::1", "-p", &d.addr().port().to_string()])
            .arg("get-originated")
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped());
        if json {
            cmd.arg("--json");
        }
        let child = cmd.spawn().unwrap();
        // `cmd` holds our copy of the write end; without dropping it the
        // pipe would never be closed for writing.
        drop(cmd);
        // Read one line, a byte at a time so nothing more is consumed.
        let mut line = Vec::new();
        let mut byte = [0u8];
        while line.last() != Some(&b'\n') {
            assert_eq!(reader.read(&mut byte).unwrap(), 1, "early EOF");
            line.push(byte[0]);
        }
        let want: &[u8] = if json { b"[\n" } else { b"Prefix\n" };
        assert_eq!(line, want);
        drop(reader);
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "json {json}: {}: {}",
            o.status,
            stderr(&o)
        );
        assert_eq!(stderr(&o), "", "json {json}");
    }
    d.cleanup();
}

/// Make the pipe as small as Linux allows (one page), so the writer blocks
/// long before the end of its output.
#[cfg(target_os = "linux")]
fn shrink_pipe(reader: &std::io::PipeReader) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a pipe descriptor we own; F_SETPIPE_SZ takes an int.
    let r =
        unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(r >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
}

#[cfg(not(target_os = "linux"))]
fn shrink_pipe(_reader: &std::io::PipeReader) {}
