//! The PostgreSQL store's database layer against a real PostgreSQL: migrations when several
//! instances start together, conditional writes that let exactly one instance win each
//! version, the key ring row, and following the change log across a late commit.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use credshard_engine::storage::postgres::follow::Follower;
use credshard_engine::storage::postgres::rows::{self, ChangeKind, Outcome, RowWrite, VersionWrite};
use credshard_engine::storage::postgres::schema::MIGRATIONS;
use credshard_engine::storage::postgres::Database;
use credshard_protocol::op::watch::Change;

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
        change: Change::Put as i16,
        base: rows::Base::default(),
    }
}

fn purge(id: &str, base_version: i64, at_ms: i64) -> RowWrite<'_> {
    RowWrite::Delete { id, base_version, at_ms, change: Change::Purge as i16, purge_at_ms: 0, base: None }
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
                                                                                                // A purged id is created again only after its last version.
            outcomes.push(rows::write_version(client, &write("x", 0, b"anew at 1")).await?);
            let after_purge = VersionWrite { version: 2, ..write("x", 0, b"anew") };
            outcomes.push(rows::write_version(client, &after_purge).await?);
            Ok(outcomes)
        })
        .unwrap();
    let committed: Vec<bool> =
        outcomes.iter().map(|outcome| matches!(outcome, Outcome::Committed { .. })).collect();
    assert_eq!(committed, [true, false, false, false, true, false, false, true]);
    let kept = database.query("SELECT version, record FROM credshard_versions WHERE id = 'x'");
    assert_eq!(kept.len(), 1, "the delete took the old versions with it");
    assert_eq!(kept[0].get::<_, i64>(0), 2, "version numbers never restart");
    assert_eq!(kept[0].get::<_, Vec<u8>>(1), b"anew");
}

#[test]
fn a_round_commits_creates_updates_and_deletes_in_one_statement_each_on_its_own_condition() {
    let Some(database) = common::postgres::database("round") else { return };
    let instance = Database::open(&database.url(), 2, None).unwrap();
    let (first, second) = instance
        .run_blocking(|pool| async move {
            let client = pool.get().await?;
            let first = rows::commit(
                &client,
                &[
                    RowWrite::Version(write("a", 0, b"a1")),
                    RowWrite::Version(write("b", 0, b"b1")),
                    RowWrite::Version(write("c", 0, b"c1")),
                ],
            )
            .await?;
            let second = rows::commit(
                &client,
                &[
                    RowWrite::Version(write("a", 1, b"a2")),    // applies
                    RowWrite::Version(write("b", 5, b"stale")), // b is at 1
                    purge("c", 1, 2_000),                       // applies
                    purge("nothing", 1, 2_000),
                    RowWrite::Version(write("d", 0, b"d1")), // applies
                    RowWrite::Version(write("e", 3, b"never created")),
                ],
            )
            .await?;
            Ok((first, second))
        })
        .unwrap();
    let committed = |outcomes: &[Outcome]| {
        outcomes.iter().map(|outcome| matches!(outcome, Outcome::Committed { .. })).collect::<Vec<_>>()
    };
    assert_eq!(committed(&first), [true, true, true]);
    assert_eq!(committed(&second), [true, false, true, false, true, false]);
    let seqs: Vec<i64> = first
        .iter()
        .chain(&second)
        .filter_map(|outcome| match outcome {
            Outcome::Committed { seq } => Some(*seq),
            Outcome::Stale => None,
        })
        .collect();
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "each committed write has its own change-log entry: {seqs:?}");
    let heads = database.query("SELECT id, version FROM credshard_credentials ORDER BY id");
    let heads: Vec<(String, i64)> = heads.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(heads, [("a".to_owned(), 2), ("b".to_owned(), 1), ("d".to_owned(), 1)]);
    let kept = database.query("SELECT id, version, record FROM credshard_versions ORDER BY id, version");
    let kept: Vec<(String, i64, Vec<u8>)> =
        kept.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
    assert_eq!(
        kept,
        [
            ("a".to_owned(), 1, b"a1".to_vec()),
            ("a".to_owned(), 2, b"a2".to_vec()),
            ("b".to_owned(), 1, b"b1".to_vec()),
            ("d".to_owned(), 1, b"d1".to_vec()),
        ],
        "the deleted credential's versions went with it, the stale writes wrote nothing"
    );
    let changes = database.query("SELECT id, version, kind FROM credshard_changes ORDER BY seq");
    let changes: Vec<(String, i64, i16)> =
        changes.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
    assert_eq!(
        changes,
        [
            ("a".to_owned(), 1, 1),
            ("b".to_owned(), 1, 1),
            ("c".to_owned(), 1, 1),
            ("a".to_owned(), 2, 1),
            ("c".to_owned(), 1, 2),
            ("d".to_owned(), 1, 1),
        ]
    );
}

