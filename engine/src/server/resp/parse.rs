//! RESP requests: what a Redis client sends. A command is an array of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n`), or an inline line of space-separated words
//! (`PING\r\n`, as typed into telnet). [`parse`] finds one whole command at the front of a
//! buffer without copying it, as [`credshard_protocol::frame::check`] does for native frames:
//! the arguments are byte ranges of the buffer.
//!
//! Every length is checked before anything is buffered for it: a bulk string or a command
//! above its limit, an array longer than the argument limit, or a length line that is not a
//! number is a protocol error, after which the connection is closed (as Redis does).

use std::ops::Range;

/// What one command may take.
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// Arguments of one command, its name included.
    pub args_max: usize,
    /// Bytes of one whole command as sent (lengths and line ends included).
    pub command_bytes_max: usize,
}

/// Why the input can no longer be split into commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Protocol error: invalid multibulk length")]
    ArrayLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    #[error("Protocol error: a bulk string does not end with CRLF")]
    BulkEnd,
    #[error("Protocol error: too many arguments (at most {0})")]
    TooManyArgs(usize),
    #[error("Protocol error: command of more than {0} bytes")]
    TooLarge(usize),
    #[error("Protocol error: unbalanced quotes in an inline command")]
    InlineQuotes,
}

/// The longest length line (`*N` or `$N`) accepted, CRLF excluded.
const LENGTH_LINE_BYTES_MAX: usize = 24;

/// Looks for one whole command at the front of `input`. `Ok(None)`: more bytes are needed.
/// `Ok(Some(taken))`: the command's arguments are in `args` (ranges of `input`; none for an
/// empty array or line, which the caller skips) and it took `taken` bytes. Inline commands
/// are split on spaces and tabs, and may quote words in `"…"` or `'…'` (without escapes).
///
/// # Errors
/// [`ParseError`] when the input breaks the protocol or a limit, judged on the bytes alone
/// (never on how they were split into reads).
pub fn parse(
    input: &[u8],
    limits: &ParseLimits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ParseError> {
    args.clear();
    match input.first() {
        None => Ok(None),
        Some(b'*') => parse_array(input, limits, args),
        Some(_) => parse_inline(input, limits, args),
    }
}

fn parse_array(
    input: &[u8],
    limits: &ParseLimits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ParseError> {
    let Some((count, mut at)) = length_line(input, 0, ParseError::ArrayLength)? else { return Ok(None) };
    if count <= 0 {
        // `*0` and `*-1` are no command at all (Redis skips them too).
        return Ok(Some(at));
    }
    let count = count as usize;
    if count > limits.args_max {
        return Err(ParseError::TooManyArgs(limits.args_max));
    }
    for _ in 0..count {
        match input.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(ParseError::ExpectedBulk(other)),
        }
        let Some((length, body)) = length_line(input, at, ParseError::BulkLength)? else { return Ok(None) };
        if length < 0 {
            return Err(ParseError::BulkLength);
        }
        let end = body.checked_add(length as usize).ok_or(ParseError::BulkLength)?;
        if end + 2 > limits.command_bytes_max {
            return Err(ParseError::TooLarge(limits.command_bytes_max));
        }
        if input.len() < end + 2 {
            return Ok(None);
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err(ParseError::BulkEnd);
        }
        args.push(body..end);
        at = end + 2;
    }
    Ok(Some(at))
}

/// Reads `*N\r\n` or `$N\r\n` at `at` (the marker byte is there): the number and where the
/// next byte is.
fn length_line(input: &[u8], at: usize, error: ParseError) -> Result<Option<(i64, usize)>, ParseError> {
    let digits_start = at + 1;
    let window = &input[digits_start..input.len().min(digits_start + LENGTH_LINE_BYTES_MAX + 2)];
    let Some(cr) = window.iter().position(|&byte| byte == b'\r') else {
        return if window.len() > LENGTH_LINE_BYTES_MAX { Err(error) } else { Ok(None) };
    };
    match window.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(error),
    }
    let text = std::str::from_utf8(&window[..cr]).map_err(|_| error)?;
    let valid = !text.is_empty()
        && text.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
    let number: i64 = valid.then(|| text.parse().ok()).flatten().ok_or(error)?;
    Ok(Some((number, digits_start + cr + 2)))
}

