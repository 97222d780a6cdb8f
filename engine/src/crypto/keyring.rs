//! The key ring: AES-256 data keys that encrypt secrets, each wrapped (AES-256-GCM) by the
//! master key and persisted in `<data-dir>/keyring`.
//!
//! A server adds a fresh data key every time it starts and makes it the active one, so the
//! random-nonce budget of a key (2^32 encryptions, NIST SP 800-38D) is never shared between
//! processes; a key that reaches its budget is retired and a new one is added at run time.
//! Old keys stay in the ring to decrypt what they encrypted.
//!
//! File layout (little-endian), format version 2:
//! ```text
//! magic "CSKEYRNG" | format_version u32 | kdf u8 (1 key file, 2 argon2id) | salt [16] |
//! memory_kib u32 | iterations u32 | lanes u32 | key_count u32 |
//! header_nonce [12] | header_tag [16] |
//! (key_id u32 | created_at_ms u64 | nonce [12] | wrapped_key [32] | tag [16])* | crc32c u32
//! ```
//! The CRC tells a damaged file from a wrong master key: with a good CRC, a key that does not
//! unwrap means the master key is wrong.
//!
//! The header (everything before `header_nonce`) is authenticated with the master key: an
//! AES-GCM tag over it as associated data. Someone who can write the data dir could otherwise
//! plant a header with a cheap Argon2 cost (or no keys at all), so that the server derives its
//! master key cheaply from the operator's passphrase and wraps a new data key with it, which
//! would make offline guessing of the passphrase far cheaper. So the server refuses a ring with
//! no keys or an Argon2 cost below [`ARGON2_COST_MIN`] before deriving anything from the file,
//! and one whose header tag does not verify. A format 1 ring (no header tag) still opens under
//! the same checks, and is rewritten as format 2 at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use aes_gcm::{Aes256Gcm, KeyInit};
use zeroize::Zeroizing;

use crate::crypto::master::{Argon2Cost, MasterKey, KEY_BYTES};
use crate::crypto::nonce::{random_bytes, random_nonce, NONCE_BYTES};
use crate::crypto::{open, seal, Binding, TAG_BYTES};
use crate::error::EngineError;
use crate::storage::write_file_atomically;
use crate::time::now_ms;

const MAGIC: &[u8; 8] = b"CSKEYRNG";
const FORMAT_VERSION: u32 = 2;
/// Rings of this older format (no header tag) are read, checked and rewritten.
const FORMAT_VERSION_UNTAGGED: u32 = 1;
const SALT_BYTES: usize = 16;
const HEADER_BYTES: usize = 8 + 4 + 1 + SALT_BYTES + 4 + 4 + 4 + 4;
const ENTRY_BYTES: usize = 4 + 8 + NONCE_BYTES + KEY_BYTES + TAG_BYTES;
/// Bytes of the header's authentication (format 2): nonce and tag.
const HEADER_SEAL_BYTES: usize = NONCE_BYTES + TAG_BYTES;

/// The weakest Argon2id cost a key ring may record (OWASP's minimum for Argon2id: 19 MiB, 2
/// passes); a weaker one is refused rather than used.
pub const ARGON2_COST_MIN: Argon2Cost = Argon2Cost { memory_kib: 19 * 1024, iterations: 2, lanes: 1 };
/// The costliest Argon2id parameters a ring may record: a planted header must not make the
/// server exhaust its memory at start.
const ARGON2_MEMORY_KIB_MAX: u32 = 4 << 20;
const ARGON2_ITERATIONS_MAX: u32 = 64;
const ARGON2_LANES_MAX: u32 = 64;
/// The id under which wrapped keys are bound in their associated data.
const WRAP_CONTEXT: &str = "credshard data key";

/// Encryptions a data key performs before it is retired (random 96-bit nonces).
pub const DATA_KEY_ENCRYPTIONS_MAX: u64 = 1 << 32;

