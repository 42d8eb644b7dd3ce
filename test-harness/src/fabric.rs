//! Real `ddmd` routers running in the nodes of a namespace [`Topology`].
//!
//! A [`Fabric`] owns a topology and starts the workspace's `ddmd` in any of
//! its nodes, each router with its own directory under one per-fabric
//! temporary directory:
//!
//! ```text
//! <fabric tmp>/<node>/port           admin port file (readiness signal)
//! <fabric tmp>/<node>/ddmd.log       stdout: bunyan JSON log lines
//! <fabric tmp>/<node>/ddmd.stderr    stderr
//! <fabric tmp>/<node>/ddmdb          the durable store (--data-dir)
//! ```
//!
//! The admin API of a router listens on `[::1]` of its own namespace, so it
//! is reached by running `ddmadm` inside that namespace ([`Fabric::adm`]).
//!
//! Dropping the fabric sends SIGTERM to every router still running, so each
//! removes the routes it installed, waits a little for them to exit, then
//! lets the topology kill whatever is left and delete its namespaces. When
//! the drop happens during a panic, the temporary directory is kept and its
//! path printed, so the logs of a failed test can be read.
//!
//! ```no_run
//! use ddm_test_harness::fabric::Fabric;
//! use std::time::Duration;
//!
//! let mut fabric = Fabric::new("pair").unwrap();
//! fabric.topo_mut().node("s1").unwrap();
//! fabric.topo_mut().node("s2").unwrap();
//! let link = fabric.topo_mut().link("s1", "s2").unwrap();
//! fabric.start_router("s1", "server", &[&link.a_if], &[]).unwrap();
//! fabric.start_router("s2", "server", &[&link.b_if], &[]).unwrap();
//! let peers = fabric
//!     .wait_peer_state("s1", 1, "Exchange", Duration::from_secs(10))
//!     .unwrap();
//! assert_eq!(peers[0].host, "s2");
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{wait_until, ChildId, Topology};

/// Name of the admin port file in a router's directory.
pub const PORT_FILE: &str = "port";

/// Name of the log file (the daemon's stdout) in a router's directory.
pub const LOG_FILE: &str = "ddmd.log";

/// Name of the daemon's stderr file in a router's directory.
pub const STDERR_FILE: &str = "ddmd.stderr";

/// Routing protocol number of the routes ddmd installs (`proto 221`).
pub const DDM_PROTO: &str = "221";

/// How long a router may take to write its port file.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a router may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the fabric's drop waits for all routers to exit after SIGTERM.
const DROP_GRACE: Duration = Duration::from_secs(3);

/// How often the port file and exit status are polled.
const POLL: Duration = Duration::from_millis(5);

/// One router of the fabric, running or stopped.
#[derive(Debug)]
struct Router {
    /// Its directory: data dir, port file, logs.
    dir: PathBuf,
    /// The full `ddmd` argument list, reused by restarts.
    args: Vec<String>,
    /// The running process, if any.
    child: Option<ChildId>,
    /// Its admin port, once the port file was read.
    port: Option<u16>,
}

/// One entry of a router's `GET /peers`, as `ddmadm --json get-peers`
/// prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The interface index the entry is keyed by.
    pub ifindex: u32,
    /// The discovery state: `Init`, `Solicit`, `Exchange` or `Expired`.
    pub state: String,
    /// How long the interface has been in that state.
    pub duration: Duration,
    /// The peer's link-local address.
    pub addr: Ipv6Addr,
    /// The peer's host name.
    pub host: String,
    /// The peer's kind on the wire: 0 server, 1 transit.
    pub kind: u64,
}

