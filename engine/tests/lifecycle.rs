//! Credential lifecycle over real TCP against a 2-shard server on the embedded store: kept
//! versions, rotation with a grace period, expiry and sweeping, BATCH_GET and LIST paging.
//! The same bodies run against PostgreSQL in `lifecycle_postgres.rs`.

mod common;

use common::TestServer;

fn start_with(shards: usize, adjust: impl FnOnce(&mut credshard_engine::ServerConfig)) -> Option<TestServer> {
    Some(TestServer::start_with(shards, adjust))
}

include!("cases/lifecycle.rs");
