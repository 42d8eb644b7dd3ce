//! Allocator tuning (glibc only), and where large blocks come from.
//!
//! With glibc's defaults a multi-threaded daemon grows one malloc arena
//! per thread that allocates (tokio's runtime threads, the blocking pool
//! that runs large netlink batches, the store's thread), each keeping its
//! own free space, and the threshold above which a block is given its own mapping rises after
//! the first large free, so the next large request body or route batch is
//! carved out of an arena and fragments it. Measured on the 100,000-prefix
//! benchmark (README, "Benchmarks"), that made the peak RSS of the transit
//! vary by several MiB from run to run. Here the process keeps one arena
//! and a fixed mmap threshold.
//!
//! Even so, glibc gives a large block its own mapping only when no free
//! space in the heap fits it, and grows a block in place while the space
//! after it is free: a request body or prefix list grown by doubling
//! stayed in the heap, re-faulting pages an earlier trim had released, in
//! some runs and not others. So every block of [`LARGE`] bytes or more is
//! mapped by [`Allocator`] itself, grown with `mremap`, and unmapped when
//! freed, whatever the heap holds; smaller ones are glibc's.
//!
//! A value set in the environment (`MALLOC_ARENA_MAX`,
//! `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, glibc's own
//! variables) is left as it is, so the defaults can be compared. (Large
//! blocks then still bypass glibc, and tools that trace `malloc`, such as
//! heaptrack, do not see them.)

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

/// Blocks of at least this many bytes are mapped by [`Allocator`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const LARGE: usize = 64 << 10;

/// The global allocator: glibc's (through [`std::alloc::System`]) for
/// blocks under [`LARGE`] bytes, an anonymous mapping of its own for each
/// larger one (aligned to a page, at least 4 KiB, so alignments up to
/// that are met; a larger alignment goes to glibc). Which path a block
/// took follows from its layout alone, which Rust hands back on every
/// free and resize.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub struct Allocator;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl Allocator {
    fn is_large(size: usize, align: usize) -> bool {
        size >= LARGE && align <= 4096
    }

    /// A fresh, zeroed mapping of `size` bytes, or null.
    fn map(size: usize) -> *mut u8 {
        // SAFETY: an anonymous private mapping at an address the kernel
        // picks touches no existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }
}

// SAFETY: small blocks are glibc's, with the caller's guarantees passed
// on; a large block is a mapping of at least its size, page aligned
// (which meets its alignment, checked in `is_large`), unmapped only by
// `dealloc` or moved only by `realloc`, with the layout it was made with.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Self::is_large(layout.size(), layout.align()) {
            Self::map(layout.size())
        } else {
            // SAFETY: the caller's guarantees, passed on.
            unsafe { std::alloc::System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Self::is_large(layout.size(), layout.align()) {
            // A new anonymous mapping reads as zeroes.
            Self::map(layout.size())
        } else {
            // SAFETY: the caller's guarantees, passed on.
            unsafe { std::alloc::System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if Self::is_large(layout.size(), layout.align()) {
            // SAFETY: `ptr` is a mapping `alloc` or `realloc` made of
            // this size (the caller passes the layout it was made with).
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: the caller's guarantees, passed on.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(
        &self,
        ptr: *mut u8,
        layout: std::alloc::Layout,
        new_size: usize,
    ) -> *mut u8 {
        let align = layout.align();
        match (
            Self::is_large(layout.size(), align),
            Self::is_large(new_size, align),
        ) {
            // SAFETY: the caller's guarantees, passed on.
            (false, false) => unsafe {
                std::alloc::System.realloc(ptr, layout, new_size)
            },
            (true, true) => {
                // SAFETY: `ptr` is a mapping of `layout.size()` bytes;
                // the kernel moves it (its pages, not a copy) if it
                // cannot grow in place.
                let p = unsafe {
                    libc::mremap(
                        ptr.cast(),
                        layout.size(),
                        new_size,
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if p == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // SAFETY: `new_size` is not zero (the caller's guarantee)
                // and `align` is a layout's.
                let new = unsafe {
                    std::alloc::Layout::from_size_align_unchecked(
                        new_size, align,
                    )
                };
                // SAFETY: a new block of the new layout; the old one is
                // copied (as much as both hold) and freed only if it was
                // made.
                unsafe {
                    let q = self.alloc(new);
                    if !q.is_null() {
                        std::ptr::copy_nonoverlapping(
                            ptr,
                            q,
                            layout.size().min(new_size),
                        );
                        self.dealloc(ptr, layout);
                    }
                    q
                }
            }
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::{Allocator, LARGE};

    /// Contents survive every resize across the large-block boundary,
    /// both ways (glibc's block to a mapping, a mapping grown and shrunk
    /// in place or moved, a mapping back to glibc's block), and a large
    /// block is page aligned and zeroed when asked.
    #[test]
    fn blocks_keep_their_contents_across_the_boundary() {
        let a = Allocator;
        let fill = |p: *mut u8, n: usize| {
            for i in 0..n {
                // SAFETY: `p` holds at least `n` bytes.
                unsafe { *p.add(i) = (i % 251) as u8 };
            }
        };
        let check = |p: *mut u8, n: usize| {
            (0..n).all(|i| unsafe { *p.add(i) } == (i % 251) as u8)
        };
        let sizes = [100, LARGE - 1, LARGE, 3 * LARGE + 5, 40 << 20, 200];
        let layout = Layout::from_size_align(sizes[0], 8).unwrap();
        // SAFETY: a non-zero layout; every resize passes the layout the
        // block was made with.
        unsafe {
            let mut p = a.alloc(layout);
            let mut old = layout;
            fill(p, old.size());
            for &n in &sizes[1..] {
                p = a.realloc(p, old, n);
                assert!(!p.is_null());
                assert!(check(p, old.size().min(n)), "{} -> {n}", old.size());
                if n >= LARGE {
                    assert_eq!(p as usize % 4096, 0, "{n} bytes: a mapping");
                }
                old = Layout::from_size_align(n, 8).unwrap();
                fill(p, n);
            }
            a.dealloc(p, old);
            let big = Layout::from_size_align(LARGE, 4096).unwrap();
            let z = a.alloc_zeroed(big);
            assert_eq!(z as usize % 4096, 0);
            assert!((0..LARGE).all(|i| *z.add(i) == 0));
            a.dealloc(z, big);
        }
    }
}
