//! The command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ddm_actors::config::InterfaceSpec;
use ddm_admin_api::latest::RouterKind;

/// The DDM routing daemon: finds peers on each interface, exchanges path
/// vectors with them and programs the forwarding plane.
#[derive(Debug, Parser)]
#[command(name = "ddmd", version)]
pub struct Args {
    /// An interface to route over, as IFNAME or IFNAME/TAG (repeatable).
    #[arg(short = 'a', long = "addr", value_name = "IFNAME[/TAG]")]
    pub addresses: Vec<InterfaceSpec>,

    /// The router's kind: server (a sled) or transit (a switch).
    #[arg(long, default_value = "server", value_parser = parse_kind)]
    pub kind: RouterKind,

    /// How often to solicit peers, in milliseconds (at least 10).
    #[arg(long, default_value_t = 2000, value_name = "MS",
        value_parser = clap::value_parser!(u64).range(MIN_TIMER_MS..))]
    pub solicit_interval: u64,

    /// Silence after which a peer expires, in milliseconds (more than the
    /// solicit interval: a peer advertises when solicited).
    #[arg(long, default_value_t = 5000, value_name = "MS",
        value_parser = clap::value_parser!(u64).range(MIN_TIMER_MS..))]
    pub expire_threshold: u64,

    /// Read timeout of the discovery sockets, in milliseconds (accepted
    /// for compatibility; unused: the sockets are read as datagrams come).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub discovery_read_timeout: u64,

    /// Retry interval while an interface has no usable link-local address,
    /// in milliseconds (at least 10).
    #[arg(long, default_value_t = 1000, value_name = "MS",
        value_parser = clap::value_parser!(u64).range(MIN_TIMER_MS..))]
    pub ip_addr_wait: u64,

    /// Timeout of one prefix-exchange request, in milliseconds (at least
    /// 10).
    #[arg(long, default_value_t = 3000, value_name = "MS",
        value_parser = clap::value_parser!(u64).range(MIN_TIMER_MS..))]
    pub exchange_timeout: u64,

    /// TCP port of the prefix-exchange protocol (not 0: peers connect to
    /// it).
    #[arg(long, default_value_t = 0xdddd,
        value_parser = clap::value_parser!(u16).range(1..))]
    pub exchange_port: u16,

    /// Accept the default route (::/0) from peers. Without it, ::/0 is
    /// refused like every destination overlapping a special-purpose range
    /// (::/128, ::1/128, fe80::/10, ff00::/8, ::ffff:0:0/96), which stay
    /// refused either way.
    #[arg(long)]
    pub accept_default_route: bool,

    /// Longest path accepted from a peer, in hostnames (at most 1024);
    /// longer paths are refused and counted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = ddm_actors::policy::DEFAULT_MAX_PATH_LEN as u32,
        value_parser = clap::value_parser!(u32)
            .range(1..=ddm_actors::policy::MAX_PATH_LEN_BOUND as i64)
    )]
    pub max_path_len: u32,

    /// Most distinct destinations (and, separately, tunnel endpoints) held
    /// from one peer. Past it, the peer's new destinations are refused and
    /// counted while the session stays up; withdrawals and destinations it
    /// already has still pass.
    #[arg(
        long,
        value_name = "N",
        default_value_t = ddm_actors::policy::DEFAULT_MAX_PREFIXES_PER_PEER as u32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_prefixes_per_peer: u32,

    /// Address the admin API listens on.
    #[arg(long, default_value = "::1")]
    pub admin_addr: IpAddr,

    /// Port the admin API listens on (0 picks a free port).
    #[arg(long, default_value_t = 8000)]
    pub admin_port: u16,

    /// Once the admin API listens, write "[addr]:port\n" to this file (which
    /// must not exist yet; its directory must).
    #[arg(long, value_name = "PATH")]
    pub admin_port_file: Option<PathBuf>,

    /// Serve the counters on this address, apart from the admin API: `GET
    /// /metrics` (Prometheus text format) and `GET /counters` (JSON, read by
    /// `ddmadm counters`). Off by default. IPv6 addresses go in brackets:
    /// `[::1]:9100`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Directory of the durable store (kept in DIR/ddmdb, or in
    /// DIR/ddmdb.redb beside the original daemon's store).
    #[arg(long, default_value = "/var/run", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Serve only the admin API: no discovery, exchange or routing.
    #[arg(long, visible_alias = "api-only", conflicts_with = "addresses")]
    pub no_state_machine: bool,

    /// Program a switch through its dataplane daemon (dpd).
    #[arg(long)]
    pub dendrite: bool,

    /// Host of the switch dataplane daemon, with --dendrite [default:
    /// localhost].
    #[arg(long)]
    pub dpd_host: Option<String>,

    /// Port of the switch dataplane daemon, with --dendrite [default:
    /// 12224].
    #[arg(long)]
    pub dpd_port: Option<u16>,

    /// API version of the OPTE encapsulation driver (illumos); must equal
    /// the running driver's exactly.
    #[arg(long, default_value_t = ddm_actors::dataplane::illumos::opte::DEFAULT_API_VERSION)]
    pub opte_api_version: u64,

    /// Report statistics (accepted for compatibility).
    #[arg(long)]
    pub with_stats: bool,

    /// Port of the statistics producer (accepted for compatibility).
    #[arg(long)]
    pub oximeter_port: Option<u16>,

    /// Rack identity for statistics (accepted for compatibility).
    #[arg(long)]
    pub rack_uuid: Option<uuid::Uuid>,

    /// Sled identity for statistics (accepted for compatibility).
    #[arg(long)]
    pub sled_uuid: Option<uuid::Uuid>,

    /// DNS servers for statistics registration (accepted for
    /// compatibility).
    #[arg(long, value_delimiter = ',')]
    pub dns_servers: Vec<String>,

    /// This router's name in paths (default: the system hostname). Routers
    /// sharing one host need distinct names.
    #[arg(long)]
    pub hostname: Option<String>,

    /// Log level: trace, debug, info, warn, error or critical (default:
    /// RUST_LOG, else info).
    #[arg(long, value_parser = crate::logging::parse_level)]
    pub log_level: Option<slog::Level>,
}

