//! [`Archive`]: a version's archived bytes in one shared, 16-byte-aligned allocation, with the
//! reference count beside the bytes. It is what a shard map entry holds (one pointer hop from
//! the entry to the bytes: a GET is bound by such cache misses) and what storage writes, so a
//! snapshot collects handles, not copies.

use std::sync::Arc;

/// Archived bytes, immutable once made; cloning shares them.
#[derive(Clone)]
pub struct Archive {
    /// The bytes, padded to whole chunks.
    chunks: Arc<[Chunk]>,
    /// Bytes of the archive (the rest of the last chunk is padding).
    len: usize,
}

/// The unit of an archive's buffer: 16-byte aligned, as rkyv's archives want.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u8; CHUNK_BYTES]);

const CHUNK_BYTES: usize = 16;
const _: () = assert!(std::mem::size_of::<Chunk>() == CHUNK_BYTES && std::mem::align_of::<Chunk>() == 16);

impl Archive {
    /// A copy of `bytes` in a new aligned buffer (one allocation).
    pub fn copy_of(bytes: &[u8]) -> Archive {
        let chunks: Arc<[Chunk]> = bytes
            .chunks(CHUNK_BYTES)
            .map(|piece| {
                let mut chunk = Chunk([0; CHUNK_BYTES]);
                chunk.0[..piece.len()].copy_from_slice(piece);
                chunk
            })
            .collect();
        Archive { chunks, len: bytes.len() }
    }

    /// The bytes, 16-byte aligned; they never move while a handle exists.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        let chunks: &[Chunk] = &self.chunks;
        // SAFETY: `Chunk` is `repr(C)` over `[u8; 16]` (no padding, every bit pattern valid),
        // so the chunks are `chunks.len() * 16` initialised bytes, and `len` never exceeds
        // that (`copy_of` made exactly enough chunks for `len` bytes).
        unsafe { std::slice::from_raw_parts(chunks.as_ptr().cast::<u8>(), self.len) }
    }

    /// Asks the CPU to start loading the cache line of the handles' shared count now: a clone
    /// or drop is a locked read-modify-write of it, which waits for the line and holds back
    /// what follows, so a loop that clones or drops many handles stalls on one miss after
    /// another unless their lines were requested together first.
    #[inline]
    pub fn prefetch_count(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            // The count sits just before the data in the `Arc`'s allocation (two `usize`
            // counts, then the 16-byte-aligned chunks).
            let count = Arc::as_ptr(&self.chunks).cast::<i8>().wrapping_sub(16);
            // SAFETY: a prefetch is a hint that never faults and changes no memory, whatever
            // the address.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(count) };
        }
    }

    /// True when both are handles to the same bytes.
    pub fn same_as(&self, other: &Archive) -> bool {
        Arc::ptr_eq(&self.chunks, &other.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_aligned_exact_and_shared_by_clones() {
        for len in [0, 1, 15, 16, 17, 400] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let archive = Archive::copy_of(&bytes);
            assert_eq!(archive.bytes(), &bytes[..]);
            assert_eq!(archive.bytes().as_ptr() as usize % 16, 0, "{len}");
            let clone = archive.clone();
            assert!(clone.same_as(&archive) && !Archive::copy_of(&bytes).same_as(&archive));
        }
    }
}
