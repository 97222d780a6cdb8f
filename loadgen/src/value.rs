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
    use std::fmt::Write;
    out.clear();
    write!(out, "loadgen-{key_index}").expect("writing to a String cannot fail");
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

        let mut id = String::from("stale");
        key_id(7, &mut id);
        assert_eq!(id, "loadgen-7");
    }
}
