//! The [`Store`]: every shard's map and index, the key ring, the limits and the lifecycle
//! settings, shared by all executors. Reads (GET, GET_META, BATCH_GET, LIST) go straight to
//! the owning shards from whichever executor holds the connection; writes go through the
//! owning shard's [`ShardWriter`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use credshard_protocol::op::batch_get::BatchGetRequest;
use credshard_protocol::op::get::{GetMetaRequest, GetRequest, VersionInfo};
use credshard_protocol::op::list::{ListItemRef, ListRequest};
use credshard_protocol::op::policy::{GetPolicyRequest, Policy};
use credshard_protocol::wire::{put_bytes32, put_str16};
use credshard_protocol::{Limits, Status, VersionState};

use super::index::{ListQuery, SortKey};
use super::keyspace::shard_for;
use super::record::Record;
use super::shard::{Entry, Shard};
use super::writer::ShardWriter;
use crate::auth::Acl;
use crate::crypto::Keyring;
use crate::error::OpError;

/// Bytes a GET reply may need beyond a record's archive length (length prefixes, alignment
/// padding the archive does not carry).
const GET_REPLY_SLACK_BYTES: usize = 64;

/// Most lookups [`Store::prefetch`] takes at once.
pub const PREFETCH_IDS_MAX: usize = 32;

/// Most requests a connection looks at, ahead of answering them, for GETs to prefetch.
pub const PREFETCH_SCAN_MAX: usize = 2 * PREFETCH_IDS_MAX;

/// Shards holding fewer credentials than this are not prefetched: they fit in a core's
/// cache (at about 480 B of record and map per credential, 8,192 take ~4 MB).
const PREFETCH_MAP_LEN_MIN: usize = 8192;

/// Where a lookup of one id will look (its shard, and its hash in that shard's map).
#[derive(Clone, Copy, Debug, Default)]
struct LookupHint {
    shard_id: usize,
    hash: u64,
}

/// Bytes of a failed BATCH_GET result at most: detail u64, message str16 (1024 bytes at most).
const ERROR_RESULT_BYTES_MAX: usize = 8 + 2 + 1024;

/// How versions age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// Versions kept per credential, current included (at least 1).
    pub max_versions: usize,
    /// How long a version replaced by ROTATE stays readable, unless the request says.
    pub grace_period_ms: u64,
    /// How long a deleted credential stays recoverable, unless the DELETE says (0: DELETE
    /// purges at once).
    pub recovery_window_ms: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            max_versions: 10,
            grace_period_ms: 24 * 60 * 60 * 1000,
            recovery_window_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

pub struct Store {
    shards: Box<[Shard]>,
    keyring: Keyring,
    limits: Limits,
    lifecycle: Lifecycle,
    writer_claimed: Box<[AtomicBool]>,
    /// Credentials each shard's map may hold, with a shared database behind it (`None`: every
    /// credential, the embedded store).
    shard_capacity: Option<usize>,
    /// This run of the store (random): the change feeds' positions are valid within it.
    epoch: u64,
}

/// Credentials read from the shared database for one request, by id: the request is served
/// from these where its shard's map no longer holds them (a small cache may evict what it
/// just read before the request gets to it).
pub type Fetched = [(Box<str>, Arc<Entry>)];

/// One page of LIST read elsewhere than the shards' indexes (the shared database, when the
/// shards hold only part of the credentials): at most the request's limit of items in sort
/// order, and whether more follow.
#[derive(Debug, Default)]
pub struct ListPage {
    pub items: Vec<(SortKey, Record)>,
    pub more: bool,
}

impl Store {
    /// # Panics
    /// If `shard_count` is 0 or above 65,535, or `lifecycle.max_versions` is 0.
    pub fn new(shard_count: usize, keyring: Keyring, limits: Limits, lifecycle: Lifecycle) -> Store {
        assert!((1..=u16::MAX as usize).contains(&shard_count), "1..=65535 shards");
        assert!(lifecycle.max_versions >= 1, "at least the current version is kept");
        Store {
            shards: (0..shard_count).map(Shard::new).collect(),
            keyring,
            limits,
            lifecycle,
            writer_claimed: (0..shard_count).map(|_| AtomicBool::new(false)).collect(),
            shard_capacity: None,
            epoch: new_epoch(),
        }
    }

