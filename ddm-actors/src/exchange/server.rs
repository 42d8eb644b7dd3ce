//! The exchange server: what the peer calls.
//!
//! ```text
//!   accept task ──▶ connection tasks (a JoinSet owned by the accept task)
//!                      │ PUT /v{2,3}/push ──Import────▶ router (cast,
//!                      │                                  with a permit)
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
//! a v3 prefix that does not parse with 400 and a short reason; nothing
//! reaches the router then. (A v2 item whose prefix is longer than its
//! family's addresses is dropped and counted, `items_malformed`, and the
//! rest of the body taken.) Every refusal is counted in the actor's
//! [`Stats`].
//!
//! What one address can make the server hold is bounded, so that a sled
//! that speaks from the peer's address cannot take the daemon's memory:
//!
//! * at most [`MAX_PEER_CONNECTIONS`] connections from the peer and
//!   [`MAX_STRANGER_CONNECTIONS`] from anyone else are served at once; a
//!   connection from the peer past that waits, unread, for a slot until
//!   the exchange timeout, as long as fewer than [`MAX_PEER_WAITING`]
//!   wait already; any other is closed as soon as it is accepted, before
//!   anything is read from it. Both are counted (`connections_refused`);
//! * a push body declared over [`MAX_BODY`] is refused before it is read;
//! * push bodies being read hold a share of a [`BODY_BUDGET`] of bytes
//!   (their declared length; a body of undeclared length holds all of it),
//!   waited for and read within the exchange timeout (408 past it), and
//!   read into one buffer of the declared size: at most [`BODY_BUDGET`]
//!   bytes of push text are held at a time, whatever the number of
//!   connections.
//!
//! Pushes are paced by the router: a push is read and decoded once it has
//! one of [`IMPORTS_IN_FLIGHT`] permits per peer, which the update carries
//! to the router and which is given back once the router has imported it
//! and its dataplane worker has taken the routes that changed (or dropped,
//! if the update is; on a transit, held a little longer while another
//! peer lags behind what the router passed on to it, `router/hold.rs`). A
//! peer whose pushes the router has not taken in yet waits, unread, so
//! decoded updates do not pile up in the actors'
//! mailboxes, nor route changes in front of a kernel that is behind. It
//! waits at most half the exchange timeout ([`PACING_WAIT`]), then is taken
//! without a permit, in one of [`UNPACED_IN_FLIGHT`] slots held alike
//! (until it is imported and its route changes taken). With none free (the router is that far behind,
//! or the peer pushes faster than it imports), the push is answered 429
//! (push again later), its body read and kept nowhere: our daemons send
//! it again after a pause
//! without counting a failure (which would end the session), and an
//! original, which ignores the status, is pulled. So a peer's decoded
//! pushes, wherever they wait, are at most
//! `IMPORTS_IN_FLIGHT + UNPACED_IN_FLIGHT`.
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
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ractor::rpc::CallResult;
use slog::{debug, warn, Logger};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::actor::{ExchangeMsg, ExchangeRef, Stats};
use super::client::json_size_hint;
use super::decode::decode_update;
use super::session::ORIGINAL_PULL_WAIT;
use super::watched::{until_stalled, Moved, Watched};
use super::wire::v2_view;
use crate::router::{RouterMsg, RouterRef};
use ddm_proto::PeerId;
use ddm_proto::Version;

/// Largest push body accepted, and announced in [`PUSH_LIMIT_HEADER`].
///
/// Our own peers cut their pushes at [`MAX_PUSH_ITEMS`] items and at the
/// limit we announce, so for them any bound that holds one item would do.
/// The bound is set by the original daemon instead, which pushes whatever
/// it has to send in one request (a transit passes a whole pulled table on
/// at once): 64 MiB holds a table at the default `--max-prefixes-per-peer`
/// (250,000 destinations, past which the import policy refuses new ones
/// anyway) in v2, the longer encoding, with full-length addresses and
/// four-hop paths of 32-byte hostnames: 226 bytes each, 56.5 MB.
///
/// [`MAX_PUSH_ITEMS`]: super::actor::MAX_PUSH_ITEMS
pub const MAX_BODY: usize = 64 << 20;

/// Connections from the peer's address served at once. The peer's client
/// keeps one connection open and opens another only while that one is
/// busy (a pull overlapping a push), so four leave room to spare; more are
/// closed on accept.
pub const MAX_PEER_CONNECTIONS: usize = 4;

/// Connections from the peer's address that wait, unread, for one of the
/// [`MAX_PEER_CONNECTIONS`] slots (up to the exchange timeout) instead of
/// being closed at once: a burst of requests from an original peer, which
/// ignores a failed push, is then delayed rather than lost. Their bytes
/// stay in the kernel's socket buffers; the daemon holds a descriptor each.
pub const MAX_PEER_WAITING: usize = 16;

/// Connections from other addresses served at once: each is answered 403
/// without its body being read, and closed. None waits.
pub const MAX_STRANGER_CONNECTIONS: usize = 4;

/// Bytes of push bodies held at once, over all connections: two bodies of
/// [`MAX_BODY`]. Our own pushes are far smaller (2,048 items, about 150
/// KB), so many of them fit beside one large push; two of the
/// largest keep the text held under 128 MiB, which leaves room for the
/// rest of the daemon under 256 MiB.
pub const BODY_BUDGET: usize = 2 * MAX_BODY;

/// Response header of a pull answer announcing the largest push body (in
/// bytes, decimal) the answering server takes.
pub const PUSH_LIMIT_HEADER: &str = "x-ddm-max-push-bytes";

/// Header of a pull and of a pull answer: the id of the exchange session
/// (one per exchange actor) that sends it, a decimal `u64`. A pull from a
/// session other than the one whose answer we hold may be the first pull
/// of a restarted peer, and is answered by a pull back (see
/// [`Input::PeerPulled`](super::session::Input::PeerPulled)). The original
/// daemon neither sends nor reads it.
pub const SESSION_HEADER: &str = "x-ddm-session";

