//! Network-namespace topologies for integration tests.
//!
//! A [`Topology`] creates one Linux network namespace per node and veth pairs
//! between them, so real `ddmd` routers can run side by side on one machine
//! and talk over IPv6 link-local multicast exactly as they would on a rack.
//!
//! Everything a topology creates is named from a per-process, per-topology
//! prefix, so many tests can build topologies in parallel threads and
//! processes without colliding. Dropping the topology kills the processes it
//! spawned and deletes its links and namespaces, also when the test panics.
//! When the test process is interrupted instead (SIGINT, SIGTERM, SIGHUP),
//! which runs no `Drop`, a thread of this crate kills what runs in the
//! namespaces still held and deletes them before the process exits; and
//! what a topology spawns is killed by the kernel if the thread that
//! spawned it dies first (`PR_SET_PDEATHSIG`), SIGKILL of the test
//! included. The namespaces of a process killed outright are deleted by
//! the next process's gate ([`sweep_stale`]).
//!
//! Tests call [`require_netns`] first: it skips loudly where namespaces are
//! unavailable (not root, no `ip`, no `ping`), and fails instead when
//! `DDM_REQUIRE_NETNS=1` or `CI=true`, so CI cannot silently skip the
//! suite.
//!
//! ```no_run
//! use ddm_netns::{require_netns, Topology};
//! use std::time::Duration;
//!
//! if require_netns("two_nodes") {
//!     let mut topo = Topology::new("two_nodes").unwrap();
//!     topo.node("s1").unwrap();
//!     topo.node("s2").unwrap();
//!     let link = topo.link("s1", "s2").unwrap();
//!     let addr = topo
//!         .wait_link_local("s2", &link.b_if, Duration::from_secs(5))
//!         .unwrap();
//!     println!("s2 is {addr}%{}", link.b_if);
//! }
//! ```

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The namespaces this process made (or is making) and has not deleted:
/// deleted on an interrupt by the thread [`clean_up_on_interrupt`] starts
/// (one not made yet is left, with its owner file, to the next sweep).
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The write end of the pipe the signal handler wakes that thread with.
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// The signals that end a test run early and run no `Drop`.
const INTERRUPTS: [libc::c_int; 3] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A network namespace of this process: made by [`Namespace::add`],
/// deleted when dropped, and on an interrupt of the process (SIGINT,
/// SIGTERM, SIGHUP), with every process in it killed, before the process
/// ends as the signal would have ended it.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// `ip netns add name`, held from before it is made (an interrupt
    /// meanwhile deletes it, or leaves it to the next sweep if `ip` has
    /// not made it yet), its owner (this process) recorded in
    /// [`owner_file`] for [`sweep_stale`]. A name that is taken (a
    /// namespace of that name, or an owner file: another add under way)
    /// is an error, and what holds it is left as it is.
    pub fn add(name: &str) -> Result<Namespace, String> {
        clean_up_on_interrupt();
        let line = owner_line()?;
        let taken = || format!("namespace {name} exists already");
        if made(name) {
            return Err(taken());
        }
        // The owner file claims the name, made only where there is none;
        // then the name is held. An interrupt in between leaves the file
        // alone, for the next gate's sweep (its owner is gone by then).
        let file = owner_file(name);
        File::create_new(&file)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => taken(),
                _ => format!("recording the owner of {name}: {e}"),
            })?
            .write_all(line.as_bytes())
            .map_err(|e| {
                let _ = std::fs::remove_file(&file);
                format!("recording the owner of {name}: {e}")
            })?;
        HELD.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
        match run_ok(&mut ip(["netns", "add", name])) {
            Ok(_) => Ok(Namespace { name: name.to_string() }),
            Err(e) => {
                HELD.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
                let _ = std::fs::remove_file(&file);
                Err(e)
            }
        }
    }

    /// Its name (for `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = delete(&self.name, false) {
            eprintln!("netns cleanup: {e}");
            return;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
    }
}

/// Where the owner of each namespace this crate made is recorded (its pid
/// and start time), while the namespace lives.
const OWNERS_DIR: &str = "/run/ddm-netns-owners";

