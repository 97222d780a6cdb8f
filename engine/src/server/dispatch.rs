//! One request frame in, one response frame out (or a write forwarded to another shard).
//! Reads are answered here, synchronously, straight from the owning shard's map.
//!
//! Every request is checked against the session's principal: nothing but HELLO before it
//! authenticates, then only the ops its ACL grants, on the credentials it covers. Requests
//! that touch a credential, and every refusal, are recorded in the executor's audit log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use credshard_protocol::frame::{self, Header};
use credshard_protocol::op::hello::{HelloReply, PROTOCOL_VERSION};
use credshard_protocol::op::keys::{RekeyReply, RekeyRequest, RotateKeyReply};
use credshard_protocol::op::stats::StatsReply;
use credshard_protocol::op::{encode_error, Request};
use credshard_protocol::{Op, Status};
use futures::channel::oneshot;
use zeroize::Zeroizing;

use crate::audit::AuditEvent;
use crate::auth::{Principal, Session};
use crate::crypto::{Argon2Cost, KeySource, MasterKey};
use crate::error::EngineError;
use crate::error::OpError;
use crate::error::WriteOutcome;
use crate::metrics::{AnsweredBatch, ExecutorMetrics};
use crate::server::executor::ExecutorContext;
use crate::time::now_ms;

/// Room made in the reply buffer before any request: more than any reply but those of GET,
/// BATCH_GET, LIST and PING (an error frame with its longest message, STATS, HELLO, a write's
/// version).
const REPLY_HEADROOM_BYTES: usize = 8 * 1024;

/// The token id audited for requests made before authenticating.
const ANONYMOUS: &str = "-";

/// Refused requests of a connection that is not authenticated that the audit log records;
/// later ones are only counted (STATS `unauthorized_total`), so that a client without a token
/// costs the audit log a small, bounded amount however much it sends. The connection closes
/// it after [`UNAUTHENTICATED_REFUSALS_MAX`] refusals.
pub const UNAUTHENTICATED_REFUSALS_AUDITED: u32 = 1;

/// Refused requests after which a connection that is not authenticated is closed.
pub const UNAUTHENTICATED_REFUSALS_MAX: u32 = 16;

/// What became of a request.
pub enum Dispatched {
    /// The response is in the output buffer; `secret` says whether it holds plaintext.
    Answered { secret: bool },
    /// A write applied to this executor's shard: its outcome arrives once it is committed.
    Pending { write: WriteTicket, outcome: oneshot::Receiver<WriteOutcome> },
    /// A write for another shard: forward the frame's body to `shard_id`'s executor.
    Forward { shard_id: usize, write: WriteTicket, received_at_ms: u64 },
    /// A read that needs the database first (a partial cache): nothing is in the output yet;
    /// [`load_and_dispatch`] reads what is missing and answers.
    Miss(Miss),
    /// A WATCH, allowed and audited: nothing is in the output yet; the connection answers it
    /// and becomes the stream (`server::watch`).
    Watch,
}

/// What a read found missing from a partial cache.
#[derive(Debug)]
pub enum Miss {
    /// Credentials its shards do not hold (they may exist).
    Ids(Vec<Box<str>>),
    /// A LIST: its page comes from the database.
    List,
}

/// What was read from the database for a request that missed, when it is dispatched again.
#[derive(Debug, Default)]
struct Fetched {
    /// Not the first dispatch of this request (it is counted once).
    again: bool,
    /// Ids the database does not have: a miss on one of them is NOT_FOUND.
    absent: Vec<Box<str>>,
    /// The others, as read: served from here if their shard evicted them again meanwhile.
    found: Vec<(Box<str>, Arc<crate::data::Entry>)>,
    /// A LIST's page.
    list: Option<crate::data::ListPage>,
    /// Why the database could not be read: the answer to a miss.
    failure: Option<OpError>,
}

impl Fetched {
    fn was_read(&self, id: &str) -> bool {
        self.absent.iter().any(|gone| &**gone == id) || self.found.iter().any(|(read, _)| &**read == id)
    }
}

/// Reads of a request that keep missing (what was read is evicted again before the request is
/// served again) before it is answered UNAVAILABLE.
pub(crate) const MISS_TRIES: usize = 4;

