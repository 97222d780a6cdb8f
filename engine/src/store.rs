//! The [`Store`]: every shard's map, the key ring and the limits, shared by all executors.
//! Reads go straight to the owning shard's map from whichever executor holds the connection;
//! writes go through the owning shard's [`ShardWriter`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use credshard_protocol::op::get::{GetMetaRequest, GetRequest, VersionInfo};
use credshard_protocol::{Limits, VersionState};

use crate::crypto::Keyring;
use crate::error::OpError;
use crate::keyspace::shard_for;
use crate::record::Record;
use crate::shard::{Shard, ShardWriter};

pub struct Store {
    shards: Box<[Shard]>,
    keyring: Keyring,
    limits: Limits,
    writer_claimed: Box<[AtomicBool]>,
}

impl Store {
    /// # Panics
    /// If `shard_count` is 0 or above 65,535.
    pub fn new(shard_count: usize, keyring: Keyring, limits: Limits) -> Store {
        assert!((1..=u16::MAX as usize).contains(&shard_count), "1..=65535 shards");
        Store {
            shards: (0..shard_count).map(Shard::new).collect(),
            keyring,
            limits,
            writer_claimed: (0..shard_count).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn shard(&self, shard_id: usize) -> &Shard {
        &self.shards[shard_id]
    }

    #[inline]
    pub fn shard_for(&self, id: &str) -> usize {
        shard_for(id, self.shards.len())
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Credentials held across all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(Shard::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The writer of `shard_id`. Each shard's writer can be claimed once.
    ///
    /// # Panics
    /// If the writer was claimed before: two writers would break the single-writer invariant.
    pub fn claim_writer(self: &Arc<Store>, shard_id: usize) -> ShardWriter {
        let already = self.writer_claimed[shard_id].swap(true, Ordering::AcqRel);
        assert!(!already, "shard {shard_id} already has a writer");
        ShardWriter::new(Arc::clone(self), shard_id)
    }

    /// GET: appends metadata and the decrypted secret of the requested version to `out`.
    ///
    /// # Errors
    /// Not found, expired, version not kept; internal when the ciphertext fails to open.
    pub fn get(&self, request: &GetRequest<'_>, now_ms: u64, out: &mut BytesMut) -> Result<(), OpError> {
        let map = self.shards[self.shard_for(request.id)].map.pin();
        let record = &map.get(request.id).ok_or(OpError::NotFound)?.current;
        if record.is_expired(now_ms) {
            return Err(OpError::Expired);
        }
        if request.version != 0 && request.version != record.version() {
            return Err(OpError::VersionNotFound);
        }
        let start = out.len();
        record.metadata().encode(out);
        record.decrypt_into(&self.keyring, out).inspect_err(|_| out.truncate(start))
    }

    /// GET_META: appends metadata and the list of kept versions to `out`; decrypts nothing.
    ///
    /// # Errors
    /// Not found, expired.
    pub fn get_meta(
        &self,
        request: &GetMetaRequest<'_>,
        now_ms: u64,
        out: &mut BytesMut,
    ) -> Result<(), OpError> {
        let map = self.shards[self.shard_for(request.id)].map.pin();
        let record = &map.get(request.id).ok_or(OpError::NotFound)?.current;
        if record.is_expired(now_ms) {
            return Err(OpError::Expired);
        }
        let metadata = record.metadata();
        metadata.encode(out);
        out.extend_from_slice(&1u16.to_le_bytes());
        VersionInfo {
            version: metadata.version,
            created_at_ms: metadata.updated_at_ms,
            state: VersionState::Current,
        }
        .encode(out);
        Ok(())
    }

    /// Calls `visit` on every stored record (snapshots, tests). Holds one shard's guard at a
    /// time; must not be called across an `.await`.
    pub fn for_each_record(&self, mut visit: impl FnMut(&Record)) {
        for shard in self.shards.iter() {
            for (_, entry) in shard.map.pin().iter() {
                visit(&entry.current);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::time::now_ms;
    use credshard_protocol::op::delete::DeleteRequest;
    use credshard_protocol::{Expiry, Kind, Labels, PutRequest, EMPTY_LABELS};

    fn store(shards: usize) -> Arc<Store> {
        Arc::new(Store::new(shards, Keyring::in_memory(MasterKey::generate()), Limits::default()))
    }

    fn put<'a>(id: &'a str, secret: &'a [u8], expected_version: Option<u64>) -> PutRequest<'a> {
        PutRequest {
            id,
            owner: "owner",
            scope: "scope",
            kind: Kind::ApiKey,
            expected_version,
            expiry: Expiry::Never,
            labels: Labels::from_validated(EMPTY_LABELS),
            secret,
        }
    }

    #[test]
    fn put_get_cas_delete() {
        let store = store(1);
        let mut writer = store.claim_writer(0);
        let now = now_ms();
        assert_eq!(writer.put(&put("a", b"one", Some(0)), now), Ok(1));
        assert_eq!(
            writer.put(&put("a", b"two", Some(0)), now),
            Err(OpError::VersionConflict { current_version: 1 })
        );
        assert_eq!(writer.put(&put("a", b"two", Some(1)), now), Ok(2));
        assert_eq!(writer.put(&put("a", b"three", None), now), Ok(3));

        let mut out = BytesMut::new();
        store.get(&GetRequest { id: "a", version: 0 }, now, &mut out).unwrap();
        assert!(out.ends_with(b"three"));
        assert_eq!(
            store.get(&GetRequest { id: "a", version: 2 }, now, &mut out),
            Err(OpError::VersionNotFound)
        );
        assert_eq!(store.get(&GetRequest { id: "b", version: 0 }, now, &mut out), Err(OpError::NotFound));

        let delete = |expected_version| DeleteRequest { id: "a", expected_version };
        assert_eq!(
            writer.delete(&delete(Some(2)), now),
            Err(OpError::VersionConflict { current_version: 3 })
        );
        assert_eq!(writer.delete(&delete(Some(3)), now), Ok(3));
        assert_eq!(writer.delete(&delete(None), now), Err(OpError::NotFound));
        assert!(store.is_empty());
    }

    #[test]
    fn expired_credentials_read_as_expired_and_count_as_absent_for_cas() {
        let store = store(1);
        let mut writer = store.claim_writer(0);
        let mut request = put("t", b"token", None);
        request.expiry = Expiry::TtlMs(1_000);
        assert_eq!(writer.put(&request, 5_000), Ok(1));
        let mut out = BytesMut::new();
        assert!(store.get(&GetRequest { id: "t", version: 0 }, 5_999, &mut out).is_ok());
        assert_eq!(store.get(&GetRequest { id: "t", version: 0 }, 6_000, &mut out), Err(OpError::Expired));
        assert_eq!(store.get_meta(&GetMetaRequest { id: "t" }, 6_000, &mut out), Err(OpError::Expired));
        assert_eq!(writer.put(&put("t", b"new", Some(0)), 6_000), Ok(2), "version numbers are not reused");
    }

    #[test]
    fn a_record_that_fails_authentication_is_an_internal_error_not_garbage() {
        let store = store(1);
        let stranger = Keyring::in_memory(MasterKey::generate());
        let fields =
            crate::record::VersionFields { version: 1, created_at_ms: 1, updated_at_ms: 1, expires_at_ms: 0 };
        let foreign = Record::seal(&put("x", b"secret", None), fields, &stranger).unwrap();
        store.shard(0).map.pin().insert("x".into(), crate::shard::Entry { current: Arc::new(foreign) });
        let mut out = BytesMut::from(&b"prefix"[..]);
        let error = store.get(&GetRequest { id: "x", version: 0 }, now_ms(), &mut out).unwrap_err();
        assert_eq!(error.status(), credshard_protocol::Status::Internal);
        assert_eq!(&out[..], b"prefix", "nothing of the failed response is left in the buffer");
        assert!(
            store.get_meta(&GetMetaRequest { id: "x" }, now_ms(), &mut out).is_ok(),
            "metadata needs no key"
        );
    }

    #[test]
    #[should_panic(expected = "already has a writer")]
    fn a_shard_has_one_writer() {
        let store = store(2);
        let _first = store.claim_writer(1);
        let _second = store.claim_writer(1);
    }
}
