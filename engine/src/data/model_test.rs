//! A deterministic model test of the data core: random sequences of writes (staged rotations
//! included), reads, expiry
//! sweeps, clock jumps and restarts (with and without a change of shard count) run against
//! the real [`Store`] and writers over an in-memory log, and against a plain model of the
//! lifecycle rules; every answer must match. Time is passed in, so thousands of cases run in
//! seconds. A failing case is shrunk and its seed saved by proptest (in
//! `engine/proptest-regressions/`), and replayed first on every later run.
//!
//! A restart throws the store away and rebuilds it from the committed log bytes alone, the way
//! recovery does: entries appended but not committed (an expiry sweep's removals between two
//! commits) are lost, as a crash loses them, and the model goes back to its committed state.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use credshard_protocol::op::delete::{DeleteRequest, DestroyRequest, UndeleteRequest};
use credshard_protocol::op::get::{GetMetaReply, GetMetaRequest, GetRequest, Stage};
use credshard_protocol::op::list::{ListReply, ListRequest};
use credshard_protocol::op::policy::{Policy, SetPolicyRequest};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::stage::PromoteRequest;
use credshard_protocol::wire::Reader;
use credshard_protocol::{Expiry, Kind, Labels, Limits, PutRequest, VersionState, EMPTY_LABELS};
use futures::channel::oneshot;
use proptest::prelude::*;

use super::keyspace::shard_for;
use super::{Lifecycle, ShardWriter, Store, Write};
use crate::auth::Acl;
use crate::crypto::{Keyring, MasterKey};
use crate::error::{OpError, WriteOutcome};
use crate::storage::wal::{self, encode_batch, encode_entry, EntryType};
use crate::storage::{ShardStorage, Shards};

const IDS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const OWNERS: [&str; 2] = ["alice", "bob"];
const LIFECYCLE: Lifecycle = Lifecycle { max_versions: 3, grace_period_ms: 1_500, recovery_window_ms: 2_000 };
const START_MS: u64 = 1_000_000;

/// A shard's log in memory: appended entries wait in `pending` until a commit moves them,
/// as one batch, into `committed` (the bytes a restart reads).
#[derive(Default)]
struct MemoryLog {
    pending: RefCell<Vec<u8>>,
    committed: RefCell<Vec<u8>>,
}

impl MemoryLog {
    fn commit(&self) {
        let mut pending = self.pending.borrow_mut();
        if !pending.is_empty() {
            self.committed.borrow_mut().extend(encode_batch(&pending));
            pending.clear();
        }
    }
}

impl ShardStorage for MemoryLog {
    fn append(&self, entry_type: EntryType, body: &[u8]) {
        encode_entry(entry_type, body, &mut self.pending.borrow_mut());
    }

    fn when_committed(&self, reply: oneshot::Sender<WriteOutcome>, outcome: WriteOutcome) {
        self.commit();
        let _ = reply.send(outcome);
    }

    fn when_durable(&self, reply: oneshot::Sender<WriteOutcome>) {
        self.commit();
        let _ = reply.send(Ok(0));
    }

