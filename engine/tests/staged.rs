//! Staged rotation over real TCP (STAGE, PROMOTE, GET by stage): a pending version is stored
//! and readable by stage or number but never served as current; PROMOTE makes it current and
//! the version it replaces previous for the grace period; a plain write drops a pending
//! version; version numbers are never reused; and every state survives SIGKILL, through the
//! log and through snapshots.

mod common;

use std::time::Duration;

use credshard_protocol::op::get::Stage;
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::stage::PromoteRequest;
use credshard_protocol::{Client, ClientError, PutRequest, Status, VersionState};

use common::process::{ProcessDirs, ServeProcess};
use common::{ids_on_every_shard, put, TestServer};

fn promote(id: &str, expected_version: Option<u64>, grace_period_seconds: Option<u64>) -> PromoteRequest<'_> {
    PromoteRequest { id, expected_version, grace_period_seconds }
}

fn secret_of(client: &mut Client, id: &str, stage: Stage) -> Result<(u64, String), ClientError> {
    client
        .get_stage(id, stage)
        .map(|reply| (reply.metadata.version, String::from_utf8(reply.secret.expose().to_vec()).unwrap()))
}

fn states(client: &mut Client, id: &str) -> (u64, Vec<(u64, VersionState)>) {
    let meta = client.get_meta(id).unwrap();
    (meta.metadata.version, meta.versions.iter().map(|info| (info.version, info.state)).collect())
}

#[test]
fn a_pending_version_is_served_only_by_stage_until_promoted_then_the_old_one_is_previous_for_its_grace() {
    let server = TestServer::start(2);
    let mut client = server.client();
    for id in ids_on_every_shard(2, 1) {
        assert_eq!(client.put(&put(&id, b"one")).unwrap(), 1);
        assert_eq!(client.stage(&put(&id, b"two")).unwrap(), 2);

        // Pending: by stage and by number, never as current.
        assert_eq!(client.get(&id).unwrap().secret.expose(), b"one");
        assert_eq!(secret_of(&mut client, &id, Stage::Current).unwrap(), (1, "one".into()));
        assert_eq!(secret_of(&mut client, &id, Stage::Pending).unwrap(), (2, "two".into()));
        assert_eq!(client.get_version(&id, 2).unwrap().secret.expose(), b"two");
        let none = secret_of(&mut client, &id, Stage::Previous).unwrap_err();
        assert_eq!(none.status(), Some(Status::NotFound), "nothing was replaced yet");
        assert_eq!(
            states(&mut client, &id),
            (1, vec![(2, VersionState::Pending), (1, VersionState::Current)])
        );
        let batch = client.batch_get(&[id.as_str()]).unwrap();
        assert_eq!(
            batch[0].as_ref().unwrap().secret.expose(),
            b"one",
            "BATCH_GET serves the current version"
        );

        // PROMOTE is conditional on the pending version, not the current one.
        let conflict = client.promote(&promote(&id, Some(1), None)).unwrap_err();
        assert_eq!((conflict.status(), conflict.current_version()), (Some(Status::VersionConflict), Some(2)));
        assert_eq!(client.promote(&promote(&id, Some(2), Some(1))).unwrap(), 2);

        assert_eq!(client.get(&id).unwrap().secret.expose(), b"two");
        assert_eq!(secret_of(&mut client, &id, Stage::Previous).unwrap(), (1, "one".into()));
        assert_eq!(
            states(&mut client, &id),
            (2, vec![(2, VersionState::Current), (1, VersionState::PreviousInGrace)])
        );
        assert_eq!(secret_of(&mut client, &id, Stage::Pending).unwrap_err().status(), Some(Status::NotFound));
        let again = client.promote(&promote(&id, None, None)).unwrap_err();
        assert_eq!(again.status(), Some(Status::NotFound), "nothing is pending any more: {again}");
        let none_pending = client.promote(&promote(&id, Some(2), None)).unwrap_err();
        assert_eq!(none_pending.current_version(), Some(0), "detail 0: no pending version");
    }
    // The one-second grace ends: the previous version is retired, by stage and by number.
    for id in ids_on_every_shard(2, 1) {
        let mut polls = 0;
        while secret_of(&mut client, &id, Stage::Previous).is_ok() {
            polls += 1;
            assert!(polls < 1000, "the grace period never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(secret_of(&mut client, &id, Stage::Previous).unwrap_err().status(), Some(Status::Retired));
        assert_eq!(client.get_version(&id, 1).unwrap_err().status(), Some(Status::Retired));
    }
}

#[test]
fn staging_again_replaces_the_pending_version_a_plain_write_drops_it_and_numbers_are_never_reused() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let id = "svc/db";
    assert_eq!(client.stage(&put(id, b"x")).unwrap_err().status(), Some(Status::NotFound), "no current");
    assert_eq!(client.put(&put(id, b"v1")).unwrap(), 1);
    assert_eq!(client.stage(&put(id, b"v2")).unwrap(), 2);
    assert_eq!(client.stage(&put(id, b"v3")).unwrap(), 3);
    assert_eq!(client.get_version(id, 2).unwrap_err().status(), Some(Status::NotFound), "replaced");
    assert_eq!(secret_of(&mut client, id, Stage::Pending).unwrap(), (3, "v3".into()));
    // STAGE's compare-and-set is against the current version.
    let stale = client.stage(&PutRequest { expected_version: Some(3), ..put(id, b"x") }).unwrap_err();
    assert_eq!(stale.current_version(), Some(1));
    // ROTATE and PUT go past the pending version's number and drop it.
    let rotate = RotateRequest { id, expected_version: Some(1), grace_period_seconds: None, secret: b"v4" };
    assert_eq!(client.rotate(&rotate).unwrap(), 4);
    assert_eq!(secret_of(&mut client, id, Stage::Pending).unwrap_err().status(), Some(Status::NotFound));
    assert_eq!(client.promote(&promote(id, None, None)).unwrap_err().status(), Some(Status::NotFound));
    assert_eq!(
        states(&mut client, id),
        (4, vec![(4, VersionState::Current), (1, VersionState::PreviousInGrace)])
    );
    assert_eq!(client.stage(&put(id, b"v5")).unwrap(), 5);
    assert_eq!(client.put(&put(id, b"v6")).unwrap(), 6);
    assert_eq!(
        states(&mut client, id),
        (
            6,
            vec![
                (6, VersionState::Current),
                (4, VersionState::Superseded),
                (1, VersionState::PreviousInGrace)
            ]
        )
    );
}

#[test]
fn a_promoted_version_brings_its_own_owner_and_scope_into_list() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let id = "moving/db";
    client.put(&put(id, b"old")).unwrap();
    let moved = PutRequest { owner: "team-b", scope: "staging", ..put(id, b"new") };
    assert_eq!(client.stage(&moved).unwrap(), 2);
    let listed = |client: &mut Client, owner: &str| -> Vec<String> {
        let request = ListRequest { owner, scope: "", limit: 10, cursor: &[] };
        client.list(&request).unwrap().items.into_iter().map(|item| item.id).collect()
    };
    assert_eq!(listed(&mut client, "team-a"), vec![id.to_owned()], "pending changes nothing yet");
    assert!(listed(&mut client, "team-b").is_empty());
    client.promote(&promote(id, None, None)).unwrap();
    assert!(listed(&mut client, "team-a").is_empty());
    assert_eq!(listed(&mut client, "team-b"), vec![id.to_owned()]);
    assert_eq!(client.get_meta(id).unwrap().metadata.scope, "staging");
}

