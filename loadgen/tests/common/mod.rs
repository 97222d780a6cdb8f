//! Helpers shared by the loadgen's tests against real servers.

#![allow(dead_code)]

use std::process::Output;

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_credshard-loadgen");

/// A loadgen JSON report, parsed.
pub fn report(json: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap_or_else(|error| panic!("{error}: {json}"))
}

/// The number at `path` (field names joined by dots, e.g. `per_op.get.ops`) of a loadgen
/// JSON report.
pub fn number(json: &str, path: &str) -> f64 {
    let report = report(json);
    let value = path.split('.').fold(&report, |value, name| &value[name]);
    value.as_f64().unwrap_or_else(|| panic!("{path} is not a number in {json}"))
}

/// A loopback address nothing listens on, for as long as the guard lives: the guard holds
/// 127.0.0.1:P, so no other test can take port P (binding 0.0.0.0:P conflicts with it), and
/// the address returned is 127.0.0.2:P, where nothing listens. (Binding port 0 and dropping the
/// listener would free P for any concurrent test to take.)
pub fn unreachable_address() -> (std::net::TcpListener, std::net::SocketAddr) {
    let guard = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = guard.local_addr().unwrap().port();
    (guard, std::net::SocketAddr::from(([127, 0, 0, 2], port)))
}

/// Asserts the run failed with exit code 2 and a one-line message; returns the message.
pub fn assert_exit_2_one_line(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// A real credshard server in process: 2 shards on an ephemeral port, with its own data dir
/// (keep the directory alive as long as the server).
pub fn start_credshard() -> (credshard_engine::ServerHandle, tempfile::TempDir) {
    start_credshard_with(|_| {})
}

/// [`start_credshard`] with settings changed by `adjust` (tokens, TLS).
pub fn start_credshard_with(
    adjust: impl FnOnce(&mut credshard_engine::ServerConfig),
) -> (credshard_engine::ServerHandle, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = credshard_engine::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_owned(),
        shards: Some(2),
        ..credshard_engine::ServerConfig::default()
    };
    adjust(&mut config);
    let key = credshard_engine::crypto::KeySource::Key(credshard_engine::crypto::MasterKey::generate());
    (credshard_engine::Server::start(&config, key).unwrap(), data_dir)
}
