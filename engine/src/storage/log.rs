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
//!
//! Preallocation (`--fsync always`): the committer keeps the active segment filled with zeros
//! (written and synced, not `fallocate`d) at least [`PREALLOCATE_AHEAD_BYTES`] ahead of its end
//! (up to a step more), a step at a time in a background task, through a second handle on the
//! segment (see `ShardLog::zeroing_file`). A commit then overwrites blocks the file already has, so
//! its fdatasync flushes the data without also making the file's new size durable (an inode
//! write, or a journal commit on a journaling file system): on this project's test machine
//! (ext4 without a journal) 113 µs instead of 229 µs for a 27 KB batch. Recovery reads
//! the zeros after the last batch as the end of the log (`storage::wal`). A commit never
//! writes where a step is still zeroing: it waits for the step first.
//!
//! Compaction: when the active segment passes `--compact-log-bytes`, the committer starts a
//! new segment between two batches, and a background task writes a snapshot of the shard's
//! map (every kept version of every credential) as `shard-<i>.<new sequence>.snapshot`:
//! temp file, fdatasync, rename, directory fsync; then the older segments and snapshot are
//! deleted. Writes go on into the new segment meanwhile (the snapshot may already hold some
//! of them; recovery skips versions it has), and reads are never blocked.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::{BufferedFile, OpenOptions};

use crate::error::OpError;
use crate::error::WriteOutcome;
use crate::metrics::{ExecutorMetrics, Metrics};
use crate::storage::manifest::Manifest;
use crate::storage::recovery::ActiveSegment;
use crate::storage::wal::{self, encode_entry, EntryType};
use crate::storage::{CommitListener, FsyncMode, ShardStorage, Shards};

/// Where a shard's log lives.
#[derive(Clone, Debug)]
pub struct LogPlace {
    pub data_dir: PathBuf,
    pub manifest: Manifest,
    pub shard_id: usize,
    /// The segment to append to.
    pub segment: ActiveSegment,
}

/// How a shard's log behaves.
#[derive(Clone, Copy, Debug)]
pub struct LogSettings {
    pub fsync: FsyncMode,
    /// Segment size that triggers a snapshot.
    pub compact_log_bytes: u64,
    /// Whether the segment must also outgrow the last snapshot first (the server's rule; a test
    /// that wants snapshots throughout a run, however large, turns it off).
    pub compact_past_snapshot: bool,
}

/// Payload bytes per batch in a snapshot file.
const SNAPSHOT_BATCH_BYTES: usize = 1 << 20;
/// A snapshot is synced each time this much more of it is written, and written no faster than
/// [`SNAPSHOT_BYTES_PER_SECOND`], so that its data reaches the disk a little at a time: written
/// at once and synced at the end, a snapshot of a few hundred megabytes queued that much in
/// front of the commits' fdatasyncs (100% PUT with `--fsync always` fell to a fifth of its
/// rate for half a second at each snapshot; docs/performance.md). Syncing every 1 MiB rather
/// than every 4 MiB lowered that run's p99 by about a fifth.
const SNAPSHOT_SYNC_BYTES: u64 = 1 << 20;
const SNAPSHOT_BYTES_PER_SECOND: u64 = 128 << 20;

/// How long the committer waits before retrying a failed batch.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// The file operations the log is written with, so that a test can run it on a disk that
/// loses what was not synced (see `data::crash_test`). [`Disk`] is the real one.
#[allow(async_fn_in_trait)] // the log lives on one executor: its futures are never sent
pub trait LogFs: 'static {
    type File: LogFile;
    /// Opens `path` for reading and writing, creating it if absent (`truncate`: emptied).
    async fn open(&self, path: &Path, truncate: bool) -> std::io::Result<Self::File>;
    /// Makes the directory's entries (created, renamed, removed files) durable.
    async fn sync_directory(&self, directory: &Path) -> std::io::Result<()>;
    async fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    async fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// The paths of the files in `directory`.
    fn list(&self, directory: &Path) -> std::io::Result<Vec<PathBuf>>;
}

