//! The data dir's manifest: which format the data dir is in, how many shards its logs are
//! split into, with which hash, and which generation of log files is current.
//!
//! ```text
//! credshard-data-dir
//! format_version 1
//! shards 2
//! shard_hash fnv1a64
//! generation 1
//! ```
//!
//! Log files live in `wal-<generation>/shard-<i>.log`. Rewriting the logs (a changed shard
//! count, or compaction at start) writes a new generation beside the old one and then replaces
//! the manifest atomically: a crash at any point leaves one complete generation in force.

use std::path::{Path, PathBuf};

use crate::error::EngineError;
use crate::storage::write_file_atomically;

/// The data dir format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The only shard hash so far (see `keyspace.rs`).
pub const SHARD_HASH: &str = "fnv1a64";
const FIRST_LINE: &str = "credshard-data-dir";

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

    pub fn log_path(&self, data_dir: &Path, shard_id: usize) -> PathBuf {
        self.log_dir(data_dir).join(format!("shard-{shard_id}.log"))
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
        assert!(manifest.log_path(dir.path(), 2).ends_with("wal-7/shard-2.log"));

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
