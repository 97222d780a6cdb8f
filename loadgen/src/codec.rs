//! What the loadgen says and how it checks the answers, for both protocols: each request is
//! encoded straight into its connection's write buffer, and each reply is judged in place in
//! the read buffer, without allocating. Every read is validated against [`value`]: a wrong
//! value is an error of kind `mismatch`.

use bytes::BytesMut;

use credshard_protocol::op::batch_get::BatchGetRequest;
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::get::{GetMetaRequest, GetRequest};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::{decode_error, Request};
use credshard_protocol::wire::{DecodeError, Reader};
use credshard_protocol::{frame, ClientTls, Expiry, Kind, Labels, PutRequest, Status, EMPTY_LABELS};

use crate::mix::Op;
use crate::redis::{self, Reply};
use crate::value::{self, Values};

/// Owner of every credential the loadgen writes.
pub const OWNER: &str = "loadgen";
/// Scope of every credential the loadgen writes.
pub const SCOPE: &str = "bench";

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// credshard frames; replies carry the request id they answer, in any order.
    Credshard,
    /// RESP2; replies come back in request order.
    Redis,
}

/// What the server says it is: for the report.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Name and version.
    pub server: String,
    /// Shards (1 for redis, which serves from one thread).
    pub shard_count: u16,
}

/// How the loadgen proves who it is to a credshard server.
#[derive(Clone, Default)]
pub struct Access {
    /// The HELLO token (empty for a server without tokens).
    pub token: Vec<u8>,
    /// For credshards:// targets: the CA and name to verify the server with.
    pub tls: Option<ClientTls>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Access")
            .field("token_bytes", &self.token.len())
            .field("tls", &self.tls)
            .finish()
    }
}

/// Why one request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    Server(Status),
    /// The connection failed or was closed.
    Io,
    /// The reply did not decode.
    Protocol,
    /// A read returned a value that is not the loadgen's for that key.
    Mismatch,
    /// A redis error reply (`-ERR ...`).
    Redis,
    /// A `batch_get` answered with at least one failed item (counted by kind apart).
    BatchItem,
}

impl Failure {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Failure::Server(status) => status.name(),
            Failure::Io => "io",
            Failure::Protocol => "protocol",
            Failure::Mismatch => "mismatch",
            Failure::Redis => "redis_error",
            Failure::BatchItem => "batch_item",
        }
    }
}

impl From<DecodeError> for Failure {
    fn from(_: DecodeError) -> Failure {
        Failure::Protocol
    }
}

/// One request as its connection remembers it until the reply: what was asked, of which keys.
#[derive(Clone, Debug, Default)]
pub struct Asked {
    pub op: Option<Op>,
    pub key_index: u64,
    /// The keys of a `batch_get`, in request order (the first is `key_index`).
    pub batch: Vec<u64>,
}

/// One reply, borrowed from the read buffer.
#[derive(Debug)]
pub enum Answer<'a> {
    /// A credshard response frame: status code, the request id it answers, the body.
    Credshard {
        status: u8,
        request_id: u32,
        body: &'a [u8],
    },
    Redis(Reply<'a>),
}

/// The next whole reply at the front of `buffer`, and the bytes it took; `Ok(None)` if more
/// bytes are needed.
///
/// # Errors
/// [`Failure::Protocol`] when the stream cannot be split into replies any more.
pub(crate) fn next_answer(protocol: Protocol, buffer: &[u8]) -> Result<Option<(Answer<'_>, usize)>, Failure> {
    match protocol {
        Protocol::Credshard => {
            let Some(header) = frame::check(buffer, usize::MAX).map_err(|_| Failure::Protocol)? else {
                return Ok(None);
            };
            let answer = Answer::Credshard {
                status: header.code,
                request_id: header.request_id,
                body: &buffer[header.body_range()],
            };
            Ok(Some((answer, header.frame_bytes)))
        }
        Protocol::Redis => match redis::parse(buffer) {
            Ok(parsed) => Ok(parsed.map(|(reply, used)| (Answer::Redis(reply), used))),
            Err(_) => Err(Failure::Protocol),
        },
    }
}