impl Peer {
    /// Parses the `get-peers` map `{ "<ifindex>": { status, addr, host,
    /// kind } }` into peers sorted by interface index.
    pub fn parse_map(value: &serde_json::Value) -> Result<Vec<Peer>, String> {
        let map = value
            .as_object()
            .ok_or_else(|| format!("get-peers is not an object: {value}"))?;
        let mut peers = Vec::with_capacity(map.len());
        for (key, entry) in map {
            let bad = |what: &str| format!("peer {key}: {what} in {entry}");
            let ifindex =
                key.parse().map_err(|_| bad("key is not an ifindex"))?;
            let status = &entry["status"];
            let state = status["type"]
                .as_str()
                .ok_or_else(|| bad("no status.type"))?
                .to_string();
            let secs = status["duration"]["secs"]
                .as_u64()
                .ok_or_else(|| bad("no status.duration.secs"))?;
            let nanos = status["duration"]["nanos"]
                .as_u64()
                .ok_or_else(|| bad("no status.duration.nanos"))?;
            let addr = entry["addr"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad("no IPv6 addr"))?;
            let host = entry["host"]
                .as_str()
                .ok_or_else(|| bad("no host"))?
                .to_string();
            let kind = entry["kind"].as_u64().ok_or_else(|| bad("no kind"))?;
            peers.push(Peer {
                ifindex,
                state,
                duration: Duration::new(secs, nanos as u32),
                addr,
                host,
                kind,
            });
        }
        peers.sort_by_key(|p| p.ifindex);
        Ok(peers)
    }
}

/// A namespace topology with real `ddmd` routers in its nodes.
#[derive(Debug)]
pub struct Fabric {
    /// The namespaces and links. Declared first: dropped (processes killed,
    /// namespaces deleted) before the directory.
    topo: Topology,
    /// Every router's directory lives in here.
    dir: Option<tempfile::TempDir>,
    /// Routers by node name.
    routers: BTreeMap<String, Router>,
}

