//! The durable store of what this router originates.
//!
//! Originated prefixes and tunnel endpoints are operator configuration: they
//! must survive a restart and a SIGKILL at any moment. They live in a redb
//! database at `<data-dir>/ddmdb`; every change is one write transaction,
//! committed with immediate durability (fsync) before the admin API answers
//! 204, so anything acknowledged is on disk.
//!
//! redb calls block on file I/O, so on a file every operation the admin
//! actor awaits ([`Store::apply_async`], [`Store::rewrite_async`],
//! [`Store::load_async`]) runs on a thread of the store's own (see
//! [`on_store_thread`]), without stalling the actor's runtime thread.
//!
//! [`Store::in_memory`] keeps the database in memory (a sparse image of
//! the file: only pages written with data are held), for tests and simulations with no file system: its
//! operations never block on I/O, so they run inline, and a simulation on
//! a single-threaded runtime drives them deterministically.
//!
//! # Faults
//!
//! A write can fail because the data directory is full (`ENOSPC`, `EDQUOT`:
//! [`StoreError::NoSpace`]), because its file system went read-only
//! (`EROFS`, as one does after errors: [`StoreError::ReadOnly`]), or for
//! another I/O reason ([`StoreError::Io`]). A database already there is
//! read from a copy when it cannot be opened for the first two (at a start,
//! or an admin actor's restart), so the daemon goes on originating what it
//! holds.
//! A redb database that met an I/O error refuses every later operation
//! ("Previous I/O error occurred"), so after a failed write the store closes
//! the database, and the next write reopens it (redb recovers the file to
//! its last commit) before trying again: once space returns, writes succeed
//! without a restart. A failed transaction is never half-applied: redb
//! commits atomically, so the file holds either all of a change or none.
//!
//! The file is reached through [`FaultyFile`], a thin wrapper around redb's
//! file backend whose [`Faults`] switch lets a test make writes fail with a
//! chosen `errno` and then succeed again.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ddm_admin_api::latest::TunnelOrigin;
use ddm_types::text;
use oxnet::Ipv6Net;
use redb::backends::{FileBackend, InMemoryBackend};
use redb::{
    BackendError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageBackend, TableDefinition,
};

/// Originated underlay prefixes, keyed by their text form (`fd00:1::/64`).
const PREFIXES: TableDefinition<&str, ()> = TableDefinition::new("prefixes");
/// Originated tunnel endpoints, keyed by their canonical JSON.
const TUNNELS: TableDefinition<&str, ()> = TableDefinition::new("tunnels");

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "ddmdb";

/// The file name of the database where [`DB_FILE`] is a directory: the
/// original daemon's store (a sled database is a directory, and the
/// original keeps it at the same name), which this daemon cannot read and
/// leaves alone.
pub const DB_FILE_BESIDE_ORIGINAL: &str = "ddmdb.redb";

/// Where the database is in `data_dir`: [`DB_FILE`], unless the original
/// daemon's store is there (a directory), or was and ours stayed beside
/// it when it went ([`DB_FILE_BESIDE_ORIGINAL`], once made, is kept).
pub fn db_path(data_dir: &Path) -> PathBuf {
    let usual = data_dir.join(DB_FILE);
    let beside = data_dir.join(DB_FILE_BESIDE_ORIGINAL);
    match std::fs::metadata(&usual) {
        Ok(meta) if meta.is_dir() => beside,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && beside.exists() =>
        {
            beside
        }
        _ => usual,
    }
}

/// Length of redb's magic number, at the start of every database file.
const MAGIC_LEN: usize = 9;

/// redb's first page, which holds its header (and nothing else of a new
/// database).
const HEADER_PAGE: u64 = 4096;

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory is missing or not a directory.
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, String),
    /// The database could not be opened or created.
    #[error("cannot open store {0}: {1}")]
    Open(PathBuf, String),
    /// The data directory (first field) has no space left, or the quota
    /// is exhausted; the second field is the cause.
    #[error(
        "data directory {0} is full ({1}); the change was not made: free \
         space there and retry"
    )]
    NoSpace(PathBuf, String),
    /// The data directory (first field) is on a read-only file system;
    /// the second field is the cause.
    #[error(
        "data directory {0} is read-only ({1}); the change was not made: \
         make it writable and retry"
    )]
    ReadOnly(PathBuf, String),
    /// A read or write failed for another reason.
    #[error("store {0} failed: {1}; the change was not made")]
    Io(PathBuf, String),
    /// An entry on disk could not be parsed: loading fails, naming it, so
    /// the daemon does not start announcing less than was acknowledged
    /// (the entry is left on disk for the operator to mend or remove).
    #[error("store {0} holds an unreadable entry {1:?}")]
    Corrupt(PathBuf, String),
}

impl StoreError {
    /// True when the failure is a lack of space (answered 507); other
    /// failures are answered 503.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::NoSpace(..))
    }

    /// True when the data directory takes no writes for now (full, or
    /// read-only): a database already there is then read from a copy.
    pub fn is_unwritable(&self) -> bool {
        matches!(self, StoreError::NoSpace(..) | StoreError::ReadOnly(..))
    }

    /// This failure met opening the store at `path`, where no change was
    /// asked for (the write errors' text says one was not made).
    fn at_open(self, path: &Path) -> StoreError {
        let cause = match self {
            StoreError::NoSpace(dir, cause) => {
                format!("data directory {} is full ({cause})", dir.display())
            }
            StoreError::ReadOnly(dir, cause) => format!(
                "data directory {} is read-only ({cause})",
                dir.display()
            ),
            StoreError::Io(_, cause) => cause,
            e => return e,
        };
        StoreError::Open(path.to_path_buf(), cause)
    }
}

/// A switch that makes the store's file writes fail, for tests. Shared
/// between a test and the [`FaultyFile`] backends the store opens.
#[derive(Debug, Default)]
pub struct Faults {
    /// The `errno` every write, resize and sync fails with; 0 for none.
    errno: AtomicI32,
    /// The `errno` every sync alone fails with (the writes before it
    /// reached the file); 0 for none.
    sync_errno: AtomicI32,
}

impl Faults {
    /// Make every later write, resize and sync fail with `errno`
    /// (e.g. `libc::ENOSPC`); 0 lets them succeed again.
    pub fn fail_writes(&self, errno: i32) {
        self.errno.store(errno, Ordering::SeqCst);
    }

