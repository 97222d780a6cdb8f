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

/// `credshard serve` on `listen` with its data dir and key file, stdout piped (the server
/// prints its address there).
fn serve_command(listen: &str, data_dir: &Path, key: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .arg("--key-file")
        .arg(key)
        .args(args)
        .stdout(Stdio::piped());
    // The server reads its settings from CREDSHARD_* too: the test's own environment must not
    // change the server it starts.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CREDSHARD_") {
            command.env_remove(name);
        }
    }
    command
}

pub struct ServeProcess {
    pub child: Child,
    /// The address from the server's `listening on` line.
    pub address: String,
}

impl ServeProcess {
    /// Starts `credshard serve --listen 127.0.0.1:0 --data-dir DATA_DIR --key-file KEY` plus
    /// `args`; `adjust` may change the command further (limits, environment) before it runs.
    ///
    /// # Panics
    /// If the server does not start.
    pub fn start(
        data_dir: &Path,
        key: &Path,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> ServeProcess {
        let mut command = serve_command("127.0.0.1:0", data_dir, key, args);
        command.stderr(Stdio::null());
        adjust(&mut command);
        ServeProcess::spawn(command)
            .unwrap_or_else(|failure| panic!("credshard serve did not start: {failure}"))
    }

    /// Like [`ServeProcess::start`] on `listen`, but a server that refuses to start is an
    /// answer, not a panic: `Err` holds its exit status and everything it wrote to stderr
    /// (which goes to `stderr_path` while it runs, so a chatty server never blocks on a pipe).
    pub fn try_start(
        listen: &str,
        data_dir: &Path,
        key: &Path,
        args: &[&str],
        stderr_path: &Path,
    ) -> Result<ServeProcess, String> {
        let mut command = serve_command(listen, data_dir, key, args);
        command.stderr(std::fs::File::create(stderr_path).expect("create the stderr file"));
        ServeProcess::spawn(command).map_err(|status| {
            let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
            format!("{status}; stderr: {stderr}")
        })
    }

    /// Spawns `command` and reads the bound address from its first line; `Err` holds the exit
    /// status of a server that ended without printing one.
    fn spawn(mut command: Command) -> Result<ServeProcess, String> {
        let mut child = command.spawn().expect("spawn credshard serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        match line.trim().strip_prefix("listening on ") {
            Some(address) => Ok(ServeProcess { address: address.to_owned(), child }),
            None => {
                let status = child.wait().expect("wait for credshard serve");
                Err(format!("exited with {status} before listening (stdout {line:?})"))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops the server with SIGTERM (it flushes its audit buffers) and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) only sends a signal to a server process this test started; no memory is shared.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        self.child.wait().expect("wait for credshard serve")
    }

    /// The server's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
        let kib: u64 =
            line.split_whitespace().nth(1).and_then(|value| value.parse().ok()).expect("VmRSS in kB");
        kib * 1024
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