/// The session id in `headers`, if there is one and it is a number.
pub(crate) fn session_id(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(SESSION_HEADER)?.to_str().ok()?.trim().parse().ok()
}

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
    /// Where pulls are answered.
    pub router: RouterRef,
    /// The exchange actor, which passes pushes on to the router in order
    /// with its pull answers (held back while a pull is out), and hears of
    /// every pull answered (it may pull the peer back).
    pub exchange: ExchangeRef,
    /// Our session's id, sent on pull answers ([`SESSION_HEADER`]).
    pub session: u64,
    /// Bound on reading a body and on the router's answer to a pull.
    pub timeout: Duration,
    /// The actor's counters.
    pub stats: Arc<Stats>,
    /// [`IMPORTS_IN_FLIGHT`] permits: pushes decoded and not yet imported
    /// (with their routes taken by the dataplane worker).
    pub imports: Arc<Semaphore>,
    /// [`UNPACED_IN_FLIGHT`] slots: pushes taken without one of those
    /// permits, not yet imported.
    pub unpaced: Arc<Semaphore>,
    /// The longest path the import policy takes (`--max-path-len`): a
    /// path is read up to one name past it.
    pub max_path_len: usize,
    /// When the peer's last pull was answered; held while one is answered
    /// (see [`PULL_SPACING`]).
    pub pulls: tokio::sync::Mutex<Option<Instant>>,
    /// Logger.
    pub log: Logger,
}

/// How many pushes of one peer may be decoded and not yet imported by the
/// router (or imported with their route changes still queued for its
/// dataplane worker): two, so that the peer sends its next push while the
/// router imports the last.
///
/// Before, a push was answered as soon as it was decoded, and nothing
/// bounded how many decoded updates waited in the exchange actor's and the
/// router's mailboxes: in the simulated fabric of 548 routers they were a
/// third of the peak heap (174 of 509 MB).
pub const IMPORTS_IN_FLIGHT: usize = 2;

/// A push waits for a permit at most the exchange timeout divided by this
/// (half of it), then is taken without one if one of
/// [`UNPACED_IN_FLIGHT`] slots is free (else answered 429): the rest of
/// the timeout is left for reading its body.
pub const PACING_WAIT: u32 = 2;

/// How many pushes of one peer may be taken without an import permit and
/// not yet imported, with their route changes taken by the dataplane
/// worker (they hold one of these slots instead, as a permit):
/// past them, a push that found no permit in time is answered 429 (push
/// again later; our daemons do, without counting a failure, and an
/// original is pulled). Without the bound, a peer pushing faster than the
/// router imports (or a router far behind) had one more decoded push
/// queued every half timeout per connection, without end.
pub const UNPACED_IN_FLIGHT: usize = 2;

/// A budget of bytes shared by the bodies being read: a body holds its
/// share from before its first byte is read until its text is dropped.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// One permit per byte.
    bytes: Arc<Semaphore>,
    /// The whole budget, in bytes.
    total: u32,
}

/// A share of a [`BodyBudget`], given back when dropped.
#[derive(Debug)]
pub struct BodyShare {
    /// The bytes held, given back when dropped.
    _bytes: OwnedSemaphorePermit,
}

