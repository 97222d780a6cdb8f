//! Both rotations of the key hierarchy, with the real binary: REKEY (every data key rewrapped
//! under a new master key; afterwards the old master key is refused at start) and ROTATE_KEY
//! (a new data key; every record re-encrypted in the background, also when the server is
//! killed mid-way and restarted; the old key dropped from the ring once nothing uses it).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{ProcessDirs, ServeProcess, BINARY};
use common::put;
use credshard_engine::crypto::MasterKey;
use credshard_protocol::Client;

/// How long a test waits for the background work before it calls the server stuck.
const WATCHDOG: Duration = Duration::from_secs(120);

/// `versions` versions of each of `count` credentials; returns (id, secrets oldest first).
fn write_credentials(client: &mut Client, count: usize, versions: u64) -> Vec<(String, Vec<String>)> {
    let ids: Vec<String> = (0..count).map(|index| format!("svc-{index}/db")).collect();
    write_ids(client, &ids, versions)
}

fn write_ids(client: &mut Client, ids: &[String], versions: u64) -> Vec<(String, Vec<String>)> {
    ids.iter()
        .map(|id| {
            let secrets: Vec<String> = (1..=versions).map(|version| format!("pw-{id}-v{version}")).collect();
            for (version, secret) in (1..=versions).zip(&secrets) {
                assert_eq!(client.put(&put(id, secret.as_bytes())).unwrap(), version);
            }
            (id.clone(), secrets)
        })
        .collect()
}

/// Ids of which `counts[s]` land on shard `s`.
fn ids_per_shard(counts: &[usize]) -> Vec<String> {
    let mut left = counts.to_vec();
    let mut ids = Vec::new();
    let mut index = 0;
    while left.iter().any(|&count| count > 0) {
        let id = format!("cred-{index}");
        let shard = credshard_engine::data::keyspace::shard_for(&id, counts.len());
        if left[shard] > 0 {
            left[shard] -= 1;
            ids.push(id);
        }
        index += 1;
    }
    ids
}

/// Every version of every credential reads back with its secret; returns the key ids seen.
fn check_all(client: &mut Client, credentials: &[(String, Vec<String>)]) -> Vec<u32> {
    let mut key_ids = Vec::new();
    for (id, secrets) in credentials {
        for (version, secret) in (1..).zip(secrets) {
            let reply =
                client.get_version(id, version).unwrap_or_else(|error| panic!("{id} v{version}: {error}"));
            assert_eq!(reply.secret.expose(), secret.as_bytes(), "{id} v{version}");
            key_ids.push(reply.metadata.key_id);
        }
    }
    key_ids.sort_unstable();
    key_ids.dedup();
    key_ids
}

fn stat(client: &mut Client, name: &str) -> u64 {
    client.stats().unwrap().get(name).unwrap_or_else(|| panic!("STATS has no {name}"))
}

fn cli(args: &[&str], address: &str) -> String {
    let output = Command::new(BINARY)
        .args(args)
        .args(["--addr", address])
        .env_remove("CREDSHARD_TOKEN")
        .output()
        .expect("run the credshard CLI");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "credshard {args:?}: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn rekey_then_restart_with_the_new_key_reads_everything_and_the_old_key_is_refused() {
    let dirs = ProcessDirs::new();
    let new_key = dirs.dir.path().join("new-master.key");
    MasterKey::generate().write_file(&new_key).unwrap();
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--shards", "2"], |_| {});
    let mut client = Client::connect(&*server.address).unwrap();
    let mut credentials = write_credentials(&mut client, 60, 2);

    let printed = cli(&["rekey", "--new-key-file", new_key.to_str().unwrap()], &server.address);
    assert!(printed.contains("1 data keys rewrapped"), "{printed}");
    assert!(printed.contains("--key-file"), "it says how to restart: {printed}");
    // The server goes on serving, writes included.
    assert_eq!(check_all(&mut client, &credentials), vec![1]);
    let after = ("after-rekey".to_owned(), vec!["written after the rekey".to_owned()]);
    client.put(&put(&after.0, after.1[0].as_bytes())).unwrap();
    credentials.push(after);
    drop(client);
    assert!(server.stop().success());

    let stderr = dirs.dir.path().join("old-key.stderr");
    let refused =
        ServeProcess::try_start("127.0.0.1:0", &dirs.data_dir, &dirs.key, &["--shards", "2"], &stderr)
            .map(|_| ())
            .expect_err("the old master key no longer opens the key ring");
    assert!(refused.to_lowercase().contains("master key"), "{refused}");

    let server = ServeProcess::start(&dirs.data_dir, &new_key, &["--shards", "2"], |_| {});
    let mut client = Client::connect(&*server.address).unwrap();
    assert_eq!(check_all(&mut client, &credentials), vec![1], "the data keys themselves did not change");
    assert_eq!(stat(&mut client, "data_keys"), 1, "restarts do not add data keys");
    assert_eq!(stat(&mut client, "data_key_active"), 1);
}

