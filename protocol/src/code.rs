//! Op, status and credential-kind codes: `#[repr(u8)]` enums that match the tables in
//! `docs/protocol.md` one to one.

/// What a request asks for: byte 4 of a request header.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Protocol version negotiation and authentication (carries the access token).
    Hello = 0x01,
    /// Liveness check; the body is echoed back.
    Ping = 0x02,
    /// Create or replace a credential; optional compare-and-set.
    Put = 0x10,
    /// Read a credential's secret and metadata (current or a given version).
    Get = 0x11,
    /// Read a credential's metadata only; never decrypts.
    GetMeta = 0x12,
    /// Take a credential out of service: recoverable for a window, or purged at once.
    Delete = 0x13,
    /// A new secret as a new version; the replaced one stays readable for a grace period.
    Rotate = 0x14,
    /// Many credentials in one frame, one result per id.
    BatchGet = 0x15,
    /// Ids by owner and/or scope, one page at a time.
    List = 0x16,
    /// Bring a deleted credential back within its recovery window.
    Undelete = 0x17,
    /// Erase one version's ciphertext for good, keeping its metadata.
    Destroy = 0x18,
    /// Write a new version as pending: stored, readable by stage or number, not current.
    Stage = 0x19,
    /// Make the pending version current; the replaced one stays readable for a grace period.
    Promote = 0x1A,
    /// Subscribe the connection to change events (a stream of frames).
    Watch = 0x1B,
    /// Replace a credential's policy (versions kept, compare-and-set, retirement, metadata).
    SetPolicy = 0x1C,
    /// Read a credential's policy.
    GetPolicy = 0x1D,
    /// Server counters.
    Stats = 0x20,
    /// A new data key for new writes; records on older keys are re-encrypted in the background.
    RotateKey = 0x21,
    /// Every data key rewrapped under a new master key.
    Rekey = 0x22,
}

impl Op {
    /// Every op, in code order.
    pub const ALL: [Op; 19] = [
        Op::Hello,
        Op::Ping,
        Op::Put,
        Op::Get,
        Op::GetMeta,
        Op::Delete,
        Op::Rotate,
        Op::BatchGet,
        Op::List,
        Op::Undelete,
        Op::Destroy,
        Op::Stage,
        Op::Promote,
        Op::Watch,
        Op::SetPolicy,
        Op::GetPolicy,
        Op::Stats,
        Op::RotateKey,
        Op::Rekey,
    ];

    /// The op for a wire byte, or `None` for an unknown code.
    pub fn from_u8(code: u8) -> Option<Op> {
        Some(match code {
            0x01 => Op::Hello,
            0x02 => Op::Ping,
            0x10 => Op::Put,
            0x11 => Op::Get,
            0x12 => Op::GetMeta,
            0x13 => Op::Delete,
            0x14 => Op::Rotate,
            0x15 => Op::BatchGet,
            0x16 => Op::List,
            0x17 => Op::Undelete,
            0x18 => Op::Destroy,
            0x19 => Op::Stage,
            0x1A => Op::Promote,
            0x1B => Op::Watch,
            0x1C => Op::SetPolicy,
            0x1D => Op::GetPolicy,
            0x20 => Op::Stats,
            0x21 => Op::RotateKey,
            0x22 => Op::Rekey,
            _ => return None,
        })
    }

    /// Upper-case name as written in docs/protocol.md.
    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "HELLO",
            Op::Ping => "PING",
            Op::Put => "PUT",
            Op::Get => "GET",
            Op::GetMeta => "GET_META",
            Op::Delete => "DELETE",
            Op::Rotate => "ROTATE",
            Op::BatchGet => "BATCH_GET",
            Op::List => "LIST",
            Op::Undelete => "UNDELETE",
            Op::Destroy => "DESTROY",
            Op::Stage => "STAGE",
            Op::Promote => "PROMOTE",
            Op::Watch => "WATCH",
            Op::SetPolicy => "SET_POLICY",
            Op::GetPolicy => "GET_POLICY",
            Op::Stats => "STATS",
            Op::RotateKey => "ROTATE_KEY",
            Op::Rekey => "REKEY",
        }
    }

    /// True for ops that change state (and so run on the owning shard's executor).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Op::Put
                | Op::Delete
                | Op::Rotate
                | Op::Undelete
                | Op::Destroy
                | Op::Stage
                | Op::Promote
                | Op::SetPolicy
        )
    }

    /// True for requests whose body carries a plaintext secret (PUT, ROTATE, STAGE), an access
    /// token (HELLO) or key material (REKEY).
    pub fn carries_secret(self) -> bool {
        matches!(self, Op::Put | Op::Rotate | Op::Stage | Op::Hello | Op::Rekey)
    }
}

