//! [`Archive`]: a version's archived bytes in one shared, 8-byte-aligned allocation, with the
//! reference count beside the bytes. It is what a shard map entry holds (one pointer hop from
//! the entry to the bytes: a GET is bound by such cache misses) and what storage writes, so a
//! snapshot collects handles, not copies.
//!
//! The allocation is exactly an 8-byte header (the count) and the bytes, rounded up to 8; the
//! handle is 16 bytes (pointer, length, and two flags for its holder).
//!
//! Allocations of up to [`SLAB_SLOT_BYTES_MAX`] come from [`slabs`]: pages that hold records
//! of one size only, apart from everything else the server allocates. From `malloc` each
//! record took its size plus an 8-byte header, rounded up to 16, and the short-lived
//! allocations of each write (request state, log and audit entries) took the heap's top
//! between two records and left holes there once freed: 1,000,000 PUTs of 256 B left 17–20 MB
//! of such holes (`malloc_info`), most of 272 bytes, which a record (400) never fits.
//!
//! The cost: slab memory is never given back to the system, nor to another size class. What
//! deletes, expiry sweeps or a change of secret sizes free stays with its class, for the next
//! records of that size (`malloc` would have reused it for anything, and given back some).

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
    /// A second flag for whoever holds this handle, set only while the holder has it alone
    /// (`&mut`): a shard's entry says here whether it has rarer parts, so that a GET need not
    /// load them to learn that it has none. Not shared with clones either.
    flag: bool,
}

/// What precedes the bytes; 8 bytes, so that the bytes are 8-byte aligned: the alignment of
/// every archived type credshard stores (rkyv checks it when it validates bytes read back).
#[repr(C, align(8))]
struct Header {
    /// Handles to these bytes.
    count: AtomicUsize,
}

const HEADER_BYTES: usize = std::mem::size_of::<Header>();
const ALIGN: usize = 8;
const _: () = assert!(HEADER_BYTES == 8 && std::mem::align_of::<Header>() == ALIGN);
const _: () = assert!(std::mem::size_of::<Archive>() == 16);

// SAFETY: the bytes are never written after `copy_of` returns, the count is atomic and the
// mark is an atomic: a handle may move to, and be shared with, any thread, like an `Arc<[u8]>`.
unsafe impl Send for Archive {}
// SAFETY: as above; `&Archive` gives only reads of immutable bytes and atomic operations.
unsafe impl Sync for Archive {}

/// The bytes an archive of `len` bytes takes: the header and the bytes, rounded up to 8.
fn allocation_bytes(len: usize) -> usize {
    (HEADER_BYTES + len).next_multiple_of(ALIGN)
}

/// Allocations up to this size come from [`slabs`]; larger ones (big secrets) from `malloc`.
pub const SLAB_SLOT_BYTES_MAX: usize = 2048;

/// Pages of slots of one size each, for the allocations of archives up to
/// [`SLAB_SLOT_BYTES_MAX`] bytes: one class per multiple of 8 bytes, a free list per class
/// (threaded through the free slots themselves), and new slots cut from the class's current
/// page. Pages are never returned: a freed slot is reused by the next archive of its size
/// class, whatever the shard or thread.
mod slabs {
    use super::{ALIGN, SLAB_SLOT_BYTES_MAX};
    use std::alloc::Layout;
    use std::ptr::NonNull;
    use std::sync::Mutex;

    /// The size of a page: 163 slots of 400 bytes.
    const PAGE_BYTES: usize = 64 * 1024;
    const CLASSES: usize = SLAB_SLOT_BYTES_MAX / ALIGN;

    struct Class {
        /// The first free slot; each free slot holds the address of the next (null at the end).
        free: *mut u8,
        /// Pages taken, and slots handed out and not given back.
        pages: usize,
        used: usize,
        /// The unused rest of the class's newest page.
        next: *mut u8,
        end: *mut u8,
    }

    // SAFETY: the pointers are into pages only the slabs hand out, reached under the class's
    // mutex.
    unsafe impl Send for Class {}

    static CLASSES_: [Mutex<Class>; CLASSES] = [const {
        Mutex::new(Class {
            free: std::ptr::null_mut(),
            pages: 0,
            used: 0,
            next: std::ptr::null_mut(),
            end: std::ptr::null_mut(),
        })
    }; CLASSES];

