//! WATCH over real TCP: a watcher sees every committed change of its filter exactly once and in
//! each credential's version order, across a restart of the watcher (resume) while writers
//! keep writing; filters and the token's reach decide what it is sent; a watcher that cannot
//! resume, or falls behind, is told so; and watching never holds a writer up.

mod common;

use std::time::Duration;

use common::{events_until, ids_on_every_shard, put, TestServer};
use credshard_engine::auth::hash_token;
use credshard_engine::config::FsyncMode;
use credshard_protocol::op::watch::{WatchFilter, WatchPosition, WatchRequest};
use credshard_protocol::{Client, PutRequest, Request, Status};

fn watch_all() -> WatchRequest<'static> {
    WatchRequest { filter: WatchFilter::All, resume: None }
}

#[test]
fn a_watcher_sees_every_change_exactly_once_in_version_order_across_its_own_restart() {
    let server = TestServer::start_with(2, |config| config.fsync = FsyncMode::Never);
    const WRITERS: usize = 4;
    const IDS_PER_WRITER: usize = 25;
    const WRITES_PER_ID: u64 = 200;
    let total = (WRITERS * IDS_PER_WRITER) as u64 * WRITES_PER_ID;
    let elapsed = common::a_resumed_watcher_sees_every_write_once(
        server.address(),
        &server,
        WRITERS,
        IDS_PER_WRITER,
        WRITES_PER_ID,
    );
    println!(
        "{total} writes in {elapsed:?} ({:.0}/s, debug build), every one seen once across a resume",
        total as f64 / elapsed.as_secs_f64()
    );
}

#[test]
fn every_kind_of_change_is_announced_with_its_version_and_never_a_secret() {
    let server = TestServer::start_with(1, |config| config.sweep_interval_ms = 10);
    let mut watcher = server.client();
    watcher.watch(&WatchRequest { filter: WatchFilter::Id("svc/db"), resume: None }).unwrap();
    let mut client = server.client();
    let id = "svc/db";
    common::every_kind_of_change_is_seen(&mut client, &mut watcher, id);
}

const ADMIN: &[u8] = b"cst_admin-token-0123456789";
const BILLING: &[u8] = b"cst_billing-meta-token-01";
const WRITER_ONLY: &[u8] = b"cst_writer-only-token-0123";

fn guarded_server() -> (TestServer, tempfile::TempDir) {
    let table = |id: &str, token: &[u8], rest: &str| {
        format!("[[token]]\nid = \"{id}\"\nsha256 = \"{}\"\n{rest}\n\n", hex::encode(hash_token(token)))
    };
    let text = table("admin", ADMIN, "ops = [\"*\"]")
        + &table("billing", BILLING, "ops = [\"read-meta\"]\nowners = [\"billing\"]")
        + &table("writer", WRITER_ONLY, "ops = [\"write\"]");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, text).unwrap();
    (TestServer::start_with(2, |config| config.tokens = Some(tokens)), dir)
}

#[test]
fn filters_and_the_tokens_reach_decide_what_a_watcher_is_sent() {
    let (server, _dir) = guarded_server();
    let connect = |token: &[u8]| Client::connect_with_token(server.address(), token).unwrap();
    // Before HELLO, and without the read-meta permission: refused.
    let mut anonymous = Client::connect_raw(server.address()).unwrap();
    assert_eq!(anonymous.watch(&watch_all()).unwrap_err().status(), Some(Status::Unauthorized));
    let mut writer = connect(WRITER_ONLY);
    assert_eq!(writer.watch(&watch_all()).unwrap_err().status(), Some(Status::Unauthorized));
    assert_eq!(
        writer.put(&put("still/served", b"x")).unwrap(),
        1,
        "a refused WATCH leaves the connection as it was"
    );

    let mut billing_all = connect(BILLING);
    billing_all.watch(&watch_all()).unwrap();
    let mut admin_prefix = connect(ADMIN);
    admin_prefix.watch(&WatchRequest { filter: WatchFilter::ScopePrefix("prod/"), resume: None }).unwrap();
    let mut admin_owner = connect(ADMIN);
    admin_owner.watch(&WatchRequest { filter: WatchFilter::Owner("ops"), resume: None }).unwrap();

    let mut admin = connect(ADMIN);
    let credentials = [
        ("a", "billing", "prod/x"),
        ("b", "ops", "prod/y"),
        ("c", "billing", "dev/z"),
        ("d", "ops", "dev/w"),
    ];
    for (id, owner, scope) in credentials {
        admin.put(&PutRequest { owner, scope, ..put(id, b"s") }).unwrap();
    }
    admin.put(&PutRequest { owner: "billing", scope: "prod/end", ..put("end", b"s") }).unwrap();
    admin.put(&PutRequest { owner: "ops", scope: "prod/end", ..put("end-ops", b"s") }).unwrap();
    let ids = |client: &mut Client, last: &str| -> Vec<String> {
        events_until(client, |event| event.id == last).into_iter().map(|event| event.id).collect()
    };
    assert_eq!(ids(&mut billing_all, "end"), vec!["a", "c", "end"], "the token reaches billing only");
    assert_eq!(ids(&mut admin_prefix, "end-ops"), vec!["a", "b", "end", "end-ops"]);
    assert_eq!(ids(&mut admin_owner, "end-ops"), vec!["b", "d", "end-ops"]);
}