    /// Make every later sync fail with `errno`, writes still succeeding:
    /// a commit reported failed whose pages, header too, are in the file.
    pub fn fail_syncs(&self, errno: i32) {
        self.sync_errno.store(errno, Ordering::SeqCst);
    }

    fn check(&self) -> std::io::Result<()> {
        Self::fail(self.errno.load(Ordering::SeqCst))
    }

    fn check_sync(&self) -> std::io::Result<()> {
        self.check()?;
        Self::fail(self.sync_errno.load(Ordering::SeqCst))
    }

    fn fail(errno: i32) -> std::io::Result<()> {
        match errno {
            0 => Ok(()),
            e => Err(std::io::Error::from_raw_os_error(e)),
        }
    }
}

/// redb's file backend (or a shared in-memory one), with writes that a
/// [`Faults`] switch can make fail. Reads and locks pass straight through.
#[derive(Debug)]
pub struct FaultyFile {
    /// The real backend.
    file: Box<dyn StorageBackend>,
    /// The switch.
    faults: Arc<Faults>,
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.faults.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.faults.check_sync()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.faults.check()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// An in-memory backend the store keeps across reopens (a failed write
/// closes the database; the next one reopens it on the same bytes).
#[derive(Debug, Clone, Default)]
struct SharedMemory(Arc<Mutex<SparseImage>>);

/// Bytes of one page of a [`SparseImage`].
const IMAGE_PAGE: u64 = 4096;

/// A database image in memory holding only the pages written with
/// something other than zeros; the rest reads as zeros.
///
/// redb sizes a new database to its first region's layout at once (about
/// 74 KiB, mostly never written), which its own in-memory backend
/// allocates and zeroes: in the simulated fabric, where every router has
/// a store in memory, that was 40 of the 509 MB of heap at the peak of a
/// 548-router cold start.
#[derive(Debug, Default, Clone)]
struct SparseImage {
    len: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl SparseImage {
    /// The pages `[offset, offset + n)` covers: (page, offset in it,
    /// offset in the caller's buffer, bytes), or an error past the end.
    fn spans(
        &self,
        offset: u64,
        n: usize,
    ) -> std::io::Result<impl Iterator<Item = (u64, usize, usize, usize)>> {
        if offset.checked_add(n as u64).is_none_or(|end| end > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "beyond the end of the in-memory database",
            ));
        }
        let mut done = 0;
        Ok(std::iter::from_fn(move || {
            (done < n).then(|| {
                let at = offset + done as u64;
                let within = (at % IMAGE_PAGE) as usize;
                let k = (IMAGE_PAGE as usize - within).min(n - done);
                done += k;
                (at / IMAGE_PAGE, within, done - k, k)
            })
        }))
    }
}

impl SharedMemory {
    fn image(&self) -> std::sync::MutexGuard<'_, SparseImage> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SharedMemory {
    /// Another image with the same bytes.
    fn copy(&self) -> SharedMemory {
        let image = self.0.lock().unwrap_or_else(|e| e.into_inner());
        SharedMemory(Arc::new(Mutex::new(image.clone())))
    }
}

impl StorageBackend for SharedMemory {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.image().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let image = self.image();
        for (page, within, at, k) in image.spans(offset, out.len())? {
            let to = &mut out[at..at + k];
            match image.pages.get(&page) {
                Some(p) => to.copy_from_slice(&p[within..within + k]),
                None => to.fill(0),
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut image = self.image();
        if len < image.len {
            // Forget what lies past the end, so that growing again reads
            // zeros there.
            image.pages.split_off(&len.div_ceil(IMAGE_PAGE));
            let within = (len % IMAGE_PAGE) as usize;
            if within > 0 {
                if let Some(p) = image.pages.get_mut(&(len / IMAGE_PAGE)) {
                    p[within..].fill(0);
                }
            }
        }
        image.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut image = self.image();
        for (page, within, at, k) in image.spans(offset, data.len())? {
            let from = &data[at..at + k];
            match image.pages.get_mut(&page) {
                Some(p) => p[within..within + k].copy_from_slice(from),
                // Zeros where nothing was written: nothing to keep.
                None if from.iter().all(|b| *b == 0) => {}
                None => {
                    let mut p = vec![0; IMAGE_PAGE as usize].into_boxed_slice();
                    p[within..within + k].copy_from_slice(from);
                    image.pages.insert(page, p);
                }
            }
        }
        Ok(())
    }

    fn close(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the database lives.
#[derive(Clone)]
enum Medium {
    /// A file in the data directory.
    File,
    /// Memory only (tests, simulations).
    Memory(SharedMemory),
}

/// Store writes counted by the admin actor (shared, so that the counts
/// survive an admin restart).
#[derive(Debug, Default)]
pub struct StoreCounters {
    commits: AtomicU64,
    failures: AtomicU64,
}

impl StoreCounters {
    /// Count one store write: committed (`true`) or failed.
    pub fn record(&self, committed: bool) {
        let c = if committed { &self.commits } else { &self.failures };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by name.
    pub fn named(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("commits".to_string(), self.commits.load(Ordering::Relaxed)),
            ("failures".to_string(), self.failures.load(Ordering::Relaxed)),
        ])
    }
}

/// The database and what the last write did to it.
struct Inner {
    /// The open database; `None` after a failed write closed it (the next
    /// write reopens it).
    db: Option<redb::Database>,
    /// The failure of the last write, while no write has succeeded since.
    failing: Option<StoreError>,
}

/// A handle to the store; cheap to clone, safe to share with the store's
/// thread, which runs its transactions.
#[derive(Clone)]
pub struct Store {
    /// The database, behind a lock so that a failed write can close it and
    /// the next one reopen it.
    inner: Arc<Mutex<Inner>>,
    /// The data directory, named in errors about space.
    dir: PathBuf,
    /// The database file.
    path: PathBuf,
    /// The fault switch its backends share.
    faults: Arc<Faults>,
    /// File or memory.
    medium: Medium,
    /// The data directory, locked (`flock`) while the store lives: redb's
    /// own lock on the file goes while the database is closed (after a
    /// failed write, or from a start on a full disk), and a second daemon
    /// on the directory would start then.
    _dir_lock: Option<Arc<std::fs::File>>,
}

/// Lock `dir` for this process (`flock`, exclusive, not waiting): taking
/// it needs no free space.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::fd::AsRawFd;
    let failed = |e: std::io::Error| {
        StoreError::DataDir(dir.to_path_buf(), e.to_string())
    };
    let file = std::fs::File::open(dir).map_err(failed)?;
    // SAFETY: flock on a descriptor this function owns.
    let rc =
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
            StoreError::DataDir(
                dir.to_path_buf(),
                "another ddmd uses this data directory".to_string(),
            )
        } else {
            failed(e)
        });
    }
    Ok(file)
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The contents of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Originated {
    /// Originated underlay prefixes.
    pub prefixes: BTreeSet<Ipv6Net>,
    /// Originated tunnel endpoints.
    pub tunnels: BTreeSet<TunnelOrigin>,
}

