//! The shard map against the design it replaced: `papaya::HashMap` beside a
//! `std::sync::RwLock<std::collections::HashMap>` (the old reference's map), both with the
//! engine's hasher (ahash 0.7 `RandomState`) so the comparison is about the map, not the hash.
//!
//! 100,000 credential ids of 21 bytes (`tenant-042/key-000042`) map to 400-byte
//! `Arc<[u8]>` values, about the size of our records. Keys are visited in one fixed
//! pseudo-random order, the same for both maps, so neither benefits from a cache-friendly
//! sequence.
//!
//! - `maps/single`: one thread; `get` (look up, read the value's length) and `insert`
//!   (replace the value of an existing key; the key is a fresh `Box<str>`, as in the engine).
//! - `maps/contended`: the measured thread does the same while a second thread runs the other
//!   operation flat out (1 writer + 1 reader). The measured side's time per operation comes
//!   from `iter_custom`; the background thread's rate over the whole benchmark is printed to
//!   stderr, so a side that starved the other shows.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ahash::RandomState;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const KEYS: usize = 100_000;
const VALUE_BYTES: usize = 400;
/// Length of the fixed visiting order (a power of two, so the index wraps with a mask).
const ORDER_LENGTH: usize = 1 << 16;

/// The id of credential `index`, 21 bytes like a typical credential id.
fn credential_id(index: usize) -> Box<str> {
    format!("tenant-{:03}/key-{index:06}", index % 1000).into_boxed_str()
}

/// A fixed pseudo-random sequence of key indexes (xorshift), the same on every run.
fn visiting_order() -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..ORDER_LENGTH)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % KEYS as u64) as u32
        })
        .collect()
}

/// What the bench does with either map.
trait Map: Sync {
    const NAME: &'static str;
    fn with_capacity(capacity: usize) -> Self;
    /// Looks `id` up and reads the value while it is still protected (guard or read lock).
    fn value_bytes(&self, id: &str) -> Option<usize>;
    fn insert(&self, id: Box<str>, value: Arc<[u8]>);
}

struct Papaya(papaya::HashMap<Box<str>, Arc<[u8]>, RandomState>);

impl Map for Papaya {
    const NAME: &'static str = "papaya";

    fn with_capacity(capacity: usize) -> Self {
        Papaya(papaya::HashMap::with_capacity_and_hasher(capacity, RandomState::new()))
    }

    fn value_bytes(&self, id: &str) -> Option<usize> {
        self.0.pin().get(id).map(|value| value.len())
    }

    fn insert(&self, id: Box<str>, value: Arc<[u8]>) {
        self.0.pin().insert(id, value);
    }
}

struct Locked(RwLock<HashMap<Box<str>, Arc<[u8]>, RandomState>>);

impl Map for Locked {
    const NAME: &'static str = "rwlock_std_hashmap";

    fn with_capacity(capacity: usize) -> Self {
        Locked(RwLock::new(HashMap::with_capacity_and_hasher(capacity, RandomState::new())))
    }

    fn value_bytes(&self, id: &str) -> Option<usize> {
        self.0.read().expect("map lock").get(id).map(|value| value.len())
    }

    fn insert(&self, id: Box<str>, value: Arc<[u8]>) {
        self.0.write().expect("map lock").insert(id, value);
    }
}

/// Everything one map's benches share: the preloaded map, the ids, the visiting order and two
/// values to alternate between on writes.
struct Fixture<M> {
    map: M,
    ids: Vec<Box<str>>,
    order: Vec<u32>,
    values: [Arc<[u8]>; 2],
}

impl<M: Map> Fixture<M> {
    fn new() -> Self {
        let ids: Vec<Box<str>> = (0..KEYS).map(credential_id).collect();
        let values: [Arc<[u8]>; 2] = [vec![0xA5; VALUE_BYTES].into(), vec![0x5A; VALUE_BYTES].into()];
        let map = M::with_capacity(KEYS);
        for id in &ids {
            map.insert(id.clone(), values[0].clone());
        }
        Fixture { map, ids, order: visiting_order(), values }
    }

    fn id(&self, step: usize) -> &str {
        &self.ids[self.order[step & (ORDER_LENGTH - 1)] as usize]
    }

    fn get(&self, step: usize) {
        black_box(self.map.value_bytes(black_box(self.id(step))));
    }

    fn insert(&self, step: usize) {
        self.map.insert(Box::from(self.id(step)), self.values[step & 1].clone());
    }
}

/// The operations, by name, so that one side of the contended bench can run the other.
#[derive(Clone, Copy)]
enum Operation {
    Get,
    Insert,
}

impl Operation {
    fn run<M: Map>(self, fixture: &Fixture<M>, step: usize) {
        match self {
            Operation::Get => fixture.get(step),
            Operation::Insert => fixture.insert(step),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Insert => "insert",
        }
    }

    fn other(self) -> Operation {
        match self {
            Operation::Get => Operation::Insert,
            Operation::Insert => Operation::Get,
        }
    }
}

fn single<M: Map>(criterion: &mut Criterion) {
    let fixture = Fixture::<M>::new();
    let mut group = criterion.benchmark_group("maps/single");
    group.throughput(Throughput::Elements(1));
    for operation in [Operation::Get, Operation::Insert] {
        let mut step = 0usize;
        group.bench_function(BenchmarkId::new(operation.name(), M::NAME), |bencher| {
            bencher.iter(|| {
                step = step.wrapping_add(1);
                operation.run(&fixture, step);
            })
        });
    }
    group.finish();
}

fn contended<M: Map>(criterion: &mut Criterion) {
    let fixture = Fixture::<M>::new();
    let mut group = criterion.benchmark_group("maps/contended");
    group.throughput(Throughput::Elements(1));
    for measured in [Operation::Get, Operation::Insert] {
        let background = measured.other();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let fixture = &fixture;
            let stop = &stop;
            let other = scope.spawn(move || {
                let started = Instant::now();
                // Starts half-way through the order so the two threads touch different keys
                // most of the time, as two connections on different credentials would.
                let mut step = ORDER_LENGTH / 2;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        step = step.wrapping_add(1);
                        background.run(fixture, step);
                    }
                }
                (step - ORDER_LENGTH / 2) as f64 / started.elapsed().as_secs_f64()
            });
            let mut step = 0usize;
            let id =
                BenchmarkId::new(format!("{}_with_1_{}_thread", measured.name(), background.name()), M::NAME);
            group.bench_function(id, |bencher| {
                bencher.iter_custom(|iterations| {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        step = step.wrapping_add(1);
                        measured.run(fixture, step);
                    }
                    started.elapsed()
                })
            });
            stop.store(true, Ordering::Relaxed);
            let rate = other.join().expect("background thread");
            eprintln!("  background {} thread ({}): {rate:.0} ops/s", background.name(), M::NAME);
        });
    }
    group.finish();
}

fn maps(criterion: &mut Criterion) {
    single::<Papaya>(criterion);
    single::<Locked>(criterion);
    contended::<Papaya>(criterion);
    contended::<Locked>(criterion);
}

criterion_group!(benches, maps);
criterion_main!(benches);
