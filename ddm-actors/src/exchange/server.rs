//! The exchange server: what the peer calls (DESIGN §3).
//!
//! ```text
//!   accept task ──▶ connection tasks (a JoinSet owned by the accept task)
//!                      │ PUT /v{2,3}/push ──Import────▶ router (cast)
//!                      │ GET /v{2,3}/pull ──PullFor───▶ router (call, bounded)
//! ```
//!
//! One task accepts on `[local%ifindex]:port` and serves every connection on
//! a task of its own; aborting the accept task drops the set and with it
//! every connection, so nothing outlives the exchange actor.
//!
//! Only the discovered peer may call: a connection from any other address
//! (compared without port or scope) is answered 403 on every request and
//! closed. A body over [`MAX_BODY`] is refused with 413, malformed JSON or
//! an invalid prefix with 400 and a short reason; nothing reaches the router
//! then. Every refusal is counted in the actor's [`Stats`].
//!
//! Pull answers carry [`PUSH_LIMIT_HEADER`]: the largest push body this
//! server takes, so that a peer running this daemon pushes in large parts,
//! while one that does not announce it is pushed to within the original
//! daemon's 1024 bytes. The original ignores the header.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ractor::rpc::CallResult;
use slog::{debug, warn, Logger};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::actor::{ExchangeMsg, ExchangeRef, Stats, Version};
use super::client::json_size_hint;
use super::wire::{v2, v2_view, v3};
use crate::rib::PeerId;
use crate::router::{RouterMsg, RouterRef};

/// Largest request or response body accepted: 100,000 path vectors are
/// about 7 MB of JSON, so this leaves ample room while bounding memory.
pub const MAX_BODY: usize = 64 << 20;

/// Response header of a pull answer announcing the largest push body (in
/// bytes, decimal) the answering server takes.
pub const PUSH_LIMIT_HEADER: &str = "x-ddm-max-push-bytes";

/// Longest reason put in a 400 answer.
const MAX_REASON: usize = 256;

/// Pause after a failed `accept` (for example out of descriptors), so the
/// loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long the peer's kept-alive connection may sit idle (or take to send
/// a request's headers) before it is closed.
const PEER_IDLE: Duration = Duration::from_secs(60);

/// Bind a listener on `addr` with `SO_REUSEADDR`, so that a peer that comes
/// back quickly can be served on the same port again.
pub fn bind(addr: SocketAddrV6) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_only_v6(true)?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    TcpListener::from_std(sock.into())
}

/// What every request handler needs.
pub struct ServerCtx {
    /// The only peer allowed to call.
    pub peer: PeerId,
    /// Where pulls are answered (and pushes go when `pushes` is unset).
    pub router: RouterRef,
    /// The exchange actor, which passes pushes on to the router in order
    /// with its pull answers (held back while a pull is out). Unset in tests
    /// that drive the server alone: pushes then go straight to the router.
    pub pushes: Option<ExchangeRef>,
    /// Bound on reading a body and on the router's answer to a pull.
    pub timeout: Duration,
    /// The actor's counters.
    pub stats: Arc<Stats>,
    /// Logger.
    pub log: Logger,
}

/// Serve `listener` until the returned task is aborted.
pub fn spawn(listener: TcpListener, ctx: Arc<ServerCtx>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, from)) => {
                        let allowed = from.ip() == IpAddr::V6(ctx.peer.addr);
                        if !allowed {
                            debug!(ctx.log, "connection from a stranger";
                                "from" => %from);
                        }
                        conns.spawn(serve_connection(
                            stream,
                            allowed,
                            ctx.clone(),
                        ));
                    }
                    Err(e) => {
                        warn!(ctx.log, "accept failed"; "error" => %e);
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

/// Serve HTTP/1.1 on one connection; strangers get one 403 and a close.
async fn serve_connection(
    stream: TcpStream,
    allowed: bool,
    ctx: Arc<ServerCtx>,
) {
    let _ = stream.set_nodelay(true);
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, allowed, &ctx).await) }
    });
    // The peer may keep its connection open between pushes; a stranger
    // gets one answer. Either way a silent client is dropped in time.
    let idle = if allowed { PEER_IDLE } else { ctx.timeout };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(allowed)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        debug!(ctx.log, "exchange connection ended"; "error" => %e);
    }
}

/// What a request asks for.
enum Op {
    /// `PUT /vN/push`.
    Push,
    /// `GET /vN/pull`.
    Pull,
}

