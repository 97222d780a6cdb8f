//! The wire codec, per frame: encoding a PUT request, checking and decoding it as a server
//! does, and encoding and decoding a GET reply as a server and the client do. The baseline
//! beside each is a plain copy of the same frame bytes: what any codec costs at least.

use std::hint::black_box;

use bytes::BytesMut;
use credshard_bench::{
    encode_get_reply, fields, get_reply_frame, metadata, put_frame, put_request, secret, ID, REQUEST_ID,
    SECRET_BYTES,
};
use credshard_protocol::client::{self, ResponseFrame};
use credshard_protocol::{frame, Limits, Request};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn put_request_frame(criterion: &mut Criterion) {
    let secret = secret(SECRET_BYTES);
    let request = put_request(&secret);
    let encoded = put_frame(&secret);
    let limits = Limits::default();
    let mut group = criterion.benchmark_group("codec/put_256B");
    group.throughput(Throughput::Bytes(encoded.len() as u64));

    group.bench_function("encode", |bencher| {
        let mut out = BytesMut::with_capacity(4096);
        bencher.iter(|| {
            out.clear();
            Request::Put(*black_box(&request)).encode(REQUEST_ID, &mut out);
            black_box(&out);
        })
    });
    group.bench_function("check+decode", |bencher| {
        bencher.iter(|| {
            let bytes = black_box(&encoded[..]);
            let header = frame::check(bytes, limits.frame_bytes_max).unwrap().unwrap();
            black_box(Request::decode(header.code, &bytes[header.body_range()], &limits).unwrap())
        })
    });
    group.bench_function("baseline_copy", |bencher| {
        let mut out = BytesMut::with_capacity(4096);
        bencher.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&encoded));
            black_box(&out);
        })
    });
    group.finish();
}

fn get_reply(criterion: &mut Criterion) {
    let secret = secret(SECRET_BYTES);
    let metadata = metadata(fields(4));
    let encoded = get_reply_frame(&secret);
    let mut group = criterion.benchmark_group("codec/get_reply_256B");
    group.throughput(Throughput::Bytes(encoded.len() as u64));

    group.bench_function("encode", |bencher| {
        let mut out = BytesMut::with_capacity(4096);
        bencher.iter(|| {
            out.clear();
            encode_get_reply(black_box(&metadata), black_box(&secret), &mut out);
            black_box(&out);
        })
    });
    // As the async client does: split the frame off its read buffer, then decode the typed
    // reply (which copies metadata strings and the secret into owned values). Building the
    // read buffer and dropping the reply are outside the timing.
    group.bench_function("take+decode", |bencher| {
        bencher.iter_batched(
            || BytesMut::from(&encoded[..]),
            |mut buffer| {
                let response = ResponseFrame::take(&mut buffer).unwrap().unwrap();
                client::get(ID, 0).reply(response).unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("baseline_copy", |bencher| {
        let mut out = BytesMut::with_capacity(4096);
        bencher.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&encoded));
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group!(benches, put_request_frame, get_reply);
criterion_main!(benches);
