// The model-based test's body, shared by `model.rs` (the embedded store) and
// `model_postgres.rs` (PostgreSQL as the system of record): each defines `model_client()`, a
// client of its server (`None`: skip, the reason printed).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::put;
use credshard_protocol::op::delete::DeleteRequest;
use credshard_protocol::op::get::Stage;
use credshard_protocol::op::list::ListRequest;
use credshard_protocol::op::policy::{Policy, SetPolicyRequest};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::stage::PromoteRequest;
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
        purge: bool,
    },
    Undelete {
        key: usize,
    },
    /// DESTROY of the version `back` before the current one.
    Destroy {
        key: usize,
        back: u64,
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
    Stage {
        key: usize,
        secret: Vec<u8>,
    },
    Promote {
        key: usize,
        long_grace: bool,
    },
    GetPending {
        key: usize,
    },
    /// SET_POLICY: `max_versions` 0 (the server's) or 1..=3, compare-and-set required or not.
    SetPolicy {
        key: usize,
        max_versions: u16,
        cas_required: bool,
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
        2 => (key.clone(), any::<bool>()).prop_map(|(key, purge)| Operation::Delete { key, purge }),
        1 => key.clone().prop_map(|key| Operation::Undelete { key }),
        1 => (key.clone(), 0u64..4).prop_map(|(key, back)| Operation::Destroy { key, back }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, correct)| Operation::CompareAndDelete { key, correct }),
        2 => key.clone().prop_map(|key| Operation::Get { key }),
        2 => (key.clone(), 0u64..12).prop_map(|(key, back)| Operation::GetVersion { key, back }),
        1 => key.clone().prop_map(|key| Operation::GetMeta { key }),
        1 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..48)).prop_map(|(key, secret)| Operation::Stage { key, secret }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, long_grace)| Operation::Promote { key, long_grace }),
        1 => key.clone().prop_map(|key| Operation::GetPending { key }),
        1 => (key, 0u16..4, any::<bool>())
            .prop_map(|(key, max_versions, cas_required)| Operation::SetPolicy { key, max_versions, cas_required }),
        1 => (0usize..2, 1u16..4).prop_map(|(owner, limit)| Operation::List { owner, limit }),
    ]
}

/// One kept version in the model, and how the next version replaced it (if it did).
#[derive(Clone, Debug)]
struct ModelVersion {
    version: u64,
    secret: Vec<u8>,
    replaced: VersionState,
    destroyed: bool,
}

impl ModelVersion {
    fn state(&self) -> VersionState {
        if self.destroyed {
            VersionState::Destroyed
        } else {
            self.replaced
        }
    }
}

#[derive(Clone, Debug)]
struct ModelCredential {
    owner: String,
    /// Newest first, at most MAX_VERSIONS.
    versions: Vec<ModelVersion>,
    /// Deleted, recoverable with UNDELETE (the test's window is far longer than a case).
    deleted: bool,
    /// STAGE's version and secret, until PROMOTE or a PUT or ROTATE.
    pending: Option<(u64, Vec<u8>)>,
    /// Its policy's: versions kept (MAX_VERSIONS by default) and whether every write must
    /// name the version it expects.
    max_versions: usize,
    cas_required: bool,
}

impl ModelCredential {
    fn current(&self) -> &ModelVersion {
        &self.versions[0]
    }

    /// The highest version used: the pending one's, else the current one's.
    fn last_version(&self) -> u64 {
        self.pending.as_ref().map_or(self.current().version, |(version, _)| *version)
    }

    /// A new current version (after the pending one, which it drops).
    fn push(&mut self, secret: &[u8], replaced_as: VersionState) -> u64 {
        let version = self.last_version() + 1;
        self.pending = None;
        self.promote(version, secret, replaced_as);
        version
    }

    /// `version` made current.
    fn promote(&mut self, version: u64, secret: &[u8], replaced_as: VersionState) {
        self.versions[0].replaced = replaced_as;
        self.versions.insert(
            0,
            ModelVersion {
                version,
                secret: secret.to_vec(),
                replaced: VersionState::Current,
                destroyed: false,
            },
        );
        self.versions.truncate(self.max_versions);
    }
}

