//! The RESP listener (`--resp-listen`): the Redis protocol, for the Redis clients every
//! language already has.
//!
//! It is a translation, not a second data path: each command becomes one or more native
//! requests ([`command`]), which go through the native [`dispatch`] (the same shards,
//! ACLs, audit log and encryption; writes forwarded to their shard and group-committed the
//! same way), and their native replies become the command's RESP reply. Replies leave in the
//! order the commands came (Redis clients match them by position), so a command whose write is
//! still being committed holds back the replies after it. Writes after it are still read and
//! started while it waits, so a pipeline of SETs is committed together; a command that reads
//! waits for the writes before it (a pipelined GET sees the SET before it, as in Redis).
//!
//! - [`parse`]: commands out of the input buffer, without copying.
//! - [`reply`]: RESP2 and RESP3 replies.
//! - [`command`]: the command table, the plan of each command, the translation of replies.

pub mod command;
pub mod parse;
pub mod reply;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use credshard_protocol::frame;
use credshard_protocol::op::batch_get::BATCH_IDS_MAX;
use credshard_protocol::op::Request;
use futures::channel::oneshot;
use futures::future::{join, ready, FutureExt, Join, Ready};
use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncWrite, StreamExt};
use zeroize::Zeroize;

use crate::auth::Session;
use crate::data::store::{PREFETCH_IDS_MAX, PREFETCH_SCAN_MAX};
use crate::error::{OpError, WriteOutcome};
use crate::metrics::{AnsweredBatch, ExecutorMetrics};
use crate::server::connection::{
    linger, track_authentication, wait, wait_for_busy_audit, Output, Woken, WriteDone, OUTPUT_KEPT_BYTES_MAX,
    OUTPUT_PAUSE_BYTES, READ_CHUNK_BYTES, UNAUTHENTICATED_FRAME_BYTES_MAX,
};
use crate::server::dispatch::{
    answer_write, dispatch, load_and_dispatch, refuse_before_authentication, Caller, Dispatched, WriteTicket,
    UNAUTHENTICATED_REFUSALS_MAX,
};
use crate::server::executor::ExecutorContext;
use crate::server::input::InputBuffer;
use command::{Args, Asker, Local, Plan, Shape};
use parse::{ParseError, ParseLimits};
use reply::{Protocol, Reply};

/// Arguments of one command: an MGET or DEL of the most ids a BATCH_GET takes, and then some.
const ARGS_MAX: usize = BATCH_IDS_MAX + 24;

/// Replies (native and RESP) the queued commands of one connection may hold before it stops
/// taking more: about 128 commands waiting behind writes (each slot reserves 8 KiB).
const QUEUED_BYTES_MAX: usize = 1 << 20;

/// Emptied slot buffers a connection keeps for reuse.
const SPARE_SLOTS_MAX: usize = 32;

/// A write in flight and the command slot it answers (its request id).
type PendingWrite = Join<Ready<WriteTicket>, oneshot::Receiver<WriteOutcome>>;

/// One command, from when it is read until its reply is written: its native replies
/// accumulate in `bytes` (or, for a [`Local`] reply, the RESP reply itself is there).
struct Slot {
    /// `None` when `bytes` is the RESP reply.
    shape: Option<Shape>,
    /// Native requests not answered yet (writes being committed).
    parts_left: usize,
    /// Whether the session was authenticated when the command was read.
    authenticated: bool,
    /// The protocol its reply is written in (HELLO changes it for the commands after it).
    protocol: Protocol,
    bytes: BytesMut,
    /// The capacity of `bytes` counted in the queue's `queued_bytes`.
    counted: usize,
}

/// Why the connection stops taking commands before the client hangs up.
enum Closing {
    /// A protocol error or too many refusals: the error is the last reply, then close.
    Refused,
    /// QUIT: answered `+OK`, then close.
    Quit,
}

pub struct RespConnection<'a> {
    context: &'a Rc<ExecutorContext>,
    /// As the native connection's: until when an unauthenticated connection may stay.
    auth_deadline: Option<Instant>,
    input: InputBuffer,
    output: Output,
    args: Vec<Range<usize>>,
    commands: Commands<'a>,
}