/// A write on its way: what its answer, and its audit entry, need to know.
pub struct WriteTicket {
    pub op: Op,
    pub request_id: u32,
    pub principal: Arc<Principal>,
    /// Whether the answer is audited (the audit log is on).
    pub audited: bool,
    /// The credential id, kept only when the audit log is on (none for the key ops).
    pub audit_id: Option<Box<str>>,
    /// When the request's bytes were read (its latency is counted from there).
    pub received_at: Instant,
}

/// Who sent a request, as the audit log records it, and the batch it was read in (whose
/// latency the connection records once its replies are ready).
pub struct Caller<'a> {
    pub session: &'a mut Session,
    pub peer: SocketAddr,
    pub batch: &'a mut AnsweredBatch,
}

/// Handles the request in `frame` (a whole frame, header included), and counts it (by op,
/// status and latency) once it is answered.
pub fn dispatch(
    context: &ExecutorContext,
    caller: &mut Caller<'_>,
    header: Header,
    frame: &[u8],
    out: &mut BytesMut,
) -> Dispatched {
    dispatch_fetched(context, caller, header, frame, out, &Fetched::default())
}

/// [`dispatch`] with what was read from the database for an earlier miss of this request.
fn dispatch_fetched(
    context: &ExecutorContext,
    caller: &mut Caller<'_>,
    header: Header,
    frame: &[u8],
    out: &mut BytesMut,
    fetched: &Fetched,
) -> Dispatched {
    let start = out.len();
    let dispatched = dispatch_request(context, caller, header, frame, out, fetched);
    if let Dispatched::Answered { .. } = dispatched {
        count_answer(context, header.code, out, start);
        caller.batch.add(header.code);
    }
    dispatched
}

/// Counts the request of op `op_code` whose reply frame begins at `start` in `out`.
fn count_answer(context: &ExecutorContext, op_code: u8, out: &[u8], start: usize) {
    let status = out.get(start + frame::LENGTH_BYTES).copied().unwrap_or(Status::Internal as u8);
    context.metrics().count_request(op_code, status);
}

