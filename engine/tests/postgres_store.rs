//! Several credshard instances on one real PostgreSQL database (`--store`): a write on one is
//! read on another, a compare-and-set race across instances has one winner per version, a
//! restarted instance reads everything back, and neither the database nor the data dir holds
//! a secret in the clear.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::postgres::{eventually, instance_with};
use common::{purging, put, TestServer};
use credshard_engine::crypto::MasterKey;
use credshard_engine::ServerConfig;
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{Client, Status};

fn instance(url: &str, key: &[u8; 32]) -> TestServer {
    instance_following_every(url, key, 10)
}

/// An instance that reads the change log every `follow_interval_ms`.
fn instance_following_every(url: &str, key: &[u8; 32], follow_interval_ms: u64) -> TestServer {
    instance_with(url, key, |config| config.follow_interval_ms = follow_interval_ms)
}

fn secret_of(client: &mut Client, id: &str) -> Option<Vec<u8>> {
    client.get(id).ok().map(|reply| reply.secret.expose().to_vec())
}

#[test]
fn a_write_on_one_instance_is_read_on_the_other() {
    let Some(database) = common::postgres::database("two_instances") else { return };
    let key = *MasterKey::generate().bytes();
    let (first, second) = (instance(&database.url(), &key), instance(&database.url(), &key));
    let (mut on_first, mut on_second) = (first.client(), second.client());

    let ids: Vec<String> = (0..20).map(|index| format!("shared/{index}")).collect();
    for id in &ids {
        assert_eq!(on_first.put(&put(id, id.as_bytes())).unwrap(), 1);
        // Read-your-writes on the instance that acknowledged it, at once.
        assert_eq!(secret_of(&mut on_first, id).as_deref(), Some(id.as_bytes()));
    }
    for id in &ids {
        eventually(&mut on_second, |client| secret_of(client, id).as_deref() == Some(id.as_bytes()));
    }
    // The other way round, with a rotation.
    let rotate =
        RotateRequest { id: &ids[0], expected_version: Some(1), grace_period_seconds: None, secret: b"v2" };
    assert_eq!(on_second.rotate(&rotate).unwrap(), 2);
    eventually(&mut on_first, |client| secret_of(client, &ids[0]).as_deref() == Some(&b"v2"[..]));
    assert_eq!(on_first.get_version(&ids[0], 1).unwrap().secret.expose(), ids[0].as_bytes(), "v1 in grace");
    // A compare-and-set against what the other instance wrote is judged by the database.
    let stale = credshard_protocol::PutRequest { expected_version: Some(1), ..put(&ids[1], b"x") };
    let _ = on_first.get(&ids[1]);
    assert_eq!(on_second.put(&put(&ids[1], b"v2 from second")).unwrap(), 2);
    let refused = on_first.put(&stale).unwrap_err();
    assert_eq!(refused.status(), Some(Status::VersionConflict), "{refused}");
    // A delete on one is a delete on the other.
    on_first.delete(&ids[2], None).unwrap();
    eventually(&mut on_second, |client| {
        client.get(&ids[2]).err().and_then(|error| error.status()) == Some(Status::NotFound)
    });
    // STATS tells the database's part.
    let (first_stats, second_stats) = (on_first.stats().unwrap(), on_second.stats().unwrap());
    assert_eq!(first_stats.get("db_writes_committed"), Some(ids.len() as u64 + 1), "20 PUTs and a DELETE");
    assert!(first_stats.get("db_rounds").unwrap() >= 1 && first_stats.get("db_round_us").unwrap() > 0);
    // The refused CAS PUT was judged against a stale view (1) or, had A followed B's write
    // already, refused before the database (0).
    assert!(first_stats.get("db_writes_stale").unwrap() <= 1);
    assert!(second_stats.get("db_credentials_reread").unwrap() >= ids.len() as u64, "B re-read A's writes");
    assert!(first_stats.get("db_pool_connections").unwrap() >= 1);
}

