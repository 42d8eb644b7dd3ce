//! Configuration handed to the supervisor by the binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ddm_admin_api::latest::RouterKind;

use crate::policy::PolicyConfig;

/// An interface named on the command line: `IFNAME` or `IFNAME/TAG` (the
/// illumos address-object form; the tag is kept for display only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceSpec {
    /// The interface name (`eth0`, `tfportrear0_0`).
    pub ifname: String,
    /// The address-object tag, if one was given (`ll` in `eth0/ll`).
    pub tag: Option<String>,
}

impl std::str::FromStr for InterfaceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ifname, tag) = match s.split_once('/') {
            Some((i, t)) => (i, Some(t)),
            None => (s, None),
        };
        if ifname.is_empty() {
            return Err(format!("{s:?}: empty interface name"));
        }
        if ifname.len() >= libc::IF_NAMESIZE {
            return Err(format!(
                "{s:?}: interface name longer than {} bytes",
                libc::IF_NAMESIZE - 1
            ));
        }
        if ifname.contains(|c: char| c.is_whitespace() || c == '%') {
            return Err(format!("{s:?}: invalid interface name"));
        }
        if tag == Some("") {
            return Err(format!("{s:?}: empty address-object tag"));
        }
        Ok(InterfaceSpec {
            ifname: ifname.to_string(),
            tag: tag.map(str::to_string),
        })
    }
}

impl std::fmt::Display for InterfaceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}/{}", self.ifname, t),
            None => f.write_str(&self.ifname),
        }
    }
}

/// Protocol timers and identity of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This router's name in paths.
    pub hostname: String,
    /// Server or transit.
    pub kind: RouterKind,
    /// Interfaces to route over.
    pub interfaces: Vec<InterfaceSpec>,
    /// How often discovery solicits.
    pub solicit_interval: Duration,
    /// Silence after which a peer expires.
    pub expire_threshold: Duration,
    /// Read timeout of the discovery sockets.
    pub discovery_read_timeout: Duration,
    /// Retry interval while an interface has no usable link-local address.
    pub ip_addr_wait: Duration,
    /// Timeout of one exchange request.
    pub exchange_timeout: Duration,
    /// TCP port of the exchange protocol.
    pub exchange_port: u16,
    /// What peers may put in the RIB.
    pub policy: PolicyConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            hostname: "ddm".to_string(),
            kind: RouterKind::Server,
            interfaces: Vec::new(),
            solicit_interval: Duration::from_millis(2000),
            expire_threshold: Duration::from_millis(5000),
            discovery_read_timeout: Duration::from_millis(1000),
            ip_addr_wait: Duration::from_millis(1000),
            exchange_timeout: Duration::from_millis(3000),
            exchange_port: 0xdddd,
            policy: PolicyConfig::default(),
        }
    }
}

/// Where the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Listen address (port 0 picks a free port); `None` serves no HTTP
    /// (the admin actor then answers only by message, as in a
    /// simulation).
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                8000,
            )),
        }
    }
}

/// Everything the supervisor needs to start a router.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Serve only the admin API (no discovery, exchange or routing).
    pub admin_only: bool,
    /// The admin API listener.
    pub admin: AdminConfig,
    /// The directory holding the store (`<data_dir>/ddmdb`, see
    /// [`crate::store::db_path`]).
    pub data_dir: PathBuf,
    /// Protocol settings.
    pub router: RouterConfig,
}
