//! The values the loadgen writes, built so that every read can be checked: a server that
//! returns another key's value, a torn value or stale garbage is caught, not timed.
//!
//! ```text
//! offset 0   "k" + key index, 8 decimal digits        ("k00001234")
//! offset 9   "w" + write counter mod 10^6, 6 digits    ("w000042")
//! offset 16  padding: byte p is b'a' + (key index + p) mod 26
//! ```

use std::io::Write;

/// Bytes of the header that names the key and the write.
pub const HEADER_BYTES: usize = 16;
/// Key indices must fit the 8 digits of the header.
pub const KEYS_MAX: u64 = 100_000_000;
const KEY_PREFIX_BYTES: usize = 9;
const WRITE_COUNTER_MODULUS: u64 = 1_000_000;

/// The credential id of key `key_index`.
pub fn key_id(key_index: u64, out: &mut String) {
    out.clear();
    out.push_str("loadgen-");
    let mut digits = [0u8; 20];
    let text = decimal(key_index, &mut digits);
    out.push_str(std::str::from_utf8(text).expect("decimal digits are ASCII"));
}

/// `value` in decimal, written at the end of `buffer`; returns the digits.
pub fn decimal(mut value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

/// Writes the `width` low decimal digits of `value`, zero-padded, into `out`.
fn digits(mut value: u64, out: &mut [u8]) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The padding bytes of every key, precomputed: the padding of key `k` from position `p` is
/// `PATTERN[(k + p) % 26..]`, so a value is filled and checked with slice copies and compares.
pub struct Values {
    /// `b'a' + i % 26` for `i` in `0..26 + longest`.
    pattern: Vec<u8>,
}

impl Values {
    /// For values of up to `longest` bytes (longer ones are checked byte by byte).
    pub fn new(longest: usize) -> Values {
        Values { pattern: (0..26 + longest).map(|i| b'a' + (i % 26) as u8).collect() }
    }

    fn padding(&self, key_index: u64, length: usize) -> Option<&[u8]> {
        let start = ((key_index + HEADER_BYTES as u64) % 26) as usize;
        self.pattern.get(start..start + length)
    }

    /// [`fill`], with the padding copied from the pattern.
    pub fn fill(&self, value: &mut [u8], key_index: u64, write_counter: u64) {
        assert!(value.len() >= HEADER_BYTES && key_index < KEYS_MAX);
        let (header, padding) = value.split_at_mut(HEADER_BYTES);
        header[0] = b'k';
        digits(key_index, &mut header[1..KEY_PREFIX_BYTES]);
        header[KEY_PREFIX_BYTES] = b'w';
        digits(write_counter % WRITE_COUNTER_MODULUS, &mut header[KEY_PREFIX_BYTES + 1..]);
        match self.padding(key_index, padding.len()) {
            Some(pattern) => padding.copy_from_slice(pattern),
            None => fill(value, key_index, write_counter),
        }
    }

    /// [`check`], with the padding compared against the pattern.
    pub fn check(&self, value: &[u8], key_index: u64) -> bool {
        if value.len() < HEADER_BYTES || key_index >= KEYS_MAX {
            return false;
        }
        let mut prefix = [b'k'; KEY_PREFIX_BYTES];
        digits(key_index, &mut prefix[1..]);
        let header_ok = value[..KEY_PREFIX_BYTES] == prefix
            && value[KEY_PREFIX_BYTES] == b'w'
            && value[KEY_PREFIX_BYTES + 1..HEADER_BYTES].iter().all(u8::is_ascii_digit);
        header_ok
            && match self.padding(key_index, value.len() - HEADER_BYTES) {
                Some(pattern) => value[HEADER_BYTES..] == *pattern,
                None => check(value, key_index),
            }
    }
}

/// Fills `value` (at least [`HEADER_BYTES`] long) with the value of key `key_index` at write
/// number `write_counter`.
///
/// # Panics
/// If `value` is shorter than the header or `key_index` is not below [`KEYS_MAX`]; both are
/// checked when the arguments are parsed.
pub fn fill(value: &mut [u8], key_index: u64, write_counter: u64) {
    assert!(value.len() >= HEADER_BYTES && key_index < KEYS_MAX);
    let (header, padding) = value.split_at_mut(HEADER_BYTES);
    write!(&mut header[..], "k{key_index:08}w{:06}", write_counter % WRITE_COUNTER_MODULUS)
        .expect("the header is exactly 16 bytes");
    for (offset, byte) in padding.iter_mut().enumerate() {
        *byte = padding_byte(key_index, HEADER_BYTES + offset);
    }
}

/// True if `value` is a value the loadgen wrote for key `key_index` (of any size and write).
pub fn check(value: &[u8], key_index: u64) -> bool {
    if value.len() < HEADER_BYTES || key_index >= KEYS_MAX {
        return false;
    }
    let mut prefix = [0u8; KEY_PREFIX_BYTES];
    write!(&mut prefix[..], "k{key_index:08}").expect("the key prefix is exactly 9 bytes");
    value[..KEY_PREFIX_BYTES] == prefix
        && value[KEY_PREFIX_BYTES] == b'w'
        && value[KEY_PREFIX_BYTES + 1..HEADER_BYTES].iter().all(u8::is_ascii_digit)
        && value[HEADER_BYTES..]
            .iter()
            .enumerate()
            .all(|(offset, &byte)| byte == padding_byte(key_index, HEADER_BYTES + offset))
}

fn padding_byte(key_index: u64, position: usize) -> u8 {
    b'a' + ((key_index + position as u64) % 26) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_their_key_and_are_checked_whole() {
        let mut value = vec![0u8; 64];
        fill(&mut value, 1234, 1_000_042);
        assert_eq!(&value[..16], b"k00001234w000042");
        assert!(check(&value, 1234));
        assert!(!check(&value, 1235));
        assert!(!check(&value[..15], 1234));

        let mut torn = value.clone();
        torn[40] ^= 1;
        assert!(!check(&torn, 1234));

        let mut exact = vec![0u8; HEADER_BYTES];
        fill(&mut exact, KEYS_MAX - 1, 7);
        assert_eq!(&exact, b"k99999999w000007");
        assert!(check(&exact, KEYS_MAX - 1));

        let values = Values::new(64);
        for (length, key_index, write) in [(64, 1234, 1_000_042), (16, KEYS_MAX - 1, 7), (40, 25, 0)] {
            let (mut slow, mut fast) = (vec![0u8; length], vec![1u8; length]);
            fill(&mut slow, key_index, write);
            values.fill(&mut fast, key_index, write);
            assert_eq!(slow, fast, "{length} {key_index}");
            assert!(values.check(&fast, key_index) && !values.check(&fast, key_index + 1));
            if length > HEADER_BYTES {
                fast[length - 1] ^= 1;
                assert!(!values.check(&fast, key_index), "a torn byte is caught");
            }
        }
        // Longer than the pattern: byte by byte, same answers.
        let mut long = vec![0u8; 100];
        values.fill(&mut long, 3, 1);
        assert!(check(&long, 3) && values.check(&long, 3) && !values.check(&long, 4));
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(u64::MAX, &mut [0; 20]), b"18446744073709551615");

        let mut id = String::from("stale");
        key_id(7, &mut id);
        assert_eq!(id, "loadgen-7");
    }
}
