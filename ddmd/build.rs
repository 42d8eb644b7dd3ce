//! Link ddmd's code in the order `text-order.txt` gives (release builds
//! for x86_64 Linux, where rustc links with LLD): the functions a running
//! daemon executes first, hottest first, then the rest. The kernel maps a
//! program's code in runs of 16 pages around each page touched, so code
//! that runs together should sit together: scattered over the whole text,
//! a daemon's few megabytes of live code keep most of it resident.
//! `scripts/text-order.sh` writes the file from what release daemons
//! executed in the fabric benchmark; names it no longer finds (code that
//! changed since) are skipped, so a stale file costs memory, never a build.
//! `DDMD_TEXT_ORDER=0` links in the compiler's order.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=text-order.txt");
    println!("cargo:rerun-if-env-changed=DDMD_TEXT_ORDER");
    let target = env::var("TARGET").unwrap_or_default();
    let profile = env::var("PROFILE").unwrap_or_default();
    let wanted = env::var("DDMD_TEXT_ORDER").map_or(true, |v| v != "0");
    if !wanted || profile != "release" || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let order = Path::new(&dir).join("text-order.txt");
    if !order.exists() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=ddmd=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=ddmd=-Wl,--no-warn-symbol-ordering");
}
