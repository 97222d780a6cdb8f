//! Recovery at start: read the manifest, parse every shard's log (in parallel), truncate torn
//! tails, and rebuild the shards' maps and indexes by replaying the entries in log order. A
//! changed shard count, or logs much larger than the data they hold, are rewritten as a new
//! generation of compact logs before the server starts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::EngineError;
use crate::storage::manifest::Manifest;
use crate::storage::wal::{self, encode_batch, Entry};
use crate::storage::Shards;

/// Logs bigger than this, holding more than twice the versions kept, are compacted at start.
const COMPACT_LOG_BYTES_MIN: u64 = 64 << 20;
/// Payload bytes per batch when logs are rewritten.
const REWRITE_BATCH_BYTES: usize = 1 << 20;

/// What recovery did, for the start-up log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub credentials: usize,
    pub entries_replayed: usize,
    pub log_bytes: u64,
    pub torn_bytes_dropped: u64,
    pub rewritten: bool,
    pub elapsed_ms: u64,
}

/// Where each shard's writer continues: the active log segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveSegment {
    pub sequence: u64,
    pub path: PathBuf,
}

/// One old shard's files, read and parsed.
struct ShardLogs {
    /// Snapshot bytes (if any), then each segment's bytes, in replay order.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Files made obsolete by the snapshot (left over from an interrupted clean-up).
    obsolete: Vec<PathBuf>,
}

/// Fills `shards` from the data dir's logs and returns the manifest the server must write to and
/// each shard's active segment.
///
/// # Errors
/// An unreadable or unknown-format manifest; a corrupt entry in the middle of a log (the error
/// names the file and offset); a record that fails validation; I/O errors.
pub fn recover(
    data_dir: &Path,
    shards: &dyn Shards,
) -> Result<(Manifest, Vec<ActiveSegment>, Report), EngineError> {
    let started = Instant::now();
    let shard_count = shards.shard_count();
    let Some(manifest) = Manifest::read(data_dir)? else {
        let manifest = Manifest { shard_count, generation: 1 };
        create_generation(data_dir, &manifest, &vec![Vec::new(); shard_count])?;
        manifest.write(data_dir)?;
        return Ok((manifest, active_segments(data_dir, &manifest)?, Report::default()));
    };

    let logs: Vec<ShardLogs> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..manifest.shard_count)
            .map(|shard_id| scope.spawn(move || read_shard(data_dir, &manifest, shard_id)))
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join().expect("log reader panicked"))
            .collect::<Result<_, _>>()
    })?;
    let mut report = Report::default();
    let mut parsed = Vec::with_capacity(logs.len());
    for shard in &logs {
        let mut entries = Vec::new();
        for (position, (path, bytes)) in shard.files.iter().enumerate() {
            let file_parsed = wal::parse(bytes).map_err(|corruption| {
                EngineError::Corrupt(format!(
                    "{} is corrupt at offset {} ({}); it is not a torn tail, so nothing is guessed: restore it or move it aside",
                    path.display(),
                    corruption.offset,
                    corruption.reason
                ))
            })?;
            // What follows the last whole batch: a torn batch, then zeros preallocated ahead of
            // the log's end (`--fsync always`; see `storage::log`), either of them or neither.
            let after = &bytes[file_parsed.valid_bytes..];
            let dropped = after.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
            // The log's bytes: its batches and any torn one, not the preallocated zeros.
            report.log_bytes += (file_parsed.valid_bytes + dropped) as u64;
            let is_segment = path.extension().is_none_or(|extension| extension != "snapshot");
            let is_active = position + 1 == shard.files.len();
            if dropped == 0 && !after.is_empty() && is_active && is_segment {
                // Only zeros: the active segment is cut back to its end, which its writer
                // continues from. (An older segment keeps them: nothing is written there.)
                truncate(path, file_parsed.valid_bytes as u64)?;
            } else if dropped == 0 && !after.is_empty() && !is_segment {
                return Err(EngineError::Corrupt(format!(
                    "{} ends in {} zero bytes after its last batch but is a snapshot, which is never preallocated",
                    path.display(),
                    after.len()
                )));
            }
            if dropped > 0 {
                // Only the active (last) segment can end in a torn batch: snapshots and older
                // segments were complete and synced before anything newer was written.
                if !is_active || !is_segment {
                    return Err(EngineError::Corrupt(format!(
                        "{} ends {} bytes short of a whole batch but is not the active log segment",
                        path.display(),
                        dropped
                    )));
                }
                tracing::warn!(
                    path = %path.display(),
                    bytes_dropped = dropped,
                    kept_bytes = file_parsed.valid_bytes,
                    "the log ends in a torn or incomplete batch (a crash during a write); truncating it"
                );
                truncate(path, file_parsed.valid_bytes as u64)?;
                report.torn_bytes_dropped += dropped as u64;
            }
            entries.extend(file_parsed.entries);
        }
        report.entries_replayed += entries.len();
        parsed.push(entries);
    }
    for path in logs.iter().flat_map(|shard| &shard.obsolete) {
        if let Err(error) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), %error, "could not remove an obsolete log file");
        }
    }

    // Replay, one thread per shard of the new layout. With an unchanged shard count each
    // thread replays only its own log; after a change each replays the entries that now map
    // to it, from every old log (an id lives in exactly one old log, so order is preserved).
    let same_layout = manifest.shard_count == shard_count;
    let kept_versions = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..shard_count)
            .map(|shard_id| {
                let parsed = &parsed;
                scope.spawn(move || {
                    let sources: Vec<&[Entry<'_>]> = if same_layout {
                        vec![&parsed[shard_id]]
                    } else {
                        parsed.iter().map(Vec::as_slice).collect()
                    };
                    shards.replay(shard_id, &sources, same_layout)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("replay panicked"))
            .sum::<Result<usize, EngineError>>()
    })?;
    report.credentials = shards.credentials();

    // Compact when the logs are big and mostly hold versions no longer kept.
    let oversized = report.log_bytes > COMPACT_LOG_BYTES_MIN && report.entries_replayed > 2 * kept_versions;
    let manifest = if same_layout && !oversized {
        manifest
    } else {
        let next = Manifest { shard_count, generation: manifest.generation + 1 };
        rewrite(data_dir, shards, &manifest, &next)?;
        report.rewritten = true;
        next
    };
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((manifest, active_segments(data_dir, &manifest)?, report))
}

