//! The exchange client: calls the peer's server.
//!
//! HTTP/1.1 over one kept-alive connection to `[peer%ifindex]:port`,
//! speaking the version the peer advertises. The client is cheap to clone;
//! the idle connection is shared, and a request that finds it busy or gone
//! opens another. A request on a reused connection that fails before any
//! answer is tried once more on a fresh one (pushes and pulls are
//! idempotent). Every request, connecting included, is bounded by the
//! timeout. Dropping the last clone closes the connection.
//!
//! A pull answer may announce the largest push body the peer's server
//! takes ([`PUSH_LIMIT_HEADER`]); the client hands it to the exchange
//! actor with the answer. The original daemon announces nothing.
//!
//! An answer's body is read against [`MAX_PULL_BODY`], the client's own
//! bound (a pull answer is a whole table, far larger than any push), into
//! one buffer of the declared length.

use std::net::SocketAddrV6;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::outgoing::{OutUpdate, V2Update};
use super::server::{read_body, ReadError, PUSH_LIMIT_HEADER};
use super::wire::{v2, v3};
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
    /// The HTTP exchange failed (connection reset, protocol error).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
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
            self,
            ClientError::Status { status, .. }
                if *status == StatusCode::BAD_REQUEST
                    || *status == StatusCode::PAYLOAD_TOO_LARGE
        )
    }
}

/// Largest answer body read from a peer: a pull answer is the peer's
/// whole table. 256 MiB admit 1,000,000 path vectors in v2 (the longer
/// encoding) with full-length addresses and four-hop paths of 32-byte
/// hostnames (226 bytes each: 226 MB), that is 250,000 destinations (the
/// default `--max-prefixes-per-peer`) each heard along four paths; or
/// 250,000 path vectors with long paths, sixteen hops of 32-byte
/// hostnames (646 bytes each: 162 MB). Pulls are ours to start, one at a
/// time per peer, so this bound is not multiplied by an attacker.
pub const MAX_PULL_BODY: usize = 256 << 20;

/// A pull answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The peer's full set, in v3.
    pub response: v3::PullResponse,
    /// The largest push body the peer announced it takes, if it did.
    pub push_limit: Option<usize>,
    /// The answer's body size in bytes.
    pub bytes: usize,
}

/// The push limit announced in `headers`, if one is there and is a number.
fn announced_push_limit(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(PUSH_LIMIT_HEADER)?.to_str().ok()?;
    let bytes: u64 = value.trim().parse().ok()?;
    Some(usize::try_from(bytes).unwrap_or(usize::MAX))
}

/// A first guess at the JSON size of `items` path vectors or tunnel
/// origins (about 50 to 110 bytes each), so that the body is written
/// without repeated regrowth.
pub(crate) fn json_size_hint(items: usize) -> usize {
    items.saturating_mul(80).saturating_add(64)
}

/// An open connection and the task driving it.
struct Conn {
    /// Sends requests on the connection.
    sender: http1::SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted when the connection is dropped.
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
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
    /// Our address to connect from, if bound.
    local: Option<std::net::Ipv6Addr>,
    /// The version the peer speaks.
    version: Version,
    /// Bound on each request.
    timeout: Duration,
    /// The idle kept-alive connection, if any.
    idle: Mutex<Option<Conn>>,
}

impl Client {
    /// A client of the server at `addr` (scope id = interface index).
    pub fn new(
        addr: SocketAddrV6,
        version: Version,
        timeout: Duration,
    ) -> Self {
        Client {
            inner: Arc::new(Inner {
                addr,
                local: None,
                version,
                timeout,
                idle: Mutex::new(None),
            }),
        }
    }

