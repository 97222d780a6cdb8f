//! Start-up refusals with the real binary: a server that cannot run safely exits at once with
//! a clear error and a non-zero status, and never serves.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{ProcessDirs, ServeProcess, BINARY};
use common::put;
use credshard_protocol::{Client, Status};

/// Runs `credshard serve` on port 0 with `args` and waits (30 s at most) for it to exit; returns
/// whether it succeeded and what it wrote to stderr.
fn serve_until_exit(dirs: &ProcessDirs, args: &[&str]) -> (bool, String) {
    let stderr_path = dirs.dir.path().join("serve.stderr");
    let mut child = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dirs.data_dir)
        .arg("--key-file")
        .arg(&dirs.key)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "credshard serve neither served nor exited: {}",
                std::fs::read_to_string(&stderr_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), std::fs::read_to_string(&stderr_path).unwrap())
}

#[test]
fn an_executor_that_fails_before_listening_stops_the_server_with_an_error() {
    let dirs = ProcessDirs::new();
    // Each executor opens <data-dir>/audit/shard-N.jsonl before it listens: a directory where
    // shard 0's file belongs makes executor 0 fail there, while executor 1 goes on to wait for
    // the address executor 0 would have bound.
    std::fs::create_dir_all(dirs.data_dir.join("audit").join("shard-0.jsonl")).unwrap();
    let (succeeded, stderr) = serve_until_exit(&dirs, &["--shards", "2"]);
    assert!(!succeeded, "{stderr}");
    assert!(stderr.contains("audit log"), "the error names what failed: {stderr}");
}

#[test]
fn a_data_dir_whose_key_ring_is_gone_is_refused_unless_told_to_start_a_new_one() {
    let dirs = ProcessDirs::new();
    {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &[], |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        client.put(&put("kept", b"old secret")).unwrap();
        assert!(server.stop().success());
    }
    std::fs::remove_file(dirs.data_dir.join("keyring")).unwrap();
    let (succeeded, stderr) = serve_until_exit(&dirs, &[]);
    assert!(!succeeded && stderr.contains("no key ring") && stderr.contains("--create-keyring"), "{stderr}");
    assert!(!dirs.data_dir.join("keyring").exists(), "nothing was created");

    // Told to, it starts over: the old secret stays unreadable, new ones work.
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--create-keyring"], |_| {});
    let mut client = Client::connect(server.address.as_str()).unwrap();
    assert_eq!(client.get("kept").unwrap_err().status(), Some(Status::Internal));
    client.put(&put("new", b"new secret")).unwrap();
    assert_eq!(client.get("new").unwrap().secret.expose(), b"new secret");
}

#[test]
fn limits_that_would_let_a_reply_overflow_its_frame_are_refused_and_large_batches_stay_safe() {
    let dirs = ProcessDirs::new();
    let big = ["--secret-bytes-max", "4400000", "--frame-bytes-max", "8000000"];
    let (succeeded, stderr) = serve_until_exit(&dirs, &big);
    assert!(!succeeded && stderr.contains("--batch-reply-bytes-max"), "{stderr}");
    let (succeeded, stderr) = serve_until_exit(&dirs, &["--frame-bytes-max", "300000000"]);
    assert!(!succeeded && stderr.contains("--frame-bytes-max must be at most"), "{stderr}");

    // At the largest secrets these limits allow, a BATCH_GET of one id 1000 times (4.4 GB
    // asked for, more than a frame length can say) is answered, capped, and the server goes on.
    let args = [&big[..], &["--batch-reply-bytes-max", "9000000"]].concat();
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut client = Client::connect(server.address.as_str()).unwrap();
    let secret = vec![b'z'; 4_400_000];
    client.put(&put("huge", &secret)).unwrap();
    let results = client.batch_get(&vec!["huge"; 1000]).unwrap();
    let served = results.iter().filter(|result| result.is_ok()).count();
    assert!((1..=2).contains(&served), "{served}");
    assert_eq!(results.len(), 1000);
    assert_eq!(&client.ping(b"alive").unwrap()[..], b"alive");
}

#[test]
fn json_logs_are_one_object_per_line_without_secrets() {
    let dirs = ProcessDirs::new();
    let stderr_path = dirs.dir.path().join("json.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--log-format", "json"], |command| {
        command.stderr(stderr);
    });
    let secret = b"json-log-secret-7d1f";
    let mut client = Client::connect(server.address.as_str()).unwrap();
    client.put(&put("logged/id", secret)).unwrap();
    assert_eq!(client.get("logged/id").unwrap().secret.expose(), secret);
    drop(client);
    let address = server.address.clone();
    let status = server.stop();
    assert!(status.success(), "{status}");
    let logged = std::fs::read_to_string(&stderr_path).unwrap();
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect();
    let listening = lines
        .iter()
        .find(|line| line["fields"]["message"] == "credshard listening")
        .unwrap_or_else(|| panic!("no start-up line in {logged}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["address"].as_str(), Some(address.as_str()));
    assert!(lines.iter().all(|line| line["timestamp"].is_string() && line["target"].is_string()));
    assert!(!logged.contains("json-log-secret"), "a secret in the log");
    assert!(!logged.contains("logged/id"), "requests are not logged (the audit log records them)");
}

#[test]
fn serve_reads_a_config_file_and_config_check_shows_it() {
    let dirs = ProcessDirs::new();
    let file = dirs.dir.path().join("credshard.toml");
    std::fs::write(&file, "shards = 1\nmax-versions = 2\nsweep_interval_ms = 250\n").unwrap();
    let server =
        ServeProcess::start(&dirs.data_dir, &dirs.key, &["--config", file.to_str().unwrap()], |_| {});
    let mut client = Client::connect(server.address.as_str()).unwrap();
    assert_eq!(client.stats().unwrap().get("shards"), Some(1), "shards from the file");
    for secret in [&b"one"[..], b"two", b"three"] {
        client.put(&put("kept", secret)).unwrap();
    }
    let versions = client.get_meta("kept").unwrap().versions;
    assert_eq!(versions.len(), 2, "max-versions from the file");
    drop(server);

    let checked = Command::new(BINARY)
        .args(["config", "check"])
        .arg(&file)
        .env_remove("CREDSHARD_SHARDS")
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let shown = String::from_utf8(checked.stdout).unwrap();
    assert!(shown.contains("shards = 1  # file") && shown.contains("max-versions = 2  # file"), "{shown}");
    assert!(shown.contains("listen = \"127.0.0.1:7373\"  # default"), "{shown}");
    std::fs::write(&file, "shards = 1\nunknown = 3\n").unwrap();
    let refused = Command::new(BINARY).args(["config", "check"]).arg(&file).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown setting \"unknown\""));
}
