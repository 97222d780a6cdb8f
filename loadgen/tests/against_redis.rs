//! The real loadgen binary against a stock `redis-server` it starts on an ephemeral port: a
//! short GET/SET run completes with verified reads. Skipped, saying so, when `redis-server`
//! is not on PATH.

mod common;

use common::{number, LOADGEN};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports tried before giving up on starting redis-server.
const REDIS_START_ATTEMPTS: usize = 5;
/// How long redis-server may take to accept connections.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A redis-server child, killed and reaped when dropped (also when the test fails).
struct RedisServer {
    child: Child,
    port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on a free loopback port; `None` if it is not installed (outside CI:
/// CI installs it, so there its absence fails the test). The port is found by binding port 0
/// and releasing it, so another test may take it first: then redis-server exits at once, and
/// it is started again on another port.
fn start_redis() -> Option<RedisServer> {
    for _ in 0..REDIS_START_ATTEMPTS {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                assert!(std::env::var_os("CI").is_none(), "CI installs redis-server, but it is not on PATH");
                return None;
            }
            Err(error) => panic!("cannot start redis-server: {error}"),
        };
        let mut server = RedisServer { child, port };
        let started = Instant::now();
        // Ready once it answers PING.
        loop {
            if server.child.try_wait().unwrap().is_some() {
                break; // exited at once: the port was taken meanwhile; try another
            }
            if ping(port) {
                return Some(server);
            }
            assert!(started.elapsed() < REDIS_START_TIMEOUT, "redis-server not ready on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis-server exited at once {REDIS_START_ATTEMPTS} times");
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && BufReader::new(stream).read_line(&mut line).is_ok()
        && line == "+PONG\r\n"
}

#[test]
fn short_run_against_redis_server() {
    let Some(redis) = start_redis() else {
        println!("skipped: redis-server is not on PATH (install redis-server to run this test)");
        return;
    };
    let json_dir = tempfile::tempdir().unwrap();
    let json_path = json_dir.path().join("run.json");
    let target = format!("redis://127.0.0.1:{}", redis.port);
    let output = Command::new(LOADGEN)
        .args(["--target", &target])
        .args(["--connections", "8", "--pipeline", "4", "--duration", "1", "--warmup", "0", "--keys", "500"])
        .args(["--mix", "get=80,put=20", "--value-size", "128", "--threads", "2", "--json"])
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains(&format!("target      {target} (redis ")), "{table}");
    let json = std::fs::read_to_string(&json_path).unwrap();
    assert_eq!(common::report(&json)["target"].as_str(), Some(target.as_str()), "{json}");
    assert!(number(&json, "ops") > 0.0, "{json}");
    assert_eq!(number(&json, "errors"), 0.0, "verified reads and no server errors: {json}");

    // get_meta has no redis equivalent: refused before connecting, in one line.
    let output = Command::new(LOADGEN)
        .args(["--target", &target, "--mix", "get=1,get_meta=1", "--duration", "1"])
        .output()
        .unwrap();
    common::assert_exit_2_one_line(&output);
    drop(redis);
}

#[test]
fn unreachable_redis_target_exits_2() {
    let (_guard, address) = common::unreachable_address();
    let output = Command::new(LOADGEN)
        .args(["--target", &format!("redis://{address}"), "--duration", "1"])
        .output()
        .unwrap();
    let stderr = common::assert_exit_2_one_line(&output);
    assert!(stderr.contains("cannot connect to redis://"), "{stderr}");
}
