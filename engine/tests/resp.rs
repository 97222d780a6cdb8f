//! The RESP listener against real Redis clients: the `redis` crate for every supported command
//! and its errors (RESP2 and RESP3), tokens and ACL refusals, pipelines whose writes land on
//! every shard, bad RESP from a raw socket (an error and a close for that connection only),
//! and the Redis tools themselves (`redis-cli`, `redis-benchmark -t get,set`) where installed
//! (CI installs them; outside CI their absence skips those tests, saying so).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ids_on_every_shard, put, walk, TestServer};
use credshard_engine::auth::hash_token;
use credshard_engine::ServerConfig;
use credshard_protocol::{Client, PutRequest};
use redis::Value;

const ADMIN: &[u8] = b"cst_resp-admin-token-0123456789";
const READER: &[u8] = b"cst_resp-billing-reader-token";
const WRITER: &[u8] = b"cst_resp-billing-writer-token";

/// A server with the RESP listener on an ephemeral port.
fn resp_server(shards: usize, adjust: impl FnOnce(&mut ServerConfig)) -> (TestServer, SocketAddr) {
    let server = TestServer::start_with(shards, |config| {
        config.resp_listen = Some("127.0.0.1:0".parse().unwrap());
        adjust(config);
    });
    let resp = server.handle.resp_address().expect("the RESP listener is on");
    (server, resp)
}

/// A server with tokens: an admin, a reader of owner `billing`, a writer of owner `billing`.
fn guarded_server() -> (TestServer, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let table = |id: &str, token: &[u8], rest: &str| {
        format!("[[token]]\nid = \"{id}\"\nsha256 = \"{}\"\n{rest}\n\n", hex::encode(hash_token(token)))
    };
    let text = table("admin", ADMIN, "ops = [\"*\"]")
        + &table("billing-reader", READER, "ops = [\"read\"]\nowners = [\"billing\"]")
        + &table("billing-writer", WRITER, "ops = [\"write\", \"delete\", \"read\"]\nowners = [\"billing\"]");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, text).unwrap();
    let (server, resp) = resp_server(2, |config| config.tokens = Some(tokens));
    (server, resp, dir)
}

fn connect(address: SocketAddr, query: &str) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{address}/{query}")).unwrap();
    client.get_connection().unwrap()
}

fn query(connection: &mut redis::Connection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(connection)
}

/// The server error code of a command that must fail (`NOPERM`, `ERR`, …).
fn error_code(connection: &mut redis::Connection, args: &[&str]) -> String {
    match query(connection, args) {
        Ok(value) => panic!("{args:?} succeeded with {value:?}"),
        Err(error) => {
            error.code().unwrap_or_else(|| panic!("{args:?}: not a server error: {error}")).to_owned()
        }
    }
}

fn bulk(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
}

/// A map reply's entries by key (RESP3 maps and RESP2 flat arrays alike).
fn entries(value: &Value) -> Vec<(String, Value)> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs.clone(),
        Value::Array(flat) => flat.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect(),
        other => panic!("not a map: {other:?}"),
    };
    pairs
        .into_iter()
        .map(|(key, value)| match key {
            Value::BulkString(key) => (String::from_utf8(key).unwrap(), value),
            other => panic!("map key {other:?}"),
        })
        .collect()
}

fn field(value: &Value, name: &str) -> Value {
    entries(value)
        .into_iter()
        .find(|(key, _)| key == name)
        .unwrap_or_else(|| panic!("no {name} in {value:?}"))
        .1
}

