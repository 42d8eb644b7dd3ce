//! `ddmadm`: the operator's command line for a DDM router.
//!
//! It talks to the admin API of `ddmd` (by default at `[::1]:8000`) through
//! the generated client. Exit status: 0 on success (and when stdout is a
//! closed pipe), 1 when the daemon cannot be reached or refuses a request,
//! 2 when the command line is invalid.

mod cli;
mod error;
mod format;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ddm_admin_api::latest::TunnelOrigin;
use ddm_admin_client::{new_client, Client};

use cli::{Cli, Command};
use error::Failure;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match execute(&cli).await {
        Ok(text) => emit(&text),
        Err(f) => Err(f),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // stderr may be gone too; there is nobody left to tell.
            let _ = writeln!(std::io::stderr(), "ddmadm: {f}");
            ExitCode::FAILURE
        }
    }
}

/// Write `text` to stdout. A reader that went away (`ddmadm get-prefixes |
/// head -1`) is not an error: the rest of the output is unwanted.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::output(e))
        }
        _ => Ok(()),
    }
}

/// Run the command `cli` names and return what to print.
async fn execute(cli: &Cli) -> Result<String, Failure> {
    if let Command::Counters(m) = &cli.command {
        let report = counters(cli.metrics_endpoint(m)).await?;
        return Ok(if cli.json {
            format::json(&report)
        } else {
            format::counters_table(&report)
        });
    }
    let addr = cli.endpoint();
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let client = new_client(addr, log);
    run(&client, cli).await.map_err(|e| Failure::from_client(addr, e))
}

async fn run(
    client: &Client,
    cli: &Cli,
) -> Result<String, ddm_admin_client::Error<ddm_admin_client::types::Error>> {
    let json = cli.json;
    let text = match &cli.command {
        Command::GetPeers => {
            let peers = client.get_peers().await?.into_inner();
            if json {
                format::json(&peers)
            } else {
                // Interface names are only ours to look up when the daemon
                // runs on this host.
                let local = cli.address.is_loopback();
                format::peers_table(&peers, |i| {
                    local.then(|| ifname(i)).flatten()
                })
            }
        }
        Command::ExpirePeer { addr } => {
            // Sent whatever the peer list says (discovery may know a peer
            // the list does not show yet); the daemon takes an unknown
            // address as a no-op, and the note says so.
            let peers = client.get_peers().await?.into_inner();
            client.expire_peer(addr).await?;
            if !peers.values().any(|p| p.addr == *addr) {
                eprintln!("ddmadm: {addr} is not a peer; nothing expired");
            }
            String::new()
        }
        Command::GetPrefixes => {
            let prefixes = client.get_prefixes().await?.into_inner();
            if json {
                format::json(&prefixes)
            } else {
                format::prefixes_table(&prefixes)
            }
        }
        Command::FabricDot { me } => {
            let prefixes = client.get_prefixes().await?.into_inner();
            format::fabric_dot(me, &prefixes)
        }
        Command::GetOriginated => {
            let prefixes = client.get_originated().await?.into_inner();
            if json {
                format::json(&prefixes)
            } else {
                format::originated_table(&prefixes)
            }
        }
        Command::AdvertisePrefixes { prefixes } => {
            client.advertise_prefixes(prefixes).await?;
            String::new()
        }
        Command::WithdrawPrefixes { prefixes } => {
            client.withdraw_prefixes(prefixes).await?;
            String::new()
        }
        Command::TunnelImported => {
            let routes = client.get_tunnel_endpoints().await?.into_inner();
            if json {
                format::json(&routes)
            } else {
                format::tunnel_imported_table(&routes)
            }
        }
        Command::TunnelOriginated => {
            let origins =
                client.get_originated_tunnel_endpoints().await?.into_inner();
            if json {
                format::json(&origins)
            } else {
                format::tunnel_originated_table(&origins)
            }
        }
        Command::TunnelAdvertise(t) => {
            client
                .advertise_tunnel_endpoints(&vec![TunnelOrigin::from(t)])
                .await?;
            String::new()
        }
        Command::TunnelWithdraw(t) => {
            // What was advertised, with its metric: a withdrawal must name
            // it exactly, and one that names nothing is said so.
            let originated =
                client.get_originated_tunnel_endpoints().await?.into_inner();
            let gone = t.matching(&originated);
            if gone.is_empty() {
                eprintln!("ddmadm: {t} is not originated; nothing withdrawn");
            } else {
                client.withdraw_tunnel_endpoints(&gone).await?;
            }
            String::new()
        }
        Command::Sync => {
            client.sync().await?;
            String::new()
        }
        // Read from the metrics listener by `execute`, never through the
        // admin API.
        Command::Counters(_) => String::new(),
    };
    Ok(text)
}

