//! The real `credshard` binary: serve with zero configuration, the client subcommands, a
//! clean stop on SIGTERM, a wrong master key refused at start, and no secret in the logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_credshard");

/// A running `credshard serve`, killed if the test ends early.
struct Served {
    child: Child,
    address: String,
}

impl Served {
    fn start(data_dir: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn credshard serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let address = line.trim().strip_prefix("listening on ").unwrap_or_else(|| {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("unexpected first line {line:?}; stderr: {stderr}")
        });
        Served { address: address.to_owned(), child }
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(BINARY)
            .args(args)
            .env("CREDSHARD_ADDR", &self.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that fails before reading its input (a bad flag) may exit before this
        // write: a broken pipe then is its answer, not the test's failure.
        if let Err(error) = child.stdin.take().unwrap().write_all(stdin) {
            assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
        }
        child.wait_with_output().unwrap()
    }

    /// SIGTERM, then the exit status and everything the server logged.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) only sends a signal to a server process this test started; no memory is shared.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let mut logs = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
        (status, logs)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn zero_configuration_serve_and_client_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let served = Served::start(&data_dir, &[]);
    let secret = "cli-canary-secret-4411";

    let put = served.run(
        &["put", "svc/db", "--owner", "team", "--scope", "prod", "--kind", "password", "--label", "env=prod"],
        format!("{secret}\n").as_bytes(),
    );
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert_eq!(text(&put.stdout).trim(), "svc/db version 1");

    let get = served.run(&["get", "svc/db"], b"");
    assert!(get.status.success());
    assert_eq!(text(&get.stdout), format!("{secret}\n"), "the trailing newline of stdin was dropped");

    let meta = served.run(&["get", "svc/db", "--meta"], b"");
    let meta = text(&meta.stdout);
    assert!(meta.contains("kind password") && meta.contains("label env=prod") && meta.contains("version 1"));
    assert!(!meta.contains(secret), "--meta never prints the secret");

    let conflict = served.run(&["put", "svc/db", "--owner", "o", "--scope", "s", "--if-version", "0"], b"x");
    assert!(!conflict.status.success());
    assert!(text(&conflict.stderr).contains("VERSION_CONFLICT"), "{}", text(&conflict.stderr));

    let stats = text(&served.run(&["stats"], b"").stdout);
    assert!(stats.contains("shards 2") && stats.contains("credentials 1"), "{stats}");

    let rotated = served.run(&["rotate", "svc/db", "--grace", "3600"], b"rotated-canary\n");
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    assert_eq!(text(&rotated.stdout).trim(), "svc/db version 2");
    assert_eq!(text(&served.run(&["get", "svc/db"], b"").stdout), "rotated-canary\n");
    let previous = served.run(&["get", "svc/db", "--version", "1"], b"");
    assert_eq!(text(&previous.stdout), format!("{secret}\n"), "the previous version is in its grace period");
    let meta = text(&served.run(&["get", "svc/db", "--meta"], b"").stdout);
    assert!(meta.contains("version 1: previous-in-grace"), "{meta}");

    served.run(&["put", "svc/cache", "--owner", "team", "--scope", "dev"], b"c");
    let listed = text(&served.run(&["list", "--owner", "team"], b"").stdout);
    let ids: Vec<&str> = listed.lines().map(|line| line.split(' ').next().unwrap()).collect();
    assert_eq!(ids, vec!["svc/cache", "svc/db"], "ordered by scope then id: {listed}");
    assert!(!listed.contains(secret) && !listed.contains("rotated-canary"), "list never prints secrets");
    let no_filter = served.run(&["list"], b"");
    assert_eq!(no_filter.status.code(), Some(1));

    let batch = served.run(&["batch-get", "svc/db", "missing", "svc/cache"], b"");
    assert_eq!(batch.status.code(), Some(1), "a missing id makes the batch exit non-zero");
    let lines: Vec<String> = text(&batch.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "svc/db rotated-canary");
    assert!(lines[1].starts_with("missing error: NOT_FOUND"), "{lines:?}");
    assert_eq!(lines[2], "svc/cache c");
    served.run(&["delete", "svc/cache"], b"");

    let delete = served.run(&["delete", "svc/db"], b"");
    assert_eq!(text(&delete.stdout).trim(), "deleted svc/db (was version 2; `undelete` restores it)");
    let missing = served.run(&["get", "svc/db"], b"");
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("NOT_FOUND: credential deleted"), "{}", text(&missing.stderr));
    let undelete = served.run(&["undelete", "svc/db"], b"");
    assert_eq!(text(&undelete.stdout).trim(), "svc/db is served again at version 2");
    assert_eq!(text(&served.run(&["get", "svc/db"], b"").stdout), "rotated-canary\n");
    let destroy = served.run(&["destroy", "svc/db", "--version", "1"], b"");
    assert_eq!(text(&destroy.stdout).trim(), "destroyed version 1 of svc/db");
    let destroyed = served.run(&["get", "svc/db", "--version", "1"], b"");
    assert!(text(&destroyed.stderr).contains("NOT_FOUND: version destroyed"), "{}", text(&destroyed.stderr));
    let purge = served.run(&["delete", "svc/db", "--purge"], b"");
    assert_eq!(text(&purge.stdout).trim(), "purged svc/db (was version 2)");
    let gone = served.run(&["undelete", "svc/db"], b"");
    assert!(text(&gone.stderr).contains("NOT_FOUND: credential not found"), "{}", text(&gone.stderr));