#[test]
fn the_redis_crate_runs_every_supported_command() {
    let (server, resp) = resp_server(2, |_| {});
    let mut redis = connect(resp, "");
    assert_eq!(query(&mut redis, &["PING"]).unwrap(), Value::SimpleString("PONG".into()));
    assert_eq!(query(&mut redis, &["PING", "hi"]).unwrap(), bulk("hi"));
    assert_eq!(query(&mut redis, &["ECHO", "echo"]).unwrap(), bulk("echo"));

    // SET and GET, and what SET makes of owner and scope.
    assert_eq!(query(&mut redis, &["SET", "billing:prod:db", "hunter2"]).unwrap(), Value::Okay);
    assert_eq!(query(&mut redis, &["GET", "billing:prod:db"]).unwrap(), bulk("hunter2"));
    assert_eq!(query(&mut redis, &["GET", "absent"]).unwrap(), Value::Nil);
    let mut native = server.client();
    let meta = native.get_meta("billing:prod:db").unwrap().metadata;
    assert_eq!((meta.owner.as_str(), meta.scope.as_str(), meta.version), ("open", "billing:prod", 1));
    // A live credential keeps its owner, scope, kind and labels when SET replaces its secret.
    let labels = {
        let mut out = bytes::BytesMut::new();
        credshard_protocol::op::labels::encode_labels(&[("team", "payments")], &mut out);
        out
    };
    native
        .put(&PutRequest {
            labels: credshard_protocol::Labels::from_validated(&labels),
            ..put("native-made", b"first")
        })
        .unwrap();
    assert_eq!(query(&mut redis, &["SET", "native-made", "second"]).unwrap(), Value::Okay);
    let got = native.get("native-made").unwrap();
    assert_eq!(got.secret.expose(), b"second");
    assert_eq!((got.metadata.owner.as_str(), got.metadata.scope.as_str()), ("team-a", "prod"));
    assert_eq!(got.metadata.labels, [("team".to_owned(), "payments".to_owned())]);
    assert_eq!(got.metadata.version, 2);

    // NX, XX, expiry, TTL, PTTL, KEEPTTL.
    assert_eq!(query(&mut redis, &["SET", "nx", "a", "NX"]).unwrap(), Value::Okay);
    assert_eq!(query(&mut redis, &["SET", "nx", "b", "NX"]).unwrap(), Value::Nil);
    assert_eq!(query(&mut redis, &["SET", "xx", "a", "XX"]).unwrap(), Value::Nil);
    assert_eq!(query(&mut redis, &["SET", "nx", "c", "XX", "EX", "100"]).unwrap(), Value::Okay);
    assert_eq!(query(&mut redis, &["GET", "nx"]).unwrap(), bulk("c"));
    let Value::Int(ttl) = query(&mut redis, &["TTL", "nx"]).unwrap() else { panic!("TTL is an integer") };
    assert!((95..=100).contains(&ttl), "{ttl}");
    let Value::Int(pttl) = query(&mut redis, &["PTTL", "nx"]).unwrap() else { panic!("PTTL is an integer") };
    assert!((95_000..=100_000).contains(&pttl), "{pttl}");
    assert_eq!(query(&mut redis, &["SET", "nx", "d", "KEEPTTL"]).unwrap(), Value::Okay);
    let Value::Int(kept) = query(&mut redis, &["TTL", "nx"]).unwrap() else { panic!("TTL is an integer") };
    assert!((90..=100).contains(&kept), "KEEPTTL kept it: {kept}");
    assert_eq!(query(&mut redis, &["SET", "nx", "e"]).unwrap(), Value::Okay);
    assert_eq!(query(&mut redis, &["TTL", "nx"]).unwrap(), Value::Int(-1), "a plain SET clears the expiry");
    assert_eq!(query(&mut redis, &["TTL", "absent"]).unwrap(), Value::Int(-2));
    assert_eq!(query(&mut redis, &["SET", "short", "x", "PX", "1"]).unwrap(), Value::Okay);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(query(&mut redis, &["GET", "short"]).unwrap(), Value::Nil, "expired");
    for bad in
        [&["SET", "k", "v", "EX", "0"][..], &["SET", "k", "v", "EX", "x"], &["SET", "k", "v", "NX", "XX"]]
    {
        assert_eq!(error_code(&mut redis, bad), "ERR", "{bad:?}");
    }
    assert_eq!(error_code(&mut redis, &["SET", "k", "v", "GET"]), "ERR");

    // Several keys, on every shard: EXISTS, MGET, DEL.
    let ids = ids_on_every_shard(2, 2);
    for id in &ids {
        assert_eq!(query(&mut redis, &["SET", id, &format!("secret of {id}")]).unwrap(), Value::Okay);
    }
    let mut exists = vec!["EXISTS"];
    exists.extend(ids.iter().map(String::as_str));
    exists.extend(["absent", ids[0].as_str()]);
    assert_eq!(query(&mut redis, &exists).unwrap(), Value::Int(ids.len() as i64 + 1));
    let mut mget = vec!["MGET", ids[0].as_str(), "absent"];
    mget.extend(ids[1..].iter().map(String::as_str));
    let Value::Array(values) = query(&mut redis, &mget).unwrap() else { panic!("MGET is an array") };
    assert_eq!(values[0], bulk(&format!("secret of {}", ids[0])));
    assert_eq!(values[1], Value::Nil);
    assert_eq!(values.len(), ids.len() + 1);
    let mut del = vec!["DEL", "absent"];
    del.extend(ids.iter().map(String::as_str));
    assert_eq!(query(&mut redis, &del).unwrap(), Value::Int(ids.len() as i64));
    assert_eq!(query(&mut redis, &["EXISTS", &ids[0]]).unwrap(), Value::Int(0));

    // Connection and server commands clients probe.
    assert_eq!(query(&mut redis, &["SELECT", "0"]).unwrap(), Value::Okay);
    assert_eq!(error_code(&mut redis, &["SELECT", "1"]), "ERR");
    assert_eq!(query(&mut redis, &["CLIENT", "SETNAME", "tester"]).unwrap(), Value::Okay);
    assert_eq!(query(&mut redis, &["CLIENT", "GETNAME"]).unwrap(), bulk("tester"));
    let Value::Int(count) = query(&mut redis, &["COMMAND", "COUNT"]).unwrap() else { panic!("an integer") };
    let Value::Array(commands) = query(&mut redis, &["COMMAND"]).unwrap() else { panic!("an array") };
    assert_eq!(commands.len() as i64, count);
    let Value::Array(info) = query(&mut redis, &["COMMAND", "INFO", "get", "nosuch"]).unwrap() else {
        panic!()
    };
    assert_eq!(info[1], Value::Nil);
    let Value::Array(get_info) = &info[0] else { panic!("COMMAND INFO get: {info:?}") };
    assert_eq!((&get_info[0], &get_info[1]), (&bulk("get"), &Value::Int(2)));
    assert_eq!(
        entries(&query(&mut redis, &["CONFIG", "GET", "appendonly"]).unwrap()),
        [("appendonly".into(), bulk("yes"))]
    );
    let Value::BulkString(info) = query(&mut redis, &["INFO"]).unwrap() else {
        panic!("INFO is a bulk string")
    };
    assert!(String::from_utf8(info).unwrap().contains("\r\ncredentials:"));
    assert_eq!(error_code(&mut redis, &["FLUSHALL"]), "ERR");
    assert_eq!(error_code(&mut redis, &["GET"]), "ERR", "wrong arity");
    assert_eq!(error_code(&mut redis, &["GET", "a", "b"]), "ERR", "wrong arity");

    // CREDSHARD.* commands: the native lifecycle.
    let version = query(
        &mut redis,
        &["CREDSHARD.PUT", "api", "billing", "prod", "v1", "KIND", "api-key", "LABELS", "env=prod"],
    );
    assert_eq!(version.unwrap(), Value::Int(1));
    assert_eq!(query(&mut redis, &["CREDSHARD.ROTATE", "api", "v2", "GRACE", "60"]).unwrap(), Value::Int(2));
    assert_eq!(query(&mut redis, &["CREDSHARD.GET", "api"]).unwrap(), bulk("v2"));
    assert_eq!(query(&mut redis, &["CREDSHARD.GET", "api", "VERSION", "1"]).unwrap(), bulk("v1"), "in grace");
    let meta = query(&mut redis, &["CREDSHARD.META", "api"]).unwrap();
    assert_eq!(field(&meta, "kind"), bulk("api-key"));
    assert_eq!(field(&meta, "version"), Value::Int(2));
    assert_eq!(entries(&field(&meta, "labels")), [("env".into(), bulk("prod"))]);
    let Value::Array(versions) = field(&meta, "versions") else { panic!("versions is an array") };
    assert_eq!(field(&versions[1], "state"), bulk("previous-in-grace"));
    assert_eq!(
        error_code(&mut redis, &["CREDSHARD.PUT", "api", "billing", "prod", "v3", "IFVERSION", "1"]),
        "VERSION_CONFLICT"
    );
    let Value::Array(page) = query(&mut redis, &["CREDSHARD.LIST", "OWNER", "billing"]).unwrap() else {
        panic!()
    };
    assert_eq!(page[0], bulk(""), "one page: no cursor");
    let Value::Array(items) = &page[1] else { panic!("items") };
    assert_eq!(items.len(), 1);
    assert_eq!(field(&items[0], "id"), bulk("api"));
    assert_eq!(query(&mut redis, &["CREDSHARD.DELETE", "api", "IFVERSION", "2"]).unwrap(), Value::Int(2));
    assert_eq!(query(&mut redis, &["CREDSHARD.GET", "api"]).unwrap(), Value::Nil);
    let stats = query(&mut redis, &["CREDSHARD.STATS"]).unwrap();
    let Value::Int(requests) = field(&stats, "requests_total") else { panic!("an integer") };
    assert!(requests > 50, "{requests}");

    // RESP3: HELLO 3 (as the crate sends it) and maps.
    let mut resp3 = connect(resp, "?protocol=resp3");
    let meta = query(&mut resp3, &["CREDSHARD.META", "nx"]).unwrap();
    assert!(matches!(meta, Value::Map(_)), "{meta:?}");
    assert_eq!(query(&mut resp3, &["GET", "absent"]).unwrap(), Value::Nil);
    let hello = query(&mut resp3, &["HELLO"]).unwrap();
    assert_eq!(field(&hello, "proto"), Value::Int(3));
    assert_eq!(field(&hello, "server"), bulk("credshard"));
    assert_eq!(error_code(&mut resp3, &["HELLO", "4"]), "NOPROTO");

    // A secret written through RESP is no more in plaintext at rest than any other.
    assert_eq!(query(&mut redis, &["SET", "at-rest", "resp-plaintext-0xFEEDFACE"]).unwrap(), Value::Okay);
    drop(server.handle);
    for path in walk(server.data_dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(25).any(|window| window == b"resp-plaintext-0xFEEDFACE"),
            "{}",
            path.display()
        );
    }
}