/// Answer one request.
pub(crate) async fn handle<B>(
    req: Request<B>,
    allowed: bool,
    ctx: &ServerCtx,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if !allowed {
        Stats::bump(&ctx.stats.rejected_forbidden);
        return text(StatusCode::FORBIDDEN, "only the link's peer may call");
    }
    let (version, op) = match req.uri().path() {
        "/v2/push" => (Version::V2, Op::Push),
        "/v3/push" => (Version::V3, Op::Push),
        "/v2/pull" => (Version::V2, Op::Pull),
        "/v3/pull" => (Version::V3, Op::Pull),
        _ => {
            Stats::bump(&ctx.stats.rejected_other);
            return text(StatusCode::NOT_FOUND, "no such path");
        }
    };
    match (op, req.method()) {
        (Op::Push, &Method::PUT) => push(req, version, ctx).await,
        (Op::Pull, &Method::GET) => pull(version, ctx).await,
        (op, _) => {
            Stats::bump(&ctx.stats.rejected_other);
            let allow = match op {
                Op::Push => "PUT",
                Op::Pull => "GET",
            };
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "wrong method");
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
            r
        }
    }
}

/// Read, validate and hand a push to the router.
async fn push<B>(
    req: Request<B>,
    version: Version,
    ctx: &ServerCtx,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        Stats::bump(&ctx.stats.rejected_too_large);
        return too_large();
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(ctx.timeout, body).await {
        Err(_) => {
            Stats::bump(&ctx.stats.rejected_other);
            return text(StatusCode::REQUEST_TIMEOUT, "body too slow");
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Stats::bump(&ctx.stats.rejected_too_large);
            return too_large();
        }
        Ok(Err(e)) => {
            Stats::bump(&ctx.stats.rejected_malformed);
            return bad_request(format!("reading body: {e}"));
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    Stats::add(&ctx.stats.push_bytes_received, body.len());
    // Only the parsed update is kept: the text is dropped before a v2
    // update is converted and before the router gets it.
    let update = match decode_update(version, body) {
        Ok(u) => u,
        Err(reason) => {
            Stats::bump(&ctx.stats.rejected_malformed);
            debug!(ctx.log, "malformed push"; "reason" => &reason);
            return bad_request(reason);
        }
    };
    let peer = ctx.peer;
    let sent = match &ctx.pushes {
        Some(x) => {
            x.cast(ExchangeMsg::Pushed(update)).map_err(|e| e.to_string())
        }
        None => ctx
            .router
            .cast(RouterMsg::Import { peer, update })
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = sent {
        Stats::bump(&ctx.stats.router_unavailable);
        warn!(ctx.log, "router gone; push dropped"; "error" => %e);
        return text(StatusCode::SERVICE_UNAVAILABLE, "router unavailable");
    }
    Stats::bump(&ctx.stats.pushes_received);
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .expect("static response")
}

/// Answer a pull with what the router offers this peer.
async fn pull(version: Version, ctx: &ServerCtx) -> Response<Full<Bytes>> {
    let peer = ctx.peer;
    let answer = ctx
        .router
        .call(|r| RouterMsg::PullFor(peer, r), Some(ctx.timeout))
        .await;
    let response = match answer {
        Ok(CallResult::Success(r)) => r,
        Ok(CallResult::Timeout) => {
            Stats::bump(&ctx.stats.router_unavailable);
            warn!(ctx.log, "router did not answer a pull in time");
            return text(StatusCode::SERVICE_UNAVAILABLE, "router timed out");
        }
        Ok(CallResult::SenderError) | Err(_) => {
            Stats::bump(&ctx.stats.router_unavailable);
            return text(StatusCode::SERVICE_UNAVAILABLE, "router unavailable");
        }
    };
    // Written straight from the router's answer, v2 through a borrowing
    // view: the answer is not copied on its way out.
    let items = response.underlay.as_ref().map_or(0, |u| u.len())
        + response.tunnel.as_ref().map_or(0, |t| t.len());
    let mut body = Vec::with_capacity(json_size_hint(items));
    let written = match version {
        Version::V3 => serde_json::to_writer(&mut body, &response),
        Version::V2 => {
            serde_json::to_writer(&mut body, &v2_view::PullResponse(&response))
        }
    };
    drop(response);
    match written {
        Ok(()) => {
            Stats::bump(&ctx.stats.pulls_received);
            Stats::add(&ctx.stats.pull_bytes_sent, body.len());
            Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/json")
                .header(PUSH_LIMIT_HEADER, MAX_BODY)
                .body(Full::new(Bytes::from(body)))
                .expect("static response")
        }
        Err(e) => {
            warn!(ctx.log, "encoding a pull response failed"; "error" => %e);
            text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")
        }
    }
}

/// A push body in `version`, as the router's v3. The body is dropped as
/// soon as it is parsed, so that at most the text and one parsed form, or
/// two parsed forms being converted, are alive at a time.
pub(crate) fn decode_update(
    version: Version,
    body: Bytes,
) -> Result<v3::Update, String> {
    match version {
        Version::V3 => serde_json::from_slice::<v3::Update>(&body)
            .map_err(|e| format!("invalid v3 update: {e}")),
        Version::V2 => {
            let parsed = serde_json::from_slice::<v2::Update>(&body)
                .map_err(|e| format!("invalid v2 update: {e}"));
            drop(body);
            parsed?.try_into().map_err(|e| format!("invalid v2 update: {e}"))
        }
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(format!("{msg}\n"))))
        .expect("static response")
}

fn too_large() -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body larger than {MAX_BODY} bytes"),
    )
}

