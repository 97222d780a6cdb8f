//! A connection's input buffer: initialised memory that socket reads fill in place, so a read
//! never pays for zeroing (as `BytesMut::resize` would) and consumed frames are skipped by
//! moving an index, not by copying.
//!
//! Bytes the connection marks as sensitive (PUT frames, which carry plaintext secrets) are
//! wiped when consumed, and so are the bytes left behind when the buffer compacts.

use zeroize::Zeroize;

pub struct InputBuffer {
    bytes: Vec<u8>,
    /// Start of the unconsumed bytes.
    start: usize,
    /// End of the bytes read so far.
    end: usize,
}

impl InputBuffer {
    pub fn new(capacity_bytes: usize) -> InputBuffer {
        InputBuffer { bytes: vec![0; capacity_bytes], start: 0, end: 0 }
    }

    /// Buffered bytes not consumed yet.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops the first `count` unconsumed bytes, wiping them if `sensitive`.
    pub fn consume(&mut self, count: usize, sensitive: bool) {
        assert!(count <= self.len(), "consumed more than was buffered");
        if sensitive {
            self.bytes[self.start..self.start + count].zeroize();
        }
        self.start += count;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// A slice of at least `chunk_bytes` free bytes after the filled ones to read into; pass
    /// the count read to [`InputBuffer::commit`]. Compacts or grows the buffer as needed.
    pub fn spare(&mut self, chunk_bytes: usize) -> &mut [u8] {
        if self.bytes.len() - self.end < chunk_bytes {
            if self.start > 0 {
                let length = self.len();
                self.bytes.copy_within(self.start..self.end, 0);
                // The vacated tail may hold the copied bytes of a partial PUT frame.
                let stale_end = self.end.min(self.bytes.len());
                self.bytes[length.max(self.start)..stale_end].zeroize();
                self.start = 0;
                self.end = length;
            }
            if self.bytes.len() - self.end < chunk_bytes {
                // A move to a bigger allocation must not leave a partial PUT behind.
                crate::wipe::grow_vec(&mut self.bytes, self.end + chunk_bytes);
            }
        }
        &mut self.bytes[self.end..]
    }

    /// Marks `count` bytes of the last [`InputBuffer::spare`] slice as filled.
    pub fn commit(&mut self, count: usize) {
        assert!(self.end + count <= self.bytes.len(), "committed more than the spare space");
        self.end += count;
    }

    /// Wipes every byte the buffer holds (the connection is ending).
    pub fn wipe(&mut self) {
        self.bytes.zeroize();
        self.start = 0;
        self.end = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(buffer: &mut InputBuffer, data: &[u8]) {
        let spare = buffer.spare(data.len());
        spare[..data.len()].copy_from_slice(data);
        buffer.commit(data.len());
    }

    #[test]
    fn fill_consume_compact() {
        let mut buffer = InputBuffer::new(8);
        fill(&mut buffer, b"abcdef");
        assert_eq!(buffer.filled(), b"abcdef");
        buffer.consume(4, true);
        assert_eq!(buffer.filled(), b"ef");
        // Needs 7 free bytes: compacts "ef" to the front, then grows.
        fill(&mut buffer, b"ghijklm");
        assert_eq!(buffer.filled(), b"efghijklm");
        buffer.consume(9, false);
        assert!(buffer.is_empty());
        fill(&mut buffer, b"xy");
        assert_eq!(buffer.filled(), b"xy");
    }

    #[test]
    fn sensitive_bytes_do_not_linger() {
        let mut buffer = InputBuffer::new(16);
        fill(&mut buffer, b"SECRETSECRET-tail");
        buffer.consume(12, true);
        // Compaction moves "-tail" to the front; nothing of the consumed secret may remain.
        let _ = buffer.spare(16);
        assert_eq!(buffer.filled(), b"-tail");
        assert!(!buffer.bytes.windows(6).any(|window| window == b"SECRET"));
        buffer.wipe();
        assert!(buffer.bytes.iter().all(|&byte| byte == 0));
    }
}
