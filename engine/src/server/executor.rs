//! One executor: joins the mesh (its peer id is its shard id), claims its shard's writer,
//! serves forwarded writes, binds the shared port and accepts connections until stopped.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;

use crate::audit::{AuditLog, AuditSettings};
use crate::auth::Authenticator;
use crate::config::{ServerConfig, Switch};
use crate::data::Store;
use crate::metrics::{ExecutorMetrics, Metrics};
use crate::server::connection::Listener;
use crate::server::router::{Router, ShardMessage};
use crate::server::{connection, maintenance, postgres, watch};
use crate::storage::log::{LogPlace, LogSettings, ShardLog};
use crate::storage::postgres::Database;
use crate::storage::{ShardStorage, Shards};
use glommio::channels::local_channel;

/// Flushes of the audit log at shutdown before giving up on connections that keep recording.
const FINAL_AUDIT_FLUSHES_MAX: usize = 16;

/// How often an idle executor checks whether it was asked to stop.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What every executor shares, built once by `Server::start`.
pub struct Shared {
    pub config: ServerConfig,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub authenticator: Arc<Authenticator>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bumped by every reload (SIGHUP): executors reopen their audit files.
    pub reloads: AtomicU64,
    pub stop: Arc<AtomicBool>,
    /// The addresses executor 0 bound, which the others bind too (it matters for port 0).
    pub bound: Bound,
    pub bound_resp: Bound,
    pub ready: Mutex<mpsc::Sender<Result<Listening, String>>>,
    /// Where each shard's write-ahead log is (none with a shared database).
    pub logs: Vec<LogPlace>,
    /// The shared database, when it is the system of record (`--store`).
    pub database: Option<Database>,
    /// The change-log position the shards follow the database from.
    pub follow_from: i64,
}

/// An address executor 0 bound and publishes to the others.
#[derive(Default)]
pub struct Bound {
    address: Mutex<Option<SocketAddr>>,
    published: Condvar,
}

/// Where an executor listens, as it reports once it does.
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    pub native: SocketAddr,
    /// With `--resp-listen`.
    pub resp: Option<SocketAddr>,
}

/// What a connection on this executor can reach.
pub struct ExecutorContext {
    pub config: ServerConfig,
    pub store: Arc<Store>,
    pub all_metrics: Arc<Metrics>,
    pub router: Rc<Router>,
    pub authenticator: Arc<Authenticator>,
    /// The TLS handshake for every accepted connection, when TLS is on.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    /// This executor's audit log, when it is on.
    pub audit: Option<Rc<AuditLog>>,
    /// The shared database, with `--store` (STATS reports its pool).
    pub database: Option<Database>,
    /// Wakes this executor's watchers (WATCH) when the shards' feeds move.
    pub watch_hub: Rc<watch::WatchHub>,
}

impl ExecutorContext {
    /// When a connection that is not authenticated from now on must have authenticated.
    pub fn auth_deadline_from_now(&self) -> std::time::Instant {
        std::time::Instant::now() + Duration::from_millis(self.config.auth_timeout_ms)
    }

    /// This executor's counters.
    pub fn metrics(&self) -> &ExecutorMetrics {
        self.all_metrics.executor(self.router.shard_id())
    }
}

