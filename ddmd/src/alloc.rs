//! Allocator tuning (glibc only).
//!
//! With glibc's defaults a multi-threaded daemon grows one malloc arena
//! per thread that allocates (tokio's runtime threads, the blocking pool
//! that runs large netlink batches, the store's thread), each keeping its
//! own free space, and the threshold above which a block is given its own mapping rises after
//! the first large free, so the next large request body or route batch is
//! carved out of an arena and fragments it. Measured on the 100,000-prefix
//! benchmark (README, "Benchmarks"), that made the peak RSS of the transit
//! vary by several MiB from run to run. Here the process keeps one arena
//! and a fixed mmap threshold: large buffers get their own mappings, which
//! go back to the kernel when freed.
//!
//! A value set in the environment (`MALLOC_ARENA_MAX`,
//! `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, glibc's own
//! variables) is left as it is, so the defaults can be compared.

/// Blocks of at least this many bytes get their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 64 << 10;

/// Free space at the top of the heap beyond this is returned at once.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 128 << 10;

/// Apply the tuning; call first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    let unset = |name: &str| std::env::var_os(name).is_none();
    // SAFETY: mallopt only changes allocator parameters; called before
    // any other thread exists.
    unsafe {
        if unset("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        if unset("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
        if unset("MALLOC_TRIM_THRESHOLD_") {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Apply the tuning: nothing to do for this platform's allocator.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
