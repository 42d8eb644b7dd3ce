//! Route monitor for `scripts/bench-fabric.py`.
//!
//! `bench_fabric monitor NETNS` enters the named network namespace, joins
//! the IPv6 route multicast group of rtnetlink and reports every
//! `RTM_NEWROUTE` / `RTM_DELROUTE` of an IPv6 route with protocol 221 (the
//! routes `ddmd` installs), stamped with `CLOCK_MONOTONIC` at receipt (the
//! clock behind Python's `time.perf_counter()` on Linux).
//!
//! The kernel sends one datagram per route, so a Python reader cannot keep
//! up with 100,000 of them without skewing its timestamps; this program
//! drains whatever is queued, then writes one line per group:
//!
//! * up to [`DETAIL`] events: one line each,
//!   `E <mono_ns> <a|d> <addr>/<len> <present>`;
//! * more: `B <first_mono_ns> <last_mono_ns> <adds> <dels> <present>`;
//!
//! where `present` is how many distinct protocol-221 IPv6 destinations the
//! monitor believes are in the table after the event (or group). A lost
//! notification (`ENOBUFS`) prints `O <mono_ns>`. It runs until stdin is
//! closed or it is killed. It prints `R` once subscribed.
//!
//! `bench_fabric count NETNS` enters the named network namespace and polls
//! the kernel's own count of IPv6 routes every millisecond: the fourth
//! field (`fib_rt_entries`) of `/proc/net/rt6_stats`, every route of every
//! table in the namespace, a multipath route once per nexthop. It prints
//! `R <count>` once it has read it, then `C <mono_ns> <count>` whenever
//! the count changed (stamped when read), until stdin is closed. It costs
//! far less than the monitor: no notification is received and a read is
//! a few counters (two of them took 0.04-0.05 core-s per 100,000-route
//! phase of the benchmark, against 0.1-0.3 for the monitors).
//!
//! `bench_fabric floor add|del N NETNS:IFNAME[:NHID]...` is the kernel
//! floor the benchmark compares `ddmd` with: a bare netlink client that
//! adds (or deletes) the same `N` routes as the benchmark's big
//! advertisement (`fd10:0:<i/65536>:<i%65536>::/64 via fe80::2 dev IFNAME
//! proto 221`) in each named namespace at once, one thread per namespace,
//! 256 requests per `send` and one acknowledgement per send. With `NHID`,
//! each route names that existing nexthop object (`RTA_NH_ID`, as `ip
//! route add ... nhid NHID`) instead of its gateway and interface (the
//! interface must still exist). It prints
//! `F <seconds> <errors> <cpu>`: the wall time from the common start until
//! the last table is done, how many requests the kernels refused, and the
//! CPU seconds (user + system) all its threads used in that time.
//!
//! Linux only; needs root (setns).

#[cfg(target_os = "linux")]
mod monitor {
    use std::collections::HashSet;
    use std::io::{self, Write};
    use std::net::Ipv6Addr;

    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    const RTM_NEWROUTE: u16 = 24;
    const RTM_DELROUTE: u16 = 25;
    const RTA_DST: u16 = 1;
    const RTPROT_DDM: u8 = 221;
    const AF_INET6: u8 = 10;
    const DETAIL: usize = 16;

    use super::mono_ns;
    use ddm_test_harness::netns::enter_netns;