/// The file recording the owner of namespace `ns`.
pub fn owner_file(ns: &str) -> std::path::PathBuf {
    std::path::Path::new(OWNERS_DIR).join(ns)
}

/// What an owner file of this process says (its pid and start time),
/// with the owners' directory made: once per process.
fn owner_line() -> Result<&'static str, String> {
    static LINE: OnceLock<Result<String, String>> = OnceLock::new();
    LINE.get_or_init(|| {
        let me = std::process::id();
        std::fs::create_dir_all(OWNERS_DIR)
            .map_err(|e| format!("making {OWNERS_DIR}: {e}"))?;
        Ok(format!("{me} {}\n", start_time(me).unwrap_or(0)))
    })
    .as_ref()
    .map(String::as_str)
    .map_err(Clone::clone)
}

/// Field `n` (counted from 1, as proc(5) counts them; 3 or later, after
/// the command's name, which may hold spaces and parentheses) of process
/// `pid`'s `stat`; `None` when there is no such process (or `n` is 1 or 2).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?).map(str::to_string)
}

/// When process `pid` started (field 22 of its `stat`, in clock ticks
/// since boot): with the pid, who it is (a pid is reused).
fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}

/// Whether process `pid` is gone: no such process, or a zombie not yet
/// reaped by whoever inherited it (field 3 of its `stat`, its state).
pub fn process_gone(pid: u32) -> bool {
    stat_field(pid, 3).is_none_or(|state| state == "Z")
}

/// The file of namespace `ns` (`ip netns`'s bind mount).
fn ns_path(ns: &str) -> std::path::PathBuf {
    std::path::Path::new(NETNS_RUN_DIR).join(ns)
}

/// Whether namespace `ns` exists.
fn made(ns: &str) -> bool {
    ns_path(ns).exists()
}

