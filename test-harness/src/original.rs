//! A stand-in for the original DDM daemon, for mixed-fabric tests.
//!
//! [`OriginalPeer`] runs in one node of a namespace [`Topology`], on one
//! interface, and behaves on the wire as the original daemon does (see
//! `DESIGN.md` §2–§3 and the reference notes on its wire behaviour):
//!
//! * discovery on UDP 3549: it solicits on `ff02::dd` every
//!   [`OriginalConfig::solicit_interval`] and answers every solicitation,
//!   whatever its version, with an advertisement of its hostname, kind and
//!   [`OriginalConfig::version`];
//! * exchange on TCP 56797: `PUT /v2/push` and `/v3/push` with a request
//!   body cap ([`ORIGINAL_BODY_CAP`], 1024 bytes, by default), a larger body
//!   answered `400` with the original's JSON message; `GET /v2/pull` and
//!   `/v3/pull` answered with `null` lists (it originates nothing);
//! * its client pushes without a content type, and nothing it does depends
//!   on the status it gets back ([`OriginalPeer::push`] returns it for the
//!   test's sake only);
//! * its client pulls without a session header and adds the answer's paths
//!   to what it holds once the answer has arrived ([`OriginalPeer::pull`],
//!   after the delay a test gives it: the original bounds only its wait
//!   for the answer to begin, not its reading and applying it).
//!
//! Everything it hears is recorded ([`Heard`]): the discovery packets, each
//! push (version, size, whether it was taken, its content type), the pulls,
//! and the routing table the accepted pushes and added pull answers make.
//!
//! It runs on a thread of its own that entered the node's namespace, on a
//! single-threaded tokio runtime; its sockets live in that namespace.
//! Dropping it stops the thread and closes every socket. It reads a refused
//! body to the end (up to a bound) before answering, so that its `400`
//! always reaches the client instead of a connection reset.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fs::File;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::netns::Topology;

/// UDP port of discovery.
pub const DISCOVERY_PORT: u16 = 0xddd;

/// TCP port of the exchange server.
pub const EXCHANGE_PORT: u16 = 0xdddd;

/// The link-local multicast group solicitations go to.
pub const DISCOVERY_GROUP: Ipv6Addr =
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xdd);

/// The original exchange server's request body cap.
pub const ORIGINAL_BODY_CAP: usize = 1024;

/// Most bytes of a body read: a request's before answering (a refused body
/// is read to the end so the answer is not lost to a reset), or an answer
/// to one of its own requests.
const READ_BOUND: usize = 64 << 20;

/// Where `ip netns` keeps the bind mounts that name namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// How long [`OriginalPeer::start`] waits for the thread to bind.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How the stand-in behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalConfig {
    /// Its name in discovery packets and paths.
    pub hostname: String,
    /// Transit (kind 1) rather than server (kind 0).
    pub transit: bool,
    /// The exchange version its advertisements carry (the original sends
    /// 2; 3 makes our daemon speak v3 to it).
    pub version: u8,
    /// The version byte of its solicitations (any value is legal).
    pub solicit_version: u8,
    /// How often it solicits.
    pub solicit_interval: Duration,
    /// Largest push body it takes.
    pub body_cap: usize,
    /// The exchange port, its server's and the peer's.
    pub exchange_port: u16,
}

impl OriginalConfig {
    /// A server named `hostname` as the original runs it: version 2,
    /// solicitations every 2 s, a 1024-byte body cap, port 56797.
    pub fn new(hostname: &str) -> Self {
        OriginalConfig {
            hostname: hostname.to_string(),
            transit: false,
            version: 2,
            solicit_version: 2,
            solicit_interval: Duration::from_secs(2),
            body_cap: ORIGINAL_BODY_CAP,
            exchange_port: EXCHANGE_PORT,
        }
    }
}

/// An advertisement the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Its source.
    pub from: Ipv6Addr,
    /// Its version byte.
    pub version: u8,
    /// Its kind byte.
    pub kind: u8,
    /// The advertised hostname.
    pub hostname: String,
}

/// A push the stand-in's server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSeen {
    /// 2 or 3, from the path.
    pub version: u8,
    /// Body size in bytes.
    pub bytes: usize,
    /// Whether it was taken (else refused with 400).
    pub accepted: bool,
    /// Path vectors and tunnel origins it carried, if taken.
    pub items: usize,
    /// The content type it was sent with, if any.
    pub content_type: Option<String>,
}

