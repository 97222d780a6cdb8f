//! Crash safety with a real process: `credshard serve` is killed with SIGKILL while several
//! connections write, then restarted on the same data dir, 20 times over. Every acknowledged
//! write must be present with its version and secret; the only other state allowed is the one
//! write per id that was in flight (sent, not acknowledged) when the process died.
//!
//! A third of the ids are written with a short time to live in every other round, so they
//! expire and are swept (every 10 ms) between writes, and the write after a sweep continues
//! from the swept version (versions never restart): an acknowledged write without expiry that
//! follows a sweep must survive the restart too, with that version. An acknowledged write with a TTL may be gone after a restart only once its
//! TTL has passed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{ProcessDirs, ServeProcess};
use common::put;
use credshard_engine::time::now_ms;
use credshard_protocol::{Client, Expiry, Status};
/// Kills per run; `bench/crash_loop.sh` runs 200 with CREDSHARD_CRASH_KILLS.
fn kills() -> usize {
    std::env::var("CREDSHARD_CRASH_KILLS").ok().and_then(|value| value.parse().ok()).unwrap_or(20)
}
const WRITERS: usize = 4;
const IDS_PER_WRITER: usize = 25;
/// The TTL of the expiring writes: shorter than one pass of a writer over its ids.
const TTL_MS: u64 = 15;

/// One acknowledged write: its version and secret, and for a write with a TTL, the earliest
/// time it can have expired: its TTL after it was sent (the server counts the TTL from when it
/// received the write, which is after the send and before the acknowledgement).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Acked {
    /// `None` when not known: a write with a TTL that was in flight at a kill, applied, and
    /// found expired after the restart.
    version: Option<u64>,
    secret: String,
    may_expire_from_ms: Option<u64>,
}

impl Acked {
    /// Whether the server may have swept (or may report as expired) this write by now.
    fn may_be_gone(&self, now_ms: u64) -> bool {
        self.may_expire_from_ms.is_some_and(|from_ms| now_ms >= from_ms)
    }

    /// Whether `version` is what a write after this one can get: the next version, also when
    /// an expiring write was swept in between (a purged id keeps its last version).
    fn allows_next(acked: Option<&Acked>, version: u64) -> bool {
        let Some(previous) = acked.map_or(Some(0), |acked| acked.version) else { return true };
        version == previous + 1
    }
}

/// What the test knows about one id.
#[derive(Clone, Debug, Default)]
struct Known {
    acked: Option<Acked>,
    /// A write sent but not acknowledged when the server died: its secret, and for one with a
    /// TTL, the earliest time it can have expired (its TTL after it was sent).
    in_flight: Option<(String, Option<u64>)>,
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let ProcessDirs { dir: _dir, key, data_dir } = ProcessDirs::new();
    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::new(Mutex::new(HashMap::new()));
    let (mut total_acked, mut total_after_sweeps) = (0u64, 0u64);