/// Delete namespace `ns`, with its owner file; `kill`: kill what runs in
/// it first (an interrupted or dead owner's; a topology reaps its own).
fn delete(ns: &str, kill: bool) -> Result<(), String> {
    if made(ns) {
        let pids = kill.then(|| ip(["netns", "pids", ns]).output().ok());
        if let Some(Some(out)) = pids {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        run_ok(&mut ip(["netns", "del", ns]))?;
    }
    let _ = std::fs::remove_file(owner_file(ns));
    Ok(())
}

/// Delete the namespaces whose owner is gone (a test run killed with
/// SIGKILL, which no handler sees): those recorded in [`OWNERS_DIR`] by a
/// process that no longer runs. Runs once per process, when the gate is
/// first asked; returns how many it deleted.
pub fn sweep_stale() -> usize {
    let Ok(entries) = std::fs::read_dir(OWNERS_DIR) else {
        return 0;
    };
    let mut swept = 0;
    for entry in entries.flatten() {
        let ns = entry.file_name().to_string_lossy().into_owned();
        let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut fields = owner.split_whitespace();
        let pid = fields.next().and_then(|p| p.parse::<u32>().ok());
        let started = fields.next().and_then(|t| t.parse::<u64>().ok());
        let alive =
            pid.and_then(start_time).is_some_and(|t| Some(t) == started);
        if !alive && delete(&ns, true).is_ok() {
            eprintln!("netns: deleted {ns}, left by a test run that is gone");
            swept += 1;
        }
    }
    swept
}

extern "C" fn interrupted(signal: libc::c_int) {
    // SAFETY: errno is this thread's; saved and restored around write(2),
    // which is async-signal-safe (as is the atomic load).
    unsafe {
        let errno = *libc::__errno_location();
        let fd = WAKE.load(Ordering::Relaxed);
        let byte = signal as u8;
        libc::write(fd, (&byte as *const u8).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// Once per process: on one of [`INTERRUPTS`], kill every process in the
/// namespaces held, delete them, and end the process by that signal (its
/// default action, raised again).
fn clean_up_on_interrupt() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            eprintln!(
                "netns: no cleanup on interrupt: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        WAKE.store(fds[1], Ordering::Relaxed);
        let read_end = fds[0];
        let started = std::thread::Builder::new()
            .name("netns-cleanup".into())
            .spawn(move || {
                let mut signal = [0u8; 1];
                // SAFETY: reading one byte into `signal`.
                let n = unsafe {
                    libc::read(read_end, signal.as_mut_ptr().cast(), 1)
                };
                if n != 1 {
                    return;
                }
                let signal = libc::c_int::from(signal[0]);
                // A second interrupt now ends the process at once.
                for s in INTERRUPTS {
                    // SAFETY: restoring a signal's default action.
                    unsafe { libc::signal(s, libc::SIG_DFL) };
                }
                // Held to the end: no namespace is made meanwhile.
                let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
                // One not there yet may still be made by an `ip netns add`
                // under way: its owner file stays, for the next gate's
                // sweep to delete both.
                let deleted = held
                    .iter()
                    .filter(|ns| made(ns) && delete(ns, true).is_ok())
                    .count();
                eprintln!("netns: interrupted; deleted {deleted} namespaces");
                // SAFETY: the signal's default action ends the process.
                unsafe { libc::raise(signal) };
            });
        if let Err(e) = started {
            eprintln!("netns: no cleanup on interrupt: {e}");
            return;
        }
        for signal in INTERRUPTS {
            // SAFETY: an all-zero sigaction is valid; the handler only
            // writes to a pipe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                let handler: extern "C" fn(libc::c_int) = interrupted;
                action.sa_sigaction = handler as usize as libc::sighandler_t;
                libc::sigemptyset(&mut action.sa_mask);
                action.sa_flags = libc::SA_RESTART;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    });
}

/// Where `ip netns` keeps the bind mounts that name namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Environment variable that turns a skip into a failure (CI sets it to `1`).
pub const REQUIRE_ENV: &str = "DDM_REQUIRE_NETNS";

/// Environment variable naming a file to which every namespace test that ran
/// appends its name, so CI can check that the suite really ran.
pub const RAN_FILE_ENV: &str = "DDM_NETNS_RAN_FILE";

/// Longest Linux interface name (`IFNAMSIZ` minus the terminating NUL).
const IFNAME_MAX: usize = 15;

/// How often [`wait_until`] re-checks its condition.
const POLL_TICK: Duration = Duration::from_millis(20);

/// Counts topologies (and probes) made by this process, for unique names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Polls `f` every few milliseconds until it returns true or `deadline`
/// has passed; the error names `what` was awaited.
pub fn wait_until(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> Result<(), String> {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= end {
            return Err(format!(
                "timed out after {deadline:?} waiting for {what}"
            ));
        }
        std::thread::sleep(POLL_TICK.min(end - now));
    }
}

/// Four hex digits that differ between processes, so names stay unique even
/// across test processes that share `/var/run/netns`.
fn process_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Mix the pid and the clock so two processes started in the same
        // instant, or with recycled pids, still differ.
        let mixed = (std::process::id().wrapping_mul(0x9e37_79b9) ^ nanos)
            .rotate_left(13);
        format!("{:04x}", (mixed ^ (mixed >> 16)) & 0xffff)
    })
}

