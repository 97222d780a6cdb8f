//! Size limits a server enforces on requests. Every limit is named with its unit last.

use crate::frame::FRAME_BYTES_MAX_DEFAULT;

/// Limits checked while decoding a request; violations are `TOO_LARGE` errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header included (default 1 MiB). Larger frames close the connection.
    pub frame_bytes_max: usize,
    /// Longest credential id in UTF-8 bytes (default 256).
    pub id_bytes_max: usize,
    /// Longest owner, scope, label key or label value in UTF-8 bytes (default 256).
    pub name_bytes_max: usize,
    /// Largest secret (default 64 KiB).
    pub secret_bytes_max: usize,
    /// Largest encoded label map (default 4 KiB).
    pub labels_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            id_bytes_max: 256,
            name_bytes_max: 256,
            secret_bytes_max: 64 * 1024,
            labels_bytes_max: 4 * 1024,
        }
    }
}

impl Limits {
    /// Limits a client uses to decode what a server sends: generous, since the server is
    /// trusted to have enforced its own.
    pub fn client() -> Limits {
        Limits {
            frame_bytes_max: usize::MAX,
            id_bytes_max: usize::MAX,
            name_bytes_max: usize::MAX,
            secret_bytes_max: usize::MAX,
            labels_bytes_max: usize::MAX,
        }
    }
}