#[test]
fn a_watcher_that_stops_reading_holds_no_writer_up_and_is_told_it_fell_behind() {
    let server = TestServer::start_with(2, |config| {
        config.fsync = FsyncMode::Never;
        config.watch_history_events = 64;
    });
    let mut watcher = server.client();
    watcher.watch(&watch_all()).unwrap();
    // Long ids make each event large: 30,000 of them are about 8 MB, far more than the socket
    // buffers hold (a watcher's send buffer is limited, and a receive buffer that is not read
    // stays at its initial size).
    let ids: Vec<String> = (0..50).map(|index| format!("{index:03}/{}", "x".repeat(200))).collect();
    let mut writer = server.client();
    let mut written = 0u64;
    for _ in 0..600 {
        for id in &ids {
            writer.send(&Request::Put(put(id, b"s")));
        }
        writer.flush().unwrap();
        for _ in &ids {
            assert_eq!(writer.receive().unwrap().status, Status::Ok as u8);
            written += 1;
        }
    }
    assert_eq!(written, 30_000, "every write was answered while the watcher read nothing");
    // Now it reads: what the buffers held, then the end of the stream.
    watcher.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut received = 0u64;
    let error = loop {
        match watcher.next_event() {
            Ok(_) => received += 1,
            Err(error) => break error,
        }
    };
    assert_eq!(error.status(), Some(Status::Unavailable), "{error}");
    assert!(error.to_string().contains("fell behind"), "{error}");
    assert!(received < written, "{received} events before the end");
    let stats = server.client().stats().unwrap();
    assert_eq!(stats.get("watchers_behind"), Some(1));
}

#[test]
fn a_resume_from_too_far_back_or_another_run_is_not_claimed_as_a_resume() {
    let server = TestServer::start_with(1, |config| config.watch_history_events = 16);
    let mut watcher = server.client();
    let reply = watcher.watch(&watch_all()).unwrap();
    let position = WatchPosition::from_reply(&reply);
    drop(watcher);
    let mut client = server.client();
    for index in 0..40 {
        client.put(&put(&format!("id-{index}"), b"s")).unwrap();
    }
    // The feed holds the last 16 changes: the 24 before them are gone.
    let mut late = server.client();
    let reply = late.watch(&WatchRequest { filter: WatchFilter::All, resume: position.resume() }).unwrap();
    assert!(!reply.resumed, "changes were missed: the client must read the state again");
    client.put(&put("after", b"s")).unwrap();
    assert_eq!(late.next_event().unwrap().id, "after", "it starts with the next change");
    // A position of another run of the server.
    let mut other = server.client();
    let foreign =
        WatchRequest { filter: WatchFilter::All, resume: Some((reply.epoch ^ 1, reply.start.clone())) };
    assert!(!other.watch(&foreign).unwrap().resumed);
    // A position within what the feed holds resumes.
    let mut recent = WatchPosition::from_reply(&reply);
    recent.seqs[0] -= 5;
    let mut resumed = server.client();
    let reply = resumed.watch(&WatchRequest { filter: WatchFilter::All, resume: recent.resume() }).unwrap();
    assert!(reply.resumed);
    let replayed: Vec<String> = (0..6).map(|_| resumed.next_event().unwrap().id).collect();
    assert_eq!(replayed, vec!["id-35", "id-36", "id-37", "id-38", "id-39", "after"]);
}

