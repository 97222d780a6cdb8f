//! A minimal pipelining RESP2 client, so that a stock `redis-server` can be loaded as the peer
//! of credshard: commands go out as arrays of bulk strings, replies (simple string, error,
//! integer, bulk, null, array) are parsed as they arrive.
//!
//! One [`RedisClient`] is one connection shared by any number of tasks: a writer task sends
//! the requests in the order they were queued (batching whatever is queued into one write),
//! and a reader task hands each reply to the oldest request still waiting, as RESP replies
//! come back in order. When the connection fails, every waiting request fails with
//! [`RedisError::Io`].

use std::fmt;
use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Port a redis server listens on by default.
pub const REDIS_PORT_DEFAULT: u16 = 6379;
/// Largest bulk string accepted in a reply; a longer one is taken for a corrupt stream.
pub const BULK_BYTES_MAX: usize = 64 << 20;
/// Longest simple-string, error or integer line accepted in a reply.
pub const LINE_BYTES_MAX: usize = 64 << 10;
/// Most elements in an array reply.
pub const ARRAY_ELEMENTS_MAX: usize = 1 << 20;
/// Deepest nesting of array replies.
const ARRAY_DEPTH_MAX: usize = 8;
/// Bytes the writer gathers from queued requests before it writes.
const WRITE_BATCH_BYTES: usize = 64 << 10;
/// Bytes read from the socket at a time (at least).
const READ_CHUNK_BYTES: usize = 64 << 10;

/// One parsed reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// The null bulk string (`$-1`) or the null array (`*-1`).
    Null,
    Array(Vec<Reply>),
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisError {
    /// The connection failed or was closed.
    Io,
    /// The reply did not parse, or was not of the type the command answers with.
    Protocol(String),
    /// The server answered with an error reply (`-ERR ...`).
    Server(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Io => write!(formatter, "the connection failed or was closed"),
            RedisError::Protocol(message) => write!(formatter, "bad reply: {message}"),
            RedisError::Server(message) => write!(formatter, "server error: {message}"),
        }
    }
}

/// Appends the command `args` to `out` as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buffer`: `Ok(None)` if it is not complete yet,
/// otherwise the reply and the bytes it took.
///
/// # Errors
/// A message if the bytes are not RESP2 or exceed a limit.
pub fn parse(buffer: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buffer, 0)
}

fn parse_at(buffer: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, String> {
    let Some((line, mut used)) = line(buffer)? else { return Ok(None) };
    let (kind, text) = line.split_first().ok_or("empty reply line")?;
    let reply = match kind {
        b'+' => Reply::Simple(utf8(text)?),
        b'-' => Reply::Error(utf8(text)?),
        b':' => Reply::Integer(integer(text)?),
        b'$' => match integer(text)? {
            -1 => Reply::Null,
            length if (0..=BULK_BYTES_MAX as i64).contains(&length) => {
                let length = length as usize;
                let Some(rest) = buffer.get(used..used + length + 2) else { return Ok(None) };
                if &rest[length..] != b"\r\n" {
                    return Err("bulk string not followed by CRLF".to_owned());
                }
                used += length + 2;
                Reply::Bulk(rest[..length].to_vec())
            }
            length => return Err(format!("bulk length {length} out of range")),
        },
        b'*' => match integer(text)? {
            -1 => Reply::Null,
            count if (0..=ARRAY_ELEMENTS_MAX as i64).contains(&count) => {
                if depth >= ARRAY_DEPTH_MAX {
                    return Err(format!("arrays nested deeper than {ARRAY_DEPTH_MAX}"));
                }
                let mut elements = Vec::with_capacity((count as usize).min(1024));
                for _ in 0..count {
                    let Some((element, took)) = parse_at(&buffer[used..], depth + 1)? else {
                        return Ok(None);
                    };
                    elements.push(element);
                    used += took;
                }
                Reply::Array(elements)
            }
            count => return Err(format!("array length {count} out of range")),
        },
        other => return Err(format!("unknown reply type byte 0x{other:02x}")),
    };
    Ok(Some((reply, used)))
}

/// The first line of `buffer` without its CRLF, and the bytes it took with it.
fn line(buffer: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    let searched = &buffer[..buffer.len().min(LINE_BYTES_MAX + 2)];
    match searched.iter().position(|&byte| byte == b'\n') {
        Some(end) if end > 0 && buffer[end - 1] == b'\r' => Ok(Some((&buffer[..end - 1], end + 1))),
        Some(_) => Err("reply line not ended by CRLF".to_owned()),
        None if searched.len() > LINE_BYTES_MAX => Err(format!("reply line longer than {LINE_BYTES_MAX} B")),
        None => Ok(None),
    }
}

fn utf8(text: &[u8]) -> Result<String, String> {
    String::from_utf8(text.to_vec()).map_err(|_| "reply line is not UTF-8".to_owned())
}

fn integer(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("`{}` is not an integer", String::from_utf8_lossy(text)))
}

/// A request on its way to the writer: the encoded command and where its reply goes.
type Request = (Vec<u8>, oneshot::Sender<Result<Reply, RedisError>>);

