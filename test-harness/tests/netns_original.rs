//! Mixed fabrics: a real `ddmd` next to a stand-in for the original daemon
//! ([`OriginalPeer`]), proven in network namespaces.
//!
//! The original's exchange server refuses push bodies over 1024 bytes with
//! `400`, answers pulls with `null` lists, pushes without a content type and
//! answers solicitations of any version. Each test peers one `ddmd` server
//! (`d1`) with a stand-in (`o1`), has `d1` originate a 300-prefix
//! advertisement and then withdraw it, and checks that every prefix reaches
//! the stand-in while `d1`'s session with it stays in `Exchange` the whole
//! time (`GET /peers` is polled throughout, and for longer than the expiry
//! threshold afterwards: a session that failed would have been expired by
//! then).
//!
//! Build the binaries first (`cargo build --workspace --bins`). Every test
//! skips loudly without root (and fails with `DDM_REQUIRE_NETNS=1`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ddm_test_harness::fabric::{Fabric, Peer};
use ddm_test_harness::netns::{require_netns, wait_until};
use ddm_test_harness::original::{
    Heard, OriginalConfig, OriginalPeer, PushSeen, ORIGINAL_BODY_CAP,
};

/// Generous bound for anything that involves the routers' timers, under a
/// loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// Faster discovery timers; a failing exchange would expire the peer
/// about `EXPIRE` after its failures began.
const FAST: [&str; 4] =
    ["--solicit-interval", "500", "--expire-threshold", "2000"];
const EXPIRE: Duration = Duration::from_millis(2000);

/// How many prefixes the advertisement carries.
const PREFIXES: usize = 300;

/// How often `GET /peers` is polled while the prefixes flow.
const POLL: Duration = Duration::from_millis(50);

/// `d1` running `ddmd`, `o1` running the stand-in, one link between them,
/// `d1`'s session with `o1` in `Exchange`.
struct Mixed {
    /// Declared first: stopped before the namespaces go.
    original: OriginalPeer,
    f: Fabric,
}

impl Mixed {
    fn new(tag: &str, config: OriginalConfig) -> Mixed {
        let mut f = Fabric::new(tag).unwrap();
        f.topo_mut().node("d1").unwrap();
        f.topo_mut().node("o1").unwrap();
        let link = f.topo_mut().link("d1", "o1").unwrap();
        f.topo().wait_link_local("d1", &link.a_if, DEADLINE).unwrap();
        f.topo().wait_link_local("o1", &link.b_if, DEADLINE).unwrap();
        let original =
            OriginalPeer::start(f.topo(), "o1", &link.b_if, config).unwrap();
        f.start_router("d1", "server", &[&link.a_if], &FAST).unwrap();
        let m = Mixed { original, f };
        let peers =
            m.f.wait_peer_state("d1", 1, "Exchange", DEADLINE)
                .unwrap_or_else(|e| m.fail(&e));
        assert_eq!(peers[0].host, "o1", "{peers:?}");
        m
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\nstand-in heard: {:?}\nd1 log:\n{}",
            self.original.heard(),
            self.f.log("d1")
        )
    }

    /// Waits until the stand-in's `heard` satisfies `ok`.
    fn wait_heard(&self, what: &str, ok: impl Fn(&Heard) -> bool) -> Heard {
        let mut last = Heard::default();
        wait_until(DEADLINE, what, || {
            last = self.original.heard();
            ok(&last)
        })
        .unwrap_or_else(|e| self.fail(&e));
        last
    }

    /// `d1`'s log records with message `msg`.
    fn records(&self, msg: &str) -> Vec<serde_json::Value> {
        self.f.log_records("d1", msg)
    }
}

/// The advertised prefixes: sled-like /64s.
fn prefixes() -> Vec<String> {
    (0..PREFIXES)
        .map(|i| format!("fd00:1122:3344:{:x}::/64", 0x100 + i))
        .collect()
}

/// Polls `d1`'s `GET /peers` every [`POLL`] until `stop`, and fails on the
/// first sample that is not the one session with `o1` in `Exchange`, or
/// whose time in `Exchange` went backwards (it was left and re-entered).
/// Returns how many samples were taken.
fn watch_session(f: &Fabric, stop: &AtomicBool) -> Result<usize, String> {
    let mut samples = 0;
    let mut last: Option<Peer> = None;
    while !stop.load(Ordering::Relaxed) {
        let peers = f.peers("d1")?;
        let [p] = peers.as_slice() else {
            return Err(format!("not one peer: {peers:?}"));
        };
        if p.state != "Exchange" || p.host != "o1" {
            return Err(format!("session left Exchange: {p:?}"));
        }
        if let Some(before) = &last {
            if p.duration < before.duration {
                return Err(format!(
                    "session re-entered Exchange: {before:?} then {p:?}"
                ));
            }
        }
        last = Some(p.clone());
        samples += 1;
        std::thread::sleep(POLL);
    }
    Ok(samples)
}

