//! The exchange's network side, behind a trait.
//!
//! A [`Transport`] serves the peer ([`Transport::serve`]: our server, its
//! requests answered through a [`ServerCtx`]) and calls it
//! ([`Transport::client`]: pull and push). Production speaks HTTP over TCP
//! ([`Http`]: [`server::bind`]/[`server::spawn`] and [`Client`]); tests and
//! the fabric simulation use [`ExchangeNet`], an in-memory registry where
//! a client's request is answered by the bound server's own request
//! handler (the same checks, limits and counters as over HTTP), with
//! faults a test can inject. Both run on tokio time only.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::task::JoinHandle;

use super::client::{
    decode_pull, encode_push, paths, status_error, Client, ClientError, Pulled,
    MAX_PULL_BODY,
};
use super::server::{self, BodyBudget, ServerCtx, BODY_BUDGET, SESSION_HEADER};
use ddm_proto::outgoing::OutUpdate;
use ddm_proto::Version;

/// A server being served: where, and the task to abort to stop it.
#[derive(Debug)]
pub struct Serving {
    /// Where it listens.
    pub addr: SocketAddrV6,
    /// Serves until aborted; awaiting it after the abort waits until the
    /// address is free again.
    pub task: JoinHandle<()>,
}

/// Calls one peer's server.
#[async_trait]
pub trait ExchangeClient: Send + Sync {
    /// Push `update`; the body's size in bytes.
    async fn push(&self, update: &OutUpdate) -> Result<usize, ClientError>;
    /// Pull the peer's full set, sending our session's id
    /// (`server::SESSION_HEADER`) if given; each path is read up to one
    /// name past `max_path_len`, the longest the policy takes.
    async fn pull(
        &self,
        session: Option<u64>,
        max_path_len: usize,
    ) -> Result<Pulled, ClientError>;
}

/// The exchange's network side.
pub trait Transport: Send + Sync {
    /// Serve `listen` (port 0: pick one), answering through `ctx`.
    fn serve(
        &self,
        listen: SocketAddrV6,
        ctx: Arc<ServerCtx>,
    ) -> io::Result<Serving>;

    /// A client of the server at `peer`, calling from `local`.
    fn client(
        &self,
        peer: SocketAddrV6,
        local: Ipv6Addr,
        version: Version,
        timeout: Duration,
    ) -> Arc<dyn ExchangeClient>;
}

/// The transport an exchange actor uses: HTTP unless told otherwise.
#[derive(Clone)]
pub struct ExchangeTransport(pub Arc<dyn Transport>);

impl ExchangeTransport {
    /// HTTP over TCP, as deployed.
    pub fn http() -> Self {
        ExchangeTransport(Arc::new(Http))
    }

    /// The in-memory network `net`.
    pub fn memory(net: ExchangeNet) -> Self {
        ExchangeTransport(Arc::new(net))
    }
}

impl Default for ExchangeTransport {
    fn default() -> Self {
        Self::http()
    }
}

impl std::fmt::Debug for ExchangeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeTransport")
    }
}

/// HTTP over TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

impl Transport for Http {
    fn serve(
        &self,
        listen: SocketAddrV6,
        ctx: Arc<ServerCtx>,
    ) -> io::Result<Serving> {
        let listener = server::bind(listen)?;
        let addr = match listener.local_addr()? {
            SocketAddr::V6(a) => a,
            SocketAddr::V4(_) => listen,
        };
        Ok(Serving { addr, task: server::spawn(listener, ctx) })
    }

    fn client(
        &self,
        peer: SocketAddrV6,
        local: Ipv6Addr,
        version: Version,
        timeout: Duration,
    ) -> Arc<dyn ExchangeClient> {
        Arc::new(Client::new(peer, version, timeout).bound_to(local))
    }
}

#[async_trait]
impl ExchangeClient for Client {
    async fn push(&self, update: &OutUpdate) -> Result<usize, ClientError> {
        Client::push(self, update).await
    }

    async fn pull(
        &self,
        session: Option<u64>,
        max_path_len: usize,
    ) -> Result<Pulled, ClientError> {
        Client::pull(self, session, max_path_len).await
    }
}

/// A fault injected on the requests from one address to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection is refused: nothing is delivered.
    Refuse,
    /// No answer: the request times out, and nothing is delivered.
    Timeout,
    /// Delivered after this delay (a timeout if longer than the client's;
    /// then nothing is delivered).
    Delay(Duration),
    /// Delivered and handled, but the connection resets before the answer
    /// comes back: the requester sees an error and cannot tell whether the
    /// request took effect (so an acknowledged push is never lost).
    Reset,
    /// Delivered after a delay drawn for each request, up to this much, so
    /// that requests overtake each other. The draw is deterministic (a
    /// counter of the network), so a simulation replays.
    Jitter(Duration),
}