    /// Keeps the last `events` changes of each shard for watchers (instead of
    /// [`super::feed::FEED_EVENTS_DEFAULT`]).
    pub fn with_feed_events(mut self, events: usize) -> Store {
        for shard in self.shards.iter_mut() {
            shard.feed = super::feed::Feed::new(events);
        }
        self
    }

    /// This run of the store: a change feed position from another run cannot be resumed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bounds the shards' maps to about `capacity` credentials in all (a cache in front of a
    /// shared database): each shard's writer evicts past its share.
    ///
    /// # Panics
    /// If `capacity` is 0.
    pub fn with_cache_capacity(mut self, capacity: usize) -> Store {
        assert!(capacity > 0, "a cache holds at least one credential");
        self.shard_capacity = Some(capacity.div_ceil(self.shards.len()));
        self
    }

    /// Credentials each shard's map may hold (`None`: all of them).
    pub fn shard_capacity(&self) -> Option<usize> {
        self.shard_capacity
    }

    /// True when some shard holds only part of its credentials: an id missing from a map may
    /// exist, and LIST must come from the database.
    pub fn is_partial(&self) -> bool {
        self.shards.iter().any(Shard::is_partial)
    }

    /// True when `id` is not in its shard's map but may exist (its shard is partial).
    pub fn may_exist_uncached(&self, id: &str) -> bool {
        let shard = &self.shards[self.shard_for(id)];
        shard.is_partial() && !shard.map.pin().contains(id)
    }