fn dispatch_request(
    context: &ExecutorContext,
    caller: &mut Caller<'_>,
    header: Header,
    frame: &[u8],
    out: &mut BytesMut,
    fetched: &Fetched,
) -> Dispatched {
    let metrics = context.metrics();
    if !fetched.again {
        ExecutorMetrics::add(&metrics.requests_total, 1);
    }
    let request_id = header.request_id;
    let body = &frame[header.body_range()];
    // The reply buffer may hold secrets of earlier replies: it grows only by wiping moves.
    // Ops whose replies can be larger (GET, BATCH_GET, LIST, PING) reserve more themselves.
    crate::wipe::reserve(out, REPLY_HEADROOM_BYTES);
    let now_ms = caller.batch.now_ms();
    let auditor = Auditor { context, peer: caller.peer, now_ms };
    let decoded = Request::decode(header.code, body, context.store.limits());
    // Before authentication every known op but HELLO is refused as such, before anything else
    // is checked: a client without a valid token learns nothing from the server's answers,
    // not even whether its request would decode (docs/protocol.md, §8.7).
    let unauthenticated_op = Op::from_u8(header.code)
        .filter(|op| *op != Op::Hello && caller.session.principal(&context.authenticator).is_none());
    if let Some(op) = unauthenticated_op {
        let id = decoded.as_ref().ok().and_then(Request::id);
        return refuse_unauthenticated(context, caller, &auditor, op, id, request_id, out);
    }
    let request = match decoded {
        Ok(request) => request,
        Err(error) => {
            ExecutorMetrics::add(&metrics.errors_total, 1);
            encode_error(error.status(), request_id, 0, &error.to_string(), out);
            return Dispatched::Answered { secret: false };
        }
    };
    let op = request.op();
    if context.audit.as_ref().is_some_and(|audit| audit.is_backlogged()) && op != Op::Ping {
        // Fail closed: nothing is served that cannot be audited.
        let error = OpError::Unavailable("the audit log cannot be written; requests resume when it can");
        return refuse(context, error, request_id, out);
    }
    if let Request::Hello(hello) = &request {
        return answer_hello(context, caller, &auditor, hello.protocol_version, hello.token, request_id, out);
    }
    // Borrowed, not cloned: every connection of a token shares its `Arc`, and touching the
    // count on every read would bounce its cache line between cores. (Checked above; a reload
    // on another thread may have revoked the token since.)
    // Resolved once: a reload on another executor may revoke the token at any moment.
    let principal = match caller.session.principal(&context.authenticator) {
        Some(principal) => principal,
        None => return refuse_unauthenticated(context, caller, &auditor, op, request.id(), request_id, out),
    };
    if !principal.acl.allows_op(op) {
        auditor.record(&principal.id, &request, None, Status::Unauthorized);
        return refuse(context, OpError::Unauthorized("this token may not use this op"), request_id, out);
    }

    if let Request::RotateKey | Request::Rekey(_) = &request {
        return key_admin(
            context,
            caller.peer,
            caller.batch.received_at(),
            &request,
            principal,
            request_id,
            out,
        );
    }
    if let Request::Watch(_) = &request {
        auditor.record(&principal.id, &request, None, Status::Ok);
        return Dispatched::Watch;
    }
    if op.is_write() {
        ExecutorMetrics::add(&metrics.writes_total, 1);
        let id = request.id().expect("writes name a credential");
        let write = WriteTicket {
            op,
            request_id,
            principal: Arc::clone(principal),
            audited: context.audit.is_some(),
            audit_id: context.audit.is_some().then(|| id.into()),
            received_at: caller.batch.received_at(),
        };
        let shard_id = context.store.shard_for(id);
        if shard_id != context.router.shard_id() {
            ExecutorMetrics::add(&metrics.writes_forwarded, 1);
            return Dispatched::Forward { shard_id, write, received_at_ms: now_ms };
        }
        if context.router.through_database() {
            return Dispatched::Forward { shard_id, write, received_at_ms: now_ms };
        }
        let (reply, outcome) = oneshot::channel();
        context.router.write(&request, now_ms, &write.principal.acl, reply);
        return Dispatched::Pending { write, outcome };
    }

    let acl = &principal.acl;
    let start = frame::begin(out, Status::Ok as u8, request_id);
    let result = match &request {
        Request::Ping(payload) => {
            crate::wipe::reserve(out, payload.len());
            out.put_slice(payload);
            Ok(None)
        }
        Request::Get(get) => {
            count_read(context, fetched, 1);
            let read = context.store.get_fetched(get, now_ms, acl, out, &fetched.found);
            match hit_or_miss(context, fetched, get.id, read) {
                Some(result) => result,
                None => {
                    frame::abandon(out, start);
                    return Dispatched::Miss(Miss::Ids(vec![get.id.into()]));
                }
            }
        }
        Request::GetMeta(get_meta) => {
            count_read(context, fetched, 1);
            let read = context.store.get_meta_fetched(get_meta, now_ms, acl, out, &fetched.found);
            match hit_or_miss(context, fetched, get_meta.id, read) {
                Some(result) => result,
                None => {
                    frame::abandon(out, start);
                    return Dispatched::Miss(Miss::Ids(vec![get_meta.id.into()]));
                }
            }
        }
        Request::GetPolicy(get_policy) => {
            count_read(context, fetched, 1);
            let read = context.store.get_policy_fetched(get_policy, now_ms, acl, out, &fetched.found);
            match hit_or_miss(context, fetched, get_policy.id, read) {
                Some(result) => result,
                None => {
                    frame::abandon(out, start);
                    return Dispatched::Miss(Miss::Ids(vec![get_policy.id.into()]));
                }
            }
        }
        Request::BatchGet(batch) => {
            count_read(context, fetched, batch.len() as u64);
            let missing = match context.store.shard_capacity() {
                Some(_) => context.store.uncached(batch.ids(), &fetched.absent, &fetched.found),
                None => Vec::new(),
            };
            match (missing.is_empty(), fetched.failure) {
                (false, Some(error)) => Err(error),
                (false, None) => {
                    count_hits(context, fetched, (batch.len() - missing.len()) as u64);
                    frame::abandon(out, start);
                    return Dispatched::Miss(Miss::Ids(unread_ids(batch, fetched)));
                }
                (true, _) => {
                    let reply_bytes_max = context.config.batch_reply_bytes_max;
                    let record_item = |id: &str, result: &Result<u64, OpError>| {
                        let (version, status) = match result {
                            Ok(version) => (Some(*version), Status::Ok),
                            Err(error) => (None, error.status()),
                        };
                        if status == Status::Unauthorized {
                            ExecutorMetrics::add(&metrics.unauthorized_total, 1);
                        }
                        if let Err(error) = result {
                            note_internal(context, id, error);
                        }
                        auditor.record_id(&principal.id, op, id, version, status);
                    };
                    if context.store.shard_capacity().is_none() {
                        let secret = context.store.batch_get(
                            batch,
                            now_ms,
                            acl,
                            out,
                            reply_bytes_max,
                            &[],
                            record_item,
                        );
                        frame::finish(out, start);
                        return Dispatched::Answered { secret };
                    }
                    // A bounded cache: an id evicted between the check above and its read is
                    // read from the database, and the request answered again (nothing of this
                    // attempt is audited or counted).
                    let mut outcomes: Vec<Result<u64, OpError>> = Vec::with_capacity(batch.len());
                    let secret = context.store.batch_get(
                        batch,
                        now_ms,
                        acl,
                        out,
                        reply_bytes_max,
                        &fetched.found,
                        |_, result| {
                            outcomes.push(*result);
                        },
                    );
                    let results: Vec<(&str, Result<u64, OpError>)> = batch.ids().zip(outcomes).collect();
                    let late = results.iter().any(|(id, result)| {
                        *result == Err(OpError::NotFound) && may_miss(context, fetched, id)
                    });
                    if late && fetched.failure.is_none() {
                        frame::abandon(out, start);
                        return Dispatched::Miss(Miss::Ids(unread_ids(batch, fetched)));
                    }
                    count_hits(context, fetched, batch.len() as u64);
                    for (id, result) in &results {
                        record_item(id, result);
                    }
                    frame::finish(out, start);
                    return Dispatched::Answered { secret };
                }
            }
        }
        Request::List(list) => {
            count_read(context, fetched, 1);
            let owner = Some(list.owner).filter(|owner| !owner.is_empty());
            let scope = Some(list.scope).filter(|scope| !scope.is_empty());
            if !acl.covers_list(owner, scope) {
                Err(OpError::Unauthorized("this token may not list beyond its owners and scope prefixes"))
            } else if !context.store.is_partial() {
                let listed = context.store.list(list, now_ms, out).map(|()| None);
                if context.store.is_partial() {
                    // A shard evicted for the first time while the page was read: the page
                    // may lack what it evicted. It comes from the database instead.
                    frame::abandon(out, start);
                    return Dispatched::Miss(Miss::List);
                }
                listed
            } else {
                // A partial cache cannot list: the page comes from the database's indexes.
                match (&fetched.list, fetched.failure) {
                    (Some(page), _) => context.store.list_page(list, page, out).map(|()| None),
                    (None, Some(error)) => Err(error),
                    (None, None) => {
                        frame::abandon(out, start);
                        return Dispatched::Miss(Miss::List);
                    }
                }
            }
        }
        Request::Stats => {
            encode_stats(context, out);
            Ok(None)
        }
        Request::Hello(_)
        | Request::Put(_)
        | Request::Delete(_)
        | Request::Undelete(_)
        | Request::Destroy(_)
        | Request::Rotate(_)
        | Request::Stage(_)
        | Request::Promote(_)
        | Request::Watch(_)
        | Request::SetPolicy(_)
        | Request::RotateKey
        | Request::Rekey(_) => {
            unreachable!("handled above")
        }
    };
    if let (Err(error), Some(id)) = (&result, request.id()) {
        note_internal(context, id, error);
    }
    let (version, status) = audited_outcome(&result);
    if !matches!(request, Request::Ping(_) | Request::Stats) {
        auditor.record(&principal.id, &request, version, status);
    }
    match result {
        Ok(_) => {
            frame::finish(out, start);
            Dispatched::Answered { secret: matches!(request, Request::Get(_)) }
        }
        Err(error) => {
            frame::abandon(out, start);
            encode_op_error(context, error, request_id, out);
            Dispatched::Answered { secret: false }
        }
    }
}