/// What an [`ExchangeNet`] delivered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Requests handed to a server's handler.
    pub requests: u64,
    /// Bytes of those requests' bodies and of their answers' bodies.
    pub bytes: u64,
    /// When the last one was handled (tokio time).
    pub last: Option<tokio::time::Instant>,
}

/// A bound in-memory server.
struct Registered {
    /// Tells this registration from a later one at the same address.
    id: u64,
    /// What the server's handler needs.
    ctx: Arc<ServerCtx>,
    /// Its push body budget.
    budget: BodyBudget,
}

/// What the registry holds.
#[derive(Default)]
struct NetState {
    /// Bound servers by address and port (the scope is not compared: every
    /// interface of a simulated fabric has its own link-local address).
    servers: HashMap<(Ipv6Addr, u16), Registered>,
    /// Faults by (from, to) address.
    faults: HashMap<(Ipv6Addr, Ipv6Addr), Fault>,
    /// Faults for the next so many requests, by (from, to) address.
    counted: HashMap<(Ipv6Addr, Ipv6Addr), (Fault, u32)>,
    /// What was delivered.
    stats: NetStats,
    /// Draws of [`Fault::Jitter`] so far.
    draws: u64,
    /// One-way latency of every request and of its answer.
    latency: Duration,
    /// Source of registration ids and picked ports.
    next: u64,
}

/// An in-memory exchange network shared by the exchange actors of one
/// process (cloning shares it).
///
/// The state sits behind a `std` mutex, locked only for a lookup or an
/// insertion and never across an await: requests are answered by the
/// server's handler outside it.
#[derive(Clone, Default)]
pub struct ExchangeNet {
    /// The registry.
    state: Arc<Mutex<NetState>>,
}

impl ExchangeNet {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inject `fault` on requests from `from` to `to` (replacing any).
    pub fn set_fault(&self, from: Ipv6Addr, to: Ipv6Addr, fault: Fault) {
        self.lock().faults.insert((from, to), fault);
    }

    /// Remove the fault from `from` to `to`.
    pub fn clear_fault(&self, from: Ipv6Addr, to: Ipv6Addr) {
        self.lock().faults.remove(&(from, to));
    }

    /// Inject `fault` on the next `count` requests from `from` to `to`
    /// (replacing any counted fault there). A standing [`Fault::Refuse`]
    /// (a cut link) wins over it and does not use it up; otherwise it wins
    /// over the standing fault.
    pub fn set_fault_count(
        &self,
        from: Ipv6Addr,
        to: Ipv6Addr,
        fault: Fault,
        count: u32,
    ) {
        let mut state = self.lock();
        if count == 0 {
            state.counted.remove(&(from, to));
        } else {
            state.counted.insert((from, to), (fault, count));
        }
    }

    /// Give every request, and every answer, this one-way latency (zero
    /// by default), as a network does: what a session queues while its
    /// push is on the way merges into its next push, as over TCP.
    pub fn set_latency(&self, one_way: Duration) {
        self.lock().latency = one_way;
    }

    /// What was delivered so far.
    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// The fault the next request from `from` to `to` meets, using up one
    /// of a counted fault.
    #[cfg(test)]
    fn next_fault(&self, from: Ipv6Addr, to: Ipv6Addr) -> Option<Fault> {
        self.next_request(from, to).0
    }

    /// What the next request from `from` to `to` meets: its fault (using up
    /// one of a counted fault) and the network's one-way latency, in one
    /// look at the registry.
    fn next_request(
        &self,
        from: Ipv6Addr,
        to: Ipv6Addr,
    ) -> (Option<Fault>, Duration) {
        let mut state = self.lock();
        let latency = state.latency;
        let key = (from, to);
        let standing = state.faults.get(&key).copied();
        if standing == Some(Fault::Refuse) {
            return (standing, latency);
        }
        let counted = match state.counted.get_mut(&key) {
            Some((f, n)) => {
                let f = *f;
                *n -= 1;
                if *n == 0 {
                    state.counted.remove(&key);
                }
                Some(f)
            }
            None => None,
        };
        let fault = match counted.or(standing) {
            Some(Fault::Jitter(max)) => {
                state.draws += 1;
                let d = splitmix64(state.draws);
                let max = max.as_micros().max(1) as u64;
                Some(Fault::Delay(Duration::from_micros(d % max)))
            }
            f => f,
        };
        (fault, latency)
    }

    /// Count one handled request.
    fn delivered(&self, bytes: usize) {
        let mut state = self.lock();
        state.stats.requests += 1;
        state.stats.bytes += bytes as u64;
        state.stats.last = Some(tokio::time::Instant::now());
    }

