//! A stored credential version: the rkyv archive of a [`Credential`] in an aligned, shared
//! buffer, validated once when it is loaded (one this server archives itself is valid by
//! construction) and then read in place (zero copy).
//!
//! A [`Record`] is a handle to an [`Archive`]: one reference-counted allocation, its count
//! beside its bytes, so a shard map entry reaches a version's bytes in one pointer hop (a GET
//! is bound by such cache misses), entries share versions by cloning handles, and a snapshot
//! collects handles instead of copies.
//!
//! The archive holds only ciphertext: the secret is sealed with the key ring before the
//! record is built, and decrypted only by [`Record::decrypt_into`], straight into the
//! response buffer. These same bytes are what the write-ahead log and PostgreSQL store.

use bytes::{BufMut, BytesMut};
use credshard_protocol::op::metadata::MetadataRef;
use credshard_protocol::{Labels, PutRequest};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::crypto::keyring::Sealed;
use crate::crypto::{Binding, Keyring, NONCE_BYTES, TAG_BYTES};
use crate::error::{EngineError, OpError};
use crate::storage::archive::prefetch_line;
use crate::storage::Archive;
use zeroize::Zeroizing;

/// One version of a credential as archived.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub struct Credential {
    pub id: String,
    pub owner: String,
    pub scope: String,
    pub kind: u8,
    pub version: u64,
    /// When the credential was created (Unix ms): its first write, or the first write after it
    /// had expired.
    pub created_at_ms: u64,
    /// When this version was written (Unix ms).
    pub updated_at_ms: u64,
    /// Absolute expiry (Unix ms); 0 for never.
    pub expires_at_ms: u64,
    pub key_id: u32,
    pub nonce: [u8; NONCE_BYTES],
    pub tag: [u8; TAG_BYTES],
    /// The secret, AES-256-GCM encrypted; its associated data is the [`Binding`] of this
    /// version (id, owner, scope, kind, version, expiry, grace) and the key id.
    pub ciphertext: Vec<u8>,
    /// Labels in their wire encoding (see `credshard_protocol::op::labels`).
    pub labels: Vec<u8>,
    /// Set by ROTATE: until when (Unix ms) the version this one replaced stays readable.
    /// 0 when the previous version was replaced by a plain PUT (or there was none).
    pub previous_grace_until_ms: u64,
}

/// A ciphertext buffer this large after sealing a big secret is dropped rather than kept.
const KEPT_CIPHERTEXT_BYTES: usize = 64 * 1024;

thread_local! {
    /// The buffer each seal encrypts in, reused: a buffer per seal, freed once the record was
    /// archived, left a hole of its size between records in the heap (54,000 holes of 272 bytes,
    /// 14 MB, after 1,000,000 PUTs of 256 B: `malloc_info`).
    static CIPHERTEXT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A version's fields, borrowed, archived as an [`ArchivedCredential`]: the same bytes a
/// [`Credential`] of the same fields archives to (its fields serialized in the same order),
/// without owned copies of its strings and buffers (four allocations fewer per write).
struct CredentialParts<'a> {
    id: &'a str,
    owner: &'a str,
    scope: &'a str,
    kind: u8,
    version: u64,
    created_at_ms: u64,
    updated_at_ms: u64,
    expires_at_ms: u64,
    key_id: u32,
    nonce: [u8; NONCE_BYTES],
    tag: [u8; TAG_BYTES],
    ciphertext: &'a [u8],
    labels: &'a [u8],
    previous_grace_until_ms: u64,
}

/// Where [`CredentialParts`]' out-of-line fields were written.
struct CredentialPartsResolver {
    id: rkyv::string::StringResolver,
    owner: rkyv::string::StringResolver,
    scope: rkyv::string::StringResolver,
    ciphertext: rkyv::vec::VecResolver,
    labels: rkyv::vec::VecResolver,
}

