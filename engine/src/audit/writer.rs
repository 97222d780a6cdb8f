//! [`AuditLog`]: one executor's audit file, written in batches by a background glommio task.
//!
//! `record` encodes into `buffer`. The writer (the flusher task, or `flush`) swaps `buffer`
//! with its own emptied batch vector, so the two allocations take turns and recording never
//! reallocates in steady state, then writes the batch at the end of the file. A batch whose
//! write fails stays the writer's until it is fully written; events recorded meanwhile wait
//! in `buffer` behind it, so the file keeps recording order.

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::lock::Mutex;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::{BufferedFile, OpenOptions};

use super::format::{encode_event, TimeText};
use super::{AuditEvent, AuditSettings};

/// Initial capacity of each of the two buffers.
const BUFFER_BYTES_INITIAL: usize = 64 * 1024;

/// A written batch vector bigger than this is replaced by a fresh one, so that one burst does
/// not pin its memory forever.
const BUFFER_BYTES_KEPT_MAX: usize = 1 << 20;

/// At most one error line per kind of trouble per this interval.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// `record` drops events once the unwritten bytes pass this multiple of `backlog_bytes_max`.
const DROP_FACTOR: usize = 2;

/// One executor's audit log. `!Send`: each executor opens its own and shares it through `Rc`.
pub struct AuditLog {
    shard: usize,
    path: PathBuf,
    settings: AuditSettings,
    /// Unwritten bytes past which `record` drops events.
    drop_bytes_min: usize,
    /// Encoded events not yet taken by the writer.
    buffer: RefCell<Vec<u8>>,
    time_text: TimeText,
    /// Bytes the writer has taken and not yet written.
    in_flight_bytes: Cell<usize>,
    /// The file and its batch; held across a write so that the flusher and `flush` never
    /// interleave.
    writer: Mutex<Writer>,
    /// Bytes written since the last successful `fdatasync`.
    unsynced: Cell<bool>,
    last_sync: Cell<Option<Instant>>,
    /// Rung by `record` when the buffer stops being empty; the flusher parks on it when idle.
    doorbell: LocalSender<()>,
    rings: RefCell<Option<LocalReceiver<()>>>,
    failing: Cell<bool>,
    write_errors_log: RateLimit,
    drops_log: RateLimit,
    events_recorded: Cell<u64>,
    events_dropped: Cell<u64>,
    bytes_written: Cell<u64>,
    syncs: Cell<u64>,
    write_errors: Cell<u64>,
}

struct Writer {
    file: BufferedFile,
    /// Where the next byte goes.
    end: u64,
    batch: Vec<u8>,
    /// Bytes of `batch` already in the file.
    written: usize,
}

