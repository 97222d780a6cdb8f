//! Every op and every error over real TCP against a 2-shard server.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use common::{ids_on_every_shard, put, TestServer};
use credshard_protocol::client::ResponseFrame;
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::encode_error;
use credshard_protocol::{
    encode_labels, ClientError, Expiry, Kind, Labels, PutRequest, Status, VersionState,
};

fn status_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Status {
    result.expect_err("expected a server error").status().expect("a server status")
}

#[test]
fn hello_ping_stats() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let hello = client.hello(b"").unwrap();
    assert_eq!(hello.protocol_version, 1);
    assert_eq!(hello.shard_count, 2);
    assert!(hello.server.starts_with("credshard "));
    assert_eq!(&client.ping(b"payload").unwrap()[..], b"payload");
    let stats = client.stats().unwrap();
    assert_eq!(stats.get("shards"), Some(2));
    assert_eq!(stats.get("credentials"), Some(0));
    assert!(stats.get("requests_total").unwrap() >= 3);
}

#[test]
fn put_get_meta_delete_on_both_shards() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let mut label_bytes = BytesMut::new();
    encode_labels(&[("env", "prod"), ("team", "payments")], &mut label_bytes);
    for id in ids_on_every_shard(2, 3) {
        let secret = format!("secret of {id}");
        let mut request = put(&id, secret.as_bytes());
        request.kind = Kind::ApiKey;
        request.labels = Labels::from_validated(&label_bytes);
        assert_eq!(client.put(&request).unwrap(), 1);
        assert_eq!(client.put(&request).unwrap(), 2, "versions go up by one per write");

        let reply = client.get(&id).unwrap();
        assert_eq!(reply.secret.expose(), secret.as_bytes());
        let metadata = &reply.metadata;
        assert_eq!(
            (metadata.id.as_str(), metadata.owner.as_str(), metadata.scope.as_str()),
            (id.as_str(), "team-a", "prod")
        );
        assert_eq!((metadata.kind, metadata.version, metadata.expires_at_ms), (Kind::ApiKey, 2, None));
        assert!(metadata.created_at_ms <= metadata.updated_at_ms);
        assert_eq!(metadata.labels, vec![("env".into(), "prod".into()), ("team".into(), "payments".into())]);
        assert_eq!(client.get_version(&id, 2).unwrap().secret.expose(), secret.as_bytes());

        let meta = client.get_meta(&id).unwrap();
        assert_eq!(meta.metadata, reply.metadata);
        let states: Vec<_> = meta.versions.iter().map(|info| (info.version, info.state)).collect();
        assert_eq!(states, vec![(2, VersionState::Current), (1, VersionState::Superseded)]);

        assert_eq!(client.delete(&id, None).unwrap().version, 2);
        assert_eq!(status_of(client.get(&id)), Status::NotFound);
        assert_eq!(status_of(client.get_meta(&id)), Status::NotFound);
        assert_eq!(status_of(client.delete(&id, None)), Status::NotFound, "deleted already");
        let purge = DeleteRequest { purge: true, ..DeleteRequest::new(&id, None) };
        assert_eq!(client.delete_with(&purge).unwrap().version, 2, "a deleted credential can be purged");
        assert_eq!(status_of(client.delete_with(&purge)), Status::NotFound);
    }
    assert!(server.store().is_empty());
}

#[test]
fn compare_and_set_and_compare_and_delete() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let mut request = put("cas", b"v1");
    request.expected_version = Some(0);
    assert_eq!(client.put(&request).unwrap(), 1);
    let error = client.put(&request).unwrap_err();
    assert_eq!((error.status(), error.current_version()), (Some(Status::VersionConflict), Some(1)));
    request.expected_version = Some(1);
    assert_eq!(client.put(&request).unwrap(), 2);
    request.expected_version = Some(5);
    assert_eq!(client.put(&request).unwrap_err().current_version(), Some(2));

    let error = client.delete("cas", Some(1)).unwrap_err();
    assert_eq!(error.current_version(), Some(2));
    assert_eq!(client.delete("cas", Some(2)).unwrap().version, 2);
    let mut absent = put("absent", b"x");
    absent.expected_version = Some(3);
    assert_eq!(client.put(&absent).unwrap_err().current_version(), Some(0));
}

