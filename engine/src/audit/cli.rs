//! `credshard audit`: reads a server's audit files, filters and prints them, as a table or as
//! the JSON lines themselves.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use credshard_protocol::{Op, Status};

use super::reader::{self, AuditEntry, Filter};

/// Reads the audit log: every shard's file under `<data-dir>/audit`, merged by time.
#[derive(Clone, Debug, clap::Args)]
pub struct AuditArgs {
    /// The server's data dir; the audit files are in its `audit` dir.
    #[arg(long, env = "CREDSHARD_DATA_DIR", default_value = "./credshard-data")]
    pub data_dir: PathBuf,
    /// The audit dir itself (takes precedence over --data-dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Only events on this credential id.
    #[arg(long)]
    pub id: Option<String>,
    /// Only events of this token id ("-" before authentication, "open" without tokens).
    #[arg(long)]
    pub token: Option<String>,
    /// Only this op (GET, get_meta, get-meta, ...).
    #[arg(long)]
    pub op: Option<String>,
    /// Only this result (OK, UNAUTHORIZED, not-found, ...).
    #[arg(long)]
    pub result: Option<String>,
    /// From this time on (inclusive): RFC 3339 (2026-11-23T05:00:00Z, 2026-11-23), Unix
    /// ms, or a time ago (90s, 15m, 2h, 3d, 1w).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Before this time (exclusive); same forms as --since.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Print the matching lines as they are in the files.
    #[arg(long)]
    pub json: bool,
    /// Print only the newest N matching events (still oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl AuditArgs {
    /// The dir the audit files are read from.
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| super::audit_dir(&self.data_dir))
    }
}

/// Runs `credshard audit`: matching events to stdout, unparsable lines to stderr.
///
/// # Errors
/// Bad arguments, a missing audit dir, a file that cannot be read, or stdout closing early
/// for a reason other than a closed pipe.
pub fn run(args: &AuditArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = run_with(args, crate::time::now_ms(), &mut out, &mut stderr.lock());
    match result.and_then(|()| out.flush().map_err(anyhow::Error::from)) {
        // `credshard audit | head` is not an error.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// [`run`] with its clock and outputs given.
fn run_with(
    args: &AuditArgs,
    now_ms: u64,
    out: &mut dyn Write,
    errors: &mut dyn Write,
) -> anyhow::Result<()> {
    let filter = filter_from(args, now_ms)?;
    let dir = args.audit_dir();
    if !dir.is_dir() {
        bail!("no audit dir at {} (is --data-dir or --dir right?)", dir.display());
    }
    let mut write_failure = None;
    let outcome = reader::read_dir(&dir, &filter, &mut |bad_line| {
        if let Err(error) = writeln!(
            errors,
            "{}:{}: not an audit event: {}",
            bad_line.path.display(),
            bad_line.line_number,
            bad_line.reason
        ) {
            write_failure.get_or_insert(error);
        }
    })
    .with_context(|| format!("reading {}", dir.display()))?;
    if let Some(error) = write_failure {
        return Err(error.into());
    }
    let entries = &outcome.entries[outcome.entries.len().saturating_sub(args.limit.unwrap_or(usize::MAX))..];
    if args.json {
        for entry in entries {
            writeln!(out, "{}", entry.line)?;
        }
    } else {
        print_table(entries, out)?;
    }
    if outcome.lines_unparsable > 0 {
        writeln!(errors, "{} unparsable line(s) skipped", outcome.lines_unparsable)?;
    }
    if outcome.files_read == 0 {
        writeln!(errors, "no audit files in {}", dir.display())?;
    }
    Ok(())
}

fn filter_from(args: &AuditArgs, now_ms: u64) -> anyhow::Result<Filter> {
    let op = args
        .op
        .as_deref()
        .map(|text| {
            let name = canonical_name(text);
            match Op::ALL.into_iter().find(|op| op.name() == name) {
                Some(op) => Ok(op.name().to_owned()),
                None => bail!("unknown op {text:?}; one of: {}", Op::ALL.map(Op::name).join(", ")),
            }
        })
        .transpose()?;
    let result = args
        .result
        .as_deref()
        .map(|text| {
            let name = canonical_name(text);
            match Status::ALL.into_iter().find(|status| status.name() == name) {
                Some(status) => Ok(status.name().to_owned()),
                None => {
                    bail!("unknown result {text:?}; one of: {}", Status::ALL.map(Status::name).join(", "))
                }
            }
        })
        .transpose()?;
    let time = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|text| parse_time(text, now_ms).with_context(|| format!("--{flag} {text:?}")))
            .transpose()
    };
    Ok(Filter {
        id: args.id.clone(),
        token: args.token.clone(),
        op,
        result,
        since_ms: time("since", &args.since)?,
        until_ms: time("until", &args.until)?,
    })
}

/// `get-meta` → `GET_META`.
fn canonical_name(text: &str) -> String {
    text.trim().to_ascii_uppercase().replace('-', "_")
}