/// The body of one executor thread. Start-up failures are reported on `shared.ready`.
pub async fn run(shared: Arc<Shared>, mesh: MeshBuilder<ShardMessage, Full>) {
    let report = |result: Result<Listening, String>| {
        let _ = shared.ready.lock().expect("ready lock").send(result);
    };
    let Ok((senders, receivers)) = mesh.join().await else {
        return report(Err("joining the executor mesh failed".to_owned()));
    };
    let shard_id = senders.peer_id();
    let mut writer = shared.store.claim_writer(shard_id);
    let mut database_queue = None;
    match &shared.database {
        Some(_) => database_queue = Some(local_channel::new_bounded(shared.config.shard_queue_max)),
        None => {
            let place = shared.logs[shard_id].clone();
            let segment = place.segment.path.clone();
            let settings = LogSettings {
                fsync: shared.config.fsync,
                compact_log_bytes: shared.config.compact_log_bytes,
                compact_past_snapshot: true,
            };
            match ShardLog::open(
                place,
                settings,
                Arc::clone(&shared.store) as Arc<dyn Shards>,
                Arc::clone(&shared.metrics),
            )
            .await
            {
                Ok(log) => {
                    log.listen(Rc::new(watch::FeedListener::new(Arc::clone(&shared.store), shard_id)));
                    writer.attach_log(log);
                }
                Err(error) => return report(Err(format!("opening {}: {error}", segment.display()))),
            }
        }
    }
    let audit = match shared.config.audit {
        Switch::Off => None,
        Switch::On => {
            let settings = AuditSettings {
                flush_interval: Duration::from_millis(shared.config.audit_flush_ms),
                ..AuditSettings::default()
            };
            let dir = crate::audit::audit_dir(&shared.config.data_dir);
            match AuditLog::open(&dir, shard_id, settings).await {
                Ok(audit) => {
                    audit.spawn_flusher();
                    Some(audit)
                }
                Err(error) => {
                    return report(Err(format!("opening the audit log in {}: {error}", dir.display())))
                }
            }
        }
    };
    let (queue, queued) = database_queue.unzip();
    // With a bounded cache, the loader's queue (misses read from the database).
    let (load_queue, loads) = match (&shared.database, shared.store.shard_capacity()) {
        (Some(_), Some(_)) => {
            let (sender, receiver) = local_channel::new_bounded(shared.config.shard_queue_max);
            (Some(sender), Some(receiver))
        }
        _ => (None, None),
    };
    let router = Rc::new(Router::new(writer, senders, queue, load_queue));
    router.spawn_peer_tasks(receivers, *shared.store.limits());
    let sweep_interval = Duration::from_millis(shared.config.sweep_interval_ms);
    match (&shared.database, queued) {
        (Some(database), Some(queued)) => {
            let loader = loads.map(|loads| {
                postgres::spawn_loader(
                    Rc::clone(&router),
                    loads,
                    database.clone(),
                    Arc::clone(&shared.metrics),
                )
            });
            let metrics = Arc::clone(&shared.metrics);
            postgres::spawn_writer(
                Rc::clone(&router),
                queued,
                database.clone(),
                *shared.store.limits(),
                metrics,
                loader.clone(),
            );
            let interval = Duration::from_millis(shared.config.follow_interval_ms);
            let retention = Duration::from_secs(shared.config.change_log_retention_s);
            let metrics = Arc::clone(&shared.metrics);
            postgres::spawn_follower(
                Rc::clone(&router),
                database.clone(),
                shared.follow_from,
                interval,
                retention,
                metrics,
                loader,
            );
            postgres::spawn_sweeper(
                Rc::clone(&router),
                database.clone(),
                sweep_interval,
                Arc::clone(&shared.metrics),
            );
            if shard_id == 0 {
                postgres::spawn_change_log_trimmer(database.clone(), retention);
                postgres::spawn_ring_follower(Arc::clone(&shared.store));
            }
        }
        _ => {
            maintenance::spawn_sweeper(&router, sweep_interval, Arc::clone(&shared.metrics));
            maintenance::spawn_rewrapper(&router, shared.config.rewrap_rate, Arc::clone(&shared.metrics));
        }
    }

    let listener = match bind(&shared, shard_id, shared.config.listen, &shared.bound) {
        Ok(listener) => listener,
        Err(error) => return report(Err(format!("executor {shard_id} could not listen: {error}"))),
    };
    let resp_listener = match shared.config.resp_listen {
        None => None,
        Some(resp) => match bind(&shared, shard_id, resp, &shared.bound_resp) {
            Ok(listener) => Some(listener),
            Err(error) => {
                return report(Err(format!(
                    "executor {shard_id} could not listen for RESP on {resp}: {error}"
                )))
            }
        },
    };
    let listening = Listening {
        native: listener.local_addr().expect("a bound listener has an address"),
        resp: resp_listener
            .as_ref()
            .map(|listener| listener.local_addr().expect("a bound listener has an address")),
    };
    let context = Rc::new(ExecutorContext {
        config: shared.config.clone(),
        store: Arc::clone(&shared.store),
        all_metrics: Arc::clone(&shared.metrics),
        router,
        authenticator: Arc::clone(&shared.authenticator),
        tls: shared.tls.clone().map(futures_rustls::TlsAcceptor::from),
        audit: audit.clone(),
        database: shared.database.clone(),
        watch_hub: Rc::default(),
    });
    glommio::spawn_local(accept_loop(listener, Rc::clone(&context), Listener::Native)).detach();
    if let Some(resp_listener) = resp_listener {
        glommio::spawn_local(accept_loop(resp_listener, context, Listener::Resp)).detach();
    }
    report(Ok(listening));

    // The executor ends when this future returns, dropping its listener and connections.
    let mut reloads_seen = shared.reloads.load(Ordering::Acquire);
    while !shared.stop.load(Ordering::Acquire) {
        glommio::timer::sleep(STOP_POLL_INTERVAL).await;
        if let Some(audit) = &audit {
            publish_audit_counters(audit, shared.metrics.executor(shard_id));
            let reloads = shared.reloads.load(Ordering::Acquire);
            if reloads != reloads_seen {
                reloads_seen = reloads;
                match audit.reopen().await {
                    Ok(()) => tracing::info!(path = %audit.path().display(), "audit file reopened"),
                    Err(error) => {
                        tracing::error!(%error, path = %audit.path().display(), "reopening the audit file failed; the old one stays in use")
                    }
                }
            }
        }
    }
    if let Some(audit) = audit {
        // Connections still run while a flush waits for the disk and may record more: flush
        // until nothing is left (the executor's tasks stop when this future returns).
        for _ in 0..FINAL_AUDIT_FLUSHES_MAX {
            if let Err(error) = audit.flush().await {
                tracing::error!(%error, shard_id, "the audit log could not be written at shutdown");
                break;
            }
            if audit.unwritten_bytes() == 0 {
                break;
            }
        }
        publish_audit_counters(&audit, shared.metrics.executor(shard_id));
    }
}

