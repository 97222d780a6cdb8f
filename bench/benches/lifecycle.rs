//! Lifecycle operations, in process (store and shard writer, no network) and end to end over
//! loopback TCP against a 2-shard server with the blocking client (one request in flight):
//! ROTATE, BATCH_GET of 100 ids, and a LIST page of 1,000 out of 10,000 credentials of one
//! owner. GET of one id is measured beside them as the baseline.

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use credshard_bench::{apply, keyring, secret, stored_put, SECRET_BYTES, STORED_OWNER};
use credshard_engine::auth::Acl;
use credshard_engine::crypto::{KeySource, MasterKey};
use credshard_engine::data::{Lifecycle, Store, Write};
use credshard_engine::{Server, ServerConfig};
use credshard_protocol::op::batch_get::BatchGetRequest;
use credshard_protocol::op::get::GetRequest;
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{Client, Limits};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CREDENTIALS: usize = 10_000;

fn id(index: usize) -> String {
    format!("bench/credential-{index:05}")
}

fn in_process(criterion: &mut Criterion) {
    let secret = secret(SECRET_BYTES);
    let store = Arc::new(Store::new(1, keyring(), Limits::default(), Lifecycle::default()));
    let mut writer = store.claim_writer(0);
    let now = credshard_engine::time::now_ms();
    for index in 0..CREDENTIALS {
        apply(&mut writer, Write::Put(&stored_put(&id(index), &secret)), now, &Acl::everything()).unwrap();
    }
    let mut group = criterion.benchmark_group("lifecycle/store");
    let mut out = BytesMut::with_capacity(1 << 20);

    group.throughput(Throughput::Elements(1));
    let first = id(0);
    group.bench_function("get", |bencher| {
        bencher.iter(|| {
            out.clear();
            store.get(black_box(&GetRequest::new(&first, 0)), now, &Acl::everything(), &mut out).unwrap();
        })
    });
    // Each rotation adds a version; beyond max_versions the oldest is dropped, as in service.
    let rotated = id(1);
    group.bench_function("rotate", |bencher| {
        bencher.iter(|| {
            let request = RotateRequest {
                id: &rotated,
                expected_version: None,
                grace_period_seconds: None,
                secret: &secret,
            };
            apply(&mut writer, Write::Rotate(black_box(&request)), now, &Acl::everything()).unwrap()
        })
    });

    let ids: Vec<String> = (0..100).map(|index| id(index * 97)).collect();
    let mut encoded = BytesMut::new();
    BatchGetRequest::encode(&ids, &mut encoded);
    let batch = BatchGetRequest::from_encoded(&encoded).unwrap();
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_get_100", |bencher| {
        bencher.iter(|| {
            out.clear();
            store.batch_get(black_box(&batch), now, &Acl::everything(), &mut out, usize::MAX, &[], |_, _| {})
        })
    });

    group.throughput(Throughput::Elements(1000));
    let list = ListRequest { owner: STORED_OWNER, scope: "", limit: 1000, cursor: b"" };
    group.bench_function("list_page_1000", |bencher| {
        bencher.iter(|| {
            out.clear();
            store.list(black_box(&list), now, &mut out).unwrap();
        })
    });
    group.finish();
}

fn over_tcp(criterion: &mut Criterion) {
    let data_dir = std::env::temp_dir().join(format!("credshard-bench-{}", std::process::id()));
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.clone(),
        shards: Some(2),
        spin_before_park_us: std::env::var("BENCH_SPIN_BEFORE_PARK_US")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0),
        ..ServerConfig::default()
    };
    let server = Server::start(&config, KeySource::Key(MasterKey::generate())).unwrap();
    let secret = secret(SECRET_BYTES);
    let mut client = Client::connect(server.local_address()).unwrap();
    for index in 0..CREDENTIALS {
        client.put(&stored_put(&id(index), &secret)).unwrap();
    }
    let mut group = criterion.benchmark_group("lifecycle/tcp");

    group.throughput(Throughput::Elements(1));
    let first = id(0);
    group.bench_function("get", |bencher| bencher.iter(|| client.get(black_box(&first)).unwrap()));
    let rotated = id(1);
    group.bench_function("rotate", |bencher| {
        bencher.iter(|| {
            let request = RotateRequest {
                id: &rotated,
                expected_version: None,
                grace_period_seconds: None,
                secret: &secret,
            };
            client.rotate(black_box(&request)).unwrap()
        })
    });

    let ids: Vec<String> = (0..100).map(|index| id(index * 97)).collect();
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_get_100", |bencher| {
        bencher.iter(|| client.batch_get(black_box(&ids)).unwrap())
    });

    group.throughput(Throughput::Elements(1000));
    let list = ListRequest { owner: STORED_OWNER, scope: "", limit: 1000, cursor: b"" };
    group.bench_function("list_page_1000", |bencher| bencher.iter(|| client.list(black_box(&list)).unwrap()));
    group.finish();

    drop(client);
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(data_dir);
}

criterion_group!(benches, in_process, over_tcp);
criterion_main!(benches);
