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

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use credshard_protocol::{Limits, Request};
use glommio::channels::local_channel::LocalReceiver;
use rkyv::util::AlignedVec;

use crate::crypto::SharedRing;
use crate::data::{Prepared, Record, Store, Write};
use crate::error::{EngineError, OpError};
use crate::metrics::{ExecutorMetrics, Metrics};
use crate::server::router::{Router, WriteMessage};
use crate::storage::postgres::follow::Follower;
use crate::storage::postgres::rows::{self, ChangeKind, Outcome, VersionWrite};
use crate::storage::postgres::{Database, DbError};
use crate::storage::wal;
use crate::storage::Shards;

/// How long change-log entries are kept: far longer than any follower lags (a follower that
/// fell further behind, e.g. one cut off from the database, must re-read everything; see
/// docs/operations.md).
pub const CHANGES_KEPT: Duration = Duration::from_secs(15 * 60);
/// How often an instance trims the change log.
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
    let all = database
        .run_blocking(|pool| async move { rows::all_versions(&pool.get().await?).await })
        .map_err(fail)?;
    let mut per_shard: Vec<Vec<wal::Entry<'_>>> = vec![Vec::new(); store.shard_count()];
    for (id, record) in &all {
        per_shard[store.shard_for(id)].push(wal::Entry::Record(record));
    }
    for (shard_id, entries) in per_shard.iter().enumerate() {
        store.replay(shard_id, &[entries], true)?;
    }
    tracing::info!(versions = all.len(), credentials = store.len(), database = database.target(), "loaded");
    Ok(from)
}

fn record_from(bytes: &[u8]) -> Result<Record, EngineError> {
    let mut aligned = AlignedVec::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    Record::from_archive(aligned)
}

