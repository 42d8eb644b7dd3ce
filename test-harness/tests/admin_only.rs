//! The admin-only daemon as the control plane's test suite uses it: the
//! real binary, spawned by the fixture, driven over HTTP.

use std::collections::BTreeSet;
use std::time::Duration;

use ddm_admin_api::latest::{EnableStatsRequest, TunnelOrigin};
use ddm_test_harness::fixture::DdmdInstance;
use oxnet::Ipv6Net;

fn p(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

async fn start() -> DdmdInstance {
    DdmdInstance::start().await.expect("ddmd starts")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn url(d: &DdmdInstance, path: &str) -> String {
    format!("http://{}{path}", d.addr())
}

/// The exact call sequence of the control plane against the exact spawn
/// line of its fixture.
#[tokio::test]
async fn control_plane_sequence() {
    let d = start().await;
    // Logs are written asynchronously: the line may land just after the
    // port file.
    let line = format!("admin: listening on {}", d.addr());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.log().contains(&line) {
        assert!(std::time::Instant::now() < deadline, "no {line:?} logged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = d.client();
    assert!(c.get_originated().await.unwrap().into_inner().is_empty());

    let prefixes = vec![p("fd00:1122:3344:101::/64"), p("fd00:1::/64")];
    c.advertise_prefixes(&prefixes).await.unwrap();
    let got: BTreeSet<_> =
        c.get_originated().await.unwrap().into_inner().into_iter().collect();
    assert_eq!(got, prefixes.iter().copied().collect());

    c.withdraw_prefixes(&vec![p("fd00:1::/64")]).await.unwrap();
    let got = c.get_originated().await.unwrap().into_inner();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![prefixes[0]]);

    let stats = EnableStatsRequest {
        sled_id: uuid::Uuid::new_v4(),
        rack_id: uuid::Uuid::new_v4(),
    };
    c.enable_stats(&stats).await.unwrap();
    c.enable_stats(&stats).await.unwrap();
    assert!(c.get_prefixes().await.unwrap().into_inner().is_empty());
    c.disable_stats().await.unwrap();
    d.cleanup();
}

#[tokio::test]
async fn admin_only_answers_are_empty_and_accepting() {
    let d = start().await;
    let c = d.client();
    assert!(c.get_peers().await.unwrap().into_inner().is_empty());
    assert!(c.get_prefixes().await.unwrap().into_inner().is_empty());
    assert!(c.get_tunnel_endpoints().await.unwrap().into_inner().is_empty());
    c.sync().await.unwrap();
    c.expire_peer(&"fe80::1".parse().unwrap()).await.unwrap();
    d.cleanup();
}

/// Everything acknowledged survives a SIGKILL.
#[tokio::test]
async fn persistence_across_sigkill() {
    let d = start().await;
    let c = d.client();
    let prefixes: Vec<_> =
        (1..=50).map(|i| p(&format!("fd00:{i:x}::/64"))).collect();
    c.advertise_prefixes(&prefixes).await.unwrap();
    let tunnel = TunnelOrigin {
        overlay_prefix: "203.0.113.0/24".parse().unwrap(),
        boundary_addr: "fd00:99::1".parse().unwrap(),
        vni: 1001,
        metric: 10,
    };
    c.advertise_tunnel_endpoints(&vec![tunnel]).await.unwrap();
    c.withdraw_prefixes(&vec![prefixes[0]]).await.unwrap();

    let dir = d.kill_keep_dir();
    let d = DdmdInstance::start_in(dir).await.unwrap();
    let c = d.client();
    let got: BTreeSet<_> =
        c.get_originated().await.unwrap().into_inner().into_iter().collect();
    assert_eq!(got, prefixes[1..].iter().copied().collect());
    let tunnels = c.get_originated_tunnel_endpoints().await.unwrap();
    assert_eq!(tunnels.into_inner(), vec![tunnel]);
    d.cleanup();
}

/// Many fixtures at once on one host: no fixed ports, no shared paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_instances_at_once() {
    let started =
        futures::future::join_all((0..16).map(|_| DdmdInstance::start())).await;
    let instances: Vec<_> =
        started.into_iter().map(|r| r.expect("instance starts")).collect();
    let ports: BTreeSet<_> =
        instances.iter().map(|d| d.addr().port()).collect();
    assert_eq!(ports.len(), 16, "every instance has its own port");
    for (i, d) in instances.iter().enumerate() {
        let mine = vec![p(&format!("fd00:{:x}::/64", i + 1))];
        d.client().advertise_prefixes(&mine).await.unwrap();
    }
    for (i, d) in instances.iter().enumerate() {
        let got = d.client().get_originated().await.unwrap().into_inner();
        assert_eq!(got, vec![p(&format!("fd00:{:x}::/64", i + 1))]);
    }
    for d in instances {
        d.cleanup();
    }
}

#[tokio::test]
async fn peers_in_both_versions_and_version_errors() {
    let d = start().await;
    let h = http();
    for v in [Some("1.0.0"), Some("2.0.0"), None] {
        let mut req = h.get(url(&d, "/peers"));
        if let Some(v) = v {
            req = req.header("api-version", v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "version {v:?}");
        assert_eq!(resp.text().await.unwrap(), "{}");
    }
    for bad in ["3.0.0", "0.9.0", "1.5.0", "banana", ""] {
        let resp = h
            .get(url(&d, "/originated"))
            .header("api-version", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "version {bad:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        let msg = body["message"].as_str().unwrap();
        assert!(msg.contains("1.0.0, 2.0.0"), "{bad:?}: {msg}");
        assert!(body["request_id"].is_string());
    }
    d.cleanup();
}

/// Each bad body gets a 4xx and stores nothing.
#[tokio::test]
async fn bad_bodies_are_rejected_and_change_nothing() {
    let d = start().await;
    let h = http();
    let keep = vec![p("fd00:aa::/64")];
    d.client().advertise_prefixes(&keep).await.unwrap();
    let huge = format!("[\"fd00::/64\"{}]", ",\"fd00::/64\"".repeat(1_200_000));
    assert!(huge.len() > ddm_admin_api::REQUEST_BODY_MAX_BYTES);
    let cases: Vec<(&str, &str, String)> = vec![
        ("PUT", "/prefix", "not json".into()),
        ("PUT", "/prefix", "[\"fd00:1::/64\"".into()),
        ("PUT", "/prefix", "[\"fd00:zz::/64\"]".into()),
        ("PUT", "/prefix", "[\"fd00:1::/129\"]".into()),
        ("PUT", "/prefix", "[\"10.0.0.0/8\"]".into()),
        ("PUT", "/prefix", "{\"prefix\": \"fd00:1::/64\"}".into()),
        ("DELETE", "/prefix", "[\"fd00:aa::/200\"]".into()),
        ("PUT", "/prefix", huge),
        ("PUT", "/tunnel_endpoint", "[{\"vni\": 1}]".into()),
        (
            "PUT",
            "/tunnel_endpoint",
            "[{\"overlay_prefix\": \"10.0.0.0/8\", \
              \"boundary_addr\": \"10.0.0.1\", \"vni\": 1}]"
                .into(),
        ),
        ("POST", "/enable-stats", "{\"sled_id\": \"nope\"}".into()),
    ];
    for (method, path, body) in cases {
        let resp = h
            .request(method.parse().unwrap(), url(&d, path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let shown: String = body.chars().take(60).collect();
        assert!(
            status.is_client_error(),
            "{method} {path} {shown:?} gave {status}"
        );
    }
    let got = d.client().get_originated().await.unwrap().into_inner();
    assert_eq!(got, keep, "nothing stored by the rejected requests");
    let tunnels = d.client().get_originated_tunnel_endpoints().await.unwrap();
    assert!(tunnels.into_inner().is_empty());
    d.cleanup();
}

/// Prefixes and overlay prefixes with host bits set are taken as their
/// networks, as the original daemon takes them: stored, listed and
/// withdrawn in canonical form, with a warning in the log.
#[tokio::test]
async fn host_bits_are_cleared_not_refused() {
    let d = start().await;
    let h = http();
    let send = |method: &str, path: &str, body: &str| {
        h.request(method.parse().unwrap(), url(&d, path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let body = "[\"fd00:1::1/64\", \"fd00:2::/64\", \"fd00:1::2/64\"]";
    let r = send("PUT", "/prefix", body).await.unwrap();
    assert_eq!(r.status(), 204);
    let got = d.client().get_originated().await.unwrap().into_inner();
    let want: BTreeSet<Ipv6Net> = [p("fd00:1::/64"), p("fd00:2::/64")].into();
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);

    let tunnel = r#"[{"overlay_prefix": "10.1.2.3/8",
        "boundary_addr": "fd00::1", "vni": 9}]"#;
    let r = send("PUT", "/tunnel_endpoint", tunnel).await.unwrap();
    assert_eq!(r.status(), 204);
    let got = d.client().get_originated_tunnel_endpoints().await.unwrap();
    let got: Vec<TunnelOrigin> = got.into_inner().into_iter().collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].overlay_prefix, "10.0.0.0/8".parse().unwrap());

    // Withdrawing with other host bits withdraws the same networks.
    let r = send("DELETE", "/prefix", "[\"fd00:1::ffff/64\"]").await.unwrap();
    assert_eq!(r.status(), 204);
    let r = send("DELETE", "/tunnel_endpoint", tunnel).await.unwrap();
    assert_eq!(r.status(), 204);
    let got = d.client().get_originated().await.unwrap().into_inner();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![p("fd00:2::/64")]);
    let got = d.client().get_originated_tunnel_endpoints().await.unwrap();
    assert!(got.into_inner().is_empty());

    // One warning per request, whatever the number of such prefixes: the
    // PUT (two of them), the tunnel PUT, the DELETE and the tunnel DELETE.
    let warnings = |d: &DdmdInstance| d.log().matches("host bits set").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while warnings(&d) < 4 {
        assert!(std::time::Instant::now() < deadline, "no warning logged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(warnings(&d), 4, "{}", d.log());
    d.cleanup();
}

/// The body limit still admits 100,000 prefixes in one request.
#[tokio::test]
async fn one_hundred_thousand_prefixes_in_one_request() {
    let d = start().await;
    let prefixes: Vec<Ipv6Net> = (0..100_000u32)
        .map(|i| p(&format!("fd00:{:x}:{:x}::/64", i >> 16, i & 0xffff)))
        .collect();
    d.client().advertise_prefixes(&prefixes).await.unwrap();
    let got = d.client().get_originated().await.unwrap().into_inner();
    assert_eq!(got.len(), 100_000);
    d.cleanup();
}

#[tokio::test]
async fn sigterm_and_sigint_exit_zero() {
    // How fast it stops is a benchmark's business; here it must stop, with
    // 0, well within the deadline.
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut d = start().await;
        let (status, _took) =
            d.signal_and_wait(sig, Duration::from_secs(10)).await.unwrap();
        assert!(status.success(), "signal {sig}: {status}");
        assert!(d.log().contains("ddmd stopped"));
        d.cleanup();
    }
}

/// The original daemon's service refresh sends SIGUSR1; its default action
/// would kill the daemon without its shutdown.
#[tokio::test]
async fn sigusr1_is_logged_and_the_daemon_runs_on() {
    let mut d = start().await;
    let pid = d.pid().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child we have not reaped.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !d.log().contains("SIGUSR1 received") {
        assert!(tokio::time::Instant::now() < deadline, "no log line");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = http().get(url(&d, "/originated")).send().await.unwrap();
    assert!(got.status().is_success(), "{}", got.status());
    let (status, _) = d
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    d.cleanup();
}