impl AuditLog {
    /// Opens (creating the directory and file if needed) `<dir>/shard-<executor>.jsonl` for
    /// appending. If the file ends in a torn line (a crash in the middle of a write), the
    /// first write ends that line with a newline first, so that no new event is glued to it.
    ///
    /// # Errors
    /// I/O errors creating the directory or opening the file; `InvalidInput` for a zero
    /// `flush_interval`.
    pub async fn open(dir: &Path, executor: usize, settings: AuditSettings) -> std::io::Result<Rc<AuditLog>> {
        if settings.flush_interval.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "the audit flush interval must not be zero",
            ));
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("shard-{executor}.jsonl"));
        let created = !path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).buffered_open(&path).await?;
        let end = file.file_size().await?;
        let mut buffer = Vec::with_capacity(BUFFER_BYTES_INITIAL);
        if end > 0 && file.read_at(end - 1, 1).await?.first() != Some(&b'\n') {
            tracing::warn!(path = %path.display(), "the audit file ends in a partial line (a crash during a write); it is kept and ended with a newline");
            buffer.push(b'\n');
        }
        if created {
            // The new file's directory entry must be durable too.
            std::fs::File::open(dir)?.sync_all()?;
        }
        let (doorbell, rings) = local_channel::new_bounded(1);
        Ok(Rc::new(AuditLog {
            shard: executor,
            path,
            settings,
            drop_bytes_min: settings.backlog_bytes_max.saturating_mul(DROP_FACTOR),
            in_flight_bytes: Cell::new(0),
            writer: Mutex::new(Writer {
                file,
                end,
                batch: Vec::with_capacity(BUFFER_BYTES_INITIAL),
                written: 0,
            }),
            buffer: RefCell::new(buffer),
            time_text: TimeText::new(),
            unsynced: Cell::new(false),
            last_sync: Cell::new(None),
            doorbell,
            rings: RefCell::new(Some(rings)),
            failing: Cell::new(false),
            write_errors_log: RateLimit::default(),
            drops_log: RateLimit::default(),
            events_recorded: Cell::new(0),
            events_dropped: Cell::new(0),
            bytes_written: Cell::new(0),
            syncs: Cell::new(0),
            write_errors: Cell::new(0),
        }))
    }

    /// Appends one JSON line to the in-memory buffer: no syscall, no allocation beyond the
    /// buffer's growth. Past twice `backlog_bytes_max` unwritten bytes the event is dropped
    /// instead, counted in [`AuditLog::events_dropped`] and logged (rate-limited).
    pub fn record(&self, event: &AuditEvent<'_>) {
        let mut buffer = self.buffer.borrow_mut();
        let was_empty = buffer.is_empty();
        if buffer.len() + self.in_flight_bytes.get() > self.drop_bytes_min {
            drop(buffer);
            self.events_dropped.set(self.events_dropped.get() + 1);
            if let Some(unlogged) = self.drops_log.allow() {
                tracing::error!(path = %self.path.display(), dropped_total = self.events_dropped.get(), dropped_unlogged = unlogged, "the audit backlog is full: audit events are being dropped");
            }
            return;
        }
        encode_event(&mut buffer, self.shard, event, &self.time_text);
        drop(buffer);
        self.events_recorded.set(self.events_recorded.get() + 1);
        if was_empty {
            // Full means the flusher is already due to look.
            let _ = self.doorbell.try_send(());
        }
    }

    /// True while more than half of `backlog_bytes_max` is unwritten and the file is being
    /// written fine: requests come faster than the log is written. Connections then wait
    /// before they take more requests, so the flusher catches up instead of the server
    /// refusing everyone (one busy client would otherwise push the log into its backlog).
    pub fn is_busy(&self) -> bool {
        !self.failing.get() && self.unwritten_bytes() > self.settings.backlog_bytes_max / 2
    }

    /// True when the unwritten bytes exceed `backlog_bytes_max` (e.g. the disk is failing):
    /// the server then refuses requests with UNAVAILABLE rather than serve unaudited.
    pub fn is_backlogged(&self) -> bool {
        self.unwritten_bytes() > self.settings.backlog_bytes_max
    }

    /// Starts the background flusher on the current glommio executor. Further calls do
    /// nothing.
    ///
    /// # Panics
    /// Outside a glommio executor.
    pub fn spawn_flusher(self: &Rc<Self>) {
        let Some(rings) = self.rings.borrow_mut().take() else {
            return;
        };
        glommio::spawn_local(flusher(Rc::clone(self), rings)).detach();
    }

    /// Writes everything recorded before the call and, unless `sync_interval` is `None`,
    /// syncs it (at shutdown, and in tests).
    ///
    /// # Errors
    /// The write or sync error; the unwritten data stays buffered for the next attempt.
    pub async fn flush(&self) -> std::io::Result<()> {
        let mut writer = self.writer.lock().await;
        let result = async {
            self.write_pending(&mut writer).await?;
            if self.settings.sync_interval.is_some() && self.unsynced.get() {
                self.sync(&writer).await?;
            }
            Ok(())
        }
        .await;
        self.note_outcome(&result);
        result
    }

    /// Events appended to the buffer since open.
    pub fn events_recorded(&self) -> u64 {
        self.events_recorded.get()
    }

    /// Events refused because the backlog was past twice `backlog_bytes_max`.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.get()
    }

    /// Bytes written to the file since open.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.get()
    }

    /// Successful `fdatasync`s since open.
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }

    /// Failed write or sync attempts since open (each retry counts).
    pub fn write_errors(&self) -> u64 {
        self.write_errors.get()
    }

    /// Bytes recorded and not yet written.
    pub fn unwritten_bytes(&self) -> usize {
        self.buffer.borrow().len() + self.in_flight_bytes.get()
    }

    /// The file this log appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For log rotation (SIGHUP): writes and syncs what is buffered to the current file, then
    /// opens `<dir>/shard-<executor>.jsonl` afresh, creating it if an operator renamed the old
    /// one away. Events recorded meanwhile wait in the buffer and go to the new file.
    ///
    /// # Errors
    /// The write, sync or open error; the old file then stays in use.
    pub async fn reopen(&self) -> std::io::Result<()> {
        let mut writer = self.writer.lock().await;
        let flushed = async {
            self.write_pending(&mut writer).await?;
            if self.unsynced.get() {
                self.sync(&writer).await?;
            }
            Ok(())
        }
        .await;
        self.note_outcome(&flushed);
        flushed?;
        let created = !self.path.exists();
        let file = OpenOptions::new().read(true).write(true).create(true).buffered_open(&self.path).await?;
        let mut end = file.file_size().await?;
        if end > 0 && file.read_at(end - 1, 1).await?.first() != Some(&b'\n') {
            end += file.write_at(vec![b'\n'], end).await? as u64;
        }
        if created {
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        let old = std::mem::replace(&mut writer.file, file);
        writer.end = end;
        drop(writer);
        if let Err(error) = old.close().await {
            tracing::warn!(%error, "closing the rotated audit file failed");
        }
        Ok(())
    }

    /// One flusher round: write what is buffered, sync if due; errors are counted and logged.
    async fn flush_due(&self) {
        let mut writer = self.writer.lock().await;
        let result = async {
            self.write_pending(&mut writer).await?;
            if self.sync_due() {
                self.sync(&writer).await?;
            }
            Ok(())
        }
        .await;
        self.note_outcome(&result);
    }

    /// Writes the rest of a batch an earlier attempt left, then everything buffered.
    async fn write_pending(&self, writer: &mut Writer) -> std::io::Result<()> {
        self.write_batch(writer).await?;
        {
            let mut buffer = self.buffer.borrow_mut();
            if buffer.is_empty() {
                return Ok(());
            }
            if writer.batch.capacity() > BUFFER_BYTES_KEPT_MAX {
                writer.batch = Vec::with_capacity(BUFFER_BYTES_INITIAL);
            }
            writer.batch.clear();
            writer.written = 0;
            std::mem::swap(&mut writer.batch, &mut buffer);
            self.in_flight_bytes.set(writer.batch.len());
        }
        self.write_batch(writer).await
    }

    async fn write_batch(&self, writer: &mut Writer) -> std::io::Result<()> {
        while writer.written < writer.batch.len() {
            // The ring takes the buffer by value; a copy keeps the batch for a retry.
            let bytes = writer.batch[writer.written..].to_vec();
            let count = writer.file.write_at(bytes, writer.end).await?;
            if count == 0 {
                return Err(std::io::Error::new(ErrorKind::WriteZero, "the audit file accepted no bytes"));
            }
            writer.written += count;
            writer.end += count as u64;
            self.in_flight_bytes.set(self.in_flight_bytes.get() - count);
            self.bytes_written.set(self.bytes_written.get() + count as u64);
            self.unsynced.set(true);
        }
        Ok(())
    }

    fn sync_due(&self) -> bool {
        match self.settings.sync_interval {
            Some(interval) => {
                self.unsynced.get() && self.last_sync.get().is_none_or(|last| last.elapsed() >= interval)
            }
            None => false,
        }
    }

    async fn sync(&self, writer: &Writer) -> std::io::Result<()> {
        // The writer lock is held: nothing is written between the sync and `unsynced = false`.
        writer.file.fdatasync().await?;
        self.unsynced.set(false);
        self.last_sync.set(Some(Instant::now()));
        self.syncs.set(self.syncs.get() + 1);
        Ok(())
    }

    fn note_outcome(&self, result: &std::io::Result<()>) {
        match result {
            Ok(()) => {
                if self.failing.replace(false) {
                    tracing::warn!(path = %self.path.display(), "the audit file is writable again");
                }
            }
            Err(error) => {
                self.failing.set(true);
                self.write_errors.set(self.write_errors.get() + 1);
                if let Some(unlogged) = self.write_errors_log.allow() {
                    tracing::error!(path = %self.path.display(), %error, unwritten_bytes = self.unwritten_bytes(), failures_unlogged = unlogged, "writing the audit file failed; the events stay buffered and are retried");
                }
            }
        }
    }

    /// Nothing to write, and nothing written waits for a sync.
    fn is_idle(&self) -> bool {
        self.unwritten_bytes() == 0 && !(self.unsynced.get() && self.settings.sync_interval.is_some())
    }
}

