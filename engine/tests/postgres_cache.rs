//! The bounded cache in front of a real PostgreSQL database (`--store` with
//! `--cache-capacity`): more credentials than the cache holds, on two instances, are every one
//! readable (GET, GET_META, BATCH_GET) and listable (LIST pages from the database), writes of
//! evicted credentials are judged against their real state, concurrent misses of one id make
//! one query, and STATS counts hits, misses, loads and evictions.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{put, TestServer};
use credshard_engine::crypto::MasterKey;
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{Client, PutRequest, Status};

/// Credentials each instance's cache holds (two shards: 20 each).
const CAPACITY: usize = 40;
/// Credentials written: many times what a cache holds.
const CREDENTIALS: usize = 300;

fn cached_instance(url: &str, key: &[u8; 32]) -> TestServer {
    let url = url.to_owned();
    TestServer::try_start_with_key(2, MasterKey::from_bytes(*key), move |config| {
        config.store = Some(url);
        config.store_connections = 8;
        config.cache_capacity = CAPACITY;
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config.resp_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .expect("an instance on the database starts")
}

/// The value of the sample `name` (without labels) on the instance's `/metrics`.
fn scraped(server: &TestServer, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.handle.metrics_address().unwrap()).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: credshard\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let line = response
        .lines()
        .find(|line| line.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// Writes [`CREDENTIALS`] credentials, each with its id as its secret; returns the ids.
fn fill(client: &mut Client) -> Vec<String> {
    let ids: Vec<String> = (0..CREDENTIALS).map(id).collect();
    for id in &ids {
        client.put(&put(id, id.as_bytes())).unwrap();
    }
    ids
}

fn id(index: usize) -> String {
    format!("cached/{index:04}")
}

/// Owner and scope by index: three owners, two scopes each.
fn placed(id: &str, index: usize) -> PutRequest<'_> {
    const OWNERS: [&str; 3] = ["team-a", "team-b", "team-c"];
    const SCOPES: [&str; 2] = ["prod", "staging"];
    PutRequest { owner: OWNERS[index % 3], scope: SCOPES[(index / 3) % 2], ..put(id, id.as_bytes()) }
}

fn status_of<T: std::fmt::Debug>(result: Result<T, credshard_protocol::ClientError>) -> Option<Status> {
    result.err().and_then(|error| error.status())
}

/// Every id a LIST names, page by page (`limit` items per page).
fn list_all(client: &mut Client, owner: &str, scope: &str, limit: u16) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = Vec::new();
    loop {
        let page = client.list(&ListRequest { owner, scope, limit, cursor: &cursor }).unwrap();
        assert!(page.items.len() <= limit as usize);
        ids.extend(page.items.iter().map(|item| item.id.clone()));
        if page.next_cursor.is_empty() {
            return ids;
        }
        cursor = page.next_cursor;
    }
}

#[test]
fn more_credentials_than_the_cache_holds_are_all_served_on_both_instances() {
    let Some(database) = common::postgres::database("cache_bounded") else { return };
    let key = *MasterKey::generate().bytes();
    let (first, second) = (cached_instance(&database.url(), &key), cached_instance(&database.url(), &key));
    let (mut on_first, mut on_second) = (first.client(), second.client());
    let ids: Vec<String> = (0..CREDENTIALS).map(id).collect();
    for (index, id) in ids.iter().enumerate() {
        assert_eq!(on_first.put(&placed(id, index)).unwrap(), 1);
    }
    for (name, server, client) in [("first", &first, &mut on_first), ("second", &second, &mut on_second)] {
        for id in &ids {
            let reply = client.get(id).unwrap_or_else(|error| panic!("{name}: GET {id}: {error}"));
            assert_eq!(reply.secret.expose(), id.as_bytes(), "{name}: {id}");
            assert_eq!(client.get_meta(id).unwrap().metadata.version, 1, "{name}: {id}");
        }
        for batch in ids.chunks(10) {
            let items = client.batch_get(batch).unwrap();
            for (id, item) in batch.iter().zip(items) {
                assert_eq!(item.unwrap().secret.expose(), id.as_bytes(), "{name}: batch {id}");
            }
        }
        // Mixed with ids that exist nowhere: NOT_FOUND for those, the secrets for the rest.
        let mixed = [ids[7].clone(), "cached/none".to_owned(), ids[250].clone()];
        let items = client.batch_get(&mixed).unwrap();
        assert_eq!(items[0].as_ref().unwrap().secret.expose(), ids[7].as_bytes());
        assert_eq!(items[1].as_ref().err().and_then(|error| error.status()), Some(Status::NotFound));
        assert_eq!(items[2].as_ref().unwrap().secret.expose(), ids[250].as_bytes());
        assert_eq!(status_of(client.get("cached/none")), Some(Status::NotFound), "{name}");
        assert!(
            server.store().len() <= CAPACITY,
            "{name} holds {} credentials, past its capacity",
            server.store().len()
        );
        // LIST comes from the database: every credential of the owner, in the shards' order
        // (by scope, then id, in byte order), across pages.
        let expected_of = |owner: &str, scope: &str| -> Vec<String> {
            let mut matching: Vec<(String, String)> = ids
                .iter()
                .enumerate()
                .map(|(index, id)| (id, placed(id, index)))
                .filter(|(_, request)| request.owner == owner && (scope.is_empty() || request.scope == scope))
                .map(|(id, request)| (request.scope.to_owned(), id.clone()))
                .collect();
            matching.sort();
            matching.into_iter().map(|(_, id)| id).collect()
        };
        assert_eq!(list_all(client, "team-b", "", 7), expected_of("team-b", ""), "{name}");
        assert_eq!(list_all(client, "team-c", "staging", 9), expected_of("team-c", "staging"), "{name}");
        let by_scope = list_all(client, "", "prod", 11);
        let mut expected: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(index, _)| (index / 3) % 2 == 0)
            .map(|(_, id)| id.clone())
            .collect();
        expected.sort();
        assert_eq!(by_scope, expected, "{name}: by scope, ordered by id");
        let stats = client.stats().unwrap();
        assert_eq!(stats.get("cache_capacity"), Some(CAPACITY as u64), "{name}");
        assert!(stats.get("cache_evictions").unwrap() > 0, "{name}: {stats:?}");
        assert!(stats.get("cache_misses").unwrap() >= (CREDENTIALS - CAPACITY) as u64, "{name}: {stats:?}");
        let (misses, loads) = (stats.get("cache_misses").unwrap(), stats.get("cache_loads").unwrap());
        assert!(loads >= 1 && loads <= misses, "{name}: {stats:?}");
        assert!(stats.get("cache_hits").unwrap() > 0, "{name}: {stats:?}");
    }

    // Writes of credentials the writing instance has evicted are judged against what the
    // database holds: a compare-and-set from the right version wins, from a wrong one loses
    // and says the real version; ROTATE keeps the old version in grace; DELETE removes.
    let evicted = |server: &TestServer, ids: &[String]| -> Vec<String> {
        let map = server.store();
        ids.iter().filter(|id| map.may_exist_uncached(id)).take(4).cloned().collect()
    };
    let targets = evicted(&first, &ids);
    assert_eq!(targets.len(), 4, "the first instance evicted most credentials");
    let wrong = PutRequest { expected_version: Some(5), ..put(&targets[0], b"wrong") };
    let refused = on_first.put(&wrong).unwrap_err();
    assert_eq!(refused.current_version(), Some(1), "the database's version, not the cache's 0: {refused}");
    let right = PutRequest { expected_version: Some(1), ..put(&targets[0], b"second") };
    assert_eq!(on_first.put(&right).unwrap(), 2);
    let created = PutRequest { expected_version: Some(0), ..put(&targets[1], b"again") };
    assert_eq!(on_first.put(&created).unwrap_err().current_version(), Some(1), "it exists");
    let rotate = RotateRequest {
        id: &targets[1],
        expected_version: Some(1),
        grace_period_seconds: None,
        secret: b"v2",
    };
    assert_eq!(on_first.rotate(&rotate).unwrap(), 2);
    assert_eq!(on_first.get_version(&targets[1], 1).unwrap().secret.expose(), targets[1].as_bytes());
    assert_eq!(on_first.delete(&targets[2], Some(1)).unwrap().version, 1);
    assert_eq!(status_of(on_first.get(&targets[2])), Some(Status::NotFound));
    // The other instance reads each change: from the database on a miss, or through the
    // change log for what it holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = on_second.get(&targets[0]).map(|reply| reply.secret.expose().to_vec()).ok()
            == Some(b"second".to_vec())
            && on_second.get(&targets[1]).map(|reply| reply.metadata.version).ok() == Some(2)
            && status_of(on_second.get(&targets[2])) == Some(Status::NotFound);
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "the second instance did not see the first's writes");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A write on the second instance to a credential the first evicted: the first's next read
    // asks the database, so it reads the new version at once.
    let target =
        evicted(&first, &ids).into_iter().find(|id| !targets.contains(id)).expect("another evicted id");
    assert_eq!(on_second.put(&put(&target, b"from second")).unwrap(), 2);
    assert_eq!(on_first.get(&target).unwrap().secret.expose(), b"from second");
    let listed: BTreeSet<String> = list_all(&mut on_first, "team-a", "", 50).into_iter().collect();
    assert!(!listed.contains(&targets[2]), "a deleted credential is not listed");
}

