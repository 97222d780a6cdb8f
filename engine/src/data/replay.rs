//! How logged writes come back at start: recovery (in `storage`) reads and checks the logs,
//! and replays their entries through [`Store`]'s implementation of [`Shards`]. The writer
//! installs entries through the same functions, so the history rules are written once.

use super::record::Record;
use super::shard::Entry;
use super::shard::{Deletion, StoredPolicy};
use super::store::Store;
use crate::error::EngineError;
use crate::storage::wal;
use crate::storage::wal::EntryType;
use crate::storage::{Shards, SnapshotItem};
use credshard_protocol::op::policy::Policy;
use credshard_protocol::wire::Reader;
use credshard_protocol::Limits;

impl Shards for Store {
    fn shard_count(&self) -> usize {
        Store::shard_count(self)
    }

    fn credentials(&self) -> usize {
        self.len()
    }

    fn snapshot_items(&self, shard_id: usize) -> Vec<SnapshotItem> {
        let shard = self.shard(shard_id);
        let map = shard.map.pin();
        let mut items = Vec::with_capacity(map.len());
        for entry in map.iter() {
            let id = entry.id();
            // Oldest first, so replay rebuilds the same kept versions; a policy right after the
            // oldest, so the others are kept by its rule (it may keep more than the server's).
            let mut oldest_first = entry.versions().rev();
            let oldest = oldest_first.next().expect("an entry keeps its current version");
            items.push(SnapshotItem::Record(oldest.archive().clone()));
            if let Some(policy) = entry.policy() {
                let mut encoded = Vec::new();
                policy.wire().encode(&mut encoded);
                let body = wal::policy_body(id, oldest.version(), &encoded);
                items.push(SnapshotItem::Entry(EntryType::Policy, body));
            }
            items.extend(oldest_first.map(|record| SnapshotItem::Record(record.archive().clone())));
            if let Some(pending) = entry.pending() {
                items.push(SnapshotItem::Entry(EntryType::Pending, pending.archive_bytes().to_vec()));
            }
            if let Some(deletion) = entry.deletion() {
                let body = wal::soft_delete_body(
                    id,
                    entry.current().version(),
                    deletion.deleted_at_ms,
                    deletion.purge_at_ms,
                );
                items.push(SnapshotItem::Entry(EntryType::SoftDelete, body));
            }
        }
        drop(map);
        for (id, &version) in shard.purged.lock().expect("purged lock").iter() {
            items.push(SnapshotItem::Entry(EntryType::Purge, wal::version_body(id, version)));
        }
        items
    }