/// Where the master key comes from.
pub enum KeySource {
    /// A key file holding 64 hex digits.
    KeyFile(PathBuf),
    /// A passphrase stretched with Argon2id; the cost applies when the ring is created (later
    /// starts use the cost recorded in the ring).
    Passphrase(Zeroizing<Vec<u8>>, Argon2Cost),
    /// A key already in memory (tests and benches); recorded like a key file.
    Key(MasterKey),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kdf {
    KeyFile = 1,
    Argon2id = 2,
}

/// A data key: the constructed cipher (key setup is done once) and its encryption count.
pub struct DataKey {
    pub key_id: u32,
    cipher: Aes256Gcm,
    encryptions: AtomicU64,
}

/// The outcome of sealing a secret: which key, which nonce, and the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: u32,
    pub nonce: [u8; NONCE_BYTES],
    pub tag: [u8; TAG_BYTES],
}

/// What the ring persists, kept to rewrite the file when a key is added.
struct RingFile {
    path: Option<PathBuf>,
    master: Aes256Gcm,
    kdf: Kdf,
    salt: [u8; SALT_BYTES],
    cost: Argon2Cost,
    /// Wrapped entries, already encoded.
    entries: Vec<[u8; ENTRY_BYTES]>,
}

pub struct Keyring {
    /// Read without locks by every executor.
    keys: papaya::HashMap<u32, DataKey>,
    active_key_id: AtomicU32,
    encryptions_max: u64,
    file: Mutex<RingFile>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .field("active_key_id", &self.active_key_id.load(Ordering::Relaxed))
            .finish()
    }
}

impl Keyring {
    /// Opens (or creates) `<data_dir>/keyring` with the master key from `source`, then adds
    /// and persists a fresh active data key.
    ///
    /// # Errors
    /// [`EngineError::WrongMasterKey`] when the ring does not unwrap with the given key,
    /// [`EngineError::Keyring`] for a damaged file, an unknown format version or a key source
    /// of the wrong kind, and I/O errors.
    pub fn open(data_dir: &Path, source: KeySource) -> Result<Keyring, EngineError> {
        Keyring::open_with_budget(Some(Keyring::path(data_dir)), source, DATA_KEY_ENCRYPTIONS_MAX)
    }

    /// Where the key ring of `data_dir` is.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("keyring")
    }

    /// Whether `data_dir` has a key ring.
    pub fn exists(data_dir: &Path) -> bool {
        Keyring::path(data_dir).exists()
    }

    /// A ring that lives in memory only (tests and benches).
    pub fn in_memory(master: MasterKey) -> Keyring {
        Keyring::open_with_budget(None, KeySource::Key(master), DATA_KEY_ENCRYPTIONS_MAX)
            .expect("an in-memory key ring cannot fail to open")
    }

    /// As [`Keyring::open`], with a custom per-key encryption budget (tests use a small one).
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn open_with_budget(
        path: Option<PathBuf>,
        source: KeySource,
        encryptions_max: u64,
    ) -> Result<Keyring, EngineError> {
        let existing = match &path {
            Some(path) if path.exists() => Some(std::fs::read(path)?),
            _ => None,
        };
        let file = match existing {
            Some(bytes) => RingFile::parse(path, &bytes, source)?,
            None => RingFile::create(path, source)?,
        };
        let keys = papaya::HashMap::new();
        for entry in &file.entries {
            let (key_id, key) = unwrap_entry(&file.master, entry).ok_or(EngineError::WrongMasterKey)?;
            keys.pin().insert(key_id, DataKey::new(key_id, &key));
        }
        let ring =
            Keyring { keys, active_key_id: AtomicU32::new(0), encryptions_max, file: Mutex::new(file) };
        let key_id = ring.add_key(&mut ring.file.lock().expect("keyring file lock"))?;
        ring.active_key_id.store(key_id, Ordering::Release);
        Ok(ring)
    }

    /// Number of data keys in the ring.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn active_key_id(&self) -> u32 {
        self.active_key_id.load(Ordering::Acquire)
    }

    /// Encrypts `buffer` in place with the active data key, bound to `binding`.
    ///
    /// # Errors
    /// [`EngineError`] when the active key is spent and a new one cannot be persisted.
    pub fn encrypt(&self, binding: &Binding<'_>, buffer: &mut [u8]) -> Result<Sealed, EngineError> {
        loop {
            let key_id = self.active_key_id();
            let keys = self.keys.pin();
            let key = keys.get(&key_id).expect("the active key is in the ring");
            if key.encryptions.fetch_add(1, Ordering::Relaxed) < self.encryptions_max {
                let nonce = random_nonce();
                let tag = binding.with_associated_data(key_id, |aad| seal(&key.cipher, &nonce, aad, buffer));
                return Ok(Sealed { key_id, nonce, tag });
            }
            drop(keys);
            self.retire(key_id)?;
        }
    }

    /// Decrypts `buffer` in place.
    ///
    /// # Errors
    /// [`EngineError::Decrypt`] for an unknown key id or a tag that does not verify.
    pub fn decrypt(
        &self,
        binding: &Binding<'_>,
        sealed: &Sealed,
        buffer: &mut [u8],
    ) -> Result<(), EngineError> {
        let keys = self.keys.pin();
        let key = keys.get(&sealed.key_id).ok_or(EngineError::Decrypt { key_id: sealed.key_id })?;
        binding
            .with_associated_data(sealed.key_id, |aad| {
                open(&key.cipher, &sealed.nonce, aad, buffer, &sealed.tag)
            })
            .map_err(|_| EngineError::Decrypt { key_id: sealed.key_id })
    }

    /// Replaces a spent active key with a new one (once, however many writers race here).
    fn retire(&self, spent_key_id: u32) -> Result<(), EngineError> {
        let mut file = self.file.lock().expect("keyring file lock");
        if self.active_key_id() != spent_key_id {
            return Ok(());
        }
        let key_id = self.add_key(&mut file)?;
        self.active_key_id.store(key_id, Ordering::Release);
        tracing::info!(
            retired_key_id = spent_key_id,
            key_id,
            "data key reached its encryption budget; rotated"
        );
        Ok(())
    }

    /// Generates a data key, persists the ring with it, and adds it to the map.
    fn add_key(&self, file: &mut RingFile) -> Result<u32, EngineError> {
        let key_id = file.entries.len() as u32 + 1;
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        random_bytes(key.as_mut());
        file.entries.push(wrap_entry(&file.master, key_id, &key));
        if let Err(error) = file.persist() {
            file.entries.pop();
            return Err(error);
        }
        self.keys.pin().insert(key_id, DataKey::new(key_id, &key));
        Ok(key_id)
    }
}

