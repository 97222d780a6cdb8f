//! The GET path in process (store, no network), on maps of 1,000 and 1,000,000 credentials of
//! 256 B: one GET of a random id, and 16 GETs of random ids answered one after another into one
//! reply buffer, as a connection answers the requests of one read (without and with
//! their lookups prefetched first by `Store::prefetch`).
//! The 1M map is larger than the cache, so these show the cache misses a lookup costs; a
//! regression in the record layout or the map shows up here without a full loadgen run.
//!
//!     cargo bench -p credshard-bench --bench get_path

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use credshard_bench::{apply, keyring, secret, stored_put, SECRET_BYTES};
use credshard_engine::auth::Acl;
use credshard_engine::data::{Lifecycle, Store, Write};
use credshard_protocol::op::get::GetRequest;
use credshard_protocol::Limits;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// GETs answered together in the batched case (a pipeline of 16).
const BATCH: usize = 16;

fn id(index: usize) -> String {
    format!("bench/credential-{index:07}")
}

/// A store of `credentials` credentials in one shard, written through its writer.
fn store(credentials: usize) -> Arc<Store> {
    let secret = secret(SECRET_BYTES);
    let store = Arc::new(Store::new(1, keyring(), Limits::default(), Lifecycle::default()));
    let mut writer = store.claim_writer(0);
    let now = credshard_engine::time::now_ms();
    for index in 0..credentials {
        apply(&mut writer, Write::Put(&stored_put(&id(index), &secret)), now, &Acl::everything())
            .expect("stored");
    }
    store
}

/// splitmix64, so that every run asks for the same ids.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn get_path(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("get_path");
    for credentials in [1_000, 1_000_000] {
        let store = store(credentials);
        let now = credshard_engine::time::now_ms();
        // Ids drawn ahead of time, many more than the cache holds lookups for.
        let mut state = 7;
        let ids: Vec<String> =
            (0..1 << 16).map(|_| id((next(&mut state) % credentials as u64) as usize)).collect();
        let mut out = BytesMut::with_capacity(64 << 10);
        let acl = Acl::everything();

        group.throughput(Throughput::Elements(1));
        let mut at = 0;
        group.bench_function(BenchmarkId::new("single", credentials), |bencher| {
            bencher.iter(|| {
                at = (at + 1) % ids.len();
                out.clear();
                let request = GetRequest::new(&ids[at], 0);
                black_box(store.get(black_box(&request), now, &acl, &mut out).unwrap());
            })
        });

        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("batch_16", credentials), |bencher| {
            bencher.iter(|| {
                at = (at + BATCH) % (ids.len() - BATCH);
                out.clear();
                for id in &ids[at..at + BATCH] {
                    black_box(store.get(&GetRequest::new(id, 0), now, &acl, &mut out).unwrap());
                }
            })
        });

        // The same, with the batch's lookups prefetched first (as a connection does for the
        // GETs of one read).
        let mut batch: Vec<&str> = Vec::with_capacity(BATCH);
        group.bench_function(BenchmarkId::new("batch_16_prefetched", credentials), |bencher| {
            bencher.iter(|| {
                at = (at + BATCH) % (ids.len() - BATCH);
                out.clear();
                batch.clear();
                batch.extend(ids[at..at + BATCH].iter().map(String::as_str));
                store.prefetch(batch.iter().copied());
                for id in &batch {
                    black_box(store.get(&GetRequest::new(id, 0), now, &acl, &mut out).unwrap());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, get_path);
criterion_main!(benches);
