//! The audit line encoder, by hand: RFC 3339 UTC time from Unix milliseconds (the civil date
//! from `calendar`), decimal integers and JSON string escapes. No `fmt` machinery and no allocation beyond the buffer's
//! growth, because [`encode_event`] runs on every request: it makes room for the line in the
//! buffer once, stores bytes through a [`Cursor`] (indexed stores, no capacity check or
//! `memcpy` call per short field), and trims the room to what was written. The date and time
//! of day are formatted once per second ([`TimeText`]).

use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;

use super::calendar::civil_from_days;
use super::AuditEvent;

/// Bytes of an encoded event besides its strings' own bytes, at most: field names and
/// punctuation with the strings' quotes (123), the op and result names (9 + 19), the time
/// (24; 29 in the year 584 million that u64::MAX ms reaches), three u64s (20 each) and the
/// peer ([`PEER_BYTES_MAX`]): 302, rounded up. String escapes make more room as they go. The
/// `longest_possible_event_fits` test checks the bound.
const FIXED_BYTES_MAX: usize = 320;

/// `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535` is 58 bytes.
const PEER_BYTES_MAX: usize = 64;

/// 10000-01-01T00:00:00Z: from here on a year takes more than four digits.
const YEAR_10000_MS: u64 = 253_402_300_800_000;

/// Appends `event` as one JSON line (ending in `\n`) to `out`, fields in the documented order
/// and `None` fields omitted.
pub(super) fn encode_event(out: &mut Vec<u8>, shard: usize, event: &AuditEvent<'_>, time_text: &TimeText) {
    let room = FIXED_BYTES_MAX
        + event.token.len()
        + event.id.map_or(0, str::len)
        + event.owner.map_or(0, str::len)
        + event.scope.map_or(0, str::len);
    let mut cursor = Cursor::open(out, room);
    cursor.put(b"{\"time\":\"");
    time_text.write(&mut cursor, event.time_ms);
    cursor.put(b",\"shard\":");
    cursor.u64(shard as u64);
    cursor.put(b",\"token\":");
    cursor.json_string(event.token);
    cursor.put(b",\"peer\":\"");
    cursor.peer(&event.peer);
    cursor.put(b"\",\"op\":\"");
    cursor.put(event.op.name().as_bytes());
    cursor.put(b"\"");
    if let Some(id) = event.id {
        cursor.put(b",\"id\":");
        cursor.json_string(id);
    }
    if let Some(owner) = event.owner {
        cursor.put(b",\"owner\":");
        cursor.json_string(owner);
    }
    if let Some(scope) = event.scope {
        cursor.put(b",\"scope\":");
        cursor.json_string(scope);
    }
    if let Some(version) = event.version {
        cursor.put(b",\"version\":");
        cursor.u64(version);
    }
    cursor.put(b",\"result\":\"");
    cursor.put(event.status.name().as_bytes());
    cursor.put(b"\"}\n");
    cursor.finish();
}

/// The last second formatted, as RFC 3339 (`2026-11-23T05:12:01`) and in decimal
/// (`1795410721`), so that a second's events share one date computation and most digits.
pub(super) struct TimeText {
    second: Cell<u64>,
    date_time: Cell<[u8; 19]>,
    /// The decimal digits of `second`, right-aligned.
    second_digits: Cell<[u8; 20]>,
    second_digits_len: Cell<usize>,
}

impl TimeText {
    pub(super) fn new() -> TimeText {
        TimeText {
            second: Cell::new(u64::MAX),
            date_time: Cell::new([0; 19]),
            second_digits: Cell::new([0; 20]),
            second_digits_len: Cell::new(0),
        }
    }

