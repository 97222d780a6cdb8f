//! [`Secret`]: plaintext secret bytes that are wiped from memory when dropped and never
//! printed by `Debug`.

use zeroize::Zeroize;

/// Plaintext secret bytes. `Debug` prints only the length; the bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The plaintext. Keep the borrow short and do not copy it into logs or errors.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Secret({} bytes, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let secret = Secret::from(&b"hunter2"[..]);
        assert_eq!(format!("{secret:?}"), "Secret(7 bytes, redacted)");
        assert_eq!(secret.expose(), b"hunter2");
    }
}