#[test]
fn a_pipeline_is_answered_in_order_and_reads_see_the_writes_before_them() {
    let (server, resp) = resp_server(2, |_| {});
    let mut redis = connect(resp, "");
    let ids = ids_on_every_shard(2, 50);
    // SETs, each followed by GETs: every GET sees the SET before it.
    let mut pipe = redis::pipe();
    for (index, id) in ids.iter().enumerate() {
        pipe.cmd("SET").arg(id).arg(format!("value-{index}"));
        pipe.cmd("GET").arg(id);
        pipe.cmd("GET").arg(&ids[0]);
    }
    let values: Vec<Value> = pipe.query(&mut redis).unwrap();
    for (index, reply) in values.chunks(3).enumerate() {
        assert_eq!(reply[0], Value::Okay);
        assert_eq!(reply[1], bulk(&format!("value-{index}")), "a GET after its SET in one pipeline sees it");
        assert_eq!(reply[2], bulk("value-0"));
    }
    // SETs back to back are committed together, and the GETs after them see them all.
    let before = server.client().stats().unwrap().get("log_batches_committed").unwrap();
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("SET").arg(id).arg(format!("second {id}"));
    }
    for id in &ids {
        pipe.cmd("GET").arg(id);
    }
    let values: Vec<Value> = pipe.query(&mut redis).unwrap();
    assert!(values[..ids.len()].iter().all(|value| *value == Value::Okay));
    for (id, value) in ids.iter().zip(&values[ids.len()..]) {
        assert_eq!(*value, bulk(&format!("second {id}")));
    }
    let batches = server.client().stats().unwrap().get("log_batches_committed").unwrap() - before;
    assert!(batches < ids.len() as u64 / 2, "{} pipelined writes in {batches} group commits", ids.len());
    // A pipeline deeper than a connection may queue (its replies' memory is bounded): the
    // server stops reading, answers what it holds, and takes the rest; nothing is lost.
    let mut pipe = redis::pipe();
    for round in 0..30 {
        for id in &ids {
            pipe.cmd("SET").arg(id).arg(format!("deep {round} {id}"));
        }
    }
    let values: Vec<Value> = pipe.query(&mut redis).unwrap();
    assert_eq!(values.len(), 30 * ids.len());
    assert!(values.iter().all(|value| *value == Value::Okay));
    assert_eq!(query(&mut redis, &["GET", &ids[7]]).unwrap(), bulk(&format!("deep 29 {}", ids[7])));
}