impl DataKey {
    fn new(key_id: u32, key: &[u8; KEY_BYTES]) -> DataKey {
        let cipher = Aes256Gcm::new(&aes_gcm::Key::<Aes256Gcm>::from(*key));
        DataKey { key_id, cipher, encryptions: AtomicU64::new(0) }
    }
}

/// Refuses Argon2id parameters below [`ARGON2_COST_MIN`] or above what a server can afford.
fn check_cost(cost: Argon2Cost) -> Result<(), EngineError> {
    let minimum = ARGON2_COST_MIN;
    if cost.memory_kib < minimum.memory_kib
        || cost.iterations < minimum.iterations
        || cost.lanes < minimum.lanes
    {
        return Err(EngineError::Keyring(format!(
            "the keyring records an Argon2id cost of {} KiB x {} passes x {} lanes, below the minimum of \
             {} KiB x {} passes: refused (a weakened header would make guessing the passphrase cheap)",
            cost.memory_kib, cost.iterations, cost.lanes, minimum.memory_kib, minimum.iterations
        )));
    }
    if cost.memory_kib > ARGON2_MEMORY_KIB_MAX
        || cost.iterations > ARGON2_ITERATIONS_MAX
        || cost.lanes > ARGON2_LANES_MAX
    {
        return Err(EngineError::Keyring(format!(
            "the keyring records an Argon2id cost of {} KiB x {} passes x {} lanes, above what this server \
             derives ({ARGON2_MEMORY_KIB_MAX} KiB, {ARGON2_ITERATIONS_MAX} passes, {ARGON2_LANES_MAX} lanes)",
            cost.memory_kib, cost.iterations, cost.lanes
        )));
    }
    Ok(())
}

fn master_cipher(master: &MasterKey) -> Aes256Gcm {
    Aes256Gcm::new(&aes_gcm::Key::<Aes256Gcm>::from(*master.bytes()))
}

/// The associated data of a wrapped data key: `context_bytes u16 | WRAP_CONTEXT | 0 u64 |
/// key_id u32` (the layout records used in format version 1, kept so key rings still open).
fn wrap_associated_data(key_id: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(2 + WRAP_CONTEXT.len() + 12);
    data.extend_from_slice(&(WRAP_CONTEXT.len() as u16).to_le_bytes());
    data.extend_from_slice(WRAP_CONTEXT.as_bytes());
    data.extend_from_slice(&0u64.to_le_bytes());
    data.extend_from_slice(&key_id.to_le_bytes());
    data
}

