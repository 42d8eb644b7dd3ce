//! Shared storage of paths and hostnames.
//!
//! A rack has a few dozen routers but a RIB may hold 100,000 paths, nearly
//! all of which repeat a handful of hostname sequences. Each distinct
//! hostname and each distinct path is stored once and shared by reference
//! count. The interner counts its own users, the table entries holding a
//! path, rather than trusting the reference count, since updates being
//! pushed share the same paths: an entry leaves the interner when the last
//! table entry using it goes.
//!
//! Looking a path up hashes each of its hostnames once and allocates
//! nothing: a path's hash is made of its hostnames' hashes. The hasher is
//! foldhash with a seed drawn per process (the names come from peers), not
//! std's SipHash: in the simulated fabric of 1,024 routers the interner's
//! hashing and its tables' growth were a fifth of a cold start's CPU.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use hashbrown::HashTable;

/// A path vector's hostnames, originator first, shared between every
/// destination and peer that carries the same sequence (and the updates
/// pushed with it).
pub(crate) type Path = ddm_proto::outgoing::Names;

/// The hasher of the RIB's tables: fast on short keys, seeded per process.
pub(crate) type Seeded = foldhash::quality::RandomState;

/// The set of hostnames and paths in use.
#[derive(Default)]
pub(crate) struct Interner {
    /// Hashes hostnames, and paths from their hostnames' hashes.
    state: Seeded,
    /// Every hostname that appears in a stored path, with the number of
    /// stored paths' positions naming it.
    names: HashTable<(Arc<str>, usize)>,
    /// Every stored path, with the number of table entries holding it.
    paths: HashTable<(Path, usize)>,
}

impl fmt::Debug for Interner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interner")
            .field("names", &self.names.len())
            .field("paths", &self.paths.len())
            .finish()
    }
}

/// A path's hash, made of its hostnames' hashes.
fn path_hash<'a>(state: &Seeded, names: impl Iterator<Item = &'a str>) -> u64 {
    let mut h = state.build_hasher();
    for n in names {
        h.write_u64(state.hash_one(n));
    }
    h.finish()
}

/// The hash of a stored path (when its table grows).
fn stored_hash(state: &Seeded, path: &Path) -> u64 {
    path_hash(state, path.iter().map(|n| &**n))
}

/// Whether the stored path `p` names the same hostnames as `path`.
fn same<S: AsRef<str>>(p: &Path, path: &[S]) -> bool {
    p.len() == path.len() && p.iter().zip(path).all(|(a, b)| **a == *b.as_ref())
}

impl Interner {
    /// The shared copy of `path`, created if it is new; counts one more
    /// holder, to give back with [`Interner::release`].
    /// A name new to the interner is stored as given (a peer's update
    /// read off the wire shares its names already), not copied.
    pub(crate) fn intern(&mut self, path: &[Arc<str>]) -> Path {
        let state = &self.state;
        let hash = path_hash(state, path.iter().map(AsRef::as_ref));
        if let Some((p, n)) = self.paths.find_mut(hash, |(p, _)| same(p, path))
        {
            *n += 1;
            return Arc::clone(p);
        }
        let names = &mut self.names;
        let p: Path = Arc::new(
            path.iter()
                .map(|h| {
                    let n = h.as_ref();
                    let (name, count) = names
                        .entry(
                            state.hash_one(n),
                            |(a, _)| **a == *n,
                            |(a, _)| state.hash_one(&**a),
                        )
                        .or_insert_with(|| (Arc::clone(h), 0))
                        .into_mut();
                    *count += 1;
                    Arc::clone(name)
                })
                .collect(),
        );
        self.paths.insert_unique(hash, (Arc::clone(&p), 1), |(q, _)| {
            stored_hash(state, q)
        });
        p
    }

    /// The shared copy of `path` if some stored entry uses it (no holder
    /// is counted).
    pub(crate) fn lookup(&self, path: &[Arc<str>]) -> Option<Path> {
        let hash = path_hash(&self.state, path.iter().map(AsRef::as_ref));
        self.paths
            .find(hash, |(p, _)| same(p, path))
            .map(|(p, _)| Arc::clone(p))
    }

    /// Give back a holder's reference; frees the path (and hostnames only
    /// it used) when no holder is left.
    pub(crate) fn release(&mut self, path: Path) {
        let state = &self.state;
        let Ok(mut entry) = self
            .paths
            .find_entry(stored_hash(state, &path), |(p, _)| same(p, &path))
        else {
            return;
        };
        entry.get_mut().1 -= 1;
        if entry.get().1 > 0 {
            return;
        }
        entry.remove();
        for name in path.iter() {
            if let Ok(mut e) = self
                .names
                .find_entry(state.hash_one(&**name), |(a, _)| **a == **name)
            {
                e.get_mut().1 -= 1;
                if e.get().1 == 0 {
                    e.remove();
                }
            }
        }
    }

    /// How many distinct paths are stored (for tests and statistics).
    pub(crate) fn path_count(&self) -> usize {
        self.paths.len()
    }

    /// How many distinct hostnames are stored (for tests and statistics).
    pub(crate) fn name_count(&self) -> usize {
        self.names.len()
    }
}
