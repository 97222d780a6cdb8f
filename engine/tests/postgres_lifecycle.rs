//! Recoverable deletes, staged rotation, per-credential policies and WATCH with PostgreSQL as
//! the system of record, across instances: what one instance changes, another serves and
//! streams, and an instance started afterwards loads; skipped, saying so, without a database
//! outside CI.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::postgres::eventually;
use common::{events_until, purging, put, TestServer};
use credshard_engine::crypto::MasterKey;
use credshard_engine::ServerConfig;
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::get::Stage;
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::policy::{Policy, SetPolicyRequest};
use credshard_protocol::op::stage::PromoteRequest;
use credshard_protocol::op::watch::{Change, WatchFilter, WatchRequest};
use credshard_protocol::{Client, ClientError, PutRequest, Status, VersionState};

/// An instance on the database, sweeping every 10 ms too, unless `adjust` says otherwise.
fn instance_with(url: &str, key: &[u8; 32], adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    common::postgres::instance_with(url, key, |config| {
        config.sweep_interval_ms = 10;
        adjust(config);
    })
}

fn instance(url: &str, key: &[u8; 32]) -> TestServer {
    instance_with(url, key, |_| {})
}

fn secret(client: &mut Client, id: &str, stage: Stage) -> Result<(u64, Vec<u8>), ClientError> {
    client.get_stage(id, stage).map(|reply| (reply.metadata.version, reply.secret.expose().to_vec()))
}

fn states(client: &mut Client, id: &str) -> Vec<(u64, VersionState)> {
    client.get_meta(id).map_or_else(
        |_| Vec::new(),
        |meta| meta.versions.iter().map(|info| (info.version, info.state)).collect(),
    )
}

fn promote(id: &str, expected_version: Option<u64>) -> PromoteRequest<'_> {
    PromoteRequest { id, expected_version, grace_period_seconds: None }
}

fn listed(client: &mut Client, owner: &str) -> Vec<String> {
    let request = ListRequest { owner, scope: "", cursor: b"", limit: 100 };
    client.list(&request).unwrap().items.into_iter().map(|item| item.id).collect()
}

