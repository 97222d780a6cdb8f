//! No plaintext secret left in the server's memory once the connections that carried it are
//! closed: the whole writable memory of a real `credshard serve` process (heap, stacks,
//! anonymous mappings, read through /proc/PID/mem as a core dump would hold it) is searched
//! for secrets that were written, rotated, read, batch-read and forwarded between shards, in
//! sizes that make the connection buffers grow.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use common::process::{ProcessDirs, ServeProcess};
use common::{ids_on_every_shard, put};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::Client;

/// Occurrences of `needle` in every readable and writable mapping of process `pid`.
fn occurrences_in_memory(pid: i32, needle: &[u8]) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut memory = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (range, permissions) = (fields.next().unwrap(), fields.next().unwrap());
        if !permissions.starts_with("rw") {
            continue; // code and read-only data cannot hold what a client sent
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (u64::from_str_radix(start, 16).unwrap(), u64::from_str_radix(end, 16).unwrap());
        let mut bytes = vec![0u8; (end - start) as usize];
        if memory.seek(SeekFrom::Start(start)).is_err() || memory.read_exact(&mut bytes).is_err() {
            continue; // e.g. a guard page
        }
        found += bytes.windows(needle.len()).filter(|window| *window == needle).count();
    }
    found
}

/// A secret of `bytes` bytes that holds `canary` once, at its start.
fn secret_with(canary: &[u8], bytes: usize) -> Vec<u8> {
    let mut secret = canary.to_vec();
    secret.extend((0..bytes - canary.len()).map(|index| b'a' + (index % 26) as u8));
    secret
}

#[test]
fn no_plaintext_is_left_in_the_server_memory_after_its_connections_close() {
    let dirs = ProcessDirs::new();
    let server = ServeProcess::start(&dirs.data_dir, &dirs.key, &["--shards", "2"], |_| {});
    // Built at run time, so that the test binary's own memory is all that holds them.
    let canary = |what: &str| format!("MEMCANARY-{what}-{}", std::process::id()).into_bytes();
    let (written, rotated) = (canary("written"), canary("rotated"));
    let ids = ids_on_every_shard(2, 4);
    {
        let mut clients: Vec<Client> =
            (0..3).map(|_| Client::connect(server.address.as_str()).unwrap()).collect();
        for (index, id) in ids.iter().enumerate() {
            // Small and large secrets, on both shards (half of the writes are forwarded).
            let bytes = if index % 2 == 0 { 64 } else { 60 * 1024 };
            let client = &mut clients[index % 3];
            client.put(&put(id, &secret_with(&written, bytes))).unwrap();
            let rotate = RotateRequest {
                id,
                expected_version: None,
                grace_period_seconds: None,
                secret: &secret_with(&rotated, bytes),
            };
            client.rotate(&rotate).unwrap();
        }
        for client in &mut clients {
            for id in &ids {
                assert!(client.get(id).unwrap().secret.expose().starts_with(&rotated));
                assert!(client.get_version(id, 1).unwrap().secret.expose().starts_with(&written));
            }
            let batch: Vec<&str> = ids.iter().chain(ids.iter()).map(String::as_str).collect();
            assert!(client.batch_get(&batch).unwrap().iter().all(|item| item.is_ok()));
        }
    } // every connection closes
    std::thread::sleep(Duration::from_millis(300));
    for (name, canary) in [("written", &written), ("rotated", &rotated)] {
        let found = occurrences_in_memory(server.pid(), canary);
        assert_eq!(found, 0, "{found} copies of the {name} secret in the server's memory");
    }
}
