//! The command line: options, subcommands and the parsers of their values.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use clap::{Args, Parser, Subcommand};
use ddm_admin_api::latest::TunnelOrigin;
use oxnet::{IpNet, Ipv6Net};

/// Administer a DDM router through the admin API of its daemon (ddmd).
///
/// Queries print a table for people; with --json they print the JSON the
/// daemon returned instead. Changes print nothing when they succeed.
#[derive(Debug, Parser)]
#[command(name = "ddmadm", version)]
pub struct Cli {
    /// Address of the ddmd admin API.
    #[arg(
        short = 'a',
        long,
        default_value = "::1",
        global = true,
        help_heading = "Global options"
    )]
    pub address: IpAddr,

    /// TCP port of the ddmd admin API.
    #[arg(
        short = 'p',
        long,
        default_value_t = 8000,
        global = true,
        help_heading = "Global options"
    )]
    pub port: u16,

    /// Print the response as JSON instead of a table.
    ///
    /// The output is the daemon's answer, pretty-printed with object keys
    /// sorted. Commands whose answer is empty print nothing.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The socket address of the admin API these options name.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// The metrics listener `m` names: its address, or its port on the
    /// admin API's host.
    pub fn metrics_endpoint(&self, m: &MetricsEndpoint) -> SocketAddr {
        match (m.metrics_addr, m.metrics_port) {
            (Some(addr), _) => addr,
            (None, port) => SocketAddr::new(self.address, port.unwrap_or(0)),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the router's peers, one per interface.
    GetPeers,

    /// Expire a peer now, dropping every route learned from it.
    ExpirePeer {
        /// The peer's (link-local) address, as `get-peers` and `counters`
        /// show it (a `%interface` scope is accepted and ignored).
        #[arg(value_parser = parse_peer_addr)]
        addr: Ipv6Addr,
    },

    /// List the underlay paths learned from peers.
    GetPrefixes,

    /// List the underlay prefixes this router originates.
    GetOriginated,

    /// Print the fabric this router sees as Graphviz DOT: the routers and
    /// links on the paths it holds (`ddmadm fabric-dot | dot -Tsvg >
    /// fabric.svg`).
    ///
    /// A router holding only shortest paths sees only the links on them,
    /// so the picture is part of the fabric. --json is ignored.
    FabricDot {
        /// The name to draw this router under (its hostname).
        #[arg(long, default_value = "this router")]
        me: String,
    },

    /// Originate underlay prefixes.
    AdvertisePrefixes {
        /// IPv6 prefixes, e.g. fd00:1122:3344:101::/64.
        #[arg(required = true, value_parser = parse_ipv6_prefix)]
        prefixes: Vec<Ipv6Net>,
    },

    /// Stop originating underlay prefixes.
    WithdrawPrefixes {
        /// IPv6 prefixes, e.g. fd00:1122:3344:101::/64.
        #[arg(required = true, value_parser = parse_ipv6_prefix)]
        prefixes: Vec<Ipv6Net>,
    },

    /// List the tunnel endpoints learned from peers.
    TunnelImported,

    /// List the tunnel endpoints this router originates.
    TunnelOriginated,

    /// Originate a tunnel endpoint.
    TunnelAdvertise(TunnelEndpoint),

    /// Stop originating a tunnel endpoint.
    TunnelWithdraw(TunnelEndpoint),

    /// Pull everything again from every peer.
    Sync,

    /// Show the daemon's counters: discovery per interface, exchange per
    /// peer, import refusals, router and store.
    ///
    /// They are read from the daemon's metrics listener (`ddmd
    /// --metrics-addr`), not from the admin API: name it with
    /// --metrics-addr, or with --metrics-port on the host of -a/--address.
    Counters(MetricsEndpoint),
}

/// Where `ddmd --metrics-addr` listens.
#[derive(Debug, Args)]
pub struct MetricsEndpoint {
    /// The metrics listener's address, e.g. [::1]:9100.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "metrics_port")]
    pub metrics_addr: Option<SocketAddr>,

    /// The metrics listener's port, on the host of -a/--address.
    #[arg(long, value_name = "PORT", required_unless_present = "metrics_addr")]
    pub metrics_port: Option<u16>,
}

/// A tunnel endpoint: an overlay prefix reachable through a boundary address.
#[derive(Debug, Args)]
pub struct TunnelEndpoint {
    /// Overlay prefix (IPv4 or IPv6), e.g. 203.0.113.0/24.
    #[arg(short = 'o', long, value_parser = parse_prefix)]
    pub overlay_prefix: IpNet,

    /// Boundary (tunnel endpoint) address the overlay prefix is reached
    /// through.
    #[arg(short = 'b', long)]
    pub boundary_addr: Ipv6Addr,

    /// Virtual network identifier.
    #[arg(short = 'v', long)]
    pub vni: u32,

    /// Preference: routes with a positive metric win over metric-0 routes.
    /// Advertising: 0 if not given. Withdrawing: if not given, the
    /// endpoint is withdrawn whatever metric it was advertised with.
    #[arg(short = 'm', long)]
    pub metric: Option<u64>,
}

impl From<&TunnelEndpoint> for TunnelOrigin {
    fn from(t: &TunnelEndpoint) -> Self {
        TunnelOrigin {
            overlay_prefix: t.overlay_prefix,
            boundary_addr: t.boundary_addr,
            vni: t.vni,
            metric: t.metric.unwrap_or(0),
        }
    }
}

impl TunnelEndpoint {
    /// Of the `originated` endpoints, those this one names: the same
    /// overlay prefix, boundary address and VNI, and the metric if given.
    pub fn matching<'a>(
        &self,
        originated: impl IntoIterator<Item = &'a TunnelOrigin>,
    ) -> Vec<TunnelOrigin> {
        originated
            .into_iter()
            .filter(|o| {
                o.overlay_prefix == self.overlay_prefix
                    && o.boundary_addr == self.boundary_addr
                    && o.vni == self.vni
                    && self.metric.is_none_or(|m| m == o.metric)
            })
            .copied()
            .collect()
    }
}