/// The least value of a protocol timer, in milliseconds: below it, a
/// timer of 0 or 1 ms would solicit, retry or time out on every tick of
/// the runtime's clock.
const MIN_TIMER_MS: u64 = 10;

/// dpd's host and port when --dendrite does not name them.
pub const DPD_HOST: &str = "localhost";
/// See [`DPD_HOST`].
pub const DPD_PORT: u16 = 12224;

fn parse_kind(s: &str) -> Result<RouterKind, String> {
    s.parse()
}

impl Args {
    /// Parse the process arguments; on error clap prints the message and
    /// exits 2, `--help` exits 0.
    pub fn parse_or_exit() -> Args {
        let args = Args::parse();
        if let Err(e) = args.check() {
            use clap::CommandFactory;
            Args::command()
                .error(clap::error::ErrorKind::ArgumentConflict, e)
                .exit();
        }
        args
    }

    /// What the parser cannot see: one interface named twice (`-a eth0
    /// -a eth0/b`) would run two discovery actors on it, fighting over
    /// its peer (one gets the unicast advertisements, the other expires
    /// it, every few seconds); a peer expiring before it is solicited
    /// again (it advertises when solicited) would go down and up at each
    /// solicitation.
    pub fn check(&self) -> Result<(), String> {
        if self.expire_threshold <= self.solicit_interval {
            return Err(format!(
                "--expire-threshold {} must be more than --solicit-interval \
                 {}: a peer advertises when solicited, and would expire \
                 between solicitations",
                self.expire_threshold, self.solicit_interval
            ));
        }
        let mut seen = std::collections::BTreeMap::new();
        for a in &self.addresses {
            if let Some(first) = seen.insert(a.ifname.as_str(), a) {
                return Err(format!(
                    "interface {} is named twice (-a {first} and -a {a}); \
                     give each interface once",
                    a.ifname
                ));
            }
        }
        Ok(())
    }

