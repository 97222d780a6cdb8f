//! Counters and histograms reported by STATS and `/metrics`. Each executor writes only its own
//! cache-line-aligned block, with plain loads and stores (no locked read-modify-write: a block
//! has one writer), so counting never bounces a line between cores nor locks one; STATS and a
//! scrape read the blocks from anywhere and sum them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use credshard_protocol::{Op, Status};

/// Upper bounds of the request latency histogram's buckets, in nanoseconds (10 µs to 10 s);
/// a last bucket holds the slower ones.
pub const LATENCY_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the group-commit batch size histogram's buckets, in writes.
pub const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Slots for requests by op: one per op, and a last one for unknown op codes.
pub const OP_SLOTS: usize = Op::ALL.len() + 1;

/// A histogram with `B` buckets (the bounds of all but the last are given when recording):
/// per-bucket counts (not cumulative) and the sum of the recorded values.
#[derive(Debug)]
pub struct Histogram<const B: usize> {
    counts: [AtomicU64; B],
    sum: AtomicU64,
}

impl<const B: usize> Default for Histogram<B> {
    fn default() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum: AtomicU64::new(0) }
    }
}

impl<const B: usize> Histogram<B> {
    /// Records `value` in the first bucket whose bound it does not exceed (`bounds` has `B - 1`
    /// entries, ascending). Only the block's own executor records.
    #[inline]
    pub fn record(&self, value: u64, bounds: &[u64]) {
        self.record_n(value, 1, bounds);
    }

    /// Records `count` values of `value` at once.
    #[inline]
    pub fn record_n(&self, value: u64, count: u64, bounds: &[u64]) {
        debug_assert_eq!(bounds.len() + 1, B);
        let bucket = bounds.iter().position(|&bound| value <= bound).unwrap_or(B - 1);
        ExecutorMetrics::add(&self.counts[bucket], count);
        ExecutorMetrics::add(&self.sum, value.wrapping_mul(count));
    }

    /// Per-bucket counts and the sum, as of now.
    pub fn read(&self) -> ([u64; B], u64) {
        (self.counts.each_ref().map(|count| count.load(Ordering::Relaxed)), self.sum.load(Ordering::Relaxed))
    }
}

/// One op's requests on one executor: how many finished with each status, and how long they
/// took (from when their bytes were read to when their reply was ready).
#[derive(Debug, Default)]
pub struct OpRequests {
    pub by_status: [AtomicU64; Status::ALL.len()],
    pub latency_ns: Histogram<{ LATENCY_BOUNDS_NS.len() + 1 }>,
}

/// The slot of an op code in [`ExecutorMetrics::requests`] (unknown codes share the last).
#[inline]
pub fn op_slot(code: u8) -> usize {
    Op::ALL.iter().position(|op| *op as u8 == code).unwrap_or(Op::ALL.len())
}

/// One executor's counters.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct ExecutorMetrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Connections closed by a timeout: no HELLO in time, idle, or replies not read.
    pub connections_timed_out: AtomicU64,
    /// Connections closed after too many refused requests without authenticating.
    pub connections_closed_refusals: AtomicU64,
    pub requests_total: AtomicU64,
    pub reads_total: AtomicU64,
    pub writes_total: AtomicU64,
    /// Writes this executor sent to another shard's executor.
    pub writes_forwarded: AtomicU64,
    pub errors_total: AtomicU64,
    /// Frames that broke framing (bad length, oversized) and closed their connection.
    pub frames_rejected: AtomicU64,
    /// Expired credentials removed from memory by this executor's shard sweeper.
    pub expired_swept: AtomicU64,
    /// Group commits of this executor's shard log (writes_total / this = writes per batch).
    pub log_batches_committed: AtomicU64,
    pub log_bytes_written: AtomicU64,
    /// Snapshots of this executor's shard written while serving, and their bytes.
    pub snapshots_written: AtomicU64,
    pub snapshot_bytes_written: AtomicU64,
    /// Reads that failed inside the server, e.g. a stored ciphertext that did not authenticate
    /// (damaged storage, or metadata edited at rest); each is also logged with its id.
    pub internal_errors: AtomicU64,
    /// Kept versions re-encrypted with the active data key (data-key rotation).
    pub records_rewrapped: AtomicU64,
    /// Failed attempts to re-encrypt a credential (a version whose ciphertext does not open;
    /// retried every 10 s): its data key stays in the ring; each is logged with its id.
    pub rewrap_failures: AtomicU64,
    /// HELLOs with an unknown token.
    pub auth_failures: AtomicU64,
    /// Requests answered UNAUTHORIZED (before HELLO, outside an ACL, a refused HELLO, no HELLO
    /// in time), and BATCH_GET items refused.
    pub unauthorized_total: AtomicU64,
    /// This executor's audit log, copied from it every few milliseconds: events recorded,
    /// events dropped (backlog past its hard limit), bytes written, failed writes or syncs,
    /// fdatasyncs.
    pub audit_events: AtomicU64,
    pub audit_events_dropped: AtomicU64,
    pub audit_bytes_written: AtomicU64,
    pub audit_write_errors: AtomicU64,
    pub audit_syncs: AtomicU64,
    /// Times a connection waited for a busy audit log to catch up before taking requests.
    pub audit_waits: AtomicU64,
    /// With `--store`: rounds of writes committed as one transaction, the microseconds they
    /// took in all (queue to commit), the writes they committed, the writes the database found
    /// stale (re-read and retried), rounds that failed, and credentials re-read from the
    /// database (other instances' changes, stale views, and resyncs).
    pub db_rounds: AtomicU64,
    pub db_round_us: AtomicU64,
    pub db_writes_committed: AtomicU64,
    pub db_writes_stale: AtomicU64,
    pub db_round_failures: AtomicU64,
    pub db_credentials_reread: AtomicU64,
    /// With a bounded cache (`--cache-capacity`): credentials read without asking the
    /// database, credentials read from it on a miss, and the queries that read them (each
    /// takes every miss waiting at the time).
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_loads: AtomicU64,
    /// WATCH: streams opened, streams open now (a gauge), events sent, and watchers ended
    /// because they fell behind the change feed.
    pub watchers_total: AtomicU64,
    pub watchers_open: AtomicU64,
    pub watch_events_sent: AtomicU64,
    pub watchers_behind: AtomicU64,
    /// With `--store`: how long rounds took, queue to commit.
    pub db_round_latency_ns: Histogram<{ LATENCY_BOUNDS_NS.len() + 1 }>,
    /// Requests by op (see [`op_slot`]), status and latency.
    pub requests: [OpRequests; OP_SLOTS],
    /// Bytes read from and written to clients' sockets (both listeners).
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Writes appended to this shard's log waiting for its next group commit (a gauge).
    pub write_queue_depth: AtomicU64,
    /// Writes (and durability waits) per group commit of this shard's log.
    pub log_batch_writes: Histogram<{ BATCH_BOUNDS.len() + 1 }>,
    /// How long each fdatasync of this shard's log took.
    pub log_fsync_latency_ns: Histogram<{ LATENCY_BOUNDS_NS.len() + 1 }>,
    /// Audit entries buffered and not yet written (a gauge, copied like the audit counters).
    pub audit_backlog_bytes: AtomicU64,
}

