//! PUT: create or replace a credential.
//!
//! ```text
//! request: id str16 | owner str16 | scope str16 | kind u8 | expected_version opt_u64 |
//!          expiry_kind u8 | expiry_value u64 | labels | secret bytes32
//! reply:   version u64
//! ```

use bytes::{BufMut, BytesMut};

use crate::code::Kind;
use crate::limits::Limits;
use crate::op::labels::Labels;
use crate::wire::{put_bytes32, put_opt_u64, put_str16, DecodeError, Reader};

/// The latest absolute expiry a PUT may ask for: 9999-12-31T23:59:59.999Z, in Unix
/// milliseconds. Later times are refused rather than clamped, so a stored expiry is always the
/// one the client asked for, and every stored time prints as a four-digit year.
pub const EXPIRES_AT_MS_MAX: u64 = 253_402_300_799_999;

/// The longest time to live a PUT may ask for: 100 years (of 365.2425 days). Far below
/// `EXPIRES_AT_MS_MAX - now`, so a TTL's expiry never overflows or needs clamping.
pub const TTL_MS_MAX: u64 = 3_155_695_200_000;

/// When a credential stops being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Expiry {
    /// Never (`expiry_kind` 0).
    #[default]
    Never,
    /// At an absolute time in Unix milliseconds (`expiry_kind` 1).
    AtUnixMs(u64),
    /// A time to live in milliseconds from when the server receives the request
    /// (`expiry_kind` 2).
    TtlMs(u64),
}

impl Expiry {
    /// The absolute expiry in Unix milliseconds (0 for never), given the server's clock.
    pub fn resolve(self, now_ms: u64) -> u64 {
        match self {
            Expiry::Never => 0,
            Expiry::AtUnixMs(at_ms) => at_ms,
            Expiry::TtlMs(ttl_ms) => now_ms.saturating_add(ttl_ms),
        }
    }
}

/// A borrowed PUT request. The `Debug` output leaves the secret out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PutRequest<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub scope: &'a str,
    pub kind: Kind,
    /// Compare-and-set: `Some(0)` means "must not exist", `Some(v)` means "current version
    /// must be v", `None` means unconditional.
    pub expected_version: Option<u64>,
    pub expiry: Expiry,
    pub labels: Labels<'a>,
    pub secret: &'a [u8],
}

impl std::fmt::Debug for PutRequest<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PutRequest")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("scope", &self.scope)
            .field("kind", &self.kind)
            .field("expected_version", &self.expected_version)
            .field("expiry", &self.expiry)
            .field("labels", &self.labels)
            .field("secret_bytes", &self.secret.len())
            .finish()
    }
}

impl<'a> PutRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        put_str16(out, self.owner);
        put_str16(out, self.scope);
        out.put_u8(self.kind as u8);
        put_opt_u64(out, self.expected_version);
        let (expiry_kind, expiry_value) = match self.expiry {
            Expiry::Never => (0, 0),
            Expiry::AtUnixMs(at_ms) => (1, at_ms),
            Expiry::TtlMs(ttl_ms) => (2, ttl_ms),
        };
        out.put_u8(expiry_kind);
        out.put_u64_le(expiry_value);
        out.put_slice(self.labels.encoded());
        put_bytes32(out, self.secret);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<PutRequest<'a>, DecodeError> {
        let id = reader.name16("id", limits.id_bytes_max)?;
        let owner = reader.name16("owner", limits.name_bytes_max)?;
        let scope = reader.name16("scope", limits.name_bytes_max)?;
        let kind_code = reader.u8("kind")?;
        let kind = Kind::from_u8(kind_code)
            .ok_or(DecodeError::InvalidValue { field: "kind", value: kind_code.into() })?;
        let expected_version = reader.opt_u64("expected_version")?;
        let expiry_kind = reader.u8("expiry_kind")?;
        let expiry_value = reader.u64("expiry_value")?;
        let expiry = match expiry_kind {
            0 if expiry_value == 0 => Expiry::Never,
            1 if (1..=EXPIRES_AT_MS_MAX).contains(&expiry_value) => Expiry::AtUnixMs(expiry_value),
            2 if (1..=TTL_MS_MAX).contains(&expiry_value) => Expiry::TtlMs(expiry_value),
            0..=2 => return Err(DecodeError::InvalidValue { field: "expiry_value", value: expiry_value }),
            other => return Err(DecodeError::InvalidValue { field: "expiry_kind", value: other.into() }),
        };
        let labels = Labels::decode(reader, limits.name_bytes_max, limits.labels_bytes_max)?;
        let secret = reader.bytes32("secret", limits.secret_bytes_max)?;
        Ok(PutRequest { id, owner, scope, kind, expected_version, expiry, labels, secret })
    }
}

/// `version u64`: the version the write created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutReply {
    pub version: u64,
}

impl PutReply {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.version);
    }

    pub fn decode(reader: &mut Reader<'_>) -> Result<PutReply, DecodeError> {
        Ok(PutReply { version: reader.u64("version")? })
    }
}
