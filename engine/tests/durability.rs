//! Durability with a real data dir: restarts bring back every credential exactly (versions,
//! rotation grace, expiry, deletes), a changed shard count reshards, a torn log tail is cut,
//! corruption in the middle of a log stops start-up, and nothing in the data dir holds a
//! plaintext secret.

mod common;

use credshard_engine::crypto::{KeySource, MasterKey};
use credshard_engine::{Server, ServerConfig, ServerHandle};
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{Client, Expiry, Status, VersionState};

use common::process::{ProcessDirs, ServeProcess};
use common::{ids_on_every_shard, put, walk};

fn config(data_dir: &std::path::Path, shards: usize) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        shards: Some(shards),
        ..ServerConfig::default()
    }
}

fn start(data_dir: &std::path::Path, shards: usize, key: &[u8; 32]) -> ServerHandle {
    Server::start(&config(data_dir, shards), KeySource::Key(MasterKey::from_bytes(*key)))
        .expect("server starts")
}

#[test]
fn a_restart_brings_back_versions_rotations_expiries_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let key = [7u8; 32];
    let ids = ids_on_every_shard(2, 3);
    {
        let server = start(dir.path(), 2, &key);
        let mut client = Client::connect(server.local_address()).unwrap();
        for id in &ids {
            for version in 1..=3u64 {
                client.put(&put(id, format!("{id} v{version}").as_bytes())).unwrap();
            }
        }
        let rotate = RotateRequest {
            id: &ids[0],
            expected_version: None,
            grace_period_seconds: Some(3600),
            secret: b"rotated",
        };
        assert_eq!(client.rotate(&rotate).unwrap(), 4);
        let retire = RotateRequest {
            id: &ids[1],
            expected_version: None,
            grace_period_seconds: Some(0),
            secret: b"retiring",
        };
        assert_eq!(client.rotate(&retire).unwrap(), 4);
        client.delete(&ids[2], None).unwrap();
        let mut expiring = put("expires-later", b"ttl");
        expiring.expiry = Expiry::TtlMs(3_600_000);
        client.put(&expiring).unwrap();
        let mut expired = put("expired-already", b"gone");
        expired.expiry = Expiry::AtUnixMs(1);
        client.put(&expired).unwrap();
        server.join().unwrap();
    }

    let server = start(dir.path(), 2, &key);
    let mut client = Client::connect(server.local_address()).unwrap();
    assert_eq!(client.get(&ids[0]).unwrap().secret.expose(), b"rotated");
    assert_eq!(client.get_version(&ids[0], 3).unwrap().secret.expose(), format!("{} v3", ids[0]).as_bytes());
    let states: Vec<_> =
        client.get_meta(&ids[0]).unwrap().versions.iter().map(|info| (info.version, info.state)).collect();
    assert_eq!(
        states,
        vec![
            (4, VersionState::Current),
            (3, VersionState::PreviousInGrace),
            (2, VersionState::Superseded),
            (1, VersionState::Superseded)
        ]
    );
    assert_eq!(client.get_version(&ids[1], 3).unwrap_err().status(), Some(Status::Retired));
    assert_eq!(client.get(&ids[2]).unwrap_err().status(), Some(Status::NotFound), "deletes survive");
    for id in &ids[3..] {
        let reply = client.get(id).unwrap();
        assert_eq!((reply.metadata.version, reply.secret.expose()), (3, format!("{id} v3").as_bytes()));
    }
    let later = client.get("expires-later").unwrap().metadata.expires_at_ms.unwrap();
    assert!(later > credshard_engine::time::now_ms());
    assert_eq!(client.get("expired-already").unwrap_err().status(), Some(Status::Expired));
    // New writes continue the version numbers.
    assert_eq!(client.put(&put(&ids[0], b"after restart")).unwrap(), 5);
    server.join().unwrap();
}

