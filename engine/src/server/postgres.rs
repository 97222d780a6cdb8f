//! Serving with PostgreSQL as the system of record (`--store postgres://…`).
//!
//! The shards' maps hold every credential, as with the embedded log (a bounded cache is
//! still to come), but the database decides every write: a shard prepares a write against
//! its map (access, compare-and-set, sealing), the database commits it only if its current
//! version is still the one the shard saw, and only then does the shard install it and
//! answer. A shard whose view was stale reads the credential again and retries. Each
//! executor follows the database's change log for its own shard, so that writes made by
//! other instances replace what it holds, within a poll interval or so.
//!
//! - write path: [`spawn_writer`], fed by the router with every write of this shard;
//! - coherence: [`spawn_follower`];
//! - expiry: [`spawn_sweeper`] (removals are conditional deletes in the database);
//! - start: [`PgRing`] (the key ring's row), [`load`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use credshard_protocol::{Limits, Request};
use std::cell::{Cell, RefCell};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use crate::crypto::SharedRing;
use crate::data::{
    Deletion, Effect, Entry, FetchedState, ListPage, Prepared, Record, ShardWriter, Store, StoredPolicy,
    Write,
};
use crate::error::{EngineError, OpError};
use crate::metrics::{ExecutorMetrics, Metrics};
use crate::server::router::{LoadMessage, LoadOutcome, LoadedCredentials, Router, WriteMessage};
use crate::storage::postgres::follow::Follower;
use crate::storage::postgres::rows::{
    self, Base, ChangeKind, Outcome, RowWrite, StateOp, StateWrite, VersionWrite,
};
use crate::storage::postgres::{Database, DbError};
use crate::storage::wal;
use crate::storage::Shards;
use credshard_protocol::op::policy::Policy;
use credshard_protocol::op::watch::Change as WatchChange;
use credshard_protocol::wire::Reader;

/// How often an instance trims the change log, at most.
const TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// Tries of a write whose shard keeps finding its view of the credential stale.
const STALE_RETRIES: usize = 8;
/// Changes read per poll of the change log.
const FOLLOW_PAGE: i64 = 1000;

/// The key ring's row in the database.
pub struct PgRing(pub Database);

impl SharedRing for PgRing {
    fn load(&self) -> std::io::Result<Option<(i64, Vec<u8>)>> {
        self.0
            .run_blocking(|pool| async move { rows::ring(&pool.get().await?).await })
            .map_err(std::io::Error::other)
    }

    fn store(&self, generation: Option<i64>, bytes: &[u8]) -> std::io::Result<bool> {
        let bytes = bytes.to_vec();
        self.0
            .run_blocking(move |pool| async move {
                rows::replace_ring(&pool.get().await?, generation, &bytes).await
            })
            .map_err(std::io::Error::other)
    }
}

/// Fills the shards from the database; returns the change-log position to follow from
/// (read before the load, so that no change made during it is missed).
///
/// # Errors
/// Database errors, or a stored record that fails validation.
pub fn load(database: &Database, store: &Store) -> Result<i64, EngineError> {
    let fail = |error: DbError| EngineError::Start(format!("{}: {error}", database.target()));
    let from = database
        .run_blocking(|pool| async move { rows::last_change(&pool.get().await?).await })
        .map_err(fail)?;
    if let Some(shard_capacity) = store.shard_capacity() {
        let count = database
            .run_blocking(|pool| async move { rows::credential_count(&pool.get().await?).await })
            .map_err(fail)?;
        if count as u64 > (shard_capacity * store.shard_count()) as u64 {
            // More than fit: start empty, and read each credential when it is first asked for.
            for shard_id in 0..store.shard_count() {
                store.shard(shard_id).complete.store(false, std::sync::atomic::Ordering::Release);
            }
            tracing::info!(
                credentials = count,
                database = database.target(),
                "more credentials than --cache-capacity: each is read when first asked for"
            );
            return Ok(from);
        }
    }
    let all = database
        .run_blocking(|pool| async move { rows::all_credentials(&pool.get().await?).await })
        .map_err(fail)?;
    let mut per_shard: Vec<Vec<wal::Entry<'_>>> = vec![Vec::new(); store.shard_count()];
    let mut versions = 0;
    for credential in &all {
        versions += credential.records.len();
        replay_entries(credential, &mut per_shard[store.shard_for(&credential.id)])?;
    }
    for (shard_id, entries) in per_shard.iter().enumerate() {
        store.replay(shard_id, &[entries], true)?;
    }
    tracing::info!(versions, credentials = store.len(), database = database.target(), "loaded");
    Ok(from)
}

/// A credential read from the database as the log entries a snapshot would hold for it, so
/// that loading it is recovery's replay: its versions oldest first, its policy right after
/// the oldest (the others are kept by its rule), its pending version, its deletion.
fn replay_entries<'a>(
    credential: &'a rows::Fetched,
    entries: &mut Vec<wal::Entry<'a>>,
) -> Result<(), EngineError> {
    let id = credential.id.as_str();
    let state = &credential.state;
    let version_of = |bytes: &[u8]| -> Result<u64, EngineError> { Ok(Record::from_bytes(bytes)?.version()) };
    // A purged id's last version is not loaded: the database remembers it, refuses a write
    // that would reuse it, and the re-read after that refusal brings it back.
    let Some((oldest, newer)) = credential.records.split_first() else { return Ok(()) };
    entries.push(wal::Entry::Record(oldest));
    if let Some(policy) = &state.policy {
        entries.push(wal::Entry::Policy { id, version: version_of(oldest)?, policy });
    }
    entries.extend(newer.iter().map(|record| wal::Entry::Record(record)));
    if let Some(pending) = &state.pending {
        entries.push(wal::Entry::Pending(pending));
    }
    if state.purge_at_ms != 0 {
        let current = credential.records.last().expect("split above");
        entries.push(wal::Entry::SoftDelete {
            id,
            version: version_of(current)?,
            deleted_at_ms: state.deleted_at_ms as u64,
            purge_at_ms: state.purge_at_ms as u64,
        });
    }
    Ok(())
}

/// Parses an archived record read from the database's row of `id`. A record of another id is
/// corrupt: a shard files an entry under its current record's id, so it would land on another
/// credential's entry.
fn parse_record(bytes: &[u8], id: &str) -> Result<Record, DbError> {
    let record = Record::from_bytes(bytes).map_err(|error| DbError::Corrupt(error.to_string()))?;
    if record.credential().id.as_str() != id {
        return Err(DbError::Corrupt(format!(
            "the row of {id:?} holds a record of {:?}",
            record.credential().id.as_str()
        )));
    }
    Ok(record)
}

/// What a credential has beside its kept versions, from the database's row.
fn fetched_state(state: &rows::StateRow, id: &str) -> Result<FetchedState, DbError> {
    let policy = match &state.policy {
        None => None,
        Some(bytes) => {
            let policy = Policy::decode(&mut Reader::new(bytes), &Limits::client())
                .map_err(|error| DbError::Corrupt(format!("a stored policy: {error}")))?;
            StoredPolicy::of(&policy)
        }
    };
    Ok(FetchedState {
        deletion: (state.purge_at_ms != 0).then_some(Deletion {
            deleted_at_ms: state.deleted_at_ms as u64,
            purge_at_ms: state.purge_at_ms as u64,
        }),
        pending: state.pending.as_deref().map(|bytes| parse_record(bytes, id)).transpose()?,
        policy,
        purged_version: state.purged_version as u64,
    })
}