/// How long `ddmadm counters` waits for the metrics listener.
const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /counters` from the metrics listener at `addr` (not the admin API:
/// no `api-version` header is involved).
async fn counters(
    addr: std::net::SocketAddr,
) -> Result<ddm_admin_api::counters::CountersReport, Failure> {
    let client = reqwest::Client::builder()
        .timeout(METRICS_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| Failure::from_metrics(addr, e))?;
    let answer = client
        .get(format!("http://{addr}/counters"))
        .send()
        .await
        .map_err(|e| Failure::from_metrics(addr, e))?;
    let status = answer.status();
    if !status.is_success() {
        let body = answer.text().await.unwrap_or_default();
        return Err(Failure::metrics_status(addr, status.as_u16(), &body));
    }
    answer.json().await.map_err(|e| Failure::from_metrics(addr, e))
}

/// The name of the local interface with index `index`, if there is one.
fn ifname(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` is IF_NAMESIZE bytes, as if_indextoname requires; it
    // writes a NUL-terminated name there or returns NULL.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let name = std::ffi::CStr::from_bytes_until_nul(&buf).ok()?;
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, TcpListener};

    /// A port on [::1] that nothing listens on: bound, then released.
    fn closed_port() -> u16 {
        let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unreachable_daemon_is_one_line_naming_the_address() {
        let port = closed_port();
        let cli = Cli::try_parse_from([
            "ddmadm",
            "--port",
            &port.to_string(),
            "get-peers",
        ])
        .unwrap();
        let err = execute(&cli).await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!("cannot reach ddmd at [::1]:{port}: connection refused")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn changes_fail_the_same_way() {
        let port = closed_port();
        let cli = Cli::try_parse_from([
            "ddmadm",
            "-p",
            &port.to_string(),
            "advertise-prefixes",
            "fd00:1::/64",
        ])
        .unwrap();
        let err = execute(&cli).await.unwrap_err().to_string();
        assert!(err.starts_with("cannot reach ddmd at [::1]:"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn counters_without_a_listener_say_where_they_looked() {
        let port = closed_port();
        let cli = Cli::try_parse_from([
            "ddmadm",
            "counters",
            "--metrics-port",
            &port.to_string(),
        ])
        .unwrap();
        let err = execute(&cli).await.unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach the metrics listener of ddmd at [::1]:{port}: \
                 connection refused (is ddmd running with --metrics-addr?)"
            )
        );
    }

    #[test]
    fn counters_need_a_metrics_endpoint() {
        assert!(Cli::try_parse_from(["ddmadm", "counters"]).is_err());
        let cli = Cli::try_parse_from([
            "ddmadm",
            "-a",
            "fd00::1",
            "counters",
            "--metrics-port",
            "9100",
        ])
        .unwrap();
        let Command::Counters(m) = &cli.command else { panic!() };
        assert_eq!(cli.metrics_endpoint(m), "[fd00::1]:9100".parse().unwrap());
        let cli = Cli::try_parse_from([
            "ddmadm",
            "counters",
            "--metrics-addr",
            "[::1]:9200",
        ])
        .unwrap();
        let Command::Counters(m) = &cli.command else { panic!() };
        assert_eq!(cli.metrics_endpoint(m), "[::1]:9200".parse().unwrap());
    }

    #[test]
    fn loopback_interface_has_a_name() {
        // Index 1 is the loopback interface on Linux and illumos alike.
        assert!(ifname(1).is_some_and(|n| !n.is_empty()));
        assert_eq!(ifname(u32::MAX), None);
    }
}
