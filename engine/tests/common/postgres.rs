//! A database of its own for each test, on the PostgreSQL server that `CREDSHARD_TEST_POSTGRES`
//! names (default `host=127.0.0.1 port=5433 user=postgres`, the throwaway cluster `.ci/run`
//! starts). Without a reachable server the test skips, saying so; in CI (`CI` set) it fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const DEFAULT_SERVER: &str = "host=127.0.0.1 port=5433 user=postgres";

/// A server on a database of its own; the database outlives it.
pub struct OnDatabase {
    server: super::TestServer,
    _database: TestDatabase,
}

impl std::ops::Deref for OnDatabase {
    type Target = super::TestServer;
    fn deref(&self) -> &super::TestServer {
        &self.server
    }
}

/// A server with `shards` shards on a new database named after `test`, configured by
/// `adjust` after `--store`; `None` (with the reason printed) as [`database`] says.
pub fn start_on_database(
    test: &str,
    shards: usize,
    adjust: impl FnOnce(&mut credshard_engine::ServerConfig),
) -> Option<OnDatabase> {
    let database = database(test)?;
    let url = database.url();
    let server = super::TestServer::start_with(shards, move |config| {
        config.store = Some(url);
        adjust(config);
    });
    Some(OnDatabase { server, _database: database })
}

/// An instance with two shards on the database `url`, with master key `key` (every instance
/// of one database needs the same), 8 connections, following the change log every 10 ms,
/// unless `adjust` says otherwise.
pub fn instance_with(
    url: &str,
    key: &[u8; 32],
    adjust: impl FnOnce(&mut credshard_engine::ServerConfig),
) -> super::TestServer {
    let url = url.to_owned();
    super::TestServer::try_start_with_key(
        2,
        credshard_engine::crypto::MasterKey::from_bytes(*key),
        move |config| {
            config.store = Some(url);
            config.store_connections = 8;
            config.follow_interval_ms = 10;
            adjust(config);
        },
    )
    .expect("an instance on the database starts")
}

/// Waits until `check` holds on `client`, up to 10 s; returns how long that took.
pub fn eventually(
    client: &mut credshard_protocol::Client,
    mut check: impl FnMut(&mut credshard_protocol::Client) -> bool,
) -> Duration {
    let started = std::time::Instant::now();
    while !check(client) {
        assert!(started.elapsed() < Duration::from_secs(10), "not seen within 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    started.elapsed()
}

/// A database created for one test and dropped after it.
pub struct TestDatabase {
    server: String,
    name: String,
}

impl TestDatabase {
    /// Settings that reach this test's database.
    pub fn url(&self) -> String {
        format!("{} dbname={}", self.server, self.name)
    }

    /// The server's TCP address (`host` and `port` of its settings).
    pub fn server_address(&self) -> std::net::SocketAddr {
        let setting = |name: &str| {
            self.server
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        };
        let host = setting("host").unwrap_or("127.0.0.1");
        let port: u16 = setting("port").unwrap_or("5432").parse().expect("a port number");
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).unwrap().next().unwrap()
    }

    /// Settings that reach this test's database through `address` (a proxy) instead.
    pub fn url_through(&self, address: std::net::SocketAddr) -> String {
        let rest: Vec<&str> = self
            .server
            .split_whitespace()
            .filter(|pair| !pair.starts_with("host=") && !pair.starts_with("port="))
            .collect();
        format!("host={} port={} {} dbname={}", address.ip(), address.port(), rest.join(" "), self.name)
    }

    /// Runs SQL on this test's database (a fresh connection), returning the rows.
    pub fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let url = self.url();
        let sql = sql.to_owned();
        on_runtime(async move {
            let client = connect(&url).await.expect("connect to the test database");
            client.query(sql.as_str(), &[]).await.expect("test query")
        })
    }
}

