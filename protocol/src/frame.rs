//! Frame header codec. Every message, in both directions, is one frame:
//!
//! ```text
//! offset 0  length      u32 LE  bytes after this field (6 + body bytes)
//! offset 4  op | status u8      request: op code; response: status code
//! offset 5  flags       u8      reserved: senders write 0, receivers ignore
//! offset 6  request_id  u32 LE  chosen by the client, echoed in the response
//! offset 10 body        length - 6 bytes
//! ```
//!
//! Decoding is split in two, as in mini-redis: [`check`] answers "is a whole frame buffered?"
//! without copying anything, then the caller parses the body in place and advances its buffer.

use bytes::{BufMut, BytesMut};

/// Bytes of the length field at the start of every frame.
pub const LENGTH_BYTES: usize = 4;
/// Bytes of the whole header: length, code, flags, request id.
pub const HEADER_BYTES: usize = 10;
const _: () = assert!(HEADER_BYTES == LENGTH_BYTES + 1 + 1 + 4);

/// Default largest frame (header included) a server accepts: 1 MiB.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// A parsed header of a frame that is wholly buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Op code (request) or status code (response).
    pub code: u8,
    pub flags: u8,
    pub request_id: u32,
    /// Total bytes of the frame, header included.
    pub frame_bytes: usize,
}

impl Header {
    /// The body's byte range within the buffer the header was read from.
    pub fn body_range(&self) -> std::ops::Range<usize> {
        HEADER_BYTES..self.frame_bytes
    }
}

/// Framing errors: the byte stream can no longer be split into frames, so the connection must
/// be closed after reporting them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is below 6: the frame is shorter than a header and has no request id.
    #[error("frame length field {length} is below the minimum of 6")]
    LengthTooSmall { length: u32 },
    /// The frame exceeds the limit; its whole header was read, so its request id is known.
    #[error("frame of {frame_bytes} bytes exceeds the limit of {frame_bytes_max} bytes")]
    TooLarge { frame_bytes: usize, frame_bytes_max: usize, request_id: u32 },
}

impl FrameError {
    /// The request id the error frame carries: the bad frame's own, or 0 when it has none.
    pub fn request_id(&self) -> u32 {
        match self {
            FrameError::LengthTooSmall { .. } => 0,
            FrameError::TooLarge { request_id, .. } => *request_id,
        }
    }
}

/// Looks at the front of `buffer`: `Ok(None)` if more bytes are needed, the header if a whole
/// frame is buffered.
///
/// # Errors
/// [`FrameError::LengthTooSmall`] as soon as a length field below 6 arrives;
/// [`FrameError::TooLarge`] as soon as the whole 10-byte header of a frame above
/// `frame_bytes_max` arrives, before its body. Both are judged on the same bytes however the
/// stream was split into reads, so the error (and its request id) never depends on timing.
#[inline]
pub fn check(buffer: &[u8], frame_bytes_max: usize) -> Result<Option<Header>, FrameError> {
    if buffer.len() < LENGTH_BYTES {
        return Ok(None);
    }
    let length = u32::from_le_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    if (length as usize) < HEADER_BYTES - LENGTH_BYTES {
        return Err(FrameError::LengthTooSmall { length });
    }
    if buffer.len() < HEADER_BYTES {
        return Ok(None);
    }
    let request_id = u32::from_le_bytes([buffer[6], buffer[7], buffer[8], buffer[9]]);
    let frame_bytes = length as usize + LENGTH_BYTES;
    if frame_bytes > frame_bytes_max {
        return Err(FrameError::TooLarge { frame_bytes, frame_bytes_max, request_id });
    }
    if buffer.len() < frame_bytes {
        return Ok(None);
    }
    Ok(Some(Header { code: buffer[4], flags: buffer[5], request_id, frame_bytes }))
}

/// Appends a header with a zero length to `out`; returns the frame's start offset, to be
/// passed to [`finish`] once the body is written.
#[inline]
pub fn begin(out: &mut BytesMut, code: u8, request_id: u32) -> usize {
    let start = out.len();
    out.reserve(HEADER_BYTES);
    out.put_u32_le(0);
    out.put_u8(code);
    out.put_u8(0);
    out.put_u32_le(request_id);
    start
}

/// Patches the length field of the frame begun at `start` to cover everything written since.
#[inline]
pub fn finish(out: &mut BytesMut, start: usize) {
    let length = out.len() - start - LENGTH_BYTES;
    let length = u32::try_from(length).expect("frame length fits in u32");
    out[start..start + LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
}

/// Truncates `out` back to `start`, dropping a frame begun there (used when encoding fails).
pub fn abandon(out: &mut BytesMut, start: usize) {
    out.truncate(start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_frames_need_more_bytes() {
        let mut out = BytesMut::new();
        let start = begin(&mut out, 0x02, 7);
        out.put_slice(b"abc");
        finish(&mut out, start);
        for cut in 0..out.len() {
            assert_eq!(check(&out[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let header = check(&out, 1024).unwrap().unwrap();
        assert_eq!(header, Header { code: 0x02, flags: 0, request_id: 7, frame_bytes: 13 });
        assert_eq!(&out[header.body_range()], b"abc");
    }

    #[test]
    fn framing_errors() {
        // A short length is judged on the length field alone, and never names a request, even
        // when bytes that look like a request id follow it.
        assert_eq!(check(&5u32.to_le_bytes(), 1024), Err(FrameError::LengthTooSmall { length: 5 }));
        let mut short = 2u32.to_le_bytes().to_vec();
        short.extend_from_slice(&[0x11, 0, 7, 0, 0, 0]);
        let error = check(&short, 1024).unwrap_err();
        assert_eq!((error, error.request_id()), (FrameError::LengthTooSmall { length: 2 }, 0));
        // An oversized frame waits for its whole header, then names its request.
        let mut large = BytesMut::new();
        let start = begin(&mut large, 0x10, 42);
        large.put_slice(&[0; 1990]);
        finish(&mut large, start);
        for cut in 0..HEADER_BYTES {
            assert_eq!(check(&large[..cut], 1024), Ok(None), "cut at {cut}");
        }
        let error = check(&large[..HEADER_BYTES], 1024).unwrap_err();
        assert_eq!(error, FrameError::TooLarge { frame_bytes: 2000, frame_bytes_max: 1024, request_id: 42 });
        assert_eq!(error.request_id(), 42);
        assert_eq!(check(&u32::MAX.to_le_bytes(), usize::MAX).unwrap(), None);
    }
}