    fn open_socket() -> io::Result<i32> {
        let fd = super::netlink_socket(1 << 30)?;
        // SAFETY: plain socket calls on values we own.
        unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = RTMGRP_IPV6_ROUTE;
            if libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(fd)
        }
    }

    /// One route event: (add?, destination, prefix length).
    type Event = (bool, [u8; 16], u8);

    fn parse(buf: &[u8], out: &mut Vec<Event>) {
        let mut off = 0;
        while off + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap())
                as usize;
            let typ =
                u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > buf.len() {
                break;
            }
            if (typ == RTM_NEWROUTE || typ == RTM_DELROUTE)
                && len >= 28
                && buf[off + 16] == AF_INET6
                && buf[off + 21] == RTPROT_DDM
            {
                let plen = buf[off + 17];
                let mut dst = [0u8; 16];
                let mut a = off + 28;
                while a + 4 <= off + len {
                    let alen =
                        u16::from_ne_bytes(buf[a..a + 2].try_into().unwrap())
                            as usize;
                    let atyp = u16::from_ne_bytes(
                        buf[a + 2..a + 4].try_into().unwrap(),
                    );
                    if alen < 4 {
                        break;
                    }
                    if atyp == RTA_DST && alen >= 20 {
                        dst.copy_from_slice(&buf[a + 4..a + 20]);
                        break;
                    }
                    a += (alen + 3) & !3;
                }
                out.push((typ == RTM_NEWROUTE, dst, plen));
            }
            off += (len + 3) & !3;
        }
    }

    pub fn run(ns: &str) -> io::Result<()> {
        enter_netns(ns)?;
        let fd = open_socket()?;
        let stdout = io::stdout();
        let mut w = io::BufWriter::new(stdout.lock());
        writeln!(w, "R")?;
        w.flush()?;
        // Stop when our parent closes stdin (it holds the write end).
        let mut fds = [
            libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 },
        ];
        let mut present: HashSet<([u8; 16], u8)> = HashSet::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut group: Vec<(u128, Event)> = Vec::new();
        let mut events = Vec::new();
        loop {
            // SAFETY: fds is a valid array of two pollfds.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[1].revents != 0 {
                let mut b = [0u8; 64];
                // SAFETY: reading into a local buffer.
                let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), 64) };
                if n <= 0 {
                    return Ok(());
                }
            }
            if fds[0].revents == 0 {
                continue;
            }
            // Drain everything queued, stamping each datagram.
            group.clear();
            loop {
                // SAFETY: buf is valid for its length.
                let n = unsafe {
                    libc::recv(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                let t = mono_ns();
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::EINTR) => continue,
                        Some(libc::ENOBUFS) => {
                            writeln!(w, "O {t}")?;
                            continue;
                        }
                        _ => return Err(e),
                    }
                }
                events.clear();
                parse(&buf[..n as usize], &mut events);
                for ev in events.drain(..) {
                    group.push((t, ev));
                }
                if group.len() >= 4096 {
                    break;
                }
            }
            if group.is_empty() {
                continue;
            }
            if group.len() <= DETAIL {
                for (t, (add, dst, plen)) in &group {
                    if *add {
                        present.insert((*dst, *plen));
                    } else {
                        present.remove(&(*dst, *plen));
                    }
                    writeln!(
                        w,
                        "E {t} {} {}/{plen} {}",
                        if *add { 'a' } else { 'd' },
                        Ipv6Addr::from(*dst),
                        present.len()
                    )?;
                }
            } else {
                let (mut adds, mut dels) = (0usize, 0usize);
                for (_, (add, dst, plen)) in &group {
                    if *add {
                        adds += 1;
                        present.insert((*dst, *plen));
                    } else {
                        dels += 1;
                        present.remove(&(*dst, *plen));
                    }
                }
                let first = group.first().map(|g| g.0).unwrap_or(0);
                let last = group.last().map(|g| g.0).unwrap_or(0);
                writeln!(
                    w,
                    "B {first} {last} {adds} {dels} {}",
                    present.len()
                )?;
            }
            w.flush()?;
        }
    }
}

#[cfg(target_os = "linux")]
mod count {
    use std::fs::File;
    use std::io::{self, Write};
    use std::os::unix::fs::FileExt;

    use ddm_test_harness::netns::enter_netns;

    /// `fib_rt_entries`, the fourth hexadecimal field of `rt6_stats`.
    fn entries(f: &File, buf: &mut [u8]) -> io::Result<u64> {
        // A seq_file read at offset 0 shows the counters afresh.
        let n = f.read_at(buf, 0)?;
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.split_whitespace().nth(3))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "bad rt6_stats")
            })
    }

    pub fn run(ns: &str) -> io::Result<()> {
        enter_netns(ns)?;
        // /proc/self/net is the namespace this (still single-threaded)
        // process has just entered.
        let f = File::open("/proc/self/net/rt6_stats")?;
        let mut buf = [0u8; 256];
        let mut last = entries(&f, &mut buf)?;
        let stdout = io::stdout();
        let mut w = io::BufWriter::new(stdout.lock());
        writeln!(w, "R {last}")?;
        w.flush()?;
        let mut stdin =
            libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
        loop {
            // One millisecond between reads; stop when stdin closes.
            // SAFETY: stdin is a valid pollfd.
            let rc = unsafe { libc::poll(&mut stdin, 1, 1) };
            if rc > 0 {
                let mut b = [0u8; 64];
                // SAFETY: reading into a local buffer.
                let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), 64) };
                if n <= 0 {
                    return Ok(());
                }
            }
            let now = entries(&f, &mut buf)?;
            if now != last {
                last = now;
                writeln!(w, "C {} {now}", super::mono_ns())?;
                w.flush()?;
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of Python's
/// `time.perf_counter()` on Linux).
#[cfg(target_os = "linux")]
fn mono_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// A netlink route socket with a receive buffer of `rcvbuf` bytes (forced:
/// the benchmark runs as root).
#[cfg(target_os = "linux")]
fn netlink_socket(rcvbuf: libc::c_int) -> std::io::Result<i32> {
    // SAFETY: plain socket calls on values we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        Ok(fd)
    }
}