/// Runs a blocking file system call on glommio's blocking thread pool.
async fn blocking(call: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> std::io::Result<()> {
    glommio::executor().spawn_blocking(call).await
}

/// An open file of a [`LogFs`].
#[allow(async_fn_in_trait)]
pub trait LogFile {
    async fn size(&self) -> std::io::Result<u64>;
    /// Writes some of `bytes` at `offset` (into the page cache); returns how many.
    async fn write_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<usize>;
    /// Makes the file's data durable.
    async fn fdatasync(&self) -> std::io::Result<()>;
    async fn close(self) -> std::io::Result<()>;

    /// Fills `from..to` with zeros and makes them durable (see the module doc, Preallocation).
    async fn preallocate(&self, from: u64, to: u64) -> std::io::Result<()> {
        static ZEROS: [u8; PREALLOCATE_WRITE_BYTES] = [0; PREALLOCATE_WRITE_BYTES];
        let mut offset = from;
        while offset < to {
            let length = (to - offset).min(ZEROS.len() as u64) as usize;
            write_all_at(self, &ZEROS[..length], offset).await?;
            offset += length as u64;
            glommio::yield_if_needed().await;
        }
        self.fdatasync().await
    }
}

/// How far ahead of its end the active segment is kept preallocated (`--fsync always`).
const PREALLOCATE_AHEAD_BYTES: u64 = 4 << 20;
/// Bytes zeroed by one preallocation step (then synced): a commit's fdatasync that runs
/// meanwhile may have to write them too.
const PREALLOCATE_STEP_BYTES: u64 = 1 << 20;
/// Bytes of zeros per write of a preallocation step (a direct `pwrite` each, see
/// [`DIRECT_WRITE_BYTES_MAX`]).
const PREALLOCATE_WRITE_BYTES: usize = 256 * 1024;

/// Writes up to this size are made with a direct `pwrite` (see [`LogFile::write_at`] for
/// [`BufferedFile`]).
const DIRECT_WRITE_BYTES_MAX: usize = 256 * 1024;

/// The data dir's disk, through io_uring (glommio `BufferedFile`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Disk;

impl LogFs for Disk {
    type File = BufferedFile;

    async fn open(&self, path: &Path, truncate: bool) -> std::io::Result<BufferedFile> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(truncate);
        Ok(options.buffered_open(path).await?)
    }

    // Directory syncs, renames and removals run on glommio's blocking thread pool: removing a
    // snapshot of a few hundred megabytes took 70 ms on the test machine (ext4 frees and
    // discards its blocks in the call), which on the executor's thread stalled every
    // connection on it (docs/performance.md).

    async fn sync_directory(&self, directory: &Path) -> std::io::Result<()> {
        let directory = directory.to_path_buf();
        blocking(move || std::fs::File::open(directory)?.sync_all()).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        blocking(move || std::fs::rename(from, to)).await
    }

    async fn remove(&self, path: &Path) -> std::io::Result<()> {
        let path = path.to_path_buf();
        blocking(move || std::fs::remove_file(path)).await
    }

    fn list(&self, directory: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::read_dir(directory)?.map(|entry| entry.map(|entry| entry.path())).collect()
    }
}

impl LogFile for BufferedFile {
    async fn size(&self) -> std::io::Result<u64> {
        Ok(self.file_size().await?)
    }

    /// Small writes (a group commit's batch) go straight to the page cache with `pwrite` on
    /// the executor's thread: a buffered write through io_uring is handed to an io-wq worker
    /// thread, which took ~490 µs per batch where the copy itself takes a few (the commit
    /// cycle's largest part; docs/performance.md, "Durable writes"). Large ones (snapshot
    /// batches) still go through the ring, so that copying them never holds up the executor.
    async fn write_at(&self, bytes: &[u8], offset: u64) -> std::io::Result<usize> {
        if bytes.len() <= DIRECT_WRITE_BYTES_MAX {
            use std::os::fd::{AsRawFd, FromRawFd};
            // SAFETY: the descriptor is `self`'s, open for as long as `self` is borrowed here;
            // the `File` made from it is never dropped (ManuallyDrop), so it does not close it.
            let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.as_raw_fd()) });
            return std::os::unix::fs::FileExt::write_at(&*file, bytes, offset);
        }
        // The ring owns what it writes until the write completes: only this path copies.
        Ok(BufferedFile::write_at(self, bytes.to_vec(), offset).await?)
    }

    async fn fdatasync(&self) -> std::io::Result<()> {
        Ok(BufferedFile::fdatasync(self).await?)
    }

    async fn close(self) -> std::io::Result<()> {
        Ok(BufferedFile::close(self).await?)
    }
}

