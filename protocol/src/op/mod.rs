//! Typed request and reply bodies, one file per op, and the [`Request`] enum a server
//! dispatches on. Requests borrow from the frame they were decoded from.

pub mod batch_get;
pub mod delete;
pub mod get;
pub mod hello;
pub mod keys;
pub mod labels;
pub mod list;
pub mod metadata;
pub mod policy;
pub mod put;
pub mod rotate;
pub mod stage;
pub mod stats;
pub mod watch;

use bytes::{BufMut, BytesMut};

use crate::code::{Op, Status};
use crate::frame;
use crate::limits::Limits;
use crate::wire::{put_str16, DecodeError, Reader};

use batch_get::BatchGetRequest;
use delete::{DeleteRequest, DestroyRequest, UndeleteRequest};
use get::{GetMetaRequest, GetRequest};
use hello::HelloRequest;
use keys::RekeyRequest;
use list::ListRequest;
use policy::{GetPolicyRequest, SetPolicyRequest};
use put::PutRequest;
use rotate::RotateRequest;
use stage::{PromoteRequest, StageRequest};
use watch::WatchRequest;

/// A decoded request, borrowing from its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Hello(HelloRequest<'a>),
    Ping(&'a [u8]),
    Put(PutRequest<'a>),
    Get(GetRequest<'a>),
    GetMeta(GetMetaRequest<'a>),
    Delete(DeleteRequest<'a>),
    Rotate(RotateRequest<'a>),
    BatchGet(BatchGetRequest<'a>),
    List(ListRequest<'a>),
    Undelete(UndeleteRequest<'a>),
    Destroy(DestroyRequest<'a>),
    Stage(StageRequest<'a>),
    Promote(PromoteRequest<'a>),
    Watch(WatchRequest<'a>),
    SetPolicy(SetPolicyRequest<'a>),
    GetPolicy(GetPolicyRequest<'a>),
    Stats,
    RotateKey,
    Rekey(RekeyRequest<'a>),
}

/// Why a well-framed request cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown op code 0x{0:02x}")]
    UnknownOp(u8),
    #[error("invalid {op} request: {error}", op = .op.name())]
    Decode { op: Op, error: DecodeError },
}

impl RequestError {
    /// The status code a server answers with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::UnknownOp(_) => Status::UnknownOp,
            RequestError::Decode { error: DecodeError::TooLong { .. }, .. } => Status::TooLarge,
            RequestError::Decode { .. } => Status::Malformed,
        }
    }
}

impl<'a> Request<'a> {
    /// Decodes the body of a request frame with op code `code`, enforcing `limits`.
    ///
    /// # Errors
    /// [`RequestError`] for unknown ops and for bodies that do not decode,
    /// exceed a limit, or carry trailing bytes.
    pub fn decode(code: u8, body: &'a [u8], limits: &Limits) -> Result<Request<'a>, RequestError> {
        let op = Op::from_u8(code).ok_or(RequestError::UnknownOp(code))?;
        let mut reader = Reader::new(body);
        let request = match op {
            Op::Hello => HelloRequest::decode(&mut reader).map(Request::Hello),
            Op::Ping => Ok(Request::Ping(reader.rest())),
            Op::Put => PutRequest::decode(&mut reader, limits).map(Request::Put),
            Op::Get => GetRequest::decode(&mut reader, limits).map(Request::Get),
            Op::GetMeta => GetMetaRequest::decode(&mut reader, limits).map(Request::GetMeta),
            Op::Delete => DeleteRequest::decode(&mut reader, limits).map(Request::Delete),
            Op::Rotate => RotateRequest::decode(&mut reader, limits).map(Request::Rotate),
            Op::BatchGet => BatchGetRequest::decode(&mut reader, limits).map(Request::BatchGet),
            Op::List => ListRequest::decode(&mut reader, limits).map(Request::List),
            Op::Undelete => UndeleteRequest::decode(&mut reader, limits).map(Request::Undelete),
            Op::Destroy => DestroyRequest::decode(&mut reader, limits).map(Request::Destroy),
            Op::Stage => StageRequest::decode(&mut reader, limits).map(Request::Stage),
            Op::Promote => PromoteRequest::decode(&mut reader, limits).map(Request::Promote),
            Op::Watch => WatchRequest::decode(&mut reader, limits).map(Request::Watch),
            Op::SetPolicy => SetPolicyRequest::decode(&mut reader, limits).map(Request::SetPolicy),
            Op::GetPolicy => GetPolicyRequest::decode(&mut reader, limits).map(Request::GetPolicy),
            Op::Stats => Ok(Request::Stats),
            Op::RotateKey => Ok(Request::RotateKey),
            Op::Rekey => RekeyRequest::decode(&mut reader).map(Request::Rekey),
        };
        let request = request.and_then(|request| reader.finish().map(|()| request));
        request.map_err(|error| RequestError::Decode { op, error })
    }

    pub fn op(&self) -> Op {
        match self {
            Request::Hello(_) => Op::Hello,
            Request::Ping(_) => Op::Ping,
            Request::Put(_) => Op::Put,
            Request::Get(_) => Op::Get,
            Request::GetMeta(_) => Op::GetMeta,
            Request::Delete(_) => Op::Delete,
            Request::Rotate(_) => Op::Rotate,
            Request::BatchGet(_) => Op::BatchGet,
            Request::List(_) => Op::List,
            Request::Undelete(_) => Op::Undelete,
            Request::Destroy(_) => Op::Destroy,
            Request::Stage(_) => Op::Stage,
            Request::Promote(_) => Op::Promote,
            Request::Watch(_) => Op::Watch,
            Request::SetPolicy(_) => Op::SetPolicy,
            Request::GetPolicy(_) => Op::GetPolicy,
            Request::Stats => Op::Stats,
            Request::RotateKey => Op::RotateKey,
            Request::Rekey(_) => Op::Rekey,
        }
    }

    /// The credential id the request names, if any (used to route it to a shard).
    pub fn id(&self) -> Option<&'a str> {
        match self {
            Request::Put(put) => Some(put.id),
            Request::Get(get) => Some(get.id),
            Request::GetMeta(meta) => Some(meta.id),
            Request::Delete(delete) => Some(delete.id),
            Request::Rotate(rotate) => Some(rotate.id),
            Request::Undelete(undelete) => Some(undelete.id),
            Request::Destroy(destroy) => Some(destroy.id),
            Request::Stage(stage) => Some(stage.id),
            Request::Promote(promote) => Some(promote.id),
            Request::Watch(_) => None,
            Request::SetPolicy(set) => Some(set.id),
            Request::GetPolicy(get) => Some(get.id),
            Request::Hello(_)
            | Request::Ping(_)
            | Request::BatchGet(_)
            | Request::List(_)
            | Request::Stats
            | Request::RotateKey
            | Request::Rekey(_) => None,
        }
    }

    /// Appends the whole request frame to `out`.
    pub fn encode(&self, request_id: u32, out: &mut BytesMut) {
        let start = frame::begin(out, self.op() as u8, request_id);
        match self {
            Request::Hello(hello) => hello.encode(out),
            Request::Ping(payload) => out.put_slice(payload),
            Request::Put(put) => put.encode(out),
            Request::Get(get) => get.encode(out),
            Request::GetMeta(meta) => meta.encode(out),
            Request::Delete(delete) => delete.encode(out),
            Request::Rotate(rotate) => rotate.encode(out),
            Request::BatchGet(batch) => batch.encoded_body(out),
            Request::List(list) => list.encode(out),
            Request::Undelete(undelete) => undelete.encode(out),
            Request::Destroy(destroy) => destroy.encode(out),
            Request::Stage(stage) => stage.encode(out),
            Request::Promote(promote) => promote.encode(out),
            Request::Watch(watch) => watch.encode(out),
            Request::SetPolicy(set) => set.encode(out),
            Request::GetPolicy(get) => get.encode(out),
            Request::Stats | Request::RotateKey => {}
            Request::Rekey(rekey) => rekey.encode(out),
        }
        frame::finish(out, start);
    }
}

/// Longest error message a server sends; longer ones are cut at a character boundary.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// Appends a whole error frame: `detail u64 | message str16`. `detail` is the current version
/// for `VERSION_CONFLICT` (0 when the credential does not exist) and 0 otherwise.
pub fn encode_error(status: Status, request_id: u32, detail: u64, message: &str, out: &mut BytesMut) {
    debug_assert_ne!(status, Status::Ok);
    let mut cut = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let start = frame::begin(out, status as u8, request_id);
    out.put_u64_le(detail);
    put_str16(out, &message[..cut]);
    frame::finish(out, start);
}

/// Decodes an error body into `(detail, message)`.
pub fn decode_error(body: &[u8]) -> Result<(u64, String), DecodeError> {
    let mut reader = Reader::new(body);
    let detail = reader.u64("detail")?;
    let message = reader.str16("message", usize::MAX)?.to_owned();
    Ok((detail, message))
}
