//! A shard: one wait-free map (papaya) from credential id to its kept versions, and the
//! secondary index that serves LIST.
//!
//! Reads pin the map and work on the entry under the guard, from any executor. Writes happen
//! only through the shard's [`ShardWriter`](super::ShardWriter). Each write installs a new
//! immutable [`Entry`]; kept versions are shared between entries (a [`Record`] is a handle to
//! shared bytes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use credshard_protocol::op::get::Stage;
use credshard_protocol::op::policy::Policy;
use credshard_protocol::Labels;
use credshard_protocol::VersionState;

use super::feed::{Feed, FEED_EVENTS_DEFAULT};
use super::index::ShardIndex;
use super::record::Record;

/// What a shard's map holds for one credential: its kept versions, newest (current) first.
/// The current version's handle is held inline, so a GET goes from the map's node straight to
/// the version's bytes; the map is a set of entries keyed by that version's id (see
/// [`Entry::id`]), so the node holds no copy of the id.
#[derive(Debug)]
pub struct Entry {
    /// Its handle's mark says whether the entry was read since the cache's eviction clock last
    /// passed it (a bounded cache only, see `ShardWriter`): set by readers on any executor,
    /// cleared by the shard's writer. Its handle's flag says whether `rest` holds anything
    /// aside (a deletion, a pending version, a policy), so that a GET of a credential with
    /// older versions and nothing aside never loads `rest`. (Both in the handle's spare bytes.)
    current: Record,
    /// What a credential with one version and nothing aside does not have: older kept
    /// versions, a deletion, a pending version, a policy. `None` for most.
    rest: Option<Box<Rest>>,
}

// The map's node is the entry alone: 24 bytes, 32 with glibc's header (its smallest chunk),
// where a node of a 32-byte inline id and a 40-byte entry took 80.
const _: () = assert!(std::mem::size_of::<Entry>() == 24);

/// The parts of an [`Entry`] beyond its current version.
#[derive(Debug, Default)]
struct Rest {
    /// Older kept versions, newest first.
    older: Box<[Record]>,
    aside: Aside,
}

impl Drop for Rest {
    fn drop(&mut self) {
        // The older versions' counts are scattered lines that dropping their handles writes:
        // requested together, their misses overlap.
        self.older.iter().for_each(Record::prefetch_count);
    }
}

/// The rarer parts of an [`Entry`].
#[derive(Debug, Clone, Default)]
struct Aside {
    /// Set while the credential is deleted and recoverable: readers treat it as absent.
    deletion: Option<Deletion>,
    /// A version STAGE wrote and PROMOTE has not made current: newer than every kept version,
    /// readable by stage or number, never as current.
    pending: Option<Record>,
    /// Set by SET_POLICY (`None`: the server's defaults).
    policy: Option<StoredPolicy>,
}

impl Aside {
    fn is_empty(&self) -> bool {
        self.deletion.is_none() && self.pending.is_none() && self.policy.is_none()
    }
}

/// A credential's policy as a shard holds it (see `credshard_protocol::op::policy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    /// Versions kept, current included (0: the server's).
    pub max_versions: u16,
    pub cas_required: bool,
    /// A version other than the current one retires this long after it was written (0: never).
    pub delete_version_after_ms: u64,
    /// Custom metadata in the labels encoding (validated).
    pub metadata: Box<[u8]>,
}

impl StoredPolicy {
    /// The policy a request or a log entry carries; `None` for the defaults.
    pub fn of(policy: &Policy<'_>) -> Option<StoredPolicy> {
        (!policy.is_default()).then(|| StoredPolicy {
            max_versions: policy.max_versions,
            cas_required: policy.cas_required,
            delete_version_after_ms: policy.delete_version_after_seconds.saturating_mul(1000),
            metadata: policy.metadata.encoded().into(),
        })
    }

    /// Its wire form.
    pub fn wire(&self) -> Policy<'_> {
        Policy {
            max_versions: self.max_versions,
            cas_required: self.cas_required,
            delete_version_after_seconds: self.delete_version_after_ms / 1000,
            metadata: Labels::from_validated(&self.metadata),
        }
    }

    /// The versions a credential with this policy keeps, given the server's default.
    pub fn max_versions_or(&self, default: usize) -> usize {
        match self.max_versions {
            0 => default,
            max_versions => max_versions.into(),
        }
    }
}