/// Everything the stand-in heard, and the routes it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heard {
    /// The link-local address of the router that last solicited or
    /// advertised to it: where its pushes go.
    pub neighbour: Option<Ipv6Addr>,
    /// Solicitations sent.
    pub solicitations_sent: u64,
    /// Solicitations received (any version).
    pub solicitations_received: u64,
    /// Advertisements sent in answer.
    pub advertisements_sent: u64,
    /// Advertisements received.
    pub advertisements: Vec<Advertisement>,
    /// Pulls answered.
    pub pulls: u64,
    /// Answers to its own pulls added to `routes`.
    pub answers_applied: u64,
    /// Pushes received, in order.
    pub pushes: Vec<PushSeen>,
    /// Underlay routes from the accepted pushes and the pull answers it
    /// added: destination (`addr/len`) to the paths announced for it.
    pub routes: BTreeMap<String, BTreeSet<Vec<String>>>,
    /// Why received pushes or datagrams could not be understood.
    pub errors: Vec<String>,
}

impl Heard {
    /// The pushes it took.
    pub fn accepted(&self) -> impl Iterator<Item = &PushSeen> {
        self.pushes.iter().filter(|p| p.accepted)
    }

    /// How many pushes it refused.
    pub fn refused(&self) -> usize {
        self.pushes.iter().filter(|p| !p.accepted).count()
    }
}

/// What the test asks the running stand-in to do.
enum Command {
    /// Push `body` to the neighbour as `/v{version}/push`.
    Push {
        /// 2 or 3.
        version: u8,
        /// The JSON body.
        body: String,
        /// The status it got, or why there was none.
        reply: std::sync::mpsc::Sender<Result<u16, String>>,
    },
    /// Pull the neighbour as `/v{version}/pull` and add the answer to the
    /// routes `apply_after` once it has arrived.
    Pull {
        /// 2 or 3.
        version: u8,
        /// How long after the answer arrived it is added.
        apply_after: Duration,
        /// How many paths the answer carried, once read, or why not.
        reply: std::sync::mpsc::Sender<Result<usize, String>>,
    },
}

/// A running stand-in; dropping it stops it.
pub struct OriginalPeer {
    /// What it heard, shared with its thread.
    heard: Arc<Mutex<Heard>>,
    /// Commands to its thread.
    commands: mpsc::UnboundedSender<Command>,
    /// Tells its thread to stop.
    stop: Option<oneshot::Sender<()>>,
    /// Its thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for OriginalPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginalPeer").finish_non_exhaustive()
    }
}

impl OriginalPeer {
    /// Starts the stand-in in `node` of `topo`, on interface `ifname`, and
    /// returns once its sockets are bound.
    pub fn start(
        topo: &Topology,
        node: &str,
        ifname: &str,
        config: OriginalConfig,
    ) -> Result<OriginalPeer, String> {
        let path = format!("{NETNS_RUN_DIR}/{}", topo.ns(node)?);
        let file =
            File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
        let heard = Arc::new(Mutex::new(Heard::default()));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let ifname = ifname.to_string();
        let shared = heard.clone();
        let thread = std::thread::Builder::new()
            .name(format!("original-{node}"))
            .spawn(move || {
                let started = enter(&file, &path)
                    .and_then(|()| ifindex(&ifname))
                    .and_then(|ifindex| {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(|e| format!("runtime: {e}"))?;
                        Ok((rt, ifindex))
                    });
                drop(file);
                let (rt, ifindex) = match started {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let run = Run { config, ifindex, heard: shared };
                rt.block_on(run.serve(command_rx, stop_rx, ready_tx));
            })
            .map_err(|e| format!("spawning the stand-in thread: {e}"))?;
        let mut peer = OriginalPeer {
            heard,
            commands,
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(peer),
            Ok(Err(e)) => {
                peer.shut_down();
                Err(e)
            }
            Err(e) => {
                peer.shut_down();
                Err(format!("the stand-in did not start: {e}"))
            }
        }
    }

    /// A copy of everything heard so far.
    pub fn heard(&self) -> Heard {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Pushes `body` to the neighbour as the original does: `PUT
    /// /v{version}/push` without a content type, on a fresh connection.
    /// The original ignores the answer; it is returned for the test.
    pub fn push(
        &self,
        version: u8,
        body: &str,
        timeout: Duration,
    ) -> Result<u16, String> {
        let body = body.to_string();
        self.ask("push", timeout, |reply| Command::Push {
            version,
            body,
            reply,
        })
    }

    /// Pulls the neighbour as the original does (`GET /v{version}/pull`,
    /// no session header) and returns once the answer is read, with how
    /// many paths it carried. Its paths are added to the routes (not put
    /// in their place) `apply_after` later, as the original adds an answer
    /// once its client has handed it over; `answers_applied` counts it.
    pub fn pull(
        &self,
        version: u8,
        apply_after: Duration,
        timeout: Duration,
    ) -> Result<usize, String> {
        self.ask("pull", timeout, |reply| Command::Pull {
            version,
            apply_after,
            reply,
        })
    }

    /// Hand the stand-in the command `make` builds around a reply channel
    /// and wait at most `timeout` for its answer to the `what`.
    fn ask<T>(
        &self,
        what: &str,
        timeout: Duration,
        make: impl FnOnce(std::sync::mpsc::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| "the stand-in has stopped".to_string())?;
        answer
            .recv_timeout(timeout)
            .map_err(|e| format!("no answer to the {what}: {e}"))?
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("original stand-in: its thread panicked");
            }
        }
    }
}

