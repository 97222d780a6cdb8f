//! A shard's write-ahead log as the running server writes it: group commit over io_uring
//! (glommio `BufferedFile`: page-cache writes and `fdatasync` submitted through the ring).
//!
//! The shard's writer appends each applied write's entry to the pending batch and parks the
//! write's reply beside it. The committer task takes the whole pending batch (every write that
//! arrived since the last commit), writes it with one `write` and, in `--fsync always` mode,
//! makes it durable with one `fdatasync`; only then are the batch's replies sent. Writes that
//! arrive meanwhile form the next batch.
//!
//! When a write or sync fails (disk full, I/O error), the batch's writes are answered
//! UNAVAILABLE (their outcome is unknown to the client: they are already applied in memory and
//! will reach the disk when it recovers), the shard refuses new writes (reads go on), and the
//! committer retries the same batch at the same offset until it succeeds.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::{BufferedFile, OpenOptions};

use crate::error::OpError;
use crate::server::router::WriteOutcome;
use crate::storage::wal::{encode_batch, encode_entry, EntryType};

/// The scheduling latency the committer's task queue asks of the executor.
const COMMITTER_LATENCY: Duration = Duration::from_micros(250);
/// How long the committer waits before retrying a failed batch.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncMode {
    /// After its batch is written and fdatasync'ed: acknowledged means on disk.
    Always,
    /// After its batch is written to the page cache: survives a process crash, not a power
    /// loss or kernel crash.
    Never,
}

pub struct ShardLog {
    file: BufferedFile,
    path: PathBuf,
    fsync: FsyncMode,
    /// Offset where the next batch goes.
    end: Cell<u64>,
    pending: RefCell<Vec<u8>>,
    waiters: RefCell<Vec<(oneshot::Sender<WriteOutcome>, WriteOutcome)>>,
    failing: Cell<bool>,
    doorbell: LocalSender<()>,
    /// Batches committed (for STATS and tests).
    batches_committed: Cell<u64>,
}

impl ShardLog {
    /// Opens (or creates) the log at `path` for appending, and starts its committer on the
    /// current executor.
    ///
    /// # Errors
    /// I/O errors opening the file.
    pub async fn open(path: &Path, fsync: FsyncMode) -> std::io::Result<Rc<ShardLog>> {
        let file = OpenOptions::new().read(true).write(true).create(true).buffered_open(path).await?;
        let end = file.file_size().await?;
        let (doorbell, rings) = local_channel::new_bounded(1);
        let log = Rc::new(ShardLog {
            file,
            path: path.to_owned(),
            fsync,
            end: Cell::new(end),
            pending: RefCell::new(Vec::with_capacity(64 * 1024)),
            waiters: RefCell::new(Vec::new()),
            failing: Cell::new(false),
            doorbell,
            batches_committed: Cell::new(0),
        });
        // The committer gets its own latency-sensitive task queue: the executor then preempts
        // the connections' queue often enough to reap the log's I/O completions promptly,
        // instead of once per round of every runnable connection.
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(1000),
            glommio::Latency::Matters(COMMITTER_LATENCY),
            "wal-committer",
        );
        glommio::spawn_local_into(committer(Rc::clone(&log), rings), queue)
            .map_err(|error| std::io::Error::other(error.to_string()))?
            .detach();
        Ok(log)
    }

    /// True while the disk refuses writes: the shard must not apply new writes.
    pub fn is_failing(&self) -> bool {
        self.failing.get()
    }

    pub fn batches_committed(&self) -> u64 {
        self.batches_committed.get()
    }

    /// Appends an entry to the pending batch.
    pub fn append(&self, entry_type: EntryType, body: &[u8]) {
        encode_entry(entry_type, body, &mut self.pending.borrow_mut());
        let _ = self.doorbell.try_send(());
    }

    /// Sends `outcome` on `reply` once everything appended so far is committed.
    pub fn when_committed(&self, reply: oneshot::Sender<WriteOutcome>, outcome: WriteOutcome) {
        self.waiters.borrow_mut().push((reply, outcome));
        let _ = self.doorbell.try_send(());
    }

    /// Writes one batch and, in `Always` mode, syncs it.
    async fn commit(&self, batch: &[u8]) -> std::io::Result<()> {
        let mut written = 0;
        while written < batch.len() {
            let count =
                self.file.write_at(batch[written..].to_vec(), self.end.get() + written as u64).await?;
            if count == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the log file accepted no bytes",
                ));
            }
            written += count;
        }
        if self.fsync == FsyncMode::Always {
            self.file.fdatasync().await?;
        }
        Ok(())
    }
}

async fn committer(log: Rc<ShardLog>, rings: LocalReceiver<()>) {
    while rings.recv().await.is_some() {
        loop {
            let payload = std::mem::take(&mut *log.pending.borrow_mut());
            let waiters = std::mem::take(&mut *log.waiters.borrow_mut());
            if payload.is_empty() {
                // Waiters with nothing pending were appended before the last commit finished.
                for (reply, outcome) in waiters {
                    let _ = reply.send(outcome);
                }
                break;
            }
            let batch = encode_batch(&payload);
            let mut waiters = Some(waiters);
            loop {
                match log.commit(&batch).await {
                    Ok(()) => {
                        log.end.set(log.end.get() + batch.len() as u64);
                        log.batches_committed.set(log.batches_committed.get() + 1);
                        if log.failing.replace(false) {
                            tracing::warn!(path = %log.path.display(), "the log is writable again; writes resume");
                        }
                        for (reply, outcome) in waiters.take().unwrap_or_default() {
                            let _ = reply.send(outcome);
                        }
                        break;
                    }
                    Err(error) => {
                        if !log.failing.replace(true) {
                            tracing::error!(path = %log.path.display(), %error, "writing the log failed; refusing writes and retrying");
                        }
                        for (reply, _) in waiters.take().unwrap_or_default() {
                            let _ = reply.send(Err(OpError::Unavailable(
                                "the log could not be written; the write may still be applied when the disk recovers",
                            )));
                        }
                        glommio::timer::sleep(RETRY_INTERVAL).await;
                    }
                }
            }
        }
    }
}
