//! The credshard engine: a thread-per-core credential server.
//!
//! - [`audit`]: the audit log (one batched JSON-lines file per executor) and its reader.
//! - [`auth`]: tokens, ACLs and sessions (who may do what).
//! - [`config`]: server settings with documented defaults (parsed by the CLI).
//! - [`crypto`]: AES-256-GCM sealing, the master key and the key ring of data keys.
//! - [`data`]: the data core: records, the shards' maps and indexes, the [`Store`] over
//!   them (the read path) and each shard's single writer (the write path).
//! - [`server`]: glommio executors, connections, request dispatch and cross-shard writes.
//! - [`metrics`]: per-executor counters reported by STATS.
//! - [`storage`]: files in the data dir: the write-ahead logs, snapshots and recovery.
//! - [`time`]: Unix-millisecond clock.
//! - [`wipe`]: growing buffers that may hold plaintext without leaving copies behind.
//! - [`error`]: [`EngineError`] and [`OpError`].

pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod data;
pub mod error;
pub mod files;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod time;
pub mod wipe;

pub use config::ServerConfig;
pub use data::Store;
pub use error::{EngineError, OpError};
pub use server::{Server, ServerHandle};