#[test]
fn expiry_absolute_and_ttl() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let mut request = put("short-lived", b"token");
    request.expiry = Expiry::TtlMs(300);
    client.put(&request).unwrap();
    let expires_at_ms = client.get("short-lived").unwrap().metadata.expires_at_ms.expect("has an expiry");
    // Poll until the expiry passes; the assertion is about the status, not about timing.
    let mut status = None;
    for _ in 0..200 {
        match client.get("short-lived") {
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(error) => {
                status = error.status();
                break;
            }
        }
    }
    assert_eq!(status, Some(Status::Expired));
    assert!(credshard_engine::time::now_ms() >= expires_at_ms);
    assert_eq!(status_of(client.get_meta("short-lived")), Status::Expired);

    let mut past = put("already-expired", b"x");
    past.expiry = Expiry::AtUnixMs(1);
    client.put(&past).unwrap();
    assert_eq!(status_of(client.get("already-expired")), Status::Expired);
    // An expired credential counts as absent for CAS; its version number is not reused.
    past.expiry = Expiry::Never;
    past.expected_version = Some(0);
    assert_eq!(client.put(&past).unwrap(), 2);
}

#[test]
fn times_beyond_their_limits_are_refused_not_clamped() {
    use credshard_protocol::op::put::{EXPIRES_AT_MS_MAX, TTL_MS_MAX};
    use credshard_protocol::op::rotate::{RotateRequest, GRACE_PERIOD_SECONDS_MAX};
    let server = TestServer::start(2);
    let mut client = server.client();
    let with_expiry = |id, expiry| PutRequest { expiry, ..put(id, b"x") };
    for expiry in
        [Expiry::AtUnixMs(EXPIRES_AT_MS_MAX + 1), Expiry::AtUnixMs(u64::MAX), Expiry::TtlMs(TTL_MS_MAX + 1)]
    {
        assert_eq!(status_of(client.put(&with_expiry("far", expiry))), Status::Malformed, "{expiry:?}");
    }
    assert_eq!(status_of(client.get("far")), Status::NotFound, "a refused PUT has no effect");
    // At the limits, the stored expiry is exactly the one asked for.
    client.put(&with_expiry("latest", Expiry::AtUnixMs(EXPIRES_AT_MS_MAX))).unwrap();
    assert_eq!(client.get("latest").unwrap().metadata.expires_at_ms, Some(EXPIRES_AT_MS_MAX));
    let before = credshard_engine::time::now_ms();
    client.put(&with_expiry("longest", Expiry::TtlMs(TTL_MS_MAX))).unwrap();
    let expires_at_ms = client.get("longest").unwrap().metadata.expires_at_ms.unwrap();
    assert!((before + TTL_MS_MAX..=credshard_engine::time::now_ms() + TTL_MS_MAX).contains(&expires_at_ms));

    let rotate = |grace_period_seconds| RotateRequest {
        id: "longest",
        expected_version: None,
        grace_period_seconds: Some(grace_period_seconds),
        secret: b"y",
    };
    for grace in [GRACE_PERIOD_SECONDS_MAX + 1, u64::MAX] {
        assert_eq!(status_of(client.rotate(&rotate(grace))), Status::Malformed, "grace {grace}");
    }
    assert_eq!(client.rotate(&rotate(GRACE_PERIOD_SECONDS_MAX)).unwrap(), 2);
    let versions = client.get_meta("longest").unwrap().versions;
    assert_eq!(versions[1].state, VersionState::PreviousInGrace);
}

