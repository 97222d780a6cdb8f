//! Crash safety with a real process: `credshard serve` is killed with SIGKILL while several
//! connections write, then restarted on the same data dir, 20 times over. Every acknowledged
//! write must be present with its version and secret; the only other state allowed is the one
//! write per id that was in flight (sent, not acknowledged) when the process died.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{ProcessDirs, ServeProcess};
use common::put;
use credshard_protocol::Client;
/// Kills per run; `bench/crash_loop.sh` runs 200 with CREDSHARD_CRASH_KILLS.
fn kills() -> usize {
    std::env::var("CREDSHARD_CRASH_KILLS").ok().and_then(|value| value.parse().ok()).unwrap_or(20)
}
const WRITERS: usize = 4;
const IDS_PER_WRITER: usize = 25;

/// What the test knows about one id.
#[derive(Clone, Debug, Default)]
struct Known {
    /// The last acknowledged version and its secret.
    acked: Option<(u64, String)>,
    /// A write sent but not acknowledged when the server died.
    in_flight: Option<String>,
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let ProcessDirs { dir: _dir, key, data_dir } = ProcessDirs::new();
    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut total_acked = 0u64;

    let kills = kills();
    for round in 0..=kills {
        // A small compaction threshold makes snapshots happen (and get killed) during the run.
        let served =
            ServeProcess::start(&data_dir, &key, &["--shards", "2", "--compact-log-bytes", "8192"], |_| {});
        let address = served.address.clone();
        // Check everything known so far against the restarted server.
        let mut checker = Client::connect(address.as_str()).unwrap();
        for (id, state) in known.lock().unwrap().iter_mut() {
            let stored = checker.get(id).ok().map(|reply| {
                (reply.metadata.version, String::from_utf8(reply.secret.expose().to_vec()).unwrap())
            });
            match (&state.acked, stored) {
                (None, None) => {}
                (Some(acked), Some(stored)) if *acked == stored => {}
                (acked, Some((version, secret))) if Some(&secret) == state.in_flight.as_ref() => {
                    let previous = acked.as_ref().map_or(0, |(version, _)| *version);
                    assert_eq!(
                        version,
                        previous + 1,
                        "round {round}: {id}: the in-flight write has the next version"
                    );
                    state.acked = Some((version, secret));
                }
                (acked, stored) => panic!(
                    "round {round}: {id}: acknowledged {acked:?}, stored {stored:?}, in flight {:?}",
                    state.in_flight
                ),
            }
            state.in_flight = None;
        }
        if round == kills {
            drop(served);
            break;
        }

        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let known = Arc::clone(&known);
                let address = address.clone();
                std::thread::spawn(move || {
                    let Ok(mut client) = Client::connect(address.as_str()) else { return 0 };
                    let mut acked = 0u64;
                    for attempt in 0.. {
                        let id = format!("w{writer}-{}", attempt % IDS_PER_WRITER);
                        let secret = format!("{id}#{round}.{attempt}");
                        known.lock().unwrap().entry(id.clone()).or_default().in_flight = Some(secret.clone());
                        match client.put(&put(&id, secret.as_bytes())) {
                            Ok(version) => {
                                let mut known = known.lock().unwrap();
                                let state = known.get_mut(&id).unwrap();
                                let previous = state.acked.as_ref().map_or(0, |(version, _)| *version);
                                assert_eq!(version, previous + 1, "{id}: versions go up by one");
                                state.acked = Some((version, secret));
                                state.in_flight = None;
                                acked += 1;
                            }
                            Err(_) => return acked, // the server died
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30 + (round as u64 * 7) % 40));
        drop(served); // SIGKILL, then wait
        total_acked += writers.into_iter().map(|writer| writer.join().unwrap()).sum::<u64>();
    }
    assert!(total_acked > kills as u64 * 10, "the writers made progress: {total_acked} acknowledged writes");
    let snapshots = std::fs::read_dir(&data_dir)
        .unwrap()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_dir())
        .flat_map(|dir| {
            std::fs::read_dir(dir).unwrap().filter_map(|entry| entry.ok().map(|entry| entry.path()))
        })
        .filter(|path| path.extension().is_some_and(|extension| extension == "snapshot"))
        .count();
    assert!(snapshots > 0, "the small compaction threshold produced snapshots during the run");
    println!("{kills} kills, {total_acked} acknowledged writes, all present after every restart; {snapshots} snapshot files");
}