/// One pipelining connection to a redis server; clones share it.
#[derive(Clone)]
pub struct RedisClient {
    requests: mpsc::UnboundedSender<Request>,
}

impl RedisClient {
    /// Connects to `address` (`HOST:PORT`) and starts the writer and reader tasks.
    ///
    /// # Errors
    /// The connection error.
    pub async fn connect(address: &str) -> std::io::Result<RedisClient> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let (requests, queued) = mpsc::unbounded_channel();
        let (waiting, to_answer) = mpsc::unbounded_channel();
        tokio::spawn(write_requests(writer, queued, waiting));
        tokio::spawn(read_replies(reader, to_answer));
        Ok(RedisClient { requests })
    }

    /// Sends the command `args` and waits for its reply; an error reply is an error.
    ///
    /// # Errors
    /// [`RedisError::Io`] if the connection failed, [`RedisError::Protocol`] if the reply did
    /// not parse, [`RedisError::Server`] for an error reply.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut command = Vec::with_capacity(16 + args.iter().map(|arg| arg.len() + 16).sum::<usize>());
        encode(args, &mut command);
        let (reply_to, reply) = oneshot::channel();
        self.requests.send((command, reply_to)).map_err(|_| RedisError::Io)?;
        match reply.await {
            Ok(Ok(Reply::Error(message))) => Err(RedisError::Server(message)),
            Ok(result) => result,
            Err(_dropped) => Err(RedisError::Io),
        }
    }

    /// `GET key`: the value, or `None` if the key is missing.
    ///
    /// # Errors
    /// As [`RedisClient::call`], and a protocol error for a reply that is not a bulk string.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        match self.call(&[b"GET", key.as_bytes()]).await? {
            Reply::Bulk(value) => Ok(Some(value)),
            Reply::Null => Ok(None),
            other => Err(unexpected("GET", &other)),
        }
    }

    /// `SET key value`.
    ///
    /// # Errors
    /// As [`RedisClient::call`], and a protocol error for a reply other than `+OK`.
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), RedisError> {
        match self.call(&[b"SET", key.as_bytes(), value]).await? {
            Reply::Simple(ok) if ok == "OK" => Ok(()),
            other => Err(unexpected("SET", &other)),
        }
    }

    /// `INFO server`, reduced to "redis VERSION" (or "redis" if the reply does not say).
    ///
    /// # Errors
    /// As [`RedisClient::call`] (an error reply here usually means authentication is needed).
    pub async fn server_name(&self) -> Result<String, RedisError> {
        let info = match self.call(&[b"INFO", b"server"]).await? {
            Reply::Bulk(info) => info,
            other => return Err(unexpected("INFO", &other)),
        };
        let info = String::from_utf8_lossy(&info);
        let version = info.lines().find_map(|line| line.strip_prefix("redis_version:"));
        Ok(version.map_or_else(|| "redis".to_owned(), |version| format!("redis {}", version.trim())))
    }
}

fn unexpected(command: &str, reply: &Reply) -> RedisError {
    let mut shown = format!("{reply:?}");
    shown.truncate(80);
    RedisError::Protocol(format!("unexpected reply to {command}: {shown}"))
}

/// Writes queued requests in order, each after its reply slot was queued for the reader.
async fn write_requests(
    mut writer: OwnedWriteHalf,
    mut queued: mpsc::UnboundedReceiver<Request>,
    waiting: mpsc::UnboundedSender<oneshot::Sender<Result<Reply, RedisError>>>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH_BYTES);
    while let Some(mut request) = queued.recv().await {
        batch.clear();
        loop {
            let (command, reply_to) = request;
            if waiting.send(reply_to).is_err() {
                return; // The reader ended: the connection is gone.
            }
            batch.extend_from_slice(&command);
            if batch.len() >= WRITE_BATCH_BYTES {
                break;
            }
            match queued.try_recv() {
                Ok(next) => request = next,
                Err(_) => break,
            }
        }
        if writer.write_all(&batch).await.is_err() {
            return;
        }
    }
}

