//! Fuzz target for the server's frame decoder: arbitrary bytes are split into frames exactly
//! as a connection does (`frame::check`, then `Request::decode` in place), and every decoded
//! request must re-encode to the bytes it came from. Nothing may panic.

#![no_main]

use bytes::BytesMut;
use credshard_protocol::{frame, Limits, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { frame_bytes_max: 64 * 1024, ..Limits::default() };
    let mut offset = 0;
    while let Ok(Some(header)) = frame::check(&data[offset..], limits.frame_bytes_max) {
        let whole = &data[offset..offset + header.frame_bytes];
        assert!(header.frame_bytes >= frame::HEADER_BYTES);
        if let Ok(request) = Request::decode(header.code, &whole[header.body_range()], &limits) {
            let mut encoded = BytesMut::new();
            request.encode(header.request_id, &mut encoded);
            // Flags are reserved and not echoed; everything else must round-trip.
            assert_eq!(&encoded[..5], &whole[..5]);
            assert_eq!(&encoded[6..], &whole[6..]);
        }
        offset += header.frame_bytes;
    }
});