/// Credentials of [`rows::credentials`] by id: their kept versions (oldest first) and state.
fn group_fetched(
    fetched: Vec<rows::Fetched>,
) -> Result<HashMap<String, (Vec<Record>, FetchedState)>, DbError> {
    let mut by_id = HashMap::with_capacity(fetched.len());
    for credential in fetched {
        let records = credential
            .records
            .iter()
            .map(|bytes| parse_record(bytes, &credential.id))
            .collect::<Result<_, _>>()?;
        let state = fetched_state(&credential.state, &credential.id)?;
        by_id.insert(credential.id, (records, state));
    }
    Ok(by_id)
}

/// Why a credential is read again from the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reread {
    /// It may have new versions: read from the version the shard holds up.
    Newer,
    /// Its state or its kept versions changed in place (a deletion, a pending version, a
    /// policy, a destroyed version): read whole.
    Whole,
    /// Purged at this version (the change log said so): read whole; a cached version above
    /// it is kept.
    Purged(u64),
}

impl Reread {
    fn purged_version(self) -> Option<u64> {
        match self {
            Reread::Purged(version) => Some(version),
            _ => None,
        }
    }
}

/// Installs credentials read whole (`fetched` of [`rows::credentials`]), each with the purge
/// the change log told of, if any. A partial cache installs an id it does not hold only
/// through its loader, which the follower tells about changes: rows read here may already be
/// older than a change the follower skipped (it skips what the shard does not hold).
fn install_whole(
    router: &Router,
    store: &Store,
    mark: u64,
    fetched: Vec<rows::Fetched>,
    ids: Vec<(String, Reread)>,
) -> Result<(), DbError> {
    let mut by_id = group_fetched(fetched)?;
    for (id, why) in ids {
        if !store.may_exist_uncached(&id) {
            let (records, state) = by_id.remove(&id).unwrap_or_default();
            router
                .with_writer(|writer| writer.install_reread(mark, &id, records, why.purged_version(), state));
        }
    }
    Ok(())
}

/// Reads several credentials in one round trip and installs each in its shard. A credential
/// the shard holds that may only have new versions is read from the version it holds up
/// (usually one new version, where reading every kept version again cost the database ten
/// rows per write at the default `--max-versions`); the others are read whole.
async fn refresh_many(
    router: &Router,
    database: &Database,
    ids: Vec<(String, Reread)>,
    counters: &ExecutorMetrics,
) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mark = router.with_writer(|writer| writer.begin_reread());
    let reread = reread_many(router, database, ids, counters, mark).await;
    router.with_writer(|writer| writer.end_reread(mark));
    reread
}

/// [`refresh_many`]'s reads and installs, for a re-read that began at `mark`.
async fn reread_many(
    router: &Router,
    database: &Database,
    ids: Vec<(String, Reread)>,
    counters: &ExecutorMetrics,
    mark: u64,
) -> Result<(), DbError> {
    let count = ids.len() as u64;
    let (mut whole, mut newer_than) = (Vec::new(), Vec::new());
    for (id, why) in ids {
        let cached = router.with_writer(|writer| writer.cached_version(&id));
        match why {
            Reread::Newer if cached != 0 => newer_than.push((id, cached)),
            Reread::Newer => whole.push((id, Reread::Whole)),
            _ => whole.push((id, why)),
        }
    }
    let whole_ids: Vec<String> = whole.iter().map(|(id, _)| id.clone()).collect();
    let (newer_ids, after): (Vec<String>, Vec<i64>) =
        newer_than.iter().map(|(id, cached)| (id.clone(), *cached as i64)).unzip();
    let held: HashMap<String, u64> = newer_than.into_iter().collect();
    let (fetched, newer) = database
        .run(move |pool| async move {
            let client = pool.get().await?;
            // Both queries pipelined on one connection.
            let whole = async {
                if whole_ids.is_empty() {
                    Ok(Vec::new())
                } else {
                    rows::credentials(&client, &whole_ids).await
                }
            };
            let newer = async {
                if newer_ids.is_empty() {
                    Ok(Vec::new())
                } else {
                    rows::newer_versions(&client, &newer_ids, &after).await
                }
            };
            futures::try_join!(whole, newer)
        })
        .await?;
    let store: Arc<Store> = router.with_writer(|writer| Arc::clone(writer.store()));
    install_whole(router, &store, mark, fetched, whole)?;
    // Read whole after all: what the shard held is not what the database has under that
    // version (deleted and created again since).
    let mut replaced = Vec::new();
    for changed in newer {
        if store.may_exist_uncached(&changed.id) {
            continue;
        }
        let held = held.get(&changed.id).copied().unwrap_or(0);
        let state = fetched_state(&changed.state, &changed.id)?;
        let Some(oldest) = changed.oldest_kept else {
            // Gone from the database: read whole, for the version it was purged at.
            replaced.push((changed.id, Reread::Whole));
            continue;
        };
        let mut records = Vec::with_capacity(changed.records.len());
        for bytes in &changed.records {
            records.push(parse_record(bytes, &changed.id)?);
        }
        if oldest > held as i64 {
            // Everything the shard held was trimmed since: what was read is all there is.
            router.with_writer(|writer| writer.install_reread(mark, &changed.id, records, None, state));
            continue;
        }
        let installed = router.with_writer(|writer| {
            // What the shard held when asked (if the database still has it under that
            // version), then what is new: the whole kept state, as a full read gives it.
            let Some(first) = records.first().filter(|first| first.version() == held) else { return false };
            let mut kept =
                writer.cached_records(&changed.id, oldest.max(1) as u64, held, first.archive_bytes());
            if kept.is_empty() {
                return false;
            }
            kept.extend(records.drain(1..));
            writer.install_reread(mark, &changed.id, kept, None, state);
            true
        });
        if !installed {
            // What the shard holds of it is not what the database has under those numbers
            // (a destroyed or re-encrypted version, or a build before migration 5's restarted
            // versions): read whole, and it replaces what the shard held.
            replaced.push((changed.id, Reread::Purged(held)));
        }
    }
    if !replaced.is_empty() {
        let ids: Vec<String> = replaced.iter().map(|(id, _)| id.clone()).collect();
        let fetched = database
            .run(move |pool| async move { rows::credentials(&pool.get().await?, &ids).await })
            .await?;
        install_whole(router, &store, mark, fetched, replaced)?;
    }
    ExecutorMetrics::add(&counters.db_credentials_reread, count);
    Ok(())
}

/// Queries of one shard's loader reading from the database at once, at most.
const LOADS_IN_FLIGHT: usize = 4;
/// Ids one load query reads, at most.
const LOAD_IDS_MAX: usize = 256;

/// Ids one load query reads: [`LOAD_IDS_MAX`], but in a cache so small that the loads in
/// flight could fill it, no more than a share that leaves half of it alone (otherwise the
/// ids a query installs evict each other before their readers get to them).
fn load_ids_max(router: &Router) -> usize {
    let capacity = router.with_writer(|writer| writer.store().shard_capacity()).unwrap_or(usize::MAX);
    LOAD_IDS_MAX.min(capacity / (2 * LOADS_IN_FLIGHT)).max(1)
}

/// One message's wait for its ids: answered when the last of them is read.
struct LoadReply {
    ids_left: usize,
    loaded: LoadedCredentials,
    failure: Option<OpError>,
    reply: Option<futures::channel::oneshot::Sender<LoadOutcome>>,
}