impl rkyv::Archive for CredentialParts<'_> {
    type Archived = ArchivedCredential;
    type Resolver = CredentialPartsResolver;

    fn resolve(&self, resolver: CredentialPartsResolver, out: rkyv::Place<ArchivedCredential>) {
        use rkyv::string::ArchivedString;
        use rkyv::vec::ArchivedVec;
        rkyv::munge::munge!(let ArchivedCredential {
            id, owner, scope, kind, version, created_at_ms, updated_at_ms, expires_at_ms, key_id,
            nonce, tag, ciphertext, labels, previous_grace_until_ms,
        } = out);
        ArchivedString::resolve_from_str(self.id, resolver.id, id);
        ArchivedString::resolve_from_str(self.owner, resolver.owner, owner);
        ArchivedString::resolve_from_str(self.scope, resolver.scope, scope);
        self.kind.resolve((), kind);
        self.version.resolve((), version);
        self.created_at_ms.resolve((), created_at_ms);
        self.updated_at_ms.resolve((), updated_at_ms);
        self.expires_at_ms.resolve((), expires_at_ms);
        self.key_id.resolve((), key_id);
        self.nonce.resolve([(); NONCE_BYTES], nonce);
        self.tag.resolve([(); TAG_BYTES], tag);
        ArchivedVec::resolve_from_slice(self.ciphertext, resolver.ciphertext, ciphertext);
        ArchivedVec::resolve_from_slice(self.labels, resolver.labels, labels);
        self.previous_grace_until_ms.resolve((), previous_grace_until_ms);
    }
}

impl<S> rkyv::Serialize<S> for CredentialParts<'_>
where
    S: rancor::Fallible + rkyv::ser::Writer + rkyv::ser::Allocator + ?Sized,
    S::Error: rancor::Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<CredentialPartsResolver, S::Error> {
        use rkyv::string::ArchivedString;
        use rkyv::vec::ArchivedVec;
        // In the order `Credential`'s derived serializer writes them.
        Ok(CredentialPartsResolver {
            id: ArchivedString::serialize_from_str(self.id, serializer)?,
            owner: ArchivedString::serialize_from_str(self.owner, serializer)?,
            scope: ArchivedString::serialize_from_str(self.scope, serializer)?,
            ciphertext: ArchivedVec::serialize_from_slice(self.ciphertext, serializer)?,
            labels: ArchivedVec::serialize_from_slice(self.labels, serializer)?,
        })
    }
}

/// The key id of a destroyed version: no data key (the ring's ids start at 1), no ciphertext.
pub const DESTROYED_KEY_ID: u32 = 0;

/// The validated archive of one credential version. Cloning shares the bytes.
#[derive(Clone)]
pub struct Record {
    archive: Archive,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credential = self.credential();
        formatter
            .debug_struct("Record")
            .field("id", &credential.id.as_str())
            .field("version", &credential.version.to_native())
            .field("archive_bytes", &self.archive.bytes().len())
            .finish()
    }
}

/// What a new version says about the credential (borrowed from a request or a previous
/// version). `Debug` leaves the secret out.
#[derive(Clone, Copy)]
pub struct CredentialFields<'a> {
    pub id: &'a str,
    pub owner: &'a str,
    pub scope: &'a str,
    pub kind: u8,
    /// Encoded labels (validated).
    pub labels: &'a [u8],
    pub secret: &'a [u8],
}

impl std::fmt::Debug for CredentialFields<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CredentialFields")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("scope", &self.scope)
            .field("secret_bytes", &self.secret.len())
            .finish()
    }
}

impl<'a> From<&PutRequest<'a>> for CredentialFields<'a> {
    fn from(request: &PutRequest<'a>) -> CredentialFields<'a> {
        CredentialFields {
            id: request.id,
            owner: request.owner,
            scope: request.scope,
            kind: request.kind as u8,
            labels: request.labels.encoded(),
            secret: request.secret,
        }
    }
}

/// The version-specific fields of a new version.
#[derive(Clone, Copy, Debug)]
pub struct VersionFields {
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub expires_at_ms: u64,
    pub previous_grace_until_ms: u64,
}