pub struct ShardLog<F: LogFs = Disk> {
    fs: F,
    place: LogPlace,
    settings: LogSettings,
    /// The shards, read for snapshots.
    shards: Arc<dyn Shards>,
    /// The active segment and its sequence number.
    file: RefCell<Rc<F::File>>,
    sequence: Cell<u64>,
    /// Offset where the next batch goes.
    end: Cell<u64>,
    /// Where the active segment's zeros written by preallocation steps end (`--fsync always`);
    /// below `end` when commits have outrun the steps.
    preallocated: Cell<u64>,
    /// The preallocation step under way: where it starts, and what says when it is done.
    preallocating: RefCell<Option<(u64, oneshot::Receiver<()>)>>,
    /// A second handle on the active segment, for the preallocation steps alone (`--fsync
    /// always`). A step's fdatasync also writes the commits' dirty pages, and Linux reports a
    /// write-back error once per open file: on the commits' own handle, a step could take the
    /// error a commit's fdatasync must see, and the commit would be acknowledged.
    zeroing_file: RefCell<Option<Rc<F::File>>>,
    /// A step failed (a full disk): no more until the next segment.
    preallocation_failed: Cell<bool>,
    /// A snapshot is being written.
    compacting: Cell<bool>,
    /// The size of the last snapshot this log wrote (0 before the first): the active segment
    /// must outgrow it too before the next snapshot, so snapshots never write more than the log
    /// does (a shard whose kept versions dwarf `compact_log_bytes` would otherwise rewrite
    /// all of them every time the log grew by that much).
    snapshot_bytes: Cell<u64>,
    pending: RefCell<Vec<u8>>,
    waiters: RefCell<Vec<(oneshot::Sender<WriteOutcome>, WriteOutcome)>>,
    /// Told what each commit took and when it succeeded (the shard's change feed).
    listener: RefCell<Option<Rc<dyn CommitListener>>>,
    failing: Cell<bool>,
    /// The next commit syncs even in `--fsync never` mode (someone waits on durability).
    sync_requested: Cell<bool>,
    doorbell: LocalSender<()>,
    /// Counters of this shard's executor (batches committed, snapshots written).
    metrics: Arc<Metrics>,
}