impl ExecutorMetrics {
    /// Adds to a counter of this block. Only the block's own executor writes it, so a plain
    /// load and store (no locked read-modify-write) loses nothing; readers see each store whole.
    #[inline]
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(value), Ordering::Relaxed);
    }

    /// Subtracts from a gauge of this block (its own executor only, as [`ExecutorMetrics::add`]).
    #[inline]
    pub fn sub(counter: &AtomicU64, value: u64) {
        counter.store(counter.load(Ordering::Relaxed).wrapping_sub(value), Ordering::Relaxed);
    }

    /// Counts a finished request by its op code and the status code it was answered with.
    #[inline]
    pub fn count_request(&self, op_code: u8, status_code: u8) {
        let status = (status_code as usize).min(Status::ALL.len() - 1);
        ExecutorMetrics::add(&self.requests[op_slot(op_code)].by_status[status], 1);
    }

    /// Records how long `count` requests of one op slot took.
    #[inline]
    pub fn record_latency(&self, slot: usize, elapsed: Duration, count: u64) {
        let nanos = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        self.requests[slot].latency_ns.record_n(nanos, count, &LATENCY_BOUNDS_NS);
    }
}

/// The requests of one batch that a connection answers at once (reads, refusals), by op slot:
/// their replies are sent together when the batch is done, so their latency (from when the
/// batch was read) is recorded together then, with one clock read for the whole batch.
pub struct AnsweredBatch {
    received_at: Instant,
    /// The wall clock in Unix milliseconds, read by the batch's first request that needs it and
    /// shared by the rest (0: not read yet, or the connection waited since).
    wall_ms: u64,
    counts: [u32; OP_SLOTS],
    total: u32,
}

impl AnsweredBatch {
    /// A batch read now.
    pub fn start() -> AnsweredBatch {
        AnsweredBatch { received_at: Instant::now(), wall_ms: 0, counts: [0; OP_SLOTS], total: 0 }
    }

    /// The time, in Unix milliseconds, the batch's requests are answered at (expiry checks,
    /// audit records): one clock read per batch, not per request. Read again after the
    /// connection has waited ([`AnsweredBatch::waited`]).
    pub fn now_ms(&mut self) -> u64 {
        if self.wall_ms == 0 {
            self.wall_ms = crate::time::now_ms();
        }
        self.wall_ms
    }

    /// The connection waited in the middle of the batch (a database read, a full queue to
    /// another shard): the requests after the wait read the clock again.
    pub fn waited(&mut self) {
        self.wall_ms = 0;
    }

    /// When the batch was read.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// One request of op `op_code` answered in the batch.
    #[inline]
    pub fn add(&mut self, op_code: u8) {
        self.counts[op_slot(op_code)] += 1;
        self.total += 1;
    }

