//! Shared helpers for the integration tests: a real server on an ephemeral port with its own
//! temp data dir, and request builders.

#![allow(dead_code)]

pub mod postgres;
pub mod process;

use std::sync::Arc;

use credshard_engine::crypto::{KeySource, MasterKey};
use credshard_engine::{Server, ServerConfig, ServerHandle};
use credshard_protocol::{Client, Expiry, Kind, Labels, PutRequest, EMPTY_LABELS};

pub struct TestServer {
    pub handle: ServerHandle,
    pub data_dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with `shards` executors on 127.0.0.1:0.
    pub fn start(shards: usize) -> TestServer {
        TestServer::start_with(shards, |_| {})
    }

    pub fn start_with(shards: usize, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        TestServer::try_start_with_key(shards, MasterKey::generate(), adjust).expect("server starts")
    }

    /// A server with the given master key (servers sharing a database need the same one).
    pub fn try_start_with_key(
        shards: usize,
        key: MasterKey,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Result<TestServer, credshard_engine::EngineError> {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.path().to_owned(),
            shards: Some(shards),
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let handle = Server::start(&config, KeySource::Key(key))?;
        Ok(TestServer { handle, data_dir })
    }

    pub fn address(&self) -> std::net::SocketAddr {
        self.handle.local_address()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.address()).expect("connect")
    }

    pub fn store(&self) -> &Arc<credshard_engine::Store> {
        self.handle.store()
    }
}

/// A PUT with fixed owner and scope, no CAS, no expiry, no labels.
pub fn put<'a>(id: &'a str, secret: &'a [u8]) -> PutRequest<'a> {
    PutRequest {
        id,
        owner: "team-a",
        scope: "prod",
        kind: Kind::Password,
        expected_version: None,
        expiry: Expiry::Never,
        labels: Labels::from_validated(EMPTY_LABELS),
        secret,
    }
}

/// A DELETE that purges at once.
pub fn purging(id: &str) -> credshard_protocol::op::delete::DeleteRequest<'_> {
    credshard_protocol::op::delete::DeleteRequest {
        purge: true,
        ..credshard_protocol::op::delete::DeleteRequest::new(id, None)
    }
}

/// Reads WATCH events until `done` says stop (at most ~30 s without one).
pub fn events_until(
    client: &mut Client,
    mut done: impl FnMut(&credshard_protocol::op::watch::WatchEvent) -> bool,
) -> Vec<credshard_protocol::op::watch::WatchEvent> {
    client.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut events = Vec::new();
    loop {
        let event = client.next_event().expect("an event");
        let stop = done(&event);
        events.push(event);
        if stop {
            return events;
        }
    }
}

/// Makes one change of every kind to `id` (and one PUT of another credential), secrets named
/// "canary-…"; returns what a watcher of `id` is told, in order. The last version expires at
/// once: its EXPIRE comes with the server's next sweep.
pub fn every_kind_of_change(
    client: &mut Client,
    id: &str,
) -> Vec<(credshard_protocol::op::watch::Change, u64)> {
    use credshard_protocol::op::policy::{Policy, SetPolicyRequest};
    use credshard_protocol::op::rotate::RotateRequest;
    use credshard_protocol::op::stage::PromoteRequest;
    use credshard_protocol::op::watch::Change;
    client.put(&put(id, b"canary-1")).unwrap();
    client.put(&put(&format!("{id}-other"), b"x")).unwrap();
    client
        .rotate(&RotateRequest {
            id,
            expected_version: None,
            grace_period_seconds: None,
            secret: b"canary-2",
        })
        .unwrap();
    client.stage(&put(id, b"canary-3")).unwrap();
    client.promote(&PromoteRequest { id, expected_version: None, grace_period_seconds: None }).unwrap();
    client.destroy(id, 1).unwrap();
    client.delete(id, None).unwrap();
    client.undelete(id).unwrap();
    client.delete_with(&purging(id)).unwrap();
    client.put(&PutRequest { expiry: Expiry::TtlMs(60_000), ..put(id, b"canary-4") }).unwrap();
    let policy = Policy { max_versions: 2, ..Default::default() };
    client.set_policy(&SetPolicyRequest { id, policy }).unwrap();
    client.put(&PutRequest { expiry: Expiry::TtlMs(1), ..put(id, b"canary-5") }).unwrap();
    vec![
        (Change::Put, 1),
        (Change::Rotate, 2),
        (Change::Stage, 3),
        (Change::Promote, 3),
        (Change::Destroy, 1),
        (Change::Delete, 3),
        (Change::Undelete, 3),
        (Change::Purge, 3),
        (Change::Put, 4),
        (Change::Policy, 4),
        (Change::Put, 5),
        (Change::Expire, 5),
    ]
}

