//! The single writer of one shard, and [`ShardWriter::submit`], the one entry point of every
//! client write (PUT, ROTATE, DELETE).
//!
//! The [`Store`] hands each shard's writer out once, and it cannot leave the executor that
//! claimed it (it is `!Send`): versions and the storage's order are kept without locks. A
//! write is checked and applied to the shard's map, its entry is handed to the shard's
//! [`ShardStorage`] (the embedded write-ahead log), and the outcome is sent once the storage
//! has committed it. The background work of a shard (expiry sweeps, re-encryption) goes
//! through the same writer.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use credshard_protocol::op::delete::{DeleteRequest, DestroyRequest, UndeleteRequest};
use credshard_protocol::op::policy::{Policy, SetPolicyRequest};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::stage::{PromoteRequest, StageRequest};
use credshard_protocol::op::watch::Change as ChangeKind;
use credshard_protocol::{PutRequest, Request};
use futures::channel::oneshot;

use super::record::{CredentialFields, Record, VersionFields};
use super::replay::{install_entry, replace_version, set_policy};
use super::shard::{Deletion, Entry, FetchedState, StoredPolicy};
use super::store::{check_access, Store};
use crate::auth::Acl;
use crate::error::{OpError, WriteOutcome};
use crate::storage::wal::{self, EntryType};
use crate::storage::ShardStorage;

/// Purged ids a shard remembers at most with a shared database, which remembers them all
/// (see `ShardWriter::bound_purged_hints`).
const PURGED_HINTS_MAX: usize = 65_536;

/// A client write, as [`ShardWriter::submit`] takes it.
#[derive(Clone, Copy, Debug)]
pub enum Write<'a> {
    Put(&'a PutRequest<'a>),
    Rotate(&'a RotateRequest<'a>),
    Delete(&'a DeleteRequest<'a>),
    Undelete(&'a UndeleteRequest<'a>),
    Destroy(&'a DestroyRequest<'a>),
    Stage(&'a StageRequest<'a>),
    Promote(&'a PromoteRequest<'a>),
    SetPolicy(&'a SetPolicyRequest<'a>),
}

impl<'a> Write<'a> {
    /// The write a request asks for; `None` for a request that is not a write.
    pub fn of(request: &'a Request<'a>) -> Option<Write<'a>> {
        match request {
            Request::Put(put) => Some(Write::Put(put)),
            Request::Rotate(rotate) => Some(Write::Rotate(rotate)),
            Request::Delete(delete) => Some(Write::Delete(delete)),
            Request::Undelete(undelete) => Some(Write::Undelete(undelete)),
            Request::Destroy(destroy) => Some(Write::Destroy(destroy)),
            Request::Stage(stage) => Some(Write::Stage(stage)),
            Request::Promote(promote) => Some(Write::Promote(promote)),
            Request::SetPolicy(set) => Some(Write::SetPolicy(set)),
            _ => None,
        }
    }
}

/// A write checked and sealed against a shard's state, not applied yet
/// ([`ShardWriter::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    id: Box<str>,
    /// The current version it was prepared against (0: the credential did not exist).
    base_version: u64,
    change: Change,
}

