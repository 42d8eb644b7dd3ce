//! The durable store of what this router originates.
//!
//! Originated prefixes and tunnel endpoints are operator configuration: they
//! must survive a restart and a SIGKILL at any moment. They live in a redb
//! database at `<data-dir>/ddmdb`; every change is one write transaction,
//! committed with immediate durability (fsync) before the admin API answers
//! 204, so anything acknowledged is on disk.
//!
//! redb calls block on file I/O, so every operation runs on tokio's blocking
//! pool and the calling actor awaits it without stalling its runtime thread.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ddm_admin_api::latest::TunnelOrigin;
use oxnet::Ipv6Net;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// Originated underlay prefixes, keyed by their text form (`fd00:1::/64`).
const PREFIXES: TableDefinition<&str, ()> = TableDefinition::new("prefixes");
/// Originated tunnel endpoints, keyed by their canonical JSON.
const TUNNELS: TableDefinition<&str, ()> = TableDefinition::new("tunnels");

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "ddmdb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory is missing or not a directory.
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, String),
    /// The database could not be opened or created.
    #[error("cannot open store {0}: {1}")]
    Open(PathBuf, String),
    /// A read or write failed.
    #[error("store {0} failed: {1}")]
    Io(PathBuf, String),
    /// An entry on disk could not be parsed (it is skipped and reported).
    #[error("store {0} holds an unreadable entry {1:?}")]
    Corrupt(PathBuf, String),
}

/// A handle to the store; cheap to clone, safe to share between the
/// blocking tasks that run its transactions.
#[derive(Clone)]
pub struct Store {
    /// The open database.
    db: Arc<redb::Database>,
    /// Where it lives, for error messages.
    path: PathBuf,
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

fn tunnel_key(t: &TunnelOrigin) -> String {
    serde_json::to_string(t).expect("a tunnel origin always serialises")
}

impl Store {
    /// Open (creating if needed) the store in `data_dir`. The directory must
    /// exist and be writable.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let meta = std::fs::metadata(data_dir).map_err(|e| {
            StoreError::DataDir(data_dir.to_path_buf(), e.to_string())
        })?;
        if !meta.is_dir() {
            return Err(StoreError::DataDir(
                data_dir.to_path_buf(),
                "not a directory".to_string(),
            ));
        }
        let path = data_dir.join(DB_FILE);
        let db = redb::Database::create(&path)
            .map_err(|e| StoreError::Open(path.clone(), e.to_string()))?;
        let store = Store { db: Arc::new(db), path };
        // Create both tables up front so that reads never meet a missing
        // table, and so that an unwritable directory fails now, not at the
        // first PUT.
        store.write(|txn| {
            txn.open_table(PREFIXES)?;
            txn.open_table(TUNNELS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io(self.path.clone(), e.to_string())
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        let out = f(&txn).map_err(|e| self.io(e))?;
        txn.commit().map_err(|e| self.io(e))?;
        Ok(out)
    }

    /// Read everything (at start-up). Unparsable entries are reported, not
    /// silently dropped.
    pub fn load(&self) -> Result<Originated, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let mut out = Originated::default();
        let prefixes = txn.open_table(PREFIXES).map_err(|e| self.io(e))?;
        for entry in prefixes.iter().map_err(|e| self.io(e))? {
            let (k, _) = entry.map_err(|e| self.io(e))?;
            let k = k.value();
            let p = k.parse().map_err(|_| {
                StoreError::Corrupt(self.path.clone(), k.to_string())
            })?;
            out.prefixes.insert(p);
        }
        let tunnels = txn.open_table(TUNNELS).map_err(|e| self.io(e))?;
        for entry in tunnels.iter().map_err(|e| self.io(e))? {
            let (k, _) = entry.map_err(|e| self.io(e))?;
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
            let mut prefixes = txn.open_table(PREFIXES)?;
            for p in &change.add_prefixes {
                prefixes.insert(p.to_string().as_str(), ())?;
            }
            for p in &change.remove_prefixes {
                prefixes.remove(p.to_string().as_str())?;
            }
            let mut tunnels = txn.open_table(TUNNELS)?;
            for t in &change.add_tunnels {
                tunnels.insert(tunnel_key(t).as_str(), ())?;
            }
            for t in &change.remove_tunnels {
                tunnels.remove(tunnel_key(t).as_str())?;
            }
            Ok(())
        })
    }

    /// [`Store::apply`] on tokio's blocking pool.
    pub async fn apply_async(
        &self,
        change: StoreChange,
    ) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.apply(&change))
            .await
            .map_err(|e| self.io(format!("store task failed: {e}")))?
    }
}

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

    #[test]
    fn garbage_database_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), b"not a database").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open(..)), "{err}");
    }
}
