//! Hostile clients against a real `credshard serve` process: whatever one client does, the
//! server's memory and audit log stay bounded, its connection slots come back, and honest
//! clients keep being served.
//!
//! - a client without a token flooding refused requests (BATCH_GETs of many ids) costs the
//!   audit log one line and is closed;
//! - clients that send requests and never read their replies are closed by the write timeout;
//! - idle connections are closed; a connection whose token a reload revoked must
//!   authenticate again in time;
//! - reads of large secrets pipelined without reading hold a bounded amount of memory, and a
//!   BATCH_GET reply is capped;
//! - connections without a token cannot park large frames in memory;
//! - a client that records audit events faster than the log is written slows every client
//!   down to what the log can write, and gets none of them refused.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::process::{ProcessDirs, ServeProcess};
use common::{put, walk};
use credshard_engine::auth::hash_token;
use credshard_protocol::client::ResponseFrame;
use credshard_protocol::op::batch_get::BatchGetRequest;
use credshard_protocol::op::get::GetRequest;
use credshard_protocol::{Client, Request, Status};

const ADMIN: &[u8] = b"cst_hostile-test-admin-token";

/// A tokens file's `[[token]]` table for `token`, with id `id` and the ops in `ops` (TOML).
fn token_table(id: &str, token: &[u8], ops: &str) -> String {
    format!("[[token]]\nid = \"{id}\"\nsha256 = \"{}\"\nops = {ops}\n", hex::encode(hash_token(token)))
}

/// A tokens file with one admin token, beside the data dir.
fn tokens_file(dirs: &ProcessDirs) -> PathBuf {
    let path = dirs.dir.path().join("tokens.toml");
    std::fs::write(&path, token_table("admin", ADMIN, "[\"*\"]")).unwrap();
    path
}

/// Every frame the server sends until it closes the connection (10 s at most).
fn frames_until_closed(stream: &mut TcpStream) -> Vec<ResponseFrame> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes); // a reset after the last frame is fine
    let mut buffer = BytesMut::from(&bytes[..]);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = ResponseFrame::take(&mut buffer) {
        frames.push(frame);
    }
    frames
}

/// The body of a BATCH_GET of `ids` (borrowed by the request built from it).
fn batch_body(ids: &[&str]) -> BytesMut {
    let mut body = BytesMut::new();
    BatchGetRequest::encode(ids, &mut body);
    body
}

fn encoded(requests: &[Request<'_>]) -> BytesMut {
    let mut bytes = BytesMut::new();
    for (index, request) in requests.iter().enumerate() {
        request.encode(index as u32 + 1, &mut bytes);
    }
    bytes
}

/// Polls `condition` (every 20 ms, 20 s at most): for what the server does in the background.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stat(client: &mut Client, name: &str) -> u64 {
    client.stats().unwrap().get(name).unwrap_or_else(|| panic!("no {name} in STATS"))
}

fn audit_lines(data_dir: &Path) -> Vec<String> {
    walk(&data_dir.join("audit"))
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn refused_requests_without_a_token_cost_the_audit_log_one_line_and_close_the_connection() {
    let dirs = ProcessDirs::new();
    let tokens = tokens_file(&dirs);
    let server =
        ServeProcess::start(&dirs.data_dir, &dirs.key, &["--tokens", tokens.to_str().unwrap()], |_| {});
    let ids: Vec<String> = (0..200).map(|index| format!("probe/{index:04}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let body = batch_body(&id_refs);
    let batch = BatchGetRequest::from_encoded(&body).unwrap();
    let flood: Vec<Request<'_>> = (0..100).map(|_| Request::BatchGet(batch)).collect();
    let bytes = encoded(&flood);

    let attackers = 5;
    for _ in 0..attackers {
        let mut stream = TcpStream::connect(server.address.as_str()).unwrap();
        let _ = stream.write_all(&bytes); // the server may close before taking it all
        let frames = frames_until_closed(&mut stream);
        let refusals = frames.iter().filter(|frame| frame.request_id != 0).count();
        assert_eq!(refusals, 16, "refused 16 times, then closed");
        assert!(frames.iter().all(|frame| frame.status == Status::Unauthorized as u8));
        assert_eq!(frames.last().unwrap().request_id, 0, "a connection-level frame says why it closes");
    }
    let mut admin = Client::connect_with_token(server.address.as_str(), ADMIN).unwrap();
    assert_eq!(stat(&mut admin, "connections_closed_refusals"), attackers);
    assert!(stat(&mut admin, "unauthorized_total") >= 16 * attackers);
    assert!(admin.ping(b"still serving").is_ok());
    drop(admin);
    assert!(server.stop().success());

    let anonymous: Vec<String> =
        audit_lines(&dirs.data_dir).into_iter().filter(|line| line.contains("\"token\":\"-\"")).collect();
    assert_eq!(anonymous.len(), attackers as usize, "one line per connection: {anonymous:#?}");
    let audit_bytes: usize = anonymous.iter().map(String::len).sum();
    assert!(
        audit_bytes < 300 * attackers as usize,
        "{audit_bytes} bytes of audit for {} bytes sent",
        bytes.len()
    );
}

#[test]
fn clients_that_never_read_are_closed_and_their_slots_come_back() {
    let dirs = ProcessDirs::new();
    let args = ["--shards", "1", "--connections-max", "21", "--write-timeout-ms", "300"];
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut honest = Client::connect(server.address.as_str()).unwrap();
    honest.put(&put("kept", b"value")).unwrap();
    // Twenty connections fill every other slot, each sending PINGs of 64 KiB (echoed back:
    // 26 MB of replies) and reading nothing. Each writes from its own thread: the server stops
    // reading from a connection whose replies it cannot send.
    let payload = vec![b'p'; 64 * 1024];
    let pings: Vec<Request<'_>> = (0..400).map(|_| Request::Ping(&payload)).collect();
    let bytes = encoded(&pings);
    let hostile: Vec<_> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(server.address.as_str()).unwrap();
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let _ = stream.write_all(&bytes); // fails once the server gives up on it
                stream
            })
        })
        .collect();
    eventually("every non-reading connection timed out", || stat(&mut honest, "connections_timed_out") >= 20);
    eventually("their slots are free", || stat(&mut honest, "connections_open") == 1);
    for _ in 0..20 {
        let mut fresh = Client::connect(server.address.as_str()).unwrap();
        assert_eq!(fresh.get("kept").unwrap().secret.expose(), b"value");
    }
    for sender in hostile {
        drop(sender.join().unwrap());
    }
}

