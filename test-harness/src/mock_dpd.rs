//! A mock of the switch dataplane daemon's (dpd's) IPv6 route API, for
//! testing `ddmd --dendrite` without a switch.
//!
//! It serves, over HTTP/1.1 on any listener (a loopback port here, or one
//! made inside a test namespace with [`crate::netns::in_netns`]):
//!
//! * `GET /route/ipv6?limit&page_token` (paged listing, sorted by prefix;
//!   a full page carries a `next_page` token, as dropshot does),
//! * `PUT /route/ipv6` (create; an identical single target is a no-op; a
//!   different target is replaced when `replace` is true, else **409**),
//! * `POST /route/ipv6` (create or add a target; `replace` ignored),
//! * `GET` / `DELETE /route/ipv6/{cidr}`,
//! * `DELETE /route/ipv6/{cidr}/{port_id}/{link_id}/{tgt_ip}` (one target;
//!   a route losing its last target is removed),
//!
//! and enforces what dpd does: every request carries an `api-version`
//! header that parses as semver and is not newer than [`SERVER_VERSION`]
//! (else 400); bodies have the documented shapes (required fields, types,
//! port-name patterns; else 400) and are at most 10240 bytes; the `/` of a
//! prefix in a path is `%2F`; a missing route or target, or an unknown
//! port or link, is 404; a route holds at most [`MAX_TARGETS`] targets.
//! Errors carry dpd's error body (`message`, `request_id`).
//!
//! Every request is recorded ([`MockDpd::requests`]) so tests can check
//! what a client sent against the published OpenAPI document; the table
//! can be read ([`MockDpd::table`]), emptied (a dpd restart,
//! [`MockDpd::clear`]) and the server made unreachable
//! ([`MockDpd::set_down`]: connections are dropped unanswered).

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The API version the mock serves (that of the reference document).
pub const SERVER_VERSION: semver::Version = semver::Version::new(12, 0, 0);

/// The most targets one route holds.
pub const MAX_TARGETS: usize = 32;

/// The largest request body accepted.
pub const MAX_BODY: usize = 10240;

/// One target of a route, as the mock stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Switch port, lower case (`rear0`).
    pub port_id: String,
    /// Link within the port.
    pub link_id: u8,
    /// Nexthop.
    pub tgt_ip: Ipv6Addr,
    /// Owner tag.
    pub tag: String,
    /// VLAN.
    pub vlan_id: Option<u16>,
}

impl Target {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "port_id": self.port_id, "link_id": self.link_id,
            "tgt_ip": self.tgt_ip.to_string(), "tag": self.tag,
        });
        if let Some(vlan) = self.vlan_id {
            v["vlan_id"] = json!(vlan);
        }
        v
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path and query, as sent (still percent-encoded).
    pub path: String,
    /// The `api-version` header, if any.
    pub api_version: Option<String>,
    /// The body parsed as JSON (none if empty or not JSON).
    pub body: Option<Value>,
    /// The status answered.
    pub status: u16,
    /// The response body parsed as JSON (none if empty).
    pub response: Option<Value>,
}

/// A route table: (masked prefix address, length) → targets.
pub type Table = BTreeMap<(Ipv6Addr, u8), Vec<Target>>;

#[derive(Default)]
struct State {
    table: Table,
    requests: Vec<Recorded>,
    down: bool,
    /// Requests are read and held unanswered (see [`MockDpd::set_silent`]).
    silent: bool,
    /// Only deletions are (see [`MockDpd::set_silent_deletes`]).
    silent_deletes: bool,
    /// Requests held while silent.
    unanswered: usize,
    next_id: u64,
}

/// A running mock dpd; stops on drop.
pub struct MockDpd {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockDpd {
    /// Serves on a fresh port of `[::1]`.
    pub fn start() -> Result<MockDpd, String> {
        let l = TcpListener::bind("[::1]:0")
            .map_err(|e| format!("cannot listen on [::1]: {e}"))?;
        Self::serve(l)
    }