    fn is_failing(&self) -> bool {
        false
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put { id: usize, owner: usize, expected: Option<u64>, ttl_ms: Option<u64> },
    Rotate { id: usize, expected: Option<u64>, grace_seconds: Option<u64> },
    Delete { id: usize, expected: Option<u64>, purge: bool, window_seconds: Option<u64> },
    Undelete { id: usize },
    Destroy { id: usize, version: u64 },
    Stage { id: usize, owner: usize, expected: Option<u64>, ttl_ms: Option<u64> },
    Promote { id: usize, expected: Option<u64>, grace_seconds: Option<u64> },
    Get { id: usize, version: u64 },
    GetStage { id: usize, stage: Stage },
    SetPolicy { id: usize, max_versions: u16, cas_required: bool, retire_after_seconds: u64 },
    Meta { id: usize },
    List { owner: usize },
    Sweep,
    Advance { ms: u64 },
    Restart { shards: usize },
}

impl Op {
    fn id(&self) -> Option<usize> {
        match *self {
            Op::Put { id, .. }
            | Op::Rotate { id, .. }
            | Op::Delete { id, .. }
            | Op::Undelete { id }
            | Op::Destroy { id, .. }
            | Op::Stage { id, .. }
            | Op::Promote { id, .. }
            | Op::SetPolicy { id, .. } => Some(id),
            _ => None,
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..IDS.len();
    let expected = proptest::option::weighted(0.3, 0..4u64);
    prop_oneof![
        4 => (id.clone(), 0..OWNERS.len(), expected.clone(), proptest::option::weighted(0.3, 1..3_000u64))
            .prop_map(|(id, owner, expected, ttl_ms)| Op::Put { id, owner, expected, ttl_ms }),
        2 => (id.clone(), expected.clone(), proptest::option::weighted(0.5, 0..3u64))
            .prop_map(|(id, expected, grace_seconds)| Op::Rotate { id, expected, grace_seconds }),
        2 => (id.clone(), expected, proptest::bool::weighted(0.3), proptest::option::weighted(0.3, 1..4u64))
            .prop_map(|(id, expected, purge, window_seconds)| Op::Delete {
                id,
                expected,
                purge,
                window_seconds: window_seconds.filter(|_| !purge),
            }),
        1 => id.clone().prop_map(|id| Op::Undelete { id }),
        1 => (id.clone(), 1..5u64).prop_map(|(id, version)| Op::Destroy { id, version }),
        2 => (id.clone(), 0..OWNERS.len(), proptest::option::weighted(0.3, 0..6u64), proptest::option::weighted(0.2, 1..3_000u64))
            .prop_map(|(id, owner, expected, ttl_ms)| Op::Stage { id, owner, expected, ttl_ms }),
        2 => (id.clone(), proptest::option::weighted(0.3, 0..6u64), proptest::option::weighted(0.5, 0..3u64))
            .prop_map(|(id, expected, grace_seconds)| Op::Promote { id, expected, grace_seconds }),
        4 => (id.clone(), 0..6u64).prop_map(|(id, version)| Op::Get { id, version }),
        2 => (id.clone(), proptest::sample::select(Stage::ALL.to_vec()))
            .prop_map(|(id, stage)| Op::GetStage { id, stage }),
        1 => (id.clone(), 0..5u16, proptest::bool::weighted(0.3), proptest::option::weighted(0.3, 1..3u64))
            .prop_map(|(id, max_versions, cas_required, retire)| Op::SetPolicy {
                id,
                max_versions,
                cas_required,
                retire_after_seconds: retire.unwrap_or(0),
            }),
        1 => id.prop_map(|id| Op::Meta { id }),
        1 => (0..OWNERS.len()).prop_map(|owner| Op::List { owner }),
        1 => Just(Op::Sweep),
        2 => (0..2_000u64).prop_map(|ms| Op::Advance { ms }),
        1 => (1..=3usize).prop_map(|shards| Op::Restart { shards }),
    ]
}

/// One kept version in the model.
#[derive(Clone, Debug)]
struct Version {
    version: u64,
    secret: Vec<u8>,
    owner: usize,
    expires_at_ms: u64,
    /// Set on the version that replaced this one's predecessor by ROTATE (0 for PUT).
    previous_grace_until_ms: u64,
    /// Erased by DESTROY.
    destroyed: bool,
    /// When it was written (a policy's delete_version_after counts from here).
    written_at_ms: u64,
}

/// A credential's policy in the model (absent: the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ModelPolicy {
    /// 0: LIFECYCLE's.
    max_versions: usize,
    cas_required: bool,
    retire_after_ms: u64,
}

/// The lifecycle rules, written as plainly as possible: credential id to kept versions,
/// newest first.
#[derive(Clone, Debug, Default)]
struct Model {
    credentials: BTreeMap<usize, Vec<Version>>,
    /// Deleted credentials (still in `credentials`) and when each is purged.
    deleted: BTreeMap<usize, u64>,
    /// The last version of every purged id.
    purged: BTreeMap<usize, u64>,
    /// Each credential's pending version (STAGE), not current until PROMOTE.
    pending: BTreeMap<usize, Version>,
    /// Policies set by SET_POLICY.
    policies: BTreeMap<usize, ModelPolicy>,
}

/// What a sweep purged, to put back if a restart loses the uncommitted purge.
#[derive(Clone, Debug)]
struct Purged {
    id: usize,
    versions: Vec<Version>,
    purge_at_ms: Option<u64>,
    tombstone_before: Option<u64>,
    pending: Option<Version>,
    policy: Option<ModelPolicy>,
}

fn expired(version: &Version, now_ms: u64) -> bool {
    version.expires_at_ms != 0 && now_ms >= version.expires_at_ms
}

fn conflict(expected: Option<u64>, current_version: u64) -> Result<(), OpError> {
    match expected {
        Some(expected) if expected != current_version => Err(OpError::VersionConflict { current_version }),
        _ => Ok(()),
    }
}

impl Model {
    fn put(&mut self, id: usize, new: Version, expected: Option<u64>, now_ms: u64) -> Result<u64, OpError> {
        let existing = self.credentials.get(&id);
        let deleted = self.deleted.contains_key(&id);
        let live = existing.filter(|versions| !expired(&versions[0], now_ms) && !deleted);
        if existing.is_some() {
            self.cas(id, expected, live.map_or(0, |versions| versions[0].version))?;
        }
        conflict(expected, live.map_or(0, |versions| versions[0].version))?;
        let version = self.last_version(id) + 1;
        let mut versions = vec![Version { version, ..new }];
        versions.extend(live.into_iter().flatten().take(self.max_versions(id) - 1).cloned());
        self.credentials.insert(id, versions);
        self.deleted.remove(&id);
        self.pending.remove(&id);
        Ok(version)
    }