#[test]
fn concurrent_misses_of_one_credential_make_one_query() {
    let Some(database) = common::postgres::database("cache_single_flight") else { return };
    let key = *MasterKey::generate().bytes();
    let server = cached_instance(&database.url(), &key);
    let mut client = server.client();
    let ids = fill(&mut client);
    let target = ids.iter().find(|id| server.store().may_exist_uncached(id)).expect("an evicted id").clone();
    let before = client.stats().unwrap();
    // The versions table locked: the load blocks in the database, so every reader arrives
    // while it is in flight.
    let lock = database
        .hold_lock("LOCK TABLE credshard_versions IN ACCESS EXCLUSIVE MODE", Duration::from_millis(800));
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let (address, target) = (server.address(), target.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                client.get(&target).map(|reply| reply.secret.expose().to_vec())
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().unwrap().unwrap(), target.as_bytes());
    }
    lock.join().unwrap();
    let after = client.stats().unwrap();
    let delta = |name: &str| after.get(name).unwrap() - before.get(name).unwrap();
    assert_eq!(delta("cache_misses"), 1, "twelve readers, one credential read: {after:?}");
    assert_eq!(delta("cache_loads"), 1, "{after:?}");
    // /metrics counts the same (nothing has run since STATS).
    for name in ["cache_hits", "cache_misses", "cache_loads", "cache_evictions"] {
        assert_eq!(scraped(&server, &format!("credshard_{name}_total")), after.get(name).unwrap(), "{name}");
    }
}