/// What a credential has beside its kept versions, as a shared database gives it
/// (`ShardWriter::install_fetched`).
#[derive(Clone, Debug, Default)]
pub struct FetchedState {
    pub deletion: Option<Deletion>,
    pub pending: Option<Record>,
    pub policy: Option<StoredPolicy>,
    /// For an id the database does not hold: its last version before it was purged (0: never
    /// purged).
    pub purged_version: u64,
}

/// When a credential was deleted, and when it is purged unless UNDELETE brings it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub deleted_at_ms: u64,
    pub purge_at_ms: u64,
}

impl Entry {
    /// An entry of `versions`, newest (current) first.
    pub(super) fn new(versions: impl IntoIterator<Item = Record>) -> Entry {
        let mut versions = versions.into_iter();
        let mut current = versions.next().expect("an entry keeps at least its current version");
        current.set_flag(false);
        current.set_mark();
        let older: Box<[Record]> = versions.collect();
        let rest = (!older.is_empty()).then(|| Box::new(Rest { older, aside: Aside::default() }));
        let entry = Entry { current, rest };
        debug_assert!(
            entry
                .versions()
                .zip(entry.versions().skip(1))
                .all(|(newer, older)| newer.version() > older.version()),
            "newest first"
        );
        entry
    }

    /// An entry of the kept versions read from a shared database (oldest first) and the state
    /// beside them, as the shard would hold them.
    ///
    /// # Panics
    /// If `records` is empty.
    pub fn of_fetched(records: &[Record], state: &FetchedState) -> Entry {
        Entry::new(records.iter().rev().cloned())
            .with_policy(state.policy.clone())
            .with_pending(state.pending.clone())
            .with_deletion(state.deletion)
    }

    /// A copy of the entry (its versions are shared handles).
    pub fn snapshot(&self) -> Entry {
        self.with_versions(self.versions().cloned())
    }

    /// An entry of `versions` (newest first) with this one's deletion and pending version.
    pub(super) fn with_versions(&self, versions: impl IntoIterator<Item = Record>) -> Entry {
        Entry::new(versions).with_aside(self.aside())
    }

    /// The same versions with `aside`.
    fn with_aside(mut self, aside: Aside) -> Entry {
        match (self.rest.as_deref_mut(), aside.is_empty()) {
            (Some(rest), _) => rest.aside = aside,
            (None, false) => self.rest = Some(Box::new(Rest { older: Box::default(), aside })),
            (None, true) => {}
        }
        if self.rest.as_ref().is_some_and(|rest| rest.older.is_empty() && rest.aside.is_empty()) {
            self.rest = None;
        }
        let has_aside = self.rest.as_ref().is_some_and(|rest| !rest.aside.is_empty());
        self.current.set_flag(has_aside);
        self
    }

    /// The rarer parts, if the entry has any (its current handle's flag says so first: a GET
    /// reads them through here, and loads nothing for a credential with none).
    #[inline]
    fn aside_ref(&self) -> Option<&Aside> {
        if !self.current.flag() {
            return None;
        }
        self.rest.as_deref().map(|rest| &rest.aside)
    }

    fn aside(&self) -> Aside {
        self.aside_ref().cloned().unwrap_or_default()
    }

    fn older(&self) -> &[Record] {
        self.rest.as_ref().map_or(&[], |rest| &rest.older)
    }

    /// The credential's id (its current version's): the map's key.
    #[inline]
    pub fn id(&self) -> &str {
        self.current.credential().id.as_str()
    }

    /// The same versions, deleted (`Some`) or live (`None`).
    pub(super) fn with_deletion(self, deletion: Option<Deletion>) -> Entry {
        let aside = Aside { deletion, ..self.aside() };
        self.with_aside(aside)
    }

    /// The same versions with `pending` as the pending version (`None`: none).
    pub(super) fn with_pending(self, pending: Option<Record>) -> Entry {
        debug_assert!(pending.as_ref().is_none_or(|pending| pending.version() > self.current.version()));
        let aside = Aside { pending, ..self.aside() };
        self.with_aside(aside)
    }

    /// `Some` while the credential is deleted and recoverable.
    #[inline]
    pub fn deletion(&self) -> Option<Deletion> {
        self.aside_ref().and_then(|aside| aside.deletion)
    }

    /// True while the credential is deleted and recoverable.
    #[inline]
    pub fn is_deleted(&self) -> bool {
        self.deletion().is_some()
    }

    /// Where LIST finds the credential: its owner and scope, `None` while it is deleted.
    pub fn listed(&self) -> Option<(&str, &str)> {
        let credential = self.current.credential();
        (!self.is_deleted()).then(|| (credential.owner.as_str(), credential.scope.as_str()))
    }

