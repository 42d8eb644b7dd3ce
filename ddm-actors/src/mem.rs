//! Handing freed heap back to the system.
//!
//! glibc keeps the pages of freed memory; after the large transient
//! structures of a big change (sets of 100,000 paths, their pushes, route
//! batches) that is megabytes kept resident. The actors that free them
//! call here: the admin actor after a change, the router after its parts
//! and imports, the router's worker after a batch, an exchange actor once
//! a large run of pushes is sent.

/// How many paths or route updates make a batch large enough to hand
/// freed memory back to the system afterwards.
const TRIM_AFTER: usize = 10_000;

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