impl LoadReply {
    /// One of the message's ids was read: `Ok(Some(entry))` found (and installed), `Ok(None)`
    /// absent.
    fn settle(&mut self, id: &str, found: Result<Option<Arc<Entry>>, OpError>) {
        match found {
            Ok(Some(entry)) => self.loaded.found.push((id.into(), entry)),
            Ok(None) => self.loaded.absent.push(id.into()),
            Err(error) => self.failure = Some(error),
        }
        self.ids_left -= 1;
        if self.ids_left == 0 {
            if let Some(reply) = self.reply.take() {
                let loaded = std::mem::take(&mut self.loaded);
                let _ = reply.send(self.failure.map_or(Ok(loaded), Err));
            }
        }
    }
}

/// An id being read: who waits for it, and whether the change log reported a change of it
/// while it was being read (then the rows read may predate the change: it is read again).
struct Loading {
    waiters: Vec<Rc<RefCell<LoadReply>>>,
    changed: bool,
    /// Reads repeated because of a change, so far.
    rereads: usize,
}

/// Reads of an id repeated because the change log keeps reporting changes of it, before its
/// waiters are answered UNAVAILABLE.
const LOAD_REREADS_MAX: usize = 8;

/// A shard's loader, with a bounded cache: reads credentials its map misses from the
/// database and installs them. Every id is read once however many wait for it (single
/// flight), and the ids waiting when a query starts go in that one query (`= ANY($1)`), so
/// misses group the way writes do.
pub struct Loader {
    router: Rc<Router>,
    database: Database,
    metrics: Arc<Metrics>,
    loading: RefCell<HashMap<Box<str>, Loading>>,
    /// Ids in `loading` not in a query yet, oldest first.
    queued: RefCell<VecDeque<Box<str>>>,
    in_flight: Cell<usize>,
    /// Rung when a query ends.
    done: LocalSender<()>,
}

impl Loader {
    /// Takes a message's ids: those the shard holds (or that are not its) are settled at once.
    fn accept(&self, message: LoadMessage) {
        if message.ids.is_empty() {
            let _ = message.reply.send(Ok(LoadedCredentials::default()));
            return;
        }
        let reply = Rc::new(RefCell::new(LoadReply {
            ids_left: message.ids.len(),
            loaded: LoadedCredentials::default(),
            failure: None,
            reply: Some(message.reply),
        }));
        let store = self.router.with_writer(|writer| Arc::clone(writer.store()));
        for id in message.ids {
            if !store.may_exist_uncached(&id) {
                // Held now (or known not to exist): answered from the shard's map.
                let held = store
                    .shard(store.shard_for(&id))
                    .map
                    .pin()
                    .get(&*id)
                    .map(|entry| Arc::new(entry.snapshot()));
                reply.borrow_mut().settle(&id, Ok(held));
                continue;
            }
            let mut loading = self.loading.borrow_mut();
            let entry = loading.entry(id.clone()).or_insert_with(|| {
                self.queued.borrow_mut().push_back(id);
                Loading { waiters: Vec::new(), changed: false, rereads: 0 }
            });
            entry.waiters.push(Rc::clone(&reply));
        }
    }

    /// Makes the loader's loop start queries for what [`Loader::accept`] took outside it.
    fn wake(&self) {
        // A full channel already holds a wake-up.
        let _ = self.done.try_send(());
    }

    /// Called by the change-log follower for every change of this shard: true if the id is
    /// being read (the read is then repeated, so that what it installs is not older than the
    /// change).
    pub fn note_change(&self, id: &str) -> bool {
        match self.loading.borrow_mut().get_mut(id) {
            Some(loading) => {
                loading.changed = true;
                true
            }
            None => false,
        }
    }
}

/// Starts this shard's loader, fed by `queue` (the router's load queue).
pub fn spawn_loader(
    router: Rc<Router>,
    queue: LocalReceiver<LoadMessage>,
    database: Database,
    metrics: Arc<Metrics>,
) -> Rc<Loader> {
    let (done, ended) = local_channel::new_bounded(LOADS_IN_FLIGHT);
    let loader = Rc::new(Loader {
        router,
        database,
        metrics,
        loading: RefCell::default(),
        queued: RefCell::default(),
        in_flight: Cell::new(0),
        done,
    });
    let running = Rc::clone(&loader);
    glommio::spawn_local(async move {
        let loader = running;
        loop {
            while let Some(message) = futures::FutureExt::now_or_never(queue.recv()).flatten() {
                loader.accept(message);
            }
            while loader.in_flight.get() < LOADS_IN_FLIGHT && !loader.queued.borrow().is_empty() {
                start_load(&loader);
            }
            let next = std::pin::pin!(queue.recv());
            let ended_load = std::pin::pin!(ended.recv());
            match futures::future::select(next, ended_load).await {
                futures::future::Either::Left((Some(message), _)) => loader.accept(message),
                futures::future::Either::Left((None, _)) => return,
                futures::future::Either::Right(_) => {}
            }
        }
    })
    .detach();
    loader
}

/// Reads up to [`LOAD_IDS_MAX`] queued ids in one query, installs what it finds, and
/// settles their waiters (an id the change log changed meanwhile is queued again instead).
fn start_load(loader: &Rc<Loader>) {
    let ids: Vec<Box<str>> = {
        let mut queued = loader.queued.borrow_mut();
        let take = queued.len().min(load_ids_max(&loader.router));
        queued.drain(..take).collect()
    };
    loader.in_flight.set(loader.in_flight.get() + 1);
    let loader = Rc::clone(loader);
    glommio::spawn_local(async move {
        let counters = loader.metrics.executor(loader.router.shard_id());
        ExecutorMetrics::add(&counters.cache_loads, 1);
        ExecutorMetrics::add(&counters.cache_misses, ids.len() as u64);
        let wanted: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let read = loader
            .database
            .run(move |pool| async move { rows::credentials(&pool.get().await?, &wanted).await })
            .await;
        let mut read = read.and_then(group_fetched);
        if let Err(error) = &read {
            tracing::warn!(%error, count = ids.len(), "reading credentials the cache missed failed");
        }
        for id in ids {
            let waiters = {
                let mut loading = loader.loading.borrow_mut();
                let Some(state) = loading.get_mut(&id) else { continue };
                let changed = read.is_ok() && state.changed;
                if changed && state.rereads < LOAD_REREADS_MAX {
                    state.changed = false;
                    state.rereads += 1;
                    loader.queued.borrow_mut().push_back(id);
                    continue;
                }
                let waiters = loading.remove(&id).map(|state| state.waiters).unwrap_or_default();
                if changed {
                    // Nothing installed: what was read may predate a change.
                    let error = OpError::Unavailable("this credential keeps changing; try again");
                    for waiter in waiters {
                        waiter.borrow_mut().settle(&id, Err(error));
                    }
                    continue;
                }
                waiters
            };
            let found = match &mut read {
                Err(_) => {
                    Err(OpError::Unavailable("the database is unavailable; the credential is not cached"))
                }
                Ok(by_id) => {
                    let (records, state) = by_id.remove(&*id).unwrap_or_default();
                    let entry = (!records.is_empty()).then(|| Arc::new(Entry::of_fetched(&records, &state)));
                    // An absent id is installed too: its last version, if it was purged.
                    loader.router.with_writer(|writer| writer.install_fetched(&id, records, None, state));
                    Ok(entry)
                }
            };
            for waiter in waiters {
                waiter.borrow_mut().settle(&id, found.clone());
            }
        }
        loader.in_flight.set(loader.in_flight.get() - 1);
        let _ = loader.done.try_send(());
    })
    .detach();
}