/// Reads a credential's kept versions from the database and installs them in its shard.
async fn refresh(
    router: &Router,
    database: &Database,
    id: &str,
    deleted_version: Option<u64>,
) -> Result<(), DbError> {
    let owned = id.to_owned();
    let rows =
        database.run(move |pool| async move { rows::credential(&pool.get().await?, &owned).await }).await?;
    let records = rows
        .iter()
        .map(|(_, bytes)| record_from(bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| DbError::Corrupt(error.to_string()))?;
    router.with_writer(|writer| writer.install_fetched(id, records, deleted_version));
    Ok(())
}

/// Commits a prepared write in the database.
async fn commit(
    database: &Database,
    prepared: &Prepared,
    max_versions: usize,
    at_ms: u64,
) -> Result<Outcome, DbError> {
    let id = prepared.id().to_owned();
    let base_version = prepared.base_version() as i64;
    let at_ms = at_ms as i64;
    match prepared.record() {
        None => database
            .run(move |pool| async move { rows::delete(&pool.get().await?, &id, base_version, at_ms).await })
            .await,
        Some(record) => {
            let credential = record.credential();
            let owner = credential.owner.as_str().to_owned();
            let scope = credential.scope.as_str().to_owned();
            let expires_at_ms = credential.expires_at_ms.to_native() as i64;
            let version = record.version() as i64;
            let bytes = record.archive_bytes().to_vec();
            let keep_from_version = prepared.keep_from_version(max_versions) as i64;
            database
                .run(move |pool| async move {
                    let write = VersionWrite {
                        id: &id,
                        base_version,
                        version,
                        owner: &owner,
                        scope: &scope,
                        expires_at_ms,
                        record: &bytes,
                        keep_from_version,
                        at_ms,
                    };
                    rows::write_version(&pool.get().await?, &write).await
                })
                .await
        }
    }
}

/// Applies this shard's writes through the database: every round takes the writes waiting
/// (one per credential; later ones for the same credential wait for the next round, so each
/// is prepared against the outcome of the one before), commits them concurrently, installs
/// what committed and answers. A write found stale re-reads its credential and goes again.
pub fn spawn_writer(
    router: Rc<Router>,
    queue: LocalReceiver<WriteMessage>,
    database: Database,
    limits: Limits,
) {
    glommio::spawn_local(async move {
        let max_versions = router.with_writer(|writer| writer.store().lifecycle().max_versions);
        let mut waiting: VecDeque<(WriteMessage, usize)> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                match queue.recv().await {
                    Some(message) => waiting.push_back((message, 0)),
                    None => return,
                }
            }
            while let Some(message) = futures::FutureExt::now_or_never(queue.recv()).flatten() {
                waiting.push_back((message, 0));
            }
            let mut in_round = HashSet::new();
            let mut later = VecDeque::new();
            let mut round = Vec::new();
            for (message, tries) in waiting.drain(..) {
                let decoded = Request::decode(message.op as u8, &message.body, &limits);
                let Ok(request) = decoded else {
                    let _ = message.reply.send(Err(OpError::Internal("a write failed to decode")));
                    continue;
                };
                let Some(write) = Write::of(&request) else {
                    let _ = message.reply.send(Err(OpError::Internal("not a write")));
                    continue;
                };
                let id: Box<str> = request.id().expect("writes name a credential").into();
                if !in_round.insert(id.clone()) {
                    later.push_back((message, tries));
                    continue;
                }
                match router.with_writer(|writer| {
                    writer.prepare(write, message.received_at_ms, &message.principal.acl)
                }) {
                    Ok(prepared) => round.push((message, tries, prepared)),
                    Err(error) => {
                        let _ = message.reply.send(Err(error));
                    }
                }
            }
            let commits = round.iter().map(|(message, _, prepared)| {
                commit(&database, prepared, max_versions, message.received_at_ms)
            });
            let outcomes = futures::future::join_all(commits).await;
            let mut retry = VecDeque::new();
            for ((message, tries, prepared), outcome) in round.into_iter().zip(outcomes) {
                match outcome {
                    Ok(Outcome::Committed { .. }) => {
                        let version = prepared.outcome();
                        router.with_writer(|writer| writer.install_committed(prepared));
                        let _ = message.reply.send(Ok(version));
                    }
                    Ok(Outcome::Stale) if tries + 1 < STALE_RETRIES => {
                        match refresh(&router, &database, prepared.id(), None).await {
                            Ok(()) => retry.push_back((message, tries + 1)),
                            Err(error) => {
                                tracing::warn!(%error, "re-reading a credential from the database failed");
                                let _ = message
                                    .reply
                                    .send(Err(OpError::Unavailable("the database is unavailable")));
                            }
                        }
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
            // Retries first, then the writes that waited behind this round, in order.
            retry.extend(later);
            waiting = retry;
        }
    })
    .detach();
}

/// Follows the change log for this executor's shard every `interval`: a change made by
/// another instance (a version this shard does not hold yet, or a delete) re-reads the
/// credential from the database.
pub fn spawn_follower(router: Rc<Router>, database: Database, from: i64, interval: Duration) {
    glommio::spawn_local(async move {
        let shard_id = router.shard_id();
        let mut follower = Some(Follower::after(from));
        loop {
            glommio::timer::sleep(interval).await;
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
            let store: Arc<Store> = router.with_writer(|writer| Arc::clone(writer.store()));
            for change in changes.into_iter().filter(|change| store.shard_for(&change.id) == shard_id) {
                let cached = router.with_writer(|writer| writer.cached_version(&change.id));
                let version = change.version as u64;
                let (stale, deleted) = match change.kind {
                    ChangeKind::Written => (cached < version, None),
                    ChangeKind::Deleted => (cached != 0 && cached <= version, Some(version)),
                };
                if stale {
                    if let Err(error) = refresh(&router, &database, &change.id, deleted).await {
                        tracing::warn!(%error, id = change.id, "re-reading a changed credential failed");
                    }
                }
            }
        }
    })
    .detach();
}

/// Removes this shard's expired credentials from the database (each only from the version
/// this shard holds) every `interval`.
pub fn spawn_sweeper(router: Rc<Router>, database: Database, interval: Duration, metrics: Arc<Metrics>) {
    glommio::spawn_local(async move {
        let counters = metrics.executor(router.shard_id());
        loop {
            glommio::timer::sleep(interval).await;
            let now_ms = crate::time::now_ms();
            let expired = router.with_writer(|writer| writer.expired(now_ms));
            for (id, version) in expired {
                let owned = id.to_string();
                let deleted = database
                    .run(move |pool| async move {
                        rows::delete(&pool.get().await?, &owned, version as i64, now_ms as i64).await
                    })
                    .await;
                match deleted {
                    Ok(Outcome::Committed { .. }) => {
                        router.with_writer(|writer| writer.install_fetched(&id, Vec::new(), Some(version)));
                        ExecutorMetrics::add(&counters.expired_swept, 1);
                    }
                    Ok(Outcome::Stale) => {
                        let _ = refresh(&router, &database, &id, None).await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "sweeping expired credentials from the database failed; retrying");
                        break;
                    }
                }
            }
        }
    })
    .detach();
}

/// Trims change-log entries older than [`CHANGES_KEPT`] every minute (on one executor per
/// instance; several instances trimming at once is harmless).
pub fn spawn_change_log_trimmer(database: Database) {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(TRIM_INTERVAL).await;
            let before_ms = crate::time::now_ms().saturating_sub(CHANGES_KEPT.as_millis() as u64) as i64;
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
