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

use std::io::Write;
use std::path::Path;

use futures::channel::oneshot;

use crate::server::router::WriteOutcome;
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

/// Replaces `path` with `bytes` atomically: write a temp file beside it, fsync it, rename it
/// over `path`, fsync the directory. A crash leaves either the old or the new file.
///
/// # Errors
/// Any I/O error; the temp file is removed on failure where possible.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(".tmp");
    let temp_path = directory.join(temp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&temp_path)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp_path, path)?;
        std::fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        write_file_atomically(&path, b"one").unwrap();
        write_file_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file is left behind");
    }
}
