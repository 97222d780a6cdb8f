//! LIST: credential ids by owner and/or scope, in a stable order, one page at a time.
//!
//! ```text
//! request: owner str16 (empty = any) | scope str16 (empty = any) | limit u16 (1..=1000) |
//!          cursor bytes32 (empty = first page; else the next_cursor of the previous page)
//! reply:   count u16 | (id str16 | owner str16 | scope str16 | kind u8 | version u64 |
//!          expires_at_ms u64)* | next_cursor bytes32 (empty = no more pages)
//! ```
//!
//! At least one of owner and scope must be given. With an owner, items come in (scope, id)
//! order; with only a scope, in id order. The cursor is opaque to clients.

use bytes::{BufMut, BytesMut};

use crate::code::Kind;
use crate::limits::Limits;
use crate::wire::{put_bytes32, put_str16, DecodeError, Reader};

/// Most items on one LIST page.
pub const LIST_PAGE_MAX: u16 = 1000;
/// Longest cursor a server accepts under `limits`: a tag, a scope and an id.
pub fn cursor_bytes_max(limits: &Limits) -> usize {
    1 + 2 + limits.name_bytes_max + 2 + limits.id_bytes_max
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListRequest<'a> {
    /// Empty for any owner.
    pub owner: &'a str,
    /// Empty for any scope.
    pub scope: &'a str,
    pub limit: u16,
    pub cursor: &'a [u8],
}

impl<'a> ListRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.owner);
        put_str16(out, self.scope);
        out.put_u16_le(self.limit);
        put_bytes32(out, self.cursor);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<ListRequest<'a>, DecodeError> {
        let owner = reader.str16("owner", limits.name_bytes_max)?;
        let scope = reader.str16("scope", limits.name_bytes_max)?;
        if owner.is_empty() && scope.is_empty() {
            return Err(DecodeError::Empty { field: "owner and scope" });
        }
        let limit = reader.u16("limit")?;
        if limit == 0 {
            return Err(DecodeError::InvalidValue { field: "limit", value: 0 });
        }
        if limit > LIST_PAGE_MAX {
            return Err(DecodeError::TooLong {
                field: "limit",
                bytes: limit as usize,
                bytes_max: LIST_PAGE_MAX as usize,
            });
        }
        let cursor = reader.bytes32("cursor", cursor_bytes_max(limits))?;
        Ok(ListRequest { owner, scope, limit, cursor })
    }
}

/// One listed credential (no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListItem {
    pub id: String,
    pub owner: String,
    pub scope: String,
    pub kind: Kind,
    pub version: u64,
    /// `None` for never.
    pub expires_at_ms: Option<u64>,
}

/// A borrowed item, for encoding.
#[derive(Clone, Copy, Debug)]
pub struct ListItemRef<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub scope: &'a str,
    pub kind: u8,
    pub version: u64,
    pub expires_at_ms: u64,
}

impl ListItemRef<'_> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        put_str16(out, self.owner);
        put_str16(out, self.scope);
        out.put_u8(self.kind);
        out.put_u64_le(self.version);
        out.put_u64_le(self.expires_at_ms);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ListReply {
    pub items: Vec<ListItem>,
    /// Empty when this was the last page.
    pub next_cursor: Vec<u8>,
}

impl ListReply {
    pub fn decode(reader: &mut Reader<'_>) -> Result<ListReply, DecodeError> {
        let count = reader.u16("count")?;
        let items = (0..count)
            .map(|_| {
                let id = reader.str16("id", usize::MAX)?.to_owned();
                let owner = reader.str16("owner", usize::MAX)?.to_owned();
                let scope = reader.str16("scope", usize::MAX)?.to_owned();
                let code = reader.u8("kind")?;
                let kind = Kind::from_u8(code)
                    .ok_or(DecodeError::InvalidValue { field: "kind", value: code.into() })?;
                let version = reader.u64("version")?;
                let expires_at_ms = Some(reader.u64("expires_at_ms")?).filter(|&at| at != 0);
                Ok(ListItem { id, owner, scope, kind, version, expires_at_ms })
            })
            .collect::<Result<_, DecodeError>>()?;
        let next_cursor = reader.bytes32("next_cursor", usize::MAX)?.to_vec();
        Ok(ListReply { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_rules() {
        let decode = |request: ListRequest<'_>| {
            let mut out = BytesMut::new();
            request.encode(&mut out);
            let mut reader = Reader::new(&out);
            ListRequest::decode(&mut reader, &Limits::default())
                .map(|decoded| (decoded == request, out.len()))
        };
        let valid = ListRequest { owner: "team", scope: "", limit: 10, cursor: b"" };
        assert!(decode(valid).unwrap().0, "round trip");
        assert!(decode(ListRequest { owner: "", ..valid }).is_err(), "owner or scope is required");
        assert!(decode(ListRequest { limit: 0, ..valid }).is_err());
        assert!(matches!(decode(ListRequest { limit: 1001, ..valid }), Err(DecodeError::TooLong { .. })));
    }
}