    // A staged rotation: the pending secret is readable by stage only until it is promoted.
    served.run(&["put", "svc/staged", "--owner", "team", "--scope", "dev", "--label", "env=dev"], b"first\n");
    let staged = served.run(&["rotate", "svc/staged", "--pending"], b"staged-canary\n");
    assert_eq!(text(&staged.stdout).trim(), "svc/staged version 2 pending (`promote` makes it current)");
    assert_eq!(text(&served.run(&["get", "svc/staged"], b"").stdout), "first\n");
    assert_eq!(
        text(&served.run(&["get", "svc/staged", "--stage", "pending"], b"").stdout),
        "staged-canary\n"
    );
    let pending_meta = text(&served.run(&["get", "svc/staged", "--meta"], b"").stdout);
    assert!(
        pending_meta.contains("version 2: pending") && pending_meta.contains("env=dev"),
        "{pending_meta}"
    );
    let stale = served.run(&["promote", "svc/staged", "--if-version", "1"], b"");
    assert!(text(&stale.stderr).contains("VERSION_CONFLICT"), "{}", text(&stale.stderr));
    let promoted = served.run(&["promote", "svc/staged", "--if-version", "2", "--grace", "600"], b"");
    assert_eq!(text(&promoted.stdout).trim(), "svc/staged version 2 is current");
    assert_eq!(text(&served.run(&["get", "svc/staged"], b"").stdout), "staged-canary\n");
    assert_eq!(text(&served.run(&["get", "svc/staged", "--stage", "previous"], b"").stdout), "first\n");
    let promoted_meta = text(&served.run(&["get", "svc/staged", "--meta"], b"").stdout);
    assert!(promoted_meta.contains("version 1: previous-in-grace"), "{promoted_meta}");
    let policy = served.run(
        &["policy", "svc/staged", "--set", "--cas-required", "--max-versions", "4", "--meta", "team=ops"],
        b"",
    );
    let printed = text(&policy.stdout);
    assert!(
        printed.contains("max_versions 4")
            && printed.contains("cas_required true")
            && printed.contains("meta team=ops"),
        "{printed}{}",
        text(&policy.stderr)
    );
    let unconditional = served.run(&["put", "svc/staged", "--owner", "team", "--scope", "dev"], b"x");
    assert!(
        text(&unconditional.stderr).contains("requires compare-and-set"),
        "{}",
        text(&unconditional.stderr)
    );
    let conditional =
        served.run(&["put", "svc/staged", "--owner", "team", "--scope", "dev", "--if-version", "2"], b"x");
    assert_eq!(text(&conditional.stdout).trim(), "svc/staged version 3");
    let bad_stage = served.run(&["get", "svc/staged", "--stage", "next"], b"");
    assert!(text(&bad_stage.stderr).contains("unknown stage"), "{}", text(&bad_stage.stderr));

