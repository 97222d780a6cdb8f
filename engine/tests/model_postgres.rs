//! The model-based test of `model.rs`, the same body, against a 2-shard server whose system of
//! record is a real PostgreSQL database (`--store`): every lifecycle rule holds there as it
//! does in the embedded store. Skipped, saying so, without a database outside CI.

mod common;

use std::sync::OnceLock;

use common::postgres::OnDatabase;

fn model_client() -> Option<Client> {
    static SERVER: OnceLock<Option<OnDatabase>> = OnceLock::new();
    SERVER
        .get_or_init(|| common::postgres::start_on_database("model", 2, |_| {}))
        .as_ref()
        .map(|server| server.client())
}

include!("cases/model.rs");
