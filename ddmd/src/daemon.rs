//! Start the supervisor, publish readiness, wait for a signal, shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ddm_actors::config::{
    AdminConfig, DaemonConfig, InterfaceSpec, RouterConfig,
};
use ddm_actors::discovery::PacketIo;
use ddm_actors::exchange::transport::ExchangeTransport;
use ddm_actors::metrics;
use ddm_actors::policy::PolicyConfig;
use ddm_actors::store::{self, Store};
use ddm_actors::supervisor::{
    DataplaneFactory, Supervisor, SupervisorArgs, SupervisorMsg,
    ROUTER_STOP_GRACE,
};
use ractor::Actor;
use slog::{error, info, o, warn, Logger};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Args, DPD_HOST, DPD_PORT};
use crate::{logging, port_file};

/// How long shutdown may take before the process exits anyway: the
/// router's removal of our routes, and the other actors' stops.
const SHUTDOWN_GRACE: Duration =
    ROUTER_STOP_GRACE.saturating_add(Duration::from_secs(10));

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "ddm".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The kernel dataplane of this platform.
#[cfg(all(target_os = "linux", feature = "netlink"))]
fn dataplane_factory(_args: &Args) -> Result<DataplaneFactory, String> {
    use ddm_actors::dataplane::{linux::LinuxDataplane, Dataplane};
    Ok(Arc::new(|log: &slog::Logger| {
        Ok(Box::new(LinuxDataplane::new(log.clone())?) as Box<dyn Dataplane>)
    }))
}

/// The kernel dataplane of this platform: the routing socket and OPTE.
/// (Type-checked for illumos only through `ddm-dataplane`, which holds the
/// body; see the README.)
#[cfg(all(target_os = "illumos", feature = "illumos"))]
fn dataplane_factory(args: &Args) -> Result<DataplaneFactory, String> {
    let data_dir = args.data_dir.clone();
    let api_version = args.opte_api_version;
    Ok(Arc::new(move |log: &slog::Logger| {
        ddm_actors::dataplane::illumos::sys::open(&data_dir, api_version, log)
    }))
}

/// The kernel dataplane of this platform: none in this build.
#[cfg(not(any(
    all(target_os = "linux", feature = "netlink"),
    all(target_os = "illumos", feature = "illumos")
)))]
fn dataplane_factory(_args: &Args) -> Result<DataplaneFactory, String> {
    Err("this build has no kernel dataplane (on Linux, build with the \
         `netlink` feature); run with --dendrite to program a switch through \
         dpd, or with --no-state-machine for the admin API only"
        .to_string())
}

fn config(args: &Args) -> DaemonConfig {
    DaemonConfig {
        admin_only: args.no_state_machine,
        admin: AdminConfig {
            listen: Some(SocketAddr::new(args.admin_addr, args.admin_port)),
        },
        data_dir: args.data_dir.clone(),
        router: RouterConfig {
            hostname: args.hostname.clone().unwrap_or_else(system_hostname),
            kind: args.kind,
            interfaces: args.addresses.clone(),
            solicit_interval: Args::ms(args.solicit_interval),
            expire_threshold: Args::ms(args.expire_threshold),
            discovery_read_timeout: Args::ms(args.discovery_read_timeout),
            ip_addr_wait: Args::ms(args.ip_addr_wait),
            exchange_timeout: Args::ms(args.exchange_timeout),
            exchange_port: args.exchange_port,
            policy: PolicyConfig {
                accept_default_route: args.accept_default_route,
                max_path_len: args.max_path_len as usize,
                max_prefixes_per_peer: args.max_prefixes_per_peer as usize,
            },
        },
    }
}

/// The switch dataplane: dpd at `--dpd-host`:`--dpd-port`, with the
/// interfaces of `-a` mapped to switch ports by name.
fn dpd_factory(args: &Args) -> DataplaneFactory {
    use ddm_actors::dataplane::dpd::{DpdConfig, DpdDataplane};
    use ddm_actors::dataplane::Dataplane;
    let names: Vec<String> =
        args.addresses.iter().map(|a| a.ifname.clone()).collect();
    // Indexes are looked up when a nexthop needs them, so an interface
    // created (or re-created) after the start still maps.
    let interfaces = Arc::new(move |ifindex: u32| {
        names.iter().find(|n| if_index(n) == Some(ifindex)).cloned()
    });
    let host = args.dpd_host.clone().unwrap_or_else(|| DPD_HOST.into());
    let config =
        DpdConfig::new(host, args.dpd_port.unwrap_or(DPD_PORT), interfaces);
    Arc::new(move |log: &slog::Logger| {
        Ok(Box::new(DpdDataplane::new(config.clone(), log.new(o!())))
            as Box<dyn Dataplane>)
    })
}

