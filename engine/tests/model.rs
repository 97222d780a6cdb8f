//! Model-based test (after sled's `fuzz_model`): random sequences of PUT / CAS / ROTATE /
//! DELETE / GET / GET_META / LIST against a real 2-shard server over TCP, each outcome checked
//! against a plain in-memory model of versions, grace periods and owners.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use common::{put, TestServer};
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::{Client, ClientError, Status, VersionState};
use proptest::prelude::*;

const KEYS: usize = 6;
const MAX_VERSIONS: usize = 10;
/// Grace periods are either zero (retired at once) or an hour (in grace for the whole test),
/// so states never depend on timing.
const LONG_GRACE_SECONDS: u64 = 3600;

#[derive(Clone, Debug)]
enum Operation {
    Put {
        key: usize,
        owner: usize,
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
    Rotate {
        key: usize,
        long_grace: bool,
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
        back: u64,
    },
    GetMeta {
        key: usize,
    },
    List {
        owner: usize,
        limit: u16,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    let key = 0..KEYS;
    let secret = proptest::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        3 => (key.clone(), 0usize..2, secret.clone()).prop_map(|(key, owner, secret)| Operation::Put { key, owner, secret }),
        1 => (key.clone(), any::<bool>(), secret.clone())
            .prop_map(|(key, correct, secret)| Operation::CompareAndSet { key, correct, secret }),
        1 => (key.clone(), secret.clone()).prop_map(|(key, secret)| Operation::CreateOnly { key, secret }),
        2 => (key.clone(), any::<bool>(), secret).prop_map(|(key, long_grace, secret)| Operation::Rotate { key, long_grace, secret }),
        1 => key.clone().prop_map(|key| Operation::Delete { key }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, correct)| Operation::CompareAndDelete { key, correct }),
        2 => key.clone().prop_map(|key| Operation::Get { key }),
        2 => (key.clone(), 0u64..12).prop_map(|(key, back)| Operation::GetVersion { key, back }),
        1 => key.prop_map(|key| Operation::GetMeta { key }),
        1 => (0usize..2, 1u16..4).prop_map(|(owner, limit)| Operation::List { owner, limit }),
    ]
}

/// One kept version in the model, and how the next version replaced it (if it did).
#[derive(Clone, Debug)]
struct ModelVersion {
    version: u64,
    secret: Vec<u8>,
    replaced: VersionState,
}

#[derive(Clone, Debug)]
struct ModelCredential {
    owner: String,
    /// Newest first, at most MAX_VERSIONS.
    versions: Vec<ModelVersion>,
}

impl ModelCredential {
    fn current(&self) -> &ModelVersion {
        &self.versions[0]
    }

    fn push(&mut self, secret: &[u8], replaced_as: VersionState) -> u64 {
        let version = self.current().version + 1;
        self.versions[0].replaced = replaced_as;
        self.versions
            .insert(0, ModelVersion { version, secret: secret.to_vec(), replaced: VersionState::Current });
        self.versions.truncate(MAX_VERSIONS);
        version
    }
}

type Model = HashMap<String, ModelCredential>;

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::start(2))
}

fn status<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Status {
    result.expect_err("expected an error").status().expect("a server status, not a connection failure")
}

struct Case<'a> {
    client: Client,
    model: Model,
    prefix: &'a str,
}