    /// The time fields' text from the first value on: `2026-11-23T05:12:01.123Z","time_ms":1795410721123`.
    fn write(&self, cursor: &mut Cursor<'_>, time_ms: u64) {
        let second = time_ms / 1000;
        if time_ms >= YEAR_10000_MS || second == 0 {
            // Off the fixed-width path (a five-digit year, or no second digits): uncached.
            cursor.rfc3339_ms(time_ms);
            cursor.put(b"\",\"time_ms\":");
            cursor.u64(time_ms);
            return;
        }
        if second != self.second.get() {
            let start = cursor.at;
            cursor.date_time(second);
            let mut date_time = [0; 19];
            date_time.copy_from_slice(&cursor.out[start..cursor.at]);
            cursor.at = start;
            let len = decimal_len(second);
            let mut second_digits = [0; 20];
            write_digits(&mut second_digits[20 - len..], second);
            self.date_time.set(date_time);
            self.second_digits.set(second_digits);
            self.second_digits_len.set(len);
            self.second.set(second);
        }
        cursor.put(&self.date_time.get());
        cursor.milliseconds(time_ms);
        cursor.put(b"\",\"time_ms\":");
        cursor.put(&self.second_digits.get()[20 - self.second_digits_len.get()..]);
        cursor.digits(time_ms % 1000, 3);
    }
}

/// What a byte needs in a JSON string: 0 nothing, 1 a `\u00XX` escape, 2 a backslash before
/// it, 3 look at the next byte (0xC2 starts U+0080..U+00BF, of which U+0080..U+009F are C1
/// controls).
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = 1;
        byte += 1;
    }
    table[0x7F] = 1;
    table[b'"' as usize] = 2;
    table[b'\\' as usize] = 2;
    table[0xC2] = 3;
    table
};

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

/// "00", "01", ... "99".
const DIGIT_PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut pair = 0;
    while pair < 100 {
        table[pair * 2] = b'0' + (pair / 10) as u8;
        table[pair * 2 + 1] = b'0' + (pair % 10) as u8;
        pair += 1;
    }
    table
};

/// Digits `value` takes in decimal.
#[inline]
fn decimal_len(value: u64) -> usize {
    value.checked_ilog10().unwrap_or(0) as usize + 1
}

/// Fills `slots` with the last `slots.len()` decimal digits of `value`, two at a time.
#[inline]
fn write_digits(slots: &mut [u8], mut value: u64) {
    let mut end = slots.len();
    while end >= 2 {
        let pair = (value % 100) as usize * 2;
        slots[end - 2..end].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        value /= 100;
        end -= 2;
    }
    if end == 1 {
        slots[0] = b'0' + (value % 10) as u8;
    }
}

