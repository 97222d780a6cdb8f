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
//! Both indexes are nested maps, so that an owner's and a scope's names are held once per
//! shard, not once per credential: per credential each holds only the id, packed with its
//! group's other ids ([`IdSet`]). Iterating them in order yields the tuples in order.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use bytes::{BufMut, BytesMut};
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::wire::{put_str16, Reader};

use super::ids::IdSet;
use crate::error::OpError;

#[derive(Default, Debug)]
pub struct ShardIndex {
    /// owner → scope → ids: `(owner, scope, id)` in order.
    by_owner: BTreeMap<Box<str>, BTreeMap<Box<str>, IdSet>>,
    /// scope → ids: `(scope, id)` in order.
    by_scope: BTreeMap<Box<str>, IdSet>,
    /// Ids indexed (each is in both maps once).
    len: usize,
}

/// `map[key]`, inserted empty if absent; allocates the key only when it is new.
fn group<'a, V: Default>(map: &'a mut BTreeMap<Box<str>, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.into(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// Removes `id` from `map[key]`, and the group if it is left empty; returns whether it was there.
fn remove_from<V>(
    map: &mut BTreeMap<Box<str>, V>,
    key: &str,
    remove: impl FnOnce(&mut V) -> (bool, bool),
) -> bool {
    let Some(value) = map.get_mut(key) else { return false };
    let (removed, empty) = remove(value);
    if empty {
        map.remove(key);
    }
    removed
}

/// Calls `visit` with each id of a group after `after` (all of them for `None`), in order,
/// until it returns true; returns whether it did.
fn each_id_after(ids: &IdSet, after: Option<&str>, mut visit: impl FnMut(&str) -> bool) -> bool {
    ids.each_after(after.map(str::as_bytes), |id| {
        let id = std::str::from_utf8(id).expect("index ids are made from a str");
        if visit(id) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
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
    /// An index of `(owner, scope, id)` keys, built in bulk (sorted, then each group's ids
    /// filled bottom-up).
    pub fn build<'a>(keys: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> ShardIndex {
        let mut keys: Vec<(&str, &str, &str)> = keys.collect();
        keys.sort_unstable();
        keys.dedup();
        let mut index = ShardIndex::default();
        for run in keys.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (owner, scope, _) = run[0];
            let ids = IdSet::from_sorted(run.iter().map(|&(_, _, id)| id.as_bytes()));
            group(&mut index.by_owner, owner).insert(scope.into(), ids);
        }
        keys.sort_unstable_by_key(|&(_, scope, id)| (scope, id));
        for run in keys.chunk_by(|a, b| a.1 == b.1) {
            let ids = IdSet::from_sorted(run.iter().map(|&(_, _, id)| id.as_bytes()));
            index.len += ids.len();
            index.by_scope.insert(run[0].1.into(), ids);
        }
        index
    }

    pub fn insert(&mut self, owner: &str, scope: &str, id: &str) {
        let id = id.as_bytes();
        if group(&mut self.by_scope, scope).insert(id) {
            self.len += 1;
        }
        group(group(&mut self.by_owner, owner), scope).insert(id);
    }

    pub fn remove(&mut self, owner: &str, scope: &str, id: &str) {
        let id = id.as_bytes();
        let remove_id = |ids: &mut IdSet| (ids.remove(id), ids.is_empty());
        if remove_from(&mut self.by_scope, scope, remove_id) {
            self.len -= 1;
        }
        remove_from(&mut self.by_owner, owner, |scopes| {
            (remove_from(scopes, scope, remove_id), scopes.is_empty())
        });
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        if query.owner.is_empty() {
            let Some(ids) = self.by_scope.get(query.scope) else { return false };
            return each_id_after(ids, query.after.as_ref().map(|(id, _)| &**id), |id| {
                offer(id, (id.into(), Box::from("")))
            });
        } else {
            let Some(scopes) = self.by_owner.get(query.owner) else { return false };
            // The first scope: the cursor's (where the last page ended), and no earlier than
            // the one listed.
            let cursor_scope = query.after.as_ref().map(|(scope, _)| &**scope);
            let first = match (query.scope, cursor_scope) {
                ("", None) => Bound::Unbounded,
                ("", Some(cursor)) => Bound::Included(cursor),
                (scope, cursor) => Bound::Included(cursor.map_or(scope, |cursor| cursor.max(scope))),
            };
            for (scope, ids) in scopes.range::<str, _>((first, Bound::Unbounded)) {
                if !query.scope.is_empty() && **scope != *query.scope {
                    break;
                }
                let after_id = match &query.after {
                    Some((cursor_scope, id)) if cursor_scope == scope => Some(&**id),
                    _ => None,
                };
                if each_id_after(ids, after_id, |id| offer(id, (scope.clone(), id.into()))) {
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

    /// Every page of every listing, followed by its cursor to the end, one item per page.
    fn pages(index: &ShardIndex, owner: &str, scope: &str) -> Vec<(String, SortKey)> {
        let mut listed = Vec::new();
        let mut cursor = BytesMut::new();
        loop {
            let request = ListRequest { owner, scope, limit: 1, cursor: &cursor };
            let query = ListQuery::new(&request).unwrap();
            let mut page = Vec::new();
            let more = index.scan(&query, 1, |id, key| {
                page.push((id.to_owned(), key));
                true
            });
            assert!(page.len() <= 1 && (more || page.is_empty()));
            let Some(last) = page.pop() else { return listed };
            let mut next = BytesMut::new();
            query.cursor_after(&last.1, &mut next);
            listed.push(last);
            cursor = next;
        }
    }

    #[test]
    fn listings_are_in_tuple_order_whatever_bytes_the_fields_hold() {
        let fields = ["", "a", "a\0", "a\0b", "a\u{1}", "ab", "b", "\0", "\u{ff}", &"long".repeat(20)];
        let mut tuples = Vec::new();
        for (o, owner) in fields.iter().enumerate() {
            for (s, scope) in fields.iter().enumerate() {
                for suffix in ["", "x", "x\0", &"y".repeat(30)] {
                    // Ids are unique in a shard; these sort against each other by suffix.
                    tuples.push((*owner, *scope, format!("{o:02}{s:02}{suffix}")));
                }
            }
        }
        let keys = || tuples.iter().map(|(owner, scope, id)| (*owner, *scope, id.as_str()));
        let mut inserted = ShardIndex::default();
        for (owner, scope, id) in keys().rev() {
            inserted.insert(owner, scope, id);
        }
        let built = ShardIndex::build(keys().chain(keys()));
        for index in [&inserted, &built] {
            assert_eq!(index.len(), tuples.len());
            // (An empty owner or scope in a LIST means any: see the by-owner and by-scope
            // listings.)
            for owner in fields.into_iter().filter(|owner| !owner.is_empty()) {
                for scope in fields.into_iter().filter(|scope| !scope.is_empty()) {
                    // By owner and scope, then by scope alone (ordered by id), every page
                    // resumed from its cursor.
                    let mut expected: Vec<_> = tuples
                        .iter()
                        .filter(|(o, s, _)| *o == owner && *s == scope)
                        .map(|(_, s, id)| (id.clone(), (Box::from(*s), Box::from(id.as_str()))))
                        .collect();
                    expected.sort();
                    assert_eq!(pages(index, owner, scope), expected, "{owner:?} {scope:?}");
                }
                // By owner alone: ordered by scope, then id.
                let mut expected: Vec<_> = tuples
                    .iter()
                    .filter(|(o, _, _)| *o == owner)
                    .map(|(_, s, id)| (id.clone(), (Box::from(*s), Box::from(id.as_str()))))
                    .collect();
                expected.sort_by(|a, b| a.1.cmp(&b.1));
                assert_eq!(pages(index, owner, ""), expected, "owner {owner:?}");
            }
            for scope in fields {
                let mut expected: Vec<_> = tuples
                    .iter()
                    .filter(|(_, s, _)| *s == scope)
                    .map(|(_, _, id)| (id.clone(), (Box::from(id.as_str()), Box::from(""))))
                    .collect();
                expected.sort();
                assert_eq!(pages(index, "", scope), expected, "scope {scope:?}");
            }
        }
        for (owner, scope, id) in keys() {
            inserted.remove(owner, scope, id);
        }
        assert!(inserted.is_empty() && inserted.by_owner.is_empty() && inserted.by_scope.is_empty());
    }

    #[test]
    fn removing_the_last_id_of_a_group_removes_the_group() {
        let mut index = ShardIndex::default();
        index.insert("o", "s", "1");
        index.insert("o", "t", "2");
        index.remove("o", "s", "1");
        index.remove("o", "s", "1");
        index.remove("nobody", "s", "2");
        assert_eq!((index.len(), index.by_owner["o"].len(), index.by_scope.len()), (1, 1, 1));
        index.remove("o", "t", "2");
        assert!(index.is_empty() && index.by_owner.is_empty() && index.by_scope.is_empty());
    }

    #[test]
    fn a_cursor_for_another_scope_resumes_where_that_scope_sorts() {
        let mut index = ShardIndex::default();
        for (scope, id) in [("a", "1"), ("b", "2"), ("b", "3"), ("c", "4")] {
            index.insert("o", scope, id);
        }
        let list = |scope: &str, cursor: (&str, &str)| {
            let query = ListQuery::new(&ListRequest { owner: "o", scope, limit: 10, cursor: b"" }).unwrap();
            let mut encoded = BytesMut::new();
            query.cursor_after(&(cursor.0.into(), cursor.1.into()), &mut encoded);
            page(&index, &ListRequest { owner: "o", scope, limit: 10, cursor: &encoded }, 10).0
        };
        assert_eq!(list("b", ("a", "9")), vec!["2", "3"]);
        assert_eq!(list("b", ("b", "2")), vec!["3"]);
        assert_eq!(list("b", ("c", "0")), Vec::<String>::new());
        assert_eq!(list("", ("b", "2")), vec!["3", "4"]);
        assert_eq!(list("", ("bb", "0")), vec!["4"]);
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