/// Encodes requests and judges replies for one connection; owns the scratch buffers so that
/// neither allocates once warm.
pub struct Codec {
    protocol: Protocol,
    values: Values,
    id: String,
    ids: Vec<String>,
    value: Vec<u8>,
    /// Writes sent so far, so that each written value differs from the last.
    writes: u64,
}

impl Codec {
    /// For values of `value_size` bytes.
    pub fn new(protocol: Protocol, value_size: usize) -> Codec {
        Codec {
            protocol,
            values: Values::new(value_size),
            id: String::with_capacity(32),
            ids: Vec::new(),
            value: vec![0u8; value_size],
            writes: 0,
        }
    }

    /// Appends `asked` to `out`; a credshard reply will carry `request_id` (not 0). A redis
    /// target only gets GET and SET (the arguments were checked before the run).
    pub fn encode(&mut self, asked: &Asked, request_id: u32, out: &mut BytesMut) {
        let op = asked.op.expect("an asked request has an op");
        value::key_id(asked.key_index, &mut self.id);
        if matches!(op, Op::Put | Op::Rotate) {
            self.writes += 1;
            self.values.fill(&mut self.value, asked.key_index, self.writes);
        }
        let id = self.id.as_str();
        match self.protocol {
            Protocol::Redis => match op {
                Op::Get => redis::encode(&[b"GET", id.as_bytes()], out),
                Op::Put => redis::encode(&[b"SET", id.as_bytes(), &self.value], out),
                other => unreachable!("{other:?} is refused for redis targets before the run"),
            },
            Protocol::Credshard => {
                let request = match op {
                    Op::Get => Request::Get(GetRequest::new(id, 0)),
                    Op::Put => Request::Put(put_request(id, &self.value)),
                    Op::GetMeta => Request::GetMeta(GetMetaRequest { id }),
                    Op::Rotate => Request::Rotate(RotateRequest {
                        id,
                        expected_version: None,
                        grace_period_seconds: None,
                        secret: &self.value,
                    }),
                    Op::Delete => Request::Delete(DeleteRequest::new(id, None)),
                    Op::BatchGet => {
                        self.ids.resize_with(asked.batch.len(), String::new);
                        for (id, &key_index) in self.ids.iter_mut().zip(&asked.batch) {
                            value::key_id(key_index, id);
                        }
                        let start = frame::begin(out, credshard_protocol::Op::BatchGet as u8, request_id);
                        BatchGetRequest::encode(&self.ids, out);
                        frame::finish(out, start);
                        return;
                    }
                };
                request.encode(request_id, out);
            }
        }
    }