impl Fabric {
    /// An empty fabric; `tag` (typically the test name) names its
    /// namespaces and temporary directory.
    pub fn new(tag: &str) -> Result<Fabric, String> {
        let topo = Topology::new(tag)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("ddm-fabric-{tag}-"))
            .tempdir()
            .map_err(|e| format!("creating the fabric directory: {e}"))?;
        Ok(Fabric { topo, dir: Some(dir), routers: BTreeMap::new() })
    }

    /// The topology, to inspect it or run commands in its nodes.
    pub fn topo(&self) -> &Topology {
        &self.topo
    }

    /// The topology, to add nodes and links.
    pub fn topo_mut(&mut self) -> &mut Topology {
        &mut self.topo
    }

    /// The fabric's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("kept until drop").path()
    }

    fn router(&self, node: &str) -> Result<&Router, String> {
        self.routers
            .get(node)
            .ok_or_else(|| format!("no router was started in {node}"))
    }

    fn router_mut(&mut self, node: &str) -> Result<&mut Router, String> {
        self.routers
            .get_mut(node)
            .ok_or_else(|| format!("no router was started in {node}"))
    }

    /// The directory of `node`'s router (its data dir, port file, logs).
    pub fn router_dir(&self, node: &str) -> Result<PathBuf, String> {
        Ok(self.router(node)?.dir.clone())
    }

    /// Starts `ddmd` in `node` and waits until its admin API serves; see
    /// [`Fabric::spawn_router`] for the arguments.
    pub fn start_router(
        &mut self,
        node: &str,
        kind: &str,
        interfaces: &[&str],
        extra_args: &[&str],
    ) -> Result<(), String> {
        self.spawn_router(node, kind, interfaces, extra_args)?;
        self.wait_ready(node)
    }

    /// Spawns `ddmd` in `node` without waiting for it to serve (so several
    /// routers can start at once; follow with [`Fabric::wait_ready`]).
    ///
    /// The router routes over `interfaces` (`-a` each), is of `kind`
    /// (`server` or `transit`), is named after the node, listens for admin
    /// requests on `[::1]` at a free port, and gets `extra_args` last (e.g.
    /// `--solicit-interval 1000`).
    pub fn spawn_router(
        &mut self,
        node: &str,
        kind: &str,
        interfaces: &[&str],
        extra_args: &[&str],
    ) -> Result<(), String> {
        if self.routers.contains_key(node) {
            return Err(format!("a router was already started in {node}"));
        }
        self.topo.ns(node)?;
        let dir = self.dir().join(node);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut args = Vec::new();
        for ifname in interfaces {
            args.extend(["-a".to_string(), ifname.to_string()]);
        }
        let port_file = dir.join(PORT_FILE).display().to_string();
        let data_dir = dir.display().to_string();
        args.extend(
            [
                "--kind",
                kind,
                "--hostname",
                node,
                "--admin-addr",
                "::1",
                "--admin-port",
                "0",
                "--admin-port-file",
                &port_file,
                "--data-dir",
                &data_dir,
            ]
            .map(str::to_string),
        );
        args.extend(extra_args.iter().map(|a| a.to_string()));
        self.routers.insert(
            node.to_string(),
            Router { dir, args, child: None, port: None },
        );
        self.spawn_process(node)
    }

    /// Spawns the process of an existing, stopped router entry.
    fn spawn_process(&mut self, node: &str) -> Result<(), String> {
        let router = self.router(node)?;
        let open_append = |name: &str| -> Result<File, String> {
            let path = router.dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))
        };
        // Append: a restarted router's log follows its previous life's.
        let stdout = open_append(LOG_FILE)?;
        let stderr = open_append(STDERR_FILE)?;
        let mut cmd = Command::new(crate::ddmd_bin());
        cmd.args(&router.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let id = self.topo.spawn(node, cmd)?;
        let router = self.router_mut(node)?;
        router.child = Some(id);
        router.port = None;
        Ok(())
    }

    /// Waits for `node`'s router to write its port file, and records the
    /// admin port. Fails early, with the daemon's stderr, if it exits.
    pub fn wait_ready(&mut self, node: &str) -> Result<(), String> {
        let router = self.router(node)?;
        let id = router.child.ok_or_else(|| format!("{node}: not running"))?;
        let port_file = router.dir.join(PORT_FILE);
        let end = Instant::now() + START_TIMEOUT;
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                // Written atomically with its newline; anything else is a
                // broken daemon, not a race.
                let line = text.strip_suffix('\n').ok_or_else(|| {
                    format!("{node}: port file {text:?} lacks its newline")
                })?;
                let addr: SocketAddr = line
                    .parse()
                    .map_err(|e| format!("{node}: port file {line:?}: {e}"))?;
                break addr.port();
            }
            if let Some(status) = self.exit_status(id)? {
                let _ = self.topo.kill(id);
                self.router_mut(node)?.child = None;
                return Err(format!(
                    "{node}: ddmd exited ({status}) before writing its port \
                     file: {}",
                    self.stderr(node).trim()
                ));
            }
            if Instant::now() > end {
                return Err(format!(
                    "{node}: no port file after {START_TIMEOUT:?} at {} \
                     (stderr: {})",
                    port_file.display(),
                    self.stderr(node).trim()
                ));
            }
            std::thread::sleep(POLL);
        };
        self.router_mut(node)?.port = Some(port);
        Ok(())
    }

    /// The exit status of a spawned process, if it has exited.
    fn exit_status(&self, id: ChildId) -> Result<Option<ExitStatus>, String> {
        self.topo
            .with_child(id, |c| c.try_wait())?
            .map_err(|e| format!("checking child {id:?}: {e}"))
    }

    /// The process id of `node`'s router, while it runs.
    pub fn pid(&self, node: &str) -> Result<u32, String> {
        let id = self
            .router(node)?
            .child
            .ok_or_else(|| format!("{node}: not running"))?;
        self.topo.with_child(id, |c| c.id())
    }

    /// Whether `node`'s router process is alive (spawned and not exited).
    pub fn is_running(&self, node: &str) -> bool {
        match self.router(node).ok().and_then(|r| r.child) {
            Some(id) => matches!(self.exit_status(id), Ok(None)),
            None => false,
        }
    }

    /// The admin port of `node`'s router.
    pub fn admin_port(&self, node: &str) -> Result<u16, String> {
        self.router(node)?
            .port
            .ok_or_else(|| format!("{node}: router not ready"))
    }

    /// Sends SIGTERM to `node`'s router and waits (up to [`STOP_TIMEOUT`])
    /// for it to exit; returns its exit status, whatever it is. A router
    /// still running after the deadline is killed and reported as an error.
    pub fn stop_router(&mut self, node: &str) -> Result<ExitStatus, String> {
        let id = self
            .router(node)?
            .child
            .ok_or_else(|| format!("{node}: not running"))?;
        let pid = self.topo.with_child(id, |c| c.id())?;
        if self.exit_status(id)?.is_none() {
            // SAFETY: kill(2) on the pid of a child that has not been
            // reaped, so the pid cannot have been reused.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let mut status = None;
        let waited = wait_until(
            STOP_TIMEOUT,
            &format!("{node} (pid {pid}) to exit after SIGTERM"),
            || {
                status = self.exit_status(id).ok().flatten();
                status.is_some()
            },
        );
        let reaped = self.topo.kill(id);
        let router = self.router_mut(node)?;
        router.child = None;
        router.port = None;
        waited?;
        status.map_or(reaped, Ok)
    }

    /// Freezes `node`'s router with SIGSTOP until the returned guard is
    /// dropped (which sends SIGCONT). While frozen it answers nothing: its
    /// peers' requests wait in its sockets' buffers, its timers fire late.
    pub fn pause_router(&self, node: &str) -> Result<PausedRouter, String> {
        let pid = self.pid(node)?;
        // SAFETY: kill(2) on the pid of a child that has not been reaped.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) } != 0 {
            return Err(format!(
                "{node}: SIGSTOP to {pid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(PausedRouter { pid })
    }

    /// Kills `node`'s router with SIGKILL (no clean-up: its routes stay)
    /// and reaps it.
    pub fn kill_router(&mut self, node: &str) -> Result<ExitStatus, String> {
        let id = self
            .router(node)?
            .child
            .ok_or_else(|| format!("{node}: not running"))?;
        let status = self.topo.kill(id);
        let router = self.router_mut(node)?;
        router.child = None;
        router.port = None;
        status
    }

    /// Starts `node`'s router again with the same arguments and data
    /// directory (stopping it with SIGTERM first if it runs), after
    /// removing its stale port file, and waits until it serves.
    pub fn restart_router(&mut self, node: &str) -> Result<(), String> {
        if self.router(node)?.child.is_some() {
            self.stop_router(node)?;
        }
        let port_file = self.router(node)?.dir.join(PORT_FILE);
        match std::fs::remove_file(&port_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!("removing {}: {e}", port_file.display()))
            }
        }
        self.spawn_process(node)?;
        self.wait_ready(node)
    }

    /// Runs `ddmadm -a ::1 -p PORT --json <args…>` inside `node` and parses
    /// what it prints (`Null` when it prints nothing, as changes do). A
    /// non-zero exit is an error carrying its stderr.
    pub fn adm(
        &self,
        node: &str,
        args: &[&str],
    ) -> Result<serde_json::Value, String> {
        let port = self.admin_port(node)?.to_string();
        let bin = crate::ddmadm_bin().display().to_string();
        let mut argv = vec![bin.as_str(), "-a", "::1", "-p", &port, "--json"];
        argv.extend_from_slice(args);
        let out = self.topo.exec(node, &argv)?;
        if !out.status.success() {
            return Err(format!(
                "{node}: ddmadm {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            format!("{node}: ddmadm {} printed non-JSON ({e}): {text}", args[0])
        })
    }

    /// Runs `f` with a generated client of `node`'s admin API and returns
    /// what its future yields.
    ///
    /// The future runs to completion on a fresh thread that has joined
    /// `node`'s namespace, on a current-thread tokio runtime, so every
    /// connection the client opens is made in that namespace. Unlike
    /// [`Fabric::adm`] no process is started per request: use it where
    /// requests must follow each other within milliseconds, or carry large
    /// bodies (e.g. tens of thousands of prefixes in one `PUT /prefix`).
    pub fn with_admin<T, F, Fut>(&self, node: &str, f: F) -> Result<T, String>
    where
        T: Send,
        F: FnOnce(ddm_admin_client::Client) -> Fut + Send,
        Fut: Future<Output = T>,
    {
        let port = self.admin_port(node)?;
        let addr = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port);
        self.topo.ns(node)?;
        self.topo.in_node(node, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("building a tokio runtime: {e}"))?;
            let log = slog::Logger::root(slog::Discard, slog::o!());
            let client = ddm_admin_client::new_client(addr, log);
            Ok(rt.block_on(f(client)))
        })
    }

    /// `node`'s peers, sorted by interface index.
    pub fn peers(&self, node: &str) -> Result<Vec<Peer>, String> {
        Peer::parse_map(&self.adm(node, &["get-peers"])?)
    }

    /// Waits until `node` lists exactly `n_peers` peers, all in `state`
    /// (e.g. `Exchange`), and returns them. The error shows the last list.
    pub fn wait_peer_state(
        &self,
        node: &str,
        n_peers: usize,
        state: &str,
        deadline: Duration,
    ) -> Result<Vec<Peer>, String> {
        let mut last = Err("never asked".to_string());
        wait_until(
            deadline,
            &format!("{node} to have {n_peers} peer(s) in {state}"),
            || {
                last = self.peers(node);
                matches!(&last, Ok(peers) if peers.len() == n_peers
                    && peers.iter().all(|p| p.state == state))
            },
        )
        .map_err(|e| format!("{e}; last get-peers: {last:?}"))?;
        last
    }

    /// `node`'s router log so far (bunyan JSON lines, all its lives).
    pub fn log(&self, node: &str) -> String {
        self.read_file(node, LOG_FILE)
    }

    /// `node`'s router stderr so far.
    pub fn stderr(&self, node: &str) -> String {
        self.read_file(node, STDERR_FILE)
    }

    fn read_file(&self, node: &str, name: &str) -> String {
        self.router(node)
            .ok()
            .and_then(|r| std::fs::read_to_string(r.dir.join(name)).ok())
            .unwrap_or_default()
    }

    /// The log lines of `node` whose message (`msg`) is `msg`, parsed.
    pub fn log_records(&self, node: &str, msg: &str) -> Vec<serde_json::Value> {
        self.log(node)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == msg)
            .collect()
    }

    /// The kernel routes ddm installed in `node` (`proto 221`), as `ip -6
    /// route show` prints them.
    pub fn kernel_routes(&self, node: &str) -> Result<Vec<String>, String> {
        self.topo.routes(node, Some(DDM_PROTO))
    }

    /// The index of interface `ifname` in `node`.
    pub fn ifindex(&self, node: &str, ifname: &str) -> Result<u32, String> {
        let name = std::ffi::CString::new(ifname)
            .map_err(|_| format!("interface name {ifname:?} has a NUL"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        let index = self
            .topo
            .in_node(node, || unsafe { libc::if_nametoindex(name.as_ptr()) });
        if index == 0 {
            Err(format!("{node} has no interface {ifname}"))
        } else {
            Ok(index)
        }
    }
}

/// A router frozen by [`Fabric::pause_router`]; dropping it resumes the
/// router (SIGCONT). Drop it before the fabric, and before stopping the
/// router: a frozen process does not act on SIGTERM.
#[derive(Debug)]
#[must_use = "the router resumes when this guard is dropped"]
pub struct PausedRouter {
    pid: u32,
}

impl Drop for PausedRouter {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a router of the fabric; the guard
        // is documented to be dropped before that router is stopped and
        // reaped, so the pid cannot have been reused.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGCONT) };
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        // SIGTERM all first, so they shut down in parallel and remove
        // their routes; the topology kills any that hang.
        let mut running = Vec::new();
        for (node, router) in &self.routers {
            let Some(id) = router.child else { continue };
            if let Ok(Ok(None)) = self.topo.with_child(id, |c| c.try_wait()) {
                if let Ok(pid) = self.topo.with_child(id, |c| c.id()) {
                    // SAFETY: kill(2) on an unreaped child's pid.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                    running.push((node.clone(), id));
                }
            }
        }
        let end = Instant::now() + DROP_GRACE;
        for (node, id) in running {
            loop {
                match self.topo.with_child(id, |c| c.try_wait()) {
                    Ok(Ok(None)) if Instant::now() < end => {
                        std::thread::sleep(POLL)
                    }
                    Ok(Ok(None)) => {
                        eprintln!(
                            "fabric cleanup: {node} still running \
                             {DROP_GRACE:?} after SIGTERM; killing it"
                        );
                        break;
                    }
                    _ => break,
                }
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "fabric: keeping router logs of the failed test in {}",
                    dir.keep().display()
                );
            }
        }
    }
}