    /// Records the batch's latencies (its replies are ready now); the connection starts a new
    /// batch when it next reads.
    pub fn finish(&mut self, metrics: &ExecutorMetrics) {
        if self.total > 0 {
            let elapsed = self.received_at.elapsed();
            for (slot, count) in self.counts.iter_mut().enumerate().filter(|(_, count)| **count > 0) {
                metrics.record_latency(slot, elapsed, u64::from(*count));
                *count = 0;
            }
            self.total = 0;
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    executors: Box<[ExecutorMetrics]>,
}

impl Metrics {
    pub fn new(executor_count: usize) -> Metrics {
        Metrics { executors: (0..executor_count).map(|_| ExecutorMetrics::default()).collect() }
    }

    pub fn executor(&self, index: usize) -> &ExecutorMetrics {
        &self.executors[index]
    }

    /// Every executor's block, in shard order.
    pub fn executors(&self) -> &[ExecutorMetrics] {
        &self.executors
    }

    /// Open connections across all executors.
    pub fn connections_open(&self) -> u64 {
        self.executors.iter().map(|executor| executor.connections_open.load(Ordering::Relaxed)).sum()
    }

    /// Totals first, then `executor.N.connections_total` and `executor.N.requests_total`.
    pub fn report(&self) -> Vec<(String, u64)> {
        let sum = |field: fn(&ExecutorMetrics) -> &AtomicU64| {
            self.executors.iter().map(|executor| field(executor).load(Ordering::Relaxed)).sum::<u64>()
        };
        let mut report = vec![
            ("connections_open".to_owned(), sum(|m| &m.connections_open)),
            ("connections_total".to_owned(), sum(|m| &m.connections_total)),
            ("connections_refused".to_owned(), sum(|m| &m.connections_refused)),
            ("connections_timed_out".to_owned(), sum(|m| &m.connections_timed_out)),
            ("connections_closed_refusals".to_owned(), sum(|m| &m.connections_closed_refusals)),
            ("requests_total".to_owned(), sum(|m| &m.requests_total)),
            ("reads_total".to_owned(), sum(|m| &m.reads_total)),
            ("writes_total".to_owned(), sum(|m| &m.writes_total)),
            ("writes_forwarded".to_owned(), sum(|m| &m.writes_forwarded)),
            ("errors_total".to_owned(), sum(|m| &m.errors_total)),
            ("frames_rejected".to_owned(), sum(|m| &m.frames_rejected)),
            ("expired_swept".to_owned(), sum(|m| &m.expired_swept)),
            ("log_batches_committed".to_owned(), sum(|m| &m.log_batches_committed)),
            ("log_bytes_written".to_owned(), sum(|m| &m.log_bytes_written)),
            ("snapshots_written".to_owned(), sum(|m| &m.snapshots_written)),
            ("snapshot_bytes_written".to_owned(), sum(|m| &m.snapshot_bytes_written)),
            ("internal_errors".to_owned(), sum(|m| &m.internal_errors)),
            ("records_rewrapped".to_owned(), sum(|m| &m.records_rewrapped)),
            ("rewrap_failures".to_owned(), sum(|m| &m.rewrap_failures)),
            ("auth_failures".to_owned(), sum(|m| &m.auth_failures)),
            ("unauthorized_total".to_owned(), sum(|m| &m.unauthorized_total)),
            ("audit_events".to_owned(), sum(|m| &m.audit_events)),
            ("audit_events_dropped".to_owned(), sum(|m| &m.audit_events_dropped)),
            ("audit_bytes_written".to_owned(), sum(|m| &m.audit_bytes_written)),
            ("audit_write_errors".to_owned(), sum(|m| &m.audit_write_errors)),
            ("audit_syncs".to_owned(), sum(|m| &m.audit_syncs)),
            ("audit_waits".to_owned(), sum(|m| &m.audit_waits)),
            ("db_rounds".to_owned(), sum(|m| &m.db_rounds)),
            ("db_round_us".to_owned(), sum(|m| &m.db_round_us)),
            ("db_writes_committed".to_owned(), sum(|m| &m.db_writes_committed)),
            ("db_writes_stale".to_owned(), sum(|m| &m.db_writes_stale)),
            ("db_round_failures".to_owned(), sum(|m| &m.db_round_failures)),
            ("db_credentials_reread".to_owned(), sum(|m| &m.db_credentials_reread)),
            ("cache_hits".to_owned(), sum(|m| &m.cache_hits)),
            ("cache_misses".to_owned(), sum(|m| &m.cache_misses)),
            ("cache_loads".to_owned(), sum(|m| &m.cache_loads)),
            ("watchers_total".to_owned(), sum(|m| &m.watchers_total)),
            ("watchers_open".to_owned(), sum(|m| &m.watchers_open)),
            ("watch_events_sent".to_owned(), sum(|m| &m.watch_events_sent)),
            ("watchers_behind".to_owned(), sum(|m| &m.watchers_behind)),
        ];
        for (index, executor) in self.executors.iter().enumerate() {
            report.push((
                format!("executor.{index}.connections_total"),
                executor.connections_total.load(Ordering::Relaxed),
            ));
            report.push((
                format!("executor.{index}.requests_total"),
                executor.requests_total.load(Ordering::Relaxed),
            ));
        }
        report
    }
}