/// Migration 4 replaced the versions' foreign key by a trigger per statement: a credential
/// deleted by any statement (here a plain DELETE, as builds older than the migration send)
/// still takes its versions with it, so the id can be created again from version 1.
#[test]
fn a_credential_deleted_by_any_statement_takes_its_versions_with_it() {
    let Some(database) = common::postgres::database("cascade") else { return };
    let instance = Database::open(&database.url(), 2, None).unwrap();
    let commit = |writes: Vec<(&'static str, i64, &'static [u8])>| {
        instance
            .run_blocking(move |pool| async move {
                let client = pool.get().await?;
                let writes: Vec<RowWrite> = writes
                    .iter()
                    .map(|&(id, base, record)| RowWrite::Version(write(id, base, record)))
                    .collect();
                rows::commit(&client, &writes).await
            })
            .unwrap()
    };
    commit(vec![("a", 0, b"a1"), ("b", 0, b"b1")]);
    commit(vec![("a", 1, b"a2")]);
    database.query("DELETE FROM credshard_credentials WHERE id = 'a'");
    let kept = database.query("SELECT id, version FROM credshard_versions ORDER BY id, version");
    let kept: Vec<(String, i64)> = kept.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(kept, [("b".to_owned(), 1)], "a's versions went with it, b's stayed");
    let again = commit(vec![("a", 0, b"a again")]);
    assert!(matches!(again[0], Outcome::Committed { .. }), "{again:?}");
    let kept = database.query("SELECT version, record FROM credshard_versions WHERE id = 'a'");
    let kept: Vec<(i64, Vec<u8>)> = kept.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(kept, [(1, b"a again".to_vec())]);
}

/// The round statement is prepared once per connection and its generic plan kept: planned
/// while the tables are small it must still reach the rows through the primary keys (a plan
/// that scans a table of a few hundred credentials is cheap then, and costs a scan of every
/// credential per round once there are many: half of the database's CPU at 10,000).
#[test]
fn the_round_statement_reaches_rows_through_the_primary_keys_even_when_planned_on_small_tables() {
    let Some(database) = common::postgres::database("round_plan") else { return };
    let instance = Database::open(&database.url(), 1, None).unwrap();
    let plan = instance
        .run_blocking(|pool| async move {
            let client = pool.get().await?;
            client
                .batch_execute(
                    "INSERT INTO credshard_credentials (id, version, owner, scope)
                         SELECT 'k' || g, 1, 'o', 's' FROM generate_series(1, 300) g;
                     INSERT INTO credshard_versions (id, version, record)
                         SELECT 'k' || g, 1, '\\x00' FROM generate_series(1, 300) g;
                     ANALYZE credshard_credentials, credshard_versions",
                )
                .await?;
            client.batch_execute("SET plan_cache_mode = force_generic_plan").await?;
            client
                .batch_execute(&format!(
                    "PREPARE round(text[], int8[], int8[], text[], text[], int8[], bytea[], int8[], int8[], int2[], int8[], bool[], bytea[], int8[], bool[]) AS {}",
                    rows::COMMIT_ROUND
                ))
                .await?;
            let plan = client
                .query(
                    "EXPLAIN EXECUTE round('{a,b}', '{1,0}', '{2,0}', '{o,o}', '{s,s}', '{0,0}', \
                     '{\"\\\\x00\",\"\\\\x00\"}', '{1,1}', '{1,1}', '{1,1}', '{0,0}', '{f,f}', '{NULL,NULL}', '{0,0}', '{t,t}')",
                    &[],
                )
                .await?;
            client.batch_execute("DEALLOCATE round; RESET plan_cache_mode").await?;
            Ok(plan.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join("\n"))
        })
        .unwrap();
    for table in ["credshard_credentials", "credshard_versions"] {
        assert!(!plan.contains(&format!("Seq Scan on {table}")), "the round scans {table}:\n{plan}");
    }
    assert!(plan.contains("credshard_credentials_pkey"), "{plan}");
}

