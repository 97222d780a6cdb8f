//! [`ClientError`]: everything a client call can fail with.

use crate::code::Status;
use crate::frame::FrameError;
use crate::wire::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with a failure status.
    #[error("{}: {message}", status.name())]
    Server { status: Status, detail: u64, message: String },
    #[error("server sent an invalid frame: {0}")]
    Frame(#[from] FrameError),
    #[error("server sent an invalid body: {0}")]
    Decode(#[from] DecodeError),
    #[error("server sent unknown status code 0x{0:02x}")]
    UnknownStatus(u8),
    #[error("server answered request {request_id}, which is not pending")]
    UnexpectedResponse { request_id: u32 },
    #[error("connection closed")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// The server's status, for server-side failures.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// For `NOT_FOUND` of a deleted credential: when it is purged (Unix ms), until when UNDELETE
    /// restores it; `None` for any other failure (an id that does not exist, a version not
    /// kept or destroyed).
    pub fn recoverable_until_ms(&self) -> Option<u64> {
        match self {
            ClientError::Server { status: Status::NotFound, detail, .. } if *detail != 0 => Some(*detail),
            _ => None,
        }
    }

    /// For `VERSION_CONFLICT`: the credential's current version (0 if it does not exist).
    pub fn current_version(&self) -> Option<u64> {
        match self {
            ClientError::Server { status: Status::VersionConflict, detail, .. } => Some(*detail),
            _ => None,
        }
    }
}
