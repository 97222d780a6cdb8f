//! The lifecycle tests of `lifecycle.rs`, the same bodies, against a server whose system of
//! record is a real PostgreSQL database (`--store`) and whose cache holds only a few
//! credentials (`--cache-capacity 4`): nearly every read and write misses, is read from the
//! database, and evicts another. Skipped, saying so, without a database outside CI.

mod common;

use common::postgres::OnDatabase;

fn start_with(shards: usize, adjust: impl FnOnce(&mut credshard_engine::ServerConfig)) -> Option<OnDatabase> {
    common::postgres::start_on_database("lifecycle_cached", shards, |config| {
        config.cache_capacity = 4;
        adjust(config);
    })
}

include!("cases/lifecycle.rs");