#[test]
fn tokens_and_acls_hold_on_the_resp_listener() {
    let (server, resp, _dir) = guarded_server();
    let mut admin = Client::connect_with_token(server.address(), ADMIN).unwrap();
    admin.put(&PutRequest { owner: "billing", ..put("billing:db", b"billing-secret") }).unwrap();
    admin.put(&PutRequest { owner: "search", ..put("search:db", b"search-secret") }).unwrap();

    let mut anonymous = connect(resp, "");
    assert_eq!(error_code(&mut anonymous, &["GET", "billing:db"]), "NOAUTH");
    assert_eq!(error_code(&mut anonymous, &["COMMAND"]), "NOAUTH");
    assert_eq!(error_code(&mut anonymous, &["HELLO", "3"]), "NOAUTH");
    assert_eq!(error_code(&mut anonymous, &["AUTH", "wrong-token"]), "WRONGPASS");
    assert_eq!(query(&mut anonymous, &["AUTH", std::str::from_utf8(READER).unwrap()]).unwrap(), Value::Okay);
    assert_eq!(query(&mut anonymous, &["GET", "billing:db"]).unwrap(), bulk("billing-secret"));

    let url = |token: &[u8]| format!("redis://default:{}@{resp}/", std::str::from_utf8(token).unwrap());
    let mut reader = redis::Client::open(url(READER)).unwrap().get_connection().unwrap();
    assert_eq!(query(&mut reader, &["GET", "billing:db"]).unwrap(), bulk("billing-secret"));
    assert_eq!(error_code(&mut reader, &["GET", "search:db"]), "NOPERM", "another owner");
    assert_eq!(error_code(&mut reader, &["SET", "billing:db", "x"]), "NOPERM", "no write permission");
    assert_eq!(error_code(&mut reader, &["CREDSHARD.STATS"]), "NOPERM", "not an admin");
    assert_eq!(
        error_code(&mut reader, &["MGET", "billing:db", "search:db"]),
        "NOPERM",
        "as Redis: all or nothing"
    );
    assert_eq!(
        query(&mut reader, &["MGET", "billing:db", "billing:none"]).unwrap(),
        Value::Array(vec![bulk("billing-secret"), Value::Nil])
    );

    // A writer of owner billing: SET creates its credentials as owner billing.
    let mut writer =
        redis::Client::open(format!("{}?protocol=resp3", url(WRITER))).unwrap().get_connection().unwrap();
    assert_eq!(query(&mut writer, &["SET", "billing:new", "fresh"]).unwrap(), Value::Okay);
    assert_eq!(admin.get_meta("billing:new").unwrap().metadata.owner, "billing");
    assert_eq!(error_code(&mut writer, &["SET", "search:db", "overwrite"]), "NOPERM", "outside its owners");
    assert_eq!(error_code(&mut writer, &["DEL", "search:db"]), "NOPERM");
    assert_eq!(admin.get("search:db").unwrap().secret.expose(), b"search-secret");

    // Refusals are audited like the native protocol's, without secrets.
    drop(server.handle);
    let mut audit = String::new();
    for path in walk(&server.data_dir.path().join("audit")) {
        audit.push_str(&std::fs::read_to_string(path).unwrap());
    }
    assert!(audit.contains("\"search:db\"") && audit.contains("UNAUTHORIZED"), "{audit}");
    assert!(!audit.contains("billing-secret") && !audit.contains("overwrite") && !audit.contains("fresh"));
}