#[cfg(target_os = "linux")]
mod floor {
    use std::io;
    use std::sync::{Arc, Barrier};
    use std::time::Instant;

    const RTM_NEWROUTE: u16 = 24;
    const RTM_DELROUTE: u16 = 25;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RT_TABLE_MAIN: u8 = 254;
    const RTPROT_DDM: u8 = 221;
    const RTN_UNICAST: u8 = 1;
    const AF_INET6: u8 = 10;
    /// Requests per `send`, as the floor prescribes.
    pub const PER_SEND: usize = 256;
    const RTA_NH_ID: u16 = 30;
    /// One request: header 16, rtmsg 12, dst 20, gateway 20, oif 8.
    const MSG_LEN: usize = 76;
    /// One request naming a nexthop object: header 16, rtmsg 12, dst 20,
    /// nexthop id 8.
    const MSG_LEN_NHID: usize = 56;

    /// Where a route goes: its gateway (fe80::2) on an interface, or a
    /// nexthop object.
    #[derive(Clone, Copy)]
    enum Via {
        Oif(u32),
        Nhid(u32),
    }

    fn attr(buf: &mut Vec<u8>, typ: u16, data: &[u8]) {
        buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        buf.extend_from_slice(&typ.to_ne_bytes());
        buf.extend_from_slice(data);
    }