impl BodyBudget {
    /// A budget of `total` bytes (at most `u32::MAX`).
    pub fn new(total: usize) -> Self {
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        BodyBudget { bytes: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// A share for a body of `declared` bytes, or of unknown length (which
    /// takes the whole budget: it may grow up to the bound, and is then
    /// copied once), waited for until `deadline`. `None` past the deadline.
    pub async fn reserve(
        &self,
        declared: Option<u64>,
        deadline: Instant,
    ) -> Option<BodyShare> {
        let want = match declared {
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX).min(self.total),
            None => self.total,
        };
        let acquire = self.bytes.clone().acquire_many_owned(want);
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => Some(BodyShare { _bytes: permit }),
            // The semaphore is never closed; a timeout is the only refusal.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Bytes not held by any body.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// How many connections of one kind are served at once, and how many may
/// wait for a slot; a slot is given back when its connection ends.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    /// One permit per connection served.
    serving: Arc<Semaphore>,
    /// One permit per connection waiting.
    waiting: Arc<Semaphore>,
}

impl ConnectionSlots {
    /// At most `serving` connections at once, `waiting` more waiting.
    pub fn new(serving: usize, waiting: usize) -> Self {
        ConnectionSlots {
            serving: Arc::new(Semaphore::new(serving)),
            waiting: Arc::new(Semaphore::new(waiting)),
        }
    }

    /// A slot, held as long as the returned permit lives: at once if one
    /// is free; else, if fewer than the bound already wait, the first one
    /// given back before `deadline`. `None` when refused.
    pub async fn take(
        &self,
        deadline: Instant,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.serving.clone().try_acquire_owned() {
            return Some(slot);
        }
        let _waiting = self.waiting.clone().try_acquire_owned().ok()?;
        let slot = self.serving.clone().acquire_owned();
        tokio::time::timeout_at(deadline, slot).await.ok()?.ok()
    }
}

/// Why [`read_body`] failed.
#[derive(Debug)]
pub(crate) enum ReadError<E> {
    /// More than the bound arrived.
    TooLarge,
    /// The body's stream failed.
    Body(E),
}

/// Read `body` whole, failing as soon as more than `limit` bytes arrive.
/// A body of known length is read into one buffer of that size (no growth
/// and no final copy); one of unknown length grows, and is copied once.
pub(crate) async fn read_body<B>(
    body: B,
    limit: usize,
) -> Result<Bytes, ReadError<B::Error>>
where
    B: hyper::body::Body<Data = Bytes>,
{
    let exact = body.size_hint().exact();
    if exact.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut buf = Vec::with_capacity(exact.unwrap_or(0) as usize);
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Read `body` until its end or until `at_most` bytes were read, keeping
/// only its first `keep` bytes: an answer's reason (our client), or
/// nothing of a push refused unread (our server).
pub(crate) async fn read_head<B>(
    body: B,
    keep: usize,
    at_most: usize,
) -> Result<Bytes, B::Error>
where
    B: hyper::body::Body<Data = Bytes>,
{
    let (mut kept, mut read) = (Vec::new(), 0);
    let mut body = std::pin::pin!(body);
    while read < at_most {
        let Some(frame) = body.frame().await else { break };
        if let Ok(data) = frame?.into_data() {
            read += data.len();
            let take = data.len().min(keep - kept.len());
            kept.extend_from_slice(&data[..take]);
        }
    }
    Ok(Bytes::from(kept))
}

/// Serve `listener` until the returned task is aborted.
pub fn spawn(listener: TcpListener, ctx: Arc<ServerCtx>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let peer_slots =
            ConnectionSlots::new(MAX_PEER_CONNECTIONS, MAX_PEER_WAITING);
        let stranger_slots = ConnectionSlots::new(MAX_STRANGER_CONNECTIONS, 0);
        let budget = BodyBudget::new(BODY_BUDGET);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, from)) => {
                        let allowed = from.ip() == IpAddr::V6(ctx.peer.addr);
                        if !allowed {
                            debug!(ctx.log, "connection from a stranger";
                                "from" => %from);
                        }
                        let slots = if allowed {
                            peer_slots.clone()
                        } else {
                            stranger_slots.clone()
                        };
                        let (ctx, budget) = (ctx.clone(), budget.clone());
                        conns.spawn(async move {
                            let deadline = Instant::now() + ctx.timeout;
                            let Some(slot) = slots.take(deadline).await else {
                                // Closed unread: nothing of it is buffered.
                                Stats::bump(&ctx.stats.connections_refused);
                                debug!(ctx.log, "too many connections; \
                                    refused"; "from" => %from);
                                return;
                            };
                            serve_connection(stream, allowed, ctx, budget)
                                .await;
                            drop(slot);
                        });
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
    budget: BodyBudget,
) {
    let _ = stream.set_nodelay(true);
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        let budget = budget.clone();
        async move { Ok::<_, Infallible>(handle(req, allowed, &ctx, &budget).await) }
    });
    // The peer may keep its connection open between pushes; a stranger
    // gets one answer. Either way a silent client is dropped in time, and
    // so is one that stops reading an answer (`watched`).
    let idle = if allowed { PEER_IDLE } else { ctx.timeout };
    let moved = Moved::new();
    let stream = Watched::new(stream, Arc::clone(&moved));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(allowed)
        .serve_connection(TokioIo::new(stream), svc);
    // A request may sit silent for up to the exchange timeout (a push
    // waiting for a permit and room for its body, a pull for the router's
    // answer), however long the flag makes that.
    let stalled = idle.max(2 * ctx.timeout);
    match until_stalled(conn, &moved, stalled).await {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            debug!(ctx.log, "exchange connection ended"; "error" => %e);
        }
        None => {
            debug!(ctx.log, "exchange connection closed: nothing moved";
                "for" => ?stalled);
        }
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
    budget: &BodyBudget,
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
        (Op::Push, &Method::PUT) => {
            let answer = push(req, version, ctx, budget).await;
            if !answer.status().is_success() {
                // Lost, if the peer is an original (the session decides).
                let _ = ctx.exchange.cast(ExchangeMsg::PushRefused);
            }
            answer
        }
        (Op::Pull, &Method::GET) => {
            pull(version, session_id(req.headers()), ctx).await
        }
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
    budget: &BodyBudget,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let deadline = Instant::now() + ctx.timeout;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        Stats::bump(&ctx.stats.rejected_too_large);
        return too_large();
    }
    // Paced by the router, within half the timeout (see the module docs);
    // past it, taken in one of a few slots for unpaced pushes, or not at
    // all.
    let permit = ctx.imports.clone().acquire_owned();
    let permit = tokio::time::timeout(ctx.timeout / PACING_WAIT, permit)
        .await
        .ok()
        .and_then(Result::ok);
    let unpaced = permit.is_none();
    let Some(permit) =
        permit.or_else(|| ctx.unpaced.clone().try_acquire_owned().ok())
    else {
        Stats::bump(&ctx.stats.pushes_refused_behind);
        // Read to its end, kept nowhere, within the deadline: a connection
        // closed with bytes unread is reset, which could take the answer
        // from a client still sending (not seen on loopback with 10 MB,
        // but a slower link may).
        // Given up a quarter of the timeout before the deadline, so that
        // the client, whose clock started first, still gets the answer.
        let rest = read_head(req.into_body(), 0, MAX_BODY);
        let _ = tokio::time::timeout_at(deadline - ctx.timeout / 4, rest).await;
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "router behind: push again later",
        );
    };
    let Some(share) = budget.reserve(declared, deadline).await else {
        Stats::bump(&ctx.stats.rejected_other);
        return text(StatusCode::REQUEST_TIMEOUT, "server busy with bodies");
    };
    let body = read_body(req.into_body(), MAX_BODY);
    let body = match tokio::time::timeout_at(deadline, body).await {
        Err(_) => {
            Stats::bump(&ctx.stats.rejected_other);
            return text(StatusCode::REQUEST_TIMEOUT, "body too slow");
        }
        Ok(Err(ReadError::TooLarge)) => {
            Stats::bump(&ctx.stats.rejected_too_large);
            return too_large();
        }
        Ok(Err(ReadError::Body(e))) => {
            Stats::bump(&ctx.stats.rejected_malformed);
            return bad_request(format!("reading body: {e}"));
        }
        Ok(Ok(b)) => b,
    };
    Stats::add(&ctx.stats.push_bytes_received, body.len());
    // Only the parsed update is kept: the text is dropped before the
    // router gets it.
    let decoded = decode_update(version, body, ctx.max_path_len);
    // The text is gone: its share goes back before the router is waited on.
    drop(share);
    let update = match decoded {
        Ok((u, malformed)) => {
            ctx.stats.malformed_items(malformed, "a push", &ctx.log);
            u
        }
        Err(reason) => {
            Stats::bump(&ctx.stats.rejected_malformed);
            debug!(ctx.log, "malformed push"; "reason" => &reason);
            return bad_request(reason);
        }
    };
    // Counted once taken: a push refused after the wait was not.
    let sent = ctx.exchange.cast(ExchangeMsg::Pushed(update, permit));
    if let Err(e) = sent {
        Stats::bump(&ctx.stats.router_unavailable);
        warn!(ctx.log, "exchange actor gone; push dropped"; "error" => %e);
        return text(StatusCode::SERVICE_UNAVAILABLE, "router unavailable");
    }
    if unpaced {
        Stats::bump(&ctx.stats.pushes_unpaced);
    }
    Stats::bump(&ctx.stats.pushes_received);
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .expect("static response")
}