/// The outcome of a request: byte 4 of a response header.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0x00,
    NotFound = 0x01,
    VersionConflict = 0x02,
    Expired = 0x03,
    Retired = 0x04,
    TooLarge = 0x05,
    Malformed = 0x06,
    UnknownOp = 0x07,
    Unauthorized = 0x08,
    Unavailable = 0x09,
    Internal = 0x0A,
    UnsupportedVersion = 0x0B,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::NotFound,
        Status::VersionConflict,
        Status::Expired,
        Status::Retired,
        Status::TooLarge,
        Status::Malformed,
        Status::UnknownOp,
        Status::Unauthorized,
        Status::Unavailable,
        Status::Internal,
        Status::UnsupportedVersion,
    ];

    /// The status for a wire byte, or `None` for an unknown code.
    pub fn from_u8(code: u8) -> Option<Status> {
        Status::ALL.get(code as usize).copied()
    }

    /// Upper-case name as written in docs/protocol.md.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NotFound => "NOT_FOUND",
            Status::VersionConflict => "VERSION_CONFLICT",
            Status::Expired => "EXPIRED",
            Status::Retired => "RETIRED",
            Status::TooLarge => "TOO_LARGE",
            Status::Malformed => "MALFORMED",
            Status::UnknownOp => "UNKNOWN_OP",
            Status::Unauthorized => "UNAUTHORIZED",
            Status::Unavailable => "UNAVAILABLE",
            Status::Internal => "INTERNAL",
            Status::UnsupportedVersion => "UNSUPPORTED_VERSION",
        }
    }
}

/// What kind of secret a credential holds. Informational: the server treats every secret as
/// opaque bytes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Kind {
    #[default]
    Generic = 0,
    ApiKey = 1,
    Password = 2,
    Token = 3,
    Certificate = 4,
}

impl Kind {
    /// The kind for a wire byte, or `None` for an unknown code.
    pub fn from_u8(code: u8) -> Option<Kind> {
        Some(match code {
            0 => Kind::Generic,
            1 => Kind::ApiKey,
            2 => Kind::Password,
            3 => Kind::Token,
            4 => Kind::Certificate,
            _ => return None,
        })
    }

    /// Lower-case, dash-separated name used by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Generic => "generic",
            Kind::ApiKey => "api-key",
            Kind::Password => "password",
            Kind::Token => "token",
            Kind::Certificate => "certificate",
        }
    }

    /// Parses a CLI name (see [`Kind::name`]).
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Generic, Kind::ApiKey, Kind::Password, Kind::Token, Kind::Certificate]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// A version's state as reported by GET_META.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionState {
    /// The version GET returns without a version number.
    Current = 0,
    /// Replaced by ROTATE, still readable until its grace period ends.
    PreviousInGrace = 1,
    /// Replaced by ROTATE and past its grace period: metadata only.
    Retired = 2,
    /// Replaced by a plain PUT; readable while kept.
    Superseded = 3,
    /// Its ciphertext was erased by DESTROY: metadata only, whatever it was before.
    Destroyed = 4,
    /// Written by STAGE and not promoted yet: readable by stage or number, never as current.
    Pending = 5,
}

impl VersionState {
    /// The state for a wire byte, or `None` for an unknown code.
    pub fn from_u8(code: u8) -> Option<VersionState> {
        Some(match code {
            0 => VersionState::Current,
            1 => VersionState::PreviousInGrace,
            2 => VersionState::Retired,
            3 => VersionState::Superseded,
            4 => VersionState::Destroyed,
            5 => VersionState::Pending,
            _ => return None,
        })
    }

    /// Lower-case name used by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            VersionState::Current => "current",
            VersionState::PreviousInGrace => "previous-in-grace",
            VersionState::Retired => "retired",
            VersionState::Superseded => "superseded",
            VersionState::Destroyed => "destroyed",
            VersionState::Pending => "pending",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_u8(op as u8), Some(op));
        }
        for (index, status) in Status::ALL.into_iter().enumerate() {
            assert_eq!(status as usize, index, "Status::ALL is indexed by code");
            assert_eq!(Status::from_u8(status as u8), Some(status));
        }
        assert_eq!(Op::from_u8(0xFF), None);
        let secret_bearing: Vec<Op> = Op::ALL.into_iter().filter(|op| op.carries_secret()).collect();
        assert_eq!(secret_bearing, vec![Op::Hello, Op::Put, Op::Rotate, Op::Stage, Op::Rekey]);
        assert_eq!(Status::from_u8(0xFF), None);
        for code in 0..=4u8 {
            let kind = Kind::from_u8(code).unwrap();
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
    }
}
