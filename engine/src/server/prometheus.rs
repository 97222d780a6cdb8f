//! `--metrics-listen`: the Prometheus text format at `GET /metrics`, encoded by the Prometheus
//! project's own crate (prometheus-client) and served by hyper on a thread of its own (a
//! current-thread tokio runtime), so a scrape never runs on, or waits for, a shard executor.
//!
//! Nothing is registered on the request path: each scrape reads every executor's block of
//! counters and histograms (`crate::metrics`, written by its executor alone) and sums them, and
//! reads the store's and the key ring's state, as STATS does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use credshard_protocol::{Op, Status};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::data::Store;
use crate::error::EngineError;
use crate::metrics::{ExecutorMetrics, Histogram, Metrics, BATCH_BOUNDS, LATENCY_BOUNDS_NS, OP_SLOTS};
use crate::storage::postgres::Database;

/// How long one scrape's connection may take, request to response.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter's thread; dropping it stops the thread and joins it.
pub struct Exporter {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Binds `listen` (here, so that a taken address fails start-up) and serves scrapes from a
    /// thread of its own.
    ///
    /// # Errors
    /// [`EngineError::Start`] when the address cannot be bound or the thread not started.
    pub fn start(
        listen: SocketAddr,
        metrics: Arc<Metrics>,
        store: Arc<Store>,
        database: Option<Database>,
    ) -> Result<Exporter, EngineError> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|error| EngineError::Start(format!("cannot listen for metrics on {listen}: {error}")))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape { metrics, store, database }));
        let registry = Arc::new(registry);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("credshard-metrics".to_owned())
            .spawn(move || serve(listener, registry, stopped))
            .map_err(|error| EngineError::Start(format!("starting the metrics thread: {error}")))?;
        Ok(Exporter { address, stop: Some(stop), thread: Some(thread) })
    }

    /// Where scrapes go.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return tracing::error!(%error, "the metrics thread could not start its runtime"),
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => return tracing::error!(%error, "the metrics listener could not be registered"),
        };
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a metrics scrape failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| respond(request, Arc::clone(&registry)));
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(SCRAPE_TIMEOUT, connection).await;
            });
        }
    });
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        Ok(response)
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "credshard serves /metrics only\n".to_owned());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".to_owned());
    }
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
        Ok(()) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body),
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n".to_owned()),
    }
}

/// A counter of every executor's block.
type Field = fn(&ExecutorMetrics) -> &std::sync::atomic::AtomicU64;
/// A latency histogram of every executor's block.
type LatencyField = fn(&ExecutorMetrics) -> &Histogram<{ LATENCY_BOUNDS_NS.len() + 1 }>;
/// A metric's name (before its unit and `_total` suffixes), help and unit.
type Described = (&'static str, &'static str, Option<Unit>);

/// What a scrape reads.
struct Scrape {
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    database: Option<Database>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Scrape").field("shards", &self.store.shard_count()).finish_non_exhaustive()
    }
}

/// The lower-case name of an op slot (`unknown` for the last).
fn op_name(slot: usize) -> String {
    Op::ALL.get(slot).map_or("unknown", |op| op.name()).to_ascii_lowercase()
}