#[test]
fn a_database_that_cannot_be_read_fails_a_miss_fast_and_hits_go_on() {
    let Some(database) = common::postgres::database("cache_unavailable") else { return };
    let key = *MasterKey::generate().bytes();
    let proxy = common::postgres::CuttableProxy::to(database.server_address());
    let url = database.url_through(proxy.address);
    let server = cached_instance(&url, &key);
    let mut client = server.client();
    let ids = fill(&mut client);
    let cached =
        ids.iter().rev().find(|id| !server.store().may_exist_uncached(id)).expect("a cached id").clone();
    let evicted = ids.iter().find(|id| server.store().may_exist_uncached(id)).expect("an evicted id").clone();
    proxy.cut();
    assert_eq!(client.get(&cached).unwrap().secret.expose(), cached.as_bytes(), "a hit needs no database");
    let started = Instant::now();
    assert_eq!(status_of(client.get(&evicted)), Some(Status::Unavailable));
    assert_eq!(
        status_of(client.list(&ListRequest { owner: "team-a", scope: "", limit: 10, cursor: &[] })),
        Some(Status::Unavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(8), "a miss fails within the pool's wait");
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(&evicted).is_err() {
        assert!(Instant::now() < deadline, "misses are served again once the database is back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client.get(&evicted).unwrap().secret.expose(), evicted.as_bytes());
}

#[test]
fn a_row_holding_another_credentials_record_is_refused_not_served_or_filed_under_it() {
    let Some(database) = common::postgres::database("cache_swapped_row") else { return };
    let key = *MasterKey::generate().bytes();
    let server = cached_instance(&database.url(), &key);
    let mut client = server.client();
    let ids = fill(&mut client);
    let cached =
        ids.iter().rev().find(|id| !server.store().may_exist_uncached(id)).expect("a cached id").clone();
    let evicted = ids.iter().find(|id| server.store().may_exist_uncached(id)).expect("an evicted id").clone();
    // The evicted credential's row now holds the cached one's record (ids are `cached/NNNN`).
    database.query(&format!(
        "UPDATE credshard_versions SET record = (SELECT record FROM credshard_versions WHERE id = '{cached}' \
         ORDER BY version DESC LIMIT 1) WHERE id = '{evicted}'"
    ));
    // A miss reads the row and refuses it: neither the other secret under this id, nor the
    // record filed as the other credential's (the shard files an entry under its record's id).
    let refused = client.get(&evicted);
    assert!(refused.is_err(), "a swapped row is refused: {:?}", refused.map(|got| got.metadata.version));
    assert_eq!(client.get(&cached).unwrap().secret.expose(), cached.as_bytes());
    let owner_listing = client.list(&ListRequest { owner: "team-a", scope: "", limit: 1000, cursor: &[] });
    assert!(owner_listing.is_err(), "a LIST page holding the row is refused too");
    assert!(server.store().may_exist_uncached(&evicted), "nothing was installed for it");
    // The records' slabs are on /metrics (process-wide: other tests' servers share them).
    let (held, used) = (
        scraped(&server, "credshard_record_slab_held_bytes"),
        scraped(&server, "credshard_record_slab_used_bytes"),
    );
    assert!(used > 0 && used <= held && held % 65536 == 0, "held {held}, used {used}");
}

#[test]
fn writers_read_their_own_writes_while_readers_keep_the_cache_churning() {
    let Some(database) = common::postgres::database("cache_churn") else { return };
    let key = *MasterKey::generate().bytes();
    let server = cached_instance(&database.url(), &key);
    let ids: Vec<String> = (0..CREDENTIALS).map(id).collect();
    let mut client = server.client();
    for id in &ids {
        client.put(&put(id, b"0")).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let groups: Vec<Vec<String>> = ids.chunks(CREDENTIALS / 4).map(<[String]>::to_vec).collect();
    // Readers of every group: their misses load credentials while the writers' commits of
    // the same credentials are in flight, and their loads evict what the writers wrote.
    let readers: Vec<_> = groups
        .iter()
        .cloned()
        .map(|group| {
            let (address, stop) = (server.address(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for id in &group {
                        client.get(id).unwrap();
                        reads += 1;
                    }
                    client.batch_get(&group[..10]).unwrap().into_iter().for_each(|item| {
                        item.unwrap();
                    });
                }
                reads
            })
        })
        .collect();
    // One writer per group, the only writer of its credentials: what it was acknowledged
    // is what it reads next, on the same instance.
    let writers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let address = server.address();
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut round = 1u64;
                while Instant::now() < deadline {
                    for id in &group {
                        let secret = format!("{id} #{round}");
                        let version = match round % 3 {
                            0 => {
                                let rotate = RotateRequest {
                                    id,
                                    expected_version: Some(round),
                                    grace_period_seconds: None,
                                    secret: secret.as_bytes(),
                                };
                                client.rotate(&rotate).unwrap()
                            }
                            _ => {
                                let request = PutRequest {
                                    expected_version: Some(round),
                                    ..put(id, secret.as_bytes())
                                };
                                client
                                    .put(&request)
                                    .unwrap_or_else(|error| panic!("{id} from {round}: {error}"))
                            }
                        };
                        assert_eq!(version, round + 1, "{id}");
                        let read = client.get(id).unwrap();
                        assert_eq!(read.metadata.version, round + 1, "{id}: read its own write");
                        assert_eq!(read.secret.expose(), secret.as_bytes(), "{id}");
                    }
                    round += 1;
                }
                round
            })
        })
        .collect();
    let rounds: Vec<u64> = writers.into_iter().map(|writer| writer.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: usize = readers.into_iter().map(|reader| reader.join().unwrap()).sum();
    let stats = client.stats().unwrap();
    assert!(rounds.iter().all(|rounds| *rounds > 2), "every writer wrote its credentials twice: {rounds:?}");
    assert!(reads > CREDENTIALS && stats.get("cache_evictions").unwrap() > CREDENTIALS as u64, "{stats:?}");
}

