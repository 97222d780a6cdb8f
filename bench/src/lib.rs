//! Shared data generators for the criterion benches in `benches/`, so that every bench measures
//! the same inputs and a number in one bench can be compared with another.
//!
//! - Secrets: deterministic bytes of a given size ([`secret`]).
//! - Requests: a realistic PUT with two labels ([`put_request`]) and its encoded frame
//!   ([`put_frame`]).
//! - Responses: a GET reply frame as a server encodes it ([`get_reply_frame`]).
//! - Engine inputs: an in-memory key ring ([`keyring`]) and version fields ([`fields`]).

use bytes::BytesMut;
use credshard_engine::auth::Acl;
use credshard_engine::crypto::{Binding, Keyring, MasterKey};
use credshard_engine::data::record::VersionFields;
use credshard_engine::data::{ShardWriter, Write};
use credshard_engine::OpError;
use credshard_protocol::op::metadata::MetadataRef;
use credshard_protocol::wire::put_bytes32;
use credshard_protocol::{frame, Expiry, Kind, Labels, PutRequest, Request, Status, EMPTY_LABELS};

/// Secret size of the headline benches: an API key or a small certificate bundle.
pub const SECRET_BYTES: usize = 256;
/// A larger secret (a certificate chain or a key file), for throughput.
pub const SECRET_BYTES_LARGE: usize = 4096;
/// A credential id of typical length.
pub const ID: &str = "payments/prod/database-primary";

/// What a ciphertext of [`ID`] at `version` is bound to (as the record path builds it).
pub fn binding(version: u64) -> Binding<'static> {
    Binding {
        id: ID,
        owner: "payments",
        scope: "prod/payments",
        kind: Kind::Password as u8,
        version,
        expires_at_ms: 0,
        previous_grace_until_ms: 0,
    }
}
pub const OWNER: &str = "team-payments";
pub const SCOPE: &str = "prod";
/// Request id used in generated frames.
pub const REQUEST_ID: u32 = 42;

/// Two labels, `env=prod` and `team=payments`, in their wire encoding.
pub const LABELS: &[u8] = b"\x02\x00\x03\x00env\x04\x00prod\x04\x00team\x08\x00payments";

/// `bytes` deterministic, non-repeating-looking secret bytes.
pub fn secret(bytes: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A PUT of `secret` under [`ID`] with [`LABELS`], a compare-and-set version and a TTL, so
/// every field of the body is exercised.
pub fn put_request(secret: &[u8]) -> PutRequest<'_> {
    PutRequest {
        id: ID,
        owner: OWNER,
        scope: SCOPE,
        kind: Kind::ApiKey,
        expected_version: Some(3),
        expiry: Expiry::TtlMs(86_400_000),
        labels: Labels::from_validated(LABELS),
        secret,
    }
}

/// The whole request frame of [`put_request`].
pub fn put_frame(secret: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    Request::Put(put_request(secret)).encode(REQUEST_ID, &mut out);
    out
}

/// The fields of version `version` of a credential written in 2026.
pub fn fields(version: u64) -> VersionFields {
    VersionFields {
        version,
        created_at_ms: 1_780_000_000_000,
        updated_at_ms: 1_780_000_000_000 + version,
        expires_at_ms: 1_780_086_400_000,
        previous_grace_until_ms: 0,
    }
}

/// Metadata of [`put_request`] at `fields`, as a server holds it.
pub fn metadata(fields: VersionFields) -> MetadataRef<'static> {
    MetadataRef {
        id: ID,
        owner: OWNER,
        scope: SCOPE,
        kind: Kind::ApiKey as u8,
        version: fields.version,
        created_at_ms: fields.created_at_ms,
        updated_at_ms: fields.updated_at_ms,
        expires_at_ms: fields.expires_at_ms,
        key_id: 1,
        labels: Labels::from_validated(LABELS),
    }
}

/// Appends a GET reply frame (`metadata | secret bytes32`) to `out`, as a server encodes it.
pub fn encode_get_reply(metadata: &MetadataRef<'_>, secret: &[u8], out: &mut BytesMut) {
    let start = frame::begin(out, Status::Ok as u8, REQUEST_ID);
    metadata.encode(out);
    put_bytes32(out, secret);
    frame::finish(out, start);
}

/// A whole GET reply frame for `secret`.
pub fn get_reply_frame(secret: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_get_reply(&metadata(fields(4)), secret, &mut out);
    out
}

/// Owner of the credentials the in-process benches store.
pub const STORED_OWNER: &str = "bench-owner";

/// A plain PUT of `id` (owner [`STORED_OWNER`], scope `prod`, no labels, no expiry), as the
/// in-process benches fill a store with.
pub fn stored_put<'a>(id: &'a str, secret: &'a [u8]) -> PutRequest<'a> {
    PutRequest {
        id,
        owner: STORED_OWNER,
        scope: "prod",
        kind: Kind::ApiKey,
        expected_version: None,
        expiry: Expiry::Never,
        labels: Labels::from_validated(EMPTY_LABELS),
        secret,
    }
}

/// Submits a write to an in-memory writer (no log), whose outcome is known at once.
pub fn apply(writer: &mut ShardWriter, write: Write<'_>, now_ms: u64, acl: &Acl) -> Result<u64, OpError> {
    let (reply, mut outcome) = futures::channel::oneshot::channel();
    writer.submit(write, now_ms, acl, reply);
    outcome.try_recv().expect("not cancelled").expect("answered at once without a log")
}

/// A key ring in memory with a fresh random master key and one active data key.
pub fn keyring() -> Keyring {
    Keyring::in_memory(MasterKey::generate())
}

#[cfg(test)]
mod tests {
    use super::*;
    use credshard_protocol::client::{self, ResponseFrame};
    use credshard_protocol::{encode_labels, Limits};

    #[test]
    fn generated_data_is_valid_protocol() {
        let mut labels = BytesMut::new();
        encode_labels(&[("env", "prod"), ("team", "payments")], &mut labels);
        assert_eq!(&labels[..], LABELS);

        let secret = secret(SECRET_BYTES);
        assert_eq!(secret.len(), SECRET_BYTES);
        assert_ne!(secret[..8], secret[8..16]);

        let frame = put_frame(&secret);
        let header = frame::check(&frame, usize::MAX).unwrap().unwrap();
        let request = Request::decode(header.code, &frame[header.body_range()], &Limits::default()).unwrap();
        assert_eq!(request, Request::Put(put_request(&secret)));

        let mut reply = get_reply_frame(&secret);
        let response = ResponseFrame::take(&mut reply).unwrap().unwrap();
        let get = client::get(ID, 0).reply(response).unwrap();
        assert_eq!(get.secret.expose(), &secret[..]);
        assert_eq!(get.metadata.labels.len(), 2);
    }
}
