//! An in-memory dataplane for tests and simulations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use oxnet::Ipv6Net;

use super::{Dataplane, DataplaneError, Nexthops, RouteUpdate, TunnelEntry};

/// What an in-memory dataplane holds; shared with the test that reads it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryTables {
    /// Installed routes.
    pub routes: BTreeMap<Ipv6Net, Nexthops>,
    /// The effective tunnel endpoints.
    pub tunnels: BTreeSet<TunnelEntry>,
    /// How many `apply` batches arrived (to check batching).
    pub batches: usize,
}

/// A dataplane that keeps its tables in memory.
///
/// Tests keep a [`MemoryDataplane::tables`] handle to look at the result;
/// the mutex is only ever taken briefly by the worker and the test.
#[derive(Debug, Clone, Default)]
pub struct MemoryDataplane {
    tables: Arc<Mutex<MemoryTables>>,
}

impl MemoryDataplane {
    /// A new, empty dataplane.
    pub fn new() -> Self {
        Self::default()
    }

    /// A snapshot of the tables.
    pub fn tables(&self) -> MemoryTables {
        self.tables.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryTables) -> T) -> T {
        f(&mut self.tables.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl Dataplane for MemoryDataplane {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn remove_stale(&mut self) -> Result<usize, DataplaneError> {
        Ok(0)
    }

    async fn apply(
        &mut self,
        updates: Vec<RouteUpdate>,
    ) -> Result<(), DataplaneError> {
        self.with(|t| {
            t.batches += 1;
            for u in updates {
                if u.nexthops.is_empty() {
                    t.routes.remove(&u.destination);
                } else {
                    t.routes.insert(u.destination, u.nexthops);
                }
            }
        });
        Ok(())
    }

    async fn set_tunnels(
        &mut self,
        tunnels: BTreeSet<TunnelEntry>,
    ) -> Result<(), DataplaneError> {
        self.with(|t| t.tunnels = tunnels);
        Ok(())
    }

    async fn remove_all(&mut self) -> Result<usize, DataplaneError> {
        Ok(self.with(|t| {
            let n = t.routes.len();
            t.routes.clear();
            t.tunnels.clear();
            n
        }))
    }
}
