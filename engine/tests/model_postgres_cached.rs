//! The model-based test of `model.rs`, the same body, against a server on PostgreSQL whose
//! cache holds only a few credentials (`--cache-capacity 4`): nearly every operation misses,
//! reads its credential (with its deletion, pending version and policy) from the database and
//! evicts another, and LIST comes from the database. Skipped, saying so, without a database
//! outside CI.

mod common;

use std::sync::OnceLock;

use common::postgres::OnDatabase;

fn model_client() -> Option<Client> {
    static SERVER: OnceLock<Option<OnDatabase>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            common::postgres::start_on_database("model_cached", 2, |config| config.cache_capacity = 4)
        })
        .as_ref()
        .map(|server| server.client())
}

include!("cases/model.rs");
