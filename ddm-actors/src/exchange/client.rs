//! The exchange client: calls the peer's server.
//!
//! HTTP/1.1 through hyper-util's pooled client to `[peer%ifindex]:port`,
//! speaking the version the peer advertises. A connector of our own
//! (`Dialer`) dials the peer's link-local address with its scope id,
//! from our bound address when there is one. The pool keeps at most one
//! idle kept-alive connection; the client is cheap to clone and its clones
//! share the pool, and a request that finds the connection busy or gone
//! opens another. A request on a reused connection that the peer closed
//! before it was sent is tried once more on a fresh one (hyper-util's
//! retry of canceled requests; pushes and pulls are idempotent). Every
//! request, connecting included, is bounded by the timeout. Dropping the
//! last clone closes the connection.
//!
//! A pull answer may announce the largest push body the peer's server
//! takes ([`PUSH_LIMIT_HEADER`]); the client hands it to the exchange
//! actor with the answer. The original daemon announces nothing.
//!
//! A pull's answer is read against [`MAX_PULL_BODY`], the client's own
//! bound (a pull answer is a whole table, far larger than any push), into
//! one buffer of the declared length. Any other answer (a push's, or an
//! error) is read only as far as [`ANSWER_PREFIX`]: it is a reason shown
//! in a log line, or nothing, and a peer cannot make us hold more.

use std::future::Future;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::outgoing::{OutPull, OutUpdate, V2Update};
use super::server::{
    read_body, read_head, session_id, ReadError, PUSH_LIMIT_HEADER,
    SESSION_HEADER,
};

use ddm_proto::Version;

/// Why a request to the peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("connecting to {addr}: {error}")]
    Connect {
        /// Where we tried.
        addr: SocketAddrV6,
        /// Why it failed.
        error: std::io::Error,
    },
    /// Reading the answer failed (connection reset, protocol error).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request failed in hyper-util's client (the connection closed
    /// or broke before an answer, a protocol error).
    #[error("HTTP request: {0}")]
    Request(hyper_util::client::legacy::Error),
    /// The whole request took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer answered with an error status.
    #[error("peer answered {status}: {reason}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The start of the body it sent.
        reason: String,
    },
    /// The answer's body exceeded the bound.
    #[error("answer larger than {MAX_PULL_BODY} bytes")]
    TooLarge,
    /// The answer could not be decoded or holds an invalid prefix.
    #[error("invalid answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether the peer refused a request as too large: `413`, or `400`,
    /// which is what the original daemon answers to a body over its limit
    /// (its framework's "request body exceeded maximum size"). A refused
    /// push is split, never retried as it was.
    pub fn is_refused_as_too_large(&self) -> bool {
        matches!(
            self.status(),
            Some(StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE)
        )
    }

    /// Whether the peer answered that its router is behind (429, our
    /// server's answer past its import pace): push again later.
    pub fn is_router_behind(&self) -> bool {
        self.status() == Some(StatusCode::TOO_MANY_REQUESTS)
    }

    /// The status the peer answered with, if it answered one not 2xx.
    fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Largest answer body read from a peer: a pull answer is the peer's
/// whole table. 256 MiB admit 1,000,000 path vectors in v2 (the longer
/// encoding) with full-length addresses and four-hop paths of 32-byte
/// hostnames (226 bytes each: 226 MB), that is 250,000 destinations (the
/// default `--max-prefixes-per-peer`) each heard along four paths; or
/// 250,000 path vectors with long paths, sixteen hops of 32-byte
/// hostnames (646 bytes each: 162 MB). Pulls are ours to start, one at a
/// time per peer, so this bound is not multiplied by an attacker; and the
/// answer is read as a push is (`decode.rs`: each hostname stored once,
/// a path cut one name past the longest the policy takes), so its text
/// does not grow into one allocation per name as it is read.
pub const MAX_PULL_BODY: usize = 256 << 20;

/// How much of an answer that is not a pull's whole table is read: an
/// error's reason, or the empty body of a push's answer.
pub const ANSWER_PREFIX: usize = 4096;

/// Most bytes of an error answer's body kept as its reason.
const REASON_BYTES: usize = 200;

