//! Files in the data dir: the manifest, one write-ahead log per shard, and (beside them) the
//! key ring and, when the server generated it, the master key.
//!
//! - [`manifest`]: format version, shard count and hash, current log generation.
//! - [`wal`]: the log format (batches of entries with CRC32C), parsing and torn-tail rules.
//! - [`log`]: the running server's group-committed log writer (io_uring via glommio).
//! - [`recovery`]: rebuilding the shards' maps from the logs at start, resharding, compaction.
//! - [`lock`]: the data dir's lock, so that one data dir serves one server at a time.
//! - [`archive`]: a version's archived bytes in one shared aligned buffer ([`Archive`]): what
//!   the shards hold and what storage writes.
//!
//! The seam between the shards and their storage is two traits, so that the arrow points one
//! way (the data core calls storage; storage never names the data core's types):
//! [`ShardStorage`], through which a shard's writer appends entries and learns when they are
//! committed, and [`Shards`], through which storage reads the shards (snapshots, rewrites)
//! and recovery replays the logs into them. The local log implements the first; a PostgreSQL
//! system of record can implement it without touching the shards, the protocol or the server.

pub mod archive;
pub mod lock;
pub mod log;
pub mod manifest;
pub mod postgres;
pub mod recovery;
pub mod wal;

use std::rc::Rc;

use futures::channel::oneshot;

pub use archive::Archive;

use crate::error::{EngineError, WriteOutcome};
use crate::storage::wal::EntryType;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// After its batch is written and fdatasync'ed: acknowledged means on disk.
    Always,
    /// After its batch is written to the page cache: survives a process crash, not a power
    /// loss or kernel crash.
    Never,
}

/// One entry of a snapshot (or of a log rewritten after a change of shard count).
pub enum SnapshotItem {
    /// A kept version: a RECORD entry of its archive, shared with the shard.
    Record(Archive),
    /// Any other entry (SOFT_DELETE, PURGE) and its body.
    Entry(EntryType, Vec<u8>),
}

impl SnapshotItem {
    /// Appends the item as a log entry to a batch payload being built.
    pub fn encode(&self, payload: &mut Vec<u8>) {
        match self {
            SnapshotItem::Record(archive) => wal::encode_entry(EntryType::Record, archive.bytes(), payload),
            SnapshotItem::Entry(entry_type, body) => wal::encode_entry(*entry_type, body, payload),
        }
    }
}

/// What storage needs of the shards it keeps: their contents for snapshots and rewrites, and
/// a place to replay the logs into at start.
pub trait Shards: Send + Sync {
    fn shard_count(&self) -> usize;

    /// Credentials held in all shards.
    fn credentials(&self) -> usize;

    /// What replay needs to rebuild shard `shard_id` as it is: every kept version, each
    /// credential's oldest first, each deleted credential's deletion after its versions, and
    /// the last version of every purged id.
    fn snapshot_items(&self, shard_id: usize) -> Vec<SnapshotItem>;

    /// Replays logged entries, in order, into shard `shard_id` (empty before); returns the
    /// versions it keeps. With `own_log`, `sources` is that shard's own log and an entry of
    /// another shard is corruption; otherwise (the shard count changed) `sources` are every
    /// old log and entries of other shards are skipped.
    ///
    /// # Errors
    /// A record that fails validation, or an entry in the wrong shard's log.
    fn replay(
        &self,
        shard_id: usize,
        sources: &[&[wal::Entry<'_>]],
        own_log: bool,
    ) -> Result<usize, EngineError>;
}

/// Where a shard's writer sends its writes to make them durable. All calls come from the
/// shard's own executor, in write order.
pub trait ShardStorage {
    /// Adds an entry (a record's archive, or a deleted id) to the next commit.
    fn append(&self, entry_type: EntryType, body: &[u8]);

    /// Sends `outcome` on `reply` once every entry appended so far is committed (or a
    /// failure outcome if the commit fails).
    fn when_committed(&self, reply: oneshot::Sender<WriteOutcome>, outcome: WriteOutcome);

    /// Sends `Ok(0)` on `reply` once every entry appended so far is on disk (synced, in any
    /// fsync mode), or an error if that fails. A data-key rotation drops a retiring key only
    /// after the records it re-encrypted are durable.
    fn when_durable(&self, reply: oneshot::Sender<WriteOutcome>);

    /// True while commits fail: the shard must refuse new writes (reads go on).
    fn is_failing(&self) -> bool;

    /// Tells `listener` about every commit from now on (the shard's change feed). Storage
    /// that does not commit in batches may ignore it.
    fn listen(&self, listener: Rc<dyn CommitListener>) {
        let _ = listener;
    }
}

/// Follows a shard storage's commits.
pub trait CommitListener {
    /// A commit takes everything appended so far; the mark returned is handed back to
    /// [`CommitListener::committed`] if that commit succeeds.
    fn taken(&self) -> u64;

    /// The commit that took `mark` succeeded; called before any of its writes is answered.
    fn committed(&self, mark: u64);
}
