//! Flow control with a real process: a client that pipelines far past the server's in-flight
//! limit, then only reads, gets every answer. The server stops taking requests at the limit;
//! it must take the buffered ones again as soon as writes finish, without waiting for more
//! input that will never come.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use common::process::{ProcessDirs, ServeProcess};
use common::{ids_on_every_shard, put};
use credshard_protocol::client::ResponseFrame;
use credshard_protocol::{Request, Status};

/// Pipelines `requests` PUTs over `ids` in `pieces` writes, then reads until every one is
/// answered. A server that stops answering fails the read timeout (generous: a liveness bound,
/// not a speed check).
fn pipeline_is_answered_in_full(server: &ServeProcess, ids: &[String], requests: u32, pieces: usize) {
    let mut bytes = BytesMut::new();
    for request_id in 1..=requests {
        let id = &ids[request_id as usize % ids.len()];
        Request::Put(put(id, format!("value {request_id}").as_bytes())).encode(request_id, &mut bytes);
    }
    let mut stream = std::net::TcpStream::connect(server.address.as_str()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    // Written from another thread (the server stops reading while its replies are unread),
    // in small pieces: each piece arriving while a write commits is a chance for the server to
    // take the frames it already holds late, or never.
    let sender = std::thread::spawn(move || {
        for piece in bytes.chunks(bytes.len().div_ceil(pieces)) {
            writer.write_all(piece)?;
        }
        std::io::Result::Ok(())
    });
    let mut answered = HashSet::new();
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while answered.len() < requests as usize {
        let read = stream.read(&mut chunk).unwrap_or_else(|error| {
            panic!("the pipeline stalled after {} of {requests} answers: {error}", answered.len())
        });
        assert_ne!(read, 0, "the server closed after {} of {requests} answers", answered.len());
        buffer.extend_from_slice(&chunk[..read]);
        while let Some(frame) = ResponseFrame::take(&mut buffer).unwrap() {
            assert_eq!(frame.status, Status::Ok as u8, "request {}", frame.request_id);
            assert!(answered.insert(frame.request_id), "request {} answered twice", frame.request_id);
        }
    }
    sender.join().unwrap().unwrap();
}

/// Starts a server that may use CPU 0 only (a child inherits the affinity of the thread that
/// spawns it): its executors share one CPU, so finished writes pile up between its turns,
/// which is how a loaded or pinned server meets this.
fn start_on_one_cpu(dirs: &ProcessDirs, args: &'static [&'static str]) -> ServeProcess {
    let (data_dir, key) = (dirs.data_dir.clone(), dirs.key.clone());
    std::thread::spawn(move || {
        // SAFETY: `set` is a zeroed local cpu_set_t; CPU_SET writes within it (0 < CPU_SETSIZE),
        // and sched_setaffinity only reads it and changes this thread's mask.
        let pinned = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        assert_eq!(pinned, 0, "pin the spawning thread to CPU 0");
        ServeProcess::start(&data_dir, &key, args, |_| {})
    })
    .join()
    .unwrap()
}

#[test]
fn a_pipeline_past_the_in_flight_limit_is_answered_in_full() {
    let dirs = ProcessDirs::new();
    // One executor: every write is local and waits for its group commit, one at a time.
    let server = start_on_one_cpu(&dirs, &["--shards", "1", "--in-flight-max", "1", "--fsync", "never"]);
    pipeline_is_answered_in_full(&server, &ids_on_every_shard(1, 16), 3_000, 300);
}

#[test]
fn a_pipeline_of_forwarded_writes_past_the_in_flight_limit_is_answered_in_full() {
    let dirs = ProcessDirs::new();
    // Two executors: half the writes are forwarded to the other shard.
    let server = start_on_one_cpu(&dirs, &["--shards", "2", "--in-flight-max", "3"]);
    let ids = ids_on_every_shard(2, 8);
    for pieces in [1, 1, 1, 30] {
        pipeline_is_answered_in_full(&server, &ids, 3_000, pieces);
    }
}