impl ShardLog<Disk> {
    /// Opens (or creates) the active segment for appending, and starts the committer on the
    /// current executor.
    ///
    /// # Errors
    /// I/O errors opening the file.
    pub async fn open(
        place: LogPlace,
        settings: LogSettings,
        shards: Arc<dyn Shards>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Rc<ShardLog>> {
        ShardLog::open_on(Disk, place, settings, shards, metrics).await
    }
}

impl<F: LogFs> ShardLog<F> {
    /// [`ShardLog::open`] on the file system `fs`.
    ///
    /// # Errors
    /// I/O errors opening the file.
    pub async fn open_on(
        fs: F,
        place: LogPlace,
        settings: LogSettings,
        shards: Arc<dyn Shards>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Rc<ShardLog<F>>> {
        let path = place.segment.path.clone();
        let file = fs.open(&path, false).await?;
        let zeroing_file = if settings.fsync == FsyncMode::Always {
            Some(Rc::new(fs.open(&path, false).await?))
        } else {
            None
        };
        let end = file.size().await?;
        let (doorbell, rings) = local_channel::new_bounded(1);
        let log = Rc::new(ShardLog {
            fs,
            sequence: Cell::new(place.segment.sequence),
            place,
            settings,
            shards,
            file: RefCell::new(Rc::new(file)),
            zeroing_file: RefCell::new(zeroing_file),
            end: Cell::new(end),
            preallocated: Cell::new(end),
            preallocating: RefCell::new(None),
            preallocation_failed: Cell::new(false),
            compacting: Cell::new(false),
            snapshot_bytes: Cell::new(0),
            pending: RefCell::new(wal::batch_buffer(64 * 1024)),
            waiters: RefCell::new(Vec::new()),
            listener: RefCell::new(None),
            failing: Cell::new(false),
            sync_requested: Cell::new(false),
            doorbell,
            metrics,
        });
        glommio::spawn_local(committer(Rc::clone(&log), rings)).detach();
        Ok(log)
    }

    /// The active segment's path (derived from its sequence).
    fn segment_path(&self) -> PathBuf {
        self.place.manifest.segment_path(&self.place.data_dir, self.place.shard_id, self.sequence.get())
    }

    /// Writes one batch (if any) and, in `Always` mode or when `sync` says so, syncs it.
    async fn commit(&self, batch: &[u8], sync: bool) -> std::io::Result<()> {
        let file = Rc::clone(&self.file.borrow());
        if !batch.is_empty() {
            self.wait_for_preallocation_below(self.end.get() + batch.len() as u64).await;
            write_all_at(&*file, batch, self.end.get()).await?;
        }
        if sync || self.settings.fsync == FsyncMode::Always {
            let started = std::time::Instant::now();
            file.fdatasync().await?;
            let elapsed = started.elapsed().as_nanos() as u64;
            let metrics = self.metrics.executor(self.place.shard_id);
            metrics.log_fsync_latency_ns.record(elapsed, &crate::metrics::LATENCY_BOUNDS_NS);
        }
        Ok(())
    }

    /// Waits for the preallocation step under way if it zeroes anything before `end`.
    async fn wait_for_preallocation_below(&self, end: u64) {
        let overlapping = self.preallocating.borrow_mut().take_if(|(from, _)| *from < end);
        if let Some((_, done)) = overlapping {
            let _ = done.await;
        }
    }

    /// Between two batches (`--fsync always`): starts the next preallocation step if the
    /// zeros ahead of the end run short and no step is under way.
    fn maybe_preallocate(self: &Rc<Self>) {
        if self.settings.fsync != FsyncMode::Always || self.preallocation_failed.get() {
            return;
        }
        let end = self.end.get();
        if self.preallocated.get() >= end + PREALLOCATE_AHEAD_BYTES {
            return;
        }
        {
            let mut preallocating = self.preallocating.borrow_mut();
            if let Some((_, done)) = preallocating.as_mut() {
                if matches!(done.try_recv(), Ok(None)) {
                    return; // still zeroing
                }
                *preallocating = None;
            }
        }
        let Some(file) = self.zeroing_file.borrow().clone() else { return };
        // Zeroing starts at or after the end: what a commit wrote is never overwritten.
        let from = self.preallocated.get().max(end).next_multiple_of(4096);
        let to = from + PREALLOCATE_STEP_BYTES;
        let (finished, done) = oneshot::channel();
        *self.preallocating.borrow_mut() = Some((from, done));
        let sequence = self.sequence.get();
        let log = Rc::clone(self);
        glommio::spawn_local(async move {
            let result = file.preallocate(from, to).await;
            // A new segment may have started meanwhile: this one's zeros no longer matter.
            if log.sequence.get() == sequence {
                match result {
                    Ok(()) => log.preallocated.set(log.preallocated.get().max(to)),
                    Err(error) => {
                        tracing::warn!(%error, "could not preallocate the log segment; commits append to it instead");
                        log.preallocation_failed.set(true);
                    }
                }
            }
            let _ = finished.send(());
        })
        .detach();
    }

    /// Between two batches: if the active segment is too big (above `compact_log_bytes` and
    /// above the last snapshot's size), start a new one and snapshot the shard in the
    /// background.
    async fn maybe_compact(self: &Rc<Self>) {
        let past_snapshot = if self.settings.compact_past_snapshot { self.snapshot_bytes.get() } else { 0 };
        let threshold = self.settings.compact_log_bytes.max(past_snapshot);
        if self.compacting.get() || self.end.get() < threshold {
            return;
        }
        let sequence = self.sequence.get() + 1;
        let path = self.place.manifest.segment_path(&self.place.data_dir, self.place.shard_id, sequence);
        if self.settings.fsync == FsyncMode::Never {
            // A later durability request syncs only the active segment: sync this one before
            // it stops being active.
            let current = Rc::clone(&self.file.borrow());
            if let Err(error) = current.fdatasync().await {
                tracing::warn!(%error, "could not sync the log segment; compaction postponed");
                return;
            }
        }
        let file = match self.fs.open(&path, false).await {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not start a new log segment; compaction postponed");
                return;
            }
        };
        // Without its second handle the new segment is not preallocated: commits append.
        let zeroing_file = match self.settings.fsync {
            FsyncMode::Always => self.fs.open(&path, false).await.ok().map(Rc::new),
            _ => None,
        };
        if let Err(error) = self.fs.sync_directory(&self.place.manifest.log_dir(&self.place.data_dir)).await {
            tracing::warn!(%error, "could not sync the log directory; compaction postponed");
            let _ = self.fs.remove(&path).await;
            return;
        }
        *self.file.borrow_mut() = Rc::new(file);
        *self.zeroing_file.borrow_mut() = zeroing_file;
        self.sequence.set(sequence);
        self.end.set(0);
        self.preallocated.set(0);
        self.preallocating.borrow_mut().take();
        self.preallocation_failed.set(false);
        self.compacting.set(true);
        let log = Rc::clone(self);
        glommio::spawn_local(async move {
            if let Err(error) = log.write_snapshot(sequence).await {
                tracing::warn!(%error, "writing a snapshot failed; the log segments are kept");
            }
            log.compacting.set(false);
        })
        .detach();
    }

