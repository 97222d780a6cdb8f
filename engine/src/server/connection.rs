//! One client connection, for its whole life on one executor.
//!
//! The loop: split every whole frame out of the input buffer and dispatch it (reads are
//! answered at once; writes for other shards are forwarded and their replies collected as
//! they finish, so responses can leave out of order); flush the output; then wait for more
//! input or a finished write. A framing error is answered with an error frame, in-flight
//! writes are answered, and the connection is closed. Buffers that held plaintext (PUT and
//! ROTATE requests, HELLO tokens, GET and BATCH_GET responses) are wiped before they are
//! reused. On a server with tokens, a connection that has not authenticated within the auth
//! timeout of connecting is answered UNAUTHORIZED and closed; once it has, it may stay.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use credshard_protocol::frame::{self, FrameError};
use credshard_protocol::op::{encode_error, Request};
use credshard_protocol::{Op, Status};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, StreamExt};
use glommio::net::TcpStream;
use zeroize::Zeroize;

use crate::auth::Session;
use crate::data::store::{PREFETCH_IDS_MAX, PREFETCH_SCAN_MAX};
use crate::error::OpError;
use crate::error::WriteOutcome;
use crate::metrics::{AnsweredBatch, ExecutorMetrics};
use crate::server::dispatch::{
    answer_write, dispatch, load_and_dispatch, Caller, Dispatched, WriteTicket, UNAUTHENTICATED_REFUSALS_MAX,
};
use crate::server::executor::ExecutorContext;
use crate::server::input::InputBuffer;
use crate::server::watch::{self, WatchSpec};

/// Bytes read per `read` call.
pub(super) const READ_CHUNK_BYTES: usize = 16 * 1024;
/// After a framing error, how long and how much the server keeps reading (and discarding)
/// before it closes, so that the client receives the error frame instead of a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES_MAX: usize = 4 << 20;

/// Unsent reply bytes above which the connection stops taking requests until they are
/// flushed: a client that pipelines large reads without reading holds at most about this much
/// (plus one reply) of the server's memory.
pub(super) const OUTPUT_PAUSE_BYTES: usize = 256 * 1024;

/// A reply buffer grown above this is given back once flushed.
pub(super) const OUTPUT_KEPT_BYTES_MAX: usize = 1 << 20;

/// The largest frame a connection that is not authenticated may send (a HELLO with the
/// largest token is about 1 KiB).
pub const UNAUTHENTICATED_FRAME_BYTES_MAX: usize = 4 * 1024;

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connection waiting for a busy audit log looks again.
const AUDIT_CATCH_UP_POLL: Duration = Duration::from_millis(1);

/// A write and its outcome (or its shard stopped before answering).
pub(super) type WriteDone = (WriteTicket, Result<WriteOutcome, oneshot::Canceled>);

/// Closes gracefully after a framing error: shut down the sending side (after a TLS
/// close_notify), then discard what the client still sends for a while. Closing with unread
/// input would make the kernel send a reset, which can destroy the error frame before the
/// client reads it.
pub(super) async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<()> {
    stream.close().await?;
    let drain = async {
        let mut discard = vec![0u8; READ_CHUNK_BYTES];
        let mut discarded = 0;
        while discarded < LINGER_BYTES_MAX {
            match stream.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(read) => discarded += read,
            }
        }
    };
    let _ = select(Box::pin(drain), Box::pin(glommio::timer::sleep(LINGER))).await;
    Ok(())
}

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// credshard's binary protocol (`--listen`).
    Native,
    /// The Redis protocol (`--resp-listen`, see [`crate::server::resp`]).
    Resp,
}