async fn flusher(log: Rc<AuditLog>, rings: LocalReceiver<()>) {
    loop {
        // No await between the check and the park: `record` cannot slip in unnoticed.
        if log.is_idle() && rings.recv().await.is_none() {
            return;
        }
        glommio::timer::sleep(log.settings.flush_interval).await;
        log.flush_due().await;
    }
}

/// Lets a repeated message through at most once per [`ERROR_LOG_INTERVAL`].
#[derive(Default)]
struct RateLimit {
    allowed_at: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimit {
    /// `Some(occurrences suppressed since the last allowed one)` if this one may be logged.
    fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        if self.allowed_at.get().is_some_and(|last| now.duration_since(last) < ERROR_LOG_INTERVAL) {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.allowed_at.set(Some(now));
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use credshard_protocol::{Op, Status};

    use super::*;
    use crate::audit::reader::{self, Filter, ReadOutcome};

    /// Runs `test` on a fresh glommio executor of its own.
    fn on_executor<G, F, T>(test: G) -> T
    where
        G: FnOnce() -> F + Send + 'static,
        F: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(test)
            .expect("executor starts")
            .join()
            .expect("executor finishes")
    }

    fn event(index: u64, id: &str) -> AuditEvent<'_> {
        AuditEvent {
            time_ms: 1_795_410_721_123 + index,
            token: if index.is_multiple_of(2) { "billing-reader" } else { "-" },
            peer: "127.0.0.1:50000".parse().unwrap(),
            op: Op::Get,
            id: Some(id),
            owner: None,
            scope: None,
            version: Some(index),
            status: if index.is_multiple_of(2) { Status::Ok } else { Status::Unauthorized },
        }
    }

