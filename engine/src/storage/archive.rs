//! [`Archive`]: a version's archived bytes in one shared, 16-byte-aligned allocation, with the
//! reference count beside the bytes. It is what a shard map entry holds (one pointer hop from
//! the entry to the bytes: a GET is bound by such cache misses) and what storage writes, so a
//! snapshot collects handles, not copies.
//!
//! The allocation is exactly a 16-byte header (the count) and the bytes, with no padding to a
//! multiple of 16; the handle is 16 bytes (pointer, length, and a flag for its holder). The
//! `Arc` of 16-byte chunks it replaces (an `Arc<[u8]>` would not be 16-byte aligned) padded the
//! bytes, carried a weak count and made a 24-byte handle: per credential that was 16 bytes of
//! the record's allocation and 16 of the map's node.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

/// Archived bytes, immutable once made; cloning shares them.
pub struct Archive {
    /// The allocation: a [`Header`], then `len` bytes.
    header: NonNull<Header>,
    len: u32,
    /// A flag for whoever holds this handle (a shard's entry marks reads of its current version
    /// here), not shared with clones: a clone starts with it clear. It sits where the handle
    /// would otherwise be padding.
    mark: AtomicBool,
}

/// What precedes the bytes; 16 bytes, so that the bytes are 16-byte aligned, as rkyv's archives
/// want.
#[repr(C, align(16))]
struct Header {
    /// Handles to these bytes.
    count: AtomicUsize,
}

const HEADER_BYTES: usize = std::mem::size_of::<Header>();
const _: () = assert!(HEADER_BYTES == 16 && std::mem::align_of::<Header>() == 16);
const _: () = assert!(std::mem::size_of::<Archive>() == 16);

// SAFETY: the bytes are never written after `copy_of` returns, the count is atomic and the
// mark is an atomic: a handle may move to, and be shared with, any thread, like an `Arc<[u8]>`.
unsafe impl Send for Archive {}
// SAFETY: as above; `&Archive` gives only reads of immutable bytes and atomic operations.
unsafe impl Sync for Archive {}

/// The allocation of an archive of `len` bytes.
fn layout(len: usize) -> Layout {
    Layout::from_size_align(HEADER_BYTES + len, HEADER_BYTES).expect("an archive's layout")
}

impl Archive {
    /// A copy of `bytes` in a new aligned buffer (one allocation).
    ///
    /// # Panics
    /// If `bytes` is 4 GiB or more (records are bounded by the frame size, far below).
    pub fn copy_of(bytes: &[u8]) -> Archive {
        let len = u32::try_from(bytes.len()).expect("an archive under 4 GiB");
        let layout = layout(bytes.len());
        // SAFETY: the layout is never zero-sized (it has the header).
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(header) = NonNull::new(raw.cast::<Header>()) else { std::alloc::handle_alloc_error(layout) };
        // SAFETY: the allocation holds a `Header` at its start (aligned: the layout's
        // alignment is the header's) and `bytes.len()` bytes right after it, which nothing
        // else can see yet.
        unsafe {
            header.as_ptr().write(Header { count: AtomicUsize::new(1) });
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), raw.add(HEADER_BYTES), bytes.len());
        }
        Archive { header, len, mark: AtomicBool::new(false) }
    }

    /// The bytes, 16-byte aligned; they never move while a handle exists.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `copy_of` wrote `len` bytes right after the header, and they stay there,
        // unchanged, until the last handle (this one is alive) is dropped.
        unsafe {
            std::slice::from_raw_parts(self.header.as_ptr().cast::<u8>().add(HEADER_BYTES), self.len as usize)
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the header lives as long as any handle (this one is alive).
        unsafe { self.header.as_ref() }
    }

    /// Asks the CPU to start loading the cache line of the handles' shared count now: a clone
    /// or drop is a locked read-modify-write of it, which waits for the line and holds back
    /// what follows, so a loop that clones or drops many handles stalls on one miss after
    /// another unless their lines were requested together first.
    #[inline]
    pub fn prefetch_count(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            let count = self.header.as_ptr().cast::<i8>();
            // SAFETY: a prefetch is a hint that never faults and changes no memory, whatever
            // the address.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(count) };
        }
    }

    /// True when both are handles to the same bytes.
    pub fn same_as(&self, other: &Archive) -> bool {
        self.header == other.header
    }

    /// Sets this handle's own flag (see [`Archive`]); a plain load first, so that a set flag
    /// is never written again (readers on several cores do not bounce its line).
    #[inline]
    pub fn set_mark(&self) {
        if !self.mark.load(Ordering::Relaxed) {
            self.mark.store(true, Ordering::Relaxed);
        }
    }

    /// Clears this handle's own flag; returns whether it was set.
    pub fn take_mark(&self) -> bool {
        self.mark.swap(false, Ordering::Relaxed)
    }
}

impl Clone for Archive {
    fn clone(&self) -> Archive {
        // Relaxed, as `Arc` does: a new handle is made from an existing one, which keeps the
        // bytes alive meanwhile.
        let before = self.header().count.fetch_add(1, Ordering::Relaxed);
        if before > isize::MAX as usize {
            // Billions of leaked handles: stop before the count can wrap.
            std::process::abort();
        }
        Archive { header: self.header, len: self.len, mark: AtomicBool::new(false) }
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        // Release, then Acquire before freeing, as `Arc` does: every use of the bytes through
        // other handles happens before they are freed.
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: this was the last handle, so nothing can reach the allocation any more; it
        // was made in `copy_of` with this same layout.
        unsafe { std::alloc::dealloc(self.header.as_ptr().cast::<u8>(), layout(self.len as usize)) };
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
            drop(archive);
            assert_eq!(clone.bytes(), &bytes[..], "the bytes outlive the first handle");
        }
    }

    #[test]
    fn handles_share_the_bytes_until_the_last_is_dropped() {
        let archive = Archive::copy_of(b"shared");
        let handles: Vec<Archive> = (0..4).map(|_| archive.clone()).collect();
        assert_eq!(archive.header().count.load(Ordering::Relaxed), 5);
        let moved =
            std::thread::spawn(move || handles.iter().map(|handle| handle.bytes().len()).sum::<usize>());
        assert_eq!(moved.join().unwrap(), 24);
        assert_eq!(archive.header().count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_mark_belongs_to_one_handle() {
        let archive = Archive::copy_of(b"x");
        assert!(!archive.take_mark());
        archive.set_mark();
        let clone = archive.clone();
        assert!(!clone.take_mark(), "a clone starts clear");
        assert!(archive.take_mark() && !archive.take_mark());
    }
}