impl Record {
    /// Encrypts the secret and archives a new version.
    ///
    /// # Errors
    /// [`OpError::Unavailable`] when the key ring cannot provide a key.
    pub fn seal(
        credential: CredentialFields<'_>,
        fields: VersionFields,
        keyring: &Keyring,
    ) -> Result<Record, OpError> {
        // The secret is copied once, into the buffer that becomes the ciphertext (this
        // thread's reused one: see `CIPHERTEXT`); wiped if sealing fails and it is dropped
        // still holding plaintext.
        let mut ciphertext = Zeroizing::new(CIPHERTEXT.take());
        ciphertext.extend_from_slice(credential.secret);
        let binding = Binding {
            id: credential.id,
            owner: credential.owner,
            scope: credential.scope,
            kind: credential.kind,
            version: fields.version,
            expires_at_ms: fields.expires_at_ms,
            previous_grace_until_ms: fields.previous_grace_until_ms,
        };
        let Sealed { key_id, nonce, tag } = keyring
            .encrypt(&binding, &mut ciphertext)
            .map_err(|_| OpError::Unavailable("the key ring could not provide a data key"))?;
        let parts = CredentialParts {
            id: credential.id,
            owner: credential.owner,
            scope: credential.scope,
            kind: credential.kind,
            version: fields.version,
            created_at_ms: fields.created_at_ms,
            updated_at_ms: fields.updated_at_ms,
            expires_at_ms: fields.expires_at_ms,
            key_id,
            nonce,
            tag,
            ciphertext: &ciphertext,
            labels: credential.labels,
            previous_grace_until_ms: fields.previous_grace_until_ms,
        };
        let record = Record::archived(&parts);
        // It holds ciphertext only now, which its next use overwrites.
        let mut buffer = std::mem::take(&mut *ciphertext);
        if buffer.capacity() <= KEPT_CIPHERTEXT_BYTES {
            buffer.clear();
            CIPHERTEXT.set(buffer);
        }
        let record = record?;
        debug_assert!(record.credential().version.to_native() >= 1, "versions start at 1");
        Ok(record)
    }