/// Stores into room made at the end of a buffer beforehand. Writing past the room is a bug
/// of the size bound and panics (a bounds check) rather than corrupting anything.
struct Cursor<'a> {
    out: &'a mut Vec<u8>,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Makes `room` bytes of room at the end of `out`.
    fn open(out: &'a mut Vec<u8>, room: usize) -> Cursor<'a> {
        let at = out.len();
        out.resize(at + room, 0);
        Cursor { out, at }
    }

    /// Trims the room to what was written.
    fn finish(self) {
        self.out.truncate(self.at);
    }

    fn grow(&mut self, bytes: usize) {
        self.out.resize(self.out.len() + bytes, 0);
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    /// `value` in decimal.
    #[inline]
    fn u64(&mut self, value: u64) {
        self.digits(value, decimal_len(value));
    }

    /// `value` in decimal, zero-padded to `width` digits (more if it needs them).
    #[inline]
    fn padded(&mut self, value: u64, width: usize) {
        self.digits(value, decimal_len(value).max(width));
    }

    /// The last `count` decimal digits of `value`.
    #[inline]
    fn digits(&mut self, value: u64, count: usize) {
        write_digits(&mut self.out[self.at..self.at + count], value);
        self.at += count;
    }

    /// `text` as a quoted JSON string. Quotes and backslashes get a backslash; control
    /// characters (C0, DEL and the C1 range U+0080..U+009F) become `\u00XX`, so that neither
    /// a JSON parser nor a terminal showing the raw file (`tail -f`) can be confused by a
    /// client-chosen id. Everything else, including other non-ASCII text, is copied as is.
    /// The room holds the text unescaped; each escape makes the room it needs.
    fn json_string(&mut self, text: &str) {
        let bytes = text.as_bytes();
        self.put(b"\"");
        let mut start = 0;
        let mut index = 0;
        while index < bytes.len() {
            let byte = bytes[index];
            let (escaped, width) = match ESCAPE[byte as usize] {
                0 => {
                    index += 1;
                    continue;
                }
                1 => (byte, 1),
                2 => {
                    self.grow(1);
                    self.put(&bytes[start..index]);
                    self.put(&[b'\\', byte]);
                    index += 1;
                    start = index;
                    continue;
                }
                // A valid &str has a continuation byte after 0xC2.
                _ => match bytes[index + 1] {
                    second @ 0x80..=0x9F => (second, 2),
                    _ => {
                        index += 2;
                        continue;
                    }
                },
            };
            self.grow(5);
            self.put(&bytes[start..index]);
            let high = HEX_DIGITS[(escaped >> 4) as usize];
            self.put(&[b'\\', b'u', b'0', b'0', high, HEX_DIGITS[(escaped & 0xF) as usize]]);
            index += width;
            start = index;
        }
        self.put(&bytes[start..]);
        self.put(b"\"");
    }

    /// The peer address: IPv4 by hand (the common case), IPv6 through std's formatter (no
    /// allocation; its text needs no JSON escape).
    fn peer(&mut self, peer: &SocketAddr) {
        match peer {
            SocketAddr::V4(address) => {
                let [a, b, c, d] = address.ip().octets();
                self.u64(a.into());
                self.put(b".");
                self.u64(b.into());
                self.put(b".");
                self.u64(c.into());
                self.put(b".");
                self.u64(d.into());
                self.put(b":");
                self.u64(address.port().into());
            }
            SocketAddr::V6(address) => {
                let mut text = [0u8; PEER_BYTES_MAX];
                let room = text.len();
                let mut rest = &mut text[..];
                // Fails only for a text longer than PEER_BYTES_MAX, which cannot be.
                let _ = write!(rest, "{address}");
                let written = room - rest.len();
                self.put(&text[..written]);
            }
        }
    }

    /// `time_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn rfc3339_ms(&mut self, time_ms: u64) {
        self.date_time(time_ms / 1000);
        self.milliseconds(time_ms);
    }

    /// `YYYY-MM-DDTHH:MM:SS` of a Unix second.
    fn date_time(&mut self, second: u64) {
        let (year, month, day) = civil_from_days(second / 86_400);
        let second_of_day = second % 86_400;
        self.padded(year, 4);
        self.put(b"-");
        self.digits(month, 2);
        self.put(b"-");
        self.digits(day, 2);
        self.put(b"T");
        self.digits(second_of_day / 3600, 2);
        self.put(b":");
        self.digits(second_of_day / 60 % 60, 2);
        self.put(b":");
        self.digits(second_of_day % 60, 2);
    }

    /// `.mmmZ`
    fn milliseconds(&mut self, time_ms: u64) {
        self.put(b".");
        self.digits(time_ms % 1000, 3);
        self.put(b"Z");
    }
}

/// `time_ms` as an RFC 3339 string (for the CLI's table).
pub fn rfc3339_ms(time_ms: u64) -> String {
    let mut text = Vec::with_capacity(32);
    let mut cursor = Cursor::open(&mut text, 32);
    cursor.rfc3339_ms(time_ms);
    cursor.finish();
    // Only ASCII digits and punctuation were written.
    String::from_utf8_lossy(&text).into_owned()
}