/// Least time between two pull answers to one peer. A peer pulls us when
/// it enters exchange with us (an original retries each solicit interval
/// while that fails); each pull costs the router our whole view for the
/// peer and, from an original, may have us pull the peer back. A peer
/// that pulled in a loop kept the router busy with nothing else; now its
/// pulls are answered one at a time, each at least this long after the
/// last (short against the exchange timeout, 3 s, and half of it, past
/// which a push held for our own pull is taken without a permit, or past
/// [`UNPACED_IN_FLIGHT`] such pushes answered 429).
pub const PULL_SPACING: Duration = Duration::from_millis(250);

/// Answer a pull with what the router offers this peer; once answered,
/// tell the exchange actor (`PeerPulled`), which may pull the peer back.
async fn pull(
    version: Version,
    session: Option<u64>,
    ctx: &ServerCtx,
) -> Response<Full<Bytes>> {
    // Answered within the time the peer waits for it, from its arrival:
    // a pull queued behind others that long is one it has given up on.
    let arrived = Instant::now();
    let deadline = arrived + ctx.timeout;
    let busy = || {
        Stats::bump(&ctx.stats.pulls_busy);
        text(StatusCode::SERVICE_UNAVAILABLE, "busy with earlier pulls")
    };
    let Ok(mut last) =
        tokio::time::timeout_at(deadline, ctx.pulls.lock()).await
    else {
        return busy();
    };
    if let Some(due) = last.map(|t| t + PULL_SPACING) {
        if due >= deadline {
            return busy();
        }
        if Instant::now() < due {
            Stats::bump(&ctx.stats.pulls_paced);
            tokio::time::sleep_until(due).await;
        }
    }
    let answer = answer_pull(version, session, ctx, arrived, deadline).await;
    *last = Some(Instant::now());
    answer
}