    /// Serves on `listener` (which may belong to another network
    /// namespace), on a thread of its own.
    pub fn serve(listener: TcpListener) -> Result<MockDpd, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("mock-dpd".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let conn = tokio::select! {
                            _ = &mut stopped => return,
                            c = listener.accept() => c,
                        };
                        let Ok((stream, _)) = conn else { continue };
                        if lock(&st).down {
                            drop(stream);
                            continue;
                        }
                        let st = st.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| {
                                let st = st.clone();
                                async move { handle(&st, req).await }
                            });
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                })
            })
            .map_err(|e| format!("thread: {e}"))?;
        Ok(MockDpd { addr, state, stop: Some(stop), thread: Some(thread) })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port served.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A copy of the route table.
    pub fn table(&self) -> Table {
        lock(&self.state).table.clone()
    }

    /// The table as `prefix → {(port, link, nexthop, tag)}` text, easy to
    /// compare in tests.
    pub fn routes(&self) -> BTreeMap<String, Vec<String>> {
        self.table()
            .into_iter()
            .map(|((a, l), ts)| {
                let mut v: Vec<String> = ts
                    .iter()
                    .map(|t| {
                        format!(
                            "{}/{} {} {}",
                            t.port_id, t.link_id, t.tgt_ip, t.tag
                        )
                    })
                    .collect();
                v.sort();
                (format!("{a}/{l}"), v)
            })
            .collect()
    }

    /// Puts a route in the table directly (another owner's, or one left by
    /// an earlier run).
    pub fn insert(&self, prefix: Ipv6Addr, len: u8, target: Target) {
        lock(&self.state).table.entry((prefix, len)).or_default().push(target);
    }

    /// Empties the table (as a restarted dpd).
    pub fn clear(&self) {
        lock(&self.state).table.clear();
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// While `down`, connections are dropped without an answer (requests
    /// on connections already open fail too).
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// While `silent`, connections are accepted and requests read, but
    /// none is answered: a dpd that hangs. When it ends, the held ones
    /// are dropped unanswered.
    pub fn set_silent(&self, silent: bool) {
        lock(&self.state).silent = silent;
    }

    /// While `silent`, deletions are held unanswered as by
    /// [`MockDpd::set_silent`]; everything else is answered (a dpd that
    /// lists its table, then hangs).
    pub fn set_silent_deletes(&self, silent: bool) {
        lock(&self.state).silent_deletes = silent;
    }

    /// How many requests were held unanswered while silent.
    pub fn unanswered(&self) -> usize {
        lock(&self.state).unanswered
    }
}

impl Drop for MockDpd {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// An error answer.
struct Fail(StatusCode, String);

type Answer = Result<(StatusCode, Option<Value>), Fail>;

async fn handle(
    st: &Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    if lock(st).down {
        // Abort the connection: the client sees no answer.
        return Err(std::io::Error::other("mock dpd is down"));
    }
    let held = |s: &State| {
        s.silent || (s.silent_deletes && req.method() == http::Method::DELETE)
    };
    if held(&lock(st)) {
        lock(st).unanswered += 1;
        while held(&lock(st)) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        return Err(std::io::Error::other("mock dpd was silent"));
    }
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let api_version = req
        .headers()
        .get("api-version")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = Limited::new(req.into_body(), MAX_BODY).collect().await;
    let (body, answer) = match body {
        Err(_) => (
            None,
            Err(Fail(StatusCode::BAD_REQUEST, "request body too large".into())),
        ),
        Ok(b) => {
            let bytes = b.to_bytes();
            let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
            let answer = match check_version(api_version.as_deref()) {
                Err(f) => Err(f),
                Ok(()) => {
                    if !bytes.is_empty() && parsed.is_none() {
                        Err(Fail(
                            StatusCode::BAD_REQUEST,
                            "request body is not JSON".into(),
                        ))
                    } else {
                        let mut s = lock(st);
                        route(&mut s.table, &method, &path, parsed.as_ref())
                    }
                }
            };
            (parsed, answer)
        }
    };
    let mut s = lock(st);
    s.next_id += 1;
    let (status, response) = match answer {
        Ok((status, v)) => (status, v),
        Err(Fail(status, message)) => (
            status,
            Some(json!({
                "message": message,
                "request_id": s.next_id.to_string(),
            })),
        ),
    };
    s.requests.push(Recorded {
        method,
        path,
        api_version,
        body,
        status: status.as_u16(),
        response: response.clone(),
    });
    drop(s);
    let mut resp = Response::builder().status(status);
    let bytes = match response {
        Some(v) => {
            resp = resp.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    Ok(resp.body(Full::new(bytes)).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    }))
}

fn check_version(v: Option<&str>) -> Result<(), Fail> {
    let Some(v) = v else {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            "missing api-version header".into(),
        ));
    };
    let parsed = semver::Version::parse(v.trim()).map_err(|e| {
        Fail(StatusCode::BAD_REQUEST, format!("bad api-version {v:?}: {e}"))
    })?;
    if parsed > SERVER_VERSION {
        return Err(Fail(
            StatusCode::BAD_REQUEST,
            format!("api-version {parsed} is newer than {SERVER_VERSION}"),
        ));
    }
    Ok(())
}