    /// The protocol timers as durations.
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn an_interface_named_twice_is_refused() {
        let check = |argv: &[&str]| Args::try_parse_from(argv).unwrap().check();
        assert_eq!(check(&["ddmd", "-a", "eth0", "-a", "eth1/v6"]), Ok(()));
        for twice in
            [["-a", "eth0", "-a", "eth0"], ["-a", "eth0/a", "-a", "eth0/b"]]
        {
            let mut argv = vec!["ddmd"];
            argv.extend(twice);
            let e = check(&argv).unwrap_err();
            assert!(e.contains("interface eth0 is named twice"), "{e}");
        }
    }

    #[test]
    fn import_policy_flags_parse() {
        let a = Args::try_parse_from([
            "ddmd",
            "--accept-default-route",
            "--max-path-len",
            "8",
            "--max-prefixes-per-peer",
            "100",
        ])
        .unwrap();
        assert!(a.accept_default_route);
        assert_eq!(a.max_path_len, 8);
        assert_eq!(a.max_prefixes_per_peer, 100);
    }

    #[test]
    fn fixture_spawn_line_parses() {
        let a = Args::try_parse_from([
            "ddmd",
            "--admin-addr",
            "::1",
            "--admin-port",
            "0",
            "--admin-port-file",
            "/tmp/x/ddmd_port",
            "--api-only",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert!(a.no_state_machine);
        assert_eq!(a.admin_port, 0);
        assert_eq!(a.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn admin_only_and_addr_conflict() {
        let e =
            Args::try_parse_from(["ddmd", "--no-state-machine", "-a", "eth0"])
                .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        let text = e.to_string();
        assert!(text.contains("--no-state-machine"), "{text}");
        assert!(text.contains("--addr"), "{text}");
    }

    #[test]
    fn defaults_match_the_deployed_daemon() {
        let a = Args::try_parse_from(["ddmd", "-a", "eth0/ll"]).unwrap();
        assert_eq!(a.kind, RouterKind::Server);
        assert_eq!(a.solicit_interval, 2000);
        assert_eq!(a.expire_threshold, 5000);
        assert_eq!(a.exchange_port, 56797);
        assert_eq!(a.admin_port, 8000);
        assert!(!a.accept_default_route);
        assert_eq!(a.max_path_len, 32);
        assert_eq!(a.max_prefixes_per_peer, 250_000);
        assert_eq!(a.addresses[0].ifname, "eth0");
        assert_eq!(a.addresses[0].tag.as_deref(), Some("ll"));
    }

    #[test]
    fn metrics_addr_is_off_by_default_and_parses() {
        let a = Args::try_parse_from(["ddmd"]).unwrap();
        assert_eq!(a.metrics_addr, None);
        let a = Args::try_parse_from(["ddmd", "--metrics-addr", "[::1]:9100"])
            .unwrap();
        assert_eq!(a.metrics_addr, Some("[::1]:9100".parse().unwrap()));
        assert!(
            Args::try_parse_from(["ddmd", "--metrics-addr", "::1"]).is_err()
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            &["ddmd", "--kind", "router"][..],
            &["ddmd", "--admin-port", "70000"],
            &["ddmd", "--admin-addr", "localhost"],
            &["ddmd", "--log-level", "loud"],
            &["ddmd", "-a", ""],
            &["ddmd", "--max-path-len", "0"],
            &["ddmd", "--max-path-len", "-1"],
            &["ddmd", "--max-path-len", "1025"],
            &["ddmd", "--max-prefixes-per-peer", "0"],
            &["ddmd", "--max-prefixes-per-peer", "many"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timers_and_ports_that_cannot_work_are_refused() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["ddmd"];
            argv.extend(extra);
            Args::try_parse_from(argv)
        };
        for bad in [
            ["--solicit-interval", "0"],
            ["--expire-threshold", "9"],
            ["--ip-addr-wait", "0"],
            ["--exchange-timeout", "0"],
            ["--exchange-port", "0"],
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{bad:?}");
        }
        let e = parse(&["--solicit-interval", "6000"])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(e.contains("must be more than --solicit-interval"), "{e}");
        let ok =
            parse(&["--solicit-interval", "10", "--expire-threshold", "11"]);
        assert_eq!(ok.unwrap().check(), Ok(()));
    }

    #[test]
    fn api_only_is_listed_in_the_help() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("api-only"), "{help}");
    }
}
