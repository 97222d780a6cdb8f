//! The data dir's lock: one server per data dir. Two servers appending to the same logs would
//! interleave batches and lose each other's acknowledged writes, so a server takes an advisory
//! lock (`flock`) on `<data-dir>/lock` before it reads or writes anything else there, and holds
//! it for as long as it runs. The kernel releases it when the process ends, however it ends
//! (kill -9 included), so a stale lock file never blocks a restart. The file holds the pid of
//! the holder, for the error message of a server that finds the lock taken.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::EngineError;

const LOCK_FILE: &str = "lock";

/// The held lock; dropping it releases the data dir.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (which must exist) and records this process's pid in it.
    ///
    /// # Errors
    /// [`EngineError::Start`] naming the holder's pid when another process holds the lock;
    /// I/O errors creating or locking the file.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, EngineError> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown".to_owned() } else { holder.to_owned() };
                return Err(EngineError::Start(format!(
                    "the data dir {} is in use by another credshard server (pid {holder}); \
                     one data dir serves one server at a time",
                    data_dir.display()
                )));
            }
            Err(TryLockError::Error(error)) => return Err(EngineError::Io(error)),
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(std::fs::read_to_string(first.path()).unwrap().trim(), pid);
        // flock conflicts between two open file descriptions, also within one process.
        let error = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(error.contains("in use by another credshard server") && error.contains(&pid), "{error}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("released when dropped");
    }
}