/// Makes [`every_kind_of_change`] to `id` through `client` and checks that `watcher` (watching
/// `id`) is told of each, in order, with its version, owner and scope, and never a secret.
pub fn every_kind_of_change_is_seen(client: &mut Client, watcher: &mut Client, id: &str) {
    let expected = every_kind_of_change(client, id);
    let mut left = expected.len();
    let events = events_until(watcher, |_| {
        left -= 1;
        left == 0
    });
    let seen: Vec<_> = events.iter().map(|event| (event.change, event.version)).collect();
    assert_eq!(seen, expected);
    for event in &events {
        assert_eq!((event.id.as_str(), event.owner.as_str(), event.scope.as_str()), (id, "team-a", "prod"));
        assert!(event.seq > 0 && event.at_ms > 0);
    }
    // Events carry no secret: the raw frames never hold one.
    assert!(!format!("{events:?}").contains("canary"));
}

/// `writers` connections to `write_to` each PUT their own `ids_per_writer` credentials
/// `writes_per_id` times (a pipeline of one write per id), while a watcher of every change on
/// `watch_on` reads a third of the changes, goes away mid-stream and resumes from its position.
/// Checks that it saw every write exactly once, in each credential's version order, and
/// nothing more; returns how long the writes took.
pub fn a_resumed_watcher_sees_every_write_once(
    write_to: std::net::SocketAddr,
    watch_on: &TestServer,
    writers: usize,
    ids_per_writer: usize,
    writes_per_id: u64,
) -> std::time::Duration {
    use credshard_protocol::op::watch::{Change, WatchFilter, WatchPosition, WatchRequest};
    use credshard_protocol::{Request, Status};
    let total = (writers * ids_per_writer) as u64 * writes_per_id;
    let mut watcher = watch_on.client();
    let first = watcher.watch(&WatchRequest { filter: WatchFilter::All, resume: None }).unwrap();
    assert!(!first.resumed, "no resume was asked for");
    let mut position = WatchPosition::from_reply(&first);
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            std::thread::spawn(move || {
                let mut client = Client::connect(write_to).unwrap();
                let ids: Vec<String> =
                    (0..ids_per_writer).map(|index| format!("w{writer}/{index}")).collect();
                for _ in 0..writes_per_id {
                    for id in &ids {
                        client.send(&Request::Put(put(id, b"s")));
                    }
                    client.flush().unwrap();
                    for _ in &ids {
                        assert_eq!(client.receive().unwrap().status, Status::Ok as u8);
                    }
                }
            })
        })
        .collect();
    let mut count = 0;
    let mut seen = events_until(&mut watcher, |_| {
        count += 1;
        count == total / 3
    });
    for event in &seen {
        position.advance(event);
    }
    drop(watcher);
    std::thread::sleep(std::time::Duration::from_millis(50)); // changes go on while it is away
    let mut watcher = watch_on.client();
    let resumed =
        watcher.watch(&WatchRequest { filter: WatchFilter::All, resume: position.resume() }).unwrap();
    assert!(resumed.resumed, "the server still holds every change since the position");
    seen.extend(events_until(&mut watcher, |_| {
        count += 1;
        count == total
    }));
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = started.elapsed();
    // Exactly once, in version order, for every id.
    let mut versions: std::collections::HashMap<&str, Vec<u64>> = std::collections::HashMap::new();
    for event in &seen {
        assert_eq!(event.change, Change::Put);
        versions.entry(event.id.as_str()).or_default().push(event.version);
    }
    assert_eq!(versions.len(), writers * ids_per_writer);
    for (id, versions) in &versions {
        assert_eq!(*versions, (1..=writes_per_id).collect::<Vec<_>>(), "{id}");
    }
    // Nothing more is pending for it.
    watcher.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
    assert!(watcher.next_event().is_err(), "no event beyond the writes");
    elapsed
}

/// Every file below `dir`, recursively.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Writes other credentials until the server has written a snapshot into `data_dir` (a small
/// `--compact-log-bytes` makes 200 of 256 B enough), so that a restart replays a snapshot and
/// not only the log; asserts that it did.
pub fn write_past_a_snapshot(client: &mut Client, data_dir: &std::path::Path) {
    for index in 0..200 {
        client.put(&put(&format!("filler-{}", index % 20), &[b'f'; 256])).unwrap();
    }
    let snapshots = walk(data_dir)
        .iter()
        .filter(|path| path.extension().is_some_and(|extension| extension == "snapshot"))
        .count();
    assert!(snapshots > 0, "a snapshot was written (raise the writes or lower --compact-log-bytes)");
}

/// Ids that land on each of `shards` shards (at least `per_shard` each).
pub fn ids_on_every_shard(shards: usize, per_shard: usize) -> Vec<String> {
    let mut found: Vec<Vec<String>> = vec![Vec::new(); shards];
    let mut index = 0;
    while found.iter().any(|ids| ids.len() < per_shard) {
        let id = format!("cred-{index}");
        let shard = credshard_engine::data::keyspace::shard_for(&id, shards);
        if found[shard].len() < per_shard {
            found[shard].push(id);
        }
        index += 1;
    }
    found.into_iter().flatten().collect()
}
