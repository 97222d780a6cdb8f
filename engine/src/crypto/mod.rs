//! Encryption of secrets at rest: AES-256-GCM with associated data that binds each ciphertext
//! to its credential id, version and data key, so a blob cannot be replayed under another
//! credential or version.
//!
//! - [`master`]: the master key (key file or Argon2id passphrase).
//! - [`keyring`]: data keys wrapped by the master key, persisted in `<data-dir>/keyring`.
//! - [`nonce`]: random 96-bit nonces drawn from the OS in blocks.

pub mod keyring;
pub mod master;
pub mod nonce;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, Nonce, Tag};

pub use keyring::{KeySource, Keyring};
pub use master::{Argon2Cost, MasterKey, KEY_BYTES};
pub use nonce::NONCE_BYTES;

/// Bytes of a GCM authentication tag.
pub const TAG_BYTES: usize = 16;

/// Ids up to this length build their associated data on the stack.
const AAD_INLINE_BYTES: usize = 320;

/// Calls `with` on the associated data of a credential version:
/// `id_bytes u16 | id | version u64 | key_id u32`.
fn with_associated_data<T>(id: &str, version: u64, key_id: u32, with: impl FnOnce(&[u8]) -> T) -> T {
    let length = 2 + id.len() + 8 + 4;
    let fill = |buffer: &mut [u8]| {
        buffer[..2].copy_from_slice(&(id.len() as u16).to_le_bytes());
        buffer[2..2 + id.len()].copy_from_slice(id.as_bytes());
        buffer[2 + id.len()..10 + id.len()].copy_from_slice(&version.to_le_bytes());
        buffer[10 + id.len()..length].copy_from_slice(&key_id.to_le_bytes());
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

/// Encrypts `buffer` in place; returns the tag.
pub(crate) fn seal(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_BYTES],
    id: &str,
    version: u64,
    key_id: u32,
    buffer: &mut [u8],
) -> [u8; TAG_BYTES] {
    let nonce = Nonce::from(*nonce);
    let tag = with_associated_data(id, version, key_id, |aad| {
        cipher.encrypt_inout_detached(&nonce, aad, buffer.into())
    })
    .expect("AES-GCM encryption of a secret below 64 GiB cannot fail");
    tag.into()
}

/// Decrypts `buffer` in place after checking `tag`.
///
/// # Errors
/// When the tag does not verify: the ciphertext, its id, version or key id were altered, or
/// the key is wrong. `buffer` is left unspecified (the caller must discard it).
pub(crate) fn open(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_BYTES],
    id: &str,
    version: u64,
    key_id: u32,
    buffer: &mut [u8],
    tag: &[u8; TAG_BYTES],
) -> Result<(), aes_gcm::Error> {
    let nonce = Nonce::from(*nonce);
    let tag = Tag::from(*tag);
    with_associated_data(id, version, key_id, |aad| {
        cipher.decrypt_inout_detached(&nonce, aad, buffer.into(), &tag)
    })
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
        let mut buffer = b"top secret".to_vec();
        let tag = seal(&cipher, &nonce, "db/password", 3, 1, &mut buffer);
        assert_ne!(&buffer, b"top secret");
        let sealed = buffer.clone();

        open(&cipher, &nonce, "db/password", 3, 1, &mut buffer, &tag).unwrap();
        assert_eq!(&buffer, b"top secret");

        // The same blob under another id, version or key id does not open.
        for (id, version, key_id) in [("db/passwordx", 3, 1), ("db/password", 4, 1), ("db/password", 3, 2)] {
            let mut moved = sealed.clone();
            assert!(open(&cipher, &nonce, id, version, key_id, &mut moved, &tag).is_err());
        }
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert!(open(&cipher, &nonce, "db/password", 3, 1, &mut tampered, &tag).is_err());
    }

    #[test]
    fn long_ids_use_heap_associated_data() {
        let cipher = cipher();
        let nonce = nonce::random_nonce();
        let id = "x".repeat(1000);
        let mut buffer = b"secret".to_vec();
        let tag = seal(&cipher, &nonce, &id, 1, 1, &mut buffer);
        open(&cipher, &nonce, &id, 1, 1, &mut buffer, &tag).unwrap();
        assert_eq!(&buffer, b"secret");
    }
}
