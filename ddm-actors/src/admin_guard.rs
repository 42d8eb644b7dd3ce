//! A guard in front of the admin API, bounding what its clients can hold.
//!
//! dropshot 0.18, which serves the admin API, bounds a request body's size
//! but neither how long a body may take nor how many connections are open:
//! `ConfigDropshot` has a bind address, the body size cap, the handler task
//! mode, headers to log and compression, and the server binds its own
//! listener, with only hyper's 30 s deadline on request heads. A client
//! that sends a head and then stalls mid-body holds its connection (and a
//! descriptor) for as long as it likes, and any number of them can.
//!
//! So the admin address is served by this guard, which relays each
//! connection, byte for byte, to the dropshot server listening on loopback
//! at a port of its own:
//!
//! * at most [`ADMIN_MAX_CONNECTIONS`] connections are relayed at once; one
//!   past that is closed as soon as it is accepted, before anything is read;
//! * a connection on which nothing moves either way for [`ADMIN_IDLE`] is
//!   closed: a client stalled mid-body, or idle between requests, or not
//!   reading its answer;
//! * a connection whose client has been sending for [`ADMIN_REQUEST`]
//!   (plus the time its bytes take at [`ADMIN_UPLOAD_RATE`], up to those
//!   of a whole request) without an answer from the server is closed: a
//!   client that trickles a body a byte at a time, never idle for long,
//!   would otherwise hold its connection (and one of the slots) for as
//!   long as it likes, and so would one sending without end faster than
//!   that rate (dropshot reads a body past its cap to its end before it
//!   answers `400`);
//! * a connection that opens with HTTP/2's preface is closed before the
//!   preface reaches the server. dropshot's server (hyper-util's automatic
//!   builder) would take HTTP/2 without negotiation, and one HTTP/2
//!   connection carries up to 200 requests at once, each holding its body,
//!   while the server's own frames (settings, window updates, pings) would
//!   keep the request deadline from ever running out. Admin clients
//!   (`ddmadm`, the control plane's) speak HTTP/1.1.
//!
//! The relay copies both ways as bytes come (HTTP is not parsed again), so
//! it adds a hop on loopback and nothing else; dropshot's own logs show the
//! guard's loopback address as the client's. The guard keeps one
//! connection to the server made ahead of the next client (a spare), so a
//! client's request is relayed as soon as it is accepted, not after a
//! connect and the server's own accept: `ddmadm` and the control plane
//! open a connection per request, and on a fresh connection that wait
//! was most of what the guard added (figures in the README).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use slog::{debug, warn, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// Admin connections relayed at once. `ddmadm` opens one per command, and
/// the control plane a few; 64 leave room for both while bounding what
/// stalled clients hold to 64 connections (three descriptors each in the
/// daemon: the client's, the relay's and dropshot's), besides the spare
/// (two).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long nothing may move on an admin connection before it is closed.
/// Longer than the 10 s an API handler waits for the daemon's actors before
/// answering 503, so every request whose body has arrived is answered
/// before its connection could be closed.
pub const ADMIN_IDLE: Duration = Duration::from_secs(15);

/// Longest time from a client's first byte not yet answered to the
/// server's first byte of answer. An admin request body is at most 8 MiB,
/// sent from the same host or the control plane's; the handler waits 10 s
/// at most for the daemon before it answers.
pub const ADMIN_REQUEST: Duration = Duration::from_secs(30);

/// The slowest upload the request deadline allows for, in bytes a second:
/// each byte a client sends while it waits for an answer extends
/// [`ADMIN_REQUEST`] by the time it takes at this rate (a whole 8 MiB body
/// by 128 s), so a slow link is not cut off and a trickle gains nothing.
pub const ADMIN_UPLOAD_RATE: u64 = 64 << 10;

/// The most bytes of one request that extend [`ADMIN_REQUEST`] (at
/// [`ADMIN_UPLOAD_RATE`]): a whole body and 64 KiB of head. So a request
/// is answered or closed within 30 s + 129 s, however fast its client
/// sends.
pub const ADMIN_UPLOAD_CREDIT: u64 =
    ddm_admin_api::REQUEST_BODY_MAX_BYTES as u64 + (64 << 10);

