//! Credential metadata, shared by the GET and GET_META replies. Never contains the secret.
//!
//! ```text
//! id str16 | owner str16 | scope str16 | kind u8 | version u64 | created_at_ms u64 |
//! updated_at_ms u64 | expires_at_ms u64 (0 = never) | key_id u32 | labels
//! ```

use bytes::{BufMut, BytesMut};

use crate::code::Kind;
use crate::op::labels::Labels;
use crate::wire::{put_str16, DecodeError, Reader};

/// Metadata borrowed from a stored record, for encoding without copies.
#[derive(Clone, Copy, Debug)]
pub struct MetadataRef<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub scope: &'a str,
    pub kind: u8,
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub expires_at_ms: u64,
    pub key_id: u32,
    pub labels: Labels<'a>,
}

impl<'a> MetadataRef<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        put_str16(out, self.owner);
        put_str16(out, self.scope);
        out.put_u8(self.kind);
        out.put_u64_le(self.version);
        out.put_u64_le(self.created_at_ms);
        out.put_u64_le(self.updated_at_ms);
        out.put_u64_le(self.expires_at_ms);
        out.put_u32_le(self.key_id);
        out.put_slice(self.labels.encoded());
    }

    /// Reads metadata in place, borrowing its strings and labels from the reader's bytes
    /// (for a server that re-reads its own replies; clients use [`Metadata::decode`]).
    pub fn decode(reader: &mut Reader<'a>) -> Result<MetadataRef<'a>, DecodeError> {
        Ok(MetadataRef {
            id: reader.str16("id", usize::MAX)?,
            owner: reader.str16("owner", usize::MAX)?,
            scope: reader.str16("scope", usize::MAX)?,
            kind: reader.u8("kind")?,
            version: reader.u64("version")?,
            created_at_ms: reader.u64("created_at_ms")?,
            updated_at_ms: reader.u64("updated_at_ms")?,
            expires_at_ms: reader.u64("expires_at_ms")?,
            key_id: reader.u32("key_id")?,
            labels: Labels::decode(reader, usize::MAX, usize::MAX)?,
        })
    }
}

/// Metadata as a client holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub id: String,
    pub owner: String,
    pub scope: String,
    pub kind: Kind,
    pub version: u64,
    /// When version 1 was written, in Unix milliseconds.
    pub created_at_ms: u64,
    /// When this version was written, in Unix milliseconds.
    pub updated_at_ms: u64,
    /// When the credential expires, in Unix milliseconds; `None` for never.
    pub expires_at_ms: Option<u64>,
    /// The data key that encrypted this version's secret.
    pub key_id: u32,
    pub labels: Vec<(String, String)>,
}

impl Metadata {
    pub fn decode(reader: &mut Reader<'_>) -> Result<Metadata, DecodeError> {
        let id = reader.str16("id", usize::MAX)?.to_owned();
        let owner = reader.str16("owner", usize::MAX)?.to_owned();
        let scope = reader.str16("scope", usize::MAX)?.to_owned();
        let kind_code = reader.u8("kind")?;
        let kind = Kind::from_u8(kind_code)
            .ok_or(DecodeError::InvalidValue { field: "kind", value: kind_code.into() })?;
        let version = reader.u64("version")?;
        let created_at_ms = reader.u64("created_at_ms")?;
        let updated_at_ms = reader.u64("updated_at_ms")?;
        let expires_at_ms = Some(reader.u64("expires_at_ms")?).filter(|&at| at != 0);
        let key_id = reader.u32("key_id")?;
        let labels = Labels::decode(reader, usize::MAX, usize::MAX)?
            .iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Ok(Metadata {
            id,
            owner,
            scope,
            kind,
            version,
            created_at_ms,
            updated_at_ms,
            expires_at_ms,
            key_id,
            labels,
        })
    }
}
