//! [`IdSet`]: an ordered set of credential ids packed into chunks, for the LIST index.
//!
//! A `BTreeSet` of ids costs a fixed-size slot per id (24 bytes inline, or a pointer and a
//! heap copy) in leaves that ids arriving in order leave about half full: ≈ 45 bytes per id.
//! Here each chunk is one buffer of length-prefixed ids in order (an id of 14 bytes takes 15),
//! chunks are keyed by their first id in a `BTreeMap`, and ids arriving in order fill each
//! chunk before starting the next: ≈ 17 bytes per such id, whatever its length up to the
//! protocol's limit.
//!
//! Finding an id walks its chunk (at most [`CHUNK_BYTES_MAX`] bytes): cheap next to the map
//! lookup that finds the chunk, and done only when a credential is created or removed, or a
//! LIST page starts.

use std::collections::BTreeMap;
use std::ops::Bound;

/// A chunk that would grow past this many bytes is split (or, when the new id goes at its end,
/// the id starts the next chunk).
const CHUNK_BYTES_MAX: usize = 1024;

#[derive(Default, Debug)]
pub struct IdSet {
    /// Each chunk's ids in order, each a LEB128 length then its bytes, keyed by the chunk's
    /// first id. No chunk is empty, and every id of a chunk sorts before the next chunk's key.
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

/// An id's bytes as a chunk holds them.
fn encoded(id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(varint_len(id.len()) + id.len());
    push_varint(&mut out, id.len());
    out.extend_from_slice(id);
    out
}

/// A chunk's ids in order, each with its offset in the chunk.
fn entries(chunk: &[u8]) -> impl Iterator<Item = (usize, &[u8])> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let byte = *chunk.get(at)?;
            at += 1;
            len |= usize::from(byte & 0x7F) << shift;
            shift += 7;
            if byte < 0x80 {
                break;
            }
        }
        let id = &chunk[at..at + len];
        at += len;
        Some((start, id))
    })
}

/// Where `id` is or would go in `chunk`: its offset, and whether it is there.
fn position(chunk: &[u8], id: &[u8]) -> (usize, bool) {
    for (at, held) in entries(chunk) {
        if held >= id {
            return (at, held == id);
        }
    }
    (chunk.len(), false)
}

/// Where to split `chunk` in two: the first id that starts at or after its middle, else its
/// last id; `None` when it holds one id.
fn middle(chunk: &[u8]) -> Option<usize> {
    let mut last = None;
    for (at, _) in entries(chunk).skip(1) {
        if at >= chunk.len() / 2 {
            return Some(at);
        }
        last = Some(at);
    }
    last
}