/// The next per-process sequence number, in base 36 to keep names short.
fn next_seq() -> String {
    let mut n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// Runs a command to completion, turning a failure to start it into an error.
fn run(cmd: &mut Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and fails unless it exits successfully; the error carries
/// the command's stderr.
fn run_ok(cmd: &mut Command) -> Result<Output, String> {
    let out = run(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Builds `ip <args…>`.
fn ip<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Checks that this process can build namespace topologies: it runs as root,
/// `ip` is installed, and a probe namespace can be created and deleted.
/// The answer is computed once per process.
pub fn netns_available() -> Result<(), String> {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    AVAILABLE
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            if euid != 0 {
                return Err(format!("not running as root (euid {euid})"));
            }
            run_ok(&mut ip(["-V"]))
                .map_err(|e| format!("`ip` unavailable: {e}"))?;
            sweep_stale();
            // The suites ping across their fabrics: a machine without ping
            // cannot run them (a skip here, not a failure halfway).
            ping_available()?;
            let probe = format!("ddm-probe-{}{}", process_tag(), next_seq());
            let held = Namespace::add(&probe)
                .map_err(|e| format!("cannot create a namespace: {e}"))?;
            drop(held);
            if made(&probe) {
                return Err(format!("cannot delete namespace {probe}"));
            }
            Ok(())
        })
        .clone()
}

/// Decides whether the namespace test `test_name` can run.
///
/// Returns true when namespaces are available, after appending `test_name`
/// to the file named by `DDM_NETNS_RAN_FILE` (if set). Otherwise prints
/// `SKIP: <test> needs network namespaces (<reason>)` to stderr and returns
/// false, unless `DDM_REQUIRE_NETNS=1` or `CI=true`, in which case it panics.
pub fn require_netns(test_name: &str) -> bool {
    match netns_available() {
        Ok(()) => {
            if let Some(path) = std::env::var_os(RAN_FILE_ENV) {
                let mut file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap_or_else(|e| {
                        panic!("cannot open {RAN_FILE_ENV}={path:?}: {e}")
                    });
                // One write per line: appends of short lines do not interleave.
                file.write_all(format!("{test_name}\n").as_bytes())
                    .unwrap_or_else(|e| {
                        panic!("cannot write {RAN_FILE_ENV}={path:?}: {e}")
                    });
            }
            true
        }
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1")
                || std::env::var("CI").as_deref() == Ok("true")
            {
                panic!("{test_name} needs network namespaces, and they must run here ({REQUIRE_ENV}=1 or CI=true), but: {reason}");
            }
            // Straight to the stderr handle, past libtest's output capture,
            // so the skip shows even when the test passes.
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: {test_name} needs network namespaces ({reason})"
            );
            false
        }
    }
}

/// Moves the calling thread (only it) into the network namespace named
/// `ns` (as listed by `ip netns list`).
pub fn enter_netns(ns: &str) -> std::io::Result<()> {
    let path = ns_path(ns);
    let file = File::open(&path).map_err(|e| {
        let path = path.display();
        std::io::Error::new(e.kind(), format!("cannot open {path}: {e}"))
    })?;
    // SAFETY: `file` is an open namespace file for the whole call; setns
    // only changes the namespace of the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("setns({}): {e}", path.display()),
        ));
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has joined the network namespace named
/// `ns` (as listed by `ip netns list`), and returns its result.
///
/// Only that thread changes namespace; sockets it creates stay bound to `ns`
/// after they are returned to the caller. Panics if the namespace cannot be
/// entered, and re-raises a panic of `f`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            enter_netns(ns).unwrap_or_else(|e| panic!("{e}"));
            f()
        });
        match handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// In a child between fork and exec: be killed when the thread that
/// spawned it dies (the test, however it ends), and fail if `parent` is
/// already gone. Only async-signal-safe calls.
pub fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid(2) only concern the
    // calling process.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Make `cmd`'s process die with the thread that spawns it
/// ([`die_with_parent`]), however the test ends.
pub fn die_with_test(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook only makes async-signal-safe calls (prctl, getppid).
    unsafe { cmd.pre_exec(move || die_with_parent(parent)) };
}

/// Wait up to `deadline` for `child` to exit; its status, or an error
/// naming `what` (the child is then left running: the caller kills it).
pub fn wait_exit(
    child: &mut Child,
    deadline: Duration,
    what: &str,
) -> Result<ExitStatus, String> {
    let mut status = None;
    wait_until(deadline, what, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    })?;
    Ok(status.expect("exited"))
}

/// Checks that `ping` is on `PATH`.
pub fn ping_available() -> Result<(), String> {
    // Looked up once per process: the polling pings ask before each try.
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).any(|dir| dir.join("ping").is_file())
    });
    if found {
        Ok(())
    } else {
        Err("`ping` is not installed (package iputils-ping)".to_string())
    }
}

/// One node of a [`Topology`]: a network namespace.
#[derive(Debug)]
struct Node {
    /// The name tests use, e.g. `s1`.
    name: String,
    /// The namespace (its name unique per process and topology), deleted
    /// when dropped.
    held: Namespace,
}