/// Counts a read (of `ids` credentials) once, on its first dispatch.
fn count_read(context: &ExecutorContext, fetched: &Fetched, ids: u64) {
    if !fetched.again {
        ExecutorMetrics::add(&context.metrics().reads_total, ids);
    }
}

/// Counts credentials read from a bounded cache without asking the database, on a read's
/// first dispatch.
fn count_hits(context: &ExecutorContext, fetched: &Fetched, ids: u64) {
    if !fetched.again && context.store.shard_capacity().is_some() {
        ExecutorMetrics::add(&context.metrics().cache_hits, ids);
    }
}

/// The ids of a BATCH_GET that missed, to read: all it names that were not read for it yet
/// (not only the missing ones), so that its next dispatch is served from what was read even
/// if the cache evicts any of them meanwhile.
fn unread_ids(
    batch: &credshard_protocol::op::batch_get::BatchGetRequest<'_>,
    fetched: &Fetched,
) -> Vec<Box<str>> {
    let mut unread: Vec<Box<str>> = Vec::new();
    for id in batch.ids() {
        if !fetched.was_read(id) && !unread.iter().any(|seen| &**seen == id) {
            unread.push(id.into());
        }
    }
    unread
}

/// What a read of one credential answers: its result (counted as a hit), or `None` when it
/// missed in a partial cache and must ask the database first (or, when the database could not
/// be read, that failure).
fn hit_or_miss(
    context: &ExecutorContext,
    fetched: &Fetched,
    id: &str,
    read: Result<u64, OpError>,
) -> Option<Result<Option<u64>, OpError>> {
    match read {
        Err(OpError::NotFound) if may_miss(context, fetched, id) => fetched.failure.map(Err),
        read => {
            count_hits(context, fetched, 1);
            Some(read.map(Some))
        }
    }
}

