//! Counters reported by STATS. Each executor writes only its own cache-line-aligned block,
//! so counting never bounces a line between cores; STATS sums the blocks.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Snapshots of this executor's shard written while serving.
    pub snapshots_written: AtomicU64,
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
}

impl ExecutorMetrics {
    #[inline]
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    #[inline]
    pub fn sub(counter: &AtomicU64, value: u64) {
        counter.fetch_sub(value, Ordering::Relaxed);
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
