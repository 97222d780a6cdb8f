//! The audit log: every request that touches a credential or fails authorization, as one JSON
//! line per event in one append-only file per executor, `<data-dir>/audit/shard-<i>.jsonl`.
//!
//! - [`AuditLog`] (`writer`): the executor's log. [`AuditLog::record`] appends the encoded line
//!   to an in-memory buffer (no syscall, no allocation beyond the buffer's growth); a
//!   background glommio task writes the buffer out in batches.
//! - `format`: the hand-written encoder (RFC 3339 time, JSON escapes) that keeps `record` fast.
//! - [`reader`]: reads, merges and filters the files of an audit dir; [`cli`]: `credshard audit`.
//!
//! A line holds the time (RFC 3339 UTC and Unix ms), the shard, the token id (never the
//! token), the peer address, the op, the credential id (or LIST's owner and scope filters),
//! the version when known, and the result:
//!
//! ```text
//! {"time":"2026-11-23T05:12:01.123Z","time_ms":1795410721123,"shard":0,"token":"billing-reader","peer":"127.0.0.1:50000","op":"GET","id":"db/main","version":3,"result":"OK"}
//! ```
//!
//! Fields come in that order (`owner` and `scope` after `id`) and absent ones are omitted.
//! [`AuditEvent`] has no field that could hold a secret.
//!
//! Durability: the buffer is written (one `write` through io_uring) at the latest
//! `flush_interval` after its first event, and `fdatasync`ed at most once per
//! `sync_interval` (and at least that often while anything written is unsynced). A process
//! crash therefore loses at most the events of the last flush interval (those still in
//! memory); a power loss or kernel crash, at most the last sync interval plus a flush
//! interval. Events are recorded as requests are answered, not before: a client may see its
//! reply before its event is on disk. A crash in the middle of a write can leave a torn last
//! line: the reader skips it, and [`AuditLog::open`] ends it with a newline before appending
//! (the torn line is kept, and later reported as unparsable, rather than destroyed).
//!
//! Failure: when a write or sync fails (disk full, I/O error), the error is logged (at most
//! once per 10 s), counted, the data stays buffered and the write is retried at the next
//! flush interval; nothing is dropped silently. While the file is written fine but more than
//! half of `backlog_bytes_max` waits (requests arrive faster than the flusher writes),
//! [`AuditLog::is_busy`] is true and connections wait before taking more requests: a busy log
//! slows requests down, it does not refuse them. Once more than `backlog_bytes_max` bytes are
//! unwritten, [`AuditLog::is_backlogged`] is true and the server refuses requests
//! (UNAVAILABLE: fail closed rather than serve unaudited). Past twice that, `record` drops
//! events, counting them ([`AuditLog::events_dropped`]) and logging an error, so that a dead
//! disk cannot exhaust memory.

mod calendar;
pub mod cli;
mod format;
pub mod reader;
mod writer;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use credshard_protocol::{Op, Status};

pub use format::rfc3339_ms;
pub use writer::AuditLog;

/// The audit dir's name inside the data dir.
pub const AUDIT_DIR_NAME: &str = "audit";

/// Where the audit files of a server with data dir `data_dir` are.
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(AUDIT_DIR_NAME)
}

/// One audited request. Borrowed strings: recording one copies them into the log's buffer.
#[derive(Clone, Copy, Debug)]
pub struct AuditEvent<'a> {
    /// When the request was answered, Unix milliseconds.
    pub time_ms: u64,
    /// The token's id; `"-"` before authentication, `"open"` when the server runs without
    /// tokens. Never the token itself.
    pub token: &'a str,
    pub peer: SocketAddr,
    pub op: Op,
    /// The credential's id; `None` for LIST, STATS and HELLO.
    pub id: Option<&'a str>,
    /// LIST's owner filter (`None` otherwise).
    pub owner: Option<&'a str>,
    /// LIST's scope filter (an exact scope; `None` otherwise).
    pub scope: Option<&'a str>,
    /// The version read or written, when known.
    pub version: Option<u64>,
    pub status: Status,
}

/// How an [`AuditLog`] writes. The defaults are those of [`AuditSettings::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    /// The buffer is written at least this often while it is not empty. Default 5 ms. Must
    /// not be zero.
    pub flush_interval: Duration,
    /// Written data is `fdatasync`ed at most (and, while some is unsynced, at least) this
    /// often; `None` never syncs (the page cache decides). Default 1 s.
    pub sync_interval: Option<Duration>,
    /// Unwritten bytes above which [`AuditLog::is_backlogged`] is true. Default 16 MiB.
    pub backlog_bytes_max: usize,
}

impl Default for AuditSettings {
    fn default() -> AuditSettings {
        AuditSettings {
            flush_interval: Duration::from_millis(5),
            sync_interval: Some(Duration::from_secs(1)),
            backlog_bytes_max: 16 << 20,
        }
    }
}