/// Every rule of recoverable deletes, staged rotation and policies, with each step made on one
/// instance and checked on the other (which learns of it from the change log), then on an
/// instance started afterwards (which loads it from the tables); no secret is in the clear in
/// the database, pending versions included.
#[test]
fn deletions_pending_versions_policies_and_destroyed_versions_hold_on_every_instance_and_after_a_start() {
    let Some(database) = common::postgres::database("lifecycle_parity") else { return };
    let key = *MasterKey::generate().bytes();
    let (a, b) = (instance(&database.url(), &key), instance(&database.url(), &key));
    let (mut on_a, mut on_b) = (a.client(), b.client());

    // A soft delete: unreadable and out of LIST everywhere, recoverable anywhere.
    let id = "parity/db";
    assert_eq!(on_a.put(&put(id, b"canary-one")).unwrap(), 1);
    assert_eq!(on_a.put(&put(id, b"canary-two")).unwrap(), 2);
    eventually(&mut on_b, |client| secret(client, id, Stage::Current).is_ok_and(|(version, _)| version == 2));
    assert_eq!(on_a.delete(id, None).unwrap().version, 2);
    eventually(&mut on_b, |client| client.get(id).is_err_and(|error| error.recoverable_until_ms().is_some()));
    assert!(!listed(&mut on_b, "team-a").contains(&id.to_string()), "a deleted credential is not listed");
    assert!(on_b.delete(id, None).unwrap_err().recoverable_until_ms().is_some(), "deleted already");
    assert_eq!(on_b.undelete(id).unwrap(), 2);
    eventually(&mut on_a, |client| secret(client, id, Stage::Current).is_ok_and(|(version, _)| version == 2));
    assert!(listed(&mut on_a, "team-a").contains(&id.to_string()));

    // DESTROY on one instance: the version's secret is gone on the other, its metadata kept.
    assert_eq!(on_b.destroy(id, 1).unwrap(), 1);
    eventually(&mut on_a, |client| {
        states(client, id) == [(2, VersionState::Current), (1, VersionState::Destroyed)]
    });
    assert!(on_a.get_version(id, 1).is_err(), "a destroyed version has no secret to serve");

    // Staged rotation across instances: staged on A, read by stage and promoted on B.
    assert_eq!(on_a.stage(&put(id, b"canary-pending")).unwrap(), 3);
    eventually(&mut on_b, |client| secret(client, id, Stage::Pending).is_ok());
    assert_eq!(secret(&mut on_b, id, Stage::Pending).unwrap(), (3, b"canary-pending".to_vec()));
    assert_eq!(secret(&mut on_b, id, Stage::Current).unwrap().0, 2, "pending is never current");
    let refused = on_b.promote(&promote(id, Some(4))).unwrap_err();
    assert_eq!(refused.current_version(), Some(3), "{refused}");
    assert_eq!(on_b.promote(&promote(id, Some(3))).unwrap(), 3);
    eventually(&mut on_a, |client| secret(client, id, Stage::Current).is_ok_and(|(version, _)| version == 3));
    assert_eq!(secret(&mut on_a, id, Stage::Previous).unwrap(), (2, b"canary-two".to_vec()));
    assert!(secret(&mut on_a, id, Stage::Pending).is_err(), "nothing pending after PROMOTE");
    // Staged again and dropped by a plain write, which takes the number after it.
    assert_eq!(on_a.stage(&put(id, b"canary-pending-2")).unwrap(), 4);
    assert_eq!(on_a.put(&put(id, b"canary-five")).unwrap(), 5, "a plain write drops the pending version");
    eventually(&mut on_b, |client| secret(client, id, Stage::Current).is_ok_and(|(version, _)| version == 5));
    assert!(secret(&mut on_b, id, Stage::Pending).is_err());

    // A policy set on A binds writes on B, and trims the kept versions in the database too.
    let strict = Policy { max_versions: 2, cas_required: true, ..Policy::default() };
    assert_eq!(on_a.set_policy(&SetPolicyRequest { id, policy: strict }).unwrap(), 5);
    eventually(&mut on_b, |client| client.get_policy(id).is_ok_and(|policy| policy.cas_required));
    let refused = on_b.put(&put(id, b"canary-x")).unwrap_err();
    assert_eq!((refused.status(), refused.current_version()), (Some(Status::VersionConflict), Some(5)));
    assert_eq!(on_b.put(&PutRequest { expected_version: Some(5), ..put(id, b"canary-six") }).unwrap(), 6);
    eventually(&mut on_a, |client| states(client, id).len() == 2 && states(client, id)[0].0 == 6);
    let kept =
        database.query("SELECT version FROM credshard_versions WHERE id = 'parity/db' ORDER BY version");
    assert_eq!(kept.iter().map(|row| row.get::<_, i64>(0)).collect::<Vec<_>>(), [5, 6]);

    // A purge remembers the last version (the pending one's, if higher) for every instance.
    let gone = "parity/gone";
    on_b.put(&put(gone, b"canary-g1")).unwrap();
    assert_eq!(on_b.stage(&put(gone, b"canary-g2")).unwrap(), 2);
    assert_eq!(on_b.delete_with(&purging(gone)).unwrap().version, 1);
    eventually(&mut on_a, |client| {
        client.get(gone).is_err_and(|error| error.status() == Some(Status::NotFound))
    });
    assert_eq!(
        on_a.undelete(gone).unwrap_err().status(),
        Some(Status::NotFound),
        "purged: nothing to undelete"
    );
    assert_eq!(on_a.put(&put(gone, b"canary-g3")).unwrap(), 3, "versions never restart");

    // A recovery window that ends purges the credential from the database (whichever
    // instance's sweeper gets there), and the next write continues after it.
    let windowed = "parity/windowed";
    on_a.put(&put(windowed, b"canary-w1")).unwrap();
    eventually(&mut on_b, |client| client.get(windowed).is_ok());
    let short = DeleteRequest { recovery_window_seconds: Some(1), ..DeleteRequest::new(windowed, None) };
    assert_eq!(on_a.delete_with(&short).unwrap().version, 1);
    eventually(&mut on_b, |client| {
        client.get(windowed).is_err_and(|error| {
            error.status() == Some(Status::NotFound) && error.recoverable_until_ms().is_none()
        })
    });
    assert_eq!(on_b.undelete(windowed).unwrap_err().status(), Some(Status::NotFound));
    let purged = database.query("SELECT version FROM credshard_purged WHERE id = 'parity/windowed'");
    assert_eq!(purged[0].get::<_, i64>(0), 1);
    assert_eq!(on_b.put(&put(windowed, b"canary-w2")).unwrap(), 2);

    // Deleted (recoverably) at the moment another instance starts: it loads every state.
    let sleeping = "parity/sleeping";
    on_a.put(&put(sleeping, b"canary-s1")).unwrap();
    on_a.delete(sleeping, None).unwrap();
    on_a.put(&put("parity/staged", b"canary-c1")).unwrap();
    on_a.stage(&put("parity/staged", b"canary-c2")).unwrap();
    let c = instance(&database.url(), &key);
    let mut on_c = c.client();
    assert_eq!(states(&mut on_c, id), [(6, VersionState::Current), (5, VersionState::Superseded)]);
    assert!(on_c.get_policy(id).unwrap().cas_required);
    assert!(on_c.get(sleeping).unwrap_err().recoverable_until_ms().is_some());
    assert_eq!(secret(&mut on_c, "parity/staged", Stage::Pending).unwrap(), (2, b"canary-c2".to_vec()));
    assert_eq!(on_c.put(&put(gone, b"canary-g4")).unwrap(), 4);
    assert_eq!(on_c.undelete(sleeping).unwrap(), 1);

    // No secret in the clear in any table.
    for (table, column) in [("credshard_versions", "record"), ("credshard_credentials", "pending")] {
        let found = database.query(&format!(
            "SELECT count(*) FROM {table} WHERE position('canary'::bytea IN coalesce({column}, ''::bytea)) > 0"
        ));
        assert_eq!(found[0].get::<_, i64>(0), 0, "a secret in the clear in {table}.{column}");
    }
}

