// The lifecycle tests' bodies, shared by the test files of each store (`lifecycle.rs`,
// `lifecycle_postgres.rs`), which define `start_with` and include this file.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ids_on_every_shard, put};
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{Client, Expiry, Status, VersionState};

fn rotate<'a>(id: &'a str, secret: &'a [u8], grace_period_seconds: Option<u64>) -> RotateRequest<'a> {
    RotateRequest { id, expected_version: None, grace_period_seconds, secret }
}

/// Polls `probe` every 10 ms until it returns true (at most ~10 s): the assertions are about
/// states, never about how long they took.
fn eventually(mut probe: impl FnMut() -> bool) -> bool {
    (0..1000).any(|_| {
        let done = probe();
        if !done {
            std::thread::sleep(Duration::from_millis(10));
        }
        done
    })
}

#[test]
fn every_kept_version_is_readable_and_the_eleventh_write_drops_version_1() {
    let Some(server) = start_with(2, |_| {}) else { return };
    let mut client = server.client();
    for id in ids_on_every_shard(2, 1) {
        for version in 1..=10u64 {
            assert_eq!(client.put(&put(&id, format!("secret {version}").as_bytes())).unwrap(), version);
        }
        for version in 1..=10u64 {
            let reply = client.get_version(&id, version).unwrap();
            assert_eq!(reply.secret.expose(), format!("secret {version}").as_bytes());
            assert_eq!(reply.metadata.version, version);
        }
        let meta = client.get_meta(&id).unwrap();
        let listed: Vec<u64> = meta.versions.iter().map(|info| info.version).collect();
        assert_eq!(listed, (1..=10).rev().collect::<Vec<_>>());
        assert!(meta.versions[1..].iter().all(|info| info.state == VersionState::Superseded));

        assert_eq!(client.put(&put(&id, b"secret 11")).unwrap(), 11);
        let error = client.get_version(&id, 1).unwrap_err();
        assert_eq!(error.status(), Some(Status::NotFound), "version 1 is no longer kept");
        assert_eq!(client.get_version(&id, 2).unwrap().secret.expose(), b"secret 2");
        assert_eq!(client.get_meta(&id).unwrap().versions.len(), 10);
    }
}

#[test]
fn rotate_keeps_the_previous_version_readable_for_its_grace_period_then_retires_it() {
    let Some(server) = start_with(2, |_| {}) else { return };
    let mut client = server.client();
    let mut request = put("rotated", b"old secret");
    request.kind = credshard_protocol::Kind::ApiKey;
    client.put(&request).unwrap();

    assert_eq!(client.rotate(&rotate("rotated", b"new secret", Some(1))).unwrap(), 2);
    let current = client.get("rotated").unwrap();
    assert_eq!(current.secret.expose(), b"new secret");
    assert_eq!(
        (current.metadata.owner.as_str(), current.metadata.kind),
        ("team-a", credshard_protocol::Kind::ApiKey)
    );
    // Inside its grace period the old secret is still served and GET_META says so: checked on
    // a credential rotated with an hour of grace, so that no stall of a slow machine can skip
    // the check.
    client.put(&put("in-grace", b"before")).unwrap();
    client.rotate(&rotate("in-grace", b"after", Some(3600))).unwrap();
    assert_eq!(client.get_version("in-grace", 1).unwrap().secret.expose(), b"before");
    assert_eq!(client.get_meta("in-grace").unwrap().versions[1].state, VersionState::PreviousInGrace);
    // After its 1 s grace, the secret of "rotated" v1 is refused but the metadata stays.
    assert!(eventually(
        || client.get_version("rotated", 1).err().and_then(|error| error.status()) == Some(Status::Retired)
    ));
    let versions = client.get_meta("rotated").unwrap().versions;
    assert_eq!(
        versions.iter().map(|info| (info.version, info.state)).collect::<Vec<_>>(),
        vec![(2, VersionState::Current), (1, VersionState::Retired)]
    );

    // Grace 0 retires at once; the default (24 h) keeps the previous version in grace.
    client.rotate(&rotate("rotated", b"third", Some(0))).unwrap();
    assert_eq!(client.get_version("rotated", 2).unwrap_err().status(), Some(Status::Retired));
    client.rotate(&rotate("rotated", b"fourth", None)).unwrap();
    assert_eq!(client.get_version("rotated", 3).unwrap().secret.expose(), b"third");
    assert_eq!(client.get_meta("rotated").unwrap().versions[1].state, VersionState::PreviousInGrace);

    // A plain PUT after a rotation supersedes: the replaced version stays readable.
    client.put(&put("rotated", b"fifth")).unwrap();
    assert_eq!(client.get_version("rotated", 4).unwrap().secret.expose(), b"fourth");

    // ROTATE needs an existing credential and honours compare-and-set.
    assert_eq!(client.rotate(&rotate("absent", b"x", None)).unwrap_err().status(), Some(Status::NotFound));
    let mut cas = rotate("rotated", b"sixth", None);
    cas.expected_version = Some(4);
    assert_eq!(client.rotate(&cas).unwrap_err().current_version(), Some(5));
    cas.expected_version = Some(5);
    assert_eq!(client.rotate(&cas).unwrap(), 6);
}

