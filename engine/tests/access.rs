//! Access control, TLS and the audit log, against a real server speaking the real protocol:
//! every op before HELLO, wrong tokens, tokens outside their ACL (owner, op, scope prefix),
//! TLS round trips (certificates made here with rcgen), audit entries for allowed and refused
//! requests without any secret in them, a SIGHUP reload under a live connection, and a
//! non-loopback listen refused without tokens.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::process::{ProcessDirs, ServeProcess, BINARY};
use common::{put, walk, TestServer};
use credshard_engine::auth::hash_token;
use credshard_engine::ServerConfig;
use credshard_protocol::op::batch_get::BatchGetRequest;
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::get::{GetMetaRequest, GetRequest};
use credshard_protocol::op::hello::{HelloRequest, PROTOCOL_VERSION};
use credshard_protocol::op::keys::RekeyRequest;
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{AsyncClient, Client, ClientError, ClientTls, PutRequest, Request, Status};

const ADMIN: &[u8] = b"cst_admin-token-0123456789";
const READER: &[u8] = b"cst_billing-reader-token";
const LISTER: &[u8] = b"cst_billing-lister-token";
const WRITER: &[u8] = b"cst_billing-writer-token";

fn table(id: &str, token: &[u8], rest: &str) -> String {
    format!("[[token]]\nid = \"{id}\"\nsha256 = \"{}\"\n{rest}\n\n", hex::encode(hash_token(token)))
}

fn tokens_file(dir: &Path) -> std::path::PathBuf {
    let text = table("admin", ADMIN, "ops = [\"*\"]")
        + &table("billing-reader", READER, "ops = [\"read\"]\nowners = [\"billing\"]")
        + &table("billing-lister", LISTER, "ops = [\"list\", \"read-meta\"]\nscopes = [\"prod/billing/\"]")
        + &table("billing-writer", WRITER, "ops = [\"write\"]\nowners = [\"billing\"]");
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn guarded_server(adjust: impl FnOnce(&mut ServerConfig)) -> (TestServer, tempfile::TempDir) {
    let config_dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(config_dir.path());
    let server = TestServer::start_with(2, |config| {
        config.tokens = Some(tokens);
        adjust(config);
    });
    (server, config_dir)
}

fn credential<'a>(id: &'a str, owner: &'a str, scope: &'a str, secret: &'a [u8]) -> PutRequest<'a> {
    PutRequest { owner, scope, ..put(id, secret) }
}

fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Status {
    result.unwrap_err().status().expect("a server-side error")
}

/// One raw request, answered: its status.
fn raw_status(client: &mut Client, request: &Request<'_>) -> Status {
    let request_id = client.send(request);
    client.flush().unwrap();
    let frame = client.receive().unwrap();
    assert_eq!(frame.request_id, request_id);
    Status::from_u8(frame.status).unwrap()
}

fn every_op_but_hello<'a>(
    put_request: &'a PutRequest<'a>,
    batch: &'a BatchGetRequest<'a>,
) -> Vec<Request<'a>> {
    vec![
        Request::Ping(b"hi"),
        Request::Put(*put_request),
        Request::Get(GetRequest::new("billing/db", 0)),
        Request::GetMeta(GetMetaRequest { id: "billing/db" }),
        Request::Delete(DeleteRequest::new("billing/db", None)),
        Request::Rotate(RotateRequest {
            id: "billing/db",
            expected_version: None,
            grace_period_seconds: None,
            secret: b"x",
        }),
        Request::BatchGet(*batch),
        Request::List(ListRequest { owner: "billing", scope: "", limit: 10, cursor: b"" }),
        Request::Stats,
        Request::RotateKey,
        Request::Rekey(RekeyRequest::Key(&[7; 32])),
    ]
}