fn bad(m: impl Into<String>) -> Fail {
    Fail(StatusCode::BAD_REQUEST, m.into())
}

fn not_found(m: impl Into<String>) -> Fail {
    Fail(StatusCode::NOT_FOUND, m.into())
}

/// Decodes `%XX` escapes (only what a path segment may carry).
fn percent_decode(s: &str) -> Result<String, Fail> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("path is not UTF-8"))
}

/// Parses `addr/len` into a masked prefix.
fn parse_cidr(s: &str) -> Result<(Ipv6Addr, u8), Fail> {
    let (a, l) =
        s.split_once('/').ok_or_else(|| bad(format!("{s:?}: not a CIDR")))?;
    let a: Ipv6Addr =
        a.parse().map_err(|_| bad(format!("{s:?}: bad address")))?;
    let l: u8 = l.parse().map_err(|_| bad(format!("{s:?}: bad length")))?;
    if l > 128 || (l > 0 && l.to_string() != s.split_once('/').unwrap().1) {
        return Err(bad(format!("{s:?}: bad length")));
    }
    let mask = if l == 0 { 0 } else { u128::MAX << (128 - l) };
    Ok((Ipv6Addr::from(u128::from(a) & mask), l))
}

/// Checks a port name and link against the switch's ports: `int0`,
/// `rear0`–`rear31`, `qsfp0`–`qsfp31`, each with link 0 only: a malformed
/// name is a 400, a link that does not exist a 404. Returns the name in
/// lower case.
fn check_port(port: &str, link: u8) -> Result<String, Fail> {
    let p = port.to_ascii_lowercase();
    let ok_num =
        |n: &str| n.parse::<u8>().is_ok_and(|v| v <= 31 && v.to_string() == n);
    let well_formed = p == "int0"
        || p.strip_prefix("rear").is_some_and(ok_num)
        || p.strip_prefix("qsfp").is_some_and(ok_num);
    if !well_formed {
        return Err(bad(format!("{port:?} is not a port id")));
    }
    if link != 0 {
        return Err(not_found(format!("no link {link} on port {p}")));
    }
    Ok(p)
}

/// Reads an `Ipv6Route` object.
fn parse_target(v: &Value) -> Result<Target, Fail> {
    let o = v.as_object().ok_or_else(|| bad("target: not an object"))?;
    let tag = o
        .get("tag")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("target.tag: missing or not a string"))?;
    let port = o
        .get("port_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("target.port_id: missing or not a string"))?;
    let link = o
        .get("link_id")
        .and_then(Value::as_u64)
        .and_then(|l| u8::try_from(l).ok())
        .ok_or_else(|| bad("target.link_id: missing or not a uint8"))?;
    let tgt_ip: Ipv6Addr = o
        .get("tgt_ip")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("target.tgt_ip: missing or not IPv6"))?;
    let vlan_id = match o.get("vlan_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|x| u16::try_from(x).ok())
                .ok_or_else(|| bad("target.vlan_id: not a uint16"))?,
        ),
    };
    let port_id = check_port(port, link)?;
    Ok(Target { port_id, link_id: link, tgt_ip, tag: tag.into(), vlan_id })
}

/// Reads an `Ipv6RouteUpdate` body.
fn parse_update(
    body: Option<&Value>,
) -> Result<((Ipv6Addr, u8), Target, bool), Fail> {
    let o = body
        .and_then(Value::as_object)
        .ok_or_else(|| bad("body: expected an Ipv6RouteUpdate object"))?;
    let cidr = o
        .get("cidr")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("cidr: missing or not a string"))?;
    let replace = o
        .get("replace")
        .and_then(Value::as_bool)
        .ok_or_else(|| bad("replace: missing or not a boolean"))?;
    let target =
        parse_target(o.get("target").ok_or_else(|| bad("target: missing"))?)?;
    Ok((parse_cidr(cidr)?, target, replace))
}

