//! Clients: [`blocking::Client`] over `std::net`, and (feature `tokio`, on by default)
//! [`asynchronous::AsyncClient`], which pipelines calls from many tasks over one connection.
//!
//! Both build on [`Call`]: a typed request paired with the decoder of its reply, so each op's
//! wire details live in one place.

#[cfg(feature = "tokio")]
pub mod asynchronous;
pub mod blocking;
#[cfg(feature = "tls")]
pub mod tls;

use bytes::{Bytes, BytesMut};

use crate::code::Status;
use crate::error::ClientError;
use crate::frame;
use crate::op::batch_get::{decode_batch_reply, BatchGetRequest, BatchItem};
use crate::op::delete::{DeleteReply, DeleteRequest, DestroyRequest, UndeleteRequest};
use crate::op::get::{GetMetaReply, GetMetaRequest, GetReply, GetRequest, Stage};
use crate::op::hello::{HelloReply, HelloRequest, PROTOCOL_VERSION};
use crate::op::keys::{RekeyReply, RekeyRequest, RotateKeyReply};
use crate::op::list::{ListReply, ListRequest};
use crate::op::policy::{GetPolicyRequest, PolicyReply, SetPolicyReply, SetPolicyRequest};
use crate::op::put::{PutReply, PutRequest};
use crate::op::rotate::{RotateReply, RotateRequest};
use crate::op::stage::{PromoteReply, PromoteRequest, StageReply, StageRequest};
use crate::op::stats::StatsReply;
use crate::op::watch::{WatchReply, WatchRequest};
use crate::op::{decode_error, Request};
use crate::wire::{DecodeError, Reader};

/// A response frame as received: status, request id and undecoded body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFrame {
    pub status: u8,
    pub request_id: u32,
    pub body: Bytes,
}

impl ResponseFrame {
    /// Splits a whole response frame off the front of `buffer`, if one is buffered.
    ///
    /// # Errors
    /// [`ClientError::Frame`] when the stream cannot be framed.
    pub fn take(buffer: &mut BytesMut) -> Result<Option<ResponseFrame>, ClientError> {
        let Some(header) = frame::check(buffer, usize::MAX)? else {
            return Ok(None);
        };
        let mut whole = buffer.split_to(header.frame_bytes);
        let body = whole.split_off(frame::HEADER_BYTES).freeze();
        Ok(Some(ResponseFrame { status: header.code, request_id: header.request_id, body }))
    }

    /// The body of a successful response, or the server's error.
    ///
    /// # Errors
    /// [`ClientError::Server`] for a failure status, [`ClientError::UnknownStatus`] for a code
    /// this client does not know.
    pub fn into_ok_body(self) -> Result<Bytes, ClientError> {
        let status = Status::from_u8(self.status).ok_or(ClientError::UnknownStatus(self.status))?;
        if status == Status::Ok {
            return Ok(self.body);
        }
        let (detail, message) = decode_error(&self.body)?;
        Err(ClientError::Server { status, detail, message })
    }
}

/// A typed call: the request to send and how to decode a successful reply.
pub struct Call<'a, T> {
    pub request: Request<'a>,
    decode: fn(&mut Reader<'_>) -> Result<T, DecodeError>,
}

impl<T> Call<'_, T> {
    /// Decodes `frame` as this call's reply.
    ///
    /// # Errors
    /// The server's error, or a decoding error for a body that does not match the op.
    pub fn reply(&self, frame: ResponseFrame) -> Result<T, ClientError> {
        let body = frame.into_ok_body()?;
        let mut reader = Reader::new(&body);
        let reply = (self.decode)(&mut reader)?;
        reader.finish()?;
        Ok(reply)
    }
}

/// HELLO with the given token.
pub fn hello(token: &[u8]) -> Call<'_, HelloReply> {
    Call {
        request: Request::Hello(HelloRequest { protocol_version: PROTOCOL_VERSION, token }),
        decode: HelloReply::decode,
    }
}

/// PING with a payload the server echoes.
pub fn ping(payload: &[u8]) -> Call<'_, Bytes> {
    Call { request: Request::Ping(payload), decode: |reader| Ok(Bytes::copy_from_slice(reader.rest())) }
}

/// PUT; the reply is the new version.
pub fn put<'a>(request: &PutRequest<'a>) -> Call<'a, PutReply> {
    Call { request: Request::Put(*request), decode: PutReply::decode }
}