    /// The same versions with `policy` (`None`: the server's defaults).
    pub(super) fn with_policy(self, policy: Option<StoredPolicy>) -> Entry {
        let aside = Aside { policy, ..self.aside() };
        self.with_aside(aside)
    }

    /// The credential's policy, if SET_POLICY gave it one.
    #[inline]
    pub fn policy(&self) -> Option<&StoredPolicy> {
        self.aside_ref().and_then(|aside| aside.policy.as_ref())
    }

    /// The version STAGE wrote and PROMOTE has not made current yet, if any.
    #[inline]
    pub fn pending(&self) -> Option<&Record> {
        self.aside_ref().and_then(|aside| aside.pending.as_ref())
    }

    /// The highest version number the credential has used: the pending version's, else the
    /// current one's. A new version takes the next.
    pub fn last_version(&self) -> u64 {
        self.pending().map_or(self.current.version(), Record::version)
    }

    /// Marks the entry as read, for the eviction clock. A plain load first: the line is
    /// written only when the bit was clear, so reads of a hot entry on several cores do not
    /// bounce its cache line.
    #[inline]
    pub fn touch(&self) {
        self.current.set_mark();
    }

    /// Clears the read mark; returns whether it was set (the entry gets a second chance).
    pub(super) fn take_reference(&self) -> bool {
        self.current.take_mark()
    }

    /// The version GET returns when no version is given.
    #[inline]
    pub fn current(&self) -> &Record {
        &self.current
    }

    /// How many versions are kept.
    pub fn version_count(&self) -> usize {
        1 + self.older().len()
    }

    /// The kept version at `index`, newest (current, 0) first.
    pub fn version(&self, index: usize) -> Option<&Record> {
        match index {
            0 => Some(&self.current),
            _ => self.older().get(index - 1),
        }
    }

    /// Kept versions, newest first.
    pub fn versions(&self) -> impl DoubleEndedIterator<Item = &Record> + ExactSizeIterator + Clone + '_ {
        (0..self.version_count())
            .map(move |index| if index == 0 { &self.current } else { &self.older()[index - 1] })
    }

    /// The state of the kept version at `index` (0 is current): destroyed if DESTROY erased
    /// it, otherwise derived from the version that replaced it: a ROTATE records the replaced
    /// version's grace deadline, a PUT records 0.
    pub fn state(&self, index: usize, now_ms: u64) -> VersionState {
        if self.version(index).is_some_and(Record::is_destroyed) {
            return VersionState::Destroyed;
        }
        if index == 0 {
            return VersionState::Current;
        }
        let retire_after_ms = self.policy().map_or(0, |policy| policy.delete_version_after_ms);
        let written_at_ms =
            self.version(index).expect("a kept version").credential().updated_at_ms.to_native();
        if retire_after_ms != 0 && now_ms >= written_at_ms.saturating_add(retire_after_ms) {
            return VersionState::Retired;
        }
        let newer = self.version(index - 1).expect("a kept version");
        match newer.credential().previous_grace_until_ms.to_native() {
            0 => VersionState::Superseded,
            grace_until_ms if now_ms < grace_until_ms => VersionState::PreviousInGrace,
            _ => VersionState::Retired,
        }
    }

    /// A kept version by number (0 for current), or the pending one, with its state.
    pub fn find(&self, version: u64, now_ms: u64) -> Option<(&Record, VersionState)> {
        if version == 0 {
            return Some((self.current(), self.state(0, now_ms)));
        }
        if let Some(pending) = self.pending().filter(|pending| pending.version() == version) {
            return Some((pending, VersionState::Pending));
        }
        let index = self.versions().position(|record| record.version() == version)?;
        Some((self.version(index).expect("a kept version"), self.state(index, now_ms)))
    }

    /// The version in `stage`, with its state: the current one, the pending one, or the kept
    /// version right below the current one.
    pub fn find_stage(&self, stage: Stage, now_ms: u64) -> Option<(&Record, VersionState)> {
        match stage {
            Stage::Current => self.find(0, now_ms),
            Stage::Pending => self.pending().map(|pending| (pending, VersionState::Pending)),
            Stage::Previous => self.version(1).map(|previous| (previous, self.state(1, now_ms))),
        }
    }

    /// Every version GET_META lists, newest first: the pending one (if any), then the kept
    /// ones, each with its state.
    pub fn listed_versions(&self, now_ms: u64) -> impl Iterator<Item = (&Record, VersionState)> + '_ {
        let pending = self.pending().map(|pending| (pending, VersionState::Pending));
        pending.into_iter().chain(
            self.versions().enumerate().map(move |(index, record)| (record, self.state(index, now_ms))),
        )
    }
}

