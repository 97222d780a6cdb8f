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

use std::mem::ManuallyDrop;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};

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

/// An AES-256-GCM key, set up once (ring's implementation: its AES and GHASH are interleaved,
/// 30-45% faster than RustCrypto's `aes-gcm` on 256-byte secrets, docs/performance.md).
/// The key schedule is wiped when the cipher is dropped.
pub(crate) struct Cipher {
    /// Never used after `drop` overwrites it.
    key: ManuallyDrop<LessSafeKey>,
}

impl Cipher {
    pub(crate) fn new(key: &[u8; KEY_BYTES]) -> Cipher {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("AES_256_GCM takes a 32-byte key");
        Cipher { key: ManuallyDrop::new(LessSafeKey::new(key)) }
    }
}

impl Drop for Cipher {
    fn drop(&mut self) {
        // ring's key holds the expanded key schedule and the GHASH table inline (no heap, no
        // drop glue) and does not wipe them: overwrite its bytes, volatile so that the stores
        // are not elided. It is never read again (the field is `ManuallyDrop`).
        let bytes = (&mut *self.key as *mut LessSafeKey).cast::<u8>();
        for offset in 0..std::mem::size_of::<LessSafeKey>() {
            // SAFETY: within the key's own storage, which nothing reads after this.
            unsafe { bytes.add(offset).write_volatile(0) };
        }
    }
}

/// The cipher failed to verify a tag: the ciphertext or its associated data were altered, or
/// the key is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagMismatch;

/// Encrypts `buffer` in place; returns the tag.
pub(crate) fn seal(
    cipher: &Cipher,
    nonce: &[u8; NONCE_BYTES],
    associated_data: &[u8],
    buffer: &mut [u8],
) -> [u8; TAG_BYTES] {
    let tag = cipher
        .key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(associated_data), buffer)
        .expect("AES-GCM encryption of a secret below 64 GiB cannot fail");
    tag.as_ref().try_into().expect("a 16-byte tag")
}

/// Decrypts `buffer` in place after checking `tag`.
///
/// # Errors
/// When the tag does not verify: the ciphertext or its associated data were altered, or the
/// key is wrong. `buffer` is left unspecified (the caller must discard it).
pub(crate) fn open(
    cipher: &Cipher,
    nonce: &[u8; NONCE_BYTES],
    associated_data: &[u8],
    buffer: &mut [u8],
    tag: &[u8; TAG_BYTES],
) -> Result<(), TagMismatch> {
    cipher
        .key
        .open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(associated_data),
            Tag::from(*tag),
            buffer,
            0..,
        )
        .map(|_| ())
        .map_err(|_| TagMismatch)
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

    fn cipher() -> Cipher {
        Cipher::new(&[7u8; 32])
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
    fn a_dropped_cipher_leaves_no_key_schedule_behind() {
        let mut slot = std::mem::MaybeUninit::<Cipher>::uninit();
        slot.write(Cipher::new(&[0x5a; 32]));
        // SAFETY: the slot holds a cipher, dropped once.
        unsafe { slot.assume_init_drop() };
        // SAFETY: the slot's storage is still ours, and `drop` wrote every byte of the key.
        let key_bytes = unsafe {
            let key = &raw const (*slot.as_ptr()).key;
            std::slice::from_raw_parts(key.cast::<u8>(), std::mem::size_of::<LessSafeKey>())
        };
        assert!(key_bytes.iter().all(|&byte| byte == 0), "the key schedule outlived the cipher");
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

    /// AES-256-GCM against answers computed independently (Python's `cryptography`, OpenSSL),
    /// at lengths around the block batches of the AES backends (ring's bulk paths work in
    /// batches of up to 96 bytes, RustCrypto's, which wrote these ciphertexts before, of 8
    /// blocks): a backend whose keystream were wrong on both sides would still round-trip, but
    /// not match these, and records sealed before the change open after it.
    #[test]
    fn aes_256_gcm_matches_known_answers() {
        use sha2::{Digest, Sha256};
        let key: [u8; 32] = std::array::from_fn(|index| index as u8);
        let cipher = Cipher::new(&key);
        let nonce: [u8; NONCE_BYTES] = std::array::from_fn(|index| 100 + index as u8);
        let aad = b"credshard known answer";
        let answers = [
            (0, "a618fd764c15397193371d721f8492b572e4a899c5395d0d0806bfcc9205a8da"),
            (1, "00a7dd51a8f36fe005b39e2d1fbac28896a3a6281de445ce0421999459d67cef"),
            (16, "432ab4fa0128071fdbed5eaa2ded98b745593ec279120676f4066403a8bd0d68"),
            (100, "2759e9713d7837c631507eada62a96e06d0ab86e59429646b4d79d58d892d0c0"),
            (128, "31339cc0238c81412ad0ebba6dc9144249a7f131cd82a875669b580dc15699dd"),
            (256, "6859c936a3c24154bcf0a03c601cb57e78c24e900d649789be69784ce94ed16c"),
            (257, "f0813f4151f76c81cca72a55e3e1197241ca5d03c9ee63ce0b71408923e2e3c7"),
            (1000, "30f85e08fe4bf6ecd654011c6a8abff45f9ceabf1824cbd02b70ea64c0b09a70"),
            (1024, "1939235a38b15823827f97c1e393f05863c355ea59ecbc37a308783e0989315c"),
            (4096, "06e93339448572d93926cac0a12fc3f61c1643a971826cf3bd59066fd3995c50"),
            (5000, "617e83be3e84120ae41b3fae6545150563d13ee9cab81461ac562b8bb82cfdd2"),
        ];
        for (length, expected) in answers {
            let plaintext: Vec<u8> = (0..length).map(|index| (index * 7 + 3) as u8).collect();
            let mut buffer = plaintext.clone();
            let tag = seal(&cipher, &nonce, aad, &mut buffer);
            let digest = Sha256::new().chain_update(&buffer).chain_update(tag).finalize();
            let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(hex, expected, "ciphertext and tag of {length} bytes");
            open(&cipher, &nonce, aad, &mut buffer, &tag).expect("its own tag verifies");
            assert_eq!(buffer, plaintext);
        }
    }
}