/// Insert `prefixes` and `tunnels` within `txn`.
fn insert_all(
    txn: &redb::WriteTransaction,
    prefixes: &BTreeSet<Ipv6Net>,
    tunnels: &BTreeSet<TunnelOrigin>,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(PREFIXES)?;
    // Each key is written on the stack (`text::net_text`), not into a
    // new string each.
    for p in prefixes {
        table.insert(text::net_text(p).as_str(), ())?;
    }
    let mut table = txn.open_table(TUNNELS)?;
    for t in tunnels {
        table.insert(tunnel_key(t).as_str(), ())?;
    }
    Ok(())
}

fn tunnel_key(t: &TunnelOrigin) -> String {
    serde_json::to_string(t).expect("a tunnel origin always serialises")
}

/// True for a read-only file system.
fn is_read_only(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EROFS)
        || e.kind() == std::io::ErrorKind::ReadOnlyFilesystem
}

/// True for the `errno`s that mean "no space": a full file system or an
/// exhausted quota.
fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
}

impl Store {
    /// Open (creating if needed) the store in `data_dir` ([`db_path`]).
    /// The directory must exist, and be writable unless it holds a store
    /// already (which is then read from a copy, see the module docs).
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_faults(data_dir, Arc::default())
    }

    /// [`Store::open`] with a fault switch a test holds.
    pub fn open_with_faults(
        data_dir: &Path,
        faults: Arc<Faults>,
    ) -> Result<Store, StoreError> {
        let meta = std::fs::metadata(data_dir).map_err(|e| {
            StoreError::DataDir(data_dir.to_path_buf(), e.to_string())
        })?;
        if !meta.is_dir() {
            return Err(StoreError::DataDir(
                data_dir.to_path_buf(),
                "not a directory".to_string(),
            ));
        }
        let path = db_path(data_dir);
        let dir_lock = lock_dir(data_dir)?;
        let store = Store {
            inner: Arc::new(Mutex::new(Inner { db: None, failing: None })),
            dir: data_dir.to_path_buf(),
            path,
            faults,
            medium: Medium::File,
            _dir_lock: Some(Arc::new(dir_lock)),
        };
        // Asked before the open, which writes a new file's header.
        let existed = !store.never_written();
        // Open the database and create both tables up front, so that
        // reads never meet a missing table, and so that an unwritable
        // directory fails now, not at the first PUT.
        let made = store.write(|txn| {
            txn.open_table(PREFIXES)?;
            txn.open_table(TUNNELS)?;
            Ok(())
        });
        match made {
            Ok(()) => Ok(store),
            // A database there already, on a full disk: start all the
            // same, reading it from a copy (`load`), with writes failing
            // (`write` noted it) until there is room. Refusing to start
            // would stop routing for want of a few kilobytes.
            Err(e) if e.is_unwritable() && existed => Ok(store),
            Err(e) => Err(e.at_open(&store.path)),
        }
    }

    /// A store in memory only: nothing touches a file system, and its
    /// operations run inline (see the module docs). Empty when made.
    pub fn in_memory() -> Store {
        Store::in_memory_with_faults(Arc::default())
    }

    /// [`Store::in_memory`] with a fault switch a test holds.
    pub fn in_memory_with_faults(faults: Arc<Faults>) -> Store {
        let name = PathBuf::from("(memory)");
        let store = Store {
            inner: Arc::new(Mutex::new(Inner { db: None, failing: None })),
            dir: name.clone(),
            path: name,
            faults,
            medium: Medium::Memory(SharedMemory::default()),
            _dir_lock: None,
        };
        // The tables are made lazily by the first write or load if this
        // fails (it cannot, unless the fault switch is already on).
        let _ = store.write(|txn| {
            txn.open_table(PREFIXES)?;
            txn.open_table(TUNNELS)?;
            Ok(())
        });
        store
    }

    /// True when the database is in memory (its operations run inline).
    pub fn is_in_memory(&self) -> bool {
        matches!(self.medium, Medium::Memory(_))
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The failure of the last write, if no write has succeeded since.
    pub fn failing(&self) -> Option<StoreError> {
        self.lock().failing.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves nothing half-done that
        // redb has not already guarded against; carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open the database through the fault-injecting backend. A file
    /// that held no database before ([`Store::never_written`]) is started
    /// afresh, and removed again if making the database in it fails, so
    /// that a first start on a full disk (or killed while it made the
    /// database) does not leave a file no later start can open.
    fn open_db(&self) -> Result<redb::Database, StoreError> {
        let fresh = matches!(self.medium, Medium::File) && self.never_written();
        let file: Box<dyn StorageBackend> = match &self.medium {
            Medium::Memory(m) => Box::new(m.clone()),
            Medium::File => Box::new(self.open_file(fresh)?),
        };
        let backend = FaultyFile { file, faults: self.faults.clone() };
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(backend)
            .map_err(|e| self.classify(e));
        if db.is_err() && fresh {
            let _ = std::fs::remove_file(&self.path);
        }
        db
    }

    /// Whether the database file holds no database: it is missing, or
    /// redb's magic number (its first bytes) is zeros and so is everything
    /// past its first page. redb sizes a new file first, writes its header
    /// (in the first page) without the magic number, syncs, and writes the
    /// magic number last; so a creation that failed (`ENOSPC` once the
    /// size is used) or was killed leaves such a file, which redb refuses
    /// to open ("magic number mismatch"). A store whose magic number
    /// alone was zeroed (damaged) holds entries past its first page: it is
    /// left to redb, which refuses it, rather than emptied. Anything else,
    /// garbage included, is left to redb too. (The rest of the file is
    /// read only while it reads as zeros: a store's second page is not.)
    fn never_written(&self) -> bool {
        use std::io::{Read, Seek};
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return !self.path.exists();
        };
        // The magic number's place: zeros (or less of the file, zeros).
        let mut head = Vec::with_capacity(MAGIC_LEN);
        let read = (&mut file).take(MAGIC_LEN as u64).read_to_end(&mut head);
        if read.is_err() || head.iter().any(|b| *b != 0) {
            return false;
        }
        if file.seek(std::io::SeekFrom::Start(HEADER_PAGE)).is_err() {
            return false;
        }
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) if buf[..n].iter().all(|b| *b == 0) => {}
                Ok(_) => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Open (creating if needed) the database file; `fresh`: emptied
    /// (see [`Store::never_written`]) once redb's lock on it is taken, so
    /// that a file another daemon is making is never touched.
    fn open_file(&self, fresh: bool) -> Result<FileBackend, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| self.classify(redb::Error::Io(e)))?;
        let backend = FileBackend::new(file).map_err(|e| self.classify(e))?;
        if fresh {
            backend
                .set_len(0)
                .map_err(|e| self.classify(redb::Error::Io(e)))?;
        }
        Ok(backend)
    }

    /// Turn a redb error into a [`StoreError`] that says whether space ran
    /// out.
    fn classify(&self, e: impl Into<redb::Error>) -> StoreError {
        match e.into() {
            redb::Error::Io(io) if is_no_space(&io) => {
                StoreError::NoSpace(self.dir.clone(), io.to_string())
            }
            redb::Error::Io(io) if is_read_only(&io) => {
                StoreError::ReadOnly(self.dir.clone(), io.to_string())
            }
            e => StoreError::Io(self.path.clone(), e.to_string()),
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let mut inner = self.lock();
        let result = self.write_locked(&mut inner, f);
        match &result {
            Ok(_) => inner.failing = None,
            Err(e) => {
                // redb refuses everything after an I/O error: close it
                // now so that the next write starts from a fresh open.
                inner.db = None;
                inner.failing = Some(e.clone());
            }
        }
        result
    }

    fn write_locked<T>(
        &self,
        inner: &mut Inner,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        if inner.db.is_none() {
            inner.db = Some(self.open_db()?);
        }
        let db = inner.db.as_ref().expect("opened above");
        let txn = db.begin_write().map_err(|e| self.classify(e))?;
        let out = f(&txn).map_err(|e| self.classify(e))?;
        txn.commit().map_err(|e| self.classify(e))?;
        Ok(out)
    }

    /// Read everything (at start-up, and at an admin actor's restart).
    /// Unparsable entries are reported, not silently dropped.
    pub fn load(&self) -> Result<Originated, StoreError> {
        let mut inner = self.lock();
        if inner.db.is_none() {
            match self.open_db() {
                Ok(db) => inner.db = Some(db),
                Err(e)
                    if e.is_unwritable()
                        && matches!(self.medium, Medium::File)
                        && !self.never_written() =>
                {
                    inner.failing = Some(e);
                    return self.load_written();
                }
                Err(e) => return Err(e),
            }
        }
        let db = inner.db.as_ref().expect("opened above");
        let txn = db.begin_read().map_err(|e| self.classify(e))?;
        self.read_all(&txn)
    }

    /// What the store holds as written, read from a copy in memory: where
    /// redb cannot open the file in place for want of room to write (and
    /// repair it, after a kill), and after a write that failed, when the
    /// database is closed and reopening it in place needs a write that
    /// may keep failing.
    pub fn load_written(&self) -> Result<Originated, StoreError> {
        let io = |e: std::io::Error| self.classify(redb::Error::Io(e));
        let copy: Box<dyn StorageBackend> = match &self.medium {
            Medium::File => {
                let bytes = std::fs::read(&self.path).map_err(io)?;
                let copy = InMemoryBackend::new();
                copy.set_len(bytes.len() as u64).map_err(io)?;
                copy.write(0, &bytes).map_err(io)?;
                Box::new(copy)
            }
            Medium::Memory(m) => Box::new(m.copy()),
        };
        let backend = FaultyFile { file: copy, faults: Arc::default() };
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .map_err(|e| self.classify(e))?;
        let txn = db.begin_read().map_err(|e| self.classify(e))?;
        self.read_all(&txn)
    }

    /// Every prefix and tunnel endpoint `txn` sees.
    fn read_all(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<Originated, StoreError> {
        let mut out = Originated::default();
        let prefixes =
            txn.open_table(PREFIXES).map_err(|e| self.classify(e))?;
        for entry in prefixes.iter().map_err(|e| self.classify(e))? {
            let (k, _) = entry.map_err(|e| self.classify(e))?;
            let k = k.value();
            let p = text::parse_net(k).map_err(|_| {
                StoreError::Corrupt(self.path.clone(), k.to_string())
            })?;
            out.prefixes.insert(p);
        }
        let tunnels = txn.open_table(TUNNELS).map_err(|e| self.classify(e))?;
        for entry in tunnels.iter().map_err(|e| self.classify(e))? {
            let (k, _) = entry.map_err(|e| self.classify(e))?;
            let k = k.value();
            let t = serde_json::from_str(k).map_err(|_| {
                StoreError::Corrupt(self.path.clone(), k.to_string())
            })?;
            out.tunnels.insert(t);
        }
        Ok(out)
    }

    /// Add and remove prefixes and tunnel endpoints in one durable
    /// transaction.
    pub fn apply(&self, change: &StoreChange) -> Result<(), StoreError> {
        self.write(|txn| {
            insert_all(txn, &change.add_prefixes, &change.add_tunnels)?;
            let mut prefixes = txn.open_table(PREFIXES)?;
            let remove = &change.remove_prefixes;
            if remove.len() as u64 * REMOVE_BY_SCAN >= prefixes.len()? {
                // A large share of the table: one pass over it (100,000 of
                // 100,000: about 90 ms rather than 165 key by key). A key
                // that does not parse is kept (`load` reports it).
                prefixes.retain(|k, ()| {
                    text::parse_net(k).map_or(true, |p| !remove.contains(&p))
                })?;
            } else {
                for p in remove {
                    prefixes.remove(text::net_text(p).as_str())?;
                }
            }
            let mut tunnels = txn.open_table(TUNNELS)?;
            for t in &change.remove_tunnels {
                tunnels.remove(tunnel_key(t).as_str())?;
            }
            Ok(())
        })
    }

    /// Make the store hold exactly `all`, every entry written afresh in
    /// one durable transaction: both tables are dropped and filled again,
    /// so no entry of theirs is read from a page an earlier commit wrote.
    /// After a failed sync, pages the file shows need not be on disk
    /// (Linux marks them clean), and a commit that changes only what
    /// differs from them could leave entries on such pages; this one
    /// leaves none. (redb's own bookkeeping of free pages is not
    /// rewritten.)
    pub fn rewrite(&self, all: &Originated) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.delete_table(PREFIXES)?;
            txn.delete_table(TUNNELS)?;
            insert_all(txn, &all.prefixes, &all.tunnels)
        })
    }

    /// [`Store::rewrite`] for an actor, as [`Store::apply_async`].
    pub async fn rewrite_async(
        &self,
        all: Arc<Originated>,
    ) -> Result<(), StoreError> {
        self.off_thread(move |store| store.rewrite(&all)).await
    }

    /// [`Store::apply`] for an actor: on the store's thread for a file,
    /// inline for memory. The change is shared with the caller, not copied.
    pub async fn apply_async(
        &self,
        change: Arc<StoreChange>,
    ) -> Result<(), StoreError> {
        self.off_thread(move |store| store.apply(&change)).await
    }

    /// [`Store::load`] for an actor: on the store's thread for a file,
    /// inline for memory.
    pub async fn load_async(&self) -> Result<Originated, StoreError> {
        self.off_thread(|store| store.load()).await
    }

    /// Run `f` where it may block: the store's thread for a file, here for
    /// memory (which never blocks on I/O, and so stays deterministic on a
    /// single-threaded runtime).
    async fn off_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.is_in_memory() {
            return f(self);
        }
        let store = self.clone();
        on_store_thread(move || f(&store)).await.map_err(|e| {
            StoreError::Io(self.path.clone(), format!("store task failed: {e}"))
        })?
    }
}