impl std::fmt::Display for TunnelEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} via {} (VNI {}",
            self.overlay_prefix, self.boundary_addr, self.vni
        )?;
        match self.metric {
            Some(m) => write!(f, ", metric {m})"),
            None => write!(f, ")"),
        }
    }
}

/// Parse an IPv6 prefix in network form (`fd00:1::/64`).
///
/// IPv4 prefixes, missing lengths and set host bits are refused with a
/// message that says what was expected.
pub fn parse_ipv6_prefix(s: &str) -> Result<Ipv6Net, String> {
    match parse_prefix(s)? {
        IpNet::V6(net) => Ok(net),
        IpNet::V4(_) => Err(format!(
            "{s} is an IPv4 prefix; an IPv6 prefix is needed, \
             e.g. fd00:1122:3344:101::/64"
        )),
    }
}

/// Parse a peer's IPv6 address, with or without the `%interface` scope
/// `ddmadm counters` prints it with (the daemon expires by address).
pub fn parse_peer_addr(s: &str) -> Result<Ipv6Addr, String> {
    let addr = s.split_once('%').map_or(s, |(a, _)| a);
    addr.parse().map_err(|_| {
        format!("{s} is not an IPv6 address; e.g. fe80::2 or fe80::2%eth0")
    })
}

/// Parse an IPv4 or IPv6 prefix in network form (`10.0.0.0/8`,
/// `fd00::/64`).
pub fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err(format!(
            "{s} has no prefix length; write ADDRESS/LENGTH, e.g. fd00::/64"
        ));
    };
    let addr: IpAddr =
        addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
        format!("{len:?} is not a prefix length (0 to {max})")
    })?;
    let net = IpNet::new(addr, len).map_err(|e| e.to_string())?;
    if !net.is_network_address() {
        return Err(format!(
            "{s} has host bits set; did you mean {}/{len}?",
            net.prefix()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(
            std::iter::once("ddmadm").chain(args.iter().copied()),
        )
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_to_loopback_8000() {
        let cli = parse(&["get-peers"]).unwrap();
        assert_eq!(cli.endpoint(), "[::1]:8000".parse().unwrap());
        assert!(!cli.json);
        assert!(matches!(cli.command, Command::GetPeers));
    }

    #[test]
    fn global_options_before_or_after_the_subcommand() {
        let before =
            parse(&["-a", "fd00::5", "-p", "9000", "--json", "get-prefixes"])
                .unwrap();
        let after = parse(&[
            "get-prefixes",
            "--address",
            "fd00::5",
            "--port",
            "9000",
            "--json",
        ])
        .unwrap();
        for cli in [before, after] {
            assert_eq!(cli.endpoint(), "[fd00::5]:9000".parse().unwrap());
            assert!(cli.json);
            assert!(matches!(cli.command, Command::GetPrefixes));
        }
    }

    #[test]
    fn every_established_subcommand_name_exists() {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        for want in [
            "get-peers",
            "expire-peer",
            "get-prefixes",
            "get-originated",
            "advertise-prefixes",
            "withdraw-prefixes",
            "tunnel-imported",
            "tunnel-originated",
            "tunnel-advertise",
            "tunnel-withdraw",
            "sync",
            "fabric-dot",
        ] {
            assert!(names.iter().any(|n| n == want), "missing {want}");
        }
    }

    #[test]
    fn advertise_prefixes_takes_several() {
        let cli = parse(&["advertise-prefixes", "fd00:1::/64", "fd00:2::/64"])
            .unwrap();
        match cli.command {
            Command::AdvertisePrefixes { prefixes } => assert_eq!(
                prefixes,
                vec![
                    "fd00:1::/64".parse::<Ipv6Net>().unwrap(),
                    "fd00:2::/64".parse().unwrap()
                ]
            ),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn advertise_prefixes_needs_one() {
        let err = parse(&["withdraw-prefixes"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn v4_prefix_is_refused_where_v6_is_needed() {
        let err = parse(&["advertise-prefixes", "10.0.0.0/8"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("IPv4 prefix"), "{err}");
    }

    #[test]
    fn bad_prefixes_are_refused_with_a_reason() {
        for (arg, why) in [
            ("fd00::", "no prefix length"),
            ("fd00::/129", "not a prefix length"),
            ("fd00::/x", "not a prefix length"),
            ("fd00:zz::/64", "not an IP address"),
            ("fd00::1/64", "did you mean fd00::/64"),
        ] {
            let err = parse(&["advertise-prefixes", arg]).unwrap_err();
            assert!(err.to_string().contains(why), "{arg}: {err}");
        }
    }

    #[test]
    fn tunnel_advertise_parses_every_field() {
        let cli = parse(&[
            "tunnel-advertise",
            "-o",
            "203.0.113.0/24",
            "-b",
            "fd00::1",
            "-v",
            "77",
            "-m",
            "5",
        ])
        .unwrap();
        let Command::TunnelAdvertise(t) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        let origin = ddm_admin_api::latest::TunnelOrigin::from(&t);
        assert_eq!(origin.overlay_prefix, "203.0.113.0/24".parse().unwrap());
        assert_eq!(
            origin.boundary_addr,
            "fd00::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(origin.vni, 77);
        assert_eq!(origin.metric, 5);
    }

    /// Without -m, a withdrawal names the endpoint whatever its metric
    /// (before, it named metric 0 only, and withdrawing an endpoint
    /// advertised with -m 5 quietly did nothing); with -m, that metric.
    #[test]
    fn tunnel_withdraw_without_a_metric_names_every_metric() {
        let endpoint = |metric: &[&str]| {
            let mut args = vec![
                "tunnel-withdraw",
                "--overlay-prefix",
                "fd00:99::/64",
                "--boundary-addr",
                "fd00::1",
                "--vni",
                "7",
            ];
            args.extend(metric);
            let Command::TunnelWithdraw(t) = parse(&args).unwrap().command
            else {
                panic!("not a withdrawal");
            };
            t
        };
        let origin = |vni, metric| TunnelOrigin {
            overlay_prefix: "fd00:99::/64".parse().unwrap(),
            boundary_addr: "fd00::1".parse().unwrap(),
            vni,
            metric,
        };
        let originated = [origin(7, 0), origin(7, 5), origin(8, 5)];
        let any = endpoint(&[]);
        assert_eq!(any.metric, None);
        assert_eq!(any.matching(&originated), [origin(7, 0), origin(7, 5)]);
        assert_eq!(
            endpoint(&["-m", "5"]).matching(&originated),
            [origin(7, 5)]
        );
        assert!(endpoint(&["-m", "3"]).matching(&originated).is_empty());
        assert_eq!(any.to_string(), "fd00:99::/64 via fd00::1 (VNI 7)");
    }

    #[test]
    fn tunnel_boundary_must_be_ipv6() {
        let err = parse(&[
            "tunnel-advertise",
            "-o",
            "203.0.113.0/24",
            "-b",
            "192.0.2.1",
            "-v",
            "1",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn tunnel_fields_are_required() {
        let err =
            parse(&["tunnel-advertise", "-o", "203.0.113.0/24"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn expire_peer_needs_an_ipv6_address() {
        assert!(parse(&["expire-peer", "fe80::1"]).is_ok());
        // As `counters` prints it: the scope is ignored.
        assert_eq!(
            parse_peer_addr("fe80::2%eth0"),
            Ok("fe80::2".parse().unwrap())
        );
        for bad in ["nope", "10.0.0.1", "%eth0"] {
            let err = parse(&["expire-peer", bad]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        }
    }

    #[test]
    fn help_is_available_for_every_subcommand() {
        let err = parse(&["--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        for sub in Cli::command().get_subcommands() {
            let err = parse(&[sub.get_name(), "--help"]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp,
                "{}",
                sub.get_name()
            );
            assert!(
                sub.get_about().is_some(),
                "{} has no help text",
                sub.get_name()
            );
        }
    }
}
