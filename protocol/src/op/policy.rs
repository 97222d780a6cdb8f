//! Per-credential policy: how many versions it keeps, whether every write must be
//! compare-and-set, when its older versions retire on their own, and custom metadata (a small
//! map, like labels, but changed without writing a new version).
//!
//! ```text
//! SET_POLICY request: id str16 | policy
//!            reply:   version u64 (the current version: a policy is not a version)
//! GET_POLICY request: id str16
//!            reply:   policy
//! policy:    max_versions u16 | flags u8 | delete_version_after_seconds u64 | metadata
//! ```
//!
//! `max_versions` 0 means the server's; flag bit 0 is `cas_required`;
//! `delete_version_after_seconds` 0 means never; `metadata` is in the labels encoding.

use bytes::{BufMut, BytesMut};

use crate::limits::Limits;
use crate::op::labels::{Labels, EMPTY_LABELS};
use crate::wire::{put_str16, DecodeError, Reader};

/// Flag bit 0: writes without an expected version are refused.
pub const POLICY_FLAG_CAS_REQUIRED: u8 = 0x01;

/// The most versions a policy may keep.
pub const POLICY_MAX_VERSIONS_MAX: u16 = 1000;

/// The longest `delete_version_after_seconds`: 100 years (of 365.2425 days).
pub const DELETE_VERSION_AFTER_SECONDS_MAX: u64 = 3_155_695_200;

/// A credential's policy, borrowed from a body or a stored entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy<'a> {
    /// Versions kept, current included; 0: the server's `--max-versions`.
    pub max_versions: u16,
    /// PUT, ROTATE, STAGE, PROMOTE and DELETE must say which version they expect.
    pub cas_required: bool,
    /// A version other than the current one retires this long after it was written (0:
    /// never); it stays listed, and GET answers `RETIRED`.
    pub delete_version_after_seconds: u64,
    /// Custom metadata, in the labels encoding.
    pub metadata: Labels<'a>,
}

impl Default for Policy<'_> {
    fn default() -> Self {
        Policy {
            max_versions: 0,
            cas_required: false,
            delete_version_after_seconds: 0,
            metadata: Labels::from_validated(EMPTY_LABELS),
        }
    }
}

impl<'a> Policy<'a> {
    /// True for the policy every credential has until SET_POLICY says otherwise.
    pub fn is_default(&self) -> bool {
        *self == Policy::default()
    }

    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.max_versions);
        out.put_u8(if self.cas_required { POLICY_FLAG_CAS_REQUIRED } else { 0 });
        out.put_u64_le(self.delete_version_after_seconds);
        out.put_slice(self.metadata.encoded());
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<Policy<'a>, DecodeError> {
        let max_versions = reader.u16("max_versions")?;
        if max_versions > POLICY_MAX_VERSIONS_MAX {
            return Err(DecodeError::InvalidValue { field: "max_versions", value: max_versions.into() });
        }
        let flags = reader.u8("flags")?;
        if flags & !POLICY_FLAG_CAS_REQUIRED != 0 {
            return Err(DecodeError::InvalidValue { field: "flags", value: flags.into() });
        }
        let delete_version_after_seconds = reader.u64("delete_version_after_seconds")?;
        if delete_version_after_seconds > DELETE_VERSION_AFTER_SECONDS_MAX {
            return Err(DecodeError::InvalidValue {
                field: "delete_version_after_seconds",
                value: delete_version_after_seconds,
            });
        }
        let metadata = Labels::decode(reader, limits.name_bytes_max, limits.labels_bytes_max)?;
        Ok(Policy {
            max_versions,
            cas_required: flags & POLICY_FLAG_CAS_REQUIRED != 0,
            delete_version_after_seconds,
            metadata,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetPolicyRequest<'a> {
    pub id: &'a str,
    pub policy: Policy<'a>,
}

impl<'a> SetPolicyRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
        self.policy.encode(out);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<SetPolicyRequest<'a>, DecodeError> {
        let id = reader.name16("id", limits.id_bytes_max)?;
        Ok(SetPolicyRequest { id, policy: Policy::decode(reader, limits)? })
    }
}

/// SET_POLICY answers like PUT: the version (here the current one, unchanged).
pub type SetPolicyReply = super::put::PutReply;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetPolicyRequest<'a> {
    pub id: &'a str,
}

impl<'a> GetPolicyRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        put_str16(out, self.id);
    }

    pub fn decode(reader: &mut Reader<'a>, limits: &Limits) -> Result<GetPolicyRequest<'a>, DecodeError> {
        Ok(GetPolicyRequest { id: reader.name16("id", limits.id_bytes_max)? })
    }
}

/// GET_POLICY's reply, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyReply {
    pub max_versions: u16,
    pub cas_required: bool,
    pub delete_version_after_seconds: u64,
    pub metadata: Vec<(String, String)>,
}

impl PolicyReply {
    pub fn decode(reader: &mut Reader<'_>) -> Result<PolicyReply, DecodeError> {
        let policy = Policy::decode(reader, &Limits::client())?;
        Ok(PolicyReply {
            max_versions: policy.max_versions,
            cas_required: policy.cas_required,
            delete_version_after_seconds: policy.delete_version_after_seconds,
            metadata: policy.metadata.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::labels::encode_labels;

    #[test]
    fn round_trip_and_limits() {
        let mut metadata = BytesMut::new();
        encode_labels(&[("team", "payments"), ("ticket", "SEC-1")], &mut metadata);
        let request = SetPolicyRequest {
            id: "db/main",
            policy: Policy {
                max_versions: 3,
                cas_required: true,
                delete_version_after_seconds: 86_400,
                metadata: Labels::from_validated(&metadata),
            },
        };
        let mut out = BytesMut::new();
        request.encode(&mut out);
        let mut reader = Reader::new(&out);
        assert_eq!(SetPolicyRequest::decode(&mut reader, &Limits::default()).unwrap(), request);
        reader.finish().unwrap();
        let mut reply = BytesMut::new();
        request.policy.encode(&mut reply);
        let decoded = PolicyReply::decode(&mut Reader::new(&reply)).unwrap();
        assert_eq!(
            decoded.metadata,
            vec![("team".into(), "payments".into()), ("ticket".into(), "SEC-1".into())]
        );
        assert!(Policy::default().is_default() && !request.policy.is_default());

        for (max_versions, flags) in [(POLICY_MAX_VERSIONS_MAX + 1, 0u8), (1, 2)] {
            let mut bad = BytesMut::new();
            put_str16(&mut bad, "x");
            bad.put_u16_le(max_versions);
            bad.put_u8(flags);
            bad.put_u64_le(0);
            bad.put_slice(EMPTY_LABELS);
            assert!(SetPolicyRequest::decode(&mut Reader::new(&bad), &Limits::default()).is_err());
        }
    }
}
