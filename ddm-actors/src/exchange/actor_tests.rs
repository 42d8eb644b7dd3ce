//! The exchange actor over loopback HTTP: one test per HTTP concern
//! (version paths, serving the peer, port binding); the session's rules
//! are the step files', and the actor's glue over the in-memory
//! transport is in `transport_tests.rs`.

use super::super::client::Client;
use super::super::server;
use super::super::testing::{fake_router, Seen};
use super::*;
use crate::exchange::wire::v3;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ractor::call;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(15);

fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}

fn pv(dest: &str, path: &str) -> v3::PathVector {
    v3::PathVector {
        destination: dest.parse().unwrap(),
        path: vec![path.to_string()],
    }
}

fn to(prefix: &str, vni: u32) -> v3::TunnelOrigin {
    v3::TunnelOrigin {
        overlay_prefix: prefix.parse().unwrap(),
        boundary_addr: "fd00::99".parse().unwrap(),
        vni,
        metric: 0,
    }
}

fn announce(dests: &[&str]) -> v3::Update {
    let mut u = v3::Update::default();
    for d in dests {
        u.underlay_mut().announce.insert(pv(d, "x"));
    }
    u
}

/// One request the fake peer received.
#[derive(Debug)]
struct Received {
    path: String,
    /// The session id the request named.
    session: Option<u64>,
    body: Bytes,
}

/// How the fake peer answers.
struct PeerCtl {
    /// Body of every pull answer.
    pull_body: String,
    /// The push limit its pull answers announce, if any.
    announce: Option<usize>,
}

/// A fake peer exchange server on `[::1]:port`.
struct FakePeer {
    port: u16,
    received: mpsc::UnboundedReceiver<Received>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakePeer {
    async fn start(pull_body: &str) -> FakePeer {
        let ctl = Arc::new(PeerCtl {
            pull_body: pull_body.to_string(),
            announce: Some(server::MAX_BODY),
        });
        let listener =
            server::bind(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0))
                .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, received) = mpsc::unbounded_channel();
        let c = ctl.clone();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                let (ctl, tx) = (c.clone(), tx.clone());
                let svc = hyper::service::service_fn(move |req| {
                    fake_answer(req, ctl.clone(), tx.clone())
                });
                conns.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        FakePeer { port, received, accepted, task }
    }

    async fn next(&mut self) -> Received {
        timeout(DEADLINE, self.received.recv())
            .await
            .expect("the peer heard nothing in time")
            .unwrap()
    }
}

async fn fake_answer(
    req: Request<Incoming>,
    ctl: Arc<PeerCtl>,
    tx: mpsc::UnboundedSender<Received>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let is_push = req.method() == Method::PUT;
    let path = req.uri().path().to_string();
    let session = server::session_id(req.headers());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let _ = tx.send(Received { path, session, body });
    let mut answer = Response::builder();
    let (status, body) = if is_push {
        (StatusCode::NO_CONTENT, String::new())
    } else {
        if let Some(limit) = ctl.announce {
            answer = answer.header(server::PUSH_LIMIT_HEADER, limit);
        }
        (StatusCode::OK, ctl.pull_body.clone())
    };
    Ok(answer.status(status).body(Full::new(Bytes::from(body))).unwrap())
}

fn loopback_peer() -> PeerId {
    PeerId { ifindex: 0, addr: Ipv6Addr::LOCALHOST }
}

fn args(
    peer: PeerId,
    version: u8,
    peer_port: u16,
    router: RouterRef,
    on_failure: Option<DerivedActorRef<ExchangeFailed>>,
) -> ExchangeArgs {
    ExchangeArgs {
        peer,
        peer_hostname: "peer".to_string(),
        peer_kind: RouterKind::Transit,
        version,
        local_addr: Ipv6Addr::LOCALHOST,
        port: 0,
        peer_port,
        timeout: Duration::from_secs(2),
        max_path_len: crate::policy::MAX_PATH_LEN_BOUND,
        give_up_after: Duration::ZERO,
        router,
        on_failure,
        log: discard(),
        transport: ExchangeTransport::http(),
    }
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    timeout(DEADLINE, rx.recv()).await.expect("nothing in time").unwrap()
}

