//! Errors of the engine: [`EngineError`] for start-up, configuration and storage, and
//! [`OpError`] for the outcome of a client's operation (each maps to one status code).

use std::path::PathBuf;

use credshard_protocol::Status;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("passphrase key derivation failed: {0}")]
    Passphrase(String),
    #[error("{0}")]
    Keyring(String),
    #[error("wrong master key: the data dir's key ring does not unwrap with it")]
    WrongMasterKey,
    #[error("data key {key_id} failed to decrypt a record (unknown key or damaged ciphertext)")]
    Decrypt { key_id: u32 },
    #[error("stored record is invalid: {0}")]
    Record(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("server failed to start: {0}")]
    Start(String),
}

/// Why an operation on a credential failed. Messages are static: nothing is formatted on the
/// hot path, and no secret can leak into one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("credential not found")]
    NotFound,
    /// Deleted and recoverable with UNDELETE until `purge_at_ms` (answered `NOT_FOUND`).
    #[error("credential deleted")]
    Deleted { purge_at_ms: u64 },
    /// The version's ciphertext was erased by DESTROY (answered `NOT_FOUND`).
    #[error("version destroyed")]
    Destroyed,
    #[error("version not kept")]
    VersionNotFound,
    #[error("version conflict")]
    VersionConflict { current_version: u64 },
    /// PROMOTE's expected version is not the pending one (`pending_version` 0: none).
    #[error("pending version conflict")]
    PendingConflict { pending_version: u64 },
    /// A write without an expected version to a credential whose policy requires one
    /// (answered `VERSION_CONFLICT`; for PROMOTE `current_version` is the pending one).
    #[error("compare-and-set required")]
    CasRequired { current_version: u64 },
    /// PROMOTE of a credential with no pending version (answered `NOT_FOUND`).
    #[error("no pending version")]
    NoPending,
    #[error("credential expired")]
    Expired,
    #[error("version retired")]
    Retired,
    #[error("invalid list cursor")]
    InvalidCursor,
    /// A BATCH_GET item that would take the reply past its byte limit.
    #[error("batch reply full")]
    ReplyFull,
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
}

impl OpError {
    pub fn status(&self) -> Status {
        match self {
            OpError::NotFound
            | OpError::VersionNotFound
            | OpError::Deleted { .. }
            | OpError::Destroyed
            | OpError::NoPending => Status::NotFound,
            OpError::VersionConflict { .. }
            | OpError::PendingConflict { .. }
            | OpError::CasRequired { .. } => Status::VersionConflict,
            OpError::Expired => Status::Expired,
            OpError::Retired => Status::Retired,
            OpError::InvalidCursor => Status::Malformed,
            OpError::ReplyFull => Status::TooLarge,
            OpError::Unavailable(_) => Status::Unavailable,
            OpError::Internal(_) => Status::Internal,
            OpError::Unauthorized(_) => Status::Unauthorized,
        }
    }

    /// The `detail` field of the error frame.
    pub fn detail(&self) -> u64 {
        match self {
            OpError::VersionConflict { current_version } => *current_version,
            OpError::PendingConflict { pending_version } => *pending_version,
            OpError::CasRequired { current_version } => *current_version,
            OpError::Deleted { purge_at_ms } => *purge_at_ms,
            _ => 0,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            OpError::NotFound => "credential not found",
            OpError::Deleted { .. } => {
                "credential deleted: UNDELETE restores it until detail (Unix ms), when it is purged"
            }
            OpError::Destroyed => "version destroyed: its secret was erased, only its metadata is kept",
            OpError::VersionNotFound => "version not found or no longer kept",
            OpError::VersionConflict { .. } => {
                "version conflict: detail holds the current version (0: absent)"
            }
            OpError::PendingConflict { .. } => "version conflict: detail holds the pending version (0: none)",
            OpError::NoPending => "no pending version: STAGE writes one",
            OpError::CasRequired { .. } => {
                "this credential's policy requires compare-and-set: send the expected version (detail holds it)"
            }
            OpError::Expired => "credential expired",
            OpError::Retired => "version retired: its grace period has ended",
            OpError::InvalidCursor => "invalid list cursor: pass the next_cursor of the previous page",
            OpError::ReplyFull => {
                "the BATCH_GET reply reached its size limit before this id: ask for it again"
            }
            OpError::Unavailable(message) | OpError::Internal(message) | OpError::Unauthorized(message) => {
                message
            }
        }
    }
}

/// The outcome of a write (or of a key op answered like one): the version it created or
/// removed.
pub type WriteOutcome = Result<u64, OpError>;