#[test]
fn a_data_key_rotation_re_encrypts_every_record_and_survives_a_kill_mid_way() {
    let dirs = ProcessDirs::new();
    // Slow enough (100 credentials a second per shard) to be killed mid-way; shard 1 holds few
    // credentials and is done long before shard 0, whose records must keep the old key in the
    // ring until it is done too.
    let args = ["--shards", "2", "--rewrap-rate", "100"];
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut client = Client::connect(&*server.address).unwrap();
    let mut credentials = write_ids(&mut client, &ids_per_shard(&[400, 20]), 3);
    assert_eq!(check_all(&mut client, &credentials[..20]), vec![1]);

    let reply = client.rotate_key().unwrap();
    assert_eq!((reply.key_id, reply.data_keys), (2, 2));
    // New writes use the new key at once.
    client.put(&put("after-rotation", b"fresh")).unwrap();
    assert_eq!(client.get("after-rotation").unwrap().metadata.key_id, 2);
    credentials.push(("after-rotation".to_owned(), vec!["fresh".to_owned()]));
    let started = Instant::now();
    while stat(&mut client, "records_rewrapped") < 150 {
        assert!(started.elapsed() < WATCHDOG, "the re-encryption does not progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(stat(&mut client, "data_keys_retiring"), 1, "killed mid-way, not after");
    drop(client);
    drop(server); // SIGKILL

    // The restarted server still holds the old key, and finishes the job.
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut client = Client::connect(&*server.address).unwrap();
    assert_eq!(stat(&mut client, "data_key_active"), 2, "the active key survives the restart");
    let started = Instant::now();
    while stat(&mut client, "data_keys_retiring") > 0 {
        assert!(started.elapsed() < WATCHDOG, "the re-encryption did not finish after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stat(&mut client, "data_keys"), 1);
    assert_eq!(check_all(&mut client, &credentials), vec![2], "no record is left on the old key");
    drop(client);
    assert!(server.stop().success());

    // The ring file no longer has key 1, and nothing needs it.
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--shards", "2"], |_| {});
    let mut client = Client::connect(&*server.address).unwrap();
    assert_eq!((stat(&mut client, "data_keys"), stat(&mut client, "data_key_active")), (1, 2));
    assert_eq!(check_all(&mut client, &credentials), vec![2]);
}

#[test]
fn rotate_key_from_the_cli_waits_until_no_record_is_on_the_old_key() {
    let dirs = ProcessDirs::new();
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--shards", "2"], |_| {});
    let mut client = Client::connect(&*server.address).unwrap();
    let credentials = write_credentials(&mut client, 100, 2);
    let printed = cli(&["rotate-key", "--wait"], &server.address);
    assert!(printed.contains("data key 2 is now active"), "{printed}");
    assert!(printed.contains("every record is on data key 2"), "{printed}");
    assert_eq!(stat(&mut client, "data_keys"), 1);
    assert_eq!(stat(&mut client, "records_rewrapped"), 200);
    assert_eq!(check_all(&mut client, &credentials), vec![2]);
}