/// Poll the counters until `done` holds, within the deadline.
async fn wait_counters(
    x: &ExchangeRef,
    done: impl Fn(&ExchangeCounters) -> bool,
) -> ExchangeCounters {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        let c = call!(x, ExchangeMsg::GetCounters).unwrap();
        if done(&c) {
            return c;
        }
        assert!(tokio::time::Instant::now() < give_up, "counters: {c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const PULL3: &str =
    r#"{"underlay":[{"destination":"fd00:5::/64","path":["peer"]}]}"#;
const PULL2: &str = r#"{"underlay":[{"destination":{"addr":"fd00:5::","len":64},"path":["peer"]}]}"#;

fn pull_answer() -> v3::PullResponse {
    v3::PullResponse {
        underlay: Some([pv("fd00:5::/64", "peer")].into()),
        tunnel: None,
    }
}

/// A version 2 peer is pulled and pushed to in version 2.
#[tokio::test]
async fn speaks_v2_to_a_v2_peer() {
    let mut fake = FakePeer::start(PULL2).await;
    let (router, mut seen) = fake_router(Default::default()).await;
    let peer = loopback_peer();
    let (x, _) =
        Actor::spawn(None, Exchange, args(peer, 2, fake.port, router, None))
            .await
            .unwrap();
    assert_eq!(recv(&mut seen).await, Seen::PeerUp(peer, RouterKind::Transit));
    let r = fake.next().await;
    assert_eq!(r.path, "/v2/pull");
    assert_eq!(recv(&mut seen).await, Seen::PullResult(peer, pull_answer()));

    let mut u = announce(&["fd00:1::/64"]);
    u.tunnel_mut().announce.insert(to("10.0.0.0/8", 4));
    x.cast(ExchangeMsg::Push(u.clone().into())).unwrap();
    let r = fake.next().await;
    assert_eq!(r.path, "/v2/push");
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(text.contains(r#"{"V4":{"addr":"10.0.0.0","len":8}}"#), "{text}");
    let got: super::super::wire::v2::Update =
        serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v3::Update::try_from(got).unwrap(), u);
    wait_counters(&x, |c| c.pushes_sent == 1).await;
    // The pull's connection was kept alive and carried the push.
    assert_eq!(fake.accepted.load(Ordering::Relaxed), 1);
    x.stop_and_wait(None, None).await.unwrap();
}

/// The actor's own server over a real socket: the peer's push reaches
/// the router, its pull is answered; a stranger is refused.
#[tokio::test]
async fn serves_the_peer_and_refuses_strangers() {
    let mut fake = FakePeer::start(PULL3).await;
    let answer = pull_answer();
    let (router, mut seen) = fake_router(answer.clone()).await;
    let peer = loopback_peer();
    let (x, _) = Actor::spawn(
        None,
        Exchange,
        args(peer, 3, fake.port, router.clone(), None),
    )
    .await
    .unwrap();
    assert_eq!(recv(&mut seen).await, Seen::PeerUp(peer, RouterKind::Transit));
    let local = call!(x, ExchangeMsg::GetLocalAddr).unwrap().unwrap();
    assert_ne!(local.port(), 0);
    assert!(matches!(recv(&mut seen).await, Seen::PullResult(..)));

    let as_peer = Client::new(local, Version::V3, Duration::from_secs(2));
    let u = announce(&["fd00:8::/64"]);
    let pushed = as_peer.push(&(&u).into()).await.unwrap();
    assert_eq!(recv(&mut seen).await, Seen::Import(peer, u.clone()));
    let pulled =
        as_peer.pull(None, crate::policy::MAX_PATH_LEN_BOUND).await.unwrap();
    assert_eq!(pulled.response.to_wire(), answer);
    assert_eq!(pulled.push_limit, Some(server::MAX_BODY));
    // The answer names the actor's session, the same one its own
    // pulls name.
    let ours = pulled.session.expect("a session id");
    let first = fake.next().await;
    assert_eq!((first.path.as_str(), first.session), ("/v3/pull", Some(ours)));
    assert_eq!(recv(&mut seen).await, Seen::PullFor(peer));
    let as_v2 = Client::new(local, Version::V2, Duration::from_secs(2));
    let pulled_v2 =
        as_v2.pull(None, crate::policy::MAX_PATH_LEN_BOUND).await.unwrap();
    assert_eq!(pulled_v2.response.to_wire(), answer);
    let c = call!(x, ExchangeMsg::GetCounters).unwrap();
    assert_eq!((c.pushes_received, c.pulls_received), (1, 2));
    assert!(pushed > 0 && pulled.bytes > 0 && pulled_v2.bytes > 0);
    assert_eq!(c.push_bytes_received, pushed as u64);
    assert_eq!(c.pull_bytes_sent, (pulled.bytes + pulled_v2.bytes) as u64);

    // Another exchange actor whose peer is someone else: our loopback
    // source address is a stranger to it.
    let other = PeerId { ifindex: 0, addr: "fd00::2".parse().unwrap() };
    let (y, _) =
        Actor::spawn(None, Exchange, args(other, 3, fake.port, router, None))
            .await
            .unwrap();
    let local = call!(y, ExchangeMsg::GetLocalAddr).unwrap().unwrap();
    let stranger = Client::new(local, Version::V3, Duration::from_secs(2));
    match stranger.push(&(&u).into()).await {
        Err(ClientError::Status { status, .. }) => {
            assert_eq!(status, StatusCode::FORBIDDEN)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let c = call!(y, ExchangeMsg::GetCounters).unwrap();
    assert_eq!((c.rejected_forbidden, c.pushes_received), (1, 0));
    y.stop_and_wait(None, None).await.unwrap();
    x.stop_and_wait(None, None).await.unwrap();
}

/// Stopping closes the listener: a new actor can bind the same port at
/// once. A port in use is retried, not fatal.
#[tokio::test]
async fn stop_frees_the_port_and_busy_ports_are_retried() {
    let fake = FakePeer::start(PULL3).await;
    let (router, _seen) = fake_router(Default::default()).await;
    let peer = loopback_peer();
    let (x, _) = Actor::spawn(
        None,
        Exchange,
        args(peer, 3, fake.port, router.clone(), None),
    )
    .await
    .unwrap();
    let port = call!(x, ExchangeMsg::GetLocalAddr).unwrap().unwrap().port();

    // While x holds the port, a second actor on it cannot bind yet.
    let mut same = args(peer, 3, fake.port, router.clone(), None);
    same.port = port;
    let (y, _) = Actor::spawn(None, Exchange, same).await.unwrap();
    assert_eq!(call!(y, ExchangeMsg::GetLocalAddr).unwrap(), None);
    assert!(call!(y, ExchangeMsg::GetCounters).unwrap().bind_failures >= 1);

    x.stop_and_wait(None, None).await.unwrap();
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(a) = call!(y, ExchangeMsg::GetLocalAddr).unwrap() {
            assert_eq!(a.port(), port);
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "never rebound");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    y.stop_and_wait(None, None).await.unwrap();
    // And once y is gone, the port is free right away.
    server::bind(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0)).unwrap();
}

/// A killed actor skips `post_stop`; its server closes all the same, as
/// its state is dropped, so the actor started next can bind the port.
#[tokio::test]
async fn a_killed_actor_frees_its_port() {
    let fake = FakePeer::start(PULL3).await;
    let (router, _seen) = fake_router(Default::default()).await;
    let peer = loopback_peer();
    let (x, _) =
        Actor::spawn(None, Exchange, args(peer, 3, fake.port, router, None))
            .await
            .unwrap();
    let port = call!(x, ExchangeMsg::GetLocalAddr).unwrap().unwrap().port();
    x.kill_and_wait(None).await.unwrap();
    let give_up = tokio::time::Instant::now() + DEADLINE;
    let addr = SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0);
    while let Err(e) = server::bind(addr) {
        assert!(tokio::time::Instant::now() < give_up, "still bound: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn unknown_version_fails_to_start() {
    let (router, _seen) = fake_router(Default::default()).await;
    let r =
        Actor::spawn(None, Exchange, args(loopback_peer(), 4, 1, router, None))
            .await;
    assert!(r.is_err());
}