/// A job for the store's thread.
type Job = Box<dyn FnOnce() + Send>;

/// Run `f` on the process's store thread (started by the first call, or
/// again by the next one if it could not be) and wait for it without
/// blocking the runtime; a panic of `f` is an error, not the thread's end.
///
/// Not tokio's blocking pool: a pool thread woken for a write had slept
/// long, so the kernel let it preempt the runtime thread that woke it, on
/// that thread's own CPU (the other stayed idle: the preempted thread was
/// too recently run to be moved), and the write's `fsync` then stood
/// between the router and the fabric. At the fabric benchmark's
/// originator, after an idle pause, a prefix's push to the transit waited
/// 0.28 ms for the write that way (`perf sched timehist`: the runtime
/// thread switched out runnable, the other CPU idle). This thread runs as
/// `SCHED_BATCH` on Linux, which is never let preempt on waking: it takes
/// an idle CPU, or its turn at the next tick.
///
/// Unlike a blocking-pool task, a job here does not hold back a paused
/// clock (tokio's test utilities): a test on paused time that waits for
/// a write uses a store in memory, which runs inline.
async fn on_store_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, outcome) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = done.send(out.map_err(|_| "panicked".to_string()));
    });
    send_job(job, true)?;
    outcome.await.map_err(|_| GONE.to_string())?
}