#[test]
fn a_changed_shard_count_reshards_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = [9u8; 32];
    let ids: Vec<String> = (0..300).map(|index| format!("reshard-{index}")).collect();
    {
        let server = start(dir.path(), 2, &key);
        let mut client = Client::connect(server.local_address()).unwrap();
        for id in &ids {
            client.put(&put(id, id.as_bytes())).unwrap();
            client.put(&put(id, id.as_bytes())).unwrap();
        }
        server.join().unwrap();
    }
    for shards in [3, 1, 2] {
        let server = start(dir.path(), shards, &key);
        assert_eq!(server.store().shard_count(), shards);
        let mut client = Client::connect(server.local_address()).unwrap();
        for id in &ids {
            let reply = client.get(id).unwrap();
            assert_eq!(
                (reply.metadata.version, reply.secret.expose()),
                (2, id.as_bytes()),
                "{id} with {shards} shards"
            );
            assert_eq!(client.get_version(id, 1).unwrap().secret.expose(), id.as_bytes());
        }
        let manifest = std::fs::read_to_string(dir.path().join("manifest")).unwrap();
        assert!(manifest.contains(&format!("shards {shards}")), "{manifest}");
        server.join().unwrap();
    }
}

fn log_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(data_dir).unwrap() {
        let path = entry.unwrap().path();
        // The write-ahead logs live in wal-<generation>/; audit/ holds the audit log.
        if path.is_dir() && path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("wal-")) {
            for log in std::fs::read_dir(&path).unwrap() {
                files.push(log.unwrap().path());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_torn_tail_is_cut_and_mid_log_corruption_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let key = [3u8; 32];
    {
        let server = start(dir.path(), 1, &key);
        let mut client = Client::connect(server.local_address()).unwrap();
        for index in 0..20 {
            client.put(&put(&format!("torn-{index}"), b"value")).unwrap();
        }
        server.join().unwrap();
    }
    let logs = log_files(dir.path());
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    let original = read_batches(log);

    // Cut into the last batch: the last write (one batch, acknowledged one by one) is lost,
    // the rest survive, and the file is truncated.
    std::fs::write(log, &original[..original.len() - 7]).unwrap();
    {
        let server = start(dir.path(), 1, &key);
        assert_eq!(server.store().len(), 19);
        let mut client = Client::connect(server.local_address()).unwrap();
        assert_eq!(client.get("torn-19").unwrap_err().status(), Some(Status::NotFound));
        assert!(client.get("torn-18").is_ok());
        server.join().unwrap();
    }
    let truncated = std::fs::read(log).unwrap();
    assert!(truncated.len() < original.len() - 7, "the torn batch was cut off");

    // Damage in the middle of the log: refuse to start, naming the file and offset.
    let mut damaged = truncated.clone();
    damaged[truncated.len() / 2] ^= 0x55;
    std::fs::write(log, &damaged).unwrap();
    let error = Server::start(&config(dir.path(), 1), KeySource::Key(MasterKey::from_bytes(key)))
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        message.contains("corrupt at offset") && message.contains(&log.display().to_string()),
        "{message}"
    );
}

/// The start offset of each batch in a log file (from the batch headers' payload lengths), up
/// to the zeros a segment written with `--fsync always` is preallocated with.
fn batch_offsets(log: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset + 16 <= log.len() && log[offset..offset + 4] == *b"CSWB" {
        offsets.push(offset);
        offset += 16 + u32::from_le_bytes(log[offset + 4..offset + 8].try_into().unwrap()) as usize;
    }
    offsets
}

/// A log file's batches, without the preallocated zeros after them.
fn read_batches(log: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(log).unwrap();
    let end = batch_offsets(&bytes).last().map_or(0, |&last| {
        last + 16 + u32::from_le_bytes(bytes[last + 4..last + 8].try_into().unwrap()) as usize
    });
    assert!(bytes[end..].iter().all(|&byte| byte == 0), "only zeros follow the last batch");
    bytes.truncate(end);
    bytes
}

