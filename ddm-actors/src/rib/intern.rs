//! Shared storage of paths and hostnames.
//!
//! A rack has a few dozen routers but a RIB may hold 100,000 paths, nearly
//! all of which repeat a handful of hostname sequences. Each distinct
//! hostname and each distinct path is stored once and shared by reference
//! count; an entry leaves the interner when the last path using it goes.

use std::collections::HashSet;
use std::sync::Arc;

/// A path vector's hostnames, originator first, shared between every
/// destination and peer that carries the same sequence.
pub(crate) type Path = Arc<[Arc<str>]>;

/// The set of hostnames and paths in use.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Every hostname that appears in a stored path.
    names: HashSet<Arc<str>>,
    /// Every stored path.
    paths: HashSet<Path>,
}

impl Interner {
    /// The shared copy of `path`, created if it is new.
    pub(crate) fn intern(&mut self, path: &[String]) -> Path {
        let names: Vec<Arc<str>> = path
            .iter()
            .map(|n| match self.names.get(n.as_str()) {
                Some(a) => Arc::clone(a),
                None => {
                    let a: Arc<str> = Arc::from(n.as_str());
                    self.names.insert(Arc::clone(&a));
                    a
                }
            })
            .collect();
        if let Some(p) = self.paths.get(names.as_slice()) {
            return Arc::clone(p);
        }
        let p: Path = names.into();
        self.paths.insert(Arc::clone(&p));
        p
    }

    /// The shared copy of `path` if some stored entry uses it.
    pub(crate) fn lookup(&self, path: &[String]) -> Option<Path> {
        let names = path
            .iter()
            .map(|n| self.names.get(n.as_str()).cloned())
            .collect::<Option<Vec<Arc<str>>>>()?;
        self.paths.get(names.as_slice()).cloned()
    }

    /// Give back a reference just removed from a table; frees the path (and
    /// hostnames only it used) when nothing else holds it.
    pub(crate) fn release(&mut self, path: Path) {
        // One reference is ours, one the interner's: nobody else uses it.
        if Arc::strong_count(&path) > 2 {
            return;
        }
        self.paths.remove(&path);
        for name in path.iter() {
            // The interner's reference plus this path's.
            if Arc::strong_count(name) <= 2 {
                self.names.remove(name);
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
