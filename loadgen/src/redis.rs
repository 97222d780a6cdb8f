//! A minimal RESP2 codec, so that a stock `redis-server` can be loaded as the peer of
//! credshard: commands go out as arrays of bulk strings, replies (simple string, error,
//! integer, bulk, null, array) are parsed in place as they arrive, borrowing from the read
//! buffer (only an array reply allocates, for its element list).
//!
//! The connection itself is the workload's ([`crate::connection`]): one task per connection
//! encodes a pipeline window into one buffer and hands each reply, in order, to the oldest
//! request still waiting, as RESP replies come back in order.

use bytes::{BufMut, BytesMut};

use crate::value;

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

/// One parsed reply, borrowing from the buffer it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Simple(&'a str),
    Error(&'a str),
    Integer(i64),
    Bulk(&'a [u8]),
    /// The null bulk string (`$-1`) or the null array (`*-1`).
    Null,
    Array(Vec<Reply<'a>>),
}

/// Appends the command `args` to `out` as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut BytesMut) {
    let mut digits = [0u8; 20];
    out.put_u8(b'*');
    out.extend_from_slice(value::decimal(args.len() as u64, &mut digits));
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.put_u8(b'$');
        out.extend_from_slice(value::decimal(arg.len() as u64, &mut digits));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buffer`: `Ok(None)` if it is not complete yet,
/// otherwise the reply and the bytes it took.
///
/// # Errors
/// A message if the bytes are not RESP2 or exceed a limit.
pub fn parse(buffer: &[u8]) -> Result<Option<(Reply<'_>, usize)>, String> {
    parse_at(buffer, 0)
}

fn parse_at(buffer: &[u8], depth: usize) -> Result<Option<(Reply<'_>, usize)>, String> {
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
                Reply::Bulk(&rest[..length])
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

fn utf8(text: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(text).map_err(|_| "reply line is not UTF-8".to_owned())
}

fn integer(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("`{}` is not an integer", String::from_utf8_lossy(text)))
}

/// "redis VERSION" from an `INFO server` reply (or "redis" if it does not say).
pub fn server_name(info: &[u8]) -> String {
    let info = String::from_utf8_lossy(info);
    let version = info.lines().find_map(|line| line.strip_prefix("redis_version:"));
    version.map_or_else(|| "redis".to_owned(), |version| format!("redis {}", version.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Reply<'_> {
        let (reply, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "{bytes:?}");
        reply
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode(&[b"SET", b"loadgen-1", b"a\r\nb"], &mut out);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$9\r\nloadgen-1\r\n$4\r\na\r\nb\r\n");
        out.clear();
        encode(&[b"GET", b""], &mut out);
        assert_eq!(&out[..], b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_type_parses() {
        assert_eq!(parsed(b"+OK\r\n"), Reply::Simple("OK"));
        assert_eq!(parsed(b"-ERR wrong type\r\n"), Reply::Error("ERR wrong type"));
        assert_eq!(parsed(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(parsed(b"$5\r\nhe\r\no\r\n"), Reply::Bulk(b"he\r\no"));
        assert_eq!(parsed(b"$0\r\n\r\n"), Reply::Bulk(b""));
        assert_eq!(parsed(b"$-1\r\n"), Reply::Null);
        assert_eq!(parsed(b"*-1\r\n"), Reply::Null);
        assert_eq!(
            parsed(b"*3\r\n$1\r\na\r\n:1\r\n*1\r\n$-1\r\n"),
            Reply::Array(vec![Reply::Bulk(b"a"), Reply::Integer(1), Reply::Array(vec![Reply::Null])])
        );
    }

    #[test]
    fn partial_replies_wait_for_more() {
        let whole: &[u8] = b"*2\r\n$5\r\nhello\r\n+OK\r\n";
        for end in 0..whole.len() {
            assert_eq!(parse(&whole[..end]), Ok(None), "{:?}", &whole[..end]);
        }
        assert_eq!(parsed(whole), Reply::Array(vec![Reply::Bulk(b"hello"), Reply::Simple("OK")]));
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
            [Reply::Simple("OK"), Reply::Bulk(b"abc"), Reply::Null, Reply::Error("ERR x"), Reply::Integer(7)]
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
            b"+\xff\r\n",
            bulk_too_long.as_bytes(),
            too_long.as_bytes(),
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let nested = "*1\r\n".repeat(ARRAY_DEPTH_MAX + 1) + ":1\r\n";
        assert!(parse(nested.as_bytes()).is_err());
    }

    #[test]
    fn the_server_name_comes_from_info() {
        assert_eq!(
            server_name(b"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"),
            "redis 7.0.15"
        );
        assert_eq!(server_name(b"# Server\r\n"), "redis");
    }
}
