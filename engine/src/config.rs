//! Server settings: a plain struct with documented defaults, parsed by clap from flags and
//! `CREDSHARD_*` environment variables, and mirrored in docs/operations.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use credshard_protocol::Limits;

/// The largest `--frame-bytes-max` (256 MiB): requests, and the replies they cause, stay far
/// from a frame length's u32 limit.
pub const FRAME_BYTES_MAX_CEILING: usize = 256 << 20;

/// The largest `--batch-reply-bytes-max` (1 GiB). A BATCH_GET reply is at most this, plus one
/// GET reply, plus 1000 short error results: well inside a frame length's u32.
pub const BATCH_REPLY_BYTES_MAX_CEILING: usize = 1 << 30;
/// The fastest `--rewrap-rate` (credentials re-encrypted per second per shard).
pub const REWRAP_RATE_MAX: u32 = 1_000_000;
/// The most changes a shard may keep for watchers (`--watch-history-events`).
pub const WATCH_HISTORY_EVENTS_MAX: usize = 1 << 24;

pub use crate::storage::FsyncMode;

#[derive(clap::Args, Clone, Debug)]
pub struct ServerConfig {
    /// A TOML file of serve options (names as the flags without `--`: `listen = "…"`,
    /// `store-connections = 32`); a flag or a `CREDSHARD_*` variable wins over the file, the
    /// file over the default. Unknown names are refused. `credshard config check FILE` shows
    /// the result.
    #[arg(long, env = "CREDSHARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address every executor listens on (SO_REUSEPORT). Port 0 picks a free port.
    #[arg(long, env = "CREDSHARD_LISTEN", default_value = "127.0.0.1:7373")]
    pub listen: SocketAddr,
    /// Also speak the Redis protocol (RESP2, RESP3 after `HELLO 3`) on this address, so that
    /// Redis clients and tools (redis-cli, redis-benchmark) read and write credentials through
    /// the same shards, tokens, ACLs, audit log and encryption (docs/resp.md). Off unless
    /// given. Port 0 picks a free port.
    #[arg(long, env = "CREDSHARD_RESP_LISTEN")]
    pub resp_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (text format) at `GET /metrics` on this address, from a thread
    /// of their own: requests by op and status, latency histograms, connections, bytes, write
    /// queues, group commits and fsyncs, the audit log, the key ring (docs/operations.md,
    /// "Metrics"). They hold no secret and no credential id. Off unless given.
    #[arg(long, env = "CREDSHARD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory for the manifest, the write-ahead logs, the key ring and (unless a key is
    /// given) the generated master key.
    #[arg(long, env = "CREDSHARD_DATA_DIR", default_value = "./credshard-data")]
    pub data_dir: PathBuf,
    /// The system of record: unset, each shard's write-ahead log in the data dir (the
    /// embedded default); or a PostgreSQL database (`postgres://USER@HOST:PORT/DB`, or
    /// `host=… user=… dbname=…`) that several credshard instances share. The data dir then
    /// holds no credentials (only the lock and the audit log).
    #[arg(long, env = "CREDSHARD_STORE")]
    pub store: Option<String>,
    /// CA certificates (PEM) that signed the database's certificate, for a `--store` that
    /// asks for TLS (`sslmode=require`); the server's name is checked against the URL's host.
    #[arg(long, env = "CREDSHARD_STORE_CA")]
    pub store_ca: Option<PathBuf>,
    /// Connections to the database (`--store`), per instance.
    #[arg(long, env = "CREDSHARD_STORE_CONNECTIONS", default_value_t = 16)]
    pub store_connections: usize,
    /// Credentials this instance holds in memory at most (`--store`; split evenly across the
    /// shards), decrypted only when read; past it, those least recently read are evicted and
    /// read from the database again when asked for. 0 holds every credential.
    #[arg(long, env = "CREDSHARD_CACHE_CAPACITY", default_value_t = 1_000_000)]
    pub cache_capacity: usize,
    /// How often each shard reads the database's change log for other instances' writes,
    /// in milliseconds (`--store`): the bound on how stale another instance's write can be.
    #[arg(long, env = "CREDSHARD_FOLLOW_INTERVAL_MS", default_value_t = 10)]
    pub follow_interval_ms: u64,
    /// How long the database's change log is kept, in seconds (`--store`; every instance
    /// should use the same). An instance that could not read it for half this long re-reads
    /// everything from the database when it can again.
    #[arg(long, env = "CREDSHARD_CHANGE_LOG_RETENTION_S", default_value_t = 900)]
    pub change_log_retention_s: u64,
    /// Shards, one glommio executor each, pinned one per CPU this process may use (taskset is
    /// honoured); more shards than such CPUs share them. Default: the number of CPUs.
    #[arg(long, env = "CREDSHARD_SHARDS")]
    pub shards: Option<usize>,
    /// Master key file (64 hex digits, made by `credshard keygen`).
    #[arg(long, env = "CREDSHARD_KEY_FILE", conflicts_with = "passphrase_env")]
    pub key_file: Option<PathBuf>,
    /// Name of an environment variable holding a passphrase; the master key is derived from
    /// it with Argon2id.
    #[arg(long, env = "CREDSHARD_PASSPHRASE_ENV")]
    pub passphrase_env: Option<String>,
    /// When a write is acknowledged: `always` once its batch is fdatasync'ed (on disk),
    /// `never` once its batch is written to the page cache (survives a process crash, not a
    /// power loss).
    #[arg(long, env = "CREDSHARD_FSYNC", value_enum, default_value = "always")]
    pub fsync: FsyncMode,
    /// A shard's log segment above this size, and above the size of the shard's last snapshot,
    /// triggers a snapshot of the shard, after which the older segments are deleted (so a
    /// snapshot never writes more than the log has since the last one).
    #[arg(long, env = "CREDSHARD_COMPACT_LOG_BYTES", default_value_t = 64 << 20)]
    pub compact_log_bytes: u64,
    /// Largest frame, header included, in bytes.
    #[arg(long, env = "CREDSHARD_FRAME_BYTES_MAX", default_value_t = 1 << 20)]
    pub frame_bytes_max: usize,
    /// Longest credential id in bytes.
    #[arg(long, env = "CREDSHARD_ID_BYTES_MAX", default_value_t = 256)]
    pub id_bytes_max: usize,
    /// Largest secret in bytes.
    #[arg(long, env = "CREDSHARD_SECRET_BYTES_MAX", default_value_t = 64 * 1024)]
    pub secret_bytes_max: usize,
    /// Largest encoded label map in bytes.
    #[arg(long, env = "CREDSHARD_LABELS_BYTES_MAX", default_value_t = 4 * 1024)]
    pub labels_bytes_max: usize,
    /// Open connections across all executors; more are answered UNAVAILABLE and closed.
    #[arg(long, env = "CREDSHARD_CONNECTIONS_MAX", default_value_t = 10_000)]
    pub connections_max: usize,
    /// Requests in flight per connection before the server stops reading from it.
    #[arg(long, env = "CREDSHARD_IN_FLIGHT_MAX", default_value_t = 1024)]
    pub in_flight_max: usize,
    /// Capacity of each bounded channel that carries writes between two executors.
    #[arg(long, env = "CREDSHARD_SHARD_QUEUE_MAX", default_value_t = 1024)]
    pub shard_queue_max: usize,
    /// Versions kept per credential, current included.
    #[arg(long, env = "CREDSHARD_MAX_VERSIONS", default_value_t = 10)]
    pub max_versions: usize,
    /// How long a version replaced by ROTATE stays readable, unless the request says.
    #[arg(long, env = "CREDSHARD_GRACE_PERIOD_SECONDS", default_value_t = 24 * 60 * 60)]
    pub grace_period_seconds: u64,
    /// How long a deleted credential stays recoverable with UNDELETE before it is purged,
    /// unless the DELETE says (0: DELETE purges at once). Not with `--store` yet: there DELETE
    /// always purges.
    #[arg(long, env = "CREDSHARD_RECOVERY_WINDOW_SECONDS", default_value_t = 7 * 24 * 60 * 60)]
    pub recovery_window_seconds: u64,
    /// How often each shard removes expired credentials from memory.
    #[arg(long, env = "CREDSHARD_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
    /// After a data-key rotation, how many credentials per second each shard re-encrypts with
    /// the new key (in the background, between requests).
    #[arg(long, env = "CREDSHARD_REWRAP_RATE", default_value_t = 5000)]
    pub rewrap_rate: u32,
    /// Changes each shard keeps for watchers (WATCH): a watcher that falls further behind, or
    /// resumes from further back, has missed changes and is told so.
    #[arg(long, env = "CREDSHARD_WATCH_HISTORY_EVENTS", default_value_t = crate::data::feed::FEED_EVENTS_DEFAULT)]
    pub watch_history_events: usize,
    /// How long an idle executor spins before it sleeps, in microseconds. Spinning trades idle
    /// CPU for latency: a write forwarded to a sleeping executor waits for it to wake.
    #[arg(long, env = "CREDSHARD_SPIN_BEFORE_PARK_US", default_value_t = 0)]
    pub spin_before_park_us: u64,
    /// Registered io_uring buffer memory per executor ring, in bytes. Locked memory: keep
    /// shards × 3 × this below RLIMIT_MEMLOCK when not running as root.
    #[arg(long, env = "CREDSHARD_IO_MEMORY_BYTES", default_value_t = 1 << 20)]
    pub io_memory_bytes: usize,
    /// Tokens file (TOML: token hashes and their ACLs; see docs/security.md). Every client
    /// must then authenticate with HELLO. Re-read on SIGHUP. Without it the server is open to
    /// anyone who can connect, so it may only listen on a loopback address.
    #[arg(long, env = "CREDSHARD_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// With --tokens: a connection that has not authenticated (HELLO with a valid token)
    /// within this many milliseconds of connecting is answered UNAUTHORIZED and closed.
    #[arg(long, env = "CREDSHARD_AUTH_TIMEOUT_MS", default_value_t = 10_000)]
    pub auth_timeout_ms: u64,
    /// A connection from which nothing is received for this many milliseconds is closed (after
    /// an UNAVAILABLE frame with request id 0), authenticated or not.
    #[arg(long, env = "CREDSHARD_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub idle_timeout_ms: u64,
    /// A connection whose replies the server cannot send for this many milliseconds (the
    /// client does not read them) is closed.
    #[arg(long, env = "CREDSHARD_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// Bytes of secrets and metadata one BATCH_GET reply carries at most; ids past it are
    /// answered TOO_LARGE in the reply (ask for them again). The first found id is always
    /// served, so this is at least one largest GET reply.
    #[arg(long, env = "CREDSHARD_BATCH_REPLY_BYTES_MAX", default_value_t = 4 << 20)]
    pub batch_reply_bytes_max: usize,
    /// Start with a new, empty key ring although the data dir already holds logs (its key ring
    /// was lost): every credential already stored becomes unreadable. Without this flag such
    /// a data dir is refused, so that a deleted key ring is never silently replaced.
    #[arg(long, env = "CREDSHARD_CREATE_KEYRING")]
    pub create_keyring: bool,
    /// TLS certificate chain (PEM). With --tls-key, clients must connect with TLS
    /// (`credshards://`).
    #[arg(long, env = "CREDSHARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-cert.
    #[arg(long, env = "CREDSHARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The server's own log on standard error: `text` (one readable line per event) or `json`
    /// (one JSON object per line: timestamp, level, target, fields). Requests are not logged
    /// (the audit log records them); no secret or token is ever logged. `RUST_LOG` filters.
    #[arg(long, env = "CREDSHARD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The audit log (`<data-dir>/audit/shard-N.jsonl`): every request that touches a
    /// credential or is refused, without secrets. `off` disables it.
    #[arg(long, env = "CREDSHARD_AUDIT", value_enum, default_value = "on")]
    pub audit: Switch,
    /// How often each executor writes its buffered audit entries, in milliseconds.
    #[arg(long, env = "CREDSHARD_AUDIT_FLUSH_MS", default_value_t = 5)]
    pub audit_flush_ms: u64,
}