    /// The same client, its connections made from `local` (port 0: any).
    ///
    /// The peer's server accepts only the address it discovered us by; a
    /// second link-local address on the interface (an operator's, a
    /// renumbering in progress) would otherwise be the kernel's choice of
    /// source, and every request would be refused.
    pub fn bound_to(self, local: std::net::Ipv6Addr) -> Self {
        let inner = Inner {
            addr: self.inner.addr,
            local: Some(local),
            version: self.inner.version,
            timeout: self.inner.timeout,
            idle: Mutex::new(None),
        };
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
        let mut body = Vec::with_capacity(json_size_hint(update.len()));
        let (path, written) = match self.inner.version {
            Version::V3 => {
                ("/v3/push", serde_json::to_writer(&mut body, update))
            }
            Version::V2 => (
                "/v2/push",
                serde_json::to_writer(&mut body, &V2Update(update)),
            ),
        };
        written.map_err(|e| ClientError::Decode(e.to_string()))?;
        let bytes = body.len();
        self.request(Method::PUT, path, Bytes::from(body)).await?;
        Ok(bytes)
    }

    /// `GET /vN/pull`, converted to v3, with the push limit the peer
    /// announced.
    pub async fn pull(&self) -> Result<Pulled, ClientError> {
        let path = match self.inner.version {
            Version::V3 => "/v3/pull",
            Version::V2 => "/v2/pull",
        };
        let (headers, body) =
            self.request(Method::GET, path, Bytes::new()).await?;
        let push_limit = announced_push_limit(&headers);
        let bytes = body.len();
        let response = match self.inner.version {
            Version::V3 => serde_json::from_slice(&body)
                .map_err(|e| ClientError::Decode(e.to_string()))?,
            Version::V2 => {
                let r: v2::PullResponse = serde_json::from_slice(&body)
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
                // The text is no longer needed while converting.
                drop(body);
                r.try_into().map_err(|e: super::wire::WireError| {
                    ClientError::Decode(e.to_string())
                })?
            }
        };
        Ok(Pulled { response, push_limit, bytes })
    }

    /// One request, bounded by the timeout; the answer's headers and body
    /// on success.
    async fn request(
        &self,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let t = self.inner.timeout;
        tokio::time::timeout(t, self.request_unbounded(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout(t))?
    }

    async fn request_unbounded(
        &self,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let reused = self.take_idle();
        let (mut conn, fresh) = match reused {
            Some(c) => (c, false),
            None => (self.connect().await?, true),
        };
        let first = self.send(&mut conn, &method, path, body.clone()).await;
        let (answer, conn) = match first {
            Err(ClientError::Http(_)) if !fresh => {
                // The peer may have closed the idle connection.
                let mut conn = self.connect().await?;
                let answer = self.send(&mut conn, &method, path, body).await;
                (answer, conn)
            }
            other => (other, conn),
        };
        if answer.is_ok() {
            self.put_idle(conn);
        }
        answer
    }

    async fn send(
        &self,
        conn: &mut Conn,
        method: &Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let a = self.inner.addr;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, format!("[{}]:{}", a.ip(), a.port()));
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        conn.sender.ready().await?;
        let resp = conn.sender.send_request(req).await?;
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = match read_body(body, MAX_PULL_BODY).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => return Err(ClientError::TooLarge),
            Err(ReadError::Body(e)) => return Err(ClientError::Http(e)),
        };
        if !status.is_success() {
            let reason = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string();
            return Err(ClientError::Status { status, reason });
        }
        Ok((parts.headers, body))
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let addr = self.inner.addr;
        let connect = async {
            let Some(local) = self.inner.local else {
                return TcpStream::connect(addr).await;
            };
            let socket = tokio::net::TcpSocket::new_v6()?;
            socket
                .bind(SocketAddrV6::new(local, 0, 0, addr.scope_id()).into())?;
            socket.connect(addr.into()).await
        };
        let stream = connect
            .await
            .map_err(|error| ClientError::Connect { addr, error })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, driver })
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle =
            self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.take().filter(|c| !c.sender.is_closed())
    }

    fn put_idle(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle =
            self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.is_none() {
            *idle = Some(conn);
        }
    }
}
