//! Test fixtures for `ddmd`.
//!
//! * [`fixture`] spawns the real `ddmd` binary in admin-only mode in a fresh
//!   temporary directory, exactly as the control plane's test suite does,
//!   and hands out a generated admin client.
//! * [`mock_dpd`] mocks the switch dataplane daemon's route API.
//! * [`netns`] builds network-namespace topologies for running real routers
//!   connected by veth links.
//! * [`fabric`] runs real `ddmd` routers in the nodes of a topology.
//! * [`racks`] builds fabrics of racks (servers, rack transits, spines) of
//!   such routers.
//! * [`routes`] reads the kernel's routes as `ip -6 route show` prints them.
//! * [`sim`] runs many routers in one process over in-memory links, with
//!   invariants and seeded faults.
//! * [`original`] stands in for the original DDM daemon in a namespace
//!   node, for mixed-fabric tests.
//!
//! The fixtures that run `ddmd` find the workspace's binaries next to the test executable (in
//! `target/<profile>/`), so build them first: `cargo build --workspace
//! --bins` (the README's test command does). `DDMD_BIN` and `DDMADM_BIN`
//! override the paths.

pub mod fabric;
pub mod fixture;
pub mod mock_dpd;
pub use ddm_netns as netns;
pub mod original;
pub mod racks;
pub mod routes;
pub mod sim;

use std::path::PathBuf;

/// Path of a workspace binary: `$<ENV>` if set, else `target/<profile>/<name>`
/// next to the running test executable.
pub fn workspace_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace \
         --bins`) or set {env}",
        path.display()
    );
    path
}

/// `target/<profile>/ddmd`, or `$DDMD_BIN`.
pub fn ddmd_bin() -> PathBuf {
    workspace_bin("ddmd", "DDMD_BIN")
}

/// `target/<profile>/ddmadm`, or `$DDMADM_BIN`.
pub fn ddmadm_bin() -> PathBuf {
    workspace_bin("ddmadm", "DDMADM_BIN")
}