/// How an HTTP/2 connection with prior knowledge opens (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a guard bounds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections relayed at once.
    pub max_connections: usize,
    /// How long nothing may move on a connection.
    pub idle: Duration,
    /// How long a client may send without an answer.
    pub request: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_connections: ADMIN_MAX_CONNECTIONS,
            idle: ADMIN_IDLE,
            request: ADMIN_REQUEST,
        }
    }
}

/// Size of each direction's relay buffer.
const RELAY_BUFFER: usize = 16 << 10;

/// Pause after a failed `accept` (for example out of descriptors).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The loopback address of `addr`'s family, port 0: where the dropshot
/// server behind a guard on `addr` listens.
pub fn backend_bind(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, 0)
}

/// A running guard; dropping it closes its listener and every relayed
/// connection.
#[derive(Debug)]
pub struct AdminGuard {
    /// The accept task, which owns the connections' tasks.
    task: JoinHandle<()>,
    /// Where the guard listens.
    local_addr: SocketAddr,
}

impl AdminGuard {
    /// Listen on `listen` and relay to `backend`, with the default bounds.
    pub fn start(
        listen: SocketAddr,
        backend: SocketAddr,
        log: Logger,
    ) -> io::Result<AdminGuard> {
        Self::start_with(listen, backend, Bounds::default(), log)
    }

    /// Listen on `listen` and relay to `backend` within `bounds`.
    pub fn start_with(
        listen: SocketAddr,
        backend: SocketAddr,
        bounds: Bounds,
        log: Logger,
    ) -> io::Result<AdminGuard> {
        let Bounds { max_connections, idle, .. } = bounds;
        let std = std::net::TcpListener::bind(listen)?;
        std.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std)?;
        let local_addr = listener.local_addr()?;
        let slots = Arc::new(Semaphore::new(max_connections));
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            // The spare: made at the start, and again once the client
            // that took it has its answer coming (or its relay ended), so
            // that making it (a connect, and the server's accept) does
            // not hold up that client's request. Never in a loop: a
            // server that refuses costs one attempt per client.
            let mut spare: Option<TcpStream> = None;
            let connecting = connect(backend, idle);
            tokio::pin!(connecting);
            let mut making_spare = true;
            let need_spare = Arc::new(Notify::new());
            loop {
                tokio::select! {
                    // A spare just made is taken by the client accepted
                    // in the same turn.
                    biased;
                    made = &mut connecting, if making_spare => {
                        making_spare = false;
                        spare = made.ok();
                    }
                    _ = need_spare.notified(), if !making_spare => {
                        if spare.is_none() {
                            connecting.set(connect(backend, idle));
                            making_spare = true;
                        }
                    }
                    // Finished relays are reaped before a client is
                    // accepted: after it, while clients kept arriving
                    // faster than they were accepted, this never ran and
                    // each finished task stayed.
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    accepted = listener.accept() => match accepted {
                        Ok((client, from)) => {
                            let Ok(slot) = slots.clone().try_acquire_owned()
                            else {
                                debug!(log, "too many admin connections; \
                                    refused"; "from" => %from);
                                drop(client);
                                continue;
                            };
                            let server = spare.take().filter(usable);
                            let answered = Arc::clone(&need_spare);
                            let log = log.clone();
                            conns.spawn(async move {
                                let relayed = relay(
                                    client, server, backend, bounds,
                                    &answered,
                                );
                                if let Err(e) = relayed.await {
                                    debug!(log, "admin connection closed";
                                        "from" => %from, "why" => %e);
                                }
                                answered.notify_one();
                                drop(slot);
                            });
                        }
                        Err(e) => {
                            warn!(log, "admin accept failed"; "error" => %e);
                            tokio::time::sleep(ACCEPT_PAUSE).await;
                        }
                    },
                }
            }
        });
        Ok(AdminGuard { task, local_addr })
    }

    /// Where the guard listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one step of a relay did.