    fn class(bytes: usize) -> &'static Mutex<Class> {
        debug_assert!(bytes.is_multiple_of(ALIGN) && (ALIGN..=SLAB_SLOT_BYTES_MAX).contains(&bytes));
        &CLASSES_[bytes / ALIGN - 1]
    }

    /// A slot of `bytes` (a multiple of 8, at most [`SLAB_SLOT_BYTES_MAX`]), 8-byte aligned.
    pub(super) fn allocate(bytes: usize) -> NonNull<u8> {
        let mut class = class(bytes).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        class.used += 1;
        if let Some(slot) = NonNull::new(class.free) {
            // SAFETY: a free slot holds the next free slot's address, written by `free`; it is
            // 8-byte aligned and at least 8 bytes long.
            class.free = unsafe { slot.as_ptr().cast::<*mut u8>().read() };
            return slot;
        }
        if (class.end as usize) - (class.next as usize) < bytes {
            let layout = Layout::from_size_align(PAGE_BYTES, ALIGN).expect("a slab page's layout");
            // SAFETY: the layout is not zero-sized.
            let page = unsafe { std::alloc::alloc(layout) };
            if page.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            class.next = page;
            class.pages += 1;
            // SAFETY: one past the end of the page's allocation.
            class.end = unsafe { page.add(PAGE_BYTES) };
        }
        let slot = class.next;
        // SAFETY: `bytes` fit in what is left of the page (checked above).
        class.next = unsafe { slot.add(bytes) };
        NonNull::new(slot).expect("a slot in a page")
    }

    /// Returns a slot `allocate(bytes)` gave.
    ///
    /// # Safety
    /// `slot` came from `allocate` with the same `bytes`, and nothing uses it any more.
    pub(super) unsafe fn free(slot: NonNull<u8>, bytes: usize) {
        let mut class = class(bytes).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: the slot is the caller's to give back, 8-byte aligned and at least 8 bytes.
        unsafe { slot.as_ptr().cast::<*mut u8>().write(class.free) };
        class.free = slot.as_ptr();
        class.used -= 1;
    }

    /// Bytes of the pages of the class of `bytes`-byte slots, and of its slots in use.
    pub(super) fn class_bytes(bytes: usize) -> (usize, usize) {
        let class = class(bytes).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (class.pages * PAGE_BYTES, class.used * bytes)
    }

    /// Bytes of all the slabs' pages, and of their slots in use.
    pub(super) fn bytes() -> (usize, usize) {
        (1..=CLASSES)
            .map(|index| class_bytes(index * ALIGN))
            .fold((0, 0), |(held, used), (class_held, class_used)| (held + class_held, used + class_used))
    }
}

/// What the record slabs hold: `held` bytes of pages (never given back), `used` of them in
/// slots that hold records (for `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabBytes {
    pub held: u64,
    pub used: u64,
}

/// What the record slabs hold now (takes each size class's lock in turn).
pub fn slab_bytes() -> SlabBytes {
    let (held, used) = slabs::bytes();
    SlabBytes { held: held as u64, used: used as u64 }
}

