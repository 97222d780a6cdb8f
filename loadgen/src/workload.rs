//! The load itself: connect, preload every key, then run `pipeline` worker tasks per
//! connection, each sending request after request until the run ends, and print progress once
//! a second.
//!
//! Every connection is one [`Client`]: a credshard [`AsyncClient`] or a [`RedisClient`], each
//! pipelining whatever its workers send. Every read is validated against [`value`]: a wrong
//! value is an error of kind `mismatch`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credshard_protocol::{AsyncClient, ClientError, Expiry, Kind, Labels, PutRequest, Status, EMPTY_LABELS};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::mix::{Mix, Op};
use crate::redis::{RedisClient, RedisError};
use crate::report::{self, Recorder, Summary};
use crate::target::Target;
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
    /// Print a progress line each second (on stderr).
    pub progress: bool,
}

/// One connection to the server under load.
#[derive(Clone)]
pub enum Client {
    Credshard(AsyncClient),
    Redis(RedisClient),
}

/// What the server says it is: for the report.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Name and version.
    pub server: String,
    /// Shards (1 for redis, which serves from one thread).
    pub shard_count: u16,
}

/// Opens `connections` connections to `target`, all at once, and says HELLO (for redis:
/// `INFO server`) on each. Returns the clients and what the first server reply said.
///
/// # Errors
/// A one-line message naming the first failure.
pub async fn connect(target: &Target, connections: usize) -> Result<(Vec<Client>, ServerInfo), String> {
    let mut opening = JoinSet::new();
    for _ in 0..connections {
        let target = target.clone();
        opening.spawn(async move {
            let timeout = Duration::from_secs(CONNECT_TIMEOUT_SECONDS);
            let hello = async {
                match &target {
                    Target::Credshard { address } => {
                        let client =
                            AsyncClient::connect_raw(address.as_str()).await.map_err(|e| e.to_string())?;
                        let hello = client.hello(b"").await.map_err(|e| e.to_string())?;
                        let info = ServerInfo { server: hello.server, shard_count: hello.shard_count };
                        Ok::<_, String>((Client::Credshard(client), info))
                    }
                    Target::Redis { address } => {
                        let client = RedisClient::connect(address).await.map_err(|e| e.to_string())?;
                        let server = client.server_name().await.map_err(|e| e.to_string())?;
                        Ok((Client::Redis(client), ServerInfo { server, shard_count: 1 }))
                    }
                }
            };
            match tokio::time::timeout(timeout, hello).await {
                Ok(result) => result,
                Err(_) => Err(format!("no connection and HELLO within {CONNECT_TIMEOUT_SECONDS} s")),
            }
        });
    }
    let mut clients = Vec::with_capacity(connections);
    let mut first_info = None;
    while let Some(joined) = opening.join_next().await {
        let (client, info) = joined.map_err(|error| format!("connecting failed: {error}"))??;
        clients.push(client);
        first_info.get_or_insert(info);
    }
    Ok((clients, first_info.expect("at least one connection")))
}

impl Client {
    /// Writes `value` under `id`.
    async fn put(&self, id: &str, value: &[u8]) -> Result<(), Failure> {
        match self {
            Client::Credshard(client) => {
                client.put(&put_request(id, value)).await.map(drop).map_err(Failure::from)
            }
            Client::Redis(client) => client.set(id, value).await.map_err(Failure::from),
        }
    }

    /// Reads `id`; the value must be the loadgen's for `key_index`.
    async fn get(&self, id: &str, key_index: u64) -> Result<(), Failure> {
        let matches = match self {
            Client::Credshard(client) => {
                let reply = client.get(id).await?;
                reply.metadata.id == id && value::check(reply.secret.expose(), key_index)
            }
            Client::Redis(client) => match client.get(id).await? {
                Some(value) => value::check(&value, key_index),
                None => return Err(Failure::Server(Status::NotFound)),
            },
        };
        if matches {
            Ok(())
        } else {
            Err(Failure::Mismatch)
        }
    }

    /// Reads the metadata of `id` (credshard only: a redis target with get_meta in the mix is
    /// refused before the run).
    async fn get_meta(&self, id: &str) -> Result<(), Failure> {
        match self {
            Client::Credshard(client) => {
                if client.get_meta(id).await?.metadata.id == id {
                    Ok(())
                } else {
                    Err(Failure::Mismatch)
                }
            }
            Client::Redis(_) => Err(Failure::Unsupported),
        }
    }
}