/// The index of interface `name`, if it exists.
fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Run the daemon until SIGTERM or SIGINT (or until its supervisor fails).
pub async fn run(args: Args) -> Result<(), String> {
    let dataplane = if args.no_state_machine {
        None
    } else if args.dendrite {
        Some(dpd_factory(&args))
    } else {
        Some(dataplane_factory(&args)?)
    };
    if let Some(path) = &args.admin_port_file {
        port_file::precheck(path)?;
    }
    let (log, _log_guard) = logging::init(logging::level(args.log_level));
    let config = config(&args);
    info!(log, "ddmd starting";
        "version" => env!("CARGO_PKG_VERSION"),
        "hostname" => &config.router.hostname,
        "kind" => %config.router.kind,
        "admin_only" => config.admin_only,
        "data_dir" => %config.data_dir.display());
    let dpd_named = args.dpd_host.is_some() || args.dpd_port.is_some();
    if args.no_state_machine && (args.dendrite || dpd_named) {
        warn!(
            log,
            "--dendrite, --dpd-host and --dpd-port are ignored: \
            this daemon serves the admin API only"
        );
    } else if dpd_named && !args.dendrite {
        warn!(
            log,
            "--dpd-host and --dpd-port are ignored without \
            --dendrite: routes go to this host's kernel"
        );
    }
    if args.with_stats || args.oximeter_port.is_some() {
        info!(
            log,
            "statistics flags accepted; statistics are recorded \
                    through the admin API only"
        );
    }

    let mut signals = Signals::watch()?;

    let store = Store::open(&config.data_dir).map_err(|e| e.to_string())?;
    if config.data_dir.join(store::DB_FILE).is_dir() {
        warn!(log, "the data directory holds the original daemon's store, \
            which this daemon cannot read and leaves alone: what the \
            original originated must be advertised again";
            "original" => %config.data_dir.join(store::DB_FILE).display(),
            "ours" => %store.path().display());
    }
    // Bound before anything starts, so that an address in use fails like
    // an unusable data directory.
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let routes_left = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (supervisor, mut handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            config,
            store,
            dataplane,
            packet_io: Arc::new(|_: &InterfaceSpec| PacketIo::udp()),
            watch_links: !args.no_state_machine,
            exchange_net: ExchangeTransport::http(),
            routes_left: routes_left.clone(),
            log: log.new(o!()),
        },
    )
    .await
    .map_err(|e| format!("cannot start: {}", root_cause(&e)))?;

    // Serving before the port file is written: a ready daemon answers on
    // both listeners.
    let metrics = metrics_listener.map(|listener| {
        if let Ok(local) = listener.local_addr() {
            info!(log, "metrics: listening on {local}");
        }
        metrics::serve(
            listener,
            supervisor.clone(),
            log.new(o!("component" => "metrics")),
        )
    });

    let ready = async {
        let addr = ractor::call!(supervisor, SupervisorMsg::GetAdminAddr)
            .map_err(|e| format!("supervisor did not answer: {e}"))?
            .ok_or("the admin API is not listening")?;
        match &args.admin_port_file {
            Some(path) => port_file::write(path, addr),
            None => Ok(()),
        }
    };
    if let Err(e) = ready.await {
        // Stopped as on a signal, and waited for: a router's worker may be
        // removing routes a previous run left.
        supervisor.stop(Some(format!("not ready: {e}")));
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut handle).await;
        return Err(e);
    }
    // Started: what startup alone ran need not stay resident.
    crate::pages::shed_startup_pages();

    // Every actor stops with the supervisor (ractor kills its children),
    // so a daemon whose supervisor failed, before the signal or as it
    // came, routes nothing and answers nothing: exit, so that the service
    // manager starts it again (the new router takes over the routes this
    // one left).
    let which = tokio::select! {
        which = signals.next_stop(&log) => Some(which),
        _ = &mut handle => None,
    };
    let Some(which) = which.filter(|_| !handle.is_finished()) else {
        error!(log, "the supervisor stopped on its own; exiting");
        return Err("the supervisor stopped unexpectedly (see the log); \
            routes this router installed stay until it is started again"
            .to_string());
    };
    info!(log, "shutting down"; "signal" => which);
    if let Some(m) = metrics {
        m.abort();
    }
    supervisor.stop(Some(format!("{which} received")));
    // A second SIGTERM or SIGINT ends the wait: the operator chose not to
    // wait for the routes' removal. The grace runs from the first.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let stopped = tokio::select! {
        done = tokio::time::timeout_at(deadline, &mut handle) => done.is_ok(),
        again = signals.next_stop(&log) => {
            warn!(log, "exiting at once"; "signal" => again);
            return Err(format!("{again} received while shutting down; \
                exited before the shutdown was done (routes this router \
                installed may remain)"));
        }
    };
    if !stopped {
        return Err(format!(
            "shutdown took longer than {} s; exited before it was done \
             (routes this router installed may remain)",
            SHUTDOWN_GRACE.as_secs()
        ));
    }
    if routes_left.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(format!(
            "the router's routes were not all removed within {} s (see \
             the log)",
            ROUTER_STOP_GRACE.as_secs()
        ));
    }
    info!(log, "ddmd stopped");
    Ok(())
}

/// The signals the daemon watches, from its start to its exit.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> Result<Signals, String> {
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| format!("cannot watch {name}: {e}"))
        };
        Ok(Signals {
            term: watch(SignalKind::terminate(), "SIGTERM")?,
            int: watch(SignalKind::interrupt(), "SIGINT")?,
            usr1: watch(SignalKind::user_defined1(), "SIGUSR1")?,
        })
    }

    /// The next SIGTERM or SIGINT (its name). SIGUSR1, which the original
    /// daemon's service refresh sends, is logged and otherwise ignored
    /// meanwhile (its default action would kill the daemon without
    /// removing its routes). Cancel-safe: each `recv` is.
    async fn next_stop(&mut self, log: &Logger) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.usr1.recv() => info!(log, "SIGUSR1 received (the \
                    original daemon's refresh); nothing to re-read: the \
                    command line is the whole configuration"),
            }
        }
    }
}

/// The innermost message of an actor start-up error: ractor wraps the
/// failing child's error in its parent's, each adding "panicked during
/// startup", which is not what happened.
fn root_cause(e: &ractor::SpawnErr) -> String {
    let mut err: &dyn std::error::Error = e;
    while let Some(inner) = err.source() {
        err = inner;
    }
    err.to_string()
}
