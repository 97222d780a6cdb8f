//! What a run measured and how it is shown: the per-thread [`Recorder`] the connections write
//! to, the one-line progress each second, the final table and the JSON file.
//!
//! `ops` counts requests that succeeded inside the measured window (started at or after its
//! start, answered before its end); latencies are theirs only. Failed requests are counted by
//! kind in `errors`, never timed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::mix::Op;

/// Significant figures kept by every latency histogram.
const HISTOGRAM_SIGNIFICANT_FIGURES: u8 = 3;

/// An empty latency histogram in microseconds. It grows with the largest value recorded, so
/// a connection that only sees fast replies keeps a small one.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new(HISTOGRAM_SIGNIFICANT_FIGURES).expect("3 significant figures are valid")
}

/// Error counts by kind: a server status name (`NOT_FOUND`, ...), `io` (the connection
/// failed or closed), `protocol` (the reply did not decode) or `mismatch` (a read returned a
/// value the loadgen did not write for that key).
pub type ErrorCounts = BTreeMap<&'static str, u64>;

/// One client thread's measurements, written by its connections (one thread, no lock) and
/// sent to the reporter as a copy of the interval once a second and whole at the end.
#[derive(Clone)]
pub struct Recorder {
    /// Successful replies since the last progress line, warm-up included.
    interval: Histogram<u64>,
    /// Failed requests so far, warm-up included.
    errors_total: u64,
    /// Successful replies in the measured window, by [`Op::index`].
    measured: [Histogram<u64>; Op::COUNT],
    errors: ErrorCounts,
    warmup_errors: ErrorCounts,
    /// Non-error outcomes in the measured window (`not_found_after_delete`).
    outcomes: ErrorCounts,
    /// Failed items of measured `batch_get` requests, by kind.
    batch_item_errors: ErrorCounts,
    /// Open loop: how late each measured request was sent after its intended time.
    send_lateness: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            interval: latency_histogram(),
            errors_total: 0,
            measured: std::array::from_fn(|_| latency_histogram()),
            errors: ErrorCounts::new(),
            warmup_errors: ErrorCounts::new(),
            outcomes: ErrorCounts::new(),
            batch_item_errors: ErrorCounts::new(),
            send_lateness: latency_histogram(),
        }
    }
}

impl Recorder {
    /// Records one answered request. `measured` is false for requests outside the measured
    /// window (warm-up, or answered after its end).
    pub fn record(&mut self, op: Op, latency_us: u64, error: Option<&'static str>, measured: bool) {
        match error {
            None => {
                record(&mut self.interval, latency_us);
                if measured {
                    record(&mut self.measured[op.index()], latency_us);
                }
            }
            Some(kind) => {
                self.errors_total += 1;
                let counts = if measured { &mut self.errors } else { &mut self.warmup_errors };
                *counts.entry(kind).or_default() += 1;
            }
        }
    }

    /// Counts a non-error outcome (e.g. `not_found_after_delete`) of a measured request.
    pub fn record_outcome(&mut self, kind: &'static str, measured: bool) {
        if measured {
            *self.outcomes.entry(kind).or_default() += 1;
        }
    }

    /// Counts a failed item of a measured `batch_get` (the request itself is recorded apart).
    pub fn record_batch_item_error(&mut self, kind: &'static str, measured: bool) {
        if measured {
            *self.batch_item_errors.entry(kind).or_default() += 1;
        }
    }

    /// Records that an open-loop request was sent `late_us` after its intended send time.
    pub fn record_send_lateness(&mut self, late_us: u64, measured: bool) {
        if measured {
            record(&mut self.send_lateness, late_us);
        }
    }

    /// Moves the replies since the last call into `into`; returns the errors so far.
    pub fn take_interval(&mut self, into: &mut Histogram<u64>) -> u64 {
        into.add(&self.interval).expect("auto-resizing histograms add");
        self.interval.reset();
        self.errors_total
    }