/// What the store's thread is sent, once started.
static JOBS: Mutex<Option<std::sync::mpsc::Sender<Job>>> = Mutex::new(None);

/// Why a job could not be sent or answered.
const GONE: &str = "the store thread is gone";

/// Send `job` to the store's thread, starting the thread first if it is
/// not running and `start`; whether it was sent (not: no thread, none
/// started).
fn send_job(job: Job, start: bool) -> Result<bool, String> {
    let mut jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let sender = match &mut *jobs {
        Some(sender) => sender,
        None if !start => return Ok(false),
        none => none.insert(start_store_thread()?),
    };
    sender.send(job).map_err(|_| GONE.to_string())?;
    Ok(true)
}

/// Wait, at most `limit`, until the store's thread has finished the jobs
/// sent so far (a write under way when the daemon stopped): the process
/// exits without waiting for that thread, and a database still open then
/// is recovered at the next start. Whether they finished in time.
pub fn wait_for_store_jobs(limit: std::time::Duration) -> bool {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    match send_job(Box::new(move || done.send(()).unwrap_or(())), false) {
        Ok(true) => finished.recv_timeout(limit).is_ok(),
        // Never started, or gone: nothing is under way.
        Ok(false) | Err(_) => true,
    }
}

/// Start the store's thread: it runs jobs in order, for the process's
/// life (it waits for the next job once idle).
fn start_store_thread() -> Result<std::sync::mpsc::Sender<Job>, String> {
    let (sender, jobs) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("ddmd-store".to_string())
        .spawn(move || {
            #[cfg(target_os = "linux")]
            {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: sets the calling thread's policy (pid 0); the
                // parameter outlives the call. A refusal leaves the
                // thread as it was, which is only slower.
                unsafe {
                    libc::sched_setscheduler(0, libc::SCHED_BATCH, &param)
                };
            }
            for job in jobs {
                job();
            }
        })
        .map_err(|e| format!("cannot start the store thread: {e}"))?;
    Ok(sender)
}

/// About the most redb keeps of the file in memory (its page cache and
/// write buffer, which may pass it briefly; a write buffer past half of it
/// is written to the file before the commit, so running out of space can
/// also show in an insert or removal, classified as at the commit).
/// redb's default is 1 GiB, so every page it ever read or wrote stayed
/// resident: the whole table, a second copy of what the router already
/// holds. Measured on 100,000 prefixes added then removed, three
/// times (a scratch program, glibc tuned as `ddmd` tunes it): 14.9 MiB
/// peak RSS with the default, 13.0 with 4 MiB, 9.9–11.0 with 1 MiB, with
/// no slower adds (127–167 ms against 143–193) or removals (35–57 ms
/// against 38–53). The operating system's page cache still holds the
/// file.
const CACHE_BYTES: usize = 1 << 20;