enum Step {
    /// Bytes (this many) went from the client to the server.
    Moved(usize),
    /// Bytes went from the server to the client.
    Answered,
    /// The client will send no more (its half is passed on).
    ClientDone,
    /// The server closed: the relay is over.
    ServerDone,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle")
}

fn unanswered() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "sending without an answer")
}

/// Take `bytes`, the next a client sent, into `matched`: how many of the
/// connection's first bytes match [`H2_PREFACE`] (`None` once one did
/// not). An error once they are the whole preface.
fn refuse_h2(matched: &mut Option<usize>, bytes: &[u8]) -> io::Result<()> {
    let Some(m) = *matched else {
        return Ok(());
    };
    let n = bytes.len().min(H2_PREFACE.len() - m);
    *matched = (bytes[..n] == H2_PREFACE[m..m + n]).then_some(m + n);
    if *matched == Some(H2_PREFACE.len()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "HTTP/2 is not served",
        ));
    }
    Ok(())
}

/// A connection to `backend`, within `idle`.
async fn connect(backend: SocketAddr, idle: Duration) -> io::Result<TcpStream> {
    let server = tokio::time::timeout(idle, TcpStream::connect(backend))
        .await
        .map_err(|_| timed_out())??;
    let _ = server.set_nodelay(true);
    Ok(server)
}

