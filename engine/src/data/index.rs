//! Per-shard secondary indexes that serve LIST without scanning the shard: credential ids
//! ordered by (owner, scope, id) and by (scope, id). The shard's writer keeps them in step
//! with its map; readers on any executor take the shard's read lock for one page.
//!
//! A LIST cursor is the sort key of the last item returned, so a page starts right after it
//! in every shard whatever was written meanwhile: no id is missed or repeated for
//! credentials that exist for the whole listing.
//!
//! Cursor layout (opaque to clients): `b'O' | scope str16 | id str16` when listing by owner,
//! `b'S' | id str16` when listing by scope only.
//!
//! Each index key is one byte string, held inline when short (no allocation for the common
//! case): the tuple's fields in an order-preserving encoding, every field but the last with
//! each 0x00 byte written as 0x00 0xFF and ended by 0x00 0x01, the last (the id) as it is. Byte
//! order on these keys is the tuples' order, so a range of them is a range of tuples.

use std::collections::BTreeSet;
use std::ops::Bound;

use bytes::{BufMut, BytesMut};
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::wire::{put_str16, Reader};

use super::inline::InlineBytes;
use crate::error::OpError;

/// Index keys up to this long are held inline.
const KEY_INLINE_BYTES: usize = 46;
type Key = InlineBytes<KEY_INLINE_BYTES>;

#[derive(Default, Debug)]
pub struct ShardIndex {
    /// `(owner, scope, id)`.
    by_owner: BTreeSet<Key>,
    /// `(scope, id)`.
    by_scope: BTreeSet<Key>,
    /// Where keys are encoded before they are looked up or stored.
    scratch: Vec<u8>,
}

/// Appends `field` as a field that is not the key's last.
fn push_field(out: &mut Vec<u8>, field: &str) {
    for &byte in field.as_bytes() {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// Splits a field written by [`push_field`] off the front of `key`.
fn split_field(key: &[u8]) -> Option<(Box<str>, &[u8])> {
    let mut field = Vec::new();
    let mut at = 0;
    loop {
        match key.get(at..at + 2)? {
            [0, 1] => break,
            [0, 0xFF] => {
                field.push(0);
                at += 2;
            }
            [0, _] => return None,
            [byte, _] => {
                field.push(*byte);
                at += 1;
            }
            _ => return None,
        }
    }
    Some((String::from_utf8(field).ok()?.into(), &key[at + 2..]))
}

fn owner_key(out: &mut Vec<u8>, owner: &str, scope: &str, id: &str) {
    out.clear();
    push_field(out, owner);
    push_field(out, scope);
    out.extend_from_slice(id.as_bytes());
}

fn scope_key(out: &mut Vec<u8>, scope: &str, id: &str) {
    out.clear();
    push_field(out, scope);
    out.extend_from_slice(id.as_bytes());
}

/// Where a LIST page sorts an item: (scope, id) by owner, (id, "") by scope only.
pub type SortKey = (Box<str>, Box<str>);

/// A decoded LIST request.
#[derive(Debug)]
pub struct ListQuery<'a> {
    owner: &'a str,
    scope: &'a str,
    after: Option<SortKey>,
}

impl<'a> ListQuery<'a> {
    /// # Errors
    /// [`OpError::InvalidCursor`] when the cursor was not made by this server for this query.
    pub fn new(request: &ListRequest<'a>) -> Result<ListQuery<'a>, OpError> {
        let after = if request.cursor.is_empty() { None } else { Some(decode_cursor(request)?) };
        Ok(ListQuery { owner: request.owner, scope: request.scope, after })
    }

    /// The owner listed ("" for any).
    pub fn owner(&self) -> &'a str {
        self.owner
    }

    /// The scope listed ("" for any).
    pub fn scope(&self) -> &'a str {
        self.scope
    }

    /// The sort key the page starts after (none for the first page): (scope, id) by owner,
    /// (id, "") by scope only.
    pub fn after(&self) -> Option<&SortKey> {
        self.after.as_ref()
    }

    /// The cursor that resumes after `key`.
    pub fn cursor_after(&self, key: &SortKey, out: &mut BytesMut) {
        if self.owner.is_empty() {
            out.put_u8(b'S');
            put_str16(out, &key.0);
        } else {
            out.put_u8(b'O');
            put_str16(out, &key.0);
            put_str16(out, &key.1);
        }
    }

    /// True if a credential with this owner and scope belongs in the listing.
    pub fn matches(&self, owner: &str, scope: &str) -> bool {
        (self.owner.is_empty() || self.owner == owner) && (self.scope.is_empty() || self.scope == scope)
    }
}