/// Every kind of change made on one instance reaches a watcher on another, from the change
/// log, with its version, in order, and never with a secret.
#[test]
fn every_kind_of_change_made_on_one_instance_is_streamed_by_a_watcher_on_another() {
    let Some(database) = common::postgres::database("watch_every_kind") else { return };
    let key = *MasterKey::generate().bytes();
    let (writer, watched) = (instance(&database.url(), &key), instance(&database.url(), &key));
    let id = "svc/db";
    let mut watcher = watched.client();
    watcher.watch(&WatchRequest { filter: WatchFilter::Id(id), resume: None }).unwrap();
    let mut client = writer.client();
    common::every_kind_of_change_is_seen(&mut client, &mut watcher, id);
    watcher.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(watcher.next_event().is_err(), "each change once: nothing more");
}

/// Writers on one instance; a watcher on another sees each of their changes exactly once, in
/// each credential's version order, across a restart of the watcher that resumes from where it
/// was.
#[test]
fn a_watcher_on_another_instance_sees_every_write_once_in_order_across_its_own_restart() {
    let Some(database) = common::postgres::database("watch_resume") else { return };
    let key = *MasterKey::generate().bytes();
    let (writer, watched) = (instance(&database.url(), &key), instance(&database.url(), &key));
    common::a_resumed_watcher_sees_every_write_once(writer.address(), &watched, 2, 20, 30);
}

/// An instance that has not followed the change log yet never answers from its stale view:
/// the database refuses what it prepared, it reads the credential again and decides anew. It
/// takes no version number another instance used, brings back nothing it did not see deleted,
/// and breaks no policy it did not see set.
#[test]
fn an_instance_behind_the_change_log_decides_every_write_anew_from_the_database() {
    let Some(database) = common::postgres::database("stale_states") else { return };
    let key = *MasterKey::generate().bytes();
    let a = instance(&database.url(), &key);
    let mut on_a = a.client();
    let id = "stale/db";
    on_a.put(&put(id, b"one")).unwrap();
    let (strict_later, deleted_later) = ("stale/strict", "stale/deleted");
    on_a.put(&put(strict_later, b"one")).unwrap();
    on_a.put(&put(deleted_later, b"one")).unwrap();
    // Loads what there is at start, then follows only once a minute.
    let b = instance_with(&database.url(), &key, |config| config.follow_interval_ms = 60_000);
    let mut on_b = b.client();

    assert_eq!(on_a.stage(&put(id, b"two")).unwrap(), 2);
    assert_eq!(on_b.stage(&put(id, b"three")).unwrap(), 3, "2 is taken: one pending version, never reused");
    eventually(&mut on_a, |client| secret(client, id, Stage::Pending).is_ok_and(|(version, _)| version == 3));
    assert_eq!(secret(&mut on_b, id, Stage::Pending).unwrap(), (3, b"three".to_vec()));

    on_a.delete(id, None).unwrap();
    let refused = on_b.put(&PutRequest { expected_version: Some(1), ..put(id, b"four") }).unwrap_err();
    assert_eq!(
        (refused.status(), refused.current_version()),
        (Some(Status::VersionConflict), Some(0)),
        "deleted: no current version to match ({refused})"
    );
    assert_eq!(on_b.undelete(id).unwrap(), 1, "B learnt of the deletion and undid it");
    // A follows the change log at its usual pace: it refuses while it still sees its own
    // deletion, or deletes again once it has seen B's UNDELETE (a slow, loaded run). Either
    // way its UNDELETE then leaves the credential live.
    match on_a.delete(id, None) {
        Ok(reply) => assert_eq!(reply.version, 1, "A caught up with B's UNDELETE"),
        Err(refused) => {
            assert!(refused.recoverable_until_ms().is_some(), "A still sees its own deletion: {refused}")
        }
    }
    on_a.undelete(id).unwrap();

    let strict = Policy { cas_required: true, ..Policy::default() };
    on_a.set_policy(&SetPolicyRequest { id, policy: strict }).unwrap();
    let refused = on_b.put(&put(id, b"five")).unwrap_err();
    assert_eq!(refused.status(), Some(Status::VersionConflict), "the policy binds B too: {refused}");
    assert_eq!(on_b.put(&PutRequest { expected_version: Some(1), ..put(id, b"five") }).unwrap(), 4);

    // Neither does STAGE break a policy B has not seen, nor a purge skip a deletion it has not.
    on_a.set_policy(&SetPolicyRequest { id: strict_later, policy: strict }).unwrap();
    let refused = on_b.stage(&put(strict_later, b"two")).unwrap_err();
    assert_eq!(refused.status(), Some(Status::VersionConflict), "STAGE without a version: {refused}");
    on_a.delete(deleted_later, None).unwrap();
    let purge = DeleteRequest { purge: true, ..DeleteRequest::new(deleted_later, Some(1)) };
    let refused = on_b.delete_with(&purge).unwrap_err();
    assert_eq!(
        (refused.status(), refused.current_version()),
        (Some(Status::VersionConflict), Some(0)),
        "deleted: version 1 is not current ({refused})"
    );
    assert!(on_a.undelete(deleted_later).is_ok(), "still there to undelete");
}