#[test]
fn every_op_before_hello_is_unauthorized_and_the_connection_stays_usable() {
    let (server, _config) = guarded_server(|_| {});
    let put_request = credential("billing/db", "billing", "prod/billing/db", b"pw-before-hello");
    let mut ids = BytesMut::new();
    BatchGetRequest::encode(&["billing/db"], &mut ids);
    let batch = BatchGetRequest::from_encoded(&ids).unwrap();
    let mut client = Client::connect_raw(server.address()).unwrap();
    for request in every_op_but_hello(&put_request, &batch) {
        assert_eq!(raw_status(&mut client, &request), Status::Unauthorized, "{:?}", request.op());
    }
    assert_eq!(server.store().len(), 0, "nothing was written");
    // A malformed GET (a truncated body) is refused the same way before HELLO.
    let mut raw = BytesMut::new();
    let start = credshard_protocol::frame::begin(&mut raw, credshard_protocol::Op::Get as u8, 77);
    raw.extend_from_slice(&[5, 0, b'a']);
    credshard_protocol::frame::finish(&mut raw, start);
    std::io::Write::write_all(client.stream_mut(), &raw).unwrap();
    let frame = client.receive().unwrap();
    assert_eq!((frame.request_id, frame.status), (77, Status::Unauthorized as u8));
    client.hello(ADMIN).unwrap();
    assert_eq!(client.put(&put_request).unwrap(), 1);
    assert_eq!(client.get("billing/db").unwrap().secret.expose(), b"pw-before-hello");
}

#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    use std::io::Read;
    let (server, _config) = guarded_server(|config| config.auth_timeout_ms = 300);
    let mut idle = std::net::TcpStream::connect(server.address()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut authenticated = Client::connect_with_token(server.address(), READER).unwrap();
    let mut received = Vec::new();
    idle.read_to_end(&mut received).unwrap();
    let mut buffer = BytesMut::from(&received[..]);
    let frame =
        credshard_protocol::client::ResponseFrame::take(&mut buffer).unwrap().expect("an error frame");
    assert_eq!((frame.status, frame.request_id), (Status::Unauthorized as u8, 0));
    assert!(buffer.is_empty(), "then the connection closes");
    std::thread::sleep(Duration::from_millis(400));
    authenticated.ping(b"still here").unwrap();
    // Past the deadline, a connection that did authenticate may fail a HELLO and retry.
    assert_eq!(status_of(authenticated.hello(b"cst_wrong")), Status::Unauthorized);
    authenticated.hello(READER).unwrap();
    authenticated.ping(b"back").unwrap();
}

#[test]
fn a_wrong_token_is_refused_and_ends_an_earlier_authentication() {
    let (server, _config) = guarded_server(|_| {});
    for token in [&b""[..], b"cst_not-a-token", &ADMIN[..ADMIN.len() - 1]] {
        let error = Client::connect_with_token(server.address(), token).unwrap_err();
        assert_eq!(error.status(), Some(Status::Unauthorized), "{token:?}");
    }
    let mut client = Client::connect_with_token(server.address(), ADMIN).unwrap();
    client.ping(b"ok").unwrap();
    assert_eq!(status_of(client.hello(b"cst_wrong")), Status::Unauthorized);
    assert_eq!(status_of(client.ping(b"no")), Status::Unauthorized, "a failed HELLO signs out");
    // The protocol version is still checked first.
    let hello = Request::Hello(HelloRequest { protocol_version: PROTOCOL_VERSION + 1, token: ADMIN });
    assert_eq!(raw_status(&mut client, &hello), Status::UnsupportedVersion);
    let stats = Client::connect_with_token(server.address(), ADMIN).unwrap().stats().unwrap();
    let value = |name: &str| stats.get(name).unwrap();
    assert!(value("auth_failures") >= 4, "{stats:?}");
    assert!(value("unauthorized_total") >= 5, "{stats:?}");
}

