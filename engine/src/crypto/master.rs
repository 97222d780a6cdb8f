//! The master key: 32 bytes that wrap the data keys. It comes from a key file (hex, made by
//! `credshard keygen`) or from a passphrase stretched with Argon2id. It never touches the data
//! keys' ciphertext on disk and is zeroed on drop.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::{Zeroize, Zeroizing};

use crate::crypto::nonce::random_bytes;
use crate::error::EngineError;

/// Bytes of the master key and of every data key (AES-256).
pub const KEY_BYTES: usize = 32;

/// Argon2id cost parameters. The default (256 MiB, 3 passes, 1 lane) is derived once per start;
/// its time on the reference machine is in docs/operations.md, "Passphrase cost".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Argon2Cost { memory_kib: 256 * 1024, iterations: 3, lanes: 1 }
    }
}

/// The 32-byte master key.
pub struct MasterKey(Zeroizing<[u8; KEY_BYTES]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("MasterKey(redacted)")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> MasterKey {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        random_bytes(key.as_mut());
        MasterKey(key)
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> MasterKey {
        MasterKey(Zeroizing::new(bytes))
    }

    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// Reads a key file: 64 hex digits, surrounding whitespace ignored.
    ///
    /// # Errors
    /// [`EngineError::KeyFile`] when the file cannot be read or does not hold 64 hex digits.
    pub fn read_file(path: &Path) -> Result<MasterKey, EngineError> {
        use std::os::unix::fs::PermissionsExt;
        let key_file_error = |reason: String| EngineError::KeyFile { path: path.to_owned(), reason };
        let mode =
            std::fs::metadata(path).map_err(|error| key_file_error(error.to_string()))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(key_file_error(format!(
                "readable or writable by other users (mode {:o}): `chmod 600` it; anyone who can read \
                 it can decrypt every secret",
                mode & 0o777
            )));
        }
        let mut text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|error| key_file_error(error.to_string()))?);
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        let decoded = hex::decode_to_slice(text.trim(), key.as_mut());
        text.zeroize();
        decoded.map_err(|_| key_file_error("expected 64 hex digits (a 256-bit key)".to_owned()))?;
        Ok(MasterKey(key))
    }

    /// Writes the key as a new file with mode 0600; refuses to overwrite an existing file.
    ///
    /// # Errors
    /// [`EngineError::KeyFile`] when the file exists or cannot be written.
    pub fn write_file(&self, path: &Path) -> Result<(), EngineError> {
        let key_file_error =
            |error: std::io::Error| EngineError::KeyFile { path: path.to_owned(), reason: error.to_string() };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(key_file_error)?;
        let mut text = Zeroizing::new(hex::encode(self.0.as_ref()));
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(key_file_error)?;
        file.sync_all().map_err(key_file_error)?;
        Ok(())
    }

    /// Stretches a passphrase with Argon2id.
    ///
    /// # Errors
    /// [`EngineError::Passphrase`] for invalid cost parameters.
    pub fn from_passphrase(
        passphrase: &[u8],
        salt: &[u8],
        cost: Argon2Cost,
    ) -> Result<MasterKey, EngineError> {
        let params = argon2::Params::new(cost.memory_kib, cost.iterations, cost.lanes, Some(KEY_BYTES))
            .map_err(|error| EngineError::Passphrase(error.to_string()))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        argon
            .hash_password_into(passphrase, salt, key.as_mut())
            .map_err(|error| EngineError::Passphrase(error.to_string()))?;
        Ok(MasterKey(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_file_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::generate();
        key.write_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(MasterKey::read_file(&path).unwrap().bytes(), key.bytes());
        assert!(key.write_file(&path).is_err(), "an existing key file is never overwritten");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let Err(refused) = MasterKey::read_file(&path) else {
            panic!("a key file others can read is refused")
        };
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(MasterKey::read_file(&path), Err(EngineError::KeyFile { .. })));
    }

    /// Times the default cost: `cargo test --release -p credshard-engine --lib -- --ignored
    /// default_argon2_cost_timing --nocapture` (docs/operations.md, "Passphrase cost").
    #[test]
    #[ignore = "a timing, run by hand in a release build"]
    fn default_argon2_cost_timing() {
        let mut timings_ms: Vec<f64> = (0..5)
            .map(|round| {
                let started = std::time::Instant::now();
                MasterKey::from_passphrase(b"a passphrase", &[round; 16], Argon2Cost::default()).unwrap();
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        timings_ms.sort_by(f64::total_cmp);
        println!(
            "Argon2id {:?}: median {:.0} ms, min {:.0} ms, max {:.0} ms over 5 derivations",
            Argon2Cost::default(),
            timings_ms[2],
            timings_ms[0],
            timings_ms[4]
        );
    }

    #[test]
    fn passphrase_derivation_is_deterministic_per_salt() {
        let cost = Argon2Cost { memory_kib: 64, iterations: 1, lanes: 1 };
        let one = MasterKey::from_passphrase(b"correct horse", b"salt-salt-salt-1", cost).unwrap();
        let again = MasterKey::from_passphrase(b"correct horse", b"salt-salt-salt-1", cost).unwrap();
        let other = MasterKey::from_passphrase(b"correct horse", b"salt-salt-salt-2", cost).unwrap();
        assert_eq!(one.bytes(), again.bytes());
        assert_ne!(one.bytes(), other.bytes());
    }
}