fn route(
    table: &mut Table,
    method: &Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let rest = path
        .strip_prefix("/route/ipv6")
        .ok_or_else(|| not_found(format!("no such endpoint {path}")))?;
    let segs: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.strip_prefix('/')
            .ok_or_else(|| not_found(format!("no such endpoint {path}")))?
            .split('/')
            .collect()
    };
    match (method, segs.as_slice()) {
        (&Method::GET, []) => list(table, query),
        (&Method::PUT, []) => {
            let (cidr, t, replace) = parse_update(body)?;
            match table.get_mut(&cidr) {
                None => {
                    table.insert(cidr, vec![t]);
                }
                Some(ts) if ts.len() == 1 && ts[0] == t => {}
                Some(ts) if replace => *ts = vec![t],
                Some(_) => {
                    return Err(Fail(
                        StatusCode::CONFLICT,
                        "route exists with a different target".into(),
                    ))
                }
            }
            Ok((StatusCode::NO_CONTENT, None))
        }
        (&Method::POST, []) => {
            let (cidr, t, _) = parse_update(body)?;
            let ts = table.entry(cidr).or_default();
            if !ts.contains(&t) {
                if ts.len() >= MAX_TARGETS {
                    return Err(bad(format!(
                        "a route holds at most {MAX_TARGETS} targets"
                    )));
                }
                ts.push(t);
            }
            Ok((StatusCode::NO_CONTENT, None))
        }
        (&Method::GET, [c]) => {
            let cidr = parse_cidr(&percent_decode(c)?)?;
            let ts =
                table.get(&cidr).ok_or_else(|| not_found("no such route"))?;
            Ok((
                StatusCode::OK,
                Some(Value::Array(ts.iter().map(Target::to_json).collect())),
            ))
        }
        (&Method::DELETE, [c]) => {
            let cidr = parse_cidr(&percent_decode(c)?)?;
            table.remove(&cidr).ok_or_else(|| not_found("no such route"))?;
            Ok((StatusCode::NO_CONTENT, None))
        }
        (&Method::DELETE, [c, port, link, ip]) => {
            let cidr = parse_cidr(&percent_decode(c)?)?;
            let link: u8 =
                link.parse().map_err(|_| bad(format!("bad link {link:?}")))?;
            let port = check_port(&percent_decode(port)?, link)?;
            let ip: Ipv6Addr = percent_decode(ip)?
                .parse()
                .map_err(|_| bad(format!("bad target address {ip:?}")))?;
            let ts = table
                .get_mut(&cidr)
                .ok_or_else(|| not_found("no such route"))?;
            let before = ts.len();
            ts.retain(|t| {
                !(t.port_id == port && t.link_id == link && t.tgt_ip == ip)
            });
            if ts.len() == before {
                return Err(not_found("no such target"));
            }
            if ts.is_empty() {
                table.remove(&cidr);
            }
            Ok((StatusCode::NO_CONTENT, None))
        }
        (_, [] | [_] | [_, _, _, _]) => Err(Fail(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path} is not an endpoint"),
        )),
        _ => Err(not_found(format!("no such endpoint {path}"))),
    }
}

/// `GET /route/ipv6`: sorted by prefix; the token is the last prefix of
/// the previous page.
fn list(table: &Table, query: &str) -> Answer {
    let mut limit = 100usize;
    let mut after: Option<(Ipv6Addr, u8)> = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v)?;
        match k {
            "limit" => {
                limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|l| *l >= 1)
                    .ok_or_else(|| bad(format!("bad limit {v:?}")))?
                    as usize;
            }
            "page_token" => {
                after = Some(
                    parse_cidr(&v)
                        .map_err(|_| bad(format!("bad page token {v:?}")))?,
                )
            }
            _ => {}
        }
    }
    let mut items = Vec::new();
    let mut last = None;
    let range = match after {
        Some(a) => table
            .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        None => table.range(..),
    };
    for ((a, l), ts) in range.take(limit) {
        items.push(json!({
            "cidr": format!("{a}/{l}"),
            "targets": ts.iter().map(Target::to_json).collect::<Vec<_>>(),
        }));
        last = Some(format!("{a}/{l}"));
    }
    let next = if items.len() == limit { last } else { None };
    Ok((StatusCode::OK, Some(json!({ "items": items, "next_page": next }))))
}