/// Serves `stream` until the client hangs up, an I/O error occurs, or framing breaks. With
/// TLS configured, the handshake comes first (bounded by a timeout); the connection limit
/// counts connections from accept, handshakes included, of both listeners.
pub async fn serve(mut stream: TcpStream, context: Rc<ExecutorContext>, listener: Listener) {
    let metrics = context.metrics();
    let _ = stream.set_nodelay(true);
    // glommio times a read or write from when it first has to wait and resets on progress:
    // nothing received for the idle timeout, or nothing sent for the write timeout, ends the
    // connection with a TimedOut error, at no cost on the path that does not wait.
    let config = &context.config;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(config.idle_timeout_ms)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(config.write_timeout_ms)));
    let peer = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let socket = stream.as_raw_fd();
    if context.all_metrics.connections_open() >= context.config.connections_max as u64 {
        ExecutorMetrics::add(&metrics.connections_refused, 1);
        if context.tls.is_none() {
            // A TLS client could not read a plaintext error: it sees the connection close.
            let mut out = BytesMut::new();
            match listener {
                Listener::Native => encode_error(Status::Unavailable, 0, 0, "too many connections", &mut out),
                Listener::Resp => out.extend_from_slice(b"-ERR max number of clients reached\r\n"),
            }
            let _ = stream.write_all(&out).await;
            let _ = stream.close().await;
        }
        return;
    }
    ExecutorMetrics::add(&metrics.connections_total, 1);
    ExecutorMetrics::add(&metrics.connections_open, 1);
    let result = match &context.tls {
        None => run(listener, &context, peer, socket, &mut stream).await,
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            match select(Box::pin(handshake), Box::pin(glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT))).await {
                Either::Left((Ok(mut tls), _)) => run(listener, &context, peer, socket, &mut tls).await,
                Either::Left((Err(error), _)) => Err(error),
                Either::Right(_) => Err(std::io::ErrorKind::TimedOut.into()),
            }
        }
    };
    ExecutorMetrics::sub(&metrics.connections_open, 1);
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection ended with an I/O error");
    }
}

/// Runs the listener's protocol on an accepted (and, with TLS, handshaken) connection.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    listener: Listener,
    context: &Rc<ExecutorContext>,
    peer: SocketAddr,
    socket: RawFd,
    stream: &mut S,
) -> std::io::Result<()> {
    match listener {
        Listener::Native => Connection::new(context, peer, socket).run(stream).await,
        Listener::Resp => crate::server::resp::RespConnection::new(context, peer).run(stream).await,
    }
}

struct Connection<'a> {
    context: &'a Rc<ExecutorContext>,
    /// Who is connected: the authentication state and the address the audit log records.
    session: Session,
    peer: SocketAddr,
    /// The TCP socket under the stream (TLS or not), for socket options.
    socket: RawFd,
    /// Until when a connection that is not authenticated may stay (servers with tokens only):
    /// set at accept and again when a reload revokes the session's token; cleared by a
    /// successful HELLO. It bounds reads and flushes alike.
    auth_deadline: Option<Instant>,
    input: InputBuffer,
    output: Output,
    /// Input bytes above this stop reading until in-flight writes drain.
    input_bytes_max: usize,
}

/// Why the connection stops taking requests before the client hangs up.
enum Closing {
    /// The byte stream broke framing; the error frame is in the output.
    Framing,
    /// A connection that is not authenticated sent too many refused requests.
    Refusals,
}

/// What ended a wait for the client.
pub(super) enum Woken {
    Read(std::io::Result<usize>),
    Finished(Option<WriteDone>),
    AuthDeadline,
}