fn wrap_entry(master: &Aes256Gcm, key_id: u32, key: &[u8; KEY_BYTES]) -> [u8; ENTRY_BYTES] {
    let nonce = random_nonce();
    let mut wrapped = Zeroizing::new(*key);
    let tag = seal(master, &nonce, &wrap_associated_data(key_id), wrapped.as_mut());
    let mut entry = [0u8; ENTRY_BYTES];
    entry[0..4].copy_from_slice(&key_id.to_le_bytes());
    entry[4..12].copy_from_slice(&now_ms().to_le_bytes());
    entry[12..24].copy_from_slice(&nonce);
    entry[24..56].copy_from_slice(wrapped.as_ref());
    entry[56..72].copy_from_slice(&tag);
    entry
}

fn unwrap_entry(master: &Aes256Gcm, entry: &[u8; ENTRY_BYTES]) -> Option<(u32, Zeroizing<[u8; KEY_BYTES]>)> {
    let key_id = u32::from_le_bytes(entry[0..4].try_into().ok()?);
    let nonce: [u8; NONCE_BYTES] = entry[12..24].try_into().ok()?;
    let tag: [u8; TAG_BYTES] = entry[56..72].try_into().ok()?;
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&entry[24..56]);
    open(master, &nonce, &wrap_associated_data(key_id), key.as_mut(), &tag).ok()?;
    Some((key_id, key))
}

impl RingFile {
    fn create(path: Option<PathBuf>, source: KeySource) -> Result<RingFile, EngineError> {
        let mut salt = [0u8; SALT_BYTES];
        random_bytes(&mut salt);
        let (master, kdf, cost) = match source {
            KeySource::KeyFile(key_path) => {
                (MasterKey::read_file(&key_path)?, Kdf::KeyFile, Argon2Cost::default())
            }
            KeySource::Key(master) => (master, Kdf::KeyFile, Argon2Cost::default()),
            KeySource::Passphrase(passphrase, cost) => {
                check_cost(cost)?;
                (MasterKey::from_passphrase(&passphrase, &salt, cost)?, Kdf::Argon2id, cost)
            }
        };
        Ok(RingFile { path, master: master_cipher(&master), kdf, salt, cost, entries: Vec::new() })
    }