#[test]
fn limits_are_enforced_and_the_connection_stays_usable() {
    let server = TestServer::start(2);
    let mut client = server.client();
    let big_secret = vec![7u8; 64 * 1024 + 1];
    assert_eq!(status_of(client.put(&put("big", &big_secret))), Status::TooLarge);
    let long_id = "i".repeat(257);
    assert_eq!(status_of(client.put(&put(&long_id, b"x"))), Status::TooLarge);
    assert_eq!(status_of(client.get(&long_id)), Status::TooLarge);
    let mut labels = BytesMut::new();
    let value = "v".repeat(200);
    let pairs: Vec<(String, &str)> = (0..30).map(|index| (format!("key{index}"), value.as_str())).collect();
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(key, value)| (key.as_str(), *value)).collect();
    encode_labels(&borrowed, &mut labels);
    let mut request = put("labelled", b"x");
    request.labels = Labels::from_validated(&labels);
    assert_eq!(status_of(client.put(&request)), Status::TooLarge);
    assert_eq!(status_of(client.put(&put("", b"x"))), Status::Malformed);
    // The largest allowed secret still goes through on the same connection.
    let max_secret = vec![9u8; 64 * 1024];
    assert_eq!(client.put(&put("max", &max_secret)).unwrap(), 1);
    assert_eq!(client.get("max").unwrap().secret.expose(), &max_secret[..]);
}

/// Reads every frame until the server closes; panics if it does not within 10 s.
fn read_until_closed(stream: std::net::TcpStream) -> Vec<ResponseFrame> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buffer = BytesMut::new();
    let mut bytes = Vec::new();
    (&stream).read_to_end(&mut bytes).expect("the server closes the connection");
    buffer.extend_from_slice(&bytes);
    let mut frames = Vec::new();
    while let Some(frame) = ResponseFrame::take(&mut buffer).unwrap() {
        frames.push(frame);
    }
    frames
}

/// Sends raw bytes and reads every frame until the server closes or goes quiet.
fn raw_exchange(server: &TestServer, bytes: &[u8]) -> (Vec<ResponseFrame>, bool) {
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    stream.write_all(bytes).unwrap();
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
        while let Some(frame) = ResponseFrame::take(&mut buffer).unwrap() {
            frames.push(frame);
        }
    }
    (frames, closed)
}

fn header(length: u32, code: u8, request_id: u32) -> Vec<u8> {
    let mut bytes = length.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[code, 0]);
    bytes.extend_from_slice(&request_id.to_le_bytes());
    bytes
}

#[test]
fn unknown_ops_and_bad_bodies_keep_the_connection() {
    let server = TestServer::start(2);
    let mut bytes = header(6, 0x7F, 11); // unknown op
    bytes.extend(header(6, 0x14, 12)); // ROTATE with an empty body
    bytes.extend(header(9, 0x11, 13)); // GET with a 3-byte body: truncated str16
    bytes.extend([5, 0, b'a']);
    bytes.extend(header(6 + 2 + 4, 0x01, 14)); // HELLO of protocol version 9
    bytes.extend([9, 0, 0, 0, 0, 0]);
    bytes.extend(header(6 + 4, 0x02, 15)); // PING still answered on the same connection
    bytes.extend(b"pong");
    let (frames, closed) = raw_exchange(&server, &bytes);
    assert!(!closed, "well-framed bad requests do not close the connection");
    let statuses: Vec<(u32, u8)> = frames.iter().map(|frame| (frame.request_id, frame.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (11, Status::UnknownOp as u8),
            (12, Status::Malformed as u8),
            (13, Status::Malformed as u8),
            (14, Status::UnsupportedVersion as u8),
            (15, Status::Ok as u8),
        ]
    );
    assert_eq!(&frames[4].body[..], b"pong");
    let error = frames[0].clone().into_ok_body().unwrap_err();
    assert!(error.to_string().contains("unknown op"), "{error}");
}