/// One veth pair between two nodes, as returned by [`Topology::link`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The first node passed to [`Topology::link`].
    pub a: String,
    /// The interface name of the pair's end inside node `a`.
    pub a_if: String,
    /// The second node passed to [`Topology::link`].
    pub b: String,
    /// The interface name of the pair's end inside node `b`.
    pub b_if: String,
}

/// Names a process started with [`Topology::spawn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildId(usize);

/// A set of network namespaces joined by veth pairs, torn down on drop.
#[derive(Debug)]
pub struct Topology {
    /// Prefix of every namespace name: `ddm-<tag>-<process><seq>`.
    ns_prefix: String,
    /// Prefix of every interface name, short enough for `IFNAMSIZ`.
    if_prefix: String,
    /// Nodes in creation order.
    nodes: Vec<Node>,
    /// Links in creation order; index is part of the interface names.
    links: Vec<Link>,
    /// Processes spawned in the namespaces; `None` once reaped by a test.
    children: Mutex<Vec<Option<Child>>>,
}

impl Topology {
    /// Starts an empty topology. `tag` (typically the test name) appears in
    /// namespace names to make leftovers recognisable.
    pub fn new(tag: &str) -> Result<Topology, String> {
        let seq = next_seq();
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(20)
            .collect();
        Ok(Topology {
            ns_prefix: format!("ddm-{tag}-{}{seq}", process_tag()),
            if_prefix: format!("d{}{seq}l", process_tag()),
            nodes: Vec::new(),
            links: Vec::new(),
            children: Mutex::new(Vec::new()),
        })
    }

    /// Adds an end-host node: a namespace with DAD disabled and `lo` up.
    /// Returns the namespace name.
    pub fn node(&mut self, name: &str) -> Result<String, String> {
        self.add_node(name, false)
    }

    /// Adds a transit node: like [`Topology::node`] but with IPv6
    /// forwarding enabled. Returns the namespace name.
    pub fn transit(&mut self, name: &str) -> Result<String, String> {
        self.add_node(name, true)
    }