/// An error status with its reason: the start of the answer's body.
pub(crate) fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(&body[..body.len().min(REASON_BYTES)]);
    ClientError::Status { status, reason: text.trim().to_string() }
}

/// A pull answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The peer's full set, in v3's compact form.
    pub response: OutPull,
    /// The largest push body the peer announced it takes, if it did.
    pub push_limit: Option<usize>,
    /// The answer's body size in bytes.
    pub bytes: usize,
    /// The id of the peer's session that answered (`SESSION_HEADER`), if
    /// it sent one.
    pub session: Option<u64>,
    /// Items of the answer dropped as malformed (see `decode`).
    pub malformed: usize,
}

/// The push limit announced in `headers`, if one is there and is a number.
fn announced_push_limit(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(PUSH_LIMIT_HEADER)?.to_str().ok()?;
    let bytes: u64 = value.trim().parse().ok()?;
    Some(usize::try_from(bytes).unwrap_or(usize::MAX))
}

/// The push and pull paths of `version`.
pub(crate) fn paths(version: Version) -> (&'static str, &'static str) {
    match version {
        Version::V3 => ("/v3/push", "/v3/pull"),
        Version::V2 => ("/v2/push", "/v2/pull"),
    }
}

/// The body of a push of `update` in `version`, written straight from its
/// compact form.
pub(crate) fn encode_push(
    version: Version,
    update: &OutUpdate,
) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::with_capacity(json_size_hint(update.len()));
    let written = match version {
        Version::V3 => serde_json::to_writer(&mut body, update),
        Version::V2 => serde_json::to_writer(&mut body, &V2Update(update)),
    };
    written.map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(body)
}

/// A pull answer in `version` (its headers and body), as v3 with the push
/// limit it announces.
pub(crate) fn decode_pull(
    version: Version,
    headers: &HeaderMap,
    body: Bytes,
    max_path_len: usize,
) -> Result<Pulled, ClientError> {
    let push_limit = announced_push_limit(headers);
    let session = session_id(headers);
    let bytes = body.len();
    let (response, malformed) =
        super::decode::decode_pull_answer(version, &body, max_path_len)
            .map_err(ClientError::Decode)?;
    Ok(Pulled { response, push_limit, bytes, session, malformed })
}

/// A first guess at the JSON size of `items` path vectors or tunnel
/// origins (about 50 to 110 bytes each), so that the body is written
/// without repeated regrowth.
pub(crate) fn json_size_hint(items: usize) -> usize {
    items.saturating_mul(80).saturating_add(64)
}

