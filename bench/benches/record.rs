//! A stored credential version: sealing a 256 B secret into an rkyv record (the
//! write path), reading its metadata in place and decrypting its secret straight into a
//! response buffer (the read path), and validating archived bytes (recovery). The baselines
//! are the key ring's encrypt and decrypt of the same secret: the crypto share of each.

use std::hint::black_box;

use bytes::BytesMut;
use credshard_bench::{binding, fields, keyring, put_request, secret, SECRET_BYTES};
use credshard_engine::data::record::{CredentialFields, Record};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rkyv::util::AlignedVec;

fn record(criterion: &mut Criterion) {
    let keyring = keyring();
    let secret = secret(SECRET_BYTES);
    let request = put_request(&secret);
    let record = Record::seal(CredentialFields::from(&request), fields(4), &keyring).unwrap();
    let mut group = criterion.benchmark_group("record/256B");
    group.throughput(Throughput::Elements(1));

    // Write path. The record is dropped inside the timing, as a replaced version would be.
    group.bench_function("seal", |bencher| {
        bencher
            .iter(|| Record::seal(CredentialFields::from(black_box(&request)), fields(4), &keyring).unwrap())
    });
    group.bench_function("baseline_keyring_encrypt", |bencher| {
        let mut buffer = secret.clone();
        bencher.iter(|| black_box(keyring.encrypt(black_box(&binding(4)), &mut buffer).unwrap()))
    });

    // Read path.
    group.bench_function("metadata", |bencher| bencher.iter(|| black_box(black_box(&record).metadata())));
    group.bench_function("metadata_encode", |bencher| {
        let mut out = BytesMut::with_capacity(4096);
        bencher.iter(|| {
            out.clear();
            black_box(&record).metadata().encode(&mut out);
            black_box(&out);
        })
    });
    group.bench_function("decrypt_into", |bencher| {
        let mut out = BytesMut::with_capacity(4096);
        bencher.iter(|| {
            out.clear();
            black_box(&record).decrypt_into(&keyring, &mut out).unwrap();
            black_box(&out);
        })
    });
    let mut ciphertext = secret.clone();
    let sealed = keyring.encrypt(&binding(4), &mut ciphertext).unwrap();
    group.bench_function("baseline_keyring_decrypt", |bencher| {
        bencher.iter_batched_ref(
            || ciphertext.clone(),
            |buffer| keyring.decrypt(black_box(&binding(4)), &sealed, buffer).unwrap(),
            BatchSize::SmallInput,
        )
    });

    // Recovery: validating archived bytes once (rkyv access with bytecheck).
    let archive = record.archive_bytes().to_vec();
    group.bench_function("from_archive", |bencher| {
        bencher.iter_batched(
            || {
                // An aligned copy, as the log or database loader makes.
                let mut aligned = AlignedVec::new();
                aligned.extend_from_slice(&archive);
                aligned
            },
            |aligned| Record::from_archive(aligned).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