/// Sums one histogram over every executor, as (upper bound in the unit, count) pairs and the
/// sum in the unit; `scale` turns a recorded value into the unit.
fn merged<const B: usize>(
    executors: &[ExecutorMetrics],
    histogram: impl Fn(&ExecutorMetrics) -> &Histogram<B>,
    bounds: &[u64],
    scale: f64,
) -> (Vec<(f64, u64)>, u64, f64) {
    let mut counts = [0u64; B];
    let mut sum = 0u64;
    for executor in executors {
        let (executor_counts, executor_sum) = histogram(executor).read();
        for (total, count) in counts.iter_mut().zip(executor_counts) {
            *total += count;
        }
        sum = sum.wrapping_add(executor_sum);
    }
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .map(|bound| *bound as f64 * scale)
        .chain(std::iter::once(f64::INFINITY))
        .zip(counts)
        .collect();
    (buckets, counts.iter().sum(), sum as f64 * scale)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let executors = self.metrics.executors();
        let sum = |field: fn(&ExecutorMetrics) -> &std::sync::atomic::AtomicU64| {
            executors.iter().map(|executor| field(executor).load(Relaxed)).sum::<u64>()
        };

        // Requests by op and status, and their latency by op.
        let mut requests = encoder.encode_descriptor(
            "credshard_requests",
            "Requests answered, by op and status (RESP commands count as the native requests they become)",
            None,
            MetricType::Counter,
        )?;
        for slot in 0..OP_SLOTS {
            let op = op_name(slot);
            for (index, status) in Status::ALL.iter().enumerate() {
                let count: u64 = executors
                    .iter()
                    .map(|executor| executor.requests[slot].by_status[index].load(Relaxed))
                    .sum();
                if count > 0 {
                    let labels = [("op", op.as_str()), ("status", &status.name().to_ascii_lowercase())];
                    ConstCounter::new(count).encode(requests.encode_family(&labels)?)?;
                }
            }
        }
        let mut latency = encoder.encode_descriptor(
            "credshard_request_duration",
            "Time from reading a request to its reply being ready, by op (writes: until committed)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for slot in 0..OP_SLOTS {
            let (buckets, count, total) =
                merged(executors, |executor| &executor.requests[slot].latency_ns, &LATENCY_BOUNDS_NS, 1e-9);
            if count > 0 {
                let labels = [("op", op_name(slot))];
                latency
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(total, count, &buckets, None)?;
            }
        }

        let counters: [(Described, Field); 28] = [
            (("credshard_connections_accepted", "Connections accepted (both listeners)", None), |m| {
                &m.connections_total
            }),
            (("credshard_watchers_opened", "WATCH streams opened", None), |m| &m.watchers_total),
            (("credshard_watch_events_sent", "Change events sent to watchers", None), |m| {
                &m.watch_events_sent
            }),
            (
                (
                    "credshard_watchers_behind",
                    "Watchers ended because they fell behind the change feed",
                    None,
                ),
                |m| &m.watchers_behind,
            ),
            (("credshard_connections_refused", "Connections refused at --connections-max", None), |m| {
                &m.connections_refused
            }),
            (
                (
                    "credshard_connections_timed_out",
                    "Connections closed by a timeout (auth, idle, write)",
                    None,
                ),
                |m| &m.connections_timed_out,
            ),
            (
                (
                    "credshard_connections_closed_refusals",
                    "Connections closed after too many refused requests without authenticating",
                    None,
                ),
                |m| &m.connections_closed_refusals,
            ),
            (("credshard_received", "Bytes read from clients", Some(Unit::Bytes)), |m| &m.bytes_received),
            (("credshard_sent", "Bytes sent to clients", Some(Unit::Bytes)), |m| &m.bytes_sent),
            (("credshard_errors", "Requests answered with an error", None), |m| &m.errors_total),
            (("credshard_unauthorized", "Requests refused as unauthorized", None), |m| &m.unauthorized_total),
            (("credshard_auth_failures", "HELLOs (and RESP AUTHs) with an unknown token", None), |m| {
                &m.auth_failures
            }),
            (
                (
                    "credshard_frames_rejected",
                    "Frames (or RESP commands) that broke the protocol and closed their connection",
                    None,
                ),
                |m| &m.frames_rejected,
            ),
            (("credshard_writes_forwarded", "Writes sent to another shard's executor", None), |m| {
                &m.writes_forwarded
            }),
            (("credshard_expired_swept", "Expired credentials removed from memory", None), |m| {
                &m.expired_swept
            }),
            (
                ("credshard_log_batches_committed", "Group commits of the shards' write-ahead logs", None),
                |m| &m.log_batches_committed,
            ),
            (
                ("credshard_log_written", "Bytes written to the shards' write-ahead logs", Some(Unit::Bytes)),
                |m| &m.log_bytes_written,
            ),
            (("credshard_snapshots_written", "Shard snapshots written while serving", None), |m| {
                &m.snapshots_written
            }),
            (("credshard_snapshot_written", "Bytes of shard snapshots written", Some(Unit::Bytes)), |m| {
                &m.snapshot_bytes_written
            }),
            (
                (
                    "credshard_internal_errors",
                    "Reads that failed inside the server (each is logged with its id)",
                    None,
                ),
                |m| &m.internal_errors,
            ),
            (
                ("credshard_records_rewrapped", "Kept versions re-encrypted with the active data key", None),
                |m| &m.records_rewrapped,
            ),
            (("credshard_rewrap_failures", "Failed attempts to re-encrypt a credential", None), |m| {
                &m.rewrap_failures
            }),
            (("credshard_audit_events", "Audit entries recorded", None), |m| &m.audit_events),
            (
                (
                    "credshard_audit_events_dropped",
                    "Audit entries dropped (backlog past its hard limit)",
                    None,
                ),
                |m| &m.audit_events_dropped,
            ),
            (("credshard_audit_written", "Bytes written to the audit log", Some(Unit::Bytes)), |m| {
                &m.audit_bytes_written
            }),
            (("credshard_audit_write_errors", "Failed audit log writes or syncs", None), |m| {
                &m.audit_write_errors
            }),
            (("credshard_audit_syncs", "fdatasyncs of the audit log", None), |m| &m.audit_syncs),
            (("credshard_audit_waits", "Times a connection waited for a busy audit log", None), |m| {
                &m.audit_waits
            }),
        ];
        for ((name, help, unit), field) in counters {
            let metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
            ConstCounter::new(sum(field)).encode(metric)?;
        }

        let keys = self.store.keyring().status();
        let slabs = crate::storage::archive::slab_bytes();
        let gauges: [(&str, &str, Option<Unit>, u64); 9] = [
            (
                "credshard_connections_open",
                "Open connections (both listeners)",
                None,
                self.metrics.connections_open(),
            ),
            ("credshard_credentials", "Credentials in memory", None, self.store.len() as u64),
            ("credshard_shards", "Shards (one executor each)", None, self.store.shard_count() as u64),
            ("credshard_keyring_data_keys", "Data keys in the key ring", None, keys.data_keys as u64),
            (
                "credshard_keyring_active_key_id",
                "The data key new versions are encrypted with",
                None,
                u64::from(keys.active_key_id),
            ),
            (
                "credshard_keyring_retiring_keys",
                "Data keys still protecting versions after a rotation",
                None,
                keys.retiring as u64,
            ),
            (
                "credshard_audit_backlog",
                "Audit entries buffered and not yet written",
                Some(Unit::Bytes),
                sum(|m| &m.audit_backlog_bytes),
            ),
            (
                "credshard_record_slab_held",
                "Memory of the record slabs' pages (kept for records of each page's size, never given back)",
                Some(Unit::Bytes),
                slabs.held,
            ),
            (
                "credshard_record_slab_used",
                "Memory of the record slabs holding records",
                Some(Unit::Bytes),
                slabs.used,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            ConstGauge::new(value as i64).encode(metric)?;
        }

        let mut depth = encoder.encode_descriptor(
            "credshard_shard_write_queue_depth",
            "Writes waiting for their shard log's next group commit",
            None,
            MetricType::Gauge,
        )?;
        for (shard, executor) in executors.iter().enumerate() {
            let labels = [("shard", shard.to_string())];
            ConstGauge::new(executor.write_queue_depth.load(Relaxed) as i64)
                .encode(depth.encode_family(&labels)?)?;
        }
        let histograms: [(Described, LatencyField); 2] = [
            (
                (
                    "credshard_log_fsync_duration",
                    "fdatasync of a shard's write-ahead log",
                    Some(Unit::Seconds),
                ),
                |m| &m.log_fsync_latency_ns,
            ),
            (
                (
                    "credshard_db_round_duration",
                    "A round of writes committed to the database (--store), queue to commit",
                    Some(Unit::Seconds),
                ),
                |m| &m.db_round_latency_ns,
            ),
        ];
        for ((name, help, unit), histogram) in histograms {
            let (buckets, count, total) = merged(executors, histogram, &LATENCY_BOUNDS_NS, 1e-9);
            let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
            metric.encode_histogram::<NoLabelSet>(total, count, &buckets, None)?;
        }
        let (buckets, count, total) = merged(executors, |m| &m.log_batch_writes, &BATCH_BOUNDS, 1.0);
        let mut batches = encoder.encode_descriptor(
            "credshard_log_batch_writes",
            "Writes per group commit of a shard's write-ahead log",
            None,
            MetricType::Histogram,
        )?;
        batches.encode_histogram::<NoLabelSet>(total, count, &buckets, None)?;

        if let Some(database) = &self.database {
            let counters: [(&str, &str, Field); 8] = [
                (
                    "credshard_db_rounds",
                    "Rounds of writes committed to the database as one transaction",
                    |m| &m.db_rounds,
                ),
                ("credshard_db_writes_committed", "Writes the database committed", |m| {
                    &m.db_writes_committed
                }),
                ("credshard_db_writes_stale", "Writes the database found stale (re-read and retried)", |m| {
                    &m.db_writes_stale
                }),
                ("credshard_db_round_failures", "Rounds that failed", |m| &m.db_round_failures),
                ("credshard_db_credentials_reread", "Credentials re-read from the database", |m| {
                    &m.db_credentials_reread
                }),
                (
                    "credshard_cache_hits",
                    "Credentials read from the bounded cache without the database",
                    |m| &m.cache_hits,
                ),
                (
                    "credshard_cache_misses",
                    "Credentials the bounded cache missed, read from the database",
                    |m| &m.cache_misses,
                ),
                (
                    "credshard_cache_loads",
                    "Queries that read missed credentials (each takes every miss waiting)",
                    |m| &m.cache_loads,
                ),
            ];
            for (name, help, field) in counters {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(sum(field)).encode(metric)?;
            }
            let evictions = encoder.encode_descriptor(
                "credshard_cache_evictions",
                "Credentials evicted from the bounded cache",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(self.store.cache_evictions()).encode(evictions)?;
            let (open, idle, waiting) = database.pool_status();
            let pool = [
                ("credshard_db_pool_connections", "Database connections open", open),
                ("credshard_db_pool_idle", "Database connections idle", idle),
                ("credshard_db_pool_waiting", "Requests waiting for a database connection", waiting),
            ];
            for (name, help, value) in pool {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(value as i64).encode(metric)?;
            }
        }
        let mut build = encoder.encode_descriptor(
            "credshard_build_info",
            "The server's version (always 1)",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1).encode(build.encode_family(&labels)?)?;
        Ok(())
    }
}
