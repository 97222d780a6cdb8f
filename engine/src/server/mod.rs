//! The server: one glommio executor per shard, pinned to CPUs 0..N, all listening on the same
//! port (SO_REUSEPORT).
//!
//! - [`executor`]: what each executor runs: mesh, shard writer, listener, accept loop.
//! - [`connection`]: the per-connection loop with pipelining and out-of-order replies.
//! - [`input`]: the connection's input buffer, read into without zeroing, wiped where sensitive.
//! - [`dispatch`]: one request frame to one response frame; the read path.
//! - [`prometheus`]: `/metrics` for Prometheus, on a thread of its own.
//! - [`resp`]: the Redis protocol listener, translated onto the same dispatch.
//! - [`router`]: writes to the owning shard, locally or through the mesh.
//! - [`tls`]: the rustls server configuration.

pub mod connection;
pub mod dispatch;
pub mod executor;
pub mod input;
pub mod maintenance;
pub mod postgres;
pub mod prometheus;
pub mod resp;
pub mod router;
pub mod tls;
pub mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};

use crate::auth::Authenticator;
use crate::config::ServerConfig;
use crate::crypto::{KeySource, Keyring};
use crate::data::Store;
use crate::error::EngineError;
use crate::metrics::Metrics;
use crate::storage::lock::DataDirLock;
use crate::storage::log::LogPlace;
use crate::storage::postgres::Database;
use crate::storage::recovery;

/// How long `start` waits for every executor to report that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server;

/// A running server. Dropping it stops the server.
pub struct ServerHandle {
    local_address: SocketAddr,
    resp_address: Option<SocketAddr>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    authenticator: Arc<Authenticator>,
    shared: Arc<executor::Shared>,
    stop: Arc<AtomicBool>,
    threads: Option<PoolThreadHandles<()>>,
    /// `/metrics`, with `--metrics-listen` (stopped before the executors).
    exporter: Option<prometheus::Exporter>,
    /// Held for the server's life; released (last, after the executors stop) when dropped.
    _data_dir_lock: DataDirLock,
}

/// Entries of each executor's io_uring rings. Every connection keeps a poll request in its
/// executor's ring, and the kernel finds a request to cancel (glommio cancels its preemption
/// timer on every turn of the executor's loop) by walking one bucket of a hash table whose
/// size follows the completion queue's: 128 entries give it 8 buckets, so with 10,000 idle
/// connections each cancel walked ~1,250 polls (`io_poll_find`, 19% of the server's time in
/// `perf`). 1,024 entries give it 64. Not more: glommio also preempts a busy executor after
/// this many completions (its other trigger is a 100 ms timer), and 4,096 (256 buckets, the
/// kernel's most), measured slightly better with idle connections, would make a busy
/// executor's turns far longer for every other connection.
const RING_DEPTH: usize = 1024;