#[test]
fn tokens_reach_only_their_owners_ops_and_scope_prefixes() {
    let (server, _config) = guarded_server(|_| {});
    let mut admin = Client::connect_with_token(server.address(), ADMIN).unwrap();
    admin.put(&credential("billing/db", "billing", "prod/billing/db", b"billing-pw")).unwrap();
    admin.put(&credential("search/db", "search", "prod/search/db", b"search-pw")).unwrap();

    // Read-only, owner billing.
    let mut reader = Client::connect_with_token(server.address(), READER).unwrap();
    assert_eq!(reader.get("billing/db").unwrap().secret.expose(), b"billing-pw");
    assert_eq!(reader.get_meta("billing/db").unwrap().metadata.owner, "billing", "read implies read-meta");
    assert_eq!(status_of(reader.get("search/db")), Status::Unauthorized, "another owner's credential");
    assert_eq!(status_of(reader.get_meta("search/db")), Status::Unauthorized);
    let write = credential("billing/new", "billing", "prod/billing/new", b"x");
    assert_eq!(status_of(reader.put(&write)), Status::Unauthorized, "a read-only token writes");
    assert_eq!(status_of(reader.delete("billing/db", None)), Status::Unauthorized);
    assert_eq!(status_of(reader.stats()), Status::Unauthorized, "stats is admin");
    let list = ListRequest { owner: "billing", scope: "", limit: 10, cursor: b"" };
    assert_eq!(status_of(reader.list(&list)), Status::Unauthorized, "no list permission");
    let items = reader.batch_get(&["billing/db", "search/db", "missing"]).unwrap();
    assert_eq!(items[0].as_ref().unwrap().secret.expose(), b"billing-pw");
    assert_eq!(items[1].as_ref().unwrap_err().status(), Some(Status::Unauthorized));
    assert_eq!(items[2].as_ref().unwrap_err().status(), Some(Status::NotFound));

    // List (and read-meta), scope prefix prod/billing/.
    let mut lister = Client::connect_with_token(server.address(), LISTER).unwrap();
    let inside = ListRequest { owner: "", scope: "prod/billing/db", limit: 10, cursor: b"" };
    let page = lister.list(&inside).unwrap();
    assert_eq!(page.items.iter().map(|item| item.id.as_str()).collect::<Vec<_>>(), ["billing/db"]);
    for (owner, scope) in [("", "prod/"), ("billing", ""), ("", "prod/search/db"), ("", "prod/billing")] {
        let outside = ListRequest { owner, scope, limit: 10, cursor: b"" };
        assert_eq!(status_of(lister.list(&outside)), Status::Unauthorized, "{owner:?} {scope:?}");
    }
    assert_eq!(status_of(lister.get("billing/db")), Status::Unauthorized, "read-meta is not read");
    lister.get_meta("billing/db").unwrap();

    // Write only, owner billing: cannot create for another owner, take over another owner's
    // id, or rotate.
    let mut writer = Client::connect_with_token(server.address(), WRITER).unwrap();
    assert_eq!(writer.put(&write).unwrap(), 1);
    let foreign = credential("search/other", "search", "prod/search/other", b"x");
    assert_eq!(status_of(writer.put(&foreign)), Status::Unauthorized);
    let takeover = credential("search/db", "billing", "prod/billing/stolen", b"mine now");
    assert_eq!(status_of(writer.put(&takeover)), Status::Unauthorized, "replacing another owner's id");
    let rotate =
        RotateRequest { id: "billing/db", expected_version: None, grace_period_seconds: None, secret: b"y" };
    assert_eq!(status_of(writer.rotate(&rotate)), Status::Unauthorized);
    assert_eq!(admin.get("search/db").unwrap().secret.expose(), b"search-pw", "untouched");
    assert_eq!(admin.get_meta("search/db").unwrap().metadata.owner, "search");
}

struct Certificate {
    dir: tempfile::TempDir,
}

impl Certificate {
    /// A self-signed certificate for localhost and 127.0.0.1, with its key, in a temp dir.
    fn new() -> Certificate {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
        Certificate { dir }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }
}

#[test]
fn tls_round_trips_with_both_clients_and_refuses_what_it_should() {
    let certificate = Certificate::new();
    let (server, _config) = guarded_server(|config| {
        config.tls_cert = Some(certificate.cert());
        config.tls_key = Some(certificate.key());
    });
    let tls = ClientTls::from_ca_file(&certificate.cert(), "localhost").unwrap();
    let mut client = Client::connect_tls_raw(server.address(), &tls).unwrap();
    client.hello(ADMIN).unwrap();
    let secret = vec![0xA5u8; 40_000]; // spans several TLS records
    assert_eq!(client.put(&credential("billing/tls", "billing", "prod/billing/tls", &secret)).unwrap(), 1);
    assert_eq!(client.get("billing/tls").unwrap().secret.expose(), &secret[..]);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = AsyncClient::connect_tls_raw(server.address(), &tls).await.unwrap();
        client.hello(READER).await.unwrap();
        let calls = (0..64).map(|_| client.get("billing/tls"));
        for reply in futures::future::join_all(calls).await {
            assert_eq!(reply.unwrap().secret.expose(), &secret[..]);
        }
    });

    // The name must match, the CA must be the right one, and plain TCP gets nowhere.
    let wrong_name = ClientTls::from_ca_file(&certificate.cert(), "credshard.example").unwrap();
    assert!(matches!(Client::connect_tls_raw(server.address(), &wrong_name), Err(ClientError::Tls(_))));
    let other = Certificate::new();
    let wrong_ca = ClientTls::from_ca_file(&other.cert(), "localhost").unwrap();
    assert!(matches!(Client::connect_tls_raw(server.address(), &wrong_ca), Err(ClientError::Tls(_))));
    let mut plain = Client::connect_raw(server.address()).unwrap();
    plain.stream_mut().set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert!(plain.hello(ADMIN).is_err(), "a plain client is not answered in plaintext");
    // The server is unaffected.
    assert_eq!(client.get("billing/tls").unwrap().secret.expose(), &secret[..]);
}

