//! The load itself: connect, preload every key, then run `pipeline` worker tasks per
//! connection, each sending request after request until the run ends, and print progress once
//! a second.
//!
//! While keys are preloaded a progress bar (keys done of total, rate, ETA) is drawn on stderr
//! if stderr is a terminal and the plan asks for progress; piped or redirected stderr (tests,
//! scripts, `--json` runs) gets no bar and no escape codes.
//!
//! Every connection is one [`Client`]: a credshard [`AsyncClient`] or a [`RedisClient`], each
//! pipelining whatever its workers send. Every read is validated against [`value`]: a wrong
//! value is an error of kind `mismatch`.
//!
//! Without `--rate` each worker is a closed loop: it sends its next request when the last one
//! is answered, and latency runs from the send. With `--rate` each worker follows a fixed
//! [`Schedule`] (the rate divided over the workers) and latency runs from each request's
//! intended send time, so a slow reply that delays the requests behind it is charged to them
//! too (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credshard_protocol::Status;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

#[cfg(test)]
use crate::client::connect;
pub use crate::client::Client;
use crate::client::{put_request, Failure};
use crate::distribution::{Distribution, KeyChooser, Random};
use crate::mix::{Mix, Op};
use crate::report::{self, Recorder, Summary};
use crate::value;

/// How long opening a connection and its HELLO (for redis: INFO) may take.
pub const CONNECT_TIMEOUT_SECONDS: u64 = 5;
/// How long one preload PUT may take.
pub const PRELOAD_REQUEST_TIMEOUT_SECONDS: u64 = 10;
/// How long requests still in flight at the end of the run are waited for before they are
/// abandoned (and counted), so a stalled server cannot hang the loadgen.
pub const GRACE_PERIOD_SECONDS: u64 = 5;
/// Time between progress lines.
const PROGRESS_EVERY_MS: u64 = 1000;

/// Owner of every credential the loadgen writes.
pub const OWNER: &str = "loadgen";
/// Scope of every credential the loadgen writes.
pub const SCOPE: &str = "bench";

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pipeline: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub keys: u64,
    pub value_size: usize,
    pub mix: Mix,
    /// Which keys the requests use.
    pub distribution: Distribution,
    /// Total target ops/s over every worker (open loop), or `None` for a closed loop.
    pub rate: Option<f64>,
    /// Print a progress line each second, and the preload's progress bar (on stderr).
    pub progress: bool,
}

/// The outcome kind of a NOT_FOUND when the mix deletes keys: not an error.
pub const NOT_FOUND_AFTER_DELETE: &str = "not_found_after_delete";

/// The preload's progress bar: on stderr when `plan.progress` is set, and then only if stderr
/// is a terminal ([`ProgressDrawTarget::stderr`] hides itself otherwise). Cleared when it is
/// finished or dropped, so the summary line printed after the preload stands alone.
fn preload_bar(plan: &Plan) -> ProgressBar {
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "preload {wide_bar} {human_pos}/{human_len} keys, {per_sec:0}, ETA {eta}",
    )
    .expect("the preload bar's template is valid");
    ProgressBar::with_draw_target(Some(plan.keys), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_finish(ProgressFinish::AndClear)
}