#[test]
fn expired_credentials_answer_expired_then_are_swept_from_memory() {
    let Some(server) = start_with(2, |config| config.sweep_interval_ms = 20) else { return };
    let mut client = server.client();
    let ids = ids_on_every_shard(2, 3);
    for id in &ids {
        let mut request = put(id, b"short-lived");
        // Long enough that the first read below comes before it even on a slow machine.
        request.expiry = Expiry::TtlMs(1_000);
        client.put(&request).unwrap();
    }
    client.put(&put("stays", b"forever")).unwrap();
    // A client polling sees the credential until it expires, then EXPIRED or (once swept)
    // NOT_FOUND, and never the secret again.
    let mut saw_value = false;
    assert!(eventually(|| match client.get(&ids[0]) {
        Ok(reply) => {
            saw_value = true;
            assert_eq!(reply.secret.expose(), b"short-lived");
            false
        }
        Err(error) => {
            assert!(matches!(error.status(), Some(Status::Expired | Status::NotFound)), "{error}");
            true
        }
    }));
    assert!(saw_value, "the credential was readable before its expiry");
    // Swept from memory, and (with a bounded cache, whose memory may hold none of them while
    // the database still does) from the store: each counted once.
    let swept = |client: &mut Client| client.stats().unwrap().get("expired_swept").unwrap_or(0);
    assert!(
        eventually(|| server.store().len() == 1 && swept(&mut client) >= ids.len() as u64),
        "expired credentials are swept"
    );
    assert_eq!(swept(&mut client), ids.len() as u64, "each counted once");
    assert_eq!(client.get(&ids[1]).unwrap_err().status(), Some(Status::NotFound));
    assert_eq!(client.get("stays").unwrap().secret.expose(), b"forever");
}

#[test]
fn batch_get_mixes_found_missing_and_expired_in_order() {
    let Some(server) = start_with(2, |_| {}) else { return };
    let mut client = server.client();
    let ids = ids_on_every_shard(2, 2);
    for id in &ids {
        client.put(&put(id, id.as_bytes())).unwrap();
    }
    let mut expired = put("expired-one", b"gone");
    expired.expiry = Expiry::AtUnixMs(1);
    client.put(&expired).unwrap();

    let asked = vec![
        ids[0].as_str(),
        "missing-one",
        ids[3].as_str(),
        "expired-one",
        ids[1].as_str(),
        ids[0].as_str(),
    ];
    let results = client.batch_get(&asked).unwrap();
    assert_eq!(results.len(), asked.len());
    for (id, result) in asked.iter().zip(&results) {
        match *id {
            "missing-one" => assert_eq!(result.as_ref().unwrap_err().status(), Some(Status::NotFound)),
            "expired-one" => assert_eq!(result.as_ref().unwrap_err().status(), Some(Status::Expired)),
            _ => {
                let reply = result.as_ref().unwrap();
                assert_eq!((reply.metadata.id.as_str(), reply.secret.expose()), (*id, id.as_bytes()));
            }
        }
    }

    let thousand: Vec<String> = (0..1000).map(|index| ids[index % ids.len()].clone()).collect();
    assert_eq!(client.batch_get(&thousand).unwrap().len(), 1000);
    // Over the limit: TOO_LARGE, and the connection carries on.
    let mut body = bytes::BytesMut::new();
    bytes::BufMut::put_u16_le(&mut body, 1001);
    for _ in 0..1001 {
        credshard_protocol::wire::put_str16(&mut body, "x");
    }
    let mut frame = bytes::BytesMut::new();
    let start = credshard_protocol::frame::begin(&mut frame, credshard_protocol::Op::BatchGet as u8, 77);
    frame.extend_from_slice(&body);
    credshard_protocol::frame::finish(&mut frame, start);
    std::io::Write::write_all(client.stream_mut(), &frame).unwrap();
    let reply = client.receive().unwrap();
    assert_eq!((reply.request_id, reply.status), (77, Status::TooLarge as u8));
    assert!(client.get(&ids[0]).is_ok());
}