#[test]
fn idle_connections_are_closed_authenticated_or_not() {
    let dirs = ProcessDirs::new();
    let tokens = tokens_file(&dirs);
    let args = ["--tokens", tokens.to_str().unwrap(), "--idle-timeout-ms", "300"];
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    // Authenticated, then silent: closed with a connection-level UNAVAILABLE frame.
    let mut idle = Client::connect_with_token(server.address.as_str(), ADMIN).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    idle.ping(b"hello").unwrap();
    let frame = idle.receive().expect("the idle close frame");
    assert_eq!((frame.request_id, frame.status), (0, Status::Unavailable as u8));
    assert!(idle.receive().is_err(), "then the connection is closed");
    let mut admin = Client::connect_with_token(server.address.as_str(), ADMIN).unwrap();
    assert!(stat(&mut admin, "connections_timed_out") >= 1);
}

#[test]
fn a_connection_that_keeps_talking_outlives_its_idle_timeout_then_is_closed_when_silent() {
    let dirs = ProcessDirs::new();
    let args = ["--shards", "1", "--idle-timeout-ms", "1000"];
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut busy = Client::connect(server.address.as_str()).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Requests 50 ms apart for 2.5 times the idle timeout: the read timer, armed once and
    // left in place between reads, fires twice meanwhile and must re-arm from the last
    // request instead of closing the connection.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2_500) {
        busy.ping(b"still here").expect("an active connection stays open");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then silent: closed with the idle frame.
    let frame = busy.receive().expect("the idle close frame");
    assert_eq!((frame.request_id, frame.status), (0, Status::Unavailable as u8));
    let mut other = Client::connect(server.address.as_str()).unwrap();
    assert_eq!(stat(&mut other, "connections_timed_out"), 1);
}

#[test]
fn a_connection_whose_token_a_reload_revoked_must_authenticate_again_in_time() {
    let dirs = ProcessDirs::new();
    let tokens = tokens_file(&dirs);
    let args = ["--tokens", tokens.to_str().unwrap(), "--auth-timeout-ms", "300"];
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut revoked = Client::connect_with_token(server.address.as_str(), ADMIN).unwrap();
    revoked.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // past the first auth deadline: it is cleared
    revoked.ping(b"ok").unwrap();
    std::fs::write(&tokens, token_table("other", b"cst_other", "[\"read\"]")).unwrap();
    // SAFETY: kill(2) only sends a signal to a server process this test started; no memory is shared.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    eventually("the reload revokes the token", || {
        revoked.ping(b"still?").err().and_then(|error| error.status()) == Some(Status::Unauthorized)
    });
    // One refusal, then silence: the connection must authenticate again within the auth
    // timeout, or be closed with the deadline's frame.
    let frame = revoked.receive().expect("the auth deadline's frame");
    assert_eq!((frame.request_id, frame.status), (0, Status::Unauthorized as u8));
    assert!(revoked.receive().is_err(), "then the connection is closed");
}

#[test]
fn batch_get_replies_are_capped() {
    let dirs = ProcessDirs::new();
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--shards", "1"], |_| {});
    let mut client = Client::connect(server.address.as_str()).unwrap();
    let secret = vec![b'x'; 64 * 1024];
    client.put(&put("large", &secret)).unwrap();
    // One BATCH_GET of the same 64 KiB secret 1000 times (64 MB asked for): capped at
    // --batch-reply-bytes-max (4 MiB), the rest of the ids answered TOO_LARGE, to be asked for
    // again.
    let results = client.batch_get(&vec!["large"; 1000]).unwrap();
    let served = results.iter().filter(|result| result.is_ok()).count();
    assert!((1..=64).contains(&served), "{served} secrets in one reply");
    assert!(results[served..]
        .iter()
        .all(|result| { result.as_ref().err().and_then(|error| error.status()) == Some(Status::TooLarge) }));
    assert_eq!(client.get("large").unwrap().secret.expose(), &secret[..]);
}