fn parse_inline(
    input: &[u8],
    limits: &ParseLimits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ParseError> {
    let Some(newline) = input.iter().position(|&byte| byte == b'\n') else {
        return if input.len() >= limits.command_bytes_max {
            Err(ParseError::TooLarge(limits.command_bytes_max))
        } else {
            Ok(None)
        };
    };
    if newline + 1 > limits.command_bytes_max {
        return Err(ParseError::TooLarge(limits.command_bytes_max));
    }
    let line_end = if newline > 0 && input[newline - 1] == b'\r' { newline - 1 } else { newline };
    let mut at = 0;
    while at < line_end {
        match input[at] {
            b' ' | b'\t' => at += 1,
            quote @ (b'"' | b'\'') => {
                let close = input[at + 1..line_end]
                    .iter()
                    .position(|&byte| byte == quote)
                    .ok_or(ParseError::InlineQuotes)?;
                args.push(at + 1..at + 1 + close);
                at += close + 2;
            }
            _ => {
                let start = at;
                while at < line_end && !matches!(input[at], b' ' | b'\t') {
                    at += 1;
                }
                args.push(start..at);
            }
        }
        if args.len() > limits.args_max {
            return Err(ParseError::TooManyArgs(limits.args_max));
        }
    }
    Ok(Some(newline + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ParseLimits = ParseLimits { args_max: 8, command_bytes_max: 1024 };

    /// The arguments of the command at the front of the input, and the bytes it took.
    type Parsed<'a> = Option<(Vec<&'a [u8]>, usize)>;

    fn words(input: &[u8]) -> Result<Parsed<'_>, ParseError> {
        let mut args = Vec::new();
        let taken = parse(input, &LIMITS, &mut args)?;
        Ok(taken.map(|taken| (args.iter().map(|range| &input[range.clone()]).collect(), taken)))
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn arrays_of_bulk_strings() {
        let input = b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n*1\r\n$4\r\nPING\r\n";
        let (args, taken) = words(input).unwrap().unwrap();
        assert_eq!(args, [&b"GET"[..], b"k1"]);
        assert_eq!(taken, 21);
        assert_eq!(words(&input[taken..]).unwrap().unwrap().0, [&b"PING"[..]]);
        // Binary-safe: CRLF inside a bulk string is data.
        let (args, _) = words(b"*1\r\n$4\r\na\r\nb\r\n").unwrap().unwrap();
        assert_eq!(args, [&b"a\r\nb"[..]]);
        // No command at all.
        assert_eq!(words(b"*0\r\n").unwrap(), Some((vec![], 4)));
    }

    #[test]
    fn inline_commands() {
        assert_eq!(words(b"PING\r\n").unwrap(), Some((vec![&b"PING"[..]], 6)));
        assert_eq!(words(b"set  k \"a b\"\n").unwrap().unwrap().0, [&b"set"[..], b"k", b"a b"]);
        assert_eq!(words(b"\r\n").unwrap(), Some((vec![], 2)));
        assert_eq!(words(b"GET k").unwrap(), None);
        assert_eq!(words(b"GET \"k\r\n"), Err(ParseError::InlineQuotes));
    }

    #[test]
    fn protocol_errors() {
        assert_eq!(words(b"*x\r\n"), Err(ParseError::ArrayLength));
        assert_eq!(words(b"*9\r\n"), Err(ParseError::TooManyArgs(8)));
        assert_eq!(words(b"*1\r\n+PING\r\n"), Err(ParseError::ExpectedBulk(b'+')));
        assert_eq!(words(b"*1\r\n$-1\r\n"), Err(ParseError::BulkLength));
        assert_eq!(words(b"*1\r\n$2000\r\n"), Err(ParseError::TooLarge(1024)), "refused before its body");
        assert_eq!(words(b"*1\r\n$2\r\nabXY"), Err(ParseError::BulkEnd));
        assert_eq!(words(b"*1\r\n$1111111111111111111111111111"), Err(ParseError::BulkLength));
        assert_eq!(words(b"*1\r\n$99999999999999999999\r\n"), Err(ParseError::BulkLength), "overflows i64");
        assert_eq!(words(&[b'x'; 1024]), Err(ParseError::TooLarge(1024)), "an endless inline line");
    }

    proptest! {
        /// Every encoded command parses back to its arguments, and every strict prefix of it
        /// asks for more bytes, never for an error or a wrong command.
        #[test]
        fn encoded_commands_round_trip(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8)) {
            let borrowed: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let input = encode(&borrowed);
            let (parsed, taken) = words(&input).unwrap().unwrap();
            prop_assert_eq!(parsed, borrowed);
            prop_assert_eq!(taken, input.len());
            for cut in 0..input.len() {
                prop_assert_eq!(words(&input[..cut]).unwrap(), None);
            }
        }

        /// Arbitrary bytes never panic, and a parse never claims more bytes than it was given.
        #[test]
        fn arbitrary_input_is_judged_without_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((args, taken))) = words(&input) {
                prop_assert!(taken <= input.len());
                prop_assert!(args.len() <= LIMITS.args_max);
            }
        }
    }
}