    /// Of `ids`, those not in their shards' maps that may exist, and are not in `absent`
    /// (found missing from the database already), without repeats.
    pub fn uncached<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        absent: &[Box<str>],
        fetched: &Fetched,
    ) -> Vec<Box<str>> {
        let mut missing: Vec<Box<str>> = Vec::new();
        for id in ids {
            if self.may_exist_uncached(id)
                && !absent.iter().any(|gone| &**gone == id)
                && !fetched.iter().any(|(read, _)| &**read == id)
                && !missing.iter().any(|seen| &**seen == id)
            {
                missing.push(id.into());
            }
        }
        missing
    }

    /// Credentials evicted from the shards' maps so far (a bounded cache).
    pub fn cache_evictions(&self) -> u64 {
        self.shards.iter().map(|shard| shard.evictions.load(Ordering::Relaxed)).sum()
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

    /// The key ring, out of a store being thrown away (a restart in the model test).
    #[cfg(test)]
    pub(super) fn into_keyring(self) -> Keyring {
        self.keyring
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
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

    /// Starts loading what GETs of `ids` will read, one step at a time across all of them:
    /// where each id's probe starts in its shard's map, then the map entry found there, then
    /// (with a lookup that now hits the cache) the entry's current record. A lookup is a
    /// chain of cache misses each of which needs the one before (slot, entry, record):
    /// answered one after another, the GETs of a pipelined read wait for every chain in full;
    /// prefetched step by step, the misses of all of them overlap, and the GETs then find
    /// their lines in the cache. Changes nothing; an id the maps lack costs a few probes.
    /// Takes the first [`PREFETCH_IDS_MAX`] of `ids` (and no more of the iterator). Shards
    /// small enough to stay in the cache are left alone. Returns how many of the ids were
    /// prefetched.
    pub fn prefetch<'i>(&self, ids: impl IntoIterator<Item = &'i str>) -> usize {
        // The first ids, taken whatever the maps' size (a caller feeding the rest to later
        // calls finds them where it left them).
        let mut taken = [""; PREFETCH_IDS_MAX];
        let mut count = 0;
        for (slot, id) in taken.iter_mut().zip(ids) {
            *slot = id;
            count += 1;
        }
        let ids = &taken[..count];
        // A small map stays in the cache, where the prefetch passes cost more than they save
        // (criterion `get_path`, 1,000 credentials).
        if ids.len() < 2 || self.shards.iter().all(|shard| shard.len() < PREFETCH_MAP_LEN_MIN) {
            return 0;
        }
        let mut hints = [LookupHint::default(); PREFETCH_IDS_MAX];
        for (hint, id) in hints.iter_mut().zip(ids) {
            let shard_id = self.shard_for(id);
            *hint = LookupHint { shard_id, hash: self.shards[shard_id].map.hash_key(*id) };
        }
        let hints = &hints[..ids.len()];
        let mut prefetched = 0;
        for (shard_id, shard) in self.shards.iter().enumerate() {
            if !hints.iter().any(|hint| hint.shard_id == shard_id) || shard.len() < PREFETCH_MAP_LEN_MIN {
                continue;
            }
            let map = shard.map.pin();
            let here = || hints.iter().zip(ids).filter(move |(hint, _)| hint.shard_id == shard_id);
            prefetched += here().count();
            here().for_each(|(hint, _)| map.prefetch_slot(hint.hash));
            here().for_each(|(hint, _)| map.prefetch_entry(hint.hash));
            // The entry's key is its current version's id, so comparing it reads the record:
            // the lines the comparison reads are prefetched for every candidate first (a few
            // per record, so that they fit in the core's outstanding misses), then the whole
            // record of each entry found.
            here().for_each(|(hint, _)| {
                if let Some(entry) = map.candidate(hint.hash) {
                    entry.current().prefetch_id();
                }
            });
            for (_, id) in here() {
                if let Some(entry) = map.get(*id) {
                    entry.current().prefetch();
                }
            }
        }
        prefetched
    }

    /// GET: appends metadata and the decrypted secret of the requested version to `out`;
    /// returns that version.
    ///
    /// # Errors
    /// Not found, unauthorized (outside `acl`), expired, version not kept, retired (grace
    /// period over); internal when the ciphertext fails to open. Nothing is appended on error.
    pub fn get(
        &self,
        request: &GetRequest<'_>,
        now_ms: u64,
        acl: &Acl,
        out: &mut BytesMut,
    ) -> Result<u64, OpError> {
        self.get_within(request, now_ms, acl, out, None, &[])
    }

    /// [`Store::get`], from `fetched` if the shard's map does not hold the credential.
    ///
    /// # Errors
    /// As [`Store::get`].
    pub fn get_fetched(
        &self,
        request: &GetRequest<'_>,
        now_ms: u64,
        acl: &Acl,
        out: &mut BytesMut,
        fetched: &Fetched,
    ) -> Result<u64, OpError> {
        self.get_within(request, now_ms, acl, out, None, fetched)
    }

    /// [`Store::get`], refusing with [`OpError::ReplyFull`] (before decrypting anything) a
    /// version whose reply could take more than `bytes_left`.
    fn get_within(
        &self,
        request: &GetRequest<'_>,
        now_ms: u64,
        acl: &Acl,
        out: &mut BytesMut,
        bytes_left: Option<usize>,
        fetched: &Fetched,
    ) -> Result<u64, OpError> {
        let map = self.shards[self.shard_for(request.id)].map.pin();
        let entry = map.get(request.id).or_else(|| find(fetched, request.id)).ok_or(OpError::NotFound)?;
        entry.current().prefetch();
        entry.touch();
        check_access(entry.current(), acl)?;
        check_live(entry, now_ms)?;
        let (record, state) = match request.stage {
            None => entry.find(request.version, now_ms),
            Some(stage) => entry.find_stage(stage, now_ms),
        }
        .ok_or(OpError::VersionNotFound)?;
        match state {
            VersionState::Retired => return Err(OpError::Retired),
            VersionState::Destroyed => return Err(OpError::Destroyed),
            _ => {}
        }
        // A PUT may have moved the credential to another owner or scope: an older version is
        // checked on its own (the current one was checked above).
        if !std::ptr::eq(record, entry.current()) {
            check_access(record, acl)?;
        }
        // The archive holds the ciphertext (as long as the secret) and every metadata field:
        // more than the reply needs, never less.
        if bytes_left
            .is_some_and(|bytes_left| record.archive_bytes().len() + GET_REPLY_SLACK_BYTES > bytes_left)
        {
            return Err(OpError::ReplyFull);
        }
        // Room for the whole reply first: the buffer must not move once it holds the plaintext.
        crate::wipe::reserve(out, record.archive_bytes().len() + GET_REPLY_SLACK_BYTES);
        let start = out.len();
        record.metadata().encode(out);
        record.decrypt_into(&self.keyring, out).inspect_err(|_| out.truncate(start))?;
        Ok(record.version())
    }

    /// GET_META: appends the current version's metadata and every kept version's number,
    /// time and state to `out`; decrypts nothing. Returns the current version.
    ///
    /// # Errors
    /// Not found, unauthorized (outside `acl`), expired.
    pub fn get_meta(
        &self,
        request: &GetMetaRequest<'_>,
        now_ms: u64,
        acl: &Acl,
        out: &mut BytesMut,
    ) -> Result<u64, OpError> {
        self.get_meta_fetched(request, now_ms, acl, out, &[])
    }

    /// [`Store::get_meta`], from `fetched` if the shard's map does not hold the credential.
    ///
    /// # Errors
    /// As [`Store::get_meta`].
    pub fn get_meta_fetched(
        &self,
        request: &GetMetaRequest<'_>,
        now_ms: u64,
        acl: &Acl,
        out: &mut BytesMut,
        fetched: &Fetched,
    ) -> Result<u64, OpError> {
        self.read_live(request.id, now_ms, acl, fetched, |entry| {
            entry.current().metadata().encode(out);
            out.put_u16_le((entry.version_count() + usize::from(entry.pending().is_some())) as u16);
            for (record, state) in entry.listed_versions(now_ms) {
                let metadata = record.metadata();
                VersionInfo { version: metadata.version, created_at_ms: metadata.updated_at_ms, state }
                    .encode(out);
            }
            entry.current().version()
        })
    }

    /// Hands `read` the credential `id` (from `fetched` if the shard's map does not hold it),
    /// marked read, once it is within `acl` and live; returns what `read` returns.
    fn read_live<T>(
        &self,
        id: &str,
        now_ms: u64,
        acl: &Acl,
        fetched: &Fetched,
        read: impl FnOnce(&Entry) -> T,
    ) -> Result<T, OpError> {
        let map = self.shards[self.shard_for(id)].map.pin();
        let entry = map.get(id).or_else(|| find(fetched, id)).ok_or(OpError::NotFound)?;
        entry.touch();
        check_access(entry.current(), acl)?;
        check_live(entry, now_ms)?;
        Ok(read(entry))
    }

    /// GET_POLICY: appends the credential's policy (the defaults if it has none), from
    /// `fetched` if the shard's map does not hold it. Returns the current version.
    ///
    /// # Errors
    /// Not found (or deleted), unauthorized (outside `acl`), expired.
    pub fn get_policy_fetched(
        &self,
        request: &GetPolicyRequest<'_>,
        now_ms: u64,
        acl: &Acl,
        out: &mut BytesMut,
        fetched: &Fetched,
    ) -> Result<u64, OpError> {
        self.read_live(request.id, now_ms, acl, fetched, |entry| {
            entry.policy().map_or(Policy::default(), super::shard::StoredPolicy::wire).encode(out);
            entry.current().version()
        })
    }

    /// BATCH_GET: appends one result per id, in order (`status u8` then a GET reply body or an
    /// error body), and tells `each` every id's outcome. Returns whether any result holds a
    /// secret. Once a secret is in the reply, an id whose result could take the reply past
    /// `reply_bytes_max` is answered [`OpError::ReplyFull`] instead (so the first found id is
    /// always served, and the reply stays bounded whatever the ids ask for). An id the shard's
    /// map lacks is served from `fetched` if it is there.
    // The request, its clock and caller, the reply and its bound, what was read for it, and
    // the per-id callback: each is the call's own, none belongs in a struct of the store's.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_get(
        &self,
        request: &BatchGetRequest<'_>,
        now_ms: u64,
        acl: &Acl,
        out: &mut BytesMut,
        reply_bytes_max: usize,
        fetched: &Fetched,
        mut each: impl FnMut(&str, &Result<u64, OpError>),
    ) -> bool {
        let start = out.len();
        out.put_u16_le(request.len() as u16);
        let mut any_secret = false;
        // The ids' lookups are prefetched a chunk at a time, each chunk before its first id.
        let mut ahead = request.ids();
        for (index, id) in request.ids().enumerate() {
            if index % PREFETCH_IDS_MAX == 0 {
                self.prefetch(ahead.by_ref().take(PREFETCH_IDS_MAX));
            }
            let status_at = out.len();
            out.put_u8(Status::Ok as u8);
            let bytes_left = any_secret.then(|| reply_bytes_max.saturating_sub(out.len() - start));
            let result = self.get_within(&GetRequest::new(id, 0), now_ms, acl, out, bytes_left, fetched);
            each(id, &result);
            match result {
                Ok(_) => any_secret = true,
                Err(error) => {
                    crate::wipe::reserve(out, ERROR_RESULT_BYTES_MAX);
                    out[status_at] = error.status() as u8;
                    out.put_u64_le(error.detail());
                    put_str16(out, error.message());
                }
            }
        }
        any_secret
    }

    /// LIST: appends one page of live credentials matching the owner and/or scope, and the
    /// cursor of the next page. Each shard's index yields at most `limit` items after the
    /// cursor; the pages of all shards are merged in sort order.
    ///
    /// # Errors
    /// [`OpError::InvalidCursor`] for a cursor this query did not produce.
    pub fn list(&self, request: &ListRequest<'_>, now_ms: u64, out: &mut BytesMut) -> Result<(), OpError> {
        let query = ListQuery::new(request)?;
        let limit = request.limit as usize;
        let mut found: Vec<(SortKey, Record)> = Vec::new();
        let mut more_in_some_shard = false;
        for shard in self.shards.iter() {
            let index = shard.index.read().expect("index lock");
            let map = shard.map.pin();
            more_in_some_shard |= index.scan(&query, limit, |id, key| {
                // The index and the map are updated one after the other: trust the map.
                let Some(entry) = map.get(id) else { return false };
                let current = entry.current();
                let credential = current.credential();
                if current.is_expired(now_ms)
                    || entry.is_deleted()
                    || !query.matches(credential.owner.as_str(), credential.scope.as_str())
                {
                    return false;
                }
                found.push((key, entry.current().clone()));
                true
            });
        }
        found.sort_unstable_by(|left, right| left.0.cmp(&right.0));
        let more = more_in_some_shard || found.len() > limit;
        found.truncate(limit);
        self.encode_list(&query, &ListPage { items: found, more }, out);
        Ok(())
    }

    /// LIST from a page read elsewhere (see [`ListPage`]): appends its items and the cursor
    /// of the next page, as [`Store::list`] does.
    ///
    /// # Errors
    /// [`OpError::InvalidCursor`] for a cursor this query did not produce.
    pub fn list_page(
        &self,
        request: &ListRequest<'_>,
        page: &ListPage,
        out: &mut BytesMut,
    ) -> Result<(), OpError> {
        let query = ListQuery::new(request)?;
        self.encode_list(&query, page, out);
        Ok(())
    }

    fn encode_list(&self, query: &ListQuery<'_>, page: &ListPage, out: &mut BytesMut) {
        // A LIST page carries no secret, but earlier replies in the buffer may.
        let item_bytes_max = self.limits.id_bytes_max + 2 * self.limits.name_bytes_max + 3 * 2 + 1 + 2 * 8;
        let cursor_bytes_max = 4 + 5 + self.limits.name_bytes_max + self.limits.id_bytes_max;
        crate::wipe::reserve(out, 2 + page.items.len() * item_bytes_max + cursor_bytes_max);
        out.put_u16_le(page.items.len() as u16);
        for (_, record) in &page.items {
            let credential = record.credential();
            ListItemRef {
                id: credential.id.as_str(),
                owner: credential.owner.as_str(),
                scope: credential.scope.as_str(),
                kind: credential.kind,
                version: credential.version.to_native(),
                expires_at_ms: credential.expires_at_ms.to_native(),
            }
            .encode(out);
        }
        let mut cursor = BytesMut::new();
        if let (true, Some((key, _))) = (page.more, page.items.last()) {
            query.cursor_after(key, &mut cursor);
        }
        put_bytes32(out, &cursor);
    }

    /// Calls `visit` on every current record (snapshots, tests). Holds one shard's guard at a
    /// time; must not be called across an `.await`.
    pub fn for_each_record(&self, mut visit: impl FnMut(&Record)) {
        for shard in self.shards.iter() {
            for entry in shard.map.pin().iter() {
                for record in entry.versions() {
                    visit(record);
                }
            }
        }
    }
}