/// Writes every key once (write counter 0), `pipeline` requests in flight per connection.
///
/// # Errors
/// A one-line message if any PUT failed: measuring reads of missing keys would mislead.
pub async fn preload(clients: &[Client], plan: &Plan) -> Result<(), String> {
    let next_key = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new((0u64, None::<String>)));
    let mut loaders = JoinSet::new();
    for client in clients {
        for _ in 0..plan.pipeline {
            let (client, next_key, failures) = (client.clone(), next_key.clone(), failures.clone());
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
                    let error = match tokio::time::timeout(timeout, put).await {
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
    let (failed, first) = &*failures.lock().expect("failures lock");
    match first {
        None => Ok(()),
        Some(first) => Err(format!("preload failed: {failed} of {} PUTs failed; first: {first}", plan.keys)),
    }
}

/// The PUT the loadgen sends for `id`.
fn put_request<'a>(id: &'a str, value: &'a [u8]) -> PutRequest<'a> {
    PutRequest {
        id,
        owner: OWNER,
        scope: SCOPE,
        kind: Kind::Token,
        expected_version: None,
        expiry: Expiry::Never,
        labels: Labels::from_validated(EMPTY_LABELS),
        secret: value,
    }
}

/// Runs the workload on `clients` for the warm-up and the measured window, then waits up to
/// the grace period for requests still in flight.
pub async fn run(clients: &[Client], plan: &Plan) -> Summary {
    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let window = Arc::new(Window {
        measure_start,
        end: measure_start + plan.duration,
        mix: plan.mix.clone(),
        keys: plan.keys,
        value_size: plan.value_size,
    });
    let recorders: Vec<Arc<Recorder>> = clients.iter().map(|_| Arc::default()).collect();
    let mut workers = JoinSet::new();
    for (connection_index, (client, recorder)) in clients.iter().zip(&recorders).enumerate() {
        for slot in 0..plan.pipeline {
            let seed = (connection_index * plan.pipeline + slot) as u64;
            let worker = work(client.clone(), recorder.clone(), window.clone(), seed);
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
    measure_start: Instant,
    end: Instant,
    mix: Mix,
    keys: u64,
    value_size: usize,
}

enum WorkerExit {
    /// The run ended.
    Done,
    /// The connection failed or closed: every later request on it would fail at once.
    ConnectionLost,
}

/// Why one request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Server(Status),
    /// The connection failed or was closed.
    Io,
    /// The reply did not decode.
    Protocol,
    /// A read returned a value that is not the loadgen's for that key.
    Mismatch,
    /// A redis error reply (`-ERR ...`).
    Redis,
    /// The op does not exist for this target.
    Unsupported,
}

impl Failure {
    fn kind(self) -> &'static str {
        match self {
            Failure::Server(status) => status.name(),
            Failure::Io => "io",
            Failure::Protocol => "protocol",
            Failure::Mismatch => "mismatch",
            Failure::Redis => "redis_error",
            Failure::Unsupported => "unsupported",
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        match error {
            ClientError::Server { status, .. } => Failure::Server(status),
            ClientError::Io(_) | ClientError::Closed => Failure::Io,
            ClientError::Frame(_)
            | ClientError::Decode(_)
            | ClientError::UnknownStatus(_)
            | ClientError::UnexpectedResponse { .. } => Failure::Protocol,
        }
    }
}

impl From<RedisError> for Failure {
    fn from(error: RedisError) -> Failure {
        match error {
            RedisError::Io => Failure::Io,
            RedisError::Protocol(_) => Failure::Protocol,
            RedisError::Server(_) => Failure::Redis,
        }
    }
}

/// One pipeline slot: request after request until the window ends.
async fn work(client: Client, recorder: Arc<Recorder>, window: Arc<Window>, seed: u64) -> WorkerExit {
    let mut random = Random::new(seed);
    let mut id = String::with_capacity(32);
    let mut value = vec![0u8; window.value_size];
    let mut writes = 0u64;
    loop {
        let started = Instant::now();
        if started >= window.end {
            return WorkerExit::Done;
        }
        let op = window.mix.pick(random.below(window.mix.weight_total()));
        let key_index = random.below(window.keys);
        value::key_id(key_index, &mut id);
        let result = match op {
            Op::Get => client.get(&id, key_index).await,
            Op::Put => {
                writes += 1;
                value::fill(&mut value, key_index, writes);
                client.put(&id, &value).await
            }
            Op::GetMeta => client.get_meta(&id).await,
        };
        let finished = Instant::now();
        let latency_us = finished.duration_since(started).as_micros() as u64;
        let measured = started >= window.measure_start && finished <= window.end;
        let failure = result.err();
        recorder.record(op, latency_us, failure.map(Failure::kind), measured);
        if failure == Some(Failure::Io) {
            return WorkerExit::ConnectionLost;
        }
    }
}

/// splitmix64: fast, seedable and good enough to pick keys and ops uniformly.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Random {
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift; the bias is below 2^-40 for our bounds).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_server::{self, Behaviour};

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
        for op in Op::ALL {
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
    fn random_is_uniform_enough() {
        let mut random = Random::new(1);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[random.below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|&count| (9_000..11_000).contains(&count)), "{counts:?}");
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
