//! The illumos system calls behind the kernel dataplane: the routing socket
//! ([`RtSocket`]) and the OPTE driver's ioctl ([`Xde`]).
//!
//! Compiled for illumos only. This has been type-checked for
//! `x86_64-unknown-illumos` but never run on an illumos host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use std::path::Path;

use slog::Logger;

use super::kernel::{KernelDataplane, RouteSocket};
use super::opte::{
    mismatched_version, OpteCmdIoctl, FLAG_ERROR, RESPONSE_LEN,
    XDE_IOC_OPTE_CMD,
};
use super::rtsock::{
    encode_getall, encode_route, listing, outcome, KernelRoute, RouteOp,
    WriteOutcome, AF_ROUTE,
};
use super::tunnels::{OpteDriver, OpteError, V2bCmd};
use crate::{Dataplane, DataplaneError};

/// The illumos kernel dataplane of a daemon: routes through the routing
/// socket, recorded under `data_dir`, and tunnel endpoints through OPTE
/// when its driver (at `api_version`) is present; while it is absent or
/// cannot be opened, tunnel endpoints are recorded only (and the driver
/// looked for again at each change of the set).
pub fn open(
    data_dir: &Path,
    api_version: u64,
    log: &Logger,
) -> Result<Box<dyn Dataplane>, DataplaneError> {
    let opte = Box::new(move || Xde::open(api_version));
    // The route record is read whole, and the driver opened: off the
    // runtime's one worker thread, whose other work another thread takes
    // meanwhile (the supervisor calls this as it starts a router).
    let dp = tokio::task::block_in_place(|| {
        KernelDataplane::new(RtSocket, opte, data_dir, log.clone())
    })?;
    Ok(Box::new(dp))
}

/// Sequence numbers of our routing messages.
static SEQ: AtomicI32 = AtomicI32::new(1);

/// Largest listing buffer tried.
const MAX_LISTING: usize = 64 << 20;

/// illumos `EPROTO`: the driver's answer to an API version mismatch.
const EPROTO: i32 = 71;
/// illumos `ENOBUFS`: the response buffer was too small.
const ENOBUFS: i32 = 132;

fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the descriptor is owned below.
    let fd = unsafe { libc::socket(AF_ROUTE, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write_msg(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: `msg` is valid for `msg.len()` bytes.
    let n =
        unsafe { libc::write(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != msg.len() {
        Err(io::Error::other("short write to the routing socket"))
    } else {
        Ok(())
    }
}

/// The kernel's routing socket: a fresh socket per request (so the copies
/// of every routing message the kernel sends to each socket never pile up
/// in ours).
#[derive(Debug, Default)]
pub struct RtSocket;

impl RtSocket {
    fn change(
        &mut self,
        op: RouteOp,
        r: &KernelRoute,
    ) -> io::Result<WriteOutcome> {
        let fd = route_socket()?;
        let msg = encode_route(op, r, SEQ.fetch_add(1, Ordering::Relaxed));
        match write_msg(&fd, &msg) {
            Ok(()) => Ok(WriteOutcome::Done),
            Err(e) => match e.raw_os_error() {
                Some(errno) => Ok(outcome(op, errno)),
                None => Err(e),
            },
        }
    }
}

impl RouteSocket for RtSocket {
    fn add(&mut self, r: &KernelRoute) -> io::Result<WriteOutcome> {
        self.change(RouteOp::Add, r)
    }

    fn delete(&mut self, r: &KernelRoute) -> io::Result<WriteOutcome> {
        self.change(RouteOp::Delete, r)
    }

    fn interface_exists(&mut self, ifindex: u16) -> bool {
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `name` holds IF_NAMESIZE bytes, as if_indextoname needs.
        !unsafe { libc::if_indextoname(u32::from(ifindex), name.as_mut_ptr()) }
            .is_null()
    }

    fn list(&mut self) -> io::Result<Vec<KernelRoute>> {
        let mut size = 1 << 20;
        loop {
            let fd = route_socket()?;
            let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
            // SAFETY: `tv` is a valid timeval for the call's duration.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            write_msg(
                &fd,
                &encode_getall(SEQ.fetch_add(1, Ordering::Relaxed)),
            )?;
            let mut buf = vec![0u8; size];
            let pid = std::process::id() as i32;
            // Other routing messages may arrive first: read until a read
            // holds listing entries.
            for _ in 0..8 {
                // SAFETY: `buf` is valid for `buf.len()` bytes.
                let n = unsafe {
                    libc::read(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = n as usize;
                if n == buf.len() {
                    if size < MAX_LISTING {
                        break; // possibly truncated: again, larger
                    }
                    // A listing taken as whole while cut short would have
                    // the routes it missed struck from the record, left
                    // in the kernel: no listing then (every recorded
                    // route is deleted).
                    return Err(io::Error::other(
                        "the routing listing does not fit the largest buffer",
                    ));
                }
                if let Some(listed) = listing(&buf[..n], pid) {
                    return listed.map_err(|e| {
                        io::Error::other(format!(
                            "malformed routing listing: {e}"
                        ))
                    });
                }
            }
            if size >= MAX_LISTING {
                return Err(io::Error::other("no routing listing arrived"));
            }
            size *= 4;
        }
    }
}

/// The OPTE driver, `/dev/xde`.
#[derive(Debug)]
pub struct Xde {
    fd: OwnedFd,
    api_version: u64,
}

impl Xde {
    /// Opens the driver; `Ok(None)` where there is none.
    pub fn open(api_version: u64) -> Result<Option<Xde>, OpteError> {
        let path = CString::new("/dev/xde")
            .map_err(|e| OpteError::Other(e.to_string()))?;
        // SAFETY: `path` is a valid NUL-terminated string.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(OpteError::Open(e.to_string())),
            };
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(Xde { fd, api_version }))
    }
}

impl OpteDriver for Xde {
    fn send(&mut self, cmd: V2bCmd, request: &[u8]) -> Result<(), OpteError> {
        let cmd = match cmd {
            V2bCmd::Set => super::opte::CMD_SET_V2B,
            V2bCmd::Clear => super::opte::CMD_CLEAR_V2B,
        };
        let mut resp = vec![0u8; RESPONSE_LEN];
        loop {
            let mut hdr = OpteCmdIoctl {
                api_version: self.api_version,
                cmd,
                flags: 0,
                reserved: 0,
                req_bytes: request.as_ptr(),
                req_len: request.len(),
                resp_bytes: resp.as_mut_ptr(),
                resp_len: resp.len(),
                resp_len_actual: 0,
            };
            // SAFETY: `hdr` points at `request` and `resp`, both alive and
            // of the stated lengths for the call.
            let rc = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    XDE_IOC_OPTE_CMD,
                    &mut hdr as *mut OpteCmdIoctl,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(ENOBUFS)
                    if hdr.resp_len_actual > resp.len()
                        && hdr.resp_len_actual <= MAX_LISTING =>
                {
                    resp.resize(hdr.resp_len_actual, 0);
                }
                Some(EPROTO) => {
                    let n = hdr.resp_len_actual.min(resp.len());
                    let driver = (hdr.flags & FLAG_ERROR != 0)
                        .then(|| {
                            mismatched_version(&resp[..n], self.api_version)
                        })
                        .flatten();
                    return Err(OpteError::Version {
                        ours: self.api_version,
                        driver,
                    });
                }
                // The device is gone only when the driver did not answer:
                // with its error flag set, the errno is its answer about
                // the request (an entry it does not know, say), and the
                // driver is still there.
                Some(libc::ENOENT) | Some(libc::ENXIO)
                    if hdr.flags & FLAG_ERROR == 0 =>
                {
                    return Err(OpteError::Absent)
                }
                Some(libc::ENOMEM) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                | Some(libc::EINTR) => {
                    return Err(OpteError::Busy(e.to_string()))
                }
                _ => return Err(OpteError::Other(e.to_string())),
            }
        }
    }
}