#[test]
fn a_tls_server_refuses_a_bad_key_at_start() {
    let certificate = Certificate::new();
    let other = Certificate::new();
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_owned(),
        shards: Some(1),
        tls_cert: Some(certificate.cert()),
        tls_key: Some(other.key()),
        ..ServerConfig::default()
    };
    let key = credshard_engine::crypto::KeySource::Key(credshard_engine::crypto::MasterKey::generate());
    let Err(error) = credshard_engine::Server::start(&config, key) else { panic!("started") };
    assert!(error.to_string().contains("does not match"), "{error}");
}

/// Every audit entry in the data dir, parsed.
fn audit_entries(data_dir: &Path) -> Vec<serde_json::Value> {
    let mut entries = Vec::new();
    for path in walk(&data_dir.join("audit")) {
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            entries.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
        }
    }
    entries
}

#[test]
fn the_audit_log_records_allowed_and_refused_requests_and_no_secret() {
    let secret = b"audit-me-not-0xC0FFEE-secret";
    let (server, _config) = guarded_server(|_| {});
    let mut admin = Client::connect_with_token(server.address(), ADMIN).unwrap();
    admin.put(&credential("billing/db", "billing", "prod/billing/db", secret)).unwrap();
    admin.put(&credential("search/db", "search", "prod/search/db", secret)).unwrap();
    let mut reader = Client::connect_with_token(server.address(), READER).unwrap();
    reader.get("billing/db").unwrap();
    reader.get("search/db").unwrap_err();
    reader.batch_get(&["billing/db", "search/db"]).unwrap();
    let mut anonymous = Client::connect_raw(server.address()).unwrap();
    let get = Request::Get(GetRequest::new("billing/db", 0));
    assert_eq!(raw_status(&mut anonymous, &get), Status::Unauthorized);
    // The audit log records the first refusal of each unauthenticated connection: the wrong
    // token comes on a connection of its own.
    Client::connect_raw(server.address()).unwrap().hello(b"cst_guess").unwrap_err();
    let lister = ListRequest { owner: "", scope: "prod/", limit: 5, cursor: b"" };
    Client::connect_with_token(server.address(), LISTER).unwrap().list(&lister).unwrap_err();
    admin.destroy("search/db", 1).unwrap();
    admin.delete("search/db", None).unwrap();
    admin.undelete("search/db").unwrap();
    reader.undelete("billing/db").unwrap_err();
    // STATS reports the audit counters (published by each executor every few milliseconds).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = admin.stats().unwrap();
        let value = |name: &str| stats.get(name).unwrap();
        if value("audit_events") >= 10 && value("audit_bytes_written") > 0 {
            assert_eq!((value("audit_events_dropped"), value("audit_write_errors")), (0, 0));
            break;
        }
        assert!(Instant::now() < deadline, "{stats:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let data_dir = server.data_dir.path().to_owned();
    let _keep = {
        let TestServer { handle, data_dir } = server;
        handle.join().unwrap(); // flushes the audit buffers
        data_dir
    };

    let entries = audit_entries(&data_dir);
    let find = |token: &str, op: &str, id: Option<&str>, result: &str| {
        entries.iter().any(|entry| {
            entry["token"] == token
                && entry["op"] == op
                && id.is_none_or(|id| entry["id"] == id)
                && entry["result"] == result
                && entry["peer"].as_str().is_some_and(|peer| peer.starts_with("127.0.0.1:"))
                && entry["time_ms"].as_u64().is_some()
        })
    };
    assert!(find("admin", "PUT", Some("billing/db"), "OK"), "{entries:#?}");
    assert!(entries.iter().any(|e| e["op"] == "PUT" && e["version"] == 1));
    assert!(find("billing-reader", "GET", Some("billing/db"), "OK"));
    assert!(find("billing-reader", "GET", Some("search/db"), "UNAUTHORIZED"));
    assert!(find("billing-reader", "BATCH_GET", Some("billing/db"), "OK"));
    assert!(find("billing-reader", "BATCH_GET", Some("search/db"), "UNAUTHORIZED"));
    assert!(find("-", "GET", Some("billing/db"), "UNAUTHORIZED"), "before HELLO");
    assert!(find("-", "HELLO", None, "UNAUTHORIZED"), "a wrong token");
    assert!(find("billing-lister", "LIST", None, "UNAUTHORIZED"));
    assert!(entries.iter().any(|e| e["op"] == "LIST" && e["scope"] == "prod/"));
    assert!(find("admin", "HELLO", None, "OK"));
    assert!(find("admin", "DESTROY", Some("search/db"), "OK"));
    assert!(find("admin", "DELETE", Some("search/db"), "OK"));
    assert!(find("admin", "UNDELETE", Some("search/db"), "OK"));
    assert!(find("billing-reader", "UNDELETE", Some("billing/db"), "UNAUTHORIZED"), "needs `delete`");

    let needle = &secret[..];
    for path in walk(&data_dir) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(needle.len()).any(|window| window == needle), "secret in {}", path.display());
        for token in [ADMIN, READER, LISTER, WRITER, b"cst_guess"] {
            assert!(!bytes.windows(token.len()).any(|w| w == token), "a token in {}", path.display());
        }
    }
}