impl<'a> Connection<'a> {
    fn new(context: &'a Rc<ExecutorContext>, peer: SocketAddr, socket: RawFd) -> Connection<'a> {
        Connection {
            context,
            session: context.authenticator.session(),
            peer,
            socket,
            auth_deadline: (!context.authenticator.is_open()).then(|| context.auth_deadline_from_now()),
            input: InputBuffer::new(READ_CHUNK_BYTES),
            output: Output::new(),
            input_bytes_max: 2 * context.store.limits().frame_bytes_max,
        }
    }

    /// The largest frame this connection may send now: until it authenticates, only small
    /// ones (a HELLO fits), so that connections without a token cannot hold much memory.
    fn frame_bytes_max(&self) -> usize {
        if self.session.is_authenticated() {
            self.context.store.limits().frame_bytes_max
        } else {
            UNAUTHENTICATED_FRAME_BYTES_MAX
        }
    }

    /// Prefetches the lookups of the GETs among the whole frames buffered (up to
    /// [`PREFETCH_IDS_MAX`]; [`Store::prefetch`](crate::data::Store::prefetch)), so that their
    /// cache misses overlap. Only for an authenticated session: the requests of others are
    /// refused unread.
    fn prefetch_gets(&self) {
        if !self.session.is_authenticated() {
            return;
        }
        // The bodies of the GET frames first: one GET alone (pipeline 1) is not decoded twice.
        let buffered = self.input.filled();
        let mut bodies = [(0, 0); PREFETCH_IDS_MAX];
        let mut gets = 0;
        let mut offset = 0;
        // At most this many frames are looked at, whatever they are: a client pipelining
        // thousands of other requests costs this scan a bounded amount per batch.
        for _ in 0..PREFETCH_SCAN_MAX {
            if gets == PREFETCH_IDS_MAX {
                break;
            }
            let Ok(Some(header)) = frame::check(&buffered[offset..], self.frame_bytes_max()) else { break };
            if header.code == Op::Get as u8 {
                let body = header.body_range();
                bodies[gets] = (offset + body.start, offset + body.end);
                gets += 1;
            }
            offset += header.frame_bytes;
        }
        if gets < 2 {
            return;
        }
        let limits = self.context.store.limits();
        let ids = bodies[..gets].iter().filter_map(|(start, end)| {
            match Request::decode(Op::Get as u8, &buffered[*start..*end], limits) {
                Ok(Request::Get(get)) => Some(get.id),
                _ => None,
            }
        });
        self.context.store.prefetch(ids);
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        let in_flight_max = self.context.config.in_flight_max;
        let mut pending = FuturesUnordered::new();
        let mut closing = None;
        // A WATCH, once taken: the connection becomes its stream.
        let mut watch = None;
        loop {
            wait_for_busy_audit(self.context).await;
            let mut took_requests = false;
            // The requests answered at once in this batch: their latency is recorded when
            // the batch's replies are ready (one clock read at each end of the batch).
            let mut batch = AnsweredBatch::start();
            self.prefetch_gets();
            while closing.is_none()
                && watch.is_none()
                && pending.len() < in_flight_max
                && self.output.bytes.len() < OUTPUT_PAUSE_BYTES
            {
                let header = match frame::check(self.input.filled(), self.frame_bytes_max()) {
                    Ok(Some(header)) => header,
                    Ok(None) => break,
                    Err(error) => {
                        self.reject_framing(error);
                        closing = Some(Closing::Framing);
                        break;
                    }
                };
                took_requests = true;
                let frame_bytes = header.frame_bytes;
                let mut caller = Caller { session: &mut self.session, peer: self.peer, batch: &mut batch };
                let frame = &self.input.filled()[..frame_bytes];
                let out = &mut self.output.bytes;
                let dispatched = match dispatch(self.context, &mut caller, header, frame, out) {
                    // A miss in a partial cache: this connection waits for the database read.
                    Dispatched::Miss(miss) => {
                        load_and_dispatch(self.context, &mut caller, header, frame, out, miss).await
                    }
                    dispatched => dispatched,
                };
                let waiting = match dispatched {
                    Dispatched::Miss(_) => unreachable!("load_and_dispatch answers misses"),
                    Dispatched::Watch => {
                        let body = &frame[header.body_range()];
                        let limits = self.context.store.limits();
                        let Ok(Request::Watch(request)) = Request::decode(header.code, body, limits) else {
                            unreachable!("dispatched as a WATCH")
                        };
                        watch = Some(WatchSpec::new(header.request_id, &request));
                        None
                    }
                    Dispatched::Answered { secret } => {
                        self.output.has_secret |= secret;
                        None
                    }
                    Dispatched::Pending { write, outcome } => Some((write, outcome)),
                    Dispatched::Forward { shard_id, write, received_at_ms } => {
                        let body = &self.input.filled()[header.body_range()];
                        let principal = Arc::clone(&write.principal);
                        let router = &self.context.router;
                        let outcome =
                            router.forward(shard_id, write.op, body, received_at_ms, principal).await;
                        caller.batch.waited();
                        Some((write, outcome))
                    }
                };
                if let Some((write, outcome)) = waiting {
                    pending.push(outcome.map(move |outcome| (write, outcome)));
                }
                // PUT and ROTATE frames carry plaintext secrets, HELLO frames tokens: wipe them as
                // they are consumed.
                self.input.consume(frame_bytes, Op::from_u8(header.code).is_some_and(Op::carries_secret));
                if self.session.unauthenticated_refusals() >= UNAUTHENTICATED_REFUSALS_MAX {
                    let message = "too many refused requests without authenticating; closing the connection";
                    encode_error(Status::Unauthorized, 0, 0, message, &mut self.output.bytes);
                    ExecutorMetrics::add(&self.context.metrics().connections_closed_refusals, 1);
                    closing = Some(Closing::Refusals);
                }
            }
            if took_requests {
                track_authentication(self.context, &self.session, &mut self.auth_deadline);
                batch.finish(self.context.metrics());
            }

            while let Some(Some(finished)) = pending.next().now_or_never() {
                self.answer_write(finished);
            }
            self.output.flush(stream, self.auth_deadline, self.context.metrics()).await?;

            if let Some(spec) = watch.take() {
                // The replies of everything before the WATCH go first.
                self.finish_pending(&mut pending, stream).await?;
                self.input.wipe();
                watch::limit_send_buffer(self.socket);
                return watch::serve(self.context, &mut self.session, spec, stream, &mut self.output).await;
            }
            if let Some(closing) = closing {
                if let Closing::Refusals = closing {
                    self.input.wipe();
                }
                self.finish_pending(&mut pending, stream).await?;
                return linger(stream).await;
            }
            // Let the executor's other connections run between large requests.
            glommio::yield_if_needed().await;
            // Writes that finished above may have made room under the in-flight limit for
            // frames that are already buffered: take those before waiting for the socket,
            // which may stay silent (the client has sent its whole pipeline).
            if pending.len() < in_flight_max && self.frame_buffered() {
                continue;
            }

            let may_read = self.input.len() < self.input_bytes_max || pending.is_empty();
            if !may_read {
                if let Some(finished) = pending.next().await {
                    self.answer_write(finished);
                }
                continue;
            }
            match wait(stream, &mut self.input, &mut pending, self.auth_deadline, self.context.metrics())
                .await
            {
                Woken::Finished(finished) => {
                    if let Some(finished) = finished {
                        self.answer_write(finished);
                    }
                }
                Woken::AuthDeadline => {
                    let message = "no successful HELLO in time; closing the connection";
                    encode_error(Status::Unauthorized, 0, 0, message, &mut self.output.bytes);
                    ExecutorMetrics::add(&self.context.metrics().unauthorized_total, 1);
                    ExecutorMetrics::add(&self.context.metrics().connections_timed_out, 1);
                    self.input.wipe();
                    self.output.flush(stream, self.auth_deadline, self.context.metrics()).await?;
                    return linger(stream).await;
                }
                Woken::Read(Ok(0)) => {
                    // The client finished sending, perhaps mid-frame: nothing partial is
                    // applied, and writes already under way are still answered (a client
                    // that half-closed can read them).
                    self.input.wipe();
                    return self.finish_pending(&mut pending, stream).await;
                }
                Woken::Read(Ok(read)) => self.input.commit(read),
                Woken::Read(Err(error)) if error.kind() == std::io::ErrorKind::TimedOut => {
                    // The socket's read timeout: nothing arrived for --idle-timeout-ms.
                    ExecutorMetrics::add(&self.context.metrics().connections_timed_out, 1);
                    self.input.wipe();
                    self.finish_pending(&mut pending, stream).await?;
                    let message = "idle for too long; closing the connection";
                    encode_error(Status::Unavailable, 0, 0, message, &mut self.output.bytes);
                    self.output.flush(stream, self.auth_deadline, self.context.metrics()).await?;
                    return linger(stream).await;
                }
                Woken::Read(Err(error)) => {
                    self.input.wipe();
                    return Err(error);
                }
            }
        }
    }

    /// Whether the input holds a whole frame, or the start of one that breaks framing: either
    /// way the request loop has something to take without reading.
    fn frame_buffered(&self) -> bool {
        !matches!(frame::check(self.input.filled(), self.frame_bytes_max()), Ok(None))
    }

    /// Waits for every write in flight, answers it, and flushes.
    async fn finish_pending<F, S>(
        &mut self,
        pending: &mut FuturesUnordered<F>,
        stream: &mut S,
    ) -> std::io::Result<()>
    where
        F: std::future::Future<Output = WriteDone>,
        S: AsyncWrite + Unpin,
    {
        while let Some(finished) = pending.next().await {
            self.answer_write(finished);
        }
        self.output.flush(stream, self.auth_deadline, self.context.metrics()).await
    }

    fn answer_write(&mut self, (write, outcome): WriteDone) {
        let outcome =
            outcome.unwrap_or(Err(OpError::Unavailable("the owning shard stopped before answering")));
        answer_write(self.context, self.peer, &write, outcome, &mut self.output.bytes);
    }

    fn reject_framing(&mut self, error: FrameError) {
        ExecutorMetrics::add(&self.context.metrics().frames_rejected, 1);
        let status = match error {
            FrameError::TooLarge { .. } => Status::TooLarge,
            FrameError::LengthTooSmall { .. } => Status::Malformed,
        };
        let message = format!("{error}; closing the connection");
        encode_error(status, error.request_id(), 0, &message, &mut self.output.bytes);
        self.input.wipe();
    }
}

/// The replies a connection has not sent yet, and whether they hold plaintext (then the buffer
/// is wiped once they are sent).
pub(super) struct Output {
    pub bytes: BytesMut,
    pub has_secret: bool,
}

impl Output {
    pub fn new() -> Output {
        Output { bytes: BytesMut::with_capacity(READ_CHUNK_BYTES), has_secret: false }
    }

