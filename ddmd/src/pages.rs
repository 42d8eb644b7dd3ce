//! Pages of the program's and its libraries' files that startup left
//! mapped (Linux): dropped once the daemon is started.

/// What startup left mapped of the program's and libraries' files, and
/// the hint for what is mapped later (Linux).
///
/// The kernel maps a file's pages in runs of 16 around each one touched
/// ("fault-around"), and startup (argument parsing, the admin API's
/// description, the runtime) touches code it never runs again: of an
/// admin-only daemon's 8.6 MiB resident, 6.3 MiB were the pages of ddmd's
/// own file and 1.9 MiB libc's and libm's. After startup, every mapping of
/// a file that is not writable is marked for random access (a hint
/// against fault-around) and, where the process holds no private copy of
/// any of its pages, resident or swapped out, its pages are unmapped;
/// they come back from the page cache when run. A
/// mapping with private copies (the relocated, then read-only, data of
/// the program and of each library) keeps its pages: unmapping them would
/// lose the relocations. (On Linux 6.18 the hint did not stop the mapping
/// around: one admin call brought back 3.3 MiB of ddmd's code pages.)
///
/// Only the files mapped when `main` began ([`note_startup_files`]) are
/// touched: the program and the libraries it was linked with, which stay
/// mapped at the same addresses for the life of the process (a library
/// opened later could be closed and its range reused while this runs).
#[cfg(target_os = "linux")]
pub fn shed_startup_pages() {
    let Some(startup) = STARTUP_FILES.get() else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for m in read_only_mappings(&smaps) {
        if startup.binary_search(&m.path).is_err() {
            continue;
        }
        let (addr, len) = (m.start as *mut libc::c_void, m.end - m.start);
        // SAFETY: the range is a read-only private mapping of a file
        // mapped since the process began, which stays mapped. MADV_RANDOM
        // is a hint; MADV_DONTNEED on a private file mapping with no
        // private copy, resident or swapped, only drops page-table entries
        // of page-cache pages, which the next access maps again.
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            if m.clean() {
                libc::madvise(addr, len, libc::MADV_DONTNEED);
            }
        }
    }
}

/// Nothing to shed on this platform.
#[cfg(not(target_os = "linux"))]
pub fn shed_startup_pages() {}

/// The files mapped when `main` began (see [`shed_startup_pages`]).
#[cfg(target_os = "linux")]
static STARTUP_FILES: std::sync::OnceLock<Vec<String>> =
    std::sync::OnceLock::new();

/// Note the files mapped now; call first thing in `main`, before any
/// thread starts (or any library is opened).
#[cfg(target_os = "linux")]
pub fn note_startup_files() {
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        let mut files: Vec<String> =
            maps.lines().filter_map(header).map(|h| h.path).collect();
        files.sort();
        files.dedup();
        let _ = STARTUP_FILES.set(files);
    }
}

/// Nothing to note on this platform.
#[cfg(not(target_os = "linux"))]
pub fn note_startup_files() {}

/// A mapping of a file, as `/proc/self/maps` and `smaps` list it.
#[cfg(target_os = "linux")]
#[derive(Debug, PartialEq, Eq)]
struct FileMapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    /// Private (copied-on-write) copies of its pages, resident and
    /// swapped out, in kB (`None`: not listed).
    anonymous: Option<u64>,
    swap: Option<u64>,
}

#[cfg(target_os = "linux")]
impl FileMapping {
    /// Every page is the file's, unchanged: none has a private copy,
    /// resident or swapped out.
    fn clean(&self) -> bool {
        self.anonymous == Some(0) && self.swap == Some(0)
    }
}

/// The mapping a header line describes (range, permissions, offset,
/// device, inode, path), if it maps a file.
#[cfg(target_os = "linux")]
fn header(line: &str) -> Option<FileMapping> {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        f
    };
    let (a, b) = field().split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    let perms = field().to_string();
    let _ = (field(), field(), field());
    let path = rest.trim();
    path.starts_with('/').then(|| FileMapping {
        start,
        end,
        perms,
        path: path.to_string(),
        anonymous: None,
        swap: None,
    })
}

/// The read-only private file mappings listed in `/proc/self/smaps` text.
#[cfg(target_os = "linux")]
fn read_only_mappings(smaps: &str) -> Vec<FileMapping> {
    let mut out: Vec<FileMapping> = Vec::new();
    // The file mapping whose fields are being read.
    let mut current: Option<FileMapping> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let kb = |f: Option<&str>| f.and_then(|v| v.parse().ok());
        match fields.next() {
            Some("Anonymous:") => {
                if let Some(m) = &mut current {
                    m.anonymous = kb(fields.next());
                }
            }
            Some("Swap:") => {
                if let Some(m) = &mut current {
                    m.swap = kb(fields.next());
                }
            }
            Some(f) if f.contains('-') && !f.ends_with(':') => {
                out.extend(current.take());
                current = header(line);
            }
            _ => {}
        }
    }
    out.extend(current);
    out.retain(|m| m.perms == "r-xp" || m.perms == "r--p");
    out
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 08:01 1234    /usr/bin/ddmd
Rss:                 512 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me
55d0c0b00000-55d0c0c00000 r-xp 00100000 08:01 1234    /usr/bin/ddmd
Rss:                4096 kB
Anonymous:             0 kB
Swap:                  0 kB
55d0c0c00000-55d0c0c10000 r--p 00200000 08:01 1234    /usr/bin/ddmd
Anonymous:            64 kB
Swap:                  0 kB
55d0c0c10000-55d0c0c20000 rw-p 00210000 08:01 1234    /usr/bin/ddmd
Anonymous:            64 kB
Swap:                  0 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0       [heap]
Anonymous:          1024 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0       [vvar]
Anonymous:             0 kB
7f0000002000-7f0000003000 r-xp 00000000 00:00 0
Anonymous:             0 kB
7f0000004000-7f0000005000 r--p 00001000 08:01 99      /lib/my lib.so
Anonymous:             0 kB
Swap:                  4 kB
";

    #[test]
    fn only_read_only_file_mappings_and_only_clean_ones_are_dropped() {
        let got = read_only_mappings(SMAPS);
        let seen: Vec<_> = got
            .iter()
            .map(|m| (m.start, m.end, m.path.as_str(), m.clean()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (0x55d0c0a00000, 0x55d0c0b00000, "/usr/bin/ddmd", true),
                (0x55d0c0b00000, 0x55d0c0c00000, "/usr/bin/ddmd", true),
                // Relocated data: hinted, never dropped.
                (0x55d0c0c00000, 0x55d0c0c10000, "/usr/bin/ddmd", false),
                // A private copy swapped out: never dropped either.
                (0x7f0000004000, 0x7f0000005000, "/lib/my lib.so", false),
            ]
        );
        // No Anonymous or Swap line (an older kernel): not known clean.
        let t = "55d0c0a00000-55d0c0b00000 r-xp 0 08:01 1 /x\nRss: 4 kB\n";
        assert!(read_only_mappings(t).iter().all(|m| !m.clean()));
        assert_eq!(read_only_mappings(t).len(), 1);
    }
}