/// A `--since`/`--until` time as Unix ms: digits are Unix ms; digits and a unit (s, m, h, d,
/// w) are that long before `now_ms`; otherwise RFC 3339 (`2026-11-23T05:00:00Z`, with
/// optional fraction and a `Z` or `±hh:mm` offset) or a date (`2026-11-23`, midnight UTC).
fn parse_time(text: &str, now_ms: u64) -> anyhow::Result<u64> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text.parse().context("Unix ms out of range");
    }
    if let Some(unit) = text.bytes().last().filter(u8::is_ascii_alphabetic) {
        let count = &text[..text.len() - 1];
        if !count.is_empty() && count.bytes().all(|byte| byte.is_ascii_digit()) {
            let unit_ms: u64 = match unit {
                b's' => 1_000,
                b'm' => 60_000,
                b'h' => 3_600_000,
                b'd' => 86_400_000,
                b'w' => 604_800_000,
                _ => bail!("unknown unit {:?}: use s, m, h, d or w", unit as char),
            };
            let ago_ms = count.parse::<u64>().ok().and_then(|count| count.checked_mul(unit_ms));
            return ago_ms.and_then(|ago_ms| now_ms.checked_sub(ago_ms)).context("before 1970");
        }
    }
    parse_rfc3339(text).context("expected RFC 3339 UTC (2026-11-23T05:00:00Z), Unix ms, or a time ago (15m)")
}

/// RFC 3339 (a space may stand for the `T`, as its section 5.6 allows), or a date alone
/// (midnight UTC), as Unix ms; parsed by the `time` crate.
fn parse_rfc3339(text: &str) -> anyhow::Result<u64> {
    let at = if text.len() == 10 {
        let date_format = time::format_description::parse_borrowed::<2>("[year]-[month]-[day]")
            .expect("a valid description");
        time::Date::parse(text, &date_format)?.midnight().assume_utc()
    } else {
        let text = match text.as_bytes().get(10) {
            Some(b' ') => format!("{}T{}", &text[..10], &text[11..]),
            _ => text.to_owned(),
        };
        time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)?
    };
    u64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).context("before 1970")
}