/// Whether a read that found `id` missing must ask the database (a partial cache that may
/// not hold it, and the database has not said it is absent).
fn may_miss(context: &ExecutorContext, fetched: &Fetched, id: &str) -> bool {
    !fetched.was_read(id) && context.store.may_exist_uncached(id)
}

/// Serves a request that missed (see [`Dispatched::Miss`]): reads what it needs from the
/// database (through the owning shards, see `Router::load`), then dispatches it again. A
/// database that cannot be read makes the answer that error (audited and counted like any
/// other); a request whose credentials keep being evicted before it is served is answered
/// UNAVAILABLE after [`MISS_TRIES`] reads. Returns what [`dispatch`] returns, never `Miss`.
pub async fn load_and_dispatch(
    context: &ExecutorContext,
    caller: &mut Caller<'_>,
    header: Header,
    frame: &[u8],
    out: &mut BytesMut,
    miss: Miss,
) -> Dispatched {
    let mut fetched = Fetched { again: true, ..Fetched::default() };
    let mut miss = miss;
    for _ in 0..MISS_TRIES {
        let read = match miss {
            Miss::Ids(ids) => context.router.load(&context.store, ids).await.map(|read| {
                fetched.absent.extend(read.absent);
                fetched.found.extend(read.found);
            }),
            Miss::List => list_page(context, header, frame).await.map(|page| fetched.list = Some(page)),
        };
        caller.batch.waited();
        if let Err(error) = read {
            fetched.failure = Some(error);
        }
        match dispatch_fetched(context, caller, header, frame, out, &fetched) {
            Dispatched::Miss(again) => miss = again,
            dispatched => return dispatched,
        }
    }
    fetched.failure = Some(OpError::Unavailable("the cache is too small to hold this request's credentials"));
    dispatch_fetched(context, caller, header, frame, out, &fetched)
}

/// A LIST page from the database, for the LIST request in `frame`.
async fn list_page(
    context: &ExecutorContext,
    header: Header,
    frame: &[u8],
) -> Result<crate::data::ListPage, OpError> {
    let Some(database) = &context.database else {
        return Err(OpError::Internal("a partial cache without a database"));
    };
    let body = &frame[header.body_range()];
    match Request::decode(header.code, body, context.store.limits()) {
        Ok(Request::List(list)) => crate::server::postgres::list_page(database, &list, now_ms()).await,
        _ => Err(OpError::Internal("a LIST miss of a request that is not a LIST")),
    }
}

