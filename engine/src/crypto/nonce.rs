//! Random 96-bit GCM nonces from the operating system's CSPRNG, drawn in blocks so a write
//! does not pay a `getrandom` system call each time.

use std::cell::RefCell;

use zeroize::Zeroize;

/// Bytes of a GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Random bytes fetched per system call (enough for 341 nonces).
const POOL_BYTES: usize = 4096;

struct Pool {
    bytes: [u8; POOL_BYTES],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL_BYTES], used: POOL_BYTES }) };
}

/// A fresh random nonce. Each byte of the pool is handed out once and wiped as it is taken.
///
/// # Panics
/// If the operating system cannot provide randomness, which leaves no safe way to encrypt.
pub fn random_nonce() -> [u8; NONCE_BYTES] {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.used + NONCE_BYTES > POOL_BYTES {
            getrandom::fill(&mut pool.bytes).expect("the OS random number generator failed");
            pool.used = 0;
        }
        let start = pool.used;
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&pool.bytes[start..start + NONCE_BYTES]);
        pool.bytes[start..start + NONCE_BYTES].zeroize();
        pool.used += NONCE_BYTES;
        nonce
    })
}

/// Fills `out` with fresh OS randomness (for keys and salts).
///
/// # Panics
/// If the operating system cannot provide randomness.
pub fn random_bytes(out: &mut [u8]) {
    getrandom::fill(out).expect("the OS random number generator failed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn nonces_do_not_repeat() {
        let nonces: HashSet<_> = (0..10_000).map(|_| random_nonce()).collect();
        assert_eq!(nonces.len(), 10_000);
    }
}
