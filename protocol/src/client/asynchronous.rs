//! An async client on tokio that pipelines: any number of tasks may call it at once; requests
//! share one connection and replies are matched to callers by request id.
//!
//! A writer task coalesces queued frames into large writes; a reader task splits responses
//! and completes each caller's oneshot. When the connection ends, every pending call fails
//! with [`ClientError::Closed`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

use crate::client::{self, Call, ResponseFrame};
use crate::error::ClientError;
use crate::op::batch_get::{BatchGetRequest, BatchItem};
use crate::op::delete::{DeleteReply, DeleteRequest};
use crate::op::get::{GetMetaReply, GetReply, Stage};
use crate::op::hello::HelloReply;
use crate::op::keys::{RekeyReply, RekeyRequest, RotateKeyReply};
use crate::op::list::{ListReply, ListRequest};
use crate::op::policy::{PolicyReply, SetPolicyRequest};
use crate::op::put::PutRequest;
use crate::op::rotate::RotateRequest;
use crate::op::stage::PromoteRequest;
use crate::op::stats::StatsReply;
use crate::op::watch::{WatchEvent, WatchReply, WatchRequest};
use crate::wire::Reader;

/// Frames queued for the writer task; bounded so a stalled connection pushes back on callers.
const OUTGOING_FRAMES_MAX: usize = 4096;

type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<ResponseFrame>>>>>;

/// The open WATCH streams: frames of their request ids after the first (the reply).
type Streams = Arc<Mutex<HashMap<u32, mpsc::Sender<ResponseFrame>>>>;

/// Events a WATCH stream buffers for a caller that reads them slower than they come; past it
/// the connection's reader waits (the connection carries only the stream by then).
const STREAM_EVENTS_BUFFERED_MAX: usize = 1024;

/// A WATCH stream opened by [`AsyncClient::watch`]: its reply, then its events.
#[derive(Debug)]
pub struct WatchStream {
    pub reply: WatchReply,
    events: mpsc::Receiver<ResponseFrame>,
}

impl WatchStream {
    /// The next change event.
    ///
    /// # Errors
    /// The server's end of the stream (`UNAVAILABLE` when the watcher fell behind,
    /// `UNAUTHORIZED` when its token was revoked), or [`ClientError::Closed`].
    pub async fn next_event(&mut self) -> Result<WatchEvent, ClientError> {
        let frame = self.events.recv().await.ok_or(ClientError::Closed)?;
        let body = frame.into_ok_body()?;
        let mut reader = Reader::new(&body);
        let event = WatchEvent::decode(&mut reader)?;
        reader.finish()?;
        Ok(event)
    }
}

/// A cloneable handle to one pipelined connection.
#[derive(Clone)]
pub struct AsyncClient {
    outgoing: mpsc::Sender<Bytes>,
    /// `None` once the connection has ended.
    pending: Pending,
    streams: Streams,
    next_request_id: Arc<AtomicU32>,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.pending.lock().expect("pending lock").as_ref().map(HashMap::len);
        formatter.debug_struct("AsyncClient").field("pending", &pending).finish()
    }
}

impl AsyncClient {
    /// Connects and says HELLO with an empty token (enough for a server without tokens).
    ///
    /// # Errors
    /// Connection failures and a refused HELLO.
    pub async fn connect(address: impl ToSocketAddrs) -> Result<AsyncClient, ClientError> {
        AsyncClient::connect_with_token(address, b"").await
    }

    /// Connects and authenticates with `token`.
    ///
    /// # Errors
    /// Connection failures and a refused HELLO (`UNAUTHORIZED` for an unknown token).
    pub async fn connect_with_token(
        address: impl ToSocketAddrs,
        token: &[u8],
    ) -> Result<AsyncClient, ClientError> {
        let client = AsyncClient::connect_raw(address).await?;
        client.hello(token).await?;
        Ok(client)
    }