#[test]
fn writes_pipelined_before_a_watch_are_answered_first_and_malformed_watches_are_refused() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let ids = ids_on_every_shard(2, 2);
    let mut sent = Vec::new();
    for id in &ids {
        sent.push(client.send(&Request::Put(put(id, b"s"))));
    }
    let watch_id = client.send(&Request::Watch(watch_all()));
    client.flush().unwrap();
    // Writes on two shards: their replies may come in any order, but all before the WATCH's.
    let mut answered: Vec<u32> = (0..sent.len())
        .map(|_| {
            let frame = client.receive().unwrap();
            assert_eq!(frame.status, Status::Ok as u8);
            frame.request_id
        })
        .collect();
    answered.sort();
    assert_eq!(answered, sent);
    let reply = client.receive().unwrap();
    assert_eq!((reply.request_id, reply.status), (watch_id, Status::Ok as u8));

    // A WATCH that does not decode is an ordinary bad request: the connection stays a
    // request-reply one.
    let mut raw = server.client();
    let mut frame = bytes::BytesMut::new();
    let start = credshard_protocol::frame::begin(&mut frame, 0x1B, 5);
    frame.extend_from_slice(&[9, 0, 0]); // filter kind 9
    credshard_protocol::frame::finish(&mut frame, start);
    use std::io::Write;
    raw.stream_mut().write_all(&frame).unwrap();
    let answer = raw.receive().unwrap();
    assert_eq!((answer.request_id, answer.status), (5, Status::Malformed as u8));
    assert_eq!(raw.put(&put("still/here", b"s")).unwrap(), 1);
}

#[test]
fn the_async_client_streams_events_too() {
    let server = TestServer::start(2);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let watcher = credshard_protocol::AsyncClient::connect(server.address()).await.unwrap();
        let mut stream = watcher
            .watch(&WatchRequest { filter: WatchFilter::Owner("team-a"), resume: None })
            .await
            .unwrap();
        assert!(!stream.reply.resumed);
        let writer = credshard_protocol::AsyncClient::connect(server.address()).await.unwrap();
        for id in ids_on_every_shard(2, 2) {
            writer.put(&put(&id, b"s")).await.unwrap();
        }
        writer.put(&PutRequest { owner: "team-b", ..put("other", b"s") }).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            let event =
                tokio::time::timeout(Duration::from_secs(30), stream.next_event()).await.unwrap().unwrap();
            seen.push(event.id);
        }
        seen.sort();
        let mut expected = ids_on_every_shard(2, 2);
        expected.sort();
        assert_eq!(seen, expected, "team-b's change is filtered out");
    });
}

#[test]
fn a_reload_that_narrows_or_revokes_the_token_applies_to_an_open_stream() {
    const WATCHER: &[u8] = b"cst_watcher-token-0123456";
    let table = |id: &str, token: &[u8], rest: &str| {
        format!("[[token]]\nid = \"{id}\"\nsha256 = \"{}\"\n{rest}\n\n", hex::encode(hash_token(token)))
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let write_tokens = |watcher: Option<&str>| {
        let mut text = table("admin", ADMIN, "ops = [\"*\"]");
        if let Some(owners) = watcher {
            text += &table("watcher", WATCHER, &format!("ops = [\"read-meta\"]\nowners = [{owners}]"));
        }
        std::fs::write(&tokens, text).unwrap();
    };
    write_tokens(Some("\"billing\", \"ops\""));
    let server = TestServer::start_with(2, |config| config.tokens = Some(tokens.clone()));
    let mut watcher = Client::connect_with_token(server.address(), WATCHER).unwrap();
    watcher.watch(&watch_all()).unwrap();
    let mut admin = Client::connect_with_token(server.address(), ADMIN).unwrap();
    admin.put(&PutRequest { owner: "billing", ..put("b1", b"s") }).unwrap();
    assert_eq!(events_until(&mut watcher, |_| true)[0].id, "b1");

    write_tokens(Some("\"ops\""));
    server.handle.reload().unwrap();
    admin.put(&PutRequest { owner: "billing", ..put("b2", b"s") }).unwrap();
    admin.put(&PutRequest { owner: "ops", ..put("o1", b"s") }).unwrap();
    assert_eq!(events_until(&mut watcher, |_| true)[0].id, "o1", "billing is out of its reach now");

    write_tokens(None);
    server.handle.reload().unwrap();
    admin.put(&PutRequest { owner: "ops", ..put("o2", b"s") }).unwrap();
    let ended = watcher.next_event().unwrap_err();
    assert_eq!(ended.status(), Some(Status::Unauthorized), "{ended}");
}