    /// Sends the output. The socket's write timeout (--write-timeout-ms) ends a connection
    /// whose client does not read; the auth deadline bounds the flushes of one that is not
    /// authenticated too.
    pub async fn flush<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        auth_deadline: Option<Instant>,
        metrics: &ExecutorMetrics,
    ) -> std::io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let send = async {
            // A TLS stream buffers: flush pushes the records out.
            stream.write_all(&self.bytes).await?;
            stream.flush().await
        };
        let result = match auth_deadline {
            None => send.await,
            Some(deadline) => {
                let expired = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
                match select(pin!(send), pin!(expired)).await {
                    Either::Left((result, _)) => result,
                    Either::Right(_) => Err(std::io::ErrorKind::TimedOut.into()),
                }
            }
        };
        match &result {
            Ok(()) => ExecutorMetrics::add(&metrics.bytes_sent, self.bytes.len() as u64),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                ExecutorMetrics::add(&metrics.connections_timed_out, 1)
            }
            Err(_) => {}
        }
        if self.has_secret {
            self.bytes.zeroize();
            self.has_secret = false;
        }
        self.bytes.clear();
        if self.bytes.capacity() > OUTPUT_KEPT_BYTES_MAX {
            // A large reply (a BATCH_GET) is gone: do not keep its buffer for the connection's life.
            self.bytes = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
        result
    }
}