#[test]
fn a_deleted_credential_keeps_its_pending_version_and_undelete_brings_both_back() {
    let server = TestServer::start(1);
    let mut client = server.client();
    let id = "deleted/db";
    client.put(&put(id, b"one")).unwrap();
    client.stage(&put(id, b"two")).unwrap();
    client.delete(id, None).unwrap();
    for refused in [
        client.promote(&promote(id, None, None)).unwrap_err(),
        client.stage(&put(id, b"three")).unwrap_err(),
        client.get_stage(id, Stage::Pending).unwrap_err(),
    ] {
        assert!(refused.recoverable_until_ms().is_some(), "deleted, recoverable: {refused}");
    }
    assert_eq!(client.undelete(id).unwrap(), 1);
    assert_eq!(secret_of(&mut client, id, Stage::Pending).unwrap(), (2, "two".into()));
    assert_eq!(client.promote(&promote(id, Some(2), None)).unwrap(), 2);
    // A purge remembers the pending version's number too: the next write continues after it.
    client.stage(&put(id, b"three")).unwrap();
    let purge = credshard_protocol::op::delete::DeleteRequest {
        purge: true,
        ..credshard_protocol::op::delete::DeleteRequest::new(id, None)
    };
    assert_eq!(client.delete_with(&purge).unwrap().version, 2);
    assert_eq!(client.put(&put(id, b"four")).unwrap(), 4);
}

