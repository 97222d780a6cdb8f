//! A shard: one wait-free map (papaya) from credential id to its entry, and the
//! [`ShardWriter`] that is its only writer.
//!
//! Reads pin the map and work on the entry under the guard, from any executor. Writes happen
//! only through the shard's `ShardWriter`, which the [`crate::store::Store`] hands out once
//! and which cannot leave the executor that claimed it (it is `!Send`): versions and, later,
//! the write-ahead log are ordered without locks.

use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::PutRequest;

use crate::error::OpError;
use crate::record::{Record, VersionFields};
use crate::store::Store;

/// What a shard's map holds for one credential.
#[derive(Debug)]
pub struct Entry {
    /// The version GET returns when no version is given.
    pub current: Arc<Record>,
}

pub struct Shard {
    pub shard_id: usize,
    pub(crate) map: papaya::HashMap<Box<str>, Entry>,
}

impl Shard {
    pub(crate) fn new(shard_id: usize) -> Shard {
        Shard { shard_id, map: papaya::HashMap::new() }
    }

    /// Credentials held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The single writer of one shard. Not `Send`: it stays on the executor that claimed it.
pub struct ShardWriter {
    store: Arc<Store>,
    shard_id: usize,
    _not_send: PhantomData<Rc<()>>,
}

impl ShardWriter {
    pub(crate) fn new(store: Arc<Store>, shard_id: usize) -> ShardWriter {
        ShardWriter { store, shard_id, _not_send: PhantomData }
    }

    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Creates or replaces a credential; returns the new version.
    ///
    /// An expired credential counts as absent for compare-and-set (`expected_version` 0
    /// succeeds), but its version number is not reused: the new version follows it.
    ///
    /// # Errors
    /// [`OpError::VersionConflict`] when `expected_version` does not match,
    /// [`OpError::Unavailable`] when no data key is available.
    pub fn put(&mut self, request: &PutRequest<'_>, now_ms: u64) -> Result<u64, OpError> {
        let shard = self.store.shard(self.shard_id);
        debug_assert_eq!(self.store.shard_for(request.id), self.shard_id, "write routed to the wrong shard");
        let map = shard.map.pin();
        let existing = map.get(request.id).map(|entry| &entry.current);
        let live = existing.filter(|record| !record.is_expired(now_ms));
        let current_version = live.map_or(0, |record| record.version());
        if let Some(expected_version) = request.expected_version {
            if expected_version != current_version {
                return Err(OpError::VersionConflict { current_version });
            }
        }
        let previous_version = existing.map_or(0, |record| record.version());
        let fields = VersionFields {
            version: previous_version + 1,
            created_at_ms: live.map_or(now_ms, |record| record.credential().created_at_ms.to_native()),
            updated_at_ms: now_ms,
            expires_at_ms: request.expiry.resolve(now_ms),
        };
        let record = Record::seal(request, fields, self.store.keyring())?;
        assert!(record.version() > previous_version, "versions of a credential are strictly increasing");
        map.insert(request.id.into(), Entry { current: Arc::new(record) });
        Ok(fields.version)
    }

    /// Removes a credential and all its versions; returns the version that was current.
    ///
    /// # Errors
    /// [`OpError::NotFound`] for an absent credential, [`OpError::VersionConflict`] when
    /// `expected_version` does not match the current version.
    pub fn delete(&mut self, request: &DeleteRequest<'_>, now_ms: u64) -> Result<u64, OpError> {
        let shard = self.store.shard(self.shard_id);
        let map = shard.map.pin();
        let record = &map.get(request.id).ok_or(OpError::NotFound)?.current;
        let version = record.version();
        if let Some(expected_version) = request.expected_version {
            let current_version = if record.is_expired(now_ms) { 0 } else { version };
            if expected_version != current_version {
                return Err(OpError::VersionConflict { current_version });
            }
        }
        map.remove(request.id);
        Ok(version)
    }
}
