//! HELLO: protocol version negotiation and authentication. A server with a tokens file
//! authenticates the connection with `token` (nothing else is answered before); a server
//! without one accepts any token, including an empty one.

use bytes::{BufMut, BytesMut};

use crate::wire::{put_bytes32, put_str16, DecodeError, Reader};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Longest auth token accepted.
pub const TOKEN_BYTES_MAX: usize = 1024;

/// `protocol_version u16 | token bytes32`
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HelloRequest<'a> {
    pub protocol_version: u16,
    pub token: &'a [u8],
}

impl std::fmt::Debug for HelloRequest<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HelloRequest")
            .field("protocol_version", &self.protocol_version)
            .field("token_bytes", &self.token.len())
            .finish()
    }
}

impl<'a> HelloRequest<'a> {
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u16_le(self.protocol_version);
        put_bytes32(out, self.token);
    }

    pub fn decode(reader: &mut Reader<'a>) -> Result<HelloRequest<'a>, DecodeError> {
        Ok(HelloRequest {
            protocol_version: reader.u16("protocol_version")?,
            token: reader.bytes32("token", TOKEN_BYTES_MAX)?,
        })
    }
}

/// `protocol_version u16 | shard_count u16 | server str16`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    pub protocol_version: u16,
    pub shard_count: u16,
    /// Server name and version, e.g. `credshard 0.1.0`.
    pub server: String,
}

impl HelloReply {
    pub fn encode(protocol_version: u16, shard_count: u16, server: &str, out: &mut BytesMut) {
        out.put_u16_le(protocol_version);
        out.put_u16_le(shard_count);
        put_str16(out, server);
    }

    pub fn decode(reader: &mut Reader<'_>) -> Result<HelloReply, DecodeError> {
        Ok(HelloReply {
            protocol_version: reader.u16("protocol_version")?,
            shard_count: reader.u16("shard_count")?,
            server: reader.str16("server", usize::MAX)?.to_owned(),
        })
    }
}