fn decode_cursor(request: &ListRequest<'_>) -> Result<SortKey, OpError> {
    let (&tag, rest) = request.cursor.split_first().ok_or(OpError::InvalidCursor)?;
    let mut reader = Reader::new(rest);
    let mut field =
        || reader.str16("cursor", usize::MAX).map(Box::<str>::from).map_err(|_| OpError::InvalidCursor);
    let key = match (tag, request.owner.is_empty()) {
        (b'O', false) => (field()?, field()?),
        (b'S', true) => (field()?, Box::from("")),
        _ => return Err(OpError::InvalidCursor),
    };
    reader.finish().map_err(|_| OpError::InvalidCursor)?;
    Ok(key)
}

impl ShardIndex {
    /// An index of `(owner, scope, id)` keys, built in bulk (sorted, then filled bottom-up).
    pub fn build<'a>(keys: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> ShardIndex {
        let mut scratch = Vec::new();
        let (mut by_owner, mut by_scope): (Vec<Key>, Vec<Key>) = keys
            .map(|(owner, scope, id)| {
                owner_key(&mut scratch, owner, scope, id);
                let owned = Key::from(&scratch[..]);
                scope_key(&mut scratch, scope, id);
                (owned, Key::from(&scratch[..]))
            })
            .unzip();
        by_owner.sort_unstable();
        by_scope.sort_unstable();
        ShardIndex {
            by_owner: by_owner.into_iter().collect(),
            by_scope: by_scope.into_iter().collect(),
            scratch,
        }
    }

    pub fn insert(&mut self, owner: &str, scope: &str, id: &str) {
        owner_key(&mut self.scratch, owner, scope, id);
        self.by_owner.insert(Key::from(&self.scratch[..]));
        scope_key(&mut self.scratch, scope, id);
        self.by_scope.insert(Key::from(&self.scratch[..]));
    }

    pub fn remove(&mut self, owner: &str, scope: &str, id: &str) {
        owner_key(&mut self.scratch, owner, scope, id);
        self.by_owner.remove(&self.scratch[..]);
        scope_key(&mut self.scratch, scope, id);
        self.by_scope.remove(&self.scratch[..]);
    }

    pub fn len(&self) -> usize {
        self.by_scope.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_scope.is_empty()
    }

    /// Offers the ids after the query's cursor to `accept`, in sort order, until it has
    /// accepted `limit` of them. Returns true if it stopped because of the limit (more may
    /// follow in this shard).
    pub fn scan(
        &self,
        query: &ListQuery<'_>,
        limit: usize,
        mut accept: impl FnMut(&str, SortKey) -> bool,
    ) -> bool {
        let mut accepted = 0;
        let mut offer = |id: &str, key: SortKey| {
            if accept(id, key) {
                accepted += 1;
            }
            accepted >= limit
        };
        // Every key in the listing starts with `prefix`; the scan starts at `start`.
        let (mut prefix, mut start) = (Vec::new(), Vec::new());
        if query.owner.is_empty() {
            push_field(&mut prefix, query.scope);
            let start = match &query.after {
                Some((id, _)) => {
                    scope_key(&mut start, query.scope, id);
                    Bound::Excluded(&start[..])
                }
                None => Bound::Included(&prefix[..]),
            };
            for key in self.by_scope.range::<[u8], _>((start, Bound::Unbounded)) {
                let Some(id) = key.as_bytes().strip_prefix(&prefix[..]) else { break };
                let id = std::str::from_utf8(id).expect("index keys end with an id");
                if offer(id, (id.into(), Box::from(""))) {
                    return true;
                }
            }
        } else {
            push_field(&mut prefix, query.owner);
            let owner_bytes = prefix.len();
            if !query.scope.is_empty() {
                push_field(&mut prefix, query.scope);
            }
            let start = match &query.after {
                Some((scope, id)) => {
                    owner_key(&mut start, query.owner, scope, id);
                    Bound::Excluded(&start[..])
                }
                None => Bound::Included(&prefix[..]),
            };
            for key in self.by_owner.range::<[u8], _>((start, Bound::Unbounded)) {
                if !key.as_bytes().starts_with(&prefix) {
                    break;
                }
                let (scope, id) =
                    split_field(&key.as_bytes()[owner_bytes..]).expect("index keys hold a scope");
                let id = std::str::from_utf8(id).expect("index keys end with an id");
                if offer(id, (scope, id.into())) {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(index: &ShardIndex, request: &ListRequest<'_>, limit: usize) -> (Vec<String>, bool) {
        let query = ListQuery::new(request).unwrap();
        let mut ids = Vec::new();
        let more = index.scan(&query, limit, |id, _| {
            ids.push(id.to_owned());
            true
        });
        (ids, more)
    }

    #[test]
    fn owner_and_scope_ranges_with_cursors() {
        let mut index = ShardIndex::default();
        for (owner, scope, id) in
            [("a", "prod", "3"), ("a", "prod", "1"), ("a", "dev", "2"), ("b", "prod", "4")]
        {
            index.insert(owner, scope, id);
        }
        let by_owner = ListRequest { owner: "a", scope: "", limit: 10, cursor: b"" };
        assert_eq!(page(&index, &by_owner, 10), (vec!["2".into(), "1".into(), "3".into()], false));
        let by_owner_scope = ListRequest { scope: "prod", ..by_owner };
        assert_eq!(page(&index, &by_owner_scope, 1), (vec!["1".into()], true));
        let by_scope = ListRequest { owner: "", scope: "prod", limit: 10, cursor: b"" };
        assert_eq!(page(&index, &by_scope, 10).0, vec!["1", "3", "4"]);

        let query = ListQuery::new(&by_owner).unwrap();
        let mut cursor = BytesMut::new();
        query.cursor_after(&("dev".into(), "2".into()), &mut cursor);
        let next = ListRequest { cursor: &cursor, ..by_owner };
        assert_eq!(page(&index, &next, 10).0, vec!["1", "3"]);

        index.remove("a", "prod", "1");
        assert_eq!(page(&index, &next, 10).0, vec!["3"]);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn keys_order_as_their_tuples_whatever_bytes_the_fields_hold() {
        let fields = ["", "a", "a\0", "a\0b", "a\u{1}", "ab", "b", "\0", "\u{ff}", &"long".repeat(20)];
        let mut tuples = Vec::new();
        for owner in fields {
            for scope in fields {
                for id in ["", "x", "x\0"] {
                    tuples.push((owner, scope, id));
                }
            }
        }
        type Tuple<'a> = (&'a str, &'a str, &'a str);
        let mut encoded: Vec<(Vec<u8>, Tuple<'_>)> = tuples
            .iter()
            .map(|&(owner, scope, id)| {
                let mut key = Vec::new();
                owner_key(&mut key, owner, scope, id);
                (key, (owner, scope, id))
            })
            .collect();
        encoded.sort();
        let mut sorted = tuples.clone();
        sorted.sort();
        assert_eq!(encoded.iter().map(|(_, tuple)| *tuple).collect::<Vec<_>>(), sorted);
        for (key, (owner, scope, id)) in &encoded {
            let mut owner_field = Vec::new();
            push_field(&mut owner_field, owner);
            let (decoded_scope, rest) = split_field(&key[owner_field.len()..]).unwrap();
            assert_eq!((&*decoded_scope, rest), (*scope, id.as_bytes()));
        }
        // A listing of scope "a" by owner "a\0" sees exactly its ids, in order.
        let mut index = ShardIndex::default();
        for &(owner, scope, id) in &tuples {
            index.insert(owner, scope, id);
        }
        let request = ListRequest { owner: "a\0", scope: "a", limit: 10, cursor: b"" };
        assert_eq!(page(&index, &request, 10), (vec!["".into(), "x".into(), "x\0".into()], false));
        // By scope: (scope, id) keys, so the test's reuse of ids under every owner collapses.
        let request = ListRequest { owner: "", scope: "a\0", limit: 100, cursor: b"" };
        assert_eq!(page(&index, &request, 100), (vec!["".into(), "x".into(), "x\0".into()], false));
        for &(owner, scope, id) in &tuples {
            index.remove(owner, scope, id);
        }
        assert!(index.is_empty() && index.by_owner.is_empty());
    }

    #[test]
    fn foreign_cursors_are_rejected() {
        let by_scope_cursor = [b'S', 1, 0, b'x'];
        let by_owner = ListRequest { owner: "a", scope: "", limit: 10, cursor: &by_scope_cursor };
        assert_eq!(ListQuery::new(&by_owner).unwrap_err(), OpError::InvalidCursor);
        let garbage = ListRequest { cursor: b"O\xff", ..by_owner };
        assert_eq!(ListQuery::new(&garbage).unwrap_err(), OpError::InvalidCursor);
    }
}