#[test]
fn reload_reopens_the_audit_files_for_log_rotation() {
    let server = TestServer::start_with(2, |_| {});
    let audit_dir = server.data_dir.path().join("audit");
    let mut client = server.client();
    let lines = |path: &Path| std::fs::read_to_string(path).map_or(0, |text| text.lines().count());
    let total = |suffix: &str| -> usize {
        (0..2).map(|shard| lines(&audit_dir.join(format!("shard-{shard}.jsonl{suffix}")))).sum()
    };
    client.put(&put("before", b"x")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while total("") < 1 {
        assert!(Instant::now() < deadline, "the first event was never written");
        std::thread::sleep(Duration::from_millis(5));
    }
    for shard in 0..2 {
        let path = audit_dir.join(format!("shard-{shard}.jsonl"));
        std::fs::rename(&path, path.with_extension("jsonl.1")).unwrap();
    }
    server.handle.reload().unwrap();
    // Keep writing until both executors have reopened: events then land in new files.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut index = 0;
    while (0..2).any(|shard| !audit_dir.join(format!("shard-{shard}.jsonl")).exists()) {
        assert!(Instant::now() < deadline, "the audit files were not reopened");
        client.put(&put(&format!("after-{index}"), b"x")).unwrap();
        index += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    client.get("before").unwrap();
    let TestServer { handle, data_dir } = server;
    handle.join().unwrap();
    let rotated = std::fs::read_to_string(audit_dir.join("shard-0.jsonl.1")).unwrap()
        + &std::fs::read_to_string(audit_dir.join("shard-1.jsonl.1")).unwrap();
    let fresh = std::fs::read_to_string(audit_dir.join("shard-0.jsonl")).unwrap()
        + &std::fs::read_to_string(audit_dir.join("shard-1.jsonl")).unwrap();
    assert!(rotated.contains("\"before\"") && !fresh.contains("\"op\":\"PUT\",\"id\":\"before\""));
    assert!(fresh.contains("\"op\":\"GET\",\"id\":\"before\""), "{fresh}");
    // HELLO, PUT before, the PUTs after, GET: nothing lost or doubled.
    assert_eq!(rotated.lines().count() + fresh.lines().count(), index + 3, "{rotated}{fresh}");
    drop(data_dir);
}

#[test]
fn audit_off_writes_no_audit_files() {
    let server = TestServer::start_with(1, |config| config.audit = credshard_engine::config::Switch::Off);
    server.client().put(&put("a", b"b")).unwrap();
    assert!(!server.data_dir.path().join("audit").exists());
}

/// Runs the real binary until it exits; returns its status and stderr.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let output = std::process::Command::new(BINARY).args(args).output().unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_non_loopback_listen_without_tokens_is_refused_at_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().to_str().unwrap();
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let (status, stderr) =
            run_to_exit(&["serve", "--listen", listen, "--data-dir", data, "--shards", "1"]);
        assert!(!status.success(), "{listen}");
        assert!(stderr.contains("without --tokens"), "{listen}: {stderr}");
    }
    assert!(walk(data_dir.path()).is_empty(), "refused before touching the data dir");
}

