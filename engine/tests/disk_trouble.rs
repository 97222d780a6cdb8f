//! Disk trouble with a real process: the server runs under a file-size limit (RLIMIT_FSIZE),
//! so its log write fails with EFBIG like a full disk. Writes then fail UNAVAILABLE, reads go
//! on, and once the limit is raised (prlimit on the running process) writes resume; a restart
//! shows every acknowledged write.

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::process::{ProcessDirs, ServeProcess};
use common::put;
use credshard_protocol::{Client, Status};
const FILE_BYTES_LIMIT: u64 = 256 * 1024;

/// Starts a one-shard server, under a file-size limit if given.
fn serve(data_dir: &std::path::Path, key: &std::path::Path, file_bytes_limit: Option<u64>) -> ServeProcess {
    ServeProcess::start(data_dir, key, &["--shards", "1"], |command| {
        if let Some(limit) = file_bytes_limit {
            // SAFETY: getrlimit/setrlimit are async-signal-safe and only change the child's
            // own limit; `current` is a zeroed local they write into.
            unsafe {
                command.pre_exec(move || {
                    let mut current: libc::rlimit = std::mem::zeroed();
                    libc::getrlimit(libc::RLIMIT_FSIZE, &mut current);
                    let limited = libc::rlimit { rlim_cur: limit, rlim_max: current.rlim_max };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limited) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    })
}

#[test]
fn a_failing_disk_refuses_writes_keeps_reads_and_recovers() {
    let ProcessDirs { dir: _dir, key, data_dir } = ProcessDirs::new();
    let secret = vec![b'c'; 8 * 1024];

    let served = serve(&data_dir, &key, Some(FILE_BYTES_LIMIT));
    let address = served.address.clone();
    let mut client = Client::connect(address.as_str()).unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    for index in 0..100 {
        let id = format!("cert-{index}");
        match client.put(&put(&id, &secret)) {
            Ok(_) => acked.push(id),
            Err(error) => {
                assert_eq!(error.status(), Some(Status::Unavailable), "{error}");
                refused = Some(id);
                break;
            }
        }
    }
    let refused = refused.expect("the file-size limit made a log write fail");
    assert!(!acked.is_empty());
    // Reads go on; new writes are refused at once while the log cannot be written.
    assert_eq!(client.get(&acked[0]).unwrap().secret.expose(), &secret[..]);
    assert_eq!(client.put(&put("while-failing", b"x")).unwrap_err().status(), Some(Status::Unavailable));

    // The disk "recovers": raise the limit of the running server.
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: prlimit on our own child with a valid rlimit; the old-limit pointer may be null.
    let raised = unsafe { libc::prlimit(served.pid(), libc::RLIMIT_FSIZE, &unlimited, std::ptr::null_mut()) };
    assert_eq!(raised, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut resumed = false;
    for _ in 0..500 {
        if client.put(&put("after-recovery", b"ok")).is_ok() {
            resumed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(resumed, "writes resume when the log can be written again");
    acked.push("after-recovery".to_owned());
    drop(served);

    let served = serve(&data_dir, &key, None);
    let mut client = Client::connect(served.address.as_str()).unwrap();
    for id in &acked {
        assert!(client.get(id).is_ok(), "{id} was acknowledged and must survive");
    }
    // The refused write's outcome was unknown to the client: it was applied in memory and
    // reached the log once the retry succeeded.
    assert!(client.get(&refused).is_ok());
    assert_eq!(
        client.get("while-failing").unwrap_err().status(),
        Some(Status::NotFound),
        "refused before it was applied"
    );
}