    /// The highest version `id` has used: its pending one, its current one, or the one it was
    /// purged at.
    fn last_version(&self, id: usize) -> u64 {
        match (self.pending.get(&id), self.credentials.get(&id)) {
            (Some(pending), _) => pending.version,
            (None, Some(versions)) => versions[0].version,
            (None, None) => self.purged.get(&id).copied().unwrap_or(0),
        }
    }

    fn stage(&mut self, id: usize, new: Version, expected: Option<u64>, now_ms: u64) -> Result<u64, OpError> {
        let current = &self.credentials.get(&id).ok_or(OpError::NotFound)?[0];
        self.check_not_deleted(id)?;
        if expired(current, now_ms) {
            return Err(OpError::Expired);
        }
        self.cas(id, expected, current.version)?;
        conflict(expected, current.version)?;
        let version = self.last_version(id) + 1;
        self.pending.insert(id, Version { version, ..new });
        Ok(version)
    }

    fn promote(
        &mut self,
        id: usize,
        expected: Option<u64>,
        grace_seconds: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, OpError> {
        let current = &self.credentials.get(&id).ok_or(OpError::NotFound)?[0];
        self.check_not_deleted(id)?;
        if expired(current, now_ms) {
            return Err(OpError::Expired);
        }
        let pending_version = self.pending.get(&id).map_or(0, |pending| pending.version);
        self.cas(id, expected, pending_version)?;
        if expected.is_some_and(|expected| expected != pending_version) {
            return Err(OpError::PendingConflict { pending_version });
        }
        let pending = self.pending.remove(&id).ok_or(OpError::NoPending)?;
        let grace_ms = grace_seconds.map_or(LIFECYCLE.grace_period_ms, |seconds| seconds * 1000);
        let max_versions = self.max_versions(id);
        let versions = self.credentials.get_mut(&id).expect("checked above");
        versions.insert(0, Version { previous_grace_until_ms: (now_ms + grace_ms).max(1), ..pending });
        versions.truncate(max_versions);
        Ok(pending_version)
    }

    /// The versions `id` keeps: its policy's, or the server's.
    fn max_versions(&self, id: usize) -> usize {
        match self.policies.get(&id) {
            Some(policy) if policy.max_versions > 0 => policy.max_versions,
            _ => LIFECYCLE.max_versions,
        }
    }

    /// A write without an expected version, to a credential whose policy requires one.
    fn cas(&self, id: usize, expected: Option<u64>, current_version: u64) -> Result<(), OpError> {
        match (expected, self.policies.get(&id)) {
            (None, Some(policy)) if policy.cas_required => Err(OpError::CasRequired { current_version }),
            _ => Ok(()),
        }
    }

    fn set_policy(&mut self, id: usize, policy: ModelPolicy, now_ms: u64) -> Result<u64, OpError> {
        let current = &self.credentials.get(&id).ok_or(OpError::NotFound)?[0];
        self.check_not_deleted(id)?;
        if expired(current, now_ms) {
            return Err(OpError::Expired);
        }
        let version = current.version;
        match policy == (ModelPolicy { max_versions: 0, cas_required: false, retire_after_ms: 0 }) {
            true => self.policies.remove(&id),
            false => self.policies.insert(id, policy),
        };
        let max_versions = self.max_versions(id);
        self.credentials.get_mut(&id).expect("checked above").truncate(max_versions);
        Ok(version)
    }

    fn check_not_deleted(&self, id: usize) -> Result<(), OpError> {
        match self.deleted.get(&id) {
            Some(&purge_at_ms) => Err(OpError::Deleted { purge_at_ms }),
            None => Ok(()),
        }
    }

    fn purge(&mut self, id: usize) -> Purged {
        let last = self.last_version(id);
        let versions = self.credentials.remove(&id).expect("a purged credential exists");
        let tombstone_before = self.purged.get(&id).copied();
        self.purged.insert(id, tombstone_before.unwrap_or(0).max(last));
        let pending = self.pending.remove(&id);
        let policy = self.policies.remove(&id);
        Purged { id, versions, purge_at_ms: self.deleted.remove(&id), tombstone_before, pending, policy }
    }

    fn unpurge(&mut self, purged: Purged) {
        self.credentials.insert(purged.id, purged.versions);
        if let Some(purge_at_ms) = purged.purge_at_ms {
            self.deleted.insert(purged.id, purge_at_ms);
        }
        match purged.tombstone_before {
            Some(version) => self.purged.insert(purged.id, version),
            None => self.purged.remove(&purged.id),
        };
        if let Some(pending) = purged.pending {
            self.pending.insert(purged.id, pending);
        }
        if let Some(policy) = purged.policy {
            self.policies.insert(purged.id, policy);
        }
    }

    fn undelete(&mut self, id: usize, now_ms: u64) -> Result<u64, OpError> {
        let current = &self.credentials.get(&id).ok_or(OpError::NotFound)?[0];
        if expired(current, now_ms) {
            return Err(OpError::Expired);
        }
        let version = current.version;
        self.deleted.remove(&id);
        Ok(version)
    }

    fn destroy(&mut self, id: usize, version: u64, now_ms: u64) -> Result<u64, OpError> {
        let current = &self.credentials.get(&id).ok_or(OpError::NotFound)?[0];
        self.check_not_deleted(id)?;
        if expired(current, now_ms) {
            return Err(OpError::Expired);
        }
        let versions = self.credentials.get_mut(&id).expect("checked above");
        let kept =
            versions.iter_mut().find(|kept| kept.version == version).ok_or(OpError::VersionNotFound)?;
        kept.destroyed = true;
        kept.secret.clear();
        Ok(version)
    }

    fn rotate(
        &mut self,
        id: usize,
        secret: Vec<u8>,
        expected: Option<u64>,
        grace_seconds: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, OpError> {
        self.credentials.get(&id).ok_or(OpError::NotFound)?;
        self.check_not_deleted(id)?;
        let versions = self.credentials.get_mut(&id).expect("checked above");
        let current = versions[0].clone();
        if expired(&current, now_ms) {
            return Err(OpError::Expired);
        }
        self.cas(id, expected, current.version)?;
        conflict(expected, current.version)?;
        let grace_ms = grace_seconds.map_or(LIFECYCLE.grace_period_ms, |seconds| seconds * 1000);
        let version = self.pending.remove(&id).map_or(current.version, |pending| pending.version) + 1;
        let new = Version {
            version,
            secret,
            previous_grace_until_ms: (now_ms + grace_ms).max(1),
            destroyed: false,
            written_at_ms: now_ms,
            ..current
        };
        let max_versions = self.max_versions(id);
        let versions = self.credentials.get_mut(&id).expect("checked above");
        versions.insert(0, new);
        versions.truncate(max_versions);
        Ok(version)
    }

    fn delete(
        &mut self,
        id: usize,
        expected: Option<u64>,
        purge: bool,
        window_seconds: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, OpError> {
        let current = &self.credentials.get(&id).ok_or(OpError::NotFound)?[0];
        if !purge {
            self.check_not_deleted(id)?;
        }
        let version = current.version;
        let expired = expired(current, now_ms);
        let deleted = self.deleted.contains_key(&id);
        self.cas(id, expected, if expired || deleted { 0 } else { version })?;
        if expected.is_some() {
            conflict(expected, if expired || deleted { 0 } else { version })?;
        }
        if purge || expired {
            self.purge(id);
        } else {
            let window_ms = window_seconds.map_or(LIFECYCLE.recovery_window_ms, |seconds| seconds * 1000);
            self.deleted.insert(id, now_ms + window_ms);
        }
        Ok(version)
    }

    fn state(&self, id: usize, versions: &[Version], index: usize, now_ms: u64) -> VersionState {
        if versions[index].destroyed {
            return VersionState::Destroyed;
        }
        if index == 0 {
            return VersionState::Current;
        }
        let retire_after_ms = self.policies.get(&id).map_or(0, |policy| policy.retire_after_ms);
        if retire_after_ms != 0 && now_ms >= versions[index].written_at_ms + retire_after_ms {
            return VersionState::Retired;
        }
        match versions[index - 1].previous_grace_until_ms {
            0 => VersionState::Superseded,
            until if now_ms < until => VersionState::PreviousInGrace,
            _ => VersionState::Retired,
        }
    }

    fn get(&self, id: usize, version: u64, now_ms: u64) -> Result<(u64, Vec<u8>), OpError> {
        let versions = self.credentials.get(&id).ok_or(OpError::NotFound)?;
        self.check_not_deleted(id)?;
        if expired(&versions[0], now_ms) {
            return Err(OpError::Expired);
        }
        if let Some(pending) =
            self.pending.get(&id).filter(|pending| version != 0 && pending.version == version)
        {
            return Ok((pending.version, pending.secret.clone()));
        }
        let index = if version == 0 {
            0
        } else {
            versions.iter().position(|kept| kept.version == version).ok_or(OpError::VersionNotFound)?
        };
        self.serve(id, versions, index, now_ms)
    }

    fn get_stage(&self, id: usize, stage: Stage, now_ms: u64) -> Result<(u64, Vec<u8>), OpError> {
        let versions = self.credentials.get(&id).ok_or(OpError::NotFound)?;
        self.check_not_deleted(id)?;
        if expired(&versions[0], now_ms) {
            return Err(OpError::Expired);
        }
        match stage {
            Stage::Current => self.serve(id, versions, 0, now_ms),
            Stage::Pending => {
                let pending = self.pending.get(&id).ok_or(OpError::VersionNotFound)?;
                Ok((pending.version, pending.secret.clone()))
            }
            Stage::Previous if versions.len() > 1 => self.serve(id, versions, 1, now_ms),
            Stage::Previous => Err(OpError::VersionNotFound),
        }
    }

    /// The kept version at `index`, if its state lets it be read.
    fn serve(
        &self,
        id: usize,
        versions: &[Version],
        index: usize,
        now_ms: u64,
    ) -> Result<(u64, Vec<u8>), OpError> {
        match self.state(id, versions, index, now_ms) {
            VersionState::Retired => return Err(OpError::Retired),
            VersionState::Destroyed => return Err(OpError::Destroyed),
            _ => {}
        }
        Ok((versions[index].version, versions[index].secret.clone()))
    }

    fn meta(&self, id: usize, now_ms: u64) -> Result<Vec<(u64, VersionState)>, OpError> {
        let versions = self.credentials.get(&id).ok_or(OpError::NotFound)?;
        self.check_not_deleted(id)?;
        if expired(&versions[0], now_ms) {
            return Err(OpError::Expired);
        }
        let pending = self.pending.get(&id).map(|pending| (pending.version, VersionState::Pending));
        Ok(pending
            .into_iter()
            .chain(
                (0..versions.len())
                    .map(|index| (versions[index].version, self.state(id, versions, index, now_ms))),
            )
            .collect())
    }

    fn list(&self, owner: usize, now_ms: u64) -> Vec<String> {
        self.credentials
            .iter()
            .filter(|(id, versions)| {
                versions[0].owner == owner && !expired(&versions[0], now_ms) && !self.deleted.contains_key(id)
            })
            .map(|(id, _)| IDS[*id].to_owned())
            .collect()
    }

    /// Purges the expired credentials and the deleted ones past their purge time; returns
    /// what it purged.
    fn sweep(&mut self, now_ms: u64) -> Vec<Purged> {
        let swept: Vec<usize> = self
            .credentials
            .iter()
            .filter(|(id, versions)| {
                expired(&versions[0], now_ms)
                    || self.deleted.get(id).is_some_and(|&purge_at| purge_at <= now_ms)
            })
            .map(|(id, _)| *id)
            .collect();
        swept.into_iter().map(|id| self.purge(id)).collect()
    }
}

/// The real data core over in-memory logs.
struct System {
    store: Arc<Store>,
    writers: Vec<ShardWriter>,
    logs: Vec<Rc<MemoryLog>>,
}

impl System {
    fn start(store: Store, logs: Vec<Rc<MemoryLog>>) -> System {
        let store = Arc::new(store);
        let writers = (0..store.shard_count())
            .map(|shard_id| {
                let mut writer = store.claim_writer(shard_id);
                writer.attach_log(Rc::clone(&logs[shard_id]) as Rc<dyn ShardStorage>);
                writer
            })
            .collect();
        System { store, writers, logs }
    }

    fn new(shards: usize) -> System {
        let store =
            Store::new(shards, Keyring::in_memory(MasterKey::generate()), Limits::default(), LIFECYCLE);
        System::start(store, (0..shards).map(|_| Rc::default()).collect())
    }

    /// Stops everything and starts again from the committed log bytes, with `shards` shards.
    fn restart(self, shards: usize) -> System {
        let System { store, writers, logs } = self;
        drop(writers);
        let keyring = Arc::into_inner(store).expect("no other owner of the store").into_keyring();
        let store = Store::new(shards, keyring, Limits::default(), LIFECYCLE);
        let bytes: Vec<Vec<u8>> = logs.iter().map(|log| log.committed.borrow().clone()).collect();
        let parsed: Vec<Vec<wal::Entry<'_>>> = bytes
            .iter()
            .map(|bytes| {
                let parsed = wal::parse(bytes).expect("a committed log parses");
                assert_eq!(parsed.valid_bytes, bytes.len(), "nothing torn in a clean log");
                parsed.entries
            })
            .collect();
        let same_layout = shards == logs.len();
        for shard_id in 0..shards {
            let sources: Vec<&[wal::Entry<'_>]> = if same_layout {
                vec![&parsed[shard_id]]
            } else {
                parsed.iter().map(Vec::as_slice).collect()
            };
            store.replay(shard_id, &sources, same_layout).expect("replay");
        }
        let logs = if same_layout {
            // What was appended but not committed is gone with the process.
            for log in &logs {
                log.pending.borrow_mut().clear();
            }
            logs
        } else {
            // As recovery does after a change of shard count: new logs holding what is kept.
            (0..shards)
                .map(|shard_id| {
                    let log = MemoryLog::default();
                    for item in store.snapshot_items(shard_id) {
                        item.encode(&mut log.pending.borrow_mut());
                    }
                    log.commit();
                    Rc::new(log)
                })
                .collect()
        };
        System::start(store, logs)
    }

    fn submit(&mut self, id: &str, write: Write<'_>, now_ms: u64) -> Result<u64, OpError> {
        let (reply, mut outcome) = oneshot::channel();
        let shard_id = self.store.shard_for(id);
        self.writers[shard_id].submit(write, now_ms, &Acl::everything(), reply);
        outcome.try_recv().expect("not cancelled").expect("committed at once in memory")
    }
}

fn run(shards: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut system = System::new(shards);
    let mut model = Model::default();
    // Sweeps whose removals are appended to a shard's log but not committed yet: a restart
    // loses them (the credentials come back, still expired); an applied write to the same
    // shard commits them.
    let mut uncommitted: Vec<(usize, Purged)> = Vec::new();
    let mut now_ms = START_MS;
    let acl = Acl::everything();
    for (step, op) in ops.iter().enumerate() {
        let secret = format!("secret-{step}").into_bytes();
        // An applied write commits everything appended to its shard's log before it.
        let mut commits = false;
        match *op {
            Op::Put { id, owner, expected, ttl_ms } | Op::Stage { id, owner, expected, ttl_ms } => {
                // PUT and STAGE take the same request; the model tells them apart.
                let expiry = ttl_ms.map_or(Expiry::Never, Expiry::TtlMs);
                let request = PutRequest {
                    id: IDS[id],
                    owner: OWNERS[owner],
                    scope: "scope",
                    kind: Kind::Password,
                    expected_version: expected,
                    expiry,
                    labels: Labels::from_validated(EMPTY_LABELS),
                    secret: &secret,
                };
                let new = Version {
                    version: 0,
                    secret: secret.clone(),
                    owner,
                    expires_at_ms: expiry.resolve(now_ms),
                    previous_grace_until_ms: 0,
                    destroyed: false,
                    written_at_ms: now_ms,
                };
                let (real, expected_outcome) = match op {
                    Op::Put { .. } => (
                        system.submit(IDS[id], Write::Put(&request), now_ms),
                        model.put(id, new, expected, now_ms),
                    ),
                    _ => (
                        system.submit(IDS[id], Write::Stage(&request), now_ms),
                        model.stage(id, new, expected, now_ms),
                    ),
                };
                prop_assert_eq!(&real, &expected_outcome, "step {}: {:?}", step, op);
                commits = real.is_ok();
            }
            Op::Rotate { id, expected, grace_seconds } => {
                let request = RotateRequest {
                    id: IDS[id],
                    expected_version: expected,
                    grace_period_seconds: grace_seconds,
                    secret: &secret,
                };
                let real = system.submit(IDS[id], Write::Rotate(&request), now_ms);
                let expected_outcome = model.rotate(id, secret.clone(), expected, grace_seconds, now_ms);
                prop_assert_eq!(&real, &expected_outcome, "step {}: {:?}", step, op);
                commits = real.is_ok();
            }
            Op::Delete { id, expected, purge, window_seconds } => {
                let request = DeleteRequest {
                    purge,
                    recovery_window_seconds: window_seconds,
                    ..DeleteRequest::new(IDS[id], expected)
                };
                let real = system.submit(IDS[id], Write::Delete(&request), now_ms);
                let expected_outcome = model.delete(id, expected, purge, window_seconds, now_ms);
                prop_assert_eq!(&real, &expected_outcome, "step {}: {:?}", step, op);
                commits = real.is_ok();
            }
            Op::Undelete { id } => {
                let request = UndeleteRequest { id: IDS[id] };
                let real = system.submit(IDS[id], Write::Undelete(&request), now_ms);
                prop_assert_eq!(&real, &model.undelete(id, now_ms), "step {}: {:?}", step, op);
                commits = real.is_ok();
            }
            Op::Destroy { id, version } => {
                let request = DestroyRequest { id: IDS[id], version };
                let real = system.submit(IDS[id], Write::Destroy(&request), now_ms);
                prop_assert_eq!(&real, &model.destroy(id, version, now_ms), "step {}: {:?}", step, op);
                commits = real.is_ok();
            }
            Op::Promote { id, expected, grace_seconds } => {
                let request = PromoteRequest {
                    id: IDS[id],
                    expected_version: expected,
                    grace_period_seconds: grace_seconds,
                };
                let real = system.submit(IDS[id], Write::Promote(&request), now_ms);
                let expected_outcome = model.promote(id, expected, grace_seconds, now_ms);
                prop_assert_eq!(&real, &expected_outcome, "step {}: {:?}", step, op);
                commits = real.is_ok();
            }
            Op::SetPolicy { id, max_versions, cas_required, retire_after_seconds } => {
                let request = SetPolicyRequest {
                    id: IDS[id],
                    policy: Policy {
                        max_versions,
                        cas_required,
                        delete_version_after_seconds: retire_after_seconds,
                        metadata: Labels::from_validated(EMPTY_LABELS),
                    },
                };
                let real = system.submit(IDS[id], Write::SetPolicy(&request), now_ms);
                let policy = ModelPolicy {
                    max_versions: max_versions.into(),
                    cas_required,
                    retire_after_ms: retire_after_seconds * 1000,
                };
                prop_assert_eq!(&real, &model.set_policy(id, policy, now_ms), "step {}: {:?}", step, op);
                commits = real.is_ok();
            }
            Op::Get { .. } | Op::GetStage { .. } => {
                let (request, expected) = match *op {
                    Op::Get { id, version } => {
                        (GetRequest::new(IDS[id], version), model.get(id, version, now_ms))
                    }
                    Op::GetStage { id, stage } => {
                        (GetRequest::of_stage(IDS[id], stage), model.get_stage(id, stage, now_ms))
                    }
                    _ => unreachable!("matched above"),
                };
                let mut out = BytesMut::new();
                let real =
                    system.store.get(&request, now_ms, &acl, &mut out).map(|version| (version, out.to_vec()));
                match (real, expected) {
                    (Ok((real_version, reply)), Ok((model_version, model_secret))) => {
                        prop_assert_eq!(real_version, model_version, "step {}: {:?}", step, op);
                        prop_assert!(reply.ends_with(&model_secret), "step {}: {:?}: wrong secret", step, op);
                    }
                    (real, model) => {
                        prop_assert_eq!(real.map(|(version, _)| version), model.map(|(version, _)| version))
                    }
                }
            }
            Op::Meta { id } => {
                let mut out = BytesMut::new();
                let real = system
                    .store
                    .get_meta(&GetMetaRequest { id: IDS[id] }, now_ms, &acl, &mut out)
                    .map(|_| {
                        let reply =
                            GetMetaReply::decode(&mut Reader::new(&out)).expect("a GET_META reply decodes");
                        reply.versions.iter().map(|info| (info.version, info.state)).collect::<Vec<_>>()
                    });
                prop_assert_eq!(real, model.meta(id, now_ms), "step {}: {:?}", step, op);
            }
            Op::List { owner } => {
                let mut out = BytesMut::new();
                let request = ListRequest { owner: OWNERS[owner], scope: "", limit: 100, cursor: &[] };
                system.store.list(&request, now_ms, &mut out).expect("list");
                let reply = ListReply::decode(&mut Reader::new(&out)).expect("a LIST reply decodes");
                let mut ids: Vec<String> = reply.items.iter().map(|item| item.id.clone()).collect();
                ids.sort();
                prop_assert_eq!(ids, model.list(owner, now_ms), "step {}: {:?}", step, op);
            }
            Op::Sweep => {
                let swept: usize = system.writers.iter_mut().map(|writer| writer.sweep_expired(now_ms)).sum();
                let removed = model.sweep(now_ms);
                prop_assert_eq!(swept, removed.len(), "step {}: {:?}", step, op);
                let shards = system.store.shard_count();
                uncommitted
                    .extend(removed.into_iter().map(|purged| (shard_for(IDS[purged.id], shards), purged)));
            }
            Op::Advance { ms } => now_ms += ms,
            Op::Restart { shards } => {
                system = system.restart(shards);
                // Put back newest purge last undone first.
                for (_, purged) in uncommitted.drain(..).rev() {
                    model.unpurge(purged);
                }
            }
        }
        if let (true, Some(id)) = (commits, op.id()) {
            let shard_id = system.store.shard_for(IDS[id]);
            uncommitted.retain(|(shard, _)| *shard != shard_id);
        }
    }
    Ok(())
}

/// Cases per run: `CREDSHARD_MODEL_CASES` overrides (a long soak: 1000000).
fn cases() -> u32 {
    std::env::var("CREDSHARD_MODEL_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_data_core_matches_the_model_across_restarts(shards in 1..=3usize, ops in proptest::collection::vec(op(), 1..40)) {
        run(shards, &ops)?;
    }
}

#[test]
fn a_known_history_replays_identically() {
    // One fixed case through every op, so a regression shows here before the random search.
    let ops = [
        Op::Put { id: 0, owner: 0, expected: Some(0), ttl_ms: None },
        Op::Rotate { id: 0, expected: Some(1), grace_seconds: Some(1) },
        Op::Put { id: 1, owner: 1, expected: None, ttl_ms: Some(500) },
        Op::Restart { shards: 2 },
        Op::Get { id: 0, version: 1 },
        Op::Advance { ms: 1_000 },
        Op::Get { id: 0, version: 1 },
        Op::Meta { id: 0 },
        Op::Sweep,
        Op::Restart { shards: 2 },
        Op::Get { id: 1, version: 0 },
        Op::Sweep,
        Op::Put { id: 2, owner: 0, expected: None, ttl_ms: None },
        Op::Restart { shards: 3 },
        Op::Put { id: 1, owner: 1, expected: Some(0), ttl_ms: None },
        Op::List { owner: 1 },
        Op::Delete { id: 0, expected: Some(2), purge: false, window_seconds: None },
        Op::Get { id: 0, version: 0 },
        Op::Restart { shards: 1 },
        Op::Undelete { id: 0 },
        Op::Destroy { id: 0, version: 1 },
        Op::Meta { id: 0 },
        Op::Get { id: 0, version: 1 },
        Op::Delete { id: 0, expected: None, purge: false, window_seconds: Some(1) },
        Op::Advance { ms: 1_000 },
        Op::Sweep,
        Op::Restart { shards: 2 },
        Op::Put { id: 0, owner: 0, expected: Some(0), ttl_ms: None },
        Op::Delete { id: 2, expected: None, purge: true, window_seconds: None },
        Op::Restart { shards: 3 },
        Op::Put { id: 2, owner: 0, expected: Some(0), ttl_ms: None },
        Op::Stage { id: 2, owner: 1, expected: Some(4), ttl_ms: None },
        Op::GetStage { id: 2, stage: Stage::Pending },
        Op::Meta { id: 2 },
        Op::Restart { shards: 2 },
        Op::Promote { id: 2, expected: Some(5), grace_seconds: Some(1) },
        Op::GetStage { id: 2, stage: Stage::Previous },
        Op::List { owner: 1 },
        Op::Stage { id: 2, owner: 0, expected: None, ttl_ms: None },
        Op::Put { id: 2, owner: 0, expected: None, ttl_ms: None },
        Op::Get { id: 2, version: 6 },
        Op::Restart { shards: 1 },
        Op::Meta { id: 2 },
        Op::SetPolicy { id: 2, max_versions: 4, cas_required: true, retire_after_seconds: 1 },
        Op::Put { id: 2, owner: 0, expected: None, ttl_ms: None },
        Op::Put { id: 2, owner: 0, expected: Some(6), ttl_ms: None },
        Op::Restart { shards: 3 },
        Op::Put { id: 2, owner: 0, expected: Some(7), ttl_ms: None },
        Op::Meta { id: 2 },
        Op::Advance { ms: 1_000 },
        Op::Get { id: 2, version: 6 },
        Op::SetPolicy { id: 2, max_versions: 1, cas_required: false, retire_after_seconds: 0 },
        Op::Restart { shards: 2 },
        Op::Meta { id: 2 },
    ];
    run(2, &ops).unwrap();
}
