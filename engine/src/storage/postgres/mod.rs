//! PostgreSQL (or a wire-compatible engine) as the shared system of record.
//!
//! The glommio shards never run the database client themselves: a [`Database`] owns a tokio
//! runtime on its own thread with a semaphore pool of connections (deadpool-postgres), and
//! anything, on any thread or executor, hands it a job and awaits the answer on a oneshot.
//! The queue to it is bounded, and every statement runs under a statement timeout, so a slow
//! or absent database turns into prompt errors rather than a pile-up.
//!
//! Everything here is bytes and columns: an archived record is stored verbatim (ciphertext
//! only), next to the columns that LIST and expiry need. What the bytes mean is the data
//! core's business.
//!
//! - [`schema`]: the tables and the versioned migrations, applied under an advisory lock so
//!   that instances starting together migrate once.
//! - [`rows`]: the statements: conditional writes that let exactly one instance win each
//!   version, deletes, loads, the key ring row and the change log.
//! - [`follow`]: following the change log in commit order despite sequence gaps.

pub mod follow;
pub mod rows;
pub mod schema;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use futures::channel::oneshot;

use crate::error::EngineError;

/// Jobs waiting for the database thread, at most. Past this, callers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// How long a job waits for a free connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest any statement of ours may run (set on every session).
pub const STATEMENT_TIMEOUT_MS: u64 = 5_000;
/// The most statements one of our transactions holds (BEGIN and COMMIT included): with the
/// statement timeout, this bounds how long a transaction can keep a change-log number
/// uncommitted (see `follow::GAP_PATIENCE`).
pub const TRANSACTION_STATEMENTS_MAX: u64 = 10;

type Job = Box<dyn FnOnce(Pool) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(error: deadpool_postgres::PoolError) -> DbError {
        DbError::Unavailable(error.to_string())
    }
}

/// A handle on the database thread. Cheap to clone; the thread ends when the last handle is
/// dropped.
#[derive(Clone)]
pub struct Database {
    jobs: tokio::sync::mpsc::Sender<Job>,
    /// The pool, for its status (the database thread uses its own handle).
    pool: Pool,
    /// Where the connection goes, with any password removed (for logs and errors).
    target: Arc<str>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Database").field("target", &self.target).finish()
    }
}

impl Database {
    /// Starts the database thread with a pool of up to `connections` for `url` (a
    /// `postgres://` URL or `key=value` settings), checks that the database answers, and
    /// applies pending migrations.
    ///
    /// With `sslmode=require` in the URL, the connections use TLS, verifying the server's
    /// certificate against the CA certificates in `ca` (required then); otherwise they are
    /// plain (`ca` is refused without `sslmode=require`, so that nobody believes a plain
    /// connection is protected).
    ///
    /// # Errors
    /// [`EngineError::Config`] for a URL that does not parse, TLS asked for without a CA or a
    /// CA without TLS, an unreadable CA file; [`EngineError::Start`] when the database cannot
    /// be reached or migrated.
    pub fn open(
        url: &str,
        connections: usize,
        ca: Option<&std::path::Path>,
    ) -> Result<Database, EngineError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|error| EngineError::Config(format!("--store: not a PostgreSQL URL: {error}")))?;
        let require_tls = config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
        let tls = match (require_tls, ca) {
            (true, Some(ca)) => Some(tls::MakeRustls::trusting(ca)?),
            (true, None) => {
                return Err(EngineError::Config(
                    "--store asks for sslmode=require: give the CA that signed the database's certificate with --store-ca"
                        .to_owned(),
                ))
            }
            (false, Some(_)) => {
                return Err(EngineError::Config(
                    "--store-ca is given but --store does not ask for TLS: add sslmode=require to it".to_owned(),
                ))
            }
            (false, None) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        let target = describe(&config);
        config.connect_timeout(CONNECT_TIMEOUT);
        // Every statement of ours is driven by a key or an index, and the round statement is
        // prepared once per connection: its generic plan, made while a table was small, kept
        // scanning the whole table for every round (seen at 10,000 credentials: half of the
        // database's CPU hashing a sequential scan of credshard_credentials). With sequential
        // scans priced out the plans use the indexes whatever the statistics said at the time;
        // a table no index can serve (the one-row key ring) is still scanned.
        config.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS} -c enable_seqscan=off"));
        config.application_name("credshard");
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match tls {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(POOL_WAIT),
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(POOL_WAIT),
            })
            .build()
            .map_err(|error| EngineError::Config(format!("--store: {error}")))?;
        let status_pool = pool.clone();
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(QUEUE_DEPTH);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("credshard-db")
            .build()
            .map_err(|error| EngineError::Start(format!("the database thread: {error}")))?;
        std::thread::Builder::new()
            .name("credshard-db".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job(pool.clone()));
                    }
                });
            })
            .map_err(|error| EngineError::Start(format!("the database thread: {error}")))?;
        let database = Database { jobs, pool: status_pool, target: target.into() };
        futures::executor::block_on(database.run(|pool| async move {
            let mut client = pool.get().await?;
            schema::migrate(&mut client).await
        }))
        .map_err(|error| EngineError::Start(format!("{}: {error}", database.target)))?;
        Ok(database)
    }

    /// The pool's connections: (open, idle, jobs waiting for one).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let status = self.pool.status();
        (status.size, status.available, status.waiting)
    }

    /// Where the database is (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `job` on the database thread with the pool and returns its result. Waits while
    /// the queue is full.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] when the database thread is gone; otherwise the job's own.
    pub async fn run<T, F, Fut>(&self, job: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |pool| {
            Box::pin(async move {
                let _ = reply.send(job(pool).await);
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| DbError::Unavailable("the database thread has stopped".to_owned()))?;
        answer.await.map_err(|_| DbError::Unavailable("the database job was dropped".to_owned()))?
    }

    /// [`Database::run`], blocking the calling thread (start-up, the key ring's persistence).
    ///
    /// # Errors
    /// As [`Database::run`].
    pub fn run_blocking<T, F, Fut>(&self, job: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send + 'static,
    {
        futures::executor::block_on(self.run(job))
    }
}

/// `user@host:port/dbname` of a configuration, without its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_described_without_its_password() {
        let config =
            tokio_postgres::Config::from_str("postgres://app:hunter2@db.internal:6432/secrets").unwrap();
        let described = describe(&config);
        assert_eq!(described, "postgres://app@db.internal:6432/secrets");
        assert!(!described.contains("hunter2"));
    }

    #[test]
    fn tls_settings_and_nonsense_are_refused_before_connecting() {
        let tls_without_ca = Database::open("postgres://app@db.internal/secrets?sslmode=require", 1, None);
        assert!(tls_without_ca.unwrap_err().to_string().contains("--store-ca"));
        let ca_without_tls =
            Database::open("postgres://app@db.internal/secrets", 1, Some(std::path::Path::new("ca.pem")));
        assert!(ca_without_tls.unwrap_err().to_string().contains("sslmode=require"));
        let missing = Database::open(
            "postgres://app@db.internal/s?sslmode=require",
            1,
            Some(std::path::Path::new("/nonexistent")),
        );
        assert!(missing.unwrap_err().to_string().contains("/nonexistent"));
        assert!(matches!(Database::open("not a url ===", 1, None), Err(EngineError::Config(_))));
    }
}
