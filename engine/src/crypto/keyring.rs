//! The key ring: AES-256 data keys that encrypt secrets, each wrapped (AES-256-GCM) by the
//! master key and persisted in `<data-dir>/keyring`.
//!
//! One key is *active*: new secrets are sealed with it. The others are *retiring*: they still
//! decrypt what they sealed, while the shards re-encrypt those records with the active key in
//! the background ([`Keyring::report_clear`]); once every shard has a pass with nothing left on
//! them, they are dropped from the file. Two operations rotate the hierarchy:
//!
//! - [`Keyring::rotate`] (ROTATE_KEY, and automatically when the active key's budget is spent):
//!   a fresh active key; the previous one retires.
//! - [`Keyring::rekey`] (REKEY): every data key rewrapped under a new master key; the file is
//!   replaced atomically, so afterwards only the new master key opens it.
//!
//! **Encryption budget.** With random 96-bit nonces a key may seal at most 2^32 secrets (NIST
//! SP 800-38D). The ring records, per key, how many encryptions have been *reserved*, in blocks
//! of [`RESERVATION_BLOCK`]: a server reserves a block before using it, so after a crash at most
//! the unused rest of one block is lost, and the count never goes backwards. A restarting
//! server keeps the active key (reserving its next block) until the budget is spent, so the
//! ring does not grow by one key per start.
//!
//! File layout (little-endian), format version 3:
//! ```text
//! magic "CSKEYRNG" | format_version u32 | kdf u8 (1 key file, 2 argon2id) | salt [16] |
//! memory_kib u32 | iterations u32 | lanes u32 | key_count u32 |
//! (key_id u32 | state u8 (1 active, 2 retiring) | created_at_ms u64 | encryptions_reserved u64 |
//!  nonce [12] | wrapped_key [32] | tag [16])* |
//! file_nonce [12] | file_tag [16] | crc32c u32
//! ```
//! The CRC tells a damaged file from a wrong master key: with a good CRC, a file tag that does
//! not verify means the master key is wrong (or the file was forged).
//!
//! `file_tag` is an AES-GCM tag, under the master key, over everything before it: the header,
//! and every key's state and reservation. Someone who can write the data dir could otherwise
//! plant a header with a cheap Argon2 cost (or no keys at all), so that the server derives its
//! master key cheaply from the operator's passphrase; or lower a key's reservation so that it
//! is used past its budget. So the server refuses a ring with no keys or an Argon2 cost below
//! [`ARGON2_COST_MIN`] before deriving anything from the file, and one whose tag does not
//! verify. Rings of formats 1 and 2 (no reservations; format 1 without any tag) still open
//! under the same checks: their keys' use is unknown, so they all retire (their records are
//! re-encrypted) and the ring is rewritten as format 3 at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::crypto::master::{Argon2Cost, MasterKey, KEY_BYTES};
use crate::crypto::nonce::{random_bytes, random_nonce, NONCE_BYTES};
use crate::crypto::{open, seal, Binding, Cipher, TAG_BYTES};
use crate::error::EngineError;
use crate::files::write_file_atomically;
use crate::time::now_ms;

const MAGIC: &[u8; 8] = b"CSKEYRNG";
const FORMAT_VERSION: u32 = 3;
/// Format 2: a tag over the header only, no key states or reservations.
const FORMAT_VERSION_HEADER_TAG: u32 = 2;
/// Format 1: no tag at all.
const FORMAT_VERSION_UNTAGGED: u32 = 1;
const SALT_BYTES: usize = 16;
const HEADER_BYTES: usize = 8 + 4 + 1 + SALT_BYTES + 4 + 4 + 4 + 4;
/// A wrapped key: nonce, ciphertext, tag.
const WRAPPED_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;
const ENTRY_BYTES: usize = 4 + 1 + 8 + 8 + WRAPPED_BYTES;
/// An entry of formats 1 and 2: `key_id u32 | created_at_ms u64 | wrapped`.
const OLD_ENTRY_BYTES: usize = 4 + 8 + WRAPPED_BYTES;
/// Bytes of a nonce and tag that authenticate (format 3: the file; format 2: the header).
const SEAL_BYTES: usize = NONCE_BYTES + TAG_BYTES;

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
/// Encryptions reserved (and persisted) at a time: a restart, or a crash, gives up at most
/// this many of a key's budget, so a key survives 256 starts; a running server rewrites the
/// ring once per this many encryptions.
pub const RESERVATION_BLOCK: u64 = 1 << 24;

/// Where the master key comes from.
pub enum KeySource {
    /// A key file holding 64 hex digits.
    KeyFile(PathBuf),
    /// A passphrase stretched with Argon2id; the cost applies when the ring is created or
    /// rekeyed (later starts use the cost recorded in the ring).
    Passphrase(Zeroizing<Vec<u8>>, Argon2Cost),
    /// A key already in memory (REKEY, tests and benches); recorded like a key file.
    Key(MasterKey),
}