    /// Writes the shard's current state as snapshot `sequence`, then deletes what it replaces.
    async fn write_snapshot(&self, sequence: u64) -> std::io::Result<()> {
        let manifest = &self.place.manifest;
        let (data_dir, shard_id) = (&self.place.data_dir, self.place.shard_id);
        let final_path = manifest.snapshot_path(data_dir, shard_id, sequence);
        let mut temp_name = final_path.file_name().unwrap_or_default().to_owned();
        temp_name.push(".tmp");
        let temp_path = final_path.with_file_name(temp_name);
        let file = self.fs.open(&temp_path, true).await?;
        let result = async {
            let mut offset = 0u64;
            let mut synced = 0u64;
            let started = std::time::Instant::now();
            // Each batch is built in place in one reused buffer.
            let mut batch = wal::batch_buffer(SNAPSHOT_BATCH_BYTES + 64 * 1024);
            // Holding the versions (not a guard on the map) lets the map reclaim what writes
            // replace meanwhile.
            for item in self.shards.snapshot_items(shard_id) {
                item.encode(&mut batch);
                if batch.len() >= SNAPSHOT_BATCH_BYTES {
                    wal::seal_batch(&mut batch);
                    write_all_at(&file, &batch, offset).await?;
                    offset += batch.len() as u64;
                    batch.truncate(wal::BATCH_HEADER_BYTES);
                    if offset - synced >= SNAPSHOT_SYNC_BYTES {
                        file.fdatasync().await?;
                        synced = offset;
                        let due = Duration::from_secs_f64(offset as f64 / SNAPSHOT_BYTES_PER_SECOND as f64);
                        if let Some(early) = due.checked_sub(started.elapsed()) {
                            glommio::timer::sleep(early).await;
                        }
                    }
                }
            }
            if !wal::batch_is_empty(&batch) {
                wal::seal_batch(&mut batch);
                write_all_at(&file, &batch, offset).await?;
                offset += batch.len() as u64;
            }
            file.fdatasync().await?;
            Ok(offset)
        }
        .await;
        let _ = file.close().await;
        let snapshot_bytes = match result {
            Ok(bytes) => bytes,
            Err(error) => {
                let _ = self.fs.remove(&temp_path).await;
                return Err(error);
            }
        };
        self.fs.rename(&temp_path, &final_path).await?;
        self.fs.sync_directory(&manifest.log_dir(data_dir)).await?;
        ExecutorMetrics::add(&self.metrics.executor(shard_id).snapshots_written, 1);
        ExecutorMetrics::add(&self.metrics.executor(shard_id).snapshot_bytes_written, snapshot_bytes);
        self.snapshot_bytes.set(snapshot_bytes);
        // Everything before `sequence` is now in the snapshot.
        let files = manifest.shard_files_among(shard_id, self.fs.list(&manifest.log_dir(data_dir))?);
        for (old, path) in files.segments.iter().chain(files.snapshots.iter()) {
            if *old < sequence {
                self.fs.remove(path).await?;
            }
        }
        tracing::info!(path = %final_path.display(), "snapshot written; older log segments removed");
        Ok(())
    }
}

impl<F: LogFs> ShardStorage for ShardLog<F> {
    fn append(&self, entry_type: EntryType, body: &[u8]) {
        encode_entry(entry_type, body, &mut self.pending.borrow_mut());
        let _ = self.doorbell.try_send(());
    }

    fn when_committed(&self, reply: oneshot::Sender<WriteOutcome>, outcome: WriteOutcome) {
        self.waiters.borrow_mut().push((reply, outcome));
        ExecutorMetrics::add(&self.metrics.executor(self.place.shard_id).write_queue_depth, 1);
        let _ = self.doorbell.try_send(());
    }

    fn when_durable(&self, reply: oneshot::Sender<WriteOutcome>) {
        self.sync_requested.set(true);
        self.waiters.borrow_mut().push((reply, Ok(0)));
        ExecutorMetrics::add(&self.metrics.executor(self.place.shard_id).write_queue_depth, 1);
        let _ = self.doorbell.try_send(());
    }

    fn is_failing(&self) -> bool {
        self.failing.get()
    }

    fn listen(&self, listener: Rc<dyn CommitListener>) {
        *self.listener.borrow_mut() = Some(listener);
    }
}

async fn write_all_at<File: LogFile + ?Sized>(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        let count = file.write_at(&bytes[written..], offset + written as u64).await?;
        if count == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the log file accepted no bytes"));
        }
        written += count;
    }
    Ok(())
}