/// Sets the flag when dropped, also while unwinding, so a watcher thread
/// stops whatever happens to the test.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How many of `pushes` were taken.
fn accepted(pushes: &[PushSeen]) -> usize {
    pushes.iter().filter(|p| p.accepted).count()
}

/// What one advertisement (then its withdrawal) took.
struct Report {
    /// Pushes that carried the advertisement.
    pushes: usize,
    /// Pushes the stand-in refused (then split by `d1`).
    refused: usize,
    /// The largest body `d1` pushed.
    largest: usize,
    /// Pushes that carried the withdrawal.
    withdraw_pushes: usize,
}

/// `d1` originates [`PREFIXES`] prefixes, then withdraws them; every one
/// reaches the stand-in both times while the session stays in Exchange.
fn advertise_and_withdraw(m: &Mixed, version: u8) -> Report {
    let before = m.wait_heard("d1 to pull the stand-in", |h| h.pulls >= 1);
    assert!(before.pushes.is_empty(), "{:?}", before.pushes);
    let all = prefixes();
    let stop = AtomicBool::new(false);
    let (report, watched) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_session(&m.f, &stop));
        let run = || {
            let mut args = vec!["advertise-prefixes"];
            args.extend(all.iter().map(String::as_str));
            m.f.adm("d1", &args).unwrap_or_else(|e| m.fail(&e));
            let heard = m.wait_heard("every prefix at the stand-in", |h| {
                h.routes.len() == PREFIXES
            });
            for p in &all {
                let paths = heard.routes.get(p.as_str());
                let want = [vec!["d1".to_string()]].into();
                assert_eq!(paths, Some(&want), "{p}");
            }
            let advertised = heard.pushes.len();
            let mut args = vec!["withdraw-prefixes"];
            args.extend(all.iter().map(String::as_str));
            m.f.adm("d1", &args).unwrap_or_else(|e| m.fail(&e));
            let heard =
                m.wait_heard("every prefix withdrawn", |h| h.routes.is_empty());
            // Hold on for longer than the expiry threshold: a failing
            // exchange would have expired the peer by then.
            let held = m.f.peers("d1").unwrap_or_else(|e| m.fail(&e));
            let until = held[0].duration + EXPIRE + Duration::from_secs(1);
            wait_until(DEADLINE, "the session to outlive the pushes", || {
                m.f.peers("d1")
                    .is_ok_and(|p| p.len() == 1 && p[0].duration >= until)
            })
            .unwrap_or_else(|e| m.fail(&e));
            (heard, advertised)
        };
        let stopper = StopOnDrop(&stop);
        let (heard, advertised) = run();
        drop(stopper);
        let watched = watcher.join().expect("watcher panicked");
        ((heard, advertised), watched)
    });
    let samples = watched.unwrap_or_else(|e| m.fail(&e));
    assert!(samples >= 5, "only {samples} samples of GET /peers");
    let (heard, advertised) = report;
    let path = format!("/v{version}/push");
    for p in &heard.pushes {
        assert_eq!(p.version, version, "{p:?}");
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/json"),
            "{p:?} ({path})"
        );
    }
    for msg in
        ["push failed", "pull failed", "exchange with peer keeps failing"]
    {
        let r = m.records(msg);
        assert!(r.is_empty(), "d1 logged {msg:?}: {r:?}");
    }
    assert!(heard.errors.is_empty(), "{:?}", heard.errors);
    Report {
        pushes: accepted(&heard.pushes[..advertised]),
        refused: heard.refused(),
        largest: heard.accepted().map(|p| p.bytes).max().unwrap_or(0),
        withdraw_pushes: accepted(&heard.pushes[advertised..]),
    }
}

/// The stand-in pushes a prefix to `d1` as the original does (no content
/// type, status ignored): `d1` takes it.
fn original_push_is_taken(m: &Mixed, version: u8) {
    let body = if version == 2 {
        r#"{"underlay":{"announce":[{"destination":{"addr":"fd00:99::","len":64},"path":["o1"]}],"withdraw":[]},"tunnel":null}"#
    } else {
        r#"{"underlay":{"announce":[{"destination":"fd00:99::/64","path":["o1"]}],"withdraw":[]},"tunnel":null}"#
    };
    let status =
        m.original.push(version, body, DEADLINE).unwrap_or_else(|e| m.fail(&e));
    assert_eq!(status, 204);
    let mut last = serde_json::Value::Null;
    wait_until(DEADLINE, "d1 to hold the stand-in's prefix", || {
        last = m.f.adm("d1", &["get-prefixes"]).unwrap_or_default();
        last.to_string().contains("fd00:99::/64")
    })
    .unwrap_or_else(|e| m.fail(&format!("{e}: {last}")));
}