impl Case<'_> {
    fn id(&self, key: usize) -> String {
        format!("{}-{key}", self.prefix)
    }

    fn owner(&self, owner: usize) -> String {
        format!("{}-owner-{owner}", self.prefix)
    }

    fn current_version(&self, id: &str) -> u64 {
        self.model.get(id).map_or(0, |credential| credential.current().version)
    }

    fn check(&mut self, operation: &Operation) {
        match operation {
            Operation::Put { key, owner, secret } => {
                let (id, owner) = (self.id(*key), self.owner(*owner));
                let mut request = put(&id, secret);
                request.owner = &owner;
                let version = self.client.put(&request).unwrap();
                self.apply_put(&id, &owner, secret, version);
            }
            Operation::CompareAndSet { key, correct, secret } => {
                let id = self.id(*key);
                let current = self.current_version(&id);
                let owner =
                    self.model.get(&id).map_or_else(|| self.owner(0), |credential| credential.owner.clone());
                let mut request = put(&id, secret);
                request.owner = &owner;
                request.expected_version = Some(if *correct { current } else { current + 7 });
                match self.client.put(&request) {
                    Ok(version) => {
                        assert!(*correct, "a wrong expected version was accepted");
                        self.apply_put(&id, &owner, secret, version);
                    }
                    Err(error) => {
                        assert!(!correct, "the right expected version was refused: {error}");
                        assert_eq!(error.current_version(), Some(current));
                    }
                }
            }
            Operation::CreateOnly { key, secret } => {
                let (id, owner) = (self.id(*key), self.owner(0));
                let mut request = put(&id, secret);
                request.owner = &owner;
                request.expected_version = Some(0);
                match self.client.put(&request) {
                    Ok(version) => {
                        assert!(!self.model.contains_key(&id));
                        self.apply_put(&id, &owner, secret, version);
                    }
                    Err(error) => assert_eq!(error.current_version(), Some(self.current_version(&id))),
                }
            }
            Operation::Rotate { key, long_grace, secret } => {
                let id = self.id(*key);
                let grace = if *long_grace { LONG_GRACE_SECONDS } else { 0 };
                let request = RotateRequest {
                    id: &id,
                    expected_version: None,
                    grace_period_seconds: Some(grace),
                    secret,
                };
                match (self.client.rotate(&request), self.model.get_mut(&id)) {
                    (Ok(version), Some(credential)) => {
                        let replaced =
                            if *long_grace { VersionState::PreviousInGrace } else { VersionState::Retired };
                        assert_eq!(credential.push(secret, replaced), version);
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("rotate {result:?} with model state {state:?}"),
                }
            }
            Operation::Delete { key } => {
                let id = self.id(*key);
                match (self.client.delete(&id, None), self.model.remove(&id)) {
                    (Ok(reply), Some(credential)) => assert_eq!(reply.version, credential.current().version),
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("delete {result:?} with model state {state:?}"),
                }
            }
            Operation::CompareAndDelete { key, correct } => {
                let id = self.id(*key);
                let current = self.current_version(&id);
                if current == 0 {
                    assert_eq!(status(self.client.delete(&id, Some(1))), Status::NotFound);
                    return;
                }
                let expected = if *correct { current } else { current + 3 };
                match self.client.delete(&id, Some(expected)) {
                    Ok(reply) => {
                        assert!(*correct);
                        assert_eq!(reply.version, current);
                        self.model.remove(&id);
                    }
                    Err(error) => {
                        assert!(!correct);
                        assert_eq!(error.current_version(), Some(current));
                    }
                }
            }
            Operation::Get { key } => {
                let id = self.id(*key);
                match (self.client.get(&id), self.model.get(&id)) {
                    (Ok(reply), Some(credential)) => {
                        assert_eq!(reply.metadata.version, credential.current().version);
                        assert_eq!(reply.secret.expose(), &credential.current().secret[..]);
                        assert_eq!(reply.metadata.owner, credential.owner);
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("get {result:?} with model state {state:?}"),
                }
            }
            Operation::GetVersion { key, back } => {
                let id = self.id(*key);
                let Some(credential) = self.model.get(&id) else {
                    assert_eq!(status(self.client.get_version(&id, 1)), Status::NotFound);
                    return;
                };
                let wanted = credential.current().version.saturating_sub(*back).max(1);
                let kept = credential.versions.iter().find(|kept| kept.version == wanted).cloned();
                match (self.client.get_version(&id, wanted), kept) {
                    (Ok(reply), Some(kept)) => {
                        assert_ne!(kept.replaced, VersionState::Retired, "a retired secret was returned");
                        assert_eq!(reply.secret.expose(), &kept.secret[..]);
                        assert_eq!(reply.metadata.version, wanted);
                    }
                    (Err(error), Some(kept)) => {
                        assert_eq!(kept.replaced, VersionState::Retired, "version {wanted} refused: {error}");
                        assert_eq!(error.status(), Some(Status::Retired));
                    }
                    (Err(error), None) => {
                        assert_eq!(error.status(), Some(Status::NotFound), "version {wanted}")
                    }
                    (Ok(reply), None) => panic!("version {wanted} is not kept but was returned: {reply:?}"),
                }
            }
            Operation::GetMeta { key } => {
                let id = self.id(*key);
                match (self.client.get_meta(&id), self.model.get(&id)) {
                    (Ok(reply), Some(credential)) => {
                        let states: Vec<(u64, VersionState)> =
                            reply.versions.iter().map(|info| (info.version, info.state)).collect();
                        let expected: Vec<(u64, VersionState)> =
                            credential.versions.iter().map(|kept| (kept.version, kept.replaced)).collect();
                        assert_eq!(states, expected);
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("get_meta {result:?} with model state {state:?}"),
                }
            }
            Operation::List { owner, limit } => {
                let owner = self.owner(*owner);
                let mut listed = Vec::new();
                let mut cursor = Vec::new();
                loop {
                    let request = ListRequest { owner: &owner, scope: "", limit: *limit, cursor: &cursor };
                    let page = self.client.list(&request).unwrap();
                    assert!(page.items.len() <= *limit as usize);
                    for item in &page.items {
                        assert_eq!(item.owner, owner);
                        let credential = &self.model[&item.id];
                        assert_eq!(item.version, credential.current().version);
                    }
                    listed.extend(page.items.into_iter().map(|item| item.id));
                    if page.next_cursor.is_empty() {
                        break;
                    }
                    cursor = page.next_cursor;
                }
                let unique: BTreeSet<String> = listed.iter().cloned().collect();
                assert_eq!(unique.len(), listed.len(), "no id listed twice");
                let expected: BTreeSet<String> = self
                    .model
                    .iter()
                    .filter(|(_, credential)| credential.owner == owner)
                    .map(|(id, _)| id.clone())
                    .collect();
                assert_eq!(unique, expected);
            }
        }
    }

    fn apply_put(&mut self, id: &str, owner: &str, secret: &[u8], version: u64) {
        match self.model.get_mut(id) {
            Some(credential) => {
                assert_eq!(credential.push(secret, VersionState::Superseded), version);
                credential.owner = owner.to_owned();
            }
            None => {
                assert_eq!(version, 1);
                let first =
                    ModelVersion { version, secret: secret.to_vec(), replaced: VersionState::Current };
                self.model.insert(
                    id.to_owned(),
                    ModelCredential { owner: owner.to_owned(), versions: vec![first] },
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn server_matches_an_in_memory_model(operations in proptest::collection::vec(operation(), 1..80)) {
        static CASE: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("model-{}", CASE.fetch_add(1, Ordering::Relaxed));
        let mut case = Case { client: server().client(), model: Model::new(), prefix: &prefix };
        for operation in &operations {
            case.check(operation);
        }
        // Finally every id of this case agrees with the model.
        for key in 0..KEYS {
            let id = case.id(key);
            let stored = case.client.get(&id).ok().map(|reply| (reply.metadata.version, reply.secret.expose().to_vec()));
            let expected = case.model.get(&id).map(|credential| (credential.current().version, credential.current().secret.clone()));
            prop_assert_eq!(stored, expected);
        }
    }
}