/// What a prepared write changes, as a shared database records it ([`Prepared::effect`]).
#[derive(Debug)]
pub enum Effect<'a> {
    /// A new current version (PUT, ROTATE).
    Version(&'a Record),
    /// The credential and every version removed for good.
    Purge,
    /// Kept, unreadable, until UNDELETE or the deletion's purge time.
    SoftDelete(Deletion),
    Undelete,
    /// A kept version replaced by its destroyed husk.
    Destroy(&'a Record),
    /// A new pending version; `replaces` is the pending version it drops (0: none).
    Pending {
        record: &'a Record,
        replaces: u64,
    },
    /// The pending version, sealed again, made current.
    Promote(&'a Record),
    /// The policy replaced (`None`: the defaults).
    Policy(Option<&'a StoredPolicy>),
    /// Nothing changes.
    Nothing,
}

#[derive(Debug)]
enum Change {
    /// A new version; `keep_history`: the versions before it stay (false after an expiry).
    Version { record: Record, keep_history: bool },
    /// Removed at once with every version (a purge).
    Delete,
    /// Kept, unreadable, until UNDELETE or its purge time.
    SoftDelete(Deletion),
    /// A deleted credential served again.
    Undelete,
    /// A kept version replaced by its destroyed husk (same version, no ciphertext).
    Destroy(Record),
    /// A new pending version (replacing the pending version `replaces`, 0: none), beside the
    /// current version.
    Pending { record: Record, replaces: u64 },
    /// The pending version, sealed again with its grace deadline, made current.
    Promote(Record),
    /// The credential's policy replaced (`None`: back to the defaults).
    Policy(Option<StoredPolicy>),
    /// Nothing to change (UNDELETE of a live credential, DESTROY of a destroyed version);
    /// the client is told `outcome`.
    Nothing { outcome: u64 },
}

impl Prepared {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn base_version(&self) -> u64 {
        self.base_version
    }

    /// The new version's record; `None` for anything but a new version.
    pub fn record(&self) -> Option<&Record> {
        match &self.change {
            Change::Version { record, .. } => Some(record),
            _ => None,
        }
    }

    /// What applying it changes.
    pub fn effect(&self) -> Effect<'_> {
        match &self.change {
            Change::Version { record, .. } => Effect::Version(record),
            Change::Delete => Effect::Purge,
            Change::SoftDelete(deletion) => Effect::SoftDelete(*deletion),
            Change::Undelete => Effect::Undelete,
            Change::Destroy(husk) => Effect::Destroy(husk),
            Change::Pending { record, replaces } => Effect::Pending { record, replaces: *replaces },
            Change::Promote(record) => Effect::Promote(record),
            Change::Policy(policy) => Effect::Policy(policy.as_ref()),
            Change::Nothing { .. } => Effect::Nothing,
        }
    }

    /// What a watcher is told happened when this write (made by `write`) is applied; `None`
    /// when it changes nothing.
    pub fn announced(&self, write: &Write<'_>) -> Option<ChangeKind> {
        Some(match (&self.change, write) {
            (Change::Nothing { .. }, _) => return None,
            (Change::Policy(_), _) => ChangeKind::Policy,
            (Change::Delete, _) => ChangeKind::Purge,
            (Change::SoftDelete(_), _) => ChangeKind::Delete,
            (Change::Undelete, _) => ChangeKind::Undelete,
            (Change::Destroy(_), _) => ChangeKind::Destroy,
            (Change::Pending { .. }, _) => ChangeKind::Stage,
            (Change::Promote(_), _) => ChangeKind::Promote,
            (Change::Version { .. }, Write::Rotate(_)) => ChangeKind::Rotate,
            (Change::Version { .. }, _) => ChangeKind::Put,
        })
    }

    /// What the client is told: the new version; for DESTROY the version destroyed; for
    /// DELETE and UNDELETE the current version.
    pub fn outcome(&self) -> u64 {
        match &self.change {
            Change::Version { record, .. }
            | Change::Destroy(record)
            | Change::Pending { record, .. }
            | Change::Promote(record) => record.version(),
            Change::Nothing { outcome } => *outcome,
            _ => self.base_version,
        }
    }
}

/// The single writer of one shard. Not `Send`: it stays on the executor that claimed it.
pub struct ShardWriter {
    store: Arc<Store>,
    shard_id: usize,
    /// (expires_at_ms, id) of every credential with an expiry, for the sweeper.
    expiries: BTreeSet<(u64, Box<str>)>,
    /// (purge_at_ms, id) of every deleted credential, for the sweeper (an id undeleted or
    /// purged since may linger: the sweep checks the entry).
    purges: BTreeSet<(u64, Box<str>)>,
    /// The shard's write-ahead log; `None` keeps the shard in memory only (tests, benches).
    log: Option<Rc<dyn ShardStorage>>,
    /// With a bounded cache: the eviction clock, every cached id in the order it came in
    /// (an id removed since may linger until the hand reaches it; see
    /// [`ShardWriter::evict_past_capacity`]).
    clock: VecDeque<Box<str>>,
    /// With a shared database: re-reads of credentials in flight, and what was installed while
    /// they were (see [`ShardWriter::begin_reread`]).
    rereads: Rereads,
    _not_send: PhantomData<Rc<()>>,
}

/// What keeps a re-read from a shared database from installing a state older than one the
/// shard installed while it was in flight: a credential's version orders its new versions, but
/// nothing orders two states of one version (a deletion, a pending version, a policy), so a
/// re-read that began before another install of the same credential is not installed; the
/// credential is re-read again instead ([`ShardWriter::take_raced`]).
#[derive(Default)]
struct Rereads {
    /// Installs so far (committed writes and fetched credentials).
    installs: u64,
    /// Re-reads in flight, by the install count when each began.
    in_flight: std::collections::BTreeMap<u64, usize>,
    /// While any re-read is in flight: the install count of each credential's last install.
    installed: std::collections::HashMap<Box<str>, u64>,
    /// Credentials whose re-read lost that race, to read again.
    raced: BTreeSet<Box<str>>,
}

impl ShardWriter {
    pub(crate) fn new(store: Arc<Store>, shard_id: usize) -> ShardWriter {
        // The shard may hold recovered credentials: index their expiries for the sweeper.
        let expiries = store
            .shard(shard_id)
            .map
            .pin()
            .iter()
            .filter_map(|entry| {
                let expires_at_ms = entry.current().credential().expires_at_ms.to_native();
                (expires_at_ms != 0).then(|| (expires_at_ms, Box::from(entry.id())))
            })
            .collect();
        let purges = store
            .shard(shard_id)
            .map
            .pin()
            .iter()
            .filter_map(|entry| Some((entry.deletion()?.purge_at_ms, Box::from(entry.id()))))
            .collect();
        let clock = match store.shard_capacity() {
            Some(_) => store.shard(shard_id).map.pin().iter().map(|entry| Box::from(entry.id())).collect(),
            None => VecDeque::new(),
        };
        let mut writer = ShardWriter {
            store,
            shard_id,
            expiries,
            purges,
            log: None,
            clock,
            rereads: Rereads::default(),
            _not_send: PhantomData,
        };
        writer.evict_past_capacity(None);
        writer
    }

    /// Logs every write from now on to `log`.
    pub fn attach_log(&mut self, log: Rc<dyn ShardStorage>) {
        self.log = Some(log);
    }

    /// Appends a change of `id` to the shard's feed, with the owner and scope of `record`. It
    /// becomes readable once the storage has committed it (the storage's commit listener,
    /// `server::watch::FeedListener`, marks it), since it is appended with the change's log
    /// entries, before the commit that takes them.
    fn announce(&self, change: ChangeKind, id: &str, version: u64, at_ms: u64, record: &Record) {
        let credential = record.credential();
        let shard = self.store.shard(self.shard_id);
        shard.feed.append(
            self.shard_id as u16,
            change,
            version,
            at_ms,
            id,
            credential.owner.as_str(),
            credential.scope.as_str(),
        );
    }

    /// Applies `write` and sends its outcome on `reply`: at once when it is refused (or the
    /// shard has no storage), once the storage has committed it when it is applied. The
    /// outcome of an applied write is its version (for DELETE, the version that was current).
    pub fn submit(&mut self, write: Write<'_>, now_ms: u64, acl: &Acl, reply: oneshot::Sender<WriteOutcome>) {
        let outcome = self.check_writable().and_then(|()| self.prepare(write, now_ms, acl)).map(|prepared| {
            let outcome = prepared.outcome();
            let announced = prepared.announced(&write).map(|change| (change, now_ms));
            self.apply(prepared, announced);
            outcome
        });
        match (outcome, &self.log) {
            (Ok(version), Some(log)) => log.when_committed(reply, Ok(version)),
            (outcome, _) => {
                let _ = reply.send(outcome);
            }
        }
    }

    /// Sends `Ok(0)` on `reply` once everything this writer has written is on disk (synced in
    /// any fsync mode; at once without storage), or an error if that fails.
    pub fn when_durable(&self, reply: oneshot::Sender<WriteOutcome>) {
        match &self.log {
            Some(log) => log.when_durable(reply),
            None => {
                let _ = reply.send(Ok(0));
            }
        }
    }

    /// Refuses writes while the log cannot be written (reads go on).
    fn check_writable(&self) -> Result<(), OpError> {
        match &self.log {
            Some(log) if log.is_failing() => Err(OpError::Unavailable(
                "the shard's log cannot be written; writes resume when the disk recovers",
            )),
            _ => Ok(()),
        }
    }

    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Creates or replaces a credential; returns the new version. The replaced version stays
    /// readable (superseded) while kept.
    ///
    /// An expired or deleted credential counts as absent for compare-and-set
    /// (`expected_version` 0 succeeds) and its history is dropped (a deleted one can no longer
    /// be restored), but its version number is not reused; nor is a purged one's.
    ///
    /// # Errors
    /// [`OpError::VersionConflict`] when `expected_version` does not match,
    /// [`OpError::Unavailable`] when no data key is available, [`OpError::Unauthorized`] when
    /// the new owner and scope or those of the credential it replaces are outside `acl`.
    fn prepare_put(&self, request: &PutRequest<'_>, now_ms: u64, acl: &Acl) -> Result<Prepared, OpError> {
        if !acl.covers(request.owner, request.scope) {
            return Err(OpError::Unauthorized("this token may not write credentials of this owner or scope"));
        }
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        debug_assert_eq!(store.shard_for(request.id), self.shard_id, "write routed to the wrong shard");
        let existing = map.get(request.id);
        if let Some(entry) = existing {
            check_access(entry.current(), acl)?;
            // A new current version drops the pending one: that needs reach over it too.
            check_pending_access(entry, acl)?;
        }
        let live = existing.filter(|entry| !entry.current().is_expired(now_ms) && !entry.is_deleted());
        if let Some(entry) = existing {
            check_cas_required(
                entry,
                request.expected_version,
                live.map_or(0, |entry| entry.current().version()),
            )?;
        }
        check_expected(request.expected_version, live.map_or(0, |entry| entry.current().version()))?;
        let last_version = match existing {
            Some(entry) => entry.last_version(),
            None => self.purged_version(request.id),
        };
        let fields = VersionFields {
            version: last_version + 1,
            created_at_ms: live
                .map_or(now_ms, |entry| entry.current().credential().created_at_ms.to_native()),
            updated_at_ms: now_ms,
            expires_at_ms: request.expiry.resolve(now_ms),
            previous_grace_until_ms: 0,
        };
        let record = Record::seal(CredentialFields::from(request), fields, store.keyring())?;
        Ok(Prepared {
            id: request.id.into(),
            base_version: existing.map_or(0, |entry| entry.current().version()),
            change: Change::Version { record, keep_history: live.is_some() },
        })
    }

    /// Stores a new secret as a new version of a live credential, keeping its owner, scope,
    /// kind, labels and expiry; the replaced version stays readable for the grace period
    /// (`None`: the server's default) and is retired after it.
    ///
    /// # Errors
    /// Not found, unauthorized (outside `acl`), expired, version conflict, unavailable (no
    /// data key).
    fn prepare_rotate(
        &self,
        request: &RotateRequest<'_>,
        now_ms: u64,
        acl: &Acl,
    ) -> Result<Prepared, OpError> {
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        let entry = map.get(request.id).ok_or(OpError::NotFound)?;
        let current = entry.current();
        check_live(entry, now_ms, acl)?;
        check_pending_access(entry, acl)?;
        check_cas_required(entry, request.expected_version, current.version())?;
        check_expected(request.expected_version, current.version())?;
        let grace_ms = request
            .grace_period_seconds
            .map_or(store.lifecycle().grace_period_ms, |seconds| seconds.saturating_mul(1000));
        let credential = current.credential();
        let fields = VersionFields {
            version: entry.last_version() + 1,
            created_at_ms: credential.created_at_ms.to_native(),
            updated_at_ms: now_ms,
            expires_at_ms: credential.expires_at_ms.to_native(),
            previous_grace_until_ms: now_ms.saturating_add(grace_ms).max(1),
        };
        let record = Record::seal(current.fields_with_secret(request.secret), fields, store.keyring())?;
        Ok(Prepared {
            id: request.id.into(),
            base_version: current.version(),
            change: Change::Version { record, keep_history: true },
        })
    }

    /// Deletes a credential: kept, unreadable, for its recovery window (the request's or the
    /// server's), or purged at once with every version when the request says so, the window
    /// is 0, the credential has expired, or the store cannot keep deletions. Returns the
    /// version that was current.
    ///
    /// # Errors
    /// [`OpError::NotFound`] for an absent credential, [`OpError::Unauthorized`] for one
    /// outside `acl`, [`OpError::Deleted`] for one already deleted (unless purging),
    /// [`OpError::VersionConflict`] when `expected_version` does not match the current version
    /// (0 when expired or deleted).
    fn prepare_delete(
        &self,
        request: &DeleteRequest<'_>,
        now_ms: u64,
        acl: &Acl,
    ) -> Result<Prepared, OpError> {
        let map = self.store.shard(self.shard_id).map.pin();
        let entry = map.get(request.id).ok_or(OpError::NotFound)?;
        let current = entry.current();
        check_access(current, acl)?;
        if request.purge {
            check_pending_access(entry, acl)?;
        } else {
            check_not_deleted(entry)?;
        }
        let version = current.version();
        let expired = current.is_expired(now_ms);
        check_cas_required(
            entry,
            request.expected_version,
            if expired || entry.is_deleted() { 0 } else { version },
        )?;
        if request.expected_version.is_some() {
            check_expected(
                request.expected_version,
                if expired || entry.is_deleted() { 0 } else { version },
            )?;
        }
        let lifecycle = self.store.lifecycle();
        let window_ms = request
            .recovery_window_seconds
            .map_or(lifecycle.recovery_window_ms, |seconds| seconds.saturating_mul(1000));
        let change = if request.purge || window_ms == 0 || expired {
            Change::Delete
        } else {
            Change::SoftDelete(Deletion {
                deleted_at_ms: now_ms,
                purge_at_ms: now_ms.saturating_add(window_ms),
            })
        };
        Ok(Prepared { id: request.id.into(), base_version: version, change })
    }

    /// Serves a deleted credential again, as it was (its versions and their states); a live
    /// one is left as it is. Returns the current version.
    ///
    /// # Errors
    /// [`OpError::NotFound`] for an absent (or purged) credential, [`OpError::Unauthorized`]
    /// for one outside `acl`, [`OpError::Expired`] for one that has expired.
    fn prepare_undelete(
        &self,
        request: &UndeleteRequest<'_>,
        now_ms: u64,
        acl: &Acl,
    ) -> Result<Prepared, OpError> {
        let map = self.store.shard(self.shard_id).map.pin();
        let entry = map.get(request.id).ok_or(OpError::NotFound)?;
        let current = entry.current();
        check_access(current, acl)?;
        if current.is_expired(now_ms) {
            return Err(OpError::Expired);
        }
        let change = match entry.is_deleted() {
            true => Change::Undelete,
            false => Change::Nothing { outcome: current.version() },
        };
        Ok(Prepared { id: request.id.into(), base_version: current.version(), change })
    }

    /// Erases one kept version's ciphertext for good, keeping its metadata (its state becomes
    /// destroyed); a version destroyed already is left as it is. Returns that version.
    ///
    /// # Errors
    /// [`OpError::NotFound`] for an absent credential, [`OpError::Unauthorized`] for one (or
    /// that version) outside `acl`, [`OpError::Deleted`], [`OpError::Expired`],
    /// [`OpError::VersionNotFound`] for a version not kept.
    fn prepare_destroy(
        &self,
        request: &DestroyRequest<'_>,
        now_ms: u64,
        acl: &Acl,
    ) -> Result<Prepared, OpError> {
        let map = self.store.shard(self.shard_id).map.pin();
        let entry = map.get(request.id).ok_or(OpError::NotFound)?;
        let current = entry.current();
        check_live(entry, now_ms, acl)?;
        let record = entry
            .versions()
            .find(|record| record.version() == request.version)
            .ok_or(OpError::VersionNotFound)?;
        check_access(record, acl)?;
        let change = match record.is_destroyed() {
            true => Change::Nothing { outcome: request.version },
            false => Change::Destroy(record.destroyed()?),
        };
        // The reply names the destroyed version; the base is what is current.
        Ok(Prepared { id: request.id.into(), base_version: current.version(), change })
    }

    /// Writes a new version as pending: the request's owner, scope, kind, labels, expiry and
    /// secret, stored beside the current version and not served as current until PROMOTE. A
    /// pending version written before is dropped (its number is not reused). Returns the
    /// pending version.
    ///
    /// # Errors
    /// As ROTATE: [`OpError::NotFound`] (a pending version needs a current one),
    /// [`OpError::Unauthorized`] (the new owner and scope, or the credential's, outside `acl`),
    /// [`OpError::Deleted`], [`OpError::Expired`], [`OpError::VersionConflict`] when
    /// `expected_version` is not the current version, [`OpError::Unavailable`] (no data key).
    fn prepare_stage(&self, request: &StageRequest<'_>, now_ms: u64, acl: &Acl) -> Result<Prepared, OpError> {
        if !acl.covers(request.owner, request.scope) {
            return Err(OpError::Unauthorized("this token may not write credentials of this owner or scope"));
        }
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        let entry = map.get(request.id).ok_or(OpError::NotFound)?;
        let current = entry.current();
        check_live(entry, now_ms, acl)?;
        check_pending_access(entry, acl)?;
        check_cas_required(entry, request.expected_version, current.version())?;
        check_expected(request.expected_version, current.version())?;
        let fields = VersionFields {
            version: entry.last_version() + 1,
            created_at_ms: current.credential().created_at_ms.to_native(),
            updated_at_ms: now_ms,
            expires_at_ms: request.expiry.resolve(now_ms),
            // Set when it is promoted: the grace period runs from then.
            previous_grace_until_ms: 0,
        };
        let record = Record::seal(CredentialFields::from(request), fields, store.keyring())?;
        Ok(Prepared {
            id: request.id.into(),
            base_version: current.version(),
            change: Change::Pending { record, replaces: entry.pending().map_or(0, Record::version) },
        })
    }

    /// Makes the pending version current; the version it replaces stays readable for the
    /// grace period (the request's, or the server's) and is retired after it, as after ROTATE.
    /// Returns the version now current.
    ///
    /// # Errors
    /// [`OpError::NotFound`], [`OpError::Unauthorized`] (the credential or its pending version
    /// outside `acl`), [`OpError::Deleted`], [`OpError::Expired`],
    /// [`OpError::PendingConflict`] when `expected_version` is not the pending version,
    /// [`OpError::NoPending`], [`OpError::Unavailable`] (no data key to seal it again with).
    fn prepare_promote(
        &self,
        request: &PromoteRequest<'_>,
        now_ms: u64,
        acl: &Acl,
    ) -> Result<Prepared, OpError> {
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        let entry = map.get(request.id).ok_or(OpError::NotFound)?;
        let current = entry.current();
        check_live(entry, now_ms, acl)?;
        let pending_version = entry.pending().map_or(0, Record::version);
        // For PROMOTE the version to name is the pending one.
        check_cas_required(entry, request.expected_version, pending_version)?;
        if request.expected_version.is_some_and(|expected| expected != pending_version) {
            return Err(OpError::PendingConflict { pending_version });
        }
        let pending = entry.pending().ok_or(OpError::NoPending)?;
        check_access(pending, acl)?;
        let grace_ms = request
            .grace_period_seconds
            .map_or(store.lifecycle().grace_period_ms, |seconds| seconds.saturating_mul(1000));
        let record = pending.promoted(store.keyring(), now_ms.saturating_add(grace_ms).max(1))?;
        Ok(Prepared {
            id: request.id.into(),
            base_version: current.version(),
            change: Change::Promote(record),
        })
    }

    /// Replaces a credential's policy; versions past its `max_versions` are dropped at once.
    /// Returns the current version (a policy is not a version).
    ///
    /// # Errors
    /// [`OpError::NotFound`], [`OpError::Unauthorized`], [`OpError::Deleted`],
    /// [`OpError::Expired`].
    fn prepare_set_policy(
        &self,
        request: &SetPolicyRequest<'_>,
        now_ms: u64,
        acl: &Acl,
    ) -> Result<Prepared, OpError> {
        let map = self.store.shard(self.shard_id).map.pin();
        let entry = map.get(request.id).ok_or(OpError::NotFound)?;
        let current = entry.current();
        check_live(entry, now_ms, acl)?;
        let policy = StoredPolicy::of(&request.policy);
        Ok(Prepared {
            id: request.id.into(),
            base_version: current.version(),
            change: Change::Policy(policy),
        })
    }

    /// Checks `write` against the shard's current state (access, compare-and-set, expiry)
    /// and seals its record, without applying it: [`ShardWriter::submit`] applies it at once;
    /// with a shared database as the system of record the database decides first, and
    /// [`ShardWriter::install_committed`] applies what it committed.
    ///
    /// # Errors
    /// As the write would fail (see PUT, ROTATE and DELETE in docs/protocol.md).
    pub fn prepare(&self, write: Write<'_>, now_ms: u64, acl: &Acl) -> Result<Prepared, OpError> {
        match write {
            Write::Put(put) => self.prepare_put(put, now_ms, acl),
            Write::Rotate(rotate) => self.prepare_rotate(rotate, now_ms, acl),
            Write::Delete(delete) => self.prepare_delete(delete, now_ms, acl),
            Write::Undelete(undelete) => self.prepare_undelete(undelete, now_ms, acl),
            Write::Destroy(destroy) => self.prepare_destroy(destroy, now_ms, acl),
            Write::Stage(stage) => self.prepare_stage(stage, now_ms, acl),
            Write::Promote(promote) => self.prepare_promote(promote, now_ms, acl),
            Write::SetPolicy(set) => self.prepare_set_policy(set, now_ms, acl),
        }
    }

    /// Applies a prepared write to the map, the index and the expiry set, and appends it to
    /// the log (if any) and, as `announced` at its time, to the shard's feed.
    fn apply(&mut self, prepared: Prepared, announced: Option<(ChangeKind, u64)>) {
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        let existing = map.get(&*prepared.id);
        debug_assert_eq!(existing.map_or(0, |entry| entry.current().version()), prepared.base_version);
        // What the feed says, read before the change (a purge removes the entry).
        let event = announced.and_then(|(change, at_ms)| {
            let (record, version) = match &prepared.change {
                Change::Version { record, .. }
                | Change::Pending { record, .. }
                | Change::Promote(record)
                | Change::Destroy(record) => (record.clone(), record.version()),
                Change::Delete => existing.map(|entry| (entry.current().clone(), entry.last_version()))?,
                _ => existing.map(|entry| (entry.current().clone(), prepared.base_version))?,
            };
            Some((change, at_ms, record, version))
        });
        let id = prepared.id.clone();
        self.apply_change(prepared, &map, existing);
        if let Some((change, at_ms, record, version)) = event {
            self.announce(change, &id, version, at_ms, &record);
        }
    }

    fn apply_change(
        &mut self,
        prepared: Prepared,
        map: &super::shard::PinnedMap<'_>,
        existing: Option<&Entry>,
    ) {
        let store = Arc::clone(&self.store);
        match prepared.change {
            Change::Version { record, keep_history } => {
                let live = existing.filter(|_| keep_history);
                self.install(&prepared.id, record, live, existing);
                self.evict_past_capacity(Some(&prepared.id));
            }
            Change::Delete => {
                if let Some(entry) = existing {
                    self.purge(&prepared.id, entry, None);
                }
            }
            Change::SoftDelete(deletion) => {
                let entry = existing.expect("a deleted credential exists");
                if !entry.is_deleted() {
                    self.unindex_index_only(entry.current());
                }
                map.insert(entry.snapshot().with_deletion(Some(deletion)));
                self.purges.insert((deletion.purge_at_ms, prepared.id.clone()));
                if let Some(log) = &self.log {
                    let body = wal::soft_delete_body(
                        &prepared.id,
                        prepared.base_version,
                        deletion.deleted_at_ms,
                        deletion.purge_at_ms,
                    );
                    log.append(EntryType::SoftDelete, &body);
                }
            }
            Change::Undelete => {
                let entry = existing.expect("an undeleted credential exists");
                let credential = entry.current().credential();
                self.store.shard(self.shard_id).index.write().expect("index lock").insert(
                    credential.owner.as_str(),
                    credential.scope.as_str(),
                    &prepared.id,
                );
                map.insert(entry.snapshot().with_deletion(None));
                if let Some(log) = &self.log {
                    log.append(EntryType::Undelete, &wal::version_body(&prepared.id, prepared.base_version));
                }
            }
            Change::Destroy(husk) => {
                if let Some(log) = &self.log {
                    log.append(EntryType::Rewrap, husk.archive_bytes());
                }
                // As replay applies the logged REWRAP.
                replace_version(&store, self.shard_id, husk);
            }
            Change::Pending { record, .. } => {
                let entry = existing.expect("a staged credential exists");
                if let Some(log) = &self.log {
                    log.append(EntryType::Pending, record.archive_bytes());
                }
                map.insert(entry.snapshot().with_pending(Some(record)));
            }
            Change::Policy(policy) => {
                if let Some(log) = &self.log {
                    let mut encoded = Vec::new();
                    policy.as_ref().map_or(Policy::default(), StoredPolicy::wire).encode(&mut encoded);
                    log.append(
                        EntryType::Policy,
                        &wal::policy_body(&prepared.id, prepared.base_version, &encoded),
                    );
                }
                // As replay applies the logged POLICY.
                set_policy(&store, self.shard_id, &prepared.id, policy);
            }
            Change::Promote(record) => {
                if let Some(log) = &self.log {
                    log.append(EntryType::Promote, record.archive_bytes());
                }
                // As a ROTATE to the pending version: the history stays.
                self.install_unlogged(&prepared.id, record, existing, existing);
            }
            Change::Nothing { .. } => {}
        }
    }

    /// Removes `id` (held as `entry`) and every version for good, logs it, and (where purges
    /// are remembered) keeps its last version so that a later write continues after it.
    /// `announced`: the change and its time to tell watchers (a sweep's; a DELETE's purge is
    /// announced by `apply`).
    fn purge(&mut self, id: &str, entry: &Entry, announced: Option<(ChangeKind, u64)>) {
        let version = entry.last_version();
        if let Some((change, at_ms)) = announced {
            self.announce(change, id, version, at_ms, &entry.current().clone());
        }
        self.unindex(entry.current());
        self.store.shard(self.shard_id).map.pin().remove(id);
        self.store.shard(self.shard_id).note_purged(id, version);
        if let Some(log) = &self.log {
            log.append(EntryType::Purge, &wal::version_body(id, version));
        }
    }

    /// The last version of `id` before it was purged (0: never purged).
    fn purged_version(&self, id: &str) -> u64 {
        self.store.shard(self.shard_id).purged_version(id)
    }

    /// Applies a write the shared database committed, unless the shard has moved on from the
    /// version it was prepared against meanwhile (the change log brought a newer state).
    pub fn install_committed(&mut self, prepared: Prepared) {
        let current = self.cached_version(&prepared.id);
        self.note_install(&prepared.id);
        // A change in place is not ordered by the version against one the follower installed
        // meanwhile (another instance's next change of the same version): the credential is
        // read again with the next poll, which sees whatever committed last.
        let in_place =
            !matches!(prepared.change, Change::Version { .. } | Change::Delete | Change::Nothing { .. });
        let reread = in_place.then(|| prepared.id.clone());
        if current == prepared.base_version {
            self.apply(prepared, None);
        }
        if let Some(id) = reread {
            self.rereads.raced.insert(id);
        }
        self.bound_purged_hints();
    }

    /// With a shared database, the shard's memory of purged ids is a hint (the database refuses
    /// a write that would reuse a version, and the credential's re-read brings the last
    /// version back): it is dropped whenever it grows past [`PURGED_HINTS_MAX`], so that
    /// purges and misses of purged ids do not grow it without bound.
    fn bound_purged_hints(&self) {
        let mut purged = self.store.shard(self.shard_id).purged.lock().expect("purged lock");
        if purged.len() > PURGED_HINTS_MAX {
            purged.clear();
        }
    }

    fn note_install(&mut self, id: &str) {
        let rereads = &mut self.rereads;
        rereads.installs += 1;
        if !rereads.in_flight.is_empty() {
            rereads.installed.insert(id.into(), rereads.installs);
        }
    }

    /// A re-read from the shared database begins; returns its mark for
    /// [`ShardWriter::install_reread`] and [`ShardWriter::end_reread`].
    pub fn begin_reread(&mut self) -> u64 {
        let mark = self.rereads.installs;
        *self.rereads.in_flight.entry(mark).or_default() += 1;
        mark
    }

    /// The re-read that began at `mark` has ended.
    pub fn end_reread(&mut self, mark: u64) {
        let rereads = &mut self.rereads;
        if let Some(count) = rereads.in_flight.get_mut(&mark) {
            *count -= 1;
            if *count == 0 {
                rereads.in_flight.remove(&mark);
            }
        }
        match rereads.in_flight.keys().next() {
            None => rereads.installed.clear(),
            Some(&oldest) => rereads.installed.retain(|_, installed| *installed > oldest),
        }
    }

    /// [`ShardWriter::install_fetched`] of what a re-read that began at `mark` read, unless
    /// the shard installed something of `id` since it began: then `id` is to be read again.
    pub fn install_reread(
        &mut self,
        mark: u64,
        id: &str,
        records: Vec<Record>,
        deleted_version: Option<u64>,
        state: FetchedState,
    ) {
        if self.rereads.installed.get(id).is_some_and(|installed| *installed > mark) {
            self.rereads.raced.insert(id.into());
            return;
        }
        self.install_fetched(id, records, deleted_version, state);
    }

    /// Credentials whose re-read raced another install of them: to read again.
    pub fn take_raced(&mut self) -> BTreeSet<Box<str>> {
        std::mem::take(&mut self.rereads.raced)
    }

    /// The ids the shard holds.
    pub fn cached_ids(&self) -> Vec<Box<str>> {
        self.store.shard(self.shard_id).map.pin().iter().map(|entry| Box::from(entry.id())).collect()
    }

    /// The last version number `id` has used, as the shard holds it (its pending version's,
    /// else its current one's; 0: none held).
    pub fn cached_last_version(&self, id: &str) -> u64 {
        self.store.shard(self.shard_id).map.pin().get(id).map_or(0, Entry::last_version)
    }

    /// What the shard holds of `id` beside its current version: whether it is deleted
    /// (recoverably), its policy, its pending version (0: none).
    pub fn base_state(&self, id: &str) -> (bool, Option<StoredPolicy>, u64) {
        let map = self.store.shard(self.shard_id).map.pin();
        map.get(id).map_or((false, None, 0), |entry| {
            (entry.is_deleted(), entry.policy().cloned(), entry.pending().map_or(0, Record::version))
        })
    }

    /// The current version's record the shard holds for `id`.
    pub fn current_record(&self, id: &str) -> Option<Record> {
        self.store.shard(self.shard_id).map.pin().get(id).map(|entry| entry.current().clone())
    }

    /// The current version the shard holds for `id` (0: none).
    pub fn cached_version(&self, id: &str) -> u64 {
        self.store.shard(self.shard_id).map.pin().get(id).map_or(0, |entry| entry.current().version())
    }

    /// The versions `oldest..=newest` the shard holds for `id`, oldest first (shared bytes,
    /// no copy); empty unless the shard's version `newest` is archived as `newest_bytes`
    /// (then what it holds up to there is what the database holds).
    pub fn cached_records(&self, id: &str, oldest: u64, newest: u64, newest_bytes: &[u8]) -> Vec<Record> {
        let map = self.store.shard(self.shard_id).map.pin();
        let Some(entry) = map.get(id) else { return Vec::new() };
        if !entry
            .versions()
            .any(|record| record.version() == newest && record.archive_bytes() == newest_bytes)
        {
            return Vec::new();
        }
        entry
            .versions()
            .rev()
            .filter(|record| (oldest..=newest).contains(&record.version()))
            .cloned()
            .collect()
    }

    /// The oldest version a shared database keeps once `prepared` is applied (0: it drops
    /// none): the versions the shard's entry keeps then, by the credential's policy (the new
    /// one, for SET_POLICY) or the server's `max_versions`.
    pub fn keep_from_version(&self, prepared: &Prepared) -> u64 {
        let map = self.store.shard(self.shard_id).map.pin();
        let existing = map.get(&*prepared.id);
        let default = self.store.lifecycle().max_versions;
        let policy = match &prepared.change {
            Change::Policy(policy) => policy.as_ref(),
            _ => existing.and_then(Entry::policy),
        };
        let max_versions = policy.map_or(default, |policy| policy.max_versions_or(default));
        let oldest_of = |kept: usize, newest: u64| {
            existing.and_then(|entry| entry.versions().take(kept).next_back()).map_or(newest, Record::version)
        };
        match &prepared.change {
            // As `install_entry`: the new version and the live entry's newest `max - 1`.
            Change::Version { record, keep_history: true } | Change::Promote(record) => {
                oldest_of(max_versions - 1, record.version()).min(record.version())
            }
            Change::Version { record, keep_history: false } => record.version(),
            // As `set_policy`: the newest `max`.
            Change::Policy(_) => oldest_of(max_versions, prepared.base_version),
            _ => 0,
        }
    }

    /// Replaces the shard's state of `id` with `records` read from the shared database
    /// (oldest first; empty: the credential is gone) and `state` (what it has beside them),
    /// unless the shard already holds a newer version. `deleted_version` is the version a
    /// purge removed, when the change log said so: a cached version above it is kept.
    pub fn install_fetched(
        &mut self,
        id: &str,
        mut records: Vec<Record>,
        deleted_version: Option<u64>,
        state: FetchedState,
    ) {
        self.note_install(id);
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        let mut cached = map.get(id).map_or(0, |entry| entry.current().version());
        if !records.is_empty() && deleted_version.is_some_and(|deleted| cached != 0 && cached <= deleted) {
            // What the shard holds was purged, and what was read is what the database has
            // since, under numbers that may not be above it (versions restarted by a build
            // before migration 5): it replaces the old entry whatever its versions (in one
            // swap below, so a reader never misses the credential).
            cached = 0;
        }
        let Some(newest) = records.pop() else {
            if state.purged_version != 0 {
                store.shard(self.shard_id).note_purged(id, state.purged_version);
                self.bound_purged_hints();
            }
            if cached == 0 || deleted_version.is_some_and(|deleted| cached > deleted) {
                return;
            }
            if let Some(entry) = map.get(id) {
                self.unindex(entry.current());
                map.remove(id);
            }
            return;
        };
        if cached > newest.version() {
            return;
        }
        // One entry holding every kept version and the state beside them, put in the map at
        // once: a reader on another executor sees the state before or the state after, never
        // the older versions alone. At the version the shard holds, the state (a deletion, a
        // pending version, a policy, a destroyed version) may still have changed.
        let entry = Entry::new(std::iter::once(newest).chain(records.into_iter().rev()))
            .with_policy(state.policy)
            .with_pending(state.pending)
            .with_deletion(state.deletion);
        let existing = map.get(id);
        self.replace_entry(id, entry, existing);
        self.evict_past_capacity(Some(id));
    }

    /// Puts `entry` in the map as `id`'s (replacing `existing`), keeping the index, the
    /// expiry set and the eviction clock up to date.
    fn replace_entry(&mut self, id: &str, entry: Entry, existing: Option<&Entry>) {
        // The map files the entry under its current record's id (the shared database's rows
        // are checked for it when read).
        debug_assert_eq!(entry.id(), id);
        self.store.shard(self.shard_id).reindex(id, existing, &entry);
        let expiry = |entry: &Entry| entry.current().credential().expires_at_ms.to_native();
        let (old_expiry, new_expiry) = (existing.map_or(0, expiry), expiry(&entry));
        if old_expiry != new_expiry {
            if old_expiry != 0 {
                self.expiries.remove(&(old_expiry, Box::from(id)));
            }
            if new_expiry != 0 {
                self.expiries.insert((new_expiry, id.into()));
            }
        }
        if existing.is_none() {
            self.store.shard(self.shard_id).purged.lock().expect("purged lock").remove(id);
            if self.store.shard_capacity().is_some() {
                self.clock.push_back(id.into());
            }
        }
        self.store.shard(self.shard_id).map.pin().insert(entry);
    }

    /// Credentials whose expiry has passed, with their current versions (the shared
    /// database's sweep removes each only from that version).
    pub fn expired(&self, now_ms: u64) -> Vec<(Box<str>, u64)> {
        let map = self.store.shard(self.shard_id).map.pin();
        self.expiries
            .iter()
            .take_while(|(expires_at_ms, _)| *expires_at_ms <= now_ms)
            .filter_map(|(_, id)| {
                let entry = map.get(&**id)?;
                entry.current().is_expired(now_ms).then(|| (id.clone(), entry.current().version()))
            })
            .collect()
    }

    /// Forgets the recovery windows that ended by `now_ms` (with a shared database, whose
    /// sweep finds them in the database instead).
    pub fn forget_ended_recovery_windows(&mut self, now_ms: u64) {
        while self.purges.first().is_some_and(|(purge_at_ms, _)| *purge_at_ms <= now_ms) {
            self.purges.pop_first();
        }
    }

    /// Purges every credential whose expiry has passed, and every deleted one whose recovery
    /// window has ended, and logs each purge; returns how many.
    pub fn sweep_expired(&mut self, now_ms: u64) -> usize {
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        let mut swept = 0;
        while let Some(first) = self.expiries.first() {
            if first.0 > now_ms {
                break;
            }
            let (expires_at_ms, id) = self.expiries.pop_first().expect("checked above");
            // The entry may have been replaced since: sweep only what is still expired.
            if let Some(entry) = map.get(&*id) {
                let current = entry.current();
                if current.credential().expires_at_ms.to_native() == expires_at_ms
                    && current.is_expired(now_ms)
                {
                    self.purge(&id, entry, Some((ChangeKind::Expire, now_ms)));
                    swept += 1;
                }
            }
        }
        while let Some(first) = self.purges.first() {
            if first.0 > now_ms {
                break;
            }
            let (purge_at_ms, id) = self.purges.pop_first().expect("checked above");
            // Undeleted, written again or deleted again since: purge only what is still due.
            if let Some(entry) = map.get(&*id) {
                if entry.deletion().is_some_and(|deletion| deletion.purge_at_ms == purge_at_ms) {
                    self.purge(&id, entry, Some((ChangeKind::Purge, now_ms)));
                    swept += 1;
                }
            }
        }
        swept
    }

    /// Ids of this shard's credentials with a kept version on a data key other than `active`
    /// (the re-encryption's work list).
    pub fn rewrap_candidates(&self, active_key_id: u32) -> Vec<Box<str>> {
        let map = self.store.shard(self.shard_id).map.pin();
        map.iter()
            .filter(|entry| {
                entry
                    .versions()
                    .chain(entry.pending())
                    .any(|record| record.key_id() != active_key_id && !record.is_destroyed())
            })
            .map(|entry| Box::from(entry.id()))
            .collect()
    }

    /// Re-encrypts, with the key ring's active key, every kept version of `id` (and its
    /// pending one) that is on another key, logging each as a REWRAP; versions, metadata and
    /// the index are unchanged.
    /// Returns how many versions it re-encrypted (0 when the credential is gone or already
    /// on the active key).
    ///
    /// # Errors
    /// [`OpError::Unavailable`] while the log cannot be written or no key is available;
    /// [`OpError::Internal`] for a version whose ciphertext does not open (it stays as it is,
    /// and so does its key).
    pub fn rewrap(&mut self, id: &str) -> Result<usize, OpError> {
        let store = Arc::clone(&self.store);
        let keyring = store.keyring();
        let map = store.shard(self.shard_id).map.pin();
        let Some(entry) = map.get(id) else { return Ok(0) };
        let active_key_id = keyring.active_key_id();
        let settled = |record: &Record| record.key_id() == active_key_id || record.is_destroyed();
        if entry.versions().chain(entry.pending()).all(settled) {
            return Ok(0);
        }
        self.check_writable()?;
        let rewrap = |record: &Record| match settled(record) {
            true => Ok(record.clone()),
            false => record.rewrap(keyring),
        };
        let rewrapped = entry.versions().map(rewrap).collect::<Result<Vec<Record>, OpError>>()?;
        let pending = entry.pending().map(rewrap).transpose()?;
        let mut count = 0;
        let old = entry.versions().chain(entry.pending());
        for (new, old) in rewrapped.iter().chain(pending.as_ref()).zip(old) {
            if !new.same_as(old) {
                if let Some(log) = &self.log {
                    log.append(EntryType::Rewrap, new.archive_bytes());
                }
                count += 1;
            }
        }
        map.insert(entry.with_versions(rewrapped).with_pending(pending));
        Ok(count)
    }

    /// Installs `record` as the current version of `id` (see [`install_entry`]), logs it, and
    /// keeps the expiry set up to date.
    fn install(&mut self, id: &str, record: Record, live: Option<&Entry>, existing: Option<&Entry>) {
        if let Some(log) = &self.log {
            log.append(EntryType::Record, record.archive_bytes());
        }
        self.install_unlogged(id, record, live, existing);
    }

    /// [`ShardWriter::install`] of a write logged otherwise.
    fn install_unlogged(&mut self, id: &str, record: Record, live: Option<&Entry>, existing: Option<&Entry>) {
        let old_expires_at_ms =
            existing.map_or(0, |entry| entry.current().credential().expires_at_ms.to_native());
        let expires_at_ms = record.credential().expires_at_ms.to_native();
        install_entry(&self.store, self.shard_id, id, record, live, existing, true);
        if old_expires_at_ms != expires_at_ms {
            if old_expires_at_ms != 0 {
                self.expiries.remove(&(old_expires_at_ms, Box::from(id)));
            }
            if expires_at_ms != 0 {
                self.expiries.insert((expires_at_ms, id.into()));
            }
        }
        if existing.is_none() && self.store.shard_capacity().is_some() {
            self.clock.push_back(id.into());
        }
    }

    /// With a bounded cache: evicts credentials until the shard holds no more than its share
    /// of the capacity, by the CLOCK rule. The hand takes the oldest id in the clock; one read
    /// since the hand last passed (see [`Entry::touch`]) buys it another turn, one that was
    /// not read is evicted. A new entry starts marked, so it survives at least one full turn
    /// of the clock. An evicted credential is read again from the database when asked for;
    /// from the first eviction on, the shard is partial (a missing id may exist).
    /// `keep` (the credential just installed) is never the one evicted.
    fn evict_past_capacity(&mut self, keep: Option<&str>) {
        let Some(capacity) = self.store.shard_capacity() else { return };
        let store = Arc::clone(&self.store);
        let shard = store.shard(self.shard_id);
        let map = shard.map.pin();
        // Two turns of the hand always find an unmarked entry (the first clears the marks).
        let mut turns_left = 2 * self.clock.len();
        while map.len() > capacity && turns_left > 0 {
            turns_left -= 1;
            let Some(id) = self.clock.pop_front() else { break };
            let Some(entry) = map.get(&*id) else { continue };
            if entry.take_reference() || keep == Some(&*id) {
                self.clock.push_back(id);
                continue;
            }
            // Partial before the entry goes: a reader that misses it then sees it may exist.
            shard.complete.store(false, Ordering::Release);
            self.unindex(entry.current());
            map.remove(&*id);
            shard.evictions.store(shard.evictions.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        // Ids removed (deleted, swept) and written again linger: drop them now and then.
        if self.clock.len() > 2 * map.len() + 64 {
            let mut seen = HashSet::new();
            self.clock.retain(|id| map.contains(&**id) && seen.insert(id.clone()));
        }
    }

    /// Installs an arbitrary record as the current version (tests of failure paths).
    #[cfg(test)]
    pub(crate) fn install_for_test(&mut self, id: &str, record: Record) {
        let store = Arc::clone(&self.store);
        let map = store.shard(self.shard_id).map.pin();
        let existing = map.get(id);
        self.install(id, record, existing, existing);
    }

    /// Takes a removed credential out of the index and the expiry set.
    fn unindex(&mut self, current: &Record) {
        let credential = current.credential();
        let expires_at_ms = credential.expires_at_ms.to_native();
        if expires_at_ms != 0 {
            self.expiries.remove(&(expires_at_ms, Box::from(credential.id.as_str())));
        }
        self.unindex_index_only(current);
    }

    fn unindex_index_only(&self, current: &Record) {
        let credential = current.credential();
        let mut index = self.store.shard(self.shard_id).index.write().expect("index lock");
        index.remove(credential.owner.as_str(), credential.scope.as_str(), credential.id.as_str());
    }
}

/// Refuses a deleted credential, naming when it is purged.
fn check_not_deleted(entry: &Entry) -> Result<(), OpError> {
    match entry.deletion() {
        Some(deletion) => Err(OpError::Deleted { purge_at_ms: deletion.purge_at_ms }),
        None => Ok(()),
    }
}

/// Compare-and-set: `expected` (if any) must equal `current_version` (0 when absent).
/// The checks of a write to a live credential, in the order docs/protocol.md gives: the
/// current version within `acl`, not deleted, not expired.
fn check_live(entry: &Entry, now_ms: u64, acl: &Acl) -> Result<(), OpError> {
    check_access(entry.current(), acl)?;
    check_not_deleted(entry)?;
    if entry.current().is_expired(now_ms) {
        return Err(OpError::Expired);
    }
    Ok(())
}

/// Refuses a write that would drop a pending version outside `acl` (STAGE may give a pending
/// version another owner or scope than the current one's).
fn check_pending_access(entry: &Entry, acl: &Acl) -> Result<(), OpError> {
    entry.pending().map_or(Ok(()), |pending| check_access(pending, acl))
}

/// Refuses a write without an expected version to a credential whose policy requires one.
fn check_cas_required(entry: &Entry, expected: Option<u64>, current_version: u64) -> Result<(), OpError> {
    match (expected, entry.policy()) {
        (None, Some(policy)) if policy.cas_required => Err(OpError::CasRequired { current_version }),
        _ => Ok(()),
    }
}

fn check_expected(expected: Option<u64>, current_version: u64) -> Result<(), OpError> {
    match expected {
        Some(expected) if expected != current_version => Err(OpError::VersionConflict { current_version }),
        _ => Ok(()),
    }
}
