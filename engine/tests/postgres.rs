//! The PostgreSQL store's database layer against a real PostgreSQL: migrations when several
//! instances start together, conditional writes that let exactly one instance win each
//! version, the key ring row, and following the change log across a late commit.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use credshard_engine::storage::postgres::follow::Follower;
use credshard_engine::storage::postgres::rows::{self, ChangeKind, Outcome, VersionWrite};
use credshard_engine::storage::postgres::schema::MIGRATIONS;
use credshard_engine::storage::postgres::Database;

fn write<'a>(id: &'a str, base_version: i64, record: &'a [u8]) -> VersionWrite<'a> {
    VersionWrite {
        id,
        base_version,
        version: base_version + 1,
        owner: "owner",
        scope: "scope",
        expires_at_ms: 0,
        record,
        // Three versions kept: this one and the two before it.
        keep_from_version: (base_version + 1 - 2).max(1),
        at_ms: 1_000,
    }
}

#[test]
fn instances_starting_together_migrate_once() {
    let Some(database) = common::postgres::database("migrate") else { return };
    let url = database.url();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Database::open(&url, 2, None))
        })
        .collect();
    for handle in opened {
        handle.join().unwrap().expect("every instance starts");
    }
    let applied = database.query("SELECT version FROM credshard_migrations ORDER BY version");
    let versions: Vec<i32> = applied.iter().map(|row| row.get(0)).collect();
    let known: Vec<i32> = MIGRATIONS.iter().map(|(version, _, _)| *version).collect();
    assert_eq!(versions, known, "each migration recorded once");
    // A database from a newer credshard is refused, not misread.
    database.query("INSERT INTO credshard_migrations (version, name) VALUES (9999, 'from the future')");
    let error = Database::open(&url, 1, None).unwrap_err().to_string();
    assert!(error.contains("newer than this credshard"), "{error}");
}