/// Reads a shard's newest complete snapshot and the segments from its sequence on; lists the
/// older files as obsolete.
fn read_shard(data_dir: &Path, manifest: &Manifest, shard_id: usize) -> Result<ShardLogs, EngineError> {
    let files = manifest.shard_files(data_dir, shard_id)?;
    let snapshot = files.snapshots.last().cloned();
    let from = snapshot.as_ref().map_or(0, |(sequence, _)| *sequence);
    let mut obsolete: Vec<PathBuf> = files
        .snapshots
        .iter()
        .filter(|(sequence, _)| *sequence < from)
        .map(|(_, path)| path.clone())
        .collect();
    obsolete
        .extend(files.segments.iter().filter(|(sequence, _)| *sequence < from).map(|(_, path)| path.clone()));
    let mut read = Vec::new();
    for (_, path) in snapshot.iter().chain(files.segments.iter().filter(|(sequence, _)| *sequence >= from)) {
        read.push((path.clone(), read_log(path)?));
    }
    Ok(ShardLogs { files: read, obsolete })
}

/// The segment each shard's writer appends to: its newest, created empty if it has none
/// since its snapshot.
fn active_segments(data_dir: &Path, manifest: &Manifest) -> Result<Vec<ActiveSegment>, EngineError> {
    (0..manifest.shard_count)
        .map(|shard_id| {
            let files = manifest.shard_files(data_dir, shard_id)?;
            let snapshot = files.snapshots.last().map_or(0, |(sequence, _)| *sequence);
            let sequence = files.segments.last().map_or(snapshot, |(sequence, _)| (*sequence).max(snapshot));
            Ok(ActiveSegment { sequence, path: manifest.segment_path(data_dir, shard_id, sequence) })
        })
        .collect()
}

fn read_log(path: &Path) -> Result<Vec<u8>, EngineError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(EngineError::Io(error)),
    }
}

fn truncate(path: &Path, length: u64) -> Result<(), EngineError> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(length)?;
    file.sync_all()?;
    Ok(())
}

/// Writes the current contents of every shard as `next`'s logs, switches the manifest to it,
/// and removes the previous generation.
fn rewrite(
    data_dir: &Path,
    shards: &dyn Shards,
    previous: &Manifest,
    next: &Manifest,
) -> Result<(), EngineError> {
    let mut files = vec![Vec::new(); next.shard_count];
    for (shard_id, file) in files.iter_mut().enumerate() {
        let mut payload = Vec::new();
        for item in shards.snapshot_items(shard_id) {
            item.encode(&mut payload);
            if payload.len() >= REWRITE_BATCH_BYTES {
                file.extend(encode_batch(&payload));
                payload.clear();
            }
        }
        if !payload.is_empty() {
            file.extend(encode_batch(&payload));
        }
    }
    create_generation(data_dir, next, &files)?;
    next.write(data_dir)?;
    let old_dir = previous.log_dir(data_dir);
    if let Err(error) = std::fs::remove_dir_all(&old_dir) {
        tracing::warn!(path = %old_dir.display(), %error, "could not remove the previous log generation");
    }
    tracing::info!(
        from_shards = previous.shard_count,
        to_shards = next.shard_count,
        generation = next.generation,
        "rewrote the logs"
    );
    Ok(())
}

/// Creates `manifest`'s log directory with one durable log per shard holding `files`.
fn create_generation(data_dir: &Path, manifest: &Manifest, files: &[Vec<u8>]) -> Result<(), EngineError> {
    let directory = manifest.log_dir(data_dir);
    if directory.exists() {
        // Left over from a rewrite that crashed before switching the manifest.
        std::fs::remove_dir_all(&directory)?;
    }
    std::fs::create_dir_all(&directory)?;
    for (shard_id, bytes) in files.iter().enumerate() {
        let file = std::fs::File::create(manifest.segment_path(data_dir, shard_id, 0))?;
        std::io::Write::write_all(&mut &file, bytes)?;
        file.sync_all()?;
    }
    std::fs::File::open(&directory)?.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}
