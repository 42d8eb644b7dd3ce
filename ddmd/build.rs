//! Link ddmd's code in the order `text-order.txt` gives (release builds
//! for x86_64-unknown-linux-gnu linked by rustc's own LLD, the default
//! since Rust 1.90): what an idle daemon runs to answer admin calls, then
//! what running daemons run, hottest first, then what runs only at
//! startup. The kernel maps a program's code in runs of 16 pages around
//! each page touched, so code that runs together should sit together:
//! scattered over the whole text, a daemon's few megabytes of live code
//! keep most of it resident. `scripts/text-order.sh` writes the file from
//! what release daemons executed; names the linker no longer finds (code
//! that changed since) are skipped, so a stale file costs memory, never a
//! build. `DDMD_TEXT_ORDER=0` links in the compiler's order, as does any
//! other linker (GNU ld and mold have no `--symbol-ordering-file`).

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=text-order.txt");
    println!("cargo:rerun-if-env-changed=DDMD_TEXT_ORDER");
    println!(
        "cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER"
    );
    let target = env::var("TARGET").unwrap_or_default();
    let profile = env::var("PROFILE").unwrap_or_default();
    let wanted = env::var("DDMD_TEXT_ORDER").map_or(true, |v| v != "0");
    if !wanted || profile != "release" || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    if !links_with_rust_lld() {
        println!(
            "cargo:warning=ddmd links in the compiler's order: the linker \
             may not be rustc's LLD (text-order.txt needs \
             --symbol-ordering-file)"
        );
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

/// Whether rustc links this target with its own LLD: Rust 1.90 or later,
/// and no linker chosen by the configuration or the flags (Cargo resolves
/// a configured linker, from the environment or a config file, into
/// `RUSTC_LINKER`).
fn links_with_rust_lld() -> bool {
    let chosen = env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| {
            ["linker", "fuse-ld", "link-self-contained"]
                .iter()
                .any(|k| f.contains(k))
        });
    if chosen {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (...)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