    fn parse(path: Option<PathBuf>, bytes: &[u8], source: KeySource) -> Result<RingFile, EngineError> {
        let damaged = |reason: &str| EngineError::Keyring(format!("keyring file is damaged: {reason}"));
        if bytes.len() < HEADER_BYTES + 4 || &bytes[..8] != MAGIC {
            return Err(damaged("bad magic or too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(damaged("checksum mismatch"));
        }
        let read_u32 =
            |offset: usize| u32::from_le_bytes(body[offset..offset + 4].try_into().expect("4 bytes"));
        let format_version = read_u32(8);
        let seal_bytes = match format_version {
            FORMAT_VERSION => HEADER_SEAL_BYTES,
            FORMAT_VERSION_UNTAGGED => 0,
            _ => {
                return Err(EngineError::Keyring(format!(
                    "keyring format version {format_version} is not supported (this build reads versions \
                     {FORMAT_VERSION_UNTAGGED} and {FORMAT_VERSION})"
                )))
            }
        };
        let kdf = match body[12] {
            1 => Kdf::KeyFile,
            2 => Kdf::Argon2id,
            other => return Err(damaged(&format!("unknown kdf {other}"))),
        };
        let salt: [u8; SALT_BYTES] = body[13..29].try_into().expect("salt bytes");
        let cost = Argon2Cost { memory_kib: read_u32(29), iterations: read_u32(33), lanes: read_u32(37) };
        let key_count = read_u32(41) as usize;
        if body.len() != HEADER_BYTES + seal_bytes + key_count * ENTRY_BYTES {
            return Err(damaged("length does not match the key count"));
        }
        // Checked before anything is derived from the header: a server writes a ring only
        // with a key in it, and never records a cost below the minimum.
        if key_count == 0 {
            return Err(EngineError::Keyring(
                "the keyring holds no data key: no server writes one like that, so it is refused".to_owned(),
            ));
        }
        if kdf == Kdf::Argon2id {
            check_cost(cost)?;
        }
        let entries = body[HEADER_BYTES + seal_bytes..]
            .chunks_exact(ENTRY_BYTES)
            .map(|chunk| chunk.try_into().expect("entry bytes"))
            .collect();
        let master = match (source, kdf) {
            (KeySource::KeyFile(key_path), Kdf::KeyFile) => MasterKey::read_file(&key_path)?,
            (KeySource::Key(master), Kdf::KeyFile) => master,
            (KeySource::Passphrase(passphrase, _), Kdf::Argon2id) => {
                MasterKey::from_passphrase(&passphrase, &salt, cost)?
            }
            (_, Kdf::KeyFile) => {
                return Err(EngineError::Keyring(
                    "this data dir's keyring was created with a key file; start with --key-file".to_owned(),
                ))
            }
            (_, Kdf::Argon2id) => {
                return Err(EngineError::Keyring(
                    "this data dir's keyring was created with a passphrase; start with --passphrase-env"
                        .to_owned(),
                ))
            }
        };
        let master = master_cipher(&master);
        if seal_bytes > 0 {
            let nonce: [u8; NONCE_BYTES] =
                body[HEADER_BYTES..HEADER_BYTES + NONCE_BYTES].try_into().expect("nonce");
            let tag: [u8; TAG_BYTES] =
                body[HEADER_BYTES + NONCE_BYTES..HEADER_BYTES + HEADER_SEAL_BYTES].try_into().expect("tag");
            // A wrong master key and a forged header look the same here.
            open(&master, &nonce, &body[..HEADER_BYTES], &mut [], &tag)
                .map_err(|_| EngineError::WrongMasterKey)?;
        }
        Ok(RingFile { path, master, kdf, salt, cost, entries })
    }

    fn persist(&self) -> Result<(), EngineError> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.push(self.kdf as u8);
        bytes.extend_from_slice(&self.salt);
        for value in [self.cost.memory_kib, self.cost.iterations, self.cost.lanes, self.entries.len() as u32]
        {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        debug_assert_eq!(bytes.len(), HEADER_BYTES);
        let nonce = random_nonce();
        let tag = seal(&self.master, &nonce, &bytes.clone(), &mut []);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&tag);
        for entry in &self.entries {
            bytes.extend_from_slice(entry);
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_file_atomically(path, &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_binding;

    fn key_file(dir: &Path) -> PathBuf {
        let path = dir.join("master.key");
        if !path.exists() {
            MasterKey::generate().write_file(&path).unwrap();
        }
        path
    }

    #[test]
    fn reopen_decrypts_old_keys_and_adds_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path(), KeySource::KeyFile(key_file(dir.path()))).unwrap();
        let mut buffer = b"s3cr3t".to_vec();
        let sealed = ring.encrypt(&test_binding("id", 1), &mut buffer).unwrap();
        drop(ring);

        let ring = Keyring::open(dir.path(), KeySource::KeyFile(key_file(dir.path()))).unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.active_key_id(), 2);
        ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
        assert_eq!(buffer, b"s3cr3t");
    }

    #[test]
    fn wrong_master_key_is_detected_from_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        Keyring::open(dir.path(), KeySource::Key(MasterKey::generate())).unwrap();
        let error = Keyring::open(dir.path(), KeySource::Key(MasterKey::generate())).unwrap_err();
        assert!(matches!(error, EngineError::WrongMasterKey), "{error}");
    }

    #[test]
    fn damaged_ring_and_wrong_source_kind_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cost = ARGON2_COST_MIN;
        let passphrase = || KeySource::Passphrase(Zeroizing::new(b"pass".to_vec()), cost);
        Keyring::open(dir.path(), passphrase()).unwrap();
        Keyring::open(dir.path(), passphrase()).expect("the same passphrase reopens");
        let wrong = KeySource::Passphrase(Zeroizing::new(b"other".to_vec()), cost);
        assert!(matches!(Keyring::open(dir.path(), wrong), Err(EngineError::WrongMasterKey)));
        let error = Keyring::open(dir.path(), KeySource::Key(MasterKey::generate())).unwrap_err();
        assert!(error.to_string().contains("--passphrase-env"), "{error}");