#[test]
fn sighup_reloads_tokens_while_a_client_stays_connected() {
    let ProcessDirs { dir, key, data_dir } = ProcessDirs::new();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, table("app", READER, "ops = [\"read\"]")).unwrap();
    let stderr_path = dir.path().join("serve.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let server = ServeProcess::start(&data_dir, &key, &["--tokens", tokens.to_str().unwrap()], |command| {
        command.stderr(stderr);
    });

    let mut app = Client::connect_with_token(server.address.as_str(), READER).unwrap();
    let write = credential("app/db", "app", "prod/app", b"v1");
    assert_eq!(status_of(app.put(&write)), Status::Unauthorized);
    assert!(Client::connect_with_token(server.address.as_str(), ADMIN).is_err());

    // Grant write to the same token and add an admin token; signal a reload.
    let granted =
        table("app", READER, "ops = [\"read\", \"write\"]") + &table("admin", ADMIN, "ops = [\"*\"]");
    std::fs::write(&tokens, granted).unwrap();
    // SAFETY: kill(2) only sends a signal to a server process this test started; no memory is shared.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Client::connect_with_token(server.address.as_str(), ADMIN).is_err() {
        assert!(Instant::now() < deadline, "the new token never worked");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(app.put(&write).unwrap(), 1, "the same connection may now write");

    // An invalid file is refused and the tokens in force stay.
    std::fs::write(&tokens, "[[token]]\nid = 3\n").unwrap();
    // SAFETY: kill(2) only sends a signal to a server process this test started; no memory is shared.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    // Once the server says it refused the file (not merely after a while), the old tokens
    // must still be in force.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&stderr_path).unwrap().contains("tokens file NOT reloaded") {
        assert!(Instant::now() < deadline, "the invalid tokens file was never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(app.get("app/db").unwrap().secret.expose(), b"v1");

    // Removing the token revokes it on the live connection.
    std::fs::write(&tokens, table("admin", ADMIN, "ops = [\"*\"]")).unwrap();
    // SAFETY: kill(2) only sends a signal to a server process this test started; no memory is shared.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.get("app/db").is_ok() {
        assert!(Instant::now() < deadline, "the removed token kept working");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_of(app.get("app/db")), Status::Unauthorized);
}

