//! Disk trouble with a real process: the server runs under a file-size limit (RLIMIT_FSIZE),
//! so its log write fails with EFBIG like a full disk. Writes then fail UNAVAILABLE, reads go
//! on, and once the limit is raised (prlimit on the running process) writes resume; a restart
//! shows every acknowledged write.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use credshard_protocol::{Client, Expiry, Kind, Labels, PutRequest, Status, EMPTY_LABELS};

const BINARY: &str = env!("CARGO_BIN_EXE_credshard");
const FILE_BYTES_LIMIT: u64 = 256 * 1024;

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(
    data_dir: &std::path::Path,
    key: &std::path::Path,
    file_bytes_limit: Option<u64>,
) -> (Served, String) {
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(data_dir)
        .arg("--key-file")
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(limit) = file_bytes_limit {
        // SAFETY: setrlimit is async-signal-safe and only changes the child's own limit.
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
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (Served(child), address)
}

fn put<'a>(id: &'a str, secret: &'a [u8]) -> PutRequest<'a> {
    PutRequest {
        id,
        owner: "disk",
        scope: "test",
        kind: Kind::Certificate,
        expected_version: None,
        expiry: Expiry::Never,
        labels: Labels::from_validated(EMPTY_LABELS),
        secret,
    }
}

#[test]
fn a_failing_disk_refuses_writes_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    credshard_engine::crypto::MasterKey::generate().write_file(&key).unwrap();
    let data_dir = dir.path().join("data");
    let secret = vec![b'c'; 8 * 1024];

    let (served, address) = serve(&data_dir, &key, Some(FILE_BYTES_LIMIT));
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
    let raised =
        unsafe { libc::prlimit(served.0.id() as i32, libc::RLIMIT_FSIZE, &unlimited, std::ptr::null_mut()) };
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

    let (_served, address) = serve(&data_dir, &key, None);
    let mut client = Client::connect(address.as_str()).unwrap();
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
