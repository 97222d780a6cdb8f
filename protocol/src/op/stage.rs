//! Staged rotation. STAGE writes a new version as *pending*: stored and readable by stage or
//! number, never returned as current. PROMOTE makes the pending version current; the version
//! it replaces becomes *previous*, readable for a grace period (as after ROTATE).
//!
//! ```text
//! STAGE   request: as PUT (id, owner, scope, kind, expected_version, expiry, labels, secret)
//!         reply:   version u64 (the pending version)
//! PROMOTE request: id str16 | expected_version opt_u64 | grace_period_seconds opt_u64
//!         reply:   version u64 (the version now current)
//! ```
//!
//! STAGE's `expected_version` is compared with the current version (as PUT's is); PROMOTE's
//! with the pending one, so a client promotes exactly the version it tested.

use bytes::BytesMut;

use crate::limits::Limits;
use crate::op::rotate::GRACE_PERIOD_SECONDS_MAX;
use crate::wire::{put_opt_u64, put_str16, DecodeError, Reader};

/// STAGE's request is PUT's (see [`super::put::PutRequest`]).
pub type StageRequest<'a> = super::put::PutRequest<'a>;

/// STAGE answers like PUT: the pending version.
pub type StageReply = super::put::PutReply;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromoteRequest<'a> {
    pub id: &'a str,
    /// Compare-and-set against the pending version.
    pub expected_version: Option<u64>,
    /// How long the replaced version stays readable; `None` for the server's default.
    pub grace_period_seconds: Option<u64>,
}

impl<'a> PromoteRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        put_opt_u64(out, self.expected_version);
        put_opt_u64(out, self.grace_period_seconds);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<PromoteRequest<'a>, DecodeError> {
        let id = reader.name16("id", limits.id_bytes_max)?;
        let expected_version = reader.opt_u64("expected_version")?;
        let grace_period_seconds = reader.opt_u64("grace_period_seconds")?;
        if let Some(seconds) = grace_period_seconds.filter(|&seconds| seconds > GRACE_PERIOD_SECONDS_MAX) {
            return Err(DecodeError::InvalidValue { field: "grace_period_seconds", value: seconds });
        }
        Ok(PromoteRequest { id, expected_version, grace_period_seconds })
    }
}

/// PROMOTE answers like PUT: the version now current.
pub type PromoteReply = super::put::PutReply;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_grace_limit() {
        let request = PromoteRequest { id: "db", expected_version: Some(4), grace_period_seconds: Some(60) };
        let mut out = BytesMut::new();
        request.encode(&mut out);
        let mut reader = Reader::new(&out);
        assert_eq!(PromoteRequest::decode(&mut reader, &Limits::default()).unwrap(), request);
        reader.finish().unwrap();

        let too_long = PromoteRequest { grace_period_seconds: Some(GRACE_PERIOD_SECONDS_MAX + 1), ..request };
        let mut out = BytesMut::new();
        too_long.encode(&mut out);
        assert!(PromoteRequest::decode(&mut Reader::new(&out), &Limits::default()).is_err());
    }

    #[test]
    fn the_worked_example_in_docs_protocol_md() {
        let request =
            PromoteRequest { id: "db/main", expected_version: Some(2), grace_period_seconds: Some(60) };
        let mut out = BytesMut::new();
        crate::op::Request::Promote(request).encode(9, &mut out);
        let documented = "21 00 00 00 1a 00 09 00 00 00 07 00 64 62 2f 6d 61 69 6e \
                          01 02 00 00 00 00 00 00 00 01 3c 00 00 00 00 00 00 00";
        let bytes: Vec<u8> =
            documented.split_whitespace().map(|word| u8::from_str_radix(word, 16).unwrap()).collect();
        assert_eq!(&out[..], &bytes[..]);
    }
}