    /// Adds this thread's measured window to `summary`.
    pub fn add_to(&self, summary: &mut Summary) {
        for (total, connection) in summary.per_op.iter_mut().zip(&self.measured) {
            total.add(connection).expect("auto-resizing histograms add");
        }
        for (kind, count) in &self.errors {
            *summary.errors.entry(kind).or_default() += count;
        }
        for (kind, count) in &self.warmup_errors {
            *summary.warmup_errors.entry(kind).or_default() += count;
        }
        for (kind, count) in &self.outcomes {
            *summary.outcomes.entry(kind).or_default() += count;
        }
        for (kind, count) in &self.batch_item_errors {
            *summary.batch_item_errors.entry(kind).or_default() += count;
        }
        summary.send_lateness.add(&self.send_lateness).expect("auto-resizing histograms add");
    }
}

fn record(histogram: &mut Histogram<u64>, latency_us: u64) {
    histogram.record(latency_us).expect("an auto-resizing histogram records any latency");
}

/// The measured outcome of a run.
pub struct Summary {
    /// Length of the measured window.
    pub duration: Duration,
    /// Successful replies by [`Op::index`].
    pub per_op: [Histogram<u64>; Op::COUNT],
    pub errors: ErrorCounts,
    /// Errors during the warm-up or answered after the window: not in `errors`, but shown.
    pub warmup_errors: ErrorCounts,
    /// Measured outcomes that are not errors: `not_found_after_delete` (a NOT_FOUND when the
    /// mix deletes keys; the request also counts in `ops`).
    pub outcomes: ErrorCounts,
    /// Failed items of measured `batch_get` requests by kind (each such request is also one
    /// error of kind `batch_item`).
    pub batch_item_errors: ErrorCounts,
    /// Connections that closed or failed during the run.
    pub connections_lost: usize,
    /// Requests still unanswered when the grace period after the run ended.
    pub requests_abandoned: u64,
    /// Open loop: how late the measured requests were sent after their intended send times
    /// (the client's own lateness, included in their latency; empty for a closed loop).
    pub send_lateness: Histogram<u64>,
}

impl Summary {
    pub fn new(duration: Duration) -> Summary {
        Summary {
            duration,
            per_op: std::array::from_fn(|_| latency_histogram()),
            errors: ErrorCounts::new(),
            warmup_errors: ErrorCounts::new(),
            outcomes: ErrorCounts::new(),
            batch_item_errors: ErrorCounts::new(),
            connections_lost: 0,
            requests_abandoned: 0,
            send_lateness: latency_histogram(),
        }
    }