    let bad_kind = served.run(&["put", "x", "--owner", "o", "--scope", "s", "--kind", "nope"], b"x");
    assert_eq!(bad_kind.status.code(), Some(1));
    assert!(text(&bad_kind.stderr).contains("unknown kind"));

    let (status, logs) = served.stop();
    assert!(status.success(), "SIGTERM stops the server cleanly: {status:?}\n{logs}");
    assert!(logs.contains("NO MASTER KEY GIVEN"), "the generated key is warned about: {logs}");
    assert!(
        !logs.contains(secret) && !logs.contains("rotated-canary") && !logs.contains("staged-canary"),
        "a secret reached the logs"
    );
    assert!(data_dir.join("master.key").exists() && data_dir.join("keyring").exists());
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let output = Command::new(BINARY).args(["stats", "--addr", &address]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot reach credshard"), "{}", text(&output.stderr));
}

#[test]
fn keygen_key_file_and_wrong_key_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let other_key = dir.path().join("other.key");
    for path in [&key, &other_key] {
        let output = Command::new(BINARY).args(["keygen", "--out"]).arg(path).output().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
    }
    let keygen_again = Command::new(BINARY).args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(!keygen_again.status.success(), "keygen never overwrites a key");

    let data_dir = dir.path().join("data");
    let served = Served::start(&data_dir, &["--key-file", key.to_str().unwrap()]);
    let (status, logs) = served.stop();
    assert!(status.success());
    assert!(!logs.contains("NO MASTER KEY GIVEN"));
    assert!(!data_dir.join("master.key").exists(), "no key is generated when one is given");

    let refused = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(&data_dir)
        .arg("--key-file")
        .arg(&other_key)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("wrong master key"), "{}", text(&refused.stderr));

    let passphrase = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(&data_dir)
        .args(["--passphrase-env", "CREDSHARD_TEST_PASSPHRASE"])
        .env("CREDSHARD_TEST_PASSPHRASE", "hunter2")
        .output()
        .unwrap();
    assert_eq!(passphrase.status.code(), Some(1));
    assert!(text(&passphrase.stderr).contains("--key-file"), "{}", text(&passphrase.stderr));
}

/// `credshard watch` prints committed changes and, with a position file, resumes where it
/// stopped: a restarted watcher misses nothing and repeats nothing.
#[test]
fn watch_prints_changes_and_resumes_from_its_position_file() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("data"), &[]);
    let position = dir.path().join("watch.position");
    let watch = |count: &str| {
        Command::new(BINARY)
            .args(["watch", "--owner", "w", "--count", count, "--position-file"])
            .arg(&position)
            .env("CREDSHARD_ADDR", &served.address)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Bounded: a watcher that never gets its changes is killed rather than hanging the test.
    let finish = |child: Child| {
        let id = child.id();
        let guard = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(30));
            // SAFETY: kill(2) only sends a signal to a process this test started.
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
        });
        let output = child.wait_with_output().unwrap();
        drop(guard);
        output
    };
    let first = watch("2");
    // Wait until it is subscribed, so that the writes below are changes it must see.
    let mut polls = 0;
    while !text(&served.run(&["stats"], b"").stdout).contains("watchers_open 1") {
        polls += 1;
        assert!(polls < 500, "the watcher never subscribed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    served.run(&["put", "w/1", "--owner", "w", "--scope", "s"], b"one");
    served.run(&["put", "other", "--owner", "x", "--scope", "s"], b"skip");
    served.run(&["put", "w/2", "--owner", "w", "--scope", "s"], b"two");
    let output = finish(first);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<String> = text(&output.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains(" put w/1 version 1 ") && lines[0].ends_with("owner w scope s"), "{lines:?}");
    assert!(lines[1].contains(" put w/2 version 1 "), "{lines:?}");
    assert!(!text(&output.stdout).contains("one") && !text(&output.stdout).contains("two"), "never a secret");

    // While no watcher runs: a change it must get on resuming, and only that one.
    served.run(&["put", "w/1", "--owner", "w", "--scope", "s"], b"three");
    let output = finish(watch("1"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!text(&output.stderr).contains("could not resume"), "{}", text(&output.stderr));
    let resumed = text(&output.stdout);
    assert!(resumed.contains(" put w/1 version 2 ") && resumed.lines().count() == 1, "{resumed}");
}