fn bad_request(mut reason: String) -> Response<Full<Bytes>> {
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    text(StatusCode::BAD_REQUEST, &reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::actor::testing::{fake_router, Seen};
    use futures::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::sync::mpsc;

    fn peer() -> PeerId {
        PeerId { ifindex: 0, addr: "fe80::2".parse().unwrap() }
    }

    async fn rig(
        answer: v3::PullResponse,
    ) -> (ServerCtx, mpsc::UnboundedReceiver<Seen>) {
        let (router, seen) = fake_router(answer).await;
        let ctx = ServerCtx {
            peer: peer(),
            router,
            pushes: None,
            timeout: Duration::from_secs(5),
            stats: Arc::new(Stats::default()),
            log: Logger::root(slog::Discard, slog::o!()),
        };
        (ctx, seen)
    }

    fn req(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    async fn body_of(r: Response<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    const PUSH3: &str = r#"{"underlay":{"announce":[{"destination":"fd00:1::/64","path":["a"]}],"withdraw":[]}}"#;
    const PUSH2: &str = r#"{"underlay":{"announce":[{"destination":{"addr":"fd00:2::","len":64},"path":["b"]}]},"tunnel":{"withdraw":[{"overlay_prefix":{"V4":{"addr":"10.0.0.0","len":8}},"boundary_addr":"fd00::9","vni":5}]}}"#;

    fn pv(dest: &str, path: &str) -> v3::PathVector {
        v3::PathVector {
            destination: dest.parse().unwrap(),
            path: vec![path.to_string()],
        }
    }

    #[tokio::test]
    async fn v3_push_reaches_the_router() {
        let (ctx, mut seen) = rig(Default::default()).await;
        let r = handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let want = v3::Update {
            underlay: Some(v3::UnderlayUpdate {
                announce: [pv("fd00:1::/64", "a")].into(),
                withdraw: Default::default(),
            }),
            tunnel: None,
        };
        assert_eq!(seen.recv().await, Some(Seen::Import(peer(), want)));
        assert_eq!(ctx.stats.snapshot().pushes_received, 1);
    }

    #[tokio::test]
    async fn v2_push_is_converted() {
        let (ctx, mut seen) = rig(Default::default()).await;
        let r = handle(req(Method::PUT, "/v2/push", PUSH2), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let Some(Seen::Import(p, u)) = seen.recv().await else {
            panic!("no import");
        };
        assert_eq!(p, peer());
        assert_eq!(
            u.underlay.unwrap().announce,
            [pv("fd00:2::/64", "b")].into()
        );
        let t = u.tunnel.unwrap();
        assert!(t.announce.is_empty());
        let w = t.withdraw.into_iter().next().unwrap();
        assert_eq!(w.overlay_prefix, "10.0.0.0/8".parse().unwrap());
        assert_eq!(w.metric, 0);
    }

    /// Every malformed body is a 400 with a reason, and nothing reaches the
    /// router: the next good push is the first thing it sees.
    #[tokio::test]
    async fn malformed_pushes_are_refused() {
        let (ctx, mut seen) = rig(Default::default()).await;
        let bad = [
            ("/v3/push", "{not json"),
            (
                "/v3/push",
                r#"{"underlay":{"announce":[{"destination":"fd00::/129","path":[]}]}}"#,
            ),
            (
                "/v3/push",
                r#"{"underlay":{"announce":[{"destination":{"addr":"fd00::","len":64},"path":[]}]}}"#,
            ),
            (
                "/v2/push",
                r#"{"underlay":{"announce":[{"destination":{"addr":"fd00::","len":129},"path":[]}]}}"#,
            ),
            (
                "/v2/push",
                r#"{"tunnel":{"announce":[{"overlay_prefix":{"V4":{"addr":"10.0.0.0","len":33}},"boundary_addr":"fd00::9","vni":5}]}}"#,
            ),
            ("/v2/push", PUSH3),
        ];
        for (path, body) in bad {
            let r = handle(req(Method::PUT, path, body), true, &ctx).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} {body}");
            let reason = body_of(r).await;
            assert!(reason.starts_with("invalid v"), "{reason}");
            assert!(reason.len() <= MAX_REASON + 1);
        }
        let c = ctx.stats.snapshot();
        assert_eq!(c.rejected_malformed, bad.len() as u64);
        assert_eq!(c.pushes_received, 0);
        let r = handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let Some(Seen::Import(_, u)) = seen.recv().await else {
            panic!("no import");
        };
        assert_eq!(u.underlay.unwrap().announce.len(), 1);
    }

    #[tokio::test]
    async fn strangers_unknown_paths_and_wrong_methods() {
        let (ctx, _seen) = rig(Default::default()).await;
        let r = handle(req(Method::PUT, "/v3/push", PUSH3), false, &ctx).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = handle(req(Method::GET, "/v3/pull", ""), false, &ctx).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = handle(req(Method::PUT, "/v4/push", PUSH3), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = handle(req(Method::GET, "/v3/push", ""), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "PUT");
        let r = handle(req(Method::PUT, "/v2/pull", ""), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET");
        let c = ctx.stats.snapshot();
        assert_eq!(c.rejected_forbidden, 2);
        assert_eq!(c.rejected_other, 3);
        assert_eq!(c.pushes_received + c.pulls_received, 0);
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let (ctx, _seen) = rig(Default::default()).await;
        // Declared too large: refused before reading.
        let mut r = req(Method::PUT, "/v3/push", PUSH3);
        r.headers_mut().insert(
            CONTENT_LENGTH,
            (MAX_BODY + 1).to_string().parse().unwrap(),
        );
        let resp = handle(r, true, &ctx).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Undeclared, streamed past the bound (one shared 1 MiB chunk).
        let chunk = Bytes::from(vec![b' '; 1 << 20]);
        let n = MAX_BODY / chunk.len() + 1;
        let frames = stream::iter(
            (0..n)
                .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        let r = Request::builder()
            .method(Method::PUT)
            .uri("/v3/push")
            .body(StreamBody::new(frames))
            .unwrap();
        let resp = handle(r, true, &ctx).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let c = ctx.stats.snapshot();
        assert_eq!(c.rejected_too_large, 2);
        assert_eq!(c.pushes_received, 0);
    }

    #[tokio::test]
    async fn pulls_are_answered_in_the_requested_version() {
        let answer = v3::PullResponse {
            underlay: Some([pv("fd00:7::/64", "me")].into()),
            tunnel: None,
        };
        let (ctx, mut seen) = rig(answer.clone()).await;
        let r = handle(req(Method::GET, "/v3/pull", ""), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[PUSH_LIMIT_HEADER], MAX_BODY.to_string());
        let got: v3::PullResponse =
            serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(got, answer);
        assert_eq!(seen.recv().await, Some(Seen::PullFor(peer())));

        let r = handle(req(Method::GET, "/v2/pull", ""), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[PUSH_LIMIT_HEADER], MAX_BODY.to_string());
        let text = body_of(r).await;
        assert!(text.contains(r#"{"addr":"fd00:7::","len":64}"#), "{text}");
        let got: v2::PullResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(v3::PullResponse::try_from(got).unwrap(), answer);
        assert_eq!(ctx.stats.snapshot().pulls_received, 2);
    }

    #[tokio::test]
    async fn router_gone_is_503() {
        let (ctx, _seen) = rig(Default::default()).await;
        ctx.router.stop_and_wait(None, None).await.unwrap();
        let r = handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = handle(req(Method::GET, "/v3/pull", ""), true, &ctx).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let c = ctx.stats.snapshot();
        assert_eq!(c.router_unavailable, 2);
        assert_eq!(c.pushes_received + c.pulls_received, 0);
    }
}