#[test]
fn damage_inside_the_last_batch_is_refused_not_dropped_as_a_torn_write() {
    let dirs = ProcessDirs::new();
    let stderr = dirs.dir.path().join("serve.stderr");
    {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--shards", "1"], |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        for index in 0..10 {
            client.put(&put(&format!("acked-{index}"), b"value")).unwrap();
        }
    } // SIGKILL: every write above was acknowledged, so each is in a whole, synced batch.
    let logs = log_files(&dirs.data_dir);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = &logs[0];
    let original = read_batches(log);
    let last_batch = *batch_offsets(&original).last().unwrap();

    // One flipped bit in the last batch's payload: an acknowledged write damaged at rest, with
    // the zeros the segment is preallocated with still after it.
    let mut damaged = std::fs::read(log).unwrap();
    assert!(damaged.len() > original.len(), "the segment is preallocated past its last batch");
    damaged[last_batch + 16 + 8] ^= 0x04;
    std::fs::write(log, &damaged).unwrap();
    let refused =
        ServeProcess::try_start("127.0.0.1:0", &dirs.data_dir, &dirs.key, &["--shards", "1"], &stderr)
            .err()
            .expect("a damaged whole batch must stop start-up");
    assert!(
        refused.contains("not a torn write") && refused.contains(&log.display().to_string()),
        "{refused}"
    );
    assert_eq!(std::fs::read(log).unwrap(), damaged, "nothing was truncated or rewritten");

    // The same batch cut short is what a crash during its write leaves (a write that was then
    // never acknowledged): it is cut off, and the server starts with everything before it.
    std::fs::write(log, &original[..original.len() - 3]).unwrap();
    let server =
        ServeProcess::try_start("127.0.0.1:0", &dirs.data_dir, &dirs.key, &["--shards", "1"], &stderr)
            .expect("a torn tail is cut and the server starts");
    let mut client = Client::connect(server.address.as_str()).unwrap();
    for index in 0..9 {
        assert!(client.get(&format!("acked-{index}")).is_ok(), "acked-{index}");
    }
    assert_eq!(client.get("acked-9").unwrap_err().status(), Some(Status::NotFound));
}

#[test]
fn writes_after_an_expiry_sweep_survive_a_restart() {
    let dirs = ProcessDirs::new();
    let args = ["--shards", "2", "--sweep-interval-ms", "20"];
    let ids = ids_on_every_shard(2, 2);
    {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        for id in &ids {
            for version in 1..=2 {
                let mut expiring = put(id, b"expiring");
                expiring.expiry = Expiry::TtlMs(150);
                assert_eq!(client.put(&expiring).unwrap(), version);
            }
        }
        // Expired, then swept: the ids are gone (NOT_FOUND, not EXPIRED).
        for id in &ids {
            let mut polls = 0;
            while client.get(id).err().and_then(|error| error.status()) != Some(Status::NotFound) {
                polls += 1;
                assert!(polls < 1_000, "{id} was never swept");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // Written again, after the swept versions (a purged id keeps its last version), and
        // acknowledged.
        for id in &ids {
            assert_eq!(client.put(&put(id, format!("{id} new 1").as_bytes())).unwrap(), 3);
            assert_eq!(client.put(&put(id, format!("{id} new 2").as_bytes())).unwrap(), 4);
        }
    } // SIGKILL
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut client = Client::connect(server.address.as_str()).unwrap();
    for id in &ids {
        let reply = client.get(id).unwrap_or_else(|error| panic!("{id} after the restart: {error}"));
        assert_eq!((reply.metadata.version, reply.secret.expose()), (4, format!("{id} new 2").as_bytes()));
        assert_eq!(client.get_version(id, 3).unwrap().secret.expose(), format!("{id} new 1").as_bytes());
        assert_eq!(
            client.get_version(id, 2).unwrap_err().status(),
            Some(Status::NotFound),
            "history dropped"
        );
        assert_eq!(reply.metadata.expires_at_ms, None, "the new versions do not expire");
        // And after another restart, past a purge the snapshot or log replays again.
        let mut again = put(id, b"after");
        again.expected_version = Some(4);
        assert_eq!(client.put(&again).unwrap(), 5);
    }
}

#[test]
fn no_plaintext_secret_anywhere_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"DATA-DIR-CANARY-5b2e7f-plaintext";
    {
        let server = start(dir.path(), 2, &[1u8; 32]);
        let mut client = Client::connect(server.local_address()).unwrap();
        for id in ids_on_every_shard(2, 10) {
            client.put(&put(&id, secret)).unwrap();
            let rotate =
                RotateRequest { id: &id, expected_version: None, grace_period_seconds: None, secret };
            client.rotate(&rotate).unwrap();
        }
        server.join().unwrap();
    }
    let hex: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    let base64 = base64_standard(secret);
    let mut searched = 0;
    for path in walk(dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        for needle in [&secret[..], hex.as_bytes(), base64.as_bytes(), &base64.as_bytes()[..base64.len() - 4]]
        {
            assert!(
                !bytes.windows(needle.len()).any(|window| window == needle),
                "plaintext in {}",
                path.display()
            );
        }
        searched += bytes.len();
    }
    assert!(searched > 20 * secret.len(), "the logs hold the (encrypted) credentials");
}

fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |word, (index, &byte)| word | (byte as u32) << (16 - 8 * index));
        for index in 0..=chunk.len() {
            text.push(ALPHABET[(word >> (18 - 6 * index) & 63) as usize] as char);
        }
    }
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

