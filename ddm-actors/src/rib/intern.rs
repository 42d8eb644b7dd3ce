//! Shared storage of paths and hostnames.
//!
//! A rack has a few dozen routers but a RIB may hold 100,000 paths, nearly
//! all of which repeat a handful of hostname sequences. Each distinct
//! hostname and each distinct path is stored once and shared by reference
//! count. The interner counts its own users, the table entries holding a
//! path, rather than trusting the reference count, since updates being
//! pushed share the same paths: an entry leaves the interner when the last
//! table entry using it goes.

use std::collections::HashMap;
use std::sync::Arc;

/// A path vector's hostnames, originator first, shared between every
/// destination and peer that carries the same sequence (and the updates
/// pushed with it).
pub(crate) type Path = ddm_proto::outgoing::Names;

/// The set of hostnames and paths in use.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Every hostname that appears in a stored path, with the number of
    /// stored paths' positions naming it.
    names: HashMap<Arc<str>, usize>,
    /// Every stored path, with the number of table entries holding it.
    paths: HashMap<Path, usize>,
}

impl Interner {
    /// The shared copy of `path`, created if it is new; counts one more
    /// holder, to give back with [`Interner::release`].
    pub(crate) fn intern(&mut self, path: &[String]) -> Path {
        if let Some(p) = self.lookup(path) {
            if let Some(n) = self.paths.get_mut(&p) {
                *n += 1;
            }
            return p;
        }
        let p: Path = Arc::new(
            path.iter()
                .map(|n| match self.names.get_key_value(n.as_str()) {
                    Some((a, _)) => Arc::clone(a),
                    None => Arc::from(n.as_str()),
                })
                .collect(),
        );
        for name in p.iter() {
            *self.names.entry(Arc::clone(name)).or_insert(0) += 1;
        }
        self.paths.insert(Arc::clone(&p), 1);
        p
    }

    /// The shared copy of `path` if some stored entry uses it (no holder
    /// is counted).
    pub(crate) fn lookup(&self, path: &[String]) -> Option<Path> {
        let names = path
            .iter()
            .map(|n| {
                self.names.get_key_value(n.as_str()).map(|(a, _)| a.clone())
            })
            .collect::<Option<Box<[Arc<str>]>>>()?;
        self.paths.get_key_value(&names).map(|(p, _)| p.clone())
    }

    /// Give back a holder's reference; frees the path (and hostnames only
    /// it used) when no holder is left.
    pub(crate) fn release(&mut self, path: Path) {
        let Some(n) = self.paths.get_mut(&path) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.paths.remove(&path);
        for name in path.iter() {
            if let Some(c) = self.names.get_mut(name) {
                *c -= 1;
                if *c == 0 {
                    self.names.remove(name);
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