    let kills = kills();
    for round in 0..=kills {
        // A small compaction threshold makes snapshots happen (and get killed) during the run.
        let served = ServeProcess::start(
            &data_dir,
            &key,
            &["--shards", "2", "--compact-log-bytes", "8192", "--sweep-interval-ms", "10"],
            |_| {},
        );
        let address = served.address.clone();
        // Check everything known so far against the restarted server.
        let mut checker = Client::connect(address.as_str()).unwrap();
        for (id, state) in known.lock().unwrap().iter_mut() {
            let now = now_ms();
            let stored = match checker.get(id) {
                Ok(reply) => {
                    Some((reply.metadata.version, String::from_utf8(reply.secret.expose().to_vec()).unwrap()))
                }
                Err(error) => {
                    let status = error.status();
                    assert!(
                        matches!(status, Some(Status::NotFound | Status::Expired)),
                        "round {round}: {id}: {error}"
                    );
                    None
                }
            };
            let acked = state.acked.as_ref();
            let in_flight_applied = stored
                .as_ref()
                .filter(|(_, secret)| state.in_flight.as_ref().is_some_and(|(sent, _)| sent == secret));
            if let Some((version, secret)) = in_flight_applied {
                assert!(
                    Acked::allows_next(acked, *version),
                    "round {round}: {id}: the in-flight write has version {version} after {acked:?}"
                );
                let may_expire_from_ms = state.in_flight.as_ref().and_then(|(_, from_ms)| *from_ms);
                state.acked =
                    Some(Acked { version: Some(*version), secret: secret.clone(), may_expire_from_ms });
            } else {
                match (acked, &stored) {
                    (None, None) if state.in_flight.as_ref().is_none_or(|(_, from_ms)| from_ms.is_none()) => {
                    }
                    (Some(acked), Some((version, secret)))
                        if acked.version == Some(*version) && &acked.secret == secret => {}
                    // Checked before "the acknowledged write expired": an in-flight write
                    // with a TTL may have been applied (taking the next version) and then
                    // expired and been swept, and the write after it continues from there.
                    (_, None)
                        if state
                            .in_flight
                            .as_ref()
                            .is_some_and(|(_, from_ms)| from_ms.is_some_and(|from_ms| now >= from_ms)) =>
                    {
                        // The in-flight write had a TTL: applied, then expired (and perhaps
                        // swept) since, with a version the test cannot see.
                        let (secret, may_expire_from_ms) = state.in_flight.clone().expect("checked");
                        state.acked = Some(Acked { version: None, secret, may_expire_from_ms });
                    }
                    (Some(acked), None) if acked.may_be_gone(now) => {}
                    (acked, stored) => panic!(
                        "round {round}: {id}: acknowledged {acked:?}, stored {stored:?}, in flight {:?}",
                        state.in_flight
                    ),
                }
            }
            state.in_flight = None;
        }
        if round == kills {
            drop(served);
            break;
        }

        // Writes acknowledged in this round: the kill waits for some, however slow the machine.
        let round_acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let known = Arc::clone(&known);
                let address = address.clone();
                let round_acked = Arc::clone(&round_acked);
                std::thread::spawn(move || {
                    let Ok(mut client) = Client::connect(address.as_str()) else { return (0, 0) };
                    let (mut acked, mut after_sweeps) = (0u64, 0u64);
                    for attempt in 0.. {
                        let index = attempt % IDS_PER_WRITER;
                        let id = format!("w{writer}-{index}");
                        let secret = format!("{id}#{round}.{attempt}");
                        // Every third id, in every other round (and pass over the ids): a write
                        // that soon expires. The plain writes of the next round then follow a
                        // sweep, on the restarted server or before the kill.
                        let expiring =
                            index.is_multiple_of(3) && (round + attempt / IDS_PER_WRITER).is_multiple_of(2);
                        let ttl_ms = expiring.then_some(TTL_MS);
                        let mut request = put(&id, secret.as_bytes());
                        request.expiry = ttl_ms.map_or(Expiry::Never, Expiry::TtlMs);
                        let may_expire_from_ms = ttl_ms.map(|ttl_ms| now_ms() + ttl_ms);
                        known.lock().unwrap().entry(id.clone()).or_default().in_flight =
                            Some((secret.clone(), may_expire_from_ms));
                        match client.put(&request) {
                            Ok(version) => {
                                round_acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let now = now_ms();
                                let mut known = known.lock().unwrap();
                                let state = known.get_mut(&id).unwrap();
                                assert!(
                                    Acked::allows_next(state.acked.as_ref(), version),
                                    "{id}: version {version} after {:?}",
                                    state.acked
                                );
                                after_sweeps += u64::from(
                                    state.acked.as_ref().is_some_and(|acked| acked.may_be_gone(now)),
                                );
                                state.acked =
                                    Some(Acked { version: Some(version), secret, may_expire_from_ms });
                                state.in_flight = None;
                                acked += 1;
                            }
                            Err(_) => return (acked, after_sweeps), // the server died
                        }
                    }
                    (acked, after_sweeps)
                })
            })
            .collect();
        let waiting_since = std::time::Instant::now();
        while round_acked.load(std::sync::atomic::Ordering::Relaxed) < 20
            && waiting_since.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Then a varying moment, so kills land at different points of a write.
        std::thread::sleep(Duration::from_millis(5 + (round as u64 * 7) % 40));
        drop(served); // SIGKILL, then wait
        for writer in writers {
            let (acked, after_sweeps) = writer.join().unwrap();
            total_acked += acked;
            total_after_sweeps += after_sweeps;
        }
    }
    assert!(total_acked > kills as u64 * 10, "the writers made progress: {total_acked} acknowledged writes");
    assert!(total_after_sweeps > 0, "some writes came after their id may have been swept");
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
    println!(
        "{kills} kills, {total_acked} acknowledged writes ({total_after_sweeps} after a sweep of their id), \
         all present after every restart; {snapshots} snapshot files"
    );
}