/// The longest a synced commit waits for the writers of the batch before it to write again.
const GATHER_MAX: Duration = Duration::from_micros(500);

/// Before a commit that syncs: waits (at most [`GATHER_MAX`]) until as many writes wait as the
/// last batch answered plus those that were already waiting when it was answered. Without
/// this, writers split into two groups that take turns (one gathers while the other's fsync
/// runs), each commit carrying half of them; with it, the writers just answered, whose next
/// writes are a round trip away, join the ones already waiting, as in one event-loop turn of
/// Redis. Returns false when the log is shutting down.
async fn gather<F: LogFs>(log: &ShardLog<F>, rings: &LocalReceiver<()>, target: usize) -> bool {
    let deadline = std::time::Instant::now() + GATHER_MAX;
    while log.waiters.borrow().len() < target {
        let now = std::time::Instant::now();
        if now >= deadline {
            break;
        }
        let rang = rings.recv();
        let timeout = glommio::timer::sleep(deadline - now);
        match futures::future::select(std::pin::pin!(rang), std::pin::pin!(timeout)).await {
            futures::future::Either::Left((None, _)) => return false,
            futures::future::Either::Left((Some(()), _)) => {}
            futures::future::Either::Right(_) => break,
        }
    }
    true
}

async fn committer<F: LogFs>(log: Rc<ShardLog<F>>, rings: LocalReceiver<()>) {
    // How many writes the next synced commit waits for (see `gather`).
    let mut gather_target = 0;
    // The pending buffer the committer last took, emptied: it becomes the next one, so appends
    // do not grow a buffer from nothing every batch. Each is a batch built in place (its header
    // written when it is committed): the entries are not copied again.
    let mut spare = wal::batch_buffer(0);
    while rings.recv().await.is_some() {
        loop {
            let syncs = log.sync_requested.get() || log.settings.fsync == FsyncMode::Always;
            if syncs && gather_target > 1 && !gather(&log, &rings, gather_target).await {
                return;
            }
            let payload = std::mem::replace(&mut *log.pending.borrow_mut(), std::mem::take(&mut spare));
            let waiters = std::mem::take(&mut *log.waiters.borrow_mut());
            let listener = log.listener.borrow().clone();
            let mark = listener.as_ref().map(|listener| listener.taken());
            let sync = log.sync_requested.take();
            let counters = log.metrics.executor(log.place.shard_id);
            // Every waiter taken here is answered below, once: it leaves the queue's depth then.
            ExecutorMetrics::sub(&counters.write_queue_depth, waiters.len() as u64);
            if !waiters.is_empty() {
                counters.log_batch_writes.record(waiters.len() as u64, &crate::metrics::BATCH_BOUNDS);
            }
            if wal::batch_is_empty(&payload) && !sync {
                // Every waiter follows an append and is taken with it, so none should be left
                // here; answer any rather than leave a client hanging.
                for (reply, outcome) in waiters {
                    let _ = reply.send(outcome);
                }
                spare = payload;
                break;
            }
            let mut batch = payload;
            if !wal::batch_is_empty(&batch) {
                wal::seal_batch(&mut batch);
            } else {
                batch.clear();
            }
            let mut waiters = Some(waiters);
            loop {
                match log.commit(&batch, sync).await {
                    Ok(()) => {
                        log.end.set(log.end.get() + batch.len() as u64);
                        ExecutorMetrics::add(&counters.log_batches_committed, 1);
                        ExecutorMetrics::add(&counters.log_bytes_written, batch.len() as u64);
                        if log.failing.replace(false) {
                            tracing::warn!(path = %log.segment_path().display(), "the log is writable again; writes resume");
                        }
                        if let (Some(listener), Some(mark)) = (&listener, mark) {
                            listener.committed(mark);
                        }
                        let answered = waiters.take().unwrap_or_default();
                        gather_target = answered.len() + log.waiters.borrow().len();
                        for (reply, outcome) in answered {
                            let _ = reply.send(outcome);
                        }
                        log.maybe_compact().await;
                        log.maybe_preallocate();
                        break;
                    }
                    Err(error) => {
                        if !log.failing.replace(true) {
                            tracing::error!(path = %log.segment_path().display(), %error, "writing the log failed; refusing writes and retrying");
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
            batch.clear();
            batch.resize(wal::BATCH_HEADER_BYTES, 0);
            spare = batch;
        }
    }
}
