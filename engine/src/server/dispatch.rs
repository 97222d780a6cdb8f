//! One request frame in, one response frame out (or a write forwarded to another shard).
//! Reads are answered here, synchronously, straight from the owning shard's map.

use bytes::{BufMut, BytesMut};
use credshard_protocol::frame::{self, Header};
use credshard_protocol::op::hello::{HelloReply, PROTOCOL_VERSION};
use credshard_protocol::op::stats::StatsReply;
use credshard_protocol::op::{encode_error, Request};
use credshard_protocol::{Op, Status};
use futures::channel::oneshot;

use crate::error::OpError;
use crate::metrics::ExecutorMetrics;
use crate::server::executor::ExecutorContext;
use crate::server::router::WriteOutcome;
use crate::time::now_ms;

/// What became of a request.
pub enum Dispatched {
    /// The response is in the output buffer; `secret` says whether it holds plaintext.
    Answered { secret: bool },
    /// A write applied to this executor's shard: its outcome arrives once it is committed.
    Pending { op: Op, outcome: oneshot::Receiver<WriteOutcome> },
    /// A write for another shard: forward `body` to `shard_id`'s executor.
    Forward { shard_id: usize, op: Op, received_at_ms: u64 },
}

/// Handles the request in `frame` (a whole frame, header included).
pub fn dispatch(context: &ExecutorContext, header: Header, frame: &[u8], out: &mut BytesMut) -> Dispatched {
    let metrics = context.metrics();
    ExecutorMetrics::add(&metrics.requests_total, 1);
    let request_id = header.request_id;
    let body = &frame[header.body_range()];
    let request = match Request::decode(header.code, body, context.store.limits()) {
        Ok(request) => request,
        Err(error) => {
            ExecutorMetrics::add(&metrics.errors_total, 1);
            encode_error(error.status(), request_id, 0, &error.to_string(), out);
            return Dispatched::Answered { secret: false };
        }
    };
    let now_ms = now_ms();
    if request.op().is_write() {
        ExecutorMetrics::add(&metrics.writes_total, 1);
        let shard_id = context.store.shard_for(request.id().expect("writes name a credential"));
        if shard_id != context.router.shard_id() {
            ExecutorMetrics::add(&metrics.writes_forwarded, 1);
            return Dispatched::Forward { shard_id, op: request.op(), received_at_ms: now_ms };
        }
        let (reply, outcome) = oneshot::channel();
        context.router.write(&request, now_ms, reply);
        return Dispatched::Pending { op: request.op(), outcome };
    }

    let start = frame::begin(out, Status::Ok as u8, request_id);
    let result = match &request {
        Request::Hello(hello) => {
            if hello.protocol_version != PROTOCOL_VERSION {
                frame::abandon(out, start);
                ExecutorMetrics::add(&metrics.errors_total, 1);
                let message = format!("this server speaks protocol version {PROTOCOL_VERSION}");
                encode_error(Status::UnsupportedVersion, request_id, PROTOCOL_VERSION.into(), &message, out);
                return Dispatched::Answered { secret: false };
            }
            let server = concat!("credshard ", env!("CARGO_PKG_VERSION"));
            HelloReply::encode(PROTOCOL_VERSION, context.store.shard_count() as u16, server, out);
            Ok(())
        }
        Request::Ping(payload) => {
            out.put_slice(payload);
            Ok(())
        }
        Request::Get(get) => {
            ExecutorMetrics::add(&metrics.reads_total, 1);
            context.store.get(get, now_ms, out)
        }
        Request::GetMeta(get_meta) => {
            ExecutorMetrics::add(&metrics.reads_total, 1);
            context.store.get_meta(get_meta, now_ms, out)
        }
        Request::BatchGet(batch) => {
            ExecutorMetrics::add(&metrics.reads_total, batch.len() as u64);
            let secret = context.store.batch_get(batch, now_ms, out);
            frame::finish(out, start);
            return Dispatched::Answered { secret };
        }
        Request::List(list) => {
            ExecutorMetrics::add(&metrics.reads_total, 1);
            context.store.list(list, now_ms, out)
        }
        Request::Stats => {
            let mut values = vec![
                ("shards".to_owned(), context.store.shard_count() as u64),
                ("credentials".to_owned(), context.store.len() as u64),
                ("data_keys".to_owned(), context.store.keyring().len() as u64),
            ];
            values.extend(context.all_metrics.report());
            let borrowed: Vec<(&str, u64)> =
                values.iter().map(|(name, value)| (name.as_str(), *value)).collect();
            StatsReply::encode(&borrowed, out);
            Ok(())
        }
        Request::Put(_) | Request::Delete(_) | Request::Rotate(_) => unreachable!("writes are handled above"),
    };
    match result {
        Ok(()) => {
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

/// Appends the response to a write (PUT, ROTATE and DELETE all answer `version u64`).
pub fn encode_write_outcome(
    context: &ExecutorContext,
    op: Op,
    request_id: u32,
    outcome: WriteOutcome,
    out: &mut BytesMut,
) {
    debug_assert!(op.is_write());
    match outcome {
        Ok(version) => {
            let start = frame::begin(out, Status::Ok as u8, request_id);
            out.put_u64_le(version);
            frame::finish(out, start);
        }
        Err(error) => encode_op_error(context, error, request_id, out),
    }
}

fn encode_op_error(context: &ExecutorContext, error: OpError, request_id: u32, out: &mut BytesMut) {
    ExecutorMetrics::add(&context.metrics().errors_total, 1);
    encode_error(error.status(), request_id, error.detail(), error.message(), out);
}
