//! Opening one connection: TCP (and TLS for credshards://), then HELLO with the token (for
//! redis: `INFO server`), spoken directly on the socket, which the connection's task then
//! owns for the whole run.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use credshard_protocol::client::{self, ResponseFrame};

use crate::codec::{Access, Protocol, ServerInfo};
use crate::redis::{self, Reply};
use crate::target::Target;

/// How long opening a connection and its HELLO (for redis: INFO) may take.
pub const CONNECT_TIMEOUT_SECONDS: u64 = 5;

/// An open connection's socket.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The protocol `target` speaks.
pub fn protocol(target: &Target) -> Protocol {
    match target {
        Target::Redis { .. } => Protocol::Redis,
        Target::Credshard { .. } | Target::CredshardTls { .. } => Protocol::Credshard,
    }
}

/// Connects to `target` and says HELLO with the token in `access` (for redis: `INFO server`),
/// all within [`CONNECT_TIMEOUT_SECONDS`].
///
/// # Errors
/// A one-line message: the connection error, a failed handshake, or the server's refusal
/// (`UNAUTHORIZED: ...`).
pub async fn open(target: &Target, access: &Access) -> Result<(Stream, ServerInfo), String> {
    let timeout = Duration::from_secs(CONNECT_TIMEOUT_SECONDS);
    match tokio::time::timeout(timeout, open_within(target, access)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no connection and HELLO within {CONNECT_TIMEOUT_SECONDS} s")),
    }
}

async fn open_within(target: &Target, access: &Access) -> Result<(Stream, ServerInfo), String> {
    let address = match target {
        Target::Credshard { address } | Target::CredshardTls { address, .. } | Target::Redis { address } => {
            address
        }
    };
    let tcp = TcpStream::connect(address.as_str()).await.map_err(|error| error.to_string())?;
    tcp.set_nodelay(true).map_err(|error| error.to_string())?;
    let protocol = protocol(target);
    match target {
        Target::CredshardTls { .. } => {
            let tls = access.tls.as_ref().ok_or("credshards:// needs --tls-ca")?;
            let mut tls = Box::new(tls.handshake(tcp).await.map_err(|error| error.to_string())?);
            let info = hello(&mut *tls, protocol, &access.token).await?;
            Ok((Stream::Tls(tls), info))
        }
        _ => {
            let mut tcp = tcp;
            let info = hello(&mut tcp, protocol, &access.token).await?;
            Ok((Stream::Plain(tcp), info))
        }
    }
}

/// The first exchange on a new connection.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    protocol: Protocol,
    token: &[u8],
) -> Result<ServerInfo, String> {
    let call = client::hello(token);
    let mut out = BytesMut::new();
    match protocol {
        Protocol::Credshard => call.request.encode(1, &mut out),
        Protocol::Redis => redis::encode(&[b"INFO", b"server"], &mut out),
    }
    stream.write_all(&out).await.map_err(|error| error.to_string())?;
    stream.flush().await.map_err(|error| error.to_string())?;
    let mut input = BytesMut::with_capacity(4096);
    loop {
        match protocol {
            Protocol::Credshard => {
                if let Some(frame) = ResponseFrame::take(&mut input).map_err(|error| error.to_string())? {
                    let hello = call.reply(frame).map_err(|error| error.to_string())?;
                    return Ok(ServerInfo { server: hello.server, shard_count: hello.shard_count });
                }
            }
            Protocol::Redis => match redis::parse(&input).map_err(|error| format!("bad reply: {error}"))? {
                None => {}
                Some((Reply::Bulk(info), _)) => {
                    return Ok(ServerInfo { server: redis::server_name(info), shard_count: 1 })
                }
                // An error here usually means authentication is needed.
                Some((Reply::Error(message), _)) => return Err(format!("server error: {message}")),
                Some((other, _)) => return Err(format!("unexpected reply to INFO: {other:?}")),
            },
        }
        match stream.read_buf(&mut input).await {
            Ok(0) => return Err("the connection was closed during HELLO".to_owned()),
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
}
