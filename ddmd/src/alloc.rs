//! Allocator tuning (glibc only).
//!
//! With glibc's defaults a multi-threaded daemon grows one malloc arena
//! per thread that allocates (tokio's workers, the blocking pool that runs
//! the netlink socket and the store), each keeping its own free space, and
//! the threshold above which a block is given its own mapping rises after
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

/// What startup left mapped of the program's and libraries' files, and
/// the hint for what is mapped later (Linux).
///
/// The kernel maps a file's pages in runs of 16 around each one touched
/// ("fault-around"), and startup (argument parsing, the admin API's
/// description, the runtime) touches code it never runs again: of an
/// admin-only daemon's 8.6 MiB resident, 6.3 MiB were the pages of ddmd's
/// own file and 1.9 MiB libc's and libm's. After startup, every mapping of
/// a file that is not writable is marked for random access (no
/// fault-around: a page is mapped when it is run) and, where the process
/// holds no private copy of any of its pages, its pages are unmapped;
/// they come back from the page cache, one at a time, when run. A
/// mapping with private copies (the relocated, then read-only, data of
/// the program and of each library) keeps its pages: unmapping them would
/// lose the relocations. (On Linux 6.18 the hint did not stop the mapping
/// around: one admin call brought back 3.3 MiB of ddmd's code pages.)
#[cfg(target_os = "linux")]
pub fn shed_startup_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for m in file_mappings(&smaps) {
        let (addr, len) = (m.start as *mut libc::c_void, m.end - m.start);
        // SAFETY: the range is one of this process's file mappings, not
        // writable. MADV_RANDOM is a hint; MADV_DONTNEED on a private file
        // mapping without private copies only drops page-table entries of
        // page-cache pages, which the next access maps again.
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            if m.clean {
                libc::madvise(addr, len, libc::MADV_DONTNEED);
            }
        }
    }
}

/// Nothing to shed on this platform.
#[cfg(not(target_os = "linux"))]
pub fn shed_startup_pages() {}

/// A mapping of a file that the process cannot write.
#[derive(Debug, PartialEq, Eq)]
struct FileMapping {
    start: usize,
    end: usize,
    /// No page of it has a private (copied-on-write) copy.
    clean: bool,
}

/// The read-only private file mappings listed in `/proc/self/smaps` text.
fn file_mappings(smaps: &str) -> Vec<FileMapping> {
    let mut out: Vec<FileMapping> = Vec::new();
    // The mapping whose fields are being read, if it qualifies.
    let mut current: Option<FileMapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            // A mapping's header: range, permissions, offset, device,
            // inode, path.
            let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            out.extend(current.take());
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            if (perms == "r-xp" || perms == "r--p") && path.starts_with('/') {
                current = Some(FileMapping { start, end, clean: false });
            }
        } else if first == "Anonymous:" {
            if let Some(m) = &mut current {
                m.clean = fields.next() == Some("0");
            }
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 08:01 1234    /usr/bin/ddmd
Rss:                 512 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55d0c0b00000-55d0c0c00000 r-xp 00100000 08:01 1234    /usr/bin/ddmd
Rss:                4096 kB
Anonymous:             0 kB
55d0c0c00000-55d0c0c10000 r--p 00200000 08:01 1234    /usr/bin/ddmd
Anonymous:            64 kB
55d0c0c10000-55d0c0c20000 rw-p 00210000 08:01 1234    /usr/bin/ddmd
Anonymous:            64 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0       [heap]
Anonymous:          1024 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0       [vvar]
Anonymous:             0 kB
7f0000002000-7f0000003000 r-xp 00000000 00:00 0
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_file_mappings_and_only_clean_ones_are_dropped() {
        let m = |start, end, clean| FileMapping { start, end, clean };
        assert_eq!(
            file_mappings(SMAPS),
            vec![
                m(0x55d0c0a00000, 0x55d0c0b00000, true),
                m(0x55d0c0b00000, 0x55d0c0c00000, true),
                // Relocated data: hinted, never dropped.
                m(0x55d0c0c00000, 0x55d0c0c10000, false),
            ]
        );
        // No Anonymous line (an older kernel): not known clean.
        let t = "55d0c0a00000-55d0c0b00000 r-xp 0 08:01 1 /x\nRss: 4 kB\n";
        assert_eq!(
            file_mappings(t),
            vec![m(0x55d0c0a00000, 0x55d0c0b00000, false)]
        );
    }
}
