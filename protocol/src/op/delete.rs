//! DELETE: take a credential out of service (recoverably, or for good); UNDELETE: bring a
//! deleted one back; DESTROY: erase one version's ciphertext, keeping its metadata.
//!
//! ```text
//! DELETE   request: id str16 | expected_version opt_u64 [| flags u8 | recovery_window_seconds opt_u64]
//!          reply:   version u64 (the version that was current)
//! UNDELETE request: id str16
//!          reply:   version u64 (the current version, served again)
//! DESTROY  request: id str16 | version u64
//!          reply:   version u64 (the version destroyed)
//! ```
//!
//! DELETE's bracketed tail was added to protocol version 1 later: a request without it is a
//! recoverable delete with the server's recovery window, and is what a client sends unless
//! it asks for a purge or a window of its own (so such a client works with older servers).

use bytes::{BufMut, BytesMut};

use crate::limits::Limits;
use crate::wire::{put_opt_u64, put_str16, DecodeError, Reader};

/// DELETE flag bit 0: remove the credential and every version at once, unrecoverably.
pub const DELETE_FLAG_PURGE: u8 = 0x01;

/// The longest recovery window a request may ask for (365 days).
pub const RECOVERY_WINDOW_SECONDS_MAX: u64 = 365 * 24 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteRequest<'a> {
    pub id: &'a str,
    /// Compare-and-delete: the current version must equal this one.
    pub expected_version: Option<u64>,
    /// Remove at once, with no recovery window.
    pub purge: bool,
    /// How long the credential stays recoverable (1 s ..= 365 days); `None`: the server's
    /// recovery window.
    pub recovery_window_seconds: Option<u64>,
}

impl<'a> DeleteRequest<'a> {
    /// A recoverable delete with the server's recovery window.
    pub fn new(id: &'a str, expected_version: Option<u64>) -> DeleteRequest<'a> {
        DeleteRequest { id, expected_version, purge: false, recovery_window_seconds: None }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        put_opt_u64(out, self.expected_version);
        if self.purge || self.recovery_window_seconds.is_some() {
            out.put_u8(if self.purge { DELETE_FLAG_PURGE } else { 0 });
            put_opt_u64(out, self.recovery_window_seconds);
        }
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<DeleteRequest<'a>, DecodeError> {
        let id = reader.name16("id", limits.id_bytes_max)?;
        let expected_version = reader.opt_u64("expected_version")?;
        if reader.remaining() == 0 {
            return Ok(DeleteRequest::new(id, expected_version));
        }
        let flags = reader.u8("flags")?;
        if flags & !DELETE_FLAG_PURGE != 0 {
            return Err(DecodeError::InvalidValue { field: "flags", value: flags.into() });
        }
        let recovery_window_seconds = reader.opt_u64("recovery_window_seconds")?;
        if let Some(seconds) = recovery_window_seconds {
            if seconds == 0 || seconds > RECOVERY_WINDOW_SECONDS_MAX {
                return Err(DecodeError::InvalidValue { field: "recovery_window_seconds", value: seconds });
            }
        }
        let purge = flags & DELETE_FLAG_PURGE != 0;
        if purge && recovery_window_seconds.is_some() {
            // A purge has no window: asking for both is a client bug, not a choice.
            return Err(DecodeError::InvalidValue { field: "recovery_window_seconds", value: 0 });
        }
        Ok(DeleteRequest { id, expected_version, purge, recovery_window_seconds })
    }
}

/// The reply of DELETE, UNDELETE and DESTROY: one version number.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndeleteRequest<'a> {
    pub id: &'a str,
}

impl<'a> UndeleteRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<UndeleteRequest<'a>, DecodeError> {
        Ok(UndeleteRequest { id: reader.name16("id", limits.id_bytes_max)? })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestroyRequest<'a> {
    pub id: &'a str,
    /// The kept version whose ciphertext is erased (not 0).
    pub version: u64,
}

impl<'a> DestroyRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        out.put_u64_le(self.version);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<DestroyRequest<'a>, DecodeError> {
        let id = reader.name16("id", limits.id_bytes_max)?;
        let version = reader.u64("version")?;
        if version == 0 {
            return Err(DecodeError::InvalidValue { field: "version", value: 0 });
        }
        Ok(DestroyRequest { id, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8]) -> Result<DeleteRequest<'_>, DecodeError> {
        let mut reader = Reader::new(body);
        let request = DeleteRequest::decode(&mut reader, &Limits::default())?;
        reader.finish().map(|()| request)
    }

    #[test]
    fn a_plain_delete_keeps_the_old_layout_and_the_tail_round_trips() {
        let plain = DeleteRequest::new("db", Some(3));
        let mut out = BytesMut::new();
        plain.encode(&mut out);
        assert_eq!(&out[..], b"\x02\x00db\x01\x03\x00\x00\x00\x00\x00\x00\x00", "no tail");
        assert_eq!(decode(&out), Ok(plain));
        for request in [
            DeleteRequest { purge: true, ..DeleteRequest::new("db", None) },
            DeleteRequest { recovery_window_seconds: Some(86_400), ..DeleteRequest::new("db", Some(1)) },
        ] {
            let mut out = BytesMut::new();
            request.encode(&mut out);
            assert_eq!(decode(&out), Ok(request));
        }
    }

    #[test]
    fn a_tail_with_unknown_flags_a_window_out_of_range_or_both_purge_and_window_is_malformed() {
        let body = |flags: u8, window: Option<u64>| {
            let mut out = BytesMut::new();
            put_str16(&mut out, "db");
            put_opt_u64(&mut out, None);
            out.put_u8(flags);
            put_opt_u64(&mut out, window);
            out.to_vec()
        };
        for (flags, window, field) in [
            (0x02, None, "flags"),
            (0x00, Some(0), "recovery_window_seconds"),
            (0x01, Some(1), "recovery_window_seconds"),
            (0x00, Some(RECOVERY_WINDOW_SECONDS_MAX + 1), "recovery_window_seconds"),
        ] {
            match decode(&body(flags, window)) {
                Err(DecodeError::InvalidValue { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{other:?} for {flags} {window:?}"),
            }
        }
        assert_eq!(decode(&body(0, Some(1))).unwrap().recovery_window_seconds, Some(1));
        assert!(!decode(&body(0, Some(RECOVERY_WINDOW_SECONDS_MAX))).unwrap().purge);
        assert!(decode(&body(1, None)).unwrap().purge);
        let cut = body(1, None);
        assert!(matches!(decode(&cut[..cut.len() - 3]), Err(DecodeError::Truncated { .. })));
    }
}