/// A removal of at least one in this many of the table's prefixes (counted
/// after the change's additions) is made in one pass over the table rather
/// than key by key.
const REMOVE_BY_SCAN: u64 = 4;

/// One durable change to the store.
#[derive(Debug, Clone, Default)]
pub struct StoreChange {
    /// Prefixes to originate.
    pub add_prefixes: BTreeSet<Ipv6Net>,
    /// Prefixes to stop originating.
    pub remove_prefixes: BTreeSet<Ipv6Net>,
    /// Tunnel endpoints to originate.
    pub add_tunnels: BTreeSet<TunnelOrigin>,
    /// Tunnel endpoints to stop originating.
    pub remove_tunnels: BTreeSet<TunnelOrigin>,
}

impl StoreChange {
    /// The change that undoes this one.
    pub fn inverse(&self) -> StoreChange {
        StoreChange {
            add_prefixes: self.remove_prefixes.clone(),
            remove_prefixes: self.add_prefixes.clone(),
            add_tunnels: self.remove_tunnels.clone(),
            remove_tunnels: self.add_tunnels.clone(),
        }
    }

    /// True when the change changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add_prefixes.is_empty()
            && self.remove_prefixes.is_empty()
            && self.add_tunnels.is_empty()
            && self.remove_tunnels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One operation on an in-memory image: write `len` bytes of `byte` at
    /// `offset`, read them back, or set the length.
    #[derive(Debug, Clone)]
    enum ImageOp {
        Write { offset: u64, len: usize, byte: u8 },
        Read { offset: u64, len: usize },
        SetLen(u64),
    }

    fn image_op() -> impl proptest::strategy::Strategy<Value = ImageOp> {
        use proptest::prelude::*;
        // Offsets and lengths around page boundaries, a few pages long.
        let offset = 0u64..5 * IMAGE_PAGE;
        let len = 0usize..2 * IMAGE_PAGE as usize;
        prop_oneof![
            (offset.clone(), len.clone(), prop_oneof![Just(0u8), any::<u8>()])
                .prop_map(|(offset, len, byte)| ImageOp::Write {
                    offset,
                    len,
                    byte
                }),
            (offset.clone(), len)
                .prop_map(|(offset, len)| ImageOp::Read { offset, len }),
            offset.prop_map(ImageOp::SetLen),
        ]
    }

    proptest::proptest! {
        /// The sparse image reads, writes and resizes exactly as a plain
        /// byte vector does, and fails exactly where it would be out of
        /// range.
        #[test]
        fn the_sparse_image_behaves_as_a_byte_vector(
            ops in proptest::collection::vec(image_op(), 1..40)
        ) {
            let image = SharedMemory::default();
            let mut model: Vec<u8> = Vec::new();
            for op in ops {
                match op {
                    ImageOp::Write { offset, len, byte } => {
                        let data = vec![byte; len];
                        let end = offset as usize + len;
                        let fits = end <= model.len();
                        proptest::prop_assert_eq!(
                            image.write(offset, &data).is_ok(), fits);
                        if fits {
                            model[offset as usize..end].copy_from_slice(&data);
                        }
                    }
                    ImageOp::Read { offset, len } => {
                        let mut out = vec![7u8; len];
                        let got = image.read(offset, &mut out);
                        match model.get(offset as usize..offset as usize + len) {
                            Some(want) => {
                                proptest::prop_assert!(got.is_ok());
                                proptest::prop_assert_eq!(&out[..], want);
                            }
                            None => proptest::prop_assert!(got.is_err()),
                        }
                    }
                    ImageOp::SetLen(len) => {
                        image.set_len(len).unwrap();
                        model.resize(len as usize, 0);
                    }
                }
                proptest::prop_assert_eq!(image.len().unwrap(), model.len() as u64);
            }
        }
    }

    fn p(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn changes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tunnel = TunnelOrigin {
            overlay_prefix: "203.0.113.0/24".parse().unwrap(),
            boundary_addr: "fd00:99::1".parse().unwrap(),
            vni: 77,
            metric: 3,
        };
        store
            .apply(&StoreChange {
                add_prefixes: [p("fd00:1::/64"), p("fd00:2::/64")].into(),
                add_tunnels: [tunnel].into(),
                ..Default::default()
            })
            .unwrap();
        store
            .apply(&StoreChange {
                remove_prefixes: [p("fd00:2::/64"), p("fd00:3::/64")].into(),
                ..Default::default()
            })
            .unwrap();
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        let loaded = again.load().unwrap();
        assert_eq!(loaded.prefixes, [p("fd00:1::/64")].into());
        assert_eq!(loaded.tunnels, [tunnel].into());
    }

