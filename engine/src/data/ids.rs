//! [`IdSet`]: an ordered set of credential ids packed into front-coded chunks, for the LIST
//! index.
//!
//! A `BTreeSet` of ids costs a fixed-size slot per id (24 bytes inline, or a pointer and a
//! heap copy) in leaves that ids arriving in order leave about half full: ≈ 45 bytes per id.
//! Here each chunk is one buffer of ids in order, each stored as the length of the prefix it
//! shares with the id before it, then the rest: ids in order share most of their bytes, so
//! `loadgen-123456` after `loadgen-123455` takes 3 bytes. Chunks are keyed by their first id
//! (stored whole) in a `BTreeMap`, and ids arriving in order fill each chunk before starting
//! the next.
//!
//! Finding an id walks its chunk (at most [`CHUNK_BYTES_MAX`] bytes), rebuilding each id from
//! the one before: cheap next to the map lookup that finds the chunk, and done only when a
//! credential is created or removed, or a LIST page starts.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

/// A chunk that would grow past this many bytes is split (or, when the new id goes at its end,
/// the id starts the next chunk). A power of two: a chunk's buffer grows by doubling up to it
/// and never past it, so a full chunk wastes no capacity.
const CHUNK_BYTES_MAX: usize = 1024;

#[derive(Default, Debug)]
pub struct IdSet {
    /// Each chunk's ids in order, each a LEB128 count of the bytes it shares with the id before
    /// it (0 for the chunk's first), a LEB128 length of the rest, then the rest; keyed by the
    /// chunk's first id. No chunk is empty, and every id of a chunk sorts before the next
    /// chunk's key.
    chunks: BTreeMap<Box<[u8]>, Vec<u8>>,
    len: usize,
}

fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(chunk: &[u8], at: &mut usize) -> usize {
    let (mut value, mut shift) = (0usize, 0);
    loop {
        let byte = chunk[*at];
        *at += 1;
        value |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte < 0x80 {
            return value;
        }
    }
}

fn shared_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(a, b)| a == b).count()
}

/// Appends `id` as an entry after `previous` (empty for a chunk's first id).
fn push_entry(out: &mut Vec<u8>, previous: &[u8], id: &[u8]) {
    let shared = shared_prefix(previous, id);
    push_varint(out, shared);
    push_varint(out, id.len() - shared);
    out.extend_from_slice(&id[shared..]);
}

/// `id` as an entry after `previous`.
fn entry(previous: &[u8], id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + id.len());
    push_entry(&mut out, previous, id);
    out
}

/// Replaces `chunk[range]` with `with`, growing the buffer by doubling up to
/// [`CHUNK_BYTES_MAX`] (exactly beyond it) rather than by `Vec`'s own doubling, which would
/// leave a full chunk with twice its bytes.
fn splice(chunk: &mut Vec<u8>, range: std::ops::Range<usize>, with: &[u8]) {
    let new_len = chunk.len() - range.len() + with.len();
    if new_len > chunk.capacity() {
        let target = new_len.next_power_of_two().min(CHUNK_BYTES_MAX).max(new_len);
        chunk.reserve_exact(target - chunk.len());
    }
    chunk.splice(range, with.iter().copied());
}

/// A walk through a chunk's ids in order, rebuilding each from the one before.
struct Walk<'a> {
    chunk: &'a [u8],
    /// Where the current id's entry starts, and where the next one does.
    start: usize,
    next: usize,
    /// The current id (empty before the first).
    id: Vec<u8>,
}