/// How the server's own log is written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// An on/off setting.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

/// The defaults are the clap attributes above, written once: parsed from an empty command
/// line with every `CREDSHARD_*` variable ignored (so a default never depends on the
/// environment of the process that asks).
impl Default for ServerConfig {
    fn default() -> Self {
        use clap::{Args, FromArgMatches};
        let command =
            ServerConfig::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(["defaults"]).expect("the defaults parse");
        ServerConfig::from_arg_matches(&matches).expect("the defaults are a configuration")
    }
}

impl ServerConfig {
    /// The shard count: as configured, or one per available CPU.
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |count| count.get()))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            frame_bytes_max: self.frame_bytes_max,
            id_bytes_max: self.id_bytes_max,
            name_bytes_max: Limits::default().name_bytes_max,
            secret_bytes_max: self.secret_bytes_max,
            labels_bytes_max: self.labels_bytes_max,
        }
    }

    pub fn lifecycle(&self) -> crate::data::Lifecycle {
        crate::data::Lifecycle {
            max_versions: self.max_versions,
            grace_period_ms: self.grace_period_seconds.saturating_mul(1000),
            recovery_window_ms: self.recovery_window_seconds.saturating_mul(1000),
        }
    }

    /// Checks the settings against each other.
    ///
    /// # Errors
    /// [`crate::EngineError::Config`] naming the offending setting.
    pub fn validate(&self) -> Result<(), crate::EngineError> {
        let fail = |message: String| Err(crate::EngineError::Config(message));
        if self.store.is_some() && self.change_log_retention_s < 2 {
            return fail(format!(
                "--change-log-retention-s must be at least 2, got {}",
                self.change_log_retention_s
            ));
        }
        let shards = self.shard_count();
        if !(1..=1024).contains(&shards) {
            return fail(format!("--shards must be 1..=1024, got {shards}"));
        }
        if self.id_bytes_max == 0 || self.id_bytes_max > u16::MAX as usize {
            return fail("--id-bytes-max must be 1..=65535".to_owned());
        }
        let frame_needed = self.secret_bytes_max + self.labels_bytes_max + self.id_bytes_max + 3 * 256 + 64;
        if self.frame_bytes_max < frame_needed {
            return fail(format!(
                "--frame-bytes-max {} cannot carry a PUT at the other limits (needs {frame_needed})",
                self.frame_bytes_max
            ));
        }
        if !(1..=1000).contains(&self.max_versions) {
            return fail(format!("--max-versions must be 1..=1000, got {}", self.max_versions));
        }
        let grace_max = credshard_protocol::op::rotate::GRACE_PERIOD_SECONDS_MAX;
        if self.grace_period_seconds > grace_max {
            return fail(format!(
                "--grace-period-seconds must be at most {grace_max} (100 years), got {}",
                self.grace_period_seconds
            ));
        }
        let window_max = credshard_protocol::op::delete::RECOVERY_WINDOW_SECONDS_MAX;
        if self.recovery_window_seconds > window_max {
            return fail(format!(
                "--recovery-window-seconds must be at most {window_max} (365 days), got {}",
                self.recovery_window_seconds
            ));
        }
        if self.sweep_interval_ms == 0 {
            return fail("--sweep-interval-ms must be positive".to_owned());
        }
        if self.watch_history_events == 0 || self.watch_history_events > WATCH_HISTORY_EVENTS_MAX {
            return fail(format!(
                "--watch-history-events must be 1..={WATCH_HISTORY_EVENTS_MAX}, got {}",
                self.watch_history_events
            ));
        }
        if self.rewrap_rate == 0 || self.rewrap_rate > REWRAP_RATE_MAX {
            return fail(format!("--rewrap-rate must be 1..={REWRAP_RATE_MAX}, got {}", self.rewrap_rate));
        }
        if self.in_flight_max == 0 || self.shard_queue_max == 0 || self.connections_max == 0 {
            return fail(
                "--in-flight-max, --shard-queue-max and --connections-max must be positive".to_owned(),
            );
        }
        for listen in std::iter::once(self.listen).chain(self.resp_listen) {
            if self.tokens.is_none() && !listen.ip().is_loopback() {
                return fail(format!(
                    "refusing to listen on {listen} without --tokens: anyone who can reach it could read \
                     every secret. Give a tokens file (see docs/security.md) or listen on a loopback address"
                ));
            }
        }
        if self.resp_listen.is_some_and(|resp| resp.port() != 0 && resp == self.listen) {
            return fail(format!("--resp-listen must differ from --listen ({})", self.listen));
        }
        if [self.audit_flush_ms, self.auth_timeout_ms, self.idle_timeout_ms, self.write_timeout_ms]
            .contains(&0)
        {
            return fail(
                "--audit-flush-ms, --auth-timeout-ms, --idle-timeout-ms and --write-timeout-ms must be positive"
                    .to_owned(),
            );
        }
        // Every reply must fit a frame's u32 length field with room to spare: a limit that
        // let one overflow would turn a client's request into a panic.
        if self.frame_bytes_max > FRAME_BYTES_MAX_CEILING {
            return fail(format!("--frame-bytes-max must be at most {FRAME_BYTES_MAX_CEILING}"));
        }
        let get_reply_bytes_max =
            self.secret_bytes_max + self.labels_bytes_max + self.id_bytes_max + 3 * 256 + 64;
        if !(get_reply_bytes_max..=BATCH_REPLY_BYTES_MAX_CEILING).contains(&self.batch_reply_bytes_max) {
            return fail(format!(
                "--batch-reply-bytes-max must be {get_reply_bytes_max}..={BATCH_REPLY_BYTES_MAX_CEILING} \
                 (at least one largest GET reply at the other limits), got {}",
                self.batch_reply_bytes_max
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        config: ServerConfig,
    }

    #[test]
    fn the_defaults_validate_and_agree_with_the_protocol_and_the_data_core() {
        let parsed = Command::try_parse_from(["credshard"]).unwrap().config;
        let default = ServerConfig::default();
        // Debug output covers every field; CREDSHARD_* variables are not set in tests.
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
        assert_eq!(default.limits(), Limits::default(), "the protocol's default limits");
        assert_eq!(default.lifecycle(), crate::data::Lifecycle::default());
        assert_eq!(default.fsync, FsyncMode::Always, "acknowledged means on disk unless asked");
        assert_eq!(default.audit, Switch::On);
        default.validate().unwrap();
        let too_small = ServerConfig { frame_bytes_max: 1024, ..ServerConfig::default() };
        assert!(too_small.validate().is_err());
        let no_versions = ServerConfig { max_versions: 0, ..ServerConfig::default() };
        assert!(no_versions.validate().is_err());
    }

    #[test]
    fn an_open_server_listens_only_on_loopback() {
        for listen in ["0.0.0.0:7373", "[::]:7373", "10.1.2.3:7373"] {
            let open = ServerConfig { listen: listen.parse().unwrap(), ..ServerConfig::default() };
            let error = open.validate().unwrap_err().to_string();
            assert!(error.contains("without --tokens"), "{listen}: {error}");
            let guarded = ServerConfig { tokens: Some("tokens.toml".into()), ..open };
            guarded.validate().unwrap();
            let resp = ServerConfig { resp_listen: Some(listen.parse().unwrap()), ..ServerConfig::default() };
            let error = resp.validate().unwrap_err().to_string();
            assert!(error.contains("without --tokens"), "--resp-listen {listen}: {error}");
        }
        let loopback = ServerConfig { listen: "[::1]:0".parse().unwrap(), ..ServerConfig::default() };
        loopback.validate().unwrap();
    }
}