fn print(version: u8, cap: usize, r: &Report) {
    println!(
        "v{version}, {cap}-byte peer: {PREFIXES} prefixes in {} pushes \
         ({} refused, largest body {} bytes), withdrawn in {} pushes",
        r.pushes, r.refused, r.largest, r.withdraw_pushes
    );
}

#[test]
fn original_peer_gets_every_prefix_over_v2() {
    if !require_netns("original_peer_gets_every_prefix_over_v2") {
        return;
    }
    let m = Mixed::new("orig_v2", OriginalConfig::new("o1"));
    let r = advertise_and_withdraw(&m, 2);
    print(2, ORIGINAL_BODY_CAP, &r);
    assert_eq!(r.refused, 0, "pushes cut to 1024 bytes are never refused");
    assert!(r.largest <= ORIGINAL_BODY_CAP);
    assert!(r.pushes > 1 && r.withdraw_pushes > 1);
    original_push_is_taken(&m, 2);
}

/// Also: every solicitation of this stand-in carries version 7, and `d1`
/// answers them.
#[test]
fn original_peer_gets_every_prefix_over_v3() {
    if !require_netns("original_peer_gets_every_prefix_over_v3") {
        return;
    }
    let config = OriginalConfig {
        version: 3,
        solicit_version: 7,
        ..OriginalConfig::new("o1")
    };
    let m = Mixed::new("orig_v3", config);
    let r = advertise_and_withdraw(&m, 3);
    print(3, ORIGINAL_BODY_CAP, &r);
    assert_eq!(r.refused, 0, "pushes cut to 1024 bytes are never refused");
    assert!(r.largest <= ORIGINAL_BODY_CAP);
    original_push_is_taken(&m, 3);

    let heard = m.wait_heard("d1 to answer a version-7 solicitation", |h| {
        !h.advertisements.is_empty()
    });
    assert!(heard.solicitations_sent >= 1);
    let ad = &heard.advertisements[0];
    assert_eq!((ad.version, ad.kind, ad.hostname.as_str()), (2, 0, "d1"));
}

/// A peer whose cap is smaller than the 1024 bytes assumed: each refused
/// push is split in halves and resent; still every prefix arrives and the
/// session stays in Exchange.
#[test]
fn a_smaller_cap_is_met_by_splitting() {
    if !require_netns("a_smaller_cap_is_met_by_splitting") {
        return;
    }
    let config = OriginalConfig { body_cap: 600, ..OriginalConfig::new("o1") };
    let m = Mixed::new("orig_cap", config);
    let r = advertise_and_withdraw(&m, 2);
    print(2, 600, &r);
    assert!(r.refused > 0, "no push was refused: the cap was never hit");
    assert!(r.largest <= 600);
    let split = m.records("push refused as too large; sending it in halves");
    assert!(!split.is_empty(), "no split logged");
}

/// The original adds a pull answer to what it holds once it has read it
/// (it bounds only its wait for the answer to begin). `d1` answers the
/// stand-in's pull while it originates a prefix and withdraws the prefix
/// at once; the stand-in adds the answer 150 ms after it arrived. The
/// withdrawal must not reach it before that, or the answer would put the
/// prefix back for the rest of the session: after answering a pull that
/// names no session, `d1` pushes nothing for 400 ms and more.
#[test]
fn a_withdrawal_does_not_overtake_a_pull_answer() {
    if !require_netns("a_withdrawal_does_not_overtake_a_pull_answer") {
        return;
    }
    const PREFIX: &str = "fd00:1122:3344:101::/64";
    let config = OriginalConfig { version: 3, ..OriginalConfig::new("o1") };
    let m = Mixed::new("orig_pull", config);
    m.wait_heard("d1 to pull the stand-in", |h| h.pulls >= 1);
    m.f.adm("d1", &["advertise-prefixes", PREFIX])
        .unwrap_or_else(|e| m.fail(&e));
    m.wait_heard("the prefix at the stand-in", |h| {
        h.routes.contains_key(PREFIX)
    });
    let paths = m
        .original
        .pull(3, Duration::from_millis(150), DEADLINE)
        .unwrap_or_else(|e| m.fail(&e));
    assert_eq!(paths, 1, "the answer carries d1's one prefix");
    let pushes = m.original.heard().pushes.len();
    m.f.adm("d1", &["withdraw-prefixes", PREFIX])
        .unwrap_or_else(|e| m.fail(&e));
    let heard = m
        .wait_heard("the answer added, then the withdrawal pushed", |h| {
            h.answers_applied == 1 && h.pushes.len() > pushes
        });
    let gone = m.wait_heard("the prefix gone from the stand-in", |h| {
        !h.routes.contains_key(PREFIX)
    });
    assert!(gone.errors.is_empty(), "{:?}", gone.errors);
    println!(
        "withdrawal pushed after the answer was added: {} push(es) since",
        heard.pushes.len() - pushes
    );
}