/// [`pull`], once its time has come (it `arrived` then, to be answered
/// by `deadline`).
async fn answer_pull(
    version: Version,
    session: Option<u64>,
    ctx: &ServerCtx,
    arrived: Instant,
    deadline: Instant,
) -> Response<Full<Bytes>> {
    let peer = ctx.peer;
    let left = deadline.saturating_duration_since(Instant::now());
    let answer =
        ctx.router.call(|r| RouterMsg::PullFor(peer, r), Some(left)).await;
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
            // An original stops waiting for the answer to begin
            // `ORIGINAL_PULL_WAIT` after it sent the pull.
            let late = arrived.elapsed() >= ORIGINAL_PULL_WAIT;
            let bytes = body.len();
            // The actor is stopping if this fails: nothing to do.
            let msg = ExchangeMsg::PeerPulled { session, bytes, late };
            let _ = ctx.exchange.cast(msg);
            Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/json")
                .header(PUSH_LIMIT_HEADER, MAX_BODY)
                .header(SESSION_HEADER, ctx.session)
                .body(Full::new(Bytes::from(body)))
                .expect("static response")
        }
        Err(e) => {
            warn!(ctx.log, "encoding a pull response failed"; "error" => %e);
            text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed")
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
    use crate::exchange::testing::{fake_router_and_exchange, Seen};
    use crate::exchange::wire::{v2, v3};
    use futures::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::sync::mpsc;

    fn peer() -> PeerId {
        PeerId { ifindex: 0, addr: "fe80::2".parse().unwrap() }
    }

    /// `body` in `version` decodes to `want`, each hostname stored once
    /// and a path equal to the one before it shared.
    fn decodes_exactly(version: Version, body: &str, want: &v3::Update) {
        let got = decode_update(
            version,
            Bytes::from(body.to_string()),
            crate::policy::MAX_PATH_LEN_BOUND,
        );
        let (got, malformed) = got.unwrap();
        assert_eq!(malformed, 0, "{body}");
        assert_eq!(&got.to_wire(), want, "{body}");
        let mut names: Vec<Arc<str>> = Vec::new();
        for u in got.underlay.iter() {
            for p in u.announce.iter().chain(&u.withdraw) {
                for n in p.hostnames().iter() {
                    match names.iter().find(|m| **m == *n) {
                        Some(m) => assert!(Arc::ptr_eq(m, n), "{n}: {body}"),
                        None => names.push(Arc::clone(n)),
                    }
                }
            }
        }
    }

    /// A pushed v3 body decodes exactly as serde's derive reads it, its
    /// hostnames shared; missing halves and fields, `null` halves
    /// and malformed path vectors are taken or refused as before.
    #[test]
    fn pushed_bodies_decode_as_the_wire_types_read_them() {
        let bodies = [
            r#"{"underlay":{"announce":[
                {"destination":"fd00:1::/64","path":["s1","t1"]},
                {"destination":"fd00:3::/64","path":["s3"]}],
              "withdraw":[{"destination":"fd00:2::/64","path":["s1"]}]},
              "tunnel":{"announce":[],"withdraw":[]}}"#,
            "{}",
            r#"{"underlay":null,"tunnel":null}"#,
            r#"{"underlay":{"withdraw":[]}}"#,
        ];
        for body in bodies {
            let want: v3::Update = serde_json::from_str(body).unwrap();
            decodes_exactly(Version::V3, body, &want);
        }
        for bad in [
            r#"{"underlay":{"announce":[{"destination":"fd00:1::/64"}]}}"#,
            r#"{"underlay":{"announce":{}}}"#,
            r#"{"underlay":{"announce":[{"destination":"x","path":[]}]}}"#,
        ] {
            assert!(serde_json::from_str::<v3::Update>(bad).is_err());
            let got = decode_update(
                Version::V3,
                Bytes::from(bad),
                crate::policy::MAX_PATH_LEN_BOUND,
            );
            assert!(got.is_err_and(|e| e.starts_with("invalid v3 update")));
        }
    }

    /// The paths of one origin's prefixes, written one after another, are
    /// one path in the decoded update.
    #[test]
    fn equal_paths_in_a_row_are_one_path() {
        let body = r#"{"underlay":{"announce":[
            {"destination":"fd00:1::/64","path":["s1","t1"]},
            {"destination":"fd00:2::/64","path":["s1","t1"]},
            {"destination":"fd00:3::/64","path":["s1"]}]}}"#;
        let got = decode_update(
            Version::V3,
            Bytes::from(body),
            crate::policy::MAX_PATH_LEN_BOUND,
        )
        .unwrap()
        .0;
        let paths: Vec<_> =
            got.underlay.as_ref().unwrap().announce.iter().collect();
        let ptr = |i: usize| paths[i].hostnames().as_ptr();
        assert_eq!(ptr(0), ptr(1), "the same path");
        assert_ne!(ptr(1), ptr(2), "another path");
    }

    /// A v2 body is read straight into v3, its hostnames shared, to the same
    /// update as parsing it in v2 and converting it (host bits cleared,
    /// duplicates that leaves merged); a body that does not parse is
    /// refused, and an item that does not convert (a prefix longer than
    /// its family's addresses, which v2's `len` can hold) is dropped and
    /// counted, the rest taken.
    #[test]
    fn v2_pushes_are_read_straight_into_v3() {
        let bodies = [
            r#"{"underlay":{"announce":[
                {"destination":{"addr":"fd00:1::","len":64},"path":["s1","t1","x","y","z"]},
                {"destination":{"addr":"fd00:3::1","len":64},"path":["s3"]},
                {"destination":{"addr":"fd00:3::","len":64},"path":["s3"]}],
              "withdraw":[{"destination":{"addr":"fd00:2::","len":48},"path":["s1"]}]},
              "tunnel":{"announce":[{"overlay_prefix":{"V4":{"addr":"10.0.0.0","len":8}},
                "boundary_addr":"fd00::1","vni":7}],"withdraw":[]}}"#,
            "{}",
            r#"{"underlay":null,"tunnel":null}"#,
            r#"{"underlay":{"withdraw":[]}}"#,
        ];
        for body in bodies {
            let v2: v2::Update = serde_json::from_str(body).unwrap();
            decodes_exactly(
                Version::V2,
                body,
                &v3::Update::try_from(v2).unwrap(),
            );
        }
        // A prefix length past its family's, in a path and in a tunnel,
        // beside good items.
        let body = r#"{"underlay":{"announce":[
            {"destination":{"addr":"fd00::","len":129},"path":["a"]},
            {"destination":{"addr":"fd00:1::","len":64},"path":["a"]}],
          "withdraw":[{"destination":{"addr":"fd00::","len":200},"path":["a"]}]},
          "tunnel":{"announce":[
            {"overlay_prefix":{"V4":{"addr":"10.0.0.0","len":33}},"boundary_addr":"fd00::1","vni":7},
            {"overlay_prefix":{"V4":{"addr":"10.0.0.0","len":8}},"boundary_addr":"fd00::1","vni":7}]}}"#;
        let (got, malformed) = decode_update(
            Version::V2,
            Bytes::from(body),
            crate::policy::MAX_PATH_LEN_BOUND,
        )
        .unwrap();
        assert_eq!(malformed, 3);
        let got = got.to_wire();
        let underlay = got.underlay.unwrap();
        assert_eq!(underlay.announce.len(), 1);
        assert!(underlay.withdraw.is_empty());
        assert_eq!(got.tunnel.unwrap().announce.len(), 1);
        for bad in [
            r#"{"underlay":{"announce":[{"destination":{"addr":"fd00::","len":64}}]}}"#,
            r#"{"underlay":{"announce":[{"destination":"fd00::/64","path":["a"]}]}}"#,
        ] {
            let got = decode_update(
                Version::V2,
                Bytes::from(bad),
                crate::policy::MAX_PATH_LEN_BOUND,
            );
            assert!(
                got.is_err_and(|e| e.starts_with("invalid v2 update")),
                "{bad}"
            );
        }
    }

    async fn rig(
        answer: v3::PullResponse,
    ) -> (ServerCtx, mpsc::UnboundedReceiver<Seen>) {
        let (router, exchange, seen) = fake_router_and_exchange(answer).await;
        let ctx = ServerCtx {
            peer: peer(),
            router,
            exchange,
            session: 7,
            timeout: Duration::from_secs(5),
            stats: Arc::new(Stats::default()),
            imports: Arc::new(Semaphore::new(IMPORTS_IN_FLIGHT)),
            unpaced: Arc::new(Semaphore::new(UNPACED_IN_FLIGHT)),
            max_path_len: crate::policy::MAX_PATH_LEN_BOUND,
            pulls: Default::default(),
            log: Logger::root(slog::Discard, slog::o!()),
        };
        (ctx, seen)
    }

    fn budget() -> BodyBudget {
        BodyBudget::new(BODY_BUDGET)
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
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &budget())
                .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let want = v3::Update {
            underlay: Some(v3::UnderlayUpdate {
                announce: [pv("fd00:1::/64", "a")].into(),
                withdraw: Default::default(),
            }),
            tunnel: None,
        };
        assert_eq!(seen.recv().await, Some(Seen::Pushed(want)));
        assert_eq!(ctx.stats.snapshot().pushes_received, 1);
    }

    #[tokio::test]
    async fn v2_push_is_converted() {
        let (ctx, mut seen) = rig(Default::default()).await;
        let r =
            handle(req(Method::PUT, "/v2/push", PUSH2), true, &ctx, &budget())
                .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let Some(Seen::Pushed(u)) = seen.recv().await else {
            panic!("no push");
        };
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
    /// router: the next good push is the first thing it sees. The exchange
    /// actor hears of each refusal (an original never sends a push again).
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
            ("/v2/push", PUSH3),
        ];
        for (path, body) in bad {
            let r = handle(req(Method::PUT, path, body), true, &ctx, &budget())
                .await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path} {body}");
            let reason = body_of(r).await;
            assert!(reason.starts_with("invalid v"), "{reason}");
            assert!(reason.len() <= MAX_REASON + 1);
        }
        let c = ctx.stats.snapshot();
        assert_eq!(c.rejected_malformed, bad.len() as u64);
        assert_eq!(c.pushes_received, 0);
        for _ in bad {
            assert_eq!(seen.recv().await, Some(Seen::PushRefused));
        }
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &budget())
                .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let Some(Seen::Pushed(u)) = seen.recv().await else {
            panic!("no push");
        };
        assert_eq!(u.underlay.unwrap().announce.len(), 1);
        // A v2 item whose prefix is longer than its family's is dropped
        // and counted, not the whole push refused (an original passes on
        // whatever it took).
        for body in [
            r#"{"underlay":{"announce":[{"destination":{"addr":"fd00::","len":129},"path":[]}]}}"#,
            r#"{"tunnel":{"announce":[{"overlay_prefix":{"V4":{"addr":"10.0.0.0","len":33}},"boundary_addr":"fd00::9","vni":5}]}}"#,
        ] {
            let r = handle(
                req(Method::PUT, "/v2/push", body),
                true,
                &ctx,
                &budget(),
            )
            .await;
            assert_eq!(r.status(), StatusCode::NO_CONTENT, "{body}");
            let Some(Seen::Pushed(u)) = seen.recv().await else {
                panic!("no push");
            };
            let items = u.underlay.map_or(0, |u| u.announce.len())
                + u.tunnel.map_or(0, |t| t.announce.len());
            assert_eq!(items, 0, "{body}");
        }
        let c = ctx.stats.snapshot();
        assert_eq!(
            (c.items_malformed, c.rejected_malformed),
            (2, bad.len() as u64)
        );
    }

    #[tokio::test]
    async fn strangers_unknown_paths_and_wrong_methods() {
        let (ctx, _seen) = rig(Default::default()).await;
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), false, &ctx, &budget())
                .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r =
            handle(req(Method::GET, "/v3/pull", ""), false, &ctx, &budget())
                .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r =
            handle(req(Method::PUT, "/v4/push", PUSH3), true, &ctx, &budget())
                .await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = handle(req(Method::GET, "/v3/push", ""), true, &ctx, &budget())
            .await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "PUT");
        let r = handle(req(Method::PUT, "/v2/pull", ""), true, &ctx, &budget())
            .await;
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
        let resp = handle(r, true, &ctx, &budget()).await;
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
        let resp = handle(r, true, &ctx, &budget()).await;
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
        let r = handle(req(Method::GET, "/v3/pull", ""), true, &ctx, &budget())
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[PUSH_LIMIT_HEADER], MAX_BODY.to_string());
        let got: v3::PullResponse =
            serde_json::from_str(&body_of(r).await).unwrap();
        assert_eq!(got, answer);
        assert_eq!(seen.recv().await, Some(Seen::PullFor(peer())));
        assert_eq!(seen.recv().await, Some(Seen::PeerPulled(None, false)));

        let r = handle(req(Method::GET, "/v2/pull", ""), true, &ctx, &budget())
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[PUSH_LIMIT_HEADER], MAX_BODY.to_string());
        let text = body_of(r).await;
        assert!(text.contains(r#"{"addr":"fd00:7::","len":64}"#), "{text}");
        let got: v2::PullResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(v3::PullResponse::try_from(got).unwrap(), answer);
        assert_eq!(ctx.stats.snapshot().pulls_received, 2);
    }

    /// A pull names the pulling session to the exchange actor, and the
    /// answer names ours.
    #[tokio::test]
    async fn pulls_carry_session_ids_both_ways() {
        let (ctx, mut seen) = rig(Default::default()).await;
        let mut r = req(Method::GET, "/v3/pull", "");
        r.headers_mut().insert(SESSION_HEADER, HeaderValue::from(42u64));
        let r = handle(r, true, &ctx, &budget()).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(session_id(r.headers()), Some(ctx.session));
        assert_eq!(seen.recv().await, Some(Seen::PullFor(peer())));
        assert_eq!(seen.recv().await, Some(Seen::PeerPulled(Some(42), false)));
    }

    /// A peer's pulls are answered one at a time, each at least
    /// `PULL_SPACING` after the last: four at once take three spacings,
    /// and three of them count as paced. Those three are answered
    /// `ORIGINAL_PULL_WAIT` or more after they arrived: the exchange actor
    /// hears they were late.
    #[tokio::test(start_paused = true)]
    async fn a_peer_pulling_in_a_loop_is_answered_at_a_pace() {
        let (ctx, mut seen) = rig(Default::default()).await;
        let started = Instant::now();
        let budget = budget();
        let pull =
            || handle(req(Method::GET, "/v3/pull", ""), true, &ctx, &budget);
        let answers = futures::future::join_all((0..4).map(|_| pull())).await;
        assert!(answers.iter().all(|r| r.status() == StatusCode::OK));
        let took = started.elapsed();
        assert!(took >= 3 * PULL_SPACING, "{took:?}");
        assert!(took < 4 * PULL_SPACING, "{took:?}");
        let c = ctx.stats.snapshot();
        assert_eq!((c.pulls_received, c.pulls_paced), (4, 3));
        let mut late = Vec::new();
        while late.len() < 4 {
            let s = seen.recv().await.expect("fake exchange actor gone");
            if let Seen::PeerPulled(None, l) = s {
                late.push(l);
            }
        }
        assert_eq!(late, [false, true, true, true]);
    }

    /// Pulls queued past the exchange timeout (5 s in the rig: twenty
    /// spacings) are answered 503 and counted as busy, not as the router
    /// being unavailable: it answered every pull it was asked.
    #[tokio::test(start_paused = true)]
    async fn pulls_queued_past_the_timeout_are_counted_busy() {
        let (ctx, _seen) = rig(Default::default()).await;
        let budget = budget();
        let pull =
            || handle(req(Method::GET, "/v3/pull", ""), true, &ctx, &budget);
        let answers = futures::future::join_all((0..24).map(|_| pull())).await;
        let ok = answers.iter().filter(|r| r.status() == StatusCode::OK);
        let busy = answers
            .iter()
            .filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((ok.count(), busy.count()), (20, 4));
        let c = ctx.stats.snapshot();
        assert_eq!((c.pulls_received, c.pulls_busy), (20, 4));
        assert_eq!(c.router_unavailable, 0);
    }

    /// With the router gone a pull is 503 and the exchange actor hears
    /// nothing of it; with the exchange actor gone, a push is 503.
    #[tokio::test]
    async fn router_gone_is_503() {
        let (ctx, mut seen) = rig(Default::default()).await;
        ctx.exchange.stop_and_wait(None, None).await.unwrap();
        ctx.router.stop_and_wait(None, None).await.unwrap();
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &budget())
                .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = handle(req(Method::GET, "/v3/pull", ""), true, &ctx, &budget())
            .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let c = ctx.stats.snapshot();
        assert_eq!(c.router_unavailable, 2);
        assert_eq!(c.pushes_received + c.pulls_received, 0);
        assert_eq!(seen.try_recv().ok(), None);
    }

    /// Past the served bound, a few connections wait until their deadline
    /// for a slot and take the first one given back; past the waiting
    /// bound, a connection is refused at once.
    #[tokio::test(start_paused = true)]
    async fn connection_slots_serve_wait_and_refuse() {
        let slots = ConnectionSlots::new(2, 1);
        let deadline = Instant::now() + Duration::from_secs(3);
        let first = slots.take(deadline).await.expect("a free slot");
        let _second = slots.take(deadline).await.expect("a free slot");

        // One waits; meanwhile another is refused at once.
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(deadline).await })
        };
        tokio::task::yield_now().await;
        let now = Instant::now();
        assert!(slots.take(deadline).await.is_none(), "two waiting");
        assert_eq!(Instant::now(), now, "refused without waiting");
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        let got = waiter.await.unwrap();
        assert!(got.is_some(), "the waiter took the slot given back");
        assert!(Instant::now() < deadline);

        // No slot comes back: a waiter is refused at its deadline.
        let start = Instant::now();
        let deadline = start + Duration::from_secs(3);
        assert!(slots.take(deadline).await.is_none());
        assert_eq!(Instant::now(), deadline);
    }

    /// Two bodies of the largest size fit the budget; a third waits for
    /// one of them, and is refused at its deadline if none ends.
    #[tokio::test(start_paused = true)]
    async fn body_budget_waits_until_the_deadline() {
        let budget = budget();
        let deadline = Instant::now() + Duration::from_secs(3);
        let big = Some(MAX_BODY as u64);
        let a = budget.reserve(big, deadline).await.expect("first");
        let _b = budget.reserve(big, deadline).await.expect("second");
        assert_eq!(budget.available(), 0);
        let started = Instant::now();
        assert!(budget.reserve(Some(1), deadline).await.is_none());
        assert_eq!(Instant::now(), started + Duration::from_secs(3));

        // A waiter gets its share as soon as one is given back.
        let deadline = Instant::now() + Duration::from_secs(3);
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(big, deadline).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a);
        let got = waiter.await.unwrap();
        assert!(got.is_some());
        assert!(Instant::now() < deadline);
    }

    /// A body of unknown length takes the whole budget: it waits for every
    /// other body, and every other body waits for it.
    #[tokio::test(start_paused = true)]
    async fn undeclared_bodies_take_the_whole_budget() {
        let budget = budget();
        let deadline = Instant::now() + Duration::from_secs(1);
        let small = budget.reserve(Some(100), deadline).await.unwrap();
        assert!(budget.reserve(None, deadline).await.is_none());
        drop(small);
        let all = budget.reserve(None, deadline).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(budget.reserve(Some(1), deadline).await.is_none());
        drop(all);
        assert_eq!(budget.available(), BODY_BUDGET);
    }

    /// A push is read only when the router has taken in all but
    /// [`IMPORTS_IN_FLIGHT`] - 1 of the peer's earlier ones (imported, their
    /// routes taken by the dataplane worker), or once half the timeout has
    /// passed, in one of [`UNPACED_IN_FLIGHT`] slots; with none free, it is
    /// answered 429.
    #[tokio::test(start_paused = true)]
    async fn a_push_waits_for_the_router_to_import_those_before_it() {
        let (ctx, mut seen) = rig(Default::default()).await;
        let behind = || {
            ctx.imports
                .clone()
                .try_acquire_many_owned(IMPORTS_IN_FLIGHT as u32)
                .expect("no push in flight")
        };
        // The router has not imported the peer's last pushes yet: the next
        // one is not read ...
        let busy = behind();
        let bodies = budget();
        let push =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &bodies);
        tokio::pin!(push);
        let early = tokio::time::timeout(Duration::from_secs(1), &mut push);
        assert!(early.await.is_err(), "answered while the router was behind");
        assert_eq!(ctx.stats.snapshot().pushes_received, 0);
        // ... until it catches up; the update carries its permit on (the
        // stand-in exchange drops it, as a router that took it in would).
        drop(busy);
        assert_eq!(push.await.status(), StatusCode::NO_CONTENT);
        assert!(matches!(seen.recv().await, Some(Seen::Pushed(_))));
        // A router that does not catch up: after half the timeout the
        // push is taken anyway, without a permit, and not refused.
        let _busy = behind();
        let start = tokio::time::Instant::now();
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &bodies)
                .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(start.elapsed(), ctx.timeout / PACING_WAIT);
        assert!(matches!(seen.recv().await, Some(Seen::Pushed(_))));
        let c = ctx.stats.snapshot();
        assert_eq!((c.pushes_received, c.rejected_other), (2, 0));
        assert_eq!(c.pushes_unpaced, 1);
        // With as many pushes taken so as `UNPACED_IN_FLIGHT` and not yet
        // imported, one more that finds no permit in time is answered 429
        // (push again later), its body read and dropped, and counted: a peer cannot
        // make us hold ever more decoded pushes.
        let unpaced = ctx
            .unpaced
            .clone()
            .try_acquire_many_owned(UNPACED_IN_FLIGHT as u32)
            .expect("no unpaced push in flight");
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &bodies)
                .await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(seen.recv().await, Some(Seen::PushRefused));
        let c = ctx.stats.snapshot();
        assert_eq!((c.pushes_received, c.pushes_refused_behind), (2, 1));
        assert_eq!(c.push_bytes_received, 2 * PUSH3.len() as u64);
        // A slot given back (that push imported): taken again.
        drop(unpaced);
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &bodies)
                .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(ctx.stats.snapshot().pushes_unpaced, 2);
    }

    /// A push that finds the budget taken is answered 408 at the deadline
    /// without its body being read, and counted.
    #[tokio::test(start_paused = true)]
    async fn push_without_budget_is_refused_in_time() {
        let (ctx, _seen) = rig(Default::default()).await;
        let budget = budget();
        let far = Instant::now() + Duration::from_secs(3600);
        let _all = budget.reserve(None, far).await.unwrap();
        let r =
            handle(req(Method::PUT, "/v3/push", PUSH3), true, &ctx, &budget)
                .await;
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        let c = ctx.stats.snapshot();
        assert_eq!(c.rejected_other, 1);
        assert_eq!(c.pushes_received, 0);
    }

    #[tokio::test]
    async fn read_body_reads_exactly_and_bounds_the_rest() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let got = read_body(body, 10).await.unwrap();
        assert_eq!(&got[..], b"0123456789");
        // Known length over the bound: refused before reading.
        let body = Full::new(Bytes::from_static(b"0123456789"));
        assert!(matches!(read_body(body, 9).await, Err(ReadError::TooLarge)));
        // Unknown length: refused on the frame that crosses the bound.
        let frames = stream::iter((0..4).map(|_| {
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"abc")))
        }));
        let r = read_body(StreamBody::new(frames), 11).await;
        assert!(matches!(r, Err(ReadError::TooLarge)));
        let frames = stream::iter((0..4).map(|_| {
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"abc")))
        }));
        assert_eq!(
            read_body(StreamBody::new(frames), 12).await.unwrap().len(),
            12
        );
    }

    /// Over a real socket, our client pushing a body of about 3 MB to a
    /// server whose router is behind (no import permit, no unpaced slot)
    /// gets the 429, which the session takes as push again later, not as
    /// a failure.
    #[tokio::test]
    async fn a_large_push_refused_for_a_router_behind_is_answered_429() {
        let (mut ctx, mut seen) = rig(Default::default()).await;
        ctx.peer.addr = std::net::Ipv6Addr::LOCALHOST;
        ctx.timeout = Duration::from_secs(3);
        let ctx = Arc::new(ctx);
        let _imports = ctx
            .imports
            .clone()
            .try_acquire_many_owned(IMPORTS_IN_FLIGHT as u32)
            .unwrap();
        let _unpaced = ctx
            .unpaced
            .clone()
            .try_acquire_many_owned(UNPACED_IN_FLIGHT as u32)
            .unwrap();
        let listener = bind("[::1]:0".parse().unwrap()).unwrap();
        let std::net::SocketAddr::V6(addr) = listener.local_addr().unwrap()
        else {
            unreachable!("bound to an IPv6 address")
        };
        let server = spawn(listener, ctx.clone());
        let announce = (0..40_000u32)
            .map(|i| v3::PathVector {
                destination: format!(
                    "fd00:{:x}:{:x}::/64",
                    i >> 16,
                    i & 0xffff
                )
                .parse()
                .unwrap(),
                path: vec!["a-long-enough-hostname".to_string(); 2],
            })
            .collect();
        let update = super::super::outgoing::OutUpdate::from(v3::Update {
            underlay: Some(v3::UnderlayUpdate {
                announce,
                withdraw: Default::default(),
            }),
            tunnel: None,
        });
        let client = super::super::client::Client::new(
            addr,
            Version::V3,
            Duration::from_secs(5),
        );
        let r = client.push(&update).await;
        assert!(
            matches!(&r, Err(e) if e.is_router_behind()),
            "{:?}",
            r.map_err(|e| e.to_string())
        );
        assert_eq!(seen.recv().await, Some(Seen::PushRefused));
        let c = ctx.stats.snapshot();
        assert_eq!((c.pushes_refused_behind, c.pushes_received), (1, 0));
        server.abort();
    }

    /// Over a real socket: past [`MAX_PEER_CONNECTIONS`] open connections
    /// from the peer, [`MAX_PEER_WAITING`] more wait unanswered and the
    /// next is closed unread, all counted; once a served one closes, a
    /// new one is served.
    #[tokio::test]
    async fn connections_past_the_cap_wait_or_are_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut ctx, _seen) = rig(Default::default()).await;
        ctx.peer.addr = std::net::Ipv6Addr::LOCALHOST;
        ctx.timeout = Duration::from_millis(300);
        let ctx = Arc::new(ctx);
        let listener = bind("[::1]:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = spawn(listener, ctx.clone());
        let pull = b"GET /v3/pull HTTP/1.1\r\nhost: x\r\n\r\n";

        // Each held connection is known to be served: it got an answer.
        let mut held = Vec::new();
        for _ in 0..MAX_PEER_CONNECTIONS {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(pull).await.unwrap();
            let mut buf = [0u8; 12];
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"HTTP/1.1 200");
            held.push(c);
        }
        // The waiting ones and one more: none is answered, all are closed
        // (the waiting ones at their deadline).
        let mut extra = Vec::new();
        for _ in 0..=MAX_PEER_WAITING {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let _ = c.write_all(pull).await;
            extra.push(c);
        }
        for mut c in extra {
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf).await;
            assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
        }
        assert_eq!(
            ctx.stats.snapshot().connections_refused,
            MAX_PEER_WAITING as u64 + 1
        );

        drop(held.pop());
        // The slot comes back when the server sees the close.
        let served_again = async {
            loop {
                if let Ok(mut c) = TcpStream::connect(addr).await {
                    let _ = c.write_all(pull).await;
                    let mut buf = [0u8; 12];
                    if c.read_exact(&mut buf).await.is_ok()
                        && &buf == b"HTTP/1.1 200"
                    {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), served_again)
            .await
            .expect("a connection served once a slot was given back");
        server.abort();
    }
}