/// GET of `version` (0 = current).
pub fn get(id: &str, version: u64) -> Call<'_, GetReply> {
    Call { request: Request::Get(GetRequest::new(id, version)), decode: GetReply::decode }
}

/// GET of the version in `stage`.
pub fn get_stage(id: &str, stage: Stage) -> Call<'_, GetReply> {
    Call { request: Request::Get(GetRequest::of_stage(id, stage)), decode: GetReply::decode }
}

/// STAGE: a new pending version; the reply is its version.
pub fn stage<'a>(request: &StageRequest<'a>) -> Call<'a, StageReply> {
    Call { request: Request::Stage(*request), decode: StageReply::decode }
}

/// PROMOTE the pending version; the reply is the version now current.
pub fn promote<'a>(request: &PromoteRequest<'a>) -> Call<'a, PromoteReply> {
    Call { request: Request::Promote(*request), decode: PromoteReply::decode }
}

/// WATCH: the reply, then (see the clients' `next_event`) the stream.
pub fn watch<'a>(request: &WatchRequest<'a>) -> Call<'a, WatchReply> {
    Call { request: Request::Watch(request.clone()), decode: WatchReply::decode }
}

/// SET_POLICY; the reply is the credential's current version.
pub fn set_policy<'a>(request: &SetPolicyRequest<'a>) -> Call<'a, SetPolicyReply> {
    Call { request: Request::SetPolicy(*request), decode: SetPolicyReply::decode }
}

/// GET_POLICY.
pub fn get_policy(id: &str) -> Call<'_, PolicyReply> {
    Call { request: Request::GetPolicy(GetPolicyRequest { id }), decode: PolicyReply::decode }
}

/// GET_META.
pub fn get_meta(id: &str) -> Call<'_, GetMetaReply> {
    Call { request: Request::GetMeta(GetMetaRequest { id }), decode: GetMetaReply::decode }
}

/// DELETE (recoverable, with the server's recovery window), optionally only if the current
/// version is `expected_version`.
pub fn delete(id: &str, expected_version: Option<u64>) -> Call<'_, DeleteReply> {
    delete_with(&DeleteRequest::new(id, expected_version))
}

/// DELETE with its options (purge, or a recovery window of its own).
pub fn delete_with<'a>(request: &DeleteRequest<'a>) -> Call<'a, DeleteReply> {
    Call { request: Request::Delete(*request), decode: DeleteReply::decode }
}

/// UNDELETE; the reply is the current version, served again.
pub fn undelete(id: &str) -> Call<'_, DeleteReply> {
    Call { request: Request::Undelete(UndeleteRequest { id }), decode: DeleteReply::decode }
}

/// DESTROY of one kept version; the reply is that version.
pub fn destroy(id: &str, version: u64) -> Call<'_, DeleteReply> {
    Call { request: Request::Destroy(DestroyRequest { id, version }), decode: DeleteReply::decode }
}

/// ROTATE; the reply is the new version.
pub fn rotate<'a>(request: &RotateRequest<'a>) -> Call<'a, RotateReply> {
    Call { request: Request::Rotate(*request), decode: RotateReply::decode }
}

/// BATCH_GET of a body made by [`BatchGetRequest::encode`]; one result per id, in order.
pub fn batch_get<'a>(request: &BatchGetRequest<'a>) -> Call<'a, Vec<BatchItem>> {
    Call { request: Request::BatchGet(*request), decode: decode_batch_reply }
}

/// LIST one page.
pub fn list<'a>(request: &ListRequest<'a>) -> Call<'a, ListReply> {
    Call { request: Request::List(*request), decode: ListReply::decode }
}

/// STATS.
pub fn stats() -> Call<'static, StatsReply> {
    Call { request: Request::Stats, decode: StatsReply::decode }
}

/// ROTATE_KEY.
pub fn rotate_key() -> Call<'static, RotateKeyReply> {
    Call { request: Request::RotateKey, decode: RotateKeyReply::decode }
}

/// REKEY to a new master key or passphrase.
pub fn rekey<'a>(request: &RekeyRequest<'a>) -> Call<'a, RekeyReply> {
    Call { request: Request::Rekey(*request), decode: RekeyReply::decode }
}