impl TestDatabase {
    /// Takes a lock with `lock_sql` (e.g. `LOCK TABLE …`) in a transaction of its own, and
    /// holds it for `hold` on a thread of its own; returns once it is taken (join the thread
    /// to wait for its release).
    pub fn hold_lock(&self, lock_sql: &str, hold: Duration) -> std::thread::JoinHandle<()> {
        let (url, lock_sql) = (self.url(), lock_sql.to_owned());
        let (taken, is_taken) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            on_runtime(async move {
                let client = connect(&url).await.expect("connect to the test database");
                client.batch_execute("BEGIN").await.expect("BEGIN");
                client.batch_execute(&lock_sql).await.expect("take the lock");
                taken.send(()).unwrap();
                tokio::time::sleep(hold).await;
                client.batch_execute("COMMIT").await.expect("COMMIT");
            })
        });
        is_taken.recv().expect("the lock is taken");
        holder
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::panic::catch_unwind(|| {
            on_runtime(async move {
                if let Ok(client) = connect(&format!("{server} dbname=postgres")).await {
                    let _ =
                        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            })
        });
    }
}

/// A new empty database named after `test`, or `None` (with the reason printed) when no
/// PostgreSQL server is reachable outside CI.
pub fn database(test: &str) -> Option<TestDatabase> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let server = std::env::var("CREDSHARD_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let name = format!(
        "credshard_test_{}_{}_{}",
        test.chars().filter(char::is_ascii_alphanumeric).take(24).collect::<String>().to_ascii_lowercase(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let admin = format!("{server} dbname=postgres");
    let created = on_runtime({
        let name = name.clone();
        async move {
            let client = connect(&admin).await?;
            client.batch_execute(&format!("CREATE DATABASE {name}")).await
        }
    });
    match created {
        Ok(()) => Some(TestDatabase { server, name }),
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("CI starts PostgreSQL for these tests, but {server:?} is not reachable: {error}")
        }
        Err(error) => {
            eprintln!("skipping {test}: no PostgreSQL at {server:?} ({error}); set CREDSHARD_TEST_POSTGRES");
            None
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs `future` on a runtime of its own, on a thread of its own (callers may be inside
/// another runtime).
pub fn on_runtime<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    })
    .join()
    .expect("the test's database work panicked")
}

/// A PostgreSQL cluster of a test's own (for tests that stop and start the database), on a
/// free loopback port, removed when dropped. `None`, saying why, where the server binaries
/// are missing outside CI.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: std::path::PathBuf,
    /// Server settings beyond the port and socket directory (`-c name=value …`).
    settings: String,
}

impl Cluster {
    pub fn start(test: &str) -> Option<Cluster> {
        Cluster::start_with(test, |_| String::new())
    }

    /// A cluster started with the server settings (`-c name=value …`) that `prepare` returns,
    /// after it has put files in the cluster's directory (files there are handed to the
    /// postgres user).
    pub fn start_with(test: &str, prepare: impl FnOnce(&std::path::Path) -> String) -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions.filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin"))).max()
            })
            .filter(|bin| bin.join("initdb").exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI installs PostgreSQL, but no initdb is under /usr/lib/postgresql"
            );
            eprintln!("skipping {test}: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = prepare(dir.path());
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
            assert!(status.is_ok_and(|status| status.success()), "chown the cluster dir to postgres");
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let cluster = Cluster { dir, port, bin, settings };
        cluster.run("initdb", &["-D", &cluster.data(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        cluster.start_again();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A PostgreSQL program, run as the `postgres` user when the tests run as root (initdb
    /// and postgres refuse root).
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            std::process::Command::new(&path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program).args(args).output().expect("run a PostgreSQL program");
        assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts the cluster (again).
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 {}",
            self.port,
            self.dir.path().display(),
            self.settings
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"]);
    }

    /// Stops the cluster: `fast` (clean) or `immediate` (like a crash: no checkpoint, WAL
    /// replayed at the next start).
    pub fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    /// Settings that reach the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.command("pg_ctl").args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A TCP proxy to the database that a test can cut (every connection through it closed, new
/// ones refused) and restore: one instance loses the database while others keep it.
pub struct CuttableProxy {
    pub address: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    pub fn to(target: std::net::SocketAddr) -> CuttableProxy {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let (accept_cut, accept_open) = (std::sync::Arc::clone(&cut), std::sync::Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accept_cut.load(Relaxed) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                let mut open = accept_open.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                drop(open);
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CuttableProxy { address, cut, open }
    }

    /// Closes every connection through the proxy and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}