    fn add_node(
        &mut self,
        name: &str,
        forwarding: bool,
    ) -> Result<String, String> {
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "node name {name:?} must be non-empty [A-Za-z0-9_]"
            ));
        }
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(format!("node {name} already exists"));
        }
        let ns = format!("{}-{name}", self.ns_prefix);
        let held = Namespace::add(&ns)?;
        // Record it before configuring, so a failure below still deletes it.
        self.nodes.push(Node { name: name.to_string(), held });
        // DAD off before any link exists, so new link-local addresses are
        // usable at once instead of tentative for ~2 s.
        let mut sysctls = vec![
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        if forwarding {
            sysctls.push("net.ipv6.conf.all.forwarding=1");
            sysctls.push("net.ipv6.conf.default.forwarding=1");
        }
        let mut cmd = ip(["netns", "exec", &ns, "sysctl", "-qw"]);
        cmd.args(&sysctls);
        run_ok(&mut cmd)?;
        run_ok(&mut ip(["-n", &ns, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// The namespace name of `node`.
    pub fn ns(&self, node: &str) -> Result<&str, String> {
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.held.name())
            .ok_or_else(|| {
                format!("no node {node} in topology {}", self.ns_prefix)
            })
    }

    /// Every namespace this topology created, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.held.name().to_string()).collect()
    }

    /// Every link created so far, in creation order.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Connects nodes `a` and `b` with a veth pair, one end in each
    /// namespace, both up. Interface names are unique and at most 15 bytes.
    pub fn link(&mut self, a: &str, b: &str) -> Result<Link, String> {
        self.link_named(a, b, None, None)
    }

    /// Like [`Topology::link`], but names the end in `a` `a_if` and the end
    /// in `b` `b_if` where given (e.g. `tfportrear0_0`, the switch's port
    /// names). A name must be at most 15 bytes and new in its node.
    pub fn link_named(
        &mut self,
        a: &str,
        b: &str,
        a_if: Option<&str>,
        b_if: Option<&str>,
    ) -> Result<Link, String> {
        if a == b {
            return Err(format!("cannot link node {a} to itself"));
        }
        let ns_a = self.ns(a)?.to_string();
        let ns_b = self.ns(b)?.to_string();
        let index = self.links.len();
        let a_if = a_if
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}{index}a", self.if_prefix));
        let b_if = b_if
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}{index}b", self.if_prefix));
        for name in [&a_if, &b_if] {
            if name.is_empty()
                || name.len() > IFNAME_MAX
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!(
                    "interface name {name:?} must be 1-{IFNAME_MAX} bytes of \
                     [A-Za-z0-9_]"
                ));
            }
        }
        // Create both ends directly inside their namespaces: the names never
        // exist in the root namespace, and nothing is left there on failure.
        run_ok(&mut ip([
            "link", "add", &a_if, "netns", &ns_a, "type", "veth", "peer",
            "name", &b_if, "netns", &ns_b,
        ]))?;
        let link = Link { a: a.to_string(), a_if, b: b.to_string(), b_if };
        self.links.push(link.clone());
        self.link_set(a, &link.a_if, true)?;
        self.link_set(b, &link.b_if, true)?;
        Ok(link)
    }

    /// Adds `addr` (with prefix length, e.g. `fd00:1::1/64`) to `lo` in
    /// `node`: a router's own address, as there is no dummy driver here.
    pub fn add_lo_addr(&self, node: &str, addr: &str) -> Result<(), String> {
        let ns = self.ns(node)?;
        run_ok(&mut ip(["-n", ns, "-6", "addr", "add", addr, "dev", "lo"]))?;
        Ok(())
    }

    /// Sets interface `ifname` in `node` up or down.
    pub fn link_set(
        &self,
        node: &str,
        ifname: &str,
        up: bool,
    ) -> Result<(), String> {
        let ns = self.ns(node)?;
        let state = if up { "up" } else { "down" };
        run_ok(&mut ip(["-n", ns, "link", "set", ifname, state]))?;
        Ok(())
    }

    /// Runs `argv` to completion inside `node` (`ip netns exec`) and returns
    /// its output, whatever its exit status.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        node: &str,
        argv: &[S],
    ) -> Result<Output, String> {
        run(&mut self.exec_cmd(node, argv)?)
    }

    /// Like [`Topology::exec`], but fails unless the command succeeds.
    pub fn exec_ok<S: AsRef<OsStr>>(
        &self,
        node: &str,
        argv: &[S],
    ) -> Result<Output, String> {
        run_ok(&mut self.exec_cmd(node, argv)?)
    }

    /// `ip netns exec` of `argv` inside `node`.
    fn exec_cmd<S: AsRef<OsStr>>(
        &self,
        node: &str,
        argv: &[S],
    ) -> Result<Command, String> {
        let mut cmd = ip(["netns", "exec", self.ns(node)?]);
        cmd.args(argv);
        Ok(cmd)
    }

    /// Spawns a long-running process (such as `ddmd`) inside `node`. The
    /// command keeps its arguments, environment and stdio settings; it enters
    /// the namespace between fork and exec. (Unlike `ip netns exec`, `/sys`
    /// is not remounted.) The process is killed and reaped when the topology
    /// is dropped, unless [`Topology::kill`] did it first.
    pub fn spawn(
        &self,
        node: &str,
        mut cmd: Command,
    ) -> Result<ChildId, String> {
        let ns = self.ns(node)?;
        let path = ns_path(ns);
        let file = File::open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let fd = file.as_raw_fd();
        let enter = move || {
            // SAFETY: `fd` is an open namespace file (see below); setns
            // only changes the namespace of the calling process.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: `enter` runs in the forked child before exec and only
        // makes the async-signal-safe setns system call. `fd` stays open
        // until spawn returns because `file` lives until the end of this
        // function; it is close-on-exec, so the new program does not inherit
        // it.
        unsafe {
            cmd.pre_exec(enter);
        }
        die_with_test(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn {cmd:?} in {ns}: {e}"))?;
        drop(file);
        let mut children =
            self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.push(Some(child));
        Ok(ChildId(children.len() - 1))
    }

    /// Runs `f` on a spawned process, e.g. to read its pid, take its stdout
    /// or `try_wait` it. Fails if it was already reaped by [`Topology::kill`].
    pub fn with_child<R>(
        &self,
        id: ChildId,
        f: impl FnOnce(&mut Child) -> R,
    ) -> Result<R, String> {
        let mut children =
            self.children.lock().unwrap_or_else(|e| e.into_inner());
        match children.get_mut(id.0) {
            Some(Some(child)) => Ok(f(child)),
            _ => Err(format!("no live child {id:?}")),
        }
    }

    /// Kills a spawned process (if still running) and reaps it.
    pub fn kill(&self, id: ChildId) -> Result<ExitStatus, String> {
        let child = {
            let mut children =
                self.children.lock().unwrap_or_else(|e| e.into_inner());
            children.get_mut(id.0).and_then(Option::take)
        };
        let mut child = child.ok_or_else(|| format!("no live child {id:?}"))?;
        reap(&mut child)
    }

    /// Runs `f` on a fresh thread inside `node`'s namespace; see [`in_netns`].
    pub fn in_node<T: Send>(
        &self,
        node: &str,
        f: impl FnOnce() -> T + Send,
    ) -> T {
        let ns = self.ns(node).unwrap_or_else(|e| panic!("{e}"));
        in_netns(ns, f)
    }

    /// Link-local addresses of `ifname` in `node`, each with whether it is
    /// still tentative.
    fn link_locals(
        &self,
        node: &str,
        ifname: &str,
    ) -> Result<Vec<(Ipv6Addr, bool)>, String> {
        let ns = self.ns(node)?;
        let out = run_ok(&mut ip([
            "-n", ns, "-6", "-o", "addr", "show", "dev", ifname, "scope",
            "link",
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut addrs = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.by_ref().any(|w| w == "inet6") {
                let Some(cidr) = words.next() else { continue };
                let Some(addr) =
                    cidr.split('/').next().and_then(|a| a.parse().ok())
                else {
                    continue;
                };
                let tentative = line
                    .split_whitespace()
                    .any(|w| w == "tentative" || w == "dadfailed");
                addrs.push((addr, tentative));
            }
        }
        Ok(addrs)
    }

    /// The usable (non-tentative) link-local address of `ifname` in `node`.
    pub fn link_local_addr(
        &self,
        node: &str,
        ifname: &str,
    ) -> Result<Ipv6Addr, String> {
        self.link_locals(node, ifname)?
            .into_iter()
            .find(|(_, tentative)| !tentative)
            .map(|(addr, _)| addr)
            .ok_or_else(|| {
                format!("{node}/{ifname} has no usable link-local address")
            })
    }

    /// Waits up to `deadline` for `ifname` in `node` to have a non-tentative
    /// link-local address, and returns it.
    pub fn wait_link_local(
        &self,
        node: &str,
        ifname: &str,
        deadline: Duration,
    ) -> Result<Ipv6Addr, String> {
        let mut found = None;
        let mut last_err = String::new();
        wait_until(
            deadline,
            &format!("a link-local address on {node}/{ifname}"),
            || match self.link_local_addr(node, ifname) {
                Ok(addr) => {
                    found = Some(addr);
                    true
                }
                Err(e) => {
                    last_err = e;
                    false
                }
            },
        )
        .map_err(|e| format!("{e} (last: {last_err})"))?;
        found.ok_or_else(|| {
            "unreachable: wait succeeded without an address".to_string()
        })
    }

    /// The lines of `ip -6 route show` in `node`, only those installed with
    /// routing protocol `proto` (e.g. `static`, `kernel`, or a number) when
    /// given.
    pub fn routes(
        &self,
        node: &str,
        proto: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let ns = self.ns(node)?;
        let mut cmd = ip(["-n", ns, "-6", "route", "show"]);
        if let Some(proto) = proto {
            cmd.args(["proto", proto]);
        }
        let out = run_ok(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Sends one ping from `node` to `addr` (e.g. `fd00:1::1` or
    /// `fe80::1%ifname`) with a one-second timeout; true if it was answered.
    /// Fails if `ping` is not installed.
    pub fn ping6(&self, node: &str, addr: &str) -> Result<bool, String> {
        ping_available()?;
        let out =
            self.exec(node, &["ping", "-6", "-n", "-c", "1", "-W", "1", addr])?;
        Ok(out.status.success())
    }
}

/// Kills a child unless it already exited, then waits for it.
fn reap(child: &mut Child) -> Result<ExitStatus, String> {
    let pid = child.id();
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    // Kill can only fail if the child already exited; wait tells.
    let _ = child.kill();
    child.wait().map_err(|e| format!("cannot reap child {pid}: {e}"))
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first: they hold their namespaces alive.
        let children = std::mem::take(
            self.children.get_mut().unwrap_or_else(|e| e.into_inner()),
        );
        for mut child in children.into_iter().flatten() {
            if let Err(e) = reap(&mut child) {
                eprintln!("netns cleanup: {e}");
            }
        }
        // Delete links explicitly: a namespace kept alive by some stray
        // reference (a socket, a thread) would otherwise keep its veths.
        // Deleting one end removes the pair; a test may have done it already.
        for link in &self.links {
            if let Ok(ns) = self.ns(&link.a) {
                let _ = run(&mut ip(["-n", ns, "link", "del", &link.a_if]));
            }
        }
        // Last made, first deleted.
        while self.nodes.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_base36_and_increasing() {
        let a = next_seq();
        let b = next_seq();
        assert!(a
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let topo = Topology::new("a_rather_long_test_name_for_sure").unwrap();
        // Even with many links, names stay within IFNAMSIZ.
        let worst = format!("{}{}a", topo.if_prefix, 9999);
        assert!(worst.len() <= IFNAME_MAX, "{worst}");
        assert!(topo.ns_prefix.starts_with("ddm-a_rather_long_test_"));
    }

    #[test]
    fn a_namespace_that_exists_already_is_refused_and_kept() {
        if !require_netns("a_namespace_that_exists_already_is_refused_and_kept")
        {
            return;
        }
        let name = format!("ddm-twice-{}{}", process_tag(), next_seq());
        let first = Namespace::add(&name).unwrap();
        let owner = std::fs::read_to_string(owner_file(&name)).unwrap();
        let err = Namespace::add(&name).unwrap_err();
        assert!(err.contains("exists already"), "{err}");
        assert!(made(&name), "the refused add deleted {name}");
        assert_eq!(std::fs::read_to_string(owner_file(&name)).unwrap(), owner);
        assert!(HELD.lock().unwrap().contains(&name));
        // A namespace without an owner file (made by `ip` itself): refused
        // as taken, not claimed.
        std::fs::remove_file(owner_file(&name)).unwrap();
        let err = Namespace::add(&name).unwrap_err();
        assert!(err.contains("exists already"), "{err}");
        assert!(made(&name), "the refused add deleted {name}");
        assert!(!owner_file(&name).exists());
        assert!(HELD.lock().unwrap().contains(&name));
        drop(first);
        assert!(!made(&name));
        assert!(!owner_file(&name).exists());
        // An owner file without its namespace (another add under way, or
        // one interrupted): the name is taken all the same, and the file
        // is left as it was.
        let claimed = format!("ddm-claimed-{}{}", process_tag(), next_seq());
        std::fs::write(owner_file(&claimed), owner_line().unwrap()).unwrap();
        let err = Namespace::add(&claimed).unwrap_err();
        let left = std::fs::read_to_string(owner_file(&claimed));
        let _ = std::fs::remove_file(owner_file(&claimed));
        assert!(err.contains("exists already"), "{err}");
        assert_eq!(left.unwrap(), owner_line().unwrap());
        assert!(!HELD.lock().unwrap().contains(&claimed));
        assert!(!made(&claimed));
    }

    #[test]
    fn wait_until_reports_timeout_and_success() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), "three polls", || {
            n += 1;
            n >= 3
        })
        .is_ok());
        assert_eq!(n, 3);
        let err = wait_until(Duration::from_millis(50), "never", || false)
            .unwrap_err();
        assert!(err.contains("never"), "{err}");
    }
}
