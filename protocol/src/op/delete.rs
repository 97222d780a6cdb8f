//! DELETE: remove a credential and all its versions.
//!
//! ```text
//! request: id str16 | expected_version opt_u64
//! reply:   version u64 (the version that was current)
//! ```

use bytes::{BufMut, BytesMut};

use crate::limits::Limits;
use crate::wire::{put_opt_u64, put_str16, DecodeError, Reader};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteRequest<'a> {
    pub id: &'a str,
    /// Compare-and-delete: the current version must equal this one.
    pub expected_version: Option<u64>,
}

impl<'a> DeleteRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        put_opt_u64(out, self.expected_version);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<DeleteRequest<'a>, DecodeError> {
        Ok(DeleteRequest {
            id: reader.name16("id", limits.id_bytes_max)?,
            expected_version: reader.opt_u64("expected_version")?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteReply {
    pub version: u64,
}

impl DeleteReply {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.version);
    }

    pub fn decode(reader: &mut Reader<'_>) -> Result<DeleteReply, DecodeError> {
        Ok(DeleteReply { version: reader.u64("version")? })
    }
}
