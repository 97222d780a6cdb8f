//! The credshard engine: a thread-per-core credential server.
//!
//! - [`audit`]: the audit log (one batched JSON-lines file per executor) and its reader.
//! - [`auth`]: tokens, ACLs and sessions (who may do what).
//! - [`config`]: server settings with documented defaults (parsed by the CLI).
//! - [`crypto`]: AES-256-GCM sealing, the master key and the key ring of data keys.
//! - [`record`]: one credential version as a validated rkyv archive holding only ciphertext.
//! - [`index`]: per-shard secondary indexes (owner, scope) that serve LIST page by page.
//! - [`keyspace`]: the fixed hash that maps a credential id to its shard.
//! - [`shard`]: one shard's wait-free map and its single writer.
//! - [`store`]: all shards, the key ring and limits; the read path.
//! - [`server`]: glommio executors, connections, request dispatch and cross-shard writes.
//! - [`metrics`]: per-executor counters reported by STATS.
//! - [`storage`]: files in the data dir.
//! - [`time`]: Unix-millisecond clock.
//! - [`wipe`]: growing buffers that may hold plaintext without leaving copies behind.
//! - [`error`]: [`EngineError`] and [`OpError`].

pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod error;
pub mod files;
pub mod index;
pub mod keyspace;
pub mod metrics;
pub mod record;
pub mod server;
pub mod shard;
pub mod storage;
pub mod store;
pub mod time;
pub mod wipe;

pub use config::ServerConfig;
pub use error::{EngineError, OpError};
pub use server::{Server, ServerHandle};
pub use store::Store;