/// One LIST page from the database (a partial cache cannot list): the request's limit of
/// items after its cursor, and whether more follow.
///
/// # Errors
/// [`OpError::InvalidCursor`] for a cursor this query did not make; [`OpError::Unavailable`]
/// when the database cannot be read.
pub async fn list_page(
    database: &Database,
    request: &credshard_protocol::op::list::ListRequest<'_>,
    now_ms: u64,
) -> Result<ListPage, OpError> {
    let query = crate::data::index::ListQuery::new(request)?;
    let by_owner = !query.owner().is_empty();
    let owner = query.owner().to_owned();
    let scope = query.scope().to_owned();
    let after = query.after().map(|(first, second)| (first.to_string(), second.to_string()));
    let limit = request.limit as usize;
    let rows = database
        .run(move |pool| async move {
            let after = after.as_ref().map(|(first, second)| (first.as_str(), second.as_str()));
            rows::list_page(&pool.get().await?, &owner, &scope, after, now_ms as i64, limit as i64 + 1).await
        })
        .await
        .map_err(|error| {
            tracing::warn!(%error, "reading a LIST page from the database failed");
            OpError::Unavailable("the database is unavailable; LIST needs it")
        })?;
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    for (scope, id, bytes) in rows.into_iter().take(limit) {
        let record = parse_record(&bytes, &id).map_err(|error| {
            tracing::warn!(%error, "a LIST page's row failed validation");
            OpError::Internal("a stored record failed validation")
        })?;
        let key = if by_owner { (scope.into(), id.into()) } else { (id.into(), Box::from("")) };
        items.push((key, record));
    }
    Ok(ListPage { items, more })
}

/// A prepared write as the database job needs it (owned, to cross to the database thread).
struct Commit {
    id: String,
    base_version: i64,
    at_ms: i64,
    /// What a watcher is told (WATCH's change code).
    change: i16,
    /// What the writer saw beside the base version (deleted, its policy encoded, its pending
    /// version), which the database must agree on.
    base_deleted: bool,
    base_policy: Option<Vec<u8>>,
    base_pending: i64,
    planned: Planned,
}

enum Planned {
    /// A new current version (PUT, ROTATE): in the round's statement.
    Version(NewVersion),
    /// A purge: in the round's statement.
    Purge,
    /// Anything else: a statement of its own.
    State(StateChange),
}

struct NewVersion {
    version: i64,
    owner: String,
    scope: String,
    expires_at_ms: i64,
    record: Vec<u8>,
    keep_from_version: i64,
}

/// [`rows::StateWrite`], owned.
struct StateChange {
    version: i64,
    owner: String,
    scope: String,
    op: StateChangeOp,
}

enum StateChangeOp {
    SoftDelete { deleted_at_ms: i64, purge_at_ms: i64 },
    Undelete,
    Destroy { husk: Vec<u8> },
    Stage { record: Vec<u8>, replaces: i64 },
    Promote { record: Vec<u8>, expires_at_ms: i64, keep_from: i64 },
    Policy { policy: Option<Vec<u8>>, keep_from: i64 },
    Unchanged,
}

impl Commit {
    /// What the database is to commit for `prepared`, prepared by `writer` (whose entry gives
    /// the versions kept and the owner and scope a watcher is told); `None` when the writer
    /// no longer holds a credential the write needs.
    fn of(
        prepared: &Prepared,
        writer: &ShardWriter,
        change: Option<WatchChange>,
        at_ms: u64,
    ) -> Option<Commit> {
        let keep_from = writer.keep_from_version(prepared) as i64;
        let owned = |record: &Record| record.archive_bytes().to_vec();
        let state = |record: &Record, op: StateChangeOp| {
            let credential = record.credential();
            Planned::State(StateChange {
                version: record.version() as i64,
                owner: credential.owner.as_str().to_owned(),
                scope: credential.scope.as_str().to_owned(),
                op,
            })
        };
        let current = || writer.current_record(prepared.id());
        let planned = match prepared.effect() {
            // Nothing to change, if the database agrees that the credential is live at the
            // version the writer saw, with the version named still kept (so a stale view never
            // answers for it).
            Effect::Nothing => {
                let mut planned = state(&current()?, StateChangeOp::Unchanged);
                if let Planned::State(change) = &mut planned {
                    change.version = prepared.outcome() as i64;
                }
                planned
            }
            Effect::Version(record) => {
                let credential = record.credential();
                Planned::Version(NewVersion {
                    version: record.version() as i64,
                    owner: credential.owner.as_str().to_owned(),
                    scope: credential.scope.as_str().to_owned(),
                    expires_at_ms: credential.expires_at_ms.to_native() as i64,
                    record: owned(record),
                    keep_from_version: keep_from,
                })
            }
            Effect::Purge => Planned::Purge,
            Effect::SoftDelete(deletion) => state(
                &current()?,
                StateChangeOp::SoftDelete {
                    deleted_at_ms: deletion.deleted_at_ms as i64,
                    purge_at_ms: deletion.purge_at_ms as i64,
                },
            ),
            Effect::Undelete => state(&current()?, StateChangeOp::Undelete),
            Effect::Destroy(husk) => state(husk, StateChangeOp::Destroy { husk: owned(husk) }),
            Effect::Pending { record, replaces } => {
                state(record, StateChangeOp::Stage { record: owned(record), replaces: replaces as i64 })
            }
            Effect::Promote(record) => state(
                record,
                StateChangeOp::Promote {
                    record: owned(record),
                    expires_at_ms: record.credential().expires_at_ms.to_native() as i64,
                    keep_from,
                },
            ),
            Effect::Policy(policy) => {
                let encoded = policy.map(encode_policy);
                let mut planned = state(&current()?, StateChangeOp::Policy { policy: encoded, keep_from });
                if let Planned::State(change) = &mut planned {
                    // A policy names the current version.
                    change.version = prepared.base_version() as i64;
                }
                planned
            }
        };
        let (base_deleted, base_policy, base_pending) = writer.base_state(prepared.id());
        Some(Commit {
            id: prepared.id().to_owned(),
            base_version: prepared.base_version() as i64,
            at_ms: at_ms as i64,
            change: change.map_or(0, |change| change as i16),
            base_deleted,
            base_policy: base_policy.as_ref().map(encode_policy),
            base_pending: base_pending as i64,
            planned,
        })
    }

    fn base(&self) -> Base<'_> {
        Base { deleted: self.base_deleted, policy: self.base_policy.as_deref(), pending: self.base_pending }
    }

    /// Its row in the round's statement; `None` for a write committed by a statement of its own.
    fn row(&self) -> Option<RowWrite<'_>> {
        match &self.planned {
            Planned::Purge => Some(RowWrite::Delete {
                id: &self.id,
                base_version: self.base_version,
                at_ms: self.at_ms,
                change: self.change,
                purge_at_ms: 0,
                base: Some(self.base()),
            }),
            Planned::Version(new) => Some(RowWrite::Version(VersionWrite {
                id: &self.id,
                base_version: self.base_version,
                version: new.version,
                owner: &new.owner,
                scope: &new.scope,
                expires_at_ms: new.expires_at_ms,
                record: &new.record,
                keep_from_version: new.keep_from_version,
                at_ms: self.at_ms,
                change: self.change,
                base: self.base(),
            })),
            Planned::State(_) => None,
        }
    }

    /// Its statement, for a write that is not in the round's.
    fn state_write(&self) -> Option<StateWrite<'_>> {
        let Planned::State(change) = &self.planned else { return None };
        let op = match &change.op {
            StateChangeOp::SoftDelete { deleted_at_ms, purge_at_ms } => {
                StateOp::SoftDelete { deleted_at_ms: *deleted_at_ms, purge_at_ms: *purge_at_ms }
            }
            StateChangeOp::Undelete => StateOp::Undelete,
            StateChangeOp::Destroy { husk } => StateOp::Destroy { husk },
            StateChangeOp::Stage { record, replaces } => StateOp::Stage { record, replaces: *replaces },
            StateChangeOp::Promote { record, expires_at_ms, keep_from } => {
                StateOp::Promote { record, expires_at_ms: *expires_at_ms, keep_from: *keep_from }
            }
            StateChangeOp::Policy { policy, keep_from } => {
                StateOp::Policy { policy: policy.as_deref(), keep_from: *keep_from }
            }
            StateChangeOp::Unchanged => StateOp::Unchanged,
        };
        Some(StateWrite {
            id: &self.id,
            base_version: self.base_version,
            version: change.version,
            owner: &change.owner,
            scope: &change.scope,
            at_ms: self.at_ms,
            change: self.change,
            base_policy: self.base_policy.as_deref(),
            op,
        })
    }
}

