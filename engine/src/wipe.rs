//! Buffers that may hold plaintext grow without leaving copies behind.
//!
//! A `Vec` or `BytesMut` that outgrows its allocation moves its bytes to a bigger one and frees
//! the old one as it is: a secret it held stays in freed memory until the allocator reuses it,
//! and shows up in a core dump. Buffers that carry secrets (a connection's reply buffer, its
//! input buffer) grow only through [`reserve`], which wipes the old allocation first, and the
//! code that writes a secret into one reserves room for it before it decrypts.

use bytes::BytesMut;
use zeroize::Zeroize;

/// Makes room for `additional` more bytes in `buffer`; if that takes a new allocation, the
/// old one is wiped before it is freed.
pub fn reserve(buffer: &mut BytesMut, additional: usize) {
    if buffer.capacity() - buffer.len() >= additional {
        return;
    }
    let capacity = (buffer.capacity() * 2).max(buffer.len() + additional);
    let mut grown = BytesMut::with_capacity(capacity);
    grown.extend_from_slice(buffer);
    buffer.zeroize();
    *buffer = grown;
}

/// The same for a `Vec`: grows it to at least `length` bytes (new bytes zero), wiping the old
/// allocation if it had to move.
pub fn grow_vec(vec: &mut Vec<u8>, length: usize) {
    if length <= vec.len() {
        return;
    }
    if length <= vec.capacity() {
        vec.resize(length, 0);
        return;
    }
    let mut grown = vec![0u8; length.max(vec.capacity() * 2)];
    grown[..vec.len()].copy_from_slice(vec);
    grown.truncate(length);
    vec.zeroize();
    *vec = grown;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_the_bytes_and_makes_the_room() {
        let mut buffer = BytesMut::with_capacity(4);
        buffer.extend_from_slice(b"abc");
        reserve(&mut buffer, 100);
        assert_eq!(&buffer[..], b"abc");
        assert!(buffer.capacity() - buffer.len() >= 100);
        let before = buffer.as_ptr();
        reserve(&mut buffer, 10);
        assert_eq!(buffer.as_ptr(), before, "no new allocation when there is room");

        let mut vec = b"xyz".to_vec();
        vec.shrink_to_fit();
        grow_vec(&mut vec, 10);
        assert_eq!(&vec[..], b"xyz\0\0\0\0\0\0\0");
        grow_vec(&mut vec, 5);
        assert_eq!(vec.len(), 10, "never shrinks");
    }
}