type Model = HashMap<String, ModelCredential>;

fn status<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Status {
    result.expect_err("expected an error").status().expect("a server status, not a connection failure")
}

struct Case<'a> {
    client: Client,
    /// Live and deleted credentials.
    model: Model,
    /// The last version of each purged id.
    purged: HashMap<String, u64>,
    prefix: &'a str,
}

impl Case<'_> {
    fn id(&self, key: usize) -> String {
        format!("{}-{key}", self.prefix)
    }

    fn owner(&self, owner: usize) -> String {
        format!("{}-owner-{owner}", self.prefix)
    }

    /// The live credential (not deleted).
    fn live(&self, id: &str) -> Option<&ModelCredential> {
        self.model.get(id).filter(|credential| !credential.deleted)
    }

    /// The current version for compare-and-set: 0 when absent or deleted.
    fn current_version(&self, id: &str) -> u64 {
        self.live(id).map_or(0, |credential| credential.current().version)
    }

    /// Whether a write without an expected version, of a credential held live (`live_only`)
    /// or deleted too, must be refused by its policy; if so, checks that it was (with the
    /// version it should have named) and returns true.
    fn refused_by_policy<T: std::fmt::Debug>(
        &self,
        id: &str,
        live_only: bool,
        named: u64,
        result: &Result<T, ClientError>,
    ) -> bool {
        let credential = self.model.get(id).filter(|credential| !live_only || !credential.deleted);
        if !credential.is_some_and(|credential| credential.cas_required) {
            return false;
        }
        let error = result.as_ref().expect_err("a write without an expected version passed its policy");
        assert_eq!((error.status(), error.current_version()), (Some(Status::VersionConflict), Some(named)), "{error}");
        true
    }

    fn check(&mut self, operation: &Operation) {
        match operation {
            Operation::Put { key, owner, secret } => {
                let (id, owner) = (self.id(*key), self.owner(*owner));
                let mut request = put(&id, secret);
                request.owner = &owner;
                let result = self.client.put(&request);
                if self.refused_by_policy(&id, false, self.current_version(&id), &result) {
                    return;
                }
                self.apply_put(&id, &owner, secret, result.unwrap());
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
                        assert!(self.live(&id).is_none());
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
                let result = self.client.rotate(&request);
                if self.refused_by_policy(&id, true, self.current_version(&id), &result) {
                    return;
                }
                let live = self.model.get_mut(&id).filter(|credential| !credential.deleted);
                match (result, live) {
                    (Ok(version), Some(credential)) => {
                        let replaced =
                            if *long_grace { VersionState::PreviousInGrace } else { VersionState::Retired };
                        assert_eq!(credential.push(secret, replaced), version);
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("rotate {result:?} with model state {state:?}"),
                }
            }
            Operation::Delete { key, purge } => {
                let id = self.id(*key);
                let request = DeleteRequest { purge: *purge, ..DeleteRequest::new(&id, None) };
                let result = self.client.delete_with(&request);
                if self.refused_by_policy(&id, !purge, self.current_version(&id), &result) {
                    return;
                }
                let credential = self.model.get_mut(&id).filter(|credential| *purge || !credential.deleted);
                match (result, credential) {
                    (Ok(reply), Some(credential)) => {
                        assert_eq!(reply.version, credential.current().version);
                        credential.deleted = true;
                        if *purge {
                            // A purge remembers the highest version used, a pending one's too.
                            self.purged.insert(id.clone(), credential.last_version());
                            self.model.remove(&id);
                        }
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("delete {result:?} with model state {state:?}"),
                }
            }
            Operation::Undelete { key } => {
                let id = self.id(*key);
                match (self.client.undelete(&id), self.model.get_mut(&id)) {
                    (Ok(version), Some(credential)) => {
                        assert_eq!(version, credential.current().version);
                        credential.deleted = false;
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("undelete {result:?} with model state {state:?}"),
                }
            }
            Operation::Destroy { key, back } => {
                let id = self.id(*key);
                let Some(credential) = self.model.get_mut(&id).filter(|credential| !credential.deleted)
                else {
                    assert_eq!(status(self.client.destroy(&id, 1)), Status::NotFound);
                    return;
                };
                let wanted = credential.current().version.saturating_sub(*back).max(1);
                let kept = credential.versions.iter_mut().find(|kept| kept.version == wanted);
                match (self.client.destroy(&id, wanted), kept) {
                    (Ok(version), Some(kept)) => {
                        assert_eq!(version, wanted);
                        kept.destroyed = true;
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, kept) => panic!("destroy {wanted}: {result:?} with model state {kept:?}"),
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
                        self.model.get_mut(&id).expect("a live credential").deleted = true;
                    }
                    Err(error) => {
                        assert!(!correct);
                        assert_eq!(error.current_version(), Some(current));
                    }
                }
            }
            Operation::Get { key } => {
                let id = self.id(*key);
                let result = self.client.get(&id);
                let live = self.live(&id).filter(|credential| !credential.current().destroyed);
                match (result, live) {
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
                let Some(credential) = self.live(&id) else {
                    assert_eq!(status(self.client.get_version(&id, 1)), Status::NotFound);
                    return;
                };
                let wanted = credential.current().version.saturating_sub(*back).max(1);
                let kept = credential.versions.iter().find(|kept| kept.version == wanted).cloned();
                match (self.client.get_version(&id, wanted), kept) {
                    (Err(error), Some(kept)) if kept.destroyed => {
                        assert_eq!(error.status(), Some(Status::NotFound), "destroyed version {wanted}")
                    }
                    (Ok(reply), Some(kept)) => {
                        assert!(!kept.destroyed, "a destroyed version was returned");
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
                let result = self.client.get_meta(&id);
                match (result, self.live(&id)) {
                    (Ok(reply), Some(credential)) => {
                        let states: Vec<(u64, VersionState)> =
                            reply.versions.iter().map(|info| (info.version, info.state)).collect();
                        let pending =
                            credential.pending.iter().map(|(version, _)| (*version, VersionState::Pending));
                        let expected: Vec<(u64, VersionState)> = pending
                            .chain(credential.versions.iter().map(|kept| (kept.version, kept.state())))
                            .collect();
                        assert_eq!(states, expected);
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("get_meta {result:?} with model state {state:?}"),
                }
            }
            Operation::Stage { key, secret } => {
                let id = self.id(*key);
                let owner =
                    self.model.get(&id).map_or_else(|| self.owner(0), |credential| credential.owner.clone());
                let mut request = put(&id, secret);
                request.owner = &owner;
                let result = self.client.stage(&request);
                if self.refused_by_policy(&id, true, self.current_version(&id), &result) {
                    return;
                }
                let live = self.model.get_mut(&id).filter(|credential| !credential.deleted);
                match (result, live) {
                    (Ok(version), Some(credential)) => {
                        assert_eq!(
                            version,
                            credential.last_version() + 1,
                            "{id}: after the last version used"
                        );
                        credential.pending = Some((version, secret.clone()));
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("stage {result:?} with model state {state:?}"),
                }
            }
            Operation::Promote { key, long_grace } => {
                let id = self.id(*key);
                let grace = if *long_grace { LONG_GRACE_SECONDS } else { 0 };
                let request =
                    PromoteRequest { id: &id, expected_version: None, grace_period_seconds: Some(grace) };
                let result = self.client.promote(&request);
                // For PROMOTE the version to name is the pending one (0: none).
                let pending = self.live(&id).and_then(|credential| credential.pending.as_ref()).map_or(0, |(version, _)| *version);
                if self.refused_by_policy(&id, true, pending, &result) {
                    return;
                }
                let live = self.model.get_mut(&id).filter(|credential| !credential.deleted);
                match (result, live) {
                    (Ok(version), Some(credential)) => {
                        let (pending, secret) =
                            credential.pending.take().expect("promoted a pending version");
                        assert_eq!(version, pending);
                        let replaced =
                            if *long_grace { VersionState::PreviousInGrace } else { VersionState::Retired };
                        credential.promote(version, &secret, replaced);
                    }
                    (Err(error), live) => {
                        assert_eq!(error.status(), Some(Status::NotFound), "{error}");
                        assert!(live.is_none_or(|credential| credential.pending.is_none()), "{error}");
                    }
                    (result, state) => panic!("promote {result:?} with model state {state:?}"),
                }
            }
            Operation::GetPending { key } => {
                let id = self.id(*key);
                let pending = self.live(&id).and_then(|credential| credential.pending.clone());
                match (self.client.get_stage(&id, Stage::Pending), pending) {
                    (Ok(reply), Some((version, secret))) => {
                        assert_eq!((reply.metadata.version, reply.secret.expose()), (version, &secret[..]));
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, pending) => panic!("get pending {result:?} with model {pending:?}"),
                }
            }
            Operation::SetPolicy { key, max_versions, cas_required } => {
                let id = self.id(*key);
                let policy = Policy { max_versions: *max_versions, cas_required: *cas_required, ..Policy::default() };
                let result = self.client.set_policy(&SetPolicyRequest { id: &id, policy });
                let live = self.model.get_mut(&id).filter(|credential| !credential.deleted);
                match (result, live) {
                    (Ok(version), Some(credential)) => {
                        assert_eq!(version, credential.current().version, "a policy is not a version");
                        credential.max_versions = match max_versions {
                            0 => MAX_VERSIONS,
                            max_versions => usize::from(*max_versions),
                        };
                        credential.versions.truncate(credential.max_versions);
                        credential.cas_required = *cas_required;
                        let stored = self.client.get_policy(&id).unwrap();
                        assert_eq!((stored.max_versions, stored.cas_required), (*max_versions, *cas_required));
                    }
                    (Err(error), None) => assert_eq!(error.status(), Some(Status::NotFound)),
                    (result, state) => panic!("set_policy {result:?} with model state {state:?}"),
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
                    .filter(|(_, credential)| credential.owner == owner && !credential.deleted)
                    .map(|(id, _)| id.clone())
                    .collect();
                assert_eq!(unique, expected);
            }
        }
    }

    fn apply_put(&mut self, id: &str, owner: &str, secret: &[u8], version: u64) {
        match self.model.get_mut(id).filter(|credential| !credential.deleted) {
            Some(credential) => {
                assert_eq!(credential.push(secret, VersionState::Superseded), version);
                credential.owner = owner.to_owned();
            }
            None => {
                // A new history; a deleted or purged id's versions go on from its last, and a
                // deleted one keeps its policy.
                let last = match self.model.get(id) {
                    Some(deleted) => deleted.last_version(),
                    None => self.purged.get(id).copied().unwrap_or(0),
                };
                let (max_versions, cas_required) = self
                    .model
                    .get(id)
                    .map_or((MAX_VERSIONS, false), |deleted| (deleted.max_versions, deleted.cas_required));
                assert_eq!(version, last + 1, "{id}: versions never restart");
                let first = ModelVersion {
                    version,
                    secret: secret.to_vec(),
                    replaced: VersionState::Current,
                    destroyed: false,
                };
                self.model.insert(
                    id.to_owned(),
                    ModelCredential {
                        owner: owner.to_owned(),
                        versions: vec![first],
                        deleted: false,
                        pending: None,
                        max_versions,
                        cas_required,
                    },
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
        let Some(client) = model_client() else { return Ok(()) };
        let prefix = format!("model-{}", CASE.fetch_add(1, Ordering::Relaxed));
        let mut case = Case { client, model: Model::new(), purged: HashMap::new(), prefix: &prefix };
        for operation in &operations {
            case.check(operation);
        }
        // Finally every id of this case agrees with the model.
        for key in 0..KEYS {
            let id = case.id(key);
            let stored = case.client.get(&id).ok().map(|reply| (reply.metadata.version, reply.secret.expose().to_vec()));
            let expected = case
                .live(&id)
                .filter(|credential| !credential.current().destroyed)
                .map(|credential| (credential.current().version, credential.current().secret.clone()));
            prop_assert_eq!(stored, expected);
        }
    }
}