/// Writes every key once (write counter 0), `pipeline` requests in flight per connection.
///
/// # Errors
/// A one-line message if any PUT failed: measuring reads of missing keys would mislead.
pub async fn preload(clients: &[Client], plan: &Plan) -> Result<(), String> {
    let next_key = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new((0u64, None::<String>)));
    // Counts PUTs answered (or failed): a clone per loader, all drawing one bar.
    let bar = preload_bar(plan);
    let mut loaders = JoinSet::new();
    for client in clients {
        for _ in 0..plan.pipeline {
            let (client, next_key, failures) = (client.clone(), next_key.clone(), failures.clone());
            let bar = bar.clone();
            let (keys, value_size) = (plan.keys, plan.value_size);
            loaders.spawn(async move {
                let mut id = String::new();
                let mut value = vec![0u8; value_size];
                loop {
                    let key_index = next_key.fetch_add(1, Ordering::Relaxed);
                    if key_index >= keys {
                        return;
                    }
                    value::key_id(key_index, &mut id);
                    value::fill(&mut value, key_index, 0);
                    let timeout = Duration::from_secs(PRELOAD_REQUEST_TIMEOUT_SECONDS);
                    let put = async {
                        match &client {
                            Client::Credshard(client) => client
                                .put(&put_request(&id, &value))
                                .await
                                .map(drop)
                                .map_err(|e| e.to_string()),
                            Client::Redis(client) => client.set(&id, &value).await.map_err(|e| e.to_string()),
                        }
                    };
                    let result = tokio::time::timeout(timeout, put).await;
                    bar.inc(1);
                    let error = match result {
                        Ok(Ok(())) => continue,
                        Ok(Err(error)) => error,
                        Err(_) => format!("no reply within {PRELOAD_REQUEST_TIMEOUT_SECONDS} s"),
                    };
                    let mut failures = failures.lock().expect("failures lock");
                    failures.0 += 1;
                    failures.1.get_or_insert_with(|| format!("{id}: {error}"));
                }
            });
        }
    }
    while let Some(joined) = loaders.join_next().await {
        joined.map_err(|error| format!("preload task failed: {error}"))?;
    }
    bar.finish_and_clear();
    let (failed, first) = &*failures.lock().expect("failures lock");
    match first {
        None => Ok(()),
        Some(first) => Err(format!("preload failed: {failed} of {} PUTs failed; first: {first}", plan.keys)),
    }
}

/// Runs the workload on `clients` for the warm-up and the measured window, then waits up to
/// the grace period for requests still in flight.
pub async fn run(clients: &[Client], plan: &Plan) -> Summary {
    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let workers_total = (clients.len() * plan.pipeline) as u64;
    let window = Arc::new(Window {
        start,
        measure_start,
        end: measure_start + plan.duration,
        mix: plan.mix.clone(),
        keys: KeyChooser::new(plan.distribution, plan.keys),
        value_size: plan.value_size,
        rate: plan.rate,
        workers: workers_total,
    });
    let recorders: Vec<Arc<Recorder>> = clients.iter().map(|_| Arc::default()).collect();
    let mut workers = JoinSet::new();
    for (connection_index, (client, recorder)) in clients.iter().zip(&recorders).enumerate() {
        for slot in 0..plan.pipeline {
            let worker_index = (connection_index * plan.pipeline + slot) as u64;
            let worker = work(client.clone(), recorder.clone(), window.clone(), worker_index);
            workers.spawn(async move { (connection_index, worker.await) });
        }
    }

    let every = Duration::from_millis(PROGRESS_EVERY_MS);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(start + every), every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let give_up_at = window.end + Duration::from_secs(GRACE_PERIOD_SECONDS);
    let mut interval = report::latency_histogram();
    let mut last_tick = start;
    let mut lost = vec![false; clients.len()];
    let mut requests_abandoned = 0;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok((_, WorkerExit::Done))) => {}
                Some(Ok((connection_index, WorkerExit::ConnectionLost))) => lost[connection_index] = true,
                Some(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Some(Err(_cancelled)) => requests_abandoned += 1,
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                if now >= give_up_at {
                    workers.abort_all();
                } else if plan.progress && now <= window.end + every / 2 {
                    print_progress(&recorders, &mut interval, start, measure_start, &mut last_tick);
                }
            }
        }
    }
    // The workers usually finish just before the tick at the end of the window.
    if plan.progress && Instant::now() - last_tick >= every / 2 {
        print_progress(&recorders, &mut interval, start, measure_start, &mut last_tick);
    }

    let mut summary = Summary::new(plan.duration);
    for recorder in &recorders {
        recorder.add_to(&mut summary);
    }
    summary.connections_lost = lost.iter().filter(|&&lost| lost).count();
    summary.requests_abandoned = requests_abandoned;
    summary
}