// The map is a set of entries, each found by its id: an entry hashes and compares as its id's
// `str`, so that a lookup by `&str` finds it. Every entry's current version carries the id.
impl std::borrow::Borrow<str> for Entry {
    /// The id, for the map's comparisons: its bytes are at the archive's start and the root
    /// that points to them at its end, so the first line is requested before the root is read
    /// and the two misses overlap instead of following one another.
    #[inline]
    fn borrow(&self) -> &str {
        self.current.prefetch_start();
        self.id()
    }
}

impl std::hash::Hash for Entry {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl PartialEq for Entry {
    #[inline]
    fn eq(&self, other: &Entry) -> bool {
        self.id() == other.id()
    }
}

impl Eq for Entry {}

/// A shard's map: its entries, found by id. Writes rely on `insert` of an entry replacing the
/// equal one there (the node, key included): papaya's code does so, though its doc comment says
/// otherwise (vendor/papaya/VENDORED.md; `entries_hash_compare_and_are_found_as_their_id`).
pub(crate) type ShardMap = papaya::HashSet<Entry, ahash::RandomState>;
/// The map, pinned.
pub(crate) type PinnedMap<'map> =
    papaya::HashSetRef<'map, Entry, ahash::RandomState, papaya::LocalGuard<'map>>;

pub struct Shard {
    pub shard_id: usize,
    pub(crate) map: ShardMap,
    /// LIST's index. Written only by the shard's writer; read by LIST on any executor.
    pub(crate) index: RwLock<ShardIndex>,
    /// True while the map holds every credential of the shard, so that an id it lacks does
    /// not exist: always with the embedded store; with a bounded cache until its first
    /// eviction (or a start with more credentials than fit).
    pub(crate) complete: AtomicBool,
    /// Credentials evicted from a bounded cache (written by the shard's writer only).
    pub(crate) evictions: AtomicU64,
    /// The last version of each purged credential (DELETE with purge, the end of a recovery
    /// window, an expiry sweep), so that one written again continues after it: a version
    /// number never names two writes of one id. Written by replay and the shard's writer.
    pub(crate) purged: Mutex<HashMap<Box<str>, u64>>,
    /// The shard's recent changes, for WATCH (appended by the shard's writer).
    pub feed: Feed,
}

impl Shard {
    pub(crate) fn new(shard_id: usize) -> Shard {
        Shard {
            shard_id,
            map: papaya::HashSet::with_hasher(ahash::RandomState::new()),
            index: RwLock::new(ShardIndex::default()),
            complete: AtomicBool::new(true),
            evictions: AtomicU64::new(0),
            purged: Mutex::new(HashMap::new()),
            feed: Feed::new(FEED_EVENTS_DEFAULT),
        }
    }

    /// Moves `id` in the LIST index from where `old` listed it (if anywhere) to where `new`
    /// does; takes the index's lock only when that changes.
    pub(crate) fn reindex(&self, id: &str, old: Option<&Entry>, new: &Entry) {
        let (old, new) = (old.and_then(Entry::listed), new.listed());
        if old == new {
            return;
        }
        let mut index = self.index.write().expect("index lock");
        if let Some((owner, scope)) = old {
            index.remove(owner, scope, id);
        }
        if let Some((owner, scope)) = new {
            index.insert(owner, scope, id);
        }
    }

    /// Rebuilds the LIST index from the map in one sorted bulk build (after recovery, which
    /// installs entries without maintaining it). Returns the number of kept versions.
    pub(crate) fn rebuild_index(&self) -> usize {
        let map = self.map.pin();
        let mut versions = 0;
        let keys = map.iter().filter_map(|entry| {
            versions += entry.version_count();
            // A deleted credential is out of LIST until UNDELETE brings it back.
            entry.listed().map(|(owner, scope)| (owner, scope, entry.id()))
        });
        *self.index.write().expect("index lock") = ShardIndex::build(keys);
        versions
    }

    /// The last version of `id` before it was purged (0: never purged, or never existed).
    pub(crate) fn purged_version(&self, id: &str) -> u64 {
        self.purged.lock().expect("purged lock").get(id).copied().unwrap_or(0)
    }