/// A policy as the database stores it: encoded as on the wire.
fn encode_policy(policy: &StoredPolicy) -> Vec<u8> {
    let mut encoded = Vec::new();
    policy.wire().encode(&mut encoded);
    encoded
}

/// Commits a round of writes (distinct credentials): the new versions and purges as one
/// statement ([`rows::commit`]: one round trip, one transaction, one commit), anything else
/// (as rare as it is) a statement each, pipelined on the same connection. A stale write is
/// one its statement did not apply. A statement that lost a race with another instance's (a
/// deadlock, a serialization failure) changed nothing: each of its writes is then stale, and
/// goes again after its credential is read again.
async fn commit_round(database: &Database, commits: Vec<Commit>) -> Vec<Result<Outcome, DbError>> {
    let count = commits.len();
    let committed = database
        .run(move |pool| async move {
            let client = pool.get().await?;
            let rows: Vec<(usize, RowWrite<'_>)> = commits
                .iter()
                .enumerate()
                .filter_map(|(index, commit)| Some((index, commit.row()?)))
                .collect();
            let states: Vec<(usize, StateWrite<'_>)> = commits
                .iter()
                .enumerate()
                .filter_map(|(index, commit)| Some((index, commit.state_write()?)))
                .collect();
            let round = async {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let writes: Vec<RowWrite<'_>> = rows.iter().map(|(_, row)| *row).collect();
                match rows::commit(&client, &writes).await {
                    Err(error) if rows::lost_a_race(&error) => {
                        tracing::debug!(%error, "a round of writes lost a race; its writes go again");
                        Ok(vec![Outcome::Stale; writes.len()])
                    }
                    committed => committed,
                }
            };
            let each = futures::future::join_all(states.iter().map(|(_, write)| async {
                match rows::commit_state(&client, write).await {
                    Err(error) if rows::lost_a_race(&error) => Ok(Outcome::Stale),
                    committed => committed,
                }
            }));
            let (round, each) = futures::join!(round, each);
            let mut outcomes: Vec<Option<Result<Outcome, DbError>>> =
                (0..commits.len()).map(|_| None).collect();
            match round {
                Ok(round) => {
                    for ((index, _), outcome) in rows.iter().zip(round) {
                        outcomes[*index] = Some(Ok(outcome));
                    }
                }
                Err(error) => {
                    let message = error.to_string();
                    for (index, _) in &rows {
                        outcomes[*index] = Some(Err(DbError::Unavailable(message.clone())));
                    }
                }
            }
            for ((index, _), outcome) in states.iter().zip(each) {
                outcomes[*index] = Some(outcome);
            }
            Ok(outcomes.into_iter().map(|outcome| outcome.expect("every write has an outcome")).collect())
        })
        .await;
    committed.unwrap_or_else(|error: DbError| {
        let message = error.to_string();
        (0..count).map(|_| Err(DbError::Unavailable(message.clone()))).collect()
    })
}

/// Rounds of one shard's writes committing at once, at most.
const ROUNDS_IN_FLIGHT: usize = 8;
/// Writes in one round, at most: a round is one statement on one connection (one database
/// backend), so smaller rounds side by side use more of the database's CPUs, while each
/// still shares one commit.
const ROUND_WRITES_MAX: usize = 8;

/// What reading a write's credential from the database (a partial cache) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loaded {
    /// Not read (the shard held it, or it has not been read yet).
    No,
    /// The database does not have it: the write creates it (the database still decides).
    Absent,
    /// Read and installed this many times (it may be evicted again before it is prepared).
    Found(usize),
}

/// What a shard's database writer and its rounds share.
struct Rounds {
    router: Rc<Router>,
    metrics: Arc<Metrics>,
    database: Database,
    limits: Limits,
    /// Writes not in a round yet, oldest first (retries go back to the front), with their
    /// tries so far and what reading their credential from the database found.
    waiting: RefCell<VecDeque<(WriteMessage, usize, Loaded)>>,
    /// With a bounded cache: reads a credential the shard does not hold before a write of it
    /// is prepared (compare-and-set, ROTATE and DELETE need its current state).
    loader: Option<Rc<Loader>>,
    /// Writes waiting for such a read.
    loading_writes: Cell<usize>,
    /// Credentials with a write in a round: their next write waits, so that it is prepared
    /// against the outcome of this one.
    in_flight: RefCell<HashSet<Box<str>>>,
    rounds: Cell<usize>,
    /// Rung when a round ends.
    done: LocalSender<()>,
}

/// Applies this shard's writes through the database. A round takes the waiting writes (one
/// per credential, none for a credential whose write is still committing), prepares them
/// against the shard's map, and commits them as one transaction ([`commit_round`]); up to
/// [`ROUNDS_IN_FLIGHT`] rounds commit at once. A committed write is installed and answered;
/// a stale one re-reads its credential and waits for a later round.
pub fn spawn_writer(
    router: Rc<Router>,
    queue: LocalReceiver<WriteMessage>,
    database: Database,
    limits: Limits,
    metrics: Arc<Metrics>,
    loader: Option<Rc<Loader>>,
) {
    let (done, ended) = local_channel::new_bounded(ROUNDS_IN_FLIGHT);
    let rounds = Rc::new(Rounds {
        router,
        metrics,
        database,
        limits,
        waiting: RefCell::default(),
        loader,
        loading_writes: Cell::new(0),
        in_flight: RefCell::default(),
        rounds: Cell::new(0),
        done,
    });
    glommio::spawn_local(async move {
        let mut open = true;
        loop {
            while let Some(message) = futures::FutureExt::now_or_never(queue.recv()).flatten() {
                rounds.waiting.borrow_mut().push_back((message, 0, Loaded::No));
            }
            while rounds.rounds.get() < ROUNDS_IN_FLIGHT && start_round(&rounds) {}
            let idle = rounds.rounds.get() == 0 && rounds.loading_writes.get() == 0;
            if !open && rounds.waiting.borrow().is_empty() && idle {
                return;
            }
            // Until a write arrives or a round ends (which may free a credential or retry).
            if open {
                let next = std::pin::pin!(queue.recv());
                let ended_round = std::pin::pin!(ended.recv());
                match futures::future::select(next, ended_round).await {
                    futures::future::Either::Left((Some(message), _)) => {
                        rounds.waiting.borrow_mut().push_back((message, 0, Loaded::No));
                    }
                    futures::future::Either::Left((None, _)) => open = false,
                    futures::future::Either::Right(_) => {}
                }
            } else {
                ended.recv().await;
            }
        }
    })
    .detach();
}

/// Forms a round from the waiting writes and starts committing it; false when no write was
/// ready for one.
fn start_round(rounds: &Rc<Rounds>) -> bool {
    let mut round = Vec::new();
    let mut kept = VecDeque::new();
    let mut in_round = HashSet::new();
    let waiting = std::mem::take(&mut *rounds.waiting.borrow_mut());
    let store = rounds.router.with_writer(|writer| Arc::clone(writer.store()));
    for (message, tries, loaded) in waiting {
        if round.len() == ROUND_WRITES_MAX {
            kept.push_back((message, tries, loaded));
            continue;
        }
        let decoded = Request::decode(message.op as u8, &message.body, &rounds.limits);
        let Ok(request) = decoded else {
            let _ = message.reply.send(Err(OpError::Internal("a write failed to decode")));
            continue;
        };
        let Some(write) = Write::of(&request) else {
            let _ = message.reply.send(Err(OpError::Internal("not a write")));
            continue;
        };
        let id: Box<str> = request.id().expect("writes name a credential").into();
        if rounds.in_flight.borrow().contains(&id) || !in_round.insert(id.clone()) {
            kept.push_back((message, tries, loaded));
            continue;
        }
        if let Some(loader) = &rounds.loader {
            if loaded != Loaded::Absent && store.may_exist_uncached(&id) {
                in_round.remove(&id);
                let reads = match loaded {
                    Loaded::Found(reads) => reads,
                    _ => 0,
                };
                if reads >= crate::server::dispatch::MISS_TRIES {
                    let error =
                        OpError::Unavailable("the cache is too small to hold this write's credential");
                    let _ = message.reply.send(Err(error));
                } else {
                    load_before_writing(rounds, loader, message, tries, reads, id);
                }
                continue;
            }
        }
        let prepared = rounds.router.with_writer(|writer| {
            let prepared = writer.prepare(write, message.received_at_ms, &message.principal.acl)?;
            let change = prepared.announced(&write);
            let commit = Commit::of(&prepared, writer, change, message.received_at_ms);
            Ok((prepared, commit))
        });
        match prepared {
            Ok((prepared, Some(commit))) => round.push((message, tries, prepared, commit)),
            Ok((_, None)) => {
                in_round.remove(&id);
                let _ = message.reply.send(Err(OpError::Internal("a prepared write's credential is gone")));
            }
            Err(error) => {
                in_round.remove(&id);
                let _ = message.reply.send(Err(error));
            }
        }
    }
    *rounds.waiting.borrow_mut() = kept;
    if round.is_empty() {
        return false;
    }
    rounds.in_flight.borrow_mut().extend(in_round.iter().cloned());
    rounds.rounds.set(rounds.rounds.get() + 1);
    let rounds = Rc::clone(rounds);
    glommio::spawn_local(async move {
        let (round, commits): (Vec<_>, Vec<Commit>) = round
            .into_iter()
            .map(|(message, tries, prepared, commit)| ((message, tries, prepared), commit))
            .unzip();
        let started = std::time::Instant::now();
        let outcomes = commit_round(&rounds.database, commits).await;
        let counters = rounds.metrics.executor(rounds.router.shard_id());
        ExecutorMetrics::add(&counters.db_rounds, 1);
        let elapsed = started.elapsed();
        ExecutorMetrics::add(&counters.db_round_us, elapsed.as_micros() as u64);
        counters.db_round_latency_ns.record(elapsed.as_nanos() as u64, &crate::metrics::LATENCY_BOUNDS_NS);
        if outcomes.iter().any(Result::is_err) {
            ExecutorMetrics::add(&counters.db_round_failures, 1);
        }
        let mut retry = Vec::new();
        let mut stale = Vec::new();
        for ((message, tries, prepared), outcome) in round.into_iter().zip(outcomes) {
            // A load of this credential that started before the commit may have read the old
            // state: it reads again (the commit is not installed if the credential was evicted
            // meanwhile, and the load must not install what it replaced).
            if !matches!(outcome, Ok(Outcome::Stale)) {
                if let Some(loader) = &rounds.loader {
                    loader.note_change(prepared.id());
                }
            }
            match outcome {
                Ok(Outcome::Committed { .. }) => {
                    ExecutorMetrics::add(&counters.db_writes_committed, 1);
                    let version = prepared.outcome();
                    rounds.router.with_writer(|writer| writer.install_committed(prepared));
                    let _ = message.reply.send(Ok(version));
                }
                Ok(Outcome::Stale) if tries + 1 < STALE_RETRIES => {
                    ExecutorMetrics::add(&counters.db_writes_stale, 1);
                    // A new version lost to another: what is new is read. Anything else may have
                    // lost to a change in place: the credential is read whole.
                    let why = match prepared.effect() {
                        Effect::Version(_) => Reread::Newer,
                        _ => Reread::Whole,
                    };
                    stale.push((prepared.id().to_owned(), why));
                    retry.push((message, tries + 1));
                }
                Ok(Outcome::Stale) => {
                    let _ = message.reply.send(Err(OpError::Unavailable(
                        "other instances keep changing this credential; try again",
                    )));
                }
                Err(error) => {
                    tracing::warn!(%error, "a write to the database failed");
                    let _ = message.reply.send(Err(OpError::Unavailable(
                        "the database is unavailable; the write may or may not have committed",
                    )));
                }
            }
        }
        // A stale view is read again (all of this round's in one query) before its write goes
        // again; if that fails, the retry meets the same stale view until the database answers.
        if let Err(error) = refresh_many(&rounds.router, &rounds.database, stale, counters).await {
            tracing::warn!(%error, "re-reading credentials from the database failed");
        }
        {
            let mut waiting = rounds.waiting.borrow_mut();
            for (message, tries) in retry.into_iter().rev() {
                waiting.push_front((message, tries, Loaded::No));
            }
        }
        let mut in_flight = rounds.in_flight.borrow_mut();
        for id in &in_round {
            in_flight.remove(id);
        }
        drop(in_flight);
        rounds.rounds.set(rounds.rounds.get() - 1);
        let _ = rounds.done.try_send(());
    })
    .detach();
    true
}

/// Reads the credential of a write that the shard does not hold, then puts the write back at
/// the front of the queue. Until then the credential counts as in flight, so that later
/// writes of it wait behind this one (each credential's writes keep their order).
fn load_before_writing(
    rounds: &Rc<Rounds>,
    loader: &Rc<Loader>,
    message: WriteMessage,
    tries: usize,
    reads: usize,
    id: Box<str>,
) {
    let (reply, answer) = futures::channel::oneshot::channel();
    loader.accept(LoadMessage { ids: vec![id.clone()], reply });
    // Taken here rather than through the load queue: the loader's loop must look again.
    loader.wake();
    rounds.in_flight.borrow_mut().insert(id.clone());
    rounds.loading_writes.set(rounds.loading_writes.get() + 1);
    let rounds = Rc::clone(rounds);
    glommio::spawn_local(async move {
        let outcome = answer.await;
        rounds.in_flight.borrow_mut().remove(&id);
        rounds.loading_writes.set(rounds.loading_writes.get() - 1);
        match outcome {
            Ok(Ok(read)) => {
                let loaded =
                    if read.absent.contains(&id) { Loaded::Absent } else { Loaded::Found(reads + 1) };
                rounds.waiting.borrow_mut().push_front((message, tries, loaded));
            }
            Ok(Err(error)) => {
                let _ = message.reply.send(Err(error));
            }
            Err(_) => {
                let _ = message.reply.send(Err(OpError::Unavailable("the shard stopped before answering")));
            }
        }
        let _ = rounds.done.try_send(());
    })
    .detach();
}

/// Follows the change log for this executor's shard every `interval`: a change made by
/// another instance (a version this shard does not hold yet, or a delete) re-reads the
/// credential from the database.
/// `retention` is how long the change log is kept (`--change-log-retention-s`): a shard that
/// could not poll for half of it re-reads its whole state instead.
pub fn spawn_follower(
    router: Rc<Router>,
    database: Database,
    from: i64,
    interval: Duration,
    retention: Duration,
    metrics: Arc<Metrics>,
    loader: Option<Rc<Loader>>,
) {
    glommio::spawn_local(async move {
        let shard_id = router.shard_id();
        let counters = metrics.executor(shard_id);
        let mut follower = Some(Follower::after(from));
        // Changed credentials whose re-read failed: tried again with the next poll.
        let mut unread: std::collections::BTreeMap<String, Reread> = std::collections::BTreeMap::new();
        let mut last_poll = std::time::Instant::now();
        loop {
            glommio::timer::sleep(interval).await;
            if last_poll.elapsed() > retention / 2 {
                // Cut off for so long that the change log may have been trimmed past this
                // shard's position: read the whole shard again instead.
                match resync(&router, &database, counters).await {
                    Ok(from) => {
                        follower = Some(Follower::after(from));
                        unread.clear();
                        last_poll = std::time::Instant::now();
                    }
                    Err(error) => tracing::warn!(%error, "re-reading the shard from the database failed; retrying"),
                }
                continue;
            }
            let mut moved = follower.take().expect("the follower is put back after each poll");
            let polled = database
                .run(move |pool| async move {
                    let client = pool.get().await;
                    let changes = match client {
                        Ok(client) => moved.poll(&client, FOLLOW_PAGE).await,
                        Err(error) => Err(error.into()),
                    };
                    Ok((moved, changes))
                })
                .await;
            let changes = match polled {
                Ok((moved, changes)) => {
                    follower = Some(moved);
                    changes
                }
                Err(error) => {
                    tracing::warn!(%error, "the database thread is gone; the change log is no longer followed");
                    return;
                }
            };
            let changes = match changes {
                Ok(changes) => changes,
                Err(error) => {
                    tracing::warn!(%error, "reading the change log failed; retrying");
                    continue;
                }
            };
            last_poll = std::time::Instant::now();
            let store: Arc<Store> = router.with_writer(|writer| Arc::clone(writer.store()));
            // The changes other instances made (versions this shard does not hold, deletes of
            // what it holds), the last one per credential, re-read in one query.
            let mut stale = std::mem::take(&mut unread);
            // Re-reads that raced another install of their credential go again.
            for id in router.with_writer(|writer| writer.take_raced()) {
                let why = stale.entry(id.into()).or_insert(Reread::Whole);
                if *why == Reread::Newer {
                    *why = Reread::Whole;
                }
            }
            let feed = &store.shard(shard_id).feed;
            for change in changes.into_iter().filter(|change| store.shard_for(&change.id) == shard_id) {
                // Watchers are told of every change of the shard, held or not, whoever made it.
                if let Some(announced) = announced(&change) {
                    let seq = feed.append(
                        shard_id as u16,
                        announced,
                        change.version as u64,
                        change.at_ms as u64,
                        &change.id,
                        &change.owner,
                        &change.scope,
                    );
                    feed.mark_committed(seq);
                }
                // Being read for a miss: the read is repeated, and installs the change.
                if loader.as_ref().is_some_and(|loader| loader.note_change(&change.id)) {
                    continue;
                }
                let cached = router.with_writer(|writer| writer.cached_version(&change.id));
                // A partial cache follows only what it holds: the rest is read when asked for.
                if cached == 0 && store.shard(shard_id).is_partial() {
                    continue;
                }
                let version = change.version as u64;
                match change.kind {
                    // A delete seen in this batch stays: the credential may have been created
                    // again since, and must then be read whole.
                    ChangeKind::Written if cached < version => {
                        stale.entry(change.id).or_insert(Reread::Newer);
                    }
                    // Changed in place (this instance's own changes too: it cannot tell).
                    ChangeKind::State if cached != 0 => {
                        let why = stale.entry(change.id).or_insert(Reread::Whole);
                        if *why == Reread::Newer {
                            *why = Reread::Whole;
                        }
                    }
                    ChangeKind::Deleted if cached != 0 && cached <= version => {
                        stale.insert(change.id, Reread::Purged(version));
                    }
                    _ => {}
                }
            }
            let wanted: Vec<(String, Reread)> = stale.iter().map(|(id, why)| (id.clone(), *why)).collect();
            if let Err(error) = refresh_many(&router, &database, wanted, counters).await {
                tracing::warn!(%error, count = stale.len(), "re-reading changed credentials failed; retrying with the next poll");
                unread = stale;
            }
        }
    })
    .detach();
}

/// What a watcher is told of a change-log entry; `None` for an entry older than migration 5
/// that changed something in place (it did not record what).
fn announced(change: &rows::Change) -> Option<WatchChange> {
    match (u8::try_from(change.change).ok().and_then(WatchChange::from_u8), change.kind) {
        (Some(announced), _) => Some(announced),
        (None, ChangeKind::Written) => Some(WatchChange::Put),
        (None, ChangeKind::Deleted) => Some(WatchChange::Purge),
        (None, ChangeKind::State) => None,
    }
}

/// Reads this shard's whole state from the database again (after an outage longer than the
/// change log is kept); returns the change-log position to follow from.
async fn resync(router: &Router, database: &Database, metrics: &ExecutorMetrics) -> Result<i64, DbError> {
    let from = database.run(|pool| async move { rows::last_change(&pool.get().await?).await }).await?;
    let store: Arc<Store> = router.with_writer(|writer| Arc::clone(writer.store()));
    let shard_id = router.shard_id();
    // The changes in between are not known one by one: a watcher is told it missed some.
    store.shard(shard_id).feed.lose_continuity();
    if store.shard(shard_id).is_partial() {
        return resync_partial(router, database, metrics, from).await;
    }
    // As a re-read: what the shard installs of a credential while this reads is not undone.
    let mark = router.with_writer(|writer| writer.begin_reread());
    let all = database.run(|pool| async move { rows::all_credentials(&pool.get().await?).await }).await;
    let installed = all.and_then(|all| {
        let mut by_id = group_fetched(
            all.into_iter().filter(|credential| store.shard_for(&credential.id) == shard_id).collect(),
        )?;
        for id in router.with_writer(|writer| writer.cached_ids()) {
            if !by_id.contains_key(&*id) {
                let gone = FetchedState::default();
                router.with_writer(|writer| writer.install_reread(mark, &id, Vec::new(), None, gone));
            }
        }
        let count = by_id.len();
        for (id, (records, state)) in by_id.drain() {
            router.with_writer(|writer| writer.install_reread(mark, &id, records, None, state));
        }
        Ok(count)
    });
    router.with_writer(|writer| writer.end_reread(mark));
    let count = installed?;
    tracing::warn!(shard_id, credentials = count, "re-read the shard from the database after a long outage");
    Ok(from)
}

/// [`resync`] of a partial cache: reads again only the credentials it holds (the rest are
/// read when asked for), a query per [`LOAD_IDS_MAX`] of them.
async fn resync_partial(
    router: &Router,
    database: &Database,
    metrics: &ExecutorMetrics,
    from: i64,
) -> Result<i64, DbError> {
    let cached: Vec<(String, Reread)> = router
        .with_writer(|writer| writer.cached_ids())
        .into_iter()
        .map(|id| (id.into(), Reread::Whole))
        .collect();
    for chunk in cached.chunks(LOAD_IDS_MAX) {
        refresh_many(router, database, chunk.to_vec(), metrics).await?;
    }
    let shard_id = router.shard_id();
    tracing::warn!(
        shard_id,
        credentials = cached.len(),
        "re-read the cached credentials after a long outage"
    );
    Ok(from)
}

/// Expired credentials deleted by one statement, at most.
const SWEEP_ROUND_MAX: usize = 256;

/// Removes this shard's expired credentials, and its deleted ones whose recovery window has
/// ended, from the database (each only from the version this shard holds, and a deleted one
/// only if its deletion is still the one that ended; up to [`SWEEP_ROUND_MAX`] per statement)
/// every `interval`.
pub fn spawn_sweeper(router: Rc<Router>, database: Database, interval: Duration, metrics: Arc<Metrics>) {
    glommio::spawn_local(async move {
        let counters = metrics.executor(router.shard_id());
        loop {
            glommio::timer::sleep(interval).await;
            let now_ms = crate::time::now_ms();
            // (id, current version, what a watcher is told, purge time or 0).
            let mut due: Vec<(Box<str>, u64, WatchChange, u64)> = router
                .with_writer(|writer| writer.expired(now_ms))
                .into_iter()
                .map(|(id, version)| (id, version, WatchChange::Expire, 0))
                .collect();
            if router.with_writer(|writer| writer.store().shard(router.shard_id()).is_partial()) {
                // A partial cache sweeps what it does not hold from the database's expiry index.
                match uncached_expired(&router, &database, now_ms).await {
                    Ok(more) => due
                        .extend(more.into_iter().map(|(id, version)| (id, version, WatchChange::Expire, 0))),
                    Err(error) => {
                        tracing::warn!(%error, "reading expired credentials from the database failed")
                    }
                }
            }
            // Recovery windows that ended, from the database's purge index (held or not).
            router.with_writer(|writer| writer.forget_ended_recovery_windows(now_ms));
            match due_purges(&router, &database, now_ms).await {
                Ok(more) => due.extend(
                    more.into_iter()
                        .map(|(id, version, purge_at_ms)| (id, version, WatchChange::Purge, purge_at_ms)),
                ),
                Err(error) => {
                    tracing::warn!(%error, "reading ended recovery windows from the database failed")
                }
            }
            // In id order, which instances sweeping the same credentials share (fewer
            // deadlocks between their statements), and each credential once, as a statement
            // requires.
            due.sort_unstable_by(|first, second| first.0.cmp(&second.0));
            due.dedup_by(|later, first| later.0 == first.0);
            for chunk in due.chunks(SWEEP_ROUND_MAX) {
                let deletes: Vec<(String, i64, i16, i64)> = chunk
                    .iter()
                    .map(|(id, version, change, purge_at_ms)| {
                        (id.to_string(), *version as i64, *change as i16, *purge_at_ms as i64)
                    })
                    .collect();
                let deleted = database
                    .run(move |pool| async move {
                        let writes: Vec<RowWrite<'_>> = deletes
                            .iter()
                            .map(|(id, base_version, change, purge_at_ms)| RowWrite::Delete {
                                id,
                                base_version: *base_version,
                                at_ms: now_ms as i64,
                                change: *change,
                                purge_at_ms: *purge_at_ms,
                                base: None,
                            })
                            .collect();
                        rows::commit(&pool.get().await?, &writes).await
                    })
                    .await;
                let outcomes = match deleted {
                    Ok(outcomes) => outcomes,
                    // Another instance swept (or wrote) the same credentials at once: each is
                    // read again, as a stale one is.
                    Err(error) if rows::lost_a_race(&error) => {
                        tracing::debug!(%error, "a sweep lost a race with another instance's statement");
                        vec![Outcome::Stale; chunk.len()]
                    }
                    Err(error) => {
                        tracing::warn!(%error, "sweeping credentials from the database failed; retrying");
                        break;
                    }
                };
                let mut stale = Vec::new();
                for ((id, version, _, _), outcome) in chunk.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Committed { .. } => {
                            router.with_writer(|writer| {
                                // The database keeps the last version (a pending one's, if
                                // higher); so does the shard.
                                let last = writer.cached_last_version(id).max(*version);
                                let state = FetchedState { purged_version: last, ..FetchedState::default() };
                                writer.install_fetched(id, Vec::new(), Some(last), state);
                            });
                            ExecutorMetrics::add(&counters.expired_swept, 1);
                        }
                        Outcome::Stale => stale.push((id.to_string(), Reread::Whole)),
                    }
                }
                if !stale.is_empty() {
                    let _ = refresh_many(&router, &database, stale, counters).await;
                }
            }
        }
    })
    .detach();
}