/// A watcher on an instance whose cache holds only a few credentials is still told of every
/// change: the change log announces changes of credentials the instance does not hold.
#[test]
fn a_watcher_on_an_instance_with_a_small_cache_is_told_of_credentials_it_does_not_hold() {
    let Some(database) = common::postgres::database("watch_partial") else { return };
    let key = *MasterKey::generate().bytes();
    let writer = instance(&database.url(), &key);
    let watched = instance_with(&database.url(), &key, |config| config.cache_capacity = 4);
    let mut watcher = watched.client();
    watcher.watch(&WatchRequest { filter: WatchFilter::All, resume: None }).unwrap();
    let mut client = writer.client();
    const IDS: u64 = 40;
    for index in 0..IDS {
        client.put(&put(&format!("many/{index}"), b"s")).unwrap();
    }
    client.delete(&format!("many/{}", IDS - 1), None).unwrap();
    let mut left = IDS + 1;
    let events = events_until(&mut watcher, |_| {
        left -= 1;
        left == 0
    });
    // Shards' events interleave; each credential's come in order.
    let mut seen: HashMap<&str, Vec<Change>> = HashMap::new();
    for event in &events {
        seen.entry(event.id.as_str()).or_default().push(event.change);
    }
    assert_eq!(seen.len() as u64, IDS, "every credential written");
    for (id, changes) in &seen {
        let expected = if *id == format!("many/{}", IDS - 1) {
            vec![Change::Put, Change::Delete]
        } else {
            vec![Change::Put]
        };
        assert_eq!(*changes, expected, "{id}");
    }
    assert!(watched.store().len() <= 4, "the watched instance held only a few of them");
}

/// An instance reads again from the change log every change of a credential in place, its own
/// too (it cannot tell them apart); such a re-read, in flight while the instance makes its next
/// change of the same credential, must not bring back the state before that change: a deleted
/// credential is never served again by the instance that deleted it.
#[test]
fn a_re_read_in_flight_never_undoes_this_instances_own_next_change() {
    let Some(database) = common::postgres::database("reread_race") else { return };
    let key = *MasterKey::generate().bytes();
    let server = instance_with(&database.url(), &key, |config| config.follow_interval_ms = 1);
    let mut client = server.client();
    let mut served_after_delete = 0;
    for index in 0..150 {
        let id = format!("race/{index}");
        client.put(&put(&id, b"one")).unwrap();
        client.stage(&put(&id, b"two")).unwrap();
        client.delete(&id, None).unwrap();
        for _ in 0..20 {
            if client.get(&id).is_ok() {
                served_after_delete += 1;
            }
        }
    }
    assert_eq!(served_after_delete, 0, "GETs served a credential this instance had deleted");
}