impl Drop for OriginalPeer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Moves the calling thread into the namespace open as `file`.
fn enter(file: &File, path: &str) -> Result<(), String> {
    // SAFETY: `file` is an open namespace file for the whole call; setns
    // only changes the namespace of this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("setns({path}): {}", std::io::Error::last_os_error()))
    }
}

/// The index of `ifname` in the calling thread's namespace.
fn ifindex(ifname: &str) -> Result<u32, String> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| format!("interface name {ifname:?} has a NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(format!("no interface {ifname}")),
        i => Ok(i),
    }
}

/// The stand-in's thread: its configuration and what it records.
struct Run {
    config: OriginalConfig,
    ifindex: u32,
    heard: Arc<Mutex<Heard>>,
}

impl Run {
    fn record<T>(&self, f: impl FnOnce(&mut Heard) -> T) -> T {
        f(&mut self.heard.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A discovery packet of ours.
    fn packet(&self, version: u8, flags: u8) -> Vec<u8> {
        let name = self.config.hostname.as_bytes();
        let mut p = vec![
            version,
            flags,
            u8::from(self.config.transit),
            name.len().min(255) as u8,
        ];
        p.extend_from_slice(&name[..name.len().min(255)]);
        p
    }

    async fn serve(
        self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut stop: oneshot::Receiver<()>,
        ready: std::sync::mpsc::Sender<Result<(), String>>,
    ) {
        let bound = self.bind().await;
        let (udp, listener) = match bound {
            Ok(x) => {
                let _ = ready.send(Ok(()));
                x
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let this = Arc::new(self);
        let group =
            SocketAddrV6::new(DISCOVERY_GROUP, DISCOVERY_PORT, 0, this.ifindex);
        let mut tick = tokio::time::interval(this.config.solicit_interval);
        let mut conns = JoinSet::new();
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    let p = this.packet(this.config.solicit_version, 0x01);
                    if udp.send_to(&p, group).await.is_ok() {
                        this.record(|h| h.solicitations_sent += 1);
                    }
                }
                got = udp.recv_from(&mut buf) => {
                    if let Ok((n, SocketAddr::V6(from))) = got {
                        this.datagram(&udp, from, &buf[..n]).await;
                    }
                }
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let this = this.clone();
                        conns.spawn(async move { this.serve_http(stream).await });
                    }
                }
                Some(cmd) = commands.recv() => {
                    let this = this.clone();
                    conns.spawn(async move { this.command(cmd).await });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
    }

    async fn bind(&self) -> Result<(UdpSocket, TcpListener), String> {
        let any =
            SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, DISCOVERY_PORT, 0, 0);
        let udp = std::net::UdpSocket::bind(any)
            .map_err(|e| format!("binding UDP {any}: {e}"))?;
        udp.join_multicast_v6(&DISCOVERY_GROUP, self.ifindex)
            .map_err(|e| format!("joining {DISCOVERY_GROUP}: {e}"))?;
        udp.set_multicast_loop_v6(false)
            .and_then(|()| udp.set_nonblocking(true))
            .map_err(|e| format!("configuring UDP: {e}"))?;
        let udp = UdpSocket::from_std(udp)
            .map_err(|e| format!("registering UDP: {e}"))?;
        let at = SocketAddrV6::new(
            Ipv6Addr::UNSPECIFIED,
            self.config.exchange_port,
            0,
            0,
        );
        let listener = TcpListener::bind(at)
            .await
            .map_err(|e| format!("binding TCP {at}: {e}"))?;
        Ok((udp, listener))
    }

    /// A discovery datagram: solicitations of any version are answered,
    /// advertisements recorded.
    async fn datagram(&self, udp: &UdpSocket, from: SocketAddrV6, p: &[u8]) {
        let [version, flags, kind, len, rest @ ..] = p else {
            self.record(|h| h.errors.push(format!("short datagram {p:?}")));
            return;
        };
        let Some(name) = rest.get(..usize::from(*len)) else {
            self.record(|h| h.errors.push(format!("truncated {p:?}")));
            return;
        };
        let hostname = String::from_utf8_lossy(name).into_owned();
        let addr = *from.ip();
        self.record(|h| h.neighbour = Some(addr));
        if flags & 0x01 != 0 {
            self.record(|h| h.solicitations_received += 1);
            let answer = self.packet(self.config.version, 0x02);
            let to = SocketAddrV6::new(addr, DISCOVERY_PORT, 0, self.ifindex);
            if udp.send_to(&answer, to).await.is_ok() {
                self.record(|h| h.advertisements_sent += 1);
            }
        }
        if flags & 0x02 != 0 {
            let ad = Advertisement {
                from: addr,
                version: *version,
                kind: *kind,
                hostname,
            };
            self.record(|h| h.advertisements.push(ad));
        }
    }

    async fn serve_http(self: Arc<Self>, stream: TcpStream) {
        let svc = hyper::service::service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.answer(req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let version = match path.as_str() {
            "/v2/push" | "/v2/pull" => 2,
            "/v3/push" | "/v3/pull" => 3,
            _ => return reply(StatusCode::NOT_FOUND, "{}"),
        };
        match (req.method().clone(), path.ends_with("/push")) {
            (Method::PUT, true) => self.push_in(version, req).await,
            (Method::GET, false) => {
                self.record(|h| h.pulls += 1);
                reply(StatusCode::OK, r#"{"underlay":null,"tunnel":null}"#)
            }
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, "{}"),
        }
    }

    async fn push_in(
        &self,
        version: u8,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match Limited::new(req.into_body(), READ_BOUND)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.record(|h| h.errors.push(format!("reading a push: {e}")));
                return reply(StatusCode::BAD_REQUEST, "{}");
            }
        };
        let mut seen = PushSeen {
            version,
            bytes: body.len(),
            accepted: false,
            items: 0,
            content_type,
        };
        let cap = self.config.body_cap;
        if body.len() > cap {
            self.record(|h| h.pushes.push(seen));
            let message = serde_json::json!({
                "request_id": "stand-in",
                "message": format!(
                    "request body exceeded maximum size of {cap} bytes"
                ),
            });
            return reply(StatusCode::BAD_REQUEST, &message.to_string());
        }
        let applied = serde_json::from_slice::<Value>(&body)
            .map_err(|e| e.to_string())
            .and_then(|v| self.record(|h| apply(&mut h.routes, version, &v)));
        match applied {
            Ok(items) => {
                seen.accepted = true;
                seen.items = items;
                self.record(|h| h.pushes.push(seen));
                reply(StatusCode::NO_CONTENT, "")
            }
            Err(e) => {
                self.record(|h| {
                    h.pushes.push(seen);
                    h.errors.push(format!("invalid push: {e}"));
                });
                reply(StatusCode::BAD_REQUEST, "{}")
            }
        }
    }

