//! Model-based test: random sequences of PUT / CAS / DELETE / GET / GET_META against a real
//! 2-shard server over TCP, each outcome checked against a plain `HashMap` model.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use common::{put, TestServer};
use credshard_protocol::{Client, Status};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Operation {
    Put {
        key: usize,
        secret: Vec<u8>,
    },
    /// Compare-and-set with the model's current version (`correct`) or a wrong one.
    CompareAndSet {
        key: usize,
        correct: bool,
        secret: Vec<u8>,
    },
    CreateOnly {
        key: usize,
        secret: Vec<u8>,
    },
    Delete {
        key: usize,
    },
    CompareAndDelete {
        key: usize,
        correct: bool,
    },
    Get {
        key: usize,
    },
    GetVersion {
        key: usize,
        offset: u64,
    },
    GetMeta {
        key: usize,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    let key = 0usize..6;
    let secret = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (key.clone(), secret.clone()).prop_map(|(key, secret)| Operation::Put { key, secret }),
        (key.clone(), any::<bool>(), secret.clone())
            .prop_map(|(key, correct, secret)| Operation::CompareAndSet { key, correct, secret }),
        (key.clone(), secret).prop_map(|(key, secret)| Operation::CreateOnly { key, secret }),
        key.clone().prop_map(|key| Operation::Delete { key }),
        (key.clone(), any::<bool>()).prop_map(|(key, correct)| Operation::CompareAndDelete { key, correct }),
        key.clone().prop_map(|key| Operation::Get { key }),
        (key.clone(), 0u64..3).prop_map(|(key, offset)| Operation::GetVersion { key, offset }),
        key.prop_map(|key| Operation::GetMeta { key }),
    ]
}

/// The model: id → (current version, current secret).
type Model = HashMap<String, (u64, Vec<u8>)>;

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::start(2))
}

fn status<T>(result: Result<T, credshard_protocol::ClientError>) -> Option<Status> {
    result.err().map(|error| error.status().expect("a server status, not a connection failure"))
}

fn check(client: &mut Client, model: &mut Model, prefix: &str, operation: &Operation) {
    let id = |key: &usize| format!("{prefix}-{key}");
    match operation {
        Operation::Put { key, secret } => {
            let id = id(key);
            let version = client.put(&put(&id, secret)).unwrap();
            let expected = model.get(&id).map_or(1, |(version, _)| version + 1);
            assert_eq!(version, expected);
            model.insert(id, (version, secret.clone()));
        }
        Operation::CompareAndSet { key, correct, secret } => {
            let id = id(key);
            let current = model.get(&id).map_or(0, |(version, _)| *version);
            let mut request = put(&id, secret);
            request.expected_version = Some(if *correct { current } else { current + 7 });
            match client.put(&request) {
                Ok(version) => {
                    assert!(*correct, "a wrong expected version was accepted");
                    assert_eq!(version, current + 1);
                    model.insert(id, (version, secret.clone()));
                }
                Err(error) => {
                    assert!(!correct, "the right expected version was refused: {error}");
                    assert_eq!(error.current_version(), Some(current));
                }
            }
        }
        Operation::CreateOnly { key, secret } => {
            let id = id(key);
            let mut request = put(&id, secret);
            request.expected_version = Some(0);
            match (client.put(&request), model.get(&id)) {
                (Ok(version), None) => {
                    assert_eq!(version, 1);
                    model.insert(id, (1, secret.clone()));
                }
                (Err(error), Some((current, _))) => assert_eq!(error.current_version(), Some(*current)),
                (result, state) => panic!("create-only {result:?} with model state {state:?}"),
            }
        }
        Operation::Delete { key } => {
            let id = id(key);
            match (client.delete(&id, None), model.remove(&id)) {
                (Ok(reply), Some((version, _))) => assert_eq!(reply.version, version),
                (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                (result, state) => panic!("delete {result:?} with model state {state:?}"),
            }
        }
        Operation::CompareAndDelete { key, correct } => {
            let id = id(key);
            let Some((current, _)) = model.get(&id).cloned() else {
                assert_eq!(status(client.delete(&id, Some(1))), Some(Status::NotFound));
                return;
            };
            let expected = if *correct { current } else { current + 3 };
            match client.delete(&id, Some(expected)) {
                Ok(reply) => {
                    assert!(*correct);
                    assert_eq!(reply.version, current);
                    model.remove(&id);
                }
                Err(error) => {
                    assert!(!correct);
                    assert_eq!(error.current_version(), Some(current));
                }
            }
        }
        Operation::Get { key } => {
            let id = id(key);
            match (client.get(&id), model.get(&id)) {
                (Ok(reply), Some((version, secret))) => {
                    assert_eq!(reply.metadata.version, *version);
                    assert_eq!(reply.secret.expose(), &secret[..]);
                }
                (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                (result, state) => panic!("get {result:?} with model state {state:?}"),
            }
        }
        Operation::GetVersion { key, offset } => {
            let id = id(key);
            let Some((current, secret)) = model.get(&id) else {
                assert_eq!(status(client.get_version(&id, 1)), Some(Status::NotFound));
                return;
            };
            let wanted = current.saturating_sub(*offset).max(1);
            match client.get_version(&id, wanted) {
                Ok(reply) => {
                    assert_eq!(wanted, *current, "only the current version is kept");
                    assert_eq!(reply.secret.expose(), &secret[..]);
                }
                Err(error) => {
                    assert_ne!(wanted, *current);
                    assert_eq!(error.status(), Some(Status::NotFound));
                }
            }
        }
        Operation::GetMeta { key } => {
            let id = id(key);
            match (client.get_meta(&id), model.get(&id)) {
                (Ok(reply), Some((version, _))) => {
                    assert_eq!(reply.metadata.version, *version);
                    assert_eq!(reply.versions.len(), 1);
                }
                (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                (result, state) => panic!("get_meta {result:?} with model state {state:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn server_matches_a_hashmap_model(operations in proptest::collection::vec(operation(), 1..60)) {
        static CASE: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("model-{}", CASE.fetch_add(1, Ordering::Relaxed));
        let mut client = server().client();
        let mut model = Model::new();
        for operation in &operations {
            check(&mut client, &mut model, &prefix, operation);
        }
        // Finally the whole keyspace of this case agrees with the model.
        for key in 0..6 {
            let id = format!("{prefix}-{key}");
            let stored = client.get(&id).ok().map(|reply| (reply.metadata.version, reply.secret.expose().to_vec()));
            prop_assert_eq!(stored, model.get(&id).cloned());
        }
    }
}