fn allocate(bytes: usize) -> NonNull<u8> {
    if bytes <= SLAB_SLOT_BYTES_MAX {
        return slabs::allocate(bytes);
    }
    let layout = Layout::from_size_align(bytes, ALIGN).expect("an archive's layout");
    // SAFETY: the layout is never zero-sized (it has the header).
    let raw = unsafe { std::alloc::alloc(layout) };
    NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// # Safety
/// `raw` came from `allocate(bytes)`, and nothing uses it any more.
unsafe fn free(raw: NonNull<u8>, bytes: usize) {
    if bytes <= SLAB_SLOT_BYTES_MAX {
        // SAFETY: as the caller promises.
        return unsafe { slabs::free(raw, bytes) };
    }
    let layout = Layout::from_size_align(bytes, ALIGN).expect("an archive's layout");
    // SAFETY: made by `allocate` with this layout.
    unsafe { std::alloc::dealloc(raw.as_ptr(), layout) };
}

/// Asks the CPU to start loading the cache line holding `address` into every level of its cache.
#[inline]
pub fn prefetch_line(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and changes no memory, whatever the
    // address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

impl Archive {
    /// A copy of `bytes` in a new aligned buffer (one allocation).
    ///
    /// # Panics
    /// If `bytes` is 4 GiB or more (records are bounded by the frame size, far below).
    pub fn copy_of(bytes: &[u8]) -> Archive {
        let len = u32::try_from(bytes.len()).expect("an archive under 4 GiB");
        let raw = allocate(allocation_bytes(bytes.len()));
        let header = raw.cast::<Header>();
        // SAFETY: the allocation holds a `Header` at its start (8-byte aligned) and
        // `bytes.len()` bytes right after it, which nothing else can see yet.
        unsafe {
            header.as_ptr().write(Header { count: AtomicUsize::new(1) });
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), raw.as_ptr().add(HEADER_BYTES), bytes.len());
        }
        Archive { header, len, mark: AtomicBool::new(false), flag: false }
    }

    /// The bytes, 8-byte aligned; they never move while a handle exists.
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
        prefetch_line(self.header.as_ptr().cast::<u8>());
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

    /// This handle's second flag (see [`Archive`]).
    #[inline]
    pub fn flag(&self) -> bool {
        self.flag
    }

    pub fn set_flag(&mut self, flag: bool) {
        self.flag = flag;
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
        Archive { header: self.header, len: self.len, mark: AtomicBool::new(false), flag: false }
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
        // was made in `copy_of` with this same size.
        unsafe { free(self.header.cast::<u8>(), allocation_bytes(self.len as usize)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_aligned_exact_and_shared_by_clones() {
        for len in [0, 1, 15, 16, 17, 392, SLAB_SLOT_BYTES_MAX - HEADER_BYTES, SLAB_SLOT_BYTES_MAX, 5000] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let archive = Archive::copy_of(&bytes);
            assert_eq!(archive.bytes(), &bytes[..]);
            assert_eq!(archive.bytes().as_ptr() as usize % 8, 0, "{len}");
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
        let mut flagged = Archive::copy_of(b"y");
        assert!(!flagged.flag());
        flagged.set_flag(true);
        assert!(flagged.flag() && !flagged.clone().flag(), "a clone starts clear");
    }

    #[test]
    fn a_freed_slot_is_reused_by_its_size_class() {
        // The slabs are the process's, shared by every test running at the same time: this
        // one holds a size class no other test uses (2,040 bytes), or it could see another's
        // slot.
        let len = 2029;
        assert_eq!(allocation_bytes(len), 2040);
        let first = Archive::copy_of(&vec![1; len]);
        let address = first.header;
        let neighbour = Archive::copy_of(&vec![2; len]);
        assert_eq!(neighbour.header.as_ptr() as usize - address.as_ptr() as usize, 2040, "slots are packed");
        drop(first);
        assert_eq!(slabs::class_bytes(2040), (65536, 2040), "one page, one slot in use");
        let again = Archive::copy_of(&vec![3; len - 3]);
        assert_eq!(again.header, address, "the freed slot first");
        assert_eq!(slabs::class_bytes(2040), (65536, 2 * 2040));
        let totals = slab_bytes();
        assert!(totals.held >= 65536 && totals.used >= 2 * 2040 && totals.used <= totals.held, "{totals:?}");
        assert_eq!((again.bytes(), neighbour.bytes()), (&vec![3; len - 3][..], &vec![2; len][..]));
    }

    #[test]
    fn archives_freed_on_other_threads_go_back_to_their_slab() {
        let archives: Vec<Archive> = (0..2000).map(|i| Archive::copy_of(&[i as u8; 100])).collect();
        let handles: Vec<Archive> = archives.iter().map(Archive::clone).collect();
        std::thread::spawn(move || drop(archives)).join().unwrap();
        for (i, handle) in handles.iter().enumerate() {
            assert_eq!(handle.bytes(), &[i as u8; 100][..], "alive while a handle is");
        }
        std::thread::scope(|scope| {
            for chunk in handles.chunks(500) {
                scope.spawn(move || chunk.iter().map(Archive::clone).collect::<Vec<_>>());
            }
        });
        drop(handles);
        let reused = Archive::copy_of(&[7; 100]);
        assert_eq!(reused.bytes(), &[7; 100][..]);
    }
}