    /// Judges `answer` to `asked`: `Ok` if it is the right answer. A `batch_get`'s failed
    /// items are pushed onto `item_failures` (the request itself is then `Ok`; the caller
    /// counts the items).
    pub(crate) fn judge(
        &mut self,
        asked: &Asked,
        answer: &Answer<'_>,
        item_failures: &mut Vec<Failure>,
    ) -> Result<(), Failure> {
        let op = asked.op.expect("an asked request has an op");
        match answer {
            Answer::Redis(reply) => match (op, reply) {
                (_, Reply::Error(_)) => Err(Failure::Redis),
                (Op::Get, Reply::Bulk(value)) => self.check(value, asked.key_index),
                (Op::Get, Reply::Null) => Err(Failure::Server(Status::NotFound)),
                (Op::Put, Reply::Simple("OK")) => Ok(()),
                _ => Err(Failure::Protocol),
            },
            Answer::Credshard { status, body, .. } => {
                let status = Status::from_u8(*status).ok_or(Failure::Protocol)?;
                if status != Status::Ok {
                    return Err(Failure::Server(status));
                }
                let mut reader = Reader::new(body);
                match op {
                    Op::Get => {
                        value::key_id(asked.key_index, &mut self.id);
                        self.check_credential(&mut reader, asked.key_index)?;
                        reader.finish()?;
                    }
                    Op::GetMeta => {
                        value::key_id(asked.key_index, &mut self.id);
                        if metadata_id(&mut reader)? != self.id {
                            return Err(Failure::Mismatch);
                        }
                    }
                    Op::BatchGet => {
                        if usize::from(reader.u16("count")?) != asked.batch.len() {
                            return Err(Failure::Protocol);
                        }
                        for &key_index in &asked.batch {
                            let code = reader.u8("status")?;
                            match Status::from_u8(code).ok_or(Failure::Protocol)? {
                                Status::Ok => {
                                    value::key_id(key_index, &mut self.id);
                                    if let Err(failure) = self.check_credential(&mut reader, key_index) {
                                        if failure == Failure::Protocol {
                                            return Err(failure);
                                        }
                                        item_failures.push(failure);
                                    }
                                }
                                status => {
                                    reader.u64("detail")?;
                                    reader.str16("message", usize::MAX)?;
                                    item_failures.push(Failure::Server(status));
                                }
                            }
                        }
                        reader.finish()?;
                    }
                    Op::Put | Op::Rotate | Op::Delete => {}
                }
                Ok(())
            }
        }
    }

    /// Reads a GET reply body (metadata, secret) from `reader`: its id must be `self.id` and
    /// its secret the loadgen's value for `key_index`.
    fn check_credential(&self, reader: &mut Reader<'_>, key_index: u64) -> Result<(), Failure> {
        let id_matches = metadata_id(reader)? == self.id;
        let secret = reader.bytes32("secret", usize::MAX)?;
        if !id_matches {
            return Err(Failure::Mismatch);
        }
        self.check(secret, key_index)
    }

    fn check(&self, value: &[u8], key_index: u64) -> Result<(), Failure> {
        if self.values.check(value, key_index) {
            Ok(())
        } else {
            Err(Failure::Mismatch)
        }
    }
}

/// Reads a metadata block (see `credshard_protocol::op::metadata`) and returns its id.
fn metadata_id<'a>(reader: &mut Reader<'a>) -> Result<&'a str, DecodeError> {
    let id = reader.str16("id", usize::MAX)?;
    reader.str16("owner", usize::MAX)?;
    reader.str16("scope", usize::MAX)?;
    reader.u8("kind")?;
    for field in ["version", "created_at_ms", "updated_at_ms", "expires_at_ms"] {
        reader.u64(field)?;
    }
    reader.u32("key_id")?;
    Labels::decode(reader, usize::MAX, usize::MAX)?;
    Ok(id)
}

/// A one-line description of a failed answer, for the preload's error message.
pub(crate) fn describe(answer: &Answer<'_>, failure: Failure) -> String {
    match answer {
        Answer::Credshard { status, body, .. } => match (Status::from_u8(*status), decode_error(body)) {
            (Some(status), Ok((_, message))) if status != Status::Ok => {
                format!("{}: {message}", status.name())
            }
            _ => failure.kind().to_owned(),
        },
        Answer::Redis(Reply::Error(message)) => format!("server error: {message}"),
        Answer::Redis(_) => failure.kind().to_owned(),
    }
}