    fn read(dir: &Path) -> (ReadOutcome, u64) {
        let mut bad_lines = 0;
        let outcome = reader::read_dir(dir, &Filter::default(), &mut |_| bad_lines += 1).unwrap();
        (outcome, bad_lines)
    }

    #[test]
    fn records_flushes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = dir.path().join("audit");
        let path = audit_dir.clone();
        let (recorded, written) = on_executor(move || async move {
            let log = AuditLog::open(&path, 3, AuditSettings::default()).await.unwrap();
            for index in 0..1000 {
                log.record(&event(index, &format!("db/{index}\n\"quoted\"")));
            }
            assert!(!log.is_backlogged());
            assert!(log.unwritten_bytes() > 0);
            log.flush().await.unwrap();
            assert_eq!(log.unwritten_bytes(), 0);
            (log.events_recorded(), log.bytes_written())
        });
        assert_eq!(recorded, 1000);
        let file = audit_dir.join("shard-3.jsonl");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), written);
        let (outcome, bad_lines) = read(&audit_dir);
        assert_eq!((bad_lines, outcome.torn_tails, outcome.entries.len()), (0, 0, 1000));
        for (index, entry) in outcome.entries.iter().enumerate() {
            assert_eq!(entry.id.as_deref(), Some(format!("db/{index}\n\"quoted\"").as_str()));
            assert_eq!(entry.version, Some(index as u64));
            assert_eq!(entry.shard, 3);
            assert_eq!(entry.result, if index % 2 == 0 { "OK" } else { "UNAUTHORIZED" });
        }

        // Reopening appends after what is there.
        let path = audit_dir.clone();
        on_executor(move || async move {
            let log = AuditLog::open(&path, 3, AuditSettings::default()).await.unwrap();
            log.record(&event(1000, "after-reopen"));
            log.flush().await.unwrap();
        });
        let (outcome, _) = read(&audit_dir);
        assert_eq!(outcome.entries.len(), 1001);
        assert_eq!(outcome.entries[1000].id.as_deref(), Some("after-reopen"));
    }

    #[test]
    fn the_flusher_writes_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let settings = AuditSettings { sync_interval: None, ..AuditSettings::default() };
        let written = on_executor(move || async move {
            let log = AuditLog::open(&path, 0, settings).await.unwrap();
            log.spawn_flusher();
            log.spawn_flusher();
            for round in 0..3 {
                log.record(&event(round, "a"));
                log.record(&event(round, "b"));
                wait_until(|| log.unwritten_bytes() == 0).await;
                assert_eq!(log.unwritten_bytes(), 0, "round {round}: the flusher wrote the buffer");
            }
            log.bytes_written()
        });
        assert_eq!(std::fs::metadata(dir.path().join("shard-0.jsonl")).unwrap().len(), written);
        let (outcome, _) = read(dir.path());
        assert_eq!(outcome.entries.len(), 6);
    }

    /// Polls (1 ms apart, without a deadline on the outcome) until `done` or 10 s.
    async fn wait_until(done: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn the_flusher_syncs_when_due_even_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        on_executor(move || async move {
            let settings =
                AuditSettings { sync_interval: Some(Duration::from_millis(50)), ..AuditSettings::default() };
            let log = AuditLog::open(&path, 0, settings).await.unwrap();
            log.spawn_flusher();
            log.record(&event(0, "first"));
            wait_until(|| log.syncs() == 1).await;
            assert_eq!(log.syncs(), 1, "the first write is synced at once");
            // Written within the sync interval: synced later, with nothing new recorded.
            log.record(&event(1, "second"));
            wait_until(|| log.syncs() == 2).await;
            assert_eq!((log.syncs(), log.unwritten_bytes()), (2, 0));
            log.flush().await.unwrap();
            assert_eq!(log.syncs(), 2, "flush has nothing to sync");

            let unsynced = AuditSettings { sync_interval: None, ..AuditSettings::default() };
            let log = AuditLog::open(&path, 1, unsynced).await.unwrap();
            log.record(&event(0, "never synced"));
            log.flush().await.unwrap();
            assert_eq!((log.syncs(), log.unwritten_bytes()), (0, 0));
        });
    }

    #[test]
    fn a_torn_tail_is_kept_and_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shard-1.jsonl");
        let mut whole = Vec::new();
        crate::audit::format::encode_event(&mut whole, 1, &event(0, "whole"), &TimeText::new());
        let torn = whole[..whole.len() / 2].to_vec();
        std::fs::write(&file, [whole.as_slice(), &torn].concat()).unwrap();
        assert_eq!(read(dir.path()).0.torn_tails, 1, "the reader skips the torn tail");

        let path = dir.path().to_owned();
        on_executor(move || async move {
            let log = AuditLog::open(&path, 1, AuditSettings::default()).await.unwrap();
            log.record(&event(1, "after-crash"));
            log.flush().await.unwrap();
        });
        let content = std::fs::read(&file).unwrap();
        assert!(content.starts_with(&[whole.as_slice(), &torn, b"\n"].concat()), "nothing is rewritten");
        let (outcome, bad_lines) = read(dir.path());
        let ids: Vec<_> = outcome.entries.iter().map(|entry| entry.id.as_deref().unwrap()).collect();
        assert_eq!(ids, ["whole", "after-crash"]);
        assert_eq!((bad_lines, outcome.torn_tails), (1, 0), "the torn line is now an unparsable line");
    }

    #[test]
    fn backlog_is_detected_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        on_executor(move || async move {
            let settings = AuditSettings { backlog_bytes_max: 2_000, ..AuditSettings::default() };
            let log = AuditLog::open(&path, 0, settings).await.unwrap();
            let mut index = 0;
            while !log.is_busy() && index < 1_000 {
                log.record(&event(index, "db/main"));
                index += 1;
            }
            // Busy (connections wait) from half the limit on, before anything is refused.
            assert!(log.is_busy() && !log.is_backlogged(), "busy after {index} events");
            assert!(log.unwritten_bytes() > 1_000);
            while !log.is_backlogged() && index < 1_000 {
                log.record(&event(index, "db/main"));
                index += 1;
            }
            assert!(log.is_backlogged(), "backlogged after {index} events");
            assert!(log.unwritten_bytes() > 2_000 && index > 1);
            // Recording goes on up to twice the limit, then events are dropped and counted.
            for _ in 0..1_000 {
                log.record(&event(index, "db/main"));
                index += 1;
            }
            assert!(log.events_dropped() > 0);
            assert_eq!(log.events_recorded() + log.events_dropped(), index);
            assert!(log.unwritten_bytes() <= 4_000 + 300, "bounded: {}", log.unwritten_bytes());
            log.flush().await.unwrap();
            assert!(!log.is_backlogged());
            let (outcome, _) = read(&path);
            assert_eq!(outcome.entries.len() as u64, log.events_recorded());
        });
    }

    /// /dev/full fails every write with ENOSPC: the data must stay buffered and be counted.
    #[test]
    fn failed_writes_keep_the_data_and_count_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join("shard-0.jsonl")).unwrap();
        let path = dir.path().to_owned();
        on_executor(move || async move {
            let settings = AuditSettings { backlog_bytes_max: 1_000, ..AuditSettings::default() };
            let log = AuditLog::open(&path, 0, settings).await.unwrap();
            // Past the limit, then a failed flush moves it all from the buffer into the
            // writer's batch: the batch's bytes still count.
            for index in 0..1_000 {
                if log.is_backlogged() {
                    break;
                }
                log.record(&event(index, "db/main"));
            }
            assert!(log.is_backlogged());
            let unwritten = log.unwritten_bytes();
            assert!(log.flush().await.is_err());
            assert!(log.is_backlogged(), "a failed batch is still unwritten");
            assert!(!log.is_busy(), "a failing log refuses requests: nobody waits for it");
            assert!(log.flush().await.is_err());
            assert_eq!(log.write_errors(), 2);
            assert_eq!((log.unwritten_bytes(), log.bytes_written()), (unwritten, 0), "nothing is dropped");
            // Recorded behind the failed batch: waits in the buffer.
            log.record(&event(1_000, "db/main"));
            assert!(log.unwritten_bytes() > unwritten);
            // With nothing new recorded, the flusher goes on retrying the failed batch.
            let errors_before = log.write_errors();
            log.spawn_flusher();
            wait_until(|| log.write_errors() > errors_before + 2).await;
            assert!(log.write_errors() > errors_before + 2, "the flusher retries");
            assert_eq!(log.bytes_written(), 0);
        });
    }

    /// Not a test of speed (no assertion on time): prints what `record` costs here, in
    /// batches of 1000 events between flushes (about 5 ms of a busy executor).
    /// `cargo test --release -p credshard-engine --lib record_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn record_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        on_executor(move || async move {
            let log = AuditLog::open(&path, 0, AuditSettings::default()).await.unwrap();
            let mut event = event(0, "db/main");
            for round in 0..5 {
                let mut recording = Duration::ZERO;
                for _ in 0..100 {
                    let started = Instant::now();
                    for _ in 0..1000 {
                        event.time_ms += 1;
                        log.record(std::hint::black_box(&event));
                    }
                    recording += started.elapsed();
                    log.flush().await.unwrap();
                }
                println!("round {round}: {:?} per record()", recording / 100_000);
            }
        });
    }
}
