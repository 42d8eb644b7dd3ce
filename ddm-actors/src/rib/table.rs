//! The destination table, in shards.
//!
//! One hash table of 100,000 destinations grows by doubling: while it
//! moves to twice the slots, the old and the new table are both allocated,
//! a peak of one and a half times the grown table. Split by destination
//! into [`SHARDS`] tables, each grows on its own, so the peak is one
//! shard's worth over the final size.

use hashbrown::HashMap;
use oxnet::Ipv6Net;

use super::intern::Seeded;
use super::offers::Offers;

/// One shard: destinations hashed with the RIB's seeded hasher. hashbrown's
/// own map rather than std's, whose `entry` makes room for an insertion
/// even when only looking (a withdrawal of a destination not held could
/// grow a full shard).
type Shard = HashMap<Ipv6Net, Offers, Seeded>;

/// How many tables the destinations are spread over.
const SHARDS: usize = 16;

/// How many of an update's destinations are looked up ahead of the work
/// on them ([`Table::warm`]).
pub(crate) const WARM_AHEAD: usize = 16;

/// Every destination with its offers.
#[derive(Debug)]
pub(crate) struct Table {
    shards: Box<[Shard]>,
}

impl Default for Table {
    fn default() -> Self {
        Table { shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }
}

/// Which shard holds `dest`: a multiplicative hash of its bits, so that
/// prefixes differing anywhere spread evenly.
fn shard_of(dest: &Ipv6Net) -> usize {
    let bits = u128::from(dest.addr()) ^ u128::from(dest.width());
    let folded = (bits as u64) ^ ((bits >> 64) as u64);
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS
}

impl Table {
    /// The shard that holds (or would hold) `dest`.
    pub(crate) fn shard(&self, dest: &Ipv6Net) -> &Shard {
        &self.shards[shard_of(dest)]
    }

    /// The shard that holds (or would hold) `dest`, to change.
    pub(crate) fn shard_mut(&mut self, dest: &Ipv6Net) -> &mut Shard {
        &mut self.shards[shard_of(dest)]
    }

    /// The offers of `dest`.
    pub(crate) fn get(&self, dest: &Ipv6Net) -> Option<&Offers> {
        self.shard(dest).get(dest)
    }

    /// Look up each of `dests` in a loop that does nothing else, so that
    /// the work on them that follows finds their entries (or their empty
    /// slots) in the cache. A lookup between other work waits out its own
    /// cache misses, two in a row (the slot's group, then the entry) at a
    /// table of 100,000; in a loop of lookups alone the processor has the
    /// misses of several under way at once.
    pub(crate) fn warm(&self, dests: impl Iterator<Item = Ipv6Net>) {
        for d in dests {
            std::hint::black_box(self.get(&d).is_some());
        }
    }

    /// How many destinations there are.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    /// Every destination with its offers, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Ipv6Net, &Offers)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Keep only the destinations for which `f` is true.
    pub(crate) fn retain(
        &mut self,
        mut f: impl FnMut(&Ipv6Net, &mut Offers) -> bool,
    ) {
        for s in self.shards.iter_mut() {
            s.retain(&mut f);
        }
    }

    /// Give back the space of shards that held many more destinations.
    pub(crate) fn shrink_sparse(&mut self) {
        for s in self.shards.iter_mut() {
            if s.capacity() > 4 * s.len() + 64 {
                s.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_small() {
        // A thin path pointer and a slot: the common single offer is 16
        // bytes, a whole entry (destination included) 40.
        assert_eq!(std::mem::size_of::<Offers>(), 16);
        assert!(std::mem::size_of::<(Ipv6Net, Offers)>() <= 40);
    }

    #[test]
    fn destinations_spread_over_the_shards() {
        let mut seen = [0usize; SHARDS];
        for i in 0..4096u32 {
            let a = std::net::Ipv6Addr::from(
                (0xfd10u128 << 112) | (u128::from(i) << 64),
            );
            seen[shard_of(&Ipv6Net::new(a, 64).unwrap())] += 1;
        }
        assert!(seen.iter().all(|n| *n > 4096 / SHARDS / 2), "{seen:?}");
    }
}