fn list_all(client: &mut Client, owner: &str, scope: &str, limit: u16) -> Vec<String> {
    let mut listed = Vec::new();
    let mut cursor = Vec::new();
    loop {
        let page = client.list(&ListRequest { owner, scope, limit, cursor: &cursor }).unwrap();
        assert!(page.items.len() <= limit as usize);
        listed.extend(page.items.into_iter().map(|item| item.id));
        if page.next_cursor.is_empty() {
            return listed;
        }
        cursor = page.next_cursor;
    }
}

#[test]
fn list_pages_through_10000_credentials_of_one_owner_while_other_owners_write() {
    let Some(server) = start_with(2, |_| {}) else { return };
    let address = server.address();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Preload 10,000 credentials of one owner, pipelined.
    runtime.block_on(async {
        let client = credshard_protocol::AsyncClient::connect(address).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    for index in (task..10_000).step_by(16) {
                        let id = format!("listed-{index:05}");
                        let mut request = put(&id, b"secret");
                        request.owner = "big-owner";
                        request.scope = if index % 2 == 0 { "even" } else { "odd" };
                        client.put(&request).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });

    // Meanwhile, other owners keep writing.
    let stop = Arc::new(AtomicBool::new(false));
    let noise = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut client = Client::connect(address).unwrap();
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("noise-{}", writes % 500);
                let mut request = put(&id, b"noise");
                request.owner = if writes.is_multiple_of(3) { "other-a" } else { "other-b" };
                client.put(&request).unwrap();
                if writes.is_multiple_of(7) {
                    let _ = client.delete(&id, None);
                }
                writes += 1;
            }
            writes
        })
    };

    let mut client = server.client();
    let listed = list_all(&mut client, "big-owner", "", 1000);
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "no id repeated");
    assert_eq!(listed.len(), 10_000, "no id missed");
    let mut sorted = listed.clone();
    sorted.sort_by_key(|id| (id.trim_start_matches("listed-").parse::<u32>().unwrap() % 2 == 1, id.clone()));
    assert_eq!(listed, sorted, "ordered by (scope, id)");

    let odd = list_all(&mut client, "big-owner", "odd", 333);
    assert_eq!(odd.len(), 5_000);
    let by_scope = list_all(&mut client, "", "even", 1000);
    assert_eq!(by_scope.len(), 5_000);
    assert!(by_scope.windows(2).all(|pair| pair[0] < pair[1]), "ordered by id");

    stop.store(true, Ordering::Relaxed);
    assert!(noise.join().unwrap() > 0);

    // Bad requests: neither owner nor scope, a foreign cursor, a page too large.
    let status = |client: &mut Client, request: ListRequest<'_>| client.list(&request).unwrap_err().status();
    assert_eq!(
        status(&mut client, ListRequest { owner: "", scope: "", limit: 10, cursor: b"" }),
        Some(Status::Malformed)
    );
    assert_eq!(
        status(&mut client, ListRequest { owner: "big-owner", scope: "", limit: 10, cursor: b"S\x01\x00x" }),
        Some(Status::Malformed)
    );
    assert_eq!(
        status(&mut client, ListRequest { owner: "big-owner", scope: "", limit: 1001, cursor: b"" }),
        Some(Status::TooLarge)
    );
}