impl<'a> Walk<'a> {
    fn new(chunk: &'a [u8]) -> Walk<'a> {
        Walk { chunk, start: 0, next: 0, id: Vec::new() }
    }

    /// Moves to the next id; false at the end of the chunk.
    fn advance(&mut self) -> bool {
        if self.next >= self.chunk.len() {
            self.start = self.chunk.len();
            return false;
        }
        let mut at = self.next;
        let shared = read_varint(self.chunk, &mut at);
        let rest = read_varint(self.chunk, &mut at);
        debug_assert!(shared <= self.id.len(), "an entry shares no more than the id before it has");
        self.id.truncate(shared);
        self.id.extend_from_slice(&self.chunk[at..at + rest]);
        (self.start, self.next) = (self.next, at + rest);
        true
    }
}

/// Where `id` is or would go in `chunk`.
struct Position {
    /// Where its entry starts, or where it would.
    at: usize,
    /// The id before that (empty at the start).
    previous: Vec<u8>,
    /// The id whose entry starts at `at` and where that entry ends (`None` at the end).
    here: Option<(Vec<u8>, usize)>,
}

fn position(chunk: &[u8], id: &[u8]) -> Position {
    let mut walk = Walk::new(chunk);
    let mut previous = Vec::new();
    while walk.advance() {
        if walk.id.as_slice() >= id {
            let end = walk.next;
            return Position { at: walk.start, previous, here: Some((walk.id, end)) };
        }
        previous.clone_from(&walk.id);
    }
    Position { at: chunk.len(), previous, here: None }
}

fn first_id(chunk: &[u8]) -> Vec<u8> {
    let mut walk = Walk::new(chunk);
    assert!(walk.advance(), "chunks are not empty");
    walk.id
}

/// Splits `chunk` at its first id that starts at or after its middle (else its last id), and
/// returns the second part, its first id stored whole, with that id; `None` when it holds one
/// id.
fn split(chunk: &mut Vec<u8>) -> Option<(Box<[u8]>, Vec<u8>)> {
    let mut walk = Walk::new(chunk);
    walk.advance();
    let mut last = None;
    while walk.advance() {
        last = Some((walk.start, walk.next, walk.id.clone()));
        if walk.start >= chunk.len() / 2 {
            break;
        }
    }
    let (start, end, id) = last?;
    let mut tail =
        Vec::with_capacity((chunk.len() - end + 2 + id.len()).next_power_of_two().min(CHUNK_BYTES_MAX));
    push_entry(&mut tail, &[], &id);
    tail.extend_from_slice(&chunk[end..]);
    chunk.truncate(start);
    chunk.shrink_to(chunk.len().next_power_of_two().min(CHUNK_BYTES_MAX));
    Some((id.into(), tail))
}

impl IdSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// An ordered set of `ids`, which come sorted (a repeat is skipped), in full chunks.
    pub fn from_sorted<'a>(ids: impl IntoIterator<Item = &'a [u8]>) -> IdSet {
        let mut set = IdSet::default();
        let mut chunk = Vec::new();
        let mut first: &[u8] = &[];
        let mut last: Option<&[u8]> = None;
        for id in ids {
            debug_assert!(last.is_none_or(|last| last <= id), "sorted");
            let previous = match last.replace(id) {
                Some(previous) if previous == id => continue,
                Some(previous) => previous,
                None => &[],
            };
            let shared = shared_prefix(previous, id);
            let bytes = varint_len(shared) + varint_len(id.len() - shared) + id.len() - shared;
            if chunk.len() + bytes > CHUNK_BYTES_MAX && !chunk.is_empty() {
                chunk.shrink_to_fit();
                set.chunks.insert(first.into(), std::mem::take(&mut chunk));
            }
            if chunk.is_empty() {
                first = id;
                push_entry(&mut chunk, &[], id);
            } else {
                push_entry(&mut chunk, previous, id);
            }
            set.len += 1;
        }
        if !chunk.is_empty() {
            chunk.shrink_to_fit();
            set.chunks.insert(first.into(), chunk);
        }
        set
    }

    /// Adds `id`; false if it was there already.
    pub fn insert(&mut self, id: &[u8]) -> bool {
        // The chunk it goes in: the last one whose first id sorts before it.
        let Some((_, chunk)) =
            self.chunks.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(id))).next_back()
        else {
            self.insert_first(id);
            return true;
        };
        let Position { at, previous, here } = position(chunk, id);
        if here.as_ref().is_some_and(|(held, _)| held == id) {
            return false;
        }
        self.len += 1;
        let mut bytes = entry(&previous, id);
        if here.is_none() && chunk.len() + bytes.len() > CHUNK_BYTES_MAX {
            // At the end of a full chunk: the id starts the next one, so ids that arrive in
            // order leave full chunks behind them.
            self.chunks.insert(id.into(), entry(&[], id));
            return true;
        }
        // The id after it is stored against it now.
        let end = match &here {
            Some((next, end)) => {
                push_entry(&mut bytes, id, next);
                *end
            }
            None => at,
        };
        splice(chunk, at..end, &bytes);
        if chunk.len() > CHUNK_BYTES_MAX {
            if let Some((key, tail)) = split(chunk) {
                self.chunks.insert(key, tail);
            }
        }
        true
    }

    /// Adds `id`, which sorts before every id held (or there is none).
    fn insert_first(&mut self, id: &[u8]) {
        self.len += 1;
        let Some(first) = self.chunks.first_entry() else {
            self.chunks.insert(id.into(), entry(&[], id));
            return;
        };
        let mut bytes = entry(&[], id);
        let old_first = first.key().to_vec();
        push_entry(&mut bytes, id, &old_first);
        let old_first_end = position(first.get(), &old_first).here.expect("its first id").1;
        if first.get().len() - old_first_end + bytes.len() > CHUNK_BYTES_MAX {
            // A chunk of its own, which the ids that arrive in descending order then fill.
            self.chunks.insert(id.into(), entry(&[], id));
            return;
        }
        let mut chunk = first.remove();
        splice(&mut chunk, 0..old_first_end, &bytes);
        self.chunks.insert(id.into(), chunk);
    }

    /// Removes `id`; false if it was not there.
    pub fn remove(&mut self, id: &[u8]) -> bool {
        let Some((key, chunk)) =
            self.chunks.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(id))).next_back()
        else {
            return false;
        };
        let Position { at, previous, here } = position(chunk, id);
        let Some((_, end)) = here.filter(|(held, _)| held == id) else { return false };
        self.len -= 1;
        // The id after it is stored against the one before it now.
        let mut walk = Walk { chunk, start: at, next: end, id: id.to_vec() };
        if walk.advance() {
            let (next, next_end) = (std::mem::take(&mut walk.id), walk.next);
            splice(chunk, at..next_end, &entry(&previous, &next));
        } else {
            chunk.truncate(at);
        }
        if chunk.len() < chunk.capacity() / 4 {
            chunk.shrink_to_fit();
        }
        if at == 0 {
            // It was the chunk's key: the chunk goes, or is keyed by its new first id.
            debug_assert_eq!(&**key, id);
            let chunk = self.chunks.remove(id).expect("the chunk just found");
            if !chunk.is_empty() {
                self.chunks.insert(first_id(&chunk).into(), chunk);
            }
        }
        true
    }

    /// Calls `visit` with each id after `after` (all of them for `None`), in order, until it
    /// breaks; returns whether it did.
    pub fn each_after(
        &self,
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        // The chunk that may hold ids on both sides of `after`, then every chunk after it.
        let straddling = after.and_then(|after| {
            self.chunks.range::<[u8], _>((Bound::Unbounded, Bound::Included(after))).next_back()
        });
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let rest = self.chunks.range::<[u8], _>((lower, Bound::Unbounded));
        for (_, chunk) in straddling.into_iter().chain(rest) {
            let mut walk = Walk::new(chunk);
            while walk.advance() {
                if after.is_none_or(|after| walk.id.as_slice() > after) {
                    visit(&walk.id)?;
                }
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The ids `each_after` visits.
    fn after(set: &IdSet, after: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut ids = Vec::new();
        let _ = set.each_after(after, |id| {
            ids.push(id.to_vec());
            ControlFlow::Continue(())
        });
        ids
    }

    /// A chunk's ids in order.
    fn ids_of(chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut walk = Walk::new(chunk);
        std::iter::from_fn(|| walk.advance().then(|| walk.id.clone())).collect()
    }

    fn check(set: &IdSet, model: &BTreeSet<Vec<u8>>) {
        assert_eq!(set.len(), model.len());
        assert_eq!(after(set, None), model.iter().cloned().collect::<Vec<_>>());
        let mut previous: Option<Vec<u8>> = None;
        for (key, chunk) in &set.chunks {
            let ids = ids_of(chunk);
            assert!(!chunk.is_empty() && ids[0] == **key);
            // The first id is stored whole: the chunk's first bytes say it shares nothing.
            assert_eq!(chunk[0], 0, "a chunk's first id shares no prefix");
            // Chunks of short ids stay within the bound (a long id may take a chunk past it),
            // and their buffers never hold more than the bound.
            assert!(chunk.len() <= CHUNK_BYTES_MAX || ids.iter().any(|id| id.len() > 64));
            assert!(chunk.capacity() <= CHUNK_BYTES_MAX.max(chunk.len()) * 2, "{}", chunk.capacity());
            assert!(previous.is_none_or(|previous| previous.as_slice() < &**key));
            previous = ids.last().cloned();
        }
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, 65_535, 1 << 21] {
            let mut out = Vec::new();
            push_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            let mut at = 0;
            assert_eq!((read_varint(&out, &mut at), at), (value, out.len()));
        }
    }

    #[test]
    fn ids_in_order_fill_chunks() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("loadgen-{i:06}")).collect();
        let mut set = IdSet::default();
        for id in &ids {
            assert!(set.insert(id.as_bytes()));
        }
        // Ids in order share most of their bytes with the one before: 3.1 bytes each on
        // average (two counts and what differs), where whole each took 15.
        let held: usize = set.chunks.values().map(Vec::len).sum();
        assert!(held <= ids.len() * 4, "{held} bytes");
        let capacity: usize = set.chunks.values().map(Vec::capacity).sum();
        assert!(capacity <= set.chunks.len() * CHUNK_BYTES_MAX, "full chunks, no spare capacity: {capacity}");
        assert!(set.chunks.len() <= held / (CHUNK_BYTES_MAX - 16) + 1, "{} chunks", set.chunks.len());
        let mut descending = IdSet::default();
        for id in ids.iter().rev() {
            assert!(descending.insert(id.as_bytes()));
        }
        assert!(
            descending.chunks.len() <= held / (CHUNK_BYTES_MAX - 16) + 1,
            "{} chunks",
            descending.chunks.len()
        );
        let built = IdSet::from_sorted(ids.iter().flat_map(|id| [id.as_bytes(), id.as_bytes()]));
        let model: BTreeSet<Vec<u8>> = ids.iter().map(|id| id.as_bytes().to_vec()).collect();
        for set in [&set, &descending, &built] {
            check(set, &model);
            let expected: Vec<Vec<u8>> = ids[5000..].iter().map(|id| id.as_bytes().to_vec()).collect();
            assert_eq!(after(set, Some(b"loadgen-004999")), expected);
        }
    }

    proptest! {
        #[test]
        fn behaves_as_an_ordered_set(
            ops in prop::collection::vec((any::<bool>(), prop::collection::vec(0u8..4, 0..40)), 0..600),
            probes in prop::collection::vec(prop::collection::vec(0u8..4, 0..40), 0..20),
        ) {
            // Few distinct bytes and lengths up to 40: many shared prefixes, chunks that split
            // and empty, ids removed from the front of their chunk.
            let mut set = IdSet::default();
            let mut model = BTreeSet::new();
            for (insert, id) in ops {
                if insert {
                    prop_assert_eq!(set.insert(&id), model.insert(id));
                } else {
                    prop_assert_eq!(set.remove(&id), model.remove(&id));
                }
            }
            check(&set, &model);
            for probe in probes {
                let expected = model.range::<[u8], _>((Bound::Excluded(&probe[..]), Bound::Unbounded));
                prop_assert_eq!(after(&set, Some(&probe)), expected.cloned().collect::<Vec<_>>());
            }
            let built = IdSet::from_sorted(model.iter().map(Vec::as_slice));
            check(&built, &model);
        }

        #[test]
        fn ids_as_long_as_a_chunk_split_and_move_correctly(
            ops in prop::collection::vec((0u8..3, 0u8..3, 0usize..1500), 0..300),
        ) {
            // Ids from empty to longer than a chunk: a chunk of one or two ids is split or
            // appended to, and its key changes as its first id goes.
            let mut set = IdSet::default();
            let mut model = BTreeSet::new();
            for (op, first, len) in ops {
                let id: Vec<u8> = std::iter::once(first).chain(std::iter::repeat_n(b'x', len)).collect();
                if op > 0 {
                    prop_assert_eq!(set.insert(&id), model.insert(id));
                } else {
                    prop_assert_eq!(set.remove(&id), model.remove(&id));
                }
                check(&set, &model);
            }
        }
    }
}