    async fn command(self: Arc<Self>, cmd: Command) {
        match cmd {
            Command::Push { version, body, reply } => {
                let pushed = self
                    .request(Method::PUT, &format!("/v{version}/push"), body)
                    .await
                    .map(|(status, _)| status);
                let _ = reply.send(pushed);
            }
            Command::Pull { version, apply_after, reply } => {
                match self.pull_out(version).await {
                    Ok(paths) => {
                        let _ = reply.send(Ok(paths.len()));
                        tokio::time::sleep(apply_after).await;
                        self.record(|h| {
                            announce(&mut h.routes, paths);
                            h.answers_applied += 1;
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// One pull of the neighbour, as the original's client sends it: the
    /// answer's underlay paths.
    async fn pull_out(
        &self,
        version: u8,
    ) -> Result<Vec<(String, Vec<String>)>, String> {
        let path = format!("/v{version}/pull");
        let (status, body) =
            self.request(Method::GET, &path, String::new()).await?;
        if status != 200 {
            return Err(format!("pull answered {status}"));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("pull answer: {e}"))?;
        path_vectors(version, &answer["underlay"], "pull answer's underlay")
    }

    /// One request to the neighbour's exchange server on a fresh
    /// connection, as the original's client sends it (no content type,
    /// no session header): its status and body.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: String,
    ) -> Result<(u16, Bytes), String> {
        let to =
            self.record(|h| h.neighbour).ok_or("no neighbour heard yet")?;
        let addr =
            SocketAddrV6::new(to, self.config.exchange_port, 0, self.ifindex);
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        let answered = async {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, format!("[{to}]:{}", addr.port()))
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let r = sender
                .send_request(req)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            let status = r.status().as_u16();
            let body = Limited::new(r.into_body(), READ_BOUND)
                .collect()
                .await
                .map_err(|e| format!("{path}: reading the answer: {e}"))?;
            Ok((status, body.to_bytes()))
        }
        .await;
        driver.abort();
        answered
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    if !body.is_empty() {
        r = r.header(CONTENT_TYPE, "application/json");
    }
    r.body(Full::new(Bytes::from(body.to_string()))).expect("static response")
}

/// Applies a push body to `routes` (withdrawals, then announcements);
/// returns how many items it carried.
fn apply(
    routes: &mut BTreeMap<String, BTreeSet<Vec<String>>>,
    version: u8,
    update: &Value,
) -> Result<usize, String> {
    let mut items = 0;
    let underlay = &update["underlay"];
    if !underlay.is_null() {
        let list = |key: &str| {
            path_vectors(version, &underlay[key], &format!("underlay.{key}"))
        };
        let (withdraw, announced) = (list("withdraw")?, list("announce")?);
        items += withdraw.len() + announced.len();
        for (dest, path) in withdraw {
            if let Some(paths) = routes.get_mut(&dest) {
                paths.remove(&path);
                if paths.is_empty() {
                    routes.remove(&dest);
                }
            }
        }
        announce(routes, announced);
    }
    let tunnel = &update["tunnel"];
    for key in ["withdraw", "announce"] {
        if let Some(a) = tunnel[key].as_array() {
            items += a.len();
        }
    }
    Ok(items)
}

/// Adds `paths` (`addr/len`, path) to `routes`.
fn announce(
    routes: &mut BTreeMap<String, BTreeSet<Vec<String>>>,
    paths: Vec<(String, Vec<String>)>,
) {
    for (dest, path) in paths {
        routes.entry(dest).or_default().insert(path);
    }
}

/// A list of path vectors of `version` (`null` is empty); `what` names
/// it in the error.
fn path_vectors(
    version: u8,
    list: &Value,
    what: &str,
) -> Result<Vec<(String, Vec<String>)>, String> {
    match list {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => {
            a.iter().map(|pv| path_vector(version, pv)).collect()
        }
        other => Err(format!("{what} is {other}")),
    }
}

/// A path vector of `version` as (`addr/len`, path).
fn path_vector(
    version: u8,
    pv: &Value,
) -> Result<(String, Vec<String>), String> {
    let d = &pv["destination"];
    let (addr, len) = if version == 2 {
        let addr = d["addr"].as_str().ok_or(format!("v2 destination {d}"))?;
        let len = d["len"].as_u64().ok_or(format!("v2 destination {d}"))?;
        (addr.to_string(), len)
    } else {
        let s = d.as_str().ok_or(format!("v3 destination {d}"))?;
        let (a, l) = s.split_once('/').ok_or(format!("v3 destination {s}"))?;
        (a.to_string(), l.parse().map_err(|_| format!("length in {s}"))?)
    };
    let addr: Ipv6Addr =
        addr.parse().map_err(|_| format!("address {addr:?}"))?;
    if len > 128 {
        return Err(format!("length {len}"));
    }
    let path = pv["path"]
        .as_array()
        .ok_or(format!("path of {pv}"))?
        .iter()
        .map(|n| n.as_str().map(str::to_string).ok_or(format!("name {n}")))
        .collect::<Result<_, _>>()?;
    Ok((format!("{addr}/{len}"), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_of_both_versions_apply() {
        let mut routes = BTreeMap::new();
        let v3 = serde_json::json!({
            "underlay": {"announce": [
                {"destination": "fd00:1::/64", "path": ["a"]},
                {"destination": "fd00:2::/64", "path": ["a", "b"]},
            ], "withdraw": []},
            "tunnel": null,
        });
        assert_eq!(apply(&mut routes, 3, &v3), Ok(2));
        let v2 = serde_json::json!({
            "underlay": {"withdraw": [
                {"destination": {"addr": "fd00:1::", "len": 64}, "path": ["a"]},
            ]},
            "tunnel": {"announce": [{}]},
        });
        assert_eq!(apply(&mut routes, 2, &v2), Ok(2));
        assert_eq!(
            routes,
            [(
                "fd00:2::/64".to_string(),
                [vec!["a".to_string(), "b".to_string()]].into()
            )]
            .into()
        );
        let bad = serde_json::json!({"underlay": {"announce": [
            {"destination": "fd00:1::/129", "path": []}]}});
        assert!(apply(&mut routes, 3, &bad).is_err());
    }
}