/// The state commands run against (apart from the input they are read from).
struct Commands<'a> {
    context: &'a Rc<ExecutorContext>,
    session: Session,
    peer: SocketAddr,
    protocol: Protocol,
    /// CLIENT SETNAME / HELLO SETNAME.
    name: Option<Box<[u8]>>,
    /// Native request frames are encoded here, and wiped after each (they may hold a secret).
    request: BytesMut,
    /// What a plan borrows beyond the command's arguments (see [`command::plan`]).
    scratch: BytesMut,
    /// Commands read and not yet answered, oldest first.
    queue: VecDeque<Slot>,
    /// The number of the queue's front command; each command's native requests carry its
    /// number as their request id, which is how a finished write finds its slot.
    front_seq: u32,
    /// Emptied slot buffers, for the next commands (at most [`SPARE_SLOTS_MAX`]).
    spare: Vec<BytesMut>,
    /// The capacity of the queued slots' buffers (a write's slot holds its buffer until it is
    /// committed): bounds what a client pipelining writes holds of the server's memory.
    queued_bytes: usize,
    /// The native requests answered at once in the batch of commands being taken.
    batch: AnsweredBatch,
}

impl<'a> RespConnection<'a> {
    pub fn new(context: &'a Rc<ExecutorContext>, peer: SocketAddr) -> RespConnection<'a> {
        RespConnection {
            context,
            auth_deadline: (!context.authenticator.is_open()).then(|| context.auth_deadline_from_now()),
            input: InputBuffer::new(READ_CHUNK_BYTES),
            output: Output::new(),
            args: Vec::new(),
            commands: Commands {
                context,
                session: context.authenticator.session(),
                peer,
                protocol: Protocol::Resp2,
                name: None,
                request: BytesMut::with_capacity(READ_CHUNK_BYTES),
                scratch: BytesMut::new(),
                queue: VecDeque::new(),
                front_seq: 0,
                spare: Vec::new(),
                queued_bytes: 0,
                batch: AnsweredBatch::start(),
            },
        }
    }

    /// The largest command this connection may send now: small ones until it authenticates.
    fn parse_limits(&self) -> ParseLimits {
        let command_bytes_max = if self.commands.session.is_authenticated() {
            self.context.store.limits().frame_bytes_max
        } else {
            UNAUTHENTICATED_FRAME_BYTES_MAX
        };
        ParseLimits { args_max: ARGS_MAX, command_bytes_max }
    }

    /// With two or more GETs among the whole commands buffered, starts loading what they will
    /// read ([`Store::prefetch`](crate::data::Store::prefetch)), as the native connection
    /// does, so that their cache misses overlap. Only for an authenticated session.
    fn prefetch_gets(&mut self) {
        if !self.commands.session.is_authenticated() {
            return;
        }
        let limits = self.parse_limits();
        let buffered = self.input.filled();
        let mut ids = [""; PREFETCH_IDS_MAX];
        let mut count = 0;
        let mut offset = 0;
        // At most this many commands are parsed ahead, whatever they are (see the native
        // connection's scan).
        for _ in 0..PREFETCH_SCAN_MAX {
            if count == PREFETCH_IDS_MAX {
                break;
            }
            let command = &buffered[offset..];
            let Ok(Some(taken)) = parse::parse(command, &limits, &mut self.args) else { break };
            if taken == 0 {
                break;
            }
            if let [name, key] = &self.args[..] {
                if command[name.clone()].eq_ignore_ascii_case(b"get") {
                    if let Ok(id) = std::str::from_utf8(&command[key.clone()]) {
                        ids[count] = id;
                        count += 1;
                    }
                }
            }
            offset += taken;
        }
        self.context.store.prefetch(ids[..count].iter().copied());
    }

    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        let in_flight_max = self.context.config.in_flight_max;
        let mut pending: FuturesUnordered<PendingWrite> = FuturesUnordered::new();
        let mut closing = None;
        loop {
            wait_for_busy_audit(self.context).await;
            let mut took_commands = false;
            self.commands.batch = AnsweredBatch::start();
            self.prefetch_gets();
            // A command that reads waits for the writes before it, as Redis clients expect: a
            // GET pipelined after a SET of the same key sees the SET.
            let mut after_writes = false;
            while closing.is_none()
                && self.commands.has_room(in_flight_max)
                && self.output.bytes.len() < OUTPUT_PAUSE_BYTES
            {
                let taken = match parse::parse(self.input.filled(), &self.parse_limits(), &mut self.args) {
                    Ok(Some(taken)) => taken,
                    Ok(None) => break,
                    Err(error) => {
                        self.reject_protocol(error);
                        closing = Some(Closing::Refused);
                        break;
                    }
                };
                if !pending.is_empty() && !self.args.is_empty() {
                    let name = &self.input.filled()[self.args[0].clone()];
                    if !command::find(name).is_some_and(command::Spec::writes) {
                        after_writes = true;
                        break;
                    }
                }
                took_commands = true;
                if !self.args.is_empty() {
                    let args = Args { input: self.input.filled(), ranges: &self.args };
                    if self.commands.execute(args, &mut pending).await {
                        closing = Some(Closing::Quit);
                    }
                }
                // Commands may carry secrets (SET, AUTH): every consumed byte is wiped.
                self.input.consume(taken, true);
                if self.commands.session.unauthenticated_refusals() >= UNAUTHENTICATED_REFUSALS_MAX {
                    let message = "too many refused commands without authenticating; closing the connection";
                    self.commands.push_local(&Local::error("NOAUTH", message));
                    ExecutorMetrics::add(&self.context.metrics().connections_closed_refusals, 1);
                    closing = Some(Closing::Refused);
                }
            }
            if took_commands {
                track_authentication(self.context, &self.commands.session, &mut self.auth_deadline);
                self.commands.batch.finish(self.context.metrics());
            }
            while let Some(Some(finished)) = pending.next().now_or_never() {
                self.commands.answer_write(finished);
            }
            self.commands.drain(&mut self.output);
            self.output.flush(stream, self.auth_deadline, self.context.metrics()).await?;

            if let Some(closing) = closing {
                self.input.wipe();
                while let Some(finished) = pending.next().await {
                    self.commands.answer_write(finished);
                }
                self.commands.drain(&mut self.output);
                self.output.flush(stream, self.auth_deadline, self.context.metrics()).await?;
                return match closing {
                    Closing::Refused => linger(stream).await,
                    Closing::Quit => futures::AsyncWriteExt::close(stream).await,
                };
            }
            glommio::yield_if_needed().await;
            if after_writes {
                if let Some(finished) = pending.next().await {
                    self.commands.answer_write(finished);
                }
                continue;
            }
            if self.commands.has_room(in_flight_max) && self.command_buffered() {
                continue;
            }
            let input_bytes_max = 2 * self.context.store.limits().frame_bytes_max;
            if self.input.len() >= input_bytes_max && !pending.is_empty() {
                if let Some(finished) = pending.next().await {
                    self.commands.answer_write(finished);
                }
                continue;
            }
            match wait(stream, &mut self.input, &mut pending, self.auth_deadline, self.context.metrics())
                .await
            {
                Woken::Finished(finished) => {
                    if let Some(finished) = finished {
                        self.commands.answer_write(finished);
                    }
                }
                Woken::AuthDeadline => {
                    let message = "no successful AUTH in time; closing the connection";
                    self.commands.push_local(&Local::error("NOAUTH", message));
                    ExecutorMetrics::add(&self.context.metrics().unauthorized_total, 1);
                    ExecutorMetrics::add(&self.context.metrics().connections_timed_out, 1);
                    self.input.wipe();
                    self.commands.drain(&mut self.output);
                    self.output.flush(stream, self.auth_deadline, self.context.metrics()).await?;
                    return linger(stream).await;
                }
                Woken::Read(Ok(0)) => {
                    // The client finished sending: commands under way are still answered.
                    self.input.wipe();
                    while let Some(finished) = pending.next().await {
                        self.commands.answer_write(finished);
                    }
                    self.commands.drain(&mut self.output);
                    return self.output.flush(stream, self.auth_deadline, self.context.metrics()).await;
                }
                Woken::Read(Ok(read)) => self.input.commit(read),
                Woken::Read(Err(error)) if error.kind() == std::io::ErrorKind::TimedOut => {
                    ExecutorMetrics::add(&self.context.metrics().connections_timed_out, 1);
                    self.input.wipe();
                    while let Some(finished) = pending.next().await {
                        self.commands.answer_write(finished);
                    }
                    self.commands
                        .push_local(&Local::error("ERR", "idle for too long; closing the connection"));
                    self.commands.drain(&mut self.output);
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

    /// Whether the input holds a whole command, or bytes that break the protocol.
    fn command_buffered(&mut self) -> bool {
        !matches!(parse::parse(self.input.filled(), &self.parse_limits(), &mut self.args), Ok(None))
    }

    fn reject_protocol(&mut self, error: ParseError) {
        ExecutorMetrics::add(&self.context.metrics().frames_rejected, 1);
        ExecutorMetrics::add(&self.context.metrics().errors_total, 1);
        self.commands.push_local(&Local::error("ERR", error.to_string()));
        self.input.wipe();
    }
}

impl Commands<'_> {
    /// Starts the command in `args`: answered at once, or its native requests dispatched
    /// (writes then finish later). Returns true for QUIT.
    async fn execute(&mut self, args: Args<'_>, pending: &mut FuturesUnordered<PendingWrite>) -> bool {
        let seq = self.next_seq();
        let context = self.context;
        // Counted as the native requests it becomes (by dispatch); errors made here are counted here.
        let Some(spec) = command::find(args.get(0)) else {
            ExecutorMetrics::add(&context.metrics().errors_total, 1);
            let name = String::from_utf8_lossy(&args.get(0)[..args.get(0).len().min(64)]).into_owned();
            // The arguments are not echoed: a mistyped command may carry a secret.
            let message = format!(
                "unknown command '{}' (COMMAND LIST names the supported ones)",
                name.escape_default()
            );
            self.push_local(&Local::error("ERR", message));
            return false;
        };
        if !command::arity_fits(spec, args.len()) {
            ExecutorMetrics::add(&context.metrics().errors_total, 1);
            self.push_local(&command::wrong_arity(spec));
            return false;
        }
        let authenticated = self.session.principal(&context.authenticator).is_some();
        if !authenticated && !command::allowed_before_auth(spec) {
            let id = (spec.first_key == 1 && args.len() > 1)
                .then(|| std::str::from_utf8(args.get(1)).ok())
                .flatten();
            let mut slot = self.slot(Some(Shape::Refused), false);
            let mut caller = Caller { session: &mut self.session, peer: self.peer, batch: &mut self.batch };
            refuse_before_authentication(context, &mut caller, spec.op, id, seq, &mut slot.bytes);
            self.enqueue(slot);
            return false;
        }
        // SET keeps a live credential's owner, scope and kind, which it reads from the shard
        // before its PUT is made: a credential a partial cache does not hold is read first.
        if spec.name == "set" && args.len() > 1 {
            if let Ok(id) = std::str::from_utf8(args.get(1)) {
                let mut unread = None;
                for _ in 0..crate::server::dispatch::MISS_TRIES {
                    if !context.store.may_exist_uncached(id) {
                        unread = None;
                        break;
                    }
                    let loaded = context.router.load(&context.store, vec![id.into()]).await;
                    self.batch.waited();
                    match loaded {
                        Ok(read) if !read.absent.is_empty() => {
                            unread = None;
                            break;
                        }
                        Ok(_) => {
                            unread =
                                Some(OpError::Unavailable("the credential could not be held in the cache"))
                        }
                        Err(error) => {
                            unread = Some(error);
                            break;
                        }
                    }
                }
                // Without the credential's state the SET would give it a new owner and scope:
                // refused instead (a retry may succeed).
                if let Some(error) = unread {
                    ExecutorMetrics::add(&context.metrics().errors_total, 1);
                    self.push_local(&Local::error(error.status().name(), error.message().to_owned()));
                    return false;
                }
            }
        }
        // Only SET looks at the token before its request is dispatched.
        let principal =
            if spec.name == "set" { self.session.principal(&context.authenticator).cloned() } else { None };
        let asker = Asker { context, principal: principal.as_deref(), now_ms: crate::time::now_ms() };
        let mut scratch = std::mem::take(&mut self.scratch);
        let plan = command::plan(spec, args, &asker, &mut scratch);
        let mut slot = self.slot(None, authenticated);
        let quit = match plan {
            Plan::Local(local) => {
                let quit = matches!(local, Local::Quit);
                let mut reply = Reply { out: &mut slot.bytes, protocol: slot.protocol };
                command::write_local(&local, context, &mut self.name, &mut reply);
                quit
            }
            Plan::Native(shape, request) => {
                self.submit(seq, &request, &mut slot, pending).await;
                if let Shape::Hello { protocol, name, .. } = &shape {
                    // HELLO is answered at once: its protocol holds from its own reply on.
                    if slot.parts_left == 0
                        && slot.bytes.get(frame::LENGTH_BYTES)
                            == Some(&(credshard_protocol::Status::Ok as u8))
                    {
                        if let Some(protocol) = protocol {
                            self.protocol = *protocol;
                            slot.protocol = *protocol;
                        }
                        if name.is_some() {
                            self.name.clone_from(name);
                        }
                    }
                }
                slot.shape = Some(shape);
                false
            }
            Plan::PerKey(shape, op) => {
                for index in 1..args.len() {
                    let id = std::str::from_utf8(args.get(index)).expect("checked by the plan");
                    self.submit(seq, &command::per_key_request(op, id), &mut slot, pending).await;
                }
                slot.shape = Some(shape);
                false
            }
        };
        scratch.clear();
        self.scratch = scratch;
        self.enqueue(slot);
        quit
    }

    /// Puts a command's slot at the back of the queue.
    fn enqueue(&mut self, mut slot: Slot) {
        slot.counted = slot.bytes.capacity();
        self.queued_bytes += slot.counted;
        self.queue.push_back(slot);
    }

    /// Whether another command may be taken: the queue holds fewer than `in_flight_max`
    /// commands and less than [`QUEUED_BYTES_MAX`] of their replies.
    fn has_room(&self, in_flight_max: usize) -> bool {
        self.queue.len() < in_flight_max && self.queued_bytes < QUEUED_BYTES_MAX
    }

    /// The number the next command read gets.
    fn next_seq(&self) -> u32 {
        self.front_seq.wrapping_add(self.queue.len() as u32)
    }

    fn slot(&mut self, shape: Option<Shape>, authenticated: bool) -> Slot {
        let bytes = self.spare.pop().unwrap_or_default();
        Slot { shape, parts_left: 0, authenticated, protocol: self.protocol, bytes, counted: 0 }
    }

    /// Queues a reply made here (an error, a refusal).
    fn push_local(&mut self, local: &Local<'_>) {
        let mut slot = self.slot(None, self.session.is_authenticated());
        let mut reply = Reply { out: &mut slot.bytes, protocol: slot.protocol };
        command::write_local(local, self.context, &mut self.name, &mut reply);
        self.enqueue(slot);
    }

    /// Dispatches one native request of command `seq`; its reply lands in `slot` now (reads)
    /// or when its write is committed.
    async fn submit(
        &mut self,
        seq: u32,
        request: &Request<'_>,
        slot: &mut Slot,
        pending: &mut FuturesUnordered<PendingWrite>,
    ) {
        self.request.clear();
        request.encode(seq, &mut self.request);
        let header = frame::check(&self.request, usize::MAX).expect("a frame just encoded").expect("whole");
        let mut caller = Caller { session: &mut self.session, peer: self.peer, batch: &mut self.batch };
        let context = self.context;
        let dispatched = match dispatch(context, &mut caller, header, &self.request, &mut slot.bytes) {
            Dispatched::Miss(miss) => {
                load_and_dispatch(context, &mut caller, header, &self.request, &mut slot.bytes, miss).await
            }
            dispatched => dispatched,
        };
        match dispatched {
            Dispatched::Miss(_) => unreachable!("load_and_dispatch answers misses"),
            Dispatched::Watch => unreachable!("no Redis command translates to WATCH"),
            Dispatched::Answered { .. } => {}
            Dispatched::Pending { write, outcome } => {
                pending.push(join(ready(write), outcome));
                slot.parts_left += 1;
            }
            Dispatched::Forward { shard_id, write, received_at_ms } => {
                let body = &self.request[header.body_range()];
                let principal = Arc::clone(&write.principal);
                let outcome =
                    context.router.forward(shard_id, write.op, body, received_at_ms, principal).await;
                caller.batch.waited();
                pending.push(join(ready(write), outcome));
                slot.parts_left += 1;
            }
        }
        self.request.zeroize();
    }

    /// Puts a finished write's native reply into its command's slot.
    fn answer_write(&mut self, (write, outcome): WriteDone) {
        let outcome =
            outcome.unwrap_or(Err(OpError::Unavailable("the owning shard stopped before answering")));
        let index = write.request_id.wrapping_sub(self.front_seq) as usize;
        let slot = &mut self.queue[index];
        answer_write(self.context, self.peer, &write, outcome, &mut slot.bytes);
        slot.parts_left -= 1;
        // The reply may have grown the buffer.
        self.queued_bytes = self.queued_bytes - slot.counted + slot.bytes.capacity();
        slot.counted = slot.bytes.capacity();
    }

    /// Writes the replies of the commands at the front that are wholly answered, in order.
    fn drain(&mut self, output: &mut Output) {
        while self.queue.front().is_some_and(|slot| slot.parts_left == 0) {
            let mut slot = self.queue.pop_front().expect("checked");
            self.queued_bytes -= slot.counted;
            self.front_seq = self.front_seq.wrapping_add(1);
            match &slot.shape {
                None => {
                    crate::wipe::reserve(&mut output.bytes, slot.bytes.len());
                    output.bytes.put_slice(&slot.bytes);
                }
                Some(shape) => {
                    output.has_secret |= matches!(shape, Shape::Bulk | Shape::Mget);
                    let mut reply = Reply { out: &mut output.bytes, protocol: slot.protocol };
                    command::translate(shape, &slot.bytes, slot.authenticated, self.context, &mut reply);
                }
            }
            // Native replies of reads hold plaintext.
            slot.bytes.zeroize();
            slot.bytes.clear();
            if slot.bytes.capacity() <= OUTPUT_KEPT_BYTES_MAX && self.spare.len() < SPARE_SLOTS_MAX {
                self.spare.push(slot.bytes);
            }
        }
    }
}
