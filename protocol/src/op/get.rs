//! GET: a credential's secret and metadata; GET_META: metadata and kept versions only.
//!
//! ```text
//! GET      request: id str16 | version u64 (0 = current)
//!          reply:   metadata | secret bytes32
//! GET_META request: id str16
//!          reply:   metadata | version_count u16 | (version u64 | created_at_ms u64 | state u8)*
//! ```

use bytes::{BufMut, BytesMut};

use crate::code::VersionState;
use crate::limits::Limits;
use crate::op::metadata::Metadata;
use crate::secret::Secret;
use crate::wire::{put_str16, DecodeError, Reader};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetRequest<'a> {
    pub id: &'a str,
    /// 0 for the current version.
    pub version: u64,
}

impl<'a> GetRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        out.put_u64_le(self.version);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<GetRequest<'a>, DecodeError> {
        Ok(GetRequest { id: reader.name16("id", limits.id_bytes_max)?, version: reader.u64("version")? })
    }
}

/// A decrypted credential as a client holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetReply {
    pub metadata: Metadata,
    pub secret: Secret,
}

impl GetReply {
    pub fn decode(reader: &mut Reader<'_>) -> Result<GetReply, DecodeError> {
        let metadata = Metadata::decode(reader)?;
        let secret = Secret::new(reader.bytes32("secret", usize::MAX)?.to_vec());
        Ok(GetReply { metadata, secret })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetMetaRequest<'a> {
    pub id: &'a str,
}

impl<'a> GetMetaRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<GetMetaRequest<'a>, DecodeError> {
        Ok(GetMetaRequest { id: reader.name16("id", limits.id_bytes_max)? })
    }
}

/// One kept version of a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub created_at_ms: u64,
    pub state: VersionState,
}

impl VersionInfo {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.version);
        out.put_u64_le(self.created_at_ms);
        out.put_u8(self.state as u8);
    }
}

/// Metadata of the current version and the list of kept versions, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetMetaReply {
    pub metadata: Metadata,
    pub versions: Vec<VersionInfo>,
}

impl GetMetaReply {
    pub fn decode(reader: &mut Reader<'_>) -> Result<GetMetaReply, DecodeError> {
        let metadata = Metadata::decode(reader)?;
        let count = reader.u16("version_count")?;
        let versions = (0..count)
            .map(|_| {
                let version = reader.u64("version")?;
                let created_at_ms = reader.u64("created_at_ms")?;
                let state_code = reader.u8("state")?;
                let state = VersionState::from_u8(state_code)
                    .ok_or(DecodeError::InvalidValue { field: "state", value: state_code.into() })?;
                Ok(VersionInfo { version, created_at_ms, state })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(GetMetaReply { metadata, versions })
    }
}
