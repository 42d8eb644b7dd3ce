//! Handing freed heap back to the system.
//!
//! glibc keeps the pages of freed memory; after the large transient
//! structures of a big change (sets of 100,000 paths, their pushes, route
//! batches) that is megabytes kept resident. The actors that free them
//! call here: the admin actor after a change, the router after a large
//! originate or withdrawal (once all its parts are out) and after large
//! imports, the router's worker after a batch, and an exchange actor once
//! it has nothing left to send after [`TRIM_AFTER_BYTES`] of pushes.

/// How many paths or route updates make a batch large enough to hand
/// freed memory back to the system afterwards.
const TRIM_AFTER: usize = 10_000;

/// How many bytes of pushes an exchange actor sends, since it last
/// trimmed, before it trims once nothing is left to send: about 10,000
/// paths (an estimate, at about 100 bytes a path). The router trims after
/// a large change, but its pushes are encoded and freed in the exchange
/// actor, later: without this, an originator that sent 100,000
/// withdrawals kept about 7 MiB of freed heap resident (0.9 MiB in use,
/// measured with glibc's `malloc_stats`).
pub(crate) const TRIM_AFTER_BYTES: u64 = 1 << 20;

/// After a batch of `size` paths or route updates (or a change of as many
/// prefixes, at the admin actor): if it was large, hand free heap pages
/// back to the system (glibc keeps them otherwise).
pub(crate) fn trim_after(size: usize) {
    if size >= TRIM_AFTER {
        trim();
    }
}

/// Hand free heap pages back to the system (glibc keeps them otherwise).
pub(crate) fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
