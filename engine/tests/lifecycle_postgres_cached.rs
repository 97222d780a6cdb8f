//! The lifecycle tests of `lifecycle.rs`, the same bodies, against a server whose system of
//! record is a real PostgreSQL database (`--store`) and whose cache holds only a few
//! credentials (`--cache-capacity 4`): nearly every read and write misses, is read from the
//! database, and evicts another. Skipped, saying so, without a database outside CI.

mod common;

use common::postgres::TestDatabase;
use common::TestServer;

/// A server on a database of its own; the database outlives it.
struct OnDatabase {
    server: TestServer,
    _database: TestDatabase,
}

impl std::ops::Deref for OnDatabase {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

fn start_with(shards: usize, adjust: impl FnOnce(&mut credshard_engine::ServerConfig)) -> Option<OnDatabase> {
    let database = common::postgres::database("lifecycle_cached")?;
    let url = database.url();
    let server = TestServer::start_with(shards, move |config| {
        config.store = Some(url);
        config.cache_capacity = 4;
        adjust(config);
    });
    Some(OnDatabase { server, _database: database })
}

include!("cases/lifecycle.rs");