/// Deleted credentials of this shard whose recovery window has ended, from the database (up
/// to 1,000 per sweep): (id, current version, purge time).
async fn due_purges(
    router: &Router,
    database: &Database,
    now_ms: u64,
) -> Result<Vec<(Box<str>, u64, u64)>, DbError> {
    let rows = database
        .run(move |pool| async move { rows::due_purges(&pool.get().await?, now_ms as i64, 1000).await })
        .await?;
    let store: Arc<Store> = router.with_writer(|writer| Arc::clone(writer.store()));
    let shard_id = router.shard_id();
    Ok(rows
        .into_iter()
        .filter(|(id, _, _)| store.shard_for(id) == shard_id)
        .map(|(id, version, purge_at_ms)| (id.into(), version as u64, purge_at_ms as u64))
        .collect())
}

/// Expired credentials of this shard that it does not hold, from the database (up to 1,000
/// per sweep): (id, current version).
async fn uncached_expired(
    router: &Router,
    database: &Database,
    now_ms: u64,
) -> Result<Vec<(Box<str>, u64)>, DbError> {
    let rows = database
        .run(move |pool| async move { rows::expired(&pool.get().await?, now_ms as i64, 1000).await })
        .await?;
    let store: Arc<Store> = router.with_writer(|writer| Arc::clone(writer.store()));
    let shard_id = router.shard_id();
    Ok(rows
        .into_iter()
        .filter(|(id, _)| store.shard_for(id) == shard_id && store.may_exist_uncached(id))
        .map(|(id, version)| (id.into(), version as u64))
        .collect())
}

