//! Sealing secrets at rest: the key ring's encrypt and decrypt (AES-256-GCM with the
//! credential id, version and key id as associated data, a pooled random nonce and a lookup
//! of the data key) at 256 B and 4 KiB. The baseline beside each is raw AES-256-GCM (ring, the
//! implementation the key ring uses) with a set-up key and the same associated-data length:
//! what the key ring adds on top.

use std::hint::black_box;

use credshard_bench::{binding, keyring, secret, SECRET_BYTES, SECRET_BYTES_LARGE};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const VERSION: u64 = 7;

fn keyring_encrypt_decrypt(criterion: &mut Criterion) {
    let keyring = keyring();
    let baseline = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let nonce = || Nonce::assume_unique_for_key([9u8; 12]);
    // The same length as the key ring's associated data: three str16 fields, kind u8, three
    // u64 and the key id.
    let binding = binding(VERSION);
    let associated_data =
        vec![0u8; 3 * 2 + binding.id.len() + binding.owner.len() + binding.scope.len() + 1 + 3 * 8 + 4];
    let aad = || Aad::from(&associated_data[..]);

    for bytes in [SECRET_BYTES, SECRET_BYTES_LARGE] {
        let mut group = criterion.benchmark_group(format!("crypto/{bytes}B"));
        group.throughput(Throughput::Bytes(bytes as u64));

        group.bench_function("keyring_encrypt", |bencher| {
            let mut buffer = secret(bytes);
            bencher.iter(|| black_box(keyring.encrypt(black_box(&binding), &mut buffer).unwrap()))
        });
        let mut ciphertext = secret(bytes);
        let sealed = keyring.encrypt(&binding, &mut ciphertext).unwrap();
        // Decryption is in place, so each iteration gets a fresh copy of the ciphertext
        // (made outside the timing).
        group.bench_function("keyring_decrypt", |bencher| {
            bencher.iter_batched_ref(
                || ciphertext.clone(),
                |buffer| keyring.decrypt(black_box(&binding), &sealed, buffer).unwrap(),
                BatchSize::SmallInput,
            )
        });

        group.bench_function("baseline_aes_gcm_encrypt", |bencher| {
            let mut buffer = secret(bytes);
            bencher
                .iter(|| black_box(baseline.seal_in_place_separate_tag(nonce(), aad(), &mut buffer).unwrap()))
        });
        let mut raw_ciphertext = secret(bytes);
        let raw_tag = baseline.seal_in_place_separate_tag(nonce(), aad(), &mut raw_ciphertext).unwrap();
        group.bench_function("baseline_aes_gcm_decrypt", |bencher| {
            bencher.iter_batched_ref(
                || raw_ciphertext.clone(),
                |buffer| {
                    baseline.open_in_place_separate_tag(nonce(), aad(), raw_tag, buffer, 0..).unwrap().len()
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, keyring_encrypt_decrypt);
criterion_main!(benches);
