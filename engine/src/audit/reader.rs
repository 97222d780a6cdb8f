//! Reading an audit dir: every `*.jsonl` file (and rotated copies such as `shard-0.jsonl.1`),
//! line by line, keeping the entries a [`Filter`] accepts, merged by time.
//!
//! A last line without its newline is torn (a crash during a write, or a write in progress
//! while we read) and skipped. Any other line that does not parse is reported to the caller
//! with its file and line number and counted; reading goes on.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One event as read back. Fields not listed here (such as the text `time`) are ignored, so
/// that older readers accept newer files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AuditEntry {
    pub time_ms: u64,
    pub shard: u64,
    pub token: String,
    pub peer: String,
    pub op: String,
    pub id: Option<String>,
    pub owner: Option<String>,
    pub scope: Option<String>,
    pub version: Option<u64>,
    pub result: String,
    /// The line as it is in the file, without its newline.
    #[serde(skip)]
    pub line: String,
}

/// Which entries to keep. `None` accepts anything; times are Unix ms, `since_ms` inclusive
/// and `until_ms` exclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub id: Option<String>,
    pub token: Option<String>,
    /// Upper case, as in the file (`GET_META`).
    pub op: Option<String>,
    /// Upper case, as in the file (`UNAUTHORIZED`).
    pub result: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl Filter {
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.id.as_ref().is_none_or(|id| entry.id.as_ref() == Some(id))
            && self.token.as_ref().is_none_or(|token| &entry.token == token)
            && self.op.as_ref().is_none_or(|op| &entry.op == op)
            && self.result.as_ref().is_none_or(|result| &entry.result == result)
            && self.since_ms.is_none_or(|since_ms| entry.time_ms >= since_ms)
            && self.until_ms.is_none_or(|until_ms| entry.time_ms < until_ms)
    }
}

/// What reading a dir found.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// Matching entries, by time (stable: file name order, then line order, for equal times).
    pub entries: Vec<AuditEntry>,
    pub files_read: usize,
    /// Lines that were not an event (torn tails not included).
    pub lines_unparsable: u64,
    /// Files whose last line had no newline.
    pub torn_tails: u64,
}

/// A line that could not be read as an event.
#[derive(Debug)]
pub struct BadLine<'a> {
    pub path: &'a Path,
    /// 1-based.
    pub line_number: u64,
    pub reason: String,
}

