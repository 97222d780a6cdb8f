//! The data core: what a credential is, where it lives in memory, and the one way it is
//! written. Arrows point one way: the server calls in here, and this module calls only
//! `storage` (through [`crate::storage::ShardStorage`]), `crypto`, `auth` and `error`.
//!
//! - [`feed`]: each shard's recent changes in commit order, for WATCH.
//! - [`record`]: one credential version as a validated rkyv archive holding only ciphertext.
//! - [`shard`]: one shard's wait-free map of [`Entry`]s and its LIST index.
//! - [`index`]: the per-shard secondary indexes (owner, scope) that serve LIST page by page.
//! - [`keyspace`]: the fixed hash that maps a credential id to its shard.
//! - [`store`]: all shards, the key ring, the limits and the lifecycle; the read path.
//! - [`writer`]: a shard's single writer and its [`ShardWriter::submit`], the entry point of
//!   every client write, behind which the shard's storage sits.
//! - `replay`: recovery's replay of logged entries into the maps (the storage side of
//!   recovery calls it through [`crate::storage::Shards`]).

#[cfg(test)]
mod crash_test;
pub mod feed;
pub mod ids;
pub mod index;
pub mod keyspace;
#[cfg(test)]
mod model_test;
pub mod record;
mod replay;
pub mod shard;
pub mod store;
pub mod writer;

pub use record::Record;
pub use shard::{Deletion, Entry, FetchedState, Shard, StoredPolicy};
pub use store::{Fetched, Lifecycle, ListPage, Store};
pub use writer::{Effect, Prepared, ShardWriter, Write};