#[test]
fn pipelined_reads_that_are_never_read_hold_bounded_memory() {
    let dirs = ProcessDirs::new();
    // The write timeout is long here: this is about what the server holds meanwhile.
    let args = ["--shards", "1", "--write-timeout-ms", "60000"];
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut honest = Client::connect(server.address.as_str()).unwrap();
    let secret = vec![b'x'; 64 * 1024];
    honest.put(&put("large", &secret)).unwrap();
    // Three connections each pipeline 2000 GETs of a 64 KiB secret (128 MB of replies; 800
    // requests fit in one 16 KiB read) and never read.
    let gets: Vec<Request<'_>> = (0..2000).map(|_| Request::Get(GetRequest::new("large", 0))).collect();
    let bytes = encoded(&gets);
    let before = server.rss_bytes();
    let reads_before = stat(&mut honest, "reads_total");
    let hostile: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(server.address.as_str()).unwrap();
            stream.write_all(&bytes).unwrap();
            stream
        })
        .collect();
    // The server takes their requests only while their replies can be sent: it stops once
    // the sockets are full (a few MB each), far short of one read's worth per connection.
    let mut served = 0;
    let mut unchanged_since = Instant::now();
    while unchanged_since.elapsed() < Duration::from_millis(500) {
        let now_served = stat(&mut honest, "reads_total") - reads_before;
        if now_served != served {
            (served, unchanged_since) = (now_served, Instant::now());
        }
        assert!(served < 1500, "{served} requests were taken while no reply was read");
        std::thread::sleep(Duration::from_millis(50));
    }
    let grown = server.rss_bytes().saturating_sub(before);
    assert!(grown < 48 << 20, "RSS grew by {} MiB with {served} replies unread", grown >> 20);
    assert_eq!(honest.get("large").unwrap().secret.expose(), &secret[..], "honest clients are served");
    drop(hostile);
}

#[test]
fn connections_without_a_token_cannot_park_large_frames() {
    let dirs = ProcessDirs::new();
    let tokens = tokens_file(&dirs);
    let server =
        ServeProcess::start(&dirs.data_dir, &dirs.key, &["--tokens", tokens.to_str().unwrap()], |_| {});
    // The header of a frame just under the 1 MiB limit, and most of its body.
    let mut frame = ((1u32 << 20) - 5).to_le_bytes().to_vec();
    frame.extend_from_slice(&[0x10, 0, 7, 0, 0, 0]);
    frame.resize(1 << 20, b'A');
    let before = server.rss_bytes();
    let senders: Vec<_> = (0..100)
        .map(|_| {
            let address = server.address.clone();
            let frame = frame.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address.as_str()).unwrap();
                let _ = stream.write_all(&frame); // refused once the header arrives
                frames_until_closed(&mut stream)
            })
        })
        .collect();
    let mut peak = 0;
    for sender in senders {
        let frames = sender.join().unwrap();
        peak = peak.max(server.rss_bytes().saturating_sub(before));
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].status, frames[0].request_id), (Status::TooLarge as u8, 7));
    }
    assert!(peak < 32 << 20, "RSS grew by {} MiB", peak >> 20);
    let mut admin = Client::connect_with_token(server.address.as_str(), ADMIN).unwrap();
    assert!(admin.ping(b"fine").is_ok());
}

#[test]
fn a_client_that_outruns_the_audit_log_slows_everyone_down_but_gets_nobody_refused() {
    let dirs = ProcessDirs::new();
    // The audit log is written every 4 s: a client pipelining reads as fast as it can records
    // more than half the backlog limit (8 MiB) in between.
    let args = ["--shards", "1", "--audit-flush-ms", "4000"];
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {});
    let mut honest = Client::connect(server.address.as_str()).unwrap();
    honest.put(&put("kept", b"value")).unwrap();
    let attack_for = Duration::from_secs(8);
    let gets: Vec<Request<'_>> = (0..2_000).map(|_| Request::Get(GetRequest::new("missing", 0))).collect();
    let bytes = encoded(&gets);
    let mut stream = TcpStream::connect(server.address.as_str()).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 20];
        while reader.read(&mut buffer).is_ok_and(|read| read > 0) {}
    });
    let flood = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < attack_for {
            stream.write_all(&bytes).unwrap();
        }
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    });
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < attack_for {
        match honest.get("kept") {
            Ok(reply) => assert_eq!(reply.secret.expose(), b"value"),
            Err(error) => panic!("an honest read was refused while another client flooded: {error}"),
        }
        answered += 1;
    }
    flood.join().unwrap();
    drain.join().unwrap();
    assert!(answered > 0);
    assert!(stat(&mut honest, "audit_waits") > 0, "the flood did make the audit log busy");
    assert_eq!(stat(&mut honest, "audit_events_dropped"), 0);
}
