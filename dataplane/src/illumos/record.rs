//! The record of the kernel routes we own, kept under `--data-dir`.
//!
//! The illumos routing socket has no owner mark (Linux has the protocol
//! number), so the routes we own are the ones we recorded before adding
//! them. The record is an append-only file of lines `+ DEST GATEWAY
//! IFINDEX` (written and synced before the adds) and `- DEST GATEWAY
//! IFINDEX` (after the deletes); a start folds it into the set a previous
//! run left. It is rewritten from the live set when it has grown to
//! several times that set. A malformed line is skipped and counted.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
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
    file: File,
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
        match File::open(&path) {
            Ok(f) => {
                for l in BufReader::new(f).lines() {
                    let l = l?;
                    if l.trim().is_empty() {
                        continue;
                    }
                    lines += 1;
                    match parse_line(&l) {
                        Some((true, r)) => {
                            live.insert(r);
                        }
                        Some((false, r)) => {
                            live.remove(&r);
                        }
                        None => bad += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok((RouteRecord { path, file, live, lines, _held: held }, bad))
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
        self.file.write_all(buf.as_bytes())?;
        self.file.sync_data()?;
        self.lines += routes.len();
        Ok(())
    }

    /// Rewrites the file from the live set (atomically: a new file renamed
    /// over the old).
    pub fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = String::with_capacity(self.live.len() * 64);
            for r in &self.live {
                buf.push_str(&line('+', r));
            }
            f.write_all(buf.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.live.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (rec, _) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!(
            rec.routes().iter().copied().collect::<Vec<_>>(),
            vec![r(1, 2), r(3, 3)]
        );
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
        let (rec, _) = RouteRecord::open(dir.path()).unwrap();
        assert_eq!(
            rec.routes().iter().copied().collect::<Vec<_>>(),
            vec![r(0, 1), r(0, 2), r(0, 3)]
        );
    }
}
