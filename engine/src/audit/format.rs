//! The audit line encoder, by hand: RFC 3339 UTC time from Unix milliseconds (the days-to-civil
//! algorithm of Howard Hinnant's "chrono-compatible low-level date algorithms"), decimal
//! integers and JSON string escapes, all written straight into the caller's buffer. No
//! `fmt` machinery and no allocation, because [`encode_event`] runs on every request.

use std::io::Write;
use std::net::SocketAddr;

use super::AuditEvent;

/// Bytes of an encoded event besides its variable strings: an upper bound used to reserve
/// once per event (field names, time, numbers, an IPv6 peer with scope id).
const FIXED_BYTES_MAX: usize = 256;

/// Appends `event` as one JSON line (ending in `\n`) to `out`, fields in the documented order
/// and `None` fields omitted.
pub(super) fn encode_event(out: &mut Vec<u8>, shard: usize, event: &AuditEvent<'_>) {
    let strings_bytes = event.token.len()
        + event.id.map_or(0, str::len)
        + event.owner.map_or(0, str::len)
        + event.scope.map_or(0, str::len);
    // Escapes can grow a string up to six times; reserving for the common case (none) is
    // enough: `extend_from_slice` grows the buffer if a string needs more.
    out.reserve(FIXED_BYTES_MAX + strings_bytes);
    out.extend_from_slice(b"{\"time\":\"");
    write_rfc3339_ms(out, event.time_ms);
    out.extend_from_slice(b"\",\"time_ms\":");
    write_u64(out, event.time_ms);
    out.extend_from_slice(b",\"shard\":");
    write_u64(out, shard as u64);
    out.extend_from_slice(b",\"token\":");
    write_json_string(out, event.token);
    out.extend_from_slice(b",\"peer\":\"");
    write_peer(out, &event.peer);
    out.extend_from_slice(b"\",\"op\":\"");
    out.extend_from_slice(event.op.name().as_bytes());
    out.push(b'"');
    if let Some(id) = event.id {
        out.extend_from_slice(b",\"id\":");
        write_json_string(out, id);
    }
    if let Some(owner) = event.owner {
        out.extend_from_slice(b",\"owner\":");
        write_json_string(out, owner);
    }
    if let Some(scope) = event.scope {
        out.extend_from_slice(b",\"scope\":");
        write_json_string(out, scope);
    }
    if let Some(version) = event.version {
        out.extend_from_slice(b",\"version\":");
        write_u64(out, version);
    }
    out.extend_from_slice(b",\"result\":\"");
    out.extend_from_slice(event.status.name().as_bytes());
    out.extend_from_slice(b"\"}\n");
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

/// Appends `text` as a quoted JSON string. Quotes and backslashes get a backslash; control
/// characters (C0, DEL and the C1 range U+0080..U+009F) become `\u00XX`, so that neither a
/// JSON parser nor a terminal showing the raw file (`tail -f`) can be confused by a
/// client-chosen id. Everything else, including other non-ASCII text, is copied as is.
pub(super) fn write_json_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.push(b'"');
    let mut start = 0;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let (escaped, width) = match ESCAPE[byte as usize] {
            0 => {
                index += 1;
                continue;
            }
            1 => (byte as u32, 1),
            2 => {
                out.extend_from_slice(&bytes[start..index]);
                out.extend_from_slice(&[b'\\', byte]);
                index += 1;
                start = index;
                continue;
            }
            // A valid &str has a continuation byte after 0xC2.
            _ => match bytes[index + 1] {
                second @ 0x80..=0x9F => (second as u32, 2),
                _ => {
                    index += 2;
                    continue;
                }
            },
        };
        out.extend_from_slice(&bytes[start..index]);
        out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX_DIGITS[(escaped >> 4) as usize],
            HEX_DIGITS[(escaped & 0xF) as usize],
        ]);
        index += width;
        start = index;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `value` in decimal.
pub(super) fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Appends `value` in decimal, zero-padded to `width` digits (more if it needs them).
fn write_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    let mut rest = value;
    while rest > 0 {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let start = start.min(digits.len() - width);
    out.extend_from_slice(&digits[start..]);
}

/// Appends the peer address: IPv4 by hand (the common case), IPv6 through std's formatter
/// (no allocation; its text needs no JSON escape).
fn write_peer(out: &mut Vec<u8>, peer: &SocketAddr) {
    match peer {
        SocketAddr::V4(address) => {
            let [a, b, c, d] = address.ip().octets();
            for (index, octet) in [a, b, c, d].into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                write_u64(out, octet as u64);
            }
            out.push(b':');
            write_u64(out, address.port() as u64);
        }
        SocketAddr::V6(address) => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{address}");
        }
    }
}

/// Milliseconds per day.
const DAY_MS: u64 = 86_400_000;

/// Appends `time_ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(super) fn write_rfc3339_ms(out: &mut Vec<u8>, time_ms: u64) {
    let (year, month, day) = civil_from_days(time_ms / DAY_MS);
    let ms_of_day = time_ms % DAY_MS;
    let seconds_of_day = ms_of_day / 1000;
    write_padded(out, year, 4);
    out.push(b'-');
    write_padded(out, month, 2);
    out.push(b'-');
    write_padded(out, day, 2);
    out.push(b'T');
    write_padded(out, seconds_of_day / 3600, 2);
    out.push(b':');
    write_padded(out, seconds_of_day / 60 % 60, 2);
    out.push(b':');
    write_padded(out, seconds_of_day % 60, 2);
    out.push(b'.');
    write_padded(out, ms_of_day % 1000, 3);
    out.push(b'Z');
}

/// `time_ms` as an RFC 3339 string (for the CLI's table).
pub fn rfc3339_ms(time_ms: u64) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339_ms(&mut out, time_ms);
    // Only ASCII digits and punctuation were written.
    String::from_utf8(out).unwrap_or_default()
}

/// (year, month 1..=12, day 1..=31) of `days` since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days end each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a civil date, or `None` before 1970 or for an invalid date.
pub fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let year = if month <= 2 { year.checked_sub(1)? } else { year };
    let era = year / 400;
    let year_of_era = year % 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).checked_sub(719_468)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credshard_protocol::{Op, Status};

    fn json_string(text: &str) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, text);
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
    fn civil_days_round_trip_over_four_centuries() {
        // Every day from 1970 to 2370 (a full 400-year cycle), against a running calendar.
        let (mut year, mut month, mut day) = (1970, 1, 1);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            assert_eq!(days_from_civil(year, month, day), Some(days));
            day += 1;
            if day > days_in_month(year, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        assert_eq!(days_from_civil(2023, 2, 29), None, "2023 is not a leap year");
        assert_eq!(days_from_civil(1900, 2, 29), None, "1900 is not a leap year");
        assert_eq!(days_from_civil(2024, 13, 1), None);
        assert_eq!(days_from_civil(1969, 12, 31), None, "before the epoch");
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
        for value in [0, 7, 10, 99, 1000, 123_456_789, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
        let mut out = Vec::new();
        write_padded(&mut out, 5, 3);
        write_padded(&mut out, 12_345, 4);
        write_padded(&mut out, 0, 2);
        assert_eq!(out, b"0051234500");
    }

    fn encode(event: &AuditEvent<'_>, shard: usize) -> String {
        let mut out = Vec::new();
        encode_event(&mut out, shard, event);
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
            encode_event(&mut out, index, &event);
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