#[test]
fn redis_clients_read_and_write_evicted_credentials() {
    let Some(database) = common::postgres::database("cache_resp") else { return };
    let key = *MasterKey::generate().bytes();
    let server = cached_instance(&database.url(), &key);
    let mut client = server.client();
    let ids = fill(&mut client);
    let evicted: Vec<String> =
        ids.iter().filter(|id| server.store().may_exist_uncached(id)).take(3).cloned().collect();
    assert_eq!(evicted.len(), 3);
    let address = server.handle.resp_address().unwrap();
    let mut redis = redis::Client::open(format!("redis://{address}/")).unwrap().get_connection().unwrap();
    let value: Vec<u8> = redis::cmd("GET").arg(&evicted[0]).query(&mut redis).unwrap();
    assert_eq!(value, evicted[0].as_bytes());
    let values: Vec<Option<Vec<u8>>> =
        redis::cmd("MGET").arg(&evicted[1]).arg("cached/none").arg(&evicted[2]).query(&mut redis).unwrap();
    assert_eq!(
        values,
        vec![Some(evicted[1].as_bytes().to_vec()), None, Some(evicted[2].as_bytes().to_vec())]
    );
    // A pipelined SET of an evicted credential, then its GET: the GET reads the SET.
    let target = ids.iter().find(|id| server.store().may_exist_uncached(id)).unwrap().clone();
    let (set, got): (String, Vec<u8>) = redis::pipe()
        .cmd("SET")
        .arg(&target)
        .arg("set over RESP")
        .cmd("GET")
        .arg(&target)
        .query(&mut redis)
        .unwrap();
    assert_eq!((set.as_str(), got.as_slice()), ("OK", &b"set over RESP"[..]));
    let meta = client.get_meta(&target).unwrap().metadata;
    assert_eq!(meta.version, 2, "the SET replaced version 1");
    assert_eq!(
        (meta.owner.as_str(), meta.scope.as_str()),
        ("team-a", "prod"),
        "and kept its owner and scope"
    );
}