/// Dials the peer for hyper-util's pool: the peer's link-local
/// `SocketAddrV6` with its scope id, from our bound address if there is
/// one. The URI the pool hands over only names the pool's key; the
/// address dialled is always this one.
#[derive(Clone, Debug)]
struct Dialer {
    /// The peer's server.
    addr: SocketAddrV6,
    /// Our address to connect from, if bound.
    local: Option<Ipv6Addr>,
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<
        Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, local) = (self.addr, self.local);
        Box::pin(async move {
            let stream = match local {
                None => TcpStream::connect(addr).await?,
                Some(local) => {
                    let socket = tokio::net::TcpSocket::new_v6()?;
                    let from = SocketAddrV6::new(local, 0, 0, addr.scope_id());
                    socket.bind(from.into())?;
                    socket.connect(addr.into()).await?
                }
            };
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}

/// A client of one peer's exchange server.
#[derive(Clone)]
pub struct Client {
    /// The shared part.
    inner: Arc<Inner>,
}

/// What every clone shares.
struct Inner {
    /// The peer's server.
    addr: SocketAddrV6,
    /// The version the peer speaks.
    version: Version,
    /// Bound on each request.
    timeout: Duration,
    /// hyper-util's pooled client: at most one idle kept-alive
    /// connection, dialled by [`Dialer`].
    http: HttpClient<Dialer, Full<Bytes>>,
    /// `http://[addr]:port/vN/push`, built once.
    push_uri: Uri,
    /// `http://[addr]:port/vN/pull`, built once.
    pull_uri: Uri,
    /// `[addr]:port`, the `Host` header, built once.
    host: HeaderValue,
}

impl Inner {
    /// The shared part for the server at `addr`, dialled from `local`.
    fn new(
        addr: SocketAddrV6,
        local: Option<Ipv6Addr>,
        version: Version,
        timeout: Duration,
    ) -> Inner {
        let http = HttpClient::builder(TokioExecutor::new())
            // One kept-alive connection per peer, kept until the peer
            // closes it or the last clone is dropped.
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(None)
            .build(Dialer { addr, local });
        let authority = format!("[{}]:{}", addr.ip(), addr.port());
        let (push, pull) = paths(version);
        let uri = |path: &str| {
            Uri::try_from(format!("http://{authority}{path}"))
                .expect("an IPv6 address and a port make a valid URI")
        };
        Inner {
            addr,
            version,
            timeout,
            http,
            push_uri: uri(push),
            pull_uri: uri(pull),
            host: HeaderValue::try_from(authority)
                .expect("an IPv6 address and a port make a valid header"),
        }
    }
}

impl Client {
    /// A client of the server at `addr` (scope id = interface index).
    pub fn new(
        addr: SocketAddrV6,
        version: Version,
        timeout: Duration,
    ) -> Self {
        Client { inner: Arc::new(Inner::new(addr, None, version, timeout)) }
    }

    /// The same client, its connections made from `local` (port 0: any).
    ///
    /// The peer's server accepts only the address it discovered us by; a
    /// second link-local address on the interface (an operator's, a
    /// renumbering in progress) would otherwise be the kernel's choice of
    /// source, and every request would be refused.
    pub fn bound_to(self, local: std::net::Ipv6Addr) -> Self {
        let i = &self.inner;
        let inner = Inner::new(i.addr, Some(local), i.version, i.timeout);
        Client { inner: Arc::new(inner) }
    }

    /// The peer's server.
    pub fn addr(&self) -> SocketAddrV6 {
        self.inner.addr
    }

    /// The version spoken with the peer.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// `PUT /vN/push` of `update`, serialised straight from its compact
    /// form in either version: nothing is copied but the JSON. Returns the
    /// body's size in bytes.
    pub async fn push(&self, update: &OutUpdate) -> Result<usize, ClientError> {
        let body = encode_push(self.inner.version, update)?;
        let bytes = body.len();
        let uri = self.inner.push_uri.clone();
        self.request(Method::PUT, uri, Bytes::from(body), None).await?;
        Ok(bytes)
    }

    /// `GET /vN/pull`, converted to v3, with the push limit and the
    /// session id the peer announced; `session`, our session's id, is
    /// sent as [`SESSION_HEADER`].
    pub async fn pull(
        &self,
        session: Option<u64>,
        max_path_len: usize,
    ) -> Result<Pulled, ClientError> {
        let uri = self.inner.pull_uri.clone();
        let (headers, body) =
            self.request(Method::GET, uri, Bytes::new(), session).await?;
        decode_pull(self.inner.version, &headers, body, max_path_len)
    }

    /// One request, bounded by the timeout (connecting and reading the
    /// answer included); the answer's headers and body on success.
    async fn request(
        &self,
        method: Method,
        uri: Uri,
        body: Bytes,
        session: Option<u64>,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let t = self.inner.timeout;
        let req = self.request_unbounded(method, uri, body, session);
        tokio::time::timeout(t, req)
            .await
            .map_err(|_| ClientError::Timeout(t))?
    }

    /// One request through the pool. A request on a reused connection
    /// that the peer closed before it was sent is retried on a fresh one
    /// by hyper-util (pushes and pulls are idempotent).
    async fn request_unbounded(
        &self,
        method: Method,
        uri: Uri,
        body: Bytes,
        session: Option<u64>,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let pull = method == Method::GET;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.inner.host.clone());
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        if let Some(id) = session {
            req = req.header(SESSION_HEADER, id);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = self.inner.http.request(req).await.map_err(|e| {
            if !e.is_connect() {
                return ClientError::Request(e);
            }
            let error = match std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
            {
                Some(io) => std::io::Error::new(io.kind(), io.to_string()),
                None => std::io::Error::other(e.to_string()),
            };
            ClientError::Connect { addr: self.inner.addr, error }
        })?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = if status.is_success() && pull {
            match read_body(body, MAX_PULL_BODY).await {
                Ok(b) => b,
                Err(ReadError::TooLarge) => return Err(ClientError::TooLarge),
                Err(ReadError::Body(e)) => return Err(ClientError::Http(e)),
            }
        } else {
            // The status is the answer: a body cut short (a server that
            // closes once it has answered) loses only the reason.
            read_head(body, REASON_BYTES, ANSWER_PREFIX)
                .await
                .unwrap_or_default()
        };
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        Ok((parts.headers, body))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use http::Response;
    use hyper::service::service_fn;

    use super::*;

    /// A server on `[::1]` that answers every request with an empty v3
    /// pull answer; counts the connections it accepted and records the
    /// last peer address.
    async fn server(
    ) -> (SocketAddrV6, Arc<AtomicUsize>, Arc<Mutex<Option<SocketAddr>>>) {
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let SocketAddr::V6(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound to an IPv6 address")
        };
        let accepted = Arc::new(AtomicUsize::new(0));
        let from = Arc::new(Mutex::new(None));
        let (a, f) = (Arc::clone(&accepted), Arc::clone(&from));
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                *f.lock().unwrap() = Some(peer);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(
                            Full::new(Bytes::from_static(b"{}")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, accepted, from)
    }

    /// Requests in turn share one kept-alive connection of the pool, made
    /// from the bound address.
    #[tokio::test]
    async fn requests_reuse_one_connection_from_the_bound_address() {
        let (addr, accepted, from) = server().await;
        let client = Client::new(addr, Version::V3, Duration::from_secs(5))
            .bound_to(Ipv6Addr::LOCALHOST);
        for _ in 0..3 {
            let pulled = client
                .pull(None, crate::policy::MAX_PATH_LEN_BOUND)
                .await
                .unwrap();
            assert_eq!(pulled.response, OutPull::default());
            assert_eq!(pulled.bytes, 2);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let peer = from.lock().unwrap().expect("a connection");
        assert_eq!(peer.ip(), std::net::IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    /// A server that answers every request with `status` and a body it
    /// declares 300 MB long (over `MAX_PULL_BODY`), sent as long as the
    /// client reads.
    async fn endless_answers(status: &'static str) -> SocketAddrV6 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let SocketAddr::V6(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound to an IPv6 address")
        };
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 300000000\r\n\r\n"
                    );
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; 65536];
                    while stream.write_all(&chunk).await.is_ok() {}
                });
            }
        });
        addr
    }

    /// A push's answer, or an error's, is read only as far as
    /// `ANSWER_PREFIX`: a peer answering with an endless body makes us
    /// hold no more (it failed as too large before, read against the pull
    /// answer's bound).
    #[tokio::test]
    async fn answers_other_than_a_pulls_are_read_only_in_part() {
        let update = OutUpdate::default();
        let ok = endless_answers("200 OK").await;
        let client = Client::new(ok, Version::V3, Duration::from_secs(5));
        client.push(&update).await.expect("a push answered 200");
        let bad = endless_answers("400 Bad Request").await;
        let client = Client::new(bad, Version::V3, Duration::from_secs(5));
        match client.push(&update).await {
            Err(ClientError::Status { status, reason }) => {
                assert_eq!(status, StatusCode::BAD_REQUEST);
                assert!(reason.len() <= 200 && reason.starts_with('x'));
            }
            other => panic!("{other:?}"),
        }
        // A pull's answer is still held to the pull's own bound.
        let client = Client::new(ok, Version::V3, Duration::from_secs(5));
        let pulled = client.pull(None, crate::policy::MAX_PATH_LEN_BOUND).await;
        assert!(matches!(pulled, Err(ClientError::TooLarge)), "{pulled:?}");
    }

    /// Nobody listening is a connection error naming the address.
    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
        let SocketAddr::V6(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound to an IPv6 address")
        };
        drop(listener);
        let client = Client::new(addr, Version::V3, Duration::from_secs(5));
        match client.pull(None, crate::policy::MAX_PATH_LEN_BOUND).await {
            Err(ClientError::Connect { addr: a, .. }) => assert_eq!(a, addr),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