/// The entry for `id` among `fetched`.
fn find<'a>(fetched: &'a Fetched, id: &str) -> Option<&'a Entry> {
    fetched.iter().find(|(read, _)| &**read == id).map(|(_, entry)| &**entry)
}

/// Refuses a deleted or expired credential (in that order: a deleted one says until when it
/// can be restored).
#[inline]
/// A random, non-zero epoch (0 means "no position" on the wire).
fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    u64::from_le_bytes(bytes).max(1)
}

fn check_live(entry: &Entry, now_ms: u64) -> Result<(), OpError> {
    if let Some(deletion) = entry.deletion() {
        return Err(OpError::Deleted { purge_at_ms: deletion.purge_at_ms });
    }
    if entry.current().is_expired(now_ms) {
        return Err(OpError::Expired);
    }
    Ok(())
}

/// Refuses a record outside the caller's ACL.
pub(super) fn check_access(record: &Record, acl: &Acl) -> Result<(), OpError> {
    if acl.reaches_everything() {
        return Ok(());
    }
    let credential = record.credential();
    if acl.covers(credential.owner.as_str(), credential.scope.as_str()) {
        Ok(())
    } else {
        Err(OpError::Unauthorized("this token may not access this credential (owner or scope)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Permission;
    use crate::crypto::MasterKey;
    use crate::data::Write;
    use crate::time::now_ms;
    use credshard_protocol::op::delete::DeleteRequest;
    use credshard_protocol::{Expiry, Kind, Labels, PutRequest, EMPTY_LABELS};

    /// Submits a write to an in-memory writer, whose outcome is known at once.
    fn apply(writer: &mut ShardWriter, write: Write<'_>, now_ms: u64, acl: &Acl) -> Result<u64, OpError> {
        let (reply, mut outcome) = futures::channel::oneshot::channel();
        writer.submit(write, now_ms, acl, reply);
        outcome.try_recv().expect("not cancelled").expect("answered at once without storage")
    }

    fn store(shards: usize) -> Arc<Store> {
        Arc::new(Store::new(
            shards,
            Keyring::in_memory(MasterKey::generate()),
            Limits::default(),
            Lifecycle::default(),
        ))
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
    fn a_version_written_for_another_owner_stays_out_of_reach() {
        let store = store(1);
        let mut writer = store.claim_writer(0);
        let now = now_ms();
        let moved = PutRequest { owner: "new-owner", ..put("a", b"two", None) };
        apply(&mut writer, Write::Put(&put("a", b"one", None)), now, &Acl::everything()).unwrap();
        apply(&mut writer, Write::Put(&moved), now, &Acl::everything()).unwrap();
        let new_owner = Acl::new(&[Permission::Read], vec!["new-owner".to_owned()], Vec::new());
        let old_owner = Acl::new(&[Permission::Read], vec!["owner".to_owned()], Vec::new());
        let get = |version: u64, acl: &Acl| {
            store.get(&GetRequest::new("a", version), now, acl, &mut BytesMut::new())
        };
        assert_eq!(get(0, &new_owner), Ok(2));
        assert_eq!(get(2, &new_owner), Ok(2));
        assert!(matches!(get(1, &new_owner), Err(OpError::Unauthorized(_))), "the old owner's version");
        assert!(matches!(get(0, &old_owner), Err(OpError::Unauthorized(_))));
        assert!(matches!(get(1, &old_owner), Err(OpError::Unauthorized(_))), "checked on the current");
    }

    #[test]
    fn put_get_cas_delete() {
        let store = store(1);
        let mut writer = store.claim_writer(0);
        let now = now_ms();
        assert_eq!(
            apply(&mut writer, Write::Put(&put("a", b"one", Some(0))), now, &Acl::everything()),
            Ok(1)
        );
        assert_eq!(
            apply(&mut writer, Write::Put(&put("a", b"two", Some(0))), now, &Acl::everything()),
            Err(OpError::VersionConflict { current_version: 1 })
        );
        assert_eq!(
            apply(&mut writer, Write::Put(&put("a", b"two", Some(1))), now, &Acl::everything()),
            Ok(2)
        );
        assert_eq!(apply(&mut writer, Write::Put(&put("a", b"three", None)), now, &Acl::everything()), Ok(3));

        let mut out = BytesMut::new();
        store.get(&GetRequest::new("a", 0), now, &Acl::everything(), &mut out).unwrap();
        assert!(out.ends_with(b"three"));
        out.clear();
        store.get(&GetRequest::new("a", 2), now, &Acl::everything(), &mut out).unwrap();
        assert!(out.ends_with(b"two"), "superseded versions stay readable while kept");
        assert_eq!(
            store.get(&GetRequest::new("a", 9), now, &Acl::everything(), &mut out),
            Err(OpError::VersionNotFound)
        );
        assert_eq!(
            store.get(&GetRequest::new("b", 0), now, &Acl::everything(), &mut out),
            Err(OpError::NotFound)
        );

        let delete = |expected_version| DeleteRequest::new("a", expected_version);
        assert_eq!(
            apply(&mut writer, Write::Delete(&delete(Some(2))), now, &Acl::everything()),
            Err(OpError::VersionConflict { current_version: 3 })
        );
        assert_eq!(apply(&mut writer, Write::Delete(&delete(Some(3))), now, &Acl::everything()), Ok(3));
        let purge_at_ms = now + Lifecycle::default().recovery_window_ms;
        assert_eq!(
            apply(&mut writer, Write::Delete(&delete(None)), now, &Acl::everything()),
            Err(OpError::Deleted { purge_at_ms }),
            "deleted once, recoverable"
        );
        assert_eq!(
            store.get(&GetRequest::new("a", 0), now, &Acl::everything(), &mut out),
            Err(OpError::Deleted { purge_at_ms })
        );
        let purge = DeleteRequest { purge: true, ..delete(None) };
        assert_eq!(apply(&mut writer, Write::Delete(&purge), now, &Acl::everything()), Ok(3));
        assert!(store.is_empty());
        assert_eq!(
            apply(&mut writer, Write::Delete(&purge), now, &Acl::everything()),
            Err(OpError::NotFound)
        );
        assert_eq!(
            apply(&mut writer, Write::Put(&put("a", b"again", Some(0))), now, &Acl::everything()),
            Ok(4),
            "a purged id's versions go on from where they were"
        );
    }

    #[test]
    fn expired_credentials_read_as_expired_and_count_as_absent_for_cas() {
        let store = store(1);
        let mut writer = store.claim_writer(0);
        let mut request = put("t", b"token", None);
        request.expiry = Expiry::TtlMs(1_000);
        assert_eq!(apply(&mut writer, Write::Put(&request), 5_000, &Acl::everything()), Ok(1));
        let mut out = BytesMut::new();
        assert!(store.get(&GetRequest::new("t", 0), 5_999, &Acl::everything(), &mut out).is_ok());
        assert_eq!(
            store.get(&GetRequest::new("t", 0), 6_000, &Acl::everything(), &mut out),
            Err(OpError::Expired)
        );
        assert_eq!(
            store.get_meta(&GetMetaRequest { id: "t" }, 6_000, &Acl::everything(), &mut out),
            Err(OpError::Expired)
        );
        assert_eq!(
            apply(&mut writer, Write::Put(&put("t", b"new", Some(0))), 6_000, &Acl::everything()),
            Ok(2),
            "version numbers are not reused"
        );
    }

    #[test]
    fn a_record_that_fails_authentication_is_an_internal_error_not_garbage() {
        let store = store(1);
        let stranger = Keyring::in_memory(MasterKey::generate());
        let mut writer = store.claim_writer(0);
        apply(&mut writer, Write::Put(&put("x", b"secret", None)), now_ms(), &Acl::everything()).unwrap();
        let fields = crate::data::record::VersionFields {
            version: 2,
            created_at_ms: 1,
            updated_at_ms: 1,
            expires_at_ms: 0,
            previous_grace_until_ms: 0,
        };
        let request = put("x", b"secret", None);
        let foreign =
            Record::seal(crate::data::record::CredentialFields::from(&request), fields, &stranger).unwrap();
        writer.install_for_test("x", foreign);
        let mut out = BytesMut::from(&b"prefix"[..]);
        let error = store.get(&GetRequest::new("x", 0), now_ms(), &Acl::everything(), &mut out).unwrap_err();
        assert_eq!(error.status(), credshard_protocol::Status::Internal);
        assert_eq!(&out[..], b"prefix", "nothing of the failed response is left in the buffer");
        assert!(
            store.get_meta(&GetMetaRequest { id: "x" }, now_ms(), &Acl::everything(), &mut out).is_ok(),
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

    #[test]
    fn prefetching_lookups_changes_no_answer() {
        let store = store(2);
        let mut writers = [store.claim_writer(0), store.claim_writer(1)];
        let now = now_ms();
        let id = |index: usize| {
            if index.is_multiple_of(7) {
                format!("a/credential-id-longer-than-thirty-bytes-{index}")
            } else {
                format!("c/{index}")
            }
        };
        let count = 2 * PREFETCH_MAP_LEN_MIN + 2_000;
        let get = |id: &str| {
            let mut out = BytesMut::new();
            store
                .get(&GetRequest::new(id, 0), now, &Acl::everything(), &mut out)
                .map(|version| (version, out))
        };
        let small = ["c/1", "c/2"];
        for index in 0..count {
            let id = id(index);
            let writer = &mut writers[store.shard_for(&id)];
            apply(writer, Write::Put(&put(&id, id.as_bytes(), None)), now, &Acl::everything()).unwrap();
            if index == 2 {
                assert_eq!(store.prefetch(small), 0, "a map this small is left alone");
            }
        }
        let ids: Vec<String> =
            (0..count).step_by(97).map(id).chain(["absent".to_owned(), "c/1".to_owned()]).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let before: Vec<_> = ids.iter().map(|id| get(id)).collect();
        for chunk in ids.chunks(PREFETCH_IDS_MAX) {
            assert_eq!(store.prefetch(chunk.iter().copied()), chunk.len().min(PREFETCH_IDS_MAX));
        }
        assert_eq!(store.prefetch(ids.iter().copied()), PREFETCH_IDS_MAX, "at most PREFETCH_IDS_MAX at once");
        assert_eq!(store.prefetch(ids[..1].iter().copied()), 0, "one lookup has nothing to overlap with");
        let after: Vec<_> = ids.iter().map(|id| get(id)).collect();
        assert_eq!(before, after);
        assert!(matches!(after[after.len() - 2], Err(OpError::NotFound)));
        assert_eq!(after[after.len() - 1].as_ref().unwrap().0, 1);
        assert_eq!(store.len(), count);
    }
}