    /// Remembers that `id` was purged at `version` (keeps the higher of two).
    pub(crate) fn note_purged(&self, id: &str, version: u64) {
        let mut purged = self.purged.lock().expect("purged lock");
        match purged.get_mut(id) {
            Some(last) => *last = (*last).max(version),
            None => {
                purged.insert(id.into(), version);
            }
        }
    }

    /// Whether an id missing from the map may still exist (a bounded cache that has evicted).
    #[inline]
    pub fn is_partial(&self) -> bool {
        !self.complete.load(Ordering::Acquire)
    }

    /// Credentials held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Keyring, MasterKey};
    use crate::data::record::{CredentialFields, VersionFields};
    use credshard_protocol::EMPTY_LABELS;
    use std::hash::BuildHasher;

    fn record(keyring: &Keyring, id: &str, version: u64) -> Record {
        let credential = CredentialFields {
            id,
            owner: "team-a",
            scope: "prod",
            kind: 1,
            labels: EMPTY_LABELS,
            secret: b"s3cret",
        };
        let fields = VersionFields {
            version,
            created_at_ms: 10,
            updated_at_ms: 20 + version,
            expires_at_ms: 0,
            previous_grace_until_ms: 0,
        };
        Record::seal(credential, fields, keyring).unwrap()
    }

    #[test]
    fn entries_hash_compare_and_are_found_as_their_id() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let hasher = ahash::RandomState::new();
        let long = "x".repeat(100);
        let map = ShardMap::with_hasher(hasher.clone());
        for id in ["", "a", "loadgen-12345", long.as_str()] {
            let entry = Entry::new([record(&keyring, id, 1)]);
            assert_eq!(entry.id(), id);
            assert_eq!(hasher.hash_one(&entry), hasher.hash_one(id), "{id:?}");
            assert!(map.pin().insert(entry), "a new id");
        }
        let map = map.pin();
        assert_eq!(map.len(), 4);
        assert_eq!(map.get(long.as_str()).map(Entry::id), Some(long.as_str()));
        assert_eq!(map.get("loadgen-1234"), None, "a prefix is another id");
        // A newer entry of an id replaces the one there (its key too: the new current version).
        assert!(!map.insert(Entry::new([record(&keyring, "a", 2), record(&keyring, "a", 1)])));
        let entry = map.get("a").unwrap();
        assert_eq!((map.len(), entry.current().version(), entry.version_count()), (4, 2, 2));
        // The prefetch steps' candidate is the entry itself when no other id shares its slot.
        let hash = map.set().hash_key("loadgen-12345");
        map.prefetch_slot(hash);
        map.prefetch_entry(hash);
        assert_eq!(map.candidate(hash).map(Entry::id), Some("loadgen-12345"));
        assert!(map.remove("a") && map.get("a").is_none() && map.len() == 3);
    }

    #[test]
    fn an_entry_of_one_version_with_nothing_aside_has_no_rest() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let entry = Entry::new([record(&keyring, "db", 1)]);
        assert!(entry.rest.is_none());
        let deletion = Deletion { deleted_at_ms: 1, purge_at_ms: 2 };
        let deleted = entry.snapshot().with_deletion(Some(deletion));
        assert_eq!(
            (deleted.deletion(), deleted.is_deleted(), deleted.listed()),
            (Some(deletion), true, None)
        );
        let restored = deleted.with_deletion(None);
        assert!(restored.rest.is_none() && !restored.is_deleted(), "the rest goes with the deletion");
        assert_eq!(restored.listed(), Some(("team-a", "prod")));
        // Two versions and a pending one; the older version's going leaves the pending one.
        let two = Entry::new([record(&keyring, "db", 2), record(&keyring, "db", 1)])
            .with_pending(Some(record(&keyring, "db", 3)));
        assert_eq!((two.version_count(), two.last_version()), (2, 3));
        assert!(two.current.flag(), "the flag says something is aside");
        let plain = Entry::new([record(&keyring, "db", 2), record(&keyring, "db", 1)]);
        assert!(plain.rest.is_some() && !plain.current.flag() && plain.deletion().is_none());
        let deleted = plain.snapshot().with_deletion(Some(deletion));
        assert!(deleted.current.flag() && deleted.is_deleted() && deleted.version_count() == 2);
        assert!(!deleted.with_deletion(None).current.flag());
        let one = two.with_versions([two.current().clone()]);
        assert_eq!((one.version_count(), one.pending().map(Record::version)), (1, Some(3)));
        assert!(one.with_pending(None).rest.is_none());
    }
}