/// An aligned table, one event per row. Client-chosen text (ids, token ids, filters) has its
/// control characters escaped so that it cannot drive the terminal.
fn print_table(entries: &[AuditEntry], out: &mut dyn Write) -> std::io::Result<()> {
    const HEADER: [&str; 8] = ["TIME", "SHARD", "TOKEN", "PEER", "OP", "ID", "VERSION", "RESULT"];
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|entry| {
            let subject = match (&entry.id, &entry.owner, &entry.scope) {
                (Some(id), _, _) => printable(id),
                (None, None, None) => "-".to_owned(),
                (None, owner, scope) => {
                    let owner = owner.as_deref().map(|owner| format!("owner={}", printable(owner)));
                    let scope = scope.as_deref().map(|scope| format!("scope={}", printable(scope)));
                    owner.into_iter().chain(scope).collect::<Vec<_>>().join(" ")
                }
            };
            [
                super::rfc3339_ms(entry.time_ms),
                entry.shard.to_string(),
                printable(&entry.token),
                printable(&entry.peer),
                printable(&entry.op),
                subject,
                entry.version.map_or_else(|| "-".to_owned(), |version| version.to_string()),
                printable(&entry.result),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
            }
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `text` with control characters and bidirectional formatting characters escaped
/// (`\u{1b}`, `\u{202e}`): an id cannot drive the terminal, nor make a line read in another
/// order than it is written (Trojan Source, CVE-2021-42574).
fn printable(text: &str) -> String {
    let escaped = |char: char| char.is_control() || is_bidirectional_formatting(char);
    if !text.chars().any(escaped) {
        return text.to_owned();
    }
    text.chars()
        .map(|char| if escaped(char) { char.escape_unicode().to_string() } else { char.into() })
        .collect()
}

/// The Unicode bidirectional embedding, override and isolate characters, and the marks.
fn is_bidirectional_formatting(char: char) -> bool {
    matches!(char, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        audit: AuditArgs,
    }

    fn args(arguments: &[&str]) -> AuditArgs {
        Command::try_parse_from(std::iter::once("audit").chain(arguments.iter().copied())).unwrap().audit
    }

    const NOW_MS: u64 = 1_795_410_721_123; // 2026-11-23T05:12:01.123Z

    #[test]
    fn parses_times() {
        let cases: [(&str, u64); 10] = [
            ("1795410721123", NOW_MS),
            ("2026-11-23T05:12:01.123Z", NOW_MS),
            ("2026-11-23t05:12:01.1234567z", NOW_MS),
            ("2026-11-23 05:12:01.12Z", NOW_MS - 3),
            ("2026-11-23T07:12:01.123+02:00", NOW_MS),
            ("2026-11-23T00:12:01.123-05:00", NOW_MS),
            ("2026-11-23", NOW_MS - (5 * 3600 + 12 * 60 + 1) * 1000 - 123),
            ("15m", NOW_MS - 15 * 60_000),
            ("2h", NOW_MS - 2 * 3_600_000),
            ("3d", NOW_MS - 3 * 86_400_000),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_time(text, NOW_MS).unwrap(), expected, "{text}");
        }
        assert_eq!(parse_time("2024-02-29T00:00:00Z", NOW_MS).unwrap(), 1_709_164_800_000);
        for bad in [
            "",
            "yesterday",
            "15y",
            "2023-02-29T00:00:00Z",
            "2026-11-23T05:12:01",
            "2026-11-23T24:00:00Z",
            "2026-11-23T05:12Z",
            "1969-12-31T00:00:00Z",
            "99999999999d",
            "2026-11-23T05:12:01.Z",
        ] {
            assert!(parse_time(bad, NOW_MS).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn builds_filters_from_arguments() {
        let filter = filter_from(
            &args(&["--op", "get-meta", "--result", "unauthorized", "--id", "db/main", "--since", "1h"]),
            NOW_MS,
        )
        .unwrap();
        assert_eq!(
            filter,
            Filter {
                id: Some("db/main".into()),
                token: None,
                op: Some("GET_META".into()),
                result: Some("UNAUTHORIZED".into()),
                since_ms: Some(NOW_MS - 3_600_000),
                until_ms: None,
            }
        );
        assert!(filter_from(&args(&["--op", "FETCH"]), NOW_MS).is_err());
        assert!(filter_from(&args(&["--result", "FINE"]), NOW_MS).is_err());
        assert!(filter_from(&args(&["--until", "soon"]), NOW_MS).is_err());
        assert_eq!(args(&["--data-dir", "/srv/cs"]).audit_dir(), PathBuf::from("/srv/cs/audit"));
        assert_eq!(args(&["--data-dir", "/srv/cs", "--dir", "/a"]).audit_dir(), PathBuf::from("/a"));
    }

    fn write_sample(dir: &std::path::Path) {
        let line = |time_ms: u64, token: &str, id: &str, result: &str| {
            format!(
                "{{\"time_ms\":{time_ms},\"shard\":0,\"token\":\"{token}\",\"peer\":\"10.0.0.1:9\",\"op\":\"GET\",\"id\":\"{id}\",\"result\":\"{result}\"}}\n"
            )
        };
        let content = [
            line(NOW_MS - 7_200_000, "reader", "db/main", "OK"),
            line(NOW_MS - 60_000, "-", "db/main", "UNAUTHORIZED"),
            "oops\n".to_owned(),
            line(NOW_MS - 1_000, "reader", "evil\\u001b[2J", "OK"),
        ]
        .concat();
        std::fs::write(dir.join("shard-0.jsonl"), content).unwrap();
    }

    fn run_captured(arguments: &[&str]) -> (String, String) {
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        run_with(&args(arguments), NOW_MS, &mut out, &mut errors).unwrap();
        (String::from_utf8(out).unwrap(), String::from_utf8(errors).unwrap())
    }

    #[test]
    fn prints_filtered_json_lines_and_reports_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path());
        let dir_text = dir.path().to_str().unwrap();
        let (out, errors) =
            run_captured(&["--dir", dir_text, "--json", "--since", "2h", "--token", "reader"]);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.lines().all(|line| line.contains("\"token\":\"reader\"")));
        assert!(errors.contains("shard-0.jsonl:3: not an audit event"), "{errors}");
        assert!(errors.contains("1 unparsable line(s) skipped"), "{errors}");
        let (out, _) = run_captured(&["--dir", dir_text, "--json", "--since", "90m"]);
        assert_eq!(out.lines().count(), 2, "{out}");
        let (out, _) = run_captured(&["--dir", dir_text, "--json", "--limit", "1"]);
        assert!(out.trim_end().ends_with("\"result\":\"OK\"}") && out.contains("evil"), "the newest: {out}");
    }

    #[test]
    fn prints_an_aligned_table_without_raw_control_characters() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path());
        let (out, _) = run_captured(&["--dir", dir.path().to_str().unwrap()]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("TIME ") && lines[0].ends_with("RESULT"));
        let result_column = lines[0].find("RESULT").unwrap();
        assert!(
            lines[1..].iter().all(|line| matches!(&line[result_column..], "OK" | "UNAUTHORIZED")),
            "{out}"
        );
        assert!(lines[1].starts_with("2026-11-23T03:12:01.123Z  0 "), "{out}");
        assert!(!out.contains('\u{1b}') && out.contains("evil\\u{1b}[2J"), "{out}");
        assert_eq!(printable("db/\u{202E}txt.exe"), "db/\\u{202e}txt.exe", "bidi overrides are escaped");
        assert_eq!(printable("a\u{2066}b\u{200F}"), "a\\u{2066}b\\u{200f}");
        let missing = args(&["--dir", dir.path().join("nothing").to_str().unwrap()]);
        assert!(run_with(&missing, NOW_MS, &mut Vec::new(), &mut Vec::new()).is_err());
    }
}