#[test]
fn framing_errors_answer_then_close_without_hurting_others() {
    let server = TestServer::start(2);
    let mut bystander = server.client();
    bystander.put(&put("kept", b"value")).unwrap();

    // A length below the header size: the frame has no request id, so the error names none,
    // even when bytes that look like one follow the length field.
    let (frames, closed) = raw_exchange(&server, &header(3, 0x02, 21));
    assert!(closed);
    assert_eq!((frames.len(), frames[0].status, frames[0].request_id), (1, Status::Malformed as u8, 0));

    // An oversized frame is refused as soon as its header arrives, before its body, and names
    // its request however the header was split into writes.
    let (frames, closed) = raw_exchange(&server, &header(2 << 20, 0x10, 22));
    assert!(closed);
    assert_eq!((frames[0].status, frames[0].request_id), (Status::TooLarge as u8, 22));
    let frames = {
        let oversized = header(2 << 20, 0x10, 25);
        let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(&oversized[..4]).unwrap();
        std::thread::sleep(Duration::from_millis(50)); // let the length arrive on its own
        stream.write_all(&oversized[4..]).unwrap();
        read_until_closed(stream)
    };
    assert_eq!((frames[0].status, frames[0].request_id), (Status::TooLarge as u8, 25));

    // A valid request before the bad frame in the same write is still answered first.
    let mut bytes = header(6 + 3, 0x02, 23);
    bytes.extend(b"abc");
    bytes.extend(header(0, 0x02, 24));
    let (frames, closed) = raw_exchange(&server, &bytes);
    assert!(closed);
    assert_eq!(frames.iter().map(|frame| frame.status).collect::<Vec<_>>(), vec![0, Status::Malformed as u8]);

    // A client that disconnects mid-frame: nothing is applied.
    {
        let mut request = BytesMut::new();
        credshard_protocol::Request::Put(put("half-written", b"secret")).encode(99, &mut request);
        let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
        stream.write_all(&request[..request.len() - 3]).unwrap();
    }
    // Once the server has ended that connection (only the bystander's is open), nothing of
    // its half frame may have been applied.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bystander.stats().unwrap().get("connections_open") != Some(1) {
        assert!(std::time::Instant::now() < deadline, "the half-written connection never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status_of(bystander.get("half-written")), Status::NotFound);

    // Garbage of every shape, then the bystander still works.
    for seed in 0..50u32 {
        let garbage: Vec<u8> = (0..64u32)
            .map(|index| (index.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 13) as u8)
            .collect();
        let _ = raw_exchange(&server, &garbage);
    }
    assert_eq!(bystander.get("kept").unwrap().secret.expose(), b"value");
    let stats = bystander.stats().unwrap();
    assert!(stats.get("frames_rejected").unwrap() >= 3);
}

#[test]
fn error_frames_encode_detail_and_message() {
    let mut out = BytesMut::new();
    encode_error(Status::VersionConflict, 5, 42, "conflict", &mut out);
    let frame = ResponseFrame::take(&mut out).unwrap().unwrap();
    match frame.into_ok_body() {
        Err(ClientError::Server { status, detail, message }) => {
            assert_eq!((status, detail, message.as_str()), (Status::VersionConflict, 42, "conflict"))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn connection_limit_refuses_with_unavailable() {
    let server = TestServer::start_with(2, |config| config.connections_max = 2);
    let first = server.client();
    let mut second = server.client();
    let (frames, closed) = raw_exchange(&server, &[]);
    assert!(closed);
    assert_eq!(frames[0].status, Status::Unavailable as u8);
    drop(first);
    // Wait for the server to see the close (not a fixed while), then a new client gets in.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while second.stats().unwrap().get("connections_open") != Some(1) {
        assert!(std::time::Instant::now() < deadline, "the closed connection's slot never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut third = server.client();
    assert_eq!(&third.ping(b"ok").unwrap()[..], b"ok", "a slot frees when a connection closes");
}

#[test]
fn oversized_frame_with_its_body_still_gets_the_error_frame() {
    let server = TestServer::start(2);
    let mut bytes = header((2 << 20) - 4, 0x10, 31);
    bytes.resize(2 << 20, 0xAB);
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Write from another thread: the server stops reading after its grace period, so a
    // blocking write of the whole body could stall.
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    // Read only once the whole body is on its way. (On loopback the kernel delivers the error
    // frame before any reset, so this checks the answer, not the lingering close itself.)
    std::thread::sleep(Duration::from_millis(200));
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    sender.join().unwrap();
    let mut buffer = BytesMut::from(&received[..]);
    let frame = ResponseFrame::take(&mut buffer).unwrap().expect("an error frame, not a reset");
    assert_eq!((frame.status, frame.request_id), (Status::TooLarge as u8, 31));
}

#[test]
fn half_closed_client_still_gets_every_reply() {
    let server = TestServer::start(2);
    let ids = ids_on_every_shard(2, 20);
    let mut bytes = BytesMut::new();
    for (index, id) in ids.iter().enumerate() {
        credshard_protocol::Request::Put(put(id, b"value")).encode(index as u32 + 1, &mut bytes);
    }
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    stream.write_all(&bytes).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut received = Vec::new();
    stream.read_to_end(&mut received).unwrap();
    let mut buffer = BytesMut::from(&received[..]);
    let mut answered = Vec::new();
    while let Some(frame) = ResponseFrame::take(&mut buffer).unwrap() {
        assert_eq!(frame.status, Status::Ok as u8);
        answered.push(frame.request_id);
    }
    answered.sort_unstable();
    assert_eq!(answered, (1..=ids.len() as u32).collect::<Vec<_>>());
}

#[test]
fn more_shards_than_cpus_share_them() {
    let server = TestServer::start(4);
    let mut client = server.client();
    assert_eq!(client.hello(b"").unwrap().shard_count, 4);
    for id in ids_on_every_shard(4, 3) {
        assert_eq!(client.put(&put(&id, id.as_bytes())).unwrap(), 1);
        assert_eq!(client.get(&id).unwrap().secret.expose(), id.as_bytes());
    }
    assert_eq!(server.store().len(), 12);
}

/// Once a shard outgrows the cache, the GETs of one read are prefetched together before any is
/// answered (`Store::prefetch`): pipelined GETs of a map that large, present and absent ids
/// mixed, are each answered with their own secret, in order.
#[test]
fn pipelined_gets_of_a_large_map_are_each_answered_with_their_own_secret() {
    use credshard_protocol::op::get::{GetReply, GetRequest};
    use credshard_protocol::op::Request;
    use credshard_protocol::wire::Reader;

    let server =
        TestServer::start_with(1, |config| config.fsync = credshard_engine::config::FsyncMode::Never);
    let mut client = server.client();
    let count = 8_300;
    let ids: Vec<String> = (0..count).map(|index| format!("bulk/{index}")).collect();
    for chunk in ids.chunks(500) {
        for id in chunk {
            client.send(&Request::Put(put(id, id.as_bytes())));
        }
        client.flush().unwrap();
        for _ in chunk {
            assert_eq!(client.receive().unwrap().status, Status::Ok as u8);
        }
    }
    assert!(server.store().prefetch(["bulk/1", "bulk/2"]) > 0, "the map is large enough to be prefetched");

    for round in 0..20 {
        let mut expected = Vec::new();
        for slot in 0..32 {
            // Some indexes run past the stored ones: those ids are absent.
            let index = (round * 389 + slot * 97) % (count + 50);
            let id = format!("bulk/{index}");
            let request_id = client.send(&Request::Get(GetRequest::new(&id, 0)));
            expected.push((request_id, index < count, id));
        }
        client.flush().unwrap();
        for (request_id, present, id) in expected {
            let frame = client.receive().unwrap();
            assert_eq!(frame.request_id, request_id);
            if present {
                assert_eq!(frame.status, Status::Ok as u8, "{id}");
                let reply = GetReply::decode(&mut Reader::new(&frame.body)).unwrap();
                assert_eq!(reply.secret.expose(), id.as_bytes());
            } else {
                assert_eq!(frame.status, Status::NotFound as u8, "{id}");
            }
        }
    }
}
