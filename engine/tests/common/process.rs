//! The real `credshard serve` binary as a child process, killed (SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const BINARY: &str = env!("CARGO_BIN_EXE_credshard");

/// A temp dir holding a fresh master key file, and the (not yet created) data dir a
/// [`ServeProcess`] serves from; both are removed with the temp dir.
pub struct ProcessDirs {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
    pub data_dir: PathBuf,
}

impl ProcessDirs {
    pub fn new() -> ProcessDirs {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join("master.key");
        credshard_engine::crypto::MasterKey::generate().write_file(&key).expect("write the master key");
        let data_dir = dir.path().join("data");
        ProcessDirs { dir, key, data_dir }
    }
}

pub struct ServeProcess {
    pub child: Child,
    /// The address from the server's `listening on` line.
    pub address: String,
}

impl ServeProcess {
    /// Starts `credshard serve --listen 127.0.0.1:0 --data-dir DATA_DIR --key-file KEY` plus
    /// `args`; `adjust` may change the command further (limits, environment) before it runs.
    pub fn start(
        data_dir: &Path,
        key: &Path,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> ServeProcess {
        let mut command = Command::new(BINARY);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--key-file")
            .arg(key)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn credshard serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        ServeProcess { child, address }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