/// Copies the audit log's executor-local counters where STATS (on any executor) reads them.
fn publish_audit_counters(audit: &AuditLog, metrics: &ExecutorMetrics) {
    use std::sync::atomic::Ordering::Relaxed;
    metrics.audit_events.store(audit.events_recorded(), Relaxed);
    metrics.audit_events_dropped.store(audit.events_dropped(), Relaxed);
    metrics.audit_bytes_written.store(audit.bytes_written(), Relaxed);
    metrics.audit_write_errors.store(audit.write_errors(), Relaxed);
    metrics.audit_syncs.store(audit.syncs(), Relaxed);
    metrics.audit_backlog_bytes.store(audit.unwritten_bytes() as u64, Relaxed);
}

/// Executor 0 binds the configured address and publishes the bound one; the others wait for
/// it and bind the same address (SO_REUSEPORT), so the kernel spreads connections over all.
fn bind(
    shared: &Shared,
    shard_id: usize,
    configured: SocketAddr,
    bound: &Bound,
) -> Result<TcpListener, String> {
    if shard_id == 0 {
        let listener = TcpListener::bind(configured);
        let mut address = bound.address.lock().expect("bound address lock");
        // Publish even a failure (as the configured address) so the others do not wait forever.
        *address = Some(listener.as_ref().ok().and_then(|l| l.local_addr().ok()).unwrap_or(configured));
        bound.published.notify_all();
        return listener.map_err(|error| error.to_string());
    }
    // Executor 0 may fail before it binds (its log or audit file), and then never publishes:
    // wait only until the server is asked to stop, which start-up does on any failure.
    let mut address = bound.address.lock().expect("bound address lock");
    while address.is_none() {
        if shared.stop.load(Ordering::Acquire) {
            return Err("the server stopped before executor 0 listened".to_owned());
        }
        address = bound.published.wait_timeout(address, STOP_POLL_INTERVAL).expect("bound address lock").0;
    }
    TcpListener::bind(address.expect("published")).map_err(|error| error.to_string())
}

async fn accept_loop(listener: TcpListener, context: Rc<ExecutorContext>, kind: Listener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(connection::serve(stream, Rc::clone(&context), kind)).detach();
            }
            Err(error) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
