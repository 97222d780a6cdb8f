//! A blocking client over `std::net::TcpStream` (or TLS over it, feature `tls`). One call at a
//! time with [`Client::run`], or pipelined with [`Client::send`] / [`Client::flush`] /
//! [`Client::receive`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(feature = "tls")]
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

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
use crate::op::Request;
use crate::wire::Reader;

/// The connection under a client: plain TCP or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => &mut tls.sock,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buffer),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.read(buffer),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buffer),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.write(buffer),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

pub struct Client {
    stream: Transport,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
    next_request_id: u32,
    /// The request id of the WATCH this connection streams, once it does.
    watch_request_id: Option<u32>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = !matches!(self.stream, Transport::Plain(_));
        formatter
            .debug_struct("Client")
            .field("tls", &tls)
            .field("next_request_id", &self.next_request_id)
            .finish()
    }
}

impl Client {
    /// Connects and says HELLO with an empty token (enough for a server without tokens).
    ///
    /// # Errors
    /// Connection failures and a refused HELLO.
    pub fn connect(address: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Client::connect_with_token(address, b"")
    }

    /// Connects and authenticates with `token`.
    ///
    /// # Errors
    /// Connection failures and a refused HELLO (`UNAUTHORIZED` for an unknown token).
    pub fn connect_with_token(address: impl ToSocketAddrs, token: &[u8]) -> Result<Client, ClientError> {
        let mut client = Client::connect_raw(address)?;
        client.hello(token)?;
        Ok(client)
    }

    /// Connects without saying HELLO.
    ///
    /// # Errors
    /// Connection failures.
    pub fn connect_raw(address: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        Ok(Client::over(Transport::Plain(stream)))
    }