        let path = dir.path().join("keyring");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_BYTES + HEADER_SEAL_BYTES + 30] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let error = Keyring::open(dir.path(), passphrase()).unwrap_err();
        assert!(error.to_string().contains("damaged"), "{error}");
    }

    /// Rewrites the ring's header as `edit` says, with a CRC that matches again (an attacker
    /// who can write the file can always fix the CRC).
    fn tamper(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes.truncate(bytes.len() - 4);
        edit(&mut bytes);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_planted_header_is_refused_before_the_passphrase_is_used_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let passphrase = || KeySource::Passphrase(Zeroizing::new(b"pass".to_vec()), ARGON2_COST_MIN);
        assert!(
            Keyring::open(
                dir.path(),
                KeySource::Passphrase(
                    Zeroizing::new(b"p".to_vec()),
                    Argon2Cost { memory_kib: 8, iterations: 1, lanes: 1 }
                )
            )
            .is_err(),
            "a ring is never created below the minimum cost"
        );
        Keyring::open(dir.path(), passphrase()).unwrap();
        let original = std::fs::read(&path).unwrap();

        // A cheaper cost (8 KiB, one pass), the CRC fixed up: refused before deriving.
        tamper(&path, |bytes| {
            bytes[29..33].copy_from_slice(&8u32.to_le_bytes());
            bytes[33..37].copy_from_slice(&1u32.to_le_bytes());
        });
        let error = Keyring::open(dir.path(), passphrase()).unwrap_err().to_string();
        assert!(error.contains("below the minimum"), "{error}");

        // A stronger-looking but different cost or salt: the header tag does not verify.
        std::fs::write(&path, &original).unwrap();
        tamper(&path, |bytes| bytes[33..37].copy_from_slice(&3u32.to_le_bytes()));
        assert!(matches!(Keyring::open(dir.path(), passphrase()), Err(EngineError::WrongMasterKey)));

        // No keys at all: refused.
        std::fs::write(&path, &original).unwrap();
        tamper(&path, |bytes| {
            bytes.truncate(HEADER_BYTES + HEADER_SEAL_BYTES);
            bytes[41..45].copy_from_slice(&0u32.to_le_bytes());
        });
        let error = Keyring::open(dir.path(), passphrase()).unwrap_err().to_string();
        assert!(error.contains("holds no data key"), "{error}");

        std::fs::write(&path, &original).unwrap();
        assert_eq!(Keyring::open(dir.path(), passphrase()).unwrap().len(), 2, "the real ring still opens");
    }

    #[test]
    fn a_format_1_ring_opens_and_is_rewritten_with_a_header_tag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let master = MasterKey::from_bytes([4u8; KEY_BYTES]);
        let ring =
            Keyring::open(dir.path(), KeySource::Key(MasterKey::from_bytes([4u8; KEY_BYTES]))).unwrap();
        let mut buffer = b"old".to_vec();
        let sealed = ring.encrypt(&test_binding("id", 1), &mut buffer).unwrap();
        drop(ring);
        // The same ring as format 1 wrote it: no header tag.
        tamper(&path, |bytes| {
            bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
            bytes.drain(HEADER_BYTES..HEADER_BYTES + HEADER_SEAL_BYTES);
        });
        let ring = Keyring::open(dir.path(), KeySource::Key(master)).unwrap();
        ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
        assert_eq!(buffer, b"old");
        let rewritten = std::fs::read(&path).unwrap();
        assert_eq!(u32::from_le_bytes(rewritten[8..12].try_into().unwrap()), FORMAT_VERSION);
    }

    #[test]
    fn spent_key_is_retired_and_old_ciphertexts_still_open() {
        let ring = Keyring::open_with_budget(None, KeySource::Key(MasterKey::generate()), 3).unwrap();
        let mut sealed = Vec::new();
        for version in 1..=7u64 {
            let mut buffer = version.to_le_bytes().to_vec();
            sealed.push((ring.encrypt(&test_binding("id", version), &mut buffer).unwrap(), buffer));
        }
        assert_eq!(ring.len(), 3, "7 encryptions with a budget of 3 use 3 keys");
        assert_eq!(sealed.iter().filter(|(s, _)| s.key_id == 1).count(), 3);
        for (version, (seal, mut buffer)) in (1..=7u64).zip(sealed) {
            ring.decrypt(&test_binding("id", version), &seal, &mut buffer).unwrap();
            assert_eq!(buffer, version.to_le_bytes());
        }
    }
}