/// Hands each reply to the oldest waiting request. Returning drops every request still
/// waiting, which then fails with [`RedisError::Io`].
async fn read_replies(
    mut reader: OwnedReadHalf,
    mut to_answer: mpsc::UnboundedReceiver<oneshot::Sender<Result<Reply, RedisError>>>,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut start = 0;
    loop {
        loop {
            let parsed = parse(&buffer[start..]);
            let reply = match parsed {
                Ok(None) => break,
                Ok(Some((reply, used))) => {
                    start += used;
                    Ok(reply)
                }
                Err(message) => Err(RedisError::Protocol(message)),
            };
            let failed = reply.is_err();
            // A reply nobody asked for means the stream is out of step: give up on it.
            let Some(reply_to) = to_answer.recv().await else { return };
            let _ = reply_to.send(reply);
            if failed {
                return;
            }
        }
        buffer.drain(..start);
        start = 0;
        buffer.reserve(READ_CHUNK_BYTES);
        match reader.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Reply {
        let (reply, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "{bytes:?}");
        reply
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&[b"SET", b"loadgen-1", b"a\r\nb"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$9\r\nloadgen-1\r\n$4\r\na\r\nb\r\n");
        out.clear();
        encode(&[b"GET", b""], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_type_parses() {
        assert_eq!(parsed(b"+OK\r\n"), Reply::Simple("OK".to_owned()));
        assert_eq!(parsed(b"-ERR wrong type\r\n"), Reply::Error("ERR wrong type".to_owned()));
        assert_eq!(parsed(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(parsed(b"$5\r\nhe\r\no\r\n"), Reply::Bulk(b"he\r\no".to_vec()));
        assert_eq!(parsed(b"$0\r\n\r\n"), Reply::Bulk(Vec::new()));
        assert_eq!(parsed(b"$-1\r\n"), Reply::Null);
        assert_eq!(parsed(b"*-1\r\n"), Reply::Null);
        assert_eq!(
            parsed(b"*3\r\n$1\r\na\r\n:1\r\n*1\r\n$-1\r\n"),
            Reply::Array(vec![
                Reply::Bulk(b"a".to_vec()),
                Reply::Integer(1),
                Reply::Array(vec![Reply::Null])
            ])
        );
    }

    #[test]
    fn partial_replies_wait_for_more() {
        let whole: &[u8] = b"*2\r\n$5\r\nhello\r\n+OK\r\n";
        for end in 0..whole.len() {
            assert_eq!(parse(&whole[..end]), Ok(None), "{:?}", &whole[..end]);
        }
        assert_eq!(
            parsed(whole),
            Reply::Array(vec![Reply::Bulk(b"hello".to_vec()), Reply::Simple("OK".into())])
        );
    }

    #[test]
    fn pipelined_replies_parse_one_after_another() {
        let stream: &[u8] = b"+OK\r\n$3\r\nabc\r\n$-1\r\n-ERR x\r\n:7\r\n$2\r\nx";
        let mut replies = Vec::new();
        let mut start = 0;
        while let Some((reply, used)) = parse(&stream[start..]).unwrap() {
            replies.push(reply);
            start += used;
        }
        assert_eq!(
            replies,
            [
                Reply::Simple("OK".into()),
                Reply::Bulk(b"abc".to_vec()),
                Reply::Null,
                Reply::Error("ERR x".into()),
                Reply::Integer(7)
            ]
        );
        assert_eq!(&stream[start..], b"$2\r\nx", "the partial reply stays");
    }

    #[test]
    fn malformed_replies_are_errors() {
        let too_long = format!("+{}", "a".repeat(LINE_BYTES_MAX + 10));
        let bulk_too_long = format!("${}\r\n", BULK_BYTES_MAX + 1);
        for bad in [
            &b"?x\r\n"[..],
            b"+OK\n",
            b"\r\n",
            b":12a\r\n",
            b"$-2\r\n",
            b"$3\r\nabcde",
            b"*-5\r\n",
            bulk_too_long.as_bytes(),
            too_long.as_bytes(),
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let nested = "*1\r\n".repeat(ARRAY_DEPTH_MAX + 1) + ":1\r\n";
        assert!(parse(nested.as_bytes()).is_err());
    }

    /// Answers the first three commands (in whatever order they arrive) only once all three
    /// are in, one byte per write to exercise partial reads; never answers a fourth.
    async fn fake_server(listener: tokio::net::TcpListener) {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (mut received, mut start, mut replies) = (Vec::new(), 0, Vec::new());
        let mut chunk = [0u8; 1024];
        let mut answered = 0;
        while answered < 3 {
            let read = socket.read(&mut chunk).await.unwrap();
            assert!(read > 0);
            received.extend_from_slice(&chunk[..read]);
            while let Some((Reply::Array(command), used)) = parse(&received[start..]).unwrap() {
                start += used;
                answered += 1;
                let reply: &[u8] = match &command[..] {
                    [Reply::Bulk(get), Reply::Bulk(key)] if get == b"GET" && key == b"a" => b"$1\r\nA\r\n",
                    [Reply::Bulk(get), _] if get == b"GET" => b"$-1\r\n",
                    [Reply::Bulk(set), _, _] if set == b"SET" => b"+OK\r\n",
                    _ => b"-ERR unknown command\r\n",
                };
                replies.extend_from_slice(reply);
            }
        }
        for byte in replies {
            // One byte at a time: every reply arrives in pieces.
            socket.write_all(&[byte]).await.unwrap();
        }
        let _ = socket.read(&mut chunk).await;
    }

    #[tokio::test]
    async fn the_client_pipelines_and_fails_waiting_requests_when_the_connection_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(fake_server(listener));
        let client = RedisClient::connect(&address).await.unwrap();
        let (first, second, third) = tokio::join!(client.get("a"), client.get("b"), client.set("c", b"v"));
        assert_eq!((first, second, third), (Ok(Some(b"A".to_vec())), Ok(None), Ok(())));
        // The server reads the fourth command and closes without answering.
        assert_eq!(client.call(&[b"PING"]).await, Err(RedisError::Io));
        server.await.unwrap();
    }
}