#[test]
fn snapshots_compact_the_log_while_serving_and_restore_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let key = [5u8; 32];
    let mut config = config(dir.path(), 2);
    config.compact_log_bytes = 16 * 1024;
    let ids = ids_on_every_shard(2, 10);
    let secret = |id: &str, version: u64| format!("{id} secret {version} {}", "x".repeat(200));
    {
        let server = Server::start(&config, KeySource::Key(MasterKey::from_bytes(key))).unwrap();
        let mut client = Client::connect(server.local_address()).unwrap();
        for version in 1..=30u64 {
            for id in &ids {
                assert_eq!(client.put(&put(id, secret(id, version).as_bytes())).unwrap(), version);
                // Reads go on while snapshots are written.
                assert!(client.get(id).is_ok());
            }
        }
        client.delete(&ids[0], None).unwrap();
        let stats = client.stats().unwrap();
        assert!(stats.get("snapshots_written").unwrap() > 0, "{stats:?}");
        let batches = stats.get("log_batches_committed").unwrap();
        assert!(batches > 0 && batches <= stats.get("writes_total").unwrap());
        server.join().unwrap();
    }
    let files = log_files(dir.path());
    assert!(
        files.iter().any(|path| path.extension().is_some_and(|extension| extension == "snapshot")),
        "{files:?}"
    );
    let log_bytes: u64 = files.iter().map(|path| read_batches(path).len() as u64).sum();
    assert!(log_bytes < 20 * 30 * 300, "older segments were removed: {log_bytes} bytes in {files:?}");

    let server = Server::start(&config, KeySource::Key(MasterKey::from_bytes(key))).unwrap();
    let mut client = Client::connect(server.local_address()).unwrap();
    assert_eq!(client.get(&ids[0]).unwrap_err().status(), Some(Status::NotFound));
    for id in &ids[1..] {
        let reply = client.get(id).unwrap();
        assert_eq!((reply.metadata.version, reply.secret.expose()), (30, secret(id, 30).as_bytes()));
        let versions: Vec<u64> =
            client.get_meta(id).unwrap().versions.iter().map(|info| info.version).collect();
        assert_eq!(versions, (21..=30).rev().collect::<Vec<_>>(), "kept versions restored from the snapshot");
        assert_eq!(client.get_version(id, 21).unwrap().secret.expose(), secret(id, 21).as_bytes());
    }
    server.join().unwrap();
}

#[test]
fn snapshots_write_at_most_about_twice_what_the_log_does() {
    // Kept versions make a snapshot far larger than --compact-log-bytes: each one must wait
    // for the log to outgrow the last, or every 16 KiB of writes would rewrite all of them.
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1);
    config.compact_log_bytes = 16 * 1024;
    config.fsync = credshard_engine::config::FsyncMode::Never;
    let server = Server::start(&config, KeySource::Key(MasterKey::from_bytes([6u8; 32]))).unwrap();
    let mut client = Client::connect(server.local_address()).unwrap();
    let ids: Vec<String> = (0..20).map(|index| format!("kept-{index}")).collect();
    for version in 1..=80u64 {
        for id in &ids {
            let secret = format!("{id} {version} {}", "y".repeat(200));
            assert_eq!(client.put(&put(id, secret.as_bytes())).unwrap(), version);
        }
    }
    let stats = client.stats().unwrap();
    let (snapshots, snapshot_bytes) =
        (stats.get("snapshots_written").unwrap(), stats.get("snapshot_bytes_written").unwrap());
    let log_bytes = stats.get("log_bytes_written").unwrap();
    assert!(snapshots >= 2, "{stats:?}");
    assert!(snapshot_bytes <= 2 * log_bytes, "snapshots wrote {snapshot_bytes} bytes for {log_bytes} of log");
    server.join().unwrap();
}