/// HELLO: checks the protocol version, then authenticates the session with the token.
fn answer_hello(
    context: &ExecutorContext,
    caller: &mut Caller<'_>,
    auditor: &Auditor<'_>,
    protocol_version: u16,
    token: &[u8],
    request_id: u32,
    out: &mut BytesMut,
) -> Dispatched {
    if protocol_version != PROTOCOL_VERSION {
        ExecutorMetrics::add(&context.metrics().errors_total, 1);
        let message = format!("this server speaks protocol version {PROTOCOL_VERSION}");
        encode_error(Status::UnsupportedVersion, request_id, PROTOCOL_VERSION.into(), &message, out);
        return Dispatched::Answered { secret: false };
    }
    let Some(principal) = caller.session.hello(&context.authenticator, token) else {
        ExecutorMetrics::add(&context.metrics().auth_failures, 1);
        if caller.session.count_refusal() <= UNAUTHENTICATED_REFUSALS_AUDITED {
            auditor.record_id(ANONYMOUS, Op::Hello, None, None, Status::Unauthorized);
        }
        let error = OpError::Unauthorized("unknown token");
        return refuse(context, error, request_id, out);
    };
    auditor.record_id(&principal.id, Op::Hello, None, None, Status::Ok);
    let start = frame::begin(out, Status::Ok as u8, request_id);
    let server = concat!("credshard ", env!("CARGO_PKG_VERSION"));
    HelloReply::encode(PROTOCOL_VERSION, context.store.shard_count() as u16, server, out);
    frame::finish(out, start);
    Dispatched::Answered { secret: false }
}

fn encode_stats(context: &ExecutorContext, out: &mut BytesMut) {
    let keys = context.store.keyring().status();
    let mut values = vec![
        ("shards".to_owned(), context.store.shard_count() as u64),
        ("credentials".to_owned(), context.store.len() as u64),
        ("data_keys".to_owned(), keys.data_keys as u64),
        ("data_key_active".to_owned(), u64::from(keys.active_key_id)),
        ("data_keys_retiring".to_owned(), keys.retiring as u64),
    ];
    values.extend(context.all_metrics.report());
    if let Some(database) = &context.database {
        // Before the per-executor pairs, which come last.
        let at = values.iter().position(|(name, _)| name.starts_with("executor.")).unwrap_or(values.len());
        let (open, idle, waiting) = database.pool_status();
        let capacity = context.store.shard_capacity().map_or(0, |shard| shard * context.store.shard_count());
        let pool = [
            ("db_pool_connections", open as u64),
            ("db_pool_idle", idle as u64),
            ("db_pool_waiting", waiting as u64),
            ("cache_capacity", capacity as u64),
            ("cache_evictions", context.store.cache_evictions()),
        ];
        values.splice(at..at, pool.map(|(name, value)| (name.to_owned(), value)));
    }
    let borrowed: Vec<(&str, u64)> = values.iter().map(|(name, value)| (name.as_str(), *value)).collect();
    crate::wipe::reserve(out, 2 + borrowed.iter().map(|(name, _)| 2 + name.len() + 8).sum::<usize>());
    StatsReply::encode(&borrowed, out);
}

/// Logs and counts an internal error on a credential: a ciphertext that fails to open means
/// damaged storage or metadata edited at rest, which an operator must hear about.
fn note_internal(context: &ExecutorContext, id: &str, error: &OpError) {
    if let OpError::Internal(message) = error {
        ExecutorMetrics::add(&context.metrics().internal_errors, 1);
        tracing::error!(id, message, "a credential could not be served");
    }
}

/// The version and status an outcome is audited with.
fn audited_outcome(result: &Result<Option<u64>, OpError>) -> (Option<u64>, Status) {
    match result {
        Ok(version) => (*version, Status::Ok),
        Err(error) => (None, error.status()),
    }
}

/// Records audit entries, if the audit log is on.
pub struct Auditor<'a> {
    pub context: &'a ExecutorContext,
    pub peer: SocketAddr,
    pub now_ms: u64,
}

