//! Per-credential policy over real TCP (SET_POLICY, GET_POLICY): compare-and-set required on
//! every kind of write, versions kept past or below the server's default, older versions that
//! retire on their own, custom metadata written without a new version, and all of it across
//! SIGKILL restarts through the log and snapshots.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::process::{ProcessDirs, ServeProcess};
use common::{put, TestServer};
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::policy::{Policy, SetPolicyRequest};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::stage::PromoteRequest;
use credshard_protocol::{encode_labels, Client, Labels, PutRequest, Status, VersionState};

fn set_policy(client: &mut Client, id: &str, policy: Policy<'_>) -> u64 {
    client.set_policy(&SetPolicyRequest { id, policy }).unwrap()
}

fn kept(client: &mut Client, id: &str) -> Vec<(u64, VersionState)> {
    client.get_meta(id).unwrap().versions.iter().map(|info| (info.version, info.state)).collect()
}

#[test]
fn a_policy_that_requires_compare_and_set_refuses_every_write_without_an_expected_version() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let id = "cas/db";
    client.put(&put(id, b"v1")).unwrap();
    let strict = Policy { cas_required: true, ..Policy::default() };
    assert_eq!(set_policy(&mut client, id, strict), 1, "a policy is not a version");
    assert!(client.get_policy(id).unwrap().cas_required);

    let refusals = [
        client.put(&put(id, b"x")).unwrap_err(),
        client
            .rotate(&RotateRequest { id, expected_version: None, grace_period_seconds: None, secret: b"x" })
            .unwrap_err(),
        client.stage(&put(id, b"x")).unwrap_err(),
        client.delete(id, None).unwrap_err(),
    ];
    for refused in refusals {
        assert_eq!(
            (refused.status(), refused.current_version()),
            (Some(Status::VersionConflict), Some(1)),
            "{refused}"
        );
        assert!(refused.to_string().contains("requires compare-and-set"), "{refused}");
    }
    assert_eq!(client.put(&PutRequest { expected_version: Some(1), ..put(id, b"v2") }).unwrap(), 2);
    assert_eq!(client.stage(&PutRequest { expected_version: Some(2), ..put(id, b"v3") }).unwrap(), 3);
    let unconditional = PromoteRequest { id, expected_version: None, grace_period_seconds: None };
    let refused = client.promote(&unconditional).unwrap_err();
    assert_eq!(refused.current_version(), Some(3), "for PROMOTE the detail is the pending version");
    assert_eq!(client.promote(&PromoteRequest { expected_version: Some(3), ..unconditional }).unwrap(), 3);
    assert_eq!(client.delete(id, Some(3)).unwrap().version, 3);
    // Back to the defaults: writes need no version again.
    client.undelete(id).unwrap();
    set_policy(&mut client, id, Policy::default());
    assert_eq!(client.put(&put(id, b"v4")).unwrap(), 4);
}

#[test]
fn max_versions_keeps_fewer_or_more_than_the_server_and_metadata_needs_no_new_version() {
    let server = TestServer::start_with(1, |config| config.max_versions = 3);
    let mut client = server.client();
    let (few, many) = ("few/db", "many/db");
    for version in 1..=3u64 {
        client.put(&put(few, format!("{version}").as_bytes())).unwrap();
    }
    set_policy(&mut client, few, Policy { max_versions: 1, ..Policy::default() });
    assert_eq!(kept(&mut client, few), vec![(3, VersionState::Current)], "dropped at once");
    client.put(&put(few, b"4")).unwrap();
    assert_eq!(kept(&mut client, few), vec![(4, VersionState::Current)]);

    client.put(&put(many, b"1")).unwrap();
    let mut metadata = BytesMut::new();
    encode_labels(&[("team", "payments"), ("rotation", "quarterly")], &mut metadata);
    let policy =
        Policy { max_versions: 12, metadata: Labels::from_validated(&metadata), ..Policy::default() };
    set_policy(&mut client, many, policy);
    for version in 2..=15u64 {
        assert_eq!(client.put(&put(many, format!("{version}").as_bytes())).unwrap(), version);
    }
    let versions: Vec<u64> = kept(&mut client, many).iter().map(|(version, _)| *version).collect();
    assert_eq!(versions, (4..=15).rev().collect::<Vec<_>>(), "12 kept, past the server's 3");
    assert_eq!(client.get_version(many, 4).unwrap().secret.expose(), b"4");
    let read = client.get_policy(many).unwrap();
    assert_eq!(read.max_versions, 12);
    assert_eq!(
        read.metadata,
        vec![("team".into(), "payments".into()), ("rotation".into(), "quarterly".into())]
    );
    assert_eq!(client.get_meta(many).unwrap().metadata.version, 15, "metadata changed no version");
    // Gone with the credential: one written again starts with the defaults.
    client.delete_with(&DeleteRequest { purge: true, ..DeleteRequest::new(many, None) }).unwrap();
    client.put(&put(many, b"again")).unwrap();
    assert_eq!(client.get_policy(many).unwrap().max_versions, 0);
    assert_eq!(client.get_policy("absent").unwrap_err().status(), Some(Status::NotFound));
}

#[test]
fn older_versions_retire_on_their_own_after_delete_version_after() {
    let server = TestServer::start(1);
    let mut client = server.client();
    let id = "aging/db";
    client.put(&put(id, b"old")).unwrap();
    client.put(&put(id, b"new")).unwrap();
    set_policy(&mut client, id, Policy { delete_version_after_seconds: 1, ..Policy::default() });
    let mut polls = 0;
    while client.get_version(id, 1).is_ok() {
        polls += 1;
        assert!(polls < 1000, "version 1 never retired");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(client.get_version(id, 1).unwrap_err().status(), Some(Status::Retired));
    assert_eq!(kept(&mut client, id), vec![(2, VersionState::Current), (1, VersionState::Retired)]);
    assert_eq!(client.get(id).unwrap().secret.expose(), b"new", "the current version never retires");
}

/// SIGKILL, from the log and (with a small compaction threshold) from snapshots.
#[test]
fn policies_survive_sigkill_through_the_log_and_snapshots() {
    let dirs = ProcessDirs::new();
    let args = ["--shards", "2", "--max-versions", "3", "--compact-log-bytes", "8192"];
    let (wide, strict) = ("wide/db", "strict/db");
    {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        client.put(&put(wide, b"1")).unwrap();
        set_policy(&mut client, wide, Policy { max_versions: 8, ..Policy::default() });
        for version in 2..=10u64 {
            client.put(&put(wide, format!("{version}").as_bytes())).unwrap();
        }
        client.put(&put(strict, b"1")).unwrap();
        set_policy(&mut client, strict, Policy { cas_required: true, ..Policy::default() });
        // Enough other writes for snapshots to be taken (and replayed) past these.
        common::write_past_a_snapshot(&mut client, &dirs.data_dir);
    } // SIGKILL
    for restart in 0..2 {
        let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
        let mut client = Client::connect(server.address.as_str()).unwrap();
        let versions: Vec<u64> = kept(&mut client, wide).iter().map(|(version, _)| *version).collect();
        assert_eq!(
            versions,
            (3..=10).rev().collect::<Vec<_>>(),
            "restart {restart}: 8 kept, past the server's 3"
        );
        assert_eq!(client.get_policy(wide).unwrap().max_versions, 8);
        let refused = client.put(&put(strict, b"x")).unwrap_err();
        assert_eq!(refused.status(), Some(Status::VersionConflict), "restart {restart}: {refused}");
    }
}