    /// A rewrite leaves exactly the set it is given, whatever the store
    /// held, and it survives a reopen.
    #[test]
    fn a_rewrite_leaves_exactly_its_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tunnel = |vni| TunnelOrigin {
            overlay_prefix: "203.0.113.0/24".parse().unwrap(),
            boundary_addr: "fd00:99::1".parse().unwrap(),
            vni,
            metric: 0,
        };
        store
            .apply(&StoreChange {
                add_prefixes: [p("fd00:1::/64"), p("fd00:2::/64")].into(),
                add_tunnels: [tunnel(1)].into(),
                ..Default::default()
            })
            .unwrap();
        let all = Originated {
            prefixes: [p("fd00:2::/64"), p("fd00:3::/64")].into(),
            tunnels: [tunnel(2)].into(),
        };
        store.rewrite(&all).unwrap();
        assert_eq!(store.load().unwrap(), all);
        drop(store);
        assert_eq!(Store::open(dir.path()).unwrap().load().unwrap(), all);
    }

    /// Removals of a few prefixes (key by key) and of most of the table (in
    /// one pass) remove exactly those, in prefixes whose text order is not
    /// their numeric order.
    #[test]
    fn small_and_large_removals_remove_exactly_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let all: BTreeSet<Ipv6Net> =
            (0..3000u32).map(|i| p(&format!("fd00:{i:x}::/64"))).collect();
        let change = |add: bool, set: BTreeSet<Ipv6Net>| {
            let mut c = StoreChange::default();
            if add {
                c.add_prefixes = set;
            } else {
                c.remove_prefixes = set;
            }
            store.apply(&c).unwrap();
        };
        change(true, all.clone());
        assert_eq!(store.load().unwrap().prefixes, all);
        // Most of it (with one never added): one pass.
        let mut most: BTreeSet<Ipv6Net> = all
            .iter()
            .filter(|n| n.addr().segments()[1] % 3 != 0)
            .copied()
            .collect();
        most.insert(p("fd01::/64"));
        change(false, most.clone());
        let left: BTreeSet<Ipv6Net> = all.difference(&most).copied().collect();
        assert_eq!(left.len(), 1000);
        assert_eq!(store.load().unwrap().prefixes, left);
        // A few: one by one.
        let few: BTreeSet<Ipv6Net> = left.iter().take(10).copied().collect();
        change(false, few.clone());
        let left: BTreeSet<Ipv6Net> = left.difference(&few).copied().collect();
        drop(store);
        assert_eq!(
            Store::open(dir.path()).unwrap().load().unwrap().prefixes,
            left
        );
    }

    fn add(prefix: &str) -> StoreChange {
        StoreChange { add_prefixes: [p(prefix)].into(), ..Default::default() }
    }

    /// A store on a fresh directory (kept alive by the first of the three),
    /// with faults to inject.
    fn on_disk_with_faults() -> (tempfile::TempDir, Arc<Faults>, Store) {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let store =
            Store::open_with_faults(dir.path(), faults.clone()).unwrap();
        (dir, faults, store)
    }

    #[test]
    fn a_full_disk_is_named_and_the_store_recovers_without_reopen() {
        let (dir, faults, store) = on_disk_with_faults();
        store.apply(&add("fd00:1::/64")).unwrap();
        assert!(store.failing().is_none());

        faults.fail_writes(libc::ENOSPC);
        let err = store.apply(&add("fd00:2::/64")).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("No space left"), "{text}");
        assert!(store.failing().is_some());
        // A retry while still full says the same, not redb's "previous
        // I/O error".
        let again = store.apply(&add("fd00:2::/64")).unwrap_err();
        assert!(again.is_no_space(), "{again}");

        // Space returns: the next write succeeds on the same handle.
        faults.fail_writes(0);
        store.apply(&add("fd00:3::/64")).unwrap();
        assert!(store.failing().is_none());
        let loaded = store.load().unwrap();
        assert_eq!(
            loaded.prefixes,
            [p("fd00:1::/64"), p("fd00:3::/64")].into()
        );
        drop(store);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.load().unwrap(), loaded);
    }

    #[test]
    fn a_store_in_memory_keeps_changes_and_recovers_from_faults() {
        let faults = Arc::new(Faults::default());
        let store = Store::in_memory_with_faults(faults.clone());
        assert!(store.is_in_memory());
        assert_eq!(store.load().unwrap(), Originated::default());
        store.apply(&add("fd00:1::/64")).unwrap();
        faults.fail_writes(libc::ENOSPC);
        let err = store.apply(&add("fd00:2::/64")).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        // The failed write closed the database; the next one reopens it on
        // the same bytes, which hold the earlier commit.
        faults.fail_writes(0);
        store.apply(&add("fd00:3::/64")).unwrap();
        let clone = store.clone();
        assert_eq!(
            clone.load().unwrap().prefixes,
            [p("fd00:1::/64"), p("fd00:3::/64")].into()
        );
    }

    #[test]
    fn a_store_in_memory_answers_actors_inline() {
        use futures::FutureExt;
        // Complete on the first poll, with no runtime at all: nothing is
        // handed to the store's thread.
        let store = Store::in_memory();
        let done =
            store.apply_async(Arc::new(add("fd00:1::/64"))).now_or_never();
        done.expect("ran inline").unwrap();
        let loaded = store.load_async().now_or_never().expect("ran inline");
        assert_eq!(loaded.unwrap().prefixes, [p("fd00:1::/64")].into());
    }

    #[test]
    fn other_io_errors_and_quota_are_told_apart() {
        let faults = Arc::new(Faults::default());
        let store = Store::in_memory_with_faults(faults.clone());
        faults.fail_writes(libc::EIO);
        let err = store.apply(&add("fd00:1::/64")).unwrap_err();
        assert!(matches!(err, StoreError::Io(..)), "{err}");
        assert!(err.to_string().contains("Input/output error"), "{err}");
        faults.fail_writes(libc::EDQUOT);
        let err = store.apply(&add("fd00:1::/64")).unwrap_err();
        assert!(err.is_no_space(), "{err}");
        faults.fail_writes(0);
        store.apply(&add("fd00:1::/64")).unwrap();
        assert_eq!(store.load().unwrap().prefixes, [p("fd00:1::/64")].into());
    }

    /// A file store's operations run on the store's thread, which a
    /// panicking job does not end, and which runs as `SCHED_BATCH` (never
    /// preempting the runtime thread that wakes it).
    #[tokio::test]
    async fn a_file_store_works_on_its_own_thread_which_outlives_a_panic() {
        let err = on_store_thread(|| -> () { panic!("a job that panics") })
            .await
            .unwrap_err();
        assert_eq!(err, "panicked");
        let (name, policy) = on_store_thread(|| {
            let name = std::thread::current().name().map(str::to_string);
            #[cfg(target_os = "linux")]
            // SAFETY: asks the calling thread's policy.
            let policy = Some(unsafe { libc::sched_getscheduler(0) });
            #[cfg(not(target_os = "linux"))]
            let policy: Option<i32> = None;
            (name, policy)
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("ddmd-store"));
        #[cfg(target_os = "linux")]
        assert_eq!(policy, Some(libc::SCHED_BATCH));
        let _ = policy;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply_async(Arc::new(add("fd00:1::/64"))).await.unwrap();
        let loaded = store.load_async().await.unwrap();
        assert_eq!(loaded.prefixes, [p("fd00:1::/64")].into());
    }

    /// The exit's wait for the store's thread waits for a job under way,
    /// and no longer than it is let.
    #[tokio::test]
    async fn the_wait_for_store_jobs_waits_for_the_one_under_way() {
        let (started, running) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn(on_store_thread(move || {
            started.send(()).unwrap();
            held.recv().unwrap();
        }));
        // Let the spawned task send the job; then it runs on the thread.
        tokio::task::yield_now().await;
        let deadline = std::time::Duration::from_secs(10);
        running.recv_timeout(deadline).expect("the job started");
        let short = std::time::Duration::from_millis(50);
        assert!(!wait_for_store_jobs(short), "a job is still under way");
        release.send(()).unwrap();
        assert!(wait_for_store_jobs(deadline));
        job.await.unwrap().unwrap();
    }

    #[test]
    fn missing_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, StoreError::DataDir(..)), "{err}");
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn a_file_is_not_a_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    /// A first start that stopped after redb sized the file and before it
    /// wrote its header (a full disk, a kill) left a file of zeros: the
    /// next start makes the database in it.
    #[test]
    fn a_file_of_zeros_from_a_stopped_first_start_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0u8; 8192]).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p: Ipv6Net = "fd00:1::/64".parse().unwrap();
        let change =
            StoreChange { add_prefixes: [p].into(), ..Default::default() };
        store.apply(&change).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().prefixes, [p].into());
    }

    /// A first start killed after redb wrote its header and before its
    /// magic number (the header is synced first) left a file that is
    /// zeros but for the header: made again too.
    #[test]
    fn a_file_with_a_header_but_no_magic_number_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 3 * HEADER_PAGE as usize];
        bytes[MAGIC_LEN..320].fill(0x5a);
        std::fs::write(dir.path().join(DB_FILE), bytes).unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply(&add("fd00:1::/64")).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let p: Ipv6Net = "fd00:1::/64".parse().unwrap();
        assert_eq!(store.load().unwrap().prefixes, [p].into());
    }

    /// A store whose first bytes were zeroed (damaged) is refused at
    /// start, and left as it was: not taken for a file a first start left.
    #[test]
    fn a_store_with_its_magic_number_zeroed_is_refused_not_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.apply(&add("fd00:1::/64")).unwrap();
        drop(store);
        let path = dir.path().join(DB_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..MAGIC_LEN].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
    }

    /// A restart on a full disk, or on a file system gone read-only,
    /// starts, with what the store holds read from a copy, and writes
    /// failing until they can be made; then they succeed, and nothing was
    /// lost.
    #[test]
    fn a_restart_on_a_full_or_read_only_disk_reads_the_store() {
        for errno in [libc::ENOSPC, libc::EROFS] {
            let (dir, faults, store) = on_disk_with_faults();
            let p: Ipv6Net = "fd00:1::/64".parse().unwrap();
            let q: Ipv6Net = "fd00:2::/64".parse().unwrap();
            store.apply(&add("fd00:1::/64")).unwrap();
            drop(store);
            faults.fail_writes(errno);
            let store =
                Store::open_with_faults(dir.path(), faults.clone()).unwrap();
            let failing = store.failing().expect("failing");
            assert_eq!(failing.is_no_space(), errno == libc::ENOSPC);
            assert!(failing.is_unwritable(), "{failing}");
            assert_eq!(store.load().unwrap().prefixes, [p].into());
            let err = store.apply(&add("fd00:2::/64")).unwrap_err();
            assert!(err.is_unwritable(), "{err}");
            if errno == libc::EROFS {
                assert!(err.to_string().contains("read-only"), "{err}");
            }
            faults.fail_writes(0);
            store.apply(&add("fd00:2::/64")).unwrap();
            assert!(store.failing().is_none());
            assert_eq!(store.load().unwrap().prefixes, [p, q].into());
        }
    }

    /// A first start on a full or read-only data directory fails, saying
    /// which and why, and not that a change was not made (none was asked
    /// for).
    #[test]
    fn a_first_start_on_an_unwritable_directory_says_so() {
        for (errno, what) in
            [(libc::ENOSPC, "full"), (libc::EROFS, "read-only")]
        {
            let dir = tempfile::tempdir().unwrap();
            let faults = Arc::new(Faults::default());
            faults.fail_writes(errno);
            let err = Store::open_with_faults(dir.path(), faults).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("cannot open store"), "{text}");
            assert!(text.contains(&format!("is {what}")), "{text}");
            assert!(!text.contains("change was not made"), "{text}");
        }
    }

    /// A second store on one data directory is refused while the first
    /// lives, also when the first holds no database open (a full disk).
    #[test]
    fn one_store_per_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let first =
            Store::open_with_faults(dir.path(), faults.clone()).unwrap();
        first.apply(&StoreChange::default()).unwrap();
        faults.fail_writes(libc::ENOSPC);
        drop(first);
        let first =
            Store::open_with_faults(dir.path(), faults.clone()).unwrap();
        assert!(first.failing().is_some());
        let err = Store::open_with_faults(dir.path(), faults).unwrap_err();
        assert!(err.to_string().contains("another ddmd"), "{err}");
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    /// A first start that fails to make the database leaves no file; the
    /// next one, with room again, starts.
    #[test]
    fn a_failed_first_start_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        faults.fail_writes(libc::ENOSPC);
        let err =
            Store::open_with_faults(dir.path(), faults.clone()).unwrap_err();
        assert!(matches!(err, StoreError::Open(..)), "{err}");
        assert!(err.to_string().contains("is full"), "{err}");
        assert!(!dir.path().join(DB_FILE).exists());
        faults.fail_writes(0);
        Store::open_with_faults(dir.path(), faults).unwrap();
    }

    /// Swapped in where the original daemon ran: its store, a directory at
    /// our file's name, is left alone, and ours goes beside it (and stays
    /// there once the original's is removed).
    #[test]
    fn the_original_daemons_store_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join(DB_FILE);
        std::fs::create_dir(&original).unwrap();
        std::fs::write(original.join("db"), b"sled's").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.path(), dir.path().join(DB_FILE_BESIDE_ORIGINAL));
        store.apply(&add("fd00:1::/64")).unwrap();
        drop(store);
        assert_eq!(std::fs::read(original.join("db")).unwrap(), b"sled's");
        std::fs::remove_dir_all(&original).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.path(), dir.path().join(DB_FILE_BESIDE_ORIGINAL));
        assert!(store.load().unwrap().prefixes.contains(&p("fd00:1::/64")));
    }

    #[test]
    fn garbage_database_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"not a database").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open(..)), "{err}");
    }
}
