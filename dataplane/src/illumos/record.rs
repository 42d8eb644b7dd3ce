//! The record of the kernel routes we own, kept under `--data-dir`.
//!
//! The illumos routing socket has no owner mark (Linux has the protocol
//! number), so the routes we own are the ones we recorded before adding
//! them. The record is an append-only file of lines `+ DEST GATEWAY
//! IFINDEX` (written and synced before the adds) and `- DEST GATEWAY
//! IFINDEX` (after the deletes); a start folds it into the set a previous
//! run left. It is rewritten from the live set when it has grown to
//! several times that set. A malformed line (one not UTF-8 among them) is
//! skipped and counted, as is a last line without its newline (torn by a
//! crash), which the first append then cuts off.
//!
//! Each append is written at the end of what the record has taken so far
//! ([`RouteRecord`]'s `len`), and a failed one (a full disk) is cut off
//! again: a torn line would otherwise join the next one, and lines of a
//! batch that failed would claim routes that never went in.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::rtsock::KernelRoute;

/// The records open in this process, by path: one dataplane at a time may
/// keep a record. A router restarted after a failure builds its dataplane
/// while the failed router's detached worker may still be removing its
/// routes through its own; two handles on one file lost each other's lines
/// (a compaction renames a fresh file over the other's). (Another process
/// is kept out by the data directory's lock, which the store holds.)
static OPEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A path held in [`OPEN`] until dropped.
#[derive(Debug)]
struct Held(PathBuf);