/// The PUT the loadgen sends for `id`.
pub(crate) fn put_request<'a>(id: &'a str, value: &'a [u8]) -> PutRequest<'a> {
    PutRequest {
        id,
        owner: OWNER,
        scope: SCOPE,
        kind: Kind::Token,
        expected_version: None,
        expiry: Expiry::Never,
        labels: Labels::from_validated(EMPTY_LABELS),
        secret: value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use credshard_protocol::op::encode_error;
    use credshard_protocol::op::metadata::MetadataRef;
    use credshard_protocol::wire::put_bytes32;

    fn asked(op: Op, key_index: u64, batch: &[u64]) -> Asked {
        Asked { op: Some(op), key_index, batch: batch.to_vec() }
    }

    /// A GET reply body for key `key_index` with `value`, under `id`.
    fn credential(out: &mut BytesMut, id: &str, value: &[u8]) {
        MetadataRef {
            id,
            owner: OWNER,
            scope: SCOPE,
            kind: 3,
            version: 1,
            created_at_ms: 1,
            updated_at_ms: 1,
            expires_at_ms: 0,
            key_id: 1,
            labels: Labels::from_validated(EMPTY_LABELS),
        }
        .encode(out);
        put_bytes32(out, value);
    }

    fn judged(
        codec: &mut Codec,
        asked: &Asked,
        status: Status,
        body: &[u8],
    ) -> (Result<(), Failure>, Vec<Failure>) {
        let mut items = Vec::new();
        let answer = Answer::Credshard { status: status as u8, request_id: 1, body };
        (codec.judge(asked, &answer, &mut items), items)
    }

    #[test]
    fn credshard_replies_are_checked_in_place() {
        let mut codec = Codec::new(Protocol::Credshard, 64);
        let mut good = vec![0u8; 64];
        value::fill(&mut good, 7, 3);
        let mut body = BytesMut::new();
        credential(&mut body, "loadgen-7", &good);
        assert_eq!(judged(&mut codec, &asked(Op::Get, 7, &[]), Status::Ok, &body).0, Ok(()));
        // Another key's id, another key's value, a torn body, an error status.
        assert_eq!(judged(&mut codec, &asked(Op::Get, 8, &[]), Status::Ok, &body).0, Err(Failure::Mismatch));
        let mut wrong = BytesMut::new();
        credential(&mut wrong, "loadgen-7", &good[..40]);
        let last = wrong.len() - 1;
        wrong[last] ^= 1;
        assert_eq!(judged(&mut codec, &asked(Op::Get, 7, &[]), Status::Ok, &wrong).0, Err(Failure::Mismatch));
        assert_eq!(
            judged(&mut codec, &asked(Op::Get, 7, &[]), Status::Ok, &body[..body.len() - 3]).0,
            Err(Failure::Protocol)
        );
        let mut error = BytesMut::new();
        encode_error(Status::NotFound, 1, 0, "credential not found", &mut error);
        let answer = Answer::Credshard { status: Status::NotFound as u8, request_id: 1, body: &error[10..] };
        assert_eq!(
            codec.judge(&asked(Op::Get, 7, &[]), &answer, &mut Vec::new()),
            Err(Failure::Server(Status::NotFound))
        );
        assert_eq!(describe(&answer, Failure::Server(Status::NotFound)), "NOT_FOUND: credential not found");
        assert_eq!(judged(&mut codec, &asked(Op::GetMeta, 7, &[]), Status::Ok, &body).0, Ok(()));
        assert_eq!(
            judged(&mut codec, &asked(Op::Put, 7, &[]), Status::Ok, &[1, 0, 0, 0, 0, 0, 0, 0]).0,
            Ok(())
        );
    }

    #[test]
    fn batch_items_fail_one_by_one() {
        let mut codec = Codec::new(Protocol::Credshard, 32);
        let (mut first, mut second) = (vec![0u8; 32], vec![0u8; 32]);
        value::fill(&mut first, 1, 0);
        value::fill(&mut second, 2, 0);
        let mut body = BytesMut::new();
        body.put_u16_le(3);
        body.put_u8(Status::Ok as u8);
        credential(&mut body, "loadgen-1", &first);
        body.put_u8(Status::Ok as u8);
        credential(&mut body, "loadgen-2", &first); // key 1's value under key 2
        body.put_u8(Status::NotFound as u8);
        body.put_u64_le(0);
        credshard_protocol::wire::put_str16(&mut body, "credential not found");
        let (result, items) = judged(&mut codec, &asked(Op::BatchGet, 1, &[1, 2, 3]), Status::Ok, &body);
        assert_eq!(result, Ok(()));
        assert_eq!(items, [Failure::Mismatch, Failure::Server(Status::NotFound)]);
        // A count that does not match the request is a protocol error.
        let (result, _) = judged(&mut codec, &asked(Op::BatchGet, 1, &[1, 2]), Status::Ok, &body);
        assert_eq!(result, Err(Failure::Protocol));
    }

    #[test]
    fn requests_encode_as_the_protocol_decodes_them() {
        let mut codec = Codec::new(Protocol::Credshard, 32);
        let mut out = BytesMut::new();
        for (index, request) in [
            asked(Op::Get, 5, &[]),
            asked(Op::Put, 5, &[]),
            asked(Op::BatchGet, 5, &[5, 6]),
            asked(Op::Delete, 9, &[]),
        ]
        .iter()
        .enumerate()
        {
            codec.encode(request, index as u32 + 1, &mut out);
        }
        let mut start = 0;
        let mut decoded = Vec::new();
        while let Some(header) = frame::check(&out[start..], usize::MAX).unwrap() {
            let body = &out[start..][header.body_range()];
            let request = Request::decode(header.code, body, &credshard_protocol::Limits::default()).unwrap();
            decoded.push((header.request_id, format!("{:?}", request.op()), request.id().map(str::to_owned)));
            if let Request::Put(put) = request {
                assert!(value::check(put.secret, 5) && put.owner == OWNER);
            }
            if let Request::BatchGet(batch) = request {
                assert_eq!(batch.ids().collect::<Vec<_>>(), ["loadgen-5", "loadgen-6"]);
            }
            start += header.frame_bytes;
        }
        assert_eq!(start, out.len());
        let ids: Vec<_> = decoded.iter().map(|(id, op, key)| (*id, op.as_str(), key.as_deref())).collect();
        assert_eq!(
            ids,
            [
                (1, "Get", Some("loadgen-5")),
                (2, "Put", Some("loadgen-5")),
                (3, "BatchGet", None),
                (4, "Delete", Some("loadgen-9"))
            ]
        );

        let mut redis = Codec::new(Protocol::Redis, 16);
        let mut out = BytesMut::new();
        redis.encode(&asked(Op::Get, 3, &[]), 0, &mut out);
        assert_eq!(&out[..], b"*2\r\n$3\r\nGET\r\n$9\r\nloadgen-3\r\n");
    }

    #[test]
    fn redis_replies_are_judged_by_type() {
        let mut codec = Codec::new(Protocol::Redis, 16);
        let mut value = vec![0u8; 16];
        value::fill(&mut value, 4, 1);
        let judge = |codec: &mut Codec, op, reply| {
            codec.judge(&asked(op, 4, &[]), &Answer::Redis(reply), &mut Vec::new())
        };
        assert_eq!(judge(&mut codec, Op::Get, Reply::Bulk(&value)), Ok(()));
        assert_eq!(judge(&mut codec, Op::Get, Reply::Bulk(b"k00000005w000001")), Err(Failure::Mismatch));
        assert_eq!(judge(&mut codec, Op::Get, Reply::Null), Err(Failure::Server(Status::NotFound)));
        assert_eq!(judge(&mut codec, Op::Put, Reply::Simple("OK")), Ok(()));
        assert_eq!(judge(&mut codec, Op::Put, Reply::Error("ERR x")), Err(Failure::Redis));
        assert_eq!(judge(&mut codec, Op::Put, Reply::Integer(1)), Err(Failure::Protocol));
        assert_eq!(
            describe(&Answer::Redis(Reply::Error("NOAUTH x")), Failure::Redis),
            "server error: NOAUTH x"
        );
    }
}