    /// Whether a server is bound at `addr`.
    pub fn is_bound(&self, addr: SocketAddrV6) -> bool {
        self.lock().servers.contains_key(&(*addr.ip(), addr.port()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        // A panic while holding the lock leaves the maps consistent (every
        // change is one insert or remove), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a registration when the serving task ends or is aborted.
struct Unregister {
    /// The network.
    net: ExchangeNet,
    /// The address.
    key: (Ipv6Addr, u16),
    /// The registration.
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let mut state = self.net.lock();
        if state.servers.get(&self.key).is_some_and(|r| r.id == self.id) {
            state.servers.remove(&self.key);
        }
    }
}

impl Transport for ExchangeNet {
    fn serve(
        &self,
        listen: SocketAddrV6,
        ctx: Arc<ServerCtx>,
    ) -> io::Result<Serving> {
        let mut state = self.lock();
        state.next += 1;
        let id = state.next;
        let port = match listen.port() {
            0 => 49152 + (id % 16384) as u16,
            p => p,
        };
        let key = (*listen.ip(), port);
        if state.servers.contains_key(&key) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        let budget = BodyBudget::new(BODY_BUDGET);
        state.servers.insert(key, Registered { id, ctx, budget });
        drop(state);
        let guard = Unregister { net: self.clone(), key, id };
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let addr = SocketAddrV6::new(key.0, port, 0, listen.scope_id());
        Ok(Serving { addr, task })
    }

    fn client(
        &self,
        peer: SocketAddrV6,
        local: Ipv6Addr,
        version: Version,
        timeout: Duration,
    ) -> Arc<dyn ExchangeClient> {
        Arc::new(MemClient { net: self.clone(), peer, local, version, timeout })
    }
}

/// A client over an [`ExchangeNet`].
struct MemClient {
    /// The network.
    net: ExchangeNet,
    /// The peer's server.
    peer: SocketAddrV6,
    /// Our address.
    local: Ipv6Addr,
    /// The version spoken.
    version: Version,
    /// Bound on each request.
    timeout: Duration,
}

impl MemClient {
    /// One request, answered by the peer's handler, within the timeout.
    async fn request(
        &self,
        method: Method,
        path: &'static str,
        body: Bytes,
        session: Option<u64>,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let t = self.timeout;
        let req = self.request_unbounded(method, path, body, session);
        tokio::time::timeout(t, req)
            .await
            .map_err(|_| ClientError::Timeout(t))?
    }

    async fn request_unbounded(
        &self,
        method: Method,
        path: &'static str,
        body: Bytes,
        session: Option<u64>,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let refused = || ClientError::Connect {
            addr: self.peer,
            error: io::ErrorKind::ConnectionRefused.into(),
        };
        let (fault, latency) =
            self.net.next_request(self.local, *self.peer.ip());
        match fault {
            Some(Fault::Refuse) => return Err(refused()),
            Some(Fault::Timeout) => std::future::pending::<()>().await,
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d + latency).await;
                // The cable was cut while the request was on its way.
                let cut =
                    self.net.lock().faults.get(&(self.local, *self.peer.ip()))
                        == Some(&Fault::Refuse);
                if cut {
                    return Err(ClientError::Timeout(self.timeout));
                }
            }
            Some(Fault::Reset | Fault::Jitter(_)) | None => {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
            }
        }
        let (ctx, budget) = {
            let state = self.net.lock();
            let key = (*self.peer.ip(), self.peer.port());
            let r = state.servers.get(&key).ok_or_else(refused)?;
            (r.ctx.clone(), r.budget.clone())
        };
        let allowed = self.local == ctx.peer.addr;
        let sent = body.len();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(CONTENT_LENGTH, body.len());
        if let Some(id) = session {
            req = req.header(SESSION_HEADER, id);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = server::handle(req, allowed, &ctx, &budget).await;
        let (parts, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(never) => match never {},
        };
        self.net.delivered(sent + bytes.len());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if fault == Some(Fault::Reset) {
            return Err(ClientError::Connect {
                addr: self.peer,
                error: io::ErrorKind::ConnectionReset.into(),
            });
        }
        if !parts.status.is_success() {
            return Err(status_error(parts.status, &bytes));
        }
        if bytes.len() > MAX_PULL_BODY {
            return Err(ClientError::TooLarge);
        }
        Ok((parts.headers, bytes))
    }
}

/// A well-mixed 64-bit value from a counter (splitmix64).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[async_trait]
impl ExchangeClient for MemClient {
    async fn push(&self, update: &OutUpdate) -> Result<usize, ClientError> {
        let body = encode_push(self.version, update)?;
        let bytes = body.len();
        let (path, _) = paths(self.version);
        self.request(Method::PUT, path, Bytes::from(body), None).await?;
        Ok(bytes)
    }

    async fn pull(
        &self,
        session: Option<u64>,
        max_path_len: usize,
    ) -> Result<Pulled, ClientError> {
        let (_, path) = paths(self.version);
        let (headers, body) =
            self.request(Method::GET, path, Bytes::new(), session).await?;
        decode_pull(self.version, &headers, body, max_path_len)
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