/// Sends `bytes` on a fresh connection and reads until the server closes it.
fn exchange(address: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(bytes).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn bad_resp_gets_an_error_and_a_close_and_disturbs_no_one_else() {
    let (_server, resp) = resp_server(2, |config| config.secret_bytes_max = 1024);
    let mut bystander = connect(resp, "");
    assert_eq!(query(&mut bystander, &["SET", "kept", "safe"]).unwrap(), Value::Okay);

    let cases: [(&[u8], &str); 5] = [
        (b"*1\r\n$-5\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n:12\r\n", "-ERR Protocol error: expected ':', got ':'"),
        (b"*2\r\n$3\r\nGET\r\n$1\r\nkXY", "-ERR Protocol error: a bulk string does not end with CRLF\r\n"),
        (b"*2\r\n$3\r\nSET\r\n$999999999\r\n", "-ERR Protocol error: command of more than"),
    ];
    for (bytes, expected) in cases {
        let reply = exchange(resp, bytes);
        let expected = expected.replace("expected ':'", "expected '$'");
        assert!(reply.starts_with(&expected), "{bytes:?}: {reply:?}");
    }
    // QUIT: answered, then closed; nothing after it runs.
    assert_eq!(exchange(resp, b"PING\r\nQUIT\r\nSET after quit\r\n"), "+PONG\r\n+OK\r\n");
    // Commands before the bad bytes are answered first; nothing after them is run.
    let reply = exchange(resp, b"PING\r\n*1\r\n$-5\r\nSET after bad\r\n");
    assert!(reply.starts_with("+PONG\r\n-ERR Protocol error"), "{reply:?}");
    // A value above the secret limit is an error for that command, not for the connection.
    let big = "x".repeat(2000);
    let reply =
        exchange(resp, format!("*3\r\n$3\r\nSET\r\n$2\r\nbg\r\n$2000\r\n{big}\r\nPING\r\n").as_bytes());
    assert!(reply.starts_with("-ERR ") && reply.ends_with("+PONG\r\n"), "{reply:?}");
    // A client that hangs up mid-command: nothing of it is applied.
    exchange(resp, b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$10\r\nabc");
    assert_eq!(query(&mut bystander, &["EXISTS", "half", "bg", "after"]).unwrap(), Value::Int(0));
    assert_eq!(query(&mut bystander, &["GET", "kept"]).unwrap(), bulk("safe"), "the bystander is unaffected");
}

#[test]
fn an_unauthenticated_connection_is_bounded_and_closed_after_refusals() {
    let (_server, resp, _dir) = guarded_server();
    // Before AUTH a command may be 4 KiB at most.
    let big = "x".repeat(8 * 1024);
    let reply = exchange(resp, format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{big}\r\n", big.len()).as_bytes());
    assert!(reply.starts_with("-ERR Protocol error: command of more than 4096 bytes"), "{reply:?}");
    // Refused commands without authenticating end the connection.
    let reply = exchange(resp, "GET k\r\n".repeat(40).as_bytes());
    assert_eq!(reply.matches("-NOAUTH Authentication required.").count(), 16, "{reply:?}");
    assert!(reply
        .ends_with("-NOAUTH too many refused commands without authenticating; closing the connection\r\n"));
}

/// The path of a Redis tool, or `None` (saying so) outside CI where it is not installed.
fn redis_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI installs {name} (redis-tools), but it is not on PATH");
        eprintln!("skipping: {name} is not installed (apt-get install redis-tools)");
    }
    found
}

/// Runs a tool to completion: its standard output and error.
fn run_tool(tool: &Path, args: &[&str]) -> (String, String) {
    let output = Command::new(tool).args(args).output().unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (text(output.stdout), text(output.stderr))
}

#[test]
fn redis_cli_reads_and_writes_credentials() {
    let Some(cli) = redis_tool("redis-cli") else { return };
    let (server, resp, _dir) = guarded_server();
    let port = resp.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str(), "--no-auth-warning"];
    let with = |token: &[u8], args: &[&str]| {
        let token = std::str::from_utf8(token).unwrap();
        let mut all: Vec<&str> = base.to_vec();
        all.extend(["-a", token]);
        all.extend(args);
        run_tool(&cli, &all).0
    };
    assert_eq!(with(WRITER, &["SET", "billing:cli", "from-redis-cli"]), "OK\n");
    assert_eq!(with(READER, &["GET", "billing:cli"]), "from-redis-cli\n");
    assert_eq!(with(READER, &["TTL", "billing:cli"]), "-1\n");
    assert_eq!(with(WRITER, &["SET", "billing:cli", "again", "NX"]), "\n", "nil");
    assert_eq!(
        with(READER, &["SET", "billing:cli", "x"]).trim_end(),
        "NOPERM this token may not use this op"
    );
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["-a", "nope", "GET", "billing:cli"]);
    let (out, err) = run_tool(&cli, &args);
    assert_eq!(out.trim_end(), "NOAUTH Authentication required.");
    assert!(err.contains("AUTH failed: WRONGPASS"), "{err}");
    // RESP3 (redis-cli -3): a map, printed as `key value` lines when not on a terminal.
    let meta = with(ADMIN, &["-3", "CREDSHARD.META", "billing:cli"]);
    assert!(meta.starts_with("id billing:cli\nowner billing\n") && meta.contains("\nversion 1\n"), "{meta}");
    assert_eq!(with(WRITER, &["DEL", "billing:cli", "billing:none"]), "1\n");
    // Every other supported command once, as redis-cli prints its reply off a terminal.
    let cases: &[(&[u8], &[&str], &str)] = &[
        (ADMIN, &["PING"], "PONG\n"),
        (ADMIN, &["ECHO", "hi"], "hi\n"),
        (ADMIN, &["SET", "billing:ttl", "v", "EX", "100"], "OK\n"),
        (ADMIN, &["EXISTS", "billing:ttl", "billing:none"], "1\n"),
        (ADMIN, &["MGET", "billing:ttl", "billing:none"], "v\n\n"),
        (ADMIN, &["PTTL", "billing:none"], "-2\n"),
        (ADMIN, &["SELECT", "0"], "OK\n"),
        (ADMIN, &["CLIENT", "SETNAME", "cli"], "OK\n"),
        (ADMIN, &["CLIENT", "GETNAME"], "\n"),
        (ADMIN, &["COMMAND", "COUNT"], "24\n"),
        (ADMIN, &["CONFIG", "GET", "appendfsync"], "appendfsync\nalways\n"),
        (ADMIN, &["HELLO", "2"], "server\ncredshard\n"),
        (ADMIN, &["CREDSHARD.PUT", "api", "billing", "prod", "k1"], "1\n"),
        (ADMIN, &["CREDSHARD.ROTATE", "api", "k2"], "2\n"),
        (ADMIN, &["CREDSHARD.GET", "api", "VERSION", "1"], "k1\n"),
        (ADMIN, &["CREDSHARD.LIST", "OWNER", "billing"], "\nid\napi\n"),
        (ADMIN, &["CREDSHARD.DELETE", "api"], "2\n"),
        (ADMIN, &["QUIT"], "OK\n"),
        (READER, &["CREDSHARD.STATS"], "NOPERM this token may not use this op\n"),
        (ADMIN, &["NOSUCH", "x"], "ERR unknown command 'NOSUCH' (COMMAND LIST names the supported ones)\n"),
    ];
    for (token, args, expected) in cases {
        let out = with(token, args);
        assert!(out.starts_with(expected), "{args:?}: {out:?}");
    }
    let stats = with(ADMIN, &["CREDSHARD.STATS"]);
    assert!(stats.starts_with("shards\n2\n"), "{stats}");
    let info = with(ADMIN, &["INFO"]);
    assert!(info.starts_with("# credshard\r\nshards:2"), "{info:?}");
    drop(server);
}

#[test]
fn redis_benchmark_runs_get_and_set_without_errors() {
    let Some(benchmark) = redis_tool("redis-benchmark") else { return };
    let (server, resp) = resp_server(2, |config| config.fsync = credshard_engine::config::FsyncMode::Never);
    let port = resp.port().to_string();
    for pipeline in ["1", "16"] {
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "get,set",
            "-n",
            "4000",
            "-c",
            "8",
            "-P",
            pipeline,
            "--csv",
        ];
        let (csv, err) = run_tool(&benchmark, &args);
        assert!(!err.contains("ERROR") && !err.contains("WARNING"), "{err}");
        let tests: Vec<&str> = csv.lines().skip(1).map(|line| line.split(',').next().unwrap()).collect();
        assert_eq!(tests, ["\"SET\"", "\"GET\""], "{csv}");
    }
    let stats = server.client().stats().unwrap();
    assert_eq!(stats.get("errors_total"), Some(0), "no command failed");
    assert!(stats.get("requests_total").unwrap() >= 16_000);
    assert_eq!(stats.get("writes_total"), Some(8000));
}