#[test]
fn rounds_over_the_same_credentials_in_different_orders_from_three_instances_have_one_winner_per_version() {
    let Some(database) = common::postgres::database("rounds_race") else { return };
    let instances: Vec<Database> =
        (0..3).map(|_| Database::open(&database.url(), 4, None).unwrap()).collect();
    const IDS: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];
    // Per credential: (versions acknowledged, deletes acknowledged).
    let acked: Arc<Mutex<BTreeMap<String, (usize, usize)>>> = Arc::default();
    let races_lost = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stale_writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = instances
        .iter()
        .flat_map(|instance| (0..2).map(move |writer| (instance.clone(), writer)))
        .enumerate()
        .map(|(number, (instance, _))| {
            let (acked, races_lost) = (Arc::clone(&acked), Arc::clone(&races_lost));
            let stale_writes = Arc::clone(&stale_writes);
            std::thread::spawn(move || {
                for attempt in 0..30 {
                    // Each writer takes the ids in its own rotation, every third round deletes
                    // one: rounds lock rows in different orders.
                    let order: Vec<&str> =
                        (0..IDS.len()).map(|i| IDS[(i + number + attempt) % IDS.len()]).collect();
                    let delete = (attempt % 3 == 0).then_some(order[0]);
                    let committed = instance
                        .run_blocking(move |pool| async move {
                            let client = pool.get().await?;
                            let mut bases = Vec::new();
                            for id in &order {
                                bases
                                    .push(rows::credential(&client, id).await?.last().map_or(0, |(v, _)| *v));
                            }
                            let record = format!("record {number}.{attempt}").into_bytes();
                            let writes: Vec<RowWrite<'_>> = order
                                .iter()
                                .zip(&bases)
                                .map(|(id, &base)| match delete {
                                    Some(deleted) if deleted == *id && base > 0 => purge(id, base, 1_000),
                                    _ => RowWrite::Version(write(id, base, &record)),
                                })
                                .collect();
                            let outcomes = match rows::commit(&client, &writes).await {
                                Err(error) if rows::lost_a_race(&error) => return Ok(None),
                                outcomes => outcomes?,
                            };
                            let stale = outcomes.iter().filter(|outcome| **outcome == Outcome::Stale).count();
                            Ok(Some((
                                stale,
                                writes
                                    .iter()
                                    .zip(outcomes)
                                    .filter(|(_, outcome)| matches!(outcome, Outcome::Committed { .. }))
                                    .map(|(write, _)| match write {
                                        RowWrite::Version(write) => (write.id.to_owned(), false),
                                        RowWrite::Delete { id, .. } => ((*id).to_owned(), true),
                                    })
                                    .collect::<Vec<_>>(),
                            )))
                        })
                        .expect("a round either commits, changes nothing, or loses a race");
                    match committed {
                        Some((stale, won)) => {
                            stale_writes.fetch_add(stale, std::sync::atomic::Ordering::Relaxed);
                            let mut acked = acked.lock().unwrap();
                            for (id, deleted) in won {
                                let counts = acked.entry(id).or_default();
                                if deleted {
                                    counts.1 += 1;
                                } else {
                                    counts.0 += 1;
                                }
                            }
                        }
                        None => {
                            races_lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    // The change log, per credential in commit order, is one valid history: each version one
    // above the last (a delete ends a life, and the next one starts again at 1), each delete
    // of the version then current; and it holds exactly what the writers were told committed.
    let acked = acked.lock().unwrap();
    let mut history: BTreeMap<String, (i64, usize, usize)> = BTreeMap::new();
    for row in database.query("SELECT id, version, kind FROM credshard_changes ORDER BY seq") {
        let (id, version, kind): (String, i64, i16) = (row.get(0), row.get(1), row.get(2));
        let (current, written, deleted) = history.entry(id.clone()).or_default();
        if kind == 1 {
            assert_eq!(version, *current + 1, "{id}: version {version} follows {current}");
            *current = version;
            *written += 1;
        } else {
            assert_eq!(version, *current, "{id}: a delete of the current version");
            *current = 0;
            *deleted += 1;
        }
    }
    for (id, (written, deleted)) in acked.iter() {
        let (_, in_log_written, in_log_deleted) = history[id];
        assert_eq!((in_log_written, in_log_deleted), (*written, *deleted), "{id}: acknowledged = committed");
    }
    assert_eq!(history.len(), acked.len());
    for row in database.query("SELECT id, version FROM credshard_credentials") {
        let (id, version): (String, i64) = (row.get(0), row.get(1));
        assert_eq!(history[&id].0, version, "{id}: the head is the history's last version");
    }
    let orphans = database.query(
        "SELECT count(*) FROM credshard_versions v
         WHERE NOT EXISTS (SELECT 1 FROM credshard_credentials c WHERE c.id = v.id)",
    );
    assert_eq!(orphans[0].get::<_, i64>(0), 0, "a delete takes every kept version with it");
    assert!(acked.values().any(|(_, deleted)| *deleted > 0), "deletes raced too");
    assert!(stale_writes.load(std::sync::atomic::Ordering::Relaxed) > 0, "the rounds really raced");
    eprintln!(
        "rounds that lost a race (and changed nothing): {}",
        races_lost.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn a_round_that_deadlocks_changes_nothing_and_is_known_as_a_lost_race() {
    let Some(database) = common::postgres::database("deadlock") else { return };
    let instance = Database::open(&database.url(), 4, None).unwrap();
    let (round, a_after) = instance
        .run_blocking(|pool| async move {
            let (other, ours) = (pool.get().await?, pool.get().await?);
            rows::commit(
                &ours,
                &[RowWrite::Version(write("a", 0, b"a1")), RowWrite::Version(write("b", 0, b"b1"))],
            )
            .await?;
            // Another transaction holds b; our round takes a and waits for b; the other then
            // waits for a. Ours detects the deadlock (PostgreSQL looks once, a deadlock_timeout
            // after a wait begins): its timeout leaves the other ample time to start waiting
            // even on a loaded machine, and the other's is far longer.
            ours.batch_execute("SET deadlock_timeout = '400ms'").await?;
            other.batch_execute("SET deadlock_timeout = '4s'").await?;
            other
                .batch_execute("BEGIN; UPDATE credshard_credentials SET expires_at_ms = 0 WHERE id = 'b'")
                .await?;
            let writes = [RowWrite::Version(write("a", 1, b"a2")), RowWrite::Version(write("b", 1, b"b2"))];
            let (round, other_done) = futures::join!(rows::commit(&ours, &writes), async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                other
                    .batch_execute("UPDATE credshard_credentials SET expires_at_ms = 0 WHERE id = 'a'")
                    .await?;
                other.batch_execute("COMMIT").await
            });
            other_done?;
            let a_after = rows::credential(&ours, "a").await?;
            Ok((round, a_after))
        })
        .unwrap();
    let error = round.expect_err("the round deadlocked");
    assert!(rows::lost_a_race(&error), "{error}");
    assert_eq!(
        a_after.iter().map(|(version, _)| *version).collect::<Vec<_>>(),
        [1],
        "nothing of it committed"
    );
    assert!(!rows::lost_a_race(&credshard_engine::storage::postgres::DbError::Unavailable(
        "down".to_owned()
    )));
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

/// A create by an instance that never saw the credential, committing while another purges it,
/// waits for the purge and then refuses to take a number the purge retired (a check against
/// the statement's snapshot would not have seen the purge's last version).
#[test]
fn a_create_racing_a_purge_of_the_same_id_never_takes_a_retired_version() {
    let Some(database) = common::postgres::database("create_purge_race") else { return };
    let instance = Database::open(&database.url(), 4, None).unwrap();
    let create = instance
        .run_blocking(|pool| async move {
            let (purging, creating) = (pool.get().await?, pool.get().await?);
            for base in 0..5 {
                rows::write_version(&creating, &write("x", base, b"old")).await?;
            }
            // The purge of x at version 5, uncommitted while the create starts.
            purging.batch_execute("BEGIN").await?;
            assert!(matches!(rows::delete(&purging, "x", 5, 1_000).await?, Outcome::Committed { .. }));
            let fresh = write("x", 0, b"new");
            let (create, purged) = futures::join!(rows::write_version(&creating, &fresh), async {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                purging.batch_execute("COMMIT").await
            });
            purged?;
            create
        })
        .unwrap();
    assert_eq!(create, Outcome::Stale, "version 1 of x was retired by the purge");
    let purged = database.query("SELECT version FROM credshard_purged WHERE id = 'x'");
    assert_eq!(purged[0].get::<_, i64>(0), 5);
    assert!(database.query("SELECT 1 FROM credshard_credentials WHERE id = 'x'").is_empty());
}
