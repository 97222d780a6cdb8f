//! A minimal in-process server that speaks the credshard protocol (HELLO, PUT, GET, GET_META)
//! over a `HashMap`, so the workload's own logic — pipelining, validation, error kinds,
//! connection loss — is tested without the engine. Test-only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use credshard_protocol::op::encode_error;
use credshard_protocol::op::hello::HelloReply;
use credshard_protocol::op::metadata::MetadataRef;
use credshard_protocol::wire::put_bytes32;
use credshard_protocol::{frame, Labels, Limits, Request, Status, EMPTY_LABELS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Correct,
    /// GET answers with every byte of the value flipped.
    WrongValues,
    /// Each connection is closed after this many requests.
    CloseAfter(usize),
}

type Store = Arc<Mutex<HashMap<String, (Vec<u8>, u64)>>>;

/// A running fake server (on its own thread and runtime, for the life of the test process).
pub struct FakeServer {
    /// `HOST:PORT`.
    pub address: String,
    most_in_one_read: Arc<AtomicUsize>,
}

impl FakeServer {
    /// The most requests any connection had sent by the time of one read: how deep the
    /// client's pipeline went.
    pub fn most_requests_in_one_read(&self) -> usize {
        self.most_in_one_read.load(Ordering::Relaxed)
    }
}

/// Listens on an ephemeral loopback port.
pub fn start(behaviour: Behaviour) -> FakeServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
    listener.set_nonblocking(true).expect("a non-blocking listener");
    let address = listener.local_addr().expect("local address").to_string();
    let most_in_one_read = Arc::new(AtomicUsize::new(0));
    let most = most_in_one_read.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            let store = Store::default();
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, store.clone(), behaviour, most.clone()));
            }
        });
    });
    FakeServer { address, most_in_one_read }
}

async fn serve(mut stream: TcpStream, store: Store, behaviour: Behaviour, most: Arc<AtomicUsize>) {
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut output = BytesMut::with_capacity(64 * 1024);
    let mut served = 0;
    loop {
        let mut in_this_read = 0;
        let mut closing = false;
        while let Some(header) = frame::check(&input, usize::MAX).expect("the loadgen frames correctly") {
            if behaviour == Behaviour::CloseAfter(served) {
                // Answer what came before, then close.
                closing = true;
                break;
            }
            served += 1;
            in_this_read += 1;
            let body = &input[header.body_range()];
            let request = Request::decode(header.code, body, &Limits::default()).expect("valid requests");
            answer(&request, header.request_id, &store, behaviour, &mut output);
            let _ = input.split_to(header.frame_bytes);
        }
        most.fetch_max(in_this_read, Ordering::Relaxed);
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
        if closing {
            return;
        }
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn answer(request: &Request<'_>, request_id: u32, store: &Store, behaviour: Behaviour, out: &mut BytesMut) {
    let mut store = store.lock().expect("store lock");
    let start = frame::begin(out, Status::Ok as u8, request_id);
    match request {
        Request::Hello(_) => HelloReply::encode(1, 1, "fake 0.0.0", out),
        Request::Put(put) => {
            let entry = store.entry(put.id.to_owned()).or_insert((Vec::new(), 0));
            entry.0 = put.secret.to_vec();
            entry.1 += 1;
            out.put_u64_le(entry.1);
        }
        Request::Get(get) => {
            let Some((secret, version)) = store.get(get.id) else {
                frame::abandon(out, start);
                return encode_error(Status::NotFound, request_id, 0, "credential not found", out);
            };
            let secret = match behaviour {
                Behaviour::WrongValues => secret.iter().map(|byte| byte ^ 1).collect(),
                _ => secret.clone(),
            };
            metadata(get.id, *version).encode(out);
            put_bytes32(out, &secret);
        }
        Request::GetMeta(get_meta) => {
            let Some((_, version)) = store.get(get_meta.id) else {
                frame::abandon(out, start);
                return encode_error(Status::NotFound, request_id, 0, "credential not found", out);
            };
            metadata(get_meta.id, *version).encode(out);
            out.put_u16_le(0);
        }
        other => panic!("the loadgen does not send {other:?}"),
    }
    frame::finish(out, start);
}

fn metadata(id: &str, version: u64) -> MetadataRef<'_> {
    MetadataRef {
        id,
        owner: "loadgen",
        scope: "bench",
        kind: 3,
        version,
        created_at_ms: 1,
        updated_at_ms: 1,
        expires_at_ms: 0,
        key_id: 1,
        labels: Labels::from_validated(EMPTY_LABELS),
    }
}
