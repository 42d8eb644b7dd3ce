//! Time (and memory) of the RIB at scale: import N prefixes from one peer,
//! then withdraw them, as a server and as a transit router with several
//! peers to redistribute to. The updates are built before the clock
//! starts, in the compact form a peer's push is decoded into (hostnames
//! shared as the decoder shares them): the time is the RIB's own.
//!
//! ```text
//! cargo run --release -p ddm-actors --example rib_bench [N]
//! ```
//!
//! Not a test: numbers depend on the machine. It prints one line per step.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ddm_actors::exchange::outgoing::{Names, OutPath, OutUnderlay, OutUpdate};
use ddm_actors::rib::{PeerId, Rib};
use ddm_admin_api::latest::RouterKind;
use oxnet::Ipv6Net;

fn peer(n: u16) -> PeerId {
    PeerId {
        ifindex: u32::from(n),
        addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n),
    }
}

/// Bytes currently allocated on the heap, counted by [`Counting`].
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes: RSS alone cannot tell what
/// the RIB holds from what the allocator keeps for reuse.
struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Resident set size and its peak, in KiB, where the system reports them.
fn rss() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return format!("heap {} KiB", LIVE.load(Ordering::Relaxed) / 1024);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    format!(
        "heap {} KiB, rss {} KiB (peak {} KiB)",
        LIVE.load(Ordering::Relaxed) / 1024,
        field("VmRSS:"),
        field("VmHWM:")
    )
}

/// Hand freed memory back to the system, so RSS shows what is still held.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `n` paths from 32 servers through one switch, in the compact form a
/// peer's push is decoded into: each hostname stored once and shared, as
/// the decoder shares them within a push (consecutive paths differ here,
/// so each has its own list of them, as the decoder would give it).
fn paths(n: u32) -> BTreeSet<OutPath> {
    let switch: Arc<str> = Arc::from("switch-0");
    let sleds: Vec<Arc<str>> =
        (0..32).map(|s| Arc::from(format!("sled-{s}"))).collect();
    (0..n)
        .map(|i| {
            let destination = Ipv6Net::new(
                Ipv6Addr::new(
                    0xfd00,
                    (i >> 16) as u16,
                    i as u16,
                    0,
                    0,
                    0,
                    0,
                    0,
                ),
                64,
            )
            .expect("64 is a valid length");
            let names: Names = Arc::new(Box::new([
                Arc::clone(&sleds[i as usize % 32]),
                Arc::clone(&switch),
            ]));
            OutPath::new(destination, names, None)
        })
        .collect()
}

/// An update announcing `announce` and withdrawing `withdraw`.
fn update(
    announce: BTreeSet<OutPath>,
    withdraw: BTreeSet<OutPath>,
) -> OutUpdate {
    OutUpdate {
        underlay: Some(OutUnderlay {
            announce,
            withdraw,
            held: BTreeSet::new(),
        }),
        tunnel: None,
    }
}

fn run(kind: RouterKind, peers: u16, n: u32) {
    let mut rib = Rib::new("bench", kind);
    for p in 1..=peers {
        rib.peer_up(peer(p), RouterKind::Server);
    }
    trim();
    println!("{kind} with {peers} peers: empty RIB, {}", rss());
    // Built before the clock starts.
    let announce = update(paths(n), BTreeSet::new());

    let start = Instant::now();
    let e = match rib.import(peer(1), announce) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("import failed: {err}");
            return;
        }
    };
    let t = start.elapsed();
    let pushed: usize = e
        .pushes
        .iter()
        .map(|(_, u)| u.underlay.as_ref().map_or(0, |u| u.announce.len()))
        .sum();
    println!(
        "  import {n}: {:?}, {} route updates, {pushed} paths pushed, {}",
        t,
        e.route_updates.len(),
        rss()
    );
    drop(e);
    trim();
    println!("  held: {} routes, {}", rib.route_count(), rss());

    let withdraw = update(BTreeSet::new(), paths(n));

    let start = Instant::now();
    let e = match rib.import(peer(1), withdraw) {
        Ok(e) => e,
        Err(err) => {
            eprintln!("withdraw failed: {err}");
            return;
        }
    };
    println!(
        "  withdraw {n}: {:?}, {} route updates, {}",
        start.elapsed(),
        e.route_updates.len(),
        rss()
    );
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000u32);
    run(RouterKind::Server, 1, n);
    run(RouterKind::Transit, 4, n);
}