fn first_id(chunk: &[u8]) -> &[u8] {
    entries(chunk).next().expect("chunks are not empty").1
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
        let mut last: Option<&[u8]> = None;
        for id in ids {
            debug_assert!(last.is_none_or(|last| last <= id), "sorted");
            if last.replace(id) == Some(id) {
                continue;
            }
            if chunk.len() + varint_len(id.len()) + id.len() > CHUNK_BYTES_MAX && !chunk.is_empty() {
                set.chunks.insert(first_id(&chunk).into(), std::mem::take(&mut chunk));
            }
            push_varint(&mut chunk, id.len());
            chunk.extend_from_slice(id);
            set.len += 1;
        }
        if !chunk.is_empty() {
            chunk.shrink_to_fit();
            set.chunks.insert(first_id(&chunk).into(), chunk);
        }
        set
    }

    /// Adds `id`; false if it was there already.
    pub fn insert(&mut self, id: &[u8]) -> bool {
        let encoded = encoded(id);
        // The chunk it goes in: the last one whose first id sorts before it.
        let Some((_, chunk)) =
            self.chunks.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(id))).next_back()
        else {
            self.insert_first(id, encoded);
            return true;
        };
        let (at, found) = position(chunk, id);
        if found {
            return false;
        }
        self.len += 1;
        if chunk.len() + encoded.len() <= CHUNK_BYTES_MAX {
            chunk.splice(at..at, encoded);
            return true;
        }
        let middle = middle(chunk).filter(|_| at < chunk.len());
        let (key, new_chunk) = if let Some(middle) = middle {
            let mut tail = chunk.split_off(middle);
            chunk.shrink_to_fit();
            if at < middle {
                chunk.splice(at..at, encoded);
            } else {
                tail.splice(at - middle..at - middle, encoded);
            }
            (first_id(&tail).into(), tail)
        } else {
            // At the end of a full chunk (or after its only id): the id starts the next one,
            // so ids that arrive in order leave full chunks behind them.
            (id.into(), encoded)
        };
        self.chunks.insert(key, new_chunk);
        true
    }

    /// Adds `id`, which sorts before every id held (or there is none).
    fn insert_first(&mut self, id: &[u8], encoded: Vec<u8>) {
        self.len += 1;
        let Some(first) = self.chunks.first_entry() else {
            self.chunks.insert(id.into(), encoded);
            return;
        };
        if first.get().len() + encoded.len() > CHUNK_BYTES_MAX {
            // A chunk of its own, which the ids that arrive in descending order then fill.
            self.chunks.insert(id.into(), encoded);
            return;
        }
        let mut chunk = first.remove();
        chunk.splice(0..0, encoded);
        self.chunks.insert(id.into(), chunk);
    }

    /// Removes `id`; false if it was not there.
    pub fn remove(&mut self, id: &[u8]) -> bool {
        let Some((key, chunk)) =
            self.chunks.range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(id))).next_back()
        else {
            return false;
        };
        let (at, found) = position(chunk, id);
        if !found {
            return false;
        }
        self.len -= 1;
        chunk.drain(at..at + varint_len(id.len()) + id.len());
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

    /// The ids after `after` (all of them for `None`), in order.
    pub fn after<'a>(&'a self, after: Option<&'a [u8]>) -> impl Iterator<Item = &'a [u8]> + 'a {
        // The chunk that may hold ids on both sides of `after`, then every chunk after it.
        let straddling = after.and_then(|after| {
            self.chunks
                .range::<[u8], _>((Bound::Unbounded, Bound::Included(after)))
                .next_back()
                .map(|(_, chunk)| (after, chunk))
        });
        let head = straddling
            .into_iter()
            .flat_map(|(after, chunk)| entries(chunk).map(|(_, id)| id).filter(move |id| *id > after));
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let rest = self
            .chunks
            .range::<[u8], _>((lower, Bound::Unbounded))
            .flat_map(|(_, chunk)| entries(chunk).map(|(_, id)| id));
        head.chain(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn check(set: &IdSet, model: &BTreeSet<Vec<u8>>) {
        assert_eq!(set.len(), model.len());
        assert!(set.after(None).eq(model.iter().map(Vec::as_slice)));
        let mut previous: Option<&[u8]> = None;
        for (key, chunk) in &set.chunks {
            assert!(!chunk.is_empty() && first_id(chunk) == &**key);
            // Chunks of short ids stay within the bound (a long id may take a chunk past it).
            assert!(chunk.len() <= CHUNK_BYTES_MAX || entries(chunk).any(|(_, id)| id.len() > 64));
            assert!(previous.is_none_or(|previous| previous < &**key));
            previous = entries(chunk).last().map(|(_, id)| id);
        }
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, 65_535, 1 << 21] {
            let mut out = Vec::new();
            push_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            out.extend(std::iter::repeat_n(b'x', value));
            assert_eq!(entries(&out).next().unwrap().1.len(), value);
        }
    }

    #[test]
    fn ids_in_order_fill_chunks() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("loadgen-{i:06}")).collect();
        let mut set = IdSet::default();
        for id in &ids {
            assert!(set.insert(id.as_bytes()));
        }
        let held: usize = set.chunks.values().map(Vec::len).sum();
        assert_eq!(held, ids.len() * 15);
        assert!(set.chunks.len() <= held / (CHUNK_BYTES_MAX - 15) + 1, "{} chunks", set.chunks.len());
        let mut descending = IdSet::default();
        for id in ids.iter().rev() {
            assert!(descending.insert(id.as_bytes()));
        }
        assert!(
            descending.chunks.len() <= held / (CHUNK_BYTES_MAX - 15) + 1,
            "{} chunks",
            descending.chunks.len()
        );
        let built = IdSet::from_sorted(ids.iter().flat_map(|id| [id.as_bytes(), id.as_bytes()]));
        let model: BTreeSet<Vec<u8>> = ids.iter().map(|id| id.as_bytes().to_vec()).collect();
        for set in [&set, &descending, &built] {
            check(set, &model);
            assert!(set.after(Some(b"loadgen-004999")).eq(ids[5000..].iter().map(|id| id.as_bytes())));
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
                prop_assert!(set.after(Some(&probe)).eq(expected.map(Vec::as_slice)));
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