    /// Every op's replies together.
    pub fn all(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for histogram in &self.per_op {
            all.add(histogram).expect("auto-resizing histograms add");
        }
        all
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What was run, for the report headings and the JSON file.
pub struct RunInfo {
    pub target: String,
    /// The server's HELLO: name and version, and its shard count.
    pub server: String,
    pub shard_count: u16,
    pub connections: usize,
    pub pipeline: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub keys: u64,
    pub value_size: usize,
    pub mix: String,
    pub preload: bool,
    /// `uniform` or `zipf:S`.
    pub distribution: String,
    /// `--rate`: total target ops/s (open loop), or `None` for a closed loop.
    pub rate: Option<f64>,
}

/// Latency percentiles of one histogram, in microseconds.
struct Percentiles {
    ops: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        let at = |quantile| if histogram.is_empty() { 0 } else { histogram.value_at_quantile(quantile) };
        Percentiles {
            ops: histogram.len(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: if histogram.is_empty() { 0 } else { histogram.max() },
        }
    }
}

fn ops_per_second(ops: u64, duration: Duration) -> f64 {
    ops as f64 / duration.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The line printed each second.
pub fn progress_line(
    elapsed: Duration,
    phase: &str,
    interval: &Histogram<u64>,
    interval_length: Duration,
    errors_total: u64,
) -> String {
    let p99_us = if interval.is_empty() { 0 } else { interval.value_at_quantile(0.99) };
    format!(
        "[{:>4.0}s] {phase:<7} {:>10.0} ops/s   p99 {p99_us:>6} µs   errors {errors_total}",
        elapsed.as_secs_f64(),
        ops_per_second(interval.len(), interval_length),
    )
}

/// The final table.
pub fn table(info: &RunInfo, summary: &Summary) -> String {
    let mut out = String::new();
    let preload = if info.preload { "preloaded" } else { "not preloaded" };
    let shards = if info.shard_count == 1 { "shard" } else { "shards" };
    let _ = writeln!(out, "target      {} ({}, {} {shards})", info.target, info.server, info.shard_count);
    let _ = writeln!(
        out,
        "load        {} connections × {} in flight, {} client thread{}",
        info.connections,
        info.pipeline,
        info.threads,
        if info.threads == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "workload    mix {}, {} keys ({preload}, {}), {} B values",
        info.mix, info.keys, info.distribution, info.value_size
    );
    let _ = match info.rate {
        Some(rate) => {
            writeln!(out, "schedule    open loop at {rate} ops/s, latency from intended send times")
        }
        None => writeln!(out, "schedule    closed loop"),
    };
    let _ = writeln!(
        out,
        "measured    {:.1} s after {:.1} s of warm-up",
        summary.duration.as_secs_f64(),
        info.warmup.as_secs_f64()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<9} {:>11} {:>12} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "op", "ops", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    let mut rows: Vec<(&str, Histogram<u64>)> = Op::ALL
        .into_iter()
        .filter(|op| !summary.per_op[op.index()].is_empty())
        .map(|op| (op.name(), summary.per_op[op.index()].clone()))
        .collect();
    if rows.len() != 1 {
        rows.push(("all", summary.all()));
    }
    for (name, histogram) in &rows {
        let row = Percentiles::of(histogram);
        let _ = writeln!(
            out,
            "{name:<9} {:>11} {:>12.1} {:>8} {:>8} {:>8} {:>9} {:>9}",
            row.ops,
            ops_per_second(row.ops, summary.duration),
            row.p50_us,
            row.p90_us,
            row.p99_us,
            row.p999_us,
            row.max_us
        );
    }
    let _ = writeln!(out);
    if !summary.send_lateness.is_empty() {
        let late = Percentiles::of(&summary.send_lateness);
        let _ = writeln!(
            out,
            "sent late   p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs after the intended send times (the client's own delay, counted in the latencies above)",
            late.p50_us, late.p99_us, late.p999_us, late.max_us
        );
    }
    let _ = writeln!(out, "errors      {}", counts_text(&summary.errors));
    if !summary.batch_item_errors.is_empty() {
        let _ = writeln!(out, "batch_get items failed: {}", counts_text(&summary.batch_item_errors));
    }
    if !summary.outcomes.is_empty() {
        let _ = writeln!(out, "not errors: {}", counts_text(&summary.outcomes));
    }
    if !summary.warmup_errors.is_empty() {
        let _ = writeln!(out, "outside the window (warm-up, late): {}", counts_text(&summary.warmup_errors));
    }
    if summary.connections_lost > 0 {
        let _ = writeln!(out, "connections lost: {} of {}", summary.connections_lost, info.connections);
    }
    if summary.requests_abandoned > 0 {
        let _ = writeln!(out, "requests abandoned unanswered after the run: {}", summary.requests_abandoned);
    }
    out
}

fn counts_text(counts: &ErrorCounts) -> String {
    let total: u64 = counts.values().sum();
    if total == 0 {
        return "0".to_owned();
    }
    let kinds: Vec<String> = counts.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
    format!("{total} ({})", kinds.join(", "))
}

/// One op's row (and the totals) in the JSON document.
#[derive(serde::Serialize)]
struct JsonRow {
    ops: u64,
    ops_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl JsonRow {
    fn of(histogram: &Histogram<u64>, duration: Duration) -> JsonRow {
        let row = Percentiles::of(histogram);
        JsonRow {
            ops: row.ops,
            ops_per_sec: rounded(ops_per_second(row.ops, duration), 1),
            p50_us: row.p50_us,
            p90_us: row.p90_us,
            p99_us: row.p99_us,
            p999_us: row.p999_us,
            max_us: row.max_us,
        }
    }
}

/// The JSON document: the agreed fields first (in this order), then extras.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    target: &'a str,
    connections: usize,
    pipeline: usize,
    duration_s: f64,
    #[serde(flatten)]
    all: JsonRow,
    errors: u64,
    errors_by_kind: &'a ErrorCounts,
    warmup_errors_by_kind: &'a ErrorCounts,
    server: &'a str,
    shard_count: u16,
    threads: usize,
    warmup_s: f64,
    keys: u64,
    value_size: usize,
    mix: &'a str,
    preload: bool,
    distribution: &'a str,
    rate: Option<f64>,
    outcomes_by_kind: &'a ErrorCounts,
    batch_item_errors_by_kind: &'a ErrorCounts,
    connections_lost: usize,
    requests_abandoned: u64,
    /// Open loop only: how late requests were sent after their intended times.
    #[serde(skip_serializing_if = "Option::is_none")]
    send_lateness: Option<JsonLateness>,
    /// `[[percentile, latency_us], …]`
    percentile_distribution: Vec<(f64, u64)>,
    per_op: BTreeMap<&'static str, JsonRow>,
}

/// Percentiles of the open loop's send lateness.
#[derive(serde::Serialize)]
struct JsonLateness {
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

/// `value` rounded to `decimals` places (what the table prints).
fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The JSON document of a run.
pub fn json(info: &RunInfo, summary: &Summary) -> String {
    let report = JsonReport {
        target: &info.target,
        connections: info.connections,
        pipeline: info.pipeline,
        duration_s: rounded(summary.duration.as_secs_f64(), 3),
        all: JsonRow::of(&summary.all(), summary.duration),
        errors: summary.errors_total(),
        errors_by_kind: &summary.errors,
        warmup_errors_by_kind: &summary.warmup_errors,
        server: &info.server,
        shard_count: info.shard_count,
        threads: info.threads,
        warmup_s: rounded(info.warmup.as_secs_f64(), 3),
        keys: info.keys,
        value_size: info.value_size,
        mix: &info.mix,
        preload: info.preload,
        distribution: &info.distribution,
        rate: info.rate,
        outcomes_by_kind: &summary.outcomes,
        batch_item_errors_by_kind: &summary.batch_item_errors,
        connections_lost: summary.connections_lost,
        requests_abandoned: summary.requests_abandoned,
        send_lateness: info.rate.map(|_| {
            let late = Percentiles::of(&summary.send_lateness);
            JsonLateness {
                p50_us: late.p50_us,
                p99_us: late.p99_us,
                p999_us: late.p999_us,
                max_us: late.max_us,
            }
        }),
        percentile_distribution: crate::plot::Series::of(&info.target, &summary.all()).points,
        per_op: Op::ALL
            .into_iter()
            .filter(|op| !summary.per_op[op.index()].is_empty())
            .map(|op| (op.name(), JsonRow::of(&summary.per_op[op.index()], summary.duration)))
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&report).expect("a report serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            target: "credshard://127.0.0.1:7373".to_owned(),
            server: "credshard 0.1.0".to_owned(),
            shard_count: 2,
            connections: 2,
            pipeline: 1,
            threads: 2,
            warmup: Duration::from_secs(1),
            keys: 10,
            value_size: 256,
            mix: "get=90,put=10".to_owned(),
            preload: true,
            distribution: "uniform".to_owned(),
            rate: None,
        }
    }

    #[test]
    fn recorders_sum_into_a_summary() {
        let mut first = Recorder::default();
        let mut second = Recorder::default();
        for latency_us in 1..=100 {
            first.record(Op::Get, latency_us, None, true);
        }
        second.record(Op::Put, 500, None, true);
        second.record(Op::Get, 7, None, false);
        second.record(Op::Get, 7, Some("mismatch"), true);
        second.record(Op::Get, 7, Some("io"), false);

        let mut interval = latency_histogram();
        assert_eq!(first.take_interval(&mut interval), 0);
        assert_eq!(second.take_interval(&mut interval), 2);
        assert_eq!(interval.len(), 102);
        assert_eq!(second.take_interval(&mut latency_histogram()), 2, "errors stay counted");

        let mut summary = Summary::new(Duration::from_secs(2));
        first.add_to(&mut summary);
        second.add_to(&mut summary);
        assert_eq!(summary.per_op[Op::Get.index()].len(), 100);
        assert_eq!(summary.per_op[Op::Put.index()].len(), 1);
        assert_eq!(summary.errors, ErrorCounts::from([("mismatch", 1)]));
        assert_eq!(summary.warmup_errors, ErrorCounts::from([("io", 1)]));

        let all = Percentiles::of(&summary.all());
        assert_eq!((all.ops, all.p50_us, all.max_us), (101, 51, 500));

        let table = table(&info(), &summary);
        assert!(table.contains("errors      1 (mismatch 1)"), "{table}");
        assert!(table.lines().any(|line| line.starts_with("all ")), "{table}");

        let json: serde_json::Value = serde_json::from_str(&json(&info(), &summary)).unwrap();
        assert_eq!(json["target"], "credshard://127.0.0.1:7373");
        assert_eq!(json["ops"], 101);
        assert_eq!(json["ops_per_sec"], 50.5);
        assert_eq!(json["duration_s"], 2.0);
        assert_eq!(json["max_us"], 500);
        assert_eq!(json["errors"], 1);
        assert_eq!(json["errors_by_kind"], serde_json::json!({"mismatch": 1}));
        assert_eq!(json["per_op"]["put"]["ops"], 1, "{json}");
    }

    #[test]
    fn batch_items_and_outcomes_are_reported_apart() {
        let mut recorder = Recorder::default();
        recorder.record_send_lateness(12, true);
        recorder.record_send_lateness(40, false);
        recorder.record(Op::BatchGet, 9, Some("batch_item"), true);
        recorder.record_batch_item_error("mismatch", true);
        recorder.record_batch_item_error("mismatch", true);
        recorder.record_batch_item_error("NOT_FOUND", false);
        recorder.record(Op::Get, 11, None, true);
        recorder.record_outcome("not_found_after_delete", true);
        recorder.record_outcome("not_found_after_delete", false);
        let mut summary = Summary::new(Duration::from_secs(1));
        recorder.add_to(&mut summary);
        assert_eq!(summary.errors, ErrorCounts::from([("batch_item", 1)]));
        assert_eq!(summary.batch_item_errors, ErrorCounts::from([("mismatch", 2)]));
        assert_eq!(summary.outcomes, ErrorCounts::from([("not_found_after_delete", 1)]));
        let mut info = info();
        info.rate = Some(2000.0);
        info.distribution = "zipf:0.99".to_owned();
        let table = table(&info, &summary);
        assert!(table.contains("batch_get items failed: 2 (mismatch 2)"), "{table}");
        assert!(table.contains("not errors: 1 (not_found_after_delete 1)"), "{table}");
        assert!(table.contains("open loop at 2000 ops/s"), "{table}");
        assert!(table.contains("sent late   p50 12 µs"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&json(&info, &summary)).unwrap();
        assert_eq!(json["rate"], 2000.0);
        assert_eq!(json["distribution"], "zipf:0.99");
        assert_eq!(json["outcomes_by_kind"], serde_json::json!({"not_found_after_delete": 1}));
        assert_eq!(json["batch_item_errors_by_kind"], serde_json::json!({"mismatch": 2}));
        assert_eq!(json["send_lateness"]["max_us"], 12, "only measured sends count: {json}");
    }

    #[test]
    fn any_target_text_survives_the_json() {
        let mut info = info();
        info.target = "a\"b\\c\n\u{1}é".to_owned();
        let json: serde_json::Value =
            serde_json::from_str(&json(&info, &Summary::new(Duration::from_secs(1)))).unwrap();
        assert_eq!(json["target"].as_str(), Some(info.target.as_str()));
    }
}
