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

use std::collections::BTreeSet;
use std::ops::Bound;

use bytes::{BufMut, BytesMut};
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::wire::{put_str16, Reader};

use crate::error::OpError;

type OwnerKey = (Box<str>, Box<str>, Box<str>);
type ScopeKey = (Box<str>, Box<str>);

#[derive(Default, Debug)]
pub struct ShardIndex {
    by_owner: BTreeSet<OwnerKey>,
    by_scope: BTreeSet<ScopeKey>,
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
        let mut by_owner: Vec<OwnerKey> =
            keys.map(|(owner, scope, id)| (owner.into(), scope.into(), id.into())).collect();
        by_owner.sort_unstable();
        let mut by_scope: Vec<ScopeKey> =
            by_owner.iter().map(|(_, scope, id)| (scope.clone(), id.clone())).collect();
        by_scope.sort_unstable();
        ShardIndex { by_owner: by_owner.into_iter().collect(), by_scope: by_scope.into_iter().collect() }
    }

    pub fn insert(&mut self, owner: &str, scope: &str, id: &str) {
        self.by_owner.insert((owner.into(), scope.into(), id.into()));
        self.by_scope.insert((scope.into(), id.into()));
    }

    pub fn remove(&mut self, owner: &str, scope: &str, id: &str) {
        self.by_owner.remove(&(owner.into(), scope.into(), id.into()) as &OwnerKey);
        self.by_scope.remove(&(scope.into(), id.into()) as &ScopeKey);
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
        if query.owner.is_empty() {
            let start = match &query.after {
                Some((id, _)) => Bound::Excluded((query.scope.into(), id.clone())),
                None => Bound::Included((query.scope.into(), Box::from(""))),
            };
            for (scope, id) in self.by_scope.range::<ScopeKey, _>((start, Bound::Unbounded)) {
                if &**scope != query.scope {
                    break;
                }
                if offer(id, (id.clone(), Box::from(""))) {
                    return true;
                }
            }
        } else {
            let start = match &query.after {
                Some((scope, id)) => Bound::Excluded((query.owner.into(), scope.clone(), id.clone())),
                None => Bound::Included((query.owner.into(), query.scope.into(), Box::from(""))),
            };
            for (owner, scope, id) in self.by_owner.range::<OwnerKey, _>((start, Bound::Unbounded)) {
                if &**owner != query.owner || (!query.scope.is_empty() && &**scope != query.scope) {
                    break;
                }
                if offer(id, (scope.clone(), id.clone())) {
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
    fn foreign_cursors_are_rejected() {
        let by_scope_cursor = [b'S', 1, 0, b'x'];
        let by_owner = ListRequest { owner: "a", scope: "", limit: 10, cursor: &by_scope_cursor };
        assert_eq!(ListQuery::new(&by_owner).unwrap_err(), OpError::InvalidCursor);
        let garbage = ListRequest { cursor: b"O\xff", ..by_owner };
        assert_eq!(ListQuery::new(&garbage).unwrap_err(), OpError::InvalidCursor);
    }
}