/// SIGKILL, from the log and (with a small compaction threshold) from snapshots.
#[test]
fn pending_and_promoted_versions_survive_sigkill_through_the_log_and_snapshots() {
    let dirs = ProcessDirs::new();
    let args = ["--shards", "2", "--compact-log-bytes", "8192"];
    let ids = ids_on_every_shard(2, 4);
    let [staged, promoted, dropped, restaged] = [0, 1, 2, 3].map(|index| &ids[index]);
    {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        for id in &ids {
            assert_eq!(client.put(&put(id, format!("{id} v1").as_bytes())).unwrap(), 1);
            assert_eq!(client.stage(&put(id, format!("{id} v2").as_bytes())).unwrap(), 2);
        }
        assert_eq!(client.promote(&promote(promoted, Some(2), Some(3600))).unwrap(), 2);
        assert_eq!(client.put(&put(dropped, format!("{dropped} v3").as_bytes())).unwrap(), 3);
        assert_eq!(client.stage(&put(restaged, format!("{restaged} v3").as_bytes())).unwrap(), 3);
        // Enough other writes for snapshots to be taken (and replayed) past these.
        common::write_past_a_snapshot(&mut client, &dirs.data_dir);
    } // SIGKILL
    for restart in 0..2 {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        let secret = |id: &str, version: u64| format!("{id} v{version}");
        assert_eq!(secret_of(&mut client, promoted, Stage::Current).unwrap(), (2, secret(promoted, 2)));
        assert_eq!(secret_of(&mut client, promoted, Stage::Previous).unwrap(), (1, secret(promoted, 1)));
        assert_eq!(
            states(&mut client, promoted),
            (2, vec![(2, VersionState::Current), (1, VersionState::PreviousInGrace)]),
            "restart {restart}: the grace deadline PROMOTE set"
        );
        assert_eq!(
            states(&mut client, dropped),
            (3, vec![(3, VersionState::Current), (1, VersionState::Superseded)])
        );
        assert_eq!(secret_of(&mut client, restaged, Stage::Pending).unwrap(), (3, secret(restaged, 3)));
        assert_eq!(client.get_version(restaged, 2).unwrap_err().status(), Some(Status::NotFound));
        if restart == 0 {
            assert_eq!(secret_of(&mut client, staged, Stage::Current).unwrap(), (1, secret(staged, 1)));
            assert_eq!(secret_of(&mut client, staged, Stage::Pending).unwrap(), (2, secret(staged, 2)));
            // Promoted after a restart; that too is logged.
            assert_eq!(client.promote(&promote(staged, Some(2), None)).unwrap(), 2);
        } else {
            assert_eq!(secret_of(&mut client, staged, Stage::Current).unwrap(), (2, secret(staged, 2)));
            assert_eq!(client.put(&put(restaged, b"next")).unwrap(), 4, "numbers go on past the pending one");
        }
    }
}

#[test]
fn a_token_that_does_not_reach_the_pending_version_cannot_drop_it() {
    const ADMIN: &[u8] = b"cst_admin-token-0123456789";
    const BILLING: &[u8] = b"cst_billing-writer-token-01";
    let table = |id: &str, token: &[u8], rest: &str| {
        format!(
            "[[token]]\nid = \"{id}\"\nsha256 = \"{}\"\n{rest}\n\n",
            hex::encode(credshard_engine::auth::hash_token(token))
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let text = table("admin", ADMIN, "ops = [\"*\"]")
        + &table(
            "billing",
            BILLING,
            "ops = [\"read\", \"write\", \"rotate\", \"delete\"]\nowners = [\"billing\"]",
        );
    std::fs::write(&tokens, text).unwrap();
    let server = TestServer::start_with(2, |config| config.tokens = Some(tokens));
    let mut admin = Client::connect_with_token(server.address(), ADMIN).unwrap();
    let id = "moving/db";
    admin.put(&PutRequest { owner: "billing", ..put(id, b"billing's") }).unwrap();
    admin.stage(&PutRequest { owner: "ops", ..put(id, b"ops'") }).unwrap();

    let mut billing = Client::connect_with_token(server.address(), BILLING).unwrap();
    let rotate = RotateRequest { id, expected_version: None, grace_period_seconds: None, secret: b"x" };
    let purge = credshard_protocol::op::delete::DeleteRequest {
        purge: true,
        ..credshard_protocol::op::delete::DeleteRequest::new(id, None)
    };
    let refusals = [
        billing.put(&PutRequest { owner: "billing", ..put(id, b"x") }).unwrap_err(),
        billing.rotate(&rotate).unwrap_err(),
        billing.stage(&PutRequest { owner: "billing", ..put(id, b"x") }).unwrap_err(),
        billing.delete_with(&purge).unwrap_err(),
    ];
    for refused in refusals {
        assert_eq!(refused.status(), Some(Status::Unauthorized), "{refused}");
    }
    assert_eq!(billing.get(id).unwrap().secret.expose(), b"billing's", "its own version it still reads");
    assert_eq!(
        secret_of(&mut admin, id, Stage::Pending).unwrap(),
        (2, "ops'".into()),
        "the pending one is intact"
    );
    assert_eq!(billing.delete(id, None).unwrap().version, 1, "a recoverable delete keeps it, and is allowed");
}