    /// Connects without saying HELLO. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn connect_raw(address: impl ToSocketAddrs) -> Result<AsyncClient, ClientError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (read_half, write_half) = stream.into_split();
        Ok(AsyncClient::over(read_half, write_half))
    }

    /// Connects with TLS, verifying the server as `tls` says, without saying HELLO.
    ///
    /// # Errors
    /// Connection failures and a failed handshake (e.g. an untrusted certificate).
    #[cfg(feature = "tls")]
    pub async fn connect_tls_raw(
        address: impl ToSocketAddrs,
        tls: &crate::client::tls::ClientTls,
    ) -> Result<AsyncClient, ClientError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let stream = tls.handshake(stream).await?;
        let (read_half, write_half) = tokio::io::split(stream);
        Ok(AsyncClient::over(read_half, write_half))
    }

    /// Starts the writer and reader tasks on the two halves of a connection.
    fn over<R, W>(read_half: R, write_half: W) -> AsyncClient
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (outgoing, queued) = mpsc::channel(OUTGOING_FRAMES_MAX);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let streams: Streams = Arc::default();
        tokio::spawn(write_loop(write_half, queued));
        tokio::spawn(read_loop(read_half, pending.clone(), streams.clone()));
        AsyncClient { outgoing, pending, streams, next_request_id: Arc::new(AtomicU32::new(1)) }
    }

    /// WATCH: from now on this connection carries a stream of change events (the server takes
    /// no other request on it: use a client of its own). Read them from the returned stream.
    ///
    /// # Errors
    /// The server's refusal, or [`ClientError::Closed`].
    pub async fn watch(&self, request: &WatchRequest<'_>) -> Result<WatchStream, ClientError> {
        let (sender, events) = mpsc::channel(STREAM_EVENTS_BUFFERED_MAX);
        let (reply, request_id) = self
            .run_registering(client::watch(request), |request_id| {
                self.streams.lock().expect("streams lock").insert(request_id, sender);
            })
            .await;
        match reply {
            Ok(reply) => Ok(WatchStream { reply, events }),
            Err(error) => {
                self.streams.lock().expect("streams lock").remove(&request_id);
                Err(error)
            }
        }
    }

    /// Sends one call and waits for its reply; other calls may be in flight meanwhile.
    ///
    /// # Errors
    /// The server's error for this request, or [`ClientError::Closed`] if the connection ends
    /// first.
    pub async fn run<T>(&self, call: Call<'_, T>) -> Result<T, ClientError> {
        self.run_registering(call, |_| {}).await.0
    }

    /// [`AsyncClient::run`], calling `register` with the request id before the request is sent;
    /// returns the request id too.
    async fn run_registering<T>(
        &self,
        call: Call<'_, T>,
        register: impl FnOnce(u32),
    ) -> (Result<T, ClientError>, u32) {
        let mut request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        if request_id == 0 {
            // Request id 0 is reserved for connection-level errors from the server.
            request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        }
        register(request_id);
        (self.send_and_wait(call, request_id).await, request_id)
    }

    async fn send_and_wait<T>(&self, call: Call<'_, T>, request_id: u32) -> Result<T, ClientError> {
        let mut frame = BytesMut::new();
        call.request.encode(request_id, &mut frame);
        let (done, reply) = oneshot::channel();
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(pending) => pending.insert(request_id, done),
            None => return Err(ClientError::Closed),
        };
        if self.outgoing.send(frame.freeze()).await.is_err() {
            if let Some(pending) = self.pending.lock().expect("pending lock").as_mut() {
                pending.remove(&request_id);
            }
            return Err(ClientError::Closed);
        }
        let frame = reply.await.map_err(|_| ClientError::Closed)?;
        call.reply(frame)
    }

    pub async fn hello(&self, token: &[u8]) -> Result<HelloReply, ClientError> {
        self.run(client::hello(token)).await
    }

    pub async fn ping(&self, payload: &[u8]) -> Result<Bytes, ClientError> {
        self.run(client::ping(payload)).await
    }

    /// PUT; returns the new version.
    pub async fn put(&self, request: &PutRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::put(request)).await.map(|reply| reply.version)
    }

    /// GET of the current version.
    pub async fn get(&self, id: &str) -> Result<GetReply, ClientError> {
        self.run(client::get(id, 0)).await
    }

    /// GET of a given version.
    pub async fn get_version(&self, id: &str, version: u64) -> Result<GetReply, ClientError> {
        self.run(client::get(id, version)).await
    }

    pub async fn get_meta(&self, id: &str) -> Result<GetMetaReply, ClientError> {
        self.run(client::get_meta(id)).await
    }

    pub async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<DeleteReply, ClientError> {
        self.run(client::delete(id, expected_version)).await
    }

    /// DELETE with its options (purge, or a recovery window of its own).
    pub async fn delete_with(&self, request: &DeleteRequest<'_>) -> Result<DeleteReply, ClientError> {
        self.run(client::delete_with(request)).await
    }

    /// UNDELETE; returns the current version, served again.
    pub async fn undelete(&self, id: &str) -> Result<u64, ClientError> {
        self.run(client::undelete(id)).await.map(|reply| reply.version)
    }

    /// DESTROY of one kept version; returns that version.
    pub async fn destroy(&self, id: &str, version: u64) -> Result<u64, ClientError> {
        self.run(client::destroy(id, version)).await.map(|reply| reply.version)
    }

    /// ROTATE; returns the new version.
    pub async fn rotate(&self, request: &RotateRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::rotate(request)).await.map(|reply| reply.version)
    }

    /// SET_POLICY: replaces the credential's policy; returns its current version.
    pub async fn set_policy(&self, request: &SetPolicyRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::set_policy(request)).await.map(|reply| reply.version)
    }

    /// GET_POLICY.
    pub async fn get_policy(&self, id: &str) -> Result<PolicyReply, ClientError> {
        self.run(client::get_policy(id)).await
    }

    /// GET of the version in `stage` (current, pending or previous).
    pub async fn get_stage(&self, id: &str, stage: Stage) -> Result<GetReply, ClientError> {
        self.run(client::get_stage(id, stage)).await
    }

    /// STAGE: a new pending version (PUT's request); returns its version.
    pub async fn stage(&self, request: &PutRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::stage(request)).await.map(|reply| reply.version)
    }

    /// PROMOTE the pending version; returns the version now current.
    pub async fn promote(&self, request: &PromoteRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::promote(request)).await.map(|reply| reply.version)
    }

    /// BATCH_GET of 1..=1000 ids; one result per id, in order.
    ///
    /// # Panics
    /// If `ids` is empty or longer than 1000.
    pub async fn batch_get<S: AsRef<str>>(&self, ids: &[S]) -> Result<Vec<BatchItem>, ClientError> {
        let mut encoded = BytesMut::new();
        BatchGetRequest::encode(ids, &mut encoded);
        let request = BatchGetRequest::from_encoded(&encoded)?;
        self.run(client::batch_get(&request)).await
    }

    /// LIST one page.
    pub async fn list(&self, request: &ListRequest<'_>) -> Result<ListReply, ClientError> {
        self.run(client::list(request)).await
    }

    pub async fn stats(&self) -> Result<StatsReply, ClientError> {
        self.run(client::stats()).await
    }

    /// ROTATE_KEY (admin): a new data key for new writes.
    pub async fn rotate_key(&self) -> Result<RotateKeyReply, ClientError> {
        self.run(client::rotate_key()).await
    }

    /// REKEY (admin): every data key rewrapped under a new master key. The request frame
    /// holds the key material: send it over TLS or to a loopback address.
    pub async fn rekey(&self, request: &RekeyRequest<'_>) -> Result<RekeyReply, ClientError> {
        self.run(client::rekey(request)).await
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut stream: W, mut queued: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = queued.recv().await {
        batch.extend_from_slice(&frame);
        // Coalesce whatever else is already queued into the same write.
        while batch.len() < 256 * 1024 {
            match queued.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        // TLS buffers records: flush sends them (a no-op for plain TCP).
        if stream.write_all(&batch).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        batch.clear();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut stream: R, pending: Pending, streams: Streams) {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    'connection: loop {
        loop {
            match ResponseFrame::take(&mut buffer) {
                Ok(Some(frame)) => {
                    let waiter = pending
                        .lock()
                        .expect("pending lock")
                        .as_mut()
                        .and_then(|map| map.remove(&frame.request_id));
                    // A reply nobody waits for (a caller gave up) is dropped. Frames with
                    // request id 0 are connection-level errors sent before the server closes.
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(frame);
                        continue;
                    }
                    // The frames of a WATCH after its reply.
                    let request_id = frame.request_id;
                    let stream = streams.lock().expect("streams lock").get(&request_id).cloned();
                    if let Some(stream) = stream {
                        if stream.send(frame).await.is_err() {
                            // The caller dropped its stream.
                            streams.lock().expect("streams lock").remove(&request_id);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => break 'connection,
            }
        }
        buffer.reserve(64 * 1024);
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Dropping every sender fails each pending call with `Closed`; later calls see `None`.
    pending.lock().expect("pending lock").take();
    streams.lock().expect("streams lock").clear();
}