#[test]
fn a_compare_and_set_race_across_three_instances_has_one_winner_per_version() {
    let Some(database) = common::postgres::database("cas_race") else { return };
    let key = *MasterKey::generate().bytes();
    // Followers that lag a second: each instance's view is mostly stale, so the database's
    // conditional writes, not the caches, decide the race.
    // The credential exists before the second instance starts, so both hold it from the start.
    let first = instance_following_every(&database.url(), &key, 1000);
    first.client().put(&put("contended", b"start")).unwrap();
    let instances = [
        first,
        instance_following_every(&database.url(), &key, 1000),
        instance_following_every(&database.url(), &key, 1000),
    ];
    let wins: Arc<Mutex<BTreeMap<u64, usize>>> = Arc::default();
    let stale_refusals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let racers: Vec<_> = instances
        .iter()
        .flat_map(|server| (0..2).map(move |racer| (server.address(), racer)))
        .map(|(address, racer)| {
            let (wins, stale_refusals) = (Arc::clone(&wins), Arc::clone(&stale_refusals));
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                for attempt in 0..30 {
                    let Ok(meta) = client.get_meta("contended") else { continue };
                    let secret = format!("{racer}.{attempt}");
                    let request = credshard_protocol::PutRequest {
                        expected_version: Some(meta.metadata.version),
                        ..put("contended", secret.as_bytes())
                    };
                    match client.put(&request) {
                        Ok(version) => *wins.lock().unwrap().entry(version).or_default() += 1,
                        Err(error) => {
                            assert!(
                                matches!(error.status(), Some(Status::VersionConflict | Status::Unavailable)),
                                "{error}"
                            );
                            stale_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for racer in racers {
        racer.join().unwrap();
    }
    let wins = wins.lock().unwrap();
    assert!(wins.values().all(|&count| count == 1), "one winner per version: {wins:?}");
    assert!(stale_refusals.load(std::sync::atomic::Ordering::Relaxed) > 0, "the instances really raced");
    let last = *wins.keys().last().expect("some compare-and-set won");
    assert_eq!(wins.len() as u64, last - 1, "every version from 2 to {last} won once: {wins:?}");
    let rows = database.query("SELECT version FROM credshard_credentials WHERE id = 'contended'");
    assert_eq!(rows[0].get::<_, i64>(0) as u64, last);
}

#[test]
fn a_restarted_instance_reads_everything_and_no_secret_is_stored_in_the_clear() {
    let Some(database) = common::postgres::database("restart_secret") else { return };
    let key = *MasterKey::generate().bytes();
    let secret = b"correct-horse-battery-staple-2f9c1e";
    let data_dir = {
        let first = instance(&database.url(), &key);
        let mut client = first.client();
        for index in 0..50 {
            client.put(&put(&format!("kept/{index}"), format!("value {index}").as_bytes())).unwrap();
        }
        client.put(&put("the-secret", secret)).unwrap();
        client.put(&put("the-secret", secret)).unwrap();
        common::walk(first.data_dir.path())
            .into_iter()
            .map(|path| std::fs::read(&path).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    for bytes in &data_dir {
        assert!(!bytes.windows(secret.len()).any(|window| window == secret), "a secret in the data dir");
    }
    let again = instance(&database.url(), &key);
    let mut client = again.client();
    for index in 0..50 {
        assert_eq!(
            client.get(&format!("kept/{index}")).unwrap().secret.expose(),
            format!("value {index}").as_bytes()
        );
    }
    assert_eq!(client.get_meta("the-secret").unwrap().metadata.version, 2);
    assert_eq!(client.put(&put("the-secret", b"third")).unwrap(), 3, "versions go on after a restart");
    // Pending, and the credentials around it deleted and purged: in every table there is.
    assert_eq!(client.stage(&put("the-secret", secret)).unwrap(), 4);
    client.delete("kept/0", None).unwrap();
    client.delete_with(&DeleteRequest { purge: true, ..DeleteRequest::new("kept/1", None) }).unwrap();

    // The database: raw, hex and base64 forms of the secret, in every table.
    let dump = database.query(
        "SELECT string_agg(encode(record, 'escape'), '') FROM credshard_versions
         UNION ALL SELECT string_agg(encode(ring, 'escape'), '') FROM credshard_keyring
         UNION ALL SELECT string_agg(id || owner || scope || encode(coalesce(pending, ''), 'escape')
                                     || encode(coalesce(policy, ''), 'escape'), '') FROM credshard_credentials
         UNION ALL SELECT string_agg(id || owner || scope, '') FROM credshard_changes
         UNION ALL SELECT string_agg(id, '') FROM credshard_purged",
    );
    let tables = database.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'credshard%'
           AND table_name NOT IN ('credshard_versions', 'credshard_keyring', 'credshard_credentials',
                                  'credshard_changes', 'credshard_purged', 'credshard_migrations')",
    );
    assert_eq!(tables[0].get::<_, i64>(0), 0, "a table this test does not search");
    let text: String = dump.iter().filter_map(|row| row.get::<_, Option<String>>(0)).collect();
    let forms = [
        String::from_utf8_lossy(secret).into_owned(),
        secret.iter().map(|byte| format!("{byte:02x}")).collect(),
        base64(secret),
    ];
    for form in &forms {
        assert!(!text.contains(form.as_str()), "the database holds the secret as {form}");
    }
    // A key that does not open the shared ring is refused at start.
    let wrong = TestServer::try_start_with_key(1, MasterKey::generate(), |config| {
        config.store = Some(database.url());
    });
    assert!(wrong.is_err(), "a wrong master key must be refused");
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let value =
            chunk.iter().fold(0u32, |value, &byte| value << 8 | u32::from(byte)) << (8 * (3 - chunk.len()));
        for index in 0..chunk.len() + 1 {
            out.push(ALPHABET[(value >> (18 - 6 * index) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn an_instance_cut_off_longer_than_the_change_log_is_kept_reads_everything_again() {
    let Some(database) = common::postgres::database("cut_off") else { return };
    let key = *MasterKey::generate().bytes();
    let retention = |config: &mut ServerConfig| config.change_log_retention_s = 2;
    let start = |url: String| {
        TestServer::try_start_with_key(1, MasterKey::from_bytes(key), move |config| {
            config.store = Some(url);
            retention(config);
        })
        .expect("an instance starts")
    };
    let writer = start(database.url());
    let mut on_writer = writer.client();
    on_writer.put(&put("will-change", b"before")).unwrap();
    on_writer.put(&put("will-go", b"here")).unwrap();
    let proxy = common::postgres::CuttableProxy::to(database.server_address());
    let cut_off = start(database.url_through(proxy.address));
    let mut on_cut_off = cut_off.client();
    assert_eq!(secret_of(&mut on_cut_off, "will-change").as_deref(), Some(&b"before"[..]));

    proxy.cut();
    on_writer.put(&put("will-change", b"after")).unwrap();
    on_writer.delete("will-go", None).unwrap();
    on_writer.put(&put("new", b"while cut off")).unwrap();
    // Longer than the retention: the writer's instance trims those changes meanwhile.
    std::thread::sleep(Duration::from_millis(2_600));
    let trimmed = database.query("SELECT count(*) FROM credshard_changes");
    assert_eq!(trimmed[0].get::<_, i64>(0), 0, "the change log was trimmed past the cut-off instance");
    assert_eq!(secret_of(&mut on_cut_off, "will-change").as_deref(), Some(&b"before"[..]), "stale, cut off");
    proxy.restore();
    eventually(&mut on_cut_off, |client| secret_of(client, "will-change").as_deref() == Some(&b"after"[..]));
    eventually(&mut on_cut_off, |client| secret_of(client, "new").as_deref() == Some(&b"while cut off"[..]));
    eventually(&mut on_cut_off, |client| {
        client.get("will-go").err().and_then(|error| error.status()) == Some(Status::NotFound)
    });
}

#[test]
fn a_data_key_rotated_on_one_instance_is_adopted_by_the_others() {
    let Some(database) = common::postgres::database("shared_rotation") else { return };
    let key = *MasterKey::generate().bytes();
    let (first, second) = (instance(&database.url(), &key), instance(&database.url(), &key));
    let (mut on_first, mut on_second) = (first.client(), second.client());
    on_second.put(&put("before", b"sealed with key 1")).unwrap();
    let rotated = on_first.rotate_key().unwrap();
    assert_eq!(rotated.key_id, 2);
    assert_eq!(on_first.stats().unwrap().get("data_key_active"), Some(2), "at once on the rotating one");
    // The other reads the ring again every second and adopts the new active key.
    let took = eventually(&mut on_second, |client| client.stats().unwrap().get("data_key_active") == Some(2));
    assert!(took < Duration::from_secs(5), "adopted in {took:?}");
    on_second.put(&put("after", b"sealed with key 2")).unwrap();
    for client in [&mut on_first, &mut on_second] {
        eventually(client, |client| secret_of(client, "after").as_deref() == Some(&b"sealed with key 2"[..]));
        assert_eq!(secret_of(client, "before").as_deref(), Some(&b"sealed with key 1"[..]));
    }
    // Rotations on both at once: each wins a key id of its own.
    let (first_address, second_address) = (first.address(), second.address());
    let racers = [first_address, second_address].map(|address| {
        std::thread::spawn(move || Client::connect(address).unwrap().rotate_key().unwrap().key_id)
    });
    let mut won: Vec<u32> = racers.into_iter().map(|racer| racer.join().unwrap()).collect();
    won.sort();
    assert_eq!(won, vec![3, 4]);
    // An instance started now opens the ring with every key and reads everything.
    let third = instance(&database.url(), &key);
    let mut on_third = third.client();
    assert_eq!(on_third.stats().unwrap().get("data_key_active"), Some(4));
    assert_eq!(
        on_third.stats().unwrap().get("data_keys"),
        Some(4),
        "retiring keys are kept in a shared ring"
    );
    assert_eq!(secret_of(&mut on_third, "before").as_deref(), Some(&b"sealed with key 1"[..]));
    assert_eq!(secret_of(&mut on_third, "after").as_deref(), Some(&b"sealed with key 2"[..]));
    // REKEY stays refused while the ring is shared.
    let refused = on_first.rekey(&credshard_protocol::op::keys::RekeyRequest::Key(&[7; 32])).unwrap_err();
    assert_eq!(refused.status(), Some(Status::Unavailable), "{refused}");
}

/// A follower re-reads only the versions above the one it holds, and still ends up holding
/// exactly what the writer holds: every kept version readable by number, the trimmed ones
/// gone. A credential purged and created again within one poll is read whole (what the
/// follower held of the old one must not stay), and its versions continue after the purged
/// ones.
#[test]
fn a_follower_reading_only_new_versions_holds_every_kept_version_as_the_writer_does() {
    let Some(database) = common::postgres::database("follow_newer") else { return };
    let key = *MasterKey::generate().bytes();
    let start = |follow_interval_ms: u64| {
        instance_with(&database.url(), &key, |config| {
            config.follow_interval_ms = follow_interval_ms;
            config.max_versions = 3;
        })
    };
    // The follower polls every 300 ms: a delete and what follows it land in one poll.
    let (writer, follower) = (start(10), start(300));
    let (mut on_writer, mut on_follower) = (writer.client(), follower.client());
    let version_of = |client: &mut Client, id: &str, version: u64| {
        client
            .get_version(id, version)
            .map(|reply| reply.secret.expose().to_vec())
            .map_err(|error| error.status())
    };
    let ids = ["kept/a", "kept/b", "again/c"];
    for id in ids {
        assert_eq!(on_writer.put(&put(id, format!("{id} 1").as_bytes())).unwrap(), 1);
    }
    for id in ids {
        eventually(&mut on_follower, |client| secret_of(client, id).is_some());
    }
    // One new version at a time, then several within one poll.
    for version in 2..=7u64 {
        for id in &ids[..2] {
            assert_eq!(on_writer.put(&put(id, format!("{id} {version}").as_bytes())).unwrap(), version);
        }
        if version <= 4 {
            let expected = format!("{} {version}", ids[0]).into_bytes();
            eventually(&mut on_follower, |client| {
                secret_of(client, ids[0]).as_deref() == Some(&expected[..])
            });
        }
    }
    // Deleted and created again past the version the follower holds, within one poll.
    for version in 2..=3u64 {
        assert_eq!(on_writer.put(&put(ids[2], format!("{} {version}", ids[2]).as_bytes())).unwrap(), version);
    }
    let expected = format!("{} 3", ids[2]).into_bytes();
    eventually(&mut on_follower, |client| secret_of(client, ids[2]).as_deref() == Some(&expected[..]));
    on_writer.delete_with(&purging(ids[2])).unwrap();
    for version in 1..=5u64 {
        assert_eq!(
            on_writer.put(&put(ids[2], format!("{} new {version}", ids[2]).as_bytes())).unwrap(),
            3 + version
        );
    }
    for id in ids {
        let newest = secret_of(&mut on_writer, id);
        eventually(&mut on_follower, |client| secret_of(client, id) == newest);
    }
    for id in ids {
        for version in 1..=8 {
            assert_eq!(
                version_of(&mut on_follower, id, version),
                version_of(&mut on_writer, id, version),
                "{id} version {version}"
            );
        }
    }
    assert_eq!(version_of(&mut on_follower, ids[0], 5).unwrap(), b"kept/a 5", "kept: the newest three");
    assert!(version_of(&mut on_follower, ids[0], 4).is_err(), "trimmed past --max-versions");
    assert_eq!(version_of(&mut on_follower, ids[2], 6).unwrap(), b"again/c new 3", "the new credential's");
    assert!(version_of(&mut on_follower, ids[2], 3).is_err(), "the purged credential's");
}

/// A write judged stale is followed by a re-read of its credential from the version the
/// instance holds up; when the credential was purged and created again since (which this
/// instance never followed), none of the old one's versions stays beside the new one's, and
/// the write continues after the new one's.
#[test]
fn a_stale_write_over_a_credential_created_again_reads_it_whole() {
    let Some(database) = common::postgres::database("created_again") else { return };
    let key = *MasterKey::generate().bytes();
    let writer = instance(&database.url(), &key);
    let mut on_writer = writer.client();
    let id = "again/d";
    for version in 1..=3u64 {
        assert_eq!(on_writer.put(&put(id, format!("old {version}").as_bytes())).unwrap(), version);
    }
    // Loads the three versions at start, then follows only once a minute: it never sees the
    // delete.
    let stale = instance_following_every(&database.url(), &key, 60_000);
    let mut on_stale = stale.client();
    assert_eq!(secret_of(&mut on_stale, id).as_deref(), Some(&b"old 3"[..]));
    on_writer.delete_with(&purging(id)).unwrap();
    for version in 1..=5u64 {
        assert_eq!(on_writer.put(&put(id, format!("new {version}").as_bytes())).unwrap(), 3 + version);
    }
    // Prepared against version 3, refused by the database, read again, and written as 9.
    assert_eq!(on_stale.put(&put(id, b"new 6")).unwrap(), 9);
    for version in 1..=9u64 {
        let on_stale = on_stale.get_version(id, version).map(|reply| reply.secret.expose().to_vec());
        let expected = (version > 3).then(|| format!("new {}", version - 3).into_bytes());
        assert_eq!(on_stale.ok(), expected, "version {version}");
    }
}
