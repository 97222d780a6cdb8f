//! ROTATE_KEY and REKEY: the two rotations of the key hierarchy (admin ops).
//!
//! ```text
//! ROTATE_KEY request: (empty)
//! ROTATE_KEY reply:   key_id u32 (the new active data key) | data_keys u32 (keys in the ring)
//! REKEY request:      kind u8 (1 = a 32-byte key, 2 = a passphrase) | material bytes32
//! REKEY reply:        data_keys u32 (data keys rewrapped under the new master key)
//! ```
//!
//! ROTATE_KEY makes a fresh data key the one new writes use; the server then re-encrypts every
//! record still on an older key in the background and drops the old keys once none is left.
//! REKEY rewraps every data key under a new master key; the old master key no longer opens
//! the key ring. A REKEY body holds key material: clients wipe it, and servers accept it only
//! over TLS or from a loopback address.

use bytes::{BufMut, BytesMut};

use crate::wire::{put_bytes32, DecodeError, Reader};

/// Bytes of a master key sent in REKEY.
pub const MASTER_KEY_BYTES: usize = 32;
/// Longest passphrase REKEY accepts.
pub const PASSPHRASE_BYTES_MAX: usize = 1024;

/// The new master key of a REKEY.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RekeyRequest<'a> {
    /// A 256-bit key (the content of a `credshard keygen` file, decoded).
    Key(&'a [u8; MASTER_KEY_BYTES]),
    /// A passphrase, stretched by the server with Argon2id under a fresh salt.
    Passphrase(&'a [u8]),
}

impl std::fmt::Debug for RekeyRequest<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RekeyRequest::Key(_) => formatter.write_str("RekeyRequest::Key(redacted)"),
            RekeyRequest::Passphrase(_) => formatter.write_str("RekeyRequest::Passphrase(redacted)"),
        }
    }
}

const KIND_KEY: u8 = 1;
const KIND_PASSPHRASE: u8 = 2;

impl<'a> RekeyRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            RekeyRequest::Key(key) => {
                out.put_u8(KIND_KEY);
                put_bytes32(out, &key[..]);
            }
            RekeyRequest::Passphrase(passphrase) => {
                out.put_u8(KIND_PASSPHRASE);
                put_bytes32(out, passphrase);
            }
        }
    }

    pub fn decode(reader: &mut Reader<'a>) -> Result<RekeyRequest<'a>, DecodeError> {
        match reader.u8("kind")? {
            KIND_KEY => {
                let material = reader.bytes32("material", MASTER_KEY_BYTES)?;
                let key = material.try_into().map_err(|_| DecodeError::InvalidValue {
                    field: "material",
                    value: material.len() as u64,
                })?;
                Ok(RekeyRequest::Key(key))
            }
            KIND_PASSPHRASE => {
                let passphrase = reader.bytes32("material", PASSPHRASE_BYTES_MAX)?;
                if passphrase.is_empty() {
                    return Err(DecodeError::Empty { field: "material" });
                }
                Ok(RekeyRequest::Passphrase(passphrase))
            }
            other => Err(DecodeError::InvalidValue { field: "kind", value: other.into() }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotateKeyReply {
    /// The data key new writes use from now on.
    pub key_id: u32,
    /// Data keys in the ring (the new one and those still holding records).
    pub data_keys: u32,
}

impl RotateKeyReply {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32_le(self.key_id);
        out.put_u32_le(self.data_keys);
    }

    pub fn decode(reader: &mut Reader<'_>) -> Result<RotateKeyReply, DecodeError> {
        Ok(RotateKeyReply { key_id: reader.u32("key_id")?, data_keys: reader.u32("data_keys")? })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyReply {
    /// Data keys rewrapped under the new master key.
    pub data_keys: u32,
}

impl RekeyReply {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32_le(self.data_keys);
    }

    pub fn decode(reader: &mut Reader<'_>) -> Result<RekeyReply, DecodeError> {
        Ok(RekeyReply { data_keys: reader.u32("data_keys")? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: RekeyRequest<'_>) -> Result<(), DecodeError> {
        let mut out = BytesMut::new();
        request.encode(&mut out);
        let mut reader = Reader::new(&out);
        assert_eq!(RekeyRequest::decode(&mut reader)?, request);
        reader.finish()
    }

    #[test]
    fn rekey_round_trips_and_refuses_bad_material() {
        round_trip(RekeyRequest::Key(&[7; MASTER_KEY_BYTES])).unwrap();
        round_trip(RekeyRequest::Passphrase(b"correct horse battery staple")).unwrap();
        fn decode(body: &[u8]) -> Result<RekeyRequest<'_>, DecodeError> {
            RekeyRequest::decode(&mut Reader::new(body))
        }
        // A key of the wrong length, an empty passphrase, an unknown kind.
        let mut short = vec![KIND_KEY];
        short.extend_from_slice(&31u32.to_le_bytes());
        short.extend_from_slice(&[0; 31]);
        assert!(matches!(decode(&short), Err(DecodeError::InvalidValue { field: "material", .. })));
        let mut empty = vec![KIND_PASSPHRASE];
        empty.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(decode(&empty), Err(DecodeError::Empty { .. })));
        assert!(matches!(decode(&[9]), Err(DecodeError::InvalidValue { field: "kind", value: 9 })));
        let mut long = vec![KIND_PASSPHRASE];
        long.extend_from_slice(&((PASSPHRASE_BYTES_MAX + 1) as u32).to_le_bytes());
        long.extend_from_slice(&vec![b'x'; PASSPHRASE_BYTES_MAX + 1]);
        assert!(matches!(decode(&long), Err(DecodeError::TooLong { .. })));
        assert!(!format!("{:?}", RekeyRequest::Passphrase(b"hunter2")).contains("hunter2"));
    }
}