    /// Route `i` of the benchmark's big advertisement.
    fn dst(i: usize) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[0] = 0xfd;
        d[1] = 0x10;
        d[4..6].copy_from_slice(&((i >> 16) as u16).to_be_bytes());
        d[6..8].copy_from_slice(&((i & 0xffff) as u16).to_be_bytes());
        d
    }

    fn request(
        buf: &mut Vec<u8>,
        add: bool,
        i: usize,
        seq: u32,
        ack: bool,
        via: Via,
    ) {
        let (typ, mut flags) = if add {
            (RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL)
        } else {
            (RTM_DELROUTE, NLM_F_REQUEST)
        };
        if ack {
            flags |= NLM_F_ACK;
        }
        let len = match via {
            Via::Oif(_) => MSG_LEN,
            Via::Nhid(_) => MSG_LEN_NHID,
        };
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&typ.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
        // type, flags (u32).
        buf.extend_from_slice(&[
            AF_INET6,
            64,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_DDM,
            0,
            RTN_UNICAST,
        ]);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        attr(buf, RTA_DST, &dst(i));
        match via {
            Via::Oif(oif) => {
                let gw = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
                attr(buf, RTA_GATEWAY, &gw);
                attr(buf, RTA_OIF, &oif.to_ne_bytes());
            }
            Via::Nhid(id) => attr(buf, RTA_NH_ID, &id.to_ne_bytes()),
        }
    }

    fn socket() -> io::Result<i32> {
        super::netlink_socket(4 << 20)
    }

    /// Send `batch`, then read until the acknowledgement of `last_seq`;
    /// returns how many requests were refused.
    fn exchange(
        fd: i32,
        batch: &[u8],
        last_seq: u32,
        rbuf: &mut [u8],
    ) -> io::Result<usize> {
        // SAFETY: batch is valid for its length.
        let n =
            unsafe { libc::send(fd, batch.as_ptr().cast(), batch.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut errors = 0;
        loop {
            // SAFETY: rbuf is valid for its length.
            let n = unsafe {
                libc::recv(fd, rbuf.as_mut_ptr().cast(), rbuf.len(), 0)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let buf = &rbuf[..n as usize];
            let mut off = 0;
            let mut done = false;
            while off + 20 <= buf.len() {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap())
                        as usize;
                let typ = u16::from_ne_bytes(
                    buf[off + 4..off + 6].try_into().unwrap(),
                );
                let seq = u32::from_ne_bytes(
                    buf[off + 8..off + 12].try_into().unwrap(),
                );
                if len < 16 {
                    break;
                }
                if typ == NLMSG_ERROR {
                    let err = i32::from_ne_bytes(
                        buf[off + 16..off + 20].try_into().unwrap(),
                    );
                    if err != 0 {
                        errors += 1;
                    }
                    if seq == last_seq {
                        done = true;
                    }
                }
                off += (len + 3) & !3;
            }
            if done {
                return Ok(errors);
            }
        }
    }

    /// Fill (or empty) one table: runs in its own thread.
    fn one(
        ns: &str,
        ifname: &str,
        nhid: Option<u32>,
        add: bool,
        n: usize,
        start: &Barrier,
    ) -> io::Result<usize> {
        // Set up, then meet the other threads at the barrier whatever came
        // of it (a thread that left early would keep them waiting).
        let setup = (|| {
            ddm_test_harness::netns::enter_netns(ns)?;
            let name = std::ffi::CString::new(ifname)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // SAFETY: name is a valid NUL-terminated string.
            let oif = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if oif == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok((socket()?, nhid.map_or(Via::Oif(oif), Via::Nhid)))
        })();
        start.wait();
        let (fd, via) = setup?;
        let mut batch = Vec::with_capacity(PER_SEND * MSG_LEN);
        let mut rbuf = vec![0u8; 1 << 16];
        let mut errors = 0;
        let mut i = 0;
        let mut seq = 0u32;
        while i < n {
            let end = (i + PER_SEND).min(n);
            batch.clear();
            for k in i..end {
                seq += 1;
                request(&mut batch, add, k, seq, k + 1 == end, via);
            }
            errors += exchange(fd, &batch, seq, &mut rbuf)?;
            i = end;
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        Ok(errors)
    }

    /// CPU seconds (user + system) this process has used so far.
    fn cpu_secs() -> f64 {
        // SAFETY: getrusage only writes the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_SELF covers every thread.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(ru.ru_utime) + secs(ru.ru_stime)
    }

    /// Add (or delete) `n` routes in every target at once, one thread
    /// each; returns the seconds from the common start until the last
    /// thread is done, the CPU seconds all threads used in that time, and
    /// the routes the kernel refused.
    pub fn run(
        add: bool,
        n: usize,
        targets: &[String],
    ) -> io::Result<(f64, f64, usize)> {
        // Every target is read before any thread waits at the barrier.
        let mut parsed = Vec::new();
        for t in targets {
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{t}: want NETNS:IFNAME[:NHID]"),
                )
            };
            let mut parts = t.split(':');
            let (Some(ns), Some(ifname)) = (parts.next(), parts.next()) else {
                return Err(bad());
            };
            if ns.is_empty() || ifname.is_empty() {
                return Err(bad());
            }
            let nhid = match parts.next() {
                None => None,
                Some(id) => Some(id.parse::<u32>().map_err(|_| bad())?),
            };
            if parts.next().is_some() {
                return Err(bad());
            }
            parsed.push((ns.to_string(), ifname.to_string(), nhid));
        }
        let start = Arc::new(Barrier::new(parsed.len() + 1));
        let mut threads = Vec::new();
        for (ns, ifname, nhid) in parsed {
            let start = Arc::clone(&start);
            threads.push(std::thread::spawn(move || {
                one(&ns, &ifname, nhid, add, n, &start)
            }));
        }
        start.wait();
        let t0 = Instant::now();
        let cpu0 = cpu_secs();
        let mut errors = 0;
        for t in threads {
            errors += t
                .join()
                .map_err(|_| io::Error::other("floor thread panicked"))??;
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok((secs, cpu_secs() - cpu0, errors))
    }
}

#[cfg(target_os = "linux")]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1..).unwrap_or_default() {
        [cmd, ns] if cmd == "monitor" => {
            if let Err(e) = monitor::run(ns) {
                eprintln!("bench_fabric monitor {ns}: {e}");
                std::process::exit(1);
            }
        }
        [cmd, ns] if cmd == "count" => {
            if let Err(e) = count::run(ns) {
                eprintln!("bench_fabric count {ns}: {e}");
                std::process::exit(1);
            }
        }
        [cmd, op, n, targets @ ..]
            if cmd == "floor"
                && (op == "add" || op == "del")
                && !targets.is_empty() =>
        {
            let Ok(n) = n.parse::<usize>() else {
                eprintln!("bench_fabric floor: bad count {n}");
                std::process::exit(2);
            };
            match floor::run(op == "add", n, targets) {
                Ok((secs, cpu, errors)) => {
                    println!("F {secs:.6} {errors} {cpu:.6}")
                }
                Err(e) => {
                    eprintln!("bench_fabric floor: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!(
                "usage: bench_fabric monitor NETNS\n       \
                 bench_fabric count NETNS\n       \
                 bench_fabric floor add|del N NETNS:IFNAME[:NHID]..."
            );
            std::process::exit(2);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench_fabric: Linux only");
    std::process::exit(2);
}