/// Runs the real binary with `stdin`, the token (if any) in CREDSHARD_TOKEN.
fn cli(args: &[&str], token: Option<&str>, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut command = std::process::Command::new(BINARY);
    command
        .args(args)
        .env_remove("CREDSHARD_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(token) = token {
        command.env("CREDSHARD_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn cli_token_new_then_client_commands_and_audit_read_back() {
    let ProcessDirs { dir, key, data_dir } = ProcessDirs::new();
    let made =
        cli(&["token", "new", "--id", "deploy", "--ops", "read,write", "--owner", "deploy"], None, b"");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let text = String::from_utf8(made.stdout).unwrap();
    let token = text.lines().find_map(|line| line.strip_prefix("token: ")).unwrap().to_owned();
    assert!(token.starts_with("cst_") && token.len() == 4 + 64, "{token}");
    let table = &text[text.find("[[token]]").unwrap()..];
    assert!(!table.contains(&token), "only the hash goes into the file");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, table).unwrap();
    let bad = cli(&["token", "new", "--id", "x", "--ops", "fly"], None, b"");
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown op"));

    let mut server = ServeProcess::start(&data_dir, &key, &["--tokens", tokens.to_str().unwrap()], |_| {});
    let addr = server.address.clone();
    let secret = b"cli-audit-secret-7d1e";
    let put = ["put", "deploy/key", "--owner", "deploy", "--scope", "prod", "--addr", &addr];
    let refused = cli(&put, None, secret);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("UNAUTHORIZED"), "{refused:?}");
    let stored = cli(&put, Some(&token), secret);
    assert!(stored.status.success(), "{}", String::from_utf8_lossy(&stored.stderr));
    let read = cli(&["get", "deploy/key", "--addr", &addr], Some(&token), b"");
    assert_eq!(read.stdout, [&secret[..], b"\n"].concat());
    // Nothing the server wrote is readable by other users.
    for path in walk(&data_dir).into_iter().chain([data_dir.clone()]) {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
    }

    // Stop cleanly (SIGTERM flushes the audit buffers), then read the log back.
    // SAFETY: kill(2) only sends a signal to a server process this test started; no memory is shared.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGTERM) }, 0);
    assert!(server.child.wait().unwrap().success());
    let data = data_dir.to_str().unwrap();
    let all = cli(&["audit", "--data-dir", data, "--id", "deploy/key", "--json"], None, b"");
    assert!(all.status.success(), "{}", String::from_utf8_lossy(&all.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let ops: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|entry| {
            (
                entry["token"].as_str().unwrap(),
                entry["op"].as_str().unwrap(),
                entry["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ops, [("deploy", "PUT", "OK"), ("deploy", "GET", "OK")]);
    // The client without a token was refused at HELLO, before it could send the PUT.
    let refused_only =
        cli(&["audit", "--data-dir", data, "--result", "unauthorized", "--token", "-"], None, b"");
    let table = String::from_utf8(refused_only.stdout).unwrap();
    assert_eq!(table.lines().filter(|line| line.contains("HELLO")).count(), 1, "{table}");
    assert!(!table.contains("cli-audit-secret") && !table.contains(&token), "{table}");
}

#[test]
fn cli_over_tls_with_a_token() {
    let ProcessDirs { dir, key, data_dir } = ProcessDirs::new();
    let certificate = Certificate::new();
    let (tokens, cert, tls_key) = (tokens_file(dir.path()), certificate.cert(), certificate.key());
    let args = [
        "--tokens",
        tokens.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        tls_key.to_str().unwrap(),
    ];
    let server = ServeProcess::start(&data_dir, &key, &args, |_| {});
    let port = server.address.rsplit_once(':').unwrap().1;
    let addr = format!("credshards://localhost:{port}");
    let ca = cert.to_str().unwrap();
    let admin = std::str::from_utf8(ADMIN).unwrap();
    let put =
        ["put", "billing/cli", "--owner", "billing", "--scope", "prod", "--addr", &addr, "--tls-ca", ca];
    let stored = cli(&put, Some(admin), b"over-tls");
    assert!(stored.status.success(), "{}", String::from_utf8_lossy(&stored.stderr));
    let read = cli(&["get", "billing/cli", "--addr", &addr, "--tls-ca", ca], Some(admin), b"");
    assert_eq!(read.stdout, b"over-tls\n", "{}", String::from_utf8_lossy(&read.stderr));
    let no_ca = cli(&["get", "billing/cli", "--addr", &addr], Some(admin), b"");
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("--tls-ca"), "{no_ca:?}");
    let plain =
        cli(&["get", "billing/cli", "--addr", &format!("credshard://127.0.0.1:{port}")], Some(admin), b"");
    assert!(!plain.status.success(), "plaintext to a TLS server fails");
}

#[test]
fn the_key_ops_need_the_admin_permission() {
    let (server, _config) = guarded_server(|_| {});
    let mut writer = Client::connect_with_token(server.address(), WRITER).unwrap();
    for result in [writer.rotate_key().map(|_| ()), writer.rekey(&RekeyRequest::Key(&[3; 32])).map(|_| ())] {
        match result {
            Err(ClientError::Server { status: Status::Unauthorized, .. }) => {}
            other => panic!("a writer token may not rotate keys: {other:?}"),
        }
    }
    assert_eq!(server.store().keyring().active_key_id(), 1);
    let mut admin = Client::connect_with_token(server.address(), ADMIN).unwrap();
    assert_eq!(admin.rotate_key().unwrap().key_id, 2);
    assert_eq!(admin.rekey(&RekeyRequest::Key(&[3; 32])).unwrap().data_keys, 2);
}
