//! The PostgreSQL store when things fail, with a real PostgreSQL the test stops and starts:
//! the database going away (cached reads go on, writes fail fast with UNAVAILABLE, and work
//! again once it is back, without restarting credshard), an immediate (crash-like) stop of
//! the database while writers write, and SIGKILL of a credshard process: no acknowledged
//! write is lost.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::Cluster;
use common::process::{ProcessDirs, ServeProcess};
use common::{put, TestServer};
use credshard_engine::crypto::MasterKey;
use credshard_protocol::{Client, Status};

fn on(cluster: &Cluster, key: &[u8; 32]) -> TestServer {
    let url = cluster.url();
    TestServer::try_start_with_key(2, MasterKey::from_bytes(*key), move |config| config.store = Some(url))
        .expect("an instance on the cluster starts")
}

#[test]
fn the_database_going_away_keeps_reads_and_fails_writes_fast_until_it_is_back() {
    let Some(cluster) = Cluster::start("database_away") else { return };
    let key = *MasterKey::generate().bytes();
    let server = on(&cluster, &key);
    let mut client = server.client();
    for index in 0..20 {
        client.put(&put(&format!("cached/{index}"), b"before")).unwrap();
    }
    cluster.stop("fast");
    for index in 0..20 {
        assert_eq!(
            client.get(&format!("cached/{index}")).unwrap().secret.expose(),
            b"before",
            "cached reads go on"
        );
    }
    // Several writes at once: each is answered UNAVAILABLE, none hangs.
    let started = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let address = server.address();
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                client.put(&put(&format!("while-down/{writer}"), b"x")).unwrap_err().status()
            })
        })
        .collect();
    for writer in writers {
        assert_eq!(writer.join().unwrap(), Some(Status::Unavailable));
    }
    let waited = started.elapsed();
    eprintln!("writes with the database down answered in {waited:?}");
    assert!(
        waited < Duration::from_secs(60),
        "writes answered within their timeouts, not left hanging ({waited:?})"
    );
    cluster.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.put(&put("after", b"back")) {
            Ok(version) => {
                assert_eq!(version, 1);
                break;
            }
            Err(error) => {
                assert_eq!(error.status(), Some(Status::Unavailable), "{error}");
                assert!(Instant::now() < deadline, "writes never resumed after the database came back");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    assert_eq!(client.get("after").unwrap().secret.expose(), b"back");
}

#[test]
fn no_acknowledged_write_is_lost_to_an_immediate_database_stop_under_load_or_a_sigkill() {
    immediate_stop_and_sigkill("immediate_and_kill", &[]);
}

/// The same with a cache that holds 50 credentials: most writes are of credentials the shard
/// does not hold (read from the database first), and the restarted process starts empty and
/// reads each acknowledged credential on a miss.
#[test]
fn no_acknowledged_write_is_lost_to_an_immediate_database_stop_or_a_sigkill_with_a_small_cache() {
    immediate_stop_and_sigkill("immediate_and_kill_cached", &["--cache-capacity", "50"]);
}

fn immediate_stop_and_sigkill(test: &str, extra_args: &[&str]) {
    let Some(cluster) = Cluster::start(test) else { return };
    let dirs = ProcessDirs::new();
    let url = cluster.url();
    let serve = |dirs: &ProcessDirs| {
        let mut args = vec!["--shards", "2", "--store", &url];
        args.extend_from_slice(extra_args);
        ServeProcess::start(&dirs.data_dir, &dirs.key, &args, |_| {})
    };
    let served = serve(&dirs);
    // Writers keep writing (a new id each time) while the database crashes and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let (address, stop) = (served.address.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut client = Client::connect(address.as_str()).unwrap();
                let (mut acked, mut refused) = (Vec::new(), 0);
                for index in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("acked/{writer}/{index}");
                    match client.put(&put(&id, id.as_bytes())) {
                        Ok(_) => acked.push(id),
                        Err(error) => {
                            assert_eq!(error.status(), Some(Status::Unavailable), "{error}");
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                (acked, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The database stops as in a crash; its WAL brings back every committed write.
    cluster.stop("immediate");
    std::thread::sleep(Duration::from_millis(200));
    cluster.start_again();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), 0);
    for writer in writers {
        let (ids, count) = writer.join().unwrap();
        acked.extend(ids);
        refused += count;
    }
    assert!(acked.len() > 100, "the writers made progress: {}", acked.len());
    assert!(refused > 0, "some writes met the stopped database");
    // credshard is killed outright; a new process reads everything from the database.
    drop(served); // SIGKILL
    let served = serve(&dirs);
    let mut client = Client::connect(served.address.as_str()).unwrap();
    for id in &acked {
        assert_eq!(client.get(id).unwrap().secret.expose(), id.as_bytes(), "{id} was acknowledged");
    }
    let key = MasterKey::read_file(&dirs.key).unwrap();
    let other = on(&cluster, key.bytes());
    assert_eq!(other.client().get(&acked[0]).unwrap().secret.expose(), acked[0].as_bytes());
}