/// Prints the progress line for the time since `last_tick`, and moves `last_tick` to now.
fn print_progress(
    recorders: &[Arc<Recorder>],
    interval: &mut Histogram<u64>,
    start: Instant,
    measure_start: Instant,
    last_tick: &mut Instant,
) {
    let now = Instant::now();
    let errors_total: u64 = recorders.iter().map(|recorder| recorder.take_interval(interval)).sum();
    // The line describes the time that just ended.
    let phase = if *last_tick < measure_start { "warmup" } else { "run" };
    eprintln!("{}", report::progress_line(now - start, phase, interval, now - *last_tick, errors_total));
    interval.reset();
    *last_tick = now;
}

/// What every worker shares.
struct Window {
    start: Instant,
    measure_start: Instant,
    end: Instant,
    mix: Mix,
    keys: KeyChooser,
    value_size: usize,
    rate: Option<f64>,
    /// Workers in total (connections × pipeline), to divide the rate.
    workers: u64,
}

/// When one open-loop worker means to send its requests: request `k` at `first + k ×
/// interval`, whether or not the requests before it have been answered by then.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    first: Instant,
    interval_seconds: f64,
}

impl Schedule {
    /// Worker `worker` of `workers` sharing `rate` ops/s in total from `start`: one request
    /// every `workers / rate` seconds, the workers' first requests spread evenly over the first
    /// interval.
    pub fn new(start: Instant, rate: f64, worker: u64, workers: u64) -> Schedule {
        assert!(rate > 0.0 && worker < workers);
        let interval_seconds = workers as f64 / rate;
        let offset = interval_seconds * worker as f64 / workers as f64;
        Schedule { first: start + Duration::from_secs_f64(offset), interval_seconds }
    }

    /// The intended send time of request `k` (counting from 0).
    pub fn intended(&self, k: u64) -> Instant {
        self.first + Duration::from_secs_f64(self.interval_seconds * k as f64)
    }

    /// The latency of request `k` answered at `finished`: from its intended send time, so any
    /// lateness in sending it counts.
    pub fn latency(&self, k: u64, finished: Instant) -> Duration {
        finished.saturating_duration_since(self.intended(k))
    }
}

enum WorkerExit {
    /// The run ended.
    Done,
    /// The connection failed or closed: every later request on it would fail at once.
    ConnectionLost,
}