impl Server {
    /// Opens the key ring in the data dir and starts one executor per shard.
    ///
    /// # Errors
    /// Invalid configuration, key ring errors (wrong master key, damaged file), and
    /// executors that cannot start (e.g. locked-memory limit) or listen (address in use).
    pub fn start(config: &ServerConfig, key_source: KeySource) -> Result<ServerHandle, EngineError> {
        config.validate()?;
        let authenticator = Arc::new(match &config.tokens {
            Some(path) => Authenticator::from_file(path)?,
            None => Authenticator::open(),
        });
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            (None, None) => None,
            _ => return Err(EngineError::Config("--tls-cert and --tls-key go together".to_owned())),
        };
        std::fs::create_dir_all(&config.data_dir)?;
        // Before anything else in the data dir is read or written: one server per data dir.
        let data_dir_lock = DataDirLock::acquire(&config.data_dir)?;
        refuse_taken_address(config.listen)?;
        if let Some(resp) = config.resp_listen {
            refuse_taken_address(resp)?;
        }
        let database = match &config.store {
            Some(url) => Some(Database::open(url, config.store_connections, config.store_ca.as_deref())?),
            None => None,
        };
        let keyring = match &database {
            Some(database) => Keyring::open_shared(Arc::new(postgres::PgRing(database.clone())), key_source)?,
            None => {
                refuse_lost_keyring(config)?;
                Keyring::open(&config.data_dir, key_source)?
            }
        };
        let shard_count = config.shard_count();
        let mut store = Store::new(shard_count, keyring, config.limits(), config.lifecycle())
            .with_feed_events(config.watch_history_events);
        if database.is_some() && config.cache_capacity > 0 {
            store = store.with_cache_capacity(config.cache_capacity);
        }
        let store = Arc::new(store);
        let (logs, follow_from) = match &database {
            Some(database) => (Vec::new(), postgres::load(database, &store)?),
            None => (recover_logs(config, &store)?, 0),
        };
        let metrics = Arc::new(Metrics::new(shard_count));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_sender, ready) = mpsc::channel();
        let shared = Arc::new(executor::Shared {
            config: config.clone(),
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            authenticator: Arc::clone(&authenticator),
            tls,
            reloads: AtomicU64::new(0),
            stop: Arc::clone(&stop),
            bound: executor::Bound::default(),
            bound_resp: executor::Bound::default(),
            logs,
            database,
            follow_from,
            ready: Mutex::new(ready_sender),
        });
        let mesh = MeshBuilder::full(shard_count, config.shard_queue_max);
        let handle_shared = Arc::clone(&shared);
        let threads = LocalExecutorPoolBuilder::new(placement(shard_count)?)
            .name("credshard")
            .io_memory(config.io_memory_bytes)
            .ring_depth(RING_DEPTH)
            .spin_before_park(Duration::from_micros(config.spin_before_park_us))
            .on_all_shards(move || executor::run(shared, mesh))
            .map_err(|error| EngineError::Start(error.to_string()))?;

        let mut handle = ServerHandle {
            local_address: config.listen,
            resp_address: config.resp_listen,
            store,
            metrics,
            authenticator,
            shared: handle_shared,
            stop,
            threads: Some(threads),
            exporter: None,
            _data_dir_lock: data_dir_lock,
        };
        for _ in 0..shard_count {
            match ready.recv_timeout(START_TIMEOUT) {
                Ok(Ok(listening)) => {
                    handle.local_address = listening.native;
                    handle.resp_address = listening.resp;
                }
                Ok(Err(message)) => {
                    handle.stop_and_join();
                    return Err(EngineError::Start(message));
                }
                Err(_) => {
                    // An executor thread ended without reporting: its error is in its result.
                    let message =
                        handle.stop_and_join().unwrap_or_else(|| "an executor did not start".to_owned());
                    return Err(EngineError::Start(message));
                }
            }
        }
        if let Some(listen) = config.metrics_listen {
            let database = handle.shared.database.clone();
            match prometheus::Exporter::start(
                listen,
                Arc::clone(&handle.metrics),
                Arc::clone(&handle.store),
                database,
            ) {
                Ok(exporter) => handle.exporter = Some(exporter),
                Err(error) => {
                    handle.stop_and_join();
                    return Err(error);
                }
            }
        }
        Ok(handle)
    }
}

/// Refuses a data dir that holds logs (so, perhaps, credentials) but no key ring: creating a
/// fresh ring there would leave every stored secret unreadable and reuse its key ids. An
/// operator who knows the ring is gone for good says so with `--create-keyring`.
fn refuse_lost_keyring(config: &ServerConfig) -> Result<(), EngineError> {
    let has_logs = crate::storage::manifest::Manifest::read(&config.data_dir)?.is_some();
    if has_logs && !Keyring::exists(&config.data_dir) && !config.create_keyring {
        return Err(EngineError::Start(format!(
            "{} holds write-ahead logs but no key ring ({}): its credentials cannot be decrypted \
             without it. Restore the key ring from a backup, or start with --create-keyring to \
             begin a new one (every credential already stored stays unreadable)",
            config.data_dir.display(),
            Keyring::path(&config.data_dir).display()
        )));
    }
    Ok(())
}