/// Waits until the client sends something (read into `input`, and counted), a write in flight
/// finishes, or the deadline of a connection that is not authenticated passes.
pub(super) async fn wait<S, F>(
    stream: &mut S,
    input: &mut InputBuffer,
    pending: &mut FuturesUnordered<F>,
    auth_deadline: Option<Instant>,
    metrics: &ExecutorMetrics,
) -> Woken
where
    S: AsyncRead + Unpin,
    F: std::future::Future<Output = WriteDone>,
{
    let read = stream.read(input.spare(READ_CHUNK_BYTES));
    let finished = async {
        if pending.is_empty() {
            std::future::pending().await
        } else {
            pending.next().await
        }
    };
    let expired = async move {
        match auth_deadline {
            Some(deadline) => glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await,
            None => std::future::pending().await,
        }
    };
    let (read, finished, expired) = (pin!(read), pin!(finished), pin!(expired));
    match select(select(read, finished), expired).await {
        Either::Left((Either::Left((read, _)), _)) => {
            if let Ok(bytes) = read {
                ExecutorMetrics::add(&metrics.bytes_received, bytes as u64);
            }
            Woken::Read(read)
        }
        Either::Left((Either::Right((finished, _)), _)) => Woken::Finished(finished),
        Either::Right(_) => Woken::AuthDeadline,
    }
}

/// While the executor's audit log is busy (written fine, but behind), waits for it to catch up
/// before the connection takes more requests: this connection, and every other, then slows
/// down to what the log can write instead of pushing it into its backlog, where every client
/// is refused.
pub(super) async fn wait_for_busy_audit(context: &ExecutorContext) {
    let Some(audit) = &context.audit else { return };
    if audit.is_busy() {
        ExecutorMetrics::add(&context.metrics().audit_waits, 1);
        while audit.is_busy() {
            glommio::timer::sleep(AUDIT_CATCH_UP_POLL).await;
        }
    }
}

/// Keeps a connection's auth deadline in step with its session after its requests: cleared
/// once it authenticates, armed again when a reload revoked its token, so that a revoked
/// connection does not live on.
pub(super) fn track_authentication(
    context: &ExecutorContext,
    session: &Session,
    auth_deadline: &mut Option<Instant>,
) {
    if context.authenticator.is_open() {
        return;
    }
    match (session.is_authenticated(), *auth_deadline) {
        (true, Some(_)) => *auth_deadline = None,
        (false, None) => *auth_deadline = Some(context.auth_deadline_from_now()),
        _ => {}
    }
}