impl Auditor<'_> {
    /// A request, with its credential id or LIST filters.
    fn record(&self, token: &str, request: &Request<'_>, version: Option<u64>, status: Status) {
        let Some(audit) = &self.context.audit else { return };
        let (owner, scope) = match request {
            Request::List(list) => (Some(list.owner), Some(list.scope)),
            _ => (None, None),
        };
        if let Request::BatchGet(batch) = request {
            // A refused BATCH_GET: one entry per id it named.
            for id in batch.ids() {
                self.record_id(token, request.op(), id, version, status);
            }
            return;
        }
        audit.record(&AuditEvent {
            time_ms: self.now_ms,
            token,
            peer: self.peer,
            op: request.op(),
            id: request.id(),
            owner,
            scope,
            version,
            status,
        });
    }

    /// An op on one credential id (or on none).
    pub fn record_id<'i>(
        &self,
        token: &str,
        op: Op,
        id: impl Into<Option<&'i str>>,
        version: Option<u64>,
        status: Status,
    ) {
        let Some(audit) = &self.context.audit else { return };
        audit.record(&AuditEvent {
            time_ms: self.now_ms,
            token,
            peer: self.peer,
            op,
            id: id.into(),
            owner: None,
            scope: None,
            version,
            status,
        });
    }
}

/// Appends the response to a write (PUT, ROTATE and DELETE all answer `version u64`) and
/// audits it.
pub fn answer_write(
    context: &ExecutorContext,
    peer: SocketAddr,
    write: &WriteTicket,
    outcome: WriteOutcome,
    out: &mut BytesMut,
) {
    debug_assert!(write.op.is_write() || matches!(write.op, Op::RotateKey | Op::Rekey));
    crate::wipe::reserve(out, REPLY_HEADROOM_BYTES);
    let start = out.len();
    if write.audited {
        let (version, status) = match &outcome {
            Ok(version) if write.op.is_write() => (Some(*version), Status::Ok),
            Ok(_) => (None, Status::Ok),
            Err(error) => (None, error.status()),
        };
        let auditor = Auditor { context, peer, now_ms: now_ms() };
        auditor.record_id(&write.principal.id, write.op, write.audit_id.as_deref(), version, status);
    }
    match outcome {
        Ok(value) => {
            let start = frame::begin(out, Status::Ok as u8, write.request_id);
            match write.op {
                Op::RotateKey => {
                    let (key_id, data_keys) = unpack_rotate_key(value);
                    RotateKeyReply { key_id, data_keys }.encode(out);
                }
                Op::Rekey => RekeyReply { data_keys: value as u32 }.encode(out),
                _ => out.put_u64_le(value),
            }
            frame::finish(out, start);
        }
        Err(error) => encode_op_error(context, error, write.request_id, out),
    }
    count_answer(context, write.op as u8, out, start);
    context.metrics().record_latency(crate::metrics::op_slot(write.op as u8), write.received_at.elapsed(), 1);
}