impl KeySource {
    /// The same source again (a master key is not `Clone`, so that copies are deliberate).
    fn duplicate(&self) -> KeySource {
        match self {
            KeySource::KeyFile(path) => KeySource::KeyFile(path.clone()),
            KeySource::Passphrase(passphrase, cost) => KeySource::Passphrase(passphrase.clone(), *cost),
            KeySource::Key(master) => KeySource::Key(MasterKey::from_bytes(*master.bytes())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kdf {
    KeyFile = 1,
    Argon2id = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyState {
    Active = 1,
    Retiring = 2,
}

/// A data key: the constructed cipher (key setup is done once), its encryption count and how
/// far the ring has reserved it.
pub struct DataKey {
    pub key_id: u32,
    cipher: Cipher,
    /// Encryptions handed out, counted from 0 for the key's whole life (this process starts
    /// from the previous reservation).
    encryptions: AtomicU64,
    /// Encryptions below this count are reserved in the file.
    reserved: AtomicU64,
}

/// The outcome of sealing a secret: which key, which nonce, and the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: u32,
    pub nonce: [u8; NONCE_BYTES],
    pub tag: [u8; TAG_BYTES],
}

/// One key as the file records it.
#[derive(Clone, Copy)]
struct RingEntry {
    key_id: u32,
    state: KeyState,
    created_at_ms: u64,
    reserved: u64,
    wrapped: [u8; WRAPPED_BYTES],
}

/// A key ring kept in a store that several servers share (the PostgreSQL store's database):
/// each change is stored only if nobody changed the ring since it was read.
pub trait SharedRing: Send + Sync {
    /// The ring's bytes and generation, if one is stored.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn load(&self) -> std::io::Result<Option<(i64, Vec<u8>)>>;

    /// Stores `bytes` if the stored generation is still `generation` (`None`: if none is
    /// stored yet); returns false when another server changed it first.
    ///
    /// # Errors
    /// When the store cannot be written.
    fn store(&self, generation: Option<i64>, bytes: &[u8]) -> std::io::Result<bool>;
}

/// Where a key ring is kept.
#[derive(Clone)]
pub enum RingPlace {
    /// Nowhere (tests, benches): gone with the process.
    Memory,
    /// A file of its own (`<data-dir>/keyring`), replaced atomically.
    File(PathBuf),
    /// A store shared with other servers.
    Shared(std::sync::Arc<dyn SharedRing>),
}

/// Why persisting the ring failed.
#[derive(Debug)]
enum PersistError {
    Io(std::io::Error),
    /// Another server changed the shared ring since it was read: read it again and retry.
    Conflict,
}

impl From<PersistError> for EngineError {
    fn from(error: PersistError) -> EngineError {
        match error {
            PersistError::Io(error) => EngineError::Io(error),
            PersistError::Conflict => {
                EngineError::Keyring("another server changed the shared key ring meanwhile".to_owned())
            }
        }
    }
}

/// Tries of a change to a shared ring that other servers keep changing first.
const SHARED_RING_TRIES: usize = 16;

/// Refuses an operation not built for rings shared between servers yet.
fn refuse_shared(file: &RingFile, what: &str) -> Result<(), EngineError> {
    match file.place {
        RingPlace::Shared(_) => Err(EngineError::Keyring(format!(
            "{what} is not available yet when servers share the key ring (--store postgres)"
        ))),
        _ => Ok(()),
    }
}

/// What the ring persists, kept to rewrite the file.
struct RingFile {
    place: RingPlace,
    /// The stored generation of a shared ring (`None`: not stored yet).
    generation: Option<i64>,
    master: Cipher,
    kdf: Kdf,
    salt: [u8; SALT_BYTES],
    cost: Argon2Cost,
    entries: Vec<RingEntry>,
    /// Shards that finished a pass with no record on a retiring key in the current rotation
    /// epoch (in memory: after a restart every shard checks again).
    cleared: BTreeSet<usize>,
}

/// What [`Keyring::status`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyringStatus {
    pub active_key_id: u32,
    /// Keys in the file: the active one and those still retiring.
    pub data_keys: usize,
    pub retiring: usize,
}

pub struct Keyring {
    /// Read without locks by every executor. Keys dropped from the file stay here until the
    /// process ends, so a read that fetched a record just before it was re-encrypted can
    /// still open it.
    keys: papaya::HashMap<u32, DataKey>,
    active_key_id: AtomicU32,
    encryptions_max: u64,
    /// Bumped by every rotation: a shard's report that it is clear counts only for the epoch
    /// it scanned in.
    rotation_epoch: AtomicU64,
    /// Keys in the file (active and retiring), for STATS and the re-encryption tasks.
    file_keys: AtomicUsize,
    file: Mutex<RingFile>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Keyring")
            .field("keys", &self.file_keys.load(Ordering::Relaxed))
            .field("active_key_id", &self.active_key_id.load(Ordering::Relaxed))
            .finish()
    }
}

impl Keyring {
    /// Opens (or creates) `<data_dir>/keyring` with the master key from `source`, keeps its
    /// active key if it has budget left (reserving its next block), else adds a fresh one.
    ///
    /// # Errors
    /// [`EngineError::WrongMasterKey`] when the ring does not unwrap with the given key,
    /// [`EngineError::Keyring`] for a damaged file, an unknown format version or a key source
    /// of the wrong kind, and I/O errors.
    pub fn open(data_dir: &Path, source: KeySource) -> Result<Keyring, EngineError> {
        Keyring::open_with_budget(Some(Keyring::path(data_dir)), source, DATA_KEY_ENCRYPTIONS_MAX)
    }

    /// Opens the ring kept in `shared`, creating it if no server has yet. Servers sharing it
    /// see each other's keys: a record sealed with a key this one does not know yet makes it
    /// read the ring again.
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn open_shared(
        shared: std::sync::Arc<dyn SharedRing>,
        source: KeySource,
    ) -> Result<Keyring, EngineError> {
        Keyring::open_in(RingPlace::Shared(shared), source, DATA_KEY_ENCRYPTIONS_MAX)
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

    /// As [`Keyring::open`], with a custom per-key encryption budget (tests use a small one;
    /// reservations are then blocks of at most the budget).
    ///
    /// # Errors
    /// As [`Keyring::open`].
    pub fn open_with_budget(
        path: Option<PathBuf>,
        source: KeySource,
        encryptions_max: u64,
    ) -> Result<Keyring, EngineError> {
        Keyring::open_in(path.map_or(RingPlace::Memory, RingPlace::File), source, encryptions_max)
    }

    fn open_in(place: RingPlace, source: KeySource, encryptions_max: u64) -> Result<Keyring, EngineError> {
        let RingPlace::Shared(shared) = &place else {
            let ring = Keyring::open_once(place, source, encryptions_max)?;
            return Ok(ring.expect("only a shared ring is created elsewhere"));
        };
        // Servers starting together on an empty store each create a ring of their own; one
        // stores it first, and the others open that one instead.
        for _ in 0..SHARED_RING_TRIES {
            let place = RingPlace::Shared(std::sync::Arc::clone(shared));
            if let Some(ring) = Keyring::open_once(place, source.duplicate(), encryptions_max)? {
                return Ok(ring);
            }
        }
        Err(PersistError::Conflict.into())
    }

    /// One attempt of [`Keyring::open_in`]: `None` when this server created a shared ring and
    /// another stored its own first (open that one instead).
    fn open_once(
        place: RingPlace,
        source: KeySource,
        encryptions_max: u64,
    ) -> Result<Option<Keyring>, EngineError> {
        let existing = match &place {
            RingPlace::File(path) if path.exists() => Some((None, std::fs::read(path)?)),
            RingPlace::Shared(shared) => shared.load()?.map(|(generation, bytes)| (Some(generation), bytes)),
            _ => None,
        };
        let (file, migrated) = match existing {
            Some((generation, bytes)) => {
                let (mut file, migrated) = RingFile::parse(place, &bytes, source)?;
                file.generation = generation;
                (file, migrated)
            }
            None => (RingFile::create(place, source)?, false),
        };
        let keys = papaya::HashMap::new();
        for entry in &file.entries {
            let key =
                unwrap_key(&file.master, entry.key_id, &entry.wrapped).ok_or(EngineError::WrongMasterKey)?;
            keys.pin().insert(entry.key_id, DataKey::new(entry.key_id, &key, entry.reserved));
        }
        let ring = Keyring {
            keys,
            active_key_id: AtomicU32::new(0),
            encryptions_max,
            rotation_epoch: AtomicU64::new(0),
            file_keys: AtomicUsize::new(0),
            file: Mutex::new(file),
        };
        let mut file = ring.file.lock().expect("keyring file lock");
        if let Err(error) = ring.ensure_usable_active(&mut file) {
            // Created here, never stored, and now the store has one: another server's.
            let lost_the_creation = match &file.place {
                RingPlace::Shared(shared) if file.generation.is_none() => shared.load()?.is_some(),
                _ => false,
            };
            return if lost_the_creation { Ok(None) } else { Err(error) };
        }
        if migrated {
            tracing::info!("key ring rewritten as format {FORMAT_VERSION}; its older keys retire");
        }
        ring.file_keys.store(file.entries.len(), Ordering::Release);
        drop(file);
        Ok(Some(ring))
    }

    /// Data keys in the ring file (the active one and those still retiring).
    pub fn len(&self) -> usize {
        self.file_keys.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn active_key_id(&self) -> u32 {
        self.active_key_id.load(Ordering::Acquire)
    }

    /// True while some key other than the active one is still in the file: records may still
    /// need re-encrypting.
    pub fn has_retiring(&self) -> bool {
        self.len() > 1
    }

    /// The current rotation epoch (see [`Keyring::report_clear`]).
    pub fn rotation_epoch(&self) -> u64 {
        self.rotation_epoch.load(Ordering::Acquire)
    }

    pub fn status(&self) -> KeyringStatus {
        let data_keys = self.len();
        KeyringStatus {
            active_key_id: self.active_key_id(),
            data_keys,
            retiring: data_keys.saturating_sub(1),
        }
    }

    /// Encrypts `buffer` in place with the active data key, bound to `binding`.
    ///
    /// # Errors
    /// [`EngineError`] when the active key needs a reservation or a successor and the ring
    /// cannot be persisted.
    pub fn encrypt(&self, binding: &Binding<'_>, buffer: &mut [u8]) -> Result<Sealed, EngineError> {
        loop {
            let key_id = self.active_key_id();
            let keys = self.keys.pin();
            let key = keys.get(&key_id).expect("the active key is in the ring");
            let count = key.encryptions.fetch_add(1, Ordering::Relaxed);
            if count < key.reserved.load(Ordering::Acquire) {
                let nonce = random_nonce();
                let tag = binding.with_associated_data(key_id, |aad| seal(&key.cipher, &nonce, aad, buffer));
                return Ok(Sealed { key_id, nonce, tag });
            }
            drop(keys);
            let mut file = self.file.lock().expect("keyring file lock");
            // Another writer may have reserved the next block or rotated while this one waited.
            let keys = self.keys.pin();
            let reserved =
                keys.get(&key_id).expect("the active key is in the ring").reserved.load(Ordering::Acquire);
            drop(keys);
            if self.active_key_id() != key_id || count < reserved {
                continue;
            }
            self.ensure_usable_active(&mut file)?;
            if self.active_key_id() != key_id {
                tracing::info!(retired_key_id = key_id, "data key reached its encryption budget; rotated");
            }
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
        let key = match keys.get(&sealed.key_id) {
            Some(key) => key,
            None => {
                // Another server sharing the ring may have added it: read the ring again.
                drop(keys);
                let mut file = self.file.lock().expect("keyring file lock");
                if !matches!(file.place, RingPlace::Shared(_)) {
                    return Err(EngineError::Decrypt { key_id: sealed.key_id });
                }
                self.refresh(&mut file)?;
                drop(file);
                return match self.keys.pin().get(&sealed.key_id) {
                    Some(_) => self.decrypt(binding, sealed, buffer),
                    None => Err(EngineError::Decrypt { key_id: sealed.key_id }),
                };
            }
        };
        binding
            .with_associated_data(sealed.key_id, |aad| {
                open(&key.cipher, &sealed.nonce, aad, buffer, &sealed.tag)
            })
            .map_err(|_| EngineError::Decrypt { key_id: sealed.key_id })
    }

    /// Makes a fresh data key the active one; the previous active key retires (its records
    /// are re-encrypted by the shards; in a shared ring they stay on it, and it is kept).
    /// Returns the new key's id. A shared ring another server changed meanwhile is read again
    /// and the rotation retried on top of it, so key ids never collide; the other servers
    /// adopt the new active key when they next read the ring ([`Keyring::refresh_shared`]).
    ///
    /// # Errors
    /// When the ring cannot be persisted (nothing changes then).
    pub fn rotate(&self) -> Result<u32, EngineError> {
        let mut file = self.file.lock().expect("keyring file lock");
        for _ in 0..SHARED_RING_TRIES {
            match self.add_active_key(&mut file) {
                Ok(key_id) => {
                    tracing::info!(key_id, data_keys = file.entries.len(), "data key rotated");
                    return Ok(key_id);
                }
                Err(PersistError::Conflict) => self.refresh(&mut file)?,
                Err(error) => return Err(error.into()),
            }
        }
        Err(PersistError::Conflict.into())
    }

    /// Reads a shared ring again if another server changed it (a rotation, a reservation):
    /// its new keys become known and its active key this server's. Returns the active key id
    /// afterwards. Does nothing for a ring of this server's own.
    ///
    /// # Errors
    /// The store cannot be read, or the ring was rekeyed under another master key.
    pub fn refresh_shared(&self) -> Result<u32, EngineError> {
        let shared = match &self.file.lock().expect("keyring file lock").place {
            RingPlace::Shared(shared) => std::sync::Arc::clone(shared),
            _ => return Ok(self.active_key_id()),
        };
        // Read without the lock: encryptions and decryptions on the executors take it, and a
        // slow or unreachable database must not stall them.
        let loaded = shared.load()?;
        let mut file = self.file.lock().expect("keyring file lock");
        self.adopt(&mut file, loaded)?;
        Ok(self.active_key_id())
    }

    /// Rewraps every data key under the master key from `source` (a passphrase gets a fresh
    /// salt) and replaces the file atomically: from then on only the new master key opens it.
    /// Returns the number of keys rewrapped. The caller derives nothing on a shard's thread:
    /// a passphrase costs an Argon2id derivation here.
    ///
    /// # Errors
    /// An unreadable key file, a cost below the minimum, or a ring that cannot be persisted
    /// (the old master key stays in force then).
    pub fn rekey(&self, source: KeySource) -> Result<usize, EngineError> {
        let mut salt = [0u8; SALT_BYTES];
        random_bytes(&mut salt);
        let (master, kdf, cost) = derive_master(source, &salt)?;
        let master = master_cipher(&master);
        let mut file = self.file.lock().expect("keyring file lock");
        refuse_shared(&file, "rekeying")?;
        let mut entries = file.entries.clone();
        for entry in &mut entries {
            let key = unwrap_key(&file.master, entry.key_id, &entry.wrapped).ok_or(EngineError::Keyring(
                "a data key no longer unwraps with the running master key".into(),
            ))?;
            entry.wrapped = wrap_key(&master, entry.key_id, &key);
        }
        let mut rekeyed = RingFile {
            place: file.place.clone(),
            generation: file.generation,
            master,
            kdf,
            salt,
            cost,
            entries,
            cleared: std::mem::take(&mut file.cleared),
        };
        let persisted = rekeyed.persist();
        let count = rekeyed.entries.len();
        match persisted {
            Ok(()) => {
                *file = rekeyed;
                tracing::info!(data_keys = count, "key ring rewrapped under a new master key");
                Ok(count)
            }
            Err(error) => {
                file.cleared = rekeyed.cleared;
                Err(EngineError::from(error))
            }
        }
    }

    /// A shard reports a whole pass over its records, in rotation epoch `epoch`, that found
    /// none on a retiring key, after everything it re-encrypted is durable. Once all
    /// `shard_count` shards have done so in the current epoch, the retiring keys are dropped
    /// from the file; their ids are returned. A report from an earlier epoch is ignored (a
    /// rotation since may have retired the key the shard re-encrypted to).
    ///
    /// # Errors
    /// When the ring cannot be persisted (the keys stay, and are dropped at a later report).
    pub fn report_clear(
        &self,
        shard_id: usize,
        epoch: u64,
        shard_count: usize,
    ) -> Result<Vec<u32>, EngineError> {
        let mut file = self.file.lock().expect("keyring file lock");
        // Servers sharing a ring keep retiring keys: another one may still be sealing with
        // one until it reads the ring again.
        if epoch != self.rotation_epoch()
            || !self.has_retiring()
            || matches!(file.place, RingPlace::Shared(_))
        {
            return Ok(Vec::new());
        }
        file.cleared.insert(shard_id);
        if file.cleared.len() < shard_count {
            return Ok(Vec::new());
        }
        let kept: Vec<RingEntry> =
            file.entries.iter().filter(|entry| entry.state == KeyState::Active).copied().collect();
        let dropped: Vec<u32> = file
            .entries
            .iter()
            .filter(|entry| entry.state == KeyState::Retiring)
            .map(|entry| entry.key_id)
            .collect();
        file.replace_entries(kept).map_err(EngineError::from)?;
        self.file_keys.store(file.entries.len(), Ordering::Release);
        tracing::info!(
            ?dropped,
            "no record is left on the retiring data keys; dropped them from the key ring"
        );
        Ok(dropped)
    }

    /// Generates a data key, records it as the active one (the previous active key retires)
    /// with its first block reserved, persists the ring, and only then puts it in use.
    fn add_active_key(&self, file: &mut RingFile) -> Result<u32, PersistError> {
        let key_id = file.entries.iter().map(|entry| entry.key_id).max().unwrap_or(0) + 1;
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        random_bytes(key.as_mut());
        let reserved = RESERVATION_BLOCK.min(self.encryptions_max);
        let mut entries = file.entries.clone();
        for entry in &mut entries {
            entry.state = KeyState::Retiring;
        }
        entries.push(RingEntry {
            key_id,
            state: KeyState::Active,
            created_at_ms: now_ms(),
            reserved,
            wrapped: wrap_key(&file.master, key_id, &key),
        });
        file.replace_entries(entries)?;
        self.file_keys.store(file.entries.len(), Ordering::Release);
        let data_key = DataKey::new(key_id, &key, 0);
        data_key.reserved.store(reserved, Ordering::Release);
        self.keys.pin().insert(key_id, data_key);
        self.active_key_id.store(key_id, Ordering::Release);
        self.rotation_epoch.fetch_add(1, Ordering::AcqRel);
        file.cleared.clear();
        Ok(key_id)
    }

    /// Reserves the next block of `key_id`'s budget in the file, then lets encryptions use it:
    /// they count from where the ring's reservations ended (which, in a shared ring, another
    /// server may have moved on) to the new end.
    fn extend_reservation(&self, file: &mut RingFile, key_id: u32) -> Result<(), PersistError> {
        let index = file
            .entries
            .iter()
            .position(|entry| entry.key_id == key_id)
            .expect("the active key is in the file");
        let mut entries = file.entries.clone();
        let from = entries[index].reserved;
        entries[index].reserved = from.saturating_add(RESERVATION_BLOCK).min(self.encryptions_max);
        let to = entries[index].reserved;
        file.replace_entries(entries)?;
        let keys = self.keys.pin();
        let key = keys.get(&key_id).expect("the active key is in the ring");
        key.encryptions.store(from, Ordering::Release);
        key.reserved.store(to, Ordering::Release);
        Ok(())
    }

    /// Makes sure the active key has budget reserved: the next block of it, or, once it is
    /// spent, a fresh active key. A shared ring changed by another server meanwhile is read
    /// again and the step retried (adopting a fresh active key another server added).
    fn ensure_usable_active(&self, file: &mut RingFile) -> Result<(), EngineError> {
        for _ in 0..SHARED_RING_TRIES {
            let active = file.entries.iter().find(|entry| entry.state == KeyState::Active).copied();
            let step = match active {
                Some(entry) if entry.reserved < self.encryptions_max => {
                    self.active_key_id.store(entry.key_id, Ordering::Release);
                    self.extend_reservation(file, entry.key_id)
                }
                _ => self.add_active_key(file).map(|_| ()),
            };
            match step {
                Ok(()) => return Ok(()),
                Err(PersistError::Conflict) => self.refresh(file)?,
                Err(error) => return Err(error.into()),
            }
        }
        Err(PersistError::Conflict.into())
    }

    /// Reads a shared ring again, if another server changed it: its keys join this one's (keys
    /// stay known until the process ends), and its active key becomes this one's.
    fn refresh(&self, file: &mut RingFile) -> Result<(), EngineError> {
        let RingPlace::Shared(shared) = &file.place else { return Ok(()) };
        let loaded = shared.load()?;
        self.adopt(file, loaded)
    }

    /// Takes a shared ring's stored state, as read, if it is newer than this server's.
    fn adopt(&self, file: &mut RingFile, loaded: Option<(i64, Vec<u8>)>) -> Result<(), EngineError> {
        let Some((generation, bytes)) = loaded else {
            return Err(EngineError::Keyring("the shared key ring is gone from its store".to_owned()));
        };
        // Generations only grow: a ring read before another refresh took a newer one is old.
        if file.generation.is_some_and(|known| known >= generation) {
            return Ok(());
        }
        let header = RingHeader::parse(&bytes)?;
        if header.format_version != FORMAT_VERSION || header.kdf != file.kdf || header.salt != file.salt {
            return Err(EngineError::Keyring(
                "the shared key ring was rekeyed by another server: restart with the new master key"
                    .to_owned(),
            ));
        }
        let entries = header.entries(&bytes, &file.master)?;
        let keys = self.keys.pin();
        for entry in &entries {
            if keys.get(&entry.key_id).is_none() {
                let key = unwrap_key(&file.master, entry.key_id, &entry.wrapped)
                    .ok_or(EngineError::WrongMasterKey)?;
                keys.insert(entry.key_id, DataKey::new(entry.key_id, &key, entry.reserved));
            }
        }
        drop(keys);
        let active = entries.iter().find(|entry| entry.state == KeyState::Active).map(|entry| entry.key_id);
        if let Some(active) = active.filter(|&active| active != self.active_key_id()) {
            self.active_key_id.store(active, Ordering::Release);
            self.rotation_epoch.fetch_add(1, Ordering::AcqRel);
        }
        file.entries = entries;
        file.generation = Some(generation);
        self.file_keys.store(file.entries.len(), Ordering::Release);
        Ok(())
    }
}

impl DataKey {
    /// A key whose use so far is `used` encryptions (nothing of it reserved in this process).
    fn new(key_id: u32, key: &[u8; KEY_BYTES], used: u64) -> DataKey {
        let cipher = Cipher::new(key);
        DataKey { key_id, cipher, encryptions: AtomicU64::new(used), reserved: AtomicU64::new(used) }
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

/// The master key of a new ring (or a rekey) and what its header records.
fn derive_master(
    source: KeySource,
    salt: &[u8; SALT_BYTES],
) -> Result<(MasterKey, Kdf, Argon2Cost), EngineError> {
    Ok(match source {
        KeySource::KeyFile(key_path) => {
            (MasterKey::read_file(&key_path)?, Kdf::KeyFile, Argon2Cost::default())
        }
        KeySource::Key(master) => (master, Kdf::KeyFile, Argon2Cost::default()),
        KeySource::Passphrase(passphrase, cost) => {
            check_cost(cost)?;
            (MasterKey::from_passphrase(&passphrase, salt, cost)?, Kdf::Argon2id, cost)
        }
    })
}

fn master_cipher(master: &MasterKey) -> Cipher {
    Cipher::new(master.bytes())
}

/// The associated data of a wrapped data key: `context_bytes u16 | WRAP_CONTEXT | 0 u64 |
/// key_id u32` (the layout of format 1, kept so older rings' keys unwrap as they are).
fn wrap_associated_data(key_id: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(2 + WRAP_CONTEXT.len() + 12);
    data.extend_from_slice(&(WRAP_CONTEXT.len() as u16).to_le_bytes());
    data.extend_from_slice(WRAP_CONTEXT.as_bytes());
    data.extend_from_slice(&0u64.to_le_bytes());
    data.extend_from_slice(&key_id.to_le_bytes());
    data
}

fn wrap_key(master: &Cipher, key_id: u32, key: &[u8; KEY_BYTES]) -> [u8; WRAPPED_BYTES] {
    let nonce = random_nonce();
    let mut sealed = Zeroizing::new(*key);
    let tag = seal(master, &nonce, &wrap_associated_data(key_id), sealed.as_mut());
    let mut wrapped = [0u8; WRAPPED_BYTES];
    wrapped[..NONCE_BYTES].copy_from_slice(&nonce);
    wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES].copy_from_slice(sealed.as_ref());
    wrapped[NONCE_BYTES + KEY_BYTES..].copy_from_slice(&tag);
    wrapped
}

fn unwrap_key(
    master: &Cipher,
    key_id: u32,
    wrapped: &[u8; WRAPPED_BYTES],
) -> Option<Zeroizing<[u8; KEY_BYTES]>> {
    let nonce: [u8; NONCE_BYTES] = wrapped[..NONCE_BYTES].try_into().ok()?;
    let tag: [u8; TAG_BYTES] = wrapped[NONCE_BYTES + KEY_BYTES..].try_into().ok()?;
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES]);
    open(master, &nonce, &wrap_associated_data(key_id), key.as_mut(), &tag).ok()?;
    Some(key)
}

/// A ring's header, read and checked before anything is derived from it.
struct RingHeader {
    format_version: u32,
    kdf: Kdf,
    salt: [u8; SALT_BYTES],
    cost: Argon2Cost,
    key_count: usize,
    entry_bytes: usize,
    seal_bytes: usize,
}

fn damaged(reason: &str) -> EngineError {
    EngineError::Keyring(format!("keyring file is damaged: {reason}"))
}

impl RingHeader {
    fn parse(bytes: &[u8]) -> Result<RingHeader, EngineError> {
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
        let (entry_bytes, seal_bytes) = match format_version {
            FORMAT_VERSION => (ENTRY_BYTES, SEAL_BYTES),
            FORMAT_VERSION_HEADER_TAG => (OLD_ENTRY_BYTES, SEAL_BYTES),
            FORMAT_VERSION_UNTAGGED => (OLD_ENTRY_BYTES, 0),
            _ => {
                return Err(EngineError::Keyring(format!(
                    "keyring format version {format_version} is not supported (this build reads versions \
                     {FORMAT_VERSION_UNTAGGED} to {FORMAT_VERSION})"
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
        if body.len() != HEADER_BYTES + seal_bytes + key_count * entry_bytes {
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
        Ok(RingHeader { format_version, kdf, salt, cost, key_count, entry_bytes, seal_bytes })
    }

    /// The ring's entries, once its tag verifies under `master`.
    fn entries(&self, bytes: &[u8], master: &Cipher) -> Result<Vec<RingEntry>, EngineError> {
        let RingHeader { format_version, key_count, entry_bytes, seal_bytes, .. } = *self;
        let body = &bytes[..bytes.len() - 4];
        // Format 3 authenticates the whole file (after the entries), format 2 the header
        // (before them). A wrong master key and a forged file look the same here.
        let (entries_at, authenticated, seal_at) = match format_version {
            FORMAT_VERSION => (HEADER_BYTES, body.len() - SEAL_BYTES, body.len() - SEAL_BYTES),
            _ => (HEADER_BYTES + seal_bytes, HEADER_BYTES, HEADER_BYTES),
        };
        if seal_bytes > 0 {
            let nonce: [u8; NONCE_BYTES] = body[seal_at..seal_at + NONCE_BYTES].try_into().expect("nonce");
            let tag: [u8; TAG_BYTES] =
                body[seal_at + NONCE_BYTES..seal_at + SEAL_BYTES].try_into().expect("tag");
            open(master, &nonce, &body[..authenticated], &mut [], &tag)
                .map_err(|_| EngineError::WrongMasterKey)?;
        }
        let mut entries = Vec::with_capacity(key_count);
        let mut active = 0;
        for chunk in body[entries_at..entries_at + key_count * entry_bytes].chunks_exact(entry_bytes) {
            let key_id = u32::from_le_bytes(chunk[0..4].try_into().expect("4 bytes"));
            let read_u64 = |at: usize| u64::from_le_bytes(chunk[at..at + 8].try_into().expect("8 bytes"));
            let entry = if format_version == FORMAT_VERSION {
                let state = match chunk[4] {
                    1 => KeyState::Active,
                    2 => KeyState::Retiring,
                    other => return Err(damaged(&format!("unknown key state {other}"))),
                };
                active += usize::from(state == KeyState::Active);
                RingEntry {
                    key_id,
                    state,
                    created_at_ms: read_u64(5),
                    reserved: read_u64(13),
                    wrapped: chunk[21..].try_into().expect("wrapped bytes"),
                }
            } else {
                // Their use is unknown: they retire, spent.
                RingEntry {
                    key_id,
                    state: KeyState::Retiring,
                    created_at_ms: read_u64(4),
                    reserved: u64::MAX,
                    wrapped: chunk[12..].try_into().expect("wrapped bytes"),
                }
            };
            entries.push(entry);
        }
        if format_version == FORMAT_VERSION && active != 1 {
            return Err(damaged(&format!("{active} active keys (a ring has exactly one)")));
        }
        Ok(entries)
    }
}

impl RingFile {
    fn create(place: RingPlace, source: KeySource) -> Result<RingFile, EngineError> {
        let mut salt = [0u8; SALT_BYTES];
        random_bytes(&mut salt);
        let (master, kdf, cost) = derive_master(source, &salt)?;
        Ok(RingFile {
            place,
            generation: None,
            master: master_cipher(&master),
            kdf,
            salt,
            cost,
            entries: Vec::new(),
            cleared: BTreeSet::new(),
        })
    }

    /// Parses a ring; the flag says it was of an older format (and must be rewritten).
    fn parse(place: RingPlace, bytes: &[u8], source: KeySource) -> Result<(RingFile, bool), EngineError> {
        let header = RingHeader::parse(bytes)?;
        let master = match (source, header.kdf) {
            (KeySource::KeyFile(key_path), Kdf::KeyFile) => MasterKey::read_file(&key_path)?,
            (KeySource::Key(master), Kdf::KeyFile) => master,
            (KeySource::Passphrase(passphrase, _), Kdf::Argon2id) => {
                MasterKey::from_passphrase(&passphrase, &header.salt, header.cost)?
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
        let entries = header.entries(bytes, &master)?;
        let file = RingFile {
            place,
            generation: None,
            master,
            kdf: header.kdf,
            salt: header.salt,
            cost: header.cost,
            entries,
            cleared: BTreeSet::new(),
        };
        Ok((file, header.format_version != FORMAT_VERSION))
    }

    /// Persists the ring with `entries` in place of its own, and keeps them only if that
    /// succeeded (a failed write changes nothing).
    fn replace_entries(&mut self, entries: Vec<RingEntry>) -> Result<(), PersistError> {
        let before = std::mem::replace(&mut self.entries, entries);
        let persisted = self.persist();
        if persisted.is_err() {
            self.entries = before;
        }
        persisted
    }

    /// Writes the ring to its place; a shared ring only if nobody changed it since it was read.
    fn persist(&mut self) -> Result<(), PersistError> {
        if matches!(self.place, RingPlace::Memory) {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + SEAL_BYTES + 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.push(self.kdf as u8);
        bytes.extend_from_slice(&self.salt);
        for value in [self.cost.memory_kib, self.cost.iterations, self.cost.lanes, self.entries.len() as u32]
        {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        debug_assert_eq!(bytes.len(), HEADER_BYTES);
        for entry in &self.entries {
            bytes.extend_from_slice(&entry.key_id.to_le_bytes());
            bytes.push(entry.state as u8);
            bytes.extend_from_slice(&entry.created_at_ms.to_le_bytes());
            bytes.extend_from_slice(&entry.reserved.to_le_bytes());
            bytes.extend_from_slice(&entry.wrapped);
        }
        let nonce = random_nonce();
        let tag = seal(&self.master, &nonce, &bytes.clone(), &mut []);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&tag);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        match &self.place {
            RingPlace::Memory => Ok(()),
            RingPlace::File(path) => write_file_atomically(path, &bytes).map_err(PersistError::Io),
            RingPlace::Shared(shared) => match shared.store(self.generation, &bytes) {
                Ok(true) => {
                    self.generation = Some(self.generation.map_or(1, |generation| generation + 1));
                    Ok(())
                }
                Ok(false) => Err(PersistError::Conflict),
                Err(error) => Err(PersistError::Io(error)),
            },
        }
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

    /// The reservation of `key_id` as the file records it.
    fn reserved_in_file(dir: &Path, key_id: u32) -> u64 {
        let bytes = std::fs::read(dir.join("keyring")).unwrap();
        let entries = &bytes[HEADER_BYTES..bytes.len() - SEAL_BYTES - 4];
        let entry =
            entries.chunks_exact(ENTRY_BYTES).find(|entry| entry[0..4] == key_id.to_le_bytes()).unwrap();
        u64::from_le_bytes(entry[13..21].try_into().unwrap())
    }

    #[test]
    fn reopen_keeps_the_active_key_and_reserves_its_next_block() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path(), KeySource::KeyFile(key_file(dir.path()))).unwrap();
        let mut ciphertext = b"s3cr3t".to_vec();
        let sealed = ring.encrypt(&test_binding("id", 1), &mut ciphertext).unwrap();
        assert_eq!(reserved_in_file(dir.path(), 1), RESERVATION_BLOCK);
        drop(ring);

        for start in 2..=4u64 {
            let ring = Keyring::open(dir.path(), KeySource::KeyFile(key_file(dir.path()))).unwrap();
            assert_eq!((ring.len(), ring.active_key_id()), (1, 1), "no key is added per start");
            assert_eq!(
                reserved_in_file(dir.path(), 1),
                start * RESERVATION_BLOCK,
                "the count never goes back"
            );
            let mut buffer = ciphertext.clone();
            ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
            assert_eq!(buffer, b"s3cr3t");
        }
    }

    #[test]
    fn a_key_spent_before_a_restart_is_replaced_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = Some(dir.path().join("keyring"));
        let open = || Keyring::open_with_budget(path.clone(), KeySource::KeyFile(key_file(dir.path())), 3);
        let ring = open().unwrap();
        let mut ciphertext = b"old".to_vec();
        let sealed = ring.encrypt(&test_binding("id", 1), &mut ciphertext).unwrap();
        drop(ring);
        // The whole budget (3) was reserved by the first start: the second needs a new key.
        let ring = open().unwrap();
        assert_eq!((ring.len(), ring.active_key_id()), (2, 2));
        assert!(ring.has_retiring());
        let mut buffer = ciphertext.clone();
        ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
        assert_eq!(buffer, b"old");
    }

    #[test]
    fn rotation_retires_the_old_key_until_every_shard_reports_clear() {
        let dir = tempfile::tempdir().unwrap();
        let source = || KeySource::KeyFile(key_file(dir.path()));
        let ring = Keyring::open(dir.path(), source()).unwrap();
        let mut ciphertext = b"on key 1".to_vec();
        let sealed = ring.encrypt(&test_binding("id", 1), &mut ciphertext).unwrap();
        let epoch = ring.rotation_epoch();
        assert_eq!(ring.rotate().unwrap(), 2);
        assert_eq!(ring.status(), KeyringStatus { active_key_id: 2, data_keys: 2, retiring: 1 });
        assert_eq!(ring.rotation_epoch(), epoch + 1);
        // A report from before the rotation does not count; one shard of two is not enough.
        assert!(ring.report_clear(0, epoch, 2).unwrap().is_empty());
        assert!(ring.report_clear(0, epoch + 1, 2).unwrap().is_empty());
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.report_clear(1, epoch + 1, 2).unwrap(), vec![1]);
        assert_eq!(ring.status(), KeyringStatus { active_key_id: 2, data_keys: 1, retiring: 0 });
        // The running process still opens what it fetched before; the file no longer has the key.
        let mut buffer = ciphertext.clone();
        ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
        drop(ring);
        let ring = Keyring::open(dir.path(), source()).unwrap();
        assert_eq!((ring.len(), ring.active_key_id()), (1, 2));
        let mut buffer = ciphertext.clone();
        assert!(matches!(
            ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer),
            Err(EngineError::Decrypt { key_id: 1 })
        ));
        // Ids are never reused after a key is dropped.
        assert_eq!(ring.rotate().unwrap(), 3);
    }

    #[test]
    fn rekey_rewraps_every_key_and_the_old_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old_key = MasterKey::generate();
        let old = || KeySource::Key(MasterKey::from_bytes(*old_key.bytes()));
        let new_key = MasterKey::generate();
        let new = || KeySource::Key(MasterKey::from_bytes(*new_key.bytes()));
        let ring = Keyring::open(dir.path(), old()).unwrap();
        ring.rotate().unwrap();
        let mut ciphertext = b"kept".to_vec();
        let sealed = ring.encrypt(&test_binding("id", 1), &mut ciphertext).unwrap();
        assert_eq!(ring.rekey(new()).unwrap(), 2);
        // The running ring goes on: it seals with the same data keys, and persists under the new key.
        ring.rotate().unwrap();
        drop(ring);
        assert!(matches!(Keyring::open(dir.path(), old()), Err(EngineError::WrongMasterKey)));
        let ring = Keyring::open(dir.path(), new()).unwrap();
        assert_eq!(ring.len(), 3);
        let mut buffer = ciphertext.clone();
        ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
        assert_eq!(buffer, b"kept");

        // To a passphrase: the kind recorded changes with it.
        let passphrase =
            || KeySource::Passphrase(Zeroizing::new(b"a new passphrase".to_vec()), ARGON2_COST_MIN);
        ring.rekey(passphrase()).unwrap();
        drop(ring);
        let error = Keyring::open(dir.path(), new()).unwrap_err();
        assert!(error.to_string().contains("--passphrase-env"), "{error}");
        let ring = Keyring::open(dir.path(), passphrase()).unwrap();
        let mut buffer = ciphertext.clone();
        ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
        assert_eq!(buffer, b"kept");
        // A weak cost is refused and the ring stays as it was.
        let weak = KeySource::Passphrase(
            Zeroizing::new(b"x".to_vec()),
            Argon2Cost { memory_kib: 8, iterations: 1, lanes: 1 },
        );
        assert!(ring.rekey(weak).is_err());
        drop(ring);
        Keyring::open(dir.path(), passphrase()).unwrap();
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
        bytes[HEADER_BYTES + 30] ^= 0xFF;
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

        // A lowered reservation (so that a key could seal past its budget): the file tag fails.
        std::fs::write(&path, &original).unwrap();
        tamper(&path, |bytes| {
            bytes[HEADER_BYTES + 13..HEADER_BYTES + 21].copy_from_slice(&0u64.to_le_bytes())
        });
        assert!(matches!(Keyring::open(dir.path(), passphrase()), Err(EngineError::WrongMasterKey)));

        // No keys at all: refused.
        std::fs::write(&path, &original).unwrap();
        tamper(&path, |bytes| {
            let seal = bytes[bytes.len() - SEAL_BYTES..].to_vec();
            bytes.truncate(HEADER_BYTES);
            bytes.extend_from_slice(&seal);
            bytes[41..45].copy_from_slice(&0u32.to_le_bytes());
        });
        let error = Keyring::open(dir.path(), passphrase()).unwrap_err().to_string();
        assert!(error.contains("holds no data key"), "{error}");

        std::fs::write(&path, &original).unwrap();
        assert_eq!(Keyring::open(dir.path(), passphrase()).unwrap().len(), 1, "the real ring still opens");
    }

    /// Writes a ring as formats 1 and 2 did (72-byte entries; format 2 with a header tag) with
    /// one data key, and returns a secret sealed with that key.
    fn write_old_ring(path: &Path, format_version: u32, master: &MasterKey) -> (Sealed, Vec<u8>) {
        let master = master_cipher(master);
        let key = [9u8; KEY_BYTES];
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&format_version.to_le_bytes());
        bytes.push(Kdf::KeyFile as u8);
        bytes.extend_from_slice(&[5u8; SALT_BYTES]);
        for value in [0u32, 0, 0, 1] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        if format_version == FORMAT_VERSION_HEADER_TAG {
            let nonce = random_nonce();
            let tag = seal(&master, &nonce, &bytes.clone(), &mut []);
            bytes.extend_from_slice(&nonce);
            bytes.extend_from_slice(&tag);
        }
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&1_000u64.to_le_bytes());
        bytes.extend_from_slice(&wrap_key(&master, 7, &key));
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(path, bytes).unwrap();
        let cipher = Cipher::new(&key);
        let nonce = random_nonce();
        let mut ciphertext = b"old".to_vec();
        let tag =
            test_binding("id", 1).with_associated_data(7, |aad| seal(&cipher, &nonce, aad, &mut ciphertext));
        (Sealed { key_id: 7, nonce, tag }, ciphertext)
    }

    #[test]
    fn format_1_and_2_rings_open_retire_their_keys_and_are_rewritten() {
        for format_version in [FORMAT_VERSION_UNTAGGED, FORMAT_VERSION_HEADER_TAG] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keyring");
            let master = MasterKey::from_bytes([4u8; KEY_BYTES]);
            let (sealed, ciphertext) = write_old_ring(&path, format_version, &master);
            let ring =
                Keyring::open(dir.path(), KeySource::Key(MasterKey::from_bytes([4u8; KEY_BYTES]))).unwrap();
            assert_eq!(ring.status(), KeyringStatus { active_key_id: 8, data_keys: 2, retiring: 1 });
            let mut buffer = ciphertext.clone();
            ring.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
            assert_eq!(buffer, b"old");
            let rewritten = std::fs::read(&path).unwrap();
            assert_eq!(u32::from_le_bytes(rewritten[8..12].try_into().unwrap()), FORMAT_VERSION);
            drop(ring);
            let ring = Keyring::open(dir.path(), KeySource::Key(master)).unwrap();
            assert_eq!(ring.status(), KeyringStatus { active_key_id: 8, data_keys: 2, retiring: 1 });
        }
    }

    #[test]
    fn spent_key_is_retired_and_old_ciphertexts_still_open() {
        let ring = Keyring::open_with_budget(None, KeySource::Key(MasterKey::generate()), 3).unwrap();
        let mut sealed = Vec::new();
        for version in 1..=7u64 {
            let mut buffer = version.to_le_bytes().to_vec();
            sealed.push((ring.encrypt(&test_binding("id", version), &mut buffer).unwrap(), buffer));
        }
        assert_eq!(ring.len(), 3, "7 encryptions with a budget of 3 use 3 keys (the older two retiring)");
        assert_eq!(ring.active_key_id(), 3);
        assert_eq!(sealed.iter().filter(|(s, _)| s.key_id == 1).count(), 3);
        for (version, (seal, mut buffer)) in (1..=7u64).zip(sealed) {
            ring.decrypt(&test_binding("id", version), &seal, &mut buffer).unwrap();
            assert_eq!(buffer, version.to_le_bytes());
        }
    }

    /// A shared store in memory, that can be made to lose the next race.
    #[derive(Default)]
    struct MemoryShared {
        stored: Mutex<Option<(i64, Vec<u8>)>>,
        conflicts_to_inject: AtomicUsize,
    }

    impl SharedRing for MemoryShared {
        fn load(&self) -> std::io::Result<Option<(i64, Vec<u8>)>> {
            Ok(self.stored.lock().unwrap().clone())
        }

        fn store(&self, generation: Option<i64>, bytes: &[u8]) -> std::io::Result<bool> {
            let mut stored = self.stored.lock().unwrap();
            if self.conflicts_to_inject.load(Ordering::Relaxed) > 0 {
                // Another server stores the same ring first: the generation moves on.
                self.conflicts_to_inject.fetch_sub(1, Ordering::Relaxed);
                if let Some((current, _)) = stored.as_mut() {
                    *current += 1;
                }
                return Ok(false);
            }
            if stored.as_ref().map(|(current, _)| *current) != generation {
                return Ok(false);
            }
            *stored = Some((generation.map_or(1, |generation| generation + 1), bytes.to_vec()));
            Ok(true)
        }
    }

    fn reserved_in(shared: &MemoryShared, master: &MasterKey, key_id: u32) -> u64 {
        let (_, bytes) = shared.load().unwrap().unwrap();
        let header = RingHeader::parse(&bytes).unwrap();
        let entries = header.entries(&bytes, &master_cipher(master)).unwrap();
        entries.iter().find(|entry| entry.key_id == key_id).unwrap().reserved
    }

    #[test]
    fn servers_sharing_a_ring_use_the_same_keys_and_disjoint_reservations() {
        let master = MasterKey::generate();
        let shared = std::sync::Arc::new(MemoryShared::default());
        let source = || KeySource::Key(MasterKey::from_bytes(*master.bytes()));
        let first = Keyring::open_shared(shared.clone(), source()).unwrap();
        assert_eq!(reserved_in(&shared, &master, 1), RESERVATION_BLOCK);
        let second = Keyring::open_shared(shared.clone(), source()).unwrap();
        assert_eq!(second.active_key_id(), first.active_key_id(), "one active key for both");
        assert_eq!(reserved_in(&shared, &master, 1), 2 * RESERVATION_BLOCK, "the second took the next block");
        let mut buffer = b"sealed by the first".to_vec();
        let sealed = first.encrypt(&test_binding("id", 1), &mut buffer).unwrap();
        second.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
        assert_eq!(buffer, b"sealed by the first");
        // Rekeying would leave the other servers unable to read the ring: refused.
        let rekey = first.rekey(KeySource::Key(MasterKey::generate())).unwrap_err();
        assert!(rekey.to_string().contains("not available yet"), "{rekey}");
        assert_eq!(first.report_clear(0, first.rotation_epoch(), 1).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn a_rotation_of_a_shared_ring_reaches_every_server_without_colliding_key_ids() {
        let master = MasterKey::generate();
        let shared = std::sync::Arc::new(MemoryShared::default());
        let source = || KeySource::Key(MasterKey::from_bytes(*master.bytes()));
        let first = Keyring::open_shared(shared.clone(), source()).unwrap();
        let second = Keyring::open_shared(shared.clone(), source()).unwrap();
        let mut old = b"sealed before".to_vec();
        let sealed_before = second.encrypt(&test_binding("old", 1), &mut old).unwrap();
        assert_eq!(first.rotate().unwrap(), 2);
        // The second rotates without having read the first's rotation: it loses the race,
        // reads the ring again and rotates on top of it, to a key id of its own (and once
        // more after an injected lost race).
        shared.conflicts_to_inject.store(1, Ordering::Relaxed);
        assert_eq!(second.rotate().unwrap(), 3);
        assert_eq!(first.refresh_shared().unwrap(), 3, "the first adopts the second's active key");
        let mut new = b"sealed after".to_vec();
        let sealed_after = first.encrypt(&test_binding("new", 1), &mut new).unwrap();
        assert_eq!(sealed_after.key_id, 3);
        second.decrypt(&test_binding("new", 1), &sealed_after, &mut new).unwrap();
        assert_eq!(new, b"sealed after");
        first.decrypt(&test_binding("old", 1), &sealed_before, &mut old).unwrap();
        assert_eq!(old, b"sealed before", "retiring keys stay in a shared ring");
        assert_eq!(first.status().data_keys, 3);
    }

    #[test]
    fn a_key_added_by_another_server_is_read_when_first_met() {
        let master = MasterKey::generate();
        let shared = std::sync::Arc::new(MemoryShared::default());
        let source = || KeySource::Key(MasterKey::from_bytes(*master.bytes()));
        let spender = Keyring::open_in(RingPlace::Shared(shared.clone()), source(), 3).unwrap();
        let reader = Keyring::open_in(RingPlace::Shared(shared.clone()), source(), 3).unwrap();
        // The spender uses key 1 up and adds key 2, which the reader has never seen.
        let mut sealed = Vec::new();
        for version in 1..=4u64 {
            let mut buffer = version.to_le_bytes().to_vec();
            sealed.push((spender.encrypt(&test_binding("id", version), &mut buffer).unwrap(), buffer));
        }
        assert!(sealed.iter().any(|(seal, _)| seal.key_id != 1), "a second key came into use");
        for (version, (seal, mut buffer)) in (1..=4u64).zip(sealed) {
            reader.decrypt(&test_binding("id", version), &seal, &mut buffer).unwrap();
            assert_eq!(buffer, version.to_le_bytes());
        }
        assert_eq!(reader.active_key_id(), spender.active_key_id(), "and adopted as active");
    }

    /// A store whose first read misses what another server stored meanwhile: as two servers
    /// starting together on an empty database see it.
    struct LateShared {
        inner: std::sync::Arc<MemoryShared>,
        reads_missed: AtomicUsize,
    }

    impl SharedRing for LateShared {
        fn load(&self) -> std::io::Result<Option<(i64, Vec<u8>)>> {
            if self.reads_missed.load(Ordering::Relaxed) > 0 {
                self.reads_missed.fetch_sub(1, Ordering::Relaxed);
                return Ok(None);
            }
            self.inner.load()
        }

        fn store(&self, generation: Option<i64>, bytes: &[u8]) -> std::io::Result<bool> {
            self.inner.store(generation, bytes)
        }
    }

    #[test]
    fn servers_creating_the_shared_ring_at_once_all_open_the_one_stored_first() {
        for source in [
            |master: &MasterKey| KeySource::Key(MasterKey::from_bytes(*master.bytes())),
            |master: &MasterKey| {
                let passphrase = Zeroizing::new(master.bytes().to_vec());
                KeySource::Passphrase(passphrase, ARGON2_COST_MIN)
            },
        ] {
            let master = MasterKey::generate();
            let shared = std::sync::Arc::new(MemoryShared::default());
            let first = Keyring::open_shared(shared.clone(), source(&master)).unwrap();
            // The second looked before the first stored its ring, and created one of its own.
            let late =
                std::sync::Arc::new(LateShared { inner: shared.clone(), reads_missed: AtomicUsize::new(1) });
            let second = Keyring::open_shared(late, source(&master)).unwrap();
            assert_eq!(second.active_key_id(), first.active_key_id(), "the first's ring, not its own");
            let mut buffer = b"sealed by the first".to_vec();
            let sealed = first.encrypt(&test_binding("id", 1), &mut buffer).unwrap();
            second.decrypt(&test_binding("id", 1), &sealed, &mut buffer).unwrap();
            assert_eq!(buffer, b"sealed by the first");
        }
    }

    #[test]
    fn a_lost_race_for_the_shared_ring_is_retried_from_what_won() {
        let master = MasterKey::generate();
        let shared = std::sync::Arc::new(MemoryShared::default());
        let source = || KeySource::Key(MasterKey::from_bytes(*master.bytes()));
        let first = Keyring::open_shared(shared.clone(), source()).unwrap();
        shared.conflicts_to_inject.store(2, Ordering::Relaxed);
        let second = Keyring::open_shared(shared.clone(), source()).unwrap();
        assert_eq!(second.active_key_id(), first.active_key_id());
        assert_eq!(reserved_in(&shared, &master, 1), 2 * RESERVATION_BLOCK);
    }
}