    fn replay(
        &self,
        shard_id: usize,
        sources: &[&[wal::Entry<'_>]],
        own_log: bool,
    ) -> Result<usize, EngineError> {
        replay(self, shard_id, sources, own_log)
    }
}

/// Replays `sources` into shard `shard_id`; returns the number of versions the shard keeps.
fn replay(
    store: &Store,
    shard_id: usize,
    sources: &[&[wal::Entry<'_>]],
    own_log: bool,
) -> Result<usize, EngineError> {
    // Size the map once instead of growing (and rehashing) it step by step.
    let entries_total: usize = sources.iter().map(|entries| entries.len()).sum();
    let expected = if own_log { entries_total } else { entries_total / store.shard_count() };
    store.shard(shard_id).map.pin().reserve(expected);
    for entries in sources {
        for entry in entries.iter() {
            match *entry {
                wal::Entry::Record(body) => {
                    let record = Record::from_bytes(body)?;
                    let id = record.credential().id.as_str().to_owned();
                    if store.shard_for(&id) != shard_id {
                        if own_log {
                            return Err(EngineError::Corrupt(format!(
                                "log of shard {shard_id} holds {id:?} of another shard"
                            )));
                        }
                        continue;
                    }
                    let map = store.shard(shard_id).map.pin();
                    let existing = map.get(id.as_str());
                    // A snapshot is taken while writes go on into the next segment, so that
                    // segment may repeat versions the snapshot already holds: skip them.
                    if existing.is_some_and(|entry| entry.current().version() >= record.version()) {
                        continue;
                    }
                    // Nor versions of a credential purged since (the purge follows them).
                    if existing.is_none() && record.version() <= store.shard(shard_id).purged_version(&id) {
                        continue;
                    }
                    // The same history rule as at run time: the previous versions are kept
                    // unless the credential had expired or was deleted when this version was
                    // written.
                    let written_at_ms = record.credential().updated_at_ms.to_native();
                    let live = existing
                        .filter(|entry| !entry.current().is_expired(written_at_ms) && !entry.is_deleted());
                    install_entry(store, shard_id, &id, record, live, existing, false);
                }
                wal::Entry::Delete(id) => {
                    if store.shard_for(id) == shard_id {
                        remove_entry(store, shard_id, id);
                    }
                }
                wal::Entry::SoftDelete { id, version, deleted_at_ms, purge_at_ms } => {
                    if store.shard_for(id) == shard_id {
                        set_deletion(
                            store,
                            shard_id,
                            id,
                            version,
                            Some(Deletion { deleted_at_ms, purge_at_ms }),
                        );
                    }
                }
                wal::Entry::Undelete { id, version } => {
                    if store.shard_for(id) == shard_id {
                        set_deletion(store, shard_id, id, version, None);
                    }
                }
                wal::Entry::Purge { id, version } => {
                    if store.shard_for(id) == shard_id {
                        let shard = store.shard(shard_id);
                        let last = shard.map.pin().get(id).map(Entry::last_version);
                        if last.is_some_and(|last| last <= version) {
                            remove_entry(store, shard_id, id);
                        }
                        shard.note_purged(id, version);
                    }
                }
                wal::Entry::Pending(body) => {
                    let record = Record::from_bytes(body)?;
                    if store.shard_for(record.credential().id.as_str()) == shard_id {
                        set_pending(store, shard_id, record);
                    }
                }
                wal::Entry::Promote(body) => {
                    let record = Record::from_bytes(body)?;
                    if store.shard_for(record.credential().id.as_str()) == shard_id {
                        promote(store, shard_id, record);
                    }
                }
                wal::Entry::Policy { id, version, policy } => {
                    let current =
                        store.shard(shard_id).map.pin().get(id).map(|entry| entry.current().version());
                    // Only where it was set: a log that repeats what a snapshot holds must not
                    // apply an older policy again (nor one of a credential purged since).
                    if store.shard_for(id) == shard_id && current == Some(version) {
                        let policy =
                            Policy::decode(&mut Reader::new(policy), &Limits::client()).map_err(|error| {
                                EngineError::Corrupt(format!("a logged policy of {id:?}: {error}"))
                            })?;
                        set_policy(store, shard_id, id, StoredPolicy::of(&policy));
                    }
                }
                wal::Entry::Rewrap(body) => {
                    let record = Record::from_bytes(body)?;
                    if store.shard_for(record.credential().id.as_str()) == shard_id {
                        // The version may be gone since (deleted, expired, or no longer kept).
                        replace_version(store, shard_id, record);
                    }
                }
            }
        }
    }
    Ok(store.shard(shard_id).rebuild_index())
}

/// Swaps in a new entry for `id` holding `record` and up to `max_versions - 1` of the live
/// entry's versions, and (with `maintain_index`) brings the shard's index up to date. Used by
/// the writer and by recovery (which runs before any writer exists and rebuilds the index in
/// bulk at the end).
pub(super) fn install_entry(
    store: &Store,
    shard_id: usize,
    id: &str,
    record: Record,
    live: Option<&Entry>,
    existing: Option<&Entry>,
    maintain_index: bool,
) {
    let policy = existing.and_then(Entry::policy).cloned();
    let max_versions = policy.as_ref().map_or(store.lifecycle().max_versions, |policy| {
        policy.max_versions_or(store.lifecycle().max_versions)
    });
    let previous_version = existing.map_or(0, |entry| entry.current().version());
    assert!(record.version() > previous_version, "versions of a credential are strictly increasing");
    // The kept versions' counts are scattered lines that the clones below write: requested
    // together, their misses overlap.
    live.iter().flat_map(|live| live.versions().take(max_versions - 1)).for_each(Record::prefetch_count);
    let older = live.into_iter().flat_map(|live| live.versions().take(max_versions - 1).cloned());
    let entry = Entry::new(std::iter::once(record).chain(older)).with_policy(policy);
    // The map files the entry under its current record's id.
    debug_assert_eq!(entry.id(), id);
    let shard = store.shard(shard_id);
    // A deleted credential is out of the index: writing it again puts it back.
    if maintain_index {
        shard.reindex(id, existing, &entry);
    }
    if existing.is_none() {
        // The purged id lives again: its versions carry the count on from here.
        shard.purged.lock().expect("purged lock").remove(id);
    }
    shard.map.pin().insert(entry);
}

/// Replaces the kept (or pending) version of `record`'s id and version with `record` (a
/// DESTROY, and recovery of a logged REWRAP); does nothing when that version is no longer
/// kept.
pub(super) fn replace_version(store: &Store, shard_id: usize, record: Record) {
    let map = store.shard(shard_id).map.pin();
    let Some(entry) = map.get(record.credential().id.as_str()) else { return };
    if entry.pending().is_some_and(|pending| same_version(pending, &record)) {
        map.insert(entry.snapshot().with_pending(Some(record)));
        return;
    }
    let Some(position) = entry.versions().position(|kept| same_version(kept, &record)) else {
        return;
    };
    let mut versions: Vec<Record> = entry.versions().cloned().collect();
    versions[position] = record;
    map.insert(entry.with_versions(versions));
}

/// Gives `id` `policy` (`None`: the defaults), dropping the oldest kept versions past its
/// `max_versions` (the writer's SET_POLICY, and recovery of a logged POLICY); does nothing
/// when the credential is gone.
pub(super) fn set_policy(store: &Store, shard_id: usize, id: &str, policy: Option<StoredPolicy>) {
    let map = store.shard(shard_id).map.pin();
    let Some(entry) = map.get(id) else { return };
    let default = store.lifecycle().max_versions;
    let max_versions = policy.as_ref().map_or(default, |policy| policy.max_versions_or(default));
    let kept = entry.versions().take(max_versions).cloned();
    map.insert(entry.with_versions(kept).with_policy(policy));
}

/// Whether `replacement` (a rewrap or a destroyed husk) is `kept` with other ciphertext: the
/// same number and the same fields around it. A pending version rewrapped and then promoted
/// has the number of the promoted one but not its grace deadline, so a logged rewrap of it
/// never overwrites the version it became.
fn same_version(kept: &Record, replacement: &Record) -> bool {
    let (kept, replacement) = (kept.credential(), replacement.credential());
    kept.version == replacement.version
        && kept.updated_at_ms == replacement.updated_at_ms
        && kept.previous_grace_until_ms == replacement.previous_grace_until_ms
}

/// Makes `record` its credential's pending version (recovery of a logged PENDING), unless the
/// credential is gone or has used its version number already (a snapshot holds it, or a
/// later write dropped it).
fn set_pending(store: &Store, shard_id: usize, record: Record) {
    let map = store.shard(shard_id).map.pin();
    let Some(entry) = map.get(record.credential().id.as_str()) else { return };
    if record.version() > entry.last_version() {
        map.insert(entry.snapshot().with_pending(Some(record)));
    }
}

/// Makes the pending version `record` names current, as the writer's PROMOTE did (recovery of
/// a logged PROMOTE); does nothing unless that version is still pending.
fn promote(store: &Store, shard_id: usize, record: Record) {
    let id = record.credential().id.as_str().to_owned();
    let map = store.shard(shard_id).map.pin();
    let Some(entry) = map.get(id.as_str()) else { return };
    if entry.pending().is_some_and(|pending| pending.version() == record.version()) {
        install_entry(store, shard_id, &id, record, Some(entry), Some(entry), false);
    }
}

/// Marks `id` deleted (`Some`) or live again (`None`) if its current version is `version`
/// (recovery of a logged SOFT_DELETE or UNDELETE; the index is rebuilt after replay).
fn set_deletion(store: &Store, shard_id: usize, id: &str, version: u64, deletion: Option<Deletion>) {
    let map = store.shard(shard_id).map.pin();
    let Some(entry) = map.get(id) else { return };
    if entry.current().version() == version {
        map.insert(entry.snapshot().with_deletion(deletion));
    }
}

/// Removes `id` from the shard's map and index (recovery of a logged DELETE).
fn remove_entry(store: &Store, shard_id: usize, id: &str) {
    let shard = store.shard(shard_id);
    let map = shard.map.pin();
    if let Some(entry) = map.get(id) {
        let credential = entry.current().credential();
        shard.index.write().expect("index lock").remove(
            credential.owner.as_str(),
            credential.scope.as_str(),
            id,
        );
        map.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Keyring, MasterKey};
    use crate::data::record::{CredentialFields, VersionFields};
    use crate::data::Lifecycle;
    use credshard_protocol::{Limits, EMPTY_LABELS};

    fn record(store: &Store, version: u64) -> Record {
        let secret = format!("v{version}");
        let fields = CredentialFields {
            id: "db",
            owner: "team",
            scope: "prod",
            kind: 0,
            labels: EMPTY_LABELS,
            secret: secret.as_bytes(),
        };
        let version_fields = VersionFields {
            version,
            created_at_ms: 1_000,
            updated_at_ms: 1_000 + version,
            expires_at_ms: 0,
            previous_grace_until_ms: 0,
        };
        Record::seal(fields, version_fields, store.keyring()).unwrap()
    }

    fn policy(max_versions: u16, version: u64) -> Vec<u8> {
        let mut encoded = Vec::new();
        Policy { max_versions, ..Policy::default() }.encode(&mut encoded);
        wal::policy_body("db", version, &encoded)
    }

    fn kept(store: &Store) -> Vec<u64> {
        store.shard(0).map.pin().get("db").unwrap().versions().map(Record::version).collect()
    }

    /// A log segment written while a snapshot was taken repeats entries the snapshot holds:
    /// replaying them after it must change nothing. A policy names the version it was set at,
    /// so an older one is not applied again over the history a later one kept.
    #[test]
    fn a_snapshot_followed_by_a_log_that_repeats_older_policies_replays_to_the_same_state() {
        let lifecycle = Lifecycle { max_versions: 3, ..Lifecycle::default() };
        let new_store =
            || Store::new(1, Keyring::in_memory(MasterKey::generate()), Limits::default(), lifecycle);
        let first = new_store();
        let records: Vec<Record> = (1..=18).map(|version| record(&first, version)).collect();
        let (narrow, wide) = (policy(2, 8), policy(10, 8));
        let mut log: Vec<wal::Entry<'_>> =
            records[..8].iter().map(|record| wal::Entry::Record(record.archive_bytes())).collect();
        log.push(parse_policy(&narrow));
        log.push(parse_policy(&wide));
        log.extend(records[8..].iter().map(|record| wal::Entry::Record(record.archive_bytes())));
        first.replay(0, &[&log], true).unwrap();
        assert_eq!(kept(&first), (9..=18).rev().collect::<Vec<_>>(), "ten kept by the wider policy");

        // The snapshot, then the part of the log it already holds, again.
        let snapshot: Vec<Vec<u8>> = first
            .snapshot_items(0)
            .into_iter()
            .map(|item| {
                let mut payload = Vec::new();
                item.encode(&mut payload);
                payload
            })
            .collect();
        let batches: Vec<Vec<u8>> = snapshot.iter().map(|payload| wal::encode_batch(payload)).collect();
        let mut entries: Vec<wal::Entry<'_>> =
            batches.iter().flat_map(|batch| wal::parse(batch).unwrap().entries).collect();
        entries.push(parse_policy(&narrow));
        entries.push(parse_policy(&wide));
        entries.extend(records[12..].iter().map(|record| wal::Entry::Record(record.archive_bytes())));
        // Replay reads archives, never secrets: another key ring will do.
        let second = new_store();
        second.replay(0, &[&entries], true).unwrap();
        assert_eq!(kept(&second), kept(&first));
        assert_eq!(second.shard(0).map.pin().get("db").unwrap().policy().unwrap().max_versions, 10);
    }

    /// A data-key rotation rewrapped a pending version, which was then promoted (sealed again
    /// with its grace deadline): a log that repeats the rewrap after a snapshot must not put the
    /// pending record back over the promoted one.
    #[test]
    fn a_repeated_rewrap_of_a_pending_version_leaves_the_version_it_was_promoted_to() {
        let lifecycle = Lifecycle { max_versions: 3, ..Lifecycle::default() };
        let new_store =
            || Store::new(1, Keyring::in_memory(MasterKey::generate()), Limits::default(), lifecycle);
        let first = new_store();
        let (current, pending) = (record(&first, 1), record(&first, 2));
        let rewrapped = pending.rewrap(first.keyring()).unwrap();
        let promoted = rewrapped.promoted(first.keyring(), 5_000).unwrap();
        let log = [
            wal::Entry::Record(current.archive_bytes()),
            wal::Entry::Pending(pending.archive_bytes()),
            wal::Entry::Rewrap(rewrapped.archive_bytes()),
            wal::Entry::Promote(promoted.archive_bytes()),
        ];
        first.replay(0, &[&log], true).unwrap();
        let grace = |store: &Store| {
            store
                .shard(0)
                .map
                .pin()
                .get("db")
                .unwrap()
                .current()
                .credential()
                .previous_grace_until_ms
                .to_native()
        };
        assert_eq!(grace(&first), 5_000);
        let batches: Vec<Vec<u8>> = first
            .snapshot_items(0)
            .into_iter()
            .map(|item| {
                let mut payload = Vec::new();
                item.encode(&mut payload);
                wal::encode_batch(&payload)
            })
            .collect();
        let mut entries: Vec<wal::Entry<'_>> =
            batches.iter().flat_map(|batch| wal::parse(batch).unwrap().entries).collect();
        entries.extend_from_slice(&log[1..]);
        let second = new_store();
        second.replay(0, &[&entries], true).unwrap();
        assert_eq!(grace(&second), 5_000, "the promoted version, with its grace deadline");
        assert_eq!(kept(&second), vec![2, 1]);
    }

    fn parse_policy(body: &[u8]) -> wal::Entry<'_> {
        let version = u64::from_le_bytes(body[..8].try_into().unwrap());
        let id_end = 10 + u16::from_le_bytes(body[8..10].try_into().unwrap()) as usize;
        wal::Entry::Policy {
            id: std::str::from_utf8(&body[10..id_end]).unwrap(),
            version,
            policy: &body[id_end..],
        }
    }
}