/// The audit files in `dir`, by name: `*.jsonl` and rotated `*.jsonl.<n>`.
///
/// # Errors
/// The dir cannot be listed.
pub fn audit_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir_entry in std::fs::read_dir(dir)? {
        let dir_entry = dir_entry?;
        let name = dir_entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_audit = match name.split_once(".jsonl") {
            Some((stem, "")) => !stem.is_empty(),
            Some((stem, rotation)) => {
                !stem.is_empty()
                    && rotation.strip_prefix('.').is_some_and(|number| {
                        !number.is_empty() && number.bytes().all(|byte| byte.is_ascii_digit())
                    })
            }
            None => false,
        };
        if is_audit && dir_entry.file_type()?.is_file() {
            files.push(dir_entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every audit file in `dir` and keeps the entries `filter` accepts, sorted by time.
/// `on_bad_line` hears of each unparsable line.
///
/// # Errors
/// The dir cannot be listed, or a file cannot be read.
pub fn read_dir(
    dir: &Path,
    filter: &Filter,
    on_bad_line: &mut dyn FnMut(BadLine<'_>),
) -> std::io::Result<ReadOutcome> {
    let mut outcome = ReadOutcome::default();
    for path in audit_files(dir)? {
        read_file(&path, filter, &mut outcome, on_bad_line)?;
        outcome.files_read += 1;
    }
    outcome.entries.sort_by_key(|entry| entry.time_ms);
    Ok(outcome)
}

fn read_file(
    path: &Path,
    filter: &Filter,
    outcome: &mut ReadOutcome,
    on_bad_line: &mut dyn FnMut(BadLine<'_>),
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut bytes = Vec::with_capacity(512);
    let mut line_number = 0u64;
    loop {
        bytes.clear();
        if reader.read_until(b'\n', &mut bytes)? == 0 {
            return Ok(());
        }
        line_number += 1;
        if bytes.pop() != Some(b'\n') {
            outcome.torn_tails += 1;
            return Ok(());
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = match String::from_utf8(std::mem::take(&mut bytes)) {
            Ok(line) => line,
            Err(_) => {
                outcome.lines_unparsable += 1;
                on_bad_line(BadLine { path, line_number, reason: "not UTF-8".to_owned() });
                continue;
            }
        };
        match serde_json::from_str::<AuditEntry>(&line) {
            Ok(mut entry) => {
                if filter.matches(&entry) {
                    entry.line = line;
                    outcome.entries.push(entry);
                }
            }
            Err(error) => {
                outcome.lines_unparsable += 1;
                on_bad_line(BadLine { path, line_number, reason: error.to_string() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time_ms: u64, shard: u64, token: &str, op: &str, id: Option<&str>, result: &str) -> String {
        let id = id.map(|id| format!(",\"id\":\"{id}\"")).unwrap_or_default();
        format!(
            "{{\"time\":\"-\",\"time_ms\":{time_ms},\"shard\":{shard},\"token\":\"{token}\",\"peer\":\"127.0.0.1:1\",\"op\":\"{op}\"{id},\"version\":1,\"result\":\"{result}\"}}\n"
        )
    }

    fn read_all(dir: &Path, filter: &Filter) -> (ReadOutcome, Vec<String>) {
        let mut bad = Vec::new();
        let outcome = read_dir(dir, filter, &mut |bad_line| {
            bad.push(format!(
                "{}:{}",
                bad_line.path.file_name().unwrap().to_str().unwrap(),
                bad_line.line_number
            ))
        })
        .unwrap();
        (outcome, bad)
    }

    /// Two shards' files and a rotated copy, interleaved in time.
    fn sample_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let shard_0 = [
            line(1_000, 0, "reader", "GET", Some("db/main"), "OK"),
            line(3_000, 0, "-", "GET", Some("db/main"), "UNAUTHORIZED"),
            line(5_000, 0, "writer", "PUT", Some("api/key"), "OK"),
        ];
        let shard_1 = [
            line(2_000, 1, "reader", "GET_META", Some("api/key"), "NOT_FOUND"),
            line(4_000, 1, "reader", "LIST", None, "OK"),
        ];
        std::fs::write(dir.path().join("shard-0.jsonl"), shard_0.concat()).unwrap();
        std::fs::write(dir.path().join("shard-1.jsonl"), shard_1.concat()).unwrap();
        std::fs::write(dir.path().join("shard-0.jsonl.1"), line(500, 0, "old", "GET", Some("db/main"), "OK"))
            .unwrap();
        // Not audit files.
        std::fs::write(dir.path().join("notes.txt"), "hello\n").unwrap();
        std::fs::write(dir.path().join("shard-0.jsonl.tmp"), "garbage\n").unwrap();
        dir
    }

    fn times(outcome: &ReadOutcome) -> Vec<u64> {
        outcome.entries.iter().map(|entry| entry.time_ms).collect()
    }

    #[test]
    fn merges_files_by_time() {
        let dir = sample_dir();
        let (outcome, bad) = read_all(dir.path(), &Filter::default());
        assert_eq!(times(&outcome), [500, 1_000, 2_000, 3_000, 4_000, 5_000]);
        assert_eq!((outcome.files_read, outcome.lines_unparsable, outcome.torn_tails), (3, 0, 0));
        assert!(bad.is_empty());
        let first = &outcome.entries[1];
        assert_eq!(first.line, line(1_000, 0, "reader", "GET", Some("db/main"), "OK").trim_end());
        assert_eq!((first.shard, first.version, first.id.as_deref()), (0, Some(1), Some("db/main")));
    }

    #[test]
    fn filters() {
        let dir = sample_dir();
        let by = |filter: Filter| times(&read_all(dir.path(), &filter).0);
        assert_eq!(by(Filter { id: Some("db/main".into()), ..Filter::default() }), [500, 1_000, 3_000]);
        assert_eq!(by(Filter { token: Some("reader".into()), ..Filter::default() }), [1_000, 2_000, 4_000]);
        assert_eq!(by(Filter { op: Some("GET".into()), ..Filter::default() }), [500, 1_000, 3_000]);
        assert_eq!(by(Filter { result: Some("UNAUTHORIZED".into()), ..Filter::default() }), [3_000]);
        assert_eq!(
            by(Filter { since_ms: Some(2_000), until_ms: Some(4_000), ..Filter::default() }),
            [2_000, 3_000]
        );
        assert_eq!(
            by(Filter { token: Some("reader".into()), since_ms: Some(1_500), ..Filter::default() }),
            [2_000, 4_000]
        );
        assert_eq!(by(Filter { id: Some("nothing".into()), ..Filter::default() }), [] as [u64; 0]);
    }

    #[test]
    fn skips_a_torn_tail_and_reports_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let good = line(1_000, 0, "reader", "GET", Some("a"), "OK");
        let torn = &line(2_000, 0, "reader", "GET", Some("b"), "OK")[..40];
        let content = format!("{good}not json\n\n{{\"time_ms\":5}}\n{good}{torn}");
        std::fs::write(dir.path().join("shard-0.jsonl"), content).unwrap();
        let mut invalid_utf8 = good.clone().into_bytes();
        invalid_utf8.extend_from_slice(b"\xFF\xFE\n");
        std::fs::write(dir.path().join("shard-1.jsonl"), invalid_utf8).unwrap();
        let (outcome, bad) = read_all(dir.path(), &Filter::default());
        assert_eq!(times(&outcome), [1_000, 1_000, 1_000]);
        assert_eq!(bad, ["shard-0.jsonl:2", "shard-0.jsonl:4", "shard-1.jsonl:2"]);
        assert_eq!((outcome.lines_unparsable, outcome.torn_tails), (3, 1));
    }
}
