//! The data dir's manifest: which format the data dir is in, how many shards its logs are
//! split into, with which hash, and which generation of log files is current.
//!
//! ```text
//! credshard-data-dir
//! format_version 2
//! shards 2
//! shard_hash fnv1a64
//! generation 1
//! ```
//!
//! Log files live in `wal-<generation>/`: per shard, numbered segments
//! `shard-<i>.<sequence>.log` and at most one complete snapshot `shard-<i>.<sequence>.snapshot`
//! (the shard's state, to be followed by the segments from the same sequence on). Rewriting the logs (a changed shard
//! count, or compaction at start) writes a new generation beside the old one and then replaces
//! the manifest atomically: a crash at any point leaves one complete generation in force.

use std::path::{Path, PathBuf};

use crate::error::EngineError;
use crate::files::write_file_atomically;

/// The data dir format this build reads and writes.
/// 2: record ciphertexts are bound to owner, scope, kind, expiry and grace besides id,
/// version and key id (see `crypto::Binding`); format 1 records would not decrypt.
pub const FORMAT_VERSION: u32 = 2;
/// The only shard hash so far (see `keyspace.rs`).
pub const SHARD_HASH: &str = "fnv1a64";
const FIRST_LINE: &str = "credshard-data-dir";

/// A shard's files in one generation, each list sorted by sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardFiles {
    pub snapshots: Vec<(u64, PathBuf)>,
    pub segments: Vec<(u64, PathBuf)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub shard_count: usize,
    pub generation: u64,
}

impl Manifest {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("manifest")
    }

    /// The directory holding this generation's logs.
    pub fn log_dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(format!("wal-{}", self.generation))
    }

    /// Log segment `sequence` of a shard: `shard-<i>.<sequence>.log`.
    pub fn segment_path(&self, data_dir: &Path, shard_id: usize, sequence: u64) -> PathBuf {
        self.log_dir(data_dir).join(format!("shard-{shard_id}.{sequence:06}.log"))
    }

    /// Snapshot `sequence` of a shard: the shard's state, to be followed by segments
    /// `sequence` and later.
    pub fn snapshot_path(&self, data_dir: &Path, shard_id: usize, sequence: u64) -> PathBuf {
        self.log_dir(data_dir).join(format!("shard-{shard_id}.{sequence:06}.snapshot"))
    }

    /// The snapshots and segments of a shard in this generation, each sorted by sequence.
    /// Unfinished snapshots (`.tmp`) are not listed.
    ///
    /// # Errors
    /// I/O errors reading the directory.
    pub fn shard_files(&self, data_dir: &Path, shard_id: usize) -> std::io::Result<ShardFiles> {
        let paths = std::fs::read_dir(self.log_dir(data_dir))?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(self.shard_files_among(shard_id, paths))
    }

    /// [`Manifest::shard_files`] among the given paths of the log directory.
    pub fn shard_files_among(&self, shard_id: usize, paths: Vec<PathBuf>) -> ShardFiles {
        let mut files = ShardFiles::default();
        let prefix = format!("shard-{shard_id}.");
        for path in paths {
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else { continue };
            let Some(rest) = name.strip_prefix(&prefix) else { continue };
            let Some((sequence, kind)) = rest.split_once('.') else { continue };
            let Ok(sequence) = sequence.parse::<u64>() else { continue };
            match kind {
                "log" => files.segments.push((sequence, path)),
                "snapshot" => files.snapshots.push((sequence, path)),
                _ => {}
            }
        }
        files.segments.sort();
        files.snapshots.sort();
        files
    }

    /// Reads the manifest; `None` for a data dir that has none yet.
    ///
    /// # Errors
    /// A manifest of an unknown format version, another shard hash, or unreadable content.
    pub fn read(data_dir: &Path) -> Result<Option<Manifest>, EngineError> {
        let path = Manifest::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let invalid = |reason: &str| EngineError::Config(format!("{}: {reason}", path.display()));
        let mut lines = text.lines();
        if lines.next() != Some(FIRST_LINE) {
            return Err(invalid("not a credshard manifest"));
        }
        let (mut format_version, mut shard_count, mut shard_hash, mut generation) = (None, None, None, None);
        for line in lines.filter(|line| !line.trim().is_empty()) {
            let (key, value) = line.split_once(' ').ok_or_else(|| invalid("a line is not `key value`"))?;
            match key {
                "format_version" => format_version = value.parse::<u32>().ok(),
                "shards" => shard_count = value.parse::<usize>().ok(),
                "shard_hash" => shard_hash = Some(value.to_owned()),
                "generation" => generation = value.parse::<u64>().ok(),
                _ => return Err(invalid(&format!("unknown key {key:?}"))),
            }
        }
        let format_version = format_version.ok_or_else(|| invalid("format_version is missing"))?;
        if format_version != FORMAT_VERSION {
            return Err(EngineError::Config(format!(
                "data dir {} has format version {format_version}; this build reads format version {FORMAT_VERSION}",
                data_dir.display()
            )));
        }
        if shard_hash.as_deref() != Some(SHARD_HASH) {
            return Err(invalid(&format!(
                "shard hash {shard_hash:?} is not supported (this build uses {SHARD_HASH})"
            )));
        }
        Ok(Some(Manifest {
            shard_count: shard_count
                .filter(|&count| count > 0)
                .ok_or_else(|| invalid("shards is missing or 0"))?,
            generation: generation.ok_or_else(|| invalid("generation is missing"))?,
        }))
    }

    /// Replaces the manifest atomically.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(&self, data_dir: &Path) -> Result<(), EngineError> {
        let text = format!(
            "{FIRST_LINE}\nformat_version {FORMAT_VERSION}\nshards {}\nshard_hash {SHARD_HASH}\ngeneration {}\n",
            self.shard_count, self.generation
        );
        write_file_atomically(&Manifest::path(data_dir), text.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        let manifest = Manifest { shard_count: 3, generation: 7 };
        manifest.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(manifest));
        assert!(manifest.segment_path(dir.path(), 2, 3).ends_with("wal-7/shard-2.000003.log"));
        std::fs::create_dir_all(manifest.log_dir(dir.path())).unwrap();
        for name in [
            "shard-2.000004.log",
            "shard-2.000003.log",
            "shard-2.000004.snapshot",
            "shard-2.000005.snapshot.tmp",
            "shard-1.000009.log",
        ] {
            std::fs::write(manifest.log_dir(dir.path()).join(name), b"").unwrap();
        }
        let files = manifest.shard_files(dir.path(), 2).unwrap();
        assert_eq!(files.segments.iter().map(|(sequence, _)| *sequence).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(files.snapshots.iter().map(|(sequence, _)| *sequence).collect::<Vec<_>>(), vec![4]);

        let path = Manifest::path(dir.path());
        std::fs::write(
            &path,
            "credshard-data-dir\nformat_version 9\nshards 1\nshard_hash fnv1a64\ngeneration 1\n",
        )
        .unwrap();
        let error = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("format version 9"), "{error}");
        std::fs::write(&path, "something else\n").unwrap();
        assert!(Manifest::read(dir.path()).is_err());
    }
}