impl Held {
    fn take(path: &Path) -> std::io::Result<Held> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        if !open.insert(path.to_path_buf()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!(
                    "{} is in use by another dataplane of this daemon (a \
                     failed router's, removing its routes)",
                    path.display()
                ),
            ));
        }
        Ok(Held(path.to_path_buf()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        OPEN.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// The record's file name inside the data directory.
pub const FILE_NAME: &str = "ddm-kernel-routes";

/// Lines beyond which (and beyond four times the live set) the file is
/// rewritten.
const COMPACT_MIN_LINES: usize = 4096;

/// The routes we own, durably.
#[derive(Debug)]
pub struct RouteRecord {
    path: PathBuf,
    /// The file, opened for writing at `len` (not in append mode, which
    /// would write past anything a failed append left).
    file: File,
    /// How many bytes of the file hold whole lines: where the next append
    /// goes.
    len: u64,
    /// Whether a failed append may have left bytes past `len` that could
    /// not be cut off then: they are cut off before the next append.
    torn: bool,
    live: BTreeSet<KernelRoute>,
    lines: usize,
    /// This record's claim on its file, within the process.
    _held: Held,
}

fn line(sign: char, r: &KernelRoute) -> String {
    format!("{sign} {} {} {}\n", r.dest, r.gateway, r.ifindex)
}

fn parse_line(l: &str) -> Option<(bool, KernelRoute)> {
    let mut it = l.split_ascii_whitespace();
    let add = match it.next()? {
        "+" => true,
        "-" => false,
        _ => return None,
    };
    let dest = it.next()?.parse().ok()?;
    let gateway = it.next()?.parse().ok()?;
    let ifindex = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((add, KernelRoute { dest, gateway, ifindex }))
}

impl RouteRecord {
    /// Opens (or creates) the record in `dir`. Returns it, the routes it
    /// holds (those a previous run owned and did not remove), and how many
    /// malformed lines were skipped.
    /// Fails (`ResourceBusy`) while another record of this process has
    /// the file open.
    pub fn open(dir: &Path) -> std::io::Result<(RouteRecord, usize)> {
        let path = dir.join(FILE_NAME);
        let held = Held::take(&path)?;
        let mut live = BTreeSet::new();
        let mut bad = 0;
        let mut lines = 0;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        // Bytes of whole lines (ended by a newline): where appends go. A
        // torn last line is cut off before the first append.
        let mut whole = 0u64;
        let mut torn = false;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // A last line torn by a crash: whatever it reads as
                // (`/64` cut to `/6` still parses), not taken.
                bad += 1;
                torn = true;
                break;
            }
            whole += n as u64;
            let Ok(l) = std::str::from_utf8(&line) else {
                bad += 1;
                continue;
            };
            if l.trim().is_empty() {
                continue;
            }
            lines += 1;
            match parse_line(l) {
                Some((true, r)) => {
                    live.insert(r);
                }
                Some((false, r)) => {
                    live.remove(&r);
                }
                None => bad += 1,
            }
        }
        let record = RouteRecord {
            path,
            file,
            len: whole,
            torn,
            live,
            lines,
            _held: held,
        };
        Ok((record, bad))
    }

    /// The routes recorded as ours.
    pub fn routes(&self) -> &BTreeSet<KernelRoute> {
        &self.live
    }

    /// Records `routes` as ours, durably (before they are added).
    pub fn add(&mut self, routes: &[KernelRoute]) -> std::io::Result<()> {
        self.append('+', routes)?;
        self.live.extend(routes.iter().copied());
        Ok(())
    }

    /// Records that `routes` are no longer ours (after they were deleted,
    /// or found to be someone else's).
    pub fn remove(&mut self, routes: &[KernelRoute]) -> std::io::Result<()> {
        self.append('-', routes)?;
        for r in routes {
            self.live.remove(r);
        }
        if self.lines > COMPACT_MIN_LINES && self.lines > 4 * self.live.len() {
            self.compact()?;
        }
        Ok(())
    }

    fn append(
        &mut self,
        sign: char,
        routes: &[KernelRoute],
    ) -> std::io::Result<()> {
        if routes.is_empty() {
            return Ok(());
        }
        let mut buf = String::with_capacity(routes.len() * 64);
        for r in routes {
            buf.push_str(&line(sign, r));
        }
        self.write(buf.as_bytes())?;
        self.lines += routes.len();
        Ok(())
    }

    /// Write `bytes` durably at `len`, and take them in. On failure,
    /// nothing past `len` is kept: what was written is cut off (or, if
    /// that fails too, before the next write).
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        let written = self
            .file
            .write_all_at(bytes, self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            self.torn = self.file.set_len(self.len).is_err();
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Rewrites the file from the live set (atomically: a new file renamed
    /// over the old).
    pub fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut buf = String::with_capacity(self.live.len() * 64);
        for r in &self.live {
            buf.push_str(&line('+', r));
        }
        // Written through the handle kept after the rename, so that the
        // record goes on in the new file whatever happens after it.
        let mut file = File::create(&tmp)?;
        file.write_all(buf.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = file;
        self.len = buf.len() as u64;
        self.torn = false;
        self.lines = self.live.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes the record in `dir` holds, opened afresh.
    fn recorded(dir: &Path) -> Vec<KernelRoute> {
        let (rec, _) = RouteRecord::open(dir).unwrap();
        rec.routes().iter().copied().collect()
    }

    fn r(i: u16, ifindex: u16) -> KernelRoute {
        KernelRoute {
            dest: format!("fd00:{i:x}::/64").parse().unwrap(),
            gateway: "fe80::1".parse().unwrap(),
            ifindex,
        }
    }

    #[test]
    fn one_record_per_file_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = RouteRecord::open(dir.path()).unwrap();
        first.add(&[r(1, 2)]).unwrap();
        let e = RouteRecord::open(dir.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ResourceBusy, "{e}");
        // Another directory is another record.
        let other = tempfile::tempdir().unwrap();
        RouteRecord::open(other.path()).unwrap();
        drop(first);
        let (again, _) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!(again.routes().len(), 1);
    }

    #[test]
    fn survives_a_restart_and_folds_removals() {
        let dir = tempfile::tempdir().unwrap();
        let (mut rec, bad) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!(bad, 0);
        assert!(rec.routes().is_empty());
        rec.add(&[r(1, 2), r(2, 2), r(3, 3)]).unwrap();
        rec.remove(&[r(2, 2)]).unwrap();
        drop(rec);
        assert_eq!(recorded(dir.path()), vec![r(1, 2), r(3, 3)]);
    }

    #[test]
    fn malformed_lines_are_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "+ fd00:1::/64 fe80::1 2\ngarbage\n+ fd00:2::/64 nope 2\n\
             * fd00:3::/64 fe80::1 2\n+ fd00:4::/64 fe80::1 99999\n",
        )
        .unwrap();
        let (rec, bad) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!(bad, 4);
        assert_eq!(rec.routes().len(), 1);
    }

    #[test]
    fn compaction_keeps_the_live_set() {
        let dir = tempfile::tempdir().unwrap();
        let (mut rec, _) = RouteRecord::open(dir.path()).unwrap();
        for round in 0..3u16 {
            let batch: Vec<_> = (0..2000).map(|i| r(i, round + 1)).collect();
            rec.add(&batch).unwrap();
            rec.remove(&batch[1..]).unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.lines().count() < 6000, "compacted");
        drop(rec);
        assert_eq!(recorded(dir.path()), vec![r(0, 1), r(0, 2), r(0, 3)]);
    }

    #[test]
    fn a_line_not_utf8_is_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut text =
            b"+ fd00:1::/64 fe80::1 2\n+ fd00:2::/64 fe80::1 2\xff\n".to_vec();
        text.extend_from_slice(b"+ fd00:3::/64 fe80::1 2\n");
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let (rec, bad) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(
            rec.routes().iter().copied().collect::<Vec<_>>(),
            vec![r(1, 2), r(3, 2)]
        );
    }

    #[test]
    fn a_line_torn_by_a_crash_does_not_swallow_the_next() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            // Torn from `... 12`: it parses, as ifindex 1.
            "+ fd00:1::/64 fe80::1 2\n+ fd00:9::/64 fe80::1 1",
        )
        .unwrap();
        let (mut rec, bad) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!(bad, 1);
        rec.add(&[r(2, 2)]).unwrap();
        drop(rec);
        assert_eq!(recorded(dir.path()), vec![r(1, 2), r(2, 2)]);
    }

    /// An append that fails (the disk full) leaves nothing behind: what
    /// it wrote is cut off, at once or before the next append.
    #[test]
    fn a_failed_append_leaves_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let (mut rec, _) = RouteRecord::open(dir.path()).unwrap();
        rec.add(&[r(1, 2)]).unwrap();
        // A write that fails and cannot be cut off either.
        let real = std::mem::replace(
            &mut rec.file,
            OpenOptions::new().write(true).open("/dev/full").unwrap(),
        );
        let e = rec.add(&[r(2, 2)]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        assert!(rec.torn);
        assert_eq!(rec.routes().len(), 1, "not taken in");
        // Meanwhile part of it reached the file, torn mid-batch.
        rec.file = real;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"+ fd00:2::/64 fe80::1 2\n+ fd00:3::/6").unwrap();
        rec.remove(&[r(1, 2)]).unwrap();
        assert!(!rec.torn);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "+ fd00:1::/64 fe80::1 2\n- fd00:1::/64 fe80::1 2\n"
        );
        drop(rec);
        let (rec, bad) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!((rec.routes().len(), bad), (0, 0));
    }
}