/// Refuses an address another process already listens on. The executors bind with
/// SO_REUSEPORT (one listener each), which would let this server silently share the port with
/// any other process of the same user, each getting a part of the connections. A probe bound
/// without SO_REUSEPORT fails on a port that any other socket listens on.
fn refuse_taken_address(listen: SocketAddr) -> Result<(), EngineError> {
    if listen.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(listen) {
        Ok(_probe) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(EngineError::Start(format!(
            "{listen} is already in use by another process (another credshard, or any other server); \
             refusing to share it"
        ))),
        Err(error) => Err(EngineError::Start(format!("cannot listen on {listen}: {error}"))),
    }
}

/// Where the executors run: one pinned per CPU the process may use (so `taskset` is honoured),
/// or, with more shards than such CPUs, all fenced to those CPUs and sharing them.
fn placement(shard_count: usize) -> Result<PoolPlacement, EngineError> {
    let allowed = allowed_cpus();
    let cpus = CpuSet::online()
        .map_err(|error| EngineError::Start(format!("reading the CPU topology: {error}")))?
        .filter(|location| allowed.as_ref().is_none_or(|allowed| allowed.contains(&location.cpu)));
    if cpus.is_empty() {
        return Err(EngineError::Start("no CPU is available to this process".to_owned()));
    }
    if shard_count <= cpus.len() {
        Ok(PoolPlacement::MaxSpread(shard_count, Some(cpus)))
    } else {
        Ok(PoolPlacement::Fenced(shard_count, cpus))
    }
}

/// Recovers the shards from the data dir's logs; returns where each shard's log goes on.
fn recover_logs(config: &ServerConfig, store: &Store) -> Result<Vec<LogPlace>, EngineError> {
    let (manifest, segments, report) = recovery::recover(&config.data_dir, store)?;
    tracing::info!(
        credentials = report.credentials,
        entries = report.entries_replayed,
        log_bytes = report.log_bytes,
        torn_bytes_dropped = report.torn_bytes_dropped,
        rewritten = report.rewritten,
        elapsed_ms = report.elapsed_ms,
        "recovered"
    );
    let logs: Vec<LogPlace> = segments
        .into_iter()
        .enumerate()
        .map(|(shard_id, segment)| LogPlace {
            data_dir: config.data_dir.clone(),
            manifest,
            shard_id,
            segment,
        })
        .collect();
    Ok(logs)
}

/// The CPUs in this process's affinity mask, if it can be read.
fn allowed_cpus() -> Option<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    Some((0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect())
}

impl ServerHandle {
    /// The address clients connect to.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Where `/metrics` is served (with `--metrics-listen`).
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.exporter.as_ref().map(prometheus::Exporter::address)
    }

    /// Where the RESP listener listens (with `--resp-listen`).
    pub fn resp_address(&self) -> Option<SocketAddr> {
        self.resp_address
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What SIGHUP does: asks every executor to reopen its audit file (within a few
    /// milliseconds; for log rotation), and re-reads the tokens file. Connections stay open;
    /// each one's next request is checked against the new tokens. Returns how many tokens are
    /// now in force.
    ///
    /// # Errors
    /// [`EngineError::Config`] for an unreadable or invalid tokens file; the old tokens stay
    /// (the audit files are reopened all the same).
    pub fn reload(&self) -> Result<usize, EngineError> {
        self.shared.reloads.fetch_add(1, Ordering::AcqRel);
        self.authenticator.reload()
    }

    /// Asks every executor to stop; [`ServerHandle::join`] waits for them.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops the server and waits for its executors.
    ///
    /// # Errors
    /// [`EngineError::Start`] with the first executor's failure, if any failed.
    pub fn join(mut self) -> Result<(), EngineError> {
        match self.stop_and_join() {
            Some(message) => Err(EngineError::Start(message)),
            None => Ok(()),
        }
    }

    /// Stops and joins; returns the first executor failure.
    fn stop_and_join(&mut self) -> Option<String> {
        self.exporter = None;
        self.request_stop();
        let threads = self.threads.take()?;
        threads.join_all().into_iter().find_map(|result| result.err().map(|error| error.to_string()))
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