    /// Connects with TLS, verifying the server as `tls` says, without saying HELLO. The
    /// handshake completes before this returns.
    ///
    /// # Errors
    /// Connection failures and a failed handshake (e.g. an untrusted certificate).
    #[cfg(feature = "tls")]
    pub fn connect_tls_raw(
        address: impl ToSocketAddrs,
        tls: &crate::client::tls::ClientTls,
    ) -> Result<Client, ClientError> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        let mut connection =
            rustls::ClientConnection::new(Arc::clone(tls.config()), tls.server_name().clone())
                .map_err(|error| ClientError::Tls(error.to_string()))?;
        // A server that does not speak TLS would leave the handshake waiting forever.
        stream.set_read_timeout(Some(crate::client::tls::HANDSHAKE_TIMEOUT))?;
        while connection.is_handshaking() {
            connection.complete_io(&mut stream).map_err(|error| ClientError::Tls(error.to_string()))?;
        }
        stream.set_read_timeout(None)?;
        Ok(Client::over(Transport::Tls(Box::new(rustls::StreamOwned::new(connection, stream)))))
    }

    fn over(stream: Transport) -> Client {
        Client {
            stream,
            read_buffer: BytesMut::with_capacity(64 * 1024),
            write_buffer: BytesMut::with_capacity(64 * 1024),
            next_request_id: 1,
            watch_request_id: None,
        }
    }

    /// Queues a request; returns its request id. Nothing is sent until [`Client::flush`].
    pub fn send(&mut self, request: &Request<'_>) -> u32 {
        let request_id = self.next_request_id;
        // Request id 0 is reserved for connection-level errors from the server.
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        request.encode(request_id, &mut self.write_buffer);
        request_id
    }

    /// Sends every queued request.
    ///
    /// # Errors
    /// Connection failures.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.stream.write_all(&self.write_buffer)?;
        self.stream.flush()?;
        self.write_buffer.clear();
        Ok(())
    }

    /// Waits for the next response frame, whichever request it answers.
    ///
    /// # Errors
    /// Connection failures, [`ClientError::Closed`] at end of stream, invalid frames.
    pub fn receive(&mut self) -> Result<ResponseFrame, ClientError> {
        loop {
            if let Some(frame) = ResponseFrame::take(&mut self.read_buffer)? {
                return Ok(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = self.stream.read(&mut chunk)?;
            self.read_buffer.extend_from_slice(&chunk[..read]);
            if read == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Sends one call and waits for its reply.
    ///
    /// # Errors
    /// The server's error for this request, connection failures, or a response to some other
    /// request (use `send`/`receive` when pipelining).
    pub fn run<T>(&mut self, call: Call<'_, T>) -> Result<T, ClientError> {
        let request_id = self.send(&call.request);
        self.flush()?;
        let frame = self.receive()?;
        if frame.request_id != request_id {
            return Err(ClientError::UnexpectedResponse { request_id: frame.request_id });
        }
        call.reply(frame)
    }

    /// The underlying TCP socket (e.g. to send raw bytes in tests, or to shut it down). With
    /// TLS, bytes written here bypass the encryption.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        self.stream.socket()
    }

    pub fn hello(&mut self, token: &[u8]) -> Result<HelloReply, ClientError> {
        self.run(client::hello(token))
    }

    /// Bounds how long a call waits for the server's reply (`None`: forever, the default);
    /// a call that waits longer fails with an I/O error of kind `WouldBlock` or `TimedOut`.
    ///
    /// # Errors
    /// From the socket, e.g. a zero duration.
    pub fn set_read_timeout(&mut self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
        self.stream.socket().set_read_timeout(timeout)
    }

    pub fn ping(&mut self, payload: &[u8]) -> Result<Bytes, ClientError> {
        self.run(client::ping(payload))
    }

    /// PUT; returns the new version.
    pub fn put(&mut self, request: &PutRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::put(request)).map(|reply| reply.version)
    }

    /// GET of the current version.
    pub fn get(&mut self, id: &str) -> Result<GetReply, ClientError> {
        self.run(client::get(id, 0))
    }

    /// GET of a given version.
    pub fn get_version(&mut self, id: &str, version: u64) -> Result<GetReply, ClientError> {
        self.run(client::get(id, version))
    }

    pub fn get_meta(&mut self, id: &str) -> Result<GetMetaReply, ClientError> {
        self.run(client::get_meta(id))
    }

    pub fn delete(&mut self, id: &str, expected_version: Option<u64>) -> Result<DeleteReply, ClientError> {
        self.run(client::delete(id, expected_version))
    }

    /// DELETE with its options (purge, or a recovery window of its own).
    pub fn delete_with(&mut self, request: &DeleteRequest<'_>) -> Result<DeleteReply, ClientError> {
        self.run(client::delete_with(request))
    }

    /// UNDELETE; returns the current version, served again.
    pub fn undelete(&mut self, id: &str) -> Result<u64, ClientError> {
        self.run(client::undelete(id)).map(|reply| reply.version)
    }

    /// DESTROY of one kept version; returns that version.
    pub fn destroy(&mut self, id: &str, version: u64) -> Result<u64, ClientError> {
        self.run(client::destroy(id, version)).map(|reply| reply.version)
    }

    /// ROTATE; returns the new version.
    pub fn rotate(&mut self, request: &RotateRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::rotate(request)).map(|reply| reply.version)
    }

    /// WATCH: from now on this connection is a stream of change events; read them with
    /// [`Client::next_event`]. Use a connection of its own: the server takes no other request
    /// on it.
    pub fn watch(&mut self, request: &WatchRequest<'_>) -> Result<WatchReply, ClientError> {
        let call = client::watch(request);
        let request_id = self.send(&call.request);
        self.flush()?;
        let reply = self.receive()?;
        if reply.request_id != request_id {
            return Err(ClientError::UnexpectedResponse { request_id: reply.request_id });
        }
        let reply = call.reply(reply)?;
        self.watch_request_id = Some(request_id);
        Ok(reply)
    }

    /// The next change event of the stream [`Client::watch`] opened; waits for it (see
    /// [`Client::set_read_timeout`]).
    ///
    /// # Errors
    /// The server's end of the stream (`UNAVAILABLE` when the watcher fell behind,
    /// `UNAUTHORIZED` when its token was revoked), connection failures, or no stream open.
    pub fn next_event(&mut self) -> Result<WatchEvent, ClientError> {
        let Some(request_id) = self.watch_request_id else { return Err(ClientError::Closed) };
        let frame = self.receive()?;
        if frame.request_id != request_id {
            return Err(ClientError::UnexpectedResponse { request_id: frame.request_id });
        }
        let body = frame.into_ok_body()?;
        let mut reader = Reader::new(&body);
        let event = WatchEvent::decode(&mut reader)?;
        reader.finish()?;
        Ok(event)
    }

    /// SET_POLICY: replaces the credential's policy; returns its current version.
    pub fn set_policy(&mut self, request: &SetPolicyRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::set_policy(request)).map(|reply| reply.version)
    }

    /// GET_POLICY.
    pub fn get_policy(&mut self, id: &str) -> Result<PolicyReply, ClientError> {
        self.run(client::get_policy(id))
    }

    /// GET of the version in `stage` (current, pending or previous).
    pub fn get_stage(&mut self, id: &str, stage: Stage) -> Result<GetReply, ClientError> {
        self.run(client::get_stage(id, stage))
    }

    /// STAGE: a new pending version (PUT's request); returns its version.
    pub fn stage(&mut self, request: &PutRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::stage(request)).map(|reply| reply.version)
    }

    /// PROMOTE the pending version; returns the version now current.
    pub fn promote(&mut self, request: &PromoteRequest<'_>) -> Result<u64, ClientError> {
        self.run(client::promote(request)).map(|reply| reply.version)
    }

    /// BATCH_GET of 1..=1000 ids; one result per id, in order.
    ///
    /// # Panics
    /// If `ids` is empty or longer than 1000.
    pub fn batch_get<S: AsRef<str>>(&mut self, ids: &[S]) -> Result<Vec<BatchItem>, ClientError> {
        let mut encoded = BytesMut::new();
        BatchGetRequest::encode(ids, &mut encoded);
        let request = BatchGetRequest::from_encoded(&encoded)?;
        self.run(client::batch_get(&request))
    }

    /// LIST one page.
    pub fn list(&mut self, request: &ListRequest<'_>) -> Result<ListReply, ClientError> {
        self.run(client::list(request))
    }

    pub fn stats(&mut self) -> Result<StatsReply, ClientError> {
        self.run(client::stats())
    }

    /// ROTATE_KEY (admin): a new data key for new writes.
    pub fn rotate_key(&mut self) -> Result<RotateKeyReply, ClientError> {
        self.run(client::rotate_key())
    }

    /// REKEY (admin): every data key rewrapped under a new master key. The request frame
    /// holds the key material: send it over TLS or to a loopback address.
    pub fn rekey(&mut self, request: &RekeyRequest<'_>) -> Result<RekeyReply, ClientError> {
        self.run(client::rekey(request))
    }
}