/// One pipeline slot: request after request until the window ends, back to back (closed
/// loop) or on its [`Schedule`] (open loop).
async fn work(client: Client, recorder: Arc<Recorder>, window: Arc<Window>, worker: u64) -> WorkerExit {
    let mut random = Random::new(worker);
    let schedule = window.rate.map(|rate| Schedule::new(window.start, rate, worker, window.workers));
    let deletes = window.mix.includes(Op::Delete);
    let batch_size = window.mix.batch_size();
    let mut id = String::with_capacity(32);
    let mut ids: Vec<String> = Vec::new();
    let mut key_indices: Vec<u64> = Vec::new();
    let mut item_failures: Vec<Failure> = Vec::new();
    let mut value = vec![0u8; window.value_size];
    let mut writes = 0u64;
    let mut sent = 0u64;
    loop {
        let started = match &schedule {
            None => Instant::now(),
            Some(schedule) => schedule.intended(sent),
        };
        if started >= window.end {
            return WorkerExit::Done;
        }
        if schedule.is_some() {
            // A worker behind its schedule sends at once; the lateness counts in the latency.
            tokio::time::sleep_until(tokio::time::Instant::from_std(started)).await;
        }
        let k = sent;
        sent += 1;
        let op = window.mix.pick(random.below(window.mix.weight_total()));
        let key_index = window.keys.draw(&mut random);
        value::key_id(key_index, &mut id);
        item_failures.clear();
        let result = match op {
            Op::Get => client.get(&id, key_index).await,
            Op::Put => {
                writes += 1;
                value::fill(&mut value, key_index, writes);
                client.put(&id, &value).await
            }
            Op::GetMeta => client.get_meta(&id).await,
            Op::Rotate => {
                writes += 1;
                value::fill(&mut value, key_index, writes);
                client.rotate(&id, &value).await
            }
            Op::Delete => client.delete(&id).await,
            Op::BatchGet => {
                ids.resize_with(batch_size, String::new);
                key_indices.clear();
                key_indices.push(key_index);
                key_indices.extend((1..batch_size).map(|_| window.keys.draw(&mut random)));
                for (id, &key_index) in ids.iter_mut().zip(&key_indices) {
                    value::key_id(key_index, id);
                }
                client.batch_get(&ids, &key_indices, &mut item_failures).await
            }
        };
        let finished = Instant::now();
        let latency = match &schedule {
            Some(schedule) => schedule.latency(k, finished),
            None => finished.saturating_duration_since(started),
        };
        let latency_us = latency.as_micros() as u64;
        // Open loop: every request scheduled in the window is measured, even one sent or
        // answered late, so a backlog is not hidden. Closed loop: answered within the window.
        let measured = started >= window.measure_start && (schedule.is_some() || finished <= window.end);
        let mut not_found_after_delete = 0;
        let mut batch_failed = false;
        for &failure in &item_failures {
            if deletes && failure == Failure::Server(Status::NotFound) {
                not_found_after_delete += 1;
            } else {
                recorder.record_batch_item_error(failure.kind(), measured);
                batch_failed = true;
            }
        }
        let failure = match result {
            Err(Failure::Server(Status::NotFound)) if deletes => {
                not_found_after_delete += 1;
                None
            }
            Err(failure) => Some(failure),
            Ok(()) if batch_failed => Some(Failure::BatchItem),
            Ok(()) => None,
        };
        for _ in 0..not_found_after_delete {
            recorder.record_outcome(NOT_FOUND_AFTER_DELETE, measured);
        }
        recorder.record(op, latency_us, failure.map(Failure::kind), measured);
        if failure == Some(Failure::Io) {
            return WorkerExit::ConnectionLost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_server::{self, Behaviour};
    use crate::redis::RedisError;
    use crate::target::Target;
    use credshard_protocol::ClientError;

    fn credshard(address: &str) -> Target {
        Target::Credshard { address: address.to_owned() }
    }

    fn plan(mix: &str) -> Plan {
        Plan {
            pipeline: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
            keys: 50,
            value_size: 64,
            mix: Mix::parse(mix).unwrap(),
            distribution: Distribution::Uniform,
            rate: None,
            progress: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_run_validates_every_read() {
        let address = fake_server::start(Behaviour::Correct).await;
        let (clients, hello) = connect(&credshard(&address), 3).await.unwrap();
        assert_eq!((clients.len(), hello.server.as_str()), (3, "fake 0.0.0"));
        let plan = plan("get=80,put=10,get_meta=10");
        preload(&clients, &plan).await.unwrap();
        let summary = run(&clients, &plan).await;
        assert!(summary.errors.is_empty() && summary.warmup_errors.is_empty(), "{:?}", summary.errors);
        for op in [Op::Get, Op::Put, Op::GetMeta] {
            assert!(!summary.per_op[op.index()].is_empty(), "no {op:?} measured");
        }
        assert_eq!((summary.connections_lost, summary.requests_abandoned), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_keys_and_wrong_values_are_errors_by_kind() {
        let address = fake_server::start(Behaviour::Correct).await;
        let (clients, _) = connect(&credshard(&address), 1).await.unwrap();
        let summary = run(&clients, &plan("get=1")).await;
        assert_eq!(summary.errors.keys().copied().collect::<Vec<_>>(), ["NOT_FOUND"]);
        assert!(summary.all().is_empty());

        let address = fake_server::start(Behaviour::WrongValues).await;
        let (clients, _) = connect(&credshard(&address), 1).await.unwrap();
        let plan = plan("get=1");
        preload(&clients, &plan).await.unwrap();
        let summary = run(&clients, &plan).await;
        assert_eq!(summary.errors.keys().copied().collect::<Vec<_>>(), ["mismatch"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lost_connections_end_their_workers() {
        let address = fake_server::start(Behaviour::CloseAfter(20)).await;
        let (clients, _) = connect(&credshard(&address), 2).await.unwrap();
        let summary = run(&clients, &plan("put=1")).await;
        assert_eq!(summary.connections_lost, 2);
        let io_errors = summary.errors.get("io").or(summary.warmup_errors.get("io"));
        assert!(io_errors.is_some(), "{:?} {:?}", summary.errors, summary.warmup_errors);
    }

    #[tokio::test]
    async fn an_unreachable_target_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let Err(error) = connect(&credshard(&address), 2).await else { panic!("connected to a closed port") };
        assert!(error.contains("refused"), "{error}");
    }

    #[test]
    fn the_open_loop_schedule_is_start_plus_k_intervals() {
        let start = Instant::now();
        // 1000 ops/s over 4 workers: each sends every 4 ms, the workers 1 ms apart.
        let first = Schedule::new(start, 1000.0, 0, 4);
        let third = Schedule::new(start, 1000.0, 2, 4);
        let close = |a: Instant, b: Instant| a.max(b) - a.min(b) <= Duration::from_nanos(10);
        for k in [0u64, 1, 2, 10, 250, 1_000_000] {
            assert!(close(first.intended(k), start + Duration::from_millis(4 * k)), "{k}");
            assert!(close(third.intended(k), start + Duration::from_millis(4 * k + 2)), "{k}");
        }
        // A reply 1 ms after its intended send is 1 ms; a request sent 30 ms late and answered
        // 1 ms after that is 31 ms: the lateness counts.
        let answered = first.intended(5) + Duration::from_millis(1);
        assert!(close(start + first.latency(5, answered), start + Duration::from_millis(1)));
        let late = first.intended(5) + Duration::from_millis(31);
        assert!(close(start + first.latency(5, late), start + Duration::from_millis(31)));
        // Answered "before" its intended time (clock granularity) is 0, not a panic.
        assert_eq!(first.latency(5, start), Duration::ZERO);
        // Over 2 s at 1000 ops/s the 4 workers intend 2000 requests.
        let end = start + Duration::from_secs(2);
        let intended: usize = (0..4)
            .map(|worker| {
                let schedule = Schedule::new(start, 1000.0, worker, 4);
                (0..).take_while(|&k| schedule.intended(k) < end).count()
            })
            .sum();
        assert_eq!(intended, 2000);
    }

    #[test]
    fn without_progress_the_preload_bar_is_hidden() {
        // Tests and library callers that turn progress off never draw on the terminal.
        assert!(preload_bar(&plan("get=1")).is_hidden());
    }

    #[test]
    fn client_errors_map_to_kinds() {
        let server = ClientError::Server { status: Status::NotFound, detail: 0, message: String::new() };
        assert_eq!(Failure::from(server).kind(), "NOT_FOUND");
        assert_eq!(Failure::from(ClientError::Closed).kind(), "io");
        assert_eq!(Failure::from(ClientError::UnknownStatus(0xEE)).kind(), "protocol");
        assert_eq!(Failure::from(RedisError::Server("ERR x".to_owned())).kind(), "redis_error");
        assert_eq!(Failure::from(RedisError::Io).kind(), "io");
        assert_eq!(Failure::from(RedisError::Protocol(String::new())).kind(), "protocol");
    }
}