#[test]
fn exactly_one_instance_wins_each_version() {
    let Some(database) = common::postgres::database("race") else { return };
    let instances: Vec<Database> =
        (0..3).map(|_| Database::open(&database.url(), 4, None).unwrap()).collect();
    let wins: Arc<Mutex<BTreeMap<i64, usize>>> = Arc::default();
    let stale = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = instances
        .iter()
        .flat_map(|instance| (0..3).map(move |writer| (instance.clone(), writer)))
        .map(|(instance, writer)| {
            let (wins, stale) = (Arc::clone(&wins), Arc::clone(&stale));
            std::thread::spawn(move || {
                for attempt in 0..40 {
                    let record = format!("record {writer}.{attempt}").into_bytes();
                    let (outcome, version) = instance
                        .run_blocking(move |pool| async move {
                            let client = pool.get().await?;
                            let base =
                                rows::credential(&client, "contended").await?.last().map_or(0, |(v, _)| *v);
                            Ok((
                                rows::write_version(&client, &write("contended", base, &record)).await?,
                                base + 1,
                            ))
                        })
                        .unwrap();
                    match outcome {
                        Outcome::Committed { .. } => *wins.lock().unwrap().entry(version).or_default() += 1,
                        Outcome::Stale => {
                            stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let wins = wins.lock().unwrap();
    let last = *wins.keys().last().unwrap();
    assert!(wins.values().all(|&count| count == 1), "one winner per version: {wins:?}");
    assert_eq!(wins.len() as i64, last, "versions 1..={last} without a hole: {wins:?}");
    assert!(stale.load(std::sync::atomic::Ordering::Relaxed) > 0, "the writers really raced");
    let head = database.query("SELECT version FROM credshard_credentials WHERE id = 'contended'");
    assert_eq!(head[0].get::<_, i64>(0), last);
    let kept =
        database.query("SELECT version FROM credshard_versions WHERE id = 'contended' ORDER BY version");
    let kept: Vec<i64> = kept.iter().map(|row| row.get(0)).collect();
    assert_eq!(kept, ((last - 2)..=last).collect::<Vec<_>>(), "older versions trimmed in the same statement");
    let changes = database.query("SELECT count(*) FROM credshard_changes WHERE kind = 1");
    assert_eq!(changes[0].get::<_, i64>(0), last, "one change-log entry per committed version");
}

#[test]
fn writes_and_deletes_happen_only_from_the_version_the_database_has() {
    let Some(database) = common::postgres::database("conditional") else { return };
    let instance = Database::open(&database.url(), 2, None).unwrap();
    let outcomes = instance
        .run_blocking(|pool| async move {
            let client = pool.get().await?;
            let client = &client;
            let mut outcomes = Vec::new();
            outcomes.push(rows::write_version(client, &write("x", 0, b"one")).await?);
            outcomes.push(rows::write_version(client, &write("x", 0, b"again")).await?); // exists
            outcomes.push(rows::write_version(client, &write("x", 4, b"wrong base")).await?);
            outcomes.push(rows::delete(client, "x", 2, 1_000).await?); // wrong version
            outcomes.push(rows::delete(client, "x", 1, 1_000).await?);
            outcomes.push(rows::write_version(client, &write("x", 1, b"after delete")).await?); // gone
            outcomes.push(rows::write_version(client, &write("x", 0, b"anew")).await?);
            Ok(outcomes)
        })
        .unwrap();
    let committed: Vec<bool> =
        outcomes.iter().map(|outcome| matches!(outcome, Outcome::Committed { .. })).collect();
    assert_eq!(committed, [true, false, false, false, true, false, true]);
    let kept = database.query("SELECT version, record FROM credshard_versions WHERE id = 'x'");
    assert_eq!(kept.len(), 1, "the delete took the old versions with it");
    assert_eq!(kept[0].get::<_, Vec<u8>>(1), b"anew");
}

#[test]
fn the_key_ring_row_changes_only_from_the_generation_read() {
    let Some(database) = common::postgres::database("ring") else { return };
    let instance = Database::open(&database.url(), 2, None).unwrap();
    let steps = instance
        .run_blocking(|pool| async move {
            let client = pool.get().await?;
            let client = &client;
            Ok(vec![
                rows::ring(client).await?.is_none(),
                rows::replace_ring(client, None, b"first").await?,
                !rows::replace_ring(client, None, b"a second first").await?,
                rows::ring(client).await? == Some((1, b"first".to_vec())),
                rows::replace_ring(client, Some(1), b"next").await?,
                !rows::replace_ring(client, Some(1), b"stale").await?,
                rows::ring(client).await? == Some((2, b"next".to_vec())),
            ])
        })
        .unwrap();
    assert!(steps.iter().all(|&step| step), "{steps:?}");
}

#[test]
fn a_change_committed_late_below_the_watermark_is_followed_once() {
    let Some(database) = common::postgres::database("follow") else { return };
    let instance = Database::open(&database.url(), 4, None).unwrap();
    let (first, gaps_between, rest, gaps_after) = instance
        .run_blocking(|pool| async move {
            let (late, early, reader) = (pool.get().await?, pool.get().await?, pool.get().await?);
            let mut follower = Follower::after(rows::last_change(&reader).await?);
            // The late writer takes its sequence number first and commits last.
            late.batch_execute("BEGIN").await?;
            late.batch_execute(
                "INSERT INTO credshard_changes (id, version, kind, at_ms) VALUES ('late', 1, 1, 1)",
            )
            .await?;
            rows::write_version(&early, &write("early", 0, b"e")).await?;
            let first = follower.poll(&reader, 100).await?;
            let gaps_between = follower.gaps();
            late.batch_execute("COMMIT").await?;
            let mut rest = follower.poll(&reader, 100).await?;
            rest.extend(follower.poll(&reader, 100).await?);
            Ok((first, gaps_between, rest, follower.gaps()))
        })
        .unwrap();
    let ids = |changes: &[rows::Change]| changes.iter().map(|change| change.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), ["early"], "the committed change, not the open one");
    assert_eq!(gaps_between, 1, "the late writer's number is a gap");
    assert_eq!(ids(&rest), ["late"], "the late change once, as soon as it committed");
    assert_eq!(gaps_after, 0);
    assert!(first.iter().chain(&rest).all(|change| change.kind == ChangeKind::Written));
}

#[test]
fn the_change_log_is_trimmed_up_to_the_first_entry_not_older_than_the_cut() {
    let Some(database) = common::postgres::database("trim") else { return };
    let instance = Database::open(&database.url(), 2, None).unwrap();
    database.query(
        "INSERT INTO credshard_changes (id, version, kind, at_ms)
         SELECT 'c' || n, 1, 1, n * 100 FROM generate_series(1, 10) AS n",
    );
    let trimmed = instance
        .run_blocking(|pool| async move { rows::trim_changes(&pool.get().await?, 450).await })
        .unwrap();
    assert_eq!(trimmed, 4, "entries written at 100..400 ms go");
    let left = database.query("SELECT min(at_ms) FROM credshard_changes");
    assert_eq!(left[0].get::<_, i64>(0), 500);
    let all = instance
        .run_blocking(|pool| async move { rows::trim_changes(&pool.get().await?, 10_000).await })
        .unwrap();
    assert_eq!(all, 6, "a cut after every entry trims them all");
}
