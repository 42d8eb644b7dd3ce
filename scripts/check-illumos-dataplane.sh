#!/usr/bin/env bash
# Type-checks the illumos dataplane (ddm-actors/src/dataplane/illumos/,
# including its illumos-only system calls) and the daemon's illumos
# dataplane factory for x86_64-unknown-illumos.
#
# ddm-actors as a whole cannot be checked for illumos here: its dropshot
# dependency turns on a TLS backend whose build compiles C for the target.
# So this builds a throwaway crate in a temporary directory that includes
# the illumos modules by path, with small stand-ins for the crate's shared
# dataplane types (the trait and the update types), and checks that. It
# proves the code type-checks against illumos' libc; it does not run it.
#
# Needs the target: `rustup target add x86_64-unknown-illumos`. Prints a
# SKIP line and exits 0 when the target cannot be installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target=x86_64-unknown-illumos

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    if ! rustup target add "$target" >/dev/null 2>&1; then
        echo "SKIP: illumos type-check: cannot install the $target target"
        exit 0
    fi
fi

dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/src"
cp "$root/Cargo.lock" "$dir/"
cat >"$dir/Cargo.toml" <<'EOF'
[package]
name = "ddm-illumos-check"
version = "0.0.0"
edition = "2021"

[dependencies]
async-trait = "0.1"
libc = "0.2"
oxnet = { version = "0.1.7", default-features = false, features = ["serde", "schemars"] }
slog = "2.7"
thiserror = "2"
tokio = { version = "1", features = ["full"] }
EOF
cat >"$dir/src/lib.rs" <<EOF
#![allow(clippy::type_complexity)]
/// Stand-ins for ddm-actors' shared dataplane types.
pub mod dataplane {
    use std::net::Ipv6Addr;
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct TunnelOrigin {
        pub overlay_prefix: oxnet::IpNet,
        pub boundary_addr: Ipv6Addr,
        pub vni: u32,
        pub metric: u64,
    }
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct TunnelEntry {
        pub origin: TunnelOrigin,
        pub nexthop: Ipv6Addr,
    }
    #[derive(Debug, Clone, Copy)]
    pub struct Nexthop {
        pub addr: Ipv6Addr,
        pub ifindex: u32,
    }
    #[derive(Debug, Clone)]
    pub struct Nexthops(Vec<Nexthop>);
    impl Nexthops {
        pub fn iter(&self) -> std::slice::Iter<'_, Nexthop> {
            self.0.iter()
        }
    }
    #[derive(Debug, Clone)]
    pub struct RouteUpdate {
        pub destination: oxnet::Ipv6Net,
        pub nexthops: Nexthops,
    }
    #[derive(Debug, thiserror::Error)]
    pub enum DataplaneError {
        #[error("{0}")]
        Request(String),
        #[error("{0}")]
        Unavailable(String),
    }
    #[async_trait::async_trait]
    pub trait Dataplane: Send + 'static {
        fn name(&self) -> &'static str;
        async fn remove_stale(&mut self) -> Result<usize, DataplaneError>;
        async fn apply(&mut self, u: Vec<RouteUpdate>) -> Result<(), DataplaneError>;
        async fn set_tunnels(
            &mut self,
            t: std::collections::BTreeSet<TunnelEntry>,
        ) -> Result<(), DataplaneError>;
        async fn remove_all(&mut self) -> Result<usize, DataplaneError>;
    }
    #[path = "$root/ddm-actors/src/dataplane/illumos/mod.rs"]
    pub mod illumos;
}

/// The daemon's illumos factory, as ddmd/src/daemon.rs writes it.
pub fn factory(
    data_dir: std::path::PathBuf,
    api_version: u64,
) -> std::sync::Arc<
    dyn Fn(&slog::Logger) -> Result<Box<dyn dataplane::Dataplane>, dataplane::DataplaneError>
        + Send
        + Sync,
> {
    use dataplane::illumos::kernel::KernelDataplane;
    use dataplane::illumos::sys::{RtSocket, Xde};
    use dataplane::Dataplane;
    use slog::warn;
    std::sync::Arc::new(move |log: &slog::Logger| {
        let opte = Xde::open(api_version).unwrap_or_else(|e| {
            warn!(log, "cannot open the encapsulation driver"; "error" => %e);
            None
        });
        let dp = KernelDataplane::new(RtSocket, opte, &data_dir, log.clone())?;
        Ok(Box::new(dp) as Box<dyn Dataplane>)
    })
}
EOF
cd "$dir"
echo "+ cargo clippy --target $target (the illumos dataplane)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/illumos-check" \
    cargo clippy --quiet --target "$target" -- -D warnings
echo "illumos dataplane type-checks for $target"