/// Whether a spare connection can still carry a request: the server has
/// neither closed it nor sent anything on it (an HTTP server speaks only
/// when asked). The socket is asked itself (a peek, which does not wait:
/// it is non-blocking), not the runtime's note of its readiness, which
/// may not have seen a close that just came.
fn usable(spare: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(socket2::SockRef::from(spare).peek(&mut byte),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Relay `client` to `server` (or, without one, a new connection to
/// `backend`) until either closes, nothing moves for `bounds.idle`, or the
/// client sends for `bounds.request` without an answer; `answered` is
/// notified when the server first answers.
async fn relay(
    mut client: TcpStream,
    server: Option<TcpStream>,
    backend: SocketAddr,
    bounds: Bounds,
    answered: &Notify,
) -> io::Result<()> {
    let Bounds { idle, request, .. } = bounds;
    let mut server = match server {
        Some(s) => s,
        None => connect(backend, idle).await?,
    };
    let _ = client.set_nodelay(true);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut up = vec![0u8; RELAY_BUFFER];
    let mut down = vec![0u8; RELAY_BUFFER];
    let mut client_open = true;
    let mut told = false;
    // Since when the client's bytes wait for an answer, and how many.
    let mut asked: Option<(tokio::time::Instant, u64)> = None;
    // How many of the client's first bytes are HTTP/2's preface.
    let mut preface = Some(0);
    loop {
        let left = asked.map(|(t, sent)| {
            let credit = sent.min(ADMIN_UPLOAD_CREDIT);
            let upload = Duration::from_secs_f64(
                credit as f64 / ADMIN_UPLOAD_RATE as f64,
            );
            (request + upload).saturating_sub(t.elapsed())
        });
        if left == Some(Duration::ZERO) {
            return Err(unanswered());
        }
        // Reads are cancel-safe; each write completes within the step.
        let step = async {
            tokio::select! {
                n = cr.read(&mut up), if client_open => {
                    let n = n?;
                    if n == 0 {
                        sw.shutdown().await?;
                        return Ok::<_, io::Error>(Step::ClientDone);
                    }
                    refuse_h2(&mut preface, &up[..n])?;
                    sw.write_all(&up[..n]).await?;
                    Ok(Step::Moved(n))
                }
                n = sr.read(&mut down) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(Step::ServerDone);
                    }
                    cw.write_all(&down[..n]).await?;
                    Ok(Step::Answered)
                }
            }
        };
        let wait = left.map_or(idle, |l| l.min(idle));
        match tokio::time::timeout(wait, step).await {
            Err(_) if wait < idle => return Err(unanswered()),
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Step::Moved(n))) => {
                let (_, sent) = asked
                    .get_or_insert_with(|| (tokio::time::Instant::now(), 0));
                *sent += n as u64;
            }
            Ok(Ok(Step::Answered)) => {
                asked = None;
                if !told {
                    told = true;
                    answered.notify_one();
                }
            }
            Ok(Ok(Step::ClientDone)) => client_open = false,
            Ok(Ok(Step::ServerDone)) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// A server on loopback running `serve` on each connection: what the
    /// guard relays to.
    async fn serving<F, Fut>(serve: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("[::1]:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(serve(s));
            }
        });
        addr
    }

    /// An echo server.
    async fn echo() -> SocketAddr {
        serving(|mut s| async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        })
        .await
    }

    async fn closed(c: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(c.read(&mut buf).await, Ok(0) | Err(_))
    }

    #[tokio::test]
    async fn relays_both_ways_and_caps_connections() {
        let backend = echo().await;
        let listen = "[::1]:0".parse().unwrap();
        let bounds = Bounds {
            max_connections: 2,
            idle: Duration::from_secs(60),
            ..Bounds::default()
        };
        let guard =
            AdminGuard::start_with(listen, backend, bounds, log()).unwrap();
        let addr = guard.local_addr();
        let mut held = Vec::new();
        for i in 0..2u8 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&[i; 3]).await.unwrap();
            let mut buf = [0u8; 3];
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, [i; 3]);
            held.push(c);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(b"x").await;
        assert!(closed(&mut third).await, "a third connection relayed");
        // A slot comes back once a connection ends.
        drop(held.pop());
        let again = async {
            loop {
                let mut c = TcpStream::connect(addr).await.unwrap();
                let _ = c.write_all(b"y").await;
                let mut buf = [0u8; 1];
                if c.read_exact(&mut buf).await.is_ok() {
                    assert_eq!(&buf, b"y");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), again).await.unwrap();
    }

    /// A connection on which nothing moves is closed after the idle bound,
    /// and not before (time is paused and advanced by the runtime).
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_when_idle() {
        let backend = echo().await;
        let bounds = Bounds { max_connections: 4, ..Bounds::default() };
        let guard = AdminGuard::start_with(
            "[::1]:0".parse().unwrap(),
            backend,
            bounds,
            log(),
        )
        .unwrap();
        let mut c = TcpStream::connect(guard.local_addr()).await.unwrap();
        c.write_all(b"half a request").await.unwrap();
        let mut buf = [0u8; 14];
        c.read_exact(&mut buf).await.unwrap();
        let start = tokio::time::Instant::now();
        assert!(closed(&mut c).await);
        let waited = start.elapsed();
        assert!(waited >= ADMIN_IDLE, "closed after {waited:?}");
        assert!(waited < ADMIN_IDLE + Duration::from_secs(1), "{waited:?}");
    }

    /// A server that reads everything and never answers.
    async fn silent() -> SocketAddr {
        serving(|mut s| async move {
            let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
        })
        .await
    }

    /// A client of a guard (with the default bounds) in front of
    /// [`silent`]: the guard, which must outlive the client, and the
    /// client's halves.
    async fn client_of_silent() -> (
        AdminGuard,
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let guard = AdminGuard::start(
            "[::1]:0".parse().unwrap(),
            silent().await,
            log(),
        )
        .unwrap();
        let c = TcpStream::connect(guard.local_addr()).await.unwrap();
        let (r, w) = c.into_split();
        (guard, r, w)
    }

    /// Wait, within `bound`, until the guard closes the client reading
    /// from `r`.
    async fn wait_closed(
        r: &mut tokio::net::tcp::OwnedReadHalf,
        bound: Duration,
    ) {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(bound, r.read(&mut buf))
            .await
            .expect("the client was never closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    /// A client that trickles its request a byte at a time, more often
    /// than the idle bound, to a server that has not answered, is closed
    /// once it has sent for the request bound, and not before.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_is_closed_at_the_request_bound() {
        let (_guard, mut r, mut w) = client_of_silent().await;
        let start = tokio::time::Instant::now();
        let trickle = tokio::spawn(async move {
            while w.write_all(b"x").await.is_ok() {
                tokio::time::sleep(ADMIN_IDLE / 2).await;
            }
        });
        wait_closed(&mut r, 4 * ADMIN_REQUEST).await;
        let waited = start.elapsed();
        assert!(waited >= ADMIN_REQUEST, "closed after {waited:?}");
        assert!(waited < ADMIN_REQUEST + ADMIN_IDLE / 2, "{waited:?}");
        trickle.abort();
    }

    /// A client uploading for twice the request bound at twice the slowest
    /// rate allowed for is not cut off; once it stops, the idle bound
    /// closes it.
    #[tokio::test(start_paused = true)]
    async fn a_slow_upload_is_not_cut_off() {
        let (_guard, mut r, mut w) = client_of_silent().await;
        let start = tokio::time::Instant::now();
        let sending = 2 * ADMIN_REQUEST;
        let upload = tokio::spawn(async move {
            let piece = vec![b'x'; (ADMIN_UPLOAD_RATE / 4) as usize];
            let mut last = start.elapsed();
            while last < sending {
                w.write_all(&piece).await.unwrap();
                last = start.elapsed();
                tokio::time::sleep(Duration::from_millis(125)).await;
            }
            (w, last)
        });
        wait_closed(&mut r, 4 * sending).await;
        let waited = start.elapsed();
        let (w, last) = upload.await.unwrap();
        assert!(last >= sending, "{last:?}");
        assert!(waited >= last + ADMIN_IDLE, "closed after {waited:?}");
        assert!(waited < last + ADMIN_IDLE + Duration::from_secs(1));
        drop(w);
    }

    /// A client sending without end, faster than the slowest rate allowed
    /// for, gains no more than a whole request's time: it is closed at
    /// the request bound plus that, and not before.
    #[tokio::test(start_paused = true)]
    async fn a_client_sending_without_end_is_closed() {
        let (_guard, mut r, mut w) = client_of_silent().await;
        let start = tokio::time::Instant::now();
        let bound = ADMIN_REQUEST
            + Duration::from_secs_f64(
                ADMIN_UPLOAD_CREDIT as f64 / ADMIN_UPLOAD_RATE as f64,
            );
        let upload = tokio::spawn(async move {
            // Eight times the rate.
            let piece = vec![b'x'; ADMIN_UPLOAD_RATE as usize];
            while w.write_all(&piece).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(125)).await;
            }
        });
        wait_closed(&mut r, 4 * bound).await;
        let waited = start.elapsed();
        assert!(waited >= bound, "closed after {waited:?}");
        assert!(waited < bound + Duration::from_secs(1), "{waited:?}");
        upload.abort();
    }

    /// HTTP/2's preface closes the connection before the server has it
    /// whole, in one piece or byte by byte; HTTP/1.1 is relayed.
    #[tokio::test]
    async fn http2_is_refused_before_the_server_has_its_preface() {
        let backend = echo().await;
        let guard =
            AdminGuard::start("[::1]:0".parse().unwrap(), backend, log())
                .unwrap();
        let addr = guard.local_addr();
        let mut whole = TcpStream::connect(addr).await.unwrap();
        whole.write_all(H2_PREFACE).await.unwrap();
        assert!(closed(&mut whole).await);
        let mut bytes = TcpStream::connect(addr).await.unwrap();
        let mut echoed = Vec::new();
        for b in H2_PREFACE {
            if bytes.write_all(&[*b]).await.is_err() {
                break;
            }
            if echoed.len() + 1 < H2_PREFACE.len() {
                let mut one = [0u8];
                bytes.read_exact(&mut one).await.unwrap();
                echoed.push(one[0]);
            }
        }
        assert_eq!(echoed, H2_PREFACE[..H2_PREFACE.len() - 1]);
        assert!(closed(&mut bytes).await, "the last byte closes it");
        let mut h1 = TcpStream::connect(addr).await.unwrap();
        h1.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        let mut back = [0u8; 16];
        h1.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"PRI * HTTP/1.1\r\n");
    }

    #[test]
    fn the_preface_is_matched_across_reads_and_only_at_the_start() {
        let mut m = Some(0);
        assert!(refuse_h2(&mut m, b"PRI * HTTP/2").is_ok());
        assert!(refuse_h2(&mut m, b".0\r\n\r\nSM\r\n\r").is_ok());
        assert!(refuse_h2(&mut m, b"\nmore").is_err());
        let mut m = Some(0);
        assert!(refuse_h2(&mut m, b"GET / HTTP/1.1\r\n").is_ok());
        assert_eq!(m, None);
        assert!(refuse_h2(&mut m, H2_PREFACE).is_ok(), "not at the start");
    }

    /// A server that answers what it reads with the number of the
    /// connection it came on (in the order accepted) and the bytes; it
    /// closes the connections numbered in `close` as soon as it accepts
    /// them. Returns its address, and how many it accepted so far.
    async fn numbering(
        close: &'static [usize],
    ) -> (SocketAddr, tokio::sync::watch::Receiver<usize>) {
        let l = TcpListener::bind("[::1]:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (count, seen) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            for n in 0.. {
                let (mut s, _) = l.accept().await.unwrap();
                if close.contains(&n) {
                    drop(s);
                } else {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        while let Ok(k) = s.read(&mut buf).await {
                            if k == 0 {
                                break;
                            }
                            let mut out = vec![n as u8];
                            out.extend_from_slice(&buf[..k]);
                            if s.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                count.send_replace(n + 1);
            }
        });
        (addr, seen)
    }

    async fn accepted(
        seen: &mut tokio::sync::watch::Receiver<usize>,
        n: usize,
    ) {
        let at_least = seen.wait_for(|&k| k >= n);
        tokio::time::timeout(Duration::from_secs(10), at_least)
            .await
            .expect("the server never accepted enough connections")
            .unwrap();
    }

    async fn ask(addr: SocketAddr, what: &[u8]) -> Vec<u8> {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(what).await.unwrap();
        let mut answer = vec![0u8; what.len() + 1];
        c.read_exact(&mut answer).await.unwrap();
        answer
    }

    /// Wait until a connection to `backend` has taken the server's close
    /// (the kernel reports it in CLOSE_WAIT), so the guard's peek sees it.
    #[cfg(target_os = "linux")]
    async fn close_seen(backend: SocketAddr) {
        let port = format!(":{:04X}", backend.port());
        let seen = async {
            loop {
                let table = std::fs::read_to_string("/proc/net/tcp6")
                    .unwrap_or_default();
                let closing = table.lines().skip(1).any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() > 3 && f[2].ends_with(&port) && f[3] == "08"
                });
                if closing {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .expect("the spare never took the server's close");
    }

    /// Each client is relayed over the spare made before it came, and a
    /// new spare is made after it.
    #[tokio::test]
    async fn a_client_takes_the_connection_made_before_it() {
        let (backend, mut seen) = numbering(&[]).await;
        let guard =
            AdminGuard::start("[::1]:0".parse().unwrap(), backend, log())
                .unwrap();
        // The spare is made with no client in sight.
        accepted(&mut seen, 1).await;
        assert_eq!(*seen.borrow(), 1);
        assert_eq!(ask(guard.local_addr(), b"a").await, b"\0a");
        accepted(&mut seen, 2).await;
        assert_eq!(ask(guard.local_addr(), b"b").await, b"\x01b");
        accepted(&mut seen, 3).await;
    }

    /// A spare the server closed is not used: the client is relayed over
    /// a new connection.
    #[tokio::test]
    async fn a_spare_the_server_closed_is_passed_over() {
        let (backend, mut seen) = numbering(&[0]).await;
        let guard =
            AdminGuard::start("[::1]:0".parse().unwrap(), backend, log())
                .unwrap();
        accepted(&mut seen, 1).await;
        #[cfg(target_os = "linux")]
        close_seen(backend).await;
        let answer = ask(guard.local_addr(), b"x").await;
        assert_eq!(&answer[1..], b"x");
        assert_ne!(answer[0], 0, "relayed over the closed spare");
    }

    #[test]
    fn the_backend_is_loopback_of_the_same_family() {
        let v6 = backend_bind("[::]:8000".parse().unwrap());
        assert_eq!(v6, "[::1]:0".parse().unwrap());
        let v4 = backend_bind("0.0.0.0:8000".parse().unwrap());
        assert_eq!(v4, "127.0.0.1:0".parse().unwrap());
    }
}