/// Runs `write` on a cursor over `room_bytes` of room at the end of `out`.
#[cfg(test)]
fn with_room(out: &mut Vec<u8>, room_bytes: usize, write: impl FnOnce(&mut Cursor<'_>)) {
    let mut cursor = Cursor::open(out, room_bytes);
    write(&mut cursor);
    cursor.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use credshard_protocol::{Op, Status};

    fn json_string(text: &str) -> String {
        let mut out = Vec::new();
        with_room(&mut out, text.len() + 2, |cursor| cursor.json_string(text));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_known_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_795_410_721_123, "2026-11-23T05:12:01.123Z"),
            // 2000 is a leap year (divisible by 400): Feb 29 exists, then March 1.
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_800_000, "2000-03-01T00:00:00.000Z"),
            // 2100 is not (divisible by 100, not by 400): Feb 28 is followed by March 1.
            (4_107_456_000_000, "2100-02-28T00:00:00.000Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (1_709_164_800_000, "2024-02-29T00:00:00.000Z"),
            (1_735_689_599_999, "2024-12-31T23:59:59.999Z"),
            (1_735_689_600_000, "2025-01-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ];
        for (time_ms, expected) in cases {
            assert_eq!(rfc3339_ms(time_ms), expected, "time_ms {time_ms}");
        }
    }

    #[test]
    fn time_text_reuses_a_second_and_follows_changes() {
        let time_text = TimeText::new();
        let times = [
            1_795_410_721_123,
            1_795_410_721_007,
            999,
            1_000,
            1_001,
            99_999,
            100_000,
            1_795_410_721_999,
            1_795_410_722_000,
            1_795_410_721_000,
            0,
            253_402_300_799_999,
            253_402_300_800_000,
            u64::MAX,
            1_795_410_721_500,
        ];
        for time_ms in times {
            let mut out = Vec::new();
            with_room(&mut out, 80, |cursor| time_text.write(cursor, time_ms));
            let expected = format!("{}\",\"time_ms\":{time_ms}", rfc3339_ms(time_ms));
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        assert_eq!(rfc3339_ms(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }

    #[test]
    fn escapes_strings() {
        assert_eq!(json_string("db/main"), r#""db/main""#);
        assert_eq!(json_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(json_string("line\nbreak\ttab\r"), r#""line\u000Abreak\u0009tab\u000D""#);
        assert_eq!(json_string("\u{0}\u{1b}[31m\u{7f}"), r#""\u0000\u001B[31m\u007F""#);
        // C1 controls are escaped; other non-ASCII text (é is 0xC3 0xA9, ¡ is 0xC2 0xA1) is not.
        assert_eq!(json_string("x\u{9b}y\u{85}"), r#""x\u009By\u0085""#);
        assert_eq!(json_string("héllo ¡ 鍵 🔑"), "\"héllo ¡ 鍵 🔑\"");
        assert_eq!(json_string(""), r#""""#);
    }

    #[test]
    fn every_char_class_round_trips_through_serde_json() {
        let mut text: String = (0u32..0x250).filter_map(char::from_u32).collect();
        text.push_str("\u{2028}\u{2029}\u{FEFF}🔑\"\\/");
        let encoded = json_string(&text);
        assert_eq!(serde_json::from_str::<String>(&encoded).unwrap(), text);
        assert!(!encoded.bytes().any(|byte| byte < 0x20 || byte == 0x7F), "no raw control byte");
    }

    #[test]
    fn writes_integers() {
        for value in [0, 7, 9, 10, 99, 100, 1000, 123_456_789, 9_999_999_999_999_999_999, u64::MAX] {
            let mut out = Vec::new();
            with_room(&mut out, 20, |cursor| cursor.u64(value));
            assert_eq!(out, value.to_string().as_bytes());
        }
        let mut out = Vec::new();
        with_room(&mut out, 20, |cursor| {
            cursor.padded(5, 3);
            cursor.padded(12_345, 4);
            cursor.padded(0, 2);
        });
        assert_eq!(out, b"0051234500");
    }

    #[test]
    fn longest_possible_event_fits() {
        let op = Op::ALL.into_iter().max_by_key(|op| op.name().len()).unwrap();
        let status = Status::ALL.into_iter().max_by_key(|status| status.name().len()).unwrap();
        let text = "\u{0}\u{9f}\\";
        let event = AuditEvent {
            time_ms: u64::MAX,
            token: text,
            peer: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535".parse().unwrap(),
            op,
            id: Some(text),
            owner: Some(text),
            scope: Some(text),
            version: Some(u64::MAX),
            status,
        };
        let line = encode(&event, usize::MAX);
        assert!(line.len() - 4 * json_string(text).len() > 280, "close to the bound: {line}");
        serde_json::from_str::<serde_json::Value>(&line).unwrap();
    }

    fn encode(event: &AuditEvent<'_>, shard: usize) -> String {
        let mut out = Vec::new();
        encode_event(&mut out, shard, event, &TimeText::new());
        String::from_utf8(out).unwrap()
    }

    fn sample<'a>() -> AuditEvent<'a> {
        AuditEvent {
            time_ms: 1_795_410_721_123,
            token: "billing-reader",
            peer: "127.0.0.1:50000".parse().unwrap(),
            op: Op::Get,
            id: Some("db/main"),
            owner: None,
            scope: None,
            version: Some(3),
            status: Status::Ok,
        }
    }

    #[test]
    fn encodes_the_documented_line() {
        assert_eq!(
            encode(&sample(), 0),
            "{\"time\":\"2026-11-23T05:12:01.123Z\",\"time_ms\":1795410721123,\"shard\":0,\
             \"token\":\"billing-reader\",\"peer\":\"127.0.0.1:50000\",\"op\":\"GET\",\
             \"id\":\"db/main\",\"version\":3,\"result\":\"OK\"}\n"
        );
        let list = AuditEvent {
            op: Op::List,
            id: None,
            owner: Some("team-a"),
            scope: Some("prod/"),
            version: None,
            status: Status::Unauthorized,
            token: "-",
            peer: "[::1]:443".parse().unwrap(),
            ..sample()
        };
        assert_eq!(
            encode(&list, 12),
            "{\"time\":\"2026-11-23T05:12:01.123Z\",\"time_ms\":1795410721123,\"shard\":12,\
             \"token\":\"-\",\"peer\":\"[::1]:443\",\"op\":\"LIST\",\"owner\":\"team-a\",\
             \"scope\":\"prod/\",\"result\":\"UNAUTHORIZED\"}\n"
        );
    }

    #[test]
    fn every_line_round_trips_through_serde_json() {
        let hostile = "evil\"id\\\n\u{1b}[2J\u{9b}é";
        let peers = ["10.0.0.255:1", "[fe80::1%7]:65535", "[::ffff:192.168.1.1]:80", "0.0.0.0:0"];
        let mut out = Vec::new();
        let mut expected = Vec::new();
        let time_text = TimeText::new();
        for (index, (op, status)) in Op::ALL.into_iter().zip(Status::ALL.into_iter().cycle()).enumerate() {
            let optional = |text: &'static str| (index % 2 == 0).then_some(text);
            let event = AuditEvent {
                time_ms: 1_700_000_000_000 + index as u64 * 1_234_567,
                token: if index % 3 == 0 { hostile } else { "open" },
                peer: peers[index % peers.len()].parse().unwrap(),
                op,
                id: optional(hostile),
                owner: optional("owner\u{0}"),
                scope: (index % 3 == 1).then_some("scope/\""),
                version: (index % 2 == 1).then_some(u64::MAX - index as u64),
                status,
            };
            encode_event(&mut out, index, &event, &time_text);
            expected.push((
                event.time_ms,
                event.token,
                event.peer,
                event.id,
                event.owner,
                event.scope,
                event,
            ));
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), expected.len());
        for (index, (line, (time_ms, token, peer, id, owner, scope, event))) in
            lines.iter().zip(expected).enumerate()
        {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = value.as_object().unwrap();
            assert_eq!(object["time"], rfc3339_ms(time_ms));
            assert_eq!(object["time_ms"], time_ms);
            assert_eq!(object["shard"], index);
            assert_eq!(object["token"], token);
            assert_eq!(object["peer"].as_str().unwrap().parse::<SocketAddr>().unwrap(), peer);
            assert_eq!(object["op"], event.op.name());
            assert_eq!(object.get("id").map(|id| id.as_str().unwrap()), id);
            assert_eq!(object.get("owner").map(|owner| owner.as_str().unwrap()), owner);
            assert_eq!(object.get("scope").map(|scope| scope.as_str().unwrap()), scope);
            assert_eq!(object.get("version").map(|version| version.as_u64().unwrap()), event.version);
            assert_eq!(object["result"], event.status.name());
            // serde_json's map sorts its keys, so check the order in the text itself.
            let order = [
                "time", "time_ms", "shard", "token", "peer", "op", "id", "owner", "scope", "version",
                "result",
            ];
            let positions: Vec<usize> =
                order.iter().filter_map(|key| line.find(&format!("\"{key}\":"))).collect();
            assert_eq!(positions.len(), object.len(), "every field found once: {line}");
            assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "field order: {line}");
        }
    }
}
