//! Model-based test (after sled's `fuzz_model`): random sequences of PUT / CAS / ROTATE /
//! DELETE / UNDELETE / DESTROY / STAGE / PROMOTE / SET_POLICY / GET (by number and by stage) /
//! GET_META / LIST against a real 2-shard server over TCP, each outcome checked against a plain
//! in-memory model of versions, pending versions, grace periods, policies and owners. The same
//! body runs against PostgreSQL in `model_postgres.rs`.

mod common;

use std::sync::OnceLock;

use common::TestServer;

fn model_client() -> Option<Client> {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    Some(SERVER.get_or_init(|| TestServer::start(2)).client())
}

include!("cases/model.rs");
