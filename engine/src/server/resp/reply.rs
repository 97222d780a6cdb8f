//! RESP replies, in RESP2 or (after `HELLO 3`) RESP3. The two differ here only in nulls and
//! maps: RESP2 has one null (`$-1`) and sends a map as a flat array of keys and values.

use bytes::{BufMut, BytesMut};

/// The reply protocol a connection chose with HELLO (RESP2 until then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// Writes replies into a connection's output. Replies that carry a secret reserve their room
/// through [`crate::wipe::reserve`] first, so the buffer never moves with plaintext in it.
pub struct Reply<'a> {
    pub out: &'a mut BytesMut,
    pub protocol: Protocol,
}

impl Reply<'_> {
    pub fn simple(&mut self, text: &str) {
        self.line(b'+', text.as_bytes());
    }

    pub fn ok(&mut self) {
        self.out.put_slice(b"+OK\r\n");
    }

    /// An error reply: `code` (one upper-case word, as Redis clients classify errors), then
    /// the message, with line breaks replaced so the reply stays one line.
    pub fn error(&mut self, code: &str, message: &str) {
        crate::wipe::reserve(self.out, code.len() + message.len() + 4);
        self.out.put_u8(b'-');
        self.out.put_slice(code.as_bytes());
        if !message.is_empty() {
            self.out.put_u8(b' ');
            for byte in message.bytes() {
                self.out.put_u8(if byte == b'\r' || byte == b'\n' { b' ' } else { byte });
            }
        }
        self.out.put_slice(b"\r\n");
    }

    pub fn integer(&mut self, value: i64) {
        self.line(b':', itoa(value).as_bytes());
    }

    pub fn bulk(&mut self, bytes: &[u8]) {
        crate::wipe::reserve(self.out, bytes.len() + 24);
        self.header(b'$', bytes.len());
        self.out.put_slice(bytes);
        self.out.put_slice(b"\r\n");
    }

    pub fn null(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.out.put_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.out.put_slice(b"_\r\n"),
        }
    }

    pub fn array(&mut self, length: usize) {
        self.header(b'*', length);
    }

    /// A map of `pairs` entries: RESP3 `%`, or a RESP2 array of twice as many elements.
    pub fn map(&mut self, pairs: usize) {
        match self.protocol {
            Protocol::Resp2 => self.header(b'*', 2 * pairs),
            Protocol::Resp3 => self.header(b'%', pairs),
        }
    }

    /// A key of a map: a bulk string.
    pub fn key(&mut self, key: &str) {
        self.bulk(key.as_bytes());
    }

    fn header(&mut self, marker: u8, length: usize) {
        self.line(marker, itoa(length as i64).as_bytes());
    }

    fn line(&mut self, marker: u8, text: &[u8]) {
        crate::wipe::reserve(self.out, text.len() + 3);
        self.out.put_u8(marker);
        self.out.put_slice(text);
        self.out.put_slice(b"\r\n");
    }
}

/// A decimal number without allocating.
fn itoa(value: i64) -> Digits {
    let mut digits = Digits { bytes: [0; 20], start: 20 };
    let negative = value < 0;
    let mut rest = value.unsigned_abs();
    loop {
        digits.start -= 1;
        digits.bytes[digits.start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if negative {
        digits.start -= 1;
        digits.bytes[digits.start] = b'-';
    }
    digits
}

struct Digits {
    bytes: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(protocol: Protocol, write: impl FnOnce(&mut Reply<'_>)) -> String {
        let mut out = BytesMut::new();
        write(&mut Reply { out: &mut out, protocol });
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn replies_in_both_protocols() {
        let map = |reply: &mut Reply<'_>| {
            reply.map(1);
            reply.key("a");
            reply.integer(-12);
            reply.null();
        };
        assert_eq!(written(Protocol::Resp2, map), "*2\r\n$1\r\na\r\n:-12\r\n$-1\r\n");
        assert_eq!(written(Protocol::Resp3, map), "%1\r\n$1\r\na\r\n:-12\r\n_\r\n");
        assert_eq!(written(Protocol::Resp2, |r| r.error("ERR", "two\r\nlines")), "-ERR two  lines\r\n");
        assert_eq!(written(Protocol::Resp2, |r| r.integer(i64::MIN)), ":-9223372036854775808\r\n");
        assert_eq!(written(Protocol::Resp2, |r| r.bulk(b"")), "$0\r\n\r\n");
        assert_eq!(written(Protocol::Resp2, |r| r.simple("PONG")), "+PONG\r\n");
    }
}
