//! ROTATE: store a new secret as a new version of an existing credential and retire the
//! version it replaces after a grace period.
//!
//! ```text
//! request: id str16 | expected_version opt_u64 | grace_period_seconds opt_u64 | secret bytes32
//! reply:   version u64
//! ```

use bytes::BytesMut;

use crate::limits::Limits;
use crate::wire::{put_bytes32, put_opt_u64, put_str16, DecodeError, Reader};

/// A borrowed ROTATE request. The `Debug` output leaves the secret out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RotateRequest<'a> {
    pub id: &'a str,
    /// Compare-and-set against the current version.
    pub expected_version: Option<u64>,
    /// How long the replaced version stays readable; `None` for the server's default.
    pub grace_period_seconds: Option<u64>,
    pub secret: &'a [u8],
}

impl std::fmt::Debug for RotateRequest<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RotateRequest")
            .field("id", &self.id)
            .field("expected_version", &self.expected_version)
            .field("grace_period_seconds", &self.grace_period_seconds)
            .field("secret_bytes", &self.secret.len())
            .finish()
    }
}

impl<'a> RotateRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        put_opt_u64(out, self.expected_version);
        put_opt_u64(out, self.grace_period_seconds);
        put_bytes32(out, self.secret);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<RotateRequest<'a>, DecodeError> {
        let id = reader.name16("id", limits.id_bytes_max)?;
        let expected_version = reader.opt_u64("expected_version")?;
        let grace_period_seconds = reader.opt_u64("grace_period_seconds")?;
        if let Some(seconds) = grace_period_seconds.filter(|&seconds| seconds > GRACE_PERIOD_SECONDS_MAX) {
            return Err(DecodeError::InvalidValue { field: "grace_period_seconds", value: seconds });
        }
        let secret = reader.bytes32("secret", limits.secret_bytes_max)?;
        Ok(RotateRequest { id, expected_version, grace_period_seconds, secret })
    }
}

/// The longest grace period a ROTATE may ask for: 100 years (of 365.2425 days). Longer ones
/// are refused rather than clamped, so a grace deadline is always the one asked for.
pub const GRACE_PERIOD_SECONDS_MAX: u64 = 3_155_695_200;

/// ROTATE answers like PUT: the new version (see [`super::put::PutReply`]).
pub type RotateReply = super::put::PutReply;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let request =
            RotateRequest { id: "db", expected_version: Some(3), grace_period_seconds: None, secret: b"new" };
        let mut out = BytesMut::new();
        request.encode(&mut out);
        let mut reader = Reader::new(&out);
        assert_eq!(RotateRequest::decode(&mut reader, &Limits::default()).unwrap(), request);
        reader.finish().unwrap();
        assert!(!format!("{request:?}").contains("new\""));
    }
}