/// ROTATE_KEY and REKEY: the key ring's file is rewritten and synced (and REKEY may derive a
/// passphrase with Argon2id, which takes a second), so the work runs on glommio's blocking
/// pool and the request is answered like a write, when it is done.
fn key_admin(
    context: &ExecutorContext,
    peer: SocketAddr,
    received_at: Instant,
    request: &Request<'_>,
    principal: &Arc<Principal>,
    request_id: u32,
    out: &mut BytesMut,
) -> Dispatched {
    let op = request.op();
    let write = WriteTicket {
        op,
        request_id,
        principal: Arc::clone(principal),
        audited: context.audit.is_some(),
        audit_id: None,
        received_at,
    };
    let store = Arc::clone(&context.store);
    let work: Box<dyn FnOnce() -> WriteOutcome + Send> = match request {
        Request::RotateKey => Box::new(move || {
            let key_id = store.keyring().rotate().map_err(|error| {
                tracing::error!(%error, "ROTATE_KEY failed; the active data key is unchanged");
                OpError::Unavailable("the key ring could not be written; the active data key is unchanged")
            })?;
            Ok(pack_rotate_key(key_id, store.keyring().len() as u32))
        }),
        Request::Rekey(rekey) => {
            if context.tls.is_none() && !is_loopback(peer) {
                let error = OpError::Unauthorized(
                    "REKEY carries key material: send it over TLS, or from this host to a loopback address",
                );
                let auditor = Auditor { context, peer, now_ms: now_ms() };
                auditor.record_id(&principal.id, op, None, None, Status::Unauthorized);
                return refuse(context, error, request_id, out);
            }
            let source = match rekey {
                RekeyRequest::Key(key) => KeySource::Key(MasterKey::from_bytes(**key)),
                RekeyRequest::Passphrase(passphrase) => {
                    KeySource::Passphrase(Zeroizing::new(passphrase.to_vec()), Argon2Cost::default())
                }
            };
            Box::new(move || {
                let data_keys = store.keyring().rekey(source).map_err(|error| {
                    tracing::error!(%error, "REKEY failed; the previous master key stays in force");
                    match error {
                        EngineError::Keyring(_) | EngineError::Passphrase(_) => OpError::Unavailable(
                            "the key ring could not be rewrapped; the previous master key stays in force",
                        ),
                        _ => OpError::Unavailable(
                            "the key ring could not be written; the previous master key stays in force",
                        ),
                    }
                })?;
                Ok(data_keys as u64)
            })
        }
        _ => unreachable!("only the key ops come here"),
    };
    let (reply, outcome) = oneshot::channel();
    let done = glommio::executor().spawn_blocking(work);
    glommio::spawn_local(async move {
        let _ = reply.send(done.await);
    })
    .detach();
    Dispatched::Pending { write, outcome }
}

/// ROTATE_KEY's outcome in a write's `u64`: the new key id (low half) and the ring's size.
fn pack_rotate_key(key_id: u32, data_keys: u32) -> u64 {
    u64::from(key_id) | u64::from(data_keys) << 32
}

fn unpack_rotate_key(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}

/// True for a peer on this host's loopback interface (an IPv4-mapped one included).
fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().map_or(ip.is_loopback(), |ip| ip.is_loopback()),
    }
}

/// Refuses a request that a session sent before authenticating in another protocol (RESP), as
/// [`dispatch`] refuses a native one: `op` is the native op it stands for, `id` the credential
/// it names. The error frame goes to `out`.
pub fn refuse_before_authentication(
    context: &ExecutorContext,
    caller: &mut Caller<'_>,
    op: Op,
    id: Option<&str>,
    request_id: u32,
    out: &mut BytesMut,
) {
    let auditor = Auditor { context, peer: caller.peer, now_ms: now_ms() };
    let start = out.len();
    refuse_unauthenticated(context, caller, &auditor, op, id, request_id, out);
    count_answer(context, op as u8, out, start);
    caller.batch.add(op as u8);
}

/// Refuses a request (other than HELLO) of a session that is not authenticated: counted
/// always, audited only within [`UNAUTHENTICATED_REFUSALS_AUDITED`], and as one entry even for
/// a BATCH_GET (with the credential id of a request that names one).
fn refuse_unauthenticated(
    context: &ExecutorContext,
    caller: &mut Caller<'_>,
    auditor: &Auditor<'_>,
    op: Op,
    id: Option<&str>,
    request_id: u32,
    out: &mut BytesMut,
) -> Dispatched {
    if caller.session.count_refusal() <= UNAUTHENTICATED_REFUSALS_AUDITED {
        auditor.record_id(caller.session.unauthenticated_audit_id(), op, id, None, Status::Unauthorized);
    }
    let error = OpError::Unauthorized("authenticate with HELLO and a valid token first");
    refuse(context, error, request_id, out)
}

fn refuse(context: &ExecutorContext, error: OpError, request_id: u32, out: &mut BytesMut) -> Dispatched {
    encode_op_error(context, error, request_id, out);
    Dispatched::Answered { secret: false }
}

fn encode_op_error(context: &ExecutorContext, error: OpError, request_id: u32, out: &mut BytesMut) {
    ExecutorMetrics::add(&context.metrics().errors_total, 1);
    if let OpError::Unauthorized(_) = error {
        ExecutorMetrics::add(&context.metrics().unauthorized_total, 1);
    }
    encode_error(error.status(), request_id, error.detail(), error.message(), out);
}
