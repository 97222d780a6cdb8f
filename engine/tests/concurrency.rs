//! Pipelining, out-of-order replies, concurrent compare-and-set, and connections spread over
//! executors, all over real TCP against a 2-shard server.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};

use common::{ids_on_every_shard, put, TestServer};
use credshard_protocol::client::{self, ResponseFrame};
use credshard_protocol::op::get::GetReply;
use credshard_protocol::op::put::PutReply;
use credshard_protocol::{AsyncClient, Status};

/// What each pipelined request was, to check its reply.
enum Sent {
    Get { id: String, secret: Vec<u8> },
    Put { id: String },
    Missing,
    Ping(Vec<u8>),
}

#[test]
fn pipelined_burst_of_10000_mixed_requests_on_one_connection() {
    let server = TestServer::start(2);
    let ids = ids_on_every_shard(2, 50);
    let mut client = server.client();
    let mut secrets = HashMap::new();
    for id in &ids {
        let secret = format!("initial {id}").into_bytes();
        client.put(&put(id, &secret)).unwrap();
        secrets.insert(id.clone(), secret);
    }

    // Reads of ids no write in the burst touches, and writes to the others, interleaved.
    // Both halves span both shards, so whichever executor the connection lands on, some
    // writes are forwarded to the other one.
    let read_ids: Vec<String> = ids.iter().step_by(2).cloned().collect();
    let write_ids: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();
    let mut sent: HashMap<u32, Sent> = HashMap::new();
    let mut order = Vec::new();
    for index in 0..10_000usize {
        let (request_id, what) = match index % 4 {
            0 | 1 => {
                let id = &read_ids[index % read_ids.len()];
                (
                    client.send(&client::get(id, 0).request),
                    Sent::Get { id: id.clone(), secret: secrets[id].clone() },
                )
            }
            2 => {
                let id = &write_ids[index % write_ids.len()];
                let secret = format!("write {index}");
                (client.send(&client::put(&put(id, secret.as_bytes())).request), Sent::Put { id: id.clone() })
            }
            _ if index % 8 == 3 => (client.send(&client::get("no-such-id", 0).request), Sent::Missing),
            _ => {
                let payload = index.to_le_bytes().to_vec();
                (client.send(&client::ping(&payload).request), Sent::Ping(payload))
            }
        };
        order.push(request_id);
        sent.insert(request_id, what);
    }
    client.flush().unwrap();

    let mut received = Vec::new();
    let mut versions_by_id: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
    while received.len() < 10_000 {
        let frame: ResponseFrame = client.receive().unwrap();
        let what = sent.remove(&frame.request_id).expect("each request is answered exactly once");
        let frame_request_id = frame.request_id;
        received.push(frame.request_id);
        match what {
            Sent::Get { id, secret } => {
                let reply: GetReply = client::get(&id, 0).reply(frame).unwrap();
                assert_eq!(reply.secret.expose(), &secret[..]);
            }
            Sent::Put { id } => {
                let reply: PutReply = client::put(&put(&id, b"")).reply(frame).unwrap();
                versions_by_id.entry(id).or_default().push((frame_request_id, reply.version));
            }
            Sent::Missing => assert_eq!(frame.status, Status::NotFound as u8),
            Sent::Ping(payload) => assert_eq!(&frame.body[..], &payload[..]),
        }
    }
    assert!(sent.is_empty());
    // Writes to one id are applied in the order they were sent (request ids increase with
    // sending order): versions 2, 3, 4, ... whatever order their replies arrived in.
    for (id, mut versions) in versions_by_id {
        versions.sort_unstable();
        let versions: Vec<u64> = versions.into_iter().map(|(_, version)| version).collect();
        let expected: Vec<u64> = (2..2 + versions.len() as u64).collect();
        assert_eq!(versions, expected, "versions of {id}");
    }
    // Forwarded writes finish after reads queued behind them: replies leave out of order.
    let out_of_order = received.iter().zip(&order).filter(|(received, sent)| received != sent).count();
    assert!(out_of_order > 0, "expected some replies out of request order");
}

#[test]
fn concurrent_compare_and_set_has_exactly_one_winner_per_version() {
    let server = Arc::new(TestServer::start(2));
    let threads = 8;
    let attempts = 150;
    let mut setup = server.client();
    setup.put(&put("contended", b"0")).unwrap();
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let server = Arc::clone(&server);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut client = server.client();
                let mut wins = Vec::new();
                barrier.wait();
                for attempt in 0..attempts {
                    let current = client.get_meta("contended").unwrap().metadata.version;
                    let secret = format!("{thread}/{attempt}");
                    let mut request = put("contended", secret.as_bytes());
                    request.expected_version = Some(current);
                    match client.put(&request) {
                        Ok(version) => {
                            assert_eq!(version, current + 1);
                            wins.push(version);
                        }
                        Err(error) => {
                            assert_eq!(error.status(), Some(Status::VersionConflict));
                            assert!(error.current_version().unwrap() > current);
                        }
                    }
                }
                wins
            })
        })
        .collect();
    let wins: Vec<u64> = handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect();
    let unique: HashSet<u64> = wins.iter().copied().collect();
    assert_eq!(unique.len(), wins.len(), "no version was won twice");
    let final_version = setup.get("contended").unwrap().metadata.version;
    assert_eq!(final_version, 1 + wins.len() as u64, "every version was won by exactly one writer");
    assert_eq!(unique, (2..=final_version).collect::<HashSet<_>>());
}

#[test]
fn connections_land_on_both_executors_and_reads_cross_shards() {
    let server = TestServer::start(2);
    let ids = ids_on_every_shard(2, 4);
    let mut writer = server.client();
    for id in &ids {
        writer.put(&put(id, id.as_bytes())).unwrap();
    }
    let mut clients: Vec<_> = (0..32).map(|_| server.client()).collect();
    for client in &mut clients {
        for id in &ids {
            assert_eq!(client.get(id).unwrap().secret.expose(), id.as_bytes());
        }
    }
    let stats = writer.stats().unwrap();
    let on_0 = stats.get("executor.0.connections_total").unwrap();
    let on_1 = stats.get("executor.1.connections_total").unwrap();
    assert!(on_0 > 0 && on_1 > 0, "connections per executor: {on_0} and {on_1}");
    // The writer's one connection sits on one executor: the writes for the other shard went
    // through the mesh.
    assert!(stats.get("writes_forwarded").unwrap() > 0, "writes to both shards from one connection");
}

#[test]
fn async_client_pipelines_from_many_tasks() {
    let server = TestServer::start(2);
    let address = server.address();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let client = AsyncClient::connect(address).await.unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    for round in 0..50 {
                        let id = format!("async-{task}");
                        let secret = format!("{task}:{round}");
                        let version = client.put(&put(&id, secret.as_bytes())).await.unwrap();
                        assert_eq!(version, round + 1);
                        let reply = client.get(&id).await.unwrap();
                        assert_eq!(reply.secret.expose(), secret.as_bytes());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(client.stats().await.unwrap().get("credentials"), Some(64));
    });
}
