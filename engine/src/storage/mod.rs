//! Files in the data dir: the manifest, one write-ahead log per shard, and (beside them) the
//! key ring and, when the server generated it, the master key.
//!
//! - [`manifest`]: format version, shard count and hash, current log generation.
//! - [`wal`]: the log format (batches of entries with CRC32C), parsing and torn-tail rules.
//! - [`log`]: the running server's group-committed log writer (io_uring via glommio).
//! - [`recovery`]: rebuilding the shards' maps from the logs at start, resharding, compaction.
//! - [`lock`]: the data dir's lock, so that one data dir serves one server at a time.
//!
//! The storage seam the shards use is small: [`ShardStorage`] to append entries and learn when
//! they are committed, and `recovery::recover` to fill the maps at start. The local log
//! implements it; a PostgreSQL system of record can implement it without touching the shards,
//! the protocol or the server.

pub mod lock;
pub mod log;
pub mod manifest;
pub mod recovery;
pub mod wal;

use futures::channel::oneshot;

use crate::error::WriteOutcome;
use crate::storage::wal::EntryType;

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
}
