//! The lifecycle tests of `lifecycle.rs`, the same bodies, against a server whose system of
//! record is a real PostgreSQL database (`--store`); skipped, saying so, without one outside CI.

mod common;

use common::postgres::OnDatabase;

fn start_with(shards: usize, adjust: impl FnOnce(&mut credshard_engine::ServerConfig)) -> Option<OnDatabase> {
    common::postgres::start_on_database("lifecycle", shards, |config| {
        adjust(config);
    })
}

include!("cases/lifecycle.rs");
