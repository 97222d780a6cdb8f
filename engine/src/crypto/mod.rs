//! Encryption of secrets at rest: AES-256-GCM with associated data that binds each ciphertext
//! to its credential's id, owner, scope, kind, version, expiry and grace period and to its
//! data key ([`Binding`]). A blob cannot be replayed under another credential or version, and
//! metadata edited at rest (say, an owner changed to move a credential within reach of another
//! token, or an expiry pushed back) makes the secret fail to open instead of serving it.
//!
//! - [`master`]: the master key (key file or Argon2id passphrase).
//! - [`keyring`]: data keys wrapped by the master key, persisted in `<data-dir>/keyring`.
//! - [`nonce`]: random 96-bit nonces drawn from the OS in blocks.

pub mod keyring;
pub mod master;
pub mod nonce;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce, Tag};

pub use keyring::{KeySource, Keyring, RingPlace, SharedRing};
pub use master::{Argon2Cost, MasterKey, KEY_BYTES};
pub use nonce::NONCE_BYTES;

/// Bytes of a GCM authentication tag.
pub const TAG_BYTES: usize = 16;

/// Associated data up to this length is built on the stack.
const AAD_INLINE_BYTES: usize = 384;

/// What a ciphertext is bound to: the credential version's identity and the metadata that
/// decides who may read it and until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub scope: &'a str,
    pub kind: u8,
    pub version: u64,
    pub expires_at_ms: u64,
    pub previous_grace_until_ms: u64,
}

impl Binding<'_> {
    /// Calls `with` on the associated data for data key `key_id`: `id str16 | owner str16 |
    /// scope str16 | kind u8 | version u64 | expires_at_ms u64 | previous_grace_until_ms u64 |
    /// key_id u32` (little-endian; str16 = u16 length, then the bytes).
    pub(crate) fn with_associated_data<T>(&self, key_id: u32, with: impl FnOnce(&[u8]) -> T) -> T {
        let length = 3 * 2 + self.id.len() + self.owner.len() + self.scope.len() + 1 + 3 * 8 + 4;
        let fill = |buffer: &mut [u8]| {
            let mut at = 0;
            let mut put = |bytes: &[u8]| {
                buffer[at..at + bytes.len()].copy_from_slice(bytes);
                at += bytes.len();
            };
            for text in [self.id, self.owner, self.scope] {
                put(&(text.len() as u16).to_le_bytes());
                put(text.as_bytes());
            }
            put(&[self.kind]);
            put(&self.version.to_le_bytes());
            put(&self.expires_at_ms.to_le_bytes());
            put(&self.previous_grace_until_ms.to_le_bytes());
            put(&key_id.to_le_bytes());
        };
        if length <= AAD_INLINE_BYTES {
            let mut inline = [0u8; AAD_INLINE_BYTES];
            fill(&mut inline[..length]);
            with(&inline[..length])
        } else {
            let mut heap = vec![0u8; length];
            fill(&mut heap);
            with(&heap)
        }
    }
}

/// Encrypts `buffer` in place; returns the tag.
pub(crate) fn seal(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_BYTES],
    associated_data: &[u8],
    buffer: &mut [u8],
) -> [u8; TAG_BYTES] {
    let nonce = Nonce::from(*nonce);
    let tag = cipher
        .encrypt_inout_detached(&nonce, associated_data, buffer.into())
        .expect("AES-GCM encryption of a secret below 64 GiB cannot fail");
    tag.into()
}

/// Decrypts `buffer` in place after checking `tag`.
///
/// # Errors
/// When the tag does not verify: the ciphertext or its associated data were altered, or the
/// key is wrong. `buffer` is left unspecified (the caller must discard it).
pub(crate) fn open(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_BYTES],
    associated_data: &[u8],
    buffer: &mut [u8],
    tag: &[u8; TAG_BYTES],
) -> Result<(), aes_gcm::Error> {
    let nonce = Nonce::from(*nonce);
    let tag = Tag::from(*tag);
    cipher.decrypt_inout_detached(&nonce, associated_data, buffer.into(), &tag)
}

#[cfg(test)]
pub(crate) fn test_binding(id: &str, version: u64) -> Binding<'_> {
    Binding {
        id,
        owner: "team-a",
        scope: "prod",
        kind: 0,
        version,
        expires_at_ms: 0,
        previous_grace_until_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::KeyInit;

    fn cipher() -> Aes256Gcm {
        Aes256Gcm::new(&aes_gcm::Key::<Aes256Gcm>::from([7u8; 32]))
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let cipher = cipher();
        let nonce = nonce::random_nonce();
        let binding = test_binding("db/password", 3);
        let mut buffer = b"top secret".to_vec();
        let seal_as = |binding: &Binding<'_>, key_id: u32, buffer: &mut [u8]| {
            binding.with_associated_data(key_id, |aad| seal(&cipher, &nonce, aad, buffer))
        };
        let open_as = |binding: &Binding<'_>, key_id: u32, buffer: &mut [u8], tag: &[u8; TAG_BYTES]| {
            binding.with_associated_data(key_id, |aad| open(&cipher, &nonce, aad, buffer, tag))
        };
        let tag = seal_as(&binding, 1, &mut buffer);
        assert_ne!(&buffer, b"top secret");
        let sealed = buffer.clone();

        open_as(&binding, 1, &mut buffer, &tag).unwrap();
        assert_eq!(&buffer, b"top secret");

        // The same blob under any other binding or key id does not open.
        let others = [
            Binding { id: "db/passwordx", ..binding },
            Binding { owner: "team-b", ..binding },
            Binding { scope: "prodx", ..binding },
            // Moving bytes between fields changes the encoding too.
            Binding { owner: "team-ap", scope: "rod", ..binding },
            Binding { kind: 1, ..binding },
            Binding { version: 4, ..binding },
            Binding { expires_at_ms: 1, ..binding },
            Binding { previous_grace_until_ms: 1, ..binding },
        ];
        for other in others {
            let mut moved = sealed.clone();
            assert!(open_as(&other, 1, &mut moved, &tag).is_err(), "{other:?}");
        }
        let mut other_key = sealed.clone();
        assert!(open_as(&binding, 2, &mut other_key, &tag).is_err());
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert!(open_as(&binding, 1, &mut tampered, &tag).is_err());
    }

    #[test]
    fn long_fields_use_heap_associated_data() {
        let cipher = cipher();
        let nonce = nonce::random_nonce();
        let id = "x".repeat(1000);
        let binding = test_binding(&id, 1);
        let mut buffer = b"secret".to_vec();
        let tag = binding.with_associated_data(1, |aad| seal(&cipher, &nonce, aad, &mut buffer));
        binding.with_associated_data(1, |aad| open(&cipher, &nonce, aad, &mut buffer, &tag)).unwrap();
        assert_eq!(&buffer, b"secret");
    }
}