/// How often an instance reads the shared key ring again, for another instance's rotation.
pub const RING_FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the shared key ring again every [`RING_FOLLOW_INTERVAL`] (on glommio's blocking
/// pool: the store's read blocks), so that a data key another instance rotated in becomes this
/// instance's active key within about that long. One executor per instance runs it.
pub fn spawn_ring_follower(store: Arc<Store>) {
    glommio::spawn_local(async move {
        let mut active = store.keyring().active_key_id();
        loop {
            glommio::timer::sleep(RING_FOLLOW_INTERVAL).await;
            let reading = Arc::clone(&store);
            match glommio::executor().spawn_blocking(move || reading.keyring().refresh_shared()).await {
                Ok(now_active) if now_active != active => {
                    tracing::info!(key_id = now_active, "adopted the data key another instance rotated in");
                    active = now_active;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reading the shared key ring failed; retrying"),
            }
        }
    })
    .detach();
}

/// Trims change-log entries older than `retention` every minute (every quarter of the
/// retention, if that is shorter), on one executor per instance; several instances trimming
/// at once is harmless.
pub fn spawn_change_log_trimmer(database: Database, retention: Duration) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(TRIM_INTERVAL.min(retention / 4)).await;
            let before_ms = crate::time::now_ms().saturating_sub(retention.as_millis() as u64) as i64;
            let trimmed = database
                .run(move |pool| async move { rows::trim_changes(&pool.get().await?, before_ms).await })
                .await;
            match trimmed {
                Ok(count) if count > 0 => tracing::debug!(count, "trimmed the change log"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "trimming the change log failed; retrying"),
            }
        }
    })
    .detach();
}