    /// The record of a version this server has just made: archived in a reused buffer (no
    /// buffer grows per write) and copied once into its shared one, without validating it
    /// again: rkyv's serializer wrote it from a `Credential`, so it is valid by construction
    /// (checked in debug builds). What is read back from a log or a database goes through
    /// [`Record::from_bytes`] instead.
    fn archived<T>(credential: &T) -> Result<Record, OpError>
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
    {
        /// A buffer this large after archiving a big secret is dropped rather than kept.
        const KEPT_SCRATCH_BYTES: usize = 64 * 1024;
        thread_local! {
            static SCRATCH: std::cell::RefCell<AlignedVec> = std::cell::RefCell::new(AlignedVec::new());
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buffer = std::mem::take(scratch);
            buffer.clear();
            let buffer = rkyv::api::high::to_bytes_in::<_, rancor::Error>(credential, buffer)
                .map_err(|_| OpError::Internal("archiving a credential failed"))?;
            let record = Record { archive: Archive::copy_of(&buffer) };
            debug_assert!(
                rkyv::access::<ArchivedCredential, rancor::Error>(record.archive_bytes()).is_ok(),
                "an archive rkyv just wrote validates"
            );
            if buffer.capacity() <= KEPT_SCRATCH_BYTES {
                *scratch = buffer;
            }
            Ok(record)
        })
    }

    /// Validates archived bytes (read back from a log or a database, in any alignment) once and
    /// keeps a copy in an aligned buffer.
    ///
    /// # Errors
    /// [`EngineError::Record`] when the bytes are not a valid archive or break an invariant.
    pub fn from_bytes(bytes: &[u8]) -> Result<Record, EngineError> {
        let record = Record { archive: Archive::copy_of(bytes) };
        let credential = rkyv::access::<ArchivedCredential, rancor::Error>(record.archive_bytes())
            .map_err(|error| EngineError::Record(error.to_string()))?;
        if credential.version.to_native() == 0 || credential.id.is_empty() {
            return Err(EngineError::Record("version 0 or empty id".to_owned()));
        }
        Ok(record)
    }

    /// Validates an archive built in an aligned buffer once and keeps a copy of it.
    ///
    /// # Errors
    /// [`EngineError::Record`] when the bytes are not a valid archive or break an invariant.
    pub fn from_archive(bytes: AlignedVec) -> Result<Record, EngineError> {
        Record::from_bytes(&bytes)
    }

    /// Asks the CPU to start loading every cache line of the archive now: a GET reads the root
    /// at its end, the strings at its start and the ciphertext between, and issued together
    /// those misses overlap instead of following one another.
    #[inline]
    pub fn prefetch(&self) {
        self.archive_bytes().chunks(64).for_each(|line| prefetch_line(line.as_ptr()));
    }

    /// Asks the CPU to start loading the archive's first line (where rkyv puts the id's bytes).
    #[inline]
    pub fn prefetch_start(&self) {
        prefetch_line(self.archive_bytes().as_ptr());
    }

    /// Asks the CPU to start loading the lines a comparison of the id reads: the root's (at
    /// the archive's end) and the first (where rkyv puts the id's bytes, unless they are
    /// inline in the root).
    #[inline]
    pub fn prefetch_id(&self) {
        let bytes = self.archive_bytes();
        let root = bytes.len().saturating_sub(std::mem::size_of::<ArchivedCredential>());
        for at in [0, root, bytes.len().saturating_sub(1)] {
            prefetch_line(bytes.as_ptr().wrapping_add(at));
        }
    }

    /// Asks the CPU to start loading the line a clone or drop of this handle writes (see
    /// [`Archive::prefetch_count`]).
    #[inline]
    pub fn prefetch_count(&self) {
        self.archive.prefetch_count();
    }

    /// Sets this handle's own mark (not its clones'; see [`Archive`]).
    #[inline]
    pub fn set_mark(&self) {
        self.archive.set_mark();
    }

    /// Clears this handle's own mark; returns whether it was set.
    pub fn take_mark(&self) -> bool {
        self.archive.take_mark()
    }

    /// This handle's own second flag (not its clones'; see [`Archive`]).
    #[inline]
    pub fn flag(&self) -> bool {
        self.archive.flag()
    }

    pub fn set_flag(&mut self, flag: bool) {
        self.archive.set_flag(flag);
    }

    /// True when both are handles to the same bytes.
    pub fn same_as(&self, other: &Record) -> bool {
        self.archive.same_as(&other.archive)
    }

    /// The archived credential, read in place.
    #[inline]
    pub fn credential(&self) -> &ArchivedCredential {
        // SAFETY: the bytes either passed `rkyv::access` validation in `from_bytes` or were
        // written by rkyv's serializer from a `Credential` in `archived` (the only two
        // constructors), and were copied into an 8-byte-aligned buffer: the alignment rkyv's
        // archives want, at this same address (the shared buffer never moves); they are never
        // mutated afterwards (no `&mut` to them is ever handed out).
        unsafe { rkyv::access_unchecked::<ArchivedCredential>(self.archive_bytes()) }
    }

    /// The archive's bytes (what a log or database stores verbatim).
    #[inline]
    pub fn archive_bytes(&self) -> &[u8] {
        self.archive.bytes()
    }

    /// The archive itself, to share with storage.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    pub fn version(&self) -> u64 {
        self.credential().version.to_native()
    }

    /// The fields a ROTATE carries over from this version, with a new secret.
    pub fn fields_with_secret<'a>(&'a self, secret: &'a [u8]) -> CredentialFields<'a> {
        let credential = self.credential();
        CredentialFields {
            id: credential.id.as_str(),
            owner: credential.owner.as_str(),
            scope: credential.scope.as_str(),
            kind: credential.kind,
            labels: credential.labels.as_slice(),
            secret,
        }
    }

    /// True once the expiry has passed.
    #[inline]
    pub fn is_expired(&self, now_ms: u64) -> bool {
        let expires_at_ms = self.credential().expires_at_ms.to_native();
        expires_at_ms != 0 && now_ms >= expires_at_ms
    }

    /// Metadata borrowed from the archive.
    pub fn metadata(&self) -> MetadataRef<'_> {
        let credential = self.credential();
        MetadataRef {
            id: credential.id.as_str(),
            owner: credential.owner.as_str(),
            scope: credential.scope.as_str(),
            kind: credential.kind,
            version: credential.version.to_native(),
            created_at_ms: credential.created_at_ms.to_native(),
            updated_at_ms: credential.updated_at_ms.to_native(),
            expires_at_ms: credential.expires_at_ms.to_native(),
            key_id: credential.key_id.to_native(),
            labels: Labels::from_validated(credential.labels.as_slice()),
        }
    }

    /// The data key this version's secret is sealed with ([`DESTROYED_KEY_ID`] once destroyed).
    pub fn key_id(&self) -> u32 {
        self.credential().key_id.to_native()
    }

    /// True for a version whose ciphertext DESTROY erased.
    #[inline]
    pub fn is_destroyed(&self) -> bool {
        self.key_id() == DESTROYED_KEY_ID
    }

    /// The same version with its ciphertext erased for good (DESTROY): every metadata field
    /// stays, the ciphertext, nonce and tag are gone, and the key id is [`DESTROYED_KEY_ID`].
    ///
    /// # Errors
    /// [`OpError::Internal`] if archiving fails.
    pub fn destroyed(&self) -> Result<Record, OpError> {
        let credential = self.credential();
        let husk = CredentialParts {
            id: credential.id.as_str(),
            owner: credential.owner.as_str(),
            scope: credential.scope.as_str(),
            kind: credential.kind,
            version: credential.version.to_native(),
            created_at_ms: credential.created_at_ms.to_native(),
            updated_at_ms: credential.updated_at_ms.to_native(),
            expires_at_ms: credential.expires_at_ms.to_native(),
            key_id: DESTROYED_KEY_ID,
            nonce: [0; NONCE_BYTES],
            tag: [0; TAG_BYTES],
            ciphertext: &[],
            labels: credential.labels.as_slice(),
            previous_grace_until_ms: credential.previous_grace_until_ms.to_native(),
        };
        Record::archived(&husk)
    }

    /// The same version, its secret re-encrypted with the key ring's active key (a data-key
    /// rotation). Every other field, and so the binding, is unchanged. The plaintext exists
    /// only in a buffer wiped on drop.
    ///
    /// # Errors
    /// [`OpError::Internal`] when the stored ciphertext does not open; [`OpError::Unavailable`]
    /// when the ring cannot provide a key.
    pub fn rewrap(&self, keyring: &Keyring) -> Result<Record, OpError> {
        self.resealed(keyring, self.credential().previous_grace_until_ms.to_native())
    }

    /// The same version made current by PROMOTE: the version it replaces stays readable until
    /// `previous_grace_until_ms`. The grace deadline is bound to the ciphertext, so the secret
    /// is sealed again (with the key ring's active key); the plaintext exists only in a buffer
    /// wiped on drop.
    ///
    /// # Errors
    /// As [`Record::rewrap`].
    pub fn promoted(&self, keyring: &Keyring, previous_grace_until_ms: u64) -> Result<Record, OpError> {
        self.resealed(keyring, previous_grace_until_ms)
    }

    /// This version's secret sealed again with the active key, with `previous_grace_until_ms`.
    fn resealed(&self, keyring: &Keyring, previous_grace_until_ms: u64) -> Result<Record, OpError> {
        let credential = self.credential();
        let mut secret = Zeroizing::new(credential.ciphertext.to_vec());
        let sealed =
            Sealed { key_id: credential.key_id.to_native(), nonce: credential.nonce, tag: credential.tag };
        keyring
            .decrypt(&self.binding(), &sealed, &mut secret)
            .map_err(|_| OpError::Internal("stored ciphertext failed authentication"))?;
        let fields = VersionFields {
            version: credential.version.to_native(),
            created_at_ms: credential.created_at_ms.to_native(),
            updated_at_ms: credential.updated_at_ms.to_native(),
            expires_at_ms: credential.expires_at_ms.to_native(),
            previous_grace_until_ms,
        };
        Record::seal(self.fields_with_secret(&secret), fields, keyring)
    }

    /// What this version's ciphertext is bound to.
    fn binding(&self) -> Binding<'_> {
        let credential = self.credential();
        Binding {
            id: credential.id.as_str(),
            owner: credential.owner.as_str(),
            scope: credential.scope.as_str(),
            kind: credential.kind,
            version: credential.version.to_native(),
            expires_at_ms: credential.expires_at_ms.to_native(),
            previous_grace_until_ms: credential.previous_grace_until_ms.to_native(),
        }
    }

    /// Appends the secret as a `bytes32` to `out`, decrypting it in place there: the
    /// plaintext exists only in the response buffer, which the connection wipes after sending.
    ///
    /// # Errors
    /// [`OpError::Internal`] when the ciphertext does not authenticate; nothing is appended.
    pub fn decrypt_into(&self, keyring: &Keyring, out: &mut BytesMut) -> Result<(), OpError> {
        let credential = self.credential();
        let ciphertext = credential.ciphertext.as_slice();
        let start = out.len();
        out.put_u32_le(ciphertext.len() as u32);
        out.extend_from_slice(ciphertext);
        let sealed =
            Sealed { key_id: credential.key_id.to_native(), nonce: credential.nonce, tag: credential.tag };
        if keyring.decrypt(&self.binding(), &sealed, &mut out[start + 4..]).is_err() {
            out.truncate(start);
            return Err(OpError::Internal("stored ciphertext failed authentication"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use credshard_protocol::{Expiry, Kind, EMPTY_LABELS};

    pub(crate) fn put_request<'a>(id: &'a str, secret: &'a [u8]) -> PutRequest<'a> {
        PutRequest {
            id,
            owner: "team-a",
            scope: "prod",
            kind: Kind::Password,
            expected_version: None,
            expiry: Expiry::Never,
            labels: Labels::from_validated(EMPTY_LABELS),
            secret,
        }
    }

    fn fields(version: u64) -> VersionFields {
        VersionFields {
            version,
            created_at_ms: 10,
            updated_at_ms: 20,
            expires_at_ms: 0,
            previous_grace_until_ms: 0,
        }
    }

    #[test]
    fn borrowed_parts_archive_to_the_bytes_of_an_owned_credential() {
        let long = "x".repeat(300);
        for (id, owner, scope, ciphertext, labels) in [
            ("db", "o", "s", Vec::new(), vec![0, 0]),
            ("loadgen-123456", "team-a-owner", "production", vec![7; 256], vec![1, 2, 3]),
            (long.as_str(), "", long.as_str(), vec![9; 5000], Vec::new()),
        ] {
            let parts = CredentialParts {
                id,
                owner,
                scope,
                kind: 3,
                version: 7,
                created_at_ms: 11,
                updated_at_ms: 12,
                expires_at_ms: 13,
                key_id: 4,
                nonce: [5; NONCE_BYTES],
                tag: [6; TAG_BYTES],
                ciphertext: &ciphertext,
                labels: &labels,
                previous_grace_until_ms: 14,
            };
            let owned = Credential {
                id: id.to_owned(),
                owner: owner.to_owned(),
                scope: scope.to_owned(),
                kind: 3,
                version: 7,
                created_at_ms: 11,
                updated_at_ms: 12,
                expires_at_ms: 13,
                key_id: 4,
                nonce: [5; NONCE_BYTES],
                tag: [6; TAG_BYTES],
                ciphertext: ciphertext.clone(),
                labels: labels.clone(),
                previous_grace_until_ms: 14,
            };
            let borrowed = rkyv::to_bytes::<rancor::Error>(&parts).unwrap();
            assert_eq!(
                borrowed.as_slice(),
                rkyv::to_bytes::<rancor::Error>(&owned).unwrap().as_slice(),
                "{id}"
            );
            let record = Record::from_bytes(&borrowed).unwrap();
            assert_eq!((record.credential().scope.as_str(), record.version()), (scope, 7));
        }
    }

    #[test]
    fn archive_holds_ciphertext_only_and_decrypts_on_demand() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let secret = b"correct-horse-battery-staple";
        let record =
            Record::seal(CredentialFields::from(&put_request("db/main", secret)), fields(1), &keyring)
                .unwrap();
        let archive = record.archive_bytes();
        assert!(!archive.windows(secret.len()).any(|window| window == secret), "plaintext in the archive");

        let metadata = record.metadata();
        assert_eq!((metadata.id, metadata.owner, metadata.version), ("db/main", "team-a", 1));
        let mut out = BytesMut::new();
        record.decrypt_into(&keyring, &mut out).unwrap();
        assert_eq!(&out[4..], secret);
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()) as usize, secret.len());
    }

    #[test]
    fn records_reload_from_their_bytes_and_reject_garbage() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let record =
            Record::seal(CredentialFields::from(&put_request("x", b"s")), fields(7), &keyring).unwrap();
        let mut copy = AlignedVec::new();
        copy.extend_from_slice(record.archive_bytes());
        assert_eq!(Record::from_archive(copy).unwrap().version(), 7);

        let mut garbage = AlignedVec::new();
        garbage.extend_from_slice(&[0xFF; 64]);
        assert!(Record::from_archive(garbage).is_err());
    }

    #[test]
    fn tampered_ciphertext_is_an_error_not_garbage() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let other_keyring = Keyring::in_memory(MasterKey::generate());
        let record =
            Record::seal(CredentialFields::from(&put_request("x", b"secret")), fields(1), &keyring).unwrap();
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(record.decrypt_into(&other_keyring, &mut out).is_err());
        assert_eq!(&out[..], b"keep", "nothing is appended on failure");
    }

    #[test]
    fn metadata_edited_at_rest_makes_the_secret_fail_to_open() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let record =
            Record::seal(CredentialFields::from(&put_request("x", b"secret")), fields(1), &keyring).unwrap();
        let bytes = record.archive_bytes();
        let at = bytes.windows(6).position(|window| window == b"team-a").expect("owner in the archive");
        let mut edited = AlignedVec::new();
        edited.extend_from_slice(bytes);
        edited[at + 5] = b'b';
        let moved = Record::from_archive(edited).unwrap();
        assert_eq!(moved.metadata().owner, "team-b", "the edit is a valid archive");
        let mut out = BytesMut::new();
        assert!(moved.decrypt_into(&keyring, &mut out).is_err(), "but the secret no longer opens");
        record.decrypt_into(&keyring, &mut out).unwrap();
    }

    #[test]
    fn expiry() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let mut fields = fields(1);
        fields.expires_at_ms = 100;
        let record = Record::seal(CredentialFields::from(&put_request("x", b"s")), fields, &keyring).unwrap();
        assert!(!record.is_expired(99));
        assert!(record.is_expired(100));
    }

    #[test]
    fn a_destroyed_version_keeps_its_metadata_and_holds_no_ciphertext() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let secret = b"correct-horse-battery-staple";
        let fields = VersionFields { expires_at_ms: 99_000, previous_grace_until_ms: 5, ..fields(4) };
        let record =
            Record::seal(CredentialFields::from(&put_request("db/main", secret)), fields, &keyring).unwrap();
        let husk = record.destroyed().unwrap();
        assert!(husk.is_destroyed() && !record.is_destroyed());
        let ciphertext = record.credential().ciphertext.as_slice();
        assert!(!husk.archive_bytes().windows(ciphertext.len()).any(|window| window == ciphertext));
        assert!(husk.credential().ciphertext.is_empty());
        let (old, new) = (record.metadata(), husk.metadata());
        assert_eq!(
            (old.id, old.owner, old.version, old.expires_at_ms),
            (new.id, new.owner, new.version, new.expires_at_ms)
        );
        assert_eq!(husk.credential().previous_grace_until_ms, 5);
        assert_eq!(Record::from_bytes(husk.archive_bytes()).unwrap().key_id(), DESTROYED_KEY_ID);
        let mut out = BytesMut::new();
        assert!(husk.decrypt_into(&keyring, &mut out).is_err(), "nothing to open");
    }

    #[test]
    fn rewrap_moves_a_version_to_the_active_key_and_keeps_everything_else() {
        let keyring = Keyring::in_memory(MasterKey::generate());
        let fields = VersionFields { expires_at_ms: 99_000, previous_grace_until_ms: 5, ..fields(4) };
        let record =
            Record::seal(CredentialFields::from(&put_request("db/main", b"secret")), fields, &keyring)
                .unwrap();
        keyring.rotate().unwrap();
        let rewrapped = record.rewrap(&keyring).unwrap();
        assert_eq!((record.key_id(), rewrapped.key_id()), (1, 2));
        assert_ne!(record.credential().ciphertext.as_slice(), rewrapped.credential().ciphertext.as_slice());
        let (old, new) = (record.metadata(), rewrapped.metadata());
        let fields_of = |m: MetadataRef<'_>| {
            (
                m.id.to_owned(),
                m.owner.to_owned(),
                m.scope.to_owned(),
                m.kind,
                m.version,
                m.created_at_ms,
                m.updated_at_ms,
                m.expires_at_ms,
            )
        };
        assert_eq!(fields_of(old), fields_of(new));
        assert_eq!(rewrapped.credential().previous_grace_until_ms, 5);
        let mut out = BytesMut::new();
        rewrapped.decrypt_into(&keyring, &mut out).unwrap();
        assert_eq!(&out[4..], b"secret");
        // A record that does not open is not rewrapped.
        let stranger = Keyring::in_memory(MasterKey::generate());
        assert!(matches!(record.rewrap(&stranger), Err(OpError::Internal(_))));
    }
}
