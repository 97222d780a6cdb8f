//! GET: a credential's secret and metadata; GET_META: metadata and kept versions only.
//!
//! ```text
//! GET      request: id str16 | version u64 (0 = current) [| stage u8]
//!          reply:   metadata | secret bytes32
//! GET_META request: id str16
//!          reply:   metadata | version_count u16 | (version u64 | created_at_ms u64 | state u8)*
//! ```
//!
//! GET's bracketed `stage` was added to protocol version 1 later (with STAGE and PROMOTE): a
//! request without it asks by number, as before, so such a client works with older servers;
//! a server that predates it refuses a request that carries it (trailing bytes).

use bytes::{BufMut, BytesMut};

use crate::code::VersionState;
use crate::limits::Limits;
use crate::op::metadata::Metadata;
use crate::secret::Secret;
use crate::wire::{put_str16, DecodeError, Reader};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetRequest<'a> {
    pub id: &'a str,
    /// 0 for the current version (or the version `stage` names).
    pub version: u64,
    /// Read the version in this stage instead of by number (`version` must then be 0).
    pub stage: Option<Stage>,
}

/// A version named by its place in a staged rotation rather than by number.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The version GET returns without a number.
    Current = 1,
    /// The version STAGE wrote and PROMOTE has not made current yet.
    Pending = 2,
    /// The version the current one replaced (while it is kept and readable).
    Previous = 3,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Current, Stage::Pending, Stage::Previous];

    /// The stage for a wire byte, or `None` for an unknown code.
    pub fn from_u8(code: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| *stage as u8 == code)
    }

    /// Lower-case name used by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Current => "current",
            Stage::Pending => "pending",
            Stage::Previous => "previous",
        }
    }

    /// Parses a CLI name (see [`Stage::name`]).
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.name() == name)
    }
}

impl<'a> GetRequest<'a> {
    /// GET of `version` (0 = current).
    pub fn new(id: &'a str, version: u64) -> GetRequest<'a> {
        GetRequest { id, version, stage: None }
    }

    /// GET of the version in `stage`.
    pub fn of_stage(id: &'a str, stage: Stage) -> GetRequest<'a> {
        GetRequest { id, version: 0, stage: Some(stage) }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        out.put_u64_le(self.version);
        if let Some(stage) = self.stage {
            out.put_u8(stage as u8);
        }
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<GetRequest<'a>, DecodeError> {
        let id = reader.name16("id", limits.id_bytes_max)?;
        let version = reader.u64("version")?;
        if reader.remaining() == 0 {
            return Ok(GetRequest::new(id, version));
        }
        let code = reader.u8("stage")?;
        let stage =
            Stage::from_u8(code).ok_or(DecodeError::InvalidValue { field: "stage", value: code.into() })?;
        if version != 0 {
            // A version by number and by stage at once: a client bug, not a choice.
            return Err(DecodeError::InvalidValue { field: "version", value: version });
        }
        Ok(GetRequest::of_stage(id, stage))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8]) -> Result<GetRequest<'_>, DecodeError> {
        let mut reader = Reader::new(body);
        let request = GetRequest::decode(&mut reader, &Limits::default())?;
        reader.finish()?;
        Ok(request)
    }

    #[test]
    fn a_stage_is_an_optional_tail_and_excludes_a_version_number() {
        for request in [GetRequest::new("db", 0), GetRequest::new("db", 7)]
            .into_iter()
            .chain(Stage::ALL.map(|stage| GetRequest::of_stage("db", stage)))
        {
            let mut out = BytesMut::new();
            request.encode(&mut out);
            assert_eq!(decode(&out).unwrap(), request);
        }
        // Without the tail, the body is what older clients send: no stage.
        let mut out = BytesMut::new();
        GetRequest::new("db", 0).encode(&mut out);
        assert_eq!(out.len(), 2 + 2 + 8);
        // A number and a stage at once, and an unknown stage, are refused.
        let mut both = BytesMut::new();
        GetRequest { id: "db", version: 3, stage: Some(Stage::Pending) }.encode(&mut both);
        assert_eq!(decode(&both), Err(DecodeError::InvalidValue { field: "version", value: 3 }));
        let mut unknown = out.clone();
        unknown.put_u8(9);
        assert_eq!(decode(&unknown), Err(DecodeError::InvalidValue { field: "stage", value: 9 }));
        for stage in Stage::ALL {
            assert_eq!(Stage::from_name(stage.name()), Some(stage));
        }
    }
}
