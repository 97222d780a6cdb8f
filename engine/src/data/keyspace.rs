//! Which shard owns a credential: `shard = fnv1a_64(id bytes) mod shard_count`.
//!
//! The hash is fixed (FNV-1a, 64-bit, offset basis 0xcbf29ce484222325, prime 0x100000001b3)
//! so that placement is stable across restarts, builds and versions; it is documented in
//! docs/architecture.md and recorded in the data dir's manifest.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64-bit hash of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME))
}

/// The shard that owns `id`.
///
/// # Panics
/// If `shard_count` is 0.
#[inline]
pub fn shard_for(id: &str, shard_count: usize) -> usize {
    assert!(shard_count > 0, "at least one shard");
    (fnv1a_64(id.as_bytes()) % shard_count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_keep_placement_stable() {
        // Reference values of FNV-1a 64: changing them would move every stored credential.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(shard_for("foobar", 2), (0x8594_4171_f739_67e8u64 % 2) as usize);
    }

    #[test]
    fn ids_spread_over_shards() {
        let mut counts = [0usize; 4];
        for index in 0..10_000 {
            counts[shard_for(&format!("credential-{index}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&count| count > 2_000), "{counts:?}");
    }
}