/// Deleted, undeleted, destroyed and purged credentials come back as they were after a
/// SIGKILL, from the log and (with a small compaction threshold) from snapshots; a recovery
/// window that ends purges, and a purged id's versions go on after a restart.
#[test]
fn deletions_destroyed_versions_and_purges_survive_sigkill() {
    let dirs = ProcessDirs::new();
    let args = ["--shards", "2", "--sweep-interval-ms", "20", "--compact-log-bytes", "8192"];
    let ids = ids_on_every_shard(2, 5);
    let [deleted, destroyed, windowed, purged, undeleted] = [0, 1, 2, 3, 4].map(|index| &ids[index]);
    let started_ms = credshard_engine::time::now_ms();
    {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        for id in &ids {
            for version in 1..=2u64 {
                assert_eq!(client.put(&put(id, format!("{id} v{version}").as_bytes())).unwrap(), version);
            }
        }
        assert_eq!(client.delete(deleted, None).unwrap().version, 2);
        assert_eq!(client.destroy(destroyed, 1).unwrap(), 1);
        let short = DeleteRequest { recovery_window_seconds: Some(1), ..DeleteRequest::new(windowed, None) };
        assert_eq!(client.delete_with(&short).unwrap().version, 2);
        let purge = DeleteRequest { purge: true, ..DeleteRequest::new(purged, None) };
        assert_eq!(client.delete_with(&purge).unwrap().version, 2);
        assert_eq!(client.delete(undeleted, None).unwrap().version, 2);
        assert_eq!(client.undelete(undeleted).unwrap(), 2);
        // Enough other writes for snapshots to be taken (and replayed) past these.
        common::write_past_a_snapshot(&mut client, &dirs.data_dir);
    } // SIGKILL
    for restart in 0..2 {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        // Deleted: unreadable, and says until when it can be restored.
        let error = client.get(deleted).unwrap_err();
        let until = error.recoverable_until_ms().unwrap_or_else(|| panic!("restart {restart}: {error}"));
        assert!(until >= started_ms + 7 * 24 * 3600 * 1000, "the default window, 7 days");
        assert!(client.list(&list_all()).unwrap().items.iter().all(|item| &item.id != deleted));
        // Destroyed: metadata only.
        let meta = client.get_meta(destroyed).unwrap();
        let states: Vec<_> = meta.versions.iter().map(|info| (info.version, info.state)).collect();
        assert_eq!(states, vec![(2, VersionState::Current), (1, VersionState::Destroyed)]);
        let gone = client.get_version(destroyed, 1).unwrap_err();
        assert_eq!((gone.status(), gone.recoverable_until_ms()), (Some(Status::NotFound), None));
        assert_eq!(client.get(destroyed).unwrap().secret.expose(), format!("{destroyed} v2").as_bytes());
        // Undeleted: served again, both versions.
        assert_eq!(
            client.get_version(undeleted, 1).unwrap().secret.expose(),
            format!("{undeleted} v1").as_bytes()
        );
        // Purged, and the short window's end: gone, with no recovery left.
        let gone: &[&String] = if restart == 0 { &[purged, windowed] } else { &[windowed] };
        for &id in gone {
            let mut polls = 0;
            while client.get(id).unwrap_err().recoverable_until_ms().is_some() {
                polls += 1;
                assert!(polls < 500, "{id} was never purged");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(client.undelete(id).unwrap_err().status(), Some(Status::NotFound));
        }
        if restart == 0 {
            // Written again, the versions go on from the purged ones; that too is logged.
            assert_eq!(client.put(&put(purged, b"third")).unwrap(), 3);
        } else {
            assert_eq!(client.get(purged).unwrap().metadata.version, 3);
            assert_eq!(client.undelete(deleted).unwrap(), 2);
            assert_eq!(client.get(deleted).unwrap().secret.expose(), format!("{deleted} v2").as_bytes());
        }
    }
}

fn list_all() -> credshard_protocol::op::list::ListRequest<'static> {
    credshard_protocol::op::list::ListRequest { owner: "team-a", scope: "", limit: 100, cursor: &[] }
}
