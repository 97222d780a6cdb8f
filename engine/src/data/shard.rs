//! A shard: one wait-free map (papaya) from credential id to its kept versions, and the
//! secondary index that serves LIST.
//!
//! Reads pin the map and work on the entry under the guard, from any executor. Writes happen
//! only through the shard's [`ShardWriter`](super::ShardWriter). Each write installs a new
//! immutable [`Entry`]; kept versions are shared between entries by `Arc`.

use std::sync::{Arc, RwLock};

use credshard_protocol::VersionState;

use super::index::ShardIndex;
use super::record::Record;

/// What a shard's map holds for one credential: its kept versions, newest (current) first.
#[derive(Debug)]
pub struct Entry {
    versions: Box<[Arc<Record>]>,
}

impl Entry {
    pub(super) fn new(versions: Box<[Arc<Record>]>) -> Entry {
        assert!(!versions.is_empty(), "an entry keeps at least its current version");
        debug_assert!(versions.windows(2).all(|pair| pair[0].version() > pair[1].version()), "newest first");
        Entry { versions }
    }

    /// The version GET returns when no version is given.
    pub fn current(&self) -> &Record {
        &self.versions[0]
    }

    /// Kept versions, newest first.
    pub fn versions(&self) -> &[Arc<Record>] {
        &self.versions
    }

    /// The state of the kept version at `index` (0 is current), derived from the version that
    /// replaced it: a ROTATE records the replaced version's grace deadline, a PUT records 0.
    pub fn state(&self, index: usize, now_ms: u64) -> VersionState {
        if index == 0 {
            return VersionState::Current;
        }
        match self.versions[index - 1].credential().previous_grace_until_ms.to_native() {
            0 => VersionState::Superseded,
            grace_until_ms if now_ms < grace_until_ms => VersionState::PreviousInGrace,
            _ => VersionState::Retired,
        }
    }

    /// A kept version by number (0 for current), with its state.
    pub fn find(&self, version: u64, now_ms: u64) -> Option<(&Record, VersionState)> {
        if version == 0 {
            return Some((self.current(), VersionState::Current));
        }
        let index = self.versions.iter().position(|record| record.version() == version)?;
        Some((&self.versions[index], self.state(index, now_ms)))
    }
}

pub struct Shard {
    pub shard_id: usize,
    pub(crate) map: papaya::HashMap<Box<str>, Entry, ahash::RandomState>,
    /// LIST's index. Written only by the shard's writer; read by LIST on any executor.
    pub(crate) index: RwLock<ShardIndex>,
}

impl Shard {
    pub(crate) fn new(shard_id: usize) -> Shard {
        Shard {
            shard_id,
            map: papaya::HashMap::with_hasher(ahash::RandomState::new()),
            index: RwLock::new(ShardIndex::default()),
        }
    }

    /// Rebuilds the LIST index from the map in one sorted bulk build (after recovery, which
    /// installs entries without maintaining it). Returns the number of kept versions.
    pub(crate) fn rebuild_index(&self) -> usize {
        let map = self.map.pin();
        let mut versions = 0;
        let keys = map.iter().map(|(id, entry)| {
            versions += entry.versions().len();
            let credential = entry.current().credential();
            (credential.owner.as_str(), credential.scope.as_str(), &**id)
        });
        *self.index.write().expect("index lock") = ShardIndex::build(keys);
        versions
    }

    /// Credentials held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
